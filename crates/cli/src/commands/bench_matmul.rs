//! `bench matmul`: dense matmul rate of burn on the chosen device, per dtype and shape, in
//! TFLOP/s (2mnk per product). The figure that says whether burn's kernels reach the tensor
//! cores (issue 7); compare with `tools/gpu/torch_baseline.py` run in the same call.

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor};
use gpt_oss_kernels::coopmat_gemm::{launched_tiling, tiling_for};
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
    /// `burn` (burn's autotuned matmul), `coopmat` (our workgroup-scope cooperative-matrix
    /// kernel) or `rows` (our few-rows kernel); ours are bf16 only and checked against burn's
    /// f32 product of the same bf16 inputs.
    #[arg(long, value_enum, default_value_t = MatmulKernel::Burn)]
    pub kernel: MatmulKernel,
    /// coopmat tilings to try, `MxNxK/units` (`128x128x32/256`), optionally with a scheme,
    /// `/direct` (the default), `/staged` or `/warps` (subgroup-scope fragments; the line's
    /// `launched` says which ran, and with which K step), `/specialized-P-S` (as warps, fed by
    /// P producer subgroups besides the units through S stages; `/specialized-P-S-feed` is its
    /// bound with no products, what the producers alone feed), or a bound of `/warps` that is
    /// not a product (its error is large; `gpt_oss_kernels::coopmat_ceiling::Feed`): `/ceiling-mma`
    /// (the tensor cores alone), `/ceiling-shared` (with the fragments' loads),
    /// `/ceiling-restaged` (with the stage's stores and barriers) or `/ceiling-cached` (with
    /// global loads the caches hold); and then an order of the tiles, `/rows` (row tiles first)
    /// or `/columns` (`128x256x32/256/staged/columns`); without one, column tiles first when
    /// the weights fit in half the L2 cache. Without this option, the tiling the model's
    /// products use (`gpt_oss_kernels::coopmat_gemm::tiling_for`: `FEW_ROWS_TILING` for up to
    /// 32 rows where it takes the shape whole, else `DEFAULT_TILING`).
    #[arg(long, value_delimiter = ',')]
    pub tilings: Vec<String>,
    /// Our kernels add a random f32 bias of n values to every row of the product (as the
    /// attention projections do), checked against the reference plus the same bias.
    #[arg(long)]
    pub bias: bool,
}

/// `--kernel`: whose matmul to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatmulKernel {
    Burn,
    Coopmat,
    Rows,
}

impl MatmulKernel {
    /// The value `--kernel` takes for it (clap's spelling of the variant).
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .expect("no variant is skipped")
            .get_name()
            .to_string()
    }
}

pub(crate) fn parse_tiling(text: &str) -> anyhow::Result<gpt_oss_kernels::coopmat_gemm::Tiling> {
    use gpt_oss_kernels::{coopmat_ceiling::Feed, coopmat_gemm::Scheme, tile_order::TileOrder};
    let mut parts = text.split('/');
    let (Some(shape), Some(units)) = (parts.next(), parts.next()) else {
        anyhow::bail!("tiling `{text}`: expected MxNxK/units[/scheme[/order]]");
    };
    let [m, n, k] = parse_tile_sides(shape)?;
    let units = units
        .parse()
        .map_err(|e| anyhow::anyhow!("tiling `{text}`: units: {e}"))?;
    let scheme = match parts.next() {
        None | Some("direct") => Scheme::Direct,
        Some("staged") => Scheme::Staged,
        Some("warps") => Scheme::Warps,
        Some(specialized) if specialized.starts_with("specialized-") => {
            parse_specialized(text, &specialized["specialized-".len()..])?
        }
        Some("ceiling-shared") => Scheme::Ceiling(Feed::Shared),
        Some("ceiling-mma") => Scheme::Ceiling(Feed::Registers),
        Some("ceiling-restaged") => Scheme::Ceiling(Feed::Restaged),
        Some("ceiling-cached") => Scheme::Ceiling(Feed::Cached),
        Some(other) => {
            anyhow::bail!(
                "tiling `{text}`: scheme `{other}`: expected direct, staged, warps, \
                 specialized-PRODUCERS-STAGES or ceiling-mma, -shared, -restaged or -cached"
            )
        }
    };
    let order = match parts.next() {
        None => None,
        Some("rows") => Some(TileOrder::RowsFirst),
        Some("columns") => Some(TileOrder::ColumnsFirst),
        Some(other) => {
            anyhow::bail!(
                "tiling `{text}`: order `{other}`: expected rows or columns (none: by the weights' size)"
            )
        }
    };
    anyhow::ensure!(parts.next().is_none(), "tiling `{text}`: too many parts");
    Ok(gpt_oss_kernels::coopmat_gemm::Tiling {
        m,
        n,
        k,
        units,
        scheme,
        order,
    })
}

