//! The verdict: which architecture meets the workload's requirements, at what cost, and which
//! requirement decides it, from this run's measurements; and the seed's textbook claims checked
//! against the same numbers (docs/decisions/0009-the-verdict.md).
//!
//! It judges only what was measured: a requirement the run cannot speak to (no rebuild timed,
//! no crash injected, no late event) is said to be missing, never assumed met.

mod claims;
mod cost;
mod requirements;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use claims::{Claim, Finding, claims};
pub use cost::{Extrapolation, extrapolate};
pub use requirements::{RawRequirements, Requirements, read_requirements};

use crate::results::{EngineResults, Results};

/// Costs closer than this (relative) do not decide between two architectures that both meet
/// the requirements; the simpler one (less code of its own) is chosen.
const COST_TIE: f64 = 0.10;

/// One requirement against one architecture's measurement.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// Which requirement.
    pub requirement: String,
    /// What it asks, e.g. `<= 1000 ms`.
    pub required: String,
    /// What was measured, e.g. `2.1 ms`.
    pub measured: String,
    /// Whether it is met; `null` when the run cannot tell.
    pub met: Option<bool>,
    /// How far inside (positive) or outside (negative) the requirement, relative to it.
    pub margin: Option<f64>,
    /// The distance to the requirement in words, e.g. `0.0036 below`, `998 ms under`.
    #[serde(default)]
    pub gap: String,
    /// The figure in results.json it comes from, and anything that qualifies it.
    pub evidence: String,
}

/// One architecture against every requirement.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Assessment {
    /// Whether every check the run could decide is met.
    pub meets: bool,
    /// Each requirement.
    pub checks: Vec<Check>,
    /// What it needs at the target, extrapolated.
    pub at_target: Extrapolation,
    /// Lines of code of its own (the code both share counted in neither).
    pub own_code_lines: u64,
}

/// The answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// The architecture chosen (`kappa` or `lambda`); `null` when none meets the requirements
    /// or only one ran.
    pub choice: Option<String>,
    /// One sentence: the answer and why.
    pub summary: String,
    /// The requirement (or `cost`, `simplicity`) that decides it.
    pub deciding: String,
    /// By how much, in words.
    pub margin: String,
    /// Each architecture, by engine name.
    pub assessments: BTreeMap<String, Assessment>,
    /// What this run could not show, and what would show it.
    pub missing: Vec<String>,
    /// The seed's claims against this run.
    pub claims: Vec<Claim>,
}

/// The architecture's name for an engine's.
pub fn architecture(engine: &str) -> String {
    let mut name = engine.to_owned();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    name
}

/// Judges `results` (with its requirements and capacity) and returns the verdict.
pub fn judge(results: &Results) -> Verdict {
    let mut assessments = BTreeMap::new();
    for (name, engine) in &results.engines {
        assessments.insert(name.clone(), assess(results, name, engine));
    }
    let missing = missing(results);
    let (choice, summary, deciding, margin) = decide(&assessments);
    let mut verdict = Verdict { choice, summary, deciding, margin, assessments, missing, claims: Vec::new() };
    verdict.claims = claims(results, &verdict);
    verdict
}

