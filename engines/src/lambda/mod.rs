//! The Lambda engine: a master dataset, a batch layer, a speed layer and a serving layer.
//!
//! Ingest workers read the log (each its own partitions, in their own consumer group). Every
//! record goes two ways: decoded into the [`master`] dataset (immutable Parquet), and through
//! the streaming runtime's tasks into the current *segment* of realtime views (the speed layer).
//! A coordinator schedules batch runs every `batch_interval` of event time: it opens a new
//! segment and asks every worker to switch to it. A worker switching flushes its tasks' open
//! windows into the old segment, hands the master dataset everything it read before its
//! cutoff and *seals* it, then starts fresh tasks at the same offsets. Once every worker has
//! sealed, the [`batch`] layer recomputes all views from the files of the sealed epochs, and the
//! serving layer swaps in that batch view and drops the segments it covers.
//!
//! Cutoffs are log offsets, per partition: the batch view covers exactly the records before
//! them and the segments after it exactly the records from them on, so the serving layer's
//! merge ([`ViewSet::merge`]) has no gap and no double count. The speed layer applies the
//! watermark policy and drops what it deems too late; the batch layer counts everything, so
//! each batch run corrects the speed layer, and the final batch run, after the input ends,
//! leaves views over every event. How much each batch run had to correct is measured.

pub mod batch;
pub mod master;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::settings::Guarantee;
use lk_simulator::codec::decode_record;
use lk_simulator::time::Clock;

use crate::log::{Log, RecordBatch, TopicPartition};
use crate::runtime::job::{
    EngineError, JobControl, READ_BATCH, WorkerObserver, WorkerReport, check_contiguous, thread_cpu_seconds,
};
use crate::runtime::queries::{Location, QueryConfig, QueryCorrectness, ViewSet};
use crate::runtime::{BatchOutcome, Task, TaskCounters};
use crate::sink::serving::{ViewChanges, ViewVersion};
use crate::sink::transactional::{Materializer, TransactionalSink, ViewSink, start_sink};
use batch::BatchStats;
use master::{MasterChunk, MasterDataset, MasterError, Seal};

/// Events a worker buffers before handing them to the master dataset's writer.
const CHUNK_EVENTS: usize = 256 * 1024;

/// How long a batch run waits for every worker to seal before calling the run stuck.
const SEAL_TIMEOUT: Duration = Duration::from_secs(120);

impl From<MasterError> for EngineError {
    fn from(error: MasterError) -> Self {
        EngineError::Master(error.to_string())
    }
}

/// How a Lambda engine runs.
#[derive(Clone, Debug)]
pub struct LambdaConfig {
    /// The input topic.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// Ingest (speed layer) worker threads.
    pub workers: u32,
    /// Window sizes and the speed layer's lateness policy.
    pub queries: QueryConfig,
    /// Event time between scheduled batch runs, µs.
    pub batch_interval_us: i64,
    /// Threads of a scheduled batch run.
    pub batch_threads: u32,
    /// Threads of the final batch run, after the input ends.
    pub final_batch_threads: u32,
    /// Whether scheduled batch runs give way to the streaming path (idle priority): right when
    /// the input comes in real time and its latency is measured; flat out, where there is no
    /// real time to keep, they would get no CPU until the input ended.
    pub background_batch_runs: bool,
    /// Where the master dataset goes.
    pub master_directory: PathBuf,
    /// The longest a worker holds events before committing them to the master dataset (it also
    /// commits every 256k events): the Lambda counterpart of a checkpoint interval.
    pub flush_interval: Duration,
    /// How a restart resumes and whether the batch layer de-duplicates:
    /// - exactly-once: the master dataset's commits record the log offsets they reach, a
    ///   restarted worker writes only what is not committed yet, its speed layer replays its
    ///   epoch from the last seal (idempotent upserts), and the batch layer counts each event id
    ///   once;
    /// - at-least-once: offsets are committed to the consumer group at seals; a restarted worker
    ///   resumes there and writes again what it had written since, and the batch layer counts
    ///   every row;
    /// - at-most-once: each batch's offsets are committed before it is processed; what was read
    ///   but not yet committed to the master dataset is lost.
    pub guarantee: Guarantee,
    /// How the speed layer's changes reach the serving layer: applied to its segments directly,
    /// or written in transactions to a compacted output topic and materialised from it
    /// (each worker's changes, tagged with their epoch, and its input offsets to the group
    /// `<group>-speed`). A restarted worker replays its epoch from the last seal and writes the
    /// same upserts again; the serving layer ends up with the same rows.
    pub sink: ViewSink,
    /// A test knob: a restarted job writes the master dataset from the input's end, skipping
    /// what its last incarnation read and did not commit: recovery without the master dataset's
    /// commits, which a torture must catch.
    pub forget_master_on_restart: bool,
}

/// A batch view and what it covers.
#[derive(Debug, Default)]
pub struct BatchView {
    /// The first segment (epoch) it does not cover.
    pub next_epoch: u32,
    /// The views over every record before the cutoff.
    pub views: ViewSet,
    /// Clock time at which its cutoff was taken (0 for the empty view before the first run).
    pub cutoff_ns: u64,
}

#[derive(Debug)]
struct ServingState {
    batch: Arc<BatchView>,
    segments: BTreeMap<u32, Arc<ViewVersion>>,
}

