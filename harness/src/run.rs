//! `lk run`: the generator into the log and the engines on it, concurrently, then the oracle,
//! the comparison, reprocessing and cost, into [`Results`], and every engine's final views as
//! Parquet under `views/`.
//!
//! The generator runs on the calling thread, open loop, sending each slice of about a
//! millisecond of events as soon as it is due; the engines run on their own threads and read the
//! log as it grows. Nothing here decides an engine's answer: it only feeds, times and compares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::scenario::{FaultKind, Guarantee, Scenario};
use lk_engines::log::client_properties::ClientProperties;
use lk_engines::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use lk_engines::log::kafka::{KafkaConfig, KafkaLog};
use lk_engines::log::{Log, LogError};
use lk_engines::runtime::job::EngineError;
use lk_engines::runtime::queries::{Query, QueryConfig, ViewSet};
use lk_engines::verify::oracle::Oracle;
use lk_simulator::codec::RecordEncoding;
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::simulate::{Pacer, Pacing};
use lk_simulator::time::Clock;

use crate::backpressure::{Admit, Governor};
use crate::engine::{EngineKind, Finished, Judge, Observed, Running, Setup, sink_name, view_sink};
use crate::faults::{CrashTarget, InjectorSettings, OutageLog, spawn_crash_injector};
use crate::metrics::{SendTimeline, TimeMapping, directory_bytes};
use crate::output::{OutputFolder, Takeover};
use crate::producer::Producer;
use crate::results::{
    Correctness, EngineResults, Environment, FaultEvent, GeneratorResults, OracleResults, Results, SCHEMA_VERSION,
    ScenarioSummary,
};

/// The input topic.
pub const TOPIC: &str = "ride-events";

/// The subfolders a run writes, replaced by the next run into the same (lk-owned) folder.
pub const RUN_SUBFOLDERS: [&str; 6] = ["log", "checkpoints", "master", "views", "dead-letters", "engines"];

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// An engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The output folder could not be prepared or written.
    #[error("{path}: {cause}")]
    Output {
        /// Where.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The output folder is not lk's to write into.
    #[error(transparent)]
    Folder(#[from] crate::output::OutputError),
    /// The scenario cannot be run as asked.
    #[error("{0}")]
    Invalid(String),
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where the log, checkpoints and results go.
    pub out_directory: PathBuf,
    /// Paced at the scenario's rate, or flat out.
    pub pacing: Pacing,
    /// Whether to rebuild the views from the log after the run and time it.
    pub reprocess: bool,
    /// Which engines to run, side by side on the same log (each in its own consumer group).
    pub engines: Vec<EngineKind>,
    /// Which log the run uses.
    pub log: LogChoice,
    /// What to do when `out_directory` is a non-empty folder that lk did not create.
    pub takeover: Takeover,
    /// Knobs that make an engine worse on purpose, for tests; the default in every real run.
    pub test_knobs: TestKnobs,
    /// Where Spark engines run and how they are configured.
    pub spark: crate::engine::external::spark::SparkOptions,
    /// How the Kafka Streams engine runs.
    pub kstreams: crate::engine::external::kstreams::KstreamsOptions,
    /// Whether to profile the stream for the report.
    pub profile: StreamProfiling,
    /// Where the run shows its figures while it runs (`lk run --metrics` serves it); `None`
    /// keeps them to the run.
    pub live: Option<Arc<crate::live::Live>>,
}

/// Whether a run profiles its stream (generating it again after the engines finish, so the
/// profile costs them nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamProfiling {
    /// For streams of up to [`AUTO_PROFILE_EVENTS`] events (a second or two of generation).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The largest stream `StreamProfiling::Auto` profiles: about two seconds on this project's
/// machines, where rush hour's 60 million events take about half a minute.
pub const AUTO_PROFILE_EVENTS: u64 = 5_000_000;

/// Ways to make an engine worse on purpose, so that tests can show a measure moving with it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TestKnobs {
    /// Kappa waits this long before serving a batch that fired windows.
    pub kappa_window_serve_delay: Duration,
    /// Kappa sleeps this long after every batch it processes.
    pub kappa_batch_delay: Duration,
    /// Kappa sleeps per record so that it cannot process much more than this many events/s.
    pub kappa_rate_limit_eps: Option<f64>,
    /// spark-kappa's Q3 adds each micro-batch to totals of its own, ignoring the batch id (a
    /// sink that is not idempotent: a batch replayed after a crash is counted twice).
    pub spark_non_idempotent_sink: bool,
    /// Kappa keeps its state in memory only and restarts empty at its committed offsets: crash
    /// recovery without its checkpoints, which a torture must catch.
    pub kappa_memory_state_store: bool,
    /// Lambda restarts its master dataset's writes from the input's end: crash recovery
    /// without the master's commits, which a torture must catch.
    pub lambda_forget_master_on_restart: bool,
}

/// The log a run uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogChoice {
    /// The embedded log, under the run's folder (the default).
    #[default]
    Embedded,
    /// A Kafka cluster: the run's topics are created under a namespace of their own and
    /// deleted after the run unless `keep_topics`.
    Kafka {
        /// Bootstrap servers, `host:port[,...]`.
        brokers: String,
        /// The broker's data folder, when it is on this machine, for the log's size on disk.
        data_dir: Option<PathBuf>,
        /// Keep the run's topics after the run.
        keep_topics: bool,
        /// The configuration of every Kafka client (security, tuning), over lk's defaults.
        properties: ClientProperties,
    },
}

