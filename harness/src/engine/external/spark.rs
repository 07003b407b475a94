//! spark-kappa and spark-lambda: the seed's Kappa job on Spark Structured Streaming
//! (engines/spark/kappa.py) and its Lambda on Spark and Delta Lake (engines/spark/lambda.py),
//! started with the `spark-submit` that `scripts/spark install` puts under ~/.cache/lk/.

use std::path::{Path, PathBuf};

use super::Context;
use super::process::Launch;
use crate::run::{RunError, output_error};

/// The PySpark jobs, built into lk so that the job a run starts is the one this lk was built with.
const KAPPA_JOB: &str = include_str!("../../../../engines/spark/kappa.py");
const LAMBDA_JOB: &str = include_str!("../../../../engines/spark/lambda.py");

/// The Delta Lake release built for Spark 4.2 (`scripts/spark install` fetches its jars).
pub const DELTA_VERSION: &str = "4.4.0";

/// Which merge spark-lambda's serving layer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SparkMerge {
    /// lk's: the batch view up to its cutoff, the speed layer after it; no gap, no double count.
    #[default]
    Exact,
    /// The seed's: `batch.unionByName(realtime).dropDuplicates([key, window])`, its batch job
    /// windowing by day and its speed layer by the queries' windows.
    Seed,
}

impl SparkMerge {
    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            SparkMerge::Exact => "exact",
            SparkMerge::Seed => "seed",
        }
    }

    /// The merge named `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "exact" => Ok(SparkMerge::Exact),
            "seed" => Ok(SparkMerge::Seed),
            other => Err(format!("no merge named {other:?}; spark-lambda's merges are exact and seed")),
        }
    }
}

/// The Spark version `scripts/spark` installs.
pub const SPARK_VERSION: &str = "4.2.0";

/// Where a Spark job runs and how it is configured, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparkOptions {
    /// The master URL: `local[*]`, `spark://host:7077`, `k8s://...`, `yarn`.
    pub master: String,
    /// `spark.*` settings over lk's, in order.
    pub conf: Vec<(String, String)>,
    /// spark-lambda's serving merge.
    pub merge: SparkMerge,
}

impl Default for SparkOptions {
    fn default() -> Self {
        Self { master: "local[*]".to_owned(), conf: Vec::new(), merge: SparkMerge::Exact }
    }
}

/// Where Spark is installed: `LK_SPARK_HOME`, or where `scripts/spark install` puts it.
pub fn spark_home() -> Option<PathBuf> {
    std::env::var_os("LK_SPARK_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(format!(".cache/lk/spark-{SPARK_VERSION}")))
    })
}

