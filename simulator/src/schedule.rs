//! The open-loop schedule: when event *i* is due, whatever happens downstream.
//!
//! `due(i)` depends only on the scenario's rate and shape, never on how fast anything actually
//! ran, so that a stalled generator or a slow consumer cannot hide its delay (coordinated
//! omission). The same function maps generation slots to event time, scaled by the scenario's
//! time compression.

use crate::shard::{derive_seed, mix64};
use crate::workload::{Burstiness, LiveOverloads, Overload, RateShape, RunSettings};

/// Fraction bits of the fixed-point factors that turn indices into times: one integer multiply
/// per event, exact to a nanosecond over 2^40 events, with room for any validated rate.
pub(crate) const FIXED_BITS: u32 = 40;
/// 1.0 in that fixed point.
pub(crate) const FIXED_ONE: f64 = (1u64 << FIXED_BITS) as f64;

/// Events per block over which a varying rate is held constant.
const BLOCK_EVENTS: u64 = 4096;

/// Maps event indices to due times. Cheap when indices are asked for in increasing order (the
/// only order the generator uses); asking for an earlier index restarts the walk from 0.
#[derive(Debug, Clone)]
pub struct Schedule {
    base_rate_eps: f64,
    shape: RateShape,
    /// Overload faults: (start s, end s, factor).
    overloads: Vec<(f64, f64, f64)>,
    /// Overloads added while the run runs.
    live: LiveOverloads,
    /// Random swings of the rate.
    swings: Option<Swings>,
    /// Nanoseconds per event in fixed point, for the constant rate.
    ns_per_event_fixed: u128,
    /// For shaped rates: the current block, its first due time and its rate.
    block_index: u64,
    block_start_ns: f64,
    block_ns_per_event: f64,
}

impl Schedule {
    /// The schedule of a run whose root seed is `seed` (which seeds its swings).
    pub fn new(run: &RunSettings, seed: u64) -> Self {
        let mut schedule = Self::with_overloads(run.rate_eps, run.rate_shape, &run.overloads);
        schedule.live = run.live_overloads.clone();
        schedule.swings = run.burstiness.map(|burstiness| Swings::new(burstiness, derive_seed(seed, 5)));
        schedule.block_ns_per_event = 1e9 / schedule.rate_at(0.0);
        schedule
    }

    /// A schedule at `base_rate_eps` with `shape`, multiplied during `overloads`.
    pub fn with_overloads(base_rate_eps: f64, shape: RateShape, overloads: &[Overload]) -> Self {
        let mut schedule = Self::with_rate(base_rate_eps, shape);
        schedule.overloads = overloads
            .iter()
            .map(|overload| {
                let start = overload.at.as_secs_f64();
                (start, start + overload.duration.as_secs_f64(), overload.factor)
            })
            .collect();
        schedule.block_ns_per_event = 1e9 / schedule.rate_at(0.0);
        schedule
    }

    /// A schedule at `base_rate_eps` with `shape`.
    pub fn with_rate(base_rate_eps: f64, shape: RateShape) -> Self {
        assert!(base_rate_eps > 0.0, "the scenario validates rates");
        let mut schedule = Self {
            base_rate_eps,
            shape,
            overloads: Vec::new(),
            live: LiveOverloads::default(),
            swings: None,
            ns_per_event_fixed: (1e9 / base_rate_eps * FIXED_ONE) as u128,
            block_index: 0,
            block_start_ns: 0.0,
            block_ns_per_event: 0.0,
        };
        schedule.block_ns_per_event = 1e9 / schedule.rate_at(0.0);
        schedule
    }

    /// The target rate at `seconds` into the run.
    pub fn rate_at(&self, seconds: f64) -> f64 {
        let overload: f64 = self
            .overloads
            .iter()
            .filter(|(start, end, _)| (*start..*end).contains(&seconds))
            .map(|(_, _, factor)| factor)
            .product();
        let swing = self.swings.as_ref().map_or(1.0, |swings| swings.factor_at(seconds));
        overload * self.live.factor_at(seconds) * swing * self.shaped_rate_at(seconds)
    }