/// The log a run writes to and reads from, and what to do with it after the run.
struct RunLog {
    log: Arc<dyn Log>,
    kafka: Option<(Arc<KafkaLog>, bool)>,
}

impl RunLog {
    #[allow(
        clippy::disallowed_methods,
        reason = "the wall-clock time makes a Kafka namespace unique; it is not a measurement"
    )]
    fn open(choice: &LogChoice, out: &Path, seed: u64) -> Result<Self, RunError> {
        match choice {
            LogChoice::Embedded => Ok(Self {
                log: Arc::new(EmbeddedLog::open(&out.join("log"), EmbeddedLogConfig::default())?),
                kafka: None,
            }),
            LogChoice::Kafka { brokers, data_dir, keep_topics, properties } => {
                let millis = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis());
                // The process id too: two runs of one seed started in the same millisecond (the
                // test binaries run tests in parallel) shared topics and transactional ids, and
                // the first to finish deleted the other's topics and fenced its producers.
                let namespace = format!("lk-run-{seed}-{millis}-{}", std::process::id());
                let mut config = KafkaConfig::new(brokers, &namespace);
                config.data_dir = data_dir.clone();
                config.properties = properties.clone();
                let kafka = Arc::new(KafkaLog::connect(config)?);
                Ok(Self { log: Arc::clone(&kafka) as Arc<dyn Log>, kafka: Some((kafka, *keep_topics)) })
            }
        }
    }
}

impl Drop for RunLog {
    /// Deletes a Kafka run's topics, whether the run finished or failed, unless asked to keep
    /// them.
    fn drop(&mut self) {
        if let Some((kafka, false)) = &self.kafka
            && let Err(error) = kafka.delete_topics()
        {
            eprintln!("warning: the run's Kafka topics (namespace {}) were not deleted: {error}", kafka.namespace());
        }
    }
}

/// An I/O error at `path` as a run error.
pub(crate) fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |cause| RunError::Output { path: path.display().to_string(), cause }
}

/// Progress, for a progress bar: the phase, and while generating, how far.
#[derive(Clone, Copy, Debug)]
pub struct RunProgress {
    /// The phase the run is in.
    pub phase: Phase,
    /// Events generated.
    pub generated: u64,
    /// Events the engine has processed.
    pub processed: u64,
    /// Clock time since the start, ns.
    pub elapsed_ns: u64,
    /// Current schedule lag, ns.
    pub lag_ns: u64,
}

/// Completeness samples of one engine: (seconds since start, Q3 served per window).
type DemandSamples = Vec<(f64, BTreeMap<i64, u64>)>;

/// The run's memory, storage and CPU, once a second.
type ResourceSeries = Vec<crate::steadiness::ResourceSample>;

/// What the sampler took once a second while the input ran.
#[derive(Default)]
struct Sampled {
    /// Per engine, in the engines' order.
    demand: Vec<DemandSamples>,
    /// Per engine, in the engines' order.
    latency: Vec<Vec<crate::metrics::LatencySample>>,
    /// The run's memory, storage and CPU.
    resources: ResourceSeries,
}

/// What `prepare` sets up before any engine starts.
struct Prepared {
    folder: OutputFolder,
    /// The log, and (over Kafka) what deletes the run's topics when the run ends.
    run_log: RunLog,
    /// The log itself.
    base: Arc<dyn Log>,
    /// The log as engines and producer see it, with the scenario's outages.
    log: Arc<dyn Log>,
    generator: Generator,
    producer: Producer,
    queries: QueryConfig,
    mapping: TimeMapping,
    start_ns: u64,
    cores: u32,
    /// External engines, started and ready.
    booted: std::sync::Mutex<BTreeMap<EngineKind, crate::engine::external::Booted>>,
    /// When the producer sent and saw acknowledged each append.
    timeline: Arc<SendTimeline>,
    /// What the run shows while it runs.
    live: Arc<crate::live::Live>,
}

/// Per engine while the input runs: the engine, and what is measured of it from outside.
struct Watched {
    engine: Box<dyn Running>,
    throughput_series: Vec<(f64, f64)>,
    last_processed: u64,
    at_warmup: Option<(u64, u64)>,
}

/// The threads that watch the engines while the input runs: the completeness sampler and the
/// crash injector.
struct Watchers {
    sampling: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Sampled>,
    stop_injector: Arc<AtomicBool>,
    injector: std::thread::JoinHandle<Result<crate::faults::Injected, LogError>>,
}

/// What driving the input produced.
struct Driven {
    input_end_ns: u64,
    max_lag_ns: u64,
    fault_events: Vec<FaultEvent>,
    backpressure: crate::backpressure::BackpressureResults,
    /// What the CPU did while the input ran.
    resources: Option<crate::resources::Resources>,
    /// The run's memory, storage and CPU, once a second.
    resource_series: ResourceSeries,
    /// Whether memory and latency held steady.
    steadiness: Option<crate::steadiness::Steadiness>,
}

