//! The tables every report shows: the headline (one row per engine) and the classic
//! Lambda-versus-Kappa comparison matrix, filled with what the run measured.
//!
//! Each matrix row is an aspect the design debate argues about; each cell says what this run
//! measured for that engine, or plainly that it did not measure it. The renderers only format
//! these cells.

use lk_harness::results::{EngineResults, Results};

use crate::{format_bytes, format_rate};

/// One aspect.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The aspect.
    pub aspect: &'static str,
    /// Kappa's cell.
    pub kappa: String,
    /// Lambda's cell.
    pub lambda: String,
    /// The cells of the engines that are not lk's own, in [`external_columns`] order.
    pub others: Vec<String>,
}

/// The engines of `results` that are not lk's own (spark-kappa, kstreams, spark-lambda), which
/// the matrix shows as columns after Kappa's and Lambda's where they ran.
pub fn external_columns(results: &Results) -> Vec<&str> {
    results.engines.keys().map(String::as_str).filter(|name| !matches!(*name, "kappa" | "lambda")).collect()
}

/// An external engine's cell for `aspect`.
fn external_cell(aspect: &str, name: &str, engine: &EngineResults) -> String {
    let lambda = engine.external.as_ref().and_then(|external| external.lake.as_ref());
    let correctness = &engine.correctness;
    match aspect {
        "Code duplication" if lambda.is_some() => {
            "queries written twice: Structured Streaming (speed layer) and Spark SQL (batch layer)".to_owned()
        }
        "Code duplication" => "queries written once, in the engine's own API".to_owned(),
        "Complexity" => {
            let readers = engine.external.as_ref().map_or(0, |external| external.readers.len());
            match (name, lambda) {
                (_, Some(_)) => format!(
                    "4 layers in one Spark driver: a Delta master dataset, batch runs, {} streaming queries, the \
                     serving merge",
                    readers.saturating_sub(1)
                ),
                ("kstreams", None) => {
                    "1 processing path: a Kafka Streams topology (repartition topics, changelogs)".to_owned()
                }
                _ => format!("1 processing path: {readers} streaming queries + checkpoints"),
            }
        }
        "Fault tolerance" => {
            let restarts = engine.external.as_ref().map_or(&[][..], |external| &external.restart_seconds[..]);
            if engine.faults.crashes == 0 {
                "no faults were injected in this run, so recovery was not measured".to_owned()
            } else {
                format!(
                    "{} SIGKILLs, each restart ready in {} s; {}",
                    engine.faults.crashes,
                    restarts.iter().map(|seconds| format!("{seconds:.1}")).collect::<Vec<_>>().join(", "),
                    if lambda.is_some() {
                        "state in Delta's transaction log and Spark's checkpoints"
                    } else {
                        "state from its checkpoints or changelogs"
                    }
                )
            }
        }
        "Late data" if lambda.is_some() => format!(
            "the speed layer drops by Spark's watermarks, the batch runs put back; final completeness {:.4}",
            correctness.completeness
        ),
        "Late data" => format!(
            "{} contributions dropped by its own lateness rule; completeness {:.4}",
            correctness.late_dropped, correctness.completeness
        ),
        "Reprocessing" => {
            let how = match (name, lambda) {
                (_, Some(_)) => "rerun the batch job over the Delta master dataset",
                ("kstreams", None) => "a new application id from the earliest offset",
                _ => "new queries from the earliest offset",
            };
            let restore = lambda.and_then(|lake| lake.restore.as_ref()).map_or(String::new(), |restore| {
                format!("; time-travel restore of the batch view {:.1} s", restore.seconds)
            });
            if engine.reprocess.seconds > 0.0 {
                format!(
                    "{how}: {:.2} s for {} events ({}){restore}",
                    engine.reprocess.seconds,
                    engine.reprocess.events,
                    format_rate(engine.reprocess.events_per_second)
                )
            } else {
                "not measured (run without --no-reprocess)".to_owned()
            }
        }
        "Consistency" => {
            let counts = format!(
                "{} lost, {} duplicated, {} mismatched cells of {} contributions",
                correctness.lost, correctness.duplicated, correctness.mismatched_windows, correctness.expected
            );
            match lambda {
                Some(lake) => format!(
                    "{counts} after the final batch run (against every event; {} merge); batch views up to {:.1} s stale",
                    lake.merge, lake.staleness_seconds_max
                ),
                None => format!("{counts} (against its own lateness rule)"),
            }
        }
        "Operational cost" => format!(
            "{:.1} CPU s, {} peak memory{}",
            engine.cost.cpu_seconds,
            format_bytes(engine.cost.peak_rss_bytes),
            lambda.map_or(String::new(), |lake| format!(" (master dataset {})", format_bytes(lake.master_bytes)))
        ),
        _ => "not measured".to_owned(),
    }
}

