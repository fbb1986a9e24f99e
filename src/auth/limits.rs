//! Limits on guessing credentials and on sending one-time codes, kept in memory.
//!
//! Password logins and one-time code checks count wrong answers twice: per account (the phone
//! or e-mail tried, whether or not it exists) and per client address (an IPv6 client by its
//! /64, which one host usually has to itself). `AUTH_ACCOUNT_MAX_FAILURES` or
//! `AUTH_ADDRESS_MAX_FAILURES` wrong answers within `AUTH_FAILURE_WINDOW_SECS` lock that
//! account or address for `AUTH_LOCKOUT_SECS`, doubled for each further lockout within the
//! window, up to `AUTH_LOCKOUT_MAX_SECS`. A locked account or address is refused before any
//! database or password work. Attempts still being checked count against the limit, so a burst
//! of parallel guesses cannot slip past it; one that ends without a wrong answer is given back,
//! and a right answer also clears the account's count (never the address's: a guesser who owns
//! one account must not be able to reset it).
//!
//! Sending codes is limited per client address (`OTP_SENDS_PER_ADDRESS_PER_HOUR`) and for the
//! whole server (`OTP_SENDS_PER_MINUTE`), on top of the per-phone cooldown kept in the
//! database, so one client cannot have codes sent to thousands of numbers.
//!
//! Every table holds at most `AUTH_LIMITER_ENTRIES` keys. When one is full, entries with
//! nothing left to remember go first, then, down to three quarters of the capacity, the least
//! recently seen of those that are not locked (locked ones only when nothing else is left).

use crate::config::Config;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a limit protects, as written to logs and the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One account (phone or e-mail).
    Account,
    /// One client address.
    Address,
}

impl Scope {
    /// `account` or `address`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Address => "address",
        }
    }
}

/// A lockout that has just started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lockout {
    /// Account or address.
    pub scope: Scope,
    /// The account key or address that is locked.
    pub key: String,
    /// Wrong answers that led to it.
    pub failures: u32,
    /// How long it lasts.
    pub duration: Duration,
    /// Lockouts of this key in a row, this one included.
    pub level: u32,
}

/// Why an attempt is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// When to try again.
    pub retry_after: Duration,
    /// The lockouts this refusal started (to be logged and audited once), if any.
    pub lockouts: Vec<Lockout>,
}

impl Refusal {
    /// `Retry-After` in whole seconds, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 || secs == 0 {
            secs + 1
        } else {
            secs
        }
    }
}

/// The key a client address counts under: IPv4 addresses as they are, IPv6 ones by their /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !(u128::MAX >> 64);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// One key's record of wrong answers.
#[derive(Clone, Debug)]
struct Strikes {
    failures: u32,
    window_start: Instant,
    pending: u32,
    locked_until: Option<Instant>,
    lockouts: u32,
    last_seen: Instant,
}

impl Strikes {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            window_start: now,
            pending: 0,
            locked_until: None,
            lockouts: 0,
            last_seen: now,
        }
    }

    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// Forgets failures older than the window and a lockout that ended a window ago.
    fn decay(&mut self, now: Instant, window: Duration) {
        if now.saturating_duration_since(self.window_start) >= window {
            self.failures = 0;
            self.window_start = now;
        }
        if let Some(until) = self.locked_until {
            if until <= now && now.saturating_duration_since(until) >= window {
                self.locked_until = None;
                self.lockouts = 0;
            }
        }
    }

    /// Nothing here that the next attempt would need.
    fn idle(&self, now: Instant, window: Duration) -> bool {
        let mut probe = self.clone();
        probe.decay(now, window);
        probe.pending == 0
            && probe.failures == 0
            && probe.lockouts == 0
            && probe.locked_until.is_none()
    }
}

/// Counts wrong answers per key and locks keys that have too many.
#[derive(Debug)]
struct Strikeboard<K> {
    scope: Scope,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    lockout_max: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, Strikes>>,
}