/// Runs the chosen engines on `scenario`, side by side on one log, and measures them: prepare,
/// spawn, drive, drain, verify, report.
pub fn run(
    scenario: &Scenario,
    options: &RunOptions,
    clock: Arc<dyn Clock>,
    progress: &mut dyn FnMut(RunProgress),
) -> Result<Results, RunError> {
    let Some(duration) = scenario.workload.run.duration else {
        return Err(RunError::Invalid(format!("scenario {} has no run.duration; pass --duration", scenario.name())));
    };
    if options.engines.is_empty() {
        return Err(RunError::Invalid("no engine to run; name at least one, e.g. --engine kappa".to_owned()));
    }
    if scenario.engine.backpressure != crate::scenario::Backpressure::ScaleOut
        && scenario
            .faults
            .iter()
            .any(|fault| matches!(fault.kind, FaultKind::Crash { point: crate::scenario::CrashPoint::InRescale, .. }))
    {
        return Err(RunError::Invalid(format!(
            "scenario {} has a crash at point \"in-rescale\", which waits for a rescale: set [engine] backpressure = \
             \"scale-out\" (or pass --backpressure scale-out), or choose another point",
            scenario.name()
        )));
    }
    let mut prepared = prepare(scenario, options, &clock, duration)?;
    let (mut watched, watchers) = spawn(scenario, options, &clock, &prepared)?;
    // Which resource is the limit: CPU over the input's span, lk's threads and a local broker's.
    let broker_pid = match &options.log {
        LogChoice::Kafka { data_dir: Some(data_dir), .. } => crate::resources::local_broker(data_dir),
        _ => None,
    };
    let (cpu_start, input_start_ns) = (crate::resources::snapshot(broker_pid), clock.now_ns());
    let mut driven = drive(scenario, options, &clock, &mut prepared, &mut watched, progress)?;
    driven.resources = crate::resources::between(
        &cpu_start,
        &crate::resources::snapshot(broker_pid),
        driven.input_end_ns.saturating_sub(input_start_ns) as f64 / 1e9,
        prepared.cores,
    );
    phase(progress, Phase::Draining, &prepared, &clock);
    let (drained, crash_events, resource_series) = drain(watched, watchers)?;
    driven.fault_events.extend(crash_events);
    driven.fault_events.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
    phase(progress, Phase::Verifying, &prepared, &clock);
    let (oracle, oracle_seconds) = oracle(&prepared, &clock)?;
    let mut engines = BTreeMap::new();
    let judge = Judge {
        scenario,
        options,
        base: &prepared.base,
        oracle: &oracle,
        queries: prepared.queries,
        out: prepared.folder.path(),
        clock: &clock,
        start_ns: prepared.start_ns,
        input_end_ns: driven.input_end_ns,
        log_bytes: prepared.base.stored_bytes(),
        cores: prepared.cores,
    };
    for Drained { kind, engine, mut observed, samples } in drained {
        observed.completeness_series = completeness_series(&samples, &oracle, &prepared.queries, &prepared.mapping);
        engines.insert(kind.name().to_owned(), engine.judge(&judge, observed)?);
    }
    // Judged over the input's span: the drain after it is the engines catching up.
    let input_seconds = driven.input_end_ns.saturating_sub(prepared.start_ns) as f64 / 1e9;
    let judged: Vec<_> = resource_series.iter().filter(|sample| sample.at_seconds <= input_seconds).cloned().collect();
    let latency: BTreeMap<String, Vec<_>> = engines
        .iter()
        .map(|(name, engine)| {
            let series = engine.latency_series.iter().filter(|sample| sample.at_seconds <= input_seconds);
            (name.clone(), series.cloned().collect())
        })
        .collect();
    driven.steadiness = crate::steadiness::judge(
        &judged,
        &latency,
        prepared.mapping.warmup_end_ns.saturating_sub(prepared.start_ns) as f64 / 1e9,
    );
    driven.resource_series = resource_series;
    phase(progress, Phase::Reporting, &prepared, &clock);
    report(scenario, options, &prepared, driven, &oracle, oracle_seconds, engines)
}

/// The phases a run reports to its progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The generator feeds the log and the engines read it.
    Generating,
    /// The input has ended; the engines finish what they read.
    Draining,
    /// The oracle, the checker and reprocessing.
    Verifying,
    /// results.json.
    Reporting,
}

impl Phase {
    /// Its name in progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Generating => "generating",
            Phase::Draining => "draining",
            Phase::Verifying => "oracle, checker and reprocessing",
            Phase::Reporting => "report",
        }
    }
}

fn phase(progress: &mut dyn FnMut(RunProgress), phase: Phase, prepared: &Prepared, clock: &Arc<dyn Clock>) {
    prepared.live.set_phase(phase);
    progress(RunProgress {
        phase,
        generated: prepared.generator.counts().events,
        processed: 0,
        elapsed_ns: clock.now_ns().saturating_sub(prepared.start_ns),
        lag_ns: 0,
    });
}

