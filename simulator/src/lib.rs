//! The lk ride-event simulator.
//!
//! A scenario file's workload sections ([`workload`]) describe a city, its fleet and riders, and the disorder of the
//! stream (lateness, duplicates, malformed events, clock skew). The [`generator`] turns it into a
//! deterministic stream of [`event::Event`]s in batches, stamped with open-loop due times
//! ([`schedule`]); [`codec`] writes and reads them as JSON or fixed 64-byte records; [`simulate`]
//! paces a run into a sink and reports its digest.
//!
//! **Architecture Invariant:** one root seed determines the stream, bit for bit, whatever the
//! thread count and the pacing. Nothing here reads the wall clock except through [`time::Clock`].
//!
//! **API Boundary:** engines see events, batches, the codecs and the clock; they never see
//! shards, drivers or rides (the simulator's internal state).

pub mod city;
pub mod codec;
pub mod event;
pub mod generator;
pub mod hint;
pub mod land;
pub mod late_bursts;
mod new_york;
pub mod profile;
mod reorder;
pub mod schedule;
pub mod settings;
mod shard;
pub mod simulate;
pub mod time;
mod timers;
pub mod workload;

pub use event::{Defect, Event, EventBatch, EventKind, LatLon, Payload, Zone};
pub use generator::{Generator, GeneratorOptions, InjectedCounts};
pub use shard::{LatenessModel, derive_seed, mix64};
pub use workload::Workload;