impl<K: Clone + Eq + Hash + ToString> Strikeboard<K> {
    fn new(scope: Scope, max_failures: u32, config: &Config) -> Self {
        Self {
            scope,
            max_failures: max_failures.max(1),
            window: config.auth_failure_window,
            lockout: config.auth_lockout,
            lockout_max: config.auth_lockout_max.max(config.auth_lockout),
            capacity: config.auth_limiter_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Strikes>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an attempt in advance, or refuses it when the key is locked or already has as
    /// many attempts under way as it has failures left.
    fn begin(&self, key: &K, now: Instant) -> Result<(), Refusal> {
        let mut entries = self.lock();
        if !entries.contains_key(key) {
            self.make_room(&mut entries, now);
        }
        let entry = entries
            .entry(key.clone())
            .or_insert_with(|| Strikes::new(now));
        entry.decay(now, self.window);
        entry.last_seen = now;
        if let Some(until) = entry.locked_until.filter(|u| *u > now) {
            return Err(Refusal {
                retry_after: until - now,
                lockouts: Vec::new(),
            });
        }
        if entry.failures.saturating_add(entry.pending) >= self.max_failures {
            // Other attempts for this key are still being checked and could lock it.
            return Err(Refusal {
                retry_after: Duration::from_secs(1),
                lockouts: Vec::new(),
            });
        }
        entry.pending += 1;
        Ok(())
    }

    /// An attempt begun with [`Strikeboard::begin`] gave a wrong answer; locks the key when that
    /// was one too many.
    fn failed(&self, key: &K, now: Instant) -> Option<Refusal> {
        let mut entries = self.lock();
        if !entries.contains_key(key) {
            // Evicted while it was being checked: the failure still counts.
            self.make_room(&mut entries, now);
        }
        let entry = entries
            .entry(key.clone())
            .or_insert_with(|| Strikes::new(now));
        entry.pending = entry.pending.saturating_sub(1);
        entry.decay(now, self.window);
        entry.last_seen = now;
        entry.failures += 1;
        if entry.failures < self.max_failures {
            return None;
        }
        entry.lockouts = entry.lockouts.saturating_add(1);
        let factor = 1u32 << (entry.lockouts - 1).min(20);
        let duration = self.lockout.saturating_mul(factor).min(self.lockout_max);
        let failures = entry.failures;
        entry.failures = 0;
        entry.window_start = now;
        entry.locked_until = Some(now + duration);
        Some(Refusal {
            retry_after: duration,
            lockouts: vec![Lockout {
                scope: self.scope,
                key: key.to_string(),
                failures,
                duration,
                level: entry.lockouts,
            }],
        })
    }

    /// An attempt ended without a wrong answer: it no longer counts, and with `clear` the key's
    /// failures are forgotten too.
    fn settled(&self, key: &K, clear: bool) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.pending = entry.pending.saturating_sub(1);
            if clear {
                entry.failures = 0;
            }
        }
    }

    /// Keeps the table under its capacity (see the module docs for the order).
    fn make_room(&self, entries: &mut HashMap<K, Strikes>, now: Instant) {
        if entries.len() < self.capacity {
            return;
        }
        entries.retain(|_, e| !e.idle(now, self.window));
        evict_down_to(entries, self.capacity, |e| (e.locked(now), e.last_seen));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The shape of a token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Clone, Copy, Debug)]
struct Rate {
    burst: f64,
    per_sec: f64,
}

impl Rate {
    /// `count` at once, and `count` per `period`.
    fn new(count: u32, period: Duration) -> Self {
        let count = f64::from(count.max(1));
        Self {
            burst: count,
            per_sec: count / period.as_secs_f64().max(1.0),
        }
    }

    /// How long an empty bucket takes to be full again.
    fn refill_time(self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_sec)
    }
}

/// A token bucket's level.
#[derive(Clone, Copy, Debug)]
struct Tokens {
    level: f64,
    updated: Instant,
}

impl Tokens {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            level: rate.burst,
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.level = (self.level + elapsed * rate.per_sec).min(rate.burst);
        if self.level >= 1.0 {
            self.level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.level) / rate.per_sec))
        }
    }

    /// Returns a token taken for something that did not happen.
    fn give_back(&mut self, rate: Rate) {
        self.level = (self.level + 1.0).min(rate.burst);
    }
}

/// Makes room in a table of at most `capacity` entries: when it holds more than three quarters
/// of that, the entries that rank lowest go until three quarters are left (ties may take a few
/// more), so a full table is swept at most once per quarter of its capacity in new keys.
fn evict_down_to<K, V, R: Ord + Copy>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    rank: impl Fn(&V) -> R,
) {
    let keep = capacity.saturating_sub((capacity / 4).max(1));
    if map.len() <= keep {
        return;
    }
    let mut ranks: Vec<R> = map.values().map(&rank).collect();
    let drop = ranks.len() - keep;
    let (_, cut, _) = ranks.select_nth_unstable(drop - 1);
    let cut = *cut;
    map.retain(|_, v| rank(v) > cut);
}

