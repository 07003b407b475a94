//! `lk simulate --profile`: what the stream is like, measured from its events as a user would
//! measure it (with DuckDB over the NDJSON), beside public reference figures for a ride-hail
//! platform in New York, each with its tolerance and verdict (docs/workload.md has the sources).
//!
//! Everything here is computed from the events alone, in the order they arrive: the ride
//! lifecycle is joined by ride id, driver speeds from consecutive pings of one driver, a
//! driver's state (on a trip or not) from its lifecycle events. A driver's pings before its
//! first lifecycle event count for the state that event reveals (a drop-off: it was on a trip).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::city::distance_m;
use crate::event::{CancelledBy, EventBatch, EventKind, LatLon, Payload};
use crate::land::Land;
use crate::workload::{Workload, utc_offset_us};

const MPS_PER_MPH: f64 = 0.447_04;

/// Riders cancel up to five minutes after requesting, or at the curb; requests this long before
/// the stream's end show whether they were.
const RIDER_CANCEL_HORIZON_US: i64 = 600_000_000;

/// Quantiles of a sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Values in the sample.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Quantiles {
    /// The quantiles of `values` (sorted here).
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self {
            count: values.len() as u64,
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// How concentrated a key's events are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Skew {
    /// Distinct keys.
    pub keys: u64,
    /// Share of the events of the busiest 1% of keys (at least one key).
    pub top_1pct_share: f64,
    /// Share of the events of the busiest 10%.
    pub top_10pct_share: f64,
    /// Share of the busiest key.
    pub top_key_share: f64,
}

impl Skew {
    fn of(counts: impl Iterator<Item = u64>) -> Self {
        let mut counts: Vec<u64> = counts.collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Self::default();
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let share = |fraction: f64| {
            let keys = ((counts.len() as f64 * fraction).ceil() as usize).max(1);
            counts[..keys].iter().sum::<u64>() as f64 / total as f64
        };
        Self {
            keys: counts.len() as u64,
            top_1pct_share: share(0.01),
            top_10pct_share: share(0.1),
            top_key_share: counts[0] as f64 / total as f64,
        }
    }
}

/// One property against its reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is measured.
    pub property: String,
    /// The measured value (in `unit`); None when the stream cannot show it.
    pub measured: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// The reference figure, as its source gives it.
    pub reference: String,
    /// The range the measured value must fall in.
    pub low: f64,
    /// Upper end of that range.
    pub high: f64,
    /// Where the reference comes from.
    pub source: String,
    /// "within", "off: ..." or "not measured: ...".
    pub verdict: String,
}

impl Check {
    /// Whether the measured value is within the tolerance (a property that could not be
    /// measured is not a failure).
    pub fn passes(&self) -> bool {
        self.measured.is_none_or(|value| (self.low..=self.high).contains(&value))
    }
}

/// A reference figure and its tolerance.
struct Reference {
    property: &'static str,
    unit: &'static str,
    reference: &'static str,
    low: f64,
    high: f64,
    source: &'static str,
}

/// The references, each with the tolerance docs/workload.md states for it: 1.5x either way for
/// speeds, durations, waits and shares; at least 99% for demand on land.
const REFERENCES: &[Reference] = &[
    Reference {
        property: "requests in the five boroughs",
        unit: "share",
        reference: "nearly all (TLC trips start in the five boroughs and at the airports)",
        low: 0.99,
        high: 1.0,
        source: "NYC TLC trip records and fact books",
    },
    Reference {
        property: "Manhattan road speed, median ping",
        unit: "mph",
        reference: "5-7 mph (taxi GPS, Manhattan CBD and Midtown)",
        low: 4.0,
        high: 9.0,
        source: "NYC DOT, New York City Mobility Report (2018, 2019)",
    },
    Reference {
        property: "trip duration, median",
        unit: "min",
        reference: "about 20 min (a 5.2-mile trip at ride-hail speeds)",
        low: 20.0 / 1.5,
        high: 20.0 * 1.5,
        source: "Schaller Consulting, The New Automobility (2018); NYC DOT speeds",
    },
    Reference {
        property: "trip distance, mean",
        unit: "miles",
        reference: "5.2 miles (typical ride-hail trip)",
        low: 5.2 / 1.5,
        high: 5.2 * 1.5,
        source: "Schaller Consulting, The New Automobility (2018)",
    },
    Reference {
        property: "pickup wait (request to driver arrived), median",
        unit: "min",
        reference: "about 3 min",
        low: 2.0,
        high: 4.5,
        source: "ride-hail wait times reported for New York (operators; TLC)",
    },
    Reference {
        property: "miles with a passenger",
        unit: "share",
        reference: "58% (2017)",
        low: 0.58 / 1.5,
        high: 0.87,
        source: "NYC TLC, as reported by Slate (Aug 2018)",
    },
    Reference {
        property: "rider cancellations",
        unit: "share of requests",
        reference: "the configured demand.rider_cancel_probability",
        low: 0.0,
        high: 0.0,
        source: "the scenario",
    },
    Reference {
        property: "drop-offs per pickup",
        unit: "ratio",
        reference: "1 in steady state (every trip under way ends; a cold start has pickups and no drop-offs)",
        low: 1.0 / 1.5,
        high: 1.5,
        source: "flow conservation: a city running for hours",
    },
    Reference {
        property: "busiest local hour of requests",
        unit: "hour",
        reference: "evening: app-based trips peak from 4 PM to midnight",
        low: 16.0,
        high: 23.0,
        source: "NYC TLC, 2016 TLC Factbook",
    },
];

