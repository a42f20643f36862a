//! Input tiles staged through shared memory for the tensor-core kernels: each invocation loads
//! its share of a bf16 tile from global memory in 16-byte words (into registers, so the next K
//! step's loads overlap this step's products), then stores them into a shared stage whose rows
//! are padded by one word, from where the cooperative matrices are loaded.
//!
//! Loading the matrices from shared memory instead of from global memory by tensor addressing
//! took the dense GEMM from 152 to 260 TF/s at 8192^3 on an H100 (docs/benchmarks.md,
//! eighteenth round).

use cubecl::prelude::*;

use crate::bf16_rows::EightBf16;

/// Padding of a staged row, in bf16 values (one 16-byte word): consecutive rows of the stage
/// do not start on the same shared-memory banks.
pub const STAGE_PAD: usize = 8;

/// 16-byte words in one staged row of `cols` bf16 values (with the padding).
pub const fn staged_row_words(cols: usize) -> usize {
    (cols + STAGE_PAD) / 8
}

/// Which row of the source matrix holds each row of a tile: the rows themselves
/// ([`ConsecutiveRows`]), or the rows an index gives ([`GatheredRows`]).
#[cube]
pub trait TileRows {
    /// The source row of row `row`.
    fn source_row(&self, row: u32) -> u32;
}

/// Row `r` of the tile is row `r` of the source.
#[derive(CubeType)]
pub struct ConsecutiveRows {}

#[cube]
impl TileRows for ConsecutiveRows {
    fn source_row(&self, row: u32) -> u32 {
        row
    }
}

/// Row `r` of the tile is row `rows_of[r]` of the source (the grouped product's sorted rows
/// read from token order).
#[derive(CubeType)]
pub struct GatheredRows<'a> {
    pub rows_of: &'a [u32],
}

#[cube]
impl<'a> GatheredRows<'a> {
    pub fn new(rows_of: &'a [u32]) -> GatheredRows<'a> {
        GatheredRows::<'a> { rows_of }
    }
}

#[cube]
impl<'a> TileRows for GatheredRows<'a> {
    fn source_row(&self, row: u32) -> u32 {
        self.rows_of[row as usize]
    }
}

/// This invocation's words of the `rows x cols` tile at (`row_begin`, `col_begin`) of a
/// row-major bf16 matrix with `row_len` values per row: zeros at rows from `row_end` and at
/// columns from `col_end` (`col_begin` and `col_end` multiples of 8).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_tile_words(
    src: &[EightBf16],
    words: &mut Array<EightBf16>,
    row_begin: u32,
    row_end: u32,
    col_begin: u32,
    col_end: u32,
    row_len: u32,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] units: u32,
) {
    load_tile_words_as(
        UNIT_POS, src, words, row_begin, row_end, col_begin, col_end, row_len, rows, cols, units,
    );
}

/// As [`load_tile_words`], the words of invocation `unit` of the `units` that share the tile.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_tile_words_as(
    unit: u32,
    src: &[EightBf16],
    words: &mut Array<EightBf16>,
    row_begin: u32,
    row_end: u32,
    col_begin: u32,
    col_end: u32,
    row_len: u32,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] units: u32,
) {
    let consecutive = ConsecutiveRows {};
    load_rows_words::<ConsecutiveRows>(
        unit,
        src,
        &consecutive,
        words,
        row_begin,
        row_end,
        col_begin,
        col_end,
        row_len,
        rows,
        cols,
        units,
    );
}

/// As [`load_tile_words`], the words of invocation `unit` of the `units` that share the tile,
/// with the tile's rows read from the source rows `source` gives.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_rows_words<R: TileRows>(
    unit: u32,
    src: &[EightBf16],
    source: &R,
    words: &mut Array<EightBf16>,
    row_begin: u32,
    row_end: u32,
    col_begin: u32,
    col_end: u32,
    row_len: u32,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] units: u32,
) {
    let words_per_row = (cols / 8) as u32;
    #[unroll]
    for i in 0..rows * cols / 8 / units as usize {
        let v = unit + i as u32 * units;
        let row = row_begin + v / words_per_row;
        let col = col_begin + 8 * (v % words_per_row);
        let mut word = EightBf16::new(0u32);
        if row < row_end && col < col_end {
            word = src[((source.source_row(row) * row_len + col) / 8) as usize];
        }
        words[i] = word;
    }
}

