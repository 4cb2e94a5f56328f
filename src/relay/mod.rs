//! The relay: every node keeps one TCP link to every other node.
//!
//! It replaces CChat's JSON proxy (one process, one point of failure). Links
//! live on shard 0 of each node; other shards reach them through the shard
//! mesh ([`crate::shard::ShardMsg::ToNode`]). A link starts with the
//! handshake of [`handshake`] (node names, proof of the cluster secret) and
//! then carries the frames of [`codec`].
//!
//! - **One link per pair, chosen by one side.** Each node dials the `--peer`
//!   addresses it was given and accepts on `--relay-listen`, so a pair may
//!   end up with two links (both dialed at once, or a late retry). Of each
//!   pair, the node with the smaller name decides which link carries
//!   traffic: the first whose handshake completes while it has no working
//!   link to the peer. It sends ACTIVATE as that link's first frame and
//!   closes any other link to the peer unused. The other node sends nothing
//!   but heartbeats on a link until ACTIVATE arrives on it. So a link both
//!   nodes still use is never swapped for another (an earlier rule, "keep
//!   the smaller name's dial", lost what was queued on the link it
//!   replaced). If ACTIVATE arrives on a new link while an old
//!   one still looks alive, the deciding node has given up on the old one
//!   (and forgotten this node's members), so the old link is handled as the
//!   peer going down and coming back. A node also stops retrying dials to
//!   addresses it has not reached yet once it has a live link per peer.
//! - **Liveness.** A heartbeat goes out every 250 ms on an idle link; a link
//!   that hears nothing for 2 s is dead. A closed or dead link marks its node
//!   down: the survivors forget that node's members (announcing `userLeave`)
//!   and re-home its rooms, whose sequence restarts in a new epoch. Dialers
//!   retry with backoff (100 ms doubling to 2 s; every 20 ms during the
//!   first second), so a restarted node rejoins by itself. At start a node
//!   waits up to a second for its `--peer`s to link before it reports ready.
//! - **Back-pressure policy.** Each link's outbound queue is capped at
//!   `--relay-queue-bytes` (64 MiB by default). Past it the link is closed and counted
//!   (`cchat_relay_overflows_total`): the peer is treated as failed and
//!   reconnects, rather than this node's memory growing without bound.
//! - **Batching.** Frames queued while a write is in flight go out together
//!   in the next write.
//! - **Faults.** Garbage, truncated or oversized frames close that link and
//!   nothing else; a stranger that fails the handshake is logged and refused.

pub mod codec;
pub mod handshake;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Future};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use tracing::{info, warn};

use crate::node::Node;
use crate::shard::{Shard, ShardMsg};
use codec::Frame;
use handshake::Hello;

/// Heartbeat period on an idle link.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// Silence after which a peer is declared dead.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after start a node waits for its peers before it says it is
/// listening, and retries failed dials quickly.
pub const FIRST_ROUND: Duration = Duration::from_secs(1);
const FIRST_ROUND_RETRY: Duration = Duration::from_millis(20);
const WRITE_CHUNK: usize = 256 * 1024;

/// Counters of one peer link, kept across reconnects (shown in /metrics).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Peer node name.
    pub peer: String,
    /// Link established now.
    pub up: AtomicBool,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Bytes queued for the peer.
    pub queue_bytes: AtomicI64,
    /// Links activated after the first.
    pub reconnects: AtomicU64,
    /// A link to the peer has been activated before.
    ever_up: AtomicBool,
    /// Links closed because the queue passed its cap.
    pub overflows: AtomicU64,
}

/// Peers whose counters are kept once they have no link: past it, the
/// longest-known such peer's series is dropped for a new one.
const MAX_PEER_SERIES: usize = 64;

/// Relay counters of a node.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Per peer.
    pub links: std::sync::Mutex<Vec<Arc<LinkStats>>>,
    /// Handshakes refused (wrong secret, not a relay, bad version).
    pub refused: AtomicU64,
    /// Messages for a node with no live link.
    pub dropped: AtomicU64,
}

