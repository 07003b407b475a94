//! `lk simulate` end to end: the binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lk(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(arguments)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the lk binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temporary(name: &str) -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(name);
    (directory, path)
}

#[test]
fn quickstart_exports_its_summary() {
    let (_directory, summary) = temporary("summary.json");
    let output = lk(&[
        "simulate",
        "scenarios/quickstart.toml",
        "--rate",
        "max",
        "--events",
        "100000",
        "--export-json",
        summary.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("digest"), "{}", stdout(&output));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    for field in
        ["events", "seconds", "events_per_second", "digest", "max_schedule_lag_ms", "late", "duplicates", "malformed"]
    {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(json["events"], 100_000);
    assert_eq!(json["digest"].as_str().unwrap().len(), 32);
}

#[test]
fn binary_output_is_64_bytes_an_event_and_the_digest_ignores_threads_and_format() {
    let (_directory, out) = temporary("events.bin");
    let digest = |arguments: &[&str]| {
        let output = lk(arguments);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).lines().find(|line| line.starts_with("digest")).unwrap().to_owned()
    };
    let base = ["simulate", "scenarios/late-storm.toml", "--rate", "max", "--events", "50000"];
    let one = digest(&[&base[..], &["--format", "bin", "--out", out.to_str().unwrap()]].concat());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 50_000 * 64);
    assert_eq!(digest(&[&base[..], &["--threads", "2", "--format", "json"]].concat()), one);
}

#[test]
fn events_on_stdout_keep_the_summary_on_stderr() {
    let output = lk(&["simulate", "scenarios/quickstart.toml", "--rate", "max", "--events", "1000", "--out", "-"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1000);
    assert!(text.lines().all(|line| line.starts_with("{\"event_id\":")));
    assert!(stderr(&output).contains("digest"));
}

#[test]
fn a_paced_run_keeps_its_rate() {
    let output = lk(&["simulate", "scenarios/quickstart.toml", "--rate", "20000", "--duration", "1s"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("events                 20000"), "{text}");
    let seconds: f64 = text.lines().find(|line| line.starts_with("seconds")).unwrap()[23..].trim().parse().unwrap();
    assert!(seconds >= 0.99, "a paced 1 s run took {seconds} s");
}

#[test]
fn bad_scenarios_fail_with_the_file_and_field() {
    let (_directory, path) = temporary("bad.toml");
    std::fs::write(&path, "[lateness]\ndistribution = \"pareto\"\nshape = 0\n").unwrap();
    let output = lk(&["simulate", path.to_str().unwrap(), "--events", "10"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("bad.toml: field `lateness.shape`: must be a number greater than 0"), "{message}");
    assert!(!message.contains("panicked"), "{message}");

    let output = lk(&["simulate", "scenarios/no-such-file.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("no-such-file.toml: cannot read the scenario file"), "{}", stderr(&output));

    let output = lk(&["simulate", "scenarios/quickstart.toml", "--rate", "fast"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("invalid value 'fast' for '--rate")
            && stderr(&output).contains("takes events per second"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn every_shipped_scenario_is_valid() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut count = 0;
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            let output = lk(&["simulate", path.to_str().unwrap(), "--rate", "max", "--events", "20000"]);
            assert!(output.status.success(), "{}: {}", path.display(), stderr(&output));
            count += 1;
        }
    }
    assert!(count >= 4);
}
