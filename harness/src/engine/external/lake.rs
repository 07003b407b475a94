//! spark-lambda's lake, judged from outside Spark: its batch runs as the job reports them, its
//! Delta tables as a second reader (delta-rs) finds them, and its reprocessing (the batch job
//! rerun over the whole master dataset, served into a fresh output topic and checked; then the
//! batch view restored to its previous version with Delta's time travel).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::process::{EngineProcess, tail};
use super::served::Served;
use super::{Context, Job, each_record, failed, job, lake_folder, spark};
use crate::engine::{EngineKind, Judge};
use crate::results::{LakeBatchRun, LakeRestore, LakeResults, Reprocess};
use crate::run::{RunError, TOPIC, output_error};

/// The second reader, built into lk.
const LAKE_CHECK: &str = include_str!("../../../../engines/spark/lake_check.py");

/// How long the reprocessing job may take.
const REPROCESS_TIMEOUT: Duration = Duration::from_secs(900);

/// One line of the job's batch-run report (`LK_LAMBDA_REPORT`).
#[derive(Deserialize)]
struct RunLine {
    cutoff_us: i64,
    #[serde(rename = "final")]
    last: bool,
    master_version: u64,
    view_version: u64,
    rows: u64,
    cells: u64,
    sessions_removed: u64,
    decided_at: f64,
    written_at: f64,
    served_at: f64,
}

/// What the second reader prints.
#[derive(Deserialize)]
struct Check {
    master: MasterCheck,
    views: ViewsCheck,
}

#[derive(Deserialize)]
struct MasterCheck {
    rows: u64,
    positions: u64,
    partitions: u64,
    files: u64,
    bytes: u64,
}

#[derive(Deserialize)]
struct ViewsCheck {
    versions: u64,
    torn: u64,
}

/// The reprocessing job's report.
#[derive(Deserialize)]
struct ReprocessLine {
    rows: u64,
    seconds: f64,
    restored_version: u64,
    restore_seconds: f64,
    restored_cells: u64,
    restored_cutoffs: u64,
    version_after_restore: u64,
}

/// The batch runs the job reported, in order; lines it could not finish (a crash) are skipped.
fn batch_runs(report: &Path) -> Result<Vec<RunLine>, RunError> {
    let text = match std::fs::read_to_string(report) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(output_error(report)(error)),
    };
    Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// Largest age of the served batch view: from a run's decision until the next run's view was
/// served (the last one until the end of the runs).
fn staleness_max(runs: &[RunLine]) -> f64 {
    runs.windows(2).map(|pair| pair[1].served_at - pair[0].decided_at).fold(0.0, f64::max)
}

/// The lake after the live run.
pub fn results(judge: &Judge<'_>, definition: &Job, kills_during_batch_write: u64) -> Result<LakeResults, RunError> {
    let runs = batch_runs(&definition.folder.join("lambda.jsonl"))?;
    let lake = lake_folder(judge.out);
    let check = second_reader(&lake, &definition.folder)?;
    let expected = judge.base.end_offsets(TOPIC)?.iter().sum::<u64>().saturating_sub(judge.oracle.dead_lettered);
    Ok(LakeResults {
        merge: judge.options.spark.merge.name().to_owned(),
        path: lake.display().to_string(),
        batch_interval_seconds: judge.scenario.lambda.batch_interval.as_secs_f64(),
        staleness_seconds_max: staleness_max(&runs),
        batch_runs: runs
            .iter()
            .map(|run| {
                let seconds = run.served_at - run.decided_at;
                LakeBatchRun {
                    cutoff_us: run.cutoff_us,
                    last: run.last,
                    rows: run.rows,
                    cells: run.cells,
                    sessions_removed: run.sessions_removed,
                    write_seconds: run.written_at - run.decided_at,
                    seconds,
                    rows_per_second: run.rows as f64 / seconds.max(1e-9),
                    master_version: run.master_version,
                    view_version: run.view_version,
                }
            })
            .collect(),
        master_rows: check.master.rows,
        master_positions: check.master.positions,
        master_rows_expected: expected,
        master_exact: check.master.rows == expected && check.master.positions == expected,
        master_files: check.master.files,
        master_bytes: check.master.bytes,
        master_partitions: check.master.partitions,
        view_versions: check.views.versions,
        torn_view_versions: check.views.torn,
        kills_during_batch_write,
        rerun_job_seconds: None,
        restore: None,
    })
}

