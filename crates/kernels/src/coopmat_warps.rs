//! The dense bf16 GEMM with subgroup-scope cooperative matrices (`Scheme::Warps` of
//! [`crate::coopmat_gemm`]): the same output tiles and the same input tiles staged in shared
//! memory as `Scheme::Staged`, but instead of one workgroup-scope matrix per tile, which the
//! driver splits among the subgroups as it sees fit, each subgroup of [`PLANE`] invocations owns a
//! `warp_m x warp_n` block of the tile ([`warp_tile`]) and multiplies it as 16 x 16 x 16
//! fragments, the shape the NVIDIA driver offers at subgroup scope. This is the layout CUDA's
//! GEMMs use on `mma.sync`; whether the driver's own split of a workgroup-scope matrix does as
//! well is what `bench matmul --tilings M x N x K/units/warps` against `/staged` measures.

use cubecl::prelude::*;
use half::bf16;

use crate::bf16_rows::EightBf16;
use crate::staged_tiles::{
    ConsecutiveRows, StepPlaces, TileRows, load_step_words, staged_row_words, store_tile_words,
};
use crate::tile_order::tile_origin;

/// Invocations per subgroup the kernel assumes (NVIDIA's warp).
pub const PLANE: u32 = 32;
/// Side of a subgroup-scope fragment.
pub const FRAGMENT: usize = 16;

/// The block (rows, columns) each subgroup owns in an `m x n` tile with `units` invocations:
/// the subgroups split the tile into a grid of equal blocks of whole fragments, the most
/// nearly square one (fewest fragments loaded per product). `None` when no grid fits.
pub fn warp_tile(m: usize, n: usize, units: u32) -> Option<(usize, usize)> {
    let planes = (units / PLANE) as usize;
    if planes == 0 || !units.is_multiple_of(PLANE) {
        return None;
    }
    (1..=planes)
        .filter(|rows| planes.is_multiple_of(*rows))
        .map(|rows| (rows, planes / rows))
        .filter(|&(rows, cols)| {
            m.is_multiple_of(rows * FRAGMENT) && n.is_multiple_of(cols * FRAGMENT)
        })
        .map(|(rows, cols)| (m / rows, n / cols))
        .min_by_key(|&(wm, wn)| wm / FRAGMENT + wn / FRAGMENT)
}

