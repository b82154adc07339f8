//! What the study ran on, for the report's setup section: CPU, cores, memory, OS. Read
//! from procfs where available; anything unreadable is reported as unknown.

/// One `(what, value)` row per fact.
pub fn machine_facts() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .ok();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib / (1024.0 * 1024.0)));
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string());
    [
        ("CPU", cpu),
        ("logical cores available", cores),
        ("memory", memory),
        ("operating system", os),
        ("kernel", kernel),
        ("architecture", Some(std::env::consts::ARCH.to_string())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.unwrap_or_else(|| "unknown".into())))
    .collect()
}
