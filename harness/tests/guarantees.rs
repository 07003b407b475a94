//! Delivery guarantees under injected crashes, end to end through `run`: over many seeds of a
//! small crash scenario, exactly-once must lose and duplicate nothing in either engine, while
//! the weaker guarantees must show what they allow (at-least-once duplicates, at-most-once
//! losses): that is what makes the checker credible. The scenario has no producer retries, so
//! every duplicate or loss comes from a crash. `LK_SEEDS=n` runs more seeds.

use std::sync::Arc;

use lk_harness::engine::EngineKind;
use lk_harness::results::Results;
use lk_harness::run::{LogChoice, RunOptions, run};
use lk_harness::scenario::{Guarantee, Scenario};
use lk_simulator::simulate::Pacing;
use lk_simulator::time::MonotonicClock;

/// Three seconds at 40k events/s, ten minutes of event time, crashed three times at seeded
/// times and points.
fn crashing(seed: u64, guarantee: Guarantee) -> Scenario {
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
        batch_interval = "2m"
        [[faults]]
        kind = "crash"
        count = 3
        from = "0.4s"
        until = "2.6s"
    "#;
    Scenario::from_toml(text, "crashing.toml").unwrap().with_seed(seed).with_guarantee(guarantee)
}

fn seeds(default: u64) -> Vec<u64> {
    let count = std::env::var("LK_SEEDS").ok().and_then(|text| text.parse().ok()).unwrap_or(default);
    (0..count).map(|index| 2000 + index * 104_729).collect()
}

/// Runs both engines on `scenario`, paced, in a temporary folder.
fn run_scenario(scenario: &Scenario) -> Results {
    let directory = tempfile::tempdir().unwrap();
    let options = paced(directory.path(), EngineKind::OWN.to_vec());
    run(scenario, &options, Arc::new(MonotonicClock::new()), &mut |_| {}).unwrap()
}

/// A paced run of `engines` on the embedded log into `directory`, without reprocessing.
fn paced(directory: &std::path::Path, engines: Vec<EngineKind>) -> RunOptions {
    RunOptions {
        out_directory: directory.to_owned(),
        pacing: Pacing::Scheduled,
        reprocess: false,
        engines,
        log: LogChoice::Embedded,
        takeover: lk_harness::output::Takeover::Refuse,
        test_knobs: lk_harness::run::TestKnobs::default(),
        spark: Default::default(),
        kstreams: Default::default(),
        profile: Default::default(),
        live: None,
    }
}

fn run_with(seed: u64, guarantee: Guarantee) -> Results {
    run_scenario(&crashing(seed, guarantee))
}

#[test]
fn exactly_once_holds_through_crashes_in_both_engines_on_every_seed() {
    for seed in seeds(4) {
        let results = run_with(seed, Guarantee::ExactlyOnce);
        for (name, engine) in &results.engines {
            assert_eq!(engine.faults.crashes, 3, "seed {seed}, {name}: crashes injected");
            assert!(engine.faults.records_replayed > 0 || name == "lambda", "seed {seed}, {name}: no replay");
            let correctness = &engine.correctness;
            assert_eq!(
                (correctness.lost, correctness.duplicated, correctness.mismatched_windows),
                (0, 0, 0),
                "seed {seed}, {name}: {:#?}",
                correctness.per_query
            );
            assert_eq!(correctness.verdict, "exactly-once held");
            assert!(correctness.dead_letters_accounted, "seed {seed}, {name}: dead letters unaccounted");
            for crash in &engine.faults.crash_list {
                assert!(crash.stopped_at_seconds >= crash.at_seconds, "seed {seed}, {name}: {crash:?}");
                assert!(crash.recovery_seconds >= 0.0 && crash.caught_up_at_seconds >= crash.restarted_at_seconds);
            }
        }
    }
}

#[test]
fn the_transactional_kappa_sink_keeps_exactly_once_through_crashes() {
    use lk_harness::scenario::SinkChoice;
    for seed in seeds(2) {
        let results = run_scenario(&crashing(seed, Guarantee::ExactlyOnce).with_kappa_sink(SinkChoice::Transactional));
        assert_eq!(results.environment.kappa_sink, "transactional");
        let kappa = &results.engines["kappa"];
        assert_eq!(kappa.faults.crashes, 3, "seed {seed}: crashes injected");
        let correctness = &kappa.correctness;
        assert_eq!(
            (correctness.lost, correctness.duplicated, correctness.mismatched_windows),
            (0, 0, 0),
            "seed {seed}: {:#?}",
            correctness.per_query
        );
        assert!(kappa.latency_ms.p50 > 0.0, "seed {seed}: served outcomes are measured when materialised");
    }
}

