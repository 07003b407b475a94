//! One shard of the city: a slice of the fleet with its riders, rides and delivery delays.
//!
//! A shard is a self-contained simulation driven by its own seeded generator, so shards can run
//! on any thread and still produce the same stream. Each generation slot emits exactly one event,
//! in event-time order: a due ride transition if there is one, else a new ride request if one is
//! due, else a ping from the next online driver (round-robin, so every online driver pings about
//! once per ping interval). With lateness or duplicates configured, events then pass through an
//! [`ArrivalWheel`] and leave in arrival order.
//!
//! Ride lifecycle: requested → (dispatch finds the nearest idle driver) accepted → driver arrived
//! → picked up → dropped off, with rider, driver and platform (no driver found) cancellations.
//! Drivers go online and offline in sessions with gaps of more than ten minutes.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, StandardNormal};
use rand_pcg::Pcg64Mcg;

use crate::city::{BoxE6, ZoneGrid, distance_m, moved_m, offset_m};
use crate::event::{CancelledBy, Event, LatLon, Payload, Zone};
use crate::land::Land;
use crate::reorder::{ArrivalWheel, Pending};
use crate::schedule::{DueWalk, Schedule};
use crate::timers::{Timed, TimerWheel};
use crate::workload::{DelayDistribution, MIN_OFFLINE_GAP, Workload};

/// Mark: this event is a producer's re-send of an earlier one.
pub const MARK_DUPLICATE: u8 = 1;
/// Mark: this event was held back by an offline phone.
pub const MARK_HELD_BACK: u8 = 2;
/// Mark: this event's time comes from a skewed device clock.
pub const MARK_SKEWED: u8 = 4;
/// Mark: this event was delivered more than `lateness.late_after` after it happened.
pub const MARK_LATE: u8 = 8;

/// How soon the platform offers a ride to another driver after its driver cancelled.
const REDISPATCH_US: i64 = 3_000_000;
/// Idle drivers are indexed on a coarse grid of this many squares a side, for dispatch.
const DISPATCH_GRID: usize = 32;
/// How often a rebuild of the dispatch index starts, in event time.
const DISPATCH_INDEX_REFRESH_US: i64 = 30_000_000;
/// A rebuild scans the fleet in this many steps, this far apart in event time (about 5 s in
/// all). Scanning a shard's half a million drivers at once stalled the generator for 10 ms a
/// shard, all shards in the same batch: 80 ms of schedule lag every 30 s at rush hour.
const DISPATCH_INDEX_STEPS: usize = 256;
const DISPATCH_INDEX_STEP_US: i64 = 20_000;
/// Events whose zones are looked up together, after they are generated: one lattice read after
/// another, with nothing between them that waits on the last, the reads overlap, where each
/// ping's own read stalled it. (A zone is a function of the event's position alone.)
const ZONE_CHUNK: usize = 256;
/// Generation slots per step of the reorder path.
const REORDER_CHUNK: usize = 256;
/// How many pushes ahead the reorder path prefetches a push's slot in the wheel.
const PREFETCH_PUSHES_AHEAD: usize = 16;
/// Mean time a driver holds a heading while cruising without a ride.
const CRUISE_TURN_SECONDS: f64 = 60.0;
/// The ride timers' wheel: half-second buckets, and an hour and more of them, so that only the
/// rare ride longer than that waits in the overflow heap.
const TIMER_BUCKET_US: i64 = 1 << 19;
const TIMER_BUCKETS: usize = 8192;
/// How many drivers ahead a ping prefetches a driver's record. The hardware's stream prefetcher
/// alone left a quarter of the ping path stalled on the fleet. (A prefetch of the zone square
/// each driver would ping from, read from its extrapolated position, cost more than the misses
/// on the zone lattice it saved, once the fleet itself was prefetched.)
const PREFETCH_DRIVERS_AHEAD: usize = 64;

/// How many of the nearest square's idle drivers a dispatch prefetches: the 8 it compares and
/// room for the stale entries it drops on the way.
const NEAREST_IDLE_PREFETCH: usize = 16;

/// Road distance over straight-line distance: a car drives the grid, not the crow's line.
/// Trip distances (and fares) are road distances; a car's straight-line progress between two
/// pings is its road speed over this.
pub const ROAD_FACTOR: f64 = 1.3;

/// Manhattan's road speed as a share of the fleet's (`fleet.speed_mps`, the outer boroughs').
/// NYC DOT's Mobility Reports measure taxi speeds in the Manhattan CBD at about 7 mph and in
/// Midtown below 5 (2018-2019), against 15-20 mph on the outer boroughs' arterials: 0.4 of the
/// default 7.5 m/s (16.8 mph) is 3 m/s (6.7 mph). docs/workload.md has the sources.
const MANHATTAN_SPEED_FACTOR: f64 = 0.4;

/// The time from a driver's car reaching the pickup block to the driver being at the rider:
/// parking, finding the rider, one-way streets. Exponential, this mean, on top of the drive.
const CURB_MEAN_US: f64 = 40e6;

/// Where New York's demand outside the hot zones is, by borough (Manhattan, Brooklyn, Queens,
/// the Bronx, Staten Island): spread uniformly over each borough's land. Manhattan has the
/// largest share and Staten Island a small one, as in the TLC's for-hire trip records
/// (docs/workload.md).
const NEW_YORK_DEMAND_BY_BOROUGH: [f64; 5] = [0.30, 0.28, 0.22, 0.16, 0.04];

/// Median straight-line length of a trip that is not to a hot zone, metres: 6.1 km by road.
/// Schaller's The New Automobility (2018) gives 5.2 miles (8.4 km) for a typical ride-hail
/// trip; this log-normal (σ 0.6) has a road mean of 7.4 km, and airport runs add to it.
const TRIP_MEDIAN_M: f64 = 4_700.0;

/// A warm start's estimate of a pickup's drive (the measured median wait, about four minutes,
/// less the dispatch, acceptance and curb times).
const WARM_APPROACH_S: f64 = 150.0;

/// At most this share of online drivers starts on a ride.
const WARM_BUSY_MAX: f64 = 0.9;

/// Trips under way are drawn in proportion to their length up to this length, seconds.
const WARM_TRIP_CAP_S: f64 = 7200.0;

/// Tries to place a point on land before falling back to a sure place.
const LAND_TRIES: usize = 16;

/// A stable 64-bit mixer (SplitMix64's finaliser), for deriving seeds and per-driver traits.
pub fn mix64(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// The seed of random stream `stream` under root seed `root`.
pub fn derive_seed(root: u64, stream: u64) -> u64 {
    mix64(root ^ mix64(stream))
}

/// One cache line each: a driver that straddled two lines cost two misses a ping.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Driver {
    position: LatLon,
    /// Velocity in microdegrees per second.
    velocity_lat: f32,
    velocity_lon: f32,
    /// Event time `position` refers to.
    updated_us: i64,
    /// When the driver next goes online or offline.
    next_switch_us: i64,
    /// Where a driver on a ride is heading, and when it gets there (`i64::MAX` when cruising).
    /// Kept here rather than looked up in the ride: pings must not touch the ride table.
    target: LatLon,
    eta_us: i64,
    /// Active ride slot + 1, or 0.
    ride: u32,
    speed_cmps: u16,
    heading_cdeg: u16,
    online: bool,
}

impl Driver {
    /// Where the driver is at `now_us` moving on at its velocity, before bounds and arrival.
    #[inline]
    fn drifted(&self, now_us: i64) -> LatLon {
        let elapsed_s = (now_us - self.updated_us) as f32 * 1e-6;
        LatLon {
            lat_e6: self.position.lat_e6.saturating_add((self.velocity_lat * elapsed_s) as i32),
            lon_e6: self.position.lon_e6.saturating_add((self.velocity_lon * elapsed_s) as i32),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Requested,
    EnRoute,
    Waiting,
    OnTrip,
}

#[derive(Clone, Copy, Debug)]
struct Ride {
    ride_id: u64,
    rider_id: u32,
    /// Driver index + 1, or 0 before dispatch.
    driver: u32,
    pickup: LatLon,
    destination: LatLon,
    /// When the driver reaches the current target (pickup or destination).
    eta_us: i64,
    /// When the current phase began.
    phase_started_us: i64,
    phase: Phase,
    dispatch_attempts: u8,
    /// Whether the rider cancels before pickup: drawn at request, so that the share of rides
    /// riders cancel is the configured probability.
    rider_cancels: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Dispatch,
    Arrive,
    PickUp,
    DropOff,
    RiderCancel,
    DriverCancel,
}

/// A ride transition due at `at_us`; `ride_id` guards against a slot reused since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at_us: i64,
    sequence: u64,
    slot: u32,
    ride_id: u64,
    action: Action,
}

impl Timed for Timer {
    fn at_us(&self) -> i64 {
        self.at_us
    }
}

/// Draws delivery delays by inverting the distribution's CDF: a table of quantiles, linearly
/// interpolated, for the bulk (one uniform draw and two loads, instead of an `exp` and a normal
/// draw per event), and the exact inverse for the top 1 %, where the tail is steep.
#[derive(Clone, Debug)]
struct DelaySampler {
    distribution: DelayDistribution,
    /// Quantiles at `i / TABLE_CELLS * TABLE_TOP`, µs.
    quantiles_us: Vec<f64>,
}

/// Cells of the quantile table.
const TABLE_CELLS: usize = 4096;
/// The table covers probabilities below this; above it, the exact inverse is used.
const TABLE_TOP: f64 = 0.99;

impl DelaySampler {
    fn new(distribution: DelayDistribution) -> Self {
        let quantiles_us = match distribution {
            DelayDistribution::None => Vec::new(),
            _ => (0..=TABLE_CELLS)
                .map(|cell| quantile_us(distribution, cell as f64 / TABLE_CELLS as f64 * TABLE_TOP))
                .collect(),
        };
        Self { distribution, quantiles_us }
    }