#[derive(Clone, Copy, Default)]
struct DriverTrack {
    last_ping_us: i64,
    last: LatLon,
    /// 0 unknown, 1 idle or heading to a pickup, 2 on a trip.
    state: u8,
    /// Metres driven while the state was unknown (until a lifecycle event shows it).
    unknown_m: f64,
    events: u32,
    /// The least delay of its events below the median of their second, s (negative: its clock
    /// runs ahead).
    least_relative_delay_s: f32,
    /// The arrival second (+ 1) of its last late event, to find late events delivered together.
    last_late_second: u64,
    /// Whether that event was counted as delivered in a burst.
    late_run_counted: bool,
}

#[derive(Clone, Copy, Default)]
struct RideTrack {
    requested_us: i64,
    arrived: bool,
    picked_us: i64,
}

/// The median of durations some of which are censored (`false`: the stream ended, or the ride
/// was cancelled, before the end was seen): the Kaplan-Meier estimate. A plain median of the
/// ends seen would favour short durations in a short stream. None if the stream ends before
/// half of them do.
pub fn censored_median(samples: &mut [(f64, bool)]) -> Option<f64> {
    samples.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut at_risk = samples.len() as f64;
    let mut survival = 1.0;
    for &(duration, observed) in samples.iter() {
        if observed {
            survival *= 1.0 - 1.0 / at_risk;
            if survival <= 0.5 {
                return Some(duration);
            }
        }
        at_risk -= 1.0;
    }
    None
}

/// An event whose delay is this many seconds below the median of its second's came from a clock
/// running ahead (see `Profiler::close_second`).
const CLOCK_AHEAD_S: f64 = 0.5;
/// Driver events delayed more than this are what an offline phone held back (network delays
/// are far shorter).
const BURST_LATE_S: f64 = 5.0;

/// Accumulates a stream's properties, batch by batch.
pub struct Profiler {
    workload: Workload,
    land: Option<Land>,
    timezone: jiff::tz::TimeZone,
    events: u64,
    malformed: u64,
    kinds: [u64; 8],
    first_us: i64,
    last_us: i64,
    max_event_us: i64,
    behind_2s: u64,
    /// Driver events delayed more than [`BURST_LATE_S`], and those of them delivered in the same
    /// second as another such event of the same phone.
    late: u64,
    late_in_bursts: u64,
    drivers: HashMap<u32, DriverTrack>,
    zone_requests: HashMap<u64, u64>,
    rides: HashMap<u64, RideTrack>,
    trip_min: Vec<f64>,
    /// Pickup to drop-off, minutes, with whether the drop-off was seen.
    trips_censored: Vec<(f64, bool)>,
    /// Request to driver arrived, minutes, with whether the arrival was seen.
    waits_censored: Vec<(f64, bool)>,
    trip_miles: Vec<f64>,
    trip_mph: Vec<f64>,
    wait_min: Vec<f64>,
    manhattan_mph: Vec<f64>,
    ping_mph: Vec<f64>,
    metres_on_trip: f64,
    /// Metres driven in a known state (on a trip or not).
    metres: f64,
    /// Metres driven by drivers whose state the stream never showed.
    metres_unknown: f64,
    /// Request times, and the request times of rides riders cancelled.
    request_times: Vec<i64>,
    rider_cancel_times: Vec<i64>,
    requests_by_hour: [u64; 24],
    requests_by_district: Vec<u64>,
    requests_off_land: u64,
    cancels: [u64; 4],
    arrivals_per_second: Vec<u64>,
    delays_s: Vec<f64>,
    /// The current second's events (driver, delay in s) by the shard that generated them, and
    /// that second.
    second_delays: Vec<Vec<(u32, f32)>>,
    second: u64,
    /// Events whose delay is more than [`CLOCK_AHEAD_S`] below their second's median.
    ahead: u64,
}

impl Profiler {
    /// A profiler for streams of `workload`.
    pub fn new(workload: &Workload) -> Self {
        let land = workload.city.land_outlines();
        let districts = land.as_ref().map_or(0, |land| land.districts().len());
        Self {
            workload: workload.clone(),
            land,
            timezone: workload.city.time_zone(),
            events: 0,
            malformed: 0,
            kinds: [0; 8],
            first_us: i64::MAX,
            last_us: i64::MIN,
            max_event_us: i64::MIN,
            behind_2s: 0,
            late: 0,
            late_in_bursts: 0,
            drivers: HashMap::new(),
            zone_requests: HashMap::new(),
            rides: HashMap::new(),
            trip_min: Vec::new(),
            trips_censored: Vec::new(),
            waits_censored: Vec::new(),
            trip_miles: Vec::new(),
            trip_mph: Vec::new(),
            wait_min: Vec::new(),
            manhattan_mph: Vec::new(),
            ping_mph: Vec::new(),
            metres_on_trip: 0.0,
            metres: 0.0,
            metres_unknown: 0.0,
            request_times: Vec::new(),
            rider_cancel_times: Vec::new(),
            requests_by_hour: [0; 24],
            requests_by_district: vec![0; districts],
            requests_off_land: 0,
            cancels: [0; 4],
            arrivals_per_second: Vec::new(),
            delays_s: Vec::new(),
            second_delays: vec![Vec::new(); workload.run.shards as usize],
            second: 0,
            ahead: 0,
        }
    }

