//! The oracle: the exact views, computed the simple way from everything in the log.
//!
//! It reads every partition from the start, decodes each record (malformed ones are counted as
//! dead letters), keeps the first valid copy of each event id, and builds two view sets:
//! **everything** (every valid event, whatever its lateness, independent of arrival order) and
//! **policy** (only the events the configured lateness policy accepts, decided per partition in
//! log order exactly as [`crate::runtime::queries`] defines it). An engine is correct when its served
//! views equal the policy views; the gap between policy and everything is what the lateness
//! policy dropped by design, never a loss.
//!
//! It shares no state-keeping code with the engines: sessions, for instance, come from sorting
//! all activity and splitting at gaps, not from incremental merging.

use rustc_hash::FxHashMap;

use lk_simulator::codec::decode_record;
use lk_simulator::event::Payload;

use crate::log::{Log, LogError, RecordBatch};
use crate::runtime::queries::{Demand, Location, Query, QueryConfig, RideCount, Session, Trend, ViewSet};

/// What the oracle found.
#[derive(Clone, Debug, Default)]
pub struct Oracle {
    /// Views over every valid event.
    pub everything: ViewSet,
    /// Views over the events the lateness policy accepts.
    pub policy: ViewSet,
    /// Records read.
    pub records: u64,
    /// Valid, distinct events.
    pub events: u64,
    /// Records that did not decode.
    pub dead_lettered: u64,
    /// Valid records whose event id was seen before.
    pub duplicates: u64,
    /// Contributions the policy dropped, per query (Q1 never drops).
    pub late_dropped: [u64; 5],
}

/// A set of event ids; the generator's ids are dense, so a bit per id.
#[derive(Default)]
struct IdSet {
    words: Vec<u64>,
}

impl IdSet {
    /// Inserts `id`; returns whether it was new.
    fn insert(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let new = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        new
    }
}

/// Accumulates both view sets.
#[derive(Default)]
struct Accumulator {
    location: FxHashMap<u32, Location>,
    rides: FxHashMap<(u32, i64), RideCount>,
    demand: FxHashMap<(u64, i64), Demand>,
    trends: FxHashMap<(u64, i64), Trend>,
}

impl Accumulator {
    fn into_views(self, sessions: Vec<((u32, i64), Session)>) -> ViewSet {
        ViewSet {
            driver_location: self.location.into_iter().collect(),
            rides_per_driver: self.rides.into_iter().collect(),
            zone_demand: self.demand.into_iter().collect(),
            driver_sessions: sessions.into_iter().collect(),
            historical_trends: self.trends.into_iter().collect(),
        }
    }
}

/// Session activity for one big sort: (driver, time, event id, whether a ride, whether accepted,
/// partition, offset).
type Activity = (u32, i64, u64, bool, bool, u32, u64);

/// What a scan of the log counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanCounts {
    /// Records read.
    pub records: u64,
    /// Valid, distinct events.
    pub events: u64,
    /// Records that did not decode.
    pub dead_lettered: u64,
    /// Valid records whose event id was seen before.
    pub duplicates: u64,
}

/// Where a record is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

/// An engine's lateness rule, as the oracle applies it: whether the event at `at` still counts
/// towards the window ending at `window_end_us` (for a session event, its time plus the gap),
/// given its partition's stream time then. Q1 never drops an event, so it is never asked.
///
/// lk's own engines follow [`QueryConfig`]'s per-partition rule, which the oracle applies by
/// itself; an engine with another rule (Spark's global watermark, advanced per micro-batch)
/// gives its own, so that what it drops by its rule is told apart from what it lost.
pub trait Lateness {
    /// Whether the event counts.
    fn accepts(&self, query: Query, at: Position, stream_time_us: i64, window_end_us: i64) -> bool;

    /// One driver's sessions from its accepted activity, (time, whether a ride, event id,
    /// position), sorted by time, when the engine closes sessions for good (Spark's append mode
    /// evicts a session once its watermark passes the session's end, and a later event starts a
    /// new session rather than extending it). None: sessions are the activity split at gaps.
    fn sessions(&self, activity: &[(i64, bool, u64, Position)], gap_us: i64) -> Option<Vec<Session>> {
        let _ = (activity, gap_us);
        None
    }
}

