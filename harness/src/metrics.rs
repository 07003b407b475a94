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

/// When the producer handed each append to the log and when it saw the log acknowledge it,
/// per partition and by offset, for the first stages of the latency breakdown
/// ([`StageRecorder`]). Appends older than [`TIMELINE_HORIZON_NS`] are forgotten, so that a
/// long run holds a bounded amount; a sample of a ping sent before then is counted unjoined.
#[derive(Debug)]
pub struct SendTimeline {
    partitions: std::sync::Mutex<Vec<std::collections::VecDeque<SentAppend>>>,
}

/// One append of one partition.
#[derive(Clone, Copy, Debug)]
struct SentAppend {
    first: u64,
    end: u64,
    sent_ns: u64,
    acked_ns: u64,
}

/// How long the [`SendTimeline`] remembers an append (clock ns).
pub const TIMELINE_HORIZON_NS: u64 = 120_000_000_000;

impl SendTimeline {
    /// An empty timeline of a topic with `partitions` partitions.
    pub fn new(partitions: u32) -> Self {
        Self { partitions: std::sync::Mutex::new((0..partitions).map(|_| Default::default()).collect()) }
    }

    /// Records that offsets `first..end` of `partition` were handed to the log at `sent_ns` and
    /// seen acknowledged at `acked_ns`.
    pub fn record(&self, partition: u32, first: u64, end: u64, sent_ns: u64, acked_ns: u64) {
        let mut partitions = self.partitions.lock().expect("not poisoned");
        let Some(appends) = partitions.get_mut(partition as usize) else { return };
        while appends.front().is_some_and(|oldest| oldest.sent_ns + TIMELINE_HORIZON_NS < sent_ns) {
            appends.pop_front();
        }
        appends.push_back(SentAppend { first, end, sent_ns, acked_ns });
    }

    /// When the append holding `offset` of `partition` was sent and acknowledged.
    pub fn find(&self, partition: u32, offset: u64) -> Option<(u64, u64)> {
        let partitions = self.partitions.lock().expect("not poisoned");
        let appends = partitions.get(partition as usize)?;
        let at = appends.partition_point(|append| append.end <= offset);
        appends.get(at).filter(|append| append.first <= offset).map(|append| (append.sent_ns, append.acked_ns))
    }
}

/// The stages of the latency breakdown, in order; each sample's stages add up to its visible
/// latency (docs/measurement.md says what each one covers).
pub const STAGES: [&str; 7] = ["schedule", "produce", "fetch", "process", "commit wait", "commit", "serve"];

/// A worker's latency breakdown by stage: one histogram (µs) per stage of [`STAGES`], over the
/// stage samples ([`lk_engines::runtime::StageSample`]) it served.
#[derive(Debug)]
pub struct StageRecorder {
    timeline: Option<std::sync::Arc<SendTimeline>>,
    /// Per stage: its histogram, µs.
    pub stages: Vec<Histogram<u64>>,
    /// Per stage: the sum of its samples, ns (for the exact mean).
    pub sums_ns: Vec<u128>,
    /// Samples whose append the timeline no longer (or never) held.
    pub unjoined: u64,
}

impl StageRecorder {
    /// A recorder joining samples with `timeline` (none: every sample is unjoined).
    pub fn new(timeline: Option<std::sync::Arc<SendTimeline>>) -> Self {
        Self {
            timeline,
            stages: STAGES.iter().map(|_| new_histogram()).collect(),
            sums_ns: vec![0; STAGES.len()],
            unjoined: 0,
        }
    }

