//! `lk engine`: the Kappa engine as a process of its own over Kafka, so that a test can kill it
//! with SIGKILL (no flag, no cleanup, an open transaction left behind), start it again, and
//! check that its output topic holds exactly the oracle's views.
//!
//! Three steps share a namespace on the cluster:
//! - `produce`: the scenario's whole stream into `<namespace>.ride-events`, through the
//!   idempotent producer;
//! - `kappa`: the Kappa job with its transactional sink, restored from its checkpoints under
//!   `--out` and the group's committed offsets, until it has read the whole topic; killed at any
//!   moment, it is simply run again;
//! - `lambda`: the Lambda job over the same topic, its master dataset under `--out`, its speed
//!   layer writing through its transactional sink to `<namespace>.lambda-speed-views`, its
//!   batch runs as the scenario schedules them, until it has read the whole topic and served
//!   its final batch run; killed at any moment, it is run again and resumes from the master
//!   dataset's commits and the speed group's offsets;
//! - `verify`: the oracle from the input topic against the views materialised from
//!   `<namespace>.kappa-views`, read-committed: what a consumer of the engine's output sees;
//!   for Lambda, the master dataset's rows against the topic's records (each once), the batch
//!   views recomputed from it, and the speed layer's segments from its output topic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::scenario::{Guarantee, Scenario};
use lk_engines::kappa::{KappaConfig, StateStore, run_job};
use lk_engines::lambda::master::MasterDataset;
use lk_engines::lambda::{LambdaConfig, LambdaServing, batch, run_lambda};
use lk_engines::log::kafka::{KafkaConfig, KafkaLog};
use lk_engines::log::{Log, RecordBatch};
use lk_engines::runtime::job::{JobControl, NoObserver};
use lk_engines::runtime::queries::QueryConfig;
use lk_engines::sink::serving::{ViewChanges, ViewVersion};
use lk_engines::sink::transactional::ViewSink;
use lk_engines::verify::oracle::Oracle;
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::time::MonotonicClock;

use crate::producer::Producer;
use crate::results::Correctness;
use crate::run::{RunError, TOPIC, correctness_of};

/// Kappa's output topic.
pub const VIEWS_TOPIC: &str = "kappa-views";

/// Lambda's speed-layer output topic.
pub const SPEED_VIEWS_TOPIC: &str = "lambda-speed-views";

/// Where a standalone engine's data lives.
#[derive(Clone, Debug)]
pub struct Standalone {
    /// Bootstrap servers.
    pub brokers: String,
    /// The namespace the steps share.
    pub namespace: String,
    /// The configuration of every Kafka client (security, tuning).
    pub properties: lk_engines::log::client_properties::ClientProperties,
}

impl Standalone {
    fn connect(&self) -> Result<KafkaLog, RunError> {
        let mut config = KafkaConfig::new(&self.brokers, &self.namespace);
        config.properties = self.properties.clone();
        Ok(KafkaLog::connect(config)?)
    }

    /// Connects, and checks that `produce` has made the namespace's input topic.
    fn connect_to_input(&self) -> Result<KafkaLog, RunError> {
        let log = self.connect()?;
        match log.partitions(TOPIC) {
            Err(lk_engines::log::LogError::UnknownTopic { .. }) => Err(RunError::Invalid(format!(
                "namespace {} on {} has no {TOPIC} topic: run `lk engine produce` with the same --namespace first",
                self.namespace, self.brokers
            ))),
            Err(error) => Err(error.into()),
            Ok(_) => Ok(log),
        }
    }
}

/// Deletes the topics lk created in the namespace (its manifest's, never a topic by prefix);
/// returns how many.
pub fn clean(place: &Standalone) -> Result<usize, RunError> {
    Ok(place.connect()?.delete_topics()?)
}

/// What `produce` did: records appended, and the seconds from the first append to the last
/// acknowledgement (building the fleet before it is not counted).
#[derive(Clone, Copy, Debug)]
pub struct Produced {
    /// Records appended.
    pub records: u64,
    /// Seconds from the first append to the last acknowledgement.
    pub seconds: f64,
}

