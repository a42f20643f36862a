//! Shards: consecutive samples whose rows are written together. The plan is fixed before the
//! first shard (from token counts), stored in the manifest, and each shard's files appear by
//! rename, the routing file last: a shard is done iff its routing file exists. Resuming redoes
//! exactly the shards not done, so no row is lost or written twice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Result, TraceError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub index: usize,
    pub first_sample: usize,
    pub samples: usize,
    pub tokens: usize,
}

/// Cuts `token_counts` into shards of at most `max_rows` rows (tokens x layers), never splitting
/// a sample.
pub fn plan_shards(token_counts: &[usize], layers: usize, max_rows: usize) -> Vec<ShardPlan> {
    let mut plans = vec![];
    let (mut first, mut tokens) = (0, 0);
    for (i, &n) in token_counts.iter().enumerate() {
        if i > first && (tokens + n) * layers > max_rows {
            plans.push(ShardPlan {
                index: plans.len(),
                first_sample: first,
                samples: i - first,
                tokens,
            });
            first = i;
            tokens = 0;
        }
        tokens += n;
    }
    if first < token_counts.len() {
        plans.push(ShardPlan {
            index: plans.len(),
            first_sample: first,
            samples: token_counts.len() - first,
            tokens,
        });
    }
    plans
}

pub fn routing_path(dir: &Path, index: usize) -> PathBuf {
    dir.join("routing").join(format!("part-{index:05}.parquet"))
}

pub fn stats_path(dir: &Path, index: usize) -> PathBuf {
    dir.join("shard-stats")
        .join(format!("part-{index:05}.json"))
}

/// Writes `path` through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().expect("shard files live in folders");
    std::fs::create_dir_all(dir).map_err(|e| TraceError::file(dir, e))?;
    let tmp = path.with_extension("partial");
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TraceError::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_never_splits_a_sample_and_covers_all() {
        let counts = [5, 5, 5, 20, 1, 1];
        let plans = plan_shards(&counts, 2, 24);
        assert_eq!(plans.iter().map(|p| p.samples).sum::<usize>(), counts.len());
        for w in plans.windows(2) {
            assert_eq!(w[0].first_sample + w[0].samples, w[1].first_sample);
        }
        // The 20-token sample exceeds the limit alone and still gets a shard of its own.
        assert!(plans.iter().any(|p| p.samples == 1 && p.tokens == 20));
    }
}
