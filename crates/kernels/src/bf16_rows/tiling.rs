//! How a few-row product splits its work: column groups per workgroup and rows in flight
//! (measured choices in [`default_tiling`]), the grid, and the rows per workgroup.

use cubecl::prelude::*;

use super::{LANE_COLUMNS, ROWS, UNITS};

/// How a product splits its work: column groups of eight per workgroup and weight rows each
/// invocation loads before using any (either 0: [`default_tiling`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsTiling {
    pub groups: u32,
    pub unroll: u32,
}

impl RowsTiling {
    /// Whether the kernels take this tiling: groups 0 or a power of two whose columns fit a
    /// workgroup (at most 32 groups of eight for its 256 invocations, which split K into
    /// `256 / groups` slices), unroll 0 to 32 rows in flight (each a register array).
    pub fn is_supported(self) -> bool {
        (self.groups == 0 || (self.groups.is_power_of_two() && self.groups <= MAX_GROUPS))
            && self.unroll <= MAX_UNROLL
    }
}

/// Most column groups per workgroup: 32 groups of eight columns, one per invocation at the
/// final sum.
const MAX_GROUPS: u32 = UNITS / LANE_COLUMNS;
/// Most weight rows each invocation loads before using any.
const MAX_UNROLL: u32 = 32;

/// The tiling the model takes: both chosen by [`default_tiling`].
pub const DEFAULT_TILING: RowsTiling = RowsTiling {
    groups: 0,
    unroll: 0,
};

/// Workgroups below which the wider column groups leave the GPU short of work (two per H100
/// multiprocessor).
const TARGET_WORKGROUPS: usize = 264;
/// Workgroups of eight column groups from which a one-row product counts as very wide (an
/// lm_head) and takes [`WIDE_GROUPS`].
const WIDE_WORKGROUPS: usize = 1024;
/// Column groups of a very wide one-row product: 32 groups of eight, 256 columns (512 bytes of
/// each weight row) per workgroup, K in 8 slices.
const WIDE_GROUPS: u32 = 32;

/// The tiling for an `m`-row product with `n` output columns (`bench kernel-check
/// --decode-timings --rows-tilings`, microseconds per launch at one row, model's previous
/// choice first): at one row, four column groups (H100, 2026-11-27: q/k/v 26.6 -> 21.7, o
/// 25.1 -> 21.7; 64-byte runs of a weight row per K slice although fewer workgroups), and for
/// very wide products (an lm_head piece of 93,184 columns) [`WIDE_GROUPS`] with sixteen rows
/// in flight (H200, 2026-11-29, queued: 137.5 us for eight groups, 124.7-126.5 for 32, 3.66
/// -> 3.96 TB/s; 16 groups 151-152); more rows keep the earlier rule, four groups where that
/// still gives [`TARGET_WORKGROUPS`], else two (not measured again).
pub fn default_tiling(m: usize, n: usize) -> RowsTiling {
    let vectors = n / LANE_COLUMNS as usize;
    let (groups, unroll) = match m {
        1 if vectors.div_ceil(8) >= WIDE_WORKGROUPS => (WIDE_GROUPS, 16),
        1 => (4, 8),
        _ if vectors.div_ceil(4) >= TARGET_WORKGROUPS => (4, 8),
        _ => (2, 8),
    };
    RowsTiling { groups, unroll }
}

/// `tiling`'s groups and unroll where given (non-zero; every width in `whole` a multiple of
/// the groups' columns), else [`default_tiling`]'s for an `m`-row product over `n` columns.
pub(super) fn chosen_tiling(tiling: RowsTiling, m: usize, n: usize, whole: &[usize]) -> RowsTiling {
    assert!(tiling.is_supported(), "bf16_rows: {tiling:?} not supported");
    let default = default_tiling(m, n);
    let given_or = |given: u32, default: u32| if given == 0 { default } else { given };
    let groups = given_or(tiling.groups, default.groups);
    let unroll = given_or(tiling.unroll, default.unroll);
    let columns = (groups * LANE_COLUMNS) as usize;
    assert!(
        whole.iter().all(|w| w.is_multiple_of(columns)),
        "bf16_rows: {groups} column groups do not tile widths {whole:?}"
    );
    RowsTiling { groups, unroll }
}

/// Workgroups across `n` output columns, `groups` column groups of eight each.
pub(super) fn column_blocks(n: usize, groups: u32) -> usize {
    (n / LANE_COLUMNS as usize).div_ceil(groups as usize)
}

/// Rows per workgroup for an `m`-row product (fewer rows compile to fewer registers: a batch-1
/// step has one) and the grid of `column_blocks` workgroups across by row chunks down.
pub(super) fn grid(m: usize, column_blocks: usize) -> (usize, CubeCount) {
    let rows = m.next_power_of_two().min(ROWS);
    let cubes = CubeCount::Static(column_blocks as u32, m.div_ceil(rows) as u32, 1);
    (rows, cubes)
}

