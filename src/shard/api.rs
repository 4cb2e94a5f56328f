//! What the server API (the admin listener, `crate::admin`) asks of a
//! shard: publish as no member, disconnect a user, ask an owner about its rooms.

use std::sync::atomic::Ordering::Relaxed;

use super::Shard;
use crate::ids::{Id, Name};
use crate::msg::{API_CONN, ApiQuery, Publish, Request, ShardMsg};
use crate::placement::shard_for;
use crate::protocol::MsgType;

/// Shard 0's side of the server API's questions between nodes: questions
/// this node asked, waiting for their answers, and questions other nodes
/// asked, waiting for the admin module's answerer (`admin::answer_peers`).
#[derive(Debug, Default)]
pub(crate) struct ApiPeers {
    next: std::cell::Cell<u64>,
    waiting: std::cell::RefCell<std::collections::HashMap<u64, crossbeam_channel::Sender<(u16, bytes::Bytes)>>>,
    asks: std::cell::RefCell<std::collections::VecDeque<(u64, u16, String)>>,
    /// Questions taken by the answerer and not answered yet.
    answering: std::cell::Cell<usize>,
    waker: std::cell::RefCell<Option<std::task::Waker>>,
}

/// The largest answer sent to another node: well under a relay frame's cap,
/// so that one answer can never close a link.
const MAX_ANSWER: usize = crate::relay::codec::MAX_FRAME / 2;

/// Questions from other nodes allowed to wait; past it they are answered 503.
const MAX_ASKS: usize = 1024;

/// The server API's view of a shard (`shard.api()`): what the admin
/// listener may ask of it.
pub(crate) struct Api<'a> {
    pub(super) sh: &'a Shard,
}

