//! The two wire encodings of an [`Event`]: a compact fixed-size binary record and JSON.
//!
//! Both round-trip every valid event exactly and both validate on decode: a decoder returns a
//! typed [`DecodeError`] for anything a real producer could get wrong, and never panics on any
//! input. Malformed events marked in an [`EventBatch`] are written corrupted, on purpose, so the
//! dead-letter path downstream sees what a broken producer sends.
//!
//! ## Binary record (64 bytes, little-endian)
//! | offset | type | field |
//! |---|---|---|
//! | 0 | u8 | kind code (1..=7) |
//! | 1 | u8 | format version, 1 |
//! | 2 | u8 | cancelled-by code (cancellations), else 0 |
//! | 3 | u8 | reserved, 0 |
//! | 4 | u32 | driver id, 0 when none |
//! | 8 | u64 | event id, never 0 |
//! | 16 | i64 | event time, µs since the epoch |
//! | 24 | u64 | due time, ns since the run's start |
//! | 32 | u64 | zone (H3 cell index) |
//! | 40 | u64 | ride id, 0 for pings |
//! | 48 | i32 | latitude, µdeg |
//! | 52 | i32 | longitude, µdeg |
//! | 56 | u32 | pings: speed cm/s (low 16 bits), heading cdeg (high 16); drop-offs: fare cents; requests, accepts, cancellations: rider id |
//! | 60 | u32 | drop-offs: distance m; else 0 |

use std::io::Write;

use serde::Deserialize;

use crate::event::{CancelledBy, Defect, Event, EventBatch, EventKind, LatLon, MICRODEGREES, Payload, Zone};

/// Size of one binary record.
pub const BINARY_RECORD_BYTES: usize = 64;
/// The binary format version this build writes and reads.
pub const BINARY_VERSION: u8 = 1;
/// Kind code written for [`Defect::UnknownKind`].
const UNKNOWN_KIND_CODE: u8 = 0xEE;
/// Kind name written for [`Defect::UnknownKind`].
const UNKNOWN_KIND_NAME: &str = "teleport";

/// Why a record could not be decoded into an [`Event`]. The caller knows where the record was
/// and says so; this says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record has the wrong size.
    #[error("record is {len} bytes; a binary event is exactly {BINARY_RECORD_BYTES}")]
    Length {
        /// Its size.
        len: usize,
    },
    /// The binary version byte is not one this build reads.
    #[error("binary format version {version} is not supported (this build reads version {BINARY_VERSION})")]
    Version {
        /// The version byte found.
        version: u8,
    },
    /// Not parseable JSON, or not a JSON object of the expected shape.
    #[error("not a valid JSON event: {reason}")]
    Json {
        /// The parser's message.
        reason: String,
    },
    /// The kind is not one this platform knows.
    #[error("unknown event kind {kind:?}")]
    UnknownKind {
        /// The kind found, as text.
        kind: String,
    },
    /// A field the kind requires is absent or zero.
    #[error("required field `{field}` is missing")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field is outside its valid range.
    #[error("field `{field}` is out of range: {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value found, as text.
        value: String,
    },
    /// A field that this kind does not have is set.
    #[error("field `{field}` must not be set on a {kind} event")]
    Unexpected {
        /// The field.
        field: &'static str,
        /// The event's kind.
        kind: &'static str,
    },
}

impl DecodeError {
    /// The [`Defect`] class this error falls in, for dead-letter accounting.
    pub fn defect(&self) -> Defect {
        match self {
            DecodeError::Length { .. } | DecodeError::Version { .. } | DecodeError::Json { .. } => Defect::Garbled,
            DecodeError::UnknownKind { .. } => Defect::UnknownKind,
            DecodeError::MissingField { .. } => Defect::MissingField,
            DecodeError::OutOfRange { .. } | DecodeError::Unexpected { .. } => Defect::OutOfRange,
        }
    }
}

