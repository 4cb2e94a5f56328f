//! The owner's side of the embedded log ([`LogRoomStore`], one of the two
//! [`RoomStore`]s): which of a room's messages are on disk and where
//! ([`RoomIndex`]), history requests that reach past what memory holds
//! (planned here, read by the shard's history reader), and rooms evicted
//! from memory while nobody is in them. No I/O.
//!
//! A room in memory keeps its newest `--history-memory` messages; the
//! index reaches back `--history` messages. An empty room is evicted
//! `--room-evict-ms` after its last member left: only its index stays (its
//! epoch, top seq and 8 bytes per stored message), and a join brings it
//! back with the same epoch and the next seq, its history read from disk.
//! Past `--max-evicted-rooms` the rooms evicted longest ago are forgotten
//! (used again, they start a new epoch; their messages stay on disk until
//! retention deletes them, unreachable), so memory stays bounded whatever
//! clients do. With `--durability memory` there is no index: an evicted
//! room is forgotten with its history.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::store::{HistoryQuery, RoomStore};
use crate::ids::Id;
use crate::msg::ConnRef;
use crate::owner::room::{Room, history_window};
use crate::store::{Loc, Mark, RoomIndex, RoomState};

/// Where the answer to a history request goes.
pub(crate) enum ReadReply {
    /// A client's `getHistory`.
    Conn(ConnRef),
    /// The server API's `/api/history`.
    Api(crossbeam_channel::Sender<Option<(u64, Vec<Bytes>)>>),
    /// A login resuming the room (`since`): back to the owner, which
    /// sends the ack, the missed messages and then makes it a member.
    Resume(Box<Resume>),
    /// A room's newest messages, read back into memory for the client ids
    /// (`mid`) they carry (see `dedupe`): back to the owner.
    Mids(Id),
}

/// A resuming login waiting for the messages it missed.
#[derive(Debug)]
pub(crate) struct Resume {
    pub(crate) rid: Id,
    pub(crate) conn: ConnRef,
    pub(crate) uid: Id,
    pub(crate) name: crate::ids::Name,
    pub(crate) echo: bool,
    /// The room's epoch and the client's last seq.
    pub(crate) epoch: u64,
    pub(crate) since: u64,
    /// The room's top seq when the read was planned: the answer holds
    /// `since + 1 ..= top`, memory the rest.
    pub(crate) top: u64,
}

/// A history answer that needs the disk: read the records at `locs`, then
/// append `tail` (the newer messages memory still holds).
pub(crate) struct DiskRead {
    pub(crate) rid: Id,
    pub(crate) epoch: u64,
    /// (epoch, seq, place) of the stored messages to read, oldest first.
    pub(crate) locs: Vec<(u64, u64, Loc)>,
    /// The messages after them, from memory.
    pub(crate) tail: Vec<Bytes>,
    pub(crate) reply: ReadReply,
    /// Paging forward (`since`): a reply over `budget` bytes keeps its
    /// oldest messages; else its newest (see [`fit`]).
    pub(crate) forward: bool,
    pub(crate) budget: usize,
}

/// The places of the newest `limit` messages of `older` (epochs newest
/// first), before seq `before` in the first when it is epoch `first`;
/// appended to `out` oldest first.
fn back_through<'a>(
    older: impl Iterator<Item = &'a RoomIndex>,
    first: u64,
    before: Option<u64>,
    limit: usize,
    out: &mut Vec<(u64, u64, Loc)>,
) {
    let mut left = limit;
    let mut pages = Vec::new();
    for (i, ix) in older.enumerate() {
        if left == 0 {
            break;
        }
        let b = before.filter(|_| i == 0 && ix.epoch == first);
        let w = history_window(None, b, left, ix.first(), ix.top);
        left -= (w.end - w.start) as usize;
        pages.push((w.start..w.end).filter_map(|s| ix.get(s).map(|l| (ix.epoch, s, l))).collect::<Vec<_>>());
    }
    for p in pages.into_iter().rev() {
        out.extend(p);
    }
}