/// Whether the kernel takes an `m x k` by `k x n` product with `tile` (m, n, k): K steps of
/// whole fragments (the last step may pass K, reading zeros there), rows of whole 16-byte
/// words, and rows and columns of whole fragments (a fragment is stored whole, so it must lie
/// inside the output or outside it).
pub fn takes(m: usize, n: usize, k: usize, tile: (usize, usize, usize), units: u32) -> bool {
    let (tm, tn, tk) = tile;
    k.is_multiple_of(8)
        && tk.is_multiple_of(FRAGMENT)
        && n.is_multiple_of(8)
        && m.is_multiple_of(FRAGMENT)
        && n.is_multiple_of(FRAGMENT)
        && crate::staged_tiles::whole_words_per_unit(tm, tk, units)
        && crate::staged_tiles::whole_words_per_unit(tk, tn, units)
        && warp_tile(tm, tn, units).is_some()
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn coopmat_gemm_warps_kernel(
    lhs: &[EightBf16],
    rhs: &[EightBf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] columns_first: bool,
    bias: &[f32],
    #[comptime] with_bias: bool,
    #[comptime] warp: (usize, usize),
    #[comptime] units: u32,
) {
    let (tm, tn, _) = tile;
    let (row, col) = tile_origin(tm, tn, columns_first);

    let mut warp_tile = WarpTile::new(warp, tn, false);
    if comptime![with_bias] {
        warp_tile.start_at_bias(bias, col, n);
    }
    let lhs_rows = ConsecutiveRows {};
    warp_tile.accumulate_staged::<ConsecutiveRows>(
        lhs, &lhs_rows, rhs, row, m, 0, col, n, k, tile, units,
    );
    // Rows and columns are whole fragments (`takes`): a fragment is inside or outside.
    warp_tile.store_whole(out, row, col, m, n);
}

/// A subgroup's block of the tile: where it lies, its input fragments for one 16-wide slice
/// of K, and its `fm x fn` accumulators (also the grouped kernel's, `Tiling::warps`). The rhs
/// is row-major B (K rows of N), or with `rhs_rows_of_k` N rows of K (column-major B, as the
/// checkpoint stores expert weights).
#[derive(CubeType)]
pub(crate) struct WarpTile {
    a: Sequence<cmma::Matrix<bf16>>,
    b: Sequence<cmma::Matrix<bf16>>,
    acc: Sequence<cmma::Matrix<f32>>,
    /// The block's first row and column in the tile.
    pub row: u32,
    pub col: u32,
    #[cube(comptime)]
    fragments: (usize, usize),
    #[cube(comptime)]
    rhs_rows_of_k: bool,
}

#[cube]
impl WarpTile {
    /// This subgroup's block of a tile `tn` wide split into `warp` (rows, columns) blocks,
    /// accumulators zeroed, for a rhs of K rows or (`rhs_rows_of_k`) of N rows.
    pub fn new(
        #[comptime] warp: (usize, usize),
        #[comptime] tn: usize,
        #[comptime] rhs_rows_of_k: bool,
    ) -> WarpTile {
        WarpTile::for_plane(UNIT_POS / PLANE, warp, tn, rhs_rows_of_k)
    }

    /// As [`WarpTile::new`], for the block of subgroup `plane` of the ones that split the tile
    /// (the specialised kernel's consumers, which come after its producers).
    pub fn for_plane(
        plane: u32,
        #[comptime] warp: (usize, usize),
        #[comptime] tn: usize,
        #[comptime] rhs_rows_of_k: bool,
    ) -> WarpTile {
        let (wm, wn) = warp;
        let (fm, fn_) = comptime![(wm / FRAGMENT, wn / FRAGMENT)];
        let across = comptime![(tn / wn) as u32];
        let mut a = Sequence::<cmma::Matrix<bf16>>::new();
        #[unroll]
        for _ in 0..fm {
            a.push(fragment(cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor));
        }
        let mut b = Sequence::<cmma::Matrix<bf16>>::new();
        #[unroll]
        for _ in 0..fn_ {
            let layout = match rhs_rows_of_k {
                true => cmma::MatrixLayout::ColMajor,
                false => cmma::MatrixLayout::RowMajor,
            };
            b.push(fragment(cmma::MatrixIdent::B, layout));
        }
        let mut acc = Sequence::<cmma::Matrix<f32>>::new();
        #[unroll]
        for _ in 0..fm * fn_ {
            acc.push(zeroed_accumulator());
        }
        WarpTile {
            a,
            b,
            acc,
            row: (plane / across) * wm as u32,
            col: (plane % across) * wn as u32,
            fragments: (fm, fn_),
            rhs_rows_of_k,
        }
    }

    /// Sets the accumulators to `bias` [n] down every row instead of zeros, for the tile whose
    /// first column is `tile_col`: the product then comes out with its bias added, with no pass
    /// of its own over the output. Each fragment reads its 16 values with a row stride of 0.
    pub fn start_at_bias(&mut self, bias: &[f32], tile_col: u32, n: u32) {
        let (fm, fn_) = self.fragments;
        #[unroll]
        for j in 0..fn_ {
            let first = tile_col + self.col + (j * FRAGMENT) as u32;
            // Columns are whole fragments: a fragment's columns are all under n or none.
            if first < n {
                #[unroll]
                for i in 0..fm {
                    cmma::load_with_layout(
                        self.acc.index_mut(comptime![i * fn_ + j]),
                        &bias[first as usize..first as usize + FRAGMENT],
                        0u32,
                        cmma::MatrixLayout::RowMajor,
                    );
                }
            }
        }
    }

    /// Adds every K step of `tk` of the tile's product to the accumulators: rows `row..row_end` of
    /// `lhs` [.., k] (row-major; each read from the row `lhs_rows` gives), times rows
    /// `rhs_row..rhs_row + k` of `rhs` [.., n] (row-major), columns from `col` (zeros past
    /// `row_end` and `n`); with `rhs_rows_of_k`, times rows `rhs_row + col..rhs_row + n` of `rhs`
    /// [.., k] transposed. The invocations copy each step's input tiles into padded shared stages,
    /// the next step's loaded into registers while the subgroups multiply this one
    /// (`multiply_step`).
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate_staged<R: TileRows>(
        &mut self,
        lhs: &[EightBf16],
        lhs_rows: &R,
        rhs: &[EightBf16],
        row: u32,
        row_end: u32,
        rhs_row: u32,
        col: u32,
        n: u32,
        k: u32,
        #[comptime] tile: (usize, usize, usize),
        #[comptime] units: u32,
    ) {
        let (tm, tn, tk) = tile;
        let rows_of_k = self.rhs_rows_of_k;
        // The B stage holds K rows of the tile's columns, or the tile's N rows of K.
        let (b_rows, b_cols) = comptime![match rows_of_k {
            true => (tn, tk),
            false => (tk, tn),
        }];
        let a_stride = comptime![staged_row_words(tk)];
        let b_stride = comptime![staged_row_words(b_cols)];
        let mut stage_a = Shared::<[EightBf16]>::new_slice(tm * a_stride);
        let mut stage_b = Shared::<[EightBf16]>::new_slice(b_rows * b_stride);
        let mut next_a = Array::<EightBf16>::new(tm * tk / 8 / units as usize);
        let mut next_b = Array::<EightBf16>::new(tk * tn / 8 / units as usize);

        // A last step past K reads zeros there (`load_step_words`).
        let steps = k.div_ceil(tk as u32);
        let places = StepPlaces {
            row,
            row_end,
            rhs_row,
            col,
            n,
            k,
        };
        load_step_words::<R>(
            UNIT_POS,
            lhs,
            lhs_rows,
            rhs,
            &mut next_a,
            &mut next_b,
            &places,
            0,
            tile,
            rows_of_k,
            units,
        );
        for step in 0..steps {
            // Every subgroup has loaded its fragments of the previous step before the stages
            // are rewritten.
            sync_cube();
            store_tile_words(&next_a, &mut stage_a, tm, tk, units);
            store_tile_words(&next_b, &mut stage_b, b_rows, b_cols, units);
            sync_cube();
            if step + 1 < steps {
                let k_next = (step + 1) * tk as u32;
                load_step_words::<R>(
                    UNIT_POS,
                    lhs,
                    lhs_rows,
                    rhs,
                    &mut next_a,
                    &mut next_b,
                    &places,
                    k_next,
                    tile,
                    rows_of_k,
                    units,
                );
            }
            self.multiply_step(&stage_a, a_stride, &stage_b, b_stride, tk);
        }
    }

    /// Adds one staged K step of `tk` to the accumulators: the A stage holds the tile's rows
    /// (`a_stride` 16-byte words apart), the B stage K rows of the tile's columns (`b_stride`
    /// words apart).
    pub fn multiply_step(
        &mut self,
        stage_a: &[EightBf16],
        #[comptime] a_stride: usize,
        stage_b: &[EightBf16],
        #[comptime] b_stride: usize,
        #[comptime] tk: usize,
    ) {
        #[unroll]
        for kk in 0..tk / FRAGMENT {
            self.load_fragments(stage_a, a_stride, stage_b, b_stride, kk);
            self.multiply_fragments();
        }
    }

    /// Loads the block's input fragments of the 16-wide slice `kk` of a staged K step (as
    /// [`WarpTile::multiply_step`] stages it).
    pub fn load_fragments(
        &mut self,
        stage_a: &[EightBf16],
        #[comptime] a_stride: usize,
        stage_b: &[EightBf16],
        #[comptime] b_stride: usize,
        #[comptime] kk: usize,
    ) {
        let (fm, fn_) = self.fragments;
        let rows_of_k = self.rhs_rows_of_k;
        // A fragment's 16 rows span 15 strides and one fragment row (two 16-byte words).
        let a_span = comptime![15 * a_stride + FRAGMENT / 8];
        let b_span = comptime![15 * b_stride + FRAGMENT / 8];
        #[unroll]
        for i in 0..fm {
            // Rows row + 16 i.., columns 16 kk.. of the A stage.
            let first = (self.row as usize + i * FRAGMENT) * a_stride + kk * FRAGMENT / 8;
            // Strides in u32 words (the loads divide them by an EightBf16's four words).
            cmma::load(
                self.a.index_mut(i),
                &stage_a[first..first + a_span],
                (a_stride * 4) as u32,
            );
        }
        #[unroll]
        for j in 0..fn_ {
            // Rows 16 kk.. (K), columns col + 16 j..; with rows of K, the stage's rows
            // col + 16 j.., K columns 16 kk...
            let column = self.col as usize + j * FRAGMENT;
            let mut first = kk * FRAGMENT * b_stride + column / 8;
            if comptime![rows_of_k] {
                first = column * b_stride + kk * FRAGMENT / 8;
            }
            cmma::load(
                self.b.index_mut(j),
                &stage_b[first..first + b_span],
                (b_stride * 4) as u32,
            );
        }
    }

    /// Adds the products of the loaded input fragments to the accumulators.
    pub fn multiply_fragments(&mut self) {
        let (fm, fn_) = self.fragments;
        #[unroll]
        for i in 0..fm {
            #[unroll]
            for j in 0..fn_ {
                let c = self.acc.index(comptime![i * fn_ + j]);
                cmma::execute(self.a.index(i), self.b.index(j), c, c);
            }
        }
    }

    /// Stores the block into `out` [rows, n] row-major, the tile at (`tile_row`, `tile_col`):
    /// each fragment whose first row is under `rows` and first column under `n`, whole (the
    /// caller makes fragments lie wholly inside or outside).
    pub fn store_whole(&self, out: &mut [f32], tile_row: u32, tile_col: u32, rows: u32, n: u32) {
        let (fm, fn_) = self.fragments;
        #[unroll]
        for i in 0..fm {
            #[unroll]
            for j in 0..fn_ {
                let out_row = tile_row + self.row + (i * FRAGMENT) as u32;
                let out_col = tile_col + self.col + (j * FRAGMENT) as u32;
                if out_row < rows && out_col < n {
                    let first = (out_row * n + out_col) as usize;
                    let span = 15 * n as usize + FRAGMENT;
                    cmma::store(
                        &mut out[first..first + span],
                        self.acc.index(comptime![i * fn_ + j]),
                        n,
                        cmma::MatrixLayout::RowMajor,
                    );
                }
            }
        }
    }

    /// Stores fragment (`i`, `j`) of the block, row-major 16 x 16, into this subgroup's
    /// [`THROUGH_WORDS`] of `through` (shared memory), where the whole subgroup may read it, and
    /// returns its first row and column in the tile. The subgroup's reads of the fragment staged
    /// before must be done: the call waits for them first.
    pub fn stage_fragment(
        &self,
        #[comptime] i: usize,
        #[comptime] j: usize,
        through: &mut [f32],
    ) -> (u32, u32) {
        let (_, fn_) = self.fragments;
        let own = (UNIT_POS / PLANE) as usize * THROUGH_WORDS;
        sync_plane();
        cmma::store(
            &mut through[own..own + THROUGH_WORDS],
            self.acc.index(comptime![i * fn_ + j]),
            FRAGMENT as u32,
            cmma::MatrixLayout::RowMajor,
        );
        sync_plane();
        (
            self.row + (i * FRAGMENT) as u32,
            self.col + (j * FRAGMENT) as u32,
        )
    }

    /// Stores the block into `out` [.., n] row-major, the tile at (`tile_row`, `tile_col`), only
    /// rows under `rows_end` (columns under `n`, whole fragments): a fragment that `rows_end`
    /// cuts is stored into this subgroup's [`THROUGH_WORDS`] of `through` (shared memory), and
    /// its rows under `rows_end` copied from there. The grouped kernel's tiles end where their
    /// expert's rows end, and the rows after are another workgroup's.
    pub fn store_rows_below(
        &self,
        out: &mut [f32],
        tile_row: u32,
        tile_col: u32,
        rows_end: u32,
        n: u32,
        through: &mut [f32],
    ) {
        let (fm, fn_) = self.fragments;
        let lane = UNIT_POS % PLANE;
        let own = (UNIT_POS / PLANE) as usize * THROUGH_WORDS;
        #[unroll]
        for i in 0..fm {
            #[unroll]
            for j in 0..fn_ {
                let out_row = tile_row + self.row + (i * FRAGMENT) as u32;
                let out_col = tile_col + self.col + (j * FRAGMENT) as u32;
                let acc = self.acc.index(comptime![i * fn_ + j]);
                if out_row + FRAGMENT as u32 <= rows_end && out_col < n {
                    let first = (out_row * n + out_col) as usize;
                    let span = 15 * n as usize + FRAGMENT;
                    cmma::store(
                        &mut out[first..first + span],
                        acc,
                        n,
                        cmma::MatrixLayout::RowMajor,
                    );
                } else if out_row < rows_end && out_col < n {
                    cmma::store(
                        &mut through[own..own + THROUGH_WORDS],
                        acc,
                        FRAGMENT as u32,
                        cmma::MatrixLayout::RowMajor,
                    );
                    sync_plane();
                    let mut e = lane;
                    while e < THROUGH_WORDS as u32 {
                        let row = out_row + e / FRAGMENT as u32;
                        if row < rows_end {
                            let col = out_col + e % FRAGMENT as u32;
                            out[(row * n + col) as usize] = through[own + e as usize];
                        }
                        e += PLANE;
                    }
                    sync_plane();
                }
            }
        }
    }
}

/// f32 values of one fragment, the share of `store_rows_below`'s (and `stage_fragment`'s) shared
/// memory per subgroup.
pub const THROUGH_WORDS: usize = FRAGMENT * FRAGMENT;

/// A subgroup-scope 16 x 16 f32 accumulator of zeros.
#[cube]
pub(crate) fn zeroed_accumulator() -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        FRAGMENT,
        FRAGMENT,
        FRAGMENT,
        cmma::MatrixLayout::Undefined,
        0.0,
    )
}

