//! The exactly-once checker's second half: which events were lost or counted twice.
//!
//! [`ViewSet::compare_with`] finds the cells that differ, and every cell carries a count and an
//! order-independent checksum of its events' ids ([`id_mark`]), so a lost event and a
//! duplicated one in the same window cannot cancel out. This module names the events: for a
//! few differing cells per view, it reads the log again to list the ids each cell should hold,
//! then finds the ids that explain the difference: one or two lost or duplicated events, or the
//! whole cell counted more than once (a window emitted twice into a counter sink). A difference
//! that no such small explanation fits is left as a cell-level example.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use lk_simulator::event::Payload;

use crate::log::{Log, LogError};
use crate::runtime::queries::{Contributions, EventExample, Query, QueryConfig, ViewSet, id_mark, session_activity};
use crate::verify::oracle::Truth;

/// A differing cell the checker looks into: its query, its key (as text) and how its count and
/// checksum differ.
struct Suspect {
    query: Query,
    cell: String,
    /// Served minus expected contributions.
    count_delta: i64,
    /// Served minus expected checksum (wrapping).
    id_delta: u64,
    /// Whether the served view lacks the cell.
    missing: bool,
    /// The ids the cell should hold, filled from the log.
    ids: Vec<u64>,
}

/// Cells a scan looks for, by query.
#[derive(Default)]
struct Wanted {
    rides: FxHashMap<(u32, i64), usize>,
    demand: FxHashMap<(u64, i64), usize>,
    trends: FxHashMap<(u64, i64), usize>,
    /// driver → (first, last, suspect) of the sessions wanted.
    sessions: FxHashMap<u32, Vec<(i64, i64, usize)>>,
}

fn suspects_of<K: Ord + Copy + std::fmt::Debug, V: Contributions + PartialEq>(
    query: Query,
    expected: &BTreeMap<K, V>,
    served: &BTreeMap<K, V>,
    limit: usize,
    suspects: &mut Vec<Suspect>,
) -> Vec<(K, usize)> {
    let mut found = Vec::new();
    for (key, value) in expected {
        if found.len() >= limit {
            break;
        }
        let got = served.get(key);
        if got == Some(value) {
            continue;
        }
        let (count, ids) = got.map_or((0, 0), |got| (got.contributions(), got.id_sum()));
        let count_delta = count as i64 - value.contributions() as i64;
        let id_delta = ids.wrapping_sub(value.id_sum());
        if got.is_some() && count_delta == 0 && id_delta == 0 {
            continue; // another field differs; no event is missing or extra
        }
        found.push((*key, suspects.len()));
        suspects.push(Suspect {
            query,
            cell: format!("{key:?}"),
            count_delta,
            id_delta,
            missing: got.is_none(),
            ids: Vec::new(),
        });
    }
    found
}

