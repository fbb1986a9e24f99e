//! The HTTP/WebSocket server: builds the actix-web app around [`AppState`] and runs it on a
//! given listener, so tests can bind `127.0.0.1:0` and run the real thing in-process.

use crate::config::Config;
use crate::db;
use crate::error::{AppError, AppResult};
use crate::http;
use crate::notify::{self, Notifier, State};
use crate::state::AppState;
use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{middleware, web, App, HttpServer};
use diesel::RunQueryDsl;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// A server that is running.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// Stops the server.
    pub handle: ServerHandle,
    /// Shared state (tests inspect it).
    pub state: AppState,
}

/// Applies pending migrations with a fresh connection; the server refuses to start on failure.
pub(crate) async fn migrate(state: &AppState) -> AppResult<Vec<String>> {
    state.db.run(db::run_migrations).await
}

/// Binds `config.bind`, migrates, and serves until SIGINT/SIGTERM.
///
/// Under systemd (`NOTIFY_SOCKET` set, `Type=notify`) it reports `READY=1` once the listener is
/// bound and migrations ran, `STOPPING=1` when a stop signal arrives, and pings the watchdog
/// (`WatchdogSec=`) from the moment the database handle exists; see [`watchdog`].
pub async fn serve(config: Config) -> AppResult<()> {
    let mut listeners = Vec::new();
    for (addr, dialect) in config.listeners().map_err(AppError::internal)? {
        let listener = TcpListener::bind(&addr)
            .map_err(|e| AppError::internal(format!("cannot bind {addr}: {e}")))?;
        tracing::info!(%addr, dialect = dialect.name, "listener");
        listeners.push((listener, dialect));
    }
    let serving = listeners
        .iter()
        .filter_map(|(l, _)| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let state = AppState::new(config)?;
    let notifier = Notifier::from_env().map(Arc::new);
    if let Some(notifier) = &notifier {
        let period = notify::watchdog_period(&|key| std::env::var(key).ok(), std::process::id());
        if let Some(period) = period {
            tracing::info!(period_ms = period.as_millis(), "systemd watchdog enabled");
            actix_web::rt::spawn(watchdog(
                Arc::clone(notifier),
                state.clone(),
                period,
                serving.clone(),
            ));
        }
        notifier.notify(&[State::Status("applying migrations".into())]);
    }
    let applied = migrate(&state).await?;
    tracing::info!(count = applied.len(), "migrations applied");
    // The legacy ids of imported things are known before the first request (then checked for
    // changes in the background).
    state.legacy.refresh(&state.db).await?;
    // Calls cannot survive a restart: whatever the previous process left open has failed. In
    // cluster mode open calls may run on other nodes; a dead node's calls are closed by the
    // node that reaps it.
    if state.config.redis_url.is_empty() {
        let failed = state.db.run(db::calls::fail_open_calls).await?;
        if failed > 0 {
            tracing::warn!(
                count = failed,
                "calls left open by the previous process marked failed"
            );
        }
    }
    let (state, server) = build(state, listeners, false)?;
    let handle = server.handle();
    let mut server = actix_web::rt::spawn(server);
    tracing::info!(addr = %serving, "listening");
    if let Some(notifier) = &notifier {
        notifier.ready(&format!("serving on {serving}"));
    }
    tokio::select! {
        result = &mut server => {
            // Stopped without a signal (cannot normally happen): report it as it is.
            if let Some(notifier) = &notifier {
                notifier.stopping("stopped");
            }
            return result.map_err(AppError::internal)?.map_err(AppError::internal);
        }
        signal = stop_signal() => {
            tracing::info!(signal, timeout_secs = state.config.shutdown_timeout.as_secs(), "shutting down");
        }
    }
    if let Some(notifier) = &notifier {
        notifier.stopping("shutting down");
    }
    let started = Instant::now();
    let report = crate::shutdown::run(&state, &handle).await;
    let left = state
        .config
        .shutdown_timeout
        .saturating_sub(started.elapsed());
    let _ = tokio::time::timeout(left, &mut server).await;
    let ms = started.elapsed().as_millis();
    if report.clean {
        tracing::info!(
            ms,
            calls_ended = report.calls_ended,
            sessions_closed = report.sessions_closed,
            "shutdown complete"
        );
    } else {
        tracing::warn!(
            ms,
            calls_ended = report.calls_ended,
            sessions_closed = report.sessions_closed,
            "shutdown deadline reached; exiting anyway"
        );
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT and names it. Without a SIGTERM handler (it cannot be installed)
/// only SIGINT stops the server.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Sends `WATCHDOG=1` every `period` (half of systemd's `WatchdogSec=`) for as long as the
/// process runs.
///
/// A ping proves that the main runtime still schedules tasks and timers; a wedged process stops
/// pinging and systemd restarts it. The database does not gate the ping: when PostgreSQL is
/// unreachable, restarting Switchboard would not bring it back, would drop every WebSocket, and
/// the pool reconnects by itself once the database answers again. So each round also runs
/// `SELECT 1` (bounded by half a period) only to log changes of the database's reachability and
/// to show it in `systemctl status`.
async fn watchdog(notifier: Arc<Notifier>, state: AppState, period: Duration, serving: String) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut db_up = true;
    loop {
        ticks.tick().await;
        notifier.notify(&[State::Watchdog]);
        let probe = state
            .db
            .run(|conn| Ok(diesel::sql_query("SELECT 1").execute(conn)?));
        let up = matches!(tokio::time::timeout(period / 2, probe).await, Ok(Ok(_)));
        if up != db_up {
            db_up = up;
            let status = if up {
                tracing::info!("watchdog: database reachable again");
                format!("serving on {serving}")
            } else {
                tracing::warn!("watchdog: database unreachable; still serving");
                format!("serving on {serving}; database unreachable")
            };
            notifier.notify(&[State::Status(status)]);
        }
    }
}

/// Starts the server on an already-bound listener inside the current actix system and returns
/// at once (tests). Migrations must have run.
pub fn start(config: Config, listener: TcpListener) -> AppResult<Running> {
    let dialect = config
        .listeners()
        .map_err(AppError::internal)?
        .first()
        .map_or(&crate::realtime::dialect::CANONICAL, |(_, d)| *d);
    start_listeners(config, vec![(listener, dialect)])
}

/// Like [`start`], on several listeners, each with the dialect its connections default to;
/// `addr` is the first one's.
pub fn start_listeners(
    config: Config,
    listeners: Vec<(TcpListener, &'static crate::realtime::dialect::Dialect)>,
) -> AppResult<Running> {
    let addr = listeners
        .first()
        .ok_or_else(|| AppError::internal("no listener"))?
        .0
        .local_addr()
        .map_err(AppError::internal)?;
    let (state, server) = build(AppState::new(config)?, listeners, false)?;
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(Running {
        addr,
        handle,
        state,
    })
}

fn build(
    state: AppState,
    listeners: Vec<(TcpListener, &'static crate::realtime::dialect::Dialect)>,
    signals: bool,
) -> AppResult<(AppState, actix_web::dev::Server)> {
    let mut bound = Vec::with_capacity(listeners.len());
    for (listener, dialect) in &listeners {
        bound.push((listener.local_addr().map_err(AppError::internal)?, *dialect));
    }
    let state = state.with_listeners(bound);
    state.legacy.start(
        state.db.clone(),
        state.config.legacy_ids_refresh,
        Arc::clone(&state.engine.draining),
    );
    let data = web::Data::new(state.clone());
    let config = state.config.clone();
    let max_json = config.max_json_body_bytes;
    let shutdown = config.shutdown_timeout.as_secs();
    let workers = config.http_worker_count();
    let per_worker = config.max_connections_per_worker();
    // The listener arrives bound and listening (std's backlog); listening again on Linux only
    // resizes its queue to LISTEN_BACKLOG.
    let backlog = i32::try_from(config.listen_backlog).unwrap_or(i32::MAX);
    for (listener, _) in &listeners {
        socket2::SockRef::from(listener)
            .listen(backlog)
            .map_err(|e| AppError::internal(format!("cannot set the listen backlog: {e}")))?;
    }
    tracing::info!(
        workers,
        max_connections_per_worker = per_worker,
        backlog,
        "http server limits"
    );
    let mut server = HttpServer::new(move || {
        // Runs on each worker's thread as it builds its services: conversation and call
        // actors start on these threads from now on (see `Placement`).
        data.engine.placement.join_current();
        App::new()
            .app_data(data.clone())
            // Innermost: the legacy ids of imported things, for their apps' listeners.
            .wrap(middleware::from_fn(http::legacy::rewrite))
            .wrap(cors(&config))
            .wrap(middleware::from_fn(access_log))
            .configure(|cfg| http::configure(cfg, max_json))
            .default_service(web::to(http::not_found))
    })
    .shutdown_timeout(shutdown)
    .workers(workers)
    .max_connections(per_worker)
    // Small frames (acks, events) go out at once instead of waiting, behind an earlier
    // unacknowledged segment, for the peer's delayed ACK (~40 ms).
    .tcp_nodelay(true)
    // A response body's bytes are written out once 4 KiB wait (see `WRITE_TURN_BYTES`).
    .h1_write_buffer_size(crate::realtime::conn::H1_WRITE_BUFFER_BYTES)
    // Records each connection's descriptor, so a realtime socket whose peer stopped reading can
    // be aborted after its close grace.
    .on_connect(crate::realtime::conn::on_connect);
    for (listener, _) in listeners {
        server = server.listen(listener).map_err(AppError::internal)?;
    }
    if !signals {
        server = server.disable_signals();
    }
    Ok((state, server.run()))
}

/// CORS from `ALLOWED_ORIGINS`: exact origins only (`*` only in dev mode).
fn cors(config: &Config) -> Cors {
    let origins = config.allowed_origins.0.clone();
    let any = origins.iter().any(|o| o == "*") && config.dev_mode;
    Cors::default()
        .allowed_origin_fn(move |origin, _req| {
            any || origin
                .to_str()
                .is_ok_and(|o| origins.iter().any(|allowed| allowed == o))
        })
        .allowed_methods(["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"])
        .allow_any_header()
        .supports_credentials()
        .max_age(3600)
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// The request id header, read from clients and proxies and set on every response.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id: the caller's `X-Request-Id` when it is short and plain (letters, digits,
/// `-`, `_`, `.`, `:`), else a fresh one.
fn request_id(req: &ServiceRequest) -> String {
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match given {
        Some(id) => id.to_owned(),
        None => crate::auth::tokens::random_id()
            .unwrap_or_else(|_| format!("r{}", REQUEST_IDS.fetch_add(1, Ordering::Relaxed))),
    }
}

/// One span and one log line per request: request id (echoed as `X-Request-Id`), method, path
/// (never the query string, which may hold a token), client address, status and duration.
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request_id(&req);
    let method = req.method().clone();
    let path = req.path().to_owned();
    let client = http::client_addr(req.request()).map(|ip| ip.to_string());
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %id, %method, path);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut res = next.call(req).instrument(span.clone()).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(state) = state {
        let status = match &res {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        state.engine.metrics.http_request(status);
    }
    let _entered = span.enter();
    match &mut res {
        Ok(r) => {
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id) {
                r.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static(REQUEST_ID_HEADER),
                    value,
                );
            }
            tracing::info!(client, status = r.status().as_u16(), ms, "http");
        }
        Err(e) => tracing::info!(client, error = %e, ms, "http"),
    }
    res
}
