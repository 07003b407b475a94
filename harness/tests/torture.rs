//! `lk torture` end to end on the embedded log: a short torture of both engines must hold
//! exactly-once through every kind of fault it draws, the weaker guarantees must show what they
//! allow, and a recovery that is broken on purpose (Kappa without its checkpoints) must fail runs
//! and name the command that replays them. `LK_TORTURE_RUNS=n` runs a longer torture.

use std::sync::Arc;
use std::time::Duration;

use lk_harness::engine::EngineKind;
use lk_harness::run::{LogChoice, RunOptions, TestKnobs};
use lk_harness::scenario::{Guarantee, Scenario};
use lk_harness::torture::{Torture, TortureOptions, torture};
use lk_simulator::simulate::Pacing;
use lk_simulator::time::MonotonicClock;

/// Forty thousand events/s, ten minutes of event time in three seconds, no duplicates from the
/// stream: every loss or duplicate comes from a fault.
fn scenario(guarantee: Guarantee) -> Scenario {
    scenario_with(guarantee, 2, "")
}

/// [`scenario`] with `workers` and more `[engine]` settings.
fn scenario_with(guarantee: Guarantee, workers: u32, engine: &str) -> Scenario {
    let text = r#"
        [run]
        rate_eps = 40000
        duration = "3s"
        time_compression = 200
        shards = 4
        [fleet]
        ping_interval = "20s"
        [demand]
        requests_per_driver_hour = 6
        [lateness]
        distribution = "exponential"
        mean = "100ms"
        max = "10s"
        [duplicates]
        fraction = 0
        [malformed]
        fraction = 0.001
        [windows]
        rides_per_driver = "1m"
        zone_demand = "2m"
        zone_demand_slide = "30s"
        session_gap = "1m"
        trends = "5m"
        [watermark]
        delay = "2s"
        allowed_lateness = "20s"
        [engine]
        partitions = 4
        workers = 2
        checkpoint_interval = "300ms"
        warmup = "0s"
        [lambda]
        batch_interval = "1m"
    "#
    .replace("workers = 2", &format!("workers = {workers}"))
    .replace("warmup = \"0s\"", &format!("warmup = \"0s\"\n{engine}"));
    Scenario::from_toml(&text, "torture.toml").unwrap().with_guarantee(guarantee)
}

fn options(
    directory: &std::path::Path,
    engines: &[EngineKind],
    runs: u32,
    seed: u64,
    knobs: TestKnobs,
) -> TortureOptions {
    TortureOptions {
        runs,
        only: None,
        seed,
        duration: Duration::from_secs(3),
        max_faults: 4,
        run: RunOptions {
            out_directory: directory.join("torture"),
            pacing: Pacing::Scheduled,
            reprocess: false,
            engines: engines.to_vec(),
            log: LogChoice::Embedded,
            takeover: lk_harness::output::Takeover::Refuse,
            test_knobs: knobs,
            spark: Default::default(),
            kstreams: Default::default(),
            profile: lk_harness::run::StreamProfiling::Never,
            live: None,
        },
        command: format!("lk torture torture.toml --seed {seed}"),
    }
}

fn run_torture(scenario: &Scenario, options: &TortureOptions) -> Torture {
    torture(scenario, options, Arc::new(MonotonicClock::new()), &mut |_| {}).unwrap()
}

