//! Which resource limits a run: the CPU of this machine, of lk's threads by name and of a Kafka
//! broker running here, over the span the input ran, read from `/proc` (Linux; elsewhere a run
//! has no such figures). A run that falls short then says whether the machine was full, one
//! thread was, or neither (the time went to waiting, which the latency by stage locates).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The machine counts as full at this share of its cores busy.
const MACHINE_FULL: f64 = 0.9;
/// A thread counts as the limit at this share of one core.
const THREAD_FULL: f64 = 0.9;
/// Thread groups listed in the results, the busiest first.
const LISTED: usize = 8;

/// CPU counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    /// Machine ticks: busy and in all (from `/proc/stat`).
    machine: Option<(u64, u64)>,
    /// This process's threads: id to (name, ticks).
    threads: BTreeMap<u32, (String, u64)>,
    /// The broker process's ticks, when one runs here.
    broker: Option<u64>,
}

/// Reads the counters now; `broker_pid` is a Kafka broker on this machine, if any.
pub fn snapshot(broker_pid: Option<u32>) -> CpuSnapshot {
    CpuSnapshot {
        machine: std::fs::read_to_string("/proc/stat").ok().and_then(|stat| machine_ticks(&stat)),
        threads: threads(),
        broker: broker_pid.and_then(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| process_ticks(&stat))
        }),
    }
}

/// The process id in the pid file `scripts/kafka` keeps beside the broker's data folder, if that
/// process is alive.
pub fn local_broker(data_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(data_dir.parent()?.join("broker.pid")).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// What the CPU did between two snapshots.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// Seconds between the snapshots (the input's span).
    pub seconds: f64,
    /// Cores of the machine.
    pub cores: u32,
    /// Busy share of all the machine's cores, 0 to 1.
    pub machine_busy: f64,
    /// Cores' worth lk's process used (all its threads).
    pub lk_cores: f64,
    /// Cores' worth the broker used, when it runs on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cores: Option<f64>,
    /// lk's threads grouped by name (numbers dropped: `lk-kappa-0` and `lk-kappa-1` are
    /// `lk-kappa`), the busiest first.
    pub threads: Vec<ThreadCpu>,
    /// The busiest single thread and its share of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busiest_thread: Option<ThreadCpu>,
    /// Which resource was the limit, in a sentence.
    pub limit: String,
}

/// CPU of a group of threads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ThreadCpu {
    /// The threads' name.
    pub name: String,
    /// How many threads.
    pub threads: u32,
    /// Cores' worth they used.
    pub cores: f64,
}

/// The CPU used from `start` to `end`, `seconds` apart, on `cores` cores; `None` where `/proc`
/// said nothing.
pub fn between(start: &CpuSnapshot, end: &CpuSnapshot, seconds: f64, cores: u32) -> Option<Resources> {
    let ((_, total_start), (_, total_end)) = (start.machine?, end.machine?);
    if seconds <= 0.0 || total_end <= total_start {
        return None;
    }
    let (machine_busy, lk_cores) = busy(start, end, seconds);
    let per_second = ticks_per_second() as f64 * seconds;
    let mut busiest: Option<(String, u64)> = None;
    for (name, used) in used_ticks(start, end) {
        if busiest.as_ref().is_none_or(|(_, most)| used > *most) {
            busiest = Some((name.to_owned(), used));
        }
    }
    let groups = groups_of(start, end);
    let broker_cores = match (start.broker, end.broker) {
        (Some(first), Some(last)) => Some(last.saturating_sub(first) as f64 / per_second),
        _ => None,
    };
    let mut threads: Vec<ThreadCpu> = groups
        .into_iter()
        .map(|(name, (threads, ticks))| ThreadCpu { name, threads, cores: ticks as f64 / per_second })
        .collect();
    threads.sort_by(|a, b| b.cores.total_cmp(&a.cores));
    threads.truncate(LISTED);
    let busiest_thread = busiest.map(|(name, ticks)| ThreadCpu { name, threads: 1, cores: ticks as f64 / per_second });
    let limit = limit(machine_busy, cores, lk_cores, broker_cores, busiest_thread.as_ref());
    Some(Resources { seconds, cores, machine_busy, lk_cores, broker_cores, threads, busiest_thread, limit })
}

