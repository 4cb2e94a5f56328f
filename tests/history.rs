//! History beyond memory: `getHistory` and the server API read older
//! messages from the log, page back with `before`, survive a restart; rooms
//! nobody is in leave memory and come back with their sequence.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, Server, temp_data_dir};

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", dir.to_str().unwrap(), "--shards", "2", "--rate-limit", "0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The (epoch, seq) of every message of a getHistory reply, checking each
/// message's text is "m<seq>".
fn seqs(h: &Value) -> Vec<(u64, u64)> {
    h["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(m["msg"], format!("m{seq}"), "the stored text of seq {seq}");
            (m["epoch"].as_u64().unwrap(), seq)
        })
        .collect()
}

fn ask(c: &mut Client, q: Value) -> Vec<(u64, u64)> {
    c.send(q);
    seqs(&c.expect("getHistory"))
}

/// A metric from the admin listener's /metrics.
fn metric(admin: &str, name: &str) -> f64 {
    let (_, body) = crate::security::admin(admin, "GET", "/metrics", None, "");
    body.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to 10 s) until a metric is `want`.
fn wait_metric(admin: &str, name: &str, want: f64) {
    let t0 = Instant::now();
    while metric(admin, name) != want {
        assert!(t0.elapsed() < Duration::from_secs(10), "{name} stayed at {}, want {want}", metric(admin, name));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn history_beyond_memory_is_read_from_the_log_paged_and_kept_across_a_restart() {
    let dir = temp_data_dir();
    let flags = ["--history-memory", "5", "--history", "500"];
    let server = start(&dir, &flags);
    let mut reader = server.client();
    reader.login("reader", "deep", Some("reader"));
    let mut writer = server.client();
    writer.login("writer", "deep", Some("writer"));
    reader.expect("newUser");
    for k in 1..=120 {
        writer.say("deep", &format!("m{k}"));
    }
    let mut epoch = 0;
    for k in 1..=120 {
        let m = reader.expect("message");
        assert_eq!(m["seq"], k);
        epoch = m["epoch"].as_u64().unwrap();
    }
    let range = |a: u64, b: u64| (a..=b).map(|s| (epoch, s)).collect::<Vec<_>>();
    // The newest 100: 95 from the log, 5 from memory, in order.
    assert_eq!(ask(&mut reader, json!({"cmd":"getHistory","rid":"deep","limit":100})), range(21, 120));
    // Scrolling back before the oldest shown, and paging forward from the start.
    assert_eq!(ask(&mut reader, json!({"cmd":"getHistory","rid":"deep","before":21,"limit":100})), range(1, 20));
    assert_eq!(ask(&mut reader, json!({"cmd":"getHistory","rid":"deep","since":0,"limit":50})), range(1, 50));
    assert_eq!(ask(&mut reader, json!({"cmd":"getHistory","rid":"deep","since":117})), range(118, 120));
    assert!(server.metric("cchat_history_disk_reads_total") >= 3.0);
    assert_eq!(server.metric("cchat_history_disk_errors_total"), 0.0);
    drop((reader, writer));
    drop(server);

    // A restart holds no message in memory: everything comes from the log.
    let server = start(&dir, &flags);
    let mut c = server.client();
    c.login_echo("back", "deep", "back");
    assert_eq!(ask(&mut c, json!({"cmd":"getHistory","rid":"deep","limit":1000})), range(1, 120));
    c.say("deep", "m121");
    let m = c.expect("message");
    assert_eq!((m["epoch"].as_u64(), m["seq"].as_u64()), (Some(epoch), Some(121)), "same epoch, next seq");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rooms_nobody_is_in_leave_memory_and_come_back_with_their_sequence() {
    let dir = temp_data_dir();
    let admin = format!("127.0.0.1:{}", crate::common::free_port());
    let server = start(&dir, &["--room-evict-ms", "100", "--admin-listen", &admin, "--api-key", "k"]);
    let mut c = server.client();
    // One connection fills 60 rooms with a message each, then leaves them all.
    let mut epochs = Vec::new();
    for i in 0..60 {
        let rid = format!("e{i}");
        c.login_echo("a", &rid, "a");
        c.say(&rid, "m1");
        let m = c.expect("message");
        epochs.push(m["epoch"].as_u64().unwrap());
        c.send(json!({"cmd":"logout","rid":rid}));
        c.expect("logout");
    }
    wait_metric(&admin, "cchat_rooms_evicted", 60.0);
    assert_eq!(metric(&admin, "cchat_rooms"), 0.0);
    // The server API reads an evicted room's history from the log.
    let (st, body) = crate::security::admin(&admin, "GET", "/api/history?rid=e3", Some("k"), "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["epoch"].as_u64(), v["msgs"][0]["msg"].as_str()), (Some(epochs[3]), Some("m1")));
    // Back: the same epoch, the next seq, and the history before it.
    let mut b = server.client();
    b.login_echo("b", "e7", "b");
    b.say("e7", "m2");
    let m = b.expect("message");
    assert_eq!((m["epoch"].as_u64(), m["seq"].as_u64()), (Some(epochs[7]), Some(2)));
    assert_eq!(ask(&mut b, json!({"cmd":"getHistory","rid":"e7"})), vec![(epochs[7], 1), (epochs[7], 2)]);
    assert_eq!(metric(&admin, "cchat_rooms"), 1.0);
    wait_metric(&admin, "cchat_rooms_evicted", 59.0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A history reply never overflows the client's outbound queue (which
/// would close it with 1008): it carries what fits in half of
/// `--max-outbound-bytes`, the newest when scrolling back, and the client
/// pages for the rest.
#[test]
fn a_long_history_is_cut_to_fit_and_paged() {
    let dir = temp_data_dir();
    let server = start(&dir, &["--max-outbound-bytes", "65536", "--history-memory", "10"]);
    let mut w = server.client();
    w.login_echo("w", "big", "w");
    let body = "x".repeat(1000);
    for k in 1..=100 {
        w.say("big", &format!("{k} {body}"));
        w.expect("message");
    }
    let mut c = server.client();
    c.login("c", "big", Some("c"));
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    while seen.len() < 100 {
        let mut q = json!({"cmd":"getHistory","rid":"big","limit":1000});
        if let Some(b) = before {
            q["before"] = json!(b);
        }
        c.send(q);
        let h = c.expect("getHistory");
        let seqs: Vec<u64> = h["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert!(!seqs.is_empty() && seqs.len() < 40, "a page of what fits: {}", seqs.len());
        assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "contiguous, oldest first");
        if before.is_none() {
            assert_eq!(*seqs.last().unwrap(), 100, "the newest first");
        }
        before = Some(seqs[0]);
        seen.splice(0..0, seqs);
    }
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retention keeps the log within its bytes (segments and their index files
/// deleted together); history then starts at the oldest message kept, and an
/// evicted room whose messages are all gone starts a new epoch when used.
#[test]
fn retention_bounds_the_log_and_forgets_rooms_it_emptied() {
    let dir = temp_data_dir();
    let flags = ["--shards", "1", "--segment-bytes", "4096", "--retention-bytes", "16384", "--room-evict-ms", "100"];
    let server = start(&dir, &flags);
    let mut a = server.client();
    a.login_echo("a", "old", "a");
    a.say("old", "m1");
    let old_epoch = a.expect("message")["epoch"].as_u64().unwrap();
    a.send(json!({"cmd":"logout","rid":"old"}));
    a.expect("logout");
    std::thread::sleep(Duration::from_millis(1500)); // evicted
    a.login_echo("a", "busy", "a");
    let body = "y".repeat(200);
    for k in 1..=300 {
        a.say("busy", &format!("m{k} {body}"));
        a.expect("message");
    }
    // The log on disk: within retention (plus the segment being written and
    // one that may still be sealing), every index beside its segment.
    let shard = dir.join("shard-0");
    let t0 = Instant::now();
    loop {
        let files: Vec<_> = std::fs::read_dir(&shard).unwrap().flatten().map(|e| e.path()).collect();
        let logs: u64 = files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let orphans = files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "idx") && !p.with_extension("log").exists())
            .count();
        if logs <= 16384 + 2 * 4096 + 2048 && orphans == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "log {logs} bytes, {orphans} orphan index files");
        std::thread::sleep(Duration::from_millis(50));
    }
    // History starts at the oldest kept message, contiguous to the newest.
    a.send(json!({"cmd":"getHistory","rid":"busy","limit":1000}));
    let h = a.expect("getHistory");
    let seqs: Vec<u64> = h["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.len() > 20 && seqs.len() < 300, "kept {}", seqs.len());
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1) && *seqs.last().unwrap() == 300, "{seqs:?}");
    // The evicted room lost its last message to retention: a new epoch.
    a.login_echo("a", "old", "a");
    a.say("old", "again");
    let m = a.expect("message");
    assert_ne!(m["epoch"].as_u64().unwrap(), old_epoch, "a new epoch, not a reused (epoch, seq)");
    assert_eq!(m["seq"], 1);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--retention-days`: a message older than the room's retention is served
/// by no history page — from memory, from the log, through the server API,
/// after a restart — and paging back ends at the oldest one kept.
#[test]
fn messages_past_the_retention_age_are_served_by_no_page() {
    let dir = temp_data_dir();
    let admin = format!("127.0.0.1:{}", crate::common::free_port());
    // 0.0001 days: 8.64 s.
    let flags = ["--retention-days", "0.0001", "--history-memory", "2", "--admin-listen", &admin, "--api-key", "k"];
    let server = start(&dir, &flags);
    let mut c = server.client();
    c.login_echo("a", "aging", "a");
    for k in 1..=3 {
        c.say("aging", &format!("m{k}"));
        c.expect("message");
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(4000));
    for k in 4..=6 {
        c.say("aging", &format!("m{k}"));
        c.expect("message");
    }
    let epoch = ask(&mut c, json!({"cmd":"getHistory","rid":"aging"}))[0].0;
    let all = |a: u64| (a..=6).map(|s| (epoch, s)).collect::<Vec<_>>();
    assert!(t0.elapsed() < Duration::from_millis(8000), "too slow a machine to tell the two apart");
    assert_eq!(ask(&mut c, json!({"cmd":"getHistory","rid":"aging"})), all(1));
    // Past the first three's age, not the last three's.
    while t0.elapsed() < Duration::from_millis(9000) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ask(&mut c, json!({"cmd":"getHistory","rid":"aging"})), all(4), "newest page");
    assert_eq!(ask(&mut c, json!({"cmd":"getHistory","rid":"aging","since":0})), all(4), "from the start");
    assert_eq!(ask(&mut c, json!({"cmd":"getHistory","rid":"aging","before":4})), vec![], "paging back ends");
    let (st, body) = crate::security::admin(&admin, "GET", "/api/history?rid=aging", Some("k"), "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let api: Vec<u64> = v["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(api, [4, 5, 6], "the server API");
    drop(c);
    drop(server);
    // After a restart, everything comes from the log: the same cut.
    let server = start(&dir, &flags);
    let mut c = server.client();
    c.login_echo("b", "aging", "b");
    assert_eq!(ask(&mut c, json!({"cmd":"getHistory","rid":"aging","limit":1000})), all(4));
    // A resume whose gap starts past the age is not served; one after it is.
    for (since, recovered) in [(0, false), (3, true)] {
        let mut r = server.client();
        r.send(json!({"cmd":"login","name":"r","rid":"aging","uid":"r","since":{"epoch":epoch,"seq":since}}));
        let ack = r.expect("login");
        assert_eq!(ack["recovered"], recovered, "since {since}: {ack}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
