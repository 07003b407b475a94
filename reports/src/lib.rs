//! Reports from results files: `report.html` (self-contained, inline SVG charts), `report.md`
//! (the headline table and the comparison matrix, fit for a CI job summary), and diffs between
//! runs with a verdict for CI.
//!
//! **Architecture Invariant:** reports only read results files; they never run anything and
//! never compute a measurement the run did not make. Where a run did not measure something, a
//! report says so instead of filling the gap.

pub mod capacity;
pub mod charts;
pub mod diff;
pub mod faults;
pub mod html;
pub mod lake;
pub mod markdown;
pub mod matrix;
pub mod profile;
pub mod sweep;
pub mod verdict;

pub use profile::profile_text;

/// How an engine that is not lk's own is judged, for the reports of runs that have one.
pub const EXTERNAL_NOTE: &str = "An engine that is not lk's own (docs/engines.md) is compared with the oracle under its \
                                 own lateness rule, modelled from the watermarks and offsets of its micro-batches: \
                                 what it drops by that rule is late dropped, anything else it misses is lost. Its CPU \
                                 and peak memory are its own process tree's. A Lambda among them (spark-lambda) is \
                                 compared with every event, as lk's Lambda is: its batch runs must correct what its \
                                 speed layer dropped.";

use std::path::{Path, PathBuf};

use lk_harness::results::{Results, SCHEMA_VERSION};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A results file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A results file is not one lk wrote, or from another schema version.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// A run's results with where they came from.
#[derive(Clone, Debug)]
pub struct Run {
    /// A short label: the file's folder name, or the scenario name.
    pub label: String,
    /// The results.
    pub results: Results,
}

/// Reads a results file.
pub fn load(path: &Path) -> Result<Run, ReportError> {
    let text =
        std::fs::read_to_string(path).map_err(|cause| ReportError::Io { path: path.display().to_string(), cause })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| ReportError::Invalid {
        path: path.display().to_string(),
        problem: format!("not JSON ({error}); pass the results.json that `lk run` wrote"),
    })?;
    let version = value.get("schema_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(SCHEMA_VERSION)) {
        return Err(ReportError::Invalid {
            path: path.display().to_string(),
            problem: format!(
                "schema_version is {}, this lk reads {SCHEMA_VERSION}; re-run the scenario with this lk",
                version.map_or("missing".to_owned(), |version| version.to_string())
            ),
        });
    }
    let results: Results = serde_json::from_value(value).map_err(|error| ReportError::Invalid {
        path: path.display().to_string(),
        problem: format!("not an lk results file: {error}"),
    })?;
    let label = path
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| results.scenario.name.clone());
    Ok(Run { label, results })
}

/// Writes `report.html` and `report.md` for `runs` into `directory`; returns their paths.
pub fn write_reports(directory: &Path, runs: &[Run]) -> Result<(PathBuf, PathBuf), ReportError> {
    write_pages(directory, "report", &html::render(runs), &markdown::render(runs))
}

/// Writes `<stem>.html` and `<stem>.md` into `directory` (created if missing); returns their
/// paths.
pub fn write_pages(
    directory: &Path,
    stem: &str,
    html: &str,
    markdown: &str,
) -> Result<(PathBuf, PathBuf), ReportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |cause| ReportError::Io { path, cause }
    };
    std::fs::create_dir_all(directory).map_err(io(directory))?;
    let html_path = directory.join(format!("{stem}.html"));
    std::fs::write(&html_path, html).map_err(io(&html_path))?;
    let markdown_path = directory.join(format!("{stem}.md"));
    std::fs::write(&markdown_path, markdown).map_err(io(&markdown_path))?;
    Ok((html_path, markdown_path))
}

/// Bytes in a human unit.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A rate in events per second, short: `1.02M/s`, `850k/s`.
pub fn format_rate(eps: f64) -> String {
    if eps >= 1e6 {
        format!("{:.2}M/s", eps / 1e6)
    } else if eps >= 1e3 {
        format!("{:.0}k/s", eps / 1e3)
    } else {
        format!("{eps:.0}/s")
    }
}
