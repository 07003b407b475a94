//! The reports from a fixture results file: the Markdown report against its snapshot
//! (`LK_UPDATE_SNAPSHOTS=1` rewrites it after an intended change), the HTML report's
//! self-containment, and the diff verdicts CI relies on.

use std::path::Path;

use lk_reports::{Run, diff, html, load, markdown};

/// The new quickstart's results (`lk run scenarios/quickstart.toml`); the other fixture is
/// `lk run scenarios/crash-recovery.toml --guarantee at-least-once`. Regenerate both after a
/// schema change, then the snapshot with `LK_UPDATE_SNAPSHOTS=1`.
fn fixture() -> Run {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quickstart.json")).expect("the fixture loads")
}

#[test]
fn the_markdown_report_matches_its_snapshot() {
    let rendered = markdown::render(&[fixture()]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/quickstart.md");
    if std::env::var_os("LK_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("the snapshot exists (LK_UPDATE_SNAPSHOTS=1 writes it)");
    assert_eq!(rendered, expected, "report.md changed; if intended, rerun with LK_UPDATE_SNAPSHOTS=1");
}

#[test]
fn the_html_report_is_one_self_contained_file_with_its_charts() {
    let page = html::render(&[fixture()]);
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert!(!page.contains("<script"), "no scripts");
    for attribute in [" src=", " href=", "url("] {
        assert!(!page.contains(attribute), "an external reference: {attribute}");
    }
    // Latency, window latency, throughput, completeness, reprocessing and CPU.
    assert_eq!(page.matches("<svg").count(), 6, "every chart of the fixture is drawn");
    for section in ["Comparison matrix", "Code duplication", "Operational cost", "Lambda's batch layer"] {
        assert!(page.contains(section), "{section} missing");
    }
}

#[test]
fn a_report_says_what_a_run_did_not_measure() {
    let mut run = fixture();
    run.results.engines.remove("lambda");
    for engine in run.results.engines.values_mut() {
        engine.window_latency = lk_harness::results::WindowLatency {
            unmeasured: Some("no window result was served after the warm-up".to_owned()),
            ..Default::default()
        };
        engine.completeness_series.clear();
    }
    let page = html::render(&[run.clone()]);
    assert!(page.contains("no window result was served during the run"), "window latency gap not explained");
    assert!(page.contains("n/a: no window result was served after the warm-up"), "the reason is not shown");
    assert!(page.contains("no zone-demand window could be complete"), "completeness gap not explained");
    let text = markdown::render(&[run]);
    assert!(text.contains("| Code duplication | not measured (run with --engine both)"), "{text}");
    assert!(text.contains("not run"), "{text}");
}

#[test]
fn diff_passes_a_run_against_itself_and_fails_regressions() {
    let base = fixture().results;
    let same = diff::diff(&base, &base, Some(10.0));
    assert!(!same.failed(), "{}", diff::render(&same));
    assert!(same.changes.len() > 20);

    let mut slower = base.clone();
    slower.engines.get_mut("kappa").unwrap().latency_ms.p99 *= 1.5;
    let result = diff::diff(&base, &slower, Some(10.0));
    assert!(result.failed());
    let regressed: Vec<&str> =
        result.changes.iter().filter(|change| change.regressed).map(|change| change.metric).collect();
    assert_eq!(regressed, vec!["latency_ms.p99"]);
    assert!(!diff::diff(&base, &slower, Some(60.0)).failed(), "50% worse is within a 60% allowance");
    // Better is never a regression.
    assert!(!diff::diff(&slower, &base, Some(0.0)).failed());

    let mut lossy = base.clone();
    lossy.engines.get_mut("lambda").unwrap().correctness.duplicated = 1;
    let result = diff::diff(&base, &lossy, Some(1000.0));
    assert!(result.failed(), "correctness may not get worse at all, whatever the allowance");
    let text = diff::render(&result);
    assert!(text.contains("| lambda | correctness.duplicated | 0 | 1 | new | 0% | REGRESSED |"), "{text}");
    assert!(text.contains("FAIL: 1 regressed (lambda correctness.duplicated)"), "{text}");

    let mut missing = base.clone();
    missing.engines.remove("kappa");
    let result = diff::diff(&base, &missing, Some(10.0));
    assert!(result.failed() && result.problems[0].contains("kappa"));
}

#[test]
fn several_runs_are_compared_side_by_side() {
    let (mut first, mut second) = (fixture(), fixture());
    first.label = "before".to_owned();
    second.label = "after".to_owned();
    let text = markdown::render(&[first.clone(), second.clone()]);
    assert!(text.contains("| before | kappa |") && text.contains("| after | lambda |"), "{text}");
    let page = html::render(&[first, second]);
    assert!(page.contains("before/kappa") && page.contains("after/lambda"));
}

#[test]
fn loading_explains_what_is_wrong_with_a_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("results.json");
    std::fs::write(&path, "not json").unwrap();
    let error = load(&path).unwrap_err().to_string();
    assert!(error.contains("not JSON") && error.contains("results.json that `lk run` wrote"), "{error}");
    std::fs::write(&path, r#"{"schema_version": 3, "scenario": {}}"#).unwrap();
    let error = load(&path).unwrap_err().to_string();
    assert!(error.contains("not an lk results file"), "{error}");
    let error = load(&directory.path().join("absent.json")).unwrap_err().to_string();
    assert!(error.contains("absent.json"), "{error}");
}

#[test]
fn a_run_with_faults_shows_its_verdicts_its_faults_and_the_events_the_checker_named() {
    let run = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crash-recovery-at-least-once.json"))
        .expect("the fixture loads");
    let crashes = run.results.faults.iter().filter(|fault| fault.kind == "crash").count();
    assert!(crashes >= 10, "the fixture crashed both engines: {crashes}");
    let text = markdown::render(std::slice::from_ref(&run));
    assert!(text.contains("| kappa | at-least-once | not exactly-once: 0 lost,"), "{text}");
    assert!(text.contains("redelivery: the producer sent its last"), "{text}");
    assert!(text.contains("outage: the log refused appends"), "{text}");
    assert!(text.contains(" duplicated in q"), "no named event: {text}");
    assert_eq!(text.matches("): stopped ").count(), crashes, "a recovery line per crash: {text}");
    let page = html::render(&[run]);
    assert!(page.contains("Faults and exactly-once") && page.contains("not exactly-once"));
    // The throughput chart marks each fault with a dashed line labelled with its kind.
    let labels = |kind: &str| {
        page.split("</text>").filter(|chunk| chunk.rsplit('>').next().map(str::trim) == Some(kind)).count()
    };
    assert_eq!(labels("crash"), crashes, "crash markers");
    assert_eq!((labels("redelivery"), labels("outage")), (1, 1), "the other faults' markers");
    let mut quiet = fixture();
    quiet.results.faults.clear();
    let clean = markdown::render(&[quiet]);
    assert!(clean.contains("exactly-once held") && clean.contains("No faults were injected."), "{clean}");
}

/// Latency and memory over time: two charts, and the steadiness line under them in both reports.
#[test]
fn latency_and_memory_over_time_are_charted_with_whether_they_held_steady() {
    let mut run = fixture();
    let before = html::render(&[run.clone()]).matches("<svg").count();
    assert!(html::render(&[run.clone()]).contains("no latency samples"));
    run.results.resource_series = (1..=60u64)
        .map(|second| lk_harness::steadiness::ResourceSample {
            at_seconds: second as f64,
            rss_bytes: (400 + second) << 20,
            log_bytes: second * 7_000_000,
            master_bytes: second * 3_000_000,
            checkpoint_bytes: 2_000_000,
            lk_cores: 1.0,
            machine_busy: 0.5,
        })
        .collect();
    let latency: Vec<_> = (1..=60u64)
        .map(|second| lk_harness::metrics::LatencySample {
            at_seconds: second as f64,
            count: 1000,
            p50_ms: 1.0,
            p99_ms: 3.0,
            max_ms: 9.0,
        })
        .collect();
    for engine in run.results.engines.values_mut() {
        engine.latency_series = latency.clone();
    }
    let by_engine = run.results.engines.keys().map(|name| (name.clone(), latency.clone())).collect();
    run.results.steadiness = lk_harness::steadiness::judge(&run.results.resource_series, &by_engine, 5.0);
    let page = html::render(&[run.clone()]);
    assert_eq!(page.matches("<svg").count(), before + 2, "latency and memory over time");
    assert!(page.contains("Memory and stored bytes") && page.contains("memory steady: peak"), "no steadiness line");
    let markdown = markdown::render(&[run]);
    assert!(markdown.contains("**Over time**, half against half after the warm-up: memory steady"), "{markdown}");
}

#[test]
fn the_latency_by_stage_is_a_stacked_bar_and_a_table() {
    let mut run = fixture();
    let before = html::render(&[run.clone()]).matches("<svg").count();
    let stages = lk_harness::metrics::LatencyStages {
        samples: 1200,
        unjoined: 0,
        stages: lk_harness::metrics::STAGES
            .iter()
            .enumerate()
            .map(|(index, stage)| lk_harness::metrics::StageLatency {
                stage: (*stage).to_owned(),
                mean_ms: index as f64 + 0.5,
                p50_ms: index as f64,
                p99_ms: 10.0 * (index as f64 + 1.0),
            })
            .collect(),
    };
    for engine in run.results.engines.values_mut() {
        engine.latency_stages = Some(stages.clone());
    }
    let page = html::render(&[run.clone()]);
    assert_eq!(page.matches("<svg").count(), before + 1, "one stacked bar chart for the stages");
    assert!(page.contains("Where visible latency goes"));
    assert!(
        page.contains("<td class=\"text\">commit wait</td><td>4.50</td><td>4.00</td><td>50.00</td>"),
        "stage table"
    );
    let text = markdown::render(&[run]);
    assert!(
        text.contains("| engine | schedule | produce | fetch | process | commit wait | commit | serve |"),
        "{text}"
    );
    assert!(text.contains("| 0.5 / 10.0 | 1.5 / 20.0 |"), "{text}");
}

#[test]
fn a_commit_interval_sweep_plots_latency_and_cpu_against_the_interval() {
    let point = |interval: f64, engine: &str, p99: f64| lk_harness::sweep::CommitPoint {
        commit_interval_ms: interval,
        engine: engine.to_owned(),
        latency_p50_ms: p99 / 2.0,
        latency_p99_ms: p99,
        commit_wait_mean_ms: Some(interval / 2.0),
        commit_mean_ms: Some(15.0),
        engine_cpu_seconds: 2.0,
        lk_cores: Some(0.8),
        broker_cores: Some(0.7),
        machine_busy: Some(0.75),
        exactly_once: true,
    };
    let sweep = lk_harness::sweep::CommitSweep {
        scenario: "clean".into(),
        seed: 42,
        points: vec![point(10.0, "kappa", 100.0), point(100.0, "kappa", 130.0), point(500.0, "kappa", 560.0)],
        runs: vec![],
    };
    let page = lk_reports::sweep::commit_html(&sweep);
    assert_eq!(page.matches("<svg").count(), 2, "latency and CPU against the interval");
    assert!(page.contains("<td>500ms</td><td>kappa</td><td>280.0</td><td>560.0</td>"), "{page}");
    let text = lk_reports::sweep::commit_markdown(&sweep);
    assert!(text.contains("| 100ms | kappa | 65.0 | 130.0 | 50.0 | 15.0 | 0.80 | 0.70 | 75% | held |"), "{text}");
}

#[test]
fn engines_that_are_not_lks_own_get_matrix_columns_and_spark_lambdas_lake_its_sentences() {
    let mut run = fixture();
    let mut spark = run.results.engines["lambda"].clone();
    spark.lambda = None;
    spark.correctness.lost = 2;
    spark.correctness.duplicated = 469;
    spark.correctness.mismatched_windows = 63;
    spark.reprocess.seconds = 84.8;
    spark.reprocess.events = 11_978;
    spark.external = Some(lk_harness::results::ExternalResults {
        readers: ["master", "q1", "q2", "q3", "q4", "q5"].map(str::to_owned).to_vec(),
        lake: Some(lk_harness::results::LakeResults {
            merge: "seed".to_owned(),
            batch_interval_seconds: 60.0,
            staleness_seconds_max: 63.4,
            master_rows: 11_978,
            master_positions: 11_978,
            master_rows_expected: 11_978,
            master_exact: true,
            rerun_job_seconds: Some(35.5),
            restore: Some(lk_harness::results::LakeRestore {
                version: 1,
                seconds: 15.3,
                cells: 211,
                consistent: true,
                table_version: 3,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    run.results.engines.insert("spark-lambda".to_owned(), spark);
    let page = markdown::render(&[run]);
    assert!(page.contains("| aspect | Kappa | Lambda | spark-lambda |"), "{page}");
    for cell in [
        "queries written twice: Structured Streaming (speed layer) and Spark SQL (batch layer)",
        "4 layers in one Spark driver: a Delta master dataset, batch runs, 5 streaming queries",
        "rerun the batch job over the Delta master dataset: 84.80 s for 11978 events",
        "time-travel restore of the batch view 15.3 s",
        "2 lost, 469 duplicated, 63 mismatched cells",
        "against every event; seed merge); batch views up to 63.4 s stale",
        // The lake's sentences: what the second reader found, and why the seed's merge costs.
        "found 11978 master rows at 11978 distinct input positions",
        "The seed's merge served 2 lost and 469 duplicated contributions in 63 mismatched cells",
    ] {
        assert!(page.contains(cell), "{cell:?} missing from:\n{page}");
    }
}
