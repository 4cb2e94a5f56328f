//! Server settings: command-line flags, an optional TOML file, safe defaults.
//!
//! Precedence: a flag given on the command line wins over the file, which wins
//! over the default. The TOML keys are the long flag names
//! (`rate-limit = 20`, `max-message-bytes = 2048`, …).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

/// Flags of the `cchat` binary. Every setting is optional here so that a
/// config file can supply it; [`Config::from_args`] applies defaults.
#[derive(Debug, Parser, Default)]
#[command(name = "cchat", version, about = "Thread-per-core WebSocket chat server (CChat-compatible)")]
pub struct Args {
    /// Client address (WebSocket + HTTP). Default 0.0.0.0:9503.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Executors, one per core. Default: number of online cores.
    #[arg(long)]
    pub shards: Option<usize>,
    /// TOML file with the same settings (keys are the long flag names).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Messages per second per connection (token bucket, burst 2R); 0 turns it off. Default 10.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Longest `msg` accepted, in bytes. Default 1024.
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// Largest WebSocket frame (and reassembled message) accepted, in bytes; past it: close 1009. Default 65536.
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Connections per node; past it the upgrade gets HTTP 503. Default: from the open-file limit.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a client has to complete the HTTP upgrade. Default 10.
    #[arg(long)]
    pub handshake_timeout: Option<f64>,
    /// Seconds of silence before the server pings a client. Default 20.
    #[arg(long)]
    pub ping_interval: Option<f64>,
    /// Seconds of silence (no frame, no pong) before the server closes a connection. Default 60.
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Byte cap of each connection's outbound queue; past it the connection is closed with 1008. Default 1048576.
    #[arg(long)]
    pub max_outbound_bytes: Option<usize>,
    /// Seconds an upgraded connection has to log in before it is closed (1008). Default 10.
    #[arg(long)]
    pub login_timeout: Option<f64>,
    /// Capacity of each queue between two shards, in messages; a shard whose waiting
    /// messages pass it stops reading new commands until they drain. Default 4096.
    #[arg(long)]
    pub shard_queue: Option<usize>,
    /// Messages kept per room for getHistory. Default 100.
    #[arg(long)]
    pub history: Option<usize>,
    /// Seconds the server waits for clients to take their close frames at shutdown. Default 3.
    #[arg(long)]
    pub shutdown_grace: Option<f64>,
    /// Microseconds a shard keeps polling for work before it sleeps: trades idle CPU for
    /// wake-up latency between shards. Default 0 (measured: polling only cost CPU here).
    #[arg(long)]
    pub busy_poll_us: Option<u64>,
    /// Let the OS place the shard threads instead of pinning shard i to core i.
    /// Pinning (the default) keeps a shard's rooms and sockets on one core's
    /// caches; a pinned shard whose core other processes keep busy is released
    /// anyway (see --unpin-above). `--no-pin=false` pins again over a config
    /// file's `no-pin = true`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_pin: Option<bool>,
    /// Percent of a second a pinned shard may wait for its core (other processes
    /// busy on it) before it is released to run on any core; it pins itself
    /// again once other processes have used under a tenth of a core for 30 s
    /// in a row (asking twice as long after each new release, up to 16 min).
    /// 0 keeps shards pinned whatever happens. Default 10.
    #[arg(long, value_name = "PERCENT")]
    pub unpin_above: Option<f64>,
    /// Milliseconds a shard lets outgoing frames pile up before writing, applied only
    /// while writing takes over 60% of its time, so that each write carries more
    /// frames under load; 0 turns it off. Default 10.
    #[arg(long)]
    pub coalesce_ms: Option<f64>,
    /// This node's name in a cluster. Default: derived from the host name and port.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Where peers reach this node's relay. Default: none (single node).
    #[arg(long)]
    pub relay_listen: Option<SocketAddr>,
    /// Another node's relay address; repeat for each.
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,
    /// Byte cap of each relay link's outbound queue; past it the link is closed (the
    /// peer is treated as failed and reconnects). Default 67108864.
    #[arg(long)]
    pub relay_queue_bytes: Option<usize>,
    /// Shared secret relay peers prove they know (also CCHAT_CLUSTER_SECRET).
    #[arg(long, env = "CCHAT_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    rate_limit: Option<f64>,
    max_message_bytes: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    handshake_timeout: Option<f64>,
    ping_interval: Option<f64>,
    idle_timeout: Option<f64>,
    max_outbound_bytes: Option<usize>,
    login_timeout: Option<f64>,
    shard_queue: Option<usize>,
    history: Option<usize>,
    shutdown_grace: Option<f64>,
    busy_poll_us: Option<u64>,
    no_pin: Option<bool>,
    unpin_above: Option<f64>,
    coalesce_ms: Option<f64>,
    node_id: Option<String>,
    relay_listen: Option<SocketAddr>,
    relay_queue_bytes: Option<usize>,
    #[serde(default)]
    peers: Vec<SocketAddr>,
    cluster_secret: Option<String>,
}

