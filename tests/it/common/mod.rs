//! Shared test support: a private database per test (created from `TEST_DATABASE_URL`, dropped
//! afterwards), the real server started in-process on 127.0.0.1:0, and a small JSON client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod media;
pub mod puppet;

use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use switchboard::config::{Config, Secret};
use switchboard::realtime::dialect::Dialect;
use switchboard::server::{self, Running};

/// Secret used by every test server.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Admin URL of the PostgreSQL server the tests may create databases on.
pub fn admin_url() -> String {
    let url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    local_url(&url)
}

/// `url` with `sslmode=disable` unless it says otherwise (see [`with_database`]).
fn local_url(url: &str) -> String {
    let path = url.split_once('?').map_or(url, |(u, _)| u);
    let db = path
        .rsplit_once('/')
        .map(|(_, d)| d.to_owned())
        .expect("database URL has a path");
    with_database(url, &db)
}

/// The URL of database `db` on the same server. Tests talk to a local server without TLS:
/// `sslmode=disable` unless the URL says otherwise, which also keeps OpenSSL (inside libpq) out
/// of the test processes, whose background threads may still be connecting when they exit.
fn with_database(url: &str, db: &str) -> String {
    let path = url.split_once('?').map_or(url, |(u, _)| u);
    let (base, _) = path.rsplit_once('/').expect("database URL has a path");
    let query = url
        .split_once('?')
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    let query = if query.contains("sslmode=") {
        query
    } else if query.is_empty() {
        "sslmode=disable".to_owned()
    } else {
        format!("{query}&sslmode=disable")
    };
    format!("{base}/{db}?{query}")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database that exists for the lifetime of this value.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
    /// Admin URL of the server it lives on (where it is dropped from).
    admin: String,
}

impl TestDb {
    /// Creates an empty database (no migrations).
    pub fn empty() -> Self {
        Self::empty_on(&admin_url())
    }

    /// Creates an empty database on the server an admin URL points to (e.g. a private cluster
    /// of one test, `postgres://postgres@127.0.0.1:PORT/postgres`).
    pub fn empty_on(admin_url: &str) -> Self {
        Self::create(&local_url(admin_url), None)
            .unwrap_or_else(|e| panic!("create test database: {e}"))
    }

    /// Creates a database with every migration applied.
    pub fn migrated() -> Self {
        Self::migrated_on(&admin_url())
    }

    /// [`TestDb::migrated`] on the server an admin URL points to: a copy of this process's
    /// migrated template database on that server (made on first use), which is much cheaper
    /// than running every migration again.
    pub fn migrated_on(admin_url: &str) -> Self {
        let admin = local_url(admin_url);
        let template = template_on(&admin, false);
        Self::create(&admin, Some(&template)).unwrap_or_else(|first| {
            // The server was restarted or replaced since (a test's private cluster on a reused
            // port): make the template again.
            let template = template_on(&admin, true);
            Self::create(&admin, Some(&template))
                .unwrap_or_else(|e| panic!("create test database ({first}; then {e})"))
        })
    }

    fn create(admin: &str, template: Option<&str>) -> Result<Self, String> {
        let name = format!(
            "sb_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_subsec_nanos()
        );
        create_database(admin, &name, template)?;
        let url = with_database(admin, &name);
        Ok(Self {
            url,
            name,
            admin: admin.to_owned(),
        })
    }

    /// A direct connection (assertions on rows).
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }

    /// Runs raw SQL.
    pub fn exec(&self, sql: &str) {
        diesel::sql_query(sql).execute(&mut self.conn()).expect(sql);
    }
}

