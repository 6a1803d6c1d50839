//! The Kafka listener: accepts connections, places each on a shard, and stops them all.
//!
//! One shard (shard 0) accepts; each accepted socket is handed to the next shard in turn
//! through its mailbox and served there, beside the partitions that shard owns. A request for a
//! partition another shard owns travels through that shard's mailbox like any engine call.
//! Topic administration blocks on every shard, so it runs on one admin thread, never on a shard.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::sync::WaitGroup;
use tokio::sync::watch;

use super::config::ServerConfig;
use super::connection;
use super::group::Coordinator;
use super::metrics::Metrics;
use super::producer_ids::ProducerIds;
use crate::engine::{Engine, EngineError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot start a server thread (admin or group coordinator): {0}")]
    Thread(#[source] std::io::Error),
}

/// What every connection shares, on whichever shard it lives.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub advertised: (String, u16),
    pub metrics: Metrics,
    pub coordinator: Coordinator,
    pub producer_ids: ProducerIds,
    pub admin: crossbeam::channel::Sender<AdminJob>,
    pub connections: AtomicUsize,
    pub request_bytes: Arc<tokio::sync::Semaphore>,
    /// The part of `request_bytes` that frames larger than `request_frame_bytes_max`, and
    /// produce frames of any size (they hold their room until written), may take: the rest is
    /// kept for small requests answered once decoded, so that neither can starve them.
    pub large_request_bytes: Arc<tokio::sync::Semaphore>,
    /// Buffers of large frames, reused (`frames`).
    pub frames: Arc<super::frames::FramePool>,
    /// Tokens for creating topics on first use, and when they were last counted.
    pub auto_create_bucket: std::sync::Mutex<(f64, std::time::Instant)>,
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    /// Takes one topic creation from the rate limit (a token bucket refilled at
    /// `auto_create_topics_per_sec`); false if none is left.
    pub fn auto_create_allowed(&self) -> bool {
        let rate = f64::from(self.config.auto_create_topics_per_sec.max(1));
        let mut bucket = self.auto_create_bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = &mut *bucket;
        *tokens = (*tokens + at.elapsed().as_secs_f64() * rate).min(rate);
        *at = std::time::Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn limits(&self) -> super::codec::FrameLimits {
        super::codec::FrameLimits {
            produce_bytes_max: self.config.produce_frame_bytes_max,
            other_bytes_max: self.config.request_frame_bytes_max,
        }
    }
}

/// Work for the admin thread (topic creation and deletion, which wait on every shard).
pub(crate) type AdminJob = Box<dyn FnOnce() + Send>;

/// The state a connection's tasks share on their shard.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub engine: Engine,
    pub shared: Arc<Shared>,
    pub shard: usize,
    /// The client's address (shown by DescribeGroups).
    pub peer: std::net::SocketAddr,
    /// Fetches started for this connection before it asked (partitions of other shards).
    pub read_ahead:
        std::cell::RefCell<std::collections::HashMap<(Rc<str>, i32), super::handlers::fetch::ReadAhead>>,
}

impl Ctx {
    /// Runs `job` on the admin thread and awaits its result.
    pub async fn admin<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        let engine = self.engine.clone();
        let sent = self.shared.admin.try_send(Box::new(move || {
            let _ = tx.send(job(&engine));
        }));
        if sent.is_err() {
            return Err(EngineError::Busy { shard: self.shard });
        }
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }
}

/// A running Kafka listener over an engine. Dropping it stops it (as [`Server::shutdown`]).
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<watch::Sender<bool>>,
    tasks: Option<WaitGroup>,
    admin: Option<std::thread::JoinHandle<()>>,
    groups: Option<std::thread::JoinHandle<()>>,
    shared: Option<Arc<Shared>>,
}

impl Server {
    /// Binds `config.listen` (and `config.metrics_listen`) and starts serving on `engine`'s
    /// shards. Returns once the sockets are bound.
    pub fn start(engine: &Engine, config: ServerConfig) -> Result<Server, ServerError> {
        Server::start_with_metrics(engine, config, Vec::new())
    }

