//! Group commit: sends from every conversation queue up here and are written in batches, one
//! transaction per batch, each sender acknowledged only after its batch committed. Conversations
//! are sharded over `WRITE_SHARDS` writers by id, so one conversation's batches commit strictly
//! in order and its fan-out follows seq order.

use super::conversation::Committed;
use crate::db::messages::{self, BatchTrace, Draft, TxStatus, Written};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use actix::Recipient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// One message waiting for its commit.
#[derive(Debug)]
pub struct WriteRequest {
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
    /// Starts `shards` writer tasks on the current runtime, each with a queue of `queue` requests
    /// and batches of at most `batch_max`.
    pub fn start(db: Db, shards: usize, queue: usize, batch_max: usize) -> Self {
        let per_shard = (queue / shards.max(1)).max(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let shards = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(per_shard);
                actix::spawn(run(db.clone(), rx, batch_max.max(1), Arc::clone(&pending)));
                tx
            })
            .collect();
        Self { shards, pending }
    }

    /// Messages queued or being committed right now (shutdown waits for zero).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Queues a request. A full queue refuses at once with `unavailable` (back-pressure) rather
    /// than growing without bound; the refusal goes to the request's reply channel.
    pub fn submit(&self, req: WriteRequest) -> bool {
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

/// Committed results for one conversation, in commit order.
type Outcomes = Vec<(WriteRequest, AppResult<Written>)>;

async fn run(
    db: Db,
    mut rx: mpsc::Receiver<WriteRequest>,
    batch_max: usize,
    pending: Arc<AtomicUsize>,
) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut batch, batch_max).await > 0 {
        let drafts: Vec<Draft> = batch.iter().map(|r| r.draft.clone()).collect();
        let outcome = commit(&db, drafts).await;
        let results: Vec<AppResult<Written>> = match outcome {
            Ok(results) => results,
            Err(e) => {
                let shared = share(&e);
                batch.iter().map(|_| Err(shared())).collect()
            }
        };
        // Hand results to each conversation in batch order (which is their seq order).
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
        pending.fetch_sub(done, Ordering::SeqCst);
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
/// that did commit and returns them as stored.
async fn commit(db: &Db, drafts: Vec<Draft>) -> AppResult<Vec<AppResult<Written>>> {
    let retry = drafts.clone();
    let trace = Arc::new(Mutex::new(BatchTrace::default()));
    let recorded = Arc::clone(&trace);
    let kinds = Arc::clone(db.contact_cache());
    let kinds_again = Arc::clone(&kinds);
    let error = match db
        .run(move |conn| messages::write_batch_traced(conn, &drafts, &recorded, Some(&kinds)))
        .await
    {
        Ok(r) => return Ok(r),
        Err(e) if transient(&e) => e,
        Err(e) => return Err(e),
    };
    if let Some(results) = committed_anyway(db, &trace).await {
        return Ok(results);
    }
    tracing::warn!(error = %describe(&error), "message batch failed; retrying once");
    let unrecorded = Mutex::new(BatchTrace::default());
    db.run(move |conn| messages::write_batch_traced(conn, &retry, &unrecorded, Some(&kinds_again)))
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

fn transient(e: &AppError) -> bool {
    match e {
        AppError::Unavailable { .. } | AppError::Conflict { .. } => true,
        AppError::Internal { cause } => {
            cause.contains("deadlock") || cause.contains("could not serialize")
        }
        _ => false,
    }
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
