//! `lk sweep`: one scenario run once per watermark delay, to show the late-data trade-off, or
//! once per commit interval, to show what exactly-once over Kafka costs in latency and CPU.
//!
//! Kappa trades window latency for completeness through its watermark: a longer delay waits
//! for more late events before a window fires. Each point's latency is measured (event-time
//! latency, signed); the configured delay is reported beside it. Lambda's speed layer makes the same trade, and
//! its batch layer then corrects whatever the speed layer dropped, later. Each setting is a full
//! `lk run` into its own folder; the points read from its results go to `sweep.json`, which the
//! reports crate renders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::scenario::Scenario;
use lk_simulator::time::Clock;
use serde::{Deserialize, Serialize};

use crate::output::OutputFolder;
use crate::results::Results;
use crate::run::{RunError, RunOptions, run};

/// One engine at one watermark delay.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The watermark delay, ms of event time.
    pub watermark_delay_ms: f64,
    /// The same delay on the run's clock (event time runs `time_compression` times faster):
    /// the configuration, reported beside the measured latency, never added to it.
    pub watermark_delay_clock_ms: f64,
    /// `kappa`, `lambda speed layer` or `lambda after batch`.
    pub series: String,
    /// Measured event-time latency p50, ms: from a window's end on the run's clock until its
    /// result was first served, signed (negative: served before the window ended); for
    /// `lambda after batch`, the batch views' mean staleness. `null` when no window result was
    /// served.
    pub window_latency_p50_ms: Option<f64>,
    /// The same at p99; for `lambda after batch`, the batch views' largest staleness.
    pub window_latency_p99_ms: Option<f64>,
    /// Served contributions over the oracle's for every event.
    pub completeness: f64,
    /// Contributions the lateness policy dropped (0 after Lambda's batch run).
    pub late_dropped: u64,
    /// Results first served before their window ended on the run's clock.
    pub results_early: u64,
    /// Results served again after late events changed them.
    pub results_revised: u64,
    /// Whether nothing was lost or duplicated against the engine's truth.
    pub exactly_once: bool,
}

/// A whole sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sweep {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// Every point, by delay then series.
    pub points: Vec<SweepPoint>,
    /// Each setting's results folder.
    pub runs: Vec<String>,
}

/// The points one run contributes.
pub fn points_of(results: &Results) -> Vec<SweepPoint> {
    let delay = results.scenario.watermark_delay_ms;
    let delay_clock = delay / results.scenario.time_compression;
    let mut points = Vec::new();
    for (name, engine) in &results.engines {
        let exactly_once = engine.correctness.lost == 0 && engine.correctness.duplicated == 0;
        let windows = &engine.window_latency;
        let streaming = |series: String, completeness: f64, late_dropped: u64| SweepPoint {
            watermark_delay_ms: delay,
            watermark_delay_clock_ms: delay_clock,
            series,
            window_latency_p50_ms: windows.event_time_ms.as_ref().map(|ms| ms.p50),
            window_latency_p99_ms: windows.event_time_ms.as_ref().map(|ms| ms.p99),
            completeness,
            late_dropped,
            results_early: windows.results_early,
            results_revised: windows.results_revised,
            exactly_once,
        };
        match &engine.lambda {
            None => {
                points.push(streaming(name.clone(), engine.correctness.completeness, engine.correctness.late_dropped))
            }
            Some(lambda) => {
                points.push(streaming(
                    format!("{name} speed layer"),
                    lambda.before_final_batch.completeness,
                    lambda.before_final_batch.late_dropped,
                ));
                points.push(SweepPoint {
                    watermark_delay_ms: delay,
                    watermark_delay_clock_ms: delay_clock,
                    series: format!("{name} after batch"),
                    window_latency_p50_ms: Some(lambda.staleness_seconds_mean * 1000.0),
                    window_latency_p99_ms: Some(lambda.staleness_seconds_max * 1000.0),
                    completeness: engine.correctness.completeness,
                    late_dropped: 0,
                    results_early: 0,
                    results_revised: 0,
                    exactly_once,
                });
            }
        }
    }
    points
}

/// The folder name of a delay: `wm-5s`, `wm-250ms`.
fn folder_of(delay: Duration) -> String {
    format!("wm-{}", lk_simulator::time::format_duration(delay).replace(' ', ""))
}

/// One setting's run in a sweep: the setting, its folder, its results.
type SettingRun = (Duration, PathBuf, Results);

/// Runs `scenario` once per setting under `options.out_directory`, each as `apply` makes it
/// and into the folder `folder_of` names, calling `each` with every run's results and
/// returning them with their folders. The log and the master dataset of each run are removed
/// once its results are taken: they are big, and a sweep keeps results, views and reports.
fn run_settings(
    scenario: &Scenario,
    settings: &[Duration],
    options: &RunOptions,
    clock: &Arc<dyn Clock>,
    apply: impl Fn(Scenario, Duration) -> Scenario,
    folder_of: impl Fn(Duration) -> String,
    each: &mut dyn FnMut(&Path, &Results),
) -> Result<(PathBuf, Vec<SettingRun>), RunError> {
    let identity = format!("lk sweep: scenario {}, seed {}", scenario.name(), scenario.seed());
    let folder = OutputFolder::claim(&options.out_directory, &identity, options.takeover)?;
    let out = folder.path().to_owned();
    let mut runs = Vec::with_capacity(settings.len());
    for &setting in settings {
        let directory: PathBuf = out.join(folder_of(setting));
        let run_options = RunOptions { out_directory: directory.clone(), ..options.clone() };
        let results = run(&apply(scenario.clone(), setting), &run_options, Arc::clone(clock), &mut |_| {})?;
        each(&directory, &results);
        let run_folder = OutputFolder::reopen(&directory)?;
        for bulky in ["log", "master", "checkpoints"] {
            run_folder.remove(bulky)?;
        }
        runs.push((setting, directory, results));
    }
    Ok((out, runs))
}

