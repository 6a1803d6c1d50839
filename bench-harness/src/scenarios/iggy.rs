//! Apache Iggy as a peer: its server binary (not packaged anywhere; a user builds it from its
//! repository and passes `--iggy-server PATH`), started here on a loopback port with its data
//! in the benchmark directory, driven through its own Rust SDK (the `iggy` crate, built in with
//! this crate's `iggy` feature) over TCP.
//!
//! The workload is the peers' one: `pipeline` messages per `send_messages` call, each call
//! awaited before the next (the SDK's TCP client holds its connection for a request until the
//! response, so one connection has one request in flight), then `poll_messages` from offset 0
//! to the end, 1,000 at a time, every payload's length checked.
//!
//! Durability: Iggy sets it per topic. `never`: the topic's defaults (no fsync; Iggy keeps
//! messages in memory until 1,024 of them or 1 MiB are waiting, then writes them). `always`:
//! `enforce_fsync` with `messages_required_to_save = 1`, so every send is written and synced.

use std::path::Path;
use std::time::Instant;

use iggy::prelude::*;
use spate::log::Durability;

use super::peers::{free_port, spawn_command, wait_for_port, Params};

/// What the Iggy topic was created with, for the row's label.
pub fn durability_label(durability: Durability) -> &'static str {
    match durability {
        Durability::Always => "enforce_fsync, messages_required_to_save=1",
        Durability::Never => "defaults: no fsync, written every 1,024 messages or 1 MiB",
        // Iggy has no time-based fsync; the row is not equal durability and says so.
        Durability::Interval(_) => "defaults, no fsync: not equal to Spate's interval",
    }
}

/// Runs the workload against a fresh Iggy server; returns (produce, consume) seconds.
pub fn run(root: &Path, p: &Params, server: &Path) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir_in(root)?;
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let mut command = std::process::Command::new(server);
    // Everything but the TCP listener off; two shards, as Spate runs with on this machine.
    command
        .current_dir(dir.path())
        .env("IGGY_SYSTEM_PATH", dir.path().join("data"))
        .env("IGGY_TCP_ADDRESS", &address)
        .env("IGGY_HTTP_ENABLED", "false")
        .env("IGGY_QUIC_ENABLED", "false")
        .env("IGGY_WEBSOCKET_ENABLED", "false")
        .env("IGGY_SYSTEM_SHARDING_CPU_ALLOCATION", "2")
        .env("IGGY_ROOT_USERNAME", DEFAULT_ROOT_USERNAME)
        .env("IGGY_ROOT_PASSWORD", DEFAULT_ROOT_PASSWORD);
    let mut child = spawn_command(
        command,
        &server.display().to_string(),
        "build Iggy's server from its repository (docs/benchmarks.md, Peers) and pass its path",
    )?;
    let log = child.drain_stderr();
    if let Err(e) = wait_for_port(port, "iggy-server") {
        anyhow::bail!("{e}; its log ends with:\n{}", log.tail());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = rt.block_on(workload(&address, p));
    drop(child);
    result.map_err(|e| anyhow::anyhow!("iggy: {e}; the server's log ends with:\n{}", log.tail()))
}

async fn workload(address: &str, p: &Params) -> anyhow::Result<(f64, f64)> {
    let client = IggyClientBuilder::new().with_tcp().with_server_address(address.to_string()).build()?;
    client.connect().await?;
    client.login_user(DEFAULT_ROOT_USERNAME, DEFAULT_ROOT_PASSWORD).await?;
    let stream = client.create_stream("bench").await?;
    let always = p.durability == Durability::Always;
    let options = TopicCreateOptions {
        partitions_count: Some(1),
        message_expiry: Some(IggyExpiry::NeverExpire),
        enforce_fsync: Some(always),
        messages_required_to_save: always.then_some(1),
        ..TopicCreateOptions::default()
    };
    let stream_id = Identifier::numeric(stream.id)?;
    let topic = client.create_topic(&stream_id, "bench", &options).await?;
    let topic_id = Identifier::numeric(topic.id)?;
    let partitioning = Partitioning::partition_id(0);
    let value = bytes::Bytes::from(vec![7u8; p.message_bytes]);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < p.messages {
        let n = (p.messages - sent).min(p.pipeline as u64);
        // Encoded here, inside the timed part, as every peer's client encodes its messages.
        let mut messages = (0..n)
            .map(|_| IggyMessage::builder().payload(value.clone()).build())
            .collect::<Result<Vec<_>, _>>()?;
        client.send_messages(&stream_id, &topic_id, &partitioning, &mut messages).await?;
        sent += n;
    }
    let produce = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let consumer = Consumer::default();
    let (mut offset, mut seen) = (0u64, 0u64);
    while seen < p.messages {
        let polled = client
            .poll_messages(
                &stream_id,
                &topic_id,
                Some(0),
                &consumer,
                &PollingStrategy::offset(offset),
                1_000,
                false,
            )
            .await?;
        anyhow::ensure!(!polled.messages.is_empty(), "Iggy returned {seen} of {} messages", p.messages);
        for m in &polled.messages {
            anyhow::ensure!(m.payload.len() == p.message_bytes, "a short Iggy message");
        }
        seen += polled.messages.len() as u64;
        offset += polled.messages.len() as u64;
    }
    Ok((produce, start.elapsed().as_secs_f64()))
}
