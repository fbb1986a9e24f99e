//! The session directory: every live session of this node by user, with what it takes to reach
//! it (its bounded outbound queue, dialect and labels), readable from any thread without asking
//! an actor. Conversation and call actors push committed events straight into recipients'
//! queues through it; the registry actor keeps supervising sessions (presence, kicks, clean-up)
//! but is not on the per-message path.
//!
//! [`Delivery`] is the seam for reaching users: the [`Directory`] delivers to sessions of this
//! process; a delivery that also reaches other nodes is one more implementation of the same
//! trait.

use super::dialect::Media;
use super::protocol::{Outbound, ServerEvent};
use super::registry::CloseSession;
use super::session::{Link, Offer, CLOSE_SLOW_CONSUMER};
use crate::metrics::{Metrics, Queue};
use actix::Recipient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Shards of the directory (a power of two); users spread over them by id.
const SHARDS: usize = 64;

/// Delivers events to users' live sessions.
pub trait Delivery: Send + Sync + std::fmt::Debug {
    /// Offers `event` to every live session of `users`, except the session `skip`; answers how
    /// many sessions took it.
    fn deliver(&self, users: &[i64], event: &Arc<ServerEvent>, skip: Option<u64>) -> usize;

    /// Offers `event` to one session of a user; answers whether it took it.
    fn deliver_to_session(&self, user: i64, key: u64, event: &Arc<ServerEvent>) -> bool;

    /// The media providers the live sessions of `user` can join between them (`None`: the user
    /// has no live session), or those of its session `key` alone.
    fn media_of(&self, user: i64, key: Option<u64>) -> Option<Media>;
}

/// One live session as the directory knows it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    /// Process-unique session key.
    pub key: u64,
    /// The session's user.
    pub user: i64,
    /// Its outbound queue, close signal and dialect.
    pub link: Link,
    /// Stops the session actor.
    pub control: Recipient<CloseSession>,
    /// Set once the session was cut off (slow consumer): nothing more is offered to it.
    cut: AtomicBool,
}

impl SessionHandle {
    /// A handle for a session that is starting.
    pub(crate) fn new(
        key: u64,
        user: i64,
        link: Link,
        control: Recipient<CloseSession>,
    ) -> Arc<Self> {
        Arc::new(Self {
            key,
            user,
            link,
            control,
            cut: AtomicBool::new(false),
        })
    }

    /// Offers an event; a full queue cuts the session off (see [`Directory::cut`]).
    fn offer(&self, event: &Arc<ServerEvent>, metrics: &Metrics) -> bool {
        if self.cut.load(Ordering::Relaxed) {
            return false;
        }
        match self
            .link
            .offer(Outbound::Event(Arc::clone(event)), self.user)
        {
            Offer::Queued => true,
            Offer::Full => {
                self.cut_off(metrics);
                false
            }
            Offer::Closed => false,
        }
    }

    /// A slow consumer: stop offering to it, count the drop and stop its actor (the transport
    /// already got its close request from the link).
    fn cut_off(&self, metrics: &Metrics) {
        if !self.cut.swap(true, Ordering::Relaxed) {
            metrics.queue_drop(Queue::Outbound);
            let _ = self.control.try_send(CloseSession {
                code: CLOSE_SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full".into(),
            });
        }
    }
}

type Shard = RwLock<HashMap<i64, Vec<Arc<SessionHandle>>>>;

/// The sharded map of live sessions of this process.
#[derive(Debug)]
pub struct Directory {
    shards: Box<[Shard]>,
    metrics: Arc<Metrics>,
}

impl Directory {
    /// An empty directory counting deliveries and drops in `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            metrics,
        }
    }

    fn shard(&self, user: i64) -> &Shard {
        // Ids are sequential: the low bits spread them evenly.
        &self.shards[(user.unsigned_abs() as usize) & (SHARDS - 1)]
    }

    /// Adds a session (from its actor's start, so events reach it from its first frame on).
    pub(crate) fn insert(&self, handle: Arc<SessionHandle>) {
        let mut shard = self
            .shard(handle.user)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        shard.entry(handle.user).or_default().push(handle);
    }

    /// Whether `user` has a live session on this node.
    pub(crate) fn holds(&self, user: i64) -> bool {
        self.shard(user)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&user)
    }

    /// Removes a session; answers whether it was there.
    pub(crate) fn remove(&self, user: i64, key: u64) -> bool {
        let mut shard = self
            .shard(user)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(list) = shard.get_mut(&user) else {
            return false;
        };
        let before = list.len();
        list.retain(|h| h.key != key);
        let removed = list.len() < before;
        if list.is_empty() {
            shard.remove(&user);
        }
        removed
    }
}

impl Delivery for Directory {
    fn deliver(&self, users: &[i64], event: &Arc<ServerEvent>, skip: Option<u64>) -> usize {
        let mut delivered = 0;
        for &user in users {
            let shard = self
                .shard(user)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(list) = shard.get(&user) else {
                continue;
            };
            for handle in list {
                if Some(handle.key) != skip && handle.offer(event, &self.metrics) {
                    delivered += 1;
                }
            }
        }
        self.metrics.fanned_out(delivered);
        delivered
    }

    fn deliver_to_session(&self, user: i64, key: u64, event: &Arc<ServerEvent>) -> bool {
        let shard = self
            .shard(user)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let delivered = shard
            .get(&user)
            .and_then(|list| list.iter().find(|h| h.key == key))
            .is_some_and(|h| h.offer(event, &self.metrics));
        self.metrics.fanned_out(usize::from(delivered));
        delivered
    }

    fn media_of(&self, user: i64, key: Option<u64>) -> Option<Media> {
        let shard = self
            .shard(user)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(&user)?
            .iter()
            .filter(|h| key.is_none_or(|k| h.key == k))
            .map(|h| h.link.dialect.media())
            .reduce(Media::union)
    }
}
