//! The `Log` contract against the embedded log, plus what only the embedded log promises:
//! recovery from its files and bounded memory.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks time themselves with the wall clock")]

use std::fs::OpenOptions;
use std::io::Write;

use lk_engines::log::contract;
use lk_engines::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use lk_engines::log::{Log, RecordBatch, TopicPartition};

fn small_segments() -> EmbeddedLogConfig {
    EmbeddedLogConfig { segment_bytes: 4096, memory_segments: 1, ..EmbeddedLogConfig::default() }
}

#[test]
fn the_embedded_log_keeps_the_contract() {
    contract::run_all(|| {
        let directory = tempfile::tempdir().unwrap();
        (EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap(), directory)
    });
}

#[test]
fn the_embedded_log_keeps_the_contract_across_many_small_segments() {
    contract::run_all(|| {
        let directory = tempfile::tempdir().unwrap();
        (EmbeddedLog::open(directory.path(), small_segments()).unwrap(), directory)
    });
}

fn records(range: std::ops::Range<u64>) -> RecordBatch {
    let mut batch = RecordBatch::new();
    for key in range {
        batch.push(key, &key.to_le_bytes().repeat(8));
    }
    batch
}

fn keys(log: &EmbeddedLog, partition: u32) -> Vec<u64> {
    let mut out = RecordBatch::new();
    let mut offset = log.start_offset("t", partition).unwrap();
    loop {
        let next = log.read("t", partition, offset, 777, &mut out).unwrap();
        if next == offset {
            return out.iter().map(|(key, _)| key).collect();
        }
        offset = next;
    }
}

#[test]
fn a_reopened_log_has_its_records_and_offsets() {
    let directory = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(directory.path(), small_segments()).unwrap();
        log.create_topic("t", 2).unwrap();
        for start in (0..2000).step_by(100) {
            log.append("t", (start / 100 % 2) as u32, &records(start..start + 100)).unwrap();
        }
        log.commit_offsets("g", &[(TopicPartition { topic: "t".into(), partition: 1 }, 42)]).unwrap();
        let mut transaction = log.begin_transaction("x").unwrap();
        transaction.append("t", 0, &records(5000..5003)).unwrap();
        transaction.commit().unwrap();
    }
    let log = EmbeddedLog::open(directory.path(), small_segments()).unwrap();
    assert!(log.recovery_notes().is_empty(), "{:?}", log.recovery_notes());
    assert_eq!(log.partitions("t").unwrap(), 2);
    let even: Vec<u64> = (0..2000).filter(|key| key / 100 % 2 == 0).chain(5000..5003).collect();
    assert_eq!(keys(&log, 0), even);
    assert_eq!(log.committed_offset("g", "t", 1).unwrap(), Some(42));
    log.append("t", 0, &records(6000..6001)).unwrap();
    assert_eq!(*keys(&log, 0).last().unwrap(), 6000, "appends continue after a reopen");
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_nothing_before_it_is_lost() {
    let directory = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
        log.create_topic("t", 1).unwrap();
        log.append("t", 0, &records(0..50)).unwrap();
        log.append("t", 0, &records(50..100)).unwrap();
    }
    let segment = std::fs::read_dir(directory.path().join("topics/t/0"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .unwrap();
    // A crash in the middle of writing a third frame.
    OpenOptions::new().append(true).open(&segment).unwrap().write_all(&[3, 0, 0, 0, 200, 0, 0, 0, 1, 2]).unwrap();
    let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
    let notes = log.recovery_notes();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("torn") && notes[0].contains("cut the file"), "{notes:?}");
    assert_eq!(keys(&log, 0), (0..100).collect::<Vec<_>>());
    log.append("t", 0, &records(100..101)).unwrap();
    drop(log);
    let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
    assert!(log.recovery_notes().is_empty());
    assert_eq!(keys(&log, 0), (0..101).collect::<Vec<_>>());
}

