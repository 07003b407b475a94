//! `lk torture` from the command line: its exit codes, the replay it prints for a failed run (and
//! that the replay runs the same schedule), and what it refuses before running anything.

use std::process::Command;

/// `lk torture ARGS` from the repository's root.
fn torture(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .arg("torture")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Short runs of the crash scenario at a rate a loaded machine keeps up with.
const SHORT: [&str; 5] = ["scenarios/crash-recovery.toml", "--rate", "40000", "--duration", "2s"];

#[test]
fn a_broken_recovery_exits_1_with_a_replay_that_runs_the_same_schedule_and_a_sound_one_exits_0() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("broken");
    let out = out.to_str().unwrap();
    let mut args = SHORT.to_vec();
    args.extend(["--engine", "kappa", "--runs", "2", "--seed", "3", "--out", out, "--test-kappa-memory-state"]);
    let (code, stdout, stderr) = torture(&args);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("broke exactly-once: "), "{stdout}");
    let replay =
        stdout.lines().find_map(|line| line.trim().strip_prefix("replay:  ")).expect("a replay line").to_owned();
    assert!(
        replay.starts_with("lk torture scenarios/crash-recovery.toml --rate 40000 --duration 2s --engine kappa"),
        "{replay}"
    );
    assert!(
        replay.contains("--seed 3") && replay.contains(&format!("--out {out}/replay-")) && !replay.contains("--runs"),
        "{replay}"
    );
    let failed_schedule = stdout.lines().find(|line| line.starts_with("FAILED run")).unwrap().to_owned();
    // The replay, as printed (the words hold no quotes here).
    let words: Vec<&str> = replay.split_whitespace().skip(2).collect();
    let (code, again, stderr) = torture(&words);
    assert_eq!(code, 1, "{again}\n{stderr}");
    let replayed = again.lines().find(|line| line.starts_with("FAILED run")).expect("the replay fails too");
    let schedule = |line: &str| line.split_once('(').map(|(_, rest)| rest.split_once(')').unwrap().0.to_owned());
    assert_eq!(schedule(replayed), schedule(&failed_schedule), "the same faults at the same times");
    assert!(again.contains("torture of crash-recovery: 1 runs"), "{again}");

    let sound = directory.path().join("sound");
    let mut args = SHORT.to_vec();
    args.extend(["--runs", "1", "--out", sound.to_str().unwrap()]);
    let (code, stdout, stderr) = torture(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("; 0 failed"), "{stdout}");
    assert!(sound.join("torture.json").is_file());
}

#[test]
fn engines_that_are_not_lks_own_and_bad_options_are_refused_before_anything_runs() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("t");
    let out = out.to_str().unwrap();
    let (code, _, stderr) = torture(&["scenarios/crash-recovery.toml", "--engine", "kstreams", "--out", out]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("kstreams is a process of its own") && stderr.contains("lk engine"), "{stderr}");
    let (code, _, stderr) = torture(&["scenarios/crash-recovery.toml", "--runs", "0", "--out", out]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = torture(&["scenarios/no-such.toml", "--out", out]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no-such.toml"), "{stderr}");
    assert!(!std::path::Path::new(out).exists(), "nothing ran");
}
