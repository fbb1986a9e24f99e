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

/// Shards of a [`PerUser`] map (a user's entry lives in shard `user % SHARDS`): users rarely
/// wait for one another.
const SHARDS: usize = 32;

/// A shard is swept (entries that may go are forgotten) when it holds this many entries, and
/// afterwards only once it has doubled since the last sweep, so the cost of sweeping stays
/// proportional to the insertions that caused it.
const SWEEP_AT: usize = 4096;

/// One shard of a [`PerUser`] map.
#[derive(Debug)]
struct Shard<V> {
    entries: HashMap<i64, V>,
    sweep_at: usize,
}

/// Per-user entries split over [`SHARDS`] locks, swept as [`SWEEP_AT`] says.
#[derive(Debug)]
struct PerUser<V> {
    shards: Vec<Mutex<Shard<V>>>,
}

impl<V> PerUser<V> {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
        }
    }

    /// `user`'s shard, locked; a full shard first forgets the entries `gone` says may go.
    fn shard(&self, user: i64, gone: impl Fn(&V) -> bool) -> std::sync::MutexGuard<'_, Shard<V>> {
        let mut shard = self.shards[user.rem_euclid(SHARDS as i64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.entries.len() >= shard.sweep_at {
            shard.entries.retain(|_, v| !gone(v));
            shard.sweep_at = (shard.entries.len() * 2).max(SWEEP_AT);
        }
        shard
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }
}

/// Per-user buckets for one kind of action.
#[derive(Debug)]
pub struct UserLimiter {
    buckets: PerUser<Bucket>,
    capacity: u32,
    per_sec: f64,
}

