//! Seed 000 (lonestar) played with the real `socket.io-client` on the app's own listener, naming
//! no dialect and bringing no token in the handshake: the app connects, then emits
//! `authenticate` with its JWT string. Every call event of the seed's backend document in both
//! directions (`start_call` → `incoming_call`, `accept_call` → `call_accepted`, `reject_call` →
//! `call_rejected`, `end_call` → `call_ended` for both, flat `ice_candidate`, `sdp_offer` to the
//! callee, `sdp_answer` to the caller, a disconnect ending the call for the other party), over
//! websocket and over HTTP long-polling, with the JSON type of every field; the call record
//! written into the pair's DM on end (`voice_call`/`video_call`, `📞|📹 Call - m:ss`, metadata
//! `{duration, from, to, endTime}`) as REST returns it; the document's two DELETE routes on the
//! lonestar listener (own message, another's → 403, MASTER deletes any, unknown → 404); and a
//! bad or missing `authenticate` answered with `error{code: "unauthorized"}` and a disconnect.
//!
//! Readings where the document is silent:
//! - Ids are strings (`from`, `userId`, `callId`, the metadata's `from`/`to`): the seed's
//!   backend is MongoDB, whose ids are ObjectId strings; the app sends back the ids it got, so
//!   `start_call.to` is accepted as a string (and as a number).
//! - "The pair's DM chat" (`dm_${from}_${to}`) is the pair's one direct conversation, whichever
//!   of the two calls; Switchboard has no DM read route of its own, so the record is read with
//!   `GET /api/conversations/:id/messages` after `POST /api/conversations {userId}` finds it.
//! - `duration` counts whole seconds of the answered call (the seed counted from `start_call`,
//!   so its value also held the ring; a test ring lasts well under a second).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{code, TestServer, SECRET};
use serde_json::{json, Value};
use std::time::Duration;

fn s(id: i64) -> String {
    id.to_string()
}

/// socket.io-client options of the app: no token, no query, one transport.
fn via(transport: &str) -> Value {
    json!({ "transports": [transport] })
}

/// A server as the apps are served, with the REST helpers on the lonestar listener (the app's
/// REST client talks to the host its sockets use). A dropped device gets one second to come back.
async fn lonestar_server() -> TestServer {
    TestServer::start_apps(|c| c.call_reconnect_grace = Duration::from_secs(1))
        .await
        .rest_on("lonestar")
}

/// Connects `name` as the app does and authenticates with a string token. The ack (the app
/// asks for none) tells the test the token was taken; a canonical `ping` then proves the session
/// is live, so calls ring it (test synchronisation only).
async fn sign_in(p: &mut Puppet, srv: &TestServer, name: &str, user: i64, transport: &str) {
    let connected = p
        .connect_at(name, srv.addr_of("lonestar"), via(transport))
        .await;
    assert_eq!(connected["transport"], transport, "{connected}");
    let ack = p
        .call(name, "authenticate", json!([srv.token_for(user)]))
        .await;
    assert!(ack[0]["ok"].is_boolean(), "{ack:?}");
    assert_eq!(ack[0]["ok"], true);
    assert!(ack[0]["userId"].is_string(), "{ack:?}");
    assert_eq!(ack[0]["userId"], s(user));
    let pong = p.call(name, "ping", json!([{}])).await;
    assert!(pong[0].get("pong").is_some(), "{pong:?}");
}

/// Connects `name` exactly as the app does: `authenticate` without an ack, and its next event
/// right behind it (events sent before the token is checked wait for it).
async fn app_sign_in(p: &mut Puppet, srv: &TestServer, name: &str, user: i64, transport: &str) {
    let connected = p
        .connect_at(name, srv.addr_of("lonestar"), via(transport))
        .await;
    assert_eq!(connected["transport"], transport, "{connected}");
    p.emit(name, "authenticate", json!([srv.token_for(user)]));
}

