//! PostgreSQL access: the r2d2 pool, the one helper that runs blocking Diesel work off the
//! event loop with bounded concurrency, embedded migrations, and plain sync query functions per
//! table in the submodules.

pub(crate) mod accounts;
pub(crate) mod admin;
pub mod audit;
pub mod calls;
pub mod chat_requests;
pub mod contacts;
pub mod conversations;
pub mod media;
pub mod messages;
pub mod models;
pub mod prepared;
pub mod recovery;
pub mod schema;
pub(crate) mod support;

use crate::config::Config;
use crate::error::{AppError, AppResult};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The migrations in `migrations/`, compiled into the binary.
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The connection pool type.
pub(crate) type PgPool = Pool<Manager>;
/// A connection checked out of the pool (it dereferences to the [`PgConnection`]).
pub type PooledConn = PooledConnection<Manager>;

/// A pooled connection and how long it is trusted without a check.
pub struct Checked {
    conn: PgConnection,
    /// Until when the connection is handed out without `SELECT 1`: set after work on it
    /// succeeded, cleared when work on it failed.
    trusted_until: Option<Instant>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("trusted_until", &self.trusted_until)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Checked {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Checked {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// The pool's connection manager: Diesel's, except that the check on checkout (`SELECT 1`, a
/// round trip to PostgreSQL) is skipped for a connection whose last work succeeded less than
/// `DB_CHECK_IDLE_MS` ago. A busy pool so asks PostgreSQL one statement fewer per piece of work;
/// a connection that sat idle longer, or whose last work failed, is checked as before, and one
/// that fails its check is replaced. The price: after PostgreSQL restarts, work on a connection
/// trusted at that moment fails once (`unavailable`) instead of being moved to a new connection.
#[derive(Debug)]
pub struct Manager {
    inner: ConnectionManager<PgConnection>,
}

impl ManageConnection for Manager {
    type Connection = Checked;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Checked, Self::Error> {
        Ok(Checked {
            conn: self.inner.connect()?,
            trusted_until: None,
        })
    }

    fn is_valid(&self, conn: &mut Checked) -> Result<(), Self::Error> {
        if conn.trusted_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        conn.conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Checked) -> bool {
        self.inner.has_broken(&mut conn.conn)
    }
}

/// Handle to the database: cheap to clone, shared by every handler and actor.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    url: Arc<str>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    /// `DB_CHECK_IDLE_MS`: how long a connection is trusted after work on it succeeded.
    trust: Duration,
    stats: Arc<DbStats>,
    contacts: Arc<crate::policy::ContactCache>,
}

/// Counters kept by [`Db::run`] for metrics.
#[derive(Debug, Default)]
struct DbStats {
    size: u32,
    waiting: AtomicI64,
    errors: AtomicU64,
}

/// Pool usage at one moment (metrics, health).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolUsage {
    /// Connections checked out.
    pub in_use: u32,
    /// Connections open and idle.
    pub idle: u32,
    /// Pool size (`DB_POOL_SIZE`).
    pub max: u32,
    /// Operations waiting for a slot.
    pub waiting: i64,
    /// Operations that failed with an internal or unavailable error since start.
    pub errors: u64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.state();
        f.debug_struct("Db")
            .field("connections", &state.connections)
            .field("idle", &state.idle_connections)
            .finish()
    }
}

/// `url` with `gssencmode=disable` unless it chooses a GSS mode itself. libpq otherwise asks
/// Kerberos, on every new connection, whether to encrypt with GSSAPI; the Kerberos library's
/// teardown at process exit aborts the process (`k5_mutex_lock ... Assertion failed`) when a
/// pool thread is opening a connection at that moment, as a reconnecting pool may be. Servers
/// that want GSS encryption say so in `DATABASE_URL` (`gssencmode=prefer|require`).
pub(crate) fn without_gss_probe(url: &str) -> String {
    if url.contains("gssencmode") {
        return url.to_owned();
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}gssencmode=disable")
    } else {
        format!("{url} gssencmode=disable")
    }
}

impl Db {
    /// Builds the pool without connecting yet, so the server can start (and recover) while the
    /// database is briefly away; the first query reports `unavailable` instead.
    pub(crate) fn new(config: &Config) -> Self {
        let mut db = Self::build(
            config.database_url.expose(),
            config.db_pool_size,
            config.db_acquire_timeout,
            config.db_check_idle,
        );
        db.contacts = Arc::new(crate::policy::ContactCache::new(
            config.contact_cache_ttl,
            config.contact_cache_size,
        ));
        db
    }

    /// Like [`Db::new`] from explicit settings (without a contact cache; every connection is
    /// checked on checkout).
    pub(crate) fn with_url(url: &str, size: u32, acquire_timeout: Duration) -> Self {
        Self::build(url, size, acquire_timeout, Duration::ZERO)
    }

