//! The workload sections of a scenario file: what a run generates.
//!
//! A scenario file has sections for the workload (`[run]`, `[city]`, `[fleet]`, `[demand]`,
//! `[lateness]`, `[duplicates]`, `[malformed]`, `[clock_skew]`), read here, and sections for the
//! engines and the run (`[windows]`, `[watermark]`, `[lambda]`, `[engine]`, `[[faults]]`), read by
//! their owners; the harness reads the whole file and rejects a section nobody owns. Each section
//! is read in two steps: first the raw TOML (every field optional, unknown fields rejected so a
//! typo is an error), then a validated value with defaults filled in and every value checked. A
//! bad file gets a [`ScenarioError`] naming the file, the field and what to write instead. Every
//! field is documented in `docs/scenarios.md`; keep the two in step.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{self, Reader, invalid};
pub use crate::settings::{ScenarioError, ScenarioProblem};

/// The sections this module reads (with the file's `name`, `description` and `seed`).
pub const SECTIONS: [&str; 11] = [
    "name",
    "description",
    "seed",
    "run",
    "city",
    "fleet",
    "demand",
    "lateness",
    "duplicates",
    "malformed",
    "clock_skew",
];

/// The workload's part of the file as written. Every field is optional; [`Workload::validate`]
/// fills defaults. Sections other owners read are ignored here.
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawWorkload {
    pub name: Option<String>,
    pub description: Option<String>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub run: RawRun,
    #[serde(default)]
    pub city: RawCity,
    #[serde(default)]
    pub fleet: RawFleet,
    #[serde(default)]
    pub demand: RawDemand,
    #[serde(default)]
    pub lateness: RawLateness,
    #[serde(default)]
    pub duplicates: RawDuplicates,
    #[serde(default)]
    pub malformed: RawMalformed,
    #[serde(default)]
    pub clock_skew: RawClockSkew,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawRun {
    pub rate_eps: Option<f64>,
    pub duration: Option<String>,
    pub start_time: Option<String>,
    pub time_compression: Option<f64>,
    pub shards: Option<u32>,
    pub rate_shape: Option<RawRateShape>,
    pub warm_start: Option<bool>,
    pub burstiness: Option<RawBurstiness>,
}

/// `[run.burstiness]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawBurstiness {
    pub cv: Option<f64>,
    pub correlation: Option<String>,
}

