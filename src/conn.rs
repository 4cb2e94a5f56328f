//! The per-connection task: HTTP head, then WebSocket frames until close.
//!
//! The task owns the socket and the few bytes of an incomplete frame; all
//! other connection state lives in the shard's table (so the shard can queue
//! output to it and flush it without waking this task). Reads go into the
//! shard's shared buffer: glommio waits for readiness and only then reads,
//! so an idle connection holds no read buffer at all.

use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use crate::http::{self, Request};
use crate::perip::Refused;
use crate::shard::{OutState, Shard};
use crate::ws::{self, Decoder, Event, WsError};

/// Serves one accepted TCP connection to the end.
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // Boxed so that the handshake's state (its buffers) is freed once it is
    // done instead of staying part of this future for the connection's life.
    let ip = stream.peer_addr().map(|a| a.ip()).ok();
    let leftover = match Box::pin(handshake(&shard, &mut stream, ip)).await {
        Some(l) => l,
        None => return,
    };
    let key = shard.register(stream.as_raw_fd());
    let guard = Registered { shard: &shard, key, ip };
    run(&shard, key, &mut stream, leftover).await;
    drop(guard);
}

/// Removes the connection from the shard (and its rooms) however the task ends.
struct Registered<'a> {
    shard: &'a Shard,
    key: u32,
    /// Counted against its address's limits while it lives.
    ip: Option<std::net::IpAddr>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shard.unregister(self.key);
        if let Some(ip) = self.ip {
            self.shard.node.per_ip.release(ip);
        }
    }
}

/// Reads the HTTP head; answers plain requests; returns the bytes after the
/// head for an accepted upgrade.
async fn handshake(shard: &Shard, stream: &mut TcpStream, ip: Option<std::net::IpAddr>) -> Option<Vec<u8>> {
    let deadline = Instant::now() + shard.node.cfg.handshake_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let (req, head_len) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            shard.node.stats.shards[shard.id].timeout_closes.fetch_add(1, Relaxed);
            return None;
        }
        let _ = stream.set_read_timeout(Some(left));
        let len = buf.len();
        buf.resize(len + 1024, 0);
        let n = match stream.read(&mut buf[len..]).await {
            Ok(0) => return None,
            Ok(n) => n,
            Err(_) => {
                shard.node.stats.shards[shard.id].timeout_closes.fetch_add(1, Relaxed);
                return None;
            }
        };
        buf.truncate(len + n);
        match http::parse(&buf) {
            Ok(Some(r)) => break r,
            Ok(None) => continue,
            Err(why) => {
                let _ = stream.write_all(&http::response(400, "text/plain", why.as_bytes())).await;
                return None;
            }
        }
    };
    let _ = stream.set_read_timeout(None);
    let node = &shard.node;
    let reply = match req {
        Request::Upgrade { accept, origin, host } => {
            if !http::origin_allowed(origin.as_deref(), host.as_deref(), &node.cfg.allowed_origins) {
                http::response(403, "text/plain", b"origin not allowed")
            } else if shard.shutting_down.get() {
                http::response(503, "text/plain", b"shutting down")
            } else if let Some(Err(why)) = ip.map(|ip| node.per_ip.admit(ip, Instant::now())) {
                let stats = &node.stats.shards[shard.id];
                match why {
                    Refused::TooMany => {
                        stats.per_ip_refused[0].fetch_add(1, Relaxed);
                        http::response(503, "text/plain", b"too many connections from this address")
                    }
                    Refused::TooFast => {
                        stats.per_ip_refused[1].fetch_add(1, Relaxed);
                        http::response(429, "text/plain", b"too many new connections from this address")
                    }
                }
            } else if node.open.fetch_add(1, Relaxed) >= node.max_connections {
                node.open.fetch_sub(1, Relaxed);
                if let Some(ip) = ip {
                    node.per_ip.release(ip);
                }
                node.stats.shards[shard.id].rejected_connections.fetch_add(1, Relaxed);
                http::response(503, "text/plain", b"connection limit reached")
            } else {
                if stream.write_all(http::switching_protocols(&accept).as_bytes()).await.is_err() {
                    node.open.fetch_sub(1, Relaxed);
                    if let Some(ip) = ip {
                        node.per_ip.release(ip);
                    }
                    return None;
                }
                return Some(buf.split_off(head_len));
            }
        }
        Request::Get(path) => http::route(&path, node),
        Request::Reject(status, why) => http::response(status, "text/plain", why.as_bytes()),
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.close().await;
    None
}

enum Wake {
    Read(usize),
    Closing,
    Gone,
}

