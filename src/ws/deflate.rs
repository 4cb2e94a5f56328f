//! permessage-deflate (RFC 7692), the way a broadcast server can afford it.
//!
//! Both directions are negotiated without context takeover: every message is
//! compressed on its own. That is what lets the server compress a broadcast
//! frame **once** and queue the same bytes on every member that negotiated
//! the extension (a context per connection would mean one compression per
//! recipient), and it is what keeps memory per connection at one flag: the
//! compressor and the inflater are the shard's, reset for each message,
//! instead of ~300 KB of zlib state per socket. The price is ratio: short
//! messages share no dictionary with the ones before them (see
//! `docs/operations.md`, "Compression").
//!
//! No I/O: [`accepts`] reads an offer, [`Deflater`] turns a plain server
//! frame into a compressed one, [`Inflater`] opens a client's message.

use bytes::{BufMut, Bytes};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{FrameBuf, WsError};

/// The `Sec-WebSocket-Extensions` answer line, when an offer is accepted.
pub const RESPONSE_HEADER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";

/// Whether one of the offers in `Sec-WebSocket-Extensions` header values can
/// be accepted as [`RESPONSE_HEADER`] says. An offer is refused when it has
/// a parameter this server does not know, a malformed value, or asks the
/// server for a window under 32 KB (`server_max_window_bits` < 15: the
/// shared compressor uses one window for every recipient). The client's own
/// window is the client's business: any `client_max_window_bits` is fine, an
/// inflater opens any window.
pub fn accepts<'a>(header_values: impl IntoIterator<Item = &'a str>) -> bool {
    header_values.into_iter().flat_map(|v| v.split(',')).any(offer_acceptable)
}

fn offer_acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        // RFC 7692 §7: a parameter given twice makes the offer invalid.
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return false;
        }
        seen.push(name);
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=15).contains(b));
        let ok = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            "server_max_window_bits" => bits(value) == Some(15),
            "client_max_window_bits" => value.is_none() || bits(value).is_some(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The tail a sync flush ends a deflate stream with, which RFC 7692 §7.2.1
/// has the sender drop and the receiver put back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The shard's compressor: one per shard, reset for every message.
#[derive(Debug)]
pub struct Deflater {
    z: Compress,
    /// Where a payload is compressed before it is framed (kept: one
    /// allocation per shard, not per broadcast).
    scratch: Vec<u8>,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::with_level(LEVEL)
    }
}

/// The compression level of broadcast frames. Measured (`cargo bench
/// --bench deflate`, zlib-rs): level 1 uses fixed Huffman codes, ~5 us a
/// frame but a 200-byte chat frame only shrinks to 0.88; from level 2 the
/// codes are built for each message, ~11 us and 0.75 (0.52 at 1 KB of
/// text), and higher levels gain nothing more on messages this short.
pub const LEVEL: u32 = 2;

impl Deflater {
    /// A compressor at zlib level `level` (1..=9). (Its window is 32 KB:
    /// a smaller one was measured no cheaper to reset per message.)
    pub fn with_level(level: u32) -> Self {
        Deflater { z: Compress::new(Compression::new(level), false), scratch: Vec::new() }
    }

    /// The compressed form of a plain, unfragmented server text frame, or
    /// None when `frame` is not one (control frames are never compressed)
    /// or compressing would not make it shorter.
    pub fn frame(&mut self, frame: &[u8]) -> Option<Bytes> {
        let (op, body, used) = super::parse_server_frame(frame).ok()??;
        if op != 1 || used != frame.len() || frame[0] & 0xf0 != 0x80 {
            return None;
        }
        let payload = &frame[body];
        self.scratch.clear();
        if self.scratch.capacity() > KEEP {
            self.scratch = Vec::new();
        }
        deflate_into(&mut self.z, payload, &mut self.scratch)?;
        if self.scratch.len() >= payload.len() {
            return None;
        }
        let mut out = FrameBuf::with_capacity(self.scratch.len());
        out.body().put_slice(&self.scratch);
        Some(out.finish_deflated())
    }
}

