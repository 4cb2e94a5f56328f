//! Changes to a room's messages: edits, deletions and reactions. No I/O.
//!
//! A change is an *event* of the room: it takes the next seq like a
//! message, is stored with the messages (log or Redis), broadcast to the
//! members, and replayed by a resume in its place. History answers fold the
//! events into the messages they change: a page lists messages in their
//! current state (`edited`, `deleted`, `reactions`), never the events.
//!
//! The owner keeps each room's changes by seq ([`Changes`]) for the
//! messages of its history window, so that a page read from disk long after
//! an edit still shows it; a room brought back into memory rebuilds them
//! from the events among its newest stored records (see `storage`).
//!
//! A message can be changed while the room holds it in memory (its newest
//! `--history-memory`), and edited or deleted by its sender only, within
//! `--edit-window-secs` of being sent.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

use crate::ids::Id;
use crate::protocol::ChangeKind;

/// Reactions one message may carry (distinct emoji), and users in all.
const MAX_EMOJI: usize = 20;
const MAX_REACTIONS: usize = 200;

/// The current state of one changed message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MsgState {
    /// New text and when it was edited.
    pub(crate) edited: Option<(String, u64)>,
    /// Deleted (its text is gone).
    pub(crate) deleted: bool,
    /// Reactions, in the order first given: emoji → who.
    pub(crate) reactions: Vec<(String, Vec<Id>)>,
}

/// Messages whose authors a room remembers, so that an edit or deletion
/// can be checked (its newest ones, at most this many).
pub(crate) const AUTHORS: usize = 1000;

/// A room's changed messages by seq, within its history window, and who
/// sent its newest messages, when.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    by_seq: BTreeMap<u64, MsgState>,
    /// `(seq, author's keyed hash, ts)` of the newest [`AUTHORS`] messages,
    /// oldest first (~24 bytes each).
    authors: std::collections::VecDeque<(u64, u64, u64)>,
    hasher: std::hash::RandomState,
}

impl Changes {
    fn author_key(&self, uid: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(uid)
    }

    /// Message `seq` was sent by `uid` at `ts` (in seq order).
    pub(crate) fn note_message(&mut self, seq: u64, uid: &str, ts: u64) {
        if self.authors.back().is_some_and(|a| a.0 >= seq) {
            return; // read back out of order, or again
        }
        let k = self.author_key(uid);
        self.authors.push_back((seq, k, ts));
        if self.authors.len() > AUTHORS {
            self.authors.pop_front();
        }
    }

    /// Who sent message `seq` and when: Some((sent by `uid`, ts)) while it
    /// is among the newest remembered.
    pub(crate) fn author(&self, seq: u64, uid: &str) -> Option<(bool, u64)> {
        let i = self.authors.binary_search_by_key(&seq, |a| a.0).ok()?;
        let (_, k, ts) = self.authors[i];
        Some((k == self.author_key(uid), ts))
    }

    /// The state of message `seq`, if it changed.
    pub(crate) fn get(&self, seq: u64) -> Option<&MsgState> {
        self.by_seq.get(&seq)
    }

    /// Checks a change against the message's state: an error in words if
    /// it may not be made (a deleted message; a reaction past the caps).
    pub(crate) fn check(&self, seq: u64, uid: &Id, change: &ChangeKind) -> Result<(), &'static str> {
        let Some(st) = self.by_seq.get(&seq) else { return Ok(()) };
        if st.deleted {
            return Err("the message was deleted");
        }
        if let ChangeKind::React { emoji, on: true } = change {
            let listed = st.reactions.iter().find(|(e, _)| e == emoji);
            let total: usize = st.reactions.iter().map(|(_, who)| who.len()).sum();
            let new_emoji = listed.is_none();
            let already = listed.is_some_and(|(_, who)| who.contains(uid));
            if !already && (total >= MAX_REACTIONS || (new_emoji && st.reactions.len() >= MAX_EMOJI)) {
                return Err("too many reactions on this message");
            }
        }
        Ok(())
    }

    /// Applies a change made at `ts` (already checked, or read back).
    pub(crate) fn apply(&mut self, seq: u64, uid: &Id, change: &ChangeKind, ts: u64) {
        let st = self.by_seq.entry(seq).or_default();
        match change {
            ChangeKind::Edit(msg) => st.edited = Some((msg.clone(), ts)),
            ChangeKind::Delete => {
                st.deleted = true;
                st.edited = None;
                st.reactions.clear();
            }
            ChangeKind::React { emoji, on } => {
                let at = st.reactions.iter().position(|(e, _)| e == emoji);
                match (at, on) {
                    (Some(i), true) => {
                        if !st.reactions[i].1.contains(uid) {
                            st.reactions[i].1.push(uid.clone());
                        }
                    }
                    (None, true) => st.reactions.push((emoji.clone(), vec![uid.clone()])),
                    (Some(i), false) => {
                        st.reactions[i].1.retain(|u| u != uid);
                        if st.reactions[i].1.is_empty() {
                            st.reactions.remove(i);
                        }
                    }
                    (None, false) => {}
                }
            }
        }
    }

    /// Forgets the messages before `seq` (out of the history window).
    pub(crate) fn trim_below(&mut self, seq: u64) {
        while self.by_seq.first_key_value().is_some_and(|(s, _)| *s < seq) {
            self.by_seq.pop_first();
        }
    }

    /// Changed messages held.
    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Applies a record read back from the store (its stored JSON): an
    /// event changes its message; a message notes its author.
    pub(crate) fn apply_stored(&mut self, json: &[u8]) {
        if let Some((seq, uid, change, ts)) = parse_event(json) {
            self.apply(seq, &uid, &change, ts);
        } else if let Some((uid, seq, ts)) = message_meta(json) {
            self.note_message(seq, uid, ts);
        }
    }
}

