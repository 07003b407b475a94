//! The generator's ratios to its peer, the Nexmark generator, measured interleaved.
//!
//! On a shared machine a neighbour's load comes and goes within seconds, so two benchmarks run
//! one after the other (as criterion runs them) can see different machines: the Nexmark peer
//! alone has measured anywhere from 1.3 to 2.0 M events/s here. This harness runs every
//! contestant in short slices, round after round in a rotating order, and takes each round's
//! ratio to the peer that ran beside it; it reports the median ratio over the rounds with its
//! spread. Run with `cargo bench -p lk-simulator --bench generator_ratios`
//! (`LK_BENCH_ROUNDS`, default 21; `LK_BENCH_SLICE_MS`, default 150; `LK_BENCH_ONLY`, a
//! comma-separated list of contestants to run alone, for a profiler: no ratio for one whose
//! peer is left out; `LK_BENCH_SKIP`, default 0, events each lk contestant generates and
//! discards before it is measured: the generator slows as rides build up and the fleet
//! disperses, over the first twenty minutes or so of event time, and a run of the default
//! harness sees only the first ~100 s; 500000000 measures from about 500 s in at rush hour).

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks time themselves with the wall clock")]
#![allow(missing_docs, reason = "a benchmark binary")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use lk_simulator::codec::{encode_binary_batch, encode_json_batch};
use lk_simulator::generator::{Generator, GeneratorOptions, SHARD_BATCH_EVENTS};
use lk_simulator::workload::Workload;

mod common;
use common::{clean, scenario};

/// One contestant: makes a batch of events per call and says how many.
struct Contestant {
    name: &'static str,
    /// The contestant this one's ratio is taken to, and the target for that ratio.
    peer: Option<(&'static str, f64)>,
    run: Box<dyn FnMut() -> usize>,
    rates: Vec<f64>,
}

fn lk(scenario: &Workload, encoding: Option<bool>) -> Box<dyn FnMut() -> usize> {
    let mut generator = Generator::new(
        scenario,
        GeneratorOptions { threads: 1, background: false, limit_events: None, limit_due_ns: None },
    );
    let skip = env_or("LK_BENCH_SKIP", 0);
    while generator.counts().events < skip {
        generator.next_batch().expect("unlimited");
    }
    let mut out = Vec::with_capacity(scenario.run.shards as usize * SHARD_BATCH_EVENTS * 256);
    Box::new(move || {
        let batch = generator.next_batch().expect("unlimited");
        out.clear();
        match encoding {
            Some(true) => encode_json_batch(batch, &mut out),
            Some(false) => encode_binary_batch(batch, &mut out),
            None => return black_box(batch.len()),
        }
        black_box(out.len());
        batch.len()
    })
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let rounds = env_or("LK_BENCH_ROUNDS", 21) as usize;
    let slice = Duration::from_millis(env_or("LK_BENCH_SLICE_MS", 150));
    let rush_hour = scenario("rush-hour");
    let clean = clean(rush_hour.clone());
    let batch_events = rush_hour.run.shards as usize * SHARD_BATCH_EVENTS;

    let mut nexmark_structs = nexmark::EventGenerator::new(nexmark::config::NexmarkConfig::default());
    let mut nexmark_json = nexmark::EventGenerator::new(nexmark::config::NexmarkConfig::default());
    let mut json = Vec::with_capacity(batch_events * 256);
    let mut contestants = vec![
        Contestant {
            name: "nexmark/structs",
            peer: None,
            run: Box::new(move || {
                for _ in 0..batch_events {
                    black_box(nexmark_structs.next());
                }
                batch_events
            }),
            rates: Vec::new(),
        },
        Contestant {
            name: "nexmark/json",
            peer: None,
            run: Box::new(move || {
                json.clear();
                for _ in 0..batch_events {
                    let event = nexmark_json.next().expect("nexmark is unbounded");
                    serde_json::to_writer(&mut json, &event).expect("serialises");
                    json.push(b'\n');
                }
                black_box(json.len());
                batch_events
            }),
            rates: Vec::new(),
        },
        Contestant {
            name: "lk/structs-clean",
            peer: Some(("nexmark/structs", f64::NAN)),
            run: lk(&clean, None),
            rates: Vec::new(),
        },
        Contestant {
            name: "lk/bin-clean",
            peer: Some(("nexmark/structs", 10.0)),
            run: lk(&clean, Some(false)),
            rates: Vec::new(),
        },
        Contestant {
            name: "lk/bin-rush-hour",
            peer: Some(("nexmark/structs", 3.0)),
            run: lk(&rush_hour, Some(false)),
            rates: Vec::new(),
        },
        Contestant {
            name: "lk/json-clean",
            peer: Some(("nexmark/json", 2.0)),
            run: lk(&clean, Some(true)),
            rates: Vec::new(),
        },
    ];

    if let Ok(only) = std::env::var("LK_BENCH_ONLY") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        contestants.retain(|contestant| only.contains(&contestant.name));
        assert!(!contestants.is_empty(), "LK_BENCH_ONLY names no contestant");
    }

    // Warm up every contestant (caches, the lazily filled zone lattice, allocator pools).
    for contestant in &mut contestants {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            (contestant.run)();
        }
    }
    let count = contestants.len();
    for round in 0..rounds {
        for turn in 0..count {
            let contestant = &mut contestants[(round + turn) % count];
            let start = Instant::now();
            let mut events = 0;
            while start.elapsed() < slice {
                events += (contestant.run)();
            }
            contestant.rates.push(events as f64 / start.elapsed().as_secs_f64());
        }
    }

    println!("generator, one core, {rounds} interleaved rounds of {} ms slices", slice.as_millis());
    println!(
        "{:<18} {:>24} {:>36}",
        "contestant", "M events/s median [p25-p75]", "ratio to peer median [min-max], target"
    );
    for contestant in &contestants {
        let mut rates = contestant.rates.clone();
        rates.sort_by(f64::total_cmp);
        let rate = format!(
            "{:.2} [{:.2}-{:.2}]",
            quantile(&rates, 0.5) / 1e6,
            quantile(&rates, 0.25) / 1e6,
            quantile(&rates, 0.75) / 1e6
        );
        let peer = contestant.peer.and_then(|(peer, target)| {
            contestants.iter().find(|candidate| candidate.name == peer).map(|peer| (peer, target))
        });
        let ratio = peer.map_or_else(String::new, |(peer, target)| {
            let mut ratios: Vec<f64> =
                contestant.rates.iter().zip(&peer.rates).map(|(ours, theirs)| ours / theirs).collect();
            ratios.sort_by(f64::total_cmp);
            let target = if target.is_nan() { String::new() } else { format!(", target {target}x") };
            format!(
                "{:.1}x [{:.1}-{:.1}] to {}{target}",
                quantile(&ratios, 0.5),
                ratios[0],
                ratios[ratios.len() - 1],
                peer.name
            )
        });
        println!("{:<18} {:>24} {:>36}", contestant.name, rate, ratio);
    }
}
