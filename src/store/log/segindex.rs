//! A sealed segment's index file (`NNN.idx` beside `NNN.log`): each record's
//! room, epoch, seq and offset, so a restart rebuilds the rooms' sequences
//! and indexes from ~24 bytes per record instead of reading every message.
//! No I/O.
//!
//! ```text
//! idx     := "CCHATIDX" version:u32 seg_len:u64 last_ts:u64
//!            nrooms:u32 (n:u16 rid[n])* nrecs:u32 (room:u32 epoch:u64 seq:u64 off:u32)*
//!            crc:u32                                  CRC-32 of everything before it
//! ```
//!
//! Written once, when the writer seals the segment (after its fsync). An
//! index that does not check (torn, damaged, or for a segment of another
//! length) is ignored and the segment is read instead: the index is only
//! ever a shortcut.

use std::collections::HashMap;

use bytes::{Buf, BufMut};

use crate::ids::Id;

const MAGIC: &[u8; 8] = b"CCHATIDX";
const VERSION: u32 = 1;

/// One record as a segment index lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Index into the room table.
    pub room: u32,
    /// Epoch of the message.
    pub epoch: u64,
    /// Its seq.
    pub seq: u64,
    /// Offset of its record in the segment.
    pub off: u32,
}

/// A decoded segment index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegIndex {
    /// Length of the segment it describes.
    pub seg_len: u64,
    /// Server time of the segment's newest record (Unix ms).
    pub last_ts: u64,
    /// Rooms, by the numbers entries use.
    pub rooms: Vec<Id>,
    /// Records, in segment order.
    pub entries: Vec<Entry>,
}

/// Collects the entries of the segment being written.
#[derive(Debug, Default)]
pub struct Builder {
    rooms: Vec<Id>,
    numbers: HashMap<Id, u32>,
    entries: Vec<Entry>,
    /// The builder saw every record since the segment's header (false after
    /// a restart resumed a segment, or an offset too large to list).
    pub complete: bool,
    /// Where the batches it saw end: the next must start there.
    end: u64,
}

impl Builder {
    /// A builder for a segment whose records it will all see (or not).
    pub fn new(complete: bool) -> Self {
        Builder { complete, end: crate::store::log::record::HEADER_LEN as u64, ..Default::default() }
    }

    /// A batch of `len` bytes of records was written at `base`: its records
    /// follow (through [`Builder::add`]). A batch that does not start where
    /// the last ended (one the builder did not see) makes it incomplete.
    pub fn batch(&mut self, base: u64, len: u64) {
        if base != self.end {
            self.complete = false;
        }
        self.end = base + len;
    }

    /// Lists one written record.
    pub fn add(&mut self, rid: &Id, epoch: u64, seq: u64, off: u64) {
        if !self.complete {
            return;
        }
        let Ok(off) = u32::try_from(off) else {
            self.complete = false;
            return;
        };
        let next = self.rooms.len() as u32;
        let room = *self.numbers.entry(rid.clone()).or_insert_with(|| {
            self.rooms.push(rid.clone());
            next
        });
        self.entries.push(Entry { room, epoch, seq, off });
    }

    /// The index file of the sealed segment, when every record of its
    /// `seg_len` bytes was seen.
    pub fn finish(self, seg_len: u64, last_ts: u64) -> Option<Vec<u8>> {
        (self.complete && self.end == seg_len)
            .then(|| encode(&SegIndex { seg_len, last_ts, rooms: self.rooms, entries: self.entries }))
    }
}

/// The bytes of an index file.
pub fn encode(ix: &SegIndex) -> Vec<u8> {
    let mut b = Vec::with_capacity(40 + ix.rooms.len() * 16 + ix.entries.len() * 24);
    b.put_slice(MAGIC);
    b.put_u32_le(VERSION);
    b.put_u64_le(ix.seg_len);
    b.put_u64_le(ix.last_ts);
    b.put_u32_le(ix.rooms.len() as u32);
    for r in &ix.rooms {
        b.put_u16_le(r.len() as u16);
        b.put_slice(r.as_bytes());
    }
    b.put_u32_le(ix.entries.len() as u32);
    for e in &ix.entries {
        b.put_u32_le(e.room);
        b.put_u64_le(e.epoch);
        b.put_u64_le(e.seq);
        b.put_u32_le(e.off);
    }
    let crc = crc32fast::hash(&b);
    b.put_u32_le(crc);
    b
}

/// Reads an index file; an error says why it cannot be used.
pub fn decode(bytes: &[u8]) -> Result<SegIndex, &'static str> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else { return Err("index cut short") };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("index checksum mismatch");
    }
    let mut b = body;
    let short = "index cut short";
    if b.remaining() < 32 || &b[..8] != MAGIC {
        return Err("not a segment index");
    }
    b.advance(8);
    if b.get_u32_le() != VERSION {
        return Err("segment index of another version");
    }
    let (seg_len, last_ts) = (b.get_u64_le(), b.get_u64_le());
    let nrooms = b.get_u32_le() as usize;
    let mut rooms = Vec::with_capacity(nrooms.min(b.remaining() / 3));
    for _ in 0..nrooms {
        if b.remaining() < 2 {
            return Err(short);
        }
        let n = b.get_u16_le() as usize;
        if b.remaining() < n {
            return Err(short);
        }
        let rid = std::str::from_utf8(&b[..n]).ok().and_then(Id::parse_str).ok_or("bad room id in index")?;
        b.advance(n);
        rooms.push(rid);
    }
    if b.remaining() < 4 {
        return Err(short);
    }
    let nrecs = b.get_u32_le() as usize;
    if b.remaining() != nrecs * 24 {
        return Err("index length does not match its records");
    }
    let mut entries = Vec::with_capacity(nrecs);
    for _ in 0..nrecs {
        let e = Entry { room: b.get_u32_le(), epoch: b.get_u64_le(), seq: b.get_u64_le(), off: b.get_u32_le() };
        if e.room as usize >= rooms.len() {
            return Err("index names a room it does not list");
        }
        entries.push(e);
    }
    Ok(SegIndex { seg_len, last_ts, rooms, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut b = Builder::new(true);
        b.batch(12, n as u64 * 50);
        for k in 0..n as u64 {
            b.add(&Id::parse_str(&format!("room-{}", k % 3)).unwrap(), 7, k / 3 + 1, 12 + k * 50);
        }
        b.finish(12 + n as u64 * 50, 99).unwrap()
    }

    #[test]
    fn round_trip() {
        let ix = decode(&sample(10)).unwrap();
        assert_eq!((ix.seg_len, ix.last_ts, ix.rooms.len(), ix.entries.len()), (512, 99, 3, 10));
        assert_eq!(ix.entries[4], Entry { room: 1, epoch: 7, seq: 2, off: 212 });
        assert!(Builder::new(false).finish(12, 0).is_none(), "an incomplete builder writes no index");
        let mut b = Builder::new(true);
        b.batch(12, 50);
        b.batch(100, 50);
        assert!(b.finish(150, 0).is_none(), "a batch it did not see");
        let mut b = Builder::new(true);
        b.batch(12, 50);
        assert!(b.finish(100, 0).is_none(), "records it was not told of");
    }

    proptest! {
        /// Any cut or flipped byte is refused, never misread.
        #[test]
        fn damage_is_refused(n in 0usize..20, at in any::<prop::sample::Index>(), x in 1u8..=255, cut in any::<bool>()) {
            let mut b = sample(n);
            let i = at.index(b.len());
            if cut { b.truncate(i) } else { b[i] ^= x }
            prop_assert!(decode(&b).is_err());
        }
    }
}
