//! The master dataset: every raw event the Lambda engine ingested, immutable, as Parquet files in
//! a Hive-style layout (`date=YYYY-MM-DD/hour=HH/part-….parquet`, by event time), readable as it
//! is by DuckDB (`read_parquet('master/**/*.parquet', hive_partitioning = true)`), Spark or
//! pandas.
//!
//! Files are only ever added: a late event lands in its own event-time partition in a new file,
//! and nothing is rewritten. Each file is written aside and renamed, then recorded in
//! `_manifest.jsonl` with the epoch of the records it holds; a worker's *seal* line says it has
//! written every record before its epoch's cutoff. The manifest, not a directory listing, is
//! what a batch run reads, so a half-written file is never seen.
//!
//! Each chunk a worker hands over is one transaction: its files' lines, its seal if any, then a
//! *commit* line with the log offsets the chunk brings the worker's partitions to. Lines after
//! the last commit belong to a transaction a crash interrupted: readers ignore them, and
//! reopening the dataset cuts them off, so a crash in the middle of a commit leaves the
//! dataset as it was before it.
//!
//! **Architecture Invariant:** the master dataset holds only decodable events; malformed records
//! are counted by the engine as dead letters and never reach it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use arrow_array::builder::PrimitiveBuilder;
use arrow_array::types::{Int8Type, UInt16Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int8Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt16Array, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lk_simulator::event::{CancelledBy, Event, EventKind, LatLon, Payload, Zone};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// Why the master dataset could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// A file could not be written or read. (The message carries the cause, so it is not
    /// also given as a `source`: error chains would print it twice.)
    #[error("master dataset {path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A Parquet file is not what the master dataset writes.
    #[error("master dataset {path}: {problem}; delete the run's folder and run again")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> MasterError + '_ {
    move |cause| MasterError::Io { path: path.display().to_string(), cause }
}

fn format_error(path: &Path, problem: impl ToString) -> MasterError {
    MasterError::Format { path: path.display().to_string(), problem: problem.to_string() }
}

/// The master dataset's columns, in order. Kind-specific fields are null for other kinds.
pub fn schema() -> SchemaRef {
    let dictionary = || DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::UInt64, false),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("kind", dictionary(), false),
        Field::new("zone", DataType::UInt64, false),
        Field::new("lat_e6", DataType::Int32, false),
        Field::new("lon_e6", DataType::Int32, false),
        Field::new("driver_id", DataType::UInt32, true),
        Field::new("ride_id", DataType::UInt64, true),
        Field::new("rider_id", DataType::UInt32, true),
        Field::new("speed_cmps", DataType::UInt16, true),
        Field::new("heading_cdeg", DataType::UInt16, true),
        Field::new("fare_cents", DataType::UInt32, true),
        Field::new("distance_m", DataType::UInt32, true),
        Field::new("cancelled_by", dictionary(), true),
        Field::new("due_ns", DataType::UInt64, false),
        Field::new("log_partition", DataType::UInt32, false),
        Field::new("log_offset", DataType::UInt64, false),
    ]))
}

/// Column indices, for projections.
pub mod column {
    /// `event_id`.
    pub const EVENT_ID: usize = 0;
    /// `event_time`.
    pub const EVENT_TIME: usize = 1;
    /// `kind`.
    pub const KIND: usize = 2;
    /// `zone`.
    pub const ZONE: usize = 3;
    /// `lat_e6`.
    pub const LAT: usize = 4;
    /// `lon_e6`.
    pub const LON: usize = 5;
    /// `driver_id`.
    pub const DRIVER: usize = 6;
    /// `fare_cents`.
    pub const FARE: usize = 11;
    /// `distance_m`.
    pub const DISTANCE: usize = 12;
}

/// Events an ingest worker hands to the master dataset, with where each came from in the log.
#[derive(Debug, Default)]
pub struct MasterChunk {
    /// The epoch (speed-layer segment) the records belong to.
    pub epoch: u32,
    /// The worker that read them.
    pub worker: u32,
    /// The events, in log order per partition.
    pub events: Vec<Event>,
    /// Each event's log partition and offset.
    pub positions: Vec<(u32, u64)>,
    /// When set, the worker has now handed over every record before these offsets (its
    /// partitions' cutoffs for the next epoch).
    pub seal: Option<Seal>,
    /// (partition, offset after the last record read into this chunk): where the worker's
    /// partitions stand once the chunk is committed.
    pub ends: Vec<(u32, u64)>,
}

/// A worker's cutoff: it has written everything before `offsets` into epochs up to `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The worker.
    pub worker: u32,
    /// The last epoch it wrote records for.
    pub epoch: u32,
    /// (partition, first offset not written).
    pub offsets: Vec<(u32, u64)>,
    /// Whether the worker has stopped (its input ended): it writes nothing more.
    pub last: bool,
}