/// `Scheme::Specialized` from the `P-S[-feed]` of `specialized-P-S[-feed]`: P producer subgroups,
/// S stages, and with `-feed` the bound with no products (what the producers feed).
fn parse_specialized(
    text: &str,
    counts: &str,
) -> anyhow::Result<gpt_oss_kernels::coopmat_gemm::Scheme> {
    use gpt_oss_kernels::coopmat_specialized::Variant;
    let (numbers, variant) = match counts.strip_suffix("-feed") {
        Some(numbers) => (numbers, Variant::FeedOnly),
        None => (counts, Variant::Product),
    };
    let parsed: Option<Vec<u32>> = numbers.split('-').map(|c| c.parse().ok()).collect();
    match parsed.as_deref() {
        Some(&[producers, stages]) if producers > 0 && stages > 0 => {
            Ok(gpt_oss_kernels::coopmat_gemm::Scheme::Specialized {
                producers,
                stages,
                variant,
            })
        }
        _ => anyhow::bail!(
            "tiling `{text}`: `specialized-{counts}`: expected specialized-PRODUCERS-STAGES, \
             both at least 1, then optionally -feed (specialized-2-3)"
        ),
    }
}

/// As [`parse_tiling`], refusing the bounds (`ceiling-*`, `specialized-P-S-feed`): for
/// launches whose products are used (`bench model --dense-tiling`), where a bound would score
/// garbage.
pub(crate) fn parse_product_tiling(
    text: &str,
) -> anyhow::Result<gpt_oss_kernels::coopmat_gemm::Tiling> {
    use gpt_oss_kernels::{coopmat_gemm::Scheme, coopmat_specialized::Variant};
    let tiling = parse_tiling(text)?;
    anyhow::ensure!(
        !matches!(
            tiling.scheme,
            Scheme::Ceiling(_)
                | Scheme::Specialized {
                    variant: Variant::FeedOnly,
                    ..
                }
        ),
        "tiling `{text}`: a ceiling or feed scheme is a bound of a kernel, not a product"
    );
    Ok(tiling)
}

/// A product's `[m, k, n]` from `4096` or `16384x2880x5760`.
pub fn parse_shape(text: &str) -> anyhow::Result<[usize; 3]> {
    three_sides(text, "shape", "MxKxN")
}

/// A tile's `[m, n, k]` from `128` or `128x256x32` (the order tilings are written in).
pub fn parse_tile_sides(text: &str) -> anyhow::Result<[usize; 3]> {
    three_sides(text, "tile", "MxNxK")
}

