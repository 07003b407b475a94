//! Live metrics of a run, and the Prometheus endpoint that serves them (`lk run --metrics
//! ADDR`).
//!
//! The run keeps its figures where they already are (the engines' `JobControl` atomics, their
//! supervisors, the log's end offsets) and adds a few of its own here (the generator's counts,
//! the schedule lag, the phase, each engine's visible latency in fixed buckets). A scrape reads
//! them all at once and encodes them with the Prometheus project's client (`prometheus-client`,
//! OpenMetrics text); nothing is pushed or sampled on a timer, so an idle endpoint costs nothing
//! and a scrape costs the run one atomic load per figure. Metric names are documented in
//! docs/metrics.md.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lk_engines::log::Log;
use lk_engines::runtime::job::JobControl;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::faults::Supervisor;
use crate::run::{Phase, RunError};

/// Upper bounds of the latency buckets, seconds: from a millisecond (lk's engines on the
/// embedded log) to ten seconds (a micro-batch engine behind).
pub const LATENCY_BUCKETS_S: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, f64::INFINITY];

/// A latency histogram in fixed buckets that workers add to from any thread.
#[derive(Debug, Default)]
pub struct LiveHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    sum_us: AtomicU64,
}

impl LiveHistogram {
    /// The bucket a latency falls in.
    #[inline]
    pub fn bucket_of(latency_us: u64) -> usize {
        /// The finite bounds, µs: integer comparisons on the workers' path.
        const BOUNDS_US: [u64; LATENCY_BUCKETS_S.len() - 1] = [
            1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
            10_000_000,
        ];
        BOUNDS_US.iter().position(|&bound| latency_us <= bound).unwrap_or(BOUNDS_US.len())
    }

    /// Adds counts per bucket (as [`Self::bucket_of`] numbers them) and their sum, µs: one
    /// batch's latencies at once, so a worker touches the shared counters once a batch.
    pub fn add(&self, counts: &[u64; LATENCY_BUCKETS_S.len()], sum_us: u64) {
        for (bucket, &count) in self.buckets.iter().zip(counts) {
            if count > 0 {
                bucket.fetch_add(count, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(sum_us, Ordering::Relaxed);
    }

    /// Samples so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum()
    }
}

/// The log the engines read: its topic and partition count.
struct LiveLog {
    log: Arc<dyn Log>,
    topic: String,
    partitions: u32,
}

/// One engine as the endpoint sees it.
struct LiveEngine {
    name: String,
    control: Arc<JobControl>,
    supervisor: Supervisor,
    /// Whether its consumer positions are lk's to read (not an external engine's).
    positions: bool,
}

/// What a run shows while it runs.
#[derive(Default)]
pub struct Live {
    /// Events the generator made.
    pub generated: AtomicU64,
    /// Records appended to the log.
    pub appended: AtomicU64,
    /// How late the latest slice of events went out against its schedule, ns.
    pub schedule_lag_ns: AtomicU64,
    phase: AtomicUsize,
    log: Mutex<Option<LiveLog>>,
    engines: Mutex<Vec<LiveEngine>>,
    latency: Mutex<Vec<(String, Arc<LiveHistogram>)>>,
    /// Each engine's visible latencies since the sampler last took them, by engine name.
    interval_latency: Mutex<Vec<(String, Arc<crate::metrics::IntervalLatency>)>>,
    /// Each engine's served Q3 totals per window, as the run's completeness sampler last read
    /// them (once a second): a dashboard shows them without reading the views again.
    demand: Mutex<Vec<(String, std::collections::BTreeMap<i64, u64>)>>,
    /// Crashes asked for while the run runs (`lk demo`'s keys), by engine name, for the crash
    /// injector to fire as it fires the scenario's.
    crash_requests: Mutex<Vec<String>>,
    /// Whether the input was asked to end now.
    end_input: std::sync::atomic::AtomicBool,
    /// Late bursts asked for while the run runs (`lk demo`'s key), for the generator's loop to
    /// start: (how long, share of phones).
    late_burst_requests: Mutex<Vec<(std::time::Duration, f64)>>,
    /// Overloads asked for while the run runs: (how long, rate factor).
    overload_requests: Mutex<Vec<(std::time::Duration, f64)>>,
    /// Whether a dashboard shows Q3's truth, so the sampler reads it from the log.
    truth_wanted: std::sync::atomic::AtomicBool,
    /// Q3's requests delivered so far per window, as the sampler last read them.
    truth: Mutex<std::collections::BTreeMap<i64, u64>>,
    /// Reprocessing races asked for and not yet started.
    race_requests: AtomicU64,
    /// Each race's outcome per engine, by race number (from 1), as they finish.
    races: Mutex<Vec<RaceResult>>,
    /// Samples of the views the sampler has started, and finished.
    samples_started: AtomicU64,
    samples_done: AtomicU64,
}

/// One engine's reprocessing in a race: how many records it went through, and how long it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RaceOutcome {
    /// Records (Kappa: read from the log; Lambda: rows of the master dataset).
    pub records: u64,
    /// Wall seconds.
    pub seconds: f64,
}

/// An engine's outcome in a race: (race number from 1, engine name, outcome or what failed).
pub type RaceResult = (u64, String, Result<RaceOutcome, String>);

/// One reprocessing, started afresh at each call (see `Running::reprocess_racer`).
pub type Racer = Arc<dyn Fn() -> Result<RaceOutcome, String> + Send + Sync>;

/// Q3's truth while the run runs: every ride request delivered to the log so far (the first
/// copy of each valid one, whatever its lateness), counted per demand window, read from the log
/// a little more at each call. What an engine serves for a settled window is at most this (more
/// would be a request counted twice); less is what its lateness policy dropped, or lost.
pub struct LiveTruth {
    queries: lk_engines::runtime::queries::QueryConfig,
    positions: Vec<u64>,
    /// A bit per event id seen (ids are dense).
    seen: Vec<u64>,
    demand: std::collections::BTreeMap<i64, u64>,
    batch: lk_engines::log::RecordBatch,
}

impl LiveTruth {
    /// Nothing read yet, for a run whose windows are `queries`'.
    pub fn new(queries: lk_engines::runtime::queries::QueryConfig) -> Self {
        Self {
            queries,
            positions: Vec::new(),
            seen: Vec::new(),
            demand: std::collections::BTreeMap::new(),
            batch: lk_engines::log::RecordBatch::new(),
        }
    }

