//! One client connection: frames in, handler tasks, responses out in request order.
//!
//! The reader reads a frame's size and fixed prefix, refuses frames over the API's limit before
//! reading them, waits for room in the server-wide budget of request bytes, reads the frame and
//! spawns its handler on this shard. Up to `in_flight_per_connection` handlers run at once (so
//! pipelined produces share a group commit); the writer awaits them in order, because Kafka
//! clients match responses to requests by order as well as correlation id. A request that
//! cannot be understood closes the connection once the responses before it are written.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::codec::{Chunk, Outgoing, Prefix, PREFIX_BYTES};
use super::frames::FramePool;
use super::handlers::{self, Handled};
use super::server::Ctx;

/// A handler task, aborted if the connection goes away before its response is written.
struct Pending(JoinHandle<Handled>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves a connection until it closes, or until it should move: when a response shows that
/// one other shard owns every partition the request named, the connection stops reading, writes
/// what it owes, and returns its socket and that shard (at most one move a second, so a client
/// that alternates cannot make it bounce). The caller places it there.
pub(crate) async fn serve(
    ctx: Rc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    moved_at: Option<Instant>,
) -> Option<(std::net::TcpStream, usize)> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "TCP_NODELAY");
    }
    let (reader, writer) = stream.into_split();
    let (tx, rx) = tokio::sync::mpsc::channel(ctx.shared.config.in_flight_per_connection);
    let moving = Rc::new(Move { target: Cell::new(None), notify: tokio::sync::Notify::new(), moved_at });
    let mut stop = ctx.shared.stop.clone();
    let mut stop2 = ctx.shared.stop.clone();
    let mut write = std::pin::pin!(write_loop(Rc::clone(&ctx), writer, rx, peer, Rc::clone(&moving)));
    let read = read_loop(Rc::clone(&ctx), reader, tx, peer, Rc::clone(&moving));
    tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        _ = &mut write => None,
        reader = read => {
            // The client finished sending, sent something to close on, or the connection is
            // moving: write what is owed first.
            let writer = tokio::select! {
                _ = stop2.wait_for(|s| *s) => None,
                w = write => w,
            };
            let (reader, writer, target) = (reader?, writer?, moving.target.get()?);
            let stream = reader.reunite(writer).ok()?.into_std().ok()?;
            Some((stream, target))
        }
    }
}

/// A connection moves at most this often.
const MOVE_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer's decision to move the connection, and how it tells the reader.
struct Move {
    target: Cell<Option<usize>>,
    notify: tokio::sync::Notify,
    /// When the connection last moved.
    moved_at: Option<Instant>,
}

impl Move {
    fn allowed(&self) -> bool {
        self.target.get().is_none() && self.moved_at.is_none_or(|t| t.elapsed() >= MOVE_INTERVAL_MIN)
    }
}

