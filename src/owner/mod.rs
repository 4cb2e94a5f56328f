//! The rooms this shard owns. A [`Request`] goes in; the deliveries it makes,
//! each with its destination shard or node, come out. No I/O: the shard
//! routes what comes out.
//!
//! The owner is a room's single point of order: it admits members, numbers
//! messages (`seq`), keeps the recent ones for `getHistory`, and encodes
//! every outgoing frame once. A broadcast becomes one [`Delivery::Deliver`]
//! per shard and per other node that holds members, all sharing the bytes.
//!
//! | file | part |
//! |---|---|
//! | `mod.rs` | the owner, its one dispatch (`Owner::handle`), members, messages, admission, broadcast |
//! | `presence` | who is told when users come, go and type, and when (batches, grace) |
//! | `storage` | the owner's entry points for its store (the only other home of `Owner`'s methods) |
//! | `store` | the one interface to a room's store; `log`, `redis`: the embedded log's and the shared store's side |
//! | `room` | one room: roster, sequence, recent history |
//! | `changes` | edits, deletions, reactions |
//! | `dedupe` | the client ids (`mid`) a room remembers |
//! | `reads` | read markers |

use std::collections::{HashMap, VecDeque};

use std::time::Instant;

use bytes::Bytes;

use crate::cluster::View;
use crate::ids::{Id, Name};
use crate::msg::{self, Audience, ConnRef, Delivery, Publish, Request};
use crate::owner::room::{Change, Joined, Room};
use crate::protocol::{self, ChangeKind, ERR_INVALID, MessageOut, ProtoError};
use crate::store::Journal;
use crate::store::redis::Refusal;

mod changes;
pub(crate) use changes::AUTHORS;
mod dedupe;
pub(crate) use dedupe::Window;
mod log;
mod presence;
pub(crate) mod reads;
pub(crate) use log::{DiskRead, ReadReply, Resume, fit};
mod redis;
pub(crate) use redis::{MarkJob, RemoteRead, StoreJobs};
pub mod room;
mod storage;
mod store;
use presence::Presence;
pub(crate) use store::RecordTag;
use store::{Gate, RoomStore};

/// How long messages are refused after the store could not take them
/// (then the next one tries again).
const STORE_RETRY_MS: u64 = 1000;

/// `Owner::store_down`'s value for a store that refused at `now_ms`: until
/// when, and what senders are told.
fn refuse_for_a_while(now_ms: u64, why: Refusal) -> (u64, &'static str) {
    (now_ms + STORE_RETRY_MS, why.text())
}

/// Where a delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dest {
    /// A shard of this node.
    Shard(usize),
    /// Another node (through the relay).
    Node(u16),
}

impl Dest {
    /// Where a connection lives.
    pub(crate) fn of(c: ConnRef) -> Dest {
        if c.node == 0 { Dest::Shard(c.shard as usize) } else { Dest::Node(c.node) }
    }
}

/// One delivery and its destination.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) dest: Dest,
    pub(crate) msg: Delivery,
}

/// The rooms one shard owns.
pub(crate) struct Owner {
    rooms: HashMap<Id, Room>,
    nshards: usize,
    history_cap: usize,
    /// Rooms with members.
    live: usize,
    /// The epoch a room that was never used reports (the node's start).
    node_epoch: u64,
    /// Who is told when users come, go and type (see `presence`).
    presence: Presence,
    /// Epochs for new room sequences (strictly increasing per node).
    next_epoch: Box<dyn Fn() -> u64>,
    /// Reused destination lists of a broadcast.
    shards: Vec<usize>,
    nodes: Vec<u16>,
    /// Room messages waiting for the log writer (None: `--durability memory`).
    journal: Option<Journal>,
    /// The room message the last request journalled: its deliveries are
    /// held with it, so that a store that fails to take it can refuse it.
    last_journalled: Option<RecordTag>,
    /// While the store cannot take messages: they are refused until this
    /// Unix time (ms), then tried again; and what their senders are told.
    store_down: (u64, &'static str),
    /// Where history and sequence are kept (the embedded log, or a shared
    /// store): the owner talks to it through [`RoomStore`] only.
    store: Box<dyn RoomStore>,
    /// Messages a room's history reaches (`--history`).
    history_reach: usize,
    /// An empty room is evicted this long after it emptied.
    evict_ms: u64,
    /// Rooms that emptied, and when they may be evicted, oldest first.
    idle: VecDeque<(Id, u64)>,
    /// Bytes of messages one history answer may carry.
    pub(crate) reply_budget: usize,
    /// How long and how many message ids a room remembers (see `dedupe`).
    pub(crate) dedupe: dedupe::Window,
    /// Logins resuming a room, waiting for a history read: they become
    /// members when it answers, unless they left meanwhile; messages they
    /// send to it meanwhile wait with them.
    resuming: HashMap<(ConnRef, Id), Vec<Request>>,
    /// Rooms whose message ids are being read back from their store, with
    /// the messages waiting for them (see [`Owner::load_mids`]).
    mids_loading: HashMap<Id, Vec<Request>>,
    /// Each user's read marker in the rooms this shard owns.
    pub(crate) reads: reads::Reads,
    /// How long after sending a message its author may edit or delete it (ms).
    pub(crate) edit_window_ms: u64,
    /// Messages older than this are served by no history page
    /// (`--retention-days`); 0: none.
    pub(crate) retention_ms: u64,
    /// Knocks for the shard to spread: a direct conversation's message for
    /// a user not in it, `(uid, frame)` (see [`Owner::take_knocks`]).
    knocks: Vec<(Id, Bytes)>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").field("rooms", &self.rooms.len()).field("live", &self.live).finish_non_exhaustive()
    }
}

