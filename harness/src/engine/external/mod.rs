//! Engines that are not lk's own, at the same seam as lk's, through the engine protocol
//! (docs/engines.md): lk starts the engine's process, feeds it the run's input as JSON on Kafka,
//! reads its views back as upserts from its output topic, SIGKILLs and restarts it for crash
//! faults, and judges what it served with the same oracle, checker and latency definitions as
//! its own engines. The engine's own lateness rule is modelled from the watermarks it reports,
//! so that what it drops by its rule is told apart from what it lost.
//!
//! The end of the input is a record on the control topic whose event time is past every
//! event's: it moves the engine's watermark past every window, as the end of a bounded source
//! does in Flink, so that windows an engine serves only once closed (Spark's session windows)
//! are served before lk stops it.

pub mod kstreams;
pub mod lake;
pub mod process;
pub mod progress;
pub mod served;
pub mod spark;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lk_engines::log::{Log, RecordBatch};
use lk_engines::runtime::job::{EngineError, JobControl};
use lk_engines::runtime::queries::{Query, QueryConfig, Session, ViewSet};
use lk_engines::verify::oracle::{Lateness, Oracle, Position, Truth, scan_first_copies};
use lk_simulator::event::Payload;
use lk_simulator::time::Clock;

use self::process::{EngineProcess, Launch, Usage, tail};
use self::progress::{Batch, Progress};
use self::served::Served;
use super::{Engine, EngineKind, Finished, Judge, Observed, Running, Setup};
use crate::faults::{SupervisedJob, Supervisor};
use crate::metrics::{LatencyRecorder, LatencySummary, TimeMapping, directory_bytes};
use crate::results::{Cost, EngineResults, ExternalResults, Reprocess};
use crate::run::{RunError, RunOptions, TOPIC, output_error};
use crate::scenario::Scenario;

/// The event time of the end-of-input record: 9999-12-31T23:59:59Z, past every event's.
pub const END_OF_INPUT_US: i64 = 253_402_300_799_000_000;

/// How long an engine may take to start, or to restart after a crash.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// How long an engine may go without a micro-batch while lk waits for it to drain.
const STALL_TIMEOUT: Duration = Duration::from_secs(180);

/// The topics an external engine reads and writes, by the names lk gives them (the log
/// qualifies them: Kafka adds the run's namespace).
#[derive(Clone, Debug)]
pub struct Topics {
    /// The end-of-input record.
    pub control: String,
    /// Its views, as upserts.
    pub output: String,
    /// What it could not read.
    pub dead_letters: String,
    /// The input records its own lateness rule dropped, where it declares them (Kafka Streams).
    pub late: String,
}

impl Topics {
    fn of(kind: EngineKind, version: u32) -> Self {
        Self {
            control: format!("{kind}.control"),
            output: format!("{kind}.views-v{version}"),
            dead_letters: format!("{kind}.dead-letters-v{version}"),
            late: format!("{kind}.late-v{version}"),
        }
    }
}

/// Everything one start of an engine's job needs, and where it keeps what it resumes from.
#[derive(Clone, Debug)]
pub struct Job {
    /// How its process is started.
    pub launch: Launch,
    /// Its folder (its log, its progress file, its ready file).
    pub folder: PathBuf,
    /// Where it checkpoints.
    pub checkpoints: PathBuf,
    /// The file it appends its progress to.
    pub progress: PathBuf,
    /// Its topics.
    pub topics: Topics,
}

/// What an engine needs to be started with, from the run.
pub struct Context<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// How the run was asked for.
    pub options: &'a RunOptions,
    /// The log.
    pub log: &'a Arc<dyn Log>,
    /// The run's folder.
    pub out: &'a Path,
    /// Window sizes and the lateness policy.
    pub queries: QueryConfig,
}

/// An engine whose process has started and said it is ready, before the input starts.
pub struct Booted {
    /// Which engine.
    pub kind: EngineKind,
    job: Job,
    process: EngineProcess,
    /// More instances of the same application (Kafka Streams' scale-out): they share its work
    /// and take over its partitions when it is killed; lk stops them once it has drained.
    companions: Vec<EngineProcess>,
    start_seconds: f64,
    readers: Vec<String>,
}

/// Whether `kind` is an engine that is not lk's own.
pub fn is_external(kind: EngineKind) -> bool {
    matches!(kind, EngineKind::SparkKappa | EngineKind::Kstreams | EngineKind::SparkLambda)
}

/// Prepares and starts an external engine's process and waits until it is ready, before the
/// run's clock starts (a JVM takes seconds to start; the input must not wait on it).
#[allow(clippy::disallowed_methods, reason = "the start-up time is reported as a fact, not a latency")]
pub fn boot(kind: EngineKind, context: &Context<'_>) -> Result<Booted, RunError> {
    if context.log.backend() != "kafka" {
        return Err(RunError::Invalid(format!(
            "{kind} is not lk's own engine: it reads its input from Kafka, not from the embedded log; run with --log \
             kafka (a broker on this machine: scripts/kafka up)"
        )));
    }
    let job = job(kind, context, 1, 1)?;
    let started = std::time::Instant::now();
    let mut process = EngineProcess::start(&job.launch).map_err(|problem| failed(kind, &problem))?;
    process
        .wait_ready(&job.launch, START_TIMEOUT)
        .map_err(|problem| failed(kind, &format!("did not start: {problem}")))?;
    let readers = readers_of(&job.launch.ready_file).map_err(|problem| failed(kind, &problem))?;
    let mut companions = Vec::new();
    for launch in companions_of(kind, context, &job)? {
        let mut companion = EngineProcess::start(&launch).map_err(|problem| failed(kind, &problem))?;
        companion.wait_ready(&launch, START_TIMEOUT).map_err(|problem| {
            failed(kind, &format!("its instance {} did not start: {problem}", launch.log.display()))
        })?;
        companions.push(companion);
    }
    Ok(Booted { kind, job, process, companions, start_seconds: started.elapsed().as_secs_f64(), readers })
}

/// The other instances of an engine's application, each with its own folder (log, ready and
/// progress files) and state directory; none for an engine that runs as one process.
fn companions_of(kind: EngineKind, context: &Context<'_>, job: &Job) -> Result<Vec<Launch>, RunError> {
    let instances = match kind {
        EngineKind::Kstreams => context.options.kstreams.instances,
        _ => 1,
    };
    (2..=instances)
        .map(|instance| {
            let folder = job.folder.join(format!("instance-{instance}"));
            let state = job.checkpoints.join(format!("instance-{instance}"));
            for dir in [&folder, &state] {
                std::fs::create_dir_all(dir).map_err(output_error(dir))?;
            }
            let mut launch = job.launch.clone();
            let set = |env: &mut Vec<(String, String)>, key: &str, value: String| {
                env.retain(|(name, _)| name != key);
                env.push((key.to_owned(), value));
            };
            set(&mut launch.env, "LK_CHECKPOINT_DIR", absolute(&state));
            set(&mut launch.env, "LK_PROGRESS_FILE", absolute(&folder.join("progress.jsonl")));
            launch.ready_file = folder.join("ready.json");
            set(&mut launch.env, "LK_READY_FILE", absolute(&launch.ready_file));
            launch.log = folder.join("engine.log");
            Ok(launch)
        })
        .collect()
}

