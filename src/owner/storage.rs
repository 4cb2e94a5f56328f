//! The owner's entry points for its store: setting it up (log or Redis),
//! and what each store's task reports back (records written, segments
//! deleted, claims answered, messages stored or refused), handed to the
//! store behind [`RoomStore`](super::store::RoomStore). No I/O.

use bytes::Bytes;

use super::log::{DiskRead, LogRoomStore, Resume};
use super::redis::RedisRoomStore;
use super::store::HistoryQuery;
use super::{Dest, Out, Owner, ReadReply};
use crate::ids::Id;
use crate::msg::{Audience, ConnRef, Delivery, Request};
use crate::owner::room::Room;
use crate::protocol::Since;
use crate::store::redis::{Refusal, Refused};
use crate::store::{Mark, RoomState};

impl Owner {
    /// Keeps a room index of `history` messages per room, evicts empty
    /// rooms `evict_ms` after they empty (only with a log), and keeps at
    /// most `max_evicted` evicted rooms.
    pub(crate) fn set_storage(&mut self, history: usize, evict_ms: u64, max_evicted: usize) {
        self.history_reach = history;
        self.evict_ms = evict_ms;
        if let Some(log) = self.log_store() {
            log.cap = history;
            log.max_evicted = max_evicted;
        }
    }

    fn log_store(&mut self) -> Option<&mut LogRoomStore> {
        self.store.as_any_mut().downcast_mut::<LogRoomStore>()
    }

    /// Journals every room message from now on (for the log writer), and
    /// keeps the index of evicted rooms.
    pub(crate) fn enable_journal(&mut self) {
        self.journal = Some(crate::store::Journal::default());
        if let Some(log) = self.log_store() {
            log.keep = true;
        }
    }

    /// Takes over the rooms the log held (see [`LogRoomStore`]).
    pub(crate) fn restore(&mut self, rooms: Vec<(Id, RoomState)>, new_epoch: bool) {
        if let Some(log) = self.store.as_any_mut().downcast_mut::<LogRoomStore>() {
            log.restore(rooms, new_epoch, &self.rooms);
        }
    }

    /// The room, brought back with the sequence its store knows (same
    /// epoch, next seq) or new.
    pub(super) fn room_or_load(&mut self, rid: &Id) -> &mut Room {
        if !self.rooms.contains_key(rid) {
            let known = self.store.known(rid);
            let room = match known {
                Some((epoch, top)) => Room::restore(self.nshards, self.history_cap, epoch, top, std::iter::empty()),
                None => Room::new(self.nshards, self.history_cap, (self.next_epoch)()),
            };
            self.rooms.insert(rid.clone(), room);
            self.store.opened(rid);
            if self.store.read_back_on_open(rid) {
                self.load_mids(rid, crate::node::unix_ms());
            }
        }
        self.rooms.get_mut(rid).expect("inserted above")
    }

    /// A room emptied: evict it once `--room-evict-ms` passed.
    pub(super) fn schedule_evict(&mut self, rid: &Id, now_ms: u64) {
        self.idle.push_back((rid.clone(), now_ms + self.evict_ms));
    }

    /// Evicts the rooms that have been empty long enough: their store may
    /// keep them (an index). Returns how many it kept.
    pub(crate) fn evict_idle(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        let mut gone = false;
        while self.idle.front().is_some_and(|(_, due)| *due <= now_ms) {
            let (rid, _) = self.idle.pop_front().expect("checked");
            // A room used again meanwhile stays; a room emptied twice is
            // evicted at the first due time (the grace is only a courtesy).
            if !self.rooms.get(&rid).is_some_and(Room::is_empty) {
                continue;
            }
            let room = self.rooms.remove(&rid).expect("checked");
            gone = true;
            if self.store.evicted(&rid, &room, &self.rooms) {
                n += 1;
            } else {
                self.store.forgotten(&rid);
            }
        }
        if gone {
            self.shrink_rooms();
        }
        if self.idle.is_empty() && self.idle.capacity() > 1024 {
            self.idle.shrink_to(64);
        }
        n
    }

    /// Folds a history page of `rid` (see `changes`): its events leave it,
    /// its changed messages show their current state.
    pub(crate) fn fold_history(&self, rid: &Id, msgs: &mut Vec<Bytes>, now_ms: u64) {
        if self.retention_ms > 0 {
            // Past `--retention-days`: served by no page, from wherever read.
            msgs.retain(|m| kept(m, self.retention_ms, now_ms));
        }
        super::changes::fold(self.rooms.get(rid).and_then(|r| r.changes.as_deref()), msgs);
    }

    /// Knocks of direct conversations, for the shard to spread.
    pub(crate) fn take_knocks(&mut self) -> Vec<(Id, Bytes)> {
        std::mem::take(&mut self.knocks)
    }

