//! Broadcast path: one sender, a room of 1,000 members spread over the
//! server's shards; server CPU time per delivery.
//!
//! `cargo bench --bench broadcast` (writes bench/results/DATE-broadcast/).
//! Receivers are raw sockets read by one thread with poll(2), so the client
//! costs little next to the server it measures.

#[path = "support.rs"]
mod support;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const MEMBERS: usize = 1000;
/// Messages sent (override with MESSAGES=N, e.g. to profile a longer run).
fn messages() -> usize {
    std::env::var("MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

fn main() {
    let shards = std::env::var("SHARDS").unwrap_or_else(|_| "2".into());
    let server = support::Server::start(&[
        "--shards",
        &shards,
        "--rate-limit",
        "0",
        "--max-outbound-bytes",
        "16777216",
        // The raw receivers never answer pings.
        "--ping-interval",
        "300",
        "--idle-timeout",
        "600",
    ]);
    let mut socks: Vec<_> =
        (0..MEMBERS).map(|i| support::connect_and_login(server.addr, &format!("u{i}"), "bcast")).collect();
    let mut sender = socks.remove(0);
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let messages = messages();
    let expected = (MEMBERS - 1) * messages;
    let reader = std::thread::spawn(move || {
        let mut fds: Vec<libc_pollfd> =
            socks.iter().map(|s| libc_pollfd { fd: s.as_raw_fd(), events: 1, revents: 0 }).collect();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let mut pending: Vec<Vec<u8>> = vec![Vec::new(); socks.len()];
        let deadline = Instant::now() + Duration::from_secs(120);
        while got < expected && Instant::now() < deadline {
            unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, 100) };
            for (i, p) in fds.iter_mut().enumerate() {
                if p.revents != 0 {
                    while let Ok(n) = (&socks[i]).read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Count whole message frames (a frame may span reads).
                        let p = &mut pending[i];
                        p.extend_from_slice(&buf[..n]);
                        let mut off = 0;
                        while let Some((_, r, used)) = cchat::ws::parse_server_frame(&p[off..]).unwrap() {
                            if p[off..][r].starts_with(br#"{"cmd":"message""#) {
                                got += 1;
                            }
                            off += used;
                        }
                        p.drain(..off);
                    }
                }
            }
        }
        got
    });
    // Let the newUser announcements settle before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = server.cpu_seconds();
    let t0 = Instant::now();
    for i in 0..messages {
        support::send_text(
            &mut sender,
            &format!(r#"{{"cmd":"message","type":"text","msg":"m{i:060}","rid":"bcast"}}"#),
        );
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = reader.join().unwrap();
    let wall = t0.elapsed();
    let cpu = server.cpu_seconds() - cpu0;
    assert_eq!(got, expected, "lost deliveries");
    let ns_per = cpu * 1e9 / got as f64;
    let body = format!(
        "| members | messages | deliveries | wall | server CPU | server CPU per delivery | deliveries/s |\n|---|---|---|---|---|---|---|\n| {MEMBERS} (shards: {shards}) | {messages} | {got} | {:.2} s | {:.3} s | {:.0} ns | {:.0} |\n\nServer CPU is utime+stime from /proc/PID/stat, 10 ms resolution; the\nclient runs on the same 2 cores.",
        wall.as_secs_f64(),
        cpu,
        ns_per,
        got as f64 / wall.as_secs_f64()
    );
    println!("{body}");
    support::write_result("broadcast", "cargo bench --bench broadcast", &body);
}

#[repr(C)]
struct libc_pollfd {
    fd: i32,
    events: i16,
    revents: i16,
}

unsafe extern "C" {
    fn poll(fds: *mut libc_pollfd, n: u64, timeout: i32) -> i32;
}
