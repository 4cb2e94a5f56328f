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
    /// Places of seqs `first..first + len`, in order.
    locs: VecDeque<Loc>,
}

impl RoomIndex {
    /// A sequence at `top` in `epoch` with nothing indexed.
    pub fn new(epoch: u64, top: u64) -> Self {
        RoomIndex { epoch, top, first: top + 1, locs: VecDeque::new() }
    }

    /// Records that message `seq` of `epoch` is at `loc`, keeping at most
    /// `cap` places. A new epoch, or a seq that does not follow the last one
    /// indexed (a failed write between), starts the places afresh: the
    /// places always cover one contiguous run of seqs.
    pub fn push(&mut self, epoch: u64, seq: u64, loc: Option<Loc>, cap: usize) {
        if epoch != self.epoch {
            if epoch < self.epoch {
                return; // a record of an older sequence (merged directories)
            }
            *self = RoomIndex::new(epoch, 0);
        }
        self.top = self.top.max(seq);
        if seq < self.end() && !self.locs.is_empty() {
            return; // an older record of this sequence (merged directories)
        }
        let Some(loc) = loc.filter(|_| cap > 0) else {
            self.locs.clear();
            self.first = seq + 1;
            return;
        };
        if seq != self.end() || self.locs.is_empty() {
            self.locs.clear();
            self.first = seq;
        }
        self.locs.push_back(loc);
        while self.locs.len() > cap {
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

    /// Where message `seq` is, if indexed.
    pub fn get(&self, seq: u64) -> Option<Loc> {
        seq.checked_sub(self.first).and_then(|i| self.locs.get(i as usize)).copied()
    }

    /// Forgets the places in segments up to `seg` of directory `dir` (deleted
    /// by retention). Returns whether any place is left.
    pub fn drop_segments(&mut self, dir: usize, seg: u64) -> bool {
        while self.locs.front().is_some_and(|l| l.dir() == dir && l.seg() <= seg) {
            self.locs.pop_front();
            self.first += 1;
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
        // A gap (a failed write) starts the run afresh.
        ix.push(5, 12, at(120), 4);
        assert_eq!((ix.first(), ix.end(), ix.get(10)), (12, 13, None));
        // An older record of the sequence changes nothing.
        ix.push(5, 11, at(1), 4);
        assert_eq!((ix.first(), ix.end(), ix.get(12)), (12, 13, at(120)));
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