/// Claims the folder, opens the log and its topic, builds the generator and the producer.
fn prepare(
    scenario: &Scenario,
    options: &RunOptions,
    clock: &Arc<dyn Clock>,
    duration: Duration,
) -> Result<Prepared, RunError> {
    let identity = format!("lk run: scenario {}, seed {}", scenario.name(), scenario.seed());
    let folder = OutputFolder::claim(&options.out_directory, &identity, options.takeover)?;
    for stale in RUN_SUBFOLDERS {
        folder.remove(stale)?;
    }
    let run_log = RunLog::open(&options.log, folder.path(), scenario.seed())?;
    let base = Arc::clone(&run_log.log);
    base.create_topic(TOPIC, scenario.engine.partitions)?;
    let queries = QueryConfig::new(&scenario.windows, &scenario.watermark);
    let generator = Generator::new(
        &scenario.workload,
        GeneratorOptions {
            threads: 1,
            // Inline: see `GeneratorOptions::background`.
            background: false,
            limit_events: None,
            limit_due_ns: Some(duration.as_nanos() as u64),
        },
    );
    // Exactly-once needs the idempotent producer: it is on when an engine that runs needs it.
    // Without it the generator's retries and redelivery faults reach the log.
    let idempotent = options.engines.iter().any(|kind| kind.guarantee(scenario) == Guarantee::ExactlyOnce);
    // An engine that is not lk's own reads the documented JSON form (docs/ride-event.schema.json);
    // lk's engines read either.
    let external = options.engines.iter().any(|kind| kind.is_external());
    let encoding = if external { RecordEncoding::Json } else { RecordEncoding::Binary };
    let mut producer = Producer::new(&*base, TOPIC, idempotent, encoding)?;
    let redelivery_events = scenario
        .faults
        .iter()
        .filter_map(|fault| match fault.kind {
            FaultKind::Redelivery { events } => Some(events as usize),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    producer.remember(redelivery_events);
    // External engines start before the clock does: a JVM takes seconds, and the input's
    // schedule must not wait on it.
    let context = crate::engine::external::Context { scenario, options, log: &base, out: folder.path(), queries };
    let mut booted = BTreeMap::new();
    for kind in options.engines.iter().filter(|kind| kind.is_external()) {
        booted.insert(*kind, crate::engine::external::boot(*kind, &context)?);
    }
    let start_ns = clock.now_ns();
    let outages: Vec<(u64, u64)> = scenario
        .faults
        .iter()
        .filter_map(|fault| match fault.kind {
            FaultKind::Outage { duration } => {
                let at = start_ns + fault.at.as_nanos() as u64;
                Some((at, at + duration.as_nanos() as u64))
            }
            _ => None,
        })
        .collect();
    let log: Arc<dyn Log> = if outages.is_empty() {
        Arc::clone(&base)
    } else {
        Arc::new(OutageLog::with_outages(Arc::clone(&base), Arc::clone(clock), outages))
    };
    let warmup_ns = (scenario.engine.warmup.as_nanos() as u64).min(duration.as_nanos() as u64 / 2);
    let mapping = TimeMapping {
        start_ns,
        start_event_time_us: scenario.workload.run.start_time_us,
        time_compression: scenario.workload.run.time_compression,
        watermark_delay_us: queries.watermark_delay_us,
        warmup_end_ns: start_ns + warmup_ns,
    };
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32);
    let timeline = Arc::new(SendTimeline::new(scenario.engine.partitions));
    let live = options.live.clone().unwrap_or_default();
    live.attach_log(Arc::clone(&base), TOPIC, scenario.engine.partitions);
    let mut producer = producer;
    producer.track(Arc::clone(&timeline), Arc::clone(clock));
    Ok(Prepared {
        folder,
        run_log,
        base,
        log,
        generator,
        producer,
        queries,
        mapping,
        start_ns,
        cores,
        booted: std::sync::Mutex::new(booted),
        timeline,
        live,
    })
}

/// Starts each engine, then the threads that watch them: the completeness sampler and the crash
/// injector.
fn spawn(
    scenario: &Scenario,
    options: &RunOptions,
    clock: &Arc<dyn Clock>,
    prepared: &Prepared,
) -> Result<(Vec<Watched>, Watchers), RunError> {
    let out = prepared.folder.path();
    // Over Kafka, paced, the engines (and every thread they start, their Kafka clients' among
    // them) yield to the driver, whose schedule is where every event's latency starts
    // (docs/decisions/0003). On the embedded log, and flat out, they keep normal priority.
    let yield_to_driver = options.pacing == Pacing::Scheduled && prepared.run_log.log.backend() == "kafka";
    let setup = Setup {
        scenario,
        options,
        log: Arc::clone(&prepared.log),
        base: Arc::clone(&prepared.base),
        clock: Arc::clone(clock),
        out,
        queries: prepared.queries,
        mapping: prepared.mapping,
        yield_to_driver,
        cores: prepared.cores,
        booted: &prepared.booted,
        timeline: Arc::clone(&prepared.timeline),
        live: Arc::clone(&prepared.live),
    };
    let mut watched = Vec::new();
    for kind in &options.engines {
        let engine = kind.engine().start(&setup)?;
        prepared.live.add_engine(
            kind.name(),
            Arc::clone(engine.control()),
            engine.supervisor().clone(),
            kind.is_external(),
        );
        watched.push(Watched { engine, throughput_series: Vec::new(), last_processed: 0, at_warmup: None });
    }
    // Completeness over time: a sampler reads each engine's served Q3 totals once a second.
    let sampling = Arc::new(AtomicBool::new(true));
    let samplers: Vec<_> = watched.iter().map(|watched| watched.engine.demand_sampler()).collect();
    let racers: Vec<_> = watched
        .iter()
        .filter_map(|watched| Some((watched.engine.kind().name(), watched.engine.reprocess_racer()?)))
        .collect();
    let names: Vec<&'static str> = watched.iter().map(|watched| watched.engine.kind().name()).collect();
    let sampler = {
        let (sampling, clock, start_ns, live) =
            (Arc::clone(&sampling), Arc::clone(clock), prepared.start_ns, Arc::clone(&prepared.live));
        let (log, partitions) = (Arc::clone(&prepared.base), scenario.engine.partitions);
        let mut truth = crate::live::LiveTruth::new(prepared.queries);
        let intervals: Vec<_> = names.iter().map(|name| prepared.live.interval_latency_of(name)).collect();
        let (checkpoints, master) = (out.join("checkpoints"), out.join("master"));
        std::thread::Builder::new()
            .name("lk-sampler".to_owned())
            .spawn(move || {
                let mut sampled = Sampled {
                    demand: vec![Vec::new(); samplers.len()],
                    latency: vec![Vec::new(); samplers.len()],
                    resources: Vec::new(),
                };
                let mut cpu = (crate::resources::snapshot(None), clock.now_ns());
                let mut next_ns = clock.now_ns() + 1_000_000_000;
                let mut races = 0;
                while sampling.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                    // A dashboard's race: each engine reprocesses on a thread of its own.
                    if live.take_race_request() {
                        races += 1;
                        for (name, racer) in &racers {
                            let (racing, racer, name, race) = (Arc::clone(&live), Arc::clone(racer), *name, races);
                            let spawned = std::thread::Builder::new()
                                .name(format!("lk-race-{name}"))
                                .spawn(move || racing.race_finished(race, name, racer()));
                            if let Err(error) = spawned {
                                live.race_finished(race, name, Err(format!("could not start its thread: {error}")));
                            }
                        }
                    }
                    let now = clock.now_ns();
                    if now < next_ns {
                        continue;
                    }
                    next_ns += 1_000_000_000;
                    live.sample_started();
                    let demands: Vec<_> = samplers.iter().map(|sample| sample()).collect();
                    // Read after the engines' views, so that it holds all they can have counted,
                    // and shown first (a dashboard must not see views newer than the truth). A
                    // log that is away (an outage) is read again at the next sample.
                    if live.truth_wanted() && truth.advance(&*log, TOPIC, partitions).is_ok() {
                        live.set_truth(truth.demand());
                    }
                    let at_seconds = (now - start_ns) as f64 / 1e9;
                    for ((demand, samples), name) in demands.into_iter().zip(&mut sampled.demand).zip(&names) {
                        // A dashboard (`lk demo`) shows the latest sample.
                        live.set_demand(name, &demand);
                        samples.push((at_seconds, demand));
                    }
                    live.sample_done();
                    for (interval, series) in intervals.iter().zip(&mut sampled.latency) {
                        series.extend(interval.take(at_seconds));
                    }
                    let (snapshot, at_ns) = (crate::resources::snapshot(None), clock.now_ns());
                    let (machine_busy, lk_cores) =
                        crate::resources::busy(&cpu.0, &snapshot, at_ns.saturating_sub(cpu.1) as f64 / 1e9);
                    cpu = (snapshot, at_ns);
                    sampled.resources.push(crate::steadiness::ResourceSample {
                        at_seconds,
                        rss_bytes: crate::metrics::rss_bytes(),
                        log_bytes: log.stored_bytes(),
                        checkpoint_bytes: directory_bytes(&checkpoints),
                        master_bytes: directory_bytes(&master),
                        lk_cores,
                        machine_busy,
                    });
                }
                sampled
            })
            .map_err(output_error(out))?
    };
    // Crashes are fired, and recoveries watched, by a thread of their own (to the millisecond);
    // the other faults happen in the generator's loop.
    let stop_injector = Arc::new(AtomicBool::new(false));
    let injector = spawn_crash_injector(
        InjectorSettings {
            log: Arc::clone(&prepared.base),
            topic: TOPIC.to_owned(),
            partitions: scenario.engine.partitions,
            start_ns: prepared.start_ns,
            // A restarted engine has recovered once its lag is back to what it was before the
            // crash, or to 100 ms of input, whichever is more.
            recovered_lag: (scenario.workload.run.rate_eps * 0.1) as u64,
            live: Arc::clone(&prepared.live),
        },
        Arc::clone(clock),
        scenario.faults.clone(),
        watched
            .iter()
            .map(|watched| CrashTarget {
                kind: watched.engine.kind(),
                control: Arc::clone(watched.engine.control()),
                supervisor: watched.engine.supervisor().clone(),
            })
            .collect(),
        Arc::clone(&stop_injector),
    )
    .map_err(output_error(out))?;
    Ok((watched, Watchers { sampling, sampler, stop_injector, injector }))
}

