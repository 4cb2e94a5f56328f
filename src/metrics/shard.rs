//! Per-shard counters, summed only when `/metrics` is read.
//!
//! Each shard writes only its own [`ShardStats`] (relaxed atomics: no shared
//! cache line is written by two cores on the hot path); the reader adds them
//! up. The fan-out latency histogram is recorded shard-locally and published
//! into a mutex once per second, so the lock is never on the message path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

use super::Exposition;

/// Counters of one shard.
#[derive(Debug)]
pub struct ShardStats {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// Rooms this shard owns that have members.
    pub rooms: AtomicI64,
    /// Client commands of type `message` accepted.
    pub messages_in: AtomicU64,
    /// Message frames queued to client sockets.
    pub deliveries: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_out: AtomicU64,
    /// Write system calls to client sockets (deliveries / writes = batching).
    pub writes: AtomicU64,
    /// Error replies by code: 101, 102, 50, 103.
    pub errors: [AtomicU64; 4],
    /// Connections closed because their outbound queue passed its cap.
    pub slow_consumer_closes: AtomicU64,
    /// Frames compressed (permessage-deflate): one per broadcast and shard
    /// with a member that negotiated it, not one per recipient.
    pub deflated_frames: AtomicU64,
    /// Bytes of those frames before compression.
    pub deflated_plain_bytes: AtomicU64,
    /// Bytes of those frames after compression.
    pub deflated_bytes: AtomicU64,
    /// Compressed messages received from clients and inflated.
    pub inflated_messages: AtomicU64,
    /// Connections resting without a task (see `--dormant-after`).
    pub dormant: AtomicI64,
    /// Dormant connections woken (input, a full socket, a close).
    pub dormant_wakes: AtomicU64,
    /// Connections closed for a WebSocket protocol violation.
    pub protocol_closes: AtomicU64,
    /// Connections closed for idleness or a missed handshake deadline.
    pub timeout_closes: AtomicU64,
    /// Upgrades refused with 503 because the node was full.
    pub rejected_connections: AtomicU64,
    /// Upgrades refused by the per-IP limits: too many open (503), too fast (429).
    pub per_ip_refused: [AtomicU64; 2],
    /// Logins refused because their address spent its token-check budget.
    pub login_attempts_refused: AtomicU64,
    /// Failed accepts (out of file descriptors, mostly).
    pub accept_errors: AtomicU64,
    /// Connections that had not logged in, closed to free a descriptor
    /// while accept was failing for want of one.
    pub shed_connections: AtomicU64,
    /// Items this shard sent (or put in its outbox) for each shard. Written
    /// only by this shard: a shard's queue depth is what the others sent it
    /// minus what it took, summed when /metrics is read.
    pub sent_to: Box<[AtomicU64]>,
    /// Items this shard took from its inbound queues.
    pub received: AtomicU64,
    /// Live nodes (this one included) in the cluster view this shard routes
    /// rooms by; shards apply a new view when their queue reaches it.
    pub view_nodes: AtomicI64,
    /// 1 while the shard is pinned to its core, 0 while it floats (released
    /// from a busy core, or started with --no-pin).
    pub pinned: AtomicI64,
    /// Times the shard was released from its core because it waited for it.
    pub core_releases: AtomicU64,
    /// Room messages written to the log.
    pub log_appends: AtomicU64,
    /// Bytes written to the log.
    pub log_bytes: AtomicU64,
    /// fdatasyncs of the log, and the microseconds they took in all.
    pub log_fsyncs: AtomicU64,
    /// See `log_fsyncs`.
    pub log_fsync_us: AtomicU64,
    /// Failed log writes or syncs.
    pub log_errors: AtomicU64,
    /// Messages refused because the log could not write (or fsync) them.
    pub log_refused: AtomicU64,
    /// 1 while the last write of this shard's log failed for a full disk.
    pub log_full: AtomicI64,
    /// Bytes of log on disk.
    pub log_size: AtomicI64,
    /// Rooms evicted from memory (only their index stays).
    pub evicted_rooms: AtomicI64,
    /// Message ids (`mid`) rooms remember against repeats.
    pub dedupe_entries: AtomicI64,
    /// History answers read from disk, and the records they read.
    pub history_disk_reads: AtomicU64,
    /// See `history_disk_reads`.
    pub history_disk_records: AtomicU64,
    /// History reads that failed or found a record missing.
    pub history_disk_errors: AtomicU64,
    /// Fan-out latency (owner sequenced → recipient shard wrote), microseconds.
    pub latency: Mutex<Histogram<u64>>,
}

