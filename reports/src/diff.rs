//! `lk diff BASELINE CURRENT`: per engine and metric, what changed, and a verdict for CI that
//! tells noise from a regression.
//!
//! A performance metric regresses only when its change is both **significant** and **larger
//! than the threshold**. Significant: the 95% bootstrap interval of the ratio of the medians
//! (current over baseline, 4,000 resamples of each side's repetitions, fixed seed) lies wholly on
//! the worse side. The threshold: `--max-regression PCT`, or else the metric's noise band (tail
//! percentiles and maxima are far noisier than medians: they are reported, never gated). With a
//! single run on either side there is no interval: the verdict is weak, said so, and judged on
//! the threshold alone. Correctness may not worsen at all, ever (the worst repetitions compared).

use std::fmt::Write;

use lk_harness::results::{EngineResults, Results};

/// What happened to a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within noise, or not significant.
    NoChange,
    /// Significantly better, beyond the threshold.
    Improved,
    /// Significantly worse, beyond the threshold: CI fails.
    Regressed,
    /// Reported, not gated (a tail percentile or a maximum).
    Reported,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::NoChange => "no change",
            Verdict::Improved => "improved",
            Verdict::Regressed => "REGRESSED",
            Verdict::Reported => "not gated",
        }
    }
}

/// One metric of one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The engine.
    pub engine: String,
    /// The metric, as named in results.json.
    pub metric: &'static str,
    /// The baseline's median over its repetitions (its value for a single run).
    pub baseline: f64,
    /// The current median.
    pub current: f64,
    /// How much worse the median got, in percent of the baseline (negative: better).
    pub worse_pct: f64,
    /// The 95% bootstrap interval of `worse_pct`, when both sides have repetitions.
    pub interval_pct: Option<(f64, f64)>,
    /// The threshold applied, percent.
    pub threshold_pct: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Whether CI fails on it.
    pub regressed: bool,
}

/// The comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// Every compared metric.
    pub changes: Vec<Change>,
    /// What makes the comparison fail beyond metric changes (an engine missing).
    pub problems: Vec<String>,
    /// What a reader should know (the runs differ in scenario or machine; a weak verdict).
    pub notes: Vec<String>,
}

impl Diff {
    /// Whether CI should fail.
    pub fn failed(&self) -> bool {
        !self.problems.is_empty() || self.changes.iter().any(|change| change.regressed)
    }
}

type Getter = fn(&EngineResults) -> Option<f64>;

/// Where a metric is read.
#[derive(Clone, Copy)]
enum Source {
    /// From the engine's results.
    Engine(Getter),
    /// From the whole results, for the engine named (the verdict's extrapolation, the capacity).
    Results(fn(&Results, &str) -> Option<f64>),
}

impl Source {
    fn read(self, results: &Results, engine: &str) -> Option<f64> {
        match self {
            Source::Engine(get) => results.engines.get(engine).and_then(get),
            Source::Results(get) => get(results, engine),
        }
    }
}

/// An engine's figure at the target, from the verdict's extrapolation.
fn at_target(results: &Results, engine: &str, get: fn(&lk_harness::verdict::Extrapolation) -> f64) -> Option<f64> {
    results.verdict.as_ref()?.assessments.get(engine).map(|assessment| get(&assessment.at_target))
}

/// How a metric is judged.
#[derive(Clone, Copy)]
struct Metric {
    name: &'static str,
    get: Source,
    higher_is_better: bool,
    /// The noise band, percent: the threshold when `--max-regression` is not given. `None`:
    /// reported, never gated.
    band_pct: Option<f64>,
}