    /// Message ids the rooms in memory remember (see `dedupe`).
    pub(crate) fn dedupe_entries(&self) -> usize {
        self.rooms.values().map(Room::mids_len).sum()
    }

    /// Rooms with an index but nothing in memory.
    pub(crate) fn evicted_rooms(&self) -> usize {
        self.store.evicted_rooms()
    }

    /// The log writer wrote these records (see [`LogRoomStore`]).
    pub(crate) fn on_written(&mut self, marks: &[Mark], dir: usize, seg: u64, base: u64) {
        if let Some(log) = self.store.as_any_mut().downcast_mut::<LogRoomStore>() {
            log.on_written(marks, dir, seg, base, &self.rooms);
        }
    }

    /// Retention deleted segments up to `seg` of directory `dir`.
    /// The log could not write these messages: they were refused (their
    /// senders told, nothing delivered), so they leave the room's memory
    /// history; their seqs stay used (never given to another message).
    pub(crate) fn on_log_refused(&mut self, refused: &[crate::store::redis::Refused]) {
        for r in refused {
            if let Some(room) = self.rooms.get_mut(&r.rid) {
                room.forget(r.first..=r.last);
                room.forget_mids(r.first, r.last);
            }
        }
    }

    pub(crate) fn on_segments_deleted(&mut self, dir: usize, seg: u64) {
        if let Some(log) = self.store.as_any_mut().downcast_mut::<LogRoomStore>() {
            log.on_segments_deleted(dir, seg, &self.rooms);
        }
    }

    /// Answers a history request now, or has the store take it (None).
    pub(super) fn plan_history(
        &mut self,
        rid: &Id,
        since: Option<u64>,
        before: Option<u64>,
        before_epoch: Option<u64>,
        limit: usize,
        reply: ReadReply,
    ) -> Option<(ReadReply, u64, Vec<Bytes>)> {
        // Ids read back are not sent anywhere: no reply budget.
        let budget = if matches!(reply, ReadReply::Mids(_)) { usize::MAX } else { self.reply_budget };
        let node_epoch = self.node_epoch;
        let q = HistoryQuery { rid, since, before, before_epoch, limit, reply, budget, node_epoch };
        self.store.plan_history(q, self.rooms.get(rid))
    }

    /// Entries of the log's eviction order (tests: it stays compact).
    #[cfg(test)]
    pub(crate) fn evicted_order_len(&mut self) -> usize {
        self.log_store().map_or(0, |l| l.evicted_order.len())
    }

    /// History answers waiting for the disk.
    pub(crate) fn take_reads(&mut self) -> Vec<DiskRead> {
        self.log_store().map(|l| std::mem::take(&mut l.reads)).unwrap_or_default()
    }

    /// History and room sequence live in a shared store from now on; claim
    /// tokens start at `token_base` (random per shard and run).
    pub(crate) fn enable_remote(&mut self, token_base: u64) {
        self.journal = Some(crate::store::Journal::unframed());
        let reach = self.history_reach;
        self.store = Box::new(RedisRoomStore::new(token_base, reach));
    }

    fn shared(&mut self) -> Option<&mut RedisRoomStore> {
        self.store.as_any_mut().downcast_mut::<RedisRoomStore>()
    }

    /// The store answered a claim (see [`RedisRoomStore`]); returns the
    /// requests that waited, to be handled in order.
    pub(crate) fn on_claimed(
        &mut self,
        rid: &Id,
        token: u64,
        state: Result<(u64, u64), Refusal>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) -> Vec<Request> {
        let Some(s) = self.store.as_any_mut().downcast_mut::<RedisRoomStore>() else { return Vec::new() };
        let now = (now_ms, &*self.next_epoch);
        let top = state.as_ref().map_or(0, |(_, top)| *top);
        let acked = self.rooms.get(rid).map(|r| (r.epoch(), r.acked()));
        let waiting = s.on_claimed(&mut self.rooms, &mut self.store_down, (rid, token, state), now, out);
        if let (Some(room), Some((epoch, acked))) = (self.rooms.get_mut(rid), acked)
            && room.epoch() == epoch
            && room.seq() > acked
        {
            // The store has messages this owner never acknowledged (a round
            // whose answer never came): their ids are read back, so that a
            // sender who sends one again with its `mid` is recognised.
            room.read_back = false;
        }
        if self.reads.take_tell(rid) && self.store.sequence_known(rid) {
            self.tell_reads(rid, out);
        }
        // A room with stored messages: their ids are read back before its
        // messages are handled (the new owner recognises a repeat too).
        if top > 0 && self.rooms.contains_key(rid) && self.load_mids(rid, now_ms) {
            self.mids_loading.get_mut(rid).expect("loading").extend(waiting);
            return Vec::new();
        }
        waiting
    }

