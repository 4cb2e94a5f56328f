//! Shared by the cargo benches in bench/: a server process, raw WebSocket
//! clients, and /proc readings of the server's CPU time and memory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

/// A `cchat` process (release build of the bench profile); killed on drop.
pub(crate) struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    data: std::path::PathBuf,
}

impl Server {
    pub(crate) fn start(args: &[&str]) -> Server {
        // Each server logs into a fresh directory (`DURABILITY=memory` and the
        // other modes pick what the benches measure; `written` by default).
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("cchat-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let durability = std::env::var("DURABILITY").unwrap_or_else(|_| "written".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cchat"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--durability", &durability])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cchat");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").expect("listening line").parse().unwrap();
        Server { child, addr, data }
    }

    /// User + system CPU time of the server so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cchat::procfs::process_cpu_ns(self.child.id()).expect("server's /proc/PID/stat") as f64 / 1e9
    }

    /// Resident set size in bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Opens a WebSocket (raw socket, handshake by hand) and logs in.
pub(crate) fn connect_and_login(addr: SocketAddr, uid: &str, rid: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    send_text(&mut s, &format!(r#"{{"cmd":"login","name":"n{uid}","rid":"{rid}","uid":"{uid}"}}"#));
    // Read until the login ack (newUser frames may come first).
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        let mut off = 0;
        while let Some((_, r, used)) = cchat::ws::parse_server_frame(&buf[off..]).unwrap() {
            let body = &buf[off..][r];
            if body.starts_with(br#"{"cmd":"login""#) {
                return s;
            }
            off += used;
        }
        buf.drain(..off);
    }
}

pub(crate) fn send_text(s: &mut TcpStream, text: &str) {
    let mut f = Vec::new();
    cchat::ws::client_frame(&mut f, 1, text.as_bytes(), [1, 2, 3, 4]);
    s.write_all(&f).unwrap();
}

/// `bench/results/DATE-NAME/DATE-NAME.md` (a folder per recorded run), with
/// the machine described.
pub(crate) fn write_result(name: &str, command: &str, body: &str) {
    let date = Command::new("date").arg("+%Y-%m-%d").output().unwrap();
    let date = String::from_utf8_lossy(&date.stdout).trim().to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout).trim().to_owned();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = format!("{}/bench/results/{date}-{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = format!("{dir}/{date}-{name}.md");
    let text = format!(
        "# {name}\n\n- date: {date}\n- command: `{command}`\n- machine: {nproc} cores, {cpu}, Linux {kernel} (shared, noisy)\n\n{body}\n"
    );
    std::fs::write(&path, text).unwrap();
    println!("wrote {path}");
}
