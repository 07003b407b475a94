//! The ride-sharing event model: what a platform's ingestion sees.
//!
//! Every event has a unique `event_id` (exactly-once checking relies on it), the time it happened
//! (`event_time_us`), the time the open-loop generator was due to send it (`due_ns`, so latency
//! can be measured free of coordinated omission), its position and its zone (an H3 cell), and a
//! kind-specific [`Payload`]. The struct is plain data, 64 bytes, `Copy`: events move in batches
//! ([`EventBatch`]) and are never boxed.
//!
//! Malformed events are not representable as an [`Event`]: a batch marks them in a sparse side
//! list ([`EventBatch::defects`]) and the codecs write the corrupted bytes, so that a decoder sees
//! exactly what a broken producer would have sent.

use std::fmt;

/// Microdegrees per degree: positions are fixed-point, which keeps them exact through both codecs.
pub const MICRODEGREES: f64 = 1_000_000.0;

/// A position in fixed-point microdegrees (about 0.1 m of latitude).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LatLon {
    /// Latitude in microdegrees, within ±90°.
    pub lat_e6: i32,
    /// Longitude in microdegrees, within ±180°.
    pub lon_e6: i32,
}

impl LatLon {
    /// A position from degrees, rounded to the nearest microdegree.
    pub fn from_degrees(lat: f64, lon: f64) -> Self {
        Self { lat_e6: (lat * MICRODEGREES).round() as i32, lon_e6: (lon * MICRODEGREES).round() as i32 }
    }

    /// Latitude in degrees.
    pub fn lat(self) -> f64 {
        f64::from(self.lat_e6) / MICRODEGREES
    }

    /// Longitude in degrees.
    pub fn lon(self) -> f64 {
        f64::from(self.lon_e6) / MICRODEGREES
    }

    /// Whether the coordinates are on the globe.
    pub fn is_valid(self) -> bool {
        (-90_000_000..=90_000_000).contains(&self.lat_e6) && (-180_000_000..=180_000_000).contains(&self.lon_e6)
    }
}

/// A zone: an H3 cell index. Displayed in H3's canonical lowercase hex form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Zone(pub u64);

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl Zone {
    /// Whether this is a valid H3 cell index.
    pub fn is_valid_cell(self) -> bool {
        h3o::CellIndex::try_from(self.0).is_ok()
    }
}

/// Who cancelled a ride.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelledBy {
    /// The rider gave up waiting.
    Rider = 1,
    /// The driver cancelled after accepting.
    Driver = 2,
    /// The platform found no driver.
    Platform = 3,
}

impl CancelledBy {
    /// Wire name, as used by the JSON codec.
    pub fn name(self) -> &'static str {
        match self {
            CancelledBy::Rider => "rider",
            CancelledBy::Driver => "driver",
            CancelledBy::Platform => "platform",
        }
    }

    /// The inverse of [`CancelledBy::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "rider" => Some(CancelledBy::Rider),
            "driver" => Some(CancelledBy::Driver),
            "platform" => Some(CancelledBy::Platform),
            _ => None,
        }
    }

    /// The inverse of `self as u8`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(CancelledBy::Rider),
            2 => Some(CancelledBy::Driver),
            3 => Some(CancelledBy::Platform),
            _ => None,
        }
    }
}

/// The kind of an event, without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A driver's app reports its position.
    DriverPing = 1,
    /// A rider asks for a ride.
    RideRequested = 2,
    /// A driver accepts the ride.
    RideAccepted = 3,
    /// The driver reaches the pickup point.
    DriverArrived = 4,
    /// The rider gets in.
    PickedUp = 5,
    /// The trip ends.
    DroppedOff = 6,
    /// The ride is cancelled before pickup.
    RideCancelled = 7,
}

impl EventKind {
    /// Every kind, in code order.
    pub const ALL: [EventKind; 7] = [
        EventKind::DriverPing,
        EventKind::RideRequested,
        EventKind::RideAccepted,
        EventKind::DriverArrived,
        EventKind::PickedUp,
        EventKind::DroppedOff,
        EventKind::RideCancelled,
    ];

    /// Wire name, as used by the JSON codec.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::DriverPing => "driver_ping",
            EventKind::RideRequested => "ride_requested",
            EventKind::RideAccepted => "ride_accepted",
            EventKind::DriverArrived => "driver_arrived",
            EventKind::PickedUp => "picked_up",
            EventKind::DroppedOff => "dropped_off",
            EventKind::RideCancelled => "ride_cancelled",
        }
    }

    /// The inverse of [`EventKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The inverse of `self as u8`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).wrapping_sub(1)).copied()
    }
}