/// Waits for `event` on `name` about call `call_id`; returns its payload.
async fn event_of(p: &mut Puppet, name: &str, event: &str, call_id: &str) -> Value {
    let line = p
        .wait(|v| {
            v["name"] == name
                && v["type"] == "event"
                && v["event"] == event
                && v["args"][0]["callId"] == call_id
        })
        .await;
    line["args"][0].clone()
}

/// Checks `incoming_call {callId, from, isVideo, sdp}` and returns the call id.
fn check_incoming(incoming: &Value, from: i64, video: bool, sdp: &Value) -> String {
    assert!(incoming["callId"].is_string(), "{incoming}");
    assert!(!incoming["callId"].as_str().unwrap().is_empty());
    assert!(incoming["from"].is_string(), "{incoming}");
    assert_eq!(incoming["from"], s(from));
    assert!(incoming["isVideo"].is_boolean(), "{incoming}");
    assert_eq!(incoming["isVideo"], video);
    assert!(incoming["sdp"].is_object(), "{incoming}");
    assert_eq!(&incoming["sdp"], sdp);
    incoming["callId"].as_str().unwrap().to_owned()
}

/// Checks `call_ended {callId, duration}` (duration: whole seconds, an integer).
fn check_ended(ended: &Value, call_id: &str) -> i64 {
    assert!(ended["callId"].is_string(), "{ended}");
    assert_eq!(ended["callId"], call_id);
    assert!(ended["duration"].is_i64(), "{ended}");
    let duration = ended["duration"].as_i64().unwrap();
    assert!((0..60).contains(&duration), "{ended}");
    duration
}

/// Sends a flat candidate from `from` and checks the other party gets it flat:
/// `{callId, candidate, sdpMid, sdpMLineIndex}`.
async fn check_ice(
    p: &mut Puppet,
    from: &str,
    to: &str,
    call_id: &str,
    candidate: &str,
    line: i64,
) {
    p.emit(
        from,
        "ice_candidate",
        json!([{"callId": call_id, "candidate": candidate, "sdpMid": line.to_string(), "sdpMLineIndex": line}]),
    );
    let ice = event_of(p, to, "ice_candidate", call_id).await;
    assert!(ice["candidate"].is_string(), "{ice}");
    assert_eq!(ice["candidate"], candidate);
    assert!(ice["sdpMid"].is_string(), "{ice}");
    assert_eq!(ice["sdpMid"], line.to_string());
    assert!(ice["sdpMLineIndex"].is_i64(), "{ice}");
    assert_eq!(ice["sdpMLineIndex"], line);
}

