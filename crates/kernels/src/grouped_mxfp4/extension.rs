//! The grouped kernel as burn backend-extension ops (fusion-aware), and its launch.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use std::ops::Range;

use super::decode::decode_experts_kernel;
use super::kernel::{EPILOGUE_NONE, EPILOGUE_SCALED, EPILOGUE_SWIGLU, grouped_mxfp4_kernel};
use super::warps::grouped_mxfp4_warps_kernel;
use super::{Tiling, UNITS};
use crate::launch::{MAX_BUFFER_BYTES, bf16_dtype, empty_f32, empty_of, grid_over_rows};

/// GPU extension ops for the grouped MoE; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait GroupedBackend: burn::backend::Backend {
    /// `a` [P, K] bf16 rows sorted by expert, `words` [E, N, K / 8] and `scales` [E, S] the
    /// packed MXFP4 weights, `offsets` and `tile_starts` [E + 1] (counting tiles of
    /// `tiling.m` rows) -> [P, N] f32.
    #[fusion(dtype = accumulator_dtype(a), shape = product_shape(a, words))]
    fn grouped_mxfp4_matmul(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
    ) -> FloatTensor<Self>;

    /// As `grouped_mxfp4_matmul` for gate_up, with each expert's `bias` [E, N] and the clamped
    /// SwiGLU in the same launch -> [P, N / 2] bf16 (the down product's input).
    #[fusion(dtype = bf16_dtype(a), shape = swiglu_shape(a, words))]
    #[allow(clippy::too_many_arguments)]
    fn grouped_mxfp4_swiglu(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        bias: FloatTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
        limit: f32,
        alpha: f32,
    ) -> FloatTensor<Self>;

    /// As `grouped_mxfp4_swiglu`, the rows read in the kernel from `tokens` [T, K] bf16 in token
    /// order: sorted row r is the token row `rows_of[r]` (`rows_of` [P], 32-bit). Only tilings
    /// that gather ([`Tiling::gathers_rows`]) take it.
    #[fusion(dtype = bf16_dtype(tokens), shape = gathered_swiglu_shape(rows_of, words))]
    #[allow(clippy::too_many_arguments)]
    fn grouped_mxfp4_swiglu_gathered(
        tokens: FloatTensor<Self>,
        rows_of: IntTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        bias: FloatTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
        limit: f32,
        alpha: f32,
    ) -> FloatTensor<Self>;

    /// As `grouped_mxfp4_matmul` for down, with each expert's `bias` [E, N] added and each row
    /// multiplied by its weight `row_weights` [P] in the same launch, each sorted row written to
    /// its pair's row `pair_of_row` [P] (32-bit) -> [P, N] f32 in pair order.
    #[fusion(dtype = accumulator_dtype(a), shape = product_shape(a, words))]
    #[allow(clippy::too_many_arguments)]
    fn grouped_mxfp4_scaled(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        bias: FloatTensor<Self>,
        row_weights: FloatTensor<Self>,
        pair_of_row: IntTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
    ) -> FloatTensor<Self>;

    /// `words` [E, N, K / 8] and `scales` [E, S] decoded to bf16 [E, N, K]: the scratch a
    /// launch with `Tiling::decoded` reads.
    #[fusion(dtype = bf16_dtype(words), shape = decoded_shape(words))]
    fn decoded_mxfp4_experts(words: IntTensor<Self>, scales: IntTensor<Self>) -> FloatTensor<Self>;
}

/// The decoded weights' shape: [E, N, K] from the words' [E, N, K / 8].
fn decoded_shape(words: &Shape) -> Shape {
    Shape::from(vec![words[0], words[1], words[2] * 8])
}

fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

fn product_shape(a: &Shape, words: &Shape) -> Shape {
    Shape::from(vec![a[0], words[1]])
}

fn swiglu_shape(a: &Shape, words: &Shape) -> Shape {
    Shape::from(vec![a[0], words[1] / 2])
}

fn gathered_swiglu_shape(rows_of: &Shape, words: &Shape) -> Shape {
    Shape::from(vec![rows_of[0], words[1] / 2])
}

