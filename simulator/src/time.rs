//! Time: the injected clock and human-readable durations.
//!
//! Nothing in lk reads the wall clock directly: pacing, measurement and the engines ask a
//! [`Clock`]. The real one ([`MonotonicClock`]) counts from its creation; the simulated one
//! ([`SimulatedClock`]) only moves when it is told to or when someone sleeps on it, so tests run
//! paced code instantly and repeatably.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic time in nanoseconds since some fixed origin.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the clock's origin; never decreases.
    fn now_ns(&self) -> u64;
    /// Blocks until `now_ns() >= deadline_ns` (returns at once if it already is).
    fn sleep_until_ns(&self, deadline_ns: u64);
}

/// The real clock: `Instant` since creation.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    #[allow(clippy::disallowed_methods, reason = "the monotonic clock is the one place that reads it")]
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn sleep_until_ns(&self, deadline_ns: u64) {
        let now = self.now_ns();
        if deadline_ns > now {
            std::thread::sleep(Duration::from_nanos(deadline_ns - now));
        }
    }
}

/// A clock that moves only when advanced or slept on: sleeping jumps to the deadline.
#[derive(Debug, Default)]
pub struct SimulatedClock {
    now_ns: AtomicU64,
}

impl SimulatedClock {
    /// A clock at 0.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Moves the clock forward by `delta_ns`.
    pub fn advance_ns(&self, delta_ns: u64) {
        self.now_ns.fetch_add(delta_ns, Ordering::SeqCst);
    }
}

impl Clock for SimulatedClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }

    fn sleep_until_ns(&self, deadline_ns: u64) {
        self.now_ns.fetch_max(deadline_ns, Ordering::SeqCst);
    }
}

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration; write a number and a unit, such as \"250ms\", \"90s\", \"5m\" or \"2h\"")]
pub struct DurationError {
    /// The text that was given.
    pub text: String,
}

/// Parses durations such as `"250ms"`, `"1.5s"`, `"90s"`, `"5m"`, `"2h"`, `"1d"`, `"0s"`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let error = || DurationError { text: text.to_owned() };
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(error)?;
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| error())?;
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(error()),
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || !(0.0..=1.0e9).contains(&seconds) {
        return Err(error());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest exact unit.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    for (unit, size) in
        [("d", 86_400_000_000u128), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000)]
    {
        if micros >= size && micros.is_multiple_of(size) {
            return format!("{}{unit}", micros / size);
        }
    }
    if micros == 0 { "0s".to_owned() } else { format!("{micros}us") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5 parsecs", "-3s", "1e400s", "fast"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn durations_format_back_to_what_parses() {
        for text in ["90s", "5m", "2h", "1d", "250ms", "0s", "7us"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn simulated_clock_jumps_on_sleep_and_never_goes_back() {
        let clock = SimulatedClock::new();
        clock.sleep_until_ns(500);
        assert_eq!(clock.now_ns(), 500);
        clock.sleep_until_ns(100);
        assert_eq!(clock.now_ns(), 500);
        clock.advance_ns(10);
        assert_eq!(clock.now_ns(), 510);
    }
}
