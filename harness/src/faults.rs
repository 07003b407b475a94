//! Fault injection: the log outage wrapper, the supervisor that restarts a crashed engine, and
//! the recovery tracker.
//!
//! Crashes are injected through each engine's [`JobControl`]: the engine stops where the flag
//! finds it (after writing output and before committing offsets, or in the middle of a commit)
//! and its job returns; the [`Supervisor`] starts it again at once, from whatever it had made
//! durable. The [`RecoveryTracker`] watches the engine's consumer lag until it is back to what
//! it was before the crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::scenario::{CrashPoint, Fault, FaultKind, FaultTarget};
use lk_engines::runtime::job::{EngineError, JobControl};

use crate::engine::EngineKind;
use crate::results::FaultEvent;
use lk_engines::log::{
    AppendTicket, Appended, Log, LogError, LogTransaction, OffsetRange, RecordBatch, TopicPartition,
};
use lk_simulator::time::Clock;

/// What a wrapper around a log changes: every call it has no say in goes straight through to
/// the wrapped log. The fault injection's outages and the tests' misbehaving logs are these.
pub trait Interposer: Send + Sync + 'static {
    /// Before an append: an error fails the append (each batch of it) instead.
    fn before_append(&self) -> Result<(), LogError> {
        Ok(())
    }
    /// Before a read, a wait for records, an offset commit or a transaction (it may block).
    fn before_consume(&self) {}
    /// The offset a read of `topic`/`partition` at `offset` really reads from.
    fn read_from(&self, topic: &str, partition: u32, offset: u64) -> u64 {
        let _ = (topic, partition);
        offset
    }
}

/// A log with an [`Interposer`] between it and its users.
pub struct InterposedLog<I> {
    inner: Arc<dyn Log>,
    /// What it changes.
    pub interposer: I,
}

impl<I: Interposer> InterposedLog<I> {
    /// `inner`, as `interposer` changes it.
    pub fn new(inner: Arc<dyn Log>, interposer: I) -> Self {
        Self { inner, interposer }
    }
}

impl<I: Interposer> Log for InterposedLog<I> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.inner.create_topic(topic, partitions)
    }
    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partitions(topic)
    }
    fn qualified_name(&self, topic: &str) -> String {
        self.inner.qualified_name(topic)
    }
    fn create_compacted_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.inner.create_compacted_topic(topic, partitions)
    }
    fn append(&self, topic: &str, partition: u32, records: &RecordBatch) -> Result<OffsetRange, LogError> {
        self.interposer.before_append()?;
        self.inner.append(topic, partition, records)
    }
    fn append_many(&self, topic: &str, batches: &[(u32, &RecordBatch)]) -> Vec<Result<OffsetRange, LogError>> {
        if self.interposer.before_append().is_err() {
            return batches.iter().map(|&(partition, records)| self.append(topic, partition, records)).collect();
        }
        self.inner.append_many(topic, batches)
    }
    fn append_async(&self, topic: &str, batches: &[(u32, &RecordBatch)]) -> Box<dyn AppendTicket> {
        if self.interposer.before_append().is_err() {
            return Box::new(Appended(self.append_many(topic, batches)));
        }
        self.inner.append_async(topic, batches)
    }
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        out: &mut RecordBatch,
    ) -> Result<u64, LogError> {
        self.interposer.before_consume();
        let from = self.interposer.read_from(topic, partition, offset);
        self.inner.read(topic, partition, from, max_records, out)
    }
    fn prepare_readers(&self, topic: &str, positions: &[(u32, u64)]) {
        self.inner.prepare_readers(topic, positions);
    }
    fn wait_for(&self, topic: &str, partition: u32, offset: u64, timeout: Duration) -> Result<u64, LogError> {
        self.interposer.before_consume();
        self.inner.wait_for(topic, partition, offset, timeout)
    }
    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.inner.start_offset(topic, partition)
    }
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.inner.end_offset(topic, partition)
    }
    fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        self.inner.end_offsets(topic)
    }
    fn commit_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError> {
        self.interposer.before_consume();
        self.inner.commit_offsets(group, offsets)
    }
    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.inner.committed_offset(group, topic, partition)
    }
    fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn LogTransaction + '_>, LogError> {
        self.interposer.before_consume();
        self.inner.begin_transaction(transactional_id)
    }
    fn truncate_before(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        self.inner.truncate_before(topic, partition, offset)
    }
    fn stored_bytes(&self) -> u64 {
        self.inner.stored_bytes()
    }
    fn damage(&self) -> Vec<String> {
        self.inner.damage()
    }
}

