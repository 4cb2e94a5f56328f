//! Server settings: command-line flags, an optional TOML file, safe defaults.
//!
//! Every setting is listed once, in [`Args`], with its default. A config
//! file's keys are the long flag names (`rate-limit = 20`, `peer = ["…"]`);
//! [`Config::load`] turns the file into flags placed before the command
//! line's, so a flag given on the command line wins over the file, which wins
//! over the default. [`Config`] is the validated form the server uses.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

mod flags;
pub use flags::{Args, ClusterArgs, LimitArgs, SecurityArgs, StorageArgs, TuningArgs};
use thiserror::Error;

/// When a room message is broadcast, relative to the disk (see [`crate::store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// After the write to the operating system (default).
    Written,
    /// After the fdatasync that covers it.
    Sync,
    /// No log at all.
    Memory,
}

/// Whether WebSocket messages may be compressed (permessage-deflate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionMode {
    /// Never: offers are declined.
    Off,
    /// Accepted when a client offers it; frames of at least
    /// `--compression-min-bytes` go compressed (once per broadcast).
    Auto,
}

/// A setting that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read; check the path.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid TOML, or has a key that is no setting or
    /// a value of the wrong kind.
    #[error("bad config file {0}: {1}")]
    Parse(PathBuf, String),
    /// The command line is not valid (clap's message says how).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// A value is out of range; the message names the setting.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Validated settings of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client address.
    pub listen: SocketAddr,
    /// Number of shards (executors).
    pub shards: usize,
    /// Limits: sizes, rates, timeouts, connection caps, presence (`--help`: Limits).
    pub limits: Limits,
    /// Security: logins, TLS, origins, the admin listener and API key.
    pub security: Security,
    /// Storage: history, the embedded log, the shared store.
    pub storage: Storage,
    /// Cluster: this node's name, the relay and its peers.
    pub cluster: Cluster,
    /// Tuning: queues, polling, pinning, write coalescing.
    pub tuning: Tuning,
}

/// Limits: sizes, rates, timeouts, connection caps, presence (`--help`: Limits).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Messages per second per connection; 0 = unlimited.
    pub rate_limit: f64,
    /// Longest `msg`.
    pub max_message_bytes: usize,
    /// Largest frame / message.
    pub max_frame_bytes: usize,
    /// Connection cap; None = derive from the open-file limit at start.
    pub max_connections: Option<usize>,
    /// Upgrade deadline.
    pub handshake_timeout: Duration,
    /// Silence before a ping.
    pub ping_interval: Duration,
    /// Silence before a close.
    pub idle_timeout: Duration,
    /// Outbound queue cap per connection.
    pub max_outbound_bytes: usize,
    /// Time an upgraded connection has to log in.
    pub login_timeout: Duration,
    /// Rooms per connection.
    pub max_rooms_per_connection: usize,
    /// Connections per IP address (0: no limit).
    pub max_connections_per_ip: u32,
    /// New connections per second per IP address (0: no limit).
    pub new_connections_per_ip: f64,
    /// Users above which a room batches presence.
    pub presence_limit: usize,
    /// Time between a big room's presence frames.
    pub presence_interval: Duration,
    /// How long a disconnected user's departure waits to be announced.
    pub presence_grace: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// How long a draining node waits for its clients to leave, at most.
    pub drain_timeout: Duration,
}

/// Security: logins, TLS, origins, the admin listener and API key.
#[derive(Debug, Clone)]
pub struct Security {
    /// HS256 secret for login tokens.
    pub token_secret: Option<String>,
    /// PEM public key for login tokens.
    pub token_public_key: Option<PathBuf>,
    /// TLS certificate chain and key files (PEM), when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Browser origins allowed to upgrade (empty: same host only; `*`: all).
    pub allowed_origins: Vec<String>,
    /// Token signature checks per second per IP address before login (0: no limit).
    pub login_attempts_per_ip: f64,
    /// Admin listener address.
    pub admin_listen: Option<SocketAddr>,
    /// Server API key.
    pub api_key: Option<String>,
}

