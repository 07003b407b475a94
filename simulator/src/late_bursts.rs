//! Late bursts: periods when a share of the city's phones lose their signal at once (a cell
//! network failing, a tunnel, a stadium's crowd), and what they record meanwhile arrives in one
//! burst when the period ends. The `late-burst` fault; `lk demo` adds one while the run runs.
//!
//! A burst is set in the run's time (`at`, `duration`, as the other faults) and applies to
//! events by their event time, so the stream stays a function of the seed and the bursts: the
//! phones it silences are drawn from the seed, the burst's index and the phone, and a burst
//! added live lands in the stream exactly as the same burst in `[[faults]]` would, provided it
//! starts after the events the generator has already made (`lk demo` starts one half a second
//! ahead).
//!
//! The bursts are shared between the shards and whoever adds them: a fixed table of atomics,
//! filled in order, whose length is published last. A generator with no bursts pays one load
//! per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::shard::mix64;

/// The most bursts a run can hold.
pub const MAX_LATE_BURSTS: usize = 64;

/// One late burst, in the run's time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LateBurst {
    /// When it starts, since the run's start.
    pub at: Duration,
    /// How long the phones stay silent.
    pub duration: Duration,
    /// The share of phones silenced, in (0, 1].
    pub share: f64,
}

#[derive(Debug, Default)]
struct Slot {
    from_us: AtomicI64,
    until_us: AtomicI64,
    /// The share, as a threshold on a phone's 64-bit hash.
    threshold: AtomicU64,
    at_ns: AtomicU64,
    duration_ns: AtomicU64,
}

#[derive(Debug)]
struct Table {
    /// Event time of the run's start, µs, and event seconds per run second: a burst's run time
    /// to its event time.
    start_us: i64,
    compression: f64,
    /// Whether bursts may be added while the run runs (the stream must then be reordered even
    /// without any lateness of its own).
    live: bool,
    len: AtomicUsize,
    slots: [Slot; MAX_LATE_BURSTS],
}

/// The run's late bursts (see the module's documentation). Cloning shares them.
#[derive(Clone, Debug)]
pub struct LateBursts(Arc<Table>);

impl Default for LateBursts {
    fn default() -> Self {
        Self::new(0, 1.0, false)
    }
}

impl PartialEq for LateBursts {
    fn eq(&self, other: &Self) -> bool {
        self.0.live == other.0.live && self.list() == other.list()
    }
}

/// Too many bursts for the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyBursts;

impl std::fmt::Display for TooManyBursts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "a run holds at most {MAX_LATE_BURSTS} late bursts")
    }
}

