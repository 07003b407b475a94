//! `lk capacity`: each engine's maximum sustainable rate on this machine.
//!
//! A rate is sustainable when the engine keeps up with it (it processed at least 97% of the
//! offered rate, and its backlog at the input's end is worked off within a twentieth of the
//! step, so its lag stayed bounded), its driver-location
//! p99 meets the SLO, and the driver kept its schedule: when the generator or the log fell
//! behind, the step measured the driver, not the engine; it counts as a failure, and when the
//! search ends at such a step it names the driver as the limit. The search is the OpenMessaging Benchmark's and Theodolite's: coarse steps that double
//! the rate until one fails, then bisection between the last pass and the first failure until
//! they are within the tolerance. Each step is a full `lk run` of the engine alone (its own
//! warm-up, then the measured window), so an engine's figures never share the cores with the
//! other engine's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lk_simulator::time::Clock;
use serde::{Deserialize, Serialize};

use crate::engine::EngineKind;
use crate::output::OutputFolder;
use crate::results::Results;
use crate::run::{RunError, RunOptions, run, write_json};
use crate::scenario::Scenario;
use lk_simulator::simulate::Pacing;

/// A whole capacity search: one search per engine and core count.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// The scenario searched.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// The driver-location SLO a sustainable rate must meet: Q1 p99, ms.
    pub slo_p99_ms: f64,
    /// Each step's scheduled input, s.
    pub step_seconds: f64,
    /// The search stops once the last pass and the first failure are this close (relative).
    pub tolerance: f64,
    /// One search per engine and core count.
    pub searches: Vec<Search>,
}

/// One engine's search on a given number of cores.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Search {
    /// `kappa` or `lambda`.
    pub engine: String,
    /// Cores the run could use (the process was pinned to them).
    pub cores: u32,
    /// The highest rate that passed, events/s; `null` when none did.
    pub sustainable_eps: Option<f64>,
    /// What stopped the search: `engine` (the engine fell behind or missed the SLO above the
    /// sustainable rate), `driver` (the generator or the log could not go faster, so the
    /// engine's limit is higher than measured) or `ceiling` (the search's highest rate passed).
    pub limit: String,
    /// Engine CPU-seconds per event at the sustainable rate.
    pub cpu_seconds_per_event: f64,
    /// Bytes stored per event at the sustainable rate (log, checkpoints or master dataset, views).
    pub stored_bytes_per_event: f64,
    /// Peak resident memory at the sustainable rate (the whole process).
    pub peak_rss_bytes: u64,
    /// Every step, in the order run.
    pub steps: Vec<Step>,
}

/// One rate tried.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// The rate offered, events/s.
    pub rate_eps: f64,
    /// Whether it is sustainable.
    pub passed: bool,
    /// Why not, when it failed.
    pub reason: String,
    /// Q1 (driver location) p99 visible latency, ms.
    pub p99_ms: f64,
    /// Seconds from the input's end until the engine had processed everything: the backlog
    /// (consumer lag) it had built, in time.
    pub catch_up_seconds: f64,
    /// Events processed per second after the warm-up.
    pub throughput_eps: f64,
    /// Whether the generator held its schedule and the log took every record.
    pub driver_kept_up: bool,
    /// The driver's worst lag behind its schedule, ms.
    pub schedule_lag_ms: f64,
    /// Engine CPU-seconds.
    pub cpu_seconds: f64,
    /// Events the engine processed.
    pub events: u64,
    /// Bytes stored for the engine.
    pub stored_bytes: u64,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: u64,
}

impl Capacity {
    /// An engine's search on the most cores that found a sustainable rate.
    pub fn best(&self, engine: &str) -> Option<&Search> {
        self.searches
            .iter()
            .filter(|search| search.engine == engine && search.sustainable_eps.is_some())
            .max_by_key(|search| search.cores)
    }

    /// How close to linear an engine scaled from one core to two: the rate on two over twice
    /// the rate on one (1.0 is linear); `null` unless both were searched.
    pub fn scaling(&self, engine: &str) -> Option<f64> {
        let rate = |cores: u32| {
            self.searches
                .iter()
                .find(|search| search.engine == engine && search.cores == cores)
                .and_then(|search| search.sustainable_eps)
        };
        Some(rate(2)? / (2.0 * rate(1)?))
    }
}

