//! Kafka Streams (`kstreams`): lk's five queries as a Kafka Streams application
//! (`engines/kstreams/`, Java), built by `scripts/kstreams` under `~/.cache/lk/`, run with
//! `java -cp`, exactly-once through `processing.guarantee=exactly_once_v2`.
//!
//! Its lateness rule is Kafka Streams' own: each aggregation drops an event from a window that
//! ended at or before its task's stream time less the grace period. After a repartition no one
//! outside a task can know its stream time, so the application declares each drop on the late
//! topic ([`DeclaredLate`]), from observers that sit just before each aggregation in the same
//! task and apply the same rule (docs/engines.md, "Kafka Streams").

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use lk_engines::log::{Log, LogError, RecordBatch};
use lk_engines::runtime::queries::{Query, Session};
use lk_engines::verify::oracle::{Lateness, Position};

use super::Context;
use super::process::Launch;
use crate::run::{RunError, output_error};
use crate::scenario::Guarantee;

/// Kafka Streams' version: the broker's (scripts/kafka), as `scripts/kstreams` builds against.
pub const KSTREAMS_VERSION: &str = "4.4.0";

/// How Kafka Streams runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KstreamsOptions {
    /// Stream threads per instance (`num.stream.threads`).
    pub threads: u32,
    /// The JVM's heap limit (`-Xmx`).
    pub heap: String,
    /// Where the aggregations keep their state.
    pub store: Store,
    /// Instances of the application, each a JVM with its own state directory, in one
    /// application id: Kafka Streams spreads the tasks over them, and when one is killed its
    /// partitions move to the others. Crash faults kill the first.
    pub instances: u32,
}

/// Where Kafka Streams' aggregations keep their state between commits (`dsl.store.suppliers.class`);
/// either way every change also goes to a changelog topic, which a restart restores from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Store {
    /// In memory: like lk's own Kappa, whose state is in memory with checkpoints. On this
    /// project's two cores RocksDB's session-window scans hold the application to a few thousand
    /// events per second (docs/benchmarks.md).
    #[default]
    Memory,
    /// RocksDB on local disk, Kafka Streams' default.
    Rocksdb,
}

impl Store {
    /// Its name on the command line and in `LK_STORE`.
    pub fn name(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Rocksdb => "rocksdb",
        }
    }
}

impl Default for KstreamsOptions {
    fn default() -> Self {
        // One stream thread: the two cores this project's machines have are shared with the
        // broker, lk's generator and its reader of the output.
        Self { threads: 1, heap: "1g".to_owned(), store: Store::default(), instances: 1 }
    }
}

/// Where `scripts/kstreams` installed the application, if it did.
fn kstreams_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("LK_KSTREAMS_HOME").filter(|home| !home.is_empty()) {
        return Some(PathBuf::from(home));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(format!(".cache/lk/kstreams-{KSTREAMS_VERSION}")))
}

/// Whether `scripts/kstreams install` has built the application where lk looks for it.
pub fn installed() -> bool {
    kstreams_home()
        .is_some_and(|home| home.join("lib/.complete").is_file() && home.join("lib/lk-kstreams.jar").is_file())
}

/// The Java program: `$JAVA_HOME/bin/java` when set, otherwise `java` from the path.
fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|java| java.is_file())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// How version `version` of the application is started.
pub fn launch(
    context: &Context<'_>,
    folder: &Path,
    mut env: Vec<(String, String)>,
    ready_file: PathBuf,
    version: u32,
) -> Result<Launch, RunError> {
    let missing = || {
        RunError::Invalid(format!(
            "kstreams needs lk's Kafka Streams application built: run scripts/kstreams install (Maven builds \
             engines/kstreams against Kafka Streams {KSTREAMS_VERSION} into ~/.cache/lk/kstreams-{KSTREAMS_VERSION}), \
             or point LK_KSTREAMS_HOME at such an installation"
        ))
    };
    if !installed() {
        return Err(missing());
    }
    let lib = kstreams_home().ok_or_else(missing)?.join("lib");
    let kind = crate::engine::EngineKind::Kstreams;
    let guarantee = match kind.guarantee(context.scenario) {
        Guarantee::ExactlyOnce => "exactly-once",
        Guarantee::AtLeastOnce => "at-least-once",
        Guarantee::AtMostOnce => {
            return Err(RunError::Invalid(
                "kstreams runs exactly-once (exactly_once_v2) or at-least-once (at_least_once); Kafka Streams has no \
                 at-most-once: set engine.kstreams_guarantee (or --kstreams-guarantee) to one of those"
                    .to_owned(),
            ));
        }
    };
    let options = &context.options.kstreams;
    // Each start of a job version is the same application: its id names its consumer group, its
    // internal topics and its transactional ids, so a restart resumes from what it committed.
    env.push(("LK_APPLICATION_ID".into(), context.log.qualified_name(&application(version))));
    env.push(("LK_GUARANTEE".into(), guarantee.into()));
    env.push(("LK_COMMIT_INTERVAL_MS".into(), context.scenario.engine.commit_interval.as_millis().max(1).to_string()));
    env.push(("LK_THREADS".into(), options.threads.to_string()));
    env.push(("LK_STORE".into(), options.store.name().into()));
    let args = vec![
        format!("-Xmx{}", options.heap),
        "-XX:+UseSerialGC".to_owned(),
        "-cp".to_owned(),
        format!("{}/*", lib.display()),
        "dev.lk.kstreams.Kappa".to_owned(),
    ];
    let log = folder.join("engine.log");
    std::fs::create_dir_all(folder).map_err(output_error(folder))?;
    Ok(Launch { program: java(), args, env, log, ready_file })
}

