//! The delays the generator draws follow the configured distributions: observed quantiles over a
//! large sample match the analytic ones within a tolerance.

use lk_simulator::LatenessModel;
use lk_simulator::workload::Workload;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

fn sample(lateness_toml: &str, count: usize) -> Vec<f64> {
    let scenario =
        Workload::from_toml(&format!("[lateness]\nmax = \"1d\"\n{lateness_toml}"), "distribution.toml").unwrap();
    let model = LatenessModel::new(&scenario);
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    let mut delays: Vec<f64> = (0..count).map(|_| model.sample_us(&mut rng, None, 0).0 as f64).collect();
    delays.sort_by(f64::total_cmp);
    delays
}

fn observed(sorted: &[f64], probability: f64) -> f64 {
    sorted[((sorted.len() as f64 * probability) as usize).min(sorted.len() - 1)]
}

fn assert_quantiles(name: &str, sorted: &[f64], expected: impl Fn(f64) -> f64) {
    for probability in [0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999] {
        let (observed, expected) = (observed(sorted, probability), expected(probability));
        let error = (observed - expected).abs() / expected;
        // Sampling error grows in the tail: 2% in the body, 8% at p99.9 of 400k draws.
        let tolerance = if probability >= 0.999 {
            0.08
        } else if probability >= 0.99 {
            0.04
        } else {
            0.02
        };
        assert!(error < tolerance, "{name} p{probability}: observed {observed:.0} µs, expected {expected:.0} µs");
    }
}

const DRAWS: usize = 400_000;

#[test]
fn exponential_delays() {
    let sorted = sample("distribution = \"exponential\"\nmean = \"200ms\"", DRAWS);
    assert_quantiles("exponential", &sorted, |p| -200_000.0 * (1.0 - p).ln());
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    assert!((mean - 200_000.0).abs() < 2_000.0, "mean {mean}");
}

#[test]
fn lognormal_delays() {
    let sorted = sample("distribution = \"lognormal\"\nmedian = \"80ms\"\nsigma = 0.9", DRAWS);
    // Standard normal quantiles, from tables.
    let z = |p: f64| -> f64 {
        match p {
            0.1 => -1.281_551_6,
            0.25 => -0.674_489_8,
            0.5 => 0.0,
            0.75 => 0.674_489_8,
            0.9 => 1.281_551_6,
            0.99 => 2.326_347_9,
            0.999 => 3.090_232_3,
            _ => unreachable!("only tabled quantiles are checked"),
        }
    };
    assert_quantiles("lognormal", &sorted, |p| 80_000.0 * (0.9 * z(p)).exp());
    let logs: Vec<f64> = sorted.iter().map(|delay| delay.ln()).collect();
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    let sigma = (logs.iter().map(|log| (log - mean).powi(2)).sum::<f64>() / logs.len() as f64).sqrt();
    assert!((mean - 80_000f64.ln()).abs() < 0.01, "mean of logs {mean}");
    assert!((sigma - 0.9).abs() < 0.01, "sigma {sigma}");
}

#[test]
fn pareto_delays() {
    let sorted = sample("distribution = \"pareto\"\nscale = \"40ms\"\nshape = 1.5", DRAWS);
    assert_quantiles("pareto", &sorted, |p| 40_000.0 * (1.0 - p).powf(-1.0 / 1.5));
    assert!(sorted[0] >= 40_000.0 - 1.0, "Pareto never goes below its scale");
}

/// A phone offline for 2% of its time, in outages of one to three minutes: its share is held,
/// each outage is one to three minutes long, and everything recorded during one is delivered
/// together when the phone reconnects, a burst of its buffer. Events no phone sends are never
/// held.
#[test]
fn offline_phones_deliver_their_buffer_in_one_burst_when_they_reconnect() {
    let scenario = Workload::from_toml(
        "[lateness]\noffline_fraction = 0.02\noffline_min = \"1m\"\noffline_max = \"3m\"",
        "offline.toml",
    )
    .unwrap();
    let model = LatenessModel::new(&scenario);
    let mut rng = Pcg64Mcg::seed_from_u64(3);
    let start_us = 1_780_315_200_000_000i64;
    let (mut held, mut seen, mut outages) = (0u64, 0u64, 0u64);
    for phone in 1..=400u64 {
        // Every second of ten hours; a run of held seconds is one outage.
        let mut outage: Option<(i64, i64)> = None;
        for second in 0..36_000i64 {
            let time_us = start_us + second * 1_000_000;
            let (delay_us, was_held) = model.sample_us(&mut rng, Some(phone), time_us);
            seen += 1;
            if was_held {
                held += 1;
                let reconnect_us = time_us + delay_us;
                match &mut outage {
                    Some((first_us, at_us)) => {
                        assert_eq!(*at_us, reconnect_us, "phone {phone}: one outage, one reconnect");
                        assert!(time_us - *first_us < 180_000_000);
                    }
                    None => outage = Some((time_us, reconnect_us)),
                }
                assert!(reconnect_us > time_us && delay_us <= 180_000_000, "{delay_us}");
            } else if let Some((first_us, reconnect_us)) = outage.take() {
                outages += 1;
                // Reconnected within the second before this one, after at least a minute.
                assert!(reconnect_us <= time_us && reconnect_us > time_us - 1_000_000, "phone {phone}");
                // (The first second's outage may have begun before it.)
                assert!(
                    first_us == start_us || reconnect_us - first_us >= 59_000_000,
                    "an outage of {} s",
                    (reconnect_us - first_us) / 1_000_000
                );
            }
        }
    }
    let share = held as f64 / seen as f64;
    assert!((share - 0.02).abs() < 0.003, "{share}");
    // One outage an hour and a half a phone, in ten hours of 400 phones.
    assert!((2_000..3_400).contains(&outages), "{outages}");
    assert!((0..DRAWS).all(|_| !model.sample_us(&mut rng, None, start_us).1));
}

#[test]
fn offline_shares_no_outage_can_hold_are_refused() {
    let error = Workload::from_toml(
        "[lateness]\noffline_fraction = 0.8\noffline_min = \"1m\"\noffline_max = \"3m\"",
        "offline.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("lateness.offline_fraction") && error.contains("at most 0.67"), "{error}");
}

#[test]
fn delays_are_capped() {
    let scenario = Workload::from_toml(
        "[lateness]\ndistribution = \"pareto\"\nscale = \"1s\"\nshape = 0.5\nmax = \"10s\"",
        "capped.toml",
    )
    .unwrap();
    let model = LatenessModel::new(&scenario);
    let mut rng = Pcg64Mcg::seed_from_u64(5);
    assert!((0..DRAWS).all(|_| model.sample_us(&mut rng, None, 0).0 <= 10_000_000));
}