    #[inline]
    fn sample_us(&self, rng: &mut Pcg64Mcg) -> f64 {
        if self.quantiles_us.is_empty() {
            return 0.0;
        }
        let probability = (rng.random::<u64>() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        if probability >= TABLE_TOP {
            return quantile_us(self.distribution, probability);
        }
        let position = probability * (TABLE_CELLS as f64 / TABLE_TOP);
        let cell = (position as usize).min(TABLE_CELLS - 1);
        let fraction = position - cell as f64;
        self.quantiles_us[cell] + (self.quantiles_us[cell + 1] - self.quantiles_us[cell]) * fraction
    }
}

/// The exact quantile function of a delay distribution, in µs, for `probability` in [0, 1).
pub fn quantile_us(distribution: DelayDistribution, probability: f64) -> f64 {
    match distribution {
        DelayDistribution::None => 0.0,
        DelayDistribution::Exponential { mean } => -(mean.as_secs_f64() * 1e6) * (1.0 - probability).ln(),
        DelayDistribution::LogNormal { median, sigma } => {
            if probability <= 0.0 {
                0.0
            } else {
                median.as_secs_f64() * 1e6 * (sigma * inverse_normal_cdf(probability)).exp()
            }
        }
        DelayDistribution::Pareto { scale, shape } => {
            scale.as_secs_f64() * 1e6 * (1.0 - probability).powf(-1.0 / shape)
        }
    }
}

/// The standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2e-9), for `p` in (0, 1).
#[allow(clippy::excessive_precision)] // Acklam's published coefficients, kept as published.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    const LOW: f64 = 0.02425;
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The lateness model of a scenario: draws one event's delivery delay.
#[derive(Clone, Debug)]
pub struct LatenessModel {
    sampler: DelaySampler,
    max_us: f64,
    outages: Option<Outages>,
    late_after_us: i64,
    bursts: crate::late_bursts::LateBursts,
    burst_seed: u64,
}

impl LatenessModel {
    /// The model of `scenario`.
    pub fn new(scenario: &Workload) -> Self {
        let lateness = &scenario.lateness;
        Self {
            sampler: DelaySampler::new(lateness.distribution),
            max_us: lateness.max.as_secs_f64() * 1e6,
            outages: (lateness.offline_fraction > 0.0).then(|| Outages::new(scenario)),
            late_after_us: lateness.late_after.as_micros() as i64,
            bursts: scenario.run.late_bursts.clone(),
            burst_seed: derive_seed(scenario.seed, 5),
        }
    }

    /// The delay in µs of an event that happened at `time_us` (true time) on `phone` (see
    /// [`offline_phone_of`]; `None` for the platform's own events), and whether an offline
    /// phone held it back.
    #[inline]
    pub fn sample_us(&self, rng: &mut Pcg64Mcg, phone: Option<u64>, time_us: i64) -> (i64, bool) {
        let network_us = self.sampler.sample_us(rng).min(self.max_us) as i64;
        let Some(phone) = phone else { return (network_us, false) };
        let offline = self.outages.as_ref().and_then(|outages| outages.reconnect_us(phone, time_us));
        let silenced = self.bursts.reconnect_us(self.burst_seed, phone, time_us);
        match offline.max(silenced) {
            Some(reconnect_us) => (reconnect_us - time_us + network_us, true),
            None => (network_us, false),
        }
    }

    /// When `phone` next reconnects, if it is offline at `time_us`.
    pub fn reconnect_us(&self, phone: u64, time_us: i64) -> Option<i64> {
        self.outages.as_ref()?.reconnect_us(phone, time_us)
    }
}

/// When each phone is offline: one outage in every epoch of its own, `offline_min` to
/// `offline_max` long, at a seeded place in the epoch, the epochs `mean outage /
/// offline_fraction` long and each phone's shifted by a seeded phase. A phone is offline for
/// `offline_fraction` of its time, phones go offline independently, and what a phone records
/// while it is offline is delivered together when it reconnects: a burst of its buffer, as
/// real phones deliver it. A function of (seed, phone, time), so every shard and thread agrees.
#[derive(Clone, Debug)]
struct Outages {
    seed: u64,
    epoch_us: i64,
    /// 1 / `epoch_us`: the epoch of a time by a multiplication (a 64-bit division per event
    /// cost the generator a tenth of its rate at rush hour).
    per_epoch_us: f64,
    min_us: i64,
    span_us: i64,
}

impl Outages {
    fn new(scenario: &Workload) -> Self {
        let lateness = &scenario.lateness;
        let min_us = lateness.offline_min.as_micros() as i64;
        let max_us = lateness.offline_max.as_micros() as i64;
        let mean_us = (min_us + max_us) as f64 / 2.0;
        // The scenario checks that an outage fits its epoch (`offline_fraction <= mean / max`).
        let epoch_us = ((mean_us / lateness.offline_fraction) as i64).max(max_us).max(1);
        Self {
            seed: derive_seed(scenario.seed, 4),
            epoch_us,
            per_epoch_us: 1.0 / epoch_us as f64,
            min_us,
            span_us: max_us - min_us,
        }
    }

