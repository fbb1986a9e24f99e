//! Accounts imported from the legacy backends, end to end over real HTTP and WebSocket against
//! a real PostgreSQL: a bcrypt password logs in and is replaced with the current scheme on the
//! way (a password changed meanwhile is kept; a replacement that fails does not fail the login),
//! and tokens the legacy backends minted for a MongoDB ObjectId subject find the imported user
//! through `legacy_ids`, on REST and on the WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient, SECRET};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Written by bcryptjs 2 (`bcrypt.hashSync("imported-secret-9", 10)`), as the Node backends
/// stored it.
const BCRYPTJS_HASH: &str = "$2a$10$RkOxF2WrVYxEZvURWe21/etMumfKoySSs/6NLpjzUPSQIT9KpTCMe";
const BCRYPTJS_PASSWORD: &str = "imported-secret-9";

/// A MongoDB ObjectId the legacy backend gave the user.
const OID: &str = "65a1b2c3d4e5f6a7b8c9d0e1";

/// Inserts a user the way `switchboard import` does (no phone, a legacy source) and answers
/// its id.
fn insert_imported_user(s: &TestServer, name: &str, email: &str, hash: Option<&str>) -> i64 {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    diesel::sql_query(
        "INSERT INTO users (name, email, password_hash, legacy_source) \
         VALUES ($1, $2, $3, 'seed003') RETURNING id",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .bind::<diesel::sql_types::Text, _>(email)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(hash)
    .get_result::<Row>(&mut s.db.conn())
    .unwrap()
    .id
}

/// Records that `source` knew row `id` of `kind` as `legacy_id`, imported `age_secs` ago.
fn map_legacy_id(s: &TestServer, source: &str, legacy_id: &str, kind: &str, id: i64, age: i64) {
    s.db.exec(&format!(
        "INSERT INTO legacy_ids (source, legacy_id, kind, id, imported_at) \
         VALUES ('{source}', '{legacy_id}', '{kind}', {id}, now() - interval '{age} seconds')"
    ));
}

fn stored_hash(s: &TestServer, user: i64) -> Option<String> {
    use switchboard::db::schema::users;
    users::table
        .filter(users::id.eq(user))
        .select(users::password_hash)
        .first::<Option<String>>(&mut s.db.conn())
        .unwrap()
}

fn legacy_token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_ten_minutes() -> i64 {
    chrono::Utc::now().timestamp() + 600
}

async fn login(s: &TestServer, email: &str, password: &str) -> (u16, Value) {
    s.post(
        "/auth/login",
        json!({"email": email, "password": password}),
        None,
    )
    .await
}

#[actix_web::test]
async fn a_bcrypt_password_logs_in_once_and_is_then_stored_in_the_current_scheme() {
    let s = TestServer::start().await;
    let id = insert_imported_user(&s, "Ida", "ida@example.com", Some(BCRYPTJS_HASH));

    // A wrong password is refused and leaves the legacy hash alone.
    let (status, body) = login(&s, "ida@example.com", "imported-secret-8").await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_credentials"),
        "{body}"
    );
    assert_eq!(stored_hash(&s, id).as_deref(), Some(BCRYPTJS_HASH));

    let (status, body) = login(&s, "ida@example.com", BCRYPTJS_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], id.to_string());
    assert!(body["refreshToken"].as_str().unwrap().len() >= 40);
    let (status, me) = s.get("/users/profile", body["accessToken"].as_str()).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["id"], id.to_string());

    // The bcrypt hash is gone; the current scheme verifies the same password.
    let stored = stored_hash(&s, id).unwrap();
    assert!(stored.starts_with("pbkdf2-sha256$"), "{stored}");
    assert!(switchboard::auth::password::verify(
        &stored,
        BCRYPTJS_PASSWORD
    ));

    let (status, body) = login(&s, "ida@example.com", BCRYPTJS_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], id.to_string());
    assert_eq!(stored_hash(&s, id).as_deref(), Some(stored.as_str()));

    let (status, body) = login(&s, "ida@example.com", "imported-secret-8").await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_credentials"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_password_changed_while_the_bcrypt_check_runs_is_kept() {
    // One hashing thread, held by the test: the login reads the bcrypt hash, then waits.
    let s = TestServer::start_with(|c| c.password_hash_threads = 1).await;
    let id = insert_imported_user(&s, "Jon", "jon@example.com", Some(BCRYPTJS_HASH));
    let changed = switchboard::auth::password::hash("changed-password").unwrap();

    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let holder = s.running.state.auth.hasher().reserve().unwrap();
    let held = actix_web::rt::spawn(holder.run(move || {
        started.send(()).unwrap();
        released.recv().unwrap();
        Ok(())
    }));
    running.await.unwrap();

    let change_meanwhile = async {
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        s.db.exec(&format!(
            "UPDATE users SET password_hash = '{changed}' WHERE id = {id}"
        ));
        release.send(()).unwrap();
    };
    let ((status, body), ()) = futures_util::future::join(
        login(&s, "jon@example.com", BCRYPTJS_PASSWORD),
        change_meanwhile,
    )
    .await;
    held.await.unwrap().unwrap();

    // The login checked the hash it read and succeeds; the newer password is not overwritten.
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored_hash(&s, id).as_deref(), Some(changed.as_str()));
    let (status, _) = login(&s, "jon@example.com", BCRYPTJS_PASSWORD).await;
    assert_eq!(status, 401);
    let (status, body) = login(&s, "jon@example.com", "changed-password").await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn a_failed_rehash_does_not_fail_the_login() {
    let s = TestServer::start().await;
    let id = insert_imported_user(&s, "Max", "max@example.com", Some(BCRYPTJS_HASH));
    // Every change of a stored password fails.
    s.db.exec(
        "CREATE FUNCTION refuse_password_change() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'password changes are refused'; END $$",
    );
    s.db.exec(
        "CREATE TRIGGER refuse_password_change BEFORE UPDATE OF password_hash ON users \
         FOR EACH ROW EXECUTE FUNCTION refuse_password_change()",
    );
    for _ in 0..2 {
        let (status, body) = login(&s, "max@example.com", BCRYPTJS_PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"]["id"], id.to_string());
        assert_eq!(stored_hash(&s, id).as_deref(), Some(BCRYPTJS_HASH));
    }
    // Once the update goes through, the next login replaces the hash.
    s.db.exec("DROP TRIGGER refuse_password_change ON users");
    let (status, body) = login(&s, "max@example.com", BCRYPTJS_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert!(stored_hash(&s, id).unwrap().starts_with("pbkdf2-sha256$"));
}

#[actix_web::test]
async fn tokens_naming_an_imported_object_id_authenticate_as_that_user() {
    let s = TestServer::start_with(|c| c.accept_legacy_session_tokens = true).await;
    let id = insert_imported_user(&s, "Kim", "kim@example.com", None);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    map_legacy_id(&s, "seed003", OID, "user", id, 0);

    let uid = legacy_token(json!({"uid": OID, "exp": in_ten_minutes()}));
    let session = legacy_token(json!({
        "id": OID,
        "sessionId": switchboard::auth::tokens::random_id().unwrap(),
        "exp": in_ten_minutes(),
    }));
    let user_id = legacy_token(json!({"userId": OID, "exp": in_ten_minutes()}));
    for token in [&uid, &session, &user_id] {
        let (status, body) = s.get("/users/profile", Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"]["id"], id.to_string(), "{body}");
        assert_eq!(body["user"]["name"], "Kim");
    }

    // A plain WebSocket authenticates with each: a message sent on it is from that user.
    let conv = s.direct(id, bob);
    for (n, token) in [&uid, &session].into_iter().enumerate() {
        let mut ws = WsClient::connect(&s, token).await;
        let ack = ws
            .request(
                "message:send",
                json!({
                    "conversationId": conv.to_string(),
                    "content": format!("hello {n}"),
                    "clientMessageId": format!("legacy-{n}"),
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("message refused: {e}"));
        let message: i64 = ack["id"].as_str().unwrap().parse().unwrap();
        let sender = {
            use switchboard::db::schema::messages;
            messages::table
                .filter(messages::id.eq(message))
                .select(messages::sender_id)
                .first::<Option<i64>>(&mut s.db.conn())
                .unwrap()
        };
        assert_eq!(sender, Some(id));
        ws.close().await;
    }
}

#[actix_web::test]
async fn unknown_object_ids_are_refused_like_unknown_users() {
    let s = TestServer::start().await;
    let kim = insert_imported_user(&s, "Kim", "kim@example.com", None);
    let lee = insert_imported_user(&s, "Lee", "lee@example.com", None);
    map_legacy_id(&s, "seed003", OID, "user", kim, 0);

    // Not imported at all, and imported as something other than a user.
    let conversation = "65a1b2c3d4e5f6a7b8c9d0ff";
    map_legacy_id(&s, "seed003", conversation, "conversation", kim, 0);
    for unknown in ["65a1b2c3d4e5f6a7b8c9d0e2", conversation] {
        let token = legacy_token(json!({"uid": unknown, "exp": in_ten_minutes()}));
        let (status, body) = s.get("/users/profile", Some(&token)).await;
        assert_eq!((status, code(&body)), (401, "invalid_token"), "{body}");
        let mut ws = WsClient::connect(&s, &token).await;
        while ws.next_frame(Duration::from_secs(5)).await.is_some() {}
        assert_eq!(ws.close_code(), Some(4001), "{unknown}");
    }

    // The same id imported from two backends: the older mapping names the user.
    let shared = "5f0c0ffee0c0ffee0c0ffee0";
    map_legacy_id(&s, "seed002", shared, "user", lee, 60);
    map_legacy_id(&s, "seed003", shared, "user", kim, 0);
    let token = legacy_token(json!({"sub": shared, "exp": in_ten_minutes()}));
    let (status, body) = s.get("/users/profile", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], lee.to_string());

    // An imported user is held to the same standing as any other.
    s.db.exec(&format!(
        "UPDATE users SET banned_at = now() WHERE id = {kim}"
    ));
    let token = legacy_token(json!({"uid": OID, "exp": in_ten_minutes()}));
    let (status, body) = s.get("/users/profile", Some(&token)).await;
    assert_eq!((status, code(&body)), (401, "account_banned"), "{body}");
}

#[actix_web::test]
async fn an_unknown_legacy_session_of_an_imported_user_needs_the_setting() {
    let s = TestServer::start().await;
    let id = insert_imported_user(&s, "Kim", "kim@example.com", None);
    map_legacy_id(&s, "seed003", OID, "user", id, 0);
    let token = legacy_token(json!({
        "id": OID,
        "sessionId": "65a1f0c2e4b0a1b2c3d4e5f6",
        "exp": in_ten_minutes(),
    }));
    let (status, body) = s.get("/users/profile", Some(&token)).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"), "{body}");
}
