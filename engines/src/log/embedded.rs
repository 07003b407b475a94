//! The embedded log: the default [`Log`], in process, fast, bounded in memory, stored on disk.
//!
//! Each partition is a sequence of segments. The active segment is kept in memory and its
//! frames are queued for its file, which one writer thread per log writes behind the appends
//! (`segment_writer.rs`: the appending thread never waits on the file system unless the queue
//! is full). Sealed segments stay in memory while they are among the newest
//! [`EmbeddedLogConfig::memory_segments`], and always until their file is complete; after that
//! reads load them back from disk (one cold segment cached per partition, so a sequential replay
//! loads each file once). Appends and reads take one lock per batch, never per record. Dropping
//! the log writes out everything queued; a committed transaction's records are written before
//! the offsets committed with it.
//!
//! On disk a segment is `<base offset>.seg`, a sequence of frames, one per appended batch:
//! `[u32 records][u32 payload bytes][u64 xxh3 of payload][payload]`, the payload holding the
//! records' columns: every key (u64), every value's length (u32), then the values back to back.
//! Reopening a log replays the frames; a torn tail (a crash mid-write) is cut off at the last
//! whole frame and reported. A damaged frame's records are served empty, so that every other
//! record keeps its offset and is still served, and are reported by file and offsets
//! ([`EmbeddedLog::recovery_notes`]).
//!
//! Transactions buffer their records and apply them at commit under the locks of every partition
//! involved, together with their offset commits: readers, which only ever see appended records,
//! never see an aborted or in-flight one. (Kafka writes transactional records first and hides
//! them behind markers; the visible behaviour is the same.)

#![allow(
    clippy::disallowed_methods,
    reason = "a read's wait for new records is bounded by a wall-clock deadline; nothing here is a measurement"
)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

pub use crate::log::segment_writer::{Disk, RealDisk};
use crate::log::segment_writer::{SegmentFile, WriteQueue};
use crate::log::{Log, LogError, LogTransaction, OffsetRange, RecordBatch, TopicPartition};

const FRAME_HEADER_BYTES: usize = 16;

/// Settings of an embedded log.
#[derive(Clone, Debug)]
pub struct EmbeddedLogConfig {
    /// A segment is sealed once its payload passes this size.
    pub segment_bytes: usize,
    /// Sealed segments kept in memory per partition, newest first.
    pub memory_segments: usize,
    /// Oldest segments are deleted while a partition holds more than this (`None`: keep all).
    pub retention_bytes: Option<u64>,
    /// Frames queued for the disk at most, in bytes; appends wait beyond it.
    pub write_behind_bytes: usize,
    /// Where the segment files' bytes go: the file system ([`RealDisk`]), or a test's disk.
    pub disk: Arc<dyn Disk>,
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 32 << 20,
            memory_segments: 1,
            retention_bytes: None,
            write_behind_bytes: 256 << 20,
            disk: Arc::new(RealDisk),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |cause| LogError::Io { path: path.display().to_string(), cause }
}

/// Records of one segment, in memory.
#[derive(Debug, Default)]
struct SegmentData {
    batch: RecordBatch,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    records: u64,
    bytes: u64,
    file: Arc<SegmentFile>,
    memory: Option<Arc<SegmentData>>,
}

#[derive(Debug)]
struct PartitionState {
    start_offset: u64,
    end_offset: u64,
    segments: Vec<Segment>,
    /// The active (last) segment's records; `open` while appends go to it.
    active: SegmentData,
    open: bool,
    cold: Option<(u64, Arc<SegmentData>)>,
    /// The buffer cold reads go through, one frame at a time.
    read_frame: Vec<u8>,
}

#[derive(Debug)]
struct Partition {
    directory: PathBuf,
    state: Mutex<PartitionState>,
    appended: Condvar,
}

#[derive(Debug)]
struct Topic {
    partitions: Vec<Partition>,
}

/// The embedded log. See the module documentation.
#[derive(Debug)]
pub struct EmbeddedLog {
    directory: PathBuf,
    config: EmbeddedLogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    groups: Mutex<BTreeMap<String, BTreeMap<TopicPartition, u64>>>,
    transaction_epochs: Mutex<BTreeMap<String, u64>>,
    stored_bytes: AtomicU64,
    recovery_notes: Mutex<Vec<String>>,
    /// Writes the segments' frames to disk; dropped (and so drained) with the log.
    writes: WriteQueue,
}

