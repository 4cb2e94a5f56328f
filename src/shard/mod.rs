//! One shard: an executor's share of the node.
//!
//! A shard owns the connections the kernel handed to its listener, the rooms
//! that [`crate::placement::shard_for`] assigns to it, and an index of which
//! of its connections sit in which room. Everything here runs on one thread,
//! so state lives in `RefCell`s, borrowed only between awaits and never
//! across a handler: every message is handled by `Mesh::accept`, one
//! after another.
//!
//! Message path:
//! 1. a connection's task hands a client's frame to the shard (`input`),
//!    whose `session` turns the command into a [`Request`] for the room's
//!    owner;
//! 2. the owner (`owner`) sequences it, encodes the frame once and makes one
//!    [`Delivery`] per shard (and node) that holds members;
//! 3. each shard puts the shared bytes on its members' `outbound` queues;
//!    the flusher (`flush`) then writes every such socket once, with all
//!    its queued frames in one `send`.
//!
//! The shard is the I/O shell around two pure state machines that live in
//! folders of their own: [`crate::session`] (a connection's identity, rooms,
//! limits and outbound queue: command → requests) and [`crate::owner`] (the
//! rooms this shard owns: request → deliveries, its store behind one
//! interface with a `log` and a `redis` side).
//!
//! `Shard`'s own methods are all in this file: the connection table's
//! entry points, the one dispatch and routing. Each other part is a type
//! that owns its state (a field of `Shard`) or a task, and reaches the
//! rest through the `&Shard` it is given.
//!
//! | file | part | its type |
//! |---|---|---|
//! | `mod.rs` | the shard, its one dispatch (`Shard::handle`), routing, member deliveries | `Shard` |
//! | `life` | the shard's start (mesh, listener, log, tasks, relay) and stop | tasks |
//! | `conn` | one connection's task: the handshake, then bytes in, frames out | task |
//! | `conns` | the connection table, a TLS connection's records | `Conns` |
//! | `input` | a client's frames: admitted, parsed, turned into requests by its session | `Input` |
//! | `mesh` | queues between shards, back-pressure, parked readers | `Mesh` |
//! | `flush` | the write path: every dirty socket written once per pass | `Flusher` |
//! | `hold` | what the owner sends, waiting until its store has the messages before it | `Hold` |
//! | `log` | the log writer and syncer tasks (the embedded log) | tasks |
//! | `history` | history reads from the log's files | `Reader` |
//! | `reads` | users' read markers written beside the log, and read back at start | tasks |
//! | `redis` | the link to the shared store (`--store`): claims, appends, history reads | `RedisLink` |
//! | `cluster` | what the relay received; a change of the cluster's live nodes applied | functions |
//! | `api` | what the admin listener's server API asks of a shard | `Api`, `ApiPeers` |
//! | `sweep` | timers: pings, deadlines, the core pin, published latency | `Sweeper` |
//! | `dormant` | quiet connections without a task: one epoll per shard watches their sockets | `Dormancy` |
//! | `admission` | sockets still in their handshake (the first shed), logins' token budget | `Handshakes` |

mod admission;
mod api;
pub(crate) use api::answers;
mod cluster;
mod compress;
pub(crate) use compress::Outgoing;
pub(crate) mod conn;
mod conns;
mod directory;
mod dormant;
mod flush;
mod history;
mod hold;
mod input;
pub(crate) mod life;
mod log;
mod mesh;
mod reads;
mod redis;
mod seen;
mod sweep;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use indexmap::IndexSet;

use crate::cluster::View;
use crate::ids::Id;
use crate::msg::{Audience, ConnRef, Delivery, NodeMsg, Request, ShardMsg};
use crate::node::{Node, unix_ms};
use crate::owner::{Dest, Out, Owner};
use crate::placement::shard_for;
use crate::protocol::ProtoError;
use crate::relay::Relay;
use crate::session::Session;
pub(crate) use crate::session::outbound::OutState;
use crate::session::outbound::Pushed;
use crate::ws;
use conns::{ConnEntry, Conns};
pub(crate) use sweep::TICK;

/// A room's member connections on one shard.
#[derive(Default)]
pub(crate) struct Members {
    pub(crate) conns: IndexSet<u32>,
    /// Where the room's broadcasts this shard delivered stand (in a
    /// cluster only): should the room move to another node, its members
    /// re-join there from here, missing nothing sent meanwhile, and see
    /// none of it twice.
    pub(crate) seen: seen::Seen,
}

