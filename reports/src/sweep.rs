//! `sweep.html` and `sweep.md` from `sweep.json`: completeness against measured window latency
//! (p50 and p99, signed, on linear axes) for each engine, one point per watermark delay.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use lk_harness::sweep::{CommitSweep, Sweep, SweepPoint};

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

/// How to read a commit-interval sweep.
const COMMIT_AXES: &str = "Each row is one run over Kafka with exactly-once through the transactional sinks, at \
                           one commit interval. A change waits for its worker's next transaction (commit wait, \
                           half the interval on average), then for the commit's round trips; a shorter interval \
                           buys latency with more transactions, which the broker and lk's Kafka clients pay for in \
                           CPU. Latency is visible latency (due time to served); CPU is cores' worth while the input \
                           ran, lk's whole process and the broker's (when it runs on this machine).";

fn cores_or_na(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |cores| format!("{cores:.2}"))
}

fn stage_or_na(ms: Option<f64>) -> String {
    ms.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.1}"))
}

fn commit_rows(sweep: &CommitSweep) -> Vec<[String; 10]> {
    sweep
        .points
        .iter()
        .map(|point| {
            [
                delay_label(point.commit_interval_ms),
                point.engine.clone(),
                format!("{:.1}", point.latency_p50_ms),
                format!("{:.1}", point.latency_p99_ms),
                stage_or_na(point.commit_wait_mean_ms),
                stage_or_na(point.commit_mean_ms),
                cores_or_na(point.lk_cores),
                cores_or_na(point.broker_cores),
                point.machine_busy.map_or_else(|| "n/a".to_owned(), |busy| format!("{:.0}%", busy * 100.0)),
                (if point.exactly_once { "held" } else { "NO" }).to_owned(),
            ]
        })
        .collect()
}

const COMMIT_HEADERS: [&str; 10] = [
    "commit interval",
    "engine",
    "p50 ms",
    "p99 ms",
    "commit wait ms (mean)",
    "commit ms (mean)",
    "lk cores",
    "broker cores",
    "machine busy",
    "exactly-once",
];

/// The Markdown table of a commit-interval sweep.
pub fn commit_markdown(sweep: &CommitSweep) -> String {
    let mut out = format!("# lk sweep: commit interval on `{}` (seed {})\n\n|", sweep.scenario, sweep.seed);
    for header in COMMIT_HEADERS {
        let _ = write!(out, " {header} |");
    }
    out.push_str("\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for row in commit_rows(sweep) {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out, "\n{COMMIT_AXES}");
    out
}

/// The HTML page of a commit-interval sweep: latency and CPU against the interval, and the table.
pub fn commit_html(sweep: &CommitSweep) -> String {
    let title = format!("lk sweep: commit interval on {} (seed {})", sweep.scenario, sweep.seed);
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title></head><body \
         style=\"font-family:sans-serif;max-width:960px;margin:auto\"><h1>{0}</h1>",
        escape(&title)
    );
    let mut latency: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for point in &sweep.points {
        latency
            .entry(format!("{} p50", point.engine))
            .or_default()
            .push((point.commit_interval_ms, point.latency_p50_ms));
        latency
            .entry(format!("{} p99", point.engine))
            .or_default()
            .push((point.commit_interval_ms, point.latency_p99_ms));
    }
    let latency: Vec<(String, Vec<(f64, f64)>)> = latency.into_iter().collect();
    // The CPU is the run's (lk and the broker), the same for every engine of a run.
    let mut cpu: Vec<(String, Vec<(f64, f64)>)> =
        vec![("lk".to_owned(), Vec::new()), ("broker".to_owned(), Vec::new())];
    let mut seen = Vec::new();
    for point in &sweep.points {
        if seen.contains(&point.commit_interval_ms.to_bits()) {
            continue;
        }
        seen.push(point.commit_interval_ms.to_bits());
        if let Some(cores) = point.lk_cores {
            cpu[0].1.push((point.commit_interval_ms, cores));
        }
        if let Some(cores) = point.broker_cores {
            cpu[1].1.push((point.commit_interval_ms, cores));
        }
    }
    for (svg, missing) in [
        (
            crate::charts::lines(
                "Visible latency against the commit interval",
                "commit interval, ms",
                "ms",
                &latency,
                None,
                &[],
            ),
            "no latency was measured.",
        ),
        (
            crate::charts::lines("CPU against the commit interval", "commit interval, ms", "cores", &cpu, None, &[]),
            "no CPU figures: /proc was not readable.",
        ),
    ] {
        match svg {
            Some(svg) => out.push_str(&svg),
            None => {
                let _ = write!(out, "<p>{}</p>", escape(missing));
            }
        }
    }
    let _ = write!(
        out,
        "<p>{}</p><table border=\"1\" cellpadding=\"4\" style=\"border-collapse:collapse\"><tr>",
        escape(COMMIT_AXES)
    );
    for header in COMMIT_HEADERS {
        let _ = write!(out, "<th>{}</th>", escape(header));
    }
    out.push_str("</tr>");
    for row in commit_rows(sweep) {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></body></html>\n");
    out
}

/// Writes `commit-sweep.html` and `commit-sweep.md` into `directory`.
pub fn commit_write(directory: &Path, sweep: &CommitSweep) -> Result<(PathBuf, PathBuf), ReportError> {
    crate::write_pages(directory, "commit-sweep", &commit_html(sweep), &commit_markdown(sweep))
}
