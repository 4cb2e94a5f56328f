//! Test support: real server processes and real WebSocket clients on 127.0.0.1.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cert;
pub mod procs;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod webdriver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// A `cchat` process listening on an ephemeral port; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// A data directory made for this server (removed on drop); None when
    /// the test named its own with `--data-dir`.
    pub own_data: Option<std::path::PathBuf>,
}

/// A port for a server a test starts itself on a port it names (a relay, an
/// admin listener, redis-server, chromedriver): chosen below the kernel's
/// ephemeral range (32768–60999), where the suite's many client sockets take
/// their local ports and could take a port between its choice and the
/// server's bind; a process-wide counter keeps two tests of this run from
/// choosing the same one; a bind checks that no other process holds it.
/// Polls `cond` every 50 ms until it holds; fails after 10 s, saying `what`
/// did not happen.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start each test process somewhere else in the span.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fresh, empty data directory under the system's temp dir.
pub fn temp_data_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cchat-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    /// Starts `cchat --listen 127.0.0.1:0` with extra flags and waits for
    /// its `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        Server::try_start_on("127.0.0.1:0", args).expect("cchat did not start")
    }

    /// Starts `cchat --listen LISTEN` (no ephemeral port) with extra flags.
    /// Returns `None` when the process exits before printing its
    /// `listening on` line (e.g. the address is still in use), so a caller
    /// can retry a restart on the same port.
    /// Every server gets a data directory of its own unless `args` names one.
    pub fn try_start_on(listen: &str, args: &[&str]) -> Option<Server> {
        let own_data = (!args.contains(&"--data-dir")).then(temp_data_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cchat"));
        cmd.args(["--listen", listen]).args(args);
        if let Some(d) = &own_data {
            cmd.arg("--data-dir").arg(d);
        }
        cmd.env("RUST_LOG", std::env::var("CCHAT_TEST_LOG").unwrap_or_else(|_| "error".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = procs::spawn(&mut cmd).expect("start cchat");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let addr = line.trim().strip_prefix("listening on ").and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Some(Server { child, addr, own_data }),
            None => {
                procs::reap(&mut child);
                None
            }
        }
    }

    /// Starts `cchat --listen 127.0.0.1:0` with at most `nofile` open
    /// descriptors and its log (warnings and up) written to `log`.
    pub fn start_with_fd_limit(args: &[&str], nofile: u64, log: &std::path::Path) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cchat"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap());
        // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = procs::spawn(&mut cmd).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}")).parse().unwrap();
        Server { child, addr, own_data: None }
    }

    /// Kills the process and waits for it to exit (the port is free after).
    pub fn kill(&mut self) {
        procs::reap(&mut self.child);
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A plain HTTP GET; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// A metric's value from /metrics (sum over labels).
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_values(name).iter().sum()
    }

    /// Every value of a metric, one per label set (e.g. one per shard).
    pub fn metric_values(&self, name: &str) -> Vec<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect()
    }

    /// Waits until every shard of the server routes by a cluster view of
    /// `nodes` live nodes.
    #[allow(dead_code)]
    pub fn wait_view(&self, nodes: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.metric_values("cchat_shard_cluster_nodes");
            if !v.is_empty() && v.iter().all(|&n| n as usize == nodes) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "shards did not apply a view of {nodes} nodes: {v:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        unsafe { libc_kill(self.child.id() as i32, sig) };
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        procs::reap(&mut self.child);
        if let Some(d) = &self.own_data {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs a scenario against a server with one shard and against one with
/// three (where members of one room sit on different shards); no rate limit.
pub fn for_shards(f: impl Fn(&Server)) {
    for shards in ["1", "3"] {
        let s = Server::start(&["--shards", shards, "--rate-limit", "0"]);
        f(&s);
    }
}

/// The messages of a getHistory reply as (epoch, seq, msg), oldest first.
pub fn history_msgs(h: &Value) -> Vec<(u64, u64, String)> {
    h["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["epoch"].as_u64().unwrap(), m["seq"].as_u64().unwrap(), m["msg"].as_str().unwrap().to_owned()))
        .collect()
}

/// Makes a data directory look as if the machine had rebooted since its
/// last run (another boot id in its state file).
pub fn pretend_reboot(data: &std::path::Path) {
    let state = data.join("state");
    let text: String = std::fs::read_to_string(&state)
        .unwrap()
        .lines()
        .map(|l| if l.starts_with("boot=") { "boot=another-boot\n".to_owned() } else { format!("{l}\n") })
        .collect();
    std::fs::write(&state, text).unwrap();
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A TLS connection of a test client.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client's socket: plain TCP, or TLS (rustls) to a server with `--tls-cert`.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(d)
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        self.tcp().shutdown(how)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A WebSocket client (tungstenite) with a read timeout.
pub struct Client {
    pub ws: WebSocket<Stream>,
    /// With a server that wants signed logins: the HS256 secret its logins
    /// are signed with (`sub` is the login's uid, or a fresh one).
    pub token_secret: Option<String>,
}

/// A TLS connection (rustls) to `addr` as `localhost`, trusting only `ca`.
pub fn tls_stream(addr: SocketAddr, ca: &std::path::Path) -> Tls {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.set_nodelay(true).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// An HS256 token for `sub`, valid for five minutes.
pub fn sign_token(secret: &str, sub: &str) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A uid for a signed login that named none.
pub fn fresh_uid() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("u{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, _) =
            tungstenite::client(format!("ws://{addr}/chat"), Stream::Plain(stream)).expect("websocket handshake");
        Client { ws, token_secret: None }
    }

    /// A wss:// client trusting only `ca`; with `secret`, its logins are
    /// signed with it.
    pub fn connect_tls(addr: SocketAddr, ca: &std::path::Path, secret: Option<&str>) -> Client {
        let tls = Stream::Tls(Box::new(tls_stream(addr, ca)));
        let url = format!("wss://localhost:{}/chat", addr.port());
        let (ws, resp) = tungstenite::client(url, tls).expect("wss handshake");
        assert_eq!(resp.status(), 101);
        Client { ws, token_secret: secret.map(str::to_owned) }
    }

    /// Adds a signed token for `uid` to a login (when logins are signed).
    fn sign(&self, login: &mut Value, uid: Option<&str>) {
        if let Some(secret) = &self.token_secret {
            let sub = uid.map(str::to_owned).unwrap_or_else(fresh_uid);
            login["token"] = json!(sign_token(secret, &sub));
        }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).unwrap();
    }

    /// The next text frame as JSON (pings are answered by tungstenite).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read frame") {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
                Message::Close(c) => panic!("closed by server: {c:?}"),
                _ => {}
            }
        }
    }

    /// Reads frames until one with this `cmd` arrives; fails on any other.
    pub fn expect(&mut self, cmd: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["cmd"], cmd, "expected {cmd}, got {v}");
        v
    }

    /// Expects an error reply with this code.
    pub fn expect_error(&mut self, code: i64) -> Value {
        let v = self.expect("error");
        assert_eq!(v["errCode"], code, "{v}");
        assert!(v["errMsg"].is_string(), "{v}");
        v
    }

    /// Asserts that no text frame arrives within `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        self.ws.get_mut().set_read_timeout(Some(d)).unwrap();
        match self.ws.read() {
            Ok(Message::Text(t)) => panic!("unexpected frame {t}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
        self.ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    }

    /// Reads until the server closes; returns the close code.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(Some(CloseFrame { code, .. }))) => return code.into(),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => {}
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
        panic!("no close frame");
    }

    /// Logs in and returns the ack.
    pub fn login(&mut self, name: &str, rid: &str, uid: Option<&str>) -> Value {
        let mut v = json!({"cmd": "login", "name": name, "rid": rid});
        if let Some(u) = uid {
            v["uid"] = json!(u);
        }
        self.sign(&mut v, uid);
        self.send(v);
        let ack = self.expect("login");
        assert_eq!(ack["rid"], rid);
        ack
    }

    /// Logs in with `echo` (the connection gets its own messages) and
    /// returns the ack.
    pub fn login_echo(&mut self, name: &str, rid: &str, uid: &str) -> Value {
        let mut v = json!({"cmd":"login","name":name,"rid":rid,"uid":uid,"echo":true});
        self.sign(&mut v, Some(uid));
        self.send(v);
        let ack = self.expect("login");
        assert_eq!(ack["rid"], rid);
        ack
    }

    /// Sends `msg` (the connection has `echo`): Ok((epoch, seq)) once it
    /// comes back, Err(errMsg) when it is refused.
    pub fn say_acked(&mut self, rid: &str, msg: &str) -> Result<(u64, u64), String> {
        self.say(rid, msg);
        loop {
            let v = self.recv();
            match v["cmd"].as_str() {
                Some("message") if v["msg"] == msg => {
                    return Ok((v["epoch"].as_u64().unwrap(), v["seq"].as_u64().unwrap()));
                }
                Some("error") => return Err(v["errMsg"].as_str().unwrap_or("").to_owned()),
                _ => {}
            }
        }
    }

    /// The texts of the room messages that arrive until `quiet` passes
    /// without a frame.
    pub fn drain_texts(&mut self, quiet: Duration) -> Vec<String> {
        let mut got = Vec::new();
        self.ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
        while let Ok(Message::Text(t)) = self.ws.read() {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["cmd"] == "message" {
                got.push(v["msg"].as_str().unwrap().to_owned());
            }
        }
        self.ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
        got
    }

    pub fn say(&mut self, rid: &str, msg: &str) {
        self.send(json!({"cmd": "message", "type": "text", "msg": msg, "rid": rid}));
    }
}

