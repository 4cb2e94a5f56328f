//! The relay handshake: mutual authentication by the cluster secret, and
//! the keys that authenticate every frame after it. No I/O.
//!
//! ```text
//! hello  := "CCRL" version:u8 id_len:u16 node_id nonce:[u8;32]   (both sides, at once)
//! th     := SHA-256(dialer's hello ‖ acceptor's hello)           (the transcript)
//! prk    := HKDF-Extract(salt = th, ikm = secret)
//! proof  := HMAC-SHA256(HKDF-Expand(prk, "cchat relay v6 proof"), "dialer" | "acceptor")
//! keys   := HKDF-Expand(prk, "cchat relay v6 dialer to acceptor" | "... acceptor to dialer", 32)
//! ```
//!
//! The order is fixed: the dialer proves first; the acceptor checks that
//! proof and only then proves itself; the dialer checks the acceptor's.
//! Every proof is bound to both nonces, both node ids and the prover's
//! role, so a proof can neither be replayed (fresh nonces), nor forwarded
//! to a third node (its id is in the transcript), nor reflected (the two
//! roles expand different labels). A stranger that connects to two nodes
//! and hands each the other's hello gets no proof from either: both are
//! acceptors there, and an acceptor proves nothing before it has checked a
//! dialer's proof, which only a holder of the secret can make.
//!
//! After the handshake each direction has its own key, and every byte goes
//! in sealed records ([`super::secure`]) numbered by an implicit counter:
//! whoever sits on the path without the secret can neither read, alter,
//! drop, repeat nor reorder a frame without the link closing. A proxy that
//! passes the bytes through unchanged (as TCP would) is harmless.

use ring::{digest, hkdf, hmac};
use thiserror::Error;

use super::secure::{KEY_LEN, Opener, Sealer};

/// Protocol magic.
pub const MAGIC: &[u8; 4] = b"CCRL";
// The versions live with the cluster's other facts (config checks
// `--relay-max-version` against them without depending on the relay).
pub use crate::cluster::{MIN_VERSION, VERSION};
/// Length of a proof.
pub const PROOF_LEN: usize = 32;
/// Length of a hello's nonce.
pub const NONCE_LEN: usize = 32;

/// Why a handshake failed; the link is refused and the reason logged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a cchat relay (or garbage).
    #[error("bad magic: not a cchat relay peer")]
    Magic,
    /// A relay of another wire version.
    #[error("peer speaks relay version {0}, this node {MIN_VERSION} to {VERSION}")]
    Version(u8),
    /// The node id is empty, too long or not UTF-8.
    #[error("bad node id")]
    NodeId,
    /// The peer does not know the cluster secret.
    #[error("wrong proof: peer does not know the cluster secret")]
    Proof,
    /// The peer names this node itself (a node listed as its own peer, or
    /// this node's own hello handed back to it).
    #[error("peer is this node")]
    SelfLink,
}

/// Which end of the TCP connection a node is: the roles prove under
/// different labels, so neither's proof can stand for the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection (to a `--peer`): proves first.
    Dialer,
    /// Accepted it on `--relay-listen`: proves only after checking the dialer.
    Acceptor,
}

impl Role {
    fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }
}

/// One side's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The newest relay version the node speaks.
    pub version: u8,
    /// The node's id.
    pub node_id: String,
    /// Fresh random bytes.
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    /// A hello with a fresh nonce.
    pub fn new(node_id: &str) -> Hello {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        Hello { version: VERSION, node_id: node_id.to_owned(), nonce }
    }

    /// The version a link between this hello's node and `peer`'s runs at.
    pub fn wire(&self, peer: &Hello) -> u8 {
        self.version.min(peer.version)
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 1 + 2 + self.node_id.len() + NONCE_LEN);
        v.extend_from_slice(MAGIC);
        v.push(self.version);
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
        let version = buf[4];
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(HandshakeError::Version(version));
        }
        let n = u16::from_be_bytes([buf[5], buf[6]]) as usize;
        if n == 0 || n > 256 {
            return Err(HandshakeError::NodeId);
        }
        if buf.len() < 7 + n + NONCE_LEN {
            return Ok(None);
        }
        let node_id = std::str::from_utf8(&buf[7..7 + n]).map_err(|_| HandshakeError::NodeId)?.to_owned();
        let nonce = buf[7 + n..7 + n + NONCE_LEN].try_into().expect("length checked");
        Ok(Some((Hello { version, node_id, nonce }, 7 + n + NONCE_LEN)))
    }
}

