//! The one interface between a room's owner and where its history and
//! sequence are kept. No I/O: a store here is the owner's side of it; its
//! I/O runs in the shard's tasks for that store.
//!
//! | implementation | where | its I/O |
//! |---|---|---|
//! | [`LogRoomStore`](super::log::LogRoomStore) | the embedded log (`--data-dir`), or nothing (`--durability memory`) | `shard/log.rs` (writer), `shard/history.rs` (reader), `store/log/` |
//! | [`RedisRoomStore`](super::redis::RedisRoomStore) | Redis (`--store`) | `shard/redis.rs`, `store/redis/` |
//!
//! The owner's logic (joins, messages, history, eviction, cluster changes)
//! talks to a `Box<dyn RoomStore>` only. What each store's own task
//! reports back (records written, claims answered...) reaches the store
//! through the owner's typed entry points (`Owner::on_written`,
//! `Owner::on_claimed`... in `storage.rs`), which are no-ops for the other
//! store.

use std::collections::HashMap;

use bytes::Bytes;

use super::ReadReply;
use crate::ids::Id;
use crate::msg::{ConnRef, Request};
use crate::owner::room::Room;

/// What a store says of a message or history request.
pub(crate) enum Gate {
    /// Handle it now.
    Open,
    /// The store took it, to be handled later (a claim under way).
    Queued,
    /// Refused with this error.
    Refuse(&'static str),
}

/// A history request memory alone may not answer.
pub(crate) struct HistoryQuery<'a> {
    pub(crate) rid: &'a Id,
    pub(crate) since: Option<u64>,
    pub(crate) before: Option<u64>,
    /// The epoch `before` is in (None: the current one).
    pub(crate) before_epoch: Option<u64>,
    pub(crate) limit: usize,
    pub(crate) reply: ReadReply,
    /// Bytes of messages the answer may carry.
    pub(crate) budget: usize,
    /// The epoch a never-used room reports.
    pub(crate) node_epoch: u64,
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

/// The owner's side of a store (see the module's text).
pub(crate) trait RoomStore: std::any::Any {
    /// The sequence a room that is not in memory continues, (epoch, top
    /// seq), when the store knows it now (else it starts a new one).
    fn known(&self, rid: &Id) -> Option<(u64, u64)>;

    /// `rid` came into memory.
    fn opened(&mut self, rid: &Id);

    /// Whether `rid`, coming into memory, has stored records to read back
    /// (its message ids, authors and changes; see `Owner::load_mids`).
    fn read_back_on_open(&self, _rid: &Id) -> bool {
        false
    }

    /// Whether `rid`'s epoch and top seq are known (a shared store's room
    /// learns them at its claim).
    fn sequence_known(&self, _rid: &Id) -> bool {
        true
    }

    /// A user's read marker in `rid` moved (a store that keeps markers
    /// writes it).
    fn read_moved(&mut self, _rid: &Id, _uid: &Id, _mark: super::reads::Mark) {}

    /// Takes any request for a room whose store is busy with it (a claim
    /// under way), to hand back later in order; else gives it back.
    fn hold(&mut self, req: Request) -> Option<Request> {
        Some(req)
    }

    /// Whether a message for `rid` may be handled now (at Unix ms `now_ms`);
    /// the store may take it (`req`) to hand back later.
    fn admit(
        &mut self,
        _rid: &Id,
        _req: &mut Option<Request>,
        _rooms: &mut HashMap<Id, Room>,
        _next_epoch: &dyn Fn() -> u64,
        _now_ms: u64,
    ) -> Gate {
        Gate::Open
    }

    /// Answers a history request now (from memory, `room`), or takes it to
    /// read (None).
    fn plan_history(&mut self, q: HistoryQuery<'_>, room: Option<&Room>) -> Option<(ReadReply, u64, Vec<Bytes>)>;

    /// A room empty long enough leaves memory; true if the store keeps it
    /// as an evicted room (brought back with its sequence).
    fn evicted(&mut self, rid: &Id, room: &Room, rooms: &HashMap<Id, Room>) -> bool;

    /// A room left memory for good (it never had a message, or another node
    /// owns it now).
    fn forgotten(&mut self, _rid: &Id) {}

    /// The cluster's view changed: the rooms `keep` rejects belong to
    /// other nodes now (`rooms`: those in memory, before they go). Returns
    /// the requests it held for those rooms, for their new owners.
    fn view_changed(&mut self, keep: &dyn Fn(&Id) -> bool, rooms: &HashMap<Id, Room>) -> Vec<Request>;

    /// Rooms the store holds that are not in memory.
    fn evicted_rooms(&self) -> usize {
        0
    }

    /// For the store's own entry points.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}
