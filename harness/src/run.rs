//! `lk run`: the generator into the log and the engines on it, concurrently, then the oracle,
//! the comparison, reprocessing and cost, into [`Results`].
//!
//! The generator runs on the calling thread, open loop, sending each slice of about a
//! millisecond of events as soon as it is due; the engines run on their own threads and read the
//! log as it grows. Nothing here decides an engine's answer: it only feeds, times and compares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lk_engines::embedded::{EmbeddedLog, EmbeddedLogConfig};
use lk_engines::kappa::{EngineError, JobControl, KappaConfig, NoObserver, run_job};
use lk_engines::log::{Log, LogError};
use lk_engines::oracle::Oracle;
use lk_engines::queries::{Query, QueryConfig, ViewSet};
use lk_engines::serving::ServingStore;
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::scenario::Scenario;
use lk_simulator::simulate::{Pacer, Pacing};
use lk_simulator::time::Clock;

use crate::metrics::{LatencyRecorder, LatencySummary, TimeMapping, directory_bytes, new_histogram, peak_rss_bytes};
use crate::producer::Producer;
use crate::results::{
    Correctness, Cost, EngineResults, Environment, GeneratorResults, OracleResults, Reprocess, Results, SCHEMA_VERSION,
    ScenarioSummary,
};

/// The input topic.
pub const TOPIC: &str = "ride-events";

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
    #[error("{path}: {source}")]
    Output {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
}

fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Output { path: path.display().to_string(), source }
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

