//! Messages into frames: the writing half of the layout in [`super`].

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::msg::{Audience, ConnRef, Delivery, NodeMsg, Request};
use crate::protocol::{ChangeKind, MsgType};

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

/// A string of at most 64 KiB (ids, names, an admin request's head: each
/// capped far below that where it is read).
pub(super) fn put_str(b: &mut BytesMut, s: &str) {
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
