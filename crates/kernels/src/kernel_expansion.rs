//! For CPU tests that expand the GPU kernels into cubecl's IR and compile them to SPIR-V, as the
//! wgpu runtime does on Vulkan before it hands them to the driver. A kernel that cannot be
//! expanded (a `Sequence` indexed by a value computed in the kernel, a comptime assertion), that
//! the SPIR-V compiler refuses (a cooperative matrix the device does not offer), or that asks
//! for more workgroup memory than the driver grants fails its module's test instead of a call
//! on the lent GPU. No device is needed. The properties are an H100's, as the NVIDIA Vulkan
//! driver reports them. The driver's own compilation still runs only on the GPU.

use std::sync::Arc;

use cubecl::ir::features::Features;
use cubecl::ir::{DeviceIdentity, HardwareProperties, MemoryDeviceProperties};
use cubecl::prelude::*;
use cubecl::profile::TimingMethod;

/// The properties the kernels are expanded for.
pub(crate) fn h100_properties() -> Arc<DeviceProperties> {
    let hardware = HardwareProperties {
        load_width: 128,
        vector_register_count: None,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 32,
        max_shared_memory_size: 49_152,
        max_cube_count: (65_535, 65_535, 65_535),
        max_units_per_cube: 1_024,
        max_cube_dim: (1_024, 1_024, 64),
        num_streaming_multiprocessors: Some(132),
        num_cpu_cores: None,
        last_level_cache_size: None,
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(16),
        max_vector_size: 4,
        cube_mma_reserved_shared_memory: 0,
    };
    Arc::new(DeviceProperties::new(
        h100_features(),
        MemoryDeviceProperties::new(u64::MAX, 256),
        hardware,
        TimingMethod::System,
        DeviceIdentity::default(),
    ))
}

/// What the wgpu runtime registers for an H100 on Vulkan and the kernels use: subgroup
/// operations and barriers, device-scope barriers, and the cooperative matrices the NVIDIA
/// driver offers for bf16 products into f32, 16 x 16 x 16 at subgroup scope
/// (`VK_KHR_cooperative_matrix`) and at workgroup scope (`VK_NV_cooperative_matrix2`) any
/// multiple of 16 up to 1024 on a side for 32 to 256 invocations. The driver's granularity is
/// 16 to 32 by dimension, so a shape that passes here may still be refused on the GPU.
fn h100_features() -> Features {
    use cubecl::ir::features::{CubeMmaConfig, MmaConfig, Plane};
    use cubecl::ir::{ElemType, FloatKind};
    let (bf16, f32) = (
        ElemType::Float(FloatKind::BF16),
        ElemType::Float(FloatKind::F32),
    );
    let mut features = Features::default();
    features.plane.insert(Plane::Ops);
    features.plane.insert(Plane::Sync);
    features.device_memory_scope = true;
    features.matmul.cmma.insert(MmaConfig {
        a_type: bf16,
        b_type: bf16,
        cd_type: f32,
        m: 16,
        n: 16,
        k: 16,
    });
    for units in [32, 64, 128, 256] {
        features.matmul.cube_mma.insert(CubeMmaConfig {
            a_type: bf16,
            b_type: bf16,
            cd_type: f32,
            m_granularity: 16,
            m_max: 1024,
            n_granularity: 16,
            n_max: 1024,
            k_granularity: 16,
            k_max: 1024,
            units_per_block: Some(units),
        });
    }
    features.matmul.cmma_tensor_addressing = true;
    features
}

/// Settings of a launch with workgroups of `dim`.
pub(crate) fn settings_of(dim: CubeDim) -> KernelSettings {
    KernelSettings::new(dim.into(), ExecutionMode::Unchecked, AddressType::U32)
}

/// Workgroup memory the NVIDIA Vulkan driver grants (also on an H100).
pub(crate) const DRIVER_SHARED_MEMORY: usize = 49_152;

