//! Last-seen times waiting for their write. When a user's last connection closes the registry
//! records the time here instead of running an UPDATE per user: a burst of closes (a network
//! partition, a restart of a load balancer) would otherwise queue one query per user for the
//! `DB_POOL_SIZE` slots, and those waiting longer than `DB_ACQUIRE_TIMEOUT_MS` would fail.
//! The registry writes what waits in batches of `LAST_SEEN_BATCH` users, one UPDATE each, every
//! `LAST_SEEN_FLUSH_MS` (or as soon as a batch is full); a failed batch goes back into the
//! buffer for the next flush. The buffer holds at most `LAST_SEEN_BUFFER` users: a user already
//! waiting only has their time moved forward, and a new user arriving at a full buffer is
//! dropped (and counted) — the newest times are the ones lost, because the ones waiting are
//! equally stale and a dropped user is written again at their next disconnect.

use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Users and the time each was last seen, waiting to be written (bounded).
#[derive(Debug)]
pub(crate) struct LastSeenBuffer {
    waiting: HashMap<i64, DateTime<Utc>>,
    capacity: usize,
}

impl LastSeenBuffer {
    /// An empty buffer for at most `capacity` users (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            waiting: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records that `user` was seen at `at`. False when the buffer is full and `user` was not
    /// waiting already: the time is dropped.
    pub(crate) fn record(&mut self, user: i64, at: DateTime<Utc>) -> bool {
        if let Some(t) = self.waiting.get_mut(&user) {
            *t = (*t).max(at);
            return true;
        }
        if self.waiting.len() >= self.capacity {
            return false;
        }
        self.waiting.insert(user, at);
        true
    }

    /// Takes up to `max` users out of the buffer for one write.
    pub(crate) fn take(&mut self, max: usize) -> Vec<(i64, DateTime<Utc>)> {
        let users: Vec<i64> = self.waiting.keys().take(max).copied().collect();
        users
            .into_iter()
            .filter_map(|u| self.waiting.remove(&u).map(|t| (u, t)))
            .collect()
    }

    /// Puts back a batch whose write failed; a user recorded again meanwhile keeps the later
    /// time. Answers how many users did not fit and were dropped.
    pub(crate) fn restore(&mut self, batch: Vec<(i64, DateTime<Utc>)>) -> usize {
        batch
            .into_iter()
            .filter(|(u, t)| !self.record(*u, *t))
            .count()
    }

    /// Whether `user` is waiting.
    pub(crate) fn contains(&self, user: i64) -> bool {
        self.waiting.contains_key(&user)
    }

    /// Users waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nobody waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_user_recorded_twice_waits_once_with_the_later_time() {
        let mut b = LastSeenBuffer::new(10);
        assert!(b.record(1, t(5)));
        assert!(b.record(1, t(3)));
        assert!(b.record(1, t(9)));
        assert_eq!(b.len(), 1);
        assert_eq!(b.take(10), vec![(1, t(9))]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_full_buffer_drops_new_users_but_still_moves_waiting_ones_forward() {
        let mut b = LastSeenBuffer::new(2);
        assert!(b.record(1, t(1)));
        assert!(b.record(2, t(2)));
        assert!(!b.record(3, t(3)), "a third user does not fit");
        assert!(b.record(2, t(4)), "a waiting user is updated in place");
        let mut all = b.take(10);
        all.sort_unstable();
        assert_eq!(all, vec![(1, t(1)), (2, t(4))]);
    }

    #[test]
    fn take_hands_out_at_most_a_batch_and_leaves_the_rest() {
        let mut b = LastSeenBuffer::new(100);
        for u in 0..25 {
            b.record(u, t(u));
        }
        let first = b.take(10);
        assert_eq!(first.len(), 10);
        assert_eq!(b.len(), 15);
        let rest = b.take(100);
        assert_eq!(rest.len(), 15);
        let mut users: Vec<i64> = first.iter().chain(&rest).map(|(u, _)| *u).collect();
        users.sort_unstable();
        assert_eq!(
            users,
            (0..25).collect::<Vec<_>>(),
            "every user exactly once"
        );
    }

    #[test]
    fn a_failed_batch_goes_back_keeping_newer_times_and_counting_what_does_not_fit() {
        let mut b = LastSeenBuffer::new(3);
        b.record(1, t(1));
        b.record(2, t(2));
        let batch = b.take(2);
        b.record(2, t(7));
        b.record(3, t(3));
        b.record(4, t(4));
        // 2, 3 and 4 wait; 1 comes back but the buffer is full, 2 keeps its later time.
        assert_eq!(b.restore(batch), 1);
        let mut all = b.take(10);
        all.sort_unstable();
        assert_eq!(all, vec![(2, t(7)), (3, t(3)), (4, t(4))]);
    }
}