impl EmbeddedLog {
    /// Opens (or creates) a log stored under `directory`, recovering what is there.
    pub fn open(directory: &Path, config: EmbeddedLogConfig) -> Result<Self, LogError> {
        fs::create_dir_all(directory.join("topics")).map_err(io_error(directory))?;
        let writes = WriteQueue::start(config.write_behind_bytes, Arc::clone(&config.disk))?;
        let log = Self {
            directory: directory.to_owned(),
            config,
            topics: RwLock::new(BTreeMap::new()),
            groups: Mutex::new(BTreeMap::new()),
            transaction_epochs: Mutex::new(BTreeMap::new()),
            stored_bytes: AtomicU64::new(0),
            recovery_notes: Mutex::new(Vec::new()),
            writes,
        };
        log.recover()?;
        Ok(log)
    }

    /// What was wrong with the files: torn tails recovery cut off when the log was opened, and
    /// records that could not be read (when it was opened, or when a segment was read back from
    /// disk), each by file and offsets.
    pub fn recovery_notes(&self) -> Vec<String> {
        self.recovery_notes.lock().expect("not poisoned").clone()
    }

    /// Notes records of the segment at `base` that could not be read (once per range).
    fn note_damage(&self, path: &Path, base: u64, damaged: &[(u64, u64, String)]) {
        let mut notes = self.recovery_notes.lock().expect("not poisoned");
        for (first, count, problem) in damaged {
            let note = format!(
                "{}: offsets {}..{} ({count} records) unreadable, {problem}; served as empty records, which \
                 engines dead-letter",
                path.display(),
                base + first,
                base + first + count
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }

    fn groups_path(&self) -> PathBuf {
        self.directory.join("groups.json")
    }

    fn recover(&self) -> Result<(), LogError> {
        let groups_path = self.groups_path();
        if groups_path.exists() {
            let text = fs::read_to_string(&groups_path).map_err(io_error(&groups_path))?;
            let stored: Vec<(String, String, u32, u64)> = serde_json::from_str(&text).map_err(|error| {
                LogError::Corrupt { path: groups_path.display().to_string(), problem: error.to_string() }
            })?;
            let mut groups = self.groups.lock().expect("not poisoned");
            for (group, topic, partition, offset) in stored {
                groups.entry(group).or_default().insert(TopicPartition { topic, partition }, offset);
            }
        }
        let topics_directory = self.directory.join("topics");
        let mut names: Vec<_> = fs::read_dir(&topics_directory)
            .map_err(io_error(&topics_directory))?
            .filter_map(|entry| entry.ok().map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in names {
            let meta = topics_directory.join(&name).join("partitions");
            let text = fs::read_to_string(&meta).map_err(io_error(&meta))?;
            let partitions: u32 = text.trim().parse().map_err(|_| LogError::Corrupt {
                path: meta.display().to_string(),
                problem: format!("expected a partition count, found {text:?}"),
            })?;
            let topic = Topic {
                partitions: (0..partitions)
                    .map(|partition| self.recover_partition(&topics_directory.join(&name).join(partition.to_string())))
                    .collect::<Result<_, _>>()?,
            };
            self.topics.write().expect("not poisoned").insert(name, Arc::new(topic));
        }
        Ok(())
    }

    fn recover_partition(&self, directory: &Path) -> Result<Partition, LogError> {
        fs::create_dir_all(directory).map_err(io_error(directory))?;
        let mut bases: Vec<u64> = fs::read_dir(directory)
            .map_err(io_error(directory))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut segments = Vec::new();
        let mut active = SegmentData::default();
        let mut end_offset = 0;
        for (index, &base) in bases.iter().enumerate() {
            let path = directory.join(format!("{base:020}.seg"));
            let last = index + 1 == bases.len();
            let expected = bases.get(index + 1).map(|next| next - base);
            let (data, damage) = read_segment(&path, expected)?;
            self.note_damage(&path, base, &damage.damaged);
            let mut good_bytes = fs::metadata(&path).map_err(io_error(&path))?.len();
            if let Some((whole, problem)) = &damage.torn
                && last
            {
                // Appends go on from the last whole frame.
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
                file.set_len(*whole).map_err(io_error(&path))?;
                good_bytes = *whole;
                self.recovery_notes.lock().expect("not poisoned").push(format!(
                    "{}: {problem}; cut the file to its last whole frame at byte {whole}",
                    path.display()
                ));
            }
            self.stored_bytes.fetch_add(good_bytes, Ordering::Relaxed);
            let records = data.batch.len() as u64;
            end_offset = base + records;
            // Appends go on into the last segment.
            let file = if last {
                active = data;
                let open = OpenOptions::new().append(true).open(&path).map_err(io_error(&path))?;
                SegmentFile::existing(path, Some(open))
            } else {
                SegmentFile::existing(path, None)
            };
            segments.push(Segment { base, records, bytes: good_bytes, file, memory: None });
        }
        let start_offset = segments.first().map_or(0, |segment| segment.base);
        let open = !segments.is_empty();
        Ok(Partition {
            directory: directory.to_owned(),
            state: Mutex::new(PartitionState {
                start_offset,
                end_offset,
                segments,
                active,
                open,
                cold: None,
                read_frame: Vec::new(),
            }),
            appended: Condvar::new(),
        })
    }

    fn topic(&self, topic: &str) -> Result<Arc<Topic>, LogError> {
        self.topics
            .read()
            .expect("not poisoned")
            .get(topic)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic { topic: topic.to_owned() })
    }

    fn with_partition<T>(
        &self,
        topic: &str,
        partition: u32,
        action: impl FnOnce(&Partition) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let topic_state = self.topic(topic)?;
        let count = topic_state.partitions.len() as u32;
        let found = topic_state.partitions.get(partition as usize).ok_or_else(|| LogError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions: count,
        })?;
        action(found)
    }

    /// Appends under the partition's lock (held by the caller).
    fn append_locked(
        &self,
        partition: &Partition,
        state: &mut PartitionState,
        records: &RecordBatch,
    ) -> Result<OffsetRange, LogError> {
        let first = state.end_offset;
        if records.is_empty() {
            return Ok(OffsetRange { first, end: first });
        }
        if !state.open || state.active.batch.value_bytes() >= self.config.segment_bytes {
            self.roll(partition, state)?;
        }
        let mut frame = self.writes.buffer();
        frame.resize(FRAME_HEADER_BYTES, 0);
        // Columns, so that loading a segment back is three bulk copies, not a parse per record.
        for key in records.keys() {
            frame.extend_from_slice(&key.to_le_bytes());
        }
        for (_, value) in records.iter() {
            frame.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        frame.extend_from_slice(records.values());
        let payload_bytes = frame.len() - FRAME_HEADER_BYTES;
        let checksum = xxh3_64(&frame[FRAME_HEADER_BYTES..]);
        frame[0..4].copy_from_slice(&(records.len() as u32).to_le_bytes());
        frame[4..8].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
        frame[8..16].copy_from_slice(&checksum.to_le_bytes());
        let segment = state.segments.last_mut().expect("rolled above");
        let frame_bytes = frame.len() as u64;
        self.writes.push_frame(&segment.file, frame)?;
        segment.records += records.len() as u64;
        segment.bytes += frame_bytes;
        self.stored_bytes.fetch_add(frame_bytes, Ordering::Relaxed);
        state.active.batch.extend_from(records);
        state.end_offset += records.len() as u64;
        Ok(OffsetRange { first, end: state.end_offset })
    }

    /// Seals the active segment (if any) and starts a new one at the end offset.
    fn roll(&self, partition: &Partition, state: &mut PartitionState) -> Result<(), LogError> {
        // The sealed segment's size, to size the next one by.
        let mut sealed_size = (0, 0);
        if state.open {
            let segment = state.segments.last_mut().expect("an open partition has a segment");
            self.writes.seal(&segment.file)?;
            let sealed = std::mem::take(&mut state.active);
            sealed_size = (sealed.batch.len(), sealed.batch.value_bytes());
            segment.memory = Some(Arc::new(sealed));
        }
        // A segment leaving memory lends its buffers to the new active segment, unless a reader
        // still holds it. Growing a fresh segment to tens of megabytes reallocates and copies it
        // several times and faults in every page, under the partition's lock: appends stalled
        // for up to 30 ms at 1M records/s. Reused buffers are already the right size and mapped.
        // A segment stays in memory until all of it is on disk, so reads never find it partial.
        let sealed_count = state.segments.len();
        let mut recycled = None;
        for segment in state.segments.iter_mut().take(sealed_count.saturating_sub(self.config.memory_segments)) {
            if !segment.file.is_complete() {
                continue;
            }
            if let Some(Ok(data)) = segment.memory.take().map(Arc::try_unwrap) {
                recycled = Some(data);
            }
        }
        state.active = match recycled {
            Some(mut data) => {
                data.batch.clear();
                data
            }
            None => SegmentData::default(),
        };
        // Room for a segment like the last one, and a little more: a segment passes its size by
        // up to one batch. The first segment reserves its payload's room (untouched pages cost
        // nothing until written).
        let (records, bytes) = if sealed_size.1 == 0 { (0, self.config.segment_bytes) } else { sealed_size };
        state.active.batch.reserve(records + records / 8, bytes + bytes / 8);
        let base = state.end_offset;
        let file = SegmentFile::new(partition.directory.join(format!("{base:020}.seg")));
        state.open = true;
        state.segments.push(Segment { base, records: 0, bytes: 0, file, memory: None });
        if let Some(limit) = self.config.retention_bytes {
            while state.segments.len() > 1 && state.segments.iter().map(|segment| segment.bytes).sum::<u64>() > limit {
                let oldest = state.segments.remove(0);
                self.delete_segment(&oldest)?;
                state.start_offset = state.segments[0].base;
            }
        }
        Ok(())
    }

    fn delete_segment(&self, segment: &Segment) -> Result<(), LogError> {
        self.writes.delete(&segment.file)?;
        self.stored_bytes.fetch_sub(segment.bytes, Ordering::Relaxed);
        Ok(())
    }

    fn persist_groups(&self, groups: &BTreeMap<String, BTreeMap<TopicPartition, u64>>) -> Result<(), LogError> {
        let flat: Vec<(&String, &String, u32, u64)> = groups
            .iter()
            .flat_map(|(group, offsets)| {
                offsets.iter().map(move |(tp, offset)| (group, &tp.topic, tp.partition, *offset))
            })
            .collect();
        let path = self.groups_path();
        let temporary = path.with_extension("json.tmp");
        fs::write(&temporary, serde_json::to_vec(&flat).expect("offsets serialise")).map_err(io_error(&temporary))?;
        fs::rename(&temporary, &path).map_err(io_error(&path))
    }

    fn check_offsets(&self, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError> {
        for (tp, _) in offsets {
            self.with_partition(&tp.topic, tp.partition, |_| Ok(()))?;
        }
        Ok(())
    }
}

/// The most records a sealed segment may be short of what the next segment's base says, served
/// empty; beyond it the files do not belong together, and opening fails.
const MAX_MISSING_RECORDS: u64 = 1 << 23;

/// What reading a segment file found wrong with it.
#[derive(Debug, Default)]
struct SegmentDamage {
    /// Records that could not be read, as (first index in the segment, count, what was wrong):
    /// each is served as an empty record, so that every other record keeps its offset (the
    /// engines dead-letter an empty record as malformed).
    damaged: Vec<(u64, u64, String)>,
    /// A torn or unreadable tail past the last whole frame: the length of the frames before it,
    /// and what was wrong.
    torn: Option<(u64, String)>,
}

/// Reads a segment file: its records, and what was wrong with it.
fn read_segment(path: &Path, expected: Option<u64>) -> Result<(SegmentData, SegmentDamage), LogError> {
    let mut data = SegmentData::default();
    let damage = read_segment_into(path, &mut data, &mut Vec::new(), expected)?;
    Ok((data, damage))
}

/// Reads a segment file into `data`, reusing its memory, frame by frame through `frame` (a buffer
/// the size of one frame, which stays in cache), and says what was wrong with it. A replay reads
/// segment after segment, so reusing memory spares it faulting in fresh pages for every one.
///
/// A frame whose payload fails its checksum, or whose records do not add up, is skipped and its
/// records served empty; the frames after it are read as usual. The checksum does not cover the
/// header, so the count of a damaged frame is trusted only where nothing says otherwise: when the
/// segment should hold `expected` records (a sealed segment, up to the next one's base) and its
/// frames do not add up to that, every record from the first damaged frame on is served empty.
/// A tail that ends inside a frame is torn: a sealed segment's missing records are served empty,
/// the last segment ends at its last whole frame.
fn read_segment_into(
    path: &Path,
    data: &mut SegmentData,
    frame: &mut Vec<u8>,
    expected: Option<u64>,
) -> Result<SegmentDamage, LogError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len() as usize;
    data.batch.clear();
    data.batch.reserve(length / 80, length);
    let mut damage = SegmentDamage::default();
    let mut at = 0usize;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    loop {
        match read_full(&mut file, &mut header).map_err(io_error(path))? {
            0 => break,
            FRAME_HEADER_BYTES => {}
            _ => {
                damage.torn = Some((at as u64, format!("a torn frame header at byte {at}")));
                break;
            }
        }
        let records = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let payload_bytes = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let checksum = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if payload_bytes > length.saturating_sub(at + FRAME_HEADER_BYTES) {
            damage.torn = Some((at as u64, format!("a torn frame at byte {at}")));
            break;
        }
        frame.resize(payload_bytes, 0);
        if read_full(&mut file, frame).map_err(io_error(path))? < payload_bytes {
            damage.torn = Some((at as u64, format!("a torn frame at byte {at}")));
            break;
        }
        let first = data.batch.len() as u64;
        let damaged = |problem: &str| (first, records as u64, format!("{problem} at byte {at}"));
        match frame_columns(frame, records, checksum) {
            Ok((keys, lengths, values)) => data.batch.extend_from_columns(
                keys.chunks_exact(8).map(|key| u64::from_le_bytes(key.try_into().expect("8 bytes"))),
                lengths.chunks_exact(4).map(|length| u32::from_le_bytes(length.try_into().expect("4 bytes"))),
                values,
            ),
            Err(problem) => {
                // More records than the frame has bytes for is a damaged header, not a count.
                if records > payload_bytes {
                    damage.torn = Some((at as u64, format!("a frame with a damaged header at byte {at}")));
                    break;
                }
                damage.damaged.push(damaged(problem));
                for _ in 0..records {
                    data.batch.push(0, &[]);
                }
            }
        }
        at += FRAME_HEADER_BYTES + payload_bytes;
    }
    if let Some(expected) = expected {
        let read = data.batch.len() as u64;
        if read != expected && !damage.damaged.is_empty() {
            // A damaged frame's count was wrong: nothing from it on can be placed.
            let first = damage.damaged[0].0;
            let problem = damage.damaged[0].2.clone();
            data.batch.truncate(first as usize);
            damage.damaged = vec![(first, expected.saturating_sub(first), problem)];
        }
        let read = data.batch.len() as u64;
        if expected - read.min(expected) > MAX_MISSING_RECORDS {
            // Not a damaged tail: segment files missing, or named for other offsets.
            return Err(LogError::Corrupt {
                path: path.display().to_string(),
                problem: format!(
                    "holds {read} records where the next segment's name says {expected}; more than {MAX_MISSING_RECORDS} \
                     offsets are missing, so this is not a damaged tail (a segment file removed or renamed?)"
                ),
            });
        }
        if read < expected {
            let problem = match &damage.torn {
                Some((_, problem)) => problem.clone(),
                None => format!("the file ends at byte {at}"),
            };
            damage.damaged.push((read, expected - read, problem));
        }
        for _ in read..expected {
            data.batch.push(0, &[]);
        }
        data.batch.truncate(expected as usize);
    }
    Ok(damage)
}

/// A frame payload's three columns: keys, value lengths, values.
type Columns<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// A frame's payload as its keys, lengths and values, if it is whole.
fn frame_columns(payload: &[u8], records: usize, checksum: u64) -> Result<Columns<'_>, &'static str> {
    if xxh3_64(payload) != checksum {
        return Err("a frame with a bad checksum");
    }
    let keys_end = records * 8;
    let lengths_end = keys_end + records * 4;
    let Some(lengths) = payload.get(keys_end..lengths_end) else {
        return Err("a frame whose records overrun it");
    };
    let values = &payload[lengths_end..];
    let total: usize =
        lengths.chunks_exact(4).map(|length| u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize).sum();
    if total != values.len() {
        return Err("a frame whose records overrun it");
    }
    Ok((&payload[..keys_end], lengths, values))
}

/// Reads into `buffer` until it is full or the file ends: the bytes read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

impl Log for EmbeddedLog {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        if topic.is_empty() || topic.contains(['/', '\\']) || topic.starts_with('.') {
            return Err(LogError::Backend {
                message: format!("topic name {topic:?} is not allowed; use letters, digits, '-', '_' and '.'"),
                retriable: false,
            });
        }
        if partitions == 0 {
            return Err(LogError::Backend {
                message: "a topic needs at least one partition".to_owned(),
                retriable: false,
            });
        }
        let mut topics = self.topics.write().expect("not poisoned");
        if let Some(existing) = topics.get(topic) {
            let existing = existing.partitions.len() as u32;
            return if existing == partitions {
                Ok(())
            } else {
                Err(LogError::TopicExists { topic: topic.to_owned(), existing, requested: partitions })
            };
        }
        let directory = self.directory.join("topics").join(topic);
        fs::create_dir_all(&directory).map_err(io_error(&directory))?;
        let meta = directory.join("partitions");
        fs::write(&meta, partitions.to_string()).map_err(io_error(&meta))?;
        let created = Topic {
            partitions: (0..partitions)
                .map(|partition| self.recover_partition(&directory.join(partition.to_string())))
                .collect::<Result<_, _>>()?,
        };
        topics.insert(topic.to_owned(), Arc::new(created));
        Ok(())
    }

    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    fn append(&self, topic: &str, partition: u32, records: &RecordBatch) -> Result<OffsetRange, LogError> {
        self.with_partition(topic, partition, |found| {
            let mut state = found.state.lock().expect("not poisoned");
            let range = self.append_locked(found, &mut state, records)?;
            drop(state);
            found.appended.notify_all();
            Ok(range)
        })
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        out: &mut RecordBatch,
    ) -> Result<u64, LogError> {
        self.with_partition(topic, partition, |found| {
            let mut state = found.state.lock().expect("not poisoned");
            if offset < state.start_offset || offset > state.end_offset {
                return Err(LogError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    start: state.start_offset,
                    end: state.end_offset,
                });
            }
            let mut next = offset;
            while next < state.end_offset && ((next - offset) as usize) < max_records {
                let index = state.segments.partition_point(|segment| segment.base <= next) - 1;
                let is_active = index + 1 == state.segments.len() && state.open;
                let base = state.segments[index].base;
                let records = state.segments[index].records;
                let data: Arc<SegmentData>;
                let source: &SegmentData = if is_active {
                    &state.active
                } else if let Some(memory) = &state.segments[index].memory {
                    data = Arc::clone(memory);
                    &data
                } else if let Some((cold_base, cold)) = &state.cold
                    && *cold_base == base
                {
                    data = Arc::clone(cold);
                    &data
                } else {
                    // The cold segment it replaces lends its memory, unless a reader still holds it.
                    let mut loaded =
                        state.cold.take().and_then(|(_, cold)| Arc::try_unwrap(cold).ok()).unwrap_or_default();
                    let mut frame = std::mem::take(&mut state.read_frame);
                    let damage =
                        read_segment_into(&state.segments[index].file.path, &mut loaded, &mut frame, Some(records))?;
                    state.read_frame = frame;
                    self.note_damage(&state.segments[index].file.path, base, &damage.damaged);
                    let loaded = Arc::new(loaded);
                    state.cold = Some((base, Arc::clone(&loaded)));
                    data = loaded;
                    &data
                };
                let from = (next - base) as usize;
                let until = (records as usize).min(from + max_records - (next - offset) as usize);
                out.extend_from_range(&source.batch, from..until);
                next = base + until as u64;
            }
            Ok(next)
        })
    }

