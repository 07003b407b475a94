//! The verdict on a fixture's numbers: it flips when a requirement flips, a claim is refuted
//! when the numbers contradict it, and it says what a run could not show.

use std::path::Path;

use lk_harness::results::Results;
use lk_harness::verdict::{Finding, judge};

/// The quickstart's results: late phones (Kappa's windowed views miss 0.46%), one crash of each
/// engine, the rebuild timed.
fn quickstart() -> Results {
    lk_reports::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quickstart.json"))
        .expect("the fixture loads")
        .results
}

fn finding(results: &Results, topic: &str) -> Finding {
    let verdict = judge(results);
    verdict.claims.iter().find(|claim| claim.topic == topic).unwrap_or_else(|| panic!("no claim {topic}")).finding
}

#[test]
fn a_strict_completeness_requirement_chooses_lambda_and_a_lax_one_with_a_short_history_kappa() {
    let mut results = quickstart();
    let kappa_completeness = results.engines["kappa"].correctness.windowed_completeness;
    assert!(kappa_completeness < 0.999, "the fixture has late data Kappa drops: {kappa_completeness}");

    results.requirements.completeness = 0.999;
    let strict = judge(&results);
    assert_eq!(strict.choice.as_deref(), Some("lambda"), "{}", strict.summary);
    assert_eq!(strict.deciding, "windowed completeness", "{}", strict.summary);
    assert!(!strict.assessments["kappa"].meets && strict.assessments["lambda"].meets);

    // Below Kappa's measured completeness both meet it; with a week of history (all of it in
    // Lambda's log too) Lambda pays for a master dataset and batch cores on top: Kappa is cheaper.
    results.requirements.completeness = kappa_completeness - 0.001;
    results.requirements.history_seconds = 7.0 * 86_400.0;
    let lax = judge(&results);
    assert!(lax.assessments.values().all(|assessment| assessment.meets), "{}", lax.summary);
    assert_eq!(lax.choice.as_deref(), Some("kappa"), "{}", lax.summary);
    assert!(lax.deciding == "cost" || lax.deciding == "simplicity", "{}", lax.deciding);

    // A driver-location SLO tighter than both engines' p99: neither meets it, and it says so.
    let p99 = results.engines.values().map(|engine| engine.latency_ms.p99).fold(0.0, f64::max);
    results.requirements.location_p99_ms = p99 / 2.0;
    let tight = judge(&results);
    assert_eq!(tight.choice, None, "{}", tight.summary);
    assert!(
        tight.summary.starts_with("Neither") && tight.deciding.contains("driver-location p99"),
        "{}",
        tight.summary
    );
}

#[test]
fn a_claim_is_refuted_when_the_numbers_contradict_it() {
    let mut results = quickstart();
    assert_eq!(finding(&results, "reprocessing"), Finding::Confirmed, "the fixture's batch layer rebuilds faster");
    // Kappa's replay made twice as fast as Lambda's batch: "Kappa slow (replay)" is refuted.
    let batch = results.engines["lambda"].lambda.as_ref().unwrap().batch_events_per_second;
    results.engines.get_mut("kappa").unwrap().reprocess.events_per_second = batch * 2.0;
    assert_eq!(finding(&results, "reprocessing"), Finding::Refuted);

    // Exactly-once broken under a crash: "both fault tolerant" is refuted.
    assert_eq!(finding(&results, "fault tolerance"), Finding::Confirmed);
    results.engines.get_mut("lambda").unwrap().correctness.duplicated = 3;
    assert_eq!(finding(&results, "fault tolerance"), Finding::Refuted);
    let verdict = judge(&results);
    assert!(!verdict.assessments["lambda"].meets, "a duplicate fails exactly-once");

    // Late data that Kappa did not drop: "Kappa loses what the watermark passes" is refuted.
    let mut results = quickstart();
    let kappa = results.engines.get_mut("kappa").unwrap();
    kappa.correctness.windowed_completeness = 1.0;
    results.engines.get_mut("lambda").unwrap().correctness.windowed_completeness = 1.0;
    assert_eq!(finding(&results, "late data"), Finding::Refuted);
}

#[test]
fn a_run_without_late_data_or_crashes_says_what_it_could_not_show() {
    let mut results = quickstart();
    for count in results.oracle.late_dropped.values_mut() {
        *count = 0;
    }
    for engine in results.engines.values_mut() {
        engine.faults.crashes = 0;
    }
    let verdict = judge(&results);
    let missing = verdict.missing.join("\n");
    assert!(missing.contains("no event arrived after the watermark"), "{missing}");
    assert!(missing.contains("no crash was injected"), "{missing}");
    assert!(missing.contains("no capacity search"), "{missing}");
    assert_eq!(finding(&results, "late data"), Finding::Untested);
    assert_eq!(finding(&results, "fault tolerance"), Finding::Untested);
}

#[test]
fn the_verdict_is_the_first_section_of_both_reports() {
    let run = lk_reports::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quickstart.json")).unwrap();
    let text = lk_reports::markdown::render(std::slice::from_ref(&run));
    let verdict_at = text.find("## Verdict").expect("a verdict section");
    assert!(verdict_at < text.find("| engine |").unwrap(), "the verdict comes before the tables");
    assert!(text.contains("Lambda meets the requirements; Kappa does not"), "{text}");
    assert!(text.contains("The textbook's claims, checked") && text.contains("| reprocessing |"), "{text}");
    assert!(text.contains("extrapolated"), "extrapolated figures say so");
    let page = lk_reports::html::render(&[run]);
    assert!(page.find("<h2>Verdict</h2>").unwrap() < page.find("<h2>Headline</h2>").unwrap());
}
