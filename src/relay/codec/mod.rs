//! The relay's wire format: binary, length-prefixed, versioned. No I/O.
//!
//! # Byte layout
//!
//! Every value is big-endian. After the handshake (see [`super::handshake`])
//! a link carries frames, inside sealed records (see [`super::secure`]):
//!
//! ```text
//! frame   := len:u32 type:u8 body          len = 1 + body length, at most MAX_FRAME
//! str     := n:u16 bytes[n]                UTF-8 (ids, names)
//! text    := n:u32 bytes[n]                UTF-8 (message bodies)
//! blob    := n:u32 bytes[n]                an already-encoded WebSocket frame
//! conn    := shard:u16 key:u32 gen:u32     a connection on the sending or receiving node
//! opt<T>  := 0 | 1 T
//!
//! type 1  HEARTBEAT   (empty)
//! type 2  ACTIVATE    (empty; see below)
//! type 10 JOIN        rid:str conn uid:str name:str flags:u8 (bit0 echo, bit1 rejoin, bit2 since)
//!                     [epoch:u64 seq:u64]              (with bit2: the login resumes after that point)
//! type 11 LEAVE       rid:str conn ack:u8
//! type 12 PUBLISH     rid:str conn uid:str name:str mtype:u8 msg:text tid:opt<str>
//!                     ext:u8 [mid:str] [reply:u64]     (ext bit0: a mid follows, bit1: a reply,
//!                                                       bit2: the sender wants its echo; v7 ignores it)
//! type 13 GETONLINE   rid:str conn after:opt<str> limit:opt<u64>
//! type 14 GETHISTORY  rid:str conn since:opt<u64> before:opt<u64> epoch:opt<u64> limit:opt<u64>
//! type 15 CHANGE      rid:str conn uid:str seq:u64 kind:u8 (0 edit msg:text, 1 delete,
//!                     2 react on emoji:str, 3 react off emoji:str)
//! type 16 TYPING      rid:str conn uid:str name:str
//! type 17 READ        rid:str conn uid:str seq:u64     (v9: a member's read marker)
//! type 20 JOINED      rid:str conn ack:blob
//! type 21 DELIVER     rid:str audience frame:blob
//!                     audience := 0 except:opt<conn>   (every member on the node but one)
//!                               | 1 n:u32 conn[n]      (exactly these connections)
//! type 22 DIRECT      conn frame:blob
//! type 30 DISCONNECT  uid:str code:u16                 (the server API: close a user's connections)
//! type 31 API_ASK     ticket:u64 request:str           (the server API: a question for the owner node)
//! type 32 API_ANSWER  ticket:u64 status:u16 body:blob  (its answer)
//! type 33 KNOCK       uid:str frame:blob               (a direct conversation: to a user not in it)
//! type 34 PEERS       n:u16 addr:str[n]                (relay addresses the sender knows; n <= 256)
//! type 35 LEAVING     (empty)                          (the sender drains: take its rooms over now)
//! type 36 FORWARD     origin:str hops:u8 type:u8 body  (v8: a request of type 10–17 passed on by a
//!                                                       node that does not own its room; its conn
//!                                                       is on the node named origin)
//! ```
//!
//! ACTIVATE picks the one link of a pair that carries traffic: the node with
//! the smaller name decides, and sends it as the first frame on the link it
//! chose; the other node sends nothing but heartbeats on a link until
//! ACTIVATE arrives on it (see [`super`]).
//!
//! Requests (10–14) name a connection of the *sending* node; owner messages
//! (20–22) name connections of the *receiving* node. The node of a
//! [`ConnRef`](crate::msg::ConnRef) is therefore never on the wire: the decoder fills it in from
//! the link it arrived on. A DELIVER carries the WebSocket frame exactly as
//! the owner encoded it, so the receiving node re-encodes nothing.
//!
//! `encoder` writes these frames and `decoder` reads them back, refusing
//! anything no sender writes; `tests` holds their round trips.

use bytes::Bytes;
use thiserror::Error;

use crate::msg::NodeMsg;

mod decoder;
mod encoder;
pub use decoder::{decode, decode_for};
pub use encoder::{encode, encode_for};

/// Largest frame accepted on a link (a getHistory reply of 100 long
/// messages is well under it).
pub const MAX_FRAME: usize = 16 << 20;

/// Frame type of a heartbeat.
pub const T_HEARTBEAT: u8 = 1;
const T_ACTIVATE: u8 = 2;
const T_JOIN: u8 = 10;
const T_LEAVE: u8 = 11;
const T_PUBLISH: u8 = 12;
const T_GETONLINE: u8 = 13;
const T_GETHISTORY: u8 = 14;
const T_CHANGE: u8 = 15;
const T_TYPING: u8 = 16;
const T_READ: u8 = 17;
const T_JOINED: u8 = 20;
const T_DELIVER: u8 = 21;
const T_DIRECT: u8 = 22;
const T_DISCONNECT: u8 = 30;
const T_API_ASK: u8 = 31;
const T_API_ANSWER: u8 = 32;
const T_KNOCK: u8 = 33;
const T_PEERS: u8 = 34;
const T_LEAVING: u8 = 35;
const T_FORWARD: u8 = 36;

/// A frame that cannot be decoded: the link is closed (and nothing else).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The length prefix is over [`MAX_FRAME`] (or zero).
    #[error("frame length {0} out of range")]
    Length(usize),
    /// The body ended before its fields did.
    #[error("truncated frame body")]
    Truncated,
    /// A field has a value no sender writes (bad type, id, name or UTF-8).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// What a link delivers.
#[derive(Debug)]
pub enum Frame {
    /// Liveness only.
    Heartbeat,
    /// The deciding node chose this link for the pair's traffic.
    Activate,
    /// A message, with connection nodes set to the link's node where they
    /// refer to the peer.
    Msg(NodeMsg),
}

/// Encodes a heartbeat frame.
pub fn heartbeat() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 1, T_HEARTBEAT])
}

/// Encodes an activation frame.
pub fn activate() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 1, T_ACTIVATE])
}

#[cfg(test)]
mod tests;
