//! The Kafka wire protocol over the engine: `spate serve`.
//!
//! Message codecs come from the `kafka-protocol` crate; this module frames them, dispatches
//! them to the engine and the group coordinator, and sends fetched records from segment files
//! to sockets with `sendfile`. Connections live on shards (see [`server`]); supported APIs and
//! versions are in [`versions`] and docs/protocol.md.

mod codec;
mod config;
mod connection;
mod errors;
mod frames;
mod group;
mod handlers;
mod http;
pub mod metrics;
mod producer_ids;
pub mod server;
pub mod versions;

#[cfg(test)]
mod tests;

pub use config::ServerConfig;
pub use handlers::decode_request;
pub use server::{Server, ServerError};
