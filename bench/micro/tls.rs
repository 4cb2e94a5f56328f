//! Broadcast over TLS against plain, side by side in one run: server CPU
//! per delivery and latency.
//!
//! `cargo bench --bench tls` (writes bench/results/DATE-tls/; `CLIENTS`,
//! `RATE`, `SECS` change the load). For each mode a fresh server (`--shards
//! 2 --rate-limit 0`, TLS with a certificate made by openssl) gets CLIENTS
//! readers (default 1,000) in rooms of 100 plus one sender per room; the
//! senders post RATE messages/s in all (default 1,000, so ~100,000
//! deliveries/s) for SECS seconds (default 10) after a second of warm-up.
//! Each message carries its send time; each reader (a thread with a
//! blocking tungstenite client, over rustls for TLS) records its latency.
//! Server CPU comes from /proc over the measured seconds. Target (issue 13):
//! CPU per delivery with TLS <= 1.5x plain (the batched path seals all of a
//! socket's queued frames into records and sends them at once).

#[path = "../../tests/common/cert.rs"]
mod cert;
#[path = "support.rs"]
mod support;

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::{Message, WebSocket};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

trait Stream: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Stream for T {}

fn connect(addr: std::net::SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> WebSocket<Box<dyn Stream>> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    let stream: Box<dyn Stream> = match tls {
        Some(cfg) => {
            let conn = rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
            Box::new(rustls::StreamOwned::new(conn, sock))
        }
        None => Box::new(sock),
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let (ws, _) = tungstenite::client(format!("{scheme}://localhost:{}/", addr.port()), stream).expect("upgrade");
    ws
}

fn login(ws: &mut WebSocket<Box<dyn Stream>>, uid: &str, rid: &str) {
    ws.send(Message::text(format!(r#"{{"cmd":"login","name":"n","uid":"{uid}","rid":"{rid}"}}"#))).unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap()
            && t.starts_with(r#"{"cmd":"login""#)
        {
            return;
        }
    }
}

fn client_config(cert: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn main() {
    let (clients, rate, secs) = (env("CLIENTS", 1000) as usize, env("RATE", 1000), env("SECS", 10));
    let rooms = clients.div_ceil(100);
    let dir = std::env::temp_dir().join(format!("cchat-bench-tls-{}", std::process::id()));
    cert::make_cert(&dir, "localhost");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut rows = String::from(
        "| mode | clients | deliveries/s | missing (approx., window edges) | p50 | p99 | max | server CPU per delivery | server RSS per idle connection |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut per_delivery = Vec::new();
    for tls in [false, true] {
        let mut args = vec!["--shards", "2", "--rate-limit", "0"];
        if tls {
            args.extend(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
        }
        let server = support::Server::start(&args);
        let cfg = tls.then(|| client_config(&cert));
        let start = Instant::now();
        let measuring = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::sleep(Duration::from_millis(300));
        let rss0 = server.rss_bytes();
        let mut readers = Vec::new();
        for c in 0..clients {
            let mut ws = connect(server.addr, cfg.as_ref());
            login(&mut ws, &format!("u{c}"), &format!("r{}", c / 100));
            let (measuring, received, hist, stop) = (measuring.clone(), received.clone(), hist.clone(), stop.clone());
            readers.push(std::thread::spawn(move || {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    match ws.read() {
                        Ok(Message::Text(t)) => {
                            let Some(at) = t.find(r#""msg":"t="#) else { continue };
                            let sent: u64 = t[at + 9..].split('"').next().unwrap().parse().unwrap();
                            if measuring.load(Relaxed) {
                                let now = start.elapsed().as_micros() as u64;
                                let _ = local.record(now.saturating_sub(sent).max(1));
                                n += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                received.fetch_add(n, Relaxed);
                hist.lock().unwrap().add(&local).unwrap();
            }));
        }
        let mut senders: Vec<_> = (0..rooms)
            .map(|r| {
                let mut ws = connect(server.addr, cfg.as_ref());
                login(&mut ws, &format!("s{r}"), &format!("r{r}"));
                ws
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        // Logged in and idle (no message yet): what each connection holds.
        let idle_per_conn = server.rss_bytes().saturating_sub(rss0) as f64 / (clients + rooms) as f64;
        // Open loop: message m is due at m / rate; one second of warm-up.
        let total = rate * (secs + 1);
        let mut cpu0 = 0.0;
        let mut sent_measured = 0u64;
        let t0 = Instant::now();
        for m in 0..total {
            let due = t0 + Duration::from_secs_f64(m as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if m == rate {
                cpu0 = server.cpu_seconds();
                measuring.store(true, Relaxed);
            }
            let r = (m as usize) % rooms;
            let now = start.elapsed().as_micros();
            let text = format!(r#"{{"cmd":"message","type":"text","rid":"r{r}","msg":"t={now}"}}"#);
            senders[r].send(Message::text(text)).unwrap();
            if m >= rate {
                sent_measured += (clients - r * 100).min(100) as u64;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let cpu = server.cpu_seconds() - cpu0;
        measuring.store(false, Relaxed);
        stop.store(true, Relaxed);
        drop(senders);
        drop(server); // readers' reads fail: the threads end
        for r in readers {
            let _ = r.join();
        }
        let got = received.load(Relaxed);
        let h = hist.lock().unwrap();
        let ms = |v: u64| v as f64 / 1000.0;
        let ns = cpu * 1e9 / got.max(1) as f64;
        per_delivery.push(ns);
        let line = format!(
            "| {} | {clients} | {:.0} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} ns | {:.1} KiB |\n",
            if tls { "TLS (wss)" } else { "plain (ws)" },
            got as f64 / secs as f64,
            sent_measured.saturating_sub(got),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            ns,
            idle_per_conn / 1024.0
        );
        print!("{line}");
        rows.push_str(&line);
    }
    rows.push_str(&format!(
        "\nTLS / plain server CPU per delivery: {:.2}x (target <= 1.5x).\n",
        per_delivery[1] / per_delivery[0]
    ));
    let _ = std::fs::remove_dir_all(&dir);
    support::write_result("tls", "cargo bench --bench tls", &rows);
}