/// A shard's state, shared by its tasks through `Rc`.
pub struct Shard {
    /// Index of this shard.
    pub id: usize,
    /// Number of shards on the node.
    pub nshards: usize,
    /// Node-wide shared state.
    pub node: Arc<Node>,
    pub(crate) conns: RefCell<Conns>,
    /// This shard's member connections of each room (wherever its owner is).
    members: RefCell<HashMap<Id, Members>>,
    owner: RefCell<Owner>,
    /// Draining in a cluster: requests for this shard's rooms wait here
    /// until the rooms are handed over (see `life.rs`).
    handing_off: RefCell<Option<Vec<Request>>>,
    /// Requests (and the hops they made) this shard would have sent to
    /// another node by its view, while a newer view was on its way (see
    /// `on_request`, `cluster::to_owner_here`).
    view_wait: RefCell<Vec<(Request, u8)>>,
    /// Shard 0: deliveries from a node that does not own their room by
    /// this shard's view yet, `(came, rid, delivery)` (see `cluster`).
    early: RefCell<Vec<(std::time::Instant, Id, Delivery)>>,
    /// Reused: what the owner sends while handling one request.
    owner_out: RefCell<Vec<Out>>,
    /// Reused: the requests one client command makes.
    requests: RefCell<Vec<Request>>,
    /// What the owner sent, held until its store has the messages
    /// journalled before it (see `hold`).
    hold: hold::Hold,
    /// History requests waiting for the disk (see `history`).
    reader: history::Reader,
    /// The link to a shared store, with `--store` (see `redis`).
    redis: redis::RedisLink,
    /// The server API's questions between nodes (shard 0; see `api`).
    api_peers: api::ApiPeers,
    /// `getRooms` questions waiting for the room directory (see `directory`).
    directory: directory::Directory,
    pub(crate) flush: flush::Flusher,
    /// The epoll that watches quiet connections' sockets (see `dormant`).
    pub(crate) dormancy: dormant::Dormancy,
    pub(crate) mesh: mesh::Mesh,
    /// Timers: the tick, deadlines, pings, the core pin (see `sweep`).
    pub(crate) sweeper: sweep::Sweeper,
    /// Shared read buffer: every connection reads into it and copies out only
    /// the tail of an incomplete frame, so an idle socket holds no buffer.
    pub(crate) read_buf: RefCell<Box<[u8]>>,
    /// Shared too: what a TLS connection's read decrypts to.
    pub(crate) plain_buf: RefCell<Vec<u8>>,
    /// permessage-deflate: the shard's compressor and inflater.
    zip: compress::Compression,
    json_buffers: RefCell<simd_json::Buffers>,
    uid_counter: Cell<u64>,
    /// Set when the node shuts down.
    pub(crate) shutting_down: Cell<bool>,
    started: Instant,
    /// Live nodes as this shard last applied them.
    view: RefCell<Arc<View>>,
    /// The view before it: a room's owner by it may still be sending the
    /// last of what it sequenced (see `cluster::on_relay_event`).
    prev_view: RefCell<Arc<View>>,
    /// The relay (links to other nodes); only on shard 0 of a clustered node.
    relay: RefCell<Option<Rc<Relay>>>,
    /// Sockets in their handshake, oldest first (the first shed).
    pub(crate) handshakes: admission::Handshakes,
}

