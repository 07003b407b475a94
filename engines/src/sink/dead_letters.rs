//! The dead-letter queue: malformed records, with the reason each was refused.
//!
//! An engine never stops on a record it cannot decode: the task counts it, and the worker writes
//! it here, one JSON line per record, with its partition, offset, defect class, the decoder's
//! reason and the raw bytes in hex, so that someone can see what the producer sent. A record
//! replayed after a crash is written again; readers count distinct (partition, offset) pairs,
//! which [`DeadLetters::distinct`] does.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lk_simulator::codec::DecodeError;

use crate::log::RecordBatch;

/// A dead-letter file that workers append to.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: BufWriter<File>,
    /// Distinct (partition, offset) pairs written.
    seen: BTreeSet<(u32, u64)>,
    /// The first write error, reported at the end (a dead-letter file that cannot be written
    /// must not stop the engine, but must not pass unnoticed either).
    error: Option<String>,
}

impl DeadLetters {
    /// Creates (or empties) the file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = BufWriter::new(File::create(path)?);
        Ok(Self { path: path.to_owned(), state: Mutex::new(State { file, seen: BTreeSet::new(), error: None }) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a batch's dead letters: `letters` are (offset, reason) for records of `batch`,
    /// which was read from `partition` starting at `first_offset`.
    pub fn record(&self, partition: u32, first_offset: u64, batch: &RecordBatch, letters: &[(u64, DecodeError)]) {
        if letters.is_empty() {
            return;
        }
        let mut line = String::new();
        let mut state = self.state.lock().expect("not poisoned");
        for (offset, error) in letters {
            let (_, bytes) = batch.get((offset - first_offset) as usize);
            line.clear();
            let mut hex = String::with_capacity(bytes.len() * 2);
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            let entry = serde_json::json!({
                "partition": partition,
                "offset": offset,
                "defect": error.defect().name(),
                "reason": error.to_string(),
                "bytes_hex": hex,
            });
            line.push_str(&entry.to_string());
            line.push('\n');
            state.seen.insert((partition, *offset));
            if let Err(error) = state.file.write_all(line.as_bytes())
                && state.error.is_none()
            {
                state.error = Some(error.to_string());
            }
        }
    }

    /// Distinct records written so far.
    pub fn distinct(&self) -> u64 {
        self.state.lock().expect("not poisoned").seen.len() as u64
    }

    /// Flushes the file; returns the first error any write met.
    pub fn finish(&self) -> Result<(), String> {
        let mut state = self.state.lock().expect("not poisoned");
        if let Err(error) = state.file.flush()
            && state.error.is_none()
        {
            state.error = Some(error.to_string());
        }
        match &state.error {
            Some(error) => Err(format!("dead-letter file {}: {error}", self.path.display())),
            None => Ok(()),
        }
    }
}
