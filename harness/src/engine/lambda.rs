//! lk's Lambda engine at the seam: the master dataset, the speed layer and the scheduled batch
//! runs as one supervised job, judged against the oracle over every event (its batch layer
//! counts late events), and reprocessed by rerunning the batch job over the whole master
//! dataset.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::scenario::Guarantee;
use lk_engines::lambda::{BatchRun, LambdaConfig, LambdaReport, LambdaServing, batch, run_lambda};
use lk_engines::runtime::job::{JobControl, WorkerReport};
use lk_engines::verify::oracle::Truth;

use super::{Engine, EngineKind, Finished, Judge, Observed, Running, Setup, supervise, view_sink};
use crate::faults::{SupervisedJob, Supervisor};
use crate::metrics::{LatencyRecorder, LatencySummary, StageRecorder, new_histogram, peak_rss_bytes};
use crate::results::{BatchRunResults, Cost, EngineResults, LambdaResults, MasterResults, Reprocess};
use crate::run::{RunError, TOPIC, correctness_of};

/// The Lambda engine.
pub struct Lambda;

/// Lambda while the input runs.
struct LambdaRunning {
    job: SupervisedJob<LambdaReport<LatencyRecorder>>,
    control: Arc<JobControl>,
    supervisor: Supervisor,
    serving: Arc<LambdaServing>,
    config: LambdaConfig,
}

/// Lambda once its job has ended.
struct LambdaFinished {
    incarnations: Result<Vec<LambdaReport<LatencyRecorder>>, RunError>,
    control: Arc<JobControl>,
    serving: Arc<LambdaServing>,
    config: LambdaConfig,
}

impl Engine for Lambda {
    fn kind(&self) -> EngineKind {
        EngineKind::Lambda
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Box<dyn Running>, RunError> {
        let scenario = setup.scenario;
        let config = LambdaConfig {
            topic: TOPIC.to_owned(),
            group: EngineKind::Lambda.name().to_owned(),
            workers: scenario.engine.workers,
            queries: setup.queries,
            batch_interval_us: scenario.lambda.batch_interval.as_micros() as i64,
            batch_threads: scenario.lambda.batch_threads,
            final_batch_threads: setup.cores,
            background_batch_runs: setup.options.pacing == lk_simulator::simulate::Pacing::Scheduled,
            master_directory: setup.out.join("master"),
            flush_interval: scenario.engine.checkpoint_interval,
            guarantee: EngineKind::Lambda.guarantee(scenario),
            sink: view_sink(scenario, EngineKind::Lambda, &*setup.base)?,
            forget_master_on_restart: setup.options.test_knobs.lambda_forget_master_on_restart,
        };
        let serving = Arc::new(LambdaServing::new(scenario.engine.partitions, &setup.queries));
        let control = Arc::new(JobControl {
            dead_letters: Some(setup.dead_letters(EngineKind::Lambda)?),
            ..JobControl::default()
        });
        let (log, job_serving, job_control, job_clock, job_config) = (
            Arc::clone(&setup.log),
            Arc::clone(&serving),
            Arc::clone(&control),
            Arc::clone(&setup.clock),
            config.clone(),
        );
        let (mapping, timeline) = (setup.mapping, Arc::clone(&setup.timeline));
        // Only a run that shows its figures live (`--metrics`) pays for the live histogram.
        let interval = setup.live.interval_latency_of(EngineKind::Lambda.name());
        let live_latency = setup.options.live.as_ref().map(|_| setup.live.latency_of(EngineKind::Lambda.name()));
        let (supervisor, job) = supervise(setup, EngineKind::Lambda, &control, move || {
            run_lambda(
                Arc::clone(&log),
                &job_config,
                Arc::clone(&job_serving),
                Arc::clone(&job_control),
                Arc::clone(&job_clock),
                |_| {
                    LatencyRecorder::new(mapping, Some(Arc::clone(&timeline)))
                        .with_live(live_latency.clone())
                        .with_interval(Arc::clone(&interval))
                },
            )
        })?;
        Ok(Box::new(LambdaRunning { job, control, supervisor, serving, config }))
    }
}

impl Running for LambdaRunning {
    fn kind(&self) -> EngineKind {
        EngineKind::Lambda
    }

    fn control(&self) -> &Arc<JobControl> {
        &self.control
    }

    fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    fn demand_sampler(&self) -> Box<dyn Fn() -> BTreeMap<i64, u64> + Send> {
        let serving = Arc::clone(&self.serving);
        Box::new(move || serving.demand_by_window())
    }

    fn reprocess_racer(&self) -> Option<crate::live::Racer> {
        let config = self.config.clone();
        let threads = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32);
        Some(Arc::new(move || {
            // Its own views, from the master dataset's committed files as they are now.
            let root = &config.master_directory;
            let files = lk_engines::lambda::master::MasterDataset::files_in(root).map_err(|error| error.to_string())?;
            let deduplicate = config.guarantee != Guarantee::AtLeastOnce;
            let (_, stats) = batch::compute(root, &files, &config.queries, threads, deduplicate)
                .map_err(|error| error.to_string())?;
            Ok(crate::live::RaceOutcome { records: stats.rows, seconds: stats.seconds })
        }))
    }

    fn join(self: Box<Self>) -> Box<dyn Finished> {
        let LambdaRunning { job, control, serving, config, .. } = *self;
        let incarnations = job.join().expect("the Lambda job thread panicked; its message is above");
        Box::new(LambdaFinished { incarnations: incarnations.map_err(RunError::from), control, serving, config })
    }
}

