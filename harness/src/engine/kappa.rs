//! lk's Kappa engine at the seam: one supervised stream job over the log into a versioned
//! serving store, judged against the oracle's policy views (what its watermark accepts), and
//! reprocessed by replaying the log into a new view version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lk_engines::kappa::{KappaConfig, StateStore, run_job};
use lk_engines::log::Log;
use lk_engines::runtime::job::{JobControl, NoObserver, WorkerReport};
use lk_engines::sink::serving::ServingStore;
use lk_engines::sink::transactional::ViewSink;
use lk_engines::verify::oracle::{Oracle, Truth};
use lk_simulator::time::Clock;

use super::{Engine, EngineKind, Finished, Judge, Observed, Running, Setup, supervise, view_sink};
use crate::faults::{SupervisedJob, Supervisor};
use crate::metrics::{LatencyRecorder, LatencySummary, StageRecorder, directory_bytes, new_histogram, peak_rss_bytes};
use crate::results::{Cost, EngineResults, Reprocess};
use crate::run::{RunError, TOPIC};
use crate::scenario::{CrashPoint, FaultKind};

/// The Kappa engine.
pub struct Kappa;

/// Kappa while the input runs.
struct KappaRunning {
    job: SupervisedJob<Vec<WorkerReport<LatencyRecorder>>>,
    control: Arc<JobControl>,
    supervisor: Supervisor,
    serving: Arc<ServingStore>,
    config: KappaConfig,
    /// The log it reads and where it writes, for a race's replay.
    log: Arc<dyn Log>,
    out: std::path::PathBuf,
    partitions: u32,
}

/// Kappa once its job has ended.
struct KappaFinished {
    incarnations: Result<Vec<Vec<WorkerReport<LatencyRecorder>>>, RunError>,
    control: Arc<JobControl>,
    serving: Arc<ServingStore>,
    config: KappaConfig,
}

impl Engine for Kappa {
    fn kind(&self) -> EngineKind {
        EngineKind::Kappa
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Box<dyn Running>, RunError> {
        let scenario = setup.scenario;
        let config =
            KappaConfig {
                topic: TOPIC.to_owned(),
                group: EngineKind::Kappa.name().to_owned(),
                workers: scenario.engine.workers,
                queries: setup.queries,
                checkpoint_interval: scenario.engine.checkpoint_interval,
                checkpoint_directory: setup.out.join("checkpoints").join("kappa-v1"),
                guarantee: EngineKind::Kappa.guarantee(scenario),
                sink: view_sink(scenario, EngineKind::Kappa, &*setup.base)?,
                state_store: if setup.options.test_knobs.kappa_memory_state_store {
                    StateStore::Memory
                } else {
                    StateStore::Checkpointed
                },
                window_serve_delay: setup.options.test_knobs.kappa_window_serve_delay,
                batch_delay: setup.options.test_knobs.kappa_batch_delay,
                record_delay: setup.options.test_knobs.kappa_rate_limit_eps.map_or(Duration::ZERO, |limit| {
                    Duration::from_secs_f64(f64::from(scenario.engine.workers) / limit)
                }),
            };
        let serving = Arc::new(ServingStore::new(scenario.engine.partitions));
        let control = Arc::new(JobControl {
            dead_letters: Some(setup.dead_letters(EngineKind::Kappa)?),
            ..JobControl::default()
        });
        let (log, views, job_control, job_clock, job_config) =
            (Arc::clone(&setup.log), serving.active(), Arc::clone(&control), Arc::clone(&setup.clock), config.clone());
        let (mapping, timeline) = (setup.mapping, Arc::clone(&setup.timeline));
        // Only a run that shows its figures live (`--metrics`) pays for the live histogram.
        let interval = setup.live.interval_latency_of(EngineKind::Kappa.name());
        let live_latency = setup.options.live.as_ref().map(|_| setup.live.latency_of(EngineKind::Kappa.name()));
        let (supervisor, job) = supervise(setup, EngineKind::Kappa, &control, move || {
            run_job(
                Arc::clone(&log),
                &job_config,
                Arc::clone(&views),
                Arc::clone(&job_control),
                Arc::clone(&job_clock),
                |_| {
                    LatencyRecorder::new(mapping, Some(Arc::clone(&timeline)))
                        .with_live(live_latency.clone())
                        .with_interval(Arc::clone(&interval))
                },
            )
        })?;
        Ok(Box::new(KappaRunning {
            job,
            control,
            supervisor,
            serving,
            config,
            log: Arc::clone(&setup.log),
            out: setup.out.to_owned(),
            partitions: scenario.engine.partitions,
        }))
    }
}

impl Running for KappaRunning {
    fn kind(&self) -> EngineKind {
        EngineKind::Kappa
    }

