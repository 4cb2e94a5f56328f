//! The wire layer, free of I/O: the `msg` loadgen sends, the server frames it
//! reads, and the byte-search scanner that pulls the send time, message id,
//! `seq` and `epoch` out of a delivery without parsing its JSON.
//!
//! Every delivery costs loadgen a few dozen nanoseconds here, which is what
//! lets one core read millions of them per second. The scanner relies on the
//! server's documented field order (`cmd, uid, name, type, rid, msg, tid?,
//! seq, epoch, ts`) and on loadgen's own `msg` layout, and refuses (as
//! [`Kind::Malformed`]) anything that does not fit rather than guessing.

use memchr::memmem::Finder;

/// Bytes at the front of every `msg`: 16 hex digits of the due time (ns,
/// CLOCK_MONOTONIC) and 8 hex digits of the message number.
pub const MSG_HEAD: usize = 24;

/// Writes the `msg` of message `id` due at `due_ns`, padded to `len` bytes.
/// Hex digits and `.` only: nothing the server escapes, so the text arrives
/// byte for byte.
pub fn write_msg(out: &mut Vec<u8>, due_ns: u64, id: u32, len: usize, filler: Filler) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let start = out.len();
    for i in (0..16).rev() {
        out.push(HEX[((due_ns >> (i * 4)) & 0xf) as usize]);
    }
    for i in (0..8).rev() {
        out.push(HEX[((id >> (i * 4)) & 0xf) as usize]);
    }
    let end = start + len.max(MSG_HEAD);
    match filler {
        Filler::Dots => out.resize(end, b'.'),
        Filler::Chat => {
            // Words picked by the message id, so that messages differ as
            // real ones do, and no two runs' texts depend on a clock.
            let mut x = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while out.len() < end {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(b' ');
                out.extend_from_slice(CHAT_WORDS[(x % CHAT_WORDS.len() as u64) as usize].as_bytes());
            }
            out.truncate(end);
        }
    }
}

/// What fills a message's `msg` after its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filler {
    /// One byte repeated: the cheapest to make and to read.
    Dots,
    /// Everyday chat words: as compressible as real messages.
    Chat,
}

/// The words of `--text chat`: the most frequent words of chat messages,
/// with a few names, numbers and emoji-free slang (JSON-safe, ASCII).
const CHAT_WORDS: &[&str] = &[
    "I", "you", "the", "to", "a", "it", "and", "is", "that", "in", "of", "for", "me", "on", "so", "have", "we", "be",
    "just", "my", "do", "this", "not", "are", "lol", "with", "but", "what", "was", "can", "at", "if", "get", "know",
    "like", "ok", "yeah", "no", "your", "all", "it's", "I'm", "go", "about", "up", "think", "will", "one", "out",
    "now", "how", "there", "see", "when", "time", "good", "they", "going", "don't", "back", "today", "tomorrow",
    "meeting", "thanks", "sure", "later", "need", "want", "call", "did", "had", "right", "here", "home", "work",
    "night", "still", "tonight", "haha", "let's", "maybe", "really", "then", "can't", "got", "sorry", "please",
    "coffee", "lunch", "deploy", "build", "ship", "fixed", "review", "PR", "ticket", "prod", "Alice", "Bob", "Carol",
    "Dave", "Erin", "Frank", "3pm", "10", "Friday", "Monday", "weekend", "soon", "done", "nice", "great", "awesome",
    "hmm", "btw", "omw", "brb", "np", "idk",
];

/// Reads the (due time, id) at the front of a `msg`.
pub fn read_msg_head(msg: &[u8]) -> Option<(u64, u32)> {
    let head = msg.get(..MSG_HEAD)?;
    let due = hex(&head[..16])?;
    let id = hex(&head[16..])? as u32;
    Some((due, id))
}

fn hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    let mut bad = 0u8;
    for &d in digits {
        // Branch-free per digit (this runs for every delivery): a table
        // lookup, with 0xff marking anything but 0-9 and a-f.
        let n = HEX_VALUE[d as usize];
        bad |= n;
        v = v << 4 | (n & 0x0f) as u64;
    }
    (bad & 0xf0 == 0).then_some(v)
}

/// Value of each byte as a lowercase hex digit, 0xff if it is none.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses a run of ASCII digits at the front of `b`: (value, digits used).
fn decimal(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    let mut i = 0;
    while let Some(&d) = b.get(i) {
        if !d.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        i += 1;
    }
    (i > 0).then_some((v, i))
}

