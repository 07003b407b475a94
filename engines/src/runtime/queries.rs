//! The query set, written once: what each query counts, how windows are assigned, what the
//! lateness policy drops, and the shape of the views every engine and the oracle produce.
//!
//! - **Q1 driver location**: the latest ping of every driver (by event time, then event id).
//! - **Q2 rides per driver**: pickups per driver in tumbling windows, with the summed pickup
//!   coordinates (the average is the sum over the count).
//! - **Q3 zone demand**: ride requests per H3 zone in sliding windows.
//! - **Q4 driver sessions**: pings and pickups per driver, in session windows closed by an
//!   inactivity gap.
//! - **Q5 historical trends**: drop-offs, fares and trip distance per zone in tumbling windows.
//!
//! Every value is an integer, so views compare exactly. Windows are in event time. The lateness
//! policy is per partition, as in Kafka Streams: a partition's stream time is the largest event
//! time it has seen, its watermark trails that by the configured delay, and an event is late for
//! a window once the window's end plus the allowed lateness is at or below the watermark. Late
//! events go to a side output (counted per query), never silently nowhere.

use std::collections::BTreeMap;

use lk_simulator::event::{Event, Payload};
use serde::Serialize;
use smallvec::SmallVec;

use crate::settings::{Watermark, Windows};

/// Window sizes and the lateness policy, in µs of event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryConfig {
    /// Q2 tumbling window.
    pub rides_window_us: i64,
    /// Q3 sliding window size.
    pub demand_window_us: i64,
    /// Q3 slide.
    pub demand_slide_us: i64,
    /// Q4 inactivity gap.
    pub session_gap_us: i64,
    /// Q5 tumbling window.
    pub trends_window_us: i64,
    /// The watermark trails the stream time by this much.
    pub watermark_delay_us: i64,
    /// How long after firing a window still accepts late events.
    pub allowed_lateness_us: i64,
}

impl QueryConfig {
    /// The configuration a scenario's `[windows]` and `[watermark]` ask for.
    pub fn new(windows: &Windows, watermark: &Watermark) -> Self {
        let us = |duration: std::time::Duration| duration.as_micros() as i64;
        Self {
            rides_window_us: us(windows.rides_per_driver),
            demand_window_us: us(windows.zone_demand),
            demand_slide_us: us(windows.zone_demand_slide),
            session_gap_us: us(windows.session_gap),
            trends_window_us: us(windows.trends),
            watermark_delay_us: us(watermark.delay),
            allowed_lateness_us: us(watermark.allowed_lateness),
        }
    }

    /// The watermark for a stream time.
    #[inline]
    pub fn watermark(&self, stream_time_us: i64) -> i64 {
        stream_time_us.saturating_sub(self.watermark_delay_us)
    }

    /// Whether a window ending at `end_us` no longer accepts events at `watermark_us`.
    #[inline]
    pub fn is_closed(&self, end_us: i64, watermark_us: i64) -> bool {
        end_us.saturating_add(self.allowed_lateness_us) <= watermark_us
    }

    /// The start of the tumbling window of `size_us` holding `time_us`.
    #[inline]
    pub fn tumbling_start(time_us: i64, size_us: i64) -> i64 {
        time_us - time_us.rem_euclid(size_us)
    }

    /// Starts of the Q3 sliding windows holding `time_us`, earliest first.
    #[inline]
    pub fn demand_window_starts(&self, time_us: i64) -> impl Iterator<Item = i64> + use<> {
        let last = Self::tumbling_start(time_us, self.demand_slide_us);
        let slides = self.demand_window_us / self.demand_slide_us;
        let slide = self.demand_slide_us;
        (0..slides).rev().map(move |back| last - back * slide)
    }

    /// The window a session is held in for lateness: a session event is late once a session
    /// ending at it could no longer be extended.
    #[inline]
    pub fn session_event_is_late(&self, time_us: i64, watermark_us: i64) -> bool {
        self.is_closed(time_us.saturating_add(self.session_gap_us), watermark_us)
    }
}

/// Which query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// Q1.
    DriverLocation,
    /// Q2.
    RidesPerDriver,
    /// Q3.
    ZoneDemand,
    /// Q4.
    DriverSessions,
    /// Q5.
    HistoricalTrends,
}