impl ShardStats {
    /// Counters of one shard of `nshards`.
    pub fn new(nshards: usize) -> Self {
        ShardStats {
            connections: AtomicI64::new(0),
            rooms: AtomicI64::new(0),
            messages_in: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: Default::default(),
            slow_consumer_closes: AtomicU64::new(0),
            deflated_frames: AtomicU64::new(0),
            deflated_plain_bytes: AtomicU64::new(0),
            deflated_bytes: AtomicU64::new(0),
            inflated_messages: AtomicU64::new(0),
            dormant: AtomicI64::new(0),
            dormant_wakes: AtomicU64::new(0),
            protocol_closes: AtomicU64::new(0),
            timeout_closes: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            per_ip_refused: Default::default(),
            login_attempts_refused: AtomicU64::new(0),
            shed_connections: AtomicU64::new(0),
            sent_to: (0..nshards).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            view_nodes: AtomicI64::new(1),
            pinned: AtomicI64::new(0),
            core_releases: AtomicU64::new(0),
            log_appends: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            log_fsyncs: AtomicU64::new(0),
            log_fsync_us: AtomicU64::new(0),
            log_errors: AtomicU64::new(0),
            log_refused: AtomicU64::new(0),
            log_full: AtomicI64::new(0),
            log_size: AtomicI64::new(0),
            evicted_rooms: AtomicI64::new(0),
            dedupe_entries: AtomicI64::new(0),
            history_disk_reads: AtomicU64::new(0),
            history_disk_records: AtomicU64::new(0),
            history_disk_errors: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")),
        }
    }

    /// Counts an error reply.
    pub fn error(&self, code: u16) {
        let i = match code {
            101 => 0,
            102 => 1,
            103 => 3,
            _ => 2,
        };
        self.errors[i].fetch_add(1, Relaxed);
    }
}

/// The node's view of every shard's counters.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// One entry per shard.
    pub shards: Vec<ShardStats>,
    /// Milliseconds the log's recovery took at start.
    pub recovery_ms: AtomicU64,
    /// Records read back at start.
    pub recovered_records: AtomicU64,
    /// Bytes cut off damaged log tails at start.
    pub recovery_dropped_bytes: AtomicU64,
    /// Rooms that started a new epoch at start.
    pub recovery_new_epochs: AtomicU64,
    /// The shared store's threads (`--store`).
    pub store: std::sync::Arc<super::StoreStats>,
    /// 1 while the node drains (SIGTERM, or POST /api/drain).
    pub draining: AtomicI64,
}

impl NodeStats {
    /// Counters for `n` shards.
    pub fn new(n: usize) -> Self {
        NodeStats { shards: (0..n).map(|_| ShardStats::new(n)).collect(), ..Default::default() }
    }

    /// Total open connections.
    pub fn connections(&self) -> i64 {
        self.shards.iter().map(|s| s.connections.load(Relaxed)).sum()
    }

