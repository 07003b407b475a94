//! `sweep.html` and `sweep.md` from `sweep.json`: completeness against window latency for each
//! engine, one point per watermark delay.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use lk_harness::sweep::Sweep;

use crate::ReportError;
use crate::html::escape;

fn delay_label(ms: f64) -> String {
    lk_simulator::time::format_duration(std::time::Duration::from_secs_f64(ms / 1000.0))
}

/// The series of a sweep: name → (latency p99 ms, completeness, delay label).
fn series(sweep: &Sweep) -> Vec<crate::charts::LabelledSeries> {
    let mut by_series: BTreeMap<&str, Vec<(f64, f64, String)>> = BTreeMap::new();
    for point in &sweep.points {
        by_series.entry(&point.series).or_default().push((
            point.window_latency_p99_ms,
            point.completeness,
            delay_label(point.watermark_delay_ms),
        ));
    }
    by_series.into_iter().map(|(name, points)| (name.to_owned(), points)).collect()
}

/// The Markdown table of a sweep.
pub fn markdown(sweep: &Sweep) -> String {
    let mut out = format!("# lk sweep: watermark delay on `{}` (seed {})\n\n", sweep.scenario, sweep.seed);
    out.push_str(
        "| watermark delay | series | window latency p50 ms | window latency p99 ms | completeness | late dropped | exactly-once |\n\
         |---|---|---:|---:|---:|---:|---|\n",
    );
    for point in &sweep.points {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.6} | {} | {} |",
            delay_label(point.watermark_delay_ms),
            point.series,
            point.window_latency_p50_ms,
            point.window_latency_p99_ms,
            point.completeness,
            point.late_dropped,
            if point.exactly_once { "held" } else { "NO" }
        );
    }
    out.push_str(
        "\nKappa's completeness is what its watermark let in; the Lambda speed layer's is what it served before the \
         final batch run, and `lambda after batch` is after it, at the batch views' staleness (p50: mean, p99: max) \
         instead of a window latency.\n",
    );
    out
}

/// The HTML page of a sweep: the trade-off chart and the table.
pub fn html(sweep: &Sweep) -> String {
    let title = format!("lk sweep: watermark delay on {} (seed {})", sweep.scenario, sweep.seed);
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title></head><body \
         style=\"font-family:sans-serif;max-width:960px;margin:auto\"><h1>{0}</h1>",
        escape(&title)
    );
    match crate::charts::tradeoff("Completeness against window latency", &series(sweep)) {
        Some(svg) => out.push_str(&svg),
        None => out.push_str("<p>No window fired in any setting: the runs covered less event time than a window.</p>"),
    }
    out.push_str(
        "<p>Each point is one run, labelled with its watermark delay. A longer delay waits for more late events before \
         a window fires: Kappa buys completeness with latency. Lambda's batch run counts every event, later.</p><table \
         border=\"1\" cellpadding=\"4\" style=\"border-collapse:collapse\"><tr><th>watermark delay</th><th>series</th>\
         <th>window latency p50 ms</th><th>p99 ms</th><th>completeness</th><th>late dropped</th><th>exactly-once</th></tr>",
    );
    for point in &sweep.points {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.6}</td><td>{}</td><td>{}</td></tr>",
            escape(&delay_label(point.watermark_delay_ms)),
            escape(&point.series),
            point.window_latency_p50_ms,
            point.window_latency_p99_ms,
            point.completeness,
            point.late_dropped,
            if point.exactly_once { "held" } else { "NO" }
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

/// Writes `sweep.html` and `sweep.md` into `directory`.
pub fn write(directory: &Path, sweep: &Sweep) -> Result<(PathBuf, PathBuf), ReportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |cause| ReportError::Io { path, cause }
    };
    let html_path = directory.join("sweep.html");
    std::fs::write(&html_path, html(sweep)).map_err(io(&html_path))?;
    let markdown_path = directory.join("sweep.md");
    std::fs::write(&markdown_path, markdown(sweep)).map_err(io(&markdown_path))?;
    Ok((html_path, markdown_path))
}