/// The seed's `formatDuration`: `m:ss`, or `h:mm:ss` from an hour on.
fn format_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The pair's direct conversation as the app's REST client finds it (get-or-create).
async fn dm_of(srv: &TestServer, me: i64, other: i64) -> String {
    let (status, body) = srv
        .post(
            "/api/conversations",
            json!({"userId": s(other)}),
            Some(&srv.token_for(me)),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    assert_eq!(body["conversation"]["type"], "direct");
    body["conversation"]["id"].as_str().unwrap().to_owned()
}

/// Waits (bounded) for the record of call `call_id` in conversation `conv`, read by `reader`
/// over REST: it is written once the call has ended, asynchronously.
async fn call_record(srv: &TestServer, reader: i64, conv: &str, call_id: &str) -> Value {
    let token = srv.token_for(reader);
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, body) = srv
            .get(&format!("/api/conversations/{conv}/messages"), Some(&token))
            .await;
        assert_eq!(status, 200, "{body}");
        if let Some(m) = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metadata"]["callId"] == call_id)
        {
            return m.clone();
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no record of call {call_id} in conversation {conv}: {last}")
}

/// Checks a record against the document's `Message.create`: sender `call.from`, `type`,
/// `content` and `metadata {duration, from, to, endTime}`.
fn check_record(m: &Value, conv: &str, video: bool, duration: i64, from: i64, to: i64) {
    assert!(m["id"].is_string(), "{m}");
    assert_eq!(m["conversationId"], conv);
    assert!(m["senderId"].is_string(), "{m}");
    assert_eq!(m["senderId"], s(from));
    assert!(m["type"].is_string(), "{m}");
    assert_eq!(m["type"], if video { "video_call" } else { "voice_call" });
    assert!(m["content"].is_string(), "{m}");
    let icon = if video { "📹" } else { "📞" };
    assert_eq!(
        m["content"],
        format!("{icon} Call - {}", format_duration(duration))
    );
    let meta = &m["metadata"];
    assert!(meta.is_object(), "{m}");
    assert!(meta["duration"].is_i64(), "{m}");
    assert_eq!(meta["duration"], duration);
    assert!(meta["from"].is_string(), "{m}");
    assert_eq!(meta["from"], s(from));
    assert!(meta["to"].is_string(), "{m}");
    assert_eq!(meta["to"], s(to));
    // `endTime: new Date()` reaches a client as an ISO 8601 string.
    let end = meta["endTime"].as_str().expect("endTime is a string");
    chrono::DateTime::parse_from_rfc3339(end).unwrap_or_else(|e| panic!("endTime {end}: {e}"));
}

/// Status and end reason of a call's row, once it reached an ended state (the row is written
/// behind the ring, asynchronously: bounded polling).
async fn ended_row(srv: &TestServer, id: &str) -> (String, Option<String>) {
    use diesel::prelude::*;
    use switchboard::db::schema::calls;
    for _ in 0..200 {
        let row: Option<(String, Option<String>)> = calls::table
            .find(id)
            .select((calls::status, calls::end_reason))
            .first(&mut srv.db.conn())
            .optional()
            .unwrap();
        if let Some(row) = row.filter(|row| row.1.is_some()) {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} never ended in the database")
}

/// Lets a second of call time pass on the server's clock, so `duration` is at least 1.
fn talk(srv: &TestServer) {
    srv.advance_clock(Duration::from_secs(1));
}

/// A video call from Alice to Bob and a voice call from Bob to Alice, each event checked, and
/// the two records in the pair's DM.
async fn video_and_voice_calls(transport: &str) {
    let srv = lonestar_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("lonestar"));
    sign_in(&mut p, &srv, "bob", bob, transport).await;
    // Alice's `start_call` follows her `authenticate` at once, as the app sends them.
    app_sign_in(&mut p, &srv, "alice", alice, transport).await;

    // --- Video call, Alice → Bob; `to` as the app holds the id: a string.
    let offer = json!({"type": "offer", "sdp": "v=0 alice video"});
    p.emit(
        "alice",
        "start_call",
        json!([{"to": s(bob), "isVideo": true, "sdp": offer}]),
    );
    let incoming = p.event("bob", "incoming_call").await;
    let video_id = check_incoming(&incoming, alice, true, &offer);

    // A candidate the caller gathers while it rings reaches the callee (Switchboard hands the
    // early ones to the device that answers, once it answers).
    p.emit(
        "alice",
        "ice_candidate",
        json!([{"callId": video_id, "candidate": "candidate:0 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}]),
    );

    p.emit("bob", "accept_call", json!([{"callId": video_id}]));
    let accepted = event_of(&mut p, "alice", "call_accepted", &video_id).await;
    assert!(accepted["callId"].is_string(), "{accepted}");
    assert!(accepted["userId"].is_string(), "{accepted}");
    assert_eq!(accepted["userId"], s(bob));

    let early = event_of(&mut p, "bob", "ice_candidate", &video_id).await;
    assert_eq!(
        early["candidate"],
        "candidate:0 1 udp 1 10.0.0.1 9 typ host"
    );
    assert!(
        early["sdpMid"].is_string() && early["sdpMLineIndex"].is_i64(),
        "{early}"
    );

    // `sdp_answer` goes to the caller.
    let answer = json!({"type": "answer", "sdp": "v=0 bob video"});
    p.emit(
        "bob",
        "sdp_answer",
        json!([{"callId": video_id, "sdp": answer}]),
    );
    let got = event_of(&mut p, "alice", "sdp_answer", &video_id).await;
    assert!(got["callId"].is_string(), "{got}");
    assert!(got["sdp"].is_object(), "{got}");
    assert_eq!(got["sdp"], answer);

    // ICE both ways, flat.
    check_ice(
        &mut p,
        "alice",
        "bob",
        &video_id,
        "candidate:1 1 udp 1 10.0.0.1 9 typ host",
        0,
    )
    .await;
    check_ice(
        &mut p,
        "bob",
        "alice",
        &video_id,
        "candidate:2 1 udp 1 10.0.0.2 9 typ host",
        1,
    )
    .await;

    // `sdp_offer` (a renegotiation) goes to the callee.
    let reoffer = json!({"type": "offer", "sdp": "v=0 alice renegotiates"});
    p.emit(
        "alice",
        "sdp_offer",
        json!([{"callId": video_id, "sdp": reoffer}]),
    );
    let got = event_of(&mut p, "bob", "sdp_offer", &video_id).await;
    assert!(got["callId"].is_string(), "{got}");
    assert!(got["sdp"].is_object(), "{got}");
    assert_eq!(got["sdp"], reoffer);
    // The document routes `sdp_offer` to `call.to` whoever sends it, which would hand a
    // callee's offer back to the callee; Switchboard relays a callee's offer to the caller.
    p.emit(
        "bob",
        "sdp_offer",
        json!([{"callId": video_id, "sdp": {"type": "offer", "sdp": "bob renegotiates"}}]),
    );
    assert_eq!(
        event_of(&mut p, "alice", "sdp_offer", &video_id).await["sdp"]["sdp"],
        "bob renegotiates"
    );

    talk(&srv);
    p.emit("alice", "end_call", json!([{"callId": video_id}]));
    let to_alice = event_of(&mut p, "alice", "call_ended", &video_id).await;
    let to_bob = event_of(&mut p, "bob", "call_ended", &video_id).await;
    let video_duration = check_ended(&to_alice, &video_id);
    assert_eq!(check_ended(&to_bob, &video_id), video_duration);
    assert!(video_duration >= 1, "{to_alice}");
    assert_eq!(
        ended_row(&srv, &video_id).await,
        ("ended".to_owned(), Some("hangup".to_owned()))
    );

    // --- Voice call, Bob → Alice; `to` as a number this time; the callee hangs up.
    let offer = json!({"type": "offer", "sdp": "v=0 bob voice"});
    p.emit(
        "bob",
        "start_call",
        json!([{"to": alice, "isVideo": false, "sdp": offer}]),
    );
    let incoming = p.event("alice", "incoming_call").await;
    let voice_id = check_incoming(&incoming, bob, false, &offer);
    assert_ne!(voice_id, video_id);
    p.emit("alice", "accept_call", json!([{"callId": voice_id}]));
    let accepted = event_of(&mut p, "bob", "call_accepted", &voice_id).await;
    assert!(accepted["userId"].is_string(), "{accepted}");
    assert_eq!(accepted["userId"], s(alice));
    let answer = json!({"type": "answer", "sdp": "v=0 alice voice"});
    p.emit(
        "alice",
        "sdp_answer",
        json!([{"callId": voice_id, "sdp": answer}]),
    );
    assert_eq!(
        event_of(&mut p, "bob", "sdp_answer", &voice_id).await["sdp"],
        answer
    );
    check_ice(
        &mut p,
        "alice",
        "bob",
        &voice_id,
        "candidate:3 1 udp 1 10.0.0.3 9 typ host",
        0,
    )
    .await;
    check_ice(
        &mut p,
        "bob",
        "alice",
        &voice_id,
        "candidate:4 1 udp 1 10.0.0.4 9 typ host",
        0,
    )
    .await;
    talk(&srv);
    p.emit("alice", "end_call", json!([{"callId": voice_id}]));
    let to_bob = event_of(&mut p, "bob", "call_ended", &voice_id).await;
    let to_alice = event_of(&mut p, "alice", "call_ended", &voice_id).await;
    let voice_duration = check_ended(&to_bob, &voice_id);
    assert_eq!(check_ended(&to_alice, &voice_id), voice_duration);
    assert!(voice_duration >= 1, "{to_bob}");

    // --- The records: both in the pair's one DM, each sent by its caller.
    let conv = dm_of(&srv, alice, bob).await;
    assert_eq!(dm_of(&srv, bob, alice).await, conv);
    let video = call_record(&srv, bob, &conv, &video_id).await;
    check_record(&video, &conv, true, video_duration, alice, bob);
    let voice = call_record(&srv, alice, &conv, &voice_id).await;
    check_record(&voice, &conv, false, voice_duration, bob, alice);

    // A record is a message of its caller's: the DM delete route lets the caller delete it, and
    // not the callee.
    let video_msg = video["id"].as_str().unwrap();
    let (status, body) = srv
        .call(
            "DELETE",
            &format!("/api/messages/dm/{alice}/messages/{video_msg}"),
            None,
            Some(&srv.token_for(bob)),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = srv
        .call(
            "DELETE",
            &format!("/api/messages/dm/{bob}/messages/{video_msg}"),
            None,
            Some(&srv.token_for(alice)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["message"]["id"], video_msg);
}

#[actix_web::test]
async fn video_and_voice_calls_over_websocket_relay_every_event_and_log_to_the_pair_dm() {
    video_and_voice_calls("websocket").await;
}

#[actix_web::test]
async fn video_and_voice_calls_over_polling_relay_every_event_and_log_to_the_pair_dm() {
    video_and_voice_calls("polling").await;
}

/// A declined call, a call the caller gives up while it rings, and a call one party's
/// disconnect ends.
async fn declined_cancelled_and_dropped_calls(transport: &str) {
    let srv = lonestar_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("lonestar"));
    sign_in(&mut p, &srv, "alice", alice, transport).await;
    sign_in(&mut p, &srv, "bob", bob, transport).await;
    let offer = json!({"type": "offer", "sdp": "v=0"});
    let conv = dm_of(&srv, alice, bob).await;

    // --- `reject_call` → the caller's `call_rejected {callId}`.
    p.emit(
        "alice",
        "start_call",
        json!([{"to": s(bob), "isVideo": false, "sdp": offer}]),
    );
    let rejected_id = check_incoming(&p.event("bob", "incoming_call").await, alice, false, &offer);
    p.emit("bob", "reject_call", json!([{"callId": rejected_id}]));
    let rejected = event_of(&mut p, "alice", "call_rejected", &rejected_id).await;
    assert!(rejected["callId"].is_string(), "{rejected}");
    assert_eq!(rejected["callId"], rejected_id.as_str());
    // The document writes no record for a declined call (only `end_call` does); Switchboard
    // logs every call that rang in the DM: a `voice_call` saying it was declined.
    let record = call_record(&srv, alice, &conv, &rejected_id).await;
    assert_eq!(record["type"], "voice_call");
    assert_eq!(record["content"], "📞 Declined call");
    assert_eq!(record["metadata"]["duration"], 0);
    // The call is over. The document ignores an `end_call` for a call it no longer holds;
    // Switchboard answers the canonical `error` event (the app defines no event for it), and
    // nobody gets a `call_ended` for it (checked at the end).
    p.emit("alice", "end_call", json!([{"callId": rejected_id}]));
    let err = p.event("alice", "error").await;
    assert!(
        err["code"].is_string() && err["message"].is_string(),
        "{err}"
    );
    assert_eq!(err["code"], "not_found");
    assert_eq!(err["ref"], "end_call");

    // --- The caller ends a call still ringing: both get `call_ended`, duration 0.
    p.emit(
        "alice",
        "start_call",
        json!([{"to": s(bob), "isVideo": true, "sdp": offer}]),
    );
    let cancelled_id = check_incoming(&p.event("bob", "incoming_call").await, alice, true, &offer);
    p.emit("alice", "end_call", json!([{"callId": cancelled_id}]));
    for who in ["bob", "alice"] {
        let ended = event_of(&mut p, who, "call_ended", &cancelled_id).await;
        assert_eq!(check_ended(&ended, &cancelled_id), 0, "{ended}");
    }
    // The document's record would read `📹 Call - 0:0s` (its duration counts the ring);
    // Switchboard's says the call was never answered.
    let record = call_record(&srv, bob, &conv, &cancelled_id).await;
    assert_eq!(record["type"], "video_call");
    assert_eq!(record["content"], "📹 Cancelled video call");
    assert_eq!(record["metadata"]["duration"], 0);
    // --- A disconnect during a call ends it for the other party. (The document's handler
    // emits `end_call` back to the closing socket, meaning to end its call; Switchboard waits
    // CALL_RECONNECT_GRACE_SECS, one second here, for the device to come back, then ends it.)
    p.emit(
        "alice",
        "start_call",
        json!([{"to": s(bob), "isVideo": true, "sdp": offer}]),
    );
    let dropped_id = check_incoming(&p.event("bob", "incoming_call").await, alice, true, &offer);
    p.emit("bob", "accept_call", json!([{"callId": dropped_id}]));
    event_of(&mut p, "alice", "call_accepted", &dropped_id).await;
    p.close("alice");
    let gone = p
        .wait(|v| v["name"] == "alice" && v["type"] == "disconnect")
        .await;
    assert_eq!(gone["reason"], "io client disconnect");
    let ended = event_of(&mut p, "bob", "call_ended", &dropped_id).await;
    let duration = check_ended(&ended, &dropped_id);
    assert_eq!(
        ended_row(&srv, &dropped_id).await,
        ("ended".to_owned(), Some("network_error".to_owned()))
    );
    let record = call_record(&srv, bob, &conv, &dropped_id).await;
    check_record(&record, &conv, true, duration, alice, bob);

    // The callee's disconnect ends it for the caller just the same.
    app_sign_in(&mut p, &srv, "alice2", alice, transport).await;
    p.emit(
        "alice2",
        "start_call",
        json!([{"to": s(bob), "isVideo": false, "sdp": offer}]),
    );
    let second_id = check_incoming(&p.event("bob", "incoming_call").await, alice, false, &offer);
    p.emit("bob", "accept_call", json!([{"callId": second_id}]));
    event_of(&mut p, "alice2", "call_accepted", &second_id).await;
    p.close("bob");
    let ended = event_of(&mut p, "alice2", "call_ended", &second_id).await;
    let duration = check_ended(&ended, &second_id);
    let record = call_record(&srv, alice, &conv, &second_id).await;
    check_record(&record, &conv, false, duration, alice, bob);

    // Every event the calls above sent has arrived by now (each later step waited on the same
    // connections): none ended the declined call.
    let stray = p
        .try_wait(
            &|v: &Value| v["event"] == "call_ended" && v["args"][0]["callId"] == rejected_id,
            Duration::ZERO,
        )
        .await;
    assert_eq!(stray, None, "a declined call does not end again");
}

#[actix_web::test]
async fn declined_cancelled_and_dropped_calls_over_websocket() {
    declined_cancelled_and_dropped_calls("websocket").await;
}

#[actix_web::test]
async fn declined_cancelled_and_dropped_calls_over_polling() {
    declined_cancelled_and_dropped_calls("polling").await;
}

/// Checks a refused delete: `status` and a JSON error. The document answers
/// `{error: 'No permission'}`; Switchboard's errors all have one shape, `{error: {code,
/// message}}` (README, REST): `error` is an object, its text in `message`.
fn check_refused(status: u16, body: &Value, want: (u16, &str)) {
    assert_eq!((status, code(body)), want, "{body}");
    assert!(body["error"].is_object(), "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Checks a delete that went through: `{success: true, message}` (the route's OpenAPI
/// response) with the message deleted.
fn check_deleted(status: u16, body: &Value, id: &str) {
    assert_eq!(status, 200, "{body}");
    assert!(body["success"].is_boolean(), "{body}");
    assert_eq!(body["success"], true);
    assert!(body["message"]["id"].is_string(), "{body}");
    assert_eq!(body["message"]["id"], id);
    assert!(body["message"]["deleted"].is_boolean(), "{body}");
    assert_eq!(body["message"]["deleted"], true);
    assert_eq!(body["message"]["content"], "");
}

#[actix_web::test]
async fn team_chat_and_dm_deletes_on_the_lonestar_listener() {
    let srv = lonestar_server().await;
    let seller = srv.create_user("Seller", "seller@example.com", None, &[]);
    let seller2 = srv.create_user("Seller2", "seller2@example.com", None, &[]);
    let master = srv.create_user("Master", "master@example.com", None, &["MASTER"]);
    srv.db.exec(&format!(
        "UPDATE users SET team_roles = ARRAY['sales'] WHERE id IN ({seller}, {seller2})"
    ));
    let (t1, t2, tm) = (
        srv.token_for(seller),
        srv.token_for(seller2),
        srv.token_for(master),
    );
    let delete = |path: String, token: &str| {
        let token = token.to_owned();
        let srv = &srv;
        async move { srv.call("DELETE", &path, None, Some(&token)).await }
    };
    let send_team = |content: &'static str, token: &str| {
        let token = token.to_owned();
        let srv = &srv;
        async move {
            let (status, body) = srv
                .post(
                    "/api/team-chat/sales/messages",
                    json!({ "content": content }),
                    Some(&token),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body["message"]["id"].as_str().unwrap().to_owned()
        }
    };

    // --- DELETE /api/team-chat/:teamRole/messages/:messageId
    let m1 = send_team("deal closed", &t1).await;
    let m2 = send_team("nice", &t1).await;
    let m3 = send_team("next week", &t2).await;
    let path = |id: &str| format!("/api/team-chat/sales/messages/{id}");

    let (status, body) = delete(path(&m1), &t2).await;
    check_refused(status, &body, (403, "forbidden"));
    let (status, body) = delete(path(&m1), &t1).await;
    check_deleted(status, &body, &m1);
    // MASTER may delete anyone's.
    let (status, body) = delete(path(&m3), &tm).await;
    check_deleted(status, &body, &m3);
    // Unknown message; a message of another team's chat; no token.
    let (status, body) = delete(path("987654321"), &t1).await;
    check_refused(status, &body, (404, "not_found"));
    let (status, body) = delete(format!("/api/team-chat/support/messages/{m2}"), &tm).await;
    check_refused(status, &body, (404, "not_found"));
    let (status, _) = srv.call("DELETE", &path(&m2), None, None).await;
    assert_eq!(status, 401);
    // The document deletes the document outright; Switchboard keeps a tombstone (`deleted`,
    // empty content) so every client's history stays in order.
    let (status, page) = srv.get("/api/team-chat/sales/messages", Some(&t2)).await;
    assert_eq!(status, 200, "{page}");
    let by_id = |id: &str| {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {page}"))
    };
    assert_eq!(by_id(&m1)["deleted"], true);
    assert_eq!(by_id(&m3)["deleted"], true);
    assert_eq!(by_id(&m2)["deleted"], false);
    assert_eq!(by_id(&m2)["content"], "nice");

    // --- DELETE /api/messages/dm/:userId/messages/:messageId
    let conv = dm_of(&srv, seller, seller2).await;
    let send_dm = |conv: String, content: &'static str, token: &str| {
        let token = token.to_owned();
        let srv = &srv;
        async move {
            let (status, body) = srv
                .post(
                    &format!("/api/conversations/{conv}/messages"),
                    json!({ "content": content }),
                    Some(&token),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body["message"]["id"].as_str().unwrap().to_owned()
        }
    };
    let d1 = send_dm(conv.clone(), "psst", &t1).await;
    let dm = |other: i64, id: &str| format!("/api/messages/dm/{other}/messages/{id}");
    let (status, body) = delete(dm(seller, &d1), &t2).await;
    check_refused(status, &body, (403, "forbidden"));
    let (status, body) = delete(dm(seller2, &d1), &t1).await;
    check_deleted(status, &body, &d1);
    let (status, body) = delete(dm(seller2, "987654321"), &t1).await;
    check_refused(status, &body, (404, "not_found"));
    // The message must be in the DM with that user.
    let d2 = send_dm(conv, "again", &t1).await;
    let (status, body) = delete(dm(master, &d2), &t1).await;
    check_refused(status, &body, (404, "not_found"));
    // MASTER may delete the other party's message in its own DM.
    let master_conv = dm_of(&srv, master, seller).await;
    let d3 = send_dm(master_conv, "hello boss", &t1).await;
    let (status, body) = delete(dm(seller, &d3), &tm).await;
    check_deleted(status, &body, &d3);
    // `:userId` names the caller's partner in the DM: a DM of two others is not one of
    // MASTER's (the document's handler never looked at the chat; the app only opens the
    // user's own DMs). The general `DELETE /api/messages/:id` deletes anyone's for MASTER.
    let (status, body) = delete(dm(seller2, &d2), &tm).await;
    check_refused(status, &body, (404, "not_found"));
    let (status, body) = delete(format!("/api/messages/{d2}"), &tm).await;
    assert_eq!(status, 200, "{body}");
}

/// `authenticate` with a bad token or none, and no `authenticate` at all within
/// `SOCKETIO_AUTH_TIMEOUT_MS`: an `error` event `{code: "unauthorized", message}`, then a
/// server disconnect (`io server disconnect`: the client does not reconnect by itself).
async fn bad_or_missing_authenticate(transport: &str) {
    let srv = TestServer::start_apps(|c| {
        c.socketio_auth_timeout = Duration::from_millis(600);
    })
    .await;
    let user = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("lonestar"));
    // A token signed with another secret, as the seed's own backend would have issued it.
    let foreign = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"id": s(user), "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(format!("{SECRET}-elsewhere").as_bytes()),
    )
    .unwrap();
    for (name, args) in [
        ("forged", json!(["forged.token.value"])),
        ("foreign", json!([foreign])),
        ("empty", json!([""])),
        ("none", json!([])),
    ] {
        p.connect(name, via(transport)).await;
        p.emit(name, "authenticate", args);
        let err = p.event(name, "error").await;
        assert!(err["code"].is_string(), "{name}: {err}");
        assert_eq!(err["code"], "unauthorized", "{name}");
        assert!(err["message"].is_string(), "{name}: {err}");
        let gone = p
            .wait(|v| v["name"] == name && v["type"] == "disconnect")
            .await;
        assert_eq!(gone["reason"], "io server disconnect", "{name}");
    }

    // Silence after connecting: disconnected once SOCKETIO_AUTH_TIMEOUT_MS passes.
    p.connect("silent", via(transport)).await;
    // An event before `authenticate` waits for it; none comes.
    p.emit("silent", "start_call", json!([{"to": s(user)}]));
    let err = p.event("silent", "error").await;
    assert!(err["message"].is_string(), "{err}");
    assert_eq!(err["code"], "unauthorized");
    let gone = p
        .wait(|v| v["name"] == "silent" && v["type"] == "disconnect")
        .await;
    assert_eq!(gone["reason"], "io server disconnect");

    // The right token is taken on the same listener.
    sign_in(&mut p, &srv, "good", user, transport).await;
}

#[actix_web::test]
async fn bad_or_missing_authenticate_disconnects_over_websocket() {
    bad_or_missing_authenticate("websocket").await;
}

#[actix_web::test]
async fn bad_or_missing_authenticate_disconnects_over_polling() {
    bad_or_missing_authenticate("polling").await;
}
