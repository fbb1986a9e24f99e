//! Imported data keeps its legacy ids for the apps that hold them: users, a direct conversation
//! and its messages written straight into the database with `legacy_ids` rows and
//! `messages.legacy_id`, then the apps of seeds 003, 002 and 000 on their own listeners (naming
//! no dialect) send legacy ids in REST paths, queries, bodies and socket events (over `/ws` and,
//! for seed 003, the real `socket.io-client`), and receive legacy ids for imported users,
//! conversations, chat requests and messages. A server with no legacy ids answers as it always
//! did, and rows imported while it serves are picked up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{TestServer, WsClient};
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str = "65a1a1a1a1a1a1a1a1a1a1a1";
const BOB: &str = "65b2b2b2b2b2b2b2b2b2b2b2";
const CHAT: &str = "65c3c3c3c3c3c3c3c3c3c3c3";
const FIRST: &str = "65d4d4d4d4d4d4d4d4d4d401";
const SECOND: &str = "65d4d4d4d4d4d4d4d4d4d402";

/// What was "imported": two users, their direct conversation and two messages in it.
struct Imported {
    alice: i64,
    bob: i64,
    conv: i64,
    first: i64,
}

/// Writes the users, the conversation and its messages, and (unless `source` is `None`) their
/// legacy ids under `source`; `conversation_ids` are the conversation's legacy ids.
fn import(srv: &TestServer, source: Option<&str>, conversation_ids: &[&str]) -> Imported {
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &["astrologer"]);
    let conv = srv.direct(alice, bob);
    srv.db.exec(&format!(
        "INSERT INTO messages (conversation_id, seq, change_seq, sender_id, kind, content, \
             recipient_id, legacy_id, created_at) VALUES \
         ({conv}, 1, 1, {alice}, 'text', 'hello from before', {bob}, '{FIRST}', now() - interval '2 days'), \
         ({conv}, 2, 2, {bob}, 'text', 'an answer from before', {alice}, '{SECOND}', now() - interval '1 day')"
    ));
    srv.db.exec(&format!(
        "UPDATE conversations SET last_seq = 2, last_change = 2, last_message_at = now() \
         WHERE id = {conv}"
    ));
    if let Some(source) = source {
        add_ids(srv, source, alice, bob, conv, conversation_ids);
    }
    let first = message_id(srv, FIRST);
    Imported {
        alice,
        bob,
        conv,
        first,
    }
}

fn add_ids(srv: &TestServer, source: &str, alice: i64, bob: i64, conv: i64, convs: &[&str]) {
    srv.db.exec(&format!(
        "INSERT INTO legacy_ids (source, legacy_id, kind, id) VALUES \
         ('{source}', '{ALICE}', 'user', {alice}), ('{source}', '{BOB}', 'user', {bob})"
    ));
    // Later legacy ids of one conversation are imported later: the first is shown back.
    for (i, legacy) in convs.iter().enumerate() {
        srv.db.exec(&format!(
            "INSERT INTO legacy_ids (source, legacy_id, kind, id, imported_at) VALUES \
             ('{source}', '{legacy}', 'conversation', {conv}, now() + interval '{i} seconds')"
        ));
    }
}

fn message_id(srv: &TestServer, legacy: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let row: Id = diesel::sql_query(format!(
        "SELECT id FROM messages WHERE legacy_id = '{legacy}'"
    ))
    .get_result(&mut srv.db.conn())
    .unwrap();
    row.id
}

async fn load(srv: &TestServer) {
    let state = &srv.running.state;
    state.legacy.refresh(&state.db).await.unwrap();
}

/// The app's socket on its own listener (no dialect named).
async fn app_socket(srv: &TestServer, dialect: &str, user: i64) -> WsClient {
    let token = srv.token_for(user);
    WsClient::try_connect(srv.addr_of(dialect), &format!("/ws?token={token}"))
        .await
        .expect("websocket upgrade")
}

/// The next event called `name` whose payload says `content`.
async fn event_with(ws: &mut WsClient, name: &str, content: &str) -> Value {
    for _ in 0..20 {
        let p = ws.expect_event(name).await;
        if p["content"] == content {
            return p;
        }
    }
    panic!("no {name} with {content}");
}