    /// Reads what the log's `partitions` of `topic` hold beyond what was read before.
    pub fn advance(&mut self, log: &dyn Log, topic: &str, partitions: u32) -> Result<(), lk_engines::log::LogError> {
        self.positions.resize(partitions as usize, 0);
        for partition in 0..partitions {
            let end = log.end_offset(topic, partition)?;
            let mut offset = self.positions[partition as usize].max(log.start_offset(topic, partition)?);
            while offset < end {
                self.batch.clear();
                let next = log.read(topic, partition, offset, 16_384, &mut self.batch)?;
                if next == offset {
                    break;
                }
                offset = next;
                for (_, value) in self.batch.iter() {
                    let Ok(event) = lk_simulator::codec::decode_record(value) else { continue };
                    if !matches!(event.payload, lk_simulator::event::Payload::RideRequested { .. }) {
                        continue;
                    }
                    let (word, bit) = ((event.event_id / 64) as usize, event.event_id % 64);
                    if word >= self.seen.len() {
                        self.seen.resize((word + 1).next_power_of_two(), 0);
                    }
                    if self.seen[word] & (1 << bit) != 0 {
                        continue;
                    }
                    self.seen[word] |= 1 << bit;
                    for start in self.queries.demand_window_starts(event.event_time_us) {
                        *self.demand.entry(start).or_default() += 1;
                    }
                }
            }
            self.positions[partition as usize] = offset;
        }
        Ok(())
    }

    /// Requests delivered so far per window start, µs.
    pub fn demand(&self) -> &std::collections::BTreeMap<i64, u64> {
        &self.demand
    }
}

/// One engine at one moment, for a dashboard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineSnapshot {
    /// Its name.
    pub name: String,
    /// Valid events it processed, replays included.
    pub processed: u64,
    /// Records in the log it has not read yet (None for an engine whose positions lk does not own).
    pub lag: Option<u64>,
    /// Restarts after crashes.
    pub restarts: u64,
    /// Checkpoints (Kappa) or epoch seals (Lambda's speed layer).
    pub checkpoints: u64,
    /// Lambda's batch runs completed.
    pub batch_runs: u64,
    /// Malformed records it dead-lettered.
    pub dead_letters: u64,
    /// Visible latency so far, per bucket of [`LATENCY_BUCKETS_S`].
    pub latency: [u64; LATENCY_BUCKETS_S.len()],
    /// Its served Q3 totals per window start, µs, as last sampled (when asked for).
    pub demand: std::collections::BTreeMap<i64, u64>,
}

