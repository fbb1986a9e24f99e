//! What every handler and actor shares: settings, the database handle, the auth service.

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
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
    /// Process start, for uptime.
    pub started: Instant,
}

impl AppState {
    /// Builds the state from validated settings (does not connect yet).
    pub fn new(config: Config) -> Self {
        let config = Arc::new(config);
        let db = Db::new(&config);
        let auth = Auth::new(db.clone(), Arc::clone(&config));
        Self {
            config,
            db,
            auth,
            started: Instant::now(),
        }
    }
}
