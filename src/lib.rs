//! cchat: a thread-per-core WebSocket chat server, wire-compatible with CChat.
//!
//! # Architecture
//!
//! ```text
//!  clients ──ws──▶ shard 0 ─┐  glommio channel mesh   ┌─ shard 1 ◀──ws── clients
//!                    │      └──── (lock-free SPSC) ────┘
//!                    └── relay links (TCP mesh) ──▶ other nodes
//! ```
//!
//! A node runs one glommio executor per core ([`server`]), each a [`shard`]
//! pinned to its core (unless `--no-pin`; released while other processes keep
//! that core busy, [`pinning`]) and accepting on the shared port
//! (SO_REUSEPORT). A connection lives on the shard that accepted it (`shard::conn`).
//! Each room has an owner shard ([`placement`]) on an owner node
//! ([`cluster`]); requests go to it and deliveries come from it ([`msg`]).
//! The owner holds the room's roster and history and assigns `seq`
//! ([`owner`], [`owner::room`]), encodes every outgoing frame once ([`protocol`], [`json`],
//! [`ws`]) and sends one delivery per shard (and node) with members; each
//! shard queues the shared bytes on its sockets and writes each socket once
//! per batch. Nodes are joined by the [`relay`].
//!
//! # Modules
//!
//! Each module depends only on those above it in this table (no cycles).
//!
//! | module | concept | I/O? |
//! |---|---|---|
//! | [`ids`] | identifier and name rules | no |
//! | [`json`] | JSON writer for replies | no |
//! | [`ws`] | WebSocket frame decoder/encoder | no |
//! | [`protocol`] | client commands and replies, error codes | no |
//! | [`placement`] | room → shard, hashing | no |
//! | [`cluster`] | live nodes, room → owner node | no |
//! | [`msg`] | what crosses shards and nodes: requests, deliveries | no |
//! | [`ratelimit`] | token bucket | no |
//! | [`throttle`] | refusal log lines, at most one a second per class | no |
//! | [`perip`] | per-address connection limits | no |
//! | [`tls`] | TLS on the client port: config, SIGHUP reload, record glue | cert files |
//! | [`auth`] | signed logins (JWT) | key file |
//! | [`config`] | flags, TOML file, defaults (listed once) | file |
//! | [`metrics`] | counters and the Prometheus writer | no |
//! | [`node`] | state shared by a node's shards | no |
//! | [`store`] | durable history: `log` (record codec, recovery, indexes, the writer) and `redis` (the shared store's thread and scripts) | files, Redis |
//! | [`session`] | a connection's identity, rooms, limits, outbound queue: command → requests | no |
//! | [`owner`] | the rooms a shard owns: request → deliveries; `room`, and the store interface with its `log` and `redis` sides | no |
//! | [`http`] | upgrade request, routes `/`, `/healthz`, `/metrics` | no |
//! | [`procfs`] | CPU times of a process and of the machine | /proc |
//! | [`pinning`] | shard ↔ core pinning, released on a busy core | /proc, affinity |
//! | [`relay`] | links between nodes: `codec`, `handshake`, `secure` (pure), `link`, `dial` | yes |
//! | [`shard`] | a shard's I/O shell: connections, routing, writes, the log and redis tasks, timers (see its map) | yes |
//! | `admin` (private) | the admin listener: `/metrics`, `/healthz`, the server API (answers for the whole cluster) | yes |
//! | [`server`] | start shards, signals, shutdown | yes |

pub(crate) mod admin;
pub use admin::drain as drain_node;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod ids;
pub mod json;
pub mod metrics;
pub mod msg;
pub mod node;
pub mod owner;
pub mod perip;
pub mod pinning;
pub mod placement;
pub mod procfs;
pub mod protocol;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod session;
pub mod shard;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod ws;