/// The settings lk runs every Spark job with, before the user's `--spark-conf`.
fn settings(context: &Context<'_>) -> Vec<(String, String)> {
    // On this machine (local[...]), a shuffle partition per core: each is a state store that
    // every micro-batch of every stateful query commits, and more of them than cores only adds
    // tasks. On a cluster, the input's partitions.
    let shuffle = if context.options.spark.master.starts_with("local") {
        std::thread::available_parallelism()
            .map_or(1, |cores| cores.get() as u32)
            .min(context.scenario.engine.partitions)
    } else {
        context.scenario.engine.partitions
    };
    let partitions = shuffle.to_string();
    [
        // One machine's loopback: no other host is ever contacted.
        ("spark.driver.host", "127.0.0.1"),
        ("spark.driver.bindAddress", "127.0.0.1"),
        ("spark.ui.enabled", "false"),
        ("spark.ui.showConsoleProgress", "false"),
        // Spark's default of 200 would make every micro-batch run 200 tiny stateful tasks.
        ("spark.sql.shuffle.partitions", partitions.as_str()),
        // The id checksum is a wrapping 64-bit sum (docs/engines.md); ANSI mode would fail on
        // the first overflow instead.
        ("spark.sql.ansi.enabled", "false"),
        ("spark.sql.session.timeZone", "UTC"),
        // The input's validity test and the id checksum are deep expressions; the optimiser's
        // constraint propagation over them grows without bound (a foreachBatch plan over them
        // never finished planning), and the queries need none of what it infers.
        ("spark.sql.constraintPropagation.enabled", "false"),
        ("spark.sql.streaming.metricsEnabled", "false"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The Lambda job's settings: Delta Lake's SQL extension and catalog (time travel, MERGE,
/// RESTORE), and a snapshot's state in two partitions rather than 50 (on two cores every Delta
/// read and commit built 50 tiny tasks, halving the rows per second of writes). Spark's FIFO
/// scheduler stays: the fair one, with the layers in pools of their own, sped the master
/// dataset's append up but slowed the speed layer and the batch runs more (docs/benchmarks.md).
fn lambda_settings() -> Vec<(String, String)> {
    [
        ("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension"),
        ("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"),
        ("spark.databricks.delta.snapshotPartitions", "2"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The jars in `folder`, sorted.
fn jars_in(folder: &Path) -> Result<Vec<String>, RunError> {
    let mut jars: Vec<String> = std::fs::read_dir(folder)
        .map_err(output_error(folder))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "jar"))
        .map(|path| path.display().to_string())
        .collect();
    jars.sort();
    Ok(jars)
}

/// Whether Spark (and, for `lambda`, Delta Lake) is installed where lk looks.
pub fn installed(lambda: bool) -> bool {
    spark_home().is_some_and(|home| {
        home.join("venv/bin/spark-submit").is_file()
            && home.join("jars/.complete").is_file()
            && (!lambda || home.join("delta/.complete").is_file())
    })
}

/// The Python of the virtualenv `scripts/spark install` makes (pyspark, and `deltalake` for a
/// second reader of the Delta tables).
pub fn python() -> Option<PathBuf> {
    spark_home().map(|home| home.join("venv/bin/python"))
}

/// The `spark-submit` command of the Kappa job (`lambda` false) or the Lambda job, with the
/// protocol's environment.
pub fn launch(
    context: &Context<'_>,
    folder: &Path,
    mut env: Vec<(String, String)>,
    ready_file: PathBuf,
    lambda: bool,
) -> Result<Launch, RunError> {
    let name = if lambda { "spark-lambda" } else { "spark-kappa" };
    let missing = || {
        RunError::Invalid(format!(
            "{name} needs Apache Spark {SPARK_VERSION} and its Kafka connector{}: run scripts/spark install (a \
             virtualenv and jars under ~/.cache/lk/spark-{SPARK_VERSION}), or point LK_SPARK_HOME at such an \
             installation",
            if lambda { format!(", and Delta Lake {DELTA_VERSION}") } else { String::new() }
        ))
    };
    let home = spark_home().ok_or_else(missing)?;
    let submit = home.join("venv/bin/spark-submit");
    if !installed(lambda) {
        return Err(missing());
    }
    let mut jars = jars_in(&home.join("jars"))?;
    if lambda {
        jars.extend(jars_in(&home.join("delta"))?);
    }
    let kappa_job = folder.join("kappa.py");
    std::fs::write(&kappa_job, KAPPA_JOB).map_err(output_error(&kappa_job))?;
    let job = if lambda {
        // The Lambda job imports the Kappa job's queries and readers from beside it.
        let job = folder.join("lambda.py");
        std::fs::write(&job, LAMBDA_JOB).map_err(output_error(&job))?;
        job
    } else {
        kappa_job.clone()
    };
    let spark = &context.options.spark;
    let mut args = vec![
        "--master".to_owned(),
        spark.master.clone(),
        "--name".to_owned(),
        format!("lk-{name}"),
        "--jars".to_owned(),
        jars.join(","),
    ];
    if lambda {
        args.push("--py-files".to_owned());
        args.push(super::absolute(&kappa_job));
    }
    // Spark's scratch files under the run's folder: a SIGKILLed driver cannot clean up /tmp.
    let scratch = folder.join("spark-local");
    std::fs::create_dir_all(&scratch).map_err(output_error(&scratch))?;
    let local = [("spark.local.dir".to_owned(), super::absolute(&scratch))];
    let delta = if lambda { lambda_settings() } else { Vec::new() };
    for (key, value) in settings(context).into_iter().chain(delta).chain(local).chain(spark.conf.iter().cloned()) {
        args.push("--conf".to_owned());
        args.push(format!("{key}={value}"));
    }
    args.push(super::absolute(&job));
    env.push(("PYSPARK_PYTHON".to_owned(), home.join("venv/bin/python").display().to_string()));
    env.push(("PYTHONUNBUFFERED".to_owned(), "1".to_owned()));
    Ok(Launch { program: submit, args, env, log: folder.join("engine.log"), ready_file })
}
