//! Group commit: sends from every conversation queue up here and are written in batches, one
//! transaction per batch, each sender acknowledged only after its batch committed. Conversations
//! are sharded over `WRITE_SHARDS` writers by id; a writer commits up to `WRITE_IN_FLIGHT`
//! batches at once, never two holding the same conversation, so one conversation's batches
//! commit strictly in order and its fan-out follows seq order. Each of a writer's in-flight
//! slots has a connection of its own, outside `DB_POOL_SIZE`. A writer with one slot (the
//! default) is one thread that takes a batch, commits it on its own connection ([`Owned`]) and
//! hands the results to the conversations itself; one with more runs on the actix system and
//! hands its batches to a thread per slot ([`Dedicated`]).

use super::conversation::Committed;
use crate::db::messages::{self, BatchTrace, Draft, TxStatus, WriteCaches, Written};
use crate::db::{Db, Dedicated, Owned};
use crate::error::{AppError, AppResult};
use actix::Recipient;
use diesel::pg::PgConnection;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// One message waiting for its commit.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    /// The validated draft.
    pub draft: Draft,
    /// Where the conversation actor learns the outcome (in commit order).
    pub notify: Recipient<Committed>,
    /// The sender's reply channel (the ack).
    pub reply: oneshot::Sender<AppResult<Written>>,
    /// Session that sent it (not sent `message:new`; it gets the ack).
    pub origin: Option<u64>,
}

/// Handle to the writer shards.
#[derive(Clone, Debug)]
pub struct Writer {
    shards: Vec<mpsc::Sender<WriteRequest>>,
    pending: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts `shards` writer tasks on the current runtime, each with a queue of `queue` requests,
    /// batches of at most `batch_max` and at most `in_flight` batches committing at once (each
    /// on a connection of its own).
    pub(crate) fn start(
        db: Db,
        shards: usize,
        queue: usize,
        batch_max: usize,
        in_flight: usize,
    ) -> AppResult<Self> {
        let per_shard = (queue / shards.max(1)).max(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let caches = Arc::new(WriteCaches::new(Arc::clone(db.contact_cache())));
        let limits = Limits {
            batch_max: batch_max.max(1),
            in_flight: in_flight.max(1),
        };
        let mut senders = Vec::with_capacity(shards.max(1));
        for number in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(per_shard);
            let shard = Shard {
                db: db.clone(),
                caches: Arc::clone(&caches),
                pending: Arc::clone(&pending),
            };
            if limits.in_flight == 1 {
                let conn = db.owned(WRITER_SETUP);
                super::runtime::spawn(&format!("writer-{number}"), move || {
                    run_here(shard, conn, rx, limits.batch_max)
                })
                .map_err(AppError::internal)?;
            } else {
                let lanes = (0..limits.in_flight)
                    .map(|slot| db.dedicated(&format!("writer-{number}.{slot}"), WRITER_SETUP))
                    .collect::<AppResult<Vec<_>>>()?;
                actix::spawn(run(shard, lanes, rx, limits));
            }
            senders.push(tx);
        }
        Ok(Self {
            shards: senders,
            pending,
        })
    }

    /// Messages queued or being committed right now (shutdown waits for zero).
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Queues a request. A full queue refuses at once with `unavailable` (back-pressure) rather
    /// than growing without bound; the refusal goes to the request's reply channel.
    pub(crate) fn submit(&self, req: WriteRequest) -> bool {
        let shard = usize::try_from(req.draft.conversation_id.unsigned_abs()).unwrap_or(0)
            % self.shards.len();
        self.pending.fetch_add(1, Ordering::SeqCst);
        match self.shards[shard].try_send(req) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                let _ = r.reply.send(Err(AppError::unavailable(
                    "message queue is full; retry shortly",
                )));
                false
            }
        }
    }
}

/// Run on each new writer connection (see [`messages::BATCH_SQL`]): every statement is planned
/// once per connection, and its plan reads tables only through indexes, so it costs the same
/// however large the tables grow.
pub const WRITER_SETUP: &str = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off";

/// What one writer shares with its batches.
#[derive(Clone)]
struct Shard {
    /// The pool, for the status of a batch whose COMMIT answer was lost.
    db: Db,
    caches: Arc<WriteCaches>,
    pending: Arc<AtomicUsize>,
}

/// Committed results for one conversation, in commit order.
type Outcomes = Vec<(WriteRequest, AppResult<Written>)>;

/// Bounds of one writer.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Most messages in one batch.
    batch_max: usize,
    /// Most batches committing at once.
    in_flight: usize,
}