/// The machine's busy share and lk's cores from `start` to `end`, `seconds` apart (zeros where
/// `/proc` has no figures).
pub fn busy(start: &CpuSnapshot, end: &CpuSnapshot, seconds: f64) -> (f64, f64) {
    let machine_busy = match (start.machine, end.machine) {
        (Some((busy_start, total_start)), Some((busy_end, total_end))) if total_end > total_start => {
            busy_end.saturating_sub(busy_start) as f64 / (total_end - total_start) as f64
        }
        _ => 0.0,
    };
    let per_second = ticks_per_second() as f64 * seconds.max(1e-9);
    let lk_cores = used_ticks(start, end).map(|(_, ticks)| ticks).sum::<u64>() as f64 / per_second;
    (machine_busy, lk_cores)
}

/// Ticks each of lk's threads used from `start` to `end`, by its name.
fn used_ticks<'a>(start: &'a CpuSnapshot, end: &'a CpuSnapshot) -> impl Iterator<Item = (&'a str, u64)> {
    end.threads.iter().map(|(id, (name, ticks))| {
        // A thread born during the span started at zero.
        (name.as_str(), ticks.saturating_sub(start.threads.get(id).map_or(0, |(_, ticks)| *ticks)))
    })
}

/// lk's threads grouped by name (see [`Resources::threads`]): how many, and their ticks.
fn groups_of(start: &CpuSnapshot, end: &CpuSnapshot) -> BTreeMap<String, (u32, u64)> {
    let mut groups: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for (name, used) in used_ticks(start, end) {
        let group = groups.entry(group_name(name)).or_default();
        group.0 += 1;
        group.1 += used;
    }
    groups
}

/// Cores' worth each group of lk's threads used from `start` to `end`, `seconds` apart: every
/// group, not only the busiest (a dashboard sums an engine's).
pub fn thread_groups(start: &CpuSnapshot, end: &CpuSnapshot, seconds: f64) -> Vec<ThreadCpu> {
    let per_second = ticks_per_second() as f64 * seconds.max(1e-9);
    groups_of(start, end)
        .into_iter()
        .map(|(name, (threads, ticks))| ThreadCpu { name, threads, cores: ticks as f64 / per_second })
        .collect()
}

/// The sentence that says which resource was the limit.
fn limit(
    machine_busy: f64,
    cores: u32,
    lk_cores: f64,
    broker_cores: Option<f64>,
    busiest: Option<&ThreadCpu>,
) -> String {
    let share = match broker_cores {
        Some(broker) => format!(
            "lk {lk_cores:.2} cores, the broker {broker:.2}, the rest {:.2}",
            (machine_busy * f64::from(cores) - lk_cores - broker).max(0.0)
        ),
        None => format!("lk {lk_cores:.2} cores"),
    };
    if machine_busy >= MACHINE_FULL {
        return format!(
            "CPU: the machine's {cores} cores were {:.0}% busy ({share}); more cores, or fewer engines and brokers \
             per machine, would carry more",
            machine_busy * 100.0
        );
    }
    if let Some(thread) = busiest.filter(|thread| thread.cores >= THREAD_FULL) {
        return format!(
            "one thread: {} used {:.0}% of a core while the machine was {:.0}% busy ({share})",
            thread.name,
            thread.cores * 100.0,
            machine_busy * 100.0
        );
    }
    format!(
        "not CPU: the machine was {:.0}% busy ({share}); time that is not work is waiting, which the latency by \
         stage locates",
        machine_busy * 100.0
    )
}

