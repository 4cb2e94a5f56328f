//! Black-box tests of the client contract (the protocol and the README's
//! decisions), written from the contract alone: real server processes, real
//! WebSocket clients, raw sockets for what a client library would refuse to do.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{Client, FIN, Raw, Server, TIMEOUT, for_shards, raw_frame};
use serde_json::{Value, json};
use tungstenite::Message;

const SHORT: Duration = Duration::from_millis(300);

fn server() -> Server {
    Server::start(&["--shards", "3", "--rate-limit", "0"])
}

/// The sorted key set of a JSON object.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> =
        v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect();
    k.sort();
    k
}

fn assert_keys(v: &Value, want: &[&str]) {
    let mut w = want.to_vec();
    w.sort();
    assert_eq!(keys(v), w, "field set of {v}");
}

fn assert_strings(v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(v[f].is_string(), "{f} must be a JSON string in {v}");
    }
}

/// Checks a room/private `message` frame: exact field set and types.
fn assert_message_shape(m: &Value, private: bool) {
    let mut want = vec!["cmd", "uid", "name", "type", "rid", "msg", "seq", "epoch", "ts"];
    if private {
        want.push("tid");
    }
    assert_keys(m, &want);
    assert_eq!(m["cmd"], "message");
    assert_strings(m, &["uid", "name", "type", "rid", "msg"]);
    if private {
        assert_strings(m, &["tid"]);
    }
    assert!(m["seq"].is_u64(), "seq must be a number: {m}");
    assert!(m["epoch"].is_u64(), "epoch must be a number: {m}");
    assert!(m["ts"].is_u64(), "ts must be a number: {m}");
}

fn login_echo(c: &mut Client, name: &str, rid: &str, uid: &str) -> Value {
    c.login_echo(name, rid, uid)
}

/// Reads two frames, in either order: an error with `code` and a reply with
/// `cmd`. Returns the reply. (The contract does not say that an error reply
/// and a later reply routed through another shard keep their order.)
fn expect_error_and(c: &mut Client, code: i64, cmd: &str) -> Value {
    let a = c.recv();
    let b = c.recv();
    let (err, reply) = if a["cmd"] == "error" { (a, b) } else { (b, a) };
    assert_eq!(err["cmd"], "error", "{err}");
    assert_eq!(err["errCode"], code, "{err}");
    assert_keys(&err, &["cmd", "errCode", "errMsg"]);
    assert!(err["errCode"].is_i64(), "{err}");
    assert!(err["errMsg"].is_string(), "{err}");
    assert_eq!(reply["cmd"], cmd, "{reply}");
    reply
}

fn online_uids(c: &mut Client, rid: &str) -> Vec<String> {
    c.send(json!({"cmd":"getOnline","rid":rid}));
    let v = c.expect("getOnline");
    let mut u: Vec<String> =
        v["users"].as_array().unwrap().iter().map(|u| u["uid"].as_str().unwrap().to_owned()).collect();
    u.sort();
    u
}

fn seqs(v: &Value) -> Vec<u64> {
    v["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

// ---------------------------------------------------------------- raw frames

fn raw_text(r: &mut Raw) -> Value {
    loop {
        let (op, p) = r.read_frame().expect("EOF while waiting for a text frame");
        match op {
            1 => return serde_json::from_slice(&p).expect("server sent JSON"),
            9 | 10 => continue,
            8 => panic!("closed: {p:?}"),
            _ => panic!("unexpected opcode {op}"),
        }
    }
}

fn raw_silence(r: &mut Raw, d: Duration) {
    assert!(r.buf.is_empty(), "unexpected buffered bytes {:?}", r.buf);
    r.s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 256];
    match r.s.read(&mut b) {
        Ok(0) => panic!("server hung up"),
        Ok(n) => panic!("unexpected bytes {:?}", &b[..n]),
        Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
    }
    r.s.set_read_timeout(Some(TIMEOUT)).unwrap();
}

// ---------------------------------------------------------------- raw HTTP

/// Sends raw bytes, returns (status, head, body). Reads to EOF or to the end
/// of a Content-Length body.
fn http_raw(addr: SocketAddr, req: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let cl = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
            });
            let is_101 = head.starts_with("HTTP/1.1 101");
            if is_101 || cl.is_some_and(|n| buf.len() >= end + 4 + n) {
                break;
            }
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, buf[end + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// ======================================================================
// Reply shapes
// ======================================================================

#[test]
fn every_reply_has_its_exact_field_set_and_types() {
    let s = server();
    let mut a = s.client();
    let mut b = s.client();
    // Integer ids in, JSON strings out.
    a.send(json!({"cmd":"login","name":"ann","rid":7,"uid":11}));
    let ack = a.expect("login");
    assert_eq!(ack, json!({"cmd":"login","uid":"11","name":"ann","rid":"7"}));
    b.send(json!({"cmd":"login","name":"bob","rid":"7","uid":"12"}));
    let ack = b.expect("login");
    assert_eq!(ack, json!({"cmd":"login","uid":"12","name":"bob","rid":"7"}));
    let nu = a.expect("newUser");
    assert_eq!(nu, json!({"cmd":"newUser","uid":"12","name":"bob","rid":"7"}));

    // Room messages of every type.
    let mut epoch = None;
    for (i, ty) in ["text", "audio", "pic"].iter().enumerate() {
        a.send(json!({"cmd":"message","type":ty,"msg":format!("m{i}"),"rid":7}));
        let m = b.expect("message");
        assert_message_shape(&m, false);
        assert_eq!(
            (&m["uid"], &m["name"], &m["type"], &m["rid"], &m["msg"]),
            (&json!("11"), &json!("ann"), &json!(ty), &json!("7"), &json!(format!("m{i}")))
        );
        assert_eq!(m["seq"], i as u64 + 1);
        let e = m["epoch"].as_u64().unwrap();
        assert_eq!(*epoch.get_or_insert(e), e, "epoch changed within a room");
    }

    // Private message with an integer tid.
    a.send(json!({"cmd":"message","type":"text","msg":"p","rid":7,"tid":12}));
    let m = b.expect("message");
    assert_message_shape(&m, true);
    assert_eq!(m["tid"], "12");
    assert_eq!(m["rid"], "7");

    // getOnline.
    a.send(json!({"cmd":"getOnline","rid":7}));
    let on = a.expect("getOnline");
    // `count` is the whole room's (pages of big rooms add `next`).
    assert_keys(&on, &["cmd", "count", "rid", "users"]);
    assert_eq!(on["rid"], "7");
    assert_eq!(on["count"], 2);
    let users = on["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    for u in users {
        assert_keys(u, &["uid", "name"]);
        assert_strings(u, &["uid", "name"]);
    }

    // getHistory: rid as string, epoch a number equal to the messages' epoch.
    a.send(json!({"cmd":"getHistory","rid":7}));
    let h = a.expect("getHistory");
    assert_keys(&h, &["cmd", "rid", "msgs", "epoch"]);
    assert_eq!(h["rid"], "7");
    assert_eq!(h["epoch"].as_u64(), epoch);
    assert_eq!(seqs(&h), [1, 2, 3]);
    for m in h["msgs"].as_array().unwrap() {
        assert_message_shape(m, false);
    }

    // error.
    a.send(json!({"cmd":"nope"}));
    let e = a.expect("error");
    assert_keys(&e, &["cmd", "errCode", "errMsg"]);
    assert!(e["errCode"].is_i64() && e["errCode"] == 102, "{e}");
    assert!(e["errMsg"].is_string());

    // logout and userLeave.
    b.send(json!({"cmd":"logout","rid":7}));
    assert_eq!(b.expect("logout"), json!({"cmd":"logout","rid":"7"}));
    assert_eq!(a.expect("userLeave"), json!({"cmd":"userLeave","uid":"12","name":"bob","rid":"7"}));
}

#[test]
fn each_room_keeps_one_epoch_and_ts_is_now() {
    let s = server();
    let mut a = s.client();
    let mut epochs = BTreeSet::new();
    login_echo(&mut a, "ann", "r0", "a");
    for i in 1..6 {
        a.send(json!({"cmd":"login","rid":format!("r{i}")}));
        a.expect("login");
    }
    let mut first = Vec::new();
    for round in 0..2 {
        for i in 0..6 {
            let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            a.say(&format!("r{i}"), "x");
            let m = a.expect("message");
            let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            assert_eq!(m["seq"], round + 1, "each room has its own sequence: {m}");
            let ts = m["ts"].as_u64().unwrap();
            assert!(ts + 1000 >= before && ts <= after + 1000, "ts {ts} not now");
            let e = m["epoch"].as_u64().unwrap();
            if round == 0 {
                first.push(e);
                epochs.insert(e);
            } else {
                assert_eq!(e, first[i], "a room's epoch changes only when its sequence restarts");
            }
        }
    }
    // README: epochs are distinct per sequence start on a node.
    assert_eq!(epochs.len(), 6, "{epochs:?}");
    // getHistory carries the room's epoch.
    a.send(json!({"cmd":"getHistory","rid":"r3"}));
    assert_eq!(a.expect("getHistory")["epoch"], first[3]);
}

// ======================================================================
// Identifiers and names
// ======================================================================

#[test]
fn integer_and_numeric_string_uid_are_the_same_user() {
    let s = server();
    let mut obs = s.client();
    obs.login("obs", "r", Some("obs"));
    let mut a1 = s.client();
    a1.send(json!({"cmd":"login","name":"five","rid":"r","uid":5}));
    assert_eq!(a1.expect("login")["uid"], "5");
    assert_eq!(obs.expect("newUser")["uid"], "5");
    // A second connection logging in as "5" is the same user: no newUser.
    let mut a2 = s.client();
    a2.send(json!({"cmd":"login","name":"five","rid":"r","uid":"5"}));
    assert_eq!(a2.expect("login")["uid"], "5");
    obs.expect_silence(SHORT);
    a1.expect_silence(Duration::from_millis(50));
    assert_eq!(online_uids(&mut obs, "r"), ["5", "obs"]);
    // A private message to tid 5 reaches both connections, tid written "5".
    obs.send(json!({"cmd":"message","type":"text","msg":"hi five","rid":"r","tid":5}));
    for c in [&mut a1, &mut a2] {
        let m = c.expect("message");
        assert_eq!((m["tid"].as_str(), m["msg"].as_str()), (Some("5"), Some("hi five")));
    }
    obs.send(json!({"cmd":"message","type":"text","msg":"again","rid":"r","tid":"5"}));
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.expect("message")["msg"], "again");
    }
    // The user leaves only with its last connection.
    drop(a1);
    obs.expect_silence(SHORT);
    drop(a2);
    let ul = obs.expect("userLeave");
    assert_eq!(ul, json!({"cmd":"userLeave","uid":"5","name":"five","rid":"r"}));
}

