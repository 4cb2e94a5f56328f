//! Who is where: clients → rooms → nodes, clients → worker processes, and
//! source addresses. Pure functions of the flags, so the coordinator and
//! every worker compute the same layout without telling each other.
//!
//! Clients are numbered `0..N`. Room `r` holds the contiguous clients
//! `r*K .. min((r+1)*K, N)`. A room lives on one node (`--url` number
//! `r % U`), because nodes that are not joined by a relay cannot share a room;
//! with `--spread-rooms` (nodes joined by the relay) client `c` goes to node
//! `c % U`, so every room spans the nodes.
//! Workers get contiguous client ranges made of whole rooms when there are at
//! least as many rooms as workers, so that most deliveries stay inside one
//! process; a room bigger than a worker's share is split, which works because
//! the clock is shared and the coordinator merges per-message results.

use std::net::Ipv4Addr;
use std::ops::Range;

/// Rooms and nodes for `clients` clients in rooms of `room_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Clients in total.
    pub clients: u32,
    /// Members per room (the last room may have fewer).
    pub room_size: u32,
    /// Target nodes.
    pub nodes: u32,
    /// Spread each room's members over the nodes (client `c` on node
    /// `c % nodes`), for nodes joined by the relay.
    pub spread: bool,
    /// Who sends how much (`--classes`); none: every member alike.
    pub classes: Classes,
}

/// Client classes (`--classes`): in every room the first `share` of its
/// members are class 0, the next class 1, and so on; a member of a class
/// sends `weight` times as often as one of weight 1 (0: never: a lurker).
/// Fixed-size, so that a plan stays a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Classes {
    n: u8,
    /// Cumulative share of the room's members, per mille, per class.
    upto: [u16; MAX_CLASSES],
    weight: [u16; MAX_CLASSES],
}

/// Classes a run may have.
pub const MAX_CLASSES: usize = 8;

impl Classes {
    /// From (share, weight) pairs; the shares must add up to 1.
    pub fn new(classes: &[(f64, u16)]) -> Option<Classes> {
        if classes.is_empty() || classes.len() > MAX_CLASSES || classes.iter().all(|c| c.1 == 0) {
            return None;
        }
        let total: f64 = classes.iter().map(|c| c.0).sum();
        if (total - 1.0).abs() > 1e-6 || classes.iter().any(|c| c.0.is_nan() || c.0 < 0.0) {
            return None;
        }
        let mut out = Classes { n: classes.len() as u8, ..Classes::default() };
        let mut acc = 0.0;
        for (i, &(share, w)) in classes.iter().enumerate() {
            acc += share;
            out.upto[i] = (acc * 1000.0).round().min(1000.0) as u16;
            out.weight[i] = w;
        }
        out.upto[classes.len() - 1] = 1000;
        Some(out)
    }

    /// The sender of turn `turn` among `len` members (offsets from the
    /// room's first): each class's members in turn, weighted; None when
    /// the room has no member of a class that sends (too small).
    fn sender(&self, len: u32, turn: u32) -> Option<u32> {
        let mut bounds = [0u32; MAX_CLASSES + 1];
        let mut total = 0u64;
        for i in 0..self.n as usize {
            bounds[i + 1] = (len as u64 * self.upto[i] as u64 / 1000) as u32;
            total += (bounds[i + 1] - bounds[i]) as u64 * self.weight[i] as u64;
        }
        if total == 0 {
            return None;
        }
        let mut k = turn as u64 % total;
        for i in 0..self.n as usize {
            let members = (bounds[i + 1] - bounds[i]) as u64;
            let slots = members * self.weight[i] as u64;
            if k < slots {
                return Some(bounds[i] + (k % members) as u32);
            }
            k -= slots;
        }
        None
    }
}

impl Plan {
    /// Number of rooms.
    pub fn rooms(&self) -> u32 {
        self.clients.div_ceil(self.room_size)
    }

    /// The room of client `c`.
    pub fn room_of(&self, c: u32) -> u32 {
        c / self.room_size
    }

    /// The clients of room `r`.
    pub fn members(&self, r: u32) -> Range<u32> {
        let start = r * self.room_size;
        start..(start + self.room_size).min(self.clients)
    }

    /// Who sends turn `turn` of room `r` (its members in turn, weighted
    /// by their class).
    pub fn sender(&self, r: u32, turn: u32) -> u32 {
        let m = self.members(r);
        let len = m.len() as u32;
        let off = if self.classes.n == 0 { None } else { self.classes.sender(len, turn) };
        m.start + off.unwrap_or(turn % len)
    }

    /// The node (index into the URLs) that client `c` of room `r` connects to:
    /// its room's node, or with `spread` its own share of the nodes.
    pub fn node_of(&self, c: u32, r: u32) -> usize {
        if self.spread { (c % self.nodes) as usize } else { (r % self.nodes) as usize }
    }

    /// Members of room `r` among the clients `slice`.
    pub fn local_members(&self, r: u32, slice: &Range<u32>) -> u32 {
        let m = self.members(r);
        m.end.min(slice.end).saturating_sub(m.start.max(slice.start))
    }

