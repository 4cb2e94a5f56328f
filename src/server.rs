//! Starting and stopping a node: open-file limit, shards, signals.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

/// Entries of each of a shard's io_uring rings (glommio's default: 128).
/// The kernel sizes a ring's table of pending polls by it (2^(log2(2 ×
/// depth) − 5) buckets, at most 256), and every pending read of an idle
/// connection is such a poll: with 128, a shard's thousands of idle sockets
/// sat in 8 buckets, and each cancellation glommio submits (a timer's, as
/// the executor sleeps and wakes) walked one of those chains — a quarter of
/// the server's CPU in a profile of 4,000 connections in rooms of 2
/// (bench/results/2026-12-07-ring-depth). 4,096 gives the 256 buckets.
const RING_DEPTH: usize = 4096;

use crate::config::Config;
use crate::ids::Id;
use crate::msg::ShardMsg;
use crate::node::Node;
use crate::pinning::CorePin;
use crate::placement::shard_for;
use crate::shard::Shard;
use crate::shard::life::ShardLog;
use crate::store::log::recovery::{Report, Segment};
use crate::store::{self, DataDir, Durability, RoomState};

/// File descriptors kept back from the connection cap (listeners, io_uring,
/// relay links, log files, sockets still in their HTTP phase).
const FD_RESERVE: u64 = 128;

/// Raises the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Runs a node until SIGINT or SIGTERM. Prints `listening on ADDR` on
/// stdout once every shard accepts (scripts and tests wait for that line).
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // A file-size limit (RLIMIT_FSIZE) makes a write past it fail with
    // EFBIG, handled like a full disk; by default it would kill the process.
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let nofile = raise_nofile_limit();
    let fd_cap = nofile.saturating_sub(FD_RESERVE).max(16) as usize;
    let max_connections = cfg.limits.max_connections.unwrap_or(fd_cap);
    info!(nofile, max_connections, shards = cfg.shards, "open-file limit raised to the hard limit");
    if max_connections > fd_cap {
        warn!(max_connections, fd_cap, "--max-connections is above what the open-file limit allows");
    }

    // Reserve the port (port 0 resolves here) so every shard binds the same one.
    // The data directory first: a second process on it is refused before it
    // touches anything else.
    let (_data_dir, mut logs) = open_store(&cfg)?;
    let reserve = reserve_port(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = reserve.local_addr()?.as_socket().context("listen address")?;
    let nshards = cfg.shards;
    let verifier = match (&cfg.security.token_secret, &cfg.security.token_public_key) {
        (Some(secret), _) => Some(crate::auth::Verifier::from_secret(secret)?),
        (None, Some(path)) => Some(crate::auth::Verifier::from_public_key(path)?),
        (None, None) => {
            warn!(
                "no --token-secret or --token-public-key: logins are not verified, anyone who reaches the port can log in as any uid"
            );
            None
        }
    };
    if cfg.security.admin_listen.is_none() {
        info!("no --admin-listen: /metrics is served on the client port, to anyone who reaches it");
    }
    let tls = match &cfg.security.tls {
        Some((cert, key)) => Some(crate::tls::Tls::load(cert, key)?),
        None => None,
    };
    let mut node = Node::new(cfg, max_connections);
    node.verifier = verifier;
    node.tls = tls;
    let node = Arc::new(node);
    if let Some(logs) = &logs {
        node.record_recovery(crate::node::Recovery {
            ms: logs.report.elapsed.as_millis() as u64,
            records: logs.report.records,
            dropped_bytes: logs.report.dropped_bytes,
            max_epoch: logs.max_epoch,
            new_epochs: logs.new_epochs,
        });
    }
    let mesh = MeshBuilder::<ShardMsg, _>::full(nshards, node.cfg.tuning.shard_queue);
    let cpus = allowed_cpus();
    if node.cfg.tuning.pin && node.cfg.tuning.unpin_above > 0.0 && !CorePin::supported() {
        warn!(
            "this kernel does not report run-queue waits (/proc/thread-self/schedstat): shards stay pinned even when their cores are busy"
        );
    }
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<anyhow::Result<()>>(nshards);

    let mut handles = Vec::new();
    for i in 0..nshards {
        let node = node.clone();
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let core = node.cfg.tuning.pin.then(|| cpus[i % cpus.len()]);
        let place = core.map_or(Placement::Unbound, Placement::Fixed);
        let cpus = cpus.clone();
        let log = logs.as_mut().map(|l| l.take_shard(i));
        let h = LocalExecutorBuilder::new(place)
            .name(&format!("shard-{i}"))
            .io_memory(1 << 20)
            .ring_depth(RING_DEPTH)
            .spin_before_park(node.cfg.tuning.busy_poll)
            .spawn(move || async move {
                // Runs on the shard's thread: the pin it manages is its own.
                let pin = core.and_then(|c| CorePin::new(c, cpus, node.cfg.tuning.unpin_above));
                node.stats.shards[i].pinned.store(core.is_some() as i64, Relaxed);
                crate::shard::life::run(i, node, mesh, addr, ready, pin, log, admin_tasks).await
            })
            .map_err(|e| anyhow::anyhow!("cannot start shard {i}: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..nshards {
        ready_rx.recv().context("a shard died while starting")??;
    }
    drop(reserve);
    // Signals are caught before anyone learns the address: a SIGTERM sent
    // as soon as "listening on" is read must close clients with 1001, not
    // kill the process by the default action.
    let sig_node = node.clone();
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig == SIGHUP {
                // A renewed certificate, without a restart (new connections use it).
                match sig_node.tls.as_ref().map(crate::tls::Tls::reload) {
                    Some(Ok(())) => info!("SIGHUP: TLS certificate and key reloaded"),
                    Some(Err(e)) => error!(error = %format!("{e:#}"), "SIGHUP: cannot reload the TLS certificate; the old one stays"),
                    None => info!("SIGHUP: nothing to reload (no --tls-cert)"),
                }
                continue;
            }
            stops += 1;
            if stops > 1 {
                warn!(sig, "second signal: exiting now");
                std::process::exit(130);
            }
            info!(sig, "shutting down");
            sig_node.shutdown.store(true, Relaxed);
        }
    })?;
    println!("listening on {addr}");
    // Where a person opens the chat page (an unspecified address is
    // reachable on this machine as loopback).
    let browse = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    // Whoever started the server may have stopped reading its output after
    // the first line: a closed pipe is not a reason to stop serving.
    use std::io::Write as _;
    let scheme = if node.cfg.security.tls.is_some() { "https" } else { "http" };
    let _ = writeln!(std::io::stdout(), "open {scheme}://{browse}/ in a browser to chat");
    info!(%addr, "listening");
    let _ = std::io::stdout().flush();

    // Every shard is waited for, even after one failed: the others may
    // still be closing their clients.
    let mut failed = None;
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            tracing::error!(shard = i, error = %e, "shard failed");
            failed.get_or_insert_with(|| anyhow::anyhow!("shard {i} failed: {e}"));
            node.shutdown.store(true, Relaxed);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    info!("stopped");
    Ok(())
}

