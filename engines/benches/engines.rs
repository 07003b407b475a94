//! Criterion benchmarks of the log (append, read) and of the streaming runtime's window
//! operators, on one core. `cargo bench -p lk-engines --bench engines`.
#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lk_engines::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use lk_engines::log::{Log, RecordBatch};
use lk_engines::runtime::queries::QueryConfig;
use lk_engines::runtime::{BatchOutcome, Task};
use lk_engines::settings::EngineSections;
use lk_engines::sink::serving::ViewChanges;
use lk_simulator::codec::{BINARY_RECORD_BYTES, encode_binary_batch};
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::workload::Workload;

const BATCH: usize = 8192;

fn log(c: &mut Criterion) {
    let directory = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
    log.create_topic("bench", 1).unwrap();
    let mut batch = RecordBatch::new();
    for key in 0..BATCH as u64 {
        batch.push(key, &[7u8; BINARY_RECORD_BYTES]);
    }
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append/8192x64B", |b| b.iter(|| log.append("bench", 0, black_box(&batch)).unwrap()));
    // Reads cycle through at least 200 batches (several segments, most of them cold on disk),
    // whether or not the append benchmark ran first.
    while log.end_offset("bench", 0).unwrap() < 200 * BATCH as u64 {
        log.append("bench", 0, &batch).unwrap();
    }
    let end = log.end_offset("bench", 0).unwrap();
    let mut out = RecordBatch::new();
    let mut offset = 0;
    group.bench_function("read/8192x64B", |b| {
        b.iter(|| {
            out.clear();
            if offset + BATCH as u64 > end {
                offset = 0;
            }
            offset = log.read("bench", 0, offset, BATCH, &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

fn operators(c: &mut Criterion) {
    // One partition of the quickstart's stream, encoded once, processed over and over by a task
    // that keeps its state between iterations (so windows fill, fire and purge as in a run).
    let text = "[run]\nrate_eps = 100000\ntime_compression = 30\n";
    let scenario = Workload::from_toml(text, "bench.toml").unwrap();
    let sections = EngineSections::from_toml(text, "bench.toml").unwrap();
    let queries = QueryConfig::new(&sections.windows, &sections.watermark);
    let mut generator = Generator::new(
        &scenario,
        GeneratorOptions { threads: 1, background: false, limit_events: Some(2_000_000), limit_due_ns: None },
    );
    // Cut into batches of `BATCH` records, whatever the generator's own batch size.
    let mut encoded = Vec::new();
    while let Some(events) = generator.next_batch() {
        encode_binary_batch(events, &mut encoded);
    }
    let batches: Vec<RecordBatch> = encoded
        .chunks_exact(BATCH * BINARY_RECORD_BYTES)
        .map(|records| {
            let mut batch = RecordBatch::new();
            for record in records.chunks_exact(BINARY_RECORD_BYTES) {
                batch.push(0, record);
            }
            batch
        })
        .collect();
    let mut group = c.benchmark_group("operators");
    group.throughput(Throughput::Elements(batches[0].len() as u64));
    let mut task = Task::new(0, 1, queries, 0);
    let (mut changes, mut outcome) = (ViewChanges::default(), BatchOutcome::default());
    let mut next = 0;
    group.bench_function("all-five-queries/8192-events", |b| {
        b.iter(|| {
            if next == batches.len() {
                next = 0;
                task = Task::new(0, 1, queries, 0);
            }
            changes.clear();
            task.process(&batches[next], &mut changes, &mut outcome);
            next += 1;
            black_box(changes.locations.len())
        })
    });
    group.finish();
}

criterion_group!(benches, log, operators);
criterion_main!(benches);
