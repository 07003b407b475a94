//! kstreams through lk: lk's five queries as a Kafka Streams application, fed and judged through
//! the engine protocol (docs/engines.md) by the same oracle and checker as lk's own engines. A
//! short run is exact and its replay too; three SIGKILLs leave it exact under exactly_once_v2;
//! under at_least_once the same SIGKILLs show as duplicates (the checker must see them); two
//! instances in one application id stay exact when one is killed and its partitions move; and
//! under heavy lateness every drop is declared by Kafka Streams' own rule, none lost.
//!
//! Needs a broker (`LK_KAFKA_BROKERS`; `scripts/kafka up`) and the application built
//! (`scripts/kstreams install`). Without them the tests say so and pass, unless
//! `LK_KSTREAMS_TESTS=1` (`.ci/run` sets it once it has built the application), which makes a
//! missing one a failure.

mod external;

use std::path::Path;
use std::sync::Mutex;

use external::{counts, run_engine, scenario_with};

/// One application at a time: two cores hold one JVM engine and a broker with room to spare.
static JVM: Mutex<()> = Mutex::new(());

fn ready() -> Option<String> {
    let brokers = lk_engines::log::kafka::brokers_from_env().unwrap_or_else(|error| panic!("{error}"));
    let required = std::env::var("LK_KSTREAMS_TESTS").is_ok_and(|value| value == "1");
    let installed = lk_harness::engine::external::kstreams::installed();
    match (brokers, installed) {
        (Some(brokers), true) => Some(brokers),
        (None, _) if !required => {
            eprintln!(
                "LK_KAFKA_BROKERS is not set: skipping the Kafka Streams tests (`scripts/kafka up` starts a broker)"
            );
            None
        }
        (Some(_), false) if !required => {
            eprintln!("the Kafka Streams application is not built: skipping its tests (`scripts/kstreams install`)");
            None
        }
        (brokers, installed) => {
            panic!(
                "LK_KSTREAMS_TESTS=1 but the broker ({brokers:?}) or the application (built: {installed}) is missing"
            )
        }
    }
}

/// Runs `lk run` with kstreams into `out`, one application at a time; returns results.json.
fn run_into(
    out: &Path,
    brokers: &str,
    scenario: &Path,
    rate: &str,
    duration: &str,
    extra: &[&str],
) -> serde_json::Value {
    let _one = JVM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    run_engine("kstreams", out, brokers, scenario, rate, duration, extra)
}

fn run(brokers: &str, scenario: &Path, rate: &str, duration: &str, extra: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    run_into(out.path(), brokers, scenario, rate, duration, extra)
}

#[test]
fn a_short_run_is_exact_and_so_is_its_replay() {
    let Some(brokers) = ready() else { return };
    let results = run(&brokers, Path::new("scenarios/clean.toml"), "2000", "10s", &[]);
    let engine = &results["engines"]["kstreams"];
    assert_eq!(counts(engine), (0, 0, 0), "{}", engine["correctness"]);
    assert_eq!(engine["correctness"]["verdict"], "exactly-once held");
    assert_eq!(engine["correctness"]["guarantee"], "exactly-once");
    // Malformed records reached the application and its deserialization handler dead-lettered
    // exactly those.
    assert!(results["oracle"]["dead_lettered"].as_u64().unwrap() > 0, "the scenario has bad records");
    assert_eq!(engine["correctness"]["dead_letters_accounted"], true, "{}", engine["correctness"]);
    let external = &engine["external"];
    assert_eq!(external["unreadable_upserts"], 0, "{external}");
    assert_eq!(external["readers"], serde_json::json!(["kstreams"]), "{external}");
    assert!(engine["latency_ms"]["count"].as_u64().unwrap() > 0, "visible latency was measured: {engine}");
    assert!(engine["window_latency"]["processing_ms"]["count"].as_u64().unwrap() > 0, "and window latency");
    let reprocess = &engine["reprocess"];
    assert_eq!(reprocess["correct"], true, "the replay into a new application id is exact: {reprocess}");
    assert!(reprocess["events"].as_u64().unwrap() > 10_000, "{reprocess}");
}

/// Three crash faults aimed at kstreams, four seconds apart.
const KILLS: &str = r#"
[[faults]]
kind = "crash"
engine = "kstreams"
at = "4s"

[[faults]]
kind = "crash"
engine = "kstreams"
at = "8s"

[[faults]]
kind = "crash"
engine = "kstreams"
at = "12s"
"#;