/// Trims a history answer to `budget` bytes of messages, so that a reply
/// always fits the client's outbound queue: paging forward keeps the oldest
/// (the client asks again from the last seq it got), else the newest (it
/// scrolls back with `before`). At least one message is kept.
pub(crate) fn fit(msgs: &mut Vec<Bytes>, forward: bool, budget: usize) {
    let mut total = 0;
    let mut fits = |m: &Bytes| {
        total += m.len() + 1;
        total <= budget
    };
    if forward {
        let n = msgs.iter().take_while(|m| fits(m)).count().max(1);
        msgs.truncate(n);
    } else {
        let n = msgs.iter().rev().take_while(|m| fits(m)).count().max(1);
        let drop = msgs.len().saturating_sub(n);
        msgs.drain(..drop);
    }
}

impl std::fmt::Debug for DiskRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskRead").field("rid", &self.rid).field("locs", &self.locs.len()).finish_non_exhaustive()
    }
}

/// The embedded log's side of the owner (also `--durability memory`, where
/// nothing is kept: `keep` is false and the index stays empty).
#[derive(Debug)]
pub(crate) struct LogRoomStore {
    /// Where each room's stored messages are (rooms in memory and evicted ones).
    disk: HashMap<Id, RoomIndex>,
    /// Stored messages indexed per room (`--history`).
    pub(super) cap: usize,
    /// Whether rooms are logged (else an evicted room is forgotten).
    pub(super) keep: bool,
    /// History answers that need the disk, for the shard's reader.
    pub(super) reads: Vec<DiskRead>,
    /// Rooms in `disk` and not in memory.
    evicted: usize,
    /// Evicted rooms, oldest eviction first (may name rooms used again
    /// since: those are skipped, and the list is compacted when mostly such).
    pub(super) evicted_order: VecDeque<Id>,
    /// Past this many evicted rooms the oldest are forgotten.
    pub(super) max_evicted: usize,
    /// Places of rooms' messages of older epochs, oldest epoch first: a
    /// room that started a new epoch (damage, a reboot, a clustered
    /// restart) still serves what is on disk of its older ones.
    older: HashMap<Id, Vec<RoomIndex>>,
}

impl LogRoomStore {
    /// No index yet; `keep`: rooms are logged.
    pub(crate) fn new(cap: usize, max_evicted: usize, keep: bool) -> Self {
        LogRoomStore {
            disk: HashMap::new(),
            cap,
            keep,
            reads: Vec::new(),
            evicted: 0,
            evicted_order: VecDeque::new(),
            max_evicted,
            older: HashMap::new(),
        }
    }

    /// Takes over the rooms the log held, as evicted rooms: each continues
    /// its sequence when used again, unless `new_epoch` says the node cannot
    /// prove it has every message it broadcast in it (or the room is marked
    /// damaged): then it is not kept, and starts a new epoch when used.
    pub(super) fn restore(&mut self, rooms: Vec<(Id, RoomState)>, new_epoch: bool, in_memory: &HashMap<Id, Room>) {
        // A room that starts a new epoch keeps its older epochs' places
        // (and its last epoch's): what is on disk of them stays readable.
        let mut rooms: Vec<_> = rooms
            .into_iter()
            .filter_map(|(rid, mut st)| {
                let fresh = new_epoch || st.damaged;
                let mut older = std::mem::take(&mut st.older);
                if fresh {
                    crate::store::log::recovery::keep_older(&mut older, std::mem::take(&mut st.index));
                }
                if !older.is_empty() {
                    self.older.insert(rid.clone(), older);
                }
                (!fresh).then_some((rid, st))
            })
            .collect();
        // Oldest first (by the place of the newest message), so that a cap
        // forgets the rooms used longest ago.
        rooms.sort_by_key(|(_, st)| st.index.last().map(|l| (l.seg(), l.off())));
        for (rid, st) in rooms {
            let mut ix = st.index;
            ix.top = ix.top.max(st.seq);
            if self.disk.insert(rid.clone(), ix).is_none() {
                self.evicted += 1;
                self.evicted_order.push_back(rid);
            }
        }
        self.trim_evicted(in_memory);
    }