/// Messages one room may queue while its ids are read back.
const MAX_WAITING: usize = 1024;

/// Bytes of room messages the journal may hold while a write is in progress.
const JOURNAL_MAX: usize = 16 << 20;

fn err(conn: ConnRef, why: &'static str) -> Out {
    Out { dest: Dest::of(conn), msg: Delivery::Direct { conn, frame: ProtoError::new(ERR_INVALID, why).encode() } }
}

impl Owner {
    /// No rooms yet, on a node of `nshards` shards, keeping `history_cap`
    /// messages per room.
    /// `node_epoch` is what a never-used room reports; `next_epoch` starts
    /// each new room sequence.
    pub(crate) fn new(nshards: usize, history_cap: usize, node_epoch: u64, next_epoch: Box<dyn Fn() -> u64>) -> Self {
        Owner {
            rooms: HashMap::new(),
            nshards,
            history_cap,
            live: 0,
            node_epoch,
            presence: Presence::default(),
            next_epoch,
            shards: Vec::new(),
            nodes: Vec::new(),
            journal: None,
            last_journalled: None,
            store_down: (0, ""),
            store: Box::new(log::LogRoomStore::new(history_cap, usize::MAX, false)),
            history_reach: history_cap,
            evict_ms: 10_000,
            idle: VecDeque::new(),
            reply_budget: usize::MAX,
            dedupe: dedupe::Window::default(),
            resuming: HashMap::new(),
            mids_loading: HashMap::new(),
            knocks: Vec::new(),
            reads: reads::Reads::default(),
            edit_window_ms: 24 * 3600 * 1000,
            retention_ms: 0,
        }
    }

    /// Rooms with more than `limit` users announce joins and leaves in one
    /// presence frame per `interval_ms` instead of one frame per event.
    pub(crate) fn set_presence(&mut self, limit: usize, interval_ms: u64, grace_ms: u64) {
        self.presence.set(limit, interval_ms, grace_ms);
    }

    /// The journal, when there is one.
    pub(crate) fn journal(&mut self) -> Option<&mut Journal> {
        self.journal.as_mut()
    }

    /// The room message the last request journalled, taken (see `shard/log.rs`).
    pub(crate) fn take_record_tag(&mut self) -> Option<RecordTag> {
        self.last_journalled.take()
    }

    /// The store could not take messages (at Unix ms `now_ms`): refuse them
    /// for a while, telling their senders `why`.
    pub(crate) fn store_down(&mut self, now_ms: u64, why: Refusal) {
        self.store_down = refuse_for_a_while(now_ms, why);
    }

    /// Rooms with members.
    pub(crate) fn live_rooms(&self) -> usize {
        self.live
    }

