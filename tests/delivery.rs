//! Delivery (DESIGN.md §1 "Delivery"): a message sent again under its
//! `mid` is posted once, and a login with `since` resumes a room with
//! exactly the messages it missed, in order, before any live one.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Client, Server, fresh_uid, history_msgs};

const QUIET: Duration = Duration::from_millis(400);

fn say_mid(c: &mut Client, rid: &str, msg: &str, mid: &str) {
    c.send(json!({"cmd": "message", "type": "text", "msg": msg, "rid": rid, "mid": mid}));
}

/// The next `message` frame (skipping presence).
fn next_message(c: &mut Client) -> Value {
    loop {
        let v = c.recv();
        if v["cmd"] == "message" {
            return v;
        }
        assert_ne!(v["cmd"], "error", "{v}");
    }
}

fn history(c: &mut Client, rid: &str) -> Vec<(u64, u64, String)> {
    c.send(json!({"cmd": "getHistory", "rid": rid, "limit": 1000}));
    loop {
        let v = c.recv();
        if v["cmd"] == "getHistory" {
            return history_msgs(&v);
        }
        assert_ne!(v["cmd"], "error", "{v}");
    }
}

#[test]
fn a_message_sent_again_under_its_mid_is_posted_once() {
    let s = Server::start(&[]);
    let rid = "dedupe";
    let (ua, ub) = (fresh_uid(), fresh_uid());
    let mut a = s.client();
    a.login_echo("A", rid, &ua);
    let mut b = s.client();
    b.login("B", rid, Some(&ub));
    let _ = a.expect("newUser");

    say_mid(&mut a, rid, "hello once", "m-1");
    let first = next_message(&mut a);
    assert_eq!(first["mid"], "m-1", "the message carries its mid live: {first}");
    assert!(first.get("dup").is_none());
    let got = next_message(&mut b);
    assert_eq!((got["seq"].clone(), got["mid"].clone()), (first["seq"].clone(), json!("m-1")));

    // The sender's connection dropped before it saw the answer: it logs
    // in again and sends the same message under the same mid.
    drop(a);
    let mut a2 = s.client();
    a2.login_echo("A", rid, &ua);
    say_mid(&mut a2, rid, "hello once", "m-1");
    let dup = next_message(&mut a2);
    assert_eq!(dup["dup"], true, "{dup}");
    assert_eq!((dup["seq"].clone(), dup["epoch"].clone()), (first["seq"].clone(), first["epoch"].clone()));
    assert_eq!(dup["ts"], first["ts"], "the original's time: {dup}");
    // Nobody else gets it again, and history holds it once, with its mid.
    assert!(b.drain_texts(QUIET).is_empty());
    let h = history(&mut b, rid);
    assert_eq!(h.iter().filter(|m| m.2 == "hello once").count(), 1, "{h:?}");
    b.send(json!({"cmd": "getHistory", "rid": rid}));
    let raw = b.expect("getHistory");
    assert_eq!(raw["msgs"][0]["mid"], "m-1", "{raw}");

    // The same mid from another user is another message; a new mid too.
    say_mid(&mut b, rid, "mine", "m-1");
    say_mid(&mut a2, rid, "hello again", "m-2");
    let texts = b.drain_texts(QUIET);
    assert_eq!(texts, vec!["hello again".to_owned()], "b has no echo: only a's new message");
    assert_eq!(history(&mut b, rid).len(), 3);
}

#[test]
fn a_bad_mid_or_since_is_refused_with_a_clear_error() {
    let s = Server::start(&[]);
    let mut a = s.client();
    a.login("A", "r", None);
    a.send(json!({"cmd": "message", "type": "text", "msg": "x", "rid": "r", "mid": "has space"}));
    let e = a.expect_error(50);
    assert!(e["errMsg"].as_str().unwrap().contains("mid"), "{e}");
    a.send(json!({"cmd": "login", "name": "A", "rid": "r2", "since": 5}));
    let e = a.expect_error(50);
    assert!(e["errMsg"].as_str().unwrap().contains("since"), "{e}");
    a.send(json!({"cmd": "login", "name": "A", "rid": "r2", "since": {"epoch": 1}}));
    a.expect_error(50);
}

