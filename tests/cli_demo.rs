//! `lk demo` end to end without a terminal (`--no-tui`): what it prints, and that its scripted
//! keys act through the run's own machinery (a crash key is a crash in results.json; the end
//! key ends the input early). The dashboard's drawing is tested on ratatui's test backend in
//! src/demo.rs.

use std::process::Command;

fn demo(args: &[&str], out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lk"))
        .arg("demo")
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn scripted_keys_crash_kappa_and_end_the_input_and_the_lines_say_so() {
    let directory = tempfile::tempdir().unwrap();
    let output = demo(
        &[
            "scenarios/clean.toml",
            "--no-tui",
            "--script",
            "3s:k,6s:e",
            "--rate",
            "20000",
            "--duration",
            "20s",
            "--no-reprocess",
        ],
        directory.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "the stream starts",
        "you crashed Kappa",
        "Kappa is back after its crash",
        "you ended the input",
        "the input has ended",
        "[generating] kappa",
        "results:",
    ] {
        assert!(stdout.contains(expected), "{expected:?} is not in the output:\n{stdout}");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("results.json")).unwrap()).unwrap();
    let (kappa, lambda) = (&results["engines"]["kappa"], &results["engines"]["lambda"]);
    assert_eq!(kappa["faults"]["crashes"], 1, "the k key crashed Kappa: {}", kappa["faults"]);
    assert_eq!(lambda["faults"]["crashes"], 0, "and only Kappa: {}", lambda["faults"]);
    assert_eq!(kappa["correctness"]["verdict"], "exactly-once held", "{}", kappa["correctness"]);
    // The e key at 6 s ended a 20 s input early.
    let events = results["generator"]["events"].as_u64().unwrap();
    assert!(events < 20_000 * 12, "the input ended early: {events} events");
    assert!(events > 20_000 * 4, "{events} events");
}

#[test]
fn a_bad_script_or_run_option_is_refused_before_anything_runs() {
    let directory = tempfile::tempdir().unwrap();
    let output = demo(&["--no-tui", "--script", "3s:x", "scenarios/clean.toml"], directory.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a key the demo acts on"), "{stderr}");
    let output = demo(&["scenarios/clean.toml", "--no-tui", "--rate", "fast"], directory.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rate"), "{stderr}");
    assert!(!directory.path().join("results.json").exists());
}
