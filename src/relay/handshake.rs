//! The relay handshake: each side names itself and proves it knows the
//! cluster secret, without sending it. No I/O.
//!
//! ```text
//! hello := "CCRL" version:u8 id_len:u16 node_id nonce:[u8;16]      (both sides, at once)
//! proof := HMAC-SHA256(secret, "cchat-relay-v1" own_hello peer_hello)  (32 bytes, both sides)
//! ```
//!
//! Each side sends its hello, reads the peer's, sends its proof over both
//! hellos (its own first) and checks the peer's proof over the same two in
//! the peer's order. Fresh nonces on both sides make a recorded handshake
//! useless for replay. A peer with another version, a bad magic, or a wrong
//! proof is refused.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Protocol magic.
pub const MAGIC: &[u8; 4] = b"CCRL";
/// Wire version spoken by this build (2: links carry traffic only once
/// activated; 3: roster pages and history before a seq, see [`super::codec`];
/// 4: the server API's disconnect; 5: its questions to other nodes).
pub const VERSION: u8 = 5;
/// Length of a proof.
pub const PROOF_LEN: usize = 32;

/// Why a handshake failed; the link is refused and the reason logged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a cchat relay (or garbage).
    #[error("bad magic: not a cchat relay peer")]
    Magic,
    /// A relay of another wire version.
    #[error("peer speaks relay version {0}, this node {VERSION}")]
    Version(u8),
    /// The node id is empty, too long or not UTF-8.
    #[error("bad node id")]
    NodeId,
    /// The peer does not know the cluster secret.
    #[error("wrong proof: peer does not know the cluster secret")]
    Proof,
    /// The peer names this node itself (a node listed as its own peer).
    #[error("peer is this node")]
    SelfLink,
}

/// One side's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The node's id.
    pub node_id: String,
    /// Fresh random bytes.
    pub nonce: [u8; 16],
}

impl Hello {
    /// A hello with a fresh nonce.
    pub fn new(node_id: &str) -> Hello {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        Hello { node_id: node_id.to_owned(), nonce }
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 1 + 2 + self.node_id.len() + 16);
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.extend_from_slice(&(self.node_id.len() as u16).to_be_bytes());
        v.extend_from_slice(self.node_id.as_bytes());
        v.extend_from_slice(&self.nonce);
        v
    }

    /// Parses a hello at the front of `buf`: Ok(None) while incomplete.
    pub fn decode(buf: &[u8]) -> Result<Option<(Hello, usize)>, HandshakeError> {
        let have = buf.len().min(4);
        if buf[..have] != MAGIC[..have] {
            return Err(HandshakeError::Magic);
        }
        if buf.len() < 7 {
            return Ok(None);
        }
        if buf[4] != VERSION {
            return Err(HandshakeError::Version(buf[4]));
        }
        let n = u16::from_be_bytes([buf[5], buf[6]]) as usize;
        if n == 0 || n > 256 {
            return Err(HandshakeError::NodeId);
        }
        if buf.len() < 7 + n + 16 {
            return Ok(None);
        }
        let node_id = std::str::from_utf8(&buf[7..7 + n]).map_err(|_| HandshakeError::NodeId)?.to_owned();
        let nonce = buf[7 + n..7 + n + 16].try_into().unwrap();
        Ok(Some((Hello { node_id, nonce }, 7 + n + 16)))
    }
}

/// The proof this side sends: over its own hello, then the peer's.
pub fn proof(secret: &str, own: &Hello, peer: &Hello) -> [u8; PROOF_LEN] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"cchat-relay-v1");
    mac.update(&own.encode());
    mac.update(&peer.encode());
    mac.finalize().into_bytes().into()
}

/// Checks the peer's proof (computed over the peer's hello first), in constant time.
pub fn verify(secret: &str, own: &Hello, peer: &Hello, their_proof: &[u8]) -> Result<(), HandshakeError> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"cchat-relay-v1");
    mac.update(&peer.encode());
    mac.update(&own.encode());
    mac.verify_slice(their_proof).map_err(|_| HandshakeError::Proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_sides_agree_only_with_the_same_secret() {
        let a = Hello::new("a");
        let b = Hello::new("b");
        let pa = proof("s3cret", &a, &b);
        assert_eq!(verify("s3cret", &b, &a, &pa), Ok(()));
        assert_eq!(verify("other", &b, &a, &pa), Err(HandshakeError::Proof));
        // A proof is bound to both nonces: replaying it to a new hello fails.
        let b2 = Hello::new("b");
        assert_eq!(verify("s3cret", &b2, &a, &pa), Err(HandshakeError::Proof));
    }

    #[test]
    fn hello_round_trip_and_refusals() {
        let h = Hello::new("node-1:9503");
        let enc = h.encode();
        assert_eq!(Hello::decode(&enc).unwrap(), Some((h, enc.len())));
        for cut in 0..enc.len() {
            assert_eq!(Hello::decode(&enc[..cut]).unwrap(), None);
        }
        assert_eq!(Hello::decode(b"GET / HTTP/1.1"), Err(HandshakeError::Magic));
        // Another version, older (1: links not activated) or newer, is refused.
        for other in [1, VERSION + 1] {
            let mut v = enc.clone();
            v[4] = other;
            assert_eq!(Hello::decode(&v), Err(HandshakeError::Version(other)));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Hello::decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Hello::decode(&with_magic);
        }
    }
}
