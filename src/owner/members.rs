//! Who is in the rooms this shard owns, and who is told: joins, leaves,
//! a dead node's members, presence (at once in a small room, in batches in
//! a big one, after a grace period for a disconnect) and typing. The rest
//! of the owner (messages, history, the store) is in `mod.rs`.

use std::time::Instant;

use bytes::Bytes;

use super::{Dest, Out, Owner};
use crate::ids::{Id, Name};
use crate::msg::{ConnRef, Delivery};
use crate::owner::room::{Change, Joined, Room};
use crate::protocol;

/// A user's typing is announced at most this often per room.
pub(super) const TYPING_EVERY_MS: u64 = 2_000;

impl Owner {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join(
        &mut self,
        rid: Id,
        conn: ConnRef,
        uid: Id,
        name: Name,
        echo: bool,
        rejoin: bool,
        ack: Option<Bytes>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) {
        self.room_or_load(&rid);
        let read = if ack.is_none() && !rejoin { self.read_state(&rid, &uid) } else { None };
        let room = self.rooms.get_mut(&rid).expect("loaded");
        let was_empty = room.is_empty();
        let joined = room.join(conn, &uid, &name, echo);
        if was_empty && !room.is_empty() {
            self.live += 1;
        }
        if rejoin {
            // The member already has its ack and its place; join quietly.
            return;
        }
        let ack = ack.unwrap_or_else(|| protocol::encode_login_ack(&uid, &name, &rid, read, None, std::iter::empty()));
        out.push(Out { dest: Dest::of(conn), msg: Delivery::Joined { rid: rid.clone(), conn, ack } });
        // A change of name reaches the room whichever of the user's old and
        // new connections the owner hears from first: a new connection under
        // another name while the old one is still here (Renamed), or after it
        // left within the grace period (NewUser, and a pending departure).
        if joined == Joined::Renamed {
            let big = room.user_count() > self.presence_limit;
            self.announce(&rid, &uid, &name, Change::Joined, big, Some(conn), now_ms, out);
        } else if joined == Joined::NewUser {
            if let Some((was, _)) = self.leaving.swap_remove(&(rid.clone(), uid.clone())) {
                // Back within the grace period: neither leave nor join is
                // announced, unless the user came back under another name
                // (a change of name): then the room learns the new one.
                if was == name {
                    return;
                }
            }
            let big = room.user_count() > self.presence_limit;
            self.announce(&rid, &uid, &name, Change::Joined, big, Some(conn), now_ms, out);
        }
    }

