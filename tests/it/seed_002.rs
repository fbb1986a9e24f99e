//! Seed 002 (astrology app) unchanged against Switchboard: every socket event and REST route of
//! its backend document, played with the real `socket.io-client` over websocket and over HTTP
//! long-polling, on the app's own listener (`LISTEN=…=astrology`; the app names no dialect), its
//! REST client on the same listener, each payload checked for the field names and JSON types of
//! the seed's `DirectConversation`, `DirectMessage` and `Call` models (ids as strings, dates as
//! ISO 8601 strings, counts as numbers, flags as booleans, absent optional values as `null`).
//! Agora tokens are checked against the official `agora-token` package: they are its tokens for
//! uid 0.
//!
//! Covered, app → server: `dm:join_conversation` (→ `dm:joined`), `dm:send_message` (→
//! `dm:message_received` to the room, sender included; `messageType` defaults to `text`;
//! `mediaUrl`, `replyTo`), `dm:typing_start|stop` (to the others only), `dm:mark_read` (→
//! `dm:messages_read` to the room), `dm:leave_conversation`, `call:initiate` (→
//! `call:initiated` to the caller, `call:incoming` to the callee), `call:accept` (→
//! `call:accepted`), `call:reject` with and without a reason (→ `call:rejected`), `call:end` by
//! either party, answered or ringing (→ `call:ended` to the other, and to the side that hung up),
//! an unanswered call (→ `call:missed`), each outcome's `Call` record; failures as `dm:error` and
//! `call:error` with `message`. REST: `GET /api/admin/conversations/:astrologerId`,
//! `GET|POST /api/admin/conversations/:astrologerId/messages`, `POST /api/admin/calls/initiate`,
//! `GET /api/conversations/admin`, `GET|POST /api/conversations/admin/messages`,
//! `GET /api/conversations/:id`, `GET|POST /api/conversations/:id/messages` (paginated),
//! `POST /api/calls/admin/token`, `POST /api/calls/initiate`, `POST /api/calls/:id/end`,
//! `GET /api/calls/history` (paginated), and that each REST send, call and end reaches the other
//! party's socket ("Emit via Socket.IO"). The document's security list: a socket with a bad
//! token is refused, ids the app sends about itself are ignored (identity comes from the token),
//! admin routes refuse non-admins, `CONTACT_POLICY=roles` enforces who may call whom, message and
//! call rate limits answer in the app's error events, unknown and server-only message types are
//! refused.
//!
//! Readings where the document is silent or contradicts itself (README, "Moving an app over →
//! Seed 002"):
//! - Ids are strings (MongoDB ObjectIds); the seed's `Map` of unread counts is a JSON object of
//!   numbers keyed by participant id.
//! - Optional fields the seed's models leave unset are present as `null` (`mediaUrl`,
//!   `replyTo`, `readAt`, `deliveredAt`, `contextId`, a fresh conversation's `lastMessage`, a
//!   call's `answeredAt`, `endedAt`, `endedBy`, `endReason` while it lasts).
//! - `call:ended.duration` is measured by the server (answer to end), not the client's figure.
//! - `call:rejected.reason` is the client's reason as given, `rejected` when it gave none.
//! - A stored call's `agoraToken` is null (tokens are handed out when a call starts and rings);
//!   `consultationId` is null (calls belong to conversations).
//! - `POST /api/calls/admin/token` ("return channel name and token") answers `{channelName,
//!   token, uid}`; without a `uid` its token is valid for uid 0, like every token the app gets.
//! - Pages of messages and calls: `?limit=` with `?before=` (messages, `cursors.before`) and
//!   `?cursor=` (calls, `nextCursor`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{code, TestServer};
use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;
use switchboard::config::{Config, Secret};
use switchboard::policy::ContactPolicy;

const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
const CERTIFICATE: &str = "5CFd2fd1755d40ecb72977518be15d3b";

const KINDS: [&str; 3] = ["user", "astrologer", "admin"];
const CALL_STATUSES: [&str; 8] = [
    "initiated",
    "ringing",
    "answered",
    "ongoing",
    "ended",
    "rejected",
    "missed",
    "failed",
];
const END_REASONS: [&str; 5] = [
    "completed",
    "rejected",
    "no_answer",
    "network_error",
    "cancelled",
];
const MESSAGE_TYPES: [&str; 5] = ["text", "image", "audio", "file", "system"];

fn s(id: i64) -> String {
    id.to_string()
}

/// A server configured for the astrology app: Agora on, a short ring, the app's sockets and REST
/// requests on its own listener; `tweak` adjusts the rest.
async fn astrology_server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_apps(|c| {
        c.agora_app_id = APP_ID.into();
        c.agora_app_certificate = Secret::new(CERTIFICATE);
        c.ring_timeout = Duration::from_secs(2);
        tweak(c);
    })
    .await
    .rest_on("astrology")
}

async fn astrology_server() -> TestServer {
    astrology_server_with(|_| {}).await
}

/// The app's connection: a token in the auth payload and nothing else (no dialect named).
fn app(token: &str, transport: &str) -> Value {
    json!({"auth": {"token": token}, "transports": [transport]})
}

/// Connects `name` as the app does, on the astrology listener, over `transport`.
async fn sign_in(p: &mut Puppet, srv: &TestServer, name: &str, user: i64, transport: &str) {
    let connected = p.connect(name, app(&srv.token_for(user), transport)).await;
    assert_eq!(connected["transport"], transport, "{connected}");
}

fn is_string(v: &Value) -> bool {
    v.is_string()
}

