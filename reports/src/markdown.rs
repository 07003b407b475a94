//! `report.md`: the headline table, the driver check and the comparison matrix as Markdown.
//! Its output depends only on the results, so it is snapshot-tested.

use std::fmt::Write;

use crate::{Run, format_bytes, format_rate, matrix};

/// A titled bulleted list, if there is anything in it.
fn list(out: &mut String, title: &str, lines: &[String], code: bool) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{title}\n");
    for line in lines {
        let _ = if code { writeln!(out, "- `{line}`") } else { writeln!(out, "- {line}") };
    }
}

/// A Markdown table; `|` in cells is escaped.
fn table(out: &mut String, table: &crate::verdict::Table) {
    let cell = |text: &String| text.replace('|', "\\|");
    let _ = writeln!(out, "| {} |", table.head.iter().map(cell).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(table.head.len()));
    for row in &table.rows {
        let _ = writeln!(out, "| {} |", row.iter().map(cell).collect::<Vec<_>>().join(" | "));
    }
    out.push('\n');
}

/// The verdict of one run: the answer, the requirements, the target, the claims.
fn verdict(out: &mut String, run: &Run, several: bool) {
    let Some(section) = crate::verdict::section(&run.results) else { return };
    let title = if several { format!("Verdict: {}", run.label) } else { "Verdict".to_owned() };
    let _ = writeln!(out, "## {title}\n\n**{}** {}\n", section.summary, section.deciding);
    table(out, &section.requirements);
    let _ = writeln!(out, "### At the target (extrapolated from this run, not measured there)\n");
    table(out, &section.at_target);
    list(out, "Where each figure comes from:", &section.bases, false);
    list(out, "What this run could not show:", &section.missing, false);
    let _ = writeln!(out, "\n### The textbook's claims, checked\n");
    table(out, &section.claims);
    let _ = writeln!(out, "## The run\n");
}

/// The verdict section of one run alone (what `lk advise` prints).
pub fn verdict_only(run: &Run) -> String {
    let mut out = String::new();
    verdict(&mut out, run, false);
    if let Some(end) = out.rfind("## The run") {
        out.truncate(end);
    }
    out
}