#[test]
fn a_damaged_frame_is_served_empty_and_named_and_the_frames_after_it_are_still_served() {
    let directory = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
        log.create_topic("t", 1).unwrap();
        log.append("t", 0, &records(0..10)).unwrap();
        log.append("t", 0, &records(10..20)).unwrap();
    }
    let segment = directory.path().join("topics/t/0").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    // A bit flipped in the first frame's payload.
    bytes[40] ^= 0xFF;
    std::fs::write(&segment, &bytes).unwrap();
    let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
    let notes = log.recovery_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("00000000000000000000.seg: offsets 0..10 (10 records) unreadable"), "{notes:?}");
    assert!(notes[0].contains("bad checksum at byte 0"), "{notes:?}");
    let expected: Vec<u64> = std::iter::repeat_n(0, 10).chain(10..20).collect();
    assert_eq!(keys(&log, 0), expected, "the damaged records keep their offsets, empty");
    let mut out = RecordBatch::new();
    log.read("t", 0, 0, 1, &mut out).unwrap();
    assert_eq!(out.get(0).1, b"", "served empty");
    // Appends go on after it, and the file keeps its evidence.
    log.append("t", 0, &records(20..21)).unwrap();
    drop(log);
    assert_eq!(std::fs::read(&segment).unwrap()[..bytes.len()], bytes[..]);
    let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
    assert_eq!(keys(&log, 0).len(), 21);
}

