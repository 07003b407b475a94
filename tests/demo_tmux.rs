//! `lk demo` in a real terminal: tmux runs it in a detached 100x30 pane, the test presses `k`
//! (crash Kappa) and an unknown key, captures the pane, and checks what a presenter would see;
//! then `q` leaves the dashboard while the run finishes, and results.json has the crash.
//!
//! Needs tmux (`scripts/install-optional tmux`); without it the test says so and passes, unless
//! `LK_TMUX_TESTS=1` (`.ci/run` sets it once it has installed tmux).

use std::process::Command;
use std::time::Duration;

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().unwrap()
}

fn pane(session: &str) -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-t", session, "-p"]).stdout).into_owned()
}

/// Waits until the pane shows `text` (up to `seconds`); returns the pane.
fn wait_for(session: &str, text: &str, seconds: u64) -> String {
    let mut screen = String::new();
    for _ in 0..seconds * 10 {
        screen = pane(session);
        if screen.contains(text) {
            return screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{text:?} did not appear in the pane within {seconds} s:\n{screen}");
}

#[test]
fn the_dashboard_draws_in_a_real_terminal_and_its_keys_act() {
    let required = std::env::var("LK_TMUX_TESTS").is_ok_and(|value| value == "1");
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(!required, "LK_TMUX_TESTS=1 but tmux is not installed");
        eprintln!("tmux is not installed: skipping the demo's terminal test (`scripts/install-optional tmux`)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let session = format!("lk-demo-test-{}", std::process::id());
    // The pane's command keeps it open after lk exits, so its last lines can be read.
    let command = format!(
        "{} demo scenarios/clean.toml --rate 20000 --duration 15s --no-reprocess --out {}/run 2> {}/stderr; \
         echo exit=$?; sleep 60",
        env!("CARGO_BIN_EXE_lk"),
        out.path().display(),
        out.path().display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        "-c",
        env!("CARGO_MANIFEST_DIR"),
        &command,
    ]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let cleanup = Session(session.clone());
    let screen = wait_for(&session, "generating", 30);
    for panel in [
        "lk demo: clean",
        "Kappa",
        "Lambda",
        "what users see",
        "what just happened",
        "k/l crash Kappa/Lambda",
        "delivered",
    ] {
        assert!(screen.contains(panel), "{panel:?} is not on the screen:\n{screen}");
    }
    // An unknown key does nothing; k crashes Kappa, and the dashboard says so.
    tmux(&["send-keys", "-t", &session, "x"]);
    tmux(&["send-keys", "-t", &session, "k"]);
    let screen = wait_for(&session, "Kappa is back after its crash", 20);
    assert!(screen.contains("you crashed Kappa"), "{screen}");
    assert!(!screen.contains("Lambda is back"), "x crashed nothing: {screen}");
    // b silences phones; p freezes the view and thaws it.
    tmux(&["send-keys", "-t", &session, "b"]);
    wait_for(&session, "you silenced 30% of the phones", 10);
    tmux(&["send-keys", "-t", &session, "p"]);
    wait_for(&session, "FROZEN", 10);
    tmux(&["send-keys", "-t", &session, "p"]);
    wait_for(&session, "the view is live again", 10);
    // q leaves the dashboard; the run finishes and exits 0.
    tmux(&["send-keys", "-t", &session, "q"]);
    let screen = wait_for(&session, "exit=", 60);
    assert!(
        screen.contains("exit=0"),
        "{screen}\n{}",
        std::fs::read_to_string(out.path().join("stderr")).unwrap_or_default()
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("run/results.json")).unwrap()).unwrap();
    assert_eq!(results["engines"]["kappa"]["faults"]["crashes"], 1, "{}", results["engines"]["kappa"]["faults"]);
    assert_eq!(results["engines"]["lambda"]["faults"]["crashes"], 0);
    drop(cleanup);
}

/// Kills the tmux session when dropped, whether the test passed or panicked.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.0]);
    }
}