fn failed(kind: EngineKind, problem: &str) -> RunError {
    RunError::Engine(EngineError::External(format!("{kind}: {problem}")))
}

/// The readers the engine declares in its ready file (`{"readers": [...]}`).
fn readers_of(ready_file: &Path) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Ready {
        readers: Vec<String>,
    }
    let text = std::fs::read_to_string(ready_file).map_err(|error| format!("{}: {error}", ready_file.display()))?;
    let ready: Ready = serde_json::from_str(&text).map_err(|error| {
        format!("its ready file {} is not {{\"readers\": [...]}} (docs/engines.md): {error}", ready_file.display())
    })?;
    if ready.readers.is_empty() {
        return Err(format!("its ready file {} names no reader of the input", ready_file.display()));
    }
    Ok(ready.readers)
}

/// The topics, folders and command of version `version` of an engine's job (1: the live run;
/// later ones replay the log into fresh state and output), as the application of version
/// `application` (Kafka Streams: its application id; a reset application reruns as itself).
fn job(kind: EngineKind, context: &Context<'_>, version: u32, application: u32) -> Result<Job, RunError> {
    let partitions = context.scenario.engine.partitions;
    let topics = Topics::of(kind, version);
    context.log.create_topic(&topics.output, partitions)?;
    context.log.create_topic(&topics.dead_letters, partitions)?;
    context.log.create_topic(&topics.control, 1)?;
    context.log.create_topic(&topics.late, partitions)?;
    let folder = context.out.join("engines").join(format!("{kind}-v{version}"));
    std::fs::create_dir_all(&folder).map_err(output_error(&folder))?;
    let checkpoints = context.out.join("checkpoints").join(format!("{kind}-v{version}"));
    std::fs::create_dir_all(&checkpoints).map_err(output_error(&checkpoints))?;
    let progress = folder.join("progress.jsonl");
    let ready_file = folder.join("ready.json");
    let (brokers, properties) = match &context.options.log {
        crate::run::LogChoice::Kafka { brokers, properties, .. } => (brokers.clone(), properties.for_java()),
        crate::run::LogChoice::Embedded => unreachable!("checked by boot"),
    };
    let options: serde_json::Map<String, serde_json::Value> =
        properties.into_iter().map(|(key, value)| (key, serde_json::Value::String(value))).collect();
    let queries = context.queries;
    let log = context.log;
    let mut env: Vec<(String, String)> = vec![
        ("LK_ENGINE".into(), kind.name().into()),
        ("LK_BROKERS".into(), brokers),
        ("LK_KAFKA_OPTIONS".into(), serde_json::Value::Object(options).to_string()),
        ("LK_INPUT_TOPIC".into(), log.qualified_name(TOPIC)),
        ("LK_CONTROL_TOPIC".into(), log.qualified_name(&topics.control)),
        ("LK_OUTPUT_TOPIC".into(), log.qualified_name(&topics.output)),
        ("LK_DEAD_LETTER_TOPIC".into(), log.qualified_name(&topics.dead_letters)),
        ("LK_LATE_TOPIC".into(), log.qualified_name(&topics.late)),
        ("LK_PARTITIONS".into(), partitions.to_string()),
        ("LK_CHECKPOINT_DIR".into(), absolute(&checkpoints)),
        ("LK_PROGRESS_FILE".into(), absolute(&progress)),
        ("LK_READY_FILE".into(), absolute(&ready_file)),
        ("LK_RIDES_WINDOW_US".into(), queries.rides_window_us.to_string()),
        ("LK_DEMAND_WINDOW_US".into(), queries.demand_window_us.to_string()),
        ("LK_DEMAND_SLIDE_US".into(), queries.demand_slide_us.to_string()),
        ("LK_SESSION_GAP_US".into(), queries.session_gap_us.to_string()),
        ("LK_TRENDS_WINDOW_US".into(), queries.trends_window_us.to_string()),
        ("LK_WATERMARK_DELAY_US".into(), queries.watermark_delay_us.to_string()),
        ("LK_ALLOWED_LATENESS_US".into(), queries.allowed_lateness_us.to_string()),
    ];
    if context.options.test_knobs.spark_non_idempotent_sink {
        env.push(("LK_TEST_SINK".into(), "non-idempotent".into()));
    }
    if kind == EngineKind::SparkLambda {
        // The Delta tables outlive the job's versions: the reprocessing job (version 2) reruns
        // the batch layer over the live run's master dataset.
        let lake = lake_folder(context.out);
        std::fs::create_dir_all(&lake).map_err(output_error(&lake))?;
        env.push(("LK_LAKE_DIR".into(), absolute(&lake)));
        env.push((
            "LK_BATCH_INTERVAL_US".into(),
            context.scenario.lambda.batch_interval.as_micros().max(1).to_string(),
        ));
        env.push(("LK_LAMBDA_REPORT".into(), absolute(&folder.join("lambda.jsonl"))));
        env.push(("LK_BATCH_WRITING_FILE".into(), absolute(&folder.join("batch-writing"))));
        env.push(("LK_SPARK_MERGE".into(), context.options.spark.merge.name().into()));
        if version > 1 {
            env.push(("LK_LAMBDA_MODE".into(), "reprocess".into()));
        }
    }
    let launch = match kind {
        EngineKind::SparkKappa => spark::launch(context, &folder, env, ready_file, false)?,
        EngineKind::SparkLambda => spark::launch(context, &folder, env, ready_file, true)?,
        EngineKind::Kstreams => kstreams::launch(context, &folder, env, ready_file, application)?,
        EngineKind::Kappa | EngineKind::Lambda => unreachable!("lk's own engines are not started as processes"),
    };
    Ok(Job { launch, folder, checkpoints, progress, topics })
}

/// Where spark-lambda keeps its Delta tables (the master dataset and the batch views).
fn lake_folder(out: &Path) -> PathBuf {
    out.join("lake")
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned()).display().to_string()
}

/// What lk watches of an engine: its output (materialised) and its progress.
struct Watch {
    log: Arc<dyn Log>,
    output: String,
    positions: Vec<u64>,
    batch: RecordBatch,
    served: Served,
    progress: Progress,
    readers: Vec<String>,
    /// Why lk's reader of the output and progress stopped, if it failed: the supervisor ends
    /// the run with it rather than wait for progress that lk can no longer see.
    reader_failure: Option<String>,
}

impl Watch {
    fn new(log: &Arc<dyn Log>, job: &Job, partitions: u32, readers: Vec<String>) -> Result<Self, RunError> {
        let output_partitions = log.partitions(&job.topics.output)?;
        Ok(Self {
            log: Arc::clone(log),
            output: job.topics.output.clone(),
            positions: vec![0; output_partitions as usize],
            batch: RecordBatch::new(),
            served: Served::default(),
            progress: Progress::new(
                job.progress.clone(),
                &log.qualified_name(TOPIC),
                &log.qualified_name(&job.topics.control),
                partitions,
            ),
            readers,
            reader_failure: None,
        })
    }