/// Token buckets per key, at most `capacity` of them.
#[derive(Debug)]
struct Buckets<K> {
    capacity: usize,
    rate: Rate,
    entries: Mutex<HashMap<K, Tokens>>,
}

impl<K: Clone + Eq + Hash> Buckets<K> {
    fn new(rate: Rate, capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            rate,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Tokens>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut entries = self.lock();
        if !entries.contains_key(key) && entries.len() >= self.capacity {
            // A bucket untouched for its refill time is full: forgetting it changes nothing.
            let refill = self.rate.refill_time();
            entries.retain(|_, t| now.saturating_duration_since(t.updated) < refill);
            evict_down_to(&mut entries, self.capacity, |t| t.updated);
        }
        entries
            .entry(key.clone())
            .or_insert_with(|| Tokens::full(self.rate, now))
            .take(self.rate, now)
    }

    fn give_back(&self, key: &K) {
        if let Some(tokens) = self.lock().get_mut(key) {
            tokens.give_back(self.rate);
        }
    }
}

/// The authentication limits of one server process.
#[derive(Debug)]
pub(crate) struct AuthLimits {
    accounts: Strikeboard<String>,
    addresses: Strikeboard<IpAddr>,
    otp_addresses: Buckets<IpAddr>,
    otp_rate: Rate,
    otp_global: Mutex<Tokens>,
}

impl AuthLimits {
    /// The limits the configuration describes.
    pub(crate) fn new(config: &Config) -> Self {
        let otp_rate = Rate::new(config.otp_sends_per_minute, Duration::from_secs(60));
        Self {
            accounts: Strikeboard::new(Scope::Account, config.auth_account_max_failures, config),
            addresses: Strikeboard::new(Scope::Address, config.auth_address_max_failures, config),
            otp_addresses: Buckets::new(
                Rate::new(
                    config.otp_sends_per_address_per_hour,
                    Duration::from_secs(3600),
                ),
                config.auth_limiter_entries,
            ),
            otp_rate,
            otp_global: Mutex::new(Tokens::full(otp_rate, Instant::now())),
        }
    }

    /// Starts a credential check for `account` (a normalised phone or e-mail) from `client`.
    /// Refused when either is locked. The returned guard must be told how the check ended; a
    /// guard dropped untold gives the attempt back.
    pub(crate) fn begin(
        self: &Arc<Self>,
        account: &str,
        client: Option<IpAddr>,
    ) -> Result<Attempt, Refusal> {
        let now = Instant::now();
        let address = client.map(address_key);
        if let Some(ip) = &address {
            self.addresses.begin(ip, now)?;
        }
        let account = account.to_owned();
        if let Err(refusal) = self.accounts.begin(&account, now) {
            if let Some(ip) = &address {
                self.addresses.settled(ip, false);
            }
            return Err(refusal);
        }
        Ok(Attempt {
            limits: Arc::clone(self),
            account,
            address,
            done: false,
        })
    }

    /// Takes one code send for `client` and one from the server's total; refused when either
    /// is used up.
    pub(crate) fn otp_send(&self, client: Option<IpAddr>) -> Result<(), Refusal> {
        let now = Instant::now();
        let refusal = |retry_after| Refusal {
            retry_after,
            lockouts: Vec::new(),
        };
        let address = client.map(address_key);
        if let Some(ip) = &address {
            self.otp_addresses.take(ip, now).map_err(refusal)?;
        }
        let taken = self
            .otp_global
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(self.otp_rate, now);
        if taken.is_err() {
            // Nothing is sent: the address keeps its share.
            if let Some(ip) = &address {
                self.otp_addresses.give_back(ip);
            }
        }
        taken.map_err(refusal)
    }
}

/// A credential check under way (see [`AuthLimits::begin`]).
#[derive(Debug)]
pub(crate) struct Attempt {
    limits: Arc<AuthLimits>,
    account: String,
    address: Option<IpAddr>,
    done: bool,
}

impl Attempt {
    /// The credentials were right: the account's failures are forgotten.
    pub(crate) fn succeeded(mut self) {
        self.done = true;
        self.limits.accounts.settled(&self.account, true);
        if let Some(ip) = &self.address {
            self.limits.addresses.settled(ip, false);
        }
    }

