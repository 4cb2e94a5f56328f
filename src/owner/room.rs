//! A room as its owner shard sees it: roster, sequence, history. No I/O.
//!
//! The owner shard is the single point of order for a room: it admits
//! members, numbers messages (`seq`), keeps the last N for `getHistory`, and
//! knows which shards hold members so that each broadcast is sent once per
//! shard. Other shards only keep a local list of their own member sockets.

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use indexmap::IndexMap;

use crate::ids::{Id, Name};
use crate::msg::ConnRef;

/// A member connection as the owner records it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection's user.
    pub uid: Id,
    /// Whether the connection receives its own messages.
    pub echo: bool,
}

/// A user present in the room with one or more connections.
#[derive(Debug, Clone)]
pub struct User {
    /// Display name (from the user's first connection to join).
    pub name: Name,
    /// The user's connections in this room.
    pub conns: Vec<ConnRef>,
}

/// What a join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The connection was already a member: acknowledge, announce nothing.
    Already,
    /// Another connection of a user already present: acknowledge only.
    NewConnection,
    /// Another connection of a user already present, under another name: the
    /// user's name is now this one (a change of name whose new connection
    /// came before the old one left); announced like a `newUser`.
    Renamed,
    /// A user new to the room: acknowledge and announce `newUser`.
    NewUser,
}

/// What a leave changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The user whose connection left.
    pub uid: Id,
    /// Their name.
    pub name: Name,
    /// True when it was the user's last connection: announce `userLeave`.
    pub user_gone: bool,
}

/// One page of a roster: (uid, name) pairs, and the next page's cursor.
pub type Page<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>);

/// The owner's state of one room.
#[derive(Debug)]
pub struct Room {
    seq: u64,
    conns: HashMap<ConnRef, Member>,
    users: IndexMap<Id, User>,
    /// The present users' ids in order: roster pages follow it, so that a
    /// page's cursor stays valid however users come and go meanwhile.
    roster: BTreeSet<Id>,
    /// Members per shard of this node.
    shard_members: Vec<u32>,
    /// Members per other node.
    node_members: HashMap<u16, u32>,
    history: VecDeque<(u64, Bytes)>,
    history_cap: usize,
    epoch: u64,
    /// The shared store's claim this owner holds on the room (0: none; see
    /// `owner/redis`).
    token: u64,
    /// The newest seq a shared store acknowledged (its message may have been
    /// broadcast): a store whose top is below it lost messages.
    acked: u64,
    /// Presence changes not yet announced (big rooms batch them): each
    /// user's net change since the last presence frame.
    presence: IndexMap<Id, (Name, Change)>,
    /// The client ids of its messages, once one carried one (see `dedupe`).
    pub(super) mids: Option<Box<super::dedupe::Dedupe>>,
    /// A direct conversation: when it last knocked for its absent user (ms).
    pub(super) knocked_ms: u64,
    /// Its changed messages (edits, deletions, reactions; see `changes`).
    pub(super) changes: Option<Box<super::changes::Changes>>,
    /// Its stored records were read back since it came into memory.
    pub(super) read_back: bool,
}

/// A user's net presence change over an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Arrived (and is still there).
    Joined,
    /// Left (and has not come back).
    Left,
}

/// A big room's presence changes since the last announcement.
#[derive(Debug, Default)]
pub struct PresenceDiff {
    /// Users who arrived: (uid, name), at most the first `max`.
    pub joined: Vec<(Id, Name)>,
    /// Users who left, likewise.
    pub left: Vec<(Id, Name)>,
    /// How many arrived and left in all.
    pub totals: (usize, usize),
}

impl Room {
    /// An empty room on a node of `shards` shards, keeping `history_cap`
    /// messages; its sequence starts in `epoch`.
    pub fn new(shards: usize, history_cap: usize, epoch: u64) -> Self {
        Room {
            seq: 0,
            conns: HashMap::new(),
            users: IndexMap::new(),
            roster: BTreeSet::new(),
            shard_members: vec![0; shards],
            node_members: HashMap::new(),
            presence: IndexMap::new(),
            history: VecDeque::new(),
            history_cap,
            epoch,
            token: 0,
            acked: 0,
            mids: None,
            knocked_ms: 0,
            changes: None,
            read_back: false,
        }
    }

