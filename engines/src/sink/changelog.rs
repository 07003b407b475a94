//! View changes as log records: what Kappa's transactional sink writes to its output topic, and
//! what the serving store is materialised from.
//!
//! Each change is one record: its key is a 64-bit hash of the view and the view's key (so a
//! compacted topic keeps the latest change of each row: a session's delete and upsert share a
//! key), its value a fixed little-endian layout starting with a tag. Records decode in the
//! order they were written, and [`ViewVersion::apply`](crate::sink::serving::ViewVersion::apply)
//! applies a decoded batch exactly as the engine's changes would have been applied directly.

use crate::log::RecordBatch;
use crate::runtime::queries::{Demand, Location, RideCount, Session, Trend};
use crate::sink::serving::ViewChanges;

const LOCATION: u8 = 1;
const RIDES: u8 = 2;
const DEMAND: u8 = 3;
const SESSION: u8 = 4;
const SESSION_DELETED: u8 = 5;
const TRENDS: u8 = 6;
/// A speed-layer segment's change: the epoch, then a record of the kinds above.
const SEGMENT: u8 = 7;

/// A record that is not a view change lk wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("view-change record {index} of the batch: {problem}")]
pub struct ChangelogError {
    /// Its index in the batch.
    pub index: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// Writes fixed-width little-endian fields.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }
    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn i32(&mut self, value: i32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn i64(&mut self, value: i64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
}

/// Reads what [`Writer`] wrote.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_at_checked(N)?;
        self.bytes = rest;
        head.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
}

/// The record key of a row: the view's tag and the row's key, hashed.
fn key(tag: u8, row: &[u8]) -> u64 {
    let mut bytes = [0u8; 17];
    bytes[0] = tag;
    bytes[1..1 + row.len()].copy_from_slice(row);
    xxhash_rust::xxh3::xxh3_64(&bytes[..1 + row.len()])
}

fn driver_window(driver: u32, window: i64) -> [u8; 12] {
    let mut row = [0u8; 12];
    row[..4].copy_from_slice(&driver.to_le_bytes());
    row[4..].copy_from_slice(&window.to_le_bytes());
    row
}

fn zone_window(zone: u64, window: i64) -> [u8; 16] {
    let mut row = [0u8; 16];
    row[..8].copy_from_slice(&zone.to_le_bytes());
    row[8..].copy_from_slice(&window.to_le_bytes());
    row
}

/// Appends `changes` to `out` as records, in the order `apply` applies them.
pub fn encode(changes: &ViewChanges, out: &mut RecordBatch) {
    let mut value = Vec::with_capacity(64);
    let push = |out: &mut RecordBatch, key: u64, value: &mut Vec<u8>| {
        out.push(key, value);
        value.clear();
    };
    for (driver, location) in &changes.locations {
        Writer(&mut value)
            .u8(LOCATION)
            .u32(*driver)
            .i64(location.event_time_us)
            .u64(location.event_id)
            .i32(location.lat_e6)
            .i32(location.lon_e6)
            .u64(location.zone);
        push(out, key(LOCATION, &driver.to_le_bytes()), &mut value);
    }
    for ((driver, window), rides) in &changes.rides {
        Writer(&mut value)
            .u8(RIDES)
            .u32(*driver)
            .i64(*window)
            .u64(rides.rides)
            .i64(rides.pickup_lat_e6_sum)
            .i64(rides.pickup_lon_e6_sum)
            .u64(rides.ids);
        push(out, key(RIDES, &driver_window(*driver, *window)), &mut value);
    }
    for ((zone, window), demand) in &changes.demand {
        Writer(&mut value).u8(DEMAND).u64(*zone).i64(*window).u64(demand.requests).u64(demand.ids);
        push(out, key(DEMAND, &zone_window(*zone, *window)), &mut value);
    }
    for (driver, start) in &changes.sessions_deleted {
        Writer(&mut value).u8(SESSION_DELETED).u32(*driver).i64(*start);
        push(out, key(SESSION, &driver_window(*driver, *start)), &mut value);
    }
    for ((driver, start), session) in &changes.sessions {
        Writer(&mut value)
            .u8(SESSION)
            .u32(*driver)
            .i64(*start)
            .i64(session.start_us)
            .i64(session.last_us)
            .u64(session.pings)
            .u64(session.rides)
            .u64(session.ids);
        push(out, key(SESSION, &driver_window(*driver, *start)), &mut value);
    }
    for ((zone, hour), trend) in &changes.trends {
        Writer(&mut value)
            .u8(TRENDS)
            .u64(*zone)
            .i64(*hour)
            .u64(trend.rides)
            .u64(trend.fare_cents_sum)
            .u64(trend.distance_m_sum)
            .u64(trend.ids);
        push(out, key(TRENDS, &zone_window(*zone, *hour)), &mut value);
    }
}

/// Decodes `records` into `changes` (appending), in order. A batch written by [`encode`] holds
/// deletes of sessions before their upserts; a batch read from the log may hold several
/// encoded batches back to back, so each delete or upsert of a session is applied in order by
/// flushing `changes` through `apply` whenever a session's delete follows an upsert.
pub fn decode(
    records: &RecordBatch,
    mut apply: impl FnMut(&ViewChanges),
    changes: &mut ViewChanges,
) -> Result<(), ChangelogError> {
    for (index, (_, value)) in records.iter().enumerate() {
        decode_value(index, value, &mut apply, changes)?;
    }
    apply(changes);
    changes.clear();
    Ok(())
}

/// Appends `changes` to `out` as records of the speed layer's segment `epoch` (Lambda's
/// transactional sink): each is [`encode`]'s record with a `SEGMENT` tag and the epoch in front,
/// and its key mixed with the epoch, so that a compacted topic keeps each segment's rows apart.
pub fn encode_segment(epoch: u32, changes: &ViewChanges, out: &mut RecordBatch) {
    let mut plain = RecordBatch::new();
    encode(changes, &mut plain);
    let mut value = Vec::with_capacity(72);
    for (key, record) in plain.iter() {
        value.clear();
        Writer(&mut value).u8(SEGMENT).u32(epoch);
        value.extend_from_slice(record);
        let mut keyed = [0u8; 12];
        keyed[..8].copy_from_slice(&key.to_le_bytes());
        keyed[8..].copy_from_slice(&epoch.to_le_bytes());
        out.push(xxhash_rust::xxh3::xxh3_64(&keyed), &value);
    }
}

/// Decodes records written by [`encode_segment`], in order, handing each run of one segment's
/// changes to `apply` with its epoch.
pub fn decode_segments(
    records: &RecordBatch,
    mut apply: impl FnMut(u32, &ViewChanges),
    changes: &mut ViewChanges,
) -> Result<(), ChangelogError> {
    let mut current = None;
    for (index, (_, value)) in records.iter().enumerate() {
        let fail = |problem: &str| ChangelogError { index, problem: problem.to_owned() };
        let mut reader = Reader { bytes: value };
        if reader.take::<1>() != Some([SEGMENT]) {
            return Err(fail("not a segment's change (no segment tag)"));
        }
        let epoch = reader.u32().ok_or_else(|| fail("shorter than a segment's header"))?;
        if current.is_some_and(|current| current != epoch) {
            apply(current.expect("checked"), changes);
            changes.clear();
        }
        current = Some(epoch);
        decode_value(index, reader.bytes, &mut |changes| apply(epoch, changes), changes)?;
    }
    if let Some(epoch) = current {
        apply(epoch, changes);
        changes.clear();
    }
    Ok(())
}

/// Decodes one record's value into `changes`, flushing them through `apply` first when a
/// session's delete follows an upsert.
fn decode_value(
    index: usize,
    value: &[u8],
    apply: &mut impl FnMut(&ViewChanges),
    changes: &mut ViewChanges,
) -> Result<(), ChangelogError> {
    let fail = |problem: &str| ChangelogError { index, problem: problem.to_owned() };
    let (&tag, rest) = value.split_first().ok_or_else(|| fail("empty"))?;
    let mut reader = Reader { bytes: rest };
    let short = || fail("shorter than its kind's layout");
    match tag {
        LOCATION => {
            let driver = reader.u32().ok_or_else(short)?;
            let location = Location {
                event_time_us: reader.i64().ok_or_else(short)?,
                event_id: reader.u64().ok_or_else(short)?,
                lat_e6: reader.i32().ok_or_else(short)?,
                lon_e6: reader.i32().ok_or_else(short)?,
                zone: reader.u64().ok_or_else(short)?,
            };
            changes.locations.push((driver, location));
        }
        RIDES => {
            let row = (reader.u32().ok_or_else(short)?, reader.i64().ok_or_else(short)?);
            let rides = RideCount {
                rides: reader.u64().ok_or_else(short)?,
                pickup_lat_e6_sum: reader.i64().ok_or_else(short)?,
                pickup_lon_e6_sum: reader.i64().ok_or_else(short)?,
                ids: reader.u64().ok_or_else(short)?,
            };
            changes.rides.push((row, rides));
        }
        DEMAND => {
            let row = (reader.u64().ok_or_else(short)?, reader.i64().ok_or_else(short)?);
            let demand = Demand { requests: reader.u64().ok_or_else(short)?, ids: reader.u64().ok_or_else(short)? };
            changes.demand.push((row, demand));
        }
        SESSION_DELETED => {
            let row = (reader.u32().ok_or_else(short)?, reader.i64().ok_or_else(short)?);
            // `apply` deletes before it upserts: an upsert already gathered must go first.
            if !changes.sessions.is_empty() {
                apply(changes);
                changes.clear();
            }
            changes.sessions_deleted.push(row);
        }
        SESSION => {
            let row = (reader.u32().ok_or_else(short)?, reader.i64().ok_or_else(short)?);
            let session = Session {
                start_us: reader.i64().ok_or_else(short)?,
                last_us: reader.i64().ok_or_else(short)?,
                pings: reader.u64().ok_or_else(short)?,
                rides: reader.u64().ok_or_else(short)?,
                ids: reader.u64().ok_or_else(short)?,
            };
            changes.sessions.push((row, session));
        }
        TRENDS => {
            let row = (reader.u64().ok_or_else(short)?, reader.i64().ok_or_else(short)?);
            let trend = Trend {
                rides: reader.u64().ok_or_else(short)?,
                fare_cents_sum: reader.u64().ok_or_else(short)?,
                distance_m_sum: reader.u64().ok_or_else(short)?,
                ids: reader.u64().ok_or_else(short)?,
            };
            changes.trends.push((row, trend));
        }
        other => return Err(fail(&format!("unknown kind {other}"))),
    }
    if !reader.bytes.is_empty() {
        return Err(fail("longer than its kind's layout"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::serving::ViewVersion;

    fn session(start_us: i64, pings: u64) -> Session {
        Session { start_us, last_us: start_us + 5, pings, rides: 1, ids: pings * 7 }
    }

    /// Two batches of changes as an engine emits them, the second deleting a session the
    /// first upserted and upserting one the first deleted.
    fn batches() -> [ViewChanges; 2] {
        let mut first = ViewChanges::default();
        // Driver ids of partition 1 of 2 are odd.
        first.locations.push((3, Location { event_time_us: 10, event_id: 4, lat_e6: -5, lon_e6: 7, zone: 99 }));
        first.rides.push(((3, 60), RideCount { rides: 2, pickup_lat_e6_sum: -9, pickup_lon_e6_sum: 11, ids: 5 }));
        first.demand.push(((99, 60), Demand { requests: 4, ids: 6 }));
        first.sessions_deleted.push((5, 100));
        first.sessions.push(((3, 0), session(0, 2)));
        first.trends.push(((99, 3600), Trend { rides: 1, fare_cents_sum: 900, distance_m_sum: 3000, ids: 8 }));
        let mut second = ViewChanges::default();
        second.locations.push((3, Location { event_time_us: 20, event_id: 9, lat_e6: 1, lon_e6: 2, zone: 98 }));
        second.rides.push(((3, 60), RideCount { rides: 3, pickup_lat_e6_sum: -8, pickup_lon_e6_sum: 12, ids: 6 }));
        second.sessions_deleted.push((3, 0));
        second.sessions.push(((5, 100), session(100, 9)));
        [first, second]
    }

    #[test]
    fn decoded_changes_apply_exactly_as_the_engines_changes() {
        let direct = ViewVersion::new(1, 2);
        let through_log = ViewVersion::new(1, 2);
        let mut records = RecordBatch::new();
        for changes in &batches() {
            direct.apply(1, changes);
            encode(changes, &mut records);
        }
        // Both batches read back in one go, as a reader of the topic gets them.
        let mut scratch = ViewChanges::default();
        decode(&records, |changes| through_log.apply(1, changes), &mut scratch).unwrap();
        let (expected, got) = (direct.snapshot(), through_log.snapshot());
        assert_eq!(got, expected);
        assert_eq!(expected.driver_sessions.len(), 1, "the second batch deleted one session and added another");
        assert_eq!(expected.driver_location[&3].event_id, 9, "the later location wins");
    }

    #[test]
    fn a_rows_changes_share_a_key_and_different_rows_do_not() {
        let mut records = RecordBatch::new();
        for changes in &batches() {
            encode(changes, &mut records);
        }
        let keys: Vec<u64> = records.keys().to_vec();
        // The first batch's session upsert (3, 0) and the second's delete of it: one row.
        let first_upsert = 4;
        let second_delete = 6 + 2;
        assert_eq!(keys[first_upsert], keys[second_delete]);
        assert_eq!(keys[0], keys[6], "driver 3's two locations");
        assert_ne!(keys[0], keys[1], "a location and a ride count are different rows");
    }

    #[test]
    fn segment_changes_keep_their_epochs_and_their_rows_apart() {
        let [first, second] = batches();
        let mut records = RecordBatch::new();
        encode_segment(4, &first, &mut records);
        encode_segment(5, &second, &mut records);
        let (four, five) = (ViewVersion::new(4, 2), ViewVersion::new(5, 2));
        let mut scratch = ViewChanges::default();
        decode_segments(
            &records,
            |epoch, changes| match epoch {
                4 => four.apply(1, changes),
                5 => five.apply(1, changes),
                other => panic!("epoch {other} was never written"),
            },
            &mut scratch,
        )
        .unwrap();
        let (direct_four, direct_five) = (ViewVersion::new(4, 2), ViewVersion::new(5, 2));
        direct_four.apply(1, &first);
        direct_five.apply(1, &second);
        assert_eq!(four.snapshot(), direct_four.snapshot());
        assert_eq!(five.snapshot(), direct_five.snapshot());
        // Driver 3's location in epoch 4 and in epoch 5 are different rows of the topic.
        assert_ne!(records.keys()[0], records.keys()[6]);
        // Plain records are not segment records.
        let mut plain = RecordBatch::new();
        encode(&first, &mut plain);
        let error = decode_segments(&plain, |_, _| {}, &mut ViewChanges::default()).unwrap_err();
        assert!(error.problem.contains("segment tag"), "{error}");
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_it() {
        let mut records = RecordBatch::new();
        encode(&batches()[0], &mut records);
        let mut damaged = RecordBatch::new();
        for (index, (key, value)) in records.iter().enumerate() {
            damaged.push(key, if index == 2 { &value[..value.len() - 1] } else { value });
        }
        let error = decode(&damaged, |_| {}, &mut ViewChanges::default()).unwrap_err();
        assert_eq!(error.index, 2);
        let mut unknown = RecordBatch::new();
        unknown.push(1, &[42, 0, 0]);
        assert!(decode(&unknown, |_| {}, &mut ViewChanges::default()).unwrap_err().problem.contains("unknown kind"));
    }

    proptest::proptest! {
        /// Bytes the output topic holds were written by another process (or another version):
        /// whatever they are, decoding them gives changes or an error naming the record, never
        /// a panic. Valid records with bytes flipped, cut or added, and plain garbage.
        #[test]
        fn any_bytes_decode_to_changes_or_an_error(
            flips in proptest::collection::vec((0usize..10_000, 1u8..=255), 0..4),
            cut in 0usize..200,
            garbage in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0..6),
            segment in proptest::prelude::any::<bool>(),
        ) {
            let mut valid = RecordBatch::new();
            for (epoch, changes) in batches().iter().enumerate() {
                if segment { encode_segment(epoch as u32, changes, &mut valid) } else { encode(changes, &mut valid) }
            }
            let mut records = RecordBatch::new();
            let count = valid.len();
            for (index, (key, value)) in valid.iter().enumerate() {
                let mut value = value.to_vec();
                for &(at, mask) in &flips {
                    if at % count == index && !value.is_empty() {
                        let position = at % value.len();
                        value[position] ^= mask;
                    }
                }
                if index == cut % count {
                    value.truncate(cut % (value.len() + 1));
                }
                records.push(key, &value);
            }
            for value in &garbage {
                records.push(0, value);
            }
            let mut scratch = ViewChanges::default();
            let version = ViewVersion::new(1, 2);
            let _ = decode(&records, |changes| version.apply(1, changes), &mut scratch);
            let mut scratch = ViewChanges::default();
            let _ = decode_segments(&records, |_, changes| version.apply(1, changes), &mut scratch);
        }
    }
}
