//! The rides' timers: a timing wheel that pops in exactly a binary heap's order.
//!
//! A ride schedules a handful of transitions (dispatch, arrival, pickup, drop-off, cancels)
//! seconds to minutes ahead. At rush hour hundreds of thousands are pending; as a binary heap
//! that is megabytes, and every pop walks it from root to leaf through cache misses (about a
//! microsecond, a tenth of the clean generator's time for one pop per hundred events). Here a
//! timer goes into the bucket of its due time in O(1); a bucket is sorted when generation reaches
//! it, and only timers beyond the wheel's horizon wait in a (small) heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Something due at a time, totally ordered with the due time first.
pub(crate) trait Timed: Ord + Copy {
    /// When it is due, µs.
    fn at_us(&self) -> i64;
}

/// Timers in buckets of `width_us`, `buckets` of them ahead of the one being popped.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    origin_us: i64,
    width_us: i64,
    buckets: Vec<Vec<T>>,
    /// Absolute number of the next bucket to move into `ready`.
    next_bucket: i64,
    /// Every timer of a bucket before `next_bucket`, sorted descending (the next one is last).
    ready: Vec<T>,
    overflow: BinaryHeap<Reverse<T>>,
    len: usize,
}

impl<T: Timed> TimerWheel<T> {
    /// A wheel of `buckets` (a power of two) buckets `width_us` wide, starting at `origin_us`.
    pub fn new(origin_us: i64, width_us: i64, buckets: usize) -> Self {
        assert!(buckets.is_power_of_two() && width_us > 0);
        Self {
            origin_us,
            width_us,
            buckets: (0..buckets).map(|_| Vec::new()).collect(),
            next_bucket: 0,
            ready: Vec::new(),
            overflow: BinaryHeap::new(),
            len: 0,
        }
    }

    /// Timers pending.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    fn bucket_of(&self, at_us: i64) -> i64 {
        (at_us - self.origin_us).div_euclid(self.width_us)
    }

    /// Adds a timer, due at any time (even before the last `pop_due`'s `now_us`).
    #[inline]
    pub fn push(&mut self, timer: T) {
        self.len += 1;
        let bucket = self.bucket_of(timer.at_us());
        if bucket < self.next_bucket {
            let position = self.ready.partition_point(|waiting| *waiting > timer);
            self.ready.insert(position, timer);
        } else if bucket - self.next_bucket < self.buckets.len() as i64 {
            let mask = self.buckets.len() - 1;
            self.buckets[bucket as usize & mask].push(timer);
        } else {
            self.overflow.push(Reverse(timer));
        }
    }

    /// The timer that `pop_due` returns `ahead` pops from now, if it is already in the bucket
    /// being popped (a later bucket's order is not known until it is opened).
    #[inline]
    pub fn upcoming(&self, ahead: usize) -> Option<&T> {
        self.ready.len().checked_sub(ahead + 1).map(|at| &self.ready[at])
    }

    /// Removes and returns the first timer in order if it is due by `now_us`.
    #[inline]
    pub fn pop_due(&mut self, now_us: i64) -> Option<T> {
        loop {
            if let Some(next) = self.ready.last() {
                if next.at_us() > now_us {
                    return None;
                }
                self.len -= 1;
                return self.ready.pop();
            }
            if self.len == 0 {
                // Nothing pending: skip the empty buckets up to now in one step.
                self.next_bucket = self.next_bucket.max(self.bucket_of(now_us));
                return None;
            }
            if self.origin_us + self.next_bucket * self.width_us > now_us {
                return None;
            }
            self.open_next_bucket();
        }
    }

    /// Moves the next bucket, and the overflow's timers that fall in it, into `ready`.
    #[cold]
    fn open_next_bucket(&mut self) {
        let end_us = self.origin_us + (self.next_bucket + 1) * self.width_us;
        let mask = self.buckets.len() - 1;
        let bucket = &mut self.buckets[self.next_bucket as usize & mask];
        std::mem::swap(&mut self.ready, bucket);
        while let Some(Reverse(head)) = self.overflow.peek() {
            if head.at_us() >= end_us {
                break;
            }
            let Reverse(head) = self.overflow.pop().expect("peeked");
            self.ready.push(head);
        }
        self.ready.sort_unstable_by(|a, b| b.cmp(a));
        self.next_bucket += 1;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Timer(i64, u64);

    impl Timed for Timer {
        fn at_us(&self) -> i64 {
            self.0
        }
    }

    proptest! {
        /// Whatever is scheduled when, the wheel pops exactly what a binary heap pops, and the
        /// timers it says are upcoming are the ones it pops next.
        #[test]
        fn pops_what_a_heap_pops(
            steps in proptest::collection::vec((0i64..40, proptest::collection::vec(-5i64..3_000, 0..4)), 1..300),
        ) {
            let mut wheel = TimerWheel::new(1_000, 16, 8);
            let mut heap = BinaryHeap::new();
            let mut now = 1_000;
            let mut sequence = 0;
            for (advance, delays) in steps {
                now += advance;
                for delay in delays {
                    sequence += 1;
                    wheel.push(Timer(now + delay, sequence));
                    heap.push(Reverse(Timer(now + delay, sequence)));
                }
                let mut foretold = None;
                loop {
                    let expected = match heap.peek() {
                        Some(Reverse(timer)) if timer.0 <= now => heap.pop().map(|Reverse(timer)| timer),
                        _ => None,
                    };
                    let (next, after_next) = (wheel.upcoming(0).copied(), wheel.upcoming(1).copied());
                    if let Some(foretold) = foretold {
                        prop_assert_eq!(next, Some(foretold));
                    }
                    let popped = wheel.pop_due(now);
                    prop_assert_eq!(popped, expected);
                    if popped.is_some() && let Some(next) = next {
                        prop_assert_eq!(popped, Some(next));
                    }
                    if expected.is_none() {
                        break;
                    }
                    foretold = after_next;
                }
                prop_assert_eq!(wheel.len(), heap.len());
            }
        }
    }
}
