//! `[[faults]]`: what goes wrong during a run, and when. A plan entry is one fault at a time or
//! a count of them at seeded times; [`resolve_faults`] turns the plan into faults at times for a
//! seed and a duration. Overloads and late bursts go to the workload (the generator's rate and
//! its phones); every other fault is the harness's to inject.

use std::time::Duration;

use lk_simulator::late_bursts::{LateBurst, LateBursts, MAX_LATE_BURSTS};
use lk_simulator::settings::{Reader, invalid};
use lk_simulator::workload::Overload;
use serde::Deserialize;

use crate::engine::EngineKind;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawFault {
    pub kind: Option<String>,
    pub at: Option<String>,
    pub count: Option<u32>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub engine: Option<String>,
    pub point: Option<String>,
    pub duration: Option<String>,
    pub factor: Option<f64>,
    pub events: Option<u32>,
    pub share: Option<f64>,
}

/// Which engines a crash hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    /// One engine.
    Engine(EngineKind),
    /// Each engine that runs.
    Every,
}

impl FaultTarget {
    /// Whether `engine` is hit.
    pub fn hits(self, engine: EngineKind) -> bool {
        match self {
            FaultTarget::Engine(target) => target == engine,
            FaultTarget::Every => true,
        }
    }
}

/// Where in its work an engine crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After its outputs are written and before its offsets are committed.
    AfterOutput,
    /// In the middle of committing: a checkpoint or a master-dataset transaction is half
    /// written.
    MidCommit,
    /// Inside one of Lambda's batch runs (waiting for its seals or computing its views): the
    /// run's views die unserved. The crash waits for a batch run to be under way.
    BatchRun,
    /// While the engine is catching up after its previous crash (it has restarted and its lag is
    /// not yet back): recovery itself interrupted. One that finds the engine caught up lands as
    /// `after-output`, and is reported as that.
    InRecovery,
    /// During a rescale (`backpressure = "scale-out"`): the crash waits until the engine has
    /// been restarted with one more worker after its time, and lands at once, while the new
    /// incarnation restores state its predecessor checkpointed under fewer workers.
    InRescale,
    /// Inside Kappa's reprocessing after the run (the replay of the whole log into a new view
    /// version): the job dies part way and starts again into the same version. Its time is not
    /// a time: the i-th of n such crashes lands after i/(n+1) of the log's records.
    Reprocess,
}

impl CrashPoint {
    /// The name used in scenario files and results.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterOutput => "after-output",
            CrashPoint::MidCommit => "mid-commit",
            CrashPoint::BatchRun => "batch-run",
            CrashPoint::InRecovery => "in-recovery",
            CrashPoint::InRescale => "in-rescale",
            CrashPoint::Reprocess => "reprocess",
        }
    }
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// The engine stops at once, loses everything not durable, and restarts from what is.
    Crash {
        /// Which engines.
        target: FaultTarget,
        /// Where in its work.
        point: CrashPoint,
    },
    /// The producer sends its last `events` events again (same event ids).
    Redelivery {
        /// How many.
        events: u32,
    },
    /// The log refuses appends and reads for a while; producers and engines retry with backoff.
    Outage {
        /// How long.
        duration: Duration,
    },
    /// The input rate is multiplied by `factor` for a while.
    Overload {
        /// How long.
        duration: Duration,
        /// By how much.
        factor: f64,
    },
    /// A share of the phones lose their signal for a while (a cell network failing); what they
    /// record meanwhile arrives together when it ends, late by up to `duration` of event time.
    LateBurst {
        /// How long, run time.
        duration: Duration,
        /// The share of phones, in (0, 1].
        share: f64,
    },
}

impl FaultKind {
    /// The name used in scenario files and results.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Crash { .. } => "crash",
            FaultKind::Redelivery { .. } => "redelivery",
            FaultKind::Outage { .. } => "outage",
            FaultKind::Overload { .. } => "overload",
            FaultKind::LateBurst { .. } => "late-burst",
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// When, as time since the run's start (wall clock of the run).
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
}

