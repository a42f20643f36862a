//! `bench kernel-check`'s rounding case: the GPU's f32 -> bf16 conversion
//! (`gpt_oss_kernels::bf16_nearest`) against burn's cast on the CPU (flex), which rounds to
//! nearest with ties to even. Bit for bit: any value rounded the other way fails the check.
//! Then both conversions timed on the rows a scoring pass rounds before a 20b's products.

use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::seconds_per_call;

/// More values than one grid dimension of workgroups covers at one value an invocation
/// (65,535 x 256), so that launch uses the second too.
const VALUES: usize = 17_000_000;

/// The rows a scoring pass of 8 x 2,048 tokens rounds before a 20b's products (2,880 wide).
const TIMED_ROWS: [usize; 2] = [16_384, 2_880];

/// How many values of `got` differ from `expected` (same shape) in their bits, both read back
/// as f32 (exact for bf16).
pub(super) fn differing_values<const D: usize>(
    got: Tensor<D>,
    expected: Tensor<D>,
) -> anyhow::Result<usize> {
    Ok(differing(&as_f32s(got)?, &as_f32s(expected)?))
}

/// Fails unless `written`, a kernel's bf16 output, is `exact` (its f32 output, `what` in the
/// message) rounded to nearest even, bit for bit. Prints `record` with the number of differing
/// values added under `key`.
pub(super) fn ensure_rounded_from<const D: usize>(
    written: Tensor<D>,
    exact: Tensor<D>,
    what: &str,
    mut record: serde_json::Value,
    key: &str,
) -> anyhow::Result<()> {
    let differing = differing_values(written, to_nearest_bf16(exact))?;
    record[key] = json!(differing);
    println!("{record}");
    anyhow::ensure!(
        differing == 0,
        "{}: {differing} values differ from {what} rounded to bf16",
        record["kernel"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// The values of `x` (f32 or bf16) as f32.
fn as_f32s<const D: usize>(x: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    x.cast(DType::F32)
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the rounded values: {e:?}"))
}

/// How many of `got` differ from `reference` in their bits.
fn differing(got: &[f32], reference: &[f32]) -> usize {
    assert_eq!(got.len(), reference.len());
    got.iter()
        .zip(reference)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

pub(super) fn check_bf16_nearest(device: &Device) -> anyhow::Result<()> {
    let values = values_to_round();
    let upload = |values: &[f32], device: &Device| {
        Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    };
    let reference = as_f32s(upload(&values, &Device::flex()).cast(DType::BF16))?;
    // The kernel takes four values an invocation where the length is a multiple of four (as
    // here), one otherwise (one value fewer).
    let four_wide = as_f32s(to_nearest_bf16(upload(&values, device)))?;
    let one_wide = as_f32s(to_nearest_bf16(upload(&values[1..], device)))?;
    // burn's own cast on this device, for the record (it truncates on NVIDIA's Vulkan driver).
    let cast = as_f32s(upload(&values, device).cast(DType::BF16))?;
    let ours_differing = differing(&four_wide, &reference);
    let one_wide_differing = differing(&one_wide, &reference[1..]);
    let cast_differing = differing(&cast, &reference);
    println!(
        "{}",
        json!({"kernel": "bf16_nearest", "values": values.len(),
               "differing_from_nearest_even": ours_differing,
               "one_wide_differing_from_nearest_even": one_wide_differing,
               "burn_cast_differing_from_nearest_even": cast_differing})
    );
    anyhow::ensure!(
        ours_differing + one_wide_differing == 0,
        "bf16_nearest: {ours_differing} of {} values (four an invocation) and \
         {one_wide_differing} of {} (one an invocation) rounded otherwise than to nearest even",
        values.len(),
        values.len() - 1
    );
    time_against_burns_cast(device)
}

/// Seconds per call of [`to_nearest_bf16`] and of burn's cast on [`TIMED_ROWS`], and the
/// bytes a second each moves (4 read and 2 written a value).
fn time_against_burns_cast(device: &Device) -> anyhow::Result<()> {
    let x = Tensor::<2>::random(TIMED_ROWS, Distribution::Default, device);
    let ours = seconds_per_call(device, || to_nearest_bf16(x.clone()))?;
    let cast = seconds_per_call(device, || x.clone().cast(DType::BF16))?;
    let bytes = (TIMED_ROWS.iter().product::<usize>() * 6) as f64;
    println!(
        "{}",
        json!({"kernel": "bf16_nearest_timing", "shape": TIMED_ROWS,
               "seconds": ours, "gb_per_second": bytes / ours / 1e9,
               "burn_cast_seconds": cast, "burn_cast_gb_per_second": bytes / cast / 1e9})
    );
    Ok(())
}

/// Values of many magnitudes (1e-6 to 1e6, both signs), every tie between two bf16 values
/// around 1 (half of them go up to an even last bit, half stay), zeros, infinities and the
/// largest f32.
fn values_to_round() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(29);
    let mut values: Vec<f32> = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX];
    values.extend((0..128u32).map(|m| f32::from_bits(0x3F80_0000 | (m << 16) | 0x8000)));
    while values.len() < VALUES {
        let magnitude = 10f32.powf(rng.random_range(-6.0..6.0));
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        values.push(sign * magnitude * rng.random_range(1.0..10.0f32));
    }
    values
}
