//! Limits, timeouts and shutdown, with real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Raw, Server, UPGRADE};
use serde_json::json;

#[test]
fn frames_split_across_reads_and_pipelined_after_the_handshake() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut b = s.client();
    b.login("bob", "r", Some("b"));
    // Handshake and login frame in one write.
    let mut login = Vec::new();
    cchat::ws::client_frame(&mut login, 1, br#"{"cmd":"login","name":"ann","rid":"r","uid":"a"}"#, [9, 8, 7, 6]);
    let mut r = Raw::connect_with(s.addr, &login);
    let (_, ack) = r.read_frame().unwrap();
    assert!(String::from_utf8(ack).unwrap().contains("\"cmd\":\"login\""));
    b.expect("newUser");
    // One message written a byte at a time.
    let mut f = Vec::new();
    cchat::ws::client_frame(&mut f, 1, br#"{"cmd":"message","type":"text","msg":"slow","rid":"r"}"#, [1, 2, 3, 4]);
    for byte in f {
        r.write(&[byte]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(b.expect("message")["msg"], "slow");
}

#[test]
fn slow_reader_is_closed_1008_and_counted() {
    let s = Server::start(&["--shards", "2", "--rate-limit", "0", "--max-outbound-bytes", "65536"]);
    // A reader that never reads; its socket buffers fill, then its queue.
    let mut slow = Raw::connect(s.addr);
    slow.frame(1, br#"{"cmd":"login","name":"slow","rid":"r","uid":"slow"}"#);
    let mut fast = s.client();
    fast.login("fast", "r", Some("fast"));
    let mut a = s.client();
    a.login("ann", "r", Some("a"));
    fast.expect("newUser");
    let body = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while s.metric("cchat_slow_consumer_closes_total") < 1.0 {
        assert!(Instant::now() < deadline, "slow reader was never closed");
        // Batches small enough for a reader that keeps up.
        for _ in 0..30 {
            a.say("r", &body);
        }
        sent += 30;
        // The fast reader keeps up and loses nothing.
        let mut got = 0;
        while got < 30 {
            let m = fast.recv();
            // Announcements that may arrive late: the slow reader's newUser
            // (its login raced ours, so `expect` above may have taken ann's
            // instead) and ann's, and the slow reader's userLeave.
            if m["cmd"] == "newUser" {
                assert!(m["uid"] == "slow" || m["uid"] == "a", "unexpected {m}");
                continue;
            }
            if m["cmd"] == "userLeave" {
                assert_eq!(m["uid"], "slow");
                continue;
            }
            assert_eq!(m["msg"].as_str().unwrap().len(), 1000);
            got += 1;
        }
    }
    assert!(sent > 0);
    // The slow reader finds a 1008 close after what was already written.
    slow.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(slow.expect_close(), 1008);
    // Everyone else carries on.
    a.say("r", "after");
    loop {
        let m = fast.recv();
        if m["cmd"] == "message" {
            assert_eq!(m["msg"], "after");
            break;
        }
    }
}

#[test]
fn connection_cap_answers_503() {
    let s = Server::start(&["--max-connections", "3", "--shards", "2"]);
    let _held: Vec<_> = (0..3).map(|_| s.client()).collect();
    let mut st = TcpStream::connect(s.addr).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    st.write_all(UPGRADE.as_bytes()).unwrap();
    let mut out = String::new();
    st.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert_eq!(s.metric("cchat_rejected_connections_total"), 1.0);
    // Plain HTTP is still served at the cap.
    assert_eq!(s.get("/healthz").0, 200);
    drop(_held);
    // Room again once connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.metric("cchat_connections") > 0.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = s.client();
    c.login("x", "r", None);
}

#[test]
fn handshake_timeout_drops_silent_sockets() {
    let s = Server::start(&["--handshake-timeout", "0.3"]);
    let mut st = TcpStream::connect(s.addr).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    st.write_all(b"GET / HTTP/1.1\r\n").unwrap(); // never finishes
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = st.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to hang up");
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(s.metric("cchat_timeout_closes_total") >= 1.0);
}

#[test]
fn idle_connections_are_pinged_then_closed() {
    // The idle timeout leaves a client that answers pings a few seconds of
    // slack, so that a stalled test thread on a loaded machine does not
    // miss one.
    let s = Server::start(&["--ping-interval", "0.5", "--idle-timeout", "3"]);
    let mut r = Raw::connect(s.addr);
    // A ping arrives after the quiet interval; we do not answer it.
    let (op, _) = r.read_frame().unwrap();
    assert_eq!(op, 9);
    assert_eq!(r.expect_close(), 1001);
    // A client that answers pings (tungstenite does) stays connected.
    let mut c = s.client();
    c.login("ann", "r", None);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(4000) {
        c.expect_silence(Duration::from_millis(300));
        // Reading processes pings and queues pongs; flush them.
        c.ws.flush().unwrap();
    }
    c.send(json!({"cmd":"getOnline","rid":"r"}));
    c.expect("getOnline");
}

#[test]
fn sigterm_drains_clients_with_a_retry_hint_and_exits() {
    let mut s = Server::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..4).map(|_| s.client()).collect();
    for c in clients.iter_mut() {
        c.login("x", "r", None);
    }
    let mut first = clients.remove(0);
    // Drain the newUser announcements the first client got.
    for _ in 0..3 {
        first.expect("newUser");
    }
    let t0 = Instant::now();
    s.signal(15);
    // 1012 "service restart", saying when to come back (jittered per client).
    first.ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reason = loop {
        match first.ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1012);
                break f.reason.to_string();
            }
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    let ms: u64 =
        reason.split("retry in ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!((500..3000).contains(&ms), "{reason}");
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn config_file_sets_limits() {
    let dir = std::env::temp_dir().join(format!("cchat-cfgtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cchat.toml");
    std::fs::write(&path, "max-message-bytes = 10\nrate-limit = 0\nshards = 2\n").unwrap();
    let s = Server::start(&["--config", path.to_str().unwrap()]);
    let mut a = s.client();
    a.login("ann", "r", None);
    a.say("r", "0123456789");
    a.say("r", "0123456789a");
    a.expect_error(50);
}

#[test]
fn a_second_server_on_the_same_port_refuses_to_start() {
    // Shards share their port with SO_REUSEPORT; a second process must not
    // silently take half the connections.
    let s = Server::start(&[]);
    let listen = s.addr.to_string();
    assert!(Server::try_start_on(&listen, &[]).is_none(), "second server started on {listen}");
    let mut c = s.client();
    c.login("x", "r", None);
}

#[test]
fn sockets_that_never_log_in_are_closed_at_the_login_timeout() {
    let s = Server::start(&["--login-timeout", "0.5", "--ping-interval", "0.2", "--idle-timeout", "30"]);
    // Taken before the lurker connects: its 0.5 s start at its upgrade.
    let t0 = Instant::now();
    let mut lurker = Raw::connect(s.addr);
    let mut user = s.client();
    user.login("ann", "r", None);
    // The lurker answers every ping, and is closed all the same.
    let code = loop {
        let (op, payload) = lurker.read_frame().expect("a close frame first");
        match op {
            9 => lurker.frame(10, &payload),
            8 => break u16::from_be_bytes([payload[0], payload[1]]),
            _ => {}
        }
    };
    assert_eq!(code, 1008);
    assert!(t0.elapsed() >= Duration::from_millis(450), "not before the timeout");
    // The user who logged in stays (tungstenite answers the pings).
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        user.expect_silence(Duration::from_millis(200));
        user.ws.flush().unwrap();
    }
    user.send(json!({"cmd":"getOnline","rid":"r"}));
    user.expect("getOnline");
    assert!(s.metric("cchat_timeout_closes_total") >= 1.0);
}

#[test]
fn out_of_descriptors_the_server_keeps_serving_and_sheds_sockets_that_never_logged_in() {
    // 40 descriptors: the server's own ~17 and room for ~20 sockets.
    let log = std::env::temp_dir().join(format!("cchat-emfile-{}.log", std::process::id()));
    let s = Server::start_with_fd_limit(
        &["--shards", "1", "--max-connections", "1000", "--login-timeout", "60", "--durability", "memory"],
        40,
        &log,
    );
    let addr = s.addr;

    let mut user = s.client();
    user.login("ann", "r", Some("ann"));
    let t0 = Instant::now();
    // Sockets that upgrade and never log in, until the server runs out (an
    // upgrade not answered in 300 ms, and the server's log says an accept
    // failed: a merely slow answer is not taken for it).
    let mut lurkers = Vec::new();
    let out_of_descriptors = || {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            if std::fs::read_to_string(&log).unwrap_or_default().contains("accept failed") {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    loop {
        assert!(lurkers.len() < 40, "the descriptor limit did not apply");
        match Raw::try_connect(addr, Duration::from_millis(300), &[]) {
            Some(r) => lurkers.push(r),
            None if out_of_descriptors() => break,
            None => {}
        }
    }
    // The server sheds the oldest lurker for the socket waiting in its backlog...
    assert_eq!(lurkers[0].expect_close(), 1013);
    // ... and the user who logged in is served throughout.
    user.send(json!({"cmd":"getOnline","rid":"r"}));
    user.expect("getOnline");
    // Newcomers get in by taking the places of lurkers, oldest first.
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut c = crate::common::Client::connect(addr);
        c.login("bob", "r", None);
        user.expect("newUser");
        newcomers.push(c);
    }
    assert_eq!(lurkers[1].expect_close(), 1013);
    let elapsed = t0.elapsed().as_secs_f64();
    drop(lurkers);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.metric("cchat_shed_connections_total") >= 4.0);
    assert!(s.metric("cchat_accept_errors_total") >= 4.0);
    let warnings = std::fs::read_to_string(&log).unwrap().matches("accept failed").count();
    assert!((warnings as f64) <= elapsed + 2.0, "{warnings} accept warnings in {elapsed:.1} s: at most one a second");
    let _ = std::fs::remove_file(&log);
}

/// The status line of a raw upgrade.
fn upgrade_status(addr: std::net::SocketAddr) -> (String, TcpStream) {
    let mut st = TcpStream::connect(addr).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    st.write_all(UPGRADE.as_bytes()).unwrap();
    let mut buf = [0u8; 128];
    let n = st.read(&mut buf).unwrap_or(0);
    (String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned(), st)
}

#[test]
fn per_ip_limits_answer_503_and_429() {
    let s = Server::start(&["--max-connections-per-ip", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| upgrade_status(s.addr))
        .map(|(st, c)| {
            assert!(st.starts_with("HTTP/1.1 101"), "{st}");
            c
        })
        .collect();
    assert!(upgrade_status(s.addr).0.starts_with("HTTP/1.1 503"));
    assert_eq!(s.metric("cchat_per_ip_refused_total"), 1.0);
    drop(held);
    // Room again once they close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upgrade_status(s.addr).0.starts_with("HTTP/1.1 101") {
        assert!(Instant::now() < deadline, "the address's count did not go down");
        std::thread::sleep(Duration::from_millis(50));
    }

    let r = Server::start(&["--new-connections-per-ip", "2"]);
    let t0 = Instant::now();
    let statuses: Vec<String> = (0..6).map(|_| upgrade_status(r.addr).0).collect();
    // Two a second come back: on a slow machine one of the last two may.
    let refilled = (t0.elapsed().as_secs_f64() * 2.0) as usize;
    assert!(statuses[..4].iter().all(|st| st.starts_with("HTTP/1.1 101")), "the burst of 4 passes: {statuses:?}");
    let passed = statuses[4..].iter().filter(|st| st.starts_with("HTTP/1.1 101")).count();
    let refused = statuses[4..].iter().filter(|st| st.starts_with("HTTP/1.1 429")).count();
    assert!(passed + refused == 2 && passed <= refilled, "{statuses:?} ({refilled} tokens back)");
    if refilled == 0 {
        assert_eq!(refused, 2, "{statuses:?}");
    }
}

#[test]
fn the_server_api_drains_a_node() {
    let admin = format!("127.0.0.1:{}", crate::common::free_port());
    let mut s = Server::start(&["--admin-listen", &admin, "--api-key", "drain-key"]);
    let mut c = s.client();
    c.login("x", "r", None);
    let (_, m) = crate::security::admin(&admin, "GET", "/metrics", None, "");
    assert!(m.contains("cchat_draining 0"), "{m}");
    let (st, _) = crate::security::admin(&admin, "POST", "/api/drain", Some("drain-key"), "{}");
    assert_eq!(st, 202);
    assert_eq!(c.expect_close(), 1012);
    let t0 = Instant::now();
    while s.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15), "the drained node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cchat_drain_drains_a_node_through_its_admin_listener() {
    let admin = format!("127.0.0.1:{}", crate::common::free_port());
    let mut s = Server::start(&["--admin-listen", &admin, "--api-key", "drain-key-2"]);
    let mut c = s.client();
    c.login("x", "r", None);
    let run = |key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cchat"))
            .args(["--drain", &admin, "--api-key", key])
            .output()
            .unwrap()
    };
    let wrong = run("wrong");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"), "{wrong:?}");
    let ok = run("drain-key-2");
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("is draining"));
    assert_eq!(c.expect_close(), 1012);
    let t0 = Instant::now();
    while s.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15), "the drained node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