/// The local name of version `version`'s application id (the log qualifies it with the run's
/// namespace): it names the application's consumer group, internal topics and transactions.
pub fn application(version: u32) -> String {
    format!("kstreams-v{version}")
}

/// Runs Kafka's application reset tool (`StreamsResetter`, the class behind
/// `kafka-streams-application-reset`) on `application`: its input offsets back to the earliest,
/// its internal topics (repartitions, changelogs) deleted. The application must be stopped.
/// Returns the seconds it took.
#[allow(clippy::disallowed_methods, reason = "the reset's duration is reported as wall time")]
pub fn reset(judge: &crate::engine::Judge<'_>, application: &str, folder: &Path) -> Result<f64, RunError> {
    let lib = kstreams_home().map(|home| home.join("lib")).filter(|_| installed()).ok_or_else(|| {
        RunError::Invalid("the reset tool needs the Kafka Streams application: run scripts/kstreams install".to_owned())
    })?;
    let (brokers, properties) = match &judge.options.log {
        crate::run::LogChoice::Kafka { brokers, properties, .. } => (brokers.clone(), properties.for_java()),
        crate::run::LogChoice::Embedded => unreachable!("an external engine runs on Kafka"),
    };
    let config = folder.join("reset-client.properties");
    let text: String = properties.iter().map(|(key, value)| format!("{key}={value}\n")).collect();
    std::fs::write(&config, text).map_err(output_error(&config))?;
    let input = format!(
        "{},{}",
        judge.base.qualified_name(crate::run::TOPIC),
        judge.base.qualified_name(&format!("{}.control", crate::engine::EngineKind::Kstreams))
    );
    let started = std::time::Instant::now();
    let output = std::process::Command::new(java())
        .args(["-cp", &format!("{}/*", lib.display()), "org.apache.kafka.tools.StreamsResetter"])
        .args(["--bootstrap-server", &brokers, "--application-id", application, "--input-topics", &input])
        .args(["--to-earliest", "--force", "--config-file"])
        .arg(&config)
        .output()
        .map_err(|error| {
            RunError::Invalid(format!("could not run Kafka's reset tool ({}): {error}", java().display()))
        })?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(RunError::Engine(lk_engines::runtime::job::EngineError::External(format!(
            "kstreams: the reset tool failed on {application} ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))));
    }
    Ok(seconds)
}

/// The lateness rule a Kafka Streams application applied, as it declared it: the input records
/// each aggregation dropped, per window.
pub struct DeclaredLate {
    /// (query, partition, offset, window end µs; `i64::MIN` for a session).
    declared: HashSet<(Query, u32, u64, i64)>,
    /// Records of the late topic lk could not read.
    pub unreadable: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Declaration {
    query: String,
    partition: u32,
    offset: u64,
    window_end_us: Option<i64>,
}

impl DeclaredLate {
    /// Every declaration on `topic`.
    pub fn read(log: &dyn Log, topic: &str) -> Result<Self, LogError> {
        let mut declared = HashSet::new();
        let mut unreadable = 0;
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
                    match declaration(value) {
                        Some(key) => {
                            declared.insert(key);
                        }
                        None => unreadable += 1,
                    }
                }
            }
        }
        Ok(Self { declared, unreadable })
    }

    /// Drops declared.
    pub fn len(&self) -> usize {
        self.declared.len()
    }

    /// Whether none was declared.
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }
}

/// One record of the late topic as (query, partition, offset, window end µs; `i64::MIN` for a
/// session), or None when it is not a declaration lk can read.
fn declaration(record: &[u8]) -> Option<(Query, u32, u64, i64)> {
    let declaration = serde_json::from_slice::<Declaration>(record).ok()?;
    let query = Query::ALL.into_iter().find(|query| query.name() == declaration.query)?;
    let window = match (query, declaration.window_end_us) {
        (Query::DriverSessions, None) => i64::MIN,
        (Query::DriverLocation | Query::DriverSessions, _) | (_, None) => return None,
        (_, Some(end)) => end,
    };
    Some((query, declaration.partition, declaration.offset, window))
}

