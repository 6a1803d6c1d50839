//! Black-box tests of `spate serve`: the real binary in its own process, driven by real Kafka
//! clients (kcat, confluent-kafka/librdkafka, kafka-python) and by raw frames.
//!
//! The clients are installed by `scripts/test.sh` (see scripts/install-kafka-clients.sh). Where
//! one is missing a test says so and passes, unless SPATE_REQUIRE_CLIENTS=1 (CI) makes it fail.

mod bad_input;
mod clients;
mod compaction;
mod crash;
mod limits;
mod placement;
mod recovery;
mod server;
mod soak;
