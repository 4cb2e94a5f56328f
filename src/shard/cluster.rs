//! The cluster as a shard sees it: what the relay received (on shard 0),
//! and changes of the live nodes, applied: members on a dead node are
//! forgotten, rooms this node no longer owns are handed over, and this
//! shard's connections re-join the rooms that moved at their new owners.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Shard;
use crate::cluster::View;
use crate::msg::{Audience, Delivery, NodeMsg, Request, ShardMsg};
use crate::node::unix_ms;
use crate::owner::{self, Dest, Out};
use crate::placement::shard_for;
use crate::relay::RelayEvent;
use tracing::warn;

/// Applies a new set of live nodes: forgets members on a dead node,
/// hands over rooms this node no longer owns, and re-joins this shard's
/// connections at the new owners of rooms that moved. A re-homed room
/// starts a new epoch at its new owner, unless a shared store carries
/// its sequence over (`--store`).
pub(super) fn apply(sh: &Shard, view: Arc<View>, down: Option<u16>) {
    let old_view = std::mem::replace(&mut *sh.view.borrow_mut(), view.clone());
    *sh.prev_view.borrow_mut() = old_view.clone();
    let mut out = std::mem::take(&mut *sh.owner_out.borrow_mut());
    let moved;
    {
        let mut owner = sh.owner.borrow_mut();
        if let Some(dead) = down {
            owner.node_down(dead, unix_ms(), &mut out);
        }
        // Rooms that now belong to another node: their members re-join there.
        moved = owner.keep_own(&view);
        sh.stats().rooms.store(owner.live_rooms() as i64, Relaxed);
    }
    sh.hold.send_or_hold(sh, &mut out);
    *sh.owner_out.borrow_mut() = out;
    let mut rejoins = Vec::new();
    {
        let conns = sh.conns.borrow();
        let members = sh.members.borrow();
        for (key, e) in conns.iter() {
            let Some((uid, name, echo)) = e.session.identity() else { continue };
            for rid in e.session.rooms().iter() {
                // Rooms that moved, and rooms of a node that went down and
                // is live again by now (it forgot this node's members).
                let owner = view.owner(rid);
                if old_view.owner(rid) != owner || down == Some(owner) {
                    let here = members.get(rid);
                    let indexed = here.is_some_and(|m| m.conns.contains(&key));
                    rejoins.push(Request::Join {
                        rid: rid.clone(),
                        conn: sh.conn_ref(key, e.generation),
                        uid: uid.clone(),
                        name: name.clone(),
                        echo,
                        rejoin: indexed,
                        // A resume the old owner had not answered yet is
                        // made again at the new one (which dropped it).
                        // A member re-joins from where this shard's
                        // deliveries stand (what the new owner sent before
                        // this re-join came, it sends again).
                        since: if indexed { here.and_then(|m| m.seen.top()) } else { e.session.resuming(rid) },
                    });
                }
            }
        }
    }
    // Then what waited for those rooms here (after the re-joins, so
    // that a message finds its sender a member there).
    for req in rejoins.into_iter().chain(moved) {
        sh.to_owner(req);
    }
    // Broadcasts of the rooms' new owners that came before this view.
    release_early(sh, true);
    // What waited for this view, as if it came now.
    let waited = std::mem::take(&mut *sh.view_wait.borrow_mut());
    for (req, hops) in waited {
        to_owner_here(sh, req, hops);
    }
    // What waited for a drain's hand-off, after the re-joins (once this
    // node is out of the view: it owns nothing now).
    if !view.live.iter().any(|(_, i)| *i == 0) {
        sh.end_hand_off();
    }
    // Last: a reader of the gauge knows this shard routes by the new view.
    sh.stats().view_nodes.store(view.live.len() as i64, Relaxed);
}

/// A request that came by the relay, for a room this node owns: to the
/// room's shard. One for a room another node owns (its sender's view was
/// older, or this node drains) is passed on to the owner, naming the node
/// of its connection, at most [`MAX_HOPS`] times (views that disagree
/// settle within milliseconds).
fn to_owner_here(sh: &Shard, req: Request, hops: u8) {
    let view = sh.view.borrow().clone();
    if view.number < sh.node.view_gen.load(std::sync::atomic::Ordering::Acquire) {
        // A newer view is on its way to this shard (a drained node's
        // LEAVING came just before, with what it handed on): by this
        // one the request would go back to the node that sent it.
        return sh.view_wait.borrow_mut().push((req, hops));
    }
    let owner = view.owner(req.rid());
    if owner == 0 {
        // The sender chose this node as the owner; the shard is ours to pick.
        return sh.route(shard_for(req.rid(), sh.nshards), ShardMsg::ToOwner(req));
    }
    match sh.node_name(req.conn().node) {
        Some(origin) if hops < MAX_HOPS => sh.to_node(owner, NodeMsg::Forwarded { origin, hops: hops + 1, req }),
        // Its connection's node is gone (and the connection with it), or
        // the views have not settled: dropped, said once a second.
        _ => {
            if let Some(held) = DROPPED_LOG.due() {
                warn!(rid = %req.rid(), hops, held_back = held, "a request for another node's room dropped");
            }
        }
    }
}

