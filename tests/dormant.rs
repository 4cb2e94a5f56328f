//! Dormant connections (`--dormant-after`): a quiet connection's task ends
//! and the shard's epoll watches its socket. From outside nothing changes:
//! these tests put real connections to rest and check each way back —
//! input, a broadcast that fills the socket, a close from either side, a
//! frame half sent, TLS (permessage-deflate: in `compression`) — and that the per-address
//! places are given back.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Client, Raw, Server, raw_frame, wait_until};

/// Waits until the server reports `n` dormant connections.
fn wait_dormant(s: &Server, n: f64) {
    wait_dormant_by(|| s.metric("cchat_dormant_connections"), n);
}

/// Waits until `metric` (the dormant connections) is `n`.
fn wait_dormant_by(metric: impl Fn() -> f64, n: f64) {
    wait_until(&format!("never {n} dormant connections"), || metric() == n);
}

/// Two clients logged into `rid` (the first told of the second), both
/// dormant.
fn two_resting(s: &Server, rid: &str, first: &str, second: &str) -> (Client, Client) {
    let (mut a, mut b) = (s.client(), s.client());
    a.login(first, rid, Some(first));
    b.login(second, rid, Some(second));
    a.expect("newUser");
    wait_dormant(s, 2.0);
    (a, b)
}

