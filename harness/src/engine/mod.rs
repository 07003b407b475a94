//! The seam between a run and an engine. A run prepares the log and the stream, starts each
//! engine it was asked for through [`Engine::start`], drives the input while it watches them
//! through [`Running`], and once the input has ended hands each finished engine a [`Judge`]:
//! the oracle, the measurements taken from outside, and the helpers that turn them into
//! [`EngineResults`]. Nothing here decides an engine's answer; it only feeds, times and compares.
//!
//! **Adding an engine** is a module implementing [`Engine`] and one line in
//! [`EngineKind::engine`] (plus its name in [`EngineKind`]).

pub mod external;
pub mod kappa;
pub mod lambda;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::scenario::{Guarantee, Scenario, SinkChoice};
use lk_engines::log::Log;
use lk_engines::runtime::job::JobControl;
use lk_engines::runtime::queries::{Query, QueryConfig, ViewSet};
use lk_engines::sink::transactional::ViewSink;
use lk_engines::verify::oracle::{Oracle, Truth};
use lk_simulator::time::Clock;

use crate::faults::{RecoveryTracker, Restart, Supervisor};
use crate::metrics::{
    LatencyRecorder, LatencySummary, SignedHistogram, SignedLatencySummary, TimeMapping, new_histogram,
};
use crate::results::{Correctness, CrashResult, EngineResults, FaultResults, WindowLatency};
use crate::run::{RunError, RunOptions, TOPIC, correctness_of, output_error};

/// An engine lk can run, by identity: never a string that a typo could send elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EngineKind {
    /// lk's Kappa: one stream processor, watermarks, checkpoints, a versioned serving store.
    Kappa,
    /// lk's Lambda: master dataset, batch layer, speed layer, serving layer.
    Lambda,
    /// The seed's Kappa job on Spark Structured Streaming, through the engine protocol.
    SparkKappa,
    /// Kappa on Kafka Streams (exactly_once_v2), through the engine protocol.
    Kstreams,
    /// The seed's Lambda on Spark and Delta Lake, through the engine protocol.
    SparkLambda,
}

impl EngineKind {
    /// Every engine, in the order results list them.
    pub const ALL: [EngineKind; 5] =
        [EngineKind::Kappa, EngineKind::Lambda, EngineKind::SparkKappa, EngineKind::Kstreams, EngineKind::SparkLambda];

    /// lk's own engines (`both` on the command line).
    pub const OWN: [EngineKind; 2] = [EngineKind::Kappa, EngineKind::Lambda];