/// Storage: history, the embedded log, the shared store.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Messages of history per room getHistory reaches (memory and log).
    pub history: usize,
    /// Messages of history per room kept in memory.
    pub history_memory: usize,
    /// Delay before an empty room is evicted from memory.
    pub room_evict: Duration,
    /// Evicted rooms remembered per node.
    pub max_evicted_rooms: usize,
    /// How long a room remembers its messages' client ids (`mid`).
    pub dedupe_window: Duration,
    /// At most this many ids per room.
    pub dedupe_max: usize,
    /// How long after sending a message its author may edit or delete it.
    pub edit_window: Duration,
    /// Where the log lives.
    pub data_dir: PathBuf,
    /// When a room message is broadcast relative to the disk.
    pub durability: Durability,
    /// Time between fdatasyncs in `written` mode.
    pub fsync_interval: Duration,
    /// Segment size.
    pub segment_bytes: u64,
    /// Log bytes kept per shard.
    pub retention_bytes: u64,
    /// Age past which sealed segments go; zero keeps by size only.
    pub retention: Duration,
    /// Age past which a room's messages are no longer served (`--retention-days`); zero: none.
    pub room_retention: Duration,
    /// The shared store's URL (`--store`), if any.
    pub store: Option<String>,
    /// How long the shared store keeps a room after its last message.
    pub store_ttl: Duration,
    /// The CA that signed a rediss:// store's certificate.
    pub store_ca: Option<PathBuf>,
    /// The store is a Redis Cluster.
    pub store_cluster: bool,
}

/// Cluster: this node's name, the relay and its peers.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Node name.
    pub node_id: String,
    /// Relay address, when clustered.
    pub relay_listen: Option<SocketAddr>,
    /// Peer relay addresses, `host:port` (names resolved by the relay).
    pub peers: Vec<String>,
    /// This node's relay address as told to other nodes.
    pub relay_advertise: Option<SocketAddr>,
    /// Relay link queue cap.
    pub relay_queue_bytes: usize,
    /// The newest relay version this node offers.
    pub relay_max_version: u8,
    /// Cluster secret.
    pub cluster_secret: Option<String>,
}

/// Tuning: queues, polling, pinning, write coalescing.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Capacity of each cross-shard queue (messages).
    pub shard_queue: usize,
    /// Polling before a shard sleeps.
    pub busy_poll: Duration,
    /// Pin shard i to the i-th allowed CPU.
    pub pin: bool,
    /// Share (0..1) of a second a pinned shard may wait for its core before it
    /// is released (see [`crate::pinning`]); 0 never releases.
    pub unpin_above: f64,
    /// Flush coalescing delay under load.
    pub coalesce: Duration,
    /// Flusher load (share of a 100 ms tick spent writing) above which the delay applies.
    pub coalesce_above: f64,
    /// Silence after which a connection goes dormant; None: never.
    pub dormant_after: Option<Duration>,
    /// Smallest text frame sent compressed to a client that negotiated
    /// permessage-deflate; None: compression is off (offers are declined).
    pub compress_min: Option<usize>,
}

impl Default for Config {
    /// The defaults of [`Args`], validated.
    fn default() -> Self {
        Config::from_args(Args::parse_from(["cchat"])).expect("the defaults are valid")
    }
}

/// A per-second rate flag: 0 (off) unless a finite positive number.
fn rate(v: f64) -> f64 {
    if v.is_finite() { v.max(0.0) } else { 0.0 }
}

