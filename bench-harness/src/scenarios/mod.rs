//! The scenarios of docs/benchmarks.md, each returning rows and plots.

pub mod backpressure;
pub mod cdc;
pub mod compaction;
pub mod consume;
pub mod hol;
#[cfg(feature = "iggy")]
pub mod iggy;
pub mod kafka_load;
pub mod latency;
pub mod network;
pub mod peers;
pub mod produce;
pub mod scale;