/// Runs the Kappa engine on `scenario` and measures it. (The Lambda engine joins it here.)
pub fn run(
    scenario: &Scenario,
    options: &RunOptions,
    clock: Arc<dyn Clock>,
    progress: &mut dyn FnMut(RunProgress),
) -> Result<Results, RunError> {
    let Some(duration) = scenario.run.duration else {
        return Err(RunError::Invalid(format!("scenario {} has no run.duration; pass --duration", scenario.name)));
    };
    let out = &options.out_directory;
    for stale in ["log", "checkpoints"] {
        let path = out.join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(output_error(&path))?;
        }
    }
    std::fs::create_dir_all(out).map_err(output_error(out))?;
    let log: Arc<EmbeddedLog> = Arc::new(EmbeddedLog::open(&out.join("log"), EmbeddedLogConfig::default())?);
    let partitions = scenario.engine.partitions;
    log.create_topic(TOPIC, partitions)?;
    let queries = QueryConfig::from_scenario(scenario);
    let serving = ServingStore::new(partitions);
    let kappa_config = KappaConfig {
        topic: TOPIC.to_owned(),
        group: "kappa".to_owned(),
        workers: scenario.engine.workers,
        queries,
        checkpoint_interval: scenario.engine.checkpoint_interval,
        checkpoint_directory: out.join("checkpoints").join("kappa-v1"),
    };

    let mut generator = Generator::new(
        scenario,
        GeneratorOptions { threads: 1, limit_events: None, limit_due_ns: Some(duration.as_nanos() as u64) },
    );
    let mut producer = Producer::new(&*log, TOPIC, true)?;
    let start_ns = clock.now_ns();
    let warmup_ns = (scenario.engine.warmup.as_nanos() as u64).min(duration.as_nanos() as u64 / 2);
    let mapping = TimeMapping {
        start_ns,
        start_event_time_us: scenario.run.start_time_us,
        time_compression: scenario.run.time_compression,
        watermark_delay_us: queries.watermark_delay_us,
        warmup_end_ns: start_ns + warmup_ns,
    };
    let control = Arc::new(JobControl::default());
    let job = {
        let (log, views, control, clock, config) = (
            Arc::clone(&log) as Arc<dyn Log>,
            serving.active(),
            Arc::clone(&control),
            Arc::clone(&clock),
            kappa_config.clone(),
        );
        std::thread::Builder::new()
            .name("lk-kappa-job".to_owned())
            .spawn(move || run_job(log, &config, views, control, clock, |_| LatencyRecorder::new(mapping)))
            .map_err(output_error(out))?
    };

    // The generator: open loop, a slice of about a millisecond at a time.
    let mut pacer = Pacer::new(Arc::clone(&clock), start_ns, options.pacing, scenario.run.rate_eps);
    let mut series = Vec::new();
    let (mut last_sample_ns, mut last_sample_processed) = (start_ns, 0u64);
    let mut processed_at_warmup: Option<(u64, u64)> = None;
    while let Some(batch) = generator.next_batch() {
        pacer.release(batch, |range| producer.send(&*log, batch, range))?;
        let now = clock.now_ns();
        let processed = control.events_processed.load(Ordering::Relaxed);
        if processed_at_warmup.is_none() && now >= mapping.warmup_end_ns {
            processed_at_warmup = Some((now, processed));
        }
        if now >= last_sample_ns + 500_000_000 {
            let rate = (processed - last_sample_processed) as f64 / ((now - last_sample_ns) as f64 / 1e9);
            series.push(((now - start_ns) as f64 / 1e9, rate));
            (last_sample_ns, last_sample_processed) = (now, processed);
        }
        progress(RunProgress {
            generated: generator.counts().events,
            processed,
            elapsed_ns: now - start_ns,
            lag_ns: pacer.lag_ns,
        });
    }
    let input_end_ns = clock.now_ns();
    control.input_closed.store(true, Ordering::Release);
    let reports = job.join().expect("the Kappa job thread panicked; its message is above")?;
    // Caught up when the last worker had read everything, before the final flush and checkpoint.
    let caught_up_ns = reports.iter().map(|report| report.caught_up_ns).max().unwrap_or(input_end_ns).max(input_end_ns);
    let processed = control.events_processed.load(Ordering::Relaxed);
    let (warm_ns, warm_processed) = processed_at_warmup.unwrap_or((start_ns, 0));
    let throughput_eps = (processed - warm_processed) as f64 / ((caught_up_ns - warm_ns).max(1) as f64 / 1e9);
    let generator_seconds = (input_end_ns - start_ns) as f64 / 1e9;
    let injected = generator.counts().clone();

    let (mut visible, mut windows) = (new_histogram(), new_histogram());
    let (mut cpu_seconds, mut checkpoints, mut checkpoint_bytes, mut late_dropped, mut dead_lettered) =
        (0.0, 0, 0, 0, 0);
    for report in &reports {
        visible.add(&report.observer.visible_us).expect("same bounds");
        windows.add(&report.observer.window_us).expect("same bounds");
        cpu_seconds += report.cpu_seconds;
        checkpoints += report.checkpoints;
        checkpoint_bytes += report.checkpoint_bytes;
        late_dropped += report.counters.late_dropped.iter().sum::<u64>();
        dead_lettered += report.counters.dead_lettered.iter().sum::<u64>();
    }

    let oracle_started = clock.now_ns();
    let oracle = Oracle::compute(&*log, TOPIC, &queries)?;
    let oracle_seconds = (clock.now_ns() - oracle_started) as f64 / 1e9;
    let served = serving.active().snapshot();
    let mut correctness = correctness_of(&served, &oracle, "exactly-once");
    correctness.late_dropped = late_dropped;
    correctness.dead_lettered = dead_lettered;
    let view_bytes = serving.active().approximate_bytes();

    let reprocess = if options.reprocess {
        reprocess_kappa(&log, &kappa_config, &serving, &oracle, out, &*clock)?
    } else {
        Reprocess::default()
    };

    let catch_up_seconds = (caught_up_ns - input_end_ns) as f64 / 1e9;
    let log_bytes = log.stored_bytes();
    let kappa = EngineResults {
        throughput_eps,
        kept_up: catch_up_seconds < 1.0,
        catch_up_seconds,
        latency_ms: LatencySummary::of(&visible),
        window_latency_ms: LatencySummary::of(&windows),
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
        throughput_series: series,
    };
    let records_appended = producer.counters.appended;
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
            cpus: std::thread::available_parallelism().map_or(1, |count| count.get()),
            os: std::env::consts::OS.to_owned(),
            log_backend: log.backend().to_owned(),
            paced: options.pacing == Pacing::Scheduled,
        },
        generator: GeneratorResults {
            events: injected.events,
            target_rate_eps: scenario.run.rate_eps,
            achieved_rate_eps: injected.events as f64 / generator_seconds,
            log_append_rate_eps: records_appended as f64 / generator_seconds,
            max_schedule_lag_ms: pacer.max_lag_ns as f64 / 1e6,
            kept_up: pacer.max_lag_ns < 100_000_000
                && records_appended + producer.counters.duplicates_dropped == injected.events,
            records_appended,
            duplicates_dropped: producer.counters.duplicates_dropped,
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
        engines: BTreeMap::from([("kappa".to_owned(), kappa)]),
    };
    let path = out.join("results.json");
    let json = serde_json::to_string_pretty(&results).expect("results serialise") + "\n";
    std::fs::write(&path, json).map_err(output_error(&path))?;
    Ok(results)
}

/// Compares served views with the oracle's policy views.
pub fn correctness_of(served: &ViewSet, oracle: &Oracle, guarantee: &str) -> Correctness {
    let per_query = served.compare_with(&oracle.policy);
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
    correctness.completeness =
        if everything == 0 { 1.0 } else { (correctness.observed - correctness.duplicated) as f64 / everything as f64 };
    correctness
}

/// Kappa reprocessing: a new job version from offset 0 into a new view version, then the swap.
fn reprocess_kappa(
    log: &Arc<EmbeddedLog>,
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
        workers: config.workers.max(std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32)),
        ..config.clone()
    };
    let control = Arc::new(JobControl::default());
    control.input_closed.store(true, Ordering::Release);
    let started = clock.now_ns();
    let reports = run_job(
        Arc::clone(log) as Arc<dyn Log>,
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
