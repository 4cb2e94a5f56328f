//! State shared by every shard of a node (read-mostly; written with atomics).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::cluster::Table;
use crate::config::Config;
use crate::metrics::{NodeStats, RelayStats};

/// What the message log's recovery found at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery {
    /// Milliseconds it took.
    pub ms: u64,
    /// Records read.
    pub records: u64,
    /// Bytes cut off damaged tails.
    pub dropped_bytes: u64,
    /// The greatest epoch in the log.
    pub max_epoch: u64,
    /// Rooms that start a new epoch.
    pub new_epochs: u64,
}

/// Node-wide state, one `Arc` shared by all shards.
#[derive(Debug)]
pub struct Node {
    /// Settings.
    pub cfg: Config,
    /// Per-shard counters.
    pub stats: NodeStats,
    /// Open connections (upgraded), across shards: the cap is checked here.
    pub open: AtomicUsize,
    /// Connection cap.
    pub max_connections: usize,
    /// This node's start time in Unix milliseconds.
    pub epoch: u64,
    /// Short tag in server-assigned uids, unique per node start.
    pub uid_tag: String,
    /// Set by the signal handler; shards poll it every tick.
    pub shutdown: AtomicBool,
    /// Known nodes and which are live (written by the relay shard).
    pub cluster: Mutex<Table>,
    /// Relay counters.
    pub relay: RelayStats,
    /// Verifies login tokens, when logins are signed.
    pub verifier: Option<crate::auth::Verifier>,
    /// Connections per IP address.
    pub per_ip: crate::perip::PerIp,
    /// Token checks per IP address before login.
    pub login_attempts: crate::perip::Attempts,
    /// TLS on the client port (`--tls-cert`).
    pub tls: Option<crate::tls::Tls>,
    /// The other nodes' rooms with members, `(rid, users)`, as shard 0
    /// last gathered them (every couple of seconds): the room directory's
    /// cluster-wide part.
    pub remote_rooms: Mutex<Vec<(String, usize)>>,
    /// Draining: shard 0 has handed this node's rooms to the others (or
    /// there are none to hand): the shards may now tell their clients.
    pub handed_off: AtomicBool,
    /// Draining in a cluster: shards whose store has everything they
    /// sequenced (their rooms' requests wait meanwhile), before the peers
    /// are told to take the rooms over.
    pub stored_for_hand_off: std::sync::atomic::AtomicUsize,
    /// The newest view shard 0 sent its shards (each shard applies it in
    /// its own time: one whose view is older holds requests it would send
    /// by it, see `shard::on_request`).
    pub view_gen: AtomicU64,
    last_epoch: AtomicU64,
}

impl Node {
    /// Shared state for a node with these settings.
    pub fn new(cfg: Config, max_connections: usize) -> Self {
        let epoch = unix_ms();
        let mut tag = String::new();
        let mut x = epoch ^ (std::process::id() as u64) << 20;
        for _ in 0..6 {
            tag.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char);
            x /= 36;
        }
        Node {
            stats: NodeStats::new(cfg.shards),
            cluster: Mutex::new(Table::new(&cfg.cluster.node_id)),
            relay: RelayStats::default(),
            verifier: None,
            tls: None,
            remote_rooms: Mutex::new(Vec::new()),
            handed_off: AtomicBool::new(false),
            stored_for_hand_off: std::sync::atomic::AtomicUsize::new(0),
            view_gen: AtomicU64::new(0),
            per_ip: crate::perip::PerIp::new(cfg.limits.max_connections_per_ip, cfg.limits.new_connections_per_ip),
            login_attempts: crate::perip::Attempts::new(cfg.security.login_attempts_per_ip),
            last_epoch: AtomicU64::new(epoch),
            cfg,
            open: AtomicUsize::new(0),
            max_connections,
            epoch,
            uid_tag: tag,
            shutdown: AtomicBool::new(false),
        }
    }
}

impl Node {
    /// Notes what the log's recovery found: epochs handed out from now on are
    /// greater than every recovered one, whatever the clock says.
    pub fn record_recovery(&self, r: Recovery) {
        self.last_epoch.fetch_max(r.max_epoch, Relaxed);
        self.stats.recovery_ms.store(r.ms, Relaxed);
        self.stats.recovered_records.store(r.records, Relaxed);
        self.stats.recovery_dropped_bytes.store(r.dropped_bytes, Relaxed);
        self.stats.recovery_new_epochs.store(r.new_epochs, Relaxed);
    }

    /// Part of a cluster (a relay listener or peers): rooms may move
    /// between nodes, and shards keep where each room's broadcasts stand.
    pub fn clustered(&self) -> bool {
        self.cfg.cluster.relay_listen.is_some() || !self.cfg.cluster.peers.is_empty()
    }

    /// An epoch for a room sequence starting now: Unix milliseconds, and
    /// strictly greater than any this node handed out before, so a room that
    /// is re-homed here (or a restarted node's rooms) never reuses an epoch.
    pub fn next_epoch(&self) -> u64 {
        let now = unix_ms();
        let prev = self.last_epoch.fetch_max(now, Relaxed);
        if prev >= now { self.last_epoch.fetch_add(1, Relaxed) + 1 } else { now }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
