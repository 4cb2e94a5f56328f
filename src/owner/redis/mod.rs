//! The owner's side of a shared store (`--store`, see `store/redis/`):
//! [`RedisRoomStore`], one of the two [`RoomStore`]s. No I/O.
//!
//! Before it numbers a room's messages, an owner *claims* the room in the
//! store: the store answers with the room's epoch and top seq (the
//! previous owner's, on another node or before a restart), and from then
//! on accepts appends only under this claim's token. Until the answer
//! comes, the room's messages and history requests wait in the room's
//! queue (bounded); its joins do not wait.
//!
//! When the store refuses a room's messages (their deliveries are dropped
//! and their senders get an error, see `shard/redis.rs`), the owner
//! drops its claim: the store lost the room (flushed, failed over) or its
//! tail → the next message claims a fresh epoch, so no (epoch, seq) pair is
//! ever used twice; another owner claimed it (a partition) → this owner
//! gives the room up (its messages are refused) until the cluster's view
//! changes; Redis was unreachable → messages are refused for a second,
//! then the next one claims again (the same epoch, from the store's top).

use std::collections::HashMap;

use bytes::Bytes;

use super::store::{Gate, HistoryQuery, RecordTag, RoomStore};
use super::{Out, ReadReply, err, refuse_for_a_while};
use crate::ids::Id;
use crate::msg::Request;
use crate::owner::room::{Room, history_window};
use crate::store::redis::{Refusal, Refused};

/// Requests one room may queue while its claim is under way.
const MAX_WAITING: usize = 1024;
/// How long a fenced owner gives a room up before it claims it again.
const GIVE_UP_MS: u64 = 5000;

/// A room's claim, while it is not simply held.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Asked for; these requests wait for the answer.
    Pending(Vec<Request>),
    /// To be claimed at the next message (`fresh`: in a new epoch).
    Needed { fresh: bool },
    /// Another owner claimed it: refused here until the view changes, or
    /// until this Unix time (ms): then claimed again (the other owner's
    /// view may have let go of it meanwhile).
    GivenUp { until: u64 },
}

/// A claim for the store thread.
#[derive(Debug)]
pub(crate) struct ClaimJob {
    pub(crate) rid: Id,
    pub(crate) token: u64,
    pub(crate) epoch: u64,
    pub(crate) fresh: bool,
}

/// Read markers to keep in the store, or to read back (see `owner/reads`).
#[derive(Debug)]
pub(crate) enum MarkJob {
    /// A room came into memory here: its users' markers are read back.
    Load(Id),
    /// A user's marker moved.
    Set(Id, Id, super::reads::Mark),
}

/// What the owner has for the store thread: claims, history reads, markers.
pub(crate) type StoreJobs = (Vec<ClaimJob>, Vec<RemoteRead>, Vec<MarkJob>);

/// A history answer the store must give.
#[derive(Debug)]
pub(crate) struct RemoteRead {
    pub(crate) rid: Id,
    pub(crate) since: Option<u64>,
    pub(crate) before: Option<u64>,
    pub(crate) limit: usize,
    pub(crate) reply: ReadReply,
    pub(crate) budget: usize,
}

impl std::fmt::Debug for ReadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadReply::Conn(c) => write!(f, "Conn({c:?})"),
            ReadReply::Api(_) => f.write_str("Api"),
            ReadReply::Resume(r) => write!(f, "Resume({:?}, {})", r.conn, r.rid),
            ReadReply::Mids(rid) => write!(f, "Mids({rid})"),
        }
    }
}

impl RecordTag {
    /// Whether the store refused this message in `r`.
    pub(crate) fn refused_in(&self, r: &Refused) -> bool {
        r.rid == self.rid && r.token == self.token && (r.first..=r.last).contains(&self.seq)
    }
}

/// The owner's dealings with a shared store.
#[derive(Debug)]
pub(crate) struct RedisRoomStore {
    claims: HashMap<Id, Claim>,
    jobs: Vec<ClaimJob>,
    reads: Vec<RemoteRead>,
    marks: Vec<MarkJob>,
    /// Claim tokens: this shard's random base plus a count.
    token_base: u64,
    tokens: u64,
    /// Messages the store keeps per room (`--history`).
    reach: usize,
}

impl RedisRoomStore {
    /// A store that claims rooms with tokens from `token_base` and keeps
    /// `reach` messages per room.
    pub(super) fn new(token_base: u64, reach: usize) -> Self {
        RedisRoomStore {
            claims: HashMap::new(),
            jobs: Vec::new(),
            reads: Vec::new(),
            marks: Vec::new(),
            token_base,
            tokens: 0,
            reach,
        }
    }

