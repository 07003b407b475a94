//! The calibrated default city stays within the tolerances of docs/workload.md: the clean
//! scenario's stream, over two and a half hours of event time (long enough for trips and waits
//! to be measured to their medians), profiled as `lk simulate --profile` does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lk_simulator::generator::GeneratorOptions;
use lk_simulator::simulate::{Format, Pacing, SimulateOptions, simulate};
use lk_simulator::time::MonotonicClock;
use lk_simulator::workload::Workload;

#[test]
fn the_calibrated_default_city_is_within_the_references() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/clean.toml");
    // Clean's 100k events/s at 30x: 300 s is 150 minutes of a New York morning.
    let scenario = Workload::from_file(&path).unwrap().with_duration(Some(Duration::from_secs(300)));
    let options = SimulateOptions {
        generator: GeneratorOptions::for_scenario(&scenario),
        pacing: Pacing::Max,
        format: Format::Bin,
        profile: true,
    };
    let summary = simulate(&scenario, &options, Arc::new(MonotonicClock::new()), None, &mut |_| {}).unwrap();
    let profile = summary.profile.expect("profiled");
    for check in &profile.checks {
        eprintln!(
            "{}: {:?} {} [{}, {}] {}",
            check.property, check.measured, check.unit, check.low, check.high, check.verdict
        );
    }
    assert!(profile.within_tolerance(), "{:#?}", profile.checks);
    let measured: Vec<&str> =
        profile.checks.iter().filter(|check| check.measured.is_some()).map(|check| check.property.as_str()).collect();
    for property in [
        "requests in the five boroughs",
        "Manhattan road speed, median ping",
        "trip duration, median",
        "trip distance, mean",
        "pickup wait (request to driver arrived), median",
        "miles with a passenger",
        "rider cancellations",
    ] {
        assert!(measured.contains(&property), "{property} was not measured: {:#?}", profile.checks);
    }
    // Morning rush in local time: every request between 08:00 and 10:30 in New York.
    let hours: Vec<usize> = (0..24).filter(|&hour| profile.requests_by_local_hour[hour] > 0).collect();
    assert_eq!(hours, vec![8, 9, 10], "{:?}", profile.requests_by_local_hour);
}
