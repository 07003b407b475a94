//! The Kappa engine: one stream processor over a replayable log does everything.
//!
//! Worker threads each own some partitions' [`Task`]s. A worker reads a batch from each of its
//! partitions in turn, processes it, and applies the resulting changes to its version of the
//! serving store; every checkpoint interval it writes each task's state and offset to a file
//! (written aside and renamed, so a checkpoint is whole or absent) and then commits the offsets
//! to the consumer group. After a crash, a worker restores its tasks from their checkpoints and
//! replays from the checkpointed offsets: the serving store's writes are idempotent upserts of
//! whole values, so changes made between the checkpoint and the crash are rewritten with the
//! same values, and nothing is lost or counted twice.
//!
//! Reprocessing is the Kappa way: a new job version reads the retained log from its start into
//! a new view version, beside the live one, and is swapped in once it has caught up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use lk_simulator::scenario::Guarantee;
use lk_simulator::time::Clock;

use crate::log::{Log, LogError, RecordBatch, TopicPartition};
use crate::runtime::queries::QueryConfig;
use crate::runtime::{BatchOutcome, Task, TaskCounters, checkpoint};
use crate::sink::dead_letters::DeadLetters;
use crate::sink::serving::{ViewChanges, ViewVersion};

/// Records read per partition per step.
const READ_BATCH: usize = 8192;

/// How a Kappa job runs.
#[derive(Clone, Debug)]
pub struct KappaConfig {
    /// The input topic.
    pub topic: String,
    /// The consumer group (each engine has its own).
    pub group: String,
    /// Worker threads.
    pub workers: u32,
    /// Window sizes and lateness policy.
    pub queries: QueryConfig,
    /// Clock time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Where checkpoints go (one file per partition).
    pub checkpoint_directory: PathBuf,
    /// When offsets are committed and how outputs are written:
    /// - exactly-once: a checkpoint holds a task's state and offset together, and serving
    ///   writes are idempotent upserts, so a replay rewrites the same values;
    /// - at-least-once: offsets are committed with checkpoints, after processing, and Q2, Q3
    ///   and Q5 go to a counter sink ([`ViewVersion::rebase`]), so a replay counts again;
    /// - at-most-once: each batch's offsets are committed before it is processed, and a
    ///   restarted task skips to them, so what was read but not checkpointed is lost.
    pub guarantee: Guarantee,
    /// Where the views go: straight into the serving store, or through the log in
    /// transactions (see [`ViewSink`]).
    pub sink: ViewSink,
    /// Whether task state survives a crash.
    pub state_store: StateStore,
    /// A test knob, zero in every real run: a batch that fired windows waits this long before
    /// its changes are served, so that tests can slow the engine's window results and see the
    /// measured window latency move.
    pub window_serve_delay: Duration,
    /// A test knob, zero in every real run: the worker sleeps this long after every batch, a
    /// slower engine by a set amount, for checking that a regression gate catches it.
    pub batch_delay: Duration,
}

/// Where a Kappa task's state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateStore {
    /// In memory, checkpointed to files with the offsets it goes with (the default).
    #[default]
    Checkpointed,
    /// In memory only: a restarted task starts empty at the group's committed offset. This is
    /// the mistake of an in-memory state store without a changelog; it exists so that tests can
    /// show the checker catching what it loses.
    Memory,
}

/// How an engine's view changes reach its serving store: Kappa's views, Lambda's speed layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ViewSink {
    /// Applied to the serving store as soon as a batch is processed; exactly-once comes from
    /// checkpoints of state and offsets together and idempotent upserts.
    #[default]
    Direct,
    /// Consume-transform-produce, the way Kafka Streams does exactly-once: every
    /// `commit_interval` each task writes its view changes to its partition of `output_topic`
    /// (compacted: the latest change of each row is kept) and its input offset to the consumer
    /// group, in one log transaction. A materialiser reads the output topic, read-committed,
    /// into the serving store: nothing of an aborted or interrupted transaction is ever served,
    /// and a change is served only once its input offsets are committed. The latency price is
    /// up to one commit interval.
    Transactional {
        /// The output topic (created with the input's partition count).
        output_topic: String,
        /// Clock time between a task's transactions.
        commit_interval: Duration,
    },
}

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

