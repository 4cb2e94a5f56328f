//! Admission: sockets still in their handshake (TLS and the HTTP upgrade),
//! and the token checks of logins per address.
//!
//! Handshakes are kept oldest first: when the node runs out of descriptors they are the first shed,
//! before any connection that upgraded, once they have taken longer than
//! [`SHED_AFTER`] (a real handshake takes milliseconds; shedding the
//! youngest would only close each newcomer for the next one in the backlog).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::Shard;
use crate::protocol::{Command, ERR_INVALID, ProtoError};

/// A handshake older than this may be shed for a descriptor.
pub(crate) const SHED_AFTER: Duration = Duration::from_secs(1);

/// The signal one handshake waits on besides its socket and its deadline.
#[derive(Debug, Default)]
pub(crate) struct ShedSignal {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ShedSignal {
    /// Resolves once the shard sheds this handshake.
    pub(crate) async fn fired(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The handshakes of one shard, in the order they began.
#[derive(Debug, Default)]
pub(crate) struct Handshakes {
    next: Cell<u64>,
    open: RefCell<BTreeMap<u64, (Instant, Rc<ShedSignal>)>>,
}

impl Handshakes {
    /// Registers a handshake; it is forgotten when the returned ticket drops.
    pub(crate) fn enter(&self) -> Ticket<'_> {
        let n = self.next.get();
        self.next.set(n + 1);
        let signal = Rc::new(ShedSignal::default());
        self.open.borrow_mut().insert(n, (Instant::now(), signal.clone()));
        Ticket { of: self, n, signal }
    }

    /// Sheds the oldest handshake if it began before `now - SHED_AFTER`.
    pub(crate) fn shed_oldest(&self, now: Instant) -> bool {
        let mut open = self.open.borrow_mut();
        match open.first_entry() {
            Some(e) if now.duration_since(e.get().0) >= SHED_AFTER => {
                e.remove().1.fire();
                true
            }
            _ => false,
        }
    }

    /// Handshakes under way.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.borrow().len()
    }
}

/// A handshake's place on the list.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    of: &'a Handshakes,
    n: u64,
    /// Fired when the shard sheds it.
    pub(crate) signal: Rc<ShedSignal>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.of.open.borrow_mut().remove(&self.n);
    }
}

static LOGIN_LOG: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// Takes a token check out of the address's budget when `cmd` is a
/// login whose token is not known yet on a connection not logged in:
/// Ok(the address charged), or the refusal.
pub(super) fn login_attempt(sh: &Shard, key: u32, cmd: &Command) -> Result<Option<IpAddr>, ProtoError> {
    let (Some(v), Command::Login { token: Some(token), .. }) = (&sh.node.verifier, cmd) else {
        return Ok(None);
    };
    let fd = match sh.conns.borrow().get(key) {
        Some(e) if !e.session.logged_in() => e.fd,
        _ => return Ok(None),
    };
    if v.is_cached(token) {
        return Ok(None);
    }
    let Some(ip) = super::conns::peer_ip(fd) else { return Ok(None) };
    if sh.node.login_attempts.take(ip, Instant::now()) {
        return Ok(Some(ip));
    }
    sh.node.stats.shards[sh.id].login_attempts_refused.fetch_add(1, Relaxed);
    if let Some(held) = LOGIN_LOG.due() {
        tracing::warn!(%ip, held_back = held, "too many login attempts from this address");
    }
    Err(ProtoError::new(ERR_INVALID, "too many login attempts"))
}

/// Close code 1013 (RFC 6455 registry: "Try Again Later").
const TRY_AGAIN_LATER: u16 = 1013;

/// Accept failed for want of a descriptor: closes the socket of this
/// shard that has waited longest in its handshake (TLS, HTTP upgrade),
/// if that is over a second, or else the connection that has waited longest without logging
/// in, so that the descriptor goes to someone who may. False when there
/// is none.
pub(crate) fn shed_one_unauthenticated(sh: &Shard) -> bool {
    if sh.handshakes.shed_oldest(Instant::now()) {
        sh.stats().shed_connections.fetch_add(1, Relaxed);
        return true;
    }
    let mut conns = sh.conns.borrow_mut();
    if conns.iter().any(|(_, e)| e.out.closing().is_some()) {
        // A descriptor is about to be freed already; accept will have it
        // on its next try. Shedding more would close one connection per retry.
        return false;
    }
    // Generations count registrations: the smallest is the oldest.
    let oldest = conns.iter().filter(|(_, e)| !e.session.logged_in()).min_by_key(|(_, e)| e.generation).map(|(k, _)| k);
    let Some(e) = oldest.and_then(|k| conns.get_mut(k)) else { return false };
    sh.stats().shed_connections.fetch_add(1, Relaxed);
    e.start_close(TRY_AGAIN_LATER, "server is out of file descriptors");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_shed_first_and_a_finished_one_never() {
        let h = Handshakes::default();
        let a = h.enter();
        let b = h.enter();
        let c = h.enter();
        drop(a);
        assert_eq!(h.len(), 2);
        assert!(!h.shed_oldest(Instant::now()), "nothing young is shed");
        let later = Instant::now() + SHED_AFTER;
        assert!(h.shed_oldest(later));
        assert!(b.signal.fired.get() && !c.signal.fired.get(), "b is the oldest still open");
        assert!(h.shed_oldest(later));
        assert!(c.signal.fired.get());
        assert!(!h.shed_oldest(later));
        drop((b, c));
        assert_eq!(h.len(), 0);
    }
}
