//! Latency recording: HdrHistograms fed by the engines' workers, one recorder per worker.
//!
//! Visible latency starts at an event's scheduled send time (its due time), never at the actual
//! send, so a slow generator or a backed-up log cannot hide delay. A window result has two
//! latencies (Karimov et al., ICDE 2018): *processing* latency, from the due time of the last
//! event that contributed to it until it is served (what the engine costs), and *event-time*
//! latency, from the window's end in event time mapped to the run's clock until it is served.
//! The second is negative for a result served before its window ended on the run's clock (event
//! time running ahead of the schedule, a short watermark delay): it is recorded signed, never
//! clamped. Samples before the warm-up ends are not recorded.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use lk_engines::runtime::BatchOutcome;
use lk_engines::runtime::job::WorkerObserver;
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
    /// The clock time at which event time `time_us` is due on the run's schedule.
    pub fn clock_ns_of(&self, time_us: i64) -> i64 {
        let event_us = (time_us - self.start_event_time_us) as f64;
        self.start_ns as i64 + (event_us * 1000.0 / self.time_compression) as i64
    }

    /// The clock time at which a window ending at `end_us` could first be complete: its end
    /// plus the configured watermark delay.
    pub fn window_complete_ns(&self, end_us: i64) -> i64 {
        self.clock_ns_of(end_us + self.watermark_delay_us)
    }
}

/// A histogram of µs, 3 significant digits, up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// A signed latency as two histograms of µs: results served at or after the reference time
/// (`late_us`, the usual case) and before it (`early_us`, by how much).
#[derive(Clone, Debug)]
pub struct SignedHistogram {
    /// Latencies of 0 and more.
    pub late_us: Histogram<u64>,
    /// Magnitudes of negative latencies.
    pub early_us: Histogram<u64>,
}

impl Default for SignedHistogram {
    fn default() -> Self {
        Self { late_us: new_histogram(), early_us: new_histogram() }
    }
}

impl SignedHistogram {
    /// Records `latency_ns`, of either sign.
    pub fn record(&mut self, latency_ns: i64) {
        let us = latency_ns.unsigned_abs() / 1000;
        if latency_ns < 0 {
            self.early_us.saturating_record(us.max(1));
        } else {
            self.late_us.saturating_record(us);
        }
    }

    /// Adds another's samples.
    pub fn add(&mut self, other: &SignedHistogram) {
        self.late_us.add(&other.late_us).expect("same bounds");
        self.early_us.add(&other.early_us).expect("same bounds");
    }

