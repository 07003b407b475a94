//! What an external engine reports of its progress: per query and micro-batch, the input
//! offsets it read and the watermark it ran with, one JSON object per line of
//! `LK_PROGRESS_FILE` (docs/engines.md). From it lk knows how far the engine has read (its lag,
//! its throughput, when it has caught up) and what its own lateness rule dropped.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::Deserialize;

/// One line as the engine writes it.
#[derive(Deserialize)]
struct Line {
    query: Option<String>,
    batch: Option<u64>,
    watermark: Option<String>,
    rows: Option<u64>,
    start: Option<BTreeMap<String, BTreeMap<String, u64>>>,
    end: Option<BTreeMap<String, BTreeMap<String, u64>>>,
    duration_ms: Option<u64>,
    pending: Option<u64>,
    query_failed: Option<String>,
    error: Option<String>,
}

/// One micro-batch of one query.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Its id: batches run in id order; a batch run again after a crash keeps its id.
    pub id: u64,
    /// Per input partition, the first offset it read.
    pub start: Vec<u64>,
    /// Per input partition, the offset after the last it read.
    pub end: Vec<u64>,
    /// Records of the control topic read up to its end.
    pub control_end: u64,
    /// The watermark it ran with, ms since the epoch (None before any event time was seen).
    pub watermark_ms: Option<i64>,
    /// Input rows.
    pub rows: u64,
    /// How long it took, ms.
    pub duration_ms: u64,
}

/// The progress file, read as it grows.
pub struct Progress {
    path: PathBuf,
    read: u64,
    pending: Vec<u8>,
    input_topic: String,
    control_topic: String,
    partitions: u32,
    /// Per query, its batches by id (the last report of a batch wins).
    pub queries: BTreeMap<String, BTreeMap<u64, Batch>>,
    /// Micro-batch reports read, over every query: a batch run again after a crash, or a query
    /// restarted on a fresh checkpoint, reports an id it reported before.
    pub reports: u64,
    /// A query that failed, and why.
    pub failure: Option<String>,
    /// Lines that were not progress lk could read.
    pub malformed: u64,
    /// Records the engine's last report says are still inside it, read from the input but not
    /// yet through its internal stages (Kafka Streams' repartition topics); 0 for an engine that
    /// reports none.
    pub inside: u64,
}

impl Progress {
    /// The progress in `path` (which need not exist yet) of a job reading `input_topic` (of
    /// `partitions` partitions) and `control_topic`, by their qualified names.
    pub fn new(path: PathBuf, input_topic: &str, control_topic: &str, partitions: u32) -> Self {
        Self {
            path,
            read: 0,
            pending: Vec::new(),
            input_topic: input_topic.to_owned(),
            control_topic: control_topic.to_owned(),
            partitions,
            queries: BTreeMap::new(),
            reports: 0,
            failure: None,
            malformed: 0,
            inside: 0,
        }
    }

    /// Reads what has been appended since the last call.
    pub fn poll(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        let Ok(count) = file.read_to_end(&mut fresh) else { return };
        self.read += count as u64;
        self.pending.extend_from_slice(&fresh);
        while let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.take(&line[..line.len() - 1]);
        }
    }

    fn take(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(line) = serde_json::from_slice::<Line>(line) else {
            self.malformed += 1;
            return;
        };
        if let Some(query) = line.query_failed {
            self.failure = Some(format!("query {query} failed: {}", line.error.unwrap_or_default()));
            return;
        }
        let (Some(query), Some(id)) = (line.query, line.batch) else {
            self.malformed += 1;
            return;
        };
        let offsets = |map: &Option<BTreeMap<String, BTreeMap<String, u64>>>, topic: &str| -> Vec<u64> {
            let partitions = map.as_ref().and_then(|map| map.get(topic));
            (0..self.partitions)
                .map(|partition| {
                    partitions.and_then(|offsets| offsets.get(&partition.to_string())).copied().unwrap_or(0)
                })
                .collect()
        };
        let (start, end) = (offsets(&line.start, &self.input_topic), offsets(&line.end, &self.input_topic));
        let control_end =
            line.end.as_ref().and_then(|map| map.get(&self.control_topic)).map_or(0, |offsets| offsets.values().sum());
        let batch = Batch {
            id,
            // A first batch reports no start: it read from the earliest offsets.
            start: if line.start.is_some() { start } else { vec![0; self.partitions as usize] },
            end,
            control_end,
            watermark_ms: line.watermark.as_deref().and_then(parse_timestamp_ms),
            rows: line.rows.unwrap_or(0),
            duration_ms: line.duration_ms.unwrap_or(0),
        };
        self.reports += 1;
        self.inside = line.pending.unwrap_or(0);
        self.queries.entry(query).or_default().insert(id, batch);
    }

    /// Per input partition, the offset every one of `queries` has read up to; None until each
    /// has reported a batch.
    pub fn consumed(&self, queries: &[&str]) -> Option<Vec<u64>> {
        let mut consumed = vec![u64::MAX; self.partitions as usize];
        for query in queries {
            let batches = self.queries.get(*query)?;
            for (partition, slot) in consumed.iter_mut().enumerate() {
                let read = batches.values().map(|batch| batch.end[partition]).max().unwrap_or(0);
                *slot = (*slot).min(read);
            }
        }
        Some(consumed)
    }

    /// Whether `query` has an event-time watermark: it reports one from its first batch (the
    /// epoch, before it has seen an event), where a query without reports none. (A replay that
    /// reads the whole input in its first batch reports no later watermark until the batch that
    /// closes its windows: "a watermark past the epoch" would call it drained before that batch.)
    pub fn has_watermark(&self, query: &str) -> bool {
        self.queries.get(query).is_some_and(|batches| batches.values().any(|batch| batch.watermark_ms.is_some()))
    }

    /// The furthest watermark `query` has run with, ms.
    pub fn watermark_ms(&self, query: &str) -> Option<i64> {
        self.queries.get(query)?.values().filter_map(|batch| batch.watermark_ms).max()
    }
}

