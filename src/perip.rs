//! Per-IP limits on WebSocket connections: how many one address may hold
//! (`--max-connections-per-ip`, past it HTTP 503) and how fast it may open
//! new ones (`--new-connections-per-ip`, a token bucket with a burst of
//! twice the rate, past it HTTP 429). A socket counts toward its address's
//! connections from the moment it is accepted ([`PerIp::reserve`]), so
//! sockets held in a slow TLS or HTTP handshake count as well; the rate is
//! checked at the upgrade. Under one node-wide mutex, twice per
//! connection: never on the message path.
//!
//! An IPv6 client is counted by its /64 (one subscriber's prefix: a host
//! that rotates addresses within it is still one client); an IPv4-mapped
//! address counts as its IPv4 address.

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
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Pruning (a pass over every entry) runs at most once a second, so
    /// that a table kept large cannot make every upgrade pay for a pass.
    next_prune: Option<Instant>,
}

/// What an address is counted as: IPv6 by its /64, IPv4-mapped as IPv4.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Entries kept before idle ones (no connection, a full bucket) are pruned.
const PRUNE_ABOVE: usize = 65_536;

impl PerIp {
    /// Limits: at most `max_open` connections per address (0: no limit),
    /// `rate` new ones per second (0: no limit).
    pub fn new(max_open: u32, rate: f64) -> Self {
        PerIp { max_open, rate, table: Mutex::new(Table::default()) }
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
        let mut guard = self.table.lock().expect("per-ip table");
        let t = &mut *guard;
        if t.entries.len() > PRUNE_ABOVE && t.next_prune.is_none_or(|at| now >= at) {
            let rate = self.rate;
            t.entries.retain(|_, e| {
                e.open > 0 || (rate > 0.0 && e.tokens + now.duration_since(e.last).as_secs_f64() * rate < burst)
            });
            t.next_prune = Some(now + std::time::Duration::from_secs(1));
        }
        let e = t.entries.entry(key(ip)).or_insert(Entry { open: 0, tokens: burst, last: now });
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

    /// Counts a socket just accepted from `ip` toward its address's
    /// connections, or says it is over the limit. A reserved socket must be
    /// [`PerIp::release`]d when it closes; its upgrade checks only the rate
    /// ([`PerIp::check_rate`]).
    pub fn reserve(&self, ip: IpAddr) -> Result<(), Refused> {
        if !self.enabled() {
            return Ok(());
        }
        let mut t = self.table.lock().expect("per-ip table");
        let burst = self.rate * 2.0;
        let e = t.entries.entry(key(ip)).or_insert(Entry { open: 0, tokens: burst, last: Instant::now() });
        if self.max_open > 0 && e.open >= self.max_open {
            return Err(Refused::TooMany);
        }
        e.open += 1;
        Ok(())
    }

    /// The upgrade of a reserved socket: takes a token from its address's
    /// bucket, or says it opens connections too fast.
    pub fn check_rate(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let burst = self.rate * 2.0;
        let mut t = self.table.lock().expect("per-ip table");
        let e = t.entries.entry(key(ip)).or_insert(Entry { open: 0, tokens: burst, last: now });
        e.tokens = (e.tokens + now.duration_since(e.last).as_secs_f64() * self.rate).min(burst);
        e.last = now;
        if e.tokens < 1.0 {
            return Err(Refused::TooFast);
        }
        e.tokens -= 1.0;
        Ok(())
    }

    /// A connection from `ip` closed.
    pub fn release(&self, ip: IpAddr) {
        if !self.enabled() {
            return;
        }
        let mut t = self.table.lock().expect("per-ip table");
        let ip = key(ip);
        if let Some(e) = t.entries.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && self.rate == 0.0 {
                t.entries.remove(&ip);
            }
        }
    }
}

