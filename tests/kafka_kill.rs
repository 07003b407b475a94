//! Exactly-once on Kafka against real process crashes: `lk engine kappa` runs as a child
//! process and is killed with SIGKILL at seeded times (no flag, no cleanup: an open transaction
//! and half-written files are left behind), then started again, until one run completes. The
//! views a read-committed consumer reads from its output topic must be exactly the oracle's.
//! And the check must be able to fail: the same crashes with a state store that is not durable
//! (`--state-store memory`: a restarted engine starts empty at the committed offsets) must be
//! caught.
//!
//! Needs `LK_KAFKA_BROKERS` (`.ci/run` starts a broker); says so and passes without it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn brokers() -> Option<String> {
    let brokers = lk_engines::kafka::brokers_from_env().unwrap_or_else(|error| panic!("{error}"));
    if brokers.is_none() {
        eprintln!("LK_KAFKA_BROKERS is not set: skipping the SIGKILL tests (`scripts/kafka up` starts a broker)");
    }
    brokers
}

const SCENARIO: &str = "scenarios/crash-recovery.toml";
/// 1.5 M records: a run of the engine takes about 5 s here (its commits no longer hold it up:
/// with 600 k it finished before the kills), so the kills land while it works.
const DURATION: &str = "15s";

fn engine(step: &str, brokers: &str, namespace: &str, out: &Path, store: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lk"));
    command
        .args(["engine", step, SCENARIO, "--duration", DURATION, "--brokers", brokers, "--namespace", namespace])
        .args(if step == "kappa" { vec!["--state-store", store] } else { vec![] })
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    command
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
    let Ok(log) = lk_engines::kafka::KafkaLog::connect(lk_engines::kafka::KafkaConfig::new(brokers, namespace)) else {
        return 0;
    };
    let partitions = log.partitions("ride-events").unwrap_or(0);
    (0..partitions)
        .map(|partition| log.committed_offset("kappa", "ride-events", partition).ok().flatten().unwrap_or(0))
        .sum()
}

/// When to kill a run: a seeded moment after its start, or (for a store that is not durable)
/// once its group has committed more than before the run started, so the kill strands state.
#[derive(Clone, Copy)]
enum Kill {
    Within(u64, u64),
    AfterACommit,
}

/// Produces the stream, then runs Kappa `kills` times with `store` and kills each run as `kill`
/// says, then runs it to the end. Returns the verify step's output and how many runs were
/// killed while still working.
fn crash_and_verify(brokers: &str, seed: u64, kills: u32, store: &str, kill: Kill) -> (Output, u32) {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let namespace = format!("lk-kill-{seed}-{millis}");
    let out = tempfile::tempdir().unwrap();
    succeed(engine("produce", brokers, &namespace, out.path(), store));
    let mut state = seed;
    let mut killed_working = 0;
    for _ in 0..kills {
        // SplitMix64 steps: a kill in the window after the start.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let z = z ^ (z >> 31);
        let before = committed(brokers, &namespace);
        let mut child = engine("kappa", brokers, &namespace, out.path(), store).spawn().unwrap();
        let started = Instant::now();
        match kill {
            Kill::Within(from, to) => {
                let after = Duration::from_millis(from + z % (to - from));
                while started.elapsed() < after && child.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Kill::AfterACommit => {
                while committed(brokers, &namespace) <= before
                    && started.elapsed() < Duration::from_secs(60)
                    && child.try_wait().unwrap().is_none()
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // A seeded few more milliseconds, so the kill also strands uncommitted work.
                std::thread::sleep(Duration::from_millis(z % 300));
            }
        }
        if child.try_wait().unwrap().is_none() {
            killed_working += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    eprintln!("{store}: {killed_working} of {kills} kills hit a working engine");
    succeed(engine("kappa", brokers, &namespace, out.path(), store));
    let verified = engine("verify", brokers, &namespace, out.path(), store).output().unwrap();
    let _ = lk_engines::kafka::delete_namespace(brokers, &namespace, Duration::from_secs(10));
    (verified, killed_working)
}

#[test]
fn kappa_on_kafka_is_exactly_once_through_sigkills() {
    let Some(brokers) = brokers() else { return };
    let (verified, killed_working) = crash_and_verify(&brokers, 7, 4, "checkpointed", Kill::Within(1500, 4000));
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&verified.stderr));
    let correctness: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((correctness["lost"].as_u64(), correctness["duplicated"].as_u64()), (Some(0), Some(0)), "{correctness}");
    assert!(correctness["expected"].as_u64().unwrap() > 100_000, "{correctness}");
    assert!(killed_working >= 2, "only {killed_working} of 4 kills hit a working engine: the kills test nothing");
}

#[test]
fn the_check_catches_a_state_store_that_is_not_durable() {
    let Some(brokers) = brokers() else { return };
    // The group's committed offsets say the records before them were processed, but the state
    // that counted them died with the process. Killed once it has committed a transaction (read
    // from the broker), not at a guessed moment: a run killed before its first commit loses
    // nothing, and on a busy machine that first commit can come late.
    let (verified, killed_working) = crash_and_verify(&brokers, 11, 2, "memory", Kill::AfterACommit);
    assert!(killed_working >= 1, "no kill hit a working engine");
    assert!(
        !verified.status.success(),
        "verify passed although state was lost:\n{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let correctness: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&verified.stdout).trim()).unwrap();
    assert!(correctness["lost"].as_u64().unwrap() > 0 || correctness["mismatched_windows"].as_u64().unwrap() > 0);
}