    /// Records one sample served at `served_ns`, due at `due_ns` (both on the run's clock).
    pub fn record(&mut self, sample: &lk_engines::runtime::StageSample, due_ns: u64, served_ns: u64) {
        let Some((sent_ns, acked_ns)) =
            self.timeline.as_ref().and_then(|timeline| timeline.find(sample.partition, sample.offset))
        else {
            self.unjoined += 1;
            return;
        };
        // The boundaries, clamped into order between the due time and the time served, so that
        // the stages add up to the visible latency: the producer sees an acknowledgement at its
        // next send, which can be after the engine has read the record, and a committer checks
        // that its commit is visible after the materialiser may already have served it.
        let served = served_ns.max(due_ns);
        let mut at = due_ns;
        let mut next = |time: u64| {
            at = time.clamp(at, served);
            at
        };
        let sent = next(sent_ns);
        let acked = next(acked_ns.min(sample.read_ns));
        let read = next(sample.read_ns);
        let processed = next(sample.processed_ns);
        let (handed, committed) = if sample.handed_ns == 0 {
            (processed, processed)
        } else {
            (next(sample.handed_ns), next(sample.committed_ns))
        };
        let spans = [
            sent - due_ns,
            acked - sent,
            read - acked,
            processed - read,
            handed - processed,
            committed - handed,
            served - committed,
        ];
        for ((histogram, sum), span) in self.stages.iter_mut().zip(&mut self.sums_ns).zip(spans) {
            histogram.saturating_record(span / 1000);
            *sum += u128::from(span);
        }
    }

    /// Adds another worker's samples.
    pub fn add(&mut self, other: &StageRecorder) {
        for (mine, theirs) in self.stages.iter_mut().zip(&other.stages) {
            mine.add(theirs).expect("same bounds");
        }
        for (mine, theirs) in self.sums_ns.iter_mut().zip(&other.sums_ns) {
            *mine += theirs;
        }
        self.unjoined += other.unjoined;
    }

    /// The breakdown, or `None` without samples.
    pub fn summary(&self) -> Option<LatencyStages> {
        let samples = self.stages[0].len();
        if samples == 0 {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencyStages {
            samples,
            unjoined: self.unjoined,
            stages: STAGES
                .iter()
                .zip(&self.stages)
                .zip(&self.sums_ns)
                .map(|((stage, histogram), sum)| StageLatency {
                    stage: (*stage).to_owned(),
                    mean_ms: *sum as f64 / samples as f64 / 1e6,
                    p50_ms: ms(histogram.value_at_quantile(0.5)),
                    p99_ms: ms(histogram.value_at_quantile(0.99)),
                })
                .collect(),
        })
    }
}

/// Where visible latency goes, stage by stage, over a sample of pings (docs/measurement.md).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyStages {
    /// Pings sampled (one per batch an engine read).
    pub samples: u64,
    /// Samples left out: their append was no longer in the producer's timeline.
    #[serde(default)]
    pub unjoined: u64,
    /// Per stage, in the order a ping passes them: the means add up to the samples' mean
    /// visible latency.
    pub stages: Vec<StageLatency>,
}

/// One stage of [`LatencyStages`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StageLatency {
    /// Its name (one of [`STAGES`]).
    pub stage: String,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// A worker's recorder.
#[derive(Debug)]
pub struct LatencyRecorder {
    mapping: TimeMapping,
    /// The latency breakdown by stage.
    pub stages: StageRecorder,
    /// Visible latency of Q1 updates, µs.
    pub visible_us: Histogram<u64>,
    /// Processing latency of window results: last contribution's due time to served, µs.
    pub processing_us: Histogram<u64>,
    /// Event-time latency of window results: the window's end on the run's clock to served.
    pub event_time: SignedHistogram,
    /// Window results served again after a late event changed them.
    pub revised: u64,
    /// Where visible latencies also go while the run runs (`lk run --metrics`).
    live: Option<std::sync::Arc<crate::live::LiveHistogram>>,
    /// Where visible latencies also go for the latency-over-time series.
    interval: Option<std::sync::Arc<IntervalLatency>>,
}

impl LatencyRecorder {
    /// A recorder for a run with `mapping`, joining its stage samples with the producer's
    /// `timeline`.
    pub fn new(mapping: TimeMapping, timeline: Option<std::sync::Arc<SendTimeline>>) -> Self {
        Self {
            mapping,
            stages: StageRecorder::new(timeline),
            visible_us: new_histogram(),
            processing_us: new_histogram(),
            event_time: SignedHistogram::default(),
            revised: 0,
            live: None,
            interval: None,
        }
    }

    /// The same, adding each visible latency to `interval` too.
    pub fn with_interval(mut self, interval: std::sync::Arc<IntervalLatency>) -> Self {
        self.interval = Some(interval);
        self
    }

    /// The same, adding each visible latency to `live` too, if there is one.
    pub fn with_live(mut self, live: Option<std::sync::Arc<crate::live::LiveHistogram>>) -> Self {
        self.live = live;
        self
    }
}

