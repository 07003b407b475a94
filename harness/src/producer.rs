//! The producer: the generator's batches into the log, partitioned by key, idempotently.
//!
//! Like Kafka's idempotent producer, it drops a re-send of a record it has already sent (Kafka
//! matches producer sequence numbers; the generator's event ids play that part, and are dense,
//! so a sliding bitmap of recent ids does it in a couple of nanoseconds an event). The
//! generator's duplicates model a producer's retries; with this on, they never reach the log.
//!
//! Appends are pipelined: up to [`MAX_IN_FLIGHT`] are in flight while the generator goes on, and
//! [`Producer::finish`] waits for the last. An append the log refuses with a retriable error is
//! retried with exponential backoff, so an outage delays events but loses none. A redelivery fault re-sends the last events sent.

use lk_engines::log::{AppendTicket, Log, LogError, RecordBatch, partition_of};
use lk_simulator::codec::{BINARY_RECORD_BYTES, RecordEncoding, encode_binary};
use lk_simulator::event::{Defect, Event, EventBatch};

use lk_engines::runtime::queries::partition_key;
use lk_simulator::time::Clock;
use std::sync::Arc;

use crate::metrics::SendTimeline;

/// Ids remembered for de-duplication: 2^27, two minutes of history at 1M events/s.
const ID_WINDOW_BITS: u64 = 1 << 27;

/// A sliding window of recently sent event ids.
struct SentIds {
    bits: Vec<u64>,
    highest: u64,
}

impl SentIds {
    fn new() -> Self {
        Self { bits: vec![0; (ID_WINDOW_BITS / 64) as usize], highest: 0 }
    }

    /// Records `id`; returns false if it was sent before (within the window).
    #[inline]
    fn insert(&mut self, id: u64) -> bool {
        if id > self.highest {
            if id - self.highest >= ID_WINDOW_BITS {
                self.bits.fill(0);
            } else {
                // The slots the window slides over are reused for the new ids: clear them.
                for next in self.highest + 1..=id {
                    let slot = next % ID_WINDOW_BITS;
                    self.bits[(slot / 64) as usize] &= !(1 << (slot % 64));
                }
            }
            self.highest = id;
        } else if id + ID_WINDOW_BITS <= self.highest {
            // Older than the window: a retry this late is beyond what the producer remembers.
            return true;
        }
        let slot = id % ID_WINDOW_BITS;
        let (word, bit) = ((slot / 64) as usize, slot % 64);
        let new = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        new
    }

    /// Like `insert`, for an id sent before: false while the window still remembers it.
    fn insert_again(&mut self, id: u64) -> bool {
        if id + ID_WINDOW_BITS <= self.highest {
            return false;
        }
        self.insert(id)
    }
}

/// Counts of what the producer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerCounters {
    /// Records appended.
    pub appended: u64,
    /// Re-sends dropped.
    pub duplicates_dropped: u64,
    /// Append calls made.
    pub appends: u64,
    /// Appends retried after a retriable error.
    pub retries: u64,
    /// Events sent again by redelivery faults.
    pub redelivered: u64,
}

/// Appends in flight at most, and their payload bytes at most.
const MAX_IN_FLIGHT: usize = 4096;
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// An append handed to the log, with its records (kept to append again if it fails).
struct InFlight {
    ticket: Box<dyn AppendTicket>,
    batches: Vec<(u32, RecordBatch)>,
    /// When it was handed to the log (clock ns; 0 untracked).
    sent_ns: u64,
}

/// An append that waits this long for its acknowledgement is a stall of the log.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest an append is retried before the producer gives up.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Sends events to a topic.
pub struct Producer {
    topic: String,
    partitions: u32,
    idempotent: bool,
    encoding: RecordEncoding,
    /// One record's bytes, reused.
    record: Vec<u8>,
    sent: SentIds,
    buffers: Vec<RecordBatch>,
    /// Emptied batches, reused as buffers.
    spare: Vec<RecordBatch>,
    in_flight: std::collections::VecDeque<InFlight>,
    in_flight_bytes: usize,
    /// The last events sent, for redelivery faults (empty when the run has none).
    recent: std::collections::VecDeque<(Event, Option<Defect>)>,
    recent_capacity: usize,
    /// Where it records when each append was sent and acknowledged, on which clock.
    timeline: Option<(Arc<SendTimeline>, Arc<dyn Clock>)>,
    /// Periods in which appends waited at least [`STALL`] for the log's acknowledgement (clock
    /// ns, merged), while tracked: a broker that is down or restarting, seen from here.
    pub stalls: Vec<(u64, u64)>,
    /// What it did.
    pub counters: ProducerCounters,
}