fn runs(default: u32) -> u32 {
    std::env::var("LK_TORTURE_RUNS").ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

#[test]
fn exactly_once_holds_in_both_engines_through_every_kind_of_fault() {
    let directory = tempfile::tempdir().unwrap();
    let options = options(directory.path(), &EngineKind::OWN, runs(20), 11, TestKnobs::default());
    let torture = run_torture(&scenario(Guarantee::ExactlyOnce), &options);
    assert!(torture.failed().is_empty(), "{}", torture.summary());
    let tally = torture.tally();
    for (engine, points) in
        [("kappa", &["after-output", "mid-commit"][..]), ("lambda", &["after-output", "mid-commit", "batch-run"][..])]
    {
        for point in points {
            assert!(
                tally[engine].crashes.get(*point).is_some_and(|&count| count > 0),
                "{engine} never crashed {point}: {}",
                torture.summary()
            );
        }
        // Every crash of the live run recovered (a reprocessing's restart is not one of them).
        let live: u64 =
            tally[engine].crashes.iter().filter(|(point, _)| *point != "reprocess").map(|(_, count)| count).sum();
        assert_eq!(tally[engine].recoveries.len() as u64, live, "every crash recovered: {}", torture.summary());
    }
    let in_recovery: u64 = tally.values().filter_map(|engine| engine.crashes.get("in-recovery")).sum();
    assert!(in_recovery > 0, "no crash landed during a recovery: {}", torture.summary());
    let scheduled = torture.runs.iter().flat_map(|run| &run.schedule).collect::<Vec<_>>();
    for kind in ["redelivery", "outage", "crash both"] {
        assert!(scheduled.iter().any(|entry| entry.contains(kind)), "no {kind} drawn");
    }
    // What a passed run keeps: its results and views, not its log.
    let first = std::path::Path::new(&torture.runs[0].folder);
    assert!(first.join("results.json").is_file());
    assert!(!first.join("log").exists(), "a passed run's log is removed");
    let written: Torture =
        serde_json::from_slice(&std::fs::read(directory.path().join("torture/torture.json")).unwrap()).unwrap();
    assert_eq!(written.runs, torture.runs);
}

#[test]
fn under_scale_out_crashes_land_in_rescales_and_exactly_once_holds() {
    // One worker and a backpressure limit of 20 ms of input: an overload makes the governor
    // rescale the slower engine, which takes the crash.
    let scenario = scenario_with(
        Guarantee::ExactlyOnce,
        1,
        "backpressure = \"scale-out\"\nbackpressure_limit = \"20ms\"\nmax_workers = 4",
    );
    // The first seed whose first eight runs draw an in-rescale crash four times (which engine
    // the governor rescales, and whether an overload makes it rescale at all, is the machine's).
    let engines = EngineKind::OWN;
    let drawn = |seed: u64| {
        (0..8)
            .flat_map(|index| {
                lk_harness::torture::schedule(
                    lk_harness::torture::run_seed(seed, index),
                    Duration::from_secs(3),
                    &engines,
                    4,
                    true,
                )
            })
            .filter(|plan| {
                matches!(
                    plan.kind,
                    lk_harness::scenario::FaultKind::Crash { point: lk_harness::scenario::CrashPoint::InRescale, .. }
                )
            })
            .count()
    };
    let seed = (0..).find(|&seed| drawn(seed) >= 4).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let options = options(directory.path(), &engines, 8, seed, TestKnobs::default());
    let torture = run_torture(&scenario, &options);
    assert!(torture.failed().is_empty(), "{}", torture.summary());
    let landed: u64 = torture.tally().values().filter_map(|engine| engine.crashes.get("in-rescale")).sum();
    assert!(landed > 0, "no crash landed in a rescale: {}", torture.summary());
}

#[test]
fn the_weaker_guarantees_show_what_they_allow_and_do_not_fail_the_torture() {
    for (guarantee, seed) in [(Guarantee::AtLeastOnce, 5), (Guarantee::AtMostOnce, 6)] {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path(), &EngineKind::OWN, 4, seed, TestKnobs::default());
        let torture = run_torture(&scenario(guarantee), &options);
        assert!(torture.failed().is_empty(), "{}", torture.summary());
        for (engine, tally) in torture.tally() {
            let shown = match guarantee {
                Guarantee::AtLeastOnce => tally.runs_duplicated,
                _ => tally.runs_lost,
            };
            assert!(shown > 0, "{engine} under {}: {}", guarantee.name(), torture.summary());
        }
    }
}

#[test]
fn a_lambda_that_forgets_its_master_dataset_on_restart_fails_runs() {
    let directory = tempfile::tempdir().unwrap();
    let knobs = TestKnobs { lambda_forget_master_on_restart: true, ..TestKnobs::default() };
    let options = options(directory.path(), &[EngineKind::Lambda], 3, 11, knobs);
    let torture = run_torture(&scenario(Guarantee::ExactlyOnce), &options);
    let failed = torture.failed();
    assert!(!failed.is_empty(), "a Lambda that skips what it had not written passed: {}", torture.summary());
    assert!(failed.iter().any(|run| run.engines.iter().any(|engine| engine.lost > 0)), "{}", torture.summary());
}

#[test]
fn a_recovery_without_checkpoints_fails_runs_and_names_their_replay() {
    let directory = tempfile::tempdir().unwrap();
    let knobs = TestKnobs { kappa_memory_state_store: true, ..TestKnobs::default() };
    let mut options = options(directory.path(), &[EngineKind::Kappa], 3, 11, knobs);
    let scenario = scenario(Guarantee::ExactlyOnce);
    let torture = run_torture(&scenario, &options);
    let failed = torture.failed();
    assert!(!failed.is_empty(), "a Kappa that forgets its state on a crash passed: {}", torture.summary());
    let run = failed[0];
    assert!(run.replay.starts_with("lk torture torture.toml --seed 11 --out "), "{}", run.replay);
    assert!(run.replay.ends_with(&format!(" --only {}", run.index)), "{}", run.replay);
    assert!(torture.summary().contains(&run.replay));
    // The replay runs the same schedule.
    options.only = Some(run.index);
    options.run.out_directory = directory.path().join("replay");
    let replayed = run_torture(&scenario, &options);
    assert_eq!(replayed.runs.len(), 1);
    assert_eq!(replayed.runs[0].schedule, run.schedule);
    assert_eq!(replayed.runs[0].seed, run.seed);
}
