//! cchat: a thread-per-core WebSocket chat server, wire-compatible with CChat.
//!
//! # Architecture
//!
//! ```text
//!  clients ──ws──▶ shard 0 ─┐  glommio channel mesh   ┌─ shard 1 ◀──ws── clients
//!                           └──── (lock-free SPSC) ────┘
//! ```
//!
//! A node runs one glommio executor per core ([`server`]), each a [`shard`]
//! pinned to its core (unless `--no-pin`; released while other processes keep
//! that core busy, [`pinning`]) and accepting on the shared port (SO_REUSEPORT). A
//! connection lives on the shard that accepted it (`conn`). Each room has an
//! owner shard ([`placement`]) that holds its roster and history and assigns
//! `seq` ([`room`]); the owner encodes every outgoing frame once
//! ([`protocol`], [`json`], [`ws`]) and sends one item per shard with
//! members; each shard queues the shared bytes on its sockets and writes each
//! socket once per batch.
//!
//! # Modules
//!
//! | module | concept | I/O? |
//! |---|---|---|
//! | [`ids`] | identifier and name rules | no |
//! | [`json`] | JSON writer for replies | no |
//! | [`ws`] | WebSocket frame decoder/encoder | no |
//! | [`http`] | upgrade request, `/`, `/healthz`, `/metrics` | no |
//! | [`protocol`] | client commands and replies, error codes | no |
//! | [`room`] | owner-side room: roster, seq, history | no |
//! | [`placement`] | room → shard, room → node | no |
//! | [`ratelimit`] | token bucket | no |
//! | [`config`] | flags, TOML file, defaults | file |
//! | [`metrics`] | per-shard counters, Prometheus text | no |
//! | [`node`] | state shared by a node's shards | no |
//! | [`pinning`] | shard ↔ core pinning, released on a busy core | /proc, affinity |
//! | [`procfs`] | CPU times of a process and of the machine | /proc |
//! | [`cluster`] | live nodes, room → owner node | no |
//! | [`relay::codec`], [`relay::handshake`] | relay wire format and handshake | no |
//! | [`relay`] | links between nodes | yes |
//! | [`shard`] | a shard: connections, rooms, cross-shard messages, flushing | yes |
//! | `conn` (private) | one connection's task | yes |
//! | [`server`] | start shards, signals, shutdown | yes |

pub mod cluster;
pub mod config;
pub(crate) mod conn;
pub mod http;
pub mod ids;
pub mod json;
pub mod metrics;
pub mod msg;
pub mod node;
pub mod pinning;
pub mod placement;
pub mod procfs;
pub mod protocol;
pub mod ratelimit;
pub mod relay;
pub mod room;
pub mod server;
pub mod shard;
pub mod ws;
