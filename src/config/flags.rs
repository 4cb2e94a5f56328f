//! The command line: every flag, grouped as `--help` shows them. The
//! validated settings are [`super::Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use super::{CompressionMode, Durability};

/// Flags of the `cchat` binary (and keys of its config file).
#[derive(Debug, Parser)]
#[command(name = "cchat", version, about = "Thread-per-core WebSocket chat server (CChat-compatible)")]
#[command(args_override_self = true)]
pub struct Args {
    /// Client address (WebSocket + HTTP).
    #[arg(long, default_value = "0.0.0.0:9503", help_heading = "Basics")]
    pub listen: SocketAddr,
    /// Executors, one per core. Default: the number of online cores, but one on a box of
    /// two cores or fewer (the other is left to the kernel's network path).
    #[arg(long, help_heading = "Basics")]
    pub shards: Option<usize>,
    /// TOML file with the same settings (keys are the long flag names).
    #[arg(long, help_heading = "Basics")]
    pub config: Option<PathBuf>,
    /// Check this config file (every key known, every value valid) and exit: 0 when
    /// it is good, 2 with the error (the key and its line) when not.
    #[arg(long, value_name = "FILE", help_heading = "Basics")]
    pub check_config: Option<PathBuf>,
    /// Drain the node whose admin listener is at ADDR (as SIGTERM: its rooms go to the
    /// other nodes, its clients are told to reconnect, it exits) and exit: 0 once it
    /// accepted, 1 when it did not. The key is --api-key (or CCHAT_API_KEY).
    #[arg(long, value_name = "ADDR", help_heading = "Basics")]
    pub drain: Option<SocketAddr>,
    #[command(flatten, next_help_heading = "Limits")]
    /// Limits: sizes, rates, timeouts, connection caps.
    pub limits: LimitArgs,
    #[command(flatten, next_help_heading = "Security")]
    /// Security: logins, TLS, origins, the admin listener.
    pub security: SecurityArgs,
    #[command(flatten, next_help_heading = "Storage")]
    /// Storage: history, the log, the shared store.
    pub storage: StorageArgs,
    #[command(flatten, next_help_heading = "Cluster")]
    /// Cluster: the node's name, the relay, its peers.
    pub cluster: ClusterArgs,
    #[command(flatten, next_help_heading = "Tuning")]
    /// Tuning: queues, polling, pinning, coalescing.
    pub tuning: TuningArgs,
}

/// The flags under `--help`'s Limits heading.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Messages per second per connection (token bucket, burst 2R); 0 turns it off.
    #[arg(long, default_value_t = 10.0)]
    pub rate_limit: f64,
    /// Longest `msg` accepted, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub max_message_bytes: usize,
    /// Largest WebSocket frame (and reassembled message) accepted, in bytes; past it: close 1009.
    #[arg(long, default_value_t = 65536)]
    pub max_frame_bytes: usize,
    /// Connections per node; past it the upgrade gets HTTP 503. Default: from the open-file limit.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a client has to complete the HTTP upgrade.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds an upgraded connection has to log in before it is closed (1008).
    #[arg(long, default_value_t = 10.0)]
    pub login_timeout: f64,
    /// Seconds of silence before the server pings a client.
    #[arg(long, default_value_t = 20.0)]
    pub ping_interval: f64,
    /// Seconds of silence (no frame, no pong) before the server closes a connection.
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Byte cap of each connection's outbound queue; past it the connection is closed with 1008.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_outbound_bytes: usize,
    /// Seconds a draining node (SIGTERM, or POST /api/drain) waits for its clients to
    /// leave after telling them to reconnect (close 1012 with a retry hint), at most.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Seconds the server waits for clients to take their close frames at shutdown.
    #[arg(long, default_value_t = 3.0)]
    pub shutdown_grace: f64,
    /// Rooms with more users than this announce joins and leaves in batched `presence`
    /// frames instead of one `newUser`/`userLeave` frame per event.
    #[arg(long, default_value_t = 1000)]
    pub presence_limit: usize,
    /// Milliseconds between two `presence` frames of a big room (at most one per interval).
    #[arg(long, default_value_t = 1000)]
    pub presence_interval_ms: u64,
    /// Milliseconds a disconnected user's departure waits before it is announced; a user
    /// back within it is announced neither as leaving nor as joining again. 0: at once.
    #[arg(long, default_value_t = 2000)]
    pub presence_grace_ms: u64,
    /// WebSocket connections one IP address may hold; past it the upgrade gets HTTP 503.
    /// 0: no limit (users behind one NAT share an address: size it to them).
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_ip: u32,
    /// New WebSocket connections per second one IP address may open (burst: twice this);
    /// past it the upgrade gets HTTP 429. 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    pub new_connections_per_ip: f64,
    /// Rooms one connection may be in at once; past it a login gets error 50.
    #[arg(long, default_value_t = 100)]
    pub max_rooms_per_connection: usize,
}

