//! `results.json`: what a run measured, documented field by field in `docs/results.md`.
//!
//! The schema is versioned; a field's meaning never changes within a version. Maps are
//! `BTreeMap`s so the file is byte-stable for the same measurements.

use std::collections::BTreeMap;

use lk_engines::runtime::queries::QueryCorrectness;
use lk_simulator::generator::InjectedCounts;
use serde::{Deserialize, Serialize};

use crate::metrics::{LatencySummary, SignedLatencySummary};

/// The version of this schema.
pub const SCHEMA_VERSION: u32 = 3;

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The lk version that wrote it.
    pub lk_version: String,
    /// The scenario.
    pub scenario: ScenarioSummary,
    /// The machine and backend.
    pub environment: Environment,
    /// The generator and the producer.
    pub generator: GeneratorResults,
    /// The oracle.
    pub oracle: OracleResults,
    /// Per engine, by name (`kappa`, `lambda`).
    pub engines: BTreeMap<String, EngineResults>,
    /// The faults the scenario injected, in order (markers for the time-series charts).
    #[serde(default)]
    pub faults: Vec<FaultEvent>,
    /// What the backpressure strategy did and cost.
    #[serde(default)]
    pub backpressure: crate::backpressure::BackpressureResults,
    /// What the platform must achieve and the prices its cost is counted at (`[requirements]`).
    #[serde(default)]
    pub requirements: crate::verdict::Requirements,
    /// Each engine's sustainable rate on this machine, when a capacity search ran (`lk capacity`,
    /// `lk advise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::capacity::Capacity>,
    /// The answer: which architecture meets the requirements, at what cost, and why; with what
    /// each costs at the target and the seed's claims checked against this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::verdict::Verdict>,
    /// Which resource was the limit while the input ran: the machine's CPU, lk's threads by
    /// name, a broker on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::resources::Resources>,
    /// lk's memory, the run's stored bytes and the CPU, once a second from the run's start
    /// until the engines had drained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_series: Vec<crate::steadiness::ResourceSample>,
    /// Whether memory and each engine's latency held steady over the input's span (None for a
    /// run too short to judge: under about half a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steadiness: Option<crate::steadiness::Steadiness>,
    /// The stream's measured properties beside public reference figures (`lk simulate
    /// --profile`), so a reader can judge whether the workload resembles theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_profile: Option<lk_simulator::profile::StreamProfile>,
    /// With `lk run --repeat N`: every repetition's own results, in order. The figures above
    /// then combine them (see `crate::repeat::combine`); empty for a single run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repetitions: Vec<Results>,
}

/// One injected fault, as it happened.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Seconds since the run's start.
    pub at_seconds: f64,
    /// `crash`, `redelivery`, `outage`, `overload`, `late-burst`, or `log stall` (not injected: appends waited
    /// over a second for the log's acknowledgement, as when a broker is down).
    pub kind: String,
    /// What exactly: the engine and crash point, the events re-sent, the period.
    pub detail: String,
    /// How long it lasted, s (outage and overload; 0 otherwise).
    pub duration_seconds: f64,
}

/// An engine's crashes and recoveries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultResults {
    /// Crashes injected into this engine.
    pub crashes: u64,
    /// The longest recovery, s: from a crash until the engine had caught up again.
    pub recovery_seconds_max: f64,
    /// Records read again after restarts (the replay that recovery costs).
    pub records_replayed: u64,
    /// Each crash.
    pub crash_list: Vec<CrashResult>,
}

/// One crash.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrashResult {
    /// When the fault fired, s since the start.
    pub at_seconds: f64,
    /// `after-output` or `mid-commit`.
    pub point: String,
    /// When the engine had stopped, s since the start.
    pub stopped_at_seconds: f64,
    /// When it had restarted (state restored), s since the start.
    pub restarted_at_seconds: f64,
    /// When its consumer lag was back to what it was before the crash, s since the start.
    pub caught_up_at_seconds: f64,
    /// `caught_up_at_seconds - at_seconds`.
    pub recovery_seconds: f64,
}

