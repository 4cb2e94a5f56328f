//! permessage-deflate (RFC 7692) on the client port, with real sockets: the
//! offer and its answer, a broadcast compressed once and shared by those who
//! negotiated it (plain to the rest), clients that send compressed, and
//! compressed input that is bad or too big.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cchat::ws::deflate::{client_deflated_frame, inflate_message};
use serde_json::{Value, json};

use crate::common::{Raw, Server, wait_until};

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Upgrades offering `offer` (as Chromium does); returns the connection and
/// the 101's `Sec-WebSocket-Extensions` value (None when declined).
fn connect(addr: SocketAddr, offer: &str) -> (Raw, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {offer}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "hung up during the upgrade");
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let ext = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-extensions").then(|| v.trim().to_owned())
    });
    buf.drain(..end);
    (Raw { s, buf }, ext)
}

/// Sends a command compressed.
fn send_z(c: &mut Raw, v: &Value) {
    let mut f = Vec::new();
    client_deflated_frame(&mut f, v.to_string().as_bytes(), [3, 1, 4, 1]);
    c.write(&f);
}

/// Next text frame whose `cmd` is `cmd`: (whether it came compressed, the JSON).
fn expect(c: &mut Raw, cmd: &str) -> (bool, Value) {
    loop {
        let (b0, p) = c.read_frame_b0().expect("EOF");
        assert_eq!(b0 & 0x30, 0, "RSV2/RSV3 are never set");
        if b0 & 0x0f != 1 {
            continue;
        }
        let z = b0 & 0x40 != 0;
        let text = if z { inflate_message(&p).expect("valid deflate data") } else { p };
        let v: Value = serde_json::from_slice(&text).unwrap();
        if v["cmd"] == cmd {
            return (z, v);
        }
    }
}

fn login(c: &mut Raw, uid: &str, rid: &str, compressed: bool) {
    let v = json!({"cmd": "login", "name": uid, "uid": uid, "rid": rid});
    if compressed {
        send_z(c, &v);
    } else {
        c.frame(1, v.to_string().as_bytes());
    }
    let (_, ack) = expect(c, "login");
    assert_eq!(ack["uid"], uid);
}

/// Everyday chat text, long enough to be compressed.
fn chat_text() -> String {
    "are we still on for the review at 3pm? I pushed the fix for the login bug, \
     the build is green, and I think we can ship it before the weekend if Carol \
     signs off on the migration. let me know, I will be around all afternoon."
        .to_owned()
}

#[test]
fn a_browser_offer_is_answered_and_a_broadcast_is_compressed_once_for_all_who_asked() {
    let s = Server::start(&["--shards", "1", "--compression-min-bytes", "200"]);
    let (mut z1, ext) = connect(s.addr, OFFER);
    assert_eq!(
        ext.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "accepted without context takeover either way"
    );
    let (mut z2, _) = connect(s.addr, "x-webkit-deflate-frame, permessage-deflate");
    let mut plain = s.client();
    let mut sender = s.client();
    login(&mut z1, "z1", "lobby", false);
    login(&mut z2, "z2", "lobby", true);
    plain.login("plain", "lobby", Some("plain"));
    sender.login("sender", "lobby", Some("sender"));
    let before = s.metric("cchat_deflated_frames_total");

    sender.say("lobby", &chat_text());
    let (zz1, m1) = expect(&mut z1, "message");
    let (zz2, m2) = expect(&mut z2, "message");
    assert!(zz1 && zz2, "both that negotiated it get it compressed");
    assert_eq!(m1["msg"], chat_text());
    assert_eq!(m1, m2);
    plain.expect("newUser");
    let p = plain.expect("message");
    assert_eq!(p["msg"], chat_text(), "the plain member gets the same message, plain");
    assert_eq!(s.metric("cchat_deflated_frames_total") - before, 1.0, "compressed once, not once per member");
    let (plain_bytes, z_bytes) = (s.metric("cchat_deflated_plain_bytes_total"), s.metric("cchat_deflated_bytes_total"));
    assert!(z_bytes < plain_bytes * 0.8, "{z_bytes} of {plain_bytes}");

    // A frame under --compression-min-bytes is not worth it: plain, even
    // to those who negotiated.
    sender.say("lobby", "ok");
    let (zz, m) = expect(&mut z1, "message");
    assert!(!zz);
    assert_eq!(m["msg"], "ok");

    // A history page (a reply to one) goes compressed too.
    z1.frame(1, json!({"cmd": "getHistory", "rid": "lobby"}).to_string().as_bytes());
    let (zh, h) = expect(&mut z1, "getHistory");
    assert!(zh, "a history page is long: compressed");
    assert!(h.to_string().contains("signs off on the migration"), "{h}");
}

