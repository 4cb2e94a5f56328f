//! Where a room's stored messages sit in the log, so its history can be read
//! back from disk and an evicted room can come back with its sequence.
//! No I/O.
//!
//! Each room keeps a [`RoomIndex`]: its epoch, its top seq, and the place
//! ([`Loc`], 8 bytes) of each of its newest `--history` messages of that
//! epoch, seq by seq. That is all the memory a room with no members costs
//! once it is evicted; it goes when retention deletes the last segment that
//! holds its messages (the room then starts a new epoch if used again).

use std::collections::VecDeque;

const DIR_BITS: u32 = 12;
const SEG_BITS: u32 = 22;
const OFF_BITS: u32 = 30;

/// Largest segment offset a [`Loc`] can name; `--segment-bytes` is capped
/// well below it (a segment overshoots its size by at most one write).
pub const MAX_OFFSET: u64 = (1 << OFF_BITS) - 1;

/// A record's place in the log: shard directory, segment, byte offset,
/// packed in 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc(u64);

impl Loc {
    /// No record: a gap in a room's index.
    pub const HOLE: Loc = Loc(u64::MAX);

    /// The record at byte `off` of segment `seg` in shard directory `dir`;
    /// None when a part does not fit (the record is then not indexed).
    pub fn new(dir: usize, seg: u64, off: u64) -> Option<Loc> {
        if dir >= 1 << DIR_BITS || seg >= 1 << SEG_BITS || off > MAX_OFFSET {
            return None;
        }
        Some(Loc(((dir as u64) << (SEG_BITS + OFF_BITS)) | (seg << OFF_BITS) | off))
    }

    /// The shard directory.
    pub fn dir(self) -> usize {
        (self.0 >> (SEG_BITS + OFF_BITS)) as usize
    }

    /// The segment's index.
    pub fn seg(self) -> u64 {
        (self.0 >> OFF_BITS) & ((1 << SEG_BITS) - 1)
    }

    /// The byte offset in the segment.
    pub fn off(self) -> u64 {
        self.0 & MAX_OFFSET
    }
}

/// One room's sequence and the places of its newest stored messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomIndex {
    /// The epoch of the room's sequence.
    pub epoch: u64,
    /// The room's top seq in that epoch (sequenced, perhaps not all indexed:
    /// a write that failed leaves its messages out).
    pub top: u64,
    /// Seq of `locs[0]`.
    first: u64,
    /// Places of seqs `first..first + len`, in order; [`Loc::HOLE`] for a
    /// seq with no stored record (a write that failed and was refused), so
    /// that a gap hides nothing on either side of it. The first and last
    /// are never holes.
    locs: VecDeque<Loc>,
    /// Known to hold no message with a client id (`mid`) and no change
    /// (edit, deletion, reaction): set when the room left memory with none,
    /// so bringing it back reads nothing back.
    pub no_mids: bool,
}

impl RoomIndex {
    /// A sequence at `top` in `epoch` with nothing indexed.
    pub fn new(epoch: u64, top: u64) -> Self {
        RoomIndex { epoch, top, first: top + 1, locs: VecDeque::new(), no_mids: false }
    }

    /// Records that message `seq` of `epoch` is at `loc`, keeping the
    /// places of at most the newest `cap` seqs. Records may come in any
    /// order (directories of several shard counts merged at start): each
    /// takes its seq's slot, seqs without a record are holes. A newer epoch
    /// starts the places afresh; an older one is ignored.
    pub fn push(&mut self, epoch: u64, seq: u64, loc: Option<Loc>, cap: usize) {
        if epoch != self.epoch {
            if epoch < self.epoch {
                return; // a record of an older sequence (merged directories)
            }
            *self = RoomIndex::new(epoch, 0);
        }
        self.top = self.top.max(seq);
        let Some(loc) = loc.filter(|_| cap > 0) else {
            // A place that cannot be named: nothing before it is reachable
            // through the index either (the window must end at the top).
            if seq + 1 >= self.end() {
                self.locs.clear();
                self.first = seq + 1;
            }
            return;
        };
        if self.locs.is_empty() {
            self.first = seq;
            self.locs.push_back(loc);
            return;
        }
        let end = self.end();
        if seq >= end {
            if seq - end >= cap as u64 {
                self.locs.clear();
                self.first = seq;
            } else {
                self.locs.extend(std::iter::repeat_n(Loc::HOLE, (seq - end) as usize));
            }
            self.locs.push_back(loc);
        } else if seq < self.first {
            if end - seq > cap as u64 {
                return; // older than the window
            }
            for _ in seq + 1..self.first {
                self.locs.push_front(Loc::HOLE);
            }
            self.locs.push_front(loc);
            self.first = seq;
        } else {
            let slot = &mut self.locs[(seq - self.first) as usize];
            if *slot == Loc::HOLE {
                *slot = loc;
            }
            return; // else: a copy of a record already indexed
        }
        while self.locs.len() > cap {
            self.locs.pop_front();
            self.first += 1;
        }
        self.trim_front();
    }

    fn trim_front(&mut self) {
        while self.locs.front() == Some(&Loc::HOLE) {
            self.locs.pop_front();
            self.first += 1;
        }
    }

