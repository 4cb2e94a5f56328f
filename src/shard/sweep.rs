//! Housekeeping on the sweeper's tick: pings, idle and login deadlines,
//! queue memory, the core pin, published latency; shedding and shutdown.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tracing::{info, warn};

use super::Shard;
use crate::node::unix_ms;
use crate::pinning::Action;
use crate::ws;

/// Tick length of the sweeper (idle checks, pings, shutdown polling).
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Close code 1013 (RFC 6455 registry: "Try Again Later").
const TRY_AGAIN_LATER: u16 = 1013;

/// Close code for a login token that expired without a refresh (4000–4999
/// are the application's).
const TOKEN_EXPIRED: u16 = 4001;

impl Shard {
    /// One sweeper tick: pings quiet connections, closes idle ones and those
    /// that never logged in, and publishes the latency histogram once a second.
    pub(crate) fn sweep(&self) {
        let t = self.tick.get().wrapping_add(1);
        self.tick.set(t);
        self.flush.tick(TICK);
        let ticks = |d: Duration| (d.as_millis() / TICK.as_millis()).max(1) as u32;
        let ping_after = ticks(self.node.cfg.limits.ping_interval);
        let idle_after = ticks(self.node.cfg.limits.idle_timeout);
        let login_after = ticks(self.node.cfg.limits.login_timeout);
        let ping = Rc::new(ws::ping_frame());
        let now_ms = crate::node::unix_ms();
        let mut conns = self.conns.borrow_mut();
        for (key, e) in conns.iter_mut() {
            if e.out.closing().is_some() {
                continue;
            }
            e.out.release_idle();
            if e.parked {
                // Not reading by our choice: its silence is not idleness.
                e.last_rx = t;
                continue;
            }
            let quiet = t.wrapping_sub(e.last_rx);
            if e.session.expires().is_some_and(|exp| exp.saturating_mul(1000) <= now_ms) {
                // The token ran out without a refresh.
                e.start_close(TOKEN_EXPIRED, "token expired");
            } else if !e.session.logged_in() && t.wrapping_sub(e.born) >= login_after {
                // A socket that never becomes a user holds a slot of the
                // connection cap (and a descriptor) however well it pings.
                self.stats().timeout_closes.fetch_add(1, Relaxed);
                e.start_close(ws::close_code::POLICY, "no login within the login timeout");
            } else if quiet >= idle_after {
                self.stats().timeout_closes.fetch_add(1, Relaxed);
                e.start_close(ws::close_code::GOING_AWAY, "idle timeout");
            } else if quiet >= ping_after && !e.pinged {
                e.pinged = true;
                self.push(key, e, &ping);
            }
        }
        drop(conns);
        self.tick_presence();
        if t.is_multiple_of(10) {
            let mut owner = self.owner.borrow_mut();
            owner.evict_idle(unix_ms());
            self.stats().evicted_rooms.store(owner.evicted_rooms() as i64, Relaxed);
        }
        self.flush.wake();
        if t.is_multiple_of(10) {
            self.review_pin();
            let mut local = self.latency.borrow_mut();
            if let Ok(mut shared) = self.stats().latency.try_lock() {
                let _ = shared.add(&*local);
                local.reset();
            }
        }
    }

    /// Once a second: releases the shard from its core while other processes
    /// keep the core busy, and pins it again later (see [`crate::pinning`]).
    fn review_pin(&self) {
        let mut pin = self.pin.borrow_mut();
        let Some(p) = pin.as_mut() else { return };
        let t = p.tick();
        if t.refused {
            warn!(shard = self.id, core = p.core(), "the kernel refused to change the shard's CPU affinity");
        }
        match t.action {
            Action::Stay => return,
            Action::Release => {
                self.stats().core_releases.fetch_add(1, Relaxed);
                let waited = format!("{:.0}%", t.waited * 100.0);
                info!(shard = self.id, core = p.core(), waited, "core busy with other work: shard may run on any core");
            }
            Action::Repin => info!(shard = self.id, core = p.core(), "shard pinned to its core again"),
        }
        self.stats().pinned.store(p.pinned() as i64, Relaxed);
    }

    /// Accept failed for want of a descriptor: closes the socket of this
    /// shard that has waited longest in its handshake (TLS, HTTP upgrade),
    /// if that is over a second, or else the connection that has waited longest without logging
    /// in, so that the descriptor goes to someone who may. False when there
    /// is none.
    pub(crate) fn shed_one_unauthenticated(&self) -> bool {
        if self.handshakes.shed_oldest(std::time::Instant::now()) {
            self.stats().shed_connections.fetch_add(1, Relaxed);
            return true;
        }
        let mut conns = self.conns.borrow_mut();
        if conns.iter().any(|(_, e)| e.out.closing().is_some()) {
            // A descriptor is about to be freed already; accept will have it
            // on its next try. Shedding more would close one connection per retry.
            return false;
        }
        // Generations count registrations: the smallest is the oldest.
        let oldest =
            conns.iter().filter(|(_, e)| !e.session.logged_in()).min_by_key(|(_, e)| e.generation).map(|(k, _)| k);
        let Some(e) = oldest.and_then(|k| conns.get_mut(k)) else { return false };
        self.stats().shed_connections.fetch_add(1, Relaxed);
        e.start_close(TRY_AGAIN_LATER, "server is out of file descriptors");
        true
    }

    /// Begins shutdown: every connection gets a 1001 close frame.
    pub(crate) fn close_all(&self) {
        self.shutting_down.set(true);
        for (_, e) in self.conns.borrow_mut().iter_mut() {
            e.start_close(ws::close_code::GOING_AWAY, "server shutting down");
        }
    }

    /// Open connections on this shard.
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }
}
