//! Seed 002 (astrology app) unchanged against Switchboard: its socket events played with the
//! real `socket.io-client` over websocket and over HTTP long-polling, on the app's own listener
//! (`LISTEN=…=astrology`; the app names no dialect), and its REST routes on the same listener — each
//! checked for the exact field names and JSON types of the seed's models. Agora tokens are
//! checked against the official `agora-token` package: they are its tokens for uid 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::puppet::Puppet;
use common::TestServer;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;
use switchboard::config::Secret;

const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
const CERTIFICATE: &str = "5CFd2fd1755d40ecb72977518be15d3b";

fn s(id: i64) -> String {
    id.to_string()
}

fn direct(server: &TestServer, a: i64, b: i64) -> i64 {
    switchboard::db::conversations::get_or_create_direct(&mut server.db.conn(), a, b)
        .unwrap()
        .0
        .id
}

/// A server configured for the astrology app: Agora on, a short ring, the app's sockets and REST
/// requests on its own listener.
async fn astrology_server() -> TestServer {
    TestServer::start_apps(|c| {
        c.agora_app_id = APP_ID.into();
        c.agora_app_certificate = Secret::new(CERTIFICATE);
        c.ring_timeout = Duration::from_secs(2);
    })
    .await
    .rest_on("astrology")
}

/// The app's connection: a token in the auth payload and nothing else (no dialect named).
fn app(token: &str, transport: &str) -> Value {
    json!({"auth": {"token": token}, "transports": [transport]})
}

fn is_string(v: &Value) -> bool {
    v.is_string()
}

