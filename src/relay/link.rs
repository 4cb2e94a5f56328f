//! One relay link: its queue, and the task that moves frames both ways
//! until the link fails.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, Future};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use tracing::{info, warn};

use super::codec::{self, Frame};
use super::handshake::Role;
use super::secure::{Opener, Sealer};
use super::shake::{Shaken, shake};
use super::{HEARTBEAT, PEER_TIMEOUT, Relay, RelayEvent};
use crate::metrics::LinkStats;
use crate::throttle::Throttle;

/// Refused handshakes and links closed for a record that failed to open:
/// one log line a second each, however many a stranger sends.
static REFUSED_LOG: Throttle = Throttle::new();
static AUTH_LOG: Throttle = Throttle::new();

/// Largest write on a link: frames queued meanwhile go out together.
const WRITE_CHUNK: usize = 256 * 1024;

/// One established link.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) peer: u16,
    /// The relay version this link runs at (see `codec::encode_for`).
    pub(super) wire: u8,
    /// This node has the smaller name: it chooses the pair's link.
    pub(super) decides: bool,
    /// This link carries the pair's traffic.
    pub(super) active: Cell<bool>,
    pub(super) queue: RefCell<VecDeque<Bytes>>,
    pub(super) queued: Cell<usize>,
    pub(super) cap: usize,
    pub(super) waker: RefCell<Option<Waker>>,
    pub(super) closed: Cell<bool>,
    pub(super) stats: Arc<LinkStats>,
}

