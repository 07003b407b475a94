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
use std::sync::atomic::Ordering;
use std::time::Duration;

use lk_engines::client_properties::ClientProperties;
use lk_engines::dead_letters::DeadLetters;
use lk_engines::embedded::{EmbeddedLog, EmbeddedLogConfig};
use lk_engines::kafka::{KafkaConfig, KafkaLog};
use lk_engines::kappa::{
    EngineError, JobControl, KappaConfig, NoObserver, StateStore, ViewSink, WorkerReport, run_job,
};
use lk_engines::lambda::{LambdaConfig, LambdaServing, batch, run_lambda};
use lk_engines::log::{Log, LogError};
use lk_engines::oracle::Oracle;
use lk_engines::queries::{Query, QueryConfig, ViewSet};
use lk_engines::serving::ServingStore;
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::scenario::{FaultKind, Guarantee, Scenario, SinkChoice};
use lk_simulator::simulate::{Pacer, Pacing};
use lk_simulator::time::Clock;

use crate::backpressure::{Admit, Governor, Watched};
use crate::faults::{CrashTarget, InjectorSettings, OutageLog, Supervisor, spawn_crash_injector};
use crate::metrics::{
    LatencyRecorder, LatencySummary, SignedHistogram, SignedLatencySummary, TimeMapping, directory_bytes,
    new_histogram, peak_rss_bytes,
};
use crate::output::{OutputFolder, Takeover};
use crate::producer::Producer;
use crate::results::{
    BatchRunResults, Correctness, Cost, CrashResult, EngineResults, Environment, FaultEvent, FaultResults,
    GeneratorResults, LambdaResults, MasterResults, OracleResults, Reprocess, Results, SCHEMA_VERSION, ScenarioSummary,
    WindowLatency,
};

/// The input topic.
pub const TOPIC: &str = "ride-events";

/// The subfolders a run writes, replaced by the next run into the same (lk-owned) folder.
pub const RUN_SUBFOLDERS: [&str; 5] = ["log", "checkpoints", "master", "views", "dead-letters"];

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
    /// Which engines to run.
    pub engines: EngineChoice,
    /// Which log the run uses.
    pub log: LogChoice,
    /// What to do when `out_directory` is a non-empty folder that lk did not create.
    pub takeover: Takeover,
    /// Knobs that make an engine worse on purpose, for tests; the default in every real run.
    pub test_knobs: TestKnobs,
}

/// Ways to make an engine worse on purpose, so that tests can show a measure moving with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestKnobs {
    /// Kappa waits this long before serving a batch that fired windows.
    pub kappa_window_serve_delay: Duration,
    /// Kappa sleeps this long after every batch it processes.
    pub kappa_batch_delay: Duration,
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
                let mut config = KafkaConfig::new(brokers, &format!("lk-run-{seed}-{millis}"));
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

fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |cause| RunError::Output { path: path.display().to_string(), cause }
}

/// Progress, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct RunProgress {
    /// Events generated.
    pub generated: u64,
    /// Events the engine has processed.
    pub processed: u64,
    /// Clock time since the start, ns.
    pub elapsed_ns: u64,
    /// Current schedule lag, ns.
    pub lag_ns: u64,
}

/// Which engines a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// Kappa only.
    Kappa,
    /// Lambda only.
    Lambda,
    /// Both, side by side on the same log (each in its own consumer group).
    Both,
}

impl EngineChoice {
    fn kappa(self) -> bool {
        self != EngineChoice::Lambda
    }

    fn lambda(self) -> bool {
        self != EngineChoice::Kappa
    }
}

/// An engine's served views, for sampling while it runs.
#[derive(Clone)]
enum Served {
    Kappa(Arc<ServingStore>),
    Lambda(Arc<LambdaServing>),
}

impl Served {
    fn demand_by_window(&self) -> BTreeMap<i64, u64> {
        match self {
            Served::Kappa(store) => store.active().demand_by_window(),
            Served::Lambda(serving) => serving.demand_by_window(),
        }
    }
}

/// Per engine while the generator runs: its progress counter, its throughput samples, its
/// supervisor and its crashes.
struct Probe {
    name: &'static str,
    control: Arc<JobControl>,
    series: Vec<(f64, f64)>,
    last_processed: u64,
    at_warmup: Option<(u64, u64)>,
    supervisor: Supervisor,
}