/// `[run.rate_shape]`, tagged by its `kind`: each shape takes only its own fields.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[allow(missing_docs)]
pub enum RawRateShape {
    Constant,
    Step { at: Option<String>, factor: Option<f64> },
    Sine { period: Option<String>, amplitude: Option<f64> },
    Burst { every: Option<String>, length: Option<String>, factor: Option<f64> },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawCity {
    pub name: Option<String>,
    pub south: Option<f64>,
    pub west: Option<f64>,
    pub north: Option<f64>,
    pub east: Option<f64>,
    pub h3_resolution: Option<u8>,
    pub hot_zones: Option<Vec<RawHotZone>>,
    pub timezone: Option<String>,
    pub land: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawHotZone {
    pub name: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub radius_m: Option<f64>,
    pub weight: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawFleet {
    pub ping_interval: Option<String>,
    pub session_mean: Option<String>,
    pub gap_mean: Option<String>,
    pub speed_mps: Option<f64>,
    pub hot_driver_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawDemand {
    pub requests_per_driver_hour: Option<f64>,
    pub hot_zone_share: Option<f64>,
    pub rider_cancel_probability: Option<f64>,
    pub driver_cancel_probability: Option<f64>,
    pub hourly_profile: Option<Vec<f64>>,
    pub surges: Option<Vec<RawSurge>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawSurge {
    pub at: Option<String>,
    pub duration: Option<String>,
    pub multiplier: Option<f64>,
    pub zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawLateness {
    pub distribution: Option<String>,
    pub mean: Option<String>,
    pub median: Option<String>,
    pub sigma: Option<f64>,
    pub scale: Option<String>,
    pub shape: Option<f64>,
    pub max: Option<String>,
    pub offline_fraction: Option<f64>,
    pub offline_min: Option<String>,
    pub offline_max: Option<String>,
    pub late_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawDuplicates {
    pub fraction: Option<f64>,
    pub retry_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawMalformed {
    pub fraction: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawClockSkew {
    pub fraction: Option<f64>,
    pub stddev: Option<String>,
}

/// A validated workload: everything a run needs to generate its stream, and nothing unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Short name, used in results and reports.
    pub name: String,
    /// One sentence on what the scenario is for.
    pub description: String,
    /// The root seed; every random stream of the run derives from it.
    pub seed: u64,
    /// Rate, duration and time settings.
    pub run: RunSettings,
    /// The city.
    pub city: City,
    /// The drivers.
    pub fleet: Fleet,
    /// The riders.
    pub demand: Demand,
    /// Delivery delays.
    pub lateness: Lateness,
    /// Producer retries.
    pub duplicates: Duplicates,
    /// Fraction of emitted events that are malformed, in [0, 1].
    pub malformed_fraction: f64,
    /// Drivers whose phone clock is off.
    pub clock_skew: ClockSkew,
}

/// How fast and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    /// Target events per second of wall time (the base rate of the shape).
    pub rate_eps: f64,
    /// How long the schedule runs, in wall time; `None` means until the event limit.
    pub duration: Option<Duration>,
    /// Event time of the run's start, in µs since the Unix epoch.
    pub start_time_us: i64,
    /// Seconds of event time per second of wall time (1 = real time).
    pub time_compression: f64,
    /// Independent slices of the city the generator runs in parallel. Fixed by the scenario, so
    /// that the stream does not depend on the thread count.
    pub shards: u32,
    /// How the rate varies over the run.
    pub rate_shape: RateShape,
    /// Whether the run starts in steady state, with rides under way in the share the demand
    /// and ride durations imply (Little's law); otherwise every driver starts idle.
    pub warm_start: bool,
    /// Overload faults: periods when the rate is multiplied (set by the harness, which reads
    /// the faults).
    pub overloads: Vec<Overload>,
    /// Late-burst faults: periods when a share of the phones are silent, and deliver what they
    /// recorded when the period ends (set by the harness, which reads the faults; `lk demo` adds
    /// them live).
    pub late_bursts: crate::late_bursts::LateBursts,
    /// Overloads added while the run runs (`lk demo`'s key), when the run takes them.
    pub live_overloads: LiveOverloads,
    /// Random swings of the rate within seconds, on top of its shape; `None` for a rate that
    /// follows its shape exactly.
    pub burstiness: Option<Burstiness>,
}

/// Random swings of the arrival rate: the rate is multiplied by `exp(σ X(t) − σ²/2)`, where X
/// is a unit Gaussian at knots `correlation` apart (seeded), interpolated between them with its
/// variance kept at one. The multiplier's mean is 1 (the shape's rate on average) and its
/// coefficient of variation is `cv`; swings last about `correlation`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burstiness {
    /// Coefficient of variation of the instantaneous rate.
    pub cv: f64,
    /// Time between independent swings, wall time.
    pub correlation: Duration,
}

/// A period of the run when the input rate is multiplied (an overload fault).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overload {
    /// When it starts.
    pub at: Duration,
    /// How long it lasts.
    pub duration: Duration,
    /// The rate multiplier.
    pub factor: f64,
}

/// Overloads added while a run runs, shared by every shard's schedule: each reads them once per
/// block of due times (4096 events), so an overload that starts after the blocks already made
/// (`lk demo` starts one half a second ahead) lands as the same fault in `[[faults]]` would.
/// Off by default: a run that cannot take them keeps its constant-rate fast path.
#[derive(Clone, Debug, Default)]
pub struct LiveOverloads(Option<std::sync::Arc<std::sync::Mutex<Vec<Overload>>>>);

impl PartialEq for LiveOverloads {
    fn eq(&self, other: &Self) -> bool {
        self.is_on() == other.is_on() && self.list() == other.list()
    }
}

impl LiveOverloads {
    /// A table that takes overloads while the run runs.
    pub fn on() -> Self {
        Self(Some(std::sync::Arc::default()))
    }

    /// Whether overloads may come while the run runs.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Adds an overload; false when the table is off.
    pub fn add(&self, overload: Overload) -> bool {
        match &self.0 {
            Some(table) => {
                table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(overload);
                true
            }
            None => false,
        }
    }

    /// The overloads so far.
    pub fn list(&self) -> Vec<Overload> {
        self.0
            .as_ref()
            .map_or_else(Vec::new, |table| table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// The product of the factors of the overloads under way `seconds` into the run.
    pub fn factor_at(&self, seconds: f64) -> f64 {
        let Some(table) = &self.0 else { return 1.0 };
        table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|overload| {
                let start = overload.at.as_secs_f64();
                (start..start + overload.duration.as_secs_f64()).contains(&seconds)
            })
            .map(|overload| overload.factor)
            .product()
    }
}

/// How the target rate varies over wall time. Factors multiply the base rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateShape {
    /// The base rate throughout.
    Constant,
    /// The base rate, then `factor` times it from `at` on.
    Step {
        /// When the step happens, from the run's start.
        at: Duration,
        /// Rate multiplier after the step.
        factor: f64,
    },
    /// `base * (1 + amplitude * sin(2π t / period))`.
    Sine {
        /// One full cycle.
        period: Duration,
        /// Relative swing, in [0, 1).
        amplitude: f64,
    },
    /// The base rate, with bursts of `factor` times it lasting `length` every `every`.
    Burst {
        /// Time from one burst's start to the next.
        every: Duration,
        /// How long a burst lasts.
        length: Duration,
        /// Rate multiplier during a burst.
        factor: f64,
    },
}

/// A latitude/longitude box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    /// Southern edge, degrees.
    pub south: f64,
    /// Western edge, degrees.
    pub west: f64,
    /// Northern edge, degrees.
    pub north: f64,
    /// Eastern edge, degrees.
    pub east: f64,
}

/// The city the fleet drives in.
#[derive(Debug, Clone, PartialEq)]
pub struct City {
    /// Its name, for reports.
    pub name: String,
    /// Where drivers may be.
    pub bbox: BoundingBox,
    /// H3 resolution of zones.
    pub resolution: h3o::Resolution,
    /// Places where demand concentrates.
    pub hot_zones: Vec<HotZone>,
    /// Its IANA time zone: the hourly profile is in its local time.
    pub timezone: String,
    /// Where its land is: demand is placed there, and drivers keep to it.
    pub land: LandMap,
}

impl City {
    /// Its land, when it has outlines.
    pub fn land_outlines(&self) -> Option<crate::land::Land> {
        match self.land {
            LandMap::NewYork => Some(crate::land::Land::new_york(self.bbox)),
            LandMap::Box => None,
        }
    }

    /// Its time zone (validated with the scenario; UTC if it were not).
    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZoneDatabase::bundled().get(&self.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

/// The offset of `zone`'s local time from UTC at `time_us` (µs since the epoch), µs.
pub fn utc_offset_us(zone: &jiff::tz::TimeZone, time_us: i64) -> i64 {
    jiff::Timestamp::from_microsecond(time_us).map_or(0, |time| i64::from(zone.to_offset(time).seconds()) * 1_000_000)
}

/// The outlines of a city's land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandMap {
    /// New York City's five boroughs ([`crate::land::Land::new_york`]).
    NewYork,
    /// The whole box is land.
    Box,
}

/// A place where demand concentrates (an airport, downtown).
#[derive(Debug, Clone, PartialEq)]
pub struct HotZone {
    /// Its name; surges refer to it.
    pub name: String,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
    /// Spread of requests around the centre (one standard deviation), metres.
    pub radius_m: f64,
    /// Relative share of hot-zone requests.
    pub weight: f64,
}

/// The drivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// How often an online driver's app pings; with the rate, this sets the fleet size.
    pub ping_interval: Duration,
    /// Mean length of an online session (event time).
    pub session_mean: Duration,
    /// Mean offline gap between sessions (event time), on top of a fixed 10 minutes so that
    /// a 10-minute session window always sees a real gap.
    pub gap_mean: Duration,
    /// Mean driving speed, m/s.
    pub speed_mps: f64,
    /// Share of pings sent by one driver, driver 1, whose phone is stuck re-sending where it
    /// is parked: a hot key (0 for none).
    pub hot_driver_share: f64,
}

/// The riders.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Ride requests per online driver per hour, before the hourly profile and surges.
    pub requests_per_driver_hour: f64,
    /// Share of requests placed in hot zones, in [0, 1].
    pub hot_zone_share: f64,
    /// Probability that a rider cancels before pickup.
    pub rider_cancel_probability: f64,
    /// Probability that a driver cancels after accepting.
    pub driver_cancel_probability: f64,
    /// Demand multiplier for each hour of the day in the city's local time, 24 values.
    pub hourly_profile: [f64; 24],
    /// Temporary demand multipliers.
    pub surges: Vec<Surge>,
}

/// A temporary demand multiplier, optionally focused on one hot zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Surge {
    /// Start, in event time from the run's start.
    pub at: Duration,
    /// How long it lasts, in event time.
    pub duration: Duration,
    /// Demand multiplier while it lasts (≥ 1).
    pub multiplier: f64,
    /// Index into `city.hot_zones` where the extra demand goes; `None` for citywide.
    pub zone: Option<usize>,
}

/// A delivery-delay distribution (the time from an event happening to it reaching the platform).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DelayDistribution {
    /// No delay: events arrive in event-time order.
    None,
    /// Exponential with the given mean.
    Exponential {
        /// Mean delay.
        mean: Duration,
    },
    /// Log-normal with the given median and shape σ.
    LogNormal {
        /// Median delay.
        median: Duration,
        /// σ of the underlying normal.
        sigma: f64,
    },
    /// Pareto (a heavy tail) with scale (the minimum) and shape α.
    Pareto {
        /// The minimum delay.
        scale: Duration,
        /// Tail index α; smaller is heavier.
        shape: f64,
    },
}

/// Delivery delays.
#[derive(Debug, Clone, PartialEq)]
pub struct Lateness {
    /// Every event's delay is drawn from this.
    pub distribution: DelayDistribution,
    /// Delays are capped here.
    pub max: Duration,
    /// Share of the time each driver's phone is offline: what it records meanwhile is delivered
    /// in one burst when it reconnects.
    pub offline_fraction: f64,
    /// Shortest outage.
    pub offline_min: Duration,
    /// Longest outage.
    pub offline_max: Duration,
    /// An event delivered more than this after it happened counts as late in the generator's
    /// summary (engines apply their own watermark policies).
    pub late_after: Duration,
}

impl Lateness {
    /// Whether any event can arrive later than it happened.
    pub fn is_disordered(&self) -> bool {
        self.distribution != DelayDistribution::None || self.offline_fraction > 0.0
    }
}

/// Producer retries.
#[derive(Debug, Clone, PartialEq)]
pub struct Duplicates {
    /// Fraction of events sent twice, in [0, 1].
    pub fraction: f64,
    /// Mean time after the original at which the copy arrives.
    pub retry_delay: Duration,
}

/// Drivers whose phone clock is off.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockSkew {
    /// Fraction of drivers with a skewed clock, in [0, 1].
    pub fraction: f64,
    /// Standard deviation of their (constant) offset.
    pub stddev: Duration,
}

