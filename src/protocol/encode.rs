//! What the server sends: every reply and broadcast frame, encoded once as
//! a WebSocket text frame (see `crate::ws::FrameBuf`), and [`room_point`],
//! which reads a sequenced frame's place back from its tail. No I/O.

use bytes::{BufMut, Bytes, BytesMut};

use super::{ChangeKind, MsgType, Since};
use crate::json::{self, Obj};
use crate::ws::FrameBuf;

/// `{"cmd":"login","uid","name","rid"}`, also used for `newUser` and `userLeave`.
pub fn encode_presence(cmd: &str, uid: &str, name: &str, rid: &str) -> Bytes {
    let mut f = FrameBuf::with_capacity(48 + uid.len() + name.len() + rid.len());
    Obj::new(f.body(), cmd).str("uid", uid).str("name", name).str("rid", rid).end();
    f.finish()
}

/// A login's ack: `{"cmd":"login","uid","name","rid"}`, with the user's
/// read state (`read`: the marker, `unread`: the room's seqs after it)
/// when the owner knows the room, `"recovered"` when the login asked to
/// resume (`since`), followed by the missed messages (`replay`, stored
/// JSON), each its own frame.
pub fn encode_login_ack<'a>(
    uid: &str,
    name: &str,
    rid: &str,
    read: Option<(u64, u64)>,
    recovered: Option<bool>,
    replay: impl Iterator<Item = &'a [u8]>,
) -> Bytes {
    let mut f = FrameBuf::with_capacity(96 + uid.len() + name.len() + rid.len());
    let mut o = Obj::new(f.body(), "login").str("uid", uid).str("name", name).str("rid", rid);
    if let Some((read, unread)) = read {
        o = o.num("read", read).num("unread", unread);
    }
    if let Some(r) = recovered {
        o = o.raw("recovered", |b| b.put_slice(if r { b"true" } else { b"false" }));
    }
    o.end();
    let ack = f.finish();
    let mut replay = replay.peekable();
    if replay.peek().is_none() {
        return ack;
    }
    let mut all = BytesMut::from(&ack[..]);
    for json in replay {
        all.extend_from_slice(&crate::ws::text_frame(json));
    }
    all.freeze()
}

/// A user's read marker moved: `{"cmd":"read","rid","seq"}`, for the
/// user's other connections in the room.
pub fn encode_read(rid: &str, seq: u64) -> Bytes {
    let mut f = FrameBuf::with_capacity(40 + rid.len());
    Obj::new(f.body(), "read").str("rid", rid).num("seq", seq).end();
    f.finish()
}

/// A repeated message's answer: its `message` frame as first sequenced
/// (`seq`, `epoch`, `ts` of the original) with `"dup": true`.
pub fn encode_dup(m: &MessageOut<'_>) -> Bytes {
    let (frame, off) = encode_message(m);
    // The body ends with `}`: put the flag in front of it.
    let mut f = FrameBuf::with_capacity(frame.len() - off + 12);
    f.body().put_slice(&frame[off..frame.len() - 1]);
    f.body().put_slice(b",\"dup\":true}");
    f.finish()
}

/// `{"cmd":"getRooms","rooms":[{"rid","count"}…],"next"?}`: one page of
/// the room directory; `next` is the cursor (`after`) of the next page.
pub fn encode_rooms<'a>(rooms: impl Iterator<Item = (&'a str, usize)>, next: Option<&str>) -> Bytes {
    let mut f = FrameBuf::with_capacity(256);
    let mut o = Obj::new(f.body(), "getRooms").raw("rooms", |b| {
        b.put_u8(b'[');
        for (i, (rid, count)) in rooms.enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            b.put_slice(b"{\"rid\":");
            json::write_str(b, rid);
            b.put_slice(b",\"count\":");
            json::write_u64(b, count as u64);
            b.put_u8(b'}');
        }
        b.put_u8(b']');
    });
    if let Some(n) = next {
        o = o.str("next", n);
    }
    o.end();
    f.finish()
}

/// `{"cmd":"logout","rid"}`.
pub fn encode_logout(rid: &str) -> Bytes {
    let mut f = FrameBuf::with_capacity(32 + rid.len());
    Obj::new(f.body(), "logout").str("rid", rid).end();
    f.finish()
}

/// The fields of one chat message as sent to clients.
#[derive(Debug, Clone, Copy)]
pub struct MessageOut<'a> {
    /// Sender.
    pub uid: &'a str,
    /// Sender's name.
    pub name: &'a str,
    /// Kind.
    pub mtype: MsgType,
    /// Room.
    pub rid: &'a str,
    /// Body.
    pub msg: &'a str,
    /// Private recipient.
    pub tid: Option<&'a str>,
    /// The client's id for the message.
    pub mid: Option<&'a str>,
    /// The seq of the message it answers.
    pub reply: Option<u64>,
    /// Room sequence number.
    pub seq: u64,
    /// Room epoch.
    pub epoch: u64,
    /// Server time, Unix milliseconds.
    pub ts: u64,
}

/// A `message` frame. Returns the frame and the offset at which its JSON
/// body starts, so history can keep the JSON without copying it.
pub fn encode_message(m: &MessageOut<'_>) -> (Bytes, usize) {
    let mut f = FrameBuf::with_capacity(128 + m.msg.len() + m.name.len());
    let mut o = Obj::new(f.body(), "message")
        .str("uid", m.uid)
        .str("name", m.name)
        .str("type", m.mtype.as_str())
        .str("rid", m.rid)
        .str("msg", m.msg);
    if let Some(t) = m.tid {
        o = o.str("tid", t);
    }
    if let Some(mid) = m.mid {
        o = o.str("mid", mid);
    }
    if let Some(r) = m.reply {
        o = o.num("reply", r);
    }
    o.num("seq", m.seq).num("epoch", m.epoch).num("ts", m.ts).end();
    f.finish_with_body_offset()
}

