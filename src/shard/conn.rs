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

use super::{OutState, Shard};
use crate::http::{self, Request};
use crate::perip::Refused;
use crate::throttle::Throttle;
use crate::ws::{self, Decoder, Event, WsError};
use tracing::warn;

/// Serves one accepted TCP connection to the end.
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let ip = stream.peer_addr().map(|a| a.ip()).ok();
    let node = &shard.node;
    // The socket counts toward its address's connections from now on, so a
    // handshake held open (a ClientHello sent a byte at a time) holds a
    // place like an upgraded connection does.
    let mut slot = IpSlot { node, ip: None };
    if let Some(ip) = ip {
        match node.per_ip.reserve(ip) {
            Ok(()) => slot.ip = Some(ip),
            Err(_) if node.tls.is_some() => {
                // Nothing can be said before the TLS handshake: close at once.
                node.stats.shards[shard.id].per_ip_refused[0].fetch_add(1, Relaxed);
                if let Some(held) = PER_IP_LOG.due() {
                    warn!(%ip, held_back = held, "too many connections from this address: socket closed at accept");
                }
                return;
            }
            // Plain HTTP: the upgrade is answered 503 (see `handshake`).
            Err(_) => {}
        }
    }
    let mut tls = match &node.tls {
        Some(t) => match t.accept() {
            Ok(c) => Some(Box::new(c)),
            Err(_) => return,
        },
        None => None,
    };
    let leftover = {
        // The whole handshake (TLS, then the HTTP head and the upgrade's
        // answer) within --handshake-timeout, or the socket is closed; the
        // shard may also shed it first when descriptors run out. Boxed so
        // that its state (its buffers) is freed once it is done instead of
        // staying part of this future for the connection's life.
        let ticket = shard.handshakes.enter();
        let work = Box::pin(handshake(&shard, &mut stream, ip, tls.as_deref_mut(), &mut slot));
        let timeout = async {
            let timed_out = async {
                Timer::new(node.cfg.limits.handshake_timeout).await;
                true
            };
            let shed = async {
                ticket.signal.fired().await;
                false
            };
            if futures_lite::future::or(timed_out, shed).await {
                node.stats.shards[shard.id].timeout_closes.fetch_add(1, Relaxed);
            }
            None
        };
        match futures_lite::future::or(work, timeout).await {
            Some(l) => l,
            None => return,
        }
    };
    let (leftover, deflate) = leftover;
    // The address's place goes to the connection table, which gives it
    // back when the connection ends (its task may end earlier: dormancy).
    let key = shard.register(stream.as_raw_fd(), deflate, slot.ip.take());
    if let Some(t) = tls {
        shard.conns.borrow_mut().set_tls(key, t);
    }
    serve_registered(&shard, key, stream, Start::Upgraded(leftover), deflate).await;
}

/// Starts a new task on a dormant connection's socket (see
/// [`super::dormant`]), unless it woke already or is gone.
pub(crate) async fn resume(shard: Rc<Shard>, key: u32, generation: u32) {
    let Some((fd, deflate)) = shard.dormancy.leave(&shard, key, generation) else { return };
    // SAFETY: the entry held this descriptor for the connection alone;
    // the stream now owns it (and closes it when the connection ends).
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    serve_registered(&shard, key, stream, Start::Woken, deflate).await;
}

/// How a connection's task starts.
enum Start {
    /// After the handshake, with the bytes that came after its head.
    Upgraded(Vec<u8>),
    /// Woken from dormancy: input is likely waiting (read it at once: a
    /// new glommio stream would first wait for its poll to come back).
    Woken,
}

/// Serves a registered connection until it ends (and leaves the table)
/// or goes dormant (and stays in it).
async fn serve_registered(shard: &Shard, key: u32, mut stream: TcpStream, start: Start, deflate: bool) {
    let guard = Registered { shard, key };
    if let Ended::Dormant = run(shard, key, &mut stream, start, deflate).await {
        // The entry holds a copy of the socket now; this task's copy closes.
        std::mem::forget(guard);
    }
}

