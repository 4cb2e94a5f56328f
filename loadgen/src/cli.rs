//! Command-line flags and the validated [`Config`] they become.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

/// Flags of the `loadgen` binary: the load's shape and the measurement's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for cchat: broadcast fan-out latency, from one client to 100,000",
    long_about = "Opens --clients WebSocket connections, logs them into rooms of --room-size, \
                  sends --rate messages/s in total on a fixed (open-loop) schedule and measures \
                  every delivery's latency from its intended send time. Exits non-zero when a \
                  message was lost, arrived out of order, or an error came back."
)]
pub struct Args {
    /// A node to connect to (ws://host:port/path, or wss:// with --tls-ca); repeat to spread clients
    /// (whole rooms) round-robin over several nodes.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// PEM certificate (or CA) to trust for wss:// URLs; the server's name
    /// is the URL's host.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Connections to open and log in.
    #[arg(long, default_value_t = 1000)]
    pub clients: u32,
    /// Members per room (rooms = clients / room-size; the last may be smaller).
    #[arg(long, default_value_t = 100)]
    pub room_size: u32,
    /// Messages per second sent in total, on a fixed schedule.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// A load described in TOML (a file, or a preset: fanout-a, fanout-b,
    /// one-room-100k, chat-mix, churn, centrifugo-1m; see loadgen/scenarios/): it
    /// sets the flags of the same names; flags given here win over it.
    #[arg(long, value_name = "FILE|PRESET")]
    pub scenario: Option<String>,
    /// Internal: the scenario's text, as the coordinator read it (for workers
    /// on machines without the file).
    #[arg(long, hide = true)]
    pub scenario_text: Option<String>,
    /// A ramp instead of a constant rate: after the warm-up (at --rate), the rate
    /// moves linearly to each stage's target over its seconds, as k6's ramping arrival
    /// rate does: "SECONDS:RATE,SECONDS:RATE,…" (e.g. "10:1000,30:1000,10:0"). The
    /// stages are the measured time (--duration is their sum).
    #[arg(long)]
    pub stages: Option<String>,
    /// Seconds of measured traffic (after the connect phase and the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of `msg` in each message (at least 24: the send time and message id).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// What fills `msg` after its send time and id: `dots` (one repeated byte, the
    /// historical default) or `chat` (words of everyday chat, as compressible as
    /// real messages, for measuring compression honestly).
    #[arg(long, value_enum, default_value_t = crate::scan::Filler::Dots)]
    pub text: crate::scan::Filler,
    /// Offer permessage-deflate in the upgrade (as browsers do); compressed frames
    /// are inflated before they are read, and bytes received count as on the wire.
    #[arg(long)]
    pub deflate: bool,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seconds of traffic before measuring starts (checked, not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait after the last send for stragglers before counting losses
    /// (ends early once every expected delivery arrived).
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Connections being opened at once (in total over all workers).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: u32,
    /// Seconds allowed for the whole connect phase.
    #[arg(long, default_value_t = 300.0)]
    pub connect_timeout: f64,
    /// Worker processes. Default: enough to keep each under ~15,000 clients and
    /// under the open-file limit.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Clients per worker process when --workers is not given.
    #[arg(long, default_value_t = 15_000)]
    pub clients_per_worker: u32,
    /// Write the delivery-latency percentile distribution (HdrHistogram .hgrm text, ms).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write a latency percentile spectrum plot (SVG) of delivery and broadcast completion.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// PID of a server process whose CPU time to report per delivery (repeat
    /// for several nodes); read from /proc over the traffic phase.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Set SO_RCVBUF on every client socket (bytes): small values imitate slow
    /// readers on thin links.
    #[arg(long)]
    pub rcvbuf: Option<usize>,
    /// Do not bind client sockets to source addresses spread over 127.0.0.0/8
    /// (done by default when the target is loopback, so that more than one
    /// port range of connections fits).
    #[arg(long)]
    pub no_source_spread: bool,
    /// Spread each room's members over the --url nodes (client c connects to
    /// node c % U) instead of keeping a room on one node; for nodes joined by
    /// the relay.
    #[arg(long)]
    pub spread_rooms: bool,
    /// Run the workers under SCHED_BATCH: when the load generator shares the
    /// server's cores, its wake-ups (one per burst of frames) then do not
    /// preempt the server; it reads in longer runs, as clients on other
    /// machines would not take the server's core at all. Latency "at socket"
    /// (the kernel's receive time) is unaffected; read latency includes the wait.
    #[arg(long)]
    pub sched_batch: bool,
    /// Reconnect churn: each second this fraction of the clients (at random)
    /// drop their connection and log in again resuming their room (`since`),
    /// sending again, under the same `mid`, what they sent in the seconds
    /// before; every member must still see every message exactly once.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// `--churn`: milliseconds a dropped client stays away before it logs
    /// in again (what it misses meanwhile is replayed by its resume).
    #[arg(long, default_value_t = 500)]
    pub churn_away_ms: u64,
    /// This fraction of the messages is followed by a reaction (`react`, on then off
    /// in turn) from its sender to the last message it saw: room events that take
    /// their place in the sequence and fan out like messages.
    #[arg(long, default_value_t = 0.0)]
    pub reactions: f64,
    /// This fraction of the messages is followed by an edit (`edit`) from its sender of
    /// its own last message whose seq it knows (seen by a client of the same worker):
    /// a room event, stored and fanned out like a message.
    #[arg(long, default_value_t = 0.0)]
    pub edits: f64,
    /// This fraction of the messages is preceded by a `typing` from its sender (told
    /// to the room's other members, not stored, not in the sequence).
    #[arg(long, default_value_t = 0.0)]
    pub typing: f64,
    /// Client classes: "NAME:SHARE:THINK,…" — in every room the first SHARE of its
    /// members are the first class, and so on (shares add up to 1); a member sends
    /// about every THINK seconds (0: never, a lurker), i.e. the classes split --rate
    /// in proportion to SHARE / THINK. A scenario with classes and no rate sends
    /// Σ clients·SHARE/THINK messages a second.
    #[arg(long)]
    pub classes: Option<String>,
    /// This fraction of the messages is followed by a private message (`tid`) from its
    /// sender to the next member of its room; each must reach its target only.
    #[arg(long, default_value_t = 0.0)]
    pub private: f64,
    /// This fraction of the messages is followed by a history read (`getHistory`, a
    /// page of 50) from its sender; every read must be answered.
    #[arg(long, default_value_t = 0.0)]
    pub history_reads: f64,
    /// A client the server closes with 1012 (a node draining) reconnects after the hinted
    /// time to the other --url node with the fewest clients and resumes its room (`since`),
    /// sending again under their `mid` what it sent before (implies --mids); counted, not
    /// failures.
    #[arg(long)]
    pub follow_drain: bool,
    /// Give every message a client id (`mid`), as a client that resends
    /// would (implied by --churn).
    #[arg(long)]
    pub mids: bool,
    /// Run the workers on these agents (`loadgen agent --listen ADDR` on each client
    /// machine), host:port, comma-separated: the workers are shared out (worker i on
    /// agent i mod N), started at one instant (clock offsets measured and reported),
    /// and their measurements merged into one report. A lost agent fails the run.
    #[arg(long, value_delimiter = ',', requires = "agent_secret")]
    pub agents: Vec<String>,
    /// The secret the coordinator and its agents share (both prove they hold it;
    /// every line between them is authenticated with it).
    #[arg(long, env = "LOADGEN_AGENT_SECRET", hide_env_values = true)]
    pub agent_secret: Option<String>,
    /// A node's Prometheus endpoint (http://host:port/metrics: its --admin-listen) to
    /// sample each second during the run (CPU, memory, connections, queues); repeat
    /// for several nodes. The samples go in the JSON summary and the HTML report.
    #[arg(long = "server-metrics", value_name = "URL")]
    pub server_metrics: Vec<String>,
    /// Fail the run (exit 1) unless every term holds, e.g. "p99<=50ms,lost=0"
    /// (see `--objective` for the terms).
    #[arg(long, value_name = "OBJECTIVE")]
    pub assert: Option<String>,
    /// Step the rate until `--objective` breaks and report the highest rate that
    /// held, with every step's row: starting at --rate, multiplied by --step-factor
    /// while steps hold, then bisected to --precision. Each step is a whole run.
    #[arg(long)]
    pub find_max: bool,
    /// What a step must meet for --find-max: terms joined by commas, each MEASURE OP VALUE
    /// with OP one of <=, <, = — measures p50, p90, p99, p999, max, mean (ms, us or s),
    /// completion_p99 (and the other percentiles), lost, errors, refused, gaps, closed.
    /// The run's own checks (no loss, disorder or error) always apply.
    #[arg(long, default_value = "p99<=100ms")]
    pub objective: String,
    /// --find-max: rate multiplier between steps before the first break.
    #[arg(long, default_value_t = 2.0)]
    pub step_factor: f64,
    /// --find-max: stop bisecting when the highest rate that held and the lowest
    /// that broke are within this fraction of each other.
    #[arg(long, default_value_t = 0.1)]
    pub precision: f64,
    /// --find-max: at most this many steps.
    #[arg(long, default_value_t = 12)]
    pub max_steps: u32,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Internal: this process is worker I of --worker-count.
    #[arg(long, hide = true, requires = "worker_count")]
    pub worker_index: Option<u32>,
    /// Internal: number of worker processes.
    #[arg(long, hide = true)]
    pub worker_count: Option<u32>,
}

/// One target node.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `host:port` as given, for the Host header.
    pub host: String,
    /// Request path.
    pub path: String,
    /// wss:// (TLS).
    pub tls: bool,
}

