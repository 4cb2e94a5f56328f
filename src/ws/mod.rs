//! WebSocket (RFC 6455) framing for the server side, free of I/O.
//!
//! Frame headers are parsed and written by tungstenite's [`FrameHeader`]; this
//! module adds what a server needs around it without keeping a buffer per
//! connection: the decoder works on whatever bytes the caller has (usually the
//! shard's shared read buffer), reassembles fragmented messages only when a
//! client fragments, and maps every protocol violation to the close code the
//! RFC asks for. [`FrameBuf`] writes an outgoing frame in one allocation: the
//! JSON body goes in first and the header is filled in in front of it.

use std::io::Cursor;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

pub mod deflate;

/// Close codes the server sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown, idle timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: unmasked frame, bad opcode, bad control frame.
    pub const PROTOCOL: u16 = 1002;
    /// Invalid payload data: text that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: the connection could not keep up (slow consumer).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// A violation that ends the connection with a close frame.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum WsError {
    /// The peer broke the framing rules; close with 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason was not UTF-8; close with 1007.
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
    /// A frame or message exceeded the size limit; close with 1009.
    #[error("message too big")]
    TooBig,
}

impl WsError {
    /// The close code RFC 6455 assigns to this violation.
    pub fn close_code(self) -> u16 {
        match self {
            WsError::Protocol(_) => close_code::PROTOCOL,
            WsError::InvalidUtf8 => close_code::INVALID_DATA,
            WsError::TooBig => close_code::TOO_BIG,
        }
    }

    /// Short reason text for the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            WsError::Protocol(r) => r,
            WsError::InvalidUtf8 => "invalid utf-8",
            WsError::TooBig => "message too big",
        }
    }
}

/// One decoded unit of client input.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message, valid UTF-8, at this range of the input buffer
    /// (already unmasked in place).
    Text(Range<usize>),
    /// A whole text message reassembled from fragments; take it with
    /// [`Decoder::take_message`].
    AssembledText,
    /// A whole compressed text message (permessage-deflate) at this range
    /// of the input buffer: inflate it with the shard's
    /// [`deflate::Inflater`], which also checks that it is UTF-8. (Binary
    /// compressed messages are [`Event::Binary`].)
    Deflated(Range<usize>),
    /// A compressed text message reassembled from fragments: take it with
    /// [`Decoder::take_message`], then inflate it.
    AssembledDeflated,
    /// A binary message (the chat protocol has no use for one: error 101).
    Binary,
    /// A ping whose payload must be echoed in a pong; payload range of the input.
    Ping(Range<usize>),
    /// A pong (counts as activity, nothing else).
    Pong,
    /// The peer closed; echo this code (None when the peer sent none).
    Close(Option<u16>),
    /// A non-final fragment was absorbed; nothing to do yet.
    Fragment,
}

/// Per-connection decoder state: one pointer, and no heap at all unless a
/// client fragments a message (memory per idle connection matters).
#[derive(Debug, Default)]
pub struct Decoder {
    frag: Option<Box<Fragmented>>,
    /// The connection negotiated permessage-deflate: RSV1 on a message's
    /// first frame means it is compressed (otherwise RSV1 is an error).
    deflate: bool,
}

/// A fragmented message being reassembled (or reassembled, waiting to be taken).
#[derive(Debug)]
struct Fragmented {
    is_text: bool,
    /// The first frame had RSV1: the message is compressed.
    deflated: bool,
    data: Vec<u8>,
    complete: bool,
}

impl Decoder {
    /// A decoder for a connection that did (or did not) negotiate permessage-deflate.
    pub fn new(deflate: bool) -> Self {
        Decoder { frag: None, deflate }
    }

