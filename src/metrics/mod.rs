//! Counters of a node and the one Prometheus writer for all of them.
//!
//! Shards and relay links each write their own counters (relaxed atomics);
//! [`render`] reads them all when `/metrics` is asked for and writes the
//! Prometheus text exposition format through one [`Exposition`].

mod relay;
mod shard;
mod store;

use std::fmt::{Display, Write as _};

pub use relay::{LinkStats, RelayStats};
pub use shard::{NodeStats, ShardStats};
pub use store::StoreStats;

/// Prometheus text exposition, written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a metric family: its help and type lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family; `labels` is `key="value",…` or empty.
    pub fn value(&mut self, name: &str, labels: &str, v: impl Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
        }
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, v: impl Display) {
        self.family(name, kind, help);
        self.value(name, "", v);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Every metric of a node, as served at `/metrics`.
pub fn render(shards: &NodeStats, relay: &RelayStats, max_connections: usize) -> String {
    let mut out = Exposition { out: String::with_capacity(8192) };
    shards.render(max_connections, &mut out);
    relay.render(&mut out);
    shards.store.render(&mut out);
    // The standard process metrics (as Prometheus's client libraries name
    // them), so a dashboard or loadgen's sampler sees CPU and memory.
    if let Some(ns) = crate::procfs::own_cpu_ns() {
        out.single(
            "process_cpu_seconds_total",
            "counter",
            "CPU time of the process, user and system.",
            ns as f64 / 1e9,
        );
    }
    if let Some(b) = crate::procfs::own_rss_bytes() {
        out.single("process_resident_memory_bytes", "gauge", "Resident memory of the process.", b);
    }
    out.finish()
}
