//! spark-kappa through lk: the seed's Kappa job on Spark Structured Streaming, fed and judged
//! through the engine protocol (docs/engines.md) by the same oracle and checker as lk's own
//! engines. A short run is exact and its replay too; three SIGKILLs of the Spark driver leave it
//! exact; a sink that is not idempotent is caught as duplicates; and under heavy lateness every
//! contribution Spark drops is classified as late by its own watermarks, none as lost.
//!
//! Needs a broker (`LK_KAFKA_BROKERS`; `scripts/kafka up`) and Spark (`scripts/spark install`).
//! Without them the tests say so and pass, unless `LK_SPARK_TESTS=1` (`.ci/run` sets it once it
//! has installed Spark), which makes a missing Spark a failure.

mod external;

use std::path::Path;
use std::sync::Mutex;

use external::{counts, run_engine, scenario_with};

/// One Spark job at a time: two cores cannot hold two JVMs and a broker with room to spare.
static SPARK: Mutex<()> = Mutex::new(());

fn ready() -> Option<String> {
    let brokers = lk_engines::log::kafka::brokers_from_env().unwrap_or_else(|error| panic!("{error}"));
    let required = std::env::var("LK_SPARK_TESTS").is_ok_and(|value| value == "1");
    let installed = lk_harness::engine::external::spark::spark_home()
        .is_some_and(|home| home.join("venv/bin/spark-submit").is_file() && home.join("jars/.complete").is_file());
    match (brokers, installed) {
        (Some(brokers), true) => Some(brokers),
        (None, _) if !required => {
            eprintln!("LK_KAFKA_BROKERS is not set: skipping the Spark tests (`scripts/kafka up` starts a broker)");
            None
        }
        (Some(_), false) if !required => {
            eprintln!("Spark is not installed: skipping the Spark tests (`scripts/spark install` installs it)");
            None
        }
        (brokers, installed) => {
            panic!("LK_SPARK_TESTS=1 but the broker ({brokers:?}) or Spark (installed: {installed}) is missing")
        }
    }
}

/// Runs `lk run` with spark-kappa, one Spark job at a time; returns results.json.
fn run(brokers: &str, scenario: &Path, rate: &str, duration: &str, extra: &[&str]) -> serde_json::Value {
    let _one = SPARK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = tempfile::tempdir().unwrap();
    let extra: Vec<&str> = ["--spark-master", "local[2]"].into_iter().chain(extra.iter().copied()).collect();
    run_engine("spark-kappa", out.path(), brokers, scenario, rate, duration, &extra)
}

#[test]
fn a_short_run_is_exact_and_so_is_its_replay() {
    let Some(brokers) = ready() else { return };
    let results = run(&brokers, Path::new("scenarios/clean.toml"), "1000", "12s", &[]);
    let engine = &results["engines"]["spark-kappa"];
    assert_eq!(counts(engine), (0, 0, 0), "{}", engine["correctness"]);
    assert_eq!(engine["correctness"]["verdict"], "exactly-once held");
    assert_eq!(results["environment"]["log_backend"], "kafka", "an external engine's run is on Kafka");
    // Malformed records reached the engine and it dead-lettered exactly those.
    assert!(results["oracle"]["dead_lettered"].as_u64().unwrap() > 0, "the scenario has bad records");
    assert_eq!(engine["correctness"]["dead_letters_accounted"], true, "{}", engine["correctness"]);
    let external = &engine["external"];
    assert_eq!(external["unreadable_upserts"], 0, "{external}");
    assert_eq!(external["readers"].as_array().unwrap().len(), 6, "five queries and the dead letters: {external}");
    assert!(engine["latency_ms"]["count"].as_u64().unwrap() > 0, "visible latency was measured: {engine}");
    assert!(engine["window_latency"]["processing_ms"]["count"].as_u64().unwrap() > 0, "and window latency");
    let reprocess = &engine["reprocess"];
    assert_eq!(reprocess["correct"], true, "the replay into fresh state is exact: {reprocess}");
    assert!(reprocess["events"].as_u64().unwrap() > 10_000, "{reprocess}");
    // The views are written like every engine's, for DuckDB or pandas.
    assert!(engine["throughput_eps"].as_f64().unwrap() > 0.0);
}