/// The packed weights and the sorting of one grouped product, as the kernel reads them: the
/// sorted rows `a`, or with `rows_of` the tokens' rows that it indexes.
struct GroupedInputs {
    a: CubeTensor,
    rows_of: Option<CubeTensor>,
    words: CubeTensor,
    scales: CubeTensor,
    offsets: CubeTensor,
    tile_starts: CubeTensor,
}

impl GroupedInputs {
    /// The inputs of a product whose rows `a` are already sorted by expert.
    fn sorted(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
    ) -> GroupedInputs {
        GroupedInputs {
            a,
            rows_of: None,
            words,
            scales,
            offsets,
            tile_starts,
        }
    }
}

/// The epilogue's inputs: each expert's bias, row weights and pair of each row (scaled),
/// SwiGLU's limit and alpha.
struct EpilogueInputs {
    code: u32,
    bias: Option<CubeTensor>,
    row_weights: Option<CubeTensor>,
    pair_of_row: Option<CubeTensor>,
    limit: f32,
    alpha: f32,
}

const NO_EPILOGUE: EpilogueInputs = EpilogueInputs {
    code: EPILOGUE_NONE,
    bias: None,
    row_weights: None,
    pair_of_row: None,
    limit: 0.0,
    alpha: 0.0,
};

/// What a launch returns: the products [P, N] in sorted rows, and the epilogue's output (the
/// activations [P, N / 2] bf16 with SwiGLU, the scaled products [P, N] in pair order when
/// scaled; a placeholder otherwise).
struct GroupedOutputs {
    products: CubeTensor,
    epilogue: CubeTensor,
}

