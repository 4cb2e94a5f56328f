//! The CChat client protocol: commands in, replies out. No I/O here.
//!
//! [`parse`] turns one text frame into a [`Command`] or a [`ProtoError`] whose
//! code is exactly the one the protocol assigns (101 not a command, 102 unknown
//! command, 50 bad field). The `encode_*` functions (in `encode.rs`, what the
//! server sends) write each reply straight into a WebSocket frame
//! ([`crate::ws::FrameBuf`]): a reply is encoded once and its bytes are
//! shared by every recipient.

use std::borrow::Cow;

use bytes::Bytes;
use simd_json::BorrowedValue as Value;
use simd_json::ErrorType;
use simd_json::prelude::*;
use thiserror::Error;

use crate::ids::{Id, Name};
use crate::json::Obj;
use crate::ws::FrameBuf;

mod encode;
pub use encode::*;

/// Error code: the frame is not a JSON object with a string `cmd` (or is binary).
pub const ERR_NOT_COMMAND: u16 = 101;
/// Error code: `cmd` names no command.
pub const ERR_UNKNOWN_CMD: u16 = 102;
/// Error code: a field is invalid or missing, or the command is not allowed now.
pub const ERR_INVALID: u16 = 50;
/// Login token missing, malformed, badly signed or expired, or the room not allowed by it.
pub const ERR_AUTH: u16 = 103;

/// A command refused with an error reply; the connection stays open.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("error {code}: {msg}")]
pub struct ProtoError {
    /// `errCode` of the reply.
    pub code: u16,
    /// `errMsg` of the reply.
    pub msg: Cow<'static, str>,
    /// The `ref` of the message refused, when it had one (extension): the
    /// client learns which of its messages was not taken.
    pub reference: Option<u64>,
}

impl ProtoError {
    /// An error with a fixed message.
    pub const fn new(code: u16, msg: &'static str) -> Self {
        ProtoError { code, msg: Cow::Borrowed(msg), reference: None }
    }

    /// Error 50 with a message naming the field.
    pub fn invalid(msg: impl Into<Cow<'static, str>>) -> Self {
        ProtoError { code: ERR_INVALID, msg: msg.into(), reference: None }
    }

    /// The same error with another code.
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    /// The same error about the message `reference` named.
    pub fn about(mut self, reference: Option<u64>) -> Self {
        self.reference = reference;
        self
    }

    /// The error reply frame.
    pub fn encode(&self) -> Bytes {
        let mut f = FrameBuf::with_capacity(64 + self.msg.len());
        let o = Obj::new(f.body(), "error").num("errCode", self.code as u64).str("errMsg", &self.msg);
        match self.reference {
            Some(r) => o.num("ref", r).end(),
            None => o.end(),
        }
        f.finish()
    }
}

/// Kind of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Plain text.
    Text,
    /// A URL of an audio clip.
    Audio,
    /// A URL of a picture.
    Pic,
}

impl MsgType {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Text => "text",
            MsgType::Audio => "audio",
            MsgType::Pic => "pic",
        }
    }
}