    /// Forgets the rooms evicted longest ago while more than
    /// `--max-evicted-rooms` (per shard) are; compacts the eviction order
    /// when it is mostly rooms used again since.
    fn trim_evicted(&mut self, rooms: &HashMap<Id, Room>) {
        while self.evicted > self.max_evicted {
            let Some(rid) = self.evicted_order.pop_front() else { break };
            if !rooms.contains_key(&rid) && self.disk.remove(&rid).is_some() {
                self.evicted -= 1;
                self.older.remove(&rid);
            }
        }
        if self.evicted_order.len() > 2 * self.evicted + 1024 {
            let disk = &self.disk;
            let mut seen = std::collections::HashSet::new();
            let mut kept: VecDeque<Id> = self
                .evicted_order
                .drain(..)
                .rev()
                .filter(|rid| !rooms.contains_key(rid) && disk.contains_key(rid) && seen.insert(rid.clone()))
                .collect();
            kept.make_contiguous().reverse();
            self.evicted_order = kept;
        }
    }

    /// The log writer wrote these records at `base` of segment `seg` in
    /// directory `dir`: index them. Records of rooms this owner no longer
    /// holds (given to another node meanwhile) are not indexed.
    pub(super) fn on_written(&mut self, marks: &[Mark], dir: usize, seg: u64, base: u64, rooms: &HashMap<Id, Room>) {
        for m in marks {
            let loc = Loc::new(dir, seg, base + m.off);
            if let Some(ix) = self.disk.get_mut(&m.rid) {
                ix.push(m.epoch, m.seq, loc, self.cap);
            } else if rooms.contains_key(&m.rid) {
                let mut ix = RoomIndex::new(m.epoch, 0);
                ix.push(m.epoch, m.seq, loc, self.cap);
                self.disk.insert(m.rid.clone(), ix);
            }
        }
    }

    /// Retention deleted segments up to `seg` of directory `dir`: their
    /// places go, and an evicted room with nothing left on disk is forgotten
    /// (used again, it starts a new epoch).
    pub(super) fn on_segments_deleted(&mut self, dir: usize, seg: u64, rooms: &HashMap<Id, Room>) {
        self.older.retain(|_, v| {
            v.retain_mut(|ix| ix.drop_segments(dir, seg));
            !v.is_empty()
        });
        let evicted = &mut self.evicted;
        self.disk.retain(|rid, ix| {
            let keep = ix.drop_segments(dir, seg) || rooms.contains_key(rid);
            *evicted -= usize::from(!keep);
            keep
        });
    }
}

impl RoomStore for LogRoomStore {
    fn known(&self, rid: &Id) -> Option<(u64, u64)> {
        self.disk.get(rid).map(|ix| (ix.epoch, ix.top))
    }

    fn read_back_on_open(&self, rid: &Id) -> bool {
        self.disk.get(rid).is_some_and(|ix| ix.top > 0 && !ix.no_mids)
    }

    fn opened(&mut self, rid: &Id) {
        if self.disk.contains_key(rid) {
            self.evicted -= 1;
        }
    }

