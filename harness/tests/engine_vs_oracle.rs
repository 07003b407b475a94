//! The Kappa engine against the oracle, over many seeds of small scenarios that make windows
//! fire and events arrive late; and crash recovery from checkpoints, with a control showing the
//! checker catches the losses a broken recovery causes. A failing seed is printed; `LK_SEEDS=n`
//! runs more seeds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lk_engines::kappa::{KappaConfig, StateStore, run_job};
use lk_engines::log::Log;
use lk_engines::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use lk_engines::runtime::job::{EngineError, JobControl, NoObserver};
use lk_engines::runtime::queries::QueryConfig;
use lk_engines::sink::serving::ServingStore;
use lk_engines::sink::transactional::ViewSink;
use lk_engines::verify::oracle::Oracle;
use lk_harness::engine::EngineKind;
use lk_harness::faults::{InterposedLog, Interposer};
use lk_harness::producer::Producer;
use lk_harness::run::{LogChoice, RunOptions, TOPIC, correctness_of, run};
use lk_harness::scenario::{Guarantee, Scenario};
use lk_simulator::generator::{Generator, GeneratorOptions};
use lk_simulator::simulate::Pacing;
use lk_simulator::time::MonotonicClock;

/// Ten minutes of event time in a few seconds, with windows of a minute or two, a tight
/// watermark and a heavy tail of late events: every firing and lateness path gets exercised.
fn stormy(seed: u64) -> Scenario {
    let text = r#"
        [run]
        rate_eps = 40000
        duration = "4s"
        time_compression = 150
        shards = 4
        [fleet]
        ping_interval = "20s"
        [demand]
        requests_per_driver_hour = 6
        [lateness]
        distribution = "pareto"
        scale = "200ms"
        shape = 0.9
        max = "3m"
        offline_fraction = 0.01
        offline_min = "10s"
        offline_max = "2m"
        [duplicates]
        fraction = 0.01
        [malformed]
        fraction = 0.002
        [clock_skew]
        fraction = 0.05
        stddev = "5s"
        [windows]
        rides_per_driver = "1m"
        zone_demand = "2m"
        zone_demand_slide = "30s"
        session_gap = "1m"
        trends = "5m"
        [watermark]
        delay = "2s"
        allowed_lateness = "10s"
        [engine]
        partitions = 4
        workers = 2
        checkpoint_interval = "200ms"
        warmup = "0s"
        [lambda]
        batch_interval = "2m"
    "#;
    Scenario::from_toml(text, "stormy.toml").unwrap().with_seed(seed)
}

/// The same city with no lateness, skew or duplicates: the speed layer drops nothing, so the
/// Lambda serving layer's merge of batch and realtime views must be exact at every cutoff.
fn calm(seed: u64) -> Scenario {
    let text = r#"
        [run]
        rate_eps = 40000
        duration = "3s"
        time_compression = 150
        shards = 4
        [fleet]
        ping_interval = "20s"
        [demand]
        requests_per_driver_hour = 6
        [windows]
        rides_per_driver = "1m"
        zone_demand = "2m"
        zone_demand_slide = "30s"
        session_gap = "1m"
        trends = "5m"
        [watermark]
        delay = "5s"
        allowed_lateness = "10s"
        [engine]
        partitions = 4
        workers = 2
        warmup = "0s"
        [lambda]
        batch_interval = "1m"
    "#;
    Scenario::from_toml(text, "calm.toml").unwrap().with_seed(seed)
}

fn seeds() -> Vec<u64> {
    let count = std::env::var("LK_SEEDS").ok().and_then(|text| text.parse().ok()).unwrap_or(6);
    (0..count).map(|index| 1000 + index * 7919).collect()
}