impl Query {
    /// All five, in order.
    pub const ALL: [Query; 5] = [
        Query::DriverLocation,
        Query::RidesPerDriver,
        Query::ZoneDemand,
        Query::DriverSessions,
        Query::HistoricalTrends,
    ];

    /// The file-name form: `q1_driver_location` and so on.
    pub fn name(self) -> &'static str {
        match self {
            Query::DriverLocation => "q1_driver_location",
            Query::RidesPerDriver => "q2_rides_per_driver",
            Query::ZoneDemand => "q3_zone_demand",
            Query::DriverSessions => "q4_driver_sessions",
            Query::HistoricalTrends => "q5_historical_trends",
        }
    }
}

/// Q1's value: a driver's latest ping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Event time of the ping.
    pub event_time_us: i64,
    /// Its id (breaks ties in event time).
    pub event_id: u64,
    /// Latitude, µdeg.
    pub lat_e6: i32,
    /// Longitude, µdeg.
    pub lon_e6: i32,
    /// Zone.
    pub zone: u64,
}

impl Location {
    /// No location yet: older than any ping (`event_id` 0 marks it absent).
    pub const ABSENT: Location = Location { event_time_us: i64::MIN, event_id: 0, lat_e6: 0, lon_e6: 0, zone: 0 };

    /// The location a ping reports.
    #[inline]
    pub fn of(ping: &Event) -> Self {
        Location {
            event_time_us: ping.event_time_us,
            event_id: ping.event_id,
            lat_e6: ping.position.lat_e6,
            lon_e6: ping.position.lon_e6,
            zone: ping.zone.0,
        }
    }

    /// Whether `self` is newer than `other` (later event time, then larger id).
    #[inline]
    pub fn is_newer_than(&self, other: &Location) -> bool {
        (self.event_time_us, self.event_id) > (other.event_time_us, other.event_id)
    }
}

/// An event id's mark in a cell's id checksum: SplitMix64's finaliser, a strong 64-bit mix.
/// The wrapping sum of the marks of the events in a cell is an order-independent fingerprint of
/// the cell's events as a multiset: losing one event and counting another twice leaves the
/// count unchanged but the checksum changed (unless two marks collide: odds of 2^-64).
#[inline]
pub fn id_mark(event_id: u64) -> u64 {
    let mut z = event_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Q2's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RideCount {
    /// Pickups.
    pub rides: u64,
    /// Sum of pickup latitudes, µdeg.
    pub pickup_lat_e6_sum: i64,
    /// Sum of pickup longitudes, µdeg.
    pub pickup_lon_e6_sum: i64,
    /// Checksum of the pickups' event ids ([`id_mark`]).
    pub ids: u64,
}

impl RideCount {
    /// Adds one pickup.
    #[inline]
    pub fn add(&mut self, event: &Event) {
        self.rides += 1;
        self.pickup_lat_e6_sum += i64::from(event.position.lat_e6);
        self.pickup_lon_e6_sum += i64::from(event.position.lon_e6);
        self.ids = self.ids.wrapping_add(id_mark(event.event_id));
    }
}

/// Q3's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Demand {
    /// Ride requests.
    pub requests: u64,
    /// Checksum of the requests' event ids ([`id_mark`]).
    pub ids: u64,
}

impl Demand {
    /// Adds one request.
    #[inline]
    pub fn add(&mut self, event_id: u64) {
        self.requests += 1;
        self.ids = self.ids.wrapping_add(id_mark(event_id));
    }
}

/// Q4's value: one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Event time of the session's first event.
    pub start_us: i64,
    /// Event time of its last event.
    pub last_us: i64,
    /// Pings in it.
    pub pings: u64,
    /// Pickups in it.
    pub rides: u64,
    /// Checksum of its pings' and pickups' event ids ([`id_mark`]).
    pub ids: u64,
}

impl Session {
    /// A session of one event.
    #[inline]
    pub fn single(time_us: i64, is_ride: bool, event_id: u64) -> Self {
        Session {
            start_us: time_us,
            last_us: time_us,
            pings: u64::from(!is_ride),
            rides: u64::from(is_ride),
            ids: id_mark(event_id),
        }
    }