    /// [`Server::start`], whose metrics endpoint also serves `collectors` (the CDC connectors').
    pub fn start_with_metrics(
        engine: &Engine,
        config: ServerConfig,
        collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    ) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let listener = bind(config.listen)?;
        let local_addr =
            listener.local_addr().map_err(|e| ServerError::Listen { addr: config.listen, source: e })?;
        let metrics_listener = config.metrics_listen.map(bind).transpose()?;
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_tx, admin_rx) = crossbeam::channel::bounded::<AdminJob>(64);
        let admin = std::thread::Builder::new()
            .name("spate-admin".into())
            .spawn(move || {
                for job in admin_rx {
                    job();
                }
            })
            .map_err(ServerError::Thread)?;
        let (coordinator, groups_thread) =
            Coordinator::start(&config, engine.clone()).map_err(ServerError::Thread)?;
        let shared = Arc::new(Shared {
            advertised: config.advertised(local_addr),
            metrics: Metrics::with_collectors(collectors),
            coordinator,
            producer_ids: ProducerIds::default(),
            admin: admin_tx,
            connections: AtomicUsize::new(0),
            request_bytes: Arc::new(tokio::sync::Semaphore::new(config.request_bytes_in_flight_max)),
            auto_create_bucket: std::sync::Mutex::new((
                f64::from(config.auto_create_topics_per_sec.max(1)),
                std::time::Instant::now(),
            )),
            large_request_bytes: Arc::new(tokio::sync::Semaphore::new(
                config.request_bytes_in_flight_max - config.small_request_reserve(),
            )),
            frames: Arc::default(),
            stop: stop_rx,
            config,
        });
        let tasks = WaitGroup::new();
        let accept = {
            let (engine2, shared, wg) = (engine.clone(), Arc::clone(&shared), tasks.clone());
            Box::new(move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
                Box::pin(accept_loop(engine2, shared, listener, wg))
            })
        };
        engine.spawn_on(0, accept)?;
        if let Some(listener) = metrics_listener {
            let (engine2, shared, wg) = (engine.clone(), Arc::clone(&shared), tasks.clone());
            let shard = engine.shards() - 1;
            engine.spawn_on(
                shard,
                Box::new(move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
                    Box::pin(super::http::serve_metrics(engine2, shared, listener, wg))
                }),
            )?;
        }
        tracing::info!(%local_addr, ?metrics_addr, shards = engine.shards(), "Kafka listener started");
        Ok(Server {
            local_addr,
            metrics_addr,
            stop: Some(stop_tx),
            tasks: Some(tasks),
            admin: Some(admin),
            groups: Some(groups_thread),
            shared: Some(shared),
        })
    }

    /// The address clients connect to (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics endpoint's address, if one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics in Prometheus text format, without the shards' counters.
    pub fn metrics_text(&self) -> String {
        self.shared.as_ref().map(|s| s.metrics.render(Vec::new())).unwrap_or_default()
    }

    /// What the connections share (tests reach the coordinator through it).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Shared {
        self.shared.as_ref().expect("running")
    }

    /// Stops accepting, closes every connection (requests in flight are dropped unanswered, as
    /// when a broker goes away) and waits for the tasks to finish. The engine keeps running.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(tasks) = self.tasks.take() {
            tasks.wait();
        }
        // The last handles to the admin and coordinator queues go with `shared`; the
        // threads then end.
        self.shared.take();
        for (name, thread) in [("admin", self.admin.take()), ("group coordinator", self.groups.take())] {
            if thread.is_some_and(|t| t.join().is_err()) {
                tracing::error!("the {name} thread panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let err = |e| ServerError::Listen { addr, source: e };
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

async fn accept_loop(engine: Engine, shared: Arc<Shared>, listener: std::net::TcpListener, wg: WaitGroup) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the Kafka listener");
            return;
        }
    };
    let mut stop = shared.stop.clone();
    let mut next_shard = 0;
    let fd_limit = crate::fds::limit();
    // (descriptors open, connections then, when counted)
    let mut fds = (crate::fds::open_count().unwrap_or(0), 0u64, std::time::Instant::now());
    let mut last_warning: Option<std::time::Instant> = None;
    // One warning every few seconds, however many connections are refused.
    let mut warn = |what: &dyn Fn()| {
        if last_warning.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            what();
            last_warning = Some(std::time::Instant::now());
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or the like: say so, and do not spin on it.
                shared.metrics.connections_refused.inc();
                warn(&|| tracing::warn!(error = %e, "accept failed"));
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.connections.load(Ordering::Relaxed) >= shared.config.connections_max {
            shared.metrics.connections_refused.inc();
            warn(
                &|| tracing::warn!(%peer, max = shared.config.connections_max, "too many connections; closing"),
            );
            continue;
        }
        if fd_limit != u64::MAX {
            // Counting reads a directory as long as the descriptor table: a count a tenth of a
            // second old, plus the connections accepted since, will do far from the limit;
            // near it, count again.
            let connections = shared.connections.load(Ordering::Relaxed) as u64;
            let mut open = fds.0 + connections.saturating_sub(fds.1);
            if fds.2.elapsed() >= std::time::Duration::from_millis(100)
                || open + 2 * crate::fds::HEADROOM >= fd_limit
            {
                fds = (crate::fds::open_count().unwrap_or(open), connections, std::time::Instant::now());
                open = fds.0;
            }
            if open + crate::fds::HEADROOM >= fd_limit {
                shared.metrics.connections_refused.inc();
                warn(
                    &|| tracing::warn!(%peer, open, limit = fd_limit, "out of file descriptors; refusing connections"),
                );
                continue;
            }
        }
        let shard = next_shard % engine.shards();
        next_shard += 1;
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over a connection");
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections.inc();
        shared.metrics.connections_accepted.inc();
        let guard = ConnectionGuard(Arc::clone(&shared));
        place(&engine, &shared, &wg, Accepted { stream, peer, guard, moved_at: None }, shard);
    }
    drop(wg);
}