const NOT_RUN: &str = "not run";

/// The headline table's columns.
pub const HEADLINE: [&str; 17] = [
    "engine",
    "throughput",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "window p99 ms",
    "window end p50 ms",
    "lost",
    "duplicated",
    "mismatched",
    "late dropped",
    "completeness",
    "reprocess",
    "CPU s",
    "peak RSS",
    "stored",
];

/// One engine's headline cells, in [`HEADLINE`] order.
pub fn headline(name: &str, engine: &EngineResults) -> [String; 17] {
    let correctness = &engine.correctness;
    [
        format!("{name}{}", if engine.kept_up { "" } else { " (fell behind)" }),
        format_rate(engine.throughput_eps),
        format!("{:.2}", engine.latency_ms.p50),
        format!("{:.2}", engine.latency_ms.p99),
        format!("{:.2}", engine.latency_ms.p999),
        format!("{:.2}", engine.latency_ms.max),
        engine.window_latency.processing_ms.as_ref().map_or_else(|| "n/a".to_owned(), |ms| format!("{:.0}", ms.p99)),
        engine.window_latency.event_time_ms.as_ref().map_or_else(|| "n/a".to_owned(), |ms| format!("{:+.0}", ms.p50)),
        correctness.lost.to_string(),
        correctness.duplicated.to_string(),
        correctness.mismatched_windows.to_string(),
        correctness.late_dropped.to_string(),
        format!("{:.4}", correctness.completeness),
        if engine.reprocess.seconds > 0.0 { format_rate(engine.reprocess.events_per_second) } else { "-".to_owned() },
        format!("{:.1}", engine.cost.cpu_seconds),
        format_bytes(engine.cost.peak_rss_bytes),
        format_bytes(engine.cost.stored_bytes),
    ]
}

fn cell(results: &Results, engine: &str, fill: impl Fn(&EngineResults) -> String) -> String {
    results.engines.get(engine).map_or_else(|| NOT_RUN.to_owned(), fill)
}

