//! The open-loop send schedule: message `m` is due at `t0 + m / rate`, in
//! room `m % rooms`, from that room's members in turn (weighted by their
//! class with `--classes`).
//!
//! The schedule is a pure function of the flags and `t0` (a shared
//! `CLOCK_MONOTONIC` instant chosen by the coordinator), so every worker knows
//! every message: the ones it must send, and how many deliveries it must
//! receive. A message is sent when it is due however late the previous ones
//! were (no coordinated omission), and its latency is measured from the time
//! it was due, so a late send counts against the result, as it would for a
//! real user.

use crate::plan::Plan;

/// Stages a ramp may have.
pub const MAX_STAGES: usize = 32;

/// `--stages`: after the warm-up (at `--rate`), the rate moves linearly to
/// each stage's target over its duration, as k6's ramping arrival rate
/// does. Fixed-size, so that a schedule stays a plain value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// (seconds, target msg/s) per stage.
    stages: [(f64, f64); MAX_STAGES],
    n: usize,
}

impl Ramp {
    /// The stages, at most [`MAX_STAGES`].
    pub fn new(stages: &[(f64, f64)]) -> Option<Ramp> {
        if stages.is_empty() || stages.len() > MAX_STAGES {
            return None;
        }
        let mut s = [(0.0, 0.0); MAX_STAGES];
        s[..stages.len()].copy_from_slice(stages);
        Some(Ramp { stages: s, n: stages.len() })
    }

    fn stages(&self) -> &[(f64, f64)] {
        &self.stages[..self.n]
    }

    /// Seconds the stages last together.
    pub fn duration(&self) -> f64 {
        self.stages().iter().map(|s| s.0).sum()
    }

    /// Messages sent over the stages, starting at `rate`.
    pub fn messages(&self, rate: f64) -> f64 {
        let mut from = rate;
        let mut n = 0.0;
        for &(d, to) in self.stages() {
            n += (from + to) / 2.0 * d;
            from = to;
        }
        n
    }

    /// Seconds into the stages when message `k` (counted from their start) is due.
    fn time_of(&self, rate: f64, k: f64) -> f64 {
        let (mut from, mut t, mut n) = (rate, 0.0, 0.0);
        for &(d, to) in self.stages() {
            let here = (from + to) / 2.0 * d;
            if k < n + here || d == 0.0 {
                let left = k - n;
                // r(τ) = from + (to - from) τ / d; N(τ) = from τ + (to - from) τ² / 2d.
                let slope = (to - from) / d;
                let tau = if slope.abs() < 1e-12 {
                    left / from.max(1e-9)
                } else {
                    (-from + (from * from + 2.0 * slope * left).max(0.0).sqrt()) / slope
                };
                return t + tau.clamp(0.0, d);
            }
            n += here;
            t += d;
            from = to;
        }
        t
    }
}

/// The schedule of one run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Time of message 0 (ns, CLOCK_MONOTONIC).
    pub t0: u64,
    /// Messages per second in total (during the warm-up, with a ramp).
    pub rate: f64,
    /// First measured message (those before it are warm-up).
    pub first_measured: u32,
    /// One past the last message.
    pub end: u32,
    /// `--stages`, if any (then `duration` is theirs).
    pub ramp: Option<Ramp>,
    /// Warm-up seconds.
    warmup: f64,
}

impl Schedule {
    /// A schedule starting at `t0` with `warmup` then `duration` seconds.
    pub fn new(t0: u64, rate: f64, warmup: f64, duration: f64) -> Schedule {
        let first = (warmup * rate).ceil() as u32;
        let end = ((warmup + duration) * rate).ceil().max(first as f64 + 1.0) as u32;
        Schedule { t0, rate, first_measured: first, end, ramp: None, warmup }
    }