impl Lateness for DeclaredLate {
    fn accepts(&self, query: Query, at: Position, _stream_time_us: i64, window_end_us: i64) -> bool {
        let window = if query == Query::DriverSessions { i64::MIN } else { window_end_us };
        !self.declared.contains(&(query, at.partition, at.offset, window))
    }

    /// Kafka Streams' session windows: event timestamps in whole milliseconds, and an event joins
    /// every session that ends at most the inactivity gap before it or starts at most the gap
    /// after it. The application's gap is lk's less one millisecond, so that in milliseconds a
    /// gap of lk's session gap or more splits, as lk's definition does in microseconds.
    fn sessions(&self, activity: &[(i64, bool, u64, Position)], gap_us: i64) -> Option<Vec<Session>> {
        let gap_ms = gap_us / 1000 - 1;
        let mut sorted: Vec<(i64, bool, u64)> = activity.iter().map(|&(time, ride, id, _)| (time, ride, id)).collect();
        sorted.sort_unstable();
        let mut sessions: Vec<Session> = Vec::new();
        for (time, ride, id) in sorted {
            let single = Session::single(time, ride, id);
            match sessions.last_mut() {
                Some(last) if time.div_euclid(1000) - last.last_us.div_euclid(1000) <= gap_ms => last.absorb(&single),
                _ => sessions.push(single),
            }
        }
        Some(sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position { partition: 0, offset }
    }

    #[test]
    fn sessions_split_where_kafka_streams_splits_in_milliseconds() {
        let rule = DeclaredLate { declared: HashSet::new(), unreadable: 0 };
        let gap_us = 30_000_000;
        // 29.9999 s apart in µs, but 30.000 s apart in whole milliseconds: Kafka Streams (gap
        // 29,999 ms inclusive) splits them, where lk's µs rule would not.
        let activity = [(1_000_999, false, 1, at(0)), (31_001_000, true, 2, at(1)), (31_002_000, false, 3, at(2))];
        let sessions = rule.sessions(&activity, gap_us).unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(
            (sessions[1].start_us, sessions[1].last_us, sessions[1].pings, sessions[1].rides),
            (31_001_000, 31_002_000, 1, 1)
        );
        // 29.999 s apart in milliseconds: one session.
        let activity = [(1_000_000, false, 1, at(0)), (30_999_999, false, 2, at(1))];
        assert_eq!(rule.sessions(&activity, gap_us).unwrap().len(), 1);
    }

    #[test]
    fn a_declared_drop_is_late_for_its_window_only() {
        let declared = HashSet::from([(Query::ZoneDemand, 0, 7, 120_000_000), (Query::DriverSessions, 1, 3, i64::MIN)]);
        let rule = DeclaredLate { declared, unreadable: 0 };
        assert!(!rule.accepts(Query::ZoneDemand, at(7), 0, 120_000_000));
        assert!(rule.accepts(Query::ZoneDemand, at(7), 0, 180_000_000));
        assert!(rule.accepts(Query::RidesPerDriver, at(7), 0, 120_000_000));
        assert!(!rule.accepts(Query::DriverSessions, Position { partition: 1, offset: 3 }, 0, 5));
    }

    #[test]
    fn declarations_are_read_by_query_and_window() {
        let window = br#"{"query":"q3_zone_demand","partition":2,"offset":9,"window_end_us":120000000}"#;
        assert_eq!(declaration(window), Some((Query::ZoneDemand, 2, 9, 120_000_000)));
        let session = br#"{"query":"q4_driver_sessions","partition":0,"offset":1}"#;
        assert_eq!(declaration(session), Some((Query::DriverSessions, 0, 1, i64::MIN)));
        // A window query without its window, a session with one, Q1 (never late), unknown fields.
        for bad in [
            &br#"{"query":"q2_rides_per_driver","partition":0,"offset":1}"#[..],
            br#"{"query":"q4_driver_sessions","partition":0,"offset":1,"window_end_us":5}"#,
            br#"{"query":"q1_driver_location","partition":0,"offset":1,"window_end_us":5}"#,
            br#"{"query":"q3_zone_demand","partition":0,"offset":1,"window_end_us":5,"extra":1}"#,
        ] {
            assert_eq!(declaration(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        /// The late topic is bytes lk did not write: any record is a declaration or unreadable.
        #[test]
        fn any_late_record_is_read_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), cut in 1usize..80) {
            let _ = declaration(&bytes);
            let valid = br#"{"query":"q5_historical_trends","partition":4294967295,"offset":18446744073709551615,"window_end_us":-9223372036854775808}"#;
            proptest::prop_assert!(declaration(valid).is_some());
            let _ = declaration(&valid[..cut.min(valid.len())]);
        }
    }
}
