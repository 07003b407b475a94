//! The transactional sink, the exactly-once path on a log with transactions (Kafka Streams'
//! consume-transform-produce): each worker stages its view changes and hands a commit
//! interval's worth to a committer thread, which writes them and the input offsets in one
//! transaction; a read-committed materialiser applies the output topic to the serving store, and
//! a change counts as served (for latency) only once the materialiser has applied it. Kappa's
//! views and Lambda's speed layer both use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lk_simulator::time::Clock;

use crate::log::{Log, LogTransaction, RecordBatch, TopicPartition};
use crate::runtime::job::{EngineError, JobControl, READ_BATCH, WorkerObserver};
use crate::runtime::{BatchOutcome, Task};
use crate::sink::serving::ViewChanges;

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
    let mut idle = crate::runtime::IdleBackoff::new();
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
            idle.after_pass(true);
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
        } else if let Some(wait) = idle.after_pass(false) {
            log.wait_for(topic, 0, control.materialized[0].load(Ordering::Acquire), wait)?;
        }
    }
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

/// What a worker hands its committer.
enum Work {
    /// Records of one output partition for the open transaction (beginning one if none is
    /// open): sent while the interval runs, so that a commit has only the rest to write.
    Append(u32, RecordBatch),
    /// Finish the open transaction: the rest of the records, the input offsets, the commit.
    Commit(CommitJob),
}

