//! The two vocabulary-sized matrices (embedding and lm_head), split by vocabulary rows into
//! pieces of at most [`MAX_BUFFER_BYTES`]: wgpu cannot allocate one buffer of gpt-oss's
//! 201,088 x 2,880 f32 (2.3 GB; measured on an H100: "can't allocate buffer of size 2316533760").

use std::ops::Range;

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Element, Int, Tensor, TensorData};
use gpt_oss_kernels::launch::MAX_BUFFER_BYTES;

use super::load::tensor_as_given;
use gpt_oss_kernels::{bf16_rows, embedding_rows};

/// Piece lengths are multiples of this many rows (where a piece holds that many): the few-rows
/// GPU kernel takes lm_head pieces whose width is a multiple of 8 (gpt-oss's 93,206-row pieces
/// fell back to the tensor-core kernel, 2.2 ms per decoded token instead of about 0.6).
pub const PIECE_ROW_MULTIPLE: usize = 128;

/// Rows per piece for a table of `width` f32 columns.
pub fn rows_per_piece(width: usize) -> usize {
    let rows = MAX_BUFFER_BYTES / (width * 4);
    if rows >= PIECE_ROW_MULTIPLE {
        rows / PIECE_ROW_MULTIPLE * PIECE_ROW_MULTIPLE
    } else {
        rows.max(1)
    }
}

/// Rows up to which the lm_head's products take the few-row kernel on the kernel path, past
/// which the tensor-core GEMM (`bench kernel-check --only lm_head`, H100, 2026-11-27, gpt-oss's
/// three pieces, ms: few-row kernel / tensor cores at 2 rows 0.58 / 1.27, 4 rows 0.76 / 1.35,
/// 8 rows 1.61 / 1.32, 32 rows 3.42 / 1.36; at 16 and 32 rows the GEMM now takes 32 x 64 tiles,
/// `coopmat_gemm::FEW_ROWS_TILING`). The attention's projections keep the few-row kernel up to
/// 8 rows, and q, k and v up to 32 (`project::takes_rows_kernel`, `project::FEW_ROWS`).
pub const FEW_ROWS: usize = 4;

/// Token embedding table [vocab, H], in row pieces.
#[derive(Module, Debug)]
pub struct Embedding {
    pub pieces: Vec<Param<Tensor<2>>>,
    pub rows_per_piece: usize,
}

impl Embedding {
    /// Splits `values` ([vocab, width], row-major, f32 or bf16) into pieces of their dtype on
    /// `device`.
    pub fn from_rows<E: Element>(
        values: &[E],
        [vocab, width]: [usize; 2],
        device: &Device,
    ) -> Self {
        Self::split(values, [vocab, width], rows_per_piece(width), device)
    }

    fn split<E: Element>(
        values: &[E],
        [vocab, width]: [usize; 2],
        rows_per_piece: usize,
        device: &Device,
    ) -> Self {
        Self::from_pieces([vocab, width], rows_per_piece, device, |rows| {
            TensorData::new(
                values[rows.start * width..rows.end * width].to_vec(),
                [rows.len(), width],
            )
        })
    }

    /// A table of `[vocab, width]` in pieces of `rows_per_piece` rows, `piece(rows)` giving each
    /// piece's values ([rows.len(), width]), uploaded in their dtype: the loader hands over
    /// ranges of the checkpoint's map this way, without a copy on the host.
    pub fn from_pieces(
        [vocab, width]: [usize; 2],
        rows_per_piece: usize,
        device: &Device,
        piece: impl Fn(Range<usize>) -> TensorData,
    ) -> Self {
        let pieces = (0..vocab)
            .step_by(rows_per_piece)
            .map(|start| {
                let rows = start..(start + rows_per_piece).min(vocab);
                let data = piece(rows.clone());
                assert_eq!(
                    data.shape().as_slice(),
                    [rows.len(), width],
                    "rows {rows:?}"
                );
                Param::from_tensor(tensor_as_given(data, device))
            })
            .collect();
        Self {
            pieces,
            rows_per_piece,
        }
    }

