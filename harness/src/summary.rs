//! The table `lk run` prints: the headline figures of each engine, and the driver check.

use std::fmt::Write;

use crate::results::{EngineResults, Results};

/// The run's summary as a plain-text table.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let generator = &results.generator;
    let _ = writeln!(
        out,
        "scenario {} (seed {}): {} events, target {:.0}/s, achieved {:.0}/s, max schedule lag {:.1} ms{}",
        results.scenario.name,
        results.scenario.seed,
        generator.events,
        generator.target_rate_eps,
        generator.achieved_rate_eps,
        generator.max_schedule_lag_ms,
        if generator.kept_up {
            ""
        } else {
            "  << the generator or the log did not keep up: engine figures are the driver's"
        }
    );
    let _ = writeln!(
        out,
        "log {}: {} records appended ({:.0}/s), {} producer retries dropped; oracle: {} events, {} dead letters",
        results.environment.log_backend,
        generator.records_appended,
        generator.log_append_rate_eps,
        generator.duplicates_dropped,
        results.oracle.events,
        results.oracle.dead_lettered
    );
    for damage in &results.environment.log_damage {
        let _ = writeln!(out, "log damage: {damage}");
    }
    if !results.environment.paced {
        let _ =
            writeln!(out, "flat out (--rate max): events go out before they are due, so latencies mean nothing here");
    }
    let _ = writeln!(
        out,
        "{:<8} {:>12} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>6} {:>6} {:>8} {:>10} {:>13} {:>8}",
        "engine",
        "events/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "win p99 ms",
        "w.end p50",
        "lost",
        "dup",
        "mismatch",
        "late drop",
        "reprocess/s",
        "cpu s"
    );
    for (name, engine) in &results.engines {
        let correctness = &engine.correctness;
        let _ = writeln!(
            out,
            "{:<8} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>11} {:>11} {:>6} {:>6} {:>8} {:>10} {:>13.0} {:>8.2}{}",
            name,
            engine.throughput_eps,
            engine.latency_ms.p50,
            engine.latency_ms.p99,
            engine.latency_ms.p999,
            engine.latency_ms.max,
            engine
                .window_latency
                .processing_ms
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |ms| format!("{:.0}", ms.p99)),
            engine
                .window_latency
                .event_time_ms
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |ms| format!("{:+.0}", ms.p50)),
            correctness.lost,
            correctness.duplicated,
            correctness.mismatched_windows,
            correctness.late_dropped,
            engine.reprocess.events_per_second,
            engine.cost.cpu_seconds,
            if engine.kept_up { "" } else { "  << fell behind" },
        );
    }
    let backpressure = &results.backpressure;
    if !backpressure.strategy.is_empty() && backpressure.peak_backlog_records > 0 {
        let _ = writeln!(
            out,
            "backpressure {}: peak backlog {} records ({:.1} MB), limit {}; dropped {} events; source blocked {:.2} s; {} rescales",
            backpressure.strategy,
            backpressure.peak_backlog_records,
            backpressure.peak_backlog_bytes as f64 / 1e6,
            backpressure.limit_records,
            backpressure.dropped_events,
            backpressure.source_blocked_seconds,
            backpressure.rescales
        );
    }
    out.push_str(&spread(results));
    if let Some(resources) = &results.resources {
        let threads: Vec<String> =
            resources.threads.iter().take(5).map(|group| format!("{} {:.2}", group.name, group.cores)).collect();
        let _ = writeln!(out, "limit: {}; lk's busiest threads, cores: {}", resources.limit, threads.join(", "));
    }
    if let Some(steadiness) = &results.steadiness {
        let _ = writeln!(out, "over time: {}", steadiness.line());
    }
    // Below the table, per engine: the guarantee's verdict, crashes and a few named events.
    for (name, engine) in &results.engines {
        let correctness = &engine.correctness;
        let faults = &engine.faults;
        let crashes = if faults.crashes > 0 {
            format!(
                "; {} crashes, recovery max {:.2} s, {} records replayed",
                faults.crashes, faults.recovery_seconds_max, faults.records_replayed
            )
        } else {
            String::new()
        };
        let _ = writeln!(out, "{name}: {} ({}){crashes}", correctness.verdict, correctness.guarantee);
        let windows = &engine.window_latency;
        match (&windows.processing_ms, &windows.event_time_ms, &windows.unmeasured) {
            (Some(processing), Some(event_time), _) => {
                let _ = writeln!(
                    out,
                    "{name} windows: {} results, processing p50/p99 {:.0}/{:.0} ms, window end to served p50/p99 \
                     {:+.0}/{:+.0} ms; {} served before their window ended, {} revised by late events, {} windows \
                     missing late events, {} late contributions dropped",
                    processing.count,
                    processing.p50,
                    processing.p99,
                    event_time.p50,
                    event_time.p99,
                    windows.results_early,
                    windows.results_revised,
                    windows.windows_incomplete,
                    windows.late_dropped
                );
            }
            (_, _, reason) => {
                let reason = reason.as_deref().unwrap_or("no window result was served");
                let _ = writeln!(out, "{name} windows: latency n/a: {reason}");
            }
        }
        if let Some(stages) = &engine.latency_stages {
            let parts: Vec<String> = stages
                .stages
                .iter()
                .filter(|stage| stage.p99_ms > 0.0 || stage.mean_ms >= 0.05)
                .map(|stage| format!("{} {}/{}", stage.stage, short(stage.mean_ms), short(stage.p99_ms)))
                .collect();
            let _ = writeln!(out, "{name} latency by stage, mean/p99 ms: {}", parts.join(" · "));
        }
        let mut shown = 0;
        for (query, result) in &correctness.per_query {
            if result.events.is_empty() {
                for example in result.examples.iter().take(1) {
                    let _ = writeln!(out, "  {query}: {example}");
                }
            }
            for event in result.events.iter().take(2) {
                let _ = writeln!(
                    out,
                    "  {query}: event {} {} in cell {} (counted {} times)",
                    event.event_id, event.problem, event.cell, event.counted
                );
            }
            shown += 1;
            if shown >= 5 {
                break;
            }
        }
    }
    out
}

