//! Where an engine's results go: the serving store that answers queries (with its view
//! versions), the changelog that carries view changes through the log (the transactional sink),
//! and the dead-letter files of malformed records.

pub mod changelog;
pub mod dead_letters;
pub mod serving;
pub mod transactional;
