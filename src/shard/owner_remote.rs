//! The owner's side of a shared store (`--store`, see `store/redis.rs`). No I/O.
//!
//! Before it numbers a room's messages, an owner *claims* the room in the
//! store: the store answers with the room's epoch and top seq (the
//! previous owner's, on another node or before a restart), and from then
//! on accepts appends only under this claim's token. Until the answer
//! comes, the room's messages and history requests wait in the room's
//! queue (bounded); its joins do not wait.
//!
//! When the store refuses a room's messages (their deliveries are dropped
//! and their senders get an error, see `shard/remote.rs`), the owner
//! drops its claim: the store lost the room (flushed, failed over) or its
//! tail → the next message claims a fresh epoch, so no (epoch, seq) pair is
//! ever used twice; another owner claimed it (a partition) → this owner
//! gives the room up (its messages are refused) until the cluster's view
//! changes; Redis was unreachable → messages are refused for a second,
//! then the next one claims again (the same epoch, from the store's top).

use std::collections::HashMap;

use bytes::Bytes;

use super::{Out, Owner, ReadReply, err};
use crate::ids::Id;
use crate::msg::{ConnRef, Request};
use crate::room::history_window;
use crate::store::redis::{Refusal, Refused};

/// Requests one room may queue while its claim is under way.
const MAX_WAITING: usize = 1024;
/// How long messages are refused after the store was unreachable.
const STORE_RETRY_MS: u64 = 1000;

/// A room's claim, while it is not simply held.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Asked for; these requests wait for the answer.
    Pending(Vec<Request>),
    /// To be claimed at the next message (`fresh`: in a new epoch).
    Needed { fresh: bool },
    /// Another owner claimed it: refused here until the view changes.
    GivenUp,
}

/// A claim for the store thread.
#[derive(Debug)]
pub(crate) struct ClaimJob {
    pub(crate) rid: Id,
    pub(crate) token: u64,
    pub(crate) epoch: u64,
    pub(crate) fresh: bool,
}

/// A history answer the store must give.
#[derive(Debug)]
pub(crate) struct RemoteRead {
    pub(crate) rid: Id,
    pub(crate) since: Option<u64>,
    pub(crate) before: Option<u64>,
    pub(crate) limit: usize,
    pub(crate) reply: ReadReply,
    pub(crate) forward: bool,
    pub(crate) budget: usize,
}

impl std::fmt::Debug for ReadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadReply::Conn(c) => write!(f, "Conn({c:?})"),
            ReadReply::Api(_) => f.write_str("Api"),
        }
    }
}

/// A journalled room message, as its deliveries are held: enough to drop
/// them and tell the sender if the store refuses it.
#[derive(Debug, Clone)]
pub(crate) struct RecordTag {
    pub(crate) rid: Id,
    pub(crate) token: u64,
    pub(crate) seq: u64,
    pub(crate) from: ConnRef,
}

impl RecordTag {
    /// Whether the store refused this message in `r`.
    pub(crate) fn refused_in(&self, r: &Refused) -> bool {
        r.rid == self.rid && r.token == self.token && (r.first..=r.last).contains(&self.seq)
    }
}

/// The owner's dealings with a shared store.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    claims: HashMap<Id, Claim>,
    jobs: Vec<ClaimJob>,
    reads: Vec<RemoteRead>,
    /// Claim tokens: this shard's random base plus a count.
    token_base: u64,
    tokens: u64,
    /// The message the last request journalled.
    pub(crate) last: Option<RecordTag>,
}

/// What the owner does with a request for a room under a shared store.
pub(super) enum Gate {
    /// Handle it now.
    Open,
    /// It waits for the room's claim.
    Queued,
    /// Refused with this error.
    Refuse(&'static str),
}

impl Owner {
    /// History and room sequence live in a shared store from now on; claim
    /// tokens start at `token_base` (random per shard and run).
    pub(crate) fn enable_remote(&mut self, token_base: u64) {
        self.journal = Some(crate::store::Journal::unframed());
        self.remote = Some(Remote { token_base, ..Remote::default() });
    }

    fn next_token(r: &mut Remote) -> u64 {
        r.tokens += 1;
        r.token_base.wrapping_add(r.tokens).max(1)
    }

    /// A room this owner holds no claim on (new here): claim it.
    pub(super) fn claim_new(&mut self, rid: &Id) {
        if let Some(r) = self.remote.as_mut() {
            r.claims.insert(rid.clone(), Claim::Needed { fresh: false });
        }
    }

    /// Whether `req` (a message or history request for `rid`) may be
    /// handled now. A room whose claim is needed is claimed now.
    pub(super) fn gate(&mut self, rid: &Id, req: &mut Option<Request>) -> Gate {
        let fresh = match self.remote.as_mut().and_then(|r| r.claims.get_mut(rid)) {
            None => return Gate::Open,
            Some(Claim::GivenUp) => return Gate::Refuse("this room is served by another node now: reconnect"),
            Some(Claim::Pending(q)) if q.len() >= MAX_WAITING => {
                return Gate::Refuse("message store is behind, try again shortly");
            }
            Some(Claim::Pending(q)) => {
                q.extend(req.take());
                return Gate::Queued;
            }
            Some(Claim::Needed { fresh }) => *fresh,
        };
        // The epoch a room the store does not have starts (or a fresh one).
        let epoch = (self.next_epoch)();
        let r = self.remote.as_mut().expect("checked above");
        let token = Self::next_token(r);
        r.claims.insert(rid.clone(), Claim::Pending(req.take().into_iter().collect()));
        r.jobs.push(ClaimJob { rid: rid.clone(), token, epoch, fresh });
        if let Some(room) = self.rooms.get_mut(rid) {
            room.set_claim(token);
        }
        Gate::Queued
    }