    /// The same with the rate ramped by `ramp` after the warm-up.
    pub fn ramped(t0: u64, rate: f64, warmup: f64, ramp: Ramp) -> Schedule {
        let first = (warmup * rate).ceil() as u32;
        let end = (warmup * rate + ramp.messages(rate)).ceil().max(first as f64 + 1.0) as u32;
        Schedule { t0, rate, first_measured: first, end, ramp: Some(ramp), warmup }
    }

    /// When message `m` is due (ns).
    pub fn due(&self, m: u32) -> u64 {
        let in_warmup = self.warmup * self.rate;
        match self.ramp {
            Some(r) if m as f64 >= in_warmup => {
                let t = self.warmup + r.time_of(self.rate, m as f64 - in_warmup);
                self.t0 + (t * 1e9).round() as u64
            }
            _ => self.t0 + (m as f64 * 1e9 / self.rate).round() as u64,
        }
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
    (room, plan.sender(room, m / rooms))
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
    fn a_ramp_sends_what_its_stages_add_up_to_at_their_rates() {
        // 1 s warm-up at 100/s, then up to 300/s over 2 s, 4 s flat, down to 0 over 2 s.
        let r = Ramp::new(&[(2.0, 300.0), (4.0, 300.0), (2.0, 0.0)]).unwrap();
        let s = Schedule::ramped(0, 100.0, 1.0, r);
        assert_eq!(s.first_measured, 100);
        assert_eq!(s.end, 100 + 400 + 1200 + 300);
        let at = |m: u32| s.due(m) as f64 / 1e9;
        assert!((at(100) - 1.0).abs() < 1e-6);
        // 400 sent over the first stage: message 500 is due at its end.
        assert!((at(500) - 3.0).abs() < 1e-3, "{}", at(500));
        // Halfway through the flat stage, at 300/s.
        assert!((at(1100) - 5.0).abs() < 1e-3, "{}", at(1100));
        assert!(at(1999) <= 9.0 + 1e-6 && at(1999) > 8.8, "{}", at(1999));
        // Due times never go back.
        assert!((0..s.end - 1).all(|m| s.due(m) <= s.due(m + 1)));
    }

    proptest::proptest! {
        /// Any ramp: due times rise with m and stay within its span.
        #[test]
        fn ramps_are_monotonic(stages in proptest::collection::vec((0.1f64..5.0, 0.0f64..500.0), 1..6), rate in 1.0f64..300.0) {
            let r = Ramp::new(&stages).unwrap();
            let s = Schedule::ramped(0, rate, 0.5, r);
            let span = ((0.5 + r.duration()) * 1e9) as u64 + 1_000;
            let mut last = 0;
            for m in 0..s.end {
                let d = s.due(m);
                proptest::prop_assert!(d >= last && d <= span, "m {} due {} after {} (span {})", m, d, last, span);
                last = d;
            }
        }
    }

    #[test]
    fn routes_spread_over_rooms_and_members() {
        let p = Plan { clients: 250, room_size: 100, nodes: 1, spread: false, classes: Default::default() };
        assert_eq!(route(&p, 0), (0, 0));
        assert_eq!(route(&p, 1), (1, 100));
        assert_eq!(route(&p, 2), (2, 200));
        assert_eq!(route(&p, 3), (0, 1));
        // The short last room cycles over its 50 members.
        assert_eq!(route(&p, 2 + 3 * 50), (2, 200));
    }

    #[test]
    fn expected_deliveries_add_up_over_slices() {
        let p = Plan { clients: 1000, room_size: 300, nodes: 1, spread: false, classes: Default::default() };
        let s = Schedule::new(0, 100.0, 0.5, 1.0);
        let whole = expected_deliveries(&p, &s, &(0..1000));
        let parts: u64 = [0..123, 123..700, 700..1000].iter().map(|r| expected_deliveries(&p, &s, r)).sum();
        assert_eq!(whole, parts);
        let by_hand: u64 = (s.first_measured..s.end).map(|m| p.members(route(&p, m).0).len() as u64 - 1).sum();
        assert_eq!(whole, by_hand);
    }
}