    /// Writes the node's shard counters.
    pub(crate) fn render(&self, max_connections: usize, out: &mut Exposition) {
        let sum_u = |f: fn(&ShardStats) -> &AtomicU64| self.shards.iter().map(|s| f(s).load(Relaxed)).sum::<u64>();
        let sum_i = |f: fn(&ShardStats) -> &AtomicI64| self.shards.iter().map(|s| f(s).load(Relaxed)).sum::<i64>();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| out.single(name, kind, help, value);
        metric("cchat_connections", "gauge", "Open WebSocket connections.", sum_i(|s| &s.connections).to_string());
        metric("cchat_max_connections", "gauge", "Connection cap of this node.", max_connections.to_string());
        metric(
            "cchat_draining",
            "gauge",
            "1 while the node drains: its clients were told to reconnect later (1012) and it exits once they are gone.",
            self.draining.load(Relaxed).to_string(),
        );
        metric("cchat_rooms", "gauge", "Rooms with members.", sum_i(|s| &s.rooms).to_string());
        metric(
            "cchat_messages_in_total",
            "counter",
            "Chat messages accepted from clients.",
            sum_u(|s| &s.messages_in).to_string(),
        );
        metric(
            "cchat_deliveries_total",
            "counter",
            "Message frames queued to client sockets.",
            sum_u(|s| &s.deliveries).to_string(),
        );
        metric(
            "cchat_bytes_out_total",
            "counter",
            "Bytes written to client sockets.",
            sum_u(|s| &s.bytes_out).to_string(),
        );
        metric(
            "cchat_socket_writes_total",
            "counter",
            "Write system calls to client sockets; deliveries per write is the batching.",
            sum_u(|s| &s.writes).to_string(),
        );
        metric(
            "cchat_deflated_frames_total",
            "counter",
            "Frames compressed (permessage-deflate), once per broadcast and shard, shared by its recipients.",
            sum_u(|s| &s.deflated_frames).to_string(),
        );
        metric(
            "cchat_deflated_plain_bytes_total",
            "counter",
            "Bytes of the compressed frames before compression (the ratio is deflated_bytes over this).",
            sum_u(|s| &s.deflated_plain_bytes).to_string(),
        );
        metric(
            "cchat_deflated_bytes_total",
            "counter",
            "Bytes of the compressed frames after compression.",
            sum_u(|s| &s.deflated_bytes).to_string(),
        );
        metric(
            "cchat_inflated_messages_total",
            "counter",
            "Compressed messages received from clients (permessage-deflate) and inflated.",
            sum_u(|s| &s.inflated_messages).to_string(),
        );
        metric(
            "cchat_dormant_connections",
            "gauge",
            "Open connections resting without a task, their sockets watched by the shard's epoll (--dormant-after).",
            sum_i(|s| &s.dormant).to_string(),
        );
        metric(
            "cchat_dormant_wakes_total",
            "counter",
            "Dormant connections woken (input, a full socket to write, a close) and served by a new task.",
            sum_u(|s| &s.dormant_wakes).to_string(),
        );
        metric(
            "cchat_slow_consumer_closes_total",
            "counter",
            "Connections closed (1008) because their outbound queue passed its cap.",
            sum_u(|s| &s.slow_consumer_closes).to_string(),
        );
        metric(
            "cchat_protocol_closes_total",
            "counter",
            "Connections closed for a WebSocket protocol violation.",
            sum_u(|s| &s.protocol_closes).to_string(),
        );
        metric(
            "cchat_timeout_closes_total",
            "counter",
            "Connections closed for idleness, or for missing the handshake or login deadline.",
            sum_u(|s| &s.timeout_closes).to_string(),
        );
        metric(
            "cchat_rejected_connections_total",
            "counter",
            "Upgrades refused with 503 at the connection cap.",
            sum_u(|s| &s.rejected_connections).to_string(),
        );
        metric(
            "cchat_accept_errors_total",
            "counter",
            "Failed accepts of new TCP connections (out of file descriptors, mostly).",
            sum_u(|s| &s.accept_errors).to_string(),
        );
        metric(
            "cchat_shed_connections_total",
            "counter",
            "Connections that had not logged in, closed to free a descriptor while accepts failed.",
            sum_u(|s| &s.shed_connections).to_string(),
        );
        metric(
            "cchat_log_appends_total",
            "counter",
            "Room messages written to the log.",
            sum_u(|s| &s.log_appends).to_string(),
        );
        metric("cchat_log_bytes_total", "counter", "Bytes written to the log.", sum_u(|s| &s.log_bytes).to_string());
        metric("cchat_log_fsyncs_total", "counter", "fdatasyncs of the log.", sum_u(|s| &s.log_fsyncs).to_string());
        metric(
            "cchat_log_fsync_seconds_total",
            "counter",
            "Time spent in fdatasyncs of the log (divide by cchat_log_fsyncs_total for the mean).",
            (sum_u(|s| &s.log_fsync_us) as f64 / 1e6).to_string(),
        );
        metric(
            "cchat_log_errors_total",
            "counter",
            "Failed log writes or syncs.",
            sum_u(|s| &s.log_errors).to_string(),
        );
        metric(
            "cchat_log_refused_total",
            "counter",
            "Messages refused (error 50, not delivered) because the log could not write or fsync them.",
            sum_u(|s| &s.log_refused).to_string(),
        );
        metric(
            "cchat_log_disk_full",
            "gauge",
            "Shards whose last log write failed for a full disk (0 once a write succeeds).",
            sum_i(|s| &s.log_full).to_string(),
        );
        metric("cchat_log_size_bytes", "gauge", "Bytes of log on disk.", sum_i(|s| &s.log_size).to_string());
        metric(
            "cchat_rooms_evicted",
            "gauge",
            "Rooms with stored messages and no members, held as an index only (history on disk).",
            sum_i(|s| &s.evicted_rooms).to_string(),
        );
        metric(
            "cchat_dedupe_entries",
            "gauge",
            "Message ids (mid) the rooms in memory remember, so that a message sent again is not posted twice.",
            sum_i(|s| &s.dedupe_entries).to_string(),
        );
        metric(
            "cchat_history_disk_reads_total",
            "counter",
            "getHistory answers that read the log.",
            sum_u(|s| &s.history_disk_reads).to_string(),
        );
        metric(
            "cchat_history_disk_records_total",
            "counter",
            "Messages read back from the log for getHistory.",
            sum_u(|s| &s.history_disk_records).to_string(),
        );
        metric(
            "cchat_history_disk_errors_total",
            "counter",
            "History reads of the log that failed or found a message missing.",
            sum_u(|s| &s.history_disk_errors).to_string(),
        );
        metric(
            "cchat_log_recovery_seconds",
            "gauge",
            "Time the log's recovery took at start.",
            (self.recovery_ms.load(Relaxed) as f64 / 1e3).to_string(),
        );
        metric(
            "cchat_log_recovered_records",
            "gauge",
            "Records read back at start.",
            self.recovered_records.load(Relaxed).to_string(),
        );
        metric(
            "cchat_log_recovery_dropped_bytes",
            "gauge",
            "Bytes cut off damaged log tails at start.",
            self.recovery_dropped_bytes.load(Relaxed).to_string(),
        );
        metric(
            "cchat_log_recovery_new_epochs",
            "gauge",
            "Rooms that started a new epoch at start (damaged log, reboot in written mode, or a clustered node).",
            self.recovery_new_epochs.load(Relaxed).to_string(),
        );
        out.family("cchat_per_ip_refused_total", "counter", "Upgrades refused by the per-IP limits, by reason.");
        for (i, reason) in ["too_many", "too_fast"].iter().enumerate() {
            let n: u64 = self.shards.iter().map(|s| s.per_ip_refused[i].load(Relaxed)).sum();
            out.value("cchat_per_ip_refused_total", &format!("reason=\"{reason}\""), n);
        }
        out.single(
            "cchat_login_attempts_refused_total",
            "counter",
            "Logins refused because their address spent its budget of token checks (--login-attempts-per-ip).",
            sum_u(|s| &s.login_attempts_refused),
        );
        out.family("cchat_errors_total", "counter", "Error replies sent, by errCode.");
        for (i, code) in [101, 102, 50, 103].iter().enumerate() {
            let n: u64 = self.shards.iter().map(|s| s.errors[i].load(Relaxed)).sum();
            out.value("cchat_errors_total", &format!("code=\"{code}\""), n);
        }
        out.family("cchat_shard_queue_depth", "gauge", "Items sent to a shard and not yet taken: in its inbound cross-shard queues or waiting in senders' outboxes.");
        for (i, s) in self.shards.iter().enumerate() {
            let sent: u64 = self.shards.iter().map(|from| from.sent_to.get(i).map_or(0, |c| c.load(Relaxed))).sum();
            let depth = sent.saturating_sub(s.received.load(Relaxed));
            out.value("cchat_shard_queue_depth", &format!("shard=\"{i}\""), depth);
        }
        out.family(
            "cchat_shard_cluster_nodes",
            "gauge",
            "Live nodes in the cluster view a shard routes rooms by (itself included).",
        );
        for (i, s) in self.shards.iter().enumerate() {
            out.value("cchat_shard_cluster_nodes", &format!("shard=\"{i}\""), s.view_nodes.load(Relaxed));
        }
        out.family(
            "cchat_shard_pinned",
            "gauge",
            "1 while a shard is pinned to its core, 0 while it may run on any core.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            out.value("cchat_shard_pinned", &format!("shard=\"{i}\""), s.pinned.load(Relaxed));
        }
        out.family(
            "cchat_shard_core_releases_total",
            "counter",
            "Times a pinned shard was released because other processes kept its core busy.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            out.value("cchat_shard_core_releases_total", &format!("shard=\"{i}\""), s.core_releases.load(Relaxed));
        }
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("valid bounds");
        for s in &self.shards {
            if let Ok(l) = s.latency.lock() {
                let _ = h.add(&*l);
            }
        }
        out.family(
            "cchat_fanout_latency_seconds",
            "summary",
            "Time from a message being sequenced to its recipients' shard writing it.",
        );
        for q in [0.5, 0.9, 0.99, 0.999] {
            out.value(
                "cchat_fanout_latency_seconds",
                &format!("quantile=\"{q}\""),
                h.value_at_quantile(q) as f64 / 1e6,
            );
        }
        out.value("cchat_fanout_latency_seconds_count", "", h.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(text: &str, name: &str) -> i64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn queue_depth_is_sent_minus_taken() {
        let stats = NodeStats::new(2);
        stats.shards[0].sent_to[1].fetch_add(5, Relaxed);
        stats.shards[1].sent_to[0].fetch_add(2, Relaxed);
        stats.shards[1].received.fetch_add(3, Relaxed);
        stats.shards[0].received.fetch_add(2, Relaxed);
        let mut out = Exposition::default();
        stats.render(10, &mut out);
        let text = out.finish();
        assert_eq!(gauge(&text, "cchat_shard_queue_depth{shard=\"0\"}"), 0);
        assert_eq!(gauge(&text, "cchat_shard_queue_depth{shard=\"1\"}"), 2);
    }
}
