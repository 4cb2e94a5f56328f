//! The store thread of `redis.rs`: one connection (to a server or a
//! cluster), a pipeline of Lua scripts per round trip, answers as events.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::mpsc::UnboundedSender;
use redis::Value;
use tracing::{info, warn};

use super::{Event, Job, MAX_ROOM_MARKERS, Refusal, Refused, StoreConfig, StoreStats, keys, reads_key};
use crate::ids::Id;

/// Messages per append script (Lua's argument stack is bounded).
const CHUNK: usize = 512;
/// Jobs per round trip.
const MAX_JOBS: usize = 4096;
/// How long one round trip may take before the connection is given up.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed round is tried again before its jobs fail.
const RETRY_FOR: Duration = Duration::from_secs(2);
/// The longest wait between two tries of a failed round.
const RETRY_STEP: Duration = Duration::from_millis(200);
/// Errors after which the connection is made again: scripts flushed, or
/// this server is not (or not yet) the primary.
const RECONNECT_ON: [&str; 5] = ["NOSCRIPT", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN"];

struct Scripts {
    claim: redis::Script,
    append: redis::Script,
    history: redis::Script,
}

const CLAIM_LUA: &str = include_str!("lua/claim.lua");
const APPEND_LUA: &str = include_str!("lua/append.lua");
const HISTORY_LUA: &str = include_str!("lua/history.lua");
/// A room's read markers, unless there are more than `ARGV[1]` (sent as text:
/// it runs once per room coming into memory).
const READS_LUA: &str = "if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then return {} end \
                         return redis.call('HGETALL', KEYS[1])";

/// A client for one Redis server or for a Redis Cluster.
pub(super) enum Client {
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
    Claim {
        rid: Id,
        token: u64,
    },
    Append {
        refused: Refused,
        n: u64,
    },
    Read {
        ticket: u64,
    },
    Reads {
        rid: Id,
    },
    /// A write whose reply says nothing the shard needs.
    Ignore,
}

pub(super) struct Worker {
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
    pub(super) fn new(
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

    pub(super) fn run(mut self, rx: crossbeam_channel::Receiver<Job>) {
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
            // Appends run only before this (checked by the script against
            // Redis's clock): half the time this thread waits for the round
            // before it tells the senders "not stored", so that a pipeline a
            // paused Redis runs when it resumes cannot store what was refused
            // (with clocks within a second of each other).
            let deadline = crate::node::unix_ms() + (RETRY_FOR / 2).as_millis() as u64;
            let (cmds, calls) = self.build(&jobs, deadline);
            // A round that fails on the way (connection lost, timeout) may
            // have been applied: it is sent again once connected, for up to
            // RETRY_FOR (the scripts take a repeat as done: see append.lua),
            // so that a blip neither refuses messages nor leaves stored ones
            // undelivered. Then its jobs fail: unavailable when no try
            // reached Redis, else unknown.
            //
            // A round of appends written to a connection that then failed
            // may have been applied before its deadline with the reply lost
            // (Redis stopped between running the script and writing the
            // reply, killed after its AOF write, a reply lost on the way):
            // "not stored" would be a lie, so its senders are told the
            // outcome is unknown (`Refusal::Unknown`: send again with the
            // same `mid`). It cannot wait for Redis to say: what the shard
            // sends after these messages is held until they are answered.
            let give_up = Instant::now() + RETRY_FOR;
            let appends = calls.iter().any(|c| matches!(c, Call::Append { .. }));
            let mut written = false;
            let mut cmds = Some(cmds);
            let replies = loop {
                // Built again only for a second try (no copy of the messages otherwise).
                let round = cmds.take().unwrap_or_else(|| self.build(&jobs, deadline).0);
                written |= appends && self.conn.is_some();
                if let Some(v) = self.round(round, calls.len()) {
                    written = false;
                    break Some(v);
                }
                let now = Instant::now();
                if now >= give_up {
                    break None;
                }
                // Messages wait on this round: try every RETRY_STEP at most
                // (the doubling backoff is for a store that stays down), so a
                // store back within RETRY_FOR is found in time.
                self.retry_at = self.retry_at.min(now + RETRY_STEP);
                std::thread::sleep(self.retry_at.min(give_up).saturating_duration_since(now));
                self.connect_if_due();
            };
            if written {
                warn!(shard = self.shard, "the message store did not answer a round of messages it may have stored");
            }
            let failed = if written { Refusal::Unknown } else { Refusal::Unavailable };
            self.answer(jobs, calls, replies, failed);
        }
        // The shard is gone (shutdown): it no longer counts as down.
        if !self.backoff.is_zero() {
            self.stats.down.fetch_sub(1, Relaxed);
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
    fn build(&self, jobs: &[Job], deadline: u64) -> (Vec<redis::Cmd>, Vec<Call>) {
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
                            c.arg(self.cfg.history.max(1)).arg(ttl).arg(deadline);
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
                                store_top: None,
                            };
                            calls.push(Call::Append { refused, n: run.len() as u64 });
                        }
                    }
                }
                Job::SetRead { rid, uid, epoch, seq } => {
                    let key = reads_key(rid);
                    let mut c = redis::cmd("HSET");
                    c.arg(&key).arg(uid.as_str()).arg(format!("{epoch}:{seq}"));
                    cmds.push(c);
                    let mut c = redis::cmd("PEXPIRE");
                    c.arg(&key).arg(ttl);
                    cmds.push(c);
                    calls.push(Call::Ignore);
                    calls.push(Call::Ignore);
                }
                Job::LoadReads { rid } => {
                    let mut c = redis::cmd("EVAL");
                    c.arg(READS_LUA).arg(1).arg(reads_key(rid)).arg(MAX_ROOM_MARKERS);
                    cmds.push(c);
                    calls.push(Call::Reads { rid: rid.clone() });
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
    /// `failed`: why appends without a reply were not stored (or may be).
    fn answer(&self, jobs: Vec<Job>, calls: Vec<Call>, replies: Option<Vec<Value>>, failed: Refusal) {
        let mut replies = replies.map(Vec::into_iter);
        let mut calls = calls.into_iter();
        for job in jobs {
            let ev = match job {
                Job::Claim { .. } => {
                    let Some(Call::Claim { rid, token }) = calls.next() else { unreachable!("one call per claim") };
                    let state = match replies.as_mut().and_then(Iterator::next) {
                        Some(v) if is_oom(&v) => Err(Refusal::Full),
                        v => v.and_then(|v| parse_claim(&v)).ok_or(Refusal::Unavailable),
                    };
                    Event::Claimed { rid, token, state }
                }
                Job::Append { records, end } => {
                    let (mut stored, mut refused) = (Vec::new(), Vec::new());
                    let mut left = records.len() as u64;
                    while left > 0 {
                        let Some(Call::Append { refused: mut r, n }) = calls.next() else {
                            unreachable!("calls cover the records")
                        };
                        left -= n;
                        r.why = match replies.as_mut().and_then(Iterator::next) {
                            Some(Value::Int(1)) => {
                                self.stats.appended.fetch_add(n, Relaxed);
                                stored.push((r.rid, r.token, r.last));
                                continue;
                            }
                            Some(Value::Int(0)) => Refusal::Lost,
                            Some(Value::Int(-1)) => Refusal::Fenced,
                            Some(Value::Array(v)) if v.first() == Some(&Value::Int(-2)) => {
                                r.store_top = v.get(1).and_then(int);
                                Refusal::Gap
                            }
                            Some(Value::Int(-2)) => Refusal::Gap,
                            Some(Value::Int(-3)) => Refusal::Unavailable,
                            Some(v) if is_oom(&v) => Refusal::Full,
                            Some(_) => Refusal::Unavailable,
                            None => failed,
                        };
                        self.stats.refused.fetch_add(n, Relaxed);
                        refused.push(r);
                    }
                    Event::Appended { end, stored, refused }
                }
                Job::SetRead { .. } => {
                    for _ in 0..2 {
                        let _ = calls.next();
                        let _ = replies.as_mut().and_then(Iterator::next);
                    }
                    continue;
                }
                Job::LoadReads { .. } => {
                    let Some(Call::Reads { rid }) = calls.next() else { unreachable!("one call per load") };
                    let reply = replies.as_mut().and_then(Iterator::next);
                    Event::Reads { rid, marks: reply.map(|v| parse_reads(&v)).unwrap_or_default() }
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

/// HGETALL's answer: uid, "epoch:seq", uid, … (what does not parse is left out).
fn parse_reads(v: &Value) -> Vec<(Id, u64, u64)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(items) = v else { return Vec::new() };
    items
        .chunks_exact(2)
        .filter_map(|kv| {
            let uid = Id::parse_str(&text(&kv[0])?)?;
            let mark = text(&kv[1])?;
            let (e, s) = mark.split_once(':')?;
            Some((uid, e.parse().ok()?, s.parse().ok()?))
        })
        .collect()
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Redis is at its `maxmemory` with a policy that evicts nothing (or nothing
/// it may): it refuses every write, scripts' too, with OOM.
fn is_oom(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "OOM")
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