/// A client command, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Join a room (and, the first time, establish the session's identity).
    Login {
        /// Display name; required on a connection's first login.
        name: Option<Name>,
        /// Room to join.
        rid: Id,
        /// Chosen user id; the server assigns one when absent.
        uid: Option<Id>,
        /// Receive own room messages and copies of own private messages.
        echo: bool,
        /// Signed login (JWT), required when the server verifies tokens.
        token: Option<String>,
        /// Resume: the last message this client saw, `{"epoch", "seq"}`;
        /// the ack says whether the messages after it follow.
        since: Option<Since>,
    },
    /// A newer token for the session's user, before the current one expires.
    Refresh {
        /// The token.
        token: String,
    },
    /// Post to a room, or privately to `tid` within it.
    Message {
        /// Kind of message.
        mtype: MsgType,
        /// Body.
        msg: String,
        /// Room.
        rid: Id,
        /// Private recipient.
        tid: Option<Id>,
        /// The client's number for this message (extension `ref`), repeated
        /// in an error that refuses it.
        reference: Option<u64>,
        /// The client's id for this message (extension `mid`): a repeat
        /// within the room's de-duplication window is not posted again.
        mid: Option<Id>,
        /// The seq of the room message this one answers (extension `reply`).
        reply: Option<u64>,
    },
    /// Change a room message: edit or delete your own, react to any.
    Change {
        /// Room.
        rid: Id,
        /// The message changed.
        seq: u64,
        /// What changes.
        change: ChangeKind,
    },
    /// Leave one room, or all.
    Logout {
        /// Room to leave; all rooms when absent.
        rid: Option<Id>,
    },
    /// List a room's members, a page at a time.
    GetOnline {
        /// Room.
        rid: Id,
        /// Start after this member (the previous page's `next`).
        after: Option<Id>,
        /// At most this many (capped at [`MAX_PAGE`]).
        limit: Option<usize>,
    },
    /// The user is typing in a room (not stored; the others are told).
    Typing {
        /// Room.
        rid: Id,
    },
    /// The user has read the room up to `seq` (its read marker).
    Read {
        /// Room.
        rid: Id,
        /// The newest seq read (0: none yet).
        seq: u64,
    },
    /// List the rooms with members (DMs never), a page at a time.
    GetRooms {
        /// Start after this room (the previous page's `next`).
        after: Option<Id>,
        /// At most this many (capped at [`MAX_PAGE`]).
        limit: Option<usize>,
    },
    /// Fetch a room's stored messages.
    GetHistory {
        /// Room.
        rid: Id,
        /// Only messages with `seq` greater than this.
        since: Option<u64>,
        /// Only messages with `seq` less than this (the newest `limit` of them).
        before: Option<u64>,
        /// The epoch `before` names (`"before": {"epoch", "seq"}`); None: the
        /// room's current one. Paging back crosses into older epochs.
        epoch: Option<u64>,
        /// At most this many.
        limit: Option<usize>,
    },
}

impl Command {
    /// The client's `ref` of a message, for the errors that refuse it.
    pub fn reference(&self) -> Option<u64> {
        match self {
            Command::Message { reference, .. } => *reference,
            _ => None,
        }
    }
}

/// Most members a `getOnline` page lists, and most messages a
/// `getHistory` reply carries, whatever `limit` asks for.
pub const MAX_PAGE: usize = 1000;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Longest `msg`, in bytes.
    pub max_message_bytes: usize,
}

/// Parses one text frame. `data` is parsed in place (simd-json rewrites it).
pub fn parse(data: &mut [u8], buffers: &mut simd_json::Buffers, limits: ParseLimits) -> Result<Command, ProtoError> {
    let mut bad_number_at = None;
    let r = parse_command(data, buffers, limits, &mut bad_number_at);
    match bad_number_at {
        // Valid JSON, but a number no field of ours can hold (1e500).
        Some(at) if well_formed_number_at(data, at) => Err(ProtoError::new(ERR_INVALID, "a number is out of range")),
        _ => r,
    }
}