/// The JSON text of a room message from loadgen (the body of a client frame).
pub fn message_json(
    out: &mut Vec<u8>,
    room: u32,
    due_ns: u64,
    id: u32,
    payload: usize,
    mid: Option<u64>,
    filler: Filler,
) {
    out.extend_from_slice(br#"{"cmd":"message","type":"text","msg":""#);
    write_msg(out, due_ns, id, payload, filler);
    out.extend_from_slice(br#"","rid":"r"#);
    // Writing into a Vec cannot fail; no String per message.
    let _ = std::io::Write::write_fmt(out, format_args!("{room}"));
    if let Some(run) = mid {
        // The run and the schedule's number name the message: a resend
        // repeats it, and another run's messages are other messages.
        let _ = std::io::Write::write_fmt(out, format_args!(r#"","mid":"m{run:x}-{id}"#));
    }
    out.extend_from_slice(br#""}"#);
}

/// The JSON text of client `c`'s login into room `room`; resuming after
/// `(epoch, seq)` when it names the last message seen.
pub fn login_json(c: u32, room: u32, since: Option<(u64, u64)>) -> String {
    match since {
        None => format!(r#"{{"cmd":"login","name":"n{c}","rid":"r{room}","uid":"u{c}"}}"#),
        Some((e, s)) => {
            format!(r#"{{"cmd":"login","name":"n{c}","rid":"r{room}","uid":"u{c}","since":{{"epoch":{e},"seq":{s}}}}}"#)
        }
    }
}

/// One delivery, as the scanner reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// When the message was due to be sent (ns, CLOCK_MONOTONIC).
    pub due_ns: u64,
    /// Message number in the schedule.
    pub id: u32,
    /// The room's sequence number.
    pub seq: u64,
    /// The sequence's epoch (0 if the server sent none).
    pub epoch: u64,
}

/// What a server text frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A room message from loadgen.
    Message(Delivery),
    /// `{"cmd":"error",…}`.
    Error,
    /// A login acknowledgement.
    Login,
    /// A resuming login the server could not resume (`"recovered": false`).
    NotRecovered,
    /// The answer to a message sent again that the server already had
    /// (`"dup": true`): not a delivery.
    Dup,
    /// Someone is typing (not in the room's sequence).
    Typing,
    /// A `getHistory` answer.
    History,
    /// A private message (`tid`): to its target only, outside the sequence.
    Private,
    /// A room event (`react`, `edit`, `delete`): its own place in the
    /// room's sequence (`at`) and epoch.
    Event {
        /// Its place in the room's sequence.
        at: u64,
        /// The sequence's epoch.
        epoch: u64,
    },
    /// Anything else the server says (`newUser`, `userLeave`, …): ignored.
    Other,
    /// A message frame that does not have loadgen's layout, or not JSON.
    Malformed,
}

/// Byte-search scanner for server text frames; build one and reuse it (the
/// substring searchers are prepared once).
#[derive(Debug)]
pub struct Scanner {
    msg: Finder<'static>,
    seq: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner { msg: Finder::new(br#""msg":""#), seq: Finder::new(br#""seq":"#) }
    }
}

const CMD: &[u8] = br#"{"cmd":""#;

impl Scanner {
    /// Classifies a server text frame, reading a delivery's fields.
    #[inline]
    pub fn classify(&self, p: &[u8]) -> Kind {
        let Some(rest) = p.strip_prefix(CMD) else {
            return Kind::Malformed;
        };
        if rest.starts_with(b"message\"") {
            if p.ends_with(br#","dup":true}"#) {
                return Kind::Dup;
            }
            match self.delivery(p) {
                Some(d) => Kind::Message(d),
                // Not loadgen's room message: a private one (`--private`).
                None if memchr::memmem::find(p, br#","tid":""#).is_some() => Kind::Private,
                None => Kind::Malformed,
            }
        } else if rest.starts_with(b"typing\"") {
            Kind::Typing
        } else if rest.starts_with(b"react\"") || rest.starts_with(b"edit\"") || rest.starts_with(b"delete\"") {
            // `..."epoch":E,"at":A}` closes every event frame.
            let tail_at = p.windows(6).rposition(|w| w == br#","at":"#);
            let tail_epoch = p.windows(9).rposition(|w| w == br#","epoch":"#);
            match (tail_at, tail_epoch) {
                (Some(a), Some(e)) => match (decimal(&p[a + 6..]), decimal(&p[e + 9..])) {
                    (Some((at, _)), Some((epoch, _))) => Kind::Event { at, epoch },
                    _ => Kind::Malformed,
                },
                _ => Kind::Malformed,
            }
        } else if rest.starts_with(b"getHistory\"") {
            Kind::History
        } else if rest.starts_with(b"error\"") {
            Kind::Error
        } else if rest.starts_with(b"login\"") {
            if p.ends_with(br#","recovered":false}"#) {
                return Kind::NotRecovered;
            }
            Kind::Login
        } else {
            Kind::Other
        }
    }

    /// Reads a delivery's fields. `"msg":"` cannot occur earlier in the frame
    /// unescaped (a quote inside `uid`, `name` or `rid` arrives as `\"`), and
    /// loadgen's `msg` holds no quote, so the first quote after it ends it.
    #[inline]
    fn delivery(&self, p: &[u8]) -> Option<Delivery> {
        let skip = CMD.len() + 8;
        let at = skip + self.msg.find(p.get(skip..)?)? + 7;
        let msg = &p[at..];
        let (due_ns, id) = read_msg_head(msg)?;
        let end = at + MSG_HEAD + memchr::memchr(b'"', &msg[MSG_HEAD..])?;
        // Usually `,"seq":` follows at once; a `tid` may sit in between.
        let after = &p[end + 1..];
        let s = if after.starts_with(br#","seq":"#) { end + 8 } else { end + 1 + self.seq.find(after)? + 6 };
        let (seq, used) = decimal(&p[s..])?;
        let rest = &p[s + used..];
        let epoch = match rest.strip_prefix(br#","epoch":"#) {
            Some(e) => decimal(e)?.0,
            None => 0,
        };
        Some(Delivery { due_ns, id, seq, epoch })
    }
}

/// A broken server frame stream: loadgen cannot go on reading this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Masked server frame or bad header.
    Protocol,
    /// A fragmented frame (the server never fragments, and loadgen does not reassemble).
    Fragmented,
    /// A frame longer than loadgen's read buffer.
    TooBig,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Protocol => "bad server frame",
            FrameError::Fragmented => "fragmented server frame",
            FrameError::TooBig => "server frame larger than the read buffer",
        })
    }
}

/// A worker's inflater for compressed frames (`--deflate`; reset for each
/// message, as the server compresses them) and how many it opened.
#[derive(Debug, Default)]
pub struct Opener {
    z: cchat::ws::deflate::Inflater,
    /// Compressed frames opened since the caller last took the count.
    pub deflated: u64,
}

/// Calls `f(opcode, payload)` on every whole frame at the front of `data`,
/// compressed ones opened first; returns how many bytes they took (the rest
/// is an incomplete frame).
#[inline]
pub fn for_each_frame(data: &[u8], opener: &mut Opener, mut f: impl FnMut(u8, &[u8])) -> Result<usize, FrameError> {
    let mut off = 0;
    while off < data.len() {
        let buf = &data[off..];
        match cchat::ws::parse_server_frame(buf) {
            Ok(Some((op, range, used))) => {
                if buf[0] & 0x80 == 0 || op == 0 {
                    return Err(FrameError::Fragmented);
                }
                if buf[0] & 0x40 != 0 {
                    // permessage-deflate (--deflate): each message on its own.
                    let text = opener.z.text(&buf[range], 1 << 24).map_err(|_| FrameError::Protocol)?;
                    f(op, text);
                    opener.deflated += 1;
                } else {
                    f(op, &buf[range]);
                }
                off += used;
            }
            Ok(None) => break,
            Err(_) => return Err(FrameError::Protocol),
        }
    }
    Ok(off)
}

/// The incomplete tail of a connection's input between reads. Reads go into
/// one buffer shared by all connections; only the few bytes of a frame cut by
/// a read boundary are kept per connection (usually none).
#[derive(Debug, Default)]
pub struct Inbox {
    pending: Vec<u8>,
}

impl Inbox {
    /// Copies the pending tail to the front of the shared buffer and returns
    /// its length: the next read goes after it.
    #[inline]
    pub fn restore(&self, shared: &mut [u8]) -> Result<usize, FrameError> {
        let n = self.pending.len();
        if n >= shared.len() {
            return Err(FrameError::TooBig);
        }
        shared[..n].copy_from_slice(&self.pending);
        Ok(n)
    }

    /// Runs `f` on every whole frame in `shared[..filled]` and keeps the tail.
    #[inline]
    pub fn take(
        &mut self,
        shared: &[u8],
        filled: usize,
        opener: &mut Opener,
        f: impl FnMut(u8, &[u8]),
    ) -> Result<(), FrameError> {
        let used = for_each_frame(&shared[..filled], opener, f)?;
        self.pending.clear();
        if used < filled {
            self.pending.extend_from_slice(&shared[used..filled]);
        } else if self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Bytes waiting for the rest of their frame.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    /// A delivery exactly as the server writes it.
    fn server_json(uid: &str, name: &str, rid: &str, msg: &str, tid: Option<&str>, seq: u64, epoch: u64) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let tid = tid.map(|t| format!(",\"tid\":{}", q(t))).unwrap_or_default();
        format!(
            r#"{{"cmd":"message","uid":{},"name":{},"type":"text","rid":{},"msg":{}{tid},"seq":{seq},"epoch":{epoch},"ts":1764000000000}}"#,
            q(uid),
            q(name),
            q(rid),
            q(msg)
        )
    }

    fn msg(due: u64, id: u32, len: usize) -> String {
        let mut v = Vec::new();
        write_msg(&mut v, due, id, len, Filler::Dots);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn reads_a_delivery() {
        let s = Scanner::default();
        let j = server_json("u1", "n1", "r7", &msg(123_456_789, 42, 64), None, 12, 1764);
        assert_eq!(
            s.classify(j.as_bytes()),
            Kind::Message(Delivery { due_ns: 123_456_789, id: 42, seq: 12, epoch: 1764 })
        );
    }

    #[test]
    fn hex_takes_lowercase_digits_only() {
        assert_eq!(hex(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(hex(b"00000000"), Some(0));
        for bad in [&b"0000000A"[..], b"0000000g", b"000000 0", b"0000000:", b"000000\xff0"] {
            assert_eq!(hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn classifies_other_frames() {
        let s = Scanner::default();
        assert_eq!(s.classify(br#"{"cmd":"error","errCode":50,"errMsg":"x"}"#), Kind::Error);
        assert_eq!(s.classify(br#"{"cmd":"login","uid":"u1","name":"n","rid":"r"}"#), Kind::Login);
        assert_eq!(s.classify(br#"{"cmd":"newUser","uid":"u1","name":"n","rid":"r"}"#), Kind::Other);
        assert_eq!(s.classify(b"hello"), Kind::Malformed);
        // A message that is not loadgen's.
        let j = server_json("u1", "n1", "r7", "hi there", None, 1, 1);
        assert_eq!(s.classify(j.as_bytes()), Kind::Malformed);
        // Truncated after seq.
        let j = server_json("u1", "n1", "r7", &msg(1, 2, 30), None, 1, 1);
        let cut = j.find("\"seq\":").unwrap() + 6;
        assert_eq!(s.classify(&j.as_bytes()[..cut]), Kind::Malformed);
    }

    #[test]
    fn the_message_json_is_what_the_server_expects() {
        let mut v = Vec::new();
        message_json(&mut v, 7, 99, 3, 30, None, Filler::Dots);
        let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(j["cmd"], "message");
        assert_eq!(j["rid"], "r7");
        assert_eq!(j["msg"].as_str().unwrap().len(), 30);
        assert_eq!(read_msg_head(j["msg"].as_str().unwrap().as_bytes()), Some((99, 3)));
        let l: serde_json::Value = serde_json::from_str(&login_json(5, 2, None)).unwrap();
        assert_eq!((l["uid"].as_str(), l["rid"].as_str()), (Some("u5"), Some("r2")));
        assert!(l.get("since").is_none());
        let l: serde_json::Value = serde_json::from_str(&login_json(5, 2, Some((9, 41)))).unwrap();
        assert_eq!((l["since"]["epoch"].as_u64(), l["since"]["seq"].as_u64()), (Some(9), Some(41)));
        let mut v = Vec::new();
        message_json(&mut v, 7, 99, 3, 30, Some(0xab), Filler::Dots);
        let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(j["mid"], "mab-3");
    }

    #[test]
    fn an_event_gives_its_place_in_the_sequence() {
        let s = Scanner::default();
        let e = br#"{"cmd":"react","rid":"r1","seq":4,"uid":"u2","emoji":"x","on":true,"ts":9,"epoch":77,"at":12}"#;
        assert_eq!(s.classify(e), Kind::Event { at: 12, epoch: 77 });
    }

    #[test]
    fn a_dup_answer_and_an_unrecovered_resume_are_told_apart() {
        let s = Scanner::default();
        let dup = br#"{"cmd":"message","uid":"u1","name":"n","type":"text","rid":"r1","msg":"x","mid":"m1-2","seq":4,"epoch":1,"ts":2,"dup":true}"#;
        assert_eq!(s.classify(dup), Kind::Dup);
        assert_eq!(
            s.classify(br#"{"cmd":"login","uid":"u","name":"n","rid":"r","recovered":false}"#),
            Kind::NotRecovered
        );
        assert_eq!(s.classify(br#"{"cmd":"login","uid":"u","name":"n","rid":"r","recovered":true}"#), Kind::Login);
    }

    fn frames(payloads: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (op, p) in payloads {
            let code = match op {
                1 => OpCode::Data(Data::Text),
                8 => OpCode::Control(Control::Close),
                _ => OpCode::Control(Control::Ping),
            };
            out.extend_from_slice(&cchat::ws::frame(code, p));
        }
        out
    }

    #[test]
    fn fragmented_and_masked_frames_are_refused() {
        let mut f = frames(&[(1, b"abc".to_vec())]);
        f[0] &= 0x7f;
        assert_eq!(for_each_frame(&f, &mut Opener::default(), |_, _| {}), Err(FrameError::Fragmented));
        let mut f = frames(&[(1, b"abc".to_vec())]);
        f[1] |= 0x80;
        assert_eq!(for_each_frame(&f, &mut Opener::default(), |_, _| {}), Err(FrameError::Protocol));
    }

    fn id_string() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:-]{1,64}"
    }

    proptest! {
        /// Whatever the sender's identity (any name, JSON-escaped by the
        /// server) and a `tid` or not, the scanner reads back exactly what
        /// was sent.
        #[test]
        fn scanner_reads_back_any_delivery(
            uid in id_string(),
            name in any::<String>(),
            rid in id_string(),
            tid in proptest::option::of(id_string()),
            due in any::<u64>(),
            id in any::<u32>(),
            len in MSG_HEAD..600,
            seq in any::<u64>(),
            epoch in any::<u64>(),
        ) {
            let s = Scanner::default();
            let j = server_json(&uid, &name, &rid, &msg(due, id, len), tid.as_deref(), seq, epoch);
            prop_assert_eq!(s.classify(j.as_bytes()), Kind::Message(Delivery { due_ns: due, id, seq, epoch }));
        }

        /// The hex decoder reads back any 64-bit value.
        #[test]
        fn hex_reads_back_any_value(v in any::<u64>()) {
            prop_assert_eq!(hex(format!("{v:016x}").as_bytes()), Some(v));
        }

        /// Any run of digits reads as `str::parse` reads it, up to where a
        /// u64 overflows, and stops at the first other byte.
        #[test]
        fn decimal_agrees_with_parse(digits in "[0-9]{0,24}", after in "[^0-9]?") {
            let text = format!("{digits}{after}");
            let expected = digits.parse::<u64>().ok().map(|v| (v, digits.len()));
            prop_assert_eq!(decimal(text.as_bytes()), expected);
        }

        /// The scanner never panics, whatever the bytes.
        #[test]
        fn scanner_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), prefix in 0usize..3) {
            let s = Scanner::default();
            let mut p = match prefix {
                0 => br#"{"cmd":"message","msg":""#.to_vec(),
                1 => br#"{"cmd":"message","uid":"u","msg":"0000000000000001000000ff"#.to_vec(),
                _ => Vec::new(),
            };
            p.extend_from_slice(&bytes);
            let _ = s.classify(&p);
        }

        /// A stream of frames cut into reads at arbitrary points yields the
        /// same frames, in order, through the shared buffer and the inbox.
        #[test]
        fn frames_survive_any_read_boundaries(
            payloads in proptest::collection::vec(
                (prop_oneof![Just(1u8), Just(8u8), Just(9u8)], proptest::collection::vec(any::<u8>(), 0..300)),
                0..20),
            cuts in proptest::collection::vec(1usize..700, 0..40),
        ) {
            // Control frames carry at most 125 bytes.
            let payloads: Vec<(u8, Vec<u8>)> = payloads
                .into_iter()
                .map(|(op, mut p)| { if op != 1 { p.truncate(125); } (op, p) })
                .collect();
            let stream = frames(&payloads);
            let mut inbox = Inbox::default();
            let mut shared = vec![0u8; 1024];
            let mut got = Vec::new();
            let mut off = 0;
            let mut cuts = cuts.into_iter();
            while off < stream.len() {
                let start = inbox.restore(&mut shared).unwrap();
                let room = shared.len() - start;
                let n = cuts.next().unwrap_or(room).min(room).min(stream.len() - off);
                shared[start..start + n].copy_from_slice(&stream[off..off + n]);
                off += n;
                inbox.take(&shared, start + n, &mut Opener::default(), |op, p| got.push((op, p.to_vec()))).unwrap();
            }
            prop_assert_eq!(inbox.pending(), 0);
            prop_assert_eq!(got, payloads);
        }
    }
}
