//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, no external assets)
//! that explains itself: every chart says what it measures and how.

use std::fmt::Write;

use crate::{Run, charts, format_bytes, format_rate, matrix};

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;\
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:4px 8px;\
text-align:right;vertical-align:top}th{background:#f4f4f4}td.text,th.text{text-align:left}.warn{background:#fff4e5;\
border-left:4px solid #f0a020;padding:.5em 1em}.note{color:#555;font-size:.9em}figure{margin:1em 0}\
figure svg{max-width:100%;height:auto}code{background:#f4f4f4;padding:0 3px}.wide{overflow-x:auto}";

/// Series labels: the engine, or `run/engine` when several runs are compared.
fn label(runs: &[Run], run: &Run, engine: &str) -> String {
    if runs.len() > 1 { format!("{}/{engine}", run.label) } else { engine.to_owned() }
}

fn figure(out: &mut String, svg: Option<String>, caption: &str, missing: &str) {
    // `caption` and `missing` are HTML written here, not user text.
    match svg {
        Some(svg) => {
            let _ = write!(out, "<figure>{svg}<figcaption class=\"note\">{caption}</figcaption></figure>");
        }
        None => {
            let _ = write!(out, "<p class=\"note\"><em>Not measured in this run:</em> {missing}</p>");
        }
    }
}

/// A titled bulleted list, if there is anything in it.
fn list(out: &mut String, title: &str, lines: &[String], code: bool) {
    if lines.is_empty() {
        return;
    }
    let _ = write!(out, "<p>{}</p><ul>", escape(title));
    for line in lines {
        if code {
            let _ = write!(out, "<li><code>{}</code></li>", escape(line));
        } else {
            let _ = write!(out, "<li>{}</li>", escape(line));
        }
    }
    out.push_str("</ul>");
}

/// Renders the HTML report.
pub fn render(runs: &[Run]) -> String {
    let mut out = String::new();
    for section in SECTIONS {
        section(&mut out, runs);
    }
    out
}

/// The report's sections, in order.
const SECTIONS: [fn(&mut String, &[Run]); 14] = [
    header,
    verdict,
    headline,
    faults,
    latency,
    throughput,
    over_time,
    completeness,
    reprocessing,
    cost,
    batch_layer,
    comparison,
    stream,
    scenario,
];

/// The stream's profile, of each run that has one.
fn stream(out: &mut String, runs: &[Run]) {
    for run in runs {
        if let Some(profile) = &run.results.stream_profile {
            if runs.len() > 1 {
                let _ = write!(out, "<h3>{}</h3>", escape(&run.label));
            }
            out.push_str(&crate::profile::profile_html(profile));
        }
    }
}

/// The page's head, title, and the warnings a reader must see first (driver, pacing).
fn header(out: &mut String, runs: &[Run]) {
    let title = match runs {
        [run] => format!("lk: Lambda vs Kappa on {} (seed {})", run.results.scenario.name, run.results.scenario.seed),
        _ => format!("lk: {} runs compared", runs.len()),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>",
        escape(&title),
        escape(&title)
    );
    for run in runs {
        let results = &run.results;
        let generator = &results.generator;
        if !results.scenario.description.is_empty() {
            let _ = write!(out, "<p>{}</p>", escape(&results.scenario.description));
        }
        if !generator.kept_up {
            let _ = write!(
                out,
                "<p class=\"warn\">{}: the generator or the log did not keep up (max schedule lag {:.1} ms, {} appended of {} \
                 generated). Engine figures in this run are bounded by the driver, not by the engines.</p>",
                escape(&run.label),
                generator.max_schedule_lag_ms,
                generator.records_appended,
                generator.events
            );
        }
        if !results.environment.paced {
            let _ = write!(
                out,
                "<p class=\"warn\">{}: run flat out (<code>--rate max</code>): events were sent before they were due, so \
                 latencies here mean nothing.</p>",
                escape(&run.label)
            );
        }
    }
}

/// A table of plain cells; the first column is text, the others too when `text`.
fn table(out: &mut String, table: &crate::verdict::Table, text: bool) {
    out.push_str("<div class=\"wide\"><table><tr>");
    for heading in &table.head {
        let _ = write!(out, "<th class=\"text\">{}</th>", escape(heading));
    }
    out.push_str("</tr>");
    for row in &table.rows {
        out.push_str("<tr>");
        for (index, cell) in row.iter().enumerate() {
            let class = if index == 0 || text { " class=\"text\"" } else { "" };
            let marked = if cell.contains("FAILS") || cell == "refuted" { " style=\"background:#fdecea\"" } else { "" };
            let _ = write!(out, "<td{class}{marked}>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></div>");
}

/// The verdict: the answer first, then why, what each costs at the target, and the claims.
fn verdict(out: &mut String, runs: &[Run]) {
    for run in runs {
        let Some(section) = crate::verdict::section(&run.results) else { continue };
        let title = if runs.len() > 1 { format!("Verdict: {}", run.label) } else { "Verdict".to_owned() };
        let _ = write!(
            out,
            "<h2>{}</h2><p><b>{}</b> {}</p>",
            escape(&title),
            escape(&section.summary),
            escape(&section.deciding)
        );
        table(out, &section.requirements, true);
        let _ = write!(
            out,
            "<h3>At the target</h3><p class=\"note\">Extrapolated from this run's measurements, not measured at the target.</p>"
        );
        table(out, &section.at_target, false);
        list(out, "Where each figure comes from:", &section.bases, false);
        list(out, "What this run could not show:", &section.missing, false);
        out.push_str("<h3>The textbook's claims, checked</h3>");
        table(out, &section.claims, true);
    }
}

/// The headline table: one row per engine.
fn headline(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Headline</h2><div class=\"wide\"><table><tr>");
    if runs.len() > 1 {
        out.push_str("<th class=\"text\">run</th>");
    }
    for heading in matrix::HEADLINE {
        let _ = write!(out, "<th>{heading}</th>");
    }
    out.push_str("</tr>");
    for run in runs {
        for (name, engine) in &run.results.engines {
            out.push_str("<tr>");
            if runs.len() > 1 {
                let _ = write!(out, "<td class=\"text\">{}</td>", escape(&run.label));
            }
            for (index, cell) in matrix::headline(name, engine).iter().enumerate() {
                let class = if index == 0 { " class=\"text\"" } else { "" };
                let _ = write!(out, "<td{class}>{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        }
    }
    out.push_str(
        "</table></div><p class=\"note\">Correctness is checked by the oracle on every run: <b>lost</b> and <b>duplicated</b> \
         count event contributions missing from or counted more than once in the served views, per cell, so a loss and \
         a duplicate cannot cancel out; <b>mismatched</b> counts (query, key, window) cells that differ. Kappa is \
         compared with the oracle under its lateness policy (what it drops by design is <b>late dropped</b>), Lambda \
         with every event (its batch layer corrects late data). <b>Completeness</b> is the share of every event's \
         contributions served. Both engines share one process, so peak RSS is the process's.</p>",
    );
    if runs.iter().any(|run| run.results.engines.values().any(|engine| engine.external.is_some())) {
        let _ = write!(out, "<p class=\"note\">{}</p>", escape(crate::EXTERNAL_NOTE));
    }
    for run in runs {
        for line in crate::lake::lines(&run.results) {
            let _ = write!(out, "<p>{}</p>", escape(&line).replace('`', ""));
        }
    }
}

/// Faults and exactly-once: the verdicts, the faults injected, the recoveries, the events the checker named.
fn faults(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Faults and exactly-once</h2>");
    for run in runs {
        if runs.len() > 1 {
            let _ = write!(out, "<h3>{}</h3>", escape(&run.label));
        }
        out.push_str("<table><tr>");
        for heading in crate::faults::HEADINGS {
            let _ = write!(out, "<th class=\"text\">{heading}</th>");
        }
        out.push_str("</tr>");
        for row in crate::faults::verdict_rows(&run.results) {
            out.push_str("<tr>");
            for cell in row {
                let _ = write!(out, "<td class=\"text\">{}</td>", escape(&cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
        let faults = crate::faults::fault_lines(&run.results);
        if faults.is_empty() {
            out.push_str("<p class=\"note\">No faults were injected in this run.</p>");
        }
        list(out, "Injected faults:", &faults, false);
        list(out, "Recovery from each crash:", &crate::faults::crash_lines(&run.results), false);
        if let Some(line) = crate::faults::backpressure_line(&run.results) {
            let _ = write!(out, "<p>{}</p>", escape(&line).replace('`', ""));
        }
        list(out, "Events the checker named:", &crate::faults::named_events(&run.results, 3), true);
    }
    out.push_str(
        "<p class=\"note\">Every cell of every view carries an order-independent checksum of its events' ids, so the \
         checker sees a lost and a duplicated event in the same window. <b>Recovery</b> runs from the crash until \
         the engine's consumer lag is back to what it was before (or to 100 ms of input); <b>replayed</b> counts \
         records read again after restarts. At-least-once is expected to duplicate and at-most-once to lose: \
         that the checker sees it is what makes an exactly-once verdict credible.</p>",
    );
}

/// Visible latency, window processing latency, and event-time latency with its price.
fn latency(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Latency</h2>");
    let visible: Vec<(String, &lk_harness::metrics::LatencySummary)> = runs
        .iter()
        .flat_map(|run| {
            run.results.engines.iter().map(move |(name, engine)| (label(runs, run, name), &engine.latency_ms))
        })
        .collect();
    figure(
        out,
        charts::latency("Visible latency (Q1 driver location)", &visible),
        "From each event's scheduled send time (not its actual send: no coordinated omission) until the serving layer \
         reflects it, after the warm-up; log scales, HdrHistogram percentiles to the maximum.",
        "no latency samples were recorded.",
    );
    let window: Vec<(String, &lk_harness::metrics::LatencySummary)> = runs
        .iter()
        .flat_map(|run| {
            run.results.engines.iter().filter_map(move |(name, engine)| {
                engine.window_latency.processing_ms.as_ref().map(|summary| (label(runs, run, name), summary))
            })
        })
        .collect();
    figure(
        out,
        charts::latency("Window processing latency (Q2 to Q5)", &window),
        "From the scheduled send time of the last event that contributed to a window result until the result was \
         first served: what the engine itself costs.",
        "no window result was served during the run (windows are longer than the event time the run covered).",
    );
    out.push_str(&window_event_time(runs));
    latency_stages(out, runs);
}

/// Where visible latency goes, stage by stage: a stacked bar of the stages' means per engine,
/// and their medians and 99th percentiles.
fn latency_stages(out: &mut String, runs: &[Run]) {
    let staged: Vec<(String, &lk_harness::metrics::LatencyStages)> = runs
        .iter()
        .flat_map(|run| {
            run.results.engines.iter().filter_map(move |(name, engine)| {
                engine.latency_stages.as_ref().map(|stages| (label(runs, run, name), stages))
            })
        })
        .collect();
    if staged.is_empty() {
        return;
    }
    let rows: Vec<(String, Vec<f64>)> = staged
        .iter()
        .map(|(label, stages)| (label.clone(), stages.stages.iter().map(|stage| stage.mean_ms).collect()))
        .collect();
    figure(
        out,
        charts::stacked_bars("Where visible latency goes (mean per stage)", "ms", &lk_harness::metrics::STAGES, &rows),
        "For one ping in 64: its due time to the producer's send (schedule), to the log's acknowledgement (produce), to \
         the engine's read (fetch), through processing, the wait for the next transaction (commit wait), the \
         transaction's commit, and until the serving layer had it (serve). The means add up to the sampled pings' \
         mean visible latency (docs/measurement.md).",
        "no stage was sampled.",
    );
    out.push_str("<table><tr><th class=\"text\">engine</th><th class=\"text\">stage</th><th>mean ms</th><th>p50 ms</th><th>p99 ms</th></tr>");
    for (label, stages) in &staged {
        for stage in &stages.stages {
            let _ = write!(
                out,
                "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                escape(label),
                escape(&stage.stage),
                stage.mean_ms,
                stage.p50_ms,
                stage.p99_ms
            );
        }
    }
    out.push_str("</table>");
}

/// Records consumed per second, faults marked.
fn throughput(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Throughput over time</h2>");
    let mut throughput: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for run in runs {
        for (name, engine) in &run.results.engines {
            throughput.push((label(runs, run, name), engine.throughput_series.clone()));
        }
    }
    figure(
        out,
        charts::lines(
            "Records consumed per second",
            "seconds since start",
            "records/s",
            &throughput,
            None,
            &runs.iter().flat_map(|run| crate::faults::markers(&run.results)).collect::<Vec<_>>(),
        ),
        &format!(
            "Sampled every half second while the generator ran; dashed lines mark injected faults. Target rate: {}.",
            runs.iter()
                .map(|run| format!("{} {}", escape(&run.label), format_rate(run.results.generator.target_rate_eps)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "no throughput samples (the run was shorter than half a second).",
    );
}

/// Latency and memory second by second, with whether they held steady: where a long run's drift
/// shows.
fn over_time(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Latency and memory over time</h2>");
    let markers: Vec<_> = runs.iter().flat_map(|run| crate::faults::markers(&run.results)).collect();
    let mut latency: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for run in runs {
        for (name, engine) in &run.results.engines {
            if !engine.latency_series.is_empty() {
                let series = |value: fn(&lk_harness::metrics::LatencySample) -> f64| {
                    engine.latency_series.iter().map(|sample| (sample.at_seconds, value(sample))).collect()
                };
                latency.push((format!("{} p99", label(runs, run, name)), series(|sample| sample.p99_ms)));
                latency.push((format!("{} p50", label(runs, run, name)), series(|sample| sample.p50_ms)));
            }
        }
    }
    figure(
        out,
        charts::lines("Visible latency (Q1), each second", "seconds since start", "ms", &latency, None, &markers),
        "The 99th percentile and the median of the location updates served in each second after the warm-up;          dashed lines mark injected faults.",
        "no latency samples (the run was shorter than its warm-up, or its engines' latency is read after the run).",
    );
    let mut memory: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for run in runs {
        let series = |value: fn(&lk_harness::steadiness::ResourceSample) -> u64| {
            run.results.resource_series.iter().map(|sample| (sample.at_seconds, value(sample) as f64 / 1e6)).collect()
        };
        let prefix = if runs.len() > 1 { format!("{} ", run.label) } else { String::new() };
        if !run.results.resource_series.is_empty() {
            memory.push((format!("{prefix}lk resident memory"), series(|sample| sample.rss_bytes)));
            memory.push((format!("{prefix}log"), series(|sample| sample.log_bytes)));
            memory.push((format!("{prefix}master dataset"), series(|sample| sample.master_bytes)));
            memory.push((format!("{prefix}checkpoints"), series(|sample| sample.checkpoint_bytes)));
        }
    }
    let steadiness: Vec<String> = runs
        .iter()
        .filter_map(|run| {
            let line = escape(&run.results.steadiness.as_ref()?.line());
            Some(if runs.len() > 1 { format!("{}: {line}", escape(&run.label)) } else { line })
        })
        .collect();
    figure(
        out,
        charts::lines("Memory and stored bytes", "seconds since start", "MB", &memory, None, &markers),
        &format!(
            "lk's resident memory and what the run stored, each second until the engines had drained. The log and              the master dataset are the history both architectures keep, and grow with the input by design. {}",
            if steadiness.is_empty() {
                "The run was too short to judge whether memory and latency held steady.".to_owned()
            } else {
                format!("Over the input's span after the warm-up, half against half: {}.", steadiness.join("; "))
            }
        ),
        "no resource samples (the run was shorter than a second).",
    );
}

/// Completeness of late data over time.
fn completeness(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Late data: completeness over time</h2>");
    let mut completeness: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for run in runs {
        for (name, engine) in &run.results.engines {
            completeness.push((label(runs, run, name), engine.completeness_series.clone()));
        }
    }
    figure(
        out,
        charts::lines(
            "Share of the oracle's Q3 requests served",
            "seconds since the window could be complete",
            "completeness",
            &completeness,
            Some((0.0, 1.05)),
            &[],
        ),
        "For each second since a zone-demand window could first be complete, the requests served over the oracle's \
         count of every event for those windows. Kappa trades latency for completeness through its watermark; \
         Lambda's batch runs correct what its speed layer dropped.",
        "no zone-demand window could be complete before the run ended (its windows are longer than the event time \
         the run covered); run a scenario with time compression, such as scenarios/quickstart.toml or history.toml.",
    );
}

/// Time to rebuild every view from history.
fn reprocessing(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Reprocessing</h2>");
    let mut reprocess = Vec::new();
    for run in runs {
        for (name, engine) in &run.results.engines {
            if engine.reprocess.seconds > 0.0 {
                reprocess.push((
                    format!("{} ({})", label(runs, run, name), format_rate(engine.reprocess.events_per_second)),
                    engine.reprocess.seconds,
                ));
            }
        }
    }
    figure(
        out,
        charts::bars("Time to rebuild every view from history", "seconds", &reprocess),
        "Kappa replays the retained log into a new view version and swaps it in; Lambda reruns its batch job over the \
         whole master dataset on every core.",
        "reprocessing was skipped (--no-reprocess).",
    );
}

/// CPU, memory and storage.
fn cost(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Cost</h2><table><tr><th class=\"text\">engine</th><th>CPU s</th><th>peak RSS</th><th>stored</th><th>of which checkpoints</th><th>views in memory</th></tr>");
    let mut cpu = Vec::new();
    for run in runs {
        for (name, engine) in &run.results.engines {
            let _ = write!(
                out,
                "<tr><td class=\"text\">{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&label(runs, run, name)),
                engine.cost.cpu_seconds,
                format_bytes(engine.cost.peak_rss_bytes),
                format_bytes(engine.cost.stored_bytes),
                format_bytes(engine.cost.checkpoint_bytes),
                format_bytes(engine.cost.view_bytes),
            );
            cpu.push((label(runs, run, name), engine.cost.cpu_seconds));
        }
    }
    out.push_str("</table>");
    figure(
        out,
        charts::bars("CPU seconds during the run", "CPU seconds", &cpu),
        "User plus system CPU of each engine's threads (Lambda's includes its batch runs and master dataset writer).",
        "no CPU time was recorded.",
    );
}

/// Lambda's batch layer: its runs, what they corrected, and the staleness of its views.
fn batch_layer(out: &mut String, runs: &[Run]) {
    for run in runs {
        let Some(lambda) = run.results.engines.get("lambda").and_then(|engine| engine.lambda.as_ref()) else {
            continue;
        };
        let _ = write!(
            out,
            "<h2>Lambda's batch layer{}</h2><p>A batch run every {} s of event time recomputes all five views from the \
             master dataset (<code>{}</code>: {} rows, {} files in {} date/hour partitions, {}). Its view is served \
             merged with the speed layer's views after its cutoff; batch views were at most {:.1} s old (mean {:.1} s); \
             {} runs started late because the previous one was busy.</p>",
            if runs.len() > 1 { format!(" ({})", escape(&run.label)) } else { String::new() },
            lambda.batch_interval_seconds,
            escape(&lambda.master.path),
            lambda.master.rows,
            lambda.master.files,
            lambda.master.hive_partitions,
            format_bytes(lambda.master.bytes),
            lambda.staleness_seconds_max,
            lambda.staleness_seconds_mean,
            lambda.batch_runs_delayed
        );
        out.push_str(
            "<table><tr><th>cutoff at s</th><th>files</th><th>rows</th><th>seconds</th><th>rows/s</th><th>cutoff to served s</th>\
             <th>cells corrected</th><th>contributions added</th><th>removed</th><th class=\"text\">run</th></tr>",
        );
        for batch in &lambda.batch_runs {
            let _ = write!(
                out,
                "<tr><td>{:.2}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
                batch.cutoff_at_seconds,
                batch.files,
                batch.rows,
                batch.seconds,
                format_rate(batch.events_per_second),
                batch.cutoff_to_served_seconds,
                batch.cells_corrected,
                batch.contributions_added,
                batch.contributions_removed,
                if batch.last { "final" } else { "scheduled" }
            );
        }
        out.push_str("</table>");
        let before = &lambda.before_final_batch;
        let _ = write!(
            out,
            "<p>Just before the final batch run, the served views (last batch view plus the speed layer) had {} lost, \
             {} duplicated and {} mismatched cells against every event; the speed layer had dropped {} late \
             contributions. The final batch run corrected them.</p>",
            before.lost, before.duplicated, before.mismatched_windows, before.late_dropped
        );
    }
}

/// The comparison matrix, filled with what each run measured.
fn comparison(out: &mut String, runs: &[Run]) {
    for run in runs {
        let _ = write!(
            out,
            "<h2>Comparison matrix{}</h2><table><tr><th class=\"text\">aspect</th><th class=\"text\">Kappa</th><th class=\"text\">Lambda</th>",
            if runs.len() > 1 { format!(" ({})", escape(&run.label)) } else { String::new() }
        );
        for name in matrix::external_columns(&run.results) {
            let _ = write!(out, "<th class=\"text\">{}</th>", escape(name));
        }
        out.push_str("</tr>");
        for row in matrix::rows(&run.results) {
            let _ = write!(
                out,
                "<tr><td class=\"text\"><b>{}</b></td><td class=\"text\">{}</td><td class=\"text\">{}</td>",
                row.aspect,
                escape(&row.kappa),
                escape(&row.lambda)
            );
            for cell in &row.others {
                let _ = write!(out, "<td class=\"text\">{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
    }
}

/// The scenario and environment, and where the raw data is.
fn scenario(out: &mut String, runs: &[Run]) {
    out.push_str("<h2>Scenario and environment</h2><table>");
    for run in runs {
        let results = &run.results;
        let scenario = &results.scenario;
        let rows = [
            ("run", run.label.clone()),
            ("scenario", format!("{} (seed {})", scenario.name, scenario.seed)),
            ("rate", format!("{} for {} s", format_rate(scenario.rate_eps), scenario.duration_seconds)),
            ("partitions", scenario.partitions.to_string()),
            ("time compression", format!("{}x", scenario.time_compression)),
            (
                "watermark",
                format!(
                    "delay {} ms, allowed lateness {} ms",
                    scenario.watermark_delay_ms, scenario.allowed_lateness_ms
                ),
            ),
            ("log", results.environment.log_backend.clone()),
            ("machine", format!("{} CPUs, {}", results.environment.cpus, results.environment.os)),
            ("lk", results.lk_version.clone()),
        ];
        for (key, value) in rows {
            let _ = write!(out, "<tr><th class=\"text\">{key}</th><td class=\"text\">{}</td></tr>", escape(&value));
        }
    }
    out.push_str(
        "</table><p class=\"note\">Every engine's final views, and the oracle's, are in the run's folder as Parquet: \
         <code>views/&lt;engine&gt;/&lt;query&gt;.parquet</code>. Check any figure here with DuckDB, e.g. \
         <code>SELECT sum(requests) FROM 'views/kappa/q3_zone_demand.parquet'</code>. The measurements themselves are in \
         <code>results.json</code>, documented in docs/results.md.</p></body></html>\n",
    );
}

/// Each engine's event-time window latency (signed) and the completeness it cost, as a table.
fn window_event_time(runs: &[Run]) -> String {
    let mut out = String::from(
        "<p>Event-time latency runs from a window's end in event time, mapped to the run's clock, until its result \
         was first served. It is negative for results served before their window ended on the clock: event time \
         runs ahead of the schedule and the watermark fires early; the price is the late events those windows then \
         miss or must be revised for. The configured watermark delay is not part of either latency.</p><table \
         border=\"1\" cellpadding=\"4\" style=\"border-collapse:collapse\"><tr><th>engine</th><th>results</th>\
         <th>window end to served p50 / p99 / max ms</th><th>served early</th><th>revised</th><th>windows missing \
         late events</th><th>late dropped</th></tr>",
    );
    for run in runs {
        for (name, engine) in &run.results.engines {
            let windows = &engine.window_latency;
            let latency = match (&windows.event_time_ms, &windows.unmeasured) {
                (Some(ms), _) => format!("{:+.0} / {:+.0} / {:+.0}", ms.p50, ms.p99, ms.max),
                (None, reason) => format!("n/a: {}", reason.as_deref().unwrap_or("no window result was served")),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&label(runs, run, name)),
                windows.event_time_ms.as_ref().map_or(0, |ms| ms.count),
                escape(&latency),
                windows.results_early,
                windows.results_revised,
                windows.windows_incomplete,
                windows.late_dropped
            );
        }
    }
    out.push_str("</table>");
    out
}
