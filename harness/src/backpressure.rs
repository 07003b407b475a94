//! Backpressure: what the source does when an engine falls behind its input.
//!
//! The backlog is the records in the log the slowest engine has not read yet. Before each slice
//! of about a millisecond is sent, the producer's side looks at it and applies the scenario's
//! strategy:
//! - **buffer**: the log holds the backlog up to the limit; beyond it the producer blocks (as a
//!   Kafka producer does when its buffer is full). Its cost is the backlog's memory.
//! - **slow-source**: the producer blocks as soon as an engine is a read batch behind, so the
//!   source runs at the engines' pace. Its cost is the generator's schedule lag (and, since
//!   latency starts at the due time, the latency that lag adds).
//! - **drop**: beyond the limit, new events are dropped at the source and counted: lost on
//!   purpose, never silently.
//! - **scale-out**: beyond the limit, the engine is restarted from its checkpoints with one more
//!   worker (up to `max_workers`); its cost is the extra cores and the restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::scenario::{Backpressure, Scenario};
use lk_engines::log::{Log, LogError};
use lk_engines::runtime::job::JobControl;
use lk_simulator::codec::BINARY_RECORD_BYTES;
use lk_simulator::time::Clock;
use serde::{Deserialize, Serialize};

use crate::faults::Supervisor;

/// What backpressure did and cost in a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackpressureResults {
    /// `buffer`, `slow-source`, `drop` or `scale-out`.
    pub strategy: String,
    /// The backlog at which it acts, records.
    pub limit_records: u64,
    /// The largest backlog seen, records (the slowest engine's).
    pub peak_backlog_records: u64,
    /// The same in bytes of the log's records: the buffer's memory.
    pub peak_backlog_bytes: u64,
    /// Events dropped at the source (drop): lost on purpose.
    pub dropped_events: u64,
    /// Seconds the producer spent blocked (buffer full, slow source).
    pub source_blocked_seconds: f64,
    /// Restarts with one more worker (scale-out), per engine.
    pub rescales: u64,
    /// Workers per engine at the end.
    pub workers_final: std::collections::BTreeMap<String, u32>,
}

/// An engine whose backlog backpressure watches.
pub struct Watched {
    /// `kappa` or `lambda`.
    pub name: &'static str,
    /// Its control.
    pub control: Arc<JobControl>,
    /// Its supervisor (for scale-out's restarts).
    pub supervisor: Supervisor,
    /// The workers it started with.
    pub workers: u32,
}

/// The strategy at work.
pub struct Governor {
    strategy: Backpressure,
    log: Arc<dyn Log>,
    topic: String,
    partitions: u32,
    limit: u64,
    max_workers: u32,
    engines: Vec<Watched>,
    clock: Arc<dyn Clock>,
    last_rescale_ns: u64,
    /// While the backlog is far below the limit, it is looked at only every few milliseconds.
    next_check_ns: u64,
    /// What it did.
    pub results: BackpressureResults,
}

/// Whether to send a slice.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Send,
    /// Drop it (counted).
    Drop,
}

/// How often the backlog is looked at while it is under half the limit.
const CALM_CHECK_NS: u64 = 5_000_000;

/// How long the producer waits on a backlog that does not move before it gives up waiting.
const STUCK_AFTER: Duration = Duration::from_secs(30);

impl Governor {
    /// The scenario's strategy over `engines`.
    pub fn new(
        scenario: &Scenario,
        log: Arc<dyn Log>,
        topic: &str,
        engines: Vec<Watched>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let strategy = scenario.engine.backpressure;
        let limit = match strategy {
            // A read batch per partition behind is as close to the engines' pace as it gets.
            Backpressure::SlowSource => u64::from(scenario.engine.partitions) * 8192,
            _ => (scenario.workload.run.rate_eps * scenario.engine.backpressure_limit.as_secs_f64()).max(1.0) as u64,
        };
        Self {
            strategy,
            log,
            topic: topic.to_owned(),
            partitions: scenario.engine.partitions,
            limit,
            max_workers: scenario.engine.max_workers,
            engines,
            clock,
            last_rescale_ns: 0,
            next_check_ns: 0,
            results: BackpressureResults {
                strategy: strategy.name().to_owned(),
                limit_records: limit,
                ..BackpressureResults::default()
            },
        }
    }