/// `{"cmd":"getOnline","rid","users":[{uid,name}…],"count","next"?}`: one
/// page of a room's roster; `count` is the whole room, `next` the cursor
/// (`after`) of the next page when there is one.
pub fn encode_online<'a>(
    rid: &str,
    users: impl Iterator<Item = (&'a str, &'a str)>,
    count: usize,
    next: Option<&str>,
) -> Bytes {
    let mut f = FrameBuf::with_capacity(256);
    let o = Obj::new(f.body(), "getOnline")
        .str("rid", rid)
        .raw("users", |b| write_users(b, users))
        .num("count", count as u64);
    match next {
        Some(n) => o.str("next", n).end(),
        None => o.end(),
    }
    f.finish()
}

/// `{"cmd":"presence","rid","joined":[{uid,name}…],"left":[…],"joinedTotal","leftTotal","count"}`:
/// a big room's presence changes since the last such frame (the lists hold
/// at most [`PRESENCE_LIST_MAX`] each; the totals count them all).
pub fn encode_presence_batch<'a>(
    rid: &str,
    joined: impl Iterator<Item = (&'a str, &'a str)>,
    left: impl Iterator<Item = (&'a str, &'a str)>,
    totals: (usize, usize),
    count: usize,
) -> Bytes {
    let mut f = FrameBuf::with_capacity(256);
    Obj::new(f.body(), "presence")
        .str("rid", rid)
        .raw("joined", |b| write_users(b, joined))
        .raw("left", |b| write_users(b, left))
        .num("joinedTotal", totals.0 as u64)
        .num("leftTotal", totals.1 as u64)
        .num("count", count as u64)
        .end();
    f.finish()
}

/// Members listed per kind in one presence frame.
pub const PRESENCE_LIST_MAX: usize = 100;

fn write_users<'a>(b: &mut impl BufMut, users: impl Iterator<Item = (&'a str, &'a str)>) {
    b.put_u8(b'[');
    for (i, (uid, name)) in users.enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(b"{\"uid\":");
        json::write_str(b, uid);
        b.put_slice(b",\"name\":");
        json::write_str(b, name);
        b.put_u8(b'}');
    }
    b.put_u8(b']');
}

/// `{"cmd":"refresh","exp"}`: the session now lasts until `exp` (Unix seconds).
pub fn encode_refreshed(exp: u64) -> Bytes {
    let mut f = FrameBuf::with_capacity(48);
    Obj::new(f.body(), "refresh").num("exp", exp).end();
    f.finish()
}

/// `{"cmd":"getHistory","rid","epoch","msgs":[…]}` from stored message JSON.
pub fn encode_history<'a>(rid: &str, epoch: u64, msgs: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut f = FrameBuf::with_capacity(1024);
    Obj::new(f.body(), "getHistory")
        .str("rid", rid)
        .num("epoch", epoch)
        .raw("msgs", |b| {
            b.put_u8(b'[');
            for (i, m) in msgs.enumerate() {
                if i > 0 {
                    b.put_u8(b',');
                }
                b.put_slice(m);
            }
            b.put_u8(b']');
        })
        .end();
    f.finish()
}

/// A room event changing message `seq` (`edit`, `delete`, `react`), as
/// members get it: `{"cmd","rid","seq","uid","ts","epoch","at",…}` where
/// `at` is the event's own place in the room's sequence.
#[allow(clippy::too_many_arguments)]
pub fn encode_change(
    rid: &str,
    seq: u64,
    uid: &str,
    change: &ChangeKind,
    ts: u64,
    epoch: u64,
    at: u64,
) -> (Bytes, usize) {
    let mut f = FrameBuf::with_capacity(128);
    let mut o = Obj::new(f.body(), change.cmd()).str("rid", rid).num("seq", seq).str("uid", uid);
    match change {
        ChangeKind::Edit(msg) => o = o.str("msg", msg),
        ChangeKind::Delete => {}
        ChangeKind::React { emoji, on } => {
            o = o.str("emoji", emoji).raw("on", |b| b.put_slice(if *on { b"true" } else { b"false" }));
        }
    }
    o.num("ts", ts).num("epoch", epoch).num("at", at).end();
    f.finish_with_body_offset()
}

/// The place in its room's sequence of a sequenced frame (a `message`, or
/// a change event), read from the frame's end, where both encoders put
/// it: `…"seq":S,"epoch":E,"ts":T}` or `…"ts":T,"epoch":E,"at":A}`. None
/// for any other frame. Reads only the tail (no JSON parse): a shard calls
/// it once per broadcast to know where its members are (see
/// `shard/cluster.rs`, re-joins after a room moves).
pub fn room_point(frame: &[u8]) -> Option<Since> {
    let mut rest = frame.strip_suffix(b"}")?;
    let mut fields = [(&b""[..], 0u64); 3];
    for f in fields.iter_mut().rev() {
        let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 {
            return None;
        }
        let (head, num) = rest.split_at(rest.len() - digits);
        let value = std::str::from_utf8(num).ok()?.parse().ok()?;
        let head = head.strip_suffix(b"\":")?;
        let open = head.iter().rposition(|b| *b == b'"')?;
        *f = (&head[open + 1..], value);
        rest = head[..open].strip_suffix(b",")?;
    }
    match fields {
        [(b"seq", seq), (b"epoch", epoch), (b"ts", _)] => Some(Since { epoch, seq }),
        [(b"ts", _), (b"epoch", epoch), (b"at", seq)] => Some(Since { epoch, seq }),
        _ => None,
    }
}