/// Performance metrics. The bands come from repeated runs of the quickstart on the shared
/// two-core machines lk is developed on (docs/benchmarks.md, the A/A test).
const METRICS: [Metric; 16] = [
    Metric {
        name: "throughput_eps",
        get: Source::Engine(|engine| Some(engine.throughput_eps)),
        higher_is_better: true,
        band_pct: Some(10.0),
    },
    Metric {
        name: "latency_ms.p50",
        get: Source::Engine(|engine| Some(engine.latency_ms.p50)),
        higher_is_better: false,
        band_pct: Some(20.0),
    },
    Metric {
        name: "latency_ms.p99",
        get: Source::Engine(|engine| Some(engine.latency_ms.p99)),
        higher_is_better: false,
        band_pct: Some(30.0),
    },
    Metric {
        name: "latency_ms.p999",
        get: Source::Engine(|engine| Some(engine.latency_ms.p999)),
        higher_is_better: false,
        band_pct: None,
    },
    Metric {
        name: "latency_ms.max",
        get: Source::Engine(|engine| Some(engine.latency_ms.max)),
        higher_is_better: false,
        band_pct: None,
    },
    Metric {
        name: "window_latency.processing_ms.p99",
        get: Source::Engine(|engine| engine.window_latency.processing_ms.as_ref().map(|ms| ms.p99)),
        higher_is_better: false,
        band_pct: Some(30.0),
    },
    Metric {
        name: "reprocess.events_per_second",
        get: Source::Engine(|engine| Some(engine.reprocess.events_per_second)),
        higher_is_better: true,
        band_pct: Some(20.0),
    },
    Metric {
        name: "cost.cpu_seconds",
        get: Source::Engine(|engine| Some(engine.cost.cpu_seconds)),
        higher_is_better: false,
        band_pct: Some(20.0),
    },
    Metric {
        name: "cost.peak_rss_bytes",
        get: Source::Engine(|engine| Some(engine.cost.peak_rss_bytes as f64)),
        higher_is_better: false,
        band_pct: Some(10.0),
    },
    Metric {
        name: "cost.stored_bytes",
        get: Source::Engine(|engine| Some(engine.cost.stored_bytes as f64)),
        higher_is_better: false,
        band_pct: Some(5.0),
    },
    Metric {
        name: "faults.recovery_seconds_max",
        get: Source::Engine(|engine| (engine.faults.crashes > 0).then_some(engine.faults.recovery_seconds_max)),
        higher_is_better: false,
        band_pct: None,
    },
    Metric {
        name: "lambda.batch_events_per_second",
        get: Source::Engine(|engine| engine.lambda.as_ref().map(|lambda| lambda.batch_events_per_second)),
        higher_is_better: true,
        band_pct: Some(25.0),
    },
    Metric {
        name: "capacity.sustainable_eps",
        get: Source::Results(|results, engine| results.capacity.as_ref()?.best(engine)?.sustainable_eps),
        higher_is_better: true,
        band_pct: Some(15.0),
    },
    Metric {
        name: "verdict.at_target.cores",
        get: Source::Results(|results, engine| at_target(results, engine, |at| at.cores)),
        higher_is_better: false,
        band_pct: Some(25.0),
    },
    Metric {
        name: "verdict.at_target.storage_bytes",
        get: Source::Results(|results, engine| at_target(results, engine, |at| at.storage_bytes)),
        higher_is_better: false,
        band_pct: Some(5.0),
    },
    Metric {
        name: "verdict.at_target.usd_month",
        get: Source::Results(|results, engine| at_target(results, engine, |at| at.usd_month)),
        higher_is_better: false,
        band_pct: Some(20.0),
    },
];

/// Correctness metrics: any increase fails.
const CORRECTNESS: [(&str, Getter); 4] = [
    ("correctness.lost", |engine| Some(engine.correctness.lost as f64)),
    ("correctness.dead_letters_unaccounted", |engine| {
        let correctness = &engine.correctness;
        Some(f64::from(u8::from(!correctness.dead_letter_file.is_empty() && !correctness.dead_letters_accounted)))
    }),
    ("correctness.duplicated", |engine| Some(engine.correctness.duplicated as f64)),
    ("correctness.mismatched_windows", |engine| Some(engine.correctness.mismatched_windows as f64)),
];

/// Bootstrap resamples.
const RESAMPLES: usize = 4000;

/// The bootstrap's fixed seed: the same files give the same verdict.
const BOOTSTRAP_SEED: u64 = 0x6c6b_2d64_6966_6600;