    /// No fragmented message is being put together: a new decoder would
    /// read what comes next the same way.
    pub fn is_idle(&self) -> bool {
        self.frag.is_none()
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no whole frame yet (nothing is
    /// consumed), or the event and how many bytes it used. Payloads are
    /// unmasked in place. `max` bounds a frame's payload and a reassembled
    /// message.
    pub fn decode(&mut self, buf: &mut [u8], max: usize) -> Result<Option<(Event, usize)>, WsError> {
        let deflate = self.deflate;
        let mut cur = Cursor::new(&*buf);
        let (hdr, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(h)) => h,
            // The header itself is incomplete. (A whole header announcing a
            // payload over the limit is refused below, before the payload arrives.)
            Ok(None) => return Ok(None),
            Err(_) => return Err(WsError::Protocol("bad frame header")),
        };
        let hlen = cur.position() as usize;
        if hdr.rsv2 || hdr.rsv3 || (hdr.rsv1 && !deflate) {
            return Err(WsError::Protocol("reserved bits set"));
        }
        // RFC 7692 §6.1: RSV1 marks the first frame of a compressed data
        // message, never a control frame or a continuation.
        if hdr.rsv1 && matches!(hdr.opcode, OpCode::Control(_) | OpCode::Data(Data::Continue)) {
            return Err(WsError::Protocol("RSV1 on a control frame or a continuation"));
        }
        let Some(mask) = hdr.mask else {
            return Err(WsError::Protocol("unmasked client frame"));
        };
        let is_control = matches!(hdr.opcode, OpCode::Control(_));
        if is_control && (len > 125 || !hdr.is_final) {
            return Err(WsError::Protocol("bad control frame"));
        }
        if len > max as u64 {
            return Err(WsError::TooBig);
        }
        if let OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) = hdr.opcode {
            return Err(WsError::Protocol("reserved opcode"));
        }
        let len = len as usize;
        if buf.len() - hlen < len {
            return Ok(None);
        }
        let range = hlen..hlen + len;
        unmask(&mut buf[range.clone()], mask);
        let used = hlen + len;
        let ev = match hdr.opcode {
            OpCode::Control(Control::Ping) => Event::Ping(range),
            OpCode::Control(Control::Pong) => Event::Pong,
            OpCode::Control(Control::Close) => Event::Close(parse_close(&buf[range])?),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                unreachable!()
            }
            OpCode::Data(Data::Continue) => {
                let Some(f) = self.frag.as_mut().filter(|f| !f.complete) else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if f.data.len() + len > max {
                    return Err(WsError::TooBig);
                }
                f.data.extend_from_slice(&buf[range]);
                if !hdr.is_final {
                    Event::Fragment
                } else if !f.is_text {
                    self.frag = None;
                    Event::Binary
                } else if f.deflated {
                    f.complete = true;
                    Event::AssembledDeflated
                } else {
                    if std::str::from_utf8(&f.data).is_err() {
                        return Err(WsError::InvalidUtf8);
                    }
                    f.complete = true;
                    Event::AssembledText
                }
            }
            OpCode::Data(d) => {
                if self.frag.as_ref().is_some_and(|f| !f.complete) {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                let is_text = d == Data::Text;
                if !hdr.is_final {
                    let deflated = hdr.rsv1;
                    self.frag =
                        Some(Box::new(Fragmented { is_text, deflated, data: buf[range].to_vec(), complete: false }));
                    Event::Fragment
                } else if is_text && hdr.rsv1 {
                    Event::Deflated(range)
                } else if is_text {
                    if std::str::from_utf8(&buf[range.clone()]).is_err() {
                        return Err(WsError::InvalidUtf8);
                    }
                    Event::Text(range)
                } else {
                    Event::Binary
                }
            }
        };
        Ok(Some((ev, used)))
    }

