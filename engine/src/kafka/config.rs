//! What the Kafka listener can be told, with its defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::log::LogConfig;

/// The Kafka listener's settings. `Default` listens on 127.0.0.1:9092.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where to accept Kafka clients (port 0: any free port, see `Server::local_addr`).
    pub listen: SocketAddr,
    /// The host clients are told to connect to in Metadata and FindCoordinator answers;
    /// `None`: the listen address (or 127.0.0.1 when listening on every address).
    pub advertised_host: Option<String>,
    /// Largest Produce request accepted; larger frames close the connection.
    pub produce_frame_bytes_max: usize,
    /// Largest request of any other API (they carry no records).
    pub request_frame_bytes_max: usize,
    /// Bytes of requests read but not yet answered, over all connections: a connection waits
    /// for room before it reads a body.
    pub request_bytes_in_flight_max: usize,
    /// A frame's body must arrive within this long of its size, or the connection is closed.
    pub frame_read_timeout: Duration,
    /// ... and at this rate at least (each 256 KiB piece within a second plus its share of
    /// this rate), so that a stalled sender gives its room in the budget back quickly.
    pub frame_bytes_per_sec_min: u64,
    /// A connection that sends no request for this long is closed (Kafka's
    /// `connections.max.idle.ms`, ten minutes by default).
    pub connections_max_idle: Duration,
    /// Requests one connection may have in flight (answered in order).
    pub in_flight_per_connection: usize,
    /// Open connections at most; more are closed at once.
    pub connections_max: usize,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Create a topic the first time a client asks for it in Metadata (as Kafka's
    /// `auto.create.topics.enable`), with `default_partitions` partitions.
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// Topics created on first use per second at most (a burst of as many); beyond it,
    /// Metadata answers LEADER_NOT_AVAILABLE and the client retries.
    pub auto_create_topics_per_sec: u32,
    /// The configuration of topics created over the protocol, before their own settings.
    pub topic_defaults: LogConfig,
    /// Consumer groups: session timeouts clients may ask for, and how long a new group waits
    /// for more members before its first rebalance completes.
    pub group_session_timeout_min: Duration,
    pub group_session_timeout_max: Duration,
    pub group_initial_rebalance_delay: Duration,
    /// Consumer-protocol (KIP-848) groups: `group.consumer.session.timeout.ms` and
    /// `group.consumer.heartbeat.interval.ms`.
    pub group_consumer_session_timeout: Duration,
    pub group_consumer_heartbeat_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
            produce_frame_bytes_max: 100 << 20,
            request_frame_bytes_max: 1 << 20,
            request_bytes_in_flight_max: 512 << 20,
            frame_read_timeout: Duration::from_secs(30),
            frame_bytes_per_sec_min: 256 << 10,
            connections_max_idle: Duration::from_secs(600),
            in_flight_per_connection: 16,
            connections_max: 10_000,
            metrics_listen: None,
            auto_create_topics: true,
            default_partitions: 1,
            auto_create_topics_per_sec: 100,
            topic_defaults: LogConfig::default(),
            group_session_timeout_min: Duration::from_millis(1_000),
            group_session_timeout_max: Duration::from_secs(300),
            group_initial_rebalance_delay: Duration::from_millis(300),
            group_consumer_session_timeout: Duration::from_secs(45),
            group_consumer_heartbeat_interval: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.produce_frame_bytes_max < 64 || self.request_frame_bytes_max < 64 {
            return Err("frame limits must be at least 64 bytes".into());
        }
        if self.request_bytes_in_flight_max < self.produce_frame_bytes_max.max(self.request_frame_bytes_max) {
            return Err("request_bytes_in_flight_max must hold at least one largest frame".into());
        }
        if self.produce_frame_bytes_max > i32::MAX as usize {
            return Err("produce_frame_bytes_max must fit an i32 frame size".into());
        }
        if self.frame_read_timeout.is_zero() || self.connections_max_idle.is_zero() {
            return Err("frame_read_timeout and connections_max_idle must be positive".into());
        }
        if self.frame_bytes_per_sec_min == 0 {
            return Err("frame_bytes_per_sec_min must be positive".into());
        }
        if self.in_flight_per_connection == 0 || self.connections_max == 0 {
            return Err("in_flight_per_connection and connections_max must be positive".into());
        }
        if self.default_partitions == 0 || self.default_partitions > crate::engine::TOPIC_PARTITIONS_MAX {
            return Err(format!("default_partitions must be 1 to {}", crate::engine::TOPIC_PARTITIONS_MAX));
        }
        if self.group_consumer_heartbeat_interval.is_zero()
            || self.group_consumer_heartbeat_interval >= self.group_consumer_session_timeout
        {
            return Err(
                "group_consumer_heartbeat_interval_ms must be positive and below the session timeout".into(),
            );
        }
        if self.group_session_timeout_min > self.group_session_timeout_max {
            return Err("group_session_timeout_min exceeds group_session_timeout_max".into());
        }
        self.topic_defaults.validate()
    }

    /// Budget bytes kept for frames of at most `request_frame_bytes_max`: sixteen of them, at
    /// least 32 MiB, at most half the budget.
    pub(crate) fn small_request_reserve(&self) -> usize {
        (self.request_frame_bytes_max * 16).max(32 << 20).min(self.request_bytes_in_flight_max / 2)
    }

    /// Budget bytes one connection may hold at most: its largest frame, or an eighth of the
    /// budget if that is more.
    pub(crate) fn connection_request_bytes_max(&self) -> usize {
        self.produce_frame_bytes_max
            .max(self.request_frame_bytes_max)
            .max(self.request_bytes_in_flight_max / 8)
    }

    /// The host and port clients are told to use.
    pub(crate) fn advertised(&self, bound: SocketAddr) -> (String, u16) {
        let host = match &self.advertised_host {
            Some(h) => h.clone(),
            None if bound.ip().is_unspecified() => "127.0.0.1".to_string(),
            None => bound.ip().to_string(),
        };
        (host, bound.port())
    }
}