/// Close code 1012 (IANA registry: "Service Restart").
const SERVICE_RESTART: u16 = 1012;

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Shard {
    /// A shard with no connections yet.
    pub fn new(id: usize, node: Arc<Node>, senders: Option<Senders<ShardMsg>>) -> Self {
        let n = node.cfg.shards;
        let epochs = node.clone();
        Shard {
            id,
            nshards: n,
            conns: RefCell::new(Conns::new()),
            members: RefCell::new(HashMap::new()),
            handing_off: RefCell::new(None),
            view_wait: RefCell::new(Vec::new()),
            early: RefCell::new(Vec::new()),
            owner: RefCell::new({
                let mut o =
                    Owner::new(n, node.cfg.storage.history_memory, node.epoch, Box::new(move || epochs.next_epoch()));
                o.set_storage(
                    node.cfg.storage.history,
                    node.cfg.storage.room_evict.as_millis() as u64,
                    node.cfg.storage.max_evicted_rooms.div_ceil(n),
                );
                // A history reply must fit the client's outbound queue.
                o.reply_budget = node.cfg.limits.max_outbound_bytes / 2;
                let storage = &node.cfg.storage;
                o.dedupe = crate::owner::Window {
                    ms: storage.dedupe_window.as_millis() as u64,
                    keep: storage.history.min(crate::owner::AUTHORS),
                    max: storage.dedupe_max,
                };
                o.edit_window_ms = storage.edit_window.as_millis() as u64;
                o.retention_ms = storage.room_retention.as_millis() as u64;
                o.set_presence(
                    node.cfg.limits.presence_limit,
                    node.cfg.limits.presence_interval.as_millis() as u64,
                    node.cfg.limits.presence_grace.as_millis() as u64,
                );
                o
            }),
            owner_out: RefCell::new(Vec::new()),
            requests: RefCell::new(Vec::new()),
            hold: hold::Hold::default(),
            reader: history::Reader::default(),
            redis: redis::RedisLink::default(),
            api_peers: api::ApiPeers::default(),
            directory: directory::Directory::default(),
            flush: flush::Flusher::new(&node.cfg.tuning),
            dormancy: dormant::Dormancy::new(id, node.cfg.tuning.dormant_after.is_some())
                .expect("an epoll and a socket pair (the server's descriptors are not used up yet)"),
            mesh: mesh::Mesh::new(n, node.cfg.tuning.shard_queue, senders),
            sweeper: sweep::Sweeper::new(&node.cfg.limits, node.cfg.tuning.dormant_after),
            read_buf: RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice()),
            plain_buf: RefCell::new(Vec::new()),
            zip: compress::Compression::new(node.cfg.tuning.compress_min),
            json_buffers: RefCell::new(simd_json::Buffers::new(1024)),
            uid_counter: Cell::new(0),
            shutting_down: Cell::new(false),
            started: Instant::now(),
            view: RefCell::new(Arc::new(View::solo(&node.cfg.cluster.node_id))),
            prev_view: RefCell::new(Arc::new(View::solo(&node.cfg.cluster.node_id))),
            relay: RefCell::new(None),
            handshakes: admission::Handshakes::default(),
            node,
        }
    }

    fn stats(&self) -> &crate::metrics::ShardStats {
        &self.node.stats.shards[self.id]
    }

    /// What the server API may ask of this shard (see `api`).
    pub(crate) fn api(&self) -> api::Api<'_> {
        api::Api { sh: self }
    }

    /// What a connection's task hands the shard: its client's frames (see `input`).
    pub(crate) fn input(&self) -> input::Input<'_> {
        input::Input { sh: self }
    }

    /// Sends a message to a shard (see [`mesh::Mesh::route`]).
    pub(crate) fn route(&self, dst: usize, msg: ShardMsg) {
        self.mesh.route(self, dst, msg);
    }

    /// Hands the owner's store work out: claims and reads to the Redis
    /// link, history reads that need the disk to the reader.
    fn queue_store_work(&self) {
        self.redis.queue_jobs(self);
        self.reader.queue(self);
    }

    /// Draining in a cluster (shard 0): the relay hands this node's rooms to
    /// the others first. False when there is no relay.
    pub(crate) fn leave_cluster(&self) -> bool {
        let relay = self.relay.borrow().clone();
        relay.map(|r| r.leave()).is_some()
    }

    /// Begins shutdown: every connection gets a 1001 close frame.
    pub(crate) fn close_all(&self) {
        self.shutting_down.set(true);
        for (key, e) in self.conns.borrow_mut().iter_mut() {
            // 1012 "service restart", with a jittered hint of when to come
            // back, so that a node's clients do not all reconnect at once.
            let wait = 500 + (key as u64).wrapping_mul(2_654_435_761) % 2_500;
            e.start_close(SERVICE_RESTART, &format!("server restarting, retry in {wait} ms"));
        }
    }

    /// Open connections on this shard.
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Takes over the rooms the log held for this shard, and journals room
    /// messages from now on (see `log`).
    pub(crate) fn restore(&self, rooms: Vec<(Id, crate::store::RoomState)>, new_epoch: bool) {
        let mut owner = self.owner.borrow_mut();
        owner.restore(rooms, new_epoch);
        owner.enable_journal();
    }

    /// Gives shard 0 its relay (links to other nodes).
    pub(crate) fn set_relay(&self, relay: Rc<Relay>) {
        *self.relay.borrow_mut() = Some(relay);
    }

    // ---- connections ---------------------------------------------------

    /// Registers an upgraded connection; returns its slot.
    pub(crate) fn register(&self, fd: RawFd, deflate: bool, ip: Option<std::net::IpAddr>) -> u32 {
        let session = Session::new(self.node.cfg.limits.rate_limit, self.now_ms());
        let (key, _) = self.conns.borrow_mut().insert(fd, session, self.sweeper.now(), deflate, ip);
        self.stats().connections.fetch_add(1, Relaxed);
        key
    }

    fn conn_ref(&self, key: u32, generation: u32) -> ConnRef {
        ConnRef { node: 0, shard: self.id as u16, key, generation }
    }

    /// Forgets a connection: leaves its rooms (telling their owners).
    pub(crate) fn unregister(&self, key: u32) {
        let mut e = self.conns.borrow_mut().remove(key);
        self.stats().connections.fetch_sub(1, Relaxed);
        self.node.open.fetch_sub(1, Relaxed);
        if let Some(ip) = e.ip.take() {
            self.node.per_ip.release(ip);
        }
        let me = self.conn_ref(key, e.generation);
        for rid in e.session.take_rooms() {
            self.unindex(&rid, key);
            self.to_owner(Request::Leave { rid, conn: me, ack: false });
        }
    }

    fn unindex(&self, rid: &Id, key: u32) {
        let mut members = self.members.borrow_mut();
        if let Some(set) = members.get_mut(rid) {
            set.conns.swap_remove(&key);
            if set.conns.is_empty() {
                members.remove(rid);
                let len = members.len();
                if members.capacity() > 1024 && len * 4 < members.capacity() {
                    members.shrink_to(len * 2);
                }
            }
        }
    }

    /// Notes input activity (for the idle timeout).
    pub(crate) fn touch(&self, key: u32) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key) {
            e.last_rx = self.sweeper.now();
            e.pinged = false;
            if e.rest == dormant::Rest::Declined {
                e.rest = dormant::Rest::Awake;
            }
        }
    }

    /// Where a connection's queue stands (Closing once it is gone).
    pub(crate) fn out_state(&self, key: u32) -> OutState {
        self.conns.borrow().get(key).map_or(OutState::Closing(ws::close_code::GOING_AWAY), |e| e.out.state())
    }

    /// Keeps the connection task's waker, so the shard can wake it.
    pub(crate) fn set_waker(&self, key: u32, w: &std::task::Waker) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key) {
            e.set_waker(w);
        }
    }

    /// Bytes still queued for a connection.
    pub(crate) fn queued(&self, key: u32) -> usize {
        self.conns.borrow().get(key).map_or(0, |e| e.out.queued())
    }

    /// Starts closing a connection with a close frame (see [`crate::session::outbound`]).
    pub(crate) fn begin_close(&self, key: u32, code: u16, reason: &str) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key) {
            e.start_close(code, reason);
        }
    }

    /// Queues a frame on a connection; false if it is closing or was just
    /// closed for passing its outbound cap.
    fn push(&self, key: u32, e: &mut ConnEntry, frame: &Outgoing) -> bool {
        let frame = self.zip.pick(e.deflate, frame, self.stats());
        match e.out.push(frame, self.node.cfg.limits.max_outbound_bytes) {
            Pushed::Queued { newly_dirty } => {
                if newly_dirty {
                    self.flush.mark(key);
                }
                true
            }
            Pushed::Refused => false,
            Pushed::Overflow => {
                // Slow consumer: close with 1008 rather than grow without bound.
                self.stats().slow_consumer_closes.fetch_add(1, Relaxed);
                e.start_close(ws::close_code::POLICY, "outbound queue full");
                false
            }
        }
    }

    /// Queues a frame to one local connection and schedules the flush.
    pub(crate) fn send_frame(&self, key: u32, frame: Bytes) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key) {
            self.push(key, e, &Outgoing::new(frame));
        }
        self.flush.wake();
    }

    fn send_error(&self, key: u32, err: &ProtoError) {
        self.stats().error(err.code);
        self.send_frame(key, err.encode());
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

    // ---- routing -------------------------------------------------------------

    /// Sends a request to the owner of its room: a shard of this node, or
    /// another node through the relay (whose shard there is its own choice).
    fn to_owner(&self, req: Request) {
        let owner = self.view.borrow().owner(req.rid());
        match (owner, req.conn().node) {
            (0, _) => self.route(shard_for(req.rid(), self.nshards), ShardMsg::ToOwner(req)),
            (node, 0) => self.to_node(node, NodeMsg::ToOwner(req)),
            // Another node's connection (a request that waited here for a
            // room that moved): passed on naming that node.
            (node, from) => {
                // (A node unknown here has no connection here either.)
                if let Some(origin) = self.node_name(from) {
                    self.to_node(node, NodeMsg::Forwarded { origin, hops: 1, req });
                }
            }
        }
    }

    /// A node's name, by its index here (0: this node).
    pub(crate) fn node_name(&self, n: u16) -> Option<Arc<str>> {
        match n {
            0 => Some(self.node.cfg.cluster.node_id.as_str().into()),
            // By the node table: a draining node is out of the view already.
            n => self.node.cluster.lock().expect("cluster table").names.get(n as usize).cloned(),
        }
    }

    /// Draining: requests for this shard's rooms wait from now on.
    pub(crate) fn start_hand_off(&self) {
        self.handing_off.borrow_mut().get_or_insert_default();
    }

    /// The rooms were handed over (or there is no one to hand them to):
    /// what waited goes to the rooms' owners now, in order.
    pub(crate) fn end_hand_off(&self) {
        let Some(waiting) = self.handing_off.borrow_mut().take() else { return };
        for req in waiting {
            self.to_owner(req);
        }
    }

    /// Sends what an owner made to its destination.
    fn send_out(&self, o: Out) {
        match o.dest {
            // Replies to the server API's pseudo-connection go nowhere.
            Dest::Shard(s) if s >= self.nshards => {}
            Dest::Shard(s) => self.route(s, ShardMsg::ToMembers(o.msg)),
            Dest::Node(n) => self.to_node(n, NodeMsg::ToMembers(o.msg)),
        }
    }

    /// Hands a message to the relay (on shard 0) for another node.
    fn to_node(&self, node: u16, msg: NodeMsg) {
        if self.id != 0 {
            return self.route(0, ShardMsg::ToNode(node, Box::new(msg)));
        }
        if let Some(relay) = self.relay.borrow().as_ref() {
            relay.send(node, &msg);
        }
    }

    /// The one dispatch: every message a shard handles, from any shard (this
    /// one included), comes through here, by way of [`mesh::Mesh::accept`].
    fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::ToOwner(req) => self.on_request(req),
            ShardMsg::ToMembers(d) => self.on_delivery(d),
            ShardMsg::ToNode(node, msg) => self.to_node(node, *msg),
            ShardMsg::ClusterChanged { view, down } => cluster::apply(self, view, down),
            ShardMsg::Api(q) => {
                self.owner.borrow_mut().answer(q, unix_ms());
                self.queue_store_work();
            }
            ShardMsg::Disconnect { uid, code } => {
                for (_, e) in self.conns.borrow_mut().iter_mut() {
                    if e.session.identity().is_some_and(|(u, _, _)| *u == uid) {
                        e.start_close(code, "disconnected by the server");
                    }
                }
            }
            ShardMsg::Knock { uid, frame } => {
                let frame = Outgoing::new(frame);
                let mut conns = self.conns.borrow_mut();
                let keys: Vec<u32> = conns
                    .iter()
                    .filter(|(_, e)| e.session.identity().is_some_and(|(u, _, _)| *u == uid))
                    .map(|(k, _)| k)
                    .collect();
                for key in keys {
                    if let Some(e) = conns.get_mut(key) {
                        self.push(key, e, &frame);
                    }
                }
                drop(conns);
                self.flush.wake();
            }
        }
    }

    /// A request for a room this shard owns.
    fn on_request(&self, req: Request) {
        if let Some(waiting) = self.handing_off.borrow_mut().as_mut() {
            return waiting.push(req);
        }
        // Sent here (by another shard, or released by the store) before
        // the room moved to another node: on to its owner there. Unless
        // this shard's view is behind the node's: the sender may have
        // routed by the newer one (a member re-joining the room that moved
        // here), so it waits for that view (`cluster::apply`).
        let view = self.view.borrow().clone();
        if view.owner(req.rid()) != 0 {
            if view.number < self.node.view_gen.load(std::sync::atomic::Ordering::Acquire) {
                return self.view_wait.borrow_mut().push((req, 0));
            }
            return self.to_owner(req);
        }
        let mut out = std::mem::take(&mut *self.owner_out.borrow_mut());
        let knocks;
        {
            let mut owner = self.owner.borrow_mut();
            let live = owner.live_rooms();
            if let Some(code) = owner.handle(req, unix_ms(), &mut out) {
                self.stats().error(code);
            }
            knocks = owner.take_knocks();
            if owner.live_rooms() != live {
                self.stats().rooms.store(owner.live_rooms() as i64, Relaxed);
            }
        }
        self.hold.send_or_hold(self, &mut out);
        *self.owner_out.borrow_mut() = out;
        for (uid, frame) in knocks {
            self.knock(uid, frame);
        }
    }

    /// A direct conversation knocks for a user not in it: every connection
    /// of that user, on every shard of every live node, is told.
    fn knock(&self, uid: Id, frame: Bytes) {
        for n in self.api().other_nodes() {
            self.to_node(n, NodeMsg::Knock { uid: uid.clone(), frame: frame.clone() });
        }
        for s in 0..self.nshards {
            self.route(s, ShardMsg::Knock { uid: uid.clone(), frame: frame.clone() });
        }
    }

    /// Big rooms' presence batches that are due (on the sweeper's tick).
    fn tick_presence(&self) {
        let mut out = std::mem::take(&mut *self.owner_out.borrow_mut());
        self.owner.borrow_mut().tick_presence(unix_ms(), &mut out);
        self.hold.send_or_hold(self, &mut out);
        *self.owner_out.borrow_mut() = out;
    }

    /// An owner's delivery to this shard's members.
    fn on_delivery(&self, d: Delivery) {
        let mut conns = self.conns.borrow_mut();
        match d {
            Delivery::Joined { rid, conn, ack } => {
                let Some(e) = conns.by_ref(conn) else { return };
                if e.session.rooms().contains(&rid) {
                    e.session.joined(&rid);
                    self.members.borrow_mut().entry(rid).or_default().conns.insert(conn.key);
                }
                self.push(conn.key, e, &Outgoing::new(ack));
            }
            Delivery::Deliver { rid, frame, audience, t0 } => {
                let mut n = 0u64;
                // The frame is wrapped once for all local recipients, and
                // not at all on a shard without any (a broadcast from
                // another node reaches every shard).
                match audience {
                    Audience::AllExcept(except) => {
                        let mut members = self.members.borrow_mut();
                        if let Some(set) = members.get_mut(&rid) {
                            // A broadcast already delivered (a re-join's
                            // catch-up overlapping what came live) is
                            // dropped: no member sees a message twice; one
                            // that came late (an old owner's) is delivered.
                            if self.node.clustered()
                                && let Some(p) = crate::protocol::room_point(&frame)
                                && !set.seen.take(p)
                            {
                                return;
                            }
                            let frame = Outgoing::new(frame);
                            let skip = except.filter(|c| c.node == 0 && c.shard as usize == self.id).map(|c| c.key);
                            for &key in &set.conns {
                                if Some(key) != skip
                                    && let Some(e) = conns.get_mut(key)
                                    && self.push(key, e, &frame)
                                {
                                    n += 1;
                                }
                            }
                        }
                    }
                    Audience::Only(targets) => {
                        let frame = Outgoing::new(frame);
                        for c in targets {
                            if let Some(e) = conns.by_ref(c)
                                && self.push(c.key, e, &frame)
                            {
                                n += 1;
                            }
                        }
                    }
                }
                self.stats().deliveries.fetch_add(n, Relaxed);
                let us = t0.elapsed().as_micros() as u64;
                self.sweeper.record_latency(us);
            }
            Delivery::Direct { conn, frame } => {
                if let Some(e) = conns.by_ref(conn) {
                    self.push(conn.key, e, &Outgoing::new(frame));
                }
            }
        }
        drop(conns);
        self.flush.wake();
    }
}
