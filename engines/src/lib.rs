//! The lk engines: the log seam and its embedded implementation, the query set, the oracle, the
//! streaming runtime and the Kappa engine.

pub mod contract;
pub mod embedded;
pub mod log;