impl Target {
    /// Parses `ws://host:port/path` or `wss://…` (port defaults to 80 or
    /// 443, path to `/`).
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => bail!("--url {url:?}: only ws:// and wss:// URLs are supported"),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            bail!("--url {url:?}: no host");
        }
        let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            host.to_string()
        } else {
            format!("{host}:{}", if tls { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("--url {url:?}: cannot resolve {with_port}"))?
            .next()
            .with_context(|| format!("--url {url:?}: no address"))?;
        Ok(Target { addr, host: host.to_string(), path: path.to_string(), tls })
    }
}

/// `loadgen agent`: run workers for a coordinator on another machine.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen agent", about = "Runs loadgen workers for a coordinator (loadgen --agents …)")]
pub struct AgentArgs {
    /// Address to listen on for coordinators, e.g. 0.0.0.0:7070.
    #[arg(long)]
    pub listen: String,
    /// The secret shared with the coordinator.
    #[arg(long, env = "LOADGEN_AGENT_SECRET", hide_env_values = true)]
    pub agent_secret: String,
}

/// Validated settings shared by the coordinator and every worker.
#[derive(Debug, Clone)]
pub struct Config {
    /// The flags as given (workers are started with the same ones).
    pub args: Args,
    /// Nodes, in --url order.
    pub targets: Vec<Target>,
    /// Clients in total.
    pub clients: u32,
    /// Members per room.
    pub room_size: u32,
    /// Messages per second in total.
    pub rate: f64,
    /// Bytes of `msg`.
    pub payload: usize,
    /// Bind sockets to spread 127.x source addresses.
    pub source_spread: bool,
    /// Every target is on this machine (its kernel's sockets are sampled).
    pub local: bool,
    /// `--server-metrics` endpoints.
    pub server_metrics: Vec<crate::sampler::Endpoint>,
    /// `--stages`, if given.
    pub ramp: Option<crate::schedule::Ramp>,
    /// `--classes`, if given (else every member alike).
    pub classes: crate::plan::Classes,
    /// TLS client settings, when a target is wss://.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// One client class of `--classes`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSpec {
    /// Its name.
    pub name: String,
    /// Its share of every room's members.
    pub share: f64,
    /// Seconds between a member's messages (0: never sends).
    pub think_s: f64,
}

