//! `KafkaLog`: the [`Log`] trait over a real Apache Kafka cluster, through librdkafka (the
//! `rdkafka` crate with its bundled librdkafka 2.12).
//!
//! **Names.** Every topic, consumer group and transactional id of one `KafkaLog` lives under its
//! namespace (`<namespace>.<name>`), so runs and tests share a broker without seeing each
//! other's data. Before it creates a topic, a log records the topic's name in its namespace's
//! manifest (`<namespace>.lk-manifest`, compacted), and [`KafkaLog::delete_topics`] deletes
//! exactly the manifest's topics, never a topic by its prefix alone: a topic that merely shares
//! the namespace's prefix (`orders.payments` beside a namespace `orders`) is not lk's.
//!
//! **Writes.** Appends go through one idempotent `ThreadedProducer` (lz4, batched by librdkafka).
//! Each partition's records go to librdkafka in one `rd_kafka_produce_batch` call (see
//! `produce_batch`: the per-record `send` of the rdkafka crate cost lk half its producer rate).
//! [`Log::append_many`] hands every partition's records to librdkafka before waiting for any
//! acknowledgement, so a producer keeps the pipeline full. An append returns once the broker has
//! acknowledged every record (`acks=all`), with the offsets the broker gave them. Transactions
//! use one transactional producer per transactional id, kept between transactions (initialising
//! one costs a round of coordinator requests), and re-created after any error that leaves its
//! state unknown: librdkafka does not implement KIP-890, so after a timeout around a commit the
//! only safe move is to abort and start again with a new producer, which fences the old one.
//! `send_offsets_to_transaction` has been seen to hang past its timeout, so it runs on a helper
//! thread and a hang becomes a retriable error, never a stuck engine.
//!
//! **Reads.** Each `read` of a partition is served by a read-committed consumer assigned to
//! that partition alone. Consumers are pooled per partition and handed to the caller whose
//! offset they are already at, so a sequential reader costs no seek: librdkafka prefetches the
//! next records while the engine processes the last ones. A read that finds nothing fetched
//! checks the partition's end (the last stable offset, from the shared 5 ms cache) before it
//! returns empty, and waits while records are there but not yet fetched. Offsets skipped by
//! transaction markers and aborted records are stepped over by taking the consumer's position,
//! which librdkafka advances past them.
//!
//! **Errors.** Every broker error becomes a [`LogError::Backend`] that names the operation, the
//! topic and partition, and the brokers, and says whether retrying may succeed.

#![allow(
    clippy::disallowed_methods,
    reason = "librdkafka's waits and retries are bounded by wall-clock deadlines; nothing here is a measurement"
)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::log::client_properties::{ClientKind, ClientProperties};
use crate::log::{AppendTicket, Log, LogError, LogTransaction, OffsetRange, RecordBatch, TopicPartition};

/// Where the cluster is and how lk talks to it.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The prefix of every topic, group and transactional id this log uses.
    pub namespace: String,
    /// How long a request may take before it is an error.
    pub timeout: Duration,
    /// The broker's data folder, when it is on this machine (`scripts/kafka` prints it): then
    /// [`Log::stored_bytes`] is the size of this log's topics on disk, else the bytes appended.
    pub data_dir: Option<PathBuf>,
    /// The client configuration every client takes its kind's share of (security settings,
    /// producer tuning such as `linger.ms`), over lk's defaults.
    pub properties: ClientProperties,
}

impl KafkaConfig {
    /// A config for `brokers` and `namespace` with lk's defaults.
    pub fn new(brokers: &str, namespace: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            namespace: namespace.to_owned(),
            timeout: Duration::from_secs(30),
            data_dir: None,
            properties: ClientProperties::new(),
        }
    }
}

/// Readers kept per partition between reads: one per engine and materialiser reading it, and
/// a spare or two for replays.
const SPARE_READERS: usize = 4;

/// The properties of lk's producers: idempotent, lz4, batched for throughput. The same values
/// are what the README's comparison gives Kafka's own `ProducerPerformance`.
pub const PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("batch.size", "262144"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
];

/// One append's records, waiting for the broker's acknowledgements.
#[derive(Default)]
struct Pending {
    remaining: AtomicUsize,
    first: AtomicI64,
    last: AtomicI64,
    error: Mutex<Option<(RDKafkaErrorCode, String)>>,
    done: Mutex<bool>,
    wake: Condvar,
}

impl Pending {
    fn new(records: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(records),
            first: AtomicI64::new(i64::MAX),
            last: AtomicI64::new(-1),
            ..Self::default()
        })
    }

    fn delivered(&self, result: &DeliveryResult<'_>) {
        match result {
            Ok(message) => {
                self.first.fetch_min(message.offset(), Ordering::Relaxed);
                self.last.fetch_max(message.offset(), Ordering::Relaxed);
            }
            Err((error, _)) => {
                let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                self.error.lock().expect("not poisoned").get_or_insert((code, error.to_string()));
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.done.lock().expect("not poisoned") = true;
            self.wake.notify_all();
        }
    }

    /// Counts off `records` that were never handed to librdkafka, so they get no report.
    fn forget(&self, records: usize) {
        if records > 0 && self.remaining.fetch_sub(records, Ordering::AcqRel) == records {
            *self.done.lock().expect("not poisoned") = true;
            self.wake.notify_all();
        }
    }

    /// Records not yet acknowledged at `deadline`, or 0.
    fn wait(&self, deadline: Instant) -> usize {
        let mut done = self.done.lock().expect("not poisoned");
        while !*done && self.remaining.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            done = self.wake.wait_timeout(done, left).expect("not poisoned").0;
        }
        self.remaining.load(Ordering::Acquire)
    }
}

/// Hands `records[skip..]` to `producer` in one `rd_kafka_produce_batch` call, each record
/// holding a reference to `pending` for its delivery report. Returns how many it took, how many
/// of those came before the first it refused, and the first refusal's error.
///
/// The safe `send` of the rdkafka crate costs a `CString` of the topic name, a topic lookup and
/// a varargs call per record; at a million records a second on two cores that is what held lk's
/// producer below Kafka's own. The batch call looks the partition up once, and copies every
/// record (`RD_KAFKA_MSG_F_COPY`) before it returns, so nothing here outlives the call.
/// Delivery reports come back through the producer's context as they do for `send`: the
/// reference each record holds is the `Arc` the context's `delivery` takes back.
///
/// This and [`lk_simulator::hint::prefetch`] are the workspace's exceptions to `unsafe_code = "deny"`.
#[allow(unsafe_code)]
fn produce_batch(
    producer: &LkProducer,
    topic: &CStr,
    partition: u32,
    records: &RecordBatch,
    skip: usize,
    pending: &Arc<Pending>,
) -> (usize, usize, Option<RDKafkaErrorCode>) {
    use rdkafka::bindings as rd;
    let keys: Vec<[u8; 8]> = records.iter().skip(skip).map(|(key, _)| key.to_le_bytes()).collect();
    let mut messages: Vec<rd::rd_kafka_message_t> = records
        .iter()
        .skip(skip)
        .zip(&keys)
        .map(|((_, value), key)| rd::rd_kafka_message_t {
            err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            rkt: std::ptr::null_mut(),
            partition: partition as i32,
            payload: value.as_ptr() as *mut c_void,
            len: value.len(),
            key: key.as_ptr() as *mut c_void,
            key_len: key.len(),
            offset: 0,
            _private: Arc::into_raw(Arc::clone(pending)) as *mut c_void,
        })
        .collect();
    let count = messages.len();
    // SAFETY: the client handle lives as long as `producer`; `topic` is a NUL-terminated string
    // librdkafka copies; a null configuration means the client's defaults.
    let handle =
        unsafe { rd::rd_kafka_topic_new(producer.client().native_ptr(), topic.as_ptr(), std::ptr::null_mut()) };
    let taken = if handle.is_null() {
        for message in &mut messages {
            message.err = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__INVALID_ARG;
        }
        0
    } else {
        // SAFETY: `handle` is a live topic handle; `messages` is an array of `count` messages
        // whose payloads and keys are valid for the call, and with `RD_KAFKA_MSG_F_COPY`
        // librdkafka copies them before it returns. It writes only the messages' `err` fields.
        let taken = unsafe {
            rd::rd_kafka_produce_batch(
                handle,
                partition as i32,
                rd::RD_KAFKA_MSG_F_COPY,
                messages.as_mut_ptr(),
                count as std::os::raw::c_int,
            )
        };
        // SAFETY: the handle from `rd_kafka_topic_new` above, released once.
        unsafe { rd::rd_kafka_topic_destroy(handle) };
        taken.max(0) as usize
    };
    let mut first_error = None;
    let mut in_order = 0;
    for message in &messages {
        if message.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            if first_error.is_none() {
                in_order += 1;
            }
            continue;
        }
        // SAFETY: librdkafka did not take this record, so the reference `into_raw` made for it
        // above is still ours to release, exactly once.
        drop(unsafe { Arc::from_raw(message._private as *const Pending) });
        first_error.get_or_insert_with(|| RDKafkaErrorCode::from(message.err));
    }
    (taken, in_order, first_error)
}

