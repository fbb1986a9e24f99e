//! End-to-end authentication over real HTTP against a real PostgreSQL: password login, OTP
//! registration and login through the webhook sender, refresh rotation and reuse detection,
//! logout, legacy token claims, and rejected tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{code, next_sms, sms_gateway, TestServer, SECRET};
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::config::OtpSenderKind;
use tokio::sync::mpsc;

async fn otp_server() -> (TestServer, mpsc::UnboundedReceiver<Value>) {
    let (url, rx) = sms_gateway();
    let server = TestServer::start_with(|c| {
        c.otp_sender = OtpSenderKind::Webhook;
        c.otp_webhook_url = url;
    })
    .await;
    (server, rx)
}

fn legacy_token(claims: Value, alg: jsonwebtoken::Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn in_ten_minutes() -> i64 {
    chrono::Utc::now().timestamp() + 600
}

#[actix_web::test]
async fn cli_created_user_logs_in_with_password_and_reads_profile() {
    let s = TestServer::start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "user",
            "add",
            "--name",
            "Alice Admin",
            "--email",
            "Alice@Example.com",
        ])
        .args([
            "--password",
            "correct-horse",
            "--role",
            "admin",
            "--role",
            "sales",
        ])
        .env("DATABASE_URL", &s.db.url)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["email"], "alice@example.com");
    assert_eq!(created["roles"], json!(["admin", "sales"]));
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, body) = s
        .post(
            "/auth/login",
            json!({"email": "alice@example.com", "password": "correct-horse"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accessToken"], body["token"]);
    assert!(body["refreshToken"].as_str().unwrap().len() >= 40);
    assert_eq!(body["user"]["id"], id.as_str());

    let (status, me) = s.get("/users/profile", body["accessToken"].as_str()).await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["name"], "Alice Admin");

    // The `token` subcommand mints a usable access token for the same user.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--user", &id, "--ttl", "120"])
        .env("DATABASE_URL", &s.db.url)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (status, me) = s.get("/api/users/profile", minted["token"].as_str()).await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["id"], id.as_str());
}

