//! Who is told when users come, go and type, and when. No I/O.
//!
//! A room of up to `--presence-limit` users hears each arrival and
//! departure at once, in CChat's frames; a bigger room gets one batch per
//! `--presence-interval-ms` with what changed (the owner's presence tick).
//! A user whose last connection dropped (not a logout) is announced gone
//! only after `--presence-grace-ms`, and not at all if back by then under
//! the same name. Typing is announced at most once per user and room per
//! [`TYPING_EVERY_MS`], and never in a big room. [`Presence`] keeps that
//! state; the owner asks it what to send and broadcasts it.

use std::collections::HashMap;

use bytes::Bytes;
use indexmap::IndexMap;

use crate::ids::{Id, Name};
use crate::owner::room::{Change, Room};
use crate::protocol;

/// A user's typing is announced at most this often per room.
pub(super) const TYPING_EVERY_MS: u64 = 2_000;

/// The presence state of the rooms one owner holds.
#[derive(Debug)]
pub(super) struct Presence {
    /// Rooms with more users than this announce presence in batches.
    limit: usize,
    /// At most one batch per room per this many milliseconds.
    interval_ms: u64,
    /// Big rooms with presence changes to announce, and when (Unix ms).
    due: IndexMap<Id, u64>,
    /// A disconnected user's departure is announced this long after it,
    /// unless the user is back by then (then neither is announced).
    grace_ms: u64,
    /// Departures waiting out the grace period: (room, user) → (name, due).
    leaving: IndexMap<(Id, Id), (Name, u64)>,
    /// When each (room, user) last said it was typing (ms); pruned on the tick.
    typing: HashMap<(Id, Id), u64>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            limit: 1000,
            interval_ms: 1000,
            due: IndexMap::new(),
            grace_ms: 0,
            leaving: IndexMap::new(),
            typing: HashMap::new(),
        }
    }
}

impl Presence {
    /// Rooms with more than `limit` users announce joins and leaves in one
    /// presence frame per `interval_ms`; departures wait `grace_ms`.
    pub(super) fn set(&mut self, limit: usize, interval_ms: u64, grace_ms: u64) {
        self.limit = limit;
        self.interval_ms = interval_ms.max(1);
        self.grace_ms = grace_ms;
    }

    /// Whether a room of `users` users gets its presence in batches.
    pub(super) fn big(&self, users: usize) -> bool {
        users > self.limit
    }