/// Routes delivery reports to the append or transaction that sent the record.
struct Delivery;

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        pending.delivered(result);
    }
}

type LkProducer = ThreadedProducer<Delivery>;

/// A consumer assigned to one partition, and where it is.
struct Reader {
    consumer: BaseConsumer,
    /// The offset the next read continues from.
    next: u64,
}

/// A transactional producer kept for its transactional id.
struct Slot {
    producer: Arc<LkProducer>,
    busy: bool,
    generation: u64,
}

/// The Kafka backend. See the module documentation.
pub struct KafkaLog {
    config: KafkaConfig,
    admin: AdminClient<DefaultClientContext>,
    /// A read-committed client without a group, for metadata and watermarks.
    meta: BaseConsumer<Probe>,
    producer: LkProducer,
    partitions: Mutex<HashMap<String, u32>>,
    readers: Mutex<HashMap<(String, u32), Vec<Reader>>>,
    /// Each topic's end offsets and when they were asked for: engines, the lag sampler and the
    /// backpressure governor all ask often, and one request every 5 ms answers them all (the
    /// broker shares the machine's cores with lk).
    ends: Mutex<HashMap<String, (Instant, Vec<u64>)>>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    transactional: Mutex<HashMap<String, Slot>>,
    generations: AtomicU64,
    appended_bytes: AtomicU64,
    /// The topics this process has recorded in the manifest already.
    recorded: Mutex<std::collections::HashSet<String>>,
}

/// The metadata client's context: it keeps the reason of a refused authentication or TLS
/// handshake, which librdkafka logs while the request itself only times out.
#[derive(Default)]
struct Probe {
    refused: Mutex<Option<String>>,
}

impl Probe {
    fn refused(&self) -> Option<String> {
        self.refused.lock().expect("not poisoned").clone()
    }
}

impl ClientContext for Probe {
    /// librdkafka logs a refused login or handshake with the broker's reason.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, _facility: &str, message: &str) {
        let refused = message.contains("SASL authentication error")
            || message.contains("SSL handshake failed")
            || message.contains("Authentication failed");
        use rdkafka::config::RDKafkaLogLevel as Level;
        let serious = !matches!(level, Level::Notice | Level::Info | Level::Debug);
        if refused && serious {
            *self.refused.lock().expect("not poisoned") = Some(crate::log::client_properties::redact(message));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Probe {}

/// The local name of a namespace's manifest topic: the topics lk created in the namespace.
pub const MANIFEST_TOPIC: &str = "lk-manifest";

/// The longest topic name Kafka accepts.
const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Checks a namespace against Kafka's rules for topic names (ASCII letters, digits, `.`, `_`
/// and `-`; at most 249 bytes with the longest local name lk adds), so that no namespace can
/// be a pattern or collide with another by a rule the broker applies later.
pub fn validate_namespace(namespace: &str) -> Result<(), LogError> {
    let invalid = |why: &str| LogError::Backend {
        message: format!(
            "namespace {namespace:?} {why}; a namespace is the prefix of lk's topic names, so it follows Kafka's \
             rules for them: ASCII letters, digits, '.', '_' and '-', e.g. lk-test-1"
        ),
        retriable: false,
    };
    if namespace.is_empty() {
        return Err(invalid("is empty"));
    }
    if namespace == "." || namespace == ".." {
        return Err(invalid("is not a name"));
    }
    if let Some(bad) = namespace.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(invalid(&format!("has {bad:?}")));
    }
    // The longest local name is the speed layer's output topic; leave room for longer ones.
    if namespace.len() + 1 + 32 > TOPIC_NAME_BYTES_MAX {
        return Err(invalid(&format!("is {} bytes long, more than {}", namespace.len(), TOPIC_NAME_BYTES_MAX - 33)));
    }
    Ok(())
}

/// One manifest record: a topic that lk created in the namespace.
#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestEntry {
    /// Always `lk`: a record without it was not written by lk.
    created_by: String,
    /// The topic's local name (without the namespace).
    topic: String,
}

/// Whether Kafka says retrying may succeed.
fn retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::QueueFull
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::ConcurrentTransactions
            | C::UnstableOffsetCommit
            | C::TimedOutQueue
            | C::PreviousInProgress
            // A broker that restarted: leaders and their epochs are being re-established.
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::KafkaStorageError
    )
}

impl KafkaLog {
    /// Connects to the cluster and checks that a broker answers.
    pub fn connect(config: KafkaConfig) -> Result<Self, LogError> {
        validate_namespace(&config.namespace)?;
        let base = |config: &KafkaConfig, kind: ClientKind| {
            let mut client = ClientConfig::new();
            client.set("bootstrap.servers", &config.brokers).set("client.id", "lk");
            for (key, value) in config.properties.for_client(kind) {
                client.set(key, value);
            }
            client
        };
        let create_error = |what: &str, error: KafkaError| LogError::Backend {
            message: format!("could not create the Kafka {what} for {}: {error}", config.brokers),
            retriable: false,
        };
        let admin: AdminClient<DefaultClientContext> =
            base(&config, ClientKind::Admin).create().map_err(|error| create_error("admin client", error))?;
        let meta: BaseConsumer<Probe> = base(&config, ClientKind::Consumer)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create_with_context(Probe::default())
            .map_err(|error| create_error("metadata client", error))?;
        let mut producer_config = base(&config, ClientKind::Producer);
        for (key, value) in PRODUCER_PROPERTIES {
            producer_config.set(*key, *value);
        }
        for (key, value) in config.properties.for_client(ClientKind::Producer) {
            producer_config.set(key, value);
        }
        producer_config.set("message.timeout.ms", config.timeout.as_millis().to_string());
        let producer =
            producer_config.create_with_context(Delivery).map_err(|error| create_error("producer", error))?;
        let log = Self {
            admin,
            meta,
            producer,
            partitions: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            ends: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            transactional: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            recorded: Mutex::new(std::collections::HashSet::new()),
            config,
        };
        log.probe()?;
        Ok(log)
    }