/// Which scenario, as run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioSummary {
    /// Name.
    pub name: String,
    /// Root seed.
    pub seed: u64,
    /// Description.
    pub description: String,
    /// Target rate.
    pub rate_eps: f64,
    /// Scheduled duration, s.
    pub duration_seconds: f64,
    /// Input partitions.
    pub partitions: u32,
    /// Event seconds per wall second.
    pub time_compression: f64,
    /// Watermark delay, ms of event time.
    pub watermark_delay_ms: f64,
    /// Allowed lateness, ms of event time.
    pub allowed_lateness_ms: f64,
}

/// Where it ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Environment {
    /// Logical CPUs.
    pub cpus: usize,
    /// Operating system.
    pub os: String,
    /// `embedded` or `kafka`.
    pub log_backend: String,
    /// Whether the generator was paced (false for `--rate max`).
    pub paced: bool,
    /// How Kappa's views reached its serving store: `direct`, or `transactional` (through a
    /// compacted output topic in log transactions); empty in results from before it was
    /// recorded.
    #[serde(default)]
    pub kappa_sink: String,
    /// How Lambda's speed layer reached its serving layer: `direct` or `transactional`.
    #[serde(default)]
    pub lambda_sink: String,
    /// What the log found wrong with its storage during the run: records it could not read back
    /// (served empty, so the engines dead-letter them), by file and offsets. Empty when nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_damage: Vec<String>,
}

/// The driver side: did the generator and the log keep up?
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GeneratorResults {
    /// Events generated.
    pub events: u64,
    /// The scenario's rate.
    pub target_rate_eps: f64,
    /// Events over the wall time the generator took.
    pub achieved_rate_eps: f64,
    /// Records appended to the log over the same time.
    pub log_append_rate_eps: f64,
    /// Worst lag of a slice behind its schedule, ms.
    pub max_schedule_lag_ms: f64,
    /// Whether the generator held its schedule (lag under 100 ms) and the log took every
    /// record: if not, engine figures are bounded by the driver, not the engine.
    pub kept_up: bool,
    /// Records appended.
    pub records_appended: u64,
    /// Producer retries dropped by the idempotent producer.
    pub duplicates_dropped: u64,
    /// Events the producer sent again (redelivery faults); the idempotent producer drops them.
    #[serde(default)]
    pub redelivered: u64,
    /// Appends retried after the log refused them (outage faults).
    #[serde(default)]
    pub append_retries: u64,
    /// What the generator injected.
    pub injected: InjectedCounts,
}

/// The oracle's view of the input.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OracleResults {
    /// Valid distinct events in the log.
    pub events: u64,
    /// Records that did not decode.
    pub dead_lettered: u64,
    /// Contributions the lateness policy drops, per query.
    pub late_dropped: BTreeMap<String, u64>,
    /// Seconds the oracle took.
    pub seconds: f64,
}

/// Correctness against the oracle.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Correctness {
    /// The delivery guarantee the engine ran with.
    pub guarantee: String,
    /// Contributions the oracle (under the lateness policy) has, over all views.
    pub expected: u64,
    /// Contributions the served views have.
    pub observed: u64,
    /// Contributions missing, per cell, summed.
    pub lost: u64,
    /// Contributions counted more than once, per cell, summed.
    pub duplicated: u64,
    /// Cells (query, key, window) whose value differs.
    pub mismatched_windows: u64,
    /// Contributions dropped by the lateness policy, by design.
    pub late_dropped: u64,
    /// Malformed records sent to the dead-letter count.
    pub dead_lettered: u64,
    /// Served contributions over what the oracle has for every event, lateness ignored.
    pub completeness: f64,
    /// The same for the least complete windowed view (Q2 to Q5), where late events count.
    #[serde(default = "one")]
    pub windowed_completeness: f64,
    /// `exactly-once held` when nothing was lost or duplicated, else what went wrong.
    #[serde(default)]
    pub verdict: String,
    /// Malformed records in the engine's dead-letter file (distinct by partition and offset).
    #[serde(default)]
    pub dead_letter_file_records: u64,
    /// Where the dead letters are.
    #[serde(default)]
    pub dead_letter_file: String,
    /// Whether the dead letters match the malformed records the oracle found in the log.
    #[serde(default)]
    pub dead_letters_accounted: bool,
    /// Per query.
    pub per_query: BTreeMap<String, QueryCorrectness>,
}

