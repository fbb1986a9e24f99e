//! The call store: writes calls' states to the database in batches.
//!
//! Every call actor (and the registry, for a call refused busy) hands the state it wants written
//! to one bounded queue and waits for the outcome. One task drains the queue: whatever waits
//! when a write starts, up to `CALL_SAVE_BATCH` calls, goes into the next statement
//! ([`calls::save_all`]), so under load many calls share one round trip and one commit, and a
//! lone call is written at once as before. A call that appears twice in one batch is written
//! once with its latest state (its actor never has two writes in flight, so this is rare).
//!
//! A batch that fails is written again call by call, so one bad row (a user deleted meanwhile)
//! costs only its own call. The queue holds `CALL_SAVE_QUEUE` states: past that, a saver waits
//! for room (a call actor's write runs beside its mailbox, so signaling goes on meanwhile).

use crate::db::calls::{self, CallRow, CallState, ParticipantRow};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use actix::ArbiterHandle;
use tokio::sync::{mpsc, oneshot};

/// One state to write and who waits for the outcome.
struct Save {
    state: CallState,
    done: oneshot::Sender<AppResult<()>>,
}

/// The handle savers use; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct CallStore {
    queue: mpsc::Sender<Save>,
}

impl std::fmt::Debug for Save {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Save")
            .field("call", &self.state.0.id)
            .finish()
    }
}

impl CallStore {
    /// Starts the store's task on `arbiter`: at most `batch` calls per statement, at most
    /// `queue` states waiting.
    pub(crate) fn start(db: Db, queue: usize, batch: usize, arbiter: &ArbiterHandle) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        arbiter.spawn(drain(db, rx, batch.max(1)));
        Self { queue: tx }
    }

    /// Writes a call's state; answers once it is committed (or failed).
    pub(crate) async fn save(&self, call: CallRow, parties: Vec<ParticipantRow>) -> AppResult<()> {
        let (done, outcome) = oneshot::channel();
        self.queue
            .send(Save {
                state: (call, parties),
                done,
            })
            .await
            .map_err(|_| AppError::unavailable("the call store has stopped"))?;
        outcome
            .await
            .map_err(|_| AppError::unavailable("the call store has stopped"))?
    }
}

/// Who waits for each state of a batch (by the state's index).
type Waiters = Vec<Vec<oneshot::Sender<AppResult<()>>>>;

/// The store's task: one batch at a time, in queue order.
async fn drain(db: Db, mut queue: mpsc::Receiver<Save>, batch: usize) {
    let mut taken = Vec::with_capacity(batch);
    while queue.recv_many(&mut taken, batch).await > 0 {
        let (states, waiters) = coalesce(taken.drain(..));
        let whole = if states.len() > 1 {
            Some(states.clone())
        } else {
            None
        };
        // A batch of several is tried whole first; a lone call, or each call of a batch that
        // failed, is written alone and gets its own outcome.
        if let Some(whole) = whole {
            let n = whole.len();
            match db.run(move |conn| calls::save_all(conn, &whole)).await {
                Ok(()) => {
                    for done in waiters.into_iter().flatten() {
                        let _ = done.send(Ok(()));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, calls = n, "a batch of call states failed; writing them one by one");
                }
            }
        }
        for (state, waiting) in states.into_iter().zip(waiters) {
            let one = [state];
            let outcome = db.run(move |conn| calls::save_all(conn, &one)).await;
            for done in waiting {
                let _ = done.send(match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(AppError::unavailable(format!(
                        "call state not written: {e}"
                    ))),
                });
            }
        }
    }
}

/// Keeps each call's latest state (in first-seen order) and who waits for it.
fn coalesce(taken: impl Iterator<Item = Save>) -> (Vec<CallState>, Waiters) {
    let mut states: Vec<CallState> = Vec::new();
    let mut waiters: Waiters = Vec::new();
    for Save { state, done } in taken {
        match states.iter().position(|(c, _)| c.id == state.0.id) {
            Some(i) => {
                states[i] = state;
                waiters[i].push(done);
            }
            None => {
                states.push(state);
                waiters.push(vec![done]);
            }
        }
    }
    (states, waiters)
}