    /// Absorbs another session's activity (the caller knows they touch).
    #[inline]
    pub fn absorb(&mut self, other: &Session) {
        self.start_us = self.start_us.min(other.start_us);
        self.last_us = self.last_us.max(other.last_us);
        self.pings += other.pings;
        self.rides += other.rides;
        self.ids = self.ids.wrapping_add(other.ids);
    }
}

/// Q5's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Trend {
    /// Drop-offs.
    pub rides: u64,
    /// Sum of fares, cents.
    pub fare_cents_sum: u64,
    /// Sum of trip distances, m.
    pub distance_m_sum: u64,
    /// Checksum of the drop-offs' event ids ([`id_mark`]).
    pub ids: u64,
}

impl Trend {
    /// Adds one drop-off.
    #[inline]
    pub fn add(&mut self, event_id: u64, fare_cents: u32, distance_m: u32) {
        self.rides += 1;
        self.fare_cents_sum += u64::from(fare_cents);
        self.distance_m_sum += u64::from(distance_m);
        self.ids = self.ids.wrapping_add(id_mark(event_id));
    }
}

/// Values that add up: Q2, Q3 and Q5's cells, whose merge is a sum.
pub trait Additive: Copy {
    /// `self` plus `other`.
    fn plus(self, other: Self) -> Self;
    /// `self` minus `other` (what `self` has that `other`, an earlier value of the same
    /// cell, had not).
    fn minus(self, other: Self) -> Self;
}

impl Additive for RideCount {
    fn plus(self, other: Self) -> Self {
        RideCount {
            rides: self.rides + other.rides,
            pickup_lat_e6_sum: self.pickup_lat_e6_sum + other.pickup_lat_e6_sum,
            pickup_lon_e6_sum: self.pickup_lon_e6_sum + other.pickup_lon_e6_sum,
            ids: self.ids.wrapping_add(other.ids),
        }
    }
    fn minus(self, other: Self) -> Self {
        RideCount {
            rides: self.rides.saturating_sub(other.rides),
            pickup_lat_e6_sum: self.pickup_lat_e6_sum - other.pickup_lat_e6_sum,
            pickup_lon_e6_sum: self.pickup_lon_e6_sum - other.pickup_lon_e6_sum,
            ids: self.ids.wrapping_sub(other.ids),
        }
    }
}

impl Additive for Demand {
    fn plus(self, other: Self) -> Self {
        Demand { requests: self.requests + other.requests, ids: self.ids.wrapping_add(other.ids) }
    }
    fn minus(self, other: Self) -> Self {
        Demand { requests: self.requests.saturating_sub(other.requests), ids: self.ids.wrapping_sub(other.ids) }
    }
}

impl Additive for Trend {
    fn plus(self, other: Self) -> Self {
        Trend {
            rides: self.rides + other.rides,
            fare_cents_sum: self.fare_cents_sum + other.fare_cents_sum,
            distance_m_sum: self.distance_m_sum + other.distance_m_sum,
            ids: self.ids.wrapping_add(other.ids),
        }
    }
    fn minus(self, other: Self) -> Self {
        Trend {
            rides: self.rides.saturating_sub(other.rides),
            fare_cents_sum: self.fare_cents_sum.saturating_sub(other.fare_cents_sum),
            distance_m_sum: self.distance_m_sum.saturating_sub(other.distance_m_sum),
            ids: self.ids.wrapping_sub(other.ids),
        }
    }
}

/// All five views, keyed and ordered for comparison and output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewSet {
    /// Q1: driver → latest ping.
    pub driver_location: BTreeMap<u32, Location>,
    /// Q2: (driver, window start) → rides.
    pub rides_per_driver: BTreeMap<(u32, i64), RideCount>,
    /// Q3: (zone, window start) → requests.
    pub zone_demand: BTreeMap<(u64, i64), Demand>,
    /// Q4: (driver, session start) → session.
    pub driver_sessions: BTreeMap<(u32, i64), Session>,
    /// Q5: (zone, window start) → trend.
    pub historical_trends: BTreeMap<(u64, i64), Trend>,
}

