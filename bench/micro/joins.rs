//! Server CPU per join when one connection joins N rooms, N = 1k … 80k.
//!
//! `cargo bench --bench joins` (writes bench/results/DATE-joins/; `SIZES=1000,5000`
//! picks other sizes). Each size gets a fresh server (`--shards 2
//! --rate-limit 0 --max-outbound-bytes 64MiB`); one connection logs in, sends N logins to distinct rooms
//! at once while a second thread reads the acknowledgements, and the
//! server's CPU time over the burst is divided by N. A join's cost must not
//! grow with the number of rooms the connection is already in.

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 10_000, 20_000, 40_000, 80_000]);
    let mut rows = String::from(
        "| rooms joined (N) | server CPU | CPU per join | wall time | RSS before | RSS joined | RSS after 3 rounds of joining and leaving N rooms |\n|---|---|---|---|---|---|---|\n",
    );
    for n in sizes {
        // The acknowledgements of a burst outrun a reader by more than the
        // default 1 MiB queue cap; the bench measures joins, not that cap.
        let server = support::Server::start(&[
            "--shards",
            "2",
            "--rate-limit",
            "0",
            "--max-outbound-bytes",
            "67108864",
            "--max-rooms-per-connection",
            "1000000",
        ]);
        let mut s = support::connect_and_login(server.addr, "joiner", "home");
        let mut frames = Vec::new();
        for i in 0..n {
            let cmd = format!(r#"{{"cmd":"login","rid":"r{i}"}}"#);
            cchat::ws::client_frame(&mut frames, 1, cmd.as_bytes(), [1, 2, 3, 4]);
        }
        std::thread::sleep(Duration::from_millis(200));
        let rss0 = server.rss_bytes();
        let cpu0 = server.cpu_seconds();
        let t0 = Instant::now();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&frames).unwrap());
        let acks = read_acks(&mut s, n);
        writer.join().unwrap();
        let wall = t0.elapsed();
        let cpu = server.cpu_seconds() - cpu0;
        assert_eq!(acks, n, "every join acknowledged");
        let rss_joined = server.rss_bytes();
        // Leave every room (rooms that never had a message are forgotten),
        // then join and leave N other rooms twice more: the memory of the
        // first round is used again, not added to.
        support::send_text(&mut s, r#"{"cmd":"logout"}"#);
        read_until(&mut s, n + 1, br#"{"cmd":"logout""#);
        let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
        for round in 1..rounds {
            let mut frames = Vec::new();
            for i in 0..n {
                let cmd = format!(r#"{{"cmd":"login","rid":"r{round}-{i}"}}"#);
                cchat::ws::client_frame(&mut frames, 1, cmd.as_bytes(), [1, 2, 3, 4]);
            }
            let mut w = s.try_clone().unwrap();
            let writer = std::thread::spawn(move || w.write_all(&frames).unwrap());
            read_acks(&mut s, n);
            writer.join().unwrap();
            support::send_text(&mut s, r#"{"cmd":"logout"}"#);
            read_until(&mut s, n, br#"{"cmd":"logout""#);
            eprintln!("N={n}: RSS after round {}: {:.1} MiB", round + 1, server.rss_bytes() as f64 / 1048576.0);
        }
        std::thread::sleep(Duration::from_millis(300));
        let rss_left = server.rss_bytes();
        let mib = |b: u64| b as f64 / 1048576.0;
        let line = format!(
            "| {n} | {cpu:.3} s | {:.2} µs | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            cpu * 1e6 / n as f64,
            wall.as_secs_f64(),
            mib(rss0),
            mib(rss_joined),
            mib(rss_left),
        );
        print!("{line}");
        rows.push_str(&line);
    }
    support::write_result("joins", "cargo bench --bench joins", &rows);
}

/// Reads frames until `n` login acknowledgements have arrived.
fn read_acks(s: &mut std::net::TcpStream, n: usize) -> usize {
    read_until(s, n, br#"{"cmd":"login""#)
}

/// Reads frames until `n` frames starting with `prefix` have arrived.
fn read_until(s: &mut std::net::TcpStream, n: usize, prefix: &[u8]) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let mut acks = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while acks < n {
        let got = s.read(&mut chunk).expect("acks keep coming");
        assert!(got > 0, "server closed");
        buf.extend_from_slice(&chunk[..got]);
        let mut off = 0;
        while let Some((_, r, used)) = cchat::ws::parse_server_frame(&buf[off..]).unwrap() {
            if buf[off..][r].starts_with(prefix) {
                acks += 1;
            }
            off += used;
        }
        buf.drain(..off);
    }
    acks
}