/// Milliseconds since the epoch of an ISO-8601 UTC timestamp as Spark writes them
/// (`2026-12-06T19:48:42.123Z`, the fraction optional).
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date_parts.next()?.ok()?, date_parts.next()?.ok()?, date_parts.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock_parts = clock.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (clock_parts.next()?.ok()?, clock_parts.next()?.ok()?, clock_parts.next()?.ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let digits: String = fraction.chars().take(3).collect();
    let millis = format!("{digits:0<3}").parse::<i64>().ok()?;
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_milliseconds() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_timestamp_ms("2024-02-29T12:34:56.789Z"), Some(1_709_210_096_789));
        assert_eq!(parse_timestamp_ms("2026-12-06T19:48:42Z"), Some(1_796_586_522_000));
        assert_eq!(parse_timestamp_ms("9999-12-31T23:59:59.999Z"), Some(253_402_300_799_999));
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59.5Z"), Some(-500));
        assert_eq!(parse_timestamp_ms("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp_ms("yesterday"), None);
    }

    /// Appends `text` to the file at `path`, as the engine does.
    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    }

    #[test]
    fn progress_lines_become_batches_and_consumed_offsets() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("progress.jsonl");
        let mut progress = Progress::new(path.clone(), "ns.in", "ns.control", 2);
        std::fs::write(
            &path,
            concat!(
                r#"{"query":"a","batch":0,"watermark":"1970-01-01T00:00:00.000Z","rows":5,"start":null,"#,
                r#""end":{"ns.in":{"0":3,"1":2},"ns.control":{"0":0}},"duration_ms":900}"#,
                "\n",
                r#"{"query":"b","batch":0,"watermark":null,"rows":5,"start":null,"end":{"ns.in":{"0":1,"1":2}}}"#,
                "\n",
                "not json\n",
                r#"{"query":"a","batch":1,"watermark":"1970-01-01T00:00:01.000Z","rows":1,"#,
            ),
        )
        .unwrap();
        progress.poll();
        assert_eq!(progress.malformed, 1);
        assert_eq!(progress.consumed(&["a", "b"]), Some(vec![1, 2]));
        assert_eq!(progress.consumed(&["a", "c"]), None);
        assert!(progress.has_watermark("a"), "a watermark at the epoch is a watermark");
        assert!(!progress.has_watermark("b"), "a query without one reports null");
        assert!(!progress.has_watermark("c"));
        let first = &progress.queries["a"][&0];
        assert_eq!((first.start.clone(), first.end.clone(), first.watermark_ms), (vec![0, 0], vec![3, 2], Some(0)));
        // The half-written line is read once it is whole.
        append(
            &path,
            r#""start":{"ns.in":{"0":3,"1":2}},"end":{"ns.in":{"0":4,"1":2},"ns.control":{"0":1}}}
"#,
        );
        progress.poll();
        assert_eq!(progress.queries["a"][&1].control_end, 1);
        assert_eq!(progress.watermark_ms("a"), Some(1000));
        assert_eq!(progress.reports, 3);
        // A query restarted on a fresh checkpoint numbers its batches from 0 again: the report
        // is progress all the same, though the batch it names was seen before.
        append(&path, concat!(r#"{"query":"b","batch":0,"watermark":null,"rows":5,"start":null,"#, "\n"));
        progress.poll();
        assert_eq!(progress.malformed, 2, "a line without its end is still a line");
        append(
            &path,
            concat!(
                r#"{"query":"b","batch":0,"watermark":null,"rows":5,"start":null,"end":{"ns.in":{"0":4,"1":2}}}"#,
                "\n"
            ),
        );
        progress.poll();
        assert_eq!(progress.reports, 4);
        assert_eq!(progress.queries["b"].len(), 1);
        assert_eq!(progress.consumed(&["a", "b"]), Some(vec![4, 2]));
    }

    proptest::proptest! {
        /// Whatever an engine appends to its progress file, lk reads it or counts it malformed;
        /// nothing panics (the file is bytes lk did not write).
        #[test]
        fn any_progress_line_is_read_or_counted_malformed(
            cut in 0usize..400,
            at in 0usize..400,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let line = br#"{"query":"kstreams","batch":18446744073709551615,"watermark":"9999-12-31T23:59:59.999Z","rows":0,"start":{"in":{"0":1}},"end":{"in":{"0":18446744073709551615,"x":2},"ctl":{"0":1}},"pending":18446744073709551615,"duration_ms":0}"#;
            let mut progress = Progress::new(std::path::PathBuf::from("/nonexistent"), "in", "ctl", 2);
            progress.take(line);
            proptest::prop_assert_eq!((progress.reports, progress.malformed), (1, 0));
            proptest::prop_assert_eq!(progress.inside, u64::MAX);
            let mut changed = line.to_vec();
            changed.truncate(cut.max(1).min(changed.len()));
            let at = at % changed.len();
            changed[at] = byte;
            progress.take(&changed);
            proptest::prop_assert_eq!(progress.reports + progress.malformed, 2);
            let _ = progress.consumed(&["kstreams"]);
        }
    }
}