/// How one query's served view compares with the oracle's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct QueryCorrectness {
    /// Contributions the oracle has (see [`contributions`]).
    pub expected: u64,
    /// Contributions the served view has.
    pub observed: u64,
    /// Contributions missing from the served view, summed per cell.
    pub lost: u64,
    /// Contributions counted more than once, summed per cell.
    pub duplicated: u64,
    /// Cells (key and window) whose value differs in any field.
    pub mismatched_windows: u64,
    /// A few mismatched cells, for a human to look at.
    pub examples: Vec<String>,
    /// A few lost or duplicated events, by id, with their cells (see [`crate::verify::checker`]).
    #[serde(default)]
    pub events: Vec<EventExample>,
}

/// A lost or duplicated event the checker identified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventExample {
    /// The event's id.
    pub event_id: u64,
    /// `lost` or `duplicated`.
    pub problem: String,
    /// Its cell: key and window, as the view's Parquet file keys it.
    pub cell: String,
    /// How many times the served cell counts it (0 when lost).
    pub counted: u64,
}

/// The count of event contributions in a cell of each view, and their id checksum: Q1 counts 1
/// per driver, Q2 rides, Q3 requests, Q4 pings plus rides, Q5 rides.
pub trait Contributions {
    /// Event contributions this value stands for.
    fn contributions(&self) -> u64;
    /// The wrapping sum of the contributing events' [`id_mark`]s.
    fn id_sum(&self) -> u64;
    /// (lost, duplicated) contributions of `self`, served, against `expected`.
    fn errors_against(&self, expected: &Self) -> (u64, u64)
    where
        Self: Sized,
    {
        cell_errors(expected, self)
    }
}

impl Contributions for Location {
    fn contributions(&self) -> u64 {
        1
    }
    fn id_sum(&self) -> u64 {
        id_mark(self.event_id)
    }
    /// A location other than the newest is the newest ping lost (a newer one than expected
    /// cannot exist).
    fn errors_against(&self, expected: &Self) -> (u64, u64) {
        (u64::from(self != expected), 0)
    }
}
impl Contributions for RideCount {
    fn contributions(&self) -> u64 {
        self.rides
    }
    fn id_sum(&self) -> u64 {
        self.ids
    }
}
impl Contributions for Demand {
    fn contributions(&self) -> u64 {
        self.requests
    }
    fn id_sum(&self) -> u64 {
        self.ids
    }
}
impl Contributions for Session {
    fn contributions(&self) -> u64 {
        self.pings + self.rides
    }
    fn id_sum(&self) -> u64 {
        self.ids
    }
}
impl Contributions for Trend {
    fn contributions(&self) -> u64 {
        self.rides
    }
    fn id_sum(&self) -> u64 {
        self.ids
    }
}

/// Lost and duplicated contributions of a served cell against the expected one. Counts alone
/// cannot see a lost event and a duplicated one in the same cell; the id checksums can, and
/// then at least one of each is counted.
pub fn cell_errors<V: Contributions>(expected: &V, served: &V) -> (u64, u64) {
    let (wanted, have) = (expected.contributions(), served.contributions());
    let (mut lost, mut duplicated) = (wanted.saturating_sub(have), have.saturating_sub(wanted));
    if wanted == have && expected.id_sum() != served.id_sum() {
        (lost, duplicated) = (1, 1);
    }
    (lost, duplicated)
}

