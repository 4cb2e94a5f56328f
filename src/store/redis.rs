//! The shared store (`--store redis://…`): room history and sequence in
//! Redis (or Valkey, KeyDB, Redis Cluster), so that a room re-homed to
//! another node, or a restarted one, carries on with the same epoch and the
//! next seq, its history whole.
//!
//! ```text
//! cchat:{RID}:m   hash: epoch, top (the newest stored seq), owner (a claim token)
//! cchat:{RID}:h   list: the newest --history messages, as members received them
//! ```
//!
//! Both keys of a room share a hash tag, so every script touches one slot:
//! with `--store-cluster` the store is a Redis Cluster, each room's scripts
//! go to the node that holds its slot (redis-rs's cluster client follows
//! the cluster's slot map and its redirections). Three scripts (lua/): a new owner *claims* a room (reads
//! epoch and top, writes its token: the previous owner's appends are refused
//! from then on: fencing); the owner *appends* (only with its token, only
//! the next seq of its epoch: the list and the top move together); anyone
//! *reads* a history window. Keys expire `--retention` after their last
//! append, so clients cannot grow the store without bound.
//!
//! Each shard has a [`RedisStore`]: a thread of its own with one
//! connection, so the shard's executor never waits on the network. The
//! thread takes every job queued since its last round trip and sends them
//! as one pipeline (the shard keeps one batch of appends in flight, so a
//! shard makes at most one round trip at a time); replies go back to the
//! shard as [`Event`]s. When Redis is down every job fails at once
//! ([`Refusal::Unavailable`]), and the thread reconnects with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use redis::Value;
use tracing::{info, warn};

use crate::ids::Id;
pub use crate::metrics::StoreStats;

/// Messages per append script (Lua's argument stack is bounded).
const CHUNK: usize = 512;
/// Jobs per round trip.
const MAX_JOBS: usize = 4096;
/// How long one round trip may take before the connection is given up.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed round is tried again before its jobs fail.
const RETRY_FOR: Duration = Duration::from_secs(2);
/// Errors after which the connection is made again: scripts flushed, or
/// this server is not (or not yet) the primary.
const RECONNECT_ON: [&str; 5] = ["NOSCRIPT", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN"];

/// What a shard asks of the store.
#[derive(Debug)]
pub enum Job {
    /// Become the room's owner: its epoch and top seq come back. `fresh`
    /// starts `epoch` at seq 0 whatever the store holds (it lost data).
    Claim {
        /// The room.
        rid: Id,
        /// The claim's token, which its appends carry.
        token: u64,
        /// The epoch a room the store does not have starts.
        epoch: u64,
        /// Start `epoch` even if the store has the room.
        fresh: bool,
    },
    /// Store these messages; `end` is the journal position they reach.
    Append {
        /// The messages, in the order they were sequenced.
        records: Vec<Rec>,
        /// The journal position (see [`super::Journal::end`]).
        end: u64,
    },
    /// Read a history window.
    Read {
        /// Names the reply.
        ticket: u64,
        /// The room.
        rid: Id,
        /// Paging forward: after this seq.
        since: Option<u64>,
        /// Scrolling back: before this seq.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
}

/// One message to store.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Its room.
    pub rid: Id,
    /// The token of the claim it was sequenced under.
    pub token: u64,
    /// Its epoch and seq.
    pub epoch: u64,
    /// Its seq.
    pub seq: u64,
    /// The message, as members receive it.
    pub msg: Bytes,
}

/// Why the store did not take a room's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The store does not have the room (flushed, failed over, expired).
    Lost,
    /// Another owner claimed the room since.
    Fenced,
    /// The epoch or seq does not follow what the store holds (it lost its tail).
    Gap,
    /// Redis could not be reached or did not answer.
    Unavailable,
}

/// Messages of one room that were not stored: seqs `first..=last`.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The room.
    pub rid: Id,
    /// The claim they were sequenced under.
    pub token: u64,
    /// The first seq refused.
    pub first: u64,
    /// The last.
    pub last: u64,
    /// Why.
    pub why: Refusal,
}

/// What the store answers.
#[derive(Debug)]
pub enum Event {
    /// A claim: `Some((epoch, top))`, or None when Redis was unavailable.
    Claimed {
        /// The room.
        rid: Id,
        /// The claim's token.
        token: u64,
        /// The room's epoch and top seq.
        state: Option<(u64, u64)>,
    },
    /// An append batch: everything up to `end` is stored except `refused`.
    Appended {
        /// The journal position the batch reached.
        end: u64,
        /// What was not stored.
        refused: Vec<Refused>,
    },
    /// A history window: `Some((epoch, messages))` (epoch 0: no such room),
    /// or None when Redis was unavailable.
    Read {
        /// The request's ticket.
        ticket: u64,
        /// The answer.
        answer: Option<(u64, Vec<Bytes>)>,
    },
}

