//! Token buckets: one per connection for inbound frames, and a shared per-user table for
//! message sends (all devices of a user draw from the same bucket).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `per_sec` tokens per second.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(capacity: u32, per_sec: f64) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            tokens: capacity,
            capacity,
            per_sec,
            updated: Instant::now(),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
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

/// Shards of a [`UserLimiter`] (a user's bucket lives in shard `user % SHARDS`): checks of
/// different users rarely wait for one another.
const SHARDS: usize = 32;

/// A shard is swept (buckets that refilled are forgotten: they behave exactly like new ones)
/// when it holds this many buckets, and afterwards only once it has doubled since the last
/// sweep, so the cost of sweeping stays proportional to the insertions that caused it.
const SWEEP_AT: usize = 4096;

#[derive(Debug)]
struct Shard {
    buckets: HashMap<i64, Bucket>,
    sweep_at: usize,
}

/// Per-user buckets for one kind of action.
#[derive(Debug)]
pub struct UserLimiter {
    shards: Vec<Mutex<Shard>>,
    capacity: u32,
    per_sec: f64,
}

impl UserLimiter {
    fn with_rate(burst: u32, per_sec: f64) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
            capacity: burst.max(1),
            per_sec,
        }
    }

    /// `per_min` sustained, `burst` at once.
    pub(crate) fn per_minute(per_min: u32, burst: u32) -> Self {
        Self::with_rate(burst, f64::from(per_min.max(1)) / 60.0)
    }

    /// `per_hour` sustained, `burst` at once.
    pub(crate) fn per_hour(per_hour: u32, burst: u32) -> Self {
        Self::with_rate(burst, f64::from(per_hour.max(1)) / 3600.0)
    }

    /// Takes one token for `user`; `Err(secs)` says when to retry (at least 1).
    pub(crate) fn check(&self, user: i64) -> Result<(), u64> {
        let now = Instant::now();
        let mut shard = self.shards[user.rem_euclid(SHARDS as i64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.buckets.len() >= shard.sweep_at {
            shard.buckets.retain(|_, b| !b.is_full(now));
            shard.sweep_at = (shard.buckets.len() * 2).max(SWEEP_AT);
        }
        let bucket = shard
            .buckets
            .entry(user)
            .or_insert_with(|| Bucket::new(self.capacity, self.per_sec));
        bucket
            .take(now)
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Buckets held (users seen whose buckets have not refilled and been swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
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
    fn sweeps_forget_refilled_buckets_and_stay_amortized() {
        // A fast refill: every bucket is full again almost at once.
        let l = UserLimiter::with_rate(1, 1e9);
        for user in 0..(SHARDS * SWEEP_AT * 3) as i64 {
            assert!(l.check(user).is_ok());
        }
        // Each shard swept whenever it reached its threshold: far fewer buckets than users.
        assert!(l.len() <= SHARDS * SWEEP_AT, "{}", l.len());
        // A slow refill: nothing can be forgotten, and the threshold doubles instead of
        // sweeping on every check.
        let slow = UserLimiter::per_hour(1, 1);
        for user in 0..(SHARDS * SWEEP_AT * 2) as i64 {
            assert!(slow.check(user).is_ok());
        }
        assert_eq!(slow.len(), SHARDS * SWEEP_AT * 2);
        assert!(slow.check(5).is_err());
        for shard in &slow.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.sweep_at >= shard.buckets.len(), "{}", shard.sweep_at);
        }
    }

    #[test]
    fn users_have_separate_buckets() {
        let l = UserLimiter::per_minute(60, 2);
        assert!(l.check(1).is_ok() && l.check(1).is_ok());
        assert!(l.check(1).unwrap_err() >= 1);
        assert!(l.check(2).is_ok());
    }
}