    /// Client ranges of `workers` worker processes: whole rooms when there
    /// are at least as many rooms as workers, else an even split of clients.
    pub fn worker_slices(&self, workers: u32) -> Vec<Range<u32>> {
        let w = workers.max(1) as u64;
        let rooms = self.rooms() as u64;
        (0..w)
            .map(|i| {
                if rooms >= w {
                    let r0 = (i * rooms / w) as u32;
                    let r1 = ((i + 1) * rooms / w) as u32;
                    let start = self.members(r0).start;
                    let end = if r1 as u64 == rooms { self.clients } else { self.members(r1).start };
                    start..end
                } else {
                    let n = self.clients as u64;
                    (i * n / w) as u32..((i + 1) * n / w) as u32
                }
            })
            .collect()
    }

    /// Fewest workers such that none holds more than `per_worker` clients
    /// (a target) nor more than `fd_cap` (a hard limit: the open-file limit
    /// less a margin).
    pub fn auto_workers(&self, per_worker: u32, fd_cap: u32) -> u32 {
        let cap = fd_cap.min(per_worker).max(1);
        let mut w = self.clients.div_ceil(cap).max(1);
        // Whole rooms may not split evenly; add workers until the biggest
        // slice fits (at worst one client each, so this ends).
        while w < self.clients {
            let biggest = self.worker_slices(w).iter().map(|s| s.len()).max().unwrap_or(0);
            if biggest as u32 <= cap {
                break;
            }
            w += 1;
        }
        w
    }
}

/// Source address for client `c` when spreading over 127.0.0.0/8: cycles over
/// 127.0.0.2 ..= 127.0.0.250, so each address needs only a fraction of the
/// ephemeral port range (and the 4-tuple space grows 249-fold).
pub fn source_addr(c: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (c % 249) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(clients: u32, room_size: u32) -> Plan {
        Plan { clients, room_size, nodes: 1, spread: false, classes: Classes::default() }
    }

    #[test]
    fn classes_send_by_their_weight_and_lurkers_never() {
        // 80 % lurkers, 15 % casual (weight 1), 5 % talkers (weight 6).
        let c = Classes::new(&[(0.8, 0), (0.15, 1), (0.05, 6)]).unwrap();
        let p = Plan { classes: c, ..plan(100, 100) };
        let mut sent = [0u32; 100];
        for turn in 0..4500 {
            sent[(p.sender(0, turn) - p.members(0).start) as usize] += 1;
        }
        assert!(sent[..80].iter().all(|&n| n == 0), "a lurker sent");
        // 15·1 + 5·6 = 45 slots per cycle, 100 cycles.
        assert!(sent[80..95].iter().all(|&n| n == 100), "{:?}", &sent[80..95]);
        assert!(sent[95..].iter().all(|&n| n == 600), "{:?}", &sent[95..]);
        // A room too small for a sending member (5 % of 10 rounds to none):
        // everyone in turn.
        let p = Plan { classes: Classes::new(&[(0.05, 1), (0.95, 0)]).unwrap(), ..plan(10, 10) };
        assert_eq!((0..10).map(|t| p.sender(0, t)).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert!(Classes::new(&[(0.5, 1)]).is_none(), "shares must add up to 1");
        assert!(Classes::new(&[(1.0, 0)]).is_none(), "somebody must send");
    }

    #[test]
    fn rooms_cover_clients() {
        let p = plan(1050, 100);
        assert_eq!(p.rooms(), 11);
        assert_eq!(p.members(10), 1000..1050);
        assert_eq!(p.room_of(1049), 10);
        assert_eq!(p.local_members(10, &(1020..2000)), 30);
        assert_eq!(p.local_members(3, &(1020..2000)), 0);
    }

    #[test]
    fn slices_partition_clients_and_keep_rooms_whole() {
        for (n, k, w) in [(100_000, 100, 7), (10_000, 10_000, 2), (1000, 50, 3), (7, 3, 5), (1, 1, 1)] {
            let p = plan(n, k);
            let s = p.worker_slices(w);
            assert_eq!(s.len(), w as usize);
            assert_eq!(s[0].start, 0);
            assert_eq!(s.last().unwrap().end, n);
            for pair in s.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            if p.rooms() >= w {
                for r in &s {
                    assert_eq!(r.start % k, 0, "{n} {k} {w}: slice starts mid-room");
                }
            }
        }
    }

    #[test]
    fn auto_workers_respects_limits() {
        assert_eq!(plan(10_000, 100).auto_workers(15_000, 19_800), 1);
        let p = plan(100_000, 100);
        let w = p.auto_workers(15_000, 19_800);
        assert_eq!(w, 7);
        assert!(p.worker_slices(w).iter().all(|s| s.len() <= 15_000));
        // One huge room is split evenly.
        let p = plan(30_000, 30_000);
        assert_eq!(p.auto_workers(15_000, 19_800), 2);
    }

    #[test]
    fn source_addresses_stay_in_loopback() {
        for c in 0..1000 {
            let a = source_addr(c);
            assert!(a.is_loopback());
            assert!(a.octets()[3] >= 2 && a.octets()[3] <= 250);
        }
    }
}