/// Every check of one architecture.
fn assess(results: &Results, name: &str, engine: &EngineResults) -> Assessment {
    let requirements = &results.requirements;
    let at_target = extrapolate(results, name, engine, results.capacity.as_ref());
    let mut checks = Vec::new();
    let p99 = engine.latency_ms.p99;
    checks.push(Check {
        requirement: "driver-location p99".to_owned(),
        required: format!("<= {:.0} ms", requirements.location_p99_ms),
        measured: format!("{p99:.1} ms"),
        met: Some(p99 <= requirements.location_p99_ms),
        margin: Some((requirements.location_p99_ms - p99) / requirements.location_p99_ms),
        gap: above_below(p99 - requirements.location_p99_ms, "ms", "over", "under"),
        evidence: format!(
            "engines.{name}.latency_ms.p99: Q1, due time to served, at {:.0} events/s on {} cores",
            results.scenario.rate_eps, results.environment.cpus
        ),
    });
    checks.push(Check {
        requirement: "keeps up".to_owned(),
        required: "backlog worked off within 1 s of the input's end".to_owned(),
        measured: format!("{:.2} s", engine.catch_up_seconds),
        met: Some(engine.kept_up),
        margin: Some(1.0 - engine.catch_up_seconds),
        gap: above_below(engine.catch_up_seconds - 1.0, "s", "over", "under"),
        evidence: format!("engines.{name}.catch_up_seconds at {:.0} events/s", results.scenario.rate_eps),
    });
    if requirements.exactly_once {
        let correctness = &engine.correctness;
        let held = correctness.lost == 0 && correctness.duplicated == 0;
        let crashes = engine.faults.crashes;
        checks.push(Check {
            requirement: "exactly-once".to_owned(),
            required: "nothing lost or duplicated, through the faults".to_owned(),
            measured: if held {
                format!("held through {crashes} crash{}", if crashes == 1 { "" } else { "es" })
            } else {
                format!("{} lost, {} duplicated", correctness.lost, correctness.duplicated)
            },
            met: Some(held && correctness.guarantee == "exactly-once"),
            margin: None,
            gap: if held {
                String::new()
            } else {
                format!("{} contributions wrong", correctness.lost + correctness.duplicated)
            },
            evidence: format!(
                "engines.{name}.correctness (guarantee {}, checked against the oracle cell by cell)",
                correctness.guarantee
            ),
        });
    }
    checks.push(completeness_check(results, name, engine));
    if let Some(limit) = requirements.reprocess_within_seconds {
        let check = match at_target.reprocess_seconds {
            Some(seconds) => Check {
                requirement: "rebuild the history".to_owned(),
                required: format!("<= {}", human_seconds(limit)),
                measured: format!("{} (extrapolated)", human_seconds(seconds)),
                met: Some(seconds <= limit),
                margin: Some((limit - seconds) / limit),
                gap: format!(
                    "{} {}",
                    human_seconds((seconds - limit).abs()),
                    if seconds > limit { "over" } else { "under" }
                ),
                evidence: format!("{} on {:.0} cores", at_target.reprocess_basis, at_target.cores),
            },
            None => Check {
                requirement: "rebuild the history".to_owned(),
                required: format!("<= {}", human_seconds(limit)),
                measured: "not measured".to_owned(),
                met: None,
                margin: None,
                gap: String::new(),
                evidence: "the run did not rebuild its views (--no-reprocess)".to_owned(),
            },
        };
        checks.push(check);
    }
    Assessment {
        meets: checks.iter().all(|check| check.met != Some(false)),
        checks,
        at_target,
        own_code_lines: own_code_lines(results, name),
    }
}

/// Completeness of the windowed views: by the end of the run, or within the required time
/// (from the completeness-by-age series of Q3, the view late events hit most).
fn completeness_check(results: &Results, name: &str, engine: &EngineResults) -> Check {
    let requirements = &results.requirements;
    let required = requirements.completeness;
    let (measured, evidence, met) = match requirements.complete_within_seconds {
        None => {
            let measured = engine.correctness.windowed_completeness;
            let after = if engine.lambda.is_some() { ", after the final batch run" } else { "" };
            (
                Some(measured),
                format!(
                    "engines.{name}.correctness.windowed_completeness: the least complete of Q2 to Q5 at the end{after}"
                ),
                Some(measured >= required),
            )
        }
        Some(within) => {
            let compression = results.scenario.time_compression.max(f64::MIN_POSITIVE);
            let age = within / compression;
            let series = &engine.completeness_series;
            match series.iter().rev().find(|(seconds, _)| *seconds <= age) {
                Some(&(seconds, measured)) => {
                    let oldest = series.last().map_or(0.0, |(seconds, _)| *seconds);
                    let short = if oldest < age {
                        format!(
                            "; the run's oldest windows were only {} old, so this is their value",
                            human_seconds(oldest * compression)
                        )
                    } else {
                        String::new()
                    };
                    (
                        Some(measured),
                        format!(
                            "engines.{name}.completeness_series at {} after windows could first be complete{short}",
                            human_seconds(seconds * compression)
                        ),
                        Some(measured >= required),
                    )
                }
                None => (None, format!("engines.{name}.completeness_series has no window that old"), None),
            }
        }
    };
    let within = requirements
        .complete_within_seconds
        .map_or_else(String::new, |seconds| format!(" within {}", human_seconds(seconds)));
    Check {
        requirement: "windowed completeness".to_owned(),
        required: format!(">= {}{within}", fraction(required)),
        measured: measured.map_or_else(|| "not measured".to_owned(), fraction),
        met,
        margin: measured.map(|measured| (measured - required) / (1.0 - required).max(1e-6)),
        gap: measured.map_or_else(String::new, |measured| {
            format!("{:.4} {}", (measured - required).abs(), if measured < required { "below" } else { "above" })
        }),
        evidence,
    }
}

