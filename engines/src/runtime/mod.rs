//! The streaming runtime: one task per input partition, holding keyed window state.
//!
//! A task decodes a batch of records (malformed ones go to the dead-letter count with their
//! reason), advances its stream time, applies each event to the five queries under the lateness
//! policy of [`crate::runtime::queries`], then fires the windows its watermark has passed and purges the
//! ones that can no longer change. What changed is collected as [`ViewChanges`] for the serving
//! store. Windows emit when the watermark passes their end and re-emit on each accepted late
//! event until they close.
//!
//! A task's whole state, with the offset of the next record to read, is its [`Checkpoint`]:
//! restoring one and replaying from its offset reproduces exactly the changes made after it.
//!
//! **Architecture Invariant:** a task never reads the clock; latency is measured by its caller
//! from the due times the task reports.

pub mod background;
pub mod idmap;
pub mod job;
pub mod queries;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::runtime::idmap::IdMap;

use lk_simulator::codec::{DecodeError, decode_record};
use lk_simulator::event::{Defect, Payload};

use crate::log::RecordBatch;
use crate::runtime::queries::{Demand, Location, QueryConfig, RideCount, Session, Trend, session_activity};
use crate::sink::serving::{Emitted, ViewChanges};

/// A windowed aggregate keyed by `K`, with firing and purging by watermark.
#[derive(Debug)]
struct WindowStore<K, V> {
    /// Value, whether it has been emitted, and the due time (ns since the run's start) of its
    /// last contribution: where a result's processing latency starts.
    cells: FxHashMap<K, (V, bool, u64)>,
    /// Window end → keys to fire.
    to_fire: BTreeMap<i64, Vec<K>>,
    /// Window end → keys to purge once closed.
    to_purge: BTreeMap<i64, Vec<K>>,
}

impl<K, V> Default for WindowStore<K, V> {
    fn default() -> Self {
        Self { cells: FxHashMap::default(), to_fire: BTreeMap::new(), to_purge: BTreeMap::new() }
    }
}

impl<K: Clone, V: Clone> Clone for WindowStore<K, V> {
    fn clone(&self) -> Self {
        Self { cells: self.cells.clone(), to_fire: self.to_fire.clone(), to_purge: self.to_purge.clone() }
    }

    /// Into the memory this store holds (hash maps reuse their table when it is large enough).
    fn clone_from(&mut self, source: &Self) {
        self.cells.clone_from(&source.cells);
        self.to_fire.clone_from(&source.to_fire);
        self.to_purge.clone_from(&source.to_purge);
    }
}

impl<K, V> WindowStore<K, V> {
    /// Empties the store, keeping the cells' memory.
    fn clear(&mut self) {
        self.cells.clear();
        self.to_fire.clear();
        self.to_purge.clear();
    }
}

impl<K: Copy + Eq + std::hash::Hash, V: Copy + Default> WindowStore<K, V> {
    /// Updates a cell with a contribution due at `due_ns`; returns its value if it was already
    /// emitted (so the caller re-emits it).
    #[inline]
    fn update(&mut self, key: K, end_us: i64, due_ns: u64, change: impl FnOnce(&mut V)) -> Option<V> {
        let mut created = false;
        let (value, fired, last_due_ns) = self.cells.entry(key).or_insert_with(|| {
            created = true;
            (V::default(), false, 0)
        });
        change(value);
        *last_due_ns = (*last_due_ns).max(due_ns);
        let result = fired.then_some(*value);
        if created {
            self.to_fire.entry(end_us).or_default().push(key);
            self.to_purge.entry(end_us).or_default().push(key);
        }
        result
    }

    /// Emits every unfired window ending at or before `watermark_us`: (key, value, the
    /// window's end, its last contribution's due time).
    fn fire(&mut self, watermark_us: i64, mut emit: impl FnMut(K, V, FiredWindow)) {
        while let Some(entry) = self.to_fire.first_entry() {
            if *entry.key() > watermark_us {
                break;
            }
            let (end, keys) = entry.remove_entry();
            for key in keys {
                if let Some((value, fired, last_due_ns)) = self.cells.get_mut(&key) {
                    *fired = true;
                    emit(key, *value, FiredWindow { end_us: end, last_due_ns: *last_due_ns });
                }
            }
        }
    }

    /// Drops windows that are closed at `watermark_us`.
    fn purge(&mut self, config: &QueryConfig, watermark_us: i64) {
        while let Some(entry) = self.to_purge.first_entry() {
            if !config.is_closed(*entry.key(), watermark_us) {
                break;
            }
            for key in entry.remove() {
                self.cells.remove(&key);
            }
        }
    }
}

/// How many records ahead a task starts loading per-driver state.
const PREFETCH_DISTANCE: usize = 8;

/// Session checks are grouped into buckets of this much event time, so that millions of
/// sessions share a few thousand timer entries; a session fires at most this late.
const SESSION_CHECK_BUCKET_US: i64 = 100_000;

/// The check bucket at or after `time_us`.
#[inline]
fn check_bucket(time_us: i64) -> i64 {
    time_us.div_euclid(SESSION_CHECK_BUCKET_US) * SESSION_CHECK_BUCKET_US
        + if time_us.rem_euclid(SESSION_CHECK_BUCKET_US) == 0 { 0 } else { SESSION_CHECK_BUCKET_US }
}

/// One event's contribution to a driver's sessions.
#[derive(Clone, Copy, Debug)]
struct Activity {
    time_us: i64,
    is_ride: bool,
    event_id: u64,
    due_ns: u64,
}

/// What a task keeps per driver.
#[derive(Clone, Debug)]
struct DriverState {
    /// The latest ping (`event_id` 0 before the first).
    location: Location,
    /// Open sessions, sorted by start, at least a gap apart; almost always one.
    sessions: SmallVec<[SessionState; 1]>,
}