fn is_date(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

fn is_null_or_date(v: Option<&Value>) -> bool {
    v.is_some_and(|v| v.is_null() || is_date(v))
}

fn is_null_or_string(v: Option<&Value>) -> bool {
    v.is_some_and(|v| v.is_null() || v.is_string())
}

/// One of `allowed`, as a JSON string.
fn is_one_of(v: &Value, allowed: &[&str]) -> bool {
    v.as_str().is_some_and(|t| allowed.contains(&t))
}

/// The fields of the seed's `DirectMessage` with its JSON types.
fn assert_direct_message(m: &Value, sender: i64, sender_type: &str) {
    assert!(is_string(&m["_id"]), "_id: {m}");
    assert!(is_string(&m["conversationId"]), "conversationId: {m}");
    assert_eq!(m["senderId"], s(sender), "{m}");
    assert_eq!(m["senderType"], sender_type, "{m}");
    for nullable_string in ["recipientId", "mediaUrl", "replyTo"] {
        assert!(
            is_null_or_string(m.get(nullable_string)),
            "{nullable_string}: {m}"
        );
    }
    assert!(
        m["recipientType"].is_null() || is_one_of(&m["recipientType"], &KINDS),
        "recipientType: {m}"
    );
    assert!(is_one_of(&m["messageType"], &MESSAGE_TYPES), "{m}");
    assert!(is_string(&m["content"]), "{m}");
    for nullable_date in ["readAt", "deliveredAt"] {
        assert!(
            is_null_or_date(m.get(nullable_date)),
            "{nullable_date}: {m}"
        );
    }
    assert!(
        is_one_of(&m["status"], &["sent", "delivered", "read"]),
        "status: {m}"
    );
    assert!(m["isDeleted"].is_boolean(), "isDeleted: {m}");
    assert!(m["deletedBy"].is_array(), "deletedBy: {m}");
    assert!(is_date(&m["createdAt"]), "createdAt: {m}");
    assert!(is_date(&m["updatedAt"]), "updatedAt: {m}");
}

/// The fields of the seed's `DirectConversation` with its JSON types.
fn assert_direct_conversation(c: &Value) {
    assert!(is_string(&c["_id"]), "_id: {c}");
    let participants = c["participants"].as_array().expect("participants");
    for part in participants {
        assert!(is_string(&part["id"]), "{part}");
        assert!(is_one_of(&part["type"], &KINDS), "{part}");
        assert!(is_string(&part["name"]), "{part}");
        assert!(is_null_or_string(part.get("profilePicture")), "{part}");
        assert!(is_date(&part["joinedAt"]), "{part}");
    }
    assert!(
        is_one_of(
            &c["conversationType"],
            &["admin_astrologer", "user_astrologer", "group"]
        ),
        "{c}"
    );
    let last = &c["lastMessage"];
    if !last.is_null() {
        assert!(is_string(&last["content"]), "{last}");
        assert!(is_string(&last["senderId"]), "{last}");
        assert!(is_date(&last["timestamp"]), "{last}");
        assert!(is_one_of(&last["messageType"], &MESSAGE_TYPES), "{last}");
    }
    assert!(c["isActive"].is_boolean(), "{c}");
    let unread = c["unreadCount"].as_object().expect("unreadCount is a map");
    assert_eq!(unread.len(), participants.len(), "{c}");
    for part in participants {
        let id = part["id"].as_str().unwrap();
        assert!(unread[id].is_u64(), "unreadCount of {id}: {c}");
    }
    assert!(
        is_one_of(
            &c["contextType"],
            &["consultation", "service_request", "support", "general"]
        ),
        "{c}"
    );
    assert!(is_null_or_string(c.get("contextId")), "{c}");
    assert!(is_date(&c["createdAt"]), "{c}");
    assert!(is_date(&c["updatedAt"]), "{c}");
}

/// The fields of the seed's `Call` with its JSON types.
fn assert_call_record(c: &Value) {
    for id in ["_id", "callerId", "calleeId", "agoraChannelName"] {
        assert!(is_string(&c[id]), "{id}: {c}");
    }
    assert_eq!(c["_id"], c["callId"], "{c}");
    assert!(is_one_of(&c["callerType"], &KINDS), "{c}");
    assert!(is_one_of(&c["calleeType"], &KINDS), "{c}");
    assert!(is_one_of(&c["callType"], &["voice", "video"]), "{c}");
    assert!(is_one_of(&c["status"], &CALL_STATUSES), "{c}");
    assert!(c.get("agoraToken").is_some_and(Value::is_null), "{c}");
    assert!(c["agoraUid"].is_u64(), "{c}");
    assert_eq!(c["agoraUid"], 0);
    for date in ["initiatedAt", "createdAt", "updatedAt"] {
        assert!(is_date(&c[date]), "{date}: {c}");
    }
    for date in ["answeredAt", "endedAt"] {
        assert!(is_null_or_date(c.get(date)), "{date}: {c}");
    }
    assert!(c["duration"].is_u64(), "{c}");
    assert!(
        c["endReason"].is_null() || is_one_of(&c["endReason"], &END_REASONS),
        "{c}"
    );
    for id in ["endedBy", "conversationId"] {
        assert!(is_null_or_string(c.get(id)), "{id}: {c}");
    }
    assert!(c.get("consultationId").is_some_and(Value::is_null), "{c}");
}

/// Switchboard's error body: `{error: {code, message}}` with this status and code.
fn assert_refused(status: u16, body: &Value, want: (u16, &str)) {
    assert_eq!(status, want.0, "{body}");
    assert_eq!(code(body), want.1, "{body}");
    assert!(is_string(&body["error"]["message"]), "{body}");
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

/// Waits for `event` about call `call_id` on client `name`.
async fn call_event(p: &mut Puppet, name: &str, event: &str, call_id: &str) -> Value {
    let (name, event, call_id) = (name.to_owned(), event.to_owned(), call_id.to_owned());
    p.wait(move |v| {
        v["name"] == name.as_str()
            && v["type"] == "event"
            && v["event"] == event.as_str()
            && v["args"][0]["callId"] == call_id.as_str()
    })
    .await["args"][0]
        .clone()
}

/// The seed's chat flow over one transport.
async fn chat_flow(transport: &str) {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let conv = srv.direct(user, astro);
    let user_admin = srv.direct(user, admin);
    let mut p = Puppet::start(srv.addr_of("astrology"));
    sign_in(&mut p, &srv, "user", user, transport).await;
    sign_in(&mut p, &srv, "astro", astro, transport).await;
    sign_in(&mut p, &srv, "admin", admin, transport).await;
    // Another app's client of the astrologer, moving a canonical read cursor.
    p.connect_at(
        "astro-canonical",
        srv.addr(),
        json!({"auth": {"token": srv.token_for(astro)}, "transports": [transport]}),
    )
    .await;

    // `dm:join_conversation {conversationId, userId, userType}` → `dm:joined {conversationId}`.
    for (name, id, kind) in [("user", user, "user"), ("astro", astro, "astrologer")] {
        p.emit(
            name,
            "dm:join_conversation",
            json!([{"conversationId": s(conv), "userId": s(id), "userType": kind}]),
        );
        let joined = p.event(name, "dm:joined").await;
        assert!(is_string(&joined["conversationId"]), "{joined}");
        assert_eq!(joined["conversationId"], s(conv));
    }

    // A message reaches the room, sender included, with every DirectMessage field. The sender
    // is the token's user, whatever the payload claims.
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(astro), "recipientType": "astrologer",
                "content": "Namaste", "messageType": "text",
                "senderId": s(admin), "senderType": "admin"}]),
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
        assert!(m["mediaUrl"].is_null() && m["replyTo"].is_null());
    }
    assert_eq!(mine["_id"], theirs["_id"]);
    let first = theirs["_id"].as_str().unwrap().to_owned();

    // The astrologer's reply names the user as recipient; without `messageType` it is `text`.
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(user), "recipientType": "user", "content": "Hello"}]),
    );
    let reply = message_with(&mut p, "user", "Hello").await;
    assert_direct_message(&reply, astro, "astrologer");
    assert_eq!(reply["recipientId"], s(user));
    assert_eq!(reply["recipientType"], "user");
    assert_eq!(reply["messageType"], "text");
    message_with(&mut p, "astro", "Hello").await;

    // An image answering the first message: `mediaUrl` and `replyTo` are strings.
    let chart = "https://example.com/chart.png";
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(astro), "recipientType": "astrologer",
                "content": "My chart", "messageType": "image", "mediaUrl": chart, "replyTo": first}]),
    );
    let image = message_with(&mut p, "astro", "My chart").await;
    assert_direct_message(&image, user, "user");
    assert_eq!(image["messageType"], "image");
    assert_eq!(image["mediaUrl"], chart);
    assert_eq!(image["replyTo"], first.as_str());
    message_with(&mut p, "user", "My chart").await;

    // Typing reaches the other side (not the typist), as the token's user.
    p.emit(
        "astro",
        "dm:typing_start",
        json!([{"conversationId": s(conv), "userId": s(admin)}]),
    );
    let typing = p.event("user", "dm:typing_start").await;
    assert!(is_string(&typing["conversationId"]) && is_string(&typing["userId"]));
    assert_eq!(typing["conversationId"], s(conv));
    assert_eq!(typing["userId"], s(astro));
    p.emit(
        "astro",
        "dm:typing_stop",
        json!([{"conversationId": s(conv), "userId": s(astro)}]),
    );
    let stop = p.event("user", "dm:typing_stop").await;
    assert_eq!(stop["conversationId"], s(conv));
    assert_eq!(stop["userId"], s(astro));
    // The typist's own events run in order: once its next message came back, any echo of its
    // typing would have come first.
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": s(conv), "content": "typed"}]),
    );
    message_with(&mut p, "astro", "typed").await;
    message_with(&mut p, "user", "typed").await;
    let echoed = p.unconsumed("astro");
    assert!(
        !echoed.iter().any(|e| e.starts_with("dm:typing")),
        "the typist heard its own typing: {echoed:?}"
    );

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
    assert!(is_string(&read["conversationId"]) && is_string(&read["readBy"]));
    assert_eq!(read["conversationId"], s(conv));
    assert_eq!(read["readBy"], s(astro));
    assert_eq!(read["messageIds"], json!([first]));

    // The app's own mark names its ids and is announced to the room, the reader included.
    let reply_id = reply["_id"].as_str().unwrap().to_owned();
    p.emit(
        "user",
        "dm:mark_read",
        json!([{"conversationId": s(conv), "messageIds": [reply_id]}]),
    );
    let read = p.event("astro", "dm:messages_read").await;
    assert_eq!(read["conversationId"], s(conv));
    assert_eq!(read["messageIds"], json!([reply_id]));
    assert_eq!(read["readBy"], s(user));
    let own = p.event("user", "dm:messages_read").await;
    assert_eq!(own["messageIds"], json!([reply_id]));
    assert_eq!(own["readBy"], s(user));

    // After leaving the room the user hears nothing of it; a later message in another
    // conversation shows the delivery order went past it.
    p.emit(
        "user",
        "dm:leave_conversation",
        json!([{"conversationId": s(conv)}]),
    );
    // The leave runs before this send (one socket's events run in order): its echo is the
    // barrier.
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
    assert_direct_message(&after, admin, "admin");
    assert_eq!(after["recipientType"], "user");
    let leaked = p.unconsumed("user");
    assert!(
        !leaked.iter().any(|e| e == "dm:typing_start"),
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
    assert_eq!(
        p.event("user", "dm:joined").await["conversationId"],
        s(conv)
    );
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
    let support_id = support["conversation"]["_id"].as_str().unwrap().to_owned();
    p.emit(
        "astro",
        "dm:send_message",
        json!([{"conversationId": support_id, "recipientId": s(admin), "recipientType": "admin", "content": "To the admin"}]),
    );
    let to_admin = message_with(&mut p, "admin", "To the admin").await;
    assert_direct_message(&to_admin, astro, "astrologer");
    assert_eq!(to_admin["conversationId"], support_id.as_str());
    assert_eq!(to_admin["recipientId"], s(admin));
    assert_eq!(to_admin["recipientType"], "admin");
    let echo = message_with(&mut p, "astro", "To the admin").await;
    assert_eq!(echo["recipientId"], s(admin));
}

