//! What an external engine serves: its output topic's upserts, read by lk as they arrive, each
//! stamped with its arrival on the run's clock. The last upsert of each cell is what the engine
//! serves; the arrival of the first upsert that carried that value is when it served it.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::Deserialize;

use lk_engines::runtime::queries::{Demand, Location, RideCount, Session, Trend, ViewSet};

/// One output record (docs/engines.md, "Output").
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "query", deny_unknown_fields)]
pub enum Upsert {
    /// Q1: a driver's latest ping.
    #[serde(rename = "q1_driver_location")]
    DriverLocation {
        /// Driver.
        driver: u32,
        /// The ping's event time, µs.
        event_time_us: i64,
        /// The ping's id.
        event_id: u64,
        /// Latitude, µdeg.
        lat_e6: i32,
        /// Longitude, µdeg.
        lon_e6: i32,
        /// Zone, hex H3 index.
        zone: String,
        /// The ping's due time, ns since the run's start.
        due_ns: u64,
    },
    /// Q2: pickups per driver and tumbling window.
    #[serde(rename = "q2_rides_per_driver")]
    RidesPerDriver {
        /// Driver.
        driver: u32,
        /// Window start, µs.
        window_start_us: i64,
        /// Pickups.
        count: u64,
        /// Summed pickup latitudes, µdeg.
        lat_e6_sum: i64,
        /// Summed pickup longitudes, µdeg.
        lon_e6_sum: i64,
        /// Id checksum, as a signed 64-bit integer.
        ids: i64,
        /// The latest due time of a contributing event, ns.
        max_due_ns: u64,
    },
    /// Q3: requests per zone and sliding window.
    #[serde(rename = "q3_zone_demand")]
    ZoneDemand {
        /// Zone, hex H3 index.
        zone: String,
        /// Window start, µs.
        window_start_us: i64,
        /// Requests.
        count: u64,
        /// Id checksum.
        ids: i64,
        /// The latest due time of a contributing event, ns.
        max_due_ns: u64,
    },
    /// Q4: one session of a driver.
    #[serde(rename = "q4_driver_sessions")]
    DriverSessions {
        /// Driver.
        driver: u32,
        /// Its first event's time, µs.
        start_us: i64,
        /// Its last event's time, µs.
        last_us: i64,
        /// Pings.
        pings: u64,
        /// Pickups.
        rides: u64,
        /// Id checksum.
        ids: i64,
        /// The latest due time of a contributing event, ns.
        max_due_ns: u64,
    },
    /// Q4: a session that is no longer served, because an event merged it into another (an
    /// engine that serves sessions as they grow, as Kafka Streams does, removes the old one). It
    /// is named by its first and last events' times in whole milliseconds, as the engine keys it.
    #[serde(rename = "q4_session_removed")]
    SessionRemoved {
        /// Driver.
        driver: u32,
        /// Its first event's time, ms.
        start_ms: i64,
        /// Its last event's time, ms.
        end_ms: i64,
    },
    /// Q5: drop-offs per zone and tumbling window.
    #[serde(rename = "q5_historical_trends")]
    HistoricalTrends {
        /// Zone, hex H3 index.
        zone: String,
        /// Window start, µs.
        window_start_us: i64,
        /// Drop-offs.
        count: u64,
        /// Summed fares, cents.
        fare_cents_sum: u64,
        /// Summed distances, m.
        distance_m_sum: u64,
        /// Id checksum.
        ids: i64,
        /// The latest due time of a contributing event, ns.
        max_due_ns: u64,
    },
}

/// A served window cell: its value, since when it has been served, and the due time of the
/// last event behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell<V> {
    /// The value.
    pub value: V,
    /// Arrival of the first upsert that carried this value, clock ns.
    pub since_ns: u64,
    /// The latest due time of a contributing event, ns since the run's start.
    pub max_due_ns: u64,
}

/// Everything an engine has served so far.
#[derive(Debug, Default)]
pub struct Served {
    /// Q1, with every upsert of each driver in arrival order: (arrival ns, event time, id).
    pub location: BTreeMap<u32, Location>,
    /// See `location`.
    pub location_history: FxHashMap<u32, Vec<(u64, i64, u64)>>,
    /// Q2.
    pub rides: BTreeMap<(u32, i64), Cell<RideCount>>,
    /// Q3.
    pub demand: BTreeMap<(u64, i64), Cell<Demand>>,
    /// Q4.
    pub sessions: BTreeMap<(u32, i64), Cell<Session>>,
    /// Q5.
    pub trends: BTreeMap<(u64, i64), Cell<Trend>>,
    /// Upserts read.
    pub upserts: u64,
    /// Upserts read per query (Q1 to Q5).
    pub upserts_per_query: [u64; 5],
    /// Records lk could not read as upserts, and the first of them.
    pub unreadable: u64,
    /// See `unreadable`.
    pub first_unreadable: Option<String>,
}

fn zone_of(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text, 16).map_err(|_| format!("zone {text:?} is not a hexadecimal H3 index"))
}

