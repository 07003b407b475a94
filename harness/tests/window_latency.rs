//! Window latency measures the engines, not the configuration: an engine slowed on purpose moves
//! the sweep's points by what it was slowed; a run in which no window closes says "n/a" with a
//! reason instead of a number; early results and the windows they leave incomplete are counted.

use std::sync::Arc;
use std::time::Duration;

use lk_harness::engine::EngineKind;
use lk_harness::output::Takeover;
use lk_harness::run::{LogChoice, RunOptions, TestKnobs, run};
use lk_harness::scenario::Scenario;
use lk_harness::sweep::sweep;
use lk_simulator::simulate::Pacing;
use lk_simulator::time::MonotonicClock;

/// Late events and skewed clocks, windows of a minute at 120x: a few seconds of run close
/// hundreds of windows, many of them early.
fn late(duration: &str, windows: &str) -> Scenario {
    let text = format!(
        r#"
        [run]
        rate_eps = 30000
        duration = "{duration}"
        time_compression = 120
        shards = 2
        [fleet]
        ping_interval = "20s"
        [lateness]
        distribution = "pareto"
        scale = "200ms"
        shape = 1.1
        max = "2m"
        offline_fraction = 0.01
        offline_min = "10s"
        offline_max = "1m"
        [clock_skew]
        fraction = 0.02
        stddev = "5s"
        [windows]
        rides_per_driver = "{windows}"
        zone_demand = "{windows}"
        zone_demand_slide = "{windows}"
        session_gap = "{windows}"
        trends = "{windows}"
        [watermark]
        delay = "2s"
        allowed_lateness = "5s"
        [engine]
        partitions = 2
        workers = 1
        warmup = "0s"
        "#
    );
    Scenario::from_toml(&text, "late.toml").unwrap().with_seed(11)
}

fn options(directory: &std::path::Path, knobs: TestKnobs) -> RunOptions {
    RunOptions {
        out_directory: directory.to_owned(),
        pacing: Pacing::Scheduled,
        reprocess: false,
        engines: vec![EngineKind::Kappa],
        log: LogChoice::Embedded,
        takeover: Takeover::Refuse,
        test_knobs: knobs,
        spark: Default::default(),
        kstreams: Default::default(),
        profile: Default::default(),
        live: None,
    }
}

#[test]
fn a_slower_engine_moves_the_sweeps_points_by_what_it_was_slowed() {
    let scenario = late("4s", "1m");
    let delays = [Duration::from_secs(2)];
    let mut p50s = Vec::new();
    for serve_delay_ms in [0, 150] {
        let directory = tempfile::tempdir().unwrap();
        let knobs =
            TestKnobs { kappa_window_serve_delay: Duration::from_millis(serve_delay_ms), ..TestKnobs::default() };
        let result = sweep(
            &scenario,
            &delays,
            &options(directory.path(), knobs),
            Arc::new(MonotonicClock::new()),
            &mut |_, _| {},
        )
        .unwrap();
        let point = result.points.iter().find(|point| point.series == "kappa").expect("a Kappa point");
        let p50 = point.window_latency_p50_ms.expect("windows closed during the run");
        let p99 = point.window_latency_p99_ms.expect("windows closed during the run");
        // Measured, not configured: the points are not the configured delay (2 s at 120x on
        // the clock), and p50 and p99 differ.
        assert!((p50 - point.watermark_delay_clock_ms).abs() > 1.0, "{point:?}");
        assert!(p99 > p50, "{point:?}");
        p50s.push(p50);
    }
    assert!(p50s[1] - p50s[0] > 100.0, "a 150 ms slower engine moved the p50 from {} to {} ms", p50s[0], p50s[1]);
}

#[test]
fn a_run_in_which_no_window_closes_reports_not_available_with_the_reason() {
    let directory = tempfile::tempdir().unwrap();
    // Windows of a day: one second of run covers two minutes of event time.
    let results = run(
        &late("1s", "1d"),
        &options(directory.path(), TestKnobs::default()),
        Arc::new(MonotonicClock::new()),
        &mut |_| {},
    )
    .unwrap();
    let windows = &results.engines["kappa"].window_latency;
    assert!(windows.processing_ms.is_none() && windows.event_time_ms.is_none(), "{windows:?}");
    assert!(windows.unmeasured.as_deref().is_some_and(|reason| reason.contains("no window result")), "{windows:?}");
    let json = std::fs::read_to_string(directory.path().join("results.json")).unwrap();
    assert!(json.contains("\"processing_ms\": null") && json.contains("\"unmeasured\""), "{json}");
    let table = lk_harness::summary::table(&results);
    assert!(table.contains("n/a"), "{table}");
}

#[test]
fn early_results_and_the_windows_they_leave_incomplete_are_counted() {
    let directory = tempfile::tempdir().unwrap();
    let results = run(
        &late("4s", "1m"),
        &options(directory.path(), TestKnobs::default()),
        Arc::new(MonotonicClock::new()),
        &mut |_| {},
    )
    .unwrap();
    let kappa = &results.engines["kappa"];
    let windows = &kappa.window_latency;
    let event_time = windows.event_time_ms.as_ref().expect("windows closed");
    // Skewed clocks push event time ahead of the schedule: some results come before their
    // window ended on the clock, and are negative, not clamped.
    assert!(windows.results_early > 0 && event_time.negative == windows.results_early, "{windows:?}");
    assert!(event_time.min < 0.0, "{event_time:?}");
    // Late events beyond the allowed lateness leave windows incomplete; within it, revise them.
    assert!(windows.late_dropped > 0 && windows.windows_incomplete > 0, "{windows:?}");
    assert!(windows.results_revised > 0, "{windows:?}");
    assert_eq!(windows.late_dropped, kappa.correctness.late_dropped);
    // And the engine is still exact against its own lateness policy.
    assert_eq!((kappa.correctness.lost, kappa.correctness.duplicated), (0, 0), "{:?}", kappa.correctness);
}
