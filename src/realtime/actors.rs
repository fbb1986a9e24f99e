//! Sharded maps of live actors by key, read from any thread without a round trip to the actor
//! that owns them: the registry starts conversation and call actors and records them here; every
//! send, join, receipt or call signal finds its actor with a read lock on one shard.

use actix::{Actor, Addr};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{PoisonError, RwLock};

/// Shards per map (a power of two).
const SHARDS: usize = 64;

/// One shard: a part of the keys and their actors.
type Shard<K, A> = RwLock<HashMap<K, Addr<A>>>;

/// Live actors by key.
pub struct ActorMap<K, A: Actor> {
    shards: Box<[Shard<K, A>]>,
    hasher: RandomState,
}

impl<K, A: Actor> std::fmt::Debug for ActorMap<K, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorMap").finish_non_exhaustive()
    }
}

impl<K, A: Actor> Default for ActorMap<K, A> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq, A: Actor> ActorMap<K, A> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, A> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h as usize) & (SHARDS - 1)]
    }

    /// The running actor under `key`, if any.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<Addr<A>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .filter(|a| a.connected())
            .cloned()
    }

    /// Records a started actor.
    pub(crate) fn insert(&self, key: K, addr: Addr<A>) {
        self.shard(&key)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, addr);
    }

    /// Forgets the actor under `key` if it is `addr` (a newer one may have replaced it).
    pub(crate) fn remove<Q>(&self, key: &Q, addr: &Addr<A>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.get(key).is_some_and(|a| a == addr) {
            shard.remove(key);
        }
    }

    /// Running actors.
    pub(crate) fn running(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
