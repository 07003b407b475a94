//! The seed's textbook comparison, row by row, against this run's numbers. Each row says what
//! the textbook claims, what was measured, and whether the measurement confirms it, refutes it,
//! or depends on a setting (with the value where it flips, when the numbers show one).

use serde::{Deserialize, Serialize};

use super::{Verdict, architecture, fraction};
use crate::results::{EngineResults, Results};

/// Two figures closer than this (relative) neither confirm nor refute an ordering.
const SAME: f64 = 0.10;

/// What the numbers say about a claim.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Finding {
    /// The measurement agrees.
    Confirmed,
    /// The measurement contradicts it.
    Refuted,
    /// It holds or not depending on a setting or requirement.
    Depends,
    /// The run did not exercise it.
    #[default]
    Untested,
}

impl Finding {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Finding::Confirmed => "confirmed",
            Finding::Refuted => "refuted",
            Finding::Depends => "depends",
            Finding::Untested => "untested",
        }
    }
}

/// One row.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    /// The row: `reprocessing`, `late data`, ...
    pub topic: String,
    /// What the textbook says.
    pub claim: String,
    /// What this run measured.
    pub evidence: String,
    /// What that makes of the claim.
    pub finding: Finding,
    /// Where it flips, when the numbers show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flips_at: Option<String>,
}

/// Every claim against `results`; empty unless both architectures ran.
pub fn claims(results: &Results, verdict: &Verdict) -> Vec<Claim> {
    let (Some(kappa), Some(lambda)) = (results.engines.get("kappa"), results.engines.get("lambda")) else {
        return Vec::new();
    };
    vec![
        code(verdict),
        fault_tolerance(kappa, lambda),
        late_data(results, kappa, lambda),
        reprocessing(kappa, lambda),
        consistency(kappa, lambda),
        operational_cost(verdict, results.requirements.history_seconds),
        real_time(kappa, lambda),
        choose_lambda(verdict, kappa),
    ]
}

/// `a` against `b`: which is larger by more than [`SAME`].
fn order(a: f64, b: f64) -> std::cmp::Ordering {
    if a > b * (1.0 + SAME) {
        std::cmp::Ordering::Greater
    } else if b > a * (1.0 + SAME) {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Equal
    }
}

fn code(verdict: &Verdict) -> Claim {
    let lines = |name: &str| verdict.assessments.get(name).map_or(0, |assessment| assessment.own_code_lines);
    let (kappa, lambda) = (lines("kappa"), lines("lambda"));
    let finding = match (kappa, lambda) {
        (0, _) | (_, 0) => Finding::Untested,
        _ => match order(lambda as f64, kappa as f64) {
            std::cmp::Ordering::Greater => Finding::Confirmed,
            std::cmp::Ordering::Less => Finding::Refuted,
            std::cmp::Ordering::Equal => Finding::Depends,
        },
    };
    Claim {
        topic: "code duplication and complexity".to_owned(),
        claim: "Lambda high (two code paths and a master dataset), Kappa low (one job)".to_owned(),
        evidence: format!(
            "lines of code of their own: Lambda {lambda}, Kappa {kappa} (the query logic itself is shared by both layers here, so Lambda's extra is the batch layer, master dataset and merge)"
        ),
        finding,
        flips_at: None,
    }
}

fn fault_tolerance(kappa: &EngineResults, lambda: &EngineResults) -> Claim {
    let held = |engine: &EngineResults| engine.correctness.lost == 0 && engine.correctness.duplicated == 0;
    let crashes = kappa.faults.crashes.min(lambda.faults.crashes);
    let finding = if crashes == 0 {
        Finding::Untested
    } else if held(kappa) && held(lambda) {
        Finding::Confirmed
    } else {
        Finding::Refuted
    };
    Claim {
        topic: "fault tolerance".to_owned(),
        claim: "both high: Lambda recomputes from the master dataset, Kappa replays the log".to_owned(),
        evidence: format!(
            "crashes, and the checker's verdict: Kappa {}, {} ({} records replayed); Lambda {}, {} ({} records replayed)",
            kappa.faults.crashes,
            kappa.correctness.verdict,
            kappa.faults.records_replayed,
            lambda.faults.crashes,
            lambda.correctness.verdict,
            lambda.faults.records_replayed
        ),
        finding,
        flips_at: None,
    }
}