/// New York City, roughly: the default city.
const NEW_YORK: BoundingBox = BoundingBox { south: 40.50, west: -74.26, north: 40.92, east: -73.70 };

fn default_hot_zones() -> Vec<HotZone> {
    let zone = |name: &str, lat, lon, radius_m, weight| HotZone { name: name.to_owned(), lat, lon, radius_m, weight };
    vec![
        zone("Midtown", 40.7549, -73.9840, 1200.0, 3.0),
        zone("Financial District", 40.7075, -74.0113, 800.0, 1.5),
        zone("JFK Airport", 40.6413, -73.7781, 1500.0, 2.0),
        zone("LaGuardia Airport", 40.7769, -73.8740, 900.0, 1.0),
        zone("Williamsburg", 40.7081, -73.9571, 1000.0, 1.0),
    ]
}

/// Demand by hour of day: a quiet night, a morning and an evening peak.
pub const DEFAULT_HOURLY_PROFILE: [f64; 24] = [
    0.45, 0.35, 0.28, 0.25, 0.3, 0.45, 0.75, 1.15, 1.45, 1.25, 1.0, 1.0, //
    1.05, 1.0, 1.0, 1.05, 1.2, 1.45, 1.55, 1.35, 1.15, 1.0, 0.85, 0.65,
];

/// Parses an RFC 3339 time with its offset (`2026-06-01T07:30:00-04:00`, or `...Z` for UTC)
/// into µs since the Unix epoch.
fn parse_timestamp(text: &str) -> Option<i64> {
    if let Some(time) = parse_utc_timestamp(text) {
        return Some(time);
    }
    let time: jiff::Timestamp = text.parse().ok()?;
    Some(time.as_microsecond())
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC) into µs since the Unix epoch.
fn parse_utc_timestamp(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes[19] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let year_of_era_base = if month <= 2 { year - 1 } else { year };
    let era = year_of_era_base.div_euclid(400);
    let year_of_era = year_of_era_base - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 86_400) + hour * 3600 + minute * 60 + second) * 1_000_000)
}