/// `--classes "lurker:0.8:0,talker:0.2:30"`.
pub fn parse_classes(text: &str) -> anyhow::Result<Vec<ClassSpec>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let f: Vec<&str> = part.split(':').collect();
        let [name, share, think] = f[..] else { bail!("{part:?}: want NAME:SHARE:THINK") };
        let share: f64 = share.parse().with_context(|| format!("{part:?}: {share:?} is not a share"))?;
        let think_s: f64 =
            think.trim_end_matches('s').parse().with_context(|| format!("{part:?}: {think:?} is not seconds"))?;
        if !(share.is_finite() && (0.0..=1.0).contains(&share) && think_s.is_finite() && think_s >= 0.0) {
            bail!("{part:?}: a share from 0 to 1 and seconds not negative");
        }
        out.push(ClassSpec { name: name.to_string(), share, think_s });
    }
    Ok(out)
}

/// Send weights of the classes: in proportion to 1/THINK, the slowest
/// sender 1 (at most 1,000).
pub fn class_weights(classes: &[ClassSpec]) -> Vec<u16> {
    let slowest = classes.iter().map(|c| c.think_s).fold(0.0, f64::max);
    classes
        .iter()
        .map(|c| if c.think_s > 0.0 { (slowest / c.think_s).round().clamp(1.0, 1000.0) as u16 } else { 0 })
        .collect()
}

