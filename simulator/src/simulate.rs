//! `lk simulate`: run a scenario's generator, paced or flat out, into a sink, and summarise.
//!
//! Pacing is open loop: each slice of about a millisecond of events is released when its last
//! event is due (never early), and how late the first one goes out is the schedule lag. The
//! digest covers the binary encoding of every emitted event, whatever the output format, so the
//! same scenario and seed give the same digest however the run was paced or threaded.

use std::io::{self, Write};
use std::sync::Arc;

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use crate::codec::{BINARY_RECORD_BYTES, encode_binary_batch, encode_json_range};
use crate::event::EventBatch;
use crate::generator::{Generator, GeneratorOptions, InjectedCounts};
use crate::profile::{Profiler, StreamProfile};
use crate::time::Clock;
use crate::workload::Workload;

/// Wire format of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Newline-delimited JSON.
    Json,
    /// Fixed 64-byte records.
    Bin,
}

/// How fast to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Open loop at the scenario's rate.
    Scheduled,
    /// As fast as possible; due times still follow the scenario's rate.
    Max,
}

/// An order-sensitive digest of a stream: XXH3-128 over the binary records.
#[derive(Clone)]
pub struct StreamDigest {
    hasher: Xxh3,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for StreamDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamDigest")
    }
}

impl Default for StreamDigest {
    fn default() -> Self {
        Self { hasher: Xxh3::new(), scratch: Vec::new() }
    }
}

impl StreamDigest {
    /// Adds a batch (its binary encoding, defects included).
    pub fn update(&mut self, batch: &EventBatch) {
        self.scratch.clear();
        encode_binary_batch(batch, &mut self.scratch);
        self.hasher.update(&self.scratch);
    }

    /// Adds bytes that are already the binary encoding of events.
    pub fn update_encoded(&mut self, records: &[u8]) {
        debug_assert_eq!(records.len() % BINARY_RECORD_BYTES, 0);
        self.hasher.update(records);
    }

    /// The digest so far, as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.hasher.digest128())
    }
}

/// Options of a simulate run.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// Generator threads and limits.
    pub generator: GeneratorOptions,
    /// Paced or flat out.
    pub pacing: Pacing,
    /// Output format (also when there is no sink, to measure encoding).
    pub format: Format,
    /// Whether to measure the stream's properties (`lk simulate --profile`).
    pub profile: bool,
}

/// Progress, reported after each batch.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Events emitted so far.
    pub events: u64,
    /// Clock time since the start.
    pub elapsed_ns: u64,
    /// How late the latest slice went out against its schedule.
    pub lag_ns: u64,
}

/// The result of a simulate run; `--export-json` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct SimulateSummary {
    /// Workload name.
    pub scenario: String,
    /// Root seed.
    pub seed: u64,
    /// Output format.
    pub format: Format,
    /// Whether the run was paced at `target_rate_eps` (false for `--rate max`).
    pub paced: bool,
    /// Workload's base rate.
    pub target_rate_eps: f64,
    /// Events emitted.
    pub events: u64,
    /// Wall seconds from the first to the last event written.
    pub seconds: f64,
    /// `events / seconds`.
    pub events_per_second: f64,
    /// Bytes written.
    pub bytes: u64,
    /// XXH3-128 of the binary stream.
    pub digest: String,
    /// The worst lag of a slice behind its schedule, ms.
    pub max_schedule_lag_ms: f64,
    /// Drivers in the fleet.
    pub drivers: usize,
    /// Event-time span covered, seconds.
    pub event_time_seconds: f64,
    /// Events delivered more than `lateness.late_after` after they happened.
    pub late: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Malformed events.
    pub malformed: u64,
    /// Everything the generator injected.
    pub injected: InjectedCounts,
    /// The stream's measured properties, with `--profile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<StreamProfile>,
}

/// Target duration of one paced slice.
const SLICE_NS: u64 = 1_000_000;

/// Open-loop release of batches in slices of about a millisecond of events: each slice goes out
/// when its last event is due, never early, whatever happened to the ones before it.
pub struct Pacer {
    clock: Arc<dyn Clock>,
    start_ns: u64,
    pacing: Pacing,
    slice_events: usize,
    /// How late the latest slice was ready for its release time.
    pub lag_ns: u64,
    /// The worst of those.
    pub max_lag_ns: u64,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").field("slice_events", &self.slice_events).field("max_lag_ns", &self.max_lag_ns).finish()
    }
}

