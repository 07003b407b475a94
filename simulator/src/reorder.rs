//! Reordering by arrival time without a heap operation per event.
//!
//! Events are generated in event-time order and must leave in arrival order (event time plus
//! delivery delay). A timing wheel does that in O(1) per event: each event goes into the bucket of
//! its arrival time; a bucket is released, sorted, once generation has passed its end, since no
//! later event can arrive before that. Only arrivals beyond the wheel's horizon (offline phones,
//! the far tail of a heavy-tailed delay) go through a heap, and those are rare.
//!
//! The buckets hold their events in chunks of one shared slab, and a released bucket's chunks
//! are the next ones filled (last freed, first taken): the events waiting are a few megabytes,
//! and pushes write into memory the release has just read. With a vector per bucket instead,
//! every bucket kept its capacity, a thousand buckets spread the waiting events over a hundred
//! megabytes, and each push missed the cache.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::event::Event;

/// Bits of `due_ns` that hold the arrival time while an event waits in the wheel.
const ARRIVAL_BITS: u64 = (1 << 56) - 1;

/// An event waiting for its arrival time. The due time is not stamped until its shard emits
/// the event, so while it waits its `due_ns` field carries the arrival time (low 56 bits) and the
/// generator's marks (top 8): a waiting event is one 64-byte line, which is what makes the wheel
/// cheap, since its cost is memory traffic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending(Event);

impl Pending {
    /// `event` arriving at `arrival_us` (non-negative, below 2^56) with `mark`.
    #[inline]
    pub fn new(mut event: Event, arrival_us: i64, mark: u8) -> Self {
        debug_assert!((0..=ARRIVAL_BITS as i64).contains(&arrival_us));
        event.due_ns = (arrival_us as u64 & ARRIVAL_BITS) | (u64::from(mark) << 56);
        Pending(event)
    }

    #[inline]
    pub fn arrival_us(&self) -> i64 {
        (self.0.due_ns & ARRIVAL_BITS) as i64
    }

    #[inline]
    pub fn mark(&self) -> u8 {
        (self.0.due_ns >> 56) as u8
    }

    /// The event, emitted in a slot due at `due_ns`.
    #[inline]
    pub fn emitted(&self, due_ns: u64) -> Event {
        Event { due_ns, ..self.0 }
    }

    #[inline]
    fn key(&self) -> (i64, u64) {
        // (arrival, id) is unique but for a zero-delay retry, whose copies are identical.
        (self.arrival_us(), self.0.event_id)
    }
}

/// Orders the overflow heap by the same key buckets are sorted by.
#[derive(Debug)]
struct Overflow(Pending);

impl PartialEq for Overflow {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}
impl Eq for Overflow {}
impl PartialOrd for Overflow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Overflow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key().cmp(&other.0.key())
    }
}

/// A timing wheel of arrival-time buckets with a heap for arrivals beyond its horizon.
/// Events per chunk of the slab: 2 KB, a few pages of a bucket's events at a time.
const CHUNK_EVENTS: usize = 32;

/// One bucket's events: its chunks of the slab, in push order, and how many it holds.
#[derive(Debug, Default)]
struct Bucket {
    chunks: Vec<u32>,
    len: usize,
    /// The last of `chunks`, kept here: a push and its prefetch read only this array, not
    /// each bucket's own chunk list.
    tail: u32,
}

#[derive(Debug)]
pub(crate) struct ArrivalWheel {
    origin_us: i64,
    width_us: i64,
    buckets: Vec<Bucket>,
    /// Every bucket's events, [`CHUNK_EVENTS`] to a chunk.
    slab: Vec<Pending>,
    /// Chunks no bucket holds, the most recently freed last.
    free: Vec<u32>,
    /// The bucket the next release takes (absolute index, not modulo the wheel).
    next_bucket: i64,
    overflow: BinaryHeap<Reverse<Overflow>>,
    waiting: usize,
    late: Vec<Pending>,
    order: Vec<u64>,
}