impl LateBursts {
    /// No bursts yet, for a run that starts at event time `start_us` and runs `compression`
    /// event seconds per second; `live` when bursts may come while it runs.
    pub fn new(start_us: i64, compression: f64, live: bool) -> Self {
        Self(Arc::new(Table {
            start_us,
            compression,
            live,
            len: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| Slot::default()),
        }))
    }

    /// Adds a burst. Bursts are added by one thread at a time (the harness's).
    pub fn add(&self, burst: LateBurst) -> Result<(), TooManyBursts> {
        let table = &*self.0;
        let index = table.len.load(Ordering::Acquire);
        let slot = table.slots.get(index).ok_or(TooManyBursts)?;
        let event_us = |run: Duration| table.start_us + (run.as_secs_f64() * table.compression * 1e6) as i64;
        slot.from_us.store(event_us(burst.at), Ordering::Relaxed);
        slot.until_us.store(event_us(burst.at + burst.duration), Ordering::Relaxed);
        slot.threshold.store((burst.share.clamp(0.0, 1.0) * u64::MAX as f64) as u64, Ordering::Relaxed);
        slot.at_ns.store(burst.at.as_nanos() as u64, Ordering::Relaxed);
        slot.duration_ns.store(burst.duration.as_nanos() as u64, Ordering::Relaxed);
        table.len.store(index + 1, Ordering::Release);
        Ok(())
    }

    /// Whether any event may be held back by a burst: some are set, or may be set live.
    pub fn possible(&self) -> bool {
        self.0.live || self.0.len.load(Ordering::Acquire) > 0
    }

    /// Whether bursts may be added while the run runs.
    pub fn is_live(&self) -> bool {
        self.0.live
    }

    /// The bursts so far.
    pub fn list(&self) -> Vec<LateBurst> {
        let table = &*self.0;
        table.slots[..table.len.load(Ordering::Acquire)]
            .iter()
            .map(|slot| LateBurst {
                at: Duration::from_nanos(slot.at_ns.load(Ordering::Relaxed)),
                duration: Duration::from_nanos(slot.duration_ns.load(Ordering::Relaxed)),
                share: slot.threshold.load(Ordering::Relaxed) as f64 / u64::MAX as f64,
            })
            .collect()
    }

    /// When the event of `phone` (see `offline_phone_of`) that happened at `time_us` is sent, if
    /// a burst silences that phone then: the end of the latest such burst, event time, µs.
    /// `seed` chooses the phones.
    #[inline]
    pub fn reconnect_us(&self, seed: u64, phone: u64, time_us: i64) -> Option<i64> {
        let table = &*self.0;
        let len = table.len.load(Ordering::Acquire);
        if len == 0 {
            return None;
        }
        let mut reconnect = None;
        for (index, slot) in table.slots[..len].iter().enumerate() {
            let from_us = slot.from_us.load(Ordering::Relaxed);
            let until_us = slot.until_us.load(Ordering::Relaxed);
            if !(from_us..until_us).contains(&time_us) {
                continue;
            }
            let silenced = mix64(seed ^ phone ^ mix64(index as u64)) <= slot.threshold.load(Ordering::Relaxed);
            if silenced {
                reconnect = Some(reconnect.map_or(until_us, |at: i64| at.max(until_us)));
            }
        }
        reconnect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_silences_its_share_of_phones_for_its_period_in_event_time() {
        // Thirty event seconds per run second, from event time 1e12 µs.
        let bursts = LateBursts::new(1_000_000_000_000, 30.0, false);
        assert!(!bursts.possible());
        let burst = LateBurst { at: Duration::from_secs(2), duration: Duration::from_secs(1), share: 0.25 };
        bursts.add(burst).expect("room");
        assert!(bursts.possible());
        assert_eq!(bursts.list(), vec![burst]);
        let (from, until) = (1_000_000_000_000 + 60_000_000, 1_000_000_000_000 + 90_000_000);
        let silenced = (0..100_000u64).filter(|&phone| bursts.reconnect_us(7, phone, from + 1).is_some()).count();
        assert!((23_000..27_000).contains(&silenced), "{silenced} of 100000 phones silenced at a share of 0.25");
        let phone = (0..100u64).find(|&phone| bursts.reconnect_us(7, phone, from).is_some()).expect("some phone");
        assert_eq!(bursts.reconnect_us(7, phone, until - 1), Some(until), "sent when the burst ends");
        assert_eq!(bursts.reconnect_us(7, phone, from - 1), None, "before it");
        assert_eq!(bursts.reconnect_us(7, phone, until), None, "after it");
        // The same seed silences the same phones; another seed others.
        let chosen = |seed| (0..1000u64).filter(|&phone| bursts.reconnect_us(seed, phone, from).is_some()).collect();
        let (first, again, other): (Vec<u64>, Vec<u64>, Vec<u64>) = (chosen(7), chosen(7), chosen(8));
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn a_live_table_is_possible_before_any_burst_and_full_at_its_size() {
        let bursts = LateBursts::new(0, 1.0, true);
        assert!(bursts.possible());
        let burst = LateBurst { at: Duration::ZERO, duration: Duration::from_secs(1), share: 1.0 };
        for _ in 0..MAX_LATE_BURSTS {
            bursts.add(burst).expect("room");
        }
        assert_eq!(bursts.add(burst), Err(TooManyBursts));
        assert_eq!(bursts.reconnect_us(1, 5, 10), Some(1_000_000), "a share of 1 silences every phone");
    }
}