/// When a planned fault happens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultTimes {
    /// Once, at this time since the start.
    At(Duration),
    /// `count` times, at seeded random times between `from` and `until` (default: the middle
    /// 80% of the run).
    Seeded {
        /// How many.
        count: u32,
        /// Earliest.
        from: Option<Duration>,
        /// Latest.
        until: Option<Duration>,
    },
}

/// A `[[faults]]` entry, validated; [`resolve_faults`] turns it into faults at times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    /// When.
    pub times: FaultTimes,
    /// What; a crash with no point gets a seeded one.
    pub kind: FaultKind,
    /// For a crash: whether its point is drawn from the seed.
    pub random_point: bool,
}

/// The faults of a plan for a seed and a run duration, in time order. Seeded times and crash
/// points come from their own stream of the root seed, so the same scenario and seed crash at
/// the same times. Seeded faults need a duration: without one (a file that leaves it to
/// `--duration`) they wait until it is given.
pub fn resolve_faults(plans: &[FaultPlan], seed: u64, duration: Option<Duration>) -> Vec<Fault> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(lk_simulator::derive_seed(seed, 0xFA17));
    let mut faults = Vec::new();
    for plan in plans {
        let times: Vec<Duration> = match plan.times {
            FaultTimes::At(at) => vec![at],
            FaultTimes::Seeded { count, from, until } => {
                let Some(run) = duration else { continue };
                let from = from.unwrap_or(run.mul_f64(0.1));
                let until = until.unwrap_or(run.mul_f64(0.9)).max(from);
                let mut times: Vec<Duration> =
                    (0..count).map(|_| from + (until - from).mul_f64(rng.random::<f64>())).collect();
                times.sort();
                times
            }
        };
        for at in times {
            let mut kind = plan.kind;
            if let FaultKind::Crash { point, .. } = &mut kind
                && plan.random_point
            {
                *point = if rng.random::<bool>() { CrashPoint::AfterOutput } else { CrashPoint::MidCommit };
            }
            faults.push(Fault { at, kind });
        }
    }
    faults.sort_by_key(|fault| fault.at);
    faults
}