/// A thread's group: its name without trailing digits and separators.
fn group_name(name: &str) -> String {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
    if trimmed.is_empty() { name.to_owned() } else { trimmed.to_owned() }
}

/// Busy and total ticks from `/proc/stat`'s first line.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().filter_map(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// utime + stime from a `/proc/.../stat` line (fields 14 and 15, counted after the name, which
/// is in parentheses and may hold spaces).
fn process_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// This process's threads: id to (name, ticks).
fn threads() -> BTreeMap<u32, (String, u64)> {
    let mut threads = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else { return threads };
    for entry in entries.filter_map(Result::ok) {
        let Some(id) = entry.file_name().to_str().and_then(|id| id.parse::<u32>().ok()) else { continue };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_owned();
        if let Some(ticks) =
            std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|stat| process_ticks(&stat))
        {
            threads.insert(id, (name, ticks));
        }
    }
    threads
}

fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines_are_read_as_the_kernel_writes_them() {
        assert_eq!(machine_ticks("cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3\n"), Some((161, 981)));
        assert_eq!(machine_ticks("garbage"), None);
        // A name with spaces and a parenthesis does not shift the fields.
        let stat = "42 (rdk:broker 1) S 1 2 3 4 5 6 7 8 9 10 250 70 0 0 20 0";
        assert_eq!(process_ticks(stat), Some(320));
        assert_eq!(process_ticks("42 (short"), None);
        assert_eq!(group_name("lk-kappa-1"), "lk-kappa");
        assert_eq!(group_name("rdk:broker1"), "rdk:broker");
        assert_eq!(group_name("rdk:broker-1"), "rdk:broker");
        assert_eq!(group_name("42"), "42");
    }

    fn snapshot_of(machine: (u64, u64), threads: &[(u32, &str, u64)], broker: Option<u64>) -> CpuSnapshot {
        CpuSnapshot {
            machine: Some(machine),
            threads: threads.iter().map(|&(id, name, ticks)| (id, (name.to_owned(), ticks))).collect(),
            broker,
        }
    }

    #[test]
    fn the_limit_is_the_machine_a_thread_or_neither() {
        let hz = ticks_per_second();
        // Ten seconds on two cores: 95% busy; lk's two workers and a new thread, the broker.
        let start = snapshot_of((0, 0), &[(1, "lk-kappa-0", 0), (2, "lk-kappa-1", 0)], Some(0));
        let end = snapshot_of(
            (19 * hz, 20 * hz),
            &[(1, "lk-kappa-0", 5 * hz), (2, "lk-kappa-1", 3 * hz), (3, "rdk:main", hz)],
            Some(9 * hz),
        );
        let full = between(&start, &end, 10.0, 2).unwrap();
        assert!((full.machine_busy - 0.95).abs() < 1e-9);
        assert!((full.lk_cores - 0.9).abs() < 1e-9, "{full:?}");
        assert_eq!(full.broker_cores, Some(0.9));
        assert_eq!(full.threads[0], ThreadCpu { name: "lk-kappa".into(), threads: 2, cores: 0.8 });
        assert!(full.limit.starts_with("CPU: the machine's 2 cores were 95% busy"), "{}", full.limit);
        // One thread at a whole core on a half-idle machine.
        let end = snapshot_of((10 * hz, 20 * hz), &[(1, "lk-kappa-0", 10 * hz)], None);
        let thread = between(&start, &end, 10.0, 2).unwrap();
        assert!(thread.limit.starts_with("one thread: lk-kappa-0 used 100% of a core"), "{}", thread.limit);
        // Neither: waiting.
        let end = snapshot_of((4 * hz, 20 * hz), &[(1, "lk-kappa-0", 2 * hz)], None);
        let idle = between(&start, &end, 10.0, 2).unwrap();
        assert!(idle.limit.starts_with("not CPU: the machine was 20% busy"), "{}", idle.limit);
        assert!(between(&start, &CpuSnapshot::default(), 10.0, 2).is_none());
    }
}
