//! The client protocol against a real server process, with real
//! WebSocket clients. Every scenario runs with one shard and with three, so
//! members of one room sit on different shards.

use std::time::Duration;

use crate::common::{Client, Server, for_shards};
use serde_json::{Value, json};

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn login_ack_and_new_user() {
    for_shards(|s| {
        let mut a = s.client();
        let ack = a.login("ann", "lobby", Some("u1"));
        assert_eq!(ack, json!({"cmd":"login","uid":"u1","name":"ann","rid":"lobby"}));
        let mut b = s.client();
        b.login("bob", "lobby", Some("u2"));
        let nu = a.expect("newUser");
        assert_eq!(nu, json!({"cmd":"newUser","uid":"u2","name":"bob","rid":"lobby"}));
        // Integer ids are written back as strings.
        let mut c = s.client();
        c.send(json!({"cmd":"login","name":"cat","rid":7,"uid":42}));
        let ack = c.expect("login");
        assert_eq!((ack["uid"].as_str(), ack["rid"].as_str()), (Some("42"), Some("7")));
        a.expect_silence(SHORT);
    });
}

#[test]
fn server_assigns_unique_uids() {
    for_shards(|s| {
        let mut uids = std::collections::HashSet::new();
        let mut clients: Vec<Client> = (0..6).map(|_| s.client()).collect();
        for c in &mut clients {
            let ack = c.login("anon", "r", None);
            let uid = ack["uid"].as_str().unwrap().to_owned();
            assert!(!uid.is_empty() && uid.len() <= 64);
            assert!(uids.insert(uid));
        }
    });
}

#[test]
fn relogin_same_room_acks_without_announcing_and_identity_stays() {
    for_shards(|s| {
        let mut a = s.client();
        let mut b = s.client();
        a.login("ann", "r1", Some("a"));
        b.login("bob", "r1", Some("b"));
        a.expect("newUser");
        // Same room again: acknowledged, nothing announced.
        b.send(json!({"cmd":"login","name":"bob","rid":"r1"}));
        b.expect("login");
        a.expect_silence(SHORT);
        // Another room: joins it too, under the first identity.
        b.send(json!({"cmd":"login","name":"someone-else","rid":"r2","uid":"zzz"}));
        let ack = b.expect("login");
        assert_eq!(ack, json!({"cmd":"login","uid":"b","name":"bob","rid":"r2"}));
        // Still in r1: gets a's message there.
        a.say("r1", "hi r1");
        let m = b.expect("message");
        assert_eq!((m["rid"].as_str(), m["msg"].as_str()), (Some("r1"), Some("hi r1")));
    });
}

#[test]
fn room_message_reaches_others_not_sender() {
    for_shards(|s| {
        let mut a = s.client();
        let mut b = s.client();
        let mut c = s.client();
        let mut outsider = s.client();
        a.login("ann", "r", Some("a"));
        b.login("bob", "r", Some("b"));
        c.login("cat", "r", Some("c"));
        outsider.login("out", "other", Some("o"));
        a.expect("newUser");
        a.expect("newUser");
        b.expect("newUser");
        // uid and name come from the session, not from the request.
        a.send(json!({"cmd":"message","type":"pic","msg":"https://x/y.png","rid":"r","uid":"evil","name":"Mallory"}));
        for who in [&mut b, &mut c] {
            let m = who.expect("message");
            assert_eq!(m["uid"], "a");
            assert_eq!(m["name"], "ann");
            assert_eq!(m["type"], "pic");
            assert_eq!(m["rid"], "r");
            assert_eq!(m["msg"], "https://x/y.png");
            assert_eq!(m["seq"], 1);
            assert!(m["epoch"].is_u64() && m["ts"].is_u64());
            assert!(m.get("tid").is_none());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            assert!(m["ts"].as_u64().unwrap().abs_diff(now) < 60_000);
        }
        a.expect_silence(SHORT);
        outsider.expect_silence(Duration::from_millis(50));
    });
}

