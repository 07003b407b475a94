//! `lk advise`: what the verdict needs, run in one go: the scenario with both engines (and the
//! rebuild timed), then a capacity search of each engine on this machine, then the verdict
//! judged again with the sustainable rates as the basis of the cores at the target.

use std::sync::Arc;

use lk_simulator::time::Clock;

use crate::capacity::{CapacityOptions, Search, Step, search};
use crate::output::OutputFolder;
use crate::results::Results;
use crate::run::{RunError, RunOptions, RunProgress, run, write_json};
use crate::scenario::Scenario;

/// Runs `scenario` into `<out>/run`, searches capacity into `<out>/capacity` unless
/// `capacity` is `None`, and returns the run's results with the capacity and the verdict
/// judged on it (also written back to `<out>/run/results.json`).
pub fn advise(
    scenario: &Scenario,
    options: &RunOptions,
    capacity: Option<CapacityOptions>,
    clock: Arc<dyn Clock>,
    on_progress: &mut dyn FnMut(RunProgress),
    each_step: &mut dyn FnMut(&Search, &Step),
) -> Result<Results, RunError> {
    let identity = format!("lk advise: scenario {}, seed {}", scenario.name(), scenario.seed());
    let folder = OutputFolder::claim(&options.out_directory, &identity, options.takeover)?;
    let out = folder.path().to_owned();
    let run_options = RunOptions { out_directory: out.join("run"), ..options.clone() };
    let mut results = run(scenario, &run_options, Arc::clone(&clock), on_progress)?;
    if let Some(capacity) = capacity {
        let capacity =
            CapacityOptions { run: RunOptions { out_directory: out.join("capacity"), ..capacity.run }, ..capacity };
        results.capacity = Some(search(scenario, &capacity, clock, each_step)?);
        results.verdict = Some(crate::verdict::judge(&results));
        write_json(&out.join("run").join("results.json"), &results)?;
    }
    Ok(results)
}