fn late_data(results: &Results, kappa: &EngineResults, lambda: &EngineResults) -> Claim {
    let late = results.oracle.late_dropped.values().sum::<u64>();
    let (kappa_complete, lambda_complete) =
        (kappa.correctness.windowed_completeness, lambda.correctness.windowed_completeness);
    let corrected = lambda.lambda.as_ref().map_or(0, |lambda| lambda.cells_corrected);
    let finding = if late == 0 {
        Finding::Untested
    } else if lambda_complete > kappa_complete && (corrected > 0 || lambda_complete >= 1.0) {
        Finding::Confirmed
    } else {
        Finding::Refuted
    };
    Claim {
        topic: "late data".to_owned(),
        claim: "Lambda: handled by the batch layer; Kappa: requires windowing, and what the watermark passes is lost".to_owned(),
        evidence: format!(
            "{late} contributions arrived after the {} ms watermark; windowed completeness Kappa {}, Lambda {} ({corrected} cells corrected by batch runs)",
            results.scenario.watermark_delay_ms,
            fraction(kappa_complete),
            fraction(lambda_complete)
        ),
        finding,
        flips_at: (late > 0).then(|| {
            "a watermark delay at least the lateness of the latest events (see `lk sweep`): Kappa then drops nothing, at that much window latency".to_owned()
        }),
    }
}

fn reprocessing(kappa: &EngineResults, lambda: &EngineResults) -> Claim {
    let replay = kappa.reprocess.events_per_second;
    let batch = lambda.lambda.as_ref().map_or(0.0, |lambda| lambda.batch_events_per_second);
    let finding = if replay <= 0.0 || batch <= 0.0 {
        Finding::Untested
    } else {
        match order(batch, replay) {
            std::cmp::Ordering::Greater => Finding::Confirmed,
            std::cmp::Ordering::Less => Finding::Refuted,
            std::cmp::Ordering::Equal => Finding::Depends,
        }
    };
    Claim {
        topic: "reprocessing".to_owned(),
        claim: "Lambda fast (batch over the master dataset), Kappa slow (replaying the log)".to_owned(),
        evidence: format!(
            "rebuild rate on the same cores: Lambda's batch {batch:.0} events/s, Kappa's replay {replay:.0} events/s ({:.2}x)",
            if replay > 0.0 { batch / replay } else { 0.0 }
        ),
        finding,
        flips_at: None,
    }
}

fn consistency(kappa: &EngineResults, lambda: &EngineResults) -> Claim {
    let corrected = lambda.lambda.as_ref().map_or(0, |lambda| lambda.cells_corrected);
    let revised = kappa.window_latency.results_revised;
    let finding = if corrected > 0 {
        Finding::Confirmed
    } else if revised > 0 {
        Finding::Refuted
    } else {
        Finding::Untested
    };
    Claim {
        topic: "consistency".to_owned(),
        claim: "Lambda eventually consistent (batch views overwrite the speed layer's), Kappa one consistent view"
            .to_owned(),
        evidence: format!(
            "cells Lambda served and its batch runs later changed: {corrected}; window results Kappa served and later revised: {revised}"
        ),
        finding,
        flips_at: None,
    }
}

