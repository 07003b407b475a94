//! The generator: shards merged into one deterministic stream, with due times and defects.
//!
//! The scenario fixes the number of shards; threads only decide where shards run. Each round,
//! every shard contributes [`SHARD_BATCH_EVENTS`] events and the merger interleaves them
//! round-robin (event `k` of shard `s` becomes event `k * shards + s` of the round), so the stream
//! is the same for any thread count. Each shard stamps its events with the due times of the
//! slots they take in the stream (from the open-loop [`crate::schedule::Schedule`]); the merger
//! cuts the batch at the run's limits, marks the malformed events, and counts what was injected.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand_distr::{Distribution, Geometric};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::event::{Defect, Event, EventBatch};
use crate::shard::{MARK_DUPLICATE, MARK_HELD_BACK, MARK_LATE, MARK_SKEWED, Shard, SharedCity, derive_seed};
use crate::workload::Workload;

/// Events each shard contributes to a round. The stream does not depend on it (event `k` of
/// shard `s` is event `k * shards + s` of the stream, whatever the rounds). At 256, a batch of
/// rush hour's eight shards (128 KB) and its encoding stay in L2 between the shards' writes and
/// the encoder's reads; at 1024 the clean binary bench ran 5-10% slower. `lk run` at rush hour
/// measured the same either way.
pub const SHARD_BATCH_EVENTS: usize = 256;
/// Rounds a shard thread may run ahead of the merger (bounds memory to a few MiB per shard).
const ROUNDS_AHEAD: usize = 2;

/// What the generator put into the stream, so that checkers know the truth.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedCounts {
    /// Events emitted, duplicates and malformed ones included.
    pub events: u64,
    /// Re-sent copies of earlier events (same `event_id`).
    pub duplicates: u64,
    /// Events delivered more than `lateness.late_after` after they happened.
    pub late: u64,
    /// Events emitted after an event with a later event time.
    pub out_of_order: u64,
    /// Events held back by offline phones (a subset of the delayed ones).
    pub held_back: u64,
    /// Events whose time comes from a skewed phone clock.
    pub skewed: u64,
    /// Events written malformed.
    pub malformed: u64,
    /// Malformed events by defect: garbled, missing field, out of range, unknown kind.
    pub malformed_by_defect: [u64; 4],
    /// The largest amount by which an event's time trailed the latest event time seen before it.
    pub max_disorder_us: i64,
}

/// How to run the generator.
#[derive(Clone, Debug)]
pub struct GeneratorOptions {
    /// Threads to run shards on (capped at the scenario's shard count); 1 runs them inline,
    /// unless `background` is set.
    pub threads: usize,
    /// Fill shards on threads of their own even with one thread, so that the caller's thread
    /// only merges batches. `lk engine produce` does, to keep its producer's thread free for
    /// the log; `lk run` does not: beside the engines on two cores the extra thread cost Kappa
    /// on rush hour its latency (p99 1.6 s against 62 ms inline, measured back to back).
    pub background: bool,
    /// Stop after this many events.
    pub limit_events: Option<u64>,
    /// Stop at the first event due at or after this time (ns since the run's start).
    pub limit_due_ns: Option<u64>,
}

impl GeneratorOptions {
    /// Options that stop where the scenario's duration says, on one thread.
    pub fn for_scenario(scenario: &Workload) -> Self {
        Self {
            threads: 1,
            background: false,
            limit_events: None,
            limit_due_ns: scenario.run.duration.map(|d| d.as_nanos() as u64),
        }
    }
}

/// A shard thread's ends of one shard's channels: its number, where its batches go, and where
/// used buffers come back.
type ShardEnds = (u32, SyncSender<ShardOutput>, Receiver<ShardOutput>);

#[derive(Default)]
struct ShardOutput {
    events: Vec<Event>,
    marks: Vec<(u32, u8)>,
    /// The first event due at or after the limit (`events.len()` if none).
    first_over: usize,
    /// Whether the shard emits every event in its own slot ([`Shard::emits_in_slot_order`]).
    in_slot_order: bool,
}

enum Source {
    Inline {
        shards: Vec<Shard>,
        outputs: Vec<ShardOutput>,
    },
    Threaded {
        from_shards: Vec<Receiver<ShardOutput>>,
        to_shards: Vec<SyncSender<ShardOutput>>,
        workers: Vec<JoinHandle<()>>,
        outputs: Vec<ShardOutput>,
    },
}