/// What a search needs besides the scenario.
#[derive(Clone, Debug)]
pub struct CapacityOptions {
    /// The run options every step starts from (log, takeover, test knobs); the folder is the
    /// search's.
    pub run: RunOptions,
    /// The engines to search, one at a time.
    pub engines: Vec<EngineKind>,
    /// Core counts to search on (the process is pinned to the first N cores for each).
    pub cores: Vec<u32>,
    /// Q1 p99 SLO, ms.
    pub slo_p99_ms: f64,
    /// Each step's input, s.
    pub step: Duration,
    /// The first rate tried, events/s.
    pub start_eps: f64,
    /// The highest rate tried, events/s.
    pub ceiling_eps: f64,
    /// Relative distance between the last pass and the first failure at which the search stops.
    pub tolerance: f64,
}

/// Whether a step's results show a sustainable rate, and why not.
pub fn judge_step(results: &Results, engine: &str, slo_p99_ms: f64, step_seconds: f64) -> Step {
    let Some(measured) = results.engines.get(engine) else {
        return Step {
            rate_eps: results.scenario.rate_eps,
            reason: "the engine did not run".to_owned(),
            ..Step::default()
        };
    };
    // A backlog worked off within a twentieth of the step: the lag grew by under 5% of the input.
    let lag_bound = (step_seconds / 20.0).max(0.25);
    let driver_kept_up = results.generator.kept_up;
    let p99_ms = measured.latency_ms.p99;
    let reason = if !driver_kept_up {
        format!(
            "the driver fell behind (schedule lag {:.0} ms, {:.0} of {:.0} events/s appended): the figures are the driver's, not the engine's (on shared cores the engine's own work may be what slowed it)",
            results.generator.max_schedule_lag_ms, results.generator.log_append_rate_eps, results.scenario.rate_eps
        )
    } else if measured.catch_up_seconds > lag_bound {
        format!(
            "the engine fell behind: {:.2} s of backlog at the input's end (bound {lag_bound:.2} s)",
            measured.catch_up_seconds
        )
    } else if measured.throughput_eps < 0.97 * results.scenario.rate_eps {
        format!(
            "the engine fell behind: it processed {:.0} events/s of the {:.0} offered",
            measured.throughput_eps, results.scenario.rate_eps
        )
    } else if p99_ms > slo_p99_ms {
        format!("driver-location p99 {p99_ms:.1} ms is over the SLO of {slo_p99_ms:.0} ms")
    } else {
        String::new()
    };
    Step {
        rate_eps: results.scenario.rate_eps,
        passed: reason.is_empty(),
        reason,
        p99_ms,
        catch_up_seconds: measured.catch_up_seconds,
        throughput_eps: measured.throughput_eps,
        driver_kept_up,
        schedule_lag_ms: results.generator.max_schedule_lag_ms,
        cpu_seconds: measured.cost.cpu_seconds,
        events: results.oracle.events,
        stored_bytes: measured.cost.stored_bytes,
        peak_rss_bytes: measured.cost.peak_rss_bytes,
    }
}

/// The next rate to try after `steps`, or `None` when the search is done, with what limited
/// it: `engine`, `driver` (the lowest failing rate failed because the generator or the log fell
/// behind) or `ceiling`. A driver failure is a failure like any other for the bisection: the
/// driver may keep up a little lower, and the engine must be measured there.
pub fn next_rate(steps: &[Step], options: &CapacityOptions) -> Result<f64, &'static str> {
    let best_pass = steps.iter().filter(|step| step.passed).map(|step| step.rate_eps).reduce(f64::max);
    let first_fail = steps.iter().filter(|step| !step.passed).min_by(|a, b| a.rate_eps.total_cmp(&b.rate_eps));
    let limit = |fail: &Step| if fail.driver_kept_up { "engine" } else { "driver" };
    match (best_pass, first_fail) {
        (None, None) => Ok(options.start_eps),
        (Some(pass), None) if pass >= options.ceiling_eps => Err("ceiling"),
        (Some(pass), None) => Ok((pass * 2.0).min(options.ceiling_eps)),
        (None, Some(fail)) if fail.rate_eps <= options.start_eps / 16.0 => Err(limit(fail)),
        (None, Some(fail)) => Ok(fail.rate_eps / 2.0),
        (Some(pass), Some(fail)) if (fail.rate_eps - pass) / pass <= options.tolerance => Err(limit(fail)),
        (Some(pass), Some(fail)) => Ok((pass + fail.rate_eps) / 2.0),
    }
}

