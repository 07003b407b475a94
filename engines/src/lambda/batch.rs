//! The batch layer: recomputes all five views from the master dataset up to a cutoff, from
//! scratch, the way a Spark job over a data lake would.
//!
//! Its logic is written for batches and is separate from the streaming runtime's: columnar
//! passes over Arrow record batches (only the columns the queries need are decoded), files
//! spread over threads, per-thread partial aggregates merged at the end. There are no
//! watermarks: every event in the dataset counts, however late it arrived, which is how Lambda
//! corrects what its speed layer dropped. Re-sent copies of an event are counted once (a shared
//! bitmap of event ids). That this is a second implementation of the same queries is Lambda's
//! known cost; the report counts its lines.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arrow_array::types::Int8Type;
use arrow_array::{Array, DictionaryArray, Int32Array, TimestampMicrosecondArray, UInt32Array, UInt64Array};
use lk_simulator::event::EventKind;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::master::{DataFile, MasterError, column, kind_codes};
use crate::runtime::queries::{
    Additive, Demand, Location, QueryConfig, RideCount, Session, Trend, ViewSet, id_mark, merge_session,
};

/// What a batch run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// Files read.
    pub files: u64,
    /// Rows read.
    pub rows: u64,
    /// Distinct events counted.
    pub events: u64,
    /// Rows whose event id was counted already (re-sent copies).
    pub duplicates: u64,
    /// Bytes of the files read.
    pub bytes: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// CPU seconds of its threads.
    pub cpu_seconds: f64,
}

/// The largest event id a master dataset may hold: 2^36 (a run of 64 billion events, 19 hours
/// at 1M/s); the deduplication table is a bit per id up to the largest (1 GiB here).
const MAX_EVENT_ID: u64 = 1 << 36;

/// The largest driver id: the simulator's fleet is at most 50 million drivers.
const MAX_DRIVER_ID: u32 = 50_000_000;

/// A row's driver id, if within the manifest's maximum for its file (which sized the table).
#[inline]
fn checked_driver(
    driver: u32,
    file: &DataFile,
    row: usize,
    format: &dyn Fn(String) -> MasterError,
) -> Result<u32, MasterError> {
    if driver > file.max_driver_id {
        return Err(format(format!(
            "row {row} has driver id {driver}, above the manifest's {} for it: the file is damaged",
            file.max_driver_id
        )));
    }
    Ok(driver)
}

/// Event ids already counted, shared by the threads: the generator's ids are dense, so a bit
/// each, set atomically (the first thread to set a bit counts the event).
struct SeenIds {
    words: Vec<AtomicU64>,
}

impl SeenIds {
    fn new(max_id: u64) -> Self {
        Self { words: (0..max_id / 64 + 1).map(|_| AtomicU64::new(0)).collect() }
    }