/// Produces the scenario's whole stream, as fast as the producer goes.
#[allow(clippy::disallowed_methods, reason = "`lk engine produce` times the producer alone, outside any run")]
pub fn produce(scenario: &Scenario, place: &Standalone) -> Result<Produced, RunError> {
    let Some(duration) = scenario.workload.run.duration else {
        return Err(RunError::Invalid(format!("scenario {} has no run.duration; pass --duration", scenario.name())));
    };
    let log = place.connect()?;
    log.create_topic(TOPIC, scenario.engine.partitions)?;
    let mut producer = Producer::new(&log, TOPIC, true, lk_simulator::codec::RecordEncoding::Binary)?;
    let mut generator = Generator::new(
        &scenario.workload,
        GeneratorOptions {
            threads: 1,
            background: true,
            limit_events: None,
            limit_due_ns: Some(duration.as_nanos() as u64),
        },
    );
    let mut started = None;
    while let Some(batch) = generator.next_batch() {
        started.get_or_insert_with(std::time::Instant::now);
        producer.send(&log, batch, 0..batch.events.len())?;
    }
    producer.finish(&log)?;
    let seconds = started.map_or(0.0, |started| started.elapsed().as_secs_f64());
    Ok(Produced { records: producer.counters.appended, seconds })
}

fn kappa_config(scenario: &Scenario, out: &Path, state_store: StateStore) -> KappaConfig {
    KappaConfig {
        topic: TOPIC.to_owned(),
        group: crate::engine::EngineKind::Kappa.name().to_owned(),
        workers: scenario.engine.workers,
        queries: QueryConfig::new(&scenario.windows, &scenario.watermark),
        checkpoint_interval: scenario.engine.checkpoint_interval,
        checkpoint_directory: out.join("checkpoints"),
        guarantee: Guarantee::ExactlyOnce,
        sink: ViewSink::Transactional {
            output_topic: VIEWS_TOPIC.to_owned(),
            commit_interval: scenario.engine.commit_interval,
        },
        state_store,
        window_serve_delay: std::time::Duration::ZERO,
        batch_delay: std::time::Duration::ZERO,
        record_delay: std::time::Duration::ZERO,
    }
}

/// Runs the Kappa job until it has read the whole input topic; returns the records it read.
pub fn run_kappa(
    scenario: &Scenario,
    place: &Standalone,
    out: &Path,
    state_store: StateStore,
) -> Result<u64, RunError> {
    let log = Arc::new(place.connect_to_input()?);
    let partitions = log.partitions(TOPIC)?;
    let control = Arc::new(JobControl::default());
    control.input_closed.store(true, Ordering::Release);
    let reports = run_job(
        log,
        &kappa_config(scenario, out, state_store),
        Arc::new(ViewVersion::new(1, partitions)),
        Arc::clone(&control),
        Arc::new(MonotonicClock::new()),
        |_| NoObserver,
    )?;
    Ok(reports.iter().map(|report| report.counters.records).sum())
}

fn lambda_config(scenario: &Scenario, out: &Path, guarantee: Guarantee) -> LambdaConfig {
    LambdaConfig {
        topic: TOPIC.to_owned(),
        group: crate::engine::EngineKind::Lambda.name().to_owned(),
        workers: scenario.engine.workers,
        queries: QueryConfig::new(&scenario.windows, &scenario.watermark),
        batch_interval_us: scenario.lambda.batch_interval.as_micros() as i64,
        batch_threads: scenario.lambda.batch_threads,
        final_batch_threads: std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32),
        // The engine process does not know how its input is paced: its batch runs keep their
        // schedule.
        background_batch_runs: false,
        master_directory: out.join("master"),
        flush_interval: scenario.engine.checkpoint_interval,
        guarantee,
        // Under exactly-once the speed layer commits its changes and offsets in transactions;
        // a weaker guarantee has no transactional sink, and the check is on the master dataset.
        sink: if guarantee == Guarantee::ExactlyOnce {
            ViewSink::Transactional {
                output_topic: SPEED_VIEWS_TOPIC.to_owned(),
                commit_interval: scenario.engine.commit_interval,
            }
        } else {
            ViewSink::Direct
        },
        forget_master_on_restart: false,
    }
}