/// The CPUs this process may run on (containers often allow a subset).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect();
    if cpus.is_empty() { vec![0] } else { cpus }
}

/// Whether a socket in LISTEN state holds `addr`'s port on an overlapping
/// address (from /proc/net/tcp and tcp6; false if they cannot be read).
fn port_has_listener(addr: SocketAddr) -> bool {
    let want_port = format!("{:04X}", addr.port());
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|path| {
        let Ok(text) = std::fs::read_to_string(path) else { return false };
        text.lines().skip(1).any(|line| {
            let mut f = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (f.nth(1), f.next(), f.next()) else { return false };
            let Some((ip, port)) = local.split_once(':') else { return false };
            // State 0A is LISTEN. An all-zero address overlaps every address.
            state == "0A"
                && port == want_port
                && (addr.ip().is_unspecified() || ip.chars().all(|c| c == '0') || hex_ip_matches(ip, addr.ip()))
        })
    })
}

/// /proc/net/tcp writes IPv4 addresses as one little-endian 32-bit hex word.
fn hex_ip_matches(hex: &str, ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => u32::from_str_radix(hex, 16).is_ok_and(|n| n.to_le_bytes() == v4.octets()),
        // IPv6 listeners: treat any same-port listener as a conflict.
        std::net::IpAddr::V6(_) => hex.len() == 32,
    }
}

/// How long a start waits for listeners on its port to go away (a process
/// killed a moment ago keeps them while the kernel tears down its io_uring).
const PORT_WAIT: Duration = Duration::from_secs(3);