impl UserLimiter {
    fn with_rate(burst: u32, per_sec: f64) -> Self {
        Self {
            buckets: PerUser::new(),
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
        // A refilled bucket behaves exactly like a new one: it may be forgotten.
        let mut shard = self.buckets.shard(user, |b| b.is_full(now));
        let bucket = shard
            .entries
            .entry(user)
            .or_insert_with(|| Bucket::new(self.capacity, self.per_sec));
        bucket
            .take(now)
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Buckets held (users seen whose buckets have not refilled and been swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// How long tokens leased from a cluster-wide bucket may be spent before they lapse.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(1);

/// Cluster mode: tokens a node took from users' cluster-wide buckets (in Redis) in one go and
/// spends without asking Redis again. A user who spends a whole lease before it lapses is
/// leased twice as many next time (up to a quarter of the burst, or of what the bucket regains
/// in a lease's life when that is more, never more than the burst nor 64); one whose lease
/// lapsed with tokens left, half as many (down to one: one Redis question per send, as without
/// leases). The tokens come out of the one bucket, so all nodes together never let a user
/// past the limit; a node may hold up to a lease's worth that the user's devices on other
/// nodes cannot use until it lapses (`LEASE_TTL`).
///
/// A lease of two tokens or more is renewed ahead of need: the send that leaves a quarter of it
/// or less is told to ask the bucket for the next lease in the background ([`Leases::spend`]),
/// and what the bucket grants is added to what is left ([`Leases::renewed`]). A user who keeps
/// sending therefore waits for Redis only when that quarter runs out before the answer comes
/// (and then asks for its own token only); one who stops lets the lease lapse as before. The
/// node holds at most a lease and a quarter.
#[derive(Debug)]
pub(crate) struct Leases {
    leases: PerUser<Lease>,
    most: u32,
}

/// One user's lease on this node.
#[derive(Debug, Clone, Copy)]
struct Lease {
    left: u32,
    until: Instant,
    want: u32,
    /// When a renewal ahead of need was asked for, until it is answered (one at a time; one
    /// unanswered for a whole `LEASE_TTL` no longer counts).
    renewing: Option<Instant>,
}

impl Lease {
    fn renewing(&self, now: Instant) -> bool {
        self.renewing
            .is_some_and(|since| now.saturating_duration_since(since) < LEASE_TTL)
    }
}

impl Leases {
    /// Leases for buckets of `burst` tokens that regain `per_sec` a second. A lease of a
    /// quarter of what the bucket regains while it lasts keeps the user's devices on other
    /// nodes waiting no longer than a quarter of `LEASE_TTL` (a fast refill: larger leases,
    /// fewer questions to Redis).
    pub(crate) fn new(burst: u32, per_sec: f64) -> Self {
        let regained = (per_sec * LEASE_TTL.as_secs_f64() / 4.0).min(f64::from(burst)) as u32;
        Self {
            leases: PerUser::new(),
            most: (burst / 4).max(regained).clamp(1, 64),
        }
    }

    /// Spends a leased token of `user` (`Ok`), or says how many tokens to ask the bucket for
    /// before the send may go (`Err`). `Ok(Some(n))`: the token is spent, and the lease is
    /// running low: ask the bucket for `n` more without holding the send, and report the answer
    /// with [`Leases::renewed`].
    pub(crate) fn spend(&self, user: i64, now: Instant) -> Result<Option<u32>, u32> {
        // A lapsed lease only remembers how many to ask for next: it may be forgotten.
        let mut shard = self.leases.shard(user, |l| l.until <= now);
        let Some(lease) = shard.entries.get_mut(&user) else {
            return Err(1);
        };
        if lease.left > 0 && now < lease.until {
            lease.left -= 1;
            if lease.left == 0 {
                lease.want = (lease.want * 2).min(self.most);
            }
            if lease.want >= 2 && lease.left * 4 <= lease.want && !lease.renewing(now) {
                lease.renewing = Some(now);
                return Ok(Some(lease.want));
            }
            return Ok(None);
        }
        if lease.left > 0 {
            lease.want = (lease.want / 2).max(1);
            lease.left = 0;
        }
        // A renewal on its way brings the next lease: this send asks for its own token only,
        // so that the node never holds more than a lease and a quarter.
        Err(if lease.renewing(now) { 1 } else { lease.want })
    }

    /// The bucket granted `granted` tokens to `user`, one of them spent now.
    pub(crate) fn granted(&self, user: i64, granted: u32, now: Instant) {
        let mut shard = self.leases.shard(user, |l| l.until <= now);
        let lease = shard.entries.entry(user).or_insert(Lease {
            left: 0,
            until: now,
            want: 1,
            renewing: None,
        });
        lease.left = granted.saturating_sub(1);
        lease.until = now + LEASE_TTL;
        if lease.left == 0 && granted >= lease.want {
            lease.want = (lease.want * 2).min(self.most);
        }
    }

    /// The bucket answered a renewal that [`Leases::spend`] asked for: `granted` tokens (none
    /// when it refused, or Redis did not answer) join what is left of `user`'s lease, which
    /// then lasts another `LEASE_TTL`.
    pub(crate) fn renewed(&self, user: i64, granted: u32, now: Instant) {
        let mut shard = self.leases.shard(user, |l| l.until <= now);
        let Some(lease) = shard.entries.get_mut(&user) else {
            if granted > 0 {
                shard.entries.insert(
                    user,
                    Lease {
                        left: granted,
                        until: now + LEASE_TTL,
                        want: granted.min(self.most),
                        renewing: None,
                    },
                );
            }
            return;
        };
        lease.renewing = None;
        if granted > 0 {
            if now >= lease.until {
                lease.left = 0;
            }
            lease.left = lease.left.saturating_add(granted);
            lease.until = now + LEASE_TTL;
        }
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
        for shard in &slow.buckets.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.sweep_at >= shard.entries.len(), "{}", shard.sweep_at);
        }
    }

    #[test]
    fn leases_grow_while_spent_and_shrink_when_they_lapse() {
        let leases = Leases::new(40, 2.0);
        let t0 = Instant::now();
        // Renewals ahead of need are answered at once with nothing here, as when the bucket
        // refuses them (see the test after this one).
        let spend = |user, now| {
            leases.spend(user, now).map(|renew| {
                if renew.is_some() {
                    leases.renewed(user, 0, now);
                }
            })
        };
        // A new user asks for one token; each lease spent in full doubles the next, up to a
        // quarter of the burst.
        assert_eq!(spend(7, t0), Err(1));
        leases.granted(7, 1, t0);
        assert_eq!(spend(7, t0), Err(2));
        leases.granted(7, 2, t0);
        assert_eq!(spend(7, t0), Ok(()));
        assert_eq!(spend(7, t0), Err(4));
        leases.granted(7, 4, t0);
        for _ in 0..3 {
            assert_eq!(spend(7, t0), Ok(()));
        }
        assert_eq!(spend(7, t0), Err(8));
        leases.granted(7, 8, t0);
        for _ in 0..7 {
            assert_eq!(spend(7, t0), Ok(()));
        }
        assert_eq!(spend(7, t0), Err(10), "capped at burst / 4");
        // The bucket may grant fewer than asked: those are spent, then it is asked again.
        leases.granted(7, 3, t0);
        assert_eq!(spend(7, t0), Ok(()));
        assert_eq!(spend(7, t0), Ok(()));
        assert_eq!(spend(7, t0), Err(10));
        // A lease that lapses with tokens left is not spent; the next is half as large.
        leases.granted(7, 10, t0);
        let later = t0 + LEASE_TTL;
        assert_eq!(spend(7, later), Err(5));
        assert_eq!(spend(8, later), Err(1), "users lease apart");
        // A small burst never leases more than one token at a time.
        let small = Leases::new(5, 1.0);
        small.granted(1, 1, t0);
        assert_eq!(small.spend(1, t0), Err(1));
        // A bucket that regains far more than its burst while a lease lasts: leases grow up
        // to the whole burst.
        let fast = Leases::new(30, 1000.0);
        assert_eq!(fast.most, 30);
        assert_eq!(Leases::new(200, 1e6).most, 64, "never above 64");
        assert_eq!(
            Leases::new(40, 80.0).most,
            20,
            "a quarter of a second's refill"
        );
    }

    #[test]
    fn a_lease_running_low_is_renewed_ahead_of_need() {
        let leases = Leases::new(40, 2.0);
        let t0 = Instant::now();
        // Grown to leases of 2: the send that spends the last token asks for the next lease
        // (of 4) ahead of need, once.
        assert_eq!(leases.spend(7, t0), Err(1));
        leases.granted(7, 1, t0);
        assert_eq!(leases.spend(7, t0), Err(2));
        leases.granted(7, 2, t0);
        assert_eq!(leases.spend(7, t0), Ok(Some(4)));
        // A send before the answer waits for the bucket, as without renewals, for its own
        // token only (the renewal brings the next lease).
        assert_eq!(leases.spend(7, t0), Err(1));
        leases.granted(7, 1, t0);
        // The answer's tokens join what is left, for another LEASE_TTL; the renewal after it is
        // asked for when a quarter of a lease (or less) is left.
        let t1 = t0 + LEASE_TTL / 2;
        leases.renewed(7, 4, t1);
        let t2 = t1 + LEASE_TTL * 3 / 4;
        assert_eq!(leases.spend(7, t2), Ok(None), "3 left");
        assert_eq!(leases.spend(7, t2), Ok(None), "2 left");
        assert_eq!(leases.spend(7, t2), Ok(Some(4)), "1 left: renew");
        assert_eq!(leases.spend(7, t2), Ok(None), "0 left: asked already");
        // A refusal (or no answer) adds nothing: the next send waits for the bucket, for a
        // lease twice as large (the last was spent in full).
        leases.renewed(7, 0, t2);
        assert_eq!(leases.spend(7, t2), Err(8));
        // A renewal that is never answered stops counting after LEASE_TTL.
        leases.granted(7, 8, t2);
        let t3 = t2 + Duration::from_millis(100);
        for _ in 0..4 {
            assert_eq!(leases.spend(7, t3), Ok(None));
        }
        assert_eq!(leases.spend(7, t3), Ok(Some(8)), "2 left of 8");
        leases.granted(7, 8, t3 + LEASE_TTL / 2);
        for _ in 0..4 {
            assert_eq!(leases.spend(7, t3 + LEASE_TTL / 2), Ok(None));
        }
        assert_eq!(
            leases.spend(7, t3 + LEASE_TTL / 2),
            Ok(None),
            "still waiting for the first answer"
        );
        leases.granted(7, 8, t3 + LEASE_TTL);
        for _ in 0..4 {
            assert_eq!(leases.spend(7, t3 + LEASE_TTL), Ok(None));
        }
        assert_eq!(
            leases.spend(7, t3 + LEASE_TTL),
            Ok(Some(8)),
            "the unanswered one no longer counts"
        );
        // Leases of one token are never renewed ahead (that would take a token the user may
        // never spend).
        let one = Leases::new(5, 1.0);
        one.granted(1, 2, t0);
        assert_eq!(one.spend(1, t0), Ok(None));
        // An answer for a user without a lease here starts one, which lapses as any other.
        leases.renewed(11, 3, t0);
        assert_eq!(leases.spend(11, t0), Ok(None));
        assert_eq!(
            leases.spend(11, t0 + LEASE_TTL),
            Err(1),
            "lapsed with tokens left"
        );
    }

    #[test]
    fn users_have_separate_buckets() {
        let l = UserLimiter::per_minute(60, 2);
        assert!(l.check(1).is_ok() && l.check(1).is_ok());
        assert!(l.check(1).unwrap_err() >= 1);
        assert!(l.check(2).is_ok());
    }
}
