//! `capacity.html` and `capacity.md` from `capacity.json`: each engine's steps (rate against
//! driver-location p99 and backlog), with the sustainable rate marked.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use lk_harness::capacity::{Capacity, Search};

use crate::html::escape;
use crate::{ReportError, format_rate};

/// A search's name in tables and legends.
fn name(search: &Search) -> String {
    format!("{} on {} core{}", search.engine, search.cores, if search.cores == 1 { "" } else { "s" })
}

/// What stopped a search, for a reader.
fn limit(search: &Search) -> &'static str {
    match search.limit.as_str() {
        "engine" => "the engine",
        "driver" => "the driver (generator or log, on the same cores): the engine alone may go higher",
        "ceiling" => "the search's ceiling: the engine's limit is higher",
        _ => "unknown",
    }
}

/// The summary table and every step, as Markdown.
pub fn markdown(capacity: &Capacity) -> String {
    let mut out = format!(
        "# lk capacity: `{}` (seed {})\n\nA rate is sustainable when the driver kept its schedule, the engine processed at least 97% of \
         the offered rate, its backlog at the input's end was worked off within a twentieth of the step ({:.0} s each), and driver-location p99 was within \
         {:.0} ms. Coarse steps double the rate until one fails; bisection then narrows to {:.0}%.\n\n",
        capacity.scenario,
        capacity.seed,
        capacity.step_seconds,
        capacity.slo_p99_ms,
        capacity.tolerance * 100.0
    );
    out.push_str("| engine | sustainable | limited by | CPU-s per million events | bytes stored per event | steps |\n|---|---:|---|---:|---:|---:|\n");
    for search in &capacity.searches {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.0} | {} |",
            name(search),
            search.sustainable_eps.map_or_else(|| "none".to_owned(), format_rate),
            limit(search),
            search.cpu_seconds_per_event * 1e6,
            search.stored_bytes_per_event,
            search.steps.len()
        );
    }
    out.push_str(
        "\n| engine | rate | passed | p99 ms | backlog s | throughput | why not |\n|---|---:|---|---:|---:|---:|---|\n",
    );
    for search in &capacity.searches {
        for step in &search.steps {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.2} | {} | {} |",
                name(search),
                format_rate(step.rate_eps),
                if step.passed { "yes" } else { "no" },
                step.p99_ms,
                step.catch_up_seconds,
                format_rate(step.throughput_eps),
                step.reason
            );
        }
    }
    out
}

/// A figure of a step.
type StepValue = fn(&lk_harness::capacity::Step) -> f64;

/// Each search's steps by rate: (rate, value).
fn curves(capacity: &Capacity, value: StepValue) -> Vec<(String, Vec<(f64, f64)>)> {
    capacity
        .searches
        .iter()
        .map(|search| {
            let mut points: Vec<(f64, f64)> = search.steps.iter().map(|step| (step.rate_eps, value(step))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name(search), points)
        })
        .collect()
}

/// The page: the two charts with the sustainable rates marked, then the tables.
pub fn html(capacity: &Capacity) -> String {
    let title = format!("lk capacity: {} (seed {})", capacity.scenario, capacity.seed);
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title></head><body \
         style=\"font-family:sans-serif;max-width:960px;margin:auto\"><h1>{0}</h1>",
        escape(&title)
    );
    let markers: Vec<(f64, String)> = capacity
        .searches
        .iter()
        .filter_map(|search| {
            search.sustainable_eps.map(|rate| (rate, format!("{}: {}", name(search), format_rate(rate))))
        })
        .collect();
    let charts: [(&str, &str, StepValue); 2] = [
        ("Driver-location p99 against the offered rate", "p99 ms", |step| step.p99_ms),
        ("Backlog at the input's end against the offered rate", "seconds to work it off", |step| step.catch_up_seconds),
    ];
    for (chart_title, y_desc, value) in charts {
        if let Some(svg) = crate::charts::lines(
            chart_title,
            "offered rate, events/s",
            y_desc,
            &curves(capacity, value),
            None,
            &markers,
        ) {
            out.push_str(&svg);
        }
    }
    let markdown = markdown(capacity);
    let _ = writeln!(
        out,
        "<p>The dashed lines mark each search's sustainable rate.</p><pre>{}</pre></body></html>",
        escape(&markdown)
    );
    out
}

/// Writes `capacity.html` and `capacity.md` into `directory`.
pub fn write(directory: &Path, capacity: &Capacity) -> Result<(PathBuf, PathBuf), ReportError> {
    crate::write_pages(directory, "capacity", &html(capacity), &markdown(capacity))
}