/// Messages a second the classes send together: Σ clients·SHARE/THINK.
pub fn class_rate(classes: &[ClassSpec], clients: u32) -> f64 {
    classes.iter().filter(|c| c.think_s > 0.0).map(|c| clients as f64 * c.share / c.think_s).sum()
}

/// `--stages "10:100,30:100"`: (seconds, msg/s) pairs.
pub fn parse_stages(text: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (d, r) = part.split_once(':').with_context(|| format!("{part:?}: want SECONDS:RATE"))?;
        let (d, r): (f64, f64) = (
            d.trim().trim_end_matches('s').parse().with_context(|| format!("{part:?}: {d:?} is not seconds"))?,
            r.trim().parse().with_context(|| format!("{part:?}: {r:?} is not a rate"))?,
        );
        if !(d.is_finite() && d > 0.0 && r.is_finite() && r >= 0.0) {
            bail!("{part:?}: seconds must be positive and the rate not negative");
        }
        out.push((d, r));
    }
    if out.is_empty() {
        bail!("no stages");
    }
    Ok(out)
}

impl Config {
    /// The run's send schedule, from `t0`.
    pub fn schedule(&self, t0: u64) -> crate::schedule::Schedule {
        match self.ramp {
            Some(r) => crate::schedule::Schedule::ramped(t0, self.rate, self.args.warmup, r),
            None => crate::schedule::Schedule::new(t0, self.rate, self.args.warmup, self.args.duration),
        }
    }
}