    /// A user arrived in or left `room` (`rid`): the frame to send the room
    /// now, or None in a big room (the change waits for its next batch).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn announce(
        &mut self,
        rid: &Id,
        room: &mut Room,
        uid: &Id,
        name: &Name,
        change: Change,
        big: bool,
        now_ms: u64,
    ) -> Option<Bytes> {
        if big {
            room.note_presence(uid, name, change);
            self.due.entry(rid.clone()).or_insert(now_ms + self.interval_ms);
            return None;
        }
        let cmd = if change == Change::Joined { "newUser" } else { "userLeave" };
        Some(protocol::encode_presence(cmd, uid, name, rid))
    }

    /// A user joined `rid` with no connection there: true when it left
    /// within the grace period under the same `name` (neither its departure
    /// nor its return is announced). A departure waiting is dropped anyway.
    pub(super) fn back(&mut self, rid: &Id, uid: &Id, name: &Name) -> bool {
        matches!(self.leaving.swap_remove(&(rid.clone(), uid.clone())), Some((was, _)) if was == *name)
    }

    /// A user's last connection left `rid`: true when its departure waits
    /// out the grace period (a disconnect, not a logout, with a grace set).
    pub(super) fn hold_departure(&mut self, rid: &Id, uid: &Id, name: &Name, logout: bool, now_ms: u64) -> bool {
        if logout || self.grace_ms == 0 {
            return false;
        }
        self.leaving.insert((rid.clone(), uid.clone()), (name.clone(), now_ms + self.grace_ms));
        true
    }

    /// A member of a room of `users` typed: whether it is announced now.
    pub(super) fn typing(&mut self, rid: &Id, uid: &Id, users: usize, now_ms: u64) -> bool {
        if self.big(users) {
            return false;
        }
        let key = (rid.clone(), uid.clone());
        if self.typing.get(&key).is_some_and(|t| now_ms < t + TYPING_EVERY_MS) {
            return false;
        }
        self.typing.insert(key, now_ms);
        true
    }

    /// A room emptied: no batch is due for it any more.
    pub(super) fn emptied(&mut self, rid: &Id) {
        self.due.swap_remove(rid);
    }

    /// On the tick, first: forgets old typing and takes the departures
    /// whose grace period is over (room, user, name).
    pub(super) fn departures_due(&mut self, now_ms: u64) -> Vec<(Id, Id, Name)> {
        if !self.typing.is_empty() {
            self.typing.retain(|_, t| now_ms < *t + TYPING_EVERY_MS);
        }
        let mut gone = Vec::new();
        self.leaving.retain(|(rid, uid), (name, at)| {
            let due = *at <= now_ms;
            if due {
                gone.push((rid.clone(), uid.clone(), name.clone()));
            }
            !due
        });
        gone
    }

    /// On the tick, then: takes the big rooms whose batch is due.
    pub(super) fn batches_due(&mut self, now_ms: u64) -> Vec<Id> {
        let mut due = Vec::new();
        self.due.retain(|rid, at| {
            let ready = *at <= now_ms;
            if ready {
                due.push(rid.clone());
            }
            !ready
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ids::testing::{id, name};

    #[test]
    fn a_departure_waits_out_the_grace_period_unless_the_user_is_back() {
        let mut p = Presence::default();
        assert!(!p.hold_departure(&id("r"), &id("u"), &name("Ann"), false, 0), "no grace: announced at once");
        p.set(1000, 1000, 500);
        assert!(!p.hold_departure(&id("r"), &id("u"), &name("Ann"), true, 0), "a logout is announced at once");
        assert!(p.hold_departure(&id("r"), &id("u"), &name("Ann"), false, 0));
        assert!(p.back(&id("r"), &id("u"), &name("Ann")), "back under the same name: nothing to say");
        assert!(p.departures_due(10_000).is_empty(), "the return took it");
        assert!(p.hold_departure(&id("r"), &id("u"), &name("Ann"), false, 0));
        assert!(!p.back(&id("r"), &id("u"), &name("Bea")), "back under another name: announced");
        assert!(p.hold_departure(&id("r"), &id("v"), &name("Cy"), false, 100));
        assert!(p.departures_due(599).is_empty());
        assert_eq!(p.departures_due(600), vec![(id("r"), id("v"), name("Cy"))]);
        assert!(p.departures_due(10_000).is_empty(), "taken once");
    }

    #[test]
    fn typing_is_announced_once_per_interval_and_never_in_a_big_room() {
        let mut p = Presence::default();
        p.set(10, 1000, 0);
        assert!(p.typing(&id("r"), &id("u"), 5, 0));
        assert!(!p.typing(&id("r"), &id("u"), 5, TYPING_EVERY_MS - 1));
        assert!(p.typing(&id("r"), &id("v"), 5, 1), "another user");
        assert!(p.typing(&id("r"), &id("u"), 5, TYPING_EVERY_MS));
        assert!(!p.typing(&id("r2"), &id("u"), 11, 0), "a big room");
        p.departures_due(10 * TYPING_EVERY_MS);
        assert!(p.typing.is_empty(), "old typing is forgotten on the tick");
    }

    #[test]
    fn a_big_room_batches_its_changes_once_per_interval() {
        let mut p = Presence::default();
        p.set(2, 1000, 0);
        let mut room = Room::new(1, 10, 1);
        assert!(!p.big(2) && p.big(3));
        let small = p.announce(&id("r"), &mut room, &id("u"), &name("Ann"), Change::Joined, false, 0);
        assert!(small.is_some_and(|f| f.windows(7).any(|w| w == b"newUser")), "a small room hears it at once");
        assert!(p.announce(&id("r"), &mut room, &id("u"), &name("Ann"), Change::Joined, true, 100).is_none());
        assert!(p.announce(&id("r"), &mut room, &id("v"), &name("Bea"), Change::Left, true, 900).is_none());
        assert!(p.batches_due(1099).is_empty(), "due one interval after the first change");
        assert_eq!(p.batches_due(1100), vec![id("r")]);
        assert!(p.batches_due(5000).is_empty(), "taken once");
        p.announce(&id("r"), &mut room, &id("u"), &name("Ann"), Change::Left, true, 6000);
        p.emptied(&id("r"));
        assert!(p.batches_due(10_000).is_empty(), "an emptied room has no batch due");
    }
}
