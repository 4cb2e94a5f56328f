//! End-to-end tests, one binary: real `cchat` processes on 127.0.0.1, real
//! WebSocket clients, raw sockets for what a client library would refuse to
//! send, several relay-joined nodes, and a headless Chromium. One module per
//! concern; `cargo test --test integration MODULE::` runs one of them.

// Test support: server processes, WebSocket and raw clients.
mod common;

// Presence (big rooms, the reconnect grace period) and roster pages.
mod bigroom;
// The browser client served at `/`, in headless Chromium.
mod browser;
// Several nodes joined by the relay: meshing, failover, faults.
mod cluster;
// Quiet connections resting without a task (--dormant-after).
mod dormant;
// The deployment kit: example config, dashboard, systemd unit.
mod deploy;
// permessage-deflate: the offer, broadcasts compressed once, compressed input.
mod compression;
// Direct conversations and the room directory (getRooms).
mod conversation;
// Idempotent sends (mid) and resume (login since).
mod delivery;
// Durable history: kills, restarts, damaged files, the directory lock.
mod durability;
// Durability at the edges: a full disk, flipped bytes, missing segments,
// torn tails, an empty newest segment, a changed shard count.
mod edges;
// History read back from the log; rooms evicted from memory and reloaded.
mod history;
// The client contract, black-box: commands, replies, errors, closes, HTTP.
mod contract;
// The source tree's rules: no import cycle, no #[path], pure folders,
// long files named, no type's methods in more than two files.
mod layout;
// Limits, timeouts, shutdown.
mod limits;
// Shards pinned to cores, released from busy ones.
mod pinning;
// Protocol scenarios with one shard and with three.
mod protocol;
// Signed logins, token expiry and refresh, origin checks.
mod security;
// The shared store (Redis): restarts, failover, flushes, fencing, outages.
mod store;
// TLS on the client port: wss, https, plain clients refused, SIGHUP reload.
mod tls;
// Attacks on the relay: a spliced handshake, an on-path proxy.
mod trust;
// Seeded random bursts across shards with tiny queues.
mod stress;
// Regression: connections wedged by cross-shard back-pressure.
mod wedge;