/// One data file, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Path under the dataset's root.
    pub path: String,
    /// The epoch of its records.
    pub epoch: u32,
    /// Rows.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The largest event id in it (sizes the batch layer's de-duplication).
    pub max_event_id: u64,
    /// The largest driver id in it (sizes the batch layer's per-driver table).
    #[serde(default)]
    pub max_driver_id: u32,
    /// XXH3-64 of its bytes, checked before it is decoded: a file damaged on disk is an error
    /// that names it, not bytes handed to the Parquet decoder (which may panic on them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<u64>,
}

/// A data file's bytes, read whole and checked against what the manifest says of it (its size,
/// and its checksum where the manifest has one).
pub fn read_checked(path: &Path, file: &DataFile) -> Result<bytes::Bytes, MasterError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    if bytes.len() as u64 != file.bytes {
        return Err(format_error(
            path,
            format!(
                "it is {} bytes, and the manifest says {}: the file is damaged or was replaced",
                bytes.len(),
                file.bytes
            ),
        ));
    }
    if let Some(expected) = file.xxh3 {
        let actual = xxhash_rust::xxh3::xxh3_64(&bytes);
        if actual != expected {
            return Err(format_error(
                path,
                format!("its checksum is {actual:016x}, and the manifest says {expected:016x}: the file is damaged"),
            ));
        }
    }
    Ok(bytes::Bytes::from(bytes))
}