fn secs(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(ConfigError::Invalid(format!("{name} must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The keys a config file may hold: the long names of the flags.
fn known_keys() -> Vec<String> {
    use clap::CommandFactory;
    Args::command().get_arguments().filter_map(|a| a.get_long()).map(str::to_owned).collect()
}

/// The line (1-based) where `key` is set in a TOML text, or 0.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('"');
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().trim_start_matches('"').trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

/// "line N: unknown key `k`", with the nearest known key when one is close.
fn unknown_key(text: &str, key: &str, known: &[String]) -> String {
    let near = known.iter().map(|k| (strsim::levenshtein(k, key), k)).filter(|(d, k)| *d <= 3.max(k.len() / 4)).min();
    let hint = near.map(|(_, k)| format!(", did you mean `{k}`?")).unwrap_or_default();
    format!("line {}: unknown key `{key}`{hint}", line_of(text, key))
}

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 3] = ["cluster-secret", "token-secret", "api-key"];

/// A config file that holds a secret should be readable by its owner only.
fn warn_if_secrets_readable(path: &PathBuf, table: &toml::Table) {
    use std::os::unix::fs::PermissionsExt;
    let Some(key) = SECRET_KEYS.iter().find(|k| table.contains_key(**k)) else { return };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            key,
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the config file holds a secret and other users can read it: chmod 600 it"
        );
    }
}

/// The flags a config file stands for: `key = value` becomes `--key=value`
/// (an array, one flag per item). `peers` is accepted for `peer`.
fn file_flags(path: &PathBuf) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(path.clone(), e.to_string()))?;
    let bad = |why: String| ConfigError::Parse(path.clone(), why);
    let known = known_keys();
    for key in table.keys() {
        if key != "peers" && !known.iter().any(|k| k == key) {
            return Err(bad(unknown_key(&text, key, &known)));
        }
    }
    warn_if_secrets_readable(path, &table);
    let mut flags = Vec::new();
    for (key, value) in table {
        let key = if key == "peers" { "peer".to_owned() } else { key };
        if key == "config" || key == "check-config" {
            return Err(bad(format!("line {}: a config file cannot name another", line_of(&text, &key))));
        }
        let items = match value {
            toml::Value::Array(a) => a,
            v => vec![v],
        };
        for v in items {
            let v = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(bad(format!("{key}: unsupported value {other}"))),
            };
            flags.push(OsString::from(format!("--{key}={v}")));
        }
    }
    Ok(flags)
}

/// Shards when `--shards` is not given, on a box of `cores` online cores:
/// one per core, but a single one on two cores or fewer. There the other
/// core goes to the kernel's network path (on loopback, and for a NIC's
/// interrupts), which is most of a delivery's cost: measured on 2 cores
/// (bench/results/2026-12-07-shards-*), one shard took 0.75× the CPU per
/// delivery of two at load A with p99 as good or better, and 0.89× with
/// p99 102 ms against 148 at load B.
pub fn default_shards(cores: usize) -> usize {
    if cores <= 2 { 1 } else { cores }
}

