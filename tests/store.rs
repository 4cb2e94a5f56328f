//! The shared store (`--store redis://…`) against a real `redis-server`:
//! a restarted node and a failed-over room continue their epoch and seq
//! with every acknowledged message in history; a flushed store gives new
//! epochs, never a reused (epoch, seq); a stale owner's appends are refused
//! (two nodes that both think they own a room); Redis killed and restarted
//! under traffic; Redis full (maxmemory); the history script's window
//! against the Rust one.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::common::redis::Redis;
use crate::common::{Client, Server};

fn start(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--store", &url, "--rate-limit", "0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends `msg` and returns its echo's (epoch, seq); Err(errMsg) if refused.
fn say_acked(c: &mut Client, rid: &str, msg: &str) -> Result<(u64, u64), String> {
    c.say_acked(rid, msg)
}

/// The room's history as (epoch, seq, msg), oldest first.
fn history(c: &mut Client, rid: &str) -> Vec<(u64, u64, String)> {
    c.send(json!({"cmd":"getHistory","rid":rid,"limit":1000}));
    let h = loop {
        let v = c.recv();
        if v["cmd"] == "getHistory" {
            break v;
        }
        assert_ne!(v["cmd"], "error", "{v}");
    };
    crate::common::history_msgs(&h)
}

#[test]
fn a_restarted_node_continues_its_rooms_from_the_store() {
    let redis = Redis::start();
    let mut s = start(&redis, &["--shards", "2"]);
    let mut c = s.client();
    c.login_echo("ann", "lobby", "ann");
    let acked: Vec<(u64, u64)> = (1..=3).map(|i| say_acked(&mut c, "lobby", &format!("m{i}")).unwrap()).collect();
    let epoch = acked[0].0;
    assert_eq!(acked.iter().map(|a| a.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    s.kill();
    drop(c);
    // Another process, another (empty) data directory: only the store remembers.
    let s = start(&redis, &["--shards", "2"]);
    let mut c = s.client();
    c.login_echo("ann", "lobby", "ann");
    let h = history(&mut c, "lobby");
    assert_eq!(h, vec![(epoch, 1, "m1".into()), (epoch, 2, "m2".into()), (epoch, 3, "m3".into())]);
    assert_eq!(say_acked(&mut c, "lobby", "m4").unwrap(), (epoch, 4), "same epoch, next seq");
    // Paging back through the store (older than what memory holds).
    c.send(json!({"cmd":"getHistory","rid":"lobby","before":3,"limit":1}));
    let v = c.expect("getHistory");
    assert_eq!(v["msgs"][0]["msg"], "m2", "{v}");
    assert!(s.metric("cchat_store_appends_total") >= 1.0);
    assert_eq!(s.metric("cchat_store_down"), 0.0);
}

#[test]
fn a_failed_over_room_continues_with_the_same_epoch_and_every_acknowledged_message() {
    let redis = Redis::start();
    let url = redis.url();
    let mut cl = Cluster::start_with(3, &["--store", &url]);
    let names = ["node0", "node1", "node2"];
    // Rooms owned by node 2, which will die; a sender on node 0 and a
    // reader on node 1 in each.
    let rooms: Vec<String> = (0..60)
        .map(|i| format!("fo{i}"))
        .filter(|r| cchat::placement::node_for(r, names) == Some("node2"))
        .take(6)
        .collect();
    assert!(rooms.len() >= 3, "{rooms:?}");
    let mut sender = cl.node(0).client();
    let mut reader = cl.node(1).client();
    sender.login_echo("s", &rooms[0], "s");
    reader.login("r", &rooms[0], Some("r"));
    for r in &rooms[1..] {
        for c in [&mut sender, &mut reader] {
            c.send(json!({"cmd":"login","rid":r}));
            while c.recv()["cmd"] != "login" {}
        }
    }
    let mut acked: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    for r in &rooms {
        for i in 0..3 {
            let msg = format!("{r}-before-{i}");
            let (e, s) = say_acked(&mut sender, r, &msg).unwrap();
            acked.entry(r.clone()).or_default().push((e, s, msg));
        }
    }
    let mut dead = cl.nodes[2].take().unwrap();
    dead.kill();
    cl.wait_links(1);
    for r in &rooms {
        let (epoch, last, _) = acked[r].last().cloned().unwrap();
        // Until the room has re-homed a message may be refused or lost
        // (sent toward the dead owner): try again until one is acknowledged.
        let deadline = Instant::now() + Duration::from_secs(15);
        let got = loop {
            assert!(Instant::now() < deadline, "room {r} never continued");
            let msg = format!("{r}-after");
            sender.say(r, &msg);
            sender.ws.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut got = None;
            while let Ok(tungstenite::Message::Text(t)) = sender.ws.read() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["cmd"] == "message" && v["msg"] == msg {
                    got = Some((v["epoch"].as_u64().unwrap(), v["seq"].as_u64().unwrap()));
                    break;
                }
            }
            sender.ws.get_mut().set_read_timeout(Some(crate::common::TIMEOUT)).unwrap();
            if let Some(g) = got {
                break g;
            }
        };
        assert_eq!(got, (epoch, last + 1), "room {r}: the same epoch and the next seq after the failover");
        let h = history(&mut reader, r);
        for a in &acked[r] {
            assert!(h.contains(a), "room {r}: acknowledged {a:?} missing from history {h:?}");
        }
        let seqs: Vec<u64> = h.iter().map(|m| m.1).collect();
        let unique: HashSet<u64> = seqs.iter().copied().collect();
        assert_eq!(unique.len(), seqs.len(), "room {r}: a seq used twice: {h:?}");
    }
}

#[test]
fn a_flushed_store_gives_new_epochs_not_reused_pairs() {
    let redis = Redis::start();
    let s = start(&redis, &[]);
    let mut c = s.client();
    c.login_echo("ann", "r", "ann");
    let (e1, s1) = say_acked(&mut c, "r", "a").unwrap();
    let (_, s2) = say_acked(&mut c, "r", "b").unwrap();
    assert_eq!((s1, s2), (1, 2));
    redis.cmd(&["FLUSHALL"]);
    // The store lost the room: the message is refused (the sender is told),
    // and the room starts a new epoch: (e1, 3) is never used for another message.
    let e = say_acked(&mut c, "r", "c").unwrap_err();
    assert!(e.contains("lost"), "{e}");
    let (e2, s3) = say_acked(&mut c, "r", "d").unwrap();
    assert_ne!(e2, e1, "a new epoch");
    assert_eq!(s3, 1);
    assert_eq!(history(&mut c, "r"), vec![(e2, 1, "d".into())]);
}

#[test]
fn a_stale_owner_is_refused_and_gives_the_room_up() {
    // Two nodes that are not joined (as in a partition) both think they own
    // the room. The store accepts only the latest claim's appends.
    let redis = Redis::start();
    let a = start(&redis, &[]);
    let b = start(&redis, &[]);
    let mut x = a.client();
    x.login_echo("x", "contested", "x");
    let (epoch, s1) = say_acked(&mut x, "contested", "from a").unwrap();
    let mut y = b.client();
    y.login_echo("y", "contested", "y");
    assert_eq!(say_acked(&mut y, "contested", "from b").unwrap(), (epoch, s1 + 1), "b continues a's sequence");
    let e = say_acked(&mut x, "contested", "stale").unwrap_err();
    assert!(e.contains("another node"), "{e}");
    let e = say_acked(&mut x, "contested", "stale again").unwrap_err();
    assert!(e.contains("another node"), "given up: {e}");
    assert_eq!(say_acked(&mut y, "contested", "b again").unwrap(), (epoch, s1 + 2));
    let h: Vec<String> = history(&mut y, "contested").into_iter().map(|m| m.2).collect();
    assert_eq!(h, vec!["from a", "from b", "b again"], "nothing of the stale owner's after the fence");
    assert!(a.metric("cchat_store_refused_total") >= 1.0);
    // The stale node still serves its connections.
    x.send(json!({"cmd":"getOnline","rid":"contested"}));
    x.expect("getOnline");
}

#[test]
fn redis_stopped_and_restarted_under_traffic() {
    let mut redis = Redis::start();
    let s = start(&redis, &["--shards", "2"]);
    let mut reader = s.client();
    reader.login("r", "busy", Some("r"));
    let mut w = s.client();
    w.login_echo("w", "busy", "w");
    let addr = s.addr;
    let traffic = std::thread::spawn(move || {
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        let t0 = Instant::now();
        let mut i = 0;
        // Until well after the restart, and at least 50 acknowledged after it.
        while t0.elapsed() < Duration::from_secs(3) || acked.len() < 50 {
            assert!(t0.elapsed() < Duration::from_secs(30), "messages never flowed again");
            let msg = format!("t{i}");
            match say_acked(&mut w, "busy", &msg) {
                Ok((e, s)) => acked.push((e, s, msg)),
                Err(e) => refused.push(e),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = addr;
        (acked, refused)
    });
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    // The node keeps serving connections while the store is down.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("cchat_store_down") < 1.0 {
        assert!(Instant::now() < deadline, "the store's outage never showed in /metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = Vec::new();
    let note = |seen: &mut Vec<(u64, u64, String)>, v: &Value| {
        if v["cmd"] == "message" {
            seen.push((
                v["epoch"].as_u64().unwrap(),
                v["seq"].as_u64().unwrap(),
                v["msg"].as_str().unwrap().to_owned(),
            ));
        }
    };
    reader.send(json!({"cmd":"getOnline","rid":"busy"}));
    loop {
        let v = reader.recv();
        if v["cmd"] == "getOnline" {
            break;
        }
        note(&mut seen, &v);
    }
    // Down for longer than the store thread tries a failed round again (2 s).
    std::thread::sleep(Duration::from_millis(2500));
    redis.restart();
    let (acked, refused) = traffic.join().unwrap();
    assert!(!refused.is_empty(), "messages were refused while the store was down");
    // Unavailable; or, for the round Redis died under, unknown (it may
    // have applied it and synced its AOF before it died).
    assert!(refused.iter().all(|e| e.contains("unavailable") || e.contains("may have been stored")), "{refused:?}");
    // The reader got exactly the acknowledged messages, in order; every
    // one is in history, in one epoch, without a seq used twice.
    reader.ws.get_mut().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while let Ok(tungstenite::Message::Text(t)) = reader.ws.read() {
        note(&mut seen, &serde_json::from_str(&t).unwrap());
    }
    assert_eq!(seen.len(), acked.len(), "members receive exactly the stored messages");
    assert!(seen == acked, "in order, the same as acknowledged");
    reader.ws.get_mut().set_read_timeout(Some(crate::common::TIMEOUT)).unwrap();
    let h = history(&mut reader, "busy");
    let epochs: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(epochs.len(), 1, "the store kept the room (AOF): one epoch");
    for a in &acked {
        assert!(h.contains(a), "acknowledged {a:?} missing from history");
    }
    assert!(s.metric("cchat_store_errors_total") >= 1.0);
    assert_eq!(s.metric("cchat_store_down"), 0.0);
}

/// `--retention-days` holds for history read from Redis too.
#[test]
fn messages_past_the_retention_age_are_not_served_from_the_store() {
    let redis = Redis::start();
    // 0.00003 days: 2.592 s.
    let s = start(&redis, &["--retention-days", "0.00003", "--history-memory", "1"]);
    let mut c = s.client();
    c.login_echo("a", "aging", "a");
    say_acked(&mut c, "aging", "old").unwrap();
    std::thread::sleep(Duration::from_millis(2800));
    say_acked(&mut c, "aging", "new").unwrap();
    let h: Vec<String> = history(&mut c, "aging").into_iter().map(|m| m.2).collect();
    assert_eq!(h, ["new"]);
}

#[test]
fn tls_and_a_password_in_the_store_url() {
    let redis = Redis::start_secure();
    let (url, ca) = (redis.url(), redis.ca());
    let ca = ca.to_str().unwrap();
    let mut s = start(&redis, &["--store-ca", ca]);
    let mut c = s.client();
    c.login_echo("ann", "sealed", "ann");
    let (epoch, seq) = say_acked(&mut c, "sealed", "over tls").unwrap();
    s.kill();
    let s = start(&redis, &["--store-ca", ca]);
    let mut c = s.client();
    c.login_echo("ann", "sealed", "ann");
    assert_eq!(history(&mut c, "sealed"), vec![(epoch, seq, "over tls".into())]);
    // A wrong password: the store is unavailable, said clearly, and the node serves on.
    let wrong = url.replace(crate::common::redis::PASSWORD, "wrong");
    let s = Server::start(&["--store", &wrong, "--store-ca", ca]);
    let mut c = s.client();
    c.login_echo("bob", "sealed", "bob");
    let e = say_acked(&mut c, "sealed", "refused").unwrap_err();
    assert!(e.contains("unavailable"), "{e}");
    assert!(s.metric("cchat_store_down") >= 1.0);
}

#[test]
fn a_redis_cluster_holds_the_rooms_across_its_nodes() {
    let cluster = crate::common::redis::RedisCluster::start();
    let url = format!("redis://127.0.0.1:{}", cluster.ports[1]);
    let args = ["--store", url.as_str(), "--store-cluster", "--shards", "2", "--rate-limit", "0"];
    let mut s = Server::start(&args);
    let mut c = s.client();
    let rooms: Vec<String> = (0..12).map(|i| format!("slot{i}")).collect();
    c.login_echo("ann", &rooms[0], "ann");
    for r in &rooms[1..] {
        c.send(json!({"cmd":"login","rid":r}));
        while c.recv()["cmd"] != "login" {}
    }
    let mut acked = Vec::new();
    for r in &rooms {
        for i in 0..3 {
            acked.push((r.clone(), say_acked(&mut c, r, &format!("{r}-{i}")).unwrap()));
        }
    }
    assert!(cluster.keys_per_node().iter().all(|&n| n > 0), "rooms on every node: {:?}", cluster.keys_per_node());
    s.kill();
    let s = Server::start(&args);
    let mut c = s.client();
    c.login_echo("ann", &rooms[0], "ann");
    for r in &rooms[1..] {
        c.send(json!({"cmd":"login","rid":r}));
        while c.recv()["cmd"] != "login" {}
    }
    for r in &rooms {
        let h = history(&mut c, r);
        let mine: Vec<(u64, u64)> = acked.iter().filter(|(x, _)| x == r).map(|(_, a)| *a).collect();
        assert_eq!(h.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(), mine, "room {r}");
        let (epoch, last) = *mine.last().unwrap();
        assert_eq!(say_acked(&mut c, r, "again").unwrap(), (epoch, last + 1), "room {r} continues");
    }
}

/// Redis killed and restarted from its AOF (nothing lost) while several
/// senders keep messages in flight: the rounds behind a refused one find a
/// gap in the store; their senders are told the store was unavailable,
/// never that it lost the room's history, and the room keeps its epoch.
#[test]
fn a_restarted_redis_that_lost_nothing_is_never_said_to_have_lost_history() {
    let mut redis = Redis::start();
    let s = start(&redis, &["--shards", "2"]);
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let mut c = s.client();
            c.login_echo(&format!("w{k}"), "inflight", &format!("w{k}"));
            std::thread::spawn(move || {
                let n = 300;
                for i in 0..n {
                    c.say("inflight", &format!("w{k}-{i}"));
                    std::thread::sleep(Duration::from_millis(4));
                }
                // Every message answered: its echo, or an error.
                let (mut done, mut errors, mut epochs) = (0, Vec::new(), HashSet::new());
                while done < n {
                    let v = c.recv();
                    match v["cmd"].as_str() {
                        Some("message") if v["uid"] == format!("w{k}") => {
                            done += 1;
                            epochs.insert(v["epoch"].as_u64().unwrap());
                        }
                        Some("error") => {
                            done += 1;
                            errors.push(v["errMsg"].as_str().unwrap().to_owned());
                        }
                        _ => {}
                    }
                }
                (errors, epochs)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    std::thread::sleep(Duration::from_millis(2500));
    redis.restart();
    let (mut errors, mut epochs) = (Vec::new(), HashSet::new());
    for w in writers {
        let (e, ep) = w.join().unwrap();
        errors.extend(e);
        epochs.extend(ep);
    }
    assert!(!errors.is_empty(), "the outage refused nothing");
    let lost: Vec<&String> = errors.iter().filter(|e| e.contains("lost")).collect();
    assert!(
        lost.is_empty(),
        "a store that lost nothing was said to, {} of {} times: {:?}",
        lost.len(),
        errors.len(),
        lost.first()
    );
    assert_eq!(epochs.len(), 1, "nothing was lost: one epoch throughout");
}

/// Redis paused for 5 s (SIGSTOP) under traffic: the messages whose
/// senders were told "not stored" are never stored, nor are those told
/// "unknown" (sent into the pause), even though the pipelines carrying
/// them run when Redis resumes (each append carries a deadline its script
/// checks); every acknowledged message is stored once.
#[test]
fn a_paused_redis_never_stores_what_its_senders_were_told_it_did_not() {
    let redis = Redis::start();
    let s = start(&redis, &[]);
    let mut reader = s.client();
    reader.login("r", "pause", Some("r"));
    let mut w = s.client();
    w.login_echo("w", "pause", "w");
    let traffic = std::thread::spawn(move || {
        (0..350)
            .map(|i| {
                let m = format!("p{i}");
                let r = say_acked(&mut w, "pause", &m);
                std::thread::sleep(Duration::from_millis(20));
                (m, r)
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(800));
    redis.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    redis.signal(libc::SIGCONT);
    let results = traffic.join().unwrap();
    // "Not stored" answers (an unknown outcome is said so, and may be either).
    let refused: HashSet<&str> = results
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| !e.contains("may have been stored")))
        .map(|(m, _)| m.as_str())
        .collect();
    let unknown = results.iter().filter(|(_, r)| r.is_err()).count() - refused.len();
    let acked: Vec<(u64, u64, String)> =
        results.iter().filter_map(|(m, r)| r.as_ref().ok().map(|(e, q)| (*e, *q, m.clone()))).collect();
    assert!(!refused.is_empty() || unknown > 0, "a 5 s pause refused nothing");
    // What Redis ran when it resumed has run by now.
    std::thread::sleep(Duration::from_millis(500));
    let h = history(&mut reader, "pause");
    for (_, _, m) in &h {
        assert!(!refused.contains(m.as_str()), "{m} was refused to its sender and is stored");
    }
    // Messages whose outcome was unknown ran when Redis resumed, past their
    // deadline: not stored. Only one Redis ran just as it stopped may be.
    let stored_unknown = results
        .iter()
        .filter(|(m, r)| r.as_ref().is_err_and(|e| e.contains("may have been stored")) && h.iter().any(|x| &x.2 == m))
        .count();
    assert!(stored_unknown <= 1, "{stored_unknown} messages sent into the pause were stored when it ended");
    for a in &acked {
        assert_eq!(h.iter().filter(|x| *x == a).count(), 1, "acknowledged {a:?} stored once");
    }
    // Nor did any member get a refused message.
    reader.ws.get_mut().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while let Ok(tungstenite::Message::Text(t)) = reader.ws.read() {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["cmd"] == "message" {
            assert!(!refused.contains(v["msg"].as_str().unwrap()), "{v} refused yet delivered");
        }
    }
}

/// Redis runs a message but its reply is lost on the way (a proxy between
/// the node and Redis drops what Redis answers): its sender is told the
/// outcome is unknown, never that it was not stored; sent again with the
/// same `mid` once Redis is heard again, it is recognised (`dup`, its
/// stored seq), never stored twice.
#[test]
fn a_message_whose_reply_was_lost_is_said_unknown_and_a_resend_is_recognised() {
    let redis = Redis::start();
    let proxy = crate::common::proxy::Proxy::start(format!("127.0.0.1:{}", redis.port));
    let url = format!("redis://{}", proxy.addr);
    let s = Server::start(&["--store", &url, "--rate-limit", "0"]);
    let mut w = s.client();
    w.login_echo("w", "doubt", "w");
    let first = say_acked(&mut w, "doubt", "before").unwrap();
    proxy.drop_replies.store(true, std::sync::atomic::Ordering::SeqCst);
    let send =
        |w: &mut Client| w.send(json!({"cmd":"message","type":"text","rid":"doubt","msg":"in doubt","mid":"d-1"}));
    send(&mut w);
    let v = w.recv();
    // Redis ran it (checked directly); its answer never came.
    assert_eq!(redis.cmd(&["LLEN", "cchat:{doubt}:h"]), redis::Value::Int(2), "Redis never ran the append");
    assert_eq!(v["cmd"], "error", "{v}");
    assert!(v["errMsg"].as_str().unwrap().contains("may have been stored"), "a stored message was refused: {v}");
    proxy.drop_replies.store(false, std::sync::atomic::Ordering::SeqCst);
    // The node refuses for a second after a store error: sent until taken.
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        send(&mut w);
        let v = loop {
            let v = w.recv();
            if v["cmd"] == "message" || v["cmd"] == "error" {
                break v;
            }
        };
        if v["cmd"] == "message" {
            break v;
        }
        assert!(Instant::now() < deadline, "never taken again: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!((v["seq"].as_u64(), v["dup"].as_bool()), (Some(first.1 + 1), Some(true)), "{v}");
    let h = history(&mut w, "doubt");
    let msgs: Vec<&str> = h.iter().map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(msgs, ["before", "in doubt"], "stored once");
    // And the room goes on.
    assert_eq!(say_acked(&mut w, "doubt", "after").unwrap().1, first.1 + 2);
}

#[test]
fn a_short_redis_blip_refuses_and_loses_nothing() {
    // Redis killed and back at once (AOF, every write synced): the round on
    // its way when it died is sent again once connected; what Redis had
    // applied counts as stored. No sender sees an error; members get every
    // message exactly once; history has them all.
    let mut redis = Redis::start();
    let s = start(&redis, &[]);
    let mut reader = s.client();
    reader.login("r", "blip", Some("r"));
    let mut w = s.client();
    w.login_echo("w", "blip", "w");
    let traffic =
        std::thread::spawn(move || (0..150).map(|i| say_acked(&mut w, "blip", &format!("b{i}"))).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(250));
    redis.kill();
    redis.restart();
    let results = traffic.join().unwrap();
    let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused during a blip: {refused:?}");
    let acked: Vec<(u64, u64)> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(acked.iter().map(|a| a.1).collect::<Vec<_>>(), (1..=150).collect::<Vec<u64>>(), "one epoch, no gap");
    let mut seen = Vec::new();
    while seen.len() < 150 {
        let v = reader.recv();
        if v["cmd"] == "message" {
            seen.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (1..=150).collect::<Vec<u64>>(), "each message once, in order");
    let h = history(&mut reader, "blip");
    assert_eq!(h.len(), 150);
}

#[test]
fn a_store_that_turns_read_only_refuses_then_recovers() {
    // As after a failover that demoted it: Redis answers READONLY. The
    // store thread reconnects and tries again, then refuses; once it is the
    // primary again the room carries on in its epoch.
    let redis = Redis::start();
    let s = start(&redis, &[]);
    let mut c = s.client();
    c.login_echo("ann", "ro", "ann");
    let (epoch, s1) = say_acked(&mut c, "ro", "m1").unwrap();
    redis.cmd(&["REPLICAOF", "127.0.0.1", "1"]);
    let e = say_acked(&mut c, "ro", "m2").unwrap_err();
    assert!(e.contains("unavailable"), "{e}");
    redis.cmd(&["REPLICAOF", "NO", "ONE"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let next = loop {
        assert!(Instant::now() < deadline, "messages never flowed again");
        match say_acked(&mut c, "ro", "m3") {
            Ok(a) => break a,
            Err(e) => assert!(e.contains("unavailable"), "{e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(next, (epoch, s1 + 1), "m2 was not stored: m3 follows m1");
    let h: Vec<String> = history(&mut c, "ro").into_iter().map(|m| m.2).collect();
    assert_eq!(h, vec!["m1", "m3"]);
}

#[test]
fn a_full_store_refuses_with_a_clear_error_and_an_evicting_one_serves_on() {
    // Redis at its maxmemory with the default policy (noeviction) refuses
    // every write: senders are told the store is full, the connection and
    // history reads keep working. With a policy that evicts (every cchat key
    // has a TTL, so volatile-ttl applies) messages are taken again.
    let redis = Redis::start();
    let s = start(&redis, &[]);
    let mut c = s.client();
    c.login_echo("ann", "big", "ann");
    say_acked(&mut c, "big", "first").unwrap();
    let info = match redis.cmd(&["INFO", "memory"]) {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        v => panic!("INFO answered {v:?}"),
    };
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO");
    redis.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cmd(&["CONFIG", "SET", "maxmemory", &(used + 256 * 1024).to_string()]);
    let filler = "x".repeat(1000);
    let mut acked = 0;
    let refusal = loop {
        assert!(acked < 2000, "never refused");
        match say_acked(&mut c, "big", &format!("{acked} {filler}")) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    assert!(refusal.contains("message store full"), "{refusal}");
    assert!(acked > 100, "refused early, after {acked}");
    // Still served: presence, and history up to what was acknowledged.
    c.send(json!({"cmd":"getOnline","rid":"big"}));
    assert_eq!(c.expect("getOnline")["users"].as_array().unwrap().len(), 1);
    let h = history(&mut c, "big");
    assert_eq!(h.len(), acked + 1, "every acknowledged message, nothing refused");
    assert!(s.metric("cchat_store_refused_total") >= 1.0);
    assert_eq!(s.metric("cchat_store_down"), 0.0, "full is not down: the connection is fine");
    // Let Redis evict: the next messages (after the second of refusals)
    // are taken again.
    redis.cmd(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "messages never taken again");
        match say_acked(&mut c, "big", "after") {
            Ok(_) => break,
            // Or the room's own keys were evicted: refused once as lost,
            // then a new epoch.
            Err(e) => assert!(e.contains("message store full") || e.contains("lost"), "{e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

mod window {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// The history script's window is `room::history_window`, for any
        /// stored range and request.
        #[test]
        fn the_history_script_pages_like_the_rust_window(
            lowest in 1u64..30, len in 0u64..30,
            since in proptest::option::of(0u64..70),
            before in proptest::option::of(0u64..70),
            limit in 0usize..40,
        ) {
            static REDIS: std::sync::OnceLock<std::sync::Mutex<Redis>> = std::sync::OnceLock::new();
            let redis = REDIS.get_or_init(|| std::sync::Mutex::new(Redis::start())).lock().unwrap();
            let client = redis::Client::open(redis.url()).unwrap();
            let mut con = client.get_connection().unwrap();
            let (m, h) = cchat::store::redis::keys("w");
            let top = lowest + len - 1;
            let _: () = redis::pipe().del(&m).del(&h).query(&mut con).unwrap();
            let _: () = redis::cmd("HSET").arg(&m).arg("epoch").arg(7).arg("top").arg(top).query(&mut con).unwrap();
            for s in lowest..=top {
                let _: () = redis::cmd("RPUSH").arg(&h).arg(s.to_string()).query(&mut con).unwrap();
            }
            let script = redis::Script::new(include_str!("../src/store/redis/lua/history.lua"));
            let opt = |v: Option<u64>| v.map(|s| s.to_string()).unwrap_or_default();
            let got: Vec<String> =
                script.key(&m).key(&h).arg(opt(since)).arg(opt(before)).arg(limit).invoke(&mut con).unwrap();
            let want = cchat::owner::room::history_window(since, before, limit, lowest, top);
            let want: Vec<String> = want.map(|s| s.to_string()).collect();
            prop_assert_eq!(&got[..2], &["7".to_string(), top.to_string()][..]);
            prop_assert_eq!(&got[2..], &want[..]);
        }
    }
}

/// Read markers live in the store too: a node restarted with nothing of
/// its own (another data directory) tells a returning user its marker —
/// in the login ack, or, when the room was not in memory yet, in a `read`
/// frame right after it.
#[test]
fn read_markers_are_kept_in_the_store() {
    let redis = Redis::start();
    let mut s = start(&redis, &["--shards", "2"]);
    let mut bob = s.client();
    bob.login_echo("bob", "marks", "bob");
    for i in 1..=3 {
        say_acked(&mut bob, "marks", &format!("m{i}")).unwrap();
    }
    let mut ann = s.client();
    ann.login("ann", "marks", Some("ann"));
    ann.send(json!({"cmd": "read", "rid": "marks", "seq": 2}));
    ann.send(json!({"cmd": "getOnline", "rid": "marks"}));
    while ann.recv()["cmd"] != "getOnline" {}
    // The marker's write goes with the next round trip to the store.
    std::thread::sleep(Duration::from_millis(300));
    drop((ann, bob));
    s.kill();
    let s = start(&redis, &["--shards", "2"]);
    let mut ann = s.client();
    let ack = ann.login("ann", "marks", Some("ann"));
    let seq = match ack["read"].as_u64() {
        Some(r) => r,
        None => loop {
            let v = ann.recv();
            if v["cmd"] == "read" {
                assert_eq!(v["rid"], "marks", "{v}");
                break v["seq"].as_u64().unwrap();
            }
        },
    };
    assert_eq!(seq, 2, "the marker came back from the store");
    // Now known to the owner: the next device's ack carries it.
    let mut phone = s.client();
    let ack = phone.login("ann", "marks", Some("ann"));
    assert_eq!((ack["read"].as_u64(), ack["unread"].as_u64()), (Some(2), Some(1)), "{ack}");
}