/// Three sides from one (`4096`: all three) or three joined by `x`, in the order `order`
/// names; errors name `what` and that order.
pub(crate) fn three_sides(text: &str, what: &str, order: &str) -> anyhow::Result<[usize; 3]> {
    let sides: Vec<usize> = text
        .split('x')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{what} `{text}`: {e} (expected one side or {order})"))?;
    match sides.as_slice() {
        [side] => Ok([*side; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => anyhow::bail!("{what} `{text}`: expected one side or three ({order})"),
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
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    anyhow::ensure!(
        selected.on_gpu || args.kernel == MatmulKernel::Burn,
        "bench matmul --kernel {}: our kernels run only on the GPU (--device wgpu), not on {}",
        args.kernel.name(),
        selected.description
    );
    let device = selected.device;
    // `None`: each shape on the tiling the model's products would take.
    let tilings: Vec<_> = if args.kernel == MatmulKernel::Coopmat && !args.tilings.is_empty() {
        args.tilings
            .iter()
            .map(|t| parse_tiling(t).map(Some))
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![None]
    };
    for chosen in tilings {
        if let Some(tiling) = chosen {
            gpt_oss_kernels::coopmat_gemm::set_tiling(tiling);
        }
        for dtype_name in &args.dtypes {
            let dtype = parse_dtype(dtype_name)?;
            for shape_text in &args.shapes {
                let [m, k, n] = parse_shape(shape_text)?;
                let tiling = chosen.unwrap_or_else(|| tiling_for(m, n, k));
                let lhs = Tensor::<2>::random([m, k], Distribution::Default, (&device, dtype));
                let rhs = Tensor::<2>::random([k, n], Distribution::Default, (&device, dtype));
                let bias = (args.bias && args.kernel != MatmulKernel::Burn)
                    .then(|| Tensor::<1>::random([n], Distribution::Default, &device));
                let product = |l: Tensor<2>, r: Tensor<2>| match args.kernel {
                    MatmulKernel::Coopmat => {
                        gpt_oss_kernels::coopmat_gemm::coopmat_gemm_plus_bias(l, r, bias.clone())
                    }
                    MatmulKernel::Rows => {
                        gpt_oss_kernels::bf16_rows::bf16_rows_matmul(l, r, bias.clone())
                    }
                    MatmulKernel::Burn => l.matmul(r),
                };
                let relative_error = if args.kernel != MatmulKernel::Burn {
                    let ours = product(lhs.clone(), rhs.clone());
                    let mut reference =
                        gpt_oss_kernels::coopmat_gemm::reference_gemm(lhs.clone(), rhs.clone());
                    if let Some(b) = &bias {
                        reference = reference + b.clone().unsqueeze::<2>();
                    }
                    Some(super::bench_kernels::errors(ours, reference).0)
                } else {
                    None
                };
                let run = |count: usize| -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let mut last = None;
                    for _ in 0..count {
                        last = Some(product(lhs.clone(), rhs.clone()));
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
                        "kernel": args.kernel.name(),
                        "tiling": format!("{tiling:?}"),
                        "launched": (args.kernel == MatmulKernel::Coopmat).then(|| format!(
                            "{:?}",
                            launched_tiling(tiling, m, n as u32, k as u32)
                        )),
                        "relative_error_vs_burn_f32": relative_error,
                        "bias": bias.is_some(),
                        "dtype": dtype_name,
                        "m": m, "k": k, "n": n,
                        "iters": args.iters,
                        "seconds": seconds,
                        "tflops": flops / seconds / 1e12,
                        "weight_gb_per_second": (k * n * dtype.size() * args.iters.max(1)) as f64 / seconds / 1e9,
                        "warmup_seconds": warmup_seconds,
                    })
                );
            }
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

    /// A tile's sides are read (and a bad one reported) as MxNxK, a product's as MxKxN.
    #[test]
    fn tiles_and_shapes_name_their_own_order() {
        assert_eq!(parse_tile_sides("128x256x32").unwrap(), [128, 256, 32]);
        let tile = parse_tile_sides("12x7").unwrap_err().to_string();
        assert!(
            tile.contains("tile `12x7`") && tile.contains("MxNxK"),
            "{tile}"
        );
        let shape = parse_shape("12x7").unwrap_err().to_string();
        assert!(
            shape.contains("shape `12x7`") && shape.contains("MxKxN"),
            "{shape}"
        );
        let tiling = parse_tiling("128x2x5y/256").unwrap_err().to_string();
        assert!(tiling.contains("MxNxK"), "{tiling}");
    }

    #[test]
    fn tilings_parse_with_and_without_a_scheme_and_an_order() {
        use gpt_oss_kernels::{
            coopmat_ceiling::Feed, coopmat_gemm::Scheme, coopmat_specialized::Variant,
            tile_order::TileOrder,
        };
        let plain = parse_tiling("128x256x32/256").unwrap();
        assert_eq!(
            (plain.m, plain.n, plain.k, plain.units),
            (128, 256, 32, 256)
        );
        assert_eq!(plain.scheme, Scheme::Direct);
        assert_eq!(plain.order, None);
        let columns = parse_tiling("128x256x32/256/staged/columns").unwrap();
        assert_eq!(
            (columns.scheme, columns.order),
            (Scheme::Staged, Some(TileOrder::ColumnsFirst))
        );
        assert_eq!(
            parse_tiling("128x256x32/256/warps").unwrap().scheme,
            Scheme::Warps
        );
        assert_eq!(
            parse_tiling("128x256x32/256/ceiling-mma").unwrap().scheme,
            Scheme::Ceiling(Feed::Registers)
        );
        assert_eq!(
            parse_tiling("64x128x32/128/staged").unwrap().scheme,
            Scheme::Staged
        );
        assert_eq!(
            parse_tiling("128x256x16/256/specialized-2-3")
                .unwrap()
                .scheme,
            Scheme::Specialized {
                producers: 2,
                stages: 3,
                variant: Variant::Product
            }
        );
        assert_eq!(
            parse_tiling("128x256x16/256/specialized-4-3-feed")
                .unwrap()
                .scheme,
            Scheme::Specialized {
                producers: 4,
                stages: 3,
                variant: Variant::FeedOnly
            }
        );
        for bad in [
            "specialized-2",
            "specialized-0-3",
            "specialized-2-x",
            "specialized-2-3-1",
            "specialized-2-3-touch1",
            "specialized-2-3-feed-1",
        ] {
            let error = parse_tiling(&format!("128x256x16/256/{bad}")).unwrap_err();
            assert!(
                error.to_string().contains("PRODUCERS-STAGES"),
                "{bad}: {error}"
            );
        }
        // A bound is a tiling for bench matmul, not for products that are used.
        assert!(parse_product_tiling("128x256x48/256/warps").is_ok());
        let bound = parse_product_tiling("128x256x32/256/ceiling-mma").unwrap_err();
        assert!(bound.to_string().contains("not a product"), "{bound}");
        let feed = parse_product_tiling("128x256x16/256/specialized-4-3-feed").unwrap_err();
        assert!(feed.to_string().contains("not a product"), "{feed}");
        assert!(parse_tiling("128x256x32").is_err());
        assert!(parse_tiling("128x256x32/256/fast").is_err());
        assert!(parse_tiling("128x256x32/256/staged/x").is_err());
        assert!(parse_tiling("128x256x32/256/staged/rows/x").is_err());
    }
}