/// The generator, open loop, a slice of about a millisecond at a time, into the log; the
/// faults that happen in its loop; the engines' progress, sampled every half second.
fn drive(
    scenario: &Scenario,
    options: &RunOptions,
    clock: &Arc<dyn Clock>,
    prepared: &mut Prepared,
    watched: &mut [Watched],
    progress: &mut dyn FnMut(RunProgress),
) -> Result<Driven, RunError> {
    phase(progress, Phase::Generating, prepared, clock);
    let (start_ns, partitions) = (prepared.start_ns, scenario.engine.partitions);
    let compression = scenario.workload.run.time_compression;
    let mut pacer = Pacer::new(Arc::clone(clock), start_ns, options.pacing, scenario.workload.run.rate_eps);
    let mut last_sample_ns = start_ns;
    let mut governor = Governor::new(
        scenario,
        Arc::clone(&prepared.base),
        TOPIC,
        watched
            .iter()
            .map(|watched| crate::backpressure::Watched {
                name: watched.engine.kind().name(),
                control: Arc::clone(watched.engine.control()),
                supervisor: watched.engine.supervisor().clone(),
                workers: scenario.engine.workers,
            })
            .collect(),
        Arc::clone(clock),
    );
    let mut pending_faults: std::collections::VecDeque<_> =
        scenario.faults.iter().copied().filter(|fault| !matches!(fault.kind, FaultKind::Crash { .. })).collect();
    let mut fault_events: Vec<FaultEvent> = Vec::new();
    let Prepared { generator, producer, log, mapping, live: prepared_live, .. } = prepared;
    while let Some(batch) = generator.next_batch() {
        // A dashboard's presenter may end the input early; the run then drains and judges what
        // was sent.
        if prepared_live.input_ended() {
            break;
        }
        pacer.release(batch, |range| match governor.admit(range.len())? {
            Admit::Send => producer.send(&**log, batch, range),
            Admit::Drop => Ok(()),
        })?;
        let now = clock.now_ns();
        while let Some(fault) = pending_faults.front().copied() {
            if now < start_ns + fault.at.as_nanos() as u64 {
                break;
            }
            fault_events.extend(generator_fault(fault, compression, now, start_ns, producer, &**log)?);
            pending_faults.pop_front();
        }
        // A presenter's late bursts and overloads start a little ahead, past what the generator
        // has made.
        for (duration, share) in prepared_live.take_late_burst_requests() {
            let bursts = scenario.late_bursts();
            let at = Duration::from_nanos(now - start_ns) + LIVE_BURST_LEAD;
            let burst = lk_simulator::late_bursts::LateBurst { at, duration, share };
            if bursts.is_live() && bursts.add(burst).is_ok() {
                fault_events.push(late_burst_event(at, duration, share, compression));
            }
        }
        for (duration, factor) in prepared_live.take_overload_requests() {
            let at = Duration::from_nanos(now - start_ns) + LIVE_BURST_LEAD;
            if scenario.live_overloads().add(lk_simulator::workload::Overload { at, duration, factor }) {
                let fault = crate::scenario::Fault { at, kind: FaultKind::Overload { duration, factor } };
                fault_events.extend(generator_fault(fault, compression, now, start_ns, producer, &**log)?);
            }
        }
        let sample = now >= last_sample_ns + 500_000_000;
        for watched in watched.iter_mut() {
            // Records consumed, not events processed: a replay after a crash is not progress.
            let processed = watched.engine.control().consumed(partitions);
            if watched.at_warmup.is_none() && now >= mapping.warmup_end_ns {
                watched.at_warmup = Some((now, processed));
            }
            if sample {
                let rate = (processed - watched.last_processed) as f64 / ((now - last_sample_ns) as f64 / 1e9);
                watched.throughput_series.push(((now - start_ns) as f64 / 1e9, rate));
                watched.last_processed = processed;
            }
        }
        if sample {
            last_sample_ns = now;
        }
        prepared_live.generated.store(generator.counts().events, Ordering::Relaxed);
        prepared_live.appended.store(producer.counters.appended, Ordering::Relaxed);
        prepared_live.schedule_lag_ns.store(pacer.lag_ns, Ordering::Relaxed);
        progress(RunProgress {
            phase: Phase::Generating,
            generated: generator.counts().events,
            processed: watched.iter().map(|watched| watched.engine.control().consumed(partitions)).min().unwrap_or(0),
            elapsed_ns: now - start_ns,
            lag_ns: pacer.lag_ns,
        });
    }
    producer.finish(&**log)?;
    // Stalls the producer saw and no injected outage explains: the log itself was away.
    let injected: Vec<(f64, f64)> = fault_events
        .iter()
        .filter(|fault| fault.kind == "outage")
        .map(|fault| (fault.at_seconds, fault.at_seconds + fault.duration_seconds))
        .collect();
    for &(from_ns, to_ns) in &producer.stalls {
        let (from, to) =
            ((from_ns.saturating_sub(start_ns)) as f64 / 1e9, (to_ns.saturating_sub(start_ns)) as f64 / 1e9);
        // Inside an injected outage, give or take the retries' backoff.
        if injected.iter().any(|&(start, end)| from >= start - 0.5 && to <= end + 2.0) {
            continue;
        }
        fault_events.push(FaultEvent {
            at_seconds: from,
            kind: "log stall".to_owned(),
            detail: format!(
                "appends waited for the log's acknowledgement for {:.1} s (seen by the producer, not injected: the \
                 log was unavailable, a broker down or restarting)",
                to - from
            ),
            duration_seconds: to - from,
        });
    }
    Ok(Driven {
        input_end_ns: clock.now_ns(),
        max_lag_ns: pacer.max_lag_ns,
        fault_events,
        backpressure: governor.finish(),
        resources: None,
        resource_series: Vec::new(),
        steadiness: None,
    })
}

