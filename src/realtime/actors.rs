//! Sharded maps of live actors by key, read from any thread without a round trip to the actor
//! that owns them: the registry starts conversation and call actors and records them here; every
//! send, join, receipt or call signal finds its actor with a read lock on one shard. Where the
//! registry starts them is [`Placement`]'s choice.

use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::thread::ThreadId;

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

/// Where the registry starts conversation and call actors. Once the HTTP workers have joined,
/// on their threads, which also run the sessions: next to the session whose command needs the
/// actor when there is one, so that a command, its actor's work and the reply need not wake
/// other threads (each hand-off between threads costs a wake-up and a context switch); else in
/// turn. Until a worker joins (an engine without an HTTP server), on the engine's own arbiter.
pub(crate) struct Placement {
    /// The engine's own arbiter.
    own: ArbiterHandle,
    /// The HTTP workers' arbiters, by thread.
    workers: RwLock<Vec<(ThreadId, ArbiterHandle)>>,
    /// Turns for actors not placed next to a session.
    next: AtomicUsize,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement").finish_non_exhaustive()
    }
}

impl Placement {
    /// Placement on `own` until workers join.
    pub(crate) fn new(own: ArbiterHandle) -> Self {
        Self {
            own,
            workers: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Records the calling thread's arbiter as a worker's (an HTTP worker building its
    /// services; a second call from the same thread changes nothing). Workers whose arbiter has
    /// stopped (one restarted after a failure) are forgotten.
    pub(crate) fn join_current(&self) {
        let Some(handle) = Arbiter::try_current() else {
            return;
        };
        let thread = std::thread::current().id();
        let mut workers = self.workers.write().unwrap_or_else(PoisonError::into_inner);
        workers.retain(|(t, h)| *t == thread || h.spawn(std::future::ready(())));
        if !workers.iter().any(|(t, _)| *t == thread) {
            workers.push((thread, handle));
        }
    }

    /// Workers joined so far.
    #[cfg(test)]
    pub(crate) fn workers(&self) -> usize {
        self.workers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The arbiter for an actor wanted by code running on thread `near`: that thread's if it
    /// is a worker's, else the next in turn.
    pub(crate) fn pick(&self, near: Option<ThreadId>) -> ArbiterHandle {
        let workers = self.workers.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, handle)) = near.and_then(|n| workers.iter().find(|(t, _)| *t == n)) {
            return handle.clone();
        }
        if workers.is_empty() {
            return self.own.clone();
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        workers[turn % workers.len()].1.clone()
    }

    /// Stops the engine's own arbiter (the workers' stop with the HTTP server).
    pub(crate) fn stop_own(&self) {
        self.own.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    /// The thread `arbiter` runs its tasks on.
    async fn thread_of(arbiter: &ArbiterHandle) -> ThreadId {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(arbiter.spawn(async move {
            let _ = tx.send(std::thread::current().id());
        }));
        rx.await.expect("the arbiter runs")
    }

    /// Has `placement` join from `arbiter`'s thread (twice, as a worker with two listeners
    /// does); returns that thread.
    async fn join_from(arbiter: &Arbiter, placement: &Arc<Placement>) -> ThreadId {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let placement = Arc::clone(placement);
        arbiter.spawn(async move {
            placement.join_current();
            placement.join_current();
            let _ = tx.send(std::thread::current().id());
        });
        rx.await.expect("the arbiter runs")
    }

    #[actix_web::test]
    async fn actors_start_next_to_the_worker_that_asks_else_on_workers_in_turn() {
        let own = Arbiter::new();
        let own_thread = thread_of(&own.handle()).await;
        let placement = Arc::new(Placement::new(own.handle()));
        // No worker yet: the engine's own arbiter.
        assert_eq!(thread_of(&placement.pick(None)).await, own_thread);

        let (one, two) = (Arbiter::new(), Arbiter::new());
        let t1 = join_from(&one, &placement).await;
        let t2 = join_from(&two, &placement).await;
        assert_eq!(placement.workers(), 2);
        // Asked from a worker: that worker, every time.
        for _ in 0..3 {
            assert_eq!(thread_of(&placement.pick(Some(t2))).await, t2);
        }
        // Asked from elsewhere: the workers in turn, no longer the engine's own arbiter.
        let here = std::thread::current().id();
        let mut seen = HashSet::new();
        for _ in 0..4 {
            seen.insert(thread_of(&placement.pick(Some(here))).await);
            seen.insert(thread_of(&placement.pick(None)).await);
        }
        assert_eq!(seen, HashSet::from([t1, t2]));

        // A worker that stopped is forgotten when its replacement joins.
        one.stop();
        one.join().expect("the worker's thread ends");
        let three = Arbiter::new();
        let t3 = join_from(&three, &placement).await;
        assert_eq!(placement.workers(), 2);
        let mut seen = HashSet::new();
        for _ in 0..4 {
            seen.insert(thread_of(&placement.pick(None)).await);
        }
        assert_eq!(seen, HashSet::from([t2, t3]));
        for arbiter in [own, two, three] {
            arbiter.stop();
        }
    }
}