    fn control(&self) -> &Arc<JobControl> {
        &self.control
    }

    fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    fn demand_sampler(&self) -> Box<dyn Fn() -> BTreeMap<i64, u64> + Send> {
        let serving = Arc::clone(&self.serving);
        Box::new(move || serving.active().demand_by_window())
    }

    fn reprocess_racer(&self) -> Option<crate::live::Racer> {
        let (log, live_config, out, partitions) =
            (Arc::clone(&self.log), self.config.clone(), self.out.clone(), self.partitions);
        let races = Arc::new(std::sync::atomic::AtomicU32::new(0));
        Some(Arc::new(move || {
            let race = races.fetch_add(1, Ordering::Relaxed) + 1;
            // Its own views and checkpoints: what the live job serves is untouched.
            let config = KappaConfig {
                group: format!("kappa-race-{race}"),
                checkpoint_directory: out.join("checkpoints").join(format!("kappa-race-{race}")),
                checkpoint_interval: Duration::from_secs(3600),
                sink: ViewSink::Direct,
                window_serve_delay: Duration::ZERO,
                batch_delay: Duration::ZERO,
                record_delay: Duration::ZERO,
                ..live_config.clone()
            };
            let control = Arc::new(JobControl::default());
            // It replays what the log holds and stops once caught up with it.
            control.input_closed.store(true, Ordering::Release);
            let clock: Arc<dyn Clock> = Arc::new(lk_simulator::time::MonotonicClock::new());
            let started = clock.now_ns();
            let reports = run_job(
                Arc::clone(&log),
                &config,
                ServingStore::new(partitions).active(),
                control,
                Arc::clone(&clock),
                |_| NoObserver,
            )
            .map_err(|error| error.to_string())?;
            let _ = std::fs::remove_dir_all(&config.checkpoint_directory);
            Ok(crate::live::RaceOutcome {
                records: reports.iter().map(|report| report.counters.records).sum(),
                seconds: (clock.now_ns() - started) as f64 / 1e9,
            })
        }))
    }

