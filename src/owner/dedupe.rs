//! A room's memory of the client ids (`mid`) of its messages, so that a
//! message sent again — its sender did not see the answer before its
//! connection dropped — is recognised and not posted twice. No I/O.
//!
//! A room remembers each `(uid, mid)` it stored with the message's
//! `(epoch, seq, ts)`: for at least `--dedupe-window-secs` (default ten
//! minutes), and at least for its newest `--history` messages, but never
//! more than `--dedupe-max` entries (memory per room is bounded whatever
//! clients send). A pair is kept as a 64-bit keyed hash (SipHash with a
//! random key per table), so an entry costs ~105 bytes (measured, map and
//! order queue at their capacity) whatever the ids' lengths; a collision between two different pairs in one room is
//! ~1 in 10^11 at the cap.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};

/// The message a `(uid, mid)` pair first named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Original {
    /// Its epoch.
    pub epoch: u64,
    /// Its seq.
    pub seq: u64,
    /// Its server time, Unix milliseconds.
    pub ts: u64,
}

/// How long and how many entries a room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Entries younger than this are kept (up to `max`).
    pub ms: u64,
    /// The newest this many are kept however old (up to `max`).
    pub keep: usize,
    /// Never more entries than this.
    pub max: usize,
}

impl Default for Window {
    fn default() -> Self {
        Window { ms: 600_000, keep: 1000, max: 10_000 }
    }
}

/// One room's table.
#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    hasher: RandomState,
    map: HashMap<u64, Original>,
    /// Keys in the order noted (oldest first), for trimming.
    order: VecDeque<u64>,
}

impl Dedupe {
    fn key(&self, uid: &str, mid: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(uid.as_bytes());
        h.write_u8(0xff); // not in any id: ("ab","c") and ("a","bc") differ
        h.write(mid.as_bytes());
        h.finish()
    }

    /// The message `uid` sent earlier under `mid`, if remembered.
    pub(crate) fn find(&self, uid: &str, mid: &str) -> Option<Original> {
        self.map.get(&self.key(uid, mid)).copied()
    }

    /// Remembers a stored message, then trims to `w` as of `now_ms`.
    pub(crate) fn note(&mut self, uid: &str, mid: &str, orig: Original, w: Window, now_ms: u64) {
        let k = self.key(uid, mid);
        if self.map.insert(k, orig).is_none() {
            self.order.push_back(k);
        }
        self.trim(w, now_ms);
    }

    /// Forgets what is past the window: beyond `max`, and older than `ms`
    /// once more than `keep` are held.
    pub(crate) fn trim(&mut self, w: Window, now_ms: u64) {
        while let Some(&k) = self.order.front() {
            let n = self.order.len();
            let old = self.map.get(&k).is_none_or(|o| o.ts.saturating_add(w.ms) < now_ms);
            if n > w.max.max(1) || (n > w.keep && old) {
                self.order.pop_front();
                self.map.remove(&k);
            } else {
                break;
            }
        }
        if self.order.capacity() > 64 && self.order.len() * 4 < self.order.capacity() {
            self.order.shrink_to(self.order.len() * 2);
            self.map.shrink_to(self.order.len() * 2);
        }
    }

