//! Graceful shutdown (SIGTERM, SIGINT), bounded by `SHUTDOWN_TIMEOUT_SECS`:
//!
//! 1. stop accepting connections, and have sessions refuse new commands (`unavailable`);
//! 2. end every live call with reason `server_shutdown` (persisted; the parties get
//!    `call:ended`);
//! 3. let commands already running finish and the group-commit writer drain, so every send
//!    that was accepted is committed and acknowledged;
//! 4. close every socket with 1001 "going away" (plain WebSocket and Socket.IO; a waiting
//!    Socket.IO poll ends with a close packet), so clients reconnect to the next process;
//! 5. stop the HTTP server (in-flight REST requests finish) and drain the writer once more,
//!    and write the closed Socket.IO sessions kept for connection state recovery;
//! 6. write the last-seen times of the users whose sockets were closed.
//!
//! Each wait takes what is left of the one deadline; a step that runs out of time is logged and
//! the next one still runs, so the process always exits within the deadline.

use crate::realtime::registry::{CloseAll, FlushLastSeen, LiveCalls};
use crate::state::AppState;
use actix_web::dev::ServerHandle;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// WebSocket close code for a server going away.
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;

/// How long, at most, closed sessions get to flush and send their close frames before the
/// remaining Engine.IO sessions are closed (always within `SHUTDOWN_TIMEOUT_SECS`).
pub(crate) const SESSION_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How often the shutdown checks whether a step is done.
const POLL: Duration = Duration::from_millis(20);

/// The end reason recorded for calls cut by a shutdown.
pub(crate) const SHUTDOWN_REASON: &str = "server_shutdown";

/// What a shutdown did, for the log line and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Live calls ended.
    pub calls_ended: usize,
    /// Sessions asked to close.
    pub sessions_closed: usize,
    /// Engine.IO sessions closed.
    pub engineio_closed: usize,
    /// Whether every step finished before the deadline.
    pub clean: bool,
}

/// Runs the shutdown sequence on a running server; returns when it is done or the deadline
/// (`SHUTDOWN_TIMEOUT_SECS` from now) passed.
pub async fn run(state: &AppState, handle: &ServerHandle) -> Report {
    let deadline = Instant::now() + state.config.shutdown_timeout;
    let engine = &state.engine;
    let mut report = Report {
        clean: true,
        ..Report::default()
    };
    // 1. No new connections, no new commands.
    handle.pause().await;
    engine.draining.store(true, Ordering::SeqCst);

    // 2. Calls end first, while their parties are still connected to hear about it.
    let calls = match tokio::time::timeout_at(deadline, engine.registry.send(LiveCalls)).await {
        Ok(Ok(calls)) => calls,
        Ok(Err(e)) => {
            report.clean = false;
            tracing::warn!(error = %e, "live calls unknown at shutdown; none ended");
            Vec::new()
        }
        Err(_) => {
            report.clean = false;
            tracing::warn!("live calls unknown: shutdown deadline passed");
            Vec::new()
        }
    };
    report.calls_ended = calls.len();
    for (id, _) in &calls {
        if let Err(e) = engine.terminate_call(id, SHUTDOWN_REASON, None).await {
            tracing::debug!(call = %id, error = %e, "call ended by itself during shutdown");
        }
    }
    // A call actor stops once its final state is written.
    report.clean &= wait_until(deadline, || calls.iter().all(|(_, a)| !a.connected())).await;

    // 3. Running commands finish; accepted sends commit and are acknowledged.
    report.clean &= wait_until(deadline, || {
        engine.commands.load(Ordering::SeqCst) == 0 && engine.writer.pending() == 0
    })
    .await;

    // 4. Close every socket with 1001.
    report.sessions_closed = match tokio::time::timeout_at(
        deadline,
        engine.registry.send(CloseAll {
            code: CLOSE_GOING_AWAY,
            reason: "server shutting down".into(),
        }),
    )
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            report.clean = false;
            tracing::warn!(error = %e, "sockets not asked to close at shutdown");
            0
        }
        Err(_) => {
            report.clean = false;
            tracing::warn!("sockets not asked to close: shutdown deadline passed");
            0
        }
    };
    // Give the session transports a moment to flush and send their close frames, then close
    // whatever Engine.IO sessions are left (handshakes without a session, polls).
    let _ = wait_until(deadline.min(Instant::now() + SESSION_CLOSE_GRACE), || {
        engine.metrics.connections_total() == 0
    })
    .await;
    report.engineio_closed = state.socketio.close_all();

    // 5. Stop the HTTP server; REST requests in flight finish. Then the last writes (call logs).
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, handle.stop(true)).await.is_err() {
        report.clean = false;
        handle.stop(false).await;
    }
    report.clean &= wait_until(deadline, || engine.writer.pending() == 0).await;
    // The closed Socket.IO sessions are kept, so their clients recover on the next process.
    report.clean &= wait_until(deadline, || state.recovery.pending() == 0).await;

    // 6. The closed sessions' last-seen times.
    match tokio::time::timeout_at(deadline, engine.registry.send(FlushLastSeen)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(users)) => {
            report.clean = false;
            tracing::warn!(users, "last-seen times not written at shutdown");
        }
        Ok(Err(e)) => {
            report.clean = false;
            tracing::warn!(error = %e, "last-seen times not written at shutdown");
        }
        Err(_) => {
            report.clean = false;
            tracing::warn!("last-seen times not written: shutdown deadline passed");
        }
    }

    // 7. Leave the cluster: the other nodes stop counting this node's devices now rather than
    //    when its heartbeat expires.
    if let Some(cluster) = &engine.cluster {
        if tokio::time::timeout_at(deadline, cluster.leave())
            .await
            .is_err()
        {
            report.clean = false;
            tracing::warn!("cluster not left: shutdown deadline passed");
        }
    }
    report
}

/// Polls `done` every [`POLL`] until it holds (true) or the deadline passes (false).
async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