/// What `lambda` did.
#[derive(Clone, Copy, Debug)]
pub struct LambdaRan {
    /// Records its speed layer read in this run (after a restart, only those after the resume).
    pub records: u64,
    /// Batch runs it served, the final one included.
    pub batch_runs: usize,
}

/// Runs the Lambda job until it has read the whole input topic and served its final batch run.
pub fn run_lambda_job(
    scenario: &Scenario,
    place: &Standalone,
    out: &Path,
    guarantee: Guarantee,
) -> Result<LambdaRan, RunError> {
    let log: Arc<dyn Log> = Arc::new(place.connect_to_input()?);
    let partitions = log.partitions(TOPIC)?;
    let config = lambda_config(scenario, out, guarantee);
    let end: u64 = (0..partitions).map(|partition| log.end_offset(TOPIC, partition)).sum::<Result<u64, _>>()?;
    let control = Arc::new(JobControl::default());
    // The topic is whole already, but the input is closed only once the workers have read it:
    // until then the coordinator schedules batch runs at the scenario's event-time boundaries,
    // as it does while a generator is still producing (a closed input goes straight to the
    // final run). So a kill can land in an ingest, a seal or a batch run.
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Acquire) && control.consumed(partitions) < end {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            control.input_closed.store(true, Ordering::Release);
        });
        let report = run_lambda(
            log,
            &config,
            Arc::new(LambdaServing::new(partitions, &config.queries)),
            Arc::clone(&control),
            Arc::new(MonotonicClock::new()),
            |_| NoObserver,
        );
        done.store(true, Ordering::Release);
        report
    })?;
    Ok(LambdaRan {
        records: report.workers.iter().map(|worker| worker.counters.records).sum(),
        batch_runs: report.batch_runs.len(),
    })
}

/// Reads `topic` from its start to its end, read-committed, decoding each partition's batches
/// with `decode`.
fn read_output(
    log: &KafkaLog,
    place: &Standalone,
    topic: &str,
    mut decode: impl FnMut(u32, &RecordBatch) -> Result<(), lk_engines::sink::changelog::ChangelogError>,
) -> Result<(), RunError> {
    let mut batch = RecordBatch::new();
    let partitions = match log.partitions(topic) {
        Err(lk_engines::log::LogError::UnknownTopic { .. }) => {
            return Err(RunError::Invalid(format!(
                "namespace {} has no {topic} topic: run the engine (`lk engine kappa` or `lk engine lambda`) first",
                place.namespace
            )));
        }
        partitions => partitions?,
    };
    for partition in 0..partitions {
        let mut offset = log.start_offset(topic, partition)?;
        let end = log.end_offset(topic, partition)?;
        while offset < end {
            batch.clear();
            let next = log.read(topic, partition, offset, 16_384, &mut batch)?;
            if next == offset {
                break;
            }
            decode(partition, &batch).map_err(|source| {
                RunError::Invalid(format!("{}.{topic}, partition {partition}: {source}", place.namespace))
            })?;
            offset = next;
        }
    }
    Ok(())
}

/// The views a read-committed consumer of Kappa's output topic sees, against the oracle's.
pub fn verify(scenario: &Scenario, place: &Standalone) -> Result<Correctness, RunError> {
    let log = place.connect_to_input()?;
    let queries = QueryConfig::new(&scenario.windows, &scenario.watermark);
    let oracle = Oracle::compute(&log, TOPIC, &queries)?;
    let views = ViewVersion::new(1, log.partitions(TOPIC)?);
    let mut changes = ViewChanges::default();
    read_output(&log, place, VIEWS_TOPIC, |partition, batch| {
        lk_engines::sink::changelog::decode(batch, |decoded| views.apply(partition, decoded), &mut changes)
    })?;
    Ok(correctness_of(&views.snapshot(), &oracle.policy, &oracle, "exactly-once"))
}

/// The master dataset's rows against the input topic's records: each valid record's log
/// position must be in it exactly once.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MasterCheck {
    /// Valid (decodable) records in the input topic.
    pub expected: u64,
    /// Rows in the committed files.
    pub rows: u64,
    /// Valid records with no row.
    pub lost: u64,
    /// Rows beyond the first for a record.
    pub duplicated: u64,
    /// Committed data files.
    pub files: u64,
}

