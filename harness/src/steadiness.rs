//! A run over time: lk's memory, what the run stores and the CPU, once a second while the input
//! runs, and whether memory and each engine's latency held steady after the warm-up. This is
//! what a soak (`just soak`) checks; every run records it.
//!
//! The judged span starts at the warm-up's end or a quarter of the input, whichever is later
//! (the embedded log's memory fills its bound in the first minute or two), and is split into
//! two halves. Memory is steady when the second half's peak resident memory is within
//! [`MEMORY_SLACK`] of the first half's. Latency is steady when the median of the second half's
//! per-second p99s is within [`LATENCY_SLACK`] (plus [`LATENCY_FLOOR_MS`]) of the first half's:
//! medians of seconds, so that a crash's second or a burst moves neither.
//!
//! Stored bytes are reported as rates, not judged: the log and Lambda's master dataset are the
//! history both architectures keep (`[requirements] history`), and grow with the input by design.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::LatencySample;

/// The second half's peak memory may exceed the first half's by this share.
pub const MEMORY_SLACK: f64 = 0.10;
/// The second half's median p99 may exceed the first half's by this share ...
pub const LATENCY_SLACK: f64 = 0.25;
/// ... plus this, ms (a p99 of a few milliseconds moves by one on a shared machine).
pub const LATENCY_FLOOR_MS: f64 = 1.0;
/// Fewer samples in a half than this and the run is too short to judge.
const MIN_HALF_SAMPLES: usize = 10;

/// The run's resources at one second of the input.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResourceSample {
    /// Seconds since the run's start.
    pub at_seconds: f64,
    /// lk's resident memory (an external engine's process is not in it).
    pub rss_bytes: u64,
    /// The log's bytes (the embedded log's segments, or the run's topics in a local broker's
    /// data folder).
    pub log_bytes: u64,
    /// The engines' checkpoints in the run's folder.
    pub checkpoint_bytes: u64,
    /// Lambda's master dataset in the run's folder.
    pub master_bytes: u64,
    /// Cores' worth lk's process used over the second before.
    pub lk_cores: f64,
    /// Busy share of the machine's cores over the second before, 0 to 1.
    pub machine_busy: f64,
}

/// Whether memory and latency held steady over the run (see the module documentation).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Steadiness {
    /// The judged span, seconds since the run's start: its start, where the halves meet, its end.
    pub from_seconds: f64,
    /// Where the halves meet.
    pub middle_seconds: f64,
    /// The span's end (the input's last sample).
    pub to_seconds: f64,
    /// lk's peak resident memory in the first half.
    pub first_half_peak_rss_bytes: u64,
    /// The same in the second half.
    pub second_half_peak_rss_bytes: u64,
    /// Whether memory levelled off.
    pub memory_steady: bool,
    /// How fast the log grew over the second half, bytes a second.
    pub log_bytes_per_second: f64,
    /// The same for the checkpoints.
    pub checkpoint_bytes_per_second: f64,
    /// The same for Lambda's master dataset.
    pub master_bytes_per_second: f64,
    /// Per engine with a latency series.
    pub latency: BTreeMap<String, LatencyDrift>,
    /// Whether every engine's latency held steady.
    pub latency_steady: bool,
}

/// One engine's visible latency in the two halves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyDrift {
    /// The median of the first half's per-second p99s, ms.
    pub first_half_p99_ms: f64,
    /// The same for the second half.
    pub second_half_p99_ms: f64,
    /// Whether it held.
    pub steady: bool,
}

/// Judges `resources` and each engine's latency series (by name) over the span from
/// `warmup_seconds` (or a quarter of the series, if later) to the series' end; None when the
/// run is too short for two halves of [`MIN_HALF_SAMPLES`] seconds each.
pub fn judge(
    resources: &[ResourceSample],
    latency: &BTreeMap<String, Vec<LatencySample>>,
    warmup_seconds: f64,
) -> Option<Steadiness> {
    let last = resources.last()?.at_seconds;
    let from = warmup_seconds.max(last / 4.0);
    let middle = from + (last - from) / 2.0;
    let first: Vec<&ResourceSample> =
        resources.iter().filter(|sample| sample.at_seconds > from && sample.at_seconds <= middle).collect();
    let second: Vec<&ResourceSample> = resources.iter().filter(|sample| sample.at_seconds > middle).collect();
    if first.len() < MIN_HALF_SAMPLES || second.len() < MIN_HALF_SAMPLES {
        return None;
    }
    let peak = |half: &[&ResourceSample]| half.iter().map(|sample| sample.rss_bytes).max().unwrap_or(0);
    let (first_peak, second_peak) = (peak(&first), peak(&second));
    let rate = |bytes: fn(&ResourceSample) -> u64| {
        let (start, end) = (second[0], second[second.len() - 1]);
        let seconds = end.at_seconds - start.at_seconds;
        if seconds <= 0.0 { 0.0 } else { (bytes(end) as f64 - bytes(start) as f64) / seconds }
    };
    let mut drifts = BTreeMap::new();
    for (name, series) in latency {
        let p99s = |low: f64, high: f64| {
            median(series.iter().filter(|s| s.at_seconds > low && s.at_seconds <= high).map(|s| s.p99_ms).collect())
        };
        let (Some(before), Some(after)) = (p99s(from, middle), p99s(middle, f64::INFINITY)) else { continue };
        let steady = after <= before * (1.0 + LATENCY_SLACK) + LATENCY_FLOOR_MS;
        drifts.insert(name.clone(), LatencyDrift { first_half_p99_ms: before, second_half_p99_ms: after, steady });
    }
    Some(Steadiness {
        from_seconds: from,
        middle_seconds: middle,
        to_seconds: last,
        first_half_peak_rss_bytes: first_peak,
        second_half_peak_rss_bytes: second_peak,
        memory_steady: second_peak as f64 <= first_peak as f64 * (1.0 + MEMORY_SLACK),
        log_bytes_per_second: rate(|sample| sample.log_bytes),
        checkpoint_bytes_per_second: rate(|sample| sample.checkpoint_bytes),
        master_bytes_per_second: rate(|sample| sample.master_bytes),
        latency_steady: drifts.values().all(|drift| drift.steady),
        latency: drifts,
    })
}