    /// The credentials were wrong. When that locks the account or the address, the refusal to
    /// answer with (its lockouts to log); otherwise the caller answers as usual.
    pub(crate) fn failed(mut self) -> Option<Refusal> {
        self.done = true;
        let now = Instant::now();
        let account = self.limits.accounts.failed(&self.account, now);
        let address = self
            .address
            .as_ref()
            .and_then(|ip| self.limits.addresses.failed(ip, now));
        [account, address]
            .into_iter()
            .flatten()
            .reduce(|mut all, more| {
                all.retry_after = all.retry_after.max(more.retry_after);
                all.lockouts.extend(more.lockouts);
                all
            })
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.done {
            self.limits.accounts.settled(&self.account, false);
            if let Some(ip) = &self.address {
                self.limits.addresses.settled(ip, false);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn config(max_failures: u32, entries: usize) -> Config {
        Config {
            auth_account_max_failures: max_failures,
            auth_address_max_failures: max_failures,
            auth_failure_window: Duration::from_secs(600),
            auth_lockout: Duration::from_secs(60),
            auth_lockout_max: Duration::from_secs(200),
            auth_limiter_entries: entries,
            ..Config::default()
        }
    }

    fn board(max_failures: u32, entries: usize) -> Strikeboard<String> {
        Strikeboard::new(Scope::Account, max_failures, &config(max_failures, entries))
    }

    fn fail(b: &Strikeboard<String>, key: &str, now: Instant) -> Option<Refusal> {
        b.begin(&key.to_owned(), now).unwrap();
        b.failed(&key.to_owned(), now)
    }

    #[test]
    fn too_many_failures_lock_the_key_with_doubling_lockouts_up_to_the_cap() {
        let b = board(3, 100);
        let t0 = Instant::now();
        assert!(fail(&b, "a", t0).is_none());
        assert!(fail(&b, "a", t0).is_none());
        let refusal = fail(&b, "a", t0).expect("third failure locks");
        assert_eq!(refusal.retry_after, Duration::from_secs(60));
        assert_eq!(refusal.lockouts.len(), 1);
        let lockout = &refusal.lockouts[0];
        assert_eq!(
            (lockout.scope, lockout.key.as_str(), lockout.failures),
            (Scope::Account, "a", 3)
        );
        assert_eq!(lockout.level, 1);

        // Locked: refused without starting a new lockout; other keys are not affected.
        let later = t0 + Duration::from_secs(20);
        let refused = b.begin(&"a".to_owned(), later).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(40));
        assert!(refused.lockouts.is_empty());
        assert_eq!(refused.retry_after_secs(), 40);
        assert!(b.begin(&"b".to_owned(), later).is_ok());

        // After the lockout, the next one lasts twice as long, then stops at the cap.
        let t1 = t0 + Duration::from_secs(61);
        for _ in 0..2 {
            assert!(fail(&b, "a", t1).is_none());
        }
        let second = fail(&b, "a", t1).unwrap();
        assert_eq!(second.retry_after, Duration::from_secs(120));
        assert_eq!(second.lockouts[0].level, 2);
        let t2 = t1 + Duration::from_secs(121);
        for _ in 0..2 {
            assert!(fail(&b, "a", t2).is_none());
        }
        assert_eq!(
            fail(&b, "a", t2).unwrap().retry_after,
            Duration::from_secs(200)
        );
    }

    #[test]
    fn failures_and_past_lockouts_are_forgotten_after_the_window() {
        let b = board(2, 100);
        let t0 = Instant::now();
        assert!(fail(&b, "a", t0).is_none());
        let t1 = t0 + Duration::from_secs(601);
        assert!(fail(&b, "a", t1).is_none(), "the first failure expired");
        let lock = fail(&b, "a", t1).unwrap();
        assert_eq!(lock.lockouts[0].level, 1);
        // A window after the lockout ended, the next lockout is a first one again.
        let t2 = t1 + Duration::from_secs(60 + 601);
        assert!(fail(&b, "a", t2).is_none());
        assert_eq!(fail(&b, "a", t2).unwrap().lockouts[0].level, 1);
    }

    #[test]
    fn attempts_under_way_count_so_parallel_guesses_cannot_pass_the_limit() {
        let b = board(2, 100);
        let now = Instant::now();
        let key = "a".to_owned();
        b.begin(&key, now).unwrap();
        b.begin(&key, now).unwrap();
        let refused = b.begin(&key, now).unwrap_err();
        assert!(refused.lockouts.is_empty());
        assert!(refused.retry_after_secs() >= 1);
        // One ends without a wrong answer: its place is free again.
        b.settled(&key, false);
        b.begin(&key, now).unwrap();
    }

    #[test]
    fn a_right_answer_clears_the_failures() {
        let b = board(2, 100);
        let now = Instant::now();
        let key = "a".to_owned();
        assert!(fail(&b, "a", now).is_none());
        b.begin(&key, now).unwrap();
        b.settled(&key, true);
        assert!(fail(&b, "a", now).is_none(), "the count started again");
    }

    #[test]
    fn tables_stay_bounded_and_keep_locked_keys_longest() {
        let b = board(1, 10);
        let t0 = Instant::now();
        // A locked key, then many others that are seen later and have attempts under way.
        assert!(fail(&b, "locked", t0).is_some());
        for i in 0..100 {
            let now = t0 + Duration::from_millis(i + 1);
            b.begin(&format!("k{i}"), now).unwrap();
            assert!(b.len() <= 10, "{} entries", b.len());
        }
        let refused = b.begin(&"locked".to_owned(), t0 + Duration::from_secs(1));
        assert!(refused.is_err(), "the locked key was not evicted");
    }

    #[test]
    fn eviction_keeps_three_quarters_and_the_highest_ranked() {
        let mut map: HashMap<u32, u32> = (0..8).map(|i| (i, i)).collect();
        evict_down_to(&mut map, 8, |v| *v);
        let mut left: Vec<u32> = map.into_keys().collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3, 4, 5, 6, 7]);
        let mut tiny: HashMap<u32, u32> = HashMap::from([(1, 1)]);
        evict_down_to(&mut tiny, 1, |v| *v);
        assert!(
            tiny.is_empty(),
            "a table of one makes room for the next key"
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4);
    }