#[test]
fn integer_and_numeric_string_rid_are_the_same_room() {
    let s = server();
    let mut a = s.client();
    let mut b = s.client();
    a.send(json!({"cmd":"login","name":"ann","rid":42,"uid":"a"}));
    a.expect("login");
    b.send(json!({"cmd":"login","name":"bob","rid":"42","uid":"b"}));
    b.expect("login");
    assert_eq!(a.expect("newUser")["rid"], "42");
    a.send(json!({"cmd":"message","type":"text","msg":"x","rid":"42"}));
    assert_eq!(b.expect("message")["rid"], "42");
    b.send(json!({"cmd":"message","type":"text","msg":"y","rid":42}));
    let m = a.expect("message");
    assert_eq!((m["rid"].as_str(), m["seq"].as_u64()), (Some("42"), Some(2)));
}

#[test]
fn identifier_edge_cases() {
    let s = server();
    let id64 = "a".repeat(64);
    let id65 = "a".repeat(65);
    let punct = "A-z_0.9:x";
    let big = 9_007_199_254_740_993u64; // above 2^53: must survive exactly

    let mut c = s.client();
    // Rejected: 65 chars, disallowed characters, empty, zero, negative,
    // fractional, and non-scalar types — for uid and rid.
    let bad: Vec<Value> = vec![
        json!(id65),
        json!("a b"),
        json!("a/b"),
        json!("a@b"),
        json!("é"),
        json!(""),
        json!(0),
        json!(-3),
        json!(1.5),
        json!(true),
        json!(["a"]),
        json!({"a":1}),
    ];
    for v in &bad {
        c.send(json!({"cmd":"login","name":"x","rid":v}));
        let e = c.expect("error");
        assert_eq!(e["errCode"], 50, "rid {v} should be refused: {e}");
        c.send(json!({"cmd":"login","name":"x","rid":"r","uid":v}));
        let e = c.expect("error");
        assert_eq!(e["errCode"], 50, "uid {v} should be refused: {e}");
    }
    // Accepted: 64 characters, the allowed punctuation, a big integer.
    c.send(json!({"cmd":"login","name":"x","rid":id64,"uid":id64}));
    let ack = c.expect("login");
    assert_eq!((ack["uid"].as_str(), ack["rid"].as_str()), (Some(&*id64), Some(&*id64)));

    let mut d = s.client();
    d.send(json!({"cmd":"login","name":"y","rid":punct,"uid":punct}));
    let ack = d.expect("login");
    assert_eq!((ack["uid"].as_str(), ack["rid"].as_str()), (Some(punct), Some(punct)));

    let mut e = s.client();
    e.send(json!({"cmd":"login","name":"z","rid":big,"uid":big}));
    let ack = e.expect("login");
    assert_eq!(ack["uid"], big.to_string());
    assert_eq!(ack["rid"], big.to_string());

    // A 64-char uid can be addressed as tid; a 65-char or malformed tid is refused.
    let mut f = s.client();
    f.login("f", &id64, Some("f"));
    c.expect("newUser");
    f.send(json!({"cmd":"message","type":"text","msg":"to 64","rid":id64,"tid":id64}));
    let m = c.expect("message");
    assert_eq!(m["tid"], id64);
    for t in [json!(id65), json!("a b"), json!(0), json!("")] {
        f.send(json!({"cmd":"message","type":"text","msg":"x","rid":id64,"tid":t}));
        let e = f.expect("error");
        assert_eq!(e["errCode"], 50, "tid {t}: {e}");
    }
    // Punctuated ids route messages like any other.
    d.send(json!({"cmd":"login","rid":"r.x"}));
    d.expect("login");
    let mut g = s.client();
    g.login("g", "r.x", Some("g:1"));
    assert_eq!(d.expect("newUser")["uid"], "g:1");
    d.send(json!({"cmd":"message","type":"text","msg":"hey","rid":"r.x","tid":"g:1"}));
    assert_eq!(g.expect("message")["uid"], punct);
}