/// A TLS client trusting the certificates in `ca` (PEM).
fn tls_config(ca: &std::path::Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("--tls-ca {}", ca.display()))? {
        roots.add(c.with_context(|| format!("--tls-ca {}: not PEM certificates", ca.display()))?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

/// The shortest `msg` loadgen can send: 16 hex digits of send time, 8 of id.
pub const MIN_PAYLOAD: usize = crate::scan::MSG_HEAD;

impl Config {
    /// Checks the flags and resolves the URLs.
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        if args.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if args.room_size == 0 {
            bail!("--room-size must be at least 1");
        }
        if !(args.rate > 0.0 && args.rate.is_finite()) {
            bail!("--rate must be a positive number");
        }
        for (flag, v) in [
            ("--duration", args.duration),
            ("--warmup", args.warmup),
            ("--drain", args.drain),
            ("--connect-timeout", args.connect_timeout),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{flag} must be a non-negative number of seconds");
            }
        }
        if args.duration <= 0.0 {
            bail!("--duration must be positive");
        }
        if !(0.0..=1.0).contains(&args.typing) {
            bail!("--typing must be a fraction of the messages, from 0 to 1");
        }
        if !(0.0..=1.0).contains(&args.reactions) {
            bail!("--reactions must be a fraction of the messages, from 0 to 1");
        }
        if !(0.0..=1.0).contains(&args.private) {
            bail!("--private must be a fraction of the messages, from 0 to 1");
        }
        if !(0.0..=1.0).contains(&args.history_reads) {
            bail!("--history-reads must be a fraction of the messages, from 0 to 1");
        }
        if !(0.0..=1.0).contains(&args.edits) {
            bail!("--edits must be a fraction of the messages, from 0 to 1");
        }
        if !(0.0..=1.0).contains(&args.churn) {
            bail!("--churn must be a fraction of the clients per second, from 0 to 1");
        }
        if args.payload < MIN_PAYLOAD {
            bail!("--payload must be at least {MIN_PAYLOAD} bytes (send time and message id)");
        }
        if args.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if args.workers == Some(0) || args.clients_per_worker == 0 {
            bail!("--workers and --clients-per-worker must be at least 1");
        }
        if args.find_max {
            if !(args.step_factor.is_finite() && args.step_factor > 1.0) {
                bail!("--step-factor must be above 1");
            }
            if !(args.precision.is_finite() && args.precision > 0.0) {
                bail!("--precision must be a positive fraction");
            }
            if args.max_steps == 0 {
                bail!("--max-steps must be at least 1");
            }
        }
        let ramp = match &args.stages {
            Some(text) => {
                let stages = parse_stages(text).context("--stages")?;
                if args.find_max {
                    bail!("--find-max steps a constant rate: it cannot take --stages");
                }
                Some(crate::schedule::Ramp::new(&stages).context("--stages: at most 32 stages")?)
            }
            None => None,
        };
        let classes = match &args.classes {
            Some(text) => {
                let c = parse_classes(text).context("--classes")?;
                let weights = class_weights(&c);
                let pairs: Vec<(f64, u16)> = c.iter().zip(weights).map(|(c, w)| (c.share, w)).collect();
                crate::plan::Classes::new(&pairs).context(
                    "--classes: 1 to 8 classes whose shares add up to 1, at least one that sends (THINK > 0)",
                )?
            }
            None => crate::plan::Classes::default(),
        };
        let mut args = args;
        if let Some(r) = &ramp {
            args.duration = r.duration();
        }
        let msgs = match &ramp {
            Some(r) => args.warmup * args.rate + r.messages(args.rate),
            None => (args.warmup + args.duration) * args.rate,
        };
        if msgs >= u32::MAX as f64 {
            bail!("--rate × (--warmup + --duration) (or the stages' messages) must stay under 2^32 messages");
        }
        let targets = args.urls.iter().map(|u| Target::parse(u)).collect::<anyhow::Result<Vec<_>>>()?;
        let loopback = targets.iter().all(|t| matches!(t.addr, SocketAddr::V4(a) if a.ip().is_loopback()));
        let tls = if targets.iter().any(|t| t.tls) {
            let Some(ca) = &args.tls_ca else { bail!("wss:// URLs need --tls-ca FILE (the certificate to trust)") };
            Some(tls_config(ca)?)
        } else {
            None
        };
        Ok(Config {
            tls,
            clients: args.clients,
            room_size: args.room_size,
            rate: args.rate,
            payload: args.payload,
            source_spread: loopback && !args.no_source_spread,
            local: loopback,
            ramp,
            classes,
            server_metrics: args
                .server_metrics
                .iter()
                .map(|u| crate::sampler::Endpoint::parse(u))
                .collect::<anyhow::Result<Vec<_>>>()?,
            targets,
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("ws://127.0.0.1:9503/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9503".parse().unwrap());
        assert_eq!((t.host.as_str(), t.path.as_str()), ("127.0.0.1:9503", "/"));
        let t = Target::parse("ws://127.0.0.1:9/chat?x=1").unwrap();
        assert_eq!(t.path, "/chat?x=1");
        let t = Target::parse("ws://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = Target::parse("wss://127.0.0.1/").unwrap();
        assert_eq!((t.addr.port(), t.tls), (443, true));
        assert!(!Target::parse("ws://127.0.0.1:1/").unwrap().tls);
        assert!(Target::parse("http://127.0.0.1:1/").is_err());
        assert!(Target::parse("ws:///").is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["loadgen", "--url", "ws://127.0.0.1:1/"];
            v.extend_from_slice(extra);
            Config::from_args(Args::try_parse_from(v).unwrap())
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--payload", "10"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--room-size", "0"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&[]).unwrap().source_spread);
        assert!(!parse(&["--no-source-spread"]).unwrap().source_spread);
    }
}