fn checkpoint_path(directory: &Path, partition: u32) -> PathBuf {
    directory.join(format!("partition-{partition:04}.ckpt"))
}

/// Runs a Kappa job until its input is closed and read, or until it is told to crash. Returns
/// one report per worker.
pub fn run_job<O: WorkerObserver + 'static>(
    log: Arc<dyn Log>,
    config: &KappaConfig,
    views: Arc<ViewVersion>,
    control: Arc<JobControl>,
    clock: Arc<dyn Clock>,
    make_observer: impl Fn(u32) -> O,
) -> Result<Vec<WorkerReport<O>>, EngineError> {
    let partitions = log.partitions(&config.topic)?;
    std::fs::create_dir_all(&config.checkpoint_directory).map_err(|error| EngineError::Checkpoint {
        path: config.checkpoint_directory.display().to_string(),
        problem: error.to_string(),
    })?;
    let workers = control.workers_or(config.workers).clamp(1, partitions);
    let materializer = match &config.sink {
        ViewSink::Direct => None,
        ViewSink::Transactional { output_topic, .. } => {
            let views = Arc::clone(&views);
            Some(Materializer::start(
                "lk-kappa-materializer",
                &log,
                output_topic,
                partitions,
                &control,
                &clock,
                move |partition, batch, changes| {
                    crate::sink::changelog::decode(batch, |decoded| views.apply(partition, decoded), changes)
                },
            )?)
        }
    };
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let owned: Vec<u32> = (0..partitions).filter(|partition| partition % workers == worker).collect();
            let (log, config, views, control, clock) =
                (Arc::clone(&log), config.clone(), Arc::clone(&views), Arc::clone(&control), Arc::clone(&clock));
            let observer = make_observer(worker);
            std::thread::Builder::new()
                .name(format!("lk-kappa-{worker}"))
                .spawn(move || run_worker(&*log, &config, &views, &control, &*clock, owned, observer))
                .expect("spawning a worker thread")
        })
        .collect();
    let reports: Result<Vec<_>, EngineError> = handles
        .into_iter()
        .map(|handle| handle.join().expect("a Kappa worker panicked; its message is above"))
        .collect();
    if let Some(materializer) = materializer {
        // Every task has committed its last transaction: the materialiser drains the output.
        materializer.finish()?;
    }
    reports
}

/// A transactional sink's materialiser: a thread applying the output topic to the serving side
/// (see [`materialize`]), and how to stop it.
pub(crate) struct Materializer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), EngineError>>,
}

impl Materializer {
    /// Creates the compacted output `topic` (one partition per input partition) and starts
    /// applying it with `apply` on a thread named `name`.
    pub(crate) fn start(
        name: &str,
        log: &Arc<dyn Log>,
        topic: &str,
        partitions: u32,
        control: &Arc<JobControl>,
        clock: &Arc<dyn Clock>,
        apply: impl FnMut(u32, &RecordBatch, &mut ViewChanges) -> Result<(), crate::sink::changelog::ChangelogError>
        + Send
        + 'static,
    ) -> Result<Self, EngineError> {
        log.create_compacted_topic(topic, partitions)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (log, topic, control, clock, stopping) =
            (Arc::clone(log), topic.to_owned(), Arc::clone(control), Arc::clone(clock), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || materialize(&*log, &topic, &control, &*clock, &stopping, apply))
            .expect("spawning a materialiser");
        Ok(Self { stop, thread })
    }

    /// Tells it that every transaction is in, and waits until it has applied the whole topic
    /// (or, after a crash, until it stops).
    pub(crate) fn finish(self) -> Result<(), EngineError> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("a materialiser panicked; its message is above")
    }
}