/// The serving layer: the latest batch view plus the realtime segments after its cutoff,
/// merged when read.
#[derive(Debug)]
pub struct LambdaServing {
    partitions: u32,
    gap_us: i64,
    state: RwLock<ServingState>,
}

impl LambdaServing {
    /// An empty serving layer with segment 0 open.
    pub fn new(partitions: u32, queries: &QueryConfig) -> Self {
        Self {
            partitions,
            gap_us: queries.session_gap_us,
            state: RwLock::new(ServingState {
                batch: Arc::new(BatchView::default()),
                segments: BTreeMap::from([(0, Arc::new(ViewVersion::new(0, partitions)))]),
            }),
        }
    }

    fn segment(&self, epoch: u32) -> Arc<ViewVersion> {
        Arc::clone(self.state.read().expect("not poisoned").segments.get(&epoch).expect("segments open before use"))
    }

    fn open_segment(&self, epoch: u32) {
        let mut state = self.state.write().expect("not poisoned");
        state.segments.entry(epoch).or_insert_with(|| Arc::new(ViewVersion::new(epoch, self.partitions)));
    }

    /// Applies a segment's changes read from the speed layer's output topic: to the segment if
    /// it is open (opening it if it is new), nowhere if a batch view already covers its epoch.
    pub fn apply_to_segment(&self, epoch: u32, partition: u32, changes: &ViewChanges) {
        let open = {
            let state = self.state.read().expect("not poisoned");
            if epoch < state.batch.next_epoch {
                return;
            }
            state.segments.get(&epoch).cloned()
        };
        let segment = match open {
            Some(segment) => segment,
            None => {
                let mut state = self.state.write().expect("not poisoned");
                if epoch < state.batch.next_epoch {
                    return;
                }
                let partitions = self.partitions;
                Arc::clone(state.segments.entry(epoch).or_insert_with(|| Arc::new(ViewVersion::new(epoch, partitions))))
            }
        };
        segment.apply(partition, changes);
    }

    fn install(&self, batch: BatchView) {
        let mut state = self.state.write().expect("not poisoned");
        let next = batch.next_epoch;
        state.batch = Arc::new(batch);
        state.segments.retain(|&epoch, _| epoch >= next);
    }

    /// The active batch view.
    pub fn batch(&self) -> Arc<BatchView> {
        Arc::clone(&self.state.read().expect("not poisoned").batch)
    }

    /// Q1: where a driver is (the newer of the batch view's and the segments' answers).
    pub fn driver_location(&self, driver: u32, partition: u32) -> Option<Location> {
        let state = self.state.read().expect("not poisoned");
        let mut best = state.batch.views.driver_location.get(&driver).copied();
        for segment in state.segments.values() {
            if let Some(location) = segment.driver_location(driver, partition)
                && best.is_none_or(|current| location.is_newer_than(&current))
            {
                best = Some(location);
            }
        }
        best
    }

    /// Q3 requests served per window start, summed over zones (for completeness over time).
    pub fn demand_by_window(&self) -> BTreeMap<i64, u64> {
        let (batch, segments) = self.parts(u32::MAX);
        let mut totals = BTreeMap::new();
        for ((_, start), count) in &batch.views.zone_demand {
            *totals.entry(*start).or_default() += count.requests;
        }
        for segment in segments {
            for (start, count) in segment.demand_by_window() {
                *totals.entry(start).or_default() += count;
            }
        }
        totals
    }

    /// Every view as served now.
    pub fn snapshot(&self) -> ViewSet {
        let (batch, segments) = self.parts(u32::MAX);
        let mut views = batch.views.clone();
        for segment in segments {
            views.merge(&segment.snapshot(), self.gap_us);
        }
        views
    }

    /// The windowed views (Q2 to Q5) as served from the batch view and the segments before
    /// `epoch`.
    fn windows_before(&self, epoch: u32) -> ViewSet {
        let (batch, segments) = self.parts(epoch);
        let mut views = ViewSet {
            driver_location: BTreeMap::new(),
            rides_per_driver: batch.views.rides_per_driver.clone(),
            zone_demand: batch.views.zone_demand.clone(),
            driver_sessions: batch.views.driver_sessions.clone(),
            historical_trends: batch.views.historical_trends.clone(),
        };
        for segment in segments {
            views.merge(&segment.snapshot_windows(), self.gap_us);
        }
        views
    }

    fn parts(&self, before_epoch: u32) -> (Arc<BatchView>, Vec<Arc<ViewVersion>>) {
        let state = self.state.read().expect("not poisoned");
        let segments = state.segments.range(..before_epoch).map(|(_, segment)| Arc::clone(segment)).collect();
        (Arc::clone(&state.batch), segments)
    }
}

/// One batch run.
#[derive(Clone, Debug, Default)]
pub struct BatchRun {
    /// The first epoch its view does not cover.
    pub next_epoch: u32,
    /// Clock seconds from the job's start to its cutoff.
    pub cutoff_at_seconds: f64,
    /// What it read and how long it took.
    pub stats: BatchStats,
    /// Seconds from the cutoff to the view being served (sealing, the run and the swap).
    pub cutoff_to_served_seconds: f64,
    /// How the served windowed views over the same records (the previous batch view plus the
    /// speed layer's segments) compared with this run's: what the batch run corrected.
    pub corrected: QueryCorrectness,
    /// Whether this is the final run, after the input ended.
    pub last: bool,
}

