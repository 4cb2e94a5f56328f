//! Regression: connections that read while the cross-shard queues were backed
//! up (a burst of joins) must be served again once the pressure ends:
//! answer commands, pings and close frames, and free their slot on close.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Client, Raw, Server};
use serde_json::json;
use tungstenite::Message;

/// Sends `n` logins to distinct rooms on one connection as fast as the
/// socket takes them, reading the acknowledgements meanwhile; returns how
/// many acknowledgements arrived (the first login's included).
fn join_burst(server: &Server, n: usize) -> usize {
    let mut raw = Raw::connect(server.addr);
    raw.frame(
        1,
        json!({"cmd": "login", "name": "joiner", "rid": "burst-home", "uid": "joiner"}).to_string().as_bytes(),
    );
    let mut frames = Vec::new();
    for i in 0..n {
        let cmd = json!({"cmd": "login", "rid": format!("burst-{i}")}).to_string();
        cchat::ws::client_frame(&mut frames, 1, cmd.as_bytes(), [1, 2, 3, 4]);
    }
    let mut w = raw.s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&frames).unwrap());
    let mut acks = 0;
    while acks < n + 1 {
        let Some((op, payload)) = raw.read_frame() else { break };
        if op == 1 && payload.windows(13).any(|w| w == br#""cmd":"login""#) {
            acks += 1;
        }
        assert_ne!(op, 8, "joiner closed after {acks} acks: {}", String::from_utf8_lossy(&payload));
    }
    writer.join().unwrap();
    acks
}

/// Waits until `cchat_connections` reads `n`.
fn wait_connections(server: &Server, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = server.metric("cchat_connections");
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "cchat_connections stays at {now}, expected {n}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Pings and waits for the pong.
fn ping(c: &mut Client) {
    c.ws.send(Message::Ping(b"still there?".to_vec().into())).unwrap();
    loop {
        match c.ws.read().expect("pong") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"still there?");
                return;
            }
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// The reported case: 8 sender/receiver pairs each posting 10 messages/s
/// while one connection sends 60,000 logins to distinct rooms at once.
#[test]
fn a_burst_of_joins_does_not_wedge_other_connections() {
    burst_beside_pairs(&[]);
}

/// The same with small cross-shard queues, so that the burst surely backs
/// them up and parks every reading connection of the shard.
#[test]
fn readers_parked_by_back_pressure_are_woken_when_it_ends() {
    burst_beside_pairs(&["--shard-queue", "16"]);
}

fn burst_beside_pairs(extra: &[&str]) {
    // A queue cap that holds all 60,000 acknowledgements: the joiner reads
    // them as fast as it can, but a pipelining client is closed as a slow
    // consumer once more than the cap waits for it (tests/limits.rs).
    let mut args = vec![
        "--shards",
        "2",
        "--rate-limit",
        "0",
        "--max-outbound-bytes",
        "16777216",
        "--max-rooms-per-connection",
        "100000",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..8 {
        let rid = format!("wd{i}");
        let mut a = server.client();
        a.login("a", &rid, Some(&format!("a{i}")));
        let mut b = server.client();
        b.login("b", &rid, Some(&format!("b{i}")));
        a.expect("newUser");
        receivers.push(b);
        let stop = stop.clone();
        senders.push(thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                a.say(&rid, &sent.to_string());
                sent += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (a, rid, sent)
        }));
    }

    let joins = 60_000;
    assert_eq!(join_burst(&server, joins), joins + 1, "every login of the burst is acknowledged");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    for (sender, b) in senders.into_iter().zip(receivers.iter_mut()) {
        let (mut a, rid, sent) = sender.join().unwrap();
        // The sender is served: a command gets its reply, a ping its pong.
        a.send(json!({"cmd": "getOnline", "rid": rid}));
        assert_eq!(a.expect("getOnline")["users"].as_array().map(Vec::len), Some(2));
        ping(&mut a);
        a.say(&rid, "last");
        // Nothing it sent was lost, and the order held.
        for n in 0..sent {
            let m = b.expect("message");
            assert_eq!(m["msg"], n.to_string(), "{rid}: message {n} of {sent}");
        }
        assert_eq!(b.expect("message")["msg"], "last");
        // A close frame is answered and frees the slot.
        a.ws.close(None).unwrap();
        loop {
            match a.ws.read() {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    for mut b in receivers {
        b.ws.close(None).unwrap();
        while let Ok(m) = b.ws.read() {
            if m.is_close() {
                break;
            }
        }
    }
    // The joiner's socket was dropped with join_burst's Raw.
    wait_connections(&server, 0.0);
}