    fn shaped_rate_at(&self, seconds: f64) -> f64 {
        let base = self.base_rate_eps;
        match self.shape {
            RateShape::Constant => base,
            RateShape::Step { at, factor } => {
                if seconds >= at.as_secs_f64() {
                    base * factor
                } else {
                    base
                }
            }
            RateShape::Sine { period, amplitude } => {
                base * (1.0 + amplitude * (std::f64::consts::TAU * seconds / period.as_secs_f64()).sin())
            }
            RateShape::Burst { every, length, factor } => {
                if seconds % every.as_secs_f64() < length.as_secs_f64() {
                    base * factor
                } else {
                    base
                }
            }
        }
    }

    /// When event `index` is due, in nanoseconds since the run's start.
    #[inline]
    pub fn due_ns(&mut self, index: u64) -> u64 {
        match self.constant_ns_per_event_fixed() {
            Some(ns_per_event_fixed) => ((u128::from(index) * ns_per_event_fixed) >> FIXED_BITS) as u64,
            None => self.shaped_due_ns(index),
        }
    }

    /// Due times of `first`, `first + 1`, ... in order: the values `due_ns` gives, one addition
    /// apart at a constant rate instead of a multiplication each.
    pub fn due_times(&mut self, first: u64) -> DueTimes<'_> {
        let walk = DueWalk::new(self, first, 1);
        DueTimes { schedule: self, walk }
    }

    #[inline]
    fn constant_ns_per_event_fixed(&self) -> Option<u128> {
        (matches!(self.shape, RateShape::Constant)
            && self.overloads.is_empty()
            && self.swings.is_none()
            && !self.live.is_on())
        .then_some(self.ns_per_event_fixed)
    }

    #[inline(never)]
    fn shaped_due_ns(&mut self, index: u64) -> u64 {
        let (start_ns, ns_per_event) = self.block(index / BLOCK_EVENTS);
        (start_ns + (index % BLOCK_EVENTS) as f64 * ns_per_event) as u64
    }

    /// The first due time of block `block` and its nanoseconds per event.
    #[inline(never)]
    fn block(&mut self, block: u64) -> (f64, f64) {
        if block < self.block_index {
            let (overloads, swings, live) =
                (std::mem::take(&mut self.overloads), self.swings.take(), std::mem::take(&mut self.live));
            *self = Self::with_rate(self.base_rate_eps, self.shape);
            self.overloads = overloads;
            self.swings = swings;
            self.live = live;
            self.block_ns_per_event = 1e9 / self.rate_at(0.0);
        }
        while self.block_index < block {
            self.block_start_ns += BLOCK_EVENTS as f64 * self.block_ns_per_event;
            self.block_index += 1;
            self.block_ns_per_event = 1e9 / self.rate_at(self.block_start_ns / 1e9);
        }
        (self.block_start_ns, self.block_ns_per_event)
    }
}

/// The rate's random swings: a multiplier `exp(σ X(t) − σ²/2)` with X a unit Gaussian drawn
/// at knots `correlation` apart and interpolated linearly between them, scaled back to unit
/// variance (`(1 − w) a + w b` has variance `(1 − w)² + w²`), so the multiplier is log-normal
/// with mean 1 and coefficient of variation `cv` at every instant. A function of (seed, t):
/// every shard's copy of the schedule agrees without sharing state.
#[derive(Debug, Clone, Copy)]
struct Swings {
    sigma: f64,
    knot_s: f64,
    seed: u64,
}

impl Swings {
    fn new(burstiness: Burstiness, seed: u64) -> Self {
        let sigma = (1.0 + burstiness.cv * burstiness.cv).ln().sqrt();
        Self { sigma, knot_s: burstiness.correlation.as_secs_f64(), seed }
    }

    fn factor_at(&self, seconds: f64) -> f64 {
        let position = seconds.max(0.0) / self.knot_s;
        let knot = position.floor();
        let weight = position - knot;
        let (a, b) = (self.knot_value(knot as u64), self.knot_value(knot as u64 + 1));
        let x = ((1.0 - weight) * a + weight * b) / ((1.0 - weight).powi(2) + weight * weight).sqrt();
        (self.sigma * x - self.sigma * self.sigma / 2.0).exp()
    }

