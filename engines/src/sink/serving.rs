//! The serving store: the views queries read, versioned.
//!
//! Each version holds one partial view set per input partition (tasks write only their own), so
//! writers never contend; reads merge them (driver-keyed views are disjoint across partitions,
//! zone-keyed ones are summed). Writes are idempotent upserts and deletes of whole values, which
//! is what makes replay after a crash harmless: re-applying a change leaves the same value.
//! A new version can be built beside the active one and swapped in atomically (Kappa
//! reprocessing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustc_hash::FxHashMap;

use crate::runtime::idmap::IdMap;
use crate::runtime::queries::{Additive, Demand, Location, RideCount, Session, Trend, ViewSet};

/// Changes a task made to its partition's views, applied together.
#[derive(Clone, Debug, Default)]
pub struct ViewChanges {
    /// Q1 upserts.
    pub locations: Vec<(u32, Location)>,
    /// Q2 upserts.
    pub rides: Vec<((u32, i64), RideCount)>,
    /// Q3 upserts.
    pub demand: Vec<((u64, i64), Demand)>,
    /// Q4 upserts.
    pub sessions: Vec<((u32, i64), Session)>,
    /// Q4 deletes (a session that merged into another or moved its start).
    pub sessions_deleted: Vec<(u32, i64)>,
    /// Q5 upserts.
    pub trends: Vec<((u64, i64), Trend)>,
}

impl ViewChanges {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
            && self.rides.is_empty()
            && self.demand.is_empty()
            && self.sessions.is_empty()
            && self.sessions_deleted.is_empty()
            && self.trends.is_empty()
    }

    /// Empties it, keeping allocations.
    pub fn clear(&mut self) {
        self.locations.clear();
        self.rides.clear();
        self.demand.clear();
        self.sessions.clear();
        self.sessions_deleted.clear();
        self.trends.clear();
    }
}

/// One partition's part of the views.
#[derive(Debug)]
struct PartialViews {
    /// Q1, indexed directly by driver id (a location with `event_id` 0 is absent).
    locations: IdMap<Location>,
    rides: FxHashMap<(u32, i64), RideCount>,
    demand: FxHashMap<(u64, i64), Demand>,
    sessions: FxHashMap<(u32, i64), Session>,
    trends: FxHashMap<(u64, i64), Trend>,
    /// What a counter sink holds beyond the current values: increments earlier incarnations of
    /// the partition's task sent that a restored task sends again (at-least-once; see
    /// [`ViewVersion::rebase`]). Empty unless a task was restored over a counter sink.
    counted: Counted,
    /// Q3 requests per window start, over `demand` and `counted.demand`, kept as they change:
    /// the run's sampler reads them every second, and walking every cell instead held the
    /// partition's lock, and so its task's updates, for longer the longer the run.
    demand_totals: BTreeMap<i64, u64>,
}

impl PartialViews {
    /// Recounts [`Self::demand_totals`] from the cells.
    fn recount_demand(&mut self) {
        self.demand_totals.clear();
        for ((_, start), cell) in self.demand.iter().chain(&self.counted.demand) {
            *self.demand_totals.entry(*start).or_default() += cell.requests;
        }
    }
}

/// The counter sink's extra increments, per windowed view that adds up.
#[derive(Debug, Default)]
struct Counted {
    rides: FxHashMap<(u32, i64), RideCount>,
    demand: FxHashMap<(u64, i64), Demand>,
    trends: FxHashMap<(u64, i64), Trend>,
}

/// A restored task's emitted values for the views that add up: what a counter sink had
/// received from it as of its checkpoint.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Q2.
    pub rides: FxHashMap<(u32, i64), RideCount>,
    /// Q3.
    pub demand: FxHashMap<(u64, i64), Demand>,
    /// Q5.
    pub trends: FxHashMap<(u64, i64), Trend>,
}

/// Moves what `current` holds beyond `emitted` into `counted`, and resets `current` to
/// `emitted`.
fn fold_into<K: Copy + Eq + std::hash::Hash, V: Additive + Default>(
    current: &mut FxHashMap<K, V>,
    counted: &mut FxHashMap<K, V>,
    emitted: &FxHashMap<K, V>,
) {
    for (key, value) in current.drain() {
        let extra = match emitted.get(&key) {
            Some(earlier) => value.minus(*earlier),
            None => value,
        };
        let entry = counted.entry(key).or_default();
        *entry = entry.plus(extra);
    }
    current.extend(emitted.iter().map(|(key, value)| (*key, *value)));
}

