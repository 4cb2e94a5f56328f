//! The rooms one connection has joined: O(1) membership tests at any size,
//! and no more memory than a one-element list for the usual single room.

use std::collections::HashSet;

use crate::ids::Id;

/// Up to this many rooms are kept in a list (a scan of a few pointers beats
/// hashing); past it, in a hash set, so that a connection in N rooms pays
/// O(1) per join, leave and membership check instead of O(N).
const LIST_MAX: usize = 8;

/// A connection's rooms, in no particular order.
#[derive(Debug, Default)]
pub(crate) enum RoomSet {
    /// Few rooms: a list sized to its contents.
    #[default]
    Empty,
    /// Up to [`LIST_MAX`] rooms.
    List(Vec<Id>),
    /// More rooms.
    Set(HashSet<Id>),
}

impl RoomSet {
    /// Whether `rid` is in the set.
    pub(crate) fn contains(&self, rid: &Id) -> bool {
        match self {
            RoomSet::Empty => false,
            RoomSet::List(v) => v.contains(rid),
            RoomSet::Set(s) => s.contains(rid),
        }
    }

    /// Adds `rid`; false if it was there already.
    pub(crate) fn insert(&mut self, rid: Id) -> bool {
        if self.contains(&rid) {
            return false;
        }
        match self {
            RoomSet::Empty => *self = RoomSet::List(vec![rid]),
            RoomSet::List(v) if v.len() < LIST_MAX => {
                // Most connections join one room: grow a step at a time.
                v.reserve_exact(1);
                v.push(rid);
            }
            RoomSet::List(v) => {
                let mut s: HashSet<Id> = v.drain(..).collect();
                s.insert(rid);
                *self = RoomSet::Set(s);
            }
            RoomSet::Set(s) => {
                s.insert(rid);
            }
        }
        true
    }

    /// Removes `rid`; false if it was not there.
    pub(crate) fn remove(&mut self, rid: &Id) -> bool {
        let removed = match self {
            RoomSet::Empty => false,
            RoomSet::List(v) => match v.iter().position(|r| r == rid) {
                Some(i) => {
                    v.swap_remove(i);
                    true
                }
                None => false,
            },
            RoomSet::Set(s) => s.remove(rid),
        };
        if self.is_empty() {
            *self = RoomSet::Empty;
        }
        removed
    }

    /// How many rooms.
    pub(crate) fn len(&self) -> usize {
        match self {
            RoomSet::Empty => 0,
            RoomSet::List(v) => v.len(),
            RoomSet::Set(s) => s.len(),
        }
    }

    /// Whether no room is joined.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every room, leaving the set empty.
    pub(crate) fn take_all(&mut self) -> Vec<Id> {
        match std::mem::take(self) {
            RoomSet::Empty => Vec::new(),
            RoomSet::List(v) => v,
            RoomSet::Set(s) => s.into_iter().collect(),
        }
    }

    /// The rooms, in no particular order.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = &Id> + '_> {
        match self {
            RoomSet::Empty => Box::new(std::iter::empty()),
            RoomSet::List(v) => Box::new(v.iter()),
            RoomSet::Set(s) => Box::new(s.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> Id {
        Id::parse_str(&format!("r{n}")).unwrap()
    }

    proptest! {
        /// Any sequence of inserts and removes behaves like a set.
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u8..24), 0..200)) {
            let mut rs = RoomSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (insert, n) in ops {
                if insert {
                    prop_assert_eq!(rs.insert(id(n)), model.insert(n));
                } else {
                    prop_assert_eq!(rs.remove(&id(n)), model.remove(&n));
                }
                prop_assert_eq!(rs.len(), model.len());
                for m in 0..24 {
                    prop_assert_eq!(rs.contains(&id(m)), model.contains(&m));
                }
            }
            let mut all: Vec<String> = rs.take_all().iter().map(|r| r.to_string()).collect();
            all.sort();
            let mut want: Vec<String> = model.iter().map(|n| format!("r{n}")).collect();
            want.sort();
            prop_assert_eq!(all, want);
            prop_assert!(rs.is_empty());
        }
    }
}
