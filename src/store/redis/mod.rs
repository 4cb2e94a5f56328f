//! The shared store (`--store redis://…`): room history and sequence in
//! Redis (or Valkey, KeyDB, Redis Cluster), so that a room re-homed to
//! another node, or a restarted one, carries on with the same epoch and the
//! next seq, its history whole.
//!
//! ```text
//! cchat:{RID}:m   hash: epoch, top (the newest stored seq), owner (a claim token)
//! cchat:{RID}:h   list: the newest --history messages, as members received them
//! cchat:{RID}:r   hash: uid → "epoch:seq", each user's read marker (see owner/reads)
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
//! shard as [`Event`]s. A round that fails on the way is sent again once
//! connected, for up to 2 s (the scripts take a repeat as done); then its
//! jobs fail ([`Refusal::Unavailable`]), and the thread reconnects with
//! backoff. A Redis at its `maxmemory` that may not evict answers OOM to a
//! script: that job fails as [`Refusal::Full`] and the connection stays.
//! The thread itself is in `worker.rs`.

use std::sync::Arc;

use bytes::Bytes;
use futures_channel::mpsc::{UnboundedReceiver, unbounded};

use super::Mark;
use crate::ids::Id;
pub use crate::metrics::StoreStats;

mod worker;
use worker::{Client, IO_TIMEOUT, Worker};

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
        /// The journal's records (room, claim token, epoch, seq and the
        /// message as members receive it), in the order they were sequenced.
        records: Vec<Mark>,
        /// The journal position (see [`super::Journal::end`]).
        end: u64,
    },
    /// Set a user's read marker in a room (its owner moved it forward).
    SetRead {
        /// The room.
        rid: Id,
        /// The user.
        uid: Id,
        /// The room's epoch.
        epoch: u64,
        /// The newest seq read.
        seq: u64,
    },
    /// Read a room's markers (it came into memory here): answered by
    /// [`Event::Reads`], none for a room with more than [`MAX_ROOM_MARKERS`].
    LoadReads {
        /// The room.
        rid: Id,
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
    /// The messages went to Redis, whose answer never came: they may or
    /// may not be stored.
    Unknown,
    /// Redis is at its `maxmemory` and may not evict (it answered OOM).
    Full,
    /// The embedded log could not write (or, in `sync` mode, fsync) the
    /// message: a full disk, mostly.
    LogWrite,
}

impl Refusal {
    /// What the sender of a refused message is told (error 50).
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Fenced => "message not stored: this room is served by another node now",
            Refusal::Lost | Refusal::Gap => "message not stored: the store lost this room's history, send it again",
            Refusal::Unavailable => "message store unavailable, try again shortly",
            Refusal::Unknown => {
                "message store did not answer: the message may have been stored; send it again with the same mid"
            }
            Refusal::Full => "message store full, try again later",
            Refusal::LogWrite => {
                "message not stored: the server cannot write its message log (disk full?), try again later"
            }
        }
    }
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
    /// On a gap: the top seq the store holds (what it has of the room).
    pub store_top: Option<u64>,
}

/// What the store answers.
#[derive(Debug)]
pub enum Event {
    /// A claim: the room's epoch and top seq, or why Redis did not take it
    /// (unavailable, or full).
    Claimed {
        /// The room.
        rid: Id,
        /// The claim's token.
        token: u64,
        /// The room's epoch and top seq.
        state: Result<(u64, u64), Refusal>,
    },
    /// An append batch: everything up to `end` is stored except `refused`.
    Appended {
        /// The journal position the batch reached.
        end: u64,
        /// Runs stored: (room, claim token, newest seq of the run).
        stored: Vec<(Id, u64, u64)>,
        /// What was not stored.
        refused: Vec<Refused>,
    },
    /// A room's read markers, (uid, epoch, seq) each (none when Redis was
    /// unavailable, or the room has too many).
    Reads {
        /// The room.
        rid: Id,
        /// Its markers.
        marks: Vec<(Id, u64, u64)>,
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

/// The key of a room's read markers (the same hash tag: the same slot).
pub fn reads_key(rid: &str) -> String {
    format!("cchat:{{{rid}}}:r")
}

/// A room with more read markers than this is not read back when it comes
/// into memory (its users' markers then start from the room's present).
pub const MAX_ROOM_MARKERS: usize = 10_000;
