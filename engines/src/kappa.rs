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
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::settings::Guarantee;
use lk_simulator::time::Clock;

use crate::log::{Log, RecordBatch, TopicPartition};
use crate::runtime::job::{
    EngineError, JobControl, READ_BATCH, WorkerObserver, WorkerReport, check_contiguous, thread_cpu_seconds,
};
use crate::runtime::queries::QueryConfig;
use crate::runtime::{BatchOutcome, Task, TaskCounters, checkpoint};
use crate::sink::serving::{ViewChanges, ViewVersion};
use crate::sink::transactional::{Materializer, TransactionalSink, ViewSink, start_sink};

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
    /// A test knob, zero in every real run: the worker sleeps this long per record it
    /// processes, which caps the engine near `workers / record_delay` events/s, for checking
    /// that a capacity search finds a known limit.
    pub record_delay: Duration,
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
    let positions: Vec<(u32, u64)> = tasks.iter().map(|task| (task.partition, task.offset)).collect();
    log.prepare_readers(&config.topic, &positions);
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
                    clock,
                    true,
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
    let mut idle = crate::runtime::IdleBackoff::new();
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
            let read_ns = clock.now_ns();
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
            outcome.stamp(read_ns, clock.now_ns());
            if let Some(dead_letters) = &control.dead_letters {
                dead_letters.record(task.partition, first, &batch, &outcome.dead_letters);
            }
            let measured = !control.replaying(task.partition, first, next);
            match &mut sink {
                Some(sink) if sink.holds_output_before(index, next) => {}
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
            if !config.record_delay.is_zero() {
                std::thread::sleep(config.record_delay * (next - first) as u32);
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
            control.checkpoints_written.fetch_add(1, Ordering::Relaxed);
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
                    control.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            } else if let Some(task) = tasks.first()
                && let Some(wait) = idle.after_pass(false)
            {
                log.wait_for(&config.topic, task.partition, task.offset, wait)?;
            }
        } else {
            idle.after_pass(true);
        }
    }
    Ok((checkpoints, if caught_up_ns == 0 { clock.now_ns() } else { caught_up_ns }))
}
