//! One shard: an executor's share of the node.
//!
//! A shard owns the connections the kernel handed to its listener, the rooms
//! that [`crate::placement::shard_for`] assigns to it, and a local index of
//! which of its connections sit in which room. Everything here runs on one
//! thread, so state lives in `RefCell`s that are borrowed only between awaits.
//!
//! Message path (see DESIGN §2):
//! 1. a connection task parses a command and sends one [`ShardMsg`] to the
//!    room's owner shard (handled inline when that is this shard);
//! 2. the owner sequences it, encodes the frame once, and sends one
//!    [`ShardMsg::Deliver`] per shard that holds members;
//! 3. each shard pushes the shared bytes onto its members' queues and marks
//!    them dirty; the flusher then writes every dirty socket once, with all
//!    its queued frames gathered into one `send`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};
use hdrhistogram::Histogram;
use indexmap::IndexSet;
use slab::Slab;
use tracing::{info, warn};

use crate::cluster::View;
use crate::ids::{Id, Name};
use crate::node::Node;
use crate::pinning::{Action, CorePin};
use crate::placement::shard_for;
use crate::protocol::{self, Command, MessageOut, MsgType, ParseLimits, ProtoError};
use crate::ratelimit::TokenBucket;
use crate::relay::Relay;
use crate::room::{ConnRef, Joined, Room};
use crate::ws;

mod roomset;
use roomset::RoomSet;

/// The one message type that crosses shards (glommio's channel mesh).
#[derive(Debug)]
pub enum ShardMsg {
    /// To the owner: admit a connection to a room.
    Join {
        /// Room.
        rid: Id,
        /// Connection.
        conn: ConnRef,
        /// Its user.
        uid: Id,
        /// The user's name.
        name: Name,
        /// Echo flag of the connection.
        echo: bool,
        /// Re-homing after a cluster change: join quietly (no ack, no newUser).
        rejoin: bool,
    },
    /// To the owner: a connection left a room (logout when `ack`, else disconnect).
    Leave {
        /// Room.
        rid: Id,
        /// Connection.
        conn: ConnRef,
        /// Send the logout acknowledgement.
        ack: bool,
    },
    /// To the owner: a chat message to sequence and fan out.
    Publish(Box<Publish>),
    /// To the owner: roster request.
    GetOnline {
        /// Room.
        rid: Id,
        /// Requesting connection.
        conn: ConnRef,
    },
    /// To the owner: history request.
    GetHistory {
        /// Room.
        rid: Id,
        /// Requesting connection.
        conn: ConnRef,
        /// After this seq.
        since: Option<u64>,
        /// At most this many.
        limit: Option<usize>,
    },
    /// From the owner: the connection is a member now; index it and send the ack.
    Joined {
        /// Room.
        rid: Id,
        /// Connection.
        conn: ConnRef,
        /// Encoded login acknowledgement.
        ack: Bytes,
    },
    /// From the owner: one encoded frame for this shard's members of a room.
    Deliver {
        /// Room.
        rid: Id,
        /// The frame, shared by every recipient.
        frame: Bytes,
        /// Who receives it.
        audience: Audience,
        /// When the owner sequenced it (for the fan-out latency metric).
        t0: Instant,
    },
    /// From the owner: a reply to one connection.
    Direct {
        /// Connection.
        conn: ConnRef,
        /// The frame.
        frame: Bytes,
    },
    /// To the relay shard: send this message to another node.
    ToNode {
        /// Destination node index.
        node: u16,
        /// The message.
        msg: Box<ShardMsg>,
    },
    /// From the relay shard: the set of live nodes changed (and `down` died).
    Cluster {
        /// A node whose members must be removed.
        down: Option<u16>,
    },
}

impl ShardMsg {
    /// The room of a request to an owner (Join, Leave, Publish, GetOnline,
    /// GetHistory); None for owner-to-member messages.
    pub fn request_room(&self) -> Option<&Id> {
        match self {
            ShardMsg::Join { rid, .. }
            | ShardMsg::Leave { rid, .. }
            | ShardMsg::GetOnline { rid, .. }
            | ShardMsg::GetHistory { rid, .. } => Some(rid),
            ShardMsg::Publish(p) => Some(&p.rid),
            _ => None,
        }
    }
}

/// A chat message on its way to the owner.
#[derive(Debug)]
pub struct Publish {
    /// Room.
    pub rid: Id,
    /// Sending connection.
    pub from: ConnRef,
    /// Sender's uid (from the session).
    pub uid: Id,
    /// Sender's name (from the session).
    pub name: Name,
    /// Kind.
    pub mtype: MsgType,
    /// Body.
    pub msg: String,
    /// Private recipient.
    pub tid: Option<Id>,
}

/// Which of a shard's room members receive a [`ShardMsg::Deliver`].
#[derive(Debug)]
pub enum Audience {
    /// Every member on the shard, except one connection (the sender without echo).
    AllExcept(Option<ConnRef>),
    /// Exactly these connections (private messages).
    Only(Vec<ConnRef>),
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closing {
    /// Close code sent to the client.
    pub(crate) code: u16,
}

/// A connection's state as the shard sees it.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    generation: u32,
    fd: RawFd,
    // Session.
    uid: Option<Id>,
    name: Option<Name>,
    echo: bool,
    /// Rooms joined or being joined (the owner's roster follows in FIFO order).
    rooms: RoomSet,
    msg_bucket: TokenBucket,
    frame_bucket: TokenBucket,
    // Output.
    queue: VecDeque<Frame>,
    queued: usize,
    front_off: usize,
    dirty: bool,
    pub(crate) write_blocked: bool,
    pub(crate) closing: Option<Closing>,
    waker: Option<Waker>,
    /// Its task stopped reading because the outboxes were backed up, and is
    /// listed in [`Shard::parked`] to be woken when they drain.
    parked: bool,
    // Liveness, in sweeper ticks.
    /// When the connection was registered (the login deadline runs from it).
    born: u32,
    last_rx: u32,
    pinged: bool,
}

/// A frame in the per-connection queues. Every local recipient of a
/// broadcast holds the same one: one allocation per broadcast and shard, and
/// a plain (non-atomic) count per recipient instead of the `Bytes` atomic
/// one, which also lets the same bytes go to other shards.
type Frame = Rc<Bytes>;

/// Tick length of the sweeper (idle checks, pings, shutdown polling).
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Largest gather buffer for one socket write.
const WRITE_CHUNK: usize = 256 * 1024;