    /// Forgets the entries of messages `first..=last` of `epoch` (their
    /// store refused them: sending them again must post them).
    pub(crate) fn forget(&mut self, epoch: u64, first: u64, last: u64) {
        self.map.retain(|_, o| !(o.epoch == epoch && (first..=last).contains(&o.seq)));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The `uid`, `mid`, `seq` and `ts` of a stored message's JSON as cchat
/// encodes it (`"uid":"…"` first; `"mid":"…"`, `"seq"` and `"ts"` after
/// `msg`): ids hold no quote or backslash, and a quote inside a string
/// value is escaped, so the first `"mid":"` is the field, and the last
/// `"seq":` and `"ts":` are. None when the message has no `mid`.
pub(crate) fn ids_of(json: &[u8]) -> Option<(&str, &str, u64, u64)> {
    fn find(hay: &[u8], name: &[u8]) -> Option<usize> {
        hay.windows(name.len()).position(|w| w == name).map(|at| at + name.len())
    }
    fn rfind(hay: &[u8], name: &[u8]) -> Option<usize> {
        hay.windows(name.len()).rposition(|w| w == name).map(|at| at + name.len())
    }
    let text = |at: usize| -> Option<&str> {
        let end = at + json[at..].iter().position(|b| *b == b'"')?;
        std::str::from_utf8(&json[at..end]).ok()
    };
    let num = |at: usize| -> Option<u64> {
        let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&json[at..at + digits]).ok()?.parse().ok()
    };
    let mid = text(find(json, b"\"mid\":\"")?)?;
    let uid = text(find(json, b"\"uid\":\"")?)?;
    Some((uid, mid, num(rfind(json, b"\"seq\":")?)?, ts_of(json)?))
}

/// The `ts` of a stored message or change (its last `"ts":`: a string
/// holds quotes only escaped, so no text can fake it).
pub(crate) fn ts_of(json: &[u8]) -> Option<u64> {
    const NAME: &[u8] = b"\"ts\":";
    let at = json.windows(NAME.len()).rposition(|w| w == NAME)? + NAME.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn o(seq: u64, ts: u64) -> Original {
        Original { epoch: 1, seq, ts }
    }

    #[test]
    fn a_pair_is_found_and_other_pairs_are_not() {
        let mut d = Dedupe::default();
        d.note("ab", "c", o(1, 0), Window::default(), 0);
        assert_eq!(d.find("ab", "c"), Some(o(1, 0)));
        assert_eq!(d.find("a", "bc"), None);
        assert_eq!(d.find("other", "c"), None);
    }

    #[test]
    fn old_entries_go_once_more_than_keep_are_held_and_never_past_max() {
        let w = Window { ms: 1000, keep: 2, max: 5 };
        let mut d = Dedupe::default();
        for i in 0..4 {
            d.note("u", &format!("m{i}"), o(i, i * 10), w, i * 10);
        }
        assert_eq!(d.len(), 4, "all young");
        d.trim(w, 10_000);
        assert_eq!(d.len(), 2, "the newest `keep` stay however old");
        assert!(d.find("u", "m3").is_some() && d.find("u", "m2").is_some());
        for i in 10..20 {
            d.note("u", &format!("m{i}"), o(i, 10_000), w, 10_000);
        }
        assert_eq!(d.len(), 5, "never past max");
        assert!(d.find("u", "m19").is_some() && d.find("u", "m14").is_none());
    }

    #[test]
    fn refused_messages_are_forgotten() {
        let mut d = Dedupe::default();
        for i in 1..=5 {
            d.note("u", &format!("m{i}"), o(i, 0), Window::default(), 0);
        }
        d.forget(1, 2, 3);
        assert_eq!(d.len(), 3);
        assert!(d.find("u", "m2").is_none() && d.find("u", "m4").is_some());
    }

    #[test]
    fn ids_are_read_back_from_an_encoded_message() {
        let m = crate::protocol::MessageOut {
            uid: "alice",
            name: "A \"mid\":\"x \"seq\":9",
            mtype: crate::protocol::MsgType::Text,
            rid: "r",
            msg: "\"mid\":\"fake\" \"uid\":\"bob\" \"ts\":1",
            tid: None,
            mid: Some("m-1"),
            reply: None,
            seq: 3,
            epoch: 4,
            ts: 5,
        };
        let (frame, off) = crate::protocol::encode_message(&m);
        assert_eq!(ids_of(&frame[off..]), Some(("alice", "m-1", 3, 5)));
        let plain = crate::protocol::MessageOut { mid: None, ..m };
        let (frame, off) = crate::protocol::encode_message(&plain);
        assert_eq!(ids_of(&frame[off..]), None);
    }

    proptest! {
        #[test]
        fn any_message_gives_its_own_ids_back(
            uid in "[a-z0-9]{1,8}", mid in "[a-z0-9:._-]{1,8}", name in "\\PC{0,12}", msg in "\\PC{0,40}",
            seq in any::<u64>(), ts in any::<u64>(),
        ) {
            let m = crate::protocol::MessageOut {
                uid: &uid, name: &name, mtype: crate::protocol::MsgType::Text, rid: "r", msg: &msg,
                tid: None, mid: Some(&mid), reply: None, seq, epoch: 1, ts,
            };
            let (frame, off) = crate::protocol::encode_message(&m);
            prop_assert_eq!(ids_of(&frame[off..]), Some((uid.as_str(), mid.as_str(), seq, ts)));
        }

        #[test]
        fn a_table_never_holds_more_than_max(n in 0usize..300, max in 1usize..50, keep in 0usize..60) {
            let w = Window { ms: 5, keep, max };
            let mut d = Dedupe::default();
            for i in 0..n as u64 {
                d.note("u", &format!("m{i}"), o(i, i), w, i);
                prop_assert!(d.len() <= max);
                prop_assert_eq!(d.len(), d.order.len());
            }
        }
    }
}