    #[inline]
    fn insert(&self, id: u64) -> bool {
        let bit = 1u64 << (id % 64);
        self.words[(id / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

#[derive(Clone, Debug)]
struct DriverAggregate {
    location: Location,
    sessions: SmallVec<[Session; 1]>,
}

impl Default for DriverAggregate {
    fn default() -> Self {
        Self { location: Location::ABSENT, sessions: SmallVec::new() }
    }
}

/// Rows ahead of the current one whose driver's aggregate is prefetched.
const PREFETCH_ROWS: usize = 8;

/// One thread's partial views. Driver ids are dense (the generator numbers its fleet), so
/// per-driver aggregates are indexed directly: one cache miss per ping, which prefetching a few
/// rows ahead overlaps, instead of a hash probe.
#[derive(Default)]
struct Partial {
    drivers: Vec<DriverAggregate>,
    rides: FxHashMap<(u32, i64), RideCount>,
    demand: FxHashMap<(u64, i64), Demand>,
    trends: FxHashMap<(u64, i64), Trend>,
    rows: u64,
    events: u64,
    duplicates: u64,
    cpu_seconds: f64,
}

impl Partial {
    #[inline]
    fn driver(&mut self, driver: u32) -> &mut DriverAggregate {
        let index = driver as usize;
        if index >= self.drivers.len() {
            self.drivers.resize_with((index + 1).next_power_of_two(), DriverAggregate::default);
        }
        &mut self.drivers[index]
    }

    fn absorb(&mut self, other: Partial, gap_us: i64) {
        for (driver, theirs) in other.drivers.into_iter().enumerate() {
            if theirs.location.event_id == 0 && theirs.sessions.is_empty() {
                continue;
            }
            let ours = self.driver(driver as u32);
            if theirs.location.is_newer_than(&ours.location) {
                ours.location = theirs.location;
            }
            for session in theirs.sessions {
                merge_session(&mut ours.sessions, session, gap_us);
            }
        }
        for (key, value) in other.rides {
            let cell = self.rides.entry(key).or_default();
            *cell = cell.plus(value);
        }
        for (key, value) in other.demand {
            let cell = self.demand.entry(key).or_default();
            *cell = cell.plus(value);
        }
        for (key, value) in other.trends {
            let cell = self.trends.entry(key).or_default();
            *cell = cell.plus(value);
        }
        self.rows += other.rows;
        self.events += other.events;
        self.duplicates += other.duplicates;
        self.cpu_seconds += other.cpu_seconds;
    }

    /// The views, built on several threads (the two per-driver views are the big ones).
    fn into_views(self) -> ViewSet {
        let Partial { drivers, rides, demand, trends, .. } = self;
        std::thread::scope(|scope| {
            let locations = scope.spawn(|| {
                drivers
                    .iter()
                    .enumerate()
                    .filter(|(_, aggregate)| aggregate.location.event_id != 0)
                    .map(|(driver, aggregate)| (driver as u32, aggregate.location))
                    .collect()
            });
            let windows = scope.spawn(move || {
                (rides.into_iter().collect(), demand.into_iter().collect(), trends.into_iter().collect())
            });
            let driver_sessions = drivers
                .iter()
                .enumerate()
                .flat_map(|(driver, aggregate)| {
                    aggregate.sessions.iter().map(move |session| ((driver as u32, session.start_us), *session))
                })
                .collect();
            let (rides_per_driver, zone_demand, historical_trends) =
                windows.join().expect("a view-building thread panicked");
            ViewSet {
                driver_location: locations.join().expect("a view-building thread panicked"),
                rides_per_driver,
                zone_demand,
                driver_sessions,
                historical_trends,
            }
        })
    }
}

/// Rows decoded per Arrow batch.
const BATCH_ROWS: usize = 64 * 1024;

/// Computes the batch views over `files` (under `root`) with `threads` threads. With
/// `deduplicate`, a row whose event id was counted already is skipped (the idempotence that
/// makes re-written rows harmless); without it, every row counts, as in a batch job that trusts
/// its input to hold each event once.
#[allow(
    clippy::disallowed_methods,
    reason = "a batch run times itself, on demand (`lk batch`) as inside a run, where no run clock exists"
)]
pub fn compute(
    root: &Path,
    files: &[DataFile],
    config: &QueryConfig,
    threads: u32,
    deduplicate: bool,
) -> Result<(ViewSet, BatchStats), MasterError> {
    let started = Instant::now();
    // A manifest's maxima size the tables below: a damaged one must be an error, not a request
    // for terabytes.
    for file in files {
        let damaged = |what: String| MasterError::Format {
            path: root.join(&file.path).display().to_string(),
            problem: format!("the manifest gives it {what}: the manifest is damaged, or was not written by lk"),
        };
        if file.max_event_id > MAX_EVENT_ID {
            return Err(damaged(format!("event ids up to {} (lk's are at most {MAX_EVENT_ID})", file.max_event_id)));
        }
        if file.max_driver_id > MAX_DRIVER_ID {
            return Err(damaged(format!("driver ids up to {} (lk's are at most {MAX_DRIVER_ID})", file.max_driver_id)));
        }
    }
    let seen =
        SeenIds::new(if deduplicate { files.iter().map(|file| file.max_event_id).max().unwrap_or(0) } else { 0 });
    let next = AtomicUsize::new(0);
    let max_driver = files.iter().map(|file| file.max_driver_id).max().unwrap_or(0);
    // Largest files first, so that no thread is left with a big one at the end.
    let mut order: Vec<&DataFile> = files.iter().collect();
    order.sort_by_key(|file| std::cmp::Reverse(file.rows));
    let threads = threads.clamp(1, order.len().max(1) as u32);
    let partials: Vec<Result<Partial, MasterError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let cpu_start = crate::runtime::job::thread_cpu_seconds();
                    let mut partial = Partial::default();
                    partial.drivers.resize_with(max_driver as usize + 1, DriverAggregate::default);
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = order.get(index) else { break };
                        scan_file(&root.join(&file.path), file, config, deduplicate.then_some(&seen), &mut partial)?;
                    }
                    partial.cpu_seconds = crate::runtime::job::thread_cpu_seconds() - cpu_start;
                    Ok(partial)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a batch thread panicked; its message is above"))
            .collect()
    });
    let mut partials = partials.into_iter();
    // The first thread's partial becomes the total: absorbing it into an empty one would copy
    // every driver once more.
    let mut total = partials.next().transpose()?.unwrap_or_default();
    for partial in partials {
        total.absorb(partial?, config.session_gap_us);
    }
    let stats = BatchStats {
        files: files.len() as u64,
        rows: total.rows,
        events: total.events,
        duplicates: total.duplicates,
        bytes: files.iter().map(|file| file.bytes).sum(),
        seconds: 0.0,
        cpu_seconds: total.cpu_seconds,
    };
    let views = total.into_views();
    Ok((views, BatchStats { seconds: started.elapsed().as_secs_f64(), ..stats }))
}

