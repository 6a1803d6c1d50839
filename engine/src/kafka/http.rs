//! The metrics endpoint: `GET /metrics` in the Prometheus text format over a minimal HTTP/1.1
//! responder (one request per connection). Anything else gets 404 or 400.

use std::sync::Arc;

use crossbeam::sync::WaitGroup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::server::Shared;
use crate::engine::Engine;

/// A request head larger than this is refused.
const HEAD_BYTES_MAX: usize = 8 << 10;

pub(crate) async fn serve_metrics(
    engine: Engine,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    wg: WaitGroup,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the metrics listener");
            return;
        }
    };
    let mut stop = shared.stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let (engine, shared) = (engine.clone(), Arc::clone(&shared));
        tokio::task::spawn_local(async move {
            let timeout = std::time::Duration::from_secs(10);
            let _ = tokio::time::timeout(timeout, answer(engine, shared, stream)).await;
        });
    }
    drop(wg);
}

async fn answer(
    engine: Engine,
    shared: Arc<Shared>,
    mut stream: tokio::net::TcpStream,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > HEAD_BYTES_MAX {
            return respond(&mut stream, "400 Bad Request", "text/plain", "request head too large\n").await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != b"GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await;
    }
    if path != b"/metrics" {
        return respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await;
    }
    let stats = match engine.stats_async().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: shard statistics unavailable");
            Vec::new()
        }
    };
    let body = shared.metrics.render(stats);
    respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body).await
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