/// Runs the second reader over the lake.
fn second_reader(lake: &Path, folder: &Path) -> Result<Check, RunError> {
    let python = spark::python().filter(|python| python.is_file()).ok_or_else(|| {
        RunError::Invalid(
            "spark-lambda's tables are checked with the deltalake package in Spark's virtualenv, which is missing: run \
             scripts/spark install"
                .to_owned(),
        )
    })?;
    let script = folder.join("lake_check.py");
    std::fs::write(&script, LAKE_CHECK).map_err(output_error(&script))?;
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(lake)
        .output()
        .map_err(|error| RunError::Invalid(format!("{} could not run: {error}", python.display())))?;
    if !output.status.success() {
        return Err(RunError::Invalid(format!(
            "the second reader of spark-lambda's Delta tables in {} failed ({}): {}",
            lake.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| {
        RunError::Invalid(format!(
            "the second reader of {} printed what lk cannot read ({error}): {}",
            lake.display(),
            String::from_utf8_lossy(&output.stdout)
        ))
    })
}

/// The seed's reprocessing for Lambda: the batch job over the whole master dataset into a fresh
/// output topic, timed from the job's start to its exit and checked against every event; then
/// the batch view restored to the version before the rerun, timed.
#[allow(clippy::disallowed_methods, reason = "the timeout is a safety net, not a measurement")]
pub fn reprocess(judge: &Judge<'_>, lake: &mut LakeResults) -> Result<Reprocess, RunError> {
    let kind = EngineKind::SparkLambda;
    let context = Context {
        scenario: judge.scenario,
        options: judge.options,
        log: judge.base,
        out: judge.out,
        queries: judge.queries,
    };
    let definition = job(kind, &context, 2, 1)?;
    let started = judge.clock.now_ns();
    let waited = std::time::Instant::now();
    let mut process = EngineProcess::start(&definition.launch).map_err(|problem| failed(kind, &problem))?;
    let status = loop {
        process.sample();
        if let Some(status) = process.exited() {
            break status;
        }
        if waited.elapsed() > REPROCESS_TIMEOUT {
            let _ = process.kill();
            return Err(failed(
                kind,
                &format!(
                    "its batch rerun took over {} s; {}",
                    REPROCESS_TIMEOUT.as_secs(),
                    tail(&definition.launch.log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let seconds = (judge.clock.now_ns() - started) as f64 / 1e9;
    if !status.success() {
        return Err(failed(kind, &format!("its batch rerun exited ({status}); {}", tail(&definition.launch.log))));
    }
    let report = definition.folder.join("lambda.jsonl");
    let text = std::fs::read_to_string(&report).map_err(output_error(&report))?;
    let line: ReprocessLine = serde_json::from_str(text.trim()).map_err(|error| {
        failed(kind, &format!("its rerun's report {} is not what lk reads: {error}", report.display()))
    })?;
    let mut served = Served::default();
    each_record(&**judge.base, &definition.topics.output, |value| served.apply(value, 0))?;
    // The rerun serves every view from the batch layer, Q1 included.
    let rebuilt = served.views();
    let mismatched: u64 =
        rebuilt.compare_with(&judge.oracle.everything).values().map(|query| query.mismatched_windows).sum();
    lake.rerun_job_seconds = Some(line.seconds);
    lake.restore = Some(LakeRestore {
        version: line.restored_version,
        seconds: line.restore_seconds,
        cells: line.restored_cells,
        consistent: line.restored_cutoffs == 1,
        table_version: line.version_after_restore,
    });
    Ok(Reprocess {
        events: line.rows,
        seconds,
        events_per_second: line.rows as f64 / seconds.max(1e-9),
        correct: mismatched == 0 && served.unreadable == 0,
        mismatched_windows: mismatched,
        restarts: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(decided_at: f64, served_at: f64) -> RunLine {
        RunLine {
            cutoff_us: 0,
            last: false,
            master_version: 0,
            view_version: 0,
            rows: 0,
            cells: 0,
            sessions_removed: 0,
            decided_at,
            written_at: decided_at,
            served_at,
        }
    }

    #[test]
    fn a_batch_view_is_as_stale_as_the_wait_for_the_next_one() {
        // Served at 3 s (decided at 0 s), replaced at 10 s (decided at 8 s): 10 s old at worst.
        assert_eq!(staleness_max(&[run(0.0, 3.0), run(8.0, 10.0), run(12.0, 13.0)]), 10.0);
        assert_eq!(staleness_max(&[run(0.0, 3.0)]), 0.0);
    }

    #[test]
    fn a_report_line_cut_short_by_a_crash_is_skipped() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("lambda.jsonl");
        let whole = r#"{"cutoff_us":60000000,"final":false,"master_version":3,"view_version":1,"rows":10,"cells":4,"sessions_removed":0,"decided_at":1.0,"written_at":2.0,"served_at":3.0}"#;
        std::fs::write(&path, format!("{whole}\n{}", &whole[..40])).unwrap();
        let runs = batch_runs(&path).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].cutoff_us, 60_000_000);
        assert!(batch_runs(&folder.path().join("missing.jsonl")).unwrap().is_empty());
    }
}