/// A fault of the generator's loop, due now: a redelivery is done here; outages (the log
/// wrapper), overloads (the pacer's rate shape) and late bursts (the generator's phones) are only
/// recorded.
fn generator_fault(
    fault: crate::scenario::Fault,
    compression: f64,
    now: u64,
    start_ns: u64,
    producer: &mut Producer,
    log: &dyn Log,
) -> Result<Option<FaultEvent>, RunError> {
    Ok(match fault.kind {
        FaultKind::Crash { .. } => None,
        FaultKind::Redelivery { events } => {
            let sent = producer.redeliver(log, events as usize)?;
            Some(FaultEvent {
                at_seconds: (now - start_ns) as f64 / 1e9,
                kind: "redelivery".to_owned(),
                detail: format!("the producer sent its last {sent} events again"),
                duration_seconds: 0.0,
            })
        }
        FaultKind::Outage { duration } => Some(FaultEvent {
            at_seconds: fault.at.as_secs_f64(),
            kind: "outage".to_owned(),
            detail: format!("the log refused appends and stalled reads for {:.1} s", duration.as_secs_f64()),
            duration_seconds: duration.as_secs_f64(),
        }),
        FaultKind::Overload { duration, factor } => Some(FaultEvent {
            at_seconds: fault.at.as_secs_f64(),
            kind: "overload".to_owned(),
            detail: format!("the input rate was {factor}x for {:.1} s", duration.as_secs_f64()),
            duration_seconds: duration.as_secs_f64(),
        }),
        FaultKind::LateBurst { duration, share } => Some(late_burst_event(fault.at, duration, share, compression)),
    })
}