/// Writes the binary record of `event` into `out`, corrupted as `defect` says.
#[inline]
pub fn encode_binary(event: &Event, defect: Option<Defect>, out: &mut [u8; BINARY_RECORD_BYTES]) {
    let (kind, cancelled_by, driver_id, ride_id, word_a, word_b) = match event.payload {
        Payload::DriverPing { driver_id, speed_cmps, heading_cdeg } => {
            (1u8, 0u8, driver_id, 0u64, u32::from(speed_cmps) | (u32::from(heading_cdeg) << 16), 0u32)
        }
        Payload::RideRequested { ride_id, rider_id } => (2, 0, 0, ride_id, rider_id, 0),
        Payload::RideAccepted { ride_id, driver_id, rider_id } => (3, 0, driver_id, ride_id, rider_id, 0),
        Payload::DriverArrived { ride_id, driver_id } => (4, 0, driver_id, ride_id, 0, 0),
        Payload::PickedUp { ride_id, driver_id } => (5, 0, driver_id, ride_id, 0, 0),
        Payload::DroppedOff { ride_id, driver_id, fare_cents, distance_m } => {
            (6, 0, driver_id, ride_id, fare_cents, distance_m)
        }
        Payload::RideCancelled { ride_id, rider_id, driver_id, by } => (7, by as u8, driver_id, ride_id, rider_id, 0),
    };
    let mut lat_e6 = event.position.lat_e6;
    let mut event_id = event.event_id;
    let mut version = BINARY_VERSION;
    let mut kind = kind;
    match defect {
        None => {}
        Some(Defect::Garbled) => version = 0xA5,
        Some(Defect::MissingField) => event_id = 0,
        Some(Defect::OutOfRange) => lat_e6 = 123_456_789,
        Some(Defect::UnknownKind) => kind = UNKNOWN_KIND_CODE,
    }
    // Eight little-endian words, each stored whole: the record is written into an output buffer
    // the cache rarely holds, and thirteen narrower stores a record filled the store buffer
    // while they waited for their lines.
    let words = [
        u64::from(kind) | u64::from(version) << 8 | u64::from(cancelled_by) << 16 | u64::from(driver_id) << 32,
        event_id,
        event.event_time_us as u64,
        event.due_ns,
        event.zone.0,
        ride_id,
        u64::from(lat_e6 as u32) | u64::from(event.position.lon_e6 as u32) << 32,
        u64::from(word_a) | u64::from(word_b) << 32,
    ];
    for (bytes, word) in out.chunks_exact_mut(8).zip(words) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
}

/// Appends the binary records of a whole batch to `out`.
pub fn encode_binary_batch(batch: &EventBatch, out: &mut Vec<u8>) {
    encode_binary_range(batch, 0..batch.len(), out);
}

/// The defects of `batch` that fall in `range`, with their absolute indices.
fn defects_in<'a>(
    batch: &'a EventBatch,
    range: &std::ops::Range<usize>,
) -> std::iter::Peekable<std::slice::Iter<'a, (u32, Defect)>> {
    let first = batch.defects.partition_point(|&(index, _)| (index as usize) < range.start);
    batch.defects[first..].iter().peekable()
}

/// Appends the binary records of `batch.events[range]` to `out`.
pub fn encode_binary_range(batch: &EventBatch, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
    out.reserve(range.len() * BINARY_RECORD_BYTES);
    // The defects split the range into clean runs, encoded without a per-record defect check;
    // each defect's record is encoded alone.
    let mut from = range.start;
    for &(index, defect) in defects_in(batch, &range) {
        let index = index as usize;
        if index >= range.end {
            break;
        }
        encode_clean(&batch.events[from..index], out);
        let mut record = [0; BINARY_RECORD_BYTES];
        encode_binary(&batch.events[index], Some(defect), &mut record);
        out.extend_from_slice(&record);
        from = index + 1;
    }
    encode_clean(&batch.events[from..range.end], out);
}

/// Records encoded into a block on the stack before they are appended to the output.
const ENCODE_BLOCK: usize = 16;

/// Appends the binary records of events without defects to `out`. They are encoded a block at a
/// time into a buffer the L1 cache holds, then appended in one copy: encoding each straight
/// into the output had its stores wait on lines the cache rarely holds, and a record's narrow
/// stores read back whole stalled on store forwarding.
fn encode_clean(events: &[Event], out: &mut Vec<u8>) {
    let mut block = [0; BINARY_RECORD_BYTES * ENCODE_BLOCK];
    for chunk in events.chunks(ENCODE_BLOCK) {
        for (event, record) in chunk.iter().zip(block.as_chunks_mut::<BINARY_RECORD_BYTES>().0) {
            encode_binary(event, None, record);
        }
        out.extend_from_slice(&block[..chunk.len() * BINARY_RECORD_BYTES]);
    }
}

fn u32_at(record: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(record[offset..offset + 4].try_into().expect("in bounds: record length is checked"))
}