/// Runs the search for every engine and core count under `options.run.out_directory`, calling
/// `each` after every step; writes `capacity.json` there.
pub fn search(
    scenario: &Scenario,
    options: &CapacityOptions,
    clock: Arc<dyn Clock>,
    each: &mut dyn FnMut(&Search, &Step),
) -> Result<Capacity, RunError> {
    let identity = format!("lk capacity: scenario {}, seed {}", scenario.name(), scenario.seed());
    let folder = OutputFolder::claim(&options.run.out_directory, &identity, options.run.takeover)?;
    let out = folder.path().to_owned();
    let mut capacity = Capacity {
        scenario: scenario.name().to_owned(),
        seed: scenario.seed(),
        slo_p99_ms: options.slo_p99_ms,
        step_seconds: options.step.as_secs_f64(),
        tolerance: options.tolerance,
        searches: Vec::new(),
    };
    let scenario = scenario.clone().with_duration(Some(options.step));
    let allowed = allowed_cpus()?;
    for &cores in &options.cores {
        let pinned =
            pin_to_cores(&allowed, cores).and_then(|()| search_on(&scenario, options, &clock, &out, cores, each));
        set_cpus(&allowed)?;
        capacity.searches.extend(pinned?);
    }
    write_json(&out.join("capacity.json"), &capacity)?;
    Ok(capacity)
}

/// Every engine's search on `cores` cores (already pinned).
fn search_on(
    scenario: &Scenario,
    options: &CapacityOptions,
    clock: &Arc<dyn Clock>,
    out: &Path,
    cores: u32,
    each: &mut dyn FnMut(&Search, &Step),
) -> Result<Vec<Search>, RunError> {
    let mut searches = Vec::new();
    for &kind in &options.engines {
        let mut search = Search { engine: kind.name().to_owned(), cores, ..Search::default() };
        let limit = loop {
            let rate = match next_rate(&search.steps, options) {
                Ok(rate) => rate.round(),
                Err(limit) => break limit,
            };
            let directory: PathBuf = out.join(format!("{}-{cores}core-{}", kind.name(), search.steps.len() + 1));
            let step_scenario =
                scenario.clone().with_rate(rate).map_err(|problem| RunError::Invalid(problem.to_string()))?;
            let run_options = RunOptions {
                out_directory: directory.clone(),
                pacing: Pacing::Scheduled,
                reprocess: false,
                engines: vec![kind],
                // The search's steps all send the same stream at other rates.
                profile: crate::run::StreamProfiling::Never,
                ..options.run.clone()
            };
            let results = run(&step_scenario, &run_options, Arc::clone(clock), &mut |_| {})?;
            let step = judge_step(&results, kind.name(), options.slo_p99_ms, options.step.as_secs_f64());
            search.steps.push(step);
            each(&search, search.steps.last().expect("just pushed"));
            drop_bulk(&directory)?;
        };
        search.limit = limit.to_owned();
        if let Some(best) =
            search.steps.iter().filter(|step| step.passed).max_by(|a, b| a.rate_eps.total_cmp(&b.rate_eps))
        {
            search.sustainable_eps = Some(best.rate_eps);
            search.cpu_seconds_per_event = best.cpu_seconds / best.events.max(1) as f64;
            search.stored_bytes_per_event = best.stored_bytes as f64 / best.events.max(1) as f64;
            search.peak_rss_bytes = best.peak_rss_bytes;
        }
        searches.push(search);
    }
    Ok(searches)
}

