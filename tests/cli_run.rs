//! `lk run` end to end on the quickstart: the README's main command.

use std::process::Command;

#[test]
fn quickstart_runs_and_writes_results() {
    let directory = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(["run", "scenarios/quickstart.toml", "--duration", "3s", "--out"])
        .arg(directory.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("kappa"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["schema_version"], 1);
    assert_eq!(results["scenario"]["name"], "quickstart");
    assert_eq!(results["generator"]["events"], 300_000);
    let kappa = &results["engines"]["kappa"];
    for field in ["lost", "duplicated", "mismatched_windows"] {
        assert_eq!(kappa["correctness"][field], 0, "{field}: {}", kappa["correctness"]);
    }
    for field in ["p50", "p90", "p99", "p999", "max"] {
        assert!(kappa["latency_ms"][field].as_f64().unwrap() > 0.0, "latency {field} in {}", kappa["latency_ms"]);
    }
    assert!(kappa["latency_ms"]["histogram"].as_str().unwrap().len() > 20);
    assert!(kappa["throughput_eps"].as_f64().unwrap() > 50_000.0);
    assert!(kappa["reprocess"]["correct"].as_bool().unwrap());
    assert!(kappa["cost"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(kappa["cost"]["stored_bytes"].as_u64().unwrap() > 300_000 * 64);
}

#[test]
fn a_scenario_without_a_duration_needs_one() {
    let directory = tempfile::tempdir().unwrap();
    let scenario = directory.path().join("endless.toml");
    std::fs::write(&scenario, "[run]\nrate_eps = 1000\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(["run", scenario.to_str().unwrap(), "--out"])
        .arg(directory.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no run.duration; pass --duration"));
}