fn u64_at(record: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(record[offset..offset + 8].try_into().expect("in bounds: record length is checked"))
}

/// The encoding of the records on a run's input topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordEncoding {
    /// The 64-byte binary record: lk's own engines' input.
    #[default]
    Binary,
    /// One JSON object per record (the line of [`encode_json`] without its newline): the input
    /// of an engine that is not lk's own, which lk's engines read as well.
    Json,
}

impl RecordEncoding {
    /// Appends the record of `event` (corrupted as `defect` says) to `out`.
    #[inline]
    pub fn encode(self, event: &Event, defect: Option<Defect>, out: &mut Vec<u8>) {
        match self {
            RecordEncoding::Binary => {
                let mut record = [0u8; BINARY_RECORD_BYTES];
                encode_binary(event, defect, &mut record);
                out.extend_from_slice(&record);
            }
            RecordEncoding::Json => {
                encode_json(event, defect, out);
                out.pop();
            }
        }
    }
}

/// Decodes and validates one record of either encoding: a JSON record starts with `{`, which
/// no binary record does (its first byte is a kind code, 1 to 7, or a defect's).
#[inline]
pub fn decode_record(record: &[u8]) -> Result<Event, DecodeError> {
    if record.first() == Some(&b'{') { decode_json(record) } else { decode_binary(record) }
}

/// Decodes and validates one binary record.
pub fn decode_binary(record: &[u8]) -> Result<Event, DecodeError> {
    if record.len() != BINARY_RECORD_BYTES {
        return Err(DecodeError::Length { len: record.len() });
    }
    if record[1] != BINARY_VERSION {
        return Err(DecodeError::Version { version: record[1] });
    }
    let kind = EventKind::from_code(record[0])
        .ok_or_else(|| DecodeError::UnknownKind { kind: format!("code {}", record[0]) })?;
    if record[3] != 0 {
        return Err(DecodeError::OutOfRange { field: "reserved", value: record[3].to_string() });
    }
    let fields = Fields {
        event_id: Some(u64_at(record, 8)),
        event_time_us: Some(u64_at(record, 16) as i64),
        due_ns: Some(u64_at(record, 24)),
        zone: Some(u64_at(record, 32)),
        lat_e6: Some(u32_at(record, 48) as i32 as i64),
        lon_e6: Some(u32_at(record, 52) as i32 as i64),
    };
    let driver_id = u32_at(record, 4);
    let ride_id = u64_at(record, 40);
    let word_a = u32_at(record, 56);
    let word_b = u32_at(record, 60);
    let cancelled_by = record[2];
    if kind != EventKind::RideCancelled && cancelled_by != 0 {
        return Err(DecodeError::Unexpected { field: "cancelled_by", kind: kind.name() });
    }
    if kind != EventKind::DroppedOff && word_b != 0 {
        return Err(DecodeError::Unexpected { field: "distance_m", kind: kind.name() });
    }
    let payload = match kind {
        EventKind::DriverPing => {
            if ride_id != 0 {
                return Err(DecodeError::Unexpected { field: "ride_id", kind: kind.name() });
            }
            ping(driver_id, u64::from(word_a & 0xFFFF), u64::from(word_a >> 16))?
        }
        EventKind::RideRequested => {
            if driver_id != 0 {
                return Err(DecodeError::Unexpected { field: "driver_id", kind: kind.name() });
            }
            Payload::RideRequested { ride_id: nonzero_u64("ride_id", ride_id)?, rider_id: nonzero("rider_id", word_a)? }
        }
        EventKind::RideAccepted => Payload::RideAccepted {
            ride_id: nonzero_u64("ride_id", ride_id)?,
            driver_id: nonzero("driver_id", driver_id)?,
            rider_id: nonzero("rider_id", word_a)?,
        },
        EventKind::DriverArrived | EventKind::PickedUp => {
            if word_a != 0 {
                return Err(DecodeError::Unexpected { field: "rider_id", kind: kind.name() });
            }
            let ride_id = nonzero_u64("ride_id", ride_id)?;
            let driver_id = nonzero("driver_id", driver_id)?;
            if kind == EventKind::DriverArrived {
                Payload::DriverArrived { ride_id, driver_id }
            } else {
                Payload::PickedUp { ride_id, driver_id }
            }
        }
        EventKind::DroppedOff => Payload::DroppedOff {
            ride_id: nonzero_u64("ride_id", ride_id)?,
            driver_id: nonzero("driver_id", driver_id)?,
            fare_cents: word_a,
            distance_m: word_b,
        },
        EventKind::RideCancelled => Payload::RideCancelled {
            ride_id: nonzero_u64("ride_id", ride_id)?,
            rider_id: nonzero("rider_id", word_a)?,
            driver_id,
            by: CancelledBy::from_code(cancelled_by)
                .ok_or_else(|| DecodeError::OutOfRange { field: "cancelled_by", value: cancelled_by.to_string() })?,
        },
    };
    fields.into_event(payload)
}