    /// Handles one request at Unix time `now_ms`. Returns the error code of
    /// the error reply it made, if it made one.
    pub(crate) fn handle(&mut self, req: Request, now_ms: u64, out: &mut Vec<Out>) -> Option<u16> {
        // A room whose store is busy with it (a claim) takes every request
        // in order, joins and leaves too, and hands them back after.
        let req = self.store.hold(req)?;
        match req {
            // A resume this owner took already (or is reading for): the
            // same login twice, as a node that drained handed on the one it
            // held while the member's node made it again for the room's
            // move. One answer: a second would replay the messages again.
            Request::Join { ref rid, conn, rejoin: false, since: Some(_), .. }
                if self.resuming.contains_key(&(conn, rid.clone()))
                    || self.rooms.get(rid).is_some_and(|r| r.member(&conn).is_some()) => {}
            Request::Join { ref rid, rejoin: false, since: Some(_), .. } if self.claim_first(rid, now_ms) => {
                // A shared store's room is resumed once claimed: only then
                // is its epoch known (the claim hands the join back).
                let rid = rid.clone();
                let mut req = Some(req);
                let gate = self.store.admit(&rid, &mut req, &mut self.rooms, &*self.next_epoch, now_ms);
                if let Some(Request::Join { rid, conn, uid, name, echo, since: Some(since), .. }) = req {
                    debug_assert!(!matches!(gate, Gate::Queued), "a queued join is taken");
                    let r = Resume { rid, conn, uid, name, echo, epoch: since.epoch, since: since.seq, top: 0 };
                    self.resume(Box::new(r), now_ms, out)
                }
            }
            Request::Join { rid, conn, uid, name, echo, rejoin: false, since: Some(since) } => {
                let r = Resume { rid, conn, uid, name, echo, epoch: since.epoch, since: since.seq, top: 0 };
                self.resume(Box::new(r), now_ms, out)
            }
            Request::Join { rid, conn, uid, name, echo, rejoin: true, since: Some(since) } => {
                self.join(rid.clone(), conn, uid, name, echo, true, None, now_ms, out);
                self.catch_up(&rid, conn, since, out);
            }
            Request::Join { rid, conn, uid, name, echo, rejoin, .. } => {
                self.join(rid, conn, uid, name, echo, rejoin, None, now_ms, out)
            }
            Request::Leave { rid, conn, ack } => self.leave(rid, conn, ack, now_ms, out),
            Request::Publish(p) => return self.publish(p, now_ms, out),
            Request::Change(c) => return self.change(c, now_ms, out),
            Request::Typing { rid, conn, uid, name } => self.typing(rid, conn, uid, name, now_ms, out),
            Request::Read { rid, conn, uid, seq } => self.read(rid, conn, uid, seq, out),
            Request::GetOnline { rid, conn, after, limit } => {
                let limit = limit.unwrap_or(protocol::MAX_PAGE).min(protocol::MAX_PAGE);
                let frame = match self.rooms.get(&rid) {
                    Some(room) => {
                        let (users, next) = room.users_page(after.as_deref(), limit);
                        protocol::encode_online(&rid, users.into_iter(), room.user_count(), next)
                    }
                    None => protocol::encode_online(&rid, std::iter::empty(), 0, None),
                };
                out.push(Out { dest: Dest::of(conn), msg: Delivery::Direct { conn, frame } });
            }
            Request::GetHistory { ref rid, .. } if self.mids_loading.contains_key(rid) => {
                // Its page waits until the room's changes are read back.
                let rid = rid.clone();
                self.mids_loading.get_mut(&rid).expect("checked").push(req);
            }
            Request::GetHistory { rid, conn, since, before, epoch, limit } => {
                let limit = limit.unwrap_or(protocol::MAX_PAGE).min(protocol::MAX_PAGE);
                let reply = ReadReply::Conn(conn);
                if let Some((_, epoch, mut msgs)) = self.plan_history(&rid, since, before, epoch, limit, reply) {
                    self.fold_history(&rid, &mut msgs, now_ms);
                    let frame = protocol::encode_history(&rid, epoch, msgs.iter().map(|b| &b[..]));
                    out.push(Out { dest: Dest::of(conn), msg: Delivery::Direct { conn, frame } });
                }
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        rid: Id,
        conn: ConnRef,
        uid: Id,
        name: Name,
        echo: bool,
        rejoin: bool,
        ack: Option<Bytes>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) {
        self.room_or_load(&rid);
        let read = if ack.is_none() && !rejoin { self.read_state(&rid, &uid) } else { None };
        let room = self.rooms.get_mut(&rid).expect("loaded");
        let was_empty = room.is_empty();
        let joined = room.join(conn, &uid, &name, echo);
        if was_empty && !room.is_empty() {
            self.live += 1;
        }
        if rejoin {
            // The member already has its ack and its place; join quietly.
            return;
        }
        let ack = ack.unwrap_or_else(|| protocol::encode_login_ack(&uid, &name, &rid, read, None, std::iter::empty()));
        out.push(Out { dest: Dest::of(conn), msg: Delivery::Joined { rid: rid.clone(), conn, ack } });
        // A change of name reaches the room whichever of the user's old and
        // new connections the owner hears from first: a new connection under
        // another name while the old one is still here (Renamed), or after it
        // left within the grace period (NewUser, and a pending departure).
        let big = self.presence.big(room.user_count());
        // Back within the grace period under the same name: neither leave
        // nor join is announced (under another name, the room learns it).
        if joined == Joined::Renamed || (joined == Joined::NewUser && !self.presence.back(&rid, &uid, &name)) {
            self.announce(&rid, &uid, &name, Change::Joined, big, Some(conn), now_ms, out);
        }
    }

    /// Announces a user's arrival or departure: at once with CChat's frame
    /// in a room of up to `--presence-limit` users, else in the room's next
    /// presence batch (see [`Owner::tick_presence`]).
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &mut self,
        rid: &Id,
        uid: &Id,
        name: &Name,
        change: Change,
        big: bool,
        except: Option<ConnRef>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) {
        let Some(room) = self.rooms.get_mut(rid) else { return };
        if let Some(frame) = self.presence.announce(rid, room, uid, name, change, big, now_ms) {
            self.broadcast(rid, frame, except, Instant::now(), out);
        }
    }

    /// Sends each big room whose interval is over one presence frame with
    /// what changed: at most one per room per `--presence-interval-ms`,
    /// however fast members come and go.
    pub(crate) fn tick_presence(&mut self, now_ms: u64, out: &mut Vec<Out>) {
        for (rid, uid, name) in self.presence.departures_due(now_ms) {
            let Some(room) = self.rooms.get(&rid) else { continue };
            if room.user(&uid).is_none() {
                let big = self.presence.big(room.user_count() + 1);
                self.announce(&rid, &uid, &name, Change::Left, big, None, now_ms, out);
            }
        }
        for rid in self.presence.batches_due(now_ms) {
            let Some(room) = self.rooms.get_mut(&rid) else { continue };
            let d = room.take_presence(protocol::PRESENCE_LIST_MAX);
            if d.totals == (0, 0) {
                continue;
            }
            let joined = d.joined.iter().map(|(u, n)| (u.as_str(), n.as_str()));
            let left = d.left.iter().map(|(u, n)| (u.as_str(), n.as_str()));
            let frame = protocol::encode_presence_batch(&rid, joined, left, d.totals, room.user_count());
            self.broadcast(&rid, frame, None, Instant::now(), out);
        }
    }

    fn leave(&mut self, rid: Id, conn: ConnRef, ack: bool, now_ms: u64, out: &mut Vec<Out>) {
        self.resuming.remove(&(conn, rid.clone()));
        let left = self.rooms.get_mut(&rid).and_then(|room| {
            let left = room.leave(conn)?;
            Some((left, room.is_empty(), room.user_count() + 1))
        });
        if ack {
            out.push(Out {
                dest: Dest::of(conn),
                msg: Delivery::Direct { conn, frame: protocol::encode_logout(&rid) },
            });
        }
        let Some((left, emptied, users_before)) = left else { return };
        if emptied {
            self.emptied(&rid, now_ms);
            return; // nobody is left to tell
        }
        if left.user_gone {
            // A disconnect (not a logout): the user may be back in a moment.
            let big = self.presence.big(users_before);
            if !self.presence.hold_departure(&rid, &left.uid, &left.name, ack, now_ms) {
                self.announce(&rid, &left.uid, &left.name, Change::Left, big, None, now_ms, out);
            }
        }
    }

    /// A room's last member left (or its node died). An empty room that
    /// never had a message holds nothing worth keeping
    /// (no seq was handed out in its epoch): it is forgotten at once, so
    /// joining and leaving rooms cannot grow the server's memory. A room
    /// with messages is evicted a little later (with a log: its index stays).
    fn emptied(&mut self, rid: &Id, now_ms: u64) {
        self.live -= 1;
        self.presence.emptied(rid);
        match self.rooms.get(rid).map(Room::seq) {
            Some(0) => {
                self.rooms.remove(rid);
                self.store.forgotten(rid);
                self.shrink_rooms();
            }
            Some(_) => self.schedule_evict(rid, now_ms),
            None => {}
        }
    }

    /// Gives back a room table that a burst of rooms grew, once it is mostly empty.
    fn shrink_rooms(&mut self) {
        let len = self.rooms.len();
        if self.rooms.capacity() > 1024 && len * 4 < self.rooms.capacity() {
            self.rooms.shrink_to(len * 2);
        }
    }

    /// Rooms held in memory (with or without members).
    #[cfg(test)]
    pub(crate) fn rooms_held(&self) -> usize {
        self.rooms.len()
    }

    fn publish(&mut self, p: Box<Publish>, now_ms: u64, out: &mut Vec<Out>) -> Option<u16> {
        if (p.from.is_api() || p.from.node != 0) && !self.rooms.contains_key(&p.rid) {
            // The server API publishes to any room, as no member: everyone
            // gets it, and it is stored like any message. So does another
            // node's connection, whose re-join this message overtook (see
            // below): the members re-joining get it by their catch-up.
            self.room_or_load(&p.rid);
            self.schedule_evict(&p.rid, now_ms);
        }
        let (rid, from, stored) = (p.rid.clone(), p.from, p.tid.is_none());
        let p = match self.admit(&rid, from, stored, Request::Publish(p), now_ms, out) {
            Ok(Request::Publish(p)) => p,
            Ok(_) => unreachable!("given back as it came"),
            Err(code) => return code,
        };
        let Some(room) = self.rooms.get_mut(&p.rid) else {
            out.push(err(p.from, "not a member of rid"));
            return Some(ERR_INVALID);
        };
        let from_api = p.from.is_api();
        // A connection on another node that is not a member here (yet):
        // the room just moved here, and its message overtook its re-join
        // (it came by the old owner, which passed it on). Its node's
        // session let it send (it is in the room there, and peers are
        // authenticated): taken, echoed as its session says.
        let overtaken = p.from.node != 0;
        let echo = room.member(&p.from).map(|m| m.echo).or(from_api.then_some(true)).or(overtaken.then_some(p.echo));
        let Some(sender_echo) = echo else {
            out.push(err(p.from, "not a member of rid"));
            return Some(ERR_INVALID);
        };
        // With a `tid`, exactly the target's connections (and the sender's,
        // with echo) get it; without, the whole room.
        let targets = match &p.tid {
            None => None,
            Some(tid) => {
                let Some(target) = room.user(tid) else {
                    out.push(err(p.from, "tid is not in the room"));
                    return Some(ERR_INVALID);
                };
                let mut targets = target.conns.clone();
                if sender_echo && !targets.contains(&p.from) {
                    targets.push(p.from);
                }
                Some(targets)
            }
        };
        // A room message sent again under its `mid` (its sender did not see
        // the answer): not posted twice; the sender gets the original's
        // numbers back, behind anything not yet stored like any reply.
        let mid = p.mid.as_deref().filter(|_| targets.is_none());
        if let Some(orig) = mid.and_then(|mid| room.dup(&p.uid, mid)) {
            let frame = protocol::encode_dup(&MessageOut {
                uid: &p.uid,
                name: &p.name,
                mtype: p.mtype,
                rid: &p.rid,
                msg: &p.msg,
                tid: None,
                mid,
                reply: p.reply,
                seq: orig.seq,
                epoch: orig.epoch,
                ts: orig.ts,
            });
            out.push(Out { dest: Dest::of(p.from), msg: Delivery::Direct { conn: p.from, frame } });
            return None;
        }
        // A private message is not one of the room's messages: it carries the
        // room's current seq and does not advance it, so other members see no
        // gap.
        let seq = if targets.is_none() { room.next_seq() } else { room.seq() };
        if let Some(mid) = mid {
            let orig = dedupe::Original { epoch: room.epoch(), seq, ts: now_ms };
            room.note_mid(&p.uid, mid, orig, self.dedupe, now_ms);
        }
        let t0 = Instant::now();
        let (frame, off) = protocol::encode_message(&MessageOut {
            uid: &p.uid,
            name: &p.name,
            mtype: p.mtype,
            rid: &p.rid,
            msg: &p.msg,
            tid: p.tid.as_deref(),
            mid: p.mid.as_deref(),
            reply: p.reply,
            seq,
            epoch: room.epoch(),
            ts: now_ms,
        });
        match targets {
            None => {
                let json = frame.slice(off..);
                if let Some(j) = self.journal.as_mut() {
                    j.append(room.epoch(), seq, now_ms, &p.rid, &json, room.token());
                    self.last_journalled =
                        Some(RecordTag { rid: p.rid.clone(), token: room.token(), seq, from: p.from });
                }
                room.remember(seq, json);
                room.changes.get_or_insert_default().note_message(seq, &p.uid, now_ms);
                knock(room, &p, now_ms, &mut self.knocks);
                let except = if sender_echo { None } else { Some(p.from) };
                self.broadcast(&p.rid, frame, except, t0, out);
            }
            Some(targets) => deliver_to(&p.rid, &frame, targets, t0, out),
        }
        None
    }

    /// Whether a resume of `rid` should first let the store claim the room
    /// (brought into memory here if it was not): not while the store is
    /// known to be down (the resume then says it could not recover).
    fn claim_first(&mut self, rid: &Id, now_ms: u64) -> bool {
        self.room_or_load(rid);
        now_ms >= self.store_down.0
    }

    /// Whether a room message or event (`stored`) from `from` may be
    /// handled now: refused while the store is down or behind (its sender
    /// told), held while the room's claim, its message ids or the sender's
    /// resume are under way (handed back later, in order); else given back.
    fn admit(
        &mut self,
        rid: &Id,
        from: ConnRef,
        stored: bool,
        req: Request,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) -> Result<Request, Option<u16>> {
        if now_ms < self.store_down.0 && stored {
            out.push(err(from, self.store_down.1));
            return Err(Some(ERR_INVALID));
        }
        // A disk that stalls must not let the journal (and what waits behind
        // it) grow without bound: past this, messages are refused until the
        // writer catches up.
        if stored && self.journal.as_ref().is_some_and(|j| j.pending_bytes() > JOURNAL_MAX) {
            out.push(err(from, "message store is behind, try again shortly"));
            return Err(Some(ERR_INVALID));
        }
        // With a shared store, a room's messages wait for its claim (the
        // request moves as it came, boxed: nothing is allocated for this).
        let mut req = Some(req);
        match self.store.admit(rid, &mut req, &mut self.rooms, &*self.next_epoch, now_ms) {
            Gate::Open => {}
            Gate::Queued => return Err(None),
            Gate::Refuse(why) => {
                out.push(err(from, why));
                return Err(Some(ERR_INVALID));
            }
        }
        let req = req.expect("not taken when open");
        // Its sender is still resuming the room, or the room's message ids
        // are still being read back: it waits for them.
        let resuming = self.resuming.get_mut(&(from, rid.clone()));
        if let Some(waiting) = resuming.or(self.mids_loading.get_mut(rid)) {
            if waiting.len() >= MAX_WAITING {
                out.push(err(from, "room is loading, try again shortly"));
                return Err(Some(ERR_INVALID));
            }
            waiting.push(req);
            return Err(None);
        }
        Ok(req)
    }

    /// A member is typing: the room's other connections are told, at most
    /// once per user per [`presence::TYPING_EVERY_MS`], and not at all in a room past
    /// `--presence-limit` users (where it would be noise, and costly).
    fn typing(&mut self, rid: Id, conn: ConnRef, uid: Id, name: Name, now_ms: u64, out: &mut Vec<Out>) {
        let Some(room) = self.rooms.get(&rid).filter(|r| r.member(&conn).is_some()) else { return };
        if self.presence.typing(&rid, &uid, room.user_count(), now_ms) {
            let frame = protocol::encode_presence("typing", &uid, &name, &rid);
            self.broadcast(&rid, frame, Some(conn), Instant::now(), out);
        }
    }

    /// A member read its room up to `seq`: its user's marker moves there
    /// (never past the room's newest seq, never back), and the user's
    /// other connections in the room are told. Nothing is answered to the
    /// reader.
    fn read(&mut self, rid: Id, conn: ConnRef, uid: Id, seq: u64, out: &mut Vec<Out>) {
        let Some(room) = self.rooms.get(&rid).filter(|r| r.member(&conn).is_some_and(|m| m.uid == uid)) else {
            return;
        };
        let mark = reads::Mark { epoch: room.epoch(), seq: seq.min(room.seq()) };
        if !self.reads.advance(&rid, &uid, mark) {
            return;
        }
        self.store.read_moved(&rid, &uid, mark);
        reads::tell(room, &rid, &uid, mark.seq, Some(conn), out);
    }

    /// A user's read state in a room, for its login ack (see
    /// [`reads::Reads::state`]). None for a user with no marker there (a
    /// client that never sent `read`: its ack stays CChat's), and for a
    /// room whose sequence its store has yet to say (a shared store's room
    /// before its claim).
    pub(crate) fn read_state(&self, rid: &Id, uid: &Id) -> Option<(u64, u64)> {
        let room = self.rooms.get(rid).filter(|_| self.store.sequence_known(rid))?;
        self.reads.state(rid, uid, room)
    }

    /// A change of a room message (see `changes`): checked against the
    /// message (in memory, its author, the edit window) and its state,
    /// then sequenced, stored and broadcast like a message.
    fn change(&mut self, c: Box<msg::Change>, now_ms: u64, out: &mut Vec<Out>) -> Option<u16> {
        let (rid, from) = (c.rid.clone(), c.from);
        if from.is_api() && !self.rooms.contains_key(&rid) {
            // A moderator's change brings the room in (its records read
            // back first: the change waits for them in `admit`).
            self.room_or_load(&rid);
            self.schedule_evict(&rid, now_ms);
        }
        let c = match self.admit(&rid, from, true, Request::Change(c), now_ms, out) {
            Ok(Request::Change(c)) => c,
            Ok(_) => unreachable!("given back as it came"),
            Err(code) => return code,
        };
        let edit_window = self.edit_window_ms;
        // The server API moderates: any message, at any time, as no member.
        let moderator = from.is_api();
        let Some(room) = self.rooms.get_mut(&rid).filter(|r| moderator || r.member(&from).is_some()) else {
            out.push(err(from, "not a member of rid"));
            return Some(ERR_INVALID);
        };
        let target = room.changes.as_ref().and_then(|ch| ch.author(c.seq, &c.uid));
        let target = target.map(|(own, ts)| (own || moderator, if moderator { now_ms } else { ts }));
        let why = match target {
            None if c.seq > room.seq() => Some("unknown seq"),
            None => Some("the message is too old to change (or not a message)"),
            Some((own, ts)) => {
                let by_author = matches!(c.change, ChangeKind::Edit(_) | ChangeKind::Delete);
                if by_author && !own {
                    Some("not your message")
                } else if by_author && now_ms > ts + edit_window {
                    Some("past the edit window")
                } else {
                    room.changes.as_ref().and_then(|ch| ch.check(c.seq, &c.uid, &c.change).err())
                }
            }
        };
        if let Some(why) = why {
            out.push(err(from, why));
            return Some(ERR_INVALID);
        }
        let at = room.next_seq();
        let (frame, off) = protocol::encode_change(&rid, c.seq, &c.uid, &c.change, now_ms, room.epoch(), at);
        let json = frame.slice(off..);
        if let Some(j) = self.journal.as_mut() {
            j.append(room.epoch(), at, now_ms, &rid, &json, room.token());
            self.last_journalled = Some(RecordTag { rid: rid.clone(), token: room.token(), seq: at, from });
        }
        room.remember(at, json);
        let ch = room.changes.get_or_insert_default();
        ch.apply(c.seq, &c.uid, &c.change, now_ms);
        ch.trim_below(at.saturating_sub(self.history_reach as u64));
        self.broadcast(&rid, frame, None, Instant::now(), out);
        None
    }

    /// One Deliver per local shard and per other node holding members.
    fn broadcast(&mut self, rid: &Id, frame: Bytes, except: Option<ConnRef>, t0: Instant, out: &mut Vec<Out>) {
        let Some(room) = self.rooms.get(rid) else { return };
        self.shards.extend(room.member_shards());
        self.nodes.extend(room.member_nodes());
        for &s in &self.shards {
            let audience = Audience::AllExcept(except.filter(|c| c.node == 0));
            let msg = Delivery::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 };
            out.push(Out { dest: Dest::Shard(s), msg });
        }
        for &n in &self.nodes {
            let audience = Audience::AllExcept(except.filter(|c| c.node == n));
            let msg = Delivery::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 };
            out.push(Out { dest: Dest::Node(n), msg });
        }
        self.shards.clear();
        self.nodes.clear();
    }

    /// A node died: forgets its members, announcing each user gone.
    pub(crate) fn node_down(&mut self, dead: u16, now_ms: u64, out: &mut Vec<Out>) {
        self.resuming.retain(|(c, _), _| c.node != dead);
        let (mut gone, mut emptied) = (Vec::new(), Vec::new());
        for (rid, room) in self.rooms.iter_mut() {
            let had_members = !room.is_empty();
            let users_before = room.user_count();
            for left in room.remove_node(dead) {
                if left.user_gone {
                    gone.push((rid.clone(), left, self.presence.big(users_before)));
                }
            }
            if had_members && room.is_empty() {
                emptied.push(rid.clone());
            }
        }
        for (rid, left, big) in gone {
            self.announce(&rid, &left.uid, &left.name, Change::Left, big, None, now_ms, out);
        }
        // The same as when a room's last member leaves.
        for rid in emptied {
            self.emptied(&rid, now_ms);
        }
    }

    /// Answers a question of the server API about the rooms owned here.
    pub(crate) fn answer(&mut self, q: crate::msg::ApiQuery, now_ms: u64) {
        use crate::msg::ApiQuery;
        match q {
            ApiQuery::Online { rid, reply } => {
                let users =
                    self.rooms.get(&rid).map(|r| r.users().map(|(u, n)| (u.to_owned(), n.to_owned())).collect());
                let _ = reply.send(users.or(Some(Vec::new())));
            }
            ApiQuery::History { rid, since, limit, reply } => {
                let limit = limit.unwrap_or(protocol::MAX_PAGE).min(protocol::MAX_PAGE);
                if let Some((ReadReply::Api(reply), epoch, mut msgs)) =
                    self.plan_history(&rid, since, None, None, limit, ReadReply::Api(reply))
                {
                    self.fold_history(&rid, &mut msgs, now_ms);
                    let _ = reply.send(Some((epoch, msgs)));
                }
            }
            ApiQuery::Rooms { reply } => {
                let rooms = self
                    .rooms
                    .iter()
                    .filter(|(_, r)| !r.is_empty())
                    .map(|(id, r)| (id.to_string(), r.user_count()))
                    .collect();
                let _ = reply.send(rooms);
            }
        }
    }

    /// Forgets the rooms `view` gives to other nodes (their members re-join there).
    /// Returns the requests that waited here for rooms that moved.
    pub(crate) fn keep_own(&mut self, view: &View) -> Vec<Request> {
        let mut moved = self.store.view_changed(&|rid: &Id| view.owner(rid) == 0, &self.rooms);
        // Messages waiting for a room's ids go to its new owner too.
        let gone: Vec<Id> = self.mids_loading.keys().filter(|rid| view.owner(rid) != 0).cloned().collect();
        for rid in gone {
            moved.extend(self.mids_loading.remove(&rid).unwrap_or_default());
        }
        // Resumes under way for rooms that moved are dropped (their answer,
        // when it comes, finds nothing to answer): the connections' shards
        // make them again at the new owner; what their logins sent meanwhile
        // follows them there.
        let resumes: Vec<(ConnRef, Id)> =
            self.resuming.keys().filter(|(_, rid)| view.owner(rid) != 0).cloned().collect();
        for key in resumes {
            moved.extend(self.resuming.remove(&key).unwrap_or_default());
        }
        // Joins that waited here are made again at the new owner by the
        // joining connections' shards (see `shard/cluster.rs`): not twice.
        moved.retain(|req| !matches!(req, Request::Join { .. }));
        let live = &mut self.live;
        self.rooms.retain(|rid, room| {
            let keep = view.owner(rid) == 0;
            if !keep && !room.is_empty() {
                *live -= 1;
            }
            keep
        });
        moved
    }
}