/// Outage periods of a log: appends fail with a retriable error (the producer retries with
/// backoff) and reads, waits, commits and transactions stall until the outage ends (a consumer's
/// fetch that does not return). Everything else passes through.
pub struct Outages {
    clock: Arc<dyn Clock>,
    /// Outage periods, clock ns (start, end).
    periods: Vec<(u64, u64)>,
}

/// A log that is unavailable during outage periods.
pub type OutageLog = InterposedLog<Outages>;

impl OutageLog {
    /// `inner`, unavailable during `periods` (clock ns).
    pub fn with_outages(inner: Arc<dyn Log>, clock: Arc<dyn Clock>, periods: Vec<(u64, u64)>) -> Self {
        Self::new(inner, Outages { clock, periods })
    }
}

impl Outages {
    /// The end of the outage in force now, if any.
    fn outage_end(&self) -> Option<u64> {
        let now = self.clock.now_ns();
        self.periods.iter().find(|(start, end)| (*start..*end).contains(&now)).map(|(_, end)| *end)
    }
}

impl Interposer for Outages {
    fn before_append(&self) -> Result<(), LogError> {
        match self.outage_end() {
            Some(end) => {
                let left_ms = end.saturating_sub(self.clock.now_ns()) / 1_000_000;
                Err(LogError::Backend {
                    message: format!("the log is unavailable (injected outage, {left_ms} ms left); retry"),
                    retriable: true,
                })
            }
            None => Ok(()),
        }
    }
    fn before_consume(&self) {
        while let Some(end) = self.outage_end() {
            let left = end.saturating_sub(self.clock.now_ns());
            std::thread::sleep(Duration::from_nanos(left.min(10_000_000)));
        }
    }
}

/// A supervised job's thread: every incarnation's result, in order.
pub type SupervisedJob<R> = std::thread::JoinHandle<Result<Vec<R>, EngineError>>;

/// When an engine stopped after a crash and when it was running again, clock ns.
#[derive(Clone, Copy, Debug)]
pub struct Restart {
    /// The job had returned.
    pub stopped_ns: u64,
    /// The next job had been started.
    pub restarted_ns: u64,
}

/// Runs an engine's job, and runs it again each time it returns because it was told to crash.
#[derive(Clone)]
pub struct Supervisor {
    /// Whether a job is running now (a crash is only injected into a running job).
    pub running: Arc<AtomicBool>,
    restarts: Arc<Mutex<Vec<Restart>>>,
    rescales: Arc<Mutex<Vec<Restart>>>,
}

impl Supervisor {
    /// Starts `start` on a thread named `name`, restarting it after crashes; the handle yields
    /// every incarnation's result in order.
    pub fn spawn<R: Send + 'static>(
        name: &str,
        control: Arc<JobControl>,
        clock: Arc<dyn Clock>,
        start: impl Fn() -> Result<R, EngineError> + Send + 'static,
    ) -> std::io::Result<(Self, SupervisedJob<R>)> {
        let running = Arc::new(AtomicBool::new(true));
        let restarts = Arc::new(Mutex::new(Vec::new()));
        let rescales = Arc::new(Mutex::new(Vec::new()));
        let supervisor =
            Self { running: Arc::clone(&running), restarts: Arc::clone(&restarts), rescales: Arc::clone(&rescales) };
        let handle = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let mut results = Vec::new();
            loop {
                let result = start();
                if !control.crashed() {
                    running.store(false, Ordering::Release);
                    results.push(result?);
                    return Ok(results);
                }
                // Crashed: whatever the job returned is what survives of it; start it again.
                running.store(false, Ordering::Release);
                let stopped_ns = clock.now_ns();
                results.push(result?);
                let rescale = control.rescale.load(Ordering::Acquire);
                control.reset_crash();
                running.store(true, Ordering::Release);
                let restart = Restart { stopped_ns, restarted_ns: clock.now_ns() };
                if rescale { &rescales } else { &restarts }.lock().expect("not poisoned").push(restart);
            }
        })?;
        Ok((supervisor, handle))
    }

    /// The restarts after crashes so far.
    pub fn restarts(&self) -> Vec<Restart> {
        self.restarts.lock().expect("not poisoned").clone()
    }

    /// The restarts for rescaling so far.
    pub fn rescales(&self) -> Vec<Restart> {
        self.rescales.lock().expect("not poisoned").clone()
    }
}