#[test]
fn three_sigkills_leave_it_exact_under_exactly_once_v2() {
    let Some(brokers) = ready() else { return };
    let folder = tempfile::tempdir().unwrap();
    let scenario = scenario_with(folder.path(), "scenarios/clean.toml", KILLS);
    let results = run(&brokers, &scenario, "2000", "16s", &["--no-reprocess"]);
    let engine = &results["engines"]["kstreams"];
    assert_eq!(engine["faults"]["crashes"], 3, "three SIGKILLs: {}", engine["faults"]);
    assert_eq!(engine["external"]["restart_seconds"].as_array().unwrap().len(), 3, "{}", engine["external"]);
    assert_eq!(
        counts(engine),
        (0, 0, 0),
        "transactions over output, changelogs and offsets, state restored from the changelogs: {}",
        engine["correctness"]
    );
    assert_eq!(engine["correctness"]["dead_letters_accounted"], true, "{}", engine["correctness"]);
}

#[test]
fn at_least_once_shows_the_sigkills_as_duplicates() {
    let Some(brokers) = ready() else { return };
    let folder = tempfile::tempdir().unwrap();
    // Offsets committed every 2 s: a kill lands on up to 2 s of processed input whose output and
    // changelog records the broker has, and whose offsets it has not.
    let kills = format!("{KILLS}\n[engine]\ncommit_interval = \"2s\"\n");
    let scenario = scenario_with(folder.path(), "scenarios/clean.toml", &kills);
    let results = run(&brokers, &scenario, "2000", "16s", &["--no-reprocess", "--kstreams-guarantee", "at-least-once"]);
    let engine = &results["engines"]["kstreams"];
    assert_eq!(engine["faults"]["crashes"], 3, "{}", engine["faults"]);
    assert_eq!(engine["correctness"]["guarantee"], "at-least-once");
    let (lost, duplicated, _) = counts(engine);
    assert_eq!(lost, 0, "at-least-once loses nothing: {}", engine["correctness"]);
    assert!(
        duplicated > 0,
        "what was processed after the last commit is processed again, and its state changes were already in the \
         changelog: the checker must see it: {}",
        engine["correctness"]
    );
    assert_ne!(engine["correctness"]["verdict"], "exactly-once held", "{}", engine["correctness"]);
}

#[test]
fn two_instances_stay_exact_when_one_is_killed_and_its_partitions_move() {
    let Some(brokers) = ready() else { return };
    let folder = tempfile::tempdir().unwrap();
    let scenario = scenario_with(folder.path(), "scenarios/clean.toml", KILLS);
    let out = tempfile::tempdir().unwrap();
    let results =
        run_into(out.path(), &brokers, &scenario, "2000", "16s", &["--no-reprocess", "--kstreams-instances", "2"]);
    let engine = &results["engines"]["kstreams"];
    assert_eq!(engine["faults"]["crashes"], 3, "{}", engine["faults"]);
    assert_eq!(counts(engine), (0, 0, 0), "{}", engine["correctness"]);
    // The second instance ran tasks, and took over more when the first was killed: each instance
    // logs its active tasks after every rebalance.
    let log = std::fs::read_to_string(out.path().join("engines/kstreams-v1/instance-2/engine.log")).unwrap();
    let assignments: Vec<&str> = log.lines().filter(|line| line.contains("running with active tasks [")).collect();
    assert!(
        assignments.iter().any(|line| !line.ends_with("[]")),
        "the second instance was assigned tasks: {assignments:?}"
    );
    assert!(
        assignments.len() >= 2,
        "and its assignment changed as the first was killed and came back: {assignments:?}"
    );
}

#[test]
fn its_late_drops_are_declared_by_its_own_rule_and_none_is_lost() {
    let Some(brokers) = ready() else { return };
    let results = run(&brokers, Path::new("tests/scenarios/spark-late.toml"), "1000", "25s", &["--no-reprocess"]);
    let engine = &results["engines"]["kstreams"];
    let late: u64 =
        engine["external"]["late_by_its_rule"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(late > 0, "offline phones' events arrive past the grace period and are dropped: {}", engine["external"]);
    assert_eq!(engine["correctness"]["late_dropped"].as_u64(), Some(late));
    assert_eq!(counts(engine), (0, 0, 0), "every drop is late by Kafka Streams' own rule: {}", engine["correctness"]);
    assert!(engine["correctness"]["windowed_completeness"].as_f64().unwrap() < 1.0, "{}", engine["correctness"]);
}