    /// Samples in all.
    pub fn len(&self) -> u64 {
        self.late_us.len() + self.early_us.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `quantile` of the signed values, µs: the early samples are the lowest values (the
    /// most negative first), the late ones the highest.
    pub fn value_at_quantile(&self, quantile: f64) -> i64 {
        let (early, late) = (self.early_us.len(), self.late_us.len());
        let total = early + late;
        assert!(total > 0, "a quantile of no samples");
        // The rank of the sample at `quantile`, 1-based, as HdrHistogram counts it.
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        if rank <= early {
            // The rank-th lowest signed value is the (early - rank + 1)-th lowest magnitude.
            let magnitude_rank = early - rank + 1;
            -(self.early_us.value_at_quantile(magnitude_rank as f64 / early as f64) as i64)
        } else {
            self.late_us.value_at_quantile((rank - early) as f64 / late as f64) as i64
        }
    }
}

/// A worker's recorder.
#[derive(Debug)]
pub struct LatencyRecorder {
    mapping: TimeMapping,
    /// Visible latency of Q1 updates, µs.
    pub visible_us: Histogram<u64>,
    /// Processing latency of window results: last contribution's due time to served, µs.
    pub processing_us: Histogram<u64>,
    /// Event-time latency of window results: the window's end on the run's clock to served.
    pub event_time: SignedHistogram,
    /// Window results served again after a late event changed them.
    pub revised: u64,
}

impl LatencyRecorder {
    /// A recorder for a run with `mapping`.
    pub fn new(mapping: TimeMapping) -> Self {
        Self {
            mapping,
            visible_us: new_histogram(),
            processing_us: new_histogram(),
            event_time: SignedHistogram::default(),
            revised: 0,
        }
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
        for window in &outcome.fired_windows {
            let processing_us = visible_ns.saturating_sub(self.mapping.start_ns + window.last_due_ns) / 1000;
            self.processing_us.saturating_record(processing_us);
            self.event_time.record(visible_ns as i64 - self.mapping.clock_ns_of(window.end_us));
        }
        self.revised += outcome.revised;
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

/// Percentiles of a signed latency, in ms (negative: served before the reference time), and
/// its two histograms.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SignedLatencySummary {
    /// Samples.
    pub count: u64,
    /// Samples below 0.
    pub negative: u64,
    /// Smallest (most negative).
    pub min: f64,
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
    /// The non-negative samples' histogram (µs), encoded as in [`LatencySummary`].
    pub histogram: String,
    /// The negative samples' magnitudes (µs), encoded the same way.
    pub histogram_negative: String,
}

impl SignedLatencySummary {
    /// Summarises a signed histogram; `None` without samples.
    pub fn of(histogram: &SignedHistogram) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Some(Self {
            count: histogram.len(),
            negative: histogram.early_us.len(),
            min: ms(0.0),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: ms(1.0),
            histogram: LatencySummary::of(&histogram.late_us).histogram,
            histogram_negative: LatencySummary::of(&histogram.early_us).histogram,
        })
    }

    /// The two histograms back from their encodings.
    pub fn decode(&self) -> Result<SignedHistogram, String> {
        let decode =
            |histogram: &str| LatencySummary { histogram: histogram.to_owned(), ..LatencySummary::default() }.decode();
        Ok(SignedHistogram { late_us: decode(&self.histogram)?, early_us: decode(&self.histogram_negative)? })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(samples_ms: &[i64]) -> SignedHistogram {
        let mut histogram = SignedHistogram::default();
        for sample in samples_ms {
            histogram.record(sample * 1_000_000);
        }
        histogram
    }

    #[test]
    fn signed_percentiles_put_early_results_below_zero_in_order() {
        // -400, -300, -200, -100, 100, 200, 300, 400, 500, 600 ms.
        let histogram = signed(&[-400, -300, -200, -100, 100, 200, 300, 400, 500, 600]);
        let summary = SignedLatencySummary::of(&histogram).unwrap();
        assert_eq!(summary.count, 10);
        assert_eq!(summary.negative, 4);
        let near = |value: f64, expected: f64| (value - expected).abs() <= expected.abs() * 0.002 + 0.001;
        assert!(near(summary.min, -400.0), "{summary:?}");
        assert!(near(histogram.value_at_quantile(0.2) as f64 / 1000.0, -300.0), "{summary:?}");
        assert!(near(histogram.value_at_quantile(0.4) as f64 / 1000.0, -100.0), "{summary:?}");
        assert!(near(summary.p50, 100.0), "{summary:?}");
        assert!(near(summary.p90, 500.0), "{summary:?}");
        assert!(near(summary.max, 600.0), "{summary:?}");
        let back = summary.decode().unwrap();
        assert_eq!((back.early_us.len(), back.late_us.len()), (4, 6));
    }

    #[test]
    fn all_early_results_give_negative_percentiles_and_none_is_no_summary() {
        let summary = SignedLatencySummary::of(&signed(&[-50, -40, -30])).unwrap();
        assert!(summary.p50 < -39.0 && summary.p50 > -41.0, "{summary:?}");
        assert!(summary.max < -29.0 && summary.min < -49.0, "{summary:?}");
        assert!(SignedLatencySummary::of(&SignedHistogram::default()).is_none());
    }

    #[test]
    fn a_window_result_has_a_processing_and_a_signed_event_time_latency() {
        use lk_engines::runtime::FiredWindow;
        // Event time runs 1:1 with the clock from 0; a window ends at 10 s of event time. Its
        // last event was due at 9.4 s, and the result was served at 9.6 s: 200 ms after its
        // last contribution, 400 ms before the window's end (an early result).
        let mapping = TimeMapping {
            start_ns: 1_000_000_000,
            start_event_time_us: 0,
            time_compression: 1.0,
            watermark_delay_us: 2_000_000,
            warmup_end_ns: 0,
        };
        let mut recorder = LatencyRecorder::new(mapping);
        let mut outcome = BatchOutcome::default();
        outcome.fired_windows.push(FiredWindow { end_us: 10_000_000, last_due_ns: 9_400_000_000 });
        recorder.served(&outcome, 1_000_000_000 + 9_600_000_000);
        assert_eq!(recorder.processing_us.len(), 1);
        let processing_us = recorder.processing_us.value_at_quantile(0.5) as f64;
        assert!((processing_us - 200_000.0).abs() < 200.0, "{processing_us}");
        assert_eq!(recorder.event_time.early_us.len(), 1);
        let event_time_ms = recorder.event_time.value_at_quantile(0.5) as f64 / 1000.0;
        assert!((event_time_ms + 400.0).abs() < 0.5, "{event_time_ms}");
        // The watermark delay is configuration: it is not part of either latency.
        outcome.fired_windows.clear();
        outcome.revised = 3;
        recorder.served(&outcome, 1_000_000_000 + 12_000_000_000);
        assert_eq!(recorder.revised, 3);
    }
}