/// Renders the Markdown report for one run or a comparison of several.
pub fn render(runs: &[Run]) -> String {
    let mut out = String::new();
    match runs {
        [run] => {
            let scenario = &run.results.scenario;
            let _ = writeln!(out, "# lk: Lambda vs Kappa on `{}` (seed {})\n", scenario.name, scenario.seed);
            if !scenario.description.is_empty() {
                let _ = writeln!(out, "{}\n", scenario.description);
            }
        }
        _ => {
            let _ = writeln!(out, "# lk: {} runs compared\n", runs.len());
        }
    }
    for run in runs {
        verdict(&mut out, run, runs.len() > 1);
    }
    for run in runs {
        let results = &run.results;
        let generator = &results.generator;
        let _ = writeln!(
            out,
            "- **{}**: {} events at {} (target {}), {} partitions, {} log, {} CPUs; generator {}.",
            run.label,
            generator.events,
            format_rate(generator.achieved_rate_eps),
            format_rate(generator.target_rate_eps),
            results.scenario.partitions,
            results.environment.log_backend,
            results.environment.cpus,
            if generator.kept_up {
                format!("kept up (max schedule lag {:.1} ms)", generator.max_schedule_lag_ms)
            } else {
                format!(
                    "**fell behind** (max schedule lag {:.1} ms): engine figures are bounded by the driver",
                    generator.max_schedule_lag_ms
                )
            }
        );
    }
    out.push('\n');
    let multi = runs.len() > 1;
    let _ = writeln!(out, "|{} {} |", if multi { " run |" } else { "" }, matrix::HEADLINE.join(" | "));
    let _ = writeln!(out, "|{}---|{}", if multi { "---|" } else { "" }, "---:|".repeat(matrix::HEADLINE.len() - 1));
    for run in runs {
        for (name, engine) in &run.results.engines {
            let _ = writeln!(
                out,
                "|{} {} |",
                if multi { format!(" {} |", run.label) } else { String::new() },
                matrix::headline(name, engine).join(" | ")
            );
        }
    }
    out.push('\n');
    for run in runs {
        let spread = lk_harness::summary::spread(&run.results);
        if !spread.is_empty() {
            let _ = writeln!(
                out,
                "{}: the table combines the repetitions (merged histograms, medians, the worst correctness); each \
                 figure over them:\n\n```\n{spread}```\n",
                run.label
            );
        }
    }
    out.push_str(
        "Latency is from each event's scheduled send time to the serving layer reflecting it (Q1), so a slow \
         generator cannot hide delay. Kappa is checked against the oracle under its lateness policy, Lambda against \
         every event (its batch layer corrects late data).\n",
    );
    if runs.iter().any(|run| run.results.engines.values().any(|engine| engine.external.is_some())) {
        out.push_str(crate::EXTERNAL_NOTE);
        out.push('\n');
    }
    for run in runs {
        for line in crate::lake::lines(&run.results) {
            let _ = writeln!(out, "\n{line}");
        }
    }
    for run in runs {
        if let Some(steadiness) = &run.results.steadiness {
            let label = if multi { format!(" ({})", run.label) } else { String::new() };
            let _ =
                writeln!(out, "\n**Over time**{label}, half against half after the warm-up: {}.", steadiness.line());
        }
    }
    let staged: Vec<(String, &lk_harness::metrics::LatencyStages)> = runs
        .iter()
        .flat_map(|run| {
            run.results.engines.iter().filter_map(move |(name, engine)| {
                let label = if multi { format!("{name} ({})", run.label) } else { name.clone() };
                engine.latency_stages.as_ref().map(|stages| (label, stages))
            })
        })
        .collect();
    if !staged.is_empty() {
        out.push_str(
            "\nWhere visible latency goes, stage by stage, for one ping in 64 (mean / p99 ms; the means add up to the \
             sampled pings' mean visible latency; docs/measurement.md says what each stage covers):\n\n| engine |",
        );
        for stage in lk_harness::metrics::STAGES {
            let _ = write!(out, " {stage} |");
        }
        out.push_str("\n|---|");
        for _ in lk_harness::metrics::STAGES {
            out.push_str("---:|");
        }
        out.push('\n');
        for (label, stages) in &staged {
            let _ = write!(out, "| {label} |");
            for stage in &stages.stages {
                let _ = write!(out, " {:.1} / {:.1} |", stage.mean_ms, stage.p99_ms);
            }
            out.push('\n');
        }
    }
    for run in runs {
        if let Some(lambda) = run.results.engines.get("lambda").and_then(|engine| engine.lambda.as_ref()) {
            let scheduled = lambda.batch_runs.iter().filter(|batch| !batch.last).count();
            let _ = writeln!(
                out,
                "\n**Lambda{}**: {} scheduled batch runs every {} s of event time (+1 final), longest {:.2} s, final run {}; \
                 batch views at most {:.1} s stale (mean {:.1} s); batch runs corrected {} cells ({} contributions) of \
                 the speed layer's views; master dataset {} rows in {} files, {}.",
                if multi { format!(" ({})", run.label) } else { String::new() },
                scheduled,
                lambda.batch_interval_seconds,
                lambda.batch_seconds_max,
                format_rate(lambda.batch_events_per_second),
                lambda.staleness_seconds_max,
                lambda.staleness_seconds_mean,
                lambda.cells_corrected,
                lambda.contributions_corrected,
                lambda.master.rows,
                lambda.master.files,
                format_bytes(lambda.master.bytes)
            );
        }
    }
    for run in runs {
        let _ = writeln!(
            out,
            "\n## Faults and exactly-once{}\n",
            if multi { format!(" ({})", run.label) } else { String::new() }
        );
        let _ = writeln!(out, "| {} |", crate::faults::HEADINGS.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(crate::faults::HEADINGS.len()));
        for row in crate::faults::verdict_rows(&run.results) {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        let faults = crate::faults::fault_lines(&run.results);
        if faults.is_empty() {
            out.push_str("\nNo faults were injected.\n");
        }
        list(&mut out, "Injected faults:", &faults, false);
        list(&mut out, "Recovery from each crash:", &crate::faults::crash_lines(&run.results), false);
        if let Some(line) = crate::faults::backpressure_line(&run.results) {
            let _ = writeln!(out, "\n{line}");
        }
        list(&mut out, "Events the checker named:", &crate::faults::named_events(&run.results, 3), true);
    }
    for run in runs {
        let _ = writeln!(
            out,
            "\n## Comparison matrix{}\n",
            if multi { format!(" ({})", run.label) } else { String::new() }
        );
        let others = matrix::external_columns(&run.results);
        let _ = writeln!(
            out,
            "| aspect | Kappa | Lambda |{}\n|---|---|---|{}",
            others.iter().map(|name| format!(" {name} |")).collect::<String>(),
            "---|".repeat(others.len())
        );
        for row in matrix::rows(&run.results) {
            let _ = writeln!(
                out,
                "| {} | {} | {} |{}",
                row.aspect,
                row.kappa,
                row.lambda,
                row.others.iter().map(|cell| format!(" {cell} |")).collect::<String>()
            );
        }
    }
    for run in runs {
        if let Some(profile) = &run.results.stream_profile {
            out.push('\n');
            if multi {
                let _ = writeln!(out, "### {}\n", run.label);
            }
            out.push_str(&crate::profile::profile_markdown(profile));
        }
    }
    out
}
