//! Frames into messages: the reading half of the layout in [`super`],
//! refusing anything no sender writes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::*;
use crate::ids::{Id, Name};
use crate::msg::{Audience, Change, ConnRef, Delivery, NodeMsg, Publish, Request};
use crate::protocol::{ChangeKind, MsgType, Since};

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
            let name = get_name(&mut body)?;
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
            let name = get_name(&mut body)?;
            let mtype = match get_u8(&mut body)? {
                0 => MsgType::Text,
                1 => MsgType::Audio,
                2 => MsgType::Pic,
                _ => return Err(CodecError::Invalid("message type")),
            };
            let msg = get_text(&mut body)?;
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
            let name = get_name(&mut body)?;
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
                0 => ChangeKind::Edit(get_text(&mut body)?),
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

fn get_name(b: &mut Bytes) -> Result<Name, CodecError> {
    Name::parse(&get_str(b)?).ok_or(CodecError::Invalid("name"))
}

fn get_blob(b: &mut Bytes) -> Result<Bytes, CodecError> {
    let n = get_u32(b)? as usize;
    need(b, n)?;
    Ok(b.split_to(n))
}

/// A message body (`text`: a u32 length, UTF-8).
fn get_text(b: &mut Bytes) -> Result<String, CodecError> {
    String::from_utf8(get_blob(b)?.to_vec()).map_err(|_| CodecError::Invalid("utf-8"))
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
