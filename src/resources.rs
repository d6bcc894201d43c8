//! What the agent uses of its machine, measured with `sysinfo`: the
//! resident memory and CPU of the daemon and every process below it (its
//! jobs' process groups, validation, the MCP server), and the free disk
//! under the state directory; and the limits they are held to — soft ones
//! raise an alert, hard ones pause the run with the reason.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use sysinfo::{Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

const MB: u64 = 1024 * 1024;

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The daemon and all its descendants.
    pub rss_bytes: u64,
    /// The daemon and all its descendants, percent of one core.
    pub cpu_percent: f32,
    /// Free space on the filesystem of the state directory.
    pub free_disk_bytes: Option<u64>,
}

/// The limits (`[alerts]` soft, `[limits]` hard).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub soft_rss_bytes: u64,
    pub hard_rss_bytes: Option<u64>,
    pub soft_cpu_percent: Option<f32>,
    pub soft_free_disk_bytes: Option<u64>,
    pub hard_free_disk_bytes: Option<u64>,
    /// How often they are measured.
    pub every: Duration,
}

/// Measures this process and what runs below it.
pub struct Sampler {
    system: System,
    disks: Disks,
    me: Pid,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            system: System::new(),
            disks: Disks::new_with_refreshed_list(),
            me: Pid::from_u32(std::process::id()),
        }
    }
}

impl Sampler {
    pub fn sample(&mut self, state_dir: &Path) -> Sample {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, process) in self.system.processes() {
            if let Some(parent) = process.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let mut seen = HashSet::new();
        let mut stack = vec![self.me];
        let (mut rss_bytes, mut cpu_percent) = (0, 0.0);
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(process) = self.system.process(pid) {
                // A thread shows as a process with its leader's memory.
                if process.thread_kind().is_none() {
                    rss_bytes += process.memory();
                    cpu_percent += process.cpu_usage();
                }
            }
            stack.extend(children.get(&pid).into_iter().flatten());
        }
        self.disks.refresh(true);
        let state = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.to_path_buf());
        let free_disk_bytes = self
            .disks
            .list()
            .iter()
            .filter(|disk| state.starts_with(disk.mount_point()))
            .max_by_key(|disk| disk.mount_point().as_os_str().len())
            .map(|disk| disk.available_space());
        Sample {
            rss_bytes,
            cpu_percent,
            free_disk_bytes,
        }
    }
}

/// The soft limits: (rule, whether it is crossed, what to say).
pub fn soft(limits: &Limits, sample: &Sample) -> Vec<(&'static str, bool, String)> {
    let mut found = vec![(
        "memory",
        sample.rss_bytes > limits.soft_rss_bytes,
        format!(
            "resident memory of the agent and its jobs {} MiB is above {} MiB",
            sample.rss_bytes / MB,
            limits.soft_rss_bytes / MB
        ),
    )];
    if let Some(max) = limits.soft_cpu_percent {
        found.push((
            "cpu",
            sample.cpu_percent > max,
            format!(
                "CPU of the agent and its jobs {:.0}% is above {max:.0}%",
                sample.cpu_percent
            ),
        ));
    }
    if let (Some(min), Some(free)) = (limits.soft_free_disk_bytes, sample.free_disk_bytes) {
        found.push((
            "disk",
            free < min,
            format!(
                "free disk under the state directory {} MiB is below {} MiB",
                free / MB,
                min / MB
            ),
        ));
    }
    found
}

/// The first hard limit crossed, as the reason the run pauses.
pub fn hard(limits: &Limits, sample: &Sample) -> Option<String> {
    if let Some(max) = limits.hard_rss_bytes
        && sample.rss_bytes > max
    {
        return Some(format!(
            "hard limit: resident memory of the agent and its jobs {} MiB is above [limits] max_rss_mb = {}",
            sample.rss_bytes / MB,
            max / MB
        ));
    }
    if let (Some(min), Some(free)) = (limits.hard_free_disk_bytes, sample.free_disk_bytes)
        && free < min
    {
        return Some(format!(
            "hard limit: free disk under the state directory {} MiB is below [limits] min_free_disk_mb = {}",
            free / MB,
            min / MB
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            soft_rss_bytes: 100 * MB,
            hard_rss_bytes: Some(200 * MB),
            soft_cpu_percent: Some(150.0),
            soft_free_disk_bytes: Some(1000 * MB),
            hard_free_disk_bytes: Some(100 * MB),
            every: Duration::from_secs(1),
        }
    }

    #[test]
    fn soft_limits_alert_and_hard_ones_name_the_limit() {
        let calm = Sample {
            rss_bytes: 50 * MB,
            cpu_percent: 10.0,
            free_disk_bytes: Some(5000 * MB),
        };
        assert!(
            soft(&limits(), &calm)
                .iter()
                .all(|(_, crossed, _)| !crossed)
        );
        assert_eq!(hard(&limits(), &calm), None);
        let busy = Sample {
            rss_bytes: 300 * MB,
            cpu_percent: 400.0,
            free_disk_bytes: Some(50 * MB),
        };
        let crossed: Vec<&str> = soft(&limits(), &busy)
            .into_iter()
            .filter(|(_, crossed, _)| *crossed)
            .map(|(rule, _, _)| rule)
            .collect();
        assert_eq!(crossed, ["memory", "cpu", "disk"]);
        assert!(hard(&limits(), &busy).unwrap().contains("max_rss_mb = 200"));
        let full = Sample {
            rss_bytes: 50 * MB,
            ..busy
        };
        assert!(
            hard(&limits(), &full)
                .unwrap()
                .contains("min_free_disk_mb = 100")
        );
    }

    #[test]
    fn this_process_is_measured() {
        let sample = Sampler::default().sample(Path::new("."));
        assert!(sample.rss_bytes > 0, "{sample:?}");
        assert!(sample.free_disk_bytes.is_some(), "{sample:?}");
    }
}