    fn wait_for(&self, topic: &str, partition: u32, offset: u64, timeout: Duration) -> Result<u64, LogError> {
        self.with_partition(topic, partition, |found| {
            let deadline = Instant::now() + timeout;
            let mut state = found.state.lock().expect("not poisoned");
            while state.end_offset <= offset {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = found.appended.wait_timeout(state, deadline - now).expect("not poisoned").0;
            }
            Ok(state.end_offset)
        })
    }

    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.with_partition(topic, partition, |found| Ok(found.state.lock().expect("not poisoned").start_offset))
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.with_partition(topic, partition, |found| Ok(found.state.lock().expect("not poisoned").end_offset))
    }

    fn commit_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError> {
        self.check_offsets(offsets)?;
        let mut groups = self.groups.lock().expect("not poisoned");
        let entry = groups.entry(group.to_owned()).or_default();
        for (tp, offset) in offsets {
            entry.insert(tp.clone(), *offset);
        }
        self.persist_groups(&groups)
    }

    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        let groups = self.groups.lock().expect("not poisoned");
        Ok(groups
            .get(group)
            .and_then(|offsets| offsets.get(&TopicPartition { topic: topic.to_owned(), partition }))
            .copied())
    }

    fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn LogTransaction + '_>, LogError> {
        let mut epochs = self.transaction_epochs.lock().expect("not poisoned");
        let epoch = epochs.entry(transactional_id.to_owned()).or_insert(0);
        *epoch += 1;
        Ok(Box::new(EmbeddedTransaction {
            log: self,
            transactional_id: transactional_id.to_owned(),
            epoch: *epoch,
            appends: Vec::new(),
            offsets: Vec::new(),
        }))
    }

    fn truncate_before(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        self.with_partition(topic, partition, |found| {
            let mut state = found.state.lock().expect("not poisoned");
            let offset = offset.min(state.end_offset);
            while state.segments.len() > 1 && state.segments[1].base <= offset {
                let oldest = state.segments.remove(0);
                self.delete_segment(&oldest)?;
            }
            state.start_offset = state.start_offset.max(offset);
            Ok(())
        })
    }

    fn damage(&self) -> Vec<String> {
        self.recovery_notes()
    }

    fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }
}