/// A step's log and state are big and its figures are taken: keep its results, drop the bulk.
fn drop_bulk(directory: &Path) -> Result<(), RunError> {
    let folder = OutputFolder::reopen(directory)?;
    for bulky in ["log", "master", "checkpoints", "views"] {
        folder.remove(bulky)?;
    }
    Ok(())
}

/// The CPUs this process may use now.
fn allowed_cpus() -> Result<rustix::thread::CpuSet, RunError> {
    rustix::thread::sched_getaffinity(None)
        .map_err(|cause| RunError::Invalid(format!("the CPU affinity could not be read: {cause}")))
}

/// Pins this thread, and every thread it starts from now on, to the first `cores` of the CPUs
/// in `allowed`. A run's threads are all started after this, so the whole run (generator, log,
/// engine) shares those cores.
fn pin_to_cores(allowed: &rustix::thread::CpuSet, cores: u32) -> Result<(), RunError> {
    let mut set = rustix::thread::CpuSet::new();
    let mut added = 0;
    for cpu in (0..rustix::thread::CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu)) {
        if added == cores {
            break;
        }
        set.set(cpu);
        added += 1;
    }
    if added < cores {
        return Err(RunError::Invalid(format!(
            "--cores {cores}: this process may use only {added} cores on this machine"
        )));
    }
    set_cpus(&set)
}

/// Sets this thread's CPUs.
fn set_cpus(set: &rustix::thread::CpuSet) -> Result<(), RunError> {
    rustix::thread::sched_setaffinity(None, set)
        .map_err(|cause| RunError::Invalid(format!("the CPU affinity could not be set: {cause}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CapacityOptions {
        CapacityOptions {
            run: RunOptions {
                out_directory: PathBuf::new(),
                pacing: Pacing::Scheduled,
                reprocess: false,
                engines: Vec::new(),
                log: crate::run::LogChoice::Embedded,
                takeover: crate::output::Takeover::Refuse,
                test_knobs: crate::run::TestKnobs::default(),
                spark: Default::default(),
                kstreams: Default::default(),
                profile: Default::default(),
                live: None,
            },
            engines: vec![EngineKind::Kappa],
            cores: vec![1],
            slo_p99_ms: 1000.0,
            step: Duration::from_secs(5),
            start_eps: 100_000.0,
            ceiling_eps: 1_600_000.0,
            tolerance: 0.05,
        }
    }

    /// Runs the search against an engine that sustains `limit`, with a driver that manages
    /// `driver`; returns the rates tried and the end.
    fn simulate(limit: f64, driver: f64) -> (Vec<f64>, &'static str) {
        let mut steps = Vec::new();
        loop {
            match next_rate(&steps, &options()) {
                Ok(rate) => steps.push(Step {
                    rate_eps: rate,
                    passed: rate <= limit && rate <= driver,
                    driver_kept_up: rate <= driver,
                    ..Step::default()
                }),
                Err(end) => return (steps.iter().map(|step| step.rate_eps).collect(), end),
            }
        }
    }

    #[test]
    fn doubling_then_bisection_ends_within_the_tolerance_of_the_limit() {
        let (rates, end) = simulate(730_000.0, f64::MAX);
        assert_eq!(end, "engine");
        assert_eq!(&rates[..4], &[100_000.0, 200_000.0, 400_000.0, 800_000.0]);
        let best = rates.iter().copied().filter(|rate| *rate <= 730_000.0).fold(0.0, f64::max);
        assert!(best > 730_000.0 * 0.95 && best <= 730_000.0, "{rates:?}");
    }

    #[test]
    fn a_driver_that_falls_behind_first_is_named_as_the_limit() {
        let (rates, end) = simulate(5_000_000.0, 1_300_000.0);
        assert_eq!(end, "driver", "{rates:?}");
        let (_, end) = simulate(f64::MAX, f64::MAX);
        assert_eq!(end, "ceiling");
        let (rates, end) = simulate(1_000.0, f64::MAX);
        assert_eq!((rates.last().copied(), end), (Some(6_250.0), "engine"), "none sustainable: {rates:?}");
    }
}