    /// Waits until a broker answers a metadata request, for up to 10 s; a refused
    /// authentication or TLS handshake ends the wait at once with the broker's reason.
    fn probe(&self) -> Result<(), LogError> {
        let limit = Duration::from_secs(10).min(self.config.timeout);
        let deadline = Instant::now() + limit;
        loop {
            let attempt = (deadline.saturating_duration_since(Instant::now())).min(Duration::from_millis(250));
            let error = match self.meta.fetch_metadata(None, attempt) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            // The client's log lines wait in its queue (the rdkafka crate sets `log.queue`): a
            // poll delivers them to the context, which keeps a refusal's reason.
            let _ = self.meta.poll(Duration::ZERO);
            if let Some(refused) = self.meta.context().refused() {
                return Err(LogError::Backend {
                    message: format!(
                        "Kafka at {} refused lk's connection: {refused}; check the security settings of \
                         --kafka-config and --kafka-property (security.protocol, sasl.mechanism, the \
                         credentials, ssl.ca.location) against the listener's",
                        self.config.brokers
                    ),
                    retriable: false,
                });
            }
            if Instant::now() >= deadline {
                return Err(LogError::Backend {
                    message: format!(
                        "no Kafka broker answered at {} within {}s ({error}); start one with `scripts/kafka up`, \
                         or point --brokers at a running cluster",
                        self.config.brokers,
                        limit.as_secs()
                    ),
                    retriable: false,
                });
            }
        }
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.config.brokers
    }