    /// Its name in results, reports, folders and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Kappa => "kappa",
            EngineKind::Lambda => "lambda",
            EngineKind::SparkKappa => "spark-kappa",
            EngineKind::Kstreams => "kstreams",
            EngineKind::SparkLambda => "spark-lambda",
        }
    }

    /// Whether it is not lk's own: a process lk starts and talks to through Kafka.
    pub fn is_external(self) -> bool {
        external::is_external(self)
    }

    /// The engine named `text` (`kappa`, `lambda`, `spark-kappa`, `kstreams`, `spark-lambda`).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|kind| kind.name() == text.trim()).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
            format!("no engine named {text:?}; the engines are {}", names.join(", "))
        })
    }

    /// The engine itself: the one place where engines are listed.
    pub fn engine(self) -> Box<dyn Engine> {
        match self {
            EngineKind::Kappa => Box::new(kappa::Kappa),
            EngineKind::Lambda => Box::new(lambda::Lambda),
            EngineKind::SparkKappa | EngineKind::Kstreams | EngineKind::SparkLambda => {
                Box::new(external::External(self))
            }
        }
    }

    /// The delivery guarantee the scenario gives this engine (Spark's is the one the seed's
    /// design gives: exactly-once through idempotent upserts; Kafka Streams has a setting).
    pub fn guarantee(self, scenario: &Scenario) -> Guarantee {
        match self {
            EngineKind::Kappa => scenario.engine.kappa_guarantee,
            EngineKind::Lambda => scenario.engine.lambda_guarantee,
            EngineKind::SparkKappa | EngineKind::SparkLambda => Guarantee::ExactlyOnce,
            EngineKind::Kstreams => scenario.engine.kstreams_guarantee,
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What every engine is started with.
pub struct Setup<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// How the run was asked for.
    pub options: &'a RunOptions,
    /// The log engines read (with the scenario's outages, if any).
    pub log: Arc<dyn Log>,
    /// The log itself, without injected faults.
    pub base: Arc<dyn Log>,
    /// The run's clock.
    pub clock: Arc<dyn Clock>,
    /// The run's folder.
    pub out: &'a Path,
    /// Window sizes and the lateness policy.
    pub queries: QueryConfig,
    /// Event time to the run's clock, and the warm-up.
    pub mapping: TimeMapping,
    /// Whether the engines' threads yield to the driver (paced runs over Kafka).
    pub yield_to_driver: bool,
    /// Cores of this machine.
    pub cores: u32,
    /// External engines whose processes were started before the run's clock, by kind.
    pub booted: &'a std::sync::Mutex<BTreeMap<EngineKind, external::Booted>>,
    /// When the producer sent and saw acknowledged each append, for the latency breakdown.
    pub timeline: Arc<crate::metrics::SendTimeline>,
    /// What the run shows while it runs (each engine's visible latency goes here too).
    pub live: Arc<crate::live::Live>,
}

impl Setup<'_> {
    /// The file an engine's dead letters go to.
    pub fn dead_letters(&self, kind: EngineKind) -> Result<Arc<lk_engines::sink::dead_letters::DeadLetters>, RunError> {
        let path = self.out.join("dead-letters").join(format!("{kind}.jsonl"));
        lk_engines::sink::dead_letters::DeadLetters::create(&path).map(Arc::new).map_err(output_error(&path))
    }
}

/// Starts an engine's `job` under a supervisor that runs it again after each crash, on a thread
/// that yields to the driver when the run says so (and every thread it starts with it).
pub fn supervise<R: Send + 'static>(
    setup: &Setup<'_>,
    kind: EngineKind,
    control: &Arc<JobControl>,
    job: impl Fn() -> Result<R, lk_engines::runtime::job::EngineError> + Send + 'static,
) -> Result<(Supervisor, crate::faults::SupervisedJob<R>), RunError> {
    let yield_to_driver = setup.yield_to_driver;
    Supervisor::spawn(&format!("lk-{kind}-job"), Arc::clone(control), Arc::clone(&setup.clock), move || {
        if yield_to_driver {
            lk_engines::runtime::background::yield_to_driver();
        }
        job()
    })
    .map_err(output_error(setup.out))
}

/// An engine lk can run and judge.
pub trait Engine {
    /// Which engine it is.
    fn kind(&self) -> EngineKind;

    /// Starts its supervised job on the log; it runs until the input is closed and drained.
    fn start(&self, setup: &Setup<'_>) -> Result<Box<dyn Running>, RunError>;
}

/// An engine while the input runs.
pub trait Running {
    /// Which engine it is.
    fn kind(&self) -> EngineKind;

    /// Its control: progress counters, crash switches, the input's end.
    fn control(&self) -> &Arc<JobControl>;

    /// Its supervisor, which restarts it after a crash.
    fn supervisor(&self) -> &Supervisor;

    /// Reads what its serving layer serves for Q3 now, summed per window (completeness over
    /// time); called from the sampler's thread.
    fn demand_sampler(&self) -> Box<dyn Fn() -> BTreeMap<i64, u64> + Send>;

    /// Waits for the job to end, once the input is closed.
    fn join(self: Box<Self>) -> Box<dyn Finished>;