/// What a Lambda job returns.
#[derive(Debug)]
pub struct LambdaReport<O> {
    /// The speed layer's workers.
    pub workers: Vec<WorkerReport<O>>,
    /// Every batch run, the final one last.
    pub batch_runs: Vec<BatchRun>,
    /// The views served just before the final batch run (the speed layer's last word).
    pub before_final_batch: ViewSet,
    /// The largest age of the served batch view (clock time since its cutoff), sampled, s.
    pub staleness_seconds_max: f64,
    /// Its mean over the samples, s.
    pub staleness_seconds_mean: f64,
    /// Scheduled batch runs that started late because the previous one was still running.
    pub batch_runs_delayed: u64,
    /// CPU seconds of the master dataset's writer.
    pub writer_cpu_seconds: f64,
}

/// What the coordinator and the workers share.
#[derive(Debug)]
struct Shared {
    /// The epoch workers are asked to be in.
    requested_epoch: AtomicU32,
    /// The largest event time ingested so far, µs.
    event_time_high_us: AtomicI64,
    /// Workers still running.
    running: AtomicU32,
    /// Chunks the master dataset's writer has written, emptied for the workers to fill again:
    /// a fresh chunk's 16 MB of events faulted in new memory, a tenth of a worker's time.
    spare_chunks: std::sync::Mutex<Vec<MasterChunk>>,
}

/// Spare chunks kept for reuse: the writer's queue holds two, one is being written and one filled.
const SPARE_CHUNKS: usize = 4;

impl Shared {
    /// An empty chunk for `worker`'s `epoch`, starting at `ends`: a spare one if there is one.
    fn chunk(&self, epoch: u32, worker: u32, ends: Vec<(u32, u64)>) -> MasterChunk {
        let spare = self.spare_chunks.lock().expect("not poisoned").pop();
        match spare {
            Some(mut chunk) => {
                chunk.events.clear();
                chunk.positions.clear();
                chunk.seal = None;
                MasterChunk { epoch, worker, ends, ..chunk }
            }
            None => MasterChunk { epoch, worker, ends, ..MasterChunk::default() },
        }
    }

    /// Keeps a written chunk's memory for [`Shared::chunk`].
    fn recycle(&self, chunk: MasterChunk) {
        let mut spare = self.spare_chunks.lock().expect("not poisoned");
        if spare.len() < SPARE_CHUNKS {
            spare.push(chunk);
        }
    }
}

