//! TLS on the client port: wss:// and https:// with a certificate made by
//! openssl, a plain ws:// client refused cleanly, a certificate renewed on
//! SIGHUP without a restart.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tungstenite::Message;

use crate::common::{Client, Server};

pub(crate) use crate::common::cert::make_cert;

fn cert_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cchat-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start(dir: &Path) -> Server {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    Server::start(&[
        "--shards",
        "2",
        "--rate-limit",
        "0",
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ])
}

/// A wss client trusting only `cert` (logins not signed).
fn wss(server: &Server, cert: &Path) -> Client {
    Client::connect_tls(server.addr, cert, None)
}

/// A TLS connection to the server trusting only `cert`.
fn tls_connect(server: &Server, cert: &Path) -> crate::common::Tls {
    crate::common::tls_stream(server.addr, cert)
}

#[test]
fn wss_clients_chat_and_the_page_is_served_over_https() {
    let dir = cert_dir("chat");
    make_cert(&dir, "first");
    let server = start(&dir);
    let cert = dir.join("cert.pem");
    let mut a = wss(&server, &cert);
    let mut b = wss(&server, &cert);
    a.login("Ann", "secure", Some("ann"));
    b.login("Bob", "secure", Some("bob"));
    assert_eq!(a.expect("newUser")["uid"], "bob");
    // Many frames at once: they are sealed into records and arrive whole, in order.
    for k in 0..200 {
        b.say("secure", &format!("m{k}"));
    }
    for k in 0..200 {
        let m = a.expect("message");
        assert_eq!((m["msg"].as_str(), m["uid"].as_str()), (Some(format!("m{k}").as_str()), Some("bob")));
    }
    // A close gets its close frame over TLS.
    a.ws.close(None).unwrap();
    loop {
        match a.ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => continue,
            Err(e) => panic!("close over TLS: {e}"),
        }
    }
    // The page, over https.
    let mut s = tls_connect(&server, &cert);
    write!(s, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut page = Vec::new();
    let _ = s.read_to_end(&mut page);
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains("data-testid=\"message-list\""), "the chat page");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plain_client_on_the_tls_port_is_refused_cleanly() {
    let dir = cert_dir("plain");
    make_cert(&dir, "first");
    let server = start(&dir);
    // ws:// (plain HTTP upgrade): a plain-text 400 that says why.
    match tungstenite::connect(format!("ws://{}/", server.addr)) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("TLS"), "{body}");
        }
        other => panic!("a plain ws:// client must fail with 400, got {:?}", other.map(|_| ())),
    }
    // A TLS client that does not trust the certificate: the handshake fails
    // (an alert), and the server goes on serving.
    let other = cert_dir("plain-other");
    make_cert(&other, "someone else");
    let url = format!("wss://localhost:{}/", server.addr.port());
    assert!(tungstenite::client(url, tls_connect(&server, &other.join("cert.pem"))).is_err());
    let mut ok = wss(&server, &dir.join("cert.pem"));
    ok.login("x", "r", Some("x"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn sighup_reloads_a_renewed_certificate_without_a_restart() {
    let dir = cert_dir("reload");
    make_cert(&dir, "first");
    let server = start(&dir);
    let first = dir.join("first.pem");
    std::fs::copy(dir.join("cert.pem"), &first).unwrap();
    let mut before = wss(&server, &first);
    before.login("a", "r", Some("a"));
    // Renewed on disk, then SIGHUP.
    make_cert(&dir, "second");
    server.signal(libc::SIGHUP);
    let second = dir.join("second.pem");
    std::fs::copy(dir.join("cert.pem"), &second).unwrap();
    let served = |cert: &Path| {
        let mut s = tls_connect(&server, cert);
        write!(s, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_ok() && {
            let mut out = Vec::new();
            s.read_to_end(&mut out).is_ok() && out.starts_with(b"HTTP/1.1 200")
        }
    };
    let t0 = std::time::Instant::now();
    while !served(&second) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the renewed certificate is not served after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!served(&first), "new connections get the renewed certificate");
    // The connection made before goes on.
    before.send(json!({"cmd":"getOnline","rid":"r"}));
    before.expect("getOnline");
    // A broken file on SIGHUP: the certificate in use stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(served(&second), "still served after a failed reload");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A metric from the admin listener (the client port speaks only TLS).
pub(crate) fn admin_metric(admin: &str, name: &str) -> f64 {
    let (_, body) = crate::security::admin(admin, "GET", "/metrics", None, "");
    body.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TLS server for the handshake attacks: a certificate in a fresh
/// directory, an admin listener for its metrics, and `extra` flags. Returns
/// the directory, the certificate, the admin address and the server.
fn attacked(name: &str, extra: &[&str], fd_limit: Option<u64>) -> (PathBuf, PathBuf, String, Server) {
    let dir = cert_dir(name);
    make_cert(&dir, "first");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    let admin = format!("127.0.0.1:{}", crate::common::free_port());
    let mut args = vec!["--admin-listen", &admin, "--tls-cert", c.to_str().unwrap(), "--tls-key", k.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = match fd_limit {
        None => Server::start(&args),
        Some(n) => Server::start_with_fd_limit(&args, n, &dir.join("server.log")),
    };
    (dir, c, admin, server)
}

/// The first bytes of a TLS ClientHello: a handshake record of 512 bytes
/// whose body never comes, or comes a byte at a time.
const HELLO_START: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// A ClientHello dribbled a byte every 200 ms: the whole TLS handshake and
/// upgrade must finish within --handshake-timeout, so the socket is closed
/// at the timeout however busy the dribbler keeps it.
#[test]
fn a_client_hello_dribbled_a_byte_at_a_time_is_closed_at_the_handshake_timeout() {
    let (dir, _, admin, server) = attacked("dribble", &["--handshake-timeout", "1"], None);
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    let t0 = std::time::Instant::now();
    let mut closed = false;
    for (i, b) in HELLO_START.iter().chain(std::iter::repeat(&0u8)).enumerate() {
        if t0.elapsed() > Duration::from_secs(8) {
            break;
        }
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut x = [0u8; 64];
        match s.read(&mut x) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("the server answered a ClientHello that never ended (byte {i})"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    assert!(closed, "a dribbled ClientHello held its socket for {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}, the timeout is 1 s");
    assert!(admin_metric(&admin, "cchat_timeout_closes_total") >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sockets held in the TLS handshake count toward their address's limit:
/// past it, a new socket is closed at once.
#[test]
fn sockets_in_the_tls_handshake_count_toward_the_per_address_limit() {
    let (dir, c, admin, server) = attacked("perip", &["--max-connections-per-ip", "5"], None);
    let mut held = Vec::new();
    for _ in 0..12 {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        let _ = s.write_all(&HELLO_START);
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let open = held
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut x = [0u8; 8];
            let mut r: &std::net::TcpStream = s;
            matches!(r.read(&mut x), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
        })
        .count();
    assert_eq!(open, 5, "five held, the rest closed at accept");
    assert!(admin_metric(&admin, "cchat_per_ip_refused_total") >= 7.0);
    // Once they go, a genuine client gets in.
    drop(held);
    let t0 = std::time::Instant::now();
    loop {
        let url = format!("wss://localhost:{}/", server.addr.port());
        if let Ok((mut ws, _)) = tungstenite::client(url, tls_connect(&server, &c)) {
            ws.send(Message::text(json!({"cmd":"login","name":"a","rid":"r"}).to_string())).unwrap();
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the address's count did not go down");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Descriptors exhausted by sockets stuck in the TLS handshake: the server
/// sheds them, oldest first, and a genuine wss client still logs in.
#[test]
fn descriptors_taken_by_tls_handshakes_are_shed_for_a_genuine_client() {
    let extra = ["--shards", "1", "--durability", "memory", "--handshake-timeout", "60"];
    let (dir, c, admin, server) = attacked("emfile", &extra, Some(40));
    let log = dir.join("server.log");
    // Stuck handshakes until an accept fails for want of a descriptor.
    let mut stuck = Vec::new();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("accept failed") {
        assert!(t0.elapsed() < Duration::from_secs(20) && stuck.len() < 60, "the descriptor limit did not apply");
        let Ok(mut s) = std::net::TcpStream::connect(server.addr) else { break };
        let _ = s.write_all(&HELLO_START);
        stuck.push(s);
        std::thread::sleep(Duration::from_millis(30));
    }
    // A genuine client gets in, by taking a stuck socket's descriptor.
    let mut ann = wss(&server, &c);
    ann.login("Ann", "r", Some("ann"));
    ann.send(json!({"cmd":"getOnline","rid":"r"}));
    ann.expect("getOnline");
    assert!(admin_metric(&admin, "cchat_shed_connections_total") >= 1.0);
    // The oldest stuck socket was the one shed.
    stuck[0].set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut x = [0u8; 8];
    assert!(matches!(stuck[0].read(&mut x), Ok(0) | Err(_)), "the oldest handshake is shed first");
    drop(stuck);
    let _ = std::fs::remove_dir_all(&dir);
}
