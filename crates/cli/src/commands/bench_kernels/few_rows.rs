//! `bench kernel-check`'s few-row product checks: `bf16_rows` at 20b's decoding shapes and odd
//! sizes against the f32 reference GEMM, and the three-product kernel with and without its
//! fused input norm.

use burn::tensor::{DType, Device, Distribution, Tensor};
use serde_json::json;

use super::{Worst, seconds_per_queued_call};

/// Every few-row product case against its reference (errors and the time per queued call).
pub(super) fn check_bf16_rows(device: &Device) -> anyhow::Result<()> {
    let mut worst = Worst::new("few-rows kernel", 1e-2);
    // 20b's decoding shapes (q, k/v, o, half an lm_head: the f32 reference of a whole one
    // is past wgpu's buffer size) and odd sizes (K shorter than the slices,
    // rows past a tile, columns past a workgroup).
    for [m, k, n] in [
        [1, 32, 16],
        [5, 64, 104],
        [3, 100, 24],
        [1, 2880, 4096],
        [1, 2880, 512],
        [1, 4096, 2880],
        [1, 2880, 100008],
        [32, 2880, 5760],
        [9, 2880, 50008],
    ] {
        let x = Tensor::<2>::random([m, k], Distribution::Default, device);
        let w = Tensor::<2>::random([k, n], Distribution::Default, device).cast(DType::BF16);
        // Odd row counts also add a bias (in the same kernel).
        let bias = (m % 2 == 1).then(|| Tensor::<1>::random([n], Distribution::Default, device));
        let product =
            || gpt_oss_kernels::bf16_rows::bf16_rows_matmul(x.clone(), w.clone(), bias.clone());
        let ours = product();
        let seconds = seconds_per_queued_call(device, product)?;
        let product = gpt_oss_kernels::coopmat_gemm::reference_gemm(x, w.cast(DType::F32));
        let reference = match bias {
            Some(bias) => product + bias.unsqueeze::<2>(),
            None => product,
        };
        worst.record(
            ours,
            reference,
            json!({"kernel": "bf16_rows", "m": m, "k": k, "n": n, "bias": m % 2 == 1,
                   "seconds_per_queued_call": seconds,
                   "weight_bytes_per_second": (2 * k * n) as f64 / seconds}),
        );
    }
    // Three products side by side (the attention's q, k and v in one launch), also with the
    // input norm in the same launch.
    use gpt_oss_kernels::bf16_rows::{bf16_rows_three, rms_norm_bf16_rows_three};
    use gpt_oss_kernels::rms_norm_rows::{reference_rms_norm_rows, rms_norm_rows};
    // The fused norm adds the squares in the norm kernel's order: its products see the same
    // inputs, so it matches the two kernels it replaces to f32 rounding at most.
    let mut unfused = Worst::new("input norm fused into the q/k/v product", 1e-6);
    for ([m, k, n0, n1, n2], normed) in [
        [1, 2880, 4096, 512, 512],
        [5, 64, 32, 64, 24],
        [32, 2880, 4096, 512, 512],
        [3, 300, 64, 32, 8],
    ]
    .into_iter()
    .flat_map(|shape| [(shape, false), (shape, true)])
    {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 3.0), device);
        let weights = [n0, n1, n2]
            .map(|n| Tensor::<2>::random([k, n], Distribution::Default, device).cast(DType::BF16));
        let biases = (m % 2 == 1)
            .then(|| [n0, n1, n2].map(|n| Tensor::<1>::random([n], Distribution::Default, device)));
        let norm = (
            Tensor::<1>::random([k], Distribution::Default, device),
            1e-5,
        );
        let product = || match normed {
            true => {
                rms_norm_bf16_rows_three(x.clone(), norm.clone(), weights.clone(), biases.clone())
            }
            false => bf16_rows_three(x.clone(), weights.clone(), biases.clone()),
        };
        let ours = product();
        let seconds = seconds_per_queued_call(device, product)?;
        if normed {
            let two_kernels = bf16_rows_three(
                rms_norm_rows(x.clone(), norm.0.clone(), norm.1),
                weights.clone(),
                biases.clone(),
            );
            unfused.record(
                ours.clone(),
                two_kernels,
                json!({"kernel": "rms_norm_bf16_rows_three", "m": m, "k": k, "n": [n0, n1, n2]}),
            );
        }
        let input = match normed {
            true => reference_rms_norm_rows(x.clone(), norm.0.clone(), norm.1),
            false => x.clone(),
        };
        let reference = gpt_oss_kernels::coopmat_gemm::reference_gemm(
            input,
            Tensor::cat(weights.to_vec(), 1).cast(DType::F32),
        );
        let reference = match &biases {
            Some(b) => reference + Tensor::cat(b.to_vec(), 0).unsqueeze::<2>(),
            None => reference,
        };
        worst.record(
            ours,
            reference,
            json!({"kernel": "bf16_rows_three", "m": m, "k": k, "n": [n0, n1, n2],
                   "bias": m % 2 == 1, "norm": normed, "seconds_per_queued_call": seconds}),
        );
    }
    unfused.finish()?;
    worst.finish()
}