struct EmbeddedTransaction<'a> {
    log: &'a EmbeddedLog,
    transactional_id: String,
    epoch: u64,
    appends: Vec<(TopicPartition, RecordBatch)>,
    offsets: Vec<(String, TopicPartition, u64)>,
}

impl LogTransaction for EmbeddedTransaction<'_> {
    fn append(&mut self, topic: &str, partition: u32, records: &RecordBatch) -> Result<(), LogError> {
        self.log.with_partition(topic, partition, |_| Ok(()))?;
        let tp = TopicPartition { topic: topic.to_owned(), partition };
        match self.appends.iter_mut().find(|(existing, _)| *existing == tp) {
            Some((_, batch)) => batch.extend_from(records),
            None => self.appends.push((tp, records.clone())),
        }
        Ok(())
    }

    fn commit_offsets(&mut self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), LogError> {
        self.log.check_offsets(offsets)?;
        self.offsets.extend(offsets.iter().map(|(tp, offset)| (group.to_owned(), tp.clone(), *offset)));
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<Vec<(TopicPartition, OffsetRange)>, LogError> {
        let epochs = self.log.transaction_epochs.lock().expect("not poisoned");
        if epochs.get(&self.transactional_id) != Some(&self.epoch) {
            return Err(LogError::Backend {
                message: format!(
                    "transaction {:?} was fenced by a newer producer with the same id; its records were discarded",
                    self.transactional_id
                ),
                retriable: false,
            });
        }
        // Lock every partition involved, in a fixed order, so that the appends and the offset
        // commits become visible together and two commits cannot deadlock.
        let mut order: Vec<usize> = (0..self.appends.len()).collect();
        order.sort_by(|&a, &b| self.appends[a].0.cmp(&self.appends[b].0));
        let topics: Vec<Arc<Topic>> =
            order.iter().map(|&index| self.log.topic(&self.appends[index].0.topic)).collect::<Result<_, _>>()?;
        let mut guards: Vec<(usize, &Partition, MutexGuard<'_, PartitionState>)> = Vec::with_capacity(order.len());
        for (position, &index) in order.iter().enumerate() {
            let partition = &topics[position].partitions[self.appends[index].0.partition as usize];
            guards.push((index, partition, partition.state.lock().expect("not poisoned")));
        }
        let mut groups = self.log.groups.lock().expect("not poisoned");
        let mut ranges = vec![None; self.appends.len()];
        for (index, partition, state) in &mut guards {
            ranges[*index] = Some(self.log.append_locked(partition, state, &self.appends[*index].1)?);
        }
        // The records reach the files before the offsets committed with them.
        if !guards.is_empty() && !self.offsets.is_empty() {
            self.log.writes.barrier()?;
        }
        if !self.offsets.is_empty() {
            for (group, tp, offset) in &self.offsets {
                groups.entry(group.clone()).or_default().insert(tp.clone(), *offset);
            }
            self.log.persist_groups(&groups)?;
        }
        drop(groups);
        for (_, partition, state) in guards {
            drop(state);
            partition.appended.notify_all();
        }
        drop(epochs);
        Ok(self
            .appends
            .iter()
            .zip(ranges)
            .map(|((tp, _), range)| (tp.clone(), range.expect("every append was applied")))
            .collect())
    }

    fn abort(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A segment file's bytes and the records written into it.
    type Written = (Vec<u8>, Vec<(u64, Vec<u8>)>);

    /// A segment file of 6 frames of 1 to 40 records (keys = offsets, values 0 to 30 bytes), and
    /// its records.
    fn segment() -> &'static Written {
        static SEGMENT: std::sync::OnceLock<Written> = std::sync::OnceLock::new();
        SEGMENT.get_or_init(|| {
            let directory = tempfile::tempdir().unwrap();
            let mut records = Vec::new();
            {
                let log = EmbeddedLog::open(directory.path(), EmbeddedLogConfig::default()).unwrap();
                log.create_topic("t", 1).unwrap();
                for frame in 0..6u64 {
                    let mut batch = RecordBatch::new();
                    for _ in 0..(1 + frame * 7) {
                        let key = records.len() as u64;
                        let value = vec![key as u8; (key % 31) as usize];
                        batch.push(key, &value);
                        records.push((key, value));
                    }
                    log.append("t", 0, &batch).unwrap();
                }
            }
            let bytes = std::fs::read(directory.path().join("topics/t/0").join(format!("{:020}.seg", 0))).unwrap();
            (bytes, records)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever happens to a segment file's bytes (flipped, cut short, garbage after), reading
        /// it never panics; with the count it should hold, it serves exactly that many records,
        /// each either the one written at its offset or an empty one in its place.
        #[test]
        fn a_damaged_segment_serves_each_offset_its_record_or_an_empty_one(
            flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 0..4),
            cut in proptest::option::of(0.0f64..1.0),
            garbage in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let (original, records) = segment();
            let mut bytes = original.clone();
            for (at, mask) in flips {
                let index = ((bytes.len() - 1) as f64 * at) as usize;
                bytes[index] ^= mask;
            }
            if let Some(cut) = cut {
                bytes.truncate((bytes.len() as f64 * cut) as usize);
            }
            bytes.extend(&garbage);
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("damaged.seg");
            std::fs::write(&path, &bytes).unwrap();
            let expected = records.len() as u64;
            let (data, damage) = read_segment(&path, Some(expected)).unwrap();
            prop_assert_eq!(data.batch.len() as u64, expected);
            for (offset, (key, value)) in data.batch.iter().enumerate() {
                let (written_key, written) = &records[offset];
                prop_assert!(
                    (key == *written_key && value == &written[..]) || (key == 0 && value.is_empty()),
                    "offset {} served key {} and {} bytes", offset, key, value.len()
                );
            }
            let damaged: u64 = damage.damaged.iter().map(|(_, count, _)| count).sum();
            let empty = data.batch.iter().enumerate().filter(|(offset, (key, value))| {
                value.is_empty() && *key == 0 && !records[*offset].1.is_empty()
            }).count() as u64;
            prop_assert!(empty <= damaged, "{} records served empty, {} reported", empty, damaged);
            // Without the count (the last segment), it serves what its whole frames hold.
            let (data, _) = read_segment(&path, None).unwrap();
            prop_assert!(data.batch.len() <= bytes.len());
        }
    }

    #[test]
    fn an_untouched_segment_reads_back_whole_and_a_far_next_base_is_an_error() {
        let (bytes, records) = segment();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("whole.seg");
        std::fs::write(&path, bytes).unwrap();
        let (data, damage) = read_segment(&path, Some(records.len() as u64)).unwrap();
        assert!(damage.damaged.is_empty() && damage.torn.is_none());
        let read: Vec<(u64, Vec<u8>)> = data.batch.iter().map(|(key, value)| (key, value.to_vec())).collect();
        assert_eq!(&read, records);
        let error = read_segment(&path, Some(1 << 40)).unwrap_err().to_string();
        assert!(error.contains("whole.seg") && error.contains("removed or renamed"), "{error}");
    }
}
