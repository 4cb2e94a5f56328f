//! Sealed records: how a link's bytes travel after the handshake. No I/O.
//!
//! ```text
//! record := len:u32 sealed[len]      len = plaintext length + 16, at most MAX_RECORD + 16
//! sealed := AES-256-GCM(key of the direction, nonce = 0:u32 counter:u64, aad = len, plaintext)
//! ```
//!
//! The plaintext of the records of one direction, in order, is the stream
//! of frames of [`super::codec`]; a frame may span records. The counter
//! starts at 0 for each direction and each record takes the next, so the
//! nonce never repeats under a key, and a record dropped, repeated or
//! reordered on the way fails to open like an altered one: the link is
//! closed. Sealing a whole write (up to 256 KiB of frames) at a time puts
//! one tag and one cipher call on many frames.
//!
//! AES-GCM rather than ChaCha20-Poly1305: every x86 and ARM server of the
//! last decade runs it in hardware, and ring picks its fastest code.

use bytes::{Buf, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use thiserror::Error;

/// Key length of a direction.
pub const KEY_LEN: usize = 32;
/// Tag length of a record.
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one record: one frame of the largest size with its
/// length, or a write's worth of smaller frames.
pub const MAX_RECORD: usize = super::codec::MAX_FRAME + 64;

/// A record that does not open: the link is closed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The length prefix is out of range.
    #[error("record length {0} out of range")]
    Length(usize),
    /// Altered, forged, dropped, repeated or reordered on the way.
    #[error("record failed authentication (altered, repeated, reordered or forged)")]
    Auth,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256-GCM key"))
}

/// Seals this side's records.
pub struct Sealer {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with `key`, counting from 0.
    pub fn new(k: &[u8; KEY_LEN]) -> Sealer {
        Sealer { key: key(k), counter: 0 }
    }

    /// Starts a record at the end of `out`: returns where it starts. The
    /// plaintext is then appended to `out` and [`Sealer::finish`] seals it
    /// in place (no copy).
    pub fn begin(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        start
    }

    /// Seals the record begun at `start` (everything after its length).
    pub fn finish(&mut self, out: &mut Vec<u8>, start: usize) {
        let plain = out.len() - start - 4;
        assert!(plain <= MAX_RECORD, "a record of {plain} bytes");
        let len = ((plain + TAG_LEN) as u32).to_be_bytes();
        out[start..start + 4].copy_from_slice(&len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter), Aad::from(len), &mut out[start + 4..])
            .expect("AES-GCM seals any length under its limit");
        out.extend_from_slice(tag.as_ref());
        self.counter += 1;
    }

    /// Appends one sealed record of `plain` to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let start = self.begin(out);
        out.extend_from_slice(plain);
        self.finish(out, start);
    }
}

/// Opens the peer's records.
pub struct Opener {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener with `key`, counting from 0.
    pub fn new(k: &[u8; KEY_LEN]) -> Opener {
        Opener { key: key(k), counter: 0 }
    }

    /// Opens every whole record at the front of `input` and appends its
    /// plaintext to `out`; a partial record stays in `input`. Returns how
    /// many records were opened. After an error the link must be closed.
    pub fn open(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<usize, RecordError> {
        let mut n = 0;
        while input.len() >= 4 {
            let len = u32::from_be_bytes(input[..4].try_into().expect("4 bytes")) as usize;
            if !(TAG_LEN..=MAX_RECORD + TAG_LEN).contains(&len) {
                return Err(RecordError::Length(len));
            }
            if input.len() < 4 + len {
                break;
            }
            let mut rec = input.split_to(4 + len);
            let aad: [u8; 4] = rec[..4].try_into().expect("4 bytes");
            rec.advance(4);
            let plain =
                self.key.open_in_place(nonce(self.counter), Aad::from(aad), &mut rec).map_err(|_| RecordError::Auth)?;
            out.extend_from_slice(plain);
            self.counter += 1;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(&[7; KEY_LEN]), Opener::new(&[7; KEY_LEN]))
    }

    fn open_all(o: &mut Opener, wire: &[u8]) -> Result<Vec<u8>, RecordError> {
        let mut input = BytesMut::from(wire);
        let mut out = BytesMut::new();
        o.open(&mut input, &mut out)?;
        assert!(input.is_empty(), "every record whole");
        Ok(out.to_vec())
    }

    #[test]
    fn records_round_trip_in_order() {
        let (mut s, mut o) = pair();
        let mut wire = Vec::new();
        s.seal(b"one", &mut wire);
        s.seal(b"", &mut wire);
        s.seal(b"three", &mut wire);
        assert_eq!(open_all(&mut o, &wire).unwrap(), b"onethree");
        // Byte by byte: a partial record waits.
        let (mut s, mut o) = pair();
        let mut wire = Vec::new();
        s.seal(b"hello", &mut wire);
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            input.extend_from_slice(&[*b]);
            let n = o.open(&mut input, &mut out).unwrap();
            assert_eq!(n, usize::from(i == wire.len() - 1));
        }
        assert_eq!(&out[..], b"hello");
    }

    #[test]
    fn a_repeated_dropped_or_reordered_record_does_not_open() {
        let (mut s, _) = pair();
        let (mut r1, mut r2) = (Vec::new(), Vec::new());
        s.seal(b"first", &mut r1);
        s.seal(b"second", &mut r2);
        // Repeated.
        let (_, mut o) = pair();
        assert_eq!(open_all(&mut o, &[r1.clone(), r1.clone()].concat()), Err(RecordError::Auth));
        // Dropped (the second arrives first).
        let (_, mut o) = pair();
        assert_eq!(open_all(&mut o, &r2), Err(RecordError::Auth));
        // Reordered.
        let (_, mut o) = pair();
        assert_eq!(open_all(&mut o, &[r2, r1].concat()), Err(RecordError::Auth));
        // Another key.
        let mut o = Opener::new(&[8; KEY_LEN]);
        let mut w = Vec::new();
        Sealer::new(&[7; KEY_LEN]).seal(b"x", &mut w);
        assert_eq!(open_all(&mut o, &w), Err(RecordError::Auth));
    }

    #[test]
    fn bad_lengths_are_refused_before_waiting_for_them() {
        let (_, mut o) = pair();
        let mut out = BytesMut::new();
        assert_eq!(o.open(&mut BytesMut::from(&[0, 0, 0, 3][..]), &mut out), Err(RecordError::Length(3)));
        assert!(matches!(o.open(&mut BytesMut::from(&[0xff, 0, 0, 0][..]), &mut out), Err(RecordError::Length(_))));
    }

    proptest! {
        /// Any single flipped bit anywhere in a record makes it fail.
        #[test]
        fn a_flipped_bit_anywhere_is_caught(plain in proptest::collection::vec(any::<u8>(), 0..200), pos in any::<usize>(), bit in 0u8..8) {
            let (mut s, mut o) = pair();
            let mut wire = Vec::new();
            s.seal(&plain, &mut wire);
            let pos = pos % wire.len();
            wire[pos] ^= 1 << bit;
            let mut input = BytesMut::from(&wire[..]);
            let mut out = BytesMut::new();
            match o.open(&mut input, &mut out) {
                Ok(0) => prop_assert!(pos < 4, "only a longer length can make it wait"),
                Ok(_) => prop_assert!(false, "an altered record opened"),
                Err(_) => {}
            }
            prop_assert!(out.is_empty());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (_, mut o) = pair();
            let _ = o.open(&mut BytesMut::from(&bytes[..]), &mut BytesMut::new());
        }
    }
}
