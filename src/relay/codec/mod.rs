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
//! [`ConnRef`] is therefore never on the wire: the decoder fills it in from
//! the link it arrived on. A DELIVER carries the WebSocket frame exactly as
//! the owner encoded it, so the receiving node re-encodes nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::ids::{Id, Name};
use crate::msg::{Audience, Change, ConnRef, Delivery, NodeMsg, Publish, Request};
use crate::protocol::{ChangeKind, MsgType, Since};

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

/// Encodes a message for a link at relay version `wire`: as [`encode`] at
/// this build's version; at version 6 (a peer not upgraded yet) a JOIN
/// leaves out `since`, a PUBLISH its `mid` and `reply` (the ext byte), and
/// CHANGE, TYPING and KNOCK, which v6 cannot read, are not sent (None).
pub fn encode_for(msg: &NodeMsg, wire: u8) -> Option<Bytes> {
    if wire < 8 && matches!(msg, NodeMsg::Forwarded { .. }) {
        // A v7 peer would take the connection for the sender's own.
        return None;
    }
    if wire < 9
        && matches!(msg, NodeMsg::ToOwner(Request::Read { .. }) | NodeMsg::Forwarded { req: Request::Read { .. }, .. })
    {
        // Read markers are v9's: an older peer's rooms keep none.
        return None;
    }
    if wire >= 7 {
        return Some(encode(msg));
    }
    match msg {
        NodeMsg::ToOwner(Request::Change(_) | Request::Typing { .. })
        | NodeMsg::Knock { .. }
        | NodeMsg::Peers { .. }
        | NodeMsg::Leaving => None,
        NodeMsg::ToOwner(Request::Join { rid, conn, uid, name, echo, rejoin, since: Some(_) }) => {
            let (rid, conn, uid, name, echo, rejoin) = (rid.clone(), *conn, uid.clone(), name.clone(), *echo, *rejoin);
            Some(encode(&NodeMsg::ToOwner(Request::Join { rid, conn, uid, name, echo, rejoin, since: None })))
        }
        NodeMsg::ToOwner(Request::Publish(p)) => {
            // v7 appends `ext [mid] [reply]`: cut it, and fix the length.
            let tail = 1 + p.mid.as_ref().map_or(0, |m| 2 + m.len()) + if p.reply.is_some() { 8 } else { 0 };
            let full = encode(msg);
            let mut b = BytesMut::from(&full[..full.len() - tail]);
            let len = (b.len() - 4) as u32;
            b[..4].copy_from_slice(&len.to_be_bytes());
            Some(b.freeze())
        }
        _ => Some(encode(msg)),
    }
}

