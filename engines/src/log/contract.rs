//! The `Log` contract, written once and run against every implementation (the embedded log in
//! this crate's tests; the Kafka backend runs the same suite against a real broker).
//!
//! Each check takes a fresh log from the factory and panics with a message naming the broken
//! promise.

#![allow(clippy::disallowed_methods, reason = "the contract bounds its waits with wall-clock deadlines")]

use std::time::{Duration, Instant};

use crate::log::{Log, LogError, RecordBatch, TopicPartition};

fn batch(keys: std::ops::Range<u64>) -> RecordBatch {
    let mut batch = RecordBatch::new();
    for key in keys {
        batch.push(key, format!("value-{key}").as_bytes());
    }
    batch
}

fn read_all(log: &dyn Log, topic: &str, partition: u32, from: u64) -> Vec<u64> {
    let mut out = RecordBatch::new();
    let mut offset = from;
    loop {
        let next = log.read(topic, partition, offset, 1000, &mut out).expect("read");
        if next == offset {
            break;
        }
        offset = next;
    }
    out.iter()
        .map(|(key, value)| {
            assert_eq!(value, format!("value-{key}").as_bytes(), "a record's value came back changed");
            key
        })
        .collect()
}

fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition { topic: topic.to_owned(), partition }
}

/// Runs every check, each on a fresh log from `fresh`.
pub fn run_all<L: Log, G>(fresh: impl Fn() -> (L, G)) {
    topics(&fresh);
    appends_and_reads(&fresh);
    consumer_groups(&fresh);
    transactions(&fresh);
    retention(&fresh);
    waiting(&fresh);
    volume(&fresh);
}

/// Topics: creation is idempotent, conflicts and unknown names are errors.
pub fn topics<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("rides", 4).expect("create");
    log.create_topic("rides", 4).expect("creating again with the same partitions is a no-op");
    assert!(matches!(log.create_topic("rides", 3), Err(LogError::TopicExists { existing: 4, .. })));
    assert_eq!(log.partitions("rides").unwrap(), 4);
    assert!(matches!(log.partitions("nope"), Err(LogError::UnknownTopic { .. })));
    assert!(matches!(log.append("rides", 4, &batch(0..1)), Err(LogError::UnknownPartition { partitions: 4, .. })));
}

/// Appends get consecutive offsets; reads return records in order from any offset.
pub fn appends_and_reads<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("t", 2).unwrap();
    let first = log.append("t", 0, &batch(0..10)).unwrap();
    assert_eq!((first.first, first.end), (0, 10));
    let second = log.append("t", 0, &batch(10..15)).unwrap();
    assert_eq!((second.first, second.end), (10, 15), "offsets continue where the last append ended");
    assert_eq!(log.end_offset("t", 0).unwrap(), 15);
    assert_eq!(log.end_offset("t", 1).unwrap(), 0, "partitions are independent");
    assert_eq!(read_all(&log, "t", 0, 0), (0..15).collect::<Vec<_>>());
    assert_eq!(read_all(&log, "t", 0, 7), (7..15).collect::<Vec<_>>());
    let mut out = RecordBatch::new();
    assert_eq!(log.read("t", 0, 3, 4, &mut out).unwrap(), 7, "max_records bounds a read");
    assert_eq!(out.len(), 4);
    assert_eq!(log.read("t", 0, 15, 10, &mut out).unwrap(), 15, "reading at the end returns nothing");
    assert!(matches!(log.read("t", 0, 16, 10, &mut out), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(log.append("t", 1, &RecordBatch::new()).unwrap().end, 0, "an empty append is allowed");
}

/// Consumer groups keep their own committed offsets.
pub fn consumer_groups<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("t", 2).unwrap();
    log.append("t", 0, &batch(0..5)).unwrap();
    assert_eq!(log.committed_offset("kappa", "t", 0).unwrap(), None);
    log.commit_offsets("kappa", &[(tp("t", 0), 3), (tp("t", 1), 0)]).unwrap();
    log.commit_offsets("lambda", &[(tp("t", 0), 5)]).unwrap();
    assert_eq!(log.committed_offset("kappa", "t", 0).unwrap(), Some(3));
    assert_eq!(log.committed_offset("kappa", "t", 1).unwrap(), Some(0));
    assert_eq!(log.committed_offset("lambda", "t", 0).unwrap(), Some(5));
    assert!(log.commit_offsets("kappa", &[(tp("nope", 0), 1)]).is_err(), "committing for an unknown topic fails");
}