    /// Rows of `ids` -> [ids.len(), H].
    pub fn forward(&self, ids: &[u32], device: &Device) -> Tensor<2> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        self.forward_ids(Tensor::<1, Int>::from_data(
            TensorData::new(ids, [n]),
            device,
        ))
    }

    /// Rows of a decode step's tokens `values` [n] (integers held as f32, as the step's state
    /// keeps them) -> [n, H]: one launch on the kernel path (bf16 pieces, at most three, rows a
    /// multiple of 8 wide), otherwise [`Self::forward_ids`].
    pub fn forward_token_values(&self, values: Tensor<1>) -> Tensor<2> {
        let pieces: Vec<Tensor<2>> = self.pieces.iter().map(|p| p.val()).collect();
        let width = pieces[0].dims()[1];
        if super::project::on_kernel_path(&pieces[0])
            && pieces.len() <= embedding_rows::MAX_PIECES
            && embedding_rows::supports(width)
        {
            return embedding_rows::embedding_rows(values, &pieces, self.rows_per_piece);
        }
        self.forward_ids(values.int())
    }

    /// Rows of the token ids held on the device, `ids` [n] -> [n, H]: each piece gives the rows
    /// of the ids inside it (the others masked out), so no id is read back to the host (a
    /// captured decode step takes its token from the step before).
    pub fn forward_ids(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        if self.pieces.len() == 1 {
            return self.pieces[0].val().select(0, ids).cast(DType::F32);
        }
        let n = ids.dims()[0];
        let mut out: Option<Tensor<2>> = None;
        for (p, piece) in self.pieces.iter().enumerate() {
            let start = (p * self.rows_per_piece) as i64;
            let rows = piece.dims()[0] as i64;
            let local = ids.clone().sub_scalar(start).clamp(0, rows - 1);
            let inside = ids
                .clone()
                .greater_equal_elem(start)
                .bool_and(ids.clone().lower_elem(start + rows))
                .float()
                .reshape([n, 1]);
            let part = piece.val().select(0, local).cast(DType::F32) * inside;
            out = Some(match out {
                Some(sum) => sum + part,
                None => part,
            });
        }
        out.expect("an embedding has at least one piece")
    }
}

/// Output projection [H, vocab] (the checkpoint's [vocab, H] transposed), in column pieces.
#[derive(Module, Debug)]
pub struct LmHead {
    pub pieces: Vec<Param<Tensor<2>>>,
}

impl LmHead {
    /// From the checkpoint's [vocab, width] rows (f32 or bf16), in pieces of their dtype.
    pub fn from_rows<E: Element>(
        values: &[E],
        [vocab, width]: [usize; 2],
        device: &Device,
    ) -> Self {
        Self::split(values, [vocab, width], rows_per_piece(width), device)
    }

    fn split<E: Element>(
        values: &[E],
        [vocab, width]: [usize; 2],
        rows_per_piece: usize,
        device: &Device,
    ) -> Self {
        let pieces = (0..vocab)
            .step_by(rows_per_piece)
            .map(|start| {
                let rows = rows_per_piece.min(vocab - start);
                let t = super::load::transpose(
                    &values[start * width..(start + rows) * width],
                    rows,
                    width,
                );
                Param::from_tensor(tensor_as_given(TensorData::new(t, [width, rows]), device))
            })
            .collect();
        Self { pieces }
    }

