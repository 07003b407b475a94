//! The generator against its peer, the Nexmark generator, on one core, in one benchmark group.
//!
//! Every function produces one batch worth of events per iteration (8192), so the reported
//! element throughput is events per second. Run with `cargo bench -p lk-simulator --bench
//! generator`. For the ratios to Nexmark the README records, see `generator_ratios`: it interleaves
//! the contestants, where this runs each for seconds one after the other.
#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lk_simulator::codec::{encode_binary_batch, encode_json_batch};
use lk_simulator::generator::{Generator, GeneratorOptions, SHARD_BATCH_EVENTS};
use lk_simulator::workload::Workload;

mod common;
use common::{clean, scenario};

fn unlimited(scenario: &Workload) -> Generator {
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