#[test]
fn a_client_that_negotiated_may_send_compressed_and_others_may_not() {
    let s = Server::start(&["--max-frame-bytes", "65536"]);
    let (mut a, _) = connect(s.addr, "permessage-deflate");
    let mut b = s.client();
    login(&mut a, "a", "room", true);
    b.login("b", "room", Some("b"));
    send_z(&mut a, &json!({"cmd": "message", "type": "text", "rid": "room", "msg": chat_text()}));
    assert_eq!(b.expect("message")["msg"], chat_text());

    // A compressed message of 2 KB that inflates to 1 MB: closed 1009, never inflated whole.
    let mut bomb = Vec::new();
    let huge = format!(r#"{{"cmd":"message","type":"text","rid":"room","msg":"{}"}}"#, "a".repeat(1 << 20));
    client_deflated_frame(&mut bomb, huge.as_bytes(), [7, 7, 7, 7]);
    assert!(bomb.len() < 4096);
    a.write(&bomb);
    assert_eq!(a.expect_close(), 1009);

    // Bytes that are not deflate data: 1002.
    let (mut c, _) = connect(s.addr, "permessage-deflate");
    let mut junk = Vec::new();
    cchat::ws::client_frame(&mut junk, 1, &[0xff; 40], [1, 2, 3, 4]);
    junk[0] |= 0x40;
    c.write(&junk);
    assert_eq!(c.expect_close(), 1002);

    // A connection that did not negotiate it may not set RSV1: 1002.
    let mut d = Raw::connect(s.addr);
    let mut f = Vec::new();
    client_deflated_frame(&mut f, br#"{"cmd":"getOnline","rid":"room"}"#, [1, 2, 3, 4]);
    d.write(&f);
    assert_eq!(d.expect_close(), 1002);

    // The server kept serving: b is still there.
    let (mut e, _) = connect(s.addr, "permessage-deflate");
    login(&mut e, "e", "room", true);
    b.expect("newUser");
}

#[test]
fn with_compression_off_an_offer_is_declined_and_frames_go_plain() {
    let s = Server::start(&["--compression", "off"]);
    let (mut a, ext) = connect(s.addr, OFFER);
    assert_eq!(ext, None);
    let mut b = s.client();
    login(&mut a, "a", "room", false);
    b.login("b", "room", Some("b"));
    b.say("room", &chat_text());
    let (z, m) = expect(&mut a, "message");
    assert!(!z);
    assert_eq!(m["msg"], chat_text());
    // Offers the server cannot honour are declined with compression on, too.
    let s = Server::start(&[]);
    let (_, ext) = connect(s.addr, "permessage-deflate; server_max_window_bits=10");
    assert_eq!(ext, None, "a window under 32 KB cannot be shared by every recipient");
}

#[test]
fn a_compressed_connection_rests_and_wakes_still_compressed() {
    // --dormant-after: the task that ends forgets nothing the connection
    // negotiated; the new one inflates its input and gets frames compressed.
    let s = Server::start(&["--shards", "1", "--dormant-after", "0.3", "--compression-min-bytes", "100"]);
    let (mut z, _) = connect(s.addr, OFFER);
    let mut plain = s.client();
    login(&mut z, "z", "lobby", true);
    plain.login("plain", "lobby", Some("plain"));
    let both_dormant = || s.metric("cchat_dormant_connections") >= 2.0;
    wait_until("never dormant", both_dormant);
    send_z(&mut z, &json!({"cmd": "message", "type": "text", "rid": "lobby", "msg": chat_text()}));
    assert_eq!(plain.expect("message")["msg"], chat_text());
    assert!(s.metric("cchat_dormant_wakes_total") >= 1.0);
    wait_until("never dormant again", both_dormant);
    // A reply to the woken (and again dormant) connection: still compressed.
    plain.say("lobby", &chat_text());
    let (zz, m) = expect(&mut z, "message");
    assert!(zz, "compressed, as negotiated");
    assert_eq!(m["msg"], chat_text());
    // And its next compressed message is inflated by the next task.
    send_z(&mut z, &json!({"cmd": "message", "type": "text", "rid": "lobby", "msg": "ok, zipped"}));
    assert_eq!(plain.expect("message")["msg"], "ok, zipped");
}