    /// Claims, history reads and read markers for the store thread, if any.
    pub(super) fn take_jobs(&mut self) -> Option<StoreJobs> {
        if self.jobs.is_empty() && self.reads.is_empty() && self.marks.is_empty() {
            return None;
        }
        Some((std::mem::take(&mut self.jobs), std::mem::take(&mut self.reads), std::mem::take(&mut self.marks)))
    }

    fn next_token(&mut self) -> u64 {
        self.tokens += 1;
        self.token_base.wrapping_add(self.tokens).max(1)
    }

    /// The store answered a claim: the room continues its epoch and seq, and
    /// the requests that waited are returned to be handled (in order). If
    /// the store did not take the claim, the room messages and history
    /// reads among them are refused and the rest is returned.
    pub(super) fn on_claimed(
        &mut self,
        rooms: &mut HashMap<Id, Room>,
        store_down: &mut (u64, &'static str),
        (rid, token, state): (&Id, u64, Result<(u64, u64), Refusal>),
        (now_ms, next_epoch): (u64, &dyn Fn() -> u64),
        out: &mut Vec<Out>,
    ) -> Vec<Request> {
        let Some(room) = rooms.get_mut(rid).filter(|room| room.token() == token) else {
            return Vec::new(); // superseded, or the room is gone from here
        };
        if let Ok((epoch, top)) = state
            && epoch == room.epoch()
            && top < room.acked()
        {
            // The store lost messages it had acknowledged (a failover, a
            // restart without them): continuing would number new messages
            // with seqs members already saw. A new epoch instead (the
            // requests keep waiting for this claim).
            let token = self.next_token();
            let epoch = next_epoch();
            self.jobs.push(ClaimJob { rid: rid.clone(), token, epoch, fresh: true });
            room.set_claim(token);
            return Vec::new();
        }
        let Some(Claim::Pending(waiting)) = self.claims.remove(rid) else { return Vec::new() };
        match state {
            Ok((epoch, top)) => {
                room.continue_from(epoch, top);
                // The store answers again: no reason left to refuse messages.
                store_down.0 = 0;
                waiting
            }
            Err(why) => {
                room.set_claim(0);
                self.claims.insert(rid.clone(), Claim::Needed { fresh: false });
                *store_down = refuse_for_a_while(now_ms, why);
                // Room messages and history reads need the store: refused.
                // The rest (joins, leaves, presence, private messages) is
                // handled as usual, in order.
                let mut rest = Vec::new();
                for req in waiting {
                    match &req {
                        Request::Publish(p) if p.tid.is_none() => out.push(err(p.from, why.text())),
                        Request::GetHistory { conn, .. } => out.push(err(*conn, why.text())),
                        _ => rest.push(req),
                    }
                }
                rest
            }
        }
    }

    /// The store refused messages of a room sequenced under its current
    /// claim: the claim is dropped (see the module's text).
    pub(super) fn on_refused(
        &mut self,
        rooms: &mut HashMap<Id, Room>,
        store_down: &mut (u64, &'static str),
        refused: &mut Refused,
        now_ms: u64,
    ) {
        let Some(room) = rooms.get_mut(&refused.rid) else { return };
        if refused.why == Refusal::Gap && refused.store_top.is_some_and(|top| top >= room.acked()) {
            // The store has every acknowledged message: the gap is only the
            // messages refused before these (a round lost while the store
            // was away). Nothing was lost; say so, and carry on in the
            // same epoch from the store's top.
            refused.why = Refusal::Unavailable;
            if room.token() == refused.token {
                room.set_claim(0);
                self.claims.insert(refused.rid.clone(), Claim::Needed { fresh: false });
            }
            return;
        }
        if room.token() != refused.token {
            return; // an older claim's messages: already dealt with
        }
        room.set_claim(0);
        let claim = match refused.why {
            Refusal::Fenced => Claim::GivenUp { until: now_ms + GIVE_UP_MS },
            Refusal::Lost | Refusal::Gap => Claim::Needed { fresh: true },
            Refusal::Unavailable | Refusal::Unknown | Refusal::Full | Refusal::LogWrite => {
                *store_down = refuse_for_a_while(now_ms, refused.why);
                Claim::Needed { fresh: false }
            }
        };
        self.claims.insert(refused.rid.clone(), claim);
    }
}

impl RoomStore for RedisRoomStore {
    /// Never known at once: the room is claimed first.
    fn known(&self, _rid: &Id) -> Option<(u64, u64)> {
        None
    }

    /// A room this owner holds no claim on (new here): claimed at its
    /// first message; its users' read markers are read back at once.
    fn opened(&mut self, rid: &Id) {
        self.claims.insert(rid.clone(), Claim::Needed { fresh: false });
        self.marks.push(MarkJob::Load(rid.clone()));
    }

    /// Only once claimed (see [`Claim`]): until then the room's epoch and
    /// top are the store's to say.
    fn sequence_known(&self, rid: &Id) -> bool {
        !self.claims.contains_key(rid)
    }

    /// A marker moved: kept in the store, for the room's next owner.
    fn read_moved(&mut self, rid: &Id, uid: &Id, mark: super::reads::Mark) {
        self.marks.push(MarkJob::Set(rid.clone(), uid.clone(), mark));
    }

    /// While a room's claim is under way, its requests wait in order.
    fn hold(&mut self, req: Request) -> Option<Request> {
        match self.claims.get_mut(req.rid()) {
            Some(Claim::Pending(q)) if q.len() < MAX_WAITING => {
                q.push(req);
                None
            }
            _ => Some(req),
        }
    }

    /// A room whose claim is needed is claimed now; its messages wait for the answer.
    fn admit(
        &mut self,
        rid: &Id,
        req: &mut Option<Request>,
        rooms: &mut HashMap<Id, Room>,
        next_epoch: &dyn Fn() -> u64,
        now_ms: u64,
    ) -> Gate {
        let fresh = match self.claims.get_mut(rid) {
            None => return Gate::Open,
            Some(Claim::GivenUp { until }) if now_ms < *until => {
                return Gate::Refuse("this room is served by another node now: reconnect");
            }
            Some(Claim::GivenUp { .. }) => false,
            // `hold` queued the message unless the room's queue was full.
            Some(Claim::Pending(_)) => return Gate::Refuse("message store is behind, try again shortly"),
            Some(Claim::Needed { fresh }) => *fresh,
        };
        // The epoch a room the store does not have starts (or a fresh one).
        let epoch = next_epoch();
        let token = self.next_token();
        self.claims.insert(rid.clone(), Claim::Pending(req.take().into_iter().collect()));
        self.jobs.push(ClaimJob { rid: rid.clone(), token, epoch, fresh });
        if let Some(room) = rooms.get_mut(rid) {
            room.set_claim(token);
        }
        Gate::Queued
    }

    /// From memory when it holds the whole window, else from the store.
    fn plan_history(&mut self, q: HistoryQuery<'_>, room: Option<&Room>) -> Option<(ReadReply, u64, Vec<Bytes>)> {
        let HistoryQuery { rid, since, before, before_epoch, limit, reply, budget, .. } = q;
        // The store holds the room's current epoch only: an older one it
        // lost (that is why the room started a new one) has nothing to give.
        if let (Some(e), Some(room)) = (before_epoch, room)
            && e != room.epoch()
        {
            return Some((reply, room.epoch(), Vec::new()));
        }
        if let Some(room) = room.filter(|_| !self.claims.contains_key(rid)) {
            // Only what the store acknowledged: a message still on its way
            // there is not history yet (it may be refused).
            let top = room.acked();
            let lowest = (top + 1).saturating_sub(self.reach as u64).max(1);
            let w = history_window(since, before, limit, lowest, top);
            if w.start >= room.memory_low() || w.is_empty() {
                let mut msgs: Vec<Bytes> = room.history_range(w).cloned().collect();
                super::fit(&mut msgs, since.is_some(), budget);
                return Some((reply, room.epoch(), msgs));
            }
        }
        self.reads.push(RemoteRead { rid: rid.clone(), since, before, limit, reply, budget });
        None
    }

    /// Nothing is known of a room before its claim: read its newest
    /// records back whenever it comes into memory (an empty room answers
    /// at once, nothing).
    fn read_back_on_open(&self, _rid: &Id) -> bool {
        true
    }

    /// Not kept here: the store has it, and a new claim reads it again.
    fn evicted(&mut self, rid: &Id, _room: &Room, _rooms: &HashMap<Id, Room>) -> bool {
        self.claims.remove(rid);
        false
    }

    fn forgotten(&mut self, rid: &Id) {
        self.claims.remove(rid);
    }

    /// Claims of rooms given away go (what waited for them goes to their
    /// new owners); rooms given up may be claimed again.
    fn view_changed(&mut self, keep: &dyn Fn(&Id) -> bool, _rooms: &HashMap<Id, Room>) -> Vec<Request> {
        let mut moved = Vec::new();
        self.claims.retain(|rid, c| {
            let kept = keep(rid);
            if let (false, Claim::Pending(q)) = (kept, c) {
                moved.append(q);
            }
            kept
        });
        for c in self.claims.values_mut() {
            if matches!(c, Claim::GivenUp { .. }) {
                *c = Claim::Needed { fresh: false };
            }
        }
        moved
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests;
