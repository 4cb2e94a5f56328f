//! Attacks on the relay, as someone without the cluster secret would make
//! them: splicing two nodes' handshakes together, and an on-path proxy that
//! alters and repeats a link's bytes. Real node processes, raw sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{SECRET, free_ports, relay_node, room_owned_by};
use crate::common::proxy::{FLIP, Proxy, REPEAT};
use crate::common::relay::{read_at_least, read_hello};
use crate::common::{Client, Server};

fn wait_metric(s: &Server, name: &str, at_least: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.metric(name) < at_least {
        assert!(Instant::now() < deadline, "{what}: {name} stayed below {at_least}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every text frame that arrives within `d` of silence.
fn drain(c: &mut Client, d: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    c.ws.get_mut().set_read_timeout(Some(d)).unwrap();
    loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => got.push(serde_json::from_str(&t).unwrap()),
            Ok(tungstenite::Message::Close(f)) => panic!("the user was dropped: {f:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break;
            }
            Err(e) => panic!("the user was dropped: {e}"),
        }
    }
    c.ws.get_mut().set_read_timeout(Some(crate::common::TIMEOUT)).unwrap();
    got
}

/// The splice of the report: a stranger connects to two nodes' relay
/// ports and hands each the other's hello. Neither node proves anything to
/// a peer that has not proved itself, so neither gives the stranger a proof
/// to pass on: no link comes up, both refuse, and nothing reaches a user.
#[test]
fn a_spliced_handshake_gets_no_proof_and_no_link() {
    let (a, relay_a) = relay_node("node-a", &[]);
    let (b, relay_b) = relay_node("node-b", &[]);
    let mut ann = a.client();
    ann.login("Ann", "lobby", Some("ann"));
    let mut bob = b.client();
    bob.login("Bob", "lobby", Some("bob"));

    let mut to_a = TcpStream::connect(&relay_a).unwrap();
    let mut to_b = TcpStream::connect(&relay_b).unwrap();
    for s in [&to_a, &to_b] {
        s.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
    }
    let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let hello_a = read_hello(&mut to_a, &mut buf_a);
    let hello_b = read_hello(&mut to_b, &mut buf_b);
    assert_eq!((hello_a.node_id.as_str(), hello_b.node_id.as_str()), ("node-a", "node-b"));
    // Each node is told the other dialed it.
    to_a.write_all(&hello_b.encode()).unwrap();
    to_b.write_all(&hello_a.encode()).unwrap();
    // Pass on whatever either says, as a splicing proxy would, until both
    // have given up: not one byte of proof comes from either.
    let streams = [&to_a, &to_b];
    let mut done = [false, false];
    let mut got = [buf_a, buf_b];
    while !(done[0] && done[1]) && start.elapsed() < Duration::from_secs(8) {
        for i in 0..2 {
            if done[i] {
                continue;
            }
            let (mut from, mut to) = (streams[i], streams[1 - i]);
            from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut x = [0u8; 256];
            match from.read(&mut x) {
                Ok(0) => done[i] = true,
                Ok(n) => {
                    got[i].extend_from_slice(&x[..n]);
                    let _ = to.write_all(&x[..n]);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => done[i] = true,
            }
        }
    }
    let [buf_a, buf_b] = got;
    let (a_done, b_done) = (done[0], done[1]);
    assert!(a_done && b_done, "both nodes close the spliced sockets (handshake timeout)");
    assert!(buf_a.is_empty() && buf_b.is_empty(), "no node sent a proof: {} and {} bytes", buf_a.len(), buf_b.len());
    for s in [&a, &b] {
        assert_eq!(s.metric("cchat_relay_link_up"), 0.0);
        assert!(s.metric("cchat_relay_refused_total") >= 1.0);
    }
    // The users were neither dropped nor told anything.
    assert!(drain(&mut ann, Duration::from_millis(200)).is_empty());
    assert!(drain(&mut bob, Duration::from_millis(200)).is_empty());
    ann.say("lobby", "still here");
}

/// A stranger who knows the secret's *shape* but not the secret: a dialer
/// with a wrong proof is refused before the node proves itself.
#[test]
fn a_dialer_with_a_wrong_proof_never_sees_the_nodes_proof() {
    use cchat::relay::handshake::{Hello, Role, Transcript};
    let (a, relay_a) = relay_node("node-a", &[]);
    let mut s = TcpStream::connect(&relay_a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
    let own = Hello::new("node-x");
    s.write_all(&own.encode()).unwrap();
    let mut buf = Vec::new();
    let theirs = read_hello(&mut s, &mut buf);
    let t = Transcript::from_side(b"not the secret", Role::Dialer, &own, &theirs);
    s.write_all(&t.proof(Role::Dialer)).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty() && buf.is_empty(), "the node proved nothing: {} bytes", rest.len() + buf.len());
    wait_metric(&a, "cchat_relay_refused_total", 1.0, "the wrong proof is counted");
    assert_eq!(a.metric("cchat_relay_link_up"), 0.0);
    // With the right secret the same dance succeeds (the test is sound).
    let mut s = TcpStream::connect(&relay_a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
    s.write_all(&own.encode()).unwrap();
    let mut buf = Vec::new();
    let theirs = read_hello(&mut s, &mut buf);
    let t = Transcript::from_side(SECRET.as_bytes(), Role::Dialer, &own, &theirs);
    s.write_all(&t.proof(Role::Dialer)).unwrap();
    read_at_least(&mut s, &mut buf, 32);
    assert_eq!(t.verify(Role::Acceptor, &buf[..32]), Ok(()));
}

/// An on-path proxy alters one chunk of the link, later repeats one: each
/// time the receiving node refuses the record and closes the link (counted),
/// the link comes back through the proxy, no user is dropped, and no
/// altered or repeated message is delivered or stored.
#[test]
fn a_link_altered_or_repeated_on_the_path_is_closed_and_nothing_forged_is_delivered() {
    // Every path between the two goes through the proxy: node0 tells its
    // peers the proxy's address as its own (nodes tell each other where
    // they listen, and node1 would dial node0 around it), and node1 has no
    // relay listener for node0 to dial.
    let ports = free_ports(3);
    let relay0 = format!("127.0.0.1:{}", ports[2]);
    let proxy = Proxy::start(relay0.clone());
    let n0 = Server::try_start_on(
        &format!("127.0.0.1:{}", ports[1]),
        &[
            "--node-id",
            "node0",
            "--relay-listen",
            &relay0,
            "--relay-advertise",
            &proxy.addr,
            "--cluster-secret",
            SECRET,
        ],
    )
    .unwrap();
    let n1 = Server::try_start_on(
        &format!("127.0.0.1:{}", ports[0]),
        &["--node-id", "node1", "--cluster-secret", SECRET, "--peer", &proxy.addr, "--rate-limit", "0"],
    )
    .unwrap();
    wait_metric(&n0, "cchat_relay_link_up", 1.0, "the link through the proxy");
    n0.wait_view(2);
    n1.wait_view(2);
    // A room node0 owns: node1's member publishes through the proxy.
    let rid = room_owned_by("onpath", "node0", "node1");
    let mut ann = n0.client();
    ann.login("Ann", &rid, Some("ann"));
    let mut bob = n1.client();
    bob.login("Bob", &rid, Some("bob"));
    let _ = drain(&mut ann, Duration::from_millis(300));
    bob.say(&rid, "clean-1");
    let first = drain(&mut ann, Duration::from_millis(500));
    assert!(first.iter().any(|v| v["msg"] == "clean-1"), "{first:?}");

    let mut sent = vec!["clean-1".to_owned()];
    let mut seen = first;
    for (round, mode) in [FLIP, REPEAT].into_iter().enumerate() {
        let failures = n0.metric("cchat_relay_auth_failures_total");
        proxy.mode.store(mode, SeqCst);
        let text = format!("tampered-{round}-{}", "x".repeat(40));
        bob.say(&rid, &text);
        sent.push(text);
        wait_metric(&n0, "cchat_relay_auth_failures_total", failures + 1.0, "the tampered record is refused");
        // The link comes back through the (now honest) proxy.
        n0.wait_view(2);
        n1.wait_view(2);
        wait_metric(&n0, "cchat_relay_link_up", 1.0, "the link comes back");
        seen.extend(drain(&mut ann, Duration::from_millis(500)));
        seen.extend(drain(&mut bob, Duration::from_millis(10)));
    }
    // After both attacks the pair works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        bob.say(&rid, "clean-2");
        let got = drain(&mut ann, Duration::from_millis(500));
        let done = got.iter().any(|v| v["msg"] == "clean-2");
        seen.extend(got);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the link never carried traffic again");
    }
    sent.push("clean-2".into());
    // Nothing delivered that bob did not send, nothing twice in one epoch.
    let msgs: Vec<&Value> = seen.iter().filter(|v| v["cmd"] == "message").collect();
    let mut keys = std::collections::HashSet::new();
    for m in &msgs {
        assert!(sent.iter().any(|t| m["msg"] == t.as_str()), "a forged or altered message was delivered: {m}");
        assert!(keys.insert((m["epoch"].to_string(), m["seq"].to_string())), "delivered twice: {m}");
    }
    // The owner's history holds no altered message and no copy.
    ann.send(json!({"cmd": "getHistory", "rid": rid, "limit": 100}));
    let h = loop {
        let v = ann.recv();
        if v["cmd"] == "getHistory" {
            break v;
        }
    };
    let texts: Vec<&str> = h["msgs"].as_array().unwrap().iter().filter_map(|m| m["msg"].as_str()).collect();
    for t in &texts {
        assert!(sent.iter().any(|s| s == t), "stored but never sent: {t}");
    }
    let mut uniq = texts.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), texts.len(), "a message stored twice: {texts:?}");
    // Nothing leaks to the path: the messages crossed it encrypted.
    let seen = proxy.seen.lock().unwrap();
    assert!(seen.len() > 1000, "the proxy carried the link ({} bytes)", seen.len());
    for t in ["clean-1", "clean-2", "Bob", "tampered-"] {
        assert!(!seen.windows(t.len()).any(|w| w == t.as_bytes()), "{t} crossed the path in the clear");
    }
}