    /// Adds a batch of the stream, in arrival order.
    pub fn observe(&mut self, batch: &EventBatch) {
        let compression = self.workload.run.time_compression;
        let start_us = self.workload.run.start_time_us;
        let ping_gap_us = (self.workload.fleet.ping_interval.as_micros() as i64) * 3;
        let mut defects = batch.defects.iter().peekable();
        for (index, event) in batch.events.iter().enumerate() {
            self.events += 1;
            let second = (event.due_ns / 1_000_000_000) as usize;
            if self.arrivals_per_second.len() <= second {
                self.arrivals_per_second.resize(second + 1, 0);
            }
            self.arrivals_per_second[second] += 1;
            if defects.peek().is_some_and(|(at, _)| *at as usize == index) {
                defects.next();
                self.malformed += 1;
                continue;
            }
            let time = event.event_time_us;
            self.kinds[event.kind() as usize] += 1;
            self.first_us = self.first_us.min(time);
            self.last_us = self.last_us.max(time);
            // The time it arrived, in event time: the run's start plus its due time, compressed.
            let arrival_us = start_us + (event.due_ns as f64 / 1e3 * compression) as i64;
            let delay_s = (arrival_us - time) as f64 / 1e6;
            self.delays_s.push(delay_s);
            // Seconds of the stream's clock in event time (a wall second is many at compression).
            let second = (arrival_us / 1_000_000) as u64;
            if second != self.second {
                self.close_second();
                self.second = second;
            }
            // Event ids interleave the shards: id - 1 is the shard modulo their count.
            let shard = ((event.event_id.wrapping_sub(1)) % self.second_delays.len() as u64) as usize;
            self.second_delays[shard].push((event.payload.driver_id().unwrap_or(0), delay_s as f32));
            if self.max_event_us.saturating_sub(time) > 2_000_000 {
                self.behind_2s += 1;
            }
            self.max_event_us = self.max_event_us.max(time);
            if let Some(driver) = event.payload.driver_id() {
                let track = self.drivers.entry(driver).or_default();
                track.events += 1;
                if delay_s > BURST_LATE_S {
                    self.late += 1;
                    let second = event.due_ns / 1_000_000_000 + 1;
                    // Both of a pair delivered together count: the first when the second comes.
                    if track.last_late_second == second {
                        self.late_in_bursts += if track.late_run_counted { 1 } else { 2 };
                        track.late_run_counted = true;
                    } else {
                        track.late_run_counted = false;
                    }
                    track.last_late_second = second;
                }
            }
            match event.payload {
                Payload::DriverPing { driver_id, .. } => {
                    let track = self.drivers.entry(driver_id).or_default();
                    let gap_us = time - track.last_ping_us;
                    if track.events > 1 && gap_us > 0 && gap_us <= ping_gap_us {
                        let metres = distance_m(track.last, event.position);
                        let mph = metres / (gap_us as f64 / 1e6) / MPS_PER_MPH;
                        // A parked car is not driving: speeds are of cars that moved.
                        if mph >= 1.0 {
                            self.ping_mph.push(mph);
                            if self.land.as_ref().is_some_and(|land| land.code_at(event.position) == 1) {
                                self.manhattan_mph.push(mph);
                            }
                        }
                        match track.state {
                            0 => track.unknown_m += metres,
                            2 => {
                                self.metres_on_trip += metres;
                                self.metres += metres;
                            }
                            _ => self.metres += metres,
                        }
                    }
                    track.last_ping_us = time;
                    track.last = event.position;
                }
                Payload::RideRequested { ride_id, .. } => {
                    self.rides.entry(ride_id).or_default().requested_us = time;
                    self.request_times.push(time);
                    *self.zone_requests.entry(event.zone.0).or_default() += 1;
                    let local_us = time + utc_offset_us(&self.timezone, time);
                    self.requests_by_hour[(local_us.div_euclid(3_600_000_000)).rem_euclid(24) as usize] += 1;
                    if let Some(land) = &self.land {
                        match land.code_at(event.position) {
                            0 => self.requests_off_land += 1,
                            code => self.requests_by_district[usize::from(code) - 1] += 1,
                        }
                    }
                }
                Payload::RideAccepted { driver_id, .. } => self.reveal(driver_id, 1),
                Payload::DriverArrived { ride_id, driver_id } => {
                    self.reveal(driver_id, 1);
                    if let Some(ride) = self.rides.get_mut(&ride_id).filter(|ride| ride.requested_us != 0) {
                        let minutes = (time - ride.requested_us) as f64 / 60e6;
                        self.wait_min.push(minutes);
                        self.waits_censored.push((minutes, true));
                        ride.arrived = true;
                    }
                }
                Payload::PickedUp { ride_id, driver_id } => {
                    self.reveal(driver_id, 1);
                    self.drivers.entry(driver_id).or_default().state = 2;
                    self.rides.entry(ride_id).or_default().picked_us = time;
                }
                Payload::DroppedOff { ride_id, driver_id, distance_m, .. } => {
                    self.reveal(driver_id, 2);
                    self.drivers.entry(driver_id).or_default().state = 1;
                    if let Some(ride) = self.rides.remove(&ride_id).filter(|ride| ride.picked_us != 0) {
                        let minutes = (time - ride.picked_us) as f64 / 60e6;
                        let miles = f64::from(distance_m) / 1609.344;
                        self.trip_min.push(minutes);
                        self.trips_censored.push((minutes, true));
                        if minutes > 0.0 {
                            self.trip_mph.push(miles / (minutes / 60.0));
                        }
                    }
                    // Every drop-off's distance, also of trips begun before the stream: in a
                    // steady stream, the trips that end in it are a fair sample of trips.
                    self.trip_miles.push(f64::from(distance_m) / 1609.344);
                }
                Payload::RideCancelled { ride_id, driver_id, by, .. } => {
                    if driver_id != 0 {
                        self.reveal(driver_id, 1);
                    }
                    self.cancels[by as usize] += 1;
                    if by == CancelledBy::Driver {
                        // The platform re-dispatches: the ride and its rider's wait go on.
                        continue;
                    }
                    if let Some(ride) = self.rides.remove(&ride_id)
                        && ride.requested_us != 0
                    {
                        if !ride.arrived {
                            self.waits_censored.push(((time - ride.requested_us) as f64 / 60e6, false));
                        }
                        if by == CancelledBy::Rider {
                            self.rider_cancel_times.push(ride.requested_us);
                        }
                    }
                }
            }
        }
    }