#[test]
fn logout_and_disconnect_announce_user_leave() {
    for_shards(|s| {
        let mut a = s.client();
        let mut b = s.client();
        a.login("ann", "r", Some("a"));
        a.send(json!({"cmd":"login","rid":"r2"}));
        a.expect("login");
        b.login("bob", "r", Some("b"));
        b.send(json!({"cmd":"login","rid":"r2"}));
        b.expect("login");
        a.expect("newUser");
        a.expect("newUser");
        b.send(json!({"cmd":"logout","rid":"r"}));
        assert_eq!(b.expect("logout"), json!({"cmd":"logout","rid":"r"}));
        assert_eq!(a.expect("userLeave"), json!({"cmd":"userLeave","uid":"b","name":"bob","rid":"r"}));
        // b no longer gets r's messages but still gets r2's.
        a.say("r", "after");
        a.say("r2", "in r2");
        assert_eq!(b.expect("message")["rid"], "r2");
        // b may not post to r any more.
        b.say("r", "x");
        b.expect_error(50);
        // Disconnect announces userLeave in the rooms it was in.
        drop(b);
        let ul = a.expect("userLeave");
        assert_eq!((ul["uid"].as_str(), ul["rid"].as_str()), (Some("b"), Some("r2")));
        // logout without rid leaves every room.
        a.send(json!({"cmd":"logout"}));
        let mut rooms = vec![
            a.expect("logout")["rid"].as_str().unwrap().to_owned(),
            a.expect("logout")["rid"].as_str().unwrap().to_owned(),
        ];
        rooms.sort();
        assert_eq!(rooms, ["r", "r2"]);
    });
}

#[test]
fn second_connection_of_a_uid_does_not_evict_the_first() {
    for_shards(|s| {
        let mut a1 = s.client();
        let mut a2 = s.client();
        let mut b = s.client();
        b.login("bob", "r", Some("b"));
        a1.login("ann", "r", Some("a"));
        b.expect("newUser");
        a2.login("ann", "r", Some("a"));
        b.expect_silence(SHORT); // the same user: no second newUser
        b.say("r", "both");
        assert_eq!(a1.expect("message")["msg"], "both");
        assert_eq!(a2.expect("message")["msg"], "both");
        drop(a1);
        b.expect_silence(SHORT); // a is still present through a2
        drop(a2);
        assert_eq!(b.expect("userLeave")["uid"], "a");
    });
}