fn compare_view<K: Ord + std::fmt::Debug, V: Contributions + PartialEq + std::fmt::Debug + Sized>(
    expected: &BTreeMap<K, V>,
    observed: &BTreeMap<K, V>,
) -> QueryCorrectness {
    let mut result = QueryCorrectness::default();
    let note = |result: &mut QueryCorrectness, text: String| {
        if result.examples.len() < 5 {
            result.examples.push(text);
        }
    };
    // One pass over both sorted maps.
    let (mut wanted_cells, mut served_cells) = (expected.iter().peekable(), observed.iter().peekable());
    loop {
        let order = match (wanted_cells.peek(), served_cells.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((wanted, _)), Some((served, _))) => wanted.cmp(served),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (key, value) = wanted_cells.next().expect("peeked");
                let wanted = value.contributions();
                result.expected += wanted;
                result.lost += wanted;
                result.mismatched_windows += 1;
                note(&mut result, format!("{key:?}: missing, expected {value:?}"));
            }
            std::cmp::Ordering::Greater => {
                let (key, value) = served_cells.next().expect("peeked");
                result.observed += value.contributions();
                result.duplicated += value.contributions();
                result.mismatched_windows += 1;
                note(&mut result, format!("{key:?}: served {value:?}, expected nothing"));
            }
            std::cmp::Ordering::Equal => {
                let ((key, value), (_, got)) =
                    (wanted_cells.next().expect("peeked"), served_cells.next().expect("peeked"));
                result.expected += value.contributions();
                result.observed += got.contributions();
                if got != value {
                    let (lost, duplicated) = got.errors_against(value);
                    result.lost += lost;
                    result.duplicated += duplicated;
                    result.mismatched_windows += 1;
                    note(&mut result, format!("{key:?}: served {got:?}, expected {value:?}"));
                }
            }
        }
    }
    result
}

impl ViewSet {
    /// Compares served views (`self`) with the oracle's, query by query.
    pub fn compare_with(&self, oracle: &ViewSet) -> BTreeMap<Query, QueryCorrectness> {
        BTreeMap::from([
            (Query::DriverLocation, compare_view(&oracle.driver_location, &self.driver_location)),
            (Query::RidesPerDriver, compare_view(&oracle.rides_per_driver, &self.rides_per_driver)),
            (Query::ZoneDemand, compare_view(&oracle.zone_demand, &self.zone_demand)),
            (Query::DriverSessions, compare_view(&oracle.driver_sessions, &self.driver_sessions)),
            (Query::HistoricalTrends, compare_view(&oracle.historical_trends, &self.historical_trends)),
        ])
    }

    /// Approximate bytes the views occupy in memory (B-tree entries with their keys).
    pub fn approximate_bytes(&self) -> u64 {
        (self.driver_location.len() * 40
            + self.rides_per_driver.len() * 40
            + self.zone_demand.len() * 24
            + self.driver_sessions.len() * 48
            + self.historical_trends.len() * 40) as u64
    }

    /// Cells in each view.
    pub fn cells(&self) -> BTreeMap<Query, usize> {
        BTreeMap::from([
            (Query::DriverLocation, self.driver_location.len()),
            (Query::RidesPerDriver, self.rides_per_driver.len()),
            (Query::ZoneDemand, self.zone_demand.len()),
            (Query::DriverSessions, self.driver_sessions.len()),
            (Query::HistoricalTrends, self.historical_trends.len()),
        ])
    }
}

/// The key an event is partitioned by: its driver, or its ride when it has no driver (a ride
/// request). Driver-keyed queries (Q1, Q2, Q4) then see all of a driver's events in one
/// partition; zone-keyed ones (Q3, Q5) are summed over partitions.
#[inline]
pub fn partition_key(event: &Event) -> u64 {
    match event.payload.driver_id() {
        Some(driver) => u64::from(driver),
        None => event.payload.ride_id().unwrap_or(event.event_id) | (1 << 63),
    }
}

/// Whether an event feeds Q4's sessions (pings and pickups), and how: (driver, is a ride).
#[inline]
pub fn session_activity(event: &Event) -> Option<(u32, bool)> {
    match event.payload {
        Payload::DriverPing { driver_id, .. } => Some((driver_id, false)),
        Payload::PickedUp { driver_id, .. } => Some((driver_id, true)),
        _ => None,
    }
}

/// Sessions from a driver's activity `(time, is a ride, event id)`, sorted by time: a new
/// session starts after a gap of at least `gap_us` (the order-independent definition the oracle
/// uses).
pub fn sessions_from_sorted(activity: &[(i64, bool, u64)], gap_us: i64) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    for &(time_us, is_ride, event_id) in activity {
        let single = Session::single(time_us, is_ride, event_id);
        match sessions.last_mut() {
            Some(session) if time_us - session.last_us < gap_us => session.absorb(&single),
            _ => sessions.push(single),
        }
    }
    sessions
}