/// A setting that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read; check the path.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid TOML or has an unknown key.
    #[error("bad config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
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
    /// Capacity of each cross-shard queue (messages).
    pub shard_queue: usize,
    /// Messages of history per room.
    pub history: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
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
    /// Node name.
    pub node_id: String,
    /// Relay address, when clustered.
    pub relay_listen: Option<SocketAddr>,
    /// Peer relay addresses.
    pub peers: Vec<SocketAddr>,
    /// Relay link queue cap.
    pub relay_queue_bytes: usize,
    /// Cluster secret.
    pub cluster_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:9503".parse().unwrap(),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rate_limit: 10.0,
            max_message_bytes: 1024,
            max_frame_bytes: 64 * 1024,
            max_connections: None,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_outbound_bytes: 1 << 20,
            login_timeout: Duration::from_secs(10),
            shard_queue: 4096,
            history: 100,
            shutdown_grace: Duration::from_secs(3),
            busy_poll: Duration::ZERO,
            pin: true,
            unpin_above: 0.10,
            coalesce: Duration::from_millis(10),
            coalesce_above: 0.6,
            node_id: String::new(),
            relay_listen: None,
            peers: Vec::new(),
            relay_queue_bytes: 64 << 20,
            cluster_secret: None,
        }
    }
}