/// An accepted connection on its way to a shard.
struct Accepted {
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    /// Counts the connection until its last task ends, wherever it moves.
    guard: ConnectionGuard,
    /// When it last moved between shards.
    moved_at: Option<std::time::Instant>,
}

/// Serves a connection on `shard`. A connection whose requests all name partitions of one other
/// shard moves there (see `connection::serve`), and is placed again by this function.
fn place(engine: &Engine, shared: &Arc<Shared>, wg: &WaitGroup, conn: Accepted, shard: usize) {
    let (engine2, shared2, wg2) = (engine.clone(), Arc::clone(shared), wg.clone());
    let task = Box::new(move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move {
            let Accepted { stream, peer, guard, moved_at } = conn;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot poll a connection");
                    return;
                }
            };
            let ctx = Rc::new(Ctx {
                engine: engine2,
                shared: Arc::clone(&shared2),
                shard,
                peer,
                read_ahead: Default::default(),
            });
            let moved = connection::serve(Rc::clone(&ctx), stream, peer, moved_at).await;
            if let Some((stream, target)) = moved {
                shared2.metrics.connections_moved.inc();
                tracing::debug!(%peer, from = shard, to = target, "connection moves to its partitions' shard");
                let conn = Accepted { stream, peer, guard, moved_at: Some(std::time::Instant::now()) };
                place(&ctx.engine, &shared2, &wg2, conn, target);
            }
            drop(wg2);
        })
    });
    if let Err(e) = engine.spawn_on(shard, task) {
        // The closure (and the socket in it) was dropped with the refused request.
        tracing::warn!(shard, error = %e, "cannot place a connection on its shard");
    }
}

/// Counts a connection down when its task ends, however it ends.
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connections.dec();
    }
}
