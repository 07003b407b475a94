//! A scenario file, whole: the workload (read by the simulator), the engines' sections (read by
//! the engines), and the run's own: `[engine]` (how the harness runs the engines),
//! `[[faults]]` (what goes wrong) and `[requirements]` (what the verdict judges against). Each owner reads its sections; this module puts them together,
//! resolves the faults, and rejects a section nobody owns, so a typo is an error.

mod fault_plan;

use std::path::Path;
use std::time::Duration;

use lk_engines::settings::{EngineSections, LambdaSettings, RawEngineSections, Watermark, Windows};
pub use lk_engines::settings::{Guarantee, SinkChoice};
use lk_simulator::settings::{self, Reader, invalid};
pub use lk_simulator::settings::{ScenarioError, ScenarioProblem};
use lk_simulator::workload::{self, RawWorkload, Workload};
use serde::Deserialize;

pub use fault_plan::{
    CrashPoint, DEFAULT_BURST_SHARE, Fault, FaultKind, FaultPlan, FaultTarget, FaultTimes, RawFault, resolve_faults,
};

use crate::engine::EngineKind;
use crate::verdict::{RawRequirements, Requirements, read_requirements};

/// The sections this module reads.
const SECTIONS: [&str; 3] = ["engine", "faults", "requirements"];

/// The run's own sections as written; the file's other sections are ignored here.
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawRunSections {
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub faults: Vec<RawFault>,
    #[serde(default)]
    pub requirements: RawRequirements,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawEngine {
    pub partitions: Option<u32>,
    pub workers: Option<u32>,
    pub checkpoint_interval: Option<String>,
    pub warmup: Option<String>,
    pub guarantee: Option<String>,
    pub kappa_guarantee: Option<String>,
    pub lambda_guarantee: Option<String>,
    pub kstreams_guarantee: Option<String>,
    pub backpressure: Option<String>,
    pub backpressure_limit: Option<String>,
    pub max_workers: Option<u32>,
    pub kappa_sink: Option<String>,
    pub lambda_sink: Option<String>,
    pub commit_interval: Option<String>,
}

/// A validated scenario: everything a run needs, and nothing unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// What the generator produces: the city, its fleet and riders, the rate, the disorder.
    pub workload: Workload,
    /// Window sizes of the query set.
    pub windows: Windows,
    /// The engines' lateness policy.
    pub watermark: Watermark,
    /// How the Lambda engine's batch layer runs.
    pub lambda: LambdaSettings,
    /// How the engines run.
    pub engine: EngineSettings,
    /// The `[[faults]]` entries as written (validated).
    pub fault_plan: Vec<FaultPlan>,
    /// Faults injected during the run, in the order they happen (resolved from the plan, the
    /// seed and the duration).
    pub faults: Vec<Fault>,
    /// What the platform must achieve, for the verdict (`[requirements]`).
    pub requirements: Requirements,
}

/// How the engines run.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Partitions of the input topic.
    pub partitions: u32,
    /// Worker threads of the streaming runtime.
    pub workers: u32,
    /// How often the runtime checkpoints its state and offsets.
    pub checkpoint_interval: Duration,
    /// Measurements start after this much of the run.
    pub warmup: Duration,
    /// The delivery guarantee of the Kappa engine.
    pub kappa_guarantee: Guarantee,
    /// The delivery guarantee of the Lambda engine.
    pub lambda_guarantee: Guarantee,
    /// The delivery guarantee of the Kafka Streams engine (`exactly_once_v2` or `at_least_once`).
    pub kstreams_guarantee: Guarantee,
    /// What happens when an engine falls behind its input.
    pub backpressure: Backpressure,
    /// The backlog (records in the log an engine has not read yet) at which the strategy acts,
    /// as input time at the scenario's rate.
    pub backpressure_limit: Duration,
    /// Scale-out's ceiling on workers per engine.
    pub max_workers: u32,
    /// How Kappa's views reach its serving store.
    pub kappa_sink: SinkChoice,
    /// How Lambda's speed layer reaches its serving layer.
    pub lambda_sink: SinkChoice,
    /// Clock time between a task's transactions with the transactional sink.
    pub commit_interval: Duration,
}