impl WorkerObserver for LatencyRecorder {
    fn served(&mut self, outcome: &BatchOutcome, visible_ns: u64) {
        if visible_ns < self.mapping.warmup_end_ns {
            return;
        }
        // One lock a batch, and none for a batch without location updates.
        let mut interval = self
            .interval
            .as_ref()
            .filter(|_| !outcome.location_due_ns.is_empty())
            .map(|interval| interval.histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for &due_ns in &outcome.location_due_ns {
            let latency_us = (visible_ns.saturating_sub(self.mapping.start_ns + due_ns) / 1000).max(1);
            self.visible_us.saturating_record(latency_us);
            if let Some(histogram) = interval.as_mut() {
                histogram.saturating_record(latency_us);
            }
        }
        drop(interval);
        if let Some(live) = &self.live
            && !outcome.location_due_ns.is_empty()
        {
            let mut buckets = [0u64; crate::live::LATENCY_BUCKETS_S.len()];
            let mut sum_us = 0;
            for &due_ns in &outcome.location_due_ns {
                let latency_us = (visible_ns.saturating_sub(self.mapping.start_ns + due_ns) / 1000).max(1);
                buckets[crate::live::LiveHistogram::bucket_of(latency_us)] += 1;
                sum_us += latency_us;
            }
            live.add(&buckets, sum_us);
        }
        for sample in &outcome.samples {
            self.stages.record(sample, self.mapping.start_ns + sample.due_ns, visible_ns);
        }
        for window in &outcome.fired_windows {
            let processing_us = visible_ns.saturating_sub(self.mapping.start_ns + window.last_due_ns) / 1000;
            self.processing_us.saturating_record(processing_us);
            self.event_time.record(visible_ns as i64 - self.mapping.clock_ns_of(window.end_us));
        }
        self.revised += outcome.revised;
    }
}

/// One engine's visible latencies since the run's sampler last took them: its workers add a
/// batch at a time, and the sampler takes them once a second, for the latency-over-time series
/// (where drift over a long run shows).
#[derive(Debug)]
pub struct IntervalLatency {
    histogram: std::sync::Mutex<Histogram<u64>>,
}

impl Default for IntervalLatency {
    fn default() -> Self {
        Self { histogram: std::sync::Mutex::new(new_histogram()) }
    }
}

impl IntervalLatency {
    /// The latencies added since the last take, as a sample at `at_seconds` (None if there were
    /// none), and a fresh start.
    pub fn take(&self, at_seconds: f64) -> Option<LatencySample> {
        let mut histogram = self.histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let sample = LatencySample {
            at_seconds,
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        };
        histogram.reset();
        Some(sample)
    }
}

/// Visible latency over one interval of a run (a second, as the run samples it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySample {
    /// Seconds since the run's start, at the interval's end.
    pub at_seconds: f64,
    /// Latencies in the interval.
    pub count: u64,
    /// Their median, ms.
    pub p50_ms: f64,
    /// Their 99th percentile, ms.
    pub p99_ms: f64,
    /// The largest, ms.
    pub max_ms: f64,
}