    /// The message behind the last [`Event::AssembledText`].
    pub fn take_message(&mut self) -> Vec<u8> {
        self.frag.take().map(|f| f.data).unwrap_or_default()
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// XORs `data` with the 4-byte client mask, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().unwrap()) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Room reserved in front of a frame body for the longest server header.
const HEADROOM: usize = 10;

/// An outgoing frame under construction: write the body through [`FrameBuf::body`],
/// then [`FrameBuf::finish`] puts the header in front of it without copying.
#[derive(Debug)]
pub struct FrameBuf {
    buf: BytesMut,
}

impl FrameBuf {
    /// A buffer for a body of about `hint` bytes.
    pub fn with_capacity(hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADROOM + hint);
        buf.put_bytes(0, HEADROOM);
        FrameBuf { buf }
    }

    /// Where the body is written.
    pub fn body(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Finishes a text frame (FIN set, unmasked, as servers send).
    pub fn finish(self) -> Bytes {
        self.finish_op(OpCode::Data(Data::Text)).0
    }

    /// Finishes a text frame and says where its body starts in it (the
    /// header's length), so a caller can keep the body without copying it.
    pub fn finish_with_body_offset(self) -> (Bytes, usize) {
        self.finish_op(OpCode::Data(Data::Text))
    }

    /// Finishes a text frame whose body is a compressed message (RSV1 set,
    /// RFC 7692 §6).
    pub fn finish_deflated(self) -> Bytes {
        self.finish_hdr(FrameHeader { rsv1: true, opcode: OpCode::Data(Data::Text), ..FrameHeader::default() }).0
    }

    fn finish_op(self, opcode: OpCode) -> (Bytes, usize) {
        self.finish_hdr(FrameHeader { opcode, ..FrameHeader::default() })
    }

    fn finish_hdr(mut self, hdr: FrameHeader) -> (Bytes, usize) {
        let body_len = (self.buf.len() - HEADROOM) as u64;
        let hlen = hdr.len(body_len);
        let start = HEADROOM - hlen;
        let mut head = &mut self.buf[start..HEADROOM];
        hdr.format(body_len, &mut head).expect("header fits its headroom");
        (self.buf.freeze().slice(start..), hlen)
    }
}

/// A whole server frame with the given opcode and payload.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut fb = FrameBuf::with_capacity(payload.len());
    fb.body().put_slice(payload);
    fb.finish_op(opcode).0
}

/// A whole text frame.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Data(Data::Text), payload)
}

/// A close frame with a code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    frame(OpCode::Control(Control::Close), &p)
}

/// A pong answering a ping's payload.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Control(Control::Pong), payload)
}

/// A server ping.
pub fn ping_frame() -> Bytes {
    frame(OpCode::Control(Control::Ping), b"")
}

/// The text of a frame's payload, for tests and the load generator: parses
/// one unmasked server frame at the front of `buf` and returns
/// (opcode byte, payload range, bytes used), or None if incomplete.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(u8, Range<usize>, usize)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let op = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err(WsError::Protocol("masked server frame"));
    }
    let (len, hlen) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() - hlen < len {
        return Ok(None);
    }
    Ok(Some((op, hlen..hlen + len, hlen + len)))
}

