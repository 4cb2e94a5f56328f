//! Read markers: how far each user has read each room. No I/O.
//!
//! A `read` command moves the user's marker for a room forward (never
//! back: a device showing older messages does not make newer ones unread
//! on the others). The room's owner keeps the markers of the rooms it owns,
//! tells the user's other connections in the room, and puts the marker in
//! every login ack of that user (`read`, and `unread`: the room's sequence
//! numbers after it). A marker belongs to the room's epoch: after a new
//! epoch (the sequence started again) it no longer says anything.
//!
//! The owner's shard writes the markers to a small file beside its log
//! (see [`Reads::encode`]) at most once a second when they changed, so a
//! marker survives a restart; a crash loses at most that second of reads,
//! never a message. Memory is bounded: at most [`MAX_MARKERS`] per shard,
//! the least recently moved ones forgotten first (their users then read
//! from the room's present, as someone with no marker does).

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use super::room::Room;
use super::{Dest, Out};
use crate::ids::Id;
use crate::msg::{ConnRef, Delivery};

/// Markers one shard keeps (~100 bytes each with two short ids).
pub(crate) const MAX_MARKERS: usize = 200_000;

/// The first line of a markers file.
const HEADER: &str = "cchat-read-markers 1\n";

/// One user's marker in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The room's epoch when it was set.
    pub epoch: u64,
    /// The newest seq the user has read.
    pub seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mark: Mark,
    /// When it last moved (a counter): the oldest are forgotten first.
    stamp: u64,
}

/// The markers of the rooms one shard owns.
#[derive(Debug)]
pub(crate) struct Reads {
    map: HashMap<(Id, Id), Entry>,
    clock: u64,
    cap: usize,
    dirty: bool,
    /// Rooms whose markers came back from a shared store before the room's
    /// sequence was known (its claim): their users are told once it is.
    to_tell: HashSet<Id>,
}

impl Default for Reads {
    fn default() -> Self {
        Reads::with_cap(MAX_MARKERS)
    }
}

/// A markers file that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ReadsError {
    /// It does not start with the markers header.
    #[error("not a read-markers file")]
    Header,
    /// A line is not `rid uid epoch seq`.
    #[error("line {0} is damaged")]
    Line(usize),
    /// The closing line is missing (the file was cut short) or its count
    /// or checksum do not match what precedes it.
    #[error("the file is incomplete or damaged (checksum)")]
    Check,
}

impl Reads {
    /// Keeping at most `cap` markers.
    pub(crate) fn with_cap(cap: usize) -> Reads {
        Reads { map: HashMap::new(), clock: 0, cap: cap.max(1), dirty: false, to_tell: HashSet::new() }
    }

    /// The user's marker in the room, if one is kept.
    pub(crate) fn get(&self, rid: &Id, uid: &Id) -> Option<Mark> {
        // (The key is a pair of ids: two reference-count increments per
        // lookup, once per login or read, never per message.)
        self.map.get(&(rid.clone(), uid.clone())).map(|e| e.mark)
    }

    /// The user's read state in `room` (whose sequence is known), for its
    /// login ack: the marker and how many of the room's seqs follow it.
    /// None with no marker. A marker of an earlier epoch says nothing about
    /// this sequence: the user has read the room as it is now.
    pub(crate) fn state(&self, rid: &Id, uid: &Id, room: &Room) -> Option<(u64, u64)> {
        let mark = self.get(rid, uid)?;
        let top = room.seq();
        let read = if mark.epoch == room.epoch() { mark.seq.min(top) } else { top };
        Some((read, top - read))
    }

    /// Moves the user's marker to `mark` if that is further (a newer epoch,
    /// or a higher seq in the same one). True when it moved.
    pub(crate) fn advance(&mut self, rid: &Id, uid: &Id, mark: Mark) -> bool {
        self.clock += 1;
        let stamp = self.clock;
        match self.map.get_mut(&(rid.clone(), uid.clone())) {
            Some(e) if (e.mark.epoch, e.mark.seq) >= (mark.epoch, mark.seq) => return false,
            Some(e) => *e = Entry { mark, stamp },
            None => {
                self.map.insert((rid.clone(), uid.clone()), Entry { mark, stamp });
                self.trim();
            }
        }
        self.dirty = true;
        true
    }