    fn join(self: Box<Self>) -> Box<dyn Finished> {
        let KappaRunning { job, control, serving, config, .. } = *self;
        let incarnations = job.join().expect("the Kappa job thread panicked; its message is above");
        Box::new(KappaFinished { incarnations: incarnations.map_err(RunError::from), control, serving, config })
    }
}

impl Finished for KappaFinished {
    fn judge(self: Box<Self>, judge: &Judge<'_>, observed: Observed) -> Result<EngineResults, RunError> {
        let KappaFinished { incarnations, control, serving, config } = *self;
        let incarnations = incarnations?;
        let partitions = judge.scenario.engine.partitions;
        let last = incarnations.last().expect("a supervised job runs at least once");
        let caught_up_ns =
            last.iter().map(|report| report.caught_up_ns).max().unwrap_or(judge.input_end_ns).max(judge.input_end_ns);
        let processed = control.consumed(partitions);
        let mut visible = new_histogram();
        let mut stages = StageRecorder::new(None);
        let (mut cpu_seconds, mut checkpoints, mut checkpoint_bytes) = (0.0, 0, 0);
        for report in incarnations.iter().flatten() {
            visible.add(&report.observer.visible_us).expect("same bounds");
            stages.add(&report.observer.stages);
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
        judge.write_views(EngineKind::Kappa.name(), &served)?;
        // Kappa drops late events by design: its truth is the oracle's policy views.
        let guarantee = EngineKind::Kappa.guarantee(judge.scenario);
        let mut correctness = judge.check(&served, &judge.oracle.policy, Truth::Policy, &control, guarantee)?;
        correctness.late_dropped = late_dropped;
        correctness.dead_lettered = dead_lettered;
        let window_latency =
            judge.window_latency(incarnations.iter().flatten().map(|report| &report.observer), &served, late_dropped);
        drop(served);
        let view_bytes = serving.active().approximate_bytes();
        let reprocess = if judge.options.reprocess {
            let crashes = judge
                .scenario
                .faults
                .iter()
                .filter(|fault| {
                    matches!(fault.kind, FaultKind::Crash { target, point: CrashPoint::Reprocess }
                        if target.hits(EngineKind::Kappa))
                })
                .count() as u64;
            reprocess(judge.base, &config, &serving, judge.oracle, judge.out, &**judge.clock, crashes)?
        } else {
            Reprocess::default()
        };
        let catch_up_seconds = (caught_up_ns - judge.input_end_ns) as f64 / 1e9;
        let checkpoints_path = judge.out.join("checkpoints").join("kappa-v1");
        Ok(EngineResults {
            throughput_eps: judge.throughput(&observed, processed, caught_up_ns),
            kept_up: catch_up_seconds < 1.0,
            catch_up_seconds,
            latency_ms: LatencySummary::of(&visible),
            latency_stages: stages.summary(),
            window_latency,
            correctness,
            reprocess,
            cost: Cost {
                cpu_seconds,
                peak_rss_bytes: peak_rss_bytes(),
                log_bytes: judge.log_bytes,
                stored_bytes: judge.log_bytes + directory_bytes(&checkpoints_path) + view_bytes,
                checkpoint_bytes,
                view_bytes,
                checkpoints,
            },
            faults: judge.faults(&observed, caught_up_ns, &control),
            throughput_series: observed.throughput_series,
            completeness_series: observed.completeness_series,
            latency_series: observed.latency_series,
            lambda: None,
            external: None,
        })
    }
}

/// Kappa reprocessing: a new job version from offset 0 into a new view version, then the swap.
fn reprocess(
    log: &Arc<dyn Log>,
    config: &KappaConfig,
    serving: &ServingStore,
    oracle: &Oracle,
    out: &Path,
    clock: &dyn Clock,
    crashes: u64,
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
        record_delay: Duration::ZERO,
        workers: config.workers.max(std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32)),
        ..config.clone()
    };
    let control = Arc::new(JobControl::default());
    control.input_closed.store(true, Ordering::Release);
    let records: u64 = log
        .end_offsets(TOPIC)?
        .iter()
        .zip(0..)
        .map(|(end, partition)| end - log.start_offset(TOPIC, partition).unwrap_or(0).min(*end))
        .sum();
    let started = clock.now_ns();
    let mut restarts = 0;
    let reports = loop {
        // The i-th crash lands after i/(n+1) of the records (counted over every incarnation).
        control.reset_crash();
        if u64::from(restarts) < crashes {
            let after = records * (u64::from(restarts) + 1) / (crashes + 1);
            control.crash_after_events.store(after.max(1), Ordering::Release);
        }
        let reports = run_job(
            Arc::clone(log),
            &config,
            Arc::clone(&version),
            Arc::clone(&control),
            Arc::new(lk_simulator::time::MonotonicClock::new()),
            |_| NoObserver,
        )?;
        if !control.crashed() {
            break reports;
        }
        // Started again into the same version, from its checkpoint (none before the end).
        restarts += 1;
    };
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
        restarts,
    })
}
