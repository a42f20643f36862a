//! Choosing the burn device: `cpu` is burn's flex backend, `wgpu` the Vulkan (SPIR-V) GPU path,
//! `auto` the GPU when a real adapter exists. burn panics when asked for a wgpu device without
//! an adapter, so the adapter is probed first.

use burn::tensor::{Device, DeviceKind};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Wgpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(format!("unknown device `{other}` (auto, cpu or wgpu)")),
        }
    }
}

/// Name of the first hardware (non-CPU) Vulkan adapter, if any.
pub fn gpu_adapter() -> Option<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    adapters
        .iter()
        .map(wgpu::Adapter::get_info)
        .find(|info| info.device_type != wgpu::DeviceType::Cpu)
        .map(|info| {
            format!(
                "{} ({:?}, driver {})",
                info.name, info.device_type, info.driver_info
            )
        })
}

/// A chosen device, what it is for logs, and whether it is the GPU (where the GPU-only kernels
/// run).
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
    pub on_gpu: bool,
}

impl SelectedDevice {
    fn cpu(description: &str) -> Self {
        Self {
            device: Device::flex(),
            description: description.into(),
            on_gpu: false,
        }
    }

    fn gpu(adapter: &str) -> Self {
        Self {
            device: Device::vulkan(DeviceKind::DefaultDevice),
            description: format!("wgpu/vulkan: {adapter}"),
            on_gpu: true,
        }
    }
}

/// The device for `choice`.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice> {
    match choice {
        DeviceChoice::Cpu => Ok(SelectedDevice::cpu("cpu (burn flex)")),
        DeviceChoice::Wgpu => match gpu_adapter() {
            Some(name) => Ok(SelectedDevice::gpu(&name)),
            None => Err(ModelError::Device(
                "--device wgpu: no Vulkan GPU adapter found (is the Vulkan loader installed?)"
                    .into(),
            )),
        },
        DeviceChoice::Auto => Ok(match gpu_adapter() {
            Some(name) => SelectedDevice::gpu(&name),
            None => SelectedDevice::cpu("cpu (burn flex; no GPU adapter found)"),
        }),
    }
}
