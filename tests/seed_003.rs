//! Seed 003 (Backend2): REST outputs in both apps' naming styles (the Flutter app's `from`,
//! `text`, `participants`, `avatar`; the Electron app's `sender`, `conversation`, `content`,
//! `members`, `avatarUrl`; both apps' `_id`), receipt cursors as `Map<userId, Date>` on
//! conversations over REST and Socket.IO, tokens of the old Backend (`{id, sessionId}`) behind
//! ACCEPT_LEGACY_SESSION_TOKENS, and failures as the events the app reads. Sockets are the real
//! `socket.io-client` on the app's own listener (naming no dialect), over websocket and over
//! polling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::puppet::Puppet;
use common::{code, TestServer, SECRET};
use serde_json::{json, Value};

fn websocket(token: &str) -> Value {
    json!({"query": {"token": token}, "transports": ["websocket"]})
}

fn polling(token: &str) -> Value {
    json!({"query": {"token": token}, "transports": ["polling"]})
}

fn s(id: i64) -> String {
    id.to_string()
}

fn time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a date: {v}")))
        .unwrap()
}

/// Both naming styles on one message, with string ids.
fn assert_message_in_both_styles(m: &Value, sender: i64, conversation: &str, text: &str) {
    for key in [
        "id",
        "_id",
        "conversationId",
        "conversation",
        "senderId",
        "from",
        "sender",
    ] {
        assert!(m[key].is_string(), "{key} is not a string in {m}");
    }
    assert_eq!(m["_id"], m["id"]);
    assert_eq!(m["from"], json!(s(sender)));
    assert_eq!(m["sender"], json!(s(sender)));
    assert_eq!(m["senderId"], json!(s(sender)));
    assert_eq!(m["conversation"], json!(conversation));
    assert_eq!(m["conversationId"], json!(conversation));
    assert_eq!(m["text"], json!(text));
    assert_eq!(m["content"], json!(text));
    assert!(m["seq"].is_i64());
    time(&m["createdAt"]);
}

fn legacy_token(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[actix_web::test]
async fn rest_messages_conversations_and_users_carry_both_naming_styles() {
    let srv = TestServer::start().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));

    // Backend1 style: to a user, with `text`.
    let (status, sent) = srv
        .post(
            "/messages",
            json!({"to": s(bob), "text": "hi bob"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let conv = sent["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_message_in_both_styles(&sent["message"], alice, &conv, "hi bob");
    // Backend style: to a conversation, with `content`.
    let (status, sent2) = srv
        .post(
            "/api/messages",
            json!({"conversation": conv, "content": "hi alice"}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 201, "{sent2}");
    assert_message_in_both_styles(&sent2["message"], bob, &conv, "hi alice");

    let (status, page) = srv
        .get(&format!("/messages?conversationId={conv}"), Some(&ta))
        .await;
    assert_eq!(status, 200, "{page}");
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_message_in_both_styles(&messages[0], alice, &conv, "hi bob");
    assert_message_in_both_styles(&messages[1], bob, &conv, "hi alice");
    let (status, page) = srv
        .get(&format!("/api/conversations/{conv}/messages"), Some(&tb))
        .await;
    assert_eq!(status, 200);
    assert_message_in_both_styles(&page["messages"][1], bob, &conv, "hi alice");

    let id = sent["message"]["id"].as_str().unwrap();
    let (status, edited) = srv
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"text": "hi Bob"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_message_in_both_styles(&edited["message"], alice, &conv, "hi Bob");
    let (status, deleted) = srv
        .call("DELETE", &format!("/messages/{id}"), None, Some(&ta))
        .await;
    assert_eq!(status, 200);
    assert_eq!(deleted["message"]["_id"], json!(id));
    assert_eq!(deleted["message"]["deleted"], true);

    // Conversations: `members` and `participants`, the same member objects with both users'
    // names; `_id`; the last message in both styles.
    let (status, _) = srv
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"avatarUrl": "https://cdn.example.com/b.png"})),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 200);
    let (status, list) = srv.get("/conversations", Some(&ta)).await;
    assert_eq!(status, 200, "{list}");
    let c = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == conv.as_str())
        .unwrap()
        .clone();
    assert_eq!(c["_id"], json!(conv));
    assert_eq!(c["participants"], c["members"]);
    let members = c["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for m in members {
        for key in ["userId", "id", "_id"] {
            assert!(m[key].is_string(), "{key} in {m}");
        }
        assert_eq!(m["id"], m["userId"]);
        assert_eq!(m["_id"], m["userId"]);
    }
    let b = members
        .iter()
        .find(|m| m["userId"] == s(bob).as_str())
        .unwrap();
    assert_eq!(b["name"], "Bob");
    assert_eq!(b["avatar"], "https://cdn.example.com/b.png");
    assert_eq!(b["avatarUrl"], "https://cdn.example.com/b.png");
    assert_message_in_both_styles(&c["lastMessage"], bob, &conv, "hi alice");

    // Users: `avatar` and `avatarUrl`, `_id`, string ids.
    let (status, me) = srv
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"avatar": "https://cdn.example.com/a.png"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    for user in [
        &me["user"],
        &srv.get("/users/profile", Some(&ta)).await.1["user"],
    ] {
        assert_eq!(user["avatar"], "https://cdn.example.com/a.png");
        assert_eq!(user["avatarUrl"], "https://cdn.example.com/a.png");
        assert_eq!(user["_id"], json!(s(alice)));
        assert_eq!(user["id"], json!(s(alice)));
    }
    let (status, found) = srv.get("/users?q=Alice", Some(&tb)).await;
    assert_eq!(status, 200, "{found}");
    let hit = &found["users"][0];
    assert_eq!(hit["_id"], json!(s(alice)));
    assert_eq!(hit["avatar"], hit["avatarUrl"]);
}

