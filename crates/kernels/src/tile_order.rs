//! The order in which a tiled product's workgroups take its output tiles, and so which input
//! the L2 cache keeps.
//!
//! The GPU starts workgroups roughly in grid order, the first grid dimension fastest, and runs
//! about one per multiprocessor at a time. With the row tiles first (`RowsFirst`), the
//! workgroups in flight share one column tile (its weights are read once) and stream every row
//! tile, so the input rows are read again for each column tile: scoring's grouped gate_up reads
//! its 377 MB of rows 45 times. With the column tiles first (`ColumnsFirst`), the workgroups in
//! flight share a few row tiles (read once) and walk every column tile, so the weights are read
//! again for each few row tiles, from the L2 cache when they fit (an expert's gate_up is 8.3
//! MB, a layer's q projection 24 MB; a piece of the lm_head does not fit).

use cubecl::prelude::*;

use crate::launch::MAX_GRID_X;

/// Which tiles the first grid dimension walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileOrder {
    /// Every row tile of one column tile, then the next column tile.
    RowsFirst,
    /// Every column tile of one row tile, then the next row tile.
    ColumnsFirst,
}

/// Weights up to this size are read column tiles first (half the H100's 50 MB L2 cache, so
/// the rows in flight and other data fit beside them).
pub const WEIGHTS_KEPT_IN_L2: usize = 24 << 20;

impl TileOrder {
    /// Column tiles first when `weight_bytes` (the matrix the column tiles read) fit in
    /// [`WEIGHTS_KEPT_IN_L2`], else row tiles first.
    pub fn for_weights(weight_bytes: usize) -> TileOrder {
        match weight_bytes <= WEIGHTS_KEPT_IN_L2 {
            true => TileOrder::ColumnsFirst,
            false => TileOrder::RowsFirst,
        }
    }

    /// The grid of `row_tiles` x `column_tiles` workgroups in this order.
    pub fn cube_count(self, row_tiles: usize, column_tiles: usize) -> CubeCount {
        assert!(
            row_tiles <= MAX_GRID_X && column_tiles <= MAX_GRID_X,
            "a grid of {row_tiles} x {column_tiles} tiles passes {MAX_GRID_X} workgroups a side"
        );
        let (x, y) = match self {
            TileOrder::RowsFirst => (row_tiles, column_tiles),
            TileOrder::ColumnsFirst => (column_tiles, row_tiles),
        };
        CubeCount::Static(x as u32, y as u32, 1)
    }

    /// The kernels' comptime flag: whether the first grid dimension walks column tiles.
    pub fn columns_first(self) -> bool {
        self == TileOrder::ColumnsFirst
    }
}

/// This workgroup's (row tile, column tile) in a grid made by [`TileOrder::cube_count`].
#[cube]
pub fn tile_position(#[comptime] columns_first: bool) -> (u32, u32) {
    let mut row_tile = CUBE_POS_X;
    let mut column_tile = CUBE_POS_Y;
    if comptime![columns_first] {
        row_tile = CUBE_POS_Y;
        column_tile = CUBE_POS_X;
    }
    (row_tile, column_tile)
}

/// The first row and column of this workgroup's `tm x tn` output tile ([`tile_position`]'s
/// tile): the dense GEMM kernels' origin.
#[cube]
pub fn tile_origin(
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] columns_first: bool,
) -> (u32, u32) {
    let (row_tile, column_tile) = tile_position(columns_first);
    (row_tile * tm as u32, column_tile * tn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_that_fit_in_the_cache_are_read_column_tiles_first() {
        // A layer's q projection (2880 x 4096 bf16) fits; a piece of the lm_head does not.
        assert_eq!(
            TileOrder::for_weights(2880 * 4096 * 2),
            TileOrder::ColumnsFirst
        );
        assert_eq!(
            TileOrder::for_weights(2880 * 93184 * 2),
            TileOrder::RowsFirst
        );
    }

    #[test]
    fn the_grid_puts_the_first_tiles_on_its_first_dimension() {
        let count = |order: TileOrder| match order.cube_count(288, 45) {
            CubeCount::Static(x, y, z) => (x, y, z),
            CubeCount::Dynamic(_) => unreachable!("a static grid"),
        };
        assert_eq!(count(TileOrder::RowsFirst), (288, 45, 1));
        assert_eq!(count(TileOrder::ColumnsFirst), (45, 288, 1));
    }
}