/// Posts `n` messages from `w` (no echo) and returns nothing; they are
/// numbered `prefix-i`.
fn post(w: &mut Client, rid: &str, prefix: &str, n: usize) {
    for i in 0..n {
        w.say(rid, &format!("{prefix}-{i}"));
    }
}

/// Logs in to `rid` resuming after `(epoch, seq)`; returns the ack.
fn resume(c: &mut Client, name: &str, rid: &str, uid: &str, epoch: u64, seq: u64) -> Value {
    c.send(json!({"cmd": "login", "name": name, "rid": rid, "uid": uid, "since": {"epoch": epoch, "seq": seq}}));
    c.expect("login")
}

/// The missed messages after a resume, then a live one: every seq once, in
/// order, with no gap at the seam.
fn check_resume(s: &Server, missed: usize) {
    let rid = format!("resume-{missed}");
    let (ua, uw) = (fresh_uid(), fresh_uid());
    let mut a = s.client();
    a.login("A", &rid, Some(&ua));
    let mut w = s.client();
    w.login_echo("W", &rid, &uw);
    let _ = a.expect("newUser");
    let (epoch, seen) = w.say_acked(&rid, "before").unwrap();
    assert_eq!(next_message(&mut a)["seq"], seen);
    // A goes away; the room moves on without it.
    drop(a);
    post(&mut w, &rid, "missed", missed);
    let (_, top) = w.say_acked(&rid, "last missed").unwrap();
    assert_eq!(top, seen + missed as u64 + 1);

    let mut a = s.client();
    let ack = resume(&mut a, "A", &rid, &ua, epoch, seen);
    assert_eq!(ack["recovered"], true, "{ack}");
    // A live message sent now must come after every missed one.
    w.say(&rid, "live");
    let mut seqs = Vec::new();
    loop {
        let m = next_message(&mut a);
        seqs.push(m["seq"].as_u64().unwrap());
        if m["msg"] == "live" {
            break;
        }
    }
    let want: Vec<u64> = (seen + 1..=top + 1).collect();
    assert_eq!(seqs, want, "every missed message once, in order, then the live one");
    assert!(a.drain_texts(QUIET).is_empty());
}

#[test]
fn resume_after_a_few_missed_messages_replays_them_from_memory() {
    let s = Server::start(&["--rate-limit", "0"]);
    check_resume(&s, 10);
}

#[test]
fn resume_past_what_memory_holds_reads_the_log_first() {
    // --history-memory 100 (the default): 300 missed are read from disk.
    let s = Server::start(&["--rate-limit", "0"]);
    check_resume(&s, 300);
}

#[test]
fn resume_past_the_history_window_or_in_another_epoch_is_not_recovered() {
    let s = Server::start(&["--rate-limit", "0", "--history", "200"]);
    let rid = "far";
    let uw = fresh_uid();
    let mut w = s.client();
    w.login_echo("W", rid, &uw);
    let (epoch, first) = w.say_acked(rid, "first").unwrap();
    post(&mut w, rid, "m", 300);
    let (_, top) = w.say_acked(rid, "top").unwrap();

    let ua = fresh_uid();
    let mut a = s.client();
    let ack = resume(&mut a, "A", rid, &ua, epoch, first);
    assert_eq!(ack["recovered"], false, "300 back is past --history 200: {ack}");
    // A member now, live from here; the client pages with getHistory.
    w.say(rid, "after");
    assert_eq!(next_message(&mut a)["msg"], "after");

    let mut b = s.client();
    let ack = resume(&mut b, "B", rid, &fresh_uid(), epoch + 1000, 1);
    assert_eq!(ack["recovered"], false, "another epoch: {ack}");
    let mut c = s.client();
    let ack = resume(&mut c, "C", rid, &fresh_uid(), epoch, top + 5);
    assert_eq!(ack["recovered"], false, "past the room's top: {ack}");
    let mut d = s.client();
    let ack = resume(&mut d, "D", rid, &fresh_uid(), epoch, top + 1);
    assert_eq!(ack["recovered"], true, "seen everything: {ack}");
    assert!(d.drain_texts(QUIET).is_empty());
    // A plain login's ack has no "recovered".
    let mut e = s.client();
    let ack = e.login("E", rid, None);
    assert!(ack.get("recovered").is_none(), "{ack}");
}

