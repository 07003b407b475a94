//! `lk demo` end to end without a terminal (`--no-tui`): what it prints, and that its scripted
//! keys act through the run's own machinery (a crash key is a crash in results.json; the end
//! key ends the input early; the late-burst key makes Kappa drop requests that Lambda's batch
//! runs count). The dashboard's drawing is tested on ratatui's test backend in src/demo.rs.

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
            "3s:k,4s:r,6s:e",
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
        "you started a reprocessing race",
        "race 1: Kappa's replay went through",
        "race 1: Lambda's batch recompute went through",
        "reprocessed everything",
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
fn a_late_burst_lowers_kappas_completeness_and_lambdas_batch_runs_put_it_back_and_an_overload_multiplies_the_input() {
    // Every event of this scenario is on time: without the burst, neither engine drops any.
    let directory = tempfile::tempdir().unwrap();
    let output = demo(
        &["tests/scenarios/punctual.toml", "--no-tui", "--script", "3s:b,5s:o", "--no-reprocess"],
        directory.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "you silenced 30% of the phones",
        "you multiplied the input by 5 for 3 s (100000/s)",
        "Kappa's completeness so far fell",
        "put back",
        "[done] kappa",
    ] {
        assert!(stdout.contains(expected), "{expected:?} is not in the output:\n{stdout}");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("results.json")).unwrap()).unwrap();
    let faults = results["faults"].as_array().unwrap();
    assert!(
        faults.iter().any(|fault| fault["kind"] == "late-burst" && fault["at_seconds"].as_f64().unwrap() > 3.0),
        "the b key is a late-burst fault in results.json: {faults:?}"
    );
    let overload = faults.iter().find(|fault| fault["kind"] == "overload").expect("the o key is an overload fault");
    assert!(overload["at_seconds"].as_f64().unwrap() > 5.0, "{overload}");
    // 12 s at 20k/s, and 3 s of them at five times that.
    let events = results["generator"]["events"].as_u64().unwrap();
    assert!((20_000 * 12 + 200_000..20_000 * 12 + 280_000).contains(&events), "{events} events");
    let (kappa, lambda) = (&results["engines"]["kappa"]["correctness"], &results["engines"]["lambda"]["correctness"]);
    assert!(kappa["late_dropped"].as_u64().unwrap() > 0, "Kappa's watermark dropped the burst's requests: {kappa}");
    assert!(kappa["windowed_completeness"].as_f64().unwrap() < 1.0, "{kappa}");
    assert_eq!(lambda["windowed_completeness"].as_f64(), Some(1.0), "Lambda's batch runs counted them: {lambda}");
    for correctness in [kappa, lambda] {
        assert_eq!(correctness["verdict"], "exactly-once held", "late is not lost: {correctness}");
    }
    // The last status line: Kappa's completeness so far is below 100%, Lambda's is 100%.
    let last = stdout.lines().find(|line| line.contains("[done] kappa")).unwrap();
    let (kappa, lambda) = last.split_once('|').unwrap();
    assert!(!kappa.ends_with("complete 100.00% "), "{last}");
    assert!(lambda.ends_with("complete 100.00%"), "{last}");
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
