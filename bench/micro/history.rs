//! getHistory of 100 messages: from memory versus read back from the log.
//!
//! `cargo bench --bench history` (writes bench/results/DATE-history/;
//! `ASKS=2000` sets the number of requests). For each case a fresh server
//! (`--shards 1 --rate-limit 0`) gets 100 rooms of 300 messages of 200
//! bytes, interleaved (as many rooms' messages are on one shard's log), then
//! one client asks `getHistory` (limit 100) of a room at a time, each after
//! the previous answer, and times the round trips. `--history-memory 100`
//! answers from memory; `--history-memory 0` makes every answer read the
//! log (through the page cache: the log was just written). Target (issue
//! 12): p99 <= 5 ms from disk. Then one room of `DEEP` messages (default a
//! million) and pages of 50 before a random seq (issue 27: p99 <= 5 ms at
//! any depth), and the memory evicted rooms cost.

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const ROOMS: usize = 100;
const PER_ROOM: usize = 300;

fn main() {
    let asks: usize = std::env::var("ASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut rows =
        String::from("| case | requests | p50 | p99 | max | server CPU per request |\n|---|---|---|---|---|---|\n");
    for (case, memory) in [("from memory (--history-memory 100)", "100"), ("from the log (--history-memory 0)", "0")] {
        let server = support::Server::start(&[
            "--shards",
            "1",
            "--rate-limit",
            "0",
            "--history-memory",
            memory,
            "--history",
            "1000",
        ]);
        let mut s = support::connect_and_login(server.addr, "w", "r0");
        let mut inbox = Vec::new();
        let mut frames = Vec::new();
        for r in 1..ROOMS {
            cchat::ws::client_frame(&mut frames, 1, format!(r#"{{"cmd":"login","rid":"r{r}"}}"#).as_bytes(), [1; 4]);
        }
        let body = "x".repeat(200);
        for k in 0..PER_ROOM {
            for r in 0..ROOMS {
                let m = format!(r#"{{"cmd":"message","type":"text","rid":"r{r}","msg":"{k} {body}"}}"#);
                cchat::ws::client_frame(&mut frames, 1, m.as_bytes(), [1; 4]);
            }
        }
        s.write_all(&frames).unwrap();
        // The sender gets no copy of its messages: once its last login is
        // acknowledged and a history shows the last message, all are stored.
        let last = format!(r#""rid":"r{}""#, ROOMS - 1);
        while !String::from_utf8_lossy(&drain_until(&mut s, &mut inbox, br#"{"cmd":"login""#)).contains(&last) {}
        loop {
            support::send_text(&mut s, &format!(r#"{{"cmd":"getHistory","rid":"r{}","limit":1}}"#, ROOMS - 1));
            let h = drain_until(&mut s, &mut inbox, br#"{"cmd":"getHistory""#);
            if String::from_utf8_lossy(&h).contains(&format!(r#""seq":{PER_ROOM}"#)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
        let cpu0 = server.cpu_seconds();
        for i in 0..asks {
            let t0 = Instant::now();
            support::send_text(&mut s, &format!(r#"{{"cmd":"getHistory","rid":"r{}","limit":100}}"#, i % ROOMS));
            let h = drain_until(&mut s, &mut inbox, br#"{"cmd":"getHistory""#);
            hist.record(t0.elapsed().as_micros() as u64).unwrap();
            assert!(h.windows(6).filter(|w| w == br#""seq":"#).count() == 100, "100 messages");
        }
        let cpu = server.cpu_seconds() - cpu0;
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let line = format!(
            "| {case} | {asks} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} µs |\n",
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1000.0,
            cpu * 1e6 / asks as f64
        );
        print!("{line}");
        rows.push_str(&line);
    }
    rows.push_str(&deep_room(asks));
    rows.push_str(&evicted_rooms_memory());
    support::write_result("history", "cargo bench --bench history", &rows);
}

/// A room of DEEP messages (default 1,000,000; issue 27's target: a page of
/// 50 at any depth, p99 <= 5 ms): filled in chunks (each confirmed stored
/// before the next, so the journal never refuses), then `asks` pages of 50
/// before a random seq, each after the previous answer.
fn deep_room(asks: usize) -> String {
    let n: u64 = std::env::var("DEEP").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let server = support::Server::start(&["--shards", "1", "--rate-limit", "0"]);
    let mut s = support::connect_and_login(server.addr, "w", "deep");
    let mut inbox = Vec::new();
    let body = "y".repeat(80);
    let t_fill = Instant::now();
    let chunk = 5_000u64;
    let mut sent = 0u64;
    while sent < n {
        let mut frames = Vec::new();
        let end = (sent + chunk).min(n);
        for k in sent..end {
            let m = format!(r#"{{"cmd":"message","type":"text","rid":"deep","msg":"{k} {body}"}}"#);
            cchat::ws::client_frame(&mut frames, 1, m.as_bytes(), [1; 4]);
        }
        s.write_all(&frames).unwrap();
        sent = end;
        loop {
            support::send_text(&mut s, r#"{"cmd":"getHistory","rid":"deep","limit":1}"#);
            let h = drain_until(&mut s, &mut inbox, br#"{"cmd":"getHistory""#);
            if String::from_utf8_lossy(&h).contains(&format!(r#""seq":{sent}"#)) {
                break;
            }
        }
    }
    let fill_s = t_fill.elapsed().as_secs_f64();
    let rss = server.rss_bytes();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let cpu0 = server.cpu_seconds();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..asks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let before = 51 + x % (n - 50);
        let t0 = Instant::now();
        support::send_text(&mut s, &format!(r#"{{"cmd":"getHistory","rid":"deep","limit":50,"before":{before}}}"#));
        let h = drain_until(&mut s, &mut inbox, br#"{"cmd":"getHistory""#);
        hist.record(t0.elapsed().as_micros() as u64).unwrap();
        assert_eq!(h.windows(6).filter(|w| w == br#""seq":"#).count(), 50, "50 messages before {before}");
    }
    let cpu = server.cpu_seconds() - cpu0;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let line = format!(
        "\n| one room of {n} messages (filled in {fill_s:.1} s; server RSS then {:.0} MiB): a page of 50 before a random seq | requests | p50 | p99 | max | server CPU per request |\n|---|---|---|---|---|---|\n| from the log (the newest 100 in memory) | {asks} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} µs |\n",
        rss as f64 / 1048576.0,
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0,
        cpu * 1e6 / asks as f64
    );
    print!("{line}");
    line
}

/// One connection fills ROOMS_FILLED rooms with a message each and leaves
/// each at once (as in the issue: a client growing the server with rooms);
/// the server's RSS before, once they are all left, and once they are
/// evicted (`--room-evict-ms 500`); then again with 20,000 other rooms: what
/// the second round adds is what an evicted room costs (the first round's
/// growth includes memory the allocator keeps for reuse).
fn evicted_rooms_memory() -> String {
    let n: usize = std::env::var("ROOMS_FILLED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let server = support::Server::start(&["--shards", "1", "--rate-limit", "0", "--room-evict-ms", "500"]);
    let mut s = support::connect_and_login(server.addr, "w", "home");
    let mut inbox = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = server.rss_bytes();
    let mut rss = Vec::new();
    for round in 0..2 {
        let mut frames = Vec::new();
        for i in 0..n {
            for cmd in [
                format!(r#"{{"cmd":"login","rid":"f{round}-{i}"}}"#),
                format!(r#"{{"cmd":"message","type":"text","rid":"f{round}-{i}","msg":"hello"}}"#),
                format!(r#"{{"cmd":"logout","rid":"f{round}-{i}"}}"#),
            ] {
                cchat::ws::client_frame(&mut frames, 1, cmd.as_bytes(), [1; 4]);
            }
        }
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&frames).unwrap());
        let last = format!(r#""rid":"f{round}-{}""#, n - 1);
        while !String::from_utf8_lossy(&drain_until(&mut s, &mut inbox, br#"{"cmd":"logout""#)).contains(&last) {}
        writer.join().unwrap();
        rss.push(server.rss_bytes());
        std::thread::sleep(Duration::from_millis(2500));
        rss.push(server.rss_bytes());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    format!(
        "\n| rooms filled and left by one connection, per round | RSS before | round 1: once left | once evicted | round 2 (other rooms): once left | once evicted | growth per evicted room, round 2 |\n|---|---|---|---|---|---|---|\n| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} bytes |\n",
        mib(rss0),
        mib(rss[0]),
        mib(rss[1]),
        mib(rss[2]),
        mib(rss[3]),
        rss[3].saturating_sub(rss[1]) as f64 / n as f64
    )
}

/// Reads frames (`buf` keeps what was read past the last one returned)
/// until one starts with `prefix`; returns it.
fn drain_until(s: &mut TcpStream, buf: &mut Vec<u8>, prefix: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let mut off = 0;
        while let Some((op, r, used)) = cchat::ws::parse_server_frame(&buf[off..]).unwrap() {
            assert!(op != 8, "closed by the server: {}", String::from_utf8_lossy(&buf[off..][r]));
            if buf[off..][r.clone()].starts_with(prefix) {
                let frame = buf[off..][r].to_vec();
                buf.drain(..off + used);
                return frame;
            }
            off += used;
        }
        buf.drain(..off);
        let got = s.read(&mut chunk).expect("the server answers");
        assert!(got > 0, "server closed");
        buf.extend_from_slice(&chunk[..got]);
    }
}