    /// Finds the events of the second that ended whose delay is well below the median of their
    /// shard's that second: a shard sends its events in its generation slots, so its send clock
    /// trails arrival by the events its offline phones hold, which varies from shard to shard
    /// and over time; within a second of one shard it barely does.
    fn close_second(&mut self) {
        let mut delays: Vec<f32> = Vec::new();
        for shard in 0..self.second_delays.len() {
            let events = std::mem::take(&mut self.second_delays[shard]);
            if events.is_empty() {
                continue;
            }
            delays.clear();
            delays.extend(events.iter().map(|&(_, delay)| delay));
            let middle = delays.len() / 2;
            let median = *delays.select_nth_unstable_by(middle, f32::total_cmp).1;
            for &(driver, delay) in &events {
                let relative = delay - median;
                if f64::from(relative) < -CLOCK_AHEAD_S {
                    self.ahead += 1;
                }
                if driver != 0
                    && let Some(track) = self.drivers.get_mut(&driver)
                {
                    track.least_relative_delay_s = track.least_relative_delay_s.min(relative);
                }
            }
            self.second_delays[shard] = events;
            self.second_delays[shard].clear();
        }
    }

    /// A lifecycle event of `driver` shows the state it was in before (1: not on a trip, 2: on
    /// one): the miles it drove in an unknown state count for that state.
    fn reveal(&mut self, driver: u32, before: u8) {
        let track = self.drivers.entry(driver).or_default();
        if track.state == 0 {
            if before == 2 {
                self.metres_on_trip += track.unknown_m;
            }
            self.metres += track.unknown_m;
            track.unknown_m = 0.0;
            track.state = 1;
        }
    }

