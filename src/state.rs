//! What every handler and actor shares: settings, the database handle, the auth service.

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::realtime::dialect::Dialect;
use crate::realtime::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Shared application state (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// Database handle.
    pub db: Db,
    /// Authentication service.
    pub auth: Auth,
    /// The realtime engine.
    pub engine: Engine,
    /// The Socket.IO (Engine.IO v4) server at `/socket.io/`.
    pub socketio: Arc<crate::realtime::socketio::engine::EioServer>,
    /// Where dropped Socket.IO sessions are kept for connection state recovery.
    pub recovery: Arc<crate::realtime::socketio::recovery::Keeper>,
    /// Media uploads: store, limits, URL signer.
    pub media: Arc<crate::media::Media>,
    /// Process start, for uptime.
    pub started: Instant,
    /// The dialect each listener's connections speak when they name none, by listen address.
    pub listeners: Arc<Vec<(SocketAddr, &'static Dialect)>>,
    /// The legacy ids of imported users, conversations and chat requests (the engine's).
    pub legacy: crate::legacy::LegacyIds,
}

impl AppState {
    /// Builds the state from validated settings and starts the engine's actors (must run
    /// inside an actix system; does not connect to the database yet). Fails when the media
    /// store cannot be opened.
    pub(crate) fn new(config: Config) -> crate::error::AppResult<Self> {
        let config = Arc::new(config);
        let db = Db::new(&config);
        let auth = Auth::new(db.clone(), Arc::clone(&config));
        let engine = Engine::start(Arc::clone(&config), db.clone())?;
        let recovery = crate::realtime::socketio::recovery::Keeper::start(
            db.clone(),
            config.socketio_recovery_per_user,
            config.socketio_recovery_max_sessions,
        );
        let socketio = crate::realtime::socketio::production_server(
            &config,
            auth.clone(),
            engine.clone(),
            Arc::clone(&recovery),
        );
        let media =
            crate::media::Media::new(Arc::clone(&config), db.clone(), engine.metrics.clone())
                .map(Arc::new)
                .map_err(crate::error::AppError::internal)?;
        crate::media::install(Arc::clone(&media.urls));
        media.start_collector();
        let legacy = engine.legacy.clone();
        Ok(Self {
            config,
            db,
            auth,
            engine,
            socketio,
            recovery,
            media,
            started: Instant::now(),
            listeners: Arc::default(),
            legacy,
        })
    }

    /// Records which dialect each bound listener defaults to.
    #[must_use]
    pub(crate) fn with_listeners(mut self, listeners: Vec<(SocketAddr, &'static Dialect)>) -> Self {
        self.listeners = Arc::new(listeners);
        self
    }

    /// The dialect of connections arriving on the listener `req` came through when they name
    /// none: that listener's (`LISTEN`), else `DEFAULT_DIALECT`.
    pub(crate) fn default_dialect(&self, req: &actix_web::HttpRequest) -> &'static Dialect {
        let local = req.app_config().local_addr();
        self.listeners
            .iter()
            .find(|(addr, _)| *addr == local)
            .map_or(self.config.default_dialect.0, |(_, d)| *d)
    }
}