/// The request of a plain WebSocket upgrade of `/` (with RFC 6455's sample key).
pub const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The FIN bit of a frame's first byte: the frame ends its message.
pub const FIN: u8 = 0x80;

/// A client frame with a chosen first byte (FIN | RSV | opcode), masked or
/// not, as `cchat::ws::client_frame` lays it out: also the frames a client
/// library would refuse to send (not final, reserved bits, unmasked).
pub fn raw_frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = Vec::new();
    cchat::ws::client_frame(&mut f, 0, payload, [0x11, 0x5a, 0xc3, 0x07]);
    f[0] = b0;
    if !masked {
        // No mask bit, no key, and the payload as it is.
        f[1] &= 0x7f;
        f.truncate(f.len() - 4 - payload.len());
        f.extend_from_slice(payload);
    }
    f
}

/// A raw TCP connection that has completed the WebSocket upgrade, for
/// sending frames a well-behaved client library would refuse to send.
pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_with(addr, &[])
    }

    /// Upgrades with `early` bytes (frames, say) sent in the same write as
    /// the request.
    pub fn connect_with(addr: SocketAddr, early: &[u8]) -> Raw {
        Raw::try_connect(addr, TIMEOUT, early).expect("no 101: the server hung up or did not answer")
    }

    /// Upgrades with `early` bytes sent in the same write as the request;
    /// None if the server hangs up or sends no 101 within `wait`. Bytes
    /// that came with the 101 stay in `buf`.
    pub fn try_connect(addr: SocketAddr, wait: Duration, early: &[u8]) -> Option<Raw> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(wait)).unwrap();
        s.write_all(&[UPGRADE.as_bytes(), early].concat()).unwrap();
        let mut buf = Vec::new();
        let mut b = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                _ => return None,
            }
        }
        assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        Some(Raw { s, buf })
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Sends a masked client frame.
    pub fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.write(&raw_frame(FIN | opcode, payload, true));
    }

    /// Next server frame: (opcode, payload). None at EOF.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        self.read_frame_b0().map(|(b0, p)| (b0 & 0x0f, p))
    }

    /// Next server frame: (its first byte: FIN, RSV bits, opcode; payload). None at EOF.
    pub fn read_frame_b0(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((_, r, used)) = cchat::ws::parse_server_frame(&self.buf).unwrap() {
                let (b0, p) = (self.buf[0], self.buf[r].to_vec());
                self.buf.drain(..used);
                return Some((b0, p));
            }
            let mut b = [0u8; 4096];
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads until a close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        while let Some((op, p)) = self.read_frame() {
            if op == 8 {
                return u16::from_be_bytes([p[0], p[1]]);
            }
        }
        panic!("EOF without close frame");
    }
}