static PER_IP_LOG: Throttle = Throttle::new();
static PER_IP_UPGRADE_LOG: Throttle = Throttle::new();

/// A socket's place in its address's count, given back however it ends.
struct IpSlot<'a> {
    node: &'a crate::node::Node,
    /// Set while the socket holds a place.
    ip: Option<std::net::IpAddr>,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.node.per_ip.release(ip);
        }
    }
}

/// Removes the connection from the shard (and its rooms) however the task ends.
struct Registered<'a> {
    shard: &'a Shard,
    key: u32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shard.unregister(self.key);
    }
}

/// Reads the HTTP head; answers plain requests; returns the bytes after the
/// head for an accepted upgrade, and whether it negotiated permessage-deflate.
async fn handshake(
    shard: &Shard,
    stream: &mut TcpStream,
    ip: Option<std::net::IpAddr>,
    mut tls: Option<&mut rustls::ServerConnection>,
    slot: &mut IpSlot<'_>,
) -> Option<(Vec<u8>, bool)> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut first = true;
    let (req, head_len) = loop {
        match read_more(stream, tls.as_deref_mut(), &mut buf, &mut first).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData && tls.is_some() => {
                // Plain HTTP (or garbage) on the TLS port: say so in plain text.
                let why = b"this port speaks TLS: use https:// or wss://";
                let _ = stream.write_all(&http::response(400, "text/plain", why)).await;
                return None;
            }
            // A reset or a TLS error (a timeout is the caller's, see `serve`).
            Err(_) => return None,
        }
        match http::parse(&buf) {
            Ok(Some(r)) => break r,
            Ok(None) => continue,
            Err(why) => {
                let _ = send_all(stream, tls.as_deref_mut(), &http::response(400, "text/plain", why.as_bytes())).await;
                return None;
            }
        }
    };
    let node = &shard.node;
    let reply = match req {
        Request::Upgrade { accept, origin, host, deflate } => {
            if !http::origin_allowed(origin.as_deref(), host.as_deref(), &node.cfg.security.allowed_origins) {
                http::response(403, "text/plain", b"origin not allowed")
            } else if shard.shutting_down.get() {
                http::response(503, "text/plain", b"shutting down")
            } else if let Some(Err(why)) = ip.map(|ip| admit(node, ip, slot)) {
                let stats = &node.stats.shards[shard.id];
                if let Some(held) = PER_IP_UPGRADE_LOG.due() {
                    warn!(ip = %ip.map(|i| i.to_string()).unwrap_or_default(), why = ?why, held_back = held, "upgrade refused by the per-address limits");
                }
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
                node.stats.shards[shard.id].rejected_connections.fetch_add(1, Relaxed);
                http::response(503, "text/plain", b"connection limit reached")
            } else {
                let deflate = deflate && node.cfg.tuning.compress_min.is_some();
                let reply = http::switching_protocols(&accept, deflate);
                if send_all(stream, tls.as_deref_mut(), reply.as_bytes()).await.is_err() {
                    node.open.fetch_sub(1, Relaxed);
                    return None;
                }
                return Some((buf.split_off(head_len), deflate));
            }
        }
        Request::Get(path) => http::route(&path, node),
        Request::Reject(status, why) => http::response(status, "text/plain", why.as_bytes()),
    };
    let _ = send_all(stream, tls.as_deref_mut(), &reply).await;
    if let Some(t) = tls {
        t.send_close_notify();
        let _ = flush_tls(stream, t).await;
    }
    let _ = stream.close().await;
    None
}

/// The per-address check of an upgrade: a socket that holds a place since
/// its accept is checked for its rate; one that did not get a place then
/// (plain HTTP over the limit) gets one now or is refused.
fn admit(node: &crate::node::Node, ip: std::net::IpAddr, slot: &mut IpSlot<'_>) -> Result<(), Refused> {
    if slot.ip.is_some() {
        return node.per_ip.check_rate(ip, Instant::now());
    }
    node.per_ip.admit(ip, Instant::now())?;
    slot.ip = Some(ip);
    Ok(())
}