fn secs(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(ConfigError::Invalid(format!("{name} must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    /// Builds the settings from flags, the file they name, and defaults.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e))?
            }
        };
        let d = Config::default();
        macro_rules! pick {
            ($f:ident) => {
                args.$f.or(file.$f)
            };
        }
        let shards = pick!(shards).unwrap_or(d.shards);
        if shards == 0 || shards > 1024 {
            return Err(ConfigError::Invalid("shards must be between 1 and 1024".into()));
        }
        let rate_limit = pick!(rate_limit).unwrap_or(d.rate_limit);
        if !(rate_limit.is_finite() && rate_limit >= 0.0) {
            return Err(ConfigError::Invalid("rate-limit must be >= 0".into()));
        }
        let max_message_bytes = pick!(max_message_bytes).unwrap_or(d.max_message_bytes);
        let max_frame_bytes = pick!(max_frame_bytes).unwrap_or(d.max_frame_bytes);
        if !(125..=1 << 30).contains(&max_frame_bytes) {
            return Err(ConfigError::Invalid("max-frame-bytes must be between 125 and 2^30".into()));
        }
        let listen = pick!(listen).unwrap_or(d.listen);
        let node_id = match pick!(node_id) {
            Some(n) => n,
            None => format!("{}:{}", host_name(), listen.port()),
        };
        let peers = if args.peers.is_empty() { file.peers } else { args.peers };
        let relay_listen = pick!(relay_listen);
        let cluster_secret = pick!(cluster_secret);
        if (relay_listen.is_some() || !peers.is_empty()) && cluster_secret.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid(
                "--relay-listen and --peer need --cluster-secret (or CCHAT_CLUSTER_SECRET)".into(),
            ));
        }
        let cfg = Config {
            listen,
            shards,
            rate_limit,
            max_message_bytes,
            max_frame_bytes,
            max_connections: pick!(max_connections),
            handshake_timeout: secs("handshake-timeout", pick!(handshake_timeout).unwrap_or(10.0))?,
            ping_interval: secs("ping-interval", pick!(ping_interval).unwrap_or(20.0))?,
            idle_timeout: secs("idle-timeout", pick!(idle_timeout).unwrap_or(60.0))?,
            max_outbound_bytes: pick!(max_outbound_bytes).unwrap_or(d.max_outbound_bytes).max(1024),
            login_timeout: secs("login-timeout", pick!(login_timeout).unwrap_or(10.0))?,
            shard_queue: pick!(shard_queue).unwrap_or(d.shard_queue).clamp(4, 1 << 20),
            history: pick!(history).unwrap_or(d.history),
            shutdown_grace: secs("shutdown-grace", pick!(shutdown_grace).unwrap_or(3.0))?,
            busy_poll: Duration::from_micros(pick!(busy_poll_us).unwrap_or(0).min(1_000_000)),
            pin: !pick!(no_pin).unwrap_or(false),
            unpin_above: pick!(unpin_above)
                .map_or(d.unpin_above, |p| if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) / 100.0 }),
            coalesce: Duration::from_micros((pick!(coalesce_ms).unwrap_or(10.0).clamp(0.0, 1000.0) * 1000.0) as u64),
            coalesce_above: d.coalesce_above,
            node_id,
            relay_listen,
            peers,
            relay_queue_bytes: pick!(relay_queue_bytes).unwrap_or(d.relay_queue_bytes).max(4096),
            cluster_secret,
        };
        if cfg.idle_timeout <= cfg.ping_interval {
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
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::from_args(Args::default()).unwrap();
        assert_eq!(c.listen.port(), 9503);
        assert_eq!(c.rate_limit, 10.0);
        assert_eq!(c.max_message_bytes, 1024);
        assert!(c.shards >= 1);
        assert!(c.pin, "shards are pinned unless asked otherwise");
        assert_eq!(c.unpin_above, 0.10);
    }

    #[test]
    fn unpin_threshold_is_a_percentage() {
        let c = Config::from_args(Args::parse_from(["cchat", "--unpin-above", "25"])).unwrap();
        assert_eq!(c.unpin_above, 0.25);
        let c = Config::from_args(Args::parse_from(["cchat", "--unpin-above", "0"])).unwrap();
        assert_eq!(c.unpin_above, 0.0, "0 keeps shards pinned");
        let c = Config::from_args(Args::parse_from(["cchat", "--unpin-above", "250"])).unwrap();
        assert_eq!(c.unpin_above, 1.0);
    }

    #[test]
    fn pinning_can_be_turned_off_by_flag_or_file() {
        let c = Config::from_args(Args::parse_from(["cchat", "--no-pin"])).unwrap();
        assert!(!c.pin);
        let dir = std::env::temp_dir().join(format!("cchat-cfg-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "no-pin = true\n").unwrap();
        let c = Config::from_args(Args::parse_from(["cchat", "--config", path.to_str().unwrap()])).unwrap();
        assert!(!c.pin);
        // The flag beats the file, both ways.
        let c = Config::from_args(Args::parse_from(["cchat", "--config", path.to_str().unwrap(), "--no-pin=false"]))
            .unwrap();
        assert!(c.pin);
        std::fs::write(&path, "no-pin = false\n").unwrap();
        let c = Config::from_args(Args::parse_from(["cchat", "--config", path.to_str().unwrap()])).unwrap();
        assert!(c.pin);
        let c = Config::from_args(Args::parse_from(["cchat", "--config", path.to_str().unwrap(), "--no-pin"])).unwrap();
        assert!(!c.pin);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("cchat-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "rate-limit = 3\nmax-message-bytes = 99\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let args = Args::parse_from(["cchat", "--config", path.to_str().unwrap(), "--rate-limit", "7"]);
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.rate_limit, 7.0);
        assert_eq!(c.max_message_bytes, 99);
        assert_eq!(c.listen.port(), 1);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let args = Args::parse_from(["cchat", "--config", path.to_str().unwrap()]);
        assert!(matches!(Config::from_args(args), Err(ConfigError::Parse(..))));
    }

    #[test]
    fn relay_needs_secret() {
        let args = Args::parse_from(["cchat", "--relay-listen", "127.0.0.1:1"]);
        // The env var may be set by a caller; only check when it is not.
        if std::env::var_os("CCHAT_CLUSTER_SECRET").is_none() {
            assert!(Config::from_args(args).is_err());
        }
    }
}