/// `[run]`, but its overloads (which come from the run's faults, read by the harness).
fn read_run(read: &mut Reader<'_>, raw: &RawRun) -> RunSettings {
    let rate_eps = read.positive("run.rate_eps", raw.rate_eps, 100_000.0);
    let duration = raw.duration.as_ref().map(|text| read.positive_duration("run.duration", Some(text), "0s"));
    let start_text = raw.start_time.clone().unwrap_or_else(|| "2026-06-01T07:30:00-04:00".to_owned());
    let start_time_us = match parse_timestamp(&start_text) {
        Some(time) if (0..4_102_444_800_000_000).contains(&time) => time,
        _ => {
            read.fail(invalid(
                "run.start_time",
                format!(
                    "must be a time from 1970 to 2099 with its UTC offset, such as \"2026-06-01T07:30:00-04:00\" \
                     or \"2026-06-01T11:30:00Z\", got {start_text:?}"
                ),
            ));
            0
        }
    };
    let time_compression = read.positive("run.time_compression", raw.time_compression, 1.0);
    if time_compression > 100_000.0 {
        read.fail(invalid(
            "run.time_compression",
            format!("must be at most 100000 (a day in under a second), got {time_compression}"),
        ));
    }
    let shards = raw.shards.unwrap_or(8);
    if !(1..=256).contains(&shards) {
        read.fail(invalid("run.shards", format!("must be between 1 and 256, got {shards}")));
    }
    let rate_shape = match &raw.rate_shape {
        None | Some(RawRateShape::Constant) => RateShape::Constant,
        Some(RawRateShape::Step { at, factor }) => RateShape::Step {
            at: read.duration("run.rate_shape.at", at.as_ref(), "30s"),
            factor: read.positive("run.rate_shape.factor", *factor, 2.0),
        },
        Some(RawRateShape::Sine { period, amplitude }) => {
            let amplitude = amplitude.unwrap_or(0.5);
            if !(0.0..1.0).contains(&amplitude) {
                read.fail(invalid(
                    "run.rate_shape.amplitude",
                    format!("must be at least 0 and below 1, got {amplitude}"),
                ));
            }
            RateShape::Sine {
                period: read.positive_duration("run.rate_shape.period", period.as_ref(), "60s"),
                amplitude,
            }
        }
        Some(RawRateShape::Burst { every, length, factor }) => {
            let every = read.positive_duration("run.rate_shape.every", every.as_ref(), "20s");
            let length = read.positive_duration("run.rate_shape.length", length.as_ref(), "2s");
            if length >= every {
                read.fail(invalid("run.rate_shape.length", "must be shorter than `every`"));
            }
            RateShape::Burst { every, length, factor: read.positive("run.rate_shape.factor", *factor, 2.0) }
        }
    };
    let burstiness = raw.burstiness.as_ref().map(|burstiness| {
        let cv = burstiness.cv.unwrap_or(0.3);
        if !(cv > 0.0 && cv <= 2.0) {
            read.fail(invalid("run.burstiness.cv", format!("must be above 0 and at most 2, got {cv}")));
        }
        let correlation = read.positive_duration("run.burstiness.correlation", burstiness.correlation.as_ref(), "1s");
        if correlation < Duration::from_millis(10) {
            read.fail(invalid("run.burstiness.correlation", "must be at least 10ms"));
        }
        Burstiness { cv, correlation }
    });
    RunSettings {
        rate_eps,
        duration,
        start_time_us,
        time_compression,
        shards,
        rate_shape,
        warm_start: raw.warm_start.unwrap_or(true),
        overloads: Vec::new(),
        late_bursts: crate::late_bursts::LateBursts::new(start_time_us, time_compression, false),
        live_overloads: LiveOverloads::default(),
        burstiness,
    }
}

/// `[city]`: the box, the H3 resolution, the hot zones.
fn read_city(read: &mut Reader<'_>, raw: RawCity) -> City {
    let bbox = BoundingBox {
        south: raw.south.unwrap_or(NEW_YORK.south),
        west: raw.west.unwrap_or(NEW_YORK.west),
        north: raw.north.unwrap_or(NEW_YORK.north),
        east: raw.east.unwrap_or(NEW_YORK.east),
    };
    if !(-85.0..=85.0).contains(&bbox.south) || !(-85.0..=85.0).contains(&bbox.north) || bbox.south >= bbox.north {
        read.fail(invalid(
            "city.south",
            format!("the box needs -85 <= south < north <= 85, got south {} and north {}", bbox.south, bbox.north),
        ));
    }
    if !(-180.0..=180.0).contains(&bbox.west) || !(-180.0..=180.0).contains(&bbox.east) || bbox.west >= bbox.east {
        read.fail(invalid(
            "city.west",
            format!("the box needs -180 <= west < east <= 180, got west {} and east {}", bbox.west, bbox.east),
        ));
    }
    let resolution_code = raw.h3_resolution.unwrap_or(8);
    let resolution = match h3o::Resolution::try_from(resolution_code) {
        Ok(resolution) if (4..=11).contains(&resolution_code) => resolution,
        _ => {
            read.fail(invalid(
                "city.h3_resolution",
                format!("must be an H3 resolution from 4 to 11, got {resolution_code}"),
            ));
            h3o::Resolution::Eight
        }
    };
    let hot_zones = match raw.hot_zones {
        None => default_hot_zones(),
        Some(zones) => zones
            .into_iter()
            .enumerate()
            .map(|(index, zone)| {
                let field = |name: &str| format!("city.hot_zones[{index}].{name}");
                let lat = zone.lat.unwrap_or(f64::NAN);
                let lon = zone.lon.unwrap_or(f64::NAN);
                if !(bbox.south..=bbox.north).contains(&lat) || !(bbox.west..=bbox.east).contains(&lon) {
                    read.fail(invalid(
                        field("lat"),
                        format!("the zone's centre ({lat}, {lon}) must be inside the city's box"),
                    ));
                }
                HotZone {
                    name: zone.name.unwrap_or_else(|| format!("hot zone {index}")),
                    lat,
                    lon,
                    radius_m: read.positive(&field("radius_m"), zone.radius_m, 1000.0),
                    weight: read.positive(&field("weight"), zone.weight, 1.0),
                }
            })
            .collect(),
    };

    let default_box = raw.south.is_none() && raw.west.is_none() && raw.north.is_none() && raw.east.is_none();
    let land = match raw.land.as_deref() {
        None if default_box => LandMap::NewYork,
        None | Some("box") => LandMap::Box,
        Some("new-york") if bbox == NEW_YORK => LandMap::NewYork,
        Some("new-york") => {
            read.fail(invalid("city.land", "\"new-york\" needs New York's box: leave south, west, north and east out"));
            LandMap::Box
        }
        Some(other) => {
            read.fail(invalid("city.land", format!("must be \"new-york\" or \"box\", got {other:?}")));
            LandMap::Box
        }
    };
    let timezone = raw.timezone.unwrap_or_else(|| if default_box { "America/New_York" } else { "UTC" }.to_owned());
    if jiff::tz::TimeZoneDatabase::bundled().get(&timezone).is_err() {
        read.fail(invalid(
            "city.timezone",
            format!("must be an IANA time zone such as \"America/New_York\" or \"UTC\", got {timezone:?}"),
        ));
    }
    City { name: raw.name.unwrap_or_else(|| "New York".to_owned()), bbox, resolution, hot_zones, timezone, land }
}

