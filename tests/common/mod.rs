//! Shared test support: a private database per test (created from `TEST_DATABASE_URL`, dropped
//! afterwards), the real server started in-process on 127.0.0.1:0, and a small JSON client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use switchboard::config::{Config, Secret};
use switchboard::server::{self, Running};

/// Secret used by every test server.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Admin URL of the PostgreSQL server the tests may create databases on.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{db}{query}")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database that exists for the lifetime of this value.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates an empty database (no migrations).
    pub fn empty() -> Self {
        let name = format!(
            "sb_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_subsec_nanos()
        );
        let mut admin =
            PgConnection::establish(&admin_url()).expect("connect to TEST_DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .expect("create test database");
        let url = with_database(&admin_url(), &name);
        Self { url, name }
    }

    /// Creates a database with every migration applied.
    pub fn migrated() -> Self {
        let db = Self::empty();
        let mut conn = db.conn();
        switchboard::db::run_migrations(&mut conn).expect("migrations");
        db
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

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// Settings for a test server on `db`.
pub fn test_config(db: &TestDb) -> Config {
    Config {
        database_url: Secret::new(db.url.clone()),
        jwt_secret: Secret::new(SECRET),
        bind: "127.0.0.1:0".into(),
        db_pool_size: 8,
        ..Config::default()
    }
}

/// A running server with its own database.
pub struct TestServer {
    /// The database (dropped after the server).
    pub db: TestDb,
    /// The server.
    pub running: Running,
    /// HTTP client.
    pub client: awc::Client,
}

impl TestServer {
    /// Starts a server with default test settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusted the settings.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        switchboard::telemetry::init(switchboard::config::LogFormat::Text, "warn");
        let db = TestDb::migrated();
        let mut config = test_config(&db);
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let running = server::start(config, listener).expect("server starts");
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .finish();
        Self {
            db,
            running,
            client,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
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
    }
}

/// Reads `error.code` from an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}
