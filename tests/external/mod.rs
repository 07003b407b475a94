//! What the tests of engines that are not lk's own share: running `lk run` with one of them, a
//! scenario with faults appended, and a judged engine's counts.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `lk run SCENARIO --engine ENGINE` on `brokers` into `out`, with `extra` arguments; fails
/// with lk's output and the last lines of the engine's log unless it succeeds; returns
/// results.json.
pub fn run_engine(
    engine: &str,
    out: &Path,
    brokers: &str,
    scenario: &Path,
    rate: &str,
    duration: &str,
    extra: &[&str],
) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .arg("run")
        .arg(scenario)
        .args(["--engine", engine, "--brokers", brokers, "--rate", rate, "--duration", duration, "--out"])
        .arg(out)
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let engine_log = std::fs::read_to_string(out.join(format!("engines/{engine}-v1/engine.log"))).unwrap_or_default();
    let tail: Vec<&str> = engine_log.lines().rev().take(40).collect();
    assert!(output.status.success(), "{stdout}\n{stderr}\nthe engine's log, last lines first:\n{}", tail.join("\n"));
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// A copy of `scenario` with `extra` appended, in `folder`.
pub fn scenario_with(folder: &Path, scenario: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(scenario)).unwrap();
    let path = folder.join(Path::new(scenario).file_name().unwrap());
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// A judged engine's lost and duplicated contributions and mismatched windows.
pub fn counts(engine: &serde_json::Value) -> (u64, u64, u64) {
    let correctness = &engine["correctness"];
    (
        correctness["lost"].as_u64().unwrap(),
        correctness["duplicated"].as_u64().unwrap(),
        correctness["mismatched_windows"].as_u64().unwrap(),
    )
}
