//! A room as its owner shard sees it: roster, sequence, history. No I/O.
//!
//! The owner shard is the single point of order for a room: it admits
//! members, numbers messages (`seq`), keeps the last N for `getHistory`, and
//! knows which shards hold members so that each broadcast is sent once per
//! shard. Other shards only keep a local list of their own member sockets.

use std::collections::{HashMap, VecDeque};

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

/// The owner's state of one room.
#[derive(Debug)]
pub struct Room {
    seq: u64,
    conns: HashMap<ConnRef, Member>,
    users: IndexMap<Id, User>,
    /// Members per shard of this node.
    shard_members: Vec<u32>,
    /// Members per other node.
    node_members: HashMap<u16, u32>,
    history: VecDeque<(u64, Bytes)>,
    history_cap: usize,
    epoch: u64,
}

impl Room {
    /// An empty room on a node of `shards` shards, keeping `history_cap`
    /// messages; its sequence starts in `epoch`.
    pub fn new(shards: usize, history_cap: usize, epoch: u64) -> Self {
        Room {
            seq: 0,
            conns: HashMap::new(),
            users: IndexMap::new(),
            shard_members: vec![0; shards],
            node_members: HashMap::new(),
            history: VecDeque::new(),
            history_cap,
            epoch,
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
                Joined::NewConnection
            }
            None => {
                self.users.insert(uid.clone(), User { name: name.clone(), conns: vec![conn] });
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
            self.users.shift_remove(m.uid.as_str());
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

    /// Present users in order of arrival: (uid, name).
    pub fn users(&self) -> impl Iterator<Item = (&str, &str)> {
        self.users.iter().map(|(id, u)| (id.as_str(), u.name.as_str()))
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

    /// Stored messages, oldest first. With `since`, the first `limit` messages
    /// after it (paging forward, as a reconnecting client catches up);
    /// without, the newest `limit`.
    pub fn history(&self, since: Option<u64>, limit: Option<usize>) -> impl Iterator<Item = &Bytes> {
        let limit = limit.unwrap_or(usize::MAX);
        let (skip, take) = match since {
            Some(s) => (self.history.partition_point(|(seq, _)| *seq <= s), limit),
            None => (self.history.len().saturating_sub(limit), limit),
        };
        self.history.iter().skip(skip).take(take).map(|(_, j)| j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(shard: u16, key: u32) -> ConnRef {
        ConnRef { node: 0, shard, key, generation: 0 }
    }
    fn id(s: &str) -> Id {
        Id::parse_str(s).unwrap()
    }
    fn nm(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

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

    #[test]
    fn history_windows() {
        let mut r = Room::new(1, 3, 1);
        for _ in 0..5 {
            let s = r.next_seq();
            r.remember(s, Bytes::from(s.to_string()));
        }
        let all: Vec<_> = r.history(None, None).cloned().collect();
        assert_eq!(all, vec!["3", "4", "5"]);
        let newest: Vec<_> = r.history(None, Some(2)).cloned().collect();
        assert_eq!(newest, vec!["4", "5"]);
        let after: Vec<_> = r.history(Some(3), Some(1)).cloned().collect();
        assert_eq!(after, vec!["4"]);
        assert_eq!(r.history(Some(5), None).count(), 0);
        assert_eq!(r.history(Some(0), None).count(), 3);
    }
}
