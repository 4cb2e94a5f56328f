//! A shard's life: its start (the mesh joined, its listener bound, its log
//! opened, its tasks spawned: the relay and admin listener on shard 0) and,
//! once the node shuts down, its stop (clients closed, the log and the
//! store flushed). [`run`] is what each executor thread runs.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::task::JoinHandle;
use glommio::timer::Timer;
use tracing::warn;

use super::directory::{self, Directory};
use super::flush::Flusher;
use super::history::Reader;
use super::mesh::Mesh;
use super::redis::RedisLink;
use super::{Shard, TICK, admission, cluster, log, reads};
use crate::ids::Id;
use crate::msg::ShardMsg;
use crate::node::Node;
use crate::pinning::CorePin;
use crate::store::log::recovery::Segment;
use crate::store::log::writer::{Log, LogConfig};
use crate::store::{self, Durability, RoomState};
use crate::throttle::Throttle;

/// What one shard takes over from the log at start.
#[derive(Debug)]
pub(crate) struct ShardLog {
    pub(crate) rooms: Vec<(Id, RoomState)>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) new_epoch: bool,
}

/// A started shard: what its life holds until it stops.
struct Started {
    shard: Rc<Shard>,
    listener: TcpListener,
    log: Option<Rc<Log>>,
    /// Every task of the shard; dropped (cancelled) at the very end.
    tasks: Vec<JoinHandle<()>>,
}

/// What the node adds to a started shard (the admin listener, the server
/// API's answers to other nodes): the tasks it spawned.
pub(crate) type Extras = fn(&Rc<Shard>) -> anyhow::Result<Vec<JoinHandle<()>>>;

