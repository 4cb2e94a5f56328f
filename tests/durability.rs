//! Durable history with real processes and real files: SIGKILL under
//! traffic and an immediate restart on the same directory and port, damaged
//! tails, damaged sealed segments, one process per directory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Client, Server, temp_data_dir};

fn start(dir: &Path, listen: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", dir.to_str().unwrap(), "--shards", "2", "--rate-limit", "0"];
    args.extend_from_slice(extra);
    Server::try_start_on(listen, &args).expect("cchat started")
}

fn history(c: &mut Client, rid: &str) -> Value {
    c.send(json!({"cmd": "getHistory", "rid": rid}));
    c.expect("getHistory")
}

/// The segments of every shard, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        if shard.file_name().to_string_lossy().starts_with("shard-") {
            let mut segs: Vec<PathBuf> = std::fs::read_dir(shard.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            segs.sort();
            out.extend(segs);
        }
    }
    out
}

/// The newest segment that holds records (its shard owns the room).
fn newest_with_records(dir: &Path) -> PathBuf {
    segments(dir).into_iter().rfind(|p| std::fs::metadata(p).unwrap().len() > 12).expect("a segment with records")
}

#[test]
fn history_and_sequence_survive_sigkill_under_traffic() {
    let dir = temp_data_dir();
    // A port out of the ephemeral range: the restart binds it again.
    let listen = format!("127.0.0.1:{}", crate::common::free_port());
    let mut server = start(&dir, &listen, &[]);
    let mut reader = server.client();
    reader.login("reader", "dur", Some("reader"));
    let mut writer = server.client();
    writer.login("writer", "dur", Some("writer"));
    reader.expect("newUser");
    // The writer posts as fast as it can while the server is killed under it.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let posting = thread::spawn(move || {
        let mut n = 0;
        while !flag.load(Ordering::Relaxed) {
            writer
                .ws
                .send(tungstenite::Message::text(
                    json!({"cmd":"message","type":"text","rid":"dur","msg":n.to_string()}).to_string(),
                ))
                .ok();
            n += 1;
            thread::sleep(Duration::from_micros(300));
        }
    });
    // What the reader received before the kill.
    let mut received = Vec::new();
    while received.len() < 200 {
        let m = reader.recv();
        received.push((
            m["epoch"].as_u64().unwrap(),
            m["seq"].as_u64().unwrap(),
            m["msg"].as_str().unwrap().to_owned(),
        ));
    }
    server.signal(9);
    let _ = server.child.wait();
    stop.store(true, Ordering::Relaxed);
    // What was already on its way, then the socket's end.
    reader.ws.get_mut().set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    loop {
        match reader.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                received.push((
                    m["epoch"].as_u64().unwrap(),
                    m["seq"].as_u64().unwrap(),
                    m["msg"].as_str().unwrap().to_owned(),
                ));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    posting.join().unwrap();
    // At once, on the same directory and port.
    let server = start(&dir, &listen, &["--history", "100000"]);
    let mut c = server.client();
    c.login("back", "dur", Some("back"));
    let h = history(&mut c, "dur");
    let epoch = h["epoch"].as_u64().unwrap();
    let stored: Vec<(u64, u64, String)> = h["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["epoch"].as_u64().unwrap(), m["seq"].as_u64().unwrap(), m["msg"].as_str().unwrap().to_owned()))
        .collect();
    for r in &received {
        assert!(stored.contains(r), "received {r:?} before the kill, missing from history after it");
    }
    assert_eq!(epoch, received[0].0, "same epoch after a restart");
    let last = stored.last().unwrap().1;
    assert!(stored.windows(2).all(|w| w[1].1 == w[0].1 + 1), "history has no gap");
    // The next message continues the sequence.
    let mut other = server.client();
    other.login("other", "dur", Some("other"));
    c.expect("newUser");
    other.say("dur", "after the restart");
    let m = c.expect("message");
    assert_eq!((m["epoch"].as_u64().unwrap(), m["seq"].as_u64().unwrap()), (epoch, last + 1));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_tails_are_cut_and_their_rooms_start_a_new_epoch() {
    for damage in ["garbage", "cut mid-record"] {
        let dir = temp_data_dir();
        let mut server = start(&dir, "127.0.0.1:0", &[]);
        let mut a = server.client();
        a.login("a", "tail", Some("a"));
        let mut b = server.client();
        b.login("b", "tail", Some("b"));
        a.expect("newUser");
        for i in 0..20 {
            b.say("tail", &format!("m{i}"));
            a.expect("message");
        }
        let old_epoch = history(&mut a, "tail")["epoch"].as_u64().unwrap();
        server.signal(9);
        let _ = server.child.wait();
        let seg = newest_with_records(&dir);
        let len = std::fs::metadata(&seg).unwrap().len();
        match damage {
            "garbage" => std::fs::OpenOptions::new()
                .append(true)
                .open(&seg)
                .unwrap()
                .write_all(b"\x13\x00\x00\x00garbage!garbage!garbage!")
                .unwrap(),
            _ => std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 7).unwrap(),
        }
        let server = start(&dir, "127.0.0.1:0", &[]);
        assert!(server.metric("cchat_log_recovery_dropped_bytes") > 0.0, "{damage}: the tail was cut");
        assert_eq!(server.metric("cchat_log_recovery_new_epochs"), 1.0, "{damage}");
        let mut c = server.client();
        c.login("c", "tail", Some("c"));
        let mut d = server.client();
        d.login("d", "tail", Some("d"));
        c.expect("newUser");
        d.say("tail", "after");
        let m = c.expect("message");
        assert_ne!(m["epoch"].as_u64().unwrap(), old_epoch, "{damage}: a new epoch, so no (epoch, seq) pair is reused");
        assert!(m["epoch"].as_u64().unwrap() > old_epoch);
        assert_eq!(m["seq"], 1);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_damaged_sealed_segment_is_caught_when_read_or_skipped_at_a_start_without_its_index() {
    let dir = temp_data_dir();
    let mut server = start(&dir, "127.0.0.1:0", &["--shards", "1", "--segment-bytes", "4096"]);
    let mut a = server.client();
    a.login("a", "seal", Some("a"));
    for round in 0..5 {
        for i in 0..20 {
            a.say("seal", &format!("a message long enough to fill segments quickly {round}.{i}"));
        }
        // The reply waits behind the messages' log writes: these are on disk
        // after it, and the next round is another write (a segment rolls
        // after a write that passed its size).
        history(&mut a, "seal");
    }
    server.signal(9);
    let _ = server.child.wait();
    let segs = segments(&dir);
    assert!(segs.len() >= 2, "a sealed segment and the newest: {segs:?}");
    let first = &segs[0];
    let idx = first.with_extension("idx");
    assert!(idx.exists(), "a sealed segment has an index file");
    let mut bytes = std::fs::read(first).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(first, &bytes).unwrap();
    // With its index the segment is not read at start: the damaged message
    // is caught by its checksum when history reads it, and left out.
    {
        let server = start(&dir, "127.0.0.1:0", &["--shards", "1", "--segment-bytes", "4096"]);
        let mut b = server.client();
        b.login("b", "seal", Some("b"));
        b.send(json!({"cmd":"getHistory","rid":"seal","limit":1000}));
        let msgs = b.expect("getHistory")["msgs"].as_array().unwrap().len();
        assert_eq!(msgs, 99, "every message but the damaged one");
        // Caught by each read of it: the history page, and the room's
        // message ids read back when it came into memory.
        assert!(server.metric("cchat_history_disk_errors_total") >= 1.0);
    }
    // Without it, the start reads the segment, skips the damaged record by
    // its framing and keeps every other one; the file is left as it is.
    std::fs::remove_file(&idx).unwrap();
    let segs = segments(&dir);
    let log = dir.join("start.log");
    let server = Server::start_with_fd_limit(
        &["--shards", "1", "--segment-bytes", "4096", "--data-dir", dir.to_str().unwrap()],
        1024,
        &log,
    );
    let mut b = server.client();
    b.login("b", "seal", Some("b"));
    b.send(json!({"cmd":"getHistory","rid":"seal","limit":1000}));
    let h = b.expect("getHistory");
    assert_eq!(h["msgs"].as_array().unwrap().len(), 99, "every message but the damaged one");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("damaged log records skipped") && text.contains(&first.display().to_string()), "{text}");
    drop(server);
    assert_eq!(segments(&dir), segs, "nothing deleted");
    assert_eq!(std::fs::read(first).unwrap(), bytes, "nothing changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_process_per_data_directory() {
    let dir = temp_data_dir();
    let server = start(&dir, "127.0.0.1:0", &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cchat"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another cchat process"), "{err}");
    assert!(err.contains(&format!("pid {}", server.child.id())), "names the holder: {err}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sync_mode_keeps_history_across_a_kill() {
    let dir = temp_data_dir();
    let mut server = start(&dir, "127.0.0.1:0", &["--durability", "sync"]);
    let mut a = server.client();
    a.login("a", "s", Some("a"));
    let mut b = server.client();
    b.login("b", "s", Some("b"));
    a.expect("newUser");
    for i in 0..10 {
        b.say("s", &i.to_string());
        a.expect("message");
    }
    assert!(server.metric("cchat_log_fsyncs_total") >= 1.0);
    server.signal(9);
    let _ = server.child.wait();
    let server = start(&dir, "127.0.0.1:0", &["--durability", "sync"]);
    let mut c = server.client();
    c.login("c", "s", Some("c"));
    let h = history(&mut c, "s");
    assert_eq!(h["msgs"].as_array().unwrap().len(), 10);
    assert_eq!(server.metric("cchat_log_recovered_records"), 10.0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn after_a_reboot_a_written_mode_log_gives_its_rooms_a_new_epoch() {
    let dir = temp_data_dir();
    let mut server = start(&dir, "127.0.0.1:0", &[]);
    let mut a = server.client();
    a.login("a", "boot", Some("a"));
    let mut b = server.client();
    b.login("b", "boot", Some("b"));
    a.expect("newUser");
    b.say("boot", "before");
    let old = a.expect("message")["epoch"].as_u64().unwrap();
    server.signal(9);
    let _ = server.child.wait();
    // As if the machine had rebooted: the unsynced tail may have been lost.
    crate::common::pretend_reboot(&dir);
    let server = start(&dir, "127.0.0.1:0", &[]);
    let mut c = server.client();
    c.login("c", "boot", Some("c"));
    let h = history(&mut c, "boot");
    assert!(h["epoch"].as_u64().unwrap() > old, "{h}");
    assert_eq!(server.metric("cchat_log_recovery_new_epochs"), 1.0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