/// SplitMix64: a small, fixed generator for the resampling (its output is part of the verdict).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 }
}

/// How much worse `current` is than `baseline`, in percent.
fn worse_pct(baseline: f64, current: f64, higher_is_better: bool) -> f64 {
    if higher_is_better { (baseline - current) / baseline * 100.0 } else { (current - baseline) / baseline * 100.0 }
}

/// The change of the medians and, with two or more samples on each side, its 95% bootstrap
/// interval (percent worse).
pub fn compare_samples(baseline: &[f64], current: &[f64], higher_is_better: bool) -> (f64, Option<(f64, f64)>) {
    let (mut before, mut after) = (baseline.to_vec(), current.to_vec());
    let change = worse_pct(median(&mut before), median(&mut after), higher_is_better);
    if baseline.len() < 2 || current.len() < 2 {
        return (change, None);
    }
    let mut random = SplitMix(BOOTSTRAP_SEED);
    let (mut left, mut right) = (vec![0.0; baseline.len()], vec![0.0; current.len()]);
    let mut changes: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for value in &mut left {
                *value = baseline[random.below(baseline.len())];
            }
            for value in &mut right {
                *value = current[random.below(current.len())];
            }
            let was = median(&mut left);
            if was == 0.0 {
                return 0.0;
            }
            worse_pct(was, median(&mut right), higher_is_better)
        })
        .collect();
    changes.sort_by(f64::total_cmp);
    let at = |quantile: f64| changes[((quantile * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    (change, Some((at(0.025), at(0.975))))
}

/// A metric's values over a run's repetitions (its one value for a single run).
fn samples(results: &Results, engine: &str, get: Source) -> Vec<f64> {
    if results.repetitions.is_empty() {
        get.read(results, engine).into_iter().collect()
    } else {
        results.repetitions.iter().filter_map(|repetition| get.read(repetition, engine)).collect()
    }
}

/// Compares `current` with `baseline`; `max_regression_pct` replaces every metric's noise band
/// as the threshold when given.
pub fn diff(baseline: &Results, current: &Results, max_regression_pct: Option<f64>) -> Diff {
    let mut result = Diff::default();
    notes(baseline, current, &mut result);
    let repeated = baseline.repetitions.len() >= 2 && current.repetitions.len() >= 2;
    if !repeated {
        result.notes.push(
            "weak verdict: a side is a single run, so no change can be shown significant; metrics are judged on \
             their noise bands alone. Run both with `lk run --repeat 5` for a verdict that tells noise from a \
             regression"
                .to_owned(),
        );
    }
    for (name, old) in &baseline.engines {
        let Some(new) = current.engines.get(name) else {
            result.problems.push(format!("engine {name} is in the baseline but not in the current run"));
            continue;
        };
        for metric in METRICS {
            let (before, after) = (samples(baseline, name, metric.get), samples(current, name, metric.get));
            if before.is_empty() || after.is_empty() || before.iter().all(|value| *value <= 0.0) {
                // Nothing measured in the baseline (no samples, reprocessing skipped).
                continue;
            }
            let (change, interval) = compare_samples(&before, &after, metric.higher_is_better);
            let threshold = max_regression_pct.or(metric.band_pct);
            let verdict = match threshold {
                None => Verdict::Reported,
                Some(threshold) => {
                    let (worse, better) = match interval {
                        Some((low, high)) => (low > 0.0, high < 0.0),
                        None => (true, true),
                    };
                    if worse && change > threshold {
                        Verdict::Regressed
                    } else if better && -change > threshold {
                        Verdict::Improved
                    } else {
                        Verdict::NoChange
                    }
                }
            };
            let (mut was, mut now) = (before, after);
            result.changes.push(Change {
                engine: name.clone(),
                metric: metric.name,
                baseline: median(&mut was),
                current: median(&mut now),
                worse_pct: change,
                interval_pct: interval,
                threshold_pct: threshold.unwrap_or(f64::INFINITY),
                verdict,
                regressed: verdict == Verdict::Regressed,
            });
        }
        correctness(name, old, new, &mut result);
    }
    result
}

/// Correctness of the worst repetitions (the combined results carry them): any worsening fails.
fn correctness(name: &str, old: &EngineResults, new: &EngineResults, result: &mut Diff) {
    let mut push = |metric: &'static str, was: f64, now: f64, worse: bool| {
        let worse_pct = if was > 0.0 {
            (now - was).abs() / was * 100.0 * if worse { 1.0 } else { -1.0 }
        } else if worse {
            f64::INFINITY
        } else {
            0.0
        };
        result.changes.push(Change {
            engine: name.to_owned(),
            metric,
            baseline: was,
            current: now,
            worse_pct,
            interval_pct: None,
            threshold_pct: 0.0,
            verdict: if worse { Verdict::Regressed } else { Verdict::NoChange },
            regressed: worse,
        });
    };
    for (metric, get) in CORRECTNESS {
        let (Some(was), Some(now)) = (get(old), get(new)) else { continue };
        push(metric, was, now, now > was);
    }
    let (was, now) = (old.correctness.completeness, new.correctness.completeness);
    push("correctness.completeness", was, now, now < was - 1e-9);
    let (was, now) = (old.correctness.windowed_completeness, new.correctness.windowed_completeness);
    push("correctness.windowed_completeness", was, now, now < was - 1e-9);
}

fn notes(baseline: &Results, current: &Results, result: &mut Diff) {
    let (before, after) = (&baseline.scenario, &current.scenario);
    if (before.name.as_str(), before.seed, before.rate_eps, before.duration_seconds)
        != (after.name.as_str(), after.seed, after.rate_eps, after.duration_seconds)
    {
        result.notes.push(format!(
            "the runs differ in scenario: {} seed {} at {}/s for {} s, against {} seed {} at {}/s for {} s",
            before.name,
            before.seed,
            before.rate_eps,
            before.duration_seconds,
            after.name,
            after.seed,
            after.rate_eps,
            after.duration_seconds
        ));
    }
    if baseline.environment.cpus != current.environment.cpus
        || baseline.environment.log_backend != current.environment.log_backend
    {
        result.notes.push(format!(
            "the runs differ in environment: {} CPUs, {} log against {} CPUs, {} log",
            baseline.environment.cpus,
            baseline.environment.log_backend,
            current.environment.cpus,
            current.environment.log_backend
        ));
    }
    let choice = |results: &Results| {
        results.verdict.as_ref().map(|verdict| verdict.choice.clone().unwrap_or_else(|| "neither".to_owned()))
    };
    if let (Some(was), Some(now)) = (choice(baseline), choice(current))
        && was != now
    {
        result.notes.push(format!("the verdict changed: the baseline chose {was}, the current run chooses {now}"));
    }
    if baseline.requirements != current.requirements {
        result.notes.push("the runs were judged against different [requirements]".to_owned());
    }
    if !current.generator.kept_up {
        result
            .notes
            .push("the current run's generator did not keep up: its engine figures are the driver's".to_owned());
    }
}

/// A change as text: `+12.3% worse [+8.1, +15.0]`.
fn change_text(change: &Change) -> String {
    if change.worse_pct.is_infinite() {
        return "new".to_owned();
    }
    if change.worse_pct == 0.0 && change.interval_pct.is_none() {
        return "same".to_owned();
    }
    let direction = if change.worse_pct > 0.0 { "worse" } else { "better" };
    let mut text = format!("{:.1}% {direction}", change.worse_pct.abs());
    if let Some((low, high)) = change.interval_pct {
        let _ = write!(text, " (95%: {low:+.1} to {high:+.1}% worse)");
    }
    text
}

/// The comparison as a full Markdown table with its verdict.
pub fn render(diff: &Diff) -> String {
    let mut out = String::new();
    for note in &diff.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.push_str(
        "| engine | metric | baseline | current | change | threshold | verdict |\n|---|---|---:|---:|---:|---:|---|\n",
    );
    for change in &diff.changes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            change.engine,
            change.metric,
            format_value(change.baseline),
            format_value(change.current),
            change_text(change),
            if change.threshold_pct.is_finite() { format!("{:.0}%", change.threshold_pct) } else { "-".to_owned() },
            change.verdict.text()
        );
    }
    closing(diff, &mut out);
    out
}