/// The median of `values` (None if empty).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 })
}

impl Steadiness {
    /// One line for the run's summary.
    pub fn line(&self) -> String {
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let mut parts = vec![format!(
            "memory {}: peak {:.0} MiB in {:.0}-{:.0} s, {:.0} MiB in {:.0}-{:.0} s",
            if self.memory_steady { "steady" } else { "GREW" },
            mib(self.first_half_peak_rss_bytes),
            self.from_seconds,
            self.middle_seconds,
            mib(self.second_half_peak_rss_bytes),
            self.middle_seconds,
            self.to_seconds
        )];
        for (name, drift) in &self.latency {
            parts.push(format!(
                "{name} p99 {}: {:.1} then {:.1} ms",
                if drift.steady { "steady" } else { "DRIFTED" },
                drift.first_half_p99_ms,
                drift.second_half_p99_ms
            ));
        }
        parts.push(format!(
            "stored bytes grow {:.1} MB/s (log {:.1}, master {:.1}, checkpoints {:.2})",
            (self.log_bytes_per_second + self.master_bytes_per_second + self.checkpoint_bytes_per_second) / 1e6,
            self.log_bytes_per_second / 1e6,
            self.master_bytes_per_second / 1e6,
            self.checkpoint_bytes_per_second / 1e6
        ));
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(rss: impl Fn(f64) -> u64) -> Vec<ResourceSample> {
        (1..=100u64)
            .map(|second| {
                let at_seconds = second as f64;
                ResourceSample {
                    at_seconds,
                    rss_bytes: rss(at_seconds),
                    log_bytes: second * 1_000_000,
                    checkpoint_bytes: 5_000,
                    master_bytes: second * 500_000,
                    ..ResourceSample::default()
                }
            })
            .collect()
    }

    fn latency(p99: impl Fn(f64) -> f64) -> BTreeMap<String, Vec<LatencySample>> {
        let series = (1..=100)
            .map(|second| {
                let at_seconds = f64::from(second);
                LatencySample { at_seconds, count: 100, p50_ms: 1.0, p99_ms: p99(at_seconds), max_ms: 50.0 }
            })
            .collect();
        BTreeMap::from([("kappa".to_owned(), series)])
    }

    #[test]
    fn memory_that_levels_off_after_filling_is_steady_and_memory_that_grows_is_not() {
        // Climbs for 30 s (the log's in-memory segments filling), then flat.
        let levelling = resources(|at| (at.min(30.0) * 10.0) as u64 * (1 << 20));
        let judged = judge(&levelling, &latency(|_| 5.0), 10.0).unwrap();
        assert_eq!((judged.from_seconds, judged.middle_seconds, judged.to_seconds), (25.0, 62.5, 100.0));
        assert!(judged.memory_steady, "{judged:?}");
        assert!(judged.latency_steady);
        // Grows all along: 2% a second of the start.
        let growing = resources(|at| (100.0 + at * 2.0) as u64 * (1 << 20));
        let judged = judge(&growing, &latency(|_| 5.0), 10.0).unwrap();
        assert!(!judged.memory_steady, "{judged:?}");
        assert!(judged.line().contains("memory GREW"), "{}", judged.line());
        assert_eq!(judged.log_bytes_per_second, 1_000_000.0);
        assert_eq!(judged.master_bytes_per_second, 500_000.0);
        assert_eq!(judged.checkpoint_bytes_per_second, 0.0);
    }

    #[test]
    fn latency_that_creeps_up_drifts_but_a_crashs_seconds_do_not() {
        let steady = resources(|_| 1 << 30);
        // Doubles over the run.
        let creeping = judge(&steady, &latency(|at| 5.0 + at / 10.0), 0.0).unwrap();
        assert!(!creeping.latency_steady, "{creeping:?}");
        assert!(creeping.line().contains("kappa p99 DRIFTED"), "{}", creeping.line());
        // Five seconds of a crash's recovery in the second half move no median.
        let crash = judge(&steady, &latency(|at| if (80.0..85.0).contains(&at) { 900.0 } else { 5.0 }), 0.0).unwrap();
        assert!(crash.latency_steady, "{crash:?}");
        assert_eq!(crash.latency["kappa"].second_half_p99_ms, 5.0);
    }

    #[test]
    fn a_short_run_is_not_judged() {
        let short: Vec<_> = resources(|_| 1).into_iter().take(15).collect();
        assert!(judge(&short, &BTreeMap::new(), 2.0).is_none());
    }
}