impl Api<'_> {
    /// The server API: a message to a room from no member (see
    /// [`API_CONN`]), sent to the room's owner on whichever node.
    pub(crate) fn publish(&self, rid: Id, uid: Id, name: Name, mtype: MsgType, msg: String) {
        self.sh.stats().messages_in.fetch_add(1, Relaxed);
        self.sh.to_owner(Request::Publish(Box::new(Publish {
            rid,
            from: API_CONN,
            uid,
            name,
            mtype,
            msg,
            tid: None,
            mid: None,
            reply: None,
            echo: false,
        })));
    }

    /// The server API: a moderator's change of any message of `rid` (as
    /// no member, in the name of `uid`), at the room's owner.
    pub(crate) fn change(&self, rid: Id, uid: Id, seq: u64, change: crate::protocol::ChangeKind) {
        self.sh.to_owner(Request::Change(Box::new(crate::msg::Change { rid, from: API_CONN, uid, seq, change })));
    }

    /// The server API: asks the shard that owns `rid` (None when another
    /// node owns it); `make` builds the question around the reply channel.
    pub(crate) fn ask<T: Send + 'static>(
        &self,
        rid: &Id,
        make: impl FnOnce(crossbeam_channel::Sender<T>) -> ApiQuery,
    ) -> Option<crossbeam_channel::Receiver<T>> {
        if self.sh.view.borrow().owner(rid) != 0 {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.sh.route(shard_for(rid, self.sh.nshards), ShardMsg::Api(make(tx)));
        Some(rx)
    }

    /// The server API: asks every shard of this node.
    pub(crate) fn ask_all<T: Send + 'static>(
        &self,
        make: impl Fn(crossbeam_channel::Sender<T>) -> ApiQuery,
    ) -> crossbeam_channel::Receiver<T> {
        let (tx, rx) = crossbeam_channel::bounded(self.sh.nshards);
        for s in 0..self.sh.nshards {
            self.sh.route(s, ShardMsg::Api(make(tx.clone())));
        }
        rx
    }

    /// The server API: closes every connection of `uid` in the cluster:
    /// this node's shards, and every other live node through the relay.
    pub(crate) fn disconnect(&self, uid: Id, code: u16) {
        for s in 0..self.sh.nshards {
            self.sh.route(s, ShardMsg::Disconnect { uid: uid.clone(), code });
        }
        for n in self.other_nodes() {
            self.sh.to_node(n, crate::msg::NodeMsg::Disconnect { uid: uid.clone(), code });
        }
    }
    /// The node that owns `rid` (0: this one).
    pub(crate) fn owner_node(&self, rid: &Id) -> u16 {
        self.sh.view.borrow().owner(rid)
    }

    /// The other live nodes.
    pub(crate) fn other_nodes(&self) -> Vec<u16> {
        self.sh.view.borrow().live.iter().map(|(_, n)| *n).filter(|n| *n != 0).collect()
    }

    /// Asks node `node` a question of the server API (on shard 0, which
    /// holds the links); returns its ticket and where the answer comes.
    pub(crate) fn ask_node(
        &self,
        node: u16,
        request: String,
    ) -> (u64, crossbeam_channel::Receiver<(u16, bytes::Bytes)>) {
        let p = &self.sh.api_peers;
        let ticket = p.next.get() + 1;
        p.next.set(ticket);
        let (tx, rx) = crossbeam_channel::bounded(1);
        p.waiting.borrow_mut().insert(ticket, tx);
        self.sh.to_node(node, crate::msg::NodeMsg::ApiAsk { ticket, from: 0, request });
        (ticket, rx)
    }

    /// Gives up waiting for an answer.
    pub(crate) fn forget_ask(&self, ticket: u64) {
        self.sh.api_peers.waiting.borrow_mut().remove(&ticket);
    }

    /// Another node's answer arrived.
    pub(super) fn on_answer(&self, ticket: u64, status: u16, body: bytes::Bytes) {
        if let Some(tx) = self.sh.api_peers.waiting.borrow_mut().remove(&ticket) {
            let _ = tx.send((status, body));
        }
    }

    /// Another node asks: queued for the answerer.
    pub(super) fn on_ask(&self, ticket: u64, from: u16, request: String) {
        let p = &self.sh.api_peers;
        if p.asks.borrow().len() + p.answering.get() >= MAX_ASKS {
            let body = bytes::Bytes::from_static(br#"{"error":"too many questions from other nodes"}"#);
            return self.sh.to_node(from, crate::msg::NodeMsg::ApiAnswer { ticket, status: 503, body });
        }
        p.asks.borrow_mut().push_back((ticket, from, request));
        if let Some(w) = p.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The next question from another node: (ticket, node, request).
    pub(crate) async fn next_ask(&self) -> (u64, u16, String) {
        std::future::poll_fn(|cx| match self.sh.api_peers.asks.borrow_mut().pop_front() {
            Some(a) => {
                let n = &self.sh.api_peers.answering;
                n.set(n.get() + 1);
                std::task::Poll::Ready(a)
            }
            None => {
                *self.sh.api_peers.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Sends an answer to the node that asked.
    pub(crate) fn answer_node(&self, node: u16, ticket: u64, status: u16, body: Vec<u8>) {
        let n = &self.sh.api_peers.answering;
        n.set(n.get().saturating_sub(1));
        let (status, body) = if body.len() > MAX_ANSWER {
            (
                507,
                br#"{"error":"the answer is too large to pass between nodes: ask the node that owns the room"}"#
                    .to_vec(),
            )
        } else {
            (status, body)
        };
        self.sh.to_node(node, crate::msg::NodeMsg::ApiAnswer { ticket, status, body: body.into() });
    }
}

/// Waits (off the message path) up to 5 s for `n` answers from the shards
/// or nodes asked; None if they do not all come.
pub(crate) async fn answers<T>(rx: crossbeam_channel::Receiver<T>, n: usize) -> Option<Vec<T>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match rx.try_recv() {
            Ok(v) => got.push(v),
            Err(crossbeam_channel::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                glommio::timer::Timer::new(std::time::Duration::from_millis(1)).await;
            }
            Err(_) => return None,
        }
    }
    Some(got)
}