    /// The slowest engine's backlog, and its index.
    fn backlog(&self) -> Result<(u64, usize), LogError> {
        let mut worst = (0, 0);
        for (index, engine) in self.engines.iter().enumerate() {
            let lag = engine.control.lag(&*self.log, &self.topic, self.partitions)?;
            if lag >= worst.0 {
                worst = (lag, index);
            }
        }
        Ok(worst)
    }

    fn note(&mut self, backlog: u64) {
        if backlog > self.results.peak_backlog_records {
            self.results.peak_backlog_records = backlog;
            self.results.peak_backlog_bytes = backlog * BINARY_RECORD_BYTES as u64;
        }
    }

    /// Decides about a slice of `events` about to be sent.
    pub fn admit(&mut self, events: usize) -> Result<Admit, LogError> {
        if self.engines.is_empty() {
            return Ok(Admit::Send);
        }
        let now = self.clock.now_ns();
        if now < self.next_check_ns {
            return Ok(Admit::Send);
        }
        let (backlog, slowest) = self.backlog()?;
        self.note(backlog);
        if backlog <= self.limit {
            // Far below the limit, the backlog cannot reach it within a few milliseconds at
            // the input rate the limit is sized by: look again later.
            if backlog < self.limit / 2 {
                self.next_check_ns = now + CALM_CHECK_NS;
            }
            return Ok(Admit::Send);
        }
        match self.strategy {
            Backpressure::Buffer | Backpressure::SlowSource => {
                self.block()?;
                Ok(Admit::Send)
            }
            Backpressure::Drop => {
                self.results.dropped_events += events as u64;
                Ok(Admit::Drop)
            }
            Backpressure::ScaleOut => {
                self.scale_out(slowest);
                Ok(Admit::Send)
            }
        }
    }

    /// Blocks until the backlog is back under the limit (or stops moving for a long time).
    fn block(&mut self) -> Result<(), LogError> {
        let started = self.clock.now_ns();
        let (mut last_backlog, mut last_move) = (u64::MAX, started);
        loop {
            let (backlog, _) = self.backlog()?;
            self.note(backlog);
            let now = self.clock.now_ns();
            if backlog <= self.limit || now - last_move > STUCK_AFTER.as_nanos() as u64 {
                break;
            }
            if backlog < last_backlog {
                (last_backlog, last_move) = (backlog, now);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.results.source_blocked_seconds += (self.clock.now_ns() - started) as f64 / 1e9;
        Ok(())
    }

    /// Restarts the slowest engine with one more worker, at most once a second and only while
    /// it is running without a pending crash.
    fn scale_out(&mut self, index: usize) {
        let now = self.clock.now_ns();
        let engine = &self.engines[index];
        let control = &engine.control;
        let current = control.workers_or(engine.workers);
        if current >= self.max_workers
            || now < self.last_rescale_ns + 1_000_000_000
            || !engine.supervisor.running.load(Ordering::Acquire)
            || control.crash.load(Ordering::Acquire)
            || control.crash_mid_commit.load(Ordering::Acquire)
        {
            return;
        }
        self.last_rescale_ns = now;
        control.workers.store(current + 1, Ordering::Release);
        control.rescale.store(true, Ordering::Release);
        control.crash.store(true, Ordering::Release);
        self.results.rescales += 1;
    }

    /// The results, with each engine's final worker count.
    pub fn finish(mut self) -> BackpressureResults {
        for engine in &self.engines {
            self.results
                .workers_final
                .insert(engine.name.to_owned(), engine.control.workers_or(engine.workers).min(self.partitions));
        }
        self.results
    }
}