/// Completeness samples of one engine: (seconds since start, Q3 served per window).
type DemandSamples = Vec<(f64, BTreeMap<i64, u64>)>;

/// Runs the chosen engines on `scenario`, side by side on one log, and measures them.
pub fn run(
    scenario: &Scenario,
    options: &RunOptions,
    clock: Arc<dyn Clock>,
    progress: &mut dyn FnMut(RunProgress),
) -> Result<Results, RunError> {
    let Some(duration) = scenario.run.duration else {
        return Err(RunError::Invalid(format!("scenario {} has no run.duration; pass --duration", scenario.name)));
    };
    let identity = format!("lk run: scenario {}, seed {}", scenario.name, scenario.seed);
    let folder = OutputFolder::claim(&options.out_directory, &identity, options.takeover)?;
    for stale in RUN_SUBFOLDERS {
        folder.remove(stale)?;
    }
    let out = folder.path();
    let run_log = RunLog::open(&options.log, out, scenario.seed)?;
    let base = Arc::clone(&run_log.log);
    let partitions = scenario.engine.partitions;
    base.create_topic(TOPIC, partitions)?;
    let (kappa_guarantee, lambda_guarantee) = (scenario.engine.kappa_guarantee, scenario.engine.lambda_guarantee);
    let queries = QueryConfig::from_scenario(scenario);
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32);

    let mut generator = Generator::new(
        scenario,
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
    let idempotent = (options.engines.kappa() && kappa_guarantee == Guarantee::ExactlyOnce)
        || (options.engines.lambda() && lambda_guarantee == Guarantee::ExactlyOnce);
    let mut producer = Producer::new(&*base, TOPIC, idempotent)?;
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
        Arc::new(OutageLog::with_outages(Arc::clone(&base), Arc::clone(&clock), outages))
    };
    let dead_letters = |engine: &str| -> Result<Arc<DeadLetters>, RunError> {
        let path = out.join("dead-letters").join(format!("{engine}.jsonl"));
        DeadLetters::create(&path).map(Arc::new).map_err(output_error(&path))
    };
    let warmup_ns = (scenario.engine.warmup.as_nanos() as u64).min(duration.as_nanos() as u64 / 2);
    let mapping = TimeMapping {
        start_ns,
        start_event_time_us: scenario.run.start_time_us,
        time_compression: scenario.run.time_compression,
        watermark_delay_us: queries.watermark_delay_us,
        warmup_end_ns: start_ns + warmup_ns,
    };

    let sink = view_sink(scenario, "kappa", &*base)?;
    let speed_sink = view_sink(scenario, "lambda", &*base)?;
    let sink_name = |sink: &ViewSink| match sink {
        ViewSink::Direct => "direct",
        ViewSink::Transactional { .. } => "transactional",
    };
    let (kappa_sink_name, lambda_sink_name) = (sink_name(&sink), sink_name(&speed_sink));
    let mut probes = Vec::new();
    let mut sampled: Vec<(&'static str, Served)> = Vec::new();
    let paced = options.pacing == Pacing::Scheduled;
    // Over Kafka, paced, the engines (and every thread they start, their Kafka clients' among
    // them) yield to the driver, whose schedule is where every event's latency starts (see
    // `yield_to_driver`). There the broker and four clients share two cores with the driver,
    // and at equal priority the driver reached a third of rush hour's rate beside both engines;
    // yielding, it keeps the schedule. On the embedded log the driver keeps it at equal
    // priority, and yielding cost the engines their latency (rush hour side by side: Kappa p99
    // 168 ms against 9-12, Lambda 2.0 s against 0.31-0.36). Flat out, the driver would take
    // every core until the input ends, and the engines keep normal priority.
    let engines_yield = paced && run_log.log.backend() == "kafka";
    let kappa = if options.engines.kappa() {
        let config = KappaConfig {
            topic: TOPIC.to_owned(),
            group: "kappa".to_owned(),
            workers: scenario.engine.workers,
            queries,
            checkpoint_interval: scenario.engine.checkpoint_interval,
            checkpoint_directory: out.join("checkpoints").join("kappa-v1"),
            guarantee: kappa_guarantee,
            sink: sink.clone(),
            state_store: StateStore::Checkpointed,
            window_serve_delay: options.test_knobs.kappa_window_serve_delay,
            batch_delay: options.test_knobs.kappa_batch_delay,
        };
        let serving = Arc::new(ServingStore::new(partitions));
        let control = Arc::new(JobControl { dead_letters: Some(dead_letters("kappa")?), ..JobControl::default() });
        let (log, views, job_control, job_clock, job_config) =
            (Arc::clone(&log), serving.active(), Arc::clone(&control), Arc::clone(&clock), config.clone());
        let (supervisor, job) =
            Supervisor::spawn("lk-kappa-job", Arc::clone(&control), Arc::clone(&clock), move || {
                if engines_yield {
                    lk_engines::background::yield_to_driver();
                }
                run_job(
                    Arc::clone(&log),
                    &job_config,
                    Arc::clone(&views),
                    Arc::clone(&job_control),
                    Arc::clone(&job_clock),
                    |_| LatencyRecorder::new(mapping),
                )
            })
            .map_err(output_error(out))?;
        probes.push(Probe {
            name: "kappa",
            control: Arc::clone(&control),
            series: Vec::new(),
            last_processed: 0,
            at_warmup: None,
            supervisor,
        });
        sampled.push(("kappa", Served::Kappa(Arc::clone(&serving))));
        Some((job, control, serving, config))
    } else {
        None
    };
    let lambda = if options.engines.lambda() {
        let config = LambdaConfig {
            topic: TOPIC.to_owned(),
            group: "lambda".to_owned(),
            workers: scenario.engine.workers,
            queries,
            batch_interval_us: scenario.lambda.batch_interval.as_micros() as i64,
            batch_threads: scenario.lambda.batch_threads,
            final_batch_threads: cores,
            background_batch_runs: paced,
            master_directory: out.join("master"),
            flush_interval: scenario.engine.checkpoint_interval,
            guarantee: lambda_guarantee,
            sink: speed_sink.clone(),
        };
        let serving = Arc::new(LambdaServing::new(partitions, &queries));
        let control = Arc::new(JobControl { dead_letters: Some(dead_letters("lambda")?), ..JobControl::default() });
        let (log, job_serving, job_control, job_clock, job_config) =
            (Arc::clone(&log), Arc::clone(&serving), Arc::clone(&control), Arc::clone(&clock), config.clone());
        let (supervisor, job) =
            Supervisor::spawn("lk-lambda-job", Arc::clone(&control), Arc::clone(&clock), move || {
                if engines_yield {
                    lk_engines::background::yield_to_driver();
                }
                run_lambda(
                    Arc::clone(&log),
                    &job_config,
                    Arc::clone(&job_serving),
                    Arc::clone(&job_control),
                    Arc::clone(&job_clock),
                    |_| LatencyRecorder::new(mapping),
                )
            })
            .map_err(output_error(out))?;
        probes.push(Probe {
            name: "lambda",
            control: Arc::clone(&control),
            series: Vec::new(),
            last_processed: 0,
            at_warmup: None,
            supervisor,
        });
        sampled.push(("lambda", Served::Lambda(Arc::clone(&serving))));
        Some((job, control, serving, config))
    } else {
        None
    };

    // Completeness over time: a sampler reads each engine's served Q3 totals once a second.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (sampling, clock) = (Arc::clone(&sampling), Arc::clone(&clock));
        std::thread::Builder::new()
            .name("lk-sampler".to_owned())
            .spawn(move || {
                let mut samples: Vec<DemandSamples> = vec![Vec::new(); sampled.len()];
                let mut next_ns = clock.now_ns() + 1_000_000_000;
                while sampling.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                    let now = clock.now_ns();
                    if now < next_ns {
                        continue;
                    }
                    next_ns += 1_000_000_000;
                    for ((_, served), samples) in sampled.iter().zip(&mut samples) {
                        samples.push(((now - start_ns) as f64 / 1e9, served.demand_by_window()));
                    }
                }
                sampled.iter().map(|(name, _)| *name).zip(samples).collect::<BTreeMap<_, _>>()
            })
            .map_err(output_error(out))?
    };

    // The generator: open loop, a slice of about a millisecond at a time.
    let mut pacer = Pacer::new(Arc::clone(&clock), start_ns, options.pacing, scenario.run.rate_eps);
    let mut last_sample_ns = start_ns;
    // Crashes are fired, and recoveries watched, by a thread of their own (to the millisecond);
    // the other faults happen here, in the generator's loop.
    let stop_injector = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let injector = spawn_crash_injector(
        InjectorSettings {
            log: Arc::clone(&base),
            topic: TOPIC.to_owned(),
            partitions,
            start_ns,
            // A restarted engine has recovered once its lag is back to what it was before the
            // crash, or to 100 ms of input, whichever is more.
            recovered_lag: (scenario.run.rate_eps * 0.1) as u64,
        },
        Arc::clone(&clock),
        scenario.faults.clone(),
        probes
            .iter()
            .map(|probe| CrashTarget {
                name: probe.name,
                control: Arc::clone(&probe.control),
                supervisor: probe.supervisor.clone(),
            })
            .collect(),
        Arc::clone(&stop_injector),
    )
    .map_err(output_error(out))?;
    let mut governor = Governor::new(
        scenario,
        Arc::clone(&base),
        TOPIC,
        probes
            .iter()
            .map(|probe| Watched {
                name: probe.name,
                control: Arc::clone(&probe.control),
                supervisor: probe.supervisor.clone(),
                workers: scenario.engine.workers,
            })
            .collect(),
        Arc::clone(&clock),
    );
    let mut pending_faults: std::collections::VecDeque<_> =
        scenario.faults.iter().copied().filter(|fault| !matches!(fault.kind, FaultKind::Crash { .. })).collect();
    let mut fault_events: Vec<FaultEvent> = Vec::new();
    while let Some(batch) = generator.next_batch() {
        pacer.release(batch, |range| match governor.admit(range.len())? {
            Admit::Send => producer.send(&*log, batch, range),
            Admit::Drop => Ok(()),
        })?;
        let now = clock.now_ns();
        while let Some(fault) = pending_faults.front().copied() {
            if now < start_ns + fault.at.as_nanos() as u64 {
                break;
            }
            let at_seconds = (now - start_ns) as f64 / 1e9;
            match fault.kind {
                FaultKind::Crash { .. } => {}
                FaultKind::Redelivery { events } => {
                    let sent = producer.redeliver(&*log, events as usize)?;
                    fault_events.push(FaultEvent {
                        at_seconds,
                        kind: "redelivery".to_owned(),
                        detail: format!("the producer sent its last {sent} events again"),
                        duration_seconds: 0.0,
                    });
                }
                FaultKind::Outage { duration } => fault_events.push(FaultEvent {
                    at_seconds: fault.at.as_secs_f64(),
                    kind: "outage".to_owned(),
                    detail: format!("the log refused appends and stalled reads for {:.1} s", duration.as_secs_f64()),
                    duration_seconds: duration.as_secs_f64(),
                }),
                FaultKind::Overload { duration, factor } => fault_events.push(FaultEvent {
                    at_seconds: fault.at.as_secs_f64(),
                    kind: "overload".to_owned(),
                    detail: format!("the input rate was {factor}x for {:.1} s", duration.as_secs_f64()),
                    duration_seconds: duration.as_secs_f64(),
                }),
            }
            pending_faults.pop_front();
        }
        let sample = now >= last_sample_ns + 500_000_000;
        for probe in &mut probes {
            // Records consumed, not events processed: a replay after a crash is not progress.
            let processed = probe.control.consumed(partitions);
            if probe.at_warmup.is_none() && now >= mapping.warmup_end_ns {
                probe.at_warmup = Some((now, processed));
            }
            if sample {
                let rate = (processed - probe.last_processed) as f64 / ((now - last_sample_ns) as f64 / 1e9);
                probe.series.push(((now - start_ns) as f64 / 1e9, rate));
                probe.last_processed = processed;
            }
        }
        if sample {
            last_sample_ns = now;
        }
        progress(RunProgress {
            generated: generator.counts().events,
            processed: probes.iter().map(|probe| probe.control.consumed(partitions)).min().unwrap_or(0),
            elapsed_ns: now - start_ns,
            lag_ns: pacer.lag_ns,
        });
    }
    producer.finish(&*log)?;
    let input_end_ns = clock.now_ns();
    for probe in &probes {
        probe.control.input_closed.store(true, Ordering::Release);
    }
    let kappa_done = kappa.map(|(job, control, serving, config)| {
        (job.join().expect("the Kappa job thread panicked; its message is above"), control, serving, config)
    });
    let lambda_done = lambda.map(|(job, control, serving, config)| {
        (job.join().expect("the Lambda job thread panicked; its message is above"), control, serving, config)
    });
    sampling.store(false, Ordering::Release);
    let completeness_samples = sampler.join().expect("the sampler panicked");
    stop_injector.store(true, Ordering::Release);
    let (trackers, crash_events) = injector.join().expect("the crash injector panicked")?;
    fault_events.extend(crash_events);
    fault_events.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
    let generator_seconds = (input_end_ns - start_ns) as f64 / 1e9;
    let injected = generator.counts().clone();

    let oracle_started = clock.now_ns();
    let oracle = Oracle::compute(&*base, TOPIC, &queries)?;
    let oracle_seconds = (clock.now_ns() - oracle_started) as f64 / 1e9;
    let views_directory = out.join("views");
    let write_views = |engine: &str, views: &ViewSet| {
        let directory = views_directory.join(engine);
        crate::views::write_views(&directory, views, &queries).map_err(output_error(&directory))
    };
    write_views("oracle", &oracle.everything)?;
    write_views("oracle-policy", &oracle.policy)?;
    let log_bytes = base.stored_bytes();
    let throughput = |probe_name: &str, processed: u64, caught_up_ns: u64| {
        let probe = probes.iter().find(|probe| probe.name == probe_name).expect("each engine has a probe");
        let (warm_ns, warm_processed) = probe.at_warmup.unwrap_or((start_ns, 0));
        processed.saturating_sub(warm_processed) as f64 / ((caught_up_ns - warm_ns).max(1) as f64 / 1e9)
    };
    let completeness = |name: &str| {
        completeness_series(completeness_samples.get(name).map_or(&[][..], Vec::as_slice), &oracle, &queries, &mapping)
    };
    let series = |name: &str| {
        probes.iter().find(|probe| probe.name == name).map(|probe| probe.series.clone()).unwrap_or_default()
    };

    let fault_results = |name: &str, final_caught_up_ns: u64, control: &JobControl| {
        let index = probes.iter().position(|probe| probe.name == name).expect("each engine has a probe");
        let restarts = probes[index].supervisor.restarts();
        let seconds = |ns: u64| ns.saturating_sub(start_ns) as f64 / 1e9;
        let crash_list: Vec<CrashResult> = trackers[index]
            .crashes
            .iter()
            .enumerate()
            .map(|(index, crash)| {
                let restart = restarts.get(index);
                // A recovery the input's end overtook ends when the engine caught up at the end.
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
    };
    // The checker: cell by cell against the truth, then the events behind any difference, then
    // the dead letters against the oracle's malformed records.
    let check = |served: &ViewSet, truth: &ViewSet, policy: bool, control: &JobControl, guarantee: Guarantee| {
        let mut correctness = correctness_of(served, truth, &oracle, guarantee.name());
        if correctness.lost + correctness.duplicated > 0 {
            let named = lk_engines::checker::explain(&*base, TOPIC, &queries, policy, served, truth, 5)?;
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
            correctness.dead_letters_accounted = correctness.dead_letter_file_records == oracle.dead_lettered;
        }
        Ok::<_, RunError>(correctness)
    };

    let mut engines = BTreeMap::new();
    if let Some((incarnations, control, serving, config)) = kappa_done {
        let incarnations = incarnations?;
        let last = incarnations.last().expect("a supervised job runs at least once");
        let caught_up_ns =
            last.iter().map(|report| report.caught_up_ns).max().unwrap_or(input_end_ns).max(input_end_ns);
        let processed = control.consumed(partitions);
        let mut visible = new_histogram();
        let (mut cpu_seconds, mut checkpoints, mut checkpoint_bytes) = (0.0, 0, 0);
        for report in incarnations.iter().flatten() {
            visible.add(&report.observer.visible_us).expect("same bounds");
            cpu_seconds += report.cpu_seconds;
            checkpoints += report.checkpoints;
        }
        // Task counters are part of the checkpointed state: the last incarnation's are the
        // job's (an earlier one's include work that was replayed).
        let (mut late_dropped, mut dead_lettered) = (0, 0);
        for report in last {
            checkpoint_bytes += report.checkpoint_bytes;
            late_dropped += report.counters.late_dropped.iter().sum::<u64>();
            dead_lettered += report.counters.dead_lettered.iter().sum::<u64>();
        }
        let served = serving.active().snapshot();
        write_views("kappa", &served)?;
        let mut correctness = check(&served, &oracle.policy, true, &control, kappa_guarantee)?;
        correctness.late_dropped = late_dropped;
        correctness.dead_lettered = dead_lettered;
        let window_latency = window_latency(
            incarnations.iter().flatten().map(|report| &report.observer),
            &served,
            &oracle,
            late_dropped,
        );
        drop(served);
        let view_bytes = serving.active().approximate_bytes();
        let reprocess = if options.reprocess {
            reprocess_kappa(&base, &config, &serving, &oracle, out, &*clock)?
        } else {
            Reprocess::default()
        };
        let catch_up_seconds = (caught_up_ns - input_end_ns) as f64 / 1e9;
        engines.insert(
            "kappa".to_owned(),
            EngineResults {
                throughput_eps: throughput("kappa", processed, caught_up_ns),
                kept_up: catch_up_seconds < 1.0,
                catch_up_seconds,
                latency_ms: LatencySummary::of(&visible),
                window_latency,
                correctness,
                reprocess,
                cost: Cost {
                    cpu_seconds,
                    peak_rss_bytes: peak_rss_bytes(),
                    stored_bytes: log_bytes + directory_bytes(&out.join("checkpoints").join("kappa-v1")) + view_bytes,
                    checkpoint_bytes,
                    view_bytes,
                    checkpoints,
                },
                throughput_series: series("kappa"),
                completeness_series: completeness("kappa"),
                lambda: None,
                faults: fault_results("kappa", caught_up_ns, &control),
            },
        );
    }
    if let Some((incarnations, control, serving, config)) = lambda_done {
        let incarnations = incarnations?;
        let report = incarnations.last().expect("a supervised job runs at least once");
        let workers: Vec<&WorkerReport<LatencyRecorder>> =
            incarnations.iter().flat_map(|incarnation| &incarnation.workers).collect();
        let caught_up_ns =
            report.workers.iter().map(|worker| worker.caught_up_ns).max().unwrap_or(input_end_ns).max(input_end_ns);
        let processed = control.consumed(partitions);
        let mut visible = new_histogram();
        let (mut cpu_seconds, mut late_dropped, mut dead_lettered, mut seals) =
            (incarnations.iter().map(|incarnation| incarnation.writer_cpu_seconds).sum::<f64>(), 0, 0, 0);
        for worker in &workers {
            visible.add(&worker.observer.visible_us).expect("same bounds");
            cpu_seconds += worker.cpu_seconds;
            seals += worker.checkpoints;
            late_dropped += worker.counters.late_dropped.iter().sum::<u64>();
            dead_lettered += worker.counters.dead_lettered.iter().sum::<u64>();
        }
        let all_batch_runs: Vec<&lk_engines::lambda::BatchRun> =
            incarnations.iter().flat_map(|incarnation| &incarnation.batch_runs).collect();
        cpu_seconds += all_batch_runs.iter().map(|run| run.stats.cpu_seconds).sum::<f64>();
        let served = serving.snapshot();
        write_views("lambda", &served)?;
        // Lambda's batch layer counts every event, however late: its truth is the oracle's
        // views over everything, and the speed layer's late drops are corrected, not dropped.
        let mut correctness = check(&served, &oracle.everything, false, &control, lambda_guarantee)?;
        correctness.dead_lettered = dead_lettered;
        let window_latency =
            window_latency(workers.iter().map(|worker| &worker.observer), &served, &oracle, late_dropped);
        let mut before_final_batch =
            correctness_of(&report.before_final_batch, &oracle.everything, &oracle, lambda_guarantee.name());
        before_final_batch.late_dropped = late_dropped;
        before_final_batch.per_query.clear();
        let view_bytes = served.approximate_bytes();
        drop(served);
        let master_root = config.master_directory.clone();
        let master_files = lk_engines::lambda::master::MasterDataset::files_in(&master_root)
            .map_err(|error| RunError::Invalid(error.to_string()))?;
        let master = MasterResults {
            path: master_root.display().to_string(),
            files: master_files.len() as u64,
            rows: master_files.iter().map(|file| file.rows).sum(),
            bytes: master_files.iter().map(|file| file.bytes).sum(),
            hive_partitions: lk_engines::lambda::master::hive_partitions(&master_files) as u64,
        };
        let reprocess = if options.reprocess {
            let deduplicate = lambda_guarantee != Guarantee::AtLeastOnce;
            let (views, stats) = batch::compute(&master_root, &master_files, &queries, cores, deduplicate)
                .map_err(|error| RunError::Engine(error.into()))?;
            let mismatched: u64 =
                views.compare_with(&oracle.everything).values().map(|query| query.mismatched_windows).sum();
            Reprocess {
                events: stats.rows,
                seconds: stats.seconds,
                events_per_second: stats.rows as f64 / stats.seconds.max(1e-9),
                correct: mismatched == 0,
                mismatched_windows: mismatched,
            }
        } else {
            Reprocess::default()
        };
        let batch_runs: Vec<BatchRunResults> = all_batch_runs
            .iter()
            .map(|run| BatchRunResults {
                cutoff_at_seconds: run.cutoff_at_seconds,
                files: run.stats.files,
                rows: run.stats.rows,
                events: run.stats.events,
                seconds: run.stats.seconds,
                events_per_second: run.stats.rows as f64 / run.stats.seconds.max(1e-9),
                cpu_seconds: run.stats.cpu_seconds,
                cutoff_to_served_seconds: run.cutoff_to_served_seconds,
                cells_corrected: run.corrected.mismatched_windows,
                contributions_added: run.corrected.lost,
                contributions_removed: run.corrected.duplicated,
                examples: run.corrected.examples.clone(),
                last: run.last,
            })
            .collect();
        let scheduled = batch_runs.iter().filter(|run| !run.last);
        let lambda_results = LambdaResults {
            batch_interval_seconds: scenario.lambda.batch_interval.as_secs_f64(),
            batch_runs_delayed: incarnations.iter().map(|incarnation| incarnation.batch_runs_delayed).sum(),
            batch_seconds_max: batch_runs.iter().map(|run| run.seconds).fold(0.0, f64::max),
            batch_events_per_second: batch_runs.last().map_or(0.0, |run| run.events_per_second),
            staleness_seconds_max: incarnations
                .iter()
                .map(|incarnation| incarnation.staleness_seconds_max)
                .fold(0.0, f64::max),
            staleness_seconds_mean: report.staleness_seconds_mean,
            runs_correcting: scheduled.clone().filter(|run| run.cells_corrected > 0).count() as u64,
            cells_corrected: scheduled.clone().map(|run| run.cells_corrected).sum(),
            contributions_corrected: scheduled.map(|run| run.contributions_added + run.contributions_removed).sum(),
            before_final_batch,
            master: master.clone(),
            code_lines: lk_engines::code_lines().into_iter().map(|(part, lines)| (part.to_owned(), lines)).collect(),
            batch_runs,
        };
        let catch_up_seconds = (caught_up_ns - input_end_ns) as f64 / 1e9;
        engines.insert(
            "lambda".to_owned(),
            EngineResults {
                throughput_eps: throughput("lambda", processed, caught_up_ns),
                kept_up: catch_up_seconds < 1.0,
                catch_up_seconds,
                latency_ms: LatencySummary::of(&visible),
                window_latency,
                correctness,
                reprocess,
                cost: Cost {
                    cpu_seconds,
                    peak_rss_bytes: peak_rss_bytes(),
                    stored_bytes: log_bytes + master.bytes + view_bytes,
                    checkpoint_bytes: 0,
                    view_bytes,
                    checkpoints: seals,
                },
                throughput_series: series("lambda"),
                completeness_series: completeness("lambda"),
                lambda: Some(lambda_results),
                faults: fault_results("lambda", caught_up_ns, &control),
            },
        );
    }

    let records_appended = producer.counters.appended;
    let backpressure = governor.finish();
    let results = Results {
        schema_version: SCHEMA_VERSION,
        lk_version: env!("CARGO_PKG_VERSION").to_owned(),
        scenario: ScenarioSummary {
            name: scenario.name.clone(),
            seed: scenario.seed,
            description: scenario.description.clone(),
            rate_eps: scenario.run.rate_eps,
            duration_seconds: duration.as_secs_f64(),
            partitions,
            time_compression: scenario.run.time_compression,
            watermark_delay_ms: queries.watermark_delay_us as f64 / 1000.0,
            allowed_lateness_ms: queries.allowed_lateness_us as f64 / 1000.0,
        },
        environment: Environment {
            cpus: cores as usize,
            os: std::env::consts::OS.to_owned(),
            log_backend: log.backend().to_owned(),
            paced: options.pacing == Pacing::Scheduled,
            kappa_sink: kappa_sink_name.to_owned(),
            lambda_sink: lambda_sink_name.to_owned(),
        },
        generator: GeneratorResults {
            events: injected.events,
            target_rate_eps: scenario.run.rate_eps,
            achieved_rate_eps: injected.events as f64 / generator_seconds,
            log_append_rate_eps: records_appended as f64 / generator_seconds,
            max_schedule_lag_ms: pacer.max_lag_ns as f64 / 1e6,
            // Every event was appended, dropped as a re-send, or shed by backpressure on purpose.
            kept_up: pacer.max_lag_ns < 100_000_000
                && records_appended + producer.counters.duplicates_dropped + backpressure.dropped_events
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
        faults: fault_events,
        backpressure,
        repetitions: Vec::new(),
    };
    let path = out.join("results.json");
    let json = serde_json::to_string_pretty(&results).expect("results serialise") + "\n";
    std::fs::write(&path, json).map_err(output_error(&path))?;
    Ok(results)
}

/// An engine's window latencies from its workers' recorders, and what they cost in
/// completeness: its final views against the oracle over every event.
fn window_latency<'a>(
    recorders: impl Iterator<Item = &'a LatencyRecorder>,
    served: &ViewSet,
    oracle: &Oracle,
    late_dropped: u64,
) -> WindowLatency {
    let (mut processing, mut event_time, mut revised) = (new_histogram(), SignedHistogram::default(), 0);
    for recorder in recorders {
        processing.add(&recorder.processing_us).expect("same bounds");
        event_time.add(&recorder.event_time);
        revised += recorder.revised;
    }
    let windows_incomplete = served
        .compare_with(&oracle.everything)
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
    let everything: u64 = oracle.everything.compare_with(&oracle.everything).values().map(|query| query.expected).sum();
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
    correctness.verdict = if correctness.lost == 0 && correctness.duplicated == 0 {
        "exactly-once held".to_owned()
    } else {
        format!("not exactly-once: {} lost, {} duplicated", correctness.lost, correctness.duplicated)
    };
    correctness
}

/// The sink an engine (`kappa` or `lambda`, for its speed layer) uses: `auto` is
/// transactional on Kafka under exactly-once (what exactly-once means there), direct otherwise.
fn view_sink(scenario: &Scenario, engine: &str, log: &dyn Log) -> Result<ViewSink, RunError> {
    let (choice, guarantee, output_topic) = match engine {
        "kappa" => (scenario.engine.kappa_sink, scenario.engine.kappa_guarantee, "kappa-views"),
        _ => (scenario.engine.lambda_sink, scenario.engine.lambda_guarantee, "lambda-speed-views"),
    };
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
            "engine.{engine}_sink = \"transactional\" needs {} to run exactly-once, not {}; change the guarantee or \
             the sink",
            if engine == "kappa" { "Kappa" } else { "Lambda" },
            guarantee.name()
        ))),
    }
}