    /// Announces a user's arrival or departure: at once with CChat's frame
    /// in a room of up to `--presence-limit` users, else in the room's next
    /// presence batch (see [`Owner::tick_presence`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn announce(
        &mut self,
        rid: &Id,
        uid: &Id,
        name: &Name,
        change: Change,
        big: bool,
        except: Option<ConnRef>,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) {
        if big {
            if let Some(room) = self.rooms.get_mut(rid) {
                room.note_presence(uid, name, change);
                self.presence_due.entry(rid.clone()).or_insert(now_ms + self.presence_interval_ms);
            }
            return;
        }
        let cmd = if change == Change::Joined { "newUser" } else { "userLeave" };
        let frame = protocol::encode_presence(cmd, uid, name, rid);
        self.broadcast(rid, frame, except, Instant::now(), out);
    }

    /// Sends each big room whose interval is over one presence frame with
    /// what changed: at most one per room per `--presence-interval-ms`,
    /// however fast members come and go.
    pub(crate) fn tick_presence(&mut self, now_ms: u64, out: &mut Vec<Out>) {
        if !self.typing.is_empty() {
            self.typing.retain(|_, t| now_ms < *t + TYPING_EVERY_MS);
        }
        if !self.leaving.is_empty() {
            let due: Vec<(Id, Id)> =
                self.leaving.iter().filter(|(_, (_, at))| *at <= now_ms).map(|(k, _)| k.clone()).collect();
            for key in due {
                let Some((name, _)) = self.leaving.swap_remove(&key) else { continue };
                let (rid, uid) = key;
                let Some(room) = self.rooms.get(&rid) else { continue };
                if room.user(&uid).is_none() {
                    let big = room.user_count() + 1 > self.presence_limit;
                    self.announce(&rid, &uid, &name, Change::Left, big, None, now_ms, out);
                }
            }
        }
        if self.presence_due.is_empty() {
            return;
        }
        let due: Vec<Id> =
            self.presence_due.iter().filter(|(_, at)| **at <= now_ms).map(|(rid, _)| rid.clone()).collect();
        for rid in due {
            self.presence_due.swap_remove(&rid);
            let Some(room) = self.rooms.get_mut(&rid) else { continue };
            let d = room.take_presence(protocol::PRESENCE_LIST_MAX);
            if d.totals == (0, 0) {
                continue;
            }
            let joined = d.joined.iter().map(|(u, n)| (u.as_str(), n.as_str()));
            let left = d.left.iter().map(|(u, n)| (u.as_str(), n.as_str()));
            let frame = protocol::encode_presence_batch(&rid, joined, left, d.totals, room.user_count());
            self.broadcast(&rid, frame, None, Instant::now(), out);
        }
    }

    pub(super) fn leave(&mut self, rid: Id, conn: ConnRef, ack: bool, now_ms: u64, out: &mut Vec<Out>) {
        self.resuming.remove(&(conn, rid.clone()));
        let left = self.rooms.get_mut(&rid).and_then(|room| {
            let left = room.leave(conn)?;
            Some((left, room.is_empty(), room.user_count() + 1 > self.presence_limit))
        });
        if ack {
            out.push(Out {
                dest: Dest::of(conn),
                msg: Delivery::Direct { conn, frame: protocol::encode_logout(&rid) },
            });
        }
        let Some((left, emptied, big)) = left else { return };
        if emptied {
            self.emptied(&rid, now_ms);
            return; // nobody is left to tell
        }
        if left.user_gone {
            if !ack && self.grace_ms > 0 {
                // A disconnect (not a logout): the user may be back in a moment.
                self.leaving.insert((rid, left.uid), (left.name, now_ms + self.grace_ms));
                return;
            }
            self.announce(&rid, &left.uid, &left.name, Change::Left, big, None, now_ms, out);
        }
    }

    /// A room's last member left (or its node died). An empty room that
    /// never had a message holds nothing worth keeping
    /// (no seq was handed out in its epoch): it is forgotten at once, so
    /// joining and leaving rooms cannot grow the server's memory. A room
    /// with messages is evicted a little later (with a log: its index stays).
    pub(super) fn emptied(&mut self, rid: &Id, now_ms: u64) {
        self.live -= 1;
        self.presence_due.swap_remove(rid);
        match self.rooms.get(rid).map(Room::seq) {
            Some(0) => {
                self.rooms.remove(rid);
                self.store.forgotten(rid);
                self.shrink_rooms();
            }
            Some(_) => self.schedule_evict(rid, now_ms),
            None => {}
        }
    }

    /// Gives back a room table that a burst of rooms grew, once it is mostly empty.
    pub(super) fn shrink_rooms(&mut self) {
        let len = self.rooms.len();
        if self.rooms.capacity() > 1024 && len * 4 < self.rooms.capacity() {
            self.rooms.shrink_to(len * 2);
        }
    }

    /// A member is typing: the room's other connections are told, at most
    /// once per user per [`TYPING_EVERY_MS`], and not at all in a room past
    /// `--presence-limit` users (where it would be noise, and costly).
    pub(super) fn typing(&mut self, rid: Id, conn: ConnRef, uid: Id, name: Name, now_ms: u64, out: &mut Vec<Out>) {
        let Some(room) = self.rooms.get(&rid).filter(|r| r.member(&conn).is_some()) else { return };
        if room.user_count() > self.presence_limit {
            return;
        }
        let key = (rid, uid);
        if self.typing.get(&key).is_some_and(|t| now_ms < t + TYPING_EVERY_MS) {
            return;
        }
        let frame = protocol::encode_presence("typing", &key.1, &name, &key.0);
        self.broadcast(&key.0, frame, Some(conn), Instant::now(), out);
        self.typing.insert(key, now_ms);
    }

    /// A node died: forgets its members, announcing each user gone.
    pub(crate) fn node_down(&mut self, dead: u16, now_ms: u64, out: &mut Vec<Out>) {
        self.resuming.retain(|(c, _), _| c.node != dead);
        let (mut gone, mut emptied) = (Vec::new(), Vec::new());
        for (rid, room) in self.rooms.iter_mut() {
            let had_members = !room.is_empty();
            let users_before = room.user_count();
            for left in room.remove_node(dead) {
                if left.user_gone {
                    gone.push((rid.clone(), left, users_before > self.presence_limit));
                }
            }
            if had_members && room.is_empty() {
                emptied.push(rid.clone());
            }
        }
        for (rid, left, big) in gone {
            self.announce(&rid, &left.uid, &left.name, Change::Left, big, None, now_ms, out);
        }
        // The same as when a room's last member leaves.
        for rid in emptied {
            self.emptied(&rid, now_ms);
        }
    }
}
