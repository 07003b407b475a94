//! `lk torture`: many short runs of one scenario, each under its own seeded fault schedule drawn
//! over every point where lk's engines can die, each checked by the oracle. A run that lost,
//! duplicated or mismatched anything under exactly-once is a failure, and the summary gives the
//! command that replays it (its schedule and its stream come from the torture's seed and the
//! run's index alone).
//!
//! The schedule of a run mixes crashes after output and before the offsets' commit, in the
//! middle of a commit (a checkpoint, a master-dataset transaction or a transactional sink's
//! commit half written), inside a batch run of Lambda's, during the recovery from a crash just
//! before, of one engine or both at once; a producer re-sending a batch; the log unavailable
//! for a while. What a fault finds decides where it lands: an in-recovery crash that finds its
//! engine caught up is an ordinary one, and is counted as that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lk_simulator::time::Clock;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::engine::EngineKind;
use crate::output::OutputFolder;
use crate::results::Results;
use crate::run::{RunError, RunOptions, run};
use crate::scenario::{CrashPoint, FaultKind, FaultPlan, FaultTarget, FaultTimes, Guarantee, Scenario};

/// How a torture runs.
#[derive(Clone, Debug)]
pub struct TortureOptions {
    /// Runs, numbered from 0.
    pub runs: u32,
    /// Only this run (a replay), when set.
    pub only: Option<u32>,
    /// The torture's seed: each run's stream and schedule derive from it and the run's index.
    pub seed: u64,
    /// Each run's length.
    pub duration: Duration,
    /// At most this many faults per run (at least one).
    pub max_faults: u32,
    /// How each run runs (its folder is replaced by the run's own under `out_directory`).
    pub run: RunOptions,
    /// The command that started the torture, without `--only` and `--out`: a failed run's
    /// replay is this with `--only INDEX` and a folder of its own.
    pub command: String,
}

/// One engine in one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EngineOutcome {
    /// The engine.
    pub engine: String,
    /// Its delivery guarantee.
    pub guarantee: String,
    /// Crashes that landed, by point.
    pub crashes: BTreeMap<String, u64>,
    /// Each crash's recovery, s (until the engine's lag was back).
    pub recovery_seconds: Vec<f64>,
    /// Contributions lost, counted twice, and cells that differ, against the oracle.
    pub lost: u64,
    /// See `lost`.
    pub duplicated: u64,
    /// See `lost`.
    pub mismatched_windows: u64,
    /// Whether every malformed record is in the dead letters once.
    pub dead_letters_accounted: bool,
    /// When the run reprocessed (a `reprocess` crash was drawn): whether the rebuilt views were
    /// exact, and how often the reprocessing crashed and started again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprocess: Option<(bool, u32)>,
}

impl EngineOutcome {
    fn of(engine: &str, results: &crate::results::EngineResults) -> Self {
        let correctness = &results.correctness;
        let mut crashes = BTreeMap::new();
        for crash in &results.faults.crash_list {
            *crashes.entry(crash.point.clone()).or_default() += 1;
        }
        Self {
            engine: engine.to_owned(),
            guarantee: correctness.guarantee.clone(),
            crashes,
            recovery_seconds: results.faults.crash_list.iter().map(|crash| crash.recovery_seconds).collect(),
            lost: correctness.lost,
            duplicated: correctness.duplicated,
            mismatched_windows: correctness.mismatched_windows,
            dead_letters_accounted: correctness.dead_letters_accounted,
            reprocess: (results.reprocess.events > 0)
                .then_some((results.reprocess.correct, results.reprocess.restarts)),
        }
    }

    /// Whether the engine broke its guarantee: exactly-once lost, counted twice or mismatched
    /// anything, or lost a dead letter. The weaker guarantees are allowed what they allow.
    pub fn broke_its_guarantee(&self) -> bool {
        self.guarantee == Guarantee::ExactlyOnce.name()
            && (self.lost > 0
                || self.duplicated > 0
                || self.mismatched_windows > 0
                || !self.dead_letters_accounted
                || self.reprocess.is_some_and(|(correct, _)| !correct))
    }
}