/// Runs a Lambda job until its input is closed and read and the final batch run is served.
pub fn run_lambda<O: WorkerObserver + 'static>(
    log: Arc<dyn Log>,
    config: &LambdaConfig,
    serving: Arc<LambdaServing>,
    control: Arc<JobControl>,
    clock: Arc<dyn Clock>,
    make_observer: impl Fn(u32) -> O,
) -> Result<LambdaReport<O>, EngineError> {
    let partitions = log.partitions(&config.topic)?;
    let workers = control.workers_or(config.workers).clamp(1, partitions);
    let master = Arc::new(MasterDataset::open(&config.master_directory)?);
    let resume = Resume::from(&*log, config, &master, partitions)?;
    let shared = Arc::new(Shared {
        requested_epoch: AtomicU32::new(resume.epoch.values().copied().max().unwrap_or(0)),
        event_time_high_us: AtomicI64::new(i64::MIN),
        running: AtomicU32::new(workers),
        spare_chunks: std::sync::Mutex::new(Vec::new()),
    });
    let current_epoch = shared.requested_epoch.load(Ordering::Acquire);
    serving.open_segment(current_epoch);
    for &epoch in resume.epoch.values() {
        serving.open_segment(epoch);
    }
    let materializer = match &config.sink {
        ViewSink::Direct => None,
        ViewSink::Transactional { output_topic, .. } => {
            let serving = Arc::clone(&serving);
            Some(Materializer::start(
                "lk-lambda-materializer",
                &log,
                output_topic,
                partitions,
                &control,
                &clock,
                move |partition, batch, changes| {
                    crate::sink::changelog::decode_segments(
                        batch,
                        |epoch, decoded| serving.apply_to_segment(epoch, partition, decoded),
                        changes,
                    )
                },
            )?)
        }
    };
    let (to_writer, chunks) = std::sync::mpsc::sync_channel::<MasterChunk>(2);
    let writer = {
        let (master, control, log, config, shared) =
            (Arc::clone(&master), Arc::clone(&control), Arc::clone(&log), config.clone(), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("lk-lambda-master".to_owned())
            .spawn(move || -> Result<f64, EngineError> {
                let cpu_start = thread_cpu_seconds();
                let first = master.commits();
                for (sequence, chunk) in (first..).zip(chunks) {
                    if control.crashed() {
                        break; // what was not written is lost with the process
                    }
                    let interrupt = || control.crash_mid_commit.load(Ordering::Acquire);
                    if !master.write(&chunk, sequence, interrupt)? {
                        control.crash.store(true, Ordering::Release);
                        break;
                    }
                    if let Some(seal) = &chunk.seal
                        && config.guarantee != Guarantee::AtMostOnce
                    {
                        let offsets: Vec<(TopicPartition, u64)> = seal
                            .offsets
                            .iter()
                            .map(|&(partition, offset)| {
                                (TopicPartition { topic: config.topic.clone(), partition }, offset)
                            })
                            .collect();
                        log.commit_offsets(&config.group, &offsets)?;
                    }
                    shared.recycle(chunk);
                }
                Ok(thread_cpu_seconds() - cpu_start)
            })
            .expect("spawning the master dataset writer")
    };
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let owned: Vec<u32> = (0..partitions).filter(|partition| partition % workers == worker).collect();
            let (log, master, config, serving, control, clock, shared, to_writer) = (
                Arc::clone(&log),
                Arc::clone(&master),
                config.clone(),
                Arc::clone(&serving),
                Arc::clone(&control),
                Arc::clone(&clock),
                Arc::clone(&shared),
                to_writer.clone(),
            );
            let observer = make_observer(worker);
            let start = WorkerStart {
                // Where its partitions' records went after their last seal (with a new worker
                // count after a scale-out, the latest of its partitions').
                epoch: owned.iter().map(|partition| resume.epoch[partition]).max().unwrap_or(current_epoch),
                tasks_from: owned.iter().map(|partition| resume.speed_from[partition]).collect(),
                master_from: owned.iter().map(|partition| resume.master_from[partition]).collect(),
                seal_from: owned.iter().map(|partition| resume.seal_from[partition]).collect(),
            };
            std::thread::Builder::new()
                .name(format!("lk-lambda-{worker}"))
                .spawn(move || {
                    let ingest = Ingest {
                        log: &*log,
                        master: &master,
                        config: &config,
                        serving: &serving,
                        control: &control,
                        clock: &*clock,
                    };
                    let result = ingest.run(worker, owned, partitions, start, observer, &shared, &to_writer);
                    shared.running.fetch_sub(1, Ordering::AcqRel);
                    result
                })
                .expect("spawning a Lambda worker")
        })
        .collect();
    drop(to_writer);

    let started_ns = clock.now_ns();
    let coordinated = coordinate(&*log, config, &serving, &control, &*clock, &master, &shared, workers, started_ns);
    let reports: Vec<Result<WorkerReport<O>, EngineError>> = handles
        .into_iter()
        .map(|handle| handle.join().expect("a Lambda worker panicked; its message is above"))
        .collect();
    let writer_cpu_seconds = writer.join().expect("the master dataset writer panicked")?;
    if let Some(materializer) = materializer {
        // Every worker has committed its last transaction: the materialiser drains the output.
        materializer.finish()?;
    }
    let reports: Vec<WorkerReport<O>> = reports.into_iter().collect::<Result<_, _>>()?;
    let (mut batch_runs, staleness, delayed) = coordinated?;
    if control.crashed() {
        return Ok(LambdaReport {
            workers: reports,
            batch_runs,
            before_final_batch: ViewSet::default(),
            staleness_seconds_max: staleness.0,
            staleness_seconds_mean: staleness.1,
            batch_runs_delayed: delayed,
            writer_cpu_seconds,
        });
    }
    // Every worker has sealed for the last time: the final batch run covers everything.
    let before_final_batch = serving.snapshot();
    let epoch = shared.requested_epoch.load(Ordering::Acquire);
    let run = batch_run(
        &*log,
        config,
        &serving,
        &master,
        &control,
        &*clock,
        epoch,
        workers,
        config.final_batch_threads,
        true,
        started_ns,
    )?;
    batch_runs.extend(run);
    Ok(LambdaReport {
        workers: reports,
        batch_runs,
        before_final_batch,
        staleness_seconds_max: staleness.0,
        staleness_seconds_mean: staleness.1,
        batch_runs_delayed: delayed,
        writer_cpu_seconds,
    })
}