/// `CREATE DATABASE name [TEMPLATE template]` on the server `admin` points to.
fn create_database(admin: &str, name: &str, template: Option<&str>) -> Result<(), String> {
    let mut conn = PgConnection::establish(admin)
        .unwrap_or_else(|e| panic!("connect to the admin database {admin}: {e}"));
    let sql = match template {
        Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
        None => format!("CREATE DATABASE \"{name}\""),
    };
    diesel::sql_query(sql)
        .execute(&mut conn)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// This process's migrated template database on each server (by admin URL).
static TEMPLATES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The name of this process's migrated template database on the server `admin` points to,
/// made on first use (or again when `remake`). Templates of test processes that are gone are
/// dropped when a new one is made, so a run leaves at most its own behind.
fn template_on(admin: &str, remake: bool) -> String {
    let mut templates = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if !remake {
        if let Some((_, name)) = templates.iter().find(|(a, _)| a == admin) {
            return name.clone();
        }
    }
    templates.retain(|(a, _)| a != admin);
    drop_stale_templates(admin);
    let name = format!(
        "sb_tmpl_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    create_database(admin, &name, None)
        .unwrap_or_else(|e| panic!("create the template database: {e}"));
    // The connection is closed before the template is first copied: a copy needs the
    // template to have no sessions.
    let mut conn = PgConnection::establish(&with_database(admin, &name))
        .expect("connect to the template database");
    switchboard::db::run_migrations(&mut conn).expect("migrations");
    drop(conn);
    templates.push((admin.to_owned(), name.clone()));
    name
}

/// Drops the template databases of test processes that no longer run.
fn drop_stale_templates(admin: &str) {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let Ok(mut conn) = PgConnection::establish(admin) else {
        return;
    };
    let names: Vec<Name> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'sb\\_tmpl\\_%'")
            .load(&mut conn)
            .unwrap_or_default();
    for Name { datname } in names {
        let pid = datname
            .split('_')
            .nth(2)
            .and_then(|p| p.parse::<u32>().ok());
        let gone = pid.is_some_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        if gone {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{datname}\" WITH (FORCE)"
            ))
            .execute(&mut conn);
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
        let _ = std::fs::remove_dir_all(self.media_dir());
    }
}

impl TestDb {
    /// The media directory of the servers on this database (removed with it).
    pub fn media_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("switchboard-media-{}", self.name))
    }
}

/// Settings for a test server on `db`.
pub fn test_config(db: &TestDb) -> Config {
    Config {
        database_url: Secret::new(db.url.clone()),
        jwt_secret: Secret::new(SECRET),
        bind: "127.0.0.1:0".into(),
        db_pool_size: 8,
        // Generous limits: tests that exercise limits set their own.
        message_rate_per_min: 1_000_000,
        message_burst: 100_000,
        frame_rate_per_sec: 100_000,
        frame_burst: 100_000,
        call_rate_per_hour: 100_000,
        call_burst: 10_000,
        auth_account_max_failures: 10_000,
        auth_address_max_failures: 100_000,
        otp_sends_per_address_per_hour: 100_000,
        otp_sends_per_minute: 100_000,
        password_hash_queue: 10_000,
        media_dir: db.media_dir().to_string_lossy().into_owned(),
        ..Config::default()
    }
}

/// A running server with its own database (or one shared with other nodes of a cluster).
pub struct TestServer {
    /// The database (dropped after the last server on it).
    pub db: std::sync::Arc<TestDb>,
    /// The server.
    pub running: Running,
    /// HTTP client.
    pub client: awc::Client,
    /// Each listener's address and default dialect (the first is [`TestServer::addr`]).
    pub listeners: Vec<(SocketAddr, &'static str)>,
    /// Where [`TestServer::url`] (and so every REST helper) points.
    rest: SocketAddr,
}

impl TestServer {
    /// Lets `by` pass on the clock calls are measured by (instead of sleeping for it).
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.running.state.engine.clock.advance(by);
    }

