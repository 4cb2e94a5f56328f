//! Token bucket for per-connection rate limiting.

use std::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f32,
            last: now,
        }
    }

    /// Takes one token if there is one. A rate of 0 means unlimited.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
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
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20.0, t0);
        let granted = (0..30).filter(|_| b.take(10.0, 20.0, t0)).count();
        assert_eq!(granted, 20);
        assert!(!b.take(10.0, 20.0, t0));
        // 0.5 s later five more tokens have arrived.
        let t1 = t0 + Duration::from_millis(500);
        let granted = (0..30).filter(|_| b.take(10.0, 20.0, t1)).count();
        assert_eq!(granted, 5);
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.take(10.0, 20.0, t2)).count(), 20);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, t0);
        assert!((0..1000).all(|_| b.take(0.0, 0.0, t0)));
    }
}
