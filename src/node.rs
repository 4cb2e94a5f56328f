//! State shared by every shard of a node (read-mostly; written with atomics).

use std::sync::atomic::{AtomicBool, AtomicUsize};

use crate::config::Config;
use crate::metrics::NodeStats;

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
    /// Epoch of every room sequence on this node: its start time in
    /// milliseconds, so a restarted node's sequences are told apart.
    pub epoch: u64,
    /// Short tag in server-assigned uids, unique per node start.
    pub uid_tag: String,
    /// Set by the signal handler; shards poll it every tick.
    pub shutdown: AtomicBool,
}

impl Node {
    /// Shared state for a node with these settings.
    pub fn new(cfg: Config, max_connections: usize) -> Self {
        let epoch = crate::shard::unix_ms();
        let mut tag = String::new();
        let mut x = epoch ^ (std::process::id() as u64) << 20;
        for _ in 0..6 {
            tag.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char);
            x /= 36;
        }
        Node {
            stats: NodeStats::new(cfg.shards),
            cfg,
            open: AtomicUsize::new(0),
            max_connections,
            epoch,
            uid_tag: tag,
            shutdown: AtomicBool::new(false),
        }
    }
}