impl Default for DriverState {
    fn default() -> Self {
        Self { location: Location::ABSENT, sessions: SmallVec::new() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SessionState {
    session: Session,
    /// The due time (ns since the run's start) of its last contribution.
    last_due_ns: u64,
    /// The start under which it was last emitted (`None` before its first emission).
    served_start: Option<i64>,
    /// Whether it changed since its last emission.
    dirty: bool,
}

/// Counters of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskCounters {
    /// Records read.
    pub records: u64,
    /// Valid events processed.
    pub events: u64,
    /// Records that did not decode, by defect class.
    pub dead_lettered: [u64; 4],
    /// Contributions dropped as late, per query.
    pub late_dropped: [u64; 5],
}

impl TaskCounters {
    /// Adds another task's counters to these.
    pub fn add(&mut self, other: &TaskCounters) {
        self.records += other.records;
        self.events += other.events;
        for (sum, count) in self.dead_lettered.iter_mut().zip(other.dead_lettered) {
            *sum += count;
        }
        for (sum, count) in self.late_dropped.iter_mut().zip(other.late_dropped) {
            *sum += count;
        }
    }
}

/// A window result emitted for the first time (a window of Q2, Q3 or Q5, or a Q4 session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FiredWindow {
    /// The window's end in event time, µs (a session's: its last activity plus the gap).
    pub end_us: i64,
    /// The due time (ns since the run's start) of the last event that contributed to it.
    pub last_due_ns: u64,
}

/// How long a reading loop waits when a pass over its partitions found nothing: 1 ms after a
/// pass that read something, doubling on each empty pass up to 8 ms. A loop that waited 1 ms
/// every time asked its readers (and, over Kafka, the broker for end offsets) a thousand times
/// a second while idle: two engines' loops spent as much CPU idle as working at 100k events/s
/// on two cores shared with the broker. Under load a pass rarely finds nothing, so the wait
/// stays at 1 ms; at a trickle the wait costs at most 8 ms of latency.
#[derive(Clone, Copy, Debug)]
pub struct IdleBackoff {
    wait: std::time::Duration,
}

impl IdleBackoff {
    /// The first wait.
    pub const FIRST: std::time::Duration = std::time::Duration::from_millis(1);
    /// The longest wait.
    pub const LONGEST: std::time::Duration = std::time::Duration::from_millis(8);

    /// A backoff at its first wait.
    pub fn new() -> Self {
        Self { wait: Self::FIRST }
    }

    /// After a pass: the wait before the next one if it found nothing (and the next wait,
    /// doubled), or `None` after one that read something (and the next wait back to the first).
    pub fn after_pass(&mut self, progressed: bool) -> Option<std::time::Duration> {
        if progressed {
            self.wait = Self::FIRST;
            return None;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(Self::LONGEST);
        Some(wait)
    }
}

impl Default for IdleBackoff {
    fn default() -> Self {
        Self::new()
    }
}

/// One offset in this many is a stage sample (when it is a ping that moved its driver
/// forward): by offset rather than one per batch, so that a backlog's large batches are
/// sampled as densely as the steady state's small ones.
pub const STAGE_SAMPLE_EVERY: u64 = 64;

/// When one sampled ping passed each stage of an engine, for the latency breakdown by stage
/// (docs/measurement.md): a ping at an offset that is a multiple of [`STAGE_SAMPLE_EVERY`] that
/// moved its driver forward. The times are
/// the run's clock (ns); zero is a stage the ping did not pass (a direct sink has no commit).
/// Where the ping was before the engine read it comes from the producer, by its offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageSample {
    /// The input partition it was read from.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Its due time, ns since the run's start (as in [`BatchOutcome::location_due_ns`]).
    pub due_ns: u64,
    /// When the engine's read of its batch returned.
    pub read_ns: u64,
    /// When its batch was processed (the state updated, the change encoded or applied).
    pub processed_ns: u64,
    /// When its change was handed to a transaction (a transactional sink only).
    pub handed_ns: u64,
    /// When that transaction committed (a transactional sink only).
    pub committed_ns: u64,
}

/// What processing a batch produced, for the caller to measure.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Due times (ns since the run's start) of the pings whose location changed.
    pub location_due_ns: Vec<u64>,
    /// The stage samples among them (see [`StageSample`]).
    pub samples: Vec<StageSample>,
    /// Window results emitted for the first time.
    pub fired_windows: Vec<FiredWindow>,
    /// Window results emitted again because a late event (within the allowed lateness)
    /// changed them after their first emission.
    pub revised: u64,
    /// The batch's dead letters: offset and reason.
    pub dead_letters: Vec<(u64, DecodeError)>,
}

impl BatchOutcome {
    fn clear(&mut self) {
        self.location_due_ns.clear();
        self.samples.clear();
        self.fired_windows.clear();
        self.revised = 0;
        self.dead_letters.clear();
    }

    /// Whether there is anything to measure in it.
    pub fn is_unmeasured(&self) -> bool {
        self.location_due_ns.is_empty() && self.fired_windows.is_empty() && self.revised == 0
    }

    /// Stamps the batch's stage samples with when its read returned and when it was processed.
    pub fn stamp(&mut self, read_ns: u64, processed_ns: u64) {
        for sample in self.samples.iter_mut().filter(|sample| sample.read_ns == 0) {
            sample.read_ns = read_ns;
            sample.processed_ns = processed_ns;
        }
    }

    /// Stamps every stage sample not yet handed to a transaction with `handed_ns`.
    pub fn stamp_handed(&mut self, handed_ns: u64) {
        for sample in self.samples.iter_mut().filter(|sample| sample.handed_ns == 0) {
            sample.handed_ns = handed_ns;
        }
    }

    /// Stamps every stage sample with the commit of its transaction at `committed_ns`.
    pub fn stamp_committed(&mut self, committed_ns: u64) {
        for sample in self.samples.iter_mut().filter(|sample| sample.committed_ns == 0) {
            sample.committed_ns = committed_ns;
        }
    }

    /// Adds another outcome's measurements (not its dead letters) to these.
    pub fn extend_measured(&mut self, other: &BatchOutcome) {
        self.location_due_ns.extend_from_slice(&other.location_due_ns);
        self.samples.extend_from_slice(&other.samples);
        self.fired_windows.extend_from_slice(&other.fired_windows);
        self.revised += other.revised;
    }
}

/// One partition's task.
#[derive(Clone, Debug)]
pub struct Task {
    /// The partition it reads.
    pub partition: u32,
    /// Partitions of its topic.
    partitions: u32,
    config: QueryConfig,
    /// The offset of the next record to read.
    pub offset: u64,
    stream_time_us: i64,
    rides: WindowStore<(u32, i64), RideCount>,
    demand: WindowStore<(u64, i64), Demand>,
    trends: WindowStore<(u64, i64), Trend>,
    /// Per driver: Q1's latest location and Q4's open sessions, together so that a ping
    /// touches one hash entry.
    drivers: IdMap<DriverState>,
    /// Check time → drivers whose sessions may be due to fire or purge then.
    session_checks: BTreeMap<i64, Vec<u32>>,
    /// Counters.
    pub counters: TaskCounters,
}