    /// A unit Gaussian for knot `index` (Box-Muller from two mixes of its bits).
    fn knot_value(&self, index: u64) -> f64 {
        let bits = mix64(self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let u1 = ((bits >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
        let u2 = (mix64(bits) >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// An increasing run of due times; see [`Schedule::due_times`].
#[derive(Debug)]
pub struct DueTimes<'a> {
    schedule: &'a mut Schedule,
    walk: DueWalk,
}

impl Iterator for DueTimes<'_> {
    type Item = u64;

    #[inline]
    fn next(&mut self) -> Option<u64> {
        Some(self.walk.next(self.schedule))
    }
}

/// The due times of events `first`, `first + stride`, `first + 2 * stride`, ... of a schedule,
/// kept apart from it (a shard walks its own events' due times beside the schedule it owns): at
/// a constant rate, one addition apart instead of a multiplication each.
#[derive(Clone, Debug)]
pub(crate) struct DueWalk {
    index: u64,
    stride: u64,
    /// At a constant rate: the current index times the step, and the stride times the step, in
    /// fixed point.
    fixed: Option<(u128, u128)>,
    /// At a varying rate: the block the last index was in, its first due time and its step, so
    /// that only a new block asks the schedule (the same values `due_ns` computes).
    block: (u64, f64, f64),
}

impl DueWalk {
    pub fn new(schedule: &Schedule, first: u64, stride: u64) -> Self {
        let fixed =
            schedule.constant_ns_per_event_fixed().map(|step| (u128::from(first) * step, u128::from(stride) * step));
        Self { index: first, stride, fixed, block: (u64::MAX, 0.0, 0.0) }
    }

    /// The next due time, of `schedule` (the one the walk was made from).
    #[inline]
    pub fn next(&mut self, schedule: &mut Schedule) -> u64 {
        let due = match &mut self.fixed {
            Some((product, step)) => {
                let due = (*product >> FIXED_BITS) as u64;
                *product += *step;
                due
            }
            None => {
                let block = self.index / BLOCK_EVENTS;
                if block != self.block.0 {
                    let (start_ns, ns_per_event) = schedule.block(block);
                    self.block = (block, start_ns, ns_per_event);
                }
                (self.block.1 + (self.index % BLOCK_EVENTS) as f64 * self.block.2) as u64
            }
        };
        self.index += self.stride;
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_times_walks_the_same_values_as_due_ns() {
        let shapes = [
            RateShape::Constant,
            RateShape::Sine { period: Duration::from_secs(2), amplitude: 0.5 },
            RateShape::Step { at: Duration::from_millis(5), factor: 3.0 },
        ];
        for shape in shapes {
            let mut walked = Schedule::with_rate(1_000_000.0 / 3.0, shape);
            let mut reference = Schedule::with_rate(1_000_000.0 / 3.0, shape);
            let first = 12_345;
            for (offset, due) in walked.due_times(first).take(20_000).enumerate() {
                assert_eq!(due, reference.due_ns(first + offset as u64), "{shape:?} at {offset}");
            }
            for stride in [3, 8, 256] {
                let mut walk = DueWalk::new(&walked, first, stride);
                for step in 0..5_000 {
                    let due = walk.next(&mut walked);
                    assert_eq!(due, reference.due_ns(first + step * stride), "{shape:?}, stride {stride}, at {step}");
                }
            }
        }
    }

    #[test]
    fn constant_rate_is_exact() {
        let mut schedule = Schedule::with_rate(1_000_000.0, RateShape::Constant);
        assert_eq!(schedule.due_ns(0), 0);
        assert_eq!(schedule.due_ns(1), 1000);
        assert_eq!(schedule.due_ns(60_000_000), 60_000_000_000);
    }

    #[test]
    fn a_step_doubles_the_rate_after_it() {
        let mut schedule = Schedule::with_rate(100_000.0, RateShape::Step { at: Duration::from_secs(1), factor: 2.0 });
        let after_one_second = schedule.due_ns(100_000 + BLOCK_EVENTS);
        let later = schedule.due_ns(300_000 + BLOCK_EVENTS);
        // 200k events in the second after the step: 1 s, give or take a block held at the old rate.
        let seconds = (later - after_one_second) as f64 / 1e9;
        assert!((seconds - 1.0).abs() < 0.01, "{seconds}");
    }

    #[test]
    fn shaped_schedules_restart_when_asked_for_an_earlier_index() {
        let shape = RateShape::Sine { period: Duration::from_secs(10), amplitude: 0.5 };
        let mut forward = Schedule::with_rate(50_000.0, shape);
        let late = forward.due_ns(1_000_000);
        let early = forward.due_ns(10);
        let mut fresh = Schedule::with_rate(50_000.0, shape);
        assert_eq!(early, fresh.due_ns(10));
        assert_eq!(late, fresh.due_ns(1_000_000));
    }

    #[test]
    fn an_overload_multiplies_the_rate_for_its_period_only() {
        let overload = Overload { at: Duration::from_secs(1), duration: Duration::from_secs(1), factor: 3.0 };
        let mut schedule = Schedule::with_overloads(100_000.0, RateShape::Constant, &[overload]);
        let seconds =
            |schedule: &mut Schedule, from: u64, to: u64| (schedule.due_ns(to) - schedule.due_ns(from)) as f64 / 1e9;
        // 100k events in the first second, 300k in the second, then 100k a second again.
        assert!((schedule.due_ns(100_000) as f64 / 1e9 - 1.0).abs() < 0.05);
        assert!((seconds(&mut schedule, 100_000 + BLOCK_EVENTS, 400_000) - 1.0).abs() < 0.05);
        assert!((seconds(&mut schedule, 400_000 + BLOCK_EVENTS, 500_000 + BLOCK_EVENTS) - 1.0).abs() < 0.05);
    }

    #[test]
    fn an_overload_added_live_before_its_blocks_are_walked_is_the_files_overload() {
        let overload = Overload { at: Duration::from_secs(1), duration: Duration::from_secs(1), factor: 3.0 };
        let mut file = Schedule::with_overloads(100_000.0, RateShape::Constant, &[overload]);
        let mut live = Schedule::with_rate(100_000.0, RateShape::Constant);
        live.live = LiveOverloads::on();
        assert!(live.constant_ns_per_event_fixed().is_none(), "a live schedule walks blocks");
        let mut walk = DueWalk::new(&live, 0, 1);
        // Half a second walked at the base rate, then the overload arrives for the second after.
        let early: Vec<u64> = (0..50_000).map(|_| walk.next(&mut live)).collect();
        assert!(live.live.add(overload));
        let later: Vec<u64> = (0..400_000).map(|_| walk.next(&mut live)).collect();
        let expected: Vec<u64> = (0..450_000).map(|index| file.due_ns(index)).collect();
        assert_eq!([early, later].concat(), expected);
        assert!(!LiveOverloads::default().add(overload), "off unless asked for");
    }

    /// Swings change the rate from second to second by about the configured coefficient of
    /// variation, keep its mean, and are the same for the same seed.
    #[test]
    fn swings_vary_the_rate_within_seconds_around_its_mean() {
        let run = |seed| {
            let workload = crate::workload::Workload::from_toml(
                "[run]\nrate_eps = 100000\n[run.burstiness]\ncv = 0.3\ncorrelation = \"500ms\"",
                "t",
            )
            .unwrap();
            let mut schedule = Schedule::new(&workload.run, seed);
            // Events per second over 600 s.
            let mut counts = vec![0u64; 600];
            let mut index = 0;
            loop {
                let second = (schedule.due_ns(index) / 1_000_000_000) as usize;
                if second >= counts.len() {
                    break;
                }
                counts[second] += 1;
                index += 1;
            }
            counts
        };
        let counts = run(1);
        let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
        let cv = (counts.iter().map(|&count| (count as f64 - mean).powi(2)).sum::<f64>() / counts.len() as f64).sqrt()
            / mean;
        assert!((mean / 100_000.0 - 1.0).abs() < 0.05, "mean {mean}");
        // A second averages two knots' swings: less than the instantaneous 0.3, far more than
        // an even schedule's 0 or Poisson's 0.003.
        assert!((0.12..0.3).contains(&cv), "cv {cv}");
        assert_eq!(counts, run(1));
        assert_ne!(counts, run(2));
        // Without swings the rate is even.
        let even =
            Schedule::new(&crate::workload::Workload::from_toml("[run]\nrate_eps = 100000", "t").unwrap().run, 1);
        assert!(even.constant_ns_per_event_fixed().is_some());
    }

    #[test]
    fn bursts_pack_more_events_into_the_burst() {
        let shape = RateShape::Burst { every: Duration::from_secs(10), length: Duration::from_secs(1), factor: 5.0 };
        let mut schedule = Schedule::with_rate(100_000.0, shape);
        // First second bursts at 500k/s: event 400k is due well within it.
        assert!(schedule.due_ns(400_000) < 1_000_000_000);
    }
}
