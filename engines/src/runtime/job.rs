//! What every engine's job shares: its control (progress counters, crash switches, the
//! input's end, rescaling), its errors, the observer its workers report to, their reports, the
//! contiguity check on every read of the input, and CPU accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::log::{Log, LogError};
use crate::runtime::{BatchOutcome, TaskCounters};
use crate::sink::dead_letters::DeadLetters;

/// Records an engine reads per partition per step.
pub const READ_BATCH: usize = 8192;

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// The Lambda engine's master dataset failed.
    #[error("{0}")]
    Master(String),
    /// An engine that is not lk's own failed (its process, or what it wrote).
    #[error("{0}")]
    External(String),
    /// A read of the input returned fewer records than the offsets it moved over: the log
    /// skipped records (see [`check_contiguous`]).
    #[error(
        "the log skipped input records: a read of {topic}/{partition} from offset {first} moved to {next} but \
         returned {records} records; the engine stops rather than lose them (a bug in the log backend: \
         please report it with the run's command)"
    )]
    Skipped {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Where the read began.
        first: u64,
        /// Where it said it ended.
        next: u64,
        /// Records it returned.
        records: usize,
    },
    /// A record of the view-change topic could not be read back.
    #[error("the view-change topic {topic}, partition {partition}: {source}")]
    Changelog {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What is wrong.
        source: crate::sink::changelog::ChangelogError,
    },
}

/// Checks that a read of the input from `first` to `next` returned a record for every offset.
/// The input is written by lk's producer, idempotent and never transactional, so its offsets
/// have no gaps. A task's offset moves by the records it processes: had the log moved further
/// (a Kafka reader once stepped over records it never returned), the task would go on from an
/// offset it never reached, count records twice and lose others, all in silence.
pub(crate) fn check_contiguous(
    topic: &str,
    partition: u32,
    first: u64,
    next: u64,
    records: usize,
) -> Result<(), EngineError> {
    if next - first == records as u64 {
        return Ok(());
    }
    Err(EngineError::Skipped { topic: topic.to_owned(), partition, first, next, records })
}

/// Signals between a job and whoever runs it.
#[derive(Debug)]
pub struct JobControl {
    /// Set when no more input will come: workers finish once they have read everything.
    pub input_closed: AtomicBool,
    /// Set to stop at once, without a final checkpoint (a crash).
    pub crash: AtomicBool,
    /// Valid events processed so far, over all workers.
    pub events_processed: AtomicU64,
    /// Fault injection: the job crashes (as `crash`) once this many events are processed.
    pub crash_after_events: AtomicU64,
    /// Fault injection: the job crashes in the middle of its next commit (a checkpoint written
    /// but not yet in place, a master-dataset transaction written but not yet committed).
    pub crash_mid_commit: AtomicBool,
    /// Per partition, the offset of the next record its task will read (for consumer lag).
    pub positions: Box<[AtomicU64]>,
    /// Per partition, the furthest any incarnation of the job has read: a restarted task that
    /// reads below it is replaying.
    pub read_high: Box<[AtomicU64]>,
    /// Records read again after restarts.
    pub replayed: AtomicU64,
    /// Where malformed records go, if anywhere.
    pub dead_letters: Option<Arc<DeadLetters>>,
    /// Workers the next start of the job uses (0: its configuration's).
    pub workers: AtomicU32,
    /// Set with `crash` to stop the job for a rescale rather than a fault.
    pub rescale: AtomicBool,
    /// Transactional sink: per partition, the offset of the output topic the serving store
    /// has been materialised up to (kept across restarts: the serving layer does not crash
    /// with the job), and the clock time it got there.
    pub materialized: Box<[AtomicU64]>,
    /// See `materialized`.
    pub materialized_at_ns: Box<[AtomicU64]>,
    /// Checkpoints (Kappa) or epoch seals (Lambda's speed layer) written so far, by every
    /// incarnation: for live metrics (`lk run --metrics`).
    pub checkpoints_written: AtomicU64,
    /// Lambda's batch runs completed so far, and their wall time in all, µs.
    pub batch_runs: AtomicU64,
    /// See `batch_runs`.
    pub batch_run_us: AtomicU64,
    /// Whether Lambda's batch layer is inside a batch run now (from taking its cutoff until it
    /// serves the views): where a `batch-run` crash lands.
    pub batch_running: AtomicBool,
}

/// The most partitions a scenario may ask for.
pub const MAX_PARTITIONS: usize = 1024;

