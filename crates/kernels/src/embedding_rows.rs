//! A decode step's embedding rows in one launch: the tokens held on the device (f32, as the
//! step's state keeps them) looked up in a bf16 table split into up to three row pieces
//! (gpt-oss's 201,088 x 2,880 table is three), written as f32.
//!
//! burn ran the lookup as the tokens' cast to integers and, per piece, a shifted and clamped
//! index, an in-piece mask, a select, a cast and the masked sum: some eight launches after
//! fusion. Each invocation here copies eight values of a row (one 16-byte load).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::bf16_rows::{EightBf16, bf16_pair};
use crate::launch::{MAX_GRID_X, empty_f32};
use crate::workgroup_reduce::UNITS;

/// Most row pieces of a table.
pub const MAX_PIECES: usize = 3;

/// `out[row]` = row `ids[row]` of the table whose pieces `p0`, `p1`, `p2` hold
/// `rows_per_piece` rows each (the last fewer); ids past `vocab` give zeros. Grid: the row's
/// eight-value vectors across (in workgroups of [`UNITS`]), rows down.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn embedding_rows_kernel(
    ids: &[f32],
    p0: &[EightBf16],
    p1: &[EightBf16],
    p2: &[EightBf16],
    out: &mut [f32],
    rows_per_piece: u32,
    vocab: u32,
    vectors: u32,
) {
    let vector = CUBE_POS_X * UNITS + UNIT_POS;
    let row = CUBE_POS_Y;
    if vector >= vectors {
        terminate!();
    }
    let id = u32::cast_from(ids[row as usize]);
    let mut eight = EightBf16::new(0u32);
    if id < vocab {
        let piece = id / rows_per_piece;
        let at = ((id % rows_per_piece) * vectors + vector) as usize;
        if piece == 0 {
            eight = p0[at];
        } else if piece == 1 {
            eight = p1[at];
        } else {
            eight = p2[at];
        }
    }
    let base = (row * vectors + vector) * 8;
    #[unroll]
    for q in 0..4usize {
        let (low, high) = bf16_pair(eight.extract(q));
        out[(base + 2 * q as u32) as usize] = low;
        out[(base + 2 * q as u32 + 1) as usize] = high;
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait EmbeddingRowsBackend: burn::backend::Backend {
    /// `ids` [n] f32 (integers), pieces [rows_i, width] bf16 (`pieces` of them used, the
    /// others any bf16 tensor) -> [n, width] f32.
    #[fusion(dtype = DType::F32, shape = Shape::from(vec![ids[0], p0[1]]))]
    fn embedding_rows(
        ids: FloatTensor<Self>,
        p0: FloatTensor<Self>,
        p1: FloatTensor<Self>,
        p2: FloatTensor<Self>,
        pieces: usize,
        rows_per_piece: usize,
    ) -> FloatTensor<Self>;
}

impl EmbeddingRowsBackend for CubeBackend {
    fn embedding_rows(
        ids: CubeTensor,
        p0: CubeTensor,
        p1: CubeTensor,
        p2: CubeTensor,
        pieces: usize,
        rows_per_piece: usize,
    ) -> CubeTensor {
        let [ids, p0, p1, p2] = [ids, p0, p1, p2].map(into_contiguous);
        let n = ids.meta.num_elements();
        let width = p0.meta.shape()[1];
        let all = [&p0, &p1, &p2];
        for piece in &all[..pieces] {
            assert!(
                piece.dtype == DType::BF16 && piece.meta.shape()[1] == width,
                "embedding_rows: pieces must be bf16 of one width"
            );
        }
        assert!(
            supports(width) && n <= MAX_GRID_X,
            "embedding_rows: {n} rows of {width}"
        );
        let vocab: usize = all[..pieces].iter().map(|p| p.meta.shape()[0]).sum();
        let vectors = width / 8;
        let out = empty_f32(&ids, vec![n, width]);
        embedding_rows_kernel::launch(
            &ids.client.clone(),
            CubeCount::Static(vectors.div_ceil(UNITS as usize) as u32, n as u32, 1),
            CubeDim::new_1d(UNITS),
            ids.into_buffer_arg(),
            p0.into_buffer_arg(),
            p1.into_buffer_arg(),
            p2.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows_per_piece as u32,
            vocab as u32,
            vectors as u32,
        );
        out
    }
}

/// Whether the kernel takes rows of `width` values (eight at a time).
pub fn supports(width: usize) -> bool {
    width.is_multiple_of(8)
}

/// Rows `ids` [n] (integers held as f32) of the bf16 table in `pieces` (1 to [`MAX_PIECES`],
/// `rows_per_piece` rows each, the last fewer; width a multiple of 8) -> [n, width] f32, in
/// one launch; ids past the table give zeros. GPU only (the reference is the model's
/// embedding lookup).
pub fn embedding_rows(ids: Tensor<1>, pieces: &[Tensor<2>], rows_per_piece: usize) -> Tensor<2> {
    assert!(
        (1..=MAX_PIECES).contains(&pieces.len()),
        "embedding_rows: {} pieces",
        pieces.len()
    );
    // Missing pieces are never read: the first stands in.
    let piece = |i: usize| pieces.get(i).unwrap_or(&pieces[0]).clone().into_dispatch();
    Tensor::from_dispatch(
        <burn::backend::Dispatch as EmbeddingRowsBackend>::embedding_rows(
            ids.cast(DType::F32).into_dispatch(),
            piece(0),
            piece(1),
            piece(2),
            pieces.len(),
            rows_per_piece,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles() {
        let compiled = compile_kernel!(
            embedding_rows_kernel::EmbeddingRowsKernel,
            CubeDim::new_1d(UNITS),
            [b b b b b s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
