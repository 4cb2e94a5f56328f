//! Big rooms: presence in batches above `--presence-limit`, roster pages.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Client, Server};

#[test]
fn above_the_limit_presence_comes_in_one_batch_per_interval() {
    let server = Server::start(&["--shards", "2", "--presence-limit", "20", "--presence-interval-ms", "500"]);
    let mut observer = server.client();
    observer.login("obs", "big", Some("obs"));
    let mut joiners: Vec<Client> = Vec::new();
    let started = Instant::now();
    for i in 0..100 {
        let mut c = server.client();
        c.login(&format!("j{i}"), "big", Some(&format!("j{i}")));
        joiners.push(c);
    }
    // 50 leave again, while the room stays above the limit.
    for mut c in joiners.drain(..50) {
        c.send(json!({"cmd": "logout", "rid": "big"}));
        while c.recv()["cmd"] != "logout" {}
    }
    let (mut new_users, mut joined, mut left) = (0, 0, 0);
    let mut batches = 0u32;
    let mut last_count = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        observer.ws.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let Ok(tungstenite::Message::Text(t)) = observer.ws.read() else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        match v["cmd"].as_str() {
            Some("newUser") => new_users += 1,
            Some("userLeave") => panic!("a leave in a room above the limit came alone: {v}"),
            Some("presence") => {
                batches += 1;
                joined += v["joinedTotal"].as_u64().unwrap();
                left += v["leftTotal"].as_u64().unwrap();
                assert!(v["joined"].as_array().unwrap().len() <= 100);
                last_count = v["count"].as_u64().unwrap();
                assert_eq!(v["rid"], "big");
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    // The first 19 joiners fill the room to the limit with CChat's frames;
    // the rest arrive in batches. A user who came and went within one
    // batch's interval is in neither list.
    assert_eq!(new_users, 19);
    assert_eq!(joined - left.min(joined), 100 - 19 - 50, "net arrivals: joined {joined}, left {left}");
    // At most one batch per interval since the first arrival (the frames
    // are read after the joins, so their spacing on arrival says nothing).
    assert!(batches > 0);
    let intervals = started.elapsed().as_millis() / 500;
    assert!(u128::from(batches) <= intervals + 1, "{batches} presence frames in {intervals} intervals");
    assert_eq!(last_count, 51, "observer and 50 joiners remain");
    drop(joiners);
}

#[test]
fn roster_pages_list_every_member_exactly_once() {
    let server = Server::start(&["--shards", "2"]);
    let mut members: Vec<Client> = Vec::new();
    for i in 0..250 {
        let mut c = server.client();
        c.login("m", "roster", Some(&format!("m{i}")));
        members.push(c);
    }
    let asker = &mut members[0];
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"cmd": "getOnline", "rid": "roster", "limit": 100});
        if let Some(a) = &after {
            req["after"] = json!(a);
        }
        asker.send(req);
        let v = loop {
            let v = asker.recv();
            if v["cmd"] == "getOnline" {
                break v;
            }
        };
        pages += 1;
        assert_eq!(v["count"], 250);
        let users = v["users"].as_array().unwrap();
        assert!(users.len() <= 100);
        for u in users {
            assert!(seen.insert(u["uid"].as_str().unwrap().to_owned()), "{u} listed twice");
        }
        match v.get("next").and_then(|n| n.as_str()) {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 250));
    // Pages follow uid order: a cursor whose user left (or never was) still
    // pages on from its place, and users who leave between pages do not
    // make others be skipped.
    let all: Vec<String> = {
        let mut v: Vec<String> = seen.iter().cloned().collect();
        v.sort();
        v
    };
    asker.send(json!({"cmd": "getOnline", "rid": "roster", "limit": 100}));
    let first = loop {
        let v = asker.recv();
        if v["cmd"] == "getOnline" {
            break v;
        }
    };
    let cursor = first["next"].as_str().unwrap().to_owned();
    // Members listed on the first page leave, the cursor's own user too.
    for k in (1..20).chain([99]) {
        let uid = first["users"][k]["uid"].as_str().unwrap().to_owned();
        let idx: usize = uid[1..].parse().unwrap();
        members[idx].send(json!({"cmd": "logout"}));
        while members[idx].recv()["cmd"] != "logout" {}
    }
    let asker = &mut members[0];
    let mut rest = Vec::new();
    let mut after = Some(cursor.clone());
    while let Some(a) = after {
        asker.send(json!({"cmd": "getOnline", "rid": "roster", "limit": 100, "after": a}));
        let v = loop {
            let v = asker.recv();
            if v["cmd"] == "getOnline" {
                break v;
            }
        };
        rest.extend(v["users"].as_array().unwrap().iter().map(|u| u["uid"].as_str().unwrap().to_owned()));
        after = v.get("next").and_then(|n| n.as_str()).map(str::to_owned);
    }
    let want: Vec<String> = all.iter().filter(|u| **u > cursor).cloned().collect();
    assert_eq!(rest, want, "every user after the cursor, once, in uid order");
}

#[test]
fn a_user_back_within_the_grace_period_is_announced_neither_leaving_nor_joining() {
    let server = Server::start(&["--shards", "2", "--presence-grace-ms", "1500"]);
    let mut obs = server.client();
    obs.login("obs", "g", Some("obs"));
    let mut flaky = server.client();
    flaky.login("flaky", "g", Some("flaky"));
    obs.expect("newUser");
    // The connection drops and comes back (a page reload).
    drop(flaky);
    std::thread::sleep(Duration::from_millis(300));
    let mut flaky = server.client();
    flaky.login("flaky", "g", Some("flaky"));
    obs.expect_silence(Duration::from_millis(2000));
    // Gone for good: announced once the grace period is over, not before.
    let t0 = Instant::now();
    drop(flaky);
    let v = obs.expect("userLeave");
    assert_eq!(v["uid"], "flaky");
    assert!(t0.elapsed() >= Duration::from_millis(1000), "announced after {:?}", t0.elapsed());
    // A logout is announced at once.
    let mut quick = server.client();
    quick.login("quick", "g", Some("quick"));
    obs.expect("newUser");
    quick.send(json!({"cmd": "logout", "rid": "g"}));
    let t0 = Instant::now();
    obs.expect("userLeave");
    assert!(t0.elapsed() < Duration::from_millis(1000));
}
