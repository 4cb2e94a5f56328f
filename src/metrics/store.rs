//! Counters of the shared store's threads (`--store`, `store/redis/`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Exposition;

/// What the store threads count, for `/metrics` (all zero without `--store`).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Shards whose connection to the store is down.
    pub down: AtomicU64,
    /// Round trips made.
    pub round_trips: AtomicU64,
    /// Their total time, microseconds.
    pub rtt_us: AtomicU64,
    /// Scripts run.
    pub commands: AtomicU64,
    /// Messages stored.
    pub appended: AtomicU64,
    /// Messages refused (fenced, lost, a gap, or the store unavailable).
    pub refused: AtomicU64,
    /// Round trips or connects that failed (connection lost, timeout).
    pub errors: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
}

impl StoreStats {
    pub(crate) fn render(&self, out: &mut Exposition) {
        let v = |a: &AtomicU64| a.load(Relaxed).to_string();
        out.single("cchat_store_down", "gauge", "Shards whose connection to the shared store is down.", v(&self.down));
        out.single(
            "cchat_store_round_trips_total",
            "counter",
            "Round trips to the shared store.",
            v(&self.round_trips),
        );
        let secs = (self.rtt_us.load(Relaxed) as f64 / 1e6).to_string();
        out.single("cchat_store_round_trip_seconds_total", "counter", "Time in round trips to the shared store.", secs);
        out.single("cchat_store_commands_total", "counter", "Scripts run in the shared store.", v(&self.commands));
        out.single(
            "cchat_store_appends_total",
            "counter",
            "Room messages stored in the shared store.",
            v(&self.appended),
        );
        out.single(
            "cchat_store_refused_total",
            "counter",
            "Room messages the shared store refused (fenced, lost, a gap, unavailable).",
            v(&self.refused),
        );
        out.single(
            "cchat_store_errors_total",
            "counter",
            "Failed round trips or connects to the shared store.",
            v(&self.errors),
        );
        out.single("cchat_store_connects_total", "counter", "Connections made to the shared store.", v(&self.connects));
    }
}