    /// A room as the log left it: its sequence continues at `seq + 1` in
    /// `epoch`, with these stored messages (seq, JSON), oldest first.
    pub fn restore(
        shards: usize,
        history_cap: usize,
        epoch: u64,
        seq: u64,
        history: impl IntoIterator<Item = (u64, Bytes)>,
    ) -> Self {
        let mut room = Room::new(shards, history_cap, epoch);
        room.seq = seq;
        for (s, json) in history {
            room.remember(s, json);
        }
        room
    }

    /// The epoch of this room's sequence.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The shared store's claim on this room that this owner holds (0: none).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Holds claim `token` (0 gives it up) and forgets the messages in
    /// memory: what the store holds is the history from now on.
    pub fn set_claim(&mut self, token: u64) {
        self.token = token;
        self.history.clear();
    }

    /// Continues the sequence the store holds: `epoch`, next seq `top + 1`.
    pub fn continue_from(&mut self, epoch: u64, top: u64) {
        self.epoch = epoch;
        self.seq = top;
        self.acked = top;
        self.history.clear();
    }

    /// The store acknowledged the room's messages up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
    }

    /// The newest seq the store acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn count(&mut self, conn: ConnRef, delta: i32) {
        let slot = if conn.node == 0 {
            &mut self.shard_members[conn.shard as usize]
        } else {
            self.node_members.entry(conn.node).or_insert(0)
        };
        *slot = slot.wrapping_add_signed(delta);
        if conn.node != 0 && *slot == 0 {
            self.node_members.remove(&conn.node);
        }
    }

    /// Admits a connection.
    pub fn join(&mut self, conn: ConnRef, uid: &Id, name: &Name, echo: bool) -> Joined {
        if self.conns.contains_key(&conn) {
            return Joined::Already;
        }
        self.conns.insert(conn, Member { uid: uid.clone(), echo });
        self.count(conn, 1);
        match self.users.get_mut(uid.as_str()) {
            Some(u) => {
                u.conns.reserve_exact(1);
                u.conns.push(conn);
                if u.name == *name {
                    Joined::NewConnection
                } else {
                    u.name = name.clone();
                    Joined::Renamed
                }
            }
            None => {
                self.users.insert(uid.clone(), User { name: name.clone(), conns: vec![conn] });
                self.roster.insert(uid.clone());
                Joined::NewUser
            }
        }
    }

    /// Removes a connection; None if it was not a member.
    pub fn leave(&mut self, conn: ConnRef) -> Option<Left> {
        let m = self.conns.remove(&conn)?;
        self.count(conn, -1);
        let u = self.users.get_mut(m.uid.as_str()).expect("member's user is present");
        u.conns.retain(|c| *c != conn);
        let name = u.name.clone();
        let user_gone = u.conns.is_empty();
        if user_gone {
            // O(1): the last user takes the place (roster pages follow
            // `roster`, not this order).
            self.users.swap_remove(m.uid.as_str());
            self.roster.remove(m.uid.as_str());
        }
        Some(Left { uid: m.uid, name, user_gone })
    }

    /// The member record of a connection.
    pub fn member(&self, conn: &ConnRef) -> Option<&Member> {
        self.conns.get(conn)
    }

    /// A present user.
    pub fn user(&self, uid: &str) -> Option<&User> {
        self.users.get(uid)
    }

    /// Present users: (uid, name), in roster order (arrival order, except
    /// that a leaver's place goes to the newest user).
    pub fn users(&self) -> impl Iterator<Item = (&str, &str)> {
        self.users.iter().map(|(id, u)| (id.as_str(), u.name.as_str()))
    }

    /// Present users' ids.
    pub fn user_ids(&self) -> impl Iterator<Item = &Id> {
        self.users.keys()
    }

    /// Number of present users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// One page of the roster, in uid order: at most `limit` users whose
    /// uid sorts after `after` (from the start without it), and the cursor
    /// of the next page if more remain. A user present from the first page
    /// to the last is listed exactly once, whoever joins or leaves meanwhile
    /// (`after` itself may have left).
    pub fn users_page(&self, after: Option<&str>, limit: usize) -> Page<'_> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        let mut it = self.roster.range::<str, _>((from, Unbounded));
        let page: Vec<(&str, &str)> = it
            .by_ref()
            .take(limit)
            .map(|id| (id.as_str(), self.users.get(id.as_str()).map_or("", |u| u.name.as_str())))
            .collect();
        let next = (it.next().is_some() && !page.is_empty()).then(|| page.last().map(|(uid, _)| *uid)).flatten();
        (page, next)
    }

    /// Notes a user's arrival or departure for the next presence frame; a
    /// user who comes and goes within one interval cancels out.
    pub fn note_presence(&mut self, uid: &Id, name: &Name, change: Change) {
        match self.presence.get(uid.as_str()) {
            Some((_, prev)) if *prev != change => {
                self.presence.swap_remove(uid.as_str());
            }
            Some(_) => {}
            None => {
                self.presence.insert(uid.clone(), (name.clone(), change));
            }
        }
    }

    /// Takes the presence changes noted since the last call: at most `max`
    /// of each kind listed, all counted.
    pub fn take_presence(&mut self, max: usize) -> PresenceDiff {
        let mut d = PresenceDiff::default();
        for (uid, (name, change)) in self.presence.drain(..) {
            let (list, total) = match change {
                Change::Joined => (&mut d.joined, &mut d.totals.0),
                Change::Left => (&mut d.left, &mut d.totals.1),
            };
            *total += 1;
            if list.len() < max {
                list.push((uid, name));
            }
        }
        if self.presence.capacity() > 1024 {
            self.presence = IndexMap::new();
        }
        d
    }

    /// Number of member connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// No members.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Shards of this node that hold at least one member.
    pub fn member_shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.shard_members.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, _)| i)
    }

    /// Other nodes that hold at least one member.
    pub fn member_nodes(&self) -> impl Iterator<Item = u16> + '_ {
        self.node_members.keys().copied()
    }

    /// Removes every member on a node that died; returns what each removal changed.
    pub fn remove_node(&mut self, node: u16) -> Vec<Left> {
        let gone: Vec<ConnRef> = self.conns.keys().filter(|c| c.node == node).copied().collect();
        gone.into_iter().filter_map(|c| self.leave(c)).collect()
    }

    /// Numbers the next room message.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The last assigned sequence number (0 before the first message).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Stores a numbered message's JSON for `getHistory`, dropping the oldest past the cap.
    pub fn remember(&mut self, seq: u64, json: Bytes) {
        if self.history_cap == 0 {
            return;
        }
        if self.history.len() == self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back((seq, json));
    }

    /// Drops the messages of `seqs` from memory (refused by the store).
    pub fn forget(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        self.history.retain(|(s, _)| !seqs.contains(s));
    }

    /// The oldest seq held in memory (one past the top when none is).
    pub fn memory_low(&self) -> u64 {
        self.history.front().map_or(self.seq + 1, |(s, _)| *s)
    }

    /// Messages held in memory with a seq in `range`, oldest first.
    pub fn history_range(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = &Bytes> {
        let a = self.history.partition_point(|(s, _)| *s < range.start);
        let b = self.history.partition_point(|(s, _)| *s < range.end).max(a);
        self.history.range(a..b).map(|(_, j)| j)
    }

    /// The message `uid` sent earlier under `mid`, if this room remembers it.
    pub(crate) fn dup(&self, uid: &str, mid: &str) -> Option<super::dedupe::Original> {
        self.mids.as_ref()?.find(uid, mid)
    }

    /// Remembers that `uid`'s `mid` named `orig`.
    pub(crate) fn note_mid(
        &mut self,
        uid: &str,
        mid: &str,
        orig: super::dedupe::Original,
        w: super::dedupe::Window,
        now_ms: u64,
    ) {
        self.mids.get_or_insert_default().note(uid, mid, orig, w, now_ms);
    }

    /// Forgets the ids of messages `first..=last` of the current epoch.
    pub(crate) fn forget_mids(&mut self, first: u64, last: u64) {
        let epoch = self.epoch();
        if let Some(d) = self.mids.as_mut() {
            d.forget(epoch, first, last);
        }
    }

    /// Ids remembered.
    pub(crate) fn mids_len(&self) -> usize {
        self.mids.as_ref().map_or(0, |d| d.len())
    }
}

