//! A real `redis-server` for the shared-store tests, on a free port with a
//! directory of its own; killed on drop.
//!
//! `CCHAT_TEST_REDIS_SERVER` and `CCHAT_TEST_REDIS_CLI` name another server
//! and its cli (e.g. `valkey-server`, `valkey-cli`) to run the same tests
//! against a Redis-compatible server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    /// With TLS and a password (see [`Redis::start_secure`]).
    secure: bool,
}

pub const PASSWORD: &str = "s3cret";

/// The server program the tests start (`redis-server` unless the environment
/// names another).
fn server_program() -> String {
    std::env::var("CCHAT_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn cli_program() -> String {
    std::env::var("CCHAT_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

impl Redis {
    /// Starts one with an append-only file fsynced at every write, so that a
    /// killed and restarted server has every acknowledged write.
    pub fn start() -> Redis {
        let dir = super::temp_data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        Redis::first_start(dir, false)
    }

    /// Starts it on a free port; a server that exits at once (another
    /// process took the port) is started again on another.
    fn first_start(dir: PathBuf, secure: bool) -> Redis {
        let mut r = Redis { child: None, port: 0, dir, secure };
        let mut last = String::new();
        for _ in 0..5 {
            r.port = super::free_port();
            match r.try_start() {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Starts one that speaks only TLS (a self-signed certificate for
    /// 127.0.0.1, `ca()`) and wants a password.
    pub fn start_secure() -> Redis {
        let dir = super::temp_data_dir();
        super::cert::make_cert(&dir, "redis");
        Redis::first_start(dir, true)
    }

    /// The certificate a secure one presents (its own CA).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// Starts the server again on its port and directory.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("redis-server did not start again: {e}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new(server_program());
        if self.secure {
            let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
            cmd.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no", "--requirepass", PASSWORD]);
            cmd.arg("--tls-cert-file").arg(cert).arg("--tls-key-file").arg(key);
        } else {
            cmd.args(["--port", &port]);
        }
        // A server still running (restarted without a kill) goes first.
        self.kill();
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = super::procs::spawn(&mut cmd).expect("redis-server (apt-get install redis-server)");
        let ready = wait_ready(&mut child, &self.dir.join("redis.log"), || self.try_cmd(&["PING"]).is_ok());
        self.child = Some(child);
        if ready.is_err() {
            self.kill();
        }
        ready
    }

    /// Sends the server a signal (SIGSTOP pauses it, SIGCONT resumes it).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: a signal to a child this guard owns.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::procs::reap(&mut c);
        }
    }

    pub fn url(&self) -> String {
        if self.secure {
            format!("rediss://:{PASSWORD}@127.0.0.1:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    pub fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = if self.secure {
            let root_cert = Some(std::fs::read(self.ca()).unwrap());
            redis::Client::build_with_tls(self.url(), redis::TlsCertificates { client_tls: None, root_cert })?
        } else {
            redis::Client::open(self.url())?
        };
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut con)
    }

    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args).expect("redis command")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `up()` answers, for up to 30 s; a server that exits first
/// (its port was taken) or never answers is an error with its log's tail.
fn wait_ready(child: &mut Child, log: &std::path::Path, up: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if up() {
            return Ok(());
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let why = if exited { "exited" } else { "no answer in 30 s" };
            return Err(format!("{why}; its log ends: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real three-node Redis Cluster (no replicas) on free ports; killed on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = super::temp_data_dir();
        let mut c = RedisCluster { nodes: Vec::new(), ports: Vec::new(), dir };
        for _ in 0..3 {
            let mut last = String::new();
            let started = (0..5).find_map(|_| {
                let p = super::free_port();
                let d = c.dir.join(p.to_string());
                std::fs::create_dir_all(&d).unwrap();
                let log = d.join("redis.log");
                let mut cmd = Command::new(server_program());
                cmd.args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(&d)
                    .arg("--logfile")
                    .arg(&log)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let mut child = super::procs::spawn(&mut cmd).expect("redis-server");
                let up = || {
                    redis::Client::open(format!("redis://127.0.0.1:{p}"))
                        .and_then(|cl| cl.get_connection_with_timeout(Duration::from_secs(1)))
                        .is_ok()
                };
                match wait_ready(&mut child, &log, up) {
                    Ok(()) => Some((child, p)),
                    Err(e) => {
                        super::procs::reap(&mut child);
                        last = e;
                        None
                    }
                }
            });
            let (child, p) = started.unwrap_or_else(|| panic!("a cluster node did not start: {last}"));
            c.nodes.push(child);
            c.ports.push(p);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let addrs: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let st = Command::new(cli_program())
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (Debian package redis-tools, with redis-server)");
        assert!(st.success(), "redis-cli --cluster create failed");
        // Every node must agree the cluster is up before it is used.
        for p in &c.ports {
            loop {
                let info: String = redis::Client::open(format!("redis://127.0.0.1:{p}"))
                    .and_then(|cl| cl.get_connection())
                    .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query(&mut con))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline + Duration::from_secs(10), "the cluster never got ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        c
    }

    /// Keys per node (each holds some of the rooms).
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.ports
            .iter()
            .map(|p| {
                let mut con = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap().get_connection().unwrap();
                redis::cmd("DBSIZE").query::<usize>(&mut con).unwrap()
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            super::procs::reap(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