fn one() -> f64 {
    1.0
}

/// Rebuilding the views from retained history.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Reprocess {
    /// Records reprocessed.
    pub events: u64,
    /// Wall seconds from start to the new version being swapped in.
    pub seconds: f64,
    /// `events / seconds`.
    pub events_per_second: f64,
    /// Whether the rebuilt views equal the oracle's.
    pub correct: bool,
    /// Mismatched cells of the rebuilt views.
    pub mismatched_windows: u64,
    /// Times the reprocessing job crashed and started again (`point = "reprocess"` faults).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// What an engine cost.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cost {
    /// CPU seconds of the engine's threads during the live run.
    pub cpu_seconds: f64,
    /// Peak resident memory of the whole process (generator, log and engines share it).
    pub peak_rss_bytes: u64,
    /// Bytes stored for this engine: the log (shared), checkpoints, views and (Lambda) the
    /// master dataset.
    pub stored_bytes: u64,
    /// Of which the input log (shared by the engines).
    #[serde(default)]
    pub log_bytes: u64,
    /// Of which checkpoints.
    pub checkpoint_bytes: u64,
    /// Of which served views (approximate, in memory).
    pub view_bytes: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

/// The latencies of an engine's window results (Q2, Q3 and Q5 windows, Q4 sessions) and the
/// price paid for them in completeness (docs/measurement.md).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowLatency {
    /// Processing latency: from the due time of the last event that contributed to a result
    /// until the result was first served, ms; `null` when no window result was served.
    pub processing_ms: Option<LatencySummary>,
    /// Event-time latency: from the window's end, mapped to the run's clock, until the result
    /// was first served, ms, signed (negative: served before the window ended on the clock);
    /// `null` when no window result was served.
    pub event_time_ms: Option<SignedLatencySummary>,
    /// Why the latencies are `null`, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmeasured: Option<String>,
    /// Results first served before their window ended on the run's clock.
    pub results_early: u64,
    /// Results served again because a late event within the allowed lateness changed them.
    pub results_revised: u64,
    /// Windows whose final served value misses events that the oracle over every event has
    /// (late events dropped under the engine's lateness policy, or lost).
    pub windows_incomplete: u64,
    /// Contributions dropped as too late, summed over the queries.
    pub late_dropped: u64,
}

/// One engine's measurements.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineResults {
    /// Events processed per second after the warm-up, until caught up.
    pub throughput_eps: f64,
    /// Whether the engine kept up: it caught up within a second of the input's end.
    pub kept_up: bool,
    /// Seconds from the input's end until the engine had processed everything.
    pub catch_up_seconds: f64,
    /// Q1 visible latency: due time to served, ms.
    pub latency_ms: LatencySummary,
    /// Where visible latency goes, stage by stage, over a sample of pings (lk's engines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_stages: Option<crate::metrics::LatencyStages>,
    /// Window results: their two latencies, and how many came early, were revised or missed
    /// late events.
    pub window_latency: WindowLatency,
    /// Correctness against the oracle.
    pub correctness: Correctness,
    /// Rebuilding all views from the retained log.
    pub reprocess: Reprocess,
    /// Cost.
    pub cost: Cost,
    /// (seconds since start, events processed per second) samples.
    pub throughput_series: Vec<(f64, f64)>,
    /// (seconds since a window could first be complete, completeness): the share of the
    /// oracle's Q3 requests (every event) served for windows of that age, sampled each second.
    #[serde(default)]
    pub completeness_series: Vec<(f64, f64)>,
    /// Visible latency (Q1) second by second after the warm-up, while the input ran: where a
    /// long run's drift shows. lk's own engines; empty for an engine whose latency lk reads
    /// from its output after the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_series: Vec<crate::metrics::LatencySample>,
    /// What only the Lambda engine has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaResults>,
    /// What only an engine that is not lk's own has (its process, its micro-batches, its
    /// lateness rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalResults>,
    /// Crashes and recoveries.
    #[serde(default)]
    pub faults: FaultResults,
}