/// How an engine's views reach its serving store (`engine.kappa_sink`, `engine.lambda_sink`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// The log buffers the backlog, up to the limit; beyond it the producer blocks.
    Buffer,
    /// The producer blocks as soon as an engine falls a read batch behind: the source slows
    /// down to the engines' pace and its schedule lag grows.
    SlowSource,
    /// Beyond the limit, new events are dropped at the source (load shedding, lost on purpose).
    Drop,
    /// Beyond the limit, the engine restarts from its checkpoints with one more worker.
    ScaleOut,
}

impl Backpressure {
    /// The name used in scenario files and results.
    pub fn name(self) -> &'static str {
        match self {
            Backpressure::Buffer => "buffer",
            Backpressure::SlowSource => "slow-source",
            Backpressure::Drop => "drop",
            Backpressure::ScaleOut => "scale-out",
        }
    }
}

/// `[engine]`.
fn read_engine(read: &mut Reader<'_>, raw: &RawEngine) -> EngineSettings {
    let partitions = raw.partitions.unwrap_or(8);
    if !(1..=1024).contains(&partitions) {
        read.fail(invalid("engine.partitions", format!("must be between 1 and 1024, got {partitions}")));
    }
    let workers = raw.workers.unwrap_or(2);
    if !(1..=64).contains(&workers) {
        read.fail(invalid("engine.workers", format!("must be between 1 and 64, got {workers}")));
    }
    let both = Guarantee::read(read, "engine.guarantee", raw.guarantee.as_deref(), Guarantee::ExactlyOnce);
    EngineSettings {
        partitions,
        workers,
        checkpoint_interval: read.positive_duration(
            "engine.checkpoint_interval",
            raw.checkpoint_interval.as_ref(),
            "10s",
        ),
        warmup: read.duration("engine.warmup", raw.warmup.as_ref(), "1s"),
        kappa_guarantee: Guarantee::read(read, "engine.kappa_guarantee", raw.kappa_guarantee.as_deref(), both),
        lambda_guarantee: Guarantee::read(read, "engine.lambda_guarantee", raw.lambda_guarantee.as_deref(), both),
        kstreams_guarantee: Guarantee::read(read, "engine.kstreams_guarantee", raw.kstreams_guarantee.as_deref(), both),
        backpressure: match raw.backpressure.as_deref().unwrap_or("buffer") {
            "buffer" => Backpressure::Buffer,
            "slow-source" => Backpressure::SlowSource,
            "drop" => Backpressure::Drop,
            "scale-out" => Backpressure::ScaleOut,
            other => {
                read.fail(invalid(
                    "engine.backpressure",
                    format!("must be \"buffer\", \"slow-source\", \"drop\" or \"scale-out\", got {other:?}"),
                ));
                Backpressure::Buffer
            }
        },
        backpressure_limit: read.positive_duration("engine.backpressure_limit", raw.backpressure_limit.as_ref(), "60s"),
        kappa_sink: SinkChoice::read(read, "engine.kappa_sink", raw.kappa_sink.as_deref()),
        lambda_sink: SinkChoice::read(read, "engine.lambda_sink", raw.lambda_sink.as_deref()),
        commit_interval: read.positive_duration("engine.commit_interval", raw.commit_interval.as_ref(), "100ms"),
        max_workers: match raw.max_workers {
            None => partitions,
            Some(count) if (1..=partitions).contains(&count) && count >= workers => count,
            Some(count) => {
                read.fail(invalid(
                    "engine.max_workers",
                    format!(
                        "must be between engine.workers ({workers}) and engine.partitions ({partitions}), got {count}"
                    ),
                ));
                partitions
            }
        },
    }
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        Self::from_toml(&settings::read_file(path)?, &path.display().to_string())
    }

    /// Parses and validates scenario TOML; `origin` names where it came from in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let table: toml::Table = settings::parse_sections(text, origin)?;
        if let Some(unknown) = table.keys().find(|key| !Self::sections().any(|section| section == key.as_str())) {
            let known: Vec<&str> = Self::sections().collect();
            return Err(ScenarioError::new(
                origin,
                ScenarioProblem::Syntax(format!("unknown section `{unknown}`; a scenario has {}", known.join(", "))),
            ));
        }
        // Each owner deserializes the text itself (a few kB, once per run) rather than the table
        // above: from text, a wrong value's error keeps its line and column.
        let workload: RawWorkload = settings::parse_sections(text, origin)?;
        let engines: RawEngineSections = settings::parse_sections(text, origin)?;
        let run: RawRunSections = settings::parse_sections(text, origin)?;
        Self::validate(workload, &engines, &run, &settings::fallback_name(origin))
            .map_err(|problem| ScenarioError::new(origin, problem))
    }

    /// Every top-level key a scenario file may have, by owner.
    fn sections() -> impl Iterator<Item = &'static str> {
        workload::SECTIONS.into_iter().chain(lk_engines::settings::SECTIONS).chain(SECTIONS)
    }

    /// The second step: checks every field of each owner's sections and fills in defaults.
    pub fn validate(
        workload: RawWorkload,
        engines: &RawEngineSections,
        run: &RawRunSections,
        fallback_name: &str,
    ) -> Result<Self, ScenarioProblem> {
        let workload = Workload::validate(workload, fallback_name)?;
        let mut problem = None;
        let mut read = Reader::new(&mut problem);
        let EngineSections { windows, watermark, lambda } = EngineSections::read(&mut read, engines);
        let engine = read_engine(&mut read, &run.engine);
        let fault_plan = fault_plan::read_faults(&mut read, &run.faults);
        let requirements = read_requirements(&mut read, &run.requirements);
        if let Some(problem) = problem {
            return Err(problem);
        }
        let mut scenario =
            Scenario { workload, windows, watermark, lambda, engine, fault_plan, faults: Vec::new(), requirements };
        scenario.resolve_faults();
        Ok(scenario)
    }

    /// The scenario's name, used in results and reports.
    pub fn name(&self) -> &str {
        &self.workload.name
    }

    /// The root seed; every random stream of the run derives from it.
    pub fn seed(&self) -> u64 {
        self.workload.seed
    }

    /// A copy with another root seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.workload = self.workload.with_seed(seed);
        self.resolve_faults();
        self
    }

    fn resolve_faults(&mut self) {
        self.faults = resolve_faults(&self.fault_plan, self.workload.seed, self.workload.run.duration);
        self.workload.run.overloads = fault_plan::overloads_of(&self.faults);
        let run = &self.workload.run;
        self.workload.run.late_bursts = fault_plan::late_bursts_of(
            &self.faults,
            run.start_time_us,
            run.time_compression,
            run.late_bursts.is_live(),
        );
    }

    /// A copy that takes late bursts and overloads while it runs (`lk demo`'s keys): its
    /// generator reorders the stream even without lateness of its own, and walks its schedule
    /// block by block even at a constant rate; [`Self::late_bursts`] and
    /// [`Self::live_overloads`] add to them.
    pub fn with_live_faults(mut self) -> Self {
        let run = &self.workload.run;
        self.workload.run.late_bursts =
            lk_simulator::late_bursts::LateBursts::new(run.start_time_us, run.time_compression, true);
        self.workload.run.live_overloads = lk_simulator::workload::LiveOverloads::on();
        self.resolve_faults();
        self
    }

    /// The overloads added while the run runs (off unless [`Self::with_live_faults`]).
    pub fn live_overloads(&self) -> &lk_simulator::workload::LiveOverloads {
        &self.workload.run.live_overloads
    }

    /// The run's late bursts (the faults', and those added while it runs).
    pub fn late_bursts(&self) -> &lk_simulator::late_bursts::LateBursts {
        &self.workload.run.late_bursts
    }

    /// A copy with another base rate; fails on a rate that is not positive.
    pub fn with_rate(mut self, rate_eps: f64) -> Result<Self, ScenarioProblem> {
        self.workload = self.workload.with_rate(rate_eps)?;
        Ok(self)
    }

    /// A copy whose `[[faults]]` are `plans` instead of the file's.
    pub fn with_faults(mut self, plans: Vec<FaultPlan>) -> Self {
        self.fault_plan = plans;
        self.resolve_faults();
        self
    }

    /// A copy with another duration.
    pub fn with_duration(mut self, duration: Option<Duration>) -> Self {
        self.workload = self.workload.with_duration(duration);
        self.resolve_faults();
        self
    }

    /// A copy with another watermark delay (the lateness policy's bounded out-of-orderness).
    pub fn with_watermark_delay(mut self, delay: Duration) -> Self {
        self.watermark.delay = delay;
        self
    }

    /// A copy with another commit interval for the transactional sinks.
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.engine.commit_interval = interval;
        self
    }

    /// A copy with another Kappa sink.
    pub fn with_kappa_sink(mut self, sink: SinkChoice) -> Self {
        self.engine.kappa_sink = sink;
        self
    }

    /// A copy with another sink for Lambda's speed layer.
    pub fn with_lambda_sink(mut self, sink: SinkChoice) -> Self {
        self.engine.lambda_sink = sink;
        self
    }

    /// A copy with another backpressure strategy.
    pub fn with_backpressure(mut self, backpressure: Backpressure) -> Self {
        self.engine.backpressure = backpressure;
        self
    }

    /// A copy with another delivery guarantee for both engines.
    pub fn with_guarantee(mut self, guarantee: Guarantee) -> Self {
        self.engine.kappa_guarantee = guarantee;
        self.engine.lambda_guarantee = guarantee;
        self.engine.kstreams_guarantee = guarantee;
        self
    }

    /// A copy with another delivery guarantee for one engine.
    pub fn with_engine_guarantee(mut self, engine: EngineKind, guarantee: Guarantee) -> Self {
        match engine {
            EngineKind::Kappa => self.engine.kappa_guarantee = guarantee,
            EngineKind::Lambda => self.engine.lambda_guarantee = guarantee,
            EngineKind::Kstreams => self.engine.kstreams_guarantee = guarantee,
            // Spark runs the guarantee the seed's design gives it.
            EngineKind::SparkKappa | EngineKind::SparkLambda => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        Scenario::from_toml(text, "scenarios/bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_sections_are_rejected_with_the_known_ones_listed() {
        let message = problem("[lateness2]\nmean = \"1s\"");
        assert!(message.contains("unknown section `lateness2`"), "{message}");
        assert!(
            message.contains("lateness") && message.contains("watermark") && message.contains("faults"),
            "{message}"
        );
        assert!(problem("[run]\nrate = 5").contains("unknown field `rate`"));
        assert!(problem("[engine]\nworker = 5").contains("unknown field `worker`"));
    }

    /// The stream of `workload`, as its digest, and how many events it held back.
    fn stream(workload: &Workload) -> (String, u64) {
        let mut generator =
            lk_simulator::Generator::new(workload, lk_simulator::GeneratorOptions::for_scenario(workload));
        let mut digest = lk_simulator::simulate::StreamDigest::default();
        while let Some(batch) = generator.next_batch() {
            digest.update(batch);
        }
        (digest.hex(), generator.counts().held_back)
    }

    #[test]
    fn a_late_burst_holds_back_its_share_of_phones_and_one_added_live_is_the_same_fault() {
        let base = "name = \"x\"\nseed = 3\n[run]\nrate_eps = 20000\nduration = \"3s\"\ntime_compression = 30\n";
        let burst = "[[faults]]\nkind = \"late-burst\"\nat = \"1s\"\nduration = \"1s\"\nshare = 0.5\n";
        let scenario = Scenario::from_toml(&format!("{base}{burst}"), "x.toml").unwrap();
        let expected = lk_simulator::late_bursts::LateBurst {
            at: Duration::from_secs(1),
            duration: Duration::from_secs(1),
            share: 0.5,
        };
        assert_eq!(scenario.late_bursts().list(), vec![expected]);
        let (from_file, held_back) = stream(&scenario.workload);
        // Half the phones for a third of the run: about a sixth of the events, most of them pings.
        assert!((20_000 * 3 / 9..20_000 * 3 / 4).contains(&held_back), "{held_back} events held back");
        // Without the burst, nothing is held back (no lateness of its own).
        let plain = Scenario::from_toml(base, "x.toml").unwrap();
        assert_eq!(stream(&plain.workload).1, 0);
        // Added live before the events it covers are made: the same stream as from the file.
        let live = plain.with_live_faults();
        assert!(live.late_bursts().possible() && live.late_bursts().list().is_empty());
        live.late_bursts().add(expected).unwrap();
        assert_eq!(stream(&live.workload), (from_file.clone(), held_back));
        // Seeded: the same file twice gives the same stream.
        assert_eq!(stream(&Scenario::from_toml(&format!("{base}{burst}"), "x.toml").unwrap().workload).0, from_file);
        for (entry, expected) in [
            ("share = 0", "faults[0].share"),
            ("share = 1.5", "must be above 0 and at most 1"),
            ("duration = \"0s\"", "faults[0].duration"),
        ] {
            let text = format!("{base}[[faults]]\nkind = \"late-burst\"\nat = \"1s\"\n{entry}\n");
            let message = problem(&text);
            assert!(message.contains(expected), "{entry}: {message}");
        }
        let many = format!("{base}[[faults]]\nkind = \"late-burst\"\ncount = 65\n");
        assert!(problem(&many).contains("at most 64 late bursts"), "{}", problem(&many));
    }

    #[test]
    fn every_owner_reads_its_sections() {
        let text = "name = \"x\"\n[run]\nrate_eps = 5000\n[watermark]\ndelay = \"7s\"\n[engine]\nworkers = 3\n\
                    [[faults]]\nkind = \"overload\"\nat = \"1s\"\nduration = \"2s\"\nfactor = 4\n";
        let scenario = Scenario::from_toml(text, "x.toml").unwrap();
        assert_eq!(scenario.name(), "x");
        assert_eq!(scenario.workload.run.rate_eps, 5000.0);
        assert_eq!(scenario.watermark.delay, Duration::from_secs(7));
        assert_eq!(scenario.engine.workers, 3);
        assert_eq!(scenario.workload.run.overloads.len(), 1, "overloads reach the generator through the workload");
    }

    #[test]
    fn seeded_faults_follow_the_seed_and_the_duration() {
        let text = "[run]\nduration = \"20s\"\n[[faults]]\nkind = \"crash\"\ncount = 5\n\
                    [[faults]]\nkind = \"overload\"\nat = \"3s\"\nduration = \"2s\"\nfactor = 4\n";
        let scenario = Scenario::from_toml(text, "faults.toml").unwrap();
        let crashes: Vec<&Fault> =
            scenario.faults.iter().filter(|fault| matches!(fault.kind, FaultKind::Crash { .. })).collect();
        assert_eq!(crashes.len(), 5);
        assert!(crashes.iter().all(|fault| (2.0..18.0).contains(&fault.at.as_secs_f64())), "the middle 80%");
        assert!(scenario.faults.windows(2).all(|pair| pair[0].at <= pair[1].at), "in time order");
        assert_eq!(
            scenario.workload.run.overloads,
            vec![lk_simulator::workload::Overload {
                at: Duration::from_secs(3),
                duration: Duration::from_secs(2),
                factor: 4.0
            }]
        );
        assert_eq!(
            Scenario::from_toml(text, "faults.toml").unwrap().faults,
            scenario.faults,
            "the same seed, the same faults"
        );
        let reseeded = scenario.clone().with_seed(99);
        assert_ne!(reseeded.faults, scenario.faults, "another seed, other times");
        let longer = scenario.clone().with_duration(Some(Duration::from_secs(200)));
        assert!(longer.faults.iter().any(|fault| fault.at > Duration::from_secs(20)), "times scale with the duration");
        // Without a duration, seeded faults wait for one (`--duration`).
        let open = Scenario::from_toml("[[faults]]\nkind = \"crash\"\ncount = 2\n", "open.toml").unwrap();
        assert!(open.faults.is_empty());
        assert_eq!(open.with_duration(Some(Duration::from_secs(10))).faults.len(), 2);
    }

    #[test]
    fn bad_faults_and_engine_settings_name_their_field() {
        for (text, field) in [
            ("[[faults]]\nkind = \"crsh\"\nat = \"1s\"", "faults[0].kind"),
            ("[[faults]]\nkind = \"crash\"", "faults[0].at"),
            ("[[faults]]\nkind = \"crash\"\nat = \"1s\"\npoint = \"sometimes\"", "faults[0].point"),
            ("[[faults]]\nkind = \"overload\"\nat = \"1s\"\nfactor = 0.5", "faults[0].factor"),
            ("[engine]\nguarantee = \"maybe-once\"", "engine.guarantee"),
            ("[engine]\nlambda_guarantee = \"twice\"", "engine.lambda_guarantee"),
            ("[engine]\nbackpressure = \"pray\"", "engine.backpressure"),
            ("[engine]\npartitions = 4\nmax_workers = 8", "engine.max_workers"),
            ("[engine]\nkappa_sink = \"kafka\"", "engine.kappa_sink"),
            ("[engine]\nlambda_sink = \"transaction\"", "engine.lambda_sink"),
        ] {
            let message = problem(text);
            assert!(message.contains(&format!("field `{field}`")), "{text}: {message}");
        }
    }
}
