//! What both generator benchmarks measure: rush hour's city, with its disorder or without.

use std::path::Path;

use lk_simulator::scenario::Scenario;

/// A scenario shipped in `scenarios/`.
pub fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    Scenario::from_file(&path).unwrap_or_else(|error| panic!("{error}"))
}

/// Rush hour's rate and city, with every kind of disorder switched off.
pub fn clean(mut scenario: Scenario) -> Scenario {
    scenario.lateness.distribution = lk_simulator::scenario::DelayDistribution::None;
    scenario.lateness.offline_fraction = 0.0;
    scenario.duplicates.fraction = 0.0;
    scenario.malformed_fraction = 0.0;
    scenario.clock_skew.fraction = 0.0;
    scenario.demand.surges.clear();
    scenario
}