/// A shard's state. Shared by its tasks through `Rc`.
pub struct Shard {
    /// Index of this shard.
    pub id: usize,
    /// Number of shards on the node.
    pub nshards: usize,
    /// Node-wide shared state.
    pub node: Arc<Node>,
    conns: RefCell<Slab<ConnEntry>>,
    next_gen: Cell<u32>,
    local_rooms: RefCell<HashMap<Id, IndexSet<u32>>>,
    owned: RefCell<HashMap<Id, Room>>,
    dirty: RefCell<Vec<u32>>,
    flush_waker: RefCell<Option<Waker>>,
    write_buf: RefCell<Vec<u8>>,
    /// Shared read buffer: every connection reads into it and copies out only
    /// the tail of an incomplete frame, so an idle socket holds no buffer.
    pub(crate) read_buf: RefCell<Box<[u8]>>,
    json_buffers: RefCell<simd_json::Buffers>,
    senders: Option<Senders<ShardMsg>>,
    /// Per destination shard: messages waiting because its queue was full.
    outbox: RefCell<Vec<VecDeque<ShardMsg>>>,
    /// Messages in all outboxes together.
    outbox_len: Cell<usize>,
    /// Connections whose tasks stopped reading while the outboxes held more
    /// than one queue's capacity (`--shard-queue`); every one is woken once
    /// they drain to a quarter of it (a gap, so that readers do not stop and
    /// start around one level), or when their destination is gone. A reader
    /// that parks is always on this list, so pressure that ends always wakes it.
    parked: RefCell<Vec<(u32, u32)>>,
    pump_busy: Vec<Cell<bool>>,
    pump_wakers: RefCell<Vec<Option<Waker>>>,
    uid_counter: Cell<u64>,
    /// Sweeper ticks since start.
    pub(crate) tick: Cell<u32>,
    /// Time spent in flush passes since the last tick, and the share of the
    /// last tick it took (the flusher's load).
    flush_busy_ns: Cell<u64>,
    flush_util: Cell<f64>,
    last_pass: Cell<Duration>,
    latency: RefCell<Histogram<u64>>,
    /// Set when the node shuts down.
    pub(crate) shutting_down: Cell<bool>,
    started: Instant,
    /// Live nodes as this shard last applied them.
    view: RefCell<Rc<View>>,
    /// The relay (links to other nodes); only on shard 0 of a clustered node.
    pub(crate) relay: RefCell<Option<Rc<Relay>>>,
    /// This shard's pin to its core, when pinned (see [`crate::pinning`]).
    pub(crate) pin: RefCell<Option<CorePin>>,
    /// Reused destination lists of [`Shard::broadcast`] (shards, nodes).
    fanout_scratch: Cell<(Vec<usize>, Vec<u16>)>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Shard {
    /// A shard with no connections yet.
    pub fn new(id: usize, node: Arc<Node>, senders: Option<Senders<ShardMsg>>) -> Self {
        let n = node.cfg.shards;
        Shard {
            id,
            nshards: n,
            conns: RefCell::new(Slab::new()),
            next_gen: Cell::new(1),
            local_rooms: RefCell::new(HashMap::new()),
            owned: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            flush_waker: RefCell::new(None),
            write_buf: RefCell::new(Vec::with_capacity(WRITE_CHUNK)),
            read_buf: RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice()),
            json_buffers: RefCell::new(simd_json::Buffers::new(1024)),
            senders,
            outbox: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            outbox_len: Cell::new(0),
            parked: RefCell::new(Vec::new()),
            pump_busy: (0..n).map(|_| Cell::new(false)).collect(),
            pump_wakers: RefCell::new(vec![None; n]),
            uid_counter: Cell::new(0),
            tick: Cell::new(0),
            flush_busy_ns: Cell::new(0),
            flush_util: Cell::new(0.0),
            last_pass: Cell::new(Duration::ZERO),
            latency: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")),
            shutting_down: Cell::new(false),
            started: Instant::now(),
            view: RefCell::new(Rc::new(View::solo(&node.cfg.node_id))),
            relay: RefCell::new(None),
            pin: RefCell::new(None),
            fanout_scratch: Cell::new((Vec::new(), Vec::new())),
            node,
        }
    }

    fn stats(&self) -> &crate::metrics::ShardStats {
        &self.node.stats.shards[self.id]
    }

    // ---- connections ---------------------------------------------------

    /// Registers an upgraded connection; returns its slot.
    pub(crate) fn register(&self, fd: RawFd) -> u32 {
        let generation = self.next_gen.get();
        self.next_gen.set(generation.wrapping_add(1));
        let now = self.now_ms();
        let burst = self.node.cfg.rate_limit * 2.0;
        let key = self.conns.borrow_mut().insert(ConnEntry {
            generation,
            fd,
            uid: None,
            name: None,
            echo: false,
            rooms: RoomSet::default(),
            msg_bucket: TokenBucket::new(burst, now),
            frame_bucket: TokenBucket::new(frame_burst(self.node.cfg.rate_limit), now),
            queue: VecDeque::new(),
            queued: 0,
            front_off: 0,
            dirty: false,
            write_blocked: false,
            closing: None,
            waker: None,
            parked: false,
            born: self.tick.get(),
            last_rx: self.tick.get(),
            pinged: false,
        });
        self.stats().connections.fetch_add(1, Relaxed);
        key as u32
    }

    fn conn_ref(&self, key: u32, generation: u32) -> ConnRef {
        ConnRef { node: 0, shard: self.id as u16, key, generation }
    }

    /// Forgets a connection: leaves its rooms (telling their owners).
    pub(crate) fn unregister(&self, key: u32) {
        let mut e = self.conns.borrow_mut().remove(key as usize);
        self.stats().connections.fetch_sub(1, Relaxed);
        self.node.open.fetch_sub(1, Relaxed);
        let me = self.conn_ref(key, e.generation);
        for rid in e.rooms.take_all() {
            self.unindex(&rid, key);
            self.send_to_owner(ShardMsg::Leave { rid, conn: me, ack: false });
        }
    }

    fn unindex(&self, rid: &str, key: u32) {
        let mut lr = self.local_rooms.borrow_mut();
        if let Some(set) = lr.get_mut(rid) {
            set.swap_remove(&key);
            if set.is_empty() {
                lr.remove(rid);
            }
        }
    }