    /// Reads what the engine has written since the last call; whether there was anything.
    fn poll(&mut self, clock: &dyn Clock) -> Result<bool, RunError> {
        let mut any = false;
        for partition in 0..self.positions.len() {
            self.batch.clear();
            let offset = self.positions[partition];
            let next = self.log.read(&self.output, partition as u32, offset, 8192, &mut self.batch)?;
            if next > offset {
                any = true;
                let now = clock.now_ns();
                for (_, value) in self.batch.iter() {
                    self.served.apply(value, now);
                }
                self.positions[partition] = next;
            }
        }
        let reports = self.progress.reports;
        self.progress.poll();
        Ok(any || self.progress.reports > reports)
    }

    /// What lk sees of the engine's way to the end of input, for a stall's error.
    fn describe(&self, input_ends: &[u64], delay_us: i64, sent: u64) -> String {
        let read: u64 = self.consumed().map_or(0, |consumed| consumed.iter().sum());
        let threshold_ms = (END_OF_INPUT_US - delay_us) / 1000;
        let short: Vec<&str> = self
            .readers
            .iter()
            .filter(|reader| {
                self.progress.has_watermark(reader)
                    && self.progress.watermark_ms(reader).is_none_or(|watermark| watermark < threshold_ms)
            })
            .map(String::as_str)
            .collect();
        format!(
            "lk saw {} micro-batch reports; its readers had read {read} of {} input records and {} of {sent} \
             end-of-input records; {}",
            self.progress.reports,
            input_ends.iter().sum::<u64>(),
            self.end_records_read(),
            if short.is_empty() {
                "every watermark had passed the end".to_owned()
            } else {
                format!("the watermarks of {} had not passed the end", short.join(", "))
            }
        )
    }

    /// Whether lk has read the output topic up to its end now.
    fn output_read(&self) -> Result<bool, lk_engines::log::LogError> {
        let ends = self.log.end_offsets(&self.output)?;
        Ok(ends.iter().zip(&self.positions).all(|(end, position)| position >= end))
    }

    /// Per input partition, what every reader has read.
    fn consumed(&self) -> Option<Vec<u64>> {
        let readers: Vec<&str> = self.readers.iter().map(String::as_str).collect();
        self.progress.consumed(&readers)
    }

    /// End-of-input records every reader has read.
    fn end_records_read(&self) -> u64 {
        self.readers
            .iter()
            .map(|reader| {
                self.progress
                    .queries
                    .get(reader)
                    .map_or(0, |batches| batches.values().map(|batch| batch.control_end).max().unwrap_or(0))
            })
            .min()
            .unwrap_or(0)
    }

    /// Whether to send another end-of-input record: every reader has read the `sent` ones and
    /// yet one with a watermark has not run with the end's. An engine runs a micro-batch only for
    /// new data (Spark runs one without data only for a stateful query), and the batch that reads
    /// the record runs with the watermark from before it; the next record's batch runs with the
    /// end's. At most three are sent.
    fn another_end_record(&self, sent: u64, input_ends: &[u64], delay_us: i64) -> bool {
        (1..3).contains(&sent) && self.end_records_read() >= sent && !self.drained(input_ends, delay_us)
    }

    /// Whether every reader has read the whole input, nothing it read is still inside the engine,
    /// and every reader with a watermark has run a micro-batch with the end of input's.
    fn drained(&self, input_ends: &[u64], delay_us: i64) -> bool {
        let read_all = self.consumed().is_some_and(|consumed| consumed.iter().zip(input_ends).all(|(c, e)| c >= e));
        let threshold_ms = (END_OF_INPUT_US - delay_us) / 1000;
        read_all
            && self.end_records_read() >= 1
            && self.progress.inside == 0
            && self.readers.iter().all(|reader| {
                !self.progress.has_watermark(reader)
                    || self.progress.watermark_ms(reader).is_some_and(|watermark| watermark >= threshold_ms)
            })
    }
}

/// One incarnation of an external engine's process.
struct Incarnation {
    usage: Usage,
    /// When it had read the whole input (its last incarnation only).
    caught_up_ns: Option<u64>,
    /// Seconds a restart took until ready (not the first start).
    restart_seconds: Option<f64>,
    /// Whether it was killed while it was writing a batch view (spark-lambda).
    killed_mid_write: bool,
}

/// An external engine at the seam.
pub struct External(pub EngineKind);

struct ExternalRunning {
    kind: EngineKind,
    control: Arc<JobControl>,
    supervisor: Supervisor,
    job: SupervisedJob<Incarnation>,
    watch: Arc<Mutex<Watch>>,
    stop_reader: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<Result<(), RunError>>,
    definition: Job,
    start_seconds: f64,
    mapping: TimeMapping,
    end_sent_ns: Arc<AtomicU64>,
    companions: Vec<EngineProcess>,
}

struct ExternalFinished {
    kind: EngineKind,
    incarnations: Result<Vec<Incarnation>, RunError>,
    control: Arc<JobControl>,
    /// Shared with the completeness sampler until the run stops it.
    watch: Arc<Mutex<Watch>>,
    definition: Job,
    start_seconds: f64,
    mapping: TimeMapping,
    end_sent_ns: u64,
    /// What the other instances used.
    companions: Usage,
}