fn set<K: Ord, V: PartialEq + Copy>(map: &mut BTreeMap<K, Cell<V>>, key: K, value: V, max_due_ns: u64, now_ns: u64) {
    match map.get_mut(&key) {
        Some(cell) if cell.value == value => cell.max_due_ns = cell.max_due_ns.max(max_due_ns),
        Some(cell) => *cell = Cell { value, since_ns: now_ns, max_due_ns },
        None => {
            map.insert(key, Cell { value, since_ns: now_ns, max_due_ns });
        }
    }
}

impl Served {
    /// Applies one output record that arrived at `now_ns`.
    pub fn apply(&mut self, record: &[u8], now_ns: u64) {
        self.upserts += 1;
        if let Err(problem) = self.try_apply(record, now_ns) {
            self.unreadable += 1;
            if self.first_unreadable.is_none() {
                let text = String::from_utf8_lossy(&record[..record.len().min(300)]).into_owned();
                self.first_unreadable = Some(format!("{problem}: {text}"));
            }
        }
    }

    fn try_apply(&mut self, record: &[u8], now_ns: u64) -> Result<(), String> {
        let upsert: Upsert = serde_json::from_slice(record).map_err(|error| error.to_string())?;
        let query = match &upsert {
            Upsert::DriverLocation { .. } => 0,
            Upsert::RidesPerDriver { .. } => 1,
            Upsert::ZoneDemand { .. } => 2,
            Upsert::DriverSessions { .. } | Upsert::SessionRemoved { .. } => 3,
            Upsert::HistoricalTrends { .. } => 4,
        };
        self.upserts_per_query[query] += 1;
        match upsert {
            Upsert::DriverLocation { driver, event_time_us, event_id, lat_e6, lon_e6, zone, .. } => {
                let location = Location { event_time_us, event_id, lat_e6, lon_e6, zone: zone_of(&zone)? };
                self.location.insert(driver, location);
                self.location_history.entry(driver).or_default().push((now_ns, event_time_us, event_id));
            }
            Upsert::RidesPerDriver { driver, window_start_us, count, lat_e6_sum, lon_e6_sum, ids, max_due_ns } => {
                let value = RideCount {
                    rides: count,
                    pickup_lat_e6_sum: lat_e6_sum,
                    pickup_lon_e6_sum: lon_e6_sum,
                    ids: ids as u64,
                };
                set(&mut self.rides, (driver, window_start_us), value, max_due_ns, now_ns);
            }
            Upsert::ZoneDemand { zone, window_start_us, count, ids, max_due_ns } => {
                let value = Demand { requests: count, ids: ids as u64 };
                set(&mut self.demand, (zone_of(&zone)?, window_start_us), value, max_due_ns, now_ns);
            }
            Upsert::DriverSessions { driver, start_us, last_us, pings, rides, ids, max_due_ns } => {
                let value = Session { start_us, last_us, pings, rides, ids: ids as u64 };
                set(&mut self.sessions, (driver, start_us), value, max_due_ns, now_ns);
            }
            Upsert::SessionRemoved { driver, start_ms, end_ms } => {
                // Only the session it names: a removal that arrives after the session that
                // replaced it under the same start (a later event extended it) leaves that one.
                let first = (driver, start_ms.saturating_mul(1000));
                let last = (driver, start_ms.saturating_mul(1000).saturating_add(999));
                let named: Vec<(u32, i64)> = self
                    .sessions
                    .range(first..=last)
                    .filter(|(_, cell)| cell.value.last_us.div_euclid(1000) == end_ms)
                    .map(|(key, _)| *key)
                    .collect();
                for key in named {
                    self.sessions.remove(&key);
                }
            }
            Upsert::HistoricalTrends {
                zone,
                window_start_us,
                count,
                fare_cents_sum,
                distance_m_sum,
                ids,
                max_due_ns,
            } => {
                let value = Trend { rides: count, fare_cents_sum, distance_m_sum, ids: ids as u64 };
                set(&mut self.trends, (zone_of(&zone)?, window_start_us), value, max_due_ns, now_ns);
            }
        }
        Ok(())
    }

    /// The served views.
    pub fn views(&self) -> ViewSet {
        ViewSet {
            driver_location: self.location.clone(),
            rides_per_driver: self.rides.iter().map(|(key, cell)| (*key, cell.value)).collect(),
            zone_demand: self.demand.iter().map(|(key, cell)| (*key, cell.value)).collect(),
            driver_sessions: self.sessions.iter().map(|(key, cell)| (*key, cell.value)).collect(),
            historical_trends: self.trends.iter().map(|(key, cell)| (*key, cell.value)).collect(),
        }
    }