/// Reads the view-change topic, read-committed, into the serving store, partition by
/// partition from where it left off, until told to stop; then (unless the job crashed) up to
/// the topic's end.
///
/// `apply` decodes one partition's records and applies them; the materialiser records how far
/// it got in `control.materialized`, and when, for the workers' latency.
fn materialize(
    log: &dyn Log,
    topic: &str,
    control: &JobControl,
    clock: &dyn Clock,
    stop: &AtomicBool,
    mut apply: impl FnMut(u32, &RecordBatch, &mut ViewChanges) -> Result<(), crate::sink::changelog::ChangelogError>,
) -> Result<(), EngineError> {
    let partitions = log.partitions(topic)?;
    let mut batch = RecordBatch::new();
    let mut changes = ViewChanges::default();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut progressed = false;
        for partition in 0..partitions {
            let position = control.materialized[partition as usize].load(Ordering::Acquire);
            batch.clear();
            let next = log.read(topic, partition, position, READ_BATCH, &mut batch)?;
            if next == position {
                continue;
            }
            progressed = true;
            apply(partition, &batch, &mut changes).map_err(|source| EngineError::Changelog {
                topic: topic.to_owned(),
                partition,
                source,
            })?;
            control.materialized_at_ns[partition as usize].store(clock.now_ns(), Ordering::Release);
            control.materialized[partition as usize].store(next, Ordering::Release);
        }
        if progressed {
            continue;
        }
        if stopping {
            if control.crashed() {
                return Ok(());
            }
            let ends = log.end_offsets(topic)?;
            let drained = ends
                .iter()
                .enumerate()
                .all(|(partition, &end)| control.materialized[partition].load(Ordering::Acquire) >= end);
            if drained {
                return Ok(());
            }
        } else {
            log.wait_for(topic, 0, control.materialized[0].load(Ordering::Acquire), Duration::from_millis(1))?;
        }
    }
}

/// Restores a task from its checkpoint, or starts it at the group's committed offset (or 0);
/// then applies the guarantee's restart rule (see [`KappaConfig::guarantee`]).
fn restore(
    log: &dyn Log,
    config: &KappaConfig,
    views: &ViewVersion,
    partition: u32,
    partitions: u32,
) -> Result<Task, EngineError> {
    let path = checkpoint_path(&config.checkpoint_directory, partition);
    let committed = log.committed_offset(&config.group, &config.topic, partition)?;
    let stored = match config.state_store {
        StateStore::Checkpointed => std::fs::read(&path),
        StateStore::Memory => Err(std::io::ErrorKind::NotFound.into()),
    };
    let mut task = match stored {
        Ok(bytes) => checkpoint::load(&bytes, config.queries)
            .map_err(|problem| EngineError::Checkpoint { path: path.display().to_string(), problem })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let start = log.start_offset(&config.topic, partition)?;
            let from = match (&config.sink, config.state_store) {
                // The transactional sink commits offsets more often than it checkpoints state:
                // without the state that goes with them, the committed offset is no place to
                // start. Replay from the start instead, re-sending the same upserts.
                (ViewSink::Transactional { .. }, StateStore::Checkpointed) => start,
                _ => committed.unwrap_or(0).max(start),
            };
            Task::new(partition, partitions, config.queries, from)
        }
        Err(error) => {
            return Err(EngineError::Checkpoint { path: path.display().to_string(), problem: error.to_string() });
        }
    };
    match config.guarantee {
        Guarantee::ExactlyOnce => {}
        Guarantee::AtLeastOnce => views.rebase(partition, &task.emitted()),
        Guarantee::AtMostOnce => task.offset = task.offset.max(committed.unwrap_or(0)),
    }
    Ok(task)
}

/// Writes every task's checkpoint (aside, then renamed into place), then commits their offsets
/// (except at-most-once, which committed them before processing). Returns bytes written, or
/// `None` if the job was told to crash in the middle of this commit: the new state is written
/// aside but never put in place.
fn write_checkpoints(
    log: &dyn Log,
    config: &KappaConfig,
    control: &JobControl,
    tasks: &[Task],
    state: &mut Vec<u8>,
) -> Result<Option<u64>, EngineError> {
    let mut bytes = 0;
    for task in tasks.iter().filter(|_| config.state_store == StateStore::Checkpointed) {
        let path = checkpoint_path(&config.checkpoint_directory, task.partition);
        let temporary = path.with_extension("ckpt.tmp");
        checkpoint::save_into(task, state);
        bytes += state.len() as u64;
        let problem = |error: std::io::Error| EngineError::Checkpoint {
            path: path.display().to_string(),
            problem: error.to_string(),
        };
        std::fs::write(&temporary, &*state).map_err(problem)?;
        if control.crash_mid_commit.load(Ordering::Acquire) {
            control.crash.store(true, Ordering::Release);
            return Ok(None);
        }
        std::fs::rename(&temporary, &path).map_err(problem)?;
    }
    // A transactional sink committed the offsets with its output already.
    if config.guarantee != Guarantee::AtMostOnce && config.sink == ViewSink::Direct {
        let offsets: Vec<(TopicPartition, u64)> = tasks
            .iter()
            .map(|task| (TopicPartition { topic: config.topic.clone(), partition: task.partition }, task.offset))
            .collect();
        log.commit_offsets(&config.group, &offsets)?;
    }
    Ok(Some(bytes))
}