impl Link {
    pub(super) fn push(&self, frame: Bytes) {
        if self.closed.get() {
            return;
        }
        if self.queued.get() + frame.len() > self.cap {
            warn!(peer = %self.stats.peer, "relay queue over its cap: closing the link");
            self.stats.overflows.fetch_add(1, Relaxed);
            self.close();
            return;
        }
        self.queued.set(self.queued.get() + frame.len());
        self.stats.queue_bytes.fetch_add(frame.len() as i64, Relaxed);
        self.queue.borrow_mut().push_back(frame);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(super) fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Runs one link to the end. Returns true if the handshake succeeded.
pub(super) async fn run_link(relay: Rc<Relay>, mut stream: TcpStream, dialed: Option<SocketAddr>) -> bool {
    let _ = stream.set_nodelay(true);
    let node = relay.node.clone();
    let me = node.cfg.cluster.node_id.clone();
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let role = if dialed.is_some() { Role::Dialer } else { Role::Acceptor };
    relay.shaking.set(relay.shaking.get() + 1);
    let shaken = shake(&mut stream, &node, role).await;
    relay.shaking.set(relay.shaking.get() - 1);
    let Shaken { peer: peer_name, wire, rest, sealer, opener } = match shaken {
        Ok(x) => x,
        Err(e) => {
            node.relay.refused.fetch_add(1, Relaxed);
            if let Some(held) = REFUSED_LOG.due() {
                warn!(peer = %peer_addr, error = %e, held_back = held, "relay handshake refused");
            }
            return false;
        }
    };
    let idx = node.cluster.lock().expect("cluster table").index_of(&peer_name);
    if let Some(addr) = dialed {
        relay.dialed.borrow_mut().insert(addr, idx);
    }
    if wire < super::handshake::VERSION {
        info!(peer = %peer_name, wire, "relay link to a node of an older version: its newer features stay off on it");
    }
    let link = Rc::new(Link {
        peer: idx,
        wire,
        decides: me < peer_name,
        active: Cell::new(false),
        queue: RefCell::new(VecDeque::new()),
        queued: Cell::new(0),
        cap: node.cfg.cluster.relay_queue_bytes,
        waker: RefCell::new(None),
        closed: Cell::new(false),
        stats: node.relay.link(&peer_name),
    });
    if link.decides {
        if relay.up(idx) {
            // The pair has a working link; the peer sends nothing on this one.
            info!(peer = %peer_name, addr = %peer_addr, "second relay link to the peer closed unused");
            return true;
        }
        // First in the queue, so the peer reads it before any traffic.
        link.push(codec::activate());
        relay.activate(&link);
    }
    let mut sec = Secure { sealer, opener, cipher: rest };
    let result = carry(&relay, &link, &mut stream, &mut sec).await;
    link.closed.set(true);
    link.stats.queue_bytes.fetch_sub(link.queued.get() as i64, Relaxed);
    // Only the active link's end is the peer going down.
    if relay.unregister(&link) {
        link.stats.up.store(false, Relaxed);
        warn!(peer = %peer_name, reason = %result, "relay link down");
        node.cluster.lock().expect("cluster table").up[idx as usize] = false;
        relay.announce(Some(idx));
    }
    true
}

/// A link's keys, and the sealed bytes read but not yet opened.
struct Secure {
    sealer: Sealer,
    opener: Opener,
    cipher: BytesMut,
}

/// Moves frames both ways until the link fails. Returns why it ended.
async fn carry(relay: &Relay, link: &Rc<Link>, stream: &mut TcpStream, sec: &mut Secure) -> String {
    // Sealed records on their way out; refilled (a record of up to
    // WRITE_CHUNK bytes of frames) once the last is written.
    let mut wbuf: Vec<u8> = Vec::new();
    // Opened frames not yet decoded (a frame may span records).
    let mut rbuf = BytesMut::new();
    // Reads land here and only the bytes read are appended to the cipher
    // buffer: growing a buffer to its capacity for each read zeroed tens
    // of KiB per wake-up.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut last_rx = Instant::now();
    let mut last_tx = Instant::now();
    let mut tick = Box::pin(Timer::new(HEARTBEAT));
    // Records that arrived with the handshake.
    if let Err(e) = open_and_drain(relay, link, sec, &mut rbuf) {
        return e;
    }
    loop {
        enum Ev {
            Read(usize),
            Tick,
            Closed,
            Err(String),
        }
        let ev = poll_fn(|cx| {
            if link.closed.get() {
                return Poll::Ready(Ev::Closed);
            }
            // Write everything queued, batched into large writes.
            loop {
                if wbuf.is_empty() && !link.queue.borrow().is_empty() {
                    let mut q = link.queue.borrow_mut();
                    let start = sec.sealer.begin(&mut wbuf);
                    while let Some(f) = q.front() {
                        if wbuf.len() > start + 4 && wbuf.len() + f.len() > WRITE_CHUNK {
                            break;
                        }
                        wbuf.extend_from_slice(f);
                        let n = f.len();
                        q.pop_front();
                        link.queued.set(link.queued.get() - n);
                        link.stats.queue_bytes.fetch_sub(n as i64, Relaxed);
                        link.stats.frames_out.fetch_add(1, Relaxed);
                    }
                    sec.sealer.finish(&mut wbuf, start);
                }
                if wbuf.is_empty() {
                    break;
                }
                match Pin::new(&mut *stream).poll_write(cx, &wbuf) {
                    Poll::Ready(Ok(n)) => {
                        link.stats.bytes_out.fetch_add(n as u64, Relaxed);
                        wbuf.drain(..n);
                        last_tx = Instant::now();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Ev::Err(e.to_string())),
                    Poll::Pending => break,
                }
            }
            if tick.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ev::Tick);
            }
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) => Poll::Ready(Ev::Err("peer closed the link".into())),
                Poll::Ready(Ok(n)) => {
                    sec.cipher.extend_from_slice(&scratch[..n]);
                    Poll::Ready(Ev::Read(n))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Ev::Err(e.to_string())),
                Poll::Pending => {
                    *link.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        match ev {
            Ev::Read(n) => {
                last_rx = Instant::now();
                link.stats.bytes_in.fetch_add(n as u64, Relaxed);
                if let Err(e) = open_and_drain(relay, link, sec, &mut rbuf) {
                    return e;
                }
                glommio::yield_if_needed().await;
            }
            Ev::Tick => {
                if last_rx.elapsed() > PEER_TIMEOUT {
                    return "no heartbeat from the peer".into();
                }
                if last_tx.elapsed() >= HEARTBEAT && link.queue.borrow().is_empty() && wbuf.is_empty() {
                    link.push(codec::heartbeat());
                }
                tick = Box::pin(Timer::new(HEARTBEAT));
            }
            Ev::Closed => return "closed by this node".into(),
            Ev::Err(e) => return e,
        }
    }
}

/// Opens the whole records read so far and hands on their frames.
fn open_and_drain(relay: &Relay, link: &Rc<Link>, sec: &mut Secure, rbuf: &mut BytesMut) -> Result<(), String> {
    if let Err(e) = sec.opener.open(&mut sec.cipher, rbuf) {
        relay.node.relay.auth_failures.fetch_add(1, Relaxed);
        if let Some(held) = AUTH_LOG.due() {
            warn!(peer = %link.stats.peer, error = %e, held_back = held, "relay record refused: closing the link");
        }
        return Err(e.to_string());
    }
    drain_frames(relay, link, rbuf)
}

fn drain_frames(relay: &Relay, link: &Rc<Link>, rbuf: &mut BytesMut) -> Result<(), String> {
    loop {
        let frame = match codec::decode_for(rbuf, link.peer, link.wire) {
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => frame,
            Err(e) => {
                warn!(peer = %link.stats.peer, error = %e, "bad relay frame: closing the link");
                return Err(format!("bad frame: {e}"));
            }
        };
        link.stats.frames_in.fetch_add(1, Relaxed);
        match frame {
            Frame::Heartbeat => {}
            Frame::Activate => {
                if link.decides || link.active.get() {
                    warn!(peer = %link.stats.peer, "unexpected ACTIVATE: closing the link");
                    return Err("ACTIVATE from a peer that does not decide, or twice".into());
                }
                relay.activate(link);
            }
            Frame::Msg(crate::msg::NodeMsg::Peers { addrs }) => relay.learn(&addrs),
            Frame::Msg(crate::msg::NodeMsg::Leaving) => relay.peer_leaving(link.peer),
            Frame::Msg(crate::msg::NodeMsg::Forwarded { origin, hops, mut req }) if link.active.get() => {
                // The request's connection is on `origin` (this node, when it
                // comes back to where it started).
                let node = if *origin == *relay.node.cfg.cluster.node_id {
                    0
                } else {
                    relay.node.cluster.lock().expect("cluster table").index_of(&origin)
                };
                req.set_conn_node(node);
                (relay.sink)(RelayEvent::Msg(crate::msg::NodeMsg::Forwarded { origin, hops, req }, link.peer));
            }
            Frame::Msg(msg) => {
                if !link.active.get() {
                    warn!(peer = %link.stats.peer, "traffic on a link not activated: closing it");
                    return Err("traffic before ACTIVATE".into());
                }
                (relay.sink)(RelayEvent::Msg(msg, link.peer));
            }
        }
    }
}