fn operational_cost(verdict: &Verdict, history_seconds: f64) -> Claim {
    let cost = |name: &str| verdict.assessments.get(name).map(|assessment| &assessment.at_target);
    let (Some(kappa), Some(lambda)) = (cost("kappa"), cost("lambda")) else {
        return Claim { topic: "operational cost".to_owned(), ..Claim::default() };
    };
    let finding = match order(lambda.usd_month, kappa.usd_month) {
        std::cmp::Ordering::Greater => Finding::Confirmed,
        std::cmp::Ordering::Less => Finding::Refuted,
        std::cmp::Ordering::Equal => Finding::Depends,
    };
    Claim {
        topic: "operational cost".to_owned(),
        claim: "Lambda higher (two systems to run), Kappa lower".to_owned(),
        evidence: format!(
            "extrapolated to the requirements: Lambda ${:.0} a month ({:.0} cores, {:.0} TB stored), Kappa ${:.0} ({:.0} cores, {:.0} TB stored)",
            lambda.usd_month,
            lambda.cores,
            lambda.storage_bytes / 1e12,
            kappa.usd_month,
            kappa.cores,
            kappa.storage_bytes / 1e12
        ),
        finding,
        flips_at: storage_flip(kappa, lambda, history_seconds),
    }
}

/// Where the cost order flips with the history kept. What grows with the history is Kappa's
/// log, Lambda's master dataset and Lambda's batch cores (each batch run reads the whole
/// history); live cores, Lambda's log retention and the state do not. With each cost a fixed
/// part plus a part proportional to the history, the two lines cross at one history, if any.
fn storage_flip(kappa: &super::Extrapolation, lambda: &super::Extrapolation, history_seconds: f64) -> Option<String> {
    let core_month = |at: &super::Extrapolation| at.compute_usd_month / at.cores.max(1.0);
    let gb_month = |at: &super::Extrapolation| at.storage_usd_month / at.storage_bytes.max(1.0);
    let kappa_growing = kappa.log_bytes * gb_month(kappa);
    let lambda_growing = lambda.master_bytes * gb_month(lambda) + lambda.batch_cores * core_month(lambda);
    let kappa_fixed = kappa.usd_month - kappa_growing;
    let lambda_fixed = lambda.usd_month - lambda_growing;
    let slope = kappa_growing - lambda_growing;
    if slope.abs() < 1e-9 {
        return None;
    }
    let multiple = (lambda_fixed - kappa_fixed) / slope;
    (multiple > 0.0 && multiple.is_finite()).then(|| {
        let (shorter, longer) = if slope > 0.0 { ("Kappa", "Lambda") } else { ("Lambda", "Kappa") };
        format!(
            "a history of about {}: {shorter} is cheaper below it, {longer} beyond (linear in the history; core counts rounded)",
            super::human_seconds(multiple * history_seconds)
        )
    })
}

fn real_time(kappa: &EngineResults, lambda: &EngineResults) -> Claim {
    let (kappa_p99, lambda_p99) = (kappa.latency_ms.p99, lambda.latency_ms.p99);
    let finding = match order(lambda_p99, kappa_p99) {
        std::cmp::Ordering::Greater => Finding::Confirmed,
        _ => Finding::Refuted,
    };
    Claim {
        topic: "real time first".to_owned(),
        claim: "choose Kappa when real time comes first".to_owned(),
        evidence: format!(
            "driver-location p99: Kappa {kappa_p99:.1} ms, Lambda's speed layer {lambda_p99:.1} ms: real time does not separate them unless Lambda's is slower"
        ),
        finding,
        flips_at: None,
    }
}

fn choose_lambda(verdict: &Verdict, kappa: &EngineResults) -> Claim {
    let incomplete = 1.0 - kappa.correctness.windowed_completeness;
    let completeness_decides = verdict.deciding.contains("completeness");
    let finding = if incomplete <= 0.0 {
        Finding::Untested
    } else if verdict.choice.as_deref() == Some("lambda") && completeness_decides {
        Finding::Confirmed
    } else {
        Finding::Depends
    };
    Claim {
        topic: "when late data is common".to_owned(),
        claim: "choose Lambda when late data is common and history matters".to_owned(),
        evidence: format!(
            "Kappa's windowed views missed {:.2}% of contributions to late data; the verdict chose {}",
            incomplete * 100.0,
            verdict.choice.as_deref().map_or_else(|| "neither".to_owned(), architecture)
        ),
        finding,
        flips_at: (incomplete > 0.0).then(|| {
            format!(
                "a completeness requirement above {}: below it Kappa meets it too and cost decides",
                fraction(kappa.correctness.windowed_completeness)
            )
        }),
    }
}
