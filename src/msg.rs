//! What crosses shards and nodes. Plain data, no I/O.
//!
//! Traffic has two directions: a [`Request`] goes from a connection's shard to
//! its room's owner; a [`Delivery`] goes from the owner to the shards (or
//! nodes) of the members it is for. Inside a node both travel as a
//! [`ShardMsg`] over the shards' queues, with two more kinds that only exist
//! inside a node: a message for shard 0 to pass to another node's relay
//! link, and a change of the cluster's live set. Between nodes they travel
//! as a [`NodeMsg`], which the relay codec writes (`relay::codec`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::cluster::View;
use crate::ids::{Id, Name};
use crate::protocol::MsgType;

/// A connection anywhere in the cluster: its node (0 is this node, others
/// are indices of [`crate::cluster::Table`]), its shard there, its slot, and
/// the slot's generation (a reused slot gets a new generation, so a stale
/// reference is recognised and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Node the connection lives on (0 = this node).
    pub node: u16,
    /// Shard the connection lives on.
    pub shard: u16,
    /// Slot in that shard's connection table.
    pub key: u32,
    /// Generation of the slot.
    pub generation: u32,
}

/// The sender of messages published through the server API (no connection:
/// it is no member, needs none, and gets no reply).
pub const API_CONN: ConnRef = ConnRef { node: 0, shard: u16::MAX, key: 0, generation: 0 };

impl ConnRef {
    /// Whether this is [`API_CONN`] of any node (the relay sets `node` to
    /// the node a message came from).
    pub fn is_api(&self) -> bool {
        self.shard == API_CONN.shard && self.key == API_CONN.key && self.generation == API_CONN.generation
    }
}

/// To a room's owner.
#[derive(Debug, Clone)]
pub enum Request {
    /// Admit a connection to a room.
    Join {
        /// Room.
        rid: Id,
        /// Connection.
        conn: ConnRef,
        /// Its user.
        uid: Id,
        /// The user's name.
        name: Name,
        /// Echo flag of the connection.
        echo: bool,
        /// Re-homing after a cluster change: join quietly (no ack, no newUser).
        rejoin: bool,
        /// Resume after this point of the room's sequence (`login`'s `since`).
        since: Option<crate::protocol::Since>,
    },
    /// A connection left a room (logout when `ack`, else disconnect).
    Leave {
        /// Room.
        rid: Id,
        /// Connection.
        conn: ConnRef,
        /// Send the logout acknowledgement.
        ack: bool,
    },
    /// A chat message to sequence and fan out.
    Publish(Box<Publish>),
    /// A change of a room message (edit, delete, reaction): an event of
    /// the room, sequenced and fanned out like a message.
    Change(Box<Change>),
    /// Roster request, a page at a time.
    GetOnline {
        /// Room.
        rid: Id,
        /// Requesting connection.
        conn: ConnRef,
        /// Start after this member.
        after: Option<Id>,
        /// At most this many.
        limit: Option<usize>,
    },
    /// A member is typing: the room's other members are told (not stored).
    Typing {
        /// Room.
        rid: Id,
        /// The typing connection.
        conn: ConnRef,
        /// Its user.
        uid: Id,
        /// The user's name.
        name: Name,
    },
    /// A member read the room up to `seq`: its user's marker moves (see
    /// `owner/reads`).
    Read {
        /// Room.
        rid: Id,
        /// The reading connection.
        conn: ConnRef,
        /// Its user.
        uid: Id,
        /// The newest seq read.
        seq: u64,
    },
    /// History request.
    GetHistory {
        /// Room.
        rid: Id,
        /// Requesting connection.
        conn: ConnRef,
        /// After this seq.
        since: Option<u64>,
        /// Before this seq.
        before: Option<u64>,
        /// The epoch `before` is in (None: the room's current one).
        epoch: Option<u64>,
        /// At most this many.
        limit: Option<usize>,
    },
}