/// Whether a stored record is an event (not a message).
pub(crate) fn is_event(json: &[u8]) -> bool {
    [&b"{\"cmd\":\"edit\""[..], b"{\"cmd\":\"delete\"", b"{\"cmd\":\"react\""].iter().any(|p| json.starts_with(p))
}

/// An event's target seq, author, change and time, from its stored JSON.
fn parse_event(json: &[u8]) -> Option<(u64, Id, ChangeKind, u64)> {
    if !is_event(json) {
        return None;
    }
    let v: Value = serde_json::from_slice(json).ok()?;
    let change = match v["cmd"].as_str()? {
        "edit" => ChangeKind::Edit(v["msg"].as_str()?.to_owned()),
        "delete" => ChangeKind::Delete,
        "react" => ChangeKind::React { emoji: v["emoji"].as_str()?.to_owned(), on: v["on"].as_bool()? },
        _ => return None,
    };
    Some((v["seq"].as_u64()?, Id::parse_str(v["uid"].as_str()?)?, change, v["ts"].as_u64()?))
}

/// A stored room message's author, seq and time (None for an event), read
/// from the JSON as cchat writes it: `"uid":"…"` first, `"seq"` and `"ts"`
/// after the texts (a quote inside a text is escaped, so these are found).
pub(crate) fn message_meta(json: &[u8]) -> Option<(&str, u64, u64)> {
    if !json.starts_with(b"{\"cmd\":\"message\"") {
        return None;
    }
    let uid_at = json.windows(7).position(|w| w == b"\"uid\":\"")? + 7;
    let uid_end = uid_at + json[uid_at..].iter().position(|b| *b == b'"')?;
    let uid = std::str::from_utf8(&json[uid_at..uid_end]).ok()?;
    let ts_at = json.windows(5).rposition(|w| w == b"\"ts\":")? + 5;
    let digits = json[ts_at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let ts = std::str::from_utf8(&json[ts_at..ts_at + digits]).ok()?.parse().ok()?;
    Some((uid, seq_of(json)?, ts))
}

/// Folds a history page: events leave it, and each changed message shows
/// its current state (`msg` edited with `edited`: its time; `deleted` with
/// no text; `reactions`: emoji → the uids who reacted).
pub(crate) fn fold(changes: Option<&Changes>, msgs: &mut Vec<Bytes>) {
    msgs.retain(|m| !is_event(m));
    let Some(changes) = changes.filter(|c| c.len() > 0) else { return };
    for m in msgs.iter_mut() {
        let Some(seq) = seq_of(m) else { continue };
        let Some(st) = changes.get(seq) else { continue };
        let Ok(mut v) = serde_json::from_slice::<Value>(m) else { continue };
        if st.deleted {
            v["msg"] = Value::from("");
            v["deleted"] = Value::from(true);
        } else if let Some((text, ts)) = &st.edited {
            v["msg"] = Value::from(text.as_str());
            v["edited"] = Value::from(*ts);
        }
        if !st.reactions.is_empty() {
            let mut r = serde_json::Map::new();
            for (emoji, who) in &st.reactions {
                r.insert(emoji.clone(), Value::from(who.iter().map(|u| u.as_str()).collect::<Vec<_>>()));
            }
            v["reactions"] = Value::Object(r);
        }
        *m = Bytes::from(v.to_string());
    }
}

/// A stored message's seq (`"seq":N`, which cchat writes after the texts).
fn seq_of(json: &[u8]) -> Option<u64> {
    let at = json.windows(6).rposition(|w| w == b"\"seq\":")? + 6;
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageOut, MsgType, encode_change, encode_message};

    use crate::ids::testing::id;

    fn message(seq: u64, text: &str) -> Bytes {
        let m = MessageOut {
            uid: "ann",
            name: "Ann",
            mtype: MsgType::Text,
            rid: "r",
            msg: text,
            tid: None,
            mid: None,
            reply: None,
            seq,
            epoch: 1,
            ts: 10,
        };
        let (f, off) = encode_message(&m);
        f.slice(off..)
    }

    fn event(seq: u64, uid: &str, c: &ChangeKind, at: u64) -> Bytes {
        let (f, off) = encode_change("r", seq, uid, c, 20, 1, at);
        f.slice(off..)
    }

    #[test]
    fn a_page_shows_messages_as_they_are_now_and_no_events() {
        let mut ch = Changes::default();
        let edit = ChangeKind::Edit("fixed".into());
        let like = ChangeKind::React { emoji: "👍".into(), on: true };
        ch.apply(1, &id("ann"), &edit, 20);
        ch.apply(2, &id("ann"), &ChangeKind::Delete, 21);
        ch.apply(3, &id("bob"), &like, 22);
        ch.apply(3, &id("cy"), &like, 23);
        let mut page = vec![
            message(1, "tpyo"),
            message(2, "oops"),
            message(3, "nice"),
            event(1, "ann", &edit, 4),
            message(5, "plain"),
        ];
        fold(Some(&ch), &mut page);
        let v: Vec<Value> = page.iter().map(|m| serde_json::from_slice(m).unwrap()).collect();
        assert_eq!(v.len(), 4, "the event left the page");
        assert_eq!((v[0]["msg"].as_str(), v[0]["edited"].as_u64()), (Some("fixed"), Some(20)));
        assert_eq!((v[1]["msg"].as_str(), v[1]["deleted"].as_bool()), (Some(""), Some(true)));
        assert_eq!(v[2]["reactions"]["👍"], serde_json::json!(["bob", "cy"]));
        assert!(v[3].get("edited").is_none() && v[3].get("reactions").is_none());
    }

    #[test]
    fn reactions_come_and_go_and_are_capped() {
        let mut ch = Changes::default();
        let on = |e: &str| ChangeKind::React { emoji: e.into(), on: true };
        for i in 0..MAX_EMOJI {
            let e = format!("e{i}");
            assert!(ch.check(1, &id("u"), &on(&e)).is_ok());
            ch.apply(1, &id("u"), &on(&e), 0);
        }
        assert!(ch.check(1, &id("u"), &on("one-more")).is_err(), "distinct emoji capped");
        assert!(ch.check(1, &id("v"), &on("e0")).is_ok(), "an existing one may gain users");
        ch.apply(1, &id("u"), &ChangeKind::React { emoji: "e0".into(), on: false }, 0);
        assert_eq!(ch.get(1).unwrap().reactions.len(), MAX_EMOJI - 1);
        ch.apply(1, &id("u"), &ChangeKind::Delete, 0);
        assert_eq!(ch.check(1, &id("u"), &on("x")), Err("the message was deleted"));
        ch.trim_below(2);
        assert_eq!(ch.len(), 0);
    }

    #[test]
    fn events_are_read_back_from_their_stored_form() {
        let mut ch = Changes::default();
        ch.apply_stored(&event(7, "ann", &ChangeKind::Edit("again \"quoted\"".into()), 9));
        ch.apply_stored(&event(7, "bob", &ChangeKind::React { emoji: "🎉".into(), on: true }, 10));
        ch.apply_stored(&message(8, "not an event"));
        let st = ch.get(7).unwrap();
        assert_eq!(st.edited.as_ref().map(|(t, _)| t.as_str()), Some("again \"quoted\""));
        assert_eq!(st.reactions, vec![("🎉".to_owned(), vec![id("bob")])]);
        assert!(ch.get(8).is_none());
        assert_eq!(ch.author(8, "ann"), Some((true, 10)), "a message read back notes its author");
        assert_eq!(ch.author(8, "bob"), Some((false, 10)));
        assert_eq!(message_meta(&message(8, "\"ts\":1 \"uid\":\"x")), Some(("ann", 8, 10)));
        assert_eq!(message_meta(&event(7, "ann", &ChangeKind::Delete, 9)), None);
    }

    #[test]
    fn authors_of_the_newest_messages_are_kept() {
        let mut ch = Changes::default();
        for seq in 1..=(AUTHORS as u64 + 10) {
            ch.note_message(seq, if seq % 2 == 0 { "a" } else { "b" }, seq);
        }
        assert_eq!(ch.author(10, "a"), None, "too old");
        let last = AUTHORS as u64 + 10;
        assert_eq!(ch.author(last, "a"), Some((true, last)));
        assert_eq!(ch.author(last - 1, "a"), Some((false, last - 1)));
    }
}