/// `[fleet]`.
fn read_fleet(read: &mut Reader<'_>, raw: &RawFleet) -> Fleet {
    let fleet = Fleet {
        ping_interval: read.positive_duration("fleet.ping_interval", raw.ping_interval.as_ref(), "4s"),
        session_mean: read.positive_duration("fleet.session_mean", raw.session_mean.as_ref(), "4h"),
        gap_mean: read.positive_duration("fleet.gap_mean", raw.gap_mean.as_ref(), "30m"),
        speed_mps: read.positive("fleet.speed_mps", raw.speed_mps, 7.5),
        hot_driver_share: read.fraction("fleet.hot_driver_share", raw.hot_driver_share, 0.0),
    };
    if fleet.hot_driver_share > 0.5 {
        read.fail(invalid(
            "fleet.hot_driver_share",
            format!("must be at most 0.5 (one ping in two from one driver), got {}", fleet.hot_driver_share),
        ));
    }
    if fleet.speed_mps > 60.0 {
        read.fail(invalid(
            "fleet.speed_mps",
            format!("must be at most 60 m/s for a car in a city, got {}", fleet.speed_mps),
        ));
    }

    fleet
}

/// `[demand]`, whose surges name the city's hot zones.
fn read_demand(read: &mut Reader<'_>, raw: RawDemand, hot_zones: &[HotZone]) -> Demand {
    let hourly_profile = match raw.hourly_profile {
        None => DEFAULT_HOURLY_PROFILE,
        Some(values) => match <[f64; 24]>::try_from(values.as_slice()) {
            Ok(profile) if profile.iter().all(|value| value.is_finite() && *value >= 0.0) => profile,
            _ => {
                read.fail(invalid(
                    "demand.hourly_profile",
                    format!("must list 24 multipliers (one per hour, each >= 0), got {} values", values.len()),
                ));
                DEFAULT_HOURLY_PROFILE
            }
        },
    };
    let surges = raw
        .surges
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, surge)| {
            let field = |name: &str| format!("demand.surges[{index}].{name}");
            let multiplier = read.positive(&field("multiplier"), surge.multiplier, 2.0);
            if multiplier < 1.0 {
                read.fail(invalid(field("multiplier"), format!("must be at least 1, got {multiplier}")));
            }
            let zone = surge.zone.as_ref().and_then(|name| {
                let found = hot_zones.iter().position(|zone| &zone.name == name);
                if found.is_none() {
                    let names: Vec<_> = hot_zones.iter().map(|zone| zone.name.as_str()).collect();
                    read.fail(invalid(field("zone"), format!("no hot zone is named {name:?}; the city has {names:?}")));
                }
                found
            });
            Surge {
                at: read.duration(&field("at"), surge.at.as_ref(), "0s"),
                duration: read.positive_duration(&field("duration"), surge.duration.as_ref(), "10m"),
                multiplier,
                zone,
            }
        })
        .collect();
    Demand {
        requests_per_driver_hour: read.positive("demand.requests_per_driver_hour", raw.requests_per_driver_hour, 1.2),
        hot_zone_share: read.fraction("demand.hot_zone_share", raw.hot_zone_share, 0.35),
        rider_cancel_probability: read.fraction("demand.rider_cancel_probability", raw.rider_cancel_probability, 0.05),
        driver_cancel_probability: read.fraction(
            "demand.driver_cancel_probability",
            raw.driver_cancel_probability,
            0.02,
        ),
        hourly_profile,
        surges,
    }
}