/// The comparison for a pull-request comment: only what moved, then the verdict.
pub fn render_compact(diff: &Diff) -> String {
    let mut out = String::from("### lk diff\n\n");
    for note in &diff.notes {
        let _ = writeln!(out, "> {note}\n");
    }
    let moved: Vec<&Change> = diff.changes.iter().filter(|change| change.verdict != Verdict::NoChange).collect();
    if moved.is_empty() {
        out.push_str("No metric moved beyond its threshold.\n\n");
    } else {
        out.push_str("| engine | metric | baseline | current | change | verdict |\n|---|---|---:|---:|---:|---|\n");
        for change in moved {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                change.engine,
                change.metric,
                format_value(change.baseline),
                format_value(change.current),
                change_text(change),
                change.verdict.text()
            );
        }
        out.push('\n');
    }
    closing(diff, &mut out);
    out
}

fn closing(diff: &Diff, out: &mut String) {
    for problem in &diff.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    let regressions: Vec<String> = diff
        .changes
        .iter()
        .filter(|change| change.regressed)
        .map(|change| format!("{} {}", change.engine, change.metric))
        .collect();
    if diff.failed() {
        let _ = writeln!(
            out,
            "FAIL: {} regressed{}{}",
            regressions.len(),
            if regressions.is_empty() { String::new() } else { format!(" ({})", regressions.join(", ")) },
            if diff.problems.is_empty() { String::new() } else { format!("; {} problems", diff.problems.len()) }
        );
    } else {
        let _ = writeln!(out, "OK: no metric regressed and correctness held");
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{value:.0}") } else { format!("{value:.3}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples around `center` with a spread of `spread` percent, deterministic.
    fn noisy(center: f64, spread: f64, count: usize, seed: u64) -> Vec<f64> {
        let mut random = SplitMix(seed);
        (0..count).map(|_| center * (1.0 + spread / 100.0 * ((random.next() % 2001) as f64 / 1000.0 - 1.0))).collect()
    }

    #[test]
    fn no_change_gives_an_interval_around_zero() {
        let (change, interval) = compare_samples(&noisy(10.0, 5.0, 5, 1), &noisy(10.0, 5.0, 5, 2), false);
        let (low, high) = interval.unwrap();
        assert!(low < 0.0 && high > 0.0, "{low} {high}");
        assert!(change.abs() < 8.0, "{change}");
    }

    #[test]
    fn a_shift_is_significant_in_the_right_direction() {
        let (change, interval) = compare_samples(&noisy(10.0, 3.0, 5, 3), &noisy(13.0, 3.0, 5, 4), false);
        let (low, _) = interval.unwrap();
        assert!(low > 0.0 && (change - 30.0).abs() < 8.0, "{change} {interval:?}");
        // For a metric where higher is better the same shift is an improvement.
        let (change, interval) = compare_samples(&noisy(10.0, 3.0, 5, 3), &noisy(13.0, 3.0, 5, 4), true);
        assert!(interval.unwrap().1 < 0.0 && change < -20.0, "{change} {interval:?}");
    }

    #[test]
    fn a_noisy_shift_within_its_noise_is_not_significant() {
        // 10% apart, with 40% spread: the interval straddles zero.
        let (_, interval) = compare_samples(&noisy(10.0, 40.0, 5, 5), &noisy(11.0, 40.0, 5, 6), false);
        let (low, high) = interval.unwrap();
        assert!(low < 0.0 && high > 0.0, "{low} {high}");
    }

    #[test]
    fn single_samples_have_no_interval() {
        assert_eq!(compare_samples(&[10.0], &[12.0], false), (20.0, None));
    }
}