/// One run of a torture.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TortureRun {
    /// Its index.
    pub index: u32,
    /// Its stream's seed.
    pub seed: u64,
    /// The faults it was given, in time order, as `at kind detail`.
    pub schedule: Vec<String>,
    /// Its folder.
    pub folder: String,
    /// Each engine's outcome (empty when the run failed).
    pub engines: Vec<EngineOutcome>,
    /// Why the run failed, when an engine gave up (stuck, or an error in its recovery).
    pub error: Option<String>,
    /// The command that replays it.
    pub replay: String,
}

impl TortureRun {
    /// Whether the run failed: an engine gave up, or one under exactly-once broke it.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.engines.iter().any(EngineOutcome::broke_its_guarantee)
    }
}

/// A whole torture (`torture.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Torture {
    /// The scenario's name.
    pub scenario: String,
    /// The torture's seed.
    pub seed: u64,
    /// Each run's length, s.
    pub run_seconds: f64,
    /// `embedded` or `kafka`.
    pub log: String,
    /// Every run.
    pub runs: Vec<TortureRun>,
}

/// What a torture adds up to, per engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineTally {
    /// Its guarantee.
    pub guarantee: String,
    /// Runs it took part in that finished.
    pub runs: u32,
    /// Crashes that landed, by point.
    pub crashes: BTreeMap<String, u64>,
    /// Recoveries, s, sorted.
    pub recoveries: Vec<f64>,
    /// Runs that lost, counted twice or mismatched anything.
    pub runs_lost: u32,
    /// See `runs_lost`.
    pub runs_duplicated: u32,
    /// See `runs_lost`.
    pub runs_mismatched: u32,
    /// Runs where it broke its guarantee.
    pub runs_broken: u32,
}

impl Torture {
    /// The runs that failed.
    pub fn failed(&self) -> Vec<&TortureRun> {
        self.runs.iter().filter(|run| run.failed()).collect()
    }

    /// Per engine, what its runs add up to.
    pub fn tally(&self) -> BTreeMap<String, EngineTally> {
        let mut tally: BTreeMap<String, EngineTally> = BTreeMap::new();
        for outcome in self.runs.iter().flat_map(|run| &run.engines) {
            let engine = tally.entry(outcome.engine.clone()).or_default();
            engine.guarantee.clone_from(&outcome.guarantee);
            engine.runs += 1;
            for (point, count) in &outcome.crashes {
                *engine.crashes.entry(point.clone()).or_default() += count;
            }
            if let Some((_, restarts)) = outcome.reprocess.filter(|&(_, restarts)| restarts > 0) {
                *engine.crashes.entry(CrashPoint::Reprocess.name().to_owned()).or_default() += u64::from(restarts);
            }
            engine.recoveries.extend(&outcome.recovery_seconds);
            engine.runs_lost += u32::from(outcome.lost > 0);
            engine.runs_duplicated += u32::from(outcome.duplicated > 0);
            engine.runs_mismatched += u32::from(outcome.mismatched_windows > 0);
            engine.runs_broken += u32::from(outcome.broke_its_guarantee());
        }
        for engine in tally.values_mut() {
            engine.recoveries.sort_by(f64::total_cmp);
        }
        tally
    }