/// The stream of a scenario, in batches.
pub struct Generator {
    source: Source,
    shard_count: usize,
    drivers: usize,
    batch: EventBatch,
    options: GeneratorOptions,
    defect_rng: Pcg64Mcg,
    defect_gaps: Option<Geometric>,
    next_defect_at: u64,
    counts: InjectedCounts,
    max_event_time_us: i64,
    finished: bool,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("shards", &self.shard_count)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// A generator for `scenario`. Builds the fleet, so it can take a moment at millions of drivers.
    pub fn new(scenario: &Workload, options: GeneratorOptions) -> Self {
        let city = Arc::new(SharedCity::new(scenario));
        let shard_count = scenario.run.shards as usize;
        let threads = options.threads.clamp(1, shard_count);
        let drivers = city.drivers_per_shard * shard_count;
        let source = if threads == 1 && !options.background {
            Source::Inline {
                shards: (0..shard_count as u32).map(|shard| Shard::new(Arc::clone(&city), shard)).collect(),
                outputs: (0..shard_count).map(|_| ShardOutput::default()).collect(),
            }
        } else {
            let mut from_shards = Vec::with_capacity(shard_count);
            let mut to_shards = Vec::with_capacity(shard_count);
            let mut worker_ends: Vec<Vec<ShardEnds>> = (0..threads).map(|_| Vec::new()).collect();
            for shard in 0..shard_count {
                let (output_sender, output_receiver) = sync_channel(ROUNDS_AHEAD);
                let (recycle_sender, recycle_receiver) = sync_channel(ROUNDS_AHEAD + 1);
                from_shards.push(output_receiver);
                to_shards.push(recycle_sender);
                worker_ends[shard % threads].push((shard as u32, output_sender, recycle_receiver));
            }
            let workers = worker_ends
                .into_iter()
                .enumerate()
                .map(|(thread, ends)| {
                    let city = Arc::clone(&city);
                    let limit_due_ns = options.limit_due_ns.unwrap_or(u64::MAX);
                    std::thread::Builder::new()
                        .name(format!("lk-shards-{thread}"))
                        .spawn(move || run_shards(city, ends, limit_due_ns))
                        .expect("spawning a generator thread")
                })
                .collect();
            Source::Threaded {
                from_shards,
                to_shards,
                workers,
                outputs: (0..shard_count).map(|_| ShardOutput::default()).collect(),
            }
        };
        let defect_gaps = (scenario.malformed_fraction > 0.0)
            .then(|| Geometric::new(scenario.malformed_fraction).expect("validated fraction"));
        let mut defect_rng = Pcg64Mcg::seed_from_u64(derive_seed(scenario.seed, 1));
        let next_defect_at = match &defect_gaps {
            Some(gaps) => gaps.sample(&mut defect_rng),
            None => u64::MAX,
        };
        Self {
            source,
            shard_count,
            drivers,
            batch: EventBatch::with_capacity(shard_count * SHARD_BATCH_EVENTS),
            options,
            defect_rng,
            defect_gaps,
            next_defect_at,
            counts: InjectedCounts::default(),
            max_event_time_us: i64::MIN,
            finished: false,
        }
    }

    /// Drivers in the fleet.
    pub fn drivers(&self) -> usize {
        self.drivers
    }

    /// What has been injected into the events emitted so far.
    pub fn counts(&self) -> &InjectedCounts {
        &self.counts
    }