impl Producer {
    /// A producer for `topic`, which must exist, writing records in `encoding`.
    pub fn new(log: &dyn Log, topic: &str, idempotent: bool, encoding: RecordEncoding) -> Result<Self, LogError> {
        let partitions = log.partitions(topic)?;
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            idempotent,
            encoding,
            record: Vec::with_capacity(512),
            sent: SentIds::new(),
            buffers: (0..partitions).map(|_| RecordBatch::new()).collect(),
            spare: Vec::new(),
            in_flight: std::collections::VecDeque::new(),
            in_flight_bytes: 0,
            recent: std::collections::VecDeque::new(),
            recent_capacity: 0,
            timeline: None,
            stalls: Vec::new(),
            counters: ProducerCounters::default(),
        })
    }

    /// Records in `timeline` when each append was handed to the log and when the log's
    /// acknowledgement was seen (at the next send after it), on `clock`: the first stages of
    /// the latency breakdown.
    pub fn track(&mut self, timeline: Arc<SendTimeline>, clock: Arc<dyn Clock>) {
        self.timeline = Some((timeline, clock));
    }

    /// Keeps the last `events` events sent, for [`Producer::redeliver`].
    pub fn remember(&mut self, events: usize) {
        self.recent_capacity = events;
    }

    /// Sends the last `events` events again, as a producer retrying a batch it thinks was lost
    /// does: same event ids; the idempotent producer drops them.
    pub fn redeliver(&mut self, log: &dyn Log, events: usize) -> Result<u64, LogError> {
        let from = self.recent.len().saturating_sub(events);
        let again: Vec<(Event, Option<Defect>)> = self.recent.range(from..).copied().collect();
        for (event, defect) in &again {
            self.counters.redelivered += 1;
            if self.idempotent && !self.sent.insert_again(event.event_id) {
                self.counters.duplicates_dropped += 1;
                continue;
            }
            self.push(event, *defect);
        }
        self.flush(log)?;
        Ok(again.len() as u64)
    }

    /// Sends `batch.events[range]`: encodes each (malformed ones as the generator marked them),
    /// groups them by partition and appends each partition's group in one call.
    pub fn send(&mut self, log: &dyn Log, batch: &EventBatch, range: std::ops::Range<usize>) -> Result<(), LogError> {
        let first_defect = batch.defects.partition_point(|&(index, _)| (index as usize) < range.start);
        let mut defects = batch.defects[first_defect..].iter().peekable();
        for index in range {
            let event = &batch.events[index];
            let defect = defects.next_if(|&&(at, _)| at as usize == index).map(|&(_, defect)| defect);
            if self.idempotent && !self.sent.insert(event.event_id) {
                self.counters.duplicates_dropped += 1;
                continue;
            }
            self.push(event, defect);
            if self.recent_capacity > 0 {
                if self.recent.len() == self.recent_capacity {
                    self.recent.pop_front();
                }
                self.recent.push_back((*event, defect));
            }
        }
        self.flush(log)
    }

    /// Encodes `event` into its partition's buffer.
    #[inline]
    fn push(&mut self, event: &Event, defect: Option<Defect>) {
        let key = partition_key(event);
        let buffer = &mut self.buffers[partition_of(key, self.partitions) as usize];
        match self.encoding {
            // The hot path: straight from the stack, as before JSON input existed.
            RecordEncoding::Binary => {
                let mut record = [0u8; BINARY_RECORD_BYTES];
                encode_binary(event, defect, &mut record);
                buffer.push(key, &record);
            }
            RecordEncoding::Json => {
                self.record.clear();
                RecordEncoding::Json.encode(event, defect, &mut self.record);
                buffer.push(key, &self.record);
            }
        }
    }

    /// Hands every partition's buffer to the log in one `append_async`, then settles what the
    /// log has acknowledged. Up to [`MAX_IN_FLIGHT`] appends stay in flight, so that a log with
    /// a round trip per append (Kafka) keeps receiving while earlier appends are acknowledged;
    /// the embedded log acknowledges at once.
    fn flush(&mut self, log: &dyn Log) -> Result<(), LogError> {
        let mut batches = Vec::new();
        for (partition, buffer) in self.buffers.iter_mut().enumerate() {
            if !buffer.is_empty() {
                let replacement = self.spare.pop().unwrap_or_default();
                batches.push((partition as u32, std::mem::replace(buffer, replacement)));
            }
        }
        if !batches.is_empty() {
            let handed: Vec<(u32, &RecordBatch)> =
                batches.iter().map(|(partition, batch)| (*partition, batch)).collect();
            let sent_ns = self.timeline.as_ref().map_or(0, |(_, clock)| clock.now_ns());
            let ticket = log.append_async(&self.topic, &handed);
            self.in_flight_bytes += batches.iter().map(|(_, batch)| batch.value_bytes()).sum::<usize>();
            self.in_flight.push_back(InFlight { ticket, batches, sent_ns });
        }
        self.settle(log, false)
    }

    /// Waits until every append is acknowledged (retrying what failed). Call it before
    /// reading the counters at the end of a run.
    pub fn finish(&mut self, log: &dyn Log) -> Result<(), LogError> {
        self.settle(log, true)
    }

    /// Completes the appends the log has acknowledged, and waits for the oldest while more
    /// than the bounds are in flight (or for all of them with `all`). A batch that failed with
    /// a retriable error is appended again, with exponential backoff.
    fn settle(&mut self, log: &dyn Log, all: bool) -> Result<(), LogError> {
        while let Some(oldest) = self.in_flight.front() {
            let over = self.in_flight.len() > MAX_IN_FLIGHT || self.in_flight_bytes > MAX_IN_FLIGHT_BYTES;
            if !all && !over && !oldest.ticket.is_done() {
                break;
            }
            let InFlight { ticket, batches, sent_ns } = self.in_flight.pop_front().expect("checked above");
            let results = ticket.wait();
            let acked_ns = self.timeline.as_ref().map_or(0, |(_, clock)| clock.now_ns());
            if sent_ns > 0 && acked_ns >= sent_ns + STALL.as_nanos() as u64 {
                match self.stalls.last_mut() {
                    Some((_, end)) if *end >= sent_ns => *end = (*end).max(acked_ns),
                    _ => self.stalls.push((sent_ns, acked_ns)),
                }
            }
            for ((partition, mut batch), result) in batches.into_iter().zip(results) {
                self.in_flight_bytes -= batch.value_bytes();
                match result {
                    Ok(range) => {
                        if let Some((timeline, _)) = &self.timeline {
                            timeline.record(partition, range.first, range.end, sent_ns, acked_ns);
                        }
                    }
                    Err(error) if error.is_retriable() => self.append_retrying(log, partition, &batch)?,
                    Err(error) => return Err(error),
                }
                self.counters.appended += batch.len() as u64;
                self.counters.appends += 1;
                batch.clear();
                self.spare.push(batch);
            }
        }
        Ok(())
    }

    /// Appends `batch` again until the log takes it, for up to [`RETRY_FOR`].
    #[allow(clippy::disallowed_methods, reason = "a retry's backoff is bounded by a wall-clock deadline, not measured")]
    fn append_retrying(&mut self, log: &dyn Log, partition: u32, batch: &RecordBatch) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(1);
        loop {
            self.counters.retries += 1;
            std::thread::sleep(backoff);
            match log.append(&self.topic, partition, batch) {
                Ok(_) => return Ok(()),
                Err(error) if error.is_retriable() && started.elapsed() < RETRY_FOR => {
                    backoff = (backoff * 2).min(std::time::Duration::from_millis(100));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_window_catches_retries_and_forgets_old_ids() {
        let mut sent = SentIds::new();
        assert!(sent.insert(5));
        assert!(sent.insert(7));
        assert!(!sent.insert(5), "a retry is caught");
        assert!(sent.insert(6), "a late first send is not a retry");
        assert!(!sent.insert(6));
        assert!(sent.insert(5 + 3 * ID_WINDOW_BITS), "ids may jump");
        assert!(sent.insert(5 + 3 * ID_WINDOW_BITS - 1), "the slots a jump passes over are cleared");
        assert!(!sent.insert(5 + 3 * ID_WINDOW_BITS));
    }
}