/// Which events a truth counts: every event, those lk's own lateness rule accepts, or those an
/// engine's own rule accepts.
#[derive(Clone, Copy)]
pub enum Truth<'a> {
    /// Every valid event, whatever its lateness.
    Everything,
    /// What lk's per-partition lateness rule accepts ([`QueryConfig`]).
    Policy,
    /// What an engine's own rule accepts.
    Rule(&'a dyn Lateness),
}

/// Reads every partition of `topic` from its start, in log order, and calls `visit` with the
/// first valid copy of each event id, its partition's stream time (the largest event time the
/// partition has shown so far, this event's included: what the lateness policy decides by) and
/// its position.
pub fn scan_first_copies(
    log: &dyn Log,
    topic: &str,
    mut visit: impl FnMut(&lk_simulator::event::Event, i64, Position),
) -> Result<ScanCounts, LogError> {
    let mut counts = ScanCounts::default();
    let mut seen = IdSet::default();
    let mut batch = RecordBatch::new();
    for partition in 0..log.partitions(topic)? {
        let mut offset = log.start_offset(topic, partition)?;
        let mut stream_time_us = i64::MIN;
        loop {
            batch.clear();
            let next = log.read(topic, partition, offset, 16_384, &mut batch)?;
            if next == offset {
                break;
            }
            if next - offset != batch.len() as u64 {
                // The truth must not skip what an engine may have read (see `check_contiguous`).
                return Err(LogError::Backend {
                    message: format!(
                        "the oracle's read of {topic}/{partition} from offset {offset} moved to {next} but returned {} \
                         records: the log skipped records",
                        batch.len()
                    ),
                    retriable: false,
                });
            }
            let first = offset;
            offset = next;
            for (index, (_, value)) in batch.iter().enumerate() {
                counts.records += 1;
                let Ok(event) = decode_record(value) else {
                    counts.dead_lettered += 1;
                    continue;
                };
                if !seen.insert(event.event_id) {
                    counts.duplicates += 1;
                    continue;
                }
                counts.events += 1;
                stream_time_us = stream_time_us.max(event.event_time_us);
                visit(&event, stream_time_us, Position { partition, offset: first + index as u64 });
            }
        }
    }
    Ok(counts)
}

/// The query set's window assignment and lateness policy, written here a second time from their
/// definitions rather than taken from the engines' `QueryConfig` methods: a bug in the engines'
/// window assignment would otherwise be the oracle's too, and go unseen. Only the sizes come from
/// the configuration. `tests::the_oracles_definitions_agree_with_the_engines` holds the two to
/// the same answers.
#[derive(Clone, Copy, Debug)]
struct Definitions {
    sizes: QueryConfig,
}

impl Definitions {
    /// The watermark: the highest event time seen in the partition, less the delay.
    fn watermark(&self, stream_time_us: i64) -> i64 {
        stream_time_us.saturating_sub(self.sizes.watermark_delay_us)
    }

    /// A window is closed to an event once the watermark has passed its end by the allowed
    /// lateness.
    fn closed(&self, window_end_us: i64, watermark_us: i64) -> bool {
        watermark_us >= window_end_us.saturating_add(self.sizes.allowed_lateness_us)
    }

    /// The tumbling window `[start, start + size)` that holds `time_us`.
    fn tumbling(time_us: i64, size_us: i64) -> i64 {
        time_us.div_euclid(size_us) * size_us
    }

    /// Every sliding window `[start, start + size)` with `start` a multiple of the slide that
    /// holds `time_us`, found by walking back from the latest such start.
    fn sliding(&self, time_us: i64) -> Vec<i64> {
        let (size, slide) = (self.sizes.demand_window_us, self.sizes.demand_slide_us);
        let mut starts = Vec::new();
        let mut start = time_us.div_euclid(slide) * slide;
        while start + size > time_us {
            starts.push(start);
            start -= slide;
        }
        starts
    }

    /// A session event is late once a session that ended at it could no longer change: the
    /// watermark has passed its time plus the gap, plus the allowed lateness.
    fn session_late(&self, time_us: i64, watermark_us: i64) -> bool {
        self.closed(time_us.saturating_add(self.sizes.session_gap_us), watermark_us)
    }