/// Expands `kernel` and compiles it to SPIR-V as the wgpu runtime does on Vulkan, and checks
/// its workgroup memory against the driver's; or says why it fails. With `SPIRV_DIS=DIR`, it
/// also writes the SPIR-V as text into DIR (one file per kernel and module size in words):
/// where `SPIRV_OPCODES` shows that a change moved instructions, a `diff` of two runs' files
/// with the ids masked (`sed -E 's/%[0-9]+/%/g'`) shows which.
pub(crate) fn compile(kernel: impl CubeKernel) -> Result<(), String> {
    use cubecl::Compiler;
    let name = std::any::type_name_of_val(&kernel).replace(|c: char| !c.is_alphanumeric(), "_");
    let definition = cubecl::define_kernel(&kernel).map_err(|e| e.to_string())?;
    let mut options = cubecl::WgpuCompilationOptions {
        supports_vulkan_compiler: true,
        supports_u64: true,
        ..Default::default()
    };
    options.vulkan.max_spirv_version = (1, 6);
    options.vulkan.max_vector_size = 4;
    options.vulkan.push_constant_size = 256;
    let spirv = cubecl::wgpu::vulkan::VkSpirvCompiler::default()
        .compile(definition, &options)
        .map_err(|e| e.to_string())?;
    if let (Ok(dir), Some(module)) = (std::env::var("SPIRV_DIS"), &spirv.module) {
        use rspirv::binary::Disassemble;
        let path = format!("{dir}/{name}-{}", spirv.assembled_module.len());
        std::fs::write(&path, module.disassemble()).map_err(|e| format!("{path}: {e}"))?;
    }
    if let Ok(dir) = std::env::var("SPIRV_OPCODES") {
        let opcodes = spirv_opcodes(&spirv.assembled_module);
        let path = format!("{dir}/{name}-{}", opcodes.len());
        std::fs::write(&path, opcodes.join("\n")).map_err(|e| format!("{path}: {e}"))?;
    }
    match spirv.shared_size {
        bytes if bytes > DRIVER_SHARED_MEMORY => Err(format!(
            "{bytes} bytes of workgroup memory, the driver grants {DRIVER_SHARED_MEMORY}"
        )),
        _ => Ok(()),
    }
}

/// The opcodes of a SPIR-V module's instructions, in order (after its five-word header). With
/// `SPIRV_OPCODES=DIR`, [`compile`] writes each kernel's into DIR (one file per kernel and
/// opcode count), so that a code move can be checked on the CPU: the same opcodes in the same
/// order before and after (ids may be renumbered).
fn spirv_opcodes(words: &[u32]) -> Vec<String> {
    let mut opcodes = Vec::new();
    let mut at = 5;
    while at < words.len() {
        let (count, opcode) = (words[at] >> 16, words[at] & 0xFFFF);
        opcodes.push(opcode.to_string());
        at += count.max(1) as usize;
    }
    opcodes
}

/// A buffer parameter's compilation argument (not aliased).
pub(crate) fn buffer() -> BufferCompilationArg {
    BufferCompilationArg { inplace: None }
}

/// [`compile`]s a `#[cube(launch)]` kernel's struct for workgroups of `dim` (a `CubeDim`): its
/// runtime parameters listed in order as `b` (a buffer) or `s` (a scalar), then the values of
/// its comptime parameters:
/// `compile_kernel!(rms_norm_rows_kernel::RmsNormRowsKernel, dim, [b b b b s s s], true)`.
macro_rules! compile_kernel {
    ($($kernel:ident)::+, $dim:expr, [$($param:ident)*] $(, $comptime:expr)* $(,)?) => {
        $crate::kernel_expansion::compile($($kernel)::+::new(
            $crate::kernel_expansion::settings_of($dim),
            $crate::kernel_expansion::h100_properties(),
            $crate::kernel_expansion::target(),
            $($crate::kernel_expansion::compilation_arg!($param),)*
            $($comptime,)*
        ))
    };
}
pub(crate) use compile_kernel;

/// The compilation argument of a runtime parameter: `b` a buffer's, `s` a scalar's.
macro_rules! compilation_arg {
    (b) => {
        $crate::kernel_expansion::buffer()
    };
    (s) => {
        ()
    };
}
pub(crate) use compilation_arg;

/// No target-specific properties (cubecl's defaults).
pub(crate) fn target() -> Arc<TargetProperties> {
    Arc::new(TargetProperties::default())
}
