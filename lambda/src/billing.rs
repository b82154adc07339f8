//! What AWS Lambda bills for an invocation, read from the `REPORT` line of its log, so the
//! study prices serverless gradients from the service's own numbers instead of the
//! caller's clock.
//!
//! Lambda bills the duration rounded up to the next millisecond times the configured
//! memory. An invocation with `LogType=Tail` returns the last 4 KB of its log, base64
//! encoded, in `log_result`; it ends with a line such as
//! `REPORT RequestId: 3f5c...\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: 1024 MB\tMax Memory Used: 80 MB\tInit Duration: 50.12 ms\t`
//! (`Init Duration` only on a cold start).

use serde::{Deserialize, Serialize};

/// The billing facts of one invocation, as Lambda reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationReport {
    /// Time the handler ran, in ms.
    pub duration_ms: f64,
    /// Duration Lambda charges for, in whole ms.
    pub billed_duration_ms: u64,
    /// Configured memory, in MB (the GB-second price applies to this, not to the use).
    pub memory_size_mb: u32,
    /// Peak memory the execution environment used, in MB.
    pub max_memory_used_mb: u32,
    /// Cold-start initialisation time, in ms; `None` on a warm invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_duration_ms: Option<f64>,
}

/// The billing facts in the last complete `REPORT` line of a Lambda log tail (the decoded
/// `log_result`), `None` when there is none. Fields may come in any order; `Init Duration`
/// is optional, the other four are required.
pub fn parse_report(log_tail: &str) -> Option<InvocationReport> {
    log_tail
        .lines()
        .rev()
        .filter_map(|line| line.trim_start().strip_prefix("REPORT "))
        .find_map(parse_fields)
}

/// The fields of one `REPORT` line after the `REPORT ` prefix.
fn parse_fields(fields: &str) -> Option<InvocationReport> {
    let mut duration_ms = None;
    let mut billed_duration_ms = None;
    let mut memory_size_mb = None;
    let mut max_memory_used_mb = None;
    let mut init_duration_ms = None;
    for field in fields.split('\t') {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim() {
            "Duration" => duration_ms = number(value, "ms"),
            "Billed Duration" => billed_duration_ms = number(value, "ms"),
            "Memory Size" => memory_size_mb = number(value, "MB"),
            "Max Memory Used" => max_memory_used_mb = number(value, "MB"),
            "Init Duration" => init_duration_ms = number(value, "ms"),
            _ => {}
        }
    }
    Some(InvocationReport {
        duration_ms: duration_ms.filter(|d: &f64| d.is_finite() && *d >= 0.0)?,
        billed_duration_ms: billed_duration_ms?,
        memory_size_mb: memory_size_mb?,
        max_memory_used_mb: max_memory_used_mb?,
        init_duration_ms: init_duration_ms.filter(|d: &f64| d.is_finite() && *d >= 0.0),
    })
}

/// `value` without its `unit` suffix, parsed.
fn number<T: std::str::FromStr>(value: &str, unit: &str) -> Option<T> {
    value.strip_suffix(unit)?.trim().parse().ok()
}

/// The duration Lambda bills for a run of `duration_ms`: rounded up to the next whole
/// millisecond, at least 1 (also for negative or NaN input).
pub fn billed_ms(duration_ms: f64) -> u64 {
    if duration_ms.is_nan() || duration_ms <= 1.0 {
        return 1;
    }
    // Saturating float-to-int conversion: infinity becomes u64::MAX.
    duration_ms.ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLD: &str = "START RequestId: 3f5c2a9e-0d4b-4c1e-9a51-7d2b8e6f1c03 Version: $LATEST\n\
        {\"level\":\"INFO\",\"message\":\"batch gradient written\"}\n\
        END RequestId: 3f5c2a9e-0d4b-4c1e-9a51-7d2b8e6f1c03\n\
        REPORT RequestId: 3f5c2a9e-0d4b-4c1e-9a51-7d2b8e6f1c03\tDuration: 12.34 ms\t\
        Billed Duration: 13 ms\tMemory Size: 1024 MB\tMax Memory Used: 80 MB\t\
        Init Duration: 50.12 ms\t\n";

    const WARM: &str = "REPORT RequestId: 8d1e\tDuration: 1843.07 ms\t\
        Billed Duration: 1844 ms\tMemory Size: 2048 MB\tMax Memory Used: 412 MB\t";

    #[test]
    fn reads_a_cold_start_report() {
        let r = parse_report(COLD).unwrap();
        assert_eq!(
            r,
            InvocationReport {
                duration_ms: 12.34,
                billed_duration_ms: 13,
                memory_size_mb: 1024,
                max_memory_used_mb: 80,
                init_duration_ms: Some(50.12),
            }
        );
        assert_eq!(billed_ms(r.duration_ms), r.billed_duration_ms);
    }

    #[test]
    fn init_duration_is_optional() {
        let r = parse_report(WARM).unwrap();
        assert_eq!(r.duration_ms, 1843.07);
        assert_eq!(r.billed_duration_ms, 1844);
        assert_eq!(r.memory_size_mb, 2048);
        assert_eq!(r.max_memory_used_mb, 412);
        assert_eq!(r.init_duration_ms, None);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("init_duration_ms").is_none(), "{json}");
        let back: InvocationReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_last_report_wins() {
        let tail = format!("{COLD}{WARM}\nsome trailing output\n");
        assert_eq!(parse_report(&tail).unwrap().billed_duration_ms, 1844);
        // A truncated last line does not hide the complete one before it.
        let tail = format!("{WARM}\nREPORT RequestId: 9\tDuration: 3.5 ms\tBilled Dura");
        assert_eq!(parse_report(&tail).unwrap().billed_duration_ms, 1844);
        // CRLF line ends.
        let tail = COLD.replace('\n', "\r\n");
        assert_eq!(parse_report(&tail).unwrap().max_memory_used_mb, 80);
    }

    #[test]
    fn garbage_gives_none() {
        for tail in [
            "",
            "\n\n",
            "REPORT",
            "REPORT RequestId: x",
            "START RequestId: x Version: $LATEST\nEND RequestId: x",
            "REPORT RequestId: x\tDuration: abc ms\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 1 MB",
            "REPORT RequestId: x\tDuration: 1 ms\tBilled Duration: -1 ms\tMemory Size: 128 MB\tMax Memory Used: 1 MB",
            "REPORT RequestId: x\tDuration: 1 s\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 1 MB",
            "REPORT RequestId: x\tDuration: NaN ms\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 1 MB",
            "REPORT \u{0}\t::\t\tDuration:\tms",
            "not a log at all \u{1F980}",
        ] {
            assert_eq!(parse_report(tail), None, "{tail:?}");
        }
    }

    #[test]
    fn billing_rounds_up_to_whole_milliseconds() {
        assert_eq!(billed_ms(12.0), 12);
        assert_eq!(billed_ms(12.001), 13);
        assert_eq!(billed_ms(12.999), 13);
        assert_eq!(billed_ms(1.0), 1);
        assert_eq!(billed_ms(0.2), 1);
        assert_eq!(billed_ms(0.0), 1);
        assert_eq!(billed_ms(-3.0), 1);
        assert_eq!(billed_ms(f64::NAN), 1);
        assert_eq!(billed_ms(f64::INFINITY), u64::MAX);
        assert_eq!(billed_ms(1843.07), 1844);
    }
}