    /// Starts a server with default test settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusted the settings.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(TestDb::migrated(), tweak).await
    }

    /// Starts a server on an existing (migrated) database.
    pub async fn start_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_shared(std::sync::Arc::new(db), tweak).await
    }

    /// Starts another node on this server's database (cluster tests; `tweak` sets its
    /// cluster settings).
    pub async fn node(&self, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_shared(std::sync::Arc::clone(&self.db), tweak).await
    }

    /// Starts a server on a database other servers may share.
    pub async fn start_shared(db: std::sync::Arc<TestDb>, tweak: impl FnOnce(&mut Config)) -> Self {
        switchboard::telemetry::init(
            switchboard::config::LogFormat::Text,
            "warn,switchboard::db=error",
        );
        let mut config = test_config(&db);
        tweak(&mut config);
        let dialect = config
            .listeners()
            .ok()
            .and_then(|l| l.first().map(|(_, d)| d.name))
            .unwrap_or("canonical");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let running = server::start(config, listener).expect("server starts");
        let listeners = vec![(running.addr, dialect)];
        Self::around(db, running, listeners)
    }

    /// Shuts this server down as SIGTERM does (sockets closed with 1001, state written) and
    /// starts another on the same addresses (each listener with its dialect) and database: a
    /// restart, as clients see it.
    pub async fn restart(self, tweak: impl FnOnce(&mut Config)) -> Self {
        let db = std::sync::Arc::clone(&self.db);
        let listeners = self.listeners.clone();
        let rest = self.rest;
        switchboard::shutdown::run(&self.running.state, &self.running.handle).await;
        drop(self);
        let mut config = test_config(&db);
        tweak(&mut config);
        let mut bound = Vec::new();
        for (addr, dialect) in &listeners {
            let mut listener = TcpListener::bind(addr);
            for _ in 0..100 {
                if listener.is_ok() {
                    break;
                }
                actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
                listener = TcpListener::bind(addr);
            }
            let dialect =
                Dialect::find(dialect).unwrap_or(&switchboard::realtime::dialect::CANONICAL);
            bound.push((listener.expect("the address is free again"), dialect));
        }
        let running = server::start_listeners(config, bound).expect("server starts");
        let mut srv = Self::around(db, running, listeners);
        srv.rest = rest;
        srv
    }

    /// Starts a server as the apps are served (`LISTEN`): one listener per dialect, each with
    /// that dialect as its default, the canonical one first ([`TestServer::addr`]); an app's
    /// clients connect to [`TestServer::addr_of`] its dialect and name none.
    pub async fn start_apps(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_apps_on(TestDb::migrated(), tweak).await
    }

    /// [`TestServer::start_apps`] on a database of the test's own (e.g. one holding imported
    /// data).
    pub async fn start_apps_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Self {
        switchboard::telemetry::init(
            switchboard::config::LogFormat::Text,
            "warn,switchboard::db=error",
        );
        let mut config = test_config(&db);
        tweak(&mut config);
        let bound: Vec<(TcpListener, &'static Dialect)> = switchboard::realtime::dialect::ALL
            .iter()
            .map(|d| (TcpListener::bind("127.0.0.1:0").unwrap(), *d))
            .collect();
        let listeners = bound
            .iter()
            .map(|(l, d)| (l.local_addr().unwrap(), d.name))
            .collect();
        let running = server::start_listeners(config, bound).expect("server starts");
        Self::around(db, running, listeners)
    }

    fn around(
        db: impl Into<std::sync::Arc<TestDb>>,
        running: Running,
        listeners: Vec<(SocketAddr, &'static str)>,
    ) -> Self {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .finish();
        let rest = running.addr;
        Self {
            db: db.into(),
            running,
            client,
            listeners,
            rest,
        }
    }

    /// Sends the REST helpers to the listener of `dialect` (an app's REST client talks to the
    /// listener its sockets use).
    pub fn rest_on(mut self, dialect: &str) -> Self {
        self.rest = self.addr_of(dialect);
        self
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The address of the listener whose default is `dialect` (a name or alias), for a server
    /// from [`TestServer::start_apps`].
    pub fn addr_of(&self, dialect: &str) -> SocketAddr {
        let name = Dialect::find(dialect)
            .unwrap_or_else(|| panic!("no dialect {dialect}"))
            .name;
        self.listeners
            .iter()
            .find(|(_, d)| *d == name)
            .unwrap_or_else(|| panic!("no listener for {name}: start the server with start_apps"))
            .0
    }

    /// `http://addr{path}` (the listener [`TestServer::rest_on`] chose, else [`TestServer::addr`]).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.rest, path)
    }

    /// Sends a request with an optional JSON body and bearer token; returns status and JSON
    /// (or `{"text": body}` when the body is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        let mut res = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .expect("request sent");
        let status = res.status().as_u16();
        let bytes = res.body().limit(8 * 1024 * 1024).await.expect("body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(&bytes) }));
        (status, value)
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        self.call("POST", path, Some(body), token).await
    }

    /// GET.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, None, token).await
    }

    /// A counter or gauge without labels from `/metrics` (panics when it is missing).
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics", None).await;
        let text = text["text"].as_str().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap()
    }

    /// The direct conversation between `a` and `b` (created when missing).
    pub fn direct(&self, a: i64, b: i64) -> i64 {
        switchboard::db::conversations::get_or_create_direct(&mut self.db.conn(), a, b)
            .unwrap()
            .0
            .id
    }

    /// Creates a user directly (password optional) and returns its id.
    pub fn create_user(
        &self,
        name: &str,
        email: &str,
        password: Option<&str>,
        roles: &[&str],
    ) -> i64 {
        let mut conn = self.db.conn();
        let user = switchboard::auth::create_user(
            &mut conn,
            name,
            None,
            Some(email),
            password,
            roles.iter().map(|r| (*r).to_owned()).collect(),
        )
        .expect("user created");
        user.id
    }

    /// Waits until this node's `/health` shows Redis up (and subscribed) and `count` live
    /// nodes (cluster tests); answers the health body.
    pub async fn wait_for_cluster(&self, count: usize) -> Value {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = self.get("/health", None).await;
            if status == 200
                && body["cluster"]["redis"] == "up"
                && body["cluster"]["nodes"] == serde_json::json!(count)
            {
                return body;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "cluster not formed: {body}"
            );
            actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A session-less access token for a user, signed with the test secret.
    pub fn token_for(&self, user_id: i64) -> String {
        self.running
            .state
            .auth
            .keys()
            .sign(user_id, None, &[], 3600)
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Stop accepting at once; the database is dropped after the server.
        let handle = self.running.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
        // A cluster node stops beating (the others reap it when its heartbeat expires).
        if let Some(cluster) = &self.running.state.engine.cluster {
            cluster.halt();
        }
        // Its threads end too: every test runs in this one process.
        self.running.state.engine.stop();
    }
}

