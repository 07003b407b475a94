//! The lk measurement layer: orchestration of a run (generator, producer, engines), latency
//! recording, the oracle comparison, and `results.json`.
//!
//! **Architecture Invariant:** the harness feeds, times and compares; it never computes a view.

pub mod advise;
pub mod backpressure;
pub mod capacity;
pub mod engine;
pub mod faults;
pub mod live;
pub mod metrics;
pub mod output;
pub mod producer;
pub mod repeat;
pub mod resources;
pub mod results;
pub mod run;
pub mod scenario;
pub mod standalone;
pub mod steadiness;
pub mod summary;
pub mod sweep;
pub mod torture;
pub mod verdict;
pub mod views;