/// The flags under `--help`'s Security heading.
#[derive(Debug, clap::Args)]
pub struct SecurityArgs {
    /// Verify login tokens (JWT, HS256) with this shared secret; logins then need a token.
    #[arg(long, env = "CCHAT_TOKEN_SECRET", hide_env_values = true, conflicts_with = "token_public_key")]
    pub token_secret: Option<String>,
    /// Verify login tokens (JWT, RS256 or ES256) with this PEM public key.
    #[arg(long)]
    pub token_public_key: Option<PathBuf>,
    /// Serve TLS (wss://, https://) on the client port with this PEM certificate chain;
    /// with --tls-key. Reloaded on SIGHUP (new connections use the renewed one).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Browser origin allowed to open a WebSocket (`https://chat.example.com`); repeat for
    /// each; `*` allows all. Default: the request's own host, and clients that send no Origin.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
    /// Address of the admin listener: `/metrics`, `/healthz` and the server API. With it,
    /// `/metrics` leaves the client port. Default: none (`/metrics` on the client port).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Key of the server API (header `X-API-Key`); without one the API is off.
    #[arg(long, env = "CCHAT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Token signature checks per second for the connections of one IP address that
    /// are not logged in yet (burst: twice this; a login that succeeds gives its check
    /// back); past it a login gets error 50 "too many login attempts". 0: no limit.
    #[arg(long, default_value_t = 20.0)]
    pub login_attempts_per_ip: f64,
}

/// The flags under `--help`'s Storage heading.
#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// Messages per room that getHistory can reach back, up to 1,048,576: the newest from
    /// memory, older ones read from the log (8 bytes of index each while on disk; the log's
    /// --retention-bytes and --retention decide what stays). With `--durability memory`: at
    /// most `--history-memory`; with --store: --store-history.
    #[arg(long, default_value_t = 1_000_000)]
    pub history: usize,
    /// Newest messages per room kept in memory while the room is in use.
    #[arg(long, default_value_t = 100)]
    pub history_memory: usize,
    /// Milliseconds after its last member left that a room with messages is evicted from
    /// memory (its history stays on disk; a join brings it back, same epoch, next seq).
    #[arg(long, default_value_t = 10_000)]
    pub room_evict_ms: u64,
    /// Evicted rooms remembered per node (each ~0.6 KiB); past it the rooms evicted longest
    /// ago are forgotten: used again, they start a new epoch with an empty history.
    #[arg(long, default_value_t = 250_000)]
    pub max_evicted_rooms: usize,
    /// Seconds a room remembers the client ids (`mid`) of its messages, so that a message
    /// sent again is not posted twice (the newest `--history` are remembered however old).
    #[arg(long, default_value_t = 600)]
    pub dedupe_window_secs: u64,
    /// At most this many message ids remembered per room, whatever the window.
    #[arg(long, default_value_t = 10_000)]
    pub dedupe_max: usize,
    /// Seconds after sending a message during which its author may edit or delete it.
    #[arg(long, default_value_t = 86_400)]
    pub edit_window_secs: u64,
    /// Where the embedded log of room messages lives; one process per directory.
    #[arg(long, default_value = "cchat-data")]
    pub data_dir: PathBuf,
    /// When a room message is broadcast: `written` (in the OS: survives a killed process),
    /// `sync` (fsynced: survives power loss), `memory` (no log).
    #[arg(long, value_enum, default_value = "written")]
    pub durability: Durability,
    /// In `written` mode, milliseconds between fdatasyncs of a shard's log (one at a time).
    #[arg(long, default_value_t = 100)]
    pub fsync_interval_ms: u64,
    /// Size at which a log segment is sealed and the next one started.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Bytes of log kept per shard; past it the oldest sealed segments are deleted.
    #[arg(long, default_value_t = 1 << 30)]
    pub retention_bytes: u64,
    /// Hours a sealed segment is kept after its newest message; 0 keeps by size only.
    #[arg(long, default_value_t = 0.0)]
    pub retention: f64,
    /// Days a room's messages are kept: older ones are served by no history
    /// page (log or `--store`) and their log segments go with them (at most one
    /// segment later). 0: kept as long as the size limits allow.
    #[arg(long, default_value_t = 0.0)]
    pub retention_days: f64,
    /// A shared store for history and room sequence, instead of the embedded log:
    /// `redis://[:PASSWORD@]host:port[/db]` or `rediss://…` (TLS). Nodes that share it
    /// continue each other's rooms (same epoch, next seq). Default: none.
    #[arg(long, env = "CCHAT_STORE")]
    pub store: Option<String>,
    /// With --store: messages per room the store keeps (and getHistory reaches), in Redis's memory.
    #[arg(long, default_value_t = 10_000)]
    pub store_history: usize,
    /// With --store: hours a room's history is kept in the store after its last message.
    #[arg(long, default_value_t = 168.0)]
    pub store_ttl: f64,
    /// With a rediss:// --store: the CA certificate (PEM) that signed the store's
    /// certificate. Default: the system's trusted roots.
    #[arg(long)]
    pub store_ca: Option<PathBuf>,
    /// --store names one node of a Redis Cluster (the others are found from it).
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub store_cluster: bool,
}