#[test]
fn both_engines_match_the_oracle_on_every_seed() {
    let (mut late_seen, mut corrected_seen, mut speed_lost_seen) = (0, 0, 0);
    for seed in seeds() {
        let directory = tempfile::tempdir().unwrap();
        let options = RunOptions {
            out_directory: directory.path().to_owned(),
            pacing: Pacing::Max,
            reprocess: true,
            engines: EngineKind::OWN.to_vec(),
            log: LogChoice::Embedded,
            takeover: lk_harness::output::Takeover::Refuse,
            test_knobs: lk_harness::run::TestKnobs::default(),
            spark: Default::default(),
            kstreams: Default::default(),
            profile: Default::default(),
            live: None,
        };
        let results = run(&stormy(seed), &options, Arc::new(MonotonicClock::new()), &mut |_| {}).unwrap();
        let kappa = &results.engines["kappa"];
        let correctness = &kappa.correctness;
        assert_eq!(
            (correctness.lost, correctness.duplicated, correctness.mismatched_windows),
            (0, 0, 0),
            "seed {seed}: {:#?}",
            correctness.per_query
        );
        assert!(correctness.expected > 10_000, "seed {seed}: {} contributions", correctness.expected);
        assert!(kappa.reprocess.correct, "seed {seed}: reprocessing rebuilt different views");
        assert_eq!(kappa.reprocess.events, results.generator.records_appended, "seed {seed}");
        assert!(
            kappa.window_latency.processing_ms.as_ref().is_some_and(|ms| ms.count > 0),
            "seed {seed}: no window fired during the run"
        );
        assert!(correctness.dead_lettered > 0 && correctness.dead_lettered == results.oracle.dead_lettered);
        assert!(results.generator.duplicates_dropped > 0, "seed {seed}: the producer saw no retries");
        late_seen += correctness.late_dropped;
        assert_eq!(correctness.late_dropped, results.oracle.late_dropped.values().sum::<u64>(), "seed {seed}");

        // Lambda counts every event, however late: after its final batch run it must equal the
        // oracle's views over everything.
        let lambda = &results.engines["lambda"];
        let correctness = &lambda.correctness;
        assert_eq!(
            (correctness.lost, correctness.duplicated, correctness.mismatched_windows),
            (0, 0, 0),
            "seed {seed}: {:#?}",
            correctness.per_query
        );
        assert!(lambda.reprocess.correct, "seed {seed}: the batch layer's reprocessing differs from the oracle");
        let details = lambda.lambda.as_ref().expect("Lambda's own results");
        let scheduled = details.batch_runs.iter().filter(|run| !run.last).count();
        // Flat out (`Pacing::Max`), the input can outrun the schedule on a loaded machine: the
        // boundaries that pass during a run are coalesced (`batch_runs_delayed`), and those after
        // the input closes are left to the final run. At least one scheduled run must happen.
        assert!(
            scheduled >= 1,
            "seed {seed}: no scheduled batch run over 10 minutes of event time ({} delayed)",
            details.batch_runs_delayed
        );
        assert!(details.batch_runs.last().is_some_and(|run| run.last));
        assert_eq!(
            details.master.rows + results.oracle.dead_lettered,
            results.generator.records_appended,
            "seed {seed}: the master dataset holds every valid record once"
        );
        assert!(details.master.hive_partitions >= 1 && details.master.bytes > 0);
        corrected_seen += details.contributions_corrected;
        speed_lost_seen += details.before_final_batch.lost;
        for query in lk_engines::runtime::queries::Query::ALL {
            let path = directory.path().join("views").join("lambda").join(format!("{}.parquet", query.name()));
            assert!(path.exists(), "seed {seed}: {} missing", path.display());
        }
    }
    assert!(late_seen > 0, "no seed exercised the lateness policy");
    assert!(corrected_seen > 0, "no scheduled batch run corrected the speed layer");
    assert!(speed_lost_seen > 0, "the speed layer never missed a late event, so the test shows nothing");
}

#[test]
fn the_lambda_serving_merge_has_no_gap_and_no_double_count_at_cutoffs() {
    for seed in seeds() {
        let directory = tempfile::tempdir().unwrap();
        let options = RunOptions {
            out_directory: directory.path().to_owned(),
            pacing: Pacing::Max,
            reprocess: false,
            engines: vec![EngineKind::Lambda],
            log: LogChoice::Embedded,
            takeover: lk_harness::output::Takeover::Refuse,
            test_knobs: lk_harness::run::TestKnobs::default(),
            spark: Default::default(),
            kstreams: Default::default(),
            profile: Default::default(),
            live: None,
        };
        let results = run(&calm(seed), &options, Arc::new(MonotonicClock::new()), &mut |_| {}).unwrap();
        let details = results.engines["lambda"].lambda.as_ref().expect("Lambda's own results");
        // At least one scheduled cutoff before the final run (flat out, a busy machine folds
        // scheduled runs that fall due while one is running into the next).
        assert!(details.batch_runs.len() >= 2, "seed {seed}: {} batch runs", details.batch_runs.len());
        // Before the final run, the served views are the last scheduled batch view merged with
        // the realtime segments after it: with nothing late, they must already be exact.
        let before = &details.before_final_batch;
        assert_eq!(before.late_dropped, 0, "seed {seed}: the calm scenario had late events");
        assert_eq!((before.lost, before.duplicated, before.mismatched_windows), (0, 0, 0), "seed {seed}: {before:#?}");
        assert_eq!(details.cells_corrected, 0, "seed {seed}: a batch run had to correct exact speed views");
    }
}