#[test]
fn resume_after_the_node_is_killed_and_restarted_reads_the_log() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let mut s = Server::start(&["--rate-limit", "0", "--data-dir", &data]);
    let rid = "restarted";
    let (ua, uw) = (fresh_uid(), fresh_uid());
    let mut w = s.client();
    w.login_echo("W", rid, &uw);
    let (epoch, seen) = w.say_acked(rid, "seen").unwrap();
    post(&mut w, rid, "m", 20);
    let (_, top) = w.say_acked(rid, "top").unwrap();
    drop(w);
    // Killed: in `written` mode what was acknowledged is in the OS.
    s.kill();
    drop(s);
    let s = Server::start(&["--rate-limit", "0", "--data-dir", &data]);
    let mut a = s.client();
    let ack = resume(&mut a, "A", rid, &ua, epoch, seen);
    assert_eq!(ack["recovered"], true, "a clean restart keeps the epoch: {ack}");
    let mut seqs = Vec::new();
    while seqs.last() != Some(&top) {
        seqs.push(next_message(&mut a)["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (seen + 1..=top).collect::<Vec<_>>());
}

/// Sends `msg` under `mid` on an echo connection; returns the answer (the
/// message, or its `dup`).
fn send_mid(c: &mut Client, rid: &str, msg: &str, mid: &str) -> Value {
    say_mid(c, rid, msg, mid);
    next_message(c)
}

#[test]
fn a_repeat_is_recognised_after_an_eviction_and_after_a_killed_node_restarts() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let args = ["--rate-limit", "0", "--data-dir", &data, "--room-evict-ms", "200", "--history-memory", "2"];
    let mut s = Server::start(&args);
    let (rid, ua) = ("kept", fresh_uid());
    let mut a = s.client();
    a.login_echo("A", rid, &ua);
    let first = send_mid(&mut a, rid, "once", "m-1");
    // More messages than memory holds, so the ids come back from disk.
    for i in 0..5 {
        send_mid(&mut a, rid, &format!("other {i}"), &format!("o-{i}"));
    }
    drop(a);
    // The room empties and is evicted from memory; its ids are read back
    // when it is used again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.metric("cchat_rooms_evicted") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the room was never evicted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut a = s.client();
    a.login_echo("A", rid, &ua);
    let dup = send_mid(&mut a, rid, "once", "m-1");
    assert_eq!((dup["dup"].clone(), dup["seq"].clone()), (json!(true), first["seq"].clone()), "{dup}");
    drop(a);
    s.kill();
    drop(s);

    let s = Server::start(&args);
    let mut a = s.client();
    a.login_echo("A", rid, &ua);
    let dup = send_mid(&mut a, rid, "once", "m-1");
    assert_eq!((dup["dup"].clone(), dup["seq"].clone()), (json!(true), first["seq"].clone()), "{dup}");
    let dup = send_mid(&mut a, rid, "other 4", "o-4");
    assert_eq!(dup["dup"], true, "{dup}");
    let fresh = send_mid(&mut a, rid, "new", "m-2");
    assert!(fresh.get("dup").is_none(), "{fresh}");
    let h = history(&mut a, rid);
    assert_eq!(h.iter().filter(|m| m.2 == "once").count(), 1, "{h:?}");
    assert_eq!(h.len(), 7, "{h:?}");
}

/// A restart opens many rooms at once: their message ids are read back
/// several at a time, and each answer reaches its own room.
#[test]
fn after_a_restart_repeats_in_many_rooms_at_once_are_each_recognised() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let args = ["--rate-limit", "0", "--data-dir", &data, "--history-memory", "2", "--shards", "1"];
    let mut s = Server::start(&args);
    let rooms: Vec<(String, String)> = (0..12).map(|i| (format!("many{i}"), fresh_uid())).collect();
    let mut firsts = Vec::new();
    for (i, (rid, uid)) in rooms.iter().enumerate() {
        let mut c = s.client();
        c.login_echo("A", rid, uid);
        // Rooms differ in length, so their seqs differ too.
        for k in 0..(3 + i) {
            send_mid(&mut c, rid, &format!("filler {k}"), &format!("f-{k}"));
        }
        firsts.push(send_mid(&mut c, rid, "kept", "m-1")["seq"].clone());
        for k in 0..3 {
            send_mid(&mut c, rid, &format!("after {k}"), &format!("a-{k}"));
        }
    }
    s.kill();
    drop(s);

    let s = Server::start(&args);
    // All log in first, then all send again: the read-backs overlap.
    let mut clients: Vec<Client> = rooms
        .iter()
        .map(|(rid, uid)| {
            let mut c = s.client();
            c.login_echo("A", rid, uid);
            c
        })
        .collect();
    for (c, (rid, _)) in clients.iter_mut().zip(&rooms) {
        say_mid(c, rid, "kept", "m-1");
    }
    for ((c, (rid, _)), first) in clients.iter_mut().zip(&rooms).zip(&firsts) {
        let dup = next_message(c);
        assert_eq!(dup["rid"], json!(rid), "{dup}");
        assert_eq!((dup["dup"].clone(), dup["seq"].clone()), (json!(true), first.clone()), "{rid}: {dup}");
    }
}