/// What both sides derive from the two hellos and the secret: the proofs
/// each role must show and the keys of the two directions.
pub struct Transcript {
    prk: hkdf::Prk,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transcript")
    }
}

/// An HKDF output length (ring asks for it as a type).
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Transcript {
    /// The transcript of a handshake between `dialer` and `acceptor`
    /// (the same on both ends).
    pub fn new(secret: &[u8], dialer: &Hello, acceptor: &Hello) -> Transcript {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&dialer.encode());
        ctx.update(&acceptor.encode());
        let th = ctx.finish();
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, th.as_ref()).extract(secret);
        Transcript { prk }
    }

    /// The transcript from one side's view: its own hello, the peer's, and
    /// which end it is.
    pub fn from_side(secret: &[u8], role: Role, own: &Hello, peer: &Hello) -> Transcript {
        match role {
            Role::Dialer => Transcript::new(secret, own, peer),
            Role::Acceptor => Transcript::new(secret, peer, own),
        }
    }

    fn expand(&self, label: &[u8], out: &mut [u8]) {
        self.prk.expand(&[label], Len(out.len())).and_then(|okm| okm.fill(out)).expect("HKDF-SHA256 expands 32 bytes");
    }

    fn proof_key(&self) -> hmac::Key {
        let okm = self.prk.expand(&[b"cchat relay v6 proof"], hmac::HMAC_SHA256).expect("HKDF expands an HMAC key");
        hmac::Key::from(okm)
    }

    fn label(role: Role) -> &'static [u8] {
        match role {
            Role::Dialer => b"dialer",
            Role::Acceptor => b"acceptor",
        }
    }

    /// The proof the side in `role` sends.
    pub fn proof(&self, role: Role) -> [u8; PROOF_LEN] {
        hmac::sign(&self.proof_key(), Self::label(role)).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// Checks the proof of the peer, which plays `peer_role`, in constant time.
    pub fn verify(&self, peer_role: Role, proof: &[u8]) -> Result<(), HandshakeError> {
        hmac::verify(&self.proof_key(), Self::label(peer_role), proof).map_err(|_| HandshakeError::Proof)
    }

    /// The record sealer (this side's direction) and opener (the peer's)
    /// of the side in `role`.
    pub fn keys(&self, role: Role) -> (Sealer, Opener) {
        let label = |r: Role| -> &'static [u8] {
            match r {
                Role::Dialer => b"cchat relay v6 dialer to acceptor",
                Role::Acceptor => b"cchat relay v6 acceptor to dialer",
            }
        };
        let (mut out, mut inn) = ([0u8; KEY_LEN], [0u8; KEY_LEN]);
        self.expand(label(role), &mut out);
        self.expand(label(role.other()), &mut inn);
        (Sealer::new(&out), Opener::new(&inn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_sides_agree_only_with_the_same_secret() {
        let (d, a) = (Hello::new("a"), Hello::new("b"));
        let td = Transcript::from_side(b"s3cret", Role::Dialer, &d, &a);
        let ta = Transcript::from_side(b"s3cret", Role::Acceptor, &a, &d);
        assert_eq!(ta.verify(Role::Dialer, &td.proof(Role::Dialer)), Ok(()));
        assert_eq!(td.verify(Role::Acceptor, &ta.proof(Role::Acceptor)), Ok(()));
        let other = Transcript::from_side(b"other", Role::Dialer, &d, &a);
        assert_eq!(ta.verify(Role::Dialer, &other.proof(Role::Dialer)), Err(HandshakeError::Proof));
        // A proof is bound to both nonces: replaying it to a new hello fails.
        let a2 = Hello::new("b");
        let ta2 = Transcript::from_side(b"s3cret", Role::Acceptor, &a2, &d);
        assert_eq!(ta2.verify(Role::Dialer, &td.proof(Role::Dialer)), Err(HandshakeError::Proof));
    }

    /// Reflection: the acceptor's proof is no dialer's proof over the same
    /// hellos, and the other way round.
    #[test]
    fn a_proof_cannot_be_reflected_to_the_other_role() {
        let (d, a) = (Hello::new("a"), Hello::new("b"));
        let t = Transcript::new(b"s3cret", &d, &a);
        assert_eq!(t.verify(Role::Dialer, &t.proof(Role::Acceptor)), Err(HandshakeError::Proof));
        assert_eq!(t.verify(Role::Acceptor, &t.proof(Role::Dialer)), Err(HandshakeError::Proof));
        // Swapping the hellos (the splice: each node given the other's
        // hello as the dialer's) gives another transcript altogether.
        let swapped = Transcript::new(b"s3cret", &a, &d);
        assert_eq!(swapped.verify(Role::Dialer, &t.proof(Role::Dialer)), Err(HandshakeError::Proof));
    }

    /// A proof names both node ids: one made for a link to "b" does not
    /// open a link to "c", even with the same nonces.
    #[test]
    fn a_proof_is_bound_to_both_node_ids() {
        let d = Hello::new("a");
        let b = Hello::new("b");
        let c = Hello { version: VERSION, node_id: "c".into(), nonce: b.nonce };
        let tb = Transcript::new(b"s3cret", &d, &b);
        let tc = Transcript::new(b"s3cret", &d, &c);
        assert_eq!(tc.verify(Role::Dialer, &tb.proof(Role::Dialer)), Err(HandshakeError::Proof));
    }

    #[test]
    fn the_two_directions_have_their_own_keys() {
        let (d, a) = (Hello::new("a"), Hello::new("b"));
        let t = Transcript::new(b"s3cret", &d, &a);
        let (mut d_seal, mut d_open) = t.keys(Role::Dialer);
        let (mut a_seal, mut a_open) = t.keys(Role::Acceptor);
        let mut wire = Vec::new();
        d_seal.seal(b"to the acceptor", &mut wire);
        let mut plain = bytes::BytesMut::new();
        let mut input = bytes::BytesMut::from(&wire[..]);
        a_open.open(&mut input, &mut plain).unwrap();
        assert_eq!(&plain[..], b"to the acceptor");
        // The dialer cannot open its own direction's record.
        let mut input = bytes::BytesMut::from(&wire[..]);
        assert!(d_open.open(&mut input, &mut plain).is_err());
        let mut wire = Vec::new();
        a_seal.seal(b"back", &mut wire);
        let mut plain = bytes::BytesMut::new();
        d_open.open(&mut bytes::BytesMut::from(&wire[..]), &mut plain).unwrap();
        assert_eq!(&plain[..], b"back");
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
        // The versions this build speaks are taken, the link at the lower.
        for v in MIN_VERSION..=VERSION {
            let mut old = enc.clone();
            old[4] = v;
            let (h, _) = Hello::decode(&old).unwrap().unwrap();
            assert_eq!(h.version, v);
            assert_eq!(Hello::new("me").wire(&h), v);
        }
        // Another version, older (5: proofs without roles, plain frames) or newer, is refused.
        for other in [1, MIN_VERSION - 1, VERSION + 1] {
            let mut v = enc.clone();
            v[4] = other;
            assert_eq!(Hello::decode(&v), Err(HandshakeError::Version(other)));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Hello::decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Hello::decode(&with_magic);
        }
    }
}