#[test]
fn the_transactional_speed_layer_keeps_exactly_once_through_crashes() {
    use lk_harness::scenario::SinkChoice;
    for seed in seeds(2) {
        let results = run_scenario(&crashing(seed, Guarantee::ExactlyOnce).with_lambda_sink(SinkChoice::Transactional));
        assert_eq!(results.environment.lambda_sink, "transactional");
        let lambda = &results.engines["lambda"];
        assert_eq!(lambda.faults.crashes, 3, "seed {seed}: crashes injected");
        let correctness = &lambda.correctness;
        assert_eq!(
            (correctness.lost, correctness.duplicated, correctness.mismatched_windows),
            (0, 0, 0),
            "seed {seed}: {:#?}",
            correctness.per_query
        );
        // What the serving layer showed before the final batch run: the batch views so far plus
        // the segments materialised from the speed layer's output topic. Nothing here is late
        // enough to be dropped, so it must be exact: every epoch's changes arrived once, in
        // their own segment, through the crashes and the aborted transactions.
        let speed = &lambda.lambda.as_ref().expect("Lambda's own results").before_final_batch;
        assert_eq!(speed.late_dropped, 0, "seed {seed}: the scenario's lateness stays inside the watermark");
        assert_eq!((speed.lost, speed.duplicated, speed.mismatched_windows), (0, 0, 0), "seed {seed}: {speed:#?}");
        assert!(lambda.latency_ms.p50 > 0.0, "seed {seed}: served outcomes are measured when materialised");
    }
}

#[test]
fn at_least_once_shows_duplicates_and_the_checker_names_them() {
    for seed in seeds(2) {
        let results = run_with(seed, Guarantee::AtLeastOnce);
        for (name, engine) in &results.engines {
            let correctness = &engine.correctness;
            assert!(correctness.duplicated > 0, "seed {seed}, {name}: at-least-once counted nothing twice");
            assert_eq!(correctness.lost, 0, "seed {seed}, {name}: at-least-once lost events");
            let named: Vec<_> = correctness.per_query.values().flat_map(|query| &query.events).collect();
            assert!(
                named.iter().any(|event| event.problem == "duplicated" && event.counted >= 2),
                "seed {seed}, {name}: no duplicated event named: {:#?}",
                correctness.per_query
            );
        }
    }
}

#[test]
fn at_most_once_shows_losses_and_the_checker_names_them() {
    for seed in seeds(2) {
        let results = run_with(seed, Guarantee::AtMostOnce);
        for (name, engine) in &results.engines {
            let correctness = &engine.correctness;
            assert!(correctness.lost > 0, "seed {seed}, {name}: at-most-once lost nothing");
            let named: Vec<_> = correctness.per_query.values().flat_map(|query| &query.events).collect();
            assert!(
                named.iter().any(|event| event.problem == "lost" && event.counted == 0),
                "seed {seed}, {name}: no lost event named: {:#?}",
                correctness.per_query
            );
        }
    }
}

/// The crash scenario without crashes, under an overload, with a backpressure limit of a
/// millisecond of input so that every strategy has to act.
fn overloaded(seed: u64, strategy: lk_harness::scenario::Backpressure) -> Scenario {
    let text = r#"
        [run]
        rate_eps = 40000
        duration = "3s"
        time_compression = 200
        shards = 4
        [fleet]
        ping_interval = "20s"
        [engine]
        partitions = 4
        workers = 1
        max_workers = 2
        backpressure_limit = "1ms"
        checkpoint_interval = "300ms"
        warmup = "0s"
        [lambda]
        batch_interval = "2m"
        [[faults]]
        kind = "overload"
        at = "1s"
        duration = "1s"
        factor = 4
    "#;
    Scenario::from_toml(text, "overloaded.toml").unwrap().with_seed(seed).with_backpressure(strategy)
}