/// Runs `scenario` once per delay under `out`, calling `each` with every run's results, and
/// writes `out/sweep.json`.
pub fn sweep(
    scenario: &Scenario,
    delays: &[Duration],
    options: &RunOptions,
    clock: Arc<dyn Clock>,
    each: &mut dyn FnMut(&Path, &Results),
) -> Result<Sweep, RunError> {
    let (out, runs) = run_settings(scenario, delays, options, &clock, Scenario::with_watermark_delay, folder_of, each)?;
    let sweep = Sweep {
        scenario: scenario.name().to_owned(),
        seed: scenario.seed(),
        points: runs.iter().flat_map(|(_, _, results)| points_of(results)).collect(),
        runs: runs.iter().map(|(_, directory, _)| directory.display().to_string()).collect(),
    };
    crate::run::write_json(&out.join("sweep.json"), &sweep)?;
    Ok(sweep)
}

/// One engine at one commit interval (`lk sweep --commit-interval`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommitPoint {
    /// The commit interval, ms.
    pub commit_interval_ms: f64,
    /// The engine.
    pub engine: String,
    /// Visible latency p50 and p99, ms.
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// The mean wait for the next transaction and the mean commit, ms (from the latency by
    /// stage; `None` without samples).
    pub commit_wait_mean_ms: Option<f64>,
    /// See `commit_wait_mean_ms`.
    pub commit_mean_ms: Option<f64>,
    /// CPU seconds of the engine's threads.
    pub engine_cpu_seconds: f64,
    /// Cores' worth lk used while the input ran (all engines of the run).
    pub lk_cores: Option<f64>,
    /// Cores' worth the broker used, when it runs on this machine.
    pub broker_cores: Option<f64>,
    /// Busy share of the machine.
    pub machine_busy: Option<f64>,
    /// Whether nothing was lost or duplicated against the engine's truth.
    pub exactly_once: bool,
}

/// A whole commit-interval sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitSweep {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// Every point, by interval then engine.
    pub points: Vec<CommitPoint>,
    /// Each setting's results folder.
    pub runs: Vec<String>,
}

/// The points one run contributes to a commit-interval sweep.
pub fn commit_points_of(results: &Results, interval: Duration) -> Vec<CommitPoint> {
    let resources = results.resources.as_ref();
    results
        .engines
        .iter()
        .map(|(name, engine)| {
            let stage = |wanted: &str| {
                engine
                    .latency_stages
                    .as_ref()
                    .and_then(|stages| stages.stages.iter().find(|stage| stage.stage == wanted))
                    .map(|stage| stage.mean_ms)
            };
            CommitPoint {
                commit_interval_ms: interval.as_secs_f64() * 1000.0,
                engine: name.clone(),
                latency_p50_ms: engine.latency_ms.p50,
                latency_p99_ms: engine.latency_ms.p99,
                commit_wait_mean_ms: stage("commit wait"),
                commit_mean_ms: stage("commit"),
                engine_cpu_seconds: engine.cost.cpu_seconds,
                lk_cores: resources.map(|resources| resources.lk_cores),
                broker_cores: resources.and_then(|resources| resources.broker_cores),
                machine_busy: resources.map(|resources| resources.machine_busy),
                exactly_once: engine.correctness.lost == 0 && engine.correctness.duplicated == 0,
            }
        })
        .collect()
}

/// The folder name of a commit interval: `commit-100ms`.
fn commit_folder_of(interval: Duration) -> String {
    format!("commit-{}", lk_simulator::time::format_duration(interval).replace(' ', ""))
}

/// Runs `scenario` once per commit interval under `out` (over Kafka: the interval is the
/// transactional sinks'), calling `each` with every run's results, and writes
/// `out/commit-sweep.json`.
pub fn commit_sweep(
    scenario: &Scenario,
    intervals: &[Duration],
    options: &RunOptions,
    clock: Arc<dyn Clock>,
    each: &mut dyn FnMut(&Path, &Results),
) -> Result<CommitSweep, RunError> {
    if !matches!(options.log, crate::run::LogChoice::Kafka { .. }) {
        return Err(RunError::Invalid(
            "a commit interval is the transactional sink's, which runs over Kafka: add --log kafka (and start a \
             broker with scripts/kafka up)"
                .to_owned(),
        ));
    }
    let (out, runs) =
        run_settings(scenario, intervals, options, &clock, Scenario::with_commit_interval, commit_folder_of, each)?;
    let sweep = CommitSweep {
        scenario: scenario.name().to_owned(),
        seed: scenario.seed(),
        points: runs.iter().flat_map(|(interval, _, results)| commit_points_of(results, *interval)).collect(),
        runs: runs.iter().map(|(_, directory, _)| directory.display().to_string()).collect(),
    };
    crate::run::write_json(&out.join("commit-sweep.json"), &sweep)?;
    Ok(sweep)
}