    /// Over the cap: forget the least recently moved eighth (one sort per
    /// cap/8 new markers, not one per marker).
    fn trim(&mut self) {
        if self.map.len() <= self.cap {
            return;
        }
        let mut stamps: Vec<u64> = self.map.values().map(|e| e.stamp).collect();
        let cut = (self.cap / 8).max(self.map.len() - self.cap);
        let (_, nth, _) = stamps.select_nth_unstable(cut - 1);
        let below = *nth;
        self.map.retain(|_, e| e.stamp > below);
    }

    /// How many are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The file's bytes if a marker moved since the last call.
    pub(crate) fn take_changed(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.encode())
    }

    /// `rid`'s users are to be told their markers once its sequence is known.
    pub(crate) fn tell_later(&mut self, rid: &Id) {
        if self.to_tell.len() < self.cap {
            self.to_tell.insert(rid.clone());
        }
    }

    /// Whether `rid`'s users were to be told (and are no longer).
    pub(crate) fn take_tell(&mut self, rid: &Id) -> bool {
        self.to_tell.remove(rid)
    }

    /// The markers must be written again (the last write failed).
    pub(crate) fn changed(&mut self) {
        self.dirty = true;
    }

    /// Every marker as a file: a header line, a line `rid uid epoch seq`
    /// per marker (ids never hold spaces or line breaks), and a closing
    /// line with the count and the CRC-32 of everything before it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut s = String::with_capacity(HEADER.len() + self.map.len() * 40 + 32);
        s.push_str(HEADER);
        for ((rid, uid), e) in &self.map {
            let _ = writeln!(s, "{rid} {uid} {} {}", e.mark.epoch, e.mark.seq);
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "end {} {crc:08x}", self.map.len());
        s.into_bytes()
    }

    /// The markers of a file [`Reads::encode`] wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<(Id, Id, Mark)>, ReadsError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ReadsError::Check)?;
        let body = text.strip_prefix(HEADER).ok_or(ReadsError::Header)?;
        let trailer_at = text.trim_end_matches('\n').rfind('\n').ok_or(ReadsError::Check)? + 1;
        if trailer_at < HEADER.len() {
            return Err(ReadsError::Check);
        }
        let trailer = text[trailer_at..].strip_suffix('\n').ok_or(ReadsError::Check)?;
        let mut t = trailer.split(' ');
        let (Some("end"), Some(n), Some(crc), None) = (t.next(), t.next(), t.next(), t.next()) else {
            return Err(ReadsError::Check);
        };
        let n: usize = n.parse().map_err(|_| ReadsError::Check)?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| ReadsError::Check)?;
        if crc32fast::hash(&bytes[..trailer_at]) != crc {
            return Err(ReadsError::Check);
        }
        let lines = &body[..trailer_at - HEADER.len()];
        let mut out = Vec::with_capacity(n.min(MAX_MARKERS));
        for (i, line) in lines.lines().enumerate() {
            let bad = || ReadsError::Line(i + 2);
            let mut f = line.split(' ');
            let (Some(rid), Some(uid), Some(epoch), Some(seq), None) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                return Err(bad());
            };
            let rid = Id::parse_str(rid).ok_or_else(bad)?;
            let uid = Id::parse_str(uid).ok_or_else(bad)?;
            let epoch = epoch.parse().map_err(|_| bad())?;
            let seq = seq.parse().map_err(|_| bad())?;
            out.push((rid, uid, Mark { epoch, seq }));
        }
        if out.len() != n {
            return Err(ReadsError::Check);
        }
        Ok(out)
    }

    /// Takes markers read from files (several shards' files after a change
    /// of `--shards`: the furthest of a user's markers wins) for the rooms
    /// `mine` says this shard owns. Nothing to write after.
    pub(crate) fn load(&mut self, markers: impl IntoIterator<Item = (Id, Id, Mark)>, mine: impl Fn(&Id) -> bool) {
        for (rid, uid, mark) in markers {
            if mine(&rid) {
                self.advance(&rid, &uid, mark);
            }
        }
        self.dirty = false;
    }
}