/// Encodes a message for a link.
pub fn encode(msg: &NodeMsg) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u32(0); // length, patched below
    match msg {
        NodeMsg::ToOwner(Request::Join { rid, conn, uid, name, echo, rejoin, since }) => {
            b.put_u8(T_JOIN);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            put_str(&mut b, uid);
            put_str(&mut b, name);
            b.put_u8(*echo as u8 | (*rejoin as u8) << 1 | (since.is_some() as u8) << 2);
            if let Some(s) = since {
                b.put_u64(s.epoch);
                b.put_u64(s.seq);
            }
        }
        NodeMsg::ToOwner(Request::Leave { rid, conn, ack }) => {
            b.put_u8(T_LEAVE);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            b.put_u8(*ack as u8);
        }
        NodeMsg::ToOwner(Request::Publish(p)) => {
            b.reserve(p.msg.len() + 64);
            b.put_u8(T_PUBLISH);
            put_str(&mut b, &p.rid);
            put_conn(&mut b, &p.from);
            put_str(&mut b, &p.uid);
            put_str(&mut b, &p.name);
            b.put_u8(match p.mtype {
                MsgType::Text => 0,
                MsgType::Audio => 1,
                MsgType::Pic => 2,
            });
            b.put_u32(p.msg.len() as u32);
            b.put_slice(p.msg.as_bytes());
            match &p.tid {
                None => b.put_u8(0),
                Some(t) => {
                    b.put_u8(1);
                    put_str(&mut b, t);
                }
            }
            b.put_u8(u8::from(p.mid.is_some()) | u8::from(p.reply.is_some()) << 1 | u8::from(p.echo) << 2);
            if let Some(mid) = &p.mid {
                put_str(&mut b, mid);
            }
            if let Some(r) = p.reply {
                b.put_u64(r);
            }
        }
        NodeMsg::ToOwner(Request::Typing { rid, conn, uid, name }) => {
            b.put_u8(T_TYPING);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            put_str(&mut b, uid);
            put_str(&mut b, name);
        }
        NodeMsg::ToOwner(Request::Read { rid, conn, uid, seq }) => {
            b.put_u8(T_READ);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            put_str(&mut b, uid);
            b.put_u64(*seq);
        }
        NodeMsg::ToOwner(Request::Change(c)) => {
            b.put_u8(T_CHANGE);
            put_str(&mut b, &c.rid);
            put_conn(&mut b, &c.from);
            put_str(&mut b, &c.uid);
            b.put_u64(c.seq);
            match &c.change {
                ChangeKind::Edit(msg) => {
                    b.put_u8(0);
                    b.put_u32(msg.len() as u32);
                    b.put_slice(msg.as_bytes());
                }
                ChangeKind::Delete => b.put_u8(1),
                ChangeKind::React { emoji, on } => {
                    b.put_u8(if *on { 2 } else { 3 });
                    put_str(&mut b, emoji);
                }
            }
        }
        NodeMsg::ToOwner(Request::GetOnline { rid, conn, after, limit }) => {
            b.put_u8(T_GETONLINE);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            match after {
                None => b.put_u8(0),
                Some(a) => {
                    b.put_u8(1);
                    put_str(&mut b, a);
                }
            }
            put_opt_u64(&mut b, limit.map(|l| l as u64));
        }
        NodeMsg::ToOwner(Request::GetHistory { rid, conn, since, before, epoch, limit }) => {
            b.put_u8(T_GETHISTORY);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            put_opt_u64(&mut b, *since);
            put_opt_u64(&mut b, *before);
            put_opt_u64(&mut b, *epoch);
            put_opt_u64(&mut b, limit.map(|l| l as u64));
        }
        NodeMsg::ToMembers(Delivery::Joined { rid, conn, ack }) => {
            b.put_u8(T_JOINED);
            put_str(&mut b, rid);
            put_conn(&mut b, conn);
            put_blob(&mut b, ack);
        }
        NodeMsg::ToMembers(Delivery::Deliver { rid, frame, audience, .. }) => {
            b.reserve(frame.len() + 32);
            b.put_u8(T_DELIVER);
            put_str(&mut b, rid);
            match audience {
                Audience::AllExcept(ex) => {
                    b.put_u8(0);
                    match ex {
                        None => b.put_u8(0),
                        Some(c) => {
                            b.put_u8(1);
                            put_conn(&mut b, c);
                        }
                    }
                }
                Audience::Only(list) => {
                    b.put_u8(1);
                    b.put_u32(list.len() as u32);
                    for c in list {
                        put_conn(&mut b, c);
                    }
                }
            }
            put_blob(&mut b, frame);
        }
        NodeMsg::ToMembers(Delivery::Direct { conn, frame }) => {
            b.put_u8(T_DIRECT);
            put_conn(&mut b, conn);
            put_blob(&mut b, frame);
        }
        NodeMsg::Disconnect { uid, code } => {
            b.put_u8(T_DISCONNECT);
            put_str(&mut b, uid);
            b.put_u16(*code);
        }
        NodeMsg::Leaving => b.put_u8(T_LEAVING),
        NodeMsg::Forwarded { origin, hops, req } => {
            b.put_u8(T_FORWARD);
            put_str(&mut b, origin);
            b.put_u8(*hops);
            // The request as its own frame would be, without the length.
            let inner = encode(&NodeMsg::ToOwner(req.clone()));
            b.extend_from_slice(&inner[4..]);
        }
        NodeMsg::Peers { addrs } => {
            b.put_u8(T_PEERS);
            b.put_u16(addrs.len().min(256) as u16);
            for a in addrs.iter().take(256) {
                put_str(&mut b, a);
            }
        }
        NodeMsg::Knock { uid, frame } => {
            b.put_u8(T_KNOCK);
            put_str(&mut b, uid);
            put_blob(&mut b, frame);
        }
        NodeMsg::ApiAsk { ticket, request, .. } => {
            b.put_u8(T_API_ASK);
            b.put_u64(*ticket);
            put_str(&mut b, request);
        }
        NodeMsg::ApiAnswer { ticket, status, body } => {
            b.put_u8(T_API_ANSWER);
            b.put_u64(*ticket);
            b.put_u16(*status);
            put_blob(&mut b, body);
        }
    }
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// Decodes one frame from the front of `buf`, consuming it. Ok(None) while
/// the frame is incomplete (nothing consumed). `node` is the link's peer.
pub fn decode(buf: &mut BytesMut, node: u16) -> Result<Option<Frame>, CodecError> {
    decode_for(buf, node, crate::cluster::VERSION)
}