/// Adds `new` to a driver's sessions (sorted by start, each a maximal run of activity with gaps
/// under `gap_us`), merging every session it touches. Two sessions touch when neither starts a
/// gap or more after the other ends; since a session's activity has no gap inside it, merging
/// touching sessions gives exactly the sessions of the union of their activity, in any order.
/// This is the definition the Lambda engine's batch layer and serving layer merge by.
pub fn merge_session(sessions: &mut SmallVec<[Session; 1]>, new: Session, gap_us: i64) {
    let mut merged = new;
    sessions.retain(|existing| {
        let touches = merged.start_us - existing.last_us < gap_us && existing.start_us - merged.last_us < gap_us;
        if touches {
            merged.absorb(existing);
        }
        !touches
    });
    // Absorbing one session can make `merged` reach another it did not touch before.
    if sessions
        .iter()
        .any(|existing| merged.start_us - existing.last_us < gap_us && existing.start_us - merged.last_us < gap_us)
    {
        return merge_session(sessions, merged, gap_us);
    }
    let position = sessions.partition_point(|existing| existing.start_us < merged.start_us);
    sessions.insert(position, merged);
}

impl ViewSet {
    /// Merges views over disjoint sets of events into `self`, exactly: Q1 keeps the newer
    /// location, Q2, Q3 and Q5 add, Q4 merges sessions that touch ([`merge_session`]). This is
    /// the Lambda serving layer's merge of a batch view with the realtime views after its
    /// cutoff: no row is picked arbitrarily, so there is no gap and no double count. Each view is
    /// one pass over both sorted maps (millions of drivers at rush hour).
    pub fn merge(&mut self, other: &ViewSet, gap_us: i64) {
        self.driver_location = merge_sorted(&self.driver_location, &other.driver_location, |ours, theirs| {
            if theirs.is_newer_than(&ours) { theirs } else { ours }
        });
        self.rides_per_driver = merge_sorted(&self.rides_per_driver, &other.rides_per_driver, Additive::plus);
        self.zone_demand = merge_sorted(&self.zone_demand, &other.zone_demand, Additive::plus);
        self.historical_trends = merge_sorted(&self.historical_trends, &other.historical_trends, Additive::plus);
        if other.driver_sessions.is_empty() {
            return;
        }
        // Both maps are sorted by driver: walk them together, a driver at a time.
        let mut merged: Vec<((u32, i64), Session)> =
            Vec::with_capacity(self.driver_sessions.len() + other.driver_sessions.len());
        let mut ours = self.driver_sessions.iter().peekable();
        let mut theirs = other.driver_sessions.iter().peekable();
        loop {
            let driver = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(((driver, _), _)), None) | (None, Some(((driver, _), _))) => *driver,
                (Some(((mine, _), _)), Some(((other, _), _))) => (*mine).min(*other),
            };
            let mut sessions: SmallVec<[Session; 1]> = SmallVec::new();
            while let Some(((_, _), session)) = ours.next_if(|((owner, _), _)| *owner == driver) {
                sessions.push(*session);
            }
            while let Some(((_, _), session)) = theirs.next_if(|((owner, _), _)| *owner == driver) {
                merge_session(&mut sessions, *session, gap_us);
            }
            merged.extend(sessions.into_iter().map(|session| ((driver, session.start_us), session)));
        }
        self.driver_sessions = merged.into_iter().collect();
    }
}