/// Compresses all of `input` onto the end of `out` as RFC 7692 §7.2.1 sends
/// a message: a fresh stream, a sync flush, its 4-byte tail left off.
fn deflate_into(z: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Option<()> {
    z.reset();
    loop {
        // A deflate stream is at most a little longer than its input.
        out.reserve(input.len() / 8 + 64);
        let read = z.total_in() as usize;
        z.compress_vec(&input[read..], out, FlushCompress::Sync).ok()?;
        // Done once every byte is read and the flush had room to end.
        if z.total_in() as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    let end = out.len().checked_sub(TAIL.len()).filter(|&n| out[n..] == TAIL)?;
    out.truncate(end);
    Some(())
}

/// The shard's inflater: one per shard, reset for every message (the
/// client was told `client_no_context_takeover`).
#[derive(Debug)]
pub struct Inflater {
    z: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater { z: Decompress::new(false), out: Vec::new() }
    }
}

/// Largest buffer the inflater keeps between messages; a bigger message's
/// buffer is given back once it is handled.
const KEEP: usize = 64 * 1024;

impl Inflater {
    /// The text of a compressed message: inflated, at most `max` bytes
    /// (a small frame that inflates past it is [`WsError::TooBig`], the
    /// bound that stops a compression bomb), and valid UTF-8.
    pub fn text(&mut self, data: &[u8], max: usize) -> Result<&mut [u8], WsError> {
        self.z.reset(false);
        self.out.clear();
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        for input in [data, &TAIL[..]] {
            let mut input = input;
            loop {
                if self.out.len() > max {
                    return Err(WsError::TooBig);
                }
                let room = (max + 1 - self.out.len()).min(input.len().max(1024) * 4);
                self.out.reserve(room);
                let before_in = self.z.total_in();
                let status = self
                    .z
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| WsError::Protocol("bad deflate data"))?;
                input = &input[(self.z.total_in() - before_in) as usize..];
                if status == Status::StreamEnd && !input.is_empty() {
                    return Err(WsError::Protocol("data after the deflate stream's end"));
                }
                // Done with this input once all of it is read and the
                // inflater left room unused (it has nothing more to give).
                if input.is_empty() && self.out.len() < self.out.capacity() {
                    break;
                }
            }
        }
        if self.out.len() > max {
            return Err(WsError::TooBig);
        }
        if std::str::from_utf8(&self.out).is_err() {
            return Err(WsError::InvalidUtf8);
        }
        Ok(&mut self.out)
    }
}

/// Deflates `payload` as a client would (raw deflate, sync flush, tail
/// dropped), for tests and the load generator.
pub fn deflate_message(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    deflate_into(&mut Compress::new(Compression::default(), false), payload, &mut out).expect("deflate");
    out
}

/// Inflates one compressed text message (no context kept), for clients:
/// tests and the load generator. None if it is not valid deflate data or
/// not UTF-8.
pub fn inflate_message(data: &[u8]) -> Option<Vec<u8>> {
    Inflater::default().text(data, 1 << 30).ok().map(|t| t.to_vec())
}

