//! Core pinning with real processes: a shard starts pinned to its core, and
//! is released when another process's thread keeps that core busy (unless
//! `--unpin-above 0`); `--no-pin` never pins.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;

/// The CPUs the thread `shard-0…` of process `pid` may run on.
fn shard0_cpus(pid: u32) -> Vec<usize> {
    let dir = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(&dir).expect("task dir").flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("shard-0") {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).expect("status");
        let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list");
        return parse_cpu_list(list.trim());
    }
    panic!("no shard-0 thread in {dir}");
}

fn parse_cpu_list(s: &str) -> Vec<usize> {
    s.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

/// This process's allowed CPUs (the servers inherit them).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    parse_cpu_list(status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim())
}

/// Two threads spinning on `cpu` until dropped (or 30 s, whichever first):
/// a shard pinned there gets at most about a third of it.
struct Hog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn on(cpu: usize) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // SAFETY: cpu_set_t is plain data; pins only this thread.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    }
                    let end = Instant::now() + Duration::from_secs(30);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Hog { stop, threads }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Keeps the shard busy enough to want its core: a client that logs in and
/// chats (the shard must run to answer), so it is runnable while the hog spins.
fn chatter(server: &Server, rounds: usize) {
    let mut c = server.client();
    c.login("pin", "r1", None);
    for i in 0..rounds {
        c.send(serde_json::json!({"cmd": "getOnline", "rid": "r1"}));
        c.expect("getOnline");
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_shard_leaves_a_core_another_process_keeps_busy() {
    let cpus = allowed_cpus();
    let releasing = Server::start(&["--shards", "1"]);
    let strict = Server::start(&["--shards", "1", "--unpin-above", "0"]);
    let core = shard0_cpus(releasing.child.id());
    assert_eq!(core.len(), 1, "shard 0 starts pinned to one core: {core:?}");
    assert_eq!(shard0_cpus(strict.child.id()), core, "both servers pin shard 0 to the same core");
    assert_eq!(releasing.metric("cchat_shard_pinned"), 1.0);
    assert_eq!(releasing.metric("cchat_shard_core_releases_total"), 0.0);

    let hog = Hog::on(core[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while releasing.metric("cchat_shard_core_releases_total") < 1.0 {
        if cpus.len() < 2 {
            break; // nowhere to go: checked below
        }
        assert!(Instant::now() < deadline, "shard 0 was not released from a core busy with other threads");
        chatter(&releasing, 200);
        chatter(&strict, 200);
    }
    drop(hog);

    if cpus.len() < 2 {
        // One CPU: releasing would change nothing, so the shard stays pinned.
        assert_eq!(releasing.metric("cchat_shard_pinned"), 1.0);
        return;
    }
    assert_eq!(releasing.metric("cchat_shard_pinned"), 0.0);
    assert_eq!(shard0_cpus(releasing.child.id()), cpus, "a released shard may run on every allowed CPU");
    // The same contention did not move the strictly pinned server.
    assert_eq!(strict.metric("cchat_shard_pinned"), 1.0);
    assert_eq!(strict.metric("cchat_shard_core_releases_total"), 0.0);
    assert_eq!(shard0_cpus(strict.child.id()), core);
    // Both still serve.
    chatter(&releasing, 10);
    chatter(&strict, 10);
}

#[test]
fn no_pin_never_pins() {
    let s = Server::start(&["--shards", "1", "--no-pin"]);
    assert_eq!(s.metric("cchat_shard_pinned"), 0.0);
    assert_eq!(shard0_cpus(s.child.id()), allowed_cpus());
}