#[actix_web::test]
async fn the_unchanged_app_chats_over_websocket() {
    chat_flow("websocket").await;
}

#[actix_web::test]
async fn the_unchanged_app_chats_over_polling() {
    chat_flow("polling").await;
}

/// Waits (bounded) until `GET /api/calls/:id` (the seed's `Call`) satisfies `done`. The call is
/// known from its first ring on (from memory until its record is written), so anything but 200
/// fails at once.
async fn call_record(
    srv: &TestServer,
    token: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = srv.get(&format!("/api/calls/{id}"), Some(token)).await;
        assert_eq!(status, 200, "call {id}: {body}");
        assert_eq!(body["success"], true);
        last = body["call"].clone();
        if done(&last) {
            assert_call_record(&last);
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} never reached the expected state: {last}")
}

/// The record once the call ended.
async fn ended_record(srv: &TestServer, token: &str, id: &str) -> Value {
    call_record(srv, token, id, |c| !c["endReason"].is_null()).await
}

/// `call:initiated` on the caller and `call:incoming` on the callee: the call id and the
/// `call:incoming` payload.
async fn rings(p: &mut Puppet, caller: &str, callee: &str) -> (String, Value) {
    let initiated = p.event(caller, "call:initiated").await;
    let id = initiated["callId"].as_str().unwrap().to_owned();
    let incoming = call_event(p, callee, "call:incoming", &id).await;
    (id, incoming)
}