/// A budget of costly attempts per address: token signature checks of
/// connections not logged in yet. A token bucket per address (burst twice
/// the rate); an attempt that succeeds is given back, so a crowd behind one
/// address logging in with good tokens is never held back, while bad tokens
/// cannot buy more of the server's CPU than the rate allows.
#[derive(Debug)]
pub struct Attempts {
    rate: f64,
    table: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Attempts {
    /// `rate` attempts a second per address (0: no limit).
    pub fn new(rate: f64) -> Self {
        Attempts { rate, table: Mutex::new(HashMap::new()) }
    }

    /// Whether `ip` may make one more attempt now (and takes it).
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let burst = self.rate * 2.0;
        let mut t = self.table.lock().expect("attempts table");
        if t.len() > PRUNE_ABOVE {
            // Full buckets are no different from absent ones.
            let rate = self.rate;
            t.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * rate < burst);
        }
        let (tokens, last) = t.entry(key(ip)).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// An attempt of `ip` succeeded: it is given back.
    pub fn give_back(&self, ip: IpAddr) {
        if self.rate <= 0.0 {
            return;
        }
        if let Some((tokens, _)) = self.table.lock().expect("attempts table").get_mut(&key(ip)) {
            *tokens = (*tokens + 1.0).min(self.rate * 2.0);
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

    /// Sockets reserved at accept count toward the limit (a handshake that
    /// never finishes holds its place), and their upgrade checks the rate.
    #[test]
    fn sockets_count_from_their_accept() {
        let l = PerIp::new(2, 1.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        assert!(l.reserve(a).is_ok() && l.reserve(a).is_ok());
        assert_eq!(l.reserve(a), Err(Refused::TooMany), "two sockets in their handshake fill the address");
        assert_eq!(l.admit(a, t), Err(Refused::TooMany));
        assert!(l.check_rate(a, t).is_ok() && l.check_rate(a, t).is_ok());
        assert_eq!(l.check_rate(a, t), Err(Refused::TooFast));
        l.release(a);
        assert!(l.reserve(a).is_ok());
        assert!(PerIp::new(0, 5.0).reserve(a).is_ok(), "no connection limit: never too many");
    }

    #[test]
    fn attempts_are_budgeted_and_successes_given_back() {
        let a = Attempts::new(2.0); // burst 4
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let t = Instant::now();
        assert!((0..4).all(|_| a.take(ip, t)));
        assert!(!a.take(ip, t), "past the burst");
        a.give_back(ip);
        assert!(a.take(ip, t), "a success gives its attempt back");
        assert!(!a.take(ip, t));
        assert!(a.take(ip, t + Duration::from_millis(600)), "refilled at the rate");
        assert!(a.take("10.0.0.10".parse().unwrap(), t), "another address has its own");
        assert!((0..100).all(|_| Attempts::new(0.0).take(ip, t)));
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let l = PerIp::new(1, 0.0);
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same64: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let other64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.admit(a, t).is_ok());
        assert_eq!(l.admit(same64, t), Err(Refused::TooMany), "one /64 is one client");
        assert!(l.admit(other64, t).is_ok());
        l.release(same64);
        assert!(l.admit(a, t).is_ok(), "released through another address of the /64");
        let v4: IpAddr = "10.1.1.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        assert!(l.admit(v4, t).is_ok());
        assert_eq!(l.admit(mapped, t), Err(Refused::TooMany));
    }

    #[test]
    fn idle_entries_are_pruned_at_most_once_a_second() {
        let l = PerIp::new(0, 100.0);
        let t = Instant::now();
        for i in 0..(PRUNE_ABOVE as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.admit(ip, t).is_ok());
            l.release(ip);
        }
        // A second later every bucket is full again: the next upgrade prunes them.
        let later = t + std::time::Duration::from_secs(1);
        assert!(l.admit("192.0.2.1".parse().unwrap(), later).is_ok());
        assert_eq!(l.table.lock().unwrap().entries.len(), 1);
    }
}