/// [`parse`], except that where simd-json gave up on a number it only notes
/// where, so that the caller can look at the bytes (the value borrows them).
fn parse_command(
    data: &mut [u8],
    buffers: &mut simd_json::Buffers,
    limits: ParseLimits,
    bad_number_at: &mut Option<usize>,
) -> Result<Command, ProtoError> {
    let v = simd_json::borrowed::to_value_with_buffers(data, buffers).map_err(|e| {
        if matches!(e.error(), ErrorType::InvalidNumber | ErrorType::InvalidExponent) {
            *bad_number_at = Some(e.index());
        }
        ProtoError::new(ERR_NOT_COMMAND, "frame is not valid JSON")
    })?;
    if !v.is_object() {
        return Err(ProtoError::new(ERR_NOT_COMMAND, "frame is not a JSON object"));
    }
    let cmd =
        v.get("cmd").and_then(|c| c.as_str()).ok_or(ProtoError::new(ERR_NOT_COMMAND, "missing string field cmd"))?;
    match cmd {
        "login" => Ok(Command::Login {
            name: match v.get("name") {
                None => None,
                Some(n) => Some(n.as_str().and_then(Name::parse).ok_or(ProtoError::new(
                    ERR_INVALID,
                    "name must be 1-64 bytes of text without control characters",
                ))?),
            },
            rid: id_field(&v, "rid")?,
            uid: opt_id_field(&v, "uid")?,
            echo: match v.get("echo") {
                None => false,
                Some(e) => e.as_bool().ok_or(ProtoError::new(ERR_INVALID, "echo must be a boolean"))?,
            },
            token: match v.get("token") {
                None => None,
                Some(t) => Some(t.as_str().ok_or(ProtoError::new(ERR_AUTH, "token must be a string"))?.to_owned()),
            },
            since: since_field(&v)?,
        }),
        "message" => {
            // Read first, so that every error about this message names it.
            let reference = opt_u64(&v, "ref")?;
            let about = |e: ProtoError| e.about(reference);
            let mtype = match v.get("type").and_then(|t| t.as_str()) {
                Some("text") => MsgType::Text,
                Some("audio") => MsgType::Audio,
                Some("pic") => MsgType::Pic,
                _ => {
                    return Err(about(ProtoError::new(ERR_INVALID, "type must be text, audio or pic")));
                }
            };
            let msg = v
                .get("msg")
                .and_then(|m| m.as_str())
                .ok_or_else(|| about(ProtoError::new(ERR_INVALID, "msg must be a string")))?;
            if msg.len() > limits.max_message_bytes {
                return Err(about(ProtoError::invalid(format!(
                    "msg is longer than {} bytes",
                    limits.max_message_bytes
                ))));
            }
            Ok(Command::Message {
                mtype,
                msg: msg.to_owned(),
                rid: id_field(&v, "rid").map_err(about)?,
                tid: opt_id_field(&v, "tid").map_err(about)?,
                reference,
                mid: opt_id_field(&v, "mid").map_err(about)?,
                reply: opt_u64(&v, "reply").map_err(about)?,
            })
        }
        "edit" => {
            let msg = v.get("msg").and_then(|m| m.as_str()).ok_or(ProtoError::invalid("msg must be a string"))?;
            if msg.len() > limits.max_message_bytes {
                return Err(ProtoError::invalid(format!("msg is longer than {} bytes", limits.max_message_bytes)));
            }
            Ok(Command::Change {
                rid: id_field(&v, "rid")?,
                seq: seq_field(&v)?,
                change: ChangeKind::Edit(msg.to_owned()),
            })
        }
        "delete" => Ok(Command::Change { rid: id_field(&v, "rid")?, seq: seq_field(&v)?, change: ChangeKind::Delete }),
        "react" => {
            let emoji = v.get("emoji").and_then(|e| e.as_str()).filter(|e| valid_emoji(e));
            let emoji =
                emoji.ok_or(ProtoError::invalid("emoji must be 1-32 bytes of text without control characters"))?;
            let on = match v.get("on") {
                None => true,
                Some(o) => o.as_bool().ok_or(ProtoError::invalid("on must be a boolean"))?,
            };
            Ok(Command::Change {
                rid: id_field(&v, "rid")?,
                seq: seq_field(&v)?,
                change: ChangeKind::React { emoji: emoji.to_owned(), on },
            })
        }
        "logout" => Ok(Command::Logout { rid: opt_id_field(&v, "rid")? }),
        "refresh" => Ok(Command::Refresh {
            token: v
                .get("token")
                .and_then(|t| t.as_str())
                .ok_or(ProtoError::new(ERR_AUTH, "refresh needs a string token"))?
                .to_owned(),
        }),
        "getOnline" => Ok(Command::GetOnline {
            rid: id_field(&v, "rid")?,
            after: opt_id_field(&v, "after")?,
            limit: opt_u64(&v, "limit")?.map(|l| l.min(MAX_PAGE as u64) as usize),
        }),
        "typing" => Ok(Command::Typing { rid: id_field(&v, "rid")? }),
        "read" => Ok(Command::Read {
            rid: id_field(&v, "rid")?,
            seq: opt_u64(&v, "seq")?.ok_or(ProtoError::invalid("seq must be a non-negative integer"))?,
        }),
        "getRooms" => Ok(Command::GetRooms {
            after: opt_id_field(&v, "after")?,
            limit: opt_u64(&v, "limit")?.map(|l| l.min(MAX_PAGE as u64) as usize),
        }),
        "getHistory" => {
            let (before, epoch) = history_before(&v)?;
            Ok(Command::GetHistory {
                rid: id_field(&v, "rid")?,
                since: opt_u64(&v, "since")?,
                before,
                epoch,
                limit: opt_u64(&v, "limit")?.map(|l| l.min(MAX_PAGE as u64) as usize),
            })
        }
        _ => Err(ProtoError::new(ERR_UNKNOWN_CMD, "unknown cmd")),
    }
}

fn id_value(v: &Value<'_>) -> Option<Id> {
    if let Some(s) = v.as_str() {
        Id::parse_str(s)
    } else if v.is_u64() || v.is_i64() {
        v.as_u64().and_then(Id::from_u64)
    } else {
        None
    }
}

