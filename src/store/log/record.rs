//! The embedded log's byte layout: a segment header, then framed records.
//! No I/O.
//!
//! ```text
//! segment := header record*
//! header  := "CCHATLOG" version:u32                 (12 bytes)
//! record  := len:u32 crc:u32 body                   len = body length, crc = CRC-32 of body
//! body    := epoch:u64 seq:u64 ts:u64 rid:str msg:blob
//! str     := n:u16 bytes[n]                         the room id, UTF-8
//! blob    := the rest of the body                   the message's JSON exactly as members got it
//! ```
//!
//! Every integer is little-endian. A record is whole only when its length,
//! checksum and body all check: recovery keeps every record up to the first
//! one that does not, and cuts the rest (a write the process did not finish,
//! or damage).

use bytes::{Buf, BufMut, Bytes};

use crate::ids::Id;

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"CCHATLOG";
/// Version of the layout above.
pub const VERSION: u32 = 1;
/// Length of a segment header.
pub const HEADER_LEN: usize = 12;
/// Framing before a body: length and checksum.
pub const FRAME_LEN: usize = 8;
/// Largest body accepted (a message is at most `--max-message-bytes` of
/// text, escaped for JSON: far below this).
pub const MAX_BODY: usize = 1 << 20;

/// One stored room message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Epoch of the room's sequence.
    pub epoch: u64,
    /// Sequence number in the epoch.
    pub seq: u64,
    /// Server time of the message, Unix milliseconds.
    pub ts: u64,
    /// Room.
    pub rid: Id,
    /// The message's JSON as members received it.
    pub msg: Bytes,
}

/// What [`decode`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole record, and the bytes it took.
    Record(Record, usize),
    /// The buffer ends inside a record (or is empty).
    Incomplete,
    /// Not a record: bad length, checksum or field.
    Corrupt(&'static str),
}

/// The header every segment starts with.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a segment's header.
pub fn check_header(b: &[u8]) -> Result<(), &'static str> {
    if b.len() < HEADER_LEN {
        return Err("shorter than a segment header");
    }
    if &b[..8] != MAGIC {
        return Err("not a cchat log segment (bad magic)");
    }
    if b[8..12] != VERSION.to_le_bytes() {
        return Err("unknown log version");
    }
    Ok(())
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, epoch: u64, seq: u64, ts: u64, rid: &str, msg: &[u8]) {
    let start = out.len();
    out.put_u32_le(0); // length, patched below
    out.put_u32_le(0); // checksum, patched below
    out.put_u64_le(epoch);
    out.put_u64_le(seq);
    out.put_u64_le(ts);
    out.put_u16_le(rid.len() as u16);
    out.put_slice(rid.as_bytes());
    out.put_slice(msg);
    let body = start + FRAME_LEN;
    let len = (out.len() - body) as u32;
    let crc = crc32fast::hash(&out[body..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the front of `b`.
pub fn decode(b: &[u8]) -> Decoded {
    if b.len() < FRAME_LEN {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if !(26..=MAX_BODY).contains(&len) {
        return Decoded::Corrupt("record length out of range");
    }
    if b.len() < FRAME_LEN + len {
        return Decoded::Incomplete;
    }
    let body = &b[FRAME_LEN..FRAME_LEN + len];
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let mut r = body;
    let (epoch, seq, ts) = (r.get_u64_le(), r.get_u64_le(), r.get_u64_le());
    let n = r.get_u16_le() as usize;
    if r.remaining() < n {
        return Decoded::Corrupt("room id past the record");
    }
    let Some(rid) = std::str::from_utf8(&r[..n]).ok().and_then(Id::parse_str) else {
        return Decoded::Corrupt("room id is not a valid id");
    };
    let msg = Bytes::copy_from_slice(&r[n..]);
    Decoded::Record(Record { epoch, seq, ts, rid, msg }, FRAME_LEN + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(seq: u64, rid: &str, msg: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode(&mut b, 7, seq, 1_700_000_000_000, rid, msg);
        b
    }

    #[test]
    fn round_trip_and_layout() {
        let b = rec(3, "room", br#"{"cmd":"message"}"#);
        assert_eq!(b.len(), FRAME_LEN + 26 + 4 + 17);
        let Decoded::Record(r, used) = decode(&b) else { panic!() };
        assert_eq!(used, b.len());
        assert_eq!((r.epoch, r.seq, r.ts, r.rid.as_str()), (7, 3, 1_700_000_000_000, "room"));
        assert_eq!(&r.msg[..], br#"{"cmd":"message"}"#);
        assert!(check_header(&header()).is_ok());
        assert!(check_header(b"CCHATLOG\x02\0\0\0").is_err());
        assert!(check_header(b"GARBAGE!\x01\0\0\0").is_err());
    }

    proptest! {
        /// Any record survives encoding; any cut is incomplete, never a record.
        #[test]
        fn cuts_are_incomplete(seq in any::<u64>(), msg in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..400) {
            let b = rec(seq, "r-1", &msg);
            let Decoded::Record(r, used) = decode(&b) else { panic!() };
            prop_assert_eq!((r.seq, &r.msg[..], used), (seq, &msg[..], b.len()));
            let cut = cut.min(b.len() - 1);
            prop_assert_eq!(decode(&b[..cut]), Decoded::Incomplete);
        }

        /// A flipped bit anywhere is caught (never a different record).
        #[test]
        fn any_flipped_bit_is_caught(msg in proptest::collection::vec(any::<u8>(), 0..100), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut b = rec(9, "room", &msg);
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
            match decode(&b) {
                Decoded::Record(r, _) => prop_assert!(false, "a damaged record decoded: {:?}", r),
                Decoded::Incomplete | Decoded::Corrupt(_) => {}
            }
        }

        /// The decoder never panics on garbage.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
