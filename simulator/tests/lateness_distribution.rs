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
    let mut delays: Vec<f64> = (0..count).map(|_| model.sample_us(&mut rng).0 as f64).collect();
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

#[test]
fn offline_phones_hold_back_their_share_within_their_window() {
    let scenario = Workload::from_toml(
        "[lateness]\noffline_fraction = 0.02\noffline_min = \"1m\"\noffline_max = \"3m\"",
        "offline.toml",
    )
    .unwrap();
    let model = LatenessModel::new(&scenario);
    let mut rng = Pcg64Mcg::seed_from_u64(3);
    let held: Vec<i64> =
        (0..DRAWS).map(|_| model.sample_us(&mut rng)).filter(|&(_, held)| held).map(|(delay, _)| delay).collect();
    let share = held.len() as f64 / DRAWS as f64;
    assert!((share - 0.02).abs() < 0.002, "{share}");
    assert!(held.iter().all(|delay| (60_000_000..=180_000_000).contains(delay)));
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
    assert!((0..DRAWS).all(|_| model.sample_us(&mut rng).0 <= 10_000_000));
}