/// URL of the Redis the cluster tests use (`TEST_REDIS_URL`; scripts/test.sh starts a
/// private one).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A keyspace of its own in the test Redis (`REDIS_PREFIX`), emptied when dropped.
pub struct RedisSpace {
    /// The Redis URL.
    pub url: String,
    /// The prefix.
    pub prefix: String,
}

impl RedisSpace {
    /// A fresh prefix on [`redis_url`].
    pub fn new() -> Self {
        Self::on(&redis_url())
    }

    /// A fresh prefix on the Redis at `url`.
    pub fn on(url: &str) -> Self {
        let prefix = format!(
            "sbtest-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_subsec_nanos()
        );
        Self {
            url: url.to_owned(),
            prefix,
        }
    }

    /// Settings of a cluster node named `node` in this keyspace (fast heartbeats, so that
    /// failover tests take seconds).
    pub fn join(&self, config: &mut Config, node: &str) {
        config.redis_url = Secret::new(self.url.clone());
        config.redis_prefix = self.prefix.clone();
        config.node_id = node.to_owned();
        config.node_heartbeat = std::time::Duration::from_millis(200);
        config.node_ttl = std::time::Duration::from_millis(1500);
    }

    /// Sends one command to the Redis (RESP over a plain socket) and answers the raw reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let addr = self
            .url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:6379")
            .to_owned();
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut frame = format!("*{}\r\n", args.len());
        for a in args {
            frame.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(frame.as_bytes())?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for RedisSpace {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.prefix);
        let _ = self.command(&[
            "EVAL",
            "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0",
            "0",
            &pattern,
        ]);
    }
}

/// Reads `error.code` from an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

/// A WebSocket test client for `/ws` speaking the canonical JSON frames. Events that arrive
/// while waiting for something else are buffered, so tests can assert on them later.
pub struct WsClient {
    framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    buffered: std::collections::VecDeque<Value>,
    next_id: u64,
    /// Close frame received, if any.
    pub closed: Option<Option<awc::ws::CloseReason>>,
}

impl WsClient {
    /// Connects with `?token=`; panics if the upgrade fails.
    pub async fn connect(server: &TestServer, token: &str) -> Self {
        Self::try_connect(server.addr(), &format!("/ws?token={token}"))
            .await
            .expect("websocket upgrade")
    }