/// Where the store is and how it keeps rooms.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `redis://host:port[/db]` or `rediss://…`.
    pub url: String,
    /// Messages kept per room.
    pub history: usize,
    /// A room's keys expire this long after its last append (ms).
    pub ttl_ms: u64,
    /// For `rediss://`: the CA (PEM) to trust instead of the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// The URL names a node of a Redis Cluster.
    pub cluster: bool,
}

/// A shard's handle on its store thread.
#[derive(Debug, Clone)]
pub struct RedisStore {
    tx: crossbeam_channel::Sender<Job>,
}

impl RedisStore {
    /// Starts the thread for shard `shard`; its answers arrive on the receiver.
    pub fn spawn(
        cfg: StoreConfig,
        shard: usize,
        stats: Arc<StoreStats>,
    ) -> std::io::Result<(RedisStore, UnboundedReceiver<Event>)> {
        let invalid =
            |e: redis::RedisError| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--store: {e}"));
        let certs = match &cfg.ca {
            Some(ca) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(
                    std::fs::read(ca)
                        .map_err(|e| std::io::Error::new(e.kind(), format!("--store-ca {}: {e}", ca.display())))?,
                ),
            }),
            None => None,
        };
        let client = if cfg.cluster {
            let mut b = redis::cluster::ClusterClient::builder([cfg.url.as_str()])
                .connection_timeout(IO_TIMEOUT)
                .response_timeout(IO_TIMEOUT);
            if let Some(c) = certs {
                b = b.certs(c);
            }
            Client::Cluster(b.build().map_err(invalid)?)
        } else {
            Client::One(match certs {
                Some(c) => redis::Client::build_with_tls(cfg.url.as_str(), c).map_err(invalid)?,
                None => redis::Client::open(cfg.url.as_str()).map_err(invalid)?,
            })
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let (etx, erx) = unbounded();
        std::thread::Builder::new()
            .name(format!("cchat-store-{shard}"))
            .spawn(move || Worker::new(cfg, shard, client, stats, etx).run(rx))?;
        Ok((RedisStore { tx }, erx))
    }

    /// Queues a job (its answer comes as an [`Event`]).
    pub fn send(&self, job: Job) {
        let _ = self.tx.send(job);
    }
}

/// The keys of a room.
pub fn keys(rid: &str) -> (String, String) {
    (format!("cchat:{{{rid}}}:m"), format!("cchat:{{{rid}}}:h"))
}

struct Scripts {
    claim: redis::Script,
    append: redis::Script,
    history: redis::Script,
}

const CLAIM_LUA: &str = include_str!("lua/claim.lua");
const APPEND_LUA: &str = include_str!("lua/append.lua");
const HISTORY_LUA: &str = include_str!("lua/history.lua");