#[test]
fn get_history_windows() {
    let s = Server::start(&["--shards", "2", "--rate-limit", "0", "--history", "5"]);
    let mut a = s.client();
    a.send(json!({"cmd":"login","name":"ann","rid":"h","uid":"a","echo":true}));
    a.expect("login");
    for i in 1..=8 {
        a.say("h", &format!("m{i}"));
    }
    // Wait until all eight are sequenced (a sees its own with echo): b's
    // requests come from another shard and are not ordered after a's.
    for _ in 1..=8 {
        a.expect("message");
    }
    let mut b = s.client();
    b.login("bob", "h", Some("b"));
    b.send(json!({"cmd":"getHistory","rid":"h"}));
    let h = b.expect("getHistory");
    let seqs = |v: &serde_json::Value| {
        v["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(seqs(&h), [4, 5, 6, 7, 8]); // the newest 5, oldest first
    assert!(h["epoch"].is_u64());
    assert_eq!(h["msgs"][0]["msg"], "m4");
    assert_eq!(h["msgs"][0]["cmd"], "message");
    b.send(json!({"cmd":"getHistory","rid":"h","since":5}));
    assert_eq!(seqs(&b.expect("getHistory")), [6, 7, 8]);
    b.send(json!({"cmd":"getHistory","rid":"h","since":5,"limit":2}));
    assert_eq!(seqs(&b.expect("getHistory")), [6, 7]);
    b.send(json!({"cmd":"getHistory","rid":"h","limit":1}));
    assert_eq!(seqs(&b.expect("getHistory")), [8]);
    b.send(json!({"cmd":"getHistory","rid":"h","since":"x"}));
    b.expect_error(50);
    let mut o = s.client();
    o.login("o", "other", None);
    o.send(json!({"cmd":"getHistory","rid":"h"}));
    o.expect_error(50);
}

#[test]
fn rate_limit_token_bucket() {
    // One token per second, so that a stall of the test or the shard while
    // the burst goes out cannot let an extra message through.
    let s = Server::start(&["--shards", "2", "--rate-limit", "1"]);
    let mut a = s.client();
    let mut b = s.client();
    a.login("ann", "r", Some("a"));
    b.login("bob", "r", Some("b"));
    a.expect("newUser");
    // Burst is 2R = 2: of 15 quick messages, 2 pass and 13 are refused.
    for i in 0..15 {
        a.say("r", &format!("m{i}"));
    }
    let mut errors = 0;
    for _ in 0..13 {
        let e = a.expect_error(50);
        assert!(e["errMsg"].as_str().unwrap().contains("fast"), "{e}");
        errors += 1;
    }
    assert_eq!(errors, 13);
    for i in 0..2 {
        assert_eq!(b.expect("message")["msg"], format!("m{i}"));
    }
    b.expect_silence(SHORT);
    // Tokens come back at R per second.
    std::thread::sleep(Duration::from_millis(1100));
    a.say("r", "later");
    assert_eq!(b.expect("message")["msg"], "later");
}

#[test]
fn an_error_that_refuses_a_message_names_its_ref() {
    // Extension: a message may carry `ref` (a whole number of the client's
    // choosing); an error refusing it repeats it, so a client knows which of
    // its messages was not taken. Without `ref`, errors are as before.
    let s = Server::start(&["--rate-limit", "1", "--max-message-bytes", "16"]);
    let mut a = s.client();
    a.login("ann", "r", Some("a"));
    let msg = |text: &str, r: Value| json!({"cmd":"message","type":"text","msg":text,"rid":"r","ref":r});
    a.send(msg("far too long for the limit", json!(1)));
    let e = a.expect_error(50);
    assert_eq!((e["ref"].as_u64(), e["errMsg"].as_str().unwrap().contains("longer")), (Some(1), true), "{e}");
    a.send(json!({"cmd":"message","type":"text","msg":"x","rid":"elsewhere","ref":2}));
    assert_eq!(a.expect_error(50)["ref"], 2);
    a.send(json!({"cmd":"message","type":"video","msg":"x","rid":"r","ref":3}));
    assert_eq!(a.expect_error(50)["ref"], 3);
    // Burst 2: the third of three quick messages is refused, by its ref.
    for r in 10..13 {
        a.send(msg("quick", json!(r)));
    }
    let e = a.expect_error(50);
    assert!(e["errMsg"].as_str().unwrap().contains("fast"), "{e}");
    assert_eq!(e["ref"], 12);
    // A ref that is not a whole number is refused itself; none is made up.
    a.send(msg("x", json!("abc")));
    let e = a.expect_error(50);
    assert!(e["errMsg"].as_str().unwrap().contains("ref must be"), "{e}");
    assert!(e.get("ref").is_none(), "{e}");
    a.send(json!({"cmd":"message","type":"text","msg":"far too long for the limit","rid":"r"}));
    assert!(a.expect_error(50).get("ref").is_none());
}

#[test]
fn one_order_per_room_across_shards() {
    // Members on different shards, several concurrent senders: every member
    // sees the same sequence, gapless, and each sender's messages in order;
    // with shards pinned to cores (the default) and left to the OS scheduler.
    for pin in [&[][..], &["--no-pin"][..]] {
        let s = Server::start(&[&["--shards", "3", "--rate-limit", "0"][..], pin].concat());
        one_order_per_room(&s);
    }
}

fn one_order_per_room(s: &Server) {
    let members = 12;
    let per_sender = 200;
    let senders = 4;
    let mut clients: Vec<Client> = (0..members).map(|_| s.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"cmd":"login","name":format!("n{i}"),"rid":"big","uid":format!("u{i}"),"echo":true}));
        c.expect("login");
    }
    // Drain newUser announcements.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..members {
            c.expect("newUser");
        }
    }
    let mut writers: Vec<_> = clients.drain(..senders).collect();
    let handles: Vec<_> = writers
        .drain(..)
        .enumerate()
        .map(|(w, mut c)| {
            std::thread::spawn(move || {
                for k in 0..per_sender {
                    c.say("big", &format!("{w}:{k}"));
                }
                c
            })
        })
        .collect();
    let total = senders * per_sender;
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut seqs = Vec::new();
        let mut last_k = vec![-1i64; senders];
        for _ in 0..total {
            let m = c.expect("message");
            seqs.push(m["seq"].as_u64().unwrap());
            let (w, k) = m["msg"].as_str().unwrap().split_once(':').unwrap();
            let (w, k): (usize, i64) = (w.parse().unwrap(), k.parse().unwrap());
            assert_eq!(k, last_k[w] + 1, "sender {w} out of order");
            last_k[w] = k;
        }
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
        orders.push(seqs);
    }
    for h in handles {
        let mut c = h.join().unwrap();
        // Senders (echo on) see the same order too.
        let seqs: Vec<u64> = (0..total).map(|_| c.expect("message")["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, orders[0]);
    }
}

#[test]
fn names_and_messages_are_json_escaped() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut a = s.client();
    let mut b = s.client();
    a.login("A \"quoted\" \\ name ✓", "r", Some("a"));
    b.login("bob", "r", Some("b"));
    a.expect("newUser");
    let tricky = "line\nbreak \"q\" \\ </script> <img src=x onerror=alert(1)> \u{7f} ✓";
    a.say("r", tricky);
    let m = b.expect("message");
    assert_eq!(m["msg"], tricky);
    assert_eq!(m["name"], "A \"quoted\" \\ name ✓");
}