/// An external engine's own measurements (docs/engines.md).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ExternalResults {
    /// The command lk started it with (arguments joined by spaces).
    pub command: String,
    /// Seconds from starting its process until it was ready for input, first start.
    pub start_seconds: f64,
    /// Seconds each restart after a crash took until it was ready again.
    pub restart_seconds: Vec<f64>,
    /// Its readers of the input (Spark: one streaming query each), as it declared them.
    pub readers: Vec<String>,
    /// Micro-batches run, over every reader.
    pub batches: u64,
    /// Median micro-batch duration, ms.
    pub batch_ms_p50: f64,
    /// Largest micro-batch duration, ms.
    pub batch_ms_max: f64,
    /// Upserts lk read from its output topic.
    pub upserts: u64,
    /// Output records lk could not read as upserts (each is reported as what it would have
    /// been: lost cells).
    pub unreadable_upserts: u64,
    /// The first unreadable record, for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_unreadable: Option<String>,
    /// How the engine decides lateness, in a sentence.
    pub lateness_rule: String,
    /// Contributions its own lateness rule dropped, per query (never counted as lost).
    pub late_by_its_rule: BTreeMap<String, u64>,
    /// Cells of the replay's views that differ from the live run's: an engine whose late drops
    /// depend on where its micro-batches fall gives another answer when it replays the log.
    pub replay_differs_from_live: u64,
    /// Kafka Streams' reprocessing in place: the application reset tool on the live run's
    /// application id, then that application again from the earliest offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_rerun: Option<ResetRerun>,
    /// spark-lambda's Delta Lake tables, batch runs and reprocessing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lake: Option<LakeResults>,
}

/// spark-lambda's lake: its master dataset and batch views as a second reader (delta-rs, not
/// Spark) finds them, its batch runs, and its two ways to reprocess.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LakeResults {
    /// The serving layer's merge: `exact` or `seed`.
    pub merge: String,
    /// The Delta tables' folder.
    pub path: String,
    /// Event time between scheduled batch runs, s.
    pub batch_interval_seconds: f64,
    /// Every batch run, the final one last.
    pub batch_runs: Vec<LakeBatchRun>,
    /// Largest age of the served batch view (wall time since its run was decided), s.
    pub staleness_seconds_max: f64,
    /// Master dataset rows.
    pub master_rows: u64,
    /// Distinct input positions (partition, offset) among them: a row appended twice is not one.
    pub master_positions: u64,
    /// Valid input records: what the master dataset must hold, each once.
    pub master_rows_expected: u64,
    /// Whether it holds exactly those.
    pub master_exact: bool,
    /// Its Parquet files and bytes, and its date and hour partitions.
    pub master_files: u64,
    /// See `master_files`.
    pub master_bytes: u64,
    /// See `master_files`.
    pub master_partitions: u64,
    /// Versions of the batch view table.
    pub view_versions: u64,
    /// Versions in which the batch view holds rows of more than one cutoff (a torn view): 0.
    pub torn_view_versions: u64,
    /// SIGKILLs that landed while a batch view was being written.
    pub kills_during_batch_write: u64,
    /// The batch job rerun over the whole master dataset, as the job timed it (without the JVM's
    /// start, which `reprocess.seconds` includes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_job_seconds: Option<f64>,
    /// The batch view restored to the version before the rerun (Delta time travel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<LakeRestore>,
}