    fn build(url: &str, size: u32, acquire_timeout: Duration, trust: Duration) -> Self {
        let url: Arc<str> = without_gss_probe(url).into();
        let manager = Manager {
            inner: ConnectionManager::<PgConnection>::new(url.to_string()),
        };
        let pool = Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            .connection_timeout(acquire_timeout)
            .test_on_check_out(true)
            .error_handler(Box::new(LogConnectError))
            .build_unchecked(manager);
        Self {
            pool,
            url,
            permits: Arc::new(Semaphore::new(size as usize)),
            acquire_timeout,
            trust,
            stats: Arc::new(DbStats {
                size,
                ..DbStats::default()
            }),
            contacts: Arc::new(crate::policy::ContactCache::disabled()),
        }
    }

    /// The contact cache shared by every clone of this handle (see
    /// [`crate::policy::ContactCache`]): whoever changes what a contact decision depends on
    /// invalidates it here.
    pub(crate) fn contact_cache(&self) -> &Arc<crate::policy::ContactCache> {
        &self.contacts
    }

    /// Checks a connection out synchronously (CLI commands, start-up).
    pub(crate) fn get(&self) -> AppResult<PooledConn> {
        self.pool.get().map_err(AppError::unavailable)
    }

    /// Runs blocking Diesel work on the blocking thread pool. At most `DB_POOL_SIZE` closures run
    /// at once; a caller that cannot get a slot within `DB_ACQUIRE_TIMEOUT_MS` gets
    /// `unavailable` rather than queueing without bound.
    pub(crate) async fn run<T, F>(&self, work: F) -> AppResult<T>
    where
        F: FnOnce(&mut PgConnection) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let result = self.run_inner(work).await;
        if matches!(
            result,
            Err(AppError::Internal { .. } | AppError::Unavailable { .. })
        ) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn run_inner<T, F>(&self, work: F) -> AppResult<T>
    where
        F: FnOnce(&mut PgConnection) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let permit =
            tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned()).await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit
            .map_err(|_| AppError::unavailable("timed out waiting for a database slot"))?
            .map_err(AppError::internal)?;
        let pool = self.pool.clone();
        let trust = self.trust;
        actix_web::rt::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = pool.get().map_err(AppError::unavailable)?;
            let result = work(&mut conn.conn);
            conn.trusted_until = match (&result, trust.is_zero()) {
                (Ok(_), false) => Some(Instant::now() + trust),
                _ => None,
            };
            result
        })
        .await
        .map_err(AppError::internal)?
    }

    /// Pool usage and the counters of [`Db::run`].
    pub(crate) fn pool_usage(&self) -> PoolUsage {
        let state = self.pool.state();
        PoolUsage {
            in_use: state.connections - state.idle_connections,
            idle: state.idle_connections,
            max: self.stats.size,
            waiting: self.stats.waiting.load(Ordering::Relaxed).max(0),
            errors: self.stats.errors.load(Ordering::Relaxed),
        }
    }

    /// Connections currently checked out and idle, for health and metrics.
    pub(crate) fn usage(&self) -> (u32, u32) {
        let state = self.pool.state();
        (
            state.connections - state.idle_connections,
            state.idle_connections,
        )
    }
}

/// A connection of its own, outside the pool, kept by one thread ([`Owned`] there) for a caller
/// that runs one piece of work after another on a hot path (a message writer with several
/// batches in flight): no pool checkout, no check-out test query, one thread hand-off each
/// way. Work runs one at a time; a caller that hands it more while it is busy gets
/// `unavailable`.
#[derive(Debug)]
pub(crate) struct Dedicated {
    jobs: std::sync::mpsc::SyncSender<DedicatedJob>,
}

/// Work for a [`Dedicated`] connection's thread.
type DedicatedJob = Box<dyn FnOnce(&mut Owned) + Send>;

impl Db {
    /// Opens a [`Dedicated`] connection served by a thread named `name`; the thread and its
    /// connection end when the handle is dropped.
    pub(crate) fn dedicated(&self, name: &str, setup: &'static str) -> AppResult<Dedicated> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<DedicatedJob>(1);
        let mut conn = self.owned(setup);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(AppError::internal)?;
        Ok(Dedicated { jobs })
    }

    /// An [`Owned`] connection (not connected until its first use).
    pub(crate) fn owned(&self, setup: &'static str) -> Owned {
        Owned {
            url: Arc::clone(&self.url),
            setup,
            slot: None,
            stats: Arc::clone(&self.stats),
        }
    }
}