/// How often a request is passed on before it is dropped.
const MAX_HOPS: u8 = 16;
static DROPPED_LOG: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// What shard 0's relay received: messages from other nodes go to the
/// shard they are for, changes of the live set to every shard.
pub(super) fn on_relay_event(sh: &Shard, ev: RelayEvent) {
    match ev {
        RelayEvent::Msg(NodeMsg::ToOwner(req), _) => to_owner_here(sh, req, 0),
        RelayEvent::Msg(NodeMsg::Forwarded { req, hops, .. }, _) => to_owner_here(sh, req, hops),
        RelayEvent::Msg(NodeMsg::ToMembers(d @ (Delivery::Deliver { .. } | Delivery::Joined { .. })), from) => {
            // From a node that owns the room by neither this view nor the
            // one before (the old owner's last broadcasts pass): a new
            // owner whose first broadcasts overtook the last ones of the
            // old (a drained node's, on another link, before its LEAVING).
            // They wait for the view without the old owner (or a tick).
            let rid = match &d {
                Delivery::Deliver { rid, .. } | Delivery::Joined { rid, .. } => rid,
                Delivery::Direct { .. } => unreachable!(),
            };
            let mut early = sh.early.borrow_mut();
            let foreign = sh.view.borrow().owner(rid) != from && sh.prev_view.borrow().owner(rid) != from;
            if foreign || early.iter().any(|(_, r, _)| r == rid) {
                return early.push((std::time::Instant::now(), rid.clone(), d));
            }
            drop(early);
            to_members(sh, d);
        }
        RelayEvent::Msg(NodeMsg::ToMembers(d @ Delivery::Direct { .. }), _) => to_members(sh, d),
        // The relay keeps what peers tell of other peers.
        RelayEvent::Msg(NodeMsg::Peers { .. } | NodeMsg::Leaving, _) => {}
        RelayEvent::Msg(NodeMsg::Knock { uid, frame }, _) => {
            for s in 0..sh.nshards {
                sh.route(s, ShardMsg::Knock { uid: uid.clone(), frame: frame.clone() });
            }
        }
        RelayEvent::Msg(NodeMsg::Disconnect { uid, code }, _) => {
            for s in 0..sh.nshards {
                sh.route(s, ShardMsg::Disconnect { uid: uid.clone(), code });
            }
        }
        RelayEvent::Msg(NodeMsg::ApiAsk { ticket, from, request }, _) => sh.api().on_ask(ticket, from, request),
        RelayEvent::Msg(NodeMsg::ApiAnswer { ticket, status, body }, _) => sh.api().on_answer(ticket, status, body),
        RelayEvent::LiveSetChanged { down } => {
            let table = sh.node.cluster.lock().expect("cluster table");
            let number = sh.node.view_gen.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
            let view = Arc::new(View { number, ..table.view() });
            drop(table);
            for s in 0..sh.nshards {
                sh.route(s, ShardMsg::ClusterChanged { view: view.clone(), down });
            }
        }
    }
}

/// What an owner on another node sent this node's members, passed to the
/// shards that hold them.
fn to_members(sh: &Shard, d: Delivery) {
    let (rid, frame, audience, t0) = match d {
        Delivery::Deliver { rid, frame, audience, t0 } => (rid, frame, audience, t0),
        d @ (Delivery::Joined { conn, .. } | Delivery::Direct { conn, .. }) => {
            if (conn.shard as usize) < sh.nshards {
                sh.route(conn.shard as usize, ShardMsg::ToMembers(d));
            }
            return;
        }
    };
    let mut out = std::mem::take(&mut *sh.owner_out.borrow_mut());
    match audience {
        // One item per node came over the link; each local shard
        // filters by its own members (a miss is one hash lookup).
        Audience::AllExcept(except) => {
            for s in 0..sh.nshards {
                let audience = Audience::AllExcept(except);
                let msg = Delivery::Deliver { rid: rid.clone(), frame: frame.clone(), audience, t0 };
                out.push(Out { dest: Dest::Shard(s), msg });
            }
        }
        // The owner named our connections; they are local here.
        Audience::Only(mut targets) => {
            targets.retain(|c| c.node == 0 && (c.shard as usize) < sh.nshards);
            owner::deliver_to(&rid, &frame, targets, t0, &mut out);
        }
    }
    for o in out.drain(..) {
        sh.send_out(o);
    }
    *sh.owner_out.borrow_mut() = out;
}

/// How long a delivery from a node that is not its room's owner by this
/// view waits for a view that says so (views that disagree for longer are
/// another matter: it is delivered as it came).
const EARLY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Shard 0: what waited for a view (see `on_relay_event`) goes on, in the
/// order it came: all of it when a view was applied, or once the oldest
/// waited [`EARLY_WAIT`] (on the sweeper's tick).
pub(super) fn release_early(sh: &Shard, view_changed: bool) {
    let due = sh.early.borrow().first().is_some_and(|(at, _, _)| view_changed || at.elapsed() >= EARLY_WAIT);
    if due {
        let early = std::mem::take(&mut *sh.early.borrow_mut());
        for (_, _, d) in early {
            to_members(sh, d);
        }
    }
}
