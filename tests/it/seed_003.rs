//! Seed 003 (Backend2: a Flutter app written for Backend1 and an Electron app written for
//! Backend) played against the app's own listener (`addr_of("backend2")`, naming no dialect),
//! sockets with the real `socket.io-client` over websocket and over HTTP long-polling, REST with
//! the listener the sockets use. Every socket event of the seed's document, with the JSON type of
//! every field:
//!
//! - `message` both ways (sent to a user as `{to, text}`, to a conversation as
//!   `{conversation, content}` or `{conversationId, text}`; received in both naming styles on
//!   every device of the recipient and the sender's other devices), `message_edited` and
//!   `message_deleted` (after the REST edit and delete);
//! - `delivered{deliveredUpTo}` and `read_up_to{readUpTo}` both ways, as times;
//! - `typing` and `typing-stopped` both ways;
//! - `call:invite` (ringing every device), `call:answer` (the SDP to the caller, the other devices
//!   told `answered_elsewhere`), `call:candidate` both ways as an object, `call:hangup` both ways
//!   with its `reason`: hang-up, declined, cancelled, busy, missed after the ring, a device lost
//!   in a call or while it rings, and an invite that cannot start;
//! - `presence` and `user-status-changed` when a user's first device comes and last goes (the
//!   devices in between counted);
//! - a failed `message` as its ack `{error}` or, without an ack, as the `error` event;
//! - `connection` with the token in the `auth` payload or the query, and a bad or missing token
//!   refused on both transports.
//!
//! Every REST route of the document: `/auth/send-otp`, `/auth/verify-otp-register`,
//! `/auth/send-otp-login`, `/auth/verify-otp-login`, `/auth/login` (phone or e-mail);
//! `GET|POST /messages` (pages by seq), `PATCH|DELETE /messages/:id` (own messages only);
//! `GET|POST /conversations` (direct with its `participantKey`, group); `POST /chat-requests`, `POST /chat-requests/:id/accept`,
//! `POST /contacts/start-chat`; `GET /users`, `GET /users/profile`, `PATCH /users/me`,
//! `POST /contacts/sync`; `/ping` and `/health`. Outputs carry both apps' names (`from`/`sender`,
//! `conversation`/`conversationId`, `text`/`content`, `participants`/`members`,
//! `avatar`/`avatarUrl`, `_id`), receipt cursors as `Map<userId, Date>`, failures as
//! `{error: {code, message}}`. Tokens: Backend1's `{uid}`, and Backend's `{id, sessionId}` behind
//! ACCEPT_LEGACY_SESSION_TOKENS.
//!
//! Readings where the document is silent (also in README.md, "Moving an app over → Seed 003"):
//! - The document names events, not their directions or payloads. `message`, `typing`,
//!   `typing-stopped`, `delivered`, `read_up_to` and the four `call:*` events go both ways;
//!   `message_edited`, `message_deleted`, `presence` and `user-status-changed` are the server's
//!   (the apps edit and delete with `PATCH|DELETE /messages/:id`).
//! - Ids are strings (Mongoose ObjectIds were), dates ISO 8601 strings, `isVideo` a boolean.
//! - Typing and receipt events name the conversation `conversationId` and the user `userId`
//!   (only messages, conversations and users promise both styles); clients may name the
//!   conversation either way.
//! - A callee who hangs up while it rings declines (the document has no reject event): the
//!   caller's `call:hangup` says `reason: "rejected"`.
//! - The token comes in the Socket.IO `auth` payload or `?token=` (the document says only that
//!   a connection requires one). Identity is the token's: a `from`, `sender` or `senderId` in a
//!   payload is ignored.
//! - Acks (the document defines none) carry the canonical result.
//! - "Pagination" is by seq: `before`/`after`/`limit`, answered with `cursors` and `hasMore`.
//! - A chat request's `from` and `to` are its parties as users (`id`, `_id`, `name`, `avatar`,
//!   `avatarUrl`), `fromUserId`/`toUserId` their ids.
//! - A socket without a token may still authenticate (seed 000's `authenticate`); it is told
//!   `error{code: "unauthorized"}` and closed when none comes in time. A bad token is refused
//!   at connect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{code, next_sms, sms_gateway, TestServer, SECRET};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::config::{Config, OtpSenderKind};
use tokio::sync::mpsc;

fn websocket(token: &str) -> Value {
    json!({"query": {"token": token}, "transports": ["websocket"]})
}

fn polling(token: &str) -> Value {
    json!({"query": {"token": token}, "transports": ["polling"]})
}

/// The app's socket: one transport, the token in the handshake (`auth` or the query), and no
/// answers to the acks the server asks for (the apps' handlers take one argument).
fn app(token: &str, transport: &str, in_auth: bool) -> Value {
    let mut opts = if in_auth {
        json!({"auth": {"token": token}})
    } else {
        json!({"query": {"token": token}})
    };
    opts["transports"] = json!([transport]);
    opts["ackEvents"] = json!(false);
    opts
}

fn s(id: i64) -> String {
    id.to_string()
}

fn time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a date: {v}")))
        .unwrap()
}

/// `v[key]` is a string; returns it.
fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// `v[key]` is an ISO 8601 date string.
fn date(v: &Value, key: &str) -> chrono::DateTime<chrono::FixedOffset> {
    assert!(v[key].is_string(), "{key} is not a date string in {v}");
    time(&v[key])
}

/// `v[key]` is null or a string.
fn nullable_string(v: &Value, key: &str) {
    assert!(
        v[key].is_null() || v[key].is_string(),
        "{key} is neither null nor a string in {v}"
    );
}