/// Produces a scenario into a fresh log; returns the log and its directory.
fn produced(scenario: &Scenario) -> (Arc<EmbeddedLog>, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(&directory.path().join("log"), EmbeddedLogConfig::default()).unwrap());
    log.create_topic(TOPIC, scenario.engine.partitions).unwrap();
    let mut producer = Producer::new(&*log, TOPIC, true, lk_simulator::codec::RecordEncoding::Binary).unwrap();
    let mut generator = Generator::new(&scenario.workload, GeneratorOptions::for_scenario(&scenario.workload));
    while let Some(batch) = generator.next_batch() {
        producer.send(&*log, batch, 0..batch.len()).unwrap();
    }
    (log, directory)
}

/// An exactly-once Kappa job on two workers over [`TOPIC`], checkpointing into `directory`.
fn checkpointed_kappa(queries: QueryConfig, directory: &std::path::Path, checkpoint_interval: Duration) -> KappaConfig {
    KappaConfig {
        window_serve_delay: Duration::ZERO,
        batch_delay: Duration::ZERO,
        record_delay: Duration::ZERO,
        topic: TOPIC.to_owned(),
        group: "kappa".to_owned(),
        workers: 2,
        queries,
        checkpoint_interval,
        checkpoint_directory: directory.join("checkpoints"),
        guarantee: Guarantee::ExactlyOnce,
        sink: ViewSink::Direct,
        state_store: StateStore::Checkpointed,
    }
}

/// Runs a job that crashes once it has processed `crash_after` events, then restarts it (after
/// `between`, which may tamper with what the crash left) and runs it to the end.
fn crash_and_restart(
    seed: u64,
    crash_after: u64,
    between: impl FnOnce(&std::path::Path),
) -> lk_harness::results::Correctness {
    let scenario = stormy(seed);
    let (log, directory) = produced(&scenario);
    let queries = QueryConfig::new(&scenario.windows, &scenario.watermark);
    let config = checkpointed_kappa(queries, directory.path(), Duration::from_millis(1));
    let serving = ServingStore::new(scenario.engine.partitions);
    let control = Arc::new(JobControl::default());
    control.input_closed.store(true, Ordering::Release);
    control.crash_after_events.store(crash_after, Ordering::Relaxed);
    let crashed = run_job(
        Arc::clone(&log) as Arc<dyn Log>,
        &config,
        serving.active(),
        Arc::clone(&control),
        Arc::new(MonotonicClock::new()),
        |_| NoObserver,
    )
    .unwrap();
    let processed: u64 = crashed.iter().map(|report| report.counters.events).sum();
    assert!(control.crash.load(Ordering::Acquire), "the job never reached its crash point");
    assert!(processed < 150_000, "the crash came after nearly everything was processed ({processed})");
    between(&config.checkpoint_directory);
    let restarted = Arc::new(JobControl::default());
    restarted.input_closed.store(true, Ordering::Release);
    run_job(
        Arc::clone(&log) as Arc<dyn Log>,
        &config,
        serving.active(),
        restarted,
        Arc::new(MonotonicClock::new()),
        |_| NoObserver,
    )
    .unwrap();
    let oracle = Oracle::compute(&*log, TOPIC, &queries).unwrap();
    correctness_of(&serving.active().snapshot(), &oracle.policy, &oracle, "exactly-once")
}

#[test]
fn a_crash_and_restart_from_checkpoints_loses_and_duplicates_nothing() {
    for seed in seeds() {
        for crash_after in [5_000, 60_000] {
            let correctness = crash_and_restart(seed, crash_after, |_| {});
            assert_eq!(
                (correctness.lost, correctness.duplicated, correctness.mismatched_windows),
                (0, 0, 0),
                "seed {seed}, crash after {crash_after}: {:#?}",
                correctness.per_query
            );
        }
    }
}