/// `[lateness]`.
fn read_lateness(read: &mut Reader<'_>, lateness_raw: &RawLateness) -> Lateness {
    let distribution = match lateness_raw.distribution.as_deref().unwrap_or("none") {
        "none" => DelayDistribution::None,
        "exponential" => DelayDistribution::Exponential {
            mean: read.positive_duration("lateness.mean", lateness_raw.mean.as_ref(), "200ms"),
        },
        "lognormal" => {
            let sigma = read.positive("lateness.sigma", lateness_raw.sigma, 1.0);
            if sigma > 5.0 {
                read.fail(invalid(
                    "lateness.sigma",
                    format!("must be at most 5 (beyond that the tail is all cap), got {sigma}"),
                ));
            }
            DelayDistribution::LogNormal {
                median: read.positive_duration("lateness.median", lateness_raw.median.as_ref(), "100ms"),
                sigma,
            }
        }
        "pareto" => DelayDistribution::Pareto {
            scale: read.positive_duration("lateness.scale", lateness_raw.scale.as_ref(), "20ms"),
            shape: read.positive("lateness.shape", lateness_raw.shape, 1.5),
        },
        other => {
            read.fail(invalid(
                "lateness.distribution",
                format!("must be one of \"none\", \"exponential\", \"lognormal\", \"pareto\", got {other:?}"),
            ));
            DelayDistribution::None
        }
    };
    let lateness = Lateness {
        distribution,
        max: read.positive_duration("lateness.max", lateness_raw.max.as_ref(), "10m"),
        offline_fraction: read.fraction("lateness.offline_fraction", lateness_raw.offline_fraction, 0.0),
        offline_min: read.duration("lateness.offline_min", lateness_raw.offline_min.as_ref(), "1m"),
        offline_max: read.duration("lateness.offline_max", lateness_raw.offline_max.as_ref(), "10m"),
        late_after: read.duration("lateness.late_after", lateness_raw.late_after.as_ref(), "1s"),
    };
    if lateness.offline_min > lateness.offline_max {
        read.fail(invalid("lateness.offline_min", "must not be longer than `offline_max`"));
    }
    let (min_s, max_s) = (lateness.offline_min.as_secs_f64(), lateness.offline_max.as_secs_f64());
    if lateness.offline_fraction > 0.0 && max_s > 0.0 && lateness.offline_fraction > (min_s + max_s) / 2.0 / max_s {
        // A phone has one outage an epoch of `mean / fraction`, which must hold the longest.
        read.fail(invalid(
            "lateness.offline_fraction",
            format!(
                "a phone offline {:.0}% of the time in outages of {}s to {}s would have to be offline again before \
                 it reconnects: at most {:.2} (the mean outage over the longest); lower it or narrow the outages",
                lateness.offline_fraction * 100.0,
                min_s,
                max_s,
                (min_s + max_s) / 2.0 / max_s
            ),
        ));
    }
    if lateness.offline_max.is_zero() && lateness.offline_fraction > 0.0 {
        read.fail(invalid("lateness.offline_max", "must be longer than 0s when `offline_fraction` is set"));
    }
    if lateness.offline_fraction > 0.0 && lateness.offline_max > lateness.max {
        read.fail(invalid("lateness.offline_max", "must not be longer than `max`, the cap on every delay"));
    }
    lateness
}

/// `[duplicates]`, `[malformed]` and `[clock_skew]`: the stream's other disorder.
fn read_disorder(
    read: &mut Reader<'_>,
    duplicates: &RawDuplicates,
    malformed: &RawMalformed,
    clock_skew: &RawClockSkew,
) -> (Duplicates, f64, ClockSkew) {
    let duplicates = Duplicates {
        fraction: read.fraction("duplicates.fraction", duplicates.fraction, 0.0),
        retry_delay: read.duration("duplicates.retry_delay", duplicates.retry_delay.as_ref(), "200ms"),
    };
    if duplicates.fraction > 0.5 {
        read.fail(invalid(
            "duplicates.fraction",
            format!("must be at most 0.5 (a retry of every other event), got {}", duplicates.fraction),
        ));
    }
    let malformed_fraction = read.fraction("malformed.fraction", malformed.fraction, 0.0);
    if malformed_fraction > 0.0 && malformed_fraction < 1e-12 {
        // The gaps between malformed records are geometric, and rand_distr's geometric
        // distribution never finishes building for a p whose 1 - p rounds to 1.
        read.fail(invalid(
            "malformed.fraction",
            format!("must be 0 or at least 1e-12 (one record in a trillion), got {malformed_fraction}"),
        ));
    }
    let clock_skew = ClockSkew {
        fraction: read.fraction("clock_skew.fraction", clock_skew.fraction, 0.0),
        stddev: read.duration("clock_skew.stddev", clock_skew.stddev.as_ref(), "2s"),
    };

    (duplicates, malformed_fraction, clock_skew)
}

