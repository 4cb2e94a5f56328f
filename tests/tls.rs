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
