//! `bench matmul`: dense matmul rate of burn on the chosen device, per dtype and shape, in
//! TFLOP/s (2mnk per product). The figure that says whether burn's kernels reach the tensor
//! cores (issue 7); compare with `tools/gpu/torch_baseline.py` run in the same call.

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor};
use gpt_oss_model::device::{DeviceChoice, select_device};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct MatmulArgs {
    #[arg(long, default_value = "wgpu")]
    pub device: DeviceChoice,
    /// Shapes as `m x k x n` (`4096x4096x4096`) or a single side for a square product.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192")]
    pub shapes: Vec<String>,
    /// f32, f16 or bf16.
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16")]
    pub dtypes: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
}

/// `[m, k, n]` from `4096` or `16384x2880x5760`.
pub fn parse_shape(text: &str) -> anyhow::Result<[usize; 3]> {
    let sides: Vec<usize> = text
        .split('x')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("shape `{text}`: {e} (expected 4096 or MxKxN)"))?;
    match sides.as_slice() {
        [n] => Ok([*n, *n, *n]),
        [m, k, n] => Ok([*m, *k, *n]),
        _ => anyhow::bail!("shape `{text}`: expected one side or three (MxKxN)"),
    }
}

fn parse_dtype(text: &str) -> anyhow::Result<DType> {
    match text {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("dtype `{other}`: expected f32, f16 or bf16"),
    }
}

pub fn matmul(args: MatmulArgs) -> anyhow::Result<()> {
    let (device, description) = select_device(args.device)?;
    eprintln!("device: {description}");
    for dtype_name in &args.dtypes {
        let dtype = parse_dtype(dtype_name)?;
        for shape_text in &args.shapes {
            let [m, k, n] = parse_shape(shape_text)?;
            let lhs = Tensor::<2>::random([m, k], Distribution::Default, (&device, dtype));
            let rhs = Tensor::<2>::random([k, n], Distribution::Default, (&device, dtype));
            let run = |count: usize| -> anyhow::Result<f64> {
                let start = Instant::now();
                let mut last = None;
                for _ in 0..count {
                    last = Some(lhs.clone().matmul(rhs.clone()));
                }
                if let Some(t) = last {
                    // One element read back: the queue has drained.
                    let _ = t.narrow(0, 0, 1).narrow(1, 0, 1).try_into_vec_as::<f32>();
                }
                device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
                Ok(start.elapsed().as_secs_f64())
            };
            let warm_start = Instant::now();
            run(args.warmup.max(1))?;
            let warmup_seconds = warm_start.elapsed().as_secs_f64();
            let seconds = run(args.iters.max(1))?;
            let flops = 2.0 * (m * k * n) as f64 * args.iters.max(1) as f64;
            println!(
                "{}",
                json!({
                    "bench": "matmul",
                    "dtype": dtype_name,
                    "m": m, "k": k, "n": n,
                    "iters": args.iters,
                    "seconds": seconds,
                    "tflops": flops / seconds / 1e12,
                    "warmup_seconds": warmup_seconds,
                })
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_square_and_rectangular_and_reject_others() {
        assert_eq!(parse_shape("64").unwrap(), [64, 64, 64]);
        assert_eq!(parse_shape("8x16x32").unwrap(), [8, 16, 32]);
        assert!(parse_shape("8x16").is_err());
        assert!(parse_shape("a").is_err());
        assert!(parse_dtype("f64").is_err());
    }
}