impl Workload {
    /// Reads and validates the workload sections of a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let origin = path.display().to_string();
        Self::from_toml(&settings::read_file(path)?, &origin)
    }

    /// Parses and validates the workload sections of scenario TOML; `origin` names where it came
    /// from in errors. Other sections are left to their owners.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let raw: RawWorkload = settings::parse_sections(text, origin)?;
        Self::validate(raw, &settings::fallback_name(origin)).map_err(|problem| ScenarioError::new(origin, problem))
    }

    /// The second step: checks every field of the raw workload and fills in defaults.
    pub fn validate(raw: RawWorkload, fallback_name: &str) -> Result<Self, ScenarioProblem> {
        let mut problem = None;
        let mut read = Reader::new(&mut problem);
        let run = read_run(&mut read, &raw.run);
        let city = read_city(&mut read, raw.city);
        let fleet = read_fleet(&mut read, &raw.fleet);
        let demand = read_demand(&mut read, raw.demand, &city.hot_zones);
        let lateness = read_lateness(&mut read, &raw.lateness);
        let (duplicates, malformed_fraction, clock_skew) =
            read_disorder(&mut read, &raw.duplicates, &raw.malformed, &raw.clock_skew);
        let workload = Workload {
            name: raw.name.unwrap_or_else(|| fallback_name.to_owned()),
            description: raw.description.unwrap_or_default(),
            seed: raw.seed.unwrap_or(1),
            run,
            city,
            fleet,
            demand,
            lateness,
            duplicates,
            malformed_fraction,
            clock_skew,
        };
        if let Some(problem) = problem.take() {
            return Err(problem);
        }
        if workload.online_drivers() > 50_000_000.0 {
            return Err(invalid(
                "run.rate_eps",
                format!(
                    "{} events/s of event time with pings every {:?} needs {:.0} million drivers; lower the rate or the ping interval (at most 50 million)",
                    workload.event_time_rate_eps(),
                    workload.fleet.ping_interval,
                    workload.online_drivers() / 1e6
                ),
            ));
        }
        let share = workload.online_share();
        if share < MIN_ONLINE_SHARE {
            // Each ping passes over offline drivers to the next online one: at a share of 1 in
            // N, N drivers a ping; and the fleet is N times the drivers online.
            return Err(invalid(
                "fleet.gap_mean",
                format!(
                    "drivers would be online {:.4}% of the time (sessions of {:?} on average, gaps of {:?} plus \
                     {:?}); lk needs at least {}%: lengthen session_mean or shorten gap_mean",
                    share * 100.0,
                    workload.fleet.session_mean,
                    workload.fleet.gap_mean,
                    MIN_OFFLINE_GAP,
                    MIN_ONLINE_SHARE * 100.0
                ),
            ));
        }
        let fleet = workload.online_drivers() / share;
        if fleet > 50_000_000.0 {
            return Err(invalid(
                "fleet.gap_mean",
                format!(
                    "a fleet of {:.0} million drivers ({:.0} thousand online, {:.1}% of the time each) is more than lk \
                     keeps in memory (50 million, 64 bytes each); lower the rate or the ping interval, or put drivers \
                     online more of the time",
                    fleet / 1e6,
                    workload.online_drivers() / 1e3,
                    share * 100.0
                ),
            ));
        }
        Ok(workload)
    }

    /// Events per second of event time at the base rate.
    pub fn event_time_rate_eps(&self) -> f64 {
        self.run.rate_eps / self.run.time_compression
    }

    /// Drivers online at once that the base rate sustains at the configured ping interval.
    pub fn online_drivers(&self) -> f64 {
        self.event_time_rate_eps() * self.fleet.ping_interval.as_secs_f64()
    }

    /// Share of the fleet online at a time, from the session and gap means.
    pub fn online_share(&self) -> f64 {
        let online = self.fleet.session_mean.as_secs_f64();
        let offline = self.fleet.gap_mean.as_secs_f64() + MIN_OFFLINE_GAP.as_secs_f64();
        online / (online + offline)
    }

    /// A copy with another base rate; fails on a rate that is not positive.
    pub fn with_rate(mut self, rate_eps: f64) -> Result<Self, ScenarioProblem> {
        if !(rate_eps.is_finite() && rate_eps > 0.0) {
            return Err(invalid(
                "--rate",
                format!("must be a number of events per second greater than 0, got {rate_eps}"),
            ));
        }
        self.run.rate_eps = rate_eps;
        Ok(self)
    }

    /// A copy with another root seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A copy with another duration.
    pub fn with_duration(mut self, duration: Option<Duration>) -> Self {
        self.run.duration = duration;
        self
    }
}

/// The least share of the time a driver may be online (see `Workload::validate`).
const MIN_ONLINE_SHARE: f64 = 0.01;

/// Every offline gap lasts at least this long, so that a 10-minute session window sees it.
pub const MIN_OFFLINE_GAP: Duration = Duration::from_secs(10 * 60 + 30);