/// Transactions: nothing is visible before commit, everything after, nothing after abort, and a
/// newer producer with the same id fences the older one.
pub fn transactions<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("in", 1).unwrap();
    log.create_topic("out", 2).unwrap();
    log.append("in", 0, &batch(0..4)).unwrap();

    let mut transaction = log.begin_transaction("engine-0").unwrap();
    transaction.append("out", 0, &batch(100..103)).unwrap();
    transaction.append("out", 1, &batch(200..202)).unwrap();
    transaction.commit_offsets("kappa", &[(tp("in", 0), 4)]).unwrap();
    assert_eq!(log.end_offset("out", 0).unwrap(), 0, "in-flight records are invisible");
    assert_eq!(log.committed_offset("kappa", "in", 0).unwrap(), None, "in-flight offset commits are invisible");
    let ranges = transaction.commit().unwrap();
    assert_eq!(ranges.len(), 2);
    assert_eq!(read_all(&log, "out", 0, 0), vec![100, 101, 102]);
    assert_eq!(read_all(&log, "out", 1, 0), vec![200, 201]);
    assert_eq!(log.committed_offset("kappa", "in", 0).unwrap(), Some(4), "offsets commit with the records");

    let mut aborted = log.begin_transaction("engine-0").unwrap();
    aborted.append("out", 0, &batch(900..910)).unwrap();
    aborted.commit_offsets("kappa", &[(tp("in", 0), 1)]).unwrap();
    aborted.abort();
    assert_eq!(read_all(&log, "out", 0, 0), vec![100, 101, 102], "aborted records are never seen");
    assert_eq!(log.committed_offset("kappa", "in", 0).unwrap(), Some(4), "aborted offset commits are never seen");

    let mut zombie = log.begin_transaction("engine-1").unwrap();
    zombie.append("out", 1, &batch(300..301)).unwrap();
    let mut successor = log.begin_transaction("engine-1").unwrap();
    successor.append("out", 1, &batch(400..401)).unwrap();
    assert!(zombie.commit().is_err(), "a fenced producer cannot commit");
    successor.commit().unwrap();
    assert_eq!(read_all(&log, "out", 1, 0), vec![200, 201, 400]);
}

/// Retention: truncated offsets are out of range, later ones still readable.
pub fn retention<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("t", 1).unwrap();
    for start in (0..100).step_by(10) {
        log.append("t", 0, &batch(start..start + 10)).unwrap();
    }
    log.truncate_before("t", 0, 50).unwrap();
    let start = log.start_offset("t", 0).unwrap();
    assert_eq!(start, 50, "the start offset moves to the truncation point");
    let mut out = RecordBatch::new();
    assert!(matches!(log.read("t", 0, 0, 10, &mut out), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(read_all(&log, "t", 0, 50), (50..100).collect::<Vec<_>>());
}

/// `wait_for` wakes on an append and times out without one.
pub fn waiting<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("t", 1).unwrap();
    let started = Instant::now();
    assert_eq!(log.wait_for("t", 0, 0, Duration::from_millis(50)).unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(40), "wait_for returned before its timeout");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            log.append("t", 0, &batch(0..1)).unwrap();
        });
        assert_eq!(log.wait_for("t", 0, 0, Duration::from_secs(10)).unwrap(), 1);
    });
}

/// Many batches across many partitions come back exactly.
pub fn volume<L: Log, G>(fresh: &impl Fn() -> (L, G)) {
    let (log, _guard) = fresh();
    log.create_topic("t", 3).unwrap();
    let mut expected: Vec<Vec<u64>> = vec![Vec::new(); 3];
    for round in 0..200u64 {
        let partition = (round % 3) as u32;
        let keys = round * 500..round * 500 + 500;
        expected[partition as usize].extend(keys.clone());
        log.append("t", partition, &batch(keys)).unwrap();
    }
    for partition in 0..3 {
        assert_eq!(read_all(&log, "t", partition, 0), expected[partition as usize]);
    }
    assert!(log.stored_bytes() > 100_000 * 10, "the log accounts for what it stores");
}