/// How far ahead of the run's clock a late burst or an overload asked for while the run runs
/// starts: past the events (and the blocks of due times) the generator has already made (it
/// runs a few milliseconds ahead), so that it lands as the same fault in `[[faults]]` would.
pub const LIVE_BURST_LEAD: Duration = Duration::from_millis(500);

/// How a late burst is recorded among the run's faults.
pub fn late_burst_event(at: Duration, duration: Duration, share: f64, compression: f64) -> FaultEvent {
    FaultEvent {
        at_seconds: at.as_secs_f64(),
        kind: "late-burst".to_owned(),
        detail: format!(
            "{:.0}% of the phones lost their signal for {:.1} s ({:.0} s of city time); what they recorded arrived \
             when it came back",
            share * 100.0,
            duration.as_secs_f64(),
            duration.as_secs_f64() * compression
        ),
        duration_seconds: duration.as_secs_f64(),
    }
}

/// One engine once its job has ended, with what the run watched of it.
struct Drained {
    kind: EngineKind,
    engine: Box<dyn Finished>,
    /// All but completeness, which needs the oracle.
    observed: Observed,
    samples: DemandSamples,
}

/// Closes the input, waits for every engine to finish, then stops the watchers; returns the
/// finished engines, the crashes the injector fired and the run's resources over time.
fn drain(
    watched: Vec<Watched>,
    watchers: Watchers,
) -> Result<(Vec<Drained>, Vec<FaultEvent>, ResourceSeries), RunError> {
    for watched in &watched {
        watched.engine.control().input_closed.store(true, Ordering::Release);
    }
    let joined: Vec<_> = watched
        .into_iter()
        .map(|watched| {
            let (kind, supervisor) = (watched.engine.kind(), watched.engine.supervisor().clone());
            let engine = watched.engine.join();
            // Taken once the job has ended: a crash near the end restarts it while it drains.
            let observed = Observed {
                throughput_series: watched.throughput_series,
                at_warmup: watched.at_warmup,
                restarts: supervisor.restarts(),
                ..Observed::default()
            };
            (kind, engine, observed)
        })
        .collect();
    watchers.sampling.store(false, Ordering::Release);
    let sampled = watchers.sampler.join().expect("the sampler panicked");
    watchers.stop_injector.store(true, Ordering::Release);
    let (recoveries, crash_events) = watchers.injector.join().expect("the crash injector panicked")?;
    let drained = joined
        .into_iter()
        .zip(sampled.demand.into_iter().zip(sampled.latency).zip(recoveries))
        .map(|((kind, engine, mut observed), ((samples, latency), recoveries))| {
            observed.recoveries = recoveries;
            observed.latency_series = latency;
            Drained { kind, engine, observed, samples }
        })
        .collect();
    Ok((drained, crash_events, sampled.resources))
}

/// The exact views from the whole log, written beside the engines' as Parquet.
fn oracle(prepared: &Prepared, clock: &Arc<dyn Clock>) -> Result<(Oracle, f64), RunError> {
    let started = clock.now_ns();
    let oracle = Oracle::compute(&*prepared.base, TOPIC, &prepared.queries)?;
    let seconds = (clock.now_ns() - started) as f64 / 1e9;
    for (name, views) in [("oracle", &oracle.everything), ("oracle-policy", &oracle.policy)] {
        let directory = prepared.folder.join("views").join(name);
        crate::views::write_views(&directory, views, &prepared.queries).map_err(output_error(&directory))?;
    }
    Ok((oracle, seconds))
}