fn reserve_port(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    // Shards share the port with SO_REUSEPORT, which would also let a second
    // cchat process (same user) listen on it and silently take half the
    // connections. Refuse to start if anything still listens there once a
    // killed predecessor has had time to go.
    let deadline = Instant::now() + PORT_WAIT;
    while addr.port() != 0 && port_has_listener(addr) {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{addr} is already in use (is another cchat running?)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// The recovered log, being handed out to the shards.
#[derive(Debug)]
struct Logs {
    rooms: Vec<Vec<(Id, RoomState)>>,
    segments: std::collections::HashMap<usize, Vec<Segment>>,
    new_epoch: bool,
    report: Report,
    max_epoch: u64,
    new_epochs: u64,
}

impl Logs {
    fn take_shard(&mut self, i: usize) -> ShardLog {
        ShardLog {
            rooms: std::mem::take(&mut self.rooms[i]),
            segments: self.segments.remove(&i).unwrap_or_default(),
            new_epoch: self.new_epoch,
        }
    }
}

/// The admin side of a started shard, on shard 0: the admin listener, and
/// in a cluster the server API's answers to other nodes' questions.
fn admin_tasks(shard: &Rc<Shard>) -> anyhow::Result<Vec<glommio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if shard.id != 0 {
        return Ok(tasks);
    }
    let cfg = &shard.node.cfg;
    if cfg.cluster.relay_listen.is_some() || !cfg.cluster.peers.is_empty() {
        tasks.push(glommio::spawn_local(crate::admin::answer_peers(shard.clone())).detach());
    }
    if let Some(a) = cfg.security.admin_listen {
        let l = glommio::net::TcpListener::bind(a).map_err(|e| anyhow::anyhow!("admin listener on {a}: {e}"))?;
        info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listener: /metrics, /healthz, the server API");
        tasks.push(glommio::spawn_local(crate::admin::serve(shard.clone(), l)).detach());
    }
    Ok(tasks)
}

/// Locks the data directory and reads the log back (nothing with
/// `--durability memory`). Each room goes to the shard that owns it now.
fn open_store(cfg: &Config) -> anyhow::Result<(Option<DataDir>, Option<Logs>)> {
    if let Some(url) = &cfg.storage.store {
        // Shown without a password.
        let shown = match (url.find("://"), url.rfind('@')) {
            (Some(a), Some(b)) if b > a => format!("{}***{}", &url[..a + 3], &url[b..]),
            _ => url.clone(),
        };
        info!(store = %shown, "history and room sequence live in the shared store (no embedded log)");
        return Ok((None, None));
    }
    if cfg.storage.durability == Durability::Memory {
        info!("--durability memory: history is not kept across restarts");
        return Ok((None, None));
    }
    let (dir, rec) = store::open(&cfg.storage.data_dir, cfg.storage.durability, cfg.storage.history)?;
    let clustered = cfg.cluster.relay_listen.is_some() || !cfg.cluster.peers.is_empty();
    // Where the node cannot prove it has every message it broadcast, rooms
    // start a new epoch: the OS may have lost a written-mode tail in a
    // reboot, and a clustered node's rooms may have lived elsewhere meanwhile.
    let new_epoch = dir.rebooted_unsynced || clustered;
    let report = rec.report.clone();
    for (path, at, why) in &report.cuts {
        warn!(file = %path.display(), at, why, "torn log tail (a write the last run did not finish) cut off at the last whole record");
    }
    for (path, at, len, why) in &report.skips {
        error!(file = %path.display(), at, len, why, "damaged log records skipped (the file is left as it is); rooms whose newest record came before start a new epoch");
    }
    for (dir, which) in &report.missing {
        error!(dir = %dir.display(), segments = %which, "log segments missing; rooms whose newest record came before start a new epoch");
    }
    for path in &report.completed {
        info!(file = %path.display(), "newest log segment was empty (a roll cut short): header completed, nothing lost");
    }
    if dir.rebooted_unsynced {
        warn!(
            "the machine rebooted since the last run, whose log was not fsynced at every message: rooms start a new epoch"
        );
    }
    let mut rooms: Vec<Vec<(Id, RoomState)>> = (0..cfg.shards).map(|_| Vec::new()).collect();
    let (mut max_epoch, mut new_epochs, mut rehomed) = (0, 0, 0);
    for (rid, st) in rec.rooms {
        max_epoch = max_epoch.max(st.epoch);
        if new_epoch || st.damaged {
            new_epochs += 1;
        }
        let owner = shard_for(&rid, cfg.shards);
        if st.dirs & !(1u64 << owner.min(63)) != 0 {
            rehomed += 1;
        }
        rooms[owner].push((rid, st));
    }
    if rehomed > 0 {
        info!(
            rooms = rehomed,
            shards = cfg.shards,
            "rooms with history in other shard directories (the shard count changed): merged, each served whole by its owner shard now"
        );
    }
    info!(
        dir = %cfg.storage.data_dir.display(),
        records = report.records,
        indexed_segments = report.indexed_segments,
        bytes = report.bytes,
        dropped_bytes = report.dropped_bytes,
        rooms = rooms.iter().map(Vec::len).sum::<usize>(),
        new_epochs,
        ms = report.elapsed.as_millis() as u64,
        "message log recovered"
    );
    Ok((Some(dir), Some(Logs { rooms, segments: rec.segments, new_epoch, report, max_epoch, new_epochs })))
}