    /// From memory when memory holds the whole window; else a [`DiskRead`]
    /// for the shard's history reader. Paging back past the first message
    /// of the room's epoch goes on into its older epochs still on disk.
    fn plan_history(&mut self, q: HistoryQuery<'_>, room: Option<&Room>) -> Option<(ReadReply, u64, Vec<Bytes>)> {
        let HistoryQuery { rid, since, before, before_epoch, limit, reply, budget, node_epoch } = q;
        let ix = self.disk.get(rid);
        let older = self.older.get(rid);
        let (epoch, top, mem_low) = match (room, ix) {
            (Some(r), _) => (r.epoch(), r.seq(), r.memory_low()),
            (None, Some(ix)) => (ix.epoch, ix.top, ix.top + 1),
            (None, None) if older.is_some() => (node_epoch, 0, 1),
            (None, None) => return Some((reply, node_epoch, Vec::new())),
        };
        let forward = since.is_some();
        // A page back from a message of an older epoch.
        if let Some(e) = before_epoch.filter(|e| *e != epoch) {
            let mut locs = Vec::new();
            if let Some(older) = older {
                back_through(older.iter().rev().filter(|o| o.epoch <= e), e, before, limit, &mut locs);
            }
            if locs.is_empty() {
                return Some((reply, epoch, Vec::new()));
            }
            self.reads.push(DiskRead {
                rid: rid.clone(),
                epoch,
                locs,
                tail: Vec::new(),
                reply,
                forward: false,
                budget,
            });
            return None;
        }
        // The disk reaches further back when its run of this epoch joins
        // what memory holds.
        let ix = ix.filter(|ix| ix.epoch == epoch && !ix.is_empty() && ix.end() >= mem_low);
        let lowest = ix.map_or(mem_low, |ix| ix.first().min(mem_low));
        let w = history_window(since, before, limit, lowest, top);
        let split = w.end.min(mem_low).max(w.start);
        let mut tail: Vec<Bytes> = room.map(|r| r.history_range(split..w.end).cloned().collect()).unwrap_or_default();
        let mut locs: Vec<(u64, u64, Loc)> = match ix.filter(|_| split > w.start) {
            Some(ix) => (w.start..split).filter_map(|s| ix.get(s).map(|l| (epoch, s, l))).collect(),
            None => Vec::new(),
        };
        // Back to the epoch's first reachable message with room left on the
        // page: the rest comes from the older epochs.
        let taken = (w.end - w.start) as usize;
        if !forward
            && taken < limit
            && w.start <= lowest
            && let Some(older) = older
        {
            let mut back = Vec::new();
            back_through(older.iter().rev(), u64::MAX, None, limit - taken, &mut back);
            back.extend(locs);
            locs = back;
        }
        if locs.is_empty() {
            fit(&mut tail, forward, budget);
            return Some((reply, epoch, tail));
        }
        self.reads.push(DiskRead { rid: rid.clone(), epoch, locs, tail, reply, forward, budget });
        None
    }

    /// Keeps the room's index (its epoch, top seq and the places of its
    /// messages) when rooms are logged.
    fn evicted(&mut self, rid: &Id, room: &Room, rooms: &HashMap<Id, Room>) -> bool {
        if !self.keep {
            // No log to bring it back from: forgotten (a new epoch when used).
            return false;
        }
        let ix = self.disk.entry(rid.clone()).or_insert_with(|| RoomIndex::new(room.epoch(), room.seq()));
        if ix.epoch != room.epoch() {
            let prev = std::mem::replace(ix, RoomIndex::new(room.epoch(), room.seq()));
            if !prev.is_empty() {
                crate::store::log::recovery::keep_older(self.older.entry(rid.clone()).or_default(), prev);
            }
        }
        ix.top = ix.top.max(room.seq());
        ix.no_mids = room.mids_len() == 0 && room.changes.is_none();
        self.evicted += 1;
        self.evicted_order.push_back(rid.clone());
        self.trim_evicted(rooms);
        true
    }

    /// Forgets the index of rooms given to another node.
    fn view_changed(&mut self, keep: &dyn Fn(&Id) -> bool, rooms: &HashMap<Id, Room>) -> Vec<crate::msg::Request> {
        self.older.retain(|rid, _| keep(rid));
        let evicted = &mut self.evicted;
        self.disk.retain(|rid, _| {
            let kept = keep(rid);
            *evicted -= usize::from(!kept && !rooms.contains_key(rid));
            kept
        });
        Vec::new()
    }

    fn evicted_rooms(&self) -> usize {
        self.evicted
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