impl Default for JobControl {
    fn default() -> Self {
        Self {
            input_closed: AtomicBool::new(false),
            crash: AtomicBool::new(false),
            events_processed: AtomicU64::new(0),
            crash_after_events: AtomicU64::new(u64::MAX),
            crash_mid_commit: AtomicBool::new(false),
            positions: (0..MAX_PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            read_high: (0..MAX_PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            replayed: AtomicU64::new(0),
            dead_letters: None,
            workers: AtomicU32::new(0),
            rescale: AtomicBool::new(false),
            materialized: (0..MAX_PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            materialized_at_ns: (0..MAX_PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            checkpoints_written: AtomicU64::new(0),
            batch_runs: AtomicU64::new(0),
            batch_run_us: AtomicU64::new(0),
            batch_running: AtomicBool::new(false),
        }
    }
}

impl JobControl {
    /// Whether the job was told to crash.
    pub fn crashed(&self) -> bool {
        self.crash.load(Ordering::Acquire)
    }

    /// The workers a job configured with `configured` starts with.
    pub fn workers_or(&self, configured: u32) -> u32 {
        match self.workers.load(Ordering::Acquire) {
            0 => configured,
            workers => workers,
        }
    }

    /// Clears the crash flags before a restart.
    pub fn reset_crash(&self) {
        self.rescale.store(false, Ordering::Release);
        self.crash.store(false, Ordering::Release);
        self.crash_mid_commit.store(false, Ordering::Release);
        self.crash_after_events.store(u64::MAX, Ordering::Release);
    }

    /// Records of `partitions` that are in the log but not yet read by the job.
    pub fn lag(&self, log: &dyn Log, topic: &str, partitions: u32) -> Result<u64, LogError> {
        let ends = log.end_offsets(topic)?;
        Ok(ends
            .iter()
            .take(partitions as usize)
            .enumerate()
            .map(|(partition, end)| end.saturating_sub(self.positions[partition].load(Ordering::Relaxed)))
            .sum())
    }

    /// Records of `partitions` read so far (the sum of the positions).
    pub fn consumed(&self, partitions: u32) -> u64 {
        self.positions[..partitions as usize].iter().map(|position| position.load(Ordering::Relaxed)).sum()
    }

    /// How many records to read from `offset` of `partition`: at most `batch`, and not past the
    /// furthest an earlier incarnation read, so that a batch is all replay or all new.
    pub fn read_limit(&self, partition: u32, offset: u64, batch: usize) -> usize {
        let high = self.read_high[partition as usize].load(Ordering::Relaxed);
        if offset < high { batch.min((high - offset) as usize) } else { batch }
    }

    /// Whether reading `first..next` of `partition` is a replay of what an earlier incarnation
    /// read (its results were served then: they are not measured again). Counts the replayed
    /// records.
    pub(crate) fn replaying(&self, partition: u32, first: u64, next: u64) -> bool {
        let high = self.read_high[partition as usize].fetch_max(next, Ordering::Relaxed);
        self.replayed.fetch_add(high.min(next).saturating_sub(first), Ordering::Relaxed);
        next <= high
    }

    pub(crate) fn processed(&self, partition: u32, offset: u64, events: u64) {
        self.positions[partition as usize].store(offset, Ordering::Relaxed);
        let processed = self.events_processed.fetch_add(events, Ordering::Relaxed) + events;
        if processed >= self.crash_after_events.load(Ordering::Relaxed) {
            self.crash.store(true, Ordering::Release);
        }
    }
}

/// Receives a worker's measurements. One per worker, so recording needs no locking.
pub trait WorkerObserver: Send {
    /// A batch's changes became visible in the serving store at `visible_ns` (clock time).
    fn served(&mut self, outcome: &BatchOutcome, visible_ns: u64);
}

/// An observer that records nothing (reprocessing, tests).
#[derive(Debug, Default)]
pub struct NoObserver;

impl WorkerObserver for NoObserver {
    fn served(&mut self, _: &BatchOutcome, _: u64) {}
}

/// What a worker returns.
#[derive(Debug)]
pub struct WorkerReport<O> {
    /// Its observer, with what it recorded.
    pub observer: O,
    /// Its tasks' counters, summed.
    pub counters: TaskCounters,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoint bytes written, the last round's.
    pub checkpoint_bytes: u64,
    /// CPU seconds the worker thread used.
    pub cpu_seconds: f64,
    /// State entries held at the end.
    pub state_entries: usize,
    /// Clock time at which it had read all its input (before its final flush and checkpoint),
    /// or when it stopped.
    pub caught_up_ns: u64,
}

/// CPU seconds (user + system) of the calling thread, from `/proc/thread-self/stat`; 0 where
/// that is not available.
pub fn thread_cpu_seconds() -> f64 {
    proc_cpu_seconds("/proc/thread-self/stat")
}

/// CPU seconds (user + system) of a `/proc/.../stat` file's process or thread.
pub fn proc_cpu_seconds(path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else { return 0.0 };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some(after) = text.rfind(')').map(|at| &text[at + 2..]) else { return 0.0 };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports these in USER_HZ, which is 100 on every platform lk runs on.
    (ticks(11) + ticks(12)) / 100.0
}