    /// Reads back the client ids of a room's newest stored messages (a room
    /// that came into memory from its store: after a restart, an eviction
    /// or a move from another node); its messages wait meanwhile. False
    /// when they are in already (nothing to read, or read from memory).
    pub(super) fn load_mids(&mut self, rid: &Id, now_ms: u64) -> bool {
        let n = self.history_reach.min(super::changes::AUTHORS);
        if n == 0 || self.mids_loading.contains_key(rid) {
            return self.mids_loading.contains_key(rid);
        }
        if self.rooms.get(rid).is_some_and(|r| r.read_back) {
            return false; // read back when it came into memory
        }
        match self.plan_history(rid, None, None, None, n, ReadReply::Mids(rid.clone())) {
            Some((_, _, msgs)) => {
                self.mids_loaded(rid, Some(msgs), now_ms);
                false
            }
            None => {
                self.mids_loading.insert(rid.clone(), Vec::new());
                true
            }
        }
    }

    /// A room's newest stored messages, read back (None: the read failed:
    /// the room goes on without the ids it had); returns the requests that
    /// waited, to be handled in order.
    pub(crate) fn mids_loaded(&mut self, rid: &Id, msgs: Option<Vec<Bytes>>, now_ms: u64) -> Vec<Request> {
        let waiting = self.mids_loading.remove(rid).unwrap_or_default();
        if let Some(room) = self.rooms.get_mut(rid) {
            room.read_back = true;
            let epoch = room.epoch();
            for json in msgs.iter().flatten() {
                if let Some((uid, mid, seq, ts)) = super::dedupe::ids_of(json) {
                    room.note_mid(uid, mid, super::dedupe::Original { epoch, seq, ts }, self.dedupe, now_ms);
                }
                // Authors of messages and changes, for edits to come and pages.
                room.changes.get_or_insert_default().apply_stored(json);
            }
        }
        waiting
    }

    /// The store acknowledged messages of `rid` up to `seq` under claim `token`.
    pub(crate) fn on_stored(&mut self, rid: &Id, token: u64, seq: u64) {
        if let Some(room) = self.rooms.get_mut(rid).filter(|r| r.token() == token) {
            room.ack(seq);
        }
    }

    /// The store refused messages (see [`RedisRoomStore`]).
    pub(crate) fn on_refused(&mut self, refused: &mut Refused, now_ms: u64) {
        if let Some(s) = self.store.as_any_mut().downcast_mut::<RedisRoomStore>() {
            s.on_refused(&mut self.rooms, &mut self.store_down, refused, now_ms);
            if let Some(room) = self.rooms.get_mut(&refused.rid) {
                room.forget_mids(refused.first, refused.last);
            }
        }
    }

    /// Claims, history reads and read markers for the store thread.
    pub(crate) fn take_store_jobs(&mut self) -> Option<super::StoreJobs> {
        self.shared()?.take_jobs()
    }

    /// A room's read markers came back from the store (it came into memory
    /// here): each marker further than what this owner has is taken, and
    /// its user's connections already in the room are told it (they joined
    /// before it was known, so their acks did not carry it).
    pub(crate) fn on_reads(&mut self, rid: &Id, marks: Vec<(Id, u64, u64)>, now_ms: u64, out: &mut Vec<Out>) {
        if !self.rooms.contains_key(rid) || marks.is_empty() {
            return;
        }
        for (uid, epoch, seq) in marks {
            self.reads.advance(rid, &uid, super::reads::Mark { epoch, seq });
        }
        if self.store.sequence_known(rid) {
            self.tell_reads(rid, out);
        } else {
            // The room's epoch and top come with its claim: made now (not
            // at its first message), and its users told when it answers.
            self.reads.tell_later(rid);
            let mut none = None;
            let _ = self.store.admit(rid, &mut none, &mut self.rooms, &*self.next_epoch, now_ms);
        }
    }

    /// Tells each user present in `rid` with a marker there its marker.
    fn tell_reads(&self, rid: &Id, out: &mut Vec<Out>) {
        let Some(room) = self.rooms.get(rid) else { return };
        for uid in room.user_ids() {
            if let Some((read, _)) = self.read_state(rid, uid) {
                super::reads::tell(room, rid, uid, read, None, out);
            }
        }
    }

