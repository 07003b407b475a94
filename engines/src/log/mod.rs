//! The log seam: Kafka's semantics, behind a trait, because Kappa is defined by its log and the
//! real Kafka backend comes through the same trait.
//!
//! Topics have partitions; records carry a key and a value; appends are batched and return
//! offsets; reads start at any retained offset; consumer groups commit offsets; retention drops
//! the oldest data; transactions make appends across partitions and an offset commit visible
//! atomically, and readers (always read-committed here) never see aborted or in-flight records.
//!
//! **API Boundary:** records are opaque bytes. The log never decodes events; engines do.

pub mod client_properties;
pub mod contract;
pub mod embedded;
pub mod kafka;
mod segment_writer;

use std::time::Duration;

/// Why a log operation failed. Each says what, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The topic does not exist.
    #[error("topic `{topic}` does not exist; create it first")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The topic exists with another partition count.
    #[error("topic `{topic}` already exists with {existing} partitions, not {requested}")]
    TopicExists {
        /// The topic.
        topic: String,
        /// Its partitions.
        existing: u32,
        /// What was asked for.
        requested: u32,
    },
    /// The partition is not one of the topic's.
    #[error("topic `{topic}` has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// The offset was deleted by retention, or is beyond the end.
    #[error("offset {offset} of {topic}/{partition} is out of range (retained: {start}..{end})")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// First retained offset.
        start: u64,
        /// End offset (next to be written).
        end: u64,
    },
    /// Stored data could not be read back as written.
    #[error("{path}: {problem}; the rest of the log is intact, and deleting this file drops only its records")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The storage failed.
    #[error("log storage at {path}: {cause}")]
    Io {
        /// Where.
        path: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The backend is unreachable or failed (a broker that is down, a timeout).
    #[error("log backend: {message}")]
    Backend {
        /// What happened and what to do.
        message: String,
        /// Whether retrying may succeed.
        retriable: bool,
    },
}

impl LogError {
    /// Whether retrying the same operation may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, LogError::Backend { retriable: true, .. })
    }
}

/// A batch of records: keys and values, values stored back to back in one buffer so that a batch
/// of thousands costs a handful of allocations, reused across batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordBatch {
    keys: Vec<u64>,
    ends: Vec<u32>,
    data: Vec<u8>,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a record.
    #[inline]
    pub fn push(&mut self, key: u64, value: &[u8]) {
        self.data.extend_from_slice(value);
        self.keys.push(key);
        self.ends.push(u32::try_from(self.data.len()).expect("a batch holds under 4 GiB"));
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Payload bytes in the batch.
    pub fn value_bytes(&self) -> usize {
        self.data.len()
    }

    /// Keeps the first `records` records.
    pub fn truncate(&mut self, records: usize) {
        if records >= self.len() {
            return;
        }
        self.keys.truncate(records);
        self.ends.truncate(records);
        self.data.truncate(self.ends.last().map_or(0, |&end| end as usize));
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.ends.clear();
        self.data.clear();
    }

    /// The record at `index`.
    #[inline]
    pub fn get(&self, index: usize) -> (u64, &[u8]) {
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize };
        (self.keys[index], &self.data[start..self.ends[index] as usize])
    }

    /// The records in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Appends records given as columns: keys, value lengths, and the values back to back (whose
    /// total length the caller has checked against the lengths).
    pub fn extend_from_columns(
        &mut self,
        keys: impl Iterator<Item = u64>,
        lengths: impl Iterator<Item = u32>,
        values: &[u8],
    ) {
        let before = self.keys.len();
        let mut end = u32::try_from(self.data.len()).expect("a batch holds under 4 GiB");
        self.keys.extend(keys);
        self.ends.extend(lengths.map(|length| {
            end += length;
            end
        }));
        self.data.extend_from_slice(values);
        assert_eq!(self.keys.len(), self.ends.len(), "as many keys as lengths");
        assert_eq!(end as usize, self.data.len(), "the lengths add up to the values");
        debug_assert!(self.keys.len() >= before);
    }

    /// The keys, in order.
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// Every value, back to back.
    pub fn values(&self) -> &[u8] {
        &self.data
    }

    /// Appends records `range` of `other`, copying each column in one piece.
    pub fn extend_from_range(&mut self, other: &RecordBatch, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        let data_start = if range.start == 0 { 0 } else { other.ends[range.start - 1] };
        let data_end = other.ends[range.end - 1];
        let base = u32::try_from(self.data.len()).expect("a batch holds under 4 GiB");
        self.data.extend_from_slice(&other.data[data_start as usize..data_end as usize]);
        self.keys.extend_from_slice(&other.keys[range.clone()]);
        self.ends.extend(other.ends[range].iter().map(|end| end - data_start + base));
    }

    /// Reserves room for `records` more records of `bytes` payload in all.
    pub fn reserve(&mut self, records: usize, bytes: usize) {
        self.keys.reserve(records);
        self.ends.reserve(records);
        self.data.reserve(bytes);
    }

    /// Appends every record of `other`.
    pub fn extend_from(&mut self, other: &RecordBatch) {
        let base = u32::try_from(self.data.len()).expect("a batch holds under 4 GiB");
        self.data.extend_from_slice(&other.data);
        self.keys.extend_from_slice(&other.keys);
        self.ends.extend(other.ends.iter().map(|end| end + base));
    }
}

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