/// Reads frames and spawns their handlers. Returns the read half when it stopped to move (only
/// between frames: a frame once started is always read whole).
async fn read_loop(
    ctx: Rc<Ctx>,
    mut reader: OwnedReadHalf,
    tx: tokio::sync::mpsc::Sender<Pending>,
    peer: SocketAddr,
    moving: Rc<Move>,
) -> Option<OwnedReadHalf> {
    let limits = ctx.shared.limits();
    let config = &ctx.shared.config;
    // This connection's share of the request budget.
    let own_bytes = Arc::new(tokio::sync::Semaphore::new(config.connection_request_bytes_max()));
    loop {
        // Wait for the next frame's first byte without taking it (`readable` can report a
        // readiness left over from the last frame), so that a move is noticed between frames.
        let mut first = [0u8; 1];
        tokio::select! {
            biased;
            _ = moving.notify.notified() => return Some(reader),
            peeked = tokio::time::timeout(config.connections_max_idle, reader.peek(&mut first)) => {
                match peeked {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return None,
                    Err(_) => {
                        ctx.shared.metrics.connections_idle_closed.inc();
                        tracing::debug!(%peer, "closing a connection idle for connections_max_idle");
                        return None;
                    }
                }
            }
        }
        // From the first byte of a frame on, every part of it must arrive within the frame
        // timeout: a client that sends a byte and stops holds its connection no longer.
        let frame_timeout = config.frame_read_timeout;
        let mut size = [0u8; 4];
        match tokio::time::timeout(frame_timeout, reader.read_exact(&mut size)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "read failed");
                }
                return None;
            }
            Err(_) => {
                bad_frame(&ctx, peer, "a frame's size did not arrive within the read timeout");
                return None;
            }
        }
        let started = Instant::now();
        let size = i32::from_be_bytes(size);
        if size < PREFIX_BYTES as i32 {
            bad_frame(&ctx, peer, &format!("frame size {size} is below the 8-byte request prefix"));
            return None;
        }
        let size = size as usize;
        let mut prefix = [0u8; PREFIX_BYTES];
        if !matches!(tokio::time::timeout(frame_timeout, reader.read_exact(&mut prefix)).await, Ok(Ok(_))) {
            return None;
        }
        let parsed = Prefix::parse(&prefix)?;
        let limit = limits.for_api(parsed.api_key);
        if size > limit {
            bad_frame(
                &ctx,
                peer,
                &format!("frame of {size} bytes for API {} is over the {limit}-byte limit", parsed.api_key),
            );
            return None;
        }
        // Nothing is budgeted until the body starts to arrive, so a client that announces a
        // large frame and sends nothing holds nothing; then the whole frame takes its room in
        // the server-wide budget at once (taking it piecemeal could leave several large frames
        // each holding part and all waiting for more), and must arrive within the deadline.
        let mut first = [0u8; 1];
        if size > PREFIX_BYTES
            && !matches!(tokio::time::timeout(frame_timeout, reader.peek(&mut first)).await, Ok(Ok(n)) if n > 0)
        {
            return None;
        }
        // The connection's share first, then (for a large frame, and for every produce frame,
        // which holds its room until its batches are written) the part of the budget outside
        // the small-request reserve, then the budget itself: small requests that are answered
        // once decoded always find room.
        let produce = parsed.api_key == kafka_protocol::messages::ApiKey::Produce as i16;
        let mut permits = Vec::with_capacity(3);
        let Ok(own) = Arc::clone(&own_bytes).acquire_many_owned(size as u32).await else { return None };
        permits.push(own);
        if size > config.request_frame_bytes_max || produce {
            // A frame larger than the whole large-frame part takes all of it, not forever.
            let large_max = config.request_bytes_in_flight_max - config.small_request_reserve();
            let Ok(large) = Arc::clone(&ctx.shared.large_request_bytes)
                .acquire_many_owned(size.min(large_max) as u32)
                .await
            else {
                return None;
            };
            permits.push(large);
        }
        let Ok(permit) = Arc::clone(&ctx.shared.request_bytes).acquire_many_owned(size as u32).await else {
            return None;
        };
        permits.push(permit);
        let buffer = ctx.shared.frames.take(size);
        let body = read_body(&mut reader, buffer, &prefix, size, config.frame_bytes_per_sec_min);
        let frame = match tokio::time::timeout(ctx.shared.config.frame_read_timeout, body).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                bad_frame(&ctx, peer, &format!("a {size}-byte frame arrived slower than the minimum rate"));
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed inside a frame");
                return None;
            }
            Err(_) => {
                bad_frame(
                    &ctx,
                    peer,
                    &format!("a {size}-byte frame was not received within the read timeout"),
                );
                return None;
            }
        };
        // A produce frame's batches are written from the frame itself, so its room in the
        // budget goes with its bytes, given back when the shards drop the last of them (even
        // if the connection closed meanwhile); other requests give it back once decoded.
        let (hold, budget) = if produce {
            (Some(permits), handlers::FrameBudget::new(Vec::new()))
        } else {
            (None, handlers::FrameBudget::new(permits))
        };
        let frame: Bytes = FramePool::freeze(&ctx.shared.frames, frame, hold);
        let task_ctx = Rc::clone(&ctx);
        let handle = tokio::task::spawn_local(async move {
            handlers::handle(&task_ctx, parsed, frame, started, budget).await
        });
        if tx.send(Pending(handle)).await.is_err() {
            return None;
        }
    }
}