    /// Reprocessing of everything so far the engine's own way, beside the live run and apart
    /// from what it serves (`lk demo`'s race): Kappa's job replayed from offset 0 into views of
    /// its own, Lambda's batch layer over its whole master dataset. Each call is one race; None
    /// for an engine without one here.
    fn reprocess_racer(&self) -> Option<crate::live::Racer> {
        None
    }
}

/// An engine whose job has ended.
pub trait Finished {
    /// Judges it against the oracle and turns its reports into results.
    fn judge(self: Box<Self>, judge: &Judge<'_>, observed: Observed) -> Result<EngineResults, RunError>;
}

/// What the run measured of an engine from outside while the input ran.
#[derive(Default)]
pub struct Observed {
    /// (seconds since start, records consumed per second).
    pub throughput_series: Vec<(f64, f64)>,
    /// Clock time and records consumed when the warm-up ended.
    pub at_warmup: Option<(u64, u64)>,
    /// Its crashes as the injector saw them.
    pub recoveries: RecoveryTracker,
    /// Its supervisor's restarts.
    pub restarts: Vec<Restart>,
    /// Completeness over time, already computed from the sampler's readings.
    pub completeness_series: Vec<(f64, f64)>,
    /// Visible latency second by second, as the sampler took it.
    pub latency_series: Vec<crate::metrics::LatencySample>,
}

/// What every finished engine is judged with.
pub struct Judge<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// How the run was asked for.
    pub options: &'a RunOptions,
    /// The log itself.
    pub base: &'a Arc<dyn Log>,
    /// The exact views.
    pub oracle: &'a Oracle,
    /// Window sizes and the lateness policy.
    pub queries: QueryConfig,
    /// The run's folder.
    pub out: &'a Path,
    /// The run's clock.
    pub clock: &'a Arc<dyn Clock>,
    /// Clock time of the run's start.
    pub start_ns: u64,
    /// Clock time when the input ended.
    pub input_end_ns: u64,
    /// Bytes the log stores (shared by the engines).
    pub log_bytes: u64,
    /// Cores of this machine.
    pub cores: u32,
}

impl Judge<'_> {
    /// Records consumed per second from the end of the warm-up until caught up.
    pub fn throughput(&self, observed: &Observed, processed: u64, caught_up_ns: u64) -> f64 {
        let (warm_ns, warm_processed) = observed.at_warmup.unwrap_or((self.start_ns, 0));
        processed.saturating_sub(warm_processed) as f64 / ((caught_up_ns - warm_ns).max(1) as f64 / 1e9)
    }

    /// The engine's served views, as Parquet under `views/<name>/`.
    pub fn write_views(&self, name: &str, views: &ViewSet) -> Result<(), RunError> {
        let directory = self.out.join("views").join(name);
        crate::views::write_views(&directory, views, &self.queries).map_err(output_error(&directory))
    }

    /// The checker: cell by cell against `truth`, then the events behind any difference, then
    /// the dead letters against the oracle's malformed records.
    pub fn check(
        &self,
        served: &ViewSet,
        truth: &ViewSet,
        counted: Truth<'_>,
        control: &JobControl,
        guarantee: Guarantee,
    ) -> Result<Correctness, RunError> {
        let mut correctness = correctness_of(served, truth, self.oracle, guarantee.name());
        if correctness.lost + correctness.duplicated > 0 {
            let named =
                lk_engines::verify::checker::explain(&**self.base, TOPIC, &self.queries, counted, served, truth, 5)?;
            for (query, events) in named {
                if let Some(entry) = correctness.per_query.get_mut(query.name()) {
                    entry.events = events;
                }
            }
        }
        if let Some(dead_letters) = &control.dead_letters {
            dead_letters.finish().map_err(RunError::Invalid)?;
            correctness.dead_letter_file = dead_letters.path().display().to_string();
            correctness.dead_letter_file_records = dead_letters.distinct();
            correctness.dead_letters_accounted = correctness.dead_letter_file_records == self.oracle.dead_lettered;
        }
        Ok(correctness)
    }