#[test]
fn the_checker_catches_a_restart_that_loses_its_state() {
    // Deleting the checkpoints but keeping the committed offsets is what committing offsets
    // without the state they belong to does: the events before the offsets are lost.
    let correctness = crash_and_restart(1000, 60_000, |checkpoints| {
        std::fs::remove_dir_all(checkpoints).unwrap();
    });
    assert!(correctness.lost > 0, "the checker missed lost state: {correctness:#?}");
}

/// Runs a Kappa job over `log`'s whole input, closed before it starts, checkpointing only at the
/// end into `directory`; returns its config and what the job returned.
fn run_kappa_over_closed_input(
    scenario: &Scenario,
    log: Arc<dyn Log>,
    directory: &std::path::Path,
) -> (KappaConfig, Result<Vec<lk_engines::runtime::job::WorkerReport<NoObserver>>, EngineError>) {
    let queries = QueryConfig::new(&scenario.windows, &scenario.watermark);
    let config = checkpointed_kappa(queries, directory, Duration::from_secs(3600));
    let serving = ServingStore::new(scenario.engine.partitions);
    let control = Arc::new(JobControl::default());
    control.input_closed.store(true, Ordering::Release);
    let result = run_job(log, &config, serving.active(), control, Arc::new(MonotonicClock::new()), |_| NoObserver);
    (config, result)
}

#[test]
fn a_finished_job_checkpoints_its_whole_state_and_reports_it() {
    // A finished worker hands its tasks to the checkpoint writer whole instead of copying them;
    // the checkpoints must still hold all of the state, and the report must still see it.
    let scenario = stormy(7);
    let (log, directory) = produced(&scenario);
    let (config, reports) = run_kappa_over_closed_input(&scenario, Arc::clone(&log) as Arc<dyn Log>, directory.path());
    let reports = reports.unwrap();
    let mut end = 0;
    let mut checkpointed_entries = 0;
    for partition in 0..scenario.engine.partitions {
        let path = config.checkpoint_directory.join(format!("partition-{partition:04}.ckpt"));
        let task = lk_engines::runtime::checkpoint::load(&std::fs::read(&path).unwrap(), config.queries).unwrap();
        let partition_end = log.end_offset(TOPIC, partition).unwrap();
        assert_eq!(task.offset, partition_end, "partition {partition}'s final checkpoint is not at its end");
        end += partition_end;
        checkpointed_entries += task.state_entries();
    }
    let reported_entries: usize = reports.iter().map(|report| report.state_entries).sum();
    let reported_records: u64 = reports.iter().map(|report| report.counters.records).sum();
    assert!(reported_entries > 0, "the report lost the finished tasks' state");
    assert_eq!(checkpointed_entries, reported_entries, "the final checkpoints do not hold the whole state");
    assert_eq!(reported_records, end, "the report lost the finished tasks' counters");
}

/// A log whose first read of partition 0 from offset 0 returns the records from offset `skip`
/// on, and says it moved past them: what a Kafka reader moved back did when it trusted its
/// consumer's stale position.
struct SkipsOnce {
    skip: u64,
    skipped: std::sync::atomic::AtomicBool,
}

impl Interposer for SkipsOnce {
    fn read_from(&self, topic: &str, partition: u32, offset: u64) -> u64 {
        if topic == TOPIC && partition == 0 && offset == 0 && !self.skipped.swap(true, Ordering::AcqRel) {
            return self.skip;
        }
        offset
    }
}

#[test]
fn a_log_that_skips_input_records_stops_the_engine_instead_of_losing_them() {
    let scenario = stormy(3);
    let (log, directory) = produced(&scenario);
    let skipping = Arc::new(InterposedLog::new(log, SkipsOnce { skip: 100, skipped: Default::default() }));
    let (_, result) = run_kappa_over_closed_input(&scenario, Arc::clone(&skipping) as Arc<dyn Log>, directory.path());
    assert!(skipping.interposer.skipped.load(Ordering::Acquire), "the skip was never served");
    match result {
        Err(EngineError::Skipped { partition: 0, first: 0, next, records, .. }) => {
            assert_eq!(next - records as u64, 100, "the error says how far the log moved")
        }
        other => panic!("a skipped read went unnoticed: {:?}", other.map(|reports| reports.len())),
    }
    let message = EngineError::Skipped { topic: TOPIC.into(), partition: 0, first: 0, next: 9, records: 2 }.to_string();
    assert!(message.contains("from offset 0 moved to 9 but returned 2 records"), "{message}");
}
