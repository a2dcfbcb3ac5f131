//! How many runtime threads serve: `server.workers` when set, else the
//! container's CPU quota (cgroup v2 `cpu.max`, what a Kubernetes CPU limit
//! sets) rounded down and at least one, never more than the CPUs the
//! process may run on (its affinity: `taskset`, cpusets). One worker is a
//! current-thread runtime: the same work without cross-thread wake-ups and
//! queues.

use std::path::Path;

/// The worker count and what it came from, for the start-up log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workers {
    pub count: usize,
    pub from: &'static str,
}

impl Workers {
    /// `configured` (`server.workers`), or the default from this machine.
    pub fn choose(configured: Option<usize>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let quota = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|membership| cgroup_quota(Path::new("/sys/fs/cgroup"), &membership));
        Self::from_parts(configured, quota, cpus)
    }

    fn from_parts(configured: Option<usize>, quota: Option<usize>, cpus: usize) -> Self {
        match (configured, quota) {
            (Some(count), _) => Self { count, from: "server.workers" },
            (None, Some(quota)) if quota <= cpus => Self { count: quota, from: "cgroup cpu.max" },
            (None, _) => Self { count: cpus, from: "cpus" },
        }
    }
}

/// The tightest `cpu.max` quota on the way from the process's cgroup (v2,
/// the `0::/path` line of `/proc/self/cgroup`) up to `root`, in whole CPUs
/// rounded down (at least 1); `None` without a cgroup v2 membership or a limit.
pub fn cgroup_quota(root: &Path, membership: &str) -> Option<usize> {
    let path = membership.lines().find_map(|line| line.strip_prefix("0::"))?.trim();
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut tightest: Option<usize> = None;
    loop {
        if let Some(cores) = std::fs::read_to_string(dir.join("cpu.max")).ok().as_deref().and_then(cpu_max_cores) {
            tightest = Some(tightest.map_or(cores, |t| t.min(cores)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return tightest;
        }
    }
}

/// `cpu.max` is `$MAX $PERIOD` (microseconds) or `max $PERIOD`: the CPUs
/// it allows, rounded down and at least one (1.5 CPUs is 1 worker, 0.25 is 1).
pub fn cpu_max_cores(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let (max, period) = (fields.next()?, fields.next()?);
    let (max, period) = (max.parse::<u64>().ok()?, period.parse::<u64>().ok()?);
    if max == 0 || period == 0 {
        return None;
    }
    // Rounded down, at least one: what the standard library's
    // `available_parallelism` (the `cpus` beside it) makes of the same file,
    // and what keeps a 1.5-CPU limit from being throttled by two busy threads.
    usize::try_from((max / period).max(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_is_read_as_whole_cpus_rounded_down_at_least_one() {
        assert_eq!(cpu_max_cores("max 100000\n"), None);
        assert_eq!(cpu_max_cores("100000 100000\n"), Some(1));
        assert_eq!(cpu_max_cores("150000 100000\n"), Some(1));
        assert_eq!(cpu_max_cores("250000 100000\n"), Some(2));
        assert_eq!(cpu_max_cores("25000 100000\n"), Some(1));
        assert_eq!(cpu_max_cores("400000 100000"), Some(4));
        assert_eq!(cpu_max_cores("0 100000"), None);
        assert_eq!(cpu_max_cores("garbage"), None);
        assert_eq!(cpu_max_cores(""), None);
    }

    #[test]
    fn the_tightest_quota_from_the_cgroup_up_to_the_root_counts() {
        let root = std::env::temp_dir().join(format!("lap-cgroup-{}", rand::random::<u64>()));
        let pod = root.join("kubepods/pod1");
        let container = pod.join("app");
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(root.join("kubepods/cpu.max"), "max 100000\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "200000 100000\n").unwrap();
        std::fs::write(container.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cgroup_quota(&root, "0::/kubepods/pod1/app\n"), Some(2));
        // The container's own limit is tighter still.
        std::fs::write(container.join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(cgroup_quota(&root, "0::/kubepods/pod1/app\n"), Some(1));
        // A namespaced cgroup (`0::/`) reads the root's file.
        std::fs::write(root.join("cpu.max"), "300000 100000\n").unwrap();
        assert_eq!(cgroup_quota(&root, "0::/\n"), Some(3));
        // cgroup v1 only (no `0::` line), or no limit anywhere.
        assert_eq!(cgroup_quota(&root, "12:cpu,cpuacct:/x\n"), None);
        std::fs::remove_dir_all(&root).unwrap();
        let empty = std::env::temp_dir().join(format!("lap-cgroup-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(cgroup_quota(&empty, "0::/\n"), None);
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn the_setting_wins_then_the_quota_then_the_cpus() {
        assert_eq!(Workers::from_parts(Some(3), Some(1), 8), Workers { count: 3, from: "server.workers" });
        assert_eq!(Workers::from_parts(None, Some(2), 8), Workers { count: 2, from: "cgroup cpu.max" });
        // The standard library's count already applies the quota: equal
        // means the quota is what binds.
        assert_eq!(Workers::from_parts(None, Some(2), 2), Workers { count: 2, from: "cgroup cpu.max" });
        // A quota above what the affinity allows: the CPUs it may run on.
        assert_eq!(Workers::from_parts(None, Some(8), 2), Workers { count: 2, from: "cpus" });
        assert_eq!(Workers::from_parts(None, None, 4), Workers { count: 4, from: "cpus" });
    }
}
