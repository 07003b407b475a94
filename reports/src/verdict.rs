//! The verdict section, first in report.html and report.md: the answer, the requirements
//! against each architecture, what each needs at the target (extrapolated, with its basis),
//! and the seed's claims checked. Both formats render the same tables from here.

use lk_harness::results::Results;
use lk_harness::verdict::{Verdict, architecture, human_seconds};

/// A table: a heading row and body rows, as plain text cells.
pub struct Table {
    /// Column headings.
    pub head: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<String>>,
}

/// The verdict's parts, ready to render.
pub struct Section {
    /// The answer in one sentence.
    pub summary: String,
    /// What decides it and by how much.
    pub deciding: String,
    /// Requirement by requirement.
    pub requirements: Table,
    /// At the target, extrapolated.
    pub at_target: Table,
    /// What each extrapolation comes from.
    pub bases: Vec<String>,
    /// What the run could not show.
    pub missing: Vec<String>,
    /// The seed's claims.
    pub claims: Table,
}

/// Decimal bytes in a human unit (storage is priced by the decimal GB).
fn bytes(bytes: f64) -> String {
    for (unit, size) in [("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)] {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes / size);
        }
    }
    format!("{bytes:.0} B")
}

/// The section of a run's verdict, or `None` when the results have none.
pub fn section(results: &Results) -> Option<Section> {
    let verdict: &Verdict = results.verdict.as_ref()?;
    let names: Vec<&String> = verdict.assessments.keys().collect();
    let mut head = vec!["requirement".to_owned(), "required".to_owned()];
    head.extend(names.iter().map(|name| architecture(name)));
    let mut requirements = Table { head, rows: Vec::new() };
    if let Some(first) = names.first().and_then(|name| verdict.assessments.get(*name)) {
        for (index, check) in first.checks.iter().enumerate() {
            let mut row = vec![check.requirement.clone(), check.required.clone()];
            for name in &names {
                let cell = verdict.assessments[*name].checks.get(index).map_or_else(String::new, |check| {
                    let mark = match check.met {
                        Some(true) => "meets",
                        Some(false) => "FAILS",
                        None => "unknown",
                    };
                    format!("{} ({mark})", check.measured)
                });
                row.push(cell);
            }
            requirements.rows.push(row);
        }
    }
    let mut head = vec!["at the target (extrapolated)".to_owned()];
    head.extend(names.iter().map(|name| architecture(name)));
    let mut at_target = Table { head, rows: Vec::new() };
    let row = |label: &str, cell: &dyn Fn(&lk_harness::verdict::Extrapolation) -> String| {
        let mut row = vec![label.to_owned()];
        row.extend(names.iter().map(|name| cell(&verdict.assessments[*name].at_target)));
        row
    };
    let requirements_of = &results.requirements;
    at_target.rows = vec![
        row("cores: live + batch", &|at| format!("{:.0} ({:.1} + {:.1})", at.cores, at.live_cores, at.batch_cores)),
        row("memory", &|at| bytes(at.memory_bytes)),
        row("log", &|at| bytes(at.log_bytes)),
        row("master dataset", &|at| bytes(at.master_bytes)),
        row("storage in all", &|at| bytes(at.storage_bytes)),
        row("rebuild the whole history", &|at| {
            at.reprocess_seconds.map_or_else(|| "not measured".to_owned(), human_seconds)
        }),
        row("cost a month", &|at| {
            format!("${:.0} (compute ${:.0}, storage ${:.0})", at.usd_month, at.compute_usd_month, at.storage_usd_month)
        }),
    ];
    let mut bases = vec![format!(
        "The target: {:.0} events/s, {} of history, the log replicated {}x (Lambda's log kept {}), Lambda's batch views recomputed every {}, at ${}/core-hour and ${}/GB-month.",
        requirements_of.rate_eps,
        human_seconds(requirements_of.history_seconds),
        requirements_of.log_replicas,
        human_seconds(requirements_of.log_retention_seconds),
        human_seconds(requirements_of.batch_every_seconds),
        requirements_of.core_hour_usd,
        requirements_of.gb_month_usd
    )];
    for name in &names {
        let at = &verdict.assessments[*name].at_target;
        let scaling = at.scaling_1_to_2.map_or_else(String::new, |scaling| {
            format!(" From one core to two it scaled at {:.0}% of linear.", scaling * 100.0)
        });
        bases.push(format!(
            "{}: live cores {}.{scaling} Rebuild: {}. Compaction: {}.",
            architecture(name),
            at.basis,
            at.reprocess_basis,
            at.compaction
        ));
    }
    let claims = Table {
        head: ["topic", "the textbook says", "measured here", "finding", "flips at"].map(str::to_owned).to_vec(),
        rows: verdict
            .claims
            .iter()
            .map(|claim| {
                vec![
                    claim.topic.clone(),
                    claim.claim.clone(),
                    claim.evidence.clone(),
                    claim.finding.name().to_owned(),
                    claim.flips_at.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    };
    let deciding = if verdict.deciding.is_empty() {
        String::new()
    } else if verdict.margin.is_empty() {
        format!("Decided by: {}.", verdict.deciding)
    } else {
        format!("Decided by: {} (margin: {}).", verdict.deciding, verdict.margin)
    };
    Some(Section {
        summary: verdict.summary.clone(),
        deciding,
        requirements,
        at_target,
        bases,
        missing: verdict.missing.clone(),
        claims,
    })
}
