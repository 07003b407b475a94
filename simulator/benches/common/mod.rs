//! What both generator benchmarks measure: rush hour's city, with its disorder or without.

use std::path::Path;

use lk_simulator::workload::Workload;

/// A scenario shipped in `scenarios/`.
pub fn scenario(name: &str) -> Workload {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    Workload::from_file(&path).unwrap_or_else(|error| panic!("{error}"))
}

/// Rush hour's rate and city, with every kind of disorder switched off.
pub fn clean(mut scenario: Workload) -> Workload {
    scenario.lateness.distribution = lk_simulator::workload::DelayDistribution::None;
    scenario.lateness.offline_fraction = 0.0;
    scenario.duplicates.fraction = 0.0;
    scenario.malformed_fraction = 0.0;
    scenario.clock_skew.fraction = 0.0;
    scenario.demand.surges.clear();
    scenario
}
