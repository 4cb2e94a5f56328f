//! A test-side relay peer: a plain TCP socket that runs the relay handshake
//! by the book (as a dialer) and then reads and writes sealed relay frames.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cchat::relay::handshake::{Hello, PROOF_LEN, Role, Transcript};
use cchat::relay::secure::{Opener, Sealer};

/// One fake node's link to a real node.
pub struct FakePeer {
    pub stream: TcpStream,
    sealer: Sealer,
    opener: Opener,
    /// Sealed bytes read, not yet opened.
    cipher: BytesMut,
    /// Opened bytes, not yet split into frames.
    plain: BytesMut,
}

/// Reads until `buf` holds at least `n` bytes.
pub fn read_at_least(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        let mut b = [0u8; 512];
        let got = s.read(&mut b).expect("read during the relay handshake");
        assert!(got > 0, "relay closed during the handshake");
        buf.extend_from_slice(&b[..got]);
    }
}

/// Reads a hello off `s` (with `buf` holding what was read already).
pub fn read_hello(s: &mut TcpStream, buf: &mut Vec<u8>) -> Hello {
    loop {
        if let Some((h, used)) = Hello::decode(buf).unwrap() {
            buf.drain(..used);
            return h;
        }
        let n = buf.len() + 1;
        read_at_least(s, buf, n);
    }
}

impl FakePeer {
    /// Dials `relay` as node `name` with the cluster `secret`.
    pub fn connect(relay: &str, name: &str, secret: &str, rcvbuf: Option<usize>) -> FakePeer {
        FakePeer::connect_at(relay, name, secret, rcvbuf, cchat::relay::handshake::VERSION)
    }

    /// As [`FakePeer::connect`], saying it speaks relay `version` at most
    /// (a node not upgraded yet).
    pub fn connect_at(relay: &str, name: &str, secret: &str, rcvbuf: Option<usize>, version: u8) -> FakePeer {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.connect(&relay.parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let own = Hello { version, ..Hello::new(name) };
        stream.write_all(&own.encode()).unwrap();
        let mut buf = Vec::new();
        let theirs = read_hello(&mut stream, &mut buf);
        let t = Transcript::from_side(secret.as_bytes(), Role::Dialer, &own, &theirs);
        stream.write_all(&t.proof(Role::Dialer)).unwrap();
        read_at_least(&mut stream, &mut buf, PROOF_LEN);
        t.verify(Role::Acceptor, &buf[..PROOF_LEN]).expect("the node proves it knows the secret");
        buf.drain(..PROOF_LEN);
        let (sealer, opener) = t.keys(Role::Dialer);
        FakePeer { stream, sealer, opener, cipher: BytesMut::from(&buf[..]), plain: BytesMut::new() }
    }

    /// Sends frames (already encoded by the relay codec) in one sealed record.
    pub fn send(&mut self, frames: &[u8]) -> std::io::Result<()> {
        let mut rec = Vec::new();
        self.sealer.seal(frames, &mut rec);
        self.stream.write_all(&rec)
    }

    /// Reads frame types until EOF or `until` passes; returns them and
    /// whether EOF (or a reset) was reached.
    pub fn frame_types(&mut self, until: Instant) -> (Vec<u8>, bool) {
        let mut types = Vec::new();
        loop {
            self.opener.open(&mut self.cipher, &mut self.plain).expect("the node's records open");
            while self.plain.len() >= 5 {
                let len = u32::from_be_bytes(self.plain[..4].try_into().unwrap()) as usize;
                if self.plain.len() < 4 + len {
                    break;
                }
                types.push(self.plain[4]);
                let _ = self.plain.split_to(4 + len);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (types, false);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut b = [0u8; 4096];
            match self.stream.read(&mut b) {
                Ok(0) => return (types, true),
                Ok(n) => self.cipher.extend_from_slice(&b[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return (types, false);
                }
                Err(_) => return (types, true),
            }
        }
    }
}
