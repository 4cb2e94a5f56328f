//! Per-IP limits on WebSocket connections: how many one address may hold
//! (`--max-connections-per-ip`, past it HTTP 503) and how fast it may open
//! new ones (`--new-connections-per-ip`, a token bucket with a burst of
//! twice the rate, past it HTTP 429). Checked once per upgrade, under one
//! node-wide mutex: never on the message path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Why an upgrade from an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address holds `--max-connections-per-ip` connections already (503).
    TooMany,
    /// The address opens connections faster than allowed (429).
    TooFast,
}

#[derive(Debug)]
struct Entry {
    open: u32,
    tokens: f64,
    last: Instant,
}

/// The per-address counts of one node.
#[derive(Debug)]
pub struct PerIp {
    max_open: u32,
    rate: f64,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// Entries kept before idle ones (no connection, a full bucket) are pruned.
const PRUNE_ABOVE: usize = 65_536;

impl PerIp {
    /// Limits: at most `max_open` connections per address (0: no limit),
    /// `rate` new ones per second (0: no limit).
    pub fn new(max_open: u32, rate: f64) -> Self {
        PerIp { max_open, rate, table: Mutex::new(HashMap::new()) }
    }

    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.max_open > 0 || self.rate > 0.0
    }

    /// Admits one more connection from `ip` at `now`, or says why not. An
    /// admitted one must be [`PerIp::release`]d when it closes.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if !self.enabled() {
            return Ok(());
        }
        let burst = self.rate * 2.0;
        let mut t = self.table.lock().expect("per-ip table");
        if t.len() > PRUNE_ABOVE {
            let rate = self.rate;
            t.retain(|_, e| {
                e.open > 0 || (rate > 0.0 && e.tokens + now.duration_since(e.last).as_secs_f64() * rate < burst)
            });
        }
        let e = t.entry(ip).or_insert(Entry { open: 0, tokens: burst, last: now });
        if self.max_open > 0 && e.open >= self.max_open {
            return Err(Refused::TooMany);
        }
        if self.rate > 0.0 {
            e.tokens = (e.tokens + now.duration_since(e.last).as_secs_f64() * self.rate).min(burst);
            e.last = now;
            if e.tokens < 1.0 {
                return Err(Refused::TooFast);
            }
            e.tokens -= 1.0;
        }
        e.open += 1;
        Ok(())
    }

    /// A connection from `ip` closed.
    pub fn release(&self, ip: IpAddr) {
        if !self.enabled() {
            return;
        }
        let mut t = self.table.lock().expect("per-ip table");
        if let Some(e) = t.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && self.rate == 0.0 {
                t.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_and_rates_per_address() {
        let l = PerIp::new(2, 0.0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert!(l.admit(a, t).is_ok() && l.admit(a, t).is_ok());
        assert_eq!(l.admit(a, t), Err(Refused::TooMany));
        assert!(l.admit(b, t).is_ok(), "another address has its own count");
        l.release(a);
        assert!(l.admit(a, t).is_ok());

        let r = PerIp::new(0, 1.0); // 1/s, burst 2
        assert!(r.admit(a, t).is_ok() && r.admit(a, t).is_ok());
        assert_eq!(r.admit(a, t), Err(Refused::TooFast));
        r.release(a);
        r.release(a);
        assert_eq!(r.admit(a, t), Err(Refused::TooFast), "closing does not refill the bucket");
        assert!(r.admit(a, t + Duration::from_millis(1100)).is_ok());
        assert!(!PerIp::new(0, 0.0).enabled());
    }
}