fn run_worker<O: WorkerObserver>(
    log: &dyn Log,
    config: &KappaConfig,
    views: &ViewVersion,
    control: &JobControl,
    clock: &dyn Clock,
    partitions: Vec<u32>,
    mut observer: O,
) -> Result<WorkerReport<O>, EngineError> {
    let cpu_start = thread_cpu_seconds();
    let topic_partitions = log.partitions(&config.topic)?;
    let mut tasks: Vec<Task> = partitions
        .iter()
        .map(|&partition| restore(log, config, views, partition, topic_partitions))
        .collect::<Result<_, _>>()?;
    for task in &tasks {
        control.positions[task.partition as usize].store(task.offset, Ordering::Relaxed);
    }
    // Copies the checkpoint writer is done with, for the worker to copy the next ones into.
    let spare_copies = std::sync::Mutex::new(Vec::<Task>::new());
    std::thread::scope(|scope| {
        // Checkpoints are written by a thread of their own: the worker only stalls to copy the
        // task's state, and the copy is serialised, written and committed in order beside it.
        let (to_writer, from_worker) = std::sync::mpsc::sync_channel::<Checkpoint>(1);
        let spare = &spare_copies;
        let writer = std::thread::Builder::new()
            .name("lk-checkpoints".to_owned())
            .spawn_scoped(scope, move || -> Result<(u64, Vec<Task>), EngineError> {
                crate::runtime::background::give_way();
                let mut latest_bytes = std::collections::BTreeMap::new();
                let mut buffer = Vec::new();
                let mut finished = Vec::new();
                let mut stopped = false;
                for checkpoint in from_worker {
                    let snapshot = match &checkpoint {
                        Checkpoint::Copy(task) | Checkpoint::Final(task) => task,
                    };
                    if !stopped {
                        match write_checkpoints(log, config, control, std::slice::from_ref(snapshot), &mut buffer)? {
                            Some(bytes) => latest_bytes.insert(snapshot.partition, bytes),
                            // Crashed: nothing more is written, but finished tasks still go back.
                            None => {
                                stopped = true;
                                None
                            }
                        };
                    }
                    match checkpoint {
                        Checkpoint::Final(task) => finished.push(task),
                        Checkpoint::Copy(task) => spare.lock().expect("not poisoned").push(task),
                    }
                }
                Ok((latest_bytes.values().sum(), finished))
            })
            .expect("spawning a checkpoint writer");
        // The transactional sink's committer, beside the worker (see `run_committer`).
        let sink = match &config.sink {
            ViewSink::Direct => None,
            ViewSink::Transactional { output_topic, commit_interval } => {
                // The worker's id: its lowest partition, stable across restarts with the same workers.
                let id = format!("{}-{}", config.group, tasks.first().map_or(0, |task| task.partition));
                Some(start_sink(
                    scope,
                    log,
                    control,
                    id,
                    config.group.clone(),
                    &config.topic,
                    output_topic,
                    *commit_interval,
                    &tasks,
                    clock.now_ns(),
                ))
            }
        };
        let result = work(log, config, views, control, clock, &mut tasks, &mut observer, sink, &to_writer, spare);
        drop(to_writer);
        let (written, finished) = writer.join().expect("the checkpoint writer panicked")?;
        // The tasks handed over whole for their final checkpoints come back for the report.
        for task in finished {
            if let Some(slot) = tasks.iter_mut().find(|slot| slot.partition == task.partition) {
                *slot = task;
            }
        }
        let (checkpoints, caught_up_ns) = result?;
        Ok((checkpoints, written, caught_up_ns))
    })
    .map(|(checkpoints, checkpoint_bytes, caught_up_ns)| {
        let mut counters = TaskCounters::default();
        for task in &tasks {
            counters.add(&task.counters);
        }
        WorkerReport {
            observer,
            counters,
            checkpoints,
            checkpoint_bytes,
            cpu_seconds: thread_cpu_seconds() - cpu_start,
            state_entries: tasks.iter().map(Task::state_entries).sum(),
            caught_up_ns,
        }
    })
}