#[test]
fn name_edge_cases() {
    let s = server();
    let mut obs = s.client();
    obs.login("obs", "r", Some("obs"));
    let ok = [
        "é".repeat(32),                 // 64 bytes, 32 chars
        format!("{}a", "€".repeat(21)), // 63 + 1 bytes
        "😀".repeat(16),                // 64 bytes of 4-byte chars
        "n".to_owned(),                 // 1 byte
        "spaces and \"quotes\" \\".to_owned(),
    ];
    let mut held = Vec::new();
    for (i, name) in ok.iter().enumerate() {
        let mut c = s.client();
        let ack = c.login(name, "r", Some(&format!("u{i}")));
        assert_eq!(ack["name"], *name);
        let nu = obs.expect("newUser");
        assert_eq!(nu["name"], *name);
        held.push(c);
    }
    let mut c = s.client();
    let bad: Vec<Value> = vec![
        json!(format!("{}a", "é".repeat(32))), // 65 bytes
        json!("😀".repeat(17)),                // 68 bytes
        json!("a".repeat(65)),
        json!(""),
        json!("tab\there"),
        json!("new\nline"),
        json!("nul\u{0}"),
        json!("esc\u{1b}"),
        json!("del\u{7f}"),
        json!("c1\u{9b}"),
        json!(5),
        json!(null),
        json!(["n"]),
    ];
    for name in &bad {
        c.send(json!({"cmd":"login","name":name,"rid":"r","uid":"bad"}));
        let e = c.expect("error");
        assert_eq!(e["errCode"], 50, "name {name} should be refused: {e}");
    }
    obs.expect_silence(Duration::from_millis(100));
    // And the connection still logs in.
    c.login("good", "r", Some("bad"));
    assert_eq!(obs.expect("newUser")["name"], "good");
}

// ======================================================================
// Errors
// ======================================================================