    /// One past the newest indexed seq.
    pub fn end(&self) -> u64 {
        self.first + self.locs.len() as u64
    }

    /// The oldest indexed seq (`end()` when none is).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Where message `seq` is, if indexed (None in a gap).
    pub fn get(&self, seq: u64) -> Option<Loc> {
        seq.checked_sub(self.first).and_then(|i| self.locs.get(i as usize)).copied().filter(|l| *l != Loc::HOLE)
    }

    /// Forgets the places in segments up to `seg` of directory `dir` (deleted
    /// by retention). Returns whether any place is left.
    pub fn drop_segments(&mut self, dir: usize, seg: u64) -> bool {
        while self.locs.front().is_some_and(|l| l.dir() == dir && l.seg() <= seg) {
            self.locs.pop_front();
            self.first += 1;
            self.trim_front();
        }
        !self.locs.is_empty()
    }

    /// The place of the newest indexed message.
    pub fn last(&self) -> Option<Loc> {
        self.locs.back().copied()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_pack_and_unpack() {
        let l = Loc::new(7, 123_456, MAX_OFFSET).unwrap();
        assert_eq!((l.dir(), l.seg(), l.off()), (7, 123_456, MAX_OFFSET));
        assert!(Loc::new(1 << DIR_BITS, 0, 0).is_none());
        assert!(Loc::new(0, 1 << SEG_BITS, 0).is_none());
        assert!(Loc::new(0, 0, MAX_OFFSET + 1).is_none());
    }

    fn at(off: u64) -> Option<Loc> {
        Loc::new(0, 1, off)
    }

    #[test]
    fn the_index_keeps_a_contiguous_capped_run() {
        let mut ix = RoomIndex::new(5, 0);
        for seq in 1..=10 {
            ix.push(5, seq, at(seq * 10), 4);
        }
        assert_eq!((ix.first(), ix.end(), ix.top), (7, 11, 10));
        assert_eq!(ix.get(7), at(70));
        assert_eq!(ix.get(6), None);
        // A gap (a refused write) is a hole: both sides stay reachable.
        ix.push(5, 12, at(120), 4);
        assert_eq!((ix.first(), ix.end(), ix.get(10), ix.get(11), ix.get(12)), (9, 13, at(100), None, at(120)));
        // A record of the gap found later (merged directories) fills it;
        // a copy of one indexed changes nothing.
        ix.push(5, 11, at(110), 4);
        ix.push(5, 12, at(1), 4);
        assert_eq!((ix.get(11), ix.get(12)), (at(110), at(120)));
        // A gap wider than the window starts afresh.
        ix.push(5, 30, at(300), 4);
        assert_eq!((ix.first(), ix.end()), (30, 31));
        // A new epoch starts afresh; an older one is ignored.
        ix.push(6, 1, at(5), 4);
        assert_eq!((ix.epoch, ix.top, ix.first()), (6, 1, 1));
        ix.push(5, 99, at(6), 4);
        assert_eq!((ix.epoch, ix.top, ix.get(1)), (6, 1, at(5)));
        // A place that does not fit: nothing indexed, the top still moves.
        ix.push(6, 2, None, 4);
        assert!(ix.is_empty());
        assert_eq!(ix.top, 2);
    }

    /// Records in any order give the same index as in order, holes where
    /// no record came, at most `cap` seqs, never a hole at either end.
    #[test]
    fn records_in_any_order_make_the_same_index() {
        use proptest::prelude::*;
        proptest!(|(mut seqs in proptest::collection::vec(1u64..60, 1..80), cap in 1usize..20)| {
            let mut sorted = RoomIndex::new(1, 0);
            let mut want: Vec<u64> = seqs.clone();
            want.sort();
            want.dedup();
            for &s in &want {
                sorted.push(1, s, at(s), cap);
            }
            // Any order: recovery merging directories.
            seqs.reverse();
            let mut any = RoomIndex::new(1, 0);
            for &s in &seqs {
                any.push(1, s, at(s), cap);
            }
            let top = *want.last().unwrap();
            let kept: Vec<u64> = want.iter().copied().filter(|s| top - s < cap as u64).collect();
            for ix in [&sorted, &any] {
                prop_assert_eq!(ix.top, top);
                prop_assert_eq!(ix.end(), top + 1);
                prop_assert_eq!(ix.first(), kept[0]);
                for s in 1..=top {
                    prop_assert_eq!(ix.get(s), if kept.contains(&s) { at(s) } else { None });
                }
            }
        });
    }

    #[test]
    fn retention_drops_the_oldest_segments() {
        let mut ix = RoomIndex::new(1, 0);
        for seq in 1..=6 {
            ix.push(1, seq, Loc::new(0, seq.div_ceil(2), 0), 100);
        }
        assert!(ix.drop_segments(0, 2));
        assert_eq!(ix.first(), 5);
        assert!(ix.drop_segments(1, 9), "another directory's segments are not these");
        assert!(!ix.drop_segments(0, 3));
        assert_eq!((ix.first(), ix.end(), ix.top), (7, 7, 6));
    }
}