    /// The namespace every name of this log lives under.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    fn name(&self, local: &str) -> String {
        format!("{}.{local}", self.config.namespace)
    }

    fn error(&self, operation: &str, topic: &str, partition: Option<u32>, error: &KafkaError) -> LogError {
        let code = error.rdkafka_error_code();
        let place = match partition {
            Some(partition) => format!("{topic}/{partition}"),
            None => topic.to_owned(),
        };
        let retriable = code.is_some_and(retriable)
            || matches!(error, KafkaError::Transaction(inner) if inner.is_retriable() && !inner.is_fatal());
        let hint = if matches!(code, Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure))
        {
            "; is the broker up? `scripts/kafka status` tells"
        } else {
            ""
        };
        LogError::Backend {
            message: format!("Kafka at {}: {operation} {place}: {error}{hint}", self.config.brokers),
            retriable,
        }
    }

    fn check_partition(&self, topic: &str, partition: u32) -> Result<(), LogError> {
        let partitions = self.partitions(topic)?;
        if partition >= partitions {
            return Err(LogError::UnknownPartition { topic: topic.to_owned(), partition, partitions });
        }
        Ok(())
    }

    /// Runs a group request again while Kafka says retrying may succeed, for up to the timeout:
    /// a group's coordinator moves or loads (NotCoordinator, CoordinatorLoadInProgress) when the
    /// broker is busy or just started, and a caller should not fail for that.
    fn retrying<T>(&self, mut request: impl FnMut() -> KafkaResult<T>) -> KafkaResult<T> {
        let deadline = Instant::now() + self.config.timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            match request() {
                Err(error) if error.rdkafka_error_code().is_some_and(retriable) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                result => return result,
            }
        }
    }

    fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        self.check_partition(topic, partition)?;
        // A partition's leader may be moving (or, just after creation, not known yet): retry
        // what Kafka says is retriable, for up to the timeout.
        let deadline = Instant::now() + self.config.timeout;
        loop {
            match self.meta.fetch_watermarks(&self.name(topic), partition as i32, self.config.timeout) {
                Ok((low, high)) => return Ok((low.max(0) as u64, high.max(0) as u64)),
                Err(error) if error.rdkafka_error_code().is_some_and(retriable) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(self.error("reading the offsets of", topic, Some(partition), &error)),
            }
        }
    }

    fn new_consumer(&self, group: Option<&str>, isolation: &str) -> Result<BaseConsumer, LogError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.config.brokers)
            .set("client.id", "lk")
            .set("group.id", group.map_or_else(|| self.name("lk-readers"), |group| self.name(group)))
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            // A fetch returns as soon as there is a record; this bounds only how long an idle
            // consumer's fetch waits at the broker, and so how many requests idle readers cost.
            .set("fetch.wait.max.ms", "100")
            .set("queued.max.messages.kbytes", "16384")
            .set("session.timeout.ms", "45000");
        for (key, value) in self.config.properties.for_client(ClientKind::Consumer) {
            config.set(key, value);
        }
        config.create().map_err(|error| LogError::Backend {
            message: format!("could not create a Kafka consumer for {}: {error}", self.config.brokers),
            retriable: false,
        })
    }

    fn group(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut groups = self.groups.lock().expect("not poisoned");
        if let Some(consumer) = groups.get(group) {
            return Ok(Arc::clone(consumer));
        }
        // Read-uncommitted: an offset commit inside an open transaction is not yet the group's,
        // and the broker answers such a fetch with the last committed offset instead of making
        // the caller wait for the transaction.
        let consumer = Arc::new(self.new_consumer(Some(group), "read_uncommitted")?);
        groups.insert(group.to_owned(), Arc::clone(&consumer));
        Ok(consumer)
    }

    /// A reader of `topic/partition` positioned at `offset`: one already there if the pool has
    /// it, else a spare one (or a new one) assigned to it, after checking the offset is in range.
    fn take_reader(&self, topic: &str, partition: u32, offset: u64) -> Result<Reader, LogError> {
        let key = (topic.to_owned(), partition);
        // A spare reader only ever moves forward. After `assign`, the consumer's position (which
        // `step_over_markers` trusts) says where it was under its old assignment until
        // librdkafka's own thread has stopped that fetch: moved back, a reader would step over
        // the records between. In a run whose engines were starved (nice 19 beside a driver at
        // full rate) Kappa's reader, moved back to offset 0 after Lambda had read on, skipped
        // part of its partition's first batch: 24,594 lost contributions. Moved forward, the
        // old position is behind the new one and harmless. A reader asked to go back is new.
        let spare = {
            let mut readers = self.readers.lock().expect("not poisoned");
            let pool = readers.entry(key).or_default();
            if let Some(at) = pool.iter().position(|reader| reader.next == offset) {
                return Ok(pool.remove(at));
            }
            pool.iter().position(|reader| reader.next < offset).map(|at| pool.remove(at))
        };
        let (start, end) = self.watermarks(topic, partition)?;
        if offset < start || offset > end {
            if let Some(reader) = spare {
                self.put_reader(topic, partition, reader);
            }
            return Err(LogError::OffsetOutOfRange { topic: topic.to_owned(), partition, offset, start, end });
        }
        let consumer = match spare {
            Some(reader) => reader.consumer,
            None => self.new_consumer(None, "read_committed")?,
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.name(topic), partition as i32, Offset::Offset(offset as i64))
            .map_err(|error| self.error("positioning a reader on", topic, Some(partition), &error))?;
        consumer.assign(&assignment).map_err(|error| self.error("assigning", topic, Some(partition), &error))?;
        // What the consumer fetched for its previous position is not drained here: until
        // librdkafka's thread has applied the new assignment, those records are still served,
        // and draining them blind threw away the very records from `offset` on, so that the
        // read returned later ones (a crash-recovery run over Kafka stopped on `check_contiguous`).
        // The spare was behind `offset`, so what it fetched is the partition's records in order
        // from there: `read_with` skips those before `offset` and takes the rest.
        Ok(Reader { consumer, next: offset })
    }

    /// Returns a reader to its partition's pool, which keeps the [`SPARE_READERS`] returned last
    /// (in the order returned): an engine's reader comes back after every read, while one left
    /// behind by a replay or the oracle does not.
    fn put_reader(&self, topic: &str, partition: u32, reader: Reader) {
        let surplus = {
            let mut readers = self.readers.lock().expect("not poisoned");
            let pool = readers.entry((topic.to_owned(), partition)).or_default();
            pool.push(reader);
            (pool.len() > SPARE_READERS).then(|| pool.remove(0))
        };
        // Closed outside the lock: closing a consumer waits for its threads.
        drop(surplus);
    }

    /// A transactional producer for `id`: the idle one kept for it, or a new one, which fences
    /// any older producer with the same id (and aborts its open transaction).
    fn transactional_producer(&self, id: &str) -> Result<(Arc<LkProducer>, u64), LogError> {
        {
            let mut slots = self.transactional.lock().expect("not poisoned");
            if let Some(slot) = slots.get_mut(id).filter(|slot| !slot.busy) {
                slot.busy = true;
                return Ok((Arc::clone(&slot.producer), slot.generation));
            }
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.config.brokers).set("client.id", "lk");
        for (key, value) in PRODUCER_PROPERTIES {
            config.set(*key, *value);
        }
        for (key, value) in self.config.properties.for_client(ClientKind::Producer) {
            config.set(key, value);
        }
        config
            .set("transactional.id", self.name(id))
            .set("transaction.timeout.ms", "60000")
            .set("message.timeout.ms", self.config.timeout.as_millis().to_string());
        let producer: LkProducer = config.create_with_context(Delivery).map_err(|error| LogError::Backend {
            message: format!("could not create a transactional Kafka producer for {}: {error}", self.config.brokers),
            retriable: false,
        })?;
        producer
            .init_transactions(self.config.timeout)
            .map_err(|error| self.error("initialising transactions for", id, None, &error))?;
        let producer = Arc::new(producer);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.transactional
            .lock()
            .expect("not poisoned")
            .insert(id.to_owned(), Slot { producer: Arc::clone(&producer), busy: true, generation });
        Ok((producer, generation))
    }

    /// Returns a transactional producer after a transaction: kept if it is still sound,
    /// dropped (to be re-created) if not.
    fn release_producer(&self, id: &str, generation: u64, sound: bool) {
        let mut slots = self.transactional.lock().expect("not poisoned");
        if slots.get(id).is_some_and(|slot| slot.generation == generation) {
            if sound {
                slots.get_mut(id).expect("checked").busy = false;
            } else {
                slots.remove(id);
            }
        }
    }

    /// Sends `records` to `topic/partition` through `producer`, each acknowledgement counted
    /// in `pending`; waits while librdkafka's queue is full. On an error, the records that were
    /// not handed over are counted off `pending`, so that waiting for it ends.
    fn send(
        &self,
        producer: &LkProducer,
        topic: &str,
        partition: u32,
        records: &RecordBatch,
        pending: &Arc<Pending>,
    ) -> Result<(), LogError> {
        // Kafka's topic names are ASCII letters, digits, `.`, `_` and `-`: one with a NUL byte
        // cannot exist.
        let name = CString::new(self.name(topic)).map_err(|_| LogError::UnknownTopic { topic: topic.to_owned() })?;
        let deadline = Instant::now() + self.config.timeout;
        let mut next = 0;
        while next < records.len() {
            let (taken, in_order, error) = produce_batch(producer, &name, partition, records, next, pending);
            match error {
                None => break,
                Some(RDKafkaErrorCode::QueueFull) if taken == in_order && Instant::now() < deadline => {
                    next += taken;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Some(code) => {
                    pending.forget(records.len() - next - taken);
                    let error = KafkaError::MessageProduction(code);
                    return Err(self.error("producing to", topic, Some(partition), &error));
                }
            }
        }
        self.appended_bytes.fetch_add((records.value_bytes() + 8 * records.len()) as u64, Ordering::Relaxed);
        Ok(())
    }

    fn finish_append(
        &self,
        topic: &str,
        partition: u32,
        pending: &Pending,
        records: usize,
    ) -> Result<OffsetRange, LogError> {
        finish_append(&self.config.brokers, self.config.timeout, topic, partition, pending, records)
    }

    /// Deletes the topics this namespace's manifest records (those lk created), then the
    /// manifest; returns how many topics were deleted. A manifest record that lk did not write
    /// makes it delete nothing.
    pub fn delete_topics(&self) -> Result<usize, LogError> {
        let recorded = self.manifest()?;
        self.partitions.lock().expect("not poisoned").clear();
        self.readers.lock().expect("not poisoned").clear();
        self.recorded.lock().expect("not poisoned").clear();
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(None, self.config.timeout)
            .map_err(|error| self.error("listing the topics of namespace", &self.config.namespace, None, &error))?;
        let existing: std::collections::HashSet<&str> = metadata.topics().iter().map(|topic| topic.name()).collect();
        let mut names: Vec<String> =
            recorded.iter().map(|topic| self.name(topic)).filter(|name| existing.contains(name.as_str())).collect();
        let deleted = names.len();
        let manifest = self.name(MANIFEST_TOPIC);
        if existing.contains(manifest.as_str()) {
            names.push(manifest);
        }
        if names.is_empty() {
            return Ok(0);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let results = futures_executor::block_on(
            self.admin.delete_topics(&names.iter().map(String::as_str).collect::<Vec<_>>(), &options),
        )
        .map_err(|error| self.error("deleting the topics of namespace", &self.config.namespace, None, &error))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => return Err(self.error("deleting", &name, None, &KafkaError::AdminOp(code))),
            }
        }
        Ok(deleted)
    }

    /// The local names of the topics lk created in this namespace, from its manifest (none if
    /// there is no manifest).
    pub fn manifest(&self) -> Result<Vec<String>, LogError> {
        let partitions = match self.partitions(MANIFEST_TOPIC) {
            Err(LogError::UnknownTopic { .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let manifest = self.name(MANIFEST_TOPIC);
        let mut topics = std::collections::BTreeSet::new();
        let mut batch = RecordBatch::new();
        let deadline = Instant::now() + self.config.timeout;
        for partition in 0..partitions {
            let end = self.end_offset(MANIFEST_TOPIC, partition)?;
            let mut offset = self.start_offset(MANIFEST_TOPIC, partition)?;
            while offset < end {
                if Instant::now() > deadline {
                    return Err(LogError::Backend {
                        message: format!(
                            "Kafka at {}: reading {manifest}/{partition} up to offset {end} took longer than {}s",
                            self.config.brokers,
                            self.config.timeout.as_secs()
                        ),
                        retriable: true,
                    });
                }
                batch.clear();
                let first = offset;
                offset = self.read(MANIFEST_TOPIC, partition, offset, 1024, &mut batch)?;
                if offset == first {
                    self.wait_for(MANIFEST_TOPIC, partition, offset, Duration::from_millis(100))?;
                }
                for (index, (_, value)) in batch.iter().enumerate() {
                    match serde_json::from_slice::<ManifestEntry>(value) {
                        Ok(entry) if entry.created_by == "lk" => {
                            topics.insert(entry.topic);
                        }
                        _ => {
                            return Err(LogError::Backend {
                                message: format!(
                                    "Kafka at {}: record {} of {manifest}/{partition} was not written by lk, so lk \
                                     cannot tell which topics of namespace {} are its own and deletes none; \
                                     inspect the topic, and delete the namespace's topics by hand",
                                    self.config.brokers,
                                    first + index as u64,
                                    self.config.namespace
                                ),
                                retriable: false,
                            });
                        }
                    }
                }
            }
        }
        Ok(topics.into_iter().collect())
    }

    /// Records `topic` in the namespace's manifest (once per process and topic), creating the
    /// manifest first if needed: a topic is recorded before it exists, so that no topic lk
    /// creates can be missing from it.
    fn record_in_manifest(&self, topic: &str) -> Result<(), LogError> {
        if self.recorded.lock().expect("not poisoned").contains(topic) {
            return Ok(());
        }
        self.create_topic_unrecorded(MANIFEST_TOPIC, 1, &[("cleanup.policy", "compact")])?;
        let entry = ManifestEntry { created_by: "lk".to_owned(), topic: topic.to_owned() };
        let mut record = RecordBatch::new();
        record.push(
            xxhash_rust::xxh3::xxh3_64(topic.as_bytes()),
            &serde_json::to_vec(&entry).expect("a manifest entry serialises"),
        );
        self.append(MANIFEST_TOPIC, 0, &record)?;
        self.recorded.lock().expect("not poisoned").insert(topic.to_owned());
        Ok(())
    }

    /// Creates `topic` with topic-level `settings` (for example `cleanup.policy=compact`),
    /// recorded in the namespace's manifest first.
    pub fn create_topic_with(&self, topic: &str, partitions: u32, settings: &[(&str, &str)]) -> Result<(), LogError> {
        if topic == MANIFEST_TOPIC {
            return Err(LogError::Backend {
                message: format!("{MANIFEST_TOPIC} is the name of lk's own manifest topic; choose another name"),
                retriable: false,
            });
        }
        if self.partitions(topic).is_err() {
            self.record_in_manifest(topic)?;
        }
        self.create_topic_unrecorded(topic, partitions, settings)
    }

    fn create_topic_unrecorded(&self, topic: &str, partitions: u32, settings: &[(&str, &str)]) -> Result<(), LogError> {
        if let Ok(existing) = self.partitions(topic) {
            return if existing == partitions {
                Ok(())
            } else {
                Err(LogError::TopicExists { topic: topic.to_owned(), existing, requested: partitions })
            };
        }
        let name = self.name(topic);
        let mut new_topic = NewTopic::new(&name, partitions as i32, TopicReplication::Fixed(1));
        for (key, value) in settings {
            new_topic = new_topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let results = futures_executor::block_on(self.admin.create_topics([&new_topic], &options))
            .map_err(|error| self.error("creating", topic, None, &error))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(self.error("creating", topic, None, &KafkaError::AdminOp(code)));
                }
            }
        }
        // Metadata reaches every client a moment after the controller creates the topic.
        let deadline = Instant::now() + self.config.timeout;
        loop {
            self.partitions.lock().expect("not poisoned").remove(topic);
            match self.partitions(topic) {
                Ok(existing) if existing == partitions => {
                    // Ready once every partition's leader answers.
                    for partition in 0..partitions {
                        self.watermarks(topic, partition)?;
                    }
                    return Ok(());
                }
                Ok(existing) => {
                    return Err(LogError::TopicExists { topic: topic.to_owned(), existing, requested: partitions });
                }
                Err(LogError::UnknownTopic { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Log for KafkaLog {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.create_topic_with(topic, partitions, &[])
    }

    fn create_compacted_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.create_topic_with(topic, partitions, &[("cleanup.policy", "compact")])
    }

    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(&partitions) = self.partitions.lock().expect("not poisoned").get(topic) {
            return Ok(partitions);
        }
        let metadata = self
            .meta
            .fetch_metadata(Some(&self.name(topic)), self.config.timeout)
            .map_err(|error| self.error("reading the metadata of", topic, None, &error))?;
        let Some(found) = metadata.topics().first() else {
            return Err(LogError::UnknownTopic { topic: topic.to_owned() });
        };
        if found.error().is_some() || found.partitions().is_empty() {
            return Err(LogError::UnknownTopic { topic: topic.to_owned() });
        }
        let partitions = found.partitions().len() as u32;
        self.partitions.lock().expect("not poisoned").insert(topic.to_owned(), partitions);
        Ok(partitions)
    }

    fn append(&self, topic: &str, partition: u32, records: &RecordBatch) -> Result<OffsetRange, LogError> {
        self.append_many(topic, &[(partition, records)]).pop().expect("one result per batch")
    }

    fn append_many(&self, topic: &str, batches: &[(u32, &RecordBatch)]) -> Vec<Result<OffsetRange, LogError>> {
        let results = self.append_async(topic, batches).wait();
        results
            .into_iter()
            .zip(batches)
            .map(|(result, &(partition, records))| {
                let range = result?;
                if records.is_empty() {
                    let end = self.end_offset(topic, partition)?;
                    return Ok(OffsetRange { first: end, end });
                }
                Ok(range)
            })
            .collect()
    }

    fn append_async(&self, topic: &str, batches: &[(u32, &RecordBatch)]) -> Box<dyn AppendTicket> {
        let parts = batches
            .iter()
            .map(|&(partition, records)| {
                let sent = self.check_partition(topic, partition).and_then(|()| {
                    let pending = Pending::new(records.len());
                    if records.is_empty() {
                        return Ok(pending);
                    }
                    match self.send(&self.producer, topic, partition, records, &pending) {
                        Ok(()) => Ok(pending),
                        Err(error) => {
                            // Wait for what was handed over, so that no acknowledgement
                            // outlives the error; the records are the caller's to retry.
                            pending.wait(Instant::now() + self.config.timeout);
                            Err(error)
                        }
                    }
                });
                (partition, sent, records.len())
            })
            .collect();
        Box::new(KafkaAppend {
            brokers: self.config.brokers.clone(),
            timeout: self.config.timeout,
            topic: topic.to_owned(),
            parts,
        })
    }

    fn qualified_name(&self, topic: &str) -> String {
        self.name(topic)
    }

    fn prepare_readers(&self, topic: &str, positions: &[(u32, u64)]) {
        // Each on a thread of its own: a new consumer's set-up is round trips, not work. A
        // reader that fails here is left to `read`, which reports why.
        std::thread::scope(|scope| {
            for &(partition, offset) in positions {
                scope.spawn(move || {
                    if let Ok(reader) = self.take_reader(topic, partition, offset) {
                        self.put_reader(topic, partition, reader);
                    }
                });
            }
        });
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        out: &mut RecordBatch,
    ) -> Result<u64, LogError> {
        let mut reader = self.take_reader(topic, partition, offset)?;
        let result = self.read_with(&mut reader, topic, partition, max_records, out);
        self.put_reader(topic, partition, reader);
        result
    }

    fn wait_for(&self, topic: &str, partition: u32, offset: u64, timeout: Duration) -> Result<u64, LogError> {
        let deadline = Instant::now() + timeout;
        loop {
            let end = self.end_offset(topic, partition)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if end > offset || left.is_zero() {
                return Ok(end);
            }
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
    }

    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        Ok(self.watermarks(topic, partition)?.0)
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.check_partition(topic, partition)?;
        Ok(self.end_offsets(topic)?[partition as usize])
    }

    fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        self.end_offsets_within(topic, END_OFFSETS_FRESH_FOR)
    }

    fn commit_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError> {
        let list = self.offset_list(offsets)?;
        let consumer = self.group(group)?;
        self.retrying(|| consumer.commit(&list, CommitMode::Sync))
            .map_err(|error| self.error("committing the offsets of group", group, None, &error))
    }

    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.check_partition(topic, partition)?;
        let consumer = self.group(group)?;
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.name(topic), partition as i32);
        let committed = self
            .retrying(|| consumer.committed_offsets(list.clone(), self.config.timeout))
            .map_err(|error| self.error("reading the committed offset of", topic, Some(partition), &error))?;
        let offset = committed.find_partition(&self.name(topic), partition as i32).map(|element| element.offset());
        Ok(match offset {
            Some(Offset::Offset(offset)) if offset >= 0 => Some(offset as u64),
            _ => None,
        })
    }

    fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn LogTransaction + '_>, LogError> {
        let (producer, generation) = self.transactional_producer(transactional_id)?;
        if let Err(error) = producer.begin_transaction() {
            self.release_producer(transactional_id, generation, false);
            return Err(self.error("beginning a transaction of", transactional_id, None, &error));
        }
        Ok(Box::new(KafkaTransaction {
            log: self,
            id: transactional_id.to_owned(),
            producer,
            generation,
            pending: Vec::new(),
            offsets: Vec::new(),
            finished: false,
        }))
    }

    fn truncate_before(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        self.check_partition(topic, partition)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.name(topic), partition as i32, Offset::Offset(offset as i64))
            .map_err(|error| self.error("truncating", topic, Some(partition), &error))?;
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let result = futures_executor::block_on(self.admin.delete_records(&list, &options))
            .map_err(|error| self.error("truncating", topic, Some(partition), &error))?;
        for element in result.elements() {
            if let Err(error) = element.error() {
                return Err(self.error("truncating", topic, Some(partition), &error));
            }
        }
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        let Some(data_dir) = &self.config.data_dir else {
            return self.appended_bytes.load(Ordering::Relaxed);
        };
        // The segment files of this namespace's topic-partition folders (`<topic>-<partition>`).
        let prefix = format!("{}.", self.config.namespace);
        let Ok(entries) = std::fs::read_dir(data_dir) else {
            return self.appended_bytes.load(Ordering::Relaxed);
        };
        entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .flat_map(|entry| std::fs::read_dir(entry.path()).into_iter().flatten().flatten())
            .filter(|file| file.path().extension().is_some_and(|extension| extension == "log"))
            .filter_map(|file| file.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    }
}

