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

/// CPU seconds each thread of this process has run, summed by thread name (Linux's
/// /proc/self/task/*/schedstat; empty elsewhere). The difference of two readings around a run
/// tells how busy the host was: a GPU run whose busiest thread ran for most of the wall time is
/// bound by the host's launch work, not by the device.
pub fn cpu_seconds_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let nanos = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
        if let Some(nanos) = nanos {
            *by_name.entry(name.trim().to_string()).or_insert(0.0) += nanos * 1e-9;
        }
    }
    by_name
}

/// CPU seconds per thread name since the reading `before`, divided by the `runs` the time
/// covers ([`cpu_seconds_between`] now and `before`, per run).
pub fn cpu_seconds_per_run_since(
    before: &std::collections::BTreeMap<String, f64>,
    runs: usize,
) -> std::collections::BTreeMap<String, f64> {
    cpu_seconds_between(before, &cpu_seconds_by_thread())
        .into_iter()
        .map(|(thread, cpu)| (thread, cpu / runs as f64))
        .collect()
}

/// `after - before` per thread name, dropping threads that ran for under a millisecond.
pub fn cpu_seconds_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, &t)| (name.clone(), t - before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, t)| *t >= 1e-3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading half a second earlier for every thread gives each about 0.5 s over the runs.
    #[test]
    #[cfg(target_os = "linux")]
    fn cpu_seconds_per_run_divides_the_time_since_the_reading() {
        let earlier: std::collections::BTreeMap<String, f64> = cpu_seconds_by_thread()
            .into_iter()
            .map(|(thread, t)| (thread, t - 0.5))
            .collect();
        let per_run = cpu_seconds_per_run_since(&earlier, 5);
        assert!(!per_run.is_empty());
        for (thread, seconds) in per_run {
            assert!((0.1..0.15).contains(&seconds), "{thread}: {seconds}");
        }
    }
}
