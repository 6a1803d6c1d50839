//! Spate: a single-node stream engine.

pub mod io;
pub mod record;
