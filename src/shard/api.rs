//! What the server API (the admin listener, `crate::admin`) asks of a
//! shard: publish as no member, disconnect a user, ask an owner about its rooms.

use std::sync::atomic::Ordering::Relaxed;

use super::Shard;
use crate::ids::{Id, Name};
use crate::msg::{API_CONN, ApiQuery, Publish, Request, ShardMsg};
use crate::placement::shard_for;
use crate::protocol::MsgType;

impl Shard {
    /// The server API: a message to a room from no member (see
    /// [`API_CONN`]), sent to the room's owner on whichever node.
    pub(crate) fn api_publish(&self, rid: Id, uid: Id, name: Name, mtype: MsgType, msg: String) {
        self.stats().messages_in.fetch_add(1, Relaxed);
        self.to_owner(Request::Publish(Box::new(Publish { rid, from: API_CONN, uid, name, mtype, msg, tid: None })));
    }

    /// The server API: asks the shard that owns `rid` (None when another
    /// node owns it); `make` builds the question around the reply channel.
    pub(crate) fn api_ask<T: Send + 'static>(
        &self,
        rid: &Id,
        make: impl FnOnce(crossbeam_channel::Sender<T>) -> ApiQuery,
    ) -> Option<crossbeam_channel::Receiver<T>> {
        if self.view.borrow().owner(rid) != 0 {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.route(shard_for(rid, self.nshards), ShardMsg::Api(make(tx)));
        Some(rx)
    }

    /// The server API: asks every shard of this node.
    pub(crate) fn api_ask_all<T: Send + 'static>(
        &self,
        make: impl Fn(crossbeam_channel::Sender<T>) -> ApiQuery,
    ) -> crossbeam_channel::Receiver<T> {
        let (tx, rx) = crossbeam_channel::bounded(self.nshards);
        for s in 0..self.nshards {
            self.route(s, ShardMsg::Api(make(tx.clone())));
        }
        rx
    }

    /// The server API: closes every connection of `uid` in the cluster:
    /// this node's shards, and every other live node through the relay.
    pub(crate) fn api_disconnect(&self, uid: Id, code: u16) {
        for s in 0..self.nshards {
            self.route(s, ShardMsg::Disconnect { uid: uid.clone(), code });
        }
        let others: Vec<u16> = self.view.borrow().live.iter().map(|(_, n)| *n).filter(|n| *n != 0).collect();
        for n in others {
            self.to_node(n, crate::msg::NodeMsg::Disconnect { uid: uid.clone(), code });
        }
    }
}
