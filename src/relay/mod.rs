//! The relay: every node keeps one TCP link to every other node.
//!
//! It replaces CChat's JSON proxy (one process, one point of failure). Links
//! live on shard 0 of each node; other shards reach them through the shard
//! mesh ([`crate::msg::ShardMsg::ToNode`]). The relay knows nothing of
//! shards: what arrives from peers, and changes of the live set, go to the
//! [`Sink`] it was started with. A link starts with the
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
//!   nodes still use is never swapped for another, which would lose what
//!   is queued on it. If ACTIVATE arrives on a new link while an old
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
//! - **Trust.** A link starts with a mutual proof of the cluster secret
//!   (the acceptor checks the dialer's before it proves itself) and then
//!   carries sealed, numbered records ([`secure`]): a frame altered,
//!   dropped, repeated or reordered on the path closes the link (counted in
//!   `cchat_relay_auth_failures_total`).
//! - **Faults.** Garbage, truncated or oversized frames close that link and
//!   nothing else; a stranger that fails the handshake is counted and
//!   refused (one log line a second, however many).

pub mod codec;
mod dial;
pub mod handshake;
mod link;
pub mod secure;
mod shake;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::timer::Timer;
use tracing::{info, warn};

use crate::msg::NodeMsg;
use crate::node::Node;
use link::Link;

static SHAKING_LOG: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// Heartbeat period on an idle link.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// Silence after which a peer is declared dead.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after start a node waits for its peers before it says it is
/// listening, and retries failed dials quickly.
pub const FIRST_ROUND: Duration = Duration::from_secs(1);

/// What the relay hands to its node.
#[derive(Debug)]
pub enum RelayEvent {
    /// A message from a peer (its connections carry the peer's node index),
    /// and that peer's index.
    Msg(NodeMsg, u16),
    /// The live set changed (the table in [`Node::cluster`] says how); `down`
    /// is a node whose members are gone.
    LiveSetChanged {
        /// A node that went down, or whose link was replaced.
        down: Option<u16>,
    },
}

/// Where the relay hands what it receives (shard 0 routes it on).
pub type Sink = Rc<dyn Fn(RelayEvent)>;

/// The relay of one node (lives on shard 0).
pub struct Relay {
    node: Arc<Node>,
    sink: Sink,
    links: RefCell<HashMap<u16, Rc<Link>>>,
    /// Node index learned at each dialed address.
    dialed: RefCell<HashMap<SocketAddr, u16>>,
    /// When the relay started (dials retry fast during [`FIRST_ROUND`]).
    started: Instant,
    /// Links in their handshake (at most [`MAX_SHAKING`] accepted at once).
    shaking: std::cell::Cell<usize>,
    /// Every address with a dial loop: `--peer`s (names resolved again
    /// every [`RESOLVE_EVERY`]) and what other nodes told of theirs.
    targets: RefCell<std::collections::HashSet<SocketAddr>>,
    /// The addresses `--peer` resolved to at start (the first round waits for them).
    initial: RefCell<Vec<SocketAddr>>,
    /// Addresses learnt (resolved or told), to be dialed by the membership task.
    learnt: RefCell<Vec<SocketAddr>>,
    /// This node's own relay addresses (never dialed).
    own: Vec<SocketAddr>,
}

/// How often `--peer` names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// How often a node tells its peers the peers it knows.
pub const GOSSIP_EVERY: Duration = Duration::from_secs(5);

/// Handshakes under way past which the relay listener closes new sockets
/// at once: a stranger who opens sockets in a loop holds at most this many
/// descriptors (each for at most the handshake's 5 s), and peers retry.
pub const MAX_SHAKING: usize = 64;

impl Relay {
    /// A relay with no links yet; what it receives goes to `sink`.
    pub fn new(node: Arc<Node>, sink: Sink) -> Self {
        let own = node.cfg.cluster.relay_advertise.into_iter().chain(node.cfg.cluster.relay_listen).collect();
        Relay {
            targets: RefCell::new(std::collections::HashSet::new()),
            initial: RefCell::new(Vec::new()),
            learnt: RefCell::new(Vec::new()),
            own,
            node,
            sink,
            links: RefCell::new(HashMap::new()),
            dialed: RefCell::new(HashMap::new()),
            started: Instant::now(),
            shaking: std::cell::Cell::new(0),
        }
    }

