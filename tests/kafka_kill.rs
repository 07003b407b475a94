//! Exactly-once on Kafka against real process crashes: an engine (`lk engine kappa` or
//! `lk engine lambda`) runs as a child process and is killed with SIGKILL at seeded times (no
//! flag, no cleanup: an open transaction and half-written files are left behind), then started
//! again, until one run completes. `lk engine verify` then checks what it wrote: Kappa's views as
//! a read-committed consumer of its output topic reads them; Lambda's master dataset row by row,
//! its batch views and its speed layer's committed segments, each against the oracle.
//! And the check must be able to fail: the same crashes with what a weaker setting allows (a
//! Kappa state store that is not durable; Lambda at-least-once) must be caught.
//!
//! Needs `LK_KAFKA_BROKERS` (`.ci/run` starts a broker); says so and passes without it.
//! `LK_KILLS=n` kills each exactly-once engine n times instead of 4 (docs/benchmarks.md records a
//! run with 20).

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks time themselves with the wall clock")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn brokers() -> Option<String> {
    let brokers = lk_engines::log::kafka::brokers_from_env().unwrap_or_else(|error| panic!("{error}"));
    if brokers.is_none() {
        eprintln!("LK_KAFKA_BROKERS is not set: skipping the SIGKILL tests (`scripts/kafka up` starts a broker)");
    }
    brokers
}

const SCENARIO: &str = "scenarios/crash-recovery.toml";
/// 1.5 M records: a run of the engine takes about 5 s here (its commits no longer hold it up:
/// with 600 k it finished before the kills), so the kills land while it works.
const DURATION_SECONDS: u64 = 15;

/// One engine under test: its step, its scenario file and any further arguments (the same for
/// every step).
struct Setup {
    step: &'static str,
    scenario: PathBuf,
    /// The engine step's own flags.
    engine_args: Vec<&'static str>,
    /// The verify step's own flags.
    verify_args: Vec<&'static str>,
    /// How much input the run produces (and each engine run reads).
    duration: String,
}

impl Setup {
    fn kappa(store: &'static str) -> Self {
        Setup {
            step: "kappa",
            scenario: PathBuf::from(SCENARIO),
            engine_args: vec!["--state-store", store],
            verify_args: vec![],
            // Kappa resumes from its last commit and reads fast: more kills need more input, or
            // the later runs finish before their kill.
            duration: format!("{}s", DURATION_SECONDS * u64::from(kills().max(4)) / 4),
        }
    }

    /// Lambda on crash-recovery with a batch run every `batch_interval` of event time. 4 s
    /// gives an epoch per 400 k records, so the kills land in ingests, seals and batch runs;
    /// the scenario's 60 s gives one epoch, sealed at the end, so every master dataset commit
    /// before it is one a restart under at-least-once writes again.
    fn lambda(folder: &Path, guarantee: &'static str, batch_interval: &str) -> Self {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCENARIO)).unwrap();
        assert!(text.contains("batch_interval = \"60s\""), "{SCENARIO} changed: update this test");
        let scenario = folder.join("crash-recovery-lambda.toml");
        let interval = format!("batch_interval = \"{batch_interval}\"");
        std::fs::write(&scenario, text.replace("batch_interval = \"60s\"", &interval)).unwrap();
        Setup {
            step: "lambda",
            scenario,
            engine_args: vec!["--guarantee", guarantee],
            verify_args: vec!["--guarantee", guarantee, "--engine", "lambda"],
            duration: format!("{DURATION_SECONDS}s"),
        }
    }

    fn command(&self, step: &str, brokers: &str, namespace: &str, out: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lk"));
        command
            .args(["engine", step])
            .arg(&self.scenario)
            .args(["--duration", &self.duration, "--brokers", brokers, "--namespace", namespace])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Each step takes only its own flags: produce none, the engine its folder and settings,
        // verify what it must be told of the engine.
        match step {
            "produce" => {}
            "verify" => {
                command.args(&self.verify_args).arg("--out").arg(out);
            }
            _ => {
                command.args(&self.engine_args).arg("--out").arg(out);
            }
        }
        command
    }

    /// How far the engine has committed: what a restarted run resumes from. Kappa's group
    /// offsets on the input topic; Lambda's master dataset commits.
    fn progress(&self, brokers: &str, namespace: &str, out: &Path) -> u64 {
        match self.step {
            "kappa" => committed(brokers, namespace),
            _ => manifest(out).iter().filter(|line| line.starts_with("{\"commit\"")).count() as u64,
        }
    }

