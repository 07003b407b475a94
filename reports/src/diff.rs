//! `lk diff BASELINE CURRENT`: per engine and metric, what changed, and a verdict for CI: a
//! metric that got worse by more than the allowed percentage fails, and so does correctness
//! getting worse at all.

use std::fmt::Write;

use lk_harness::results::{EngineResults, Results};

/// One metric of one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The engine.
    pub engine: String,
    /// The metric, as named in results.json.
    pub metric: &'static str,
    /// Its baseline value.
    pub baseline: f64,
    /// Its current value.
    pub current: f64,
    /// How much worse it got, in percent of the baseline (negative: better).
    pub worse_pct: f64,
    /// Whether it regressed beyond the threshold (or, for correctness, at all).
    pub regressed: bool,
}

/// The comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// Every compared metric.
    pub changes: Vec<Change>,
    /// What makes the comparison fail beyond metric changes (an engine missing).
    pub problems: Vec<String>,
    /// What a reader should know (the runs differ in scenario or machine).
    pub notes: Vec<String>,
}

impl Diff {
    /// Whether CI should fail.
    pub fn failed(&self) -> bool {
        !self.problems.is_empty() || self.changes.iter().any(|change| change.regressed)
    }
}

type Getter = fn(&EngineResults) -> Option<f64>;

/// Performance metrics: (name, value, whether higher is better).
const METRICS: [(&str, Getter, bool); 12] = [
    ("throughput_eps", |engine| Some(engine.throughput_eps), true),
    ("latency_ms.p50", |engine| Some(engine.latency_ms.p50), false),
    ("latency_ms.p99", |engine| Some(engine.latency_ms.p99), false),
    ("latency_ms.p999", |engine| Some(engine.latency_ms.p999), false),
    ("latency_ms.max", |engine| Some(engine.latency_ms.max), false),
    ("window_latency.processing_ms.p99", |engine| engine.window_latency.processing_ms.as_ref().map(|ms| ms.p99), false),
    ("reprocess.events_per_second", |engine| Some(engine.reprocess.events_per_second), true),
    ("cost.cpu_seconds", |engine| Some(engine.cost.cpu_seconds), false),
    ("cost.peak_rss_bytes", |engine| Some(engine.cost.peak_rss_bytes as f64), false),
    ("cost.stored_bytes", |engine| Some(engine.cost.stored_bytes as f64), false),
    (
        "faults.recovery_seconds_max",
        |engine| (engine.faults.crashes > 0).then_some(engine.faults.recovery_seconds_max),
        false,
    ),
    (
        "lambda.batch_events_per_second",
        |engine| engine.lambda.as_ref().map(|lambda| lambda.batch_events_per_second),
        true,
    ),
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

/// Compares `current` with `baseline`, allowing `max_regression_pct` on performance metrics.
pub fn diff(baseline: &Results, current: &Results, max_regression_pct: f64) -> Diff {
    let mut result = Diff::default();
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
    if !current.generator.kept_up {
        result
            .notes
            .push("the current run's generator did not keep up: its engine figures are the driver's".to_owned());
    }
    for (name, old) in &baseline.engines {
        let Some(new) = current.engines.get(name) else {
            result.problems.push(format!("engine {name} is in the baseline but not in the current run"));
            continue;
        };
        for (metric, get, higher_is_better) in METRICS {
            let (Some(was), Some(now)) = (get(old), get(new)) else { continue };
            if was <= 0.0 {
                // Nothing measured in the baseline (no samples, reprocessing skipped).
                continue;
            }
            let worse_pct = if higher_is_better { (was - now) / was * 100.0 } else { (now - was) / was * 100.0 };
            result.changes.push(Change {
                engine: name.clone(),
                metric,
                baseline: was,
                current: now,
                worse_pct,
                regressed: worse_pct > max_regression_pct,
            });
        }
        for (metric, get) in CORRECTNESS {
            let (Some(was), Some(now)) = (get(old), get(new)) else { continue };
            result.changes.push(Change {
                engine: name.clone(),
                metric,
                baseline: was,
                current: now,
                worse_pct: if was > 0.0 {
                    (now - was) / was * 100.0
                } else if now > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                },
                regressed: now > was,
            });
        }
        let (was, now) = (old.correctness.completeness, new.correctness.completeness);
        result.changes.push(Change {
            engine: name.clone(),
            metric: "correctness.completeness",
            baseline: was,
            current: now,
            worse_pct: if was > 0.0 { (was - now) / was * 100.0 } else { 0.0 },
            regressed: now < was - 1e-9,
        });
    }
    result
}

/// The comparison as a Markdown table with its verdict.
pub fn render(diff: &Diff, max_regression_pct: f64) -> String {
    let mut out = String::new();
    for note in &diff.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.push_str("| engine | metric | baseline | current | change | |\n|---|---|---:|---:|---:|---|\n");
    for change in &diff.changes {
        let change_text = if change.worse_pct.is_infinite() {
            "new".to_owned()
        } else {
            format!("{:+.1}% {}", -change.worse_pct, if change.worse_pct > 0.0 { "worse" } else { "better" })
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            change.engine,
            change.metric,
            format_value(change.baseline),
            format_value(change.current),
            if change.worse_pct == 0.0 { "same".to_owned() } else { change_text },
            if change.regressed { "REGRESSION" } else { "" }
        );
    }
    for problem in &diff.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    let regressions = diff.changes.iter().filter(|change| change.regressed).count();
    if diff.failed() {
        let _ = writeln!(
            out,
            "FAIL: {regressions} regressions (performance beyond {max_regression_pct}% or any correctness loss), {} problems",
            diff.problems.len()
        );
    } else {
        let _ = writeln!(out, "OK: no metric regressed beyond {max_regression_pct}% and correctness held");
    }
    out
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{value:.0}") } else { format!("{value:.3}") }
}