/// The fields every kind shares, as read from the wire, before validation.
struct Fields {
    event_id: Option<u64>,
    event_time_us: Option<i64>,
    due_ns: Option<u64>,
    zone: Option<u64>,
    lat_e6: Option<i64>,
    lon_e6: Option<i64>,
}

impl Fields {
    fn into_event(self, payload: Payload) -> Result<Event, DecodeError> {
        let event_id = nonzero_u64("event_id", self.event_id.ok_or(DecodeError::MissingField { field: "event_id" })?)?;
        let event_time_us = self.event_time_us.ok_or(DecodeError::MissingField { field: "event_time_us" })?;
        let due_ns = self.due_ns.ok_or(DecodeError::MissingField { field: "due_ns" })?;
        let lat_e6 = self.lat_e6.ok_or(DecodeError::MissingField { field: "lat" })?;
        let lon_e6 = self.lon_e6.ok_or(DecodeError::MissingField { field: "lon" })?;
        if !(-90_000_000..=90_000_000).contains(&lat_e6) {
            return Err(DecodeError::OutOfRange { field: "lat", value: format!("{}", lat_e6 as f64 / MICRODEGREES) });
        }
        if !(-180_000_000..=180_000_000).contains(&lon_e6) {
            return Err(DecodeError::OutOfRange { field: "lon", value: format!("{}", lon_e6 as f64 / MICRODEGREES) });
        }
        let zone = Zone(self.zone.ok_or(DecodeError::MissingField { field: "zone" })?);
        if !zone.is_valid_cell() {
            return Err(DecodeError::OutOfRange { field: "zone", value: zone.to_string() });
        }
        Ok(Event {
            event_id,
            event_time_us,
            due_ns,
            zone,
            position: LatLon { lat_e6: lat_e6 as i32, lon_e6: lon_e6 as i32 },
            payload,
        })
    }
}

fn nonzero(field: &'static str, value: u32) -> Result<u32, DecodeError> {
    if value == 0 { Err(DecodeError::MissingField { field }) } else { Ok(value) }
}

fn nonzero_u64(field: &'static str, value: u64) -> Result<u64, DecodeError> {
    if value == 0 { Err(DecodeError::MissingField { field }) } else { Ok(value) }
}

fn ping(driver_id: u32, speed_cmps: u64, heading_cdeg: u64) -> Result<Payload, DecodeError> {
    let speed_cmps = u16::try_from(speed_cmps)
        .map_err(|_| DecodeError::OutOfRange { field: "speed_mps", value: format!("{}", speed_cmps as f64 / 100.0) })?;
    if heading_cdeg >= 36_000 {
        return Err(DecodeError::OutOfRange {
            field: "heading_deg",
            value: format!("{}", heading_cdeg as f64 / 100.0),
        });
    }
    Ok(Payload::DriverPing {
        driver_id: nonzero("driver_id", driver_id)?,
        speed_cmps,
        heading_cdeg: heading_cdeg as u16,
    })
}

/// Decodes a buffer of concatenated binary records, calling `on_record` with each record's index
/// and its result. A bad record does not stop the others; a trailing partial record is reported
/// as a [`DecodeError::Length`] error at its index.
pub fn decode_binary_stream(bytes: &[u8], mut on_record: impl FnMut(usize, Result<Event, DecodeError>)) {
    let mut chunks = bytes.chunks_exact(BINARY_RECORD_BYTES);
    let mut index = 0;
    for record in &mut chunks {
        on_record(index, decode_binary(record));
        index += 1;
    }
    if !chunks.remainder().is_empty() {
        on_record(index, Err(DecodeError::Length { len: chunks.remainder().len() }));
    }
}

