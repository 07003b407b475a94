//! `lk run` end to end on the quickstart (the README's main command), then `lk report` and
//! `lk diff` on what it wrote.

use std::process::Command;

fn lk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lk")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

/// `lk ARGS --out OUT`, from the repository's root.
fn lk_out(args: &[&str], out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lk"))
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn quickstart_runs_both_engines_and_writes_results_views_and_reports() {
    let directory = tempfile::tempdir().unwrap();
    let output = lk_out(&["run", "scenarios/quickstart.toml", "--duration", "6s"], directory.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("kappa"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["schema_version"], 3);
    assert_eq!(results["scenario"]["name"], "quickstart");
    assert_eq!(results["generator"]["events"], 600_000);
    // The quickstart shows the trade-off: late phones that Kappa's watermark drops and Lambda's
    // batch runs put back, a crash of each engine with exactly-once held, and the verdict.
    let (kappa, lambda) = (&results["engines"]["kappa"], &results["engines"]["lambda"]);
    assert!(kappa["correctness"]["windowed_completeness"].as_f64().unwrap() < 1.0, "{}", kappa["correctness"]);
    assert_eq!(lambda["correctness"]["windowed_completeness"], 1.0);
    assert!(lambda["lambda"]["cells_corrected"].as_u64().unwrap() > 0, "{}", lambda["lambda"]);
    for engine in [kappa, lambda] {
        assert_eq!(engine["faults"]["crashes"], 1, "{}", engine["faults"]);
        assert_eq!(engine["correctness"]["verdict"], "exactly-once held");
    }
    let verdict = &results["verdict"];
    assert_eq!(verdict["choice"], "lambda", "{verdict}");
    assert_eq!(verdict["deciding"], "windowed completeness", "{verdict}");
    assert_eq!(results["requirements"]["rate_eps"], 1_000_000.0);
    // A stream this short is profiled for the report: its offline phones deliver in bursts.
    let profile = &results["stream_profile"];
    assert_eq!(profile["events"], 600_000, "{profile}");
    assert!(profile["late_in_bursts_share"].as_f64().unwrap() > 0.5, "{profile}");
    let html = std::fs::read_to_string(directory.path().join("report.html")).unwrap();
    assert!(html.contains("<h2>The stream</h2>") && html.contains("pickup wait"), "no profile in report.html");
    let markdown = std::fs::read_to_string(directory.path().join("report.md")).unwrap();
    assert!(markdown.find("## Verdict").unwrap() < markdown.find("| engine |").unwrap(), "{markdown}");
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
    assert!(kappa["cost"]["stored_bytes"].as_u64().unwrap() > 500_000 * 64);
    for field in ["lost", "duplicated", "mismatched_windows"] {
        assert_eq!(lambda["correctness"][field], 0, "{field}: {}", lambda["correctness"]);
    }
    assert!(lambda["lambda"]["batch_runs"].as_array().unwrap().len() >= 2, "{}", lambda["lambda"]);
    assert!(lambda["lambda"]["master"]["bytes"].as_u64().unwrap() > 0);
    for engine in ["kappa", "lambda", "oracle"] {
        for query in [
            "q1_driver_location",
            "q2_rides_per_driver",
            "q3_zone_demand",
            "q4_driver_sessions",
            "q5_historical_trends",
        ] {
            assert!(
                directory.path().join("views").join(engine).join(format!("{query}.parquet")).exists(),
                "{engine} {query}"
            );
        }
    }
    for report in ["report.html", "report.md"] {
        assert!(directory.path().join(report).exists(), "{report} missing");
    }
    assert!(stdout.contains("report.html"), "the run does not say where its report is: {stdout}");
    // The run over time: lk's memory and stored bytes, and each engine's latency, each second.
    let series = results["resource_series"].as_array().unwrap();
    assert!((5..=9).contains(&series.len()), "{} resource samples in a 6 s run", series.len());
    let last = series.last().unwrap();
    assert!(last["rss_bytes"].as_u64().unwrap() > 10 << 20, "{last}");
    assert!(last["log_bytes"].as_u64().unwrap() > 500_000 * 64, "{last}");
    assert!(last["master_bytes"].as_u64().unwrap() > 0, "{last}");
    for engine in [kappa, lambda] {
        let latency = engine["latency_series"].as_array().unwrap();
        assert!(latency.len() >= 3, "{latency:?}");
        assert!(latency.iter().all(|sample| sample["p99_ms"].as_f64().unwrap() >= sample["p50_ms"].as_f64().unwrap()));
    }
    // Too short to judge whether memory and latency held steady.
    assert!(results.get("steadiness").is_none(), "{}", results["steadiness"]);
    assert!(html.contains("Latency and memory over time") && html.contains("Memory and stored bytes"));

    // `lk batch` reruns Lambda's batch layer on demand over the run's master dataset.
    let master = directory.path().join("master");
    let output = lk(&["batch", "scenarios/quickstart.toml", master.to_str().unwrap(), "--threads", "2"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let rows = lambda["lambda"]["master"]["rows"].as_u64().unwrap();
    assert!(stdout.contains(&format!("{rows} rows")), "{stdout}");
    assert!(directory.path().join("views/lambda-batch/q3_zone_demand.parquet").exists());
    let output = lk(&["batch", "scenarios/quickstart.toml", directory.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a master dataset written by `lk run`"));

    // `lk report` re-renders it, and compares two runs.
    let results_path = directory.path().join("results.json");
    let results_text = results_path.to_str().unwrap();
    let compared = directory.path().join("compared");
    let output = lk(&["report", results_text, results_text, "--out", compared.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let markdown = std::fs::read_to_string(compared.join("report.md")).unwrap();
    assert!(markdown.contains("2 runs compared"), "{markdown}");

    // `lk diff`: a run against itself passes; one with a lost event fails with exit 1.
    let output = lk(&["diff", results_text, results_text]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    let mut worse = results.clone();
    worse["engines"]["lambda"]["correctness"]["lost"] = serde_json::json!(1);
    let worse_path = directory.path().join("worse.json");
    std::fs::write(&worse_path, serde_json::to_string(&worse).unwrap()).unwrap();
    let output = lk(&["diff", results_text, worse_path.to_str().unwrap(), "--max-regression", "1000"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("correctness.lost") && stdout.contains("REGRESSED"), "{stdout}");
    // A single run on each side: the verdict says it is weak.
    assert!(stdout.contains("weak verdict"), "{stdout}");
    // A file that is not there is an error, not a regression: exit 2.
    let output = lk(&["diff", results_text, directory.path().join("absent.json").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absent.json"));
}

/// `lk run --require-steady` (the soak's check) judges memory and latency half against half
/// after the warm-up: its exit says what its line and results.json say; a run too short to
/// judge is an error.
#[test]
fn require_steady_judges_the_run_half_against_half_and_refuses_a_short_run() {
    let directory = tempfile::tempdir().unwrap();
    let args =
        ["run", "scenarios/clean.toml", "--engine", "kappa", "--rate", "20000", "--no-reprocess", "--require-steady"];
    let output = lk_out(&[&args[..], &["--duration", "32s"]].concat(), directory.path());
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("results.json")).unwrap()).unwrap();
    let steadiness = &results["steadiness"];
    let steady = steadiness["memory_steady"].as_bool().unwrap() && steadiness["latency_steady"].as_bool().unwrap();
    assert!(steadiness["latency"]["kappa"]["first_half_p99_ms"].as_f64().unwrap() > 0.0, "{steadiness}");
    let (from, middle, to) = (
        steadiness["from_seconds"].as_f64().unwrap(),
        steadiness["middle_seconds"].as_f64().unwrap(),
        steadiness["to_seconds"].as_f64().unwrap(),
    );
    assert!(from >= 7.0 && (middle - (from + to) / 2.0).abs() < 1e-6 && to > 30.0, "{steadiness}");
    assert!(stdout.contains("over time: memory "), "{stdout}");
    if steady {
        assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("steady: memory steady"), "{stdout}");
    } else {
        assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("not steady: "), "{stderr}");
    }

    let short = directory.path().join("short");
    let output = lk_out(&[&args[..], &["--duration", "3s"]].concat(), &short);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(String::from_utf8_lossy(&output.stderr).contains("too short to judge"));
}

/// `lk run --repeat`: one results.json with every repetition and their combination, and `lk
/// diff` between two such files: no change against itself, and the slowed engine caught with
/// the metric named.
#[test]
fn repeated_runs_are_combined_and_a_slowed_engine_is_caught_by_diff() {
    let directory = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "scenarios/quickstart.toml",
        "--duration",
        "2s",
        "--engine",
        "kappa",
        "--no-reprocess",
        "--repeat",
        "3",
    ];
    let output = lk_out(&args, &directory.path().join("a"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("a/results.json")).unwrap()).unwrap();
    let repetitions = results["repetitions"].as_array().unwrap();
    assert_eq!(repetitions.len(), 3);
    let merged = results["engines"]["kappa"]["latency_ms"]["count"].as_u64().unwrap();
    let summed: u64 =
        repetitions.iter().map(|run| run["engines"]["kappa"]["latency_ms"]["count"].as_u64().unwrap()).sum();
    assert_eq!(merged, summed, "the combined histogram holds every repetition's samples");
    for index in 1..=3 {
        assert!(directory.path().join(format!("a/rep-{index}/results.json")).is_file());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("median") && stdout.contains("3 repetitions"), "{stdout}");

    let slowed: Vec<&str> = args.iter().copied().chain(["--test-kappa-batch-delay", "5"]).collect();
    let output = lk_out(&slowed, &directory.path().join("b"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (a, b) = (directory.path().join("a/results.json"), directory.path().join("b/results.json"));
    let same = lk(&["diff", a.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stdout));
    let caught = lk(&["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--format", "markdown"]);
    let stdout = String::from_utf8_lossy(&caught.stdout);
    assert_eq!(caught.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("kappa latency_ms.p50") && !stdout.contains("weak verdict"), "{stdout}");
}

#[test]
fn report_and_diff_reject_what_is_not_a_results_file() {
    let directory = tempfile::tempdir().unwrap();
    let bogus = directory.path().join("bogus.json");
    std::fs::write(&bogus, "{\"schema_version\": 99}").unwrap();
    let output = lk(&["report", bogus.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("schema_version is 99") && stderr.contains("re-run"), "{stderr}");
    let output = lk(&["diff", bogus.to_str().unwrap(), directory.path().join("missing.json").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_scenario_without_a_duration_needs_one() {
    let directory = tempfile::tempdir().unwrap();
    let scenario = directory.path().join("endless.toml");
    std::fs::write(&scenario, "[run]\nrate_eps = 1000\n").unwrap();
    let output = lk_out(&["run", scenario.to_str().unwrap()], &directory.path().join("out"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no run.duration; pass --duration"));
}

#[test]
fn malformed_records_go_to_dead_letter_files_with_their_reasons_and_are_all_accounted() {
    let directory = tempfile::tempdir().unwrap();
    let output = lk_out(&["run", "scenarios/bad-input.toml", "--duration", "2s", "--no-reprocess"], directory.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("results.json")).unwrap()).unwrap();
    let malformed = results["oracle"]["dead_lettered"].as_u64().unwrap();
    assert!(malformed > 2_000, "2% of 200k records: {malformed}");
    for engine in ["kappa", "lambda"] {
        let correctness = &results["engines"][engine]["correctness"];
        assert_eq!(correctness["verdict"], "exactly-once held", "{engine}: {correctness}");
        assert_eq!(correctness["dead_letter_file_records"].as_u64(), Some(malformed), "{engine}");
        assert_eq!(correctness["dead_letters_accounted"], true, "{engine}");
        let file = directory.path().join("dead-letters").join(format!("{engine}.jsonl"));
        let text = std::fs::read_to_string(&file).unwrap();
        let mut defects = std::collections::BTreeSet::new();
        for line in text.lines() {
            let letter: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(!letter["reason"].as_str().unwrap().is_empty(), "{line}");
            assert!(letter["offset"].is_u64() && letter["partition"].is_u64(), "{line}");
            defects.insert(letter["defect"].as_str().unwrap().to_owned());
        }
        assert!(defects.len() >= 3, "{engine}: the generator's defect classes: {defects:?}");
    }
}

#[test]
fn sweep_runs_each_watermark_delay_and_shows_the_late_data_trade_off() {
    let directory = tempfile::tempdir().unwrap();
    let output =
        lk_out(&["sweep", "scenarios/late-data.toml", "--watermark", "0s,30s", "--duration", "6s"], directory.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let sweep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("sweep.json")).unwrap()).unwrap();
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "two delays, three series: {points:?}");
    let point = |delay: f64, series: &str| {
        points
            .iter()
            .find(|point| point["watermark_delay_ms"] == delay && point["series"] == series)
            .unwrap_or_else(|| panic!("no {series} point at {delay} ms"))
    };
    let (eager, patient) = (point(0.0, "kappa"), point(30_000.0, "kappa"));
    // A longer watermark delay drops fewer late events and waits longer for each window.
    assert!(eager["late_dropped"].as_u64() > patient["late_dropped"].as_u64(), "{eager} vs {patient}");
    assert!(eager["completeness"].as_f64() < patient["completeness"].as_f64(), "{eager} vs {patient}");
    let measured = |point: &serde_json::Value, field: &str| {
        point[field].as_f64().unwrap_or_else(|| panic!("{field} was not measured: {point}"))
    };
    assert!(
        measured(eager, "window_latency_p99_ms") < measured(patient, "window_latency_p99_ms"),
        "{eager} vs {patient}"
    );
    // The latency is measured, not the configuration (30 s at 20x is 1,500 ms on the clock).
    assert_eq!(patient["watermark_delay_clock_ms"], 1500.0);
    assert_ne!(measured(patient, "window_latency_p50_ms"), 1500.0, "{patient}");
    // Lambda's batch layer counts everything, whatever the delay.
    for delay in [0.0, 30_000.0] {
        assert_eq!(point(delay, "lambda after batch")["completeness"], 1.0);
    }
    for file in ["sweep.html", "sweep.md", "wm-0s/results.json", "wm-30s/report.html"] {
        assert!(directory.path().join(file).exists(), "{file} missing");
    }
    assert!(!directory.path().join("wm-0s/log").exists(), "the sweep keeps results, not logs");
    let page = std::fs::read_to_string(directory.path().join("sweep.html")).unwrap();
    assert!(page.contains("<svg"), "the trade-off chart is drawn");
}

/// `lk run --out` never touches a folder that lk did not create: a user's files there make the
/// run fail before it writes anything; its own earlier output is replaced; `--force` takes a
/// foreign folder over.
#[test]
fn run_refuses_a_foreign_output_folder_and_reuses_its_own() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path();
    std::fs::create_dir_all(out.join("views")).unwrap();
    std::fs::create_dir_all(out.join("master")).unwrap();
    std::fs::write(out.join("views/important.txt"), "a user's file").unwrap();
    std::fs::write(out.join("master/thesis.tex"), "a user's thesis").unwrap();
    let args = ["run", "scenarios/quickstart.toml", "--duration", "1s", "--engine", "kappa", "--no-reprocess"];
    let refused = lk_out(&args, out);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("was not created by lk") && stderr.contains("master/") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(out.join("views/important.txt")).unwrap(), "a user's file");
    assert_eq!(std::fs::read_to_string(out.join("master/thesis.tex")).unwrap(), "a user's thesis");
    let mut names: Vec<_> = std::fs::read_dir(out).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["master", "views"], "the refused run wrote something");

    // An empty folder, then the same folder again: lk's own output is replaced.
    let own = out.join("own");
    std::fs::create_dir(&own).unwrap();
    for _ in 0..2 {
        let output = lk_out(&args, &own);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(own.join(".lk-run").is_file() && own.join("results.json").is_file());
    }

    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    let output = lk_out(&forced, out);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.join(".lk-run").is_file() && out.join("results.json").is_file());
}

/// Flags that contradict each other, or name an engine that does not exist, are usage errors
/// (exit 2) that say what to do, before anything runs.
#[test]
fn contradictory_flags_and_unknown_engines_are_usage_errors() {
    let directory = tempfile::tempdir().unwrap();
    let output = lk_out(
        &["run", "scenarios/quickstart.toml", "--log", "embedded", "--brokers", "127.0.0.1:1"],
        &directory.path().join("out"),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("contradict"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output =
        lk_out(&["run", "scenarios/quickstart.toml", "--engine", "kappa,flink"], &directory.path().join("out"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no engine named \"flink\"") && stderr.contains("kappa, lambda, spark-kappa"), "{stderr}");
    // An engine that is not lk's own cannot read the embedded log, and lk capacity does not
    // search one: both say so before anything is written.
    let output = lk_out(
        &["run", "scenarios/quickstart.toml", "--engine", "spark-kappa", "--log", "embedded"],
        &directory.path().join("out"),
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reads its input from Kafka") && stderr.contains("scripts/kafka up"), "{stderr}");
    let output =
        lk_out(&["capacity", "scenarios/quickstart.toml", "--engine", "spark-kappa"], &directory.path().join("out"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lk capacity searches lk's own engines"), "{stderr}");
    let output = lk_out(
        &["run", "scenarios/quickstart.toml", "--engine", "spark-kappa", "--spark-conf", "novalue"],
        &directory.path().join("out"),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not KEY=VALUE"));
    assert!(!directory.path().join("out").exists(), "a usage error wrote something");
}

/// `lk capacity` finds a known limit: Kappa throttled to 60k events/s by a test knob is found
/// within 10%, the steps are recorded with their reasons, and the chart marks the point.
#[test]
fn capacity_finds_an_engine_throttled_to_a_known_rate() {
    let directory = tempfile::tempdir().unwrap();
    let output = lk_out(
        &[
            "capacity",
            "scenarios/clean.toml",
            "--engine",
            "kappa",
            "--test-kappa-rate-limit",
            "60000",
            "--step",
            "3s",
            "--start",
            "20000",
            "--ceiling",
            "400000",
            "--slo-p99",
            "10s",
        ],
        directory.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let capacity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("capacity.json")).unwrap()).unwrap();
    let search = &capacity["searches"][0];
    assert_eq!(search["engine"], "kappa");
    assert_eq!(search["limit"], "engine", "{search}");
    let found = search["sustainable_eps"].as_f64().unwrap();
    assert!((found - 60_000.0).abs() <= 6_000.0, "found {found} events/s for a 60k/s limit: {search}");
    let steps = search["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|step| step["passed"] == false && step["reason"].as_str().unwrap().contains("fell behind"))
    );
    assert!(search["cpu_seconds_per_event"].as_f64().unwrap() > 0.0);
    let page = std::fs::read_to_string(directory.path().join("capacity.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("kappa on "), "{page:.300}");
    assert!(stdout.contains("| kappa on"), "{stdout}");
}

/// `lk advise` prints the verdict alone, judged on the run (here without a capacity search).
#[test]
fn advise_prints_the_verdict_and_its_tables() {
    let directory = tempfile::tempdir().unwrap();
    let output =
        lk_out(&["advise", "scenarios/quickstart.toml", "--duration", "5s", "--no-capacity"], directory.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("## Verdict"), "{stdout}");
    assert!(stdout.contains("| windowed completeness |") && stdout.contains("The textbook's claims"), "{stdout}");
    assert!(!stdout.contains("| engine | throughput"), "only the verdict: {stdout}");
    assert!(directory.path().join("run/results.json").exists() && directory.path().join("run/report.html").exists());
}

/// A bad [requirements] value names the field and the file.
#[test]
fn bad_requirements_are_named() {
    let directory = tempfile::tempdir().unwrap();
    let scenario = directory.path().join("bad.toml");
    std::fs::write(&scenario, "[run]\nrate_eps = 1000\nduration = \"1s\"\n[requirements]\ncompleteness = 1.5\n")
        .unwrap();
    let output = lk(&["run", scenario.to_str().unwrap(), "--out", directory.path().join("out").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("requirements.completeness") && stderr.contains("bad.toml"), "{stderr}");
}

/// A commit-interval sweep needs Kafka (the interval is the transactional sink's), and a sweep
/// needs one of its two settings: each refusal says what to do.
#[test]
fn a_sweep_says_what_it_needs() {
    let directory = tempfile::tempdir().unwrap();
    let embedded = lk_out(&["sweep", "scenarios/clean.toml", "--commit-interval", "100ms"], directory.path());
    assert!(!embedded.status.success());
    let stderr = String::from_utf8_lossy(&embedded.stderr);
    assert!(stderr.contains("runs over Kafka: add --log kafka"), "{stderr}");
    let neither = lk(&["sweep", "scenarios/clean.toml"]);
    assert_eq!(neither.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(stderr.contains("--watermark") && stderr.contains("--commit-interval"), "{stderr}");
}

/// `--metrics` on a port in use is an error before the run starts: no output folder is made.
#[test]
fn a_metrics_port_in_use_stops_the_run_before_it_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("out");
    let output = lk_out(&["run", "scenarios/clean.toml", "--duration", "1s", "--metrics", &address], &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "an invalid setting: {stderr}");
    assert!(stderr.contains(&format!("--metrics {address}")) && stderr.contains("pick a free port"), "{stderr}");
    assert!(!out.exists(), "the run started");
}