/// [`default_shards`] for this machine's online cores.
pub fn default_shards_here() -> usize {
    default_shards(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Config {
    /// Reads the command line (`argv`, program name first) and the config
    /// file it names, and validates the result.
    pub fn load<I, T>(argv: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let args = Args::try_parse_from(&argv)?;
        let Some(path) = args.config.clone() else { return Config::from_args(args) };
        let mut flags = file_flags(&path)?;
        // A list on the command line replaces the file's instead of adding to it.
        let cli_peers =
            argv.iter().skip(1).any(|a| a.to_str().is_some_and(|a| a == "--peer" || a.starts_with("--peer=")));
        if cli_peers {
            flags.retain(|f| !f.to_str().is_some_and(|f| f.starts_with("--peer=")));
        }
        let mut merged = vec![argv[0].clone()];
        merged.extend(flags);
        merged.extend(argv[1..].iter().cloned());
        let args = Args::try_parse_from(&merged)
            .map_err(|e| ConfigError::Parse(path.clone(), e.kind().to_string() + ": " + &e.to_string()))?;
        Config::from_args(args)
    }

    /// Validates parsed flags (the config file, if any, already merged in).
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let shards = args.shards.unwrap_or_else(default_shards_here);
        if shards == 0 || shards > 1024 {
            return Err(ConfigError::Invalid("shards must be between 1 and 1024".into()));
        }
        if !(args.limits.rate_limit.is_finite() && args.limits.rate_limit >= 0.0) {
            return Err(ConfigError::Invalid("rate-limit must be >= 0".into()));
        }
        if !(125..=1 << 30).contains(&args.limits.max_frame_bytes) {
            return Err(ConfigError::Invalid("max-frame-bytes must be between 125 and 2^30".into()));
        }
        let node_id = args.cluster.node_id.unwrap_or_else(|| format!("{}:{}", host_name(), args.listen.port()));
        if (args.cluster.relay_listen.is_some() || !args.cluster.peers.is_empty())
            && args.cluster.cluster_secret.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConfigError::Invalid(
                "--relay-listen and --peer need --cluster-secret (or CCHAT_CLUSTER_SECRET)".into(),
            ));
        }
        let unpin = args.tuning.unpin_above;
        let cfg = Config {
            listen: args.listen,
            shards,
            limits: Limits {
                rate_limit: args.limits.rate_limit,
                max_message_bytes: args.limits.max_message_bytes,
                max_frame_bytes: args.limits.max_frame_bytes,
                max_connections: args.limits.max_connections,
                handshake_timeout: secs("handshake-timeout", args.limits.handshake_timeout)?,
                ping_interval: secs("ping-interval", args.limits.ping_interval)?,
                idle_timeout: secs("idle-timeout", args.limits.idle_timeout)?,
                max_outbound_bytes: args.limits.max_outbound_bytes.max(1024),
                login_timeout: secs("login-timeout", args.limits.login_timeout)?,
                max_rooms_per_connection: args.limits.max_rooms_per_connection.max(1),
                max_connections_per_ip: args.limits.max_connections_per_ip,
                new_connections_per_ip: rate(args.limits.new_connections_per_ip),
                presence_limit: args.limits.presence_limit,
                presence_interval: Duration::from_millis(args.limits.presence_interval_ms.clamp(10, 3_600_000)),
                presence_grace: Duration::from_millis(args.limits.presence_grace_ms.min(600_000)),
                shutdown_grace: secs("shutdown-grace", args.limits.shutdown_grace)?,
                drain_timeout: secs("drain-timeout", args.limits.drain_timeout)?,
            },
            security: Security {
                token_secret: args.security.token_secret,
                token_public_key: args.security.token_public_key,
                tls: args.security.tls_cert.zip(args.security.tls_key),
                allowed_origins: args.security.allowed_origins,
                login_attempts_per_ip: rate(args.security.login_attempts_per_ip),
                admin_listen: args.security.admin_listen,
                api_key: args.security.api_key.filter(|k| !k.is_empty()),
            },
            storage: Storage {
                // With a shared store, the store keeps what history reaches.
                history: if args.storage.store.is_some() { args.storage.store_history } else { args.storage.history }
                    .min(1 << 20),
                history_memory: args.storage.history_memory.min(args.storage.history).min(1 << 20),
                room_evict: Duration::from_millis(args.storage.room_evict_ms.min(86_400_000)),
                max_evicted_rooms: args.storage.max_evicted_rooms,
                dedupe_window: Duration::from_secs(args.storage.dedupe_window_secs.min(1 << 32)),
                dedupe_max: args.storage.dedupe_max.max(1),
                edit_window: Duration::from_secs(args.storage.edit_window_secs.min(1 << 32)),
                // Absolute: glommio opens directories relative to no
                // descriptor (-1, not AT_FDCWD), which newer kernels refuse
                // for a relative path (EBADF, seen on 6.18).
                data_dir: std::path::absolute(&args.storage.data_dir).unwrap_or(args.storage.data_dir),
                durability: args.storage.durability,
                fsync_interval: Duration::from_millis(args.storage.fsync_interval_ms.clamp(1, 60_000)),
                // A record's place names its offset in 30 bits; a segment
                // overshoots its size by at most one batch of records.
                segment_bytes: args.storage.segment_bytes.clamp(4096, 512 << 20),
                retention_bytes: args.storage.retention_bytes.max(4096),
                retention: {
                    let hours = |h: f64| if h.is_finite() { h.clamp(0.0, 1e6) } else { 0.0 };
                    let (by_hours, by_days) =
                        (hours(args.storage.retention), hours(args.storage.retention_days * 24.0));
                    // The shorter of the two, where set: segments go once
                    // every room's messages in them are past it.
                    let h = match (by_hours > 0.0, by_days > 0.0) {
                        (true, true) => by_hours.min(by_days),
                        (true, false) => by_hours,
                        _ => by_days,
                    };
                    Duration::from_secs_f64(h * 3600.0)
                },
                room_retention: Duration::from_secs_f64(if args.storage.retention_days.is_finite() {
                    args.storage.retention_days.clamp(0.0, 1e5) * 86_400.0
                } else {
                    0.0
                }),
                store: args.storage.store.filter(|s| !s.is_empty()),
                store_ca: args.storage.store_ca,
                store_cluster: args.storage.store_cluster,
                store_ttl: Duration::from_secs_f64(if args.storage.store_ttl.is_finite() {
                    args.storage.store_ttl.clamp(0.001, 1e5) * 3600.0
                } else {
                    168.0 * 3600.0
                }),
            },
            cluster: Cluster {
                node_id,
                relay_listen: args.cluster.relay_listen,
                peers: {
                    for p in &args.cluster.peers {
                        let port = p.rsplit_once(':').and_then(|(h, port)| (!h.is_empty()).then_some(port));
                        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                            return Err(ConfigError::Invalid(format!("--peer {p}: expected host:port")));
                        }
                    }
                    args.cluster.peers
                },
                relay_advertise: args
                    .cluster
                    .relay_advertise
                    .or(args.cluster.relay_listen.filter(|a| !a.ip().is_unspecified())),
                relay_queue_bytes: args.cluster.relay_queue_bytes.max(4096),
                relay_max_version: {
                    use crate::cluster::{MIN_VERSION, VERSION};
                    let v = args.cluster.relay_max_version;
                    if !(MIN_VERSION..=VERSION).contains(&v) {
                        return Err(ConfigError::Invalid(format!(
                            "--relay-max-version must be {MIN_VERSION} to {VERSION}, not {v}"
                        )));
                    }
                    v
                },
                cluster_secret: args.cluster.cluster_secret,
            },
            tuning: Tuning {
                shard_queue: args.tuning.shard_queue.clamp(4, 1 << 20),
                busy_poll: Duration::from_micros(args.tuning.busy_poll_us.min(1_000_000)),
                pin: !args.tuning.no_pin,
                unpin_above: if unpin.is_nan() { 0.0 } else { unpin.clamp(0.0, 100.0) / 100.0 },
                coalesce: Duration::from_micros((args.tuning.coalesce_ms.clamp(0.0, 1000.0) * 1000.0) as u64),
                coalesce_above: 0.6,
                dormant_after: match args.tuning.dormant_after {
                    s if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s.min(86_400.0))),
                    _ => None,
                },
                compress_min: match args.tuning.compression {
                    CompressionMode::Off => None,
                    CompressionMode::Auto => Some(args.tuning.compression_min_bytes),
                },
            },
        };
        if let Some(url) = &cfg.storage.store
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::Invalid(format!("--store must be a redis:// or rediss:// URL, not {url:?}")));
        }
        if cfg.limits.idle_timeout <= cfg.limits.ping_interval {
            return Err(ConfigError::Invalid("idle-timeout must be longer than ping-interval".into()));
        }
        Ok(cfg)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests;
