//! For CPU tests that expand the GPU kernels into cubecl's IR, as a launch does before it
//! compiles them: a kernel that cannot be expanded (a `Sequence` indexed by a value computed in
//! the kernel, a comptime assertion) fails its module's test instead of a call on the lent GPU.
//! No device is needed. The properties are an H100's, as the NVIDIA Vulkan driver reports them.
//! Expansion does not compile to SPIR-V: what only the driver rejects (too much shared memory,
//! an unsupported matrix shape) still shows only on the GPU.

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
        Features::default(),
        MemoryDeviceProperties::new(u64::MAX, 256),
        hardware,
        TimingMethod::System,
        DeviceIdentity::default(),
    ))
}

/// Settings of a launch with `units` invocations per workgroup.
pub(crate) fn settings(units: u32) -> KernelSettings {
    KernelSettings::new(
        CubeDim::new_1d(units).into(),
        ExecutionMode::Unchecked,
        AddressType::U32,
    )
}

/// Expands `kernel` as a launch does, or says why it cannot be.
pub(crate) fn expand(kernel: impl CubeKernel) -> Result<(), String> {
    cubecl::define_kernel(&kernel)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A buffer argument (not aliased).
pub(crate) fn buffer() -> BufferCompilationArg {
    BufferCompilationArg { inplace: None }
}

/// No target-specific properties (cubecl's defaults).
pub(crate) fn target() -> Arc<TargetProperties> {
    Arc::new(TargetProperties::default())
}