impl fmt::Display for DelayDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelayDistribution::None => write!(f, "none"),
            DelayDistribution::Exponential { mean } => write!(f, "exponential(mean {mean:?})"),
            DelayDistribution::LogNormal { median, sigma } => {
                write!(f, "lognormal(median {median:?}, sigma {sigma})")
            }
            DelayDistribution::Pareto { scale, shape } => {
                write!(f, "pareto(scale {scale:?}, shape {shape})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        Workload::from_toml(text, "scenarios/bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_is_a_valid_default_scenario() {
        let scenario = Workload::from_toml("", "scenarios/empty.toml").unwrap();
        assert_eq!(scenario.name, "empty");
        assert_eq!(scenario.run.rate_eps, 100_000.0);
        assert_eq!(scenario.city.hot_zones.len(), 5);
        // 07:30 in New York (EDT) is 11:30 UTC.
        assert_eq!(scenario.run.start_time_us, 1_780_299_000_000_000 + 4 * 3_600_000_000);
        assert_eq!(scenario.city.timezone, "America/New_York");
        assert_eq!(scenario.city.land, LandMap::NewYork);
    }

    #[test]
    fn start_times_carry_their_offset_and_a_city_its_time_zone_and_land() {
        let at = |text: &str| parse_timestamp(text);
        assert_eq!(at("2026-06-01T07:30:00-04:00"), at("2026-06-01T11:30:00Z"));
        assert_eq!(at("2026-06-01T11:30:00+00:00"), at("2026-06-01T11:30:00Z"));
        assert_eq!(at("2026-06-01 07:30"), None);
        let other = Workload::from_toml(
            "[city]\nsouth = 51.3\nwest = -0.5\nnorth = 51.7\neast = 0.3\ntimezone = \"Europe/London\"",
            "t",
        )
        .unwrap();
        assert_eq!((other.city.land, other.city.timezone.as_str()), (LandMap::Box, "Europe/London"));
        let boxed = Workload::from_toml("[city]\nsouth = 51.3\nwest = -0.5\nnorth = 51.7\neast = 0.3", "t").unwrap();
        assert_eq!(boxed.city.timezone, "UTC", "a box of one's own has no default zone but UTC");
        assert!(problem("[city]\ntimezone = \"Mars/Olympus\"").contains("city.timezone"));
        assert!(problem("[city]\ntimezone = \"Mars/Olympus\"").contains("IANA"));
        assert!(problem("[city]\nland = \"atlantis\"").contains("\"new-york\" or \"box\""));
        assert!(
            problem("[city]\nsouth = 51.3\nwest = -0.5\nnorth = 51.7\neast = 0.3\nland = \"new-york\"")
                .contains("New York's box")
        );
        assert!(problem("[run]\nstart_time = \"tomorrow\"").contains("with its UTC offset"));
    }

    #[test]
    fn timestamps_parse_as_utc() {
        assert_eq!(parse_utc_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc_timestamp("2000-03-01T00:00:01Z"), Some(951_868_801_000_000));
        assert_eq!(parse_utc_timestamp("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc_timestamp("2026-06-01 07:30:00"), None);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let message = problem("[run\nrate_eps = 5");
        assert!(message.starts_with("scenarios/bad.toml: TOML parse error at line 1"), "{message}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_the_known_ones_listed() {
        let message = problem("[run]\nrate = 5");
        assert!(message.contains("unknown field `rate`"), "{message}");
        assert!(message.contains("rate_eps"), "{message}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        let message = problem("[run]\nrate_eps = \"fast\"");
        assert!(message.contains("rate_eps") && message.contains("invalid type"), "{message}");
    }

    #[test]
    fn rates_must_be_positive() {
        assert_eq!(
            problem("[run]\nrate_eps = 0"),
            "scenarios/bad.toml: field `run.rate_eps`: must be a number greater than 0, got 0"
        );
    }

    #[test]
    fn fractions_must_be_within_zero_and_one() {
        assert_eq!(
            problem("[malformed]\nfraction = 1.5"),
            "scenarios/bad.toml: field `malformed.fraction`: must be a fraction between 0 and 1, got 1.5"
        );
    }

    #[test]
    fn durations_must_have_units() {
        assert_eq!(
            problem("[run]\nduration = \"90\""),
            "scenarios/bad.toml: field `run.duration`: \"90\" is not a duration; write a number and a unit, such as \"250ms\", \"90s\", \"5m\" or \"2h\""
        );
    }

    #[test]
    fn rate_shapes_take_only_their_own_fields() {
        let shape = |text: &str| Workload::from_toml(&format!("[run.rate_shape]\n{text}"), "shape.toml");
        assert!(matches!(shape("kind = \"sine\"\nperiod = \"3s\"").unwrap().run.rate_shape, RateShape::Sine { .. }));
        let unknown = shape("kind = \"zigzag\"").unwrap_err().to_string();
        assert!(unknown.contains("shape.toml") && unknown.contains("zigzag") && unknown.contains("burst"), "{unknown}");
        let foreign = shape("kind = \"sine\"\nfactor = 3.0").unwrap_err().to_string();
        assert!(foreign.contains("factor"), "a sine has no factor: {foreign}");
        assert!(shape("period = \"3s\"").unwrap_err().to_string().contains("kind"));
    }

    #[test]
    fn distributions_must_be_known_and_their_parameters_valid() {
        assert!(
            problem("[lateness]\ndistribution = \"gaussian\"")
                .contains("field `lateness.distribution`: must be one of")
        );
        assert_eq!(
            problem("[lateness]\ndistribution = \"pareto\"\nshape = -1.0"),
            "scenarios/bad.toml: field `lateness.shape`: must be a number greater than 0, got -1"
        );
        assert!(
            problem("[lateness]\nmax = \"1m\"\noffline_fraction = 0.1\noffline_max = \"5m\"")
                .contains("field `lateness.offline_max`")
        );
    }

    #[test]
    fn the_city_box_and_resolution_must_make_sense() {
        assert!(problem("[city]\nsouth = 41.0\nnorth = 40.0").contains("field `city.south`"));
        assert!(
            problem("[city]\nh3_resolution = 15")
                .contains("field `city.h3_resolution`: must be an H3 resolution from 4 to 11, got 15")
        );
    }

    #[test]
    fn surges_must_name_a_hot_zone_that_exists() {
        let message = problem("[[demand.surges]]\nzone = \"Atlantis\"");
        assert!(message.contains("field `demand.surges[0].zone`: no hot zone is named \"Atlantis\""), "{message}");
    }

    #[test]
    fn impossible_fleets_are_rejected_before_allocating_them() {
        let message = problem("[run]\nrate_eps = 1e9\n[fleet]\nping_interval = \"1m\"");
        assert!(message.contains("million drivers"), "{message}");
    }

    #[test]
    fn a_missing_file_says_so() {
        let error = Workload::from_file(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(error.to_string().starts_with("/nonexistent/x.toml: cannot read the scenario file"), "{error}");
    }

    /// Found by the scenario property test: a fleet online a ten-thousandth of the time was a
    /// fleet of hundreds of millions of drivers, and each ping scanned thousands of them: the
    /// generator filled 10 GB and made no progress. It is refused, and so is a fleet too large
    /// to keep.
    #[test]
    fn a_fleet_mostly_offline_or_too_large_is_refused_with_its_numbers() {
        let error = Workload::from_toml("[fleet]\ngap_mean = \"3650d\"", "t").unwrap_err().to_string();
        assert!(error.contains("fleet.gap_mean") && error.contains("at least 1%"), "{error}");
        let error =
            Workload::from_toml("[run]\nrate_eps = 10000000\n[fleet]\nping_interval = \"4s\"\ngap_mean = \"20h\"", "t")
                .unwrap_err()
                .to_string();
        assert!(error.contains("million drivers") && error.contains("50 million"), "{error}");
        assert!(Workload::from_toml("[fleet]\ngap_mean = \"20h\"", "t").is_ok());
    }

    /// Found by the scenario property test: a malformed fraction of 1e-300 hung the generator
    /// (its geometric gaps never finished building).
    #[test]
    fn a_malformed_fraction_too_small_to_draw_is_refused() {
        let error = Workload::from_toml("[malformed]\nfraction = 1e-300", "t").unwrap_err().to_string();
        assert!(error.contains("malformed.fraction") && error.contains("1e-12"), "{error}");
        assert!(Workload::from_toml("[malformed]\nfraction = 1e-9", "t").is_ok());
    }
}