#[test]
fn a_sealed_segment_cut_short_or_with_a_damaged_header_keeps_every_later_offset() {
    let directory = tempfile::tempdir().unwrap();
    let config = EmbeddedLogConfig { write_behind_bytes: 1, ..small_segments() };
    {
        // Frames of 20 records; segments of a few frames each.
        let log = EmbeddedLog::open(directory.path(), config.clone()).unwrap();
        log.create_topic("t", 1).unwrap();
        for start in (0..600).step_by(20) {
            log.append("t", 0, &records(start..start + 20)).unwrap();
        }
    }
    let segments: Vec<std::path::PathBuf> = {
        let mut paths: Vec<_> = std::fs::read_dir(directory.path().join("topics/t/0"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
            .collect();
        paths.sort();
        paths
    };
    assert!(segments.len() >= 4, "{segments:?}");
    let base_of = |path: &std::path::Path| -> u64 { path.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    // The first sealed segment loses its tail; the second gets a header that claims a million
    // records.
    let (cut, lied) = (&segments[0], &segments[1]);
    let length = std::fs::metadata(cut).unwrap().len();
    OpenOptions::new().write(true).open(cut).unwrap().set_len(length - 30).unwrap();
    let mut bytes = std::fs::read(lied).unwrap();
    bytes[0..4].copy_from_slice(&1_000_000u32.to_le_bytes());
    std::fs::write(lied, bytes).unwrap();
    let log = EmbeddedLog::open(directory.path(), config).unwrap();
    let notes = log.recovery_notes();
    assert_eq!(notes.len(), 2, "{notes:?}");
    let served = keys(&log, 0);
    assert_eq!(served.len(), 600, "every offset is still there");
    let (next_of_cut, next_of_lied) = (base_of(&segments[1]), base_of(&segments[2]));
    for (offset, &key) in served.iter().enumerate() {
        let offset = offset as u64;
        let damaged =
            (offset >= next_of_cut - 20 && offset < next_of_cut) || (offset >= next_of_cut && offset < next_of_lied);
        assert_eq!(key, if damaged { 0 } else { offset }, "offset {offset}");
    }
    assert!(
        notes.iter().any(|note| note.contains(&format!("offsets {}..{next_of_cut}", next_of_cut - 20))),
        "{notes:?}"
    );
    assert!(notes.iter().any(|note| note.contains(&format!("offsets {next_of_cut}..{next_of_lied}"))), "{notes:?}");
}

#[test]
fn appends_wait_for_a_full_write_behind_queue_and_lose_nothing() {
    // A queue of one byte: every frame waits for the one before it to be written.
    let config = EmbeddedLogConfig { write_behind_bytes: 1, ..small_segments() };
    let directory = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(directory.path(), config.clone()).unwrap();
        log.create_topic("t", 1).unwrap();
        for start in (0..3000).step_by(50) {
            log.append("t", 0, &records(start..start + 50)).unwrap();
        }
        // Sealed segments are read back from their files once they leave memory.
        assert_eq!(keys(&log, 0), (0..3000).collect::<Vec<_>>());
    }
    let log = EmbeddedLog::open(directory.path(), config).unwrap();
    assert!(log.recovery_notes().is_empty(), "{:?}", log.recovery_notes());
    assert_eq!(keys(&log, 0), (0..3000).collect::<Vec<_>>());
}

#[test]
fn a_segment_file_that_cannot_be_written_is_reported_by_name_and_memory_keeps_the_records() {
    let directory = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
    log.create_topic("t", 1).unwrap();
    // The partition's folder vanishes: the writer cannot create the segment file.
    std::fs::remove_dir_all(directory.path().join("topics").join("t").join("0")).unwrap();
    log.append("t", 0, &records(0..10)).unwrap();
    // The failure is written behind, so it reaches a later call.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut appended = 10;
    let error = loop {
        match log.append("t", 0, &records(10..11)) {
            Err(error) => break error,
            Ok(_) => {
                appended += 1;
                assert!(std::time::Instant::now() < deadline, "the failed write was never reported");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    };
    let message = error.to_string();
    assert!(message.contains("00000000000000000000.seg"), "{message}");
    assert!(message.contains("still in memory"), "{message}");
    // Every append that succeeded is still served; the one that failed added nothing.
    let served = keys(&log, 0);
    assert_eq!(served.len(), appended);
    assert_eq!(&served[..10], (0..10).collect::<Vec<_>>());
}

/// A disk with room for `room` more bytes: a write past it writes what fits and fails with
/// ENOSPC, as a full file system does.
#[derive(Debug)]
struct SmallDisk {
    room: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl lk_engines::log::embedded::Disk for SmallDisk {
    fn append(&self, file: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let room = self.room.load(Ordering::SeqCst) as usize;
        let fits = room.min(bytes.len());
        file.write_all(&bytes[..fits])?;
        self.room.fetch_sub(fits as u64, Ordering::SeqCst);
        if fits < bytes.len() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

#[test]
fn a_full_disk_stops_appends_with_the_error_and_nothing_acknowledged_is_lost_once_space_is_freed() {
    use std::sync::atomic::Ordering;
    let directory = tempfile::tempdir().unwrap();
    let disk = std::sync::Arc::new(SmallDisk {
        room: std::sync::atomic::AtomicU64::new(40_000),
        refused: std::sync::atomic::AtomicU64::new(0),
    });
    // Every append waits for its frame to be written: the disk fills while appends go on.
    let config = EmbeddedLogConfig { write_behind_bytes: 1, disk: disk.clone(), ..small_segments() };
    let log = EmbeddedLog::open(directory.path(), config).unwrap();
    log.create_topic("t", 1).unwrap();
    let mut acknowledged = 0u64;
    let error = loop {
        match log.append("t", 0, &records(acknowledged..acknowledged + 10)) {
            Ok(range) => {
                assert_eq!(range.first, acknowledged);
                acknowledged += 10;
                assert!(acknowledged < 100_000, "the disk never filled");
            }
            Err(error) => break error.to_string(),
        }
    };
    assert!(disk.refused.load(Ordering::SeqCst) > 0);
    assert!(error.contains(".seg") && error.contains("No space left on device"), "{error}");
    assert!(error.contains("free space"), "says what to do: {error}");
    // While the disk is full, appends keep failing, and what was acknowledged is still served.
    assert!(log.append("t", 0, &records(0..1)).is_err());
    assert_eq!(keys(&log, 0), (0..acknowledged).collect::<Vec<_>>());
    // Space is freed: the writer's next try succeeds, and appends go on.
    disk.room.store(u64::MAX / 2, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match log.append("t", 0, &records(acknowledged..acknowledged + 10)) {
            Ok(_) => break,
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "appends never resumed after space was freed");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    acknowledged += 10;
    drop(log);
    // Reopened from its files: every acknowledged record, in order, and no torn frame anywhere.
    let log = EmbeddedLog::open(directory.path(), small_segments()).unwrap();
    assert!(log.recovery_notes().is_empty(), "{:?}", log.recovery_notes());
    assert_eq!(keys(&log, 0), (0..acknowledged).collect::<Vec<_>>());
}

#[test]
fn a_log_closed_while_its_disk_is_full_keeps_its_files_whole() {
    use std::sync::atomic::Ordering;
    let directory = tempfile::tempdir().unwrap();
    let disk = std::sync::Arc::new(SmallDisk {
        room: std::sync::atomic::AtomicU64::new(20_000),
        refused: std::sync::atomic::AtomicU64::new(0),
    });
    let config = EmbeddedLogConfig { write_behind_bytes: 1, disk: disk.clone(), ..small_segments() };
    let log = EmbeddedLog::open(directory.path(), config).unwrap();
    log.create_topic("t", 1).unwrap();
    let mut acknowledged = 0u64;
    while log.append("t", 0, &records(acknowledged..acknowledged + 10)).is_ok() {
        acknowledged += 10;
    }
    assert!(disk.refused.load(Ordering::SeqCst) > 0);
    drop(log);
    // What did not fit is lost, and said so on stderr; what is on disk is whole frames, a
    // prefix of what was acknowledged.
    let log = EmbeddedLog::open(directory.path(), small_segments()).unwrap();
    assert!(log.recovery_notes().is_empty(), "{:?}", log.recovery_notes());
    let served = keys(&log, 0);
    assert!(!served.is_empty() && served.len() as u64 <= acknowledged);
    assert_eq!(served, (0..served.len() as u64).collect::<Vec<_>>());
}

#[test]
fn cold_segments_read_in_any_order_and_a_damaged_one_is_named_without_losing_the_others() {
    let directory = tempfile::tempdir().unwrap();
    // Every append waits for the one before it to be written, and seals a segment: the older
    // segments are on disk only, and reads load them one at a time into shared memory.
    let config = EmbeddedLogConfig { write_behind_bytes: 1, ..small_segments() };
    let log = EmbeddedLog::open(directory.path(), config).unwrap();
    log.create_topic("t", 1).unwrap();
    let mut bases = Vec::new();
    let mut next = 0u64;
    for segment in 0..12u64 {
        // Segments of different sizes, so a segment loaded into a larger one's memory must not
        // serve what that one left behind.
        let count = 100 + segment * 37 % 90;
        bases.push(log.append("t", 0, &records(next..next + count)).unwrap().first);
        next += count;
    }
    bases.push(next);
    let read_segment = |index: usize| -> Result<Vec<u64>, lk_engines::log::LogError> {
        let mut out = RecordBatch::new();
        let end = log.read("t", 0, bases[index], (bases[index + 1] - bases[index]) as usize, &mut out)?;
        assert_eq!(end, bases[index + 1]);
        Ok(out.iter().map(|(key, _)| key).collect())
    };
    for index in [9, 2, 10, 0, 5, 1, 8, 3] {
        assert_eq!(
            read_segment(index).unwrap(),
            (bases[index]..bases[index + 1]).collect::<Vec<_>>(),
            "segment {index}"
        );
    }
    // A segment file damaged on disk: the read that needs it says which file, and what is wrong.
    let damaged = directory.path().join("topics/t/0").join(format!("{:020}.seg", bases[4]));
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&damaged, bytes).unwrap();
    assert_eq!(read_segment(4).unwrap(), vec![0; (bases[5] - bases[4]) as usize], "served empty, offsets kept");
    let notes = log.recovery_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains(&format!("{:020}.seg: offsets {}..{}", bases[4], bases[4], bases[5]))
            && notes[0].contains("checksum"),
        "{notes:?}"
    );
    // Every other segment is still served, before and after it.
    for index in [3, 5, 0, 6] {
        assert_eq!(
            read_segment(index).unwrap(),
            (bases[index]..bases[index + 1]).collect::<Vec<_>>(),
            "segment {index}"
        );
    }
}