    /// Notes input activity (for the idle timeout).
    pub(crate) fn touch(&self, key: u32) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key as usize) {
            e.last_rx = self.tick.get();
            e.pinged = false;
        }
    }

    /// Stores the connection task's waker so the shard can wake it.
    pub(crate) fn set_waker(&self, key: u32, w: &Waker) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key as usize) {
            match &e.waker {
                Some(old) if old.will_wake(w) => {}
                _ => e.waker = Some(w.clone()),
            }
        }
    }

    /// (closing, write_blocked) of a connection.
    pub(crate) fn conn_flags(&self, key: u32) -> (Option<Closing>, bool) {
        let c = self.conns.borrow();
        let e = &c[key as usize];
        (e.closing, e.write_blocked)
    }

    /// Starts closing a connection with a close frame. Frames not yet begun
    /// are dropped (a half-written one is finished first, or the stream
    /// would be corrupt); the connection task flushes and hangs up.
    pub(crate) fn begin_close(&self, key: u32, code: u16, reason: &str) {
        let mut conns = self.conns.borrow_mut();
        let Some(e) = conns.get_mut(key as usize) else {
            return;
        };
        if e.closing.is_none() {
            e.start_close(code, reason);
        }
    }

    /// Queues a frame on a connection and marks it for the next flush.
    /// Returns false if the connection is closing or was just closed for
    /// exceeding its outbound cap.
    fn enqueue(&self, conns: &mut Slab<ConnEntry>, key: u32, frame: &Frame) -> bool {
        match conns.get_mut(key as usize) {
            Some(e) => self.push_frame(e, key, frame),
            None => false,
        }
    }

    /// [`Shard::enqueue`] to the connection `c` names, if it is still that
    /// connection (its slot may have been reused since `c` was taken).
    fn enqueue_to(&self, conns: &mut Slab<ConnEntry>, c: ConnRef, frame: &Frame) -> bool {
        match conns.get_mut(c.key as usize).filter(|e| e.generation == c.generation) {
            Some(e) => self.push_frame(e, c.key, frame),
            None => false,
        }
    }

    fn push_frame(&self, e: &mut ConnEntry, key: u32, frame: &Frame) -> bool {
        if e.closing.is_some() {
            return false;
        }
        if e.queued + frame.len() > self.node.cfg.max_outbound_bytes {
            // Slow consumer: close with 1008 rather than grow without bound.
            self.stats().slow_consumer_closes.fetch_add(1, Relaxed);
            e.start_close(ws::close_code::POLICY, "outbound queue full");
            return false;
        }
        e.queue.push_back(Rc::clone(frame));
        e.queued += frame.len();
        if !e.dirty && !e.write_blocked {
            e.dirty = true;
            self.dirty.borrow_mut().push(key);
        }
        true
    }

    /// Queues a frame to one local connection and schedules the flush.
    pub(crate) fn send_frame(&self, key: u32, frame: Bytes) {
        let mut conns = self.conns.borrow_mut();
        self.enqueue(&mut conns, key, &Rc::new(frame));
        drop(conns);
        self.wake_flusher();
    }

    fn send_error(&self, key: u32, err: &ProtoError) {
        self.stats().error(err.code);
        self.send_frame(key, err.encode());
    }

    fn wake_flusher(&self) {
        if !self.dirty.borrow().is_empty()
            && let Some(w) = self.flush_waker.borrow_mut().take()
        {
            w.wake();
        }
    }

    // ---- output ----------------------------------------------------------

    /// The flusher task: whenever connections are dirty, writes each once.
    /// It runs after the tasks that queued frames yield, so a burst of
    /// deliveries becomes one `send` per socket.
    pub(crate) async fn run_flusher(self: Rc<Self>) {
        let mut batch: Vec<u32> = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                if self.dirty.borrow().is_empty() {
                    *self.flush_waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let delay = self.coalesce_delay();
            if !delay.is_zero() {
                glommio::timer::Timer::new(delay).await;
            }
            let mut t0 = Instant::now();
            let mut pass = Duration::ZERO;
            std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
            for (i, &key) in batch.iter().enumerate() {
                self.flush_now(key);
                if (i + 1) % FLUSH_YIELD_EVERY == 0 && i + 1 < batch.len() {
                    // Let the tasks that are already runnable go first:
                    // connections woken by the same I/O poll as this pass,
                    // cross-shard dispatch. Without it their messages waited
                    // for the whole pass and then their frames for the next
                    // one; now their frames join sockets not yet written in
                    // this pass, or the next pass. (glommio looks for new I/O
                    // only once the queue runs dry or its preempt timer
                    // fires, so sockets that become readable during the pass
                    // still wait for its end; a 500 us preempt timer to
                    // catch those measured no better, see bench/results.)
                    pass += t0.elapsed();
                    glommio::executor().yield_task_queue_now().await;
                    t0 = Instant::now();
                }
            }
            batch.clear();
            pass += t0.elapsed();
            self.last_pass.set(pass);
            self.flush_busy_ns.set(self.flush_busy_ns.get() + pass.as_nanos() as u64);
        }
    }

    /// How long the flusher lets frames pile up before a pass: nothing while
    /// writing takes little of the shard's time; under load, enough that a
    /// pass starts at most every `--coalesce-ms`, so each write carries more
    /// frames. Passes that already take that long get no delay: frames pile
    /// up during them anyway, and waiting would only idle the core.
    fn coalesce_delay(&self) -> Duration {
        let d = self.node.cfg.coalesce;
        if d.is_zero() || self.flush_util.get() < self.node.cfg.coalesce_above {
            return Duration::ZERO;
        }
        d.saturating_sub(self.last_pass.get())
    }

    /// Writes what a connection has queued with non-blocking sends. If the
    /// socket is full, the connection task takes over and waits for it.
    fn flush_now(&self, key: u32) {
        let mut conns = self.conns.borrow_mut();
        let Some(e) = conns.get_mut(key as usize) else {
            return;
        };
        e.dirty = false;
        if e.write_blocked {
            return;
        }
        let mut wb = self.write_buf.borrow_mut();
        while !e.queue.is_empty() {
            let r = raw_send(e.fd, next_chunk(e, &mut wb));
            self.stats().writes.fetch_add(1, Relaxed);
            match r {
                Ok(n) => self.wrote(e, n),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    e.write_blocked = true;
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                    return;
                }
                Err(_) => {
                    // Peer reset: drop the output; the task sees the error on read.
                    e.queue.clear();
                    e.queued = 0;
                    e.front_off = 0;
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                    return;
                }
            }
        }
    }

    /// Called by the connection task when its socket was full: writes through
    /// glommio's stream, which registers for writability when it would block.
    /// Ready(Ok(true)) when the queue is empty.
    pub(crate) fn poll_write_queued(
        &self,
        key: u32,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<bool>> {
        let mut conns = self.conns.borrow_mut();
        let e = &mut conns[key as usize];
        let mut wb = self.write_buf.borrow_mut();
        while !e.queue.is_empty() {
            match write(cx, next_chunk(e, &mut wb)) {
                Poll::Ready(Ok(n)) => {
                    self.stats().writes.fetch_add(1, Relaxed);
                    self.wrote(e, n);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        e.write_blocked = false;
        Poll::Ready(Ok(true))
    }

    /// Accounts for `n` bytes a write took from the front of `e`'s queue.
    fn wrote(&self, e: &mut ConnEntry, n: usize) {
        self.stats().bytes_out.fetch_add(n as u64, Relaxed);
        consume(e, n);
    }

    /// Bytes still queued for a connection.
    pub(crate) fn queued(&self, key: u32) -> usize {
        self.conns.borrow().get(key as usize).map_or(0, |e| e.queued)
    }

    // ---- input -----------------------------------------------------------

    /// Handles one complete text message from a client.
    pub(crate) fn on_text(&self, key: u32, data: &mut [u8]) {
        let rate = self.node.cfg.rate_limit;
        {
            let mut conns = self.conns.borrow_mut();
            let e = &mut conns[key as usize];
            if !e.frame_bucket.take(rate * 10.0, frame_burst(rate), self.now_ms()) {
                drop(conns);
                self.send_error(key, &ProtoError::new(protocol::ERR_INVALID, "sending too fast"));
                return;
            }
        }
        let limits = ParseLimits { max_message_bytes: self.node.cfg.max_message_bytes };
        let parsed = protocol::parse(data, &mut self.json_buffers.borrow_mut(), limits);
        match parsed {
            Ok(cmd) => {
                if let Err(e) = self.on_command(key, cmd) {
                    self.send_error(key, &e);
                }
            }
            Err(e) => self.send_error(key, &e),
        }
    }

    /// A binary frame: the protocol has none.
    pub(crate) fn on_binary(&self, key: u32) {
        self.send_error(key, &ProtoError::new(protocol::ERR_NOT_COMMAND, "binary frames are not supported"));
    }

    fn on_command(&self, key: u32, cmd: Command) -> Result<(), ProtoError> {
        let mut conns = self.conns.borrow_mut();
        let e = &mut conns[key as usize];
        let me = self.conn_ref(key, e.generation);
        match cmd {
            Command::Login { name, rid, uid, echo } => {
                let (uid, name) = match (&e.uid, &e.name) {
                    (Some(u), Some(n)) => (u.clone(), n.clone()),
                    _ => {
                        let name = name.ok_or(ProtoError::new(protocol::ERR_INVALID, "name is required"))?;
                        let uid = uid.unwrap_or_else(|| self.assign_uid());
                        e.uid = Some(uid.clone());
                        e.name = Some(name.clone());
                        e.echo = echo;
                        (uid, name)
                    }
                };
                e.rooms.insert(rid.clone());
                let echo = e.echo;
                drop(conns);
                self.send_to_owner(ShardMsg::Join { rid, conn: me, uid, name, echo, rejoin: false });
            }
            Command::Message { mtype, msg, rid, tid } => {
                let (Some(uid), Some(name)) = (e.uid.clone(), e.name.clone()) else {
                    return Err(ProtoError::new(protocol::ERR_INVALID, "not logged in"));
                };
                if !e.rooms.contains(&rid) {
                    return Err(ProtoError::new(protocol::ERR_INVALID, "not a member of rid"));
                }
                let rate = self.node.cfg.rate_limit;
                if !e.msg_bucket.take(rate, rate * 2.0, self.now_ms()) {
                    return Err(ProtoError::new(protocol::ERR_INVALID, "sending too fast"));
                }
                drop(conns);
                self.stats().messages_in.fetch_add(1, Relaxed);
                self.send_to_owner(ShardMsg::Publish(Box::new(Publish { rid, from: me, uid, name, mtype, msg, tid })));
            }
            Command::Logout { rid } => {
                if e.uid.is_none() {
                    return Err(ProtoError::new(protocol::ERR_INVALID, "not logged in"));
                }
                let leaving: Vec<Id> = match rid {
                    Some(rid) => {
                        if !e.rooms.remove(&rid) {
                            return Err(ProtoError::new(protocol::ERR_INVALID, "not a member of rid"));
                        }
                        vec![rid]
                    }
                    None if e.rooms.is_empty() => {
                        return Err(ProtoError::new(protocol::ERR_INVALID, "not in any room"));
                    }
                    None => e.rooms.take_all(),
                };
                drop(conns);
                for rid in leaving {
                    self.unindex(&rid, key);
                    self.send_to_owner(ShardMsg::Leave { rid, conn: me, ack: true });
                }
            }
            Command::GetOnline { rid } => {
                member_check(e, &rid)?;
                drop(conns);
                self.send_to_owner(ShardMsg::GetOnline { rid, conn: me });
            }
            Command::GetHistory { rid, since, limit } => {
                member_check(e, &rid)?;
                drop(conns);
                self.send_to_owner(ShardMsg::GetHistory { rid, conn: me, since, limit });
            }
        }
        Ok(())
    }

    /// Milliseconds since the shard started (wrapping), the rate limiter's clock.
    fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    fn assign_uid(&self) -> Id {
        let n = self.uid_counter.get() + 1;
        self.uid_counter.set(n);
        Id::parse_str(&format!("u-{}-{}-{n}", self.node.uid_tag, self.id)).expect("assigned uids are valid ids")
    }

    // ---- cross-shard -------------------------------------------------------

    /// Sends a message to a shard (handled inline for this shard). A full
    /// queue is back-pressure: the message waits in an ordered local outbox
    /// that a pump task feeds into the queue; nothing is dropped.
    pub(crate) fn send(&self, dst: usize, msg: ShardMsg) {
        if dst == self.id {
            self.handle(msg);
            return;
        }
        let Some(senders) = &self.senders else { return };
        let sent = &self.stats().sent_to[dst];
        let mut outbox = self.outbox.borrow_mut();
        if outbox[dst].is_empty() && !self.pump_busy[dst].get() {
            match senders.try_send_to(dst, msg) {
                Ok(()) => {
                    sent.fetch_add(1, Relaxed);
                    return;
                }
                Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                    outbox[dst].push_back(msg);
                    self.outbox_len.set(self.outbox_len.get() + 1);
                }
                // The destination shard is gone (shutdown): nothing to deliver to.
                Err(_) => return,
            }
        } else {
            outbox[dst].push_back(msg);
            self.outbox_len.set(self.outbox_len.get() + 1);
        }
        // Counted while in the outbox too: the gauge shows back-pressure.
        sent.fetch_add(1, Relaxed);
        if let Some(w) = self.pump_wakers.borrow_mut()[dst].take() {
            w.wake();
        }
    }

    /// Feeds the outbox of one destination into its queue, waiting when full.
    pub(crate) async fn run_pump(self: Rc<Self>, dst: usize) {
        let Some(senders) = &self.senders else { return };
        loop {
            let msg = std::future::poll_fn(|cx| match self.outbox.borrow_mut()[dst].pop_front() {
                Some(m) => Poll::Ready(m),
                None => {
                    self.pump_wakers.borrow_mut()[dst] = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            self.pump_busy[dst].set(true);
            let r = senders.send_to(dst, msg).await;
            self.outbox_len.set(self.outbox_len.get() - 1);
            self.pump_busy[dst].set(!self.outbox.borrow()[dst].is_empty());
            if r.is_err() {
                // The peer shard is gone (shutdown): nothing left to deliver
                // to, and nothing of it waits any more.
                let lost = self.outbox.borrow_mut()[dst].drain(..).count();
                self.outbox_len.set(self.outbox_len.get() - lost);
                self.stats().sent_to[dst].fetch_sub(lost as u64 + 1, Relaxed);
                // Later sends try the queue again, see the shard gone and
                // drop the message, instead of filling an outbox no one drains.
                self.pump_busy[dst].set(false);
                self.resume_parked();
                return;
            }
            if self.outbox_len.get() <= self.node.cfg.shard_queue / 4 {
                self.resume_parked();
            }
        }
    }

    /// Back-pressure for readers: while this shard's outboxes hold more than
    /// one queue's capacity, a connection task stops reading new
    /// commands. Returns true when it must wait; it is then parked, and
    /// [`Shard::resume_parked`] wakes it once the outboxes have drained.
    pub(crate) fn park_if_backed_up(&self, key: u32, waker: &Waker) -> bool {
        if self.outbox_len.get() <= self.node.cfg.shard_queue {
            return false;
        }
        let mut conns = self.conns.borrow_mut();
        let e = &mut conns[key as usize];
        match &e.waker {
            Some(old) if old.will_wake(waker) => {}
            _ => e.waker = Some(waker.clone()),
        }
        if !e.parked {
            e.parked = true;
            self.parked.borrow_mut().push((key, e.generation));
        }
        true
    }

    /// Wakes every parked reader (the outboxes have drained).
    fn resume_parked(&self) {
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        if parked.is_empty() {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        for (key, generation) in parked {
            let Some(e) = conns.get_mut(key as usize).filter(|e| e.generation == generation) else { continue };
            e.parked = false;
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
    }

    // ---- routing -------------------------------------------------------------

    /// The node that owns a room, as this shard last applied the cluster view.
    fn owner_node(&self, rid: &str) -> u16 {
        self.view.borrow().owner(rid)
    }

    /// Sends a request to the owner of its room: a shard of this node, or
    /// another node through the relay (whose shard there is its own choice).
    fn send_to_owner(&self, msg: ShardMsg) {
        let rid = msg.request_room().expect("only requests go to an owner");
        match self.owner_node(rid) {
            0 => self.send(shard_for(rid, self.nshards), msg),
            node => self.send_remote(node, msg),
        }
    }

    /// Sends an owner's message to the shard (or node) of a connection.
    fn send_to_conn(&self, conn: ConnRef, msg: ShardMsg) {
        match conn.node {
            0 => self.send(conn.shard as usize, msg),
            node => self.send_remote(node, msg),
        }
    }

    /// Hands a message to the relay (on shard 0) for another node.
    fn send_remote(&self, node: u16, msg: ShardMsg) {
        if self.id == 0 {
            if let Some(relay) = self.relay.borrow().as_ref() {
                relay.send(node, &msg);
            }
        } else {
            self.send(0, ShardMsg::ToNode { node, msg: Box::new(msg) });
        }
    }

    /// Routes a message that arrived from another node to the shard(s) it is for.
    pub(crate) fn dispatch_remote(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Join { .. }
            | ShardMsg::Leave { .. }
            | ShardMsg::Publish(_)
            | ShardMsg::GetOnline { .. }
            | ShardMsg::GetHistory { .. } => {
                // The sender chose this node as the owner; the shard is ours to pick.
                let rid = msg.request_room().expect("a request");
                self.send(shard_for(rid, self.nshards), msg);
            }
            ShardMsg::Joined { ref conn, .. } | ShardMsg::Direct { ref conn, .. } => {
                let shard = conn.shard as usize;
                if shard < self.nshards {
                    self.send(shard, msg);
                }
            }
            ShardMsg::Deliver { rid, frame, audience: Audience::AllExcept(except), t0 } => {
                // One item per node came over the link; each local shard
                // filters by its own members (a miss is one hash lookup).
                for s in 0..self.nshards {
                    let audience = Audience::AllExcept(except);
                    self.send(s, ShardMsg::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 });
                }
            }
            ShardMsg::Deliver { rid, frame, audience: Audience::Only(mut targets), t0 } => {
                // The owner named our connections; they are local here.
                targets.retain(|c| c.node == 0 && (c.shard as usize) < self.nshards);
                self.deliver_to(&rid, &frame, targets, t0);
            }
            ShardMsg::ToNode { .. } | ShardMsg::Cluster { .. } => {}
        }
    }

    /// Handles a message from a shard (or from this one).
    pub(crate) fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Join { rid, conn, uid, name, echo, rejoin } => {
                self.owner_join(rid, conn, uid, name, echo, rejoin)
            }
            ShardMsg::Leave { rid, conn, ack } => self.owner_leave(rid, conn, ack),
            ShardMsg::Publish(p) => self.owner_publish(*p),
            ShardMsg::GetOnline { rid, conn } => {
                let owned = self.owned.borrow();
                let frame = match owned.get(&rid) {
                    Some(room) => protocol::encode_online(&rid, room.users()),
                    None => protocol::encode_online(&rid, std::iter::empty()),
                };
                drop(owned);
                self.send_to_conn(conn, ShardMsg::Direct { conn, frame });
            }
            ShardMsg::GetHistory { rid, conn, since, limit } => {
                let owned = self.owned.borrow();
                let frame = match owned.get(&rid) {
                    Some(room) => {
                        protocol::encode_history(&rid, room.epoch(), room.history(since, limit).map(|b| &b[..]))
                    }
                    None => protocol::encode_history(&rid, self.node.epoch, std::iter::empty()),
                };
                drop(owned);
                self.send_to_conn(conn, ShardMsg::Direct { conn, frame });
            }
            ShardMsg::Joined { rid, conn, ack } => {
                let mut conns = self.conns.borrow_mut();
                let Some(e) = conns.get_mut(conn.key as usize).filter(|e| e.generation == conn.generation) else {
                    return;
                };
                if e.rooms.contains(&rid) {
                    self.local_rooms.borrow_mut().entry(rid).or_default().insert(conn.key);
                }
                self.push_frame(e, conn.key, &Rc::new(ack));
                drop(conns);
                self.wake_flusher();
            }
            ShardMsg::Deliver { rid, frame, audience, t0 } => {
                let mut conns = self.conns.borrow_mut();
                let mut n = 0u64;
                // The frame is wrapped once for all local recipients, and
                // not at all on a shard without any (a broadcast from
                // another node reaches every shard).
                match audience {
                    Audience::AllExcept(except) => {
                        let lr = self.local_rooms.borrow();
                        if let Some(members) = lr.get(&rid) {
                            let frame = Rc::new(frame);
                            let skip = except.filter(|c| c.node == 0 && c.shard as usize == self.id).map(|c| c.key);
                            for &key in members {
                                if Some(key) != skip && self.enqueue(&mut conns, key, &frame) {
                                    n += 1;
                                }
                            }
                        }
                    }
                    Audience::Only(targets) => {
                        let frame = Rc::new(frame);
                        for c in targets {
                            if self.enqueue_to(&mut conns, c, &frame) {
                                n += 1;
                            }
                        }
                    }
                }
                drop(conns);
                self.stats().deliveries.fetch_add(n, Relaxed);
                let us = t0.elapsed().as_micros() as u64;
                let _ = self.latency.borrow_mut().record(us.clamp(1, 60_000_000));
                self.wake_flusher();
            }
            ShardMsg::Direct { conn, frame } => {
                let mut conns = self.conns.borrow_mut();
                self.enqueue_to(&mut conns, conn, &Rc::new(frame));
                drop(conns);
                self.wake_flusher();
            }
            ShardMsg::ToNode { node, msg } => self.send_remote(node, *msg),
            ShardMsg::Cluster { down } => self.apply_cluster_change(down),
        }
    }

    // ---- cluster changes -------------------------------------------------------

    /// Applies a new set of live nodes: forgets members on a dead node,
    /// hands over rooms this node no longer owns, and re-joins this shard's
    /// connections at the new owners of rooms that moved. A re-homed room
    /// starts a new epoch at its new owner.
    fn apply_cluster_change(&self, down: Option<u16>) {
        let new_view = Rc::new(self.node.cluster.lock().expect("cluster table").view());
        let old_view = std::mem::replace(&mut *self.view.borrow_mut(), new_view.clone());
        if let Some(dead) = down {
            let mut owned = self.owned.borrow_mut();
            let mut announce = Vec::new();
            for (rid, room) in owned.iter_mut() {
                let had_members = !room.is_empty();
                for left in room.remove_node(dead) {
                    if left.user_gone {
                        announce.push((Id::clone(rid), left));
                    }
                }
                if had_members && room.is_empty() {
                    self.stats().rooms.fetch_sub(1, Relaxed);
                }
            }
            drop(owned);
            for (rid, left) in announce {
                let frame = protocol::encode_presence("userLeave", &left.uid, &left.name, &rid);
                self.broadcast(&rid, frame, None);
            }
        }
        // Rooms that now belong to another node: their members re-join there.
        self.owned.borrow_mut().retain(|rid, room| {
            let keep = new_view.owner(rid) == 0;
            if !keep && !room.is_empty() {
                self.stats().rooms.fetch_sub(1, Relaxed);
            }
            keep
        });
        let mut rejoins = Vec::new();
        {
            let conns = self.conns.borrow();
            let lr = self.local_rooms.borrow();
            for (key, e) in conns.iter() {
                let (Some(uid), Some(name)) = (&e.uid, &e.name) else { continue };
                for rid in e.rooms.iter() {
                    // Rooms that moved, and rooms of a node that went down and
                    // is live again by now (it forgot this node's members).
                    let owner = new_view.owner(rid);
                    if old_view.owner(rid) != owner || down == Some(owner) {
                        let indexed = lr.get(rid).is_some_and(|m| m.contains(&(key as u32)));
                        rejoins.push(ShardMsg::Join {
                            rid: rid.clone(),
                            conn: self.conn_ref(key as u32, e.generation),
                            uid: uid.clone(),
                            name: name.clone(),
                            echo: e.echo,
                            rejoin: indexed,
                        });
                    }
                }
            }
        }
        for msg in rejoins {
            self.send_to_owner(msg);
        }
        // Last: a reader of the gauge knows this shard routes by the new view.
        self.stats().view_nodes.store(new_view.live.len() as i64, Relaxed);
    }

    // ---- owner side ----------------------------------------------------------

    fn owner_join(&self, rid: Id, conn: ConnRef, uid: Id, name: Name, echo: bool, rejoin: bool) {
        let mut owned = self.owned.borrow_mut();
        let room = owned
            .entry(rid.clone())
            .or_insert_with(|| Room::new(self.nshards, self.node.cfg.history, self.node.next_epoch()));
        let was_empty = room.is_empty();
        let joined = room.join(conn, &uid, &name, echo);
        if was_empty && !room.is_empty() {
            self.stats().rooms.fetch_add(1, Relaxed);
        }
        drop(owned);
        if rejoin {
            // The member already has its ack and its place; join quietly.
            return;
        }
        let ack = protocol::encode_presence("login", &uid, &name, &rid);
        self.send_to_conn(conn, ShardMsg::Joined { rid: rid.clone(), conn, ack });
        if joined == Joined::NewUser {
            let frame = protocol::encode_presence("newUser", &uid, &name, &rid);
            self.broadcast(&rid, frame, Some(conn));
        }
    }

    fn owner_leave(&self, rid: Id, conn: ConnRef, ack: bool) {
        let mut owned = self.owned.borrow_mut();
        let left = owned.get_mut(&rid).and_then(|room| {
            let left = room.leave(conn)?;
            if room.is_empty() {
                self.stats().rooms.fetch_sub(1, Relaxed);
            }
            Some(left)
        });
        drop(owned);
        if ack {
            self.send_to_conn(conn, ShardMsg::Direct { conn, frame: protocol::encode_logout(&rid) });
        }
        if let Some(left) = left.filter(|l| l.user_gone) {
            let frame = protocol::encode_presence("userLeave", &left.uid, &left.name, &rid);
            self.broadcast(&rid, frame, None);
        }
    }

    fn owner_publish(&self, p: Publish) {
        let mut owned = self.owned.borrow_mut();
        let err = |msg| ShardMsg::Direct { conn: p.from, frame: ProtoError::new(protocol::ERR_INVALID, msg).encode() };
        let sender = owned.get_mut(&p.rid).and_then(|room| {
            let echo = room.member(&p.from)?.echo;
            Some((room, echo))
        });
        let Some((room, sender_echo)) = sender else {
            drop(owned);
            self.stats().error(protocol::ERR_INVALID);
            return self.send_to_conn(p.from, err("not a member of rid"));
        };
        // With a `tid`, exactly the target's connections (and the sender's,
        // with echo) get it; without, the whole room.
        let targets = match &p.tid {
            None => None,
            Some(tid) => {
                let Some(target) = room.user(tid) else {
                    drop(owned);
                    self.stats().error(protocol::ERR_INVALID);
                    return self.send_to_conn(p.from, err("tid is not in the room"));
                };
                let mut targets = target.conns.clone();
                if sender_echo && !targets.contains(&p.from) {
                    targets.push(p.from);
                }
                Some(targets)
            }
        };
        // A private message is not one of the room's messages: it carries the
        // room's current seq and does not advance it, so other members see no
        // gap.
        let seq = if targets.is_none() { room.next_seq() } else { room.seq() };
        let t0 = Instant::now();
        let (frame, off) = protocol::encode_message(&MessageOut {
            uid: &p.uid,
            name: &p.name,
            mtype: p.mtype,
            rid: &p.rid,
            msg: &p.msg,
            tid: p.tid.as_deref(),
            seq,
            epoch: room.epoch(),
            ts: unix_ms(),
        });
        match targets {
            None => {
                room.remember(seq, frame.slice(off..));
                drop(owned);
                let except = if sender_echo { None } else { Some(p.from) };
                self.broadcast(&p.rid, frame, except);
            }
            Some(targets) => {
                drop(owned);
                self.deliver_to(&p.rid, &frame, targets, t0);
            }
        }
    }

    /// Sends a frame to exactly these connections: one Deliver per local
    /// shard and per other node among them.
    fn deliver_to(&self, rid: &Id, frame: &Bytes, mut targets: Vec<ConnRef>, t0: Instant) {
        let dest = |c: &ConnRef| (c.node, if c.node == 0 { c.shard } else { 0 });
        targets.sort_by_key(dest);
        for group in targets.chunk_by(|a, b| dest(a) == dest(b)) {
            let audience = Audience::Only(group.to_vec());
            let msg = ShardMsg::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 };
            self.send_to_conn(group[0], msg);
        }
    }

    /// One Deliver per local shard and per other node holding members.
    fn broadcast(&self, rid: &Id, frame: Bytes, except: Option<ConnRef>) {
        // The destinations are copied out (into reused lists: no allocation
        // per message) because delivering to this shard inline borrows the
        // shard's tables again.
        let (mut shards, mut nodes) = self.fanout_scratch.take();
        if let Some(room) = self.owned.borrow().get(rid) {
            shards.extend(room.member_shards());
            nodes.extend(room.member_nodes());
        }
        let t0 = Instant::now();
        for &s in &shards {
            let audience = Audience::AllExcept(except.filter(|c| c.node == 0));
            self.send(s, ShardMsg::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 });
        }
        for &n in &nodes {
            let audience = Audience::AllExcept(except.filter(|c| c.node == n));
            self.send_remote(n, ShardMsg::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 });
        }
        shards.clear();
        nodes.clear();
        self.fanout_scratch.set((shards, nodes));
    }

    // ---- housekeeping ----------------------------------------------------------

    /// One sweeper tick: pings quiet connections, closes idle ones, and
    /// publishes the latency histogram once a second.
    pub(crate) fn sweep(&self) {
        let t = self.tick.get().wrapping_add(1);
        self.tick.set(t);
        self.flush_util.set(self.flush_busy_ns.replace(0) as f64 / TICK.as_nanos() as f64);
        let ticks = |d: Duration| (d.as_millis() / TICK.as_millis()).max(1) as u32;
        let ping_after = ticks(self.node.cfg.ping_interval);
        let idle_after = ticks(self.node.cfg.idle_timeout);
        let login_after = ticks(self.node.cfg.login_timeout);
        let mut to_close = Vec::new();
        let mut conns = self.conns.borrow_mut();
        let ping = Rc::new(ws::ping_frame());
        let keys: Vec<u32> = conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let e = &mut conns[key as usize];
            if e.closing.is_some() {
                continue;
            }
            release_idle_queue(e);
            if e.parked {
                // Not reading by our choice: its silence is not idleness.
                e.last_rx = t;
                continue;
            }
            let quiet = t.wrapping_sub(e.last_rx);
            if e.uid.is_none() && t.wrapping_sub(e.born) >= login_after {
                // A socket that never becomes a user holds a slot of the
                // connection cap (and a descriptor) however well it pings.
                to_close.push((key, ws::close_code::POLICY, "no login within the login timeout"));
            } else if quiet >= idle_after {
                to_close.push((key, ws::close_code::GOING_AWAY, "idle timeout"));
            } else if quiet >= ping_after && !e.pinged {
                e.pinged = true;
                self.enqueue(&mut conns, key, &ping);
            }
        }
        drop(conns);
        for (key, code, why) in to_close {
            self.stats().timeout_closes.fetch_add(1, Relaxed);
            self.begin_close(key, code, why);
        }
        self.wake_flusher();
        if t.is_multiple_of(10) {
            self.review_pin();
            let mut local = self.latency.borrow_mut();
            if let Ok(mut shared) = self.stats().latency.try_lock() {
                let _ = shared.add(&*local);
                local.reset();
            }
        }
    }

    /// Once a second: releases the shard from its core while other processes
    /// keep the core busy, and pins it again later (see [`crate::pinning`]).
    fn review_pin(&self) {
        let mut pin = self.pin.borrow_mut();
        let Some(p) = pin.as_mut() else { return };
        let t = p.tick();
        if t.refused {
            warn!(shard = self.id, core = p.core(), "the kernel refused to change the shard's CPU affinity");
        }
        match t.action {
            Action::Stay => return,
            Action::Release => {
                self.stats().core_releases.fetch_add(1, Relaxed);
                let waited = format!("{:.0}%", t.waited * 100.0);
                info!(shard = self.id, core = p.core(), waited, "core busy with other work: shard may run on any core");
            }
            Action::Repin => info!(shard = self.id, core = p.core(), "shard pinned to its core again"),
        }
        self.stats().pinned.store(p.pinned() as i64, Relaxed);
    }

    /// Accept failed for want of a descriptor: closes the connection of this
    /// shard that has waited longest without logging in, if any, so that
    /// the descriptor goes to someone who may. False when there is none.
    pub(crate) fn shed_one_unauthenticated(&self) -> bool {
        let oldest = {
            let conns = self.conns.borrow();
            if conns.iter().any(|(_, e)| e.closing.is_some()) {
                // A descriptor is about to be freed already; accept will
                // have it on its next try. Shedding more would close one
                // connection per retry.
                return false;
            }
            // Generations count registrations: the smallest is the oldest.
            conns.iter().filter(|(_, e)| e.uid.is_none()).min_by_key(|(_, e)| e.generation).map(|(k, _)| k as u32)
        };
        let Some(key) = oldest else { return false };
        self.stats().shed_connections.fetch_add(1, Relaxed);
        self.begin_close(key, TRY_AGAIN_LATER, "server is out of file descriptors");
        true
    }

    /// Begins shutdown: every connection gets a 1001 close frame.
    pub(crate) fn close_all(&self) {
        self.shutting_down.set(true);
        let keys: Vec<u32> = self.conns.borrow().iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.begin_close(key, ws::close_code::GOING_AWAY, "server shutting down");
        }
    }

    /// Open connections on this shard.
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }
}