    #[test]
    fn an_attempt_locks_the_account_for_every_address_and_the_address_for_every_account() {
        let limits = Arc::new(AuthLimits::new(&config(2, 100)));
        let guesser: IpAddr = "203.0.113.1".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limits
            .begin("alice", Some(guesser))
            .unwrap()
            .failed()
            .is_none());
        let lock = limits
            .begin("bob", Some(guesser))
            .unwrap()
            .failed()
            .unwrap();
        assert_eq!(lock.lockouts.len(), 1);
        assert_eq!(lock.lockouts[0].scope, Scope::Address);
        assert_eq!(lock.lockouts[0].key, "203.0.113.1");
        assert!(limits.begin("carol", Some(guesser)).is_err());
        // Alice has one failure left, from anywhere; a second locks her account.
        let lock = limits
            .begin("alice", Some(other))
            .unwrap()
            .failed()
            .unwrap();
        assert_eq!(lock.lockouts[0].scope, Scope::Account);
        assert!(limits.begin("alice", Some(other)).is_err());
        // Others from that address are fine, and a success is not held against it.
        limits.begin("dave", Some(other)).unwrap().succeeded();
        // A dropped attempt gives its place back.
        drop(limits.begin("erin", Some(other)).unwrap());
        limits.begin("erin", Some(other)).unwrap().succeeded();
    }

    #[test]
    fn code_sends_are_limited_per_address_and_in_total() {
        let limits = AuthLimits::new(&Config {
            otp_sends_per_address_per_hour: 2,
            otp_sends_per_minute: 5,
            ..config(5, 100)
        });
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        limits.otp_send(Some(a)).unwrap();
        limits.otp_send(Some(a)).unwrap();
        let refused = limits.otp_send(Some(a)).unwrap_err();
        assert!(refused.retry_after_secs() >= 1);
        for i in 0..3 {
            let other: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            limits.otp_send(Some(other)).unwrap();
        }
        // Five sent in all: the server-wide limit refuses a fresh address too, without using up
        // that address's share.
        let fresh: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.otp_send(Some(fresh)).is_err());
        let level = limits.otp_addresses.lock()[&fresh].level;
        assert!((level - 2.0).abs() < 0.01, "{level}");
    }

    #[test]
    fn code_send_tables_stay_bounded() {
        let buckets: Buckets<u32> = Buckets::new(Rate::new(1, Duration::from_secs(3600)), 8);
        let now = Instant::now();
        for i in 0..100 {
            buckets
                .take(&i, now + Duration::from_millis(u64::from(i)))
                .unwrap();
            assert!(buckets.lock().len() <= 8);
        }
        // A recent client's exhausted bucket is still there.
        assert!(buckets.take(&99, now + Duration::from_millis(100)).is_err());
    }
}