impl Task {
    /// A fresh task reading `partition` (of `partitions`) from `offset`.
    pub fn new(partition: u32, partitions: u32, config: QueryConfig, offset: u64) -> Self {
        Self {
            partition,
            config,
            offset,
            stream_time_us: i64::MIN,
            rides: WindowStore::default(),
            demand: WindowStore::default(),
            trends: WindowStore::default(),
            drivers: IdMap::new(partitions, partition),
            partitions,
            session_checks: BTreeMap::new(),
            counters: TaskCounters::default(),
        }
    }

    /// Empties the task's state and counters for a fresh start at its offset, as
    /// [`Task::new`] there would, but keeping the memory of its state: the Lambda speed layer
    /// restarts its tasks at every batch cutoff, and fresh tasks freed and faulted in again
    /// hundreds of megabytes of driver state, stalling the layer for over a second each time.
    pub fn restart(&mut self) {
        self.stream_time_us = i64::MIN;
        self.rides.clear();
        self.demand.clear();
        self.trends.clear();
        self.drivers.clear();
        self.session_checks.clear();
        self.counters = TaskCounters::default();
    }

    /// Makes this task a copy of `source` in the memory it already holds (a checkpoint's copy
    /// taken into the last checkpoint's: cloning afresh faulted in hundreds of megabytes and
    /// stalled the worker for seconds at rush hour).
    pub fn copy_from(&mut self, source: &Task) {
        self.partition = source.partition;
        self.partitions = source.partitions;
        self.config = source.config;
        self.offset = source.offset;
        self.stream_time_us = source.stream_time_us;
        self.rides.clone_from(&source.rides);
        self.demand.clone_from(&source.demand);
        self.trends.clone_from(&source.trends);
        self.drivers.copy_from(&source.drivers);
        self.session_checks.clone_from(&source.session_checks);
        self.counters.clone_from(&source.counters);
    }

    /// Moves the task out, leaving an empty task at the same position in its place: for a final
    /// checkpoint, which can take the state itself rather than a copy of it.
    pub fn take(&mut self) -> Task {
        let empty = Task::new(self.partition, self.partitions, self.config, self.offset);
        std::mem::replace(self, empty)
    }

    /// The watermark now.
    pub fn watermark_us(&self) -> i64 {
        self.config.watermark(self.stream_time_us)
    }

    /// Processes a batch read from offset `self.offset`; the task's offset moves past it.
    pub fn process(&mut self, records: &RecordBatch, changes: &mut ViewChanges, outcome: &mut BatchOutcome) {
        outcome.clear();
        let config = self.config;
        for (index, (_, value)) in records.iter().enumerate() {
            if index + PREFETCH_DISTANCE < records.len() {
                // Start loading the state of the driver a few records ahead (its id is at a fixed
                // offset of the binary record; a malformed record only wastes a hint).
                let (_, ahead) = records.get(index + PREFETCH_DISTANCE);
                if let Some(bytes) = ahead.get(4..8) {
                    self.drivers.prefetch(u32::from_le_bytes(bytes.try_into().expect("4 bytes")));
                }
            }
            self.counters.records += 1;
            let event = match decode_record(value) {
                Ok(event) => event,
                Err(error) => {
                    self.counters.dead_lettered[error.defect() as usize] += 1;
                    outcome.dead_letters.push((self.offset + index as u64, error));
                    continue;
                }
            };
            self.counters.events += 1;
            self.stream_time_us = self.stream_time_us.max(event.event_time_us);
            let watermark = config.watermark(self.stream_time_us);
            let time = event.event_time_us;
            match event.payload {
                Payload::DriverPing { driver_id, .. } => {
                    let location = Location::of(&event);
                    let current = &mut self.drivers.get_mut(driver_id).location;
                    if location.is_newer_than(current) || *current == location {
                        *current = location;
                        changes.locations.push((driver_id, location));
                        if (self.offset + index as u64).is_multiple_of(STAGE_SAMPLE_EVERY) {
                            outcome.samples.push(StageSample {
                                partition: self.partition,
                                offset: self.offset + index as u64,
                                due_ns: event.due_ns,
                                ..StageSample::default()
                            });
                        }
                        outcome.location_due_ns.push(event.due_ns);
                    }
                }
                Payload::PickedUp { driver_id, .. } => {
                    let start = QueryConfig::tumbling_start(time, config.rides_window_us);
                    let end = start + config.rides_window_us;
                    if config.is_closed(end, watermark) {
                        self.counters.late_dropped[1] += 1;
                    } else if let Some(value) =
                        self.rides.update((driver_id, start), end, event.due_ns, |cell| cell.add(&event))
                    {
                        changes.rides.push(((driver_id, start), value));
                        outcome.revised += 1;
                    }
                }
                Payload::RideRequested { .. } => {
                    for start in config.demand_window_starts(time) {
                        let end = start + config.demand_window_us;
                        if config.is_closed(end, watermark) {
                            self.counters.late_dropped[2] += 1;
                        } else if let Some(value) =
                            self.demand
                                .update((event.zone.0, start), end, event.due_ns, |cell| cell.add(event.event_id))
                        {
                            changes.demand.push(((event.zone.0, start), value));
                            outcome.revised += 1;
                        }
                    }
                }
                Payload::DroppedOff { fare_cents, distance_m, .. } => {
                    let start = QueryConfig::tumbling_start(time, config.trends_window_us);
                    let end = start + config.trends_window_us;
                    if config.is_closed(end, watermark) {
                        self.counters.late_dropped[4] += 1;
                    } else if let Some(value) = self.trends.update((event.zone.0, start), end, event.due_ns, |cell| {
                        cell.add(event.event_id, fare_cents, distance_m)
                    }) {
                        changes.trends.push(((event.zone.0, start), value));
                        outcome.revised += 1;
                    }
                }
                _ => {}
            }
            if let Some((driver, is_ride)) = session_activity(&event) {
                if config.session_event_is_late(time, watermark) {
                    self.counters.late_dropped[3] += 1;
                } else {
                    let activity = Activity { time_us: time, is_ride, event_id: event.event_id, due_ns: event.due_ns };
                    if self.add_session_activity(driver, activity, changes) {
                        outcome.revised += 1;
                    }
                }
            }
        }
        self.offset += records.len() as u64;
        self.advance_watermark(self.watermark_us(), changes, outcome);
    }