/// What `verify --engine lambda` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LambdaVerified {
    /// The master dataset, row by row.
    pub master: MasterCheck,
    /// The batch views recomputed from the master dataset (as the final batch run serves them:
    /// de-duplicated by event id unless the guarantee is at-least-once), against the oracle's
    /// views over every event.
    pub batch: Correctness,
    /// Every segment the speed layer committed to its output topic, merged, against the
    /// oracle's views under the lateness policy; absent without the transactional sink.
    pub speed: Option<Correctness>,
}

impl LambdaVerified {
    /// Whether nothing was lost, duplicated or wrong anywhere.
    pub fn held(&self) -> bool {
        let exact = |correctness: &Correctness| {
            correctness.lost == 0 && correctness.duplicated == 0 && correctness.mismatched_windows == 0
        };
        self.master.lost == 0
            && self.master.duplicated == 0
            && exact(&self.batch)
            && self.speed.as_ref().is_none_or(exact)
    }
}

/// Checks a Lambda run's master dataset, batch views and speed-layer output.
pub fn verify_lambda(
    scenario: &Scenario,
    place: &Standalone,
    out: &Path,
    guarantee: Guarantee,
) -> Result<LambdaVerified, RunError> {
    let log = place.connect_to_input()?;
    let queries = QueryConfig::new(&scenario.windows, &scenario.watermark);
    let oracle = Oracle::compute(&log, TOPIC, &queries)?;
    let root = out.join("master");
    if !root.join("_manifest.jsonl").exists() {
        return Err(RunError::Invalid(format!(
            "{} holds no master dataset; run `lk engine lambda` with the same --out first",
            root.display()
        )));
    }
    let files = MasterDataset::files_in(&root).map_err(|error| RunError::Invalid(error.to_string()))?;
    let partitions = log.partitions(TOPIC)?;
    let mut seen: Vec<Vec<u8>> = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        seen.push(vec![0; log.end_offset(TOPIC, partition)? as usize]);
    }
    let mut master = MasterCheck {
        expected: oracle.records - oracle.dead_lettered,
        files: files.len() as u64,
        ..MasterCheck::default()
    };
    for file in &files {
        let events = lk_engines::lambda::master::read_events(&root.join(&file.path), file)
            .map_err(|error| RunError::Invalid(error.to_string()))?;
        for (_, partition, offset) in events {
            master.rows += 1;
            let Some(count) = seen.get_mut(partition as usize).and_then(|counts| counts.get_mut(offset as usize))
            else {
                return Err(RunError::Invalid(format!(
                    "{}: a row says it came from {TOPIC}/{partition} at offset {offset}, which the topic does not have",
                    file.path
                )));
            };
            *count = count.saturating_add(1);
        }
    }
    let distinct: u64 = seen.iter().flatten().filter(|&&count| count > 0).count() as u64;
    master.duplicated = master.rows - distinct;
    master.lost = master.expected.saturating_sub(distinct);
    let deduplicate = guarantee != Guarantee::AtLeastOnce;
    let (views, _) = batch::compute(&root, &files, &queries, 2, deduplicate)
        .map_err(|error| RunError::Invalid(error.to_string()))?;
    let batch = correctness_of(&views, &oracle.everything, &oracle, guarantee.name());
    let speed = if guarantee == Guarantee::ExactlyOnce {
        let serving = LambdaServing::new(log.partitions(TOPIC)?, &queries);
        let mut changes = ViewChanges::default();
        read_output(&log, place, SPEED_VIEWS_TOPIC, |partition, batch| {
            lk_engines::sink::changelog::decode_segments(
                batch,
                |epoch, decoded| serving.apply_to_segment(epoch, partition, decoded),
                &mut changes,
            )
        })?;
        Some(correctness_of(&serving.snapshot(), &oracle.policy, &oracle, guarantee.name()))
    } else {
        None
    };
    Ok(LambdaVerified { master, batch, speed })
}

/// The default folder of a standalone engine's checkpoints.
pub fn default_out(namespace: &str) -> PathBuf {
    PathBuf::from("out").join("engine").join(namespace)
}