/// How long a topic's end offsets are reused: the readers of a partition that find nothing
/// ask for its end, and the materialisers and idle workers of every engine would otherwise send
/// a ListOffsets request each on every pass.
const END_OFFSETS_FRESH_FOR: Duration = Duration::from_millis(5);

impl KafkaLog {
    /// The end offsets (last stable offsets) of every partition of `topic`, as asked for at
    /// most `fresh_for` ago.
    fn end_offsets_within(&self, topic: &str, fresh_for: Duration) -> Result<Vec<u64>, LogError> {
        if let Some((asked, ends)) = self.ends.lock().expect("not poisoned").get(topic)
            && asked.elapsed() < fresh_for
        {
            return Ok(ends.clone());
        }
        let partitions = self.partitions(topic)?;
        let name = self.name(topic);
        let asked = Instant::now();
        // ListOffsets for the latest offset of every partition in one request; a read-committed
        // client gets the last stable offsets.
        let mut latest = TopicPartitionList::new();
        for partition in 0..partitions {
            latest
                .add_partition_offset(&name, partition as i32, Offset::End)
                .map_err(|error| self.error("listing the end offsets of", topic, None, &error))?;
        }
        let deadline = asked + self.config.timeout;
        let answer = loop {
            match self.meta.offsets_for_times(latest.clone(), self.config.timeout) {
                Ok(answer) => break answer,
                Err(error) if error.rdkafka_error_code().is_some_and(retriable) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(self.error("reading the end offsets of", topic, None, &error)),
            }
        };
        let mut ends = vec![0; partitions as usize];
        for element in answer.elements() {
            if let Err(error) = element.error() {
                return Err(self.error("reading the end offset of", topic, Some(element.partition() as u32), &error));
            }
            if let (Offset::Offset(end), Some(slot)) = (element.offset(), ends.get_mut(element.partition() as usize)) {
                *slot = end.max(0) as u64;
            }
        }
        self.ends.lock().expect("not poisoned").insert(topic.to_owned(), (asked, ends.clone()));
        Ok(ends)
    }

