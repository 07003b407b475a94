//! `sweep.html` and `sweep.md` from `sweep.json`: completeness against measured window latency
//! (p50 and p99, signed, on linear axes) for each engine, one point per watermark delay.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use lk_harness::sweep::{Sweep, SweepPoint};

use crate::ReportError;
use crate::html::escape;

fn delay_label(ms: f64) -> String {
    lk_simulator::time::format_duration(std::time::Duration::from_secs_f64(ms / 1000.0))
}

/// The series of a sweep at one percentile: name → (latency ms, completeness, delay label);
/// points without a measured latency are left out.
fn series(sweep: &Sweep, latency: impl Fn(&SweepPoint) -> Option<f64>) -> Vec<crate::charts::LabelledSeries> {
    let mut by_series: BTreeMap<&str, Vec<(f64, f64, String)>> = BTreeMap::new();
    for point in &sweep.points {
        if let Some(ms) = latency(point) {
            by_series.entry(&point.series).or_default().push((
                ms,
                point.completeness,
                delay_label(point.watermark_delay_ms),
            ));
        }
    }
    by_series.into_iter().map(|(name, points)| (name.to_owned(), points)).collect()
}

/// One percentile of a point's measured latency.
type Percentile = fn(&SweepPoint) -> Option<f64>;

/// A measured latency, or "n/a".
fn ms_or_na(ms: Option<f64>) -> String {
    ms.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:+.1}"))
}

/// How to read the two axes.
const AXES: &str = "Latency is measured, not configured: from a window's end in event time, mapped to the run's \
                    clock, until its result was first served (Karimov et al.'s event-time latency). It is negative \
                    for a result served before its window ended on the clock: event time runs ahead of the schedule \
                    (skewed clocks, lateness) and a short watermark fires early; the price is completeness, the share \
                    of every event's contributions that the served views hold. The configured watermark delay is \
                    shown beside it, on the run's clock, never added to it. `lambda after batch` is plotted at the \
                    batch views' staleness (p50: mean, p99: max).";

/// The Markdown table of a sweep.
pub fn markdown(sweep: &Sweep) -> String {
    let mut out = format!("# lk sweep: watermark delay on `{}` (seed {})\n\n", sweep.scenario, sweep.seed);
    out.push_str(
        "| watermark delay | on the clock ms | series | window end to served p50 ms | p99 ms | completeness | early | \
         revised | late dropped | exactly-once |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for point in &sweep.points {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {:.6} | {} | {} | {} | {} |",
            delay_label(point.watermark_delay_ms),
            point.watermark_delay_clock_ms,
            point.series,
            ms_or_na(point.window_latency_p50_ms),
            ms_or_na(point.window_latency_p99_ms),
            point.completeness,
            point.results_early,
            point.results_revised,
            point.late_dropped,
            if point.exactly_once { "held" } else { "NO" }
        );
    }
    let _ = writeln!(out, "\n{AXES}");
    out
}

/// The HTML page of a sweep: the trade-off charts (p50 and p99) and the table.
pub fn html(sweep: &Sweep) -> String {
    let title = format!("lk sweep: watermark delay on {} (seed {})", sweep.scenario, sweep.seed);
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title></head><body \
         style=\"font-family:sans-serif;max-width:960px;margin:auto\"><h1>{0}</h1>",
        escape(&title)
    );
    let charts: [(&str, &str, Percentile); 2] = [
        ("Completeness against window latency, p50", "window end to served, p50 ms", |point| {
            point.window_latency_p50_ms
        }),
        ("Completeness against window latency, p99", "window end to served, p99 ms", |point| {
            point.window_latency_p99_ms
        }),
    ];
    for (chart_title, x_desc, latency) in charts {
        match crate::charts::tradeoff(chart_title, x_desc, &series(sweep, latency)) {
            Some(svg) => out.push_str(&svg),
            None => out.push_str(
                "<p>No window result was served in any setting: the runs covered less event time than a window.</p>",
            ),
        }
    }
    let _ = write!(
        out,
        "<p>Each point is one run, labelled with its watermark delay. {}</p><table border=\"1\" cellpadding=\"4\" \
         style=\"border-collapse:collapse\"><tr><th>watermark delay</th><th>on the clock ms</th><th>series</th>\
         <th>window end to served p50 ms</th><th>p99 ms</th><th>completeness</th><th>early</th><th>revised</th>\
         <th>late dropped</th><th>exactly-once</th></tr>",
        escape(AXES)
    );
    for point in &sweep.points {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&delay_label(point.watermark_delay_ms)),
            point.watermark_delay_clock_ms,
            escape(&point.series),
            ms_or_na(point.window_latency_p50_ms),
            ms_or_na(point.window_latency_p99_ms),
            point.completeness,
            point.results_early,
            point.results_revised,
            point.late_dropped,
            if point.exactly_once { "held" } else { "NO" }
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

/// Writes `sweep.html` and `sweep.md` into `directory`.
pub fn write(directory: &Path, sweep: &Sweep) -> Result<(PathBuf, PathBuf), ReportError> {
    crate::write_pages(directory, "sweep", &html(sweep), &markdown(sweep))
}