/// A crash injected into an engine, waiting to be seen through to recovery.
#[derive(Clone, Debug)]
pub struct PendingRecovery {
    /// When the fault fired, clock ns.
    pub fired_ns: u64,
    /// `after-output` or `mid-commit`.
    pub point: &'static str,
    /// The engine's consumer lag when the fault fired.
    pub lag_before: u64,
    /// When the lag was back under the threshold, once it was.
    pub caught_up_ns: Option<u64>,
}

/// Watches one engine's consumer lag after crashes.
#[derive(Debug, Default)]
pub struct RecoveryTracker {
    /// Every crash, in order.
    pub crashes: Vec<PendingRecovery>,
}

impl RecoveryTracker {
    /// Records a crash injected at `now_ns` with the engine's lag then.
    pub fn fired(&mut self, now_ns: u64, point: &'static str, lag_before: u64) {
        self.crashes.push(PendingRecovery { fired_ns: now_ns, point, lag_before, caught_up_ns: None });
    }

    /// Whether a crash was injected that has not stopped the engine yet (given its restarts so
    /// far): another crash waits until it has.
    pub fn crash_pending(&self, restarts: usize) -> bool {
        self.crashes.len() > restarts
    }

    /// Whether a crash is waiting for its recovery.
    pub fn waiting(&self) -> bool {
        self.crashes.iter().any(|crash| crash.caught_up_ns.is_none())
    }

    /// Updates with the restarts so far and the lag now: the engine has recovered from its
    /// i-th crash once it has restarted from it and its lag is back to at most the larger of its
    /// lag before the crash and `threshold`.
    pub fn observe(&mut self, restarts: usize, lag: u64, threshold: u64, now_ns: u64) {
        for crash in self.crashes.iter_mut().take(restarts).filter(|crash| crash.caught_up_ns.is_none()) {
            if lag <= crash.lag_before.max(threshold) {
                crash.caught_up_ns = Some(now_ns);
            }
        }
    }
}

/// An engine the crash injector can crash.
pub struct CrashTarget {
    /// Which engine.
    pub kind: EngineKind,
    /// Its control.
    pub control: Arc<JobControl>,
    /// Its supervisor.
    pub supervisor: Supervisor,
}

/// What the crash injector saw: per target (in order), its crashes; and the crash events.
pub type Injected = (Vec<RecoveryTracker>, Vec<FaultEvent>);

/// How the crash injector runs.
pub struct InjectorSettings {
    /// The log whose end offsets define lag.
    pub log: Arc<dyn Log>,
    /// Its input topic and partitions.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: u32,
    /// The run's start, clock ns.
    pub start_ns: u64,
    /// The lag under which a restarted engine counts as caught up (at least).
    pub recovered_lag: u64,
    /// Crashes asked for while the run runs (`lk demo`), fired as the scenario's are.
    pub live: Arc<crate::live::Live>,
}

