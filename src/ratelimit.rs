//! Token bucket for per-connection rate limiting.
//!
//! Eight bytes per bucket: every connection has two, and memory per idle
//! connection is a feature, so time is kept as wrapping milliseconds
//! relative to a clock the caller owns (the shard's start).

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    last_ms: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now_ms: u32) -> Self {
        TokenBucket { tokens: burst as f32, last_ms: now_ms }
    }

    /// Takes one token if there is one. A rate of 0 means unlimited.
    pub fn take(&mut self, rate: f64, burst: f64, now_ms: u32) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let dt = now_ms.wrapping_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = ((self.tokens as f64) + dt * rate).min(burst) as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(20.0, 0);
        let granted = (0..30).filter(|_| b.take(10.0, 20.0, 0)).count();
        assert_eq!(granted, 20);
        assert!(!b.take(10.0, 20.0, 0));
        // 0.5 s later five more tokens have arrived.
        let granted = (0..30).filter(|_| b.take(10.0, 20.0, 500)).count();
        assert_eq!(granted, 5);
        // Never more than the burst, however long the pause.
        assert_eq!((0..100).filter(|_| b.take(10.0, 20.0, 3_600_500)).count(), 20);
    }

    #[test]
    fn clock_wraps() {
        let mut b = TokenBucket::new(1.0, u32::MAX - 100);
        assert!(b.take(10.0, 1.0, u32::MAX - 100));
        assert!(!b.take(10.0, 1.0, u32::MAX - 50));
        assert!(b.take(10.0, 1.0, 100)); // 200 ms later, across the wrap
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0.0, 0);
        assert!((0..1000).all(|_| b.take(0.0, 0.0, 0)));
    }
}
