//! What judges the engines: the oracle, the exact views computed from every event in the log,
//! and the checker, which names the events behind any difference.
//!
//! **Architecture Invariant:** nothing here is used by an engine to compute its answer.

pub mod checker;
pub mod oracle;