/// The seed's call flow over one transport.
async fn call_flow(transport: &str) {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let conv = srv.direct(user, astro);
    let (tu, ta) = (srv.token_for(user), srv.token_for(astro));
    let avatar = "https://example.com/uma.png";
    let (status, body) = srv
        .call(
            "PATCH",
            "/api/users/me",
            Some(json!({"avatar": avatar})),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut p = Puppet::start(srv.addr_of("astrology"));
    sign_in(&mut p, &srv, "user", user, transport).await;
    sign_in(&mut p, &srv, "astro", astro, transport).await;

    // A voice call over Agora: ids are strings, `callType` is `voice`, tokens are valid for
    // uid 0 (the app joins with uid 0). `calleeType` is the callee's role, whatever is sent.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "calleeType": "admin", "callType": "voice"}]),
    );
    let initiated = p.event("user", "call:initiated").await;
    assert!(is_string(&initiated["callId"]), "{initiated}");
    assert!(is_string(&initiated["channelName"]), "{initiated}");
    assert!(is_string(&initiated["agoraToken"]), "{initiated}");
    let call_id = initiated["callId"].as_str().unwrap().to_owned();
    let channel = initiated["channelName"].as_str().unwrap().to_owned();
    assert_eq!(initiated["callType"], "voice");
    assert_valid_for_uid_0(initiated["agoraToken"].as_str().unwrap(), &channel);
    let incoming = call_event(&mut p, "astro", "call:incoming", &call_id).await;
    assert_eq!(incoming["callerId"], s(user));
    assert_eq!(incoming["callerType"], "user");
    assert_eq!(incoming["callerName"], "Uma");
    assert!(
        incoming.get("callerPhone").is_some_and(Value::is_null),
        "{incoming}"
    );
    assert_eq!(incoming["callerAvatar"], avatar);
    assert_eq!(incoming["callType"], "voice");
    assert_eq!(incoming["channelName"], channel.as_str());
    assert!(is_string(&incoming["agoraToken"]), "{incoming}");
    assert_valid_for_uid_0(incoming["agoraToken"].as_str().unwrap(), &channel);
    p.emit("astro", "call:accept", json!([{"callId": call_id}]));
    let accepted = call_event(&mut p, "user", "call:accepted", &call_id).await;
    assert!(is_string(&accepted["callId"]), "{accepted}");
    let live = call_record(&srv, &tu, &call_id, |c| c["status"] == "ongoing").await;
    assert!(is_date(&live["answeredAt"]), "{live}");
    assert!(
        live["endedAt"].is_null() && live["endReason"].is_null(),
        "{live}"
    );
    assert_eq!(live["calleeType"], "astrologer");
    // The callee hangs up: the caller hears it, with the duration the server measured (the
    // client's figure is not taken).
    p.emit(
        "astro",
        "call:end",
        json!([{"callId": call_id, "duration": 999}]),
    );
    let ended = call_event(&mut p, "user", "call:ended", &call_id).await;
    assert!(ended["duration"].is_u64(), "{ended}");
    assert!(ended["duration"].as_u64().unwrap() < 999, "{ended}");
    assert_eq!(ended["endReason"], "completed");
    // The side that hung up hears the same end (its other devices learn the call is over).
    let own = call_event(&mut p, "astro", "call:ended", &call_id).await;
    assert_eq!(own["duration"], ended["duration"]);
    let record = ended_record(&srv, &tu, &call_id).await;
    assert_eq!(record["status"], "ended");
    assert_eq!(record["endReason"], "completed");
    assert_eq!(record["endedBy"], s(astro));
    assert_eq!(record["callerId"], s(user));
    assert_eq!(record["calleeId"], s(astro));
    assert_eq!(record["agoraChannelName"], channel.as_str());
    assert!(is_date(&record["endedAt"]), "{record}");
    // The call log posted in their conversation is a `system` message to the app.
    let log = p
        .wait(|v| {
            v["name"] == "astro"
                && v["event"] == "dm:message_received"
                && v["args"][0]["type"] == "voice_call"
        })
        .await["args"][0]
        .clone();
    assert_direct_message(&log, user, "user");
    assert_eq!(log["messageType"], "system");
    assert_eq!(log["conversationId"], s(conv));

    // A video call the caller ends after the answer: the callee hears it.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "calleeType": "astrologer", "callType": "video"}]),
    );
    let (video, ring) = rings(&mut p, "user", "astro").await;
    assert_eq!(ring["callType"], "video");
    p.emit("astro", "call:accept", json!([{"callId": video}]));
    call_event(&mut p, "user", "call:accepted", &video).await;
    p.emit(
        "user",
        "call:end",
        json!([{"callId": video, "duration": 3}]),
    );
    let ended = call_event(&mut p, "astro", "call:ended", &video).await;
    assert!(
        is_string(&ended["callId"]) && ended["duration"].is_u64(),
        "{ended}"
    );
    assert_eq!(ended["endReason"], "completed");
    let record = ended_record(&srv, &ta, &video).await;
    assert_eq!(record["callType"], "video");
    assert_eq!(record["endedBy"], s(user));

    // A video call the astrologer rejects with a reason, then one without.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "video"}]),
    );
    let (rejected_id, _) = rings(&mut p, "user", "astro").await;
    p.emit(
        "astro",
        "call:reject",
        json!([{"callId": rejected_id, "reason": "declined"}]),
    );
    let rejected = call_event(&mut p, "user", "call:rejected", &rejected_id).await;
    assert_eq!(rejected["reason"], "declined");
    assert_eq!(rejected["endReason"], "rejected");
    let record = ended_record(&srv, &tu, &rejected_id).await;
    assert_eq!(record["status"], "rejected");
    assert_eq!(record["endReason"], "rejected");
    assert!(record["answeredAt"].is_null(), "{record}");
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "voice"}]),
    );
    let (plain, _) = rings(&mut p, "user", "astro").await;
    p.emit("astro", "call:reject", json!([{"callId": plain}]));
    let rejected = call_event(&mut p, "user", "call:rejected", &plain).await;
    assert!(is_string(&rejected["reason"]), "{rejected}");
    assert_eq!(rejected["endReason"], "rejected");

    // Unanswered: `call:missed` to the callee, with `no_answer`.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "voice"}]),
    );
    let (missed_id, _) = rings(&mut p, "user", "astro").await;
    let missed = call_event(&mut p, "astro", "call:missed", &missed_id).await;
    assert!(is_string(&missed["callId"]), "{missed}");
    assert_eq!(missed["endReason"], "no_answer");
    // The caller learns it too.
    let gave_up = call_event(&mut p, "user", "call:missed", &missed_id).await;
    assert_eq!(gave_up["endReason"], "no_answer");
    let record = ended_record(&srv, &ta, &missed_id).await;
    assert_eq!(record["status"], "missed");
    assert_eq!(record["endReason"], "no_answer");

    // The caller hangs up while it rings: the callee's call ends as `cancelled`.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "voice"}]),
    );
    let (cancelled_id, _) = rings(&mut p, "user", "astro").await;
    p.emit("user", "call:end", json!([{"callId": cancelled_id}]));
    let cancelled = call_event(&mut p, "astro", "call:ended", &cancelled_id).await;
    assert_eq!(cancelled["endReason"], "cancelled");
    assert_eq!(cancelled["duration"], 0);
    let record = ended_record(&srv, &tu, &cancelled_id).await;
    assert_eq!(record["status"], "ended");
    assert_eq!(record["endReason"], "cancelled");

    // Call failures: `call:error` with a message.
    p.emit("astro", "call:accept", json!([{"callId": "no-such-call"}]));
    let err = p.event("astro", "call:error").await;
    assert!(is_string(&err["message"]), "{err}");
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": "987654321", "callType": "voice"}]),
    );
    let err = p.event("user", "call:error").await;
    assert!(is_string(&err["message"]), "{err}");
}

#[actix_web::test]
async fn the_unchanged_app_calls_over_websocket() {
    call_flow("websocket").await;
}

#[actix_web::test]
async fn the_unchanged_app_calls_over_polling() {
    call_flow("polling").await;
}