/// Names up to `limit` lost or duplicated events per query of `served` against `truth`, which
/// the oracle computed from `topic` counting what `counted` says.
pub fn explain(
    log: &dyn Log,
    topic: &str,
    config: &QueryConfig,
    counted: Truth<'_>,
    served: &ViewSet,
    truth: &ViewSet,
    limit: usize,
) -> Result<BTreeMap<Query, Vec<EventExample>>, LogError> {
    let mut examples: BTreeMap<Query, Vec<EventExample>> = BTreeMap::new();
    // Q1: a driver whose served location is not the newest ping lost that ping.
    for (driver, location) in &truth.driver_location {
        if examples.get(&Query::DriverLocation).map_or(0, Vec::len) >= limit {
            break;
        }
        if served.driver_location.get(driver) != Some(location) {
            examples.entry(Query::DriverLocation).or_default().push(EventExample {
                event_id: location.event_id,
                problem: "lost".to_owned(),
                cell: format!("{driver:?}"),
                counted: 0,
            });
        }
    }
    let mut suspects = Vec::new();
    let mut wanted = Wanted::default();
    for (key, index) in
        suspects_of(Query::RidesPerDriver, &truth.rides_per_driver, &served.rides_per_driver, limit, &mut suspects)
    {
        wanted.rides.insert(key, index);
    }
    for (key, index) in suspects_of(Query::ZoneDemand, &truth.zone_demand, &served.zone_demand, limit, &mut suspects) {
        wanted.demand.insert(key, index);
    }
    for (key, index) in
        suspects_of(Query::DriverSessions, &truth.driver_sessions, &served.driver_sessions, limit, &mut suspects)
    {
        let session = truth.driver_sessions[&key];
        wanted.sessions.entry(key.0).or_default().push((session.start_us, session.last_us, index));
    }
    for (key, index) in
        suspects_of(Query::HistoricalTrends, &truth.historical_trends, &served.historical_trends, limit, &mut suspects)
    {
        wanted.trends.insert(key, index);
    }
    if !suspects.is_empty() {
        collect_ids(log, topic, config, counted, &wanted, &mut suspects)?;
    }
    for suspect in &suspects {
        let list = examples.entry(suspect.query).or_default();
        for (event_id, problem, counted) in solve(suspect) {
            if list.len() < limit {
                list.push(EventExample { event_id, problem: problem.to_owned(), cell: suspect.cell.clone(), counted });
            }
        }
    }
    examples.retain(|_, list| !list.is_empty());
    Ok(examples)
}

/// Reads the log as the oracle does (first valid copy of each id; lateness per partition in log
/// order) and lists the ids each wanted cell should hold.
fn collect_ids(
    log: &dyn Log,
    topic: &str,
    config: &QueryConfig,
    counted: Truth<'_>,
    wanted: &Wanted,
    suspects: &mut [Suspect],
) -> Result<(), LogError> {
    crate::verify::oracle::scan_first_copies(log, topic, |event, stream_time_us, at| {
        let watermark = config.watermark(stream_time_us);
        let admits = |query: Query, end_us: i64| match counted {
            Truth::Everything => true,
            Truth::Policy => !config.is_closed(end_us, watermark),
            Truth::Rule(rule) => rule.accepts(query, at, stream_time_us, end_us),
        };
        let accepted = |end_us: i64| admits(Query::ZoneDemand, end_us);
        let time = event.event_time_us;
        let id = event.event_id;
        match event.payload {
            Payload::PickedUp { driver_id, .. } => {
                let start = QueryConfig::tumbling_start(time, config.rides_window_us);
                if let Some(&index) = wanted.rides.get(&(driver_id, start))
                    && admits(Query::RidesPerDriver, start + config.rides_window_us)
                {
                    suspects[index].ids.push(id);
                }
            }
            Payload::RideRequested { .. } => {
                for start in config.demand_window_starts(time) {
                    if let Some(&index) = wanted.demand.get(&(event.zone.0, start))
                        && accepted(start + config.demand_window_us)
                    {
                        suspects[index].ids.push(id);
                    }
                }
            }
            Payload::DroppedOff { .. } => {
                let start = QueryConfig::tumbling_start(time, config.trends_window_us);
                if let Some(&index) = wanted.trends.get(&(event.zone.0, start))
                    && admits(Query::HistoricalTrends, start + config.trends_window_us)
                {
                    suspects[index].ids.push(id);
                }
            }
            _ => {}
        }
        if let Some((driver, _)) = session_activity(event)
            && let Some(sessions) = wanted.sessions.get(&driver)
            && match counted {
                Truth::Everything => true,
                Truth::Policy => !config.session_event_is_late(time, watermark),
                Truth::Rule(rule) => {
                    rule.accepts(Query::DriverSessions, at, stream_time_us, time.saturating_add(config.session_gap_us))
                }
            }
        {
            for &(first, last, index) in sessions {
                if (first..=last).contains(&time) {
                    suspects[index].ids.push(id);
                }
            }
        }
    })?;
    Ok(())
}

