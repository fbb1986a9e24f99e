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
        let write = move |states: Vec<CallState>| {
            let db = db.clone();
            async move { db.run(move |conn| calls::save_all(conn, &states)).await }
        };
        arbiter.spawn(drain(write, rx, batch.max(1)));
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

/// The store's task: one batch at a time, in queue order; `write` writes states in one
/// statement.
async fn drain<W, F>(write: W, mut queue: mpsc::Receiver<Save>, batch: usize)
where
    W: Fn(Vec<CallState>) -> F,
    F: std::future::Future<Output = AppResult<()>>,
{
    let mut taken = Vec::with_capacity(batch);
    while queue.recv_many(&mut taken, batch).await > 0 {
        let (states, waiters) = coalesce(taken.drain(..));
        // A batch of several is tried whole first; a lone call, or each call of a batch that
        // failed, is written alone and gets its own outcome.
        if states.len() > 1 {
            match write(states.clone()).await {
                Ok(()) => {
                    for done in waiters.into_iter().flatten() {
                        let _ = done.send(Ok(()));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, calls = states.len(), "a batch of call states failed; writing them one by one");
                }
            }
        }
        for (state, waiting) in states.into_iter().zip(waiters) {
            let outcome = write(vec![state]).await;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn state(id: &str, status: &str) -> CallState {
        let call = CallRow {
            id: id.into(),
            kind: "direct".into(),
            call_type: "audio".into(),
            provider: "webrtc".into(),
            channel_name: None,
            caller_id: Some(1),
            conversation_id: None,
            status: status.into(),
            end_reason: None,
            ended_by: None,
            created_at: Utc::now(),
            ringing_at: None,
            answered_at: None,
            ended_at: None,
            duration_secs: None,
        };
        (call, Vec::new())
    }

    fn save(
        queue: &mpsc::Sender<Save>,
        id: &str,
        status: &str,
    ) -> oneshot::Receiver<AppResult<()>> {
        let (done, outcome) = oneshot::channel();
        queue
            .try_send(Save {
                state: state(id, status),
                done,
            })
            .expect("room in the queue");
        outcome
    }

    /// What a fake database was asked to write: each statement's calls as `id:status`. A
    /// statement that holds the call `bad` fails.
    type Log = Rc<RefCell<Vec<Vec<String>>>>;

    fn fake(log: &Log) -> impl Fn(Vec<CallState>) -> std::future::Ready<AppResult<()>> {
        let log = Rc::clone(log);
        move |states: Vec<CallState>| {
            let ids: Vec<String> = states
                .iter()
                .map(|(c, _)| format!("{}:{}", c.id, c.status))
                .collect();
            let failed = ids.iter().any(|i| i.starts_with("bad:"));
            log.borrow_mut().push(ids);
            std::future::ready(if failed {
                Err(AppError::unavailable("check constraint"))
            } else {
                Ok(())
            })
        }
    }

    #[actix_web::test]
    async fn waiting_states_share_one_statement_with_each_call_once_at_its_latest() {
        let (tx, rx) = mpsc::channel(16);
        let a1 = save(&tx, "a", "ringing");
        let b = save(&tx, "b", "ringing");
        let a2 = save(&tx, "a", "ended");
        drop(tx);
        let log = Log::default();
        drain(fake(&log), rx, 64).await;
        assert_eq!(*log.borrow(), vec![vec!["a:ended", "b:ringing"]]);
        for outcome in [a1, b, a2] {
            assert!(outcome.await.expect("answered").is_ok());
        }
    }

    #[actix_web::test]
    async fn a_failed_batch_is_written_again_call_by_call_and_only_the_bad_call_fails() {
        let (tx, rx) = mpsc::channel(16);
        let a = save(&tx, "a", "ended");
        let bad = save(&tx, "bad", "ended");
        let c = save(&tx, "c", "ended");
        drop(tx);
        let log = Log::default();
        drain(fake(&log), rx, 64).await;
        assert_eq!(
            *log.borrow(),
            vec![
                vec!["a:ended", "bad:ended", "c:ended"],
                vec!["a:ended"],
                vec!["bad:ended"],
                vec!["c:ended"],
            ]
        );
        assert!(a.await.expect("answered").is_ok());
        assert!(matches!(
            bad.await.expect("answered"),
            Err(AppError::Unavailable { .. })
        ));
        assert!(c.await.expect("answered").is_ok());
    }

    #[actix_web::test]
    async fn a_batch_holds_at_most_the_configured_number_of_calls() {
        let (tx, rx) = mpsc::channel(16);
        let outcomes: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| save(&tx, id, "ended"))
            .collect();
        drop(tx);
        let log = Log::default();
        drain(fake(&log), rx, 2).await;
        assert_eq!(
            *log.borrow(),
            vec![
                vec!["a:ended", "b:ended"],
                vec!["c:ended", "d:ended"],
                vec!["e:ended"],
            ]
        );
        for outcome in outcomes {
            assert!(outcome.await.expect("answered").is_ok());
        }
    }
}