impl RelayStats {
    fn link(&self, peer: &str) -> Arc<LinkStats> {
        let mut links = self.links.lock().expect("relay stats");
        if let Some(l) = links.iter().find(|l| l.peer == peer) {
            return l.clone();
        }
        if links.len() >= MAX_PEER_SERIES {
            // Peers come and go under new names (a node id per container,
            // say): forget the longest-known peer that no link uses, so the
            // metric series stay bounded.
            if let Some(i) = links.iter().position(|l| Arc::strong_count(l) == 1 && !l.up.load(Relaxed)) {
                links.remove(i);
            }
        }
        let l = Arc::new(LinkStats { peer: peer.to_owned(), ..Default::default() });
        links.push(l.clone());
        l
    }

    /// Appends the relay metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let links = self.links.lock().expect("relay stats");
        let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&LinkStats) -> i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in links.iter() {
                let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", l.peer.replace(['"', '\\', '\n'], "_"), f(l));
            }
        };
        family("cchat_relay_link_up", "gauge", "1 while the link to the peer is established.", &|l| {
            l.up.load(Relaxed) as i64
        });
        family("cchat_relay_frames_in_total", "counter", "Frames received from the peer.", &|l| {
            l.frames_in.load(Relaxed) as i64
        });
        family("cchat_relay_frames_out_total", "counter", "Frames sent to the peer.", &|l| {
            l.frames_out.load(Relaxed) as i64
        });
        family("cchat_relay_bytes_in_total", "counter", "Bytes received from the peer.", &|l| {
            l.bytes_in.load(Relaxed) as i64
        });
        family("cchat_relay_bytes_out_total", "counter", "Bytes sent to the peer.", &|l| {
            l.bytes_out.load(Relaxed) as i64
        });
        family("cchat_relay_queue_bytes", "gauge", "Bytes queued for the peer.", &|l| {
            l.queue_bytes.load(Relaxed).max(0)
        });
        family("cchat_relay_reconnects_total", "counter", "Links to the peer activated after the first.", &|l| {
            l.reconnects.load(Relaxed) as i64
        });
        family("cchat_relay_overflows_total", "counter", "Links closed because their queue passed the cap.", &|l| {
            l.overflows.load(Relaxed) as i64
        });
        let _ = writeln!(
            out,
            "# HELP cchat_relay_refused_total Relay handshakes refused.\n# TYPE cchat_relay_refused_total counter\ncchat_relay_refused_total {}",
            self.refused.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cchat_relay_dropped_total Messages for a node with no live link.\n# TYPE cchat_relay_dropped_total counter\ncchat_relay_dropped_total {}",
            self.dropped.load(Relaxed)
        );
    }
}

/// One established link.
#[derive(Debug)]
struct Link {
    peer: u16,
    /// This node has the smaller name: it chooses the pair's link.
    decides: bool,
    /// This link carries the pair's traffic.
    active: Cell<bool>,
    queue: RefCell<VecDeque<Bytes>>,
    queued: Cell<usize>,
    cap: usize,
    waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    stats: Arc<LinkStats>,
}