/// One version of the views.
#[derive(Debug)]
pub struct ViewVersion {
    /// Its number (1 for the first job, then one more per reprocessing).
    pub number: u32,
    partitions: Vec<Mutex<PartialViews>>,
}

impl ViewVersion {
    /// An empty version.
    pub fn new(number: u32, partitions: u32) -> Self {
        Self {
            number,
            partitions: (0..partitions)
                .map(|partition| {
                    Mutex::new(PartialViews {
                        locations: IdMap::new(partitions, partition),
                        rides: FxHashMap::default(),
                        demand: FxHashMap::default(),
                        sessions: FxHashMap::default(),
                        trends: FxHashMap::default(),
                        counted: Counted::default(),
                        demand_totals: BTreeMap::new(),
                    })
                })
                .collect(),
        }
    }

    /// An empty version with room for as many entries per partition as `like` holds now: a
    /// version rebuilt from the log grows to about the size of the one it replaces, and growing
    /// a hash map means copying it into memory faulted in afresh, again and again.
    pub fn sized_like(number: u32, like: &ViewVersion) -> Self {
        let version = Self::new(number, like.partitions.len() as u32);
        for (fresh, old) in version.partitions.iter().zip(&like.partitions) {
            let (rides, demand, sessions, trends) = {
                let old = old.lock().expect("not poisoned");
                (old.rides.len(), old.demand.len(), old.sessions.len(), old.trends.len())
            };
            let mut fresh = fresh.lock().expect("not poisoned");
            fresh.rides.reserve(rides);
            fresh.demand.reserve(demand);
            fresh.sessions.reserve(sessions);
            fresh.trends.reserve(trends);
        }
        version
    }

    /// Applies one partition's changes; readers see all of them or none.
    pub fn apply(&self, partition: u32, changes: &ViewChanges) {
        let mut views = self.partitions[partition as usize].lock().expect("not poisoned");
        for (index, (driver, location)) in changes.locations.iter().enumerate() {
            if let Some((ahead, _)) = changes.locations.get(index + 8) {
                views.locations.prefetch(*ahead);
            }
            *views.locations.get_mut(*driver) = *location;
        }
        // Room first, for all of a batch's upserts at once: a final flush (the Lambda speed
        // layer's at every cutoff: millions of open sessions) otherwise grows a map by doubling,
        // rehashing it each time, with the layer stalled meanwhile.
        views.rides.reserve(changes.rides.len());
        views.demand.reserve(changes.demand.len());
        views.sessions.reserve(changes.sessions.len());
        views.trends.reserve(changes.trends.len());
        for (key, value) in &changes.rides {
            views.rides.insert(*key, *value);
        }
        for (key, value) in &changes.demand {
            let before = views.demand.insert(*key, *value).map_or(0, |cell| cell.requests);
            let total = views.demand_totals.entry(key.1).or_default();
            // The total holds `before`.
            *total = *total - before + value.requests;
        }
        for key in &changes.sessions_deleted {
            views.sessions.remove(key);
        }
        for (key, value) in &changes.sessions {
            views.sessions.insert(*key, *value);
        }
        for (key, value) in &changes.trends {
            views.trends.insert(*key, *value);
        }
    }

    /// At-least-once over a counter sink: the partition's task was restored from a checkpoint
    /// at which it had emitted `emitted`, and will send again every increment it sent since.
    /// A counter sink cannot take back what it received, so what the store holds beyond
    /// `emitted` stays counted, and the replayed increments are added on top of it: the
    /// duplicates of at-least-once delivery into a non-idempotent sink.
    pub fn rebase(&self, partition: u32, emitted: &Emitted) {
        let mut guard = self.partitions[partition as usize].lock().expect("not poisoned");
        let views = &mut *guard;
        fold_into(&mut views.rides, &mut views.counted.rides, &emitted.rides);
        fold_into(&mut views.demand, &mut views.counted.demand, &emitted.demand);
        fold_into(&mut views.trends, &mut views.counted.trends, &emitted.trends);
        views.recount_demand();
    }