/// Everything measured, as `results.json`.
fn report(
    scenario: &Scenario,
    options: &RunOptions,
    prepared: &Prepared,
    driven: Driven,
    oracle: &Oracle,
    oracle_seconds: f64,
    engines: BTreeMap<String, EngineResults>,
) -> Result<Results, RunError> {
    let generator_seconds = (driven.input_end_ns - prepared.start_ns) as f64 / 1e9;
    let injected = prepared.generator.counts().clone();
    let producer = &prepared.producer;
    let records_appended = producer.counters.appended;
    let sink = |kind: EngineKind| view_sink(scenario, kind, &*prepared.base).map(|sink| sink_name(&sink));
    let mut results = Results {
        schema_version: SCHEMA_VERSION,
        lk_version: env!("CARGO_PKG_VERSION").to_owned(),
        scenario: ScenarioSummary {
            name: scenario.name().to_owned(),
            seed: scenario.seed(),
            description: scenario.workload.description.clone(),
            rate_eps: scenario.workload.run.rate_eps,
            duration_seconds: scenario.workload.run.duration.map_or(0.0, |duration| duration.as_secs_f64()),
            partitions: scenario.engine.partitions,
            time_compression: scenario.workload.run.time_compression,
            watermark_delay_ms: prepared.queries.watermark_delay_us as f64 / 1000.0,
            allowed_lateness_ms: prepared.queries.allowed_lateness_us as f64 / 1000.0,
        },
        environment: Environment {
            cpus: prepared.cores as usize,
            os: std::env::consts::OS.to_owned(),
            log_backend: prepared.log.backend().to_owned(),
            paced: options.pacing == Pacing::Scheduled,
            kappa_sink: sink(EngineKind::Kappa)?.to_owned(),
            lambda_sink: sink(EngineKind::Lambda)?.to_owned(),
            log_damage: prepared.base.damage(),
        },
        generator: GeneratorResults {
            events: injected.events,
            target_rate_eps: scenario.workload.run.rate_eps,
            achieved_rate_eps: injected.events as f64 / generator_seconds,
            log_append_rate_eps: records_appended as f64 / generator_seconds,
            max_schedule_lag_ms: driven.max_lag_ns as f64 / 1e6,
            // Every event was appended, dropped as a re-send, or shed by backpressure on purpose.
            kept_up: driven.max_lag_ns < 100_000_000
                && records_appended + producer.counters.duplicates_dropped + driven.backpressure.dropped_events
                    == injected.events + producer.counters.redelivered,
            records_appended,
            duplicates_dropped: producer.counters.duplicates_dropped,
            redelivered: producer.counters.redelivered,
            append_retries: producer.counters.retries,
            injected,
        },
        oracle: OracleResults {
            events: oracle.events,
            dead_lettered: oracle.dead_lettered,
            late_dropped: Query::ALL
                .iter()
                .zip(oracle.late_dropped)
                .map(|(query, count)| (query.name().to_owned(), count))
                .collect(),
            seconds: oracle_seconds,
        },
        engines,
        faults: driven.fault_events,
        backpressure: driven.backpressure,
        requirements: scenario.requirements.clone(),
        capacity: None,
        verdict: None,
        resources: driven.resources.clone(),
        resource_series: driven.resource_series,
        steadiness: driven.steadiness,
        stream_profile: None,
        repetitions: Vec::new(),
    };
    let profile = match options.profile {
        StreamProfiling::Always => true,
        StreamProfiling::Auto => results.generator.events <= AUTO_PROFILE_EVENTS,
        StreamProfiling::Never => false,
    };
    if profile {
        let limit_due_ns = scenario.workload.run.duration.map_or(u64::MAX, |duration| duration.as_nanos() as u64);
        results.stream_profile =
            Some(lk_simulator::profile::profile_stream(&scenario.workload, limit_due_ns, prepared.cores as usize));
    }
    results.verdict = Some(crate::verdict::judge(&results));
    write_json(&prepared.folder.join("results.json"), &results)?;
    prepared.live.set_done();
    Ok(results)
}

/// Writes a value as pretty JSON with a final newline (`results.json`, `sweep.json`,
/// `capacity.json`).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), RunError> {
    let json = serde_json::to_string_pretty(value).expect("lk's files serialise") + "\n";
    std::fs::write(path, json).map_err(|cause| RunError::Output { path: path.display().to_string(), cause })
}

/// Completeness over time from the sampled Q3 totals: for each whole second since a window
/// could first be complete (its end plus the watermark delay, on the run's clock), the served
/// requests over the oracle's (every event), summed over the windows sampled at that age.
fn completeness_series(
    samples: &[(f64, BTreeMap<i64, u64>)],
    oracle: &Oracle,
    queries: &QueryConfig,
    mapping: &TimeMapping,
) -> Vec<(f64, f64)> {
    let mut expected_by_window: BTreeMap<i64, u64> = BTreeMap::new();
    for ((_, start), cell) in &oracle.everything.zone_demand {
        *expected_by_window.entry(*start).or_default() += cell.requests;
    }
    let mut by_age: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (seconds, served) in samples {
        let now_ns = mapping.start_ns as i64 + (seconds * 1e9) as i64;
        for (start, expected) in &expected_by_window {
            let complete_ns = mapping.window_complete_ns(start + queries.demand_window_us);
            if complete_ns > now_ns {
                break;
            }
            let age = ((now_ns - complete_ns) / 1_000_000_000) as u64;
            let cell = by_age.entry(age).or_default();
            cell.0 += served.get(start).copied().unwrap_or(0).min(*expected);
            cell.1 += expected;
        }
    }
    by_age.into_iter().map(|(age, (served, expected))| (age as f64, served as f64 / expected.max(1) as f64)).collect()
}

/// Compares served views with the views they should equal (`truth`: the oracle's policy views
/// for an engine that drops late events by design, its views over everything for one that
/// corrects them).
pub fn correctness_of(served: &ViewSet, truth: &ViewSet, oracle: &Oracle, guarantee: &str) -> Correctness {
    let per_query = served.compare_with(truth);
    let everything_per_query = oracle.everything.compare_with(&oracle.everything);
    let everything: u64 = everything_per_query.values().map(|query| query.expected).sum();
    let mut correctness = Correctness { guarantee: guarantee.to_owned(), ..Correctness::default() };
    for (query, result) in &per_query {
        correctness.expected += result.expected;
        correctness.observed += result.observed;
        correctness.lost += result.lost;
        correctness.duplicated += result.duplicated;
        correctness.mismatched_windows += result.mismatched_windows;
        correctness.per_query.insert(query.name().to_owned(), result.clone());
    }
    correctness.completeness = if everything == 0 {
        1.0
    } else {
        correctness.observed.saturating_sub(correctness.duplicated) as f64 / everything as f64
    };
    correctness.windowed_completeness = per_query
        .iter()
        .filter(|(query, _)| **query != Query::DriverLocation)
        .map(|(query, result)| {
            let everything = everything_per_query.get(query).map_or(0, |query| query.expected);
            if everything == 0 {
                1.0
            } else {
                result.observed.saturating_sub(result.duplicated) as f64 / everything as f64
            }
        })
        .fold(1.0, f64::min);
    correctness.verdict = if correctness.lost == 0 && correctness.duplicated == 0 {
        "exactly-once held".to_owned()
    } else {
        format!("not exactly-once: {} lost, {} duplicated", correctness.lost, correctness.duplicated)
    };
    correctness
}