/// Stores this invocation's words (as `load_tile_words` loaded them) into the padded stage.
#[cube]
pub fn store_tile_words(
    words: &Array<EightBf16>,
    stage: &mut [EightBf16],
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] units: u32,
) {
    store_tile_words_as(UNIT_POS, words, stage, rows, cols, units);
}

/// As [`store_tile_words`], the words of invocation `unit` of the `units` that share the tile.
#[cube]
pub fn store_tile_words_as(
    unit: u32,
    words: &Array<EightBf16>,
    stage: &mut [EightBf16],
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] units: u32,
) {
    let words_per_row = (cols / 8) as u32;
    let stride = comptime![staged_row_words(cols)] as u32;
    #[unroll]
    for i in 0..rows * cols / 8 / units as usize {
        let v = unit + i as u32 * units;
        stage[((v / words_per_row) * stride + v % words_per_row) as usize] = words[i];
    }
}

/// Where a tile's K steps are read from (the arguments of
/// `crate::coopmat_warps::WarpTile::accumulate_staged`).
#[derive(CubeType)]
pub(crate) struct StepPlaces {
    pub row: u32,
    pub row_end: u32,
    pub rhs_row: u32,
    pub col: u32,
    pub n: u32,
    pub k: u32,
}

#[cube]
impl StepPlaces {
    /// A dense product's tile at (`row`, `col`) of an `m x k` by `k x n` product: the rhs from
    /// its first row.
    pub fn dense(row: u32, col: u32, m: u32, n: u32, k: u32) -> StepPlaces {
        StepPlaces {
            row,
            row_end: m,
            rhs_row: 0,
            col,
            n,
            k,
        }
    }
}

/// The words of invocation `unit` (of `units`) of the K step from `k_step` of both input tiles.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_step_words<R: TileRows>(
    unit: u32,
    lhs: &[EightBf16],
    lhs_rows: &R,
    rhs: &[EightBf16],
    next_a: &mut Array<EightBf16>,
    next_b: &mut Array<EightBf16>,
    places: &StepPlaces,
    k_step: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] rows_of_k: bool,
    #[comptime] units: u32,
) {
    let (tm, tn, tk) = tile;
    let (row, row_end, k) = (places.row, places.row_end, places.k);
    load_rows_words::<R>(
        unit, lhs, lhs_rows, next_a, row, row_end, k_step, k, k, tm, tk, units,
    );
    let (rhs_row, col, n) = (places.rhs_row, places.col, places.n);
    load_rhs_words(
        unit, rhs, next_b, rhs_row, col, n, k, k_step, tk, tn, rows_of_k, units,
    );
}

/// The words of invocation `unit` of one K step's rhs tile (`load_tile_words`): from `rhs` [.., n],
/// K rows `rhs_row + k_step..` of columns `col..`; with `rows_of_k`, from `rhs` [.., k], the
/// rows `rhs_row + col..` (up to `rhs_row + n`) of K columns `k_step..`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rhs_words(
    unit: u32,
    rhs: &[EightBf16],
    words: &mut Array<EightBf16>,
    rhs_row: u32,
    col: u32,
    n: u32,
    k: u32,
    k_step: u32,
    #[comptime] tk: usize,
    #[comptime] tn: usize,
    #[comptime] rows_of_k: bool,
    #[comptime] units: u32,
) {
    if comptime![rows_of_k] {
        let (first, end) = (rhs_row + col, rhs_row + n);
        load_tile_words_as(unit, rhs, words, first, end, k_step, k, k, tn, tk, units);
    } else {
        let (first, end) = (rhs_row + k_step, rhs_row + k);
        load_tile_words_as(unit, rhs, words, first, end, col, n, n, tk, tn, units);
    }
}

/// Whether a `rows x cols` tile splits into whole 16-byte words per invocation.
pub fn whole_words_per_unit(rows: usize, cols: usize, units: u32) -> bool {
    (rows * cols).is_multiple_of(8 * units as usize)
}