/// Every kind of error leaves the connection open, before login and after:
/// 101 (not JSON, not an object, no string cmd, a binary frame), 102
/// (unknown commands, CChat's debug and proxySet) and 50 (no session, bad
/// or missing fields, not a member, a tid not in the room, a message over
/// 1024 bytes, sending too fast). Each reply is an error of the right
/// shape, the connection answers the next request, nothing refused
/// reaches another member, and a message of exactly 1024 bytes is the
/// room's first. With one shard and with three.
#[test]
fn error_codes_keep_the_connection_open() {
    for_shards(|s| {
        let mut other = s.client();
        other.login("other", "elsewhere", Some("o"));
        let mut b = s.client();
        b.login("bob", "r", Some("b"));

        // Before login. 101: not JSON, not an object, no string cmd, binary frame.
        let mut a = s.client();
        for bad in ["not json", "[1,2,3]", "\"login\"", "{\"cmd\":5}", "{}", "{\"cmd\":"] {
            a.send_text(bad);
            a.expect_error(101);
        }
        a.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
        a.expect_error(101);
        // 102: unknown command, including CChat's debug and proxySet.
        for cmd in ["nope", "debug", "proxySet"] {
            a.send(json!({"cmd": cmd}));
            a.expect_error(102);
        }
        // 50 for every command that needs a session.
        for cmd in [
            json!({"cmd":"message","type":"text","msg":"x","rid":"r"}),
            json!({"cmd":"getOnline","rid":"r"}),
            json!({"cmd":"getHistory","rid":"r"}),
            json!({"cmd":"logout"}),
            json!({"cmd":"logout","rid":"r"}),
        ] {
            a.send(cmd.clone());
            let e = a.expect("error");
            assert_eq!(e["errCode"], 50, "{cmd} before login: {e}");
            assert!(e["errMsg"].is_string(), "{e}");
        }
        // 50: bad or missing login fields.
        a.send(json!({"cmd":"login","rid":"r"}));
        a.expect_error(50);
        a.send(json!({"cmd":"login","name":"","rid":"r"}));
        a.expect_error(50);
        a.send(json!({"cmd":"login","name":"a\u{1}","rid":"r"}));
        a.expect_error(50);
        a.send(json!({"cmd":"login","name":"ann","rid":"bad room"}));
        a.expect_error(50);
        a.send(json!({"cmd":"login","name":"ann","rid":"r","uid":0}));
        a.expect_error(50);
        a.send(json!({"cmd":"login","name":"ann","rid":"r","uid":"x".repeat(65)}));
        a.expect_error(50);
        // Then login works.
        a.login("ann", "r", Some("a"));
        b.expect("newUser");

        // After login: each error, then a request that is still answered.
        let probe = json!({"cmd":"getOnline","rid":"r"});
        let cases: Vec<(&str, Message, i64)> = vec![
            ("not json", Message::text("hello"), 101),
            ("empty frame", Message::text(""), 101),
            ("truncated json", Message::text("{\"cmd\":\"login\""), 101),
            ("array", Message::text("[]"), 101),
            ("number", Message::text("12"), 101),
            ("null cmd", Message::text("{\"cmd\":null}"), 101),
            ("object cmd", Message::text("{\"cmd\":{}}"), 101),
            ("binary", Message::binary(b"{\"cmd\":\"getOnline\",\"rid\":\"r\"}".to_vec()), 101),
            ("unknown", Message::text("{\"cmd\":\"Login\"}"), 102),
            ("debug", Message::text("{\"cmd\":\"debug\"}"), 102),
            ("proxySet", Message::text("{\"cmd\":\"proxySet\",\"ip\":\"1.2.3.4\"}"), 102),
            ("bad type", Message::text(json!({"cmd":"message","type":"file","msg":"x","rid":"r"}).to_string()), 50),
            ("video type", Message::text(json!({"cmd":"message","type":"video","msg":"x","rid":"r"}).to_string()), 50),
            ("no type", Message::text(json!({"cmd":"message","msg":"x","rid":"r"}).to_string()), 50),
            ("no msg", Message::text(json!({"cmd":"message","type":"text","rid":"r"}).to_string()), 50),
            ("msg not string", Message::text(json!({"cmd":"message","type":"text","msg":5,"rid":"r"}).to_string()), 50),
            ("no rid", Message::text(json!({"cmd":"message","type":"text","msg":"x"}).to_string()), 50),
            ("bad rid", Message::text(json!({"cmd":"message","type":"text","msg":"x","rid":"a b"}).to_string()), 50),
            (
                "not member",
                Message::text(json!({"cmd":"message","type":"text","msg":"x","rid":"elsewhere"}).to_string()),
                50,
            ),
            (
                "tid not in room",
                Message::text(json!({"cmd":"message","type":"text","msg":"x","rid":"r","tid":"o"}).to_string()),
                50,
            ),
            (
                "msg too long",
                Message::text(json!({"cmd":"message","type":"text","msg":"x".repeat(1025),"rid":"r"}).to_string()),
                50,
            ),
            ("getOnline not member", Message::text(json!({"cmd":"getOnline","rid":"elsewhere"}).to_string()), 50),
            ("getOnline no rid", Message::text(json!({"cmd":"getOnline"}).to_string()), 50),
            ("getHistory not member", Message::text(json!({"cmd":"getHistory","rid":"elsewhere"}).to_string()), 50),
            ("getHistory bad limit", Message::text(json!({"cmd":"getHistory","rid":"r","limit":"x"}).to_string()), 50),
            ("logout not member", Message::text(json!({"cmd":"logout","rid":"elsewhere"}).to_string()), 50),
            ("login bad rid", Message::text(json!({"cmd":"login","name":"ann","rid":""}).to_string()), 50),
        ];
        for (what, frame, code) in cases {
            a.ws.send(frame).unwrap();
            a.send(probe.clone());
            let on = expect_error_and(&mut a, code, "getOnline");
            assert_eq!(on["users"].as_array().unwrap().len(), 2, "after {what}: {on}");
        }
        // Exactly 1024 bytes (the default limit) is accepted, and is the
        // first message b gets: nothing refused above reached it.
        a.say("r", &"é".repeat(512));
        let m = b.expect("message");
        assert_eq!((m["msg"].as_str().unwrap().len(), m["seq"].as_u64()), (1024, Some(1)));
        // Nor anything else, nor the other room's member; a real message still does.
        b.expect_silence(Duration::from_millis(100));
        other.expect_silence(Duration::from_millis(10));
        a.say("r", "still here");
        let m = b.expect("message");
        assert_eq!((m["msg"].as_str(), m["seq"].as_u64()), (Some("still here"), Some(2)));
    });

    // "sending too fast" also leaves the connection open.
    let probe = json!({"cmd":"getOnline","rid":"r"});
    let s2 = Server::start(&["--shards", "3", "--rate-limit", "1"]);
    let mut c = s2.client();
    c.login("cat", "r", Some("c"));
    let mut errs = 0;
    for i in 0..4 {
        c.say("r", &format!("m{i}"));
    }
    c.send(probe);
    let mut got_online = false;
    while !got_online {
        let v = c.recv();
        match v["cmd"].as_str() {
            Some("error") => {
                assert_eq!(v["errCode"], 50, "{v}");
                errs += 1;
            }
            Some("getOnline") => got_online = true,
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(errs, 2, "burst 2R = 2 of 4 messages pass");
}

// ======================================================================
// Ordering and sequence
// ======================================================================

#[test]
fn per_sender_order_with_several_senders_in_two_rooms() {
    let s = server();
    let rooms = ["x", "y"];
    let receivers_n = 4;
    let senders_n = 3;
    let per_sender = 100;
    let join = |c: &mut Client, name: &str| {
        c.login(name, "x", Some(name));
        c.send(json!({"cmd":"login","rid":"y"}));
        c.expect("login");
    };
    let mut receivers: Vec<Client> = (0..receivers_n).map(|_| s.client()).collect();
    for (i, c) in receivers.iter_mut().enumerate() {
        join(c, &format!("r{i}"));
    }
    let mut senders: Vec<Client> = (0..senders_n).map(|_| s.client()).collect();
    for (i, c) in senders.iter_mut().enumerate() {
        join(c, &format!("s{i}"));
    }
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            std::thread::spawn(move || {
                for k in 0..per_sender {
                    let rid = rooms[k % 2];
                    c.say(rid, &format!("s{w}:{k}"));
                }
                c
            })
        })
        .collect();
    let total = senders_n * per_sender;
    for c in receivers.iter_mut() {
        let mut last: HashMap<String, i64> = HashMap::new();
        let mut room_seq: HashMap<String, u64> = HashMap::new();
        let mut got = 0;
        while got < total {
            let m = c.recv();
            if m["cmd"] == "newUser" {
                continue;
            }
            assert_eq!(m["cmd"], "message", "{m}");
            got += 1;
            let rid = m["rid"].as_str().unwrap().to_owned();
            let (w, k) = m["msg"].as_str().unwrap().split_once(':').unwrap();
            assert_eq!(m["uid"], w, "uid comes from the session");
            let k: i64 = k.parse().unwrap();
            assert_eq!(rooms[k as usize % 2], rid);
            // Within a room, each sender's messages arrive in the order sent
            // (the contract promises no order across rooms). Sender w posts
            // k = 0, 2, 4, … to x and k = 1, 3, 5, … to y.
            let l = last.entry(format!("{w}@{rid}")).or_insert(if rid == "x" { -2 } else { -1 });
            assert_eq!(k, *l + 2, "sender {w} in {rid}: {k} after {l}");
            *l = k;
            // Gapless seq per room.
            let q = room_seq.entry(rid.clone()).or_insert(0);
            assert_eq!(m["seq"].as_u64().unwrap(), *q + 1, "room {rid}");
            *q += 1;
        }
        assert_eq!(room_seq["x"] + room_seq["y"], total as u64);
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn late_joiners_see_seq_continue_without_gaps() {
    let s = server();
    let mut a = s.client();
    login_echo(&mut a, "ann", "r", "a");
    for i in 1..=5 {
        a.say("r", &format!("early{i}"));
    }
    for i in 1..=5 {
        assert_eq!(a.expect("message")["seq"], i);
    }
    // Several late joiners, so they land on different shards.
    let mut late: Vec<Client> = (0..5).map(|_| s.client()).collect();
    for (i, c) in late.iter_mut().enumerate() {
        c.login(&format!("l{i}"), "r", Some(&format!("l{i}")));
    }
    for _ in 0..5 {
        a.expect("newUser");
    }
    for i in 6..=8 {
        a.say("r", &format!("late{i}"));
        assert_eq!(a.expect("message")["seq"], i);
    }
    for (i, c) in late.iter_mut().enumerate() {
        // Joiners after i see newUser of later joiners first.
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let m = c.recv();
            if m["cmd"] == "newUser" {
                continue;
            }
            assert_eq!(m["cmd"], "message");
            seen.push(m["seq"].as_u64().unwrap());
        }
        assert_eq!(seen, [6, 7, 8], "late joiner {i}");
    }
    // A late joiner's own message continues the room's sequence.
    late[2].say("r", "from l2");
    let m = a.expect("message");
    assert_eq!((m["uid"].as_str(), m["seq"].as_u64()), (Some("l2"), Some(9)));
    for (i, c) in late.iter_mut().enumerate() {
        if i != 2 {
            assert_eq!(c.expect("message")["seq"], 9);
        }
    }
    late[2].expect_silence(Duration::from_millis(100));
}

#[test]
fn messages_to_a_room_after_all_other_members_left() {
    let s = server();
    let mut a = s.client();
    let mut b = s.client();
    a.login("ann", "r", Some("a"));
    b.login("bob", "r", Some("b"));
    a.expect("newUser");
    a.say("r", "one");
    assert_eq!(b.expect("message")["seq"], 1);
    drop(b);
    a.expect("userLeave");
    // Alone in the room: accepted silently (no error, no echo).
    a.say("r", "alone");
    a.expect_silence(SHORT);
    // A newcomer sees the sequence continue and finds the message in history.
    let mut c = s.client();
    c.login("cat", "r", Some("c"));
    a.expect("newUser");
    a.say("r", "three");
    assert_eq!(c.expect("message")["seq"], 3);
    c.send(json!({"cmd":"getHistory","rid":"r"}));
    let h = c.expect("getHistory");
    assert_eq!(seqs(&h), [1, 2, 3]);
    assert_eq!(h["msgs"][1]["msg"], "alone");
    // Everyone leaves; the room keeps its sequence for the next ones.
    a.send(json!({"cmd":"logout","rid":"r"}));
    a.expect("logout");
    c.expect("userLeave");
    // Leave by logout and wait for its acknowledgement (sent once the room
    // dropped c), so that d cannot see c's departure after joining.
    c.send(json!({"cmd":"logout","rid":"r"}));
    c.expect("logout");
    drop(c);
    let mut d = s.client();
    login_echo(&mut d, "dan", "r", "d");
    d.say("r", "four");
    assert_eq!(d.expect("message")["seq"], 4);
}

// ======================================================================
// Presence, history, private messages, many rooms
// ======================================================================

/// getOnline lists the whole room, whichever shards its members sit on:
/// each user once (one with two connections too) with uid and name, under
/// the room's rid. The list follows leaves, by logout and by the last
/// connection's disconnect; only members may ask (never one who is not in
/// the room, nor one who logged out until it logs in again). With one
/// shard and with three.
#[test]
fn get_online_lists_the_whole_room() {
    for_shards(|s| {
        let mut members: Vec<Client> = (0..5).map(|_| s.client()).collect();
        for (i, c) in members.iter_mut().enumerate() {
            c.login(&format!("n{i}"), "r", Some(&format!("u{i}")));
        }
        let mut a = s.client();
        a.login("ann", "r", Some("a"));
        a.send(json!({"cmd":"getOnline","rid":"r"}));
        let v = a.expect("getOnline");
        assert_eq!(v["rid"], "r");
        let mut uids: Vec<String> =
            v["users"].as_array().unwrap().iter().map(|u| u["uid"].as_str().unwrap().to_owned()).collect();
        uids.sort();
        assert_eq!(uids, ["a", "u0", "u1", "u2", "u3", "u4"]);
        assert!(v["users"].as_array().unwrap().iter().any(|u| u["name"] == "n3" && u["uid"] == "u3"));
        // Only members may ask.
        let mut o = s.client();
        o.login("out", "elsewhere", None);
        o.send(json!({"cmd":"getOnline","rid":"r"}));
        o.expect_error(50);

        let mut b = s.client();
        let mut c1 = s.client();
        let mut c2 = s.client();
        b.login("bob", "r", Some("b"));
        c1.login("cat", "r", Some("c"));
        c2.login("cat", "r", Some("c"));
        a.expect("newUser");
        a.expect("newUser");
        b.expect("newUser");
        // A user with two connections is listed once.
        assert_eq!(online_uids(&mut a, "r"), ["a", "b", "c", "u0", "u1", "u2", "u3", "u4"]);
        b.send(json!({"cmd":"logout","rid":"r"}));
        b.expect("logout");
        assert_eq!(a.expect("userLeave")["uid"], "b");
        assert_eq!(online_uids(&mut a, "r"), ["a", "c", "u0", "u1", "u2", "u3", "u4"]);
        drop(c1);
        a.expect_silence(SHORT);
        assert_eq!(online_uids(&mut a, "r"), ["a", "c", "u0", "u1", "u2", "u3", "u4"]);
        drop(c2);
        assert_eq!(a.expect("userLeave")["uid"], "c");
        assert_eq!(online_uids(&mut a, "r"), ["a", "u0", "u1", "u2", "u3", "u4"]);
        // A logged-out member may not ask any more; logging in again works.
        b.send(json!({"cmd":"getOnline","rid":"r"}));
        b.expect_error(50);
        b.login("bob", "r", Some("b"));
        assert_eq!(a.expect("newUser")["uid"], "b");
        assert_eq!(online_uids(&mut b, "r"), ["a", "b", "u0", "u1", "u2", "u3", "u4"]);
    });
}

#[test]
fn get_history_after_reconnect_with_since() {
    let s = server();
    let mut a = s.client();
    let mut stay = s.client();
    let mut b = s.client();
    login_echo(&mut a, "ann", "r", "a");
    stay.login("stay", "r", Some("stay"));
    b.login("bob", "r", Some("b"));
    a.expect("newUser");
    a.expect("newUser");
    stay.expect("newUser");
    let mut received = Vec::new();
    for i in 1..=3 {
        a.say("r", &format!("m{i}"));
        received.push(stay.expect("message"));
    }
    let mut last = 0;
    for _ in 1..=3 {
        last = b.expect("message")["seq"].as_u64().unwrap();
    }
    assert_eq!(last, 3);
    drop(b);
    assert_eq!(stay.expect("userLeave")["uid"], "b");
    for i in 4..=6 {
        a.say("r", &format!("m{i}"));
        received.push(stay.expect("message"));
    }
    // A private message in between is not part of history.
    a.send(json!({"cmd":"message","type":"text","msg":"secret","rid":"r","tid":"stay"}));
    stay.expect("message");
    // Reconnect and catch up.
    let mut b = s.client();
    b.login("bob", "r", Some("b"));
    b.send(json!({"cmd":"getHistory","rid":"r","since":last}));
    let h = b.expect("getHistory");
    assert_eq!(seqs(&h), [4, 5, 6]);
    // Each stored message is exactly the frame members received.
    assert_eq!(h["msgs"].as_array().unwrap(), &received[3..].to_vec());
    assert_eq!(h["epoch"], received[0]["epoch"]);
    // Up to date: nothing after the last seq; since 0 is everything.
    b.send(json!({"cmd":"getHistory","rid":"r","since":6}));
    assert_eq!(seqs(&b.expect("getHistory")), Vec::<u64>::new());
    b.send(json!({"cmd":"getHistory","rid":"r","since":0}));
    assert_eq!(seqs(&b.expect("getHistory")), [1, 2, 3, 4, 5, 6]);
    b.send(json!({"cmd":"getHistory","rid":"r","since":0,"limit":2}));
    assert_eq!(seqs(&b.expect("getHistory")), [1, 2]);
    // The next live message continues right after the history.
    a.say("r", "m7");
    assert_eq!(b.expect("message")["seq"], 7);
}

/// Private messages reach every connection of their target and no one
/// else, carry the room's current seq without advancing it, stay out of
/// history, and are refused for a tid not in the room (in no room, or only
/// in another one). Echo: a sender with it gets the very frame the others
/// get, for private and room messages; one without it gets nothing back.
/// With one shard and with three.
#[test]
fn private_message_reaches_only_target_connections() {
    for_shards(|s| {
        let mut a = s.client(); // no echo
        let mut e = s.client(); // echo
        let mut b1 = s.client();
        let mut b2 = s.client();
        let mut c = s.client();
        let mut far = s.client();
        a.login("ann", "r", Some("a"));
        login_echo(&mut e, "eve", "r", "e");
        b1.login("bob", "r", Some("b"));
        b2.login("bob", "r", Some("b")); // a second connection of the same user
        c.login("cat", "r", Some("c"));
        far.login("far", "other", Some("far"));
        for _ in 0..3 {
            a.expect("newUser");
        }
        for _ in 0..2 {
            e.expect("newUser");
        }
        b1.expect("newUser");
        b2.expect("newUser");

        // Without echo the sender gets nothing back.
        a.send(json!({"cmd":"message","type":"text","msg":"from a","rid":"r","tid":"b"}));
        let m1 = b1.expect("message");
        let m2 = b2.expect("message");
        assert_eq!(m1, m2);
        assert_eq!((m1["uid"].as_str(), m1["tid"].as_str(), m1["seq"].as_u64()), (Some("a"), Some("b"), Some(0)));
        assert_eq!(m1["msg"], "from a");
        a.expect_silence(SHORT);
        c.expect_silence(Duration::from_millis(10));
        e.expect_silence(Duration::from_millis(10));

        // With echo the sender gets the same frame as the target.
        e.send(json!({"cmd":"message","type":"text","msg":"from e","rid":"r","tid":"b"}));
        let t = b1.expect("message");
        assert_eq!(b2.expect("message"), t);
        let own = e.expect("message");
        assert_eq!(own, t);
        assert_eq!(own["tid"], "b");
        // Echo of room messages too: the sender's copy is what every member gets.
        e.say("r", "room");
        let own = e.expect("message");
        assert_eq!(own["seq"], 1);
        for x in [&mut a, &mut b1, &mut b2, &mut c] {
            assert_eq!(x.expect("message"), own);
        }
        // A private message carries the room's current seq, without advancing it.
        e.send(json!({"cmd":"message","type":"text","msg":"psst","rid":"r","tid":"b"}));
        for x in [&mut b1, &mut b2] {
            let m = x.expect("message");
            assert_eq!((m["tid"].as_str(), m["msg"].as_str()), (Some("b"), Some("psst")));
            assert_eq!(m["seq"], 1);
        }
        assert_eq!(e.expect("message")["tid"], "b"); // echo copy
        c.expect_silence(SHORT);
        a.send(json!({"cmd":"message","type":"text","msg":"p2","rid":"r","tid":"c"}));
        assert_eq!(c.expect("message")["seq"], 1);
        // The next room message has no gap for anyone.
        e.say("r", "room2");
        assert_eq!(c.expect("message")["seq"], 2);
        assert_eq!(a.expect("message")["seq"], 2);
        assert_eq!(e.expect("message")["seq"], 2); // echo
        // A tid present only in another room is refused, and nothing reaches it.
        a.send(json!({"cmd":"message","type":"text","msg":"x","rid":"r","tid":"far"}));
        a.expect_error(50);
        far.expect_silence(SHORT);
        // So is a tid in no room.
        a.send(json!({"cmd":"message","type":"text","msg":"x","rid":"r","tid":"nobody"}));
        a.expect_error(50);
        // Private messages are not in history.
        c.send(json!({"cmd":"getHistory","rid":"r"}));
        let h = c.expect("getHistory");
        assert_eq!(seqs(&h), [1, 2]);
        assert!(h["msgs"].as_array().unwrap().iter().all(|m| m.get("tid").is_none()));
    });
}

#[test]
fn many_rooms_on_one_connection() {
    let s = server();
    let n = 30;
    let mut a = s.client();
    let mut b = s.client();
    a.login("ann", "room0", Some("a"));
    b.login("bob", "room0", Some("b"));
    a.expect("newUser");
    for i in 1..n {
        let rid = format!("room{i}");
        a.send(json!({"cmd":"login","rid":rid}));
        assert_eq!(a.expect("login")["rid"], rid);
        b.send(json!({"cmd":"login","rid":rid}));
        assert_eq!(b.expect("login"), json!({"cmd":"login","uid":"b","name":"bob","rid":rid}));
        assert_eq!(a.expect("newUser")["rid"], rid);
    }
    for i in 0..n {
        a.say(&format!("room{i}"), &format!("to {i}"));
    }
    let mut got = BTreeSet::new();
    for _ in 0..n {
        let m = b.expect("message");
        let rid = m["rid"].as_str().unwrap().to_owned();
        assert_eq!(m["msg"], format!("to {}", &rid[4..]));
        assert_eq!(m["seq"], 1, "every room has its own sequence");
        assert!(got.insert(rid));
    }
    assert_eq!(got.len(), n);
    assert_eq!(online_uids(&mut b, "room17"), ["a", "b"]);
    // logout without rid leaves them all, with one ack per room.
    b.send(json!({"cmd":"logout"}));
    let mut left = BTreeSet::new();
    for _ in 0..n {
        let v = b.expect("logout");
        assert_keys(&v, &["cmd", "rid"]);
        left.insert(v["rid"].as_str().unwrap().to_owned());
    }
    assert_eq!(left, got);
    let mut leaves = BTreeSet::new();
    for _ in 0..n {
        let v = a.expect("userLeave");
        assert_eq!(v["uid"], "b");
        leaves.insert(v["rid"].as_str().unwrap().to_owned());
    }
    assert_eq!(leaves, got);
    b.send(json!({"cmd":"logout"}));
    b.expect_error(50);
    // Identity stays after leaving everything (README: first login fixes it).
    b.send(json!({"cmd":"login","name":"other","rid":"room3","uid":"zz"}));
    assert_eq!(b.expect("login"), json!({"cmd":"login","uid":"b","name":"bob","rid":"room3"}));
    assert_eq!(a.expect("newUser")["uid"], "b");
}

// ======================================================================
// WebSocket framing
// ======================================================================

#[test]
fn fragmented_text_with_interleaved_control_frames_is_accepted() {
    let s = server();
    let mut b = s.client();
    b.login("bob", "r", Some("b"));
    let mut r = Raw::connect(s.addr);
    let login = br#"{"cmd":"login","name":"ann","rid":"r","uid":"a"}"#;
    let (p1, rest) = login.split_at(10);
    let (p2, p3) = rest.split_at(20);
    r.write(&raw_frame(0x01, p1, true)); // text, not final
    r.write(&raw_frame(FIN | 0x9, b"mid-ping", true)); // ping in between
    r.write(&raw_frame(0x00, p2, true)); // continuation, not final
    r.write(&raw_frame(FIN | 0xA, b"unsolicited", true)); // pong: ignored
    r.write(&raw_frame(FIN, p3, true)); // final continuation (opcode 0)
    let mut pong = None;
    let mut ack = None;
    while pong.is_none() || ack.is_none() {
        let (op, p) = r.read_frame().expect("EOF");
        match op {
            10 => {
                assert!(pong.is_none(), "one pong only");
                pong = Some(p)
            }
            1 => ack = Some(serde_json::from_slice::<Value>(&p).unwrap()),
            _ => panic!("opcode {op}"),
        }
    }
    assert_eq!(pong.unwrap(), b"mid-ping");
    assert_eq!(ack.unwrap(), json!({"cmd":"login","uid":"a","name":"ann","rid":"r"}));
    assert_eq!(b.expect("newUser")["uid"], "a");
    // A multi-byte character split across fragments is valid UTF-8 overall.
    let msg = json!({"cmd":"message","type":"text","msg":"é✓😀","rid":"r"}).to_string();
    let bytes = msg.as_bytes();
    let cut = msg.find('é').unwrap() + 1; // inside 'é'
    let cut2 = msg.find('😀').unwrap() + 2; // inside the emoji
    r.write(&raw_frame(0x01, &bytes[..cut], true));
    r.write(&raw_frame(0x00, &bytes[cut..cut2], true));
    r.write(&raw_frame(FIN, &bytes[cut2..], true));
    assert_eq!(b.expect("message")["msg"], "é✓😀");
    // Empty fragments are legal too.
    let msg = br#"{"cmd":"getOnline","rid":"r"}"#;
    r.write(&raw_frame(0x01, b"", true));
    r.write(&raw_frame(0x00, msg, true));
    r.write(&raw_frame(FIN, b"", true));
    assert_eq!(raw_text(&mut r)["cmd"], "getOnline");
    // A fragmented binary message is one 101.
    r.write(&raw_frame(0x02, b"{\"cmd\":", true));
    r.write(&raw_frame(FIN, b"\"getOnline\",\"rid\":\"r\"}", true));
    let e = raw_text(&mut r);
    assert_eq!((e["cmd"].as_str(), e["errCode"].as_i64()), (Some("error"), Some(101)));
    raw_silence(&mut r, SHORT);
}

/// A ping is answered with a pong carrying its payload (empty, short, the
/// 125-byte maximum), before and after a login; a close is echoed with its
/// code, and then the server hangs up.
#[test]
fn ping_gets_pong_and_close_is_echoed() {
    let s = server();
    let mut r = Raw::connect(s.addr);
    for payload in [b"".to_vec(), b"x".to_vec(), b"hello".to_vec(), (0..125u8).collect::<Vec<u8>>()] {
        r.write(&raw_frame(FIN | 0x9, &payload, true));
        assert_eq!(r.read_frame(), Some((10, payload)));
    }
    // Before and after a login, pings keep working.
    r.write(&raw_frame(FIN | 0x1, br#"{"cmd":"login","name":"ann","rid":"r"}"#, true));
    assert_eq!(raw_text(&mut r)["cmd"], "login");
    r.write(&raw_frame(FIN | 0x9, b"after", true));
    assert_eq!(r.read_frame(), Some((10, b"after".to_vec())));
    // A close is echoed with its code; then the server hangs up.
    r.write(&raw_frame(FIN | 0x8, &1000u16.to_be_bytes(), true));
    assert_eq!(r.expect_close(), 1000);
    assert_eq!(r.read_frame(), None);
}

/// Each protocol violation closes its connection with 1002 and is counted
/// in cchat_protocol_closes_total: unmasked frames, reserved opcodes (data
/// and control, low and high) and bits, oversized or fragmented control
/// frames, continuations without a start, a new message inside a
/// fragmented one, a 1-byte close payload. The server serves on afterwards.
#[test]
fn protocol_violations_close_1002() {
    let s = server();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked text", raw_frame(FIN | 0x1, b"{}", false)),
        ("unmasked ping", raw_frame(FIN | 0x9, b"p", false)),
        ("reserved data opcode 0x3", raw_frame(FIN | 0x3, b"x", true)),
        ("reserved data opcode 0x7", raw_frame(FIN | 0x7, b"x", true)),
        ("reserved control opcode 0xB", raw_frame(FIN | 0xB, b"x", true)),
        ("reserved control opcode 0xF", raw_frame(FIN | 0xF, b"x", true)),
        ("RSV1", raw_frame(FIN | 0x40 | 0x1, b"{}", true)),
        ("RSV2", raw_frame(FIN | 0x20 | 0x1, b"{}", true)),
        ("RSV3", raw_frame(FIN | 0x10 | 0x1, b"{}", true)),
        ("RSV1 on ping", raw_frame(FIN | 0x40 | 0x9, b"p", true)),
        ("ping over 125 bytes", raw_frame(FIN | 0x9, &[b'p'; 126], true)),
        ("close over 125 bytes", {
            let mut p = 1000u16.to_be_bytes().to_vec();
            p.extend_from_slice(&[b'r'; 124]);
            raw_frame(FIN | 0x8, &p, true)
        }),
        ("fragmented ping", raw_frame(0x9, b"p", true)),
        ("continuation without start", raw_frame(FIN, b"{}", true)),
        ("non-final continuation without start", raw_frame(0x0, b"{", true)),
        ("new text frame inside a fragmented message", {
            let mut f = raw_frame(0x1, b"{\"cmd\"", true);
            f.extend(raw_frame(FIN | 0x1, b"{}", true));
            f
        }),
        ("close with a 1-byte payload", raw_frame(FIN | 0x8, &[3], true)),
    ];
    let n = cases.len();
    for (what, bytes) in cases {
        let mut r = Raw::connect(s.addr);
        r.write(&bytes);
        assert_eq!(r.expect_close(), 1002, "{what}");
    }
    assert!(s.metric("cchat_protocol_closes_total") >= n as f64);
    // The server is fine afterwards.
    let mut c = s.client();
    c.login("ann", "r", None);
}

#[test]
fn close_with_an_invalid_status_code_is_1002() {
    // RFC 6455 §7.4: 1005, 1006, 1015 and codes below 1000 never appear in a
    // close frame; a peer receiving them fails the connection with 1002.
    let s = server();
    for code in [0u16, 999, 1005, 1006, 1015, 5000] {
        let mut r = Raw::connect(s.addr);
        r.write(&raw_frame(FIN | 0x8, &code.to_be_bytes(), true));
        assert_eq!(r.expect_close(), 1002, "close code {code}");
    }
    // A valid application code is echoed.
    let mut r = Raw::connect(s.addr);
    r.write(&raw_frame(FIN | 0x8, &4000u16.to_be_bytes(), true));
    assert_eq!(r.expect_close(), 4000);
}

/// Text that is not UTF-8 closes its connection with 1007: bytes never
/// valid (0xff, 0xfe), an overlong form, a surrogate, a code point above
/// U+10FFFF, a character cut at the end; also when a character is split
/// across fragments, or the message's last fragment ends inside one.
#[test]
fn invalid_utf8_closes_1007_even_across_fragments() {
    let s = server();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("0xff 0xfe", raw_frame(FIN | 0x1, &[b'{', 0xff, 0xfe, b'}'], true)),
        ("overlong", raw_frame(FIN | 0x1, b"{\"cmd\":\"\xc0\xaf\"}", true)),
        ("surrogate", raw_frame(FIN | 0x1, b"{\"cmd\":\"\xed\xa0\x80\"}", true)),
        ("above U+10FFFF", raw_frame(FIN | 0x1, b"\xf4\x90\x80\x80", true)),
        ("truncated at the end", raw_frame(FIN | 0x1, b"{}\xe2\x82", true)),
        ("split surrogate", {
            let mut f = raw_frame(0x1, b"{\"cmd\":\"\xed", true);
            f.extend(raw_frame(FIN, b"\xa0\x80\"}", true));
            f
        }),
        ("truncated char at the end of a fragmented message", {
            let mut f = raw_frame(0x1, b"{\"a\":1}", true);
            f.extend(raw_frame(FIN, b"\xe2\x82", true));
            f
        }),
    ];
    for (what, bytes) in cases {
        let mut r = Raw::connect(s.addr);
        r.write(&bytes);
        assert_eq!(r.expect_close(), 1007, "{what}");
    }
}

/// --max-frame-bytes: a frame of exactly the limit is served; one byte
/// more closes with 1009, before a login or after, for text and binary; a
/// header announcing a huge payload is refused at once; a fragmented
/// message whose fragments are each small but whose total is over the
/// limit closes with 1009 too.
#[test]
fn frames_over_max_frame_bytes_close_1009() {
    let s = Server::start(&["--shards", "3", "--rate-limit", "0", "--max-frame-bytes", "1000"]);
    // Exactly the limit is fine.
    let mut r = Raw::connect(s.addr);
    r.write(&raw_frame(FIN | 0x1, br#"{"cmd":"login","name":"ann","rid":"r","uid":"a"}"#, true));
    assert_eq!(raw_text(&mut r)["cmd"], "login");
    let mut body = br#"{"cmd":"getOnline","rid":"r"}"#.to_vec();
    body.resize(1000, b' ');
    r.write(&raw_frame(FIN | 0x1, &body, true));
    assert_eq!(raw_text(&mut r)["cmd"], "getOnline");
    // One byte more: 1009.
    let mut body = br#"{"cmd":"getOnline","rid":"r"}"#.to_vec();
    body.resize(1001, b' ');
    r.write(&raw_frame(FIN | 0x1, &body, true));
    assert_eq!(r.expect_close(), 1009);
    // Before a login too, whatever the text.
    let mut r = Raw::connect(s.addr);
    r.write(&raw_frame(FIN | 0x1, &[b' '; 1001], true));
    assert_eq!(r.expect_close(), 1009);
    // A header announcing a huge (64-bit length) payload is refused at once,
    // without waiting for the payload.
    let mut r = Raw::connect(s.addr);
    let mut f = vec![FIN | 0x1, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 40).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    r.write(&f);
    assert_eq!(r.expect_close(), 1009);
    // A binary frame over the limit too.
    let mut r = Raw::connect(s.addr);
    r.write(&raw_frame(FIN | 0x2, &[0u8; 1001], true));
    assert_eq!(r.expect_close(), 1009);
    // A fragmented message whose fragments are each small but whose total is not.
    let mut r = Raw::connect(s.addr);
    r.write(&raw_frame(0x1, &[b' '; 400], true));
    r.write(&raw_frame(0x0, &[b' '; 400], true));
    r.write(&raw_frame(FIN, &[b' '; 400], true));
    assert_eq!(r.expect_close(), 1009);
    // Of two fragments as well.
    let mut r = Raw::connect(s.addr);
    r.write(&raw_frame(0x1, &[b' '; 600], true));
    r.write(&raw_frame(FIN, &[b' '; 600], true));
    assert_eq!(r.expect_close(), 1009);
}

// ======================================================================
// HTTP
// ======================================================================

/// The plain HTTP endpoints: /healthz answers 200 "ok"; / serves the HTML
/// page; an unknown path is a 404; /metrics is well-formed Prometheus text
/// (every sample under a `# TYPE` line, every value a number) naming the
/// server's metrics, with live values for one client logged in to one room.
#[test]
fn http_healthz_metrics_and_index() {
    let s = server();
    let (st, head, body) = http_raw(s.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 200, "{head}");
    assert_eq!(String::from_utf8(body).unwrap().trim(), "ok");

    let (st, head, body) = http_raw(s.addr, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 200, "{head}");
    let ct = header(&head, "content-type").unwrap_or_default();
    assert!(ct.starts_with("text/html"), "content-type {ct:?}");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("<html"), "not HTML");

    let (st, head, _) = http_raw(s.addr, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 404, "{head}");

    let mut c = s.client();
    c.login("ann", "r", None);
    let (st, head, body) = http_raw(s.addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 200, "{head}");
    let ct = header(&head, "content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    let body = String::from_utf8(body).unwrap();
    // Prometheus text format: every sample belongs to a family declared by a
    // preceding `# TYPE name kind` line, and every value is a number.
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = 0;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad TYPE line {line:?}");
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice: {name}");
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP ") || line.starts_with("# "), "{line:?}");
            continue;
        }
        samples += 1;
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("bad sample {line:?}"));
        let name = &line[..name_end];
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad metric name {name:?}");
        let after = if line[name_end..].starts_with('{') {
            let close = line.rfind('}').unwrap_or_else(|| panic!("unclosed labels {line:?}"));
            &line[close + 1..]
        } else {
            &line[name_end..]
        };
        let value = after.split_whitespace().next().unwrap_or_else(|| panic!("no value {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} has no preceding # TYPE line");
    }
    assert!(samples > 0 && !types.is_empty());
    assert!(body.contains("# TYPE"));
    for name in [
        "cchat_connections 1",
        "cchat_rooms 1",
        "cchat_messages_in_total",
        "cchat_deliveries_total",
        "cchat_errors_total{code=\"50\"}",
        "cchat_slow_consumer_closes_total",
        "cchat_shard_queue_depth{shard=\"0\"}",
        "cchat_fanout_latency_seconds",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
}

#[test]
fn upgrade_is_accepted_on_any_path() {
    let s = server();
    let mut clients = Vec::new();
    for path in ["/any/path?x=1", "/", "/ws", "/chat?room=5&x=%20y"] {
        let stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (ws, resp) = tungstenite::client(format!("ws://{}{path}", s.addr), crate::common::Stream::Plain(stream))
            .unwrap_or_else(|e| panic!("upgrade on {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 101);
        clients.push(Client { ws, token_secret: None });
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.login(&format!("n{i}"), "r", Some(&format!("u{i}")));
    }
    clients[3].say("r", "across paths");
    for c in clients.iter_mut().take(3) {
        loop {
            let m = c.recv();
            if m["cmd"] == "message" {
                assert_eq!(m["msg"], "across paths");
                break;
            }
        }
    }
    // The 101 carries the RFC 6455 accept value.
    let (st, head, _) = http_raw(
        s.addr,
        b"GET /any/path?x=1 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(st, 101, "{head}");
    assert_eq!(header(&head, "sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert!(header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    // Header names and the Connection token list are case-insensitive.
    let (st, head, _) = http_raw(
        s.addr,
        b"GET /x HTTP/1.1\r\nhost: t\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    );
    assert_eq!(st, 101, "{head}");
}

#[test]
fn non_get_and_malformed_upgrades_are_refused() {
    let s = server();
    // Non-GET requests: not served.
    for req in [
        &b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
        &b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
        &b"DELETE /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"[..],
    ] {
        let (st, head, _) = http_raw(s.addr, req);
        assert!((400..500).contains(&st), "{:?} got {head}", String::from_utf8_lossy(req));
    }
    // Upgrade without a key: 400.
    let (st, head, _) = http_raw(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(st, 400, "{head}");
    // Unsupported version: 426 naming the supported one.
    let (st, head, _) = http_raw(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert_eq!(st, 426, "{head}");
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
    // Garbage instead of HTTP: 400 (or a hang-up, never a 101 or 200).
    let mut st = TcpStream::connect(s.addr).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    st.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = st.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    // The server still upgrades good requests.
    let mut c = s.client();
    c.login("ann", "r", None);
}
