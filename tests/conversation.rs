//! Conversations (DESIGN.md §1 "Conversation"): direct conversations that
//! only their two users may join, and the room directory (`getRooms`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, Server, sign_token};

fn login_to(c: &mut Client, name: &str, rid: &str, uid: &str) -> Value {
    c.send(json!({"cmd": "login", "name": name, "rid": rid, "uid": uid}));
    loop {
        let v = c.recv();
        if v["cmd"] == "login" || v["cmd"] == "error" {
            return v;
        }
    }
}

fn rooms_page(c: &mut Client, after: Option<&str>, limit: usize) -> Value {
    let mut q = json!({"cmd": "getRooms", "limit": limit});
    if let Some(a) = after {
        q["after"] = json!(a);
    }
    c.send(q);
    loop {
        let v = c.recv();
        if v["cmd"] == "getRooms" {
            return v;
        }
        assert_ne!(v["cmd"], "error", "{v}");
    }
}

fn listed(page: &Value) -> Vec<(String, u64)> {
    page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rid"].as_str().unwrap().to_owned(), r["count"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_direct_conversation_is_its_two_users_only_and_lasts() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let mut s = Server::start(&["--data-dir", &data, "--shards", "2"]);
    let dm = "dm:alice:bob";
    let mut a = s.client();
    assert_eq!(login_to(&mut a, "Alice", dm, "alice")["cmd"], "login");
    let mut b = s.client();
    assert_eq!(login_to(&mut b, "Bob", dm, "bob")["cmd"], "login");
    let mut eve = s.client();
    let e = login_to(&mut eve, "Eve", dm, "eve");
    assert_eq!((e["cmd"].as_str(), e["errMsg"].as_str()), (Some("error"), Some("not a member of this conversation")));
    // The refused login changed nothing: Eve is still no one, and can log in elsewhere.
    assert_eq!(login_to(&mut eve, "Eve", "lobby", "eve")["cmd"], "login");
    // Ids that are not a conversation of two, in order.
    for bad in ["dm:bob:alice", "dm:alice:alice", "dm:alice", "dm::bob", "dm:a:b:c"] {
        let mut c = s.client();
        let e = login_to(&mut c, "A", bad, "alice");
        assert_eq!(e["cmd"], "error", "{bad}: {e}");
        assert!(e["errMsg"].as_str().unwrap().contains("dm:<uid>:<uid>"), "{bad}: {e}");
    }
    a.say(dm, "hi bob");
    assert_eq!(b.expect("message")["msg"], "hi bob");
    // It lasts: after a restart, from another device, the history is there.
    drop((a, b));
    s.kill();
    drop(s);
    let s = Server::start(&["--data-dir", &data, "--shards", "2"]);
    let mut b2 = s.client();
    assert_eq!(login_to(&mut b2, "Bob", dm, "bob")["cmd"], "login");
    b2.send(json!({"cmd": "getHistory", "rid": dm}));
    let h = b2.expect("getHistory");
    assert_eq!(h["msgs"][0]["msg"], "hi bob", "{h}");
}

#[test]
fn with_signed_logins_only_the_two_users_tokens_open_a_conversation() {
    let secret = "conversation-secret-0123456789abcdef";
    let s = Server::start(&["--token-secret", secret]);
    let dm = "dm:ann:ben";
    let login = |c: &mut Client, sub: &str| {
        c.send(json!({"cmd": "login", "name": sub, "rid": dm, "token": sign_token(secret, sub)}));
        c.recv()
    };
    let mut ann = s.client();
    assert_eq!(login(&mut ann, "ann")["cmd"], "login");
    let mut mallory = s.client();
    // A uid field cannot claim to be a party: the token decides who this is.
    mallory.send(json!({"cmd": "login", "name": "m", "rid": dm, "uid": "ben", "token": sign_token(secret, "mallory")}));
    let e = mallory.recv();
    assert_eq!(e["errMsg"], "not a member of this conversation", "{e}");
    let mut ben = s.client();
    assert_eq!(login(&mut ben, "ben")["cmd"], "login");
    ann.say(dm, "hello ben");
    assert_eq!(ben.expect("message")["msg"], "hello ben");
}