    /// Q3's served requests summed per window start.
    pub fn demand_by_window(&self) -> BTreeMap<i64, u64> {
        let mut by_window = BTreeMap::new();
        for ((_, start), cell) in &self.demand {
            *by_window.entry(*start).or_default() += cell.value.requests;
        }
        by_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_upsert_wins_and_its_value_is_served_since_it_first_arrived() {
        let mut served = Served::default();
        let demand = |count: u64, due: u64| {
            format!(
                r#"{{"query":"q3_zone_demand","zone":"8a2a1072b59ffff","window_start_us":60000000,"count":{count},"ids":-5,"max_due_ns":{due}}}"#
            )
        };
        served.apply(demand(1, 10).as_bytes(), 100);
        served.apply(demand(2, 20).as_bytes(), 200);
        // A replayed micro-batch writes the same value again: it was served since its first arrival.
        served.apply(demand(2, 20).as_bytes(), 300);
        let cell = served.demand[&(0x8a2a1072b59ffff, 60_000_000)];
        assert_eq!((cell.value.requests, cell.value.ids, cell.since_ns, cell.max_due_ns), (2, (-5i64) as u64, 200, 20));
        assert_eq!(served.demand_by_window(), BTreeMap::from([(60_000_000, 2)]));
        served.apply(
            br#"{"query":"q1_driver_location","driver":7,"event_time_us":5,"event_id":9,"lat_e6":1,"lon_e6":-2,"zone":"8a2a1072b59ffff","due_ns":3}"#,
            400,
        );
        assert_eq!(served.location[&7].event_id, 9);
        assert_eq!(served.location_history[&7], vec![(400, 5, 9)]);
        // A session merged into another is removed, and only when it is still the one named.
        let session = |start: i64, last: i64| {
            format!(
                r#"{{"query":"q4_driver_sessions","driver":3,"start_us":{start},"last_us":{last},"pings":1,"rides":0,"ids":1,"max_due_ns":1}}"#
            )
        };
        served.apply(session(5_000_500, 6_000_700).as_bytes(), 410);
        served.apply(session(5_000_500, 9_000_000).as_bytes(), 420);
        served.apply(br#"{"query":"q4_session_removed","driver":3,"start_ms":5000,"end_ms":6000}"#, 430);
        assert_eq!(served.sessions[&(3, 5_000_500)].value.last_us, 9_000_000);
        served.apply(br#"{"query":"q4_session_removed","driver":3,"start_ms":5000,"end_ms":9000}"#, 440);
        assert!(served.sessions.is_empty());
        served.apply(br#"{"query":"q9","driver":7}"#, 500);
        served.apply(
            br#"{"query":"q3_zone_demand","zone":"not hex","window_start_us":0,"count":1,"ids":0,"max_due_ns":0}"#,
            500,
        );
        assert_eq!(served.unreadable, 2);
        assert!(served.first_unreadable.as_deref().unwrap().contains("q9"), "{:?}", served.first_unreadable);
        assert_eq!(served.views().zone_demand.len(), 1);
    }

    /// One upsert of each kind, with values at their types' edges.
    const UPSERTS: [&str; 6] = [
        r#"{"query":"q1_driver_location","driver":4294967295,"event_time_us":-9223372036854775808,"event_id":18446744073709551615,"lat_e6":-2147483648,"lon_e6":2147483647,"zone":"ffffffffffffffff","due_ns":0}"#,
        r#"{"query":"q2_rides_per_driver","driver":1,"window_start_us":9223372036854775807,"count":0,"lat_e6_sum":1,"lon_e6_sum":-1,"ids":-9223372036854775808,"max_due_ns":18446744073709551615}"#,
        r#"{"query":"q3_zone_demand","zone":"0","window_start_us":0,"count":1,"ids":1,"max_due_ns":1}"#,
        r#"{"query":"q4_driver_sessions","driver":2,"start_us":-1,"last_us":9223372036854775807,"pings":1,"rides":0,"ids":0,"max_due_ns":0}"#,
        r#"{"query":"q4_session_removed","driver":2,"start_ms":9223372036854775807,"end_ms":-9223372036854775808}"#,
        r#"{"query":"q5_historical_trends","zone":"8a2a1072b59ffff","window_start_us":1,"count":1,"fare_cents_sum":1,"distance_m_sum":1,"ids":1,"max_due_ns":1}"#,
    ];

    proptest::proptest! {
        /// Whatever an engine writes to its output topic, lk applies it or counts it unreadable;
        /// nothing panics (the output is bytes lk did not write).
        #[test]
        fn any_bytes_are_applied_or_counted_unreadable(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut served = Served::default();
            served.apply(&bytes, 1);
            proptest::prop_assert_eq!(served.upserts, 1);
        }

        /// Upserts at their types' edges, cut short or with one byte changed.
        #[test]
        fn cut_or_changed_upserts_never_panic(which in 0..UPSERTS.len(), cut in 0usize..400, at in 0usize..400, byte in proptest::prelude::any::<u8>()) {
            let mut served = Served::default();
            for upsert in UPSERTS {
                served.apply(upsert.as_bytes(), 0);
            }
            proptest::prop_assert_eq!(served.unreadable, 0, "{:?}", served.first_unreadable);
            let mut record = UPSERTS[which].as_bytes().to_vec();
            record.truncate(cut.max(1).min(record.len()));
            let at = at % record.len();
            record[at] = byte;
            served.apply(&record, 2);
            proptest::prop_assert_eq!(served.upserts, 7);
        }
    }
}