impl Request {
    /// The room the request is for (its owner is where it goes).
    pub fn rid(&self) -> &Id {
        match self {
            Request::Join { rid, .. }
            | Request::Leave { rid, .. }
            | Request::GetOnline { rid, .. }
            | Request::Typing { rid, .. }
            | Request::Read { rid, .. }
            | Request::GetHistory { rid, .. } => rid,
            Request::Publish(p) => &p.rid,
            Request::Change(c) => &c.rid,
        }
    }

    /// The request's connection, as another node's (`node`): a request
    /// passed on by a third node names its origin.
    pub fn set_conn_node(&mut self, node: u16) {
        match self {
            Request::Join { conn, .. }
            | Request::Leave { conn, .. }
            | Request::GetOnline { conn, .. }
            | Request::Typing { conn, .. }
            | Request::Read { conn, .. }
            | Request::GetHistory { conn, .. } => conn.node = node,
            Request::Publish(p) => p.from.node = node,
            Request::Change(c) => c.from.node = node,
        }
    }

    /// The connection the request comes from.
    pub fn conn(&self) -> ConnRef {
        match self {
            Request::Join { conn, .. }
            | Request::Leave { conn, .. }
            | Request::GetOnline { conn, .. }
            | Request::Typing { conn, .. }
            | Request::Read { conn, .. }
            | Request::GetHistory { conn, .. } => *conn,
            Request::Publish(p) => p.from,
            Request::Change(c) => c.from,
        }
    }
}

/// A chat message on its way to the owner.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Room.
    pub rid: Id,
    /// Sending connection.
    pub from: ConnRef,
    /// Sender's uid (from the session).
    pub uid: Id,
    /// Sender's name (from the session).
    pub name: Name,
    /// Kind.
    pub mtype: MsgType,
    /// Body.
    pub msg: String,
    /// Private recipient.
    pub tid: Option<Id>,
    /// The client's id for the message (de-duplication).
    pub mid: Option<Id>,
    /// The seq of the room message it answers.
    pub reply: Option<u64>,
    /// The sender wants its own message back (its session's echo flag): for
    /// an owner that does not know it as a member yet (see `owner`).
    pub echo: bool,
}

/// A change of a room message on its way to the owner.
#[derive(Debug, Clone)]
pub struct Change {
    /// Room.
    pub rid: Id,
    /// Sending connection.
    pub from: ConnRef,
    /// Sender's uid (from the session).
    pub uid: Id,
    /// The message changed.
    pub seq: u64,
    /// What changes.
    pub change: crate::protocol::ChangeKind,
}

/// From an owner to the shard (or node) of some of a room's members.
#[derive(Debug)]
pub enum Delivery {
    /// The connection is a member now: index it, then send it the ack.
    Joined {
        /// Room.
        rid: Id,
        /// Connection.
        conn: ConnRef,
        /// Encoded login acknowledgement.
        ack: Bytes,
    },
    /// One encoded frame for a shard's (or node's) members of a room.
    Deliver {
        /// Room.
        rid: Id,
        /// The frame, shared by every recipient.
        frame: Bytes,
        /// Who receives it.
        audience: Audience,
        /// When the owner sequenced it (for the fan-out latency metric).
        t0: Instant,
    },
    /// A reply to one connection.
    Direct {
        /// Connection.
        conn: ConnRef,
        /// The frame.
        frame: Bytes,
    },
}

/// Which of a room's members receive a [`Delivery::Deliver`].
#[derive(Debug, Clone)]
pub enum Audience {
    /// Every member there, except one connection (the sender without echo).
    AllExcept(Option<ConnRef>),
    /// Exactly these connections (private messages).
    Only(Vec<ConnRef>),
}

