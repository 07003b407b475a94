//! An engine's process tree: started in a process group of its own (so a SIGKILL takes the
//! JVM and every Python worker with it), watched through /proc for its CPU time and memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// How to start an engine's process.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, over lk's own.
    pub env: Vec<(String, String)>,
    /// Where its standard output and error go (appended: every incarnation's, in order).
    pub log: PathBuf,
    /// The file it creates once it is ready for input.
    pub ready_file: PathBuf,
}

/// A running engine process.
pub struct EngineProcess {
    child: Child,
    group: Pid,
    /// What the tree had used by the last sample.
    usage: Usage,
    /// When it was last sampled.
    sampled: Option<std::time::Instant>,
}

/// What a process tree used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User and system CPU, seconds, summed over the tree.
    pub cpu_seconds: f64,
    /// The most memory the tree held at once, bytes (proportional set sizes, as sampled).
    pub peak_rss_bytes: u64,
}

impl EngineProcess {
    /// Starts `launch` in a new process group.
    pub fn start(launch: &Launch) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(&launch.ready_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|error| format!("{}: {error}", launch.log.display()))?;
        let errors = log.try_clone().map_err(|error| format!("{}: {error}", launch.log.display()))?;
        let child = Command::new(&launch.program)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .process_group(0)
            .spawn()
            .map_err(|error| format!("could not start {}: {error}", launch.program.display()))?;
        let group = Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
        Ok(Self { child, group, usage: Usage::default(), sampled: None })
    }

    /// Waits until the process has created its ready file; an error if it exits first or
    /// `timeout` passes.
    #[allow(clippy::disallowed_methods, reason = "a start-up timeout, not a measurement")]
    pub fn wait_ready(&mut self, launch: &Launch, timeout: Duration) -> Result<(), String> {
        let started = std::time::Instant::now();
        while !launch.ready_file.exists() {
            if let Some(status) = self.exited() {
                return Err(format!("it exited ({status}) before it was ready; {}", tail(&launch.log)));
            }
            if started.elapsed() > timeout {
                return Err(format!("it was not ready after {} s; {}", timeout.as_secs(), tail(&launch.log)));
            }
            self.sample();
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Samples the CPU time and memory of every process in its group, at most four times a
    /// second (a sample reads every process's /proc entry).
    #[allow(clippy::disallowed_methods, reason = "a sampling interval, not a measurement")]
    pub fn sample(&mut self) {
        if self.sampled.is_some_and(|at| at.elapsed() < Duration::from_millis(250)) {
            return;
        }
        self.sample_now();
    }

    #[allow(clippy::disallowed_methods, reason = "a sampling interval, not a measurement")]
    fn sample_now(&mut self) {
        self.sampled = Some(std::time::Instant::now());
        let now = group_usage(self.group.as_raw_nonzero().get());
        // CPU: each process's own and its reaped children's, so a helper that came and went is
        // counted once, in its parent. Memory: proportional set sizes at one instant, so a
        // forked helper sharing the JVM's pages does not count them twice.
        self.usage.cpu_seconds = self.usage.cpu_seconds.max(now.iter().map(|(_, cpu, _)| cpu).sum());
        self.usage.peak_rss_bytes = self.usage.peak_rss_bytes.max(now.iter().map(|(_, _, memory)| memory).sum());
    }

    /// What the tree has used so far (as sampled).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Kills the whole group at once (SIGKILL) and reaps the process.
    pub fn kill(mut self) -> Usage {
        self.sample_now();
        let _ = rustix::process::kill_process_group(self.group, Signal::KILL);
        let _ = self.child.wait();
        self.usage()
    }

    /// Asks the group to stop (SIGTERM), then kills it after `grace`.
    #[allow(clippy::disallowed_methods, reason = "a shutdown grace period, not a measurement")]
    pub fn stop(mut self, grace: Duration) -> Usage {
        self.sample_now();
        let _ = rustix::process::kill_process_group(self.group, Signal::TERM);
        let started = std::time::Instant::now();
        while self.exited().is_none() && started.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }
}

impl Drop for EngineProcess {
    /// An engine never outlives the run that started it, whatever way the run ends.
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = rustix::process::kill_process_group(self.group, Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

/// (pid, CPU seconds with its reaped children's, proportional set size in bytes) of each
/// process in process group `group`.
fn group_usage(group: i32) -> Vec<(i32, f64, u64)> {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 2..]) else { continue };
        let fields: Vec<&str> = rest.split(' ').collect();
        // Fields after the name, from 0: state, ppid, pgrp, ..., utime (11), stime (12), cutime
        // (13), cstime (14), ..., rss (21).
        if fields.len() < 22 || fields[2].parse::<i32>().ok() != Some(group) {
            continue;
        }
        let number = |index: usize| fields[index].parse::<u64>().unwrap_or(0);
        let cpu = (number(11) + number(12) + number(13) + number(14)) as f64 / ticks;
        let memory = proportional_set_size(&entry.path()).unwrap_or(number(21) * page);
        found.push((pid, cpu, memory));
    }
    found
}

/// A process's proportional set size (its private pages, and its share of pages it shares).
fn proportional_set_size(process: &Path) -> Option<u64> {
    let rollup = std::fs::read_to_string(process.join("smaps_rollup")).ok()?;
    let kilobytes = rollup.lines().find_map(|line| line.strip_prefix("Pss:"))?.trim().trim_end_matches("kB").trim();
    kilobytes.parse::<u64>().ok().map(|kilobytes| kilobytes * 1024)
}

/// The last lines of an engine's log, for an error message.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let last = &lines[lines.len().saturating_sub(12)..];
    if last.is_empty() {
        format!("its log ({}) is empty", log.display())
    } else {
        format!("the end of its log ({}):\n  {}", log.display(), last.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_group_is_measured_from_proc() {
        let group = rustix::process::getpgrp().as_raw_nonzero().get();
        let me = std::process::id() as i32;
        let found = group_usage(group);
        let (_, cpu, rss) = found.iter().find(|(pid, ..)| *pid == me).copied().expect("this process is in its group");
        assert!((0.0..1e6).contains(&cpu), "{cpu}");
        let (_, status_rss) = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|line| {
                line.strip_prefix("VmRSS:").map(|kb| ((), kb.trim().trim_end_matches(" kB").parse::<u64>().unwrap()))
            })
            .unwrap();
        // The proportional set counts shared pages (libraries) in part: above nothing, at most
        // the resident set.
        let status_bytes = status_rss * 1024;
        assert!(rss > 0 && rss <= status_bytes + status_bytes / 10, "measured {rss} bytes, resident {status_bytes}");
    }
}