    /// [B, T, H] -> logits [B, T, vocab]. On the kernel path, with the vocabulary in three
    /// pieces (gpt-oss's: 93,184 + 93,184 + 14,720 rows) and up to [`FEW_ROWS`] rows (decoding),
    /// the three pieces' products run side by side in one launch that writes the logits, in
    /// place of three launches and their concatenation. (The final norm fused into that launch
    /// cost more than it saved: each of its 3,142 workgroups normed the row again, 1,149 us
    /// against 484 for the product alone at one row, H100, 2026-11-27.)
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = x.dims();
        let rows = x.reshape([b * t, h]);
        let weights: Vec<Tensor<2>> = self.pieces.iter().map(|p| p.val()).collect();
        let logits = if self.takes_one_launch(b * t) {
            let three: [Tensor<2>; 3] = weights.try_into().expect("three pieces");
            bf16_rows::bf16_rows_three(rows, three, None)
        } else {
            let mut parts: Vec<Tensor<2>> = (weights.into_iter())
                .map(|w| {
                    super::project::times_weight_few_rows_up_to(rows.clone(), w, None, FEW_ROWS)
                })
                .collect();
            match parts.len() {
                1 => parts.remove(0),
                _ => Tensor::cat(parts, 1),
            }
        };
        let vocab = logits.dims()[1];
        logits.reshape([b, t, vocab])
    }

    /// Whether a product of `rows` rows runs as one three-product launch: on the kernel path,
    /// up to [`FEW_ROWS`] rows, three pieces of widths the kernel takes.
    fn takes_one_launch(&self, rows: usize) -> bool {
        let widths: Vec<usize> = self.pieces.iter().map(|p| p.val().dims()[1]).collect();
        rows <= FEW_ROWS
            && super::project::on_kernel_path(&self.pieces[0].val())
            && matches!(widths[..], [n0, n1, n2] if bf16_rows::supports_three(n0, n1, n2))
    }

    /// log p(target) at each position of `x` [B, T, H] for `targets` [B, T] -> [B, T]. With
    /// bf16 weights (the GPU path) the normaliser comes from the logsumexp kernel; otherwise
    /// from burn's log-softmax (the reference).
    pub fn target_logprobs(&self, x: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
        let logits = self.forward(x);
        let [b, t, vocab] = logits.dims();
        let targets = targets.unsqueeze_dim::<3>(2);
        if super::project::on_kernel_path(&self.pieces[0].val()) {
            let picked = logits.clone().gather(2, targets).reshape([b, t]);
            let normaliser =
                gpt_oss_kernels::logsumexp_rows::logsumexp_rows(logits.reshape([b * t, vocab]));
            picked - normaliser.reshape([b, t])
        } else {
            log_softmax(logits, 2).gather(2, targets).reshape([b, t])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_vocabulary_and_lookups_cross_them() {
        let device = Device::flex();
        let (vocab, width) = (10, 3);
        let values: Vec<f32> = (0..vocab * width).map(|v| v as f32).collect();
        let e = Embedding::split(&values, [vocab, width], 4, &device);
        assert_eq!(e.pieces.len(), 3);
        let got = e
            .forward(&[9, 0, 5, 4, 9], &device)
            .try_into_vec_as::<f32>()
            .unwrap();
        let want: Vec<f32> = [9, 0, 5, 4, 9]
            .iter()
            .flat_map(|&r| (0..width).map(move |c| (r * width + c) as f32))
            .collect();
        assert_eq!(got, want);
        let ids =
            Tensor::<1, Int>::from_data(TensorData::new(vec![9i64, 0, 5, 4, 9], [5]), &device);
        let on_device = e.forward_ids(ids).try_into_vec_as::<f32>().unwrap();
        assert_eq!(on_device, want, "lookup of ids held on the device");
    }

    /// gpt-oss's lm_head pieces (width 2880, vocabulary 201,088) have widths the few-rows
    /// kernel takes (multiples of 8).
    #[test]
    fn gpt_oss_pieces_are_multiples_of_eight_rows() {
        let rows = rows_per_piece(2880);
        assert_eq!(rows % 8, 0);
        assert_eq!((201_088 % rows) % 8, 0);
        assert!(rows * 2880 * 4 <= MAX_BUFFER_BYTES);
        assert_eq!(
            rows_per_piece(1 << 22),
            64,
            "fewer rows than the multiple: as many as fit"
        );
    }

    #[test]
    fn split_lm_head_equals_one_piece() {
        let device = Device::flex();
        let (vocab, width) = (10, 3);
        let values: Vec<f32> = (0..vocab * width)
            .map(|v| (v as f32 * 0.37).sin())
            .collect();
        let x = Tensor::<3>::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 1.0, 0.0, 3.0], [1, 2, 3]),
            &device,
        );
        let whole = LmHead::split(&values, [vocab, width], vocab, &device).forward(x.clone());
        let split = LmHead::split(&values, [vocab, width], 4, &device).forward(x);
        assert_eq!(
            whole.try_into_vec_as::<f32>().unwrap(),
            split.try_into_vec_as::<f32>().unwrap()
        );
    }
}