/// Takes a cutoff at `epoch`'s end (every worker has sealed it), recomputes the batch views
/// and serves them. `None` if the job crashed while waiting for the seals.
#[allow(clippy::too_many_arguments)]
fn batch_run(
    log: &dyn Log,
    config: &LambdaConfig,
    serving: &LambdaServing,
    master: &MasterDataset,
    control: &JobControl,
    clock: &dyn Clock,
    epoch: u32,
    workers: u32,
    threads: u32,
    last: bool,
    started_ns: u64,
) -> Result<Option<BatchRun>, EngineError> {
    let cutoff_ns = clock.now_ns();
    control.batch_running.store(true, Ordering::Release);
    let _running = ClearOnDrop(&control.batch_running);
    let Some(files) = master.wait_for_seals(workers, epoch, SEAL_TIMEOUT, || control.crashed()) else {
        if control.crashed() {
            return Ok(None);
        }
        return Err(EngineError::Master(format!(
            "the speed layer's workers did not seal epoch {epoch} within {} s; the run is stuck",
            SEAL_TIMEOUT.as_secs()
        )));
    };
    if let ViewSink::Transactional { output_topic, .. } = &config.sink
        && !await_materialized(log, output_topic, control)?
    {
        return Ok(None);
    }
    let deduplicate = config.guarantee != Guarantee::AtLeastOnce;
    let (views, stats) = batch::compute(master.root(), &files, &config.queries, threads, deduplicate)?;
    if control.crashed() {
        // The job died while the run computed: its views die with it, unserved. The restarted
        // job takes the cutoff again (the final run covers everything in any case).
        return Ok(None);
    }
    // What the serving layer showed for the same records, before this run corrects it.
    let served = serving.windows_before(epoch + 1);
    let windows = ViewSet {
        driver_location: BTreeMap::new(),
        rides_per_driver: views.rides_per_driver.clone(),
        zone_demand: views.zone_demand.clone(),
        driver_sessions: views.driver_sessions.clone(),
        historical_trends: views.historical_trends.clone(),
    };
    let corrected = served.compare_with(&windows).into_values().fold(QueryCorrectness::default(), |mut sum, query| {
        sum.expected += query.expected;
        sum.observed += query.observed;
        sum.lost += query.lost;
        sum.duplicated += query.duplicated;
        sum.mismatched_windows += query.mismatched_windows;
        for example in query.examples {
            if sum.examples.len() < 5 {
                sum.examples.push(example);
            }
        }
        sum
    });
    serving.install(BatchView { next_epoch: epoch + 1, views, cutoff_ns });
    control.batch_runs.fetch_add(1, Ordering::Relaxed);
    control.batch_run_us.fetch_add((stats.seconds * 1e6) as u64, Ordering::Relaxed);
    Ok(Some(BatchRun {
        next_epoch: epoch + 1,
        cutoff_at_seconds: (cutoff_ns - started_ns) as f64 / 1e9,
        cutoff_to_served_seconds: (clock.now_ns() - cutoff_ns) as f64 / 1e9,
        stats,
        corrected,
        last,
    }))
}