/// The events that explain a suspect cell's difference: (id, problem, times counted).
fn solve(suspect: &Suspect) -> Vec<(u64, &'static str, u64)> {
    let ids = &suspect.ids;
    if suspect.missing {
        return ids.iter().map(|&id| (id, "lost", 0)).collect();
    }
    let (delta, target) = (suspect.count_delta, suspect.id_delta);
    let all: u64 = ids.iter().fold(0, |sum, &id| sum.wrapping_add(id_mark(id)));
    // The whole cell counted k more times (a window emitted again into a counter sink).
    if delta > 0 && !ids.is_empty() && delta % ids.len() as i64 == 0 {
        let extra = (delta / ids.len() as i64) as u64;
        if all.wrapping_mul(extra) == target {
            return ids.iter().map(|&id| (id, "duplicated", extra + 1)).collect();
        }
    }
    let by_mark: FxHashMap<u64, u64> = ids.iter().map(|&id| (id_mark(id), id)).collect();
    match delta {
        1 => by_mark.get(&target).map(|&id| vec![(id, "duplicated", 2)]).unwrap_or_default(),
        -1 => by_mark.get(&target.wrapping_neg()).map(|&id| vec![(id, "lost", 0)]).unwrap_or_default(),
        0 => ids
            .iter()
            .find_map(|&lost| {
                by_mark
                    .get(&target.wrapping_add(id_mark(lost)))
                    .filter(|&&extra| extra != lost)
                    .map(|&extra| vec![(lost, "lost", 0), (extra, "duplicated", 2)])
            })
            .unwrap_or_default(),
        2 | -2 => {
            let sum = if delta == 2 { target } else { target.wrapping_neg() };
            let (problem, counted) = if delta == 2 { ("duplicated", 2) } else { ("lost", 0) };
            ids.iter()
                .find_map(|&first| {
                    by_mark.get(&sum.wrapping_sub(id_mark(first))).map(|&second| {
                        if second == first {
                            vec![(first, problem, if delta == 2 { 3 } else { 0 })]
                        } else {
                            vec![(first, problem, counted), (second, problem, counted)]
                        }
                    })
                })
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suspect(ids: &[u64], served: &[u64]) -> Suspect {
        let sum = |list: &[u64]| list.iter().fold(0u64, |sum, &id| sum.wrapping_add(id_mark(id)));
        Suspect {
            query: Query::ZoneDemand,
            cell: "(1, 0)".to_owned(),
            count_delta: served.len() as i64 - ids.len() as i64,
            id_delta: sum(served).wrapping_sub(sum(ids)),
            missing: false,
            ids: ids.to_vec(),
        }
    }

    #[test]
    fn a_lost_and_a_duplicated_event_in_one_cell_are_both_named() {
        let found = solve(&suspect(&[10, 11, 12, 13], &[10, 11, 11, 13]));
        assert_eq!(found, vec![(12, "lost", 0), (11, "duplicated", 2)]);
    }

    #[test]
    fn single_and_double_differences_are_named() {
        assert_eq!(solve(&suspect(&[1, 2, 3], &[1, 2, 3, 2])), vec![(2, "duplicated", 2)]);
        assert_eq!(solve(&suspect(&[1, 2, 3], &[1, 3])), vec![(2, "lost", 0)]);
        assert_eq!(solve(&suspect(&[1, 2, 3], &[3])), vec![(1, "lost", 0), (2, "lost", 0)]);
        assert_eq!(solve(&suspect(&[1, 2, 3], &[1, 2, 3, 3, 3])), vec![(3, "duplicated", 3)]);
    }

    #[test]
    fn a_window_counted_twice_names_all_its_events() {
        let found = solve(&suspect(&[4, 5], &[4, 5, 4, 5]));
        assert_eq!(found, vec![(4, "duplicated", 2), (5, "duplicated", 2)]);
    }

    #[test]
    fn differences_too_large_to_explain_name_nothing() {
        assert!(solve(&suspect(&[1, 2, 3, 4, 5, 6], &[1])).is_empty());
    }
}
