//! Reaching peers: the dial loop with its backoff, and the handshake both
//! ends of a new link run.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::handshake::{self, Hello};
use super::link::run_link;
use super::{FIRST_ROUND, Relay};
use crate::node::Node;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_ROUND_RETRY: Duration = Duration::from_millis(20);

pub(super) async fn dial_loop(relay: Rc<Relay>, addr: SocketAddr) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if relay.node.shutdown.load(Relaxed) {
            return;
        }
        let known = relay.dialed.borrow().get(&addr).copied();
        // Which node listens at `addr` is learnt only from a dial of ours
        // that got through. Until then, once this node has as many live
        // links as it has peers, every peer has reached it by its own dial:
        // a late dial of ours would only make a second link that the pair's
        // deciding node closes unused, so it is not made.
        let all_linked = known.is_none() && relay.live_links() >= relay.node.cfg.peers.len();
        if known.is_some_and(|idx| relay.up(idx)) || all_linked {
            Timer::new(Duration::from_millis(200)).await;
            continue;
        }
        if let Ok(stream) = TcpStream::connect_timeout(addr, Duration::from_secs(2)).await
            && run_link(relay.clone(), stream, Some(addr)).await
        {
            backoff = Duration::from_millis(100);
        }
        if relay.started.elapsed() < FIRST_ROUND {
            // Peers started at about the same time are still binding their
            // relay port: try again soon, so the mesh forms in milliseconds.
            Timer::new(FIRST_ROUND_RETRY).await;
            continue;
        }
        Timer::new(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Exchanges hellos and proofs. Returns the peer's name and any bytes read
/// past the handshake.
pub(super) async fn shake(stream: &mut TcpStream, node: &Node) -> Result<(String, BytesMut), String> {
    let secret = node.cfg.cluster_secret.clone().unwrap_or_default();
    let own = Hello::new(&node.cfg.node_id);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
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
        return Err(handshake::HandshakeError::SelfLink.to_string());
    }
    stream.write_all(&handshake::proof(&secret, &own, &peer)).await.map_err(|e| e.to_string())?;
    while buf.len() < handshake::PROOF_LEN {
        read_more(stream, &mut buf).await?;
    }
    let proof = buf.split_to(handshake::PROOF_LEN);
    handshake::verify(&secret, &own, &peer, &proof).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(None);
    Ok((peer.node_id, buf))
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
