//! Reaching peers: the dial loop with its backoff.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::link::run_link;
use super::{FIRST_ROUND, Relay};
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
        let all_linked = known.is_none() && relay.live_links() >= relay.target_count();
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