/// gpt-oss's lm_head in its three vocabulary pieces on both of the decode step's paths, each
/// timed against each piece's reference product (the f32 reference of the whole lm_head is past
/// wgpu's buffer size): one three-product launch (the step's up to `vocab::FEW_ROWS` rows; at
/// one row also with the final norm fused, which the step does not take), and from two rows
/// the tensor-core GEMM per piece (the step's past them).
pub(super) fn check_lm_head_in_one_launch(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::bf16_rows::{bf16_rows_three, rms_norm_bf16_rows_three};
    use gpt_oss_kernels::coopmat_gemm::{coopmat_gemm, reference_gemm};
    use gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows;
    let mut worst = Worst::new("lm_head pieces in one launch", 1e-2);
    let (k, widths) = (2880, [93_184, 93_184, 14_720]);
    let weights = widths
        .map(|n| Tensor::<2>::random([k, n], Distribution::Default, device).cast(DType::BF16));
    let norm = (
        Tensor::<1>::random([k], Distribution::Default, device),
        1e-5,
    );
    for (m, normed) in [
        (1, true),
        (1, false),
        (2, false),
        (4, false),
        (8, false),
        (16, false),
        (32, false),
    ] {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 3.0), device);
        let input = match normed {
            true => reference_rms_norm_rows(x.clone(), norm.0.clone(), norm.1),
            false => x.clone(),
        };
        let pieces: Vec<Tensor<2>> = weights
            .iter()
            .map(|w| reference_gemm(input.clone(), w.clone().cast(DType::F32)))
            .collect();
        let reference = Tensor::cat(pieces, 1);
        let product = || match normed {
            true => rms_norm_bf16_rows_three(x.clone(), norm.clone(), weights.clone(), None),
            false => bf16_rows_three(x.clone(), weights.clone(), None),
        };
        let ours = product();
        let seconds = seconds_per_queued_call(device, product)?;
        worst.record(
            ours,
            reference.clone(),
            json!({"kernel": "bf16_rows_three", "m": m, "k": k, "n": widths, "norm": normed,
                   "seconds_per_queued_call": seconds,
                   "weight_bytes_per_second": (2 * k * widths.iter().sum::<usize>()) as f64 / seconds}),
        );
        // From two rows the tensor-core GEMM (one launch per piece) as well: which path the
        // step's lm_head should take at each batch.
        if m >= 2 {
            let product = || {
                let pieces = weights.iter().map(|w| coopmat_gemm(x.clone(), w.clone()));
                Tensor::cat(pieces.collect(), 1)
            };
            let ours = product();
            let seconds = seconds_per_queued_call(device, product)?;
            worst.record(
                ours,
                reference,
                json!({"kernel": "coopmat_gemm per piece", "m": m, "k": k, "n": widths,
                       "seconds_per_queued_call": seconds}),
            );
        }
    }
    worst.finish()
}

/// The attention's projections at 2 to 32 rows on both paths, the few-row kernel and the
/// tensor-core GEMM, each against the reference: which one a decode step at that batch should
/// take (the model switches at [`gpt_oss_model::transformer::project::FEW_ROWS`]).
pub(super) fn check_projection_paths(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::bf16_rows::bf16_rows_matmul;
    use gpt_oss_kernels::coopmat_gemm::{coopmat_gemm, reference_gemm};
    let mut worst = Worst::new("projections on both paths", 1e-2);
    // q/k/v side by side, o.
    for [k, n] in [[2880, 5120], [4096, 2880]] {
        let w = Tensor::<2>::random([k, n], Distribution::Default, device).cast(DType::BF16);
        for m in [2, 4, 8, 16, 32] {
            let x = Tensor::<2>::random([m, k], Distribution::Default, device);
            let reference = reference_gemm(x.clone(), w.clone().cast(DType::F32));
            for path in ["bf16_rows", "coopmat_gemm"] {
                let product = || match path {
                    "bf16_rows" => bf16_rows_matmul(x.clone(), w.clone(), None),
                    _ => coopmat_gemm(x.clone(), w.clone()),
                };
                let ours = product();
                let seconds = seconds_per_queued_call(device, product)?;
                worst.record(
                    ours,
                    reference.clone(),
                    json!({"kernel": path, "m": m, "k": k, "n": n,
                           "seconds_per_queued_call": seconds}),
                );
            }
        }
    }
    worst.finish()
}