/// Reads more of the HTTP head into `buf` (decrypted on TLS, answering the
/// TLS handshake as it goes); the bytes added, 0 at the end. On TLS, a
/// connection whose `first` bytes are not a handshake record is `InvalidData`.
async fn read_more(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::ServerConnection>,
    buf: &mut Vec<u8>,
    first: &mut bool,
) -> std::io::Result<usize> {
    let Some(tls) = tls else {
        let len = buf.len();
        buf.resize(len + 1024, 0);
        let r = stream.read(&mut buf[len..]).await;
        buf.truncate(len + *r.as_ref().unwrap_or(&0));
        return r;
    };
    let mut raw = [0u8; 4096];
    loop {
        let n = stream.read(&mut raw).await?;
        if n == 0 {
            return Ok(0);
        }
        if std::mem::take(first) && !crate::tls::looks_like_tls(&raw[..n]) {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let before = buf.len();
        let open = crate::tls::decrypt(tls, &raw[..n], buf);
        // Handshake replies, or the alert that explains a failure.
        flush_tls(stream, tls).await?;
        if !open? {
            return Ok(0);
        }
        if buf.len() > before {
            return Ok(buf.len() - before);
        }
    }
}

/// Writes all of `bytes` (sealed into records on TLS).
async fn send_all(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::ServerConnection>,
    bytes: &[u8],
) -> std::io::Result<()> {
    let Some(tls) = tls else { return stream.write_all(bytes).await };
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = std::io::Write::write(&mut tls.writer(), rest)?;
        rest = &rest[n..];
        flush_tls(stream, tls).await?;
    }
    Ok(())
}

/// Sends the records a TLS state holds.
async fn flush_tls(stream: &mut TcpStream, tls: &mut rustls::ServerConnection) -> std::io::Result<()> {
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out)?;
    }
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    Ok(())
}

enum Wake {
    Read(usize),
    Closing,
    Gone,
    /// The sweeper asks the task to go dormant.
    Rest,
}

/// How a connection's task ended.
enum Ended {
    /// The connection is over.
    Closed,
    /// The connection rests in the shard's epoll; a new task will serve it.
    Dormant,
}

async fn run(shard: &Shard, key: u32, stream: &mut TcpStream, start: Start, deflate: bool) -> Ended {
    let mut dec = Decoder::new(deflate);
    let mut pending = Vec::new();
    let mut woken = matches!(start, Start::Woken);
    if let Start::Upgraded(mut data) = start
        && !data.is_empty()
    {
        feed(shard, key, &mut dec, &mut data, &mut pending);
    }
    loop {
        let wake = poll_fn(|cx| {
            match shard.out_state(key) {
                OutState::Closing(_) => return Poll::Ready(Wake::Closing),
                OutState::Blocked => {
                    let r =
                        shard.flush.poll_write_queued(shard, key, cx, |cx, b| Pin::new(&mut *stream).poll_write(cx, b));
                    if let Poll::Ready(Err(_)) = r {
                        return Poll::Ready(Wake::Gone);
                    }
                }
                OutState::Idle | OutState::Dirty => {
                    if shard.dormancy.asked(shard, key) {
                        return Poll::Ready(Wake::Rest);
                    }
                }
            }
            // Back-pressure: while this shard's cross-shard outboxes are
            // backed up, stop reading new commands; the shard wakes every
            // parked reader when they drain.
            if shard.mesh.park_if_backed_up(shard, key, cx.waker()) {
                return Poll::Pending;
            }
            let mut rb = shard.read_buf.borrow_mut();
            if std::mem::take(&mut woken)
                && let Some(r) = recv_now(stream.as_raw_fd(), &mut rb, false)
            {
                return Poll::Ready(if r == 0 { Wake::Gone } else { Wake::Read(r) });
            }
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
                let open = {
                    // Borrowed only until the frames are handled, never across an await.
                    let mut rb = shard.read_buf.borrow_mut();
                    let mut plain = shard.plain_buf.borrow_mut();
                    plain.clear();
                    // TLS: the frames are in what the records decrypt to.
                    let decrypted = shard.conns.borrow_mut().tls_decrypt(key, &rb[..n], &mut plain, &shard.flush);
                    match decrypted {
                        None => {
                            feed(shard, key, &mut dec, &mut rb[..n], &mut pending);
                            true
                        }
                        Some(Ok(open)) => {
                            feed(shard, key, &mut dec, &mut plain, &mut pending);
                            open
                        }
                        // A TLS protocol error: its alert is queued; drop the connection.
                        Some(Err(_)) => false,
                    }
                };
                if !open {
                    return Ended::Closed;
                }
                glommio::yield_if_needed().await;
            }
            Wake::Rest => {
                // Only with nothing half read: a new task starts with a new decoder.
                if dec.is_idle() && pending.is_empty() && shard.dormancy.enter(shard, key, stream.as_raw_fd()) {
                    return Ended::Dormant;
                }
                shard.dormancy.decline(shard, key);
            }
            Wake::Closing => {
                Box::pin(linger(shard, key, stream)).await;
                return Ended::Closed;
            }
            Wake::Gone => return Ended::Closed,
        }
    }
}

