//! The broker itself dies: `lk run` over Kafka while `scripts/kafka restart` SIGKILLs the broker
//! and starts it again on the same data. The producer and both engines wait and retry, exactly-
//! once holds in both, and results.json shows the outage as a log stall that lk did not inject.
//!
//! Needs the broker of `scripts/kafka up` (`.ci/run` starts it) and `LK_KAFKA_BROKERS`; says so
//! and passes without them. It restarts that broker, so it is the only test of its binary.

#![allow(clippy::disallowed_methods, reason = "tests time themselves with the wall clock")]

use std::process::Command;
use std::time::Duration;

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

#[test]
fn exactly_once_holds_through_a_broker_killed_and_restarted_mid_run() {
    let Ok(brokers) = std::env::var("LK_KAFKA_BROKERS") else {
        eprintln!("LK_KAFKA_BROKERS is not set: skipping the broker restart test (`scripts/kafka up` starts a broker)");
        return;
    };
    let ours = Command::new("scripts/kafka").arg("status").current_dir(root()).output().unwrap();
    if !ours.status.success() {
        eprintln!("the broker at {brokers} is not scripts/kafka's: skipping the broker restart test (it restarts it)");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(["run", "scenarios/crash-recovery.toml", "--rate", "40000", "--duration", "30s", "--no-reprocess"])
        .args(["--no-profile", "--brokers", &brokers, "--out"])
        .arg(&out)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Well inside the input's 30 s, after the run has set up its topics.
    std::thread::sleep(Duration::from_secs(10));
    let restarted =
        Command::new("scripts/kafka").args(["restart", "--after", "1"]).current_dir(root()).output().unwrap();
    assert!(
        restarted.status.success(),
        "scripts/kafka restart failed:\n{}{}",
        String::from_utf8_lossy(&restarted.stdout),
        String::from_utf8_lossy(&restarted.stderr)
    );
    let output = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    for engine in ["kappa", "lambda"] {
        let correctness = &results["engines"][engine]["correctness"];
        assert_eq!(correctness["verdict"], "exactly-once held", "{engine}: {correctness}");
        assert_eq!(
            (&correctness["lost"], &correctness["duplicated"], &correctness["mismatched_windows"]),
            (&serde_json::json!(0), &serde_json::json!(0), &serde_json::json!(0)),
            "{engine}: {correctness}"
        );
    }
    let stalls: Vec<&serde_json::Value> =
        results["faults"].as_array().unwrap().iter().filter(|fault| fault["kind"] == "log stall").collect();
    assert!(!stalls.is_empty(), "the broker's absence is not in the faults: {}", results["faults"]);
    assert!(stalls.iter().any(|stall| stall["duration_seconds"].as_f64().unwrap() >= 1.0), "{stalls:?}");
    assert_eq!(results["generator"]["events"], 1_200_000);
}
