//! The machine a measurement ran on, for model cards and benchmark records.

/// "Intel(R) Xeon(R) Processor, 2 cores (linux x86_64)": the CPU model from /proc/cpuinfo where
/// there is one, and the cores this process may use.
pub fn host_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores ({} {})",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
