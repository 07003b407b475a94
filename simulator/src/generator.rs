//! The generator: shards merged into one deterministic stream, with due times and defects.
//!
//! The scenario fixes the number of shards; threads only decide where shards run. Each round,
//! every shard contributes [`SHARD_BATCH_EVENTS`] events and the merger interleaves them
//! round-robin (event `k` of shard `s` becomes event `k * shards + s` of the round), so the stream
//! is the same for any thread count. The merger then stamps each event's due time from the
//! open-loop [`Schedule`], marks the malformed ones, and counts what was injected.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand_distr::{Distribution, Geometric};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::event::{Defect, Event, EventBatch};
use crate::scenario::Scenario;
use crate::schedule::Schedule;
use crate::shard::{MARK_DUPLICATE, MARK_HELD_BACK, MARK_LATE, MARK_SKEWED, Shard, SharedCity, derive_seed};

/// Events each shard contributes to a round.
pub const SHARD_BATCH_EVENTS: usize = 1024;
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
    pub fn for_scenario(scenario: &Scenario) -> Self {
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
    schedule: Schedule,
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
    pub fn new(scenario: &Scenario, options: GeneratorOptions) -> Self {
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
                    std::thread::Builder::new()
                        .name(format!("lk-shards-{thread}"))
                        .spawn(move || run_shards(city, ends))
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
            schedule: Schedule::new(&scenario.run),
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
        // Event k of shard s becomes event k * shards + s, stamped with its due time.
        let mut due_times = self.schedule.due_times(first_index);
        let mut order = Order { counts: &mut self.counts, max_event_time_us: &mut self.max_event_time_us };
        let limit_due_ns = self.options.limit_due_ns;
        let mut finished = false;
        let outputs = match &mut self.source {
            Source::Inline { shards: list, outputs } => {
                // Each shard writes its events straight into their places in the batch.
                batch.events.resize(SHARD_BATCH_EVENTS * shards, Event::BLANK);
                for (index, (shard, output)) in list.iter_mut().zip(outputs.iter_mut()).enumerate() {
                    output.marks.clear();
                    shard.fill_strided(&mut batch.events[index..], shards, &mut output.marks);
                }
                let mut stamped = 0;
                for event in &mut batch.events {
                    let due_ns = due_times.next().expect("due times never end");
                    if stamped == keep || limit_due_ns.is_some_and(|limit| due_ns >= limit) {
                        finished = true;
                        break;
                    }
                    event.due_ns = due_ns;
                    order.observe(event.event_time_us);
                    stamped += 1;
                }
                batch.events.truncate(stamped);
                outputs
            }
            Source::Threaded { from_shards, to_shards, outputs, .. } => {
                for ((receiver, sender), output) in from_shards.iter().zip(to_shards.iter()).zip(outputs.iter_mut()) {
                    let fresh = receiver.recv().expect("a generator thread died; its panic message is above");
                    let used = std::mem::replace(output, fresh);
                    // The shard thread reuses the buffer; if it has enough spares, let this one go.
                    let _ = sender.try_send(used);
                }
                batch.events.clear();
                'merge: for k in 0..SHARD_BATCH_EVENTS {
                    for output in outputs.iter() {
                        let due_ns = due_times.next().expect("due times never end");
                        if batch.events.len() == keep || limit_due_ns.is_some_and(|limit| due_ns >= limit) {
                            finished = true;
                            break 'merge;
                        }
                        let event = Event { due_ns, ..output.events[k] };
                        order.observe(event.event_time_us);
                        batch.events.push(event);
                    }
                }
                outputs
            }
        };
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

/// Counts the events that come out of order in event time, as the merger stamps them.
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
fn run_shards(city: Arc<SharedCity>, ends: Vec<ShardEnds>) {
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
            shard.fill_strided(&mut output.events, 1, &mut output.marks);
            if sender.send(output).is_err() {
                return;
            }
        }
    }
}