impl Link {
    fn push(&self, frame: Bytes) {
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

    fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The relay of one node (lives on shard 0).
#[derive(Debug)]
pub struct Relay {
    node: Arc<Node>,
    links: RefCell<HashMap<u16, Rc<Link>>>,
    /// Node index learned at each dialed address.
    dialed: RefCell<HashMap<SocketAddr, u16>>,
    /// When the relay started (dials retry fast during [`FIRST_ROUND`]).
    started: Instant,
}

impl Relay {
    /// A relay with no links yet.
    pub fn new(node: Arc<Node>) -> Self {
        Relay {
            node,
            links: RefCell::new(HashMap::new()),
            dialed: RefCell::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Queues a message for a node; counted and dropped when it has no link.
    pub fn send(&self, node: u16, msg: &ShardMsg) {
        let link = self.links.borrow().get(&node).cloned();
        match (link, codec::encode(msg)) {
            (Some(link), Some(frame)) => link.push(frame),
            (None, _) => {
                self.node.relay.dropped.fetch_add(1, Relaxed);
            }
            (_, None) => {}
        }
    }

    fn up(&self, idx: u16) -> bool {
        self.links.borrow().get(&idx).is_some_and(|l| !l.closed.get())
    }

    /// Waits, at most [`FIRST_ROUND`] from the relay's start, until every
    /// `--peer` is linked (its link carries traffic). Nodes of a cluster
    /// started together, or one after another, are then meshed before they
    /// say they are listening, so whoever starts a cluster can use it once
    /// its nodes are up. A peer that stays unreachable costs this wait once.
    pub async fn first_round(&self) {
        let peers = &self.node.cfg.peers;
        while self.started.elapsed() < FIRST_ROUND {
            let linked = |addr: &SocketAddr| self.dialed.borrow().get(addr).is_some_and(|&i| self.up(i));
            if self.live_links() >= peers.len() || peers.iter().all(linked) {
                return;
            }
            Timer::new(Duration::from_millis(5)).await;
        }
    }

    /// Links currently up.
    fn live_links(&self) -> usize {
        self.links.borrow().values().filter(|l| !l.closed.get()).count()
    }

    /// Makes `link` the one that carries traffic to its peer and marks the
    /// peer up. A link still registered for the peer (open or already
    /// closed by this node but not yet unregistered) is a down that nobody
    /// announced: only the deciding peer activates a second link, and only
    /// after giving up on the first and forgetting this node's members. So
    /// this node forgets the peer's members and re-joins its own, without the
    /// peer ever leaving the live view (which would move rooms away and
    /// back).
    fn activate(&self, shard: &Shard, link: &Rc<Link>) {
        link.active.set(true);
        let old = self.links.borrow_mut().insert(link.peer, link.clone());
        let node = &shard.node;
        if link.stats.ever_up.swap(true, Relaxed) {
            link.stats.reconnects.fetch_add(1, Relaxed);
        }
        link.stats.up.store(true, Relaxed);
        if let Some(old) = old.filter(|o| !Rc::ptr_eq(o, link)) {
            warn!(peer = %link.stats.peer, "relay link replaced: the peer gave up on the old one");
            old.close();
            announce(shard, Some(link.peer));
            return;
        }
        info!(peer = %link.stats.peer, "relay link up");
        node.cluster.lock().expect("cluster table").up[link.peer as usize] = true;
        announce(shard, None);
    }

    /// Removes `link` if it is still the current one; true if the node went down.
    fn unregister(&self, link: &Rc<Link>) -> bool {
        let mut links = self.links.borrow_mut();
        match links.get(&link.peer) {
            Some(cur) if Rc::ptr_eq(cur, link) => {
                links.remove(&link.peer);
                true
            }
            _ => false,
        }
    }
}

/// Starts the relay tasks on shard 0: the listener and one dialer per peer.
pub(crate) fn start(shard: &Rc<Shard>) -> anyhow::Result<Vec<glommio::task::JoinHandle<()>>> {
    let node = shard.node.clone();
    let relay = Rc::new(Relay::new(node.clone()));
    *shard.relay.borrow_mut() = Some(relay.clone());
    let mut tasks = Vec::new();
    if let Some(addr) = node.cfg.relay_listen {
        let listener = TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("relay listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| anyhow::anyhow!("relay address: {e}"))?;
        info!(addr = %local, node = %node.cfg.node_id, "relay listening");
        let (shard, relay) = (shard.clone(), relay.clone());
        tasks.push(
            glommio::spawn_local(async move {
                loop {
                    match listener.accept().await {
                        Ok(stream) => {
                            glommio::spawn_local(run_link(shard.clone(), relay.clone(), stream, None)).detach();
                        }
                        Err(e) => {
                            warn!(error = %e, "relay accept failed");
                            Timer::new(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
            .detach(),
        );
    }
    for &peer in &node.cfg.peers {
        let (shard, relay) = (shard.clone(), relay.clone());
        tasks.push(glommio::spawn_local(dial_loop(shard, relay, peer)).detach());
    }
    Ok(tasks)
}

async fn dial_loop(shard: Rc<Shard>, relay: Rc<Relay>, addr: SocketAddr) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if shard.node.shutdown.load(Relaxed) {
            return;
        }
        let known = relay.dialed.borrow().get(&addr).copied();
        // Which node listens at `addr` is learnt only from a dial of ours
        // that got through. Until then, once this node has as many live
        // links as it has peers, every peer has reached it by its own dial:
        // a late dial of ours would only make a second link that the pair's
        // deciding node closes unused, so it is not made.
        let all_linked = known.is_none() && relay.live_links() >= shard.node.cfg.peers.len();
        if known.is_some_and(|idx| relay.up(idx)) || all_linked {
            Timer::new(Duration::from_millis(200)).await;
            continue;
        }
        if let Ok(stream) = TcpStream::connect_timeout(addr, Duration::from_secs(2)).await
            && run_link(shard.clone(), relay.clone(), stream, Some(addr)).await
        {
            backoff = Duration::from_millis(100);
        }
        if relay.started.elapsed() < FIRST_ROUND {
            // Peers started at about the same time are still binding their
            // relay port: try again soon, so the mesh forms in milliseconds.
            Timer::new(FIRST_ROUND_RETRY).await;
            continue;
        }
        Timer::new(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Tells every shard of this node that the live set changed.
fn announce(shard: &Shard, down: Option<u16>) {
    for s in 1..shard.nshards {
        shard.send(s, ShardMsg::Cluster { down });
    }
    shard.handle(ShardMsg::Cluster { down });
}

/// Runs one link to the end. Returns true if the handshake succeeded.
async fn run_link(shard: Rc<Shard>, relay: Rc<Relay>, mut stream: TcpStream, dialed: Option<SocketAddr>) -> bool {
    let _ = stream.set_nodelay(true);
    let node = shard.node.clone();
    let me = node.cfg.node_id.clone();
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (peer_name, mut rbuf) = match shake(&mut stream, &node).await {
        Ok(x) => x,
        Err(e) => {
            node.relay.refused.fetch_add(1, Relaxed);
            warn!(peer = %peer_addr, error = %e, "relay handshake refused");
            return false;
        }
    };
    let idx = node.cluster.lock().expect("cluster table").index_of(&peer_name);
    if let Some(addr) = dialed {
        relay.dialed.borrow_mut().insert(addr, idx);
    }
    let link = Rc::new(Link {
        peer: idx,
        decides: me < peer_name,
        active: Cell::new(false),
        queue: RefCell::new(VecDeque::new()),
        queued: Cell::new(0),
        cap: node.cfg.relay_queue_bytes,
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
        relay.activate(&shard, &link);
    }
    let result = pump(&shard, &relay, &link, &mut stream, &mut rbuf).await;
    link.closed.set(true);
    link.stats.queue_bytes.fetch_sub(link.queued.get() as i64, Relaxed);
    // Only the active link's end is the peer going down.
    if relay.unregister(&link) {
        link.stats.up.store(false, Relaxed);
        warn!(peer = %peer_name, reason = %result, "relay link down");
        node.cluster.lock().expect("cluster table").up[idx as usize] = false;
        announce(&shard, Some(idx));
    }
    true
}

/// Exchanges hellos and proofs. Returns the peer's name and any bytes read
/// past the handshake.
async fn shake(stream: &mut TcpStream, node: &Node) -> Result<(String, BytesMut), String> {
    let secret = node.cfg.cluster_secret.clone().unwrap_or_default();
    let own = Hello::new(&node.cfg.node_id);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    stream.write_all(&own.encode()).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(512);
    let (peer, used) = loop {
        if let Some(h) = Hello::decode(&buf).map_err(|e| e.to_string())? {
            break h;
        }
        read_more(stream, &mut buf).await?;
    };
    let _ = buf.split_to(used);
    if peer.node_id == own.node_id {
        return Err(handshake::HandshakeError::SelfLink.to_string());
    }
    stream.write_all(&handshake::proof(&secret, &own, &peer)).await.map_err(|e| e.to_string())?;
    while buf.len() < handshake::PROOF_LEN {
        read_more(stream, &mut buf).await?;
    }
    let proof = buf.split_to(handshake::PROOF_LEN);
    handshake::verify(&secret, &own, &peer, &proof).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(None);
    Ok((peer.node_id, buf))
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), String> {
    let len = buf.len();
    if len > 4096 {
        return Err("handshake too long".into());
    }
    buf.resize(len + 512, 0);
    match stream.read(&mut buf[len..]).await {
        Ok(0) => Err("closed during handshake".into()),
        Ok(n) => {
            buf.truncate(len + n);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Moves frames both ways until the link fails. Returns why it ended.
async fn pump(shard: &Shard, relay: &Relay, link: &Rc<Link>, stream: &mut TcpStream, rbuf: &mut BytesMut) -> String {
    let mut wbuf: Vec<u8> = Vec::new();
    // Reads land here and only the bytes read are appended to `rbuf`: growing
    // `rbuf` to its capacity for each read zeroed tens of KiB per wake-up.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut last_rx = Instant::now();
    let mut last_tx = Instant::now();
    let mut tick = Box::pin(Timer::new(HEARTBEAT));
    // Bytes that arrived with the handshake.
    if let Err(e) = drain_frames(shard, relay, link, rbuf) {
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
                if wbuf.is_empty() {
                    let mut q = link.queue.borrow_mut();
                    while let Some(f) = q.front() {
                        if !wbuf.is_empty() && wbuf.len() + f.len() > WRITE_CHUNK {
                            break;
                        }
                        wbuf.extend_from_slice(f);
                        let n = f.len();
                        q.pop_front();
                        link.queued.set(link.queued.get() - n);
                        link.stats.queue_bytes.fetch_sub(n as i64, Relaxed);
                        link.stats.frames_out.fetch_add(1, Relaxed);
                    }
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
                    rbuf.extend_from_slice(&scratch[..n]);
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
                if let Err(e) = drain_frames(shard, relay, link, rbuf) {
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

fn drain_frames(shard: &Shard, relay: &Relay, link: &Rc<Link>, rbuf: &mut BytesMut) -> Result<(), String> {
    loop {
        let frame = match codec::decode(rbuf, link.peer) {
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
                relay.activate(shard, link);
            }
            Frame::Msg(msg) => {
                if !link.active.get() {
                    warn!(peer = %link.stats.peer, "traffic on a link not activated: closing it");
                    return Err("traffic before ACTIVATE".into());
                }
                shard.dispatch_remote(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_peers_without_a_link_are_bounded() {
        let stats = RelayStats::default();
        let live: Vec<Arc<LinkStats>> = (0..3).map(|i| stats.link(&format!("live{i}"))).collect();
        for l in &live {
            l.up.store(true, Relaxed);
        }
        for i in 0..1000 {
            drop(stats.link(&format!("claimed{i}")));
        }
        let links = stats.links.lock().unwrap();
        assert!(links.len() <= MAX_PEER_SERIES, "{} series", links.len());
        for i in 0..3 {
            assert!(links.iter().any(|l| l.peer == format!("live{i}")), "a linked peer keeps its series");
        }
        assert!(links.iter().any(|l| l.peer == "claimed999"), "the newest peer has its series");
    }
}