fn scan_file(
    path: &Path,
    file_entry: &DataFile,
    config: &QueryConfig,
    seen: Option<&SeenIds>,
    partial: &mut Partial,
) -> Result<(), MasterError> {
    let bytes = crate::lambda::master::read_checked(path, file_entry)?;
    crate::lambda::master::decode_guarded(path, || scan_bytes(path, bytes, file_entry, config, seen, partial))
}

fn scan_bytes(
    path: &Path,
    bytes: bytes::Bytes,
    file_entry: &DataFile,
    config: &QueryConfig,
    seen: Option<&SeenIds>,
    partial: &mut Partial,
) -> Result<(), MasterError> {
    let format = |problem: String| MasterError::Format { path: path.display().to_string(), problem };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|error| format(error.to_string()))?;
    let wanted = [
        column::EVENT_ID,
        column::EVENT_TIME,
        column::KIND,
        column::ZONE,
        column::LAT,
        column::LON,
        column::DRIVER,
        column::FARE,
        column::DISTANCE,
    ];
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader =
        builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(|error| format(error.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|error| format(error.to_string()))?;
        let column = |position: usize| batch.column(position).as_any();
        let missing = || format("a column has the wrong type; it was not written by lk".to_owned());
        let ids = column(0).downcast_ref::<UInt64Array>().ok_or_else(missing)?.values();
        let times = column(1).downcast_ref::<TimestampMicrosecondArray>().ok_or_else(missing)?.values();
        let kinds = column(2).downcast_ref::<DictionaryArray<Int8Type>>().ok_or_else(missing)?;
        let zones = column(3).downcast_ref::<UInt64Array>().ok_or_else(missing)?.values();
        let lats = column(4).downcast_ref::<Int32Array>().ok_or_else(missing)?.values();
        let lons = column(5).downcast_ref::<Int32Array>().ok_or_else(missing)?.values();
        // Null where the kind has no such field; the kind says when a value is there.
        let drivers = column(6).downcast_ref::<UInt32Array>().ok_or_else(missing)?.values();
        let fares = column(7).downcast_ref::<UInt32Array>().ok_or_else(missing)?.values();
        let distances = column(8).downcast_ref::<UInt32Array>().ok_or_else(missing)?.values();
        let codes = kind_codes(kinds);
        let keys = kinds.keys().values();
        partial.rows += batch.num_rows() as u64;
        // Every id within the manifest's maxima (which size the tables): otherwise the file is
        // damaged (a page's values changed on disk).
        if let Some(row) = (0..batch.num_rows()).find(|&row| ids[row] > file_entry.max_event_id) {
            return Err(format(format!(
                "row {row} has event id {}, above the manifest's {} for it: the file is damaged",
                ids[row], file_entry.max_event_id
            )));
        }
        for row in 0..batch.num_rows() {
            if let Some(ahead) = drivers.get(row + PREFETCH_ROWS)
                && let Some(aggregate) = partial.drivers.get(*ahead as usize)
            {
                crate::runtime::idmap::prefetch(aggregate);
            }
            if seen.is_some_and(|seen| !seen.insert(ids[row])) {
                partial.duplicates += 1;
                continue;
            }
            partial.events += 1;
            let time = times[row];
            let code = codes.get(keys[row] as usize).copied().unwrap_or(0);
            if code == EventKind::DriverPing as u8 {
                let location = Location {
                    event_time_us: time,
                    event_id: ids[row],
                    lat_e6: lats[row],
                    lon_e6: lons[row],
                    zone: zones[row],
                };
                let driver = partial.driver(checked_driver(drivers[row], file_entry, row, &format)?);
                if location.is_newer_than(&driver.location) {
                    driver.location = location;
                }
                let ping = Session::single(time, false, ids[row]);
                add_activity(&mut driver.sessions, ping, config.session_gap_us);
            } else if code == EventKind::PickedUp as u8 {
                let start = QueryConfig::tumbling_start(time, config.rides_window_us);
                let driver = checked_driver(drivers[row], file_entry, row, &format)?;
                let cell = partial.rides.entry((driver, start)).or_default();
                cell.rides += 1;
                cell.pickup_lat_e6_sum += i64::from(lats[row]);
                cell.pickup_lon_e6_sum += i64::from(lons[row]);
                cell.ids = cell.ids.wrapping_add(id_mark(ids[row]));
                let ride = Session::single(time, true, ids[row]);
                add_activity(&mut partial.driver(driver).sessions, ride, config.session_gap_us);
            } else if code == EventKind::RideRequested as u8 {
                for start in config.demand_window_starts(time) {
                    partial.demand.entry((zones[row], start)).or_default().add(ids[row]);
                }
            } else if code == EventKind::DroppedOff as u8 {
                let start = QueryConfig::tumbling_start(time, config.trends_window_us);
                partial.trends.entry((zones[row], start)).or_default().add(ids[row], fares[row], distances[row]);
            }
        }
    }
    Ok(())
}