#[test]
fn backpressure_strategies_act_report_their_cost_and_keep_exactly_once() {
    use lk_harness::scenario::Backpressure;
    for strategy in [Backpressure::Drop, Backpressure::ScaleOut, Backpressure::Buffer] {
        let results = run_scenario(&overloaded(7, strategy));
        let backpressure = &results.backpressure;
        assert_eq!(backpressure.strategy, strategy.name());
        assert!(backpressure.peak_backlog_records > backpressure.limit_records, "{strategy:?}: {backpressure:?}");
        match strategy {
            Backpressure::Drop => {
                assert!(backpressure.dropped_events > 0, "{backpressure:?}");
                assert_eq!(
                    results.generator.records_appended + backpressure.dropped_events,
                    results.generator.events,
                    "every event was appended or dropped on purpose"
                );
            }
            Backpressure::ScaleOut => {
                assert!(backpressure.rescales > 0, "{backpressure:?}");
                assert!(backpressure.workers_final.values().any(|&workers| workers == 2), "{backpressure:?}");
            }
            _ => assert!(backpressure.source_blocked_seconds > 0.0, "{backpressure:?}"),
        }
        for (name, engine) in &results.engines {
            let correctness = &engine.correctness;
            assert_eq!((correctness.lost, correctness.duplicated), (0, 0), "{strategy:?}, {name}");
        }
    }
}

#[test]
fn a_crash_during_a_rescale_keeps_exactly_once() {
    use lk_harness::scenario::{Backpressure, CrashPoint, FaultKind, FaultPlan, FaultTarget, FaultTimes};
    // The overload (1 s to 2 s) makes both engines rescale; the crash waits for each one's
    // rescale and hits its new incarnation as it restores state checkpointed by one worker.
    let scenario = overloaded(11, Backpressure::ScaleOut);
    let mut plans = scenario.fault_plan.clone();
    plans.push(FaultPlan {
        times: FaultTimes::At(std::time::Duration::from_millis(900)),
        kind: FaultKind::Crash { target: FaultTarget::Every, point: CrashPoint::InRescale },
        random_point: false,
    });
    let results = run_scenario(&scenario.with_faults(plans));
    assert!(results.backpressure.rescales > 0, "{:?}", results.backpressure);
    let mut landed = 0;
    for (name, engine) in &results.engines {
        // An engine the governor rescaled took the crash in its new incarnation.
        let crashes = &engine.faults.crash_list;
        if results.backpressure.workers_final[name.as_str()] > 1 {
            assert!(crashes.iter().any(|crash| crash.point == "in-rescale"), "{name}: {crashes:?}");
            landed += 1;
        }
        let correctness = &engine.correctness;
        assert_eq!((correctness.lost, correctness.duplicated, correctness.mismatched_windows), (0, 0, 0), "{name}");
        assert_eq!(correctness.verdict, "exactly-once held", "{name}");
    }
    assert!(landed > 0, "{:?}", results.backpressure);
    // Without scale-out, the point can never land: the run says so before it starts.
    let directory = tempfile::tempdir().unwrap();
    let options = paced(directory.path(), vec![EngineKind::Kappa]);
    let buffered = overloaded(11, Backpressure::Buffer);
    let mut plans = buffered.fault_plan.clone();
    plans.push(FaultPlan {
        times: FaultTimes::At(std::time::Duration::from_millis(900)),
        kind: FaultKind::Crash { target: FaultTarget::Every, point: CrashPoint::InRescale },
        random_point: false,
    });
    let Err(error) = run(&buffered.with_faults(plans), &options, Arc::new(MonotonicClock::new()), &mut |_| {}) else {
        panic!("a run with an in-rescale crash and no scale-out was not refused")
    };
    let error = error.to_string();
    assert!(error.contains("in-rescale") && error.contains("scale-out"), "{error}");
}

#[test]
fn each_engine_keeps_its_own_guarantee_in_one_run() {
    // Kappa exactly-once beside Lambda at-most-once on the same log: the idempotent producer is
    // on (Kappa needs it), Kappa loses nothing, Lambda loses what it had read but not written.
    let scenario = crashing(2000, Guarantee::ExactlyOnce)
        .with_engine_guarantee(lk_harness::engine::EngineKind::Lambda, Guarantee::AtMostOnce);
    let results = run_scenario(&scenario);
    let (kappa, lambda) = (&results.engines["kappa"].correctness, &results.engines["lambda"].correctness);
    assert_eq!((kappa.guarantee.as_str(), lambda.guarantee.as_str()), ("exactly-once", "at-most-once"));
    assert_eq!((kappa.lost, kappa.duplicated), (0, 0), "{kappa:#?}");
    assert!(lambda.lost > 0, "{lambda:#?}");
}
