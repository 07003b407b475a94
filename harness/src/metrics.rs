//! Latency recording: HdrHistograms fed by the engines' workers, one recorder per worker.
//!
//! Visible latency starts at an event's scheduled send time (its due time), never at the actual
//! send, so a slow generator or a backed-up log cannot hide delay. Window latency starts when a
//! window could first be complete: its end in event time mapped to the run's clock, plus the
//! configured watermark delay. Samples before the warm-up ends are not recorded.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use lk_engines::kappa::WorkerObserver;
use lk_engines::runtime::BatchOutcome;
use serde::{Deserialize, Serialize};

/// Maps event time to the run's clock.
#[derive(Clone, Copy, Debug)]
pub struct TimeMapping {
    /// Clock time of the run's start (due time 0), ns.
    pub start_ns: u64,
    /// Event time at the run's start, µs.
    pub start_event_time_us: i64,
    /// Event seconds per clock second.
    pub time_compression: f64,
    /// The configured watermark delay, µs of event time.
    pub watermark_delay_us: i64,
    /// Clock time before which nothing is recorded, ns.
    pub warmup_end_ns: u64,
}

impl TimeMapping {
    /// The clock time at which a window ending at `end_us` could first be complete.
    pub fn window_complete_ns(&self, end_us: i64) -> i64 {
        let event_us = (end_us - self.start_event_time_us + self.watermark_delay_us) as f64;
        self.start_ns as i64 + (event_us * 1000.0 / self.time_compression) as i64
    }
}

/// A histogram of µs, 3 significant digits, up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// A worker's recorder.
#[derive(Debug)]
pub struct LatencyRecorder {
    mapping: TimeMapping,
    /// Visible latency of Q1 updates, µs.
    pub visible_us: Histogram<u64>,
    /// Window latency, µs.
    pub window_us: Histogram<u64>,
    /// Windows served before they could be complete (clock skew pushing event time ahead).
    pub windows_early: u64,
}

impl LatencyRecorder {
    /// A recorder for a run with `mapping`.
    pub fn new(mapping: TimeMapping) -> Self {
        Self { mapping, visible_us: new_histogram(), window_us: new_histogram(), windows_early: 0 }
    }
}

impl WorkerObserver for LatencyRecorder {
    fn served(&mut self, outcome: &BatchOutcome, visible_ns: u64) {
        if visible_ns < self.mapping.warmup_end_ns {
            return;
        }
        for &due_ns in &outcome.location_due_ns {
            let latency_us = visible_ns.saturating_sub(self.mapping.start_ns + due_ns) / 1000;
            self.visible_us.saturating_record(latency_us.max(1));
        }
        for &end_us in &outcome.fired_window_ends_us {
            let latency_ns = visible_ns as i64 - self.mapping.window_complete_ns(end_us);
            if latency_ns < 0 {
                self.windows_early += 1;
            }
            self.window_us.saturating_record((latency_ns.max(0) as u64 / 1000).max(1));
        }
    }
}

/// Percentiles of a latency histogram, in ms, and the histogram itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// The histogram (µs), HdrHistogram V2 deflated encoding in base64, so runs can be merged.
    pub histogram: String,
}

impl LatencySummary {
    /// Summarises a µs histogram.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut bytes = Vec::new();
        V2DeflateSerializer::new().serialize(histogram, &mut bytes).expect("serialising to memory");
        if histogram.is_empty() {
            return Self { histogram: base64::engine::general_purpose::STANDARD.encode(bytes), ..Self::default() };
        }
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            histogram: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

impl LatencySummary {
    /// The histogram (µs) back from its encoding.
    pub fn decode(&self) -> Result<Histogram<u64>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.histogram)
            .map_err(|error| format!("the histogram is not base64: {error}"))?;
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|error| format!("the histogram does not decode: {error:?}"))
    }
}

/// Peak resident memory of this process, from `/proc/self/status` (0 where unavailable).
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of every file under `path`.
pub fn directory_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}