/// The range of offsets an append was given: `first..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    /// Offset of the first record appended.
    pub first: u64,
    /// One past the last.
    pub end: u64,
}

/// A log with Kafka's semantics. Implementations: [`crate::log::embedded::EmbeddedLog`] (the
/// default) and [`crate::log::kafka::KafkaLog`]. Every implementation passes the contract suite in
/// [`crate::log::contract`].
pub trait Log: Send + Sync {
    /// A short name for results: `embedded` or `kafka`.
    fn backend(&self) -> &'static str;

    /// Creates a topic; creating it again with the same partition count is a no-op.
    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError>;

    /// Creates a compacted topic: the log may drop a record once a later record has its key.
    /// The embedded log keeps every record (it compacts nothing); readers of such a topic must
    /// take the last record of each key as its value either way.
    fn create_compacted_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.create_topic(topic, partitions)
    }

    /// The topic's partition count.
    fn partitions(&self, topic: &str) -> Result<u32, LogError>;

    /// The name a client outside lk gives `topic` (Kafka: with the run's namespace).
    fn qualified_name(&self, topic: &str) -> String {
        topic.to_owned()
    }

    /// Appends a batch to one partition; the records become visible together.
    fn append(&self, topic: &str, partition: u32, records: &RecordBatch) -> Result<OffsetRange, LogError>;

    /// Appends several partitions' batches, one result per batch. Backends that pay a round
    /// trip per append (Kafka) send every batch before waiting for any.
    fn append_many(&self, topic: &str, batches: &[(u32, &RecordBatch)]) -> Vec<Result<OffsetRange, LogError>> {
        batches.iter().map(|&(partition, records)| self.append(topic, partition, records)).collect()
    }

    /// Hands several partitions' batches to the log and returns without waiting for them to be
    /// stored; the ticket waits. A producer keeps a few tickets in flight so that a backend with
    /// a network round trip per append (Kafka) is never idle between appends. The default
    /// appends at once.
    fn append_async(&self, topic: &str, batches: &[(u32, &RecordBatch)]) -> Box<dyn AppendTicket> {
        Box::new(Appended(self.append_many(topic, batches)))
    }

    /// Readies readers of `topic` at these (partition, offset) positions, all at once, for a
    /// job about to read from there: a restarted engine reads every partition it owns from its
    /// checkpoint, and a backend whose reader costs a connection and round trips (Kafka) would
    /// otherwise set them up one after another while the input waits. The default does nothing.
    fn prepare_readers(&self, _topic: &str, _positions: &[(u32, u64)]) {}

    /// Appends up to `max_records` committed records from `offset` on to `out` and returns the
    /// offset after the last one read (equal to `offset` when there is nothing new).
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        out: &mut RecordBatch,
    ) -> Result<u64, LogError>;

    /// Blocks until the partition's end offset passes `offset` or `timeout` elapses; returns the
    /// end offset.
    fn wait_for(&self, topic: &str, partition: u32, offset: u64, timeout: Duration) -> Result<u64, LogError>;

    /// The first retained offset.
    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// The offset the next record will get (the committed end).
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// Every partition's end offset, in partition order; one request where the backend has
    /// one for all.
    fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        (0..self.partitions(topic)?).map(|partition| self.end_offset(topic, partition)).collect()
    }

    /// Commits a consumer group's offsets (the next offset to read, per partition).
    fn commit_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError>;

    /// A consumer group's committed offset, if it has one.
    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError>;

    /// Starts a transaction. A transaction with the same id that is still open is aborted
    /// (fencing a zombie producer).
    fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn LogTransaction + '_>, LogError>;

    /// Drops records before `offset` (or the whole segments before it) from the partition.
    fn truncate_before(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError>;

    /// Bytes the log holds on its storage.
    fn stored_bytes(&self) -> u64;

    /// What the log found wrong with its storage so far (records it could not read back), one
    /// line each with the file and offsets; empty where the backend reports nothing of the kind.
    fn damage(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Appends in flight: [`Log::append_async`]'s answer.
pub trait AppendTicket: Send {
    /// Whether [`AppendTicket::wait`] would return at once.
    fn is_done(&self) -> bool;
    /// Waits for the appends: one result per batch, in the order given.
    fn wait(self: Box<Self>) -> Vec<Result<OffsetRange, LogError>>;
}

/// Appends already done (the ticket of a log that appends at once).
pub struct Appended(pub Vec<Result<OffsetRange, LogError>>);

impl AppendTicket for Appended {
    fn is_done(&self) -> bool {
        true
    }

    fn wait(self: Box<Self>) -> Vec<Result<OffsetRange, LogError>> {
        self.0
    }
}

/// An open transaction: nothing it holds is visible to readers until `commit`.
pub trait LogTransaction {
    /// Adds records to one partition, in order.
    fn append(&mut self, topic: &str, partition: u32, records: &RecordBatch) -> Result<(), LogError>;
    /// Adds a consumer-group offset commit.
    fn commit_offsets(&mut self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError>;
    /// Makes every append and offset commit visible, atomically; returns each partition's
    /// offset range, in the order first appended to.
    fn commit(self: Box<Self>) -> Result<Vec<(TopicPartition, OffsetRange)>, LogError>;
    /// Discards everything.
    fn abort(self: Box<Self>);
}

/// The partition of a key: the key modulo the partition count. Stable across runs and backends
/// (lk chooses partitions itself, so both backends place every record in the same partition),
/// and it keeps each partition's driver ids on a regular stride, which lets engines index
/// per-driver state directly instead of hashing ([`crate::runtime::idmap::IdMap`]).
#[inline]
pub fn partition_of(key: u64, partitions: u32) -> u32 {
    (key % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_records_in_order() {
        let mut batch = RecordBatch::new();
        batch.push(1, b"one");
        batch.push(2, b"");
        batch.push(3, b"three");
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![(1, &b"one"[..]), (2, &b""[..]), (3, &b"three"[..])]);
        let mut other = RecordBatch::new();
        other.push(9, b"x");
        other.extend_from(&batch);
        assert_eq!(other.get(3), (3, &b"three"[..]));
        assert_eq!(other.value_bytes(), 9);
    }

    #[test]
    fn partitions_spread_keys() {
        let mut counts = [0u32; 8];
        for key in (0..80_000).map(|index| index * 8 + index % 8 + 1) {
            counts[partition_of(key, 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&count| (9_000..11_000).contains(&count)), "{counts:?}");
    }
}
