//! A token bucket: per connection (every frame), and per user (`userlimit.rs`, every send).

use std::time::Duration;

use tokio::time::Instant;

/// Allows `rate` events per second on average and bursts of up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How long from `now` until the bucket holds a whole token; zero when it holds one already.
    pub fn wait(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }

    /// Changes the rate and burst from `now` on, keeping the tokens earned so far (up to the new
    /// burst): a per-user bucket whose share of the user's rate changed.
    pub fn resize(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate)
            .min(self.burst)
            .min(burst);
        self.last = now;
        self.rate = rate;
        self.burst = burst;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
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
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20.0, 40.0, t0);
        assert_eq!((0..50).filter(|_| b.try_take(t0)).count(), 40);
        // Half a second refills ten tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| b.try_take(t1)).count(), 10);
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| b.try_take(t2)).count(), 40);
    }

    #[test]
    fn resize_keeps_earned_tokens_up_to_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20.0, 40.0, t0);
        b.resize(10.0, 20.0, t0);
        assert_eq!((0..50).filter(|_| b.try_take(t0)).count(), 20);
        // The new rate applies from the resize on: a second refills ten.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..50).filter(|_| b.try_take(t1)).count(), 10);
    }

    #[test]
    fn wait_is_the_time_to_the_next_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20.0, 40.0, t0);
        assert_eq!(b.wait(t0), Duration::ZERO);
        while b.try_take(t0) {}
        // Empty at 20 tokens a second: the next one is 50 ms away, and 20 ms later 30 ms away.
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        assert!((ms(b.wait(t0)) - 50.0).abs() < 1.0, "{:?}", b.wait(t0));
        let t1 = t0 + Duration::from_millis(20);
        assert!((ms(b.wait(t1)) - 30.0).abs() < 1.0, "{:?}", b.wait(t1));
        assert_eq!(b.wait(t0 + Duration::from_millis(60)), Duration::ZERO);
    }
}
