//! Which nodes are live, and which node owns a room. Pure, apart from the
//! node-wide table that the relay updates.
//!
//! Nodes are known by name (`--node-id`); inside a process each gets a small
//! index (0 is this node) that [`crate::msg::ConnRef`] carries. The relay
//! shard changes the live set as links come and go and tells every shard;
//! each shard then swaps in a new [`View`] and re-homes what moved.

use std::sync::Arc;

use crate::placement::fnv1a;

/// The relay's wire version spoken by this build (2: links carry traffic only once
/// activated; 3: roster pages and history before a seq, see [`crate::relay::codec`];
/// 4: the server API's disconnect; 5: its questions to other nodes;
/// 6: mutual authentication by role and sealed, numbered records;
/// 7: `since` on JOIN, `mid` and `reply` on PUBLISH, CHANGE, TYPING, KNOCK;
/// 8: FORWARD, a request passed on to its room's owner by another node;
/// 9: READ, a member's read marker).
pub const VERSION: u8 = 9;
/// The oldest version this build still speaks: a link runs at the lower of
/// the two ends' versions, so a cluster is upgraded one node at a time
/// (see [`crate::relay::codec::encode_for`] for what a v6 link leaves out).
pub const MIN_VERSION: u8 = 6;

/// A snapshot of the live nodes.
#[derive(Debug, Clone)]
pub struct View {
    /// (name, index) of every live node, this node (index 0) included.
    pub live: Vec<(Arc<str>, u16)>,
    /// Which of the node's views this is (0: the first; see
    /// [`crate::node::Node::view_gen`]): a shard whose view is older than
    /// the node's knows a newer one is on its way.
    pub number: u64,
}

impl View {
    /// A view with only this node.
    pub fn solo(self_name: &str) -> View {
        View { live: vec![(Arc::from(self_name), 0)], number: 0 }
    }

    /// The node that owns `rid`: rendezvous hashing over the live nodes.
    pub fn owner(&self, rid: &str) -> u16 {
        if self.live.len() == 1 {
            return self.live[0].1;
        }
        self.live
            .iter()
            .max_by_key(|(name, _)| (fnv1a(&[name.as_bytes(), rid.as_bytes()]), name.clone()))
            .map_or(0, |(_, i)| *i)
    }
}

/// The node-wide table of known nodes, written by the relay shard.
#[derive(Debug)]
pub struct Table {
    /// Names by index; index 0 is this node.
    pub names: Vec<Arc<str>>,
    /// Which indices have a live link (index 0 always live).
    pub up: Vec<bool>,
}

impl Table {
    /// A table that knows only this node.
    pub fn new(self_name: &str) -> Table {
        Table { names: vec![Arc::from(self_name)], up: vec![true] }
    }

    /// The index of a node, adding it when first seen.
    pub fn index_of(&mut self, name: &str) -> u16 {
        if let Some(i) = self.names.iter().position(|n| &**n == name) {
            return i as u16;
        }
        self.names.push(Arc::from(name));
        self.up.push(false);
        (self.names.len() - 1) as u16
    }

    /// The live view.
    pub fn view(&self) -> View {
        View {
            live: self
                .names
                .iter()
                .zip(&self.up)
                .enumerate()
                .filter(|(_, (_, up))| **up)
                .map(|(i, (n, _))| (n.clone(), i as u16))
                .collect(),
            number: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_agrees_with_placement_and_moves_on_failure() {
        let mut t = Table::new("a");
        let b = t.index_of("b");
        let c = t.index_of("c");
        t.up[b as usize] = true;
        t.up[c as usize] = true;
        let full = t.view();
        let mut moved = 0;
        for i in 0..300 {
            let rid = format!("room{i}");
            let owner = full.owner(&rid);
            let by_name = crate::placement::node_for(&rid, ["a", "b", "c"]).unwrap();
            assert_eq!(&*t.names[owner as usize], by_name);
            t.up[c as usize] = false;
            let without_c = t.view().owner(&rid);
            t.up[c as usize] = true;
            if owner == c {
                assert_ne!(without_c, c);
                moved += 1;
            } else {
                assert_eq!(without_c, owner, "only the dead node's rooms move");
            }
        }
        assert!(moved > 50 && moved < 150, "{moved}");
        assert_eq!(View::solo("a").owner("x"), 0);
    }
}