/// Reads what the socket holds without waiting (`peek`: leaves it there):
/// Some(0) at its end (or on an error), None when nothing is there.
pub(super) fn recv_now(fd: std::os::fd::RawFd, buf: &mut [u8], peek: bool) -> Option<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n >= 0 {
        return Some(n as usize);
    }
    match std::io::Error::last_os_error().kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => Some(0),
    }
}

/// Decodes `data` after the tail of a frame that `pending` holds from the
/// read before (a protocol violation starts the close).
fn feed(shard: &Shard, key: u32, dec: &mut Decoder, data: &mut [u8], pending: &mut Vec<u8>) {
    let r = if pending.is_empty() {
        process(shard, key, dec, data, pending)
    } else {
        pending.extend_from_slice(data);
        let mut all = std::mem::take(pending);
        process(shard, key, dec, &mut all, pending)
    };
    if let Err(e) = r {
        violation(shard, key, e);
    }
}

fn violation(shard: &Shard, key: u32, e: WsError) {
    shard.node.stats.shards[shard.id].protocol_closes.fetch_add(1, Relaxed);
    shard.begin_close(key, e.close_code(), e.reason());
}

/// Decodes every whole frame in `data`; the tail of an incomplete
/// frame is copied into `pending` (sized to it, and freed once used).
fn process(shard: &Shard, key: u32, dec: &mut Decoder, data: &mut [u8], pending: &mut Vec<u8>) -> Result<(), WsError> {
    let max = shard.node.cfg.limits.max_frame_bytes;
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
            Event::Text(r) => shard.input().text(key, &mut buf[r]),
            Event::AssembledText => {
                let mut m = dec.take_message();
                shard.input().text(key, &mut m);
            }
            Event::Deflated(r) => shard.input().deflated(key, &buf[r], max)?,
            Event::AssembledDeflated => {
                let m = dec.take_message();
                shard.input().deflated(key, &m, max)?;
            }
            Event::Binary => shard.input().binary(key),
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
    let grace = shard.node.cfg.limits.shutdown_grace.min(Duration::from_secs(5));
    let flushed = futures_lite::future::or(
        async {
            poll_fn(|cx| {
                shard.flush.poll_write_queued(shard, key, cx, |cx, b| Pin::new(&mut *stream).poll_write(cx, b))
            })
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
    // TLS: close_notify after the close frame.
    if shard.conns.borrow_mut().tls_close_notify(key) {
        let _ = futures_lite::future::or(
            async {
                poll_fn(|cx| {
                    shard.flush.poll_write_queued(shard, key, cx, |cx, b| Pin::new(&mut *stream).poll_write(cx, b))
                })
                .await
            },
            async {
                Timer::new(Duration::from_millis(500)).await;
                Ok(())
            },
        )
        .await;
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
