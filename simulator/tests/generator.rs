//! The generator's promises: determinism, the injected disorder it claims, and a plausible city.
//! Each test prints the seed it used, so a failure can be replayed (`LK_SEED` overrides it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lk_simulator::codec::{decode_binary_stream, decode_json_stream, encode_binary_batch, encode_json_batch};
use lk_simulator::event::{Event, EventKind, Payload};
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::simulate::{Format, Pacing, SimulateOptions, StreamDigest, simulate};
use lk_simulator::time::{Clock, MonotonicClock, SimulatedClock};
use lk_simulator::workload::{DelayDistribution, Workload};

fn seed() -> u64 {
    let seed = std::env::var("LK_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(20_261_125);
    eprintln!("seed {seed} (set LK_SEED to replay another)");
    seed
}

fn scenario(name: &str) -> Workload {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    Workload::from_file(&path).unwrap_or_else(|error| panic!("{error}"))
}

/// A small city at 20k events/s with every kind of disorder switched on.
fn small_disordered(seed: u64) -> Workload {
    let text = r#"
        [run]
        rate_eps = 20000
        shards = 4
        [lateness]
        distribution = "lognormal"
        median = "100ms"
        sigma = 1.0
        offline_fraction = 0.01
        offline_min = "1s"
        offline_max = "5s"
        [duplicates]
        fraction = 0.01
        retry_delay = "200ms"
        [malformed]
        fraction = 0.005
        [clock_skew]
        fraction = 0.05
        stddev = "2s"
    "#;
    Workload::from_toml(text, "small-disordered.toml").unwrap().with_seed(seed)
}

fn digest_of(scenario: &Workload, threads: usize, events: u64) -> (String, u64) {
    digest_on(scenario, threads, false, events)
}

fn digest_on(scenario: &Workload, threads: usize, background: bool, events: u64) -> (String, u64) {
    let mut generator = Generator::new(
        scenario,
        GeneratorOptions { threads, background, limit_events: Some(events), limit_due_ns: None },
    );
    let mut digest = StreamDigest::default();
    let mut count = 0;
    while let Some(batch) = generator.next_batch() {
        digest.update(batch);
        count += batch.len() as u64;
    }
    (digest.hex(), count)
}

fn collect(
    scenario: &Workload,
    events: u64,
) -> (Vec<Event>, lk_simulator::InjectedCounts, Vec<(usize, lk_simulator::Defect)>) {
    let mut generator = Generator::new(
        scenario,
        GeneratorOptions { threads: 1, background: false, limit_events: Some(events), limit_due_ns: None },
    );
    let mut all = Vec::new();
    let mut defects = Vec::new();
    while let Some(batch) = generator.next_batch() {
        defects.extend(batch.defects.iter().map(|&(index, defect)| (all.len() + index as usize, defect)));
        all.extend_from_slice(&batch.events);
    }
    (all, generator.counts().clone(), defects)
}

#[test]
fn the_stream_is_the_same_for_any_thread_count() {
    let scenario = small_disordered(seed());
    let (one, count) = digest_of(&scenario, 1, 300_000);
    assert_eq!(count, 300_000);
    for threads in [2, 3, 4] {
        assert_eq!(digest_of(&scenario, threads, 300_000).0, one, "{threads} threads");
    }
    // One shard thread besides the caller (how `lk run` generates) gives the same stream too.
    assert_eq!(digest_on(&scenario, 1, true, 300_000).0, one, "one background thread");
    // A rate that swings and a hot driver every shard sends for are functions of the seed too.
    let text = "[run]\nrate_eps = 20000\nshards = 4\n[run.burstiness]\ncv = 0.4\ncorrelation = \"200ms\"\n\
                [fleet]\nhot_driver_share = 0.05\n[lateness]\noffline_fraction = 0.02\noffline_min = \"2s\"\n\
                offline_max = \"20s\"\n";
    let swinging = Workload::from_toml(text, "swinging.toml").unwrap().with_seed(seed());
    let (one, _) = digest_of(&swinging, 1, 300_000);
    for threads in [2, 4] {
        assert_eq!(digest_of(&swinging, threads, 300_000).0, one, "swinging, {threads} threads");
    }
}

/// One driver sends the configured share of the pings, from one place, never on a ride.
#[test]
fn a_hot_driver_sends_its_share_of_the_pings_from_where_it_is_parked() {
    let text = "[run]\nrate_eps = 20000\nshards = 4\n[fleet]\nhot_driver_share = 0.05\n";
    let scenario = Workload::from_toml(text, "hot.toml").unwrap().with_seed(seed());
    let (events, _, _) = collect(&scenario, 200_000);
    let pings = events.iter().filter(|event| matches!(event.payload, Payload::DriverPing { .. })).count();
    let hot: Vec<&Event> = events.iter().filter(|event| event.payload.driver_id() == Some(1)).collect();
    let share = hot.len() as f64 / pings as f64;
    assert!((0.045..0.055).contains(&share), "{share}");
    assert!(
        hot.iter().all(|event| matches!(event.payload, Payload::DriverPing { .. })),
        "the hot driver takes no ride"
    );
    assert!(hot.iter().all(|event| event.position == hot[0].position), "it does not move");
    // Without the setting, driver 1 is one driver among thousands.
    let plain = Workload::from_toml("[run]\nrate_eps = 20000\nshards = 4\n", "plain.toml").unwrap().with_seed(seed());
    let (events, _, _) = collect(&plain, 200_000);
    assert!(events.iter().filter(|event| event.payload.driver_id() == Some(1)).count() < 100);
}

#[test]
fn the_stream_is_the_same_paced_or_flat_out_and_differs_by_seed() {
    let seed = seed();
    let scenario = small_disordered(seed).with_duration(Some(Duration::from_secs(2)));
    let run = |pacing, clock: Arc<dyn Clock>| {
        let options = SimulateOptions {
            generator: GeneratorOptions::for_scenario(&scenario),
            pacing,
            format: Format::Bin,
            profile: false,
        };
        let mut sink = Vec::new();
        let summary = simulate(&scenario, &options, clock, Some(&mut sink), &mut |_| {}).unwrap();
        (summary, sink)
    };
    let simulated = SimulatedClock::new();
    let (paced, paced_bytes) = run(Pacing::Scheduled, simulated.clone());
    let (flat_out, flat_out_bytes) = run(Pacing::Max, Arc::new(MonotonicClock::new()));
    assert_eq!(paced.digest, flat_out.digest);
    assert_eq!(paced_bytes, flat_out_bytes);
    assert_eq!(paced.events, 40_000, "2 s at 20k events/s");
    // Paced on a simulated clock, the run takes exactly its schedule and is never late.
    assert_eq!(paced.max_schedule_lag_ms, 0.0);
    assert!((1.99..=2.0).contains(&paced.seconds), "{}", paced.seconds);
    let (other_seed, _) = digest_of(&small_disordered(seed.wrapping_add(1)), 1, 40_000);
    assert_ne!(other_seed, paced.digest);
}

#[test]
fn a_clean_scenario_is_in_event_time_order_with_nothing_injected() {
    let mut scenario = scenario("quickstart").with_seed(seed());
    scenario.lateness.distribution = DelayDistribution::None;
    scenario.lateness.offline_fraction = 0.0;
    scenario.duplicates.fraction = 0.0;
    scenario.malformed_fraction = 0.0;
    let (events, counts, defects) = collect(&scenario, 200_000);
    assert!(events.windows(2).all(|pair| pair[0].event_time_us <= pair[1].event_time_us));
    assert!(events.windows(2).all(|pair| pair[0].due_ns <= pair[1].due_ns));
    assert_eq!((counts.late, counts.out_of_order, counts.duplicates, counts.malformed), (0, 0, 0, 0));
    assert!(defects.is_empty());
    let ids: BTreeSet<u64> = events.iter().map(|event| event.event_id).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
}

#[test]
fn injected_counts_match_the_configuration_and_the_stream() {
    let scenario = small_disordered(seed());
    let (events, counts, defects) = collect(&scenario, 400_000);
    assert_eq!(counts.events, 400_000);
    // Duplicates: the same id twice, and the count the generator reports.
    let mut seen = BTreeMap::new();
    for event in &events {
        *seen.entry(event.event_id).or_insert(0u32) += 1;
    }
    let repeated: u64 = seen.values().map(|&times| u64::from(times - 1)).sum();
    assert_eq!(repeated, counts.duplicates);
    let expected = 0.01 * 400_000.0;
    assert!((counts.duplicates as f64 - expected).abs() < expected * 0.15, "{} duplicates", counts.duplicates);
    // Malformed events, at their fraction, every one a decode error of its class in both codecs.
    let expected = 0.005 * 400_000.0;
    assert!((counts.malformed as f64 - expected).abs() < expected * 0.2, "{} malformed", counts.malformed);
    assert_eq!(defects.len() as u64, counts.malformed);
    assert_eq!(counts.malformed_by_defect.iter().sum::<u64>(), counts.malformed);
    // Out of order and late: lognormal(100 ms, 1) exceeds 1 s for 1.1% of events; offline
    // hold-backs (1% at 1-5 s) are all late.
    assert!(counts.out_of_order > 100_000, "{}", counts.out_of_order);
    let late_share = counts.late as f64 / 400_000.0;
    assert!((0.012..0.03).contains(&late_share), "late share {late_share}");
    assert!(counts.held_back > 2_000, "{}", counts.held_back);
    assert!(counts.skewed > 5_000, "{}", counts.skewed);
}

#[test]
fn malformed_events_fail_to_decode_and_nothing_else_does() {
    let scenario = small_disordered(seed());
    let mut generator = Generator::new(
        &scenario,
        GeneratorOptions { threads: 1, background: false, limit_events: Some(50_000), limit_due_ns: None },
    );
    while let Some(batch) = generator.next_batch() {
        let (mut binary, mut json) = (Vec::new(), Vec::new());
        encode_binary_batch(batch, &mut binary);
        encode_json_batch(batch, &mut json);
        let check = |index: usize, result: Result<Event, lk_simulator::codec::DecodeError>| match batch.defect_of(index)
        {
            Some(defect) => assert_eq!(result.unwrap_err().defect(), defect, "event {index}"),
            None => assert_eq!(result, Ok(batch.events[index])),
        };
        decode_binary_stream(&binary, check);
        decode_json_stream(&json, check);
    }
}

#[test]
fn rides_follow_their_lifecycle_and_stay_in_the_city() {
    let mut scenario = scenario("quickstart").with_seed(seed());
    scenario.lateness.distribution = DelayDistribution::None;
    scenario.lateness.offline_fraction = 0.0;
    scenario.duplicates.fraction = 0.0;
    scenario.malformed_fraction = 0.0;
    // Compress time so that rides (about 20 minutes) complete within a short run: 40 minutes.
    scenario.run.rate_eps = 200_000.0;
    scenario.run.time_compression = 240.0;
    let (events, _, _) = collect(&scenario, 2_000_000);
    let bbox = scenario.city.bbox;
    let mut kinds = BTreeMap::<EventKind, u64>::new();
    let mut rides = BTreeMap::<u64, Vec<EventKind>>::new();
    for event in &events {
        *kinds.entry(event.kind()).or_default() += 1;
        assert!((bbox.south..=bbox.north).contains(&event.position.lat()), "{event:?}");
        assert!((bbox.west..=bbox.east).contains(&event.position.lon()), "{event:?}");
        assert!(event.zone.is_valid_cell());
        if let Some(ride) = event.payload.ride_id() {
            rides.entry(ride).or_default().push(event.kind());
        }
    }
    for kind in EventKind::ALL {
        assert!(kinds.get(&kind).copied().unwrap_or(0) > 0, "no {kind:?} events: {kinds:?}");
    }
    let pings = kinds[&EventKind::DriverPing] as f64 / events.len() as f64;
    assert!((0.9..0.999).contains(&pings), "pings are {pings} of the stream");
    use EventKind::*;
    let valid = [
        vec![RideRequested, RideAccepted, DriverArrived, PickedUp, DroppedOff],
        vec![RideRequested, RideCancelled],
        vec![RideRequested, RideAccepted, RideCancelled],
        vec![RideRequested, RideAccepted, DriverArrived, RideCancelled],
    ];
    let (mut completed, mut warm, mut redispatched) = (0, 0, 0);
    for (ride, sequence) in &rides {
        if sequence.first() == Some(&RideRequested) {
            // A driver's cancellation with more of the ride after it was re-dispatched: the
            // ride goes on from its request.
            let mut sequence = sequence.clone();
            while let Some(at) = (1..sequence.len().saturating_sub(2))
                .find(|&at| sequence[at] == RideAccepted && sequence[at + 1] == RideCancelled)
            {
                sequence.drain(at..at + 2);
                redispatched += 1;
            }
            let sequence = &sequence;
            let is_prefix = valid.iter().any(|path| path.starts_with(sequence));
            assert!(is_prefix, "ride {ride} went {sequence:?}");
        } else {
            // A ride under way when the stream began (a warm start): the rest of a ride that was
            // accepted before, from the driver's arrival, the pickup or the drop-off on.
            let rest = [DriverArrived, PickedUp, DroppedOff];
            assert!(
                rest.ends_with(sequence) || rest.starts_with(sequence) || sequence == &rest[1..2],
                "ride {ride} went {sequence:?}"
            );
            warm += 1;
        }
        completed += usize::from(sequence.last() == Some(&DroppedOff));
    }
    assert!(warm > 100, "only {warm} rides were under way at the start");
    assert!(redispatched > 10, "only {redispatched} rides were re-dispatched after their driver cancelled");
    assert!(completed > 100, "only {completed} rides completed");
    let fares: Vec<u32> = events
        .iter()
        .filter_map(|event| match event.payload {
            Payload::DroppedOff { fare_cents, .. } => Some(fare_cents),
            _ => None,
        })
        .collect();
    // Every fare is at least the $8 minimum. Ten minutes of event time complete mostly short
    // rides, so the mean sits a little above the minimum (about $10 over several seeds): above
    // it, because some rides are longer, and far below an implausible $60.
    assert!(fares.iter().all(|&fare| fare >= 800), "a fare below the minimum: {:?}", fares.iter().min());
    let mean_fare = fares.iter().map(|&fare| f64::from(fare)).sum::<f64>() / fares.len() as f64 / 100.0;
    assert!(mean_fare > 8.5 && mean_fare < 60.0, "mean fare ${mean_fare}");
}

#[test]
fn drivers_have_sessions_with_real_gaps() {
    let seed = seed();
    let mut scenario = scenario("history").with_seed(seed);
    scenario.lateness.distribution = DelayDistribution::None;
    scenario.duplicates.fraction = 0.0;
    scenario.malformed_fraction = 0.0;
    // 8 hours of event time.
    let events = (scenario.event_time_rate_eps() * 8.0 * 3600.0) as u64;
    let (events, _, _) = collect(&scenario, events);
    let mut last_ping = BTreeMap::<u32, i64>::new();
    let mut gaps_over_ten_minutes = 0;
    let mut pings = 0;
    for event in &events {
        if let Payload::DriverPing { driver_id, .. } = event.payload {
            pings += 1;
            if let Some(previous) = last_ping.insert(driver_id, event.event_time_us)
                && event.event_time_us - previous > 600_000_000
            {
                gaps_over_ten_minutes += 1;
            }
        }
    }
    let drivers = last_ping.len();
    assert!(gaps_over_ten_minutes > drivers / 4, "{gaps_over_ten_minutes} session gaps among {drivers} drivers");
    // While online, a driver pings about every ping interval (5 s in this scenario).
    let online_hours = pings as f64 * 5.0 / 3600.0;
    assert!(online_hours / drivers as f64 > 4.0, "drivers were online {online_hours} hours in all");
}

#[test]
fn event_limits_and_durations_cut_the_stream_exactly() {
    let scenario = small_disordered(seed());
    assert_eq!(digest_of(&scenario, 1, 12_345).1, 12_345);
    // Each shard says where the limit cuts its part of a batch, on the caller's thread or its own.
    for threads in [1, 2] {
        let options =
            GeneratorOptions { threads, background: false, limit_events: None, limit_due_ns: Some(1_500_000_000) };
        let mut generator = Generator::new(&scenario, options);
        let mut last_due = 0;
        while let Some(batch) = generator.next_batch() {
            last_due = batch.events.last().unwrap().due_ns;
        }
        assert_eq!(generator.counts().events, 30_000, "1.5 s at 20k events/s, {threads} threads");
        assert!(last_due < 1_500_000_000);
    }
}

/// Each shard stamps the due times of its own slots, and the merger counts events out of order
/// without a pass over a batch that cannot have any. Both are checked here against the stream:
/// every event's due time is the schedule's for its index, and the counts of events out of
/// order and of the largest disorder are what a recount of the emitted stream finds, for a
/// clean stream (with a shaped rate), one whose only disorder is a few skewed clocks, one
/// disordered every way, on one thread and on two.
#[test]
fn due_times_and_disorder_counts_match_the_stream() {
    let seed = seed();
    let clean = |extra: &str| {
        let text = format!("[run]\nrate_eps = 20000\nshards = 4\n{extra}");
        Workload::from_toml(&text, "clean.toml").unwrap().with_seed(seed)
    };
    let cases = [
        ("clean, sine rate", clean("[run.rate_shape]\nkind = \"sine\"\nperiod = \"3s\"\namplitude = 0.5\n")),
        // A handful of drivers whose clocks run up to a minute off: most batches have no skewed
        // event, but follow one that ran ahead.
        ("a few skewed clocks", clean("[clock_skew]\nfraction = 0.00005\nstddev = \"30s\"\n")),
        ("disordered", small_disordered(seed)),
        ("a swinging rate", clean("[run.burstiness]\ncv = 0.5\ncorrelation = \"100ms\"\n")),
    ];
    for (name, scenario) in cases {
        for threads in [1, 2] {
            let mut generator = Generator::new(
                &scenario,
                GeneratorOptions { threads, background: false, limit_events: Some(300_000), limit_due_ns: None },
            );
            let mut schedule = lk_simulator::schedule::Schedule::new(&scenario.run, scenario.seed);
            let (mut index, mut max_time_us, mut out_of_order, mut max_disorder_us) = (0u64, i64::MIN, 0u64, 0i64);
            while let Some(batch) = generator.next_batch() {
                for event in &batch.events {
                    assert_eq!(
                        event.due_ns,
                        schedule.due_ns(index),
                        "{name}, {threads} threads: due time of event {index}"
                    );
                    if event.event_time_us < max_time_us {
                        out_of_order += 1;
                        max_disorder_us = max_disorder_us.max(max_time_us - event.event_time_us);
                    }
                    max_time_us = max_time_us.max(event.event_time_us);
                    index += 1;
                }
            }
            let counts = generator.counts();
            assert_eq!(index, 300_000, "{name}");
            assert_eq!(
                (counts.out_of_order, counts.max_disorder_us),
                (out_of_order, max_disorder_us),
                "{name}, {threads} threads"
            );
            if name == "a few skewed clocks" {
                assert!(counts.skewed > 0 && counts.skewed < 3_000, "{name}: {} skewed", counts.skewed);
                assert!(out_of_order > counts.skewed, "{name}: only the skewed events themselves are out of order");
            }
        }
    }
}