impl Pacer {
    /// A pacer for a run that started at `start_ns` on `clock`, at `rate_eps`.
    pub fn new(clock: Arc<dyn Clock>, start_ns: u64, pacing: Pacing, rate_eps: f64) -> Self {
        let slice_events = ((rate_eps * SLICE_NS as f64 / 1e9) as usize).max(64);
        Self { clock, start_ns, pacing, slice_events, lag_ns: 0, max_lag_ns: 0 }
    }

    /// Calls `send` with each slice of `batch` (a range of its events) once the slice is due.
    pub fn release<E>(
        &mut self,
        batch: &EventBatch,
        mut send: impl FnMut(std::ops::Range<usize>) -> Result<(), E>,
    ) -> Result<(), E> {
        for first in (0..batch.len()).step_by(self.slice_events) {
            let range = first..(first + self.slice_events).min(batch.len());
            // The lag is how late the slice was ready for its release. (The first event of a
            // slice waits up to a slice's length: that is batching delay, not lag.)
            let release_ns = self.start_ns + batch.events[range.end - 1].due_ns;
            self.lag_ns = self.clock.now_ns().saturating_sub(release_ns);
            self.max_lag_ns = self.max_lag_ns.max(self.lag_ns);
            if self.pacing == Pacing::Scheduled {
                self.clock.sleep_until_ns(release_ns);
            }
            send(range)?;
        }
        Ok(())
    }
}

/// Runs `scenario` into `sink` (or nowhere), calling `progress` after every batch.
pub fn simulate(
    scenario: &Workload,
    options: &SimulateOptions,
    clock: Arc<dyn Clock>,
    mut sink: Option<&mut dyn Write>,
    progress: &mut dyn FnMut(Progress),
) -> io::Result<SimulateSummary> {
    // Building a fleet of millions takes a moment; the run's clock starts after it.
    let mut generator = Generator::new(scenario, options.generator.clone());
    let mut digest = StreamDigest::default();
    let mut encoded = Vec::new();
    let mut bytes = 0u64;
    let (mut first_time_us, mut last_time_us) = (i64::MAX, i64::MIN);
    let start_ns = clock.now_ns();
    let mut pacer = Pacer::new(Arc::clone(&clock), start_ns, options.pacing, scenario.run.rate_eps);
    let mut profiler = options.profile.then(|| Profiler::new(scenario));
    while let Some(batch) = generator.next_batch() {
        if let Some(profiler) = &mut profiler {
            profiler.observe(batch);
        }
        encoded.clear();
        encode_binary_batch(batch, &mut encoded);
        digest.update_encoded(&encoded);
        pacer.release(batch, |range| -> io::Result<()> {
            let Some(sink) = sink.as_deref_mut() else {
                if options.format == Format::Json {
                    let mut json = Vec::new();
                    encode_json_range(batch, range, &mut json);
                    bytes += json.len() as u64;
                } else {
                    bytes += (range.len() * BINARY_RECORD_BYTES) as u64;
                }
                return Ok(());
            };
            match options.format {
                Format::Bin => {
                    let slice = &encoded[range.start * BINARY_RECORD_BYTES..range.end * BINARY_RECORD_BYTES];
                    sink.write_all(slice)?;
                    bytes += slice.len() as u64;
                }
                Format::Json => {
                    let mut json = Vec::with_capacity(range.len() * 200);
                    encode_json_range(batch, range, &mut json);
                    sink.write_all(&json)?;
                    bytes += json.len() as u64;
                }
            }
            Ok(())
        })?;
        for event in &batch.events {
            first_time_us = first_time_us.min(event.event_time_us);
            last_time_us = last_time_us.max(event.event_time_us);
        }
        progress(Progress {
            events: generator.counts().events,
            elapsed_ns: clock.now_ns() - start_ns,
            lag_ns: pacer.lag_ns,
        });
    }
    if let Some(sink) = sink {
        sink.flush()?;
    }
    let seconds = (clock.now_ns() - start_ns) as f64 / 1e9;
    let injected = generator.counts().clone();
    Ok(SimulateSummary {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        format: options.format,
        paced: options.pacing == Pacing::Scheduled,
        target_rate_eps: scenario.run.rate_eps,
        events: injected.events,
        seconds,
        events_per_second: if seconds > 0.0 { injected.events as f64 / seconds } else { 0.0 },
        bytes,
        digest: digest.hex(),
        max_schedule_lag_ms: pacer.max_lag_ns as f64 / 1e6,
        drivers: generator.drivers(),
        event_time_seconds: if injected.events > 0 { (last_time_us - first_time_us) as f64 / 1e6 } else { 0.0 },
        late: injected.late,
        duplicates: injected.duplicates,
        malformed: injected.malformed,
        injected,
        profile: profiler.map(Profiler::finish),
    })
}