/// Reads `[[faults]]`: each entry is one fault at `at`, or `count` faults at seeded random
/// times between `from` and `until`.
pub fn read_faults(read: &mut Reader<'_>, raw: &[RawFault]) -> Vec<FaultPlan> {
    let mut plans = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let field = |name: &str| format!("faults[{index}].{name}");
        let mut random_point = false;
        let kind = match entry.kind.as_deref() {
            Some("crash") => {
                let target = match entry.engine.as_deref().unwrap_or("both") {
                    "both" => FaultTarget::Every,
                    name => EngineKind::parse(name).map(FaultTarget::Engine).unwrap_or_else(|problem| {
                        read.fail(invalid(field("engine"), format!("{problem}, or \"both\"")));
                        FaultTarget::Every
                    }),
                };
                let point = match entry.point.as_deref().unwrap_or("random") {
                    "after-output" => CrashPoint::AfterOutput,
                    "mid-commit" => CrashPoint::MidCommit,
                    "in-recovery" => CrashPoint::InRecovery,
                    "in-rescale" => CrashPoint::InRescale,
                    "reprocess" => {
                        if target != FaultTarget::Engine(EngineKind::Kappa) {
                            read.fail(invalid(
                                field("point"),
                                "\"reprocess\" lands in lk's Kappa's reprocessing: set engine = \"kappa\"",
                            ));
                        }
                        CrashPoint::Reprocess
                    }
                    "batch-run" => {
                        if target != FaultTarget::Engine(EngineKind::Lambda) {
                            read.fail(invalid(
                                field("point"),
                                "\"batch-run\" lands in lk's Lambda's batch runs: set engine = \"lambda\"",
                            ));
                        }
                        CrashPoint::BatchRun
                    }
                    "random" => {
                        random_point = true;
                        CrashPoint::AfterOutput
                    }
                    other => {
                        read.fail(invalid(
                            field("point"),
                            format!(
                                "must be \"after-output\", \"mid-commit\", \"batch-run\", \"in-recovery\", \
                                 \"in-rescale\", \"reprocess\" or \"random\", got {other:?}"
                            ),
                        ));
                        CrashPoint::AfterOutput
                    }
                };
                FaultKind::Crash { target, point }
            }
            Some("redelivery") => {
                let events = entry.events.unwrap_or(10_000);
                if !(1..=10_000_000).contains(&events) {
                    read.fail(invalid(field("events"), format!("must be between 1 and 10000000, got {events}")));
                }
                FaultKind::Redelivery { events }
            }
            Some("outage") => FaultKind::Outage {
                duration: read.positive_duration(&field("duration"), entry.duration.as_ref(), "2s"),
            },
            Some("overload") => {
                let factor = read.positive(&field("factor"), entry.factor, 3.0);
                if factor <= 1.0 || factor > 100.0 {
                    read.fail(invalid(
                        field("factor"),
                        format!("must be above 1 and at most 100 (a rate multiplier), got {factor}"),
                    ));
                }
                FaultKind::Overload {
                    duration: read.positive_duration(&field("duration"), entry.duration.as_ref(), "5s"),
                    factor,
                }
            }
            Some("late-burst") => {
                let share = entry.share.unwrap_or(DEFAULT_BURST_SHARE);
                if !(share > 0.0 && share <= 1.0) {
                    read.fail(invalid(
                        field("share"),
                        format!("must be above 0 and at most 1 (the share of phones silenced), got {share}"),
                    ));
                }
                FaultKind::LateBurst {
                    duration: read.positive_duration(&field("duration"), entry.duration.as_ref(), "2s"),
                    share,
                }
            }
            other => {
                let got = other.map_or("nothing".to_owned(), |kind| format!("{kind:?}"));
                read.fail(invalid(
                    field("kind"),
                    format!("must be \"crash\", \"redelivery\", \"outage\", \"overload\" or \"late-burst\", got {got}"),
                ));
                continue;
            }
        };
        let times = match (&entry.at, entry.count) {
            (Some(at), None) => FaultTimes::At(read.duration(&field("at"), Some(at), "0s")),
            (None, Some(count)) => {
                if !(1..=1000).contains(&count) {
                    read.fail(invalid(field("count"), format!("must be between 1 and 1000, got {count}")));
                }
                let from = entry.from.as_ref().map(|text| read.duration(&field("from"), Some(text), "0s"));
                let until = entry.until.as_ref().map(|text| read.duration(&field("until"), Some(text), "0s"));
                if let (Some(from), Some(until)) = (from, until)
                    && until <= from
                {
                    read.fail(invalid(field("until"), "must be after `from`"));
                }
                FaultTimes::Seeded { count, from, until }
            }
            _ => {
                read.fail(invalid(field("at"), "give either `at` (one fault) or `count` (seeded random times)"));
                continue;
            }
        };
        plans.push(FaultPlan { times, kind, random_point });
    }
    let bursts: u32 = plans
        .iter()
        .filter(|plan| matches!(plan.kind, FaultKind::LateBurst { .. }))
        .map(|plan| match plan.times {
            FaultTimes::At(_) => 1,
            FaultTimes::Seeded { count, .. } => count,
        })
        .sum();
    if bursts as usize > MAX_LATE_BURSTS {
        read.fail(invalid("faults", format!("at most {MAX_LATE_BURSTS} late bursts in a run, got {bursts}")));
    }
    plans
}

/// The share of phones a late burst silences unless `share` says.
pub const DEFAULT_BURST_SHARE: f64 = 0.3;

/// The late-burst faults, as the workload's table of them, for a run that starts at event time
/// `start_us` and runs `compression` event seconds a second; `live` when more may come while it
/// runs (`lk demo`).
pub fn late_bursts_of(faults: &[Fault], start_us: i64, compression: f64, live: bool) -> LateBursts {
    let bursts = LateBursts::new(start_us, compression, live);
    for fault in faults {
        if let FaultKind::LateBurst { duration, share } = fault.kind {
            // The scenario's reader refuses more than the table holds.
            let _ = bursts.add(LateBurst { at: fault.at, duration, share });
        }
    }
    bursts
}

/// The overload faults, as the workload's periods of a multiplied rate.
pub fn overloads_of(faults: &[Fault]) -> Vec<Overload> {
    faults
        .iter()
        .filter_map(|fault| match fault.kind {
            FaultKind::Overload { duration, factor } => Some(Overload { at: fault.at, duration, factor }),
            _ => None,
        })
        .collect()
}