/// Writes a fixed-point number with `decimals` digits after the point (`-73.987654`).
fn write_fixed(out: &mut Vec<u8>, value: i64, decimals: u32) {
    let scale = 10i64.pow(decimals);
    if value < 0 {
        out.push(b'-');
    }
    let magnitude = value.unsigned_abs();
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(magnitude / scale as u64).as_bytes());
    out.push(b'.');
    let fraction = magnitude % scale as u64;
    let digits = buffer.format(fraction).as_bytes();
    out.extend(std::iter::repeat_n(b'0', decimals as usize - digits.len()));
    out.extend_from_slice(digits);
}

fn write_u64_field(out: &mut Vec<u8>, name: &str, value: u64) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends `event` as one line of JSON (newline-terminated), corrupted as `defect` says.
///
/// Hand-written rather than derived: it is on the generator's hot path, and fixed-point
/// coordinates are printed exactly without going through floating point.
pub fn encode_json(event: &Event, defect: Option<Defect>, out: &mut Vec<u8>) {
    let line_start = out.len();
    let mut integers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"event_id\":");
    out.extend_from_slice(integers.format(event.event_id).as_bytes());
    out.extend_from_slice(b",\"kind\":\"");
    let kind = if defect == Some(Defect::UnknownKind) { UNKNOWN_KIND_NAME } else { event.kind().name() };
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    if defect != Some(Defect::MissingField) {
        out.extend_from_slice(b",\"event_time_us\":");
        out.extend_from_slice(integers.format(event.event_time_us).as_bytes());
    }
    write_u64_field(out, "due_ns", event.due_ns);
    out.extend_from_slice(b",\"zone\":\"");
    write!(out, "{:x}", event.zone.0).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b"\",\"lat\":");
    let lat_e6 = if defect == Some(Defect::OutOfRange) { 123_456_789 } else { event.position.lat_e6 };
    write_fixed(out, i64::from(lat_e6), 6);
    out.extend_from_slice(b",\"lon\":");
    write_fixed(out, i64::from(event.position.lon_e6), 6);
    match event.payload {
        Payload::DriverPing { driver_id, speed_cmps, heading_cdeg } => {
            write_u64_field(out, "driver_id", u64::from(driver_id));
            out.extend_from_slice(b",\"speed_mps\":");
            write_fixed(out, i64::from(speed_cmps), 2);
            out.extend_from_slice(b",\"heading_deg\":");
            write_fixed(out, i64::from(heading_cdeg), 2);
        }
        Payload::RideRequested { ride_id, rider_id } => {
            write_u64_field(out, "ride_id", ride_id);
            write_u64_field(out, "rider_id", u64::from(rider_id));
        }
        Payload::RideAccepted { ride_id, driver_id, rider_id } => {
            write_u64_field(out, "ride_id", ride_id);
            write_u64_field(out, "driver_id", u64::from(driver_id));
            write_u64_field(out, "rider_id", u64::from(rider_id));
        }
        Payload::DriverArrived { ride_id, driver_id } | Payload::PickedUp { ride_id, driver_id } => {
            write_u64_field(out, "ride_id", ride_id);
            write_u64_field(out, "driver_id", u64::from(driver_id));
        }
        Payload::DroppedOff { ride_id, driver_id, fare_cents, distance_m } => {
            write_u64_field(out, "ride_id", ride_id);
            write_u64_field(out, "driver_id", u64::from(driver_id));
            write_u64_field(out, "fare_cents", u64::from(fare_cents));
            write_u64_field(out, "distance_m", u64::from(distance_m));
        }
        Payload::RideCancelled { ride_id, rider_id, driver_id, by } => {
            write_u64_field(out, "ride_id", ride_id);
            write_u64_field(out, "rider_id", u64::from(rider_id));
            if driver_id != 0 {
                write_u64_field(out, "driver_id", u64::from(driver_id));
            }
            out.extend_from_slice(b",\"cancelled_by\":\"");
            out.extend_from_slice(by.name().as_bytes());
            out.push(b'"');
        }
    }
    out.push(b'}');
    if defect == Some(Defect::Garbled) {
        // A producer that died mid-write: the line is cut in half.
        let half = line_start + (out.len() - line_start) / 2;
        out.truncate(half);
    }
    out.push(b'\n');
}

/// Appends a whole batch as newline-delimited JSON.
pub fn encode_json_batch(batch: &EventBatch, out: &mut Vec<u8>) {
    encode_json_range(batch, 0..batch.len(), out);
}