#[actix_web::test]
async fn wrong_password_and_unknown_account_are_401() {
    let s = TestServer::start().await;
    s.create_user("Bob", "bob@example.com", Some("right-password"), &[]);
    let (status, body) = s
        .post(
            "/auth/login",
            json!({"email": "bob@example.com", "password": "wrong-password"}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    let (status, body) = s
        .post(
            "/auth/login",
            json!({"email": "nobody@example.com", "password": "x"}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    let (status, body) = s.post("/auth/login", json!({"password": "x"}), None).await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
}

#[actix_web::test]
async fn otp_registration_then_otp_login_through_the_webhook_sender() {
    let (s, mut rx) = otp_server().await;
    let (status, body) = s
        .post(
            "/auth/send-otp",
            json!({"phone": "+1 (415) 555-0100"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sms = next_sms(&mut rx).await;
    assert_eq!(sms["phone"], "+14155550100");
    assert_eq!(sms["purpose"], "register");
    let code_text = sms["code"].as_str().unwrap().to_owned();
    assert_eq!(code_text.len(), 6);

    let (status, reg) = s
        .post(
            "/auth/verify-otp-register",
            json!({"phone": "+14155550100", "otp": code_text, "name": "Carol"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    assert_eq!(reg["user"]["phone"], "+14155550100");
    assert_eq!(reg["user"]["name"], "Carol");

    // A used code cannot be replayed.
    let (status, body) = s
        .post(
            "/auth/verify-otp-register",
            json!({"phone": "+14155550100", "otp": code_text}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (400, "otp_invalid"));

    // Registering the same phone again is refused before any code is sent.
    let (status, body) = s
        .post("/auth/send-otp", json!({"phone": "+14155550100"}), None)
        .await;
    assert_eq!((status, code(&body)), (409, "phone_taken"));

    let (status, _) = s
        .post(
            "/auth/send-otp-login",
            json!({"phone": "+14155550100"}),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let sms = next_sms(&mut rx).await;
    assert_eq!(sms["purpose"], "login");
    let (status, login) = s
        .post(
            "/auth/verify-otp-login",
            json!({"phone": "+14155550100", "code": sms["code"]}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["user"]["id"], reg["user"]["id"]);
    let (status, _) = s.get("/users/profile", login["token"].as_str()).await;
    assert_eq!(status, 200);

    // Login codes for unknown phones are refused.
    let (status, body) = s
        .post(
            "/auth/send-otp-login",
            json!({"phone": "+14155550199"}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[actix_web::test]
async fn expired_otp_is_refused() {
    let (s, mut rx) = otp_server().await;
    s.post("/auth/send-otp", json!({"phone": "+447700900123"}), None)
        .await;
    let sms = next_sms(&mut rx).await;
    s.db.exec("UPDATE otp_codes SET expires_at = now() - interval '1 second'");
    let (status, body) = s
        .post(
            "/auth/verify-otp-register",
            json!({"phone": "+447700900123", "otp": sms["code"]}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (400, "otp_expired"));
}

#[actix_web::test]
async fn otp_is_burnt_after_five_wrong_attempts_and_resend_has_a_cooldown() {
    let (s, mut rx) = otp_server().await;
    s.post("/auth/send-otp", json!({"phone": "+33612345678"}), None)
        .await;
    let sms = next_sms(&mut rx).await;
    let right = sms["code"].as_str().unwrap().to_owned();
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for attempt in 1..=5 {
        let (status, body) = s
            .post(
                "/auth/verify-otp-register",
                json!({"phone": "+33612345678", "otp": wrong}),
                None,
            )
            .await;
        assert_eq!(status, 400);
        let expected = if attempt < 5 {
            "otp_invalid"
        } else {
            "otp_attempts_exceeded"
        };
        assert_eq!(code(&body), expected, "attempt {attempt}");
    }
    let (status, body) = s
        .post(
            "/auth/verify-otp-register",
            json!({"phone": "+33612345678", "otp": right}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (400, "otp_attempts_exceeded"));

    let (status, body) = s
        .post("/auth/send-otp", json!({"phone": "+33612345678"}), None)
        .await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    assert!(body["error"]["retryAfter"].as_u64().unwrap() >= 1);
}

#[actix_web::test]
async fn refresh_rotates_and_reuse_revokes_the_session() {
    let s = TestServer::start().await;
    s.create_user("Dan", "dan@example.com", Some("password-1"), &[]);
    let (_, first) = s
        .post(
            "/auth/login",
            json!({"email": "dan@example.com", "password": "password-1"}),
            None,
        )
        .await;
    let r1 = first["refreshToken"].as_str().unwrap();

    let (status, second) = s
        .post("/auth/refresh", json!({"refreshToken": r1}), None)
        .await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["refreshToken"].as_str().unwrap();
    assert_ne!(r1, r2);
    assert_eq!(second["sessionId"], first["sessionId"]);
    let (status, _) = s
        .get("/users/profile", second["accessToken"].as_str())
        .await;
    assert_eq!(status, 200);

    // Presenting the rotated token again: theft suspected, the whole session is revoked.
    let (status, body) = s
        .post("/auth/refresh", json!({"refreshToken": r1}), None)
        .await;
    assert_eq!((status, code(&body)), (401, "refresh_token_reused"));
    let (status, body) = s
        .post("/auth/refresh", json!({"refreshToken": r2}), None)
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_refresh_token"));
    let (status, body) = s
        .get("/users/profile", second["accessToken"].as_str())
        .await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));

    let (status, body) = s
        .post(
            "/auth/refresh",
            json!({"refreshToken": "not-a-token"}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_refresh_token"));
}

#[actix_web::test]
async fn logout_revokes_the_device_session_only() {
    let s = TestServer::start().await;
    s.create_user("Eve", "eve@example.com", Some("password-2"), &[]);
    let creds = json!({"email": "eve@example.com", "password": "password-2"});
    let (_, phone) = s.post("/auth/login", creds.clone(), None).await;
    let (_, laptop) = s.post("/auth/login", creds, None).await;

    let (status, _) = s
        .post("/auth/logout", json!({}), phone["accessToken"].as_str())
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/users/profile", phone["accessToken"].as_str()).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    let (status, _) = s
        .post(
            "/auth/refresh",
            json!({"refreshToken": phone["refreshToken"]}),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .get("/users/profile", laptop["accessToken"].as_str())
        .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn legacy_token_claims_are_accepted() {
    let s = TestServer::start().await;
    let id = s.create_user("Fay", "fay@example.com", Some("password-3"), &[]);
    let (_, login) = s
        .post(
            "/auth/login",
            json!({"email": "fay@example.com", "password": "password-3"}),
            None,
        )
        .await;
    let sid = login["sessionId"].as_str().unwrap();
    let hs = jsonwebtoken::Algorithm::HS256;
    let key = SECRET.as_bytes();
    let accepted = [
        json!({"uid": id.to_string(), "exp": in_ten_minutes()}),
        json!({"id": id, "sessionId": sid, "exp": in_ten_minutes()}),
        json!({"userId": id.to_string(), "exp": in_ten_minutes()}),
        json!({"sub": id.to_string(), "exp": in_ten_minutes()}),
    ];
    for claims in accepted {
        let (status, body) = s
            .get(
                "/users/profile",
                Some(&legacy_token(claims.clone(), hs, key)),
            )
            .await;
        assert_eq!(status, 200, "{claims} -> {body}");
        assert_eq!(body["user"]["id"], id.to_string());
    }
    let unknown_session =
        json!({"id": id, "sessionId": "no-such-session", "exp": in_ten_minutes()});
    let (status, _) = s
        .get(
            "/users/profile",
            Some(&legacy_token(unknown_session, hs, key)),
        )
        .await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn unsigned_foreign_and_expired_tokens_are_401() {
    let s = TestServer::start().await;
    let id = s.create_user("Gus", "gus@example.com", None, &[]);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64.encode(json!({"sub": id.to_string(), "exp": in_ten_minutes()}).to_string());
    let none_token = format!("{header}.{claims}.");
    let wrong_secret = legacy_token(
        json!({"sub": id.to_string(), "exp": in_ten_minutes()}),
        jsonwebtoken::Algorithm::HS256,
        b"some-other-secret-some-other-secret",
    );
    let expired = legacy_token(
        json!({"sub": id.to_string(), "exp": chrono::Utc::now().timestamp() - 3600}),
        jsonwebtoken::Algorithm::HS256,
        SECRET.as_bytes(),
    );
    let hs512 = legacy_token(
        json!({"sub": id.to_string(), "exp": in_ten_minutes()}),
        jsonwebtoken::Algorithm::HS512,
        SECRET.as_bytes(),
    );
    for (token, expected) in [
        (none_token.as_str(), "invalid_token"),
        (wrong_secret.as_str(), "invalid_token"),
        (expired.as_str(), "token_expired"),
        (hs512.as_str(), "invalid_token"),
        ("garbage", "invalid_token"),
    ] {
        let (status, body) = s.get("/users/profile", Some(token)).await;
        assert_eq!((status, code(&body)), (401, expected), "{token}");
    }
    let (status, body) = s.get("/users/profile", None).await;
    assert_eq!((status, code(&body)), (401, "missing_token"));
}

#[actix_web::test]
async fn banned_accounts_cannot_use_their_tokens() {
    let s = TestServer::start().await;
    let id = s.create_user("Hal", "hal@example.com", Some("password-4"), &[]);
    let token = s.token_for(id);
    s.db.exec(&format!(
        "UPDATE users SET banned_at = now() WHERE id = {id}"
    ));
    let (status, body) = s.get("/users/profile", Some(&token)).await;
    assert_eq!((status, code(&body)), (401, "account_banned"));
    let (status, _) = s
        .post(
            "/auth/login",
            json!({"email": "hal@example.com", "password": "password-4"}),
            None,
        )
        .await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn logout_closes_that_devices_sockets_and_only_those() {
    let s = TestServer::start().await;
    s.create_user("Alice", "alice@example.com", Some("correct-horse"), &[]);
    let login = || async {
        let (status, body) = s
            .post(
                "/auth/login",
                json!({"email": "alice@example.com", "password": "correct-horse"}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["accessToken"].as_str().unwrap().to_owned()
    };
    let (phone, laptop) = (login().await, login().await);
    let mut on_phone = common::WsClient::connect(&s, &phone).await;
    let mut on_laptop = common::WsClient::connect(&s, &laptop).await;
    on_phone.request("ping", json!({})).await.unwrap();
    on_laptop.request("ping", json!({})).await.unwrap();

    let (status, body) = s.post("/auth/logout", json!({}), Some(&phone)).await;
    assert_eq!(status, 200, "{body}");
    while on_phone.next_frame(Duration::from_secs(5)).await.is_some() {}
    let code = on_phone
        .closed
        .clone()
        .flatten()
        .map(|r| u16::from(r.code))
        .expect("close frame");
    assert_eq!(code, 4001);
    // The other device stays connected.
    assert!(on_laptop.request("ping", json!({})).await.is_ok());
}