/// Launches the kernel.
fn launch_grouped(
    inputs: GroupedInputs,
    tiling: Tiling,
    epilogue: EpilogueInputs,
) -> GroupedOutputs {
    let GroupedInputs {
        a,
        rows_of,
        words,
        scales,
        offsets,
        tile_starts,
    } = inputs;
    let [a, words, scales, offsets, tile_starts] =
        [a, words, scales, offsets, tile_starts].map(into_contiguous);
    let rows_of = rows_of.map(into_contiguous);
    let k = a.meta.shape()[1];
    let p = match &rows_of {
        Some(rows_of) => rows_of.meta.shape()[0],
        None => a.meta.shape()[0],
    };
    let (experts, n) = (words.meta.shape()[0], words.meta.shape()[1]);
    let scale_words = scales.meta.shape()[1];
    let client = a.client.clone();
    let t = tiling.for_product(k);
    let warp = t.warp_block(n);
    assert!(
        rows_of.is_none() || t.gathers_rows(n),
        "grouped MXFP4 kernel: tiling {t:?} does not gather rows at N = {n}"
    );
    let gathered = rows_of.is_some();
    let rows_of = rows_of.unwrap_or_else(|| empty_of(&a, vec![1], DType::I32));
    // Epilogues from the fragments store no products.
    let from_fragments = warp.is_some() && t.fragment_epilogues && epilogue.code != EPILOGUE_NONE;
    let products_rows = match from_fragments {
        true => 1,
        false => p,
    };
    let out = empty_f32(&a, vec![products_rows, n]);
    let activation = if epilogue.code == EPILOGUE_SWIGLU {
        empty_of(&a, vec![p, n / 2], DType::BF16)
    } else {
        empty_of(&a, vec![1], DType::BF16)
    };
    let in_pair_order = if epilogue.code == EPILOGUE_SCALED {
        empty_f32(&a, vec![p, n])
    } else {
        empty_f32(&a, vec![1])
    };
    let unused = || empty_f32(&out, vec![1]);
    let bias = epilogue.bias.map(into_contiguous).unwrap_or_else(unused);
    let row_weights = epilogue
        .row_weights
        .map(into_contiguous)
        .unwrap_or_else(unused);
    let pair_of_row = epilogue
        .pair_of_row
        .map(into_contiguous)
        .unwrap_or_else(|| empty_of(&out, vec![1], DType::I32));
    assert!(
        k.is_multiple_of(8) && t.stages_split_into_words(),
        "grouped MXFP4 kernel: rows of {k} values, or the {} x {} and {} x {} stages, do not \
         split into whole 16-byte words over {UNITS} invocations",
        t.m,
        t.k,
        t.n,
        t.k
    );
    let tiles = p.div_ceil(t.m) + experts;
    let cube_count = t.order.cube_count(tiles, n.div_ceil(t.n));
    // With `decoded`, the kernel reads the weights decoded to bf16 and not the words, one
    // launch per range of experts whose decoded weights fit in one buffer (120b's gate_up,
    // 4.25 GB, takes four; 20b's, 1.06 GB, one), or in the device's own limit where it is lower.
    let chunks = match t.decoded {
        true => {
            let most = MAX_BUFFER_BYTES.min(client.properties().memory.max_page_size as usize);
            expert_chunks(experts, n * k * DType::BF16.size(), most)
        }
        false => std::iter::once(0..experts).collect(),
    };
    for chunk in chunks {
        let (words, decoded) = match t.decoded {
            true => (
                empty_of(&a, vec![1], DType::I32),
                decoded_experts(&words, &scales, k, chunk.clone()),
            ),
            false => (words.clone(), empty_of(&a, vec![1], DType::BF16)),
        };
        let (from, to) = (chunk.start as u32, chunk.end as u32);
        // Both kernels take these arguments, each its own among them (the generated launch
        // functions take each argument separately): inputs after the rows, scalars after K,
        // comptime values after the tile.
        macro_rules! launch_kernel {
            ($launch:path, [$($inputs:expr),*], [$($scalars:expr),*], [$($comptime:expr),*]) => {
                $launch(
                    &client,
                    cube_count.clone(),
                    CubeDim::new_1d(UNITS),
                    a.clone().into_buffer_arg(),
                    $($inputs,)*
                    decoded.into_buffer_arg(),
                    offsets.clone().into_buffer_arg(),
                    tile_starts.clone().into_buffer_arg(),
                    out.clone().into_buffer_arg(),
                    bias.clone().into_buffer_arg(),
                    row_weights.clone().into_buffer_arg(),
                    activation.clone().into_buffer_arg(),
                    pair_of_row.clone().into_buffer_arg(),
                    in_pair_order.clone().into_buffer_arg(),
                    n as u32,
                    k as u32,
                    $($scalars,)*
                    experts as u32,
                    from,
                    to,
                    epilogue.limit,
                    epilogue.alpha,
                    (t.m, t.n, t.k),
                    $($comptime),*
                )
            };
        }
        let columns_first = t.order.columns_first();
        match warp {
            Some(warp) => launch_kernel!(
                grouped_mxfp4_warps_kernel::launch,
                [rows_of.clone().into_buffer_arg()],
                [],
                [
                    warp,
                    columns_first,
                    epilogue.code,
                    t.fragment_epilogues,
                    gathered
                ]
            ),
            None => launch_kernel!(
                grouped_mxfp4_kernel::launch,
                [words.into_buffer_arg(), scales.clone().into_buffer_arg()],
                [scale_words as u32],
                [t.table, t.decoded, columns_first, epilogue.code]
            ),
        }
    }
    let epilogue = match epilogue.code {
        EPILOGUE_SCALED => in_pair_order,
        _ => activation,
    };
    GroupedOutputs {
        products: out,
        epilogue,
    }
}

/// Consecutive ranges covering `experts` experts, each as many experts of `bytes_per_expert`
/// as fit in `most` bytes (at least one): the launches of a product whose decoded weights
/// would not fit in one buffer.
pub(crate) fn expert_chunks(
    experts: usize,
    bytes_per_expert: usize,
    most: usize,
) -> Vec<Range<usize>> {
    let per_chunk = (most / bytes_per_expert.max(1)).max(1);
    (0..experts)
        .step_by(per_chunk)
        .map(|first| first..(first + per_chunk).min(experts))
        .collect()
}

/// The weights of `experts`, from `words` [E, N, K / 8] and `scales` [E, S], decoded to bf16
/// [experts.len(), N, K] in one launch (`decode_experts_kernel`).
fn decoded_experts(
    words: &CubeTensor,
    scales: &CubeTensor,
    k: usize,
    experts: Range<usize>,
) -> CubeTensor {
    let n = words.meta.shape()[1];
    let decoded = empty_of(words, vec![experts.len(), n, k], DType::BF16);
    let count = experts.len() * n * k / 8;
    decode_experts_kernel::launch(
        &words.client,
        grid_over_rows(count.div_ceil(UNITS as usize)),
        CubeDim::new_1d(UNITS),
        words.clone().into_buffer_arg(),
        scales.clone().into_buffer_arg(),
        decoded.clone().into_buffer_arg(),
        n as u32,
        k as u32,
        scales.meta.shape()[1] as u32,
        experts.start as u32,
        count as u32,
    );
    decoded
}