#[actix_web::test]
async fn receipt_cursors_are_time_maps_keyed_by_user_on_conversations() {
    let srv = TestServer::start_apps(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));
    let mut p = Puppet::start(srv.addr_of("backend2"));
    p.connect("alice", websocket(&ta)).await;
    // Bob's app polls and does not acknowledge events: his cursors move only when he says so.
    let mut opts = polling(&tb);
    opts["ackEvents"] = json!(false);
    p.connect("bob", opts).await;

    let (status, created) = srv
        .post(
            "/conversations",
            json!({"type": "group", "title": "Trip", "members": [s(bob), s(carol)]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let conv = created["conversation"]["id"].as_str().unwrap().to_owned();
    // Over the socket, the new conversation carries the same shape.
    let announced = p.event("bob", "conversation:new").await;
    assert_eq!(announced["id"], json!(conv));
    assert!(announced["deliveredUpTo"].is_object(), "{announced}");
    assert!(announced["readUpTo"].is_object(), "{announced}");
    assert_eq!(announced["participants"].as_array().unwrap().len(), 3);
    assert_eq!(announced["participants"], announced["members"]);

    let mut stamps = Vec::new();
    for text in ["one", "two"] {
        let ack = p
            .call(
                "alice",
                "message",
                json!([{"conversation": conv, "text": text}]),
            )
            .await;
        stamps.push(ack[0]["createdAt"].as_str().unwrap().to_owned());
    }
    // Bob received both, read the first.
    p.emit(
        "bob",
        "delivered",
        json!([{"conversationId": conv, "deliveredUpTo": stamps[1]}]),
    );
    p.event("alice", "delivered").await;
    p.emit(
        "bob",
        "read_up_to",
        json!([{"conversationId": conv, "readUpTo": stamps[0]}]),
    );
    let read = p.event("alice", "read_up_to").await;
    assert_eq!(time(&read["readUpTo"]), time(&json!(stamps[0])));
    assert_eq!(read["userId"], json!(s(bob)));

    for path in [
        format!("/conversations/{conv}"),
        "/conversations".to_owned(),
    ] {
        let (status, body) = srv.get(&path, Some(&ta)).await;
        assert_eq!(status, 200, "{body}");
        let c = if body["conversation"].is_object() {
            body["conversation"].clone()
        } else {
            body["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == conv.as_str())
                .unwrap()
                .clone()
        };
        assert_eq!(time(&c["deliveredUpTo"][s(bob)]), time(&json!(stamps[1])));
        assert_eq!(time(&c["readUpTo"][s(bob)]), time(&json!(stamps[0])));
        // Carol has received nothing: no entry, not a zero.
        assert!(c["deliveredUpTo"].get(s(carol)).is_none(), "{c}");
        assert!(c["readUpTo"].get(s(carol)).is_none(), "{c}");
    }
}

#[actix_web::test]
async fn old_backend_session_tokens_are_accepted_only_when_enabled() {
    let off = TestServer::start().await;
    let alice = off.create_user("Alice", "alice@example.com", None, &[]);
    let exp = chrono::Utc::now().timestamp() + 600;
    let old = legacy_token(
        json!({"id": s(alice), "sessionId": "65a1f0c2e4b0a1b2c3d4e5f6", "iat": exp - 700, "exp": exp}),
        SECRET.as_bytes(),
    );
    let (status, body) = off.get("/users/profile", Some(&old)).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"), "{body}");
    drop(off);

    let on = TestServer::start_apps(|c| c.accept_legacy_session_tokens = true).await;
    let alice = on.create_user("Alice", "alice@example.com", None, &[]);
    let bob = on.create_user("Bob", "bob@example.com", None, &[]);
    let old = |user: i64, exp: i64, secret: &[u8]| {
        legacy_token(
            json!({"id": s(user), "sessionId": "65a1f0c2e4b0a1b2c3d4e5f6", "iat": exp - 700, "exp": exp}),
            secret,
        )
    };
    let token = old(alice, exp, SECRET.as_bytes());
    let (status, body) = on.get("/users/profile", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], json!(s(alice)));
    // The same expiry and signature rules as any token.
    let expired = old(
        alice,
        chrono::Utc::now().timestamp() - 3600,
        SECRET.as_bytes(),
    );
    let (status, body) = on.get("/users/profile", Some(&expired)).await;
    assert_eq!((status, code(&body)), (401, "token_expired"));
    let forged = old(alice, exp, b"not-the-shared-secret-not-the-shared");
    let (status, body) = on.get("/users/profile", Some(&forged)).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"));
    // Only the legacy `sessionId` claim falls back: an unknown Switchboard `sid` is refused.
    let pair = on
        .running
        .state
        .auth
        .keys()
        .sign(alice, Some("no-such-switchboard-session"), &[], 600)
        .unwrap();
    let (status, _) = on.get("/users/profile", Some(&pair)).await;
    assert_eq!(status, 401, "an unknown `sid` is not a legacy session");

    // The app's socket connects with it, in both transports.
    let mut p = Puppet::start(on.addr_of("backend2"));
    p.connect("alice", polling(&token)).await;
    p.connect("bob", websocket(&old(bob, exp, SECRET.as_bytes())))
        .await;
    let ack = p
        .call(
            "alice",
            "message",
            json!([{"to": s(bob), "text": "still signed in"}]),
        )
        .await;
    assert!(ack[0]["id"].is_string(), "{ack:?}");
    let m = p.event("bob", "message").await;
    assert_eq!(m["from"], json!(s(alice)));
    assert_eq!(m["text"], "still signed in");
    assert_eq!(m["_id"], ack[0]["id"]);
}

#[actix_web::test]
async fn a_call_invite_that_cannot_start_hangs_up_with_the_reason() {
    let srv = TestServer::start_apps(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("backend2"));
    p.connect("alice", polling(&srv.token_for(alice))).await;
    p.emit(
        "alice",
        "call:invite",
        json!([{"to": "987654321", "isVideo": true, "offer": {"type": "offer", "sdp": "o"}}]),
    );
    let hangup = p.event("alice", "call:hangup").await;
    assert_eq!(hangup["reason"], "not_found");
    assert_eq!(hangup["code"], "not_found");
    assert!(hangup["message"].is_string());
}
