//! Row-major matrices transposed on the host (the checkpoint's [out, in] weights to the
//! [in, out] the products take), on the machine's cores.

/// Row-major [rows, cols] -> [cols, rows], in tiles for cache locality, with the output's rows
/// shared among the machine's cores: a 20b's attention projections and lm_head are 1.2 billion
/// values, about 5 s on one core in our lightly optimised build.
pub(crate) fn transpose<E: Copy + Default + Send + Sync>(
    values: &[E],
    rows: usize,
    cols: usize,
) -> Vec<E> {
    let mut out = vec![E::default(); values.len()];
    transpose_into(values, rows, cols, &mut out);
    out
}

/// [`transpose`] into `out` (rows * cols values).
pub(crate) fn transpose_into<E: Copy + Send + Sync>(
    values: &[E],
    rows: usize,
    cols: usize,
    out: &mut [E],
) {
    assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
    assert_eq!(out.len(), values.len(), "the transposed matrix's room");
    if out.is_empty() {
        return;
    }
    let threads = match values.len() {
        n if n < PARALLEL_TRANSPOSE_VALUES => 1,
        _ => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let cols_per_thread = cols.div_ceil(threads).next_multiple_of(TRANSPOSE_TILE);
    std::thread::scope(|scope| {
        for (i, out_rows) in out.chunks_mut(cols_per_thread * rows).enumerate() {
            let first_col = i * cols_per_thread;
            scope.spawn(move || transpose_columns(values, [rows, cols], first_col, out_rows));
        }
    });
}

const TRANSPOSE_TILE: usize = 32;

/// Matrices smaller than this are transposed on the calling thread.
const PARALLEL_TRANSPOSE_VALUES: usize = 1 << 20;

/// Writes columns `first_col..` of `values` ([rows, cols], row-major) as the rows of `out_rows`.
fn transpose_columns<E: Copy>(
    values: &[E],
    [rows, cols]: [usize; 2],
    first_col: usize,
    out_rows: &mut [E],
) {
    let count = out_rows.len() / rows;
    for r0 in (0..rows).step_by(TRANSPOSE_TILE) {
        for c0 in (0..count).step_by(TRANSPOSE_TILE) {
            let c1 = (c0 + TRANSPOSE_TILE).min(count);
            for r in r0..(r0 + TRANSPOSE_TILE).min(rows) {
                let row = &values[r * cols + first_col..][c0..c1];
                for (c, &value) in (c0..c1).zip(row) {
                    out_rows[c * rows + r] = value;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_gives_the_same_matrix_on_one_thread_and_on_several() {
        // Above PARALLEL_TRANSPOSE_VALUES, with columns that leave the last thread a part tile.
        let (rows, cols) = (1000, 1100);
        let values: Vec<u32> = (0..rows * cols).map(|i| i as u32).collect();
        let out = transpose(&values, rows, cols);
        for (r, c) in [
            (0, 0),
            (0, cols - 1),
            (rows - 1, 0),
            (rows - 1, cols - 1),
            (517, 1031),
        ] {
            assert_eq!(out[c * rows + r], values[r * cols + c], "({r}, {c})");
        }
        assert_eq!(transpose(&out, cols, rows), values);
        assert_eq!(transpose(&[1, 2, 3, 4, 5, 6], 2, 3), vec![1, 4, 2, 5, 3, 6]);
        // Into one expert's part of a larger table, as `decoded_experts` does.
        let mut table = [0; 8];
        transpose_into(&[1, 2, 3, 4], 2, 2, &mut table[4..]);
        assert_eq!(table, [0, 0, 0, 0, 1, 3, 2, 4]);
    }
}
