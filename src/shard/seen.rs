//! Where a room's broadcasts stand on one shard (in a cluster): the newest
//! point delivered and which of the 256 before it were, so that a broadcast
//! that came twice is dropped and one that came late is still delivered.
//!
//! Both happen when a room moves between nodes. A member that re-joins the
//! new owner is caught up with what that owner sent before the re-join came
//! (`owner::catch_up`): broadcasts this shard may have delivered already.
//! And the old owner's last broadcasts may come after the new owner's first
//! (they travel on different links): late, never delivered, not to be lost.
//! No I/O: `Shard::on_delivery` asks [`Seen::take`] once per broadcast.

use crate::protocol::Since;

/// How far back behind the newest point a broadcast is still told apart.
pub(crate) const WINDOW: u64 = 256;

/// The newest point delivered, and a bit per seq below it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    top: Option<Since>,
    /// Bit i: seq `top.seq - 1 - i` was delivered.
    below: [u64; 4],
}

impl Seen {
    /// The newest point delivered (where a member that re-joins stands).
    pub(crate) fn top(&self) -> Option<Since> {
        self.top
    }

    /// Whether a broadcast at `p` is to be delivered (and notes it): no
    /// when it was delivered already, or when it is older than the window
    /// or than this shard's first broadcast of the epoch (its members then
    /// had it, or did not want it, by their login).
    pub(crate) fn take(&mut self, p: Since) -> bool {
        let Some(top) = self.top.filter(|t| t.epoch == p.epoch) else {
            // The first broadcast here, or a new epoch: what came before it
            // counts as delivered.
            *self = Seen { top: Some(p), below: [u64::MAX; 4] };
            return true;
        };
        if p.seq > top.seq {
            self.shift(p.seq - top.seq);
            self.top = Some(p);
            return true;
        }
        if p.seq == top.seq {
            return false;
        }
        let i = top.seq - 1 - p.seq;
        if i >= WINDOW {
            return false;
        }
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let fresh = self.below[word] & bit == 0;
        self.below[word] |= bit;
        fresh
    }

    /// Moves the window up by `n`: the old top becomes bit `n - 1`, the
    /// seqs skipped between are not delivered yet.
    fn shift(&mut self, n: u64) {
        if n > WINDOW {
            self.below = [0; 4];
            return;
        }
        // As one 256-bit number (bit i in word i / 64), shifted up by n.
        let (words, bits) = ((n / 64) as usize, n % 64);
        let mut out = [0u64; 4];
        for (i, w) in out.iter_mut().enumerate().skip(words) {
            let src = i - words;
            *w = self.below[src] << bits;
            if bits > 0 && src > 0 {
                *w |= self.below[src - 1] >> (64 - bits);
            }
        }
        let j = n - 1;
        out[(j / 64) as usize] |= 1 << (j % 64);
        self.below = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seq: u64) -> Since {
        Since { epoch: 7, seq }
    }

    #[test]
    fn a_repeat_is_dropped_and_a_late_one_delivered_once() {
        let mut s = Seen::default();
        assert!(s.take(at(10)));
        assert!(!s.take(at(9)), "before the first: the members had it by their login");
        assert!(s.take(at(12)));
        assert!(!s.take(at(12)));
        assert!(s.take(at(11)), "late: never delivered");
        assert!(!s.take(at(11)));
        assert!(!s.take(at(10)));
        assert_eq!(s.top(), Some(at(12)));
        assert!(s.take(Since { epoch: 8, seq: 1 }), "a new epoch starts afresh");
    }

    proptest! {
        /// Whatever order broadcasts come in, and however often, each seq
        /// after the first is delivered exactly once while it is within
        /// the window of the newest.
        #[test]
        fn each_broadcast_is_delivered_once(order in proptest::collection::vec(1u64..400, 1..600)) {
            let mut s = Seen::default();
            let first = order[0];
            let mut delivered = std::collections::HashSet::new();
            let mut top = 0;
            for &seq in &order {
                let fresh = !delivered.contains(&seq);
                let within = seq > first && (seq >= top || top - seq <= WINDOW);
                let took = s.take(at(seq));
                if seq == first || !within {
                    prop_assert!(!took || seq == first && delivered.is_empty());
                } else {
                    prop_assert_eq!(took, fresh, "seq {} top {}", seq, top);
                }
                if took {
                    delivered.insert(seq);
                }
                top = top.max(seq);
            }
        }
    }
}