impl ArrivalWheel {
    /// A wheel of `buckets` buckets (a power of two), each `width_us` wide (below 2^32 µs),
    /// the first starting at `origin_us`.
    pub fn new(origin_us: i64, width_us: i64, buckets: usize) -> Self {
        assert!(buckets.is_power_of_two() && width_us > 0 && width_us < 1 << 32);
        Self {
            origin_us,
            width_us,
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            slab: Vec::new(),
            free: Vec::new(),
            next_bucket: 0,
            overflow: BinaryHeap::new(),
            waiting: 0,
            late: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Events waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting
    }

    fn bucket_of(&self, arrival_us: i64) -> i64 {
        (arrival_us - self.origin_us).div_euclid(self.width_us)
    }

    /// Starts loading the slot an event arriving at `arrival_us` would be written to, for a
    /// [`Self::push`] soon after.
    #[inline]
    pub fn prefetch(&self, arrival_us: i64) {
        let bucket = self.bucket_of(arrival_us).max(self.next_bucket);
        if bucket - self.next_bucket >= self.buckets.len() as i64 {
            return;
        }
        let bucket = &self.buckets[bucket as usize & (self.buckets.len() - 1)];
        let offset = bucket.len % CHUNK_EVENTS;
        let chunk = if offset == 0 { self.free.last().copied() } else { Some(bucket.tail) };
        if let Some(chunk) = chunk
            && let Some(slot) = self.slab.get(chunk as usize * CHUNK_EVENTS + offset)
        {
            crate::hint::prefetch(slot);
        }
    }

    /// Adds an event; its arrival must not be before the last release's frontier.
    #[inline]
    pub fn push(&mut self, pending: Pending) {
        let bucket = self.bucket_of(pending.arrival_us());
        debug_assert!(bucket >= self.next_bucket, "an arrival before the released frontier");
        let bucket = bucket.max(self.next_bucket);
        self.waiting += 1;
        if bucket - self.next_bucket >= self.buckets.len() as i64 {
            self.overflow.push(Reverse(Overflow(pending)));
            return;
        }
        let mask = self.buckets.len() - 1;
        let bucket = &mut self.buckets[bucket as usize & mask];
        let offset = bucket.len % CHUNK_EVENTS;
        if offset == 0 {
            let chunk = self.free.pop().unwrap_or_else(|| {
                let chunk = (self.slab.len() / CHUNK_EVENTS) as u32;
                self.slab.resize(self.slab.len() + CHUNK_EVENTS, pending);
                chunk
            });
            bucket.chunks.push(chunk);
            bucket.tail = chunk;
        }
        self.slab[bucket.tail as usize * CHUNK_EVENTS + offset] = pending;
        bucket.len += 1;
    }

    /// Appends to `out`, in arrival order, every event that arrives before the bucket holding
    /// `frontier_us` (generation has passed those buckets: nothing can arrive in them anymore).
    pub fn release(&mut self, frontier_us: i64, out: &mut Vec<Pending>) {
        let last_complete = self.bucket_of(frontier_us) - 1;
        let mask = self.buckets.len() - 1;
        while self.next_bucket <= last_complete {
            if self.waiting == 0 {
                self.next_bucket = last_complete + 1;
                break;
            }
            let end_us = self.origin_us + (self.next_bucket + 1) * self.width_us;
            let slot = self.next_bucket as usize & mask;
            self.late.clear();
            while let Some(Reverse(Overflow(head))) = self.overflow.peek() {
                if head.arrival_us() >= end_us {
                    break;
                }
                let Reverse(Overflow(head)) = self.overflow.pop().expect("peeked");
                self.late.push(head);
            }
            let bucket = &mut self.buckets[slot];
            self.waiting -= bucket.len + self.late.len();
            let at_in_slab =
                |chunks: &[u32], at: usize| chunks[at / CHUNK_EVENTS] as usize * CHUNK_EVENTS + at % CHUNK_EVENTS;
            // Sort (arrival, position) pairs rather than the 64-byte events. Positions order
            // events of the same arrival by id, as the overflow's come first (in id order, and
            // pushed before the bucket came within the horizon) and the bucket's own events
            // were pushed as they were generated (in id order).
            if self.late.is_empty() && bucket.len <= 1 {
                if bucket.len == 1 {
                    out.push(self.slab[at_in_slab(&bucket.chunks, 0)]);
                }
            } else {
                // One u64 per event, arrival within the bucket above position, for one integer
                // comparison each (`new` asserts the width fits in 32 bits of µs; an arrival
                // before the bucket, which `push` moved up to it, sorts first).
                self.order.clear();
                let late = self.late.len();
                let start_us = end_us - self.width_us;
                let key =
                    |pending: &Pending, at: usize| ((pending.arrival_us() - start_us).max(0) as u64) << 32 | at as u64;
                self.order.extend(self.late.iter().enumerate().map(|(at, pending)| key(pending, at)));
                for (index, &chunk) in bucket.chunks.iter().enumerate() {
                    let first = index * CHUNK_EVENTS;
                    let filled = (bucket.len - first).min(CHUNK_EVENTS);
                    let events = &self.slab[chunk as usize * CHUNK_EVENTS..][..filled];
                    self.order.extend(events.iter().enumerate().map(|(at, pending)| key(pending, late + first + at)));
                }
                self.order.sort_unstable();
                out.extend(self.order.iter().map(|&key| {
                    let at = key as u32 as usize;
                    if at < late { self.late[at] } else { self.slab[at_in_slab(&bucket.chunks, at - late)] }
                }));
            }
            self.free.append(&mut bucket.chunks);
            bucket.len = 0;
            self.next_bucket += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{LatLon, Payload, Zone};

    fn pending(arrival_us: i64, event_id: u64) -> Pending {
        let event = Event {
            event_id,
            event_time_us: 0,
            due_ns: 0,
            zone: Zone(0),
            position: LatLon::default(),
            payload: Payload::DriverPing { driver_id: 1, speed_cmps: 0, heading_cdeg: 0 },
        };
        Pending::new(event, arrival_us, (event_id % 3) as u8)
    }

    /// Releases `delays` (event `index` generated at `index * gap_us`, arriving `delay` later)
    /// through a wheel of 16 buckets `width_us` wide, and checks the stream that comes out:
    /// everything, exactly once, in arrival order, ties in id order, marks kept.
    fn check_release(delays: &[i64], gap_us: i64, width_us: i64) -> Result<(), TestCaseError> {
        let mut wheel = ArrivalWheel::new(0, width_us, 16);
        let mut out = Vec::new();
        for (index, delay) in delays.iter().enumerate() {
            let now = index as i64 * gap_us;
            wheel.push(pending(now + delay, index as u64));
            wheel.release(now, &mut out);
        }
        wheel.release(i64::MAX / 2, &mut out);
        prop_assert_eq!(out.len(), delays.len());
        prop_assert_eq!(wheel.len(), 0);
        let keys: Vec<(i64, u64)> = out.iter().map(|p| (p.arrival_us(), p.emitted(7).event_id)).collect();
        prop_assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "not in (arrival, id) order");
        prop_assert!(out.iter().all(|p| p.mark() == (p.emitted(7).event_id % 3) as u8 && p.emitted(7).due_ns == 7));
        let mut ids: Vec<u64> = out.iter().map(|p| p.emitted(7).event_id).collect();
        ids.sort_unstable();
        prop_assert!(ids.iter().enumerate().all(|(index, id)| *id == index as u64));
        Ok(())
    }

    proptest! {
        /// Whatever the delays, the wheel releases everything, exactly once, in arrival order.
        #[test]
        fn releases_everything_in_arrival_order(delays in proptest::collection::vec(0i64..50_000, 1..400)) {
            check_release(&delays, 10, 100)?;
        }

        /// Buckets of many chunks, and arrivals that tie (delays in coarse steps), come out in
        /// (arrival, id) order too.
        #[test]
        fn buckets_of_many_chunks_release_in_order(
            steps in proptest::collection::vec(0i64..40, 1..3000),
        ) {
            let delays: Vec<i64> = steps.iter().map(|step| step * 500).collect();
            check_release(&delays, 1, 1000)?;
        }
    }

    /// A released bucket's chunks are the next ones filled: a wheel running steadily keeps
    /// as many chunks as its waiting events need, not one set per bucket.
    #[test]
    fn released_chunks_are_reused() {
        let mut wheel = ArrivalWheel::new(0, 100, 1024);
        let mut out = Vec::new();
        for index in 0..1_000_000i64 {
            wheel.push(pending(index + 50, index as u64));
            wheel.release(index, &mut out);
        }
        assert_eq!(out.len() + wheel.len(), 1_000_000);
        // 50 µs of events waiting, in at most two buckets of 100: a handful of chunks.
        assert!(wheel.slab.len() <= 8 * CHUNK_EVENTS, "slab grew to {} events", wheel.slab.len());
    }
}
