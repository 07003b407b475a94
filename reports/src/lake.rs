//! spark-lambda's lake in the reports: its batch runs, what the second reader found in its
//! Delta tables, its reprocessing, and, under the seed's merge, what that merge cost and why.

use lk_harness::results::{EngineResults, Results};

use crate::format_rate;

/// Sentences about every engine with a lake in `results` (spark-lambda), for both reports.
pub fn lines(results: &Results) -> Vec<String> {
    results.engines.iter().filter_map(|(name, engine)| lake_line(name, engine)).collect()
}

fn lake_line(name: &str, engine: &EngineResults) -> Option<String> {
    let lake = engine.external.as_ref()?.lake.as_ref()?;
    let scheduled: Vec<_> = lake.batch_runs.iter().filter(|run| !run.last).collect();
    let longest = scheduled.iter().map(|run| run.seconds).fold(0.0, f64::max);
    let mut line = format!(
        "{name} ({} merge): {} scheduled batch run{} (a cutoff every {} s of event time), longest {longest:.1} s",
        lake.merge,
        scheduled.len(),
        if scheduled.len() == 1 { "" } else { "s" },
        lake.batch_interval_seconds,
    );
    if let Some(last) = lake.batch_runs.iter().find(|run| run.last) {
        line.push_str(&format!(
            "; the final run read {} rows in {:.1} s ({} rows) and served {} cells",
            last.rows,
            last.seconds,
            format_rate(last.rows_per_second),
            last.cells
        ));
    }
    line.push_str(&format!(
        "; batch views at most {:.1} s stale. A second reader (delta-rs) found {} master rows at {} distinct input \
         positions in {} files over {} date and hour partitions, {} ({} expected), and {} batch-view versions, {} torn",
        lake.staleness_seconds_max,
        lake.master_rows,
        lake.master_positions,
        lake.master_files,
        lake.master_partitions,
        if lake.master_exact { "each valid input record once" } else { "NOT each valid input record once" },
        lake.master_rows_expected,
        lake.view_versions,
        lake.torn_view_versions,
    ));
    if lake.kills_during_batch_write > 0 {
        line.push_str(&format!(", after {} SIGKILLs inside batch view writes", lake.kills_during_batch_write));
    }
    line.push('.');
    if let Some(restore) = &lake.restore {
        line.push_str(&format!(
            " Reprocessing: the batch job over the whole master dataset took {:.1} s in the job ({:.1} s with the JVM's \
             start, {}); restoring the batch view to version {} with time travel took {:.1} s ({} cells, {}).",
            lake.rerun_job_seconds.unwrap_or(0.0),
            engine.reprocess.seconds,
            if engine.reprocess.correct { "exact" } else { "NOT exact" },
            restore.version,
            restore.seconds,
            restore.cells,
            if restore.consistent { "one cutoff" } else { "rows of several cutoffs" },
        ));
    }
    if lake.merge == "seed" {
        let correctness = &engine.correctness;
        line.push_str(&format!(
            " The seed's merge served {} lost and {} duplicated contributions in {} mismatched cells: its day-long \
             batch cells sit beside the speed layer's cells rather than replacing them, since `dropDuplicates` on \
             the key and the window never matches a day with a shorter window, so each batch count is counted \
             again, and the speed layer's late drops are never corrected where no batch cell lands.",
            correctness.lost, correctness.duplicated, correctness.mismatched_windows
        ));
    }
    Some(line)
}
