//! The lk engines: the log seam and its embedded implementation, the query set, the oracle, the
//! streaming runtime, the serving store and the Kappa engine.
//!
//! **Architecture Invariant:** engines never read the wall clock directly (they are handed a
//! [`lk_simulator::time::Clock`]), and never see the simulator's internals: only encoded events
//! from the log.

pub mod contract;
pub mod embedded;
pub mod idmap;
pub mod kappa;
pub mod log;
pub mod oracle;
pub mod queries;
pub mod runtime;
pub mod serving;
