//! `lk run --repeat N`: the same scenario and seed (so the same stream) run N times, each into
//! `rep-K/` of the output folder, and one `results.json` that holds every repetition and their
//! combination. A CI gate compares distributions, not single numbers: one run of a noisy machine
//! proves little.
//!
//! The combination: latency percentiles from the repetitions' histograms merged; throughput,
//! reprocessing rate, CPU, memory, storage and recovery as medians; correctness as the worst
//! repetition's, whole, so that a single failing repetition fails the combined run.

use std::sync::Arc;

use crate::scenario::Scenario;
use lk_simulator::time::Clock;

use crate::metrics::{LatencySummary, SignedLatencySummary, new_histogram};
use crate::output::OutputFolder;
use crate::results::{EngineResults, Results};
use crate::run::{RunError, RunOptions, RunProgress, run};

/// Runs `scenario` `repeat` times into `rep-1/` .. `rep-N/` under the options' folder, then
/// writes the combined results there; `each` hears of every repetition as it ends.
pub fn run_repeated(
    scenario: &Scenario,
    options: &RunOptions,
    repeat: u32,
    clock: Arc<dyn Clock>,
    progress: &mut dyn FnMut(RunProgress),
    each: &mut dyn FnMut(u32, &Results),
) -> Result<Results, RunError> {
    if repeat == 0 {
        return Err(RunError::Invalid("--repeat must be at least 1".to_owned()));
    }
    let identity = format!("lk run --repeat {repeat}: scenario {}, seed {}", scenario.name(), scenario.seed());
    let folder = OutputFolder::claim(&options.out_directory, &identity, options.takeover)?;
    let mut repetitions = Vec::new();
    for index in 1..=repeat {
        let name = format!("rep-{index}");
        let run_options = RunOptions { out_directory: folder.join(&name), ..options.clone() };
        let results = run(scenario, &run_options, Arc::clone(&clock), progress)?;
        each(index, &results);
        repetitions.push(results);
    }
    let combined = combine(repetitions);
    crate::run::write_json(&folder.join("results.json"), &combined)?;
    Ok(combined)
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|value| value.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 }
}

/// One result from several repetitions, which it keeps in `repetitions`.
pub fn combine(repetitions: Vec<Results>) -> Results {
    assert!(!repetitions.is_empty(), "at least one repetition");
    let mut combined = repetitions[0].clone();
    for (name, engine) in &mut combined.engines {
        let runs: Vec<&EngineResults> = repetitions.iter().filter_map(|results| results.engines.get(name)).collect();
        combine_engine(engine, &runs);
    }
    let of = |get: fn(&Results) -> f64| median(&repetitions.iter().map(get).collect::<Vec<_>>());
    combined.generator.achieved_rate_eps = of(|results| results.generator.achieved_rate_eps);
    combined.generator.log_append_rate_eps = of(|results| results.generator.log_append_rate_eps);
    combined.generator.max_schedule_lag_ms =
        repetitions.iter().map(|results| results.generator.max_schedule_lag_ms).fold(0.0, f64::max);
    combined.generator.kept_up = repetitions.iter().all(|results| results.generator.kept_up);
    combined.repetitions = repetitions;
    // Judged again on the combined figures: the first repetition's verdict is only its own.
    combined.verdict = Some(crate::verdict::judge(&combined));
    combined
}

fn combine_engine(engine: &mut EngineResults, runs: &[&EngineResults]) {
    let median_of = |get: &dyn Fn(&EngineResults) -> f64| median(&runs.iter().map(|run| get(run)).collect::<Vec<_>>());
    // Correctness is the worst repetition's, whole: a single failure fails the combination.
    let worst = runs
        .iter()
        .max_by_key(|run| {
            let correctness = &run.correctness;
            (correctness.lost + correctness.duplicated, correctness.mismatched_windows)
        })
        .expect("at least one run");
    engine.correctness = worst.correctness.clone();
    engine.kept_up = runs.iter().all(|run| run.kept_up);
    engine.throughput_eps = median_of(&|run| run.throughput_eps);
    engine.catch_up_seconds = median_of(&|run| run.catch_up_seconds);
    engine.latency_ms = merged(runs.iter().map(|run| &run.latency_ms));
    let processing: Vec<&LatencySummary> =
        runs.iter().filter_map(|run| run.window_latency.processing_ms.as_ref()).collect();
    if !processing.is_empty() {
        engine.window_latency.processing_ms = Some(merged(processing.into_iter()));
    }
    let event_time: Vec<&SignedLatencySummary> =
        runs.iter().filter_map(|run| run.window_latency.event_time_ms.as_ref()).collect();
    if !event_time.is_empty() {
        let mut histogram = event_time[0].decode().unwrap_or_default();
        for summary in &event_time[1..] {
            if let Ok(other) = summary.decode() {
                histogram.add(&other);
            }
        }
        engine.window_latency.event_time_ms = SignedLatencySummary::of(&histogram);
    }
    engine.reprocess.events_per_second = median_of(&|run| run.reprocess.events_per_second);
    engine.reprocess.seconds = median_of(&|run| run.reprocess.seconds);
    engine.reprocess.correct = runs.iter().all(|run| run.reprocess.correct);
    engine.cost.cpu_seconds = median_of(&|run| run.cost.cpu_seconds);
    engine.cost.peak_rss_bytes = median_of(&|run| run.cost.peak_rss_bytes as f64) as u64;
    engine.cost.stored_bytes = median_of(&|run| run.cost.stored_bytes as f64) as u64;
    engine.faults.recovery_seconds_max = median_of(&|run| run.faults.recovery_seconds_max);
    if let Some(lambda) = &mut engine.lambda {
        lambda.batch_events_per_second =
            median_of(&|run| run.lambda.as_ref().map_or(0.0, |lambda| lambda.batch_events_per_second));
    }
}

/// The summary of several latency histograms merged (the percentiles of all samples together).
fn merged<'a>(summaries: impl Iterator<Item = &'a LatencySummary>) -> LatencySummary {
    let mut histogram = new_histogram();
    for summary in summaries {
        if let Ok(decoded) = summary.decode() {
            histogram.add(&decoded).expect("same bounds");
        }
    }
    LatencySummary::of(&histogram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