/// A connection of its own held by the thread that uses it: it connects on first use, runs
/// `setup` on every new connection, and after work that failed on a connection that is broken
/// (or no longer answers) drops it, so the next work connects again. A caller with a thread of
/// its own (a message writer) runs its work here; [`Dedicated`] keeps one on a thread for
/// callers that hand work over.
pub(crate) struct Owned {
    url: Arc<str>,
    setup: &'static str,
    slot: Option<PgConnection>,
    stats: Arc<DbStats>,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("connected", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

impl Owned {
    /// Runs `work` on the connection here; `unavailable` when there is none (the database is
    /// away), `internal` when `work` panicked (the connection is then dropped).
    pub(crate) fn run<T>(
        &mut self,
        work: impl FnOnce(&mut PgConnection) -> AppResult<T>,
    ) -> AppResult<T> {
        use diesel::r2d2::R2D2Connection;
        if self.slot.is_none() {
            self.slot = connect(&self.url, self.setup);
        }
        let Some(conn) = self.slot.as_mut() else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(AppError::unavailable("cannot connect to the database"));
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)));
        let panicked = outcome.is_err();
        let result = outcome.unwrap_or_else(|_| Err(AppError::internal("database work panicked")));
        // A connection that is broken (or no longer answers) is dropped: the next work connects
        // again.
        if panicked || (result.is_err() && (conn.is_broken() || conn.ping().is_err())) {
            self.slot = None;
        }
        if matches!(
            result,
            Err(AppError::Internal { .. } | AppError::Unavailable { .. })
        ) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// A new connection with `setup` applied; a failure is logged and leaves none.
fn connect(url: &str, setup: &str) -> Option<PgConnection> {
    use diesel::connection::{Connection, SimpleConnection};
    let made = PgConnection::establish(url).and_then(|mut conn| {
        conn.batch_execute(setup)
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        Ok(conn)
    });
    match made {
        Ok(conn) => Some(conn),
        Err(error) => {
            tracing::warn!(%error, "database connection attempt failed");
            None
        }
    }
}

impl Dedicated {
    /// Runs `work` on the connection; `unavailable` when there is none (the database is away)
    /// or the connection is busy with other work.
    pub(crate) async fn run<T, F>(&self, work: F) -> AppResult<T>
    where
        F: FnOnce(&mut PgConnection) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: DedicatedJob = Box::new(move |conn| {
            let _ = answer.send(conn.run(work));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                AppError::unavailable("the writer's connection is busy")
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                AppError::internal("the writer's connection thread ended")
            }
        })?;
        answered
            .await
            .map_err(|_| AppError::internal("the writer's connection thread ended"))?
    }
}

/// Logs failed connection attempts once each at `warn` through tracing (the pool's default
/// handler prints at `error` for every retry).
#[derive(Debug)]
struct LogConnectError;

impl diesel::r2d2::HandleError<diesel::r2d2::Error> for LogConnectError {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::warn!(%error, "database connection attempt failed");
    }
}

/// Applies every pending migration; returns the versions it ran.
///
/// Several nodes starting at once on one database take turns: the migrations run under a
/// session-level advisory lock ([`MIGRATION_LOCK`]), so the second node finds them applied.
pub fn run_migrations(conn: &mut PgConnection) -> AppResult<Vec<String>> {
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
        .execute(conn)?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|applied| applied.iter().map(ToString::to_string).collect::<Vec<_>>())
        .map_err(|e| AppError::internal(format!("migrations failed: {e}")));
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
        .execute(conn);
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

/// The advisory lock key migrations run under (any fixed number no other lock uses).
pub(crate) const MIGRATION_LOCK: i64 = 0x5357_4d49_4752;

/// Reverts every applied migration, newest first (tests of `down.sql`).
pub fn revert_all_migrations(conn: &mut PgConnection) -> AppResult<usize> {
    let reverted = conn
        .revert_all_migrations(MIGRATIONS)
        .map_err(|e| AppError::internal(format!("revert failed: {e}")))?;
    Ok(reverted.len())
}

/// The earliest instant a PostgreSQL `timestamptz` holds (4714-11-24 BC, Julian day 0), in
/// seconds since the Unix epoch. chrono reaches further back than that (and less far forward
/// than PostgreSQL's 294276 AD), so a time a client supplies is checked with [`storable_time`]
/// before it becomes a query parameter; otherwise PostgreSQL refuses the query and the request
/// fails with a 500.
const PG_MIN_UNIX_SECS: i64 = -210_866_803_200;

/// Whether PostgreSQL can take `t` as a `timestamptz` parameter.
pub(crate) fn storable_time(t: &chrono::DateTime<chrono::Utc>) -> bool {
    t.timestamp() >= PG_MIN_UNIX_SECS
}

#[cfg(test)]
mod tests {
    use super::without_gss_probe;

    #[test]
    fn database_urls_skip_the_gss_probe_unless_they_choose_a_mode() {
        assert_eq!(
            without_gss_probe("postgres://u@h:5432/db"),
            "postgres://u@h:5432/db?gssencmode=disable"
        );
        assert_eq!(
            without_gss_probe("postgresql://u@h/db?sslmode=require"),
            "postgresql://u@h/db?sslmode=require&gssencmode=disable"
        );
        assert_eq!(
            without_gss_probe("host=/run/postgresql dbname=db"),
            "host=/run/postgresql dbname=db gssencmode=disable"
        );
        let chosen = "postgres://u@h/db?gssencmode=require";
        assert_eq!(without_gss_probe(chosen), chosen);
    }
}