    fn not_visible(&self, topic: &str, partition: u32) -> LogError {
        LogError::Backend {
            message: format!(
                "Kafka at {}: a committed transaction's markers did not reach {topic}/{partition} within {}s",
                self.config.brokers,
                self.config.timeout.as_secs()
            ),
            retriable: false,
        }
    }

    fn offset_list(&self, offsets: &[(TopicPartition, u64)]) -> Result<TopicPartitionList, LogError> {
        let mut list = TopicPartitionList::new();
        for (position, offset) in offsets {
            self.check_partition(&position.topic, position.partition)?;
            list.add_partition_offset(
                &self.name(&position.topic),
                position.partition as i32,
                Offset::Offset(*offset as i64),
            )
            .map_err(|error| self.error("listing the offset of", &position.topic, Some(position.partition), &error))?;
        }
        Ok(list)
    }

    /// Moves a reader past transaction markers and aborted records, which the consumer skips
    /// without returning them: its position is past them.
    fn step_over_markers(&self, reader: &mut Reader, topic: &str, partition: u32) {
        if let Ok(position) = reader.consumer.position()
            && let Some(Offset::Offset(at)) =
                position.find_partition(&self.name(topic), partition as i32).map(|element| element.offset())
            && at as u64 > reader.next
        {
            reader.next = at as u64;
        }
    }