/// A run at one moment, for a dashboard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Its phase (`starting`, `generating`, `draining`, `verifying`, `reporting`, `done`).
    pub phase: &'static str,
    /// Events the generator made.
    pub generated: u64,
    /// Records appended to the log.
    pub appended: u64,
    /// The generator's schedule lag, ns.
    pub schedule_lag_ns: u64,
    /// Every engine, in the order they started.
    pub engines: Vec<EngineSnapshot>,
    /// Q3's requests delivered so far per window start, µs (when asked for, and wanted; see
    /// [`LiveTruth`]).
    pub truth: std::collections::BTreeMap<i64, u64>,
    /// Every engine's outcome in every race so far, as they finished: (race, engine, outcome).
    pub races: Vec<RaceResult>,
    /// Samples of the views started, and published, so far: a dashboard that sees a change in
    /// the counters waits for a sample started after it.
    pub samples_started: u64,
    /// See [`Self::samples_started`].
    pub samples_done: u64,
}

/// The latency under which `quantile` of `buckets`' samples fall: the upper bound of the bucket
/// holding it, s (None without samples).
pub fn bucket_quantile(buckets: &[u64; LATENCY_BUCKETS_S.len()], quantile: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (bound, count) in LATENCY_BUCKETS_S.iter().zip(buckets) {
        seen += count;
        if seen >= rank {
            return Some(*bound);
        }
    }
    Some(f64::INFINITY)
}

impl std::fmt::Debug for Live {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Live").field("generated", &self.generated).finish_non_exhaustive()
    }
}

/// The phases a scrape can see, in order; index 0 is before the input starts.
const PHASES: [&str; 6] = ["starting", "generating", "draining", "verifying", "reporting", "done"];

impl Live {
    /// The run entered `phase`.
    pub fn set_phase(&self, phase: Phase) {
        let index = match phase {
            Phase::Generating => 1,
            Phase::Draining => 2,
            Phase::Verifying => 3,
            Phase::Reporting => 4,
        };
        self.phase.store(index, Ordering::Release);
    }

    /// results.json is written: every figure is final.
    pub fn set_done(&self) {
        self.phase.store(PHASES.len() - 1, Ordering::Release);
    }

    /// The log the engines read, for consumer lag.
    pub fn attach_log(&self, log: Arc<dyn Log>, topic: &str, partitions: u32) {
        *self.log.lock().expect("not poisoned") = Some(LiveLog { log, topic: topic.to_owned(), partitions });
    }

    /// Engine `name`'s visible latencies since the run's sampler last took them (the
    /// latency-over-time series), made on first use.
    pub fn interval_latency_of(&self, name: &str) -> Arc<crate::metrics::IntervalLatency> {
        let mut intervals = self.interval_latency.lock().expect("not poisoned");
        if let Some((_, interval)) = intervals.iter().find(|(engine, _)| engine == name) {
            return Arc::clone(interval);
        }
        let interval = Arc::new(crate::metrics::IntervalLatency::default());
        intervals.push((name.to_owned(), Arc::clone(&interval)));
        interval
    }

    /// The visible-latency histogram of engine `name`, made on first use.
    pub fn latency_of(&self, name: &str) -> Arc<LiveHistogram> {
        let mut latency = self.latency.lock().expect("not poisoned");
        if let Some((_, histogram)) = latency.iter().find(|(engine, _)| engine == name) {
            return Arc::clone(histogram);
        }
        let histogram = Arc::new(LiveHistogram::default());
        latency.push((name.to_owned(), Arc::clone(&histogram)));
        histogram
    }

    /// An engine's served Q3 totals as the completeness sampler read them, for a dashboard's
    /// "what users see".
    pub fn set_demand(&self, name: &str, demand: &std::collections::BTreeMap<i64, u64>) {
        let mut samples = self.demand.lock().expect("not poisoned");
        match samples.iter_mut().find(|(engine, _)| engine == name) {
            Some((_, sample)) => sample.clone_from(demand),
            None => samples.push((name.to_owned(), demand.clone())),
        }
    }

    /// Asks the crash injector to crash engine `name` now (it fires once the engine is running
    /// and has recovered from any crash before).
    pub fn request_crash(&self, name: &str) {
        self.crash_requests.lock().expect("not poisoned").push(name.to_owned());
    }

