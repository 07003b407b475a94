//! `lk run --log kafka` end to end against a real broker: the same scenario and seed give
//! byte-identical views on Kafka (Kappa through its transactional sink) and on the embedded log
//! (Kappa's direct sink), and exactly-once holds on Kafka, with crashes too.
//!
//! The broker comes from `LK_KAFKA_BROKERS` (`.ci/run` starts one with `scripts/kafka up`).
//! Without it these tests say so and pass: the default `cargo test` needs no Java.

use std::path::Path;
use std::process::Command;

fn brokers() -> Option<String> {
    let brokers = lk_engines::kafka::brokers_from_env().unwrap_or_else(|error| panic!("{error}"));
    if brokers.is_none() {
        eprintln!("LK_KAFKA_BROKERS is not set: skipping the Kafka run tests (`scripts/kafka up` starts a broker)");
    }
    brokers
}

fn lk(args: &[&str], out: &Path) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lk {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

fn assert_exactly_once(results: &serde_json::Value) {
    for engine in ["kappa", "lambda"] {
        let correctness = &results["engines"][engine]["correctness"];
        assert_eq!(correctness["lost"], 0, "{engine}: {correctness}");
        assert_eq!(correctness["duplicated"], 0, "{engine}: {correctness}");
        assert_eq!(correctness["mismatched_windows"], 0, "{engine}: {correctness}");
    }
}

#[test]
fn kafka_and_the_embedded_log_serve_the_same_views() {
    let Some(brokers) = brokers() else { return };
    let (kafka, embedded) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["run", "scenarios/quickstart.toml", "--duration", "3s", "--no-reprocess"];
    let on_kafka = lk(&[&args[..], &["--log", "kafka", "--brokers", &brokers]].concat(), kafka.path());
    let on_embedded = lk(&args, embedded.path());
    assert_eq!(on_kafka["environment"]["log_backend"], "kafka");
    assert_eq!(on_embedded["environment"]["log_backend"], "embedded");
    assert_exactly_once(&on_kafka);
    assert_eq!(on_kafka["generator"]["records_appended"], on_embedded["generator"]["records_appended"]);
    let mut compared = 0;
    for engine in ["kappa", "lambda", "oracle"] {
        for entry in std::fs::read_dir(embedded.path().join("views").join(engine)).unwrap() {
            let path = entry.unwrap().path();
            let other = kafka.path().join("views").join(engine).join(path.file_name().unwrap());
            assert!(std::fs::read(&path).unwrap() == std::fs::read(&other).unwrap(), "{} differs", other.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 15, "five queries for each of kappa, lambda and the oracle");
}

#[test]
fn exactly_once_holds_on_kafka_through_crashes() {
    let Some(brokers) = brokers() else { return };
    let out = tempfile::tempdir().unwrap();
    let results = lk(&["run", "scenarios/crash-recovery.toml", "--no-reprocess", "--brokers", &brokers], out.path());
    assert_eq!(results["environment"]["log_backend"], "kafka");
    assert_eq!(
        results["environment"]["kappa_sink"], "transactional",
        "on Kafka, exactly-once Kappa is consume-transform-produce in transactions"
    );
    assert_eq!(results["environment"]["lambda_sink"], "transactional", "and so is Lambda's speed layer");
    assert_exactly_once(&results);
    let speed = &results["engines"]["lambda"]["lambda"]["before_final_batch"];
    assert_eq!(
        (speed["duplicated"].as_u64(), speed["mismatched_windows"].as_u64()),
        (Some(0), Some(0)),
        "the segments materialised from the speed layer's topic double-count nothing: {speed}"
    );
    for engine in ["kappa", "lambda"] {
        let faults = &results["engines"][engine]["faults"];
        assert_eq!(faults["crashes"], 6, "{engine} crashed six times, as the scenario says: {faults}");
        assert!(faults["records_replayed"].as_u64().unwrap() > 0, "{engine} replayed after its crashes: {faults}");
    }
}