/// A client for one Redis server or for a Redis Cluster.
enum Client {
    One(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to either.
enum Conn {
    One(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    /// Sends the commands as one pipeline (per cluster node: one each).
    fn run(&mut self, cmds: Vec<redis::Cmd>) -> redis::RedisResult<Vec<Value>> {
        match self {
            Conn::One(c) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(c)
            }
            Conn::Cluster(c) => {
                // (No per-command errors here: a server error fails the
                // whole round, handled as an outage.)
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(c)
            }
        }
    }
}

/// What one call of a pipeline answers for.
enum Call {
    Claim { rid: Id, token: u64 },
    Append { refused: Refused, n: u64 },
    Read { ticket: u64 },
}

struct Worker {
    cfg: StoreConfig,
    shard: usize,
    client: Client,
    stats: Arc<StoreStats>,
    events: UnboundedSender<Event>,
    conn: Option<Conn>,
    scripts: Scripts,
    retry_at: Instant,
    backoff: Duration,
}

impl Worker {
    fn new(
        cfg: StoreConfig,
        shard: usize,
        client: Client,
        stats: Arc<StoreStats>,
        events: UnboundedSender<Event>,
    ) -> Self {
        let scripts = Scripts {
            claim: redis::Script::new(CLAIM_LUA),
            append: redis::Script::new(APPEND_LUA),
            history: redis::Script::new(HISTORY_LUA),
        };
        let now = Instant::now();
        Worker { cfg, shard, client, stats, events, conn: None, scripts, retry_at: now, backoff: Duration::ZERO }
    }

    fn run(mut self, rx: crossbeam_channel::Receiver<Job>) {
        // At once, so that a store that cannot be reached shows at start
        // (log and `cchat_store_down`), not at the first message.
        self.connect_if_due();
        loop {
            // While down, retry on the backoff even without jobs, so that the
            // gauge and the log say when the store is back.
            let first = if self.conn.is_none() {
                match rx.recv_timeout(self.retry_at.saturating_duration_since(Instant::now())) {
                    Ok(j) => j,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.connect_if_due();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_JOBS {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.connect_if_due();
            let (cmds, calls) = self.build(&jobs);
            // A round that fails on the way (connection lost, timeout) may
            // have been applied: it is sent again once connected, for up to
            // RETRY_FOR (the scripts take a repeat as done: see append.lua),
            // so that a blip neither refuses messages nor leaves stored ones
            // undelivered. Then its jobs fail as unavailable.
            let give_up = Instant::now() + RETRY_FOR;
            let mut cmds = Some(cmds);
            let replies = loop {
                // Built again only for a second try (no copy of the messages otherwise).
                let round = cmds.take().unwrap_or_else(|| self.build(&jobs).0);
                if let Some(v) = self.round(round, calls.len()) {
                    break Some(v);
                }
                let now = Instant::now();
                if now >= give_up {
                    break None;
                }
                std::thread::sleep(self.retry_at.min(give_up).saturating_duration_since(now));
                self.connect_if_due();
            };
            self.answer(jobs, calls, replies);
        }
    }

    /// One round trip of `cmds` (None: not connected, or it failed).
    fn round(&mut self, cmds: Vec<redis::Cmd>, n: usize) -> Option<Vec<Value>> {
        let conn = self.conn.as_mut()?;
        let t0 = Instant::now();
        let r = conn.run(cmds);
        self.stats.round_trips.fetch_add(1, Relaxed);
        self.stats.rtt_us.fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
        self.stats.commands.fetch_add(n as u64, Relaxed);
        match r {
            Ok(v) if v.len() == n => {
                let wrong = v.iter().find_map(|r| match r {
                    Value::ServerError(e) if RECONNECT_ON.contains(&e.code()) => Some(e.code().to_owned()),
                    _ => None,
                });
                let Some(e) = wrong else { return Some(v) };
                // Scripts flushed (SCRIPT FLUSH), or not the primary any more
                // (a failover moved it, a replica loading): connect again (the
                // URL may name the new primary) and send the round again.
                self.lost(&format!("Redis answered {e}"));
                None
            }
            Ok(_) => {
                self.lost("a reply of the wrong length");
                None
            }
            Err(e) => {
                self.lost(&e.to_string());
                None
            }
        }
    }

    /// (Re)connects when the backoff allows: loads the scripts once per connection.
    fn connect_if_due(&mut self) {
        if self.conn.is_some() || Instant::now() < self.retry_at {
            return;
        }
        let r = match &self.client {
            Client::One(client) => client.get_connection_with_timeout(IO_TIMEOUT).and_then(|mut c| {
                c.set_read_timeout(Some(IO_TIMEOUT))?;
                c.set_write_timeout(Some(IO_TIMEOUT))?;
                for s in [&self.scripts.claim, &self.scripts.append, &self.scripts.history] {
                    s.load(&mut c)?;
                }
                Ok(Conn::One(c))
            }),
            // Scripts go by text (EVAL) to a cluster: any node may get any
            // room after a resharding, and EVAL needs nothing loaded there.
            Client::Cluster(client) => client.get_connection().map(|c| Conn::Cluster(Box::new(c))),
        };
        match r {
            Ok(c) => {
                self.stats.connects.fetch_add(1, Relaxed);
                if !self.backoff.is_zero() {
                    info!(shard = self.shard, "message store reachable again");
                    self.stats.down.fetch_sub(1, Relaxed);
                }
                self.conn = Some(c);
                self.backoff = Duration::ZERO;
            }
            Err(e) => self.lost(&e.to_string()),
        }
    }

    /// The connection is gone: messages are refused until a reconnect, tried
    /// after a backoff that doubles up to 2 s.
    fn lost(&mut self, why: &str) {
        if self.backoff.is_zero() {
            // Down from now until a connect succeeds (the backoff says so).
            warn!(shard = self.shard, error = why, "message store unavailable: refusing messages until it is back");
            self.stats.down.fetch_add(1, Relaxed);
        }
        self.stats.errors.fetch_add(1, Relaxed);
        self.conn = None;
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
        self.retry_at = Instant::now() + self.backoff;
    }

    /// One pipeline for all jobs: a script call per claim, per read, and per
    /// run of one room's consecutive messages.
    fn build(&self, jobs: &[Job]) -> (Vec<redis::Cmd>, Vec<Call>) {
        let mut cmds = Vec::new();
        let mut calls = Vec::new();
        let cluster = matches!(self.client, Client::Cluster(_));
        // One script call: by hash (loaded at connect), or by text to a cluster.
        let script = |s: &redis::Script, text: &str| {
            let mut c = if cluster { redis::cmd("EVAL") } else { redis::cmd("EVALSHA") };
            if cluster {
                c.arg(text);
            } else {
                c.arg(s.get_hash());
            }
            c
        };
        let ttl = self.cfg.ttl_ms.max(1);
        for job in jobs {
            match job {
                Job::Claim { rid, token, epoch, fresh } => {
                    let (m, h) = keys(rid);
                    let mut c = script(&self.scripts.claim, CLAIM_LUA);
                    c.arg(2).arg(m).arg(h);
                    c.arg(token.to_string()).arg(epoch).arg(if *fresh { "1" } else { "0" }).arg(ttl);
                    cmds.push(c);
                    calls.push(Call::Claim { rid: rid.clone(), token: *token });
                }
                Job::Append { records, .. } => {
                    for run in records.chunk_by(|a, b| {
                        a.rid == b.rid && a.token == b.token && a.epoch == b.epoch && a.seq + 1 == b.seq
                    }) {
                        for run in run.chunks(CHUNK) {
                            let (m, h) = keys(&run[0].rid);
                            let mut c = script(&self.scripts.append, APPEND_LUA);
                            c.arg(2).arg(m).arg(h);
                            c.arg(run[0].token.to_string()).arg(run[0].epoch).arg(run[0].seq);
                            c.arg(self.cfg.history.max(1)).arg(ttl);
                            for r in run {
                                c.arg(&r.msg[..]);
                            }
                            cmds.push(c);
                            let r = &run[0];
                            let refused = Refused {
                                rid: r.rid.clone(),
                                token: r.token,
                                first: r.seq,
                                last: run[run.len() - 1].seq,
                                why: Refusal::Unavailable,
                            };
                            calls.push(Call::Append { refused, n: run.len() as u64 });
                        }
                    }
                }
                Job::Read { ticket, rid, since, before, limit } => {
                    let (m, h) = keys(rid);
                    let opt = |v: &Option<u64>| v.map(|s| s.to_string()).unwrap_or_default();
                    let mut c = script(&self.scripts.history, HISTORY_LUA);
                    c.arg(2).arg(m).arg(h);
                    c.arg(opt(since)).arg(opt(before)).arg(*limit);
                    cmds.push(c);
                    calls.push(Call::Read { ticket: *ticket });
                }
            }
        }
        (cmds, calls)
    }

    /// Turns the replies (None: the round trip failed) into events.
    fn answer(&self, jobs: Vec<Job>, calls: Vec<Call>, replies: Option<Vec<Value>>) {
        let mut replies = replies.map(Vec::into_iter);
        let mut calls = calls.into_iter();
        for job in jobs {
            let ev = match job {
                Job::Claim { .. } => {
                    let Some(Call::Claim { rid, token }) = calls.next() else { unreachable!("one call per claim") };
                    let state = replies.as_mut().and_then(Iterator::next).and_then(|v| parse_claim(&v));
                    Event::Claimed { rid, token, state }
                }
                Job::Append { records, end } => {
                    let mut refused = Vec::new();
                    let mut left = records.len() as u64;
                    while left > 0 {
                        let Some(Call::Append { refused: mut r, n }) = calls.next() else {
                            unreachable!("calls cover the records")
                        };
                        left -= n;
                        let code = replies.as_mut().and_then(Iterator::next).and_then(|v| match v {
                            Value::Int(i) => Some(i),
                            _ => None,
                        });
                        r.why = match code {
                            Some(1) => {
                                self.stats.appended.fetch_add(n, Relaxed);
                                continue;
                            }
                            Some(0) => Refusal::Lost,
                            Some(-1) => Refusal::Fenced,
                            Some(-2) => Refusal::Gap,
                            _ => Refusal::Unavailable,
                        };
                        self.stats.refused.fetch_add(n, Relaxed);
                        refused.push(r);
                    }
                    Event::Appended { end, refused }
                }
                Job::Read { .. } => {
                    let Some(Call::Read { ticket }) = calls.next() else { unreachable!("one call per read") };
                    let answer = replies.as_mut().and_then(Iterator::next).and_then(parse_read);
                    Event::Read { ticket, answer }
                }
            };
            let _ = self.events.unbounded_send(ev);
        }
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_claim(v: &Value) -> Option<(u64, u64)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((int(&a[0])?, int(&a[1])?)),
        _ => None,
    }
}

fn parse_read(v: Value) -> Option<(u64, Vec<Bytes>)> {
    let Value::Array(a) = v else { return None };
    if a.is_empty() {
        return Some((0, Vec::new()));
    }
    let epoch = int(a.first()?)?;
    let msgs = a
        .into_iter()
        .skip(2)
        .map(|m| match m {
            Value::BulkString(b) => Some(Bytes::from(b)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((epoch, msgs))
}