    /// The crashes asked for since the last call.
    pub fn take_crash_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.crash_requests.lock().expect("not poisoned"))
    }

    /// Asks the generator to start a late burst: a `share` of the phones silent for `duration`,
    /// from half a second on (what the generator has made by then is left as it is).
    pub fn request_late_burst(&self, duration: std::time::Duration, share: f64) {
        self.late_burst_requests.lock().expect("not poisoned").push((duration, share));
    }

    /// The late bursts asked for since the last call.
    pub fn take_late_burst_requests(&self) -> Vec<(std::time::Duration, f64)> {
        std::mem::take(&mut *self.late_burst_requests.lock().expect("not poisoned"))
    }

    /// Asks for a reprocessing race: each engine reprocesses everything so far its own way,
    /// beside the live run.
    pub fn request_race(&self) {
        self.race_requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a race was asked for since the last call (several asks are one race).
    pub fn take_race_request(&self) -> bool {
        self.race_requests.swap(0, Ordering::AcqRel) > 0
    }

    /// Engine `name`'s outcome in race `race`.
    pub fn race_finished(&self, race: u64, name: &str, outcome: Result<RaceOutcome, String>) {
        self.races.lock().expect("not poisoned").push((race, name.to_owned(), outcome));
    }

    /// The sampler starts a sample of the views.
    pub fn sample_started(&self) {
        self.samples_started.fetch_add(1, Ordering::AcqRel);
    }

    /// The sampler has published a sample of the views.
    pub fn sample_done(&self) {
        self.samples_done.fetch_add(1, Ordering::AcqRel);
    }

    /// Asks the generator to multiply the input rate by `factor` for `duration`, from half a
    /// second on.
    pub fn request_overload(&self, duration: std::time::Duration, factor: f64) {
        self.overload_requests.lock().expect("not poisoned").push((duration, factor));
    }

    /// The overloads asked for since the last call.
    pub fn take_overload_requests(&self) -> Vec<(std::time::Duration, f64)> {
        std::mem::take(&mut *self.overload_requests.lock().expect("not poisoned"))
    }

    /// A dashboard shows Q3's truth: the run's sampler reads it from the log once a second.
    pub fn want_truth(&self) {
        self.truth_wanted.store(true, Ordering::Release);
    }

    /// Whether Q3's truth is wanted.
    pub fn truth_wanted(&self) -> bool {
        self.truth_wanted.load(Ordering::Acquire)
    }

    /// Q3's truth as the sampler last read it.
    pub fn set_truth(&self, truth: &std::collections::BTreeMap<i64, u64>) {
        self.truth.lock().expect("not poisoned").clone_from(truth);
    }

    /// Asks the generator to end the input now: the run drains, judges and reports as usual.
    pub fn end_input(&self) {
        self.end_input.store(true, Ordering::Release);
    }

    /// Whether the input was asked to end.
    pub fn input_ended(&self) -> bool {
        self.end_input.load(Ordering::Acquire)
    }

    /// The run now; with `demand`, each engine's served Q3 totals too, as last sampled.
    pub fn snapshot(&self, demand: bool) -> Snapshot {
        let engines = self.engines.lock().expect("not poisoned");
        let log = self.log.lock().expect("not poisoned");
        let ends: Option<Vec<u64>> = log.as_ref().map(|LiveLog { log, topic, partitions }| {
            (0..*partitions).map(|partition| log.end_offset(topic, partition).unwrap_or(0)).collect()
        });
        drop(log);
        let latency = self.latency.lock().expect("not poisoned");
        let samplers = self.demand.lock().expect("not poisoned");
        let snapshot = engines
            .iter()
            .map(|engine| EngineSnapshot {
                name: engine.name.clone(),
                processed: engine.control.events_processed.load(Ordering::Relaxed),
                lag: ends.as_ref().filter(|_| engine.positions).map(|ends| {
                    ends.iter()
                        .enumerate()
                        .map(|(partition, end)| {
                            end.saturating_sub(engine.control.positions[partition].load(Ordering::Relaxed))
                        })
                        .sum()
                }),
                restarts: engine.supervisor.restarts().len() as u64,
                checkpoints: engine.control.checkpoints_written.load(Ordering::Relaxed),
                batch_runs: engine.control.batch_runs.load(Ordering::Relaxed),
                dead_letters: engine.control.dead_letters.as_ref().map_or(0, |letters| letters.distinct()),
                latency: latency
                    .iter()
                    .find(|(name, _)| *name == engine.name)
                    .map(|(_, histogram)| {
                        std::array::from_fn(|bucket| histogram.buckets[bucket].load(Ordering::Relaxed))
                    })
                    .unwrap_or_default(),
                demand: if demand {
                    samplers
                        .iter()
                        .find(|(name, _)| *name == engine.name)
                        .map(|(_, sample)| sample.clone())
                        .unwrap_or_default()
                } else {
                    std::collections::BTreeMap::new()
                },
            })
            .collect();
        Snapshot {
            phase: PHASES[self.phase.load(Ordering::Acquire)],
            generated: self.generated.load(Ordering::Relaxed),
            appended: self.appended.load(Ordering::Relaxed),
            schedule_lag_ns: self.schedule_lag_ns.load(Ordering::Relaxed),
            engines: snapshot,
            truth: if demand { self.truth.lock().expect("not poisoned").clone() } else { Default::default() },
            races: self.races.lock().expect("not poisoned").clone(),
            samples_started: self.samples_started.load(Ordering::Acquire),
            samples_done: self.samples_done.load(Ordering::Acquire),
        }
    }

    /// A started engine.
    pub fn add_engine(&self, name: &str, control: Arc<JobControl>, supervisor: Supervisor, external: bool) {
        // A repeated run (`--repeat`) starts its engines again under the same names.
        let mut engines = self.engines.lock().expect("not poisoned");
        engines.retain(|engine| engine.name != name);
        engines.push(LiveEngine { name: name.to_owned(), control, supervisor, positions: !external });
    }

    /// Everything, in the Prometheus (OpenMetrics) text format.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(Arc::clone(self))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
        text
    }
}