    fn read_with(
        &self,
        reader: &mut Reader,
        topic: &str,
        partition: u32,
        max_records: usize,
        out: &mut RecordBatch,
    ) -> Result<u64, LogError> {
        let mut read = 0;
        // Empty-handed, a reader waits only while the partition's end (its last stable offset)
        // says records are there: they are being fetched, or they are transaction markers and
        // aborted records that the consumer's position steps over.
        let deadline = Instant::now() + self.config.timeout;
        let mut end: Option<u64> = None;
        while read < max_records {
            let waiting = read == 0 && end.is_some_and(|end| reader.next < end) && Instant::now() < deadline;
            match reader.consumer.poll(if waiting { Duration::from_millis(5) } else { Duration::ZERO }) {
                Some(Ok(message)) => {
                    if message.offset() < reader.next as i64 {
                        // Fetched for an earlier position of this consumer.
                        continue;
                    }
                    let key = match message.key() {
                        Some(bytes) if bytes.len() == 8 => u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                        _ => 0,
                    };
                    out.push(key, message.payload().unwrap_or_default());
                    reader.next = message.offset() as u64 + 1;
                    read += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                // What a consumer says while brokers come and go (all brokers down, a transport
                // failure, a leader moving) it recovers from by itself: it tells, it does not
                // fail. A broker that stays away fails the end offsets' request below instead.
                Some(Err(error)) if error.rdkafka_error_code().is_some_and(retriable) => {}
                Some(Err(error)) => {
                    if matches!(
                        error.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
                    ) {
                        let (start, end) = self.watermarks(topic, partition)?;
                        return Err(LogError::OffsetOutOfRange {
                            topic: topic.to_owned(),
                            partition,
                            offset: reader.next,
                            start,
                            end,
                        });
                    }
                    return Err(self.error("reading", topic, Some(partition), &error));
                }
                None if read > 0 => break,
                None => {
                    self.step_over_markers(reader, topic, partition);
                    let known = match end {
                        Some(end) => end,
                        None => {
                            let fresh = self.end_offset(topic, partition)?;
                            end = Some(fresh);
                            fresh
                        }
                    };
                    if reader.next >= known || Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        Ok(reader.next)
    }
}

/// Where lk and its Kafka tests find a broker, from the environment; `None` if nothing says:
/// - `LK_KAFKA_BROKERS=host:port[,...]`: a running cluster (`scripts/kafka up` prints it;
///   `.ci/run` sets it);
/// - `LK_KAFKA=testcontainers`: a broker in a container, started with the testcontainers crate
///   (build with `--features testcontainers`; needs a Docker engine). The container is named
///   `lk-kafka` and reused by every process that asks (the test binaries, `lk run`), as
///   `scripts/kafka up`'s broker is; `docker rm -f lk-kafka` removes it.
pub fn brokers_from_env() -> Result<Option<String>, LogError> {
    if let Some(brokers) = std::env::var("LK_KAFKA_BROKERS").ok().filter(|brokers| !brokers.trim().is_empty()) {
        return Ok(Some(brokers));
    }
    match std::env::var("LK_KAFKA").ok().as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("testcontainers") => container::brokers().map(Some),
        Some(other) => Err(LogError::Backend {
            message: format!(
                "LK_KAFKA={other:?}: the one value lk knows is `testcontainers` (a broker in a Docker container); \
                 for a running cluster set LK_KAFKA_BROKERS=host:port instead"
            ),
            retriable: false,
        }),
    }
}

/// `LK_KAFKA=testcontainers`: Apache Kafka (KRaft, one node) in a container.
#[cfg(feature = "testcontainers")]
mod container {
    use std::sync::OnceLock;

    use testcontainers::runners::SyncRunner;
    use testcontainers::{ImageExt, ReuseDirective};
    use testcontainers_modules::kafka::apache;

    use crate::log::LogError;

    /// The container's bootstrap address, once per process; the container is kept running
    /// for the next process (reuse), so its handle is not kept here.
    static BROKERS: OnceLock<Result<String, String>> = OnceLock::new();

    pub(super) fn brokers() -> Result<String, LogError> {
        let started = BROKERS.get_or_init(|| {
            let failed = |what: &str, error: &dyn std::fmt::Display| {
                format!("LK_KAFKA=testcontainers: {what}: {error}; is a Docker engine running? (or start a broker with scripts/kafka up and set LK_KAFKA_BROKERS)")
            };
            let node = apache::Kafka::default()
                .with_container_name("lk-kafka")
                .with_reuse(ReuseDirective::Always)
                .start()
                .map_err(|error| failed("starting Kafka in a container", &error))?;
            let port = node
                .get_host_port_ipv4(apache::KAFKA_PORT)
                .map_err(|error| failed("finding the container's Kafka port", &error))?;
            // Dropping the handle of a container marked for reuse leaves it running.
            drop(node);
            Ok(format!("127.0.0.1:{port}"))
        });
        started.clone().map_err(|message| LogError::Backend { message, retriable: false })
    }
}

/// Without the `testcontainers` feature, `LK_KAFKA=testcontainers` says how to get it.
#[cfg(not(feature = "testcontainers"))]
mod container {
    use crate::log::LogError;

    pub(super) fn brokers() -> Result<String, LogError> {
        Err(LogError::Backend {
            message: "LK_KAFKA=testcontainers: this lk was built without the testcontainers feature; build it with \
                      `cargo build --release --features testcontainers` (needs a Docker engine to run), or start a \
                      broker with scripts/kafka up and set LK_KAFKA_BROKERS=127.0.0.1:9092"
                .to_owned(),
            retriable: false,
        })
    }
}

/// Waits for an append's acknowledgements: its offsets, or why it failed.
fn finish_append(
    brokers: &str,
    timeout: Duration,
    topic: &str,
    partition: u32,
    pending: &Pending,
    records: usize,
) -> Result<OffsetRange, LogError> {
    let left = pending.wait(Instant::now() + timeout + Duration::from_secs(5));
    if let Some((code, message)) = pending.error.lock().expect("not poisoned").take() {
        return Err(LogError::Backend {
            message: format!("Kafka at {brokers}: appending to {topic}/{partition}: {message}"),
            retriable: retriable(code),
        });
    }
    if left > 0 {
        return Err(LogError::Backend {
            message: format!(
                "Kafka at {brokers}: appending to {topic}/{partition}: {left} of {records} records unacknowledged after {}s",
                timeout.as_secs()
            ),
            retriable: true,
        });
    }
    let first = pending.first.load(Ordering::Acquire) as u64;
    let last = pending.last.load(Ordering::Acquire) as u64;
    Ok(OffsetRange { first, end: last + 1 })
}

/// Appends handed to librdkafka, waiting for their acknowledgements.
struct KafkaAppend {
    brokers: String,
    timeout: Duration,
    topic: String,
    parts: Vec<(u32, Result<Arc<Pending>, LogError>, usize)>,
}

impl AppendTicket for KafkaAppend {
    fn is_done(&self) -> bool {
        self.parts
            .iter()
            .all(|(_, sent, _)| sent.as_ref().map_or(true, |pending| pending.remaining.load(Ordering::Acquire) == 0))
    }

    fn wait(self: Box<Self>) -> Vec<Result<OffsetRange, LogError>> {
        let KafkaAppend { brokers, timeout, topic, parts } = *self;
        parts
            .into_iter()
            .map(|(partition, sent, records)| {
                let pending = sent?;
                if records == 0 {
                    return Ok(OffsetRange { first: 0, end: 0 });
                }
                finish_append(&brokers, timeout, &topic, partition, &pending, records)
            })
            .collect()
    }
}

/// Deletes the topics that lk created in `namespace` on the cluster at `brokers` (those its
/// manifest records, never a topic by prefix alone), and the manifest; returns how many topics.
pub fn delete_namespace(brokers: &str, namespace: &str, timeout: Duration) -> Result<usize, LogError> {
    let mut config = KafkaConfig::new(brokers, namespace);
    config.timeout = timeout;
    KafkaLog::connect(config)?.delete_topics()
}

/// An open Kafka transaction.
struct KafkaTransaction<'a> {
    log: &'a KafkaLog,
    id: String,
    producer: Arc<LkProducer>,
    generation: u64,
    /// Each partition's records, in the order first appended to.
    pending: Vec<(TopicPartition, Arc<Pending>, usize)>,
    /// The offset commits sent to the transaction.
    offsets: Vec<(String, TopicPartition, u64)>,
    finished: bool,
}

impl KafkaTransaction<'_> {
    fn fail(&mut self, operation: &str, error: &KafkaError) -> LogError {
        let abortable = matches!(error, KafkaError::Transaction(inner) if inner.txn_requires_abort());
        let sound = abortable && self.producer.abort_transaction(self.log.config.timeout).is_ok();
        self.log.release_producer(&self.id, self.generation, sound);
        self.finished = true;
        let mut failure = self.log.error(operation, &self.id, None, error);
        if let LogError::Backend { retriable, .. } = &mut failure {
            // The transaction is gone either way; a new one may succeed unless this producer
            // was fenced by a newer one with the same id.
            *retriable = !matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
            );
        }
        failure
    }
}