/// A worker's committer: runs its transactions one after another on a thread of its own, so
/// that the worker goes on reading and processing while the broker commits (a commit is a
/// flush of the staged records, the offsets and EndTxn, each a round trip: on two cores shared
/// with the broker it took half of the worker's time when the worker waited for it).
///
/// Records reach it as the interval runs ([`Work::Append`]), as Kafka Streams sends its output
/// as it goes: librdkafka ships them in the background, and the commit waits only for the last
/// few. When all of an interval's records were written at its commit, the commit waited for
/// thousands of records' acknowledgements (docs/decisions/0011-kafka-exactly-once-latency.md).
#[allow(clippy::too_many_arguments, reason = "the committer's whole context, passed once")]
fn run_committer(
    log: &dyn Log,
    group: &str,
    control: &JobControl,
    id: &str,
    output_topic: &str,
    clock: &dyn Clock,
    work: std::sync::mpsc::Receiver<Work>,
    results: std::sync::mpsc::Sender<Result<Committed, EngineError>>,
) {
    let mut open: Option<Box<dyn LogTransaction + '_>> = None;
    // An append's failure, answered at the next commit (the transaction is gone).
    let mut failed: Option<EngineError> = None;
    for item in work {
        match item {
            Work::Append(partition, records) => {
                if failed.is_some() {
                    continue;
                }
                let appended = match &mut open {
                    Some(transaction) => transaction.append(output_topic, partition, &records),
                    None => log.begin_transaction(id).and_then(|mut transaction| {
                        let appended = transaction.append(output_topic, partition, &records);
                        open = Some(transaction);
                        appended
                    }),
                };
                if let Err(error) = appended {
                    if let Some(transaction) = open.take() {
                        transaction.abort();
                    }
                    failed = Some(error.into());
                }
            }
            Work::Commit(job) => {
                let result = match failed.take() {
                    Some(error) => Err(error),
                    None => commit_job(log, group, control, clock, id, output_topic, open.take(), job),
                };
                let go_on = matches!(result, Ok(Committed::Done(_)));
                if results.send(result).is_err() || !go_on {
                    return;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments, reason = "the committer's whole context, passed once")]
fn commit_job<'a>(
    log: &'a dyn Log,
    group: &str,
    control: &JobControl,
    clock: &dyn Clock,
    id: &str,
    output_topic: &str,
    open: Option<Box<dyn LogTransaction + 'a>>,
    job: CommitJob,
) -> Result<Committed, EngineError> {
    let mut transaction = match open {
        Some(transaction) => transaction,
        None => log.begin_transaction(id)?,
    };
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
    let committed_ns = clock.now_ns();
    let mut done = Vec::with_capacity(job.staged.len());
    for (partition, _, mut outcome) in job.staged {
        outcome.stamp_committed(committed_ns);
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

/// A task's staged records go to the open transaction once there are this many: enough that
/// a send is worth its call, few enough that a commit has little left to write.
const STREAM_AT_RECORDS: usize = 256;

/// Work queued for a committer at most: a worker sends records only while no commit is in
/// flight, so the queue holds a few appends and one commit.
const STREAMED_QUEUE: usize = 64;

/// Starts a worker's transactional sink ([`ViewSink::Transactional`]): its committer on a thread
/// of `scope`, writing to `output_topic` as transactional id `id` and committing the worker's
/// offsets of `input_topic` to `group`. With `stream`, records go into the open transaction as
/// the interval runs; without, all at the commit.
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
    clock: &'env dyn Clock,
    stream: bool,
) -> TransactionalSink {
    let now_ns = clock.now_ns();
    // How far an earlier incarnation's transactions got: the output topic holds the changes of
    // the input before these offsets. Unknown (an error reading them) is nothing.
    let written: Vec<u64> = tasks
        .iter()
        .map(|task| log.committed_offset(&group, input_topic, task.partition).ok().flatten().unwrap_or(0))
        .collect();
    let (jobs, from_worker) = std::sync::mpsc::sync_channel::<Work>(STREAMED_QUEUE);
    let (answers, results) = std::sync::mpsc::channel();
    scope.spawn(move || run_committer(log, &group, control, &id, output_topic, clock, from_worker, answers));
    let interval_ns = commit_interval.as_nanos() as u64;
    TransactionalSink {
        input_topic: input_topic.to_owned(),
        commit_interval_ns: interval_ns,
        staged: tasks.iter().map(|_| RecordBatch::new()).collect(),
        unserved: tasks.iter().map(|_| BatchOutcome::default()).collect(),
        committed: tasks.iter().map(|task| task.offset).collect(),
        partitions: tasks.iter().map(|task| task.partition).collect(),
        stream_at: if stream { STREAM_AT_RECORDS } else { usize::MAX },
        streamed: false,
        floor: written.clone(),
        written,
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
    /// Per task: its partition (of the input and the output alike).
    partitions: Vec<u32>,
    /// A task's staged records go to the open transaction at this many (`usize::MAX`: only at
    /// the commit).
    stream_at: usize,
    /// Whether records went to the open transaction since the last commit was handed over.
    streamed: bool,
    /// Per task: the least offset a transaction commits (see [`Self::keep_offsets_at_least`]):
    /// at first, how far an earlier incarnation committed, so the group's offsets never go back.
    floor: Vec<u64>,
    /// Per task: the input offset before which the output topic already holds its changes
    /// (see [`Self::holds_output_before`]).
    written: Vec<u64>,
    /// When the next transaction is due (clock ns).
    next_commit_ns: u64,
    /// Committed and not yet materialised.
    awaiting: Awaiting,
    jobs: std::sync::mpsc::SyncSender<Work>,
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
        // Into the open transaction as the interval runs, unless a commit is in flight (the
        // committer is busy with it; the records wait here for the next transaction).
        if self.in_flight == 0 && self.staged[index].len() >= self.stream_at {
            let records = std::mem::take(&mut self.staged[index]);
            self.streamed = true;
            // A committer that stopped answers the next commit with why.
            let _ = self.jobs.send(Work::Append(self.partitions[index], records));
        }
    }

    /// Whether the output topic already holds the changes of task `index`'s input before
    /// `next`: an earlier incarnation committed them, in the same transactions as its offsets.
    /// A restarted Kappa worker replays from its last checkpoint, and writing those changes
    /// again only repeats upserts already there; skipping them let a restart catch up at the
    /// speed a direct sink does (the replay after a crash had held visible latency up by
    /// hundreds of milliseconds while it went through the transactions).
    pub(crate) fn holds_output_before(&self, index: usize, next: u64) -> bool {
        next <= self.written[index]
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
        // Records already in the open transaction must be committed even when nothing is left
        // staged and no offset moved (a task's final windows at the end of its input).
        if !self.streamed && !tasks.iter().enumerate().any(changed) {
            return self.settle(false);
        }
        self.streamed = false;
        // One transaction in flight: wait for the previous one before handing over the next.
        if !self.settle(true)? {
            return Ok(false);
        }
        let mut job = CommitJob { staged: Vec::with_capacity(tasks.len()), offsets: Vec::with_capacity(tasks.len()) };
        for (index, task) in tasks.iter().enumerate() {
            let records = std::mem::take(&mut self.staged[index]);
            let mut outcome = std::mem::take(&mut self.unserved[index]);
            outcome.stamp_handed(now_ns);
            job.staged.push((task.partition, records, outcome));
            let offset = task.offset.max(self.floor[index]);
            job.offsets.push((TopicPartition { topic: self.input_topic.clone(), partition: task.partition }, offset));
            self.committed[index] = task.offset;
        }
        if self.jobs.send(Work::Commit(job)).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::embedded::{EmbeddedLog, EmbeddedLogConfig};

    /// Records handed to the open transaction as the interval ran are committed by the next
    /// flush even when nothing is left staged and no input offset moved: a task's final windows
    /// at the end of its input are exactly that, and were lost when such a flush skipped its
    /// commit.
    #[test]
    fn a_flush_commits_what_was_streamed_even_when_no_offset_moved() {
        let directory = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
        log.create_topic("input", 1).unwrap();
        log.create_topic("output", 1).unwrap();
        let control = JobControl::default();
        let clock = lk_simulator::time::MonotonicClock::new();
        let config = crate::runtime::tests::config();
        let tasks = vec![Task::new(0, 1, config, 0)];
        let committed = std::thread::scope(|scope| {
            let mut sink = start_sink(
                scope,
                &log,
                &control,
                "worker-0".into(),
                "group".into(),
                "input",
                "output",
                Duration::from_millis(100),
                &tasks,
                &clock,
                true,
            );
            let outcome = BatchOutcome::default();
            sink.stage(
                0,
                |out| {
                    for key in 0..STREAM_AT_RECORDS as u64 + 44 {
                        out.push(key, b"a view change");
                    }
                },
                &outcome,
                false,
            );
            assert!(sink.flush(&tasks, clock.now_ns()).unwrap(), "the flush committed");
            log.end_offset("output", 0).unwrap()
        });
        assert_eq!(committed, STREAM_AT_RECORDS as u64 + 44, "every streamed record is committed");
    }
}