async fn run(shard: &Shard, key: u32, stream: &mut TcpStream, leftover: Vec<u8>) {
    let mut dec = Decoder::default();
    let mut pending = leftover;
    if !pending.is_empty() {
        let mut data = std::mem::take(&mut pending);
        if let Err(e) = process(shard, key, &mut dec, &mut data, &mut pending) {
            violation(shard, key, e);
        }
    }
    loop {
        let wake = poll_fn(|cx| {
            match shard.out_state(key) {
                OutState::Closing(_) => return Poll::Ready(Wake::Closing),
                OutState::Blocked => {
                    let r = shard.poll_write_queued(key, cx, |cx, b| Pin::new(&mut *stream).poll_write(cx, b));
                    if let Poll::Ready(Err(_)) = r {
                        return Poll::Ready(Wake::Gone);
                    }
                }
                OutState::Idle | OutState::Dirty => {}
            }
            // Back-pressure: while this shard's cross-shard outboxes are
            // backed up, stop reading new commands; the shard wakes every
            // parked reader when they drain.
            if shard.park_if_backed_up(key, cx.waker()) {
                return Poll::Pending;
            }
            let mut rb = shard.read_buf.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut rb[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wake::Gone),
                Poll::Ready(Ok(n)) => Poll::Ready(Wake::Read(n)),
                Poll::Pending => {
                    shard.set_waker(key, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await;
        match wake {
            Wake::Read(n) => {
                shard.touch(key);
                let r = {
                    // Borrowed only until the frames are handled, never across an await.
                    let mut rb = shard.read_buf.borrow_mut();
                    if pending.is_empty() {
                        process(shard, key, &mut dec, &mut rb[..n], &mut pending)
                    } else {
                        pending.extend_from_slice(&rb[..n]);
                        let mut data = std::mem::take(&mut pending);
                        process(shard, key, &mut dec, &mut data, &mut pending)
                    }
                };
                if let Err(e) = r {
                    violation(shard, key, e);
                }
                glommio::yield_if_needed().await;
            }
            Wake::Closing => {
                Box::pin(linger(shard, key, stream)).await;
                return;
            }
            Wake::Gone => return,
        }
    }
}

fn violation(shard: &Shard, key: u32, e: WsError) {
    shard.node.stats.shards[shard.id].protocol_closes.fetch_add(1, Relaxed);
    shard.begin_close(key, e.close_code(), e.reason());
}

/// Decodes every whole frame in `data`; the tail of an incomplete
/// frame is copied into `pending` (sized to it, and freed once used).
fn process(shard: &Shard, key: u32, dec: &mut Decoder, data: &mut [u8], pending: &mut Vec<u8>) -> Result<(), WsError> {
    let max = shard.node.cfg.max_frame_bytes;
    let len = data.len();
    let mut off = 0;
    while off < len {
        if let OutState::Closing(_) = shard.out_state(key) {
            return Ok(()); // closing: ignore further input
        }
        let buf = &mut data[off..len];
        let Some((ev, used)) = dec.decode(buf, max)? else {
            break;
        };
        match ev {
            Event::Text(r) => shard.on_text(key, &mut buf[r]),
            Event::AssembledText => {
                let mut m = dec.take_message();
                shard.on_text(key, &mut m);
            }
            Event::Binary => shard.on_binary(key),
            Event::Ping(r) => shard.send_frame(key, ws::pong_frame(&buf[r])),
            Event::Pong | Event::Fragment => {}
            Event::Close(code) => {
                shard.begin_close(key, code.unwrap_or(ws::close_code::NORMAL), "");
                return Ok(());
            }
        }
        off += used;
    }
    let tail = &data[off..len];
    pending.clear();
    if !tail.is_empty() {
        pending.extend_from_slice(tail);
    } else if pending.capacity() > 0 {
        *pending = Vec::new();
    }
    Ok(())
}

/// Flushes the close frame (and anything before it) within the grace
/// period, then half-closes and drains input briefly, so the client reads
/// the close frame instead of a reset.
async fn linger(shard: &Shard, key: u32, stream: &mut TcpStream) {
    let grace = shard.node.cfg.shutdown_grace.min(Duration::from_secs(5));
    let flushed = futures_lite::future::or(
        async {
            poll_fn(|cx| shard.poll_write_queued(key, cx, |cx, b| Pin::new(&mut *stream).poll_write(cx, b)))
                .await
                .is_ok()
        },
        async {
            Timer::new(grace).await;
            false
        },
    )
    .await;
    if !flushed || shard.queued(key) > 0 {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 256];
    for _ in 0..64 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
