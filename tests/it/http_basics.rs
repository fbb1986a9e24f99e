//! End-to-end HTTP behaviour that every route shares: health endpoints, JSON error envelopes for
//! malformed input, unknown routes, profile changes and user search with cursor pagination.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use crate::common::{code, TestServer};
use serde_json::json;
use std::time::{Duration, Instant};

#[actix_web::test]
async fn ping_health_and_seed_001_health_shapes() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/ping", None).await;
    assert_eq!((status, body["text"].as_str()), (200, Some("pong")));

    let (status, body) = s.get("/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["db"], "ok");

    let (status, body) = s.get("/api/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(body["uptime"].is_number());
    let ts = body["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    assert!(ts.ends_with('Z'));
}

#[actix_web::test]
async fn health_reports_503_quickly_when_the_database_is_unreachable() {
    let s = TestServer::start_with(|c| {
        c.database_url =
            switchboard::config::Secret::new("postgres://postgres@127.0.0.1:1/nowhere");
        c.db_acquire_timeout = Duration::from_millis(500);
    })
    .await;
    let started = Instant::now();
    let (status, body) = s.get("/health", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["db"], "down");
    assert_eq!(code(&body), "unavailable");
    assert!(started.elapsed() < Duration::from_secs(10));

    // REST routes that need the database answer 503 `unavailable`, not 500.
    let (status, body) = s
        .post(
            "/auth/login",
            json!({"email": "a@b.co", "password": "x"}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (503, "unavailable"));
}

#[actix_web::test]
async fn malformed_bodies_get_400_or_413_with_a_code() {
    let s = TestServer::start_with(|c| c.max_json_body_bytes = 1024).await;
    let raw = |body: &'static str, content_type: &'static str| {
        let req = s
            .client
            .post(s.url("/auth/login"))
            .insert_header(("Content-Type", content_type));
        async move {
            let mut res = req.send_body(body).await.unwrap();
            let json: serde_json::Value = res.json().await.unwrap();
            (res.status().as_u16(), json)
        }
    };
    let (status, body) = raw("{\"email\": ", "application/json").await;
    assert_eq!((status, code(&body)), (400, "invalid_json"));
    let (status, body) = raw("{\"email\": 5, \"password\": \"x\"}", "application/json").await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
    let (status, body) = raw("{\"email\": \"a@b.co\"}", "application/json").await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("password"));
    let (status, body) = raw("email=a", "application/x-www-form-urlencoded").await;
    assert_eq!((status, code(&body)), (400, "unsupported_content_type"));

    let big = format!(
        "{{\"email\": \"{}\", \"password\": \"x\"}}",
        "a".repeat(4096)
    );
    let mut res = s
        .client
        .post(s.url("/auth/login"))
        .insert_header(("Content-Type", "application/json"))
        .send_body(big)
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!((res.status().as_u16(), code(&body)), (413, "too_large"));

    let (status, body) = s.get("/users?limit=abc", Some("x")).await;
    assert_eq!(status, 401, "auth is checked first: {body}");
}

#[actix_web::test]
async fn unknown_routes_are_json_404() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/no/such/route", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[actix_web::test]
async fn profile_updates_accept_avatar_and_avatar_url() {
    let s = TestServer::start().await;
    let id = s.create_user("Ivy", "ivy@example.com", None, &[]);
    let token = s.token_for(id);
    let (status, body) = s
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"name": "Ivy B", "avatar": "https://cdn/a.png"})),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["name"], "Ivy B");
    assert_eq!(body["user"]["avatarUrl"], "https://cdn/a.png");
    assert_eq!(body["user"]["avatar"], "https://cdn/a.png");

    let (_, body) = s
        .call(
            "PATCH",
            "/api/users/me",
            Some(json!({"avatarUrl": "https://cdn/b.png"})),
            Some(&token),
        )
        .await;
    assert_eq!(body["user"]["avatarUrl"], "https://cdn/b.png");
    assert_eq!(body["user"]["name"], "Ivy B");

    let (_, body) = s
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"avatarUrl": null})),
            Some(&token),
        )
        .await;
    assert!(body["user"]["avatarUrl"].is_null());

    let (status, body) = s
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"name": "  "})),
            Some(&token),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
}