/// A writer with one slot, on a thread of its own (whose runtime serves the waits of a batch
/// that failed: the status query, timers): takes what its queue holds (up to `batch_max`),
/// commits it on `conn` and hands the results over, one batch after another; it ends when the
/// queue closes and is empty.
async fn run_here(
    shard: Shard,
    mut conn: Owned,
    mut rx: mpsc::Receiver<WriteRequest>,
    batch_max: usize,
) {
    // One buffer for every batch: `hand_over` empties it.
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(batch_max);
    loop {
        if rx.recv_many(&mut batch, batch_max).await == 0 {
            return;
        }
        let results = commit_batch(&shard, &mut Lane::Here(&mut conn), &batch).await;
        hand_over(&shard, &mut batch, results);
    }
}

/// One writer: takes batches off its queue and commits them, several at once as long as no two
/// of them hold the same conversation. A batch that shares a conversation with one still
/// committing waits for it (taking on what queues meanwhile), so each conversation's batches
/// commit, and reach the conversation, strictly in order; under load that makes batches large,
/// under light load a send does not wait for the commit before it.
async fn run(
    shard: Shard,
    mut lanes: Vec<Dedicated>,
    mut rx: mpsc::Receiver<WriteRequest>,
    limits: Limits,
) {
    let mut flying = FuturesUnordered::new();
    let mut held: HashSet<i64> = HashSet::new();
    loop {
        let mut batch: Vec<WriteRequest> = Vec::with_capacity(limits.batch_max);
        let open = loop {
            tokio::select! {
                biased;
                Some(done) = flying.next(), if !flying.is_empty() => {
                    release(&mut held, &mut lanes, done);
                }
                n = rx.recv_many(&mut batch, limits.batch_max) => break n > 0,
            }
        };
        if !open {
            while let Some(done) = flying.next().await {
                release(&mut held, &mut lanes, done);
            }
            return;
        }
        while lanes.is_empty()
            || batch
                .iter()
                .any(|r| held.contains(&r.draft.conversation_id))
        {
            let Some(done) = flying.next().await else {
                break;
            };
            release(&mut held, &mut lanes, done);
            while batch.len() < limits.batch_max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        let conversations: Vec<i64> = {
            let mut ids: Vec<i64> = batch.iter().map(|r| r.draft.conversation_id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let Some(lane) = lanes.pop() else {
            // Unreachable: the loop above waits for a free lane.
            continue;
        };
        held.extend(&conversations);
        flying.push(commit_and_hand_over(
            shard.clone(),
            lane,
            batch,
            conversations,
        ));
    }
}

fn release(held: &mut HashSet<i64>, lanes: &mut Vec<Dedicated>, done: (Vec<i64>, Dedicated)) {
    let (conversations, lane) = done;
    for c in conversations {
        held.remove(&c);
    }
    lanes.push(lane);
}

/// Commits one batch on `lane` and hands each conversation its results; answers the batch's
/// conversations and the lane once they are free again.
async fn commit_and_hand_over(
    shard: Shard,
    lane: Dedicated,
    mut batch: Vec<WriteRequest>,
    conversations: Vec<i64>,
) -> (Vec<i64>, Dedicated) {
    let results = commit_batch(&shard, &mut Lane::Thread(&lane), &batch).await;
    hand_over(&shard, &mut batch, results);
    (conversations, lane)
}

/// Commits `batch` on `lane`: one result per request, in order.
async fn commit_batch(
    shard: &Shard,
    lane: &mut Lane<'_>,
    batch: &[WriteRequest],
) -> Vec<AppResult<Written>> {
    let drafts: Vec<Draft> = batch.iter().map(|r| r.draft.clone()).collect();
    match commit(shard, lane, drafts).await {
        Ok(results) => results,
        Err(e) => {
            let shared = share(&e);
            batch.iter().map(|_| Err(shared())).collect()
        }
    }
}

/// Hands each conversation of a committed batch its results (in batch order, which is their seq
/// order), leaving `batch` empty.
fn hand_over(shard: &Shard, batch: &mut Vec<WriteRequest>, results: Vec<AppResult<Written>>) {
    let mut groups: Vec<(Recipient<Committed>, Outcomes)> = Vec::new();
    for (req, res) in batch.drain(..).zip(results) {
        match groups.iter_mut().find(|(r, _)| *r == req.notify) {
            Some((_, items)) => items.push((req, res)),
            None => groups.push((req.notify.clone(), vec![(req, res)])),
        }
    }
    let done: usize = groups.iter().map(|(_, items)| items.len()).sum();
    for (recipient, items) in groups {
        recipient.do_send(Committed(items));
    }
    shard.pending.fetch_sub(done, Ordering::SeqCst);
}

/// Where a writer runs a batch's database work.
enum Lane<'a> {
    /// On the writer's own thread and connection.
    Here(&'a mut Owned),
    /// On a connection thread the writer hands the work to.
    Thread(&'a Dedicated),
}

impl Lane<'_> {
    async fn run<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut PgConnection) -> AppResult<T> + Send + 'static,
    ) -> AppResult<T> {
        match self {
            Lane::Here(conn) => conn.run(work),
            Lane::Thread(lane) => lane.run(work).await,
        }
    }
}

/// Commits with one retry for transient failures (deadlock, serialization, a broken pooled
/// connection); a database that stays down fails the batch with `unavailable`.
///
/// A connection that breaks at COMMIT leaves the outcome open: PostgreSQL may have committed
/// the batch and only its answer was lost. The transaction's status (by the id it recorded)
/// settles that first: a batch that is in keeps the results it committed, so no draft is
/// written twice, also those without a client message id. Only a batch that is not in (or
/// whose status cannot be learnt) is retried; the retry finds drafts with an idempotency key
/// that did commit and returns them as stored. A small batch whose drafts all have such a key
/// is written without `BEGIN` and `COMMIT` (one statement is its own transaction), records no
/// id, and is settled by that retry alone.
async fn commit(
    shard: &Shard,
    lane: &mut Lane<'_>,
    drafts: Vec<Draft>,
) -> AppResult<Vec<AppResult<Written>>> {
    let retry = drafts.clone();
    let trace = Arc::new(Mutex::new(BatchTrace::default()));
    let recorded = Arc::clone(&trace);
    let caches = Arc::clone(&shard.caches);
    let caches_again = Arc::clone(&caches);
    let error = match lane
        .run(move |conn| messages::write_batch_traced(conn, &drafts, &recorded, Some(&caches)))
        .await
    {
        Ok(r) => return Ok(r),
        Err(e) if transient(&e) => e,
        Err(e) => return Err(e),
    };
    if let Some(results) = committed_anyway(&shard.db, &trace).await {
        return Ok(results);
    }
    tracing::warn!(error = %describe(&error), "message batch failed; retrying once");
    let unrecorded = Mutex::new(BatchTrace::default());
    lane.run(move |conn| {
        messages::write_batch_traced(conn, &retry, &unrecorded, Some(&caches_again))
    })
    .await
}

/// The results of a batch whose COMMIT failed on this side but went through on the server's.
async fn committed_anyway(db: &Db, trace: &Mutex<BatchTrace>) -> Option<Vec<AppResult<Written>>> {
    let (txid, results) = {
        let mut t = messages::trace_of(trace);
        (t.txid?, t.results.take()?)
    };
    match db
        .run(move |conn| messages::transaction_status(conn, txid))
        .await
    {
        Ok(TxStatus::Committed) => {
            tracing::warn!(
                txid,
                "message batch committed; the answer to its COMMIT was lost"
            );
            Some(results)
        }
        Ok(TxStatus::Aborted) => {
            tracing::warn!(txid, "message batch did not commit");
            None
        }
        Ok(status @ (TxStatus::InProgress | TxStatus::Unknown)) => {
            tracing::warn!(txid, ?status, "outcome of a message batch unknown");
            None
        }
        Err(e) => {
            tracing::warn!(txid, error = %e, "could not learn whether a message batch committed");
            None
        }
    }
}

/// Worth one more try: the database was away or broke a deadlock or serialization conflict
/// (classified when the driver error became an [`AppError`]), or a duplicate.
fn transient(e: &AppError) -> bool {
    matches!(e, AppError::Unavailable { .. } | AppError::Conflict { .. })
}

fn describe(e: &AppError) -> String {
    match e {
        AppError::Internal { cause } | AppError::Unavailable { cause } => cause.clone(),
        other => other.to_string(),
    }
}

/// Turns one batch error into a factory of per-request errors: the client sees `unavailable`
/// for outages and `internal` otherwise (the cause is logged once).
fn share(e: &AppError) -> impl Fn() -> AppError {
    let unavailable = matches!(e, AppError::Unavailable { .. });
    let cause = describe(e);
    if unavailable {
        tracing::warn!(%cause, "message batch not committed: database unavailable");
    } else {
        tracing::error!(%cause, "message batch not committed");
    }
    move || {
        if unavailable {
            AppError::unavailable("message store unavailable")
        } else {
            AppError::internal("message could not be stored")
        }
    }
}