/// Writes a masked client frame (for clients: tests and the load generator).
pub fn client_frame(out: &mut impl BufMut, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(0x80 | n as u8),
        n if n < 65536 => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(&mask);
    let mut masked = payload.to_vec();
    unmask(&mut masked, mask);
    out.put_slice(&masked);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        client_frame(&mut v, opcode, payload, [1, 2, 3, 4]);
        if !fin {
            v[0] &= 0x7f;
        }
        v
    }

    #[test]
    fn text_frame_round_trip() {
        let mut d = Decoder::default();
        let mut f = masked(1, true, b"{\"cmd\":\"x\"}");
        let (ev, used) = d.decode(&mut f, 1024).unwrap().unwrap();
        assert_eq!(used, f.len());
        let Event::Text(r) = ev else { panic!() };
        assert_eq!(&f[r], b"{\"cmd\":\"x\"}");
    }

    #[test]
    fn incomplete_consumes_nothing() {
        let mut d = Decoder::default();
        let f = masked(1, true, &[b'a'; 300]);
        for cut in 0..f.len() {
            let mut part = f[..cut].to_vec();
            assert_eq!(d.decode(&mut part, 1024).unwrap(), None, "cut {cut}");
        }
    }

    #[test]
    fn violations_map_to_close_codes() {
        let mut d = Decoder::default();
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(d.decode(&mut unmasked, 10).unwrap_err().close_code(), 1002);
        let mut bad_op = masked(3, true, b"");
        assert_eq!(d.decode(&mut bad_op, 10).unwrap_err().close_code(), 1002);
        let mut big = masked(1, true, &[b'a'; 100]);
        assert_eq!(d.decode(&mut big, 99).unwrap_err().close_code(), 1009);
        let mut bad_utf8 = masked(1, true, &[0xff, 0xfe]);
        assert_eq!(d.decode(&mut bad_utf8, 10).unwrap_err().close_code(), 1007);
        let mut long_ping = masked(9, true, &[0; 126]);
        assert_eq!(d.decode(&mut long_ping, 1000).unwrap_err().close_code(), 1002);
        let mut cont = masked(0, true, b"x");
        assert_eq!(d.decode(&mut cont, 10).unwrap_err().close_code(), 1002);
        let mut rsv = masked(1, true, b"x");
        rsv[0] |= 0x40;
        assert_eq!(d.decode(&mut rsv, 10).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn fragments_reassemble() {
        let mut d = Decoder::default();
        let mut a = masked(1, false, "hé".as_bytes());
        let mut b = masked(0, true, "llo".as_bytes());
        assert_eq!(d.decode(&mut a, 100).unwrap().unwrap().0, Event::Fragment);
        let mut ping = masked(9, true, b"p");
        assert!(matches!(d.decode(&mut ping, 100).unwrap().unwrap().0, Event::Ping(_)));
        assert_eq!(d.decode(&mut b, 100).unwrap().unwrap().0, Event::AssembledText);
        assert_eq!(d.take_message(), "héllo".as_bytes());
        // A fragmented message may not exceed the limit in total.
        let mut a = masked(1, false, &[b'a'; 60]);
        let mut b = masked(0, true, &[b'a'; 60]);
        d.decode(&mut a, 100).unwrap();
        assert_eq!(d.decode(&mut b, 100).unwrap_err(), WsError::TooBig);
    }

    #[test]
    fn close_codes() {
        let mut d = Decoder::default();
        let mut c = masked(8, true, &1000u16.to_be_bytes());
        assert_eq!(d.decode(&mut c, 10).unwrap().unwrap().0, Event::Close(Some(1000)));
        let mut c = masked(8, true, &[3]);
        assert!(d.decode(&mut c, 10).is_err());
        let mut c = masked(8, true, &999u16.to_be_bytes());
        assert!(d.decode(&mut c, 10).is_err());
    }

    #[test]
    fn server_frames_parse_back() {
        for n in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let body = vec![b'x'; n];
            let f = frame(OpCode::Data(Data::Text), &body);
            let (op, r, used) = parse_server_frame(&f).unwrap().unwrap();
            assert_eq!((op, r.len(), used), (1, n, f.len()));
        }
        let c = close_frame(1009, "too big");
        let (op, r, _) = parse_server_frame(&c).unwrap().unwrap();
        assert_eq!(op, 8);
        assert_eq!(&c[r][..2], &1009u16.to_be_bytes());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decoder::default();
            let mut off = 0;
            while off < bytes.len() {
                match d.decode(&mut bytes[off..], 200) {
                    Ok(Some((_, used))) => { prop_assert!(used > 0); off += used; }
                    _ => break,
                }
            }
        }

        #[test]
        fn any_text_round_trips(s in any::<String>(), mask in any::<[u8; 4]>(), split in 0usize..64) {
            let mut f = Vec::new();
            client_frame(&mut f, 1, s.as_bytes(), mask);
            let mut d = Decoder::default();
            // Arbitrary prefixes are incomplete, never errors.
            let cut = split.min(f.len().saturating_sub(1));
            prop_assert!(d.decode(&mut f[..cut].to_vec(), 1 << 20).unwrap().is_none());
            let (ev, used) = d.decode(&mut f, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(used, f.len());
            let Event::Text(r) = ev else { panic!() };
            prop_assert_eq!(&f[r], s.as_bytes());
        }
    }
}
