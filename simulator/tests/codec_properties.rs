//! Property tests of the two codecs: every valid event round-trips, and no input makes a
//! decoder panic.

use lk_simulator::codec::{
    BINARY_RECORD_BYTES, decode_binary, decode_json, encode_binary, encode_binary_range, encode_json,
};
use lk_simulator::event::{CancelledBy, Defect, Event, EventBatch, LatLon, Payload, Zone};
use proptest::prelude::*;

fn nonzero_u32() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn nonzero_u64() -> impl Strategy<Value = u64> {
    1..=u64::MAX
}

fn payload() -> impl Strategy<Value = Payload> {
    let by = prop_oneof![Just(CancelledBy::Rider), Just(CancelledBy::Driver), Just(CancelledBy::Platform)];
    prop_oneof![
        (nonzero_u32(), any::<u16>(), 0u16..36_000).prop_map(|(driver_id, speed_cmps, heading_cdeg)| {
            Payload::DriverPing { driver_id, speed_cmps, heading_cdeg }
        }),
        (nonzero_u64(), nonzero_u32()).prop_map(|(ride_id, rider_id)| Payload::RideRequested { ride_id, rider_id }),
        (nonzero_u64(), nonzero_u32(), nonzero_u32())
            .prop_map(|(ride_id, driver_id, rider_id)| Payload::RideAccepted { ride_id, driver_id, rider_id }),
        (nonzero_u64(), nonzero_u32()).prop_map(|(ride_id, driver_id)| Payload::DriverArrived { ride_id, driver_id }),
        (nonzero_u64(), nonzero_u32()).prop_map(|(ride_id, driver_id)| Payload::PickedUp { ride_id, driver_id }),
        (nonzero_u64(), nonzero_u32(), any::<u32>(), any::<u32>()).prop_map(
            |(ride_id, driver_id, fare_cents, distance_m)| Payload::DroppedOff {
                ride_id,
                driver_id,
                fare_cents,
                distance_m
            }
        ),
        (nonzero_u64(), nonzero_u32(), any::<u32>(), by)
            .prop_map(|(ride_id, rider_id, driver_id, by)| Payload::RideCancelled { ride_id, rider_id, driver_id, by }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        nonzero_u64(),
        any::<i64>(),
        any::<u64>(),
        -90_000_000i32..=90_000_000,
        -180_000_000i32..=180_000_000,
        0u8..=15,
        payload(),
    )
        .prop_map(|(event_id, event_time_us, due_ns, lat_e6, lon_e6, resolution, payload)| {
            let position = LatLon { lat_e6, lon_e6 };
            let resolution = h3o::Resolution::try_from(resolution).expect("0..=15");
            let zone = lk_simulator::city::exact_zone(position, resolution);
            Event { event_id, event_time_us, due_ns, zone, position, payload }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn binary_round_trips(event in event()) {
        let mut record = [0; BINARY_RECORD_BYTES];
        encode_binary(&event, None, &mut record);
        prop_assert_eq!(decode_binary(&record), Ok(event));
    }

    #[test]
    fn json_round_trips(event in event()) {
        let mut line = Vec::new();
        encode_json(&event, None, &mut line);
        prop_assert_eq!(line.last(), Some(&b'\n'));
        prop_assert_eq!(decode_json(&line[..line.len() - 1]), Ok(event));
    }

    /// A range is encoded in clean runs between its defects, a block at a time: its bytes are
    /// still each event's record, corrupted as its defect says, in order.
    #[test]
    fn a_range_is_its_records_one_by_one(
        events in proptest::collection::vec(event(), 0..70),
        defect_marks in proptest::collection::vec(proptest::option::weighted(0.15, 0usize..4), 70),
        cut in (0usize..70, 0usize..70),
    ) {
        let defects: Vec<(u32, Defect)> = defect_marks
            .iter()
            .take(events.len())
            .enumerate()
            .filter_map(|(index, mark)| mark.map(|defect| (index as u32, Defect::ALL[defect])))
            .collect();
        let batch = EventBatch { events, defects };
        let (start, end) = (cut.0.min(cut.1).min(batch.len()), cut.0.max(cut.1).min(batch.len()));
        let mut encoded = vec![7u8; 3];
        encode_binary_range(&batch, start..end, &mut encoded);
        let mut expected = vec![7u8; 3];
        for index in start..end {
            let mut record = [0; BINARY_RECORD_BYTES];
            encode_binary(&batch.events[index], batch.defect_of(index), &mut record);
            expected.extend_from_slice(&record);
        }
        prop_assert_eq!(encoded, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_binary_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_binary(&bytes);
    }

    #[test]
    fn mutated_records_never_panic_the_binary_decoder(event in event(), position in 0usize..64, value in any::<u8>()) {
        let mut record = [0; BINARY_RECORD_BYTES];
        encode_binary(&event, None, &mut record);
        record[position] = value;
        if let Ok(decoded) = decode_binary(&record) {
            // Whatever decodes is valid by construction: re-encoding reproduces the bytes.
            let mut again = [0; BINARY_RECORD_BYTES];
            encode_binary(&decoded, None, &mut again);
            prop_assert_eq!(again, record);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_json_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_json(&bytes);
    }

    #[test]
    fn mutated_json_never_panics_the_decoder(event in event(), cut in 0usize..400, replacement in any::<u8>()) {
        let mut line = Vec::new();
        encode_json(&event, None, &mut line);
        line.pop();
        let at = cut % line.len();
        line[at] = replacement;
        let _ = decode_json(&line);
        line.truncate(at);
        let _ = decode_json(&line);
    }
}

#[test]
fn zone_must_be_a_valid_cell() {
    let event = Event {
        event_id: 1,
        event_time_us: 0,
        due_ns: 0,
        zone: Zone(12345),
        position: LatLon::from_degrees(40.7, -73.9),
        payload: Payload::DriverPing { driver_id: 1, speed_cmps: 0, heading_cdeg: 0 },
    };
    let mut record = [0; BINARY_RECORD_BYTES];
    encode_binary(&event, None, &mut record);
    assert_eq!(decode_binary(&record).unwrap_err().to_string(), "field `zone` is out of range: 3039");
}