    /// Crashes and recoveries; a recovery the input's end overtook ends at `final_caught_up_ns`.
    pub fn faults(&self, observed: &Observed, final_caught_up_ns: u64, control: &JobControl) -> FaultResults {
        let seconds = |ns: u64| ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let crash_list: Vec<CrashResult> = observed
            .recoveries
            .crashes
            .iter()
            .enumerate()
            .map(|(index, crash)| {
                let restart = observed.restarts.get(index);
                let caught_up_ns = crash.caught_up_ns.unwrap_or(final_caught_up_ns);
                CrashResult {
                    at_seconds: seconds(crash.fired_ns),
                    point: crash.point.to_owned(),
                    stopped_at_seconds: restart.map_or(0.0, |restart| seconds(restart.stopped_ns)),
                    restarted_at_seconds: restart.map_or(0.0, |restart| seconds(restart.restarted_ns)),
                    caught_up_at_seconds: seconds(caught_up_ns),
                    recovery_seconds: caught_up_ns.saturating_sub(crash.fired_ns) as f64 / 1e9,
                }
            })
            .collect();
        FaultResults {
            records_replayed: control.replayed.load(Ordering::Relaxed),
            crashes: crash_list.len() as u64,
            recovery_seconds_max: crash_list.iter().map(|crash| crash.recovery_seconds).fold(0.0, f64::max),
            crash_list,
        }
    }

    /// The window latencies of an engine's workers, and what they cost in completeness: its
    /// final views against the oracle over every event.
    pub fn window_latency<'r>(
        &self,
        recorders: impl Iterator<Item = &'r LatencyRecorder>,
        served: &ViewSet,
        late_dropped: u64,
    ) -> WindowLatency {
        let (mut processing, mut event_time, mut revised) = (new_histogram(), SignedHistogram::default(), 0);
        for recorder in recorders {
            processing.add(&recorder.processing_us).expect("same bounds");
            event_time.add(&recorder.event_time);
            revised += recorder.revised;
        }
        let windows_incomplete = served
            .compare_with(&self.oracle.everything)
            .into_iter()
            .filter(|(query, _)| *query != Query::DriverLocation)
            .map(|(_, result)| result.mismatched_windows)
            .sum();
        let measured = !processing.is_empty();
        WindowLatency {
            processing_ms: measured.then(|| LatencySummary::of(&processing)),
            event_time_ms: SignedLatencySummary::of(&event_time),
            unmeasured: (!measured).then(|| {
                "no window result was served after the warm-up: the run is shorter than a window plus the watermark \
                 delay on the run's clock (lengthen run.duration or raise run.time_compression)"
                    .to_owned()
            }),
            results_early: event_time.early_us.len(),
            results_revised: revised,
            windows_incomplete,
            late_dropped,
        }
    }
}

/// The sink an engine's views (Kappa) or speed layer (Lambda) use: `auto` is transactional on
/// Kafka under exactly-once (what exactly-once means there), direct otherwise.
pub fn view_sink(scenario: &Scenario, kind: EngineKind, log: &dyn Log) -> Result<ViewSink, RunError> {
    let (choice, output_topic) = match kind {
        EngineKind::Kappa => (scenario.engine.kappa_sink, "kappa-views"),
        EngineKind::Lambda => (scenario.engine.lambda_sink, "lambda-speed-views"),
        EngineKind::SparkKappa | EngineKind::Kstreams | EngineKind::SparkLambda => {
            return Err(RunError::Invalid(format!("{kind} writes its own output; lk chooses no sink for it")));
        }
    };
    let guarantee = kind.guarantee(scenario);
    let transactional = ViewSink::Transactional {
        output_topic: output_topic.to_owned(),
        commit_interval: scenario.engine.commit_interval,
    };
    let exactly_once = guarantee == Guarantee::ExactlyOnce;
    match choice {
        SinkChoice::Auto if exactly_once && log.backend() == "kafka" => Ok(transactional),
        SinkChoice::Auto | SinkChoice::Direct => Ok(ViewSink::Direct),
        SinkChoice::Transactional if exactly_once => Ok(transactional),
        SinkChoice::Transactional => Err(RunError::Invalid(format!(
            "engine.{kind}_sink = \"transactional\" needs {kind} to run exactly-once, not {}; change the guarantee or \
             the sink",
            guarantee.name()
        ))),
    }
}

/// A sink's name in results.
pub fn sink_name(sink: &ViewSink) -> &'static str {
    match sink {
        ViewSink::Direct => "direct",
        ViewSink::Transactional { .. } => "transactional",
    }
}