/// [`chosen_tiling`] for the three-product kernel over widths `n0`, `n1`, `n2`: the default
/// where its column groups tile the first two widths (an lm_head in three pieces at one row
/// takes [`WIDE_GROUPS`]), else four groups with eight rows in flight (`supports_three` promises
/// whole workgroups of 32 columns per segment, not more).
pub(super) fn chosen_three_tiling(
    tiling: RowsTiling,
    m: usize,
    [n0, n1, n2]: [usize; 3],
) -> RowsTiling {
    let default = default_tiling(m, n0 + n1 + n2);
    let columns = (default.groups * LANE_COLUMNS) as usize;
    let default_tiles = n0.is_multiple_of(columns) && n1.is_multiple_of(columns);
    let capped = match tiling.groups == 0 && !default_tiles {
        true => RowsTiling {
            groups: 4,
            unroll: 8,
        },
        false => tiling,
    };
    chosen_tiling(capped, m, n0 + n1 + n2, &[n0, n1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16_rows::kernels::{bf16_rows_kernel, bf16_rows_three_kernel};
    use crate::bf16_rows::{ROWS, UNITS};
    use crate::kernel_expansion::compile_kernel;

    /// The (rows, groups, unroll) the model launches: `default_tiling` at one row and at
    /// many.
    const MODEL_TILINGS: [(usize, u32, u32); 4] =
        [(1, 4, 8), (1, WIDE_GROUPS, 16), (ROWS, 2, 8), (ROWS, 4, 8)];

    #[test]
    fn the_row_kernels_compile_for_the_model_tilings() {
        for ((rows, groups, unroll), has_bias) in MODEL_TILINGS
            .into_iter()
            .flat_map(|t| [(t, false), (t, true)])
        {
            let case = format!("{rows} rows, {groups} groups, unroll {unroll}, bias {has_bias}");
            let one = compile_kernel!(
                bf16_rows_kernel::Bf16RowsKernel,
                CubeDim::new_1d(UNITS),
                [b b b b s s s],
                rows,
                groups,
                unroll,
                has_bias,
            );
            assert_eq!(one, Ok(()), "{case}");
            for has_norm in [false, true] {
                let three = compile_kernel!(
                    bf16_rows_three_kernel::Bf16RowsThreeKernel,
                    CubeDim::new_1d(UNITS),
                    [b b s b b b b b b b s s s s s],
                    rows,
                    groups,
                    unroll,
                    has_bias,
                    has_norm,
                );
                assert_eq!(three, Ok(()), "three products, {case}, norm {has_norm}");
            }
        }
    }

    #[test]
    fn default_tiling_follows_the_measured_choices() {
        let tiling = |groups, unroll| RowsTiling { groups, unroll };
        assert_eq!(default_tiling(1, 5120), tiling(4, 8));
        assert_eq!(default_tiling(1, 2880), tiling(4, 8));
        assert_eq!(default_tiling(1, 93_184), tiling(32, 16));
        assert_eq!(default_tiling(32, 5120), tiling(2, 8));
        assert_eq!(default_tiling(32, 93_184), tiling(4, 8));
        assert_eq!(
            chosen_tiling(tiling(2, 0), 1, 5120, &[4096, 512]),
            tiling(2, 8)
        );
        assert_eq!(
            chosen_tiling(DEFAULT_TILING, 1, 5120, &[4096, 512]),
            tiling(4, 8)
        );
        // Three products: the lm_head's pieces at one row take the wide tiling, widths it
        // does not tile four groups.
        assert_eq!(
            chosen_three_tiling(DEFAULT_TILING, 1, [93_184, 93_184, 14_720]),
            tiling(32, 16)
        );
        assert_eq!(
            chosen_three_tiling(DEFAULT_TILING, 1, [93_184 + 32, 93_184, 14_720]),
            tiling(4, 8)
        );
        assert_eq!(
            chosen_three_tiling(DEFAULT_TILING, 1, [4096, 512, 512]),
            tiling(4, 8)
        );
        let refused = std::panic::catch_unwind(|| chosen_tiling(tiling(8, 8), 1, 96, &[32, 32]));
        assert!(refused.is_err());
    }

    /// Power-of-two groups up to 32 and up to 32 rows in flight; 0 leaves either to the default.
    #[test]
    fn supported_tilings_are_powers_of_two_up_to_a_workgroup() {
        let tiling = |groups, unroll| RowsTiling { groups, unroll };
        for ok in [
            DEFAULT_TILING,
            tiling(1, 1),
            tiling(4, 16),
            tiling(32, 32),
            tiling(0, 8),
        ] {
            assert!(ok.is_supported(), "{ok:?}");
        }
        for refused in [tiling(3, 8), tiling(64, 8), tiling(4, 33)] {
            assert!(!refused.is_supported(), "{refused:?}");
        }
    }
}
