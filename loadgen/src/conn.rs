//! One client connection: its socket, where it is in its life, and what it
//! has seen of its room's sequence. The event loop in [`crate::worker`]
//! drives it; the protocol pieces here (upgrade request and reply, frame
//! writing) are plain functions.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::scan::Inbox;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet (or waiting to retry).
    Idle,
    /// Non-blocking connect in progress.
    Connecting,
    /// Upgrade request sent; waiting for `101 Switching Protocols`.
    Upgrading,
    /// Login sent; waiting for the acknowledgement.
    LoggingIn,
    /// Logged in: receiving (and sending) room messages.
    Ready,
    /// Gone: closed by the server, reset, or failed for good.
    Closed,
}

/// The fixed `Sec-WebSocket-Key` loadgen sends; the reply must carry its
/// accept value. (A load generator needs no fresh nonce per connection: the
/// key only proves the server speaks WebSocket; it must still be 16 bytes
/// in base64, which the server checks.)
pub const WS_KEY: &str = "bG9hZGdlbi1jY2hhdGtleQ==";

/// The HTTP upgrade request; `deflate` offers permessage-deflate without
/// context takeover (loadgen inflates each message on its own).
pub fn upgrade_request(host: &str, path: &str, deflate: bool) -> Vec<u8> {
    let ext = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n"
    } else {
        ""
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// Outcome of reading the server's reply to the upgrade.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Not all of the head has arrived yet.
    Incomplete,
    /// Upgraded; frames start at this offset.
    Done(usize),
    /// Refused or broken: the status line (or a reason).
    Refused(String),
}

/// Reads the reply head in `buf`: a 101 with the right accept key.
pub fn parse_upgrade(buf: &[u8], accept: &str) -> Upgrade {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 8192 {
            return Upgrade::Refused("reply head too long".into());
        }
        return Upgrade::Incomplete;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Upgrade::Refused(status.to_string());
    }
    let ok = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept)
    });
    if !ok {
        return Upgrade::Refused("101 without the right Sec-WebSocket-Accept".into());
    }
    Upgrade::Done(end + 4)
}

/// Writes a masked client text frame holding `payload`.
pub fn text_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    cchat::ws::client_frame(out, 1, payload, mask);
}

/// Opens a non-blocking TCP socket and starts connecting to `to`, from
/// `from` if given (any port: the kernel picks it at connect time, per
/// destination, thanks to `IP_BIND_ADDRESS_NO_PORT`).
pub fn start_connect(to: SocketAddr, from: Option<SocketAddrV4>, rcvbuf: Option<usize>) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(to), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_tcp_nodelay(true)?;
    crate::sys::enable_rx_timestamps(sock.as_raw_fd())?;
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b)?;
    }
    if let Some(from) = from {
        // Without this, bind() would reserve a port for the source address
        // across all destinations and run out after ~28k sockets per address.
        let one: libc::c_int = 1;
        // SAFETY: valid fd, option value points to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SockAddr::from(from))?;
    }
    match sock.connect(&SockAddr::from(to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock)
}

/// What one delivery's `seq` says about a member's view of its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next one (or the first one seen, or the first of a new epoch).
    InOrder,
    /// The epoch changed: the room's sequence restarted.
    NewEpoch,
    /// `seq` jumped past messages that are neither delivered nor the member's own.
    Gap {
        /// The previous `seq`.
        from: u64,
        /// This `seq`.
        to: u64,
        /// Messages missing in between.
        missing: u64,
    },
    /// `seq` repeated or went back: a duplicate or a reordering.
    Backwards {
        /// The previous `seq`.
        from: u64,
        /// This `seq`.
        to: u64,
    },
}

/// Checks that a member sees its room's `seq` rise by one per message.
///
/// The server does not echo a sender's own message, so in the sender's view
/// each of its own messages is a skipped `seq`: a jump is a gap only beyond
/// the member's own messages not yet stepped over. (An own message sequenced
/// before the first delivery the member saw stays counted and can excuse one
/// later gap; the delivery count, which does not depend on this, still sees
/// the loss.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCheck {
    epoch: u64,
    last: Option<u64>,
    own_pending: u32,
}

impl SeqCheck {
    /// The member sent a message to its room.
    pub fn sent_own(&mut self) {
        self.own_pending += 1;
    }

    /// Where this member's view stands, `(epoch, seq)` of the last message
    /// seen (own ones stepped over included): what a resuming login names.
    pub fn since(&self) -> Option<(u64, u64)> {
        self.last.map(|l| (self.epoch, l))
    }

    /// One of the member's own messages arrived (replayed by a resume):
    /// in the sequence like any other, and no longer to be stepped over.
    pub fn observe_own(&mut self, seq: u64, epoch: u64) -> SeqVerdict {
        let v = self.observe(seq, epoch);
        self.own_pending = self.own_pending.saturating_sub(1);
        v
    }