/// Writes `payload` as a client's masked, compressed text frame (RSV1 set).
pub fn client_deflated_frame(out: &mut impl BufMut, payload: &[u8], mask: [u8; 4]) {
    let z = deflate_message(payload);
    let mut f = Vec::with_capacity(z.len() + 14);
    super::client_frame(&mut f, 1, &z, mask);
    f[0] |= 0x40;
    out.put_slice(&f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Decoder, Event, client_frame, parse_server_frame, text_frame};
    use proptest::prelude::*;

    #[test]
    fn offers_browsers_make_are_accepted_and_others_declined() {
        // Chromium's and Firefox's offers.
        assert!(accepts(["permessage-deflate; client_max_window_bits"]));
        assert!(accepts(["permessage-deflate"]));
        assert!(accepts(["permessage-deflate; client_no_context_takeover; server_no_context_takeover"]));
        assert!(accepts(["permessage-deflate; server_max_window_bits=15; client_max_window_bits=10"]));
        // A second offer (or header line) is taken when the first is not acceptable.
        assert!(accepts(["permessage-deflate; server_max_window_bits=9, permessage-deflate"]));
        assert!(accepts(["x-webkit-deflate-frame", "permessage-deflate"]));
        for bad in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert!(!accepts([bad]), "{bad:?}");
        }
    }

    #[test]
    fn a_frame_is_compressed_with_rsv1_and_opens_again() {
        let text = r#"{"cmd":"fromMsg","from":"u1","name":"ann","rid":"lobby","msg":"the meeting moved to three, the meeting moved to three","seq":12}"#;
        let plain = text_frame(text.as_bytes());
        let z = Deflater::default().frame(&plain).expect("shorter");
        assert_eq!(z[0], 0xc1, "FIN, RSV1, text");
        let (op, body, used) = parse_server_frame(&z).unwrap().unwrap();
        assert_eq!((op, used), (1, z.len()));
        assert!(z.len() < plain.len());
        assert_eq!(inflate_message(&z[body]).unwrap(), text.as_bytes());
    }

    #[test]
    fn control_frames_and_incompressible_frames_stay_plain() {
        let mut d = Deflater::default();
        assert!(d.frame(&crate::ws::ping_frame()).is_none());
        assert!(d.frame(&crate::ws::close_frame(1000, "bye bye bye bye bye bye bye bye")).is_none());
        assert!(d.frame(&text_frame(b"{}")).is_none(), "two bytes do not shrink");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(d.frame(&text_frame(&noise)).is_none(), "noise does not shrink");
    }

    #[test]
    fn a_compression_bomb_is_too_big_and_bad_data_is_a_protocol_error() {
        let bomb = deflate_message(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 2048);
        let mut inf = Inflater::default();
        assert_eq!(inf.text(&bomb, 65536).unwrap_err(), WsError::TooBig);
        assert_eq!(inf.text(&[0xff, 0xff, 0xff], 65536).unwrap_err().close_code(), 1002);
        assert_eq!(inf.text(&deflate_message(&[0xff, 0xfe]), 100).unwrap_err(), WsError::InvalidUtf8);
        // And it is still good for the next message.
        assert_eq!(inf.text(&deflate_message(b"{\"cmd\":\"x\"}"), 100).unwrap(), b"{\"cmd\":\"x\"}");
        // Exactly the limit is fine.
        assert_eq!(inf.text(&deflate_message(&[b'b'; 100]), 100).unwrap().len(), 100);
    }

    #[test]
    fn the_decoder_takes_rsv1_only_where_deflate_was_negotiated() {
        let mut f = Vec::new();
        client_deflated_frame(&mut f, b"hello hello hello", [9, 8, 7, 6]);
        let mut plain_conn = Decoder::default();
        assert_eq!(plain_conn.decode(&mut f.clone(), 1000).unwrap_err().close_code(), 1002);
        let mut d = Decoder::new(true);
        let (ev, used) = d.decode(&mut f, 1000).unwrap().unwrap();
        assert_eq!(used, f.len());
        let Event::Deflated(r) = ev else { panic!("{ev:?}") };
        assert_eq!(Inflater::default().text(&f[r], 1000).unwrap(), b"hello hello hello");
        // RSV1 on a ping, or on a continuation, is an error.
        let mut ping = Vec::new();
        client_frame(&mut ping, 9, b"p", [1, 2, 3, 4]);
        ping[0] |= 0x40;
        assert_eq!(d.decode(&mut ping, 1000).unwrap_err().close_code(), 1002);
        // A compressed message in two fragments: RSV1 on the first only.
        let z = deflate_message("fragmented, compressed, and whole again".as_bytes());
        let (a, b) = z.split_at(z.len() / 2);
        let mut first = Vec::new();
        client_frame(&mut first, 1, a, [1, 2, 3, 4]);
        first[0] = 0x41; // not final, RSV1, text
        let mut last = Vec::new();
        client_frame(&mut last, 0, b, [5, 6, 7, 8]);
        assert_eq!(d.decode(&mut first, 1000).unwrap().unwrap().0, Event::Fragment);
        assert_eq!(d.decode(&mut last.clone(), 1000).unwrap().unwrap().0, Event::AssembledDeflated);
        let m = d.take_message();
        assert_eq!(Inflater::default().text(&m, 1000).unwrap(), b"fragmented, compressed, and whole again");
        last[0] |= 0x40;
        d.decode(&mut first, 1000).unwrap();
        assert_eq!(d.decode(&mut last, 1000).unwrap_err().close_code(), 1002);
    }

    proptest! {
        /// Whatever the text, the shared compressor's frame opens to it, and
        /// a client's compressed message opens to it in the shard's inflater.
        #[test]
        fn any_text_round_trips_both_ways(s in ".{0,600}", repeat in 1usize..6) {
            let text = s.repeat(repeat);
            let plain = text_frame(text.as_bytes());
            if let Some(z) = Deflater::default().frame(&plain) {
                let (_, body, _) = parse_server_frame(&z).unwrap().unwrap();
                prop_assert_eq!(inflate_message(&z[body]).unwrap(), text.as_bytes());
            }
            let mut inf = Inflater::default();
            prop_assert_eq!(&*inf.text(&deflate_message(text.as_bytes()), 1 << 20).unwrap(), text.as_bytes());
        }

        /// Garbage never panics the inflater, and never passes its limit.
        #[test]
        fn any_bytes_inflate_to_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut inf = Inflater::default();
            if let Ok(t) = inf.text(&bytes, 1000) {
                prop_assert!(t.len() <= 1000);
            }
        }
    }
}