    /// Adds a driver's activity to its sessions; returns whether a session that was already
    /// emitted changed (and was emitted again).
    fn add_session_activity(&mut self, driver: u32, activity: Activity, changes: &mut ViewChanges) -> bool {
        let Activity { time_us, is_ride, event_id, due_ns } = activity;
        let gap = self.config.session_gap_us;
        let sessions = &mut self.drivers.get_mut(driver).sessions;
        if let Some(latest) = sessions.last_mut()
            && time_us >= latest.session.start_us
            && time_us - latest.session.last_us < gap
        {
            // The common case, a ping in the driver's current session: it extends that session
            // and cannot reach an earlier one (sessions are at least a gap apart).
            latest.session.absorb(&Session::single(time_us, is_ride, event_id));
            latest.last_due_ns = latest.last_due_ns.max(due_ns);
            latest.dirty = true;
            if latest.served_start.is_some() {
                Self::emit_session(driver, latest, changes);
                return true;
            }
            return false;
        }
        // Sessions a gap or less away on either side merge with the new event.
        let mut merged = SessionState {
            session: Session::single(time_us, is_ride, event_id),
            last_due_ns: due_ns,
            served_start: None,
            dirty: true,
        };
        let mut index = 0;
        let mut scheduled = false;
        while index < sessions.len() {
            let existing = sessions[index];
            let touches = time_us - existing.session.last_us < gap && existing.session.start_us - time_us < gap;
            if touches {
                merged.session.absorb(&existing.session);
                merged.last_due_ns = merged.last_due_ns.max(existing.last_due_ns);
                // The merged session keeps the served identity of the first one merged; the rest
                // are deleted from the serving store.
                match (merged.served_start, existing.served_start) {
                    (None, served) => merged.served_start = served,
                    (Some(_), Some(start)) => changes.sessions_deleted.push((driver, start)),
                    (Some(_), None) => {}
                }
                // The merged session's check is already pending (at or before its new end).
                scheduled = true;
                sessions.remove(index);
            } else {
                index += 1;
            }
        }
        let check_at = merged.session.last_us + gap;
        let position = sessions.partition_point(|state| state.session.start_us < merged.session.start_us);
        sessions.insert(position, merged);
        let revised = merged.served_start.is_some();
        if revised {
            // Already emitted once: re-emit the change now, as windows do for late events.
            Self::emit_session(driver, &mut sessions[position], changes);
        }
        if !scheduled {
            self.session_checks.entry(check_bucket(check_at)).or_default().push(driver);
        }
        revised
    }

    fn emit_session(driver: u32, state: &mut SessionState, changes: &mut ViewChanges) {
        if let Some(start) = state.served_start
            && start != state.session.start_us
        {
            changes.sessions_deleted.push((driver, start));
        }
        changes.sessions.push(((driver, state.session.start_us), state.session));
        state.served_start = Some(state.session.start_us);
        state.dirty = false;
    }

    /// Fires and purges what the watermark has passed.
    fn advance_watermark(&mut self, watermark_us: i64, changes: &mut ViewChanges, outcome: &mut BatchOutcome) {
        let config = self.config;
        self.rides.fire(watermark_us, |key, value, fired| {
            changes.rides.push((key, value));
            outcome.fired_windows.push(fired);
        });
        self.demand.fire(watermark_us, |key, value, fired| {
            changes.demand.push((key, value));
            outcome.fired_windows.push(fired);
        });
        self.trends.fire(watermark_us, |key, value, fired| {
            changes.trends.push((key, value));
            outcome.fired_windows.push(fired);
        });
        self.rides.purge(&config, watermark_us);
        self.demand.purge(&config, watermark_us);
        self.trends.purge(&config, watermark_us);
        let gap = config.session_gap_us;
        while let Some(entry) = self.session_checks.first_entry() {
            if *entry.key() > watermark_us {
                break;
            }
            for driver in entry.remove() {
                let sessions = &mut self.drivers.get_mut(driver).sessions;
                let mut next_check: Option<i64> = None;
                for state in sessions.iter_mut() {
                    let fire_at = state.session.last_us + gap;
                    if fire_at <= watermark_us {
                        if state.served_start.is_none() {
                            outcome.fired_windows.push(FiredWindow { end_us: fire_at, last_due_ns: state.last_due_ns });
                        }
                        if state.dirty {
                            Self::emit_session(driver, state, changes);
                        }
                    } else {
                        next_check = Some(next_check.map_or(fire_at, |at: i64| at.min(fire_at)));
                    }
                }
                // A session can still absorb an accepted event until the watermark passes its
                // end by two gaps plus the allowed lateness (an event a gap after it, not late).
                sessions.retain(|state| !config.is_closed(state.session.last_us + 2 * gap, watermark_us));
                let purge_at =
                    sessions.iter().map(|state| state.session.last_us + 2 * gap + config.allowed_lateness_us).min();
                if let Some(at) = next_check.or(purge_at) {
                    self.session_checks.entry(check_bucket(at)).or_default().push(driver);
                }
            }
        }
    }

    /// Fires every window, as at the end of the input (the watermark moves to the end of time).
    pub fn finish(&mut self, changes: &mut ViewChanges, outcome: &mut BatchOutcome) {
        outcome.clear();
        // Fire, but do not purge: the state stays valid for more input after a restart.
        let end_of_time = i64::MAX / 4;
        self.rides.fire(end_of_time, |key, value, _| changes.rides.push((key, value)));
        self.demand.fire(end_of_time, |key, value, _| changes.demand.push((key, value)));
        self.trends.fire(end_of_time, |key, value, _| changes.trends.push((key, value)));
        for (driver, state) in self.drivers.iter_mut() {
            for state in state.sessions.iter_mut() {
                if state.dirty {
                    Self::emit_session(driver, state, changes);
                }
            }
        }
    }

    /// The values of the windows that add up (Q2, Q3, Q5) as this task has emitted them so
    /// far: a fired window is re-emitted on every change, so its value is what was sent.
    pub fn emitted(&self) -> Emitted {
        fn fired<K: Copy + Eq + std::hash::Hash, V: Copy + Default>(store: &WindowStore<K, V>) -> FxHashMap<K, V> {
            store.cells.iter().filter(|(_, (_, fired, _))| *fired).map(|(key, (value, _, _))| (*key, *value)).collect()
        }
        Emitted { rides: fired(&self.rides), demand: fired(&self.demand), trends: fired(&self.trends) }
    }

    /// Contributions and cells held in state, for cost reporting.
    pub fn state_entries(&self) -> usize {
        self.drivers
            .iter()
            .map(|(_, state)| usize::from(state.location.event_id != 0) + state.sessions.len())
            .sum::<usize>()
            + self.rides.cells.len()
            + self.demand.cells.len()
            + self.trends.cells.len()
    }

