//! The engines' sections of a scenario file: `[windows]` (the query set's sizes), `[watermark]`
//! (the lateness policy) and `[lambda]` (the batch layer), plus the delivery guarantees and sink
//! choices an engine runs with. The harness reads `[engine]` and `[[faults]]` and puts the whole
//! scenario together; the simulator reads the workload.

use std::time::Duration;

use lk_simulator::settings::{self, Reader, ScenarioError, invalid};
use serde::Deserialize;

/// The sections this module reads.
pub const SECTIONS: [&str; 3] = ["windows", "watermark", "lambda"];

/// The engines' part of the file as written; the file's other sections are ignored here.
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawEngineSections {
    #[serde(default)]
    pub windows: RawWindows,
    #[serde(default)]
    pub watermark: RawWatermark,
    #[serde(default)]
    pub lambda: RawLambda,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawWindows {
    pub rides_per_driver: Option<String>,
    pub zone_demand: Option<String>,
    pub zone_demand_slide: Option<String>,
    pub session_gap: Option<String>,
    pub trends: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawWatermark {
    pub delay: Option<String>,
    pub allowed_lateness: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawLambda {
    pub batch_interval: Option<String>,
    pub batch_threads: Option<u32>,
}

/// The engines' sections, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSections {
    /// Window sizes of the query set.
    pub windows: Windows,
    /// The engines' lateness policy.
    pub watermark: Watermark,
    /// How the Lambda engine's batch layer runs.
    pub lambda: LambdaSettings,
}

impl EngineSections {
    /// Reads the engines' sections of scenario TOML; `origin` names where it came from in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let raw: RawEngineSections = settings::parse_sections(text, origin)?;
        let mut problem = None;
        let sections = Self::read(&mut Reader::new(&mut problem), &raw);
        match problem {
            Some(problem) => Err(ScenarioError::new(origin, problem)),
            None => Ok(sections),
        }
    }

    /// Checks every field and fills in defaults; problems go to `read`.
    pub fn read(read: &mut Reader<'_>, raw: &RawEngineSections) -> Self {
        let (windows, watermark) = read_windows(read, &raw.windows, &raw.watermark);
        EngineSections { windows, watermark, lambda: read_lambda(read, &raw.lambda) }
    }
}

/// A delivery guarantee an engine runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guarantee {
    /// Offsets are committed before the records are processed: a crash loses what was
    /// committed but not yet processed.
    AtMostOnce,
    /// Offsets are committed after processing, outputs go to a sink that is not idempotent,
    /// and the producer retries without de-duplication: a crash or a re-send counts some events
    /// twice.
    AtLeastOnce,
    /// Offsets and outputs are committed atomically (checkpoints and idempotent sink writes,
    /// or transactions), and the producer de-duplicates.
    ExactlyOnce,
}

impl Guarantee {
    /// All three, weakest first.
    pub const ALL: [Guarantee; 3] = [Guarantee::AtMostOnce, Guarantee::AtLeastOnce, Guarantee::ExactlyOnce];

    /// The name used in scenario files, on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Guarantee::AtMostOnce => "at-most-once",
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce => "exactly-once",
        }
    }

    /// The guarantee a name stands for.
    pub fn parse(name: &str) -> Option<Guarantee> {
        Guarantee::ALL.into_iter().find(|guarantee| guarantee.name() == name)
    }

    /// A guarantee field: its value, or `default` when it is not given.
    pub fn read(read: &mut Reader<'_>, field: &str, value: Option<&str>, default: Guarantee) -> Guarantee {
        match value {
            None => default,
            Some(name) => Guarantee::parse(name).unwrap_or_else(|| {
                read.fail(invalid(
                    field,
                    format!("must be \"at-most-once\", \"at-least-once\" or \"exactly-once\", got {name:?}"),
                ));
                default
            }),
        }
    }
}

/// Window sizes of the query set (event time).
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    /// Q2: tumbling window of rides per driver.
    pub rides_per_driver: Duration,
    /// Q3: sliding window of requests per zone.
    pub zone_demand: Duration,
    /// Q3: how far the sliding window moves; divides `zone_demand`.
    pub zone_demand_slide: Duration,
    /// Q4: inactivity gap that closes a driver's session.
    pub session_gap: Duration,
    /// Q5: tumbling window of historical trends per zone.
    pub trends: Duration,
}

/// The engines' lateness policy: bounded out-of-orderness watermarks with allowed lateness.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    /// The watermark trails the largest event time seen by this much.
    pub delay: Duration,
    /// A window keeps accepting (and re-emitting) late events this long after it fires.
    pub allowed_lateness: Duration,
}