/// The lines of code only this engine has, from the run's code count.
fn own_code_lines(results: &Results, name: &str) -> u64 {
    let Some(lines) =
        results.engines.values().find_map(|engine| engine.lambda.as_ref().map(|lambda| &lambda.code_lines))
    else {
        return 0;
    };
    let parts: &[&str] =
        if name == "lambda" { &["lambda_engine", "batch_layer", "master_dataset"] } else { &["kappa_engine"] };
    parts.iter().filter_map(|part| lines.get(*part)).sum()
}

/// The choice, its sentence, what decides it and by how much.
fn decide(assessments: &BTreeMap<String, Assessment>) -> (Option<String>, String, String, String) {
    let meeting: Vec<(&String, &Assessment)> = assessments.iter().filter(|(_, assessment)| assessment.meets).collect();
    let failed = |name: &str| -> Vec<&Check> {
        assessments.get(name).map_or_else(Vec::new, |assessment| {
            assessment.checks.iter().filter(|check| check.met == Some(false)).collect()
        })
    };
    let describe = |check: &Check| format!("{} {} against {}", check.requirement, check.measured, check.required);
    if assessments.len() < 2 {
        let Some((name, assessment)) = assessments.iter().next() else {
            return (None, "No engine ran: nothing to judge.".to_owned(), String::new(), String::new());
        };
        let state = if assessment.meets { "meets" } else { "does not meet" };
        return (
            None,
            format!("Only {} ran; it {state} the requirements. Run both engines to compare.", architecture(name)),
            "only one architecture measured".to_owned(),
            String::new(),
        );
    }
    match meeting.as_slice() {
        [] => {
            let reasons: Vec<String> = assessments
                .keys()
                .map(|name| {
                    format!(
                        "{} fails {}",
                        architecture(name),
                        failed(name).iter().map(|check| describe(check)).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            (
                None,
                format!("Neither architecture meets the requirements: {}.", reasons.join("; ")),
                failed_names(assessments.keys().flat_map(|name| failed(name))),
                String::new(),
            )
        }
        [(name, _)] => {
            let others: Vec<&String> = assessments.keys().filter(|other| other != name).collect();
            let checks: Vec<&Check> = others.iter().flat_map(|other| failed(other)).collect();
            let reasons: Vec<String> = checks.iter().map(|check| describe(check)).collect();
            (
                Some((*name).clone()),
                format!(
                    "{} meets the requirements; {} does not: {}.",
                    architecture(name),
                    others.iter().map(|other| architecture(other)).collect::<Vec<_>>().join(", "),
                    reasons.join("; ")
                ),
                failed_names(checks.iter().copied()),
                checks
                    .iter()
                    .map(|check| format!("{} {}", check.requirement, check.gap))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
        _ => {
            let mut by_cost: Vec<&(&String, &Assessment)> = meeting.iter().collect();
            by_cost.sort_by(|a, b| a.1.at_target.usd_month.total_cmp(&b.1.at_target.usd_month));
            let (cheap, cheap_at) = (by_cost[0].0, &by_cost[0].1.at_target);
            let dear_at = &by_cost[1].1.at_target;
            let saving = (dear_at.usd_month - cheap_at.usd_month) / dear_at.usd_month.max(f64::MIN_POSITIVE);
            if saving >= COST_TIE {
                (
                    Some(cheap.clone()),
                    format!(
                        "Both meet the requirements; {} costs {:.0}% less at the target (${:.0} against ${:.0} a month, extrapolated).",
                        architecture(cheap),
                        saving * 100.0,
                        cheap_at.usd_month,
                        dear_at.usd_month
                    ),
                    "cost".to_owned(),
                    format!("{:.0}% (${:.0} a month)", saving * 100.0, dear_at.usd_month - cheap_at.usd_month),
                )
            } else {
                let mut by_code: Vec<&(&String, &Assessment)> = meeting.iter().collect();
                by_code.sort_by_key(|(_, assessment)| assessment.own_code_lines);
                let (simple, simple_lines) = (by_code[0].0, by_code[0].1.own_code_lines);
                let other_lines = by_code[1].1.own_code_lines;
                (
                    Some(simple.clone()),
                    format!(
                        "Both meet the requirements at costs within {:.0}% of each other; {} is simpler ({simple_lines} lines of its own against {other_lines}).",
                        COST_TIE * 100.0,
                        architecture(simple)
                    ),
                    "simplicity".to_owned(),
                    format!(
                        "{} fewer lines of its own; cost within {:.0}%",
                        other_lines.saturating_sub(simple_lines),
                        saving * 100.0
                    ),
                )
            }
        }
    }
}

/// The distinct requirement names of some checks, joined.
fn failed_names<'a>(checks: impl Iterator<Item = &'a Check>) -> String {
    let mut names: Vec<&str> = checks.map(|check| check.requirement.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join(", ")
}

/// What the run could not show.
fn missing(results: &Results) -> Vec<String> {
    let mut missing = Vec::new();
    if results.engines.len() < 2 {
        missing.push("only one engine ran: run both (--engine both) to compare the architectures".to_owned());
    }
    if !results.generator.kept_up {
        missing.push("the driver fell behind its schedule: the engines were measured at the rate the generator and log reached, not the scenario's".to_owned());
    }
    if results.oracle.late_dropped.values().all(|&count| count == 0) {
        missing.push("no event arrived after the watermark: completeness cannot separate the architectures (add [lateness] offline phones, or shorten [watermark] delay)".to_owned());
    }
    if results.engines.values().all(|engine| engine.faults.crashes == 0) {
        missing.push(
            "no crash was injected: exactly-once held only in a run without failures (add a [[faults]] crash)"
                .to_owned(),
        );
    }
    if results.engines.values().all(|engine| engine.reprocess.events == 0) {
        missing
            .push("no rebuild was timed: the reprocessing figures are missing (run without --no-reprocess)".to_owned());
    }
    if results.capacity.is_none() {
        missing.push("no capacity search: cores at the target come from CPU-seconds per event at full utilisation (`lk advise` or `lk capacity` measures the sustainable rate)".to_owned());
    }
    missing
}

/// `12.3 ms over` or `12.3 ms under` for a signed excess.
fn above_below(excess: f64, unit: &str, over: &str, under: &str) -> String {
    format!("{:.1} {unit} {}", excess.abs(), if excess > 0.0 { over } else { under })
}

/// A fraction with enough digits to tell 0.999 from 0.9995.
pub fn fraction(value: f64) -> String {
    if value >= 1.0 { "1".to_owned() } else { format!("{value:.4}") }
}

/// Seconds in the largest sensible unit: `12 s`, `4.2 min`, `3.1 h`, `2.0 d`.
pub fn human_seconds(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else if seconds < 7200.0 {
        format!("{:.1} min", seconds / 60.0)
    } else if seconds < 172_800.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} d", seconds / 86_400.0)
    }
}