/// A scrape of a [`Live`].
#[derive(Debug)]
struct Scrape(Arc<Live>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = &self.0;
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
        };
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64| {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        counter(
            &mut encoder,
            "lk_generator_events",
            "Events the generator made",
            live.generated.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "lk_log_records_appended",
            "Records appended to the log",
            live.appended.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "lk_generator_schedule_lag_seconds",
            "How late the latest slice of events went out against its open-loop schedule",
            live.schedule_lag_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )?;
        {
            let current = live.phase.load(Ordering::Acquire);
            let mut family = encoder.encode_descriptor(
                "lk_run_phase",
                "The run's phase: 1 for the current one (starting, generating, draining, verifying, reporting, done)",
                None,
                MetricType::Gauge,
            )?;
            for (index, name) in PHASES.iter().enumerate() {
                ConstGauge::new(i64::from(index == current)).encode(family.encode_family(&[("phase", *name)])?)?;
            }
        }
        let engines = live.engines.lock().expect("not poisoned");
        type Read = fn(&LiveEngine) -> u64;
        let counters: [(&str, &str, Read); 6] = [
            ("lk_engine_events_processed", "Valid events an engine processed, replays included", |engine| {
                engine.control.events_processed.load(Ordering::Relaxed)
            }),
            ("lk_engine_records_replayed", "Records an engine read again after a restart", |engine| {
                engine.control.replayed.load(Ordering::Relaxed)
            }),
            ("lk_engine_restarts", "Times an engine's job was restarted after a crash", |engine| {
                engine.supervisor.restarts().len() as u64
            }),
            ("lk_engine_checkpoints", "Checkpoints (Kappa) or epoch seals (Lambda's speed layer) written", |engine| {
                engine.control.checkpoints_written.load(Ordering::Relaxed)
            }),
            ("lk_engine_dead_letters", "Malformed records an engine sent to its dead-letter file", |engine| {
                engine.control.dead_letters.as_ref().map_or(0, |letters| letters.distinct())
            }),
            ("lk_lambda_batch_runs", "Lambda's batch runs completed", |engine| {
                engine.control.batch_runs.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for engine in engines.iter() {
                ConstCounter::new(read(engine)).encode(family.encode_family(&[("engine", engine.name.as_str())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "lk_lambda_batch_run_seconds",
            "Wall time of Lambda's batch runs, in all",
            None,
            MetricType::Counter,
        )?;
        for engine in engines.iter() {
            let seconds = engine.control.batch_run_us.load(Ordering::Relaxed) as f64 / 1e6;
            ConstCounter::new(seconds).encode(family.encode_family(&[("engine", engine.name.as_str())])?)?;
        }
        let log = live.log.lock().expect("not poisoned");
        if let Some(LiveLog { log, topic, partitions }) = &*log {
            let ends: Vec<u64> =
                (0..*partitions).map(|partition| log.end_offset(topic, partition).unwrap_or(0)).collect();
            let mut family = encoder.encode_descriptor(
                "lk_engine_consumer_lag_records",
                "Records in the log an engine has not read yet, per partition",
                None,
                MetricType::Gauge,
            )?;
            for engine in engines.iter().filter(|engine| engine.positions) {
                for (partition, end) in ends.iter().enumerate() {
                    let position = engine.control.positions[partition].load(Ordering::Relaxed);
                    let partition = partition.to_string();
                    let labels = [("engine", engine.name.as_str()), ("partition", partition.as_str())];
                    ConstGauge::new(end.saturating_sub(position) as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        drop(log);
        drop(engines);
        let latency = live.latency.lock().expect("not poisoned");
        let mut family = encoder.encode_descriptor(
            "lk_engine_visible_latency_seconds",
            "From an event's scheduled send to its driver location served (Q1), after the warm-up",
            None,
            MetricType::Histogram,
        )?;
        for (name, histogram) in latency.iter() {
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_S
                .iter()
                .zip(&histogram.buckets)
                .map(|(&bound, count)| (bound, count.load(Ordering::Relaxed)))
                .collect();
            let count = buckets.iter().map(|(_, count)| count).sum();
            let sum = histogram.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            family
                .encode_family(&[("engine", name.as_str())])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// The endpoint, serving until dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    address: SocketAddr,
}

impl MetricsServer {
    /// Binds `address` and serves `live` at `/metrics` on a thread of its own. Fails at once,
    /// before a run starts, when the address cannot be bound (a port in use).
    pub fn start(address: SocketAddr, live: Arc<Live>) -> Result<Self, RunError> {
        let server = tiny_http::Server::http(address).map_err(|cause| {
            RunError::Invalid(format!(
                "--metrics {address}: cannot listen there ({cause}); pick a free port, e.g. --metrics 127.0.0.1:0 for \
                 any"
            ))
        })?;
        let address = server.server_addr().to_ip().unwrap_or(address);
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("lk-metrics".to_owned())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = match (request.method(), request.url()) {
                        (tiny_http::Method::Get, "/metrics") => {
                            let content_type = tiny_http::Header::from_bytes(
                                "Content-Type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .expect("a valid header");
                            tiny_http::Response::from_string(live.render()).with_header(content_type)
                        }
                        _ => tiny_http::Response::from_string("lk serves its metrics at /metrics\n")
                            .with_status_code(404),
                    };
                    // A scraper that hung up is not the run's problem.
                    let _ = request.respond(response);
                }
            })
            .map_err(|cause| RunError::Invalid(format!("cannot start the metrics thread: {cause}")))?;
        Ok(Self { server, thread: Some(thread), address })
    }

    /// Where it listens (the port chosen, for `:0`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_their_buckets_and_render_as_a_histogram() {
        assert_eq!(LiveHistogram::bucket_of(500), 0);
        assert_eq!(LiveHistogram::bucket_of(1_000), 0);
        assert_eq!(LiveHistogram::bucket_of(1_001), 1);
        assert_eq!(LiveHistogram::bucket_of(60_000_000), LATENCY_BUCKETS_S.len() - 1);
        let live = Arc::new(Live::default());
        let histogram = live.latency_of("kappa");
        let mut counts = [0; LATENCY_BUCKETS_S.len()];
        counts[0] = 3;
        counts[9] = 1;
        histogram.add(&counts, 1_003_000);
        live.generated.store(42, Ordering::Relaxed);
        let text = live.render();
        assert!(text.contains("lk_generator_events_total 42"), "{text}");
        assert!(text.contains("lk_engine_visible_latency_seconds_bucket{le=\"0.001\",engine=\"kappa\"} 3"), "{text}");
        assert!(text.contains("lk_engine_visible_latency_seconds_bucket{le=\"1.0\",engine=\"kappa\"} 4"), "{text}");
        assert!(text.contains("lk_engine_visible_latency_seconds_count{engine=\"kappa\"} 4"), "{text}");
        assert!(text.contains("lk_run_phase{phase=\"starting\"} 1"), "{text}");
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = MetricsServer::start(address, Arc::new(Live::default())).err().expect("the port is taken");
        assert!(error.to_string().contains("cannot listen there"), "{error}");
    }
}
