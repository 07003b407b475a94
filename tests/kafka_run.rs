//! `lk run --log kafka` end to end against a real broker: the same scenario and seed give
//! byte-identical views on Kafka (Kappa through its transactional sink) and on the embedded log
//! (Kappa's direct sink), and exactly-once holds on Kafka, with crashes too.
//!
//! The broker comes from `LK_KAFKA_BROKERS` (`.ci/run` starts one with `scripts/kafka up`).
//! Without it these tests say so and pass: the default `cargo test` needs no Java.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks time themselves with the wall clock")]

use std::path::Path;
use std::process::Command;

fn brokers() -> Option<String> {
    let brokers = lk_engines::log::kafka::brokers_from_env().unwrap_or_else(|error| panic!("{error}"));
    if brokers.is_none() {
        eprintln!("LK_KAFKA_BROKERS is not set: skipping the Kafka run tests (`scripts/kafka up` starts a broker)");
    }
    brokers
}

fn lk(args: &[&str], out: &Path) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lk {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

fn assert_exactly_once(results: &serde_json::Value) {
    for engine in ["kappa", "lambda"] {
        let correctness = &results["engines"][engine]["correctness"];
        assert_eq!(correctness["lost"], 0, "{engine}: {correctness}");
        assert_eq!(correctness["duplicated"], 0, "{engine}: {correctness}");
        assert_eq!(correctness["mismatched_windows"], 0, "{engine}: {correctness}");
    }
}

#[test]
fn kafka_and_the_embedded_log_serve_the_same_views() {
    let Some(brokers) = brokers() else { return };
    let (kafka, embedded) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["run", "scenarios/clean.toml", "--duration", "3s", "--no-reprocess"];
    let on_kafka = lk(&[&args[..], &["--log", "kafka", "--brokers", &brokers]].concat(), kafka.path());
    let on_embedded = lk(&args, embedded.path());
    assert_eq!(on_kafka["environment"]["log_backend"], "kafka");
    assert_eq!(on_embedded["environment"]["log_backend"], "embedded");
    assert_exactly_once(&on_kafka);
    assert_eq!(on_kafka["generator"]["records_appended"], on_embedded["generator"]["records_appended"]);
    let mut compared = 0;
    for engine in ["kappa", "lambda", "oracle"] {
        for entry in std::fs::read_dir(embedded.path().join("views").join(engine)).unwrap() {
            let path = entry.unwrap().path();
            let other = kafka.path().join("views").join(engine).join(path.file_name().unwrap());
            assert!(std::fs::read(&path).unwrap() == std::fs::read(&other).unwrap(), "{} differs", other.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 15, "five queries for each of kappa, lambda and the oracle");
}

#[test]
fn exactly_once_holds_on_kafka_through_crashes() {
    let Some(brokers) = brokers() else { return };
    let out = tempfile::tempdir().unwrap();
    let results = lk(&["run", "scenarios/crash-recovery.toml", "--no-reprocess", "--brokers", &brokers], out.path());
    assert_eq!(results["environment"]["log_backend"], "kafka");
    assert_eq!(
        results["environment"]["kappa_sink"], "transactional",
        "on Kafka, exactly-once Kappa is consume-transform-produce in transactions"
    );
    assert_eq!(results["environment"]["lambda_sink"], "transactional", "and so is Lambda's speed layer");
    assert_exactly_once(&results);
    let speed = &results["engines"]["lambda"]["lambda"]["before_final_batch"];
    assert_eq!(
        (speed["duplicated"].as_u64(), speed["mismatched_windows"].as_u64()),
        (Some(0), Some(0)),
        "the segments materialised from the speed layer's topic double-count nothing: {speed}"
    );
    for engine in ["kappa", "lambda"] {
        let faults = &results["engines"][engine]["faults"];
        assert_eq!(faults["crashes"], 6, "{engine} crashed six times, as the scenario says: {faults}");
        assert!(faults["records_replayed"].as_u64().unwrap() > 0, "{engine} replayed after its crashes: {faults}");
    }
}

/// The SASL/SCRAM listener and its client properties file, from `scripts/kafka up --sasl`
/// (`.ci/run` sets both variables).
fn sasl() -> Option<(String, std::path::PathBuf)> {
    let brokers = std::env::var("LK_KAFKA_SASL_BROKERS").ok().filter(|brokers| !brokers.is_empty());
    let config = std::env::var_os("LK_KAFKA_SASL_CONFIG").map(std::path::PathBuf::from);
    match (brokers, config) {
        (Some(brokers), Some(config)) => Some((brokers, config)),
        _ => {
            eprintln!(
                "LK_KAFKA_SASL_BROKERS/LK_KAFKA_SASL_CONFIG are not set: skipping the SASL tests (`scripts/kafka up \
                 --sasl` starts the listener)"
            );
            None
        }
    }
}

/// The password in a client properties file's `sasl.jaas.config`.
fn password_in(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let start = text.find("password=\"").expect("a password in the JAAS configuration") + "password=\"".len();
    text[start..start + text[start..].find('"').unwrap()].to_owned()
}

/// Every file under `directory`, recursively.
fn files_under(directory: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_sasl_scram_cluster_runs_exactly_once_and_no_secret_is_written() {
    let Some((brokers, config)) = sasl() else { return };
    let password = password_in(&config);
    let out = tempfile::tempdir().unwrap();
    let args = ["run", "scenarios/clean.toml", "--duration", "2s", "--no-reprocess", "--brokers", &brokers];
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(args)
        .arg("--kafka-config")
        .arg(&config)
        .arg("--out")
        .arg(out.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["environment"]["log_backend"], "kafka");
    assert_exactly_once(&results);
    assert!(!stdout.contains(&password) && !stderr.contains(&password), "the password was printed");
    let files = files_under(out.path());
    assert!(files.iter().any(|file| file.ends_with("report.html")), "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(password.len()).any(|window| window == password.as_bytes()),
            "{} holds the password",
            file.display()
        );
    }
}

#[test]
fn wrong_credentials_fail_fast_with_the_reason_and_without_the_secret() {
    let Some((brokers, config)) = sasl() else { return };
    let directory = tempfile::tempdir().unwrap();
    let wrong_password = "not-the-password-4711";
    let wrong = directory.path().join("wrong.properties");
    let text = std::fs::read_to_string(&config).unwrap().replace(&password_in(&config), wrong_password);
    std::fs::write(&wrong, text).unwrap();
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(["run", "scenarios/clean.toml", "--duration", "1s", "--brokers", &brokers, "--kafka-config"])
        .arg(&wrong)
        .arg("--out")
        .arg(directory.path().join("out"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("refused lk's connection") && stderr.contains("--kafka-config"), "{stderr}");
    assert!(!stderr.contains(wrong_password), "{stderr}");
    // The no-broker timeout is 10 s: a refusal must end the wait long before it.
    assert!(seconds < 8.0, "a refused login took {seconds:.1} s to report");
}

/// `lk sweep --commit-interval` over Kafka: one run per interval, each exactly-once, and the
/// interval shows in the latency by stage (a change waits at least about half of it for its
/// transaction), so a sweep that did not apply the setting fails here. The run on Kafka also
/// carries the latency by stage and the resources it used.
#[test]
fn a_commit_interval_sweep_runs_each_interval_over_kafka() {
    let Some(brokers) = brokers() else { return };
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(["sweep", "scenarios/clean.toml", "--commit-interval", "20ms,400ms", "--duration", "3s"])
        .args(["--engine", "kappa", "--log", "kafka", "--brokers", &brokers, "--out"])
        .arg(out.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let sweep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("commit-sweep.json")).unwrap()).unwrap();
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{sweep}");
    for point in points {
        assert_eq!(point["exactly_once"], true, "{point}");
        assert!(point["latency_p99_ms"].as_f64().unwrap() > 0.0, "{point}");
    }
    // At 400 ms a change waits 200 ms for its transaction on average, and only longer on a busy
    // machine; a sweep that left the default 100 ms in place would show about 50. (The 20 ms
    // run's wait has no such bound: on a loaded machine its commits run back to back and a
    // change waits for the one in flight.)
    let wait = |index: usize| points[index]["commit_wait_mean_ms"].as_f64().unwrap();
    assert!(wait(1) > 100.0, "the commit wait follows the interval: {sweep}");
    for file in ["commit-sweep.html", "commit-sweep.md", "commit-20ms/results.json", "commit-400ms/report.html"] {
        assert!(out.path().join(file).exists(), "{file} missing");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("commit-400ms/results.json")).unwrap()).unwrap();
    let stages = results["engines"]["kappa"]["latency_stages"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 7, "{stages:?}");
    assert!(results["resources"]["limit"].as_str().is_some_and(|limit| !limit.is_empty()), "{}", results["resources"]);
}
