//! Token buckets: one per connection for inbound frames, and a shared per-user table for
//! message sends (all devices of a user draw from the same bucket).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `per_sec` tokens per second.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: u32, per_sec: f64) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            tokens: capacity,
            capacity,
            per_sec,
            updated: Instant::now(),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.per_sec >= self.capacity
    }
}

/// Per-user buckets for one kind of action.
#[derive(Debug)]
pub struct UserLimiter {
    buckets: Mutex<HashMap<i64, Bucket>>,
    capacity: u32,
    per_sec: f64,
}

impl UserLimiter {
    /// `per_min` sustained, `burst` at once.
    pub fn per_minute(per_min: u32, burst: u32) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            capacity: burst.max(1),
            per_sec: f64::from(per_min.max(1)) / 60.0,
        }
    }

    /// `per_hour` sustained, `burst` at once.
    pub fn per_hour(per_hour: u32, burst: u32) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            capacity: burst.max(1),
            per_sec: f64::from(per_hour.max(1)) / 3600.0,
        }
    }

    /// Takes one token for `user`; `Err(secs)` says when to retry (at least 1).
    pub fn check(&self, user: i64) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Forget users whose buckets have refilled; they behave exactly like new ones.
            buckets.retain(|_, b| !b.is_full(now));
        }
        let bucket = buckets
            .entry(user)
            .or_insert_with(|| Bucket::new(self.capacity, self.per_sec));
        bucket
            .take(now)
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills_over_time() {
        let mut b = Bucket::new(3, 1.0);
        let t0 = Instant::now();
        assert!(b.take(t0).is_ok() && b.take(t0).is_ok() && b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(b.take(t0 + Duration::from_millis(1100)).is_ok());
    }

    #[test]
    fn users_have_separate_buckets() {
        let l = UserLimiter::per_minute(60, 2);
        assert!(l.check(1).is_ok() && l.check(1).is_ok());
        assert!(l.check(1).unwrap_err() >= 1);
        assert!(l.check(2).is_ok());
    }
}
