//! The server side of a run: each second, the `/metrics` of every
//! `--server-metrics` URL (CPU, memory, connections, queues, relay, log)
//! and, when the targets are on this machine, the kernel's socket memory
//! (`/proc/net/sockstat`). A thread beside the run; plain HTTP/1.0.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

/// The metrics kept from each node (summed over their labels).
const KEPT: [&str; 9] = [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "cchat_connections",
    "cchat_deliveries_total",
    "cchat_messages_in_total",
    "cchat_shard_queue_depth",
    "cchat_relay_queue_bytes",
    "cchat_relay_frames_out_total",
    "cchat_log_size_bytes",
];

/// One reading.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// The node's index in `--server-metrics` (None: this machine's kernel).
    pub node: Option<usize>,
    /// Metric name → value (`kernel_tcp_mem_bytes`, `kernel_sockets_used`
    /// for the kernel).
    pub values: BTreeMap<String, f64>,
}

/// A `/metrics` endpoint: `http://host:port/path`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    path: String,
}

impl Endpoint {
    /// Parses `http://host:port/metrics` (the admin listener's).
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--server-metrics {url:?}: an http:// URL of a node's /metrics (its --admin-listen)")
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        host.to_socket_addrs().with_context(|| format!("--server-metrics {url:?}: cannot resolve {host}"))?;
        Ok(Endpoint { host: host.to_string(), path: path.to_string() })
    }

    /// One GET of the exposition text.
    fn fetch(&self) -> Option<String> {
        let addr = self.host.to_socket_addrs().ok()?.next()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        write!(s, "GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", self.path, self.host).ok()?;
        let mut body = String::new();
        s.take(4 << 20).read_to_string(&mut body).ok()?;
        let at = body.find("\r\n\r\n")?;
        body.get(9..12).filter(|c| *c == "200")?;
        Some(body[at + 4..].to_string())
    }
}

/// The kept metrics of one exposition text, each summed over its labels.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        if !KEPT.contains(&name) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// The kernel's TCP socket memory (bytes) and sockets in use, from
/// `/proc/net/sockstat`.
pub fn parse_sockstat(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let page = 4096.0;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let kind = f.next().unwrap_or("");
        let pairs: Vec<&str> = f.collect();
        for kv in pairs.chunks(2) {
            let [k, v] = kv else { continue };
            let Ok(v) = v.parse::<f64>() else { continue };
            match (kind, *k) {
                ("sockets:", "used") => drop(out.insert("kernel_sockets_used".to_string(), v)),
                ("TCP:", "mem") => drop(out.insert("kernel_tcp_mem_bytes".to_string(), v * page)),
                ("TCP:", "inuse") => drop(out.insert("kernel_tcp_inuse".to_string(), v)),
                _ => {}
            }
        }
    }
    out
}

/// A sampling thread; `stop` ends it and returns what it read.
#[derive(Debug)]
pub struct Sampler {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `nodes` (and the kernel when `local`) every second.
    pub fn start(nodes: Vec<Endpoint>, local: bool) -> Option<Sampler> {
        if nodes.is_empty() && !local {
            return None;
        }
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Vec::new();
            let mut next = t0;
            while !d.load(Relaxed) {
                let t_s = t0.elapsed().as_secs_f64();
                for (i, n) in nodes.iter().enumerate() {
                    if let Some(text) = n.fetch() {
                        out.push(Sample { t_s, node: Some(i), values: parse_metrics(&text) });
                    }
                }
                if local && let Ok(text) = std::fs::read_to_string("/proc/net/sockstat") {
                    out.push(Sample { t_s, node: None, values: parse_sockstat(&text) });
                }
                next += Duration::from_secs(1);
                while !d.load(Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            out
        });
        Some(Sampler { done, thread })
    }

    /// Stops and returns the samples.
    pub fn stop(self) -> Vec<Sample> {
        self.done.store(true, Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_metrics_are_summed_over_labels() {
        let text = "# HELP cchat_connections x\n# TYPE cchat_connections gauge\ncchat_connections 12\n\
                    cchat_shard_queue_depth{shard=\"0\"} 3\ncchat_shard_queue_depth{shard=\"1\"} 4\n\
                    cchat_other 9\nprocess_cpu_seconds_total 1.5\n";
        let m = parse_metrics(text);
        assert_eq!(m["cchat_connections"], 12.0);
        assert_eq!(m["cchat_shard_queue_depth"], 7.0);
        assert_eq!(m["process_cpu_seconds_total"], 1.5);
        assert!(!m.contains_key("cchat_other"));
    }

    #[test]
    fn sockstat_gives_bytes_and_sockets() {
        let text = "sockets: used 1234\nTCP: inuse 40 orphan 0 tw 3 alloc 50 mem 10\nUDP: inuse 1 mem 2\n";
        let m = parse_sockstat(text);
        assert_eq!(m["kernel_sockets_used"], 1234.0);
        assert_eq!(m["kernel_tcp_mem_bytes"], 40960.0);
        assert_eq!(m["kernel_tcp_inuse"], 40.0);
    }

    #[test]
    fn only_http_urls() {
        assert!(Endpoint::parse("ws://127.0.0.1:1/").is_err());
        assert_eq!(Endpoint::parse("http://127.0.0.1:9/").unwrap().path, "/");
        assert_eq!(Endpoint::parse("http://127.0.0.1:9").unwrap().path, "/metrics");
    }
}
