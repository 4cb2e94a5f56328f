//! Counters of the relay links, one set per peer, kept across reconnects.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use super::Exposition;

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
    pub ever_up: AtomicBool,
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
    /// Links closed because a record failed to open (altered, forged,
    /// repeated or reordered on the path).
    pub auth_failures: AtomicU64,
}

impl RelayStats {
    /// The counters of a peer, created when first seen.
    pub(crate) fn link(&self, peer: &str) -> Arc<LinkStats> {
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

    /// Writes the relay counters.
    pub(crate) fn render(&self, out: &mut Exposition) {
        let links = self.links.lock().expect("relay stats");
        let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&LinkStats) -> i64| {
            out.family(name, kind, help);
            for l in links.iter() {
                out.value(name, &format!("peer=\"{}\"", l.peer.replace(['"', '\\', '\n'], "_")), f(l));
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
        out.single("cchat_relay_refused_total", "counter", "Relay handshakes refused.", self.refused.load(Relaxed));
        out.single(
            "cchat_relay_auth_failures_total",
            "counter",
            "Relay links closed for a record that failed authentication (altered, forged, repeated or reordered).",
            self.auth_failures.load(Relaxed),
        );
        out.single(
            "cchat_relay_dropped_total",
            "counter",
            "Messages for a node with no live link.",
            self.dropped.load(Relaxed),
        );
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
