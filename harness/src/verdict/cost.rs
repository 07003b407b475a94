//! What each architecture needs at the requirements' rate and history, extrapolated from what
//! this run (and a capacity search, when one ran) measured per event. Every figure says what it
//! comes from; none is measured at the target.

use serde::{Deserialize, Serialize};

use super::Requirements;
use crate::capacity::Capacity;
use crate::results::{EngineResults, Results};

/// Hours in a month, for monthly prices.
const HOURS_PER_MONTH: f64 = 730.0;
/// Bytes in a GB.
const GB: f64 = 1e9;

/// One architecture at the target, extrapolated.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Extrapolation {
    /// What the live cores come from: a capacity search's sustainable rate per core, or the
    /// engine's CPU-seconds per event in this run.
    pub basis: String,
    /// The measured rate per core the live cores come from, events/s.
    pub events_per_core_second: f64,
    /// How near linear the engine scaled from one core to two (rate on two over twice the rate
    /// on one), when both were searched: how far a linear extrapolation can be trusted.
    pub scaling_1_to_2: Option<f64>,
    /// Cores to process the target rate live.
    pub live_cores: f64,
    /// Lambda: cores to recompute the batch views from the whole history every
    /// `requirements.batch_every` (0 for Kappa).
    pub batch_cores: f64,
    /// `live_cores + batch_cores`, rounded up.
    pub cores: f64,
    /// Memory: the run's peak resident memory per core it used, times the cores.
    pub memory_bytes: f64,
    /// The input log: per event as measured, times the events it retains (Kappa: the whole
    /// history; Lambda: the log's retention), times the log's replicas.
    pub log_bytes: f64,
    /// Lambda's master dataset: per event as measured, times the whole history (0 for Kappa).
    pub master_bytes: f64,
    /// Checkpoints and served views as measured (they grow with keys and windows, not history).
    pub state_bytes: f64,
    /// Everything stored.
    pub storage_bytes: f64,
    /// Whether log compaction could shrink the storage.
    pub compaction: String,
    /// Time to rebuild every view from the whole history on `cores` cores, s; `null` when the
    /// run did not measure a rebuild.
    pub reprocess_seconds: Option<f64>,
    /// The measured rate that comes from.
    pub reprocess_basis: String,
    /// Cores times hours times the core price, per month.
    pub compute_usd_month: f64,
    /// Storage times the storage price, per month.
    pub storage_usd_month: f64,
    /// Their sum.
    pub usd_month: f64,
}

/// Extrapolates `engine` (named `name`) to the requirements.
pub fn extrapolate(
    results: &Results,
    name: &str,
    engine: &EngineResults,
    capacity: Option<&Capacity>,
) -> Extrapolation {
    let requirements: &Requirements = &results.requirements;
    let cpus = results.environment.cpus.max(1) as f64;
    let events = results.oracle.events.max(1) as f64;
    let batch_cpu: f64 =
        engine.lambda.as_ref().map_or(0.0, |lambda| lambda.batch_runs.iter().map(|run| run.cpu_seconds).sum());
    let live_cpu = (engine.cost.cpu_seconds - batch_cpu).max(0.0);
    let searched = capacity.and_then(|capacity| capacity.best(name));
    let (basis, events_per_core_second) = match searched {
        Some(search) => {
            let rate = search.sustainable_eps.unwrap_or_default();
            (
                format!(
                    "linear from the capacity search: {rate:.0} events/s sustainable on {} core{} of this machine (p99 within {:.0} ms)",
                    search.cores,
                    if search.cores == 1 { "" } else { "s" },
                    capacity.map_or(0.0, |capacity| capacity.slo_p99_ms)
                ),
                rate / search.cores.max(1) as f64,
            )
        }
        None => (
            format!(
                "the engine's {live_cpu:.2} CPU-seconds for {events:.0} events in this run, at full utilisation (no capacity search)"
            ),
            if live_cpu > 0.0 { events / live_cpu } else { 0.0 },
        ),
    };
    let live_cores = if events_per_core_second > 0.0 { requirements.rate_eps / events_per_core_second } else { 0.0 };
    let history_events = requirements.rate_eps * requirements.history_seconds;
    let (batch_cores, master_bytes) = match &engine.lambda {
        Some(lambda) => {
            let rows: u64 = lambda.batch_runs.iter().map(|run| run.rows).sum();
            let cpu_per_row = if rows > 0 { batch_cpu / rows as f64 } else { 0.0 };
            let master_per_event = lambda.master.bytes as f64 / lambda.master.rows.max(1) as f64;
            (history_events * cpu_per_row / requirements.batch_every_seconds, master_per_event * history_events)
        }
        None => (0.0, 0.0),
    };
    let cores = (live_cores + batch_cores).ceil().max(1.0);
    let log_per_event = engine.cost.log_bytes as f64 / results.generator.records_appended.max(1) as f64;
    let log_retained =
        if engine.lambda.is_some() { requirements.log_retention_seconds } else { requirements.history_seconds };
    let log_bytes = log_per_event * requirements.rate_eps * log_retained * requirements.log_replicas as f64;
    let state_bytes = (engine.cost.checkpoint_bytes + engine.cost.view_bytes) as f64;
    let storage_bytes = log_bytes + master_bytes + state_bytes;
    let compaction = if engine.lambda.is_some() {
        "none needed: the log keeps only its retention; the master dataset keeps every event, as batch recomputation needs".to_owned()
    } else {
        "does not apply to the input log: rebuilding windowed views needs every event, and compaction keeps only the latest per key (it would serve Q1's latest location alone)".to_owned()
    };
    let (reprocess_rate, reprocess_basis) = match &engine.lambda {
        Some(lambda) => (
            lambda.batch_events_per_second,
            format!("the final batch run's {:.0} events/s on {cpus:.0} cores", lambda.batch_events_per_second),
        ),
        None => (
            engine.reprocess.events_per_second,
            format!("the log replay's {:.0} events/s on {cpus:.0} cores", engine.reprocess.events_per_second),
        ),
    };
    let reprocess_seconds = (reprocess_rate > 0.0).then(|| history_events / (reprocess_rate / cpus * cores));
    let compute_usd_month = cores * HOURS_PER_MONTH * requirements.core_hour_usd;
    let storage_usd_month = storage_bytes / GB * requirements.gb_month_usd;
    Extrapolation {
        basis,
        events_per_core_second,
        scaling_1_to_2: capacity.and_then(|capacity| capacity.scaling(name)),
        live_cores,
        batch_cores,
        cores,
        memory_bytes: engine.cost.peak_rss_bytes as f64 / cpus * cores,
        log_bytes,
        master_bytes,
        state_bytes,
        storage_bytes,
        compaction,
        reprocess_seconds,
        reprocess_basis,
        compute_usd_month,
        storage_usd_month,
        usd_month: compute_usd_month + storage_usd_month,
    }
}