    /// Connects to a path (query included).
    pub async fn try_connect(addr: SocketAddr, path_and_query: &str) -> Result<Self, String> {
        let client = awc::Client::builder()
            .max_http_version(awc::http::Version::HTTP_11)
            .finish();
        let (_res, framed) = client
            .ws(format!("ws://{addr}{path_and_query}"))
            .max_frame_size(16 * 1024 * 1024)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            framed,
            buffered: Default::default(),
            next_id: 1,
            closed: None,
        })
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: String) {
        use futures_util::SinkExt;
        self.framed
            .send(awc::ws::Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Closes the socket the way an app does: a Close frame (1000), then, once the server's
    /// Close came back (or 5 s passed), the connection. Dropping a socket with unread data
    /// resets it, and the reset can overtake frames sent just before.
    pub async fn close(mut self) {
        use futures_util::{SinkExt, StreamExt};
        let _ = self
            .framed
            .send(awc::ws::Message::Close(Some(
                awc::ws::CloseCode::Normal.into(),
            )))
            .await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.framed.next()).await
        {
            if matches!(frame, awc::ws::Frame::Close(_)) {
                break;
            }
        }
        let _ = self.framed.close().await;
    }

    /// Sends a raw text frame; false when the socket is gone.
    pub async fn try_send_text(&mut self, text: String) -> bool {
        use futures_util::SinkExt;
        self.framed
            .send(awc::ws::Message::Text(text.into()))
            .await
            .is_ok()
    }

    /// The close code the server sent, once the socket closed.
    pub fn close_code(&self) -> Option<u16> {
        self.closed
            .as_ref()
            .and_then(|r| r.as_ref())
            .map(|r| u16::from(r.code))
    }

    /// Sends an event without an id.
    pub async fn emit(&mut self, event: &str, payload: Value) {
        self.send_text(serde_json::json!({"event": event, "payload": payload}).to_string())
            .await;
    }

    /// Reads the next JSON frame (answering pings); None on close or timeout.
    pub async fn next_frame(&mut self, wait: std::time::Duration) -> Option<Value> {
        use futures_util::{SinkExt, StreamExt};
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .ok()??;
            match frame {
                Ok(awc::ws::Frame::Text(bytes)) => {
                    return Some(serde_json::from_slice(&bytes).expect("JSON frame"))
                }
                Ok(awc::ws::Frame::Ping(p)) => {
                    let _ = self.framed.send(awc::ws::Message::Pong(p)).await;
                }
                Ok(awc::ws::Frame::Close(reason)) => {
                    self.closed = Some(reason);
                    return None;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends `event` with a fresh id and waits for the reply with that id:
    /// `Ok(ack payload)` or `Err(error payload)`.
    pub async fn request(&mut self, event: &str, payload: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(
            serde_json::json!({"event": event, "payload": payload, "id": id}).to_string(),
        )
        .await;
        let deadline = std::time::Duration::from_secs(20);
        loop {
            let frame = self
                .next_frame(deadline)
                .await
                .unwrap_or_else(|| panic!("no reply to {event}"));
            if frame["id"] == serde_json::json!(id) {
                return match frame["event"].as_str() {
                    Some("ack") => Ok(frame["payload"].clone()),
                    _ => Err(frame["payload"].clone()),
                };
            }
            self.buffered.push_back(frame);
        }
    }

    /// Waits for the next event called `name` (from the buffer first).
    pub async fn expect_event(&mut self, name: &str) -> Value {
        self.maybe_event(name, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("event {name} did not arrive"))
    }

    /// Waits up to `wait` for an event called `name`.
    pub async fn maybe_event(&mut self, name: &str, wait: std::time::Duration) -> Option<Value> {
        if let Some(pos) = self.buffered.iter().position(|f| f["event"] == name) {
            return self.buffered.remove(pos).map(|f| f["payload"].clone());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await?;
            if frame["event"] == name {
                return Some(frame["payload"].clone());
            }
            self.buffered.push_back(frame);
        }
    }

    /// Drops every buffered event.
    pub fn buffered_clear(&mut self) {
        self.buffered.clear();
    }

    /// All buffered events with this name (drained).
    pub fn take_buffered(&mut self, name: &str) -> Vec<Value> {
        let (hit, keep): (Vec<Value>, Vec<Value>) =
            self.buffered.drain(..).partition(|f| f["event"] == name);
        self.buffered = keep.into();
        hit.into_iter().map(|f| f["payload"].clone()).collect()
    }
}

/// A tiny SMS gateway for the OTP webhook (`OTP_WEBHOOK_URL`): answers 200 and passes every
/// POSTed JSON body on. Answers the webhook URL and the receiving end.
pub fn sms_gateway() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let tx = tx.clone();
        App::new().route(
            "/sms",
            web::post().to(move |body: web::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body.into_inner());
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    (format!("http://{addr}/sms"), rx)
}

/// The next body the SMS gateway got (bounded wait).
pub async fn next_sms(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("webhook called")
        .unwrap()
}