    /// A login resuming `r.rid` after `(r.epoch, r.since)`: when the room
    /// still has every message after that point, the ack says
    /// `"recovered": true` and they follow it, read from memory at once or
    /// from the store first (the login waits, not yet a member, so that no
    /// live message can come before them); else `"recovered": false`.
    pub(super) fn resume(&mut self, mut r: Box<Resume>, now_ms: u64, out: &mut Vec<Out>) {
        let room = self.room_or_load(&r.rid);
        let (epoch, top) = (room.epoch(), room.seq());
        let reachable = r.epoch == epoch && r.since <= top && top - r.since <= self.history_reach as u64;
        if !reachable || r.since == top {
            self.resumed(*r, epoch, Some(Vec::new()), now_ms, out);
            return;
        }
        r.top = top;
        let (rid, since, n) = (r.rid.clone(), r.since, (top - r.since) as usize);
        self.resuming.insert((r.conn, rid.clone()), Vec::new());
        if let Some((ReadReply::Resume(r), epoch, msgs)) =
            self.plan_history(&rid, Some(since), None, None, n, ReadReply::Resume(r))
        {
            let waiting = self.resumed(*r, epoch, Some(msgs), now_ms, out);
            debug_assert!(waiting.is_empty(), "nothing waited for an answer given at once");
        }
    }

    /// A member re-joining a room that moved here, whose shard had its
    /// broadcasts up to `since`: what this owner sent before the re-join
    /// came is sent again, from memory (all of it, or nothing when memory
    /// does not reach back that far or the epoch is another), to the
    /// member's whole shard (or node) as the broadcasts it missed: its
    /// other members missed them too, and a shard drops a broadcast it
    /// already delivered (see `shard::on_delivery`), so none is seen twice.
    pub(super) fn catch_up(&mut self, rid: &Id, conn: ConnRef, since: Since, out: &mut Vec<Out>) {
        let Some(room) = self.rooms.get(rid) else { return };
        if since.epoch != room.epoch() || since.seq >= room.seq() || room.memory_low() > since.seq + 1 {
            return;
        }
        let t0 = std::time::Instant::now();
        for json in room.history_range(since.seq + 1..room.seq() + 1) {
            let frame = crate::ws::text_frame(json);
            let msg = Delivery::Deliver { rid: rid.clone(), frame, audience: Audience::AllExcept(None), t0 };
            out.push(Out { dest: Dest::of(conn), msg });
        }
    }

    /// What a resuming login missed, read (`msgs`: `since + 1 ..= top` of
    /// `epoch`; None when the read failed): the ack, the messages, and
    /// membership, in that order. Recovered only when nothing is missing:
    /// the read's answer and memory from `top` on join up exactly.
    /// Returns the messages the login sent to the room meanwhile, to be
    /// handled next, in order.
    pub(crate) fn resumed(
        &mut self,
        r: Resume,
        epoch: u64,
        msgs: Option<Vec<Bytes>>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) -> Vec<Request> {
        let waiting = match self.resuming.remove(&(r.conn, r.rid.clone())) {
            Some(w) => w,
            None if r.top > 0 => return Vec::new(), // it left (or disconnected) meanwhile
            None => Vec::new(),
        };
        let retention_ms = self.retention_ms;
        let room = self.room_or_load(&r.rid);
        let mut all = msgs.unwrap_or_default();
        let mut ok = epoch == r.epoch && room.epoch() == r.epoch && r.since <= room.seq();
        if ok && r.top > 0 {
            // The store has the room's messages without gaps, from the
            // oldest: a read that came back short lacks only the newest
            // (still on their way to it), which memory holds.
            let next = r.since + all.len() as u64 + 1;
            ok = next <= r.top + 1 && room.memory_low() <= next;
            all.extend(room.history_range(next..room.seq() + 1).cloned());
        }
        ok = ok && all.len() as u64 == room.seq() - r.since;
        // A gap reaching past `--retention-days` is not served either.
        ok = ok && all.first().is_none_or(|m| kept(m, retention_ms, now_ms));
        // What is sent at once must fit the client's outbound queue.
        ok = ok && all.iter().map(|m| m.len() + 14).sum::<usize>() <= self.reply_budget;
        if !ok {
            all.clear();
        }
        let read = self.read_state(&r.rid, &r.uid);
        let ack =
            crate::protocol::encode_login_ack(&r.uid, &r.name, &r.rid, read, Some(ok), all.iter().map(|b| &b[..]));
        let Resume { rid, conn, uid, name, echo, .. } = r;
        self.join(rid, conn, uid, name, echo, false, Some(ack), now_ms, out);
        waiting
    }
}

/// Whether a stored message or change is within `--retention-days`
/// (`retention_ms`, 0: no limit) at `now_ms`.
fn kept(json: &[u8], retention_ms: u64, now_ms: u64) -> bool {
    retention_ms == 0 || super::dedupe::ts_of(json).is_none_or(|ts| ts >= now_ms.saturating_sub(retention_ms))
}