/// Launches gate_up with each expert's `bias` and the clamped SwiGLU -> [P, N / 2] bf16.
fn launch_swiglu(
    inputs: GroupedInputs,
    tiling: Tiling,
    bias: CubeTensor,
    limit: f32,
    alpha: f32,
) -> CubeTensor {
    let epilogue = EpilogueInputs {
        code: EPILOGUE_SWIGLU,
        bias: Some(bias),
        limit,
        alpha,
        ..NO_EPILOGUE
    };
    launch_grouped(inputs, tiling, epilogue).epilogue
}

impl GroupedBackend for CubeBackend {
    fn decoded_mxfp4_experts(words: CubeTensor, scales: CubeTensor) -> CubeTensor {
        let [words, scales] = [words, scales].map(into_contiguous);
        let (experts, k) = (words.meta.shape()[0], words.meta.shape()[2] * 8);
        decoded_experts(&words, &scales, k, 0..experts)
    }

    fn grouped_mxfp4_matmul(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        tiling: Tiling,
    ) -> CubeTensor {
        let inputs = GroupedInputs::sorted(a, words, scales, offsets, tile_starts);
        launch_grouped(inputs, tiling, NO_EPILOGUE).products
    }

    fn grouped_mxfp4_swiglu(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        bias: CubeTensor,
        tiling: Tiling,
        limit: f32,
        alpha: f32,
    ) -> CubeTensor {
        let inputs = GroupedInputs::sorted(a, words, scales, offsets, tile_starts);
        launch_swiglu(inputs, tiling, bias, limit, alpha)
    }

    fn grouped_mxfp4_swiglu_gathered(
        tokens: CubeTensor,
        rows_of: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        bias: CubeTensor,
        tiling: Tiling,
        limit: f32,
        alpha: f32,
    ) -> CubeTensor {
        let inputs = GroupedInputs {
            rows_of: Some(rows_of),
            ..GroupedInputs::sorted(tokens, words, scales, offsets, tile_starts)
        };
        launch_swiglu(inputs, tiling, bias, limit, alpha)
    }

    fn grouped_mxfp4_scaled(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        bias: CubeTensor,
        row_weights: CubeTensor,
        pair_of_row: CubeTensor,
        tiling: Tiling,
    ) -> CubeTensor {
        let inputs = GroupedInputs::sorted(a, words, scales, offsets, tile_starts);
        let epilogue = EpilogueInputs {
            code: EPILOGUE_SCALED,
            bias: Some(bias),
            row_weights: Some(row_weights),
            pair_of_row: Some(pair_of_row),
            ..NO_EPILOGUE
        };
        launch_grouped(inputs, tiling, epilogue).epilogue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experts_split_into_launches_whose_decoded_weights_fit() {
        // 20b's gate_up: 32 experts of 5760 x 2880 bf16 (33.2 MB) in one launch; 120b's 128
        // in four of 32; its down (16.6 MB each) in two of 64.
        let gate_up = 5760 * 2880 * 2;
        assert_eq!(expert_chunks(32, gate_up, MAX_BUFFER_BYTES), vec![0..32]);
        assert_eq!(
            expert_chunks(128, gate_up, MAX_BUFFER_BYTES),
            vec![0..32, 32..64, 64..96, 96..128]
        );
        assert_eq!(
            expert_chunks(128, gate_up / 2, MAX_BUFFER_BYTES),
            vec![0..64, 64..128]
        );
        // The last range takes what is left; an expert larger than the limit goes alone.
        assert_eq!(expert_chunks(7, 10, 30), vec![0..3, 3..6, 6..7]);
        assert_eq!(expert_chunks(2, 50, 30), vec![0..1, 1..2]);
        assert_eq!(expert_chunks(0, 10, 30), Vec::<Range<usize>>::new());
    }
}