/// What the seed's REST routes "emit via Socket.IO", over one transport: sends into support and
/// direct conversations reach the other side's socket, REST calls ring the callee and REST ends
/// reach the other party.
async fn rest_reaches_the_app(transport: &str) {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let conv = srv.direct(user, astro);
    let (tu, ta, tadm) = (
        srv.token_for(user),
        srv.token_for(astro),
        srv.token_for(admin),
    );
    let mut p = Puppet::start(srv.addr_of("astrology"));
    sign_in(&mut p, &srv, "user", user, transport).await;
    sign_in(&mut p, &srv, "astro", astro, transport).await;
    sign_in(&mut p, &srv, "admin", admin, transport).await;

    // POST /api/admin/conversations/:astrologerId/messages → the astrologer's socket.
    let (status, sent) = srv
        .post(
            &format!("/api/admin/conversations/{astro}/messages"),
            json!({"content": "Your schedule", "messageType": "text"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let got = message_with(&mut p, "astro", "Your schedule").await;
    assert_direct_message(&got, admin, "admin");
    assert_eq!(got["_id"], sent["message"]["_id"]);
    assert_eq!(got["recipientId"], s(astro));
    assert_eq!(got["recipientType"], "astrologer");
    message_with(&mut p, "admin", "Your schedule").await;

    // POST /api/conversations/admin/messages → the admins' sockets.
    let (status, sent) = srv
        .post(
            "/api/conversations/admin/messages",
            json!({"content": "Noted"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let got = message_with(&mut p, "admin", "Noted").await;
    assert_direct_message(&got, astro, "astrologer");
    assert_eq!(got["recipientType"], "admin");
    assert_eq!(got["conversationId"], sent["message"]["conversationId"]);

    // POST /api/conversations/:id/messages → the other member's socket.
    let (status, sent) = srv
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "A question", "messageType": "text"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let got = message_with(&mut p, "astro", "A question").await;
    assert_direct_message(&got, user, "user");
    assert_eq!(got["conversationId"], s(conv));
    assert_eq!(got["recipientId"], s(astro));

    // POST /api/admin/calls/initiate rings the astrologer; its answer reaches the admin's
    // socket; POST /api/calls/:id/end reaches the astrologer.
    let (status, body) = srv
        .post(
            "/api/admin/calls/initiate",
            json!({"astrologerId": s(astro), "callType": "video"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    let call_id = body["callId"].as_str().unwrap().to_owned();
    let channel = body["channelName"].as_str().unwrap().to_owned();
    assert_eq!(body["callType"], "video");
    assert!(body["agoraUid"].is_u64() && body["agoraUid"] == 0, "{body}");
    assert_valid_for_uid_0(body["agoraToken"].as_str().unwrap(), &channel);
    let incoming = call_event(&mut p, "astro", "call:incoming", &call_id).await;
    assert_eq!(incoming["callerId"], s(admin));
    assert_eq!(incoming["callerType"], "admin");
    assert_eq!(incoming["callerName"], "Ada");
    assert_eq!(incoming["callType"], "video");
    assert_eq!(incoming["channelName"], channel.as_str());
    assert_valid_for_uid_0(incoming["agoraToken"].as_str().unwrap(), &channel);
    p.emit("astro", "call:accept", json!([{"callId": call_id}]));
    call_event(&mut p, "admin", "call:accepted", &call_id).await;
    let (status, body) = srv
        .post(&format!("/api/calls/{call_id}/end"), json!({}), Some(&tadm))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let ended = call_event(&mut p, "astro", "call:ended", &call_id).await;
    assert_eq!(ended["endReason"], "completed");
    assert!(ended["duration"].is_u64(), "{ended}");
    let record = ended_record(&srv, &ta, &call_id).await;
    assert_eq!(record["callerType"], "admin");
    assert_eq!(record["calleeType"], "astrologer");
    assert_eq!(record["status"], "ended");

    // POST /api/calls/initiate rings the callee; ended over REST while it rings: cancelled.
    let (status, body) = srv
        .post(
            "/api/calls/initiate",
            json!({"calleeId": s(astro), "calleeType": "astrologer", "callType": "voice"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let call_id = body["callId"].as_str().unwrap().to_owned();
    let incoming = call_event(&mut p, "astro", "call:incoming", &call_id).await;
    assert_eq!(incoming["callerId"], s(user));
    assert_eq!(incoming["callType"], "voice");
    let (status, _) = srv
        .post(&format!("/api/calls/{call_id}/end"), json!({}), Some(&tu))
        .await;
    assert_eq!(status, 200);
    let ended = call_event(&mut p, "astro", "call:ended", &call_id).await;
    assert_eq!(ended["endReason"], "cancelled");
}

#[actix_web::test]
async fn rest_sends_and_calls_reach_the_app_over_websocket() {
    rest_reaches_the_app("websocket").await;
}

#[actix_web::test]
async fn rest_sends_and_calls_reach_the_app_over_polling() {
    rest_reaches_the_app("polling").await;
}

/// Starts a call from `caller` to `callee` and waits for its refusal in `call:error`: the code.
async fn call_refused(p: &mut Puppet, caller: &str, callee: i64) -> String {
    p.emit(
        caller,
        "call:initiate",
        json!([{"calleeId": s(callee), "callType": "voice"}]),
    );
    let err = p.event(caller, "call:error").await;
    assert!(is_string(&err["message"]), "{err}");
    err["code"].as_str().unwrap().to_owned()
}

/// Starts a call that rings, then cancels it (and waits until the callee heard).
async fn call_and_cancel(p: &mut Puppet, caller: &str, callee_name: &str, callee: i64) {
    p.emit(
        caller,
        "call:initiate",
        json!([{"calleeId": s(callee), "callType": "voice"}]),
    );
    let (id, _) = rings(p, caller, callee_name).await;
    p.emit(caller, "call:end", json!([{"callId": id}]));
    call_event(p, callee_name, "call:ended", &id).await;
}

/// The document's security list as the unchanged app meets it, over one transport: refused
/// tokens, membership, message types, `CONTACT_POLICY=roles` and the rate limits, each failure
/// in the app's own error event with a `message`.
async fn refusals(transport: &str) {
    let srv = astrology_server_with(|c| {
        c.contact_policy = ContactPolicy::Roles;
        c.message_rate_per_min = 1;
        c.message_burst = 5;
        c.call_rate_per_hour = 1;
        c.call_burst = 3;
    })
    .await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let other = srv.create_user("Vic", "vic@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let stranger = srv.create_user("Bea", "bea@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let consulted = srv.direct(user, astro);
    let staff = srv.direct(astro, admin);
    let chatty = srv.direct(other, admin);
    let mut p = Puppet::start(srv.addr_of("astrology"));

    // A token Switchboard did not sign: the connection is refused.
    p.open("forger", app("not.a.token", transport));
    let refused = p
        .wait(|v| v["name"] == "forger" && (v["type"] == "connect" || v["type"] == "connect_error"))
        .await;
    assert_eq!(refused["type"], "connect_error", "{refused}");
    assert!(is_string(&refused["message"]), "{refused}");

    for (name, id) in [
        ("user", user),
        ("other", other),
        ("astro", astro),
        ("stranger", stranger),
        ("admin", admin),
    ] {
        sign_in(&mut p, &srv, name, id, transport).await;
    }

    // Rooms and conversations of others stay closed.
    p.emit(
        "user",
        "dm:join_conversation",
        json!([{"conversationId": s(staff), "userId": s(astro), "userType": "astrologer"}]),
    );
    let err = p.event("user", "dm:error").await;
    assert!(is_string(&err["message"]), "{err}");
    assert_eq!(err["code"], "forbidden");
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(staff), "recipientId": s(admin), "content": "psst"}]),
    );
    let err = p.event("user", "dm:error").await;
    assert!(is_string(&err["message"]), "{err}");
    assert_eq!(err["code"], "forbidden");

    // Message types: the seed's client types pass; unknown ones and `system` (written by the
    // server only) are refused.
    for bad in ["system", "sticker"] {
        p.emit(
            "user",
            "dm:send_message",
            json!([{"conversationId": s(consulted), "content": "x", "messageType": bad}]),
        );
        let err = p.event("user", "dm:error").await;
        assert!(is_string(&err["message"]), "{bad}: {err}");
        assert_eq!(err["code"], "validation_failed", "{bad}: {err}");
    }
    for kind in ["audio", "file"] {
        p.emit(
            "user",
            "dm:send_message",
            json!([{"conversationId": s(consulted), "content": kind, "messageType": kind,
                    "mediaUrl": format!("https://example.com/a.{kind}")}]),
        );
        let m = message_with(&mut p, "astro", kind).await;
        assert_eq!(m["messageType"], kind);
    }

    // Who may call whom: users reach the astrologers they consulted, astrologers their own
    // users and the admins, admins anyone.
    assert_eq!(call_refused(&mut p, "user", stranger).await, "not_allowed");
    assert_eq!(call_refused(&mut p, "user", other).await, "not_allowed");
    assert_eq!(call_refused(&mut p, "astro", other).await, "not_allowed");
    call_and_cancel(&mut p, "user", "astro", astro).await;
    call_and_cancel(&mut p, "astro", "user", user).await;

    // Call rate: three at once, then `rate_limited`.
    for _ in 0..3 {
        call_and_cancel(&mut p, "admin", "stranger", stranger).await;
    }
    assert_eq!(
        call_refused(&mut p, "admin", stranger).await,
        "rate_limited"
    );

    // Message rate: five at once, then `rate_limited` in `dm:error`.
    for n in 0..5 {
        let text = format!("hello {n}");
        p.emit(
            "other",
            "dm:send_message",
            json!([{"conversationId": s(chatty), "recipientId": s(admin), "content": text}]),
        );
        message_with(&mut p, "admin", &text).await;
    }
    p.emit(
        "other",
        "dm:send_message",
        json!([{"conversationId": s(chatty), "recipientId": s(admin), "content": "one more"}]),
    );
    let err = p.event("other", "dm:error").await;
    assert!(is_string(&err["message"]), "{err}");
    assert_eq!(err["code"], "rate_limited");
}

#[actix_web::test]
async fn refusals_reach_the_app_in_its_error_events_over_websocket() {
    refusals("websocket").await;
}

#[actix_web::test]
async fn refusals_reach_the_app_in_its_error_events_over_polling() {
    refusals("polling").await;
}

#[actix_web::test]
async fn rest_conversation_routes_answer_the_seed_models() {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let second = srv.create_user("Sol", "sol@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let (tu, ta, tadm) = (
        srv.token_for(user),
        srv.token_for(astro),
        srv.token_for(admin),
    );
    let conv = srv.direct(user, astro);

    // GET /api/conversations/:id before any message: no last message, nothing unread.
    let (status, body) = srv
        .get(&format!("/api/conversations/{conv}"), Some(&tu))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let c = &body["conversation"];
    assert_direct_conversation(c);
    assert!(c["lastMessage"].is_null(), "{c}");
    assert_eq!(c["unreadCount"], json!({s(user): 0, s(astro): 0}));

    // POST /api/conversations/:id/messages: the DirectMessage fields.
    let (status, sent) = srv
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "Hi", "messageType": "text"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["success"], true);
    let hi = &sent["message"];
    assert_direct_message(hi, user, "user");
    assert_eq!(hi["conversationId"], s(conv));
    assert_eq!(hi["recipientId"], s(astro));
    assert_eq!(hi["recipientType"], "astrologer");
    assert_eq!(hi["status"], "sent");
    assert_eq!(hi["content"], "Hi");
    assert!(
        hi["readAt"].is_null() && hi["deliveredAt"].is_null(),
        "{hi}"
    );
    let hi_id = hi["_id"].as_str().unwrap().to_owned();
    let (status, sent) = srv
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "Chart", "messageType": "image",
                   "mediaUrl": "https://example.com/c.png", "replyTo": hi_id}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let chart = &sent["message"];
    assert_direct_message(chart, astro, "astrologer");
    assert_eq!(chart["messageType"], "image");
    assert_eq!(chart["mediaUrl"], "https://example.com/c.png");
    assert_eq!(chart["replyTo"], hi_id.as_str());
    assert_eq!(chart["recipientType"], "user");
    let (status, sent) = srv
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "Thanks"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["message"]["messageType"], "text");

    // Statuses come from the recipients' cursors.
    let seq = hi["seq"].as_i64().unwrap();
    switchboard::db::conversations::move_cursor(
        &mut srv.db.conn(),
        conv,
        astro,
        switchboard::db::conversations::ReceiptKind::Read,
        &switchboard::realtime::protocol::ReceiptCursor::Seq(seq),
    )
    .unwrap();

    // GET /api/conversations/:id/messages, paginated.
    let (status, page) = srv
        .get(&format!("/api/conversations/{conv}/messages"), Some(&tu))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["success"], true);
    assert_eq!(page["conversationId"], s(conv));
    assert!(page["hasMore"].is_boolean(), "{page}");
    let all = page["messages"].as_array().unwrap();
    assert_eq!(all.len(), 3, "{page}");
    for m in all {
        assert!(m["_id"].is_string(), "{m}");
    }
    let m = &all[0];
    assert_direct_message(m, user, "user");
    assert_eq!(m["_id"], hi_id.as_str());
    assert_eq!(m["status"], "read");
    assert!(is_date(&m["readAt"]) && is_date(&m["deliveredAt"]), "{m}");
    assert_eq!(all[1]["status"], "sent");
    let (status, newest) = srv
        .get(
            &format!("/api/conversations/{conv}/messages?limit=2"),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 200, "{newest}");
    let two = newest["messages"].as_array().unwrap();
    assert_eq!(two.len(), 2, "{newest}");
    assert_eq!(two[1]["content"], "Thanks");
    assert_eq!(newest["hasMore"], true);
    let before = newest["cursors"]["before"]
        .as_i64()
        .expect("cursors.before");
    let (status, older) = srv
        .get(
            &format!("/api/conversations/{conv}/messages?limit=2&before={before}"),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 200, "{older}");
    let rest = older["messages"].as_array().unwrap();
    assert_eq!(rest.len(), 1, "{older}");
    assert_eq!(rest[0]["_id"], hi_id.as_str());
    assert_eq!(older["hasMore"], false);

    // GET /api/conversations/:id: participants, type, last message, unread counts per
    // participant.
    let (status, body) = srv
        .get(&format!("/api/conversations/{conv}"), Some(&ta))
        .await;
    assert_eq!(status, 200);
    let c = &body["conversation"];
    assert_direct_conversation(c);
    assert_eq!(c["_id"], s(conv));
    assert_eq!(c["conversationType"], "user_astrologer");
    assert_eq!(c["contextType"], "general");
    assert!(c["contextId"].is_null());
    assert_eq!(c["isActive"], true);
    let participants = c["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 2);
    let kinds: Vec<(&str, &str)> = participants
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&(s(user).as_str(), "user")));
    assert!(kinds.contains(&(s(astro).as_str(), "astrologer")));
    let last = &c["lastMessage"];
    assert_eq!(last["content"], "Thanks");
    assert_eq!(last["senderId"], s(user));
    assert_eq!(last["messageType"], "text");
    assert_eq!(c["unreadCount"], json!({s(user): 1, s(astro): 1}));

    // A consultation's conversation carries its context; a group is a `group` with no
    // recipient.
    let (status, created) = srv
        .post(
            "/api/conversations",
            json!({"userId": s(second), "contextType": "consultation", "contextId": "c-42"}),
            Some(&tu),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {created}");
    let consultation = created["conversation"]["id"].as_str().unwrap().to_owned();
    let (_, body) = srv
        .get(&format!("/api/conversations/{consultation}"), Some(&tu))
        .await;
    assert_direct_conversation(&body["conversation"]);
    assert_eq!(body["conversation"]["contextType"], "consultation");
    assert_eq!(body["conversation"]["contextId"], "c-42");
    let (status, created) = srv
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Reading circle", "members": [s(astro), s(second)]}),
            Some(&tadm),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {created}");
    let group = created["conversation"]["id"].as_str().unwrap().to_owned();
    let (status, sent) = srv
        .post(
            &format!("/api/conversations/{group}/messages"),
            json!({"content": "Welcome"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_direct_message(&sent["message"], admin, "admin");
    assert!(sent["message"]["recipientId"].is_null(), "{sent}");
    assert!(sent["message"]["recipientType"].is_null(), "{sent}");
    let (_, body) = srv
        .get(&format!("/api/conversations/{group}"), Some(&ta))
        .await;
    assert_direct_conversation(&body["conversation"]);
    assert_eq!(body["conversation"]["conversationType"], "group");
    assert_eq!(
        body["conversation"]["participants"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Support conversations. GET /api/conversations/admin: the astrologer's, with the admins.
    let (status, support) = srv.get("/api/conversations/admin", Some(&ta)).await;
    assert_eq!(status, 200, "{support}");
    assert_eq!(support["success"], true);
    let c = &support["conversation"];
    assert_direct_conversation(c);
    assert_eq!(c["conversationType"], "admin_astrologer");
    assert_eq!(c["contextType"], "support");
    assert!(support["unreadCount"].is_i64(), "{support}");
    assert_eq!(support["messages"], json!([]));
    let support_id = c["_id"].as_str().unwrap().to_owned();
    // POST /api/conversations/admin/messages.
    let (status, sent) = srv
        .post(
            "/api/conversations/admin/messages",
            json!({"content": "Need help", "messageType": "text"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["success"], true);
    assert_direct_message(&sent["message"], astro, "astrologer");
    assert_eq!(sent["message"]["conversationId"], support_id.as_str());
    assert_eq!(sent["message"]["recipientType"], "admin");
    // POST /api/admin/conversations/:astrologerId/messages.
    let (status, answer) = srv
        .post(
            &format!("/api/admin/conversations/{astro}/messages"),
            json!({"content": "On it"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["success"], true);
    assert_direct_message(&answer["message"], admin, "admin");
    assert_eq!(answer["message"]["conversationId"], support_id.as_str());
    assert_eq!(answer["message"]["recipientId"], s(astro));
    assert_eq!(answer["message"]["recipientType"], "astrologer");
    // GET /api/admin/conversations/:astrologerId: the conversation with recent messages.
    let (status, support) = srv
        .get(&format!("/api/admin/conversations/{astro}"), Some(&tadm))
        .await;
    assert_eq!(status, 200, "{support}");
    assert_eq!(support["success"], true);
    assert_direct_conversation(&support["conversation"]);
    assert_eq!(support["conversation"]["_id"], support_id.as_str());
    let unread = &support["conversation"]["unreadCount"];
    assert_eq!(unread[s(astro)], 1, "{unread}");
    assert_eq!(unread[s(admin)], 1, "{unread}");
    assert!(support["unreadCount"].is_i64(), "{support}");
    let recent = support["messages"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{support}");
    assert_direct_message(&recent[0], astro, "astrologer");
    assert_direct_message(&recent[1], admin, "admin");
    // GET /api/admin/conversations/:astrologerId/messages and
    // GET /api/conversations/admin/messages: the same page from both sides.
    let (status, admin_page) = srv
        .get(
            &format!("/api/admin/conversations/{astro}/messages"),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 200, "{admin_page}");
    let (status, staff_page) = srv
        .get("/api/conversations/admin/messages", Some(&ta))
        .await;
    assert_eq!(status, 200, "{staff_page}");
    for page in [&admin_page, &staff_page] {
        assert_eq!(page["success"], true);
        assert_eq!(page["conversationId"], support_id.as_str());
        assert!(page["hasMore"].is_boolean(), "{page}");
        let messages = page["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{page}");
        assert_direct_message(&messages[0], astro, "astrologer");
        assert_eq!(messages[0]["content"], "Need help");
        assert_direct_message(&messages[1], admin, "admin");
        assert_eq!(messages[1]["content"], "On it");
    }
    let (_, one) = srv
        .get(
            &format!("/api/admin/conversations/{astro}/messages?limit=1"),
            Some(&tadm),
        )
        .await;
    assert_eq!(one["messages"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["messages"][0]["content"], "On it");
    assert_eq!(one["hasMore"], true);
}

#[actix_web::test]
async fn rest_call_routes_answer_the_seed_models() {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let (tu, ta, tadm) = (
        srv.token_for(user),
        srv.token_for(astro),
        srv.token_for(admin),
    );

    // POST /api/calls/initiate: an Agora call with the seed's fields.
    let (status, body) = srv
        .post(
            "/api/calls/initiate",
            json!({"calleeId": s(astro), "calleeType": "astrologer", "callType": "voice"}),
            Some(&tu),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    assert!(
        is_string(&body["callId"]) && is_string(&body["channelName"]),
        "{body}"
    );
    let call_id = body["callId"].as_str().unwrap().to_owned();
    let channel = body["channelName"].as_str().unwrap().to_owned();
    assert_eq!(body["callType"], "voice");
    assert!(body["agoraUid"].is_u64(), "{body}");
    assert_eq!(body["agoraUid"], 0);
    assert_valid_for_uid_0(body["agoraToken"].as_str().unwrap(), &channel);
    // POST /api/calls/:id/end.
    let (status, ended) = srv
        .post(&format!("/api/calls/{call_id}/end"), json!({}), Some(&tu))
        .await;
    assert_eq!(status, 200, "{ended}");
    assert!(
        ended["success"].is_boolean() && ended["success"] == true,
        "{ended}"
    );
    let record = ended_record(&srv, &tu, &call_id).await;
    assert_eq!(record["_id"], call_id.as_str());
    assert_eq!(record["callerId"], s(user));
    assert_eq!(record["callerType"], "user");
    assert_eq!(record["calleeId"], s(astro));
    assert_eq!(record["calleeType"], "astrologer");
    assert_eq!(record["callType"], "voice");
    assert_eq!(record["status"], "ended");
    assert_eq!(record["endReason"], "cancelled");
    assert_eq!(record["endedBy"], s(user));
    assert_eq!(record["agoraChannelName"], channel.as_str());
    assert_eq!(record["duration"], 0);
    assert!(
        record["answeredAt"].is_null() && is_date(&record["endedAt"]),
        "{record}"
    );

    // POST /api/admin/calls/initiate: the admin calls an astrologer.
    let (status, body) = srv
        .post(
            "/api/admin/calls/initiate",
            json!({"astrologerId": s(astro), "callType": "video"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    let admin_call = body["callId"].as_str().unwrap().to_owned();
    let admin_channel = body["channelName"].as_str().unwrap().to_owned();
    assert_eq!(body["callType"], "video");
    assert_eq!(body["agoraUid"], 0);
    assert_valid_for_uid_0(body["agoraToken"].as_str().unwrap(), &admin_channel);
    let (status, _) = srv
        .post(
            &format!("/api/calls/{admin_call}/end"),
            json!({}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 200);
    let record = ended_record(&srv, &ta, &admin_call).await;
    assert_eq!(record["callerId"], s(admin));
    assert_eq!(record["callerType"], "admin");
    assert_eq!(record["calleeId"], s(astro));
    assert_eq!(record["callType"], "video");

    // GET /api/calls/history: newest first, a page at a time.
    let (status, history) = srv.get("/api/calls/history", Some(&ta)).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["success"], true);
    let calls = history["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{history}");
    for c in calls {
        assert_call_record(c);
    }
    assert_eq!(calls[0]["callId"], admin_call.as_str());
    assert_eq!(calls[1]["callId"], call_id.as_str());
    assert_eq!(calls[1]["endReason"], "cancelled");
    assert!(history["nextCursor"].is_null(), "{history}");
    let (_, first) = srv.get("/api/calls/history?limit=1", Some(&ta)).await;
    assert_eq!(first["calls"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["calls"][0]["callId"], admin_call.as_str());
    let cursor = first["nextCursor"].as_str().expect("nextCursor").to_owned();
    let (_, second) = srv
        .get(
            &format!("/api/calls/history?limit=1&cursor={cursor}"),
            Some(&ta),
        )
        .await;
    assert_eq!(second["calls"][0]["callId"], call_id.as_str(), "{second}");
    assert_call_record(&second["calls"][0]);

    // POST /api/calls/admin/token: a channel and a token the app can join with (uid 0).
    let (status, tok) = srv
        .post("/api/calls/admin/token", json!({}), Some(&tadm))
        .await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(tok["success"], true);
    assert!(
        is_string(&tok["channelName"]) && is_string(&tok["token"]),
        "{tok}"
    );
    assert!(tok["uid"].is_u64(), "{tok}");
    assert_eq!(tok["uid"], 0);
    assert_valid_for_uid_0(
        tok["token"].as_str().unwrap(),
        tok["channelName"].as_str().unwrap(),
    );
    let (status, tok) = srv
        .post(
            "/api/calls/admin/token",
            json!({"channelName": "support-7"}),
            Some(&tadm),
        )
        .await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(tok["channelName"], "support-7");
    assert_valid_for_uid_0(tok["token"].as_str().unwrap(), "support-7");
    // Other apps' listeners keep the caller's own uid.
    let mut res = srv
        .client
        .post(format!("http://{}/api/calls/admin/token", srv.addr()))
        .insert_header(("Authorization", format!("Bearer {tadm}")))
        .send_json(&json!({}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let canonical: Value = res.json().await.unwrap();
    assert_eq!(canonical["uid"], admin, "{canonical}");
}

#[actix_web::test]
async fn rest_refusals_use_switchboards_error_shape() {
    let srv = astrology_server().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let staff = srv.direct(astro, admin);
    let conv = srv.direct(user, astro);
    let (tu, tadm) = (srv.token_for(user), srv.token_for(admin));

    // `auth`: no token, no answer.
    let (status, body) = srv.get("/api/conversations/admin", None).await;
    assert_refused(status, &body, (401, "missing_token"));
    let (status, body) = srv
        .post("/api/calls/initiate", json!({"calleeId": s(astro)}), None)
        .await;
    assert_refused(status, &body, (401, "missing_token"));
    let (status, body) = srv.get("/api/calls/history", Some("not.a.token")).await;
    assert_refused(status, &body, (401, "invalid_token"));

    // `adminAuth`: admins only.
    let admin_only = [
        ("GET", format!("/api/admin/conversations/{astro}"), None),
        (
            "GET",
            format!("/api/admin/conversations/{astro}/messages"),
            None,
        ),
        (
            "POST",
            format!("/api/admin/conversations/{astro}/messages"),
            Some(json!({"content": "hi"})),
        ),
        (
            "POST",
            "/api/admin/calls/initiate".to_owned(),
            Some(json!({"astrologerId": s(astro), "callType": "voice"})),
        ),
        ("POST", "/api/calls/admin/token".to_owned(), Some(json!({}))),
    ];
    for (method, path, body) in admin_only {
        let (status, answer) = srv.call(method, &path, body, Some(&tu)).await;
        assert_refused(status, &answer, (403, "forbidden"));
    }

    // Conversations of others, and unknown ones.
    let (status, body) = srv
        .get(&format!("/api/conversations/{staff}"), Some(&tu))
        .await;
    assert_eq!(
        (status, is_string(&body["error"]["code"])),
        (403, true),
        "{body}"
    );
    let (status, body) = srv
        .post(
            &format!("/api/conversations/{staff}/messages"),
            json!({"content": "psst"}),
            Some(&tu),
        )
        .await;
    assert_refused(status, &body, (403, "forbidden"));
    let (status, body) = srv
        .get("/api/conversations/987654321/messages", Some(&tadm))
        .await;
    assert_refused(status, &body, (404, "not_found"));
    let (status, body) = srv.get("/api/calls/no-such-call", Some(&tu)).await;
    assert_refused(status, &body, (404, "not_found"));

    // Message types the server writes itself are refused.
    let (status, body) = srv
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "fake", "messageType": "system"}),
            Some(&tu),
        )
        .await;
    assert_refused(status, &body, (400, "validation_failed"));
}

#[actix_web::test]
async fn shared_routes_keep_canonical_shapes_unless_the_dialect_is_named() {
    let srv = TestServer::start().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let conv = srv.direct(user, astro);
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