/// An error body (or an ack): `{error: {code, message}}` with strings.
fn assert_error_body(body: &Value, expected: &str) {
    assert_eq!(code(body), expected, "{body}");
    assert!(body["error"].is_object(), "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// A REST failure: the status and `{error: {code, message}}`.
fn assert_error(body: &Value, status: u16, expected: (u16, &str)) {
    assert_eq!(status, expected.0, "{body}");
    assert_error_body(body, expected.1);
}

/// A server as the apps are served, REST on the backend2 listener.
async fn backend2_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_apps(tweak).await.rest_on("backend2")
}

/// Connects `name` as the app does on `transport` and waits until its session answers (test
/// synchronisation: a canonical `ping`).
async fn connect_app(
    p: &mut Puppet,
    srv: &TestServer,
    name: &str,
    token: &str,
    transport: &str,
    in_auth: bool,
) {
    let connected = p
        .connect_at(
            name,
            srv.addr_of("backend2"),
            app(token, transport, in_auth),
        )
        .await;
    assert_eq!(connected["transport"], transport, "{connected}");
    let pong = p.call(name, "ping", json!([{}])).await;
    assert!(pong[0].get("pong").is_some(), "{pong:?}");
}

/// Waits for `event` on `name` whose payload satisfies `pred`; returns the payload.
async fn event_where(
    p: &mut Puppet,
    name: &str,
    event: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let line = p
        .wait(|v| {
            v["name"] == name && v["type"] == "event" && v["event"] == event && pred(&v["args"][0])
        })
        .await;
    line["args"][0].clone()
}

/// The `call:hangup` of call `call_id` with `reason` on `name`, its fields typed.
async fn hangup(p: &mut Puppet, name: &str, call_id: &str, reason: &str) -> Value {
    let h = event_where(p, name, "call:hangup", |v| {
        v["callId"] == call_id && v["reason"] == reason
    })
    .await;
    assert!(h["callId"].is_string(), "{h}");
    assert!(h["reason"].is_string(), "{h}");
    h
}

/// Both naming styles on one message, with string ids and typed fields.
fn assert_message_in_both_styles(m: &Value, sender: i64, conversation: &str, text: &str) {
    for key in [
        "id",
        "_id",
        "conversationId",
        "conversation",
        "senderId",
        "from",
        "sender",
        "type",
    ] {
        assert!(m[key].is_string(), "{key} is not a string in {m}");
    }
    assert_eq!(m["_id"], m["id"]);
    assert_eq!(m["from"], json!(s(sender)));
    assert_eq!(m["sender"], json!(s(sender)));
    assert_eq!(m["senderId"], json!(s(sender)));
    assert_eq!(m["conversation"], json!(conversation));
    assert_eq!(m["conversationId"], json!(conversation));
    assert!(m["text"].is_string(), "{m}");
    assert!(m["content"].is_string(), "{m}");
    assert_eq!(m["text"], json!(text));
    assert_eq!(m["content"], json!(text));
    assert!(m["seq"].is_i64(), "{m}");
    assert!(m["deleted"].is_boolean(), "{m}");
    date(m, "createdAt");
    nullable_string(m, "editedAt");
    nullable_string(m, "deletedAt");
}

/// A user in both styles: `id`, `uid` and `_id` the same string, `avatar` and `avatarUrl` the
/// same value.
fn assert_user_in_both_styles(u: &Value, id: i64) {
    for key in ["id", "uid", "_id", "name"] {
        assert!(u[key].is_string(), "{key} is not a string in {u}");
    }
    assert_eq!(u["id"], json!(s(id)), "{u}");
    assert_eq!(u["uid"], u["id"]);
    assert_eq!(u["_id"], u["id"]);
    nullable_string(u, "avatar");
    assert_eq!(u["avatar"], u["avatarUrl"], "{u}");
    nullable_string(u, "phone");
    nullable_string(u, "email");
    assert!(u["roles"].is_array(), "{u}");
    assert!(u["banned"].is_boolean(), "{u}");
    nullable_string(u, "lastSeen");
    date(u, "createdAt");
}

/// A conversation in both styles; returns its members.
fn assert_conversation_in_both_styles(c: &Value, id: &str, kind: &str) -> Vec<Value> {
    for key in ["id", "_id", "type"] {
        assert!(c[key].is_string(), "{key} is not a string in {c}");
    }
    assert_eq!(c["id"], json!(id));
    assert_eq!(c["_id"], c["id"]);
    assert_eq!(c["type"], kind);
    nullable_string(c, "title");
    nullable_string(c, "avatarUrl");
    if kind == "direct" {
        assert!(c["participantKey"].is_string(), "{c}");
    } else {
        assert!(c["participantKey"].is_null(), "{c}");
    }
    assert!(c["lastSeq"].is_i64(), "{c}");
    assert!(c["unreadCount"].is_i64(), "{c}");
    assert!(c["deliveredUpTo"].is_object(), "{c}");
    assert!(c["readUpTo"].is_object(), "{c}");
    for map in ["deliveredUpTo", "readUpTo"] {
        for (user, at) in c[map].as_object().unwrap() {
            assert!(user.parse::<i64>().is_ok(), "{map} key {user}");
            time(at);
        }
    }
    date(c, "createdAt");
    nullable_string(c, "lastMessageAt");
    assert!(c["members"].is_array(), "{c}");
    assert_eq!(c["participants"], c["members"]);
    let members = c["members"].as_array().unwrap().clone();
    for m in &members {
        for key in ["userId", "id", "_id", "name", "role"] {
            assert!(m[key].is_string(), "{key} is not a string in {m}");
        }
        assert_eq!(m["id"], m["userId"]);
        assert_eq!(m["_id"], m["userId"]);
        nullable_string(m, "avatar");
        assert_eq!(m["avatar"], m["avatarUrl"]);
        assert!(m["deliveredUpTo"].is_i64(), "{m}");
        assert!(m["readUpTo"].is_i64(), "{m}");
        date(m, "joinedAt");
    }
    members
}

/// A token pair as every login answers it, for `user` (its id returned).
fn assert_token_pair(body: &Value) -> i64 {
    for key in ["accessToken", "token", "refreshToken", "sessionId"] {
        assert!(body[key].is_string(), "{key} is not a string in {body}");
    }
    assert_eq!(body["token"], body["accessToken"]);
    assert!(body["expiresIn"].is_u64(), "{body}");
    let id: i64 = string(&body["user"], "id").parse().unwrap();
    assert_user_in_both_styles(&body["user"], id);
    id
}

fn legacy_token(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// The code the gateway got next.
async fn next_code(rx: &mut mpsc::UnboundedReceiver<Value>) -> String {
    string(&next_sms(rx).await, "code").to_owned()
}

#[actix_web::test]
async fn auth_routes_answer_tokens_and_the_user_in_both_styles() {
    let (url, mut sms) = sms_gateway();
    let srv = backend2_server(|c| {
        c.otp_sender = OtpSenderKind::Webhook;
        c.otp_webhook_url = url;
    })
    .await;
    let phone = "+14155550142";

    // Registration by OTP.
    let (status, sent) = srv
        .post("/auth/send-otp", json!({"phone": phone}), None)
        .await;
    assert_eq!(status, 200, "{sent}");
    assert!(sent["success"].is_boolean(), "{sent}");
    assert_eq!(sent["success"], true);
    assert!(sent["message"].is_string(), "{sent}");
    assert!(sent["expiresIn"].is_u64(), "{sent}");
    let otp = next_code(&mut sms).await;
    let wrong: String = otp
        .chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                char::from(c as u8 + 1)
            }
        })
        .collect();
    let (status, body) = srv
        .post(
            "/auth/verify-otp-register",
            json!({"phone": phone, "otp": wrong, "name": "Dana"}),
            None,
        )
        .await;
    assert_error(&body, status, (400, "otp_invalid"));
    let (status, reg) = srv
        .post(
            "/auth/verify-otp-register",
            json!({"phone": phone, "otp": otp, "name": "Dana", "email": "dana@example.com", "password": "dana-password-1"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    let dana = assert_token_pair(&reg);
    assert_eq!(reg["user"]["phone"], phone);
    assert_eq!(reg["user"]["name"], "Dana");
    assert!(reg["user"]["avatar"].is_null());

    // Login by OTP.
    let (status, sent) = srv
        .post("/auth/send-otp-login", json!({"phone": phone}), None)
        .await;
    assert_eq!(status, 200, "{sent}");
    assert!(sent["expiresIn"].is_u64(), "{sent}");
    let otp = next_code(&mut sms).await;
    let (status, login) = srv
        .post(
            "/auth/verify-otp-login",
            json!({"phone": phone, "otp": otp}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(assert_token_pair(&login), dana);
    let (status, body) = srv
        .post(
            "/auth/send-otp-login",
            json!({"phone": "+14155550143"}),
            None,
        )
        .await;
    assert_error(&body, status, (404, "not_found"));

    // Password login.
    let (status, pw) = srv
        .post(
            "/auth/login",
            json!({"phone": phone, "password": "dana-password-1"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{pw}");
    assert_eq!(assert_token_pair(&pw), dana);
    // The Electron app logs in by e-mail.
    let (status, by_email) = srv
        .post(
            "/auth/login",
            json!({"email": "dana@example.com", "password": "dana-password-1"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{by_email}");
    assert_eq!(assert_token_pair(&by_email), dana);
    assert_eq!(by_email["user"]["email"], "dana@example.com");
    let (status, body) = srv
        .post(
            "/auth/login",
            json!({"phone": phone, "password": "not-her-password"}),
            None,
        )
        .await;
    assert_error(&body, status, (401, "invalid_credentials"));

    // The tokens open the app's REST routes and its socket, in both transports.
    let (status, me) = srv.get("/users/profile", login["token"].as_str()).await;
    assert_eq!(status, 200, "{me}");
    assert_user_in_both_styles(&me["user"], dana);
    let mut p = Puppet::start(srv.addr_of("backend2"));
    connect_app(
        &mut p,
        &srv,
        "otp",
        login["token"].as_str().unwrap(),
        "websocket",
        true,
    )
    .await;
    connect_app(
        &mut p,
        &srv,
        "password",
        pw["accessToken"].as_str().unwrap(),
        "polling",
        false,
    )
    .await;
}

#[actix_web::test]
async fn backend1_uid_tokens_are_accepted_on_rest_and_both_transports() {
    let srv = backend2_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let exp = chrono::Utc::now().timestamp() + 600;
    let simple = |user: i64| {
        legacy_token(
            json!({"uid": s(user), "iat": exp - 700, "exp": exp}),
            SECRET.as_bytes(),
        )
    };
    let (status, me) = srv.get("/users/profile", Some(&simple(alice))).await;
    assert_eq!(status, 200, "{me}");
    assert_user_in_both_styles(&me["user"], alice);
    let mut p = Puppet::start(srv.addr_of("backend2"));
    connect_app(&mut p, &srv, "alice", &simple(alice), "websocket", true).await;
    connect_app(&mut p, &srv, "bob", &simple(bob), "polling", false).await;
    let ack = p
        .call(
            "alice",
            "message",
            json!([{"to": s(bob), "text": "signed by Backend1"}]),
        )
        .await;
    let conv = string(&ack[0], "conversationId").to_owned();
    let m = p.event("bob", "message").await;
    assert_message_in_both_styles(&m, alice, &conv, "signed by Backend1");
}

/// `user`'s presence as `name` sees it (the canonical `presence:subscribe` answer).
async fn presence_of(p: &mut Puppet, name: &str, user: i64) -> Value {
    let ack = p
        .call(name, "presence:subscribe", json!([{"userIds": [s(user)]}]))
        .await;
    let status = ack[0]["presence"][0].clone();
    assert_eq!(string(&status, "userId"), s(user));
    assert!(status["devices"].is_i64(), "{status}");
    status
}

/// The whole socket side of the document on one transport: Alice's app, and Bob on his phone
/// and his desktop.
async fn socket_flow(transport: &str) {
    let srv = backend2_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));
    // The pair's conversation exists before they connect (presence goes to those who share one).
    let (status, created) = srv
        .post(
            "/conversations",
            json!({"participants": [s(bob)]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let conv = string(&created["conversation"], "id").to_owned();
    let (status, other) = srv
        .post(
            "/conversations",
            json!({"participants": [s(carol)]}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 201, "{other}");
    let not_alices = string(&other["conversation"], "id").to_owned();

    let mut p = Puppet::start(srv.addr_of("backend2"));
    connect_app(&mut p, &srv, "alice", &ta, transport, true).await;
    connect_app(&mut p, &srv, "bob", &tb, transport, false).await;

    // presence / user-status-changed: Bob's first device.
    let online = p.event("alice", "presence").await;
    assert_eq!(string(&online, "userId"), s(bob));
    assert!(online["online"].is_boolean(), "{online}");
    assert_eq!(online["online"], true);
    assert_eq!(string(&online, "status"), "online");
    assert!(online["devices"].is_i64(), "{online}");
    assert_eq!(online["devices"], 1);
    assert!(online["lastSeen"].is_null(), "{online}");
    let changed = p.event("alice", "user-status-changed").await;
    assert_eq!(string(&changed, "userId"), s(bob));
    assert_eq!(string(&changed, "status"), "online");
    assert_eq!(changed["online"], true);
    connect_app(&mut p, &srv, "bob-desktop", &tb, transport, true).await;

    // message in, Backend1 style (to a user, `text`), with a forged sender; every device of
    // the recipient gets it in both styles.
    let ack = p
        .call(
            "alice",
            "message",
            json!([{"to": s(bob), "text": "hi bob", "from": s(carol), "sender": s(carol), "senderId": s(carol)}]),
        )
        .await;
    let first = ack[0].clone();
    assert_eq!(string(&first, "senderId"), s(alice), "{first}");
    assert_eq!(string(&first, "conversationId"), conv);
    let first_id = string(&first, "id").to_owned();
    let mut first_at = String::new();
    for device in ["bob", "bob-desktop"] {
        let m = p.event(device, "message").await;
        assert_message_in_both_styles(&m, alice, &conv, "hi bob");
        assert_eq!(m["_id"], json!(first_id));
        first_at = string(&m, "createdAt").to_owned();
    }
    // Backend style (`conversation`, `content`), emitted without an ack as the app does: the
    // sender's other device gets it too.
    p.emit(
        "bob-desktop",
        "message",
        json!([{"conversation": conv, "content": "hi alice"}]),
    );
    let reply = p.event("alice", "message").await;
    assert_message_in_both_styles(&reply, bob, &conv, "hi alice");
    let on_phone = p.event("bob", "message").await;
    assert_message_in_both_styles(&on_phone, bob, &conv, "hi alice");
    assert_eq!(on_phone["_id"], reply["_id"]);
    // `conversationId` with `text`.
    p.emit(
        "bob",
        "message",
        json!([{"conversationId": conv, "text": "are you there?"}]),
    );
    let last = p.event("alice", "message").await;
    assert_message_in_both_styles(&last, bob, &conv, "are you there?");
    assert_eq!(p.event("bob-desktop", "message").await["_id"], last["_id"]);
    let last_at = string(&last, "createdAt").to_owned();

    // A message nobody may send: the ack says why; without an ack, the `error` event does.
    let refused = p
        .call(
            "alice",
            "message",
            json!([{"conversation": not_alices, "text": "let me in"}]),
        )
        .await;
    assert_error_body(&refused[0], "forbidden");
    p.emit(
        "alice",
        "message",
        json!([{"conversation": not_alices, "text": "let me in"}]),
    );
    let error = p.event("alice", "error").await;
    assert_eq!(string(&error, "code"), "forbidden");
    assert!(error["message"].is_string(), "{error}");

    // delivered / read_up_to: time cursors in, time cursors out.
    p.emit(
        "alice",
        "delivered",
        json!([{"conversationId": conv, "deliveredUpTo": last_at}]),
    );
    for device in ["bob", "bob-desktop"] {
        let d = p.event(device, "delivered").await;
        assert_eq!(string(&d, "conversationId"), conv);
        assert_eq!(string(&d, "userId"), s(alice));
        assert_eq!(date(&d, "deliveredUpTo"), time(&json!(last_at)));
        assert!(d["upTo"].is_i64(), "{d}");
        assert_eq!(d["upTo"], 3);
    }
    p.emit(
        "bob-desktop",
        "delivered",
        json!([{"conversation": conv, "deliveredUpTo": last_at}]),
    );
    let d = p.event("alice", "delivered").await;
    assert_eq!(string(&d, "conversationId"), conv);
    assert_eq!(string(&d, "userId"), s(bob));
    assert_eq!(date(&d, "deliveredUpTo"), time(&json!(last_at)));
    assert_eq!(d["upTo"], 3);
    p.emit(
        "bob",
        "read_up_to",
        json!([{"conversation": conv, "readUpTo": first_at}]),
    );
    let r = p.event("alice", "read_up_to").await;
    assert_eq!(string(&r, "conversationId"), conv);
    assert_eq!(string(&r, "userId"), s(bob));
    assert_eq!(date(&r, "readUpTo"), time(&json!(first_at)));
    assert_eq!(r["upTo"], 1);
    p.emit(
        "alice",
        "read_up_to",
        json!([{"conversationId": conv, "readUpTo": last_at}]),
    );
    let r = p.event("bob-desktop", "read_up_to").await;
    assert_eq!(string(&r, "userId"), s(alice));
    assert_eq!(date(&r, "readUpTo"), time(&json!(last_at)));

    // typing / typing-stopped, both ways.
    p.emit("alice", "typing", json!([{"conversationId": conv}]));
    for device in ["bob", "bob-desktop"] {
        let t = p.event(device, "typing").await;
        assert_eq!(string(&t, "conversationId"), conv);
        assert_eq!(string(&t, "userId"), s(alice));
    }
    p.emit("alice", "typing-stopped", json!([{"conversation": conv}]));
    for device in ["bob", "bob-desktop"] {
        let t = p.event(device, "typing-stopped").await;
        assert_eq!(string(&t, "conversationId"), conv);
        assert_eq!(string(&t, "userId"), s(alice));
    }
    p.emit("bob", "typing", json!([{"conversation": conv}]));
    let t = p.event("alice", "typing").await;
    assert_eq!(
        (string(&t, "userId"), string(&t, "conversationId")),
        (s(bob).as_str(), conv.as_str())
    );
    p.emit("bob", "typing-stopped", json!([{"conversationId": conv}]));
    let t = p.event("alice", "typing-stopped").await;
    assert_eq!(string(&t, "userId"), s(bob));

    // message_edited / message_deleted: the REST edit and delete reach every device.
    let (status, edited) = srv
        .call(
            "PATCH",
            &format!("/messages/{first_id}"),
            Some(json!({"text": "hi Bob"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    for device in ["bob", "bob-desktop"] {
        let m = p.event(device, "message_edited").await;
        assert_message_in_both_styles(&m, alice, &conv, "hi Bob");
        assert_eq!(m["_id"], json!(first_id));
        date(&m, "editedAt");
    }
    let (status, _) = srv
        .call("DELETE", &format!("/messages/{first_id}"), None, Some(&ta))
        .await;
    assert_eq!(status, 200);
    for device in ["bob", "bob-desktop"] {
        let m = p.event(device, "message_deleted").await;
        assert_message_in_both_styles(&m, alice, &conv, "");
        assert_eq!(m["_id"], json!(first_id));
        assert_eq!(m["deleted"], true);
        date(&m, "deletedAt");
    }

    // Calls: the invite rings every device of Bob's.
    let offer = json!({"type": "offer", "sdp": "v=0 offer"});
    p.emit(
        "alice",
        "call:invite",
        json!([{"to": s(bob), "isVideo": true, "offer": offer}]),
    );
    let mut call_id = String::new();
    for device in ["bob", "bob-desktop"] {
        let invite = p.event(device, "call:invite").await;
        call_id = string(&invite, "callId").to_owned();
        assert_eq!(string(&invite, "from"), s(alice));
        assert_eq!(string(&invite, "fromName"), "Alice");
        assert!(invite["isVideo"].is_boolean(), "{invite}");
        assert_eq!(invite["isVideo"], true);
        assert_eq!(string(&invite, "callType"), "video");
        assert!(invite["offer"].is_object(), "{invite}");
        assert_eq!(invite["offer"], offer);
        assert_eq!(invite["sdp"], offer);
        assert!(invite["iceServers"].is_array(), "{invite}");
    }
    // The desktop answers; the caller gets the SDP, the phone stops ringing.
    let answer = json!({"type": "answer", "sdp": "v=0 answer"});
    p.emit(
        "bob-desktop",
        "call:answer",
        json!([{"callId": call_id, "answer": answer}]),
    );
    let answered = p.event("alice", "call:answer").await;
    assert_eq!(string(&answered, "callId"), call_id);
    assert!(answered["answer"].is_object(), "{answered}");
    assert_eq!(answered["answer"], answer);
    assert_eq!(answered["sdp"], answer);
    assert_eq!(string(&answered, "by"), s(bob));
    hangup(&mut p, "bob", &call_id, "answered_elsewhere").await;
    // Candidates both ways, an `RTCIceCandidateInit` object under `candidate`.
    for (from, to, user, line) in [
        ("alice", "bob-desktop", alice, 0),
        ("bob-desktop", "alice", bob, 1),
    ] {
        let init = json!({"candidate": format!("candidate:{line} 1 udp 1 10.0.0.{line} 9 typ host"), "sdpMid": s(line), "sdpMLineIndex": line});
        p.emit(
            from,
            "call:candidate",
            json!([{"callId": call_id, "candidate": init}]),
        );
        let c = p.event(to, "call:candidate").await;
        assert_eq!(string(&c, "callId"), call_id);
        assert_eq!(string(&c, "from"), s(user));
        assert!(c["candidate"].is_object(), "{c}");
        assert!(c["candidate"]["candidate"].is_string(), "{c}");
        assert!(c["candidate"]["sdpMid"].is_string(), "{c}");
        assert!(c["candidate"]["sdpMLineIndex"].is_i64(), "{c}");
        assert_eq!(c["candidate"], init);
    }
    // Alice hangs up: everyone's app hears it, with the call's duration.
    p.emit("alice", "call:hangup", json!([{"callId": call_id}]));
    for device in ["bob-desktop", "bob", "alice"] {
        let h = hangup(&mut p, device, &call_id, "hangup").await;
        assert!(h["duration"].is_i64(), "{h}");
        assert_eq!(string(&h, "endedBy"), s(alice));
    }

    // Presence counts devices: the phone leaving keeps Bob online; the desktop leaving does
    // not. (Bounded polling of the canonical `presence:subscribe` answer.)
    assert_eq!(presence_of(&mut p, "alice", bob).await["devices"], 2);
    p.close("bob");
    let mut status = presence_of(&mut p, "alice", bob).await;
    for _ in 0..100 {
        if status["devices"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = presence_of(&mut p, "alice", bob).await;
    }
    assert_eq!(status["devices"], 1, "{status}");
    assert_eq!(status["online"], true, "{status}");
    p.close("bob-desktop");
    let offline = p.event("alice", "presence").await;
    assert_eq!(string(&offline, "userId"), s(bob));
    assert_eq!(offline["online"], false);
    assert_eq!(string(&offline, "status"), "offline");
    assert_eq!(offline["devices"], 0);
    date(&offline, "lastSeen");
    let changed = p.event("alice", "user-status-changed").await;
    assert_eq!(string(&changed, "userId"), s(bob));
    assert_eq!(string(&changed, "status"), "offline");
    assert!(
        !p.unconsumed("alice").iter().any(|e| e == "presence"),
        "the phone leaving announced nothing: {:?}",
        p.unconsumed("alice")
    );
}

#[actix_web::test]
async fn the_apps_chat_and_call_over_websocket() {
    socket_flow("websocket").await;
}

#[actix_web::test]
async fn the_apps_chat_and_call_over_polling() {
    socket_flow("polling").await;
}

/// How calls end besides a hang-up, on one transport: declined, cancelled, busy, a device lost
/// in a call and a caller lost while it rings.
async fn call_outcomes(transport: &str) {
    let srv = backend2_server(|c| c.call_reconnect_grace = Duration::from_secs(1)).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("backend2"));
    for (name, user) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        connect_app(&mut p, &srv, name, &srv.token_for(user), transport, true).await;
    }
    let offer = json!({"type": "offer", "sdp": "o"});
    let invite = |p: &mut Puppet, from: &str, to: i64, video: bool| {
        p.emit(
            from,
            "call:invite",
            json!([{"to": s(to), "isVideo": video, "offer": offer}]),
        );
    };

    // Declined: the callee hangs up while it rings.
    invite(&mut p, "alice", bob, false);
    let ring = p.event("bob", "call:invite").await;
    assert_eq!(ring["isVideo"], false);
    assert_eq!(ring["callType"], "audio");
    let id = string(&ring, "callId").to_owned();
    p.emit("bob", "call:hangup", json!([{"callId": id}]));
    hangup(&mut p, "alice", &id, "rejected").await;

    // Cancelled: the caller hangs up while it rings.
    invite(&mut p, "alice", bob, true);
    let id = string(&p.event("bob", "call:invite").await, "callId").to_owned();
    p.emit("alice", "call:hangup", json!([{"callId": id}]));
    hangup(&mut p, "bob", &id, "cancelled").await;
    hangup(&mut p, "alice", &id, "cancelled").await;

    // Busy: Carol calls Bob while he talks to Alice.
    invite(&mut p, "alice", bob, true);
    let id = string(&p.event("bob", "call:invite").await, "callId").to_owned();
    p.emit(
        "bob",
        "call:answer",
        json!([{"callId": id, "answer": {"type": "answer", "sdp": "a"}}]),
    );
    p.event("alice", "call:answer").await;
    invite(&mut p, "carol", bob, false);
    let busy = event_where(&mut p, "carol", "call:hangup", |v| v["reason"] == "busy").await;
    assert!(busy["callId"].is_string(), "{busy}");
    assert_ne!(busy["callId"], json!(id));

    // A device lost in a call: after the reconnect grace, the other party's call ends.
    p.close("bob");
    hangup(&mut p, "alice", &id, "network_error").await;

    // A caller lost while it rings: the callee stops ringing.
    invite(&mut p, "carol", alice, false);
    let id = string(&p.event("alice", "call:invite").await, "callId").to_owned();
    p.close("carol");
    hangup(&mut p, "alice", &id, "cancelled").await;
}

#[actix_web::test]
async fn calls_end_in_the_apps_words_over_websocket() {
    call_outcomes("websocket").await;
}

#[actix_web::test]
async fn calls_end_in_the_apps_words_over_polling() {
    call_outcomes("polling").await;
}

#[actix_web::test]
async fn an_unanswered_invite_is_missed_after_the_ring() {
    // The document's call timeout (40 seconds) is the default ring.
    assert_eq!(Config::default().ring_timeout, Duration::from_secs(40));
    let srv = backend2_server(|c| c.ring_timeout = Duration::from_secs(1)).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("backend2"));
    connect_app(
        &mut p,
        &srv,
        "alice",
        &srv.token_for(alice),
        "websocket",
        true,
    )
    .await;
    connect_app(&mut p, &srv, "bob", &srv.token_for(bob), "polling", false).await;
    p.emit(
        "alice",
        "call:invite",
        json!([{"to": s(bob), "isVideo": false, "offer": {"type": "offer", "sdp": "o"}}]),
    );
    let id = string(&p.event("bob", "call:invite").await, "callId").to_owned();
    hangup(&mut p, "bob", &id, "missed").await;
    hangup(&mut p, "alice", &id, "missed").await;
}

#[actix_web::test]
async fn rest_messages_conversations_and_users_carry_both_naming_styles() {
    let srv = backend2_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));

    // Backend1 style: to a user, with `text`; a sender in the body is ignored.
    let (status, sent) = srv
        .post(
            "/messages",
            json!({"to": s(bob), "text": "hi bob", "from": s(carol), "sender": s(carol)}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert!(sent["success"].is_boolean(), "{sent}");
    let conv = sent["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_message_in_both_styles(&sent["message"], alice, &conv, "hi bob");
    // Backend style: to a conversation, with `content`.
    let (status, sent2) = srv
        .post(
            "/messages",
            json!({"conversation": conv, "content": "hi alice"}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 201, "{sent2}");
    assert_message_in_both_styles(&sent2["message"], bob, &conv, "hi alice");
    let (status, sent3) = srv
        .post(
            "/messages",
            json!({"conversationId": conv, "text": "how are you?"}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 201, "{sent3}");
    assert_message_in_both_styles(&sent3["message"], bob, &conv, "how are you?");

    // GET /messages, newest page first, then older by seq.
    let (status, page) = srv
        .get(
            &format!("/messages?conversationId={conv}&limit=2"),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(string(&page, "conversationId"), conv);
    assert!(page["hasMore"].is_boolean(), "{page}");
    assert_eq!(page["hasMore"], true);
    assert!(page["cursors"]["before"].is_i64(), "{page}");
    assert!(page["cursors"]["after"].is_i64(), "{page}");
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_message_in_both_styles(&messages[0], bob, &conv, "hi alice");
    assert_message_in_both_styles(&messages[1], bob, &conv, "how are you?");
    let before = page["cursors"]["before"].as_i64().unwrap();
    let (status, older) = srv
        .get(
            &format!("/messages?conversation={conv}&before={before}&limit=2"),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(older["hasMore"], false);
    assert!(older["cursors"]["before"].is_null(), "{older}");
    let messages = older["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_message_in_both_styles(&messages[0], alice, &conv, "hi bob");

    // PATCH / DELETE /messages/:id: own messages only.
    let id = sent["message"]["id"].as_str().unwrap();
    let (status, body) = srv
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"text": "not mine"})),
            Some(&tb),
        )
        .await;
    assert_error(&body, status, (403, "forbidden"));
    let (status, edited) = srv
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"text": "hi Bob"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["success"], true);
    assert_message_in_both_styles(&edited["message"], alice, &conv, "hi Bob");
    date(&edited["message"], "editedAt");
    let (status, edited) = srv
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"content": "Hi Bob"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_message_in_both_styles(&edited["message"], alice, &conv, "Hi Bob");
    let (status, body) = srv
        .call("DELETE", &format!("/messages/{id}"), None, Some(&tb))
        .await;
    assert_error(&body, status, (403, "forbidden"));
    let (status, deleted) = srv
        .call("DELETE", &format!("/messages/{id}"), None, Some(&ta))
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["success"], true);
    assert_message_in_both_styles(&deleted["message"], alice, &conv, "");
    assert_eq!(deleted["message"]["_id"], json!(id));
    assert_eq!(deleted["message"]["deleted"], true);
    date(&deleted["message"], "deletedAt");
    let (status, body) = srv
        .call("DELETE", "/messages/987654321", None, Some(&ta))
        .await;
    assert_error(&body, status, (404, "not_found"));

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
    assert!(list["nextCursor"].is_null(), "{list}");
    let c = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == conv.as_str())
        .unwrap()
        .clone();
    let members = assert_conversation_in_both_styles(&c, &conv, "direct");
    assert_eq!(members.len(), 2);
    let b = members
        .iter()
        .find(|m| m["userId"] == s(bob).as_str())
        .unwrap();
    assert_eq!(b["name"], "Bob");
    assert_eq!(b["avatar"], "https://cdn.example.com/b.png");
    assert_eq!(b["avatarUrl"], "https://cdn.example.com/b.png");
    assert_message_in_both_styles(&c["lastMessage"], bob, &conv, "how are you?");

    // Users: `avatar` and `avatarUrl`, `_id`, string ids.
    let (status, me) = srv
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"avatar": "https://cdn.example.com/a.png", "name": "Alice A."})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["success"], true);
    let (status, profile) = srv.get("/users/profile", Some(&ta)).await;
    assert_eq!(status, 200, "{profile}");
    for user in [&me["user"], &profile["user"]] {
        assert_user_in_both_styles(user, alice);
        assert_eq!(user["avatar"], "https://cdn.example.com/a.png");
        assert_eq!(user["name"], "Alice A.");
        assert_eq!(user["email"], "alice@example.com");
    }
    let (status, me) = srv
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"avatar": null})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert!(me["user"]["avatar"].is_null() && me["user"]["avatarUrl"].is_null());
    let (status, found) = srv.get("/users?q=Alice", Some(&tb)).await;
    assert_eq!(status, 200, "{found}");
    let users = found["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{found}");
    assert_user_in_both_styles(&users[0], alice);
    // Other users' e-mail addresses are not shown.
    assert!(users[0]["email"].is_null(), "{found}");
    let (status, all) = srv.get("/users?limit=2", Some(&tb)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["users"].as_array().unwrap().len(), 2);
    assert!(all["nextCursor"].is_string(), "{all}");

    // Failures are `{error: {code, message}}`.
    let (status, body) = srv.get("/messages", Some(&ta)).await;
    assert_error(&body, status, (400, "validation_failed"));
    let (status, body) = srv.get("/users/profile", None).await;
    assert_error(&body, status, (401, "missing_token"));
    let (status, body) = srv
        .post("/messages", json!({"text": "to nobody"}), Some(&ta))
        .await;
    assert_error(&body, status, (400, "validation_failed"));
}

#[actix_web::test]
async fn conversations_are_created_in_either_apps_words() {
    let srv = backend2_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let ta = srv.token_for(alice);

    // Backend1: `participants`, a direct conversation keyed by the pair; the second time the
    // same one (200).
    let (status, created) = srv
        .post(
            "/conversations",
            json!({"participants": [s(bob)]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["success"], true);
    let direct = string(&created["conversation"], "id").to_owned();
    let members = assert_conversation_in_both_styles(&created["conversation"], &direct, "direct");
    assert_eq!(members.len(), 2);
    let key = string(&created["conversation"], "participantKey").to_owned();
    let (status, again) = srv
        .post(
            "/conversations",
            json!({"type": "direct", "members": [alice]}),
            Some(&srv.token_for(bob)),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["conversation"]["id"], json!(direct));
    assert_eq!(again["conversation"]["participantKey"], json!(key));

    // Backend: `members`, a group with its title.
    let (status, group) = srv
        .post(
            "/conversations",
            json!({"type": "group", "name": "Trip", "members": [s(bob), s(carol)]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let id = string(&group["conversation"], "id").to_owned();
    let members = assert_conversation_in_both_styles(&group["conversation"], &id, "group");
    assert_eq!(group["conversation"]["title"], "Trip");
    let mut ids: Vec<String> = members
        .iter()
        .map(|m| string(m, "userId").to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![s(alice), s(bob), s(carol)];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(group["conversation"]["lastMessage"].is_null());

    let (status, list) = srv.get("/conversations?limit=1", Some(&ta)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    assert!(list["nextCursor"].is_string(), "{list}");
    let (status, body) = srv
        .post("/conversations", json!({"type": "direct"}), Some(&ta))
        .await;
    assert_error(&body, status, (400, "validation_failed"));
}

#[actix_web::test]
async fn chat_requests_start_chat_and_contact_sync() {
    let srv = backend2_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut conn = srv.db.conn();
    let bob =
        switchboard::auth::create_user(&mut conn, "Bob", Some("+14155550123"), None, None, vec![])
            .unwrap()
            .id;
    let carol = switchboard::auth::create_user(
        &mut conn,
        "Carol",
        Some("+442079460958"),
        None,
        None,
        vec![],
    )
    .unwrap()
    .id;
    drop(conn);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));
    let (status, _) = srv
        .call(
            "PATCH",
            "/users/me",
            Some(json!({"avatar": "https://cdn.example.com/b.png"})),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 200);

    // POST /chat-requests: the sender is the token's user whatever the body says.
    let (status, sent) = srv
        .post(
            "/chat-requests",
            json!({"to": s(bob), "message": "Hi Bob!", "from": s(carol)}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["success"], true);
    assert!(sent["created"].is_boolean(), "{sent}");
    let req = &sent["request"];
    let id = string(req, "id").to_owned();
    assert_eq!(string(req, "fromUserId"), s(alice));
    assert_eq!(string(req, "toUserId"), s(bob));
    assert_eq!(string(req, "status"), "pending");
    assert_eq!(string(req, "message"), "Hi Bob!");
    assert!(req["conversationId"].is_null(), "{req}");
    date(req, "createdAt");
    assert!(req["respondedAt"].is_null(), "{req}");
    assert_eq!(string(req, "_id"), id);
    // Both parties as users: `id` and `_id`, `name`, `avatar` and `avatarUrl`.
    for (party, user, name, avatar) in [
        (&req["from"], alice, "Alice", Value::Null),
        (
            &req["to"],
            bob,
            "Bob",
            json!("https://cdn.example.com/b.png"),
        ),
    ] {
        assert!(party.is_object(), "{req}");
        assert_eq!(string(party, "id"), s(user));
        assert_eq!(string(party, "_id"), s(user));
        assert_eq!(string(party, "name"), name);
        nullable_string(party, "avatar");
        assert_eq!(party["avatar"], avatar, "{party}");
        assert_eq!(party["avatarUrl"], avatar, "{party}");
    }

    // POST /chat-requests/:id/accept: only the recipient; the direct conversation opens.
    let (status, body) = srv
        .post(&format!("/chat-requests/{id}/accept"), json!({}), Some(&ta))
        .await;
    assert_error(&body, status, (403, "forbidden"));
    let (status, accepted) = srv
        .post(&format!("/chat-requests/{id}/accept"), json!({}), Some(&tb))
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["success"], true);
    assert_eq!(string(&accepted["request"], "_id"), id);
    assert_eq!(string(&accepted["request"], "status"), "accepted");
    date(&accepted["request"], "respondedAt");
    let conv = string(&accepted["conversation"], "id").to_owned();
    assert_eq!(string(&accepted["request"], "conversationId"), conv);
    assert_conversation_in_both_styles(&accepted["conversation"], &conv, "direct");

    // POST /contacts/start-chat: by phone or by user id; the existing conversation is 200.
    let (status, started) = srv
        .post(
            "/contacts/start-chat",
            json!({"phone": "+1 415-555-0123"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["success"], true);
    assert_eq!(started["created"], false);
    assert_conversation_in_both_styles(&started["conversation"], &conv, "direct");
    let (status, started) = srv
        .post(
            "/contacts/start-chat",
            json!({"userId": s(carol)}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    assert!(started["created"].is_boolean());
    assert_eq!(started["created"], true);
    let with_carol = string(&started["conversation"], "id").to_owned();
    let members =
        assert_conversation_in_both_styles(&started["conversation"], &with_carol, "direct");
    assert!(members.iter().any(|m| m["userId"] == s(carol).as_str()));
    let (status, body) = srv
        .post(
            "/contacts/start-chat",
            json!({"phone": "+14155550999"}),
            Some(&ta),
        )
        .await;
    assert_error(&body, status, (404, "not_found"));

    // POST /contacts/sync: the registered numbers come back as users in both styles.
    let (status, synced) = srv
        .post(
            "/contacts/sync",
            json!({"contacts": [
                "+1 (415) 555-0123",
                {"phone": "0044 20 7946 0958", "name": "Carol from work"},
                "+14155550999",
                "not a number"
            ]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{synced}");
    assert_eq!(synced["success"], true);
    assert!(synced["matched"].is_i64(), "{synced}");
    assert_eq!(synced["matched"], 2);
    assert!(synced["stored"].is_i64(), "{synced}");
    assert_eq!(synced["stored"], 3);
    assert_eq!(synced["invalid"], json!(["not a number"]));
    let users = synced["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    for u in users {
        let id: i64 = string(u, "id").parse().unwrap();
        assert!(id == bob || id == carol, "{u}");
        assert_user_in_both_styles(u, id);
        assert!(u["phone"].is_string(), "{u}");
    }
}

#[actix_web::test]
async fn health_endpoints_answer_on_the_app_listener() {
    let srv = backend2_server(|_| {}).await;
    let (status, ping) = srv.get("/ping", None).await;
    assert_eq!((status, ping["text"].as_str()), (200, Some("pong")));
    let (status, health) = srv.get("/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(string(&health, "status"), "ok");
    assert_eq!(string(&health, "db"), "ok");
    assert!(health["uptime"].is_f64(), "{health}");
}

#[actix_web::test]
async fn receipt_cursors_are_time_maps_keyed_by_user_on_conversations() {
    let srv = backend2_server(|_| {}).await;
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
        assert_conversation_in_both_styles(&c, &conv, "group");
        assert_eq!(time(&c["deliveredUpTo"][s(bob)]), time(&json!(stamps[1])));
        assert_eq!(time(&c["readUpTo"][s(bob)]), time(&json!(stamps[0])));
        // Carol has received nothing: no entry, not a zero.
        assert!(c["deliveredUpTo"].get(s(carol)).is_none(), "{c}");
        assert!(c["readUpTo"].get(s(carol)).is_none(), "{c}");
    }
}

#[actix_web::test]
async fn old_backend_session_tokens_are_accepted_only_when_enabled() {
    let off = backend2_server(|_| {}).await;
    let alice = off.create_user("Alice", "alice@example.com", None, &[]);
    let exp = chrono::Utc::now().timestamp() + 600;
    let old = legacy_token(
        json!({"id": s(alice), "sessionId": "65a1f0c2e4b0a1b2c3d4e5f6", "iat": exp - 700, "exp": exp}),
        SECRET.as_bytes(),
    );
    let (status, body) = off.get("/users/profile", Some(&old)).await;
    assert_error(&body, status, (401, "invalid_token"));
    drop(off);

    let on = backend2_server(|c| c.accept_legacy_session_tokens = true).await;
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
    assert_user_in_both_styles(&body["user"], alice);
    // The same expiry and signature rules as any token.
    let expired = old(
        alice,
        chrono::Utc::now().timestamp() - 3600,
        SECRET.as_bytes(),
    );
    let (status, body) = on.get("/users/profile", Some(&expired)).await;
    assert_error(&body, status, (401, "token_expired"));
    let forged = old(alice, exp, b"not-the-shared-secret-not-the-shared");
    let (status, body) = on.get("/users/profile", Some(&forged)).await;
    assert_error(&body, status, (401, "invalid_token"));
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
    assert_message_in_both_styles(
        &m,
        alice,
        string(&ack[0], "conversationId"),
        "still signed in",
    );
    assert_eq!(m["_id"], ack[0]["id"]);
}

#[actix_web::test]
async fn a_connection_without_a_valid_token_is_refused_on_both_transports() {
    let srv = backend2_server(|c| c.socketio_auth_timeout = Duration::from_secs(1)).await;
    let mut p = Puppet::start(srv.addr_of("backend2"));
    for transport in ["websocket", "polling"] {
        // A bad token (in the `auth` payload on one transport, the query on the other):
        // refused at connect, as Socket.IO middleware refuses (`err.message`).
        let bad = format!("bad-{transport}");
        p.open(
            &bad,
            app("not-a-token", transport, transport == "websocket"),
        );
        let err = p
            .wait(|v| {
                v["name"] == bad.as_str()
                    && (v["type"] == "connect_error" || v["type"] == "connect")
            })
            .await;
        assert_eq!(err["type"], "connect_error", "{err}");
        assert_eq!(err["message"], "Unauthorized", "{err}");
        // No token: the socket may still send one (seed 000's `authenticate`); when none comes
        // within SOCKETIO_AUTH_TIMEOUT_MS it is told why and closed.
        let none = format!("none-{transport}");
        p.open(&none, json!({"transports": [transport]}));
        let err = event_where(&mut p, &none, "error", |_| true).await;
        assert_eq!(string(&err, "code"), "unauthorized");
        assert!(err["message"].is_string(), "{err}");
        p.wait(|v| v["name"] == none.as_str() && v["type"] == "disconnect")
            .await;
    }
}

/// An invite that cannot start comes back as `call:hangup{reason: code, code, message}`.
async fn failed_invite(transport: &str) {
    let srv = backend2_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("backend2"));
    connect_app(
        &mut p,
        &srv,
        "alice",
        &srv.token_for(alice),
        transport,
        true,
    )
    .await;
    p.emit(
        "alice",
        "call:invite",
        json!([{"to": "987654321", "isVideo": true, "offer": {"type": "offer", "sdp": "o"}}]),
    );
    let hangup = p.event("alice", "call:hangup").await;
    assert_eq!(string(&hangup, "reason"), "not_found");
    assert_eq!(string(&hangup, "code"), "not_found");
    assert!(hangup["message"].is_string(), "{hangup}");
}

#[actix_web::test]
async fn a_call_invite_that_cannot_start_hangs_up_with_the_reason() {
    failed_invite("websocket").await;
    failed_invite("polling").await;
}
