//! One file per strategy; each is registered in `registry::all_strategies`.

pub mod frequency;
pub mod math_probe_aware;
pub mod random;
pub mod reconstruction;
pub mod saliency;
pub mod task_coverage;

#[cfg(test)]
pub(crate) mod test_stats;