/// Adds one event (a session of one point) to a driver's sessions, sorted by start and at least
/// a gap apart: it can only touch its two neighbours, found by binary search, so a driver with a
/// day of sessions costs a search, not a scan. Files are read in any order, so events arrive in
/// any order.
#[inline]
fn add_activity(sessions: &mut SmallVec<[Session; 1]>, event: Session, gap_us: i64) {
    let time = event.start_us;
    debug_assert_eq!(event.start_us, event.last_us);
    if let Some(latest) = sessions.last_mut()
        && time >= latest.start_us
        && time - latest.last_us < gap_us
    {
        // The common case: the driver's latest session goes on.
        latest.absorb(&event);
        return;
    }
    let after = sessions.partition_point(|session| session.start_us <= time);
    let touches_before = after > 0 && time - sessions[after - 1].last_us < gap_us;
    let touches_after = after < sessions.len() && sessions[after].start_us - time < gap_us;
    match (touches_before, touches_after) {
        (false, false) => sessions.insert(after, event),
        (true, false) => sessions[after - 1].absorb(&event),
        (false, true) => sessions[after].absorb(&event),
        (true, true) => {
            let next = sessions.remove(after);
            let before = &mut sessions[after - 1];
            before.absorb(&event);
            before.absorb(&next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::queries::sessions_from_sorted;

    #[test]
    fn a_damaged_data_file_is_a_clear_error_naming_it() {
        let directory = tempfile::tempdir().unwrap();
        let config = QueryConfig {
            rides_window_us: 300_000_000,
            demand_window_us: 300_000_000,
            demand_slide_us: 60_000_000,
            session_gap_us: 600_000_000,
            trends_window_us: 3_600_000_000,
            watermark_delay_us: 2_000_000,
            allowed_lateness_us: 30_000_000,
        };
        let file = |path: &str| DataFile {
            path: path.to_owned(),
            epoch: 0,
            rows: 1,
            bytes: 10,
            max_event_id: 10,
            max_driver_id: 10,
            xxh3: None,
        };
        std::fs::write(directory.path().join("torn.parquet"), b"PAR1 this is not parquet").unwrap();
        for (name, expected) in [("torn.parquet", "torn.parquet"), ("absent.parquet", "absent.parquet")] {
            let error = compute(directory.path(), &[file(name)], &config, 2, true).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn activity_in_any_order_makes_the_sessions_of_the_sorted_activity() {
        let gap = 600;
        let mut state = 7u64;
        for round in 0..200 {
            let mut points: Vec<(i64, bool, u64)> = (0..40u64)
                .map(|id| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (((state >> 33) % 20_000) as i64, (state >> 20).is_multiple_of(5), id)
                })
                .collect();
            let mut sessions = SmallVec::new();
            for &(time, ride, id) in &points {
                add_activity(&mut sessions, Session::single(time, ride, id), gap);
            }
            points.sort_unstable();
            assert_eq!(sessions.to_vec(), sessions_from_sorted(&points, gap), "round {round}");
        }
    }
}
