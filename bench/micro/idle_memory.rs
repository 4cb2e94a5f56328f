//! Resident memory per idle, logged-in connection at 10,000 connections.
//!
//! `cargo bench --bench idle_memory` (writes bench/results/DATE-idle-memory/).
//! Measures the server's VmRSS before and after 10,000 clients connect and
//! log into rooms of 100; kernel socket buffers are not in RSS, so this is
//! the server's user-space memory.

#[path = "support.rs"]
mod support;

use std::time::Duration;

fn main() {
    let n: usize = std::env::var("CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let server = support::Server::start(&["--shards", "2", "--rate-limit", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = server.rss_bytes();
    let connect = |range: std::ops::Range<usize>| {
        range
            .map(|i| support::connect_and_login(server.addr, &format!("u{i}"), &format!("room{}", i / 100)))
            .collect::<Vec<_>>()
    };
    let half = n / 2;
    let mut socks = connect(0..half);
    std::thread::sleep(Duration::from_secs(1));
    let rss_half = server.rss_bytes();
    socks.extend(connect(half..n));
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = server.rss_bytes();
    let per = (rss1 as f64 - rss0 as f64) / n as f64;
    let slope = (rss1 as f64 - rss_half as f64) / (n - half) as f64;
    let body = format!(
        "| connections | RSS empty | RSS at {half} | RSS at {n} | (RSS at {n} - empty) / {n} | marginal: second {} connections |\n|---|---|---|---|---|---|\n| {n} (rooms of 100, 2 shards) | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} B | {:.0} B |\n\nTarget: under 2 KiB per idle connection. The marginal figure leaves out\none-time growth (tables sized for the first connections).",
        n - half,
        rss0 as f64 / 1048576.0,
        rss_half as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        per,
        slope
    );
    println!("{body}");
    support::write_result("idle-memory", "cargo bench --bench idle_memory", &body);
    drop(socks);
}