impl KafkaTransaction<'_> {
    /// Waits until each partition's last stable offset has passed the transaction's records:
    /// the broker writes the commit or abort markers after it answers the commit, and lk's
    /// contract is that a committed transaction is visible when `commit` returns.
    fn await_markers(&self, ranges: &[(TopicPartition, OffsetRange)]) -> Result<(), LogError> {
        let deadline = Instant::now() + self.log.config.timeout;
        for (position, range) in ranges {
            // Asked afresh: the markers land within a round trip or two of the commit, and the
            // next transaction waits for this one.
            while self.log.end_offsets_within(&position.topic, Duration::ZERO)?[position.partition as usize] < range.end
            {
                if Instant::now() >= deadline {
                    return Err(self.log.not_visible(&position.topic, position.partition));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }
}

impl KafkaTransaction<'_> {
    /// Waits until the broker has acknowledged every record of the transaction and librdkafka
    /// holds none, so that `commit_transaction` goes straight to EndTxn.
    ///
    /// rdkafka's `commit_transaction` flushes first, and its flush, while anything is
    /// outstanding, polls the producer's event queue for up to 100 ms at a time. A
    /// `ThreadedProducer`'s own thread serves that queue, so the poll always sat out its 100 ms:
    /// every commit took 100 ms more than its round trips, and at a 100 ms commit interval the
    /// worker waited for it (docs/decisions/0011-kafka-exactly-once-latency.md). Here the
    /// acknowledgements are awaited on the append's own counters, then `flush` with a zero
    /// timeout (which only asks librdkafka to send at once, linger or not) is repeated until
    /// nothing is left.
    fn acknowledged(&self) -> KafkaResult<()> {
        let deadline = Instant::now() + self.log.config.timeout;
        // Sends what lingers at once (a flush's only effect when it does not wait).
        let _ = self.producer.flush(Duration::ZERO);
        for (_, pending, _) in &self.pending {
            pending.wait(deadline);
        }
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(code))
                    if code == RDKafkaErrorCode::OperationTimedOut && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl LogTransaction for KafkaTransaction<'_> {
    fn append(&mut self, topic: &str, partition: u32, records: &RecordBatch) -> Result<(), LogError> {
        self.log.check_partition(topic, partition)?;
        if records.is_empty() {
            return Ok(());
        }
        let pending = Pending::new(records.len());
        self.log.send(&self.producer, topic, partition, records, &pending)?;
        self.pending.push((TopicPartition { topic: topic.to_owned(), partition }, pending, records.len()));
        Ok(())
    }

    fn commit_offsets(&mut self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError> {
        let list = self.log.offset_list(offsets)?;
        let metadata = self.log.group(group)?.group_metadata().ok_or_else(|| LogError::Backend {
            message: format!("Kafka at {}: no group metadata for group {group}", self.log.config.brokers),
            retriable: false,
        })?;
        // Guarded: this call has been seen to hang past its timeout in recent librdkafka.
        let timeout = self.log.config.timeout;
        let producer = Arc::clone(&self.producer);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lk-kafka-offsets".into())
            .spawn(move || {
                let _ = sender.send(producer.send_offsets_to_transaction(&list, &metadata, timeout));
            })
            .map_err(|cause| LogError::Io { path: "thread".into(), cause })?;
        match receiver.recv_timeout(timeout + Duration::from_secs(5)) {
            Ok(Ok(())) => {
                self.offsets
                    .extend(offsets.iter().map(|(position, offset)| (group.to_owned(), position.clone(), *offset)));
                Ok(())
            }
            Ok(Err(error)) => Err(self.fail("sending offsets to the transaction of", &error)),
            Err(_) => {
                // Hung: this producer's state is unknown. Drop it; the next transaction with
                // this id builds a new one, which fences this one.
                self.log.release_producer(&self.id, self.generation, false);
                self.finished = true;
                Err(LogError::Backend {
                    message: format!(
                        "Kafka at {}: sending offsets to the transaction of {} did not return in {}s; the \
                         transaction is abandoned and its producer replaced",
                        self.log.config.brokers,
                        self.id,
                        timeout.as_secs()
                    ),
                    retriable: true,
                })
            }
        }
    }

    fn commit(mut self: Box<Self>) -> Result<Vec<(TopicPartition, OffsetRange)>, LogError> {
        if self.finished {
            return Err(LogError::Backend {
                message: format!("the transaction of {} already failed; begin a new one", self.id),
                retriable: true,
            });
        }
        if let Err(error) = self.acknowledged() {
            return Err(self.fail("flushing the transaction of", &error));
        }
        if let Err(error) = self.producer.commit_transaction(self.log.config.timeout) {
            return Err(self.fail("committing the transaction of", &error));
        }
        self.finished = true;
        self.log.release_producer(&self.id, self.generation, true);
        let mut ranges: Vec<(TopicPartition, OffsetRange)> = Vec::new();
        for (position, pending, records) in &self.pending {
            let range = self.log.finish_append(&position.topic, position.partition, pending, *records)?;
            match ranges.iter_mut().find(|(seen, _)| seen == position) {
                Some((_, existing)) => {
                    existing.first = existing.first.min(range.first);
                    existing.end = existing.end.max(range.end);
                }
                None => ranges.push((position.clone(), range)),
            }
        }
        self.await_markers(&ranges)?;
        // Likewise the offsets: the group's offsets become the committed ones with its marker.
        let deadline = Instant::now() + self.log.config.timeout;
        let mut groups: Vec<&str> = self.offsets.iter().map(|(group, _, _)| group.as_str()).collect();
        groups.dedup();
        for group in groups {
            let expected: Vec<&(String, TopicPartition, u64)> =
                self.offsets.iter().filter(|(owner, _, _)| owner == group).collect();
            let mut list = TopicPartitionList::new();
            for (_, position, _) in &expected {
                list.add_partition(&self.log.name(&position.topic), position.partition as i32);
            }
            let consumer = self.log.group(group)?;
            loop {
                let committed = self
                    .log
                    .retrying(|| consumer.committed_offsets(list.clone(), self.log.config.timeout))
                    .map_err(|error| self.log.error("reading the committed offsets of group", group, None, &error))?;
                let visible = expected.iter().all(|(_, position, offset)| {
                    committed
                        .find_partition(&self.log.name(&position.topic), position.partition as i32)
                        .is_some_and(|element| element.offset() == Offset::Offset(*offset as i64))
                });
                if visible {
                    break;
                }
                if Instant::now() >= deadline {
                    let (_, position, _) = expected[0];
                    return Err(self.log.not_visible(&position.topic, position.partition));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(ranges)
    }

    fn abort(mut self: Box<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let sound = self.producer.abort_transaction(self.log.config.timeout).is_ok();
        self.log.release_producer(&self.id, self.generation, sound);
        // Readers stop at the aborted records until the abort marker is written.
        let ranges: Vec<(TopicPartition, OffsetRange)> = self
            .pending
            .iter()
            .filter_map(|(position, pending, _)| {
                let last = pending.last.load(Ordering::Acquire);
                (last >= 0).then(|| (position.clone(), OffsetRange { first: 0, end: last as u64 + 1 }))
            })
            .collect();
        if sound {
            let _ = self.await_markers(&ranges);
        }
    }
}

impl Drop for KafkaTransaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let sound = self.producer.abort_transaction(self.log.config.timeout).is_ok();
            self.log.release_producer(&self.id, self.generation, sound);
        }
    }
}