    /// The dead-letter counts by defect name.
    pub fn dead_letters_by_defect(&self) -> BTreeMap<&'static str, u64> {
        Defect::ALL.iter().map(|defect| (defect.name(), self.counters.dead_lettered[*defect as usize])).collect()
    }
}

/// A task's state and offset, serialised.
pub mod checkpoint {
    use super::*;

    /// Writes little-endian integers.
    struct Writer(Vec<u8>);

    impl Writer {
        fn u64(&mut self, value: u64) {
            self.0.extend_from_slice(&value.to_le_bytes());
        }
        fn i64(&mut self, value: i64) {
            self.u64(value as u64);
        }
    }

    /// Reads them back, failing cleanly on truncated or corrupt input.
    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn u64(&mut self) -> Result<u64, String> {
            let bytes = self.bytes.get(self.at..self.at + 8).ok_or("the checkpoint ends early")?;
            self.at += 8;
            Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
        }
        fn i64(&mut self) -> Result<i64, String> {
            Ok(self.u64()? as i64)
        }
        fn count(&mut self) -> Result<usize, String> {
            let count = self.u64()? as usize;
            if count > self.bytes.len() {
                return Err(format!("a count of {count} is larger than the checkpoint"));
            }
            Ok(count)
        }
    }

    const MAGIC: u64 = 0x6C6B_5441_534B_0003; // "lkTASK" v3: cells and sessions carry their last due time

    fn write_store<K: Copy, V: Copy>(
        out: &mut Writer,
        store: &WindowStore<K, V>,
        key: impl Fn(&mut Writer, K),
        value: impl Fn(&mut Writer, V),
        end_of: impl Fn(K) -> i64,
    ) {
        out.u64(store.cells.len() as u64);
        let mut cells: Vec<_> = store.cells.iter().collect();
        cells.sort_by_key(|(key, _)| end_of(**key));
        for (cell_key, (cell_value, fired, last_due_ns)) in cells {
            key(out, *cell_key);
            value(out, *cell_value);
            out.u64(u64::from(*fired));
            out.u64(*last_due_ns);
        }
    }

    fn read_store<K: Copy + Eq + std::hash::Hash, V: Copy + Default>(
        input: &mut Reader<'_>,
        key: impl Fn(&mut Reader<'_>) -> Result<K, String>,
        value: impl Fn(&mut Reader<'_>) -> Result<V, String>,
        end_of: impl Fn(K) -> i64,
    ) -> Result<WindowStore<K, V>, String> {
        let mut store = WindowStore::default();
        for _ in 0..input.count()? {
            let cell_key = key(input)?;
            let cell_value = value(input)?;
            let fired = input.u64()? != 0;
            let last_due_ns = input.u64()?;
            let end = end_of(cell_key);
            store.cells.insert(cell_key, (cell_value, fired, last_due_ns));
            if !fired {
                store.to_fire.entry(end).or_default().push(cell_key);
            }
            store.to_purge.entry(end).or_default().push(cell_key);
        }
        Ok(store)
    }

    /// Serialises a task.
    pub fn save(task: &Task) -> Vec<u8> {
        let mut out = Vec::new();
        save_into(task, &mut out);
        out
    }

    /// Serialises a task into `buffer` (cleared first), reusing its allocation: a checkpoint is
    /// tens of megabytes at rush hour, and a fresh buffer each time costs as much in page faults
    /// as the serialising does.
    pub fn save_into(task: &Task, buffer: &mut Vec<u8>) {
        let config = task.config;
        buffer.clear();
        // Upper bound: a location (40 bytes) and a session (56 bytes plus its driver's 16) per
        // entry, so the buffer never grows by copying.
        buffer.reserve(256 + task.state_entries() * 112);
        let mut out = Writer(std::mem::take(buffer));
        out.u64(MAGIC);
        out.u64(u64::from(task.partition));
        out.u64(u64::from(task.partitions));
        out.u64(task.offset);
        out.i64(task.stream_time_us);
        let counters = &task.counters;
        out.u64(counters.records);
        out.u64(counters.events);
        counters.dead_lettered.iter().for_each(|&count| out.u64(count));
        counters.late_dropped.iter().for_each(|&count| out.u64(count));
        let located: Vec<(u32, &Location)> = task
            .drivers
            .iter()
            .filter(|(_, state)| state.location.event_id != 0)
            .map(|(driver, state)| (driver, &state.location))
            .collect();
        out.u64(located.len() as u64);
        for (driver, location) in located {
            out.u64(u64::from(driver));
            out.i64(location.event_time_us);
            out.u64(location.event_id);
            out.u64(u64::from(location.lat_e6 as u32) | (u64::from(location.lon_e6 as u32) << 32));
            out.u64(location.zone);
        }
        write_store(
            &mut out,
            &task.rides,
            |out, (driver, start)| {
                out.u64(u64::from(driver));
                out.i64(start);
            },
            |out, value| {
                out.u64(value.rides);
                out.i64(value.pickup_lat_e6_sum);
                out.i64(value.pickup_lon_e6_sum);
                out.u64(value.ids);
            },
            |(_, start)| start + config.rides_window_us,
        );
        let zone_key = |out: &mut Writer, (zone, start): (u64, i64)| {
            out.u64(zone);
            out.i64(start);
        };
        write_store(
            &mut out,
            &task.demand,
            zone_key,
            |out, value| {
                out.u64(value.requests);
                out.u64(value.ids);
            },
            |(_, start)| start + config.demand_window_us,
        );
        write_store(
            &mut out,
            &task.trends,
            zone_key,
            |out, value| {
                out.u64(value.rides);
                out.u64(value.fare_cents_sum);
                out.u64(value.distance_m_sum);
                out.u64(value.ids);
            },
            |(_, start)| start + config.trends_window_us,
        );
        let with_sessions: Vec<(u32, &SmallVec<[SessionState; 1]>)> = task
            .drivers
            .iter()
            .filter(|(_, state)| !state.sessions.is_empty())
            .map(|(driver, state)| (driver, &state.sessions))
            .collect();
        out.u64(with_sessions.len() as u64);
        for (driver, sessions) in with_sessions {
            out.u64(u64::from(driver));
            out.u64(sessions.len() as u64);
            for state in sessions {
                out.i64(state.session.start_us);
                out.i64(state.session.last_us);
                out.u64(state.session.pings);
                out.u64(state.session.rides);
                out.u64(state.session.ids);
                out.u64(u64::from(state.served_start.is_some()) | (u64::from(state.dirty) << 1));
                out.i64(state.served_start.unwrap_or(0));
                out.u64(state.last_due_ns);
            }
        }
        *buffer = out.0;
    }

    /// Restores a task saved by [`save`].
    pub fn load(bytes: &[u8], config: QueryConfig) -> Result<Task, String> {
        let mut input = Reader { bytes, at: 0 };
        if input.u64()? != MAGIC {
            return Err("not an lk task checkpoint (bad magic number)".to_owned());
        }
        let partition = u32::try_from(input.u64()?).map_err(|_| "partition out of range")?;
        let partitions = u32::try_from(input.u64()?).map_err(|_| "partition count out of range")?;
        if partitions == 0 || partition >= partitions {
            return Err(format!("partition {partition} of {partitions} is not a partition"));
        }
        let offset = input.u64()?;
        let mut task = Task::new(partition, partitions, config, offset);
        task.stream_time_us = input.i64()?;
        task.counters.records = input.u64()?;
        task.counters.events = input.u64()?;
        for count in task.counters.dead_lettered.iter_mut() {
            *count = input.u64()?;
        }
        for count in task.counters.late_dropped.iter_mut() {
            *count = input.u64()?;
        }
        for _ in 0..input.count()? {
            let driver = input.u64()? as u32;
            let event_time_us = input.i64()?;
            let event_id = input.u64()?;
            let position = input.u64()?;
            let zone = input.u64()?;
            task.drivers.get_mut(driver).location = Location {
                event_time_us,
                event_id,
                lat_e6: position as u32 as i32,
                lon_e6: (position >> 32) as u32 as i32,
                zone,
            };
        }
        task.rides = read_store(
            &mut input,
            |input| Ok((input.u64()? as u32, input.i64()?)),
            |input| {
                Ok(RideCount {
                    rides: input.u64()?,
                    pickup_lat_e6_sum: input.i64()?,
                    pickup_lon_e6_sum: input.i64()?,
                    ids: input.u64()?,
                })
            },
            |(_, start)| start + config.rides_window_us,
        )?;
        task.demand = read_store(
            &mut input,
            |input| Ok((input.u64()?, input.i64()?)),
            |input| Ok(Demand { requests: input.u64()?, ids: input.u64()? }),
            |(_, start)| start + config.demand_window_us,
        )?;
        task.trends = read_store(
            &mut input,
            |input| Ok((input.u64()?, input.i64()?)),
            |input| {
                Ok(Trend {
                    rides: input.u64()?,
                    fare_cents_sum: input.u64()?,
                    distance_m_sum: input.u64()?,
                    ids: input.u64()?,
                })
            },
            |(_, start)| start + config.trends_window_us,
        )?;
        for _ in 0..input.count()? {
            let driver = input.u64()? as u32;
            let mut sessions: SmallVec<[SessionState; 1]> = SmallVec::new();
            for _ in 0..input.count()? {
                let session = Session {
                    start_us: input.i64()?,
                    last_us: input.i64()?,
                    pings: input.u64()?,
                    rides: input.u64()?,
                    ids: input.u64()?,
                };
                let flags = input.u64()?;
                let served = input.i64()?;
                let last_due_ns = input.u64()?;
                sessions.push(SessionState {
                    session,
                    last_due_ns,
                    served_start: (flags & 1 != 0).then_some(served),
                    dirty: flags & 2 != 0,
                });
            }
            let check_at = sessions.iter().map(|state| state.session.last_us + config.session_gap_us).min();
            if let Some(at) = check_at {
                task.session_checks.entry(check_bucket(at)).or_default().push(driver);
            }
            task.drivers.get_mut(driver).sessions = sessions;
        }
        if input.at != bytes.len() {
            return Err(format!("{} bytes left over after the checkpoint", bytes.len() - input.at));
        }
        Ok(task)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use lk_simulator::codec::{BINARY_RECORD_BYTES, encode_binary};
    use lk_simulator::event::{Event, LatLon, Payload, Zone};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_idle_loop_waits_longer_on_each_empty_pass_and_starts_over_after_work() {
        let mut idle = IdleBackoff::new();
        let waits: Vec<_> = (0..6).map(|_| idle.after_pass(false).unwrap().as_millis()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(idle.after_pass(true), None);
        assert_eq!(idle.after_pass(false), Some(IdleBackoff::FIRST));
    }

    #[test]
    fn a_batch_samples_the_pings_at_every_sixty_fourth_offset() {
        let mut task = Task::new(0, 1, config(), 0);
        let events: Vec<Event> = (0..200u64)
            .map(|index| {
                let mut event = ping(index + 1, 1_000 + index as i64, index as u32 + 1);
                event.due_ns = index * 1_000;
                event
            })
            .collect();
        let (mut changes, mut outcome) = (ViewChanges::default(), BatchOutcome::default());
        task.process(&batch(&events), &mut changes, &mut outcome);
        let sampled: Vec<(u64, u64)> = outcome.samples.iter().map(|sample| (sample.offset, sample.due_ns)).collect();
        assert_eq!(sampled, vec![(0, 0), (64, 64_000), (128, 128_000), (192, 192_000)]);
        outcome.stamp(5, 6);
        outcome.stamp_handed(7);
        outcome.stamp_committed(8);
        let times = |sample: &StageSample| (sample.read_ns, sample.processed_ns, sample.handed_ns, sample.committed_ns);
        assert!(outcome.samples.iter().all(|sample| times(sample) == (5, 6, 7, 8)));
    }
    use crate::runtime::queries::{id_mark, sessions_from_sorted};

    const MINUTE: i64 = 60_000_000;
    const ZONE: u64 = 0x882a100d2bfffff;

    /// Five-minute windows, ten-minute sessions, no watermark delay: the runtime's and the
    /// sinks' tests' queries.
    pub(crate) fn config() -> QueryConfig {
        QueryConfig {
            rides_window_us: 5 * MINUTE,
            demand_window_us: 5 * MINUTE,
            demand_slide_us: MINUTE,
            session_gap_us: 10 * MINUTE,
            trends_window_us: 60 * MINUTE,
            watermark_delay_us: 0,
            allowed_lateness_us: MINUTE,
        }
    }

    fn event(id: u64, time_us: i64, payload: Payload) -> Event {
        Event {
            event_id: id,
            event_time_us: time_us,
            due_ns: 0,
            zone: Zone(ZONE),
            position: LatLon::from_degrees(40.7, -73.9),
            payload,
        }
    }

    fn pickup(id: u64, time_us: i64, driver_id: u32) -> Event {
        event(id, time_us, Payload::PickedUp { ride_id: id, driver_id })
    }

    fn ping(id: u64, time_us: i64, driver_id: u32) -> Event {
        event(id, time_us, Payload::DriverPing { driver_id, speed_cmps: 0, heading_cdeg: 0 })
    }

    fn batch(events: &[Event]) -> RecordBatch {
        let mut batch = RecordBatch::new();
        let mut record = [0; BINARY_RECORD_BYTES];
        for event in events {
            encode_binary(event, None, &mut record);
            batch.push(0, &record);
        }
        batch
    }

    fn run(task: &mut Task, events: &[Event]) -> ViewChanges {
        let (mut changes, mut outcome) = (ViewChanges::default(), BatchOutcome::default());
        task.process(&batch(events), &mut changes, &mut outcome);
        changes
    }

    /// A task restarted in place behaves exactly as a new task at its offset: the state it
    /// kept the memory of (drivers' locations and open sessions, windows) is gone.
    #[test]
    fn a_restarted_task_behaves_as_a_new_one() {
        let drivers = 3000u32;
        let first: Vec<Event> = (0..drivers)
            .flat_map(|driver| {
                let id = u64::from(driver) * 2 + 1;
                [ping(id, MINUTE + i64::from(driver), driver), pickup(id + 1, 2 * MINUTE, driver)]
            })
            .collect();
        let second: Vec<Event> = (0..drivers / 2)
            .map(|driver| ping(10_000 + u64::from(driver), 4 * MINUTE + i64::from(driver), driver * 2))
            .chain([pickup(20_000, 4 * MINUTE, 5), ping(20_001, 11 * MINUTE, 7)])
            .collect();
        let mut restarted = Task::new(0, 1, config(), 0);
        run(&mut restarted, &first);
        restarted.restart();
        let mut fresh = Task::new(0, 1, config(), 0);
        let (mut a, mut b) = (run(&mut restarted, &second), run(&mut fresh, &second));
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "a restarted task processes as a new one");
        let mut outcome = BatchOutcome::default();
        restarted.finish(&mut a, &mut outcome);
        fresh.finish(&mut b, &mut outcome);
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "a restarted task's state is a new task's");
        assert!(!a.sessions.is_empty() && !a.rides.is_empty());
        assert_eq!(restarted.counters, fresh.counters);
        assert_eq!(restarted.emitted().rides.len(), fresh.emitted().rides.len());
        let locations = |task: &Task| task.drivers.iter().filter(|(_, state)| state.location.event_id != 0).count();
        assert_eq!(locations(&restarted), locations(&fresh));
        assert_eq!(locations(&fresh), (drivers / 2) as usize, "driver 0 is invalid; driver 7 is new");
    }

    /// A checkpoint copy taken into a used copy's memory is the task, byte for byte: whatever
    /// the used copy held (more drivers, other windows) is gone.
    #[test]
    fn a_copy_into_a_used_task_saves_as_the_task() {
        let events = |base: u64, drivers: u32, minute: i64| -> Vec<Event> {
            (1..drivers)
                .flat_map(|driver| {
                    let id = base + u64::from(driver) * 2;
                    [ping(id, minute * MINUTE + i64::from(driver), driver), pickup(id + 1, minute * MINUTE, driver)]
                })
                .collect()
        };
        let mut used = Task::new(0, 1, config(), 0);
        run(&mut used, &events(0, 5000, 1));
        run(&mut used, &events(100_000, 5000, 9));
        let mut task = Task::new(0, 1, config(), 0);
        run(&mut task, &events(200_000, 1200, 3));
        run(&mut task, &[ping(300_000, 5 * MINUTE, 17)]);
        used.copy_from(&task);
        assert_eq!(checkpoint::save(&used), checkpoint::save(&task));
        assert_eq!(checkpoint::save(&used), checkpoint::save(&task.clone()));
        assert_eq!(used.counters, task.counters);
    }

    #[test]
    fn a_tumbling_window_fires_when_the_watermark_passes_its_end() {
        let mut task = Task::new(0, 1, config(), 0);
        assert!(run(&mut task, &[pickup(1, MINUTE, 7), pickup(2, 4 * MINUTE, 7)]).rides.is_empty());
        // Stream time 5:00 is the window's end: it fires with both pickups.
        let changes = run(&mut task, &[ping(3, 5 * MINUTE, 9)]);
        assert_eq!(changes.rides.len(), 1);
        assert_eq!(changes.rides[0].0, (7, 0));
        assert_eq!(changes.rides[0].1.rides, 2);
    }

    #[test]
    fn a_late_event_within_the_allowed_lateness_updates_the_fired_window() {
        let mut task = Task::new(0, 1, config(), 0);
        run(&mut task, &[pickup(1, MINUTE, 7), ping(2, 5 * MINUTE + 30_000_000, 9)]);
        // 30 s after the window closed is within the minute of allowed lateness: re-emitted.
        let changes = run(&mut task, &[pickup(3, 2 * MINUTE, 7)]);
        assert_eq!(
            changes.rides,
            vec![(
                (7, 0),
                RideCount {
                    rides: 2,
                    pickup_lat_e6_sum: 81_400_000,
                    pickup_lon_e6_sum: -147_800_000,
                    ids: id_mark(1).wrapping_add(id_mark(3)),
                }
            )]
        );
        assert_eq!(task.counters.late_dropped[1], 0);
        // Past end plus allowed lateness: dropped to the side output and counted.
        run(&mut task, &[ping(4, 6 * MINUTE, 9)]);
        let changes = run(&mut task, &[pickup(5, 3 * MINUTE, 7)]);
        assert!(changes.rides.is_empty());
        assert_eq!(task.counters.late_dropped[1], 1);
    }

    #[test]
    fn an_event_bridging_two_sessions_merges_them_and_retracts_the_second() {
        let mut config = config();
        config.allowed_lateness_us = 30 * MINUTE;
        let mut task = Task::new(0, 1, config, 0);
        // Two sessions 12 minutes apart, both fired by later activity of another driver.
        run(&mut task, &[ping(1, 0, 7), ping(2, 12 * MINUTE, 7), ping(3, 40 * MINUTE, 9)]);
        let snapshot = |changes: &ViewChanges| changes.sessions.iter().filter(|((driver, _), _)| *driver == 7).count();
        // A late ping at 6 minutes is within a gap of both: one session from 0 to 12 minutes.
        let changes = run(&mut task, &[ping(4, 6 * MINUTE, 7)]);
        assert_eq!(snapshot(&changes), 1);
        let ids = [1, 2, 4].iter().fold(0u64, |sum, &id| sum.wrapping_add(id_mark(id)));
        assert_eq!(changes.sessions[0].1, Session { start_us: 0, last_us: 12 * MINUTE, pings: 3, rides: 0, ids });
        assert_eq!(changes.sessions_deleted, vec![(7, 12 * MINUTE)]);
    }

    #[test]
    fn a_window_is_never_emitted_before_the_watermark_reaches_it() {
        let mut task = Task::new(0, 1, config(), 0);
        let changes = run(&mut task, &[ping(1, 0, 7), ping(2, 9 * MINUTE, 7)]);
        assert!(changes.sessions.is_empty(), "a session fires only a gap after its last event");
        let changes = run(&mut task, &[ping(3, 19 * MINUTE, 8)]);
        let ids = id_mark(1).wrapping_add(id_mark(2));
        assert_eq!(
            changes.sessions,
            vec![((7, 0), Session { start_us: 0, last_us: 9 * MINUTE, pings: 2, rides: 0, ids })]
        );
    }

    proptest! {
        /// A checkpoint file is read back by a later process, perhaps of another version, perhaps
        /// damaged: whatever its bytes, loading gives a task or says what is wrong, never a
        /// panic or an allocation the bytes do not pay for. A real checkpoint with bytes
        /// flipped, cut short or extended, and garbage behind the magic number.
        #[test]
        fn any_bytes_load_as_a_checkpoint_or_an_error(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 0..4),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let mut task = Task::new(1, 2, config(), 0);
            let events: Vec<Event> = (0..40u64)
                .map(|id| if id % 3 == 0 { pickup(id + 1, id as i64 * MINUTE / 4, 7 + 2 * (id as u32 % 5)) } else {
                    ping(id + 1, id as i64 * MINUTE / 4, 7 + 2 * (id as u32 % 5))
                })
                .collect();
            run(&mut task, &events);
            let mut bytes = checkpoint::save(&task);
            prop_assert!(checkpoint::load(&bytes, config()).is_ok());
            for (at, mask) in flips {
                let index = at % bytes.len();
                bytes[index] ^= mask;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes.extend(&tail);
            let _ = checkpoint::load(&bytes, config());
            let mut behind_magic = checkpoint::save(&task)[..8].to_vec();
            behind_magic.extend(&garbage);
            let _ = checkpoint::load(&behind_magic, config());
        }

        /// Incremental session merging, whatever the arrival order, gives the sessions of the
        /// sorted activity (no lateness here: the watermark never passes anything).
        #[test]
        fn incremental_sessions_equal_sorted_sessions(times in proptest::collection::vec(0i64..(120 * MINUTE), 1..60)) {
            let mut config = config();
            config.watermark_delay_us = i64::MAX / 8;
            let mut task = Task::new(0, 1, config, 0);
            let events: Vec<Event> = times.iter().enumerate().map(|(index, &time)| ping(index as u64 + 1, time, 7)).collect();
            let mut changes = ViewChanges::default();
            let mut outcome = BatchOutcome::default();
            for event in &events {
                task.process(&batch(std::slice::from_ref(event)), &mut changes, &mut outcome);
            }
            changes.clear();
            task.finish(&mut changes, &mut outcome);
            let mut sorted: Vec<(i64, bool, u64)> =
                times.iter().enumerate().map(|(index, &time)| (time, false, index as u64 + 1)).collect();
            sorted.sort_unstable();
            let expected = sessions_from_sorted(&sorted, config.session_gap_us);
            let mut served: Vec<Session> = changes.sessions.iter().map(|(_, session)| *session).collect();
            served.sort_by_key(|session| session.start_us);
            prop_assert_eq!(served, expected);
        }

        /// The watermark never moves back, whatever the event times.
        #[test]
        fn the_watermark_is_monotonic(times in proptest::collection::vec(-MINUTE..(60 * MINUTE), 1..100)) {
            let mut task = Task::new(0, 1, config(), 0);
            let mut last = i64::MIN;
            for (index, &time) in times.iter().enumerate() {
                run(&mut task, &[ping(index as u64 + 1, time, 7)]);
                prop_assert!(task.watermark_us() >= last);
                last = task.watermark_us();
            }
        }

        /// A task restored from a checkpoint continues exactly as the original would.
        #[test]
        fn a_restored_task_continues_as_the_original(split in 1usize..40, seed in 0u64..1000) {
            let events: Vec<Event> = (0..40u64)
                .map(|index| {
                    let time = ((index * 7919 + seed * 31) % 40) as i64 * MINUTE / 2;
                    match index % 4 {
                        0 => pickup(index + 1, time, 7 + (index % 3) as u32),
                        _ => ping(index + 1, time, 7 + (index % 3) as u32),
                    }
                })
                .collect();
            let mut original = Task::new(0, 1, config(), 0);
            run(&mut original, &events[..split]);
            let mut restored = checkpoint::load(&checkpoint::save(&original), config()).unwrap();
            prop_assert_eq!(restored.offset, split as u64);
            let from_original = run(&mut original, &events[split..]);
            let from_restored = run(&mut restored, &events[split..]);
            // The same changes; their order within a batch is immaterial (distinct keys).
            let normal = |changes: &ViewChanges| {
                let mut lines: Vec<String> = changes.locations.iter().map(|change| format!("{change:?}")).collect();
                lines.extend(changes.rides.iter().map(|change| format!("{change:?}")));
                lines.extend(changes.sessions.iter().map(|change| format!("{change:?}")));
                lines.extend(changes.sessions_deleted.iter().map(|change| format!("deleted {change:?}")));
                lines.sort();
                lines
            };
            prop_assert_eq!(normal(&from_original), normal(&from_restored));
        }
    }

    #[test]
    fn corrupt_checkpoints_are_errors_not_panics() {
        let mut task = Task::new(0, 1, config(), 0);
        run(&mut task, &[ping(1, 0, 7), pickup(2, MINUTE, 7)]);
        let bytes = checkpoint::save(&task);
        for cut in [0, 7, 8, 40, bytes.len() - 1] {
            assert!(checkpoint::load(&bytes[..cut], config()).is_err(), "a checkpoint cut at {cut} loaded");
        }
        let mut wrong = bytes.clone();
        wrong[0] ^= 1;
        assert!(checkpoint::load(&wrong, config()).unwrap_err().contains("magic"));
    }
}