/// One batch run of spark-lambda.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LakeBatchRun {
    /// Its cutoff (event time, µs; the final run's is the end of input's).
    pub cutoff_us: i64,
    /// Whether it is the final run, over every event.
    pub last: bool,
    /// Master dataset rows read.
    pub rows: u64,
    /// Cells served from it.
    pub cells: u64,
    /// Speed-layer sessions it removed (ones it owns and does not have).
    pub sessions_removed: u64,
    /// Seconds from its decision to its batch view being written.
    pub write_seconds: f64,
    /// Seconds from its decision to its cells being served.
    pub seconds: f64,
    /// `rows / seconds`.
    pub rows_per_second: f64,
    /// The master dataset's version it read, and the batch view's version it wrote.
    pub master_version: u64,
    /// See `master_version`.
    pub view_version: u64,
}

/// A batch view restored from an earlier version.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LakeRestore {
    /// The version restored.
    pub version: u64,
    /// Seconds the restore took.
    pub seconds: f64,
    /// Cells of the restored view.
    pub cells: u64,
    /// Whether it holds one cutoff's rows, as the version it restores did.
    pub consistent: bool,
    /// The table's version the restore wrote (a restore is a commit of its own, after the
    /// rerun's).
    pub table_version: u64,
}

/// Reprocessing in place, the Kafka Streams way.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResetRerun {
    /// Seconds the reset tool took (rewinding the input offsets, deleting internal topics).
    pub reset_seconds: f64,
    /// The rerun from the earliest offset, timed and checked as `reprocess` is.
    pub rerun: Reprocess,
}

/// The Lambda engine's own measurements.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LambdaResults {
    /// Event time between scheduled batch runs, s.
    pub batch_interval_seconds: f64,
    /// Every batch run, the final one last.
    pub batch_runs: Vec<BatchRunResults>,
    /// Scheduled runs skipped because the previous run was still busy.
    pub batch_runs_delayed: u64,
    /// The longest batch run, s.
    pub batch_seconds_max: f64,
    /// The final batch run's events per second (every core, after the input ended).
    pub batch_events_per_second: f64,
    /// Largest age of the served batch view (clock time since its cutoff), s.
    pub staleness_seconds_max: f64,
    /// Mean age of the served batch view over the run, s.
    pub staleness_seconds_mean: f64,
    /// Scheduled batch runs that had to correct the speed layer's views.
    pub runs_correcting: u64,
    /// Cells (key and window) the scheduled batch runs corrected, summed.
    pub cells_corrected: u64,
    /// Event contributions the speed layer had missed, that batch runs added, summed.
    pub contributions_corrected: u64,
    /// The views served just before the final batch run, against the oracle (every event).
    pub before_final_batch: Correctness,
    /// The master dataset.
    pub master: MasterResults,
    /// Lines of code per part of each engine (non-blank, non-comment, tests excluded).
    pub code_lines: BTreeMap<String, u64>,
}

/// One batch run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchRunResults {
    /// Clock seconds from the engine's start to the cutoff.
    pub cutoff_at_seconds: f64,
    /// Data files read.
    pub files: u64,
    /// Rows read.
    pub rows: u64,
    /// Distinct events counted.
    pub events: u64,
    /// Wall seconds of the recomputation.
    pub seconds: f64,
    /// `rows / seconds`.
    pub events_per_second: f64,
    /// CPU seconds of its threads.
    pub cpu_seconds: f64,
    /// Seconds from the cutoff to the new view being served.
    pub cutoff_to_served_seconds: f64,
    /// Cells of the windowed views whose served value it changed.
    pub cells_corrected: u64,
    /// Contributions the served views lacked that it added.
    pub contributions_added: u64,
    /// Contributions the served views had too many of that it removed.
    pub contributions_removed: u64,
    /// A few corrected cells.
    pub examples: Vec<String>,
    /// Whether this is the final run.
    pub last: bool,
}

/// The master dataset at the end of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MasterResults {
    /// Its folder.
    pub path: String,
    /// Parquet files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Date and hour folders.
    pub hive_partitions: u64,
}