    /// A driver's sessions from its activity sorted by time: a gap of at least the session gap
    /// between two consecutive events ends a session.
    fn sessions(&self, activity: &[(i64, bool, u64)]) -> Vec<Session> {
        let mut sessions = Vec::new();
        let mut first = 0;
        for index in 1..=activity.len() {
            let ends =
                index == activity.len() || activity[index].0 - activity[index - 1].0 >= self.sizes.session_gap_us;
            if ends {
                let mut session = Session::single(activity[first].0, activity[first].1, activity[first].2);
                for &(time_us, is_ride, event_id) in &activity[first + 1..index] {
                    session.absorb(&Session::single(time_us, is_ride, event_id));
                }
                sessions.push(session);
                first = index;
            }
        }
        sessions
    }
}

/// Whose sessions an event is activity of: a driver's ping or pickup.
fn session_driver(event: &lk_simulator::event::Event) -> Option<(u32, bool)> {
    match event.payload {
        Payload::DriverPing { driver_id, .. } => Some((driver_id, false)),
        Payload::PickedUp { driver_id, .. } => Some((driver_id, true)),
        _ => None,
    }
}

impl Oracle {
    /// Computes the oracle over every partition of `topic`, its policy views under lk's own
    /// lateness rule.
    pub fn compute(log: &dyn Log, topic: &str, config: &QueryConfig) -> Result<Oracle, LogError> {
        Self::compute_with(log, topic, config, None)
    }