impl ConnEntry {
    /// Replaces what is queued by a close frame and wakes the connection
    /// task to flush it and hang up. Frames not yet begun are dropped; a
    /// half-written one is kept, or the stream would be corrupt.
    fn start_close(&mut self, code: u16, reason: &str) {
        self.closing = Some(Closing { code });
        self.queue.truncate(if self.front_off > 0 { 1 } else { 0 });
        self.queue.push_back(Rc::new(ws::close_frame(code, reason)));
        self.queued = self.queue.iter().map(|f| f.len()).sum();
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

fn member_check(e: &ConnEntry, rid: &Id) -> Result<(), ProtoError> {
    if e.uid.is_none() {
        return Err(ProtoError::new(protocol::ERR_INVALID, "not logged in"));
    }
    if !e.rooms.contains(rid) {
        return Err(ProtoError::new(protocol::ERR_INVALID, "not a member of rid"));
    }
    Ok(())
}

/// Close code 1013 (RFC 6455 registry: "Try Again Later").
const TRY_AGAIN_LATER: u16 = 1013;

/// Writes a flush pass makes before it lets the shard's other runnable tasks
/// go (64 writes take a few hundred microseconds).
const FLUSH_YIELD_EVERY: usize = 64;

/// Burst of the per-connection frame bucket (all commands), which stops a
/// flood of cheap commands; messages have their own, stricter bucket.
fn frame_burst(rate: f64) -> f64 {
    (rate * 20.0).max(100.0)
}

/// The bytes for the next write of `e`'s queue: the unsent part of its only
/// frame as it is, or several frames copied into `wb` (up to
/// [`WRITE_CHUNK`] bytes) so that one write takes them all.
fn next_chunk<'a>(e: &'a ConnEntry, wb: &'a mut Vec<u8>) -> &'a [u8] {
    if e.queue.len() == 1 {
        return &e.queue[0][e.front_off..];
    }
    wb.clear();
    let mut off = e.front_off;
    for f in &e.queue {
        let room = WRITE_CHUNK - wb.len();
        if room == 0 {
            break;
        }
        let part = &f[off..];
        wb.extend_from_slice(&part[..part.len().min(room)]);
        off = 0;
    }
    wb
}

/// Drops `n` written bytes from the front of the queue.
fn consume(e: &mut ConnEntry, mut n: usize) {
    e.queued -= n;
    while n > 0 {
        let front_left = e.queue[0].len() - e.front_off;
        if n >= front_left {
            n -= front_left;
            e.queue.pop_front();
            e.front_off = 0;
        } else {
            e.front_off += n;
            n = 0;
        }
    }
    // A drained queue keeps its capacity until the next sweep
    // (`release_idle_queue`): under steady load every flush pass drains it,
    // and freeing it each time made the next pass regrow it step by step.
}

/// Queue slots a connection keeps between sweeps whatever happens; past it, a
/// queue found empty by the sweep gives its memory back (idle connections
/// stay small).
const QUEUE_KEEP: usize = 16;

/// Gives back the memory a burst grew a queue to: all of it once the queue
/// is drained, and down to twice what it holds while it stays mostly empty,
/// so that peak capacity is not kept for good under sustained load.
fn release_idle_queue(e: &mut ConnEntry) {
    let (len, cap) = (e.queue.len(), e.queue.capacity());
    if cap <= QUEUE_KEEP {
        return;
    }
    if len == 0 {
        e.queue = VecDeque::new();
    } else if len * 4 < cap {
        e.queue.shrink_to((len * 2).max(QUEUE_KEEP));
    }
}

fn raw_send(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes; fd is the
    // connection's socket, owned by its task for as long as it is registered.
    let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