/// How an engine's views reach its serving store (`engine.kappa_sink`, `engine.lambda_sink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkChoice {
    /// Transactional on Kafka when the engine runs exactly-once, direct otherwise.
    Auto,
    /// Straight into the serving store; exactly-once from checkpoints and idempotent upserts.
    Direct,
    /// Through a compacted output topic in log transactions, with the input offsets, and
    /// materialised into the serving store from it (Kafka Streams' exactly-once). Needs
    /// exactly-once.
    Transactional,
}

impl SinkChoice {
    /// A sink field: its value, or `auto` when it is not given.
    pub fn read(read: &mut Reader<'_>, field: &str, text: Option<&str>) -> SinkChoice {
        match text.unwrap_or("auto") {
            "auto" => SinkChoice::Auto,
            "direct" => SinkChoice::Direct,
            "transactional" => SinkChoice::Transactional,
            other => {
                read.fail(invalid(field, format!("must be \"auto\", \"direct\" or \"transactional\", got {other:?}")));
                SinkChoice::Auto
            }
        }
    }
}

/// The Lambda engine's batch layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaSettings {
    /// Event time between scheduled batch runs (each recomputes the batch views from the
    /// master dataset up to a fresh cutoff).
    pub batch_interval: Duration,
    /// Threads a scheduled batch run uses during the live run (reprocessing uses every core).
    pub batch_threads: u32,
}

/// `[windows]` and `[watermark]`: the query set's sizes and the lateness policy.
fn read_windows(read: &mut Reader<'_>, windows: &RawWindows, watermark: &RawWatermark) -> (Windows, Watermark) {
    let windows = Windows {
        rides_per_driver: read.positive_duration("windows.rides_per_driver", windows.rides_per_driver.as_ref(), "5m"),
        zone_demand: read.positive_duration("windows.zone_demand", windows.zone_demand.as_ref(), "5m"),
        zone_demand_slide: read.positive_duration(
            "windows.zone_demand_slide",
            windows.zone_demand_slide.as_ref(),
            "1m",
        ),
        session_gap: read.positive_duration("windows.session_gap", windows.session_gap.as_ref(), "10m"),
        trends: read.positive_duration("windows.trends", windows.trends.as_ref(), "1h"),
    };
    let (window_us, slide_us) = (windows.zone_demand.as_micros(), windows.zone_demand_slide.as_micros().max(1));
    if !window_us.is_multiple_of(slide_us) || window_us / slide_us > 64 {
        read.fail(invalid(
            "windows.zone_demand_slide",
            "must divide `zone_demand` into at most 64 slides (5m windows sliding by 1m make 5)",
        ));
    }
    let watermark = Watermark {
        delay: read.duration("watermark.delay", watermark.delay.as_ref(), "2s"),
        allowed_lateness: read.duration("watermark.allowed_lateness", watermark.allowed_lateness.as_ref(), "30s"),
    };
    (windows, watermark)
}

/// `[lambda]`.
fn read_lambda(read: &mut Reader<'_>, raw: &RawLambda) -> LambdaSettings {
    let batch_threads = raw.batch_threads.unwrap_or(1);
    if !(1..=64).contains(&batch_threads) {
        read.fail(invalid("lambda.batch_threads", format!("must be between 1 and 64, got {batch_threads}")));
    }
    LambdaSettings {
        batch_interval: read.positive_duration("lambda.batch_interval", raw.batch_interval.as_ref(), "1m"),
        batch_threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        EngineSections::from_toml(text, "scenarios/bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn defaults_fill_an_empty_file() {
        let sections = EngineSections::from_toml("", "empty.toml").unwrap();
        assert_eq!(sections.windows.rides_per_driver, Duration::from_secs(300));
        assert_eq!(sections.watermark.delay, Duration::from_secs(2));
        assert_eq!(sections.lambda.batch_threads, 1);
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("[windows]\nzone_demand = \"5m\"\nzone_demand_slide = \"7m\"", "windows.zone_demand_slide"),
            ("[windows]\ntrends = \"0s\"", "windows.trends"),
            ("[watermark]\ndelay = \"soon\"", "watermark.delay"),
            ("[lambda]\nbatch_threads = 0", "lambda.batch_threads"),
        ] {
            let message = problem(text);
            assert!(message.contains(&format!("field `{field}`")), "{text}: {message}");
        }
        assert!(problem("[windows]\nsize = \"1m\"").contains("unknown field `size`"));
    }
}