/// Tells `uid`'s connections in `room`, all but `except`, that its marker
/// there is at `seq`: one frame, shared.
pub(crate) fn tell(room: &Room, rid: &str, uid: &str, seq: u64, except: Option<ConnRef>, out: &mut Vec<Out>) {
    let Some(user) = room.user(uid) else { return };
    let frame = crate::protocol::encode_read(rid, seq);
    for &c in user.conns.iter().filter(|c| Some(**c) != except) {
        out.push(Out { dest: Dest::of(c), msg: Delivery::Direct { conn: c, frame: frame.clone() } });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::ids::testing::id;

    fn m(epoch: u64, seq: u64) -> Mark {
        Mark { epoch, seq }
    }

    #[test]
    fn markers_move_forward_only_and_a_new_epoch_is_forward() {
        let mut r = Reads::default();
        assert!(r.advance(&id("room"), &id("ann"), m(1, 5)));
        assert!(!r.advance(&id("room"), &id("ann"), m(1, 3)), "back: no");
        assert!(!r.advance(&id("room"), &id("ann"), m(1, 5)), "the same: no");
        assert_eq!(r.get(&id("room"), &id("ann")), Some(m(1, 5)));
        assert!(r.advance(&id("room"), &id("ann"), m(2, 1)), "a newer epoch");
        assert_eq!(r.get(&id("room"), &id("ann")), Some(m(2, 1)));
        assert_eq!(r.get(&id("room"), &id("bob")), None);
    }

    #[test]
    fn the_least_recently_moved_are_forgotten_past_the_cap() {
        let mut r = Reads::with_cap(16);
        for i in 0..16 {
            r.advance(&id("r"), &id(&format!("u{i}")), m(1, 1));
        }
        // u0 moves again: now the newest.
        r.advance(&id("r"), &id("u0"), m(1, 2));
        r.advance(&id("r"), &id("new"), m(1, 1));
        assert!(r.len() <= 16);
        assert_eq!(r.get(&id("r"), &id("u0")), Some(m(1, 2)), "recently moved: kept");
        assert_eq!(r.get(&id("r"), &id("new")), Some(m(1, 1)));
        assert_eq!(r.get(&id("r"), &id("u1")), None, "the oldest: forgotten");
        for i in 0..10_000 {
            r.advance(&id("r"), &id(&format!("x{i}")), m(1, 1));
            assert!(r.len() <= 16);
        }
    }

    #[test]
    fn a_file_that_is_cut_or_altered_is_refused() {
        let mut r = Reads::default();
        r.advance(&id("room"), &id("ann"), m(7, 42));
        r.advance(&id("dm:ann:bob"), &id("bob"), m(7, 3));
        let bytes = r.take_changed().expect("changed");
        assert_eq!(r.take_changed(), None, "nothing new");
        let mut got = Reads::decode(&bytes).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, vec![(id("dm:ann:bob"), id("bob"), m(7, 3)), (id("room"), id("ann"), m(7, 42))]);
        for cut in 0..bytes.len() {
            assert!(Reads::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(Reads::decode(b"hello\n"), Err(ReadsError::Header));
        assert!(Reads::decode(Reads::default().encode().as_slice()).unwrap().is_empty());
    }

    #[test]
    fn loading_takes_the_furthest_of_several_files_and_only_own_rooms() {
        let mut r = Reads::default();
        let files = vec![(id("a"), id("ann"), m(1, 9)), (id("a"), id("ann"), m(1, 4)), (id("b"), id("ann"), m(1, 2))];
        r.load(files, |rid| rid.as_str() == "a");
        assert_eq!(r.get(&id("a"), &id("ann")), Some(m(1, 9)));
        assert_eq!(r.get(&id("b"), &id("ann")), None);
        assert_eq!(r.take_changed(), None, "what was loaded needs no write");
    }

    proptest! {
        /// Whatever the markers, a file reads back as exactly them, and a
        /// file with any one bit flipped is refused (or says the same).
        #[test]
        fn files_round_trip_and_a_flipped_bit_is_refused(
            marks in proptest::collection::vec(("[a-z0-9:_.-]{1,12}", "[a-z0-9_]{1,12}", 0u64..1 << 40, 0u64..1 << 40), 0..40),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut r = Reads::default();
            let mut want = HashMap::new();
            for (rid, uid, e, s) in &marks {
                let (rid, uid) = (id(rid), id(uid));
                r.advance(&rid, &uid, m(*e, *s));
                let w = want.entry((rid, uid)).or_insert(m(*e, *s));
                if (e, s) > (&w.epoch, &w.seq) {
                    *w = m(*e, *s);
                }
            }
            let bytes = r.encode();
            let got: HashMap<(Id, Id), Mark> =
                Reads::decode(&bytes).unwrap().into_iter().map(|(a, b, c)| ((a, b), c)).collect();
            prop_assert_eq!(&got, &want);
            let mut bad = bytes.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            // Refused, or (a hex digit of the checksum in the other case)
            // the very same markers: never others.
            if let Ok(got) = Reads::decode(&bad) {
                let got: HashMap<(Id, Id), Mark> = got.into_iter().map(|(a, b, c)| ((a, b), c)).collect();
                prop_assert_eq!(&got, &want);
            }
        }
    }
}