/// What happened, with the fields only that kind has. Ids are never 0; 0 means "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    /// A location ping; the event's position is the driver's.
    DriverPing {
        /// The driver.
        driver_id: u32,
        /// Ground speed in centimetres per second.
        speed_cmps: u16,
        /// Heading in centidegrees clockwise from north, below 36000.
        heading_cdeg: u16,
    },
    /// A ride request; the event's position is the pickup point.
    RideRequested {
        /// The ride.
        ride_id: u64,
        /// The rider.
        rider_id: u32,
    },
    /// A driver accepted; the event's position is the driver's.
    RideAccepted {
        /// The ride.
        ride_id: u64,
        /// The driver.
        driver_id: u32,
        /// The rider.
        rider_id: u32,
    },
    /// The driver is at the pickup point.
    DriverArrived {
        /// The ride.
        ride_id: u64,
        /// The driver.
        driver_id: u32,
    },
    /// The rider is in the car; the event's position is the pickup point.
    PickedUp {
        /// The ride.
        ride_id: u64,
        /// The driver.
        driver_id: u32,
    },
    /// The trip ended; the event's position is the drop-off point.
    DroppedOff {
        /// The ride.
        ride_id: u64,
        /// The driver.
        driver_id: u32,
        /// The fare in cents.
        fare_cents: u32,
        /// The trip distance in metres.
        distance_m: u32,
    },
    /// The ride was cancelled before pickup.
    RideCancelled {
        /// The ride.
        ride_id: u64,
        /// The rider.
        rider_id: u32,
        /// The driver who had accepted, or 0 when none had.
        driver_id: u32,
        /// Who cancelled.
        by: CancelledBy,
    },
}

impl Payload {
    /// The kind of this payload.
    pub fn kind(&self) -> EventKind {
        match self {
            Payload::DriverPing { .. } => EventKind::DriverPing,
            Payload::RideRequested { .. } => EventKind::RideRequested,
            Payload::RideAccepted { .. } => EventKind::RideAccepted,
            Payload::DriverArrived { .. } => EventKind::DriverArrived,
            Payload::PickedUp { .. } => EventKind::PickedUp,
            Payload::DroppedOff { .. } => EventKind::DroppedOff,
            Payload::RideCancelled { .. } => EventKind::RideCancelled,
        }
    }

    /// The driver this event is about, if any.
    pub fn driver_id(&self) -> Option<u32> {
        let id = match *self {
            Payload::DriverPing { driver_id, .. }
            | Payload::RideAccepted { driver_id, .. }
            | Payload::DriverArrived { driver_id, .. }
            | Payload::PickedUp { driver_id, .. }
            | Payload::DroppedOff { driver_id, .. }
            | Payload::RideCancelled { driver_id, .. } => driver_id,
            Payload::RideRequested { .. } => 0,
        };
        (id != 0).then_some(id)
    }

    /// The ride this event is about, if any.
    pub fn ride_id(&self) -> Option<u64> {
        match *self {
            Payload::DriverPing { .. } => None,
            Payload::RideRequested { ride_id, .. }
            | Payload::RideAccepted { ride_id, .. }
            | Payload::DriverArrived { ride_id, .. }
            | Payload::PickedUp { ride_id, .. }
            | Payload::DroppedOff { ride_id, .. }
            | Payload::RideCancelled { ride_id, .. } => Some(ride_id),
        }
    }
}

/// One ride-sharing event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Unique per generated event, never 0; a re-sent duplicate carries the original's id.
    pub event_id: u64,
    /// When it happened, in microseconds since the Unix epoch (as the device's clock says).
    pub event_time_us: i64,
    /// When the open-loop generator was due to send it, in nanoseconds since the run's start.
    pub due_ns: u64,
    /// The H3 cell of `position`.
    pub zone: Zone,
    /// Where it happened.
    pub position: LatLon,
    /// What happened.
    pub payload: Payload,
}

impl Event {
    /// A placeholder that buffers are sized with before events are written over it.
    pub const BLANK: Event = Event {
        event_id: 0,
        event_time_us: 0,
        due_ns: 0,
        zone: Zone(0),
        position: LatLon { lat_e6: 0, lon_e6: 0 },
        payload: Payload::DriverPing { driver_id: 0, speed_cmps: 0, heading_cdeg: 0 },
    };

    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }
}

/// How a malformed event is broken, as a faulty producer would break it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Defect {
    /// Not decodable at all: truncated JSON, or a binary record with a bad version byte.
    Garbled,
    /// A required field is absent (JSON) or zero (binary `event_id`).
    MissingField,
    /// The coordinates are off the globe.
    OutOfRange,
    /// The kind is not one this platform knows.
    UnknownKind,
}

impl Defect {
    /// Every defect, in the order the generator cycles through them.
    pub const ALL: [Defect; 4] = [Defect::Garbled, Defect::MissingField, Defect::OutOfRange, Defect::UnknownKind];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Defect::Garbled => "garbled",
            Defect::MissingField => "missing_field",
            Defect::OutOfRange => "out_of_range",
            Defect::UnknownKind => "unknown_kind",
        }
    }
}

/// A batch of events in emission (arrival) order, with the few that are malformed marked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventBatch {
    /// The events, in the order they are sent.
    pub events: Vec<Event>,
    /// `(index into events, defect)` for malformed events, in increasing index order.
    pub defects: Vec<(u32, Defect)>,
}

impl EventBatch {
    /// An empty batch with room for `capacity` events.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { events: Vec::with_capacity(capacity), defects: Vec::new() }
    }

    /// Number of events, malformed ones included.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.events.clear();
        self.defects.clear();
    }

    /// The defect of the event at `index`, if it is malformed.
    pub fn defect_of(&self, index: usize) -> Option<Defect> {
        self.defects.binary_search_by_key(&(index as u32), |&(i, _)| i).ok().map(|position| self.defects[position].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Event>(), 64);
    }

    #[test]
    fn kind_names_and_codes_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
            assert_eq!(EventKind::from_code(kind as u8), Some(kind));
        }
        assert_eq!(EventKind::from_code(0), None);
        assert_eq!(EventKind::from_code(8), None);
        assert_eq!(EventKind::from_name("teleport"), None);
    }
}