    /// The summary, as text for a terminal or a log.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut text = String::new();
        let failed = self.failed();
        let _ = writeln!(
            text,
            "torture of {}: {} runs of {:.1} s on the {} log, seed {}; {} failed",
            self.scenario,
            self.runs.len(),
            self.run_seconds,
            self.log,
            self.seed,
            failed.len()
        );
        let mut faults: BTreeMap<String, u64> = BTreeMap::new();
        for entry in self.runs.iter().flat_map(|run| &run.schedule) {
            let words: Vec<&str> = entry.split_whitespace().collect();
            let kind = match words.as_slice() {
                [_, "crash", target, point] => format!("crash {point} ({target})"),
                [_, kind, ..] => (*kind).to_owned(),
                _ => entry.clone(),
            };
            *faults.entry(kind).or_default() += 1;
        }
        let planned: Vec<String> = faults.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
        let _ = writeln!(text, "faults scheduled: {}", planned.join(", "));
        for (name, engine) in self.tally() {
            let landed: Vec<String> = engine.crashes.iter().map(|(point, count)| format!("{count} {point}")).collect();
            let total: u64 = engine.crashes.values().sum();
            let _ = writeln!(
                text,
                "{name} ({}): {} runs; {total} crashes landed ({}); {} recoveries{}",
                engine.guarantee,
                engine.runs,
                if landed.is_empty() { "none".to_owned() } else { landed.join(", ") },
                engine.recoveries.len(),
                recovery_range(&engine.recoveries),
            );
            let _ = writeln!(
                text,
                "  runs that lost: {}, counted twice: {}, mismatched: {}; broke {}: {}",
                engine.runs_lost, engine.runs_duplicated, engine.runs_mismatched, engine.guarantee, engine.runs_broken
            );
        }
        for run in failed {
            let why = match &run.error {
                Some(error) => format!("gave up: {error}"),
                None => run
                    .engines
                    .iter()
                    .filter(|engine| engine.broke_its_guarantee())
                    .map(|engine| {
                        format!(
                            "{} lost {}, counted {} twice, {} cells differ{}",
                            engine.engine,
                            engine.lost,
                            engine.duplicated,
                            engine.mismatched_windows,
                            if engine.dead_letters_accounted { "" } else { ", dead letters unaccounted" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            let _ = writeln!(text, "FAILED run {} ({}): {why}", run.index, run.schedule.join(", "));
            let _ = writeln!(text, "  results: {}/results.json", run.folder);
            let _ = writeln!(text, "  replay:  {}", run.replay);
        }
        text
    }
}

/// ` in min/median/max a / b / c s`, or nothing without recoveries.
fn recovery_range(sorted: &[f64]) -> String {
    match sorted {
        [] => String::new(),
        [.., last] => {
            format!(", recovery min/median/max {:.2} / {:.2} / {:.2} s", sorted[0], sorted[sorted.len() / 2], last)
        }
    }
}

/// `word` as one word of a POSIX shell command line: quoted when it holds anything the shell
/// would read otherwise.
pub fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A run's seed: its stream and its schedule both come from it.
pub fn run_seed(seed: u64, index: u32) -> u64 {
    lk_simulator::derive_seed(seed, 0x7047_0000 + u64::from(index))
}

/// A run's faults: one to `max_faults` of them between 10% and 75% of `duration`, over the
/// points where `engines` (lk's own) can die. Lambda's batch-run crash is drawn only when Lambda
/// runs; an in-recovery crash always follows a crash of the same engine; with `scale_out` (the
/// scenario's backpressure), an overload with a crash that waits for the rescale it causes.
pub fn schedule(
    seed: u64,
    duration: Duration,
    engines: &[EngineKind],
    max_faults: u32,
    scale_out: bool,
) -> Vec<FaultPlan> {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(lk_simulator::derive_seed(seed, 0x7047));
    let own: Vec<EngineKind> = engines.iter().copied().filter(|kind| EngineKind::OWN.contains(kind)).collect();
    let mut plans = Vec::new();
    if own.is_empty() {
        return plans;
    }
    let count = rng.random_range(1..=max_faults.max(1));
    let at = |rng: &mut rand_pcg::Pcg64Mcg| duration.mul_f64(rng.random_range(0.1..0.75));
    let crash = |at: Duration, target: FaultTarget, point: CrashPoint| FaultPlan {
        times: FaultTimes::At(at),
        kind: FaultKind::Crash { target, point },
        random_point: false,
    };
    while (plans.len() as u32) < count {
        let engine = own[rng.random_range(0..own.len())];
        let when = at(&mut rng);
        let commit = if rng.random::<bool>() { CrashPoint::AfterOutput } else { CrashPoint::MidCommit };
        match rng.random_range(0..100) {
            0..25 => plans.push(crash(when, FaultTarget::Engine(engine), CrashPoint::AfterOutput)),
            25..45 => plans.push(crash(when, FaultTarget::Engine(engine), CrashPoint::MidCommit)),
            45..60 if own.contains(&EngineKind::Lambda) => {
                plans.push(crash(when, FaultTarget::Engine(EngineKind::Lambda), CrashPoint::BatchRun))
            }
            45..75 => {
                plans.push(crash(when, FaultTarget::Engine(engine), commit));
                plans.push(crash(when + Duration::from_millis(1), FaultTarget::Engine(engine), CrashPoint::InRecovery));
            }
            75..80 if own.contains(&EngineKind::Kappa) => {
                plans.push(crash(when, FaultTarget::Engine(EngineKind::Kappa), CrashPoint::Reprocess))
            }
            75..85 => plans.push(crash(when, FaultTarget::Every, commit)),
            85..89 if scale_out => {
                let factor = f64::from(rng.random_range(4..=8));
                plans.push(FaultPlan {
                    times: FaultTimes::At(when),
                    kind: FaultKind::Overload { duration: Duration::from_millis(800), factor },
                    random_point: false,
                });
                // Whichever engine the governor rescales takes it.
                plans.push(crash(when, FaultTarget::Every, CrashPoint::InRescale));
            }
            85..93 => plans.push(FaultPlan {
                times: FaultTimes::At(when),
                kind: FaultKind::Redelivery { events: rng.random_range(1_000..=20_000) },
                random_point: false,
            }),
            _ => plans.push(FaultPlan {
                times: FaultTimes::At(when),
                kind: FaultKind::Outage { duration: Duration::from_millis(rng.random_range(200..=1_500)) },
                random_point: false,
            }),
        }
    }
    plans
}

/// A fault as one line of a schedule: `1.23s crash lambda batch-run`.
fn describe(fault: &crate::scenario::Fault) -> String {
    let at = fault.at.as_secs_f64();
    match fault.kind {
        FaultKind::Crash { target, point } => {
            let target = match target {
                FaultTarget::Engine(kind) => kind.name(),
                FaultTarget::Every => "both",
            };
            format!("{at:.2}s crash {target} {}", point.name())
        }
        FaultKind::Redelivery { events } => format!("{at:.2}s redelivery {events} events"),
        FaultKind::Outage { duration } => format!("{at:.2}s outage {} ms", duration.as_millis()),
        FaultKind::Overload { duration, factor } => format!("{at:.2}s overload x{factor} {} ms", duration.as_millis()),
        FaultKind::LateBurst { duration, share } => {
            format!("{at:.2}s late burst {:.0}% of phones {} ms", share * 100.0, duration.as_millis())
        }
    }
}

/// The scenario of run `index`: `scenario` with the run's seed, length and faults.
pub fn run_scenario(scenario: &Scenario, options: &TortureOptions, index: u32) -> Scenario {
    let seed = run_seed(options.seed, index);
    let scale_out = scenario.engine.backpressure == crate::scenario::Backpressure::ScaleOut;
    let plans = schedule(seed, options.duration, &options.run.engines, options.max_faults, scale_out);
    scenario.clone().with_seed(seed).with_duration(Some(options.duration)).with_faults(plans)
}

/// Runs the torture under `options.run.out_directory` (one folder per run; the bulky log,
/// master dataset and checkpoints are removed from runs that passed), calling `each` after
/// every run, and writes `torture.json`. A run whose engine gives up is a failed run; a folder
/// that is not lk's, or a log that cannot be reached, ends the torture with the error.
pub fn torture(
    scenario: &Scenario,
    options: &TortureOptions,
    clock: Arc<dyn Clock>,
    each: &mut dyn FnMut(&TortureRun),
) -> Result<Torture, RunError> {
    if !options.run.engines.iter().any(|kind| EngineKind::OWN.contains(kind)) {
        return Err(RunError::Invalid(
            "lk torture injects its faults into lk's own engines: run it with --engine kappa, lambda or both"
                .to_owned(),
        ));
    }
    let identity = format!("lk torture: scenario {}, seed {}", scenario.name(), options.seed);
    let folder = OutputFolder::claim(&options.run.out_directory, &identity, options.run.takeover)?;
    let out = folder.path().to_owned();
    let indices: Vec<u32> = match options.only {
        Some(index) => vec![index],
        None => (0..options.runs).collect(),
    };
    let mut runs = Vec::with_capacity(indices.len());
    for index in indices {
        let run_scenario = run_scenario(scenario, options, index);
        let directory: PathBuf = out.join(format!("run-{index:04}"));
        // A reprocess crash needs the reprocessing it lands in.
        let reprocess = options.run.reprocess
            || run_scenario
                .faults
                .iter()
                .any(|fault| matches!(fault.kind, FaultKind::Crash { point: CrashPoint::Reprocess, .. }));
        let run_options = RunOptions { out_directory: directory.clone(), reprocess, ..options.run.clone() };
        let outcome = run(&run_scenario, &run_options, Arc::clone(&clock), &mut |_| {});
        let (engines, error) = match outcome {
            Ok(results) => (outcomes(&results), None),
            // An engine that gives up is a finding. So is a log error once a run has passed;
            // in the first run it is the log that cannot be reached.
            Err(RunError::Engine(error)) => (Vec::new(), Some(error.to_string())),
            Err(RunError::Log(error)) if !runs.is_empty() => (Vec::new(), Some(error.to_string())),
            Err(error) => return Err(error),
        };
        let run = TortureRun {
            index,
            seed: run_seed(options.seed, index),
            schedule: run_scenario.faults.iter().map(describe).collect(),
            folder: directory.display().to_string(),
            engines,
            error,
            replay: format!(
                "{} --out {} --only {index}",
                options.command,
                shell_word(&out.join(format!("replay-{index:04}")).display().to_string())
            ),
        };
        if !run.failed() {
            remove_bulk(&directory);
        }
        each(&run);
        runs.push(run);
    }
    let torture = Torture {
        scenario: scenario.name().to_owned(),
        seed: options.seed,
        run_seconds: options.duration.as_secs_f64(),
        log: match options.run.log {
            crate::run::LogChoice::Embedded => "embedded".to_owned(),
            crate::run::LogChoice::Kafka { .. } => "kafka".to_owned(),
        },
        runs,
    };
    crate::run::write_json(&out.join("torture.json"), &torture)?;
    Ok(torture)
}

fn outcomes(results: &Results) -> Vec<EngineOutcome> {
    results.engines.iter().map(|(name, engine)| EngineOutcome::of(name, engine)).collect()
}

/// Removes a passed run's log, master dataset and checkpoints: they are big, and its results
/// and views say what it did.
fn remove_bulk(directory: &Path) {
    if let Ok(folder) = OutputFolder::reopen(directory) {
        for bulky in ["log", "master", "checkpoints"] {
            let _ = folder.remove(bulky);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_the_seeds_and_covers_every_point_over_many_runs() {
        let engines = EngineKind::OWN.to_vec();
        let duration = Duration::from_secs(4);
        assert_eq!(schedule(7, duration, &engines, 4, false), schedule(7, duration, &engines, 4, false));
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let plans = schedule(seed, duration, &engines, 4, seed % 2 == 0);
            assert!(!plans.is_empty() && plans.len() <= 5, "one to four draws, an in-recovery pair counting two");
            for (index, plan) in plans.iter().enumerate() {
                let FaultTimes::At(at) = plan.times else { panic!("explicit times") };
                assert!(at >= duration.mul_f64(0.1) && at <= duration.mul_f64(0.76), "{at:?}");
                let kind = match plan.kind {
                    FaultKind::Crash { target, point } => {
                        if point == CrashPoint::InRecovery {
                            let FaultKind::Crash { target: before, .. } = plans[index - 1].kind else {
                                panic!("an in-recovery crash follows a crash")
                            };
                            assert_eq!(before, target, "of the same engine");
                        }
                        if point == CrashPoint::BatchRun {
                            assert_eq!(target, FaultTarget::Engine(EngineKind::Lambda));
                        }
                        if point == CrashPoint::Reprocess {
                            assert_eq!(target, FaultTarget::Engine(EngineKind::Kappa));
                        }
                        if point == CrashPoint::InRescale {
                            assert_eq!(seed % 2, 0, "only under scale-out");
                            assert!(matches!(plans[index - 1].kind, FaultKind::Overload { .. }), "after its overload");
                        }
                        format!("crash {} {}", matches!(target, FaultTarget::Every), point.name())
                    }
                    other => other.name().to_owned(),
                };
                kinds.insert(kind);
            }
        }
        for wanted in [
            "crash false after-output",
            "crash false mid-commit",
            "crash false batch-run",
            "crash false in-recovery",
            "crash false reprocess",
            "crash true in-rescale",
            "overload",
            "crash true after-output",
            "crash true mid-commit",
            "redelivery",
            "outage",
        ] {
            assert!(kinds.contains(wanted), "{wanted} never drawn: {kinds:?}");
        }
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word("scenarios/x.toml"), "scenarios/x.toml");
        let kappa_only = schedule(3, duration, &[EngineKind::Kappa], 4, false);
        assert!(kappa_only.iter().all(|plan| !matches!(
            plan.kind,
            FaultKind::Crash { point: CrashPoint::BatchRun, .. }
                | FaultKind::Crash { target: FaultTarget::Engine(EngineKind::Lambda), .. }
        )));
    }

    fn outcome(guarantee: &str, lost: u64, duplicated: u64) -> EngineOutcome {
        EngineOutcome {
            engine: "kappa".to_owned(),
            guarantee: guarantee.to_owned(),
            crashes: BTreeMap::from([("after-output".to_owned(), 2)]),
            recovery_seconds: vec![0.5, 0.1],
            lost,
            duplicated,
            mismatched_windows: 0,
            dead_letters_accounted: true,
            reprocess: None,
        }
    }

    #[test]
    fn a_run_fails_when_exactly_once_breaks_and_the_summary_says_how_to_replay_it() {
        let run = |index, engines, error: Option<&str>| TortureRun {
            index,
            seed: 1,
            schedule: vec!["1.00s crash kappa after-output".to_owned()],
            folder: format!("out/t/run-{index:04}"),
            engines,
            error: error.map(str::to_owned),
            replay: format!("lk torture s.toml --seed 9 --only {index}"),
        };
        let torture = Torture {
            scenario: "s".to_owned(),
            seed: 9,
            run_seconds: 4.0,
            log: "embedded".to_owned(),
            runs: vec![
                run(0, vec![outcome("exactly-once", 0, 0)], None),
                run(1, vec![outcome("exactly-once", 3, 0)], None),
                run(2, vec![outcome("at-least-once", 0, 5)], None),
                run(3, Vec::new(), Some("stuck")),
            ],
        };
        let failed: Vec<u32> = torture.failed().iter().map(|run| run.index).collect();
        assert_eq!(failed, [1, 3], "a weaker guarantee's duplicates are not a failure");
        let summary = torture.summary();
        assert!(summary.contains("faults scheduled: 4 crash after-output (kappa)"), "{summary}");
        assert!(summary.contains("4 runs of 4.0 s on the embedded log, seed 9; 2 failed"), "{summary}");
        assert!(summary.contains("replay:  lk torture s.toml --seed 9 --only 1"), "{summary}");
        assert!(summary.contains("gave up: stuck"), "{summary}");
        assert!(summary.contains("kappa lost 3, counted 0 twice"), "{summary}");
        assert!(!summary.contains("--only 0"), "{summary}");
        assert!(summary.contains("recovery min/median/max 0.10 / 0.50 / 0.50 s"), "{summary}");
        let tally = torture.tally();
        assert_eq!(tally["kappa"].runs, 3);
        assert_eq!((tally["kappa"].runs_lost, tally["kappa"].runs_duplicated), (1, 1));
        assert_eq!(tally["kappa"].crashes["after-output"], 6);
    }
}