/// Appends `batch.events[range]` as newline-delimited JSON.
pub fn encode_json_range(batch: &EventBatch, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
    let mut defects = defects_in(batch, &range);
    for (index, event) in batch.events[range.clone()].iter().enumerate().map(|(i, e)| (i + range.start, e)) {
        let defect = defects.next_if(|&&(at, _)| at as usize == index).map(|&(_, defect)| defect);
        encode_json(event, defect, out);
    }
}

/// The JSON object as parsed, before validation. Unknown fields are rejected so that a typo in a
/// producer shows up as an error rather than as a silently missing value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent<'a> {
    event_id: Option<u64>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    event_time_us: Option<i64>,
    due_ns: Option<u64>,
    #[serde(borrow)]
    zone: Option<std::borrow::Cow<'a, str>>,
    lat: Option<f64>,
    lon: Option<f64>,
    driver_id: Option<u32>,
    rider_id: Option<u32>,
    ride_id: Option<u64>,
    speed_mps: Option<f64>,
    heading_deg: Option<f64>,
    fare_cents: Option<u32>,
    distance_m: Option<u32>,
    #[serde(borrow)]
    cancelled_by: Option<std::borrow::Cow<'a, str>>,
}

fn fixed_point(field: &'static str, value: f64, scale: f64) -> Result<i64, DecodeError> {
    let scaled = (value * scale).round();
    if !scaled.is_finite() || scaled.abs() > 9.0e15 {
        return Err(DecodeError::OutOfRange { field, value: value.to_string() });
    }
    Ok(scaled as i64)
}

/// Decodes and validates one JSON event (one line, without its newline).
pub fn decode_json(line: &[u8]) -> Result<Event, DecodeError> {
    let raw: JsonEvent<'_> =
        serde_json::from_slice(line).map_err(|error| DecodeError::Json { reason: error.to_string() })?;
    let kind_name = raw.kind.as_deref().ok_or(DecodeError::MissingField { field: "kind" })?;
    let kind =
        EventKind::from_name(kind_name).ok_or_else(|| DecodeError::UnknownKind { kind: kind_name.to_owned() })?;
    let zone = match raw.zone.as_deref() {
        None => None,
        Some(text) => Some(
            u64::from_str_radix(text, 16)
                .map_err(|_| DecodeError::OutOfRange { field: "zone", value: text.to_owned() })?,
        ),
    };
    let fields = Fields {
        event_id: raw.event_id,
        event_time_us: raw.event_time_us,
        due_ns: raw.due_ns,
        zone,
        lat_e6: raw.lat.map(|lat| fixed_point("lat", lat, MICRODEGREES)).transpose()?,
        lon_e6: raw.lon.map(|lon| fixed_point("lon", lon, MICRODEGREES)).transpose()?,
    };
    let required_u32 =
        |field: &'static str, value: Option<u32>| nonzero(field, value.ok_or(DecodeError::MissingField { field })?);
    let ride = || nonzero_u64("ride_id", raw.ride_id.ok_or(DecodeError::MissingField { field: "ride_id" })?);
    let reject = |field: &'static str, present: bool| {
        if present { Err(DecodeError::Unexpected { field, kind: kind.name() }) } else { Ok(()) }
    };
    if kind != EventKind::DriverPing {
        reject("speed_mps", raw.speed_mps.is_some())?;
        reject("heading_deg", raw.heading_deg.is_some())?;
    }
    if kind != EventKind::DroppedOff {
        reject("fare_cents", raw.fare_cents.is_some())?;
        reject("distance_m", raw.distance_m.is_some())?;
    }
    if kind != EventKind::RideCancelled {
        reject("cancelled_by", raw.cancelled_by.is_some())?;
    }
    let payload = match kind {
        EventKind::DriverPing => {
            reject("ride_id", raw.ride_id.is_some())?;
            reject("rider_id", raw.rider_id.is_some())?;
            let speed = raw.speed_mps.ok_or(DecodeError::MissingField { field: "speed_mps" })?;
            let heading = raw.heading_deg.ok_or(DecodeError::MissingField { field: "heading_deg" })?;
            let speed_cmps = fixed_point("speed_mps", speed, 100.0)?;
            let heading_cdeg = fixed_point("heading_deg", heading, 100.0)?;
            if speed_cmps < 0 {
                return Err(DecodeError::OutOfRange { field: "speed_mps", value: speed.to_string() });
            }
            if heading_cdeg < 0 {
                return Err(DecodeError::OutOfRange { field: "heading_deg", value: heading.to_string() });
            }
            ping(raw.driver_id.unwrap_or(0), speed_cmps as u64, heading_cdeg as u64)?
        }
        EventKind::RideRequested => {
            reject("driver_id", raw.driver_id.is_some())?;
            Payload::RideRequested { ride_id: ride()?, rider_id: required_u32("rider_id", raw.rider_id)? }
        }
        EventKind::RideAccepted => Payload::RideAccepted {
            ride_id: ride()?,
            driver_id: required_u32("driver_id", raw.driver_id)?,
            rider_id: required_u32("rider_id", raw.rider_id)?,
        },
        EventKind::DriverArrived | EventKind::PickedUp => {
            reject("rider_id", raw.rider_id.is_some())?;
            let (ride_id, driver_id) = (ride()?, required_u32("driver_id", raw.driver_id)?);
            if kind == EventKind::DriverArrived {
                Payload::DriverArrived { ride_id, driver_id }
            } else {
                Payload::PickedUp { ride_id, driver_id }
            }
        }
        EventKind::DroppedOff => {
            reject("rider_id", raw.rider_id.is_some())?;
            Payload::DroppedOff {
                ride_id: ride()?,
                driver_id: required_u32("driver_id", raw.driver_id)?,
                fare_cents: raw.fare_cents.ok_or(DecodeError::MissingField { field: "fare_cents" })?,
                distance_m: raw.distance_m.ok_or(DecodeError::MissingField { field: "distance_m" })?,
            }
        }
        EventKind::RideCancelled => {
            let by_name = raw.cancelled_by.as_deref().ok_or(DecodeError::MissingField { field: "cancelled_by" })?;
            Payload::RideCancelled {
                ride_id: ride()?,
                rider_id: required_u32("rider_id", raw.rider_id)?,
                driver_id: match raw.driver_id {
                    None => 0,
                    Some(id) => nonzero("driver_id", id)?,
                },
                by: CancelledBy::from_name(by_name)
                    .ok_or_else(|| DecodeError::OutOfRange { field: "cancelled_by", value: by_name.to_owned() })?,
            }
        }
    };
    fields.into_event(payload)
}