/// With repetitions: each engine's headline figures as median [min - max] over them (the table
/// above shows the combination: merged histograms, medians, the worst correctness).
pub fn spread(results: &Results) -> String {
    let mut out = String::new();
    if results.repetitions.is_empty() {
        return out;
    }
    let _ = writeln!(out, "over {} repetitions, median [min - max]:", results.repetitions.len());
    type Get = fn(&EngineResults) -> Option<f64>;
    let figures: [(&str, Get); 5] = [
        ("events/s", |engine| Some(engine.throughput_eps)),
        ("p50 ms", |engine| Some(engine.latency_ms.p50)),
        ("p99 ms", |engine| Some(engine.latency_ms.p99)),
        ("win p99 ms", |engine| engine.window_latency.processing_ms.as_ref().map(|ms| ms.p99)),
        ("cpu s", |engine| Some(engine.cost.cpu_seconds)),
    ];
    for name in results.engines.keys() {
        let mut line = format!("  {name}:");
        for (label, get) in figures {
            let values: Vec<f64> = results
                .repetitions
                .iter()
                .filter_map(|repetition| repetition.engines.get(name).and_then(get))
                .collect();
            if values.is_empty() {
                continue;
            }
            let (low, high) = values.iter().fold((f64::MAX, f64::MIN), |(low, high), v| (low.min(*v), high.max(*v)));
            let _ =
                write!(line, " {label} {} [{} - {}];", short(crate::repeat::median(&values)), short(low), short(high));
        }
        let _ = writeln!(out, "{}", line.trim_end_matches(';'));
    }
    out
}

/// A figure with as many decimals as its size needs.
fn short(value: f64) -> String {
    if value.abs() >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}