/// Runs a Parquet decode, turning a panic of the decoder (on a damaged file the manifest has no
/// checksum for) into an error that names the file.
pub fn decode_guarded<T>(path: &Path, decode: impl FnOnce() -> Result<T, MasterError>) -> Result<T, MasterError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format_error(path, format!("the Parquet decoder failed on it ({message}): the file is damaged")))
    })
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buffer)?;
        self.hasher.update(&buffer[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ManifestLine {
    File(DataFile),
    Seal(Seal),
    Commit { worker: u32, ends: Vec<(u32, u64)> },
}

/// What the manifest holds so far.
#[derive(Debug, Default)]
struct ManifestState {
    files: Vec<DataFile>,
    /// Per worker, its latest seal.
    seals: BTreeMap<u32, Seal>,
    /// Per partition, the offset after the last record committed.
    ends: BTreeMap<u32, u64>,
    /// Transactions committed.
    commits: u64,
}

/// The committed part of a manifest's text: its state, and the length of the text up to and
/// including the last commit line.
fn parse_manifest(path: &Path, text: &str) -> Result<(ManifestState, usize), MasterError> {
    let mut state = ManifestState::default();
    let (mut pending_files, mut pending_seals) = (Vec::new(), Vec::new());
    let mut committed_len = 0;
    let mut at = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (index, line) in lines.iter().enumerate() {
        at += line.len();
        let parsed = match serde_json::from_str::<ManifestLine>(line.trim_end()) {
            Ok(parsed) => parsed,
            // A torn last line is a crash while writing it: part of an uncommitted transaction.
            Err(_) if index + 1 == lines.len() && !line.ends_with('\n') => break,
            Err(error) => return Err(format_error(path, format!("line {}: {error}", index + 1))),
        };
        match parsed {
            ManifestLine::File(file) => pending_files.push(file),
            ManifestLine::Seal(seal) => pending_seals.push(seal),
            ManifestLine::Commit { ends, .. } => {
                state.files.append(&mut pending_files);
                for seal in pending_seals.drain(..) {
                    state.seals.insert(seal.worker, seal);
                }
                for (partition, end) in ends {
                    let entry = state.ends.entry(partition).or_default();
                    *entry = (*entry).max(end);
                }
                state.commits += 1;
                committed_len = at;
            }
        }
    }
    Ok((state, committed_len))
}

/// The master dataset under a root folder.
#[derive(Debug)]
pub struct MasterDataset {
    root: PathBuf,
    manifest: Mutex<(File, ManifestState)>,
    sealed: Condvar,
}

/// The compression of data files: LZ4 decodes at several GB/s a core (about twice Snappy's
/// speed, measured in the batch layer), so it costs the batch layer little and shrinks the
/// dataset by about a third.
const COMPRESSION: Compression = Compression::LZ4_RAW;

impl MasterDataset {
    /// Creates an empty dataset at `root` (which must not hold one).
    pub fn create(root: &Path) -> Result<Self, MasterError> {
        std::fs::create_dir_all(root).map_err(io_error(root))?;
        let path = root.join("_manifest.jsonl");
        let file = File::options().create(true).truncate(true).write(true).open(&path).map_err(io_error(&path))?;
        Ok(Self {
            root: root.to_owned(),
            manifest: Mutex::new((file, ManifestState::default())),
            sealed: Condvar::new(),
        })
    }

    /// Opens the dataset at `root` to go on writing it (after a crash), or creates it. The
    /// manifest is cut back to its last commit: an interrupted transaction is rolled back.
    pub fn open(root: &Path) -> Result<Self, MasterError> {
        let path = root.join("_manifest.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Self::create(root),
            Err(cause) => return Err(MasterError::Io { path: path.display().to_string(), cause }),
        };
        let (state, committed_len) = parse_manifest(&path, &text)?;
        if committed_len < text.len() {
            let temporary = path.with_extension("jsonl.tmp");
            std::fs::write(&temporary, &text[..committed_len])
                .and_then(|()| std::fs::rename(&temporary, &path))
                .map_err(io_error(&path))?;
        }
        let file = File::options().append(true).open(&path).map_err(io_error(&path))?;
        Ok(Self { root: root.to_owned(), manifest: Mutex::new((file, state)), sealed: Condvar::new() })
    }

    /// Per partition, the offset after the last committed record.
    pub fn committed_ends(&self) -> BTreeMap<u32, u64> {
        self.manifest.lock().expect("not poisoned").1.ends.clone()
    }

    /// Per worker, its latest committed seal.
    pub fn seals(&self) -> BTreeMap<u32, Seal> {
        self.manifest.lock().expect("not poisoned").1.seals.clone()
    }

    /// The epoch of `worker`'s latest committed seal.
    pub fn sealed_epoch(&self, worker: u32) -> Option<u32> {
        self.manifest.lock().expect("not poisoned").1.seals.get(&worker).map(|seal| seal.epoch)
    }

    /// Transactions committed so far (the next chunk's sequence number).
    pub fn commits(&self) -> u64 {
        self.manifest.lock().expect("not poisoned").1.commits
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record(&self, line: ManifestLine) -> Result<(), MasterError> {
        let path = self.root.join("_manifest.jsonl");
        let mut guard = self.manifest.lock().expect("not poisoned");
        let (file, state) = &mut *guard;
        let mut text = serde_json::to_string(&line).expect("manifest lines serialise");
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io_error(&path))?;
        if let ManifestLine::Commit { ends, .. } = line {
            for (partition, end) in ends {
                let entry = state.ends.entry(partition).or_default();
                *entry = (*entry).max(end);
            }
            state.commits += 1;
            self.sealed.notify_all();
        }
        Ok(())
    }

    /// Writes a chunk as one transaction: one file per event-time hour it touches, its seal if
    /// any, then the commit. If `interrupt` says so once the files are written, stops there (a
    /// crash in the middle of the commit) and returns false.
    pub fn write(&self, chunk: &MasterChunk, sequence: u64, interrupt: impl Fn() -> bool) -> Result<bool, MasterError> {
        let mut files = Vec::new();
        let mut by_hour: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (index, event) in chunk.events.iter().enumerate() {
            by_hour.entry(event.event_time_us.div_euclid(HOUR_US)).or_default().push(index as u32);
        }
        for (hour, indices) in by_hour {
            let (date, hour_of_day) = civil_hour(hour);
            let relative = format!(
                "date={date}/hour={hour_of_day:02}/part-{:05}-{:03}-{sequence:06}.parquet",
                chunk.epoch, chunk.worker
            );
            let path = self.root.join(&relative);
            let batch = to_record_batch(chunk, &indices);
            let (bytes, xxh3) = write_parquet(&path, &batch)?;
            let max_event_id = indices.iter().map(|&index| chunk.events[index as usize].event_id).max().unwrap_or(0);
            let max_driver_id =
                indices.iter().filter_map(|&index| chunk.events[index as usize].payload.driver_id()).max().unwrap_or(0);
            let file = DataFile {
                path: relative,
                epoch: chunk.epoch,
                rows: indices.len() as u64,
                bytes,
                max_event_id,
                max_driver_id,
                xxh3: Some(xxh3),
            };
            self.record(ManifestLine::File(file.clone()))?;
            files.push(file);
        }
        if let Some(seal) = &chunk.seal {
            self.record(ManifestLine::Seal(seal.clone()))?;
        }
        if interrupt() {
            return Ok(false);
        }
        // The commit: only now do the files and the seal count.
        {
            let mut guard = self.manifest.lock().expect("not poisoned");
            let state = &mut guard.1;
            state.files.append(&mut files);
            if let Some(seal) = &chunk.seal {
                state.seals.insert(seal.worker, seal.clone());
            }
        }
        self.record(ManifestLine::Commit { worker: chunk.worker, ends: chunk.ends.clone() })?;
        Ok(true)
    }

    /// Blocks until every one of `workers` has sealed `epoch` or stopped; returns the files of
    /// epochs up to `epoch`, or `None` after `timeout` or once `stop` says so (the workers are
    /// stuck or gone).
    #[allow(clippy::disallowed_methods, reason = "the wait is bounded by a wall-clock deadline, not measured")]
    pub fn wait_for_seals(
        &self,
        workers: u32,
        epoch: u32,
        timeout: std::time::Duration,
        stop: impl Fn() -> bool,
    ) -> Option<Vec<DataFile>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut guard = self.manifest.lock().expect("not poisoned");
        while (0..workers).any(|worker| guard.1.seals.get(&worker).is_none_or(|seal| seal.epoch < epoch && !seal.last))
        {
            let now = std::time::Instant::now();
            if now >= deadline || stop() {
                return None;
            }
            let slice = (deadline - now).min(std::time::Duration::from_millis(20));
            guard = self.sealed.wait_timeout(guard, slice).expect("not poisoned").0;
        }
        Some(guard.1.files.iter().filter(|file| file.epoch <= epoch).cloned().collect())
    }

    /// Every file written so far.
    pub fn files(&self) -> Vec<DataFile> {
        self.manifest.lock().expect("not poisoned").1.files.clone()
    }

    /// Bytes of every data file.
    pub fn stored_bytes(&self) -> u64 {
        self.manifest.lock().expect("not poisoned").1.files.iter().map(|file| file.bytes).sum()
    }

    /// Rows of every data file.
    pub fn rows(&self) -> u64 {
        self.manifest.lock().expect("not poisoned").1.files.iter().map(|file| file.rows).sum()
    }

    /// Hive partitions (date and hour folders) holding data.
    pub fn partitions(&self) -> usize {
        hive_partitions(&self.manifest.lock().expect("not poisoned").1.files)
    }

    /// The data files a dataset's manifest lists (for reprocessing a dataset that is closed).
    pub fn files_in(root: &Path) -> Result<Vec<DataFile>, MasterError> {
        let path = root.join("_manifest.jsonl");
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        Ok(parse_manifest(&path, &text)?.0.files)
    }
}

/// The date and hour folders `files` are in.
pub fn hive_partitions(files: &[DataFile]) -> usize {
    let folders: std::collections::BTreeSet<&str> =
        files.iter().map(|file| file.path.rsplit_once('/').map_or("", |(folder, _)| folder)).collect();
    folders.len()
}

const HOUR_US: i64 = 3_600_000_000;

/// The civil date (`YYYY-MM-DD`) and hour of day of an hour count since the Unix epoch.
fn civil_hour(hours: i64) -> (String, i64) {
    let (days, hour) = (hours.div_euclid(24), hours.rem_euclid(24));
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), hour)
}