/// Decodes newline-delimited JSON, calling `on_record` with each non-empty line's index (counting
/// from 0 over all lines) and its result. A bad line does not stop the others.
pub fn decode_json_stream(bytes: &[u8], mut on_record: impl FnMut(usize, Result<Event, DecodeError>)) {
    for (index, line) in bytes.split(|&byte| byte == b'\n').enumerate() {
        if !line.is_empty() {
            on_record(index, decode_json(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ride-event.schema.json is the protocol's input for engines that are not lk's own:
    /// it names the kinds this codec knows, and its examples are records this codec reads and
    /// writes back byte for byte.
    #[test]
    fn the_published_json_schema_is_this_codec() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/ride-event.schema.json")).expect("the schema is JSON");
        let kinds: Vec<&str> = schema["properties"]["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kind| kind.as_str().unwrap())
            .collect();
        let ours: Vec<&str> = EventKind::ALL.iter().map(|kind| kind.name()).collect();
        assert_eq!(kinds, ours);
        assert_eq!(schema["additionalProperties"], false, "unknown fields are errors, as decode_json says");
        let examples = schema["examples"].as_array().unwrap();
        assert!(examples.len() >= 3);
        for example in examples {
            let text = serde_json::to_string(example).unwrap();
            let event = decode_json(text.as_bytes()).unwrap_or_else(|error| panic!("{text}: {error}"));
            let mut again = Vec::new();
            encode_json(&event, None, &mut again);
            let reread: serde_json::Value = serde_json::from_slice(&again).unwrap();
            assert_eq!(&reread, example, "the example is what lk writes");
        }
    }

    pub(crate) fn sample_events() -> Vec<Event> {
        let zone = Zone(0x882a100d2bfffff);
        let base = Event {
            event_id: 7,
            event_time_us: 1_780_000_000_000_000,
            due_ns: 12_345,
            zone,
            position: LatLon::from_degrees(40.712345, -73.987654),
            payload: Payload::DriverPing { driver_id: 42, speed_cmps: 825, heading_cdeg: 27_150 },
        };
        let payloads = [
            base.payload,
            Payload::RideRequested { ride_id: 9, rider_id: 3 },
            Payload::RideAccepted { ride_id: 9, driver_id: 42, rider_id: 3 },
            Payload::DriverArrived { ride_id: 9, driver_id: 42 },
            Payload::PickedUp { ride_id: 9, driver_id: 42 },
            Payload::DroppedOff { ride_id: 9, driver_id: 42, fare_cents: 2_315, distance_m: 5_210 },
            Payload::RideCancelled { ride_id: 9, rider_id: 3, driver_id: 0, by: CancelledBy::Platform },
            Payload::RideCancelled { ride_id: 9, rider_id: 3, driver_id: 42, by: CancelledBy::Driver },
        ];
        payloads.into_iter().map(|payload| Event { payload, ..base }).collect()
    }

    #[test]
    fn json_looks_like_what_the_classic_design_puts_on_kafka() {
        let mut out = Vec::new();
        encode_json(&sample_events()[0], None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"event_id\":7,\"kind\":\"driver_ping\",\"event_time_us\":1780000000000000,\"due_ns\":12345,\
             \"zone\":\"882a100d2bfffff\",\"lat\":40.712345,\"lon\":-73.987654,\"driver_id\":42,\
             \"speed_mps\":8.25,\"heading_deg\":271.50}\n"
        );
    }

    #[test]
    fn both_codecs_round_trip_every_kind() {
        for event in sample_events() {
            let mut record = [0; BINARY_RECORD_BYTES];
            encode_binary(&event, None, &mut record);
            assert_eq!(decode_binary(&record), Ok(event));
            let mut line = Vec::new();
            encode_json(&event, None, &mut line);
            assert_eq!(decode_json(&line[..line.len() - 1]), Ok(event), "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn every_defect_is_caught_by_both_decoders_as_its_own_class() {
        let event = sample_events()[2];
        for defect in Defect::ALL {
            let mut record = [0; BINARY_RECORD_BYTES];
            encode_binary(&event, Some(defect), &mut record);
            assert_eq!(decode_binary(&record).unwrap_err().defect(), defect, "binary {defect:?}");
            let mut line = Vec::new();
            encode_json(&event, Some(defect), &mut line);
            let error = decode_json(&line[..line.len() - 1]).unwrap_err();
            assert_eq!(error.defect(), defect, "json {defect:?}: {error}");
        }
    }

    #[test]
    fn a_bad_line_does_not_lose_its_neighbours() {
        let events = sample_events();
        let batch = EventBatch { events: events.clone(), defects: vec![(1, Defect::Garbled), (4, Defect::OutOfRange)] };
        let mut json = Vec::new();
        encode_json_batch(&batch, &mut json);
        let mut binary = Vec::new();
        encode_binary_batch(&batch, &mut binary);
        for decoded in [
            {
                let mut results = Vec::new();
                decode_json_stream(&json, |index, result| results.push((index, result)));
                results
            },
            {
                let mut results = Vec::new();
                decode_binary_stream(&binary, |index, result| results.push((index, result)));
                results
            },
        ] {
            assert_eq!(decoded.len(), events.len());
            for (index, result) in decoded {
                match batch.defect_of(index) {
                    Some(defect) => assert_eq!(result.unwrap_err().defect(), defect),
                    None => assert_eq!(result, Ok(events[index])),
                }
            }
        }
    }

    #[test]
    fn decode_errors_name_the_field() {
        let line = br#"{"event_id":1,"kind":"ride_requested","event_time_us":5,"due_ns":0,"zone":"882a100d2bfffff","lat":40.7,"lon":-73.9,"ride_id":3}"#;
        assert_eq!(decode_json(line).unwrap_err().to_string(), "required field `rider_id` is missing");
        let line = br#"{"event_id":1,"kind":"driver_ping","event_time_us":5,"due_ns":0,"zone":"882a100d2bfffff","lat":40.7,"lon":-73.9,"driver_id":3,"speed_mps":1.0,"heading_deg":360.0}"#;
        assert_eq!(decode_json(line).unwrap_err().to_string(), "field `heading_deg` is out of range: 360");
        let line = br#"{"event_id":1,"kind":"driver_ping","colour":"red"}"#;
        assert!(decode_json(line).unwrap_err().to_string().contains("unknown field `colour`"));
        assert_eq!(
            decode_binary(&[0; 10]).unwrap_err().to_string(),
            "record is 10 bytes; a binary event is exactly 64"
        );
    }
}