#[actix_rt::test]
async fn seed_003_sends_and_receives_legacy_ids_over_rest_and_sockets() {
    let srv = TestServer::start_apps(|_| {}).await.rest_on("backend2");
    let im = import(&srv, Some("seed003"), &[CHAT]);
    load(&srv).await;
    let ta = srv.token_for(im.alice);

    // The conversation's messages, by its legacy id (query and path), name everything legacy.
    for path in [
        format!("/messages?conversationId={CHAT}"),
        format!("/conversations/{CHAT}/messages"),
    ] {
        let (status, body) = srv.get(&path, Some(&ta)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["conversationId"], CHAT, "{body}");
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{body}");
        let (m1, m2) = (&messages[0], &messages[1]);
        assert_eq!(m1["id"], FIRST);
        assert_eq!(m1["_id"], FIRST);
        assert_eq!(m1["legacyId"], FIRST);
        assert_eq!(m1["senderId"], ALICE);
        assert_eq!(m1["from"], ALICE);
        assert_eq!(m1["sender"], ALICE);
        assert_eq!(m1["recipientId"], BOB);
        assert_eq!(m1["conversationId"], CHAT);
        assert_eq!(m1["conversation"], CHAT);
        assert_eq!(m2["id"], SECOND);
        assert_eq!(m2["senderId"], BOB);
    }
    // The conversation itself, and the conversation list.
    let (status, body) = srv.get(&format!("/conversations/{CHAT}"), Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    let conv = if body.get("conversation").is_some() {
        &body["conversation"]
    } else {
        &body
    };
    assert_eq!(conv["id"], CHAT, "{body}");
    let text = body.to_string();
    assert!(text.contains(ALICE) && text.contains(BOB), "{body}");
    let (status, body) = srv.get("/conversations", Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversations"][0]["id"], CHAT, "{body}");
    assert_eq!(body["conversations"][0]["_id"], CHAT, "{body}");

    // A send naming the legacy conversation reaches the other member with legacy ids; the
    // sender's ack says the same.
    let mut a = app_socket(&srv, "backend2", im.alice).await;
    let mut b = app_socket(&srv, "backend2", im.bob).await;
    let ack = a
        .request(
            "message",
            json!({"conversation": CHAT, "text": "after the move"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["conversationId"], CHAT, "{ack}");
    assert_eq!(ack["senderId"], ALICE, "{ack}");
    let got = event_with(&mut b, "message", "after the move").await;
    assert_eq!(got["conversationId"], CHAT, "{got}");
    assert_eq!(got["conversation"], CHAT, "{got}");
    assert_eq!(got["senderId"], ALICE, "{got}");
    assert_eq!(got["from"], ALICE, "{got}");
    // A message written here has no legacy id: its own id, unchanged.
    let new_id = got["id"].as_str().unwrap();
    assert!(new_id.parse::<i64>().is_ok(), "{got}");
    assert!(got.get("legacyId").is_none(), "{got}");
    // Sent to a user by legacy id.
    a.request("message", json!({"to": BOB, "text": "by user id"}))
        .await
        .unwrap();
    let got = event_with(&mut b, "message", "by user id").await;
    assert_eq!(got["conversationId"], CHAT, "{got}");
    // Typing names the conversation legacy too.
    a.emit("typing", json!({"conversationId": CHAT})).await;
    let typing = b.expect_event("typing").await;
    assert_eq!(typing["conversationId"], CHAT, "{typing}");
    assert_eq!(typing["userId"], ALICE, "{typing}");

    // Edit and delete an imported message by its legacy id over REST.
    let (status, body) = srv
        .call(
            "PATCH",
            &format!("/messages/{FIRST}"),
            Some(json!({"text": "hello, edited"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["id"], FIRST, "{body}");
    assert_eq!(body["message"]["content"], "hello, edited");
    let edited = event_with(&mut b, "message_edited", "hello, edited").await;
    assert_eq!(edited["id"], FIRST, "{edited}");
    assert_eq!(edited["_id"], FIRST, "{edited}");
    assert_eq!(edited["conversationId"], CHAT, "{edited}");
    // Over the socket too (the canonical command, which the app's events pass through).
    let ack = a
        .request(
            "message:edit",
            json!({"messageId": FIRST, "content": "edited on the socket"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["id"], FIRST, "{ack}");
    let stored: String = {
        use diesel::prelude::*;
        use switchboard::db::schema::messages;
        messages::table
            .find(im.first)
            .select(messages::content)
            .get_result(&mut srv.db.conn())
            .unwrap()
    };
    assert_eq!(stored, "edited on the socket");
    let (status, body) = srv
        .call("DELETE", &format!("/messages/{FIRST}"), None, Some(&ta))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["id"], FIRST, "{body}");
    let deleted = b.expect_event("message_deleted").await;
    assert_eq!(deleted["id"], FIRST, "{deleted}");
    assert_eq!(deleted["_id"], FIRST, "{deleted}");
    // Someone else's imported message cannot be edited by its legacy id either.
    let (status, body) = srv
        .call(
            "PATCH",
            &format!("/messages/{SECOND}"),
            Some(json!({"text": "not mine"})),
            Some(&ta),
        )
        .await;
    assert!(status == 403 || status == 404, "{status} {body}");
    // An unknown legacy message id is a 400 as any id that is not one.
    let (status, _) = srv
        .call(
            "DELETE",
            "/messages/65ffffffffffffffffffffff",
            None,
            Some(&ta),
        )
        .await;
    assert_eq!(status, 400);

    // Another source's apps do not see these ids: seed 002's listener shows internal ids.
    let srv2 = srv.rest_on("astrology");
    let (status, body) = srv2
        .get(
            &format!("/api/conversations/{}/messages", im.conv),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["messages"][1]["senderId"],
        im.bob.to_string(),
        "{body}"
    );
    assert_eq!(body["messages"][1]["id"], SECOND, "{body}");
    assert_eq!(body["messages"][1]["legacyId"], SECOND, "{body}");
}

#[actix_rt::test]
async fn seed_002_direct_messages_come_back_with_legacy_ids() {
    let srv = TestServer::start_apps(|_| {}).await.rest_on("astrology");
    let im = import(&srv, Some("seed002"), &[CHAT]);
    load(&srv).await;
    let ta = srv.token_for(im.alice);

    let (status, body) = srv
        .get(&format!("/api/conversations/{CHAT}/messages"), Some(&ta))
        .await;
    assert_eq!(status, 200, "{body}");
    let m = &body["messages"][0];
    assert_eq!(m["_id"], FIRST, "{body}");
    assert_eq!(m["conversationId"], CHAT);
    assert_eq!(m["senderId"], ALICE);
    assert_eq!(m["recipientId"], BOB);

    let mut a = app_socket(&srv, "astrology", im.alice).await;
    let mut b = app_socket(&srv, "astrology", im.bob).await;
    a.emit(
        "dm:send_message",
        json!({"conversationId": CHAT, "recipientId": BOB, "recipientType": "astrologer",
               "content": "Namaste", "messageType": "text", "replyTo": FIRST}),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let got = event_with(ws, "dm:message_received", "Namaste").await;
        assert_eq!(got["conversationId"], CHAT, "{got}");
        assert_eq!(got["senderId"], ALICE, "{got}");
        assert_eq!(got["recipientId"], BOB, "{got}");
        // The reply names the imported message it answers by the id the app knows (resolved
        // when it was sent, and remembered).
        assert_eq!(got["replyTo"], FIRST, "{got}");
    }
    // Marking the imported message read by its legacy id.
    b.emit(
        "dm:mark_read",
        json!({"conversationId": CHAT, "messageIds": [FIRST]}),
    )
    .await;
    let read = a.expect_event("dm:messages_read").await;
    assert_eq!(read["conversationId"], CHAT, "{read}");
    assert_eq!(read["readBy"], BOB, "{read}");
    assert_eq!(read["messageIds"], json!([FIRST]), "{read}");
}

#[actix_rt::test]
async fn seed_000_dm_chat_ids_resolve_and_events_carry_legacy_user_ids() {
    let srv = TestServer::start_apps(|_| {}).await.rest_on("lonestar");
    let ab = format!("dm_{ALICE}_{BOB}");
    let ba = format!("dm_{BOB}_{ALICE}");
    let im = import(&srv, Some("seed000"), &[&ab, &ba]);
    load(&srv).await;
    let ta = srv.token_for(im.alice);

    // Either chat id names the conversation; the first imported is the one shown.
    for chat in [&ab, &ba] {
        let (status, body) = srv
            .get(&format!("/api/conversations/{chat}/messages"), Some(&ta))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["conversationId"], ab.as_str(), "{body}");
        assert_eq!(body["messages"][0]["senderId"], ALICE, "{body}");
        assert_eq!(body["messages"][0]["id"], FIRST, "{body}");
    }
    // The seed's DM delete: the peer and the message by their legacy ids.
    let (status, body) = srv
        .call(
            "DELETE",
            &format!("/api/messages/dm/{BOB}/messages/{FIRST}"),
            None,
            Some(&ta),
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let deleted_at: Option<chrono::DateTime<chrono::Utc>> = {
        use diesel::prelude::*;
        use switchboard::db::schema::messages;
        messages::table
            .find(im.first)
            .select(messages::deleted_at)
            .get_result(&mut srv.db.conn())
            .unwrap()
    };
    assert!(deleted_at.is_some());

    // Events: a message sent to the `dm_` chat id, and a call to the legacy user id.
    let mut a = app_socket(&srv, "lonestar", im.alice).await;
    let mut b = app_socket(&srv, "lonestar", im.bob).await;
    a.request(
        "message:send",
        json!({"conversationId": ba, "content": "over the dm id"}),
    )
    .await
    .unwrap();
    let got = event_with(&mut b, "message:new", "over the dm id").await;
    assert_eq!(got["conversationId"], ab.as_str(), "{got}");
    assert_eq!(got["senderId"], ALICE, "{got}");
    a.emit(
        "start_call",
        json!({"to": BOB, "isVideo": false, "sdp": "v=0"}),
    )
    .await;
    let incoming = b.expect_event("incoming_call").await;
    assert_eq!(incoming["from"], ALICE, "{incoming}");
    let call = incoming["callId"].as_str().unwrap().to_owned();
    b.emit("accept_call", json!({"callId": call})).await;
    let accepted = a.expect_event("call_accepted").await;
    assert_eq!(accepted["userId"], BOB, "{accepted}");
    a.emit("end_call", json!({"callId": call})).await;
    b.expect_event("call_ended").await;
}

#[actix_rt::test]
async fn without_legacy_ids_nothing_changes_and_an_import_is_picked_up_while_serving() {
    let srv = TestServer::start_apps(|c| {
        c.legacy_ids_refresh = Duration::from_secs(1);
    })
    .await
    .rest_on("backend2");
    let im = import(&srv, None, &[]);
    let ta = srv.token_for(im.alice);
    let state = &srv.running.state;
    assert!(state.legacy.is_empty());

    let path = format!("/conversations/{}/messages", im.conv);
    let (status, body) = srv.get(&path, Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    let m = &body["messages"][0];
    assert_eq!(m["id"], im.first.to_string(), "{body}");
    assert_eq!(m["_id"], im.first.to_string());
    assert_eq!(m["senderId"], im.alice.to_string());
    assert_eq!(m["conversationId"], im.conv.to_string());
    // The message's legacy id is still told (it is the message's own data).
    assert_eq!(m["legacyId"], FIRST);
    let mut b = app_socket(&srv, "backend2", im.bob).await;
    let mut a = app_socket(&srv, "backend2", im.alice).await;
    a.request(
        "message",
        json!({"conversation": im.conv.to_string(), "text": "plain"}),
    )
    .await
    .unwrap();
    let got = event_with(&mut b, "message", "plain").await;
    assert_eq!(got["conversationId"], im.conv.to_string(), "{got}");
    assert_eq!(got["senderId"], im.alice.to_string(), "{got}");

    // An import while the server runs: seen within a few checks.
    add_ids(&srv, "seed003", im.alice, im.bob, im.conv, &[CHAT]);
    let started = std::time::Instant::now();
    while state.legacy.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state
            .legacy
            .resolve(switchboard::legacy::Source::Seed003, CHAT),
        Some((switchboard::legacy::Kind::Conversation, im.conv))
    );
    let (status, body) = srv.get(&path, Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][0]["senderId"], ALICE, "{body}");
    assert_eq!(body["conversationId"], CHAT, "{body}");
    // A later mapping of the same user (another exported account) does not change what is
    // shown; removing the rows empties the copy again.
    srv.db.exec(&format!(
        "INSERT INTO legacy_ids (source, legacy_id, kind, id, imported_at) VALUES \
         ('seed003', '65a1a1a1a1a1a1a1a1a1a1ff', 'user', {}, now() + interval '1 hour')",
        im.alice
    ));
    load(&srv).await;
    assert_eq!(
        state
            .legacy
            .legacy_of(
                switchboard::legacy::Source::Seed003,
                switchboard::legacy::Kind::User,
                im.alice
            )
            .as_deref(),
        Some(ALICE)
    );
    srv.db.exec("DELETE FROM legacy_ids");
    load(&srv).await;
    assert!(state.legacy.is_empty());
}

const CAROL: &str = "65e5e5e5e5e5e5e5e5e5e5e5";
const REQUEST: &str = "65f6f6f6f6f6f6f6f6f6f6f6";

/// The real `socket.io-client` as the seed 003 app connects (token in `auth`, websocket).
fn sio_app(token: &str) -> Value {
    json!({"auth": {"token": token}, "transports": ["websocket"], "ackEvents": false})
}

#[actix_rt::test]
async fn seed_003_chat_requests_and_socket_io_events_carry_legacy_ids() {
    let srv = TestServer::start_apps(|_| {}).await.rest_on("backend2");
    let im = import(&srv, Some("seed003"), &[CHAT]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    srv.db.exec(&format!(
        "INSERT INTO chat_requests (from_user_id, to_user_id, message, status) \
         VALUES ({carol}, {}, 'hello {ALICE}', 'pending')",
        im.alice
    ));
    srv.db.exec(&format!(
        "INSERT INTO legacy_ids (source, legacy_id, kind, id) VALUES \
         ('seed003', '{CAROL}', 'user', {carol}), \
         ('seed003', '{REQUEST}', 'chat_request', (SELECT max(id) FROM chat_requests))"
    ));
    load(&srv).await;
    let (ta, tc) = (srv.token_for(im.alice), srv.token_for(carol));

    // The pending request, by its legacy id and its parties' legacy ids; its text untouched.
    let (status, body) = srv.get("/chat-requests", Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    let req = &body["incoming"][0];
    assert_eq!(req["id"], REQUEST, "{body}");
    assert_eq!(req["_id"], REQUEST, "{body}");
    assert_eq!(req["fromUserId"], CAROL, "{body}");
    assert_eq!(req["toUserId"], ALICE, "{body}");
    assert_eq!(req["from"]["id"], CAROL, "{body}");
    assert_eq!(req["from"]["_id"], CAROL, "{body}");
    assert_eq!(req["to"]["id"], ALICE, "{body}");
    assert_eq!(req["message"], format!("hello {ALICE}"), "{body}");

    let mut p = Puppet::start(srv.addr_of("backend2"));
    for (name, token) in [("alice", &ta), ("carol", &tc)] {
        p.connect(name, sio_app(token)).await;
        // The session answers: it is registered for events.
        let pong = p.call(name, "ping", json!([{}])).await;
        assert!(pong[0].get("pong").is_some(), "{pong:?}");
    }
    // Accepted by its legacy id: Carol hears of it with the legacy ids.
    let (status, body) = srv
        .post(
            &format!("/chat-requests/{REQUEST}/accept"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["request"]["id"], REQUEST, "{body}");
    assert_eq!(body["request"]["status"], "accepted", "{body}");
    let accepted = p.event("carol", "chat_request:accepted").await;
    assert_eq!(accepted["request"]["_id"], REQUEST, "{accepted}");
    assert_eq!(accepted["request"]["from"]["id"], CAROL, "{accepted}");
    // The conversation it opened was made here: its own id; its members are shown legacy.
    let conv = accepted["conversation"]["id"].as_str().unwrap().to_owned();
    assert!(conv.parse::<i64>().is_ok(), "{accepted}");
    assert!(
        accepted["conversation"].to_string().contains(ALICE),
        "{accepted}"
    );

    // Carol writes to Alice by her legacy user id over Socket.IO.
    p.emit("carol", "message", json!([{"to": ALICE, "text": "thanks"}]));
    let got = p.event("alice", "message").await;
    assert_eq!(got["text"], "thanks", "{got}");
    assert_eq!(got["from"], CAROL, "{got}");
    assert_eq!(got["senderId"], CAROL, "{got}");
    assert_eq!(got["conversationId"], conv, "{got}");
    // Alice writes in the imported conversation by its legacy id: her ack names it so.
    let ack = p
        .call(
            "alice",
            "message",
            json!([{"conversation": CHAT, "text": "and you?"}]),
        )
        .await;
    assert_eq!(ack[0]["conversationId"], CHAT, "{ack:?}");
    assert_eq!(ack[0]["senderId"], ALICE, "{ack:?}");
}
