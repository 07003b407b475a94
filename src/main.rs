//! `lk`: the command line. It parses what the user typed, builds validated objects from it, and
//! hands them to the library crates; no measurement logic lives here.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lk_harness::engine::EngineKind;
use lk_harness::scenario::Scenario;

mod demo;
use lk_simulator::generator::GeneratorOptions;
use lk_simulator::simulate::{Format, Pacing, Progress, SimulateOptions, SimulateSummary, simulate};
use lk_simulator::time::{MonotonicClock, parse_duration};

/// Bytes `lk simulate` gathers before a write to its output.
const SINK_BUFFER_BYTES: usize = 64 << 10;

/// Lambda versus Kappa, measured.
#[derive(Parser, Debug)]
#[command(name = "lk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the generator into the log and the engines on it, and measure them.
    Run(RunArgs),
    /// Run a scenario (default scenarios/quickstart.toml) with a live dashboard of both engines,
    /// for demos and training: keys crash Kappa (k) or Lambda (l), silence phones (b), overload
    /// the input (o), race reprocessing (r), freeze the view (p) or end the input (e).
    Demo(DemoArgs),
    /// Generate a scenario's event stream and report its summary and digest.
    Simulate(SimulateArgs),
    /// Run Lambda's batch layer on demand over a master dataset: recompute every view, time it.
    Batch(BatchArgs),
    /// Render report.html and report.md from saved results; several files are compared.
    Report(ReportArgs),
    /// Compare two results files metric by metric; exit 1 on a regression (for CI).
    Diff(DiffArgs),
    /// Run a scenario once per watermark delay and plot completeness against window latency.
    Sweep(SweepArgs),
    /// Find each engine's maximum sustainable rate on this machine (coarse steps, then bisection).
    Capacity(CapacityArgs),
    /// Answer the design question for a scenario: run it, search each engine's capacity, and
    /// print the verdict against the scenario's [requirements].
    Advise(AdviseArgs),
    /// Run a scenario many times, shortened, each under its own seeded schedule of crashes (after
    /// output, mid-commit, in a batch run, during recovery), re-sends and log outages; check
    /// every run and print the command that replays each failure. Exit 1 if exactly-once broke.
    Torture(TortureArgs),
    /// An engine as a process of its own over Kafka, for crash tests that SIGKILL it:
    /// `produce` the stream (and time the producer alone), run `kappa` or `lambda` (again after
    /// a kill), `verify` what it wrote, `clean` the namespace's topics away.
    Engine(EngineArgs),
}

#[derive(clap::Args, Debug)]
struct TortureArgs {
    /// The scenario file (TOML): its stream, engines and settings; its own [[faults]] are
    /// replaced by each run's schedule.
    scenario: PathBuf,
    /// lk's engines to torture: kappa, lambda or both.
    #[arg(long, value_name = "E,E,...", default_value = "both", value_parser = parse_engines)]
    engine: Engines,
    /// How many runs.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    runs: u32,
    /// The torture's seed: run I's stream and faults come from it and I [default: the scenario's].
    #[arg(long)]
    seed: Option<u64>,
    /// Only run I (0-based): a failed run replayed, as the summary prints it.
    #[arg(long, value_name = "I")]
    only: Option<u32>,
    /// Each run's length.
    #[arg(long, value_name = "D", default_value = "4s", value_parser = parse_run_duration)]
    duration: Duration,
    /// At most this many faults per run (each run draws one to this many).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    faults: u32,
    /// Events per second to pace at (overrides the scenario's).
    #[arg(long, value_name = "EPS")]
    rate: Option<f64>,
    /// Delivery guarantee of both engines: with a weaker one the summary shows what it allows
    /// (duplicates, losses) and the exit is 0.
    #[arg(long, value_enum)]
    guarantee: Option<GuaranteeArg>,
    /// What the source does when an engine falls behind (overrides `engine.backpressure`):
    /// under `scale-out` the schedules also draw crashes during rescales.
    #[arg(long, value_enum)]
    backpressure: Option<BackpressureArg>,
    /// How Kappa's views reach its serving store (overrides `engine.kappa_sink`).
    #[arg(long, value_enum)]
    kappa_sink: Option<SinkArg>,
    /// How Lambda's speed layer reaches its serving layer (overrides `engine.lambda_sink`).
    #[arg(long, value_enum)]
    lambda_sink: Option<SinkArg>,
    /// Where the runs go [default: out/<scenario name>-torture], one folder each; a passed run
    /// keeps its results and views, a failed one everything.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write into --out even if it is a non-empty folder that lk did not create.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    log: LogArgs,
    /// A test knob: Kappa restarts from its committed offsets with empty state (no checkpoints),
    /// for checking that the torture catches a broken recovery.
    #[arg(long, hide = true)]
    test_kappa_memory_state: bool,
    /// A test knob: Lambda restarts its master dataset's writes from the input's end, for
    /// checking that the torture catches a broken recovery.
    #[arg(long, hide = true)]
    test_lambda_forget_master: bool,
}

/// `lk engine STEP`: each step with only its own flags.
#[derive(clap::Args, Debug)]
struct EngineArgs {
    #[command(subcommand)]
    step: EngineStep,
}

/// Where a step's data is on the cluster.
#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// The namespace the steps share on the cluster (topics, group, transactional ids).
    #[arg(long)]
    namespace: String,
    /// Kafka bootstrap servers [default: $LK_KAFKA_BROKERS or 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT[,...]")]
    brokers: Option<String>,
    #[command(flatten)]
    kafka: KafkaClientArgs,
}

/// The stream a step produces or checks against.
#[derive(clap::Args, Debug)]
struct StreamArgs {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// Root seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the generator runs (overrides the scenario's).
    #[arg(long, value_name = "D", value_parser = parse_run_duration)]
    duration: Option<Duration>,
}

