//! Spate: a single-node stream engine.
//!
//! Layers, bottom up: [`record`] (RecordBatch v2 bytes, pure), [`io`] (the only code that talks to
//! io_uring), [`segment`] (one log file and its indexes), [`log`] (a partition: segments, group
//! commit, recovery, retention).

pub mod io;
pub mod log;
pub mod record;
pub mod segment;