/// What a worker hands its checkpoint writer.
enum Checkpoint {
    /// A copy of a task's state, taken while the task goes on.
    Copy(Task),
    /// A task that has finished: written, then handed back for the worker's report.
    Final(Task),
}

/// One transaction for a worker's committer: each task's staged changes and input offset.
struct CommitJob {
    /// Per task: its partition, its staged changes and the measured outcome they carry.
    staged: Vec<(u32, RecordBatch, BatchOutcome)>,
    offsets: Vec<(TopicPartition, u64)>,
}

/// What a committer did with a job.
enum Committed {
    /// Committed: per task, its output partition's end offset and its outcome.
    Done(Vec<(u32, u64, BatchOutcome)>),
    /// Told to crash in the middle of the commit; the transaction was abandoned.
    Crashed,
}

/// A worker's committer: runs its transactions one after another on a thread of its own, so
/// that the worker goes on reading and processing while the broker commits (a commit is a
/// flush of the staged records, the offsets and EndTxn, each a round trip: on two cores shared
/// with the broker it took half of the worker's time when the worker waited for it).
fn run_committer(
    log: &dyn Log,
    group: &str,
    control: &JobControl,
    id: &str,
    output_topic: &str,
    jobs: std::sync::mpsc::Receiver<CommitJob>,
    results: std::sync::mpsc::Sender<Result<Committed, EngineError>>,
) {
    for job in jobs {
        let result = commit_job(log, group, control, id, output_topic, job);
        let go_on = matches!(result, Ok(Committed::Done(_)));
        if results.send(result).is_err() || !go_on {
            return;
        }
    }
}

fn commit_job(
    log: &dyn Log,
    group: &str,
    control: &JobControl,
    id: &str,
    output_topic: &str,
    job: CommitJob,
) -> Result<Committed, EngineError> {
    let mut transaction = log.begin_transaction(id)?;
    for (partition, records, _) in &job.staged {
        transaction.append(output_topic, *partition, records)?;
    }
    transaction.commit_offsets(group, &job.offsets)?;
    if control.crash_mid_commit.load(Ordering::Acquire) {
        control.crash.store(true, Ordering::Release);
        transaction.abort();
        return Ok(Committed::Crashed);
    }
    let ranges = transaction.commit()?;
    let mut done = Vec::with_capacity(job.staged.len());
    for (partition, _, outcome) in job.staged {
        let end = ranges
            .iter()
            .find(|(written, _)| written.topic == output_topic && written.partition == partition)
            .map(|(_, range)| range.end);
        if let Some(end) = end {
            done.push((partition, end, outcome));
        }
    }
    Ok(Committed::Done(done))
}

/// Starts a worker's transactional sink ([`ViewSink::Transactional`]): its committer on a thread
/// of `scope`, writing to `output_topic` as transactional id `id` and committing the worker's
/// offsets of `input_topic` to `group`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_sink<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    log: &'env dyn Log,
    control: &'env JobControl,
    id: String,
    group: String,
    input_topic: &str,
    output_topic: &'env str,
    commit_interval: Duration,
    tasks: &[Task],
    now_ns: u64,
) -> TransactionalSink {
    let (jobs, from_worker) = std::sync::mpsc::sync_channel::<CommitJob>(0);
    let (answers, results) = std::sync::mpsc::channel();
    scope.spawn(move || run_committer(log, &group, control, &id, output_topic, from_worker, answers));
    let interval_ns = commit_interval.as_nanos() as u64;
    TransactionalSink {
        input_topic: input_topic.to_owned(),
        commit_interval_ns: interval_ns,
        staged: tasks.iter().map(|_| RecordBatch::new()).collect(),
        unserved: tasks.iter().map(|_| BatchOutcome::default()).collect(),
        committed: tasks.iter().map(|task| task.offset).collect(),
        floor: vec![0; tasks.len()],
        next_commit_ns: now_ns + interval_ns,
        awaiting: Awaiting::default(),
        jobs,
        results,
        in_flight: 0,
    }
}