/// Resident memory of this process now, from `/proc/self/status` (0 where unavailable).
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A `kB` figure of `/proc/self/status`, in bytes (0 where unavailable).
fn status_bytes(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
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
    status_bytes("VmHWM:")
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
    use lk_engines::runtime::StageSample;

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
    fn the_send_timeline_finds_an_offsets_append_and_forgets_old_ones() {
        let timeline = SendTimeline::new(2);
        timeline.record(0, 0, 10, 1_000, 2_000);
        timeline.record(0, 10, 25, 3_000, 4_000);
        timeline.record(1, 0, 5, 5_000, 6_000);
        assert_eq!(timeline.find(0, 0), Some((1_000, 2_000)));
        assert_eq!(timeline.find(0, 9), Some((1_000, 2_000)));
        assert_eq!(timeline.find(0, 10), Some((3_000, 4_000)));
        assert_eq!(timeline.find(0, 25), None, "past the last append");
        assert_eq!(timeline.find(1, 4), Some((5_000, 6_000)));
        assert_eq!(timeline.find(2, 0), None, "no such partition");
        // An append sent more than the horizon after the first drops the first.
        timeline.record(0, 25, 30, 1_000 + TIMELINE_HORIZON_NS + 1, 0);
        assert_eq!(timeline.find(0, 5), None);
        assert_eq!(timeline.find(0, 12), Some((3_000, 4_000)));
    }

    fn sample(read_ms: u64, processed_ms: u64, handed_ms: u64, committed_ms: u64) -> StageSample {
        StageSample {
            partition: 0,
            offset: 3,
            due_ns: 0,
            read_ns: read_ms * 1_000_000,
            processed_ns: processed_ms * 1_000_000,
            handed_ns: handed_ms * 1_000_000,
            committed_ns: committed_ms * 1_000_000,
        }
    }

    fn stage_means(recorder: &StageRecorder) -> Vec<f64> {
        recorder.summary().unwrap().stages.iter().map(|stage| stage.mean_ms).collect()
    }

    #[test]
    fn stages_split_a_pings_visible_latency_and_add_up_to_it() {
        let timeline = std::sync::Arc::new(SendTimeline::new(1));
        // Sent 2 ms after its due time, acknowledged 5 ms later; read at 10, processed at 11,
        // handed to a transaction at 60, committed at 75, served at 80 (all ms).
        timeline.record(0, 0, 8, 2_000_000, 7_000_000);
        let mut recorder = StageRecorder::new(Some(std::sync::Arc::clone(&timeline)));
        recorder.record(&sample(10, 11, 60, 75), 0, 80_000_000);
        assert_eq!(stage_means(&recorder), vec![2.0, 5.0, 3.0, 1.0, 49.0, 15.0, 5.0]);
        // A direct sink has no commit: processed to served is all serving.
        let mut direct = StageRecorder::new(Some(std::sync::Arc::clone(&timeline)));
        direct.record(&sample(10, 11, 0, 0), 0, 12_000_000);
        assert_eq!(stage_means(&direct), vec![2.0, 5.0, 3.0, 1.0, 0.0, 0.0, 1.0]);
        // An acknowledgement seen after the read counts as the read's time, and a commit
        // checked after the materialiser served it ends at the serving: the sum is the latency.
        let mut late = StageRecorder::new(Some(std::sync::Arc::clone(&timeline)));
        late.record(&sample(4, 5, 30, 90), 0, 40_000_000);
        let means = stage_means(&late);
        assert_eq!(means, vec![2.0, 2.0, 0.0, 1.0, 25.0, 10.0, 0.0]);
        assert_eq!(means.iter().sum::<f64>(), 40.0);
        // A ping whose append the timeline does not hold is counted, not guessed at.
        late.record(&StageSample { offset: 99, ..sample(4, 5, 30, 90) }, 0, 40_000_000);
        let summary = late.summary().unwrap();
        assert_eq!((summary.samples, summary.unjoined), (1, 1));
        // Workers' recorders add up.
        recorder.add(&direct);
        let summary = recorder.summary().unwrap();
        assert_eq!(summary.samples, 2);
        assert_eq!(summary.stages[4].mean_ms, 24.5);
    }

    #[test]
    fn a_served_outcome_feeds_its_samples_to_the_breakdown() {
        let mapping = TimeMapping {
            start_ns: 1_000_000_000,
            start_event_time_us: 0,
            time_compression: 1.0,
            watermark_delay_us: 0,
            warmup_end_ns: 0,
        };
        let timeline = std::sync::Arc::new(SendTimeline::new(1));
        timeline.record(0, 0, 8, 1_001_000_000, 1_002_000_000);
        let mut recorder = LatencyRecorder::new(mapping, Some(timeline));
        let mut outcome = BatchOutcome::default();
        outcome.location_due_ns.push(0);
        outcome.samples.push(StageSample {
            partition: 0,
            offset: 3,
            due_ns: 0,
            read_ns: 1_003_000_000,
            processed_ns: 1_004_000_000,
            ..StageSample::default()
        });
        recorder.served(&outcome, 1_010_000_000);
        assert_eq!(recorder.visible_us.len(), 1);
        assert_eq!(stage_means(&recorder.stages), vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 6.0]);
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
        let mut recorder = LatencyRecorder::new(mapping, None);
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