/// [`decode`] for a link at relay version `wire`: from a v6 peer a PUBLISH
/// has no ext byte, and the types v6 does not have are errors.
pub fn decode_for(buf: &mut BytesMut, node: u16, wire: u8) -> Result<Option<Frame>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(CodecError::Length(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(len).freeze();
    let t = body.get_u8();
    if wire < 7 && matches!(t, T_CHANGE | T_TYPING | T_KNOCK | T_PEERS | T_LEAVING)
        || wire < 8 && t == T_FORWARD
        || wire < 9 && t == T_READ
    {
        return Err(CodecError::Invalid("frame type"));
    }
    let peer = |c: ConnRef| ConnRef { node, ..c };
    let f = match t {
        T_HEARTBEAT => Frame::Heartbeat,
        T_ACTIVATE => Frame::Activate,
        T_JOIN => {
            let rid = get_id(&mut body)?;
            let conn = peer(get_conn(&mut body)?);
            let uid = get_id(&mut body)?;
            let name = Name::parse(&get_str(&mut body)?).ok_or(CodecError::Invalid("name"))?;
            let flags = get_u8(&mut body)?;
            let since = match flags & 4 {
                0 => None,
                _ => Some(Since { epoch: get_u64(&mut body)?, seq: get_u64(&mut body)? }),
            };
            Frame::Msg(NodeMsg::ToOwner(Request::Join {
                rid,
                conn,
                uid,
                name,
                echo: flags & 1 != 0,
                rejoin: flags & 2 != 0,
                since,
            }))
        }
        T_LEAVE => {
            let rid = get_id(&mut body)?;
            let conn = peer(get_conn(&mut body)?);
            let ack = get_u8(&mut body)? != 0;
            Frame::Msg(NodeMsg::ToOwner(Request::Leave { rid, conn, ack }))
        }
        T_PUBLISH => {
            let rid = get_id(&mut body)?;
            let from = peer(get_conn(&mut body)?);
            let uid = get_id(&mut body)?;
            let name = Name::parse(&get_str(&mut body)?).ok_or(CodecError::Invalid("name"))?;
            let mtype = match get_u8(&mut body)? {
                0 => MsgType::Text,
                1 => MsgType::Audio,
                2 => MsgType::Pic,
                _ => return Err(CodecError::Invalid("message type")),
            };
            let msg = get_blob(&mut body)?;
            let msg = String::from_utf8(msg.to_vec()).map_err(|_| CodecError::Invalid("utf-8"))?;
            let tid = match get_u8(&mut body)? {
                0 => None,
                1 => Some(get_id(&mut body)?),
                _ => return Err(CodecError::Invalid("option")),
            };
            let ext = if wire >= 7 { get_u8(&mut body)? } else { 0 };
            let mid = if ext & 1 != 0 { Some(get_id(&mut body)?) } else { None };
            let reply = if ext & 2 != 0 { Some(get_u64(&mut body)?) } else { None };
            Frame::Msg(NodeMsg::ToOwner(Request::Publish(Box::new(Publish {
                rid,
                from,
                uid,
                name,
                mtype,
                msg,
                tid,
                mid,
                reply,
                echo: ext & 4 != 0,
            }))))
        }
        T_TYPING => {
            let rid = get_id(&mut body)?;
            let conn = peer(get_conn(&mut body)?);
            let uid = get_id(&mut body)?;
            let name = Name::parse(&get_str(&mut body)?).ok_or(CodecError::Invalid("name"))?;
            Frame::Msg(NodeMsg::ToOwner(Request::Typing { rid, conn, uid, name }))
        }
        T_READ => {
            let rid = get_id(&mut body)?;
            let conn = peer(get_conn(&mut body)?);
            let uid = get_id(&mut body)?;
            let seq = get_u64(&mut body)?;
            Frame::Msg(NodeMsg::ToOwner(Request::Read { rid, conn, uid, seq }))
        }
        T_CHANGE => {
            let rid = get_id(&mut body)?;
            let from = peer(get_conn(&mut body)?);
            let uid = get_id(&mut body)?;
            let seq = get_u64(&mut body)?;
            let change = match get_u8(&mut body)? {
                0 => {
                    let msg = get_blob(&mut body)?;
                    ChangeKind::Edit(String::from_utf8(msg.to_vec()).map_err(|_| CodecError::Invalid("utf-8"))?)
                }
                1 => ChangeKind::Delete,
                k @ (2 | 3) => {
                    let emoji = get_str(&mut body)?;
                    if !crate::protocol::valid_emoji(&emoji) {
                        return Err(CodecError::Invalid("emoji"));
                    }
                    ChangeKind::React { emoji, on: k == 2 }
                }
                _ => return Err(CodecError::Invalid("change")),
            };
            Frame::Msg(NodeMsg::ToOwner(Request::Change(Box::new(Change { rid, from, uid, seq, change }))))
        }
        T_GETONLINE => {
            let rid = get_id(&mut body)?;
            let conn = peer(get_conn(&mut body)?);
            let after = match get_u8(&mut body)? {
                0 => None,
                1 => Some(get_id(&mut body)?),
                _ => return Err(CodecError::Invalid("option")),
            };
            let limit = get_opt_u64(&mut body)?.map(|l| l.min(usize::MAX as u64) as usize);
            Frame::Msg(NodeMsg::ToOwner(Request::GetOnline { rid, conn, after, limit }))
        }
        T_GETHISTORY => {
            let rid = get_id(&mut body)?;
            let conn = peer(get_conn(&mut body)?);
            let since = get_opt_u64(&mut body)?;
            let before = get_opt_u64(&mut body)?;
            let epoch = get_opt_u64(&mut body)?;
            let limit = get_opt_u64(&mut body)?.map(|l| l.min(usize::MAX as u64) as usize);
            Frame::Msg(NodeMsg::ToOwner(Request::GetHistory { rid, conn, since, before, epoch, limit }))
        }
        T_JOINED => {
            let rid = get_id(&mut body)?;
            let conn = get_conn(&mut body)?;
            let ack = get_blob(&mut body)?;
            Frame::Msg(NodeMsg::ToMembers(Delivery::Joined { rid, conn, ack }))
        }
        T_DELIVER => {
            let rid = get_id(&mut body)?;
            let audience = match get_u8(&mut body)? {
                0 => Audience::AllExcept(match get_u8(&mut body)? {
                    0 => None,
                    1 => Some(get_conn(&mut body)?),
                    _ => return Err(CodecError::Invalid("option")),
                }),
                1 => {
                    let n = get_u32(&mut body)? as usize;
                    if n > body.remaining() / 10 {
                        return Err(CodecError::Truncated);
                    }
                    let mut list = Vec::with_capacity(n);
                    for _ in 0..n {
                        list.push(get_conn(&mut body)?);
                    }
                    Audience::Only(list)
                }
                _ => return Err(CodecError::Invalid("audience")),
            };
            let frame = get_blob(&mut body)?;
            Frame::Msg(NodeMsg::ToMembers(Delivery::Deliver { rid, frame, audience, t0: std::time::Instant::now() }))
        }
        T_DIRECT => {
            let conn = get_conn(&mut body)?;
            let frame = get_blob(&mut body)?;
            Frame::Msg(NodeMsg::ToMembers(Delivery::Direct { conn, frame }))
        }
        T_DISCONNECT => {
            let uid = get_id(&mut body)?;
            if body.remaining() < 2 {
                return Err(CodecError::Invalid("close code"));
            }
            let code = body.get_u16();
            Frame::Msg(NodeMsg::Disconnect { uid, code })
        }
        T_LEAVING => Frame::Msg(NodeMsg::Leaving),
        T_FORWARD => {
            let origin: std::sync::Arc<str> = get_str(&mut body)?.into();
            let hops = get_u8(&mut body)?;
            if !(T_JOIN..=T_READ).contains(body.first().ok_or(CodecError::Truncated)?) {
                return Err(CodecError::Invalid("forwarded frame type"));
            }
            // The inner request, decoded as a frame of its own; its node
            // is the receiver's to set, from `origin`.
            let rest = std::mem::take(&mut body);
            let mut inner = BytesMut::with_capacity(4 + rest.len());
            inner.put_u32(rest.len() as u32);
            inner.extend_from_slice(&rest);
            match decode_for(&mut inner, 0, wire)? {
                Some(Frame::Msg(NodeMsg::ToOwner(req))) if inner.is_empty() => {
                    Frame::Msg(NodeMsg::Forwarded { origin, hops, req })
                }
                _ => return Err(CodecError::Invalid("forwarded request")),
            }
        }
        T_PEERS => {
            need(&body, 2)?;
            let n = body.get_u16() as usize;
            if n > 256 {
                return Err(CodecError::Invalid("peer count"));
            }
            let mut addrs = Vec::with_capacity(n);
            for _ in 0..n {
                addrs.push(get_str(&mut body)?);
            }
            Frame::Msg(NodeMsg::Peers { addrs })
        }
        T_KNOCK => {
            let uid = get_id(&mut body)?;
            let frame = get_blob(&mut body)?;
            Frame::Msg(NodeMsg::Knock { uid, frame })
        }
        T_API_ASK => {
            need(&body, 8)?;
            let ticket = body.get_u64();
            let request = get_str(&mut body)?;
            Frame::Msg(NodeMsg::ApiAsk { ticket, from: node, request })
        }
        T_API_ANSWER => {
            need(&body, 10)?;
            let (ticket, status) = (body.get_u64(), body.get_u16());
            let body_ = get_blob(&mut body)?;
            Frame::Msg(NodeMsg::ApiAnswer { ticket, status, body: body_ })
        }
        _ => return Err(CodecError::Invalid("frame type")),
    };
    if body.has_remaining() {
        return Err(CodecError::Invalid("trailing bytes"));
    }
    Ok(Some(f))
}

/// A string of at most 64 KiB (ids, names, an admin request's head: each
/// capped far below that where it is read).
fn put_str(b: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= u16::MAX as usize, "a relay string over 64 KiB");
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn put_blob(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

fn put_conn(b: &mut BytesMut, c: &ConnRef) {
    b.put_u16(c.shard);
    b.put_u32(c.key);
    b.put_u32(c.generation);
}

fn put_opt_u64(b: &mut BytesMut, v: Option<u64>) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            b.put_u64(v);
        }
    }
}