/// Where an engine keeps what it resumes from.
#[derive(clap::Args, Debug)]
struct EngineFolderArgs {
    /// Where the engine keeps its checkpoints and Lambda its master dataset
    /// [default: out/engine/<namespace>]. A folder that exists must be empty or lk's own (marked
    /// with a .lk-run file), unless --force; lk never empties it, since the engine resumes from it.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Use --out even if it is a non-empty folder that lk did not create.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum EngineStep {
    /// Produce the scenario's stream into the namespace's input topic.
    Produce {
        #[command(flatten)]
        stream: StreamArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run Kappa (transactional sink) until it has read the whole input topic.
    Kappa {
        #[command(flatten)]
        stream: StreamArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        folder: EngineFolderArgs,
        /// `memory` keeps Kappa's state in memory only, restarting empty at the committed
        /// offsets: the mistake of a state store without a changelog, for showing that `verify`
        /// catches it.
        #[arg(long, value_enum, default_value_t = StateStoreArg::Checkpointed)]
        state_store: StateStoreArg,
    },
    /// Run Lambda (master dataset under --out, transactional speed layer, batch runs) until it
    /// has read the whole input topic and served its final batch run.
    Lambda {
        #[command(flatten)]
        stream: StreamArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        folder: EngineFolderArgs,
        /// A weaker guarantee than exactly-once, for showing that `verify` catches what it allows
        /// (`verify --engine lambda` must be told the same).
        #[arg(long, value_enum, default_value_t = GuaranteeArg::ExactlyOnce)]
        guarantee: GuaranteeArg,
    },
    /// Compare what the engine wrote with the oracle; exit 1 unless exactly-once held.
    Verify {
        #[command(flatten)]
        stream: StreamArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Which engine's output to check.
        #[arg(long, value_enum, default_value_t = VerifiedEngine::Kappa)]
        engine: VerifiedEngine,
        /// Lambda's guarantee, as `lk engine lambda` was told.
        #[arg(long, value_enum, default_value_t = GuaranteeArg::ExactlyOnce)]
        guarantee: GuaranteeArg,
        /// Lambda's folder (its master dataset) [default: out/engine/<namespace>].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Delete the topics lk created in the namespace (its manifest's, never by prefix).
    Clean {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VerifiedEngine {
    Kappa,
    Lambda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StateStoreArg {
    Checkpointed,
    Memory,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("setting").required(true).args(["watermark", "commit_interval"])))]
struct SweepArgs {
    /// The scenario file (TOML), e.g. scenarios/late-storm.toml.
    scenario: PathBuf,
    /// Watermark delays to run, comma-separated, e.g. 0s,5s,30s,2m: completeness against window
    /// latency.
    #[arg(long, value_name = "D,D,...", value_parser = parse_delays)]
    watermark: Option<Delays>,
    /// Commit intervals of the transactional sinks to run, comma-separated, e.g.
    /// 10ms,50ms,100ms,500ms: latency against CPU of exactly-once over Kafka (needs --log kafka).
    #[arg(long, value_name = "D,D,...", value_parser = parse_delays)]
    commit_interval: Option<Delays>,
    /// Which engines to run, comma-separated: kappa, lambda, or both (= kappa,lambda).
    #[arg(long, value_name = "E,E,...", default_value = "both", value_parser = parse_engines)]
    engine: Engines,
    /// Root seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// How long each run's generator runs (overrides the scenario's).
    #[arg(long, value_name = "D", value_parser = parse_run_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    log: LogArgs,
    /// Where the runs and sweep.json go [default: out/<scenario name>-sweep]. A folder that
    /// exists must be empty or lk's own (marked with a .lk-run file), unless --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write into --out even if it is a non-empty folder that lk did not create (lk then replaces
    /// its own subfolders there: log/, checkpoints/, master/, views/, dead-letters/).
    #[arg(long)]
    force: bool,
}

/// How a capacity search steps.
#[derive(clap::Args, Debug, Clone)]
struct SearchArgs {
    /// The driver-location p99 a sustainable rate must meet [default: the scenario's
    /// requirements.location_p99, 1s unless set].
    #[arg(long, value_name = "D", value_parser = parse_run_duration)]
    slo_p99: Option<Duration>,
    /// Core counts to search on, comma-separated, e.g. 1,2: the process is pinned to that many
    /// cores for each [default: every core it may use].
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    cores: Vec<u32>,
    /// The input of each step, warm-up included.
    #[arg(long, value_name = "D", default_value = "8s", value_parser = parse_run_duration)]
    step: Duration,
    /// The first rate tried, events/s.
    #[arg(long, value_name = "EPS", default_value_t = 250_000.0)]
    start: f64,
    /// The highest rate tried, events/s.
    #[arg(long, value_name = "EPS", default_value_t = 16_000_000.0)]
    ceiling: f64,
    /// Stop once the last pass and the first failure are this close (relative).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.05)]
    tolerance: f64,
    /// A test knob: Kappa cannot process much more than this many events/s (it sleeps per
    /// record), for checking that the search finds a known limit.
    #[arg(long, value_name = "EPS", hide = true)]
    test_kappa_rate_limit: Option<f64>,
}

#[derive(clap::Args, Debug)]
struct CapacityArgs {
    /// The scenario file (TOML): its workload at each rate tried.
    scenario: PathBuf,
    /// Which engines to search, comma-separated: kappa, lambda, or both (one at a time).
    #[arg(long, value_name = "E,E,...", default_value = "both", value_parser = parse_engines)]
    engine: Engines,
    /// Root seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Where the steps and capacity.json go [default: out/<scenario name>-capacity]. A folder
    /// that exists must be empty or lk's own (marked with a .lk-run file), unless --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write into --out even if it is a non-empty folder that lk did not create.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct AdviseArgs {
    /// The scenario file (TOML), with its [requirements].
    scenario: PathBuf,
    /// Root seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the run's generator runs (overrides the scenario's).
    #[arg(long, value_name = "D", value_parser = parse_run_duration)]
    duration: Option<Duration>,
    /// Judge from the run alone: cores at the target from CPU-seconds per event, not from a
    /// capacity search.
    #[arg(long)]
    no_capacity: bool,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Where the run and the capacity search go [default: out/<scenario name>-advise]. A
    /// folder that exists must be empty or lk's own (marked with a .lk-run file), unless --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write into --out even if it is a non-empty folder that lk did not create.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct BatchArgs {
    /// The scenario the dataset was generated from (its window sizes define the views).
    scenario: PathBuf,
    /// The master dataset's folder (`<run>/master`, holding `_manifest.jsonl`).
    master: PathBuf,
    /// Threads [default: every core].
    #[arg(long)]
    threads: Option<u32>,
    /// Where the views go as Parquet [default: next to the master dataset, views/lambda-batch].
    /// A folder that exists must be empty or lk's own (marked with a .lk-run file), unless --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write into --out even if it is a non-empty folder that lk did not create.
    #[arg(long)]
    force: bool,
    /// Count every row, also rows whose event id was counted already (an at-least-once
    /// dataset's duplicates then show in the views).
    #[arg(long)]
    keep_duplicates: bool,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// results.json files written by `lk run`.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Where report.html and report.md go [default: the folder of the results file, or
    /// out/report for several].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DiffArgs {
    /// The baseline results.json.
    baseline: PathBuf,
    /// The current results.json.
    current: PathBuf,
    /// The smallest worsening of a performance metric, in percent, that counts as a regression
    /// (when it is also significant) [default: each metric's noise band]. Correctness may not
    /// worsen at all.
    #[arg(long, value_name = "PCT")]
    max_regression: Option<f64>,
    /// `text`: every metric; `markdown`: only what moved, for a pull-request comment.
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    format: DiffFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DiffFormat {
    Text,
    Markdown,
}

/// `lk demo`: its own flags, then any of `lk run`'s.
#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Print what happens as lines instead of drawing the dashboard (for logs, screen readers,
    /// and terminals that cannot draw it).
    #[arg(long)]
    no_tui: bool,
    /// Keys pressed at set times since the run's start, e.g. 5s:k,12s:l,20s:e: a demo replayed,
    /// or tested.
    #[arg(long, value_name = "T:KEY,...")]
    script: Option<String>,
    /// The scenario to run (default scenarios/quickstart.toml), then any option of `lk run`:
    /// --duration, --rate, --out, --force, --engine, --log, --metrics, ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "[SCENARIO] [RUN OPTIONS]")]
    run: Vec<String>,
}

/// `lk run`'s arguments on their own, for `lk demo`'s pass-through.
#[derive(Parser, Debug)]
#[command(name = "lk demo")]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The scenario file (TOML), e.g. scenarios/quickstart.toml.
    scenario: PathBuf,
    /// Which engines to run, comma-separated, side by side on the same log: kappa, lambda,
    /// spark-kappa (Spark Structured Streaming over Kafka: scripts/spark install), or both
    /// (= kappa,lambda).
    #[arg(long, value_name = "E,E,...", default_value = "both", value_parser = parse_engines)]
    engine: Engines,
    /// Root seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Events per second to pace at, or `max` to run flat out.
    #[arg(long, value_name = "EPS|max", value_parser = parse_rate_arg)]
    rate: Option<RateArg>,
    /// How long the generator runs, e.g. 30s (overrides the scenario's).
    #[arg(long, value_name = "D", value_parser = parse_run_duration)]
    duration: Option<Duration>,
    /// Where the log, checkpoints and results.json go [default: out/<scenario name>]. A folder
    /// that exists must be empty or lk's own (marked with a .lk-run file), unless --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write into --out even if it is a non-empty folder that lk did not create (lk then replaces
    /// its own subfolders there: log/, checkpoints/, master/, views/, dead-letters/).
    #[arg(long)]
    force: bool,
    /// Skip rebuilding the views from the log after the run.
    #[arg(long)]
    no_reprocess: bool,
    /// Profile the stream for the report (its key skew, trips, waits, speeds, burstiness and
    /// lateness beside public reference figures), however long: it is generated again after the
    /// engines finish. Without it, streams of up to 5 million events are profiled.
    #[arg(long, conflicts_with = "no_profile")]
    profile: bool,
    /// Do not profile the stream.
    #[arg(long)]
    no_profile: bool,
    /// Serve the run's live figures for Prometheus at http://ADDR/metrics while it runs (rates,
    /// consumer lag, latency histograms, checkpoints, batch runs, restarts, dead letters; names
    /// in docs/metrics.md), e.g. 127.0.0.1:9898.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Run the scenario N times (same seed, same stream) into rep-1/ .. rep-N/, and write one
    /// results.json with every repetition and their medians, for `lk diff` to tell noise from
    /// a regression.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Exit 1 unless lk's memory levelled off and every engine's latency held steady over the
    /// input after the warm-up, half against half (a soak: `just soak`); a run too short to
    /// judge (under about half a minute) exits 2.
    #[arg(long)]
    require_steady: bool,
    /// A test knob: Kappa sleeps this many milliseconds after every batch it processes (a
    /// slower engine by a set amount, for checking that `lk diff` catches it).
    #[arg(long, value_name = "MS", hide = true)]
    test_kappa_batch_delay: Option<u64>,
    /// Delivery guarantee both engines run with (overrides the scenario's `engine.guarantee`).
    #[arg(long, value_enum)]
    guarantee: Option<GuaranteeArg>,
    /// Delivery guarantee of the Kappa engine only (after --guarantee).
    #[arg(long, value_enum)]
    kappa_guarantee: Option<GuaranteeArg>,
    /// Delivery guarantee of the Lambda engine only (after --guarantee).
    #[arg(long, value_enum)]
    lambda_guarantee: Option<GuaranteeArg>,
    /// Delivery guarantee of the Kafka Streams engine only (after --guarantee): exactly-once runs
    /// it with exactly_once_v2, at-least-once with at_least_once.
    #[arg(long, value_enum)]
    kstreams_guarantee: Option<GuaranteeArg>,
    /// What the source does when an engine falls behind (overrides `engine.backpressure`).
    #[arg(long, value_enum)]
    backpressure: Option<BackpressureArg>,
    /// How Kappa's views reach its serving store (overrides `engine.kappa_sink`): `auto` is
    /// transactional on Kafka under exactly-once, direct otherwise.
    #[arg(long, value_enum)]
    kappa_sink: Option<SinkArg>,
    /// How Lambda's speed layer reaches its serving layer (overrides `engine.lambda_sink`):
    /// `auto` is transactional on Kafka under exactly-once, direct otherwise.
    #[arg(long, value_enum)]
    lambda_sink: Option<SinkArg>,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    spark: SparkArgs,
    #[command(flatten)]
    kstreams: KstreamsArgs,
    /// A test knob: spark-kappa's Q3 adds each micro-batch to totals of its own, ignoring the
    /// batch id (a sink that is not idempotent), for checking that the checker catches it.
    #[arg(long, hide = true)]
    test_spark_non_idempotent_sink: bool,
}

/// Where the Spark engines run.
#[derive(clap::Args, Debug, Clone)]
struct SparkArgs {
    /// The Spark master the Spark engines run on: local[N], spark://HOST:7077 (a standalone
    /// cluster), k8s://..., yarn (docs/engines.md).
    #[arg(long, value_name = "URL", default_value = "local[*]")]
    spark_master: String,
    /// A Spark setting over lk's, e.g. spark.executor.memory=4g (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    spark_conf: Vec<String>,
    /// spark-lambda's serving merge: exact (lk's: the batch view up to its cutoff, the speed
    /// layer after it) or seed (the seed's unionByName + dropDuplicates, its batch job windowing
    /// by day), to measure what the seed's merge costs.
    #[arg(long, value_name = "MERGE", default_value = "exact", value_parser = lk_harness::engine::external::spark::SparkMerge::parse)]
    spark_merge: lk_harness::engine::external::spark::SparkMerge,
}

impl SparkArgs {
    fn options(&self) -> Result<lk_harness::engine::external::spark::SparkOptions> {
        let mut conf = Vec::new();
        for setting in &self.spark_conf {
            let Some((key, value)) = setting.split_once('=') else {
                bail!("--spark-conf {setting:?} is not KEY=VALUE, e.g. spark.executor.memory=4g");
            };
            if key.trim().is_empty() {
                bail!("--spark-conf {setting:?} has no key; give KEY=VALUE, e.g. spark.executor.memory=4g");
            }
            conf.push((key.trim().to_owned(), value.to_owned()));
        }
        Ok(lk_harness::engine::external::spark::SparkOptions {
            master: self.spark_master.clone(),
            conf,
            merge: self.spark_merge,
        })
    }
}

/// How the Kafka Streams engine runs.
#[derive(clap::Args, Debug, Clone)]
struct KstreamsArgs {
    /// Kafka Streams' stream threads (num.stream.threads).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    kstreams_threads: u32,
    /// The Kafka Streams JVM's heap limit (-Xmx), e.g. 2g.
    #[arg(long, value_name = "SIZE", default_value = "1g")]
    kstreams_heap: String,
    /// Where Kafka Streams keeps its aggregations' state: memory, or rocksdb (its default); a
    /// changelog topic backs either.
    #[arg(long, value_enum, default_value = "memory")]
    kstreams_store: KstreamsStoreArg,
    /// Instances of the Kafka Streams application in one application id (scale-out): crash
    /// faults kill the first, and its partitions move to the others.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    kstreams_instances: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KstreamsStoreArg {
    Memory,
    Rocksdb,
}

impl KstreamsArgs {
    fn options(&self) -> Result<lk_harness::engine::external::kstreams::KstreamsOptions> {
        let heap = self.kstreams_heap.trim();
        let digits = heap.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || heap.len() - digits.len() > 1 {
            bail!("--kstreams-heap {heap:?} is not a JVM heap size; give a number with k, m or g, e.g. 2g");
        }
        Ok(lk_harness::engine::external::kstreams::KstreamsOptions {
            threads: self.kstreams_threads,
            heap: heap.to_owned(),
            instances: self.kstreams_instances,
            store: match self.kstreams_store {
                KstreamsStoreArg::Memory => lk_harness::engine::external::kstreams::Store::Memory,
                KstreamsStoreArg::Rocksdb => lk_harness::engine::external::kstreams::Store::Rocksdb,
            },
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SinkArg {
    Auto,
    Direct,
    Transactional,
}

impl SinkArg {
    fn choice(self) -> lk_harness::scenario::SinkChoice {
        match self {
            SinkArg::Auto => lk_harness::scenario::SinkChoice::Auto,
            SinkArg::Direct => lk_harness::scenario::SinkChoice::Direct,
            SinkArg::Transactional => lk_harness::scenario::SinkChoice::Transactional,
        }
    }
}

/// Which log a run uses.
#[derive(clap::Args, Debug, Clone)]
struct LogArgs {
    /// The log: the embedded one under --out (the default), or a Kafka cluster (see --brokers).
    #[arg(long, value_enum)]
    log: Option<LogArg>,
    /// Kafka bootstrap servers; implies --log kafka [default: $LK_KAFKA_BROKERS or 127.0.0.1:9092,
    /// where `scripts/kafka up` starts one].
    #[arg(long, value_name = "HOST:PORT[,...]")]
    brokers: Option<String>,
    /// Keep the run's Kafka topics afterwards (they are deleted by default).
    #[arg(long)]
    keep_topics: bool,
    #[command(flatten)]
    kafka: KafkaClientArgs,
    /// The Kafka broker's data folder, for the log's size on disk [default: $LK_KAFKA_DATA, or
    /// the folder `scripts/kafka` uses when the broker is on this machine].
    #[arg(long, value_name = "DIR")]
    kafka_data: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogArg {
    Embedded,
    Kafka,
}

/// The configuration of every Kafka client lk makes.
#[derive(clap::Args, Debug, Clone)]
struct KafkaClientArgs {
    /// A Kafka client properties file, as the Kafka tools' --command-config takes (security.protocol,
    /// sasl.mechanism, sasl.jaas.config, ssl.ca.location, ...): every client lk makes uses it.
    #[arg(long, value_name = "FILE")]
    kafka_config: Option<PathBuf>,
    /// A Kafka client property over --kafka-config, e.g. compression.type=none (repeatable); each
    /// client takes the properties of its kind (producer, consumer, admin).
    #[arg(long, value_name = "KEY=VALUE")]
    kafka_property: Vec<String>,
}

impl KafkaClientArgs {
    fn is_empty(&self) -> bool {
        self.kafka_config.is_none() && self.kafka_property.is_empty()
    }

    fn properties(&self) -> Result<lk_engines::log::client_properties::ClientProperties> {
        let base = match &self.kafka_config {
            Some(path) => lk_engines::log::client_properties::ClientProperties::from_file(path)
                .with_context(|| format!("--kafka-config {}", path.display()))?,
            None => lk_engines::log::client_properties::ClientProperties::new(),
        };
        Ok(base.with_overrides(&self.kafka_property)?)
    }
}

impl LogArgs {
    /// The log asked for; a run with an engine that is not lk's own (`external`) is on Kafka
    /// unless told otherwise, and cannot be on the embedded log.
    fn choice(&self, external: bool) -> Result<lk_harness::run::LogChoice> {
        if self.log == Some(LogArg::Embedded) && self.brokers.is_some() {
            bail!("--log embedded and --brokers contradict each other: --brokers is for --log kafka; drop one of them");
        }
        if external && self.log == Some(LogArg::Embedded) {
            bail!(
                "an engine that is not lk's own reads its input from Kafka, not from the embedded log: drop --log \
                 embedded (Kafka is then implied; a broker on this machine: scripts/kafka up)"
            );
        }
        if !external && self.log != Some(LogArg::Kafka) && self.brokers.is_none() {
            if !self.kafka.is_empty() {
                bail!("--kafka-config and --kafka-property are for Kafka runs: add --log kafka or --brokers");
            }
            return Ok(lk_harness::run::LogChoice::Embedded);
        }
        let properties = self.kafka.properties()?;
        let brokers = match &self.brokers {
            Some(brokers) => brokers.clone(),
            None => lk_engines::log::kafka::brokers_from_env()?.unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
        };
        let local =
            brokers.split(',').all(|broker| broker.starts_with("127.0.0.1:") || broker.starts_with("localhost:"));
        // The folder scripts/kafka keeps its data in (its `version` and LK_KAFKA_HOME).
        let script_data = || {
            let home = std::env::var_os("LK_KAFKA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/lk/kafka-4.4.0")))?;
            Some(home.join("data")).filter(|data| data.is_dir())
        };
        let data_dir = self
            .kafka_data
            .clone()
            .or_else(|| std::env::var_os("LK_KAFKA_DATA").map(PathBuf::from))
            .or_else(|| if local { script_data() } else { None });
        Ok(lk_harness::run::LogChoice::Kafka { brokers, data_dir, keep_topics: self.keep_topics, properties })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackpressureArg {
    Buffer,
    SlowSource,
    Drop,
    ScaleOut,
}

impl BackpressureArg {
    fn strategy(self) -> lk_harness::scenario::Backpressure {
        use lk_harness::scenario::Backpressure;
        match self {
            BackpressureArg::Buffer => Backpressure::Buffer,
            BackpressureArg::SlowSource => Backpressure::SlowSource,
            BackpressureArg::Drop => Backpressure::Drop,
            BackpressureArg::ScaleOut => Backpressure::ScaleOut,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[allow(clippy::enum_variant_names, reason = "the names are the guarantees' names on the command line")]
enum GuaranteeArg {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl GuaranteeArg {
    fn guarantee(self) -> lk_harness::scenario::Guarantee {
        use lk_harness::scenario::Guarantee;
        match self {
            GuaranteeArg::AtMostOnce => Guarantee::AtMostOnce,
            GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
            GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce,
        }
    }
}

/// `--engine`'s engines, in the order given, each once.
#[derive(Clone, Debug)]
struct Engines(Vec<lk_harness::engine::EngineKind>);

/// `--engine kappa,lambda` (or `both`): a usage error names the engines there are.
fn parse_engines(text: &str) -> Result<Engines, String> {
    let mut engines = Vec::new();
    for name in text.split(',').map(str::trim) {
        let kinds = if name == "both" {
            lk_harness::engine::EngineKind::OWN.to_vec()
        } else {
            vec![lk_harness::engine::EngineKind::parse(name).map_err(|error| format!("{error}, or both"))?]
        };
        for kind in kinds {
            if !engines.contains(&kind) {
                engines.push(kind);
            }
        }
    }
    Ok(Engines(engines))
}

#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// The scenario file (TOML), e.g. scenarios/quickstart.toml.
    scenario: PathBuf,
    /// Root seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Events per second to pace at, or `max` to run flat out (due times keep the scenario's rate).
    #[arg(long, value_name = "EPS|max", value_parser = parse_rate_arg)]
    rate: Option<RateArg>,
    /// How long the schedule runs, e.g. 90s or 5m (overrides the scenario's).
    #[arg(long, value_name = "D", conflicts_with = "events", value_parser = parse_run_duration)]
    duration: Option<Duration>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    events: Option<u64>,
    /// Threads to generate on (the stream is the same for any count).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Wire format of the output.
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    format: FormatArg,
    /// Where to write the events: a file, or `-` for standard output. Without it, events are
    /// encoded and counted but not written.
    #[arg(long, value_name = "PATH|-")]
    out: Option<String>,
    /// Write the summary as one JSON object to this file.
    #[arg(long, value_name = "FILE")]
    export_json: Option<PathBuf>,
    /// Measure the stream's properties (event mix, key skew, trips, waits, speeds, utilisation,
    /// daily profile, burstiness, lateness) and check them against public reference figures
    /// (docs/workload.md).
    #[arg(long)]
    profile: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Json,
    Bin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_run(args),
        Command::Demo(args) => run_demo(args).map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => run_simulate(args).map(|()| ExitCode::SUCCESS),
        Command::Batch(args) => run_batch(args).map(|()| ExitCode::SUCCESS),
        Command::Report(args) => run_report(args).map(|()| ExitCode::SUCCESS),
        Command::Diff(args) => run_diff(args),
        Command::Sweep(args) => run_sweep(args).map(|()| ExitCode::SUCCESS),
        Command::Capacity(args) => run_capacity(args).map(|()| ExitCode::SUCCESS),
        Command::Advise(args) => run_advise(args).map(|()| ExitCode::SUCCESS),
        Command::Engine(args) => run_engine(args),
        Command::Torture(args) => run_torture(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // Secrets from --kafka-config never reach the terminal, even inside a broker's message.
            eprintln!("error: {}", lk_engines::log::client_properties::redact(&format!("{error:#}")));
            // 2 for an error, as grep and ripgrep do; 1 is a check that failed.
            ExitCode::from(2)
        }
    }
}

/// The scenario with the command line's overrides applied.
fn load_scenario(path: &Path, seed: Option<u64>, rate: Option<f64>, duration: Option<Duration>) -> Result<Scenario> {
    let mut scenario = Scenario::from_file(path)?;
    if let Some(seed) = seed {
        scenario = scenario.with_seed(seed);
    }
    if let Some(rate) = rate {
        scenario = scenario.with_rate(rate).map_err(|problem| anyhow::anyhow!("{problem}"))?;
    }
    if let Some(duration) = duration {
        scenario = scenario.with_duration(Some(duration));
    }
    Ok(scenario)
}

/// `--duration D`: longer than 0, e.g. 30s or 2m.
fn parse_run_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// `--rate EPS|max`.
#[derive(Clone, Copy, Debug)]
enum RateArg {
    /// Paced at this many events per second.
    Eps(f64),
    /// Flat out.
    Max,
}

fn parse_rate_arg(text: &str) -> Result<RateArg, String> {
    if text == "max" {
        return Ok(RateArg::Max);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(RateArg::Eps(rate)),
        _ => Err(format!("--rate takes events per second (more than 0) or `max`, got {text:?}")),
    }
}

/// `--rate`: an override of the rate, and the pacing.
fn parse_rate(rate: Option<RateArg>) -> (Option<f64>, Pacing) {
    match rate {
        None => (None, Pacing::Scheduled),
        Some(RateArg::Max) => (None, Pacing::Max),
        Some(RateArg::Eps(rate)) => (Some(rate), Pacing::Scheduled),
    }
}

/// `--watermark 0s,5s,30s,2m`: at least one delay.
#[derive(Clone, Debug)]
struct Delays(Vec<Duration>);

fn parse_delays(text: &str) -> Result<Delays, String> {
    let mut delays = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        delays.push(parse_duration(part).map_err(|_| format!("{part:?} is not a duration such as 5s or 2m"))?);
    }
    if delays.is_empty() {
        return Err("needs at least one delay, e.g. 0s,5s,30s,2m".to_owned());
    }
    Ok(Delays(delays))
}

/// A run as `lk run`'s arguments ask for it: the scenario with their overrides, the options
/// (without live figures), and its folder.
fn run_setup(args: &RunArgs) -> Result<(Scenario, lk_harness::run::RunOptions, PathBuf)> {
    let (rate, pacing) = parse_rate(args.rate);
    let mut scenario = load_scenario(&args.scenario, args.seed, rate, args.duration)?;
    if let Some(guarantee) = args.guarantee {
        scenario = scenario.with_guarantee(guarantee.guarantee());
    }
    for (engine, guarantee) in [
        (EngineKind::Kappa, args.kappa_guarantee),
        (EngineKind::Lambda, args.lambda_guarantee),
        (EngineKind::Kstreams, args.kstreams_guarantee),
    ] {
        if let Some(guarantee) = guarantee {
            scenario = scenario.with_engine_guarantee(engine, guarantee.guarantee());
        }
    }
    if let Some(backpressure) = args.backpressure {
        scenario = scenario.with_backpressure(backpressure.strategy());
    }
    scenario = with_sinks(scenario, args.kappa_sink, args.lambda_sink);
    let engines = args.engine.0.clone();
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(scenario.name()));
    let options = lk_harness::run::RunOptions {
        out_directory: out.clone(),
        pacing,
        reprocess: !args.no_reprocess,
        log: args.log.choice(engines.iter().any(|kind| kind.is_external()))?,
        engines,
        takeover: takeover(args.force),
        test_knobs: lk_harness::run::TestKnobs {
            kappa_batch_delay: Duration::from_millis(args.test_kappa_batch_delay.unwrap_or(0)),
            spark_non_idempotent_sink: args.test_spark_non_idempotent_sink,
            ..lk_harness::run::TestKnobs::default()
        },
        spark: args.spark.options()?,
        kstreams: args.kstreams.options()?,
        profile: match (args.profile, args.no_profile) {
            (true, _) => lk_harness::run::StreamProfiling::Always,
            (_, true) => lk_harness::run::StreamProfiling::Never,
            _ => lk_harness::run::StreamProfiling::Auto,
        },
        live: None,
    };
    Ok((scenario, options, out))
}

fn run_run(args: RunArgs) -> Result<ExitCode> {
    let (scenario, options, out) = run_setup(&args)?;
    // The endpoint binds before anything runs: a port in use is an error, not a run without it.
    let live = Arc::new(lk_harness::live::Live::default());
    let _metrics = match args.metrics {
        Some(address) => {
            let server = lk_harness::live::MetricsServer::start(address, Arc::clone(&live))?;
            eprintln!("metrics: http://{}/metrics (Prometheus)", server.address());
            Some(server)
        }
        None => None,
    };
    let options = lk_harness::run::RunOptions { live: args.metrics.map(|_| live), ..options };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("a valid template"),
        );
        bar
    });
    let mut last_update_ns = 0;
    let mut last_phase = None;
    // On a terminal, a spinner covers every phase; otherwise (CI logs) one line per phase.
    let mut on_progress = |progress: lk_harness::run::RunProgress| {
        let phase_changed = last_phase != Some(progress.phase);
        last_phase = Some(progress.phase);
        match &bar {
            None if phase_changed => eprintln!(
                "{:>7.1} s  {} ({} events generated)",
                progress.elapsed_ns as f64 / 1e9,
                progress.phase.name(),
                progress.generated
            ),
            None => {}
            Some(bar) if phase_changed || progress.elapsed_ns > last_update_ns + 100_000_000 => {
                last_update_ns = progress.elapsed_ns;
                let message = match progress.phase {
                    lk_harness::run::Phase::Generating => format!(
                        "generated {} events, processed {}, schedule lag {:.1} ms",
                        progress.generated,
                        progress.processed,
                        progress.lag_ns as f64 / 1e6
                    ),
                    phase => format!("{} ({} events generated)", phase.name(), progress.generated),
                };
                bar.set_message(message);
                bar.tick();
            }
            Some(_) => {}
        }
    };
    eprintln!(
        "running {} ({} events/s for {}) into {}",
        scenario.name(),
        scenario.workload.run.rate_eps,
        lk_simulator::time::format_duration(scenario.workload.run.duration.unwrap_or_default()),
        out.display()
    );
    let clock = Arc::new(MonotonicClock::new());
    let results = if args.repeat > 1 {
        let repeat = args.repeat;
        lk_harness::repeat::run_repeated(&scenario, &options, repeat, clock, &mut on_progress, &mut |index, _| {
            eprintln!("repetition {index} of {repeat} done ({})", out.join(format!("rep-{index}")).display());
        })?
    } else {
        lk_harness::run::run(&scenario, &options, clock, &mut on_progress)?
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let steadiness = results.steadiness.clone();
    print_and_report(&scenario, &out, results)?;
    if !args.require_steady {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(match steadiness {
        None => {
            eprintln!(
                "error: --require-steady: the run was too short to judge whether memory and latency held steady; \
                 run it for a minute or more"
            );
            ExitCode::from(2)
        }
        Some(steadiness) if steadiness.memory_steady && steadiness.latency_steady => {
            println!("steady: {}", steadiness.line());
            ExitCode::SUCCESS
        }
        Some(steadiness) => {
            eprintln!("not steady: {}", steadiness.line());
            ExitCode::from(1)
        }
    })
}

/// The summary table and verdict on stdout, and the reports written beside results.json.
fn print_and_report(scenario: &Scenario, out: &Path, results: lk_harness::results::Results) -> Result<()> {
    print!("{}", lk_harness::summary::table(&results));
    if let Some(verdict) = &results.verdict {
        println!("verdict: {}", verdict.summary);
    }
    let run = lk_reports::Run { label: scenario.name().to_owned(), results };
    let (html, markdown) = lk_reports::write_reports(out, std::slice::from_ref(&run))?;
    println!("results: {}", out.join("results.json").display());
    println!("report:  {} (and {})", html.display(), markdown.display());
    Ok(())
}

impl ClusterArgs {
    fn place(&self) -> Result<lk_harness::standalone::Standalone> {
        Ok(lk_harness::standalone::Standalone {
            brokers: match &self.brokers {
                Some(brokers) => brokers.clone(),
                None => lk_engines::log::kafka::brokers_from_env()?.unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            },
            namespace: self.namespace.clone(),
            properties: self.kafka.properties()?,
        })
    }
}

impl StreamArgs {
    fn scenario(&self) -> Result<Scenario> {
        load_scenario(&self.scenario, self.seed, None, self.duration)
    }
}

impl EngineFolderArgs {
    /// The engine's folder, claimed (a foreign one refused) but never emptied: the engine
    /// resumes from what is there.
    fn claim(&self, step: &str, namespace: &str) -> Result<PathBuf> {
        let out = self.out.clone().unwrap_or_else(|| lk_harness::standalone::default_out(namespace));
        let identity = format!("lk engine {step}: namespace {namespace}");
        lk_harness::output::OutputFolder::claim(&out, &identity, takeover(self.force))?;
        Ok(out)
    }
}

/// `scenario` with the sinks `--kappa-sink` and `--lambda-sink` chose, where given.
fn with_sinks(mut scenario: Scenario, kappa: Option<SinkArg>, lambda: Option<SinkArg>) -> Scenario {
    if let Some(sink) = kappa {
        scenario = scenario.with_kappa_sink(sink.choice());
    }
    if let Some(sink) = lambda {
        scenario = scenario.with_lambda_sink(sink.choice());
    }
    scenario
}

fn run_torture(args: TortureArgs) -> Result<ExitCode> {
    let mut scenario = load_scenario(&args.scenario, args.seed, args.rate, None)?;
    if let Some(guarantee) = args.guarantee {
        scenario = scenario.with_guarantee(guarantee.guarantee());
    }
    if let Some(backpressure) = args.backpressure {
        scenario = scenario.with_backpressure(backpressure.strategy());
    }
    scenario = with_sinks(scenario, args.kappa_sink, args.lambda_sink);
    if let Some(external) = args.engine.0.iter().find(|kind| kind.is_external()) {
        bail!(
            "lk torture crashes lk's own engines inside the run; {} is a process of its own: torture it with \
             SIGKILLs through `lk engine` (tests/kafka_kill.rs), or drop it from --engine",
            external.name()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(format!("{}-torture", scenario.name())));
    let seed = scenario.seed();
    let options = lk_harness::torture::TortureOptions {
        runs: args.runs,
        only: args.only,
        seed,
        duration: args.duration,
        max_faults: args.faults,
        run: lk_harness::run::RunOptions {
            out_directory: out.clone(),
            pacing: Pacing::Scheduled,
            reprocess: false,
            log: args.log.choice(false)?,
            engines: args.engine.0.clone(),
            takeover: takeover(args.force),
            test_knobs: lk_harness::run::TestKnobs {
                kappa_memory_state_store: args.test_kappa_memory_state,
                lambda_forget_master_on_restart: args.test_lambda_forget_master,
                ..lk_harness::run::TestKnobs::default()
            },
            spark: Default::default(),
            kstreams: Default::default(),
            profile: lk_harness::run::StreamProfiling::Never,
            live: None,
        },
        command: replay_command(seed),
    };
    let total = args.only.map_or(args.runs, |_| 1);
    eprintln!(
        "torturing {} ({} run{} of {}, up to {} faults each) into {}",
        scenario.name(),
        total,
        if total == 1 { "" } else { "s" },
        lk_simulator::time::format_duration(args.duration),
        args.faults,
        out.display()
    );
    let clock = Arc::new(MonotonicClock::new());
    let torture = lk_harness::torture::torture(&scenario, &options, clock, &mut |run| {
        let verdict = if run.failed() { "FAILED" } else { "ok" };
        eprintln!("  run {:>4}: {verdict:<6} {}", run.index, run.schedule.join(", "));
    })?;
    print!("{}", torture.summary());
    println!("torture: {}", out.join("torture.json").display());
    Ok(if torture.failed().is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The command line as typed, with `--seed` set to `seed`, and without `--runs`, `--only`,
/// `--out` and `--force`: the torture adds a run's `--only` and a folder of its own.
fn replay_command(seed: u64) -> String {
    let mut words = vec!["lk".to_owned()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if ["--seed", "--runs", "--only", "--out"].contains(&arg.as_str()) {
            args.next();
            continue;
        }
        if arg == "--force" || ["--seed=", "--runs=", "--only=", "--out="].iter().any(|flag| arg.starts_with(flag)) {
            continue;
        }
        words.push(lk_harness::torture::shell_word(&arg));
    }
    words.push(format!("--seed {seed}"));
    words.join(" ")
}

fn run_engine(args: EngineArgs) -> Result<ExitCode> {
    match args.step {
        EngineStep::Produce { stream, cluster } => {
            let produced = lk_harness::standalone::produce(&stream.scenario()?, &cluster.place()?)?;
            println!(
                "produced {} records into {}.ride-events in {:.2} s: {:.0} records/s",
                produced.records,
                cluster.namespace,
                produced.seconds,
                produced.records as f64 / produced.seconds.max(1e-9)
            );
        }
        EngineStep::Kappa { stream, cluster, folder, state_store } => {
            let (scenario, place) = (stream.scenario()?, cluster.place()?);
            let out = folder.claim(EngineKind::Kappa.name(), &cluster.namespace)?;
            let state_store = match state_store {
                StateStoreArg::Checkpointed => lk_engines::kappa::StateStore::Checkpointed,
                StateStoreArg::Memory => lk_engines::kappa::StateStore::Memory,
            };
            let records = lk_harness::standalone::run_kappa(&scenario, &place, &out, state_store)?;
            println!("kappa read {records} records and committed its views to {}.kappa-views", cluster.namespace);
        }
        EngineStep::Lambda { stream, cluster, folder, guarantee } => {
            let (scenario, place) = (stream.scenario()?, cluster.place()?);
            let out = folder.claim(EngineKind::Lambda.name(), &cluster.namespace)?;
            let ran = lk_harness::standalone::run_lambda_job(&scenario, &place, &out, guarantee.guarantee())?;
            println!(
                "lambda read {} records into {} and served {} batch runs",
                ran.records,
                out.join("master").display(),
                ran.batch_runs
            );
        }
        EngineStep::Verify { stream, cluster, engine: VerifiedEngine::Lambda, guarantee, out } => {
            let (scenario, place) = (stream.scenario()?, cluster.place()?);
            let out = out.unwrap_or_else(|| lk_harness::standalone::default_out(&cluster.namespace));
            let verified = lk_harness::standalone::verify_lambda(&scenario, &place, &out, guarantee.guarantee())?;
            println!("{}", serde_json::to_string(&verified).expect("the check serialises"));
            eprintln!(
                "{}: master dataset {} lost, {} duplicated; batch views {}; speed layer {}",
                cluster.namespace,
                verified.master.lost,
                verified.master.duplicated,
                verified.batch.verdict,
                verified.speed.as_ref().map_or("not checked (no transactional sink)", |speed| speed.verdict.as_str())
            );
            if !verified.held() {
                return Ok(ExitCode::FAILURE);
            }
        }
        EngineStep::Verify { stream, cluster, .. } => {
            let correctness = lk_harness::standalone::verify(&stream.scenario()?, &cluster.place()?)?;
            println!("{}", serde_json::to_string(&correctness).expect("correctness serialises"));
            eprintln!("{}: {}", cluster.namespace, correctness.verdict);
            if correctness.lost > 0 || correctness.duplicated > 0 || correctness.mismatched_windows > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        EngineStep::Clean { cluster } => {
            let deleted = lk_harness::standalone::clean(&cluster.place()?)?;
            println!("deleted {deleted} topics of namespace {}", cluster.namespace);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_sweep(args: SweepArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, args.seed, None, args.duration)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(format!("{}-sweep", scenario.name())));
    let external = args.engine.0.iter().any(|kind| kind.is_external());
    if args.commit_interval.is_some() && external {
        bail!("--commit-interval sets lk's own transactional sinks: run it with --engine kappa, lambda or both");
    }
    let options = lk_harness::run::RunOptions {
        out_directory: out.clone(),
        pacing: Pacing::Scheduled,
        reprocess: false,
        log: args.log.choice(external)?,
        engines: args.engine.0.clone(),
        takeover: takeover(args.force),
        test_knobs: lk_harness::run::TestKnobs::default(),
        spark: Default::default(),
        kstreams: Default::default(),
        profile: Default::default(),
        live: None,
    };
    // Each setting's run gets its own report, as `lk run` writes one.
    let report = |directory: &Path, results: &lk_harness::results::Results| {
        let run = lk_reports::Run { label: scenario.name().to_owned(), results: results.clone() };
        if let Err(error) = lk_reports::write_reports(directory, std::slice::from_ref(&run)) {
            eprintln!("warning: the report of {} could not be written: {error}", directory.display());
        }
    };
    let clock = Arc::new(MonotonicClock::new());
    if let Some(intervals) = &args.commit_interval {
        let intervals = &intervals.0;
        eprintln!("sweeping {} over {} commit intervals into {}", scenario.name(), intervals.len(), out.display());
        let sweep =
            lk_harness::sweep::commit_sweep(&scenario, intervals, &options, clock, &mut |directory, results| {
                report(directory, results);
                eprintln!("  {}: done", directory.display());
            })?;
        print!("{}", lk_reports::sweep::commit_markdown(&sweep));
        let (html, markdown) = lk_reports::sweep::commit_write(&out, &sweep)?;
        println!("sweep:   {}", out.join("commit-sweep.json").display());
        println!("report:  {} (and {})", html.display(), markdown.display());
        return Ok(());
    }
    let delays = args.watermark.clone().map(|delays| delays.0).unwrap_or_default();
    eprintln!("sweeping {} over {} watermark delays into {}", scenario.name(), delays.len(), out.display());
    let sweep = lk_harness::sweep::sweep(&scenario, &delays, &options, clock, &mut |directory, results| {
        report(directory, results);
        eprintln!("  watermark {} ms: done ({})", results.scenario.watermark_delay_ms, directory.display());
    })?;
    print!("{}", lk_reports::sweep::markdown(&sweep));
    let (html, markdown) = lk_reports::sweep::write(&out, &sweep)?;
    println!("sweep:   {}", out.join("sweep.json").display());
    println!("report:  {} (and {})", html.display(), markdown.display());
    Ok(())
}

impl SearchArgs {
    /// The search's options; the run options' folder is replaced by the search's.
    fn options(
        &self,
        scenario: &Scenario,
        engines: Vec<EngineKind>,
        run: lk_harness::run::RunOptions,
    ) -> Result<lk_harness::capacity::CapacityOptions> {
        if !(self.start > 0.0 && self.ceiling >= self.start) {
            bail!("--start must be above 0 and --ceiling at least --start (got {} and {})", self.start, self.ceiling);
        }
        if !(self.tolerance > 0.0 && self.tolerance < 1.0) {
            bail!("--tolerance must be a fraction between 0 and 1, got {}", self.tolerance);
        }
        let cores = if self.cores.is_empty() {
            vec![std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32)]
        } else {
            self.cores.clone()
        };
        Ok(lk_harness::capacity::CapacityOptions {
            run: lk_harness::run::RunOptions {
                test_knobs: lk_harness::run::TestKnobs {
                    kappa_rate_limit_eps: self.test_kappa_rate_limit,
                    ..run.test_knobs
                },
                ..run
            },
            engines,
            cores,
            slo_p99_ms: self.slo_p99.map_or(scenario.requirements.location_p99_ms, |slo| slo.as_secs_f64() * 1000.0),
            step: self.step,
            start_eps: self.start,
            ceiling_eps: self.ceiling,
            tolerance: self.tolerance,
        })
    }
}

/// One line per capacity step, on stderr.
fn print_step(search: &lk_harness::capacity::Search, step: &lk_harness::capacity::Step) {
    eprintln!(
        "  {} on {} core{}: {:>10.0} events/s {}  (p99 {:.1} ms, backlog {:.2} s){}",
        search.engine,
        search.cores,
        if search.cores == 1 { "" } else { "s" },
        step.rate_eps,
        if step.passed { "sustained" } else { "failed   " },
        step.p99_ms,
        step.catch_up_seconds,
        if step.passed { String::new() } else { format!(": {}", step.reason) }
    );
}

fn run_capacity(args: CapacityArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, args.seed, None, None)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(format!("{}-capacity", scenario.name())));
    let run = lk_harness::run::RunOptions {
        out_directory: out.clone(),
        pacing: Pacing::Scheduled,
        reprocess: false,
        engines: Vec::new(),
        log: args.log.choice(false)?,
        takeover: takeover(args.force),
        test_knobs: lk_harness::run::TestKnobs::default(),
        spark: Default::default(),
        kstreams: Default::default(),
        profile: lk_harness::run::StreamProfiling::Never,
        live: None,
    };
    if let Some(kind) = args.engine.0.iter().find(|kind| kind.is_external()) {
        bail!(
            "lk capacity searches lk's own engines; measure {kind} at the rates it sustains with lk run --engine {kind} \
             --rate EPS (docs/engines.md)"
        );
    }
    let options = args.search.options(&scenario, args.engine.0.clone(), run)?;
    eprintln!("searching the capacity of {} on {:?} cores into {}", scenario.name(), options.cores, out.display());
    let capacity =
        lk_harness::capacity::search(&scenario, &options, Arc::new(MonotonicClock::new()), &mut |search, step| {
            print_step(search, step);
        })?;
    print!("{}", lk_reports::capacity::markdown(&capacity));
    let (html, markdown) = lk_reports::capacity::write(&out, &capacity)?;
    println!("capacity: {}", out.join("capacity.json").display());
    println!("report:   {} (and {})", html.display(), markdown.display());
    Ok(())
}

fn run_advise(args: AdviseArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, args.seed, None, args.duration)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(format!("{}-advise", scenario.name())));
    let options = lk_harness::run::RunOptions {
        out_directory: out.clone(),
        pacing: Pacing::Scheduled,
        reprocess: true,
        engines: vec![EngineKind::Kappa, EngineKind::Lambda],
        log: args.log.choice(false)?,
        takeover: takeover(args.force),
        test_knobs: lk_harness::run::TestKnobs::default(),
        spark: Default::default(),
        kstreams: Default::default(),
        profile: Default::default(),
        live: None,
    };
    let capacity = if args.no_capacity {
        None
    } else {
        Some(args.search.options(&scenario, vec![EngineKind::Kappa, EngineKind::Lambda], options.clone())?)
    };
    eprintln!(
        "advising on {}: the run, then {} into {}",
        scenario.name(),
        if capacity.is_some() { "a capacity search" } else { "no capacity search" },
        out.display()
    );
    let results = lk_harness::advise::advise(
        &scenario,
        &options,
        capacity,
        Arc::new(MonotonicClock::new()),
        &mut |_| {},
        &mut |search, step| print_step(search, step),
    )?;
    let run_folder = out.join("run");
    let run = lk_reports::Run { label: scenario.name().to_owned(), results };
    let (html, _) = lk_reports::write_reports(&run_folder, std::slice::from_ref(&run))?;
    if let Some(capacity) = &run.results.capacity {
        lk_reports::capacity::write(&out.join("capacity"), capacity)?;
    }
    print!("{}", lk_reports::markdown::verdict_only(&run));
    println!("results: {}", run_folder.join("results.json").display());
    println!("report:  {}", html.display());
    Ok(())
}

/// `--force` as the output folder's takeover rule.
fn takeover(force: bool) -> lk_harness::output::Takeover {
    if force { lk_harness::output::Takeover::Force } else { lk_harness::output::Takeover::Refuse }
}

fn run_batch(args: BatchArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, None, None, None)?;
    let queries = lk_engines::runtime::queries::QueryConfig::new(&scenario.windows, &scenario.watermark);
    let files = lk_engines::lambda::master::MasterDataset::files_in(&args.master)
        .with_context(|| format!("{} is not a master dataset written by `lk run`", args.master.display()))?;
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32));
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let (views, stats) =
        lk_engines::lambda::batch::compute(&args.master, &files, &queries, threads, !args.keep_duplicates)?;
    let out = args.out.unwrap_or_else(|| {
        args.master.parent().map(PathBuf::from).unwrap_or_default().join("views").join("lambda-batch")
    });
    let identity = format!("lk batch: views of {}", args.master.display());
    let out = lk_harness::output::OutputFolder::claim(&out, &identity, takeover(args.force))?;
    let out = out.path();
    lk_harness::views::write_views(out, &views, &queries)
        .with_context(|| format!("cannot write the views to {}", out.display()))?;
    println!(
        "batch run over {} files: {} rows ({} distinct events, {} re-sent copies) in {:.2} s, {:.1}M rows/s, {:.2} CPU s on {threads} threads",
        stats.files,
        stats.rows,
        stats.events,
        stats.duplicates,
        stats.seconds,
        stats.rows as f64 / stats.seconds.max(1e-9) / 1e6,
        stats.cpu_seconds
    );
    println!("views: {}", out.display());
    Ok(())
}

fn run_report(args: ReportArgs) -> Result<()> {
    let runs = args.results.iter().map(|path| lk_reports::load(path)).collect::<Result<Vec<_>, _>>()?;
    let out = args.out.unwrap_or_else(|| match args.results.as_slice() {
        [single] => single.parent().map(PathBuf::from).unwrap_or_default(),
        _ => PathBuf::from("out").join("report"),
    });
    let (html, markdown) = lk_reports::write_reports(&out, &runs)?;
    println!("report: {} (and {})", html.display(), markdown.display());
    Ok(())
}

fn run_diff(args: DiffArgs) -> Result<ExitCode> {
    if let Some(pct) = args.max_regression
        && !(pct >= 0.0 && pct.is_finite())
    {
        bail!("--max-regression takes a percentage of 0 or more, got {pct}");
    }
    let baseline = lk_reports::load(&args.baseline)?;
    let current = lk_reports::load(&args.current)?;
    let diff = lk_reports::diff::diff(&baseline.results, &current.results, args.max_regression);
    match args.format {
        DiffFormat::Text => print!("{}", lk_reports::diff::render(&diff)),
        DiffFormat::Markdown => print!("{}", lk_reports::diff::render_compact(&diff)),
    }
    Ok(if diff.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn run_simulate(args: SimulateArgs) -> Result<()> {
    let (rate, pacing) = parse_rate(args.rate);
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let scenario = load_scenario(&args.scenario, args.seed, rate, args.duration)?;
    let mut generator = GeneratorOptions::for_scenario(&scenario.workload);
    generator.threads = args.threads;
    if let Some(events) = args.events {
        generator.limit_events = Some(events);
        generator.limit_due_ns = None;
    }
    if generator.limit_events.is_none() && generator.limit_due_ns.is_none() {
        bail!("{}: the scenario has no run.duration; pass --duration or --events", args.scenario.display());
    }
    let options = SimulateOptions {
        generator,
        pacing,
        format: match args.format {
            FormatArg::Json => Format::Json,
            FormatArg::Bin => Format::Bin,
        },
        profile: args.profile,
    };
    // A release slice at rush hour is 64 KB of records: a buffer no larger lets such writes go
    // straight through, where a 1 MB buffer copied every record once more (7% of a clean run),
    // and still gathers the small slices of slow scenarios.
    let mut sink: Option<Box<dyn Write>> = match args.out.as_deref() {
        None => None,
        Some("-") => Some(Box::new(BufWriter::with_capacity(SINK_BUFFER_BYTES, std::io::stdout().lock()))),
        Some(path) => Some(Box::new(BufWriter::with_capacity(
            SINK_BUFFER_BYTES,
            File::create(path).with_context(|| format!("cannot create the output file {path}"))?,
        ))),
    };
    let expected = expected_seconds(&scenario, &options);
    let bar = (std::io::stderr().is_terminal() && expected.is_none_or(|seconds| seconds > 3.0)).then(|| {
        let bar = match options.generator.limit_events {
            Some(events) => indicatif::ProgressBar::new(events),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {human_pos} events {per_sec} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut last_warning_ns = 0u64;
    let mut on_progress = |progress: Progress| {
        if let Some(bar) = &bar {
            bar.set_position(progress.events);
        }
        if pacing == Pacing::Scheduled
            && progress.lag_ns > 100_000_000
            && progress.elapsed_ns > last_warning_ns + 1_000_000_000
        {
            last_warning_ns = progress.elapsed_ns;
            let message = format!(
                "warning: the generator is {:.0} ms behind schedule: it cannot keep up with {} events/s here",
                progress.lag_ns as f64 / 1e6,
                scenario.workload.run.rate_eps
            );
            match &bar {
                Some(bar) => bar.println(message),
                None => eprintln!("{message}"),
            }
        }
    };
    let summary = simulate(
        &scenario.workload,
        &options,
        Arc::new(MonotonicClock::new()),
        sink.as_deref_mut().map(|s| s as &mut dyn Write),
        &mut on_progress,
    )
    .context("writing the events")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_summary(&summary, args.out.as_deref() == Some("-"));
    if let Some(profile) = &summary.profile {
        let text = lk_reports::profile_text(profile);
        if args.out.as_deref() == Some("-") {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if let Some(path) = &args.export_json {
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn expected_seconds(scenario: &Scenario, options: &SimulateOptions) -> Option<f64> {
    if options.pacing == Pacing::Max {
        return None;
    }
    options
        .generator
        .limit_due_ns
        .map(|ns| ns as f64 / 1e9)
        .or_else(|| options.generator.limit_events.map(|events| events as f64 / scenario.workload.run.rate_eps))
}

fn print_summary(summary: &SimulateSummary, events_on_stdout: bool) {
    let mut text = String::new();
    let mut line = |label: &str, value: String| text.push_str(&format!("{label:<22} {value}\n"));
    line("scenario", format!("{} (seed {})", summary.scenario, summary.seed));
    line("events", summary.events.to_string());
    line("seconds", format!("{:.3}", summary.seconds));
    line(
        "events/s",
        format!(
            "{:.0} ({}, target {:.0})",
            summary.events_per_second,
            if summary.paced { "paced" } else { "flat out" },
            summary.target_rate_eps
        ),
    );
    line("max schedule lag", format!("{:.1} ms", summary.max_schedule_lag_ms));
    line("bytes", format!("{} ({:?})", summary.bytes, summary.format));
    line("drivers", summary.drivers.to_string());
    line(
        "event time covered",
        lk_simulator::time::format_duration(Duration::from_secs_f64(summary.event_time_seconds.max(0.0).round())),
    );
    line("late", format!("{} (delivered more than late_after after they happened)", summary.late));
    line(
        "out of order",
        format!(
            "{} (max disorder {:.1} s)",
            summary.injected.out_of_order,
            summary.injected.max_disorder_us as f64 / 1e6
        ),
    );
    line("duplicates", summary.duplicates.to_string());
    line("held back (offline)", summary.injected.held_back.to_string());
    line("clock-skewed", summary.injected.skewed.to_string());
    line("malformed", summary.malformed.to_string());
    line("digest", summary.digest.clone());
    // Events on stdout keep stdout clean: the summary goes to stderr then.
    if events_on_stdout {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

fn run_demo(mut args: DemoArgs) -> Result<()> {
    use lk_simulator::time::Clock;
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};

    // The demo's own flags may come after the scenario too, among `lk run`'s.
    let mut run_options = Vec::new();
    let mut rest = std::mem::take(&mut args.run).into_iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--no-tui" => args.no_tui = true,
            "--script" => args.script = Some(rest.next().ok_or_else(|| anyhow::anyhow!("--script needs T:KEY,..."))?),
            _ => match arg.strip_prefix("--script=") {
                Some(script) => args.script = Some(script.to_owned()),
                None => run_options.push(arg),
            },
        }
    }
    args.run = run_options;
    let mut script: std::collections::VecDeque<(Duration, char)> = args
        .script
        .as_deref()
        .map(demo::parse_script)
        .transpose()
        .map_err(|problem| anyhow::anyhow!(problem))?
        .unwrap_or_default()
        .into();
    let mut argv = vec!["lk demo".to_owned()];
    if args.run.first().is_none_or(|first| first.starts_with('-')) {
        argv.push("scenarios/quickstart.toml".to_owned());
    }
    argv.extend(args.run.iter().cloned());
    let run_args = RunOnly::try_parse_from(argv)
        .map_err(|error| anyhow::anyhow!("{}", error.to_string().trim_start_matches("error: ").trim_end()))?
        .args;
    let (scenario, options, out) = run_setup(&run_args)?;
    // The presenter's late bursts and overloads land in the stream as `[[faults]]` ones would.
    let scenario = scenario.with_live_faults();
    let queries = lk_engines::runtime::queries::QueryConfig::new(&scenario.windows, &scenario.watermark);
    let burst = demo::late_burst_duration(&queries, scenario.workload.run.time_compression);
    let live = Arc::new(lk_harness::live::Live::default());
    live.want_truth();
    // The endpoint binds before anything runs: a port in use is an error, not a run without it.
    let _metrics = match run_args.metrics {
        Some(address) => Some(lk_harness::live::MetricsServer::start(address, Arc::clone(&live))?),
        None => None,
    };
    let options = lk_harness::run::RunOptions { live: Some(Arc::clone(&live)), ..options };
    let mut tui = !args.no_tui;
    if tui && !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        eprintln!("lk demo: not a terminal, so the dashboard prints lines (as with --no-tui)");
        tui = false;
    }
    let engines: Vec<EngineKind> = options.engines.clone();
    let clock = Arc::new(MonotonicClock::new());
    let run = {
        let (scenario, clock) = (scenario.clone(), Arc::clone(&clock));
        std::thread::Builder::new()
            .name("lk-demo-run".to_owned())
            .spawn(move || lk_harness::run::run(&scenario, &options, clock, &mut |_| {}))?
    };
    if !tui {
        println!("lk demo: {} into {} ({})", scenario.name(), out.display(), demo::LEGEND);
    }
    let mut dashboard = demo::Dashboard::new(scenario.name(), queries);
    let started_ns = clock.now_ns();
    let mut cpu_at = (lk_harness::resources::snapshot(None), started_ns);
    let (mut last_ns, mut status_ns) = (started_ns, started_ns);
    let mut terminal = tui.then(ratatui::init);
    let result = (|| -> Result<()> {
        loop {
            let now_ns = clock.now_ns();
            let elapsed = Duration::from_nanos(now_ns - started_ns);
            let mut keys = Vec::new();
            while script.front().is_some_and(|(at, _)| elapsed >= *at) {
                keys.push(script.pop_front().expect("checked").1);
            }
            if terminal.is_some() {
                while event::poll(Duration::ZERO)? {
                    if let Event::Key(key) = event::read()?
                        && key.kind == KeyEventKind::Press
                    {
                        match key.code {
                            KeyCode::Char('q') | KeyCode::Esc => {
                                // Leave the dashboard; the run finishes, printing lines.
                                ratatui::restore();
                                terminal = None;
                                println!("lk demo: leaving the dashboard; the run finishes and reports");
                            }
                            KeyCode::Char(key) => keys.push(key),
                            _ => {}
                        }
                    }
                }
            }
            for key in keys {
                let said = match demo::action_of(key) {
                    Some(demo::Action::Crash(kind)) if engines.contains(&kind) => {
                        live.request_crash(kind.name());
                        Some(format!(
                            "you crashed {}: its job stops where it is, between its output and its commit",
                            match kind {
                                EngineKind::Kappa => "Kappa",
                                EngineKind::Lambda => "Lambda",
                                other => other.name(),
                            }
                        ))
                    }
                    Some(demo::Action::LateBurst) if !live.input_ended() => {
                        let share = lk_harness::scenario::DEFAULT_BURST_SHARE;
                        live.request_late_burst(burst, share);
                        Some(format!(
                            "you silenced {:.0}% of the phones for {:.1} s ({:.0} s of city time): what they record \
                             arrives in one burst when they reconnect, after Kappa's watermark has closed its windows",
                            share * 100.0,
                            burst.as_secs_f64(),
                            burst.as_secs_f64() * scenario.workload.run.time_compression
                        ))
                    }
                    Some(demo::Action::Overload) if !live.input_ended() => {
                        let (factor, duration) = demo::OVERLOAD;
                        live.request_overload(duration, factor);
                        Some(format!(
                            "you multiplied the input by {factor} for {} s ({}/s): watch the lag, the latency it \
                             costs each engine, and how long each takes to catch up",
                            duration.as_secs(),
                            (scenario.workload.run.rate_eps * factor).round()
                        ))
                    }
                    Some(demo::Action::Race) => {
                        live.request_race();
                        Some(
                            "you started a reprocessing race beside the live run: Kappa replays the whole log from \
                             offset 0 through its streaming job, Lambda recomputes every view from its master dataset"
                                .to_owned(),
                        )
                    }
                    Some(demo::Action::Pause) => Some(if dashboard.toggle_frozen() {
                        "you froze the view: the run goes on, and p thaws it".to_owned()
                    } else {
                        "the view is live again".to_owned()
                    }),
                    Some(demo::Action::EndInput) if !live.input_ended() => {
                        live.end_input();
                        Some("you ended the input: the run drains, judges and reports what was sent".to_owned())
                    }
                    _ => None,
                };
                if let Some(said) = said {
                    let line = dashboard.say(&said);
                    if terminal.is_none() {
                        println!("{line}");
                    }
                }
            }
            // Each engine's CPU over the last second or so, from its threads' names in /proc.
            if now_ns >= cpu_at.1 + 1_000_000_000 {
                let cpu_now = lk_harness::resources::snapshot(None);
                let seconds = (now_ns - cpu_at.1) as f64 / 1e9;
                let groups = lk_harness::resources::thread_groups(&cpu_at.0, &cpu_now, seconds);
                // Only where /proc tells (Linux); lk's own engines' threads are named lk-kappa...,
                // lk-lambda...; an external engine's work is in another process.
                if !groups.is_empty() && !dashboard.frozen() {
                    let cores: Vec<(String, f64)> = engines
                        .iter()
                        .filter(|kind| !kind.is_external())
                        .map(|kind| {
                            let prefix = format!("lk-{}", kind.name());
                            let cores = groups
                                .iter()
                                .filter(|group| group.name.starts_with(&prefix))
                                .map(|group| group.cores)
                                .sum();
                            (kind.name().to_owned(), cores)
                        })
                        .collect();
                    dashboard.set_cpu(&cores);
                }
                cpu_at = (cpu_now, now_ns);
            }
            // A frozen view keeps its figures; the first tick after it thaws covers the whole pause.
            let said = if dashboard.frozen() {
                Vec::new()
            } else {
                let said =
                    dashboard.update(live.snapshot(true), elapsed.as_secs_f64(), (now_ns - last_ns) as f64 / 1e9);
                last_ns = now_ns;
                said
            };
            match &mut terminal {
                Some(terminal) => {
                    terminal.draw(|frame| dashboard.draw(frame))?;
                }
                None => {
                    for line in said {
                        println!("{line}");
                    }
                    if now_ns >= status_ns + 2_000_000_000 {
                        status_ns = now_ns;
                        println!("{}", dashboard.status_line());
                    }
                }
            }
            if run.is_finished() {
                if terminal.is_none() {
                    // The figures as the run ended.
                    println!("{}", dashboard.status_line());
                }
                return Ok(());
            }
            if terminal.is_some() {
                // Wakes for a key or after a tick.
                event::poll(demo::TICK)?;
            } else {
                std::thread::sleep(demo::TICK);
            }
        }
    })();
    if terminal.is_some() {
        ratatui::restore();
    }
    result?;
    let results = run.join().map_err(|_| anyhow::anyhow!("the run's thread panicked; its message is above"))??;
    print_and_report(&scenario, &out, results)
}