/// Fires the crash faults at their times, each into the engines it targets, and watches each
/// crashed engine's lag every millisecond until it has recovered, until `stop` is set (once the
/// engines have finished).
pub fn spawn_crash_injector(
    settings: InjectorSettings,
    clock: Arc<dyn Clock>,
    faults: Vec<Fault>,
    targets: Vec<CrashTarget>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<Result<Injected, LogError>>> {
    std::thread::Builder::new().name("lk-crash-injector".to_owned()).spawn(move || {
        let mut trackers: Vec<RecoveryTracker> = targets.iter().map(|_| RecoveryTracker::default()).collect();
        let mut events = Vec::new();
        let mut pending: std::collections::VecDeque<Fault> = faults
            .into_iter()
            .filter(|fault| matches!(fault.kind, FaultKind::Crash { point, .. } if point != CrashPoint::Reprocess))
            .collect();
        let lag = |target: &CrashTarget| target.control.lag(&*settings.log, &settings.topic, settings.partitions);
        let (mut rescale_waits, mut rescaled_ready): (Vec<Fault>, Vec<Fault>) = (Vec::new(), Vec::new());
        while !stop.load(Ordering::Acquire) {
            let now = clock.now_ns();
            for name in settings.live.take_crash_requests() {
                if let Ok(kind) = EngineKind::parse(&name) {
                    let at = Duration::from_nanos(now.saturating_sub(settings.start_ns));
                    let kind = FaultKind::Crash { target: FaultTarget::Engine(kind), point: CrashPoint::AfterOutput };
                    pending.push_front(Fault { at, kind });
                }
            }
            // In-rescale crashes wait aside, one per engine they hit, each until that engine has
            // been restarted for a rescale since the crash's time; then it goes first in line.
            while let Some(fault) = pending.front().copied()
                && let FaultKind::Crash { target: hits, point: CrashPoint::InRescale } = fault.kind
                && now >= settings.start_ns + fault.at.as_nanos() as u64
            {
                pending.pop_front();
                for target in targets.iter().filter(|target| hits.hits(target.kind)) {
                    let kind =
                        FaultKind::Crash { target: FaultTarget::Engine(target.kind), point: CrashPoint::InRescale };
                    rescale_waits.push(Fault { at: fault.at, kind });
                }
            }
            rescale_waits.retain(|fault| {
                let FaultKind::Crash { target: FaultTarget::Engine(kind), .. } = fault.kind else { return false };
                let due_ns = settings.start_ns + fault.at.as_nanos() as u64;
                let rescaled = targets.iter().any(|target| {
                    target.kind == kind
                        && target.supervisor.rescales().iter().any(|rescale| rescale.restarted_ns >= due_ns)
                });
                if rescaled {
                    let ready =
                        Fault { at: Duration::from_nanos(now.saturating_sub(settings.start_ns)), kind: fault.kind };
                    pending.push_front(ready);
                    rescaled_ready.push(ready);
                }
                !rescaled
            });
            while let Some(fault) = pending.front().copied() {
                let FaultKind::Crash { target: hits, point } = fault.kind else { unreachable!("filtered") };
                if now < settings.start_ns + fault.at.as_nanos() as u64 {
                    break;
                }
                if point == CrashPoint::InRescale && !rescaled_ready.contains(&fault) {
                    // Due, and not yet set aside: the loop above takes it at the next tick.
                    break;
                }
                let chosen: Vec<usize> = (0..targets.len()).filter(|&index| hits.hits(targets[index].kind)).collect();
                // An engine that has not yet stopped or restarted from its last crash is not
                // crashed again until it has.
                if chosen.iter().any(|&index| {
                    let target = &targets[index];
                    !target.supervisor.running.load(Ordering::Acquire)
                        || target.control.rescale.load(Ordering::Acquire)
                        || trackers[index].crash_pending(target.supervisor.restarts().len())
                }) {
                    break;
                }
                // A batch-run crash waits for a batch run to be under way in every engine it hits.
                if point == CrashPoint::BatchRun
                    && !chosen.iter().all(|&index| targets[index].control.batch_running.load(Ordering::Acquire))
                {
                    break;
                }
                for &index in &chosen {
                    let target = &targets[index];
                    let before = lag(target)?;
                    // An in-recovery crash that finds the engine caught up is an ordinary one.
                    let point = match point {
                        CrashPoint::InRecovery if !trackers[index].waiting() => CrashPoint::AfterOutput,
                        point => point,
                    };
                    match point {
                        CrashPoint::MidCommit => target.control.crash_mid_commit.store(true, Ordering::Release),
                        CrashPoint::AfterOutput
                        | CrashPoint::BatchRun
                        | CrashPoint::InRecovery
                        | CrashPoint::InRescale
                        | CrashPoint::Reprocess => target.control.crash.store(true, Ordering::Release),
                    }
                    trackers[index].fired(now, point.name(), before);
                    events.push(FaultEvent {
                        at_seconds: (now - settings.start_ns) as f64 / 1e9,
                        kind: "crash".to_owned(),
                        detail: format!("{} crashed ({})", target.kind.name(), point.name()),
                        duration_seconds: 0.0,
                    });
                }
                rescaled_ready.retain(|ready| *ready != fault);
                pending.pop_front();
            }
            for (target, tracker) in targets.iter().zip(&mut trackers) {
                if tracker.waiting() {
                    let restarts = target.supervisor.restarts().len();
                    tracker.observe(restarts, lag(target)?, settings.recovered_lag, clock.now_ns());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok((trackers, events))
    })
}