/// What crosses a relay link between two nodes.
#[derive(Debug)]
pub enum NodeMsg {
    /// To the owner of a room on the receiving node.
    ToOwner(Request),
    /// From an owner on the sending node to members on the receiving node.
    ToMembers(Delivery),
    /// The server API: close every connection of `uid` on the receiving node.
    Disconnect {
        /// The user.
        uid: Id,
        /// Close code sent to the client.
        code: u16,
    },
    /// A direct conversation has a message for `uid`, who is not in it:
    /// `frame` (`{"cmd":"dm",…}`) goes to each of its connections on the
    /// receiving node.
    Knock {
        /// The user.
        uid: Id,
        /// The frame.
        frame: Bytes,
    },
    /// A request the sending node received for a room it does not own (its
    /// sender's view was older, or it drains), passed on to the owner.
    /// Unlike [`NodeMsg::ToOwner`], the request's connection is on
    /// `origin`, not on the sending node.
    Forwarded {
        /// The node of the request's connection, by name (indices are per
        /// process).
        origin: std::sync::Arc<str>,
        /// Times it was passed on: views that disagree settle within
        /// milliseconds, and a request passed on more often is dropped.
        hops: u8,
        /// The request.
        req: Request,
    },
    /// The sending node drains: take its rooms over now (it no longer owns
    /// any), before its clients are told to leave. Handled by the relay.
    Leaving,
    /// The relay addresses the sending node knows (its own and its peers'):
    /// the receiver dials those it does not reach yet. Handled by the relay.
    Peers {
        /// `ip:port` each.
        addrs: Vec<String>,
    },
    /// The server API: a question (`GET` path and query, e.g.
    /// `/api/online?rid=r`) for the node that owns the room, or for every
    /// node (`/api/rooms`); answered with [`NodeMsg::ApiAnswer`].
    ApiAsk {
        /// Names the answer.
        ticket: u64,
        /// The asking node (set from the link on receipt; not on the wire).
        from: u16,
        /// Path and query.
        request: String,
    },
    /// The answer to an [`NodeMsg::ApiAsk`]: HTTP status and JSON body.
    ApiAnswer {
        /// The question's ticket.
        ticket: u64,
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: Bytes,
    },
}

/// What crosses the queues between the shards of a node.
#[derive(Debug)]
pub enum ShardMsg {
    /// To the owner shard of a room.
    ToOwner(Request),
    /// From an owner to this shard's members.
    ToMembers(Delivery),
    /// For shard 0, which holds the relay links: pass on to another node.
    ToNode(u16, Box<NodeMsg>),
    /// The server API asks the owner shard about its rooms.
    Api(ApiQuery),
    /// The server API: close every connection of this user on this shard.
    Disconnect {
        /// The user.
        uid: Id,
        /// Close code sent to the client.
        code: u16,
    },
    /// A direct conversation knocks: `frame` to each connection of `uid` on
    /// this shard (see [`NodeMsg::Knock`]).
    Knock {
        /// The user.
        uid: Id,
        /// The frame.
        frame: Bytes,
    },
    /// The cluster's live set changed: route by `view` from now on; `down`,
    /// if any, is a node whose members are gone.
    ClusterChanged {
        /// The new live set.
        view: Arc<View>,
        /// A node that went down.
        down: Option<u16>,
    },
}

/// A question of the server API to a shard; the answer goes back on `reply`
/// (the admin task waits for it: off the message path).
#[derive(Debug)]
pub enum ApiQuery {
    /// A room's members (uid, name), if the shard owns the room.
    Online {
        /// Room.
        rid: Id,
        /// Answer.
        reply: crossbeam_channel::Sender<Option<Vec<(String, String)>>>,
    },
    /// A room's stored messages (JSON) after `since`, at most `limit`, and its epoch.
    History {
        /// Room.
        rid: Id,
        /// After this seq.
        since: Option<u64>,
        /// At most this many.
        limit: Option<usize>,
        /// Answer.
        reply: crossbeam_channel::Sender<Option<(u64, Vec<Bytes>)>>,
    },
    /// The rooms this shard owns that have members, with their member counts.
    Rooms {
        /// Answer.
        reply: crossbeam_channel::Sender<Vec<(String, usize)>>,
    },
}