    /// Q1: where a driver is, looked up in the partition that owns it.
    pub fn driver_location(&self, driver: u32, partition: u32) -> Option<Location> {
        let views = self.partitions[partition as usize].lock().expect("not poisoned");
        views.locations.get(driver).copied().filter(|location| location.event_id != 0)
    }

    /// Q3: requests in a zone's window, summed over partitions.
    pub fn zone_demand(&self, zone: u64, window_start_us: i64) -> u64 {
        self.partitions
            .iter()
            .map(|partial| {
                let partial = partial.lock().expect("not poisoned");
                [partial.demand.get(&(zone, window_start_us)), partial.counted.demand.get(&(zone, window_start_us))]
                    .into_iter()
                    .flatten()
                    .map(|cell| cell.requests)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Q3 requests served per window start, summed over zones (for completeness over time).
    pub fn demand_by_window(&self) -> BTreeMap<i64, u64> {
        let mut totals = BTreeMap::new();
        for partial in &self.partitions {
            let partial = partial.lock().expect("not poisoned");
            for (start, requests) in &partial.demand_totals {
                *totals.entry(*start).or_default() += requests;
            }
        }
        totals
    }

    /// Every view, merged over partitions.
    pub fn snapshot(&self) -> ViewSet {
        self.snapshot_of(true)
    }

    /// The windowed views (Q2 to Q5), merged over partitions; Q1 is left empty.
    pub fn snapshot_windows(&self) -> ViewSet {
        self.snapshot_of(false)
    }

    fn snapshot_of(&self, with_locations: bool) -> ViewSet {
        // Each partition's lock is held only to copy its entries out (writers wait for a copy,
        // never for a sort or a tree build); the maps are built afterwards from sorted entries.
        let (mut locations, mut rides, mut demand, mut sessions, mut trends) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for partial in &self.partitions {
            let partial = partial.lock().expect("not poisoned");
            if with_locations {
                locations.extend(
                    partial
                        .locations
                        .iter()
                        .filter(|(_, location)| location.event_id != 0)
                        .map(|(driver, location)| (driver, *location)),
                );
            }
            rides.extend(partial.rides.iter().chain(&partial.counted.rides).map(|(key, value)| (*key, *value)));
            demand.extend(partial.demand.iter().chain(&partial.counted.demand).map(|(key, value)| (*key, *value)));
            sessions.extend(partial.sessions.iter().map(|(key, value)| (*key, *value)));
            trends.extend(partial.trends.iter().chain(&partial.counted.trends).map(|(key, value)| (*key, *value)));
        }
        // Driver-keyed views are disjoint across partitions; zone-keyed ones are summed.
        locations.sort_unstable_by_key(|(driver, _)| *driver);
        rides.sort_unstable_by_key(|(key, _)| *key);
        sessions.sort_unstable_by_key(|(key, _)| *key);
        demand.sort_unstable_by_key(|(key, _)| *key);
        trends.sort_unstable_by_key(|(key, _)| *key);
        // Driver-keyed views are disjoint across partitions, but a counter sink's extra
        // increments share keys with the current values; zone-keyed ones are summed.
        sum_equal_keys(&mut rides);
        sum_equal_keys(&mut demand);
        sum_equal_keys(&mut trends);
        ViewSet {
            driver_location: locations.into_iter().collect(),
            rides_per_driver: rides.into_iter().collect(),
            zone_demand: demand.into_iter().collect(),
            driver_sessions: sessions.into_iter().collect(),
            historical_trends: trends.into_iter().collect(),
        }
    }

    /// Approximate bytes the views occupy.
    pub fn approximate_bytes(&self) -> u64 {
        self.partitions
            .iter()
            .map(|partial| {
                let partial = partial.lock().expect("not poisoned");
                (partial.locations.capacity() * 32
                    + partial.rides.len() * 40
                    + partial.demand.len() * 24
                    + partial.sessions.len() * 48
                    + partial.trends.len() * 40) as u64
            })
            .sum()
    }
}

/// Sums adjacent entries with equal keys of a sorted list.
fn sum_equal_keys<K: PartialEq, V: Additive>(entries: &mut Vec<(K, V)>) {
    entries.dedup_by(|(key, value), (kept_key, kept)| {
        let same = key == kept_key;
        if same {
            *kept = kept.plus(*value);
        }
        same
    });
}

/// The versioned serving store.
#[derive(Debug)]
pub struct ServingStore {
    partitions: u32,
    versions: RwLock<BTreeMap<u32, Arc<ViewVersion>>>,
    active: AtomicUsize,
}

impl ServingStore {
    /// A store with an empty version 1, active.
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            versions: RwLock::new(BTreeMap::from([(1, Arc::new(ViewVersion::new(1, partitions)))])),
            active: AtomicUsize::new(1),
        }
    }

    /// The version queries read.
    pub fn active(&self) -> Arc<ViewVersion> {
        self.version(self.active.load(Ordering::Acquire) as u32).expect("the active version exists")
    }

    /// A version by number.
    pub fn version(&self, number: u32) -> Option<Arc<ViewVersion>> {
        self.versions.read().expect("not poisoned").get(&number).cloned()
    }

    /// Starts a new, empty version beside the active one (not yet visible to queries), with room
    /// for as many entries as the active one holds.
    pub fn new_version(&self) -> Arc<ViewVersion> {
        let mut versions = self.versions.write().expect("not poisoned");
        let number = versions.keys().next_back().copied().unwrap_or(0) + 1;
        let version = Arc::new(match versions.get(&(self.active.load(Ordering::Acquire) as u32)) {
            Some(active) => ViewVersion::sized_like(number, active),
            None => ViewVersion::new(number, self.partitions),
        });
        versions.insert(number, Arc::clone(&version));
        version
    }

    /// Makes `number` the active version and drops the versions before it.
    pub fn swap_to(&self, number: u32) {
        let mut versions = self.versions.write().expect("not poisoned");
        assert!(versions.contains_key(&number), "swapping to a version that was never built");
        self.active.store(number as usize, Ordering::Release);
        versions.retain(|&existing, _| existing >= number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_has_room_for_what_the_active_one_holds() {
        let store = ServingStore::new(2);
        let mut changes = ViewChanges::default();
        for key in 0..5000u32 {
            changes.rides.push(((key * 2, 0), RideCount::default()));
            changes.demand.push(((u64::from(key), 60), Demand::default()));
            changes.sessions.push(((key * 2, 7), Session::single(7, false, u64::from(key))));
            changes.trends.push(((u64::from(key), 3600), Trend::default()));
        }
        store.active().apply(0, &changes);
        let next = store.new_version();
        let fresh = next.partitions[0].lock().unwrap();
        assert!(fresh.rides.capacity() >= 5000 && fresh.demand.capacity() >= 5000);
        assert!(fresh.sessions.capacity() >= 5000 && fresh.trends.capacity() >= 5000);
        assert!(fresh.rides.is_empty() && fresh.sessions.is_empty(), "a new version starts empty");
        // The other partition held nothing, and gets no room it will not use.
        assert_eq!(next.partitions[1].lock().unwrap().rides.capacity(), 0);
    }

    /// The per-window totals kept as cells change are the totals of the cells, through
    /// upserts that raise a cell, upserts of the same value, and an at-least-once rebase.
    #[test]
    fn demand_by_window_is_the_sum_of_the_cells_however_they_changed() {
        let walked = |version: &ViewVersion| {
            let mut totals = BTreeMap::new();
            for ((_, start), cell) in version.snapshot().zone_demand {
                *totals.entry(start).or_default() += cell.requests;
            }
            totals
        };
        let version = ViewVersion::new(1, 2);
        let cell = |requests| Demand { requests, ..Demand::default() };
        for round in 1..=3u64 {
            let mut changes = ViewChanges::default();
            for zone in 0..50u64 {
                for start in [0, 60, 120] {
                    changes.demand.push(((zone, start), cell(round * zone + start as u64)));
                }
            }
            version.apply((round % 2) as u32, &changes);
            // Applied again: the same values, the same totals.
            version.apply((round % 2) as u32, &changes);
            assert_eq!(version.demand_by_window(), walked(&version), "round {round}");
        }
        // A restored task's emitted values: what the store held beyond them stays counted.
        let emitted =
            Emitted { demand: (0..25u64).map(|zone| ((zone, 60), cell(zone))).collect(), ..Emitted::default() };
        version.rebase(1, &emitted);
        let mut replayed = ViewChanges::default();
        replayed.demand.push(((3, 60), cell(500)));
        version.apply(1, &replayed);
        assert_eq!(version.demand_by_window(), walked(&version));
        assert!(version.demand_by_window()[&60] > 0);
    }
}