/// An uninitialised subgroup-scope 16 x 16 x 16 bf16 input fragment.
#[cube]
pub(crate) fn fragment(
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] layout: cmma::MatrixLayout,
) -> cmma::Matrix<bf16> {
    unsafe { cmma::Matrix::<bf16>::uninitialized(ident, FRAGMENT, FRAGMENT, FRAGMENT, layout) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_for_its_tilings() {
        use coopmat_gemm_warps_kernel::CoopmatGemmWarpsKernel;
        for (tile, units) in [
            ((128, 256, 32), 256),
            ((128, 320, 32), 256),
            ((128, 128, 32), 128),
            ((256, 128, 32), 256),
            ((128, 256, 48), 256),
            ((128, 128, 64), 128),
            ((32, 64, 64), 128),
        ] {
            let warp = warp_tile(tile.0, tile.1, units).unwrap();
            for with_bias in [false, true] {
                let compiled = compile_kernel!(
                    CoopmatGemmWarpsKernel,
                    CubeDim::new_1d(units),
                    [b b b s s s b],
                    tile,
                    true,
                    with_bias,
                    warp,
                    units,
                );
                assert_eq!(compiled, Ok(()), "tile {tile:?}, bias {with_bias}");
            }
        }
    }

    #[test]
    fn a_tile_past_the_drivers_workgroup_memory_fails_to_compile() {
        let (tile, units) = ((128, 256, 64), 256);
        let compiled = compile_kernel!(
            coopmat_gemm_warps_kernel::CoopmatGemmWarpsKernel,
            CubeDim::new_1d(units),
            [b b b s s s b],
            tile,
            true,
            false,
            warp_tile(tile.0, tile.1, units).unwrap(),
            units,
        );
        let error = compiled.unwrap_err();
        assert!(error.contains("52224 bytes"), "{error}");
    }

    #[test]
    fn subgroups_split_the_tile_into_the_squarest_grid_of_whole_fragments() {
        // Eight subgroups on 128 x 256: 2 x 4 blocks of 64 x 64; on 128 x 320, of 64 x 80.
        assert_eq!(warp_tile(128, 256, 256), Some((64, 64)));
        assert_eq!(warp_tile(128, 320, 256), Some((64, 80)));
        // Four subgroups on 128 x 128: 2 x 2 blocks of 64 x 64.
        assert_eq!(warp_tile(128, 128, 128), Some((64, 64)));
        // Eight on 64 x 128: 64 x 16 would load 5 fragments per product; 32 x 32 loads 4.
        assert_eq!(warp_tile(64, 128, 256), Some((32, 32)));
        // One subgroup takes the whole tile.
        assert_eq!(warp_tile(32, 64, 32), Some((32, 64)));
        // No grid of whole fragments: 8 subgroups on 16 x 16; invocations not whole subgroups.
        assert_eq!(warp_tile(16, 16, 256), None);
        assert_eq!(warp_tile(128, 256, 48), None);
        assert_eq!(warp_tile(128, 256, 0), None);
    }

    #[test]
    fn the_kernel_takes_whole_fragments_and_words_only() {
        let tile = (128, 256, 32);
        // Scoring's projections and 8192^3; K steps of 48 leave 8192 a last step of 32.
        for (m, n, k) in [(16384, 5120, 2880), (16384, 2880, 4096), (8192, 8192, 8192)] {
            assert!(takes(m, n, k, tile, 256), "{m} {n} {k}");
            assert!(takes(m, n, k, (128, 256, 48), 256), "{m} {n} {k}");
        }
        // Rows or columns not whole fragments, K not whole 16-byte words.
        assert!(!takes(16385, 5120, 2880, tile, 256));
        assert!(!takes(16384, 5128, 2880, tile, 256));
        assert!(!takes(16384, 5120, 2884, tile, 256));
        // A K step that is not whole fragments.
        assert!(!takes(16384, 5120, 2880, (128, 256, 8), 256));
    }
}