    /// The store answered a claim: the room continues its epoch and seq, and
    /// the requests that waited are returned to be handled (in order). None:
    /// the store was unreachable: they are refused.
    pub(crate) fn on_claimed(
        &mut self,
        rid: &Id,
        token: u64,
        state: Option<(u64, u64)>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) -> Vec<Request> {
        let Some(r) = self.remote.as_mut() else { return Vec::new() };
        let Some(room) = self.rooms.get_mut(rid).filter(|room| room.token() == token) else {
            return Vec::new(); // superseded, or the room is gone from here
        };
        let Some(Claim::Pending(waiting)) = r.claims.remove(rid) else { return Vec::new() };
        match state {
            Some((epoch, top)) => {
                room.continue_from(epoch, top);
                // The store answers again: no reason left to refuse messages.
                self.store_down_until = 0;
                waiting
            }
            None => {
                room.set_claim(0);
                r.claims.insert(rid.clone(), Claim::Needed { fresh: false });
                self.store_down_until = now_ms + STORE_RETRY_MS;
                for req in waiting {
                    if let Request::Publish(p) = &req {
                        out.push(err(p.from, "message store unavailable, try again shortly"));
                    } else if let Request::GetHistory { conn, .. } = &req {
                        out.push(err(*conn, "message store unavailable, try again shortly"));
                    }
                }
                Vec::new()
            }
        }
    }

    /// The store refused messages of a room sequenced under its current
    /// claim: the claim is dropped (see the module's text).
    pub(crate) fn on_refused(&mut self, refused: &Refused, now_ms: u64) {
        let Some(r) = self.remote.as_mut() else { return };
        let Some(room) = self.rooms.get_mut(&refused.rid).filter(|room| room.token() == refused.token) else {
            return; // an older claim's messages: already dealt with
        };
        room.set_claim(0);
        let claim = match refused.why {
            Refusal::Fenced => Claim::GivenUp,
            Refusal::Lost | Refusal::Gap => Claim::Needed { fresh: true },
            Refusal::Unavailable => {
                self.store_down_until = now_ms + STORE_RETRY_MS;
                Claim::Needed { fresh: false }
            }
        };
        r.claims.insert(refused.rid.clone(), claim);
    }

    /// Forgets the claim state of a room this owner no longer holds.
    pub(super) fn forget_claim(&mut self, rid: &Id) {
        if let Some(r) = self.remote.as_mut() {
            r.claims.remove(rid);
        }
    }

    /// The cluster's view changed: rooms given up may be claimed again.
    pub(super) fn retry_given_up(&mut self) {
        if let Some(r) = self.remote.as_mut() {
            for c in r.claims.values_mut() {
                if matches!(c, Claim::GivenUp) {
                    *c = Claim::Needed { fresh: false };
                }
            }
        }
    }

    /// A history request under a shared store: from memory when it holds the
    /// whole window, else from the store (queued for the store thread).
    pub(super) fn plan_remote(
        &mut self,
        rid: &Id,
        since: Option<u64>,
        before: Option<u64>,
        limit: usize,
        reply: ReadReply,
    ) -> Option<(ReadReply, u64, Vec<Bytes>)> {
        let claimed = self.remote.as_ref().is_some_and(|r| !r.claims.contains_key(rid));
        if let Some(room) = self.rooms.get(rid).filter(|_| claimed) {
            let top = room.seq();
            let lowest = (top + 1).saturating_sub(self.disk_cap as u64).max(1);
            let w = history_window(since, before, limit, lowest, top);
            if w.start >= room.memory_low() || w.is_empty() {
                let mut msgs: Vec<Bytes> = room.history_range(w).cloned().collect();
                super::fit(&mut msgs, since.is_some(), self.reply_budget);
                return Some((reply, room.epoch(), msgs));
            }
        }
        let r = self.remote.as_mut().expect("remote");
        let (forward, budget) = (since.is_some(), self.reply_budget);
        r.reads.push(RemoteRead { rid: rid.clone(), since, before, limit, reply, forward, budget });
        None
    }

    /// Claims and history reads for the store thread.
    pub(crate) fn take_store_jobs(&mut self) -> Option<(Vec<ClaimJob>, Vec<RemoteRead>)> {
        let r = self.remote.as_mut()?;
        if r.jobs.is_empty() && r.reads.is_empty() {
            return None;
        }
        Some((std::mem::take(&mut r.jobs), std::mem::take(&mut r.reads)))
    }

    /// The message the last request journalled, if any.
    pub(crate) fn take_record_tag(&mut self) -> Option<RecordTag> {
        self.remote.as_mut()?.last.take()
    }
}

#[cfg(test)]
#[path = "owner_remote_tests.rs"]
mod tests;
