//! The generator against its peer, the Nexmark generator, on one core, in one benchmark group.
//!
//! Every function produces one batch worth of events per iteration (8192), so the reported
//! element throughput is events per second. Run with `cargo bench -p lk-simulator --bench
//! generator`; the README records the figures and the ratios to Nexmark measured in the same run.
#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lk_simulator::codec::{encode_binary_batch, encode_json_batch};
use lk_simulator::generator::{Generator, GeneratorOptions, SHARD_BATCH_EVENTS};
use lk_simulator::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    Scenario::from_file(&path).unwrap_or_else(|error| panic!("{error}"))
}

/// Rush hour's rate and city, with every kind of disorder switched off.
fn clean(mut scenario: Scenario) -> Scenario {
    scenario.lateness.distribution = lk_simulator::scenario::DelayDistribution::None;
    scenario.lateness.offline_fraction = 0.0;
    scenario.duplicates.fraction = 0.0;
    scenario.malformed_fraction = 0.0;
    scenario.clock_skew.fraction = 0.0;
    scenario.demand.surges.clear();
    scenario
}

fn unlimited(scenario: &Scenario) -> Generator {
    Generator::new(scenario, GeneratorOptions { threads: 1, background: false, limit_events: None, limit_due_ns: None })
}

fn generator(c: &mut Criterion) {
    let rush_hour = scenario("rush-hour");
    let clean = clean(rush_hour.clone());
    let batch_events = rush_hour.run.shards as usize * SHARD_BATCH_EVENTS;
    let mut group = c.benchmark_group("generator");
    group.throughput(Throughput::Elements(batch_events as u64));
    group.sample_size(30);

    let mut nexmark = nexmark::EventGenerator::new(nexmark::config::NexmarkConfig::default());
    group.bench_function("nexmark/structs", |b| {
        b.iter(|| {
            for _ in 0..batch_events {
                black_box(nexmark.next());
            }
        })
    });
    let mut json = Vec::with_capacity(batch_events * 256);
    group.bench_function("nexmark/json", |b| {
        b.iter(|| {
            json.clear();
            for _ in 0..batch_events {
                let event = nexmark.next().expect("nexmark is unbounded");
                serde_json::to_writer(&mut json, &event).expect("serialises");
                json.push(b'\n');
            }
            black_box(json.len())
        })
    });

    let mut out = Vec::with_capacity(batch_events * 256);
    for (name, scenario, json_output) in
        [("lk/bin-clean", &clean, false), ("lk/bin-rush-hour", &rush_hour, false), ("lk/json-clean", &clean, true)]
    {
        let mut generator = unlimited(scenario);
        group.bench_function(name, |b| {
            b.iter(|| {
                let batch = generator.next_batch().expect("unlimited");
                out.clear();
                if json_output {
                    encode_json_batch(batch, &mut out);
                } else {
                    encode_binary_batch(batch, &mut out);
                }
                black_box(out.len())
            })
        });
    }
    let mut generator = unlimited(&clean);
    group
        .bench_function("lk/structs-clean", |b| b.iter(|| black_box(generator.next_batch().expect("unlimited").len())));
    group.finish();
}

criterion_group!(benches, generator);
criterion_main!(benches);