    /// Computes the oracle over every partition of `topic`, its policy views under `rule`, or
    /// under lk's own lateness rule when there is none.
    pub fn compute_with(
        log: &dyn Log,
        topic: &str,
        config: &QueryConfig,
        rule: Option<&dyn Lateness>,
    ) -> Result<Oracle, LogError> {
        let definitions = Definitions { sizes: *config };
        let mut oracle = Oracle::default();
        let (mut all, mut accepted) = (Accumulator::default(), Accumulator::default());
        let mut activity: Vec<Activity> = Vec::new();
        let counts = scan_first_copies(log, topic, |event, stream_time_us, at| {
            let watermark = definitions.watermark(stream_time_us);
            let late = |query: Query, window_end_us: i64| match rule {
                Some(rule) => !rule.accepts(query, at, stream_time_us, window_end_us),
                None => definitions.closed(window_end_us, watermark),
            };
            let time = event.event_time_us;
            match event.payload {
                Payload::DriverPing { driver_id, .. } => {
                    let location = Location::of(event);
                    for views in [&mut all, &mut accepted] {
                        let entry = views.location.entry(driver_id).or_insert(location);
                        if location.is_newer_than(entry) {
                            *entry = location;
                        }
                    }
                }
                Payload::PickedUp { driver_id, .. } => {
                    let start = Definitions::tumbling(time, config.rides_window_us);
                    let late = late(Query::RidesPerDriver, start + config.rides_window_us);
                    oracle.late_dropped[1] += u64::from(late);
                    for (views, include) in [(&mut all, true), (&mut accepted, !late)] {
                        if include {
                            views.rides.entry((driver_id, start)).or_default().add(event);
                        }
                    }
                }
                Payload::RideRequested { .. } => {
                    for start in definitions.sliding(time) {
                        let late = late(Query::ZoneDemand, start + config.demand_window_us);
                        oracle.late_dropped[2] += u64::from(late);
                        all.demand.entry((event.zone.0, start)).or_default().add(event.event_id);
                        if !late {
                            accepted.demand.entry((event.zone.0, start)).or_default().add(event.event_id);
                        }
                    }
                }
                Payload::DroppedOff { fare_cents, distance_m, .. } => {
                    let start = Definitions::tumbling(time, config.trends_window_us);
                    let late = late(Query::HistoricalTrends, start + config.trends_window_us);
                    oracle.late_dropped[4] += u64::from(late);
                    for (views, include) in [(&mut all, true), (&mut accepted, !late)] {
                        if include {
                            views.trends.entry((event.zone.0, start)).or_default().add(
                                event.event_id,
                                fare_cents,
                                distance_m,
                            );
                        }
                    }
                }
                _ => {}
            }
            if let Some((driver, is_ride)) = session_driver(event) {
                let late = match rule {
                    Some(_) => late(Query::DriverSessions, time.saturating_add(config.session_gap_us)),
                    None => definitions.session_late(time, watermark),
                };
                oracle.late_dropped[3] += u64::from(late);
                activity.push((driver, time, event.event_id, is_ride, !late, at.partition, at.offset));
            }
        })?;
        oracle.records = counts.records;
        oracle.events = counts.events;
        oracle.dead_lettered = counts.dead_lettered;
        oracle.duplicates = counts.duplicates;
        activity.sort_unstable();
        let (mut all_sessions, mut accepted_sessions) = (Vec::new(), Vec::new());
        for run in activity.chunk_by(|a, b| a.0 == b.0) {
            let driver = run[0].0;
            let everything: Vec<(i64, bool, u64)> =
                run.iter().map(|&(_, time, id, ride, ..)| (time, ride, id)).collect();
            let policy: Vec<(i64, bool, u64, Position)> = run
                .iter()
                .filter(|&&(_, _, _, _, accepted, ..)| accepted)
                .map(|&(_, time, id, ride, _, partition, offset)| (time, ride, id, Position { partition, offset }))
                .collect();
            for session in definitions.sessions(&everything) {
                all_sessions.push(((driver, session.start_us), session));
            }
            let engines = rule.and_then(|rule| rule.sessions(&policy, config.session_gap_us));
            let accepted = engines.unwrap_or_else(|| {
                let policy: Vec<(i64, bool, u64)> =
                    policy.iter().map(|&(time, ride, id, _)| (time, ride, id)).collect();
                definitions.sessions(&policy)
            });
            for session in accepted {
                accepted_sessions.push(((driver, session.start_us), session));
            }
        }
        oracle.everything = all.into_views(all_sessions);
        oracle.policy = accepted.into_views(accepted_sessions);
        Ok(oracle)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::runtime::queries::sessions_from_sorted;

    const SECOND: i64 = 1_000_000;

    fn sizes(slide_s: i64, slides: i64, delay_s: i64, lateness_s: i64, gap_s: i64) -> QueryConfig {
        QueryConfig {
            rides_window_us: 60 * SECOND,
            demand_window_us: slide_s * slides * SECOND,
            demand_slide_us: slide_s * SECOND,
            session_gap_us: gap_s * SECOND,
            trends_window_us: 300 * SECOND,
            watermark_delay_us: delay_s * SECOND,
            allowed_lateness_us: lateness_s * SECOND,
        }
    }

    proptest! {
        /// The oracle's definitions, written independently, give the engines' answers.
        #[test]
        fn the_oracles_definitions_agree_with_the_engines(
            time in -10_000 * SECOND..10_000 * SECOND,
            stream in -10_000 * SECOND..10_000 * SECOND,
            slide_s in 1i64..120,
            slides in 1i64..8,
            delay_s in 0i64..60,
            lateness_s in 0i64..60,
            gap_s in 1i64..600,
        ) {
            let config = sizes(slide_s, slides, delay_s, lateness_s, gap_s);
            let definitions = Definitions { sizes: config };
            let watermark = definitions.watermark(stream);
            prop_assert_eq!(watermark, config.watermark(stream));
            prop_assert_eq!(Definitions::tumbling(time, config.rides_window_us), QueryConfig::tumbling_start(time, config.rides_window_us));
            let mut engines: Vec<i64> = config.demand_window_starts(time).collect();
            let mut oracle = definitions.sliding(time);
            engines.sort_unstable();
            oracle.sort_unstable();
            prop_assert_eq!(oracle, engines);
            prop_assert_eq!(definitions.closed(time, watermark), config.is_closed(time, watermark));
            prop_assert_eq!(definitions.session_late(time, watermark), config.session_event_is_late(time, watermark));
        }

        #[test]
        fn the_oracles_sessions_are_the_engines(mut times in proptest::collection::vec(0i64..3_600 * SECOND, 0..60), gap_s in 1i64..600) {
            times.sort_unstable();
            let activity: Vec<(i64, bool, u64)> = times.iter().enumerate().map(|(index, &time)| (time, index % 3 == 0, index as u64 + 1)).collect();
            let definitions = Definitions { sizes: sizes(30, 4, 5, 0, gap_s) };
            prop_assert_eq!(definitions.sessions(&activity), sessions_from_sorted(&activity, gap_s * SECOND));
        }
    }
}