/// A direct conversation's message while its other user is not in it:
/// that user's connections, wherever they are, are told (at most once per
/// [`KNOCK_EVERY_MS`] per conversation), so that a page can open it.
fn knock(room: &mut Room, p: &Publish, now_ms: u64, knocks: &mut Vec<(Id, Bytes)>) {
    let Some(Ok((a, b))) = crate::ids::dm_parties(&p.rid) else { return };
    let other = if p.uid.as_str() == a { b } else { a };
    let Some(other) = Id::parse_str(other) else { return };
    if room.user(&other).is_some() || now_ms < room.knocked_ms + KNOCK_EVERY_MS {
        return;
    }
    room.knocked_ms = now_ms;
    knocks.push((other, protocol::encode_presence("dm", &p.uid, &p.name, &p.rid)));
}

/// A conversation knocks at most this often for its absent user.
const KNOCK_EVERY_MS: u64 = 5_000;

/// Sends a frame to exactly these connections: one Deliver per shard and per
/// other node among them.
pub(crate) fn deliver_to(rid: &Id, frame: &Bytes, mut targets: Vec<ConnRef>, t0: Instant, out: &mut Vec<Out>) {
    let dest = |c: &ConnRef| (c.node, if c.node == 0 { c.shard } else { 0 });
    targets.sort_by_key(dest);
    for group in targets.chunk_by(|a, b| dest(a) == dest(b)) {
        let audience = Audience::Only(group.to_vec());
        let msg = Delivery::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 };
        out.push(Out { dest: Dest::of(group[0]), msg });
    }
}

#[cfg(test)]
mod tests;