/// Runs shard `id` to the end: says on `ready` whether it started, then
/// serves until the node shuts down.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    id: usize,
    node: Arc<Node>,
    mesh: MeshBuilder<ShardMsg, Full>,
    addr: SocketAddr,
    ready: crossbeam_channel::Sender<anyhow::Result<()>>,
    pin: Option<CorePin>,
    log: Option<ShardLog>,
    extras: Extras,
) {
    let started = match start(id, &node, mesh, addr, pin, log).await {
        Ok(mut s) => extras(&s.shard).map(|tasks| {
            s.tasks.extend(tasks);
            s
        }),
        Err(e) => Err(e),
    };
    match started {
        Ok(started) => {
            let _ = ready.send(Ok(()));
            serve(&node, started).await;
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

async fn start(
    id: usize,
    node: &Arc<Node>,
    mesh: MeshBuilder<ShardMsg, Full>,
    addr: SocketAddr,
    pin: Option<CorePin>,
    log: Option<ShardLog>,
) -> anyhow::Result<Started> {
    let (senders, receivers) = if node.cfg.shards > 1 {
        let (s, r) = mesh.join().await.map_err(|_| anyhow::anyhow!("shard {id}: mesh join failed"))?;
        (Some(s), Some(r))
    } else {
        (None, None)
    };
    let listener = TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("shard {id}: bind {addr}: {e}"))?;
    let shard = Rc::new(Shard::new(id, node.clone(), senders));
    shard.sweeper.set_pin(pin);
    let log = match log {
        None => None,
        Some(init) => {
            shard.restore(init.rooms, init.new_epoch);
            reads::load(&shard);
            let storage = &node.cfg.storage;
            let cfg = LogConfig {
                data: storage.data_dir.clone(),
                shard: id,
                segment_bytes: storage.segment_bytes,
                retention_bytes: storage.retention_bytes,
                retention_ms: storage.retention.as_millis() as u64,
            };
            let log = Log::open(cfg, init.segments)
                .await
                .map_err(|e| anyhow::anyhow!("shard {id}: cannot open its message log: {e}"))?;
            Some(Rc::new(log))
        }
    };

    let mut tasks = Vec::new();
    if let Some(mut receivers) = receivers {
        for (_, rx) in receivers.streams() {
            tasks.push(glommio::spawn_local(Mesh::run_receiver(shard.clone(), rx)).detach());
        }
        for dst in (0..node.cfg.shards).filter(|d| *d != id) {
            tasks.push(glommio::spawn_local(Mesh::run_pump(shard.clone(), dst)).detach());
        }
    }
    tasks.push(glommio::spawn_local(Flusher::run(shard.clone())).detach());
    tasks.push(glommio::spawn_local(super::dormant::Dormancy::run(shard.clone())).detach());
    tasks.push(glommio::spawn_local(Directory::run(shard.clone())).detach());
    if let Some(url) = &node.cfg.storage.store {
        let storage = &node.cfg.storage;
        let cfg = store::redis::StoreConfig {
            url: url.clone(),
            history: storage.history,
            ttl_ms: storage.store_ttl.as_millis() as u64,
            ca: storage.store_ca.clone(),
            cluster: storage.store_cluster,
        };
        let (link, events) = store::redis::RedisStore::spawn(cfg, id, node.stats.store.clone())
            .map_err(|e| anyhow::anyhow!("shard {id}: {e}"))?;
        shard.redis.enable(&shard, link);
        tasks.push(glommio::spawn_local(RedisLink::run(shard.clone(), events)).detach());
    }
    if let Some(log) = &log {
        tasks.push(glommio::spawn_local(reads::run_writer(shard.clone())).detach());
        tasks.push(glommio::spawn_local(log::run_writer(shard.clone(), log.clone())).detach());
        tasks.push(glommio::spawn_local(Reader::run(shard.clone())).detach());
        if node.cfg.storage.durability == Durability::Written {
            tasks.push(glommio::spawn_local(log::run_syncer(shard.clone(), log.clone())).detach());
        }
    }
    let clustered = node.clustered();
    if id == 0 && clustered {
        // The relay hands what it receives to this shard, which routes it.
        let weak = Rc::downgrade(&shard);
        let sink: crate::relay::Sink = Rc::new(move |ev| {
            if let Some(shard) = weak.upgrade() {
                cluster::on_relay_event(&shard, ev);
            }
        });
        let (relay, relay_tasks) = crate::relay::start(node.clone(), sink)?;
        shard.set_relay(relay.clone());
        // Join the mesh before saying "listening" (a second at most).
        relay.first_round().await;
        tasks.extend(relay_tasks);
        tasks.push(glommio::spawn_local(directory::run_remote(shard.clone())).detach());
    }
    Ok(Started { shard, listener, log, tasks })
}

/// How long a draining node gives the others to take its rooms over
/// before it tells its clients to leave.
const HAND_OFF: Duration = Duration::from_millis(300);

/// Accept failures are logged at most once a second (a full descriptor
/// table fails every accept).
static ACCEPT_LOG: Throttle = Throttle::new();

/// Serves until the node shuts down, then stops: every client gets a close
/// frame, and the log and the store are flushed.
async fn serve(node: &Node, started: Started) {
    let Started { shard, listener, log, tasks } = started;
    let acceptor = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        let fut = super::conn::serve(shard.clone(), stream);
                        glommio::spawn_local(fut).detach();
                    }
                    Err(e) => {
                        // Out of descriptors or a transient error: keep
                        // serving the connections there are, free a
                        // descriptor held by a socket that never logged in,
                        // and back off before the next try.
                        let e = std::io::Error::from(e);
                        shard.node.stats.shards[shard.id].accept_errors.fetch_add(1, Relaxed);
                        let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                        let shed = out_of_fds && admission::shed_one_unauthenticated(&shard);
                        if let Some(held) = ACCEPT_LOG.due() {
                            warn!(shard = shard.id, error = %e, shed, suppressed = held, "accept failed");
                        }
                        Timer::new(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };

    // Sweeper: idle checks, pings, and the shutdown flag.
    while !node.shutdown.load(Relaxed) {
        Timer::new(TICK).await;
        shard.sweeper.sweep(&shard);
    }
    drop(acceptor);
    // Draining: in a cluster, the rooms go to the other nodes first (shard
    // 0 tells them; every shard hands its rooms over and its members join
    // the new owners), so that no message waits for a failover; then the
    // clients are told to reconnect.
    //
    // First every shard stops sequencing (its rooms' requests wait) until
    // its store has all it sequenced: the new owners' claims then find
    // every message, and none is numbered twice. Then shard 0 tells the
    // peers (LEAVING); what waited goes to the new owners after it, on the
    // same links, so they take it as owners.
    let clustered = node.clustered();
    if clustered {
        shard.start_hand_off();
        if node.cfg.storage.store.is_some() {
            shard.redis.flush(&shard).await;
        }
        node.stored_for_hand_off.fetch_add(1, Relaxed);
    }
    if shard.id == 0 {
        let t0 = Instant::now();
        while clustered && node.stored_for_hand_off.load(Relaxed) < shard.nshards && t0.elapsed() < HAND_OFF * 10 {
            Timer::new(Duration::from_millis(2)).await;
        }
        if shard.leave_cluster() {
            Timer::new(HAND_OFF).await;
        }
        node.handed_off.store(true, Relaxed);
    } else {
        let t0 = Instant::now();
        while !node.handed_off.load(Relaxed) && t0.elapsed() < HAND_OFF * 14 {
            Timer::new(Duration::from_millis(10)).await;
        }
    }
    // (A view change released them already, when there was one.)
    shard.end_hand_off();
    shard.close_all();
    // Drain: the clients were told to come back later (1012); they leave
    // at once, or the drain timeout ends it.
    node.stats.draining.store(1, Relaxed);
    let deadline = Instant::now() + node.cfg.limits.drain_timeout.max(node.cfg.limits.shutdown_grace);
    while shard.conn_count() > 0 && Instant::now() < deadline {
        Timer::new(Duration::from_millis(20)).await;
    }
    if let Some(log) = &log {
        log::flush(&shard, log).await;
    }
    if node.cfg.storage.store.is_some() {
        shard.redis.flush(&shard).await;
    }
    for t in tasks {
        t.cancel();
    }
    if log.is_some() {
        reads::write(&shard).await;
    }
}
