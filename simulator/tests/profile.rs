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

/// What the disorder settings ask for is what the profile measures of the stream: a swinging
/// rate, offline phones delivering their buffers in bursts, clocks running ahead and a hot
/// driver; and none of it in a stream without them.
#[test]
fn the_disorder_a_scenario_sets_is_what_the_profile_measures() {
    let profile_of = |extra: &str| {
        let text = format!("[run]\nrate_eps = 50000\nduration = \"20s\"\ntime_compression = 10\n{extra}");
        let scenario = Workload::from_toml(&text, "disorder.toml").unwrap();
        lk_simulator::profile::profile_stream(&scenario, 20_000_000_000, 2)
    };
    let plain = profile_of("");
    assert!(plain.arrivals_per_second_cv < 0.02, "{}", plain.arrivals_per_second_cv);
    assert_eq!((plain.late_driver_events_share, plain.clock_ahead_phones_share), (0.0, 0.0));
    assert!(plain.drivers.top_key_share < 0.001);
    let disordered = profile_of(
        "[run.burstiness]\ncv = 0.3\ncorrelation = \"500ms\"\n\
         [fleet]\nhot_driver_share = 0.02\n\
         [lateness]\ndistribution = \"exponential\"\nmean = \"100ms\"\noffline_fraction = 0.02\n\
         offline_min = \"30s\"\noffline_max = \"90s\"\n\
         [clock_skew]\nfraction = 0.02\nstddev = \"3s\"\n",
    );
    assert!(disordered.arrivals_per_second_cv > 0.1, "{}", disordered.arrivals_per_second_cv);
    // Phones offline 2% of the time; an outage's events are at most 90 s late, most over 5 s.
    assert!((0.01..0.025).contains(&disordered.late_driver_events_share), "{}", disordered.late_driver_events_share);
    assert!(disordered.late_in_bursts_share > 0.8, "{}", disordered.late_in_bursts_share);
    // 2% of phones skewed by N(0, 3 s): ahead by more than 0.5 s, about 0.43 of them.
    assert!((0.004..0.015).contains(&disordered.clock_ahead_phones_share), "{}", disordered.clock_ahead_phones_share);
    assert!(disordered.clock_lead_seconds_max > 3.0, "{}", disordered.clock_lead_seconds_max);
    assert!((0.018..0.022).contains(&disordered.drivers.top_key_share), "{}", disordered.drivers.top_key_share);
}
