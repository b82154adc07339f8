//! Process resource readings for metrics and benchmark tables.

/// Peak resident set size of this process in bytes (`VmHWM` from `/proc/self/status`), or
/// `None` where procfs is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) consumed by this process so far, in seconds.
pub fn cpu_time_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux architecture peerless targets.
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_plausible() {
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        let rss = rss_bytes().unwrap();
        let peak = peak_rss_bytes().unwrap();
        assert!(peak >= 64 << 20, "peak {peak}");
        assert!(rss <= peak, "rss {rss} above peak {peak}");
        drop(big);
        // Spin until the process has used 0.1 CPU seconds more; on a loaded machine this
        // takes longer in wall time, so only a generous wall-clock bound is asserted.
        let start = cpu_time_s().unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while cpu_time_s().unwrap() - start < 0.1 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            assert!(t.elapsed().as_secs() < 30, "CPU time did not advance");
        }
        std::hint::black_box(x);
    }
}