impl Finished for LambdaFinished {
    fn judge(self: Box<Self>, judge: &Judge<'_>, observed: Observed) -> Result<EngineResults, RunError> {
        let LambdaFinished { incarnations, control, serving, config } = *self;
        let incarnations = incarnations?;
        let guarantee = EngineKind::Lambda.guarantee(judge.scenario);
        let report = incarnations.last().expect("a supervised job runs at least once");
        let workers: Vec<&WorkerReport<LatencyRecorder>> =
            incarnations.iter().flat_map(|incarnation| &incarnation.workers).collect();
        let caught_up_ns = report
            .workers
            .iter()
            .map(|worker| worker.caught_up_ns)
            .max()
            .unwrap_or(judge.input_end_ns)
            .max(judge.input_end_ns);
        let processed = control.consumed(judge.scenario.engine.partitions);
        let mut visible = new_histogram();
        let mut stages = StageRecorder::new(None);
        let (mut cpu_seconds, mut late_dropped, mut dead_lettered, mut seals) =
            (incarnations.iter().map(|incarnation| incarnation.writer_cpu_seconds).sum::<f64>(), 0, 0, 0);
        for worker in &workers {
            visible.add(&worker.observer.visible_us).expect("same bounds");
            stages.add(&worker.observer.stages);
            cpu_seconds += worker.cpu_seconds;
            seals += worker.checkpoints;
            late_dropped += worker.counters.late_dropped.iter().sum::<u64>();
            dead_lettered += worker.counters.dead_lettered.iter().sum::<u64>();
        }
        let all_batch_runs: Vec<&BatchRun> =
            incarnations.iter().flat_map(|incarnation| &incarnation.batch_runs).collect();
        cpu_seconds += all_batch_runs.iter().map(|run| run.stats.cpu_seconds).sum::<f64>();
        let served = serving.snapshot();
        judge.write_views(EngineKind::Lambda.name(), &served)?;
        // Lambda's batch layer counts every event, however late: its truth is the oracle's
        // views over everything, and the speed layer's late drops are corrected, not dropped.
        let mut correctness = judge.check(&served, &judge.oracle.everything, Truth::Everything, &control, guarantee)?;
        // The workers' counters count a malformed record again when a restarted worker replays
        // it; the file holds each once.
        correctness.dead_lettered = control.dead_letters.as_ref().map_or(dead_lettered, |letters| letters.distinct());
        let window_latency = judge.window_latency(workers.iter().map(|worker| &worker.observer), &served, late_dropped);
        let mut before_final_batch =
            correctness_of(&report.before_final_batch, &judge.oracle.everything, judge.oracle, guarantee.name());
        before_final_batch.late_dropped = late_dropped;
        before_final_batch.per_query.clear();
        let view_bytes = served.approximate_bytes();
        drop(served);
        let master = master_results(&config)?;
        let reprocess =
            if judge.options.reprocess { reprocess(judge, &config, guarantee)? } else { Reprocess::default() };
        let batch_runs: Vec<BatchRunResults> = all_batch_runs.iter().map(|run| batch_run_results(run)).collect();
        let scheduled = batch_runs.iter().filter(|run| !run.last);
        let lambda_results = LambdaResults {
            batch_interval_seconds: judge.scenario.lambda.batch_interval.as_secs_f64(),
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
        let catch_up_seconds = (caught_up_ns - judge.input_end_ns) as f64 / 1e9;
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
                stored_bytes: judge.log_bytes + master.bytes + view_bytes,
                checkpoint_bytes: 0,
                view_bytes,
                checkpoints: seals,
            },
            faults: judge.faults(&observed, caught_up_ns, &control),
            throughput_series: observed.throughput_series,
            completeness_series: observed.completeness_series,
            latency_series: observed.latency_series,
            lambda: Some(lambda_results),
            external: None,
        })
    }
}

/// The master dataset as it stands.
fn master_results(config: &LambdaConfig) -> Result<MasterResults, RunError> {
    let root = &config.master_directory;
    let files = lk_engines::lambda::master::MasterDataset::files_in(root)
        .map_err(|error| RunError::Invalid(error.to_string()))?;
    Ok(MasterResults {
        path: root.display().to_string(),
        files: files.len() as u64,
        rows: files.iter().map(|file| file.rows).sum(),
        bytes: files.iter().map(|file| file.bytes).sum(),
        hive_partitions: lk_engines::lambda::master::hive_partitions(&files) as u64,
    })
}

/// Lambda reprocessing: the batch job over the whole master dataset, on every core.
fn reprocess(judge: &Judge<'_>, config: &LambdaConfig, guarantee: Guarantee) -> Result<Reprocess, RunError> {
    let root = &config.master_directory;
    let files = lk_engines::lambda::master::MasterDataset::files_in(root)
        .map_err(|error| RunError::Invalid(error.to_string()))?;
    let deduplicate = guarantee != Guarantee::AtLeastOnce;
    let (views, stats) = batch::compute(root, &files, &judge.queries, judge.cores, deduplicate)
        .map_err(|error| RunError::Engine(error.into()))?;
    let mismatched: u64 =
        views.compare_with(&judge.oracle.everything).values().map(|query| query.mismatched_windows).sum();
    Ok(Reprocess {
        events: stats.rows,
        seconds: stats.seconds,
        events_per_second: stats.rows as f64 / stats.seconds.max(1e-9),
        correct: mismatched == 0,
        mismatched_windows: mismatched,
        restarts: 0,
    })
}

fn batch_run_results(run: &BatchRun) -> BatchRunResults {
    BatchRunResults {
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
    }
}
