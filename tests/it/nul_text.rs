//! Text PostgreSQL cannot store (NUL characters, found by schemathesis) is refused with 400
//! `invalid_text` instead of failing inside the database with a 500 — and a NUL in one message
//! cannot fail the commit batch of other users' messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use serde_json::json;

#[actix_web::test]
async fn nul_characters_are_refused_with_invalid_text() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv =
        switchboard::db::conversations::create_group(&mut s.db.conn(), alice, "g", &[bob], None)
            .unwrap()
            .id;
    let token = s.token_for(alice);

    let (status, body) = s.get("/api/users?q=a%00b", Some(&token)).await;
    assert_eq!((status, code(&body)), (400, "invalid_text"), "{body}");
    let (status, body) = s
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"name": "Al\u{0}ice"})),
            Some(&token),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_text"), "{body}");
    let (status, body) = s
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "hi", "metadata": {"k\u{0}": 1}}),
            Some(&token),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_text"), "{body}");
    let (status, body) = s
        .post(
            "/auth/login",
            json!({"email": "a\u{0}@x", "password": "p"}),
            None,
        )
        .await;
    assert!(status == 400 || status == 401, "{status} {body}");

    // Over /ws: the bad send is refused, sends around it commit.
    let mut a = WsClient::connect(&s, &token).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let c = conv.to_string();
    let ok1 = a.request(
        "message:send",
        json!({"conversationId": c, "content": "before"}),
    );
    let ok1 = ok1.await.unwrap();
    let bad = a
        .request(
            "message:send",
            json!({"conversationId": c, "content": "x\u{0}y"}),
        )
        .await
        .unwrap_err();
    assert_eq!(bad["code"], "invalid_text");
    let ok2 = b
        .request(
            "message:send",
            json!({"conversationId": c, "content": "after"}),
        )
        .await
        .unwrap();
    assert_eq!(
        ok2["seq"].as_i64().unwrap(),
        ok1["seq"].as_i64().unwrap() + 1
    );

    // A call reason is stored: control characters are refused.
    let call = a
        .request("call:initiate", json!({"to": bob.to_string()}))
        .await
        .unwrap();
    let err = a
        .request(
            "call:end",
            json!({"callId": call["callId"], "reason": "bye\u{0}"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "validation_failed");
    a.request(
        "call:end",
        json!({"callId": call["callId"], "reason": "bye"}),
    )
    .await
    .unwrap();
}
