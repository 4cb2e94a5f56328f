//! Core pinning with real processes: a shard starts pinned to its core, and
//! is released when another process's thread keeps that core busy (unless
//! `--unpin-above 0`); `--no-pin` never pins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::Server;

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

/// Keeps the shard busy enough to want its core: clients that pipeline
/// requests (a shard that only wakes for one request at a time may be let
/// in ahead of the spinning threads by some schedulers, and never wait).
fn chatter(server: &Server, rounds: usize) {
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            let mut c = server.client();
            c.login(&format!("pin{i}"), "r1", None);
            c
        })
        .collect();
    for _ in 0..rounds.div_ceil(100) {
        for c in &mut clients {
            for _ in 0..100 {
                c.send(serde_json::json!({"cmd": "getOnline", "rid": "r1"}));
            }
        }
        for c in &mut clients {
            let mut got = 0;
            while got < 100 {
                if c.recv()["cmd"] == "getOnline" {
                    got += 1;
                }
            }
        }
    }
}

/// Whether this kernel reports run-queue waits (without them the server
/// never releases a pin, and says so in its log).
fn schedstat() -> bool {
    std::fs::read_to_string("/proc/thread-self/schedstat").is_ok()
}

#[test]
fn a_shard_leaves_a_core_another_process_keeps_busy() {
    let cpus = allowed_cpus();
    // Nowhere to go, or no way to see the wait: the shard must stay pinned.
    let can_release = cpus.len() >= 2 && schedstat();
    let strict = Server::start(&["--shards", "1", "--rate-limit", "0", "--unpin-above", "0"]);
    let releasing = Server::start(&["--shards", "1", "--rate-limit", "0"]);
    let core = shard0_cpus(releasing.child.id());
    assert_eq!(core.len(), 1, "shard 0 starts pinned to one core: {core:?}");
    assert_eq!(shard0_cpus(strict.child.id()), core, "both servers pin shard 0 to the same core");
    assert_eq!(releasing.metric("cchat_shard_pinned"), 1.0);

    let hog = Hog::on(core[0]);
    let deadline = Instant::now() + Duration::from_secs(if can_release { 20 } else { 4 });
    while releasing.metric("cchat_shard_core_releases_total") < 1.0 && Instant::now() < deadline {
        chatter(&releasing, 400);
        chatter(&strict, 400);
    }
    drop(hog);

    if !can_release {
        assert_eq!(releasing.metric("cchat_shard_pinned"), 1.0);
        assert_eq!(releasing.metric("cchat_shard_core_releases_total"), 0.0);
        return;
    }
    assert_eq!(
        releasing.metric("cchat_shard_core_releases_total"),
        1.0,
        "shard 0 was not released from a core busy with other threads within 20 s"
    );
    assert_eq!(releasing.metric("cchat_shard_pinned"), 0.0);
    assert_eq!(shard0_cpus(releasing.child.id()), cpus, "a released shard may run on every allowed CPU");
    // The same contention did not move the strictly pinned server.
    assert_eq!(strict.metric("cchat_shard_pinned"), 1.0);
    assert_eq!(strict.metric("cchat_shard_core_releases_total"), 0.0);
    assert_eq!(shard0_cpus(strict.child.id()), core);
    // Both still serve.
    chatter(&releasing, 100);
    chatter(&strict, 100);
}

#[test]
fn no_pin_never_pins() {
    let s = Server::start(&["--shards", "1", "--no-pin"]);
    assert_eq!(s.metric("cchat_shard_pinned"), 0.0);
    assert_eq!(shard0_cpus(s.child.id()), allowed_cpus());
}
