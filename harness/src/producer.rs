//! The producer: the generator's batches into the log, partitioned by key, idempotently.
//!
//! Like Kafka's idempotent producer, it drops a re-send of a record it has already sent (Kafka
//! matches producer sequence numbers; the generator's event ids play that part, and are dense,
//! so a sliding bitmap of recent ids does it in a couple of nanoseconds an event). The
//! generator's duplicates model a producer's retries; with this on, they never reach the log.

use lk_engines::log::{Log, LogError, RecordBatch, partition_of};
use lk_simulator::codec::{BINARY_RECORD_BYTES, encode_binary};
use lk_simulator::event::EventBatch;

use lk_engines::queries::partition_key;

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
}

/// Sends events to a topic.
pub struct Producer {
    topic: String,
    partitions: u32,
    idempotent: bool,
    sent: SentIds,
    buffers: Vec<RecordBatch>,
    /// What it did.
    pub counters: ProducerCounters,
}

impl Producer {
    /// A producer for `topic`, which must exist.
    pub fn new(log: &dyn Log, topic: &str, idempotent: bool) -> Result<Self, LogError> {
        let partitions = log.partitions(topic)?;
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            idempotent,
            sent: SentIds::new(),
            buffers: (0..partitions).map(|_| RecordBatch::new()).collect(),
            counters: ProducerCounters::default(),
        })
    }

    /// Sends `batch.events[range]`: encodes each (malformed ones as the generator marked them),
    /// groups them by partition and appends each partition's group in one call.
    pub fn send(&mut self, log: &dyn Log, batch: &EventBatch, range: std::ops::Range<usize>) -> Result<(), LogError> {
        let first_defect = batch.defects.partition_point(|&(index, _)| (index as usize) < range.start);
        let mut defects = batch.defects[first_defect..].iter().peekable();
        let mut record = [0u8; BINARY_RECORD_BYTES];
        for index in range {
            let event = &batch.events[index];
            let defect = defects.next_if(|&&(at, _)| at as usize == index).map(|&(_, defect)| defect);
            if self.idempotent && !self.sent.insert(event.event_id) {
                self.counters.duplicates_dropped += 1;
                continue;
            }
            encode_binary(event, defect, &mut record);
            let key = partition_key(event);
            self.buffers[partition_of(key, self.partitions) as usize].push(key, &record);
        }
        for (partition, buffer) in self.buffers.iter_mut().enumerate() {
            if buffer.is_empty() {
                continue;
            }
            log.append(&self.topic, partition as u32, buffer)?;
            self.counters.appended += buffer.len() as u64;
            self.counters.appends += 1;
            buffer.clear();
        }
        Ok(())
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