    /// The profile of what was observed.
    pub fn finish(mut self) -> StreamProfile {
        self.close_second();
        self.metres_unknown = self.drivers.values().map(|track| track.unknown_m).sum();
        // Riders cancel up to five minutes after requesting, or at the curb: only requests made
        // well before the stream's end show whether they were cancelled.
        let cutoff_us = self.last_us - RIDER_CANCEL_HORIZON_US;
        let early_requests = self.request_times.iter().filter(|&&time| time <= cutoff_us).count() as u64;
        let early_cancels = self.rider_cancel_times.iter().filter(|&&time| time <= cutoff_us).count() as u64;
        // Rides still under way when the stream ends: censored where it ends.
        for ride in self.rides.values() {
            if ride.requested_us != 0 && !ride.arrived {
                self.waits_censored.push(((self.last_us - ride.requested_us) as f64 / 60e6, false));
            }
            if ride.picked_us != 0 {
                self.trips_censored.push(((self.last_us - ride.picked_us) as f64 / 60e6, false));
            }
        }
        let trip_median = censored_median(&mut self.trips_censored);
        let wait_median = censored_median(&mut self.waits_censored);
        let known = self.events - self.malformed;
        let share = |count: u64| if known > 0 { count as f64 / known as f64 } else { 0.0 };
        let mix =
            EventKind::ALL.iter().map(|kind| (kind.name().to_owned(), share(self.kinds[*kind as usize]))).collect();
        let pings = self.kinds[EventKind::DriverPing as usize];
        let lifecycle = known - pings;
        let requests = self.kinds[EventKind::RideRequested as usize];
        let hours = if self.last_us > self.first_us { (self.last_us - self.first_us) as f64 / 3.6e9 } else { 0.0 };
        // Steady state: per driver-hour online, 3600 / ping interval pings; the requests the
        // scenario asks for, each a request, and (completed) an accept, an arrival, a pickup and
        // a drop-off: five events a ride.
        let demand = &self.workload.demand;
        let pings_per_driver_hour = 3600.0 / self.workload.fleet.ping_interval.as_secs_f64();
        let profile_mean = demand.hourly_profile.iter().sum::<f64>() / 24.0;
        let expected_lifecycle = demand.requests_per_driver_hour * profile_mean * 5.0;
        let steady_share = expected_lifecycle / (expected_lifecycle + pings_per_driver_hour);
        let lifecycle_share = share(lifecycle);
        let seconds: Vec<u64> = self.arrivals_per_second.iter().copied().filter(|&count| count > 0).collect();
        // Whole seconds only: the last is cut short by the end of the run.
        let whole = &seconds[..seconds.len().saturating_sub(1)];
        let (cv, poisson_cv) = if whole.len() >= 2 {
            let mean = whole.iter().sum::<u64>() as f64 / whole.len() as f64;
            let variance = whole.iter().map(|&count| (count as f64 - mean).powi(2)).sum::<f64>() / whole.len() as f64;
            (variance.sqrt() / mean, 1.0 / mean.sqrt())
        } else {
            (0.0, 0.0)
        };
        let busiest_hour =
            (hours >= 24.0).then(|| (0..24).max_by_key(|&hour| self.requests_by_hour[hour]).expect("24 hours") as f64);
        let (peak, trough) = (
            self.requests_by_hour.iter().copied().max().unwrap_or(0),
            self.requests_by_hour.iter().copied().min().unwrap_or(0),
        );
        let on_land = self.land.as_ref().map(|_| {
            let placed = self.requests_by_district.iter().sum::<u64>() + self.requests_off_land;
            if placed > 0 { 1.0 - self.requests_off_land as f64 / placed as f64 } else { 1.0 }
        });
        let by_district = self.land.as_ref().map_or_else(Vec::new, |land| {
            let placed = self.requests_by_district.iter().sum::<u64>() + self.requests_off_land;
            land.districts()
                .iter()
                .zip(&self.requests_by_district)
                .map(|(name, count)| ((*name).to_owned(), if placed > 0 { *count as f64 / placed as f64 } else { 0.0 }))
                .collect()
        });
        let rider_cancels =
            if requests > 0 { self.cancels[CancelledBy::Rider as usize] as f64 / requests as f64 } else { 0.0 };
        let trip_minutes = Quantiles::of(&mut self.trip_min);
        let trip_miles = Quantiles::of(&mut self.trip_miles);
        let pickup_wait_minutes = Quantiles::of(&mut self.wait_min);
        let manhattan_mph = Quantiles::of(&mut self.manhattan_mph);
        // Only miles whose state the stream showed; measured when that is most of them.
        let miles_with_passenger =
            (self.metres > 0.0 && self.metres >= self.metres_unknown).then(|| self.metres_on_trip / self.metres);
        let pickups = self.kinds[EventKind::PickedUp as usize];
        let dropoffs = self.kinds[EventKind::DroppedOff as usize];
        let measured = |property: &str| -> (Option<f64>, Option<String>) {
            let short = |what: &str| (None, Some(format!("not measured: {what}")));
            match property {
                "requests in the five boroughs" => match on_land {
                    Some(share) if requests > 0 => (Some(share), None),
                    Some(_) => short("no requests"),
                    None => short("the city has no land outlines ([city] land = \"box\")"),
                },
                "Manhattan road speed, median ping" if manhattan_mph.count >= 20 => {
                    // Pings show straight-line progress; the road is ROAD_FACTOR longer.
                    (Some(manhattan_mph.p50 * crate::shard::ROAD_FACTOR), None)
                }
                "Manhattan road speed, median ping" => short("too few pings in Manhattan"),
                "trip duration, median" => match trip_median {
                    Some(median) if trip_minutes.count >= 20 => (Some(median), None),
                    _ => short("the stream ends before half the trips begun in it do"),
                },
                "trip distance, mean" if trip_miles.count >= 20 => (Some(trip_miles.mean), None),
                "trip distance, mean" => short("too few trips end in the stream"),
                "pickup wait (request to driver arrived), median" => match wait_median {
                    Some(median) if pickup_wait_minutes.count >= 20 => (Some(median), None),
                    _ => short("the stream ends before half the drivers sent reach their riders"),
                },
                "miles with a passenger" => match miles_with_passenger {
                    Some(share) => (Some(share), None),
                    None => short(
                        "most drivers' miles are in a state the stream does not show (no lifecycle event of theirs)",
                    ),
                },
                "rider cancellations" if early_requests >= 200 => {
                    (Some(early_cancels as f64 / early_requests as f64), None)
                }
                "rider cancellations" => short("too few requests ten minutes or more before the stream's end"),
                "drop-offs per pickup" if pickups >= 50 => (Some(dropoffs as f64 / pickups as f64), None),
                "drop-offs per pickup" => short("too few pickups"),
                "busiest local hour of requests" => match busiest_hour {
                    Some(hour) => (Some(hour), None),
                    None => short("the stream covers less than a day of event time"),
                },
                _ => short("unknown property"),
            }
        };
        // How many times the far side of the range a value is, for ranges with a positive end.
        let factor = |big: f64, small: f64| if small > 0.0 { format!(" ({:.1}x)", big / small) } else { String::new() };
        let checks = REFERENCES
            .iter()
            .map(|reference| {
                let (value, reason) = measured(reference.property);
                let (low, high) = if reference.property == "rider cancellations" {
                    let configured = demand.rider_cancel_probability;
                    // The configured share, within sampling noise (and what platform
                    // cancellations take first).
                    (configured * 0.8, configured * 1.05 + 0.002)
                } else {
                    (reference.low, reference.high)
                };
                let verdict = match (value, reason) {
                    (_, Some(reason)) => reason,
                    (Some(value), None) if (low..=high).contains(&value) => "within".to_owned(),
                    (Some(value), None) if value < low => {
                        format!("off: {value:.2} is below {low:.2}{}", factor(low, value))
                    }
                    (Some(value), None) => format!("off: {value:.2} is above {high:.2}{}", factor(value, high)),
                    (None, None) => "not measured".to_owned(),
                };
                Check {
                    property: reference.property.to_owned(),
                    measured: value,
                    unit: reference.unit.to_owned(),
                    reference: if reference.property == "rider cancellations" {
                        format!("{:.1}% (configured)", demand.rider_cancel_probability * 100.0)
                    } else {
                        reference.reference.to_owned()
                    },
                    low,
                    high,
                    source: reference.source.to_owned(),
                    verdict,
                }
            })
            .collect();
        let mut delays = std::mem::take(&mut self.delays_s);
        let delivery_delay_seconds = Quantiles::of(&mut delays);
        // `Quantiles::of` sorted the delays.
        StreamProfile {
            events: self.events,
            malformed: self.malformed,
            event_time_hours: hours,
            mix,
            lifecycle_share,
            lifecycle_share_steady: steady_share,
            drivers: Skew::of(self.drivers.values().map(|track| u64::from(track.events))),
            request_zones: Skew::of(self.zone_requests.values().copied()),
            requests_by_district: by_district,
            requests_on_land: on_land,
            trip_minutes,
            trip_minutes_median: trip_median,
            pickup_wait_minutes_median: wait_median,
            trip_miles,
            trip_mph: Quantiles::of(&mut self.trip_mph),
            pickup_wait_minutes,
            ping_mph: Quantiles::of(&mut self.ping_mph),
            manhattan_ping_mph: manhattan_mph,
            miles_with_passenger,
            rider_cancel_share: rider_cancels,
            driver_cancel_share: if requests > 0 {
                self.cancels[CancelledBy::Driver as usize] as f64 / requests as f64
            } else {
                0.0
            },
            platform_cancel_share: if requests > 0 {
                self.cancels[CancelledBy::Platform as usize] as f64 / requests as f64
            } else {
                0.0
            },
            requests_by_local_hour: self.requests_by_hour,
            peak_to_trough: if hours >= 24.0 && trough > 0 { Some(peak as f64 / trough as f64) } else { None },
            arrivals_per_second_cv: cv,
            poisson_cv,
            delivery_delay_seconds,
            behind_max_event_time_2s_share: share(self.behind_2s),
            clock_ahead_events_share: if delays.is_empty() { 0.0 } else { self.ahead as f64 / delays.len() as f64 },
            clock_ahead_phones_share: if self.drivers.is_empty() {
                0.0
            } else {
                self.drivers.values().filter(|track| f64::from(track.least_relative_delay_s) < -CLOCK_AHEAD_S).count()
                    as f64
                    / self.drivers.len() as f64
            },
            clock_lead_seconds_max: self
                .drivers
                .values()
                .map(|track| -f64::from(track.least_relative_delay_s))
                .fold(0.0, f64::max),
            late_driver_events_share: share(self.late),
            late_in_bursts_share: if self.late > 0 { self.late_in_bursts as f64 / self.late as f64 } else { 0.0 },
            checks,
        }
    }
}