    /// Whether a kill now strands work, given the progress before the run started: for Kappa a
    /// commit since (its state dies with the process); for Lambda a commit since that sealed
    /// nothing (the group's offsets move only at seals, so a restart writes it again).
    fn at_risk(&self, brokers: &str, namespace: &str, out: &Path, before: u64) -> bool {
        if self.progress(brokers, namespace, out) <= before {
            return false;
        }
        match self.step {
            "kappa" => true,
            _ => {
                let lines = manifest(out);
                let last_commit = lines.iter().rposition(|line| line.starts_with("{\"commit\""));
                last_commit.is_some_and(|at| at == 0 || !lines[at - 1].starts_with("{\"seal\""))
            }
        }
    }
}

/// The lines of Lambda's master dataset manifest under `out`.
fn manifest(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("master").join("_manifest.jsonl"))
        .map_or_else(|_| Vec::new(), |text| text.lines().map(str::to_owned).collect())
}

fn succeed(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The records the engine's group has committed on the input topic so far (what a restarted
/// run will skip).
fn committed(brokers: &str, namespace: &str) -> u64 {
    use lk_engines::log::Log;
    let Ok(log) =
        lk_engines::log::kafka::KafkaLog::connect(lk_engines::log::kafka::KafkaConfig::new(brokers, namespace))
    else {
        return 0;
    };
    let partitions = log.partitions("ride-events").unwrap_or(0);
    (0..partitions)
        .map(|partition| log.committed_offset("kappa", "ride-events", partition).ok().flatten().unwrap_or(0))
        .sum()
}

/// When to kill a run: a seeded moment after its start, or once a kill strands committed work
/// (see [`Setup::at_risk`]).
#[derive(Clone, Copy)]
enum Kill {
    Within(u64, u64),
    AfterACommit,
}

/// Produces the stream, then runs the engine `kills` times and kills each run as `kill` says,
/// then runs it to the end. Returns the verify step's output and how many runs were killed
/// while still working.
fn crash_and_verify(brokers: &str, setup: &Setup, out: &Path, seed: u64, kills: u32, kill: Kill) -> (Output, u32) {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let namespace = format!("lk-kill-{}-{seed}-{millis}", setup.step);
    succeed(setup.command("produce", brokers, &namespace, out));
    let mut state = seed;
    let mut killed_working = 0;
    for _ in 0..kills {
        // SplitMix64 steps: a kill in the window after the start.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let z = z ^ (z >> 31);
        let before = setup.progress(brokers, &namespace, out);
        let mut child = setup.command(setup.step, brokers, &namespace, out).spawn().unwrap();
        let started = Instant::now();
        match kill {
            Kill::Within(from, to) => {
                let after = Duration::from_millis(from + z % (to - from));
                while started.elapsed() < after && child.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Kill::AfterACommit => {
                while !setup.at_risk(brokers, &namespace, out, before)
                    && started.elapsed() < Duration::from_secs(60)
                    && child.try_wait().unwrap().is_none()
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if setup.step == "kappa" {
                    // A seeded few more milliseconds, so the kill also strands uncommitted work.
                    std::thread::sleep(Duration::from_millis(z % 300));
                }
            }
        }
        if child.try_wait().unwrap().is_none() {
            killed_working += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    eprintln!("{} {:?}: {killed_working} of {kills} kills hit a working engine", setup.step, setup.engine_args);
    succeed(setup.command(setup.step, brokers, &namespace, out));
    let verified = setup.command("verify", brokers, &namespace, out).output().unwrap();
    let _ = lk_engines::log::kafka::delete_namespace(brokers, &namespace, Duration::from_secs(10));
    (verified, killed_working)
}

/// SIGKILLs per exactly-once engine: 4, or `LK_KILLS`.
fn kills() -> u32 {
    std::env::var("LK_KILLS").ok().and_then(|text| text.parse().ok()).unwrap_or(4)
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap_or_else(|error| {
        panic!("verify printed no JSON ({error}):\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

#[test]
fn kappa_on_kafka_is_exactly_once_through_sigkills() {
    let Some(brokers) = brokers() else { return };
    let out = tempfile::tempdir().unwrap();
    let (verified, killed_working) =
        crash_and_verify(&brokers, &Setup::kappa("checkpointed"), out.path(), 7, kills(), Kill::Within(1500, 4000));
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&verified.stderr));
    let correctness = json(&verified);
    assert_eq!((correctness["lost"].as_u64(), correctness["duplicated"].as_u64()), (Some(0), Some(0)), "{correctness}");
    assert!(correctness["expected"].as_u64().unwrap() > 100_000, "{correctness}");
    assert!(killed_working >= kills() / 2, "only {killed_working} of {} kills hit a working engine", kills());
}

#[test]
fn the_check_catches_a_state_store_that_is_not_durable() {
    let Some(brokers) = brokers() else { return };
    // The group's committed offsets say the records before them were processed, but the state
    // that counted them died with the process. Killed once it has committed a transaction (read
    // from the broker), not at a guessed moment: a run killed before its first commit loses
    // nothing, and on a busy machine that first commit can come late.
    let out = tempfile::tempdir().unwrap();
    let (verified, killed_working) =
        crash_and_verify(&brokers, &Setup::kappa("memory"), out.path(), 11, 2, Kill::AfterACommit);
    assert!(killed_working >= 1, "no kill hit a working engine");
    assert!(
        !verified.status.success(),
        "verify passed although state was lost:\n{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let correctness = json(&verified);
    assert!(correctness["lost"].as_u64().unwrap() > 0 || correctness["mismatched_windows"].as_u64().unwrap() > 0);
}

#[test]
fn lambda_on_kafka_is_exactly_once_through_sigkills() {
    let Some(brokers) = brokers() else { return };
    // The scenario file beside the engine's folder, not in it: lk claims only folders it made.
    let folder = tempfile::tempdir().unwrap();
    let setup = Setup::lambda(folder.path(), "exactly-once", "4s");
    let out = folder.path().join("engine");
    let (verified, killed_working) = crash_and_verify(&brokers, &setup, &out, 5, kills(), Kill::Within(700, 3500));
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&verified.stderr));
    let checked = json(&verified);
    let master = &checked["master"];
    assert_eq!((master["lost"].as_u64(), master["duplicated"].as_u64()), (Some(0), Some(0)), "{master}");
    assert!(master["expected"].as_u64().unwrap() > 100_000, "{master}");
    for layer in ["batch", "speed"] {
        let correctness = &checked[layer];
        assert_eq!(
            (
                correctness["lost"].as_u64(),
                correctness["duplicated"].as_u64(),
                correctness["mismatched_windows"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{layer}: {correctness}"
        );
    }
    assert!(killed_working >= kills() / 2, "only {killed_working} of {} kills hit a working engine", kills());
}

#[test]
fn the_check_catches_lambda_at_least_once() {
    let Some(brokers) = brokers() else { return };
    // At-least-once commits the group's offsets only at seals: a run killed after a master
    // dataset commit and restarted writes those records again. The batch layer then counts
    // every row. Killed once a commit is in the manifest, so there is something to write twice.
    // The scenario file beside the engine's folder, not in it: lk claims only folders it made.
    let folder = tempfile::tempdir().unwrap();
    // Three times the input of the other tests: on a loaded machine a run of 15 s of input
    // could finish its commits and its seal between two looks at its manifest.
    let setup = Setup { duration: "45s".to_owned(), ..Setup::lambda(folder.path(), "at-least-once", "60s") };
    let out = folder.path().join("engine");
    let (verified, killed_working) = crash_and_verify(&brokers, &setup, &out, 13, 2, Kill::AfterACommit);
    let lines = manifest(&out);
    let count = |prefix: &str| lines.iter().filter(|line| line.starts_with(prefix)).count();
    assert!(
        killed_working >= 1,
        "no kill hit a working engine (the manifest ends with {} commits and {} seals)",
        count("{\"commit\""),
        count("{\"seal\"")
    );
    assert!(
        !verified.status.success(),
        "verify passed although records were written twice:\n{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let checked = json(&verified);
    assert!(checked["master"]["duplicated"].as_u64().unwrap() > 0, "{checked}");
    assert!(checked["batch"]["duplicated"].as_u64().unwrap() > 0, "{checked}");
    assert!(checked["speed"].is_null(), "at-least-once has no transactional sink to check: {checked}");
}