/// Three crash faults aimed at spark-kappa, a few seconds apart: each is fired once the engine
/// has restarted from the last.
const KILLS: &str = r#"
[[faults]]
kind = "crash"
engine = "spark-kappa"
at = "3s"

[[faults]]
kind = "crash"
engine = "spark-kappa"
at = "5s"

[[faults]]
kind = "crash"
engine = "spark-kappa"
at = "7s"
"#;

#[test]
fn three_sigkills_of_the_spark_driver_leave_it_exact() {
    let Some(brokers) = ready() else { return };
    let folder = tempfile::tempdir().unwrap();
    let scenario = scenario_with(folder.path(), "scenarios/clean.toml", KILLS);
    let results = run(&brokers, &scenario, "1000", "12s", &["--no-reprocess"]);
    let engine = &results["engines"]["spark-kappa"];
    assert_eq!(engine["faults"]["crashes"], 3, "three SIGKILLs: {}", engine["faults"]);
    assert_eq!(engine["external"]["restart_seconds"].as_array().unwrap().len(), 3, "{}", engine["external"]);
    assert_eq!(
        counts(engine),
        (0, 0, 0),
        "checkpointed offsets and state, and idempotent upserts: {}",
        engine["correctness"]
    );
    assert_eq!(engine["correctness"]["dead_letters_accounted"], true, "{}", engine["correctness"]);
}

/// A crash once the job has written its first micro-batches (they take seconds here), after
/// output: lk kills it once every query that had written has written again, so the sink has
/// added a batch to its totals that the restarted job adds again.
const LATE_KILL: &str = r#"
[[faults]]
kind = "crash"
engine = "spark-kappa"
at = "30s"
point = "after-output"
"#;

#[test]
fn a_sink_that_is_not_idempotent_is_caught_as_duplicates() {
    let Some(brokers) = ready() else { return };
    let folder = tempfile::tempdir().unwrap();
    let scenario = scenario_with(folder.path(), "scenarios/clean.toml", LATE_KILL);
    let results = run(&brokers, &scenario, "1000", "30s", &["--no-reprocess", "--test-spark-non-idempotent-sink"]);
    let engine = &results["engines"]["spark-kappa"];
    assert_eq!(engine["faults"]["crashes"], 1, "{}", engine["faults"]);
    let demand = &engine["correctness"]["per_query"]["q3_zone_demand"];
    assert!(
        demand["duplicated"].as_u64().unwrap() > 0,
        "the replays were counted twice and the checker saw it: {demand}"
    );
    assert_ne!(engine["correctness"]["verdict"], "exactly-once held", "{}", engine["correctness"]);
    assert!(!demand["events"].as_array().unwrap().is_empty(), "the checker names the duplicated events: {demand}");
}

#[test]
fn sparks_late_drops_are_classified_late_by_its_watermarks_and_none_as_lost() {
    let Some(brokers) = ready() else { return };
    let results = run(&brokers, Path::new("tests/scenarios/spark-late.toml"), "1000", "25s", &["--no-reprocess"]);
    let engine = &results["engines"]["spark-kappa"];
    let late: u64 =
        engine["external"]["late_by_its_rule"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(late > 0, "offline phones' events arrive past Spark's watermark and are dropped: {}", engine["external"]);
    assert_eq!(engine["correctness"]["late_dropped"].as_u64(), Some(late));
    assert_eq!(
        counts(engine),
        (0, 0, 0),
        "every drop is late by Spark's own rule, none lost: {}",
        engine["correctness"]
    );
    assert!(
        engine["correctness"]["windowed_completeness"].as_f64().unwrap() < 1.0,
        "against every event, the drops cost completeness: {}",
        engine["correctness"]
    );
}