fn is_date(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

/// The fields of the seed's `DirectMessage` with its JSON types.
fn assert_direct_message(m: &Value, sender: i64, sender_type: &str) {
    assert!(is_string(&m["_id"]), "_id: {m}");
    assert!(is_string(&m["conversationId"]), "conversationId: {m}");
    assert_eq!(m["senderId"], s(sender), "{m}");
    assert_eq!(m["senderType"], sender_type, "{m}");
    assert!(is_string(&m["messageType"]), "{m}");
    assert!(is_string(&m["content"]), "{m}");
    for nullable_string in ["mediaUrl", "replyTo"] {
        assert!(
            m.get(nullable_string)
                .is_some_and(|v| v.is_null() || v.is_string()),
            "{nullable_string}: {m}"
        );
    }
    for nullable_date in ["readAt", "deliveredAt"] {
        assert!(
            m.get(nullable_date)
                .is_some_and(|v| v.is_null() || is_date(v)),
            "{nullable_date}: {m}"
        );
    }
    assert!(
        ["sent", "delivered", "read"].contains(&m["status"].as_str().unwrap_or("")),
        "status: {m}"
    );
    assert!(m["isDeleted"].is_boolean(), "isDeleted: {m}");
    assert!(m["deletedBy"].is_array(), "deletedBy: {m}");
    assert!(is_date(&m["createdAt"]), "createdAt: {m}");
    assert!(is_date(&m["updatedAt"]), "updatedAt: {m}");
}

fn inflate(token: &str) -> Vec<u8> {
    assert!(token.starts_with("007"), "{token}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&token[3..])
        .unwrap();
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Reads an AccessToken2 RTC token: `(issueTs, expire, salt, privileges, channel, uid)`.
fn decode(token: &str) -> (u32, u32, u32, Vec<(u16, u32)>, String, String) {
    let b = inflate(token);
    let mut at = 0usize;
    let u16_at = |at: &mut usize| {
        let v = u16::from_le_bytes([b[*at], b[*at + 1]]);
        *at += 2;
        v
    };
    let u32_at = |at: &mut usize| {
        let v = u32::from_le_bytes([b[*at], b[*at + 1], b[*at + 2], b[*at + 3]]);
        *at += 4;
        v
    };
    let bytes_at = |at: &mut usize| {
        let n = usize::from(u16::from_le_bytes([b[*at], b[*at + 1]]));
        *at += 2;
        let v = b[*at..*at + n].to_vec();
        *at += n;
        v
    };
    let _signature = bytes_at(&mut at);
    let app_id = String::from_utf8(bytes_at(&mut at)).unwrap();
    assert_eq!(app_id, APP_ID);
    let issue_ts = u32_at(&mut at);
    let expire = u32_at(&mut at);
    let salt = u32_at(&mut at);
    assert_eq!(u16_at(&mut at), 1, "one service");
    assert_eq!(u16_at(&mut at), 1, "the RTC service");
    let n = u16_at(&mut at);
    let privileges = (0..n).map(|_| (u16_at(&mut at), u32_at(&mut at))).collect();
    let channel = String::from_utf8(bytes_at(&mut at)).unwrap();
    let uid = String::from_utf8(bytes_at(&mut at)).unwrap();
    (issue_ts, expire, salt, privileges, channel, uid)
}

/// The token is exactly what the official `agora-token` package signs for uid 0 in `channel`
/// with the server's app id and certificate: an app joining with uid 0 is admitted.
fn assert_valid_for_uid_0(token: &str, channel: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    assert!(
        dir.join("node_modules/agora-token").exists(),
        "agora-token is not installed: run `npm ci` in tests/clients (scripts/test.sh does)"
    );
    let (issue_ts, expire, salt, privileges, signed_channel, uid) = decode(token);
    assert_eq!(signed_channel, channel);
    assert_eq!(
        uid, "",
        "the token is bound to uid {uid}, not valid for uid 0"
    );
    let case = json!([{
        "appId": APP_ID,
        "appCertificate": CERTIFICATE,
        "issueTs": issue_ts,
        "expire": expire,
        "salt": salt,
        "channel": channel,
        "uid": 0,
        "privileges": privileges,
    }]);
    let mut child = std::process::Command::new("node")
        .arg("agora-tokens.js")
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(case.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        inflate(token),
        inflate(&theirs[0]),
        "not the official uid-0 token"
    );
}

/// Waits for the `dm:message_received` with this content on client `name`.
async fn message_with(p: &mut Puppet, name: &str, content: &str) -> Value {
    let (name, content) = (name.to_owned(), content.to_owned());
    p.wait(move |v| {
        v["name"] == name.as_str()
            && v["type"] == "event"
            && v["event"] == "dm:message_received"
            && v["args"][0]["content"] == content.as_str()
    })
    .await["args"][0]
        .clone()
}

/// The seed's chat flow and call flow over one transport.
async fn socket_flow(transport: &str) {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let conv = direct(&srv, user, astro);
    let with_admin = direct(&srv, astro, admin);
    let user_admin = direct(&srv, user, admin);
    let mut p = Puppet::start(srv.addr_of("astrology"));
    p.connect("user", app(&srv.token_for(user), transport))
        .await;
    p.connect("astro", app(&srv.token_for(astro), transport))
        .await;
    p.connect("admin", app(&srv.token_for(admin), transport))
        .await;
    // Another app's client of the astrologer, moving a canonical read cursor.
    p.connect_at(
        "astro-canonical",
        srv.addr(),
        json!({"auth": {"token": srv.token_for(astro)}, "transports": [transport]}),
    )
    .await;

    for (name, id, kind) in [("user", user, "user"), ("astro", astro, "astrologer")] {
        p.emit(
            name,
            "dm:join_conversation",
            json!([{"conversationId": s(conv), "userId": s(id), "userType": kind}]),
        );
        let joined = p.event(name, "dm:joined").await;
        assert_eq!(joined["conversationId"], s(conv));
    }

    // A message reaches the room with every DirectMessage field.
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(astro), "recipientType": "astrologer", "content": "Namaste", "messageType": "text"}]),
    );
    let mine = p.event("user", "dm:message_received").await;
    let theirs = p.event("astro", "dm:message_received").await;
    for m in [&mine, &theirs] {
        assert_direct_message(m, user, "user");
        assert_eq!(m["conversationId"], s(conv));
        assert_eq!(m["recipientId"], s(astro));
        assert_eq!(m["recipientType"], "astrologer");
        assert_eq!(m["content"], "Namaste");
        assert_eq!(m["messageType"], "text");
        assert_eq!(m["status"], "sent");
        assert_eq!(m["isDeleted"], false);
        assert_eq!(m["deletedBy"], json!([]));
        assert!(m["readAt"].is_null() && m["deliveredAt"].is_null());
    }
    assert_eq!(mine["_id"], theirs["_id"]);
    let first = theirs["_id"].as_str().unwrap().to_owned();

    // The astrologer's reply names the user as recipient.
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(user), "recipientType": "user", "content": "Hello", "messageType": "text"}]),
    );
    let reply = p.event("user", "dm:message_received").await;
    assert_direct_message(&reply, astro, "astrologer");
    assert_eq!(reply["recipientId"], s(user));
    assert_eq!(reply["recipientType"], "user");
    p.event("astro", "dm:message_received").await;

    // Typing reaches the other side.
    p.emit(
        "astro",
        "dm:typing_start",
        json!([{"conversationId": s(conv), "userId": s(astro)}]),
    );
    let typing = p.event("user", "dm:typing_start").await;
    assert_eq!(typing["conversationId"], s(conv));
    assert_eq!(typing["userId"], s(astro));
    p.emit(
        "astro",
        "dm:typing_stop",
        json!([{"conversationId": s(conv), "userId": s(astro)}]),
    );
    assert_eq!(p.event("user", "dm:typing_stop").await["userId"], s(astro));

    // A canonical client of the astrologer moves the read cursor by seq: the app still learns
    // which of its messages were read.
    let seq = theirs["seq"].as_i64().unwrap();
    let ack = p
        .call(
            "astro-canonical",
            "receipt:read",
            json!([{"conversationId": s(conv), "upTo": seq}]),
        )
        .await;
    assert_eq!(ack[0]["moved"], true, "{ack:?}");
    let read = p.event("user", "dm:messages_read").await;
    assert_eq!(read["conversationId"], s(conv));
    assert_eq!(read["readBy"], s(astro));
    assert_eq!(read["messageIds"], json!([first]));

    // The app's own mark names its ids and is announced to the room.
    let reply_id = reply["_id"].as_str().unwrap().to_owned();
    p.emit(
        "user",
        "dm:mark_read",
        json!([{"conversationId": s(conv), "messageIds": [reply_id]}]),
    );
    let read = p.event("astro", "dm:messages_read").await;
    assert_eq!(read["messageIds"], json!([reply_id]));
    assert_eq!(read["readBy"], s(user));
    let own = p.event("user", "dm:messages_read").await;
    assert_eq!(own["messageIds"], json!([reply_id]));

    // After leaving the room the user hears nothing of it; a later message in another
    // conversation shows the delivery order went past it.
    p.emit(
        "user",
        "dm:leave_conversation",
        json!([{"conversationId": s(conv)}]),
    );
    // The leave runs before this send (one socket's events run in order): its ack is the barrier.
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(user_admin), "recipientId": s(admin), "content": "barrier"}]),
    );
    message_with(&mut p, "admin", "barrier").await;
    message_with(&mut p, "user", "barrier").await;
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(user), "content": "unheard"}]),
    );
    // The sender hears its message once it was committed and handed to every member's socket.
    message_with(&mut p, "astro", "unheard").await;
    // Acknowledged once the typing event was handed out.
    p.call(
        "astro",
        "dm:typing_start",
        json!([{"conversationId": s(conv)}]),
    )
    .await;
    p.emit(
        "admin",
        "dm:send_message",
        json!([{"conversationId": s(user_admin), "recipientId": s(user), "content": "after"}]),
    );
    let after = message_with(&mut p, "user", "after").await;
    assert_eq!(after["senderType"], "admin");
    assert_eq!(after["recipientType"], "user");
    let leaked: Vec<Value> = p
        .unconsumed("user")
        .into_iter()
        .map(Value::String)
        .collect();
    assert!(
        !leaked.contains(&json!("dm:typing_start")),
        "events of a left room: {leaked:?}"
    );
    assert!(
        p.try_wait(
            &|v: &Value| v["name"] == "user" && v["args"][0]["content"] == "unheard",
            Duration::ZERO
        )
        .await
        .is_none(),
        "a left room's message reached the socket"
    );
    // Joining again brings the room back.
    p.emit(
        "user",
        "dm:join_conversation",
        json!([{"conversationId": s(conv)}]),
    );
    p.event("user", "dm:joined").await;
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(user), "content": "heard"}]),
    );
    message_with(&mut p, "user", "heard").await;

    // In its support conversation the astrologer writes to the admin it names.
    let (status, support) = srv
        .get("/api/conversations/admin", Some(&srv.token_for(astro)))
        .await;
    assert_eq!(status, 200, "{support}");
    let support_id = support["conversation"]["id"].as_str().unwrap().to_owned();
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": support_id, "recipientId": s(admin), "recipientType": "admin", "content": "To the admin"}]),
    );
    let to_admin = message_with(&mut p, "admin", "To the admin").await;
    assert_direct_message(&to_admin, astro, "astrologer");
    assert_eq!(to_admin["recipientId"], s(admin));
    assert_eq!(to_admin["recipientType"], "admin");
    let reply = message_with(&mut p, "astro", "To the admin").await;
    assert_eq!(reply["recipientId"], s(admin));

    // Errors carry `message` (what the app reads).
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(with_admin), "recipientId": s(admin), "content": "psst"}]),
    );
    let err = p.event("user", "dm:error").await;
    assert!(is_string(&err["message"]), "{err}");
    assert_eq!(err["code"], "forbidden");

    // A voice call over Agora: ids are strings, `callType` is `voice`, tokens are valid for
    // uid 0 (the app joins with uid 0).
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "calleeType": "astrologer", "callType": "voice"}]),
    );
    let initiated = p.event("user", "call:initiated").await;
    let call_id = initiated["callId"].as_str().unwrap().to_owned();
    let channel = initiated["channelName"].as_str().unwrap().to_owned();
    assert_eq!(initiated["callType"], "voice");
    assert_valid_for_uid_0(initiated["agoraToken"].as_str().unwrap(), &channel);
    let incoming = p.event("astro", "call:incoming").await;
    assert_eq!(incoming["callId"], call_id.as_str());
    assert_eq!(incoming["callerId"], s(user));
    assert_eq!(incoming["callerType"], "user");
    assert_eq!(incoming["callerName"], "Uma");
    assert!(incoming["callerAvatar"].is_null());
    assert_eq!(incoming["callType"], "voice");
    assert_eq!(incoming["channelName"], channel.as_str());
    assert_valid_for_uid_0(incoming["agoraToken"].as_str().unwrap(), &channel);
    p.emit("astro", "call:accept", json!([{"callId": call_id}]));
    assert_eq!(
        p.event("user", "call:accepted").await["callId"],
        call_id.as_str()
    );
    p.emit(
        "user",
        "call:end",
        json!([{"callId": call_id, "duration": 3}]),
    );
    let ended = p.event("astro", "call:ended").await;
    assert_eq!(ended["callId"], call_id.as_str());
    assert!(ended["duration"].is_u64(), "{ended}");
    assert_eq!(ended["endReason"], "completed");
    // The call log posted in their conversation is a `system` message to the app.
    let log = p
        .wait(|v| {
            v["name"] == "astro"
                && v["event"] == "dm:message_received"
                && v["args"][0]["type"] == "voice_call"
        })
        .await["args"][0]
        .clone();
    assert_eq!(log["messageType"], "system");
    assert_eq!(log["conversationId"], s(conv));

    // A video call the astrologer rejects.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "video"}]),
    );
    let rejected_id = p.event("user", "call:initiated").await["callId"].clone();
    let ring = p.event("astro", "call:incoming").await;
    assert_eq!(ring["callType"], "video");
    p.emit(
        "astro",
        "call:reject",
        json!([{"callId": rejected_id, "reason": "declined"}]),
    );
    let rejected = p.event("user", "call:rejected").await;
    assert_eq!(rejected["callId"], rejected_id);
    assert_eq!(rejected["reason"], "declined");
    assert_eq!(rejected["endReason"], "rejected");

    // Unanswered: `call:missed` with `no_answer`.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "voice"}]),
    );
    let missed_id = p.event("user", "call:initiated").await["callId"].clone();
    p.event("astro", "call:incoming").await;
    let missed = p.event("astro", "call:missed").await;
    assert_eq!(missed["callId"], missed_id);
    assert_eq!(missed["endReason"], "no_answer");

    // The caller hangs up while it rings: the callee's call ends as `cancelled`.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "voice"}]),
    );
    let cancelled_id = p.event("user", "call:initiated").await["callId"].clone();
    p.event("astro", "call:incoming").await;
    p.emit("user", "call:end", json!([{"callId": cancelled_id}]));
    let cancelled = p.event("astro", "call:ended").await;
    assert_eq!(cancelled["callId"], cancelled_id);
    assert_eq!(cancelled["endReason"], "cancelled");
    assert_eq!(cancelled["duration"], 0);

    // Call failures: `call:error` with a message.
    p.emit("astro", "call:accept", json!([{"callId": "no-such-call"}]));
    let err = p.event("astro", "call:error").await;
    assert!(is_string(&err["message"]), "{err}");
}

