//! Log lines for refusals that an attacker can repeat at will: each class
//! writes at most one line a second, with the count of those it held back.
//!
//! A refused relay handshake, a bad token, a connection over its address's
//! limit: each is worth a line to an operator, but not 89,000 lines in five
//! seconds when someone sends them in a loop. The counters in `/metrics`
//! keep the exact numbers; the log keeps a sample and a count.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One class of log line, at most one a second. Lives in a `static`.
#[derive(Debug)]
pub struct Throttle {
    /// Milliseconds since the process's clock start when the next line may go.
    next_ms: AtomicU64,
    /// Lines held back since the last one written.
    held: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Throttle {
    /// A class with no line written yet.
    pub const fn new() -> Throttle {
        Throttle { next_ms: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// Some(lines held back since the last) when this line should be
    /// written; None when it is held back (and counted).
    pub fn due(&self) -> Option<u64> {
        self.due_at(now_ms())
    }

    fn due_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Relaxed);
        if now >= next && self.next_ms.compare_exchange(next, now + 1000, Ordering::AcqRel, Relaxed).is_ok() {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_held_back() {
        let t = Throttle::new();
        assert_eq!(t.due_at(5_000), Some(0));
        for ms in 5_001..5_999 {
            assert_eq!(t.due_at(ms), None);
        }
        assert_eq!(t.due_at(6_000), Some(998));
        assert_eq!(t.due_at(6_001), None);
        assert_eq!(t.due_at(9_000), Some(1));
    }

    #[test]
    fn many_threads_write_one_line_between_them() {
        let t = std::sync::Arc::new(Throttle::new());
        let due: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let t = t.clone();
                    s.spawn(move || (0..1000).filter(|_| t.due_at(10_000).is_some()).count() as u64)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(due, 1);
        assert_eq!(t.held.load(Relaxed), 3999);
    }
}