#[test]
fn with_redis_a_repeat_is_recognised_by_the_rooms_new_owner() {
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let (rid, ua) = ("moved", fresh_uid());
    let mut s = Server::start(&["--store", &url, "--rate-limit", "0", "--history-memory", "2"]);
    let mut a = s.client();
    a.login_echo("A", rid, &ua);
    let first = send_mid(&mut a, rid, "once", "m-1");
    for i in 0..4 {
        send_mid(&mut a, rid, &format!("other {i}"), &format!("o-{i}"));
    }
    drop(a);
    s.kill();
    drop(s);
    // Another process, no data directory of the first: only Redis knows.
    let s = Server::start(&["--store", &url, "--rate-limit", "0"]);
    let mut a = s.client();
    a.login_echo("A", rid, &ua);
    let dup = send_mid(&mut a, rid, "once", "m-1");
    assert_eq!((dup["dup"].clone(), dup["seq"].clone()), (json!(true), first["seq"].clone()), "{dup}");
    let h = history(&mut a, rid);
    assert_eq!(h.iter().filter(|m| m.2 == "once").count(), 1, "{h:?}");
}

#[test]
fn a_message_sent_while_its_login_resumes_waits_for_the_replay() {
    let s = Server::start(&["--rate-limit", "0"]);
    let (rid, ua, uw) = ("eager", fresh_uid(), fresh_uid());
    let mut w = s.client();
    w.login_echo("W", rid, &uw);
    let (epoch, seen) = w.say_acked(rid, "seen").unwrap();
    post(&mut w, rid, "m", 250);
    let (_, top) = w.say_acked(rid, "top").unwrap();
    // A resumes past what memory holds (a read from disk) and sends at
    // once, before its ack: the message is not refused, and comes after.
    let mut a = s.client();
    a.send(json!({"cmd": "login", "name": "A", "rid": rid, "uid": ua, "echo": true,
        "since": {"epoch": epoch, "seq": seen}}));
    say_mid(&mut a, rid, "mine", "a-1");
    assert_eq!(a.expect("login")["recovered"], true);
    let mut seqs = Vec::new();
    loop {
        let m = next_message(&mut a);
        seqs.push(m["seq"].as_u64().unwrap());
        if m["msg"] == "mine" {
            break;
        }
    }
    assert_eq!(seqs, (seen + 1..=top + 1).collect::<Vec<_>>());
}