fn need(b: &Bytes, n: usize) -> Result<(), CodecError> {
    if b.remaining() < n { Err(CodecError::Truncated) } else { Ok(()) }
}

fn get_u8(b: &mut Bytes) -> Result<u8, CodecError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_u32(b: &mut Bytes) -> Result<u32, CodecError> {
    need(b, 4)?;
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes) -> Result<u64, CodecError> {
    need(b, 8)?;
    Ok(b.get_u64())
}

fn get_str(b: &mut Bytes) -> Result<String, CodecError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    need(b, n)?;
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| CodecError::Invalid("utf-8"))
}

fn get_id(b: &mut Bytes) -> Result<Id, CodecError> {
    Id::parse_str(&get_str(b)?).ok_or(CodecError::Invalid("identifier"))
}

fn get_blob(b: &mut Bytes) -> Result<Bytes, CodecError> {
    let n = get_u32(b)? as usize;
    need(b, n)?;
    Ok(b.split_to(n))
}

fn get_conn(b: &mut Bytes) -> Result<ConnRef, CodecError> {
    need(b, 10)?;
    Ok(ConnRef { node: 0, shard: b.get_u16(), key: b.get_u32(), generation: b.get_u32() })
}

fn get_opt_u64(b: &mut Bytes) -> Result<Option<u64>, CodecError> {
    match get_u8(b)? {
        0 => Ok(None),
        1 => {
            need(b, 8)?;
            Ok(Some(b.get_u64()))
        }
        _ => Err(CodecError::Invalid("option")),
    }
}

#[cfg(test)]
mod tests;