/// The profile of the stream `workload` generates until `limit_due_ns` (a run's duration),
/// generated again on `threads` threads: the stream is a function of the scenario, so this is
/// the stream a run sent.
pub fn profile_stream(workload: &Workload, limit_due_ns: u64, threads: usize) -> StreamProfile {
    let mut generator = crate::generator::Generator::new(
        workload,
        crate::generator::GeneratorOptions {
            threads: threads.max(1),
            background: threads > 1,
            limit_events: None,
            limit_due_ns: Some(limit_due_ns),
        },
    );
    let mut profiler = Profiler::new(workload);
    while let Some(batch) = generator.next_batch() {
        profiler.observe(batch);
    }
    profiler.finish()
}

/// A stream's measured properties and their checks against the references.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamProfile {
    /// Events, malformed ones included.
    pub events: u64,
    /// Malformed events.
    pub malformed: u64,
    /// Event time covered, hours.
    pub event_time_hours: f64,
    /// Share of each kind among well-formed events.
    pub mix: Vec<(String, f64)>,
    /// Share of ride lifecycle events (everything but pings).
    pub lifecycle_share: f64,
    /// That share at steady state, from the scenario's rates.
    pub lifecycle_share_steady: f64,
    /// Events per driver.
    pub drivers: Skew,
    /// Requests per zone.
    pub request_zones: Skew,
    /// Share of requests by district (New York: borough).
    pub requests_by_district: Vec<(String, f64)>,
    /// Share of requests on land (None without land outlines).
    pub requests_on_land: Option<f64>,
    /// Pickup to drop-off, minutes, of the trips seen to end (short ones are favoured in a
    /// short stream: `trip_minutes_median` corrects for it).
    pub trip_minutes: Quantiles,
    /// The median trip, counting those the stream ends during (Kaplan-Meier).
    pub trip_minutes_median: Option<f64>,
    /// The median wait, likewise.
    pub pickup_wait_minutes_median: Option<f64>,
    /// Road distance of trips, miles.
    pub trip_miles: Quantiles,
    /// Trip road speed, mph.
    pub trip_mph: Quantiles,
    /// Request to driver arrived, minutes.
    pub pickup_wait_minutes: Quantiles,
    /// Straight-line speed between consecutive pings of a moving driver, mph.
    pub ping_mph: Quantiles,
    /// The same, in Manhattan.
    pub manhattan_ping_mph: Quantiles,
    /// Share of the distance drivers covered with a passenger.
    pub miles_with_passenger: Option<f64>,
    /// Rides cancelled by riders, per request.
    pub rider_cancel_share: f64,
    /// By drivers, per request.
    pub driver_cancel_share: f64,
    /// By the platform (no driver found), per request.
    pub platform_cancel_share: f64,
    /// Requests by hour of the city's local day.
    pub requests_by_local_hour: [u64; 24],
    /// Busiest hour over quietest (a day or more of event time).
    pub peak_to_trough: Option<f64>,
    /// Coefficient of variation of events per second of arrival.
    pub arrivals_per_second_cv: f64,
    /// That of a Poisson process at the same mean rate.
    pub poisson_cv: f64,
    /// Arrival minus event time, seconds (negative for clocks running ahead).
    pub delivery_delay_seconds: Quantiles,
    /// Share of events that arrive more than 2 s of event time behind the latest event time
    /// seen before them (what a watermark with a 2 s delay would call late).
    pub behind_max_event_time_2s_share: f64,
    /// Share of events delayed more than 0.5 s less than the median event of their second:
    /// stamped by clocks running ahead.
    pub clock_ahead_events_share: f64,
    /// Share of drivers' phones with such an event.
    pub clock_ahead_phones_share: f64,
    /// The most a phone's delay was below its second's median, s: how far the clock furthest
    /// ahead runs ahead.
    pub clock_lead_seconds_max: f64,
    /// Share of events that are drivers' and delayed more than 5 s (held back by offline phones).
    pub late_driver_events_share: f64,
    /// Of those, the share delivered in the same second as another of the same phone's: an
    /// offline phone's buffer delivered in a burst when it reconnects.
    pub late_in_bursts_share: f64,
    /// The properties with references, and their verdicts.
    pub checks: Vec<Check>,
}

