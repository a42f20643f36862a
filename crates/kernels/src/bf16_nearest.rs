//! f32 -> bf16 rounded to the nearest value, ties to even, on the GPU.
//!
//! The conversion cubecl emits for `bf16::cast_from(f32)` (SPIR-V `OpFConvert`, whose rounding
//! mode is the implementation's unless decorated), and so burn's `cast(DType::BF16)` on wgpu,
//! truncates on NVIDIA's Vulkan driver: 1 + 3/512 becomes 1, not 1 + 1/128 (measured on an
//! H200, driver 580.159.04). Every rounded value moves toward zero, a bias that builds up
//! through a model: the tiny-dense fixture's log-probabilities moved by 1.04 on the GPU where
//! rounding the same weights and inputs to nearest moves them by 0.047. burn's flex rounds to
//! nearest even. So every bf16 the GPU path makes from f32 goes through here: in a kernel with
//! [`nearest_bf16`] / [`nearest_bf16_value`] (or [`nearest_bf16_unless_nan`] in a hot loop where
//! a NaN reaches the result anyway), from burn tensors with [`to_nearest_bf16`].

use burn::backend::{DispatchDevice, backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Device, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::launch::{bf16_dtype, empty_of, grid_over_rows, same_shape};
use crate::workgroup_reduce::UNITS;

/// `x` rounded to the nearest bf16 (ties to even), as the f32 of that value: see
/// [`nearest_bf16_values`].
#[cube]
pub fn nearest_bf16_value(x: f32) -> f32 {
    f32::reinterpret(nearest_bf16_values::<Const<1>>(Vector::new(x)))
}

/// Each value of `x` rounded to the nearest bf16 (ties to even), as the f32 of that value. A
/// NaN stays NaN.
#[cube]
pub fn nearest_bf16_values<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    let bits = Vector::<u32, N>::reinterpret(x);
    // A NaN (all exponent bits set, some mantissa bit) is told by its bits, which no
    // floating-point assumption of the compiler can fold away.
    let nan = (bits & Vector::new(0x7FFF_FFFF)).greater_than(&Vector::new(0x7F80_0000));
    select_many(nan, x, nearest_bf16_values_unless_nan(x))
}

/// Each value of `x` that is not NaN rounded to the nearest bf16 (ties to even), as the f32 of
/// that value: adding just under half of the dropped bits' weight (plus the kept last bit, for
/// ties) carries into the kept bits exactly when rounding up is nearest; then the dropped bits
/// are cleared. A NaN may come out as an infinity or a zero.
#[cube]
fn nearest_bf16_values_unless_nan<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    let bits = Vector::<u32, N>::reinterpret(x);
    let last_kept = (bits >> Vector::new(16)) & Vector::new(1);
    let carried = bits + Vector::new(0x7FFF) + last_kept;
    Vector::<f32, N>::reinterpret(carried & Vector::new(0xFFFF_0000))
}

/// `x` as the nearest bf16 (ties to even): the value is exact in bf16, so the conversion's own
/// rounding mode no longer matters.
#[cube]
pub fn nearest_bf16(x: f32) -> bf16 {
    bf16::cast_from(nearest_bf16_value(x))
}

/// As [`nearest_bf16`] without the NaN test (three instructions fewer), for a hot loop whose
/// values cannot be NaN unless a NaN also reaches the result another way: a NaN may come out
/// as an infinity or a zero here.
#[cube]
pub fn nearest_bf16_unless_nan(x: f32) -> bf16 {
    bf16::cast_from(nearest_bf16_value_unless_nan(x))
}

/// As [`nearest_bf16_value`] without the NaN test (see [`nearest_bf16_unless_nan`]).
#[cube]
pub fn nearest_bf16_value_unless_nan(x: f32) -> f32 {
    f32::reinterpret(nearest_bf16_values_unless_nan::<Const<1>>(Vector::new(x)))
}

/// `x` as an `O`, f32 or bf16: rounded to the nearest bf16 first where `O` is two bytes wide
/// (cubecl's own conversion truncates on NVIDIA's Vulkan driver), as it is otherwise. For
/// kernels that write either.
#[cube]
pub fn nearest_as<O: Float>(x: f32) -> O {
    let mut value = x;
    if O::size_bits().comptime() == 16 {
        value = nearest_bf16_value(x);
    }
    O::cast_from(value)
}