/// A dictionary column over fixed `names`, from each row's index into them (`None`: null). Built
/// directly from the indices: a dictionary builder would hash every row's string.
fn fixed_dictionary(names: &[&str], indices: impl Iterator<Item = Option<i8>>) -> DictionaryArray<Int8Type> {
    let keys = Int8Array::from_iter(indices);
    DictionaryArray::try_new(keys, Arc::new(StringArray::from_iter_values(names.iter().copied())))
        .expect("indices point into the names")
}

/// The rows `indices` of a chunk as an Arrow batch in [`schema`].
fn to_record_batch(chunk: &MasterChunk, indices: &[u32]) -> RecordBatch {
    let rows = indices.len();
    let events = || indices.iter().map(|&index| &chunk.events[index as usize]);
    let kind_names: Vec<&str> = EventKind::ALL.iter().map(|kind| kind.name()).collect();
    let kinds = fixed_dictionary(&kind_names, events().map(|event| Some(event.kind() as i8 - 1)));
    let cancelled_names = ["rider", "driver", "platform"];
    let mut cancelled_codes = Vec::with_capacity(rows);
    let mut driver = PrimitiveBuilder::<UInt32Type>::with_capacity(rows);
    let mut ride = PrimitiveBuilder::<UInt64Type>::with_capacity(rows);
    let mut rider = PrimitiveBuilder::<UInt32Type>::with_capacity(rows);
    let mut speed = PrimitiveBuilder::<UInt16Type>::with_capacity(rows);
    let mut heading = PrimitiveBuilder::<UInt16Type>::with_capacity(rows);
    let mut fare = PrimitiveBuilder::<UInt32Type>::with_capacity(rows);
    let mut distance = PrimitiveBuilder::<UInt32Type>::with_capacity(rows);
    for event in events() {
        driver.append_option(event.payload.driver_id());
        ride.append_option(event.payload.ride_id());
        let (mut rider_id, mut speed_cmps, mut heading_cdeg, mut fare_cents, mut distance_m, mut by) =
            (None, None, None, None, None, None);
        match event.payload {
            Payload::DriverPing { speed_cmps: speed, heading_cdeg: heading, .. } => {
                (speed_cmps, heading_cdeg) = (Some(speed), Some(heading));
            }
            Payload::RideRequested { rider_id: id, .. } | Payload::RideAccepted { rider_id: id, .. } => {
                rider_id = Some(id);
            }
            Payload::DroppedOff { fare_cents: fare, distance_m: distance, .. } => {
                (fare_cents, distance_m) = (Some(fare), Some(distance));
            }
            Payload::RideCancelled { rider_id: id, by: who, .. } => (rider_id, by) = (Some(id), Some(who)),
            Payload::DriverArrived { .. } | Payload::PickedUp { .. } => {}
        }
        rider.append_option(rider_id);
        speed.append_option(speed_cmps);
        heading.append_option(heading_cdeg);
        fare.append_option(fare_cents);
        distance.append_option(distance_m);
        cancelled_codes.push(by.map(|who: CancelledBy| who as i8 - 1));
    }
    let positions = || indices.iter().map(|&index| chunk.positions[index as usize]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(events().map(|event| event.event_id))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(events().map(|event| event.event_time_us)).with_timezone("UTC"),
        ),
        Arc::new(kinds),
        Arc::new(UInt64Array::from_iter_values(events().map(|event| event.zone.0))),
        Arc::new(Int32Array::from_iter_values(events().map(|event| event.position.lat_e6))),
        Arc::new(Int32Array::from_iter_values(events().map(|event| event.position.lon_e6))),
        Arc::new(driver.finish()),
        Arc::new(ride.finish()),
        Arc::new(rider.finish()),
        Arc::new(speed.finish()),
        Arc::new(heading.finish()),
        Arc::new(fare.finish()),
        Arc::new(distance.finish()),
        Arc::new(fixed_dictionary(&cancelled_names, cancelled_codes.into_iter())),
        Arc::new(UInt64Array::from_iter_values(events().map(|event| event.due_ns))),
        Arc::new(UInt32Array::from_iter_values(positions().map(|(partition, _)| partition))),
        Arc::new(UInt64Array::from_iter_values(positions().map(|(_, offset)| offset))),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// Writes one batch as a Parquet file (aside, then renamed); returns its size and checksum.
fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(u64, u64), MasterError> {
    let folder = path.parent().expect("data files live in partition folders");
    std::fs::create_dir_all(folder).map_err(io_error(folder))?;
    let temporary = path.with_extension("parquet.tmp");
    let file = Hashing {
        inner: std::io::BufWriter::new(File::create(&temporary).map_err(io_error(&temporary))?),
        hasher: xxhash_rust::xxh3::Xxh3::new(),
    };
    let properties = WriterProperties::builder()
        .set_compression(COMPRESSION)
        .set_max_row_group_row_count(Some(1 << 20))
        // Dictionary pages only for the two short strings: on numbers they cost the writer a
        // hash per value and the batch layer an indirection per value, for little space
        // (LZ4 already compresses the repeats).
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled("kind".into(), true)
        .set_column_dictionary_enabled("cancelled_by".into(), true)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(|error| format_error(path, error))?;
    writer.write(batch).map_err(|error| format_error(path, error))?;
    let file = writer.into_inner().map_err(|error| format_error(path, error))?;
    let hash = file.hasher.digest();
    drop(file.inner.into_inner().map_err(|error| io_error(&temporary)(error.into_error()))?);
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    Ok((std::fs::metadata(path).map_err(io_error(path))?.len(), hash))
}

/// Codes (`EventKind as u8`, 0 for an unknown name) of a dictionary column's values.
pub fn kind_codes(kinds: &DictionaryArray<Int8Type>) -> Vec<u8> {
    let values = kinds.values().as_any().downcast_ref::<StringArray>().expect("kind values are strings");
    values.iter().map(|name| name.and_then(EventKind::from_name).map_or(0, |kind| kind as u8)).collect()
}

/// Reads a data file back as events with their log positions (for inspection and tests; the
/// batch layer reads only the columns it needs), after checking it against its manifest entry.
pub fn read_events(path: &Path, entry: &DataFile) -> Result<Vec<(Event, u32, u64)>, MasterError> {
    let bytes = read_checked(path, entry)?;
    decode_guarded(path, || decode_events(path, bytes))
}

fn decode_events(path: &Path, bytes: bytes::Bytes) -> Result<Vec<(Event, u32, u64)>, MasterError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.build())
        .map_err(|error| format_error(path, error))?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|error| format_error(path, error))?;
        if batch.schema().fields() != schema().fields() {
            return Err(format_error(path, "its columns are not the master dataset's"));
        }
        let column = |index: usize| batch.column(index);
        let u64s = |index: usize| column(index).as_any().downcast_ref::<UInt64Array>().expect("schema checked");
        let u32s = |index: usize| column(index).as_any().downcast_ref::<UInt32Array>().expect("schema checked");
        let u16s = |index: usize| column(index).as_any().downcast_ref::<UInt16Array>().expect("schema checked");
        let i32s = |index: usize| column(index).as_any().downcast_ref::<Int32Array>().expect("schema checked");
        let dictionary =
            |index: usize| column(index).as_any().downcast_ref::<DictionaryArray<Int8Type>>().expect("schema checked");
        let times = column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().expect("schema checked");
        let (kinds, kind_code) = (dictionary(2), kind_codes(dictionary(2)));
        let cancelled = dictionary(13);
        let cancelled_names = cancelled.values().as_any().downcast_ref::<StringArray>().expect("strings");
        for row in 0..batch.num_rows() {
            let code = kind_code.get(kinds.keys().value(row) as usize).copied().unwrap_or(0);
            let kind = EventKind::from_code(code)
                .ok_or_else(|| format_error(path, format!("row {row} has an unknown kind")))?;
            let driver_id = if u32s(6).is_null(row) { 0 } else { u32s(6).value(row) };
            let ride_id = u64s(7).value(row);
            let rider_id = u32s(8).value(row);
            let payload = match kind {
                EventKind::DriverPing => {
                    Payload::DriverPing { driver_id, speed_cmps: u16s(9).value(row), heading_cdeg: u16s(10).value(row) }
                }
                EventKind::RideRequested => Payload::RideRequested { ride_id, rider_id },
                EventKind::RideAccepted => Payload::RideAccepted { ride_id, driver_id, rider_id },
                EventKind::DriverArrived => Payload::DriverArrived { ride_id, driver_id },
                EventKind::PickedUp => Payload::PickedUp { ride_id, driver_id },
                EventKind::DroppedOff => Payload::DroppedOff {
                    ride_id,
                    driver_id,
                    fare_cents: u32s(11).value(row),
                    distance_m: u32s(12).value(row),
                },
                EventKind::RideCancelled => {
                    let key = cancelled.keys().value(row) as usize;
                    let name = if key < cancelled_names.len() { cancelled_names.value(key) } else { "" };
                    let by = CancelledBy::from_name(name)
                        .ok_or_else(|| format_error(path, format!("row {row} has an unknown cancelled_by")))?;
                    Payload::RideCancelled { ride_id, rider_id, driver_id, by }
                }
            };
            let event = Event {
                event_id: u64s(0).value(row),
                event_time_us: times.value(row),
                due_ns: u64s(14).value(row),
                zone: Zone(u64s(3).value(row)),
                position: LatLon { lat_e6: i32s(4).value(row), lon_e6: i32s(5).value(row) },
                payload,
            };
            events.push((event, u32s(15).value(row), u64s(16).value(row)));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lk_simulator::generator::{Generator, GeneratorOptions};
    use lk_simulator::workload::Workload;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_hour(0), ("1970-01-01".to_owned(), 0));
        assert_eq!(civil_hour(24 * 365 + 5), ("1971-01-01".to_owned(), 5));
        // 2026-11-25 is day 20,782 since the epoch (Python: `(date(2026, 11, 25) - date(1970, 1, 1)).days`).
        assert_eq!(civil_hour(20_782 * 24 + 23), ("2026-11-25".to_owned(), 23));
        assert_eq!(civil_hour(-1), ("1969-12-31".to_owned(), 23));
        // A leap day.
        assert_eq!(civil_hour(19_416 * 24), ("2023-02-28".to_owned(), 0));
        assert_eq!(civil_hour(19_782 * 24), ("2024-02-29".to_owned(), 0));
    }

    #[test]
    fn events_round_trip_through_the_master_dataset_in_hive_partitions() {
        let scenario = Workload::from_toml("[run]\nrate_eps = 20000\nduration = \"1s\"\n", "test.toml").expect("valid");
        let mut generator = Generator::new(
            &scenario,
            GeneratorOptions { threads: 1, background: false, limit_events: Some(20_000), limit_due_ns: None },
        );
        let mut chunk = MasterChunk { epoch: 2, worker: 1, ..MasterChunk::default() };
        while let Some(batch) = generator.next_batch() {
            for (index, event) in batch.events.iter().enumerate() {
                if batch.defect_of(index).is_none() {
                    chunk.positions.push((index as u32 % 8, chunk.events.len() as u64));
                    chunk.events.push(*event);
                }
            }
        }
        // One event an hour late must land in its own hour's folder.
        let mut late = chunk.events[0];
        late.event_time_us -= HOUR_US;
        chunk.events.push(late);
        chunk.positions.push((0, 99_999));
        chunk.seal = Some(Seal { worker: 1, epoch: 2, offsets: vec![(0, 100_000)], last: false });
        let directory = tempfile::tempdir().expect("tempdir");
        let master = MasterDataset::create(directory.path()).expect("create");
        master.write(&chunk, 0, || false).expect("write");
        let files = master.files();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(master.partitions(), 2);
        assert!(files.iter().all(|file| file.path.starts_with("date=") && file.path.contains("/hour=")));
        let mut read: Vec<(Event, u32, u64)> = Vec::new();
        for file in &files {
            read.extend(read_events(&directory.path().join(&file.path), file).expect("read"));
        }
        read.sort_by_key(|(_, _, offset)| *offset);
        let written: Vec<(Event, u32, u64)> = chunk
            .events
            .iter()
            .zip(&chunk.positions)
            .map(|(event, (partition, offset))| (*event, *partition, *offset))
            .collect();
        assert_eq!(read, written);
        assert_eq!(
            master.wait_for_seals(2, 2, std::time::Duration::ZERO, || false).map(|files| files.len()),
            None,
            "worker 0 never sealed"
        );
        let manifest = std::fs::read_to_string(directory.path().join("_manifest.jsonl")).expect("manifest");
        assert_eq!(manifest.lines().count(), 4, "two files, a seal and the commit");
    }

    #[test]
    fn a_commit_interrupted_by_a_crash_is_rolled_back_on_reopen() {
        let scenario = Workload::from_toml("[run]\nrate_eps = 20000\nduration = \"1s\"\n", "test.toml").expect("valid");
        let mut generator = Generator::new(
            &scenario,
            GeneratorOptions { threads: 1, background: false, limit_events: Some(2_000), limit_due_ns: None },
        );
        let events: Vec<Event> =
            std::iter::from_fn(|| generator.next_batch().map(|batch| batch.events.clone())).flatten().collect();
        let chunk = |range: std::ops::Range<usize>| MasterChunk {
            epoch: 0,
            worker: 0,
            events: events[range.clone()].to_vec(),
            positions: range.clone().map(|offset| (0, offset as u64)).collect(),
            seal: None,
            ends: vec![(0, range.end as u64)],
        };
        let directory = tempfile::tempdir().expect("tempdir");
        let master = MasterDataset::create(directory.path()).expect("create");
        assert!(master.write(&chunk(0..1000), 0, || false).expect("write"));
        assert!(!master.write(&chunk(1000..2000), 1, || true).expect("write"), "the crash interrupts the commit");
        assert_eq!(master.files().len(), 1, "the interrupted transaction's files do not count");
        drop(master);
        // The manifest on disk has the interrupted transaction's lines, and a torn one.
        let manifest = directory.path().join("_manifest.jsonl");
        let mut text = std::fs::read_to_string(&manifest).expect("manifest");
        text.push_str("{\"file\":{\"path\":");
        std::fs::write(&manifest, &text).expect("tear");
        assert_eq!(MasterDataset::files_in(directory.path()).expect("read").len(), 1);
        let reopened = MasterDataset::open(directory.path()).expect("reopen");
        assert_eq!(reopened.files().len(), 1);
        assert_eq!(reopened.committed_ends(), BTreeMap::from([(0, 1000)]));
        assert_eq!(reopened.commits(), 1);
        assert!(reopened.write(&chunk(1000..2000), 1, || false).expect("write"));
        assert_eq!(MasterDataset::files_in(directory.path()).expect("read").len(), 2);
        assert_eq!(reopened.committed_ends(), BTreeMap::from([(0, 2000)]));
        let rows: u64 = reopened.files().iter().map(|file| file.rows).sum();
        assert_eq!(rows, 2000, "every event once");
    }

    /// Master datasets lk did not just write: files and a manifest damaged on disk. Every case
    /// loads, or fails with an error; none panics or asks for unbounded memory (the batch
    /// layer's tables are sized by the manifest's maxima, and each row is checked against them).
    mod damaged {
        use std::sync::OnceLock;

        use proptest::prelude::*;

        use super::*;
        use crate::runtime::queries::QueryConfig;

        /// A master dataset's data files (path and bytes) and its manifest.
        type Sample = (Vec<(String, Vec<u8>)>, String);

        /// A small master dataset.
        fn sample() -> &'static Sample {
            static SAMPLE: OnceLock<Sample> = OnceLock::new();
            SAMPLE.get_or_init(|| {
                let scenario =
                    Workload::from_toml("[run]\nrate_eps = 20000\nduration = \"1s\"\n", "test.toml").expect("valid");
                let mut generator = Generator::new(
                    &scenario,
                    GeneratorOptions { threads: 1, background: false, limit_events: Some(3_000), limit_due_ns: None },
                );
                let events: Vec<Event> =
                    std::iter::from_fn(|| generator.next_batch().map(|batch| batch.events.clone())).flatten().collect();
                let chunk = MasterChunk {
                    epoch: 0,
                    worker: 0,
                    positions: (0..events.len()).map(|offset| (0, offset as u64)).collect(),
                    ends: vec![(0, events.len() as u64)],
                    events,
                    seal: None,
                };
                let directory = tempfile::tempdir().expect("tempdir");
                let master = MasterDataset::create(directory.path()).expect("create");
                assert!(master.write(&chunk, 0, || false).expect("write"));
                let files = master
                    .files()
                    .iter()
                    .map(|file| (file.path.clone(), std::fs::read(directory.path().join(&file.path)).expect("read")))
                    .collect();
                let manifest = std::fs::read_to_string(directory.path().join("_manifest.jsonl")).expect("manifest");
                (files, manifest)
            })
        }

        fn config() -> QueryConfig {
            QueryConfig {
                rides_window_us: 300_000_000,
                demand_window_us: 300_000_000,
                demand_slide_us: 60_000_000,
                session_gap_us: 600_000_000,
                trends_window_us: 3_600_000_000,
                watermark_delay_us: 2_000_000,
                allowed_lateness_us: 30_000_000,
            }
        }

        fn damage(bytes: &mut Vec<u8>, flips: &[(f64, u8)], cut: Option<f64>) {
            for &(at, bits) in flips {
                let index = ((bytes.len() as f64 * at) as usize).min(bytes.len().saturating_sub(1));
                if let Some(byte) = bytes.get_mut(index) {
                    *byte ^= bits;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate((bytes.len() as f64 * cut) as usize);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn a_damaged_data_file_loads_or_is_an_error(
                flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 1..6),
                cut in proptest::option::of(0.3f64..1.0),
            ) {
                let (files, manifest) = sample();
                let directory = tempfile::tempdir().expect("tempdir");
                std::fs::write(directory.path().join("_manifest.jsonl"), manifest).expect("write");
                for (index, (path, bytes)) in files.iter().enumerate() {
                    let mut bytes = bytes.clone();
                    if index == 0 {
                        damage(&mut bytes, &flips, cut);
                    }
                    let path = directory.path().join(path);
                    std::fs::create_dir_all(path.parent().expect("a folder")).expect("folders");
                    std::fs::write(&path, bytes).expect("write");
                }
                let master = MasterDataset::open(directory.path()).expect("the manifest is whole");
                let entry = master.files().into_iter().find(|file| file.path == files[0].0).expect("in the manifest");
                // Any change to a file's bytes is caught by its checksum, before the decoder.
                let read = read_events(&directory.path().join(&files[0].0), &entry);
                prop_assert!(read.is_err(), "a damaged file was read");
                let error = read.unwrap_err().to_string();
                prop_assert!(error.contains("damaged") && error.contains(&files[0].0), "{}", error);
                let computed = crate::lambda::batch::compute(directory.path(), &master.files(), &config(), 1, true);
                prop_assert!(computed.is_err());
                // Without the checksum (a manifest from before lk wrote them), the decoder sees the
                // damage: it loads, or fails with an error, even where the decoder panics.
                let unchecked = DataFile { xxh3: None, bytes: std::fs::metadata(directory.path().join(&entry.path)).expect("there").len(), ..entry };
                let _ = read_events(&directory.path().join(&files[0].0), &unchecked);
                let _ = crate::lambda::batch::compute(directory.path(), &[unchecked], &config(), 1, true);
            }

            #[test]
            fn a_damaged_manifest_opens_or_is_an_error(
                flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 1..6),
                cut in proptest::option::of(0.0f64..1.0),
            ) {
                let (files, manifest) = sample();
                let directory = tempfile::tempdir().expect("tempdir");
                for (path, bytes) in files {
                    let path = directory.path().join(path);
                    std::fs::create_dir_all(path.parent().expect("a folder")).expect("folders");
                    std::fs::write(&path, bytes).expect("write");
                }
                let mut bytes = manifest.as_bytes().to_vec();
                damage(&mut bytes, &flips, cut);
                std::fs::write(directory.path().join("_manifest.jsonl"), &bytes).expect("write");
                if let Ok(master) = MasterDataset::open(directory.path()) {
                    let _ = crate::lambda::batch::compute(directory.path(), &master.files(), &config(), 1, true);
                }
            }
        }

        #[test]
        fn a_manifest_that_asks_for_terabytes_is_an_error_naming_it() {
            let file = |max_event_id, max_driver_id| DataFile {
                path: "date=2026-06-01/hour=12/part-0.parquet".to_owned(),
                epoch: 0,
                rows: 1,
                bytes: 10,
                max_event_id,
                max_driver_id,
                xxh3: None,
            };
            let directory = tempfile::tempdir().expect("tempdir");
            for (file, expected) in [(file(u64::MAX, 10), "event ids up to"), (file(10, u32::MAX), "driver ids up to")]
            {
                let error = crate::lambda::batch::compute(directory.path(), &[file], &config(), 1, true)
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(expected) && error.contains("part-0.parquet"), "{error}");
                assert!(error.contains("manifest is damaged"), "{error}");
            }
        }
    }
}
