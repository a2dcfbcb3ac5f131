//! The standard `process_*` metrics every Prometheus client library exports
//! (the names and meanings of client_golang's process collector), read from
//! `/proc/self` at each scrape: CPU seconds, resident and virtual memory, open
//! and maximum file descriptors, start time. Without `/proc` (not Linux)
//! nothing is exported, never a made-up zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ ticks, 100 per second
/// on every architecture (the kernel ABI; `sysconf(_SC_CLK_TCK)` says 100).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
pub struct Reading {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub virtual_bytes: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
    pub start_time_seconds: Option<f64>,
}

impl Reading {
    /// Reads what this system has of it.
    pub fn now() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let mut reading = match read("/proc/self/stat") {
            Some(stat) => parse_stat(&stat, read("/proc/stat").as_deref().and_then(boot_time)),
            None => Reading::default(),
        };
        reading.resident_bytes = read("/proc/self/status").as_deref().and_then(resident_bytes);
        reading.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as i64);
        reading.max_fds = read("/proc/self/limits").as_deref().and_then(max_open_files);
        reading
    }
}

/// utime, stime, starttime and vsize from `/proc/self/stat` (fields 14, 15,
/// 22 and 23, counted after the command name, which may hold spaces).
fn parse_stat(stat: &str, boot_time: Option<u64>) -> Reading {
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // `fields[0]` is field 3 (the state).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(user), Some(system)) => Some((user + system) as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    Reading {
        cpu_seconds,
        virtual_bytes: field(23).and_then(|v| i64::try_from(v).ok()),
        start_time_seconds,
        ..Reading::default()
    }
}

/// `btime` of `/proc/stat`: the boot time, unix seconds.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status` (kB) in bytes.
fn resident_bytes(status: &str) -> Option<i64> {
    let kb: i64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    Some(kb * 1024)
}

/// The soft `Max open files` of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    limits.lines().find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())
}

/// Registered on a registry without the proxy's prefix: these names are the
/// same for every program.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = Reading::now();
        if let Some(v) = r.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", r.resident_bytes.map(|v| v as f64)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", r.virtual_bytes.map(|v| v as f64)),
            ("process_open_fds", "Number of open file descriptors", r.open_fds.map(|v| v as f64)),
            ("process_max_fds", "Maximum number of open file descriptors", r.max_fds.map(|v| v as f64)),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                r.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        // A command name with spaces and a parenthesis, as `comm` may be.
        let stat = "4242 (line auth) proxy) S 1 4242 4242 0 -1 4194560 1523 0 0 0 250 75 0 0 20 0 9 0 \
                    12345 1234567168 2600 18446744073709551615 1 1 0 0 0 0 0 4096 17638 0 0 0 17 1 0 0 0 0 0";
        let r = parse_stat(stat, Some(1_700_000_000));
        assert_eq!(r.cpu_seconds, Some(3.25));
        assert_eq!(r.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(r.virtual_bytes, Some(1_234_567_168));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        assert_eq!(resident_bytes("Name:\tx\nVmRSS:\t    9100 kB\nThreads: 9\n"), Some(9100 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(max_open_files(limits), Some(1_048_576));
        assert_eq!(parse_stat("garbage", None), Reading::default());
    }

    #[test]
    fn this_process_is_read() {
        let r = Reading::now();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(r.cpu_seconds.is_some() && r.resident_bytes.unwrap() > 0 && r.open_fds.unwrap() > 2, "{r:?}");
            let started = r.start_time_seconds.unwrap();
            let now = crate::clock::Clock::system().unix_seconds() as f64;
            assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0, "{started} vs {now}");
        }
    }
}