/// Clears a flag when dropped: however a batch run ends, it is no longer running.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// With a transactional speed layer, waits until the materialiser has served everything
/// committed to `topic` so far. Workers commit their epoch's last transaction before they seal
/// it, so after the seals the served segments hold the whole epoch, and what the batch run
/// corrects is measured against them. False if the job crashed meanwhile.
#[allow(clippy::disallowed_methods, reason = "the seal's wait is bounded by a wall-clock deadline, not measured")]
fn await_materialized(log: &dyn Log, topic: &str, control: &JobControl) -> Result<bool, EngineError> {
    let ends = log.end_offsets(topic)?;
    let deadline = std::time::Instant::now() + SEAL_TIMEOUT;
    loop {
        if control.crashed() {
            return Ok(false);
        }
        let behind = ends
            .iter()
            .enumerate()
            .any(|(partition, &end)| control.materialized[partition].load(Ordering::Acquire) < end);
        if !behind {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Err(EngineError::Master(format!(
                "the speed layer's materialiser did not reach the end of {topic} within {} s; the run is stuck",
                SEAL_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Where a (re)started job's workers begin, from what survived: the master dataset's commits
/// and seals, and the consumer group's offsets (see [`LambdaConfig::guarantee`]).
struct Resume {
    /// Per partition, the epoch its records go to next: one after the last seal that covered
    /// it, 0 if none did (a run killed before its first seal committed its changes in epoch 0).
    epoch: BTreeMap<u32, u32>,
    /// Per partition, where the speed layer's task starts.
    speed_from: BTreeMap<u32, u64>,
    /// Per partition, the first offset not yet in the master dataset.
    master_from: BTreeMap<u32, u64>,
    /// Per partition, the earliest offset at which the resumed epoch may be sealed: what the
    /// master dataset holds and what the transactional sink committed to the output topic (a
    /// crashed run may have committed changes of the epoch past its last seal; sealed earlier,
    /// those records would be counted in this epoch's segment and again in the next).
    seal_from: BTreeMap<u32, u64>,
}

impl Resume {
    fn from(
        log: &dyn Log,
        config: &LambdaConfig,
        master: &MasterDataset,
        partitions: u32,
    ) -> Result<Self, EngineError> {
        let seals = master.seals();
        let ends = master.committed_ends();
        let mut sealed: BTreeMap<u32, u64> = BTreeMap::new();
        for seal in seals.values() {
            for &(partition, offset) in &seal.offsets {
                let entry = sealed.entry(partition).or_default();
                *entry = (*entry).max(offset);
            }
        }
        let (mut speed_from, mut master_from, mut seal_from) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        let speed_group = format!("{}-speed", config.group);
        for partition in 0..partitions {
            let start = log.start_offset(&config.topic, partition)?;
            let committed = log.committed_offset(&config.group, &config.topic, partition)?.unwrap_or(0).max(start);
            let (speed, written) = match config.guarantee {
                Guarantee::ExactlyOnce => {
                    let speed = sealed.get(&partition).copied().unwrap_or(committed).max(start);
                    (speed, ends.get(&partition).copied().unwrap_or(speed).max(speed))
                }
                Guarantee::AtLeastOnce | Guarantee::AtMostOnce => (committed, committed),
            };
            let output = match config.sink {
                ViewSink::Transactional { .. } => log.committed_offset(&speed_group, &config.topic, partition)?,
                ViewSink::Direct => None,
            };
            let written = if config.forget_master_on_restart {
                log.end_offset(&config.topic, partition)?.max(written)
            } else {
                written
            };
            speed_from.insert(partition, speed);
            master_from.insert(partition, written);
            seal_from.insert(partition, written.max(output.unwrap_or(0)));
        }
        let mut epoch: BTreeMap<u32, u32> = (0..partitions).map(|partition| (partition, 0)).collect();
        for seal in seals.values() {
            for &(partition, _) in &seal.offsets {
                let entry = epoch.entry(partition).or_default();
                *entry = (*entry).max(seal.epoch + 1);
            }
        }
        Ok(Self { epoch, speed_from, master_from, seal_from })
    }
}

/// Where one worker begins.
struct WorkerStart {
    epoch: u32,
    /// Per owned partition (in order), the speed layer task's first offset.
    tasks_from: Vec<u64>,
    /// Per owned partition, the first offset to write to the master dataset.
    master_from: Vec<u64>,
    /// Per owned partition, the earliest offset at which its first epoch may be sealed.
    seal_from: Vec<u64>,
}

/// The coordinator's loop: schedules batch runs by event time until every worker has stopped.
/// Returns the runs, (staleness max, mean) and the count of delayed runs.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn coordinate(
    log: &dyn Log,
    config: &LambdaConfig,
    serving: &LambdaServing,
    control: &JobControl,
    clock: &dyn Clock,
    master: &MasterDataset,
    shared: &Shared,
    workers: u32,
    started_ns: u64,
) -> Result<(Vec<BatchRun>, (f64, f64), u64), EngineError> {
    let mut runs = Vec::new();
    let mut next_cutoff_us: Option<i64> = None;
    let (mut staleness_max, mut staleness_sum, mut samples, mut delayed) = (0.0f64, 0.0, 0u64, 0u64);
    let mut sample = |serving: &LambdaServing| {
        let since = serving.batch().cutoff_ns.max(started_ns);
        let age = (clock.now_ns().saturating_sub(since)) as f64 / 1e9;
        staleness_max = staleness_max.max(age);
        staleness_sum += age;
        samples += 1;
    };
    while shared.running.load(Ordering::Acquire) > 0 {
        if control.crashed() {
            break;
        }
        sample(serving);
        let high = shared.event_time_high_us.load(Ordering::Acquire);
        if high == i64::MIN {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let due = *next_cutoff_us.get_or_insert_with(|| {
            QueryConfig::tumbling_start(high, config.batch_interval_us) + config.batch_interval_us
        });
        if high < due || control.input_closed.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let epoch = shared.requested_epoch.load(Ordering::Acquire);
        serving.open_segment(epoch + 1);
        shared.requested_epoch.store(epoch + 1, Ordering::Release);
        // A scheduled run is background work: on a thread at idle priority (when the input is
        // paced, `background_batch_runs`), it takes only the CPU the streaming path leaves. On
        // a saturated machine (both engines at rush hour) a run at normal priority took a core
        // from the generator and the speed layers for seconds, and every event's latency with
        // it; at idle priority the batch view is merely later.
        let run = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("lk-lambda-batch".to_owned())
                .spawn_scoped(scope, || {
                    if config.background_batch_runs {
                        crate::runtime::background::give_way();
                    }
                    batch_run(
                        log,
                        config,
                        serving,
                        master,
                        control,
                        clock,
                        epoch,
                        workers,
                        config.batch_threads,
                        false,
                        started_ns,
                    )
                })
                .expect("spawning a batch run")
                .join()
                .expect("a batch run panicked; its message is above")
        })?;
        runs.extend(run);
        // Boundaries that passed while the run was busy are not run one by one.
        let high = shared.event_time_high_us.load(Ordering::Acquire);
        let next = QueryConfig::tumbling_start(high, config.batch_interval_us) + config.batch_interval_us;
        delayed += ((next - due) / config.batch_interval_us).saturating_sub(1).max(0) as u64;
        next_cutoff_us = Some(next);
    }
    sample(serving);
    Ok((runs, (staleness_max, staleness_sum / samples.max(1) as f64), delayed))
}

/// One ingest worker.
struct Ingest<'a> {
    log: &'a dyn Log,
    master: &'a MasterDataset,
    config: &'a LambdaConfig,
    serving: &'a LambdaServing,
    control: &'a JobControl,
    clock: &'a dyn Clock,
}

impl Ingest<'_> {
    #[allow(clippy::too_many_arguments)]
    fn run<O: WorkerObserver>(
        &self,
        worker: u32,
        owned: Vec<u32>,
        partitions: u32,
        start: WorkerStart,
        mut observer: O,
        shared: &Shared,
        to_writer: &std::sync::mpsc::SyncSender<MasterChunk>,
    ) -> Result<WorkerReport<O>, EngineError> {
        let cpu_start = thread_cpu_seconds();
        let (config, log, control) = (self.config, self.log, self.control);
        let mut epoch = start.epoch;
        // A restarted worker replays its epoch from its last seal, and seals it no earlier than
        // where it had got to: what it wrote to the master dataset and committed to its output
        // topic (even when the others have moved on and wait for its seal).
        let mut tasks: Vec<Task> = owned
            .iter()
            .zip(&start.tasks_from)
            .map(|(&partition, &from)| Task::new(partition, partitions, config.queries, from))
            .collect();
        let (master_from, seal_from) = (start.master_from, start.seal_from);
        // The epoch of the seal last handed to the master dataset's writer: until the writer has
        // committed it, the sink commits none of the next epoch's changes (a crash then would
        // replay them into the sealed epoch's successor twice over).
        let mut sealed_epoch: Option<u32> = None;
        let seal_durable = |sealed: Option<u32>| {
            sealed.is_none_or(|epoch| self.master.sealed_epoch(worker).is_some_and(|durable| durable >= epoch))
        };
        for task in &tasks {
            control.positions[task.partition as usize].store(task.offset, Ordering::Relaxed);
        }
        let positions: Vec<(u32, u64)> = tasks.iter().map(|task| (task.partition, task.offset)).collect();
        log.prepare_readers(&config.topic, &positions);
        let mut segment = self.serving.segment(epoch);
        std::thread::scope(|scope| {
            let mut sink = match &config.sink {
                ViewSink::Direct => None,
                ViewSink::Transactional { output_topic, commit_interval } => {
                    let group = format!("{}-speed", config.group);
                    // The worker's id: its lowest partition, stable across restarts.
                    let id = format!("{group}-{}", tasks.first().map_or(0, |task| task.partition));
                    Some(start_sink(
                        scope,
                        log,
                        control,
                        id,
                        group,
                        &config.topic,
                        output_topic,
                        *commit_interval,
                        &tasks,
                        &*self.clock,
                        true,
                    ))
                }
            };
            if let Some(sink) = &mut sink {
                sink.keep_offsets_at_least(&seal_from);
            }
            let ends_of = |tasks: &[Task]| tasks.iter().map(|task| (task.partition, task.offset)).collect::<Vec<_>>();
            let mut chunk = shared.chunk(epoch, worker, ends_of(&tasks));
            let (mut batch, mut changes, mut outcome) =
                (RecordBatch::new(), ViewChanges::default(), BatchOutcome::default());
            let mut counters = TaskCounters::default();
            let mut seals = 0;
            // A writer that stopped because the job crashed is not an error: the chunk is lost
            // with the process, as it would be.
            let send = |chunk: MasterChunk| match to_writer.send(chunk) {
                Err(_) if !control.crashed() => {
                    Err(EngineError::Master("the master dataset's writer stopped".to_owned()))
                }
                _ => Ok(()),
            };
            let mut caught_up_ns = 0;
            let flush_ns = config.flush_interval.as_nanos() as u64;
            let mut last_flush_ns = self.clock.now_ns();
            let mut idle = crate::runtime::IdleBackoff::new();
            'run: loop {
                if control.crashed() {
                    break;
                }
                let requested = shared.requested_epoch.load(Ordering::Acquire);
                let replayed = tasks.iter().zip(&seal_from).all(|(task, &from)| task.offset >= from);
                if requested > epoch && replayed {
                    let Some(sealed) = self.seal(
                        worker,
                        sealed_epoch,
                        epoch,
                        &mut tasks,
                        &segment,
                        sink.as_mut(),
                        &mut chunk,
                        &mut changes,
                        &mut outcome,
                        false,
                    )?
                    else {
                        break 'run;
                    };
                    send(sealed)?;
                    sealed_epoch = Some(epoch);
                    seals += 1;
                    self.control.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    for task in &tasks {
                        counters.add(&task.counters);
                    }
                    for task in &mut tasks {
                        task.restart();
                    }
                    // One epoch at a time, even when the others are further on (a worker that
                    // restarted behind them): a restart resumes in the epoch after the last seal,
                    // so records must never go to an epoch later than that. The epochs passed
                    // over this way are sealed empty, at once.
                    epoch += 1;
                    self.serving.open_segment(epoch);
                    segment = self.serving.segment(epoch);
                    chunk.epoch = epoch;
                }
                let input_closed = control.input_closed.load(Ordering::Acquire);
                let mut progressed = false;
                let mut high = i64::MIN;
                for (index, task) in tasks.iter_mut().enumerate() {
                    batch.clear();
                    let first = task.offset;
                    let limit = control.read_limit(task.partition, first, READ_BATCH);
                    let next = log.read(&config.topic, task.partition, first, limit, &mut batch)?;
                    if next == first {
                        continue;
                    }
                    let read_ns = self.clock.now_ns();
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
                    outcome.stamp(read_ns, self.clock.now_ns());
                    if let Some(dead_letters) = &control.dead_letters {
                        dead_letters.record(task.partition, first, &batch, &outcome.dead_letters);
                    }
                    let measured = !control.replaying(task.partition, first, next);
                    match &mut sink {
                        Some(sink) => sink.stage(
                            index,
                            |out| crate::sink::changelog::encode_segment(epoch, &changes, out),
                            &outcome,
                            measured,
                        ),
                        None => {
                            segment.apply(task.partition, &changes);
                            if measured {
                                observer.served(&outcome, self.clock.now_ns());
                            }
                        }
                    }
                    for (at, (_, value)) in batch.iter().enumerate() {
                        let offset = first + at as u64;
                        if offset < master_from[index] {
                            continue; // already committed to the master dataset before a restart
                        }
                        if let Ok(event) = decode_record(value) {
                            high = high.max(event.event_time_us);
                            chunk.events.push(event);
                            chunk.positions.push((task.partition, offset));
                        }
                    }
                    if let Some(end) = chunk.ends.iter_mut().find(|(partition, _)| *partition == task.partition) {
                        end.1 = end.1.max(next);
                    }
                    control.processed(task.partition, next, task.counters.events - events_before);
                    if control.crashed() {
                        // A crash between writing output and committing it.
                        break 'run;
                    }
                }
                shared.event_time_high_us.fetch_max(high, Ordering::AcqRel);
                // A crash in the middle of a commit is waiting for one: commit now.
                let now_ns = self.clock.now_ns();
                if let Some(sink) = &mut sink {
                    let due = (now_ns >= sink.next_commit_ns() || control.crash_mid_commit.load(Ordering::Acquire))
                        && seal_durable(sealed_epoch);
                    if !(if due { sink.commit(&tasks, now_ns)? } else { sink.settle(false)? }) {
                        break 'run;
                    }
                    sink.served(control, &mut observer);
                }
                let commit_now = !chunk.events.is_empty()
                    && (control.crash_mid_commit.load(Ordering::Acquire) || now_ns >= last_flush_ns + flush_ns);
                if chunk.events.len() >= CHUNK_EVENTS || commit_now {
                    last_flush_ns = now_ns;
                    let ends = chunk.ends.clone();
                    send(std::mem::replace(&mut chunk, shared.chunk(epoch, worker, ends)))?;
                }
                if !progressed {
                    if input_closed {
                        let mut caught_up = true;
                        for task in &tasks {
                            caught_up &= log.end_offset(&config.topic, task.partition)? <= task.offset;
                        }
                        if caught_up {
                            caught_up_ns = self.clock.now_ns();
                            let Some(sealed) = self.seal(
                                worker,
                                sealed_epoch,
                                epoch,
                                &mut tasks,
                                &segment,
                                sink.as_mut(),
                                &mut chunk,
                                &mut changes,
                                &mut outcome,
                                true,
                            )?
                            else {
                                break 'run;
                            };
                            send(sealed)?;
                            seals += 1;
                            self.control.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                            if let Some(sink) = &mut sink {
                                sink.drain(control, &mut observer);
                            }
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
            for task in &tasks {
                counters.add(&task.counters);
            }
            Ok(WorkerReport {
                observer,
                counters,
                checkpoints: seals,
                checkpoint_bytes: 0,
                cpu_seconds: thread_cpu_seconds() - cpu_start,
                state_entries: tasks.iter().map(Task::state_entries).sum(),
                caught_up_ns: if caught_up_ns == 0 { self.clock.now_ns() } else { caught_up_ns },
            })
        })
    }

    /// Waits until the master dataset has committed `worker`'s seal of `epoch` (if any), so that
    /// the next epoch's changes may be committed. `false` if the job crashed meanwhile.
    #[allow(clippy::disallowed_methods, reason = "the wait is bounded by a wall-clock deadline, not measured")]
    fn await_seal(&self, worker: u32, epoch: Option<u32>) -> Result<bool, EngineError> {
        let Some(epoch) = epoch else { return Ok(true) };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.master.sealed_epoch(worker).is_none_or(|durable| durable < epoch) {
            if self.control.crashed() {
                return Ok(false);
            }
            if std::time::Instant::now() >= deadline {
                return Err(EngineError::Master(format!(
                    "worker {worker}'s seal of epoch {epoch} was not committed within 120 s: is the master \
                     dataset's writer stuck? (its error, if any, is reported with the job's)"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(true)
    }

    /// Ends the worker's epoch: flushes its tasks' open windows into the segment (through the
    /// sink's last transaction of the epoch, if it has one, once the master dataset holds the
    /// `previous` seal), and returns the chunk that seals everything read so far into the
    /// master dataset. `None` if the job was told to crash in the middle of that transaction.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &self,
        worker: u32,
        previous: Option<u32>,
        epoch: u32,
        tasks: &mut [Task],
        segment: &ViewVersion,
        mut sink: Option<&mut TransactionalSink>,
        chunk: &mut MasterChunk,
        changes: &mut ViewChanges,
        outcome: &mut BatchOutcome,
        last: bool,
    ) -> Result<Option<MasterChunk>, EngineError> {
        for (index, task) in tasks.iter_mut().enumerate() {
            changes.clear();
            task.finish(changes, outcome);
            match sink.as_deref_mut() {
                Some(sink) => {
                    sink.stage(index, |out| crate::sink::changelog::encode_segment(epoch, changes, out), outcome, false)
                }
                None => segment.apply(task.partition, changes),
            }
        }
        // The epoch's changes are committed before its seal (a batch run that finds the seal
        // finds the whole epoch in the output topic), and after the previous seal is in the
        // master dataset.
        if let Some(sink) = sink
            && !(self.await_seal(worker, previous)? && sink.flush(tasks, self.clock.now_ns())?)
        {
            return Ok(None);
        }
        let offsets: Vec<(u32, u64)> = tasks.iter().map(|task| (task.partition, task.offset)).collect();
        let ends = chunk.ends.clone();
        let mut sealed = std::mem::replace(chunk, MasterChunk { epoch, worker, ends, ..MasterChunk::default() });
        sealed.seal = Some(Seal { worker, epoch, offsets, last });
        Ok(Some(sealed))
    }
}
