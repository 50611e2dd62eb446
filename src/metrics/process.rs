//! The standard `process_*` families (CPU time, resident and virtual memory, open file
//! descriptors, start time), read from `/proc/self` at each scrape. Linux only: elsewhere
//! the families are absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

#[derive(Debug, Default)]
pub(super) struct Process;

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_seconds_after_boot: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

/// Parses `/proc/self/stat` (see proc(5)); the command name in parentheses may hold spaces
/// and parentheses itself, so the fields are counted from the last `)`.
fn parse_stat(text: &str, ticks_per_second: f64, page_bytes: u64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0 here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { f.get(field.checked_sub(3)?)?.parse().ok() };
    let (utime, stime) = (num(14)?, num(15)?);
    Some(Stat {
        cpu_seconds: (utime.saturating_add(stime)) as f64 / ticks_per_second,
        start_seconds_after_boot: num(22)? as f64 / ticks_per_second,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)?.saturating_mul(page_bytes),
    })
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
        let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, ticks, page));
        if let Some(s) = stat {
            let m = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(s.cpu_seconds).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(s.resident_bytes as i64).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_virtual_memory",
                "Virtual memory size.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(s.virtual_bytes as i64).encode(m)?;
            if let Some(boot) = boot_time() {
                let m = encoder.encode_descriptor(
                    "process_start_time",
                    "Start time of the process since the Unix epoch.",
                    Some(&Unit::Seconds),
                    MetricType::Gauge,
                )?;
                ConstGauge::new(boot as f64 + s.start_seconds_after_boot).encode(m)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(dir.count() as i64).encode(m)?;
        }
        if let Some(max) = max_fds() {
            let m = encoder.encode_descriptor(
                "process_max_fds",
                "The most file descriptors the process may open.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(max as i64).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 1000 8192000 300 ...";
        let s = parse_stat(line, 100.0, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.0,
                start_seconds_after_boot: 10.0,
                virtual_bytes: 8_192_000,
                resident_bytes: 300 * 4096,
            }
        );
    }

    #[test]
    fn a_truncated_stat_is_no_stat() {
        assert_eq!(parse_stat("1 (x) S 1 2", 100.0, 4096), None);
        assert_eq!(parse_stat("no parenthesis", 100.0, 4096), None);
    }
}