    #[inline]
    fn reconnect_us(&self, phone: u64, time_us: i64) -> Option<i64> {
        // One mix an event (this runs for nearly every event): the phase from a multiplicative
        // hash of the phone, the outage's length and place from the two halves of one mix.
        let unit = |bits: u64| (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let half = |bits: u64| (bits & 0xffff_ffff) as f64 * (1.0 / (1u64 << 32) as f64);
        let phone_bits = (self.seed ^ phone).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let phase_us = (unit(phone_bits) * self.epoch_us as f64) as i64;
        let shifted_us = time_us + phase_us;
        let mut epoch = (shifted_us as f64 * self.per_epoch_us) as i64;
        let mut offset_us = shifted_us - epoch * self.epoch_us;
        // The product may round across an epoch's edge: step back into it.
        if offset_us < 0 {
            epoch -= 1;
            offset_us += self.epoch_us;
        } else if offset_us >= self.epoch_us {
            epoch += 1;
            offset_us -= self.epoch_us;
        }
        let bits = mix64(phone_bits ^ (epoch as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
        let length_us = self.min_us + (half(bits >> 32) * self.span_us as f64) as i64;
        let start_us = (half(bits) * (self.epoch_us - length_us) as f64) as i64;
        (start_us..start_us + length_us)
            .contains(&offset_us)
            .then(|| epoch * self.epoch_us + start_us + length_us - phase_us)
    }
}

/// The driver's phone an event's time comes from: what the driver's app sends (pings and the
/// ride's steps); `None` for requests and cancellations. A skewed clock stamps these.
#[inline]
pub fn phone_of(payload: &Payload) -> Option<u32> {
    match payload {
        Payload::RideRequested { .. } | Payload::RideCancelled { .. } => None,
        _ => payload.driver_id(),
    }
}

/// The phone that sends an event, as a key for its outages: the driver's (its id) for what the
/// driver's app sends, the rider's (its id above 2^32) for a request or a rider's cancellation,
/// `None` for the platform's cancellations (sent by its servers, never offline).
#[inline]
pub fn offline_phone_of(payload: &Payload) -> Option<u64> {
    const RIDER: u64 = 1 << 32;
    match *payload {
        Payload::RideRequested { rider_id, .. } | Payload::RideCancelled { rider_id, by: CancelledBy::Rider, .. } => {
            Some(RIDER | u64::from(rider_id))
        }
        Payload::RideCancelled { by: CancelledBy::Platform, .. } => None,
        _ => payload.driver_id().map(u64::from),
    }
}

/// Settings every shard shares, derived once from the scenario.
#[derive(Debug)]
pub(crate) struct SharedCity {
    pub scenario: Workload,
    pub zones: ZoneGrid,
    pub box_e6: BoxE6,
    pub hot_zone_centres: Vec<LatLon>,
    pub hot_zone_cumulative_weight: Vec<f64>,
    pub drivers_per_shard: usize,
    pub lateness: LatenessModel,
    /// The city's land, when it has outlines.
    pub land: Option<Land>,
    /// Cumulative weights of demand by district code - 1 (with `land`).
    pub district_cumulative: Vec<f64>,
    /// The city's time zone: demand follows its local clock.
    pub timezone: jiff::tz::TimeZone,
    /// Where the hot driver is parked: the first hot zone's centre, else the box's.
    pub hot_driver_position: LatLon,
}

impl SharedCity {
    pub fn new(scenario: &Workload) -> Self {
        let fleet = (scenario.online_drivers() / scenario.online_share()).ceil().max(1.0) as usize;
        let shards = scenario.run.shards as usize;
        let mut total = 0.0;
        let hot_zone_cumulative_weight = scenario
            .city
            .hot_zones
            .iter()
            .map(|zone| {
                total += zone.weight;
                total
            })
            .collect();
        Self {
            scenario: scenario.clone(),
            zones: ZoneGrid::new(scenario.city.bbox, scenario.city.resolution),
            box_e6: BoxE6::new(scenario.city.bbox),
            hot_zone_centres: scenario
                .city
                .hot_zones
                .iter()
                .map(|zone| LatLon::from_degrees(zone.lat, zone.lon))
                .collect(),
            hot_zone_cumulative_weight,
            drivers_per_shard: fleet.div_ceil(shards).max(1),
            lateness: LatenessModel::new(scenario),
            land: scenario.city.land_outlines(),
            district_cumulative: NEW_YORK_DEMAND_BY_BOROUGH
                .iter()
                .scan(0.0, |total, weight| {
                    *total += weight;
                    Some(*total)
                })
                .collect(),
            timezone: scenario.city.time_zone(),
            hot_driver_position: scenario.city.hot_zones.first().map_or_else(
                || {
                    let bbox = scenario.city.bbox;
                    LatLon::from_degrees((bbox.south + bbox.north) / 2.0, (bbox.west + bbox.east) / 2.0)
                },
                |zone| LatLon::from_degrees(zone.lat, zone.lon),
            ),
        }
    }

    /// The offset of the city's local time from UTC at `time_us`, µs.
    pub fn utc_offset_us(&self, time_us: i64) -> i64 {
        crate::workload::utc_offset_us(&self.timezone, time_us)
    }

    /// Road speed at `position`, m/s.
    #[inline]
    pub fn road_speed_mps(&self, position: LatLon) -> f64 {
        let speed = self.scenario.fleet.speed_mps;
        match &self.land {
            Some(land) if land.code_at(position) == 1 => speed * MANHATTAN_SPEED_FACTOR,
            _ => speed,
        }
    }

    /// Whether `position` is where cars can be.
    #[inline]
    pub fn on_land(&self, position: LatLon) -> bool {
        self.land.as_ref().is_none_or(|land| land.is_land(position))
    }

    /// A place near `centre` (normal, `spread_m` a side), on land: the first of a few draws
    /// that is, else `centre`.
    pub fn place_near(&self, rng: &mut Pcg64Mcg, centre: LatLon, spread_m: f64) -> LatLon {
        for _ in 0..LAND_TRIES {
            let place = gaussian_around(rng, centre, spread_m, self.box_e6);
            if self.on_land(place) {
                return place;
            }
        }
        centre
    }

    /// A place of demand outside the hot zones: with land, a district by its weight and a place
    /// uniformly on its land; without, None (the caller places it by its drivers).
    pub fn place_by_district(&self, rng: &mut Pcg64Mcg) -> Option<LatLon> {
        let land = self.land.as_ref()?;
        let total = *self.district_cumulative.last()?;
        let pick = rng.random::<f64>() * total;
        let code = self.district_cumulative.partition_point(|&weight| weight <= pick).min(land.districts().len() - 1);
        land.sample_in(rng, code as u8 + 1)
    }
}

/// One shard's simulation.
pub(crate) struct Shard {
    city: Arc<SharedCity>,
    shard: u64,
    shards: u64,
    rng: Pcg64Mcg,
    schedule: Schedule,
    /// The due times of this shard's generation slots, in order.
    slot_due_times: DueWalk,
    /// The due time of the generation slot being filled: an event is stamped with it, and on a
    /// clean stream, where every event is emitted in the slot it was generated in, keeps it.
    slot_due_ns: u64,
    /// On a disordered stream, the due times of the slots events are emitted in, walked on a
    /// schedule of their own (a shaped schedule restarts when asked for an earlier index).
    emission_due_times: Option<(Schedule, DueWalk)>,
    start_us: i64,
    /// Event-time µs per due-time ns, in fixed point (`FIXED_BITS` fraction bits).
    /// Scenarios cap compression at 100000, so this is at most 100 µs a ns, below 2^47 in fixed
    /// point: a u64, and its product with a due time is one widening multiplication.
    compression_us_per_ns_fixed: u64,
    /// Whether some drivers' clocks are skewed (checked for every event).
    skewed_clocks: bool,
    /// Generation slots used so far.
    generated: u64,
    drivers: Vec<Driver>,
    cursor: usize,
    /// Idle drivers by coarse square, for dispatch. Maintained lazily: entries may be stale (a
    /// driver that has since taken a ride, gone offline or moved on) and are checked when read;
    /// the whole index is rebuilt every [`DISPATCH_INDEX_REFRESH_US`] of event time.
    idle: Vec<Vec<u32>>,
    /// The next index, built beside `idle` a slice of the fleet at a time, then swapped in.
    building: Vec<Vec<u32>>,
    /// Drivers below this index have been scanned into `building` (`None`: no build running).
    build_cursor: Option<usize>,
    /// When the next build step (or the next build) is due.
    next_index_step_us: i64,
    rides: Vec<Ride>,
    free_rides: Vec<u32>,
    timers: TimerWheel<Timer>,
    timer_sequence: u64,
    rides_started: u64,
    next_request_us: i64,
    requests_per_us_base: f64,
    turn_threshold: u32,
    /// A ping slot goes to the hot driver when a draw is below this (0: no hot driver).
    hot_driver_threshold: u32,
    buckets_per_lat_e6: f32,
    buckets_per_lon_e6: f32,
    skew_seed: u64,
    wheel: Option<ArrivalWheel>,
    released: Vec<Pending>,
    released_taken: usize,
    generated_chunk: Vec<(Event, i64, u8)>,
    /// The arrivals of `generated_chunk`'s events and their re-sends: (index, arrival, mark).
    arrivals: Vec<(u32, i64, u8)>,
}

impl Shard {
    pub fn new(city: Arc<SharedCity>, shard: u32) -> Self {
        let scenario = &city.scenario;
        let shards = u64::from(scenario.run.shards);
        let mut rng = Pcg64Mcg::seed_from_u64(derive_seed(scenario.seed, 1000 + u64::from(shard)));
        let start_us = scenario.run.start_time_us;
        let session_mean_us = scenario.fleet.session_mean.as_secs_f64() * 1e6;
        let gap_mean_us = scenario.fleet.gap_mean.as_secs_f64() * 1e6;
        let online_share = scenario.online_share();
        let mut drivers = Vec::with_capacity(city.drivers_per_shard);
        for _ in 0..city.drivers_per_shard {
            // Drivers start where demand is: around the hot zones, and on the city's land.
            let position = if !city.hot_zone_centres.is_empty() && rng.random::<f64>() < 0.4 {
                let zone = rng.random_range(0..city.hot_zone_centres.len());
                let spread = scenario.city.hot_zones[zone].radius_m * 3.0;
                city.place_near(&mut rng, city.hot_zone_centres[zone], spread)
            } else {
                city.place_by_district(&mut rng).unwrap_or_else(|| LatLon {
                    lat_e6: rng.random_range(city.box_e6.south..=city.box_e6.north),
                    lon_e6: rng.random_range(city.box_e6.west..=city.box_e6.east),
                })
            };
            let online = rng.random::<f64>() < online_share;
            let residual_us = if online {
                Exp::new(1.0 / session_mean_us).expect("positive").sample(&mut rng)
            } else {
                rng.random::<f64>() * (MIN_OFFLINE_GAP.as_secs_f64() * 1e6 + gap_mean_us)
            };
            let mut driver = Driver {
                position,
                velocity_lat: 0.0,
                velocity_lon: 0.0,
                updated_us: start_us,
                next_switch_us: start_us + residual_us as i64,
                target: position,
                eta_us: i64::MAX,
                ride: 0,
                speed_cmps: 0,
                heading_cdeg: 0,
                online,
            };
            cruise(&mut rng, &mut driver, city.road_speed_mps(position));
            drivers.push(driver);
        }
        // Pings visit drivers in array order; with neighbours next to each other, consecutive
        // pings touch the same few zone-cache lines instead of missing the cache every time.
        drivers.sort_by_cached_key(|driver| city.zones.square_of(driver.position));
        if shard == 0 && scenario.fleet.hot_driver_share > 0.0 {
            // Driver 1 is the hot driver: parked for good, its phone re-sending one position.
            let hot = &mut drivers[0];
            hot.online = false;
            hot.next_switch_us = i64::MAX;
            hot.position = city.hot_driver_position;
        }
        let wheel = (scenario.lateness.is_disordered()
            || scenario.duplicates.fraction > 0.0
            || scenario.run.late_bursts.possible())
        .then(|| {
            // About 256 events of this shard per bucket at the base rate, and 1024 buckets: a
            // horizon of 256k events (2 s at rush hour). Memory grows with the horizon, since
            // every bucket keeps its capacity; rarer, longer delays go to the overflow heap.
            let slot_us = 1e6 * shards as f64 / scenario.event_time_rate_eps();
            ArrivalWheel::new(start_us, ((256.0 * slot_us) as i64).clamp(1, u32::MAX.into()), 1024)
        });
        let online_per_shard = scenario.online_drivers() / shards as f64;
        let schedule = Schedule::new(&scenario.run, scenario.seed);
        let slot_due_times = DueWalk::new(&schedule, u64::from(shard), shards);
        let emission_due_times = wheel.is_some().then(|| (schedule.clone(), slot_due_times.clone()));
        let mut shard_state = Self {
            shard: u64::from(shard),
            shards,
            rng,
            schedule,
            slot_due_times,
            slot_due_ns: 0,
            emission_due_times,
            start_us,
            compression_us_per_ns_fixed: (scenario.run.time_compression / 1000.0 * crate::schedule::FIXED_ONE) as u64,
            skewed_clocks: scenario.clock_skew.fraction > 0.0,
            generated: 0,
            drivers,
            cursor: 0,
            idle: vec![Vec::new(); DISPATCH_GRID * DISPATCH_GRID],
            building: vec![Vec::new(); DISPATCH_GRID * DISPATCH_GRID],
            build_cursor: None,
            next_index_step_us: start_us,
            rides: Vec::new(),
            free_rides: Vec::new(),
            timers: TimerWheel::new(start_us, TIMER_BUCKET_US, TIMER_BUCKETS),
            timer_sequence: 0,
            rides_started: 0,
            next_request_us: start_us,
            requests_per_us_base: online_per_shard * scenario.demand.requests_per_driver_hour / 3.6e9,
            turn_threshold: ((scenario.fleet.ping_interval.as_secs_f64() / CRUISE_TURN_SECONDS).min(1.0)
                * f64::from(u32::MAX)) as u32,
            hot_driver_threshold: (scenario.fleet.hot_driver_share * f64::from(u32::MAX)) as u32,
            buckets_per_lat_e6: DISPATCH_GRID as f32 / (city.box_e6.north - city.box_e6.south + 1) as f32,
            buckets_per_lon_e6: DISPATCH_GRID as f32 / (city.box_e6.east - city.box_e6.west + 1) as f32,
            skew_seed: derive_seed(scenario.seed, 2),
            wheel,
            released: Vec::new(),
            released_taken: 0,
            generated_chunk: Vec::with_capacity(REORDER_CHUNK),
            arrivals: Vec::with_capacity(2 * REORDER_CHUNK),
            city,
        };
        if shard_state.city.scenario.run.warm_start {
            shard_state.warm_up(start_us);
        }
        shard_state.build_dispatch_index_at_once(start_us);
        shard_state.next_request_us = start_us + shard_state.request_gap_us(start_us);
        shard_state
    }

    /// Writes the shard's next events, in arrival order, to every `stride`-th slot of `out`
    /// from the first (`out[k * stride]` for event `k`), each stamped with the due time of the
    /// slot it is emitted in, and the marks of the marked ones (`k`, mark) to `marks`. Returns
    /// the first `k` whose slot is due at or after `limit_due_ns` (the number written if none).
    ///
    /// The generator interleaves its shards this way, each writing straight into the batch:
    /// merging per-shard buffers into it was a tenth of the generator's time. Stamping due times
    /// here, not in a pass of the merger's over the batch, saved a tenth more.
    pub fn fill_strided(
        &mut self,
        out: &mut [Event],
        stride: usize,
        marks: &mut Vec<(u32, u8)>,
        limit_due_ns: u64,
    ) -> usize {
        let count = out.len().div_ceil(stride);
        let mut first_over = count;
        if self.wheel.is_none() {
            for from in (0..count).step_by(ZONE_CHUNK) {
                let until = (from + ZONE_CHUNK).min(count);
                for k in from..until {
                    let (event, _, mark) = self.next_event();
                    if mark != 0 {
                        marks.push((k as u32, mark));
                    }
                    if event.due_ns >= limit_due_ns {
                        first_over = first_over.min(k);
                    }
                    out[k * stride] = event;
                }
                let chunk = out[from * stride..].iter_mut().step_by(stride).take(until - from);
                self.city.zones.set_zones(chunk.map(|event| (event.position, &mut event.zone)));
            }
            return first_over;
        }
        let mut k = 0;
        while k < count {
            if self.released_taken == self.released.len() {
                self.released.clear();
                self.released_taken = 0;
                self.advance_reorder();
                continue;
            }
            let take = (count - k).min(self.released.len() - self.released_taken);
            let (schedule, due_times) =
                self.emission_due_times.as_mut().expect("the reorder path walks emission slots");
            for pending in &self.released[self.released_taken..self.released_taken + take] {
                let mark = pending.mark();
                if mark != 0 {
                    marks.push((k as u32, mark));
                }
                let due_ns = due_times.next(schedule);
                if due_ns >= limit_due_ns {
                    first_over = first_over.min(k);
                }
                out[k * stride] = pending.emitted(due_ns);
                k += 1;
            }
            self.released_taken += take;
        }
        first_over
    }

    /// Whether this shard emits every event in the slot it was generated in, at the slot's
    /// time unless its driver's clock is skewed (then its mark says so).
    pub fn emits_in_slot_order(&self) -> bool {
        self.wheel.is_none()
    }

    /// Generates a chunk of events into the wheel and releases what has arrived.
    fn advance_reorder(&mut self) {
        let mut chunk = std::mem::take(&mut self.generated_chunk);
        chunk.clear();
        for _ in 0..REORDER_CHUNK {
            chunk.push(self.next_event());
        }
        self.city.zones.set_zones(chunk.iter_mut().map(|(event, _, _)| (event.position, &mut event.zone)));
        let duplicate_fraction = self.city.scenario.duplicates.fraction;
        let retry_mean_us = self.city.scenario.duplicates.retry_delay.as_secs_f64() * 1e6;
        let late_after_us = self.city.lateness.late_after_us;
        let wheel = self.wheel.as_mut().expect("the reorder path has a wheel");
        // First every arrival; then the writes, each prefetching the slot of the one
        // `PREFETCH_PUSHES_AHEAD` on. A push lands in one of a hundred buckets, in memory the
        // cache rarely holds: written without a prefetch, each stalled on its own miss.
        let mut arrivals = std::mem::take(&mut self.arrivals);
        arrivals.clear();
        for (at, &(ref event, true_time_us, mark)) in chunk.iter().enumerate() {
            let (delay_us, held_back) =
                self.city.lateness.sample_us(&mut self.rng, offline_phone_of(&event.payload), true_time_us);
            let arrival_us = true_time_us + delay_us;
            let mark = if held_back { mark | MARK_HELD_BACK } else { mark };
            let mark = if delay_us > late_after_us { mark | MARK_LATE } else { mark };
            arrivals.push((at as u32, arrival_us, mark));
            if duplicate_fraction > 0.0 && self.rng.random::<f64>() < duplicate_fraction {
                let retry_us = -retry_mean_us * (1.0 - self.rng.random::<f64>()).ln();
                arrivals.push((at as u32, arrival_us + retry_us as i64, mark | MARK_DUPLICATE));
            }
        }
        for &(_, arrival_us, _) in arrivals.iter().take(PREFETCH_PUSHES_AHEAD) {
            wheel.prefetch(arrival_us);
        }
        for (index, &(at, arrival_us, mark)) in arrivals.iter().enumerate() {
            if let Some(&(_, ahead_us, _)) = arrivals.get(index + PREFETCH_PUSHES_AHEAD) {
                wheel.prefetch(ahead_us);
            }
            wheel.push(Pending::new(chunk[at as usize].0, arrival_us, mark));
        }
        let frontier_us = chunk.last().map_or(i64::MIN, |&(_, true_time_us, _)| true_time_us);
        wheel.release(frontier_us, &mut self.released);
        self.generated_chunk = chunk;
        self.arrivals = arrivals;
    }

    /// The event-time of the next generation slot.
    #[inline]
    fn slot_time_us(&mut self) -> i64 {
        // The shard's slots are the schedule's events `shard`, `shard + shards`, ...
        let due_ns = self.slot_due_times.next(&mut self.schedule);
        self.slot_due_ns = due_ns;
        self.generated += 1;
        self.start_us
            + ((u128::from(due_ns) * u128::from(self.compression_us_per_ns_fixed)) >> crate::schedule::FIXED_BITS)
                as i64
    }

    /// The next event in event-time order, with its true time and its marks.
    #[inline(always)]
    fn next_event(&mut self) -> (Event, i64, u8) {
        let now_us = self.slot_time_us();
        if now_us >= self.next_index_step_us {
            self.step_dispatch_index(now_us);
        }
        loop {
            if let Some(timer) = self.timers.pop_due(now_us) {
                self.prefetch_for_upcoming_timers();
                if let Some(event) = self.on_timer(timer, now_us) {
                    return self.finish(event, now_us);
                }
                continue;
            }
            if self.next_request_us <= now_us {
                let event = self.request_ride(now_us);
                self.next_request_us = now_us + self.request_gap_us(now_us);
                return self.finish(event, now_us);
            }
            let event = self.ping(now_us);
            return self.finish(event, now_us);
        }
    }

    /// Prefetches what the next timers will touch. At rush hour a shard has a hundred thousand
    /// rides in flight, in slots reused in no order, and a fleet of hundreds of megabytes: each
    /// timer's ride and driver were a cache miss, one after the other, and the ride lifecycle
    /// (one event in a hundred) took a quarter of the generator's time once rides had built up.
    /// Timers fire a hundred or so slots apart, so one timer ahead is lead enough: the ride two
    /// timers on, and the driver (or, for a dispatch, the idle drivers' list) of the next, whose
    /// ride the previous pop prefetched.
    #[inline]
    fn prefetch_for_upcoming_timers(&self) {
        if let Some(after_next) = self.timers.upcoming(1)
            && let Some(ride) = self.rides.get(after_next.slot as usize)
        {
            crate::hint::prefetch(ride);
        }
        let Some(next) = self.timers.upcoming(0) else { return };
        let Some(ride) = self.rides.get(next.slot as usize).filter(|ride| ride.ride_id == next.ride_id) else {
            return;
        };
        if ride.driver != 0 {
            if let Some(driver) = self.drivers.get(ride.driver as usize - 1) {
                crate::hint::prefetch(driver);
            }
        } else if next.action == Action::Dispatch
            && let Some(last) = self.idle[self.bucket_of(ride.pickup)].last()
        {
            // The list's tail, where `nearest_idle` starts (a reference: reading the entry
            // itself would wait for the very miss this is to hide).
            crate::hint::prefetch(last);
        }
    }

    /// Applies the device-clock skew of the event's driver (driver-originated events only).
    #[inline]
    fn finish(&self, mut event: Event, true_time_us: i64) -> (Event, i64, u8) {
        let skew = &self.city.scenario.clock_skew;
        if self.skewed_clocks
            && let Some(driver_id) = phone_of(&event.payload)
        {
            let trait_bits = mix64(self.skew_seed ^ u64::from(driver_id));
            if (trait_bits >> 11) as f64 / (1u64 << 53) as f64 <= skew.fraction {
                // Box-Muller from two more mixes of the same driver: a fixed offset per phone.
                let u1 = ((mix64(trait_bits) >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
                let u2 = (mix64(trait_bits ^ 1) >> 11) as f64 / (1u64 << 53) as f64;
                let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                event.event_time_us += (normal * skew.stddev.as_secs_f64() * 1e6) as i64;
                return (event, true_time_us, MARK_SKEWED);
            }
        }
        (event, true_time_us, 0)
    }

    fn driver_id(&self, index: usize) -> u32 {
        (index as u64 * self.shards + self.shard + 1) as u32
    }

    #[inline(always)]
    fn event(&self, event_id_slot: u64, time_us: i64, position: LatLon, payload: Payload) -> Event {
        Event {
            event_id: event_id_slot,
            event_time_us: time_us,
            due_ns: self.slot_due_ns,
            // Looked up for a chunk of events at once (`ZONE_CHUNK`), by `fill_strided` and
            // `advance_reorder`.
            zone: Zone(0),
            position,
            payload,
        }
    }

    /// The id of the event in the slot just taken: unique across shards.
    #[inline]
    fn current_event_id(&self) -> u64 {
        (self.generated - 1) * self.shards + self.shard + 1
    }

    #[inline(always)]
    fn ping(&mut self, now_us: i64) -> Event {
        if self.hot_driver_threshold != 0 && self.rng.random::<u32>() < self.hot_driver_threshold {
            // Every shard sends the hot driver's pings: the same driver and place in all.
            return self.event(
                self.current_event_id(),
                now_us,
                self.city.hot_driver_position,
                Payload::DriverPing { driver_id: 1, speed_cmps: 0, heading_cdeg: 0 },
            );
        }
        let count = self.drivers.len();
        let mut skipped = 0;
        let index = loop {
            let index = self.cursor;
            self.cursor = if index + 1 == count { 0 } else { index + 1 };
            if now_us >= self.drivers[index].next_switch_us {
                self.switch_session(index, now_us);
            }
            if self.drivers[index].online {
                break index;
            }
            skipped += 1;
            if skipped >= count {
                // Everyone is offline: this driver cuts the break short.
                self.drivers[index].next_switch_us = now_us;
                self.switch_session(index, now_us);
                break index;
            }
        };
        let ahead = index + PREFETCH_DRIVERS_AHEAD;
        let ahead = if ahead >= count { ahead - count } else { ahead };
        if let Some(driver) = self.drivers.get(ahead) {
            crate::hint::prefetch(driver);
        }
        // The event is built from the values just stored, not from the record read back whole:
        // a wide load of words that narrower stores have just written cannot be forwarded from
        // the store buffer (perf showed a stall there; the gain was within the bench's noise).
        let position = self.advance(index, now_us);
        if self.drivers[index].ride == 0 && self.rng.random::<u32>() < self.turn_threshold {
            self.turn(index);
        }
        let driver = &self.drivers[index];
        let (speed_cmps, heading_cdeg) = (driver.speed_cmps, driver.heading_cdeg);
        self.event(
            self.current_event_id(),
            now_us,
            position,
            Payload::DriverPing { driver_id: self.driver_id(index), speed_cmps, heading_cdeg },
        )
    }

    /// Moves a driver to where it is at `now_us`, and says where that is.
    #[inline]
    fn advance(&mut self, index: usize, now_us: i64) -> LatLon {
        let driver = &mut self.drivers[index];
        if now_us >= driver.eta_us {
            driver.updated_us = now_us;
            driver.position = driver.target;
            return driver.target;
        }
        let LatLon { lat_e6: mut lat, lon_e6: mut lon } = driver.drifted(now_us);
        driver.updated_us = now_us;
        let bounds = self.city.box_e6;
        if lat < bounds.south || lat > bounds.north {
            driver.velocity_lat = -driver.velocity_lat;
            driver.heading_cdeg = ((18_000 + 36_000 - u32::from(driver.heading_cdeg)) % 36_000) as u16;
            lat = lat.clamp(bounds.south, bounds.north);
        }
        if lon < bounds.west || lon > bounds.east {
            driver.velocity_lon = -driver.velocity_lon;
            driver.heading_cdeg = ((36_000 - u32::from(driver.heading_cdeg)) % 36_000) as u16;
            lon = lon.clamp(bounds.west, bounds.east);
        }
        let position = LatLon { lat_e6: lat, lon_e6: lon };
        driver.position = position;
        position
    }

    fn switch_session(&mut self, index: usize, now_us: i64) {
        let city = Arc::clone(&self.city);
        let fleet = &city.scenario.fleet;
        let driver = self.drivers[index];
        if driver.online {
            if driver.ride != 0 {
                // Finishing a ride first.
                self.drivers[index].next_switch_us = now_us + 300_000_000;
                return;
            }
            self.advance(index, now_us);
            let gap_us = MIN_OFFLINE_GAP.as_secs_f64() * 1e6
                + Exp::new(1.0 / (fleet.gap_mean.as_secs_f64() * 1e6)).expect("positive").sample(&mut self.rng);
            let driver = &mut self.drivers[index];
            driver.online = false;
            driver.next_switch_us = now_us + gap_us as i64;
        } else {
            let session_us =
                Exp::new(1.0 / (fleet.session_mean.as_secs_f64() * 1e6)).expect("positive").sample(&mut self.rng);
            let driver = &mut self.drivers[index];
            driver.online = true;
            driver.updated_us = now_us;
            driver.next_switch_us = now_us + (session_us as i64).max(60_000_000);
            self.make_idle(index);
        }
    }

    #[inline]
    fn bucket_of(&self, position: LatLon) -> usize {
        let bounds = self.city.box_e6;
        let row = ((position.lat_e6 - bounds.south) as f32 * self.buckets_per_lat_e6) as usize;
        let column = ((position.lon_e6 - bounds.west) as f32 * self.buckets_per_lon_e6) as usize;
        row.min(DISPATCH_GRID - 1) * DISPATCH_GRID + column.min(DISPATCH_GRID - 1)
    }

    /// Offers an idle driver to dispatch.
    fn make_idle(&mut self, index: usize) {
        let bucket = self.bucket_of(self.drivers[index].position);
        self.idle[bucket].push(index as u32);
        // A build running has scanned this driver already, or will find it idle when it does.
        if self.build_cursor.is_some_and(|cursor| index < cursor) {
            self.building[bucket].push(index as u32);
        }
    }

    /// Indexes every idle driver now (the first index, before any event).
    fn build_dispatch_index_at_once(&mut self, now_us: i64) {
        for bucket in &mut self.idle {
            bucket.clear();
        }
        for index in 0..self.drivers.len() {
            if self.drivers[index].online && self.drivers[index].ride == 0 {
                self.make_idle(index);
            }
        }
        self.next_index_step_us = now_us + DISPATCH_INDEX_REFRESH_US;
    }

    /// Starts a rebuild, scans the next slice of the fleet into it, or swaps it in once the
    /// whole fleet is scanned. A driver idle when the new index goes live is in it: scanned
    /// while idle, or added by `make_idle` since. Entries that went stale meanwhile are dropped
    /// lazily, like the live index's.
    fn step_dispatch_index(&mut self, now_us: i64) {
        let from = match self.build_cursor {
            Some(cursor) => cursor,
            None => {
                for bucket in &mut self.building {
                    bucket.clear();
                }
                0
            }
        };
        let until = (from + self.drivers.len().div_ceil(DISPATCH_INDEX_STEPS)).min(self.drivers.len());
        for index in from..until {
            if let Some(ahead) = self.drivers.get(index + PREFETCH_DRIVERS_AHEAD) {
                crate::hint::prefetch(ahead);
            }
            let driver = &self.drivers[index];
            if driver.online && driver.ride == 0 {
                let bucket = self.bucket_of(driver.position);
                self.building[bucket].push(index as u32);
            }
        }
        if until == self.drivers.len() {
            std::mem::swap(&mut self.idle, &mut self.building);
            self.build_cursor = None;
            self.next_index_step_us = now_us + DISPATCH_INDEX_REFRESH_US;
        } else {
            self.build_cursor = Some(until);
            self.next_index_step_us = now_us + DISPATCH_INDEX_STEP_US;
        }
    }

    /// Requests per µs of event time at `now_us`, and the hot zone a surge focuses on, if any.
    fn demand_at(&self, now_us: i64) -> (f64, Option<(usize, f64)>) {
        let demand = &self.city.scenario.demand;
        let local_us = now_us + self.city.utc_offset_us(now_us);
        let hours = (local_us as f64 / 3.6e9).rem_euclid(24.0);
        let hour = hours.floor() as usize % 24;
        let fraction = hours - hours.floor();
        let profile =
            demand.hourly_profile[hour] * (1.0 - fraction) + demand.hourly_profile[(hour + 1) % 24] * fraction;
        let mut multiplier = 1.0;
        let mut focus = None;
        let since_start_us = now_us - self.start_us;
        for surge in &demand.surges {
            let start = surge.at.as_micros() as i64;
            if (start..start + surge.duration.as_micros() as i64).contains(&since_start_us) {
                multiplier *= surge.multiplier;
                if let Some(zone) = surge.zone {
                    focus = Some((zone, 1.0 - 1.0 / surge.multiplier));
                }
            }
        }
        (self.requests_per_us_base * profile * multiplier, focus)
    }

    fn request_gap_us(&mut self, now_us: i64) -> i64 {
        let (rate_per_us, _) = self.demand_at(now_us);
        if rate_per_us <= 0.0 {
            return 60_000_000;
        }
        let gap = -(1.0 - self.rng.random::<f64>()).ln() / rate_per_us;
        (gap as i64).clamp(1, 3_600_000_000)
    }

    fn schedule(&mut self, at_us: i64, slot: u32, action: Action) {
        self.timer_sequence += 1;
        let ride_id = self.rides[slot as usize].ride_id;
        self.timers.push(Timer { at_us, sequence: self.timer_sequence, slot, ride_id, action });
    }

    fn request_ride(&mut self, now_us: i64) -> Event {
        let scenario = &self.city.scenario;
        let (_, focus) = self.demand_at(now_us);
        let hot_share = scenario.demand.hot_zone_share;
        let box_e6 = self.city.box_e6;
        let city = &self.city;
        let pickup = match focus {
            Some((zone, share)) if self.rng.random::<f64>() < share => {
                city.place_near(&mut self.rng, city.hot_zone_centres[zone], scenario.city.hot_zones[zone].radius_m)
            }
            _ if !self.city.hot_zone_centres.is_empty() && self.rng.random::<f64>() < hot_share => {
                let total = *self.city.hot_zone_cumulative_weight.last().expect("non-empty");
                let pick = self.rng.random::<f64>() * total;
                let zone = self
                    .city
                    .hot_zone_cumulative_weight
                    .partition_point(|&weight| weight <= pick)
                    .min(self.city.hot_zone_centres.len() - 1);
                city.place_near(&mut self.rng, city.hot_zone_centres[zone], scenario.city.hot_zones[zone].radius_m)
            }
            _ => match city.place_by_district(&mut self.rng) {
                Some(place) => place,
                None => {
                    // Without land outlines, demand follows where people (and so drivers) are.
                    let near = self.drivers[self.rng.random_range(0..self.drivers.len())].position;
                    gaussian_around(&mut self.rng, near, 400.0, box_e6)
                }
            },
        };
        let ride_id = self.rides_started * self.shards + self.shard + 1;
        self.rides_started += 1;
        let rider_id = self.rng.random_range(1..=u32::MAX / 2);
        let ride = Ride {
            ride_id,
            rider_id,
            driver: 0,
            pickup,
            destination: pickup,
            eta_us: i64::MAX,
            phase_started_us: now_us,
            phase: Phase::Requested,
            dispatch_attempts: 0,
            rider_cancels: false,
        };
        let slot = match self.free_rides.pop() {
            Some(slot) => {
                self.rides[slot as usize] = ride;
                slot
            }
            None => {
                self.rides.push(ride);
                (self.rides.len() - 1) as u32
            }
        };
        let dispatch_after = self.rng.random_range(1_000_000..3_000_000);
        self.schedule(now_us + dispatch_after, slot, Action::Dispatch);
        if self.rng.random::<f64>() < self.city.scenario.demand.rider_cancel_probability {
            // The rider cancels after a while, or at the latest instead of getting in (a no-show):
            // either way before pickup, so that the probability is the share one measures.
            self.rides[slot as usize].rider_cancels = true;
            let patience = self.rng.random_range(20_000_000..300_000_000);
            self.schedule(now_us + patience, slot, Action::RiderCancel);
        }
        self.event(self.current_event_id(), now_us, pickup, Payload::RideRequested { ride_id, rider_id })
    }

    fn nearest_idle(&mut self, pickup: LatLon) -> Option<usize> {
        let centre = self.bucket_of(pickup);
        // The candidates are drivers anywhere in a fleet of hundreds of megabytes: load them all
        // at once rather than miss on each in turn.
        for &candidate in self.idle[centre].iter().rev().take(NEAREST_IDLE_PREFETCH) {
            crate::hint::prefetch(&self.drivers[candidate as usize]);
        }
        let (row, column) = ((centre / DISPATCH_GRID) as i64, (centre % DISPATCH_GRID) as i64);
        for radius in 0..=2i64 {
            let mut best: Option<(i64, usize)> = None;
            for r in row - radius..=row + radius {
                for c in column - radius..=column + radius {
                    let on_ring = (r - row).abs() == radius || (c - column).abs() == radius;
                    if !on_ring || r < 0 || c < 0 || r >= DISPATCH_GRID as i64 || c >= DISPATCH_GRID as i64 {
                        continue;
                    }
                    let bucket = &mut self.idle[r as usize * DISPATCH_GRID + c as usize];
                    let mut looked_at = 0;
                    let mut at = bucket.len();
                    while at > 0 && looked_at < 8 {
                        at -= 1;
                        let candidate = bucket[at];
                        let driver = &self.drivers[candidate as usize];
                        if !driver.online || driver.ride != 0 {
                            bucket.swap_remove(at);
                            continue;
                        }
                        looked_at += 1;
                        let position = driver.position;
                        let d_lat = i64::from(position.lat_e6 - pickup.lat_e6);
                        let d_lon = i64::from(position.lon_e6 - pickup.lon_e6);
                        let distance = d_lat * d_lat + d_lon * d_lon;
                        if best.is_none_or(|(best_distance, _)| distance < best_distance) {
                            best = Some((distance, candidate as usize));
                        }
                    }
                }
            }
            if let Some((_, driver)) = best {
                return Some(driver);
            }
        }
        None
    }

    /// Points a driver at `target` at cruising speed; returns the arrival time.
    fn head_for(&mut self, index: usize, target: LatLon, now_us: i64, speed_mps: f64) -> i64 {
        let driver = &mut self.drivers[index];
        let (north, east) = offset_m(driver.position, target);
        let distance = north.hypot(east);
        driver.target = target;
        if distance < 1.0 {
            driver.velocity_lat = 0.0;
            driver.velocity_lon = 0.0;
            driver.speed_cmps = 0;
            driver.eta_us = now_us;
            return now_us + 5_000_000;
        }
        set_course(driver, north, east, distance, speed_mps);
        driver.eta_us = now_us + (distance / (speed_mps / ROAD_FACTOR) * 1e6) as i64;
        driver.eta_us
    }

    fn on_timer(&mut self, timer: Timer, now_us: i64) -> Option<Event> {
        let slot = timer.slot as usize;
        if self.rides.get(slot).is_none_or(|ride| ride.ride_id != timer.ride_id) {
            return None;
        }
        let ride = self.rides[slot];
        let event_id = self.current_event_id();
        match timer.action {
            Action::Dispatch if ride.phase == Phase::Requested => {
                let Some(index) = self.nearest_idle(ride.pickup) else {
                    if ride.dispatch_attempts < 3 {
                        self.rides[slot].dispatch_attempts += 1;
                        self.schedule(now_us + 5_000_000, timer.slot, Action::Dispatch);
                        return None;
                    }
                    self.release_ride(slot);
                    let payload = Payload::RideCancelled {
                        ride_id: ride.ride_id,
                        rider_id: ride.rider_id,
                        driver_id: 0,
                        by: CancelledBy::Platform,
                    };
                    return Some(self.event(event_id, now_us, ride.pickup, payload));
                };
                self.advance(index, now_us);
                self.drivers[index].ride = timer.slot + 1;
                let accept_delay = self.rng.random_range(2_000_000..12_000_000);
                let curb = Exp::new(1.0 / CURB_MEAN_US).expect("positive").sample(&mut self.rng) as i64;
                let approach_speed = self.city.road_speed_mps(self.drivers[index].position);
                let eta = self.head_for(index, ride.pickup, now_us, approach_speed).max(now_us + 30_000_000)
                    + accept_delay
                    + curb;
                let ride_state = &mut self.rides[slot];
                ride_state.driver = index as u32 + 1;
                ride_state.phase = Phase::EnRoute;
                ride_state.eta_us = eta;
                self.schedule(eta, timer.slot, Action::Arrive);
                if self.rng.random::<f64>() < self.city.scenario.demand.driver_cancel_probability {
                    let at = now_us + self.rng.random_range(0..=(eta - now_us).max(1));
                    self.schedule(at, timer.slot, Action::DriverCancel);
                }
                let driver_id = self.driver_id(index);
                let payload = Payload::RideAccepted { ride_id: ride.ride_id, driver_id, rider_id: ride.rider_id };
                Some(self.event(event_id, now_us, self.drivers[index].position, payload))
            }
            // (A driver who cancelled left an arrival timer behind: the ride's eta is its new
            // driver's.)
            Action::Arrive if ride.phase == Phase::EnRoute && now_us >= ride.eta_us => {
                let index = ride.driver as usize - 1;
                self.advance(index, now_us);
                let driver = &mut self.drivers[index];
                driver.position = ride.pickup;
                driver.eta_us = i64::MAX;
                driver.velocity_lat = 0.0;
                driver.velocity_lon = 0.0;
                driver.speed_cmps = 0;
                self.rides[slot].phase = Phase::Waiting;
                let wait = 10_000_000 + Exp::new(1.0 / 40e6).expect("positive").sample(&mut self.rng) as i64;
                self.schedule(now_us + wait, timer.slot, Action::PickUp);
                let payload = Payload::DriverArrived { ride_id: ride.ride_id, driver_id: self.driver_id(index) };
                Some(self.event(event_id, now_us, ride.pickup, payload))
            }
            Action::PickUp if ride.phase == Phase::Waiting && ride.rider_cancels => {
                // A no-show: the rider who was to cancel has not by the time the driver waits.
                self.on_timer(Timer { action: Action::RiderCancel, ..timer }, now_us)
            }
            Action::PickUp if ride.phase == Phase::Waiting => {
                let index = ride.driver as usize - 1;
                let destination = self.choose_destination(ride.pickup);
                let road_speed = (self.city.road_speed_mps(ride.pickup) + self.city.road_speed_mps(destination)) / 2.0;
                let trip_speed = road_speed * self.rng.random_range(0.75..1.25);
                self.drivers[index].updated_us = now_us;
                let eta = self.head_for(index, destination, now_us, trip_speed).max(now_us + 60_000_000);
                let ride_state = &mut self.rides[slot];
                ride_state.destination = destination;
                ride_state.phase = Phase::OnTrip;
                ride_state.phase_started_us = now_us;
                ride_state.eta_us = eta;
                self.schedule(eta, timer.slot, Action::DropOff);
                let payload = Payload::PickedUp { ride_id: ride.ride_id, driver_id: self.driver_id(index) };
                Some(self.event(event_id, now_us, ride.pickup, payload))
            }
            Action::DropOff if ride.phase == Phase::OnTrip => {
                let index = ride.driver as usize - 1;
                let road_m = distance_m(ride.pickup, ride.destination) * ROAD_FACTOR;
                let trip_minutes = (now_us - ride.phase_started_us) as f64 / 60e6;
                let fare_cents = (255.0 + 175.0 * road_m / 1000.0 + 35.0 * trip_minutes).max(800.0) as u32;
                let driver = &mut self.drivers[index];
                driver.position = ride.destination;
                driver.eta_us = i64::MAX;
                driver.updated_us = now_us;
                driver.ride = 0;
                self.turn(index);
                self.make_idle(index);
                self.release_ride(slot);
                let payload = Payload::DroppedOff {
                    ride_id: ride.ride_id,
                    driver_id: self.driver_id(index),
                    fare_cents,
                    distance_m: road_m as u32,
                };
                Some(self.event(event_id, now_us, ride.destination, payload))
            }
            Action::RiderCancel | Action::DriverCancel if ride.phase != Phase::OnTrip => {
                let by = if timer.action == Action::RiderCancel { CancelledBy::Rider } else { CancelledBy::Driver };
                if by == CancelledBy::Driver && ride.phase != Phase::EnRoute {
                    return None;
                }
                let driver_id = if ride.driver != 0 {
                    let index = ride.driver as usize - 1;
                    self.advance(index, now_us);
                    self.drivers[index].ride = 0;
                    self.drivers[index].eta_us = i64::MAX;
                    self.turn(index);
                    self.make_idle(index);
                    self.driver_id(index)
                } else {
                    0
                };
                if by == CancelledBy::Driver {
                    // The platform re-dispatches the request, as real ones do: the rider still
                    // waits, and the ride goes back to matching (its old arrival timer no longer
                    // matches its eta, and is ignored).
                    let ride_state = &mut self.rides[slot];
                    ride_state.phase = Phase::Requested;
                    ride_state.driver = 0;
                    ride_state.dispatch_attempts = 0;
                    ride_state.eta_us = i64::MAX;
                    self.schedule(now_us + REDISPATCH_US, timer.slot, Action::Dispatch);
                } else {
                    self.release_ride(slot);
                }
                let payload = Payload::RideCancelled { ride_id: ride.ride_id, rider_id: ride.rider_id, driver_id, by };
                Some(self.event(event_id, now_us, ride.pickup, payload))
            }
            _ => None,
        }
    }

    /// A cruising driver takes a new heading and speed, at its district's road speed; a driver
    /// off the city's land heads back to a place of demand.
    fn turn(&mut self, index: usize) {
        let position = self.drivers[index].position;
        let speed_mps = self.city.road_speed_mps(position);
        cruise(&mut self.rng, &mut self.drivers[index], speed_mps);
        if !self.city.on_land(position)
            && let Some(place) = self.city.place_by_district(&mut self.rng)
        {
            let (north, east) = offset_m(position, place);
            set_course(&mut self.drivers[index], north, east, north.hypot(east).max(1.0), speed_mps);
        }
    }

    fn release_ride(&mut self, slot: usize) {
        self.rides[slot].ride_id = 0;
        self.free_rides.push(slot as u32);
    }

    fn choose_destination(&mut self, pickup: LatLon) -> LatLon {
        choose_destination(&self.city, &mut self.rng, pickup)
    }

    /// Starts the run in steady state: a share of the online drivers on a ride, in the phase
    /// and at the point of it that a city running for hours would show, with the ride's next
    /// transitions scheduled. The share is Little's law, rides a driver-hour (at the start's
    /// local hour) times a ride's mean time from request to drop-off; each phase's share is its
    /// share of that time, and a trip under way is drawn in proportion to its length, at a
    /// uniform point of it. Their requests and accepts happened before the stream; what follows
    /// is in it. Drawn from a random stream of its own, so that a cold start (`warm_start =
    /// false`) is the same stream as before warm starts existed.
    fn warm_up(&mut self, start_us: i64) {
        let city = Arc::clone(&self.city);
        let scenario = &city.scenario;
        let mut rng = Pcg64Mcg::seed_from_u64(derive_seed(scenario.seed, 3000 + self.shard));
        let online: Vec<usize> = (0..self.drivers.len()).filter(|&index| self.drivers[index].online).collect();
        if online.is_empty() {
            return;
        }
        // A trip's mean duration, from trips drawn as the shard draws them, from drivers' places.
        let trip_seconds = |rng: &mut Pcg64Mcg, pickup: LatLon| {
            let destination = choose_destination(&city, rng, pickup);
            let speed =
                (city.road_speed_mps(pickup) + city.road_speed_mps(destination)) / 2.0 * rng.random_range(0.75..1.25);
            let seconds = (distance_m(pickup, destination) * ROAD_FACTOR / speed).max(60.0);
            (destination, speed, seconds)
        };
        let samples = 256;
        let trip_mean_s = (0..samples)
            .map(|_| {
                let pickup = self.drivers[online[rng.random_range(0..online.len())]].position;
                trip_seconds(&mut rng, pickup).2
            })
            .sum::<f64>()
            / f64::from(samples);
        let approach_s = WARM_APPROACH_S;
        let boarding_s = 10.0 + 40.0;
        let ride_s = approach_s + boarding_s + trip_mean_s;
        let (per_us, _) = self.demand_at(start_us);
        // Requests a second per online driver of this shard: the demand at the start's local
        // hour (surges aside), over the shard's share of the drivers online.
        let online_per_shard = scenario.online_drivers() / self.shards as f64;
        let per_driver_s = per_us * 1e6 / online_per_shard.max(1.0);
        let busy = (per_driver_s * ride_s).min(WARM_BUSY_MAX);
        for index in online {
            if rng.random::<f64>() >= busy {
                continue;
            }
            let draw = rng.random::<f64>() * ride_s;
            let position = self.drivers[index].position;
            let ride_id = self.rides_started * self.shards + self.shard + 1;
            self.rides_started += 1;
            let mut ride = Ride {
                ride_id,
                rider_id: rng.random_range(1..=u32::MAX / 2),
                driver: index as u32 + 1,
                pickup: position,
                destination: position,
                eta_us: i64::MAX,
                phase_started_us: start_us,
                phase: Phase::EnRoute,
                dispatch_attempts: 0,
                rider_cancels: false,
            };
            let slot = self.rides.len() as u32;
            let (action, at_us) = if draw < approach_s {
                // On the way to a rider about an approach's drive away.
                ride.pickup = city.place_near(&mut rng, position, 600.0);
                ride.phase_started_us = start_us - draw as i64;
                self.rides.push(ride);
                let speed = city.road_speed_mps(position);
                let eta = self.head_for(index, ride.pickup, start_us, speed).max(start_us + 1_000_000);
                (Action::Arrive, eta)
            } else if draw < approach_s + boarding_s {
                // Waiting at the curb.
                ride.phase = Phase::Waiting;
                ride.phase_started_us = start_us - (draw - approach_s) as i64;
                self.rides.push(ride);
                let driver = &mut self.drivers[index];
                (driver.velocity_lat, driver.velocity_lon, driver.speed_cmps) = (0.0, 0.0, 0);
                (Action::PickUp, start_us + (rng.random::<f64>() * boarding_s * 1e6) as i64 + 1)
            } else {
                // On a trip: a trip drawn in proportion to its length (longer trips are more
                // often under way), at a uniform point of it.
                let (destination, speed, seconds) = loop {
                    let trip = trip_seconds(&mut rng, position);
                    if rng.random::<f64>() * WARM_TRIP_CAP_S < trip.2 {
                        break trip;
                    }
                };
                let done = rng.random::<f64>();
                let (north, east) = offset_m(position, destination);
                ride.phase = Phase::OnTrip;
                ride.destination = destination;
                ride.phase_started_us = start_us - (done * seconds * 1e6) as i64;
                self.rides.push(ride);
                self.drivers[index].position = moved_m(position, north * done, east * done);
                self.drivers[index].updated_us = start_us;
                let eta = self.head_for(index, destination, start_us, speed).max(start_us + 1_000_000);
                (Action::DropOff, eta)
            };
            self.rides[slot as usize].eta_us = at_us;
            self.drivers[index].ride = slot + 1;
            self.schedule(at_us, slot, action);
        }
    }
}

/// Where a trip from `pickup` ends: 12% at a hot zone, else a log-normal distance in a random
/// direction; on land, the first of a few draws that ends on land.
fn choose_destination(city: &SharedCity, rng: &mut Pcg64Mcg, pickup: LatLon) -> LatLon {
    if !city.hot_zone_centres.is_empty() && rng.random::<f64>() < 0.12 {
        let zone = rng.random_range(0..city.hot_zone_centres.len());
        return city.place_near(rng, city.hot_zone_centres[zone], 300.0);
    }
    for _ in 0..LAND_TRIES {
        let distance: f64 = LogNormal::new(TRIP_MEDIAN_M.ln(), 0.6).expect("valid").sample(rng).min(30_000.0);
        let angle = rng.random::<f64>() * std::f64::consts::TAU;
        let place = city.box_e6.clamp(moved_m(pickup, distance * angle.cos(), distance * angle.sin()));
        if city.on_land(place) {
            return place;
        }
    }
    city.place_by_district(rng).unwrap_or(pickup)
}

/// Points `driver` along (`north`, `east`) metres (`distance` long) at the road speed
/// `speed_mps`: its straight-line progress is that over the road detour.
fn set_course(driver: &mut Driver, north: f64, east: f64, distance: f64, speed_mps: f64) {
    let straight_mps = speed_mps / ROAD_FACTOR;
    let cos_lat = driver.position.lat().to_radians().cos();
    driver.velocity_lat = (straight_mps * north / distance / crate::city::METRES_PER_DEGREE * 1e6) as f32;
    driver.velocity_lon = (straight_mps * east / distance / (crate::city::METRES_PER_DEGREE * cos_lat) * 1e6) as f32;
    driver.speed_cmps = (speed_mps * 100.0).min(f64::from(u16::MAX)) as u16;
    driver.heading_cdeg = heading_cdeg(north, east);
}

fn heading_cdeg(north: f64, east: f64) -> u16 {
    let degrees = east.atan2(north).to_degrees().rem_euclid(360.0);
    ((degrees * 100.0).round() as u32 % 36_000) as u16
}

/// Unit vectors (north, east) for whole-degree headings: cruising turns happen on a good share
/// of pings, and a table lookup is far cheaper than sine, cosine and arctangent each time.
static HEADINGS: std::sync::LazyLock<[(f32, f32); 360]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|degrees| {
        let radians = (degrees as f64).to_radians();
        (radians.cos() as f32, radians.sin() as f32)
    })
});

/// Gives an idle driver a new random heading and a speed around the road speed `speed_mps`
/// (some wait parked). `speed_cmps` is the road speed; the straight-line progress is slower.
fn cruise(rng: &mut Pcg64Mcg, driver: &mut Driver, speed_mps: f64) {
    let draw = rng.random::<u64>();
    let parked = (draw & 0xFF) < 51;
    let road = if parked { 0.0 } else { speed_mps as f32 * (0.4 + 0.9 * ((draw >> 8) & 0xFFFF) as f32 / 65_536.0) };
    let speed = road / ROAD_FACTOR as f32;
    let degrees = ((draw >> 24) % 360) as usize;
    let (north, east) = HEADINGS[degrees];
    // Longitude degrees shrink with latitude; a city spans too little latitude for this to vary.
    let metres_per_lon_e6 =
        (crate::city::METRES_PER_DEGREE / 1e6) as f32 * (driver.position.lat_e6 as f32 * 1e-6).to_radians().cos();
    driver.velocity_lat = speed * north / (crate::city::METRES_PER_DEGREE / 1e6) as f32;
    driver.velocity_lon = speed * east / metres_per_lon_e6;
    driver.speed_cmps = (road * 100.0) as u16;
    driver.heading_cdeg = (degrees * 100) as u16;
}

fn gaussian_around(rng: &mut Pcg64Mcg, centre: LatLon, spread_m: f64, bounds: BoxE6) -> LatLon {
    let north: f64 = rng.sample(StandardNormal);
    let east: f64 = rng.sample(StandardNormal);
    bounds.clamp(moved_m(centre, north * spread_m, east * spread_m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drivers online and free, and those the live index lists.
    fn idle_and_indexed(shard: &Shard) -> (Vec<u32>, std::collections::BTreeSet<u32>) {
        let idle = (0..shard.drivers.len() as u32)
            .filter(|&index| shard.drivers[index as usize].online && shard.drivers[index as usize].ride == 0)
            .collect();
        (idle, shard.idle.iter().flatten().copied().collect())
    }

    #[test]
    fn the_dispatch_index_is_rebuilt_a_slice_at_a_time_and_misses_no_idle_driver() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quickstart.toml");
        let mut scenario = Workload::from_file(&path).expect("the quickstart parses");
        scenario.run.time_compression = 60.0;
        let city = Arc::new(SharedCity::new(&scenario));
        let mut shard = Shard::new(city, 0);
        let (mut events, mut marks) = (vec![Event::BLANK; 64], Vec::new());
        let mut builds_seen = 0;
        let mut swaps_checked = 0;
        while swaps_checked < 3 {
            let building_before = shard.build_cursor.is_some();
            shard.fill_strided(&mut events, 1, &mut marks, u64::MAX);
            if let Some(cursor) = shard.build_cursor {
                // Part way: the fleet is scanned in steps, never at once.
                assert!(cursor < shard.drivers.len());
                builds_seen += usize::from(!building_before);
            } else if building_before {
                // Just swapped in: every driver free now is in the new index.
                let (idle, indexed) = idle_and_indexed(&shard);
                let missing: Vec<_> = idle.iter().filter(|index| !indexed.contains(index)).collect();
                assert!(
                    missing.is_empty(),
                    "{} idle drivers missing, e.g. {:?}",
                    missing.len(),
                    &missing[..5.min(missing.len())]
                );
                swaps_checked += 1;
            }
        }
        assert!(builds_seen >= 3, "{builds_seen} builds");
    }
}
