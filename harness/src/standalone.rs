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
//! - `verify`: the oracle from the input topic against the views materialised from
//!   `<namespace>.kappa-views`, read-committed: what a consumer of the engine's output sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use lk_engines::kafka::{KafkaConfig, KafkaLog};
use lk_engines::kappa::{JobControl, KappaConfig, NoObserver, StateStore, ViewSink, run_job};
use lk_engines::log::{Log, RecordBatch};
use lk_engines::oracle::Oracle;
use lk_engines::queries::QueryConfig;
use lk_engines::serving::{ViewChanges, ViewVersion};
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::scenario::{Guarantee, Scenario};
use lk_simulator::time::MonotonicClock;

use crate::producer::Producer;
use crate::results::Correctness;
use crate::run::{RunError, TOPIC, correctness_of};

/// Kappa's output topic.
pub const VIEWS_TOPIC: &str = "kappa-views";

/// Where a standalone engine's data lives.
#[derive(Clone, Debug)]
pub struct Standalone {
    /// Bootstrap servers.
    pub brokers: String,
    /// The namespace the steps share.
    pub namespace: String,
    /// Extra librdkafka properties for the producers.
    pub producer_properties: Vec<(String, String)>,
}

impl Standalone {
    fn connect(&self) -> Result<KafkaLog, RunError> {
        let mut config = KafkaConfig::new(&self.brokers, &self.namespace);
        config.producer_properties = self.producer_properties.clone();
        Ok(KafkaLog::connect(config)?)
    }
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
pub fn produce(scenario: &Scenario, place: &Standalone) -> Result<Produced, RunError> {
    let Some(duration) = scenario.run.duration else {
        return Err(RunError::Invalid(format!("scenario {} has no run.duration; pass --duration", scenario.name)));
    };
    let log = place.connect()?;
    log.create_topic(TOPIC, scenario.engine.partitions)?;
    let mut producer = Producer::new(&log, TOPIC, true)?;
    let mut generator = Generator::new(
        scenario,
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
        group: "kappa".to_owned(),
        workers: scenario.engine.workers,
        queries: QueryConfig::from_scenario(scenario),
        checkpoint_interval: scenario.engine.checkpoint_interval,
        checkpoint_directory: out.join("checkpoints"),
        guarantee: Guarantee::ExactlyOnce,
        sink: ViewSink::Transactional {
            output_topic: VIEWS_TOPIC.to_owned(),
            commit_interval: scenario.engine.commit_interval,
        },
        state_store,
    }
}

/// Runs the Kappa job until it has read the whole input topic; returns the records it read.
pub fn run_kappa(
    scenario: &Scenario,
    place: &Standalone,
    out: &Path,
    state_store: StateStore,
) -> Result<u64, RunError> {
    let log = Arc::new(place.connect()?);
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

/// The views a read-committed consumer of the output topic sees, against the oracle's.
pub fn verify(scenario: &Scenario, place: &Standalone) -> Result<Correctness, RunError> {
    let log = place.connect()?;
    let queries = QueryConfig::from_scenario(scenario);
    let oracle = Oracle::compute(&log, TOPIC, &queries)?;
    let partitions = log.partitions(VIEWS_TOPIC)?;
    let views = ViewVersion::new(1, partitions);
    let (mut batch, mut changes) = (RecordBatch::new(), ViewChanges::default());
    for partition in 0..partitions {
        let mut offset = log.start_offset(VIEWS_TOPIC, partition)?;
        let end = log.end_offset(VIEWS_TOPIC, partition)?;
        while offset < end {
            batch.clear();
            let next = log.read(VIEWS_TOPIC, partition, offset, 16_384, &mut batch)?;
            if next == offset {
                break;
            }
            lk_engines::changelog::decode(&batch, |decoded| views.apply(partition, decoded), &mut changes).map_err(
                |source| {
                    RunError::Invalid(format!("{}.{VIEWS_TOPIC}, partition {partition}: {source}", place.namespace))
                },
            )?;
            offset = next;
        }
    }
    Ok(correctness_of(&views.snapshot(), &oracle.policy, &oracle, "exactly-once"))
}

/// The default folder of a standalone engine's checkpoints.
pub fn default_out(namespace: &str) -> PathBuf {
    PathBuf::from("out").join("engine").join(namespace)
}