/// Whether the number token around byte `at` (where simd-json gave up on a
/// number) follows JSON's number grammar, so the text was valid JSON whose
/// number is only out of range. simd-json rewrites escaped strings in place,
/// but never the bytes of a number.
fn well_formed_number_at(data: &[u8], at: usize) -> bool {
    let in_number = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let at = at.min(data.len());
    let start = data[..at].iter().rposition(|&b| !in_number(b)).map_or(0, |i| i + 1);
    let end = data[start..].iter().position(|&b| !in_number(b)).map_or(data.len(), |i| start + i);
    let t = &data[start..end];
    // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    let mut i = usize::from(t.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < t.len() && t[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - s
    };
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == t.len()
}

fn opt_id_field(v: &Value<'_>, key: &'static str) -> Result<Option<Id>, ProtoError> {
    match v.get(key) {
        None => Ok(None),
        Some(x) => id_value(x).map(Some).ok_or_else(|| bad_id(key)),
    }
}

fn id_field(v: &Value<'_>, key: &'static str) -> Result<Id, ProtoError> {
    opt_id_field(v, key)?.ok_or_else(|| bad_id(key))
}

fn bad_id(key: &'static str) -> ProtoError {
    ProtoError::invalid(format!("{key} must be a positive integer or 1-64 characters of [A-Za-z0-9_.:-]"))
}

/// `before`: a seq of the room's current epoch, or `{"epoch": E, "seq": S}`
/// naming a message of any epoch (seq and epoch).
fn history_before(v: &Value<'_>) -> Result<(Option<u64>, Option<u64>), ProtoError> {
    let Some(b) = v.get("before") else { return Ok((None, None)) };
    if b.is_object() {
        let bad = || ProtoError::invalid("before must be a seq or {\"epoch\", \"seq\"} with non-negative integers");
        let epoch = opt_u64(b, "epoch").map_err(|_| bad())?.ok_or_else(bad)?;
        let seq = opt_u64(b, "seq").map_err(|_| bad())?.ok_or_else(bad)?;
        return Ok((Some(seq), Some(epoch)));
    }
    Ok((opt_u64(v, "before")?, None))
}

/// What a `Change` does to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Its text becomes this.
    Edit(String),
    /// It is deleted.
    Delete,
    /// A reaction added (`on`) or taken back.
    React {
        /// The reaction.
        emoji: String,
        /// Added, or taken back.
        on: bool,
    },
}

impl ChangeKind {
    /// The command's name, which is its event's `cmd`.
    pub fn cmd(&self) -> &'static str {
        match self {
            ChangeKind::Edit(_) => "edit",
            ChangeKind::Delete => "delete",
            ChangeKind::React { .. } => "react",
        }
    }
}

/// A reaction: 1–32 bytes of text with no control character.
pub fn valid_emoji(e: &str) -> bool {
    !e.is_empty() && e.len() <= 32 && !e.chars().any(char::is_control)
}

/// `seq` of a change: the message it changes (at least 1).
fn seq_field(v: &Value<'_>) -> Result<u64, ProtoError> {
    opt_u64(v, "seq")?.filter(|s| *s > 0).ok_or(ProtoError::invalid("seq must name a message (a positive integer)"))
}

/// A point in a room's sequence: the last message a client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// The room's epoch then.
    pub epoch: u64,
    /// The seq of that message (0: none yet).
    pub seq: u64,
}

/// `since` of a login: `{"epoch": E, "seq": S}`.
fn since_field(v: &Value<'_>) -> Result<Option<Since>, ProtoError> {
    let Some(b) = v.get("since") else { return Ok(None) };
    let bad = || ProtoError::invalid("since must be {\"epoch\", \"seq\"} with non-negative integers");
    if !b.is_object() {
        return Err(bad());
    }
    let epoch = opt_u64(b, "epoch").map_err(|_| bad())?.ok_or_else(bad)?;
    let seq = opt_u64(b, "seq").map_err(|_| bad())?.ok_or_else(bad)?;
    Ok(Some(Since { epoch, seq }))
}

fn opt_u64(v: &Value<'_>, key: &'static str) -> Result<Option<u64>, ProtoError> {
    match v.get(key) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .filter(|_| x.is_u64() || x.is_i64())
            .map(Some)
            .ok_or_else(|| ProtoError::invalid(format!("{key} must be a non-negative integer"))),
    }
}

#[cfg(test)]
mod tests;