impl Engine for External {
    fn kind(&self) -> EngineKind {
        self.0
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Box<dyn Running>, RunError> {
        let kind = self.0;
        let booted = setup
            .booted
            .lock()
            .expect("not poisoned")
            .remove(&kind)
            .ok_or_else(|| RunError::Invalid(format!("{kind} was not started before the run")))?;
        let Booted { job: definition, process, companions, start_seconds, readers, .. } = booted;
        let partitions = setup.scenario.engine.partitions;
        let watch = Arc::new(Mutex::new(Watch::new(&setup.base, &definition, partitions, readers)?));
        let control = Arc::new(JobControl::default());
        let stop_reader = Arc::new(AtomicBool::new(false));
        // The reader: the output and the progress, as they come, and the engine's position.
        let reader = {
            let (watch, control, stop, clock) =
                (Arc::clone(&watch), Arc::clone(&control), Arc::clone(&stop_reader), Arc::clone(&setup.clock));
            std::thread::Builder::new()
                .name(format!("lk-{kind}-reader"))
                .spawn(move || -> Result<(), RunError> {
                    while !stop.load(Ordering::Acquire) {
                        let mut watch = watch.lock().expect("not poisoned");
                        let any = match watch.poll(&*clock) {
                            Ok(any) => any,
                            Err(error) => {
                                watch.reader_failure = Some(error.to_string());
                                return Err(error);
                            }
                        };
                        if let Some(consumed) = watch.consumed() {
                            for (position, offset) in control.positions.iter().zip(consumed) {
                                position.store(offset, Ordering::Relaxed);
                            }
                        }
                        drop(watch);
                        if !any {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    Ok(())
                })
                .map_err(output_error(setup.out))?
        };
        let first = Mutex::new(Some(process));
        let end_sent_ns = Arc::new(AtomicU64::new(0));
        let (job_watch, job_control, clock, log, launch) = (
            Arc::clone(&watch),
            Arc::clone(&control),
            Arc::clone(&setup.clock),
            Arc::clone(&setup.base),
            definition.launch.clone(),
        );
        let (control_topic, end_sent, delay_us) = (
            definition.topics.control.clone(),
            Arc::clone(&end_sent_ns),
            setup.queries.watermark_delay_us + setup.queries.allowed_lateness_us,
        );
        let (supervisor, job) =
            Supervisor::spawn(&format!("lk-{kind}-job"), Arc::clone(&control), Arc::clone(&setup.clock), move || {
                let taken = first.lock().expect("not poisoned").take();
                let (process, restart_seconds) = match taken {
                    Some(process) => (process, None),
                    None => restart(kind, &launch, &*clock)?,
                };
                supervise_process(
                    kind,
                    process,
                    &launch,
                    &job_watch,
                    &job_control,
                    &*clock,
                    &*log,
                    &control_topic,
                    &end_sent,
                    delay_us,
                )
                .map(|(usage, caught_up_ns, killed_mid_write)| Incarnation {
                    usage,
                    caught_up_ns,
                    restart_seconds,
                    killed_mid_write,
                })
            })
            .map_err(output_error(setup.out))?;
        Ok(Box::new(ExternalRunning {
            kind,
            control,
            supervisor,
            job,
            watch,
            stop_reader,
            reader,
            definition,
            start_seconds,
            mapping: setup.mapping,
            end_sent_ns,
            companions,
        }))
    }
}

/// Starts an engine's process again after a crash, on the same checkpoint.
fn restart(kind: EngineKind, launch: &Launch, clock: &dyn Clock) -> Result<(EngineProcess, Option<f64>), EngineError> {
    let started = clock.now_ns();
    let mut process =
        EngineProcess::start(launch).map_err(|problem| EngineError::External(format!("{kind}: {problem}")))?;
    process
        .wait_ready(launch, START_TIMEOUT)
        .map_err(|problem| EngineError::External(format!("{kind} did not restart: {problem}")))?;
    Ok((process, Some((clock.now_ns() - started) as f64 / 1e9)))
}

/// Watches one incarnation of an engine's process until it is crashed (SIGKILL), fails, or has
/// drained once the input is closed (then it is stopped). Returns what it used, once drained
/// when it had read the whole input, and whether a kill landed while it wrote a batch view.
#[allow(clippy::too_many_arguments, reason = "one incarnation's whole context, passed once")]
#[allow(clippy::disallowed_methods, reason = "the stall timeout is a safety net, not a measurement")]
fn supervise_process(
    kind: EngineKind,
    mut process: EngineProcess,
    launch: &Launch,
    watch: &Mutex<Watch>,
    control: &JobControl,
    clock: &dyn Clock,
    log: &dyn Log,
    control_topic: &str,
    end_sent: &AtomicU64,
    delay_us: i64,
) -> Result<(Usage, Option<u64>, bool), EngineError> {
    let fail = |process: EngineProcess, problem: String| {
        let _ = process.kill();
        Err(EngineError::External(format!("{kind}: {problem}")))
    };
    let mut caught_up_ns = None;
    let (mut last_batches, mut last_progress) = (0, std::time::Instant::now());
    let mut last_nudge: Option<std::time::Instant> = None;
    // An after-output crash: the upserts lk had read of each query when it was asked for, and when.
    let mut kill_after: Option<([u64; 5], std::time::Instant)> = None;
    // A mid-commit crash of an engine that says when it writes a batch view (spark-lambda)
    // waits for a write, to land in it, and is fired anyway after a while without one.
    let writing_marker =
        launch.env.iter().find(|(key, _)| key == "LK_BATCH_WRITING_FILE").map(|(_, path)| PathBuf::from(path));
    let mut mid_write: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        process.sample();
        if let (Some(asked), Some(marker)) = (mid_write, &writing_marker) {
            let writing = marker.exists();
            if writing || asked.elapsed() > MID_WRITE_WAIT {
                control.crash.store(true, Ordering::Release);
                return Ok((process.kill(), None, writing));
            }
        }
        // A crash is a SIGKILL of the whole process group. Mid-commit: at once, wherever the
        // engine is. After output: as soon as every query that had written output has written
        // again, so that the kill lands after a round of micro-batches' output and, as often as
        // it can from outside, before their commits (or after 30 s).
        if control.crash_mid_commit.swap(false, Ordering::AcqRel) {
            if writing_marker.is_some() {
                mid_write = Some(std::time::Instant::now());
                continue;
            }
            control.crash.store(true, Ordering::Release);
            return Ok((process.kill(), None, false));
        }
        if control.crashed() {
            let upserts = watch.lock().expect("not poisoned").served.upserts_per_query;
            match kill_after {
                None => kill_after = Some((upserts, std::time::Instant::now())),
                Some((before, asked))
                    if before.iter().zip(upserts).all(|(before, now)| *before == 0 || now > *before)
                        || asked.elapsed() > Duration::from_secs(30) =>
                {
                    return Ok((process.kill(), None, false));
                }
                Some(_) => {}
            }
        }
        if let Some(status) = process.exited() {
            return fail(
                process,
                format!("its process exited ({status}) while the run needed it; {}", tail(&launch.log)),
            );
        }
        let watch = watch.lock().expect("not poisoned");
        if let Some(failure) = &watch.progress.failure {
            let problem = format!("{failure}; {}", tail(&launch.log));
            drop(watch);
            return fail(process, problem);
        }
        if let Some(failure) = &watch.reader_failure {
            let problem = format!("lk could no longer read its output or progress: {failure}");
            drop(watch);
            return fail(process, problem);
        }
        // Reports, not batch ids: a query restarted on a fresh checkpoint numbers from 0 again.
        let batches = watch.progress.reports;
        if batches > last_batches {
            (last_batches, last_progress) = (batches, std::time::Instant::now());
        }
        if !control.input_closed.load(Ordering::Acquire) {
            continue;
        }
        let input_ends = log.end_offsets(TOPIC)?;
        if caught_up_ns.is_none()
            && watch.consumed().is_some_and(|consumed| consumed.iter().zip(&input_ends).all(|(c, e)| c >= e))
        {
            caught_up_ns = Some(clock.now_ns());
        }
        if caught_up_ns.is_some() && end_sent.load(Ordering::Acquire) == 0 {
            send_end_of_input(log, control_topic)?;
            end_sent.store(clock.now_ns(), Ordering::Release);
        }
        if end_sent.load(Ordering::Acquire) > 0 {
            let sent = log.end_offset(control_topic, 0)?;
            // An engine restarted after it had read the end-of-input records has nothing new
            // to read, and an engine runs a micro-batch only for new data: a stateful query
            // whose watermark is restored from before the end then never drains. A record
            // sent when no micro-batch has run for a while gives it one.
            let idle = last_progress.elapsed() > END_NUDGE_AFTER
                && last_nudge.is_none_or(|nudged: std::time::Instant| nudged.elapsed() > END_NUDGE_AFTER)
                && sent < END_RECORDS_MAX;
            if watch.another_end_record(sent, &input_ends, delay_us) {
                send_end_of_input(log, control_topic)?;
            } else if idle && !watch.drained(&input_ends, delay_us) {
                send_end_of_input(log, control_topic)?;
                last_nudge = Some(std::time::Instant::now());
            }
        }
        if end_sent.load(Ordering::Acquire) > 0 && watch.drained(&input_ends, delay_us) && watch.output_read()? {
            drop(watch);
            return Ok((process.stop(Duration::from_secs(10)), caught_up_ns, false));
        }
        if last_progress.elapsed() > STALL_TIMEOUT {
            let sent = if end_sent.load(Ordering::Acquire) > 0 { log.end_offset(control_topic, 0)? } else { 0 };
            let seen = watch.describe(&input_ends, delay_us, sent);
            let output =
                if watch.output_read()? { "lk had read all its output" } else { "lk had not read all its output" };
            drop(watch);
            return fail(
                process,
                format!(
                    "it ran no micro-batch for {} s while lk waited for it to drain ({seen}; {output}); {}",
                    STALL_TIMEOUT.as_secs(),
                    tail(&launch.log)
                ),
            );
        }
    }
}

/// How long lk waits without a micro-batch, the input read and the engine not drained, before
/// it sends another end-of-input record (docs/engines.md).
const END_NUDGE_AFTER: Duration = Duration::from_secs(30);

/// How long a mid-commit crash of spark-lambda waits for a batch view write before it fires.
const MID_WRITE_WAIT: Duration = Duration::from_secs(120);

/// End-of-input records sent at most.
const END_RECORDS_MAX: u64 = 8;

/// Appends an end-of-input record to the control topic (docs/engines.md).
fn send_end_of_input(log: &dyn Log, control_topic: &str) -> Result<(), lk_engines::log::LogError> {
    let mut record = RecordBatch::new();
    record.push(0, format!(r#"{{"kind":"end_of_input","event_time_us":{END_OF_INPUT_US}}}"#).as_bytes());
    log.append(control_topic, 0, &record).map(|_| ())
}

impl Running for ExternalRunning {
    fn kind(&self) -> EngineKind {
        self.kind
    }

    fn control(&self) -> &Arc<JobControl> {
        &self.control
    }

    fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    fn demand_sampler(&self) -> Box<dyn Fn() -> BTreeMap<i64, u64> + Send> {
        let watch = Arc::clone(&self.watch);
        Box::new(move || watch.lock().expect("not poisoned").served.demand_by_window())
    }

    fn join(self: Box<Self>) -> Box<dyn Finished> {
        let ExternalRunning {
            kind,
            control,
            job,
            watch,
            stop_reader,
            reader,
            definition,
            start_seconds,
            mapping,
            end_sent_ns,
            companions,
            ..
        } = *self;
        let incarnations = job.join().expect("an external engine's job thread panicked; its message is above");
        let companions = companions.into_iter().fold(Usage::default(), |total, companion| {
            let usage = companion.stop(Duration::from_secs(10));
            Usage {
                cpu_seconds: total.cpu_seconds + usage.cpu_seconds,
                peak_rss_bytes: total.peak_rss_bytes + usage.peak_rss_bytes,
            }
        });
        stop_reader.store(true, Ordering::Release);
        let read = reader.join().expect("an external engine's reader panicked; its message is above");
        let incarnations = match (incarnations, read) {
            (Err(error), _) => Err(RunError::from(error)),
            (Ok(_), Err(error)) => Err(error),
            (Ok(incarnations), Ok(())) => Ok(incarnations),
        };
        Box::new(ExternalFinished {
            kind,
            incarnations,
            control,
            watch,
            definition,
            start_seconds,
            mapping,
            end_sent_ns: end_sent_ns.load(Ordering::Acquire),
            companions,
        })
    }
}

/// An external engine's lateness rule, from what it reported.
enum Rule {
    /// Spark's: per query and micro-batch, from the watermarks in its progress.
    Watermarks(BatchWatermarks),
    /// Kafka Streams': the drops it declared on its late topic.
    Declared(kstreams::DeclaredLate),
}

impl Rule {
    fn of(kind: EngineKind, progress: &Progress, log: &dyn Log, late_topic: &str) -> Result<Self, RunError> {
        Ok(match kind {
            EngineKind::Kstreams => Rule::Declared(kstreams::DeclaredLate::read(log, late_topic)?),
            _ => Rule::Watermarks(BatchWatermarks::from_progress(progress)),
        })
    }

    fn lateness(&self) -> &dyn Lateness {
        match self {
            Rule::Watermarks(rule) => rule,
            Rule::Declared(rule) => rule,
        }
    }

    /// The rule in a sentence, for results.json and the report.
    fn describe(&self) -> String {
        match self {
            Rule::Watermarks(_) => "one watermark per streaming query over all partitions (the largest event time of \
                                    the query's events read so far, less the delay), advanced once per micro-batch; a \
                                    micro-batch drops an event's row for a window that ended at or before the previous \
                                    batch's watermark"
                .to_owned(),
            Rule::Declared(rule) => format!(
                "one stream time per aggregation and task (the largest timestamp it has seen since the task started); \
                 an event is dropped from a window that ended at or before the stream time less the grace period (a \
                 session: whose merged session ends before it less the inactivity gap); the application declared {} drops on its late topic{}",
                rule.len(),
                if rule.unreadable > 0 {
                    format!(" ({} declarations lk could not read)", rule.unreadable)
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// An engine's lateness rule as its micro-batches applied it: an event read by micro-batch `b`
/// of a query counts towards a window unless the window ended at or before the watermark that
/// batch filtered late rows with (Spark: the watermark of the batch before, which is the one a
/// stateful operator drops late rows by; a window's end at or before it is late).
pub struct BatchWatermarks {
    queries: BTreeMap<Query, Vec<Batch>>,
}

impl BatchWatermarks {
    /// The rule of the readers in `progress` that compute `Query`s (by their names).
    fn from_progress(progress: &Progress) -> Self {
        let queries = Query::ALL
            .iter()
            .filter_map(|query| {
                let batches = progress.queries.get(query.name())?;
                Some((*query, batches.values().cloned().collect()))
            })
            .collect();
        Self { queries }
    }
}

impl BatchWatermarks {
    /// The index of the batch of `query` that read `at`, if one did.
    fn batch_of(&self, query: Query, at: Position) -> Option<usize> {
        let batches = self.queries.get(&query)?;
        let partition = at.partition as usize;
        // The first batch whose end is past the offset read it (batches are in id order, and
        // their ends never go back).
        let index = batches.partition_point(|batch| batch.end.get(partition).is_none_or(|end| *end <= at.offset));
        let batch = batches.get(index)?;
        batch.start.get(partition).is_none_or(|start| *start <= at.offset).then_some(index)
    }
}

impl Lateness for BatchWatermarks {
    fn accepts(&self, query: Query, at: Position, _stream_time_us: i64, window_end_us: i64) -> bool {
        // No batch read it: it is not late by the engine's rule, and its absence is a loss.
        let Some(index) = self.batch_of(query, at) else { return true };
        let batches = &self.queries[&query];
        let watermark_ms = if index == 0 { None } else { batches[index - 1].watermark_ms };
        watermark_ms.is_none_or(|watermark_ms| window_end_us > watermark_ms.saturating_mul(1000))
    }

    /// Spark's session windows in append mode, batch by batch: a batch's events merge with the
    /// sessions still in state (one that starts at or before another's end, its last event plus
    /// the gap: Spark's `MergingSessionsIterator` merges sessions that touch), and at the batch's
    /// end every
    /// session whose end (last event plus the gap) is at or before the batch's watermark is
    /// emitted and evicted; an event after that starts a session of its own.
    fn sessions(&self, activity: &[(i64, bool, u64, Position)], gap_us: i64) -> Option<Vec<Session>> {
        let batches = self.queries.get(&Query::DriverSessions)?;
        // Events by the batch that read them; one no batch read goes last.
        let mut by_batch: BTreeMap<usize, Vec<(i64, bool, u64)>> = BTreeMap::new();
        for &(time, ride, id, at) in activity {
            let index = self.batch_of(Query::DriverSessions, at).unwrap_or(batches.len());
            by_batch.entry(index).or_default().push((time, ride, id));
        }
        let (mut open, mut closed): (Vec<Session>, Vec<Session>) = (Vec::new(), Vec::new());
        for index in 0..=batches.len() {
            if let Some(events) = by_batch.get(&index) {
                let mut all: Vec<Session> = std::mem::take(&mut open);
                all.extend(events.iter().map(|&(time, ride, id)| Session::single(time, ride, id)));
                all.sort_by_key(|session| (session.start_us, session.last_us));
                for session in all {
                    match open.last_mut() {
                        Some(last) if session.start_us <= last.last_us.saturating_add(gap_us) => last.absorb(&session),
                        _ => open.push(session),
                    }
                }
            }
            let watermark_us =
                batches.get(index).and_then(|batch| batch.watermark_ms).map(|ms| ms.saturating_mul(1000));
            if let Some(watermark_us) = watermark_us {
                let (evicted, kept): (Vec<Session>, Vec<Session>) =
                    open.into_iter().partition(|session| session.last_us.saturating_add(gap_us) <= watermark_us);
                closed.extend(evicted);
                open = kept;
            }
        }
        closed.extend(open);
        closed.sort_by_key(|session| session.start_us);
        Some(closed)
    }
}

impl Finished for ExternalFinished {
    fn judge(self: Box<Self>, judge: &Judge<'_>, observed: Observed) -> Result<EngineResults, RunError> {
        let ExternalFinished {
            kind,
            incarnations,
            control,
            watch,
            definition,
            start_seconds,
            mapping,
            end_sent_ns,
            companions,
        } = *self;
        let incarnations = incarnations?;
        let watch = watch.lock().expect("not poisoned");
        let partitions = judge.scenario.engine.partitions;
        let caught_up_ns = incarnations
            .last()
            .and_then(|last| last.caught_up_ns)
            .unwrap_or(judge.input_end_ns)
            .max(judge.input_end_ns);
        let processed = control.consumed(partitions);
        let served = watch.served.views();
        judge.write_views(kind.name(), &served)?;
        // The truth under the engine's own lateness rule; a Lambda's batch layer counts every
        // event, however late, so its truth is every event (as lk's Lambda's is).
        let rule = Rule::of(kind, &watch.progress, &**judge.base, &definition.topics.late)?;
        let (mut correctness, late_by_rule) = if kind == EngineKind::SparkLambda {
            let correctness = judge.check(
                &served,
                &judge.oracle.everything,
                Truth::Everything,
                &control,
                kind.guarantee(judge.scenario),
            )?;
            (correctness, [0; 5])
        } else {
            let truth = Oracle::compute_with(&**judge.base, TOPIC, &judge.queries, Some(rule.lateness()))?;
            let correctness = judge.check(
                &served,
                &truth.policy,
                Truth::Rule(rule.lateness()),
                &control,
                kind.guarantee(judge.scenario),
            )?;
            (correctness, truth.late_dropped)
        };
        correctness.late_dropped = late_by_rule.iter().sum();
        let dead_letters = dead_letters(judge, &definition.topics.dead_letters, kind)?;
        correctness.dead_lettered = dead_letters.1;
        correctness.dead_letter_file = dead_letters.0.display().to_string();
        correctness.dead_letter_file_records = dead_letters.1;
        correctness.dead_letters_accounted = dead_letters.1 == judge.oracle.dead_lettered;
        let mut recorder = LatencyRecorder::new(mapping, None);
        visible_latency(judge, &watch.served, &mapping, &mut recorder)?;
        window_latencies(judge, &watch.served, &mapping, end_sent_ns, &mut recorder);
        let window_latency = judge.window_latency(std::iter::once(&recorder), &served, correctness.late_dropped);
        let batch_ms: Vec<f64> = watch
            .progress
            .queries
            .values()
            .flat_map(|batches| batches.values().map(|b| b.duration_ms as f64))
            .collect();
        let mut external = ExternalResults {
            command: std::iter::once(definition.launch.program.display().to_string())
                .chain(definition.launch.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
            start_seconds,
            restart_seconds: incarnations.iter().filter_map(|incarnation| incarnation.restart_seconds).collect(),
            readers: watch.readers.clone(),
            batches: batch_ms.len() as u64,
            batch_ms_p50: median(&batch_ms),
            batch_ms_max: batch_ms.iter().copied().fold(0.0, f64::max),
            upserts: watch.served.upserts,
            unreadable_upserts: watch.served.unreadable,
            first_unreadable: watch.served.first_unreadable.clone(),
            lateness_rule: if kind == EngineKind::SparkLambda {
                "none in the end: the speed layer drops by Spark's watermarks, and the batch layer, which serves every \
                 cell its cutoff has passed, counts every event however late"
                    .to_owned()
            } else {
                rule.describe()
            },
            late_by_its_rule: Query::ALL
                .iter()
                .zip(late_by_rule)
                .filter(|(query, _)| **query != Query::DriverLocation)
                .map(|(query, late)| (query.name().to_owned(), late))
                .collect(),
            replay_differs_from_live: 0,
            reset_rerun: None,
            lake: None,
        };
        if kind == EngineKind::SparkLambda {
            let kills = incarnations.iter().filter(|incarnation| incarnation.killed_mid_write).count() as u64;
            external.lake = Some(lake::results(judge, &definition, kills)?);
        }
        let reprocess = if judge.options.reprocess && kind == EngineKind::SparkLambda {
            let lake = external.lake.as_mut().expect("set above");
            lake::reprocess(judge, lake)?
        } else if judge.options.reprocess {
            let (reprocess, differs) = replay(kind, judge, &served, 2, 2)?;
            external.replay_differs_from_live = differs;
            if kind == EngineKind::Kstreams {
                // The Kafka Streams way to reprocess in place: the reset tool rewinds the live
                // application's input and deletes its internal topics, and the same application id
                // runs again from the earliest offset (into a fresh output topic, to be judged).
                let application = judge.base.qualified_name(&kstreams::application(1));
                let reset_seconds = kstreams::reset(judge, &application, &definition.folder)?;
                let (rerun, _) = replay(kind, judge, &served, 3, 1)?;
                external.reset_rerun = Some(crate::results::ResetRerun { reset_seconds, rerun });
            }
            reprocess
        } else {
            Reprocess::default()
        };
        if kind == EngineKind::Kstreams {
            // Kafka Streams' internal topics (repartitions, changelogs) are the application's, not
            // in lk's manifest: the reset tool deletes them, so that a shared broker keeps none.
            let versions: &[u32] = if judge.options.reprocess { &[1, 2] } else { &[1] };
            for version in versions {
                let application = judge.base.qualified_name(&kstreams::application(*version));
                if let Err(error) = kstreams::reset(judge, &application, &definition.folder) {
                    eprintln!("warning: {application}'s internal topics were not deleted: {error}");
                }
            }
        }
        let usage = incarnations.iter().fold(companions, |total, incarnation| Usage {
            cpu_seconds: total.cpu_seconds + incarnation.usage.cpu_seconds,
            peak_rss_bytes: total.peak_rss_bytes.max(companions.peak_rss_bytes + incarnation.usage.peak_rss_bytes),
        });
        let catch_up_seconds = (caught_up_ns - judge.input_end_ns) as f64 / 1e9;
        let checkpoint_bytes = directory_bytes(&definition.checkpoints);
        Ok(EngineResults {
            throughput_eps: judge.throughput(&observed, processed, caught_up_ns),
            kept_up: catch_up_seconds < 1.0,
            catch_up_seconds,
            latency_ms: LatencySummary::of(&recorder.visible_us),
            latency_stages: None,
            window_latency,
            correctness,
            reprocess,
            cost: Cost {
                cpu_seconds: usage.cpu_seconds,
                peak_rss_bytes: usage.peak_rss_bytes,
                log_bytes: judge.log_bytes,
                stored_bytes: judge.log_bytes + checkpoint_bytes,
                checkpoint_bytes,
                view_bytes: 0,
                checkpoints: external.batches,
            },
            faults: judge.faults(&observed, caught_up_ns, &control),
            throughput_series: observed.throughput_series,
            completeness_series: observed.completeness_series,
            latency_series: observed.latency_series,
            lambda: None,
            external: Some(external),
        })
    }
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Calls `visit` with every record of `topic`, partition by partition, from its start.
fn each_record(log: &dyn Log, topic: &str, mut visit: impl FnMut(&[u8])) -> Result<(), lk_engines::log::LogError> {
    let mut batch = RecordBatch::new();
    for partition in 0..log.partitions(topic)? {
        let mut offset = log.start_offset(topic, partition)?;
        loop {
            batch.clear();
            let next = log.read(topic, partition, offset, 8192, &mut batch)?;
            if next == offset {
                break;
            }
            offset = next;
            for (_, value) in batch.iter() {
                visit(value);
            }
        }
    }
    Ok(())
}

/// The engine's dead letters: every record of its dead-letter topic, written to
/// `dead-letters/<engine>.jsonl`; returns the file and the distinct input records they name.
fn dead_letters(judge: &Judge<'_>, topic: &str, kind: EngineKind) -> Result<(PathBuf, u64), RunError> {
    let path = judge.out.join("dead-letters").join(format!("{kind}.jsonl"));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(output_error(parent))?;
    }
    let mut text = String::new();
    let mut distinct = std::collections::BTreeSet::new();
    each_record(&**judge.base, topic, |value| {
        let line = String::from_utf8_lossy(value);
        #[derive(serde::Deserialize)]
        struct Letter {
            partition: u32,
            offset: u64,
        }
        if let Ok(letter) = serde_json::from_str::<Letter>(&line) {
            distinct.insert((letter.partition, letter.offset));
        }
        text.push_str(&line);
        text.push('\n');
    })?;
    std::fs::write(&path, text).map_err(output_error(&path))?;
    Ok((path, distinct.len() as u64))
}

/// Visible latency of every ping that moved its driver's location forward in log order (the
/// pings lk's own engines time): from its due time until the first upsert of its driver that
/// reflects it or a newer ping arrived.
fn visible_latency(
    judge: &Judge<'_>,
    served: &Served,
    mapping: &TimeMapping,
    recorder: &mut LatencyRecorder,
) -> Result<(), RunError> {
    let mut newest: rustc_hash::FxHashMap<u32, (i64, u64)> = rustc_hash::FxHashMap::default();
    scan_first_copies(&**judge.base, TOPIC, |event, _, _| {
        let Payload::DriverPing { driver_id, .. } = event.payload else { return };
        let ping = (event.event_time_us, event.event_id);
        let latest = newest.entry(driver_id).or_insert((i64::MIN, 0));
        if ping <= *latest {
            return;
        }
        *latest = ping;
        let Some(history) = served.location_history.get(&driver_id) else { return };
        let first = history.partition_point(|&(_, time, id)| (time, id) < ping);
        if let Some(&(arrived_ns, _, _)) = history.get(first)
            && arrived_ns >= mapping.warmup_end_ns
        {
            let latency_us = arrived_ns.saturating_sub(mapping.start_ns + event.due_ns) / 1000;
            recorder.visible_us.saturating_record(latency_us.max(1));
        }
    })?;
    Ok(())
}

/// Window latencies: each window cell's final value, from when it was first served, against the
/// due time of its last event (processing) and the window's end on the clock (event time).
/// Cells first served once the end of input was sent are left out: they were closed by it, not
/// by the stream.
fn window_latencies(
    judge: &Judge<'_>,
    served: &Served,
    mapping: &TimeMapping,
    end_sent_ns: u64,
    recorder: &mut LatencyRecorder,
) {
    let queries = judge.queries;
    let mut record = |since_ns: u64, max_due_ns: u64, end_us: i64| {
        if since_ns < mapping.warmup_end_ns || (end_sent_ns > 0 && since_ns >= end_sent_ns) {
            return;
        }
        recorder.processing_us.saturating_record(since_ns.saturating_sub(mapping.start_ns + max_due_ns) / 1000);
        recorder.event_time.record(since_ns as i64 - mapping.clock_ns_of(end_us));
    };
    for ((_, start), cell) in &served.rides {
        record(cell.since_ns, cell.max_due_ns, start + queries.rides_window_us);
    }
    for ((_, start), cell) in &served.demand {
        record(cell.since_ns, cell.max_due_ns, start + queries.demand_window_us);
    }
    for cell in served.sessions.values() {
        record(cell.since_ns, cell.max_due_ns, cell.value.last_us + queries.session_gap_us);
    }
    for ((_, start), cell) in &served.trends {
        record(cell.since_ns, cell.max_due_ns, start + queries.trends_window_us);
    }
}

/// Reprocessing the engine's way: a new job from the earliest offset into fresh state and a new
/// output topic, timed from its start until it has drained. Its views are checked against the
/// truth under its own micro-batches' watermarks; returns also how many cells differ from the
/// live run's.
#[allow(clippy::disallowed_methods, reason = "the replay's duration is wall time, as Kappa's is")]
fn replay(
    kind: EngineKind,
    judge: &Judge<'_>,
    live: &ViewSet,
    version: u32,
    application: u32,
) -> Result<(Reprocess, u64), RunError> {
    let context = Context {
        scenario: judge.scenario,
        options: judge.options,
        log: judge.base,
        out: judge.out,
        queries: judge.queries,
    };
    let definition = job(kind, &context, version, application)?;
    let started = judge.clock.now_ns();
    let mut process = EngineProcess::start(&definition.launch).map_err(|problem| failed(kind, &problem))?;
    process
        .wait_ready(&definition.launch, START_TIMEOUT)
        .map_err(|problem| failed(kind, &format!("did not start to replay: {problem}")))?;
    let readers = readers_of(&definition.launch.ready_file).map_err(|problem| failed(kind, &problem))?;
    let mut watch = Watch::new(judge.base, &definition, judge.scenario.engine.partitions, readers)?;
    let input_ends = judge.base.end_offsets(TOPIC)?;
    let delay_us = judge.queries.watermark_delay_us + judge.queries.allowed_lateness_us;
    let mut last_progress = std::time::Instant::now();
    loop {
        if watch.poll(&**judge.clock)? {
            last_progress = std::time::Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
        process.sample();
        if let Some(failure) = &watch.progress.failure {
            return Err(failed(kind, &format!("its replay failed: {failure}; {}", tail(&definition.launch.log))));
        }
        if let Some(status) = process.exited() {
            return Err(failed(kind, &format!("its replay exited ({status}); {}", tail(&definition.launch.log))));
        }
        if watch.drained(&input_ends, delay_us) && watch.output_read()? {
            break;
        }
        let sent = judge.base.end_offset(&definition.topics.control, 0)?;
        if watch.another_end_record(sent, &input_ends, delay_us) {
            send_end_of_input(&**judge.base, &definition.topics.control)?;
        }
        if last_progress.elapsed() > STALL_TIMEOUT {
            return Err(failed(kind, &format!("its replay stalled; {}", tail(&definition.launch.log))));
        }
    }
    let seconds = (judge.clock.now_ns() - started) as f64 / 1e9;
    let _ = process.stop(Duration::from_secs(10));
    let rebuilt = watch.served.views();
    let rule = Rule::of(kind, &watch.progress, &**judge.base, &definition.topics.late)?;
    let truth = Oracle::compute_with(&**judge.base, TOPIC, &judge.queries, Some(rule.lateness()))?;
    let mismatched: u64 = rebuilt.compare_with(&truth.policy).values().map(|query| query.mismatched_windows).sum();
    let differs: u64 = rebuilt.compare_with(live).values().map(|query| query.mismatched_windows).sum();
    let events = input_ends.iter().sum::<u64>();
    Ok((
        Reprocess {
            events,
            seconds,
            events_per_second: events as f64 / seconds.max(1e-9),
            correct: mismatched == 0,
            mismatched_windows: mismatched,
            restarts: 0,
        },
        differs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: u64, start: u64, end: u64, watermark_ms: Option<i64>) -> Batch {
        Batch { id, start: vec![start], end: vec![end], control_end: 0, watermark_ms, rows: 0, duration_ms: 0 }
    }

    fn at(offset: u64) -> Position {
        Position { partition: 0, offset }
    }

    #[test]
    fn a_batch_drops_rows_for_windows_its_previous_batchs_watermark_has_passed() {
        let rule = BatchWatermarks {
            queries: BTreeMap::from([(
                Query::ZoneDemand,
                vec![batch(0, 0, 10, Some(0)), batch(1, 10, 20, Some(100)), batch(2, 20, 30, Some(200))],
            )]),
        };
        // Read by batch 1, which drops by batch 0's watermark (0 ms).
        assert!(rule.accepts(Query::ZoneDemand, at(15), 0, 1));
        assert!(!rule.accepts(Query::ZoneDemand, at(15), 0, 0));
        // Read by batch 2, which drops by batch 1's (100 ms): a window ending at it is late.
        assert!(rule.accepts(Query::ZoneDemand, at(25), 0, 150_000));
        assert!(!rule.accepts(Query::ZoneDemand, at(25), 0, 100_000));
        // Read by no batch: not late by its rule (its absence is a loss).
        assert!(rule.accepts(Query::ZoneDemand, at(35), 0, 0));
        // A query the engine did not report: not late.
        assert!(rule.accepts(Query::RidesPerDriver, at(25), 0, 0));
    }

    #[test]
    fn a_session_evicted_by_the_watermark_is_not_extended_by_a_later_event() {
        let rule = BatchWatermarks {
            queries: BTreeMap::from([(
                Query::DriverSessions,
                vec![batch(0, 0, 5, None), batch(1, 5, 10, Some(20)), batch(2, 10, 15, Some(20))],
            )]),
        };
        let gap_us = 10_000;
        // Batch 0: two events; batch 1 (watermark 20 ms) evicts their session (it ends at 15 ms)
        // and starts another; batch 2's event at 12 ms would have bridged the first session.
        let activity =
            [(0, false, 1, at(0)), (5_000, true, 2, at(1)), (12_000, false, 4, at(11)), (30_000, false, 3, at(6))];
        let mut sorted = activity;
        sorted.sort_by_key(|event| event.0);
        let sessions = rule.sessions(&sorted, gap_us).unwrap();
        let shape: Vec<(i64, i64, u64, u64)> =
            sessions.iter().map(|session| (session.start_us, session.last_us, session.pings, session.rides)).collect();
        assert_eq!(shape, vec![(0, 5_000, 1, 1), (12_000, 12_000, 1, 0), (30_000, 30_000, 1, 0)]);
        // Without eviction the event at 12 ms joins the first session.
        let unevicted =
            BatchWatermarks { queries: BTreeMap::from([(Query::DriverSessions, vec![batch(0, 0, 15, None)])]) };
        let merged = unevicted.sessions(&sorted, gap_us).unwrap();
        assert_eq!(
            merged.iter().map(|session| (session.start_us, session.last_us)).collect::<Vec<_>>(),
            vec![(0, 12_000), (30_000, 30_000)]
        );
        // Spark merges sessions that touch: an event exactly the gap after the last one joins
        // its session (lk's own definition starts a new one there).
        let touching = [(0, false, 1, at(0)), (10_000, false, 2, at(1))];
        let one = unevicted.sessions(&touching, gap_us).unwrap();
        assert_eq!(
            one.iter().map(|session| (session.start_us, session.last_us)).collect::<Vec<_>>(),
            vec![(0, 10_000)]
        );
    }
}