    /// The next batch in emission order, or `None` when a limit has been reached.
    pub fn next_batch(&mut self) -> Option<&EventBatch> {
        if self.finished {
            return None;
        }
        let shards = self.shard_count;
        let first_index = self.counts.events;
        let mut keep = SHARD_BATCH_EVENTS * shards;
        if let Some(limit) = self.options.limit_events {
            keep = keep.min(limit.saturating_sub(first_index) as usize);
        }
        let batch = &mut self.batch;
        batch.defects.clear();
        // Event k of shard s becomes event k * shards + s; each shard stamps the due times of
        // its own slots, and says where the due-time limit cuts its part of the batch.
        let limit_due_ns = self.options.limit_due_ns.unwrap_or(u64::MAX);
        let mut cut = SHARD_BATCH_EVENTS * shards;
        let (outputs, in_slot_order) = match &mut self.source {
            Source::Inline { shards: list, outputs } => {
                // Each shard writes its events straight into their places in the batch.
                batch.events.resize(SHARD_BATCH_EVENTS * shards, Event::BLANK);
                let mut in_slot_order = true;
                for (index, (shard, output)) in list.iter_mut().zip(outputs.iter_mut()).enumerate() {
                    output.marks.clear();
                    let first_over =
                        shard.fill_strided(&mut batch.events[index..], shards, &mut output.marks, limit_due_ns);
                    cut = cut.min(first_over * shards + index);
                    in_slot_order &= shard.emits_in_slot_order();
                }
                (outputs, in_slot_order)
            }
            Source::Threaded { from_shards, to_shards, outputs, .. } => {
                for ((receiver, sender), output) in from_shards.iter().zip(to_shards.iter()).zip(outputs.iter_mut()) {
                    let fresh = receiver.recv().expect("a generator thread died; its panic message is above");
                    let used = std::mem::replace(output, fresh);
                    // The shard thread reuses the buffer; if it has enough spares, let this one go.
                    let _ = sender.try_send(used);
                }
                batch.events.clear();
                for k in 0..SHARD_BATCH_EVENTS {
                    for output in outputs.iter() {
                        batch.events.push(output.events[k]);
                    }
                }
                for (index, output) in outputs.iter().enumerate() {
                    cut = cut.min(output.first_over * shards + index);
                }
                let in_slot_order = outputs.iter().all(|output| output.in_slot_order);
                (outputs, in_slot_order)
            }
        };
        let keep = keep.min(cut);
        let finished = keep < batch.events.len();
        batch.events.truncate(keep);
        // Out-of-order events, counted in emission order. Shards that emit every event in its
        // slot at the slot's time give times that never decrease (a slot's time is a monotone
        // function of its due time, and its due time of its index in the stream), so a batch of theirs
        // without a skewed clock, starting no earlier than every event before it, has none: a
        // pass over the batch to find that out cost a tenth of the generator's time.
        let skewed = outputs.iter().any(|output| output.marks.iter().any(|&(_, mark)| mark & MARK_SKEWED != 0));
        match batch.events.first() {
            Some(first) if in_slot_order && !skewed && first.event_time_us >= self.max_event_time_us => {
                self.max_event_time_us = batch.events[keep - 1].event_time_us;
            }
            _ => {
                let mut order = Order { counts: &mut self.counts, max_event_time_us: &mut self.max_event_time_us };
                for event in &batch.events {
                    order.observe(event.event_time_us);
                }
            }
        }
        self.finished |= finished;
        let keep = batch.events.len();
        for (shard, output) in outputs.iter().enumerate() {
            for &(k, mark) in &output.marks {
                if (k as usize * shards + shard) < keep {
                    self.counts.duplicates += u64::from(mark & MARK_DUPLICATE != 0);
                    self.counts.held_back += u64::from(mark & MARK_HELD_BACK != 0);
                    self.counts.skewed += u64::from(mark & MARK_SKEWED != 0);
                    self.counts.late += u64::from(mark & MARK_LATE != 0);
                }
            }
        }
        let end_index = first_index + keep as u64;
        while self.next_defect_at < end_index {
            let defect = Defect::ALL[(rand::Rng::random::<u32>(&mut self.defect_rng) % 4) as usize];
            batch.defects.push(((self.next_defect_at - first_index) as u32, defect));
            self.counts.malformed += 1;
            self.counts.malformed_by_defect[defect as usize] += 1;
            let gap = self.defect_gaps.as_ref().expect("defects are on").sample(&mut self.defect_rng);
            self.next_defect_at = self.next_defect_at.saturating_add(1).saturating_add(gap);
        }
        self.counts.events = end_index;
        if batch.is_empty() {
            return None;
        }
        Some(&self.batch)
    }
}

/// Counts the events that come out of order in event time, in emission order.
struct Order<'a> {
    counts: &'a mut InjectedCounts,
    max_event_time_us: &'a mut i64,
}

impl Order<'_> {
    fn observe(&mut self, event_time_us: i64) {
        if event_time_us < *self.max_event_time_us {
            self.counts.out_of_order += 1;
            self.counts.max_disorder_us = self.counts.max_disorder_us.max(*self.max_event_time_us - event_time_us);
        } else {
            *self.max_event_time_us = event_time_us;
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Source::Threaded { from_shards, to_shards, workers, .. } = &mut self.source {
            // Closing the channels ends the shard threads at their next send.
            from_shards.clear();
            to_shards.clear();
            for worker in workers.drain(..) {
                let _ = worker.join();
            }
        }
    }
}

/// A shard thread: builds its shards, then fills batches until the merger hangs up.
fn run_shards(city: Arc<SharedCity>, ends: Vec<ShardEnds>, limit_due_ns: u64) {
    let mut shards: Vec<_> = ends.iter().map(|(shard, _, _)| Shard::new(Arc::clone(&city), *shard)).collect();
    loop {
        for (shard, (_, sender, recycled)) in shards.iter_mut().zip(&ends) {
            let mut output = match recycled.try_recv() {
                Ok(output) => output,
                Err(TryRecvError::Empty) => ShardOutput::default(),
                Err(TryRecvError::Disconnected) => return,
            };
            // A recycled buffer is written over in place; a new one is sized first.
            output.marks.clear();
            output.events.resize(SHARD_BATCH_EVENTS, Event::BLANK);
            output.first_over = shard.fill_strided(&mut output.events, 1, &mut output.marks, limit_due_ns);
            output.in_slot_order = shard.emits_in_slot_order();
            if sender.send(output).is_err() {
                return;
            }
        }
    }
}
