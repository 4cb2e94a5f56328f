//! The open-loop send schedule: message `m` is due at `t0 + m / rate`, in
//! room `m % rooms`, from that room's members in turn.
//!
//! The schedule is a pure function of the flags and `t0` (a shared
//! `CLOCK_MONOTONIC` instant chosen by the coordinator), so every worker knows
//! every message: the ones it must send, and how many deliveries it must
//! receive. A message is sent when it is due however late the previous ones
//! were (no coordinated omission), and its latency is measured from the time
//! it was due, so a late send counts against the result, as it would for a
//! real user.

use crate::plan::Plan;

/// The schedule of one run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Time of message 0 (ns, CLOCK_MONOTONIC).
    pub t0: u64,
    /// Messages per second in total.
    pub rate: f64,
    /// First measured message (those before it are warm-up).
    pub first_measured: u32,
    /// One past the last message.
    pub end: u32,
}

impl Schedule {
    /// A schedule starting at `t0` with `warmup` then `duration` seconds.
    pub fn new(t0: u64, rate: f64, warmup: f64, duration: f64) -> Schedule {
        let first = (warmup * rate).ceil() as u32;
        let end = ((warmup + duration) * rate).ceil().max(first as f64 + 1.0) as u32;
        Schedule { t0, rate, first_measured: first, end }
    }

    /// When message `m` is due (ns).
    pub fn due(&self, m: u32) -> u64 {
        self.t0 + (m as f64 * 1e9 / self.rate).round() as u64
    }

    /// Whether message `m` is measured (not warm-up, not past the end).
    pub fn is_measured(&self, m: u32) -> bool {
        (self.first_measured..self.end).contains(&m)
    }

    /// Number of measured messages.
    pub fn measured(&self) -> u32 {
        self.end - self.first_measured
    }

    /// When the last message is due.
    pub fn last_due(&self) -> u64 {
        self.due(self.end - 1)
    }
}

/// Where message `m` goes: (room, sending client).
pub fn route(plan: &Plan, m: u32) -> (u32, u32) {
    let rooms = plan.rooms();
    let room = m % rooms;
    let members = plan.members(room);
    let turn = (m / rooms) % members.len() as u32;
    (room, members.start + turn)
}

/// Deliveries of measured messages that the clients `slice` must receive:
/// every member of the message's room except its sender.
pub fn expected_deliveries(plan: &Plan, sched: &Schedule, slice: &std::ops::Range<u32>) -> u64 {
    let mut n = 0u64;
    for m in sched.first_measured..sched.end {
        let (room, sender) = route(plan, m);
        let local = plan.local_members(room, slice) as u64;
        n += local - slice.contains(&sender) as u64;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate() {
        let s = Schedule::new(1_000, 2000.0, 1.0, 2.0);
        assert_eq!(s.first_measured, 2000);
        assert_eq!(s.end, 6000);
        assert_eq!(s.due(0), 1_000);
        assert_eq!(s.due(2000), 1_000 + 1_000_000_000);
        assert!(s.is_measured(2000) && !s.is_measured(1999) && !s.is_measured(6000));
        assert_eq!(s.measured(), 4000);
    }

    #[test]
    fn routes_spread_over_rooms_and_members() {
        let p = Plan { clients: 250, room_size: 100, nodes: 1, spread: false };
        assert_eq!(route(&p, 0), (0, 0));
        assert_eq!(route(&p, 1), (1, 100));
        assert_eq!(route(&p, 2), (2, 200));
        assert_eq!(route(&p, 3), (0, 1));
        // The short last room cycles over its 50 members.
        assert_eq!(route(&p, 2 + 3 * 50), (2, 200));
    }

    #[test]
    fn expected_deliveries_add_up_over_slices() {
        let p = Plan { clients: 1000, room_size: 300, nodes: 1, spread: false };
        let s = Schedule::new(0, 100.0, 0.5, 1.0);
        let whole = expected_deliveries(&p, &s, &(0..1000));
        let parts: u64 = [0..123, 123..700, 700..1000].iter().map(|r| expected_deliveries(&p, &s, r)).sum();
        assert_eq!(whole, parts);
        let by_hand: u64 = (s.first_measured..s.end).map(|m| p.members(route(&p, m).0).len() as u64 - 1).sum();
        assert_eq!(whole, by_hand);
    }
}