#[test]
fn the_directory_lists_rooms_with_members_paged_and_never_dms() {
    let s = Server::start(&["--shards", "3"]);
    let mut clients = Vec::new();
    for (i, rid) in ["alpha", "beta", "gamma", "delta", "epsilon"].iter().enumerate() {
        for j in 0..=i {
            let mut c = s.client();
            login_to(&mut c, "u", rid, &format!("u{i}x{j}"));
            clients.push(c);
        }
    }
    let mut d = s.client();
    login_to(&mut d, "D", "dm:u0x0:zed", "u0x0");
    let mut asker = s.client();
    // Not logged in: no directory.
    asker.send(json!({"cmd": "getRooms"}));
    asker.expect_error(50);
    login_to(&mut asker, "Asker", "alpha", "asker");
    let p1 = rooms_page(&mut asker, None, 2);
    assert_eq!(listed(&p1), vec![("alpha".into(), 2), ("beta".into(), 2)], "{p1}");
    let next = p1["next"].as_str().unwrap().to_owned();
    let p2 = rooms_page(&mut asker, Some(&next), 10);
    assert_eq!(listed(&p2), vec![("delta".into(), 4), ("epsilon".into(), 5), ("gamma".into(), 3)], "{p2}");
    assert!(p2.get("next").is_none(), "{p2}");
    // Empty rooms are not listed.
    drop(clients.drain(1..3).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = listed(&rooms_page(&mut asker, None, 100));
        if !all.iter().any(|(r, _)| r == "beta") {
            assert!(all.iter().all(|(r, _)| !r.starts_with("dm:")), "{all:?}");
            break;
        }
        assert!(Instant::now() < deadline, "beta still listed: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_directory_is_cluster_wide() {
    let cl = crate::cluster::Cluster::start_with(2, &[]);
    let names = ["node0", "node1"];
    let on = |node: &str| {
        (0..200).map(|i| format!("dir{i}")).find(|r| cchat::placement::node_for(r, names) == Some(node)).unwrap()
    };
    let (r0, r1) = (on("node0"), on("node1"));
    let mut a = cl.node(0).client();
    login_to(&mut a, "A", &r0, "a");
    let mut b = cl.node(1).client();
    login_to(&mut b, "B", &r1, "b");
    let mut asker = cl.node(0).client();
    login_to(&mut asker, "Q", &r0, "q");
    // The other node's rooms are gathered every couple of seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = listed(&rooms_page(&mut asker, None, 100));
        if all.contains(&(r1.clone(), 1)) && all.contains(&(r0.clone(), 2)) {
            break;
        }
        assert!(Instant::now() < deadline, "not cluster-wide: {all:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits for a frame with this `cmd`, skipping others.
fn wait_cmd(c: &mut Client, cmd: &str) -> Value {
    loop {
        let v = c.recv();
        if v["cmd"] == cmd {
            return v;
        }
    }
}

#[test]
fn a_message_in_a_conversation_knocks_for_the_user_not_in_it() {
    let s = Server::start(&["--shards", "3"]);
    let dm = "dm:kim:lee";
    // Lee is online in another room, on two connections (devices).
    let mut lee1 = s.client();
    login_to(&mut lee1, "Lee", "lobby", "lee");
    let mut lee2 = s.client();
    login_to(&mut lee2, "Lee", "lobby", "lee");
    let mut kim = s.client();
    login_to(&mut kim, "Kim", dm, "kim");
    kim.say(dm, "are you there?");
    for lee in [&mut lee1, &mut lee2] {
        let k = wait_cmd(lee, "dm");
        assert_eq!((k["rid"].as_str(), k["uid"].as_str(), k["name"].as_str()), (Some(dm), Some("kim"), Some("Kim")));
    }
    // Once per conversation for a while, however many messages.
    kim.say(dm, "hello?");
    lee1.expect_silence(Duration::from_millis(500));
    // Lee opens it: the messages are there, and no more knocks.
    login_to(&mut lee1, "Lee", dm, "lee");
    lee1.send(json!({"cmd": "getHistory", "rid": dm}));
    let h = wait_cmd(&mut lee1, "getHistory");
    assert_eq!(h["msgs"].as_array().unwrap().len(), 2, "{h}");
}

#[test]
fn a_knock_reaches_the_user_on_another_node() {
    let cl = crate::cluster::Cluster::start_with(2, &[]);
    let names = ["node0", "node1"];
    // The conversation lives on node 0; Lee is connected to node 1.
    let dm = (0..500)
        .map(|i| format!("dm:k{i}:lee"))
        .find(|r| cchat::placement::node_for(r, names) == Some("node0"))
        .unwrap();
    let kim_uid = dm.split(':').nth(1).unwrap().to_owned();
    let mut lee = cl.node(1).client();
    login_to(&mut lee, "Lee", "lobby", "lee");
    let mut kim = cl.node(0).client();
    login_to(&mut kim, "Kim", &dm, &kim_uid);
    kim.say(&dm, "across nodes");
    let k = wait_cmd(&mut lee, "dm");
    assert_eq!(k["rid"], dm.as_str());
}

/// Sends a command and returns the next frame with one of `cmds` (or an error).
fn ask(c: &mut Client, v: Value, cmds: &[&str]) -> Value {
    c.send(v);
    loop {
        let f = c.recv();
        if f["cmd"] == "error" || cmds.iter().any(|x| f["cmd"] == *x) {
            return f;
        }
    }
}

fn page_of(c: &mut Client, rid: &str) -> Vec<Value> {
    let h = ask(c, json!({"cmd": "getHistory", "rid": rid, "limit": 1000}), &["getHistory"]);
    h["msgs"].as_array().unwrap().clone()
}

/// Edits, deletions, reactions and replies in one room, seen live and in
/// history by a member and by a newcomer.
fn changes_scenario(s: &Server, rid: &str) {
    let mut ann = s.client();
    ann.login_echo("Ann", rid, "ann");
    let mut bob = s.client();
    bob.login_echo("Bob", rid, "bob");
    let (_, m1) = ann.say_acked(rid, "helo wrold").unwrap();
    let (_, m2) = ann.say_acked(rid, "delete me").unwrap();
    // Bob answers m1 with a reply.
    bob.send(json!({"cmd": "message", "type": "text", "msg": "welcome", "rid": rid, "reply": m1}));
    let r = loop {
        let f = bob.recv();
        if f["msg"] == "welcome" {
            break f;
        }
    };
    assert_eq!(r["reply"], m1, "{r}");
    let e = ask(&mut ann, json!({"cmd": "edit", "rid": rid, "seq": m1, "msg": "hello world"}), &["edit"]);
    assert_eq!((e["seq"].as_u64(), e["msg"].as_str(), e["uid"].as_str()), (Some(m1), Some("hello world"), Some("ann")));
    let at = e["at"].as_u64().unwrap();
    assert!(at > m1, "an event takes its own place in the sequence: {e}");
    // Bob sees it live too.
    let seen = loop {
        let f = bob.recv();
        if f["cmd"] == "edit" {
            break f;
        }
    };
    assert_eq!(seen["msg"], "hello world");
    // Errors: someone else's message, an unknown seq.
    let e = ask(&mut bob, json!({"cmd": "edit", "rid": rid, "seq": m1, "msg": "mine now"}), &["edit"]);
    assert_eq!(e["errMsg"], "not your message", "{e}");
    let e = ask(&mut bob, json!({"cmd": "delete", "rid": rid, "seq": m1}), &["delete"]);
    assert_eq!(e["errMsg"], "not your message", "{e}");
    let e = ask(&mut ann, json!({"cmd": "edit", "rid": rid, "seq": 99_999, "msg": "x"}), &["edit"]);
    assert_eq!(e["errMsg"], "unknown seq", "{e}");
    // Reactions from both, one taken back.
    for (who, emoji) in [("bob", "👍"), ("ann", "👍"), ("bob", "🎉")] {
        let c = if who == "bob" { &mut bob } else { &mut ann };
        let r = ask(c, json!({"cmd": "react", "rid": rid, "seq": m1, "emoji": emoji, "on": true}), &["react"]);
        assert_eq!(r["on"], true, "{r}");
    }
    ask(&mut bob, json!({"cmd": "react", "rid": rid, "seq": m1, "emoji": "🎉", "on": false}), &["react"]);
    let d = ask(&mut ann, json!({"cmd": "delete", "rid": rid, "seq": m2}), &["delete"]);
    assert_eq!(d["seq"], m2);
    let e = ask(&mut ann, json!({"cmd": "edit", "rid": rid, "seq": m2, "msg": "back"}), &["edit"]);
    assert_eq!(e["errMsg"], "the message was deleted", "{e}");
    // A newcomer's page: the messages as they are now, no events.
    let mut cy = s.client();
    cy.login("Cy", rid, Some("cy"));
    let page = page_of(&mut cy, rid);
    assert_eq!(page.len(), 3, "messages only: {page:?}");
    assert_eq!((page[0]["msg"].as_str(), page[0]["edited"].is_u64()), (Some("hello world"), true), "{page:?}");
    assert_eq!(page[0]["reactions"], json!({"👍": ["bob", "ann"]}), "{page:?}");
    assert_eq!((page[1]["msg"].as_str(), page[1]["deleted"].as_bool()), (Some(""), Some(true)));
    assert_eq!(page[2]["reply"], m1);
}

#[test]
fn messages_change_live_and_in_history_across_shards() {
    let s = Server::start(&["--shards", "3", "--rate-limit", "0"]);
    changes_scenario(&s, "changes");
}

#[test]
fn changes_survive_a_restart_with_the_log_and_with_redis() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let setups: [Vec<&str>; 2] = [vec!["--data-dir", &data], vec!["--store", &url]];
    for args in setups {
        let mut all = vec!["--rate-limit", "0", "--history-memory", "2"];
        all.extend(args.iter().copied());
        let mut s = Server::start(&all);
        changes_scenario(&s, "kept");
        s.kill();
        drop(s);
        let s = Server::start(&all);
        let mut cy = s.client();
        cy.login("Cy", "kept", Some("cy"));
        let page = page_of(&mut cy, "kept");
        assert_eq!(page.len(), 3, "{args:?}: {page:?}");
        assert_eq!(page[0]["msg"], "hello world", "{args:?}: {page:?}");
        assert_eq!(page[0]["reactions"], json!({"👍": ["bob", "ann"]}), "{args:?}: {page:?}");
        assert_eq!(page[1]["deleted"], true, "{args:?}");
    }
}

#[test]
fn changes_cross_nodes_and_bad_ones_are_refused() {
    let cl = crate::cluster::Cluster::start_with(2, &["--rate-limit", "0"]);
    let names = ["node0", "node1"];
    let rid =
        (0..200).map(|i| format!("ch{i}")).find(|r| cchat::placement::node_for(r, names) == Some("node1")).unwrap();
    // Ann is on node 0; the room's owner is node 1.
    let mut ann = cl.node(0).client();
    ann.login_echo("Ann", &rid, "ann");
    let (_, m) = ann.say_acked(&rid, "across").unwrap();
    let r = ask(&mut ann, json!({"cmd": "react", "rid": rid, "seq": m, "emoji": "🚀"}), &["react"]);
    assert_eq!((r["emoji"].as_str(), r["on"].as_bool()), (Some("🚀"), Some(true)), "{r}");
    let e = ask(&mut ann, json!({"cmd": "edit", "rid": rid, "seq": m, "msg": "across nodes"}), &["edit"]);
    assert_eq!(e["msg"], "across nodes", "{e}");
    for (bad, why) in [
        (json!({"cmd": "react", "rid": rid, "seq": m, "emoji": ""}), "emoji"),
        (json!({"cmd": "edit", "rid": rid, "seq": 0, "msg": "x"}), "seq"),
        (json!({"cmd": "edit", "rid": rid, "seq": m}), "msg"),
        (json!({"cmd": "delete", "rid": "not-joined", "seq": m}), "member"),
    ] {
        let e = ask(&mut ann, bad.clone(), &[]);
        assert!(e["errMsg"].as_str().unwrap().contains(why), "{bad}: {e}");
    }
}

#[test]
fn the_edit_window_and_the_reaction_cap_hold() {
    let s = Server::start(&["--rate-limit", "0", "--edit-window-secs", "1"]);
    let mut ann = s.client();
    ann.login_echo("Ann", "win", "ann");
    let (_, m) = ann.say_acked("win", "quick").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let e = ask(&mut ann, json!({"cmd": "edit", "rid": "win", "seq": m, "msg": "too late"}), &["edit"]);
    assert_eq!(e["errMsg"], "past the edit window", "{e}");
    // Reactions are not bound by the window, but capped per message.
    let mut refused = 0;
    for i in 0..25 {
        let r = ask(&mut ann, json!({"cmd": "react", "rid": "win", "seq": m, "emoji": format!("e{i}")}), &["react"]);
        if r["cmd"] == "error" {
            assert_eq!(r["errMsg"], "too many reactions on this message");
            refused += 1;
        }
    }
    assert_eq!(refused, 5, "20 distinct emoji at most");
}

#[test]
fn history_reaches_back_to_the_first_message_by_default() {
    // 2,001 messages: the old 1,000-message wall would hide 1,001 of them.
    let s = Server::start(&["--rate-limit", "0"]);
    let mut a = s.client();
    a.login_echo("Ann", "deep", "ann");
    for i in 1..=2000 {
        a.say("deep", &format!("m{i}"));
    }
    let (_, top) = a.say_acked("deep", "m2001").unwrap();
    assert_eq!(top, 2001);
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut q = json!({"cmd": "getHistory", "rid": "deep", "limit": 1000});
        if let Some(b) = before {
            q["before"] = json!(b);
        }
        let page = ask(&mut a, q, &["getHistory"]);
        let msgs = page["msgs"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        before = msgs[0]["seq"].as_u64();
        seen.splice(0..0, msgs.iter().map(|m| m["seq"].as_u64().unwrap()));
    }
    assert_eq!(seen, (1..=2001).collect::<Vec<_>>(), "every message once, back to the first");
}

#[test]
fn a_moderator_edits_and_deletes_any_message_through_the_server_api() {
    let key = "moderator-key-0123456789";
    let admin_port = crate::common::free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let s = Server::start(&["--rate-limit", "0", "--admin-listen", &admin, "--api-key", key]);
    let mut ann = s.client();
    ann.login_echo("Ann", "modded", "ann");
    let (_, m) = ann.say_acked("modded", "rude words").unwrap();
    let post = |path: &str, body: Value| crate::security::admin(&admin, "POST", path, Some(key), &body.to_string());
    let r = post("/api/edit", json!({"rid": "modded", "seq": m, "msg": "[removed by a moderator]", "uid": "mod"}));
    assert_eq!(r.0, 202, "{r:?}");
    let e = wait_cmd(&mut ann, "edit");
    assert_eq!((e["msg"].as_str(), e["uid"].as_str()), (Some("[removed by a moderator]"), Some("mod")));
    let r = post("/api/delete", json!({"rid": "modded", "seq": m}));
    assert_eq!(r.0, 202, "{r:?}");
    let d = wait_cmd(&mut ann, "delete");
    assert_eq!((d["seq"].as_u64(), d["uid"].as_str()), (Some(m), Some("server")));
}

#[test]
fn a_reaction_flood_is_rate_limited_like_messages() {
    let s = Server::start(&[]);
    let mut ann = s.client();
    ann.login_echo("Ann", "flood", "ann");
    let (_, m) = ann.say_acked("flood", "react to me").unwrap();
    for i in 0..200 {
        ann.send(json!({"cmd": "react", "rid": "flood", "seq": m, "emoji": "+1", "on": i % 2 == 0}));
    }
    let mut refused = 0;
    let mut taken = 0;
    ann.ws.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while let Ok(tungstenite::Message::Text(t)) = ann.ws.read() {
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["cmd"].as_str() {
            Some("react") => taken += 1,
            Some("error") => refused += 1,
            _ => {}
        }
    }
    assert!(refused > 100 && taken < 100, "taken {taken}, refused {refused}");
}

#[test]
fn typing_is_told_to_the_others_at_most_every_two_seconds_and_not_stored() {
    let s = Server::start(&["--shards", "2", "--presence-limit", "3"]);
    let mut ann = s.client();
    ann.login("Ann", "typing", Some("ann"));
    let mut bob = s.client();
    bob.login("Bob", "typing", Some("bob"));
    let _ = wait_cmd(&mut ann, "newUser");
    for _ in 0..5 {
        ann.send(json!({"cmd": "typing", "rid": "typing"}));
    }
    let t = wait_cmd(&mut bob, "typing");
    assert_eq!((t["uid"].as_str(), t["name"].as_str(), t["rid"].as_str()), (Some("ann"), Some("Ann"), Some("typing")));
    bob.expect_silence(Duration::from_millis(700));
    ann.expect_silence(Duration::from_millis(100));
    // Not a member: refused. Not stored: history has nothing.
    let mut eve = s.client();
    eve.login("Eve", "elsewhere", Some("eve"));
    eve.send(json!({"cmd": "typing", "rid": "typing"}));
    eve.expect_error(50);
    bob.send(json!({"cmd": "getHistory", "rid": "typing"}));
    assert_eq!(wait_cmd(&mut bob, "getHistory")["msgs"], json!([]));
    // Past --presence-limit users, typing is not announced.
    let mut others = Vec::new();
    for i in 0..3 {
        let mut c = s.client();
        c.login("X", "typing", Some(&format!("x{i}")));
        others.push(c);
    }
    std::thread::sleep(Duration::from_millis(2100));
    let mut fresh = s.client();
    fresh.login("Fresh", "typing", Some("fresh"));
    ann.send(json!({"cmd": "typing", "rid": "typing"}));
    fresh.expect_silence(Duration::from_millis(500));
}

/// `read` (DESIGN.md §1 "Conversation"): a user's marker per room, told at
/// once to the user's other connections (on any shard) and to no one else,
/// carried by the user's next login ack with the count after it, kept
/// across a SIGKILL (written within a second) and a SIGTERM (written on the
/// way out), and never moved back. A user who never sent `read` gets
/// CChat's ack unchanged.
#[test]
fn read_markers_reach_the_users_other_devices_and_survive_restarts() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", &data, "--shards", "2", "--rate-limit", "0"];
    let mut s = Server::start(&args);
    let mut bob = s.client();
    bob.login_echo("Bob", "reads", "bob");
    for i in 1..=5 {
        bob.say_acked("reads", &format!("m{i}")).unwrap();
    }
    // Three devices of ann (two shards: the kernel spreads them).
    let mut ann: Vec<Client> = (0..3).map(|_| s.client()).collect();
    for a in ann.iter_mut() {
        let ack = a.login("Ann", "reads", Some("ann"));
        assert!(ack.get("read").is_none() && ack.get("unread").is_none(), "no marker: CChat's ack: {ack}");
    }
    ann[0].send(json!({"cmd": "read", "rid": "reads", "seq": 3}));
    for a in ann[1..].iter_mut() {
        assert_eq!(wait_cmd(a, "read"), json!({"cmd": "read", "rid": "reads", "seq": 3}));
    }
    // The reader and other users are not told; back is no move.
    ann[0].send(json!({"cmd": "read", "rid": "reads", "seq": 2}));
    ann[0].expect_silence(Duration::from_millis(300));
    ann[1].expect_silence(Duration::from_millis(100));
    assert_eq!(bob.expect("newUser")["uid"], "ann", "ann's first device; then nothing");
    bob.expect_silence(Duration::from_millis(100));
    // Errors: not a member; seq missing or of the wrong type.
    let mut eve = s.client();
    eve.login("Eve", "elsewhere", Some("eve"));
    eve.send(json!({"cmd": "read", "rid": "reads", "seq": 1}));
    eve.expect_error(50);
    for bad in [json!({"cmd": "read", "rid": "reads"}), json!({"cmd": "read", "rid": "reads", "seq": "3"})] {
        ann[0].send(bad);
        ann[0].expect_error(50);
    }
    // A new device learns it at login: read 3, and 2 after it.
    let mut phone = s.client();
    let ack = phone.login("Ann", "reads", Some("ann"));
    assert_eq!((ack["read"].as_u64(), ack["unread"].as_u64()), (Some(3), Some(2)), "{ack}");
    // Killed a second and a half after the read: the marker was written.
    std::thread::sleep(Duration::from_millis(1500));
    drop((ann, phone, bob, eve));
    s.kill();
    drop(s);
    let mut s = Server::start(&args);
    let mut a = s.client();
    let ack = a.login("Ann", "reads", Some("ann"));
    assert_eq!((ack["read"].as_u64(), ack["unread"].as_u64()), (Some(3), Some(2)), "after SIGKILL: {ack}");
    // Past the newest: the newest. Then SIGTERM at once: written on the way out.
    a.send(json!({"cmd": "read", "rid": "reads", "seq": 99}));
    let mut b = s.client();
    b.login("Ann", "reads", Some("ann"));
    a.send(json!({"cmd": "getOnline", "rid": "reads"}));
    let _ = wait_cmd(&mut a, "getOnline");
    s.signal(15);
    let _ = s.child.wait();
    drop((a, b));
    drop(s);
    let s = Server::start(&args);
    let mut a = s.client();
    let ack = a.login("Ann", "reads", Some("ann"));
    assert_eq!((ack["read"].as_u64(), ack["unread"].as_u64()), (Some(5), Some(0)), "after SIGTERM: {ack}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged markers file costs the markers, not the server or a message.
#[test]
fn a_damaged_read_markers_file_is_ignored() {
    let dir = crate::common::temp_data_dir();
    let data = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", &data, "--shards", "1"];
    let mut s = Server::start(&args);
    let mut a = s.client();
    a.login_echo("Ann", "dmg", "ann");
    a.say_acked("dmg", "kept").unwrap();
    a.send(json!({"cmd": "read", "rid": "dmg", "seq": 1}));
    a.send(json!({"cmd": "getOnline", "rid": "dmg"}));
    let _ = wait_cmd(&mut a, "getOnline");
    s.signal(15);
    let _ = s.child.wait();
    drop((a, s));
    let file = dir.join("shard-0").join("read-markers");
    let mut bytes = std::fs::read(&file).expect("markers written on the way out");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&file, bytes).unwrap();
    let s = Server::start(&args);
    let mut a = s.client();
    let ack = a.login("Ann", "dmg", Some("ann"));
    assert!(ack.get("read").is_none(), "the damaged marker is not used: {ack}");
    a.send(json!({"cmd": "getHistory", "rid": "dmg"}));
    assert_eq!(wait_cmd(&mut a, "getHistory")["msgs"][0]["msg"], "kept");
    let _ = std::fs::remove_dir_all(&dir);
}