/// Rounds `vectors` vectors of N values (four where the length allows: a pass over memory
/// that reads and writes whole vectors moves more bytes a second than one of single values).
#[cube(launch)]
fn nearest_bf16_kernel<N: Size>(x: &[Vector<f32, N>], out: &mut [Vector<bf16, N>], vectors: u32) {
    let id = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * UNITS + UNIT_POS;
    if id >= vectors {
        terminate!();
    }
    out[id as usize] = Vector::<bf16, N>::cast_from(nearest_bf16_values(x[id as usize]));
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait NearestBf16Backend: burn::backend::Backend {
    /// `x` f32 -> the same shape in bf16, each value rounded to nearest even.
    #[fusion(dtype = bf16_dtype(x), shape = same_shape(x))]
    fn to_nearest_bf16(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl NearestBf16Backend for CubeBackend {
    fn to_nearest_bf16(x: CubeTensor) -> CubeTensor {
        let x = into_contiguous(x);
        let shape = x.meta.shape().to_vec();
        let n: usize = shape.iter().product();
        let out = empty_of(&x, shape, DType::BF16);
        let vector_size = if n.is_multiple_of(4) { 4 } else { 1 };
        let vectors = n / vector_size;
        nearest_bf16_kernel::launch(
            &x.client.clone(),
            grid_over_rows(vectors.div_ceil(UNITS as usize)),
            CubeDim::new_1d(UNITS),
            vector_size,
            x.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            vectors as u32,
        );
        out
    }
}

/// Whether [`to_nearest_bf16`] rounds on `device` with the kernel: CubeCL devices only.
fn takes_the_kernel(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// `x` in bf16, each value rounded to nearest even: bf16 stays as it is; on a CubeCL device
/// (the GPU) the kernel above, since burn's cast there truncates; on any other backend burn's
/// cast (flex's rounds to nearest even; an autodiff wrapper's is its inner backend's).
pub fn to_nearest_bf16<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::BF16 {
        return x;
    }
    if !takes_the_kernel(&x.device()) {
        return x.cast(DType::BF16);
    }
    Tensor::from_dispatch(
        <burn::backend::Dispatch as NearestBf16Backend>::to_nearest_bf16(
            x.cast(DType::F32).into_dispatch(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;
    use burn::tensor::TensorData;

    /// In both widths it launches with: four values an invocation, or one.
    #[test]
    fn the_kernel_compiles() {
        for vector_size in [4usize, 1] {
            let compiled = compile_kernel!(
                nearest_bf16_kernel::NearestBf16Kernel,
                CubeDim::new_1d(UNITS),
                [b b s],
                vector_size,
            );
            assert_eq!(compiled, Ok(()), "{vector_size} values an invocation");
        }
    }

    /// On the CPU the rounding is burn's cast, to nearest with ties to even: 1 + 3/512 rounds
    /// up (truncation would give 1), 1 + 1/256 is a tie that goes to the even 1, 1 + 3/256 a tie
    /// that goes up to the even 1 + 1/64; bf16 input is returned as it is. The same through an
    /// autodiff device (not a CubeCL one, so no kernel is asked for).
    #[test]
    fn flex_rounds_to_nearest_even() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            rounds_to_nearest_even_on(&device);
        }
    }

    /// The GPU's device (Vulkan through cubecl) is the one that takes the kernel; naming it
    /// opens nothing, so this runs without a GPU.
    #[test]
    fn the_vulkan_device_takes_the_kernel() {
        let vulkan = Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
        assert!(takes_the_kernel(&vulkan));
        assert!(!takes_the_kernel(&Device::flex()));
        assert!(!takes_the_kernel(&Device::flex().autodiff()));
    }

    fn rounds_to_nearest_even_on(device: &Device) {
        let values = vec![
            1.0 + 3.0 / 512.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -(1.0 + 3.0 / 512.0),
        ];
        let x = Tensor::<1>::from_data(TensorData::new(values, [4]), device);
        let rounded = to_nearest_bf16(x);
        assert_eq!(rounded.dtype(), DType::BF16);
        let back = to_nearest_bf16(rounded.clone());
        assert_eq!(back.dtype(), DType::BF16);
        let got = rounded.cast(DType::F32).try_into_vec_as::<f32>().unwrap();
        assert_eq!(
            got,
            vec![
                1.0 + 1.0 / 128.0,
                1.0,
                1.0 + 1.0 / 64.0,
                -(1.0 + 1.0 / 128.0)
            ]
        );
    }
}

/// Every f32 -> bf16 of the GPU path goes through this module: no other source file of the
/// kernels or the model converts with burn's cast or cubecl's conversion, which truncate on
/// NVIDIA's Vulkan driver.
#[cfg(test)]
mod no_other_conversion {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn no_file_but_this_one_converts_f32_to_bf16() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for source in ["kernels/src", "model/src"] {
            rust_files(&crates.join(source), &mut files);
        }
        assert!(files.len() > 20, "the sources were not found: {files:?}");
        // burn's cast to bf16 (any path to the dtype), or cubecl's conversion in a kernel.
        let converts = |line: &str| {
            line.contains("bf16::cast_from(")
                || (line.contains(".cast(") && line.contains("DType::BF16"))
        };
        let offending: Vec<String> = files
            .iter()
            .filter(|path| !path.ends_with("bf16_nearest.rs"))
            .flat_map(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                let hits: Vec<String> = (text.lines().enumerate())
                    .filter(|(_, line)| converts(line))
                    .map(|(i, line)| format!("{}:{}: {}", path.display(), i + 1, line.trim()))
                    .collect();
                hits
            })
            .collect();
        assert!(
            offending.is_empty(),
            "use bf16_nearest instead:\n{}",
            offending.join("\n")
        );
    }
}
