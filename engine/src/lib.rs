//! Spate: a single-node stream engine.

pub mod record;