#[test]
fn a_sender_cut_before_its_answer_resends_and_the_room_has_it_once() {
    let s = Server::start(&["--rate-limit", "0"]);
    let (rid, ua) = ("cut", fresh_uid());
    let mut b = s.client();
    b.login("B", rid, Some(&fresh_uid()));
    for round in 0..20 {
        let mid = format!("c-{round}");
        let text = format!("cut {round}");
        // The frame leaves, and the connection is gone before any answer.
        let mut a = s.client();
        a.login_echo("A", rid, &ua);
        say_mid(&mut a, rid, &text, &mid);
        drop(a);
        // Back, the client cannot know whether it was taken: it sends again.
        let mut a = s.client();
        a.login_echo("A", rid, &ua);
        let answer = send_mid(&mut a, rid, &text, &mid);
        assert_eq!(answer["msg"], text.as_str());
    }
    let live = b.drain_texts(QUIET);
    let h = history(&mut b, rid);
    for round in 0..20 {
        let text = format!("cut {round}");
        assert_eq!(h.iter().filter(|m| m.2 == text).count(), 1, "{text}: {h:?}");
    }
    for round in 0..20 {
        let text = format!("cut {round}");
        assert_eq!(live.iter().filter(|t| **t == text).count(), 1, "{text} delivered once: {live:?}");
    }
}

#[test]
fn a_repeat_after_a_killed_node_restarts_in_sync_mode_too() {
    for mode in ["written", "sync"] {
        let dir = crate::common::temp_data_dir();
        let data = dir.to_str().unwrap().to_owned();
        let args = ["--rate-limit", "0", "--data-dir", &data, "--durability", mode];
        let mut s = Server::start(&args);
        let (rid, ua) = ("killed", fresh_uid());
        let mut a = s.client();
        a.login_echo("A", rid, &ua);
        let first = send_mid(&mut a, rid, "once", "k-1");
        s.kill();
        drop((a, s));
        let s = Server::start(&args);
        let mut a = s.client();
        a.login_echo("A", rid, &ua);
        let dup = send_mid(&mut a, rid, "once", "k-1");
        assert_eq!((dup["dup"].clone(), dup["seq"].clone()), (json!(true), first["seq"].clone()), "{mode}: {dup}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn resume_after_five_thousand_missed_messages() {
    // Within a window that reaches them, and a queue they fit in.
    let s = Server::start(&["--rate-limit", "0", "--history", "6000", "--max-outbound-bytes", "8388608"]);
    check_resume(&s, 5000);
    // By default 5,000 is past the window: not recovered, and the client pages.
    let s = Server::start(&["--rate-limit", "0"]);
    let rid = "far-default";
    let mut w = s.client();
    w.login_echo("W", rid, &fresh_uid());
    let (epoch, seen) = w.say_acked(rid, "seen").unwrap();
    post(&mut w, rid, "m", 5000);
    w.say_acked(rid, "top").unwrap();
    let mut a = s.client();
    assert_eq!(resume(&mut a, "A", rid, &fresh_uid(), epoch, seen)["recovered"], false);
}

#[test]
fn with_redis_a_repeat_is_recognised_after_its_rooms_owner_dies() {
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let mut cl = crate::cluster::Cluster::start_with(3, &["--store", &url, "--rate-limit", "0"]);
    let names = ["node0", "node1", "node2"];
    let rid = (0..100)
        .map(|i| format!("owned{i}"))
        .find(|r| cchat::placement::node_for(r, names) == Some("node2"))
        .expect("a room owned by node2");
    let ua = fresh_uid();
    let mut a = cl.node(0).client();
    a.login_echo("A", &rid, &ua);
    let first = send_mid(&mut a, &rid, "once", "f-1");
    let mut dead = cl.nodes[2].take().unwrap();
    dead.kill();
    cl.wait_links(1);
    // The room moves to a survivor; until it has, a message may be refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let dup = loop {
        assert!(std::time::Instant::now() < deadline, "the room never moved");
        say_mid(&mut a, &rid, "once", "f-1");
        let v = a.recv();
        if v["cmd"] == "message" {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((dup["dup"].clone(), dup["seq"].clone()), (json!(true), first["seq"].clone()), "{dup}");
}
