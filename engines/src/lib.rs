//! The lk engines: the log seam and its embedded implementation, the query set, the oracle, the
//! streaming runtime, the serving store, and the Kappa and Lambda engines.
//!
//! **Architecture Invariant:** engines never read the wall clock directly (they are handed a
//! [`lk_simulator::time::Clock`]), and never see the simulator's internals: only encoded events
//! from the log.

pub mod background;
pub mod changelog;
pub mod checker;
pub mod client_properties;
pub mod contract;
pub mod dead_letters;
pub mod embedded;
pub mod idmap;
pub mod kafka;
pub mod kappa;
pub mod lambda;
pub mod log;
pub mod oracle;
pub mod queries;
pub mod runtime;
mod segment_writer;
pub mod serving;

/// Lines of code (non-blank, non-comment, before the file's tests) of each part of the
/// engines, counted from the sources compiled in: what the report shows as each architecture's
/// code cost. Kappa is `streaming_runtime` + `kappa_engine`; Lambda is `streaming_runtime`
/// (its speed layer) + `batch_layer` + `lambda_engine` + `master_dataset`; `queries_shared` is
/// written once for both and the oracle.
pub fn code_lines() -> std::collections::BTreeMap<&'static str, u64> {
    fn count(source: &str) -> u64 {
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        code.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("//")).count() as u64
    }
    std::collections::BTreeMap::from([
        ("queries_shared", count(include_str!("queries.rs"))),
        ("streaming_runtime", count(include_str!("runtime.rs"))),
        ("kappa_engine", count(include_str!("kappa.rs"))),
        ("batch_layer", count(include_str!("lambda/batch.rs"))),
        ("lambda_engine", count(include_str!("lambda/mod.rs"))),
        ("master_dataset", count(include_str!("lambda/master.rs"))),
    ])
}