/// Bytes of a frame's body that must arrive within one deadline (a second plus their share of
/// the minimum rate).
const BODY_CHUNK_BYTES: usize = 256 << 10;

/// Reads the rest of a `size`-byte frame after its prefix, each piece within a second plus
/// its share of `bytes_per_sec_min` (a `TimedOut` error otherwise).
///
/// `frame` (empty, from the frame pool) has room for the frame's size, which the budget
/// already holds, and is read into without being zeroed first: the pages of a new buffer are
/// touched only as bytes arrive (a frame that never arrives costs address space, not memory),
/// and nothing is copied as it grows.
async fn read_body(
    reader: &mut OwnedReadHalf,
    mut frame: Vec<u8>,
    prefix: &[u8],
    size: usize,
    bytes_per_sec_min: u64,
) -> std::io::Result<Vec<u8>> {
    debug_assert!(frame.is_empty() && frame.capacity() >= size);
    frame.extend_from_slice(prefix);
    while frame.len() < size {
        let chunk = (size - frame.len()).min(BODY_CHUNK_BYTES);
        let allowed = std::time::Duration::from_secs(1)
            + std::time::Duration::from_secs_f64(chunk as f64 / bytes_per_sec_min as f64);
        let end = frame.len() + chunk;
        let piece = async {
            while frame.len() < end {
                // At most up to `end`: `read_buf` fills spare capacity, never past the limit.
                let mut limited = (&mut *reader).take((end - frame.len()) as u64);
                if limited.read_buf(&mut frame).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(allowed, piece).await {
            Ok(read) => read?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(frame)
}

fn bad_frame(ctx: &Ctx, peer: SocketAddr, why: &str) {
    ctx.shared.metrics.bad_frames.inc();
    tracing::warn!(%peer, "closing connection: {why}");
}

/// Writes responses in request order. Returns the write half once the reader is done and every
/// response is written (`None` after an error or a close).
async fn write_loop(
    ctx: Rc<Ctx>,
    mut writer: OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    peer: SocketAddr,
    moving: Rc<Move>,
) -> Option<OwnedWriteHalf> {
    while let Some(mut pending) = rx.recv().await {
        let handled = match (&mut pending.0).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(%peer, error = %e, "a request handler failed; closing the connection");
                return None;
            }
        };
        match handled.response {
            Ok(Some(out)) => {
                if let Err(e) = write_out(&ctx, &mut writer, out).await {
                    tracing::debug!(%peer, error = %e, "write failed");
                    return None;
                }
            }
            Ok(None) => {}
            Err(why) => {
                bad_frame(&ctx, peer, &why);
                let _ = writer.shutdown().await;
                return None;
            }
        }
        ctx.shared.metrics.observe(handled.api, handled.started.elapsed().as_secs_f64());
        match handled.owner {
            Some(owner) if owner != ctx.shard && moving.allowed() => {
                moving.target.set(Some(owner));
                moving.notify.notify_one();
            }
            _ => {}
        }
    }
    Some(writer)
}

/// Writes one response: buffered chunks with `write_all`, file chunks with `sendfile`.
async fn write_out(ctx: &Ctx, writer: &mut OwnedWriteHalf, out: Outgoing) -> std::io::Result<()> {
    for chunk in out.chunks {
        match chunk {
            Chunk::Bytes(b) => writer.write_all(&b).await?,
            Chunk::File { file, position, len } => {
                send_file(writer.as_ref(), &file, position, len).await?;
                ctx.shared.metrics.zero_copy_bytes.inc_by(len);
            }
        }
    }
    Ok(())
}

/// `len` bytes of `file` from `position` to the socket with `sendfile(2)`: page cache to socket
/// buffer in the kernel, never through user space.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    mut position: u64,
    mut len: u64,
) -> std::io::Result<()> {
    while len > 0 {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let mut offset = position as libc::off_t;
            let count = len.min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the call (the socket is borrowed, the file
            // is held by an Arc); `offset` is a live local the kernel updates.
            let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, count) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as u64)
            }
        });
        match sent {
            Ok(0) => {
                // The frame's size promised these bytes; the connection cannot continue.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("segment file ends before {len} more bytes at {position}"),
                ));
            }
            Ok(n) => {
                position += n;
                len -= n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