    /// A delivery with `seq` in `epoch` arrived.
    #[inline]
    pub fn observe(&mut self, seq: u64, epoch: u64) -> SeqVerdict {
        let mut verdict = SeqVerdict::InOrder;
        if epoch != self.epoch {
            if self.last.is_some() {
                verdict = SeqVerdict::NewEpoch;
            }
            self.epoch = epoch;
            self.last = None;
        }
        if let Some(last) = self.last {
            if seq <= last {
                verdict = SeqVerdict::Backwards { from: last, to: seq };
            } else if seq > last + 1 {
                let skipped = seq - last - 1;
                if skipped <= self.own_pending as u64 {
                    self.own_pending -= skipped as u32;
                } else {
                    let missing = skipped - self.own_pending as u64;
                    self.own_pending = 0;
                    verdict = SeqVerdict::Gap { from: last, to: seq, missing };
                }
            }
        }
        self.last = Some(seq);
        verdict
    }
}

/// A client connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket (None when idle or closed).
    pub sock: Option<Socket>,
    /// Global client number.
    pub client: u32,
    /// Its room.
    pub room: u32,
    /// Life state.
    pub state: State,
    /// Incomplete input: the reply head while upgrading, then a cut frame.
    pub inbox: Inbox,
    /// Upgrade reply bytes so far (only while upgrading).
    pub head: Vec<u8>,
    /// Output the socket did not take yet (usually empty).
    pub out: Vec<u8>,
    /// This member's view of its room's sequence.
    pub seq: SeqCheck,
    /// Connect attempts so far.
    pub attempts: u32,
    /// The schedule's number of the last message this client sent (a
    /// refusal answers it).
    pub last_sent: Option<u32>,
    /// TLS state on a wss:// target.
    pub tls: Option<Box<rustls::ClientConnection>>,
    /// `--churn`: the messages this client sent lately, `(id, due, sent
    /// at)`, sent again under their `mid` after a reconnect.
    pub recent: std::collections::VecDeque<(u32, u64, u64)>,
    /// `--churn`: messages that fell due while reconnecting, `(id, due)`.
    pub waiting: Vec<(u32, u64)>,
    /// `--churn`: when the connection was dropped (ns), while it resumes.
    pub dropped_ns: Option<u64>,
    /// `--follow-drain`: the node (index into --url) a drain moved it to,
    /// instead of its room's.
    pub moved_to: Option<u16>,
    /// `--reactions`: the seq of the last room message seen.
    pub last_message: Option<u64>,
    /// `--reactions`: the last reaction was an `on` (the next takes it back).
    pub reacted: bool,
    /// `--edits`: the seq of its own last message, as a client of the same
    /// worker saw it (a sender gets no echo of its own).
    pub own_last: Option<u64>,
}

impl Conn {
    /// A connection not started yet.
    pub fn new(client: u32, room: u32) -> Conn {
        Conn {
            sock: None,
            client,
            room,
            state: State::Idle,
            inbox: Inbox::default(),
            head: Vec::new(),
            out: Vec::new(),
            seq: SeqCheck::default(),
            attempts: 0,
            last_sent: None,
            tls: None,
            recent: std::collections::VecDeque::new(),
            waiting: Vec::new(),
            dropped_ns: None,
            moved_to: None,
            last_message: None,
            reacted: false,
            own_last: None,
        }
    }

    /// The socket's fd (-1 when there is none).
    pub fn fd(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// Forgets the socket and input state (the fd closes on drop, which
    /// also removes it from epoll).
    pub fn reset(&mut self, state: State) {
        self.sock = None;
        self.state = state;
        self.inbox = Inbox::default();
        self.head = Vec::new();
        self.out = Vec::new();
        self.tls = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_reply_is_checked() {
        let accept = tungstenite::handshake::derive_accept_key(WS_KEY.as_bytes());
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\nab"
        );
        let n = ok.len() - 2;
        assert_eq!(parse_upgrade(ok.as_bytes(), &accept), Upgrade::Done(n));
        assert_eq!(parse_upgrade(&ok.as_bytes()[..20], &accept), Upgrade::Incomplete);
        let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(parse_upgrade(busy, &accept), Upgrade::Refused(s) if s.contains("503")));
        let wrong = ok.replace(&accept, "nope");
        assert!(matches!(parse_upgrade(wrong.as_bytes(), &accept), Upgrade::Refused(_)));
    }

    #[test]
    fn seq_check_allows_own_messages_only() {
        let mut s = SeqCheck::default();
        assert_eq!(s.observe(41, 7), SeqVerdict::InOrder);
        assert_eq!(s.observe(42, 7), SeqVerdict::InOrder);
        // Two own messages take 43 and 44.
        s.sent_own();
        s.sent_own();
        assert_eq!(s.observe(45, 7), SeqVerdict::InOrder);
        assert_eq!(s.observe(47, 7), SeqVerdict::Gap { from: 45, to: 47, missing: 1 });
        assert_eq!(s.observe(47, 7), SeqVerdict::Backwards { from: 47, to: 47 });
        assert_eq!(s.observe(46, 7), SeqVerdict::Backwards { from: 47, to: 46 });
        // One own message, but two skipped: one is missing.
        s.sent_own();
        assert_eq!(s.observe(49, 7), SeqVerdict::Gap { from: 46, to: 49, missing: 1 });
        // A new epoch restarts the sequence anywhere.
        assert_eq!(s.observe(1, 8), SeqVerdict::NewEpoch);
        assert_eq!(s.observe(2, 8), SeqVerdict::InOrder);
    }

    #[test]
    fn request_names_host_and_path() {
        let r = String::from_utf8(upgrade_request("127.0.0.1:9", "/x", false)).unwrap();
        assert!(r.starts_with("GET /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }
}
