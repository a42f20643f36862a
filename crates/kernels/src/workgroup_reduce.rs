//! Reductions over the [`UNITS`] invocations of a workgroup, through shared memory.

use cubecl::prelude::*;

/// Invocations per workgroup in the row kernels.
pub const UNITS: u32 = 256;
/// log2(UNITS): levels of the reduction tree.
const LEVELS: u32 = 8;

/// The sum (or, with `maximum`, the maximum) of `value` over the workgroup's [`UNITS`]
/// invocations, returned to every invocation. Must be reached by all of them (it synchronises).
#[cube]
pub fn workgroup_reduce(value: f32, #[comptime] maximum: bool) -> f32 {
    let mut shared = Shared::<[f32]>::new_slice(UNITS as usize);
    let unit = UNIT_POS;
    // A previous reduction's readers may still be reading shared[0].
    sync_cube();
    shared[unit as usize] = value;
    sync_cube();
    #[unroll]
    for level in 0..LEVELS {
        let stride = UNITS >> (level + 1);
        if unit < stride {
            let other = shared[(unit + stride) as usize];
            if maximum {
                shared[unit as usize] = max(shared[unit as usize], other);
            } else {
                shared[unit as usize] += other;
            }
        }
        sync_cube();
    }
    shared[0]
}
