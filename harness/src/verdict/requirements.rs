//! `[requirements]`: what the platform must achieve, and the prices its cost is counted at.
//!
//! The defaults are the seed question's: 1M events/s, sub-second driver locations, a year of
//! history for batch analytics, exactly-once. The prices are list prices of a large cloud's
//! on-demand general-purpose cores and object storage, rounded; a user overrides them.

use std::time::Duration;

use lk_simulator::settings::{Reader, invalid};
use serde::{Deserialize, Serialize};

/// `[requirements]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawRequirements {
    pub rate_eps: Option<f64>,
    pub location_p99: Option<String>,
    pub exactly_once: Option<bool>,
    pub completeness: Option<f64>,
    pub complete_within: Option<String>,
    pub history: Option<String>,
    pub log_retention: Option<String>,
    pub reprocess_within: Option<String>,
    pub batch_every: Option<String>,
    pub log_replicas: Option<u32>,
    pub core_hour_usd: Option<f64>,
    pub gb_month_usd: Option<f64>,
}

/// What the platform must achieve (validated, defaults filled in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// The input rate the platform must sustain, events/s.
    pub rate_eps: f64,
    /// The driver-location SLO: Q1's p99 visible latency (due time to served), ms.
    pub location_p99_ms: f64,
    /// Whether every view must count every event exactly once, through the faults injected.
    pub exactly_once: bool,
    /// The completeness every windowed view (Q2 to Q5) must reach: served contributions over
    /// the oracle's for every event, late ones included.
    pub completeness: f64,
    /// How soon after a window could first be complete (its end plus the watermark delay) it
    /// must reach that completeness, s of real (event) time; `null`: by the end of the run.
    pub complete_within_seconds: Option<f64>,
    /// History kept for batch analytics and reprocessing, s.
    pub history_seconds: f64,
    /// How long Lambda's input log keeps events (its master dataset keeps the history), s.
    pub log_retention_seconds: f64,
    /// The longest acceptable rebuild of every view from the whole history, s; `null`: no limit.
    pub reprocess_within_seconds: Option<f64>,
    /// How often Lambda's batch layer recomputes its views from the whole master dataset at the
    /// target, s (the scenario's `lambda.batch_interval` is the demo's, on a compressed clock).
    pub batch_every_seconds: f64,
    /// Copies the log keeps of every record (Kafka's replication factor); the master dataset's
    /// store keeps its own copies within its price.
    pub log_replicas: u32,
    /// Price of one core for one hour, USD.
    pub core_hour_usd: f64,
    /// Price of one GB stored for one month, USD.
    pub gb_month_usd: f64,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            rate_eps: 1_000_000.0,
            location_p99_ms: 1000.0,
            exactly_once: true,
            completeness: 0.999,
            complete_within_seconds: None,
            history_seconds: 365.0 * 86_400.0,
            log_retention_seconds: 7.0 * 86_400.0,
            reprocess_within_seconds: None,
            batch_every_seconds: 86_400.0,
            log_replicas: 3,
            core_hour_usd: 0.04,
            gb_month_usd: 0.023,
        }
    }
}

/// Reads `[requirements]`.
pub fn read_requirements(read: &mut Reader<'_>, raw: &RawRequirements) -> Requirements {
    let defaults = Requirements::default();
    let seconds = |duration: Duration| duration.as_secs_f64();
    let optional = |read: &mut Reader<'_>, field: &str, text: Option<&String>| {
        text.map(|text| seconds(read.positive_duration(field, Some(text), "1s")))
    };
    let complete_within_seconds = optional(read, "requirements.complete_within", raw.complete_within.as_ref());
    let reprocess_within_seconds = optional(read, "requirements.reprocess_within", raw.reprocess_within.as_ref());
    let completeness = read.fraction("requirements.completeness", raw.completeness, defaults.completeness);
    let history_seconds = seconds(read.positive_duration("requirements.history", raw.history.as_ref(), "365d"));
    let log_retention_seconds =
        seconds(read.positive_duration("requirements.log_retention", raw.log_retention.as_ref(), "7d"));
    if log_retention_seconds > history_seconds {
        read.fail(invalid(
            "requirements.log_retention",
            "must not be longer than requirements.history (the log is part of the history)",
        ));
    }
    Requirements {
        rate_eps: read.positive("requirements.rate_eps", raw.rate_eps, defaults.rate_eps),
        location_p99_ms: seconds(read.positive_duration("requirements.location_p99", raw.location_p99.as_ref(), "1s"))
            * 1000.0,
        exactly_once: raw.exactly_once.unwrap_or(defaults.exactly_once),
        completeness,
        complete_within_seconds,
        history_seconds,
        log_retention_seconds,
        reprocess_within_seconds,
        batch_every_seconds: seconds(read.positive_duration(
            "requirements.batch_every",
            raw.batch_every.as_ref(),
            "1d",
        )),
        log_replicas: match raw.log_replicas.unwrap_or(defaults.log_replicas) {
            replicas @ 1..=16 => replicas,
            other => {
                read.fail(invalid("requirements.log_replicas", format!("must be between 1 and 16, got {other}")));
                defaults.log_replicas
            }
        },
        core_hour_usd: read.positive("requirements.core_hour_usd", raw.core_hour_usd, defaults.core_hour_usd),
        gb_month_usd: read.positive("requirements.gb_month_usd", raw.gb_month_usd, defaults.gb_month_usd),
    }
}