/// The seqs a history request asks for, `[lo, hi)`, out of the reachable
/// ones `lowest..=top`: with `since`, the first `limit` after it (paging
/// forward); with `before`, the newest `limit` before it (scrolling back);
/// with neither, the newest `limit`.
pub fn history_window(
    since: Option<u64>,
    before: Option<u64>,
    limit: usize,
    lowest: u64,
    top: u64,
) -> std::ops::Range<u64> {
    let start = since.map_or(lowest, |s| s.saturating_add(1).max(lowest));
    let end = before.map_or(top + 1, |b| b.min(top + 1)).max(start);
    if since.is_some() {
        start..end.min(start.saturating_add(limit as u64))
    } else {
        end.saturating_sub(limit as u64).max(start)..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(shard: u16, key: u32) -> ConnRef {
        ConnRef { node: 0, shard, key, generation: 0 }
    }
    use crate::ids::testing::id;
    use crate::ids::testing::name as nm;

    #[test]
    fn join_and_leave_announce_users_not_connections() {
        let mut r = Room::new(2, 10, 1);
        assert_eq!(r.join(c(0, 1), &id("a"), &nm("A"), false), Joined::NewUser);
        assert_eq!(r.join(c(0, 1), &id("a"), &nm("A"), false), Joined::Already);
        assert_eq!(r.join(c(1, 1), &id("a"), &nm("A"), false), Joined::NewConnection);
        assert_eq!(r.join(c(1, 2), &id("b"), &nm("B"), true), Joined::NewUser);
        assert_eq!(r.member_shards().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(r.users().collect::<Vec<_>>(), vec![("a", "A"), ("b", "B")]);
        assert!(!r.leave(c(0, 1)).unwrap().user_gone);
        assert_eq!(r.member_shards().collect::<Vec<_>>(), vec![1]);
        assert!(r.leave(c(1, 1)).unwrap().user_gone);
        assert_eq!(r.leave(c(1, 1)), None);
        assert_eq!(r.users().count(), 1);
        assert_eq!(r.len(), 1);
        // A new connection under another name renames the user.
        assert_eq!(r.join(c(0, 3), &id("b"), &nm("Bee"), false), Joined::Renamed);
        assert_eq!(r.users().collect::<Vec<_>>(), vec![("b", "Bee")]);
    }

    #[test]
    fn remote_members_are_counted_per_node_and_removed_with_it() {
        let mut r = Room::new(1, 10, 1);
        let remote = |node, key| ConnRef { node, shard: 5, key, generation: 1 };
        r.join(c(0, 1), &id("a"), &nm("A"), false);
        r.join(remote(2, 1), &id("b"), &nm("B"), false);
        r.join(remote(2, 2), &id("c"), &nm("C"), false);
        r.join(remote(3, 1), &id("c"), &nm("C"), false);
        assert_eq!(r.member_shards().collect::<Vec<_>>(), vec![0]);
        let mut nodes: Vec<_> = r.member_nodes().collect();
        nodes.sort();
        assert_eq!(nodes, vec![2, 3]);
        let left = r.remove_node(2);
        assert_eq!(left.len(), 2);
        // b is gone; c is still present through node 3.
        assert_eq!(left.iter().filter(|l| l.user_gone).map(|l| l.uid.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(r.member_nodes().collect::<Vec<_>>(), vec![3]);
    }

    /// What memory answers for a history request (as the owner asks it).
    fn history(r: &Room, since: Option<u64>, before: Option<u64>, limit: Option<usize>) -> Vec<Bytes> {
        let w = history_window(since, before, limit.unwrap_or(usize::MAX), r.memory_low(), r.seq());
        r.history_range(w).cloned().collect()
    }

    #[test]
    fn history_windows() {
        let mut r = Room::new(1, 3, 1);
        for _ in 0..5 {
            let s = r.next_seq();
            r.remember(s, Bytes::from(s.to_string()));
        }
        assert_eq!(history(&r, None, None, None), vec!["3", "4", "5"]);
        assert_eq!(history(&r, None, None, Some(2)), vec!["4", "5"]);
        assert_eq!(history(&r, Some(3), None, Some(1)), vec!["4"]);
        assert_eq!(history(&r, Some(5), None, None).len(), 0);
        assert_eq!(history(&r, Some(0), None, None).len(), 3);
        // Scrolling back: the newest `limit` before a seq, oldest first.
        assert_eq!(history(&r, None, Some(5), Some(1)), vec!["4"]);
        assert_eq!(history(&r, None, Some(5), None), vec!["3", "4"]);
        assert_eq!(history(&r, None, Some(3), None).len(), 0);
        assert_eq!(history(&r, Some(3), Some(5), None), vec!["4"]);
    }

    proptest! {
        /// The window is exactly what filtering the reachable seqs gives.
        #[test]
        fn window_matches_a_model(
            lowest in 1u64..40, len in 0u64..40,
            since in proptest::option::of(0u64..90),
            before in proptest::option::of(0u64..90),
            limit in 0usize..50,
        ) {
            let top = lowest + len - 1;
            let all: Vec<u64> = (lowest..=top)
                .filter(|s| since.is_none_or(|x| *s > x) && before.is_none_or(|b| *s < b))
                .collect();
            let want: Vec<u64> = if since.is_some() {
                all.iter().copied().take(limit).collect()
            } else {
                all[all.len().saturating_sub(limit)..].to_vec()
            };
            let got: Vec<u64> = history_window(since, before, limit, lowest, top).collect();
            prop_assert_eq!(got, want);
        }
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    use crate::ids::testing::id;

    #[test]
    fn roster_pages_list_every_user_once() {
        let mut r = Room::new(1, 0, 1);
        for i in 0..2500u32 {
            r.join(
                ConnRef { node: 0, shard: 0, key: i, generation: 1 },
                &id(&format!("u{i}")),
                &Name::parse("n").unwrap(),
                false,
            );
        }
        for i in (0..2500u32).step_by(7) {
            r.leave(ConnRef { node: 0, shard: 0, key: i, generation: 1 });
        }
        let mut seen = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let (page, next) = r.users_page(after.as_deref(), 1000);
            assert!(page.len() <= 1000);
            for (uid, _) in &page {
                assert!(seen.insert(uid.to_string()), "{uid} twice");
            }
            match next {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), r.user_count());
        assert_eq!(r.users_page(Some("zzz"), 10).0.len(), 0);
    }

    /// The reported case: a page, then the first user leaves (in arrival
    /// order the newest would take its place, before the cursor): every user
    /// present throughout is still listed once.
    #[test]
    fn users_who_stay_are_listed_whoever_leaves_between_pages() {
        let mut r = Room::new(1, 0, 1);
        let c = |k: u32| ConnRef { node: 0, shard: 0, key: k, generation: 1 };
        for (k, u) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            r.join(c(k as u32), &id(u), &Name::parse("n").unwrap(), false);
        }
        let (p1, next) = r.users_page(None, 2);
        assert_eq!(p1.iter().map(|(u, _)| *u).collect::<Vec<_>>(), ["a", "b"]);
        let next = next.map(str::to_owned);
        r.leave(c(0));
        r.leave(c(1)); // the cursor's own user leaves too
        let (p2, next2) = r.users_page(next.as_deref(), 2);
        assert_eq!(p2.iter().map(|(u, _)| *u).collect::<Vec<_>>(), ["c", "d"]);
        let (p3, next3) = r.users_page(next2, 2);
        assert_eq!((p3.iter().map(|(u, _)| *u).collect::<Vec<_>>(), next3), (vec!["e"], None));
    }

    #[test]
    fn presence_nets_out_and_caps_its_lists() {
        let mut r = Room::new(1, 0, 1);
        let n = Name::parse("n").unwrap();
        for i in 0..150 {
            r.note_presence(&id(&format!("u{i}")), &n, Change::Joined);
        }
        r.note_presence(&id("u0"), &n, Change::Left); // came and went: nothing
        r.note_presence(&id("old"), &n, Change::Left);
        let d = r.take_presence(100);
        assert_eq!(d.totals, (149, 1));
        assert_eq!((d.joined.len(), d.left.len()), (100, 1));
        assert!(r.take_presence(100).totals == (0, 0));
    }
}
