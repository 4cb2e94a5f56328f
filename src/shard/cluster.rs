//! Cluster changes as a shard applies them: members on a dead node are
//! forgotten, rooms this node no longer owns are handed over, and this
//! shard's connections re-join the rooms that moved at their new owners.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Shard;
use crate::cluster::View;
use crate::msg::Request;
use crate::node::unix_ms;

impl Shard {
    /// Applies a new set of live nodes: forgets members on a dead node,
    /// hands over rooms this node no longer owns, and re-joins this shard's
    /// connections at the new owners of rooms that moved. A re-homed room
    /// starts a new epoch at its new owner, unless a shared store carries
    /// its sequence over (`--store`).
    pub(super) fn apply_cluster_change(&self, view: Arc<View>, down: Option<u16>) {
        let old_view = std::mem::replace(&mut *self.view.borrow_mut(), view.clone());
        let mut out = std::mem::take(&mut *self.owner_out.borrow_mut());
        let moved;
        {
            let mut owner = self.owner.borrow_mut();
            if let Some(dead) = down {
                owner.node_down(dead, unix_ms(), &mut out);
            }
            // Rooms that now belong to another node: their members re-join there.
            moved = owner.keep_own(&view);
            self.stats().rooms.store(owner.live_rooms() as i64, Relaxed);
        }
        self.send_or_hold(&mut out);
        *self.owner_out.borrow_mut() = out;
        let mut rejoins = Vec::new();
        {
            let conns = self.conns.borrow();
            let members = self.members.borrow();
            for (key, e) in conns.iter() {
                let Some((uid, name, echo)) = e.session.identity() else { continue };
                for rid in e.session.rooms().iter() {
                    // Rooms that moved, and rooms of a node that went down and
                    // is live again by now (it forgot this node's members).
                    let owner = view.owner(rid);
                    if old_view.owner(rid) != owner || down == Some(owner) {
                        let indexed = members.get(rid).is_some_and(|m| m.contains(&key));
                        rejoins.push(Request::Join {
                            rid: rid.clone(),
                            conn: self.conn_ref(key, e.generation),
                            uid: uid.clone(),
                            name: name.clone(),
                            echo,
                            rejoin: indexed,
                        });
                    }
                }
            }
        }
        // Then what waited for those rooms here (after the re-joins, so
        // that a message finds its sender a member there).
        for req in rejoins.into_iter().chain(moved) {
            self.to_owner(req);
        }
        // Last: a reader of the gauge knows this shard routes by the new view.
        self.stats().view_nodes.store(view.live.len() as i64, Relaxed);
    }
}