/// A raw client logged into room `r`, once it is the one dormant connection.
fn resting_raw(s: &Server) -> Raw {
    let mut r = Raw::connect(s.addr);
    r.frame(1, json!({"cmd": "login", "name": "r", "uid": "r", "rid": "r"}).to_string().as_bytes());
    wait_dormant(s, 1.0);
    r
}

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--dormant-after", "0.3", "--rate-limit", "0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn a_quiet_connection_rests_and_input_or_output_finds_it() {
    for shards in ["1", "2"] {
        let s = start(&["--shards", shards]);
        let mut a = s.client();
        let mut b = s.client();
        a.login_echo("a", "lobby", "a");
        b.login("b", "lobby", Some("b"));
        a.expect("newUser");
        wait_dormant(&s, 2.0);

        // A broadcast reaches a dormant member: output needs no task.
        b.say("lobby", "while you slept");
        assert_eq!(a.expect("message")["msg"], "while you slept");
        // b's send woke it; it rests again once quiet.
        wait_dormant(&s, 2.0);

        // Input wakes a dormant connection: its message is sequenced and acknowledged.
        let (seq, _) = a.say_acked("lobby", "good morning").unwrap();
        assert!(seq > 0);
        assert_eq!(b.expect("message")["msg"], "good morning");
        assert!(s.metric("cchat_dormant_wakes_total") >= 1.0);
        wait_dormant(&s, 2.0);

        // Many rests and wakes in a row lose nothing and keep the order.
        for i in 0..20 {
            if i % 5 == 0 {
                wait_dormant(&s, 2.0);
            }
            a.say("lobby", &format!("m{i}"));
        }
        let got: Vec<String> = (0..20).map(|_| b.expect("message")["msg"].as_str().unwrap().to_owned()).collect();
        assert_eq!(got, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    }
}

#[test]
fn a_dormant_reader_that_falls_behind_gets_everything_once_it_reads() {
    // Big messages to a member that does not read: the socket fills, the
    // flusher needs the connection's task to wait for room, and the
    // dormant connection gets one back.
    let s = start(&["--shards", "1", "--max-message-bytes", "60000", "--max-outbound-bytes", "16000000"]);
    let (mut slow, mut talker) = two_resting(&s, "big", "slow", "talker");
    // 11 MB: more than loopback's socket buffers hold at both ends.
    let text = "x".repeat(55_000);
    let wakes = s.metric("cchat_dormant_wakes_total");
    for i in 0..200 {
        talker.say("big", &format!("{i}{text}"));
    }
    wait_until("the full socket never woke the dormant reader", || {
        s.metric("cchat_dormant_wakes_total") >= wakes + 2.0
    });
    for i in 0..200 {
        let m = slow.expect("message");
        assert!(m["msg"].as_str().unwrap().starts_with(&format!("{i}x")), "message {i} in order");
    }
}

#[test]
fn closes_from_either_side_end_a_dormant_connection_and_free_its_place() {
    let s = start(&["--shards", "1", "--max-connections-per-ip", "2", "--presence-grace-ms", "0"]);
    // The client goes away while dormant: the server notices (its epoll
    // reports the hang-up) and gives the address's place back.
    let (a, mut b) = two_resting(&s, "r", "a", "b");
    drop(a);
    b.expect("userLeave");
    wait_until("the dormant connection's hang-up went unnoticed", || s.metric("cchat_connections") == 1.0);
    let mut c = s.client();
    c.login("c", "r", Some("c"));
    b.expect("newUser");

    // Shutdown reaches dormant connections too: each gets its close frame.
    wait_dormant(&s, 2.0);
    s.signal(libc::SIGTERM);
    for mut x in [b, c] {
        let code = x.expect_close();
        assert!(code == 1001 || code == 1012, "{code}");
    }
}

#[test]
fn the_idle_timeout_closes_a_dormant_connection_that_never_answers_pings() {
    let s = start(&["--shards", "1", "--ping-interval", "1", "--idle-timeout", "2"]);
    let mut r = resting_raw(&s);
    // Pinged while dormant (the ping needs no task), never answered, and
    // closed for idleness: the close needs the task back.
    assert_eq!(r.expect_close(), 1001);
    assert_eq!(s.metric("cchat_dormant_connections"), 0.0);
}

#[test]
fn a_dormant_connection_answers_pings_without_waking() {
    // Pinged every second, closed after 3 s without input: a client that
    // answers each ping stays open, and its pongs are read in place (no
    // task), so it stays dormant throughout.
    let s = start(&["--shards", "1", "--ping-interval", "1", "--idle-timeout", "3"]);
    let mut r = resting_raw(&s);
    let wakes = s.metric("cchat_dormant_wakes_total");
    let until = Instant::now() + Duration::from_secs(6);
    let mut pings = 0;
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while Instant::now() < until {
        let (b0, payload) = r.read_frame_b0().expect("closed: the pongs did not count as input");
        match b0 & 0x0f {
            0x9 => {
                pings += 1;
                r.write(&raw_frame(0x8a, &payload, true));
            }
            0x1 => {} // the login's ack
            op => panic!("unexpected opcode {op}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 6 s");
    assert_eq!(s.metric("cchat_dormant_wakes_total"), wakes, "a pong woke the connection");
    assert_eq!(s.metric("cchat_dormant_connections"), 1.0);
    // Anything else still wakes it, and it is served as ever.
    r.frame(1, json!({"cmd": "getOnline", "rid": "r"}).to_string().as_bytes());
    loop {
        let (b0, p) = r.read_frame_b0().expect("the reply");
        if b0 & 0x0f == 1 && String::from_utf8_lossy(&p).contains("getOnline") {
            break;
        }
    }
    assert!(s.metric("cchat_dormant_wakes_total") > wakes);
}

#[test]
fn a_frame_half_sent_keeps_its_task_until_the_rest_comes() {
    let s = start(&["--shards", "1"]);
    let mut r = Raw::connect(s.addr);
    let mut b = s.client();
    b.login("b", "half", Some("b"));
    r.frame(1, json!({"cmd": "login", "name": "r", "uid": "r", "rid": "half"}).to_string().as_bytes());
    b.expect("newUser");
    let f = raw_frame(
        0x81,
        json!({"cmd": "message", "type": "text", "rid": "half", "msg": "in two parts"}).to_string().as_bytes(),
        true,
    );
    let (head, tail) = f.split_at(5);
    r.write(head);
    // b rests; r cannot (the decoder holds a frame's start).
    wait_dormant(&s, 1.0);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.metric("cchat_dormant_connections"), 1.0);
    r.write(tail);
    assert_eq!(b.expect("message")["msg"], "in two parts");
    // Whole again: now it rests like any other.
    wait_dormant(&s, 2.0);

    // A fragmented message (first fragment only) is half read too.
    let first = raw_frame(0x01, br#"{"cmd":"message","type":"text","rid":"half","#, true);
    let last = raw_frame(0x80, br#""msg":"fragmented"}"#, true);
    r.write(&first);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.metric("cchat_dormant_connections"), 1.0, "b only: r holds a fragment");
    r.write(&last);
    assert_eq!(b.expect("message")["msg"], "fragmented");
}

#[test]
fn tls_connections_rest_and_wake_with_their_session() {
    let dir = std::env::temp_dir().join(format!("cchat-dormant-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::common::cert::make_cert(&dir, "localhost");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    let admin = format!("127.0.0.1:{}", crate::common::free_port());
    let s = start(&[
        "--shards",
        "1",
        "--admin-listen",
        &admin,
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ]);
    let dormant = || crate::tls::admin_metric(&admin, "cchat_dormant_connections");
    let mut a = Client::connect_tls(s.addr, &c, None);
    let mut b = Client::connect_tls(s.addr, &c, None);
    a.login("a", "tls", Some("a"));
    b.login("b", "tls", Some("b"));
    a.expect("newUser");
    wait_dormant_by(dormant, 2.0);
    a.say("tls", "sealed");
    assert_eq!(b.expect("message")["msg"], "sealed");
    wait_dormant_by(dormant, 2.0);
    b.say("tls", "and back");
    assert_eq!(a.expect("message")["msg"], "and back");
    let _ = std::fs::remove_dir_all(&dir);
}
