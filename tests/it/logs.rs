//! Structured logs of the real binary (`LOG_FORMAT=json`, `RUST_LOG=debug`): every line is one
//! JSON object, requests carry their `X-Request-Id` (echoed in the response), command and call
//! lines carry session and call ids, and no secret — password, access or refresh token, OTP
//! code, JWT secret — appears anywhere in a captured run that logs in, refreshes, registers
//! with an OTP, and connects with `?token=`. Device sessions record the client address, taken
//! from `X-Forwarded-For` only when the peer is a trusted proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{sms_gateway, TestDb, WsClient, SECRET};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "Sup3r-Secret-Passphrase!";

struct Server {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Server {
    /// Stops the server (SIGTERM), waits for it, and returns its log.
    fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

async fn spawn_server(db: &TestDb, extra: &[(&str, &str)]) -> Server {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = std::env::temp_dir().join(format!(
        "sb-logs-{}-{}.log",
        std::process::id(),
        addr.port()
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", SECRET)
        .env("BIND", addr.to_string())
        .env("SHUTDOWN_TIMEOUT_SECS", "5")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let server = Server {
        child: cmd.spawn().unwrap(),
        addr,
        log,
    };
    let client = awc::Client::default();
    for _ in 0..200 {
        if let Ok(res) = client.get(format!("http://{addr}/ping")).send().await {
            if res.status().is_success() {
                return server;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "server did not start: {}",
        std::fs::read_to_string(&server.log).unwrap()
    );
}

async fn post(
    s: &Server,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, Value, awc::http::header::HeaderMap) {
    let mut req = awc::Client::default().post(format!("http://{}{path}", s.addr));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = req.send_json(&body).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, headers)
}

fn device_ip(db: &TestDb, user: i64) -> Vec<Option<String>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        ip: Option<String>,
    }
    diesel::sql_query(format!(
        "SELECT ip FROM device_sessions WHERE user_id = {user} ORDER BY created_at"
    ))
    .load::<Row>(&mut db.conn())
    .unwrap()
    .into_iter()
    .map(|r| r.ip)
    .collect()
}

#[actix_web::test]
async fn json_logs_carry_ids_and_never_a_secret() {
    let db = TestDb::migrated();
    let user = {
        let mut conn = db.conn();
        switchboard::auth::create_user(
            &mut conn,
            "Alice",
            None,
            Some("alice@example.com"),
            Some(PASSWORD),
            vec![],
        )
        .unwrap()
        .id
    };
    let (sms_url, mut sms) = sms_gateway();
    let mut s = spawn_server(
        &db,
        &[("OTP_SENDER", "webhook"), ("OTP_WEBHOOK_URL", &sms_url)],
    )
    .await;

    // Password login behind a (trusted, loopback) proxy, with our own request id.
    let (status, login, headers) = post(
        &s,
        "/auth/login",
        json!({"email": "alice@example.com", "password": PASSWORD}),
        &[
            ("X-Request-Id", "trace-login-0042"),
            ("X-Forwarded-For", "203.0.113.50"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(headers.get("x-request-id").unwrap(), "trace-login-0042");
    let access = login["accessToken"].as_str().unwrap().to_owned();
    let refresh = login["refreshToken"].as_str().unwrap().to_owned();
    assert_eq!(device_ip(&db, user), vec![Some("203.0.113.50".to_owned())]);

    let (status, refreshed, headers) =
        post(&s, "/auth/refresh", json!({"refreshToken": refresh}), &[]).await;
    assert_eq!(status, 200, "{refreshed}");
    let generated = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(generated.len() >= 16, "a fresh request id: {generated}");
    let access2 = refreshed["accessToken"].as_str().unwrap().to_owned();
    let refresh2 = refreshed["refreshToken"].as_str().unwrap().to_owned();

    // OTP registration through the webhook.
    let (status, _, _) = post(&s, "/auth/send-otp", json!({"phone": "+14155550123"}), &[]).await;
    assert_eq!(status, 200);
    let sms_body = tokio::time::timeout(Duration::from_secs(10), sms.recv())
        .await
        .unwrap()
        .unwrap();
    let otp = sms_body["code"].as_str().unwrap().to_owned();
    let (status, reg, _) = post(
        &s,
        "/auth/verify-otp-register",
        json!({"phone": "+14155550123", "otp": otp, "name": "Olly"}),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let otp_access = reg["accessToken"].as_str().unwrap().to_owned();

    // A WebSocket with ?token=, a command, a bad token.
    let mut ws = WsClient::try_connect(s.addr, &format!("/ws?token={access2}"))
        .await
        .unwrap();
    ws.request("ping", json!({})).await.unwrap();
    let mut bad = WsClient::try_connect(s.addr, "/ws?token=not.a.valid-token-at-all")
        .await
        .unwrap();
    assert!(bad.next_frame(Duration::from_secs(5)).await.is_none());
    drop(ws);

    let log = s.stop();
    assert!(!log.is_empty());
    let mut saw_request_id = false;
    let mut saw_session = false;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "http" && v["span"]["request_id"] == "trace-login-0042" {
            saw_request_id = true;
            assert_eq!(v["span"]["path"], "/auth/login");
            assert_eq!(v["client"], "203.0.113.50");
        }
        if v["span"]["name"] == "command" && v["span"]["session"].is_number() {
            saw_session = true;
        }
    }
    assert!(saw_request_id, "the login line carries its request id");
    assert!(saw_session, "command lines carry the session id");
    assert!(log.contains(&generated), "generated request ids are logged");

    for (what, secret) in [
        ("password", PASSWORD),
        ("access token", access.as_str()),
        ("refreshed access token", access2.as_str()),
        ("refresh token", refresh.as_str()),
        ("second refresh token", refresh2.as_str()),
        ("OTP access token", otp_access.as_str()),
        ("JWT secret", SECRET),
        ("bad token", "not.a.valid-token-at-all"),
    ] {
        assert!(!log.contains(secret), "the log contains the {what}");
    }
    // The OTP code: never as a value of any field.
    for line in log.lines() {
        assert!(
            !line.contains(&format!("\"{otp}\"")) && !line.contains(&format!("={otp}")),
            "the log contains the OTP code: {line}"
        );
    }
    // Signature parts of JWTs (three base64url parts) never appear.
    assert!(!log.contains("eyJ"), "a JWT-looking value was logged");
}

#[actix_web::test]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    let db = TestDb::migrated();
    let user = {
        let mut conn = db.conn();
        switchboard::auth::create_user(
            &mut conn,
            "Bob",
            None,
            Some("bob@example.com"),
            Some(PASSWORD),
            vec![],
        )
        .unwrap()
        .id
    };
    // Only 10.0.0.0/8 is trusted: the loopback peer's header is not believed.
    let mut s = spawn_server(&db, &[("TRUSTED_PROXIES", "10.0.0.0/8")]).await;
    let (status, body, _) = post(
        &s,
        "/auth/login",
        json!({"email": "bob@example.com", "password": PASSWORD}),
        &[("X-Forwarded-For", "203.0.113.77")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(device_ip(&db, user), vec![Some("127.0.0.1".to_owned())]);
    s.stop();
}