impl StreamProfile {
    /// Whether every measured property is within its tolerance.
    pub fn within_tolerance(&self) -> bool {
        self.checks.iter().all(Check::passes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Zone};

    fn workload(extra: &str) -> Workload {
        Workload::from_toml(&format!("[run]\nrate_eps = 1000\nstart_time = \"2026-06-01T12:00:00Z\"\n{extra}"), "t")
            .unwrap()
    }

    fn event(id: u64, time_s: f64, lat: f64, lon: f64, payload: Payload) -> Event {
        Event {
            event_id: id,
            event_time_us: 1_780_315_200_000_000 + (time_s * 1e6) as i64,
            due_ns: (time_s * 1e9) as u64,
            zone: Zone(id % 3),
            position: LatLon::from_degrees(lat, lon),
            payload,
        }
    }

    #[test]
    fn the_censored_median_counts_what_the_stream_ends_during() {
        // Ten rides: five seen to end after 1..5 minutes, five still going at 2 minutes. The
        // plain median of those seen is 3; at least half last longer than 2 minutes, and the
        // estimate is the first end at which survival falls to a half: 4 (after 1: 0.9, 2: 0.8,
        // then five censored leave 3 at risk: 3 → 0.533, 4 → 0.267).
        let mut samples: Vec<(f64, bool)> = (1..=5).map(|m| (f64::from(m), true)).collect();
        samples.extend(std::iter::repeat_n((2.5, false), 5));
        assert_eq!(censored_median(&mut samples), Some(4.0));
        // Nothing censored: the ordinary median.
        let mut plain: Vec<(f64, bool)> = (1..=4).map(|m| (f64::from(m), true)).collect();
        assert_eq!(censored_median(&mut plain), Some(2.0));
        // Most still going at the end: no median.
        let mut short = vec![(1.0, true), (2.0, false), (2.0, false), (2.0, false)];
        assert_eq!(censored_median(&mut short), None);
    }

    #[test]
    fn quantiles_and_skew_of_known_samples() {
        let q = Quantiles::of(&mut [5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((q.count, q.mean, q.p50, q.max), (5, 3.0, 3.0, 5.0));
        // 100 keys: one with 901 events, 99 with one each.
        let skew = Skew::of(std::iter::once(901).chain(std::iter::repeat_n(1, 99)));
        assert_eq!(skew.keys, 100);
        assert!((skew.top_1pct_share - 0.901).abs() < 1e-9);
        assert!((skew.top_10pct_share - 0.910).abs() < 1e-9);
    }

    #[test]
    fn a_ride_gives_its_wait_duration_distance_and_the_miles_with_a_passenger() {
        let mut profiler = Profiler::new(&workload(""));
        let ping = |driver_id| Payload::DriverPing { driver_id, speed_cmps: 0, heading_cdeg: 0 };
        let mut batch = EventBatch::default();
        // Driver 7 in Brooklyn drives 400 m north in 4 s (224 mph) on a trip revealed later by
        // its drop-off, then 200 m idle.
        batch.events.push(event(1, 0.0, 40.6782, -73.9442, ping(7)));
        batch.events.push(event(2, 4.0, 40.6782 + 400.0 / 111_320.0, -73.9442, ping(7)));
        // A ride: requested at 10 s in Midtown, arrived after 3 min, picked up, dropped 20 min on.
        let ride = |payload| payload;
        batch.events.push(event(3, 10.0, 40.7549, -73.9840, ride(Payload::RideRequested { ride_id: 1, rider_id: 1 })));
        batch.events.push(event(
            4,
            12.0,
            40.7549,
            -73.9840,
            Payload::RideAccepted { ride_id: 1, driver_id: 9, rider_id: 1 },
        ));
        batch.events.push(event(5, 190.0, 40.7549, -73.9840, Payload::DriverArrived { ride_id: 1, driver_id: 9 }));
        batch.events.push(event(6, 200.0, 40.7549, -73.9840, Payload::PickedUp { ride_id: 1, driver_id: 9 }));
        batch.events.push(event(
            7,
            1400.0,
            40.7,
            -73.99,
            Payload::DroppedOff { ride_id: 1, driver_id: 9, fare_cents: 2000, distance_m: 8047 },
        ));
        batch.events.push(event(
            8,
            1401.0,
            40.7,
            -73.99,
            Payload::DroppedOff { ride_id: 2, driver_id: 7, fare_cents: 900, distance_m: 1000 },
        ));
        batch.events.push(event(9, 1402.0, 40.6782 + 600.0 / 111_320.0, -73.9442, ping(7)));
        batch.events.push(event(10, 1403.0, 40.6782 + 800.0 / 111_320.0, -73.9442, ping(7)));
        // A request in the Hudson.
        batch.events.push(event(11, 1404.0, 40.7680, -74.0030, Payload::RideRequested { ride_id: 3, rider_id: 2 }));
        profiler.observe(&batch);
        let profile = profiler.finish();
        assert_eq!(profile.pickup_wait_minutes.count, 1);
        assert!((profile.pickup_wait_minutes.p50 - 3.0).abs() < 1e-9);
        assert!((profile.trip_minutes.p50 - 20.0).abs() < 1e-9);
        assert!((profile.trip_miles.p50 - 5.0).abs() < 0.01);
        assert!((profile.trip_mph.p50 - 15.0).abs() < 0.05);
        // 400 m on the trip (before the drop-off revealed it), 200 m after, in the 1 s gap.
        let with_passenger = profile.miles_with_passenger.unwrap();
        assert!((with_passenger - 400.0 / 600.0).abs() < 0.01, "{with_passenger}");
        assert_eq!(profile.requests_on_land, Some(0.5), "one request in Midtown, one in the Hudson");
        assert_eq!(profile.requests_by_district[0], ("Manhattan".to_owned(), 0.5));
        // Requests after 12:00 UTC are after 08:00 in New York (EDT, June).
        assert_eq!(profile.requests_by_local_hour[8], 2);
        assert_eq!(profile.requests_by_local_hour[12], 0);
        let check = |name: &str| profile.checks.iter().find(|check| check.property == name).unwrap().clone();
        assert_eq!(check("requests in the five boroughs").verdict, "off: 0.50 is below 0.99 (2.0x)");
        assert!(check("trip duration, median").verdict.starts_with("not measured"), "one trip is too few");
        assert!(!profile.within_tolerance());
    }

    #[test]
    fn lateness_and_the_share_behind_the_latest_event_time_are_measured_on_arrival() {
        let mut profiler = Profiler::new(&workload(""));
        let ping = Payload::DriverPing { driver_id: 1, speed_cmps: 0, heading_cdeg: 0 };
        let mut batch = EventBatch::default();
        let mut late = event(2, 10.0, 40.7, -73.9, ping);
        late.event_time_us -= 5_000_000;
        batch.events.push(event(1, 10.0, 40.7, -73.9, ping));
        batch.events.push(late);
        profiler.observe(&batch);
        let profile = profiler.finish();
        assert_eq!(profile.delivery_delay_seconds.max, 5.0);
        assert_eq!(profile.behind_max_event_time_2s_share, 0.5);
    }

    /// Late events of one phone that arrive together are a burst; a late event alone is not.
    #[test]
    fn late_events_delivered_together_are_found_as_bursts() {
        let mut profiler = Profiler::new(&workload(""));
        let ping = |driver_id| Payload::DriverPing { driver_id, speed_cmps: 0, heading_cdeg: 0 };
        let late = |id, driver, arrival_s: f64, delay_s: f64| {
            let mut event = event(id, arrival_s, 40.7, -73.9, ping(driver));
            event.event_time_us -= (delay_s * 1e6) as i64;
            event
        };
        let mut batch = EventBatch::default();
        batch.events.push(event(1, 99.0, 40.7, -73.9, ping(5)));
        // Driver 2 reconnects at 100 s with three events of the last 40 s.
        batch.events.extend([late(2, 2, 100.0, 40.0), late(3, 2, 100.1, 30.0), late(4, 2, 100.2, 20.0)]);
        // Drivers 3 and 4: one late event each; driver 3's next is on time.
        batch.events.extend([late(5, 3, 100.3, 30.0), event(6, 100.4, 40.7, -73.9, ping(3)), late(7, 4, 105.0, 9.0)]);
        profiler.observe(&batch);
        let profile = profiler.finish();
        assert!((profile.late_driver_events_share - 5.0 / 7.0).abs() < 1e-9);
        assert!((profile.late_in_bursts_share - 3.0 / 5.0).abs() < 1e-9, "{}", profile.late_in_bursts_share);
    }

    /// A phone that stamps its events 3 s after they arrive runs ahead; the rest, delayed alike
    /// however much the send clock trails, do not.
    #[test]
    fn a_clock_running_ahead_is_found_against_its_seconds_median() {
        let mut profiler = Profiler::new(&workload(""));
        let ping = |driver_id| Payload::DriverPing { driver_id, speed_cmps: 0, heading_cdeg: 0 };
        let mut batch = EventBatch::default();
        // Shard 0's events (ids 1, 9, 17, ... of 8 shards), all 0.7 s "early" on the send clock.
        for index in 0..20u32 {
            let mut on_time =
                event(1 + 8 * u64::from(index), 50.0 + f64::from(index) * 0.01, 40.7, -73.9, ping(index + 10));
            on_time.event_time_us += 700_000;
            batch.events.push(on_time);
        }
        let mut ahead = event(1 + 8 * 20, 50.5, 40.7, -73.9, ping(99));
        ahead.event_time_us += 3_700_000;
        batch.events.push(ahead);
        profiler.observe(&batch);
        let profile = profiler.finish();
        assert!((profile.clock_ahead_events_share - 1.0 / 21.0).abs() < 1e-9, "{}", profile.clock_ahead_events_share);
        assert!((profile.clock_ahead_phones_share - 1.0 / 21.0).abs() < 1e-9);
        assert!((profile.clock_lead_seconds_max - 3.0).abs() < 1e-6, "{}", profile.clock_lead_seconds_max);
    }
}
