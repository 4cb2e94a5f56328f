//! Housekeeping on the sweeper's tick: pings, idle and login deadlines,
//! queue memory, the core pin, published latency; shedding and shutdown.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hdrhistogram::Histogram;
use tracing::{info, warn};

use super::Shard;
use super::dormant::Rest;
use crate::config::Limits;
use crate::node::unix_ms;
use crate::pinning::{Action, CorePin};
use crate::ws;

/// Tick length of the sweeper (idle checks, pings, shutdown polling).
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Close code for a login token that expired without a refresh (4000–4999
/// are the application's).
const TOKEN_EXPIRED: u16 = 4001;

/// The sweeper's state: its clock, the deadlines in its ticks, the
/// latency it publishes, and the shard's pin to its core.
pub(crate) struct Sweeper {
    /// Ticks since start.
    tick: Cell<u32>,
    ping_after: u32,
    idle_after: u32,
    login_after: u32,
    /// Silence after which a connection's task is asked to go dormant.
    dormant_after: Option<u32>,
    /// Delivery latencies since they were last published.
    latency: RefCell<Histogram<u64>>,
    /// This shard's pin to its core, when pinned (see [`crate::pinning`]).
    pin: RefCell<Option<CorePin>>,
}

impl Sweeper {
    pub(super) fn new(limits: &Limits, dormant_after: Option<Duration>) -> Self {
        let ticks = |d: Duration| (d.as_millis() / TICK.as_millis()).max(1) as u32;
        Sweeper {
            tick: Cell::new(0),
            ping_after: ticks(limits.ping_interval),
            idle_after: ticks(limits.idle_timeout),
            login_after: ticks(limits.login_timeout),
            dormant_after: dormant_after.map(ticks),
            latency: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")),
            pin: RefCell::new(None),
        }
    }

    /// Ticks since start (connections' ages and silences count in them).
    pub(super) fn now(&self) -> u32 {
        self.tick.get()
    }

    /// Pins the shard to its core from now on.
    pub(super) fn set_pin(&self, pin: Option<CorePin>) {
        *self.pin.borrow_mut() = pin;
    }

    /// A delivery took `us` microseconds from the owner to this shard.
    pub(super) fn record_latency(&self, us: u64) {
        let _ = self.latency.borrow_mut().record(us.clamp(1, 60_000_000));
    }

    /// One sweeper tick: pings quiet connections, closes idle ones and those
    /// that never logged in, and publishes the latency histogram once a second.
    pub(super) fn sweep(&self, sh: &Shard) {
        let t = self.tick.get().wrapping_add(1);
        self.tick.set(t);
        sh.flush.tick(TICK);
        let (ping_after, idle_after, login_after) = (self.ping_after, self.idle_after, self.login_after);
        let dormant_after = self.dormant_after.unwrap_or(u32::MAX);
        let mut asks = 0;
        let ping = super::Outgoing::new(ws::ping_frame());
        let now_ms = crate::node::unix_ms();
        let mut conns = sh.conns.borrow_mut();
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
                sh.stats().timeout_closes.fetch_add(1, Relaxed);
                e.start_close(ws::close_code::POLICY, "no login within the login timeout");
            } else if quiet >= idle_after {
                sh.stats().timeout_closes.fetch_add(1, Relaxed);
                e.start_close(ws::close_code::GOING_AWAY, "idle timeout");
            } else if quiet >= ping_after && !e.pinged {
                e.pinged = true;
                sh.push(key, e, &ping);
            } else if quiet >= dormant_after && e.rest == Rest::Awake && asks < super::dormant::ASKS_PER_TICK {
                // Its task frees itself at its next poll, if nothing is half read.
                asks += 1;
                e.rest = Rest::Asked;
                e.wake();
            }
        }
        drop(conns);
        sh.tick_presence();
        super::cluster::release_early(sh, false);
        if t.is_multiple_of(10) {
            let mut owner = sh.owner.borrow_mut();
            owner.evict_idle(unix_ms());
            sh.stats().evicted_rooms.store(owner.evicted_rooms() as i64, Relaxed);
            sh.stats().dedupe_entries.store(owner.dedupe_entries() as i64, Relaxed);
        }
        sh.flush.wake();
        if t.is_multiple_of(10) {
            sh.dormancy.collect();
            self.review_pin(sh);
            let mut local = self.latency.borrow_mut();
            if let Ok(mut shared) = sh.stats().latency.try_lock() {
                let _ = shared.add(&*local);
                local.reset();
            }
        }
    }

    /// Once a second: releases the shard from its core while other processes
    /// keep the core busy, and pins it again later (see [`crate::pinning`]).
    fn review_pin(&self, sh: &Shard) {
        let mut pin = self.pin.borrow_mut();
        let Some(p) = pin.as_mut() else { return };
        let t = p.tick();
        if t.refused {
            warn!(shard = sh.id, core = p.core(), "the kernel refused to change the shard's CPU affinity");
        }
        match t.action {
            Action::Stay => return,
            Action::Release => {
                sh.stats().core_releases.fetch_add(1, Relaxed);
                let waited = format!("{:.0}%", t.waited * 100.0);
                info!(shard = sh.id, core = p.core(), waited, "core busy with other work: shard may run on any core");
            }
            Action::Repin => info!(shard = sh.id, core = p.core(), "shard pinned to its core again"),
        }
        sh.stats().pinned.store(p.pinned() as i64, Relaxed);
    }
}