/// Two sorted maps merged in one pass; keys in both are combined. The result is built from
/// sorted entries, which `BTreeMap` bulk-loads.
fn merge_sorted<K: Ord + Copy, V: Copy>(
    ours: &BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
    combine: impl Fn(V, V) -> V,
) -> BTreeMap<K, V> {
    if theirs.is_empty() {
        return ours.clone();
    }
    let mut merged = Vec::with_capacity(ours.len() + theirs.len());
    let (mut left, mut right) = (ours.iter().peekable(), theirs.iter().peekable());
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => merged.extend(left.by_ref().map(|(key, value)| (*key, *value))),
            (None, Some(_)) => merged.extend(right.by_ref().map(|(key, value)| (*key, *value))),
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => merged.extend(left.next().map(|(key, value)| (*key, *value))),
                std::cmp::Ordering::Greater => merged.extend(right.next().map(|(key, value)| (*key, *value))),
                std::cmp::Ordering::Equal => {
                    let ((key, mine), (_, other)) = (left.next().expect("peeked"), right.next().expect("peeked"));
                    merged.push((*key, combine(*mine, *other)));
                }
            },
        }
    }
    merged.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    fn config() -> QueryConfig {
        QueryConfig {
            rides_window_us: 5 * MINUTE,
            demand_window_us: 5 * MINUTE,
            demand_slide_us: MINUTE,
            session_gap_us: 10 * MINUTE,
            trends_window_us: 60 * MINUTE,
            watermark_delay_us: 2_000_000,
            allowed_lateness_us: 30_000_000,
        }
    }

    #[test]
    fn tumbling_windows_hold_their_start_and_not_their_end() {
        assert_eq!(QueryConfig::tumbling_start(0, 5 * MINUTE), 0);
        assert_eq!(QueryConfig::tumbling_start(5 * MINUTE - 1, 5 * MINUTE), 0);
        assert_eq!(QueryConfig::tumbling_start(5 * MINUTE, 5 * MINUTE), 5 * MINUTE);
        assert_eq!(QueryConfig::tumbling_start(-1, 5 * MINUTE), -5 * MINUTE);
    }

    #[test]
    fn an_event_falls_in_five_sliding_windows() {
        // 12:03:30 is in the windows starting 11:59, 12:00, 12:01, 12:02 and 12:03.
        let noon = 720 * MINUTE;
        let starts: Vec<i64> = config().demand_window_starts(noon + 3 * MINUTE + 30_000_000).collect();
        assert_eq!(starts, vec![noon - MINUTE, noon, noon + MINUTE, noon + 2 * MINUTE, noon + 3 * MINUTE]);
        let on_boundary: Vec<i64> = config().demand_window_starts(noon).collect();
        assert_eq!(on_boundary.last(), Some(&noon));
        assert_eq!(on_boundary.first(), Some(&(noon - 4 * MINUTE)));
    }

    #[test]
    fn windows_close_after_their_end_plus_allowed_lateness() {
        let config = config();
        let end = 5 * MINUTE;
        // Stream time end + 2 s delay + 30 s lateness is where the window closes.
        assert!(!config.is_closed(end, config.watermark(end + 32_000_000 - 1)));
        assert!(config.is_closed(end, config.watermark(end + 32_000_000)));
        assert!(!config.session_event_is_late(0, config.watermark(10 * MINUTE + 32_000_000 - 1)));
        assert!(config.session_event_is_late(0, config.watermark(10 * MINUTE + 32_000_000)));
    }

    #[test]
    fn sessions_split_at_the_gap() {
        let activity = [
            (0, false, 1),
            (MINUTE, true, 2),
            (10 * MINUTE + MINUTE - 1, false, 3),
            (21 * MINUTE, false, 4),
            (22 * MINUTE, false, 5),
        ];
        let sessions = sessions_from_sorted(&activity, 10 * MINUTE);
        let ids = |list: &[u64]| list.iter().fold(0u64, |sum, &id| sum.wrapping_add(id_mark(id)));
        assert_eq!(
            sessions,
            vec![
                Session { start_us: 0, last_us: 11 * MINUTE - 1, pings: 2, rides: 1, ids: ids(&[1, 2, 3]) },
                Session { start_us: 21 * MINUTE, last_us: 22 * MINUTE, pings: 2, rides: 0, ids: ids(&[4, 5]) },
            ]
        );
    }

    #[test]
    fn a_lost_and_a_duplicated_contribution_do_not_cancel_out() {
        let demand = |ids: &[u64]| {
            let mut cell = Demand::default();
            ids.iter().for_each(|&id| cell.add(id));
            cell
        };
        let oracle = ViewSet {
            zone_demand: BTreeMap::from([((1, 0), demand(&[1, 2, 3])), ((2, 0), demand(&[4, 5, 6]))]),
            ..ViewSet::default()
        };
        let served = ViewSet {
            zone_demand: BTreeMap::from([((1, 0), demand(&[1, 2])), ((2, 0), demand(&[4, 5, 6, 6]))]),
            ..ViewSet::default()
        };
        let result = &served.compare_with(&oracle)[&Query::ZoneDemand];
        assert_eq!((result.expected, result.observed), (6, 6), "the totals agree");
        assert_eq!((result.lost, result.duplicated, result.mismatched_windows), (1, 1, 2), "the cells do not");
        // Within one cell, the counts agree and only the id checksum can tell.
        let served = ViewSet {
            zone_demand: BTreeMap::from([((1, 0), demand(&[1, 2, 2])), ((2, 0), demand(&[4, 5, 6]))]),
            ..ViewSet::default()
        };
        let result = &served.compare_with(&oracle)[&Query::ZoneDemand];
        assert_eq!((result.expected, result.observed), (6, 6), "the counts agree cell by cell");
        assert_eq!((result.lost, result.duplicated, result.mismatched_windows), (1, 1, 1), "the checksums do not");
    }

    #[test]
    fn merging_sessions_in_any_order_gives_the_sessions_of_the_union() {
        let gap = 10 * MINUTE;
        let points: Vec<(i64, bool, u64)> = [0, 3, 9, 25, 30, 41, 50, 52, 70, 79, 88]
            .iter()
            .map(|&minute| (minute * MINUTE, minute % 3 == 0, minute as u64))
            .collect();
        let expected = sessions_from_sorted(&points, gap);
        let single = |(time, ride, id): (i64, bool, u64)| Session::single(time, ride, id);
        for rotation in 0..points.len() {
            let mut order = points.clone();
            order.rotate_left(rotation);
            if rotation % 2 == 1 {
                order.reverse();
            }
            let mut sessions = SmallVec::new();
            for point in order {
                merge_session(&mut sessions, single(point), gap);
            }
            assert_eq!(sessions.to_vec(), expected, "rotation {rotation}");
        }
        // Sessions of two halves, merged, are the sessions of the whole.
        let (even, odd): (Vec<_>, Vec<_>) = points.iter().enumerate().partition(|(index, _)| index % 2 == 0);
        let halves = |half: Vec<(usize, &(i64, bool, u64))>| {
            let points: Vec<(i64, bool, u64)> = half.into_iter().map(|(_, point)| *point).collect();
            sessions_from_sorted(&points, gap)
        };
        let mut merged = ViewSet {
            driver_sessions: halves(even).into_iter().map(|session| ((7, session.start_us), session)).collect(),
            ..ViewSet::default()
        };
        let other = ViewSet {
            driver_sessions: halves(odd).into_iter().map(|session| ((7, session.start_us), session)).collect(),
            ..ViewSet::default()
        };
        merged.merge(&other, gap);
        let expected: BTreeMap<(u32, i64), Session> =
            expected.into_iter().map(|session| ((7, session.start_us), session)).collect();
        assert_eq!(merged.driver_sessions, expected);
    }

    #[test]
    fn merging_views_adds_counts_and_keeps_the_newer_location() {
        let location = |time, id| Location { event_time_us: time, event_id: id, lat_e6: 1, lon_e6: 2, zone: 3 };
        let mut batch = ViewSet {
            driver_location: BTreeMap::from([(1, location(10, 5)), (2, location(10, 6))]),
            zone_demand: BTreeMap::from([((9, 0), Demand { requests: 4, ids: 40 })]),
            ..ViewSet::default()
        };
        let speed = ViewSet {
            driver_location: BTreeMap::from([(1, location(5, 9)), (2, location(11, 1)), (3, location(1, 2))]),
            zone_demand: BTreeMap::from([
                ((9, 0), Demand { requests: 2, ids: 20 }),
                ((9, MINUTE), Demand { requests: 1, ids: 10 }),
            ]),
            ..ViewSet::default()
        };
        batch.merge(&speed, MINUTE);
        assert_eq!(batch.driver_location[&1], location(10, 5), "a late ping does not move a driver back");
        assert_eq!(batch.driver_location[&2], location(11, 1));
        assert_eq!(batch.driver_location.len(), 3);
        assert_eq!(
            batch.zone_demand,
            BTreeMap::from([((9, 0), Demand { requests: 6, ids: 60 }), ((9, MINUTE), Demand { requests: 1, ids: 10 })])
        );
    }
}