/// The flags under `--help`'s Cluster heading.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// This node's name in a cluster. Default: the host name and the client port.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Where peers reach this node's relay. Default: none (single node).
    #[arg(long)]
    pub relay_listen: Option<SocketAddr>,
    /// Another node's relay address, `host:port` (a name is resolved again every 10 s,
    /// each of its addresses a peer: a DNS round robin or a headless Service); repeat for
    /// each. Nodes tell each other the peers they know, so one reachable peer is enough.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// The address other nodes reach this node's relay at, told to them so that a node
    /// that joins through one peer finds the rest. Default: --relay-listen, unless it is
    /// 0.0.0.0 or `[::]`.
    #[arg(long)]
    pub relay_advertise: Option<SocketAddr>,
    /// Byte cap of each relay link's outbound queue; past it the link is closed (the
    /// peer is treated as failed and reconnects).
    #[arg(long, default_value_t = 64 << 20)]
    pub relay_queue_bytes: usize,
    /// The newest relay version this node offers (6 to 8): pin a new node to the old
    /// version while a cluster is upgraded, if the old nodes must not see the new one's
    /// links at all. Each link already runs at the lower of its two ends' versions.
    #[arg(long, default_value_t = crate::cluster::VERSION)]
    pub relay_max_version: u8,
    /// Shared secret relay peers prove they know.
    #[arg(long, env = "CCHAT_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// The flags under `--help`'s Tuning heading.
#[derive(Debug, clap::Args)]
pub struct TuningArgs {
    /// Capacity of each queue between two shards, in messages; a shard whose waiting
    /// messages pass it stops reading new commands until they drain.
    #[arg(long, default_value_t = 4096)]
    pub shard_queue: usize,
    /// Microseconds a shard keeps polling for work before it sleeps: trades idle CPU for
    /// wake-up latency between shards (measured: polling only cost CPU here).
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Let the OS place the shard threads instead of pinning shard i to core i.
    /// Pinning (the default) keeps a shard's rooms and sockets on one core's
    /// caches; a pinned shard whose core other processes keep busy is released
    /// anyway (see --unpin-above). `--no-pin=false` pins again over a config
    /// file's `no-pin = true`.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub no_pin: bool,
    /// Percent of a second a pinned shard may wait for its core (other processes
    /// busy on it) before it is released to run on any core; it pins itself
    /// again once other processes have used under a tenth of a core for 30 s
    /// in a row (asking twice as long after each new release, up to 16 min).
    /// 0 keeps shards pinned whatever happens.
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0)]
    pub unpin_above: f64,
    /// Milliseconds a shard lets outgoing frames pile up before writing, applied only
    /// while writing takes over 60% of its time, so that each write carries more
    /// frames under load. The pause also lets the shard take in new input between
    /// passes: 0 (off) let back-to-back passes hold reads back (p50 ~10 ms at load A),
    /// and 10 cost 10 ms; 1 measured best (bench/results/2026-12-07-coalesce).
    #[arg(long, default_value_t = 1.0)]
    pub coalesce_ms: f64,
    /// Seconds without input after which a connection's task ends and the shard's
    /// epoll watches its socket instead (half the memory of an idle connection; the
    /// next input, a full socket or a close starts a new task). 0: never.
    #[arg(long, default_value_t = 5.0)]
    pub dormant_after: f64,
    /// permessage-deflate (RFC 7692): `auto` accepts a client's offer (browsers make
    /// one) and sends it each broadcast frame compressed once, shared by every member
    /// that negotiated it; `off` declines every offer.
    #[arg(long, value_enum, default_value_t = CompressionMode::Auto)]
    pub compression: CompressionMode,
    /// Smallest frame, in bytes, worth compressing: shorter ones go plain (a short
    /// frame compressed alone barely shrinks, and costs CPU all the same).
    #[arg(long, default_value_t = 128)]
    pub compression_min_bytes: usize,
}