/// The matrix for one run.
pub fn rows(results: &Results) -> Vec<Row> {
    let code = results.engines.get("lambda").and_then(|engine| engine.lambda.as_ref()).map(|lambda| &lambda.code_lines);
    let lines = |part: &str| code.and_then(|lines| lines.get(part)).copied().unwrap_or(0);
    let code_known = code.is_some();
    let mut rows = Vec::new();
    rows.push(Row {
        others: Vec::new(),
        aspect: "Code duplication",
        kappa: if code_known {
            format!("queries written once, as streaming operators ({} lines)", lines("streaming_runtime"))
        } else {
            "not measured (run with --engine both)".to_owned()
        },
        lambda: if code_known {
            format!(
                "queries written twice: streaming ({} lines, speed layer) and batch ({} lines)",
                lines("streaming_runtime"),
                lines("batch_layer")
            )
        } else {
            "not measured (run with --engine both)".to_owned()
        },
    });
    rows.push(Row {
        others: Vec::new(),
        aspect: "Complexity",
        kappa: if code_known {
            format!(
                "1 processing path: stream job + checkpoints; {} lines of engine (+{} shared with Lambda)",
                lines("streaming_runtime") + lines("kappa_engine"),
                lines("shared_job") + lines("shared_sink")
            )
        } else {
            "not measured".to_owned()
        },
        lambda: if code_known {
            format!(
                "3 layers + master dataset + serving merge; {} lines of engine (+{} shared with Kappa)",
                lines("streaming_runtime") + lines("batch_layer") + lines("lambda_engine") + lines("master_dataset"),
                lines("shared_job") + lines("shared_sink")
            )
        } else {
            "not measured".to_owned()
        },
    });
    rows.push(Row {
        others: Vec::new(),
        aspect: "Fault tolerance",
        kappa: cell(results, "kappa", |engine| {
            format!(
                "{} checkpoints (last round {}); no faults were injected in this run, so recovery was not measured",
                engine.cost.checkpoints,
                format_bytes(engine.cost.checkpoint_bytes)
            )
        }),
        lambda: cell(results, "lambda", |_| {
            "durable state is the immutable master dataset (Parquet); no faults were injected in this run, so \
             recovery was not measured"
                .to_owned()
        }),
    });
    rows.push(Row {
        others: Vec::new(),
        aspect: "Late data",
        kappa: cell(results, "kappa", |engine| {
            format!(
                "{} contributions dropped by the lateness policy (by design); completeness {:.4}",
                engine.correctness.late_dropped, engine.correctness.completeness
            )
        }),
        lambda: cell(results, "lambda", |engine| match &engine.lambda {
            Some(lambda) => format!(
                "speed layer dropped {} late contributions; batch runs corrected {} cells; final completeness {:.4}",
                lambda.before_final_batch.late_dropped, lambda.cells_corrected, engine.correctness.completeness
            ),
            None => "not measured".to_owned(),
        }),
    });
    let reprocess = |engine: &EngineResults, how: &str| {
        if engine.reprocess.seconds > 0.0 {
            format!(
                "{how}: {:.2} s for {} events ({})",
                engine.reprocess.seconds,
                engine.reprocess.events,
                format_rate(engine.reprocess.events_per_second)
            )
        } else {
            "not measured (run without --no-reprocess)".to_owned()
        }
    };
    rows.push(Row {
        others: Vec::new(),
        aspect: "Reprocessing",
        kappa: cell(results, "kappa", |engine| reprocess(engine, "replay the log into a new view version")),
        lambda: cell(results, "lambda", |engine| reprocess(engine, "rerun the batch job over the master dataset")),
    });
    let consistency = |engine: &EngineResults| {
        let correctness = &engine.correctness;
        format!(
            "{} lost, {} duplicated, {} mismatched cells of {} contributions",
            correctness.lost, correctness.duplicated, correctness.mismatched_windows, correctness.expected
        )
    };
    rows.push(Row {
        others: Vec::new(),
        aspect: "Consistency",
        kappa: cell(results, "kappa", |engine| format!("{} (against the policy views)", consistency(engine))),
        lambda: cell(results, "lambda", |engine| match &engine.lambda {
            Some(lambda) => format!(
                "{} after the final batch run (against every event); batch views up to {:.1} s stale",
                consistency(engine),
                lambda.staleness_seconds_max
            ),
            None => consistency(engine),
        }),
    });
    let cost = |engine: &EngineResults| {
        format!(
            "{:.1} CPU s, {} stored{}",
            engine.cost.cpu_seconds,
            format_bytes(engine.cost.stored_bytes),
            engine
                .lambda
                .as_ref()
                .map_or(String::new(), |lambda| format!(" (master dataset {})", format_bytes(lambda.master.bytes)))
        )
    };
    rows.push(Row {
        others: Vec::new(),
        aspect: "Operational cost",
        kappa: cell(results, "kappa", cost),
        lambda: cell(results, "lambda", cost),
    });
    for (name, engine) in results.engines.iter().filter(|(name, _)| !matches!(name.as_str(), "kappa" | "lambda")) {
        for row in &mut rows {
            row.others.push(external_cell(row.aspect, name, engine));
        }
    }
    rows
}