/// A worker's side of the transactional sink ([`ViewSink::Transactional`]): stages changes and
/// hands each commit interval's to its committer, with one transaction in flight at most.
pub(crate) struct TransactionalSink {
    input_topic: String,
    commit_interval_ns: u64,
    /// Per task: encoded view changes not yet handed over.
    staged: Vec<RecordBatch>,
    /// Per task: the measured outcome of the batches staged.
    unserved: Vec<BatchOutcome>,
    /// Per task: the input offset of its last transaction.
    committed: Vec<u64>,
    /// Per task: the least offset a transaction commits (see [`Self::keep_offsets_at_least`]).
    floor: Vec<u64>,
    /// When the next transaction is due (clock ns).
    next_commit_ns: u64,
    /// Committed and not yet materialised.
    awaiting: Awaiting,
    jobs: std::sync::mpsc::SyncSender<CommitJob>,
    results: std::sync::mpsc::Receiver<Result<Committed, EngineError>>,
    /// Jobs handed over and not yet answered.
    in_flight: usize,
}

impl TransactionalSink {
    /// Stages task `index`'s records, written by `encode`, and the outcome they carry.
    pub(crate) fn stage(
        &mut self,
        index: usize,
        encode: impl FnOnce(&mut RecordBatch),
        outcome: &BatchOutcome,
        measured: bool,
    ) {
        encode(&mut self.staged[index]);
        if measured {
            self.unserved[index].extend_measured(outcome);
        }
    }

    /// Commits no input offset below `floor` (per task): a restarted Lambda worker replays its
    /// epoch from an earlier seal, and its group's offsets must go on saying how far the output
    /// topic holds the epoch's changes (the furthest any run committed), not fall back to the
    /// replay's position.
    pub(crate) fn keep_offsets_at_least(&mut self, floor: &[u64]) {
        self.floor = floor.to_vec();
    }

