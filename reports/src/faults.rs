//! The faults and exactly-once section, built once for both renderers: per engine, the
//! guarantee it ran with and the checker's verdict, its crashes and recoveries, its dead
//! letters; the faults the run injected; and a few events the checker named.

use lk_harness::results::Results;

/// Column headings of the verdict table.
pub const HEADINGS: [&str; 9] =
    ["engine", "guarantee", "verdict", "lost", "duplicated", "crashes", "recovery max", "replayed", "dead letters"];

/// One row per engine of the verdict table.
pub fn verdict_rows(results: &Results) -> Vec<[String; 9]> {
    results
        .engines
        .iter()
        .map(|(name, engine)| {
            let correctness = &engine.correctness;
            let faults = &engine.faults;
            let verdict = if correctness.verdict.is_empty() {
                "not checked (results from an older lk)".to_owned()
            } else {
                correctness.verdict.clone()
            };
            let dead_letters = if correctness.dead_letter_file.is_empty() {
                format!("{} (no file)", correctness.dead_lettered)
            } else if correctness.dead_letters_accounted {
                format!("{} in file, all accounted", correctness.dead_letter_file_records)
            } else {
                format!(
                    "{} in file, oracle found {}: NOT accounted",
                    correctness.dead_letter_file_records, results.oracle.dead_lettered
                )
            };
            [
                name.clone(),
                correctness.guarantee.clone(),
                verdict,
                correctness.lost.to_string(),
                correctness.duplicated.to_string(),
                faults.crashes.to_string(),
                if faults.crashes > 0 { format!("{:.3} s", faults.recovery_seconds_max) } else { "-".to_owned() },
                faults.records_replayed.to_string(),
                dead_letters,
            ]
        })
        .collect()
}

/// The injected faults, one line each: time, kind, what happened.
pub fn fault_lines(results: &Results) -> Vec<String> {
    results
        .faults
        .iter()
        .map(|fault| {
            let period = if fault.duration_seconds > 0.0 {
                format!(" until {:.2} s", fault.at_seconds + fault.duration_seconds)
            } else {
                String::new()
            };
            format!("{:.2} s{period}: {}: {}", fault.at_seconds, fault.kind, fault.detail)
        })
        .collect()
}

/// Each crash of each engine with its recovery: when it stopped, restarted and caught up.
pub fn crash_lines(results: &Results) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, engine) in &results.engines {
        for crash in &engine.faults.crash_list {
            lines.push(format!(
                "{name} crashed at {:.2} s ({}): stopped {:.3} s, restarted {:.3} s, caught up {:.3} s: recovery {:.3} s",
                crash.at_seconds,
                crash.point,
                crash.stopped_at_seconds,
                crash.restarted_at_seconds,
                crash.caught_up_at_seconds,
                crash.recovery_seconds
            ));
        }
    }
    lines
}

/// A few lost or duplicated events per engine, as the checker named them.
pub fn named_events(results: &Results, per_engine: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, engine) in &results.engines {
        let events = engine
            .correctness
            .per_query
            .iter()
            .flat_map(|(query, result)| result.events.iter().map(move |event| (query, event)))
            .take(per_engine);
        for (query, event) in events {
            lines.push(format!(
                "{name}: event {} {} in {query} cell {} (counted {} times)",
                event.event_id, event.problem, event.cell, event.counted
            ));
        }
    }
    lines
}

/// Markers for time-series charts: (seconds since start, short label).
pub fn markers(results: &Results) -> Vec<(f64, String)> {
    results.faults.iter().map(|fault| (fault.at_seconds, fault.kind.clone())).collect()
}

/// What the backpressure strategy did and cost, when the run measured it.
pub fn backpressure_line(results: &Results) -> Option<String> {
    let backpressure = &results.backpressure;
    if backpressure.strategy.is_empty() {
        return None;
    }
    let workers: Vec<String> =
        backpressure.workers_final.iter().map(|(engine, workers)| format!("{engine} {workers}")).collect();
    Some(format!(
        "Backpressure `{}` (acts beyond {} records of backlog): peak backlog {} records ({}); {} events dropped \
         on purpose; source blocked {:.2} s; {} rescales (workers at the end: {}).",
        backpressure.strategy,
        backpressure.limit_records,
        backpressure.peak_backlog_records,
        crate::format_bytes(backpressure.peak_backlog_bytes),
        backpressure.dropped_events,
        backpressure.source_blocked_seconds,
        backpressure.rescales,
        if workers.is_empty() { "-".to_owned() } else { workers.join(", ") }
    ))
}