/// Kappa reprocessing: a new job version from offset 0 into a new view version, then the swap.
fn reprocess_kappa(
    log: &Arc<dyn Log>,
    config: &KappaConfig,
    serving: &ServingStore,
    oracle: &Oracle,
    out: &Path,
    clock: &dyn Clock,
) -> Result<Reprocess, RunError> {
    let version = serving.new_version();
    let config = KappaConfig {
        group: format!("kappa-v{}", version.number),
        checkpoint_directory: out.join("checkpoints").join(format!("kappa-v{}", version.number)),
        // Reprocessing is a catch-up job: it gets every core, and checkpoints only at its end.
        checkpoint_interval: Duration::from_secs(3600),
        // Into a view version of its own, directly: it is swapped in whole once caught up.
        sink: ViewSink::Direct,
        window_serve_delay: Duration::ZERO,
        batch_delay: Duration::ZERO,
        workers: config.workers.max(std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32)),
        ..config.clone()
    };
    let control = Arc::new(JobControl::default());
    control.input_closed.store(true, Ordering::Release);
    let started = clock.now_ns();
    let reports = run_job(
        Arc::clone(log),
        &config,
        Arc::clone(&version),
        control,
        Arc::new(lk_simulator::time::MonotonicClock::new()),
        |_| NoObserver,
    )?;
    serving.swap_to(version.number);
    let seconds = (clock.now_ns() - started) as f64 / 1e9;
    let events: u64 = reports.iter().map(|report| report.counters.records).sum();
    let rebuilt = serving.active().snapshot();
    let mismatched: u64 = rebuilt.compare_with(&oracle.policy).values().map(|query| query.mismatched_windows).sum();
    Ok(Reprocess {
        events,
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        correct: mismatched == 0,
        mismatched_windows: mismatched,
    })
}