    /// Takes one answer from the committer (waiting for it with `block`). Returns false if the
    /// committer reported a crash in the middle of a commit.
    pub(crate) fn settle(&mut self, block: bool) -> Result<bool, EngineError> {
        while self.in_flight > 0 {
            let answer = if block {
                match self.results.recv() {
                    Ok(answer) => answer,
                    Err(_) => return Ok(false),
                }
            } else {
                match self.results.try_recv() {
                    Ok(answer) => answer,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(true),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(false),
                }
            };
            self.in_flight -= 1;
            match answer? {
                Committed::Done(done) => {
                    for (partition, end, outcome) in done {
                        self.awaiting.push(partition, end, outcome);
                    }
                }
                Committed::Crashed => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Hands every task's staged changes and input offset to the committer as one transaction
    /// (one transactional producer per worker, as Kafka Streams' exactly-once v2 has one per
    /// stream thread), after the previous one has committed. Returns false if the job was told
    /// to crash in the middle of a commit: the transaction is abandoned, as a crashed process's
    /// is (the coordinator aborts it).
    pub(crate) fn commit(&mut self, tasks: &[Task], now_ns: u64) -> Result<bool, EngineError> {
        self.next_commit_ns = now_ns + self.commit_interval_ns;
        let changed =
            |(index, task): (usize, &Task)| !self.staged[index].is_empty() || self.committed[index] != task.offset;
        if !tasks.iter().enumerate().any(changed) {
            return self.settle(false);
        }
        // One transaction in flight: wait for the previous one before handing over the next.
        if !self.settle(true)? {
            return Ok(false);
        }
        let mut job = CommitJob { staged: Vec::with_capacity(tasks.len()), offsets: Vec::with_capacity(tasks.len()) };
        for (index, task) in tasks.iter().enumerate() {
            let records = std::mem::take(&mut self.staged[index]);
            let outcome = std::mem::take(&mut self.unserved[index]);
            job.staged.push((task.partition, records, outcome));
            let offset = task.offset.max(self.floor[index]);
            job.offsets.push((TopicPartition { topic: self.input_topic.clone(), partition: task.partition }, offset));
            self.committed[index] = task.offset;
        }
        if self.jobs.send(job).is_err() {
            // The committer stopped after an error or a crash; its answer says which.
            return self.settle(true);
        }
        self.in_flight += 1;
        Ok(true)
    }

    /// Commits what is staged and waits until every transaction handed over has committed.
    pub(crate) fn flush(&mut self, tasks: &[Task], now_ns: u64) -> Result<bool, EngineError> {
        Ok(self.commit(tasks, now_ns)? && self.settle(true)?)
    }

    /// When the next transaction is due (clock ns).
    pub(crate) fn next_commit_ns(&self) -> u64 {
        self.next_commit_ns
    }

    /// Reports each committed outcome the materialiser has served.
    pub(crate) fn served<O: WorkerObserver>(&mut self, control: &JobControl, observer: &mut O) {
        self.awaiting.served(control, observer);
    }

    /// Waits (up to a minute) until the materialiser has served everything committed.
    pub(crate) fn drain<O: WorkerObserver>(&mut self, control: &JobControl, observer: &mut O) {
        self.awaiting.drain(control, observer);
    }
}

/// Outcomes committed through a transactional sink and not yet served: a change counts as
/// served (for latency) when the materialiser has applied it, not when it was committed.
#[derive(Default)]
pub(crate) struct Awaiting {
    /// Output partition, its end offset after the transaction, the outcome.
    queue: std::collections::VecDeque<(u32, u64, BatchOutcome)>,
}

impl Awaiting {
    /// Waits for the materialiser to pass `end` of `partition` before serving `outcome`.
    pub(crate) fn push(&mut self, partition: u32, end: u64, outcome: BatchOutcome) {
        if !outcome.is_unmeasured() {
            self.queue.push_back((partition, end, outcome));
        }
    }

    /// Reports each committed outcome the materialiser has served, at the time it did.
    pub(crate) fn served<O: WorkerObserver>(&mut self, control: &JobControl, observer: &mut O) {
        self.queue.retain(|(partition, end, outcome)| {
            let partition = *partition as usize;
            if control.materialized[partition].load(Ordering::Acquire) < *end {
                return true;
            }
            observer.served(outcome, control.materialized_at_ns[partition].load(Ordering::Acquire));
            false
        });
    }

    /// Waits (up to a minute) until the materialiser has served everything committed.
    #[allow(clippy::disallowed_methods, reason = "the drain's wait is bounded by a wall-clock deadline, not measured")]
    pub(crate) fn drain<O: WorkerObserver>(&mut self, control: &JobControl, observer: &mut O) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.queue.is_empty() && std::time::Instant::now() < deadline && !control.crashed() {
            self.served(control, observer);
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A worker's loop; returns (checkpoints, caught-up time).
#[allow(clippy::too_many_arguments)]
fn work<O: WorkerObserver>(
    log: &dyn Log,
    config: &KappaConfig,
    views: &ViewVersion,
    control: &JobControl,
    clock: &dyn Clock,
    tasks: &mut [Task],
    observer: &mut O,
    mut sink: Option<TransactionalSink>,
    checkpoint_writer: &std::sync::mpsc::SyncSender<Checkpoint>,
    spare_copies: &std::sync::Mutex<Vec<Task>>,
) -> Result<(u64, u64), EngineError> {
    let mut batch = RecordBatch::new();
    let mut changes = ViewChanges::default();
    let mut outcome = BatchOutcome::default();
    let interval_ns = config.checkpoint_interval.as_nanos() as u64;
    // Tasks checkpoint one at a time, staggered over the interval, so that a worker stalls for
    // one task's state at a time rather than for all of them at once.
    let started_ns = clock.now_ns();
    let mut next_checkpoint_ns: Vec<u64> = (0..tasks.len() as u64)
        .map(|index| started_ns + interval_ns * (index + 1) / tasks.len().max(1) as u64)
        .collect();
    let mut checkpoints = 0;
    let mut caught_up_ns = 0;
    'run: loop {
        if control.crashed() {
            break;
        }
        let input_closed = control.input_closed.load(Ordering::Acquire);
        let mut progressed = false;
        for (index, task) in tasks.iter_mut().enumerate() {
            batch.clear();
            let first = task.offset;
            let limit = control.read_limit(task.partition, first, READ_BATCH);
            let next = log.read(&config.topic, task.partition, first, limit, &mut batch)?;
            if next == first {
                continue;
            }
            check_contiguous(&config.topic, task.partition, first, next, batch.len())?;
            progressed = true;
            if config.guarantee == Guarantee::AtMostOnce {
                // At-most-once: the offsets are committed first; what follows may never happen.
                let position = TopicPartition { topic: config.topic.clone(), partition: task.partition };
                log.commit_offsets(&config.group, &[(position, next)])?;
            }
            changes.clear();
            let events_before = task.counters.events;
            task.process(&batch, &mut changes, &mut outcome);
            if let Some(dead_letters) = &control.dead_letters {
                dead_letters.record(task.partition, first, &batch, &outcome.dead_letters);
            }
            let measured = !control.replaying(task.partition, first, next);
            match &mut sink {
                Some(sink) => {
                    sink.stage(index, |out| crate::sink::changelog::encode(&changes, out), &outcome, measured)
                }
                None => {
                    if !outcome.fired_windows.is_empty() && !config.window_serve_delay.is_zero() {
                        std::thread::sleep(config.window_serve_delay);
                    }
                    views.apply(task.partition, &changes);
                    if measured {
                        observer.served(&outcome, clock.now_ns());
                    }
                }
            }
            control.processed(task.partition, next, task.counters.events - events_before);
            if !config.batch_delay.is_zero() {
                std::thread::sleep(config.batch_delay);
            }
            if control.crashed() {
                // A crash between writing output and committing offsets.
                break 'run;
            }
        }
        let now_ns = clock.now_ns();
        if let Some(sink) = &mut sink {
            let due = now_ns >= sink.next_commit_ns() || control.crash_mid_commit.load(Ordering::Acquire);
            if !(if due { sink.commit(tasks, now_ns)? } else { sink.settle(false)? }) {
                break 'run;
            }
            sink.served(control, observer);
        }
        let checkpoint_due = next_checkpoint_ns.iter().position(|&due| now_ns >= due);
        let checkpoint_due = if control.crash_mid_commit.load(Ordering::Acquire) {
            // A crash in the middle of a commit is waiting for one: commit now.
            checkpoint_due.or(Some(0))
        } else {
            checkpoint_due
        };
        if let Some(index) = checkpoint_due {
            // The state checkpointed is the state at the task's last committed transaction.
            if let Some(sink) = &mut sink
                && !sink.flush(tasks, now_ns)?
            {
                break 'run;
            }
            // A full queue means the writer is still busy with the last one; block rather than
            // pile up copies of the state.
            // Into the memory of a copy already written, where there is one.
            let spare = spare_copies.lock().expect("not poisoned").pop();
            let copy = match spare {
                Some(mut copy) => {
                    copy.copy_from(&tasks[index]);
                    copy
                }
                None => tasks[index].clone(),
            };
            let _ = checkpoint_writer.send(Checkpoint::Copy(copy));
            checkpoints += 1;
            next_checkpoint_ns[index] = now_ns + interval_ns;
        }
        if !progressed {
            if input_closed {
                let mut caught_up = true;
                for task in tasks.iter() {
                    caught_up &= log.end_offset(&config.topic, task.partition)? <= task.offset;
                }
                if caught_up {
                    caught_up_ns = clock.now_ns();
                    for (index, task) in tasks.iter_mut().enumerate() {
                        changes.clear();
                        task.finish(&mut changes, &mut outcome);
                        match &mut sink {
                            Some(sink) => {
                                sink.stage(index, |out| crate::sink::changelog::encode(&changes, out), &outcome, false)
                            }
                            None => views.apply(task.partition, &changes),
                        }
                    }
                    if let Some(sink) = &mut sink {
                        if !sink.flush(tasks, clock.now_ns())? {
                            break 'run;
                        }
                        sink.drain(control, observer);
                    }
                    // The final checkpoints go through the writer too, after any still queued.
                    // The worker is done with its tasks, so they go whole rather than copied.
                    for task in tasks.iter_mut() {
                        let _ = checkpoint_writer.send(Checkpoint::Final(task.take()));
                    }
                    checkpoints += 1;
                    break;
                }
            } else if let Some(task) = tasks.first() {
                log.wait_for(&config.topic, task.partition, task.offset, Duration::from_millis(1))?;
            }
        }
    }
    Ok((checkpoints, if caught_up_ns == 0 { clock.now_ns() } else { caught_up_ns }))
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
