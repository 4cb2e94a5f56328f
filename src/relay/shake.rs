//! The handshake on a new link's socket: the I/O around [`super::handshake`].

use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::handshake::{HandshakeError, Hello, PROOF_LEN, Role, Transcript};
use super::secure::{Opener, Sealer};
use crate::node::Node;

/// The whole handshake must finish within this, or the socket is closed.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A handshake that succeeded.
pub(super) struct Shaken {
    /// The peer's node id.
    pub(super) peer: String,
    /// The relay version the link runs at (the lower of the two).
    pub(super) wire: u8,
    /// Bytes read past the handshake: the first sealed records.
    pub(super) rest: BytesMut,
    pub(super) sealer: Sealer,
    pub(super) opener: Opener,
}

/// Runs the handshake as `role`, bounded by [`HANDSHAKE_TIMEOUT`].
pub(super) async fn shake(stream: &mut TcpStream, node: &Node, role: Role) -> Result<Shaken, String> {
    let timeout = async {
        Timer::new(HANDSHAKE_TIMEOUT).await;
        Err("handshake timed out".to_owned())
    };
    futures_lite::future::or(exchange(stream, node, role), timeout).await
}

async fn exchange(stream: &mut TcpStream, node: &Node, role: Role) -> Result<Shaken, String> {
    let secret = node.cfg.cluster.cluster_secret.clone().unwrap_or_default();
    let own = Hello { version: node.cfg.cluster.relay_max_version, ..Hello::new(&node.cfg.cluster.node_id) };
    stream.write_all(&own.encode()).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(512);
    let (peer, used) = loop {
        if let Some(h) = Hello::decode(&buf).map_err(|e| e.to_string())? {
            break h;
        }
        read_more(stream, &mut buf).await?;
    };
    let _ = buf.split_to(used);
    if peer.node_id == own.node_id {
        return Err(HandshakeError::SelfLink.to_string());
    }
    let t = Transcript::from_side(secret.as_bytes(), role, &own, &peer);
    match role {
        Role::Dialer => {
            stream.write_all(&t.proof(Role::Dialer)).await.map_err(|e| e.to_string())?;
            let proof = read_proof(stream, &mut buf).await?;
            t.verify(Role::Acceptor, &proof).map_err(|e| e.to_string())?;
        }
        Role::Acceptor => {
            // Nothing is proved to a peer that has not proved itself.
            let proof = read_proof(stream, &mut buf).await?;
            t.verify(Role::Dialer, &proof).map_err(|e| e.to_string())?;
            stream.write_all(&t.proof(Role::Acceptor)).await.map_err(|e| e.to_string())?;
        }
    }
    let (sealer, opener) = t.keys(role);
    let wire = own.wire(&peer);
    Ok(Shaken { peer: peer.node_id, wire, rest: buf, sealer, opener })
}

async fn read_proof(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<BytesMut, String> {
    while buf.len() < PROOF_LEN {
        read_more(stream, buf).await?;
    }
    Ok(buf.split_to(PROOF_LEN))
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), String> {
    let len = buf.len();
    if len > 4096 {
        return Err("handshake too long".into());
    }
    buf.resize(len + 512, 0);
    match stream.read(&mut buf[len..]).await {
        Ok(0) => Err("closed during handshake".into()),
        Ok(n) => {
            buf.truncate(len + n);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}