#[actix_web::test]
async fn user_search_filters_by_name_or_phone_and_pages_by_cursor() {
    let s = TestServer::start().await;
    let me = s.create_user("Searcher", "me@example.com", None, &[]);
    for i in 0..5 {
        s.create_user(
            &format!("Kim {i}"),
            &format!("kim{i}@example.com"),
            None,
            &[],
        );
    }
    let mut conn = s.db.conn();
    switchboard::auth::create_user(
        &mut conn,
        "Phone Only",
        Some("+14155550177"),
        None,
        None,
        vec![],
    )
    .unwrap();
    let token = s.token_for(me);

    let (status, page1) = s.get("/users?q=kim&limit=3", Some(&token)).await;
    assert_eq!(status, 200);
    let names: Vec<_> = page1["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].clone())
        .collect();
    assert_eq!(names, vec!["Kim 0", "Kim 1", "Kim 2"]);
    assert!(
        page1["users"][0]["email"].is_null(),
        "other users' e-mails are hidden"
    );
    let cursor = page1["nextCursor"].as_str().unwrap();
    let (_, page2) = s
        .get(
            &format!("/api/users?q=kim&limit=3&cursor={cursor}"),
            Some(&token),
        )
        .await;
    let names: Vec<_> = page2["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].clone())
        .collect();
    assert_eq!(names, vec!["Kim 3", "Kim 4"]);
    assert!(page2["nextCursor"].is_null());

    let (_, by_phone) = s.get("/users?search=555017", Some(&token)).await;
    assert_eq!(by_phone["users"][0]["name"], "Phone Only");

    let (_, none) = s.get("/users?q=%25", Some(&token)).await;
    assert_eq!(
        none["users"].as_array().unwrap().len(),
        0,
        "LIKE wildcards are escaped"
    );

    let (status, body) = s.get("/users?cursor=zzz", Some(&token)).await;
    assert_eq!((status, code(&body)), (400, "invalid_cursor"));
}

/// Ends every session of the test database's server but the asking one (as a PostgreSQL
/// restart or an idle-session killer would), and says how many it ended.
fn end_server_sessions(s: &TestServer) -> i64 {
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;
    #[derive(QueryableByName)]
    struct Ended {
        #[diesel(sql_type = BigInt)]
        ended: i64,
    }
    let mut conn = s.db.conn();
    diesel::sql_query(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS ended FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .get_result::<Ended>(&mut conn)
    .unwrap()
    .ended
}

/// A pooled connection whose PostgreSQL session ended under it is replaced. Used within
/// `DB_CHECK_IDLE_MS` it is trusted without a check, so work on it fails once with 503
/// `unavailable` (never a 500, never a hang) and the pool then opens a new one; with the check on
/// every checkout (0) nothing fails.
#[actix_web::test]
async fn pooled_connections_whose_sessions_ended_are_replaced() {
    for (check_idle, may_fail) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
        let s = TestServer::start_with(|c| c.db_check_idle = check_idle).await;
        let user = s.create_user("Pooled", "pooled@example.com", None, &[]);
        let token = s.token_for(user);
        for _ in 0..5 {
            let (status, body) = s.get("/users/profile", Some(&token)).await;
            assert_eq!(status, 200, "{body}");
        }
        let ended = end_server_sessions(&s);
        assert!(ended >= 1, "the server held no session to end");
        let mut failed = 0;
        let mut answers = Vec::new();
        for _ in 0..40 {
            let (status, body) = s.get("/users/profile", Some(&token)).await;
            if status != 200 {
                assert_eq!((status, code(&body)), (503, "unavailable"), "{body}");
                failed += 1;
            }
            answers.push(status);
        }
        let pool_size = i64::from(switchboard::config::Config::default().db_pool_size);
        assert!(
            i64::from(failed) <= ended.min(pool_size),
            "{failed} failures for {ended} ended sessions: {answers:?}"
        );
        assert!(
            answers[answers.len() - 20..].iter().all(|&a| a == 200),
            "the pool did not recover: {answers:?}"
        );
        if !may_fail {
            assert_eq!(failed, 0, "checked on every checkout: {answers:?}");
        }
        eprintln!(
            "DB_CHECK_IDLE_MS={check_idle:?}: {ended} sessions ended, {failed} requests failed"
        );
    }
}