#[actix_web::test]
async fn the_unchanged_app_chats_and_calls_over_websocket() {
    socket_flow("websocket").await;
}

#[actix_web::test]
async fn the_unchanged_app_chats_and_calls_over_polling() {
    socket_flow("polling").await;
}

/// Waits (bounded) until the call's record says it ended.
async fn ended_record(srv: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..100 {
        let (status, body) = srv.get(&format!("/api/calls/{id}"), Some(token)).await;
        assert_eq!(status, 200, "{body}");
        if !body["call"]["endReason"].is_null() {
            return body["call"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} never ended")
}

#[actix_web::test]
async fn rest_routes_answer_the_seed_models() {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let (tu, ta, tadm) = (
        srv.token_for(user),
        srv.token_for(astro),
        srv.token_for(admin),
    );
    let conv = direct(&srv, user, astro);

    // POST /api/calls/initiate: an Agora call with the seed's fields.
    let (status, body) = srv
        .post(
            "/api/calls/initiate",
            json!({"calleeId": s(astro), "calleeType": "astrologer", "callType": "voice"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let call_id = body["callId"].as_str().unwrap().to_owned();
    let channel = body["channelName"].as_str().unwrap().to_owned();
    assert_eq!(body["callType"], "voice");
    assert_eq!(body["agoraUid"], 0);
    assert_valid_for_uid_0(body["agoraToken"].as_str().unwrap(), &channel);
    let (status, _) = srv
        .post(&format!("/api/calls/{call_id}/end"), json!({}), Some(&tu))
        .await;
    assert_eq!(status, 200);
    let record = ended_record(&srv, &tu, &call_id).await;
    assert_eq!(record["_id"], call_id.as_str());
    assert_eq!(record["callerId"], s(user));
    assert_eq!(record["callerType"], "user");
    assert_eq!(record["calleeId"], s(astro));
    assert_eq!(record["calleeType"], "astrologer");
    assert_eq!(record["callType"], "voice");
    assert_eq!(record["status"], "ended");
    assert_eq!(record["endReason"], "cancelled");
    assert_eq!(record["agoraChannelName"], channel.as_str());
    assert_eq!(record["agoraUid"], 0);
    assert!(record["duration"].is_u64());
    assert!(is_date(&record["initiatedAt"]));
    let (status, history) = srv.get("/api/calls/history", Some(&ta)).await;
    assert_eq!(status, 200);
    let listed = &history["calls"][0];
    assert_eq!(listed["callId"], call_id.as_str());
    assert_eq!(listed["calleeType"], "astrologer");
    assert_eq!(listed["endReason"], "cancelled");

    // Messages over REST: the DirectMessage fields, statuses from the cursors.
    let (status, sent) = srv
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "Hi", "messageType": "text"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_direct_message(&sent["message"], user, "user");
    assert_eq!(sent["message"]["recipientId"], s(astro));
    assert_eq!(sent["message"]["recipientType"], "astrologer");
    assert_eq!(sent["message"]["status"], "sent");
    let seq = sent["message"]["seq"].as_i64().unwrap();
    switchboard::db::conversations::move_cursor(
        &mut srv.db.conn(),
        conv,
        astro,
        switchboard::db::conversations::ReceiptKind::Read,
        &switchboard::realtime::protocol::ReceiptCursor::Seq(seq),
    )
    .unwrap();
    let (status, page) = srv
        .get(&format!("/api/conversations/{conv}/messages"), Some(&tu))
        .await;
    assert_eq!(status, 200);
    let m = &page["messages"][0];
    assert_direct_message(m, user, "user");
    assert_eq!(m["status"], "read");
    assert!(is_date(&m["readAt"]) && is_date(&m["deliveredAt"]), "{m}");

    // The conversation: participants, type, last message, unread counts per participant.
    let (status, body) = srv
        .get(&format!("/api/conversations/{conv}"), Some(&ta))
        .await;
    assert_eq!(status, 200);
    let c = &body["conversation"];
    assert_eq!(c["_id"], s(conv));
    assert_eq!(c["conversationType"], "user_astrologer");
    assert_eq!(c["contextType"], "general");
    assert!(c["contextId"].is_null());
    assert_eq!(c["isActive"], true);
    let participants = c["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 2);
    for part in participants {
        assert!(is_string(&part["id"]) && is_string(&part["name"]), "{part}");
        assert!(part["profilePicture"].is_null() || is_string(&part["profilePicture"]));
        assert!(is_date(&part["joinedAt"]));
    }
    let kinds: Vec<(&str, &str)> = participants
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&(s(user).as_str(), "user")));
    assert!(kinds.contains(&(s(astro).as_str(), "astrologer")));
    let last = &c["lastMessage"];
    assert_eq!(last["content"], "Hi");
    assert_eq!(last["senderId"], s(user));
    assert_eq!(last["messageType"], "text");
    assert!(is_date(&last["timestamp"]));
    assert_eq!(c["unreadCount"], json!({s(user): 0, s(astro): 0}));

    // Support conversations: the astrologer writes to the admins, an admin answers.
    let (status, support) = srv.get("/api/conversations/admin", Some(&ta)).await;
    assert_eq!(status, 200, "{support}");
    assert_eq!(
        support["conversation"]["conversationType"],
        "admin_astrologer"
    );
    assert_eq!(support["conversation"]["contextType"], "support");
    assert!(support["unreadCount"].is_i64());
    let (status, sent) = srv
        .post(
            "/api/conversations/admin/messages",
            json!({"content": "Need help", "messageType": "text"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_direct_message(&sent["message"], astro, "astrologer");
    assert_eq!(sent["message"]["recipientType"], "admin");
    let (status, answer) = srv
        .post(
            &format!("/api/admin/conversations/{astro}/messages"),
            json!({"content": "On it"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_direct_message(&answer["message"], admin, "admin");
    assert_eq!(answer["message"]["recipientId"], s(astro));
    assert_eq!(answer["message"]["recipientType"], "astrologer");
    let (status, support) = srv
        .get(&format!("/api/admin/conversations/{astro}"), Some(&tadm))
        .await;
    assert_eq!(status, 200);
    let unread = &support["conversation"]["unreadCount"];
    assert_eq!(unread[s(astro)], 1, "{unread}");
    assert_eq!(unread[s(admin)], 1, "{unread}");
    assert_eq!(support["messages"].as_array().unwrap().len(), 2);
    let (status, page) = srv
        .get("/api/conversations/admin/messages", Some(&ta))
        .await;
    assert_eq!(status, 200);
    for m in page["messages"].as_array().unwrap() {
        assert!(is_string(&m["_id"]) && is_string(&m["senderType"]), "{m}");
    }
}

#[actix_web::test]
async fn shared_routes_keep_canonical_shapes_unless_the_dialect_is_named() {
    let srv = TestServer::start().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let conv = direct(&srv, user, astro);
    let token = srv.token_for(user);
    let (_, canonical) = srv
        .get(&format!("/api/conversations/{conv}"), Some(&token))
        .await;
    assert!(canonical["conversation"]["unreadCount"].is_i64());
    assert!(canonical["conversation"].get("conversationType").is_none());
    let (_, named) = srv
        .get(
            &format!("/api/conversations/{conv}?dialect=astrology"),
            Some(&token),
        )
        .await;
    assert_eq!(named["conversation"]["conversationType"], "user_astrologer");
    assert!(named["conversation"]["unreadCount"].is_object());
    // Without Agora the REST call is a WebRTC call, and says so.
    let (status, body) = srv
        .post(
            "/api/calls/initiate",
            json!({"calleeId": s(astro), "callType": "video"}),
            Some(&token),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["call"]["callType"], "video");
    assert!(body["channelName"].is_null() && body["agoraToken"].is_null());
}
