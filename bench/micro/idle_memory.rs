//! Resident memory per idle, logged-in connection at 10,000 connections.
//!
//! `cargo bench --bench idle_memory` (writes bench/results/DATE-idle-memory/).
//! Measures the server's VmRSS before and after 10,000 clients connect and
//! log into rooms of 100; kernel socket buffers are not in RSS, so this is
//! the server's user-space memory. Beside it, the kernel's share per socket:
//! the slab objects a TCP socket takes (`/proc/slabinfo`: TCP,
//! sock_inode_cache, filp, dentry, eventpoll; readable by root) and the
//! pages its buffers hold (`/proc/net/sockstat`, TCP mem), counted over both
//! ends of each connection (client and server run on this machine).

#[path = "support.rs"]
mod support;

use std::time::Duration;

fn main() {
    let n: usize = std::env::var("CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // SHARDS: the server's shard count (default: the server's own choice,
    // one on a box of two cores or fewer).
    let shards = std::env::var("SHARDS").ok();
    // DORMANT_AFTER: the server's --dormant-after (0: every connection
    // keeps its task, the figure before dormancy).
    let dormant = std::env::var("DORMANT_AFTER").ok();
    let mut args = vec!["--rate-limit", "0"];
    if let Some(s) = &shards {
        args.extend(["--shards", s.as_str()]);
    }
    if let Some(d) = &dormant {
        args.extend(["--dormant-after", d.as_str()]);
    }
    let server = support::Server::start(&args);
    let shards = shards.unwrap_or_else(|| format!("default: {}", cchat::config::default_shards_here()));
    let dormant = dormant.map_or_else(|| "5 s (default)".to_owned(), |d| format!("{d} s"));
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = server.rss_bytes();
    let connect = |range: std::ops::Range<usize>| {
        range
            .map(|i| support::connect_and_login(server.addr, &format!("u{i}"), &format!("room{}", i / 100)))
            .collect::<Vec<_>>()
    };
    let kernel0 = kernel_bytes();
    let half = n / 2;
    let mut socks = connect(0..half);
    std::thread::sleep(Duration::from_secs(9));
    let rss_half = server.rss_bytes();
    socks.extend(connect(half..n));
    // Idle past --dormant-after (5 s by default) and the 2 s it takes to
    // ask 5,000 tasks to rest: the connections rest without a task, as
    // every idle connection of a server does.
    std::thread::sleep(Duration::from_secs(9));
    let rss1 = server.rss_bytes();
    let kernel1 = kernel_bytes();
    let per = (rss1 as f64 - rss0 as f64) / n as f64;
    let slope = (rss1 as f64 - rss_half as f64) / (n - half) as f64;
    let body = format!(
        "| connections | RSS empty | RSS at {half} | RSS at {n} | (RSS at {n} - empty) / {n} | marginal: second {} connections |\n|---|---|---|---|---|---|\n| {n} (rooms of 100, shards {shards}, dormant after {dormant}) | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} B | {:.0} B |\n\nTarget: under 2 KiB per idle connection. The marginal figure leaves out\none-time growth (tables sized for the first connections).",
        n - half,
        rss0 as f64 / 1048576.0,
        rss_half as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        per,
        slope
    );
    let kernel = match (kernel0, kernel1) {
        (Some((s0, b0)), Some((s1, b1))) => format!(
            "\n\nKernel, per socket (2 × {n} sockets: both ends are here): {:.0} B of slab objects \
             (TCP, sock_inode_cache, filp, dentry, eventpoll) and {:.0} B of socket buffer pages \
             (sockstat TCP mem: mostly the presence frames the probe's clients never read, held \
             at their ends). Shrink with smaller default buffers \
             (net.ipv4.tcp_rmem / tcp_wmem middle values; the kernel grows them under load) and \
             a bound on all TCP memory (net.ipv4.tcp_mem).",
            (s1 as f64 - s0 as f64) / (2 * n) as f64,
            (b1 as f64 - b0 as f64) / (2 * n) as f64
        ),
        _ => "\n\nKernel share: /proc/slabinfo not readable (run as root to see it).".to_string(),
    };
    let body = body + &kernel;
    println!("{body}");
    let name = match (std::env::var("SHARDS").is_ok(), std::env::var("DORMANT_AFTER").is_ok()) {
        (false, false) => "idle-memory-default-shards",
        (false, true) => "idle-memory-dormant-after",
        (true, _) => "idle-memory",
    };
    support::write_result(name, "cargo bench --bench idle_memory", &body);
    drop(socks);
}

/// Bytes of the slab caches a TCP socket uses, and of TCP buffer pages
/// (None when /proc/slabinfo cannot be read: not root).
fn kernel_bytes() -> Option<(u64, u64)> {
    let slab = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let caches = ["TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq"];
    let mut slab_bytes = 0u64;
    for line in slab.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 3 && caches.contains(&f[0]) {
            let (active, size): (u64, u64) = (f[1].parse().ok()?, f[3].parse().ok()?);
            slab_bytes += active * size;
        }
    }
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let pages = sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter().position(|w| *w == "mem").and_then(|i| f.get(i + 1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some((slab_bytes, pages * 4096))
}
