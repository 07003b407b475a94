//! `lk sweep`: one scenario run once per watermark delay, to show the late-data trade-off.
//!
//! Kappa trades window latency for completeness through its watermark: a longer delay waits
//! for more late events before a window fires. Lambda's speed layer makes the same trade, and
//! its batch layer then corrects whatever the speed layer dropped, later. Each setting is a full
//! `lk run` into its own folder; the points read from its results go to `sweep.json`, which the
//! reports crate renders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lk_simulator::scenario::Scenario;
use lk_simulator::time::Clock;
use serde::{Deserialize, Serialize};

use crate::results::Results;
use crate::run::{RunError, RunOptions, run};

/// One engine at one watermark delay.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The watermark delay, ms.
    pub watermark_delay_ms: f64,
    /// `kappa`, `lambda speed layer` or `lambda after batch`.
    pub series: String,
    /// Window latency p50, ms, from the window's end (its end in event time on the run's
    /// clock: the watermark delay is part of it here); for `lambda after batch`, the batch
    /// views' mean staleness.
    pub window_latency_p50_ms: f64,
    /// The same at p99; for `lambda after batch`, the batch views' largest staleness.
    pub window_latency_p99_ms: f64,
    /// Served contributions over the oracle's for every event.
    pub completeness: f64,
    /// Contributions the lateness policy dropped (0 after Lambda's batch run).
    pub late_dropped: u64,
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
    // Run results measure window latency from the window's end plus the watermark delay (when
    // it could first be complete); a sweep compares delays, so it counts from the end.
    let waited_ms = delay / results.scenario.time_compression;
    let mut points = Vec::new();
    for (name, engine) in &results.engines {
        let exactly_once = engine.correctness.lost == 0 && engine.correctness.duplicated == 0;
        match &engine.lambda {
            None => points.push(SweepPoint {
                watermark_delay_ms: delay,
                series: name.clone(),
                window_latency_p50_ms: engine.window_latency_ms.p50 + waited_ms,
                window_latency_p99_ms: engine.window_latency_ms.p99 + waited_ms,
                completeness: engine.correctness.completeness,
                late_dropped: engine.correctness.late_dropped,
                exactly_once,
            }),
            Some(lambda) => {
                points.push(SweepPoint {
                    watermark_delay_ms: delay,
                    series: format!("{name} speed layer"),
                    window_latency_p50_ms: engine.window_latency_ms.p50 + waited_ms,
                    window_latency_p99_ms: engine.window_latency_ms.p99 + waited_ms,
                    completeness: lambda.before_final_batch.completeness,
                    late_dropped: lambda.before_final_batch.late_dropped,
                    exactly_once,
                });
                points.push(SweepPoint {
                    watermark_delay_ms: delay,
                    series: format!("{name} after batch"),
                    window_latency_p50_ms: lambda.staleness_seconds_mean * 1000.0,
                    window_latency_p99_ms: lambda.staleness_seconds_max * 1000.0,
                    completeness: engine.correctness.completeness,
                    late_dropped: 0,
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

/// Runs `scenario` once per delay under `out`, calling `each` with every run's results, and
/// writes `out/sweep.json`.
pub fn sweep(
    scenario: &Scenario,
    delays: &[Duration],
    options: &RunOptions,
    clock: Arc<dyn Clock>,
    each: &mut dyn FnMut(&Path, &Results),
) -> Result<Sweep, RunError> {
    let out = options.out_directory.clone();
    let mut sweep =
        Sweep { scenario: scenario.name.clone(), seed: scenario.seed, points: Vec::new(), runs: Vec::new() };
    for &delay in delays {
        let setting = scenario.clone().with_watermark_delay(delay);
        let directory: PathBuf = out.join(folder_of(delay));
        let run_options = RunOptions { out_directory: directory.clone(), ..options.clone() };
        let results = run(&setting, &run_options, Arc::clone(&clock), &mut |_| {})?;
        each(&directory, &results);
        sweep.points.extend(points_of(&results));
        sweep.runs.push(directory.display().to_string());
        // The log and the master dataset are big and the sweep's points are taken: keep the
        // results, views and reports, drop the bulk.
        for bulky in ["log", "master", "checkpoints"] {
            let path = directory.join(bulky);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(|cause| RunError::Output { path: path.display().to_string(), cause })?;
            }
        }
    }
    let path = out.join("sweep.json");
    let json = serde_json::to_string_pretty(&sweep).expect("a sweep serialises") + "\n";
    std::fs::write(&path, json).map_err(|cause| RunError::Output { path: path.display().to_string(), cause })?;
    Ok(sweep)
}