    /// Queues a message for a node; counted and dropped when it has no link.
    pub fn send(&self, node: u16, msg: &NodeMsg) {
        let link = self.links.borrow().get(&node).cloned();
        match link {
            Some(link) => match codec::encode_for(msg, link.wire) {
                Some(frame) => link.push(frame),
                // Not expressible at the peer's older version: left out.
                None => {
                    self.node.relay.dropped.fetch_add(1, Relaxed);
                }
            },
            None => {
                self.node.relay.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Tells the node that the live set changed.
    fn announce(&self, down: Option<u16>) {
        (self.sink)(RelayEvent::LiveSetChanged { down });
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
        while self.started.elapsed() < FIRST_ROUND {
            let met = {
                let peers = self.initial.borrow();
                let linked = |addr: &SocketAddr| self.dialed.borrow().get(addr).is_some_and(|&i| self.up(i));
                self.live_links() >= peers.len() || peers.iter().all(linked)
            };
            if met {
                return;
            }
            Timer::new(Duration::from_millis(5)).await;
        }
    }

    /// Dials `addr` from now on (once; never this node's own address).
    fn dial(self: &Rc<Self>, addr: SocketAddr) {
        if self.own.contains(&addr) || !self.targets.borrow_mut().insert(addr) {
            return;
        }
        glommio::spawn_local(dial::dial_loop(self.clone(), addr)).detach();
    }

    /// This node drains: its peers are told to take its rooms over, and it
    /// takes itself out of its own view (its shards hand their rooms over,
    /// and their members join the new owners), before its clients are told.
    pub fn leave(&self) {
        for link in self.links.borrow().values().filter(|l| l.active.get() && !l.closed.get()) {
            if let Some(frame) = codec::encode_for(&NodeMsg::Leaving, link.wire) {
                link.push(frame);
            }
        }
        self.node.cluster.lock().expect("cluster table").up[0] = false;
        info!("draining: rooms handed to the other nodes");
        self.announce(None);
    }

    /// A peer drains: it owns no room from now on (its link stays up
    /// until it exits, carrying its members' traffic).
    pub(super) fn peer_leaving(&self, idx: u16) {
        info!(peer = idx, "a peer drains: taking its rooms over");
        self.node.cluster.lock().expect("cluster table").up[idx as usize] = false;
        self.announce(Some(idx));
    }

    /// Addresses a peer told of (see [`NodeMsg::Peers`]).
    pub(super) fn learn(&self, addrs: &[String]) {
        let mut learnt = self.learnt.borrow_mut();
        learnt.extend(addrs.iter().filter_map(|a| a.parse::<SocketAddr>().ok()).take(256));
    }

    /// Tells every linked peer the relay addresses this node knows: its
    /// own and those of the peers it reached by dialing.
    fn gossip(&self) {
        let mut addrs: Vec<String> = self.own.iter().take(1).map(ToString::to_string).collect();
        for (addr, idx) in self.dialed.borrow().iter() {
            if self.up(*idx) {
                addrs.push(addr.to_string());
            }
        }
        let msg = NodeMsg::Peers { addrs };
        for link in self.links.borrow().values().filter(|l| l.active.get() && !l.closed.get()) {
            if let Some(frame) = codec::encode_for(&msg, link.wire) {
                link.push(frame);
            }
        }
    }

    /// Addresses to dial, counted for the "every peer reached" test of the
    /// dial loops.
    fn target_count(&self) -> usize {
        self.targets.borrow().len()
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
    fn activate(&self, link: &Rc<Link>) {
        link.active.set(true);
        let old = self.links.borrow_mut().insert(link.peer, link.clone());
        let node = &self.node;
        if link.stats.ever_up.swap(true, Relaxed) {
            link.stats.reconnects.fetch_add(1, Relaxed);
        }
        link.stats.up.store(true, Relaxed);
        if let Some(old) = old.filter(|o| !Rc::ptr_eq(o, link)) {
            warn!(peer = %link.stats.peer, "relay link replaced: the peer gave up on the old one");
            old.close();
            self.announce(Some(link.peer));
            return;
        }
        info!(peer = %link.stats.peer, "relay link up");
        node.cluster.lock().expect("cluster table").up[link.peer as usize] = true;
        self.announce(None);
        // The newcomer (or this node) learns of the others at once.
        self.gossip();
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

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("links", &self.links).finish_non_exhaustive()
    }
}

/// Starts the relay on this thread (shard 0): the listener and one dialer
/// per peer. What arrives goes to `sink`.
pub fn start(node: Arc<Node>, sink: Sink) -> anyhow::Result<(Rc<Relay>, Vec<glommio::task::JoinHandle<()>>)> {
    let relay = Rc::new(Relay::new(node.clone(), sink));
    let mut tasks = Vec::new();
    if let Some(addr) = node.cfg.cluster.relay_listen {
        let listener = TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("relay listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| anyhow::anyhow!("relay address: {e}"))?;
        info!(addr = %local, node = %node.cfg.cluster.node_id, "relay listening");
        let relay = relay.clone();
        tasks.push(
            glommio::spawn_local(async move {
                loop {
                    match listener.accept().await {
                        Ok(stream) if relay.shaking.get() >= MAX_SHAKING => {
                            relay.node.relay.refused.fetch_add(1, Relaxed);
                            if let Some(held) = SHAKING_LOG.due() {
                                warn!(held_back = held, "relay handshakes over their cap: closing a new socket");
                            }
                            drop(stream);
                        }
                        Ok(stream) => {
                            glommio::spawn_local(link::run_link(relay.clone(), stream, None)).detach();
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
    // `--peer`s resolved now (a name that does not resolve yet is tried
    // again every RESOLVE_EVERY), then the membership task: it dials what
    // was learnt meanwhile, resolves the names again, and gossips.
    let peers = node.cfg.cluster.peers.clone();
    let first = resolve(&peers);
    *relay.initial.borrow_mut() = first.clone();
    for addr in first {
        relay.dial(addr);
    }
    let (tx, rx) = crossbeam_channel::bounded::<Vec<SocketAddr>>(4);
    let names = peers.iter().any(|p| {
        p.rsplit_once(':').is_some_and(|(h, _)| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err())
    });
    if names {
        let node = node.clone();
        std::thread::Builder::new()
            .name("peer-dns".into())
            .spawn(move || {
                while !node.shutdown.load(Relaxed) {
                    std::thread::sleep(RESOLVE_EVERY);
                    if tx.send(resolve(&peers)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("peer resolver thread: {e}"))?;
    }
    {
        let relay = relay.clone();
        tasks.push(
            glommio::spawn_local(async move {
                let mut since_gossip = Instant::now();
                loop {
                    Timer::new(Duration::from_millis(250)).await;
                    while let Ok(addrs) = rx.try_recv() {
                        relay.learnt.borrow_mut().extend(addrs);
                    }
                    let learnt = std::mem::take(&mut *relay.learnt.borrow_mut());
                    for addr in learnt {
                        relay.dial(addr);
                    }
                    if since_gossip.elapsed() >= GOSSIP_EVERY {
                        since_gossip = Instant::now();
                        relay.gossip();
                    }
                }
            })
            .detach(),
        );
    }
    Ok((relay, tasks))
}

/// The addresses `peers` (`host:port`) stand for now; a name that does not
/// resolve is left out (and logged).
fn resolve(peers: &[String]) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for p in peers {
        match p.to_socket_addrs() {
            Ok(addrs) => out.extend(addrs),
            Err(e) => warn!(peer = %p, error = %e, "cannot resolve a --peer (tried again later)"),
        }
    }
    out.sort();
    out.dedup();
    out
}
