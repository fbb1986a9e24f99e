//! Seed 001 (WorldMates) played with the real `socket.io-client` on the app's own listener
//! (naming no dialect), every socket flow over websocket and over HTTP long-polling, and its
//! REST routes on the same listener. Checked against the seed document, field by field and JSON
//! type by JSON type:
//!
//! - client → server: `user:join` (as the app emits it, without an ack, naming any id: the
//!   token's user joins), `call:initiate`, `call:accept`, `call:reject`, `ice:candidate`,
//!   `call:end`, `group_call:initiate`;
//! - server → client: `call:incoming{callId, fromId, fromName, callType, roomName, sdpOffer,
//!   iceServers}`, `call:answer{sdpAnswer, iceServers}`, `call:rejected{reason}` (declined,
//!   busy, failed), `ice:candidate{candidate, sdpMLineIndex, sdpMid}` (flat, also from an AIST
//!   browser on plain `/ws`), `call:ended{reason}` (hang-up, cancelled, failed accept); numeric
//!   ids on every event; a group call whose members' answers reach the initiator;
//! - REST: `GET /api/health`, `GET /api/ice-servers/:userId`, `POST /api/turn-credentials`,
//!   `GET /api/admin/calls/stats` (the calls in progress), with the token and admin checks
//!   Switchboard adds and its `{error: {code, message}}` errors.
//!
//! Readings where the document is silent (see README, "Seed 001"): the app sends its token;
//! `call:answer` of a group call goes to the initiator; `call:rejected.reason` is `rejected`
//! for a plain decline and `busy` for a callee already in a call; `call:ended.reason` is the
//! `reason` the other party gave, `cancelled` for a call called off while it rang.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{code, TestServer, WsClient};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::config::{Config, Secret};

/// The two transports the app's `socket.io-client` may use.
const WEBSOCKET: &str = "websocket";
const POLLING: &str = "polling";

/// socket.io-client options: the token in the query, one transport.
fn with_query(transport: &str, token: &str) -> Value {
    json!({"query": {"token": token}, "transports": [transport]})
}

/// socket.io-client options: the token in the CONNECT auth payload, one transport.
fn with_auth(transport: &str, token: &str) -> Value {
    json!({"auth": {"token": token}, "transports": [transport]})
}

/// Connects `name` to the app's listener and checks the transport it ended up on.
async fn connect(p: &mut Puppet, name: &str, opts: Value) {
    let want = opts["transports"][0].clone();
    let got = p.connect(name, opts).await;
    assert_eq!(got["transport"], want, "{got}");
}

/// `user:join` with the app's numeric user id. The ack (the app asks for none) is test
/// synchronisation only: the session is live.
async fn join(p: &mut Puppet, name: &str, user: i64) {
    let ack = p.call(name, "user:join", json!([user])).await;
    assert!(ack[0].get("pong").is_some(), "{ack:?}");
}

/// Database connections may take a while on a loaded test machine: commands wait up to 10 s
/// for one (2 s by default).
fn patient_db(c: &mut Config) {
    c.db_acquire_timeout = Duration::from_secs(10);
}

fn turn_server() -> impl FnOnce(&mut Config) {
    |c| {
        patient_db(c);
        c.turn_urls = switchboard::config::List(vec!["turn:turn.example.com:3478".into()]);
        c.turn_secret = Secret::new("turn-shared-secret");
    }
}

/// A server as the apps are served, with the REST helpers on the WorldMates listener.
async fn worldmates_server() -> TestServer {
    TestServer::start_apps(turn_server())
        .await
        .rest_on("worldmates")
}

/// An `iceServers` list as the seed shows it: STUN entries `{urls: "stun:…"}` and a TURN entry
/// `{urls: ["turn:…"], username: "<expiry>:<user id>", credential}` for `user`.
fn check_ice_servers(servers: &Value, user: i64) {
    let list = servers.as_array().expect("iceServers is an array");
    for s in list {
        assert!(s.is_object(), "{s}");
        assert!(
            s["urls"].is_string()
                || s["urls"]
                    .as_array()
                    .is_some_and(|u| !u.is_empty() && u.iter().all(Value::is_string)),
            "{s}"
        );
    }
    assert!(
        list.iter()
            .any(|s| s["urls"].as_str().is_some_and(|u| u.starts_with("stun:"))),
        "{servers}"
    );
    let turn = list
        .iter()
        .find(|s| s.get("credential").is_some())
        .expect("a TURN entry");
    assert_eq!(turn["urls"], json!(["turn:turn.example.com:3478"]));
    assert!(turn["credential"].as_str().is_some_and(|c| !c.is_empty()));
    let (expiry, id) = turn["username"]
        .as_str()
        .expect("username is a string")
        .split_once(':')
        .unwrap();
    assert!(expiry.parse::<i64>().unwrap() > chrono::Utc::now().timestamp());
    assert_eq!(id, user.to_string());
}

/// `call:incoming` with every field of the seed's table in its JSON type.
fn check_incoming(
    got: &Value,
    room: &str,
    (from, from_name): (i64, &str),
    call_type: &str,
    sdp_offer: &Value,
    callee: i64,
) {
    assert!(got["callId"].is_string(), "{got}");
    assert_eq!(got["callId"], room);
    assert!(got["roomName"].is_string(), "{got}");
    assert_eq!(got["roomName"], room);
    assert!(got["fromId"].is_i64(), "{got}");
    assert_eq!(got["fromId"], json!(from));
    assert!(got["fromName"].is_string(), "{got}");
    assert_eq!(got["fromName"], from_name);
    assert!(got["callType"].is_string(), "{got}");
    assert_eq!(got["callType"], call_type);
    // The SDP comes as the caller's app sent it (an RTCSessionDescription or its text).
    assert_eq!(&got["sdpOffer"], sdp_offer, "{got}");
    check_ice_servers(&got["iceServers"], callee);
}

/// `call:answer{sdpAnswer, iceServers}` to `caller`, from `by` (numeric `fromId`).
fn check_answer(got: &Value, room: &str, by: i64, sdp_answer: &Value, caller: i64) {
    assert_eq!(&got["sdpAnswer"], sdp_answer, "{got}");
    check_ice_servers(&got["iceServers"], caller);
    assert!(got["roomName"].is_string(), "{got}");
    assert_eq!(got["roomName"], room);
    assert!(got["fromId"].is_i64(), "{got}");
    assert_eq!(got["fromId"], json!(by));
}

/// A flat `ice:candidate{candidate, sdpMLineIndex, sdpMid}` from `from`.
fn check_candidate(got: &Value, candidate: &str, (line, mid): (i64, &str), from: i64) {
    assert!(got["candidate"].is_string(), "{got}");
    assert_eq!(got["candidate"], candidate);
    assert!(got["sdpMLineIndex"].is_i64(), "{got}");
    assert_eq!(got["sdpMLineIndex"], json!(line));
    assert!(got["sdpMid"].is_string(), "{got}");
    assert_eq!(got["sdpMid"], mid);
    assert!(got["fromId"].is_i64(), "{got}");
    assert_eq!(got["fromId"], json!(from));
}

/// `ice:candidate` as the app emits it.
fn candidate(room: &str, candidate: &str, (line, mid): (i64, &str)) -> Value {
    json!([{"roomName": room, "candidate": candidate, "sdpMLineIndex": line, "sdpMid": mid}])
}

/// `call:ended` (or `call:rejected`) with a string `reason`.
fn reason_of(got: &Value) -> &str {
    got["reason"].as_str().unwrap_or_else(|| panic!("{got}"))
}

/// A one-to-one call, a declined call and a call called off while it rang, the caller and the
/// callee each on one transport.
async fn one_to_one(caller_transport: &str, callee_transport: &str) {
    let srv = worldmates_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    connect(
        &mut p,
        "alice",
        with_query(caller_transport, &srv.token_for(alice)),
    )
    .await;
    connect(
        &mut p,
        "bob",
        with_auth(callee_transport, &srv.token_for(bob)),
    )
    .await;
    join(&mut p, "alice", alice).await;
    join(&mut p, "bob", bob).await;

    // --- A video call, answered, with candidates both ways, hung up by the caller.
    let room = "room_1705488600_abc";
    let offer = json!({"type": "offer", "sdp": "v=0 offer"});
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": alice, "toId": bob, "callType": "video", "roomName": room, "sdpOffer": offer}]),
    );
    let incoming = p.event("bob", "call:incoming").await;
    check_incoming(&incoming, room, (alice, "Alice"), "video", &offer, bob);
    assert_eq!(incoming["participants"], json!([alice, bob]));

    let answer = json!({"type": "answer", "sdp": "v=0 answer"});
    p.emit(
        "bob",
        "call:accept",
        json!([{"roomName": room, "fromId": alice, "sdpAnswer": answer}]),
    );
    let got = p.event("alice", "call:answer").await;
    check_answer(&got, room, bob, &answer, alice);
    assert_eq!(got["by"], json!(bob));

    let from_bob = "candidate:1 1 udp 2122260223 10.0.0.2 9 typ host";
    p.emit("bob", "ice:candidate", candidate(room, from_bob, (0, "0")));
    check_candidate(
        &p.event("alice", "ice:candidate").await,
        from_bob,
        (0, "0"),
        bob,
    );
    let from_alice = "candidate:2 1 udp 1686052607 203.0.113.5 9 typ srflx";
    p.emit(
        "alice",
        "ice:candidate",
        candidate(room, from_alice, (1, "1")),
    );
    check_candidate(
        &p.event("bob", "ice:candidate").await,
        from_alice,
        (1, "1"),
        alice,
    );

    p.emit(
        "alice",
        "call:end",
        json!([{"roomName": room, "reason": "hangup"}]),
    );
    let ended = p.event("bob", "call:ended").await;
    assert_eq!(reason_of(&ended), "hangup");
    assert_eq!(ended["roomName"], room);
    assert!(ended["endedBy"].is_i64(), "{ended}");
    assert_eq!(ended["endedBy"], json!(alice));
    assert!(ended["duration"].is_i64(), "{ended}");

    // --- A declined audio call; its offer is SDP text this time.
    let declined = "room_declined";
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": alice, "toId": bob, "callType": "audio", "roomName": declined, "sdpOffer": "v=0 text"}]),
    );
    let incoming = p.event("bob", "call:incoming").await;
    check_incoming(
        &incoming,
        declined,
        (alice, "Alice"),
        "audio",
        &json!("v=0 text"),
        bob,
    );
    p.emit("bob", "call:reject", json!([{"roomName": declined}]));
    let rejected = p.event("alice", "call:rejected").await;
    assert_eq!(reason_of(&rejected), "rejected");
    assert_eq!(rejected["roomName"], declined);
    assert!(rejected["by"].is_i64(), "{rejected}");
    assert_eq!(rejected["by"], json!(bob));

    // --- The caller calls off a call still ringing.
    let called_off = "room_called_off";
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": alice, "toId": bob, "callType": "video", "roomName": called_off}]),
    );
    assert_eq!(
        p.event("bob", "call:incoming").await["roomName"],
        called_off
    );
    p.emit("alice", "call:end", json!([{"roomName": called_off}]));
    let ended = p.event("bob", "call:ended").await;
    assert_eq!(reason_of(&ended), "cancelled");
    assert_eq!(ended["roomName"], called_off);
}

#[actix_web::test]
async fn a_call_from_a_websocket_client_to_a_polling_one_in_the_apps_words() {
    one_to_one(WEBSOCKET, POLLING).await;
}

#[actix_web::test]
async fn a_call_from_a_polling_client_to_a_websocket_one_in_the_apps_words() {
    one_to_one(POLLING, WEBSOCKET).await;
}

/// A group call: every member who accepts answers the initiator; candidates follow the offer;
/// members leave with `call:end` until fewer than two remain.
async fn group_call(initiator_transport: &str, member_transport: &str) {
    let srv = worldmates_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let group = switchboard::db::conversations::create_group(
        &mut srv.db.conn(),
        alice,
        "team",
        &[bob, carol],
        None,
    )
    .unwrap()
    .id;
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    connect(
        &mut p,
        "alice",
        with_query(initiator_transport, &srv.token_for(alice)),
    )
    .await;
    for (name, user) in [("bob", bob), ("carol", carol)] {
        connect(
            &mut p,
            name,
            with_query(member_transport, &srv.token_for(user)),
        )
        .await;
    }
    for (name, user) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        join(&mut p, name, user).await;
    }

    let room = "group_room_7";
    let offer = json!({"type": "offer", "sdp": "group-offer"});
    p.emit(
        "alice",
        "group_call:initiate",
        json!([{"groupId": group, "initiatedBy": alice, "callType": "video", "roomName": room, "memberIds": [bob, carol], "sdpOffer": offer}]),
    );
    for (who, id) in [("bob", bob), ("carol", carol)] {
        let ring = p.event(who, "call:incoming").await;
        check_incoming(&ring, room, (alice, "Alice"), "video", &offer, id);
        assert!(ring["groupId"].is_i64(), "{ring}");
        assert_eq!(ring["groupId"], json!(group));
        assert_eq!(ring["participants"], json!([alice, bob, carol]));
    }

    for (who, id, sdp) in [
        ("bob", bob, "answer-from-bob"),
        ("carol", carol, "answer-from-carol"),
    ] {
        let answer = json!({"type": "answer", "sdp": sdp});
        p.emit(
            who,
            "call:accept",
            json!([{"roomName": room, "fromId": alice, "sdpAnswer": answer}]),
        );
        let got = p.event("alice", "call:answer").await;
        check_answer(&got, room, id, &answer, alice);
    }
    // Members already in the call hear who joined, by numeric id.
    let joined = p.event("bob", "call:participant_joined").await;
    assert!(joined["userId"].is_i64(), "{joined}");
    assert_eq!(joined["userId"], json!(carol));

    // The app's candidates name no recipient: a member's reach the initiator, the initiator's
    // every member.
    p.emit(
        "carol",
        "ice:candidate",
        candidate(room, "cand-carol", (0, "0")),
    );
    check_candidate(
        &p.event("alice", "ice:candidate").await,
        "cand-carol",
        (0, "0"),
        carol,
    );
    p.emit(
        "alice",
        "ice:candidate",
        candidate(room, "cand-alice", (1, "1")),
    );
    for who in ["bob", "carol"] {
        check_candidate(
            &p.event(who, "ice:candidate").await,
            "cand-alice",
            (1, "1"),
            alice,
        );
    }

    // A member who ends the call leaves it; the last two end it.
    p.emit(
        "carol",
        "call:end",
        json!([{"roomName": room, "reason": "hangup"}]),
    );
    for who in ["alice", "bob"] {
        let left = p.event(who, "call:participant_left").await;
        assert!(left["userId"].is_i64(), "{left}");
        assert_eq!(left["userId"], json!(carol));
    }
    p.emit(
        "bob",
        "call:end",
        json!([{"roomName": room, "reason": "hangup"}]),
    );
    let ended = p.event("alice", "call:ended").await;
    assert!(ended["reason"].is_string(), "{ended}");
    assert_eq!(ended["roomName"], room);
}

#[actix_web::test]
async fn a_group_call_started_over_polling_rings_and_answers_websocket_members() {
    group_call(POLLING, WEBSOCKET).await;
}

#[actix_web::test]
async fn a_group_call_started_over_websocket_rings_and_answers_polling_members() {
    group_call(WEBSOCKET, POLLING).await;
}

/// Calls that cannot go on come back as the events the app reads: `call:rejected` for a call
/// that cannot start or finds its callee busy, `call:ended` for an accept of a call that is gone.
async fn failures(transport: &str) {
    let srv = worldmates_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    for (name, user) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        connect(&mut p, name, with_query(transport, &srv.token_for(user))).await;
        join(&mut p, name, user).await;
    }

    // Calling someone who does not exist.
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": alice, "toId": 987_654_321_i64, "callType": "audio", "roomName": "room_nobody"}]),
    );
    let rejected = p.event("alice", "call:rejected").await;
    assert_eq!(reason_of(&rejected), "not_found");
    assert!(rejected["message"].is_string(), "{rejected}");

    // Accepting a call that is not there: the call screen closes with the reason.
    p.emit(
        "alice",
        "call:accept",
        json!([{"roomName": "room_gone", "fromId": bob, "sdpAnswer": "a"}]),
    );
    let ended = p.event("alice", "call:ended").await;
    assert_eq!(reason_of(&ended), "not_found");

    // Calling someone who is in a call already.
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": alice, "toId": bob, "callType": "audio", "roomName": "room_busy_1"}]),
    );
    p.event("bob", "call:incoming").await;
    p.emit(
        "bob",
        "call:accept",
        json!([{"roomName": "room_busy_1", "fromId": alice, "sdpAnswer": "a"}]),
    );
    p.event("alice", "call:answer").await;
    p.emit(
        "carol",
        "call:initiate",
        json!([{"fromId": carol, "toId": bob, "callType": "video", "roomName": "room_busy_2"}]),
    );
    let busy = p.event("carol", "call:rejected").await;
    assert_eq!(reason_of(&busy), "busy");
    assert_eq!(busy["roomName"], "room_busy_2");
    // The call in progress goes on.
    p.emit(
        "bob",
        "ice:candidate",
        candidate("room_busy_1", "still-here", (0, "0")),
    );
    check_candidate(
        &p.event("alice", "ice:candidate").await,
        "still-here",
        (0, "0"),
        bob,
    );
}

#[actix_web::test]
async fn failed_call_commands_come_back_as_the_events_the_app_reads_over_websocket() {
    failures(WEBSOCKET).await;
}

#[actix_web::test]
async fn failed_call_commands_come_back_as_the_events_the_app_reads_over_polling() {
    failures(POLLING).await;
}

#[actix_web::test]
async fn user_join_as_the_app_sends_it_joins_the_tokens_user_whatever_id_it_names() {
    let srv = worldmates_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    // The document's client: `io(url)` with its default transports (long-polling, then the
    // upgrade to websocket), and `user:join` emitted without an ack.
    let connected = p
        .connect("bob", json!({"auth": {"token": srv.token_for(bob)}}))
        .await;
    // The upgrade may finish before the Socket.IO handshake does.
    if connected["transport"] == POLLING {
        let upgraded = p
            .wait(|v| v["name"] == "bob" && v["type"] == "upgrade")
            .await;
        assert_eq!(upgraded["transport"], WEBSOCKET);
    } else {
        assert_eq!(connected["transport"], WEBSOCKET, "{connected}");
    }
    // Bob's app names Alice's id: the server trusts the token, not the payload.
    p.emit("bob", "user:join", json!([alice]));
    connect(&mut p, "alice", with_query(POLLING, &srv.token_for(alice))).await;
    p.emit("alice", "user:join", json!([alice]));
    connect(
        &mut p,
        "carol",
        with_query(WEBSOCKET, &srv.token_for(carol)),
    )
    .await;
    join(&mut p, "carol", carol).await;

    p.emit(
        "carol",
        "call:initiate",
        json!([{"fromId": carol, "toId": alice, "callType": "audio", "roomName": "room_for_alice"}]),
    );
    let ring = p.event("alice", "call:incoming").await;
    assert_eq!(ring["roomName"], "room_for_alice");
    p.emit("carol", "call:end", json!([{"roomName": "room_for_alice"}]));
    p.event("alice", "call:ended").await;

    p.emit(
        "carol",
        "call:initiate",
        json!([{"fromId": carol, "toId": bob, "callType": "audio", "roomName": "room_for_bob"}]),
    );
    let ring = p.event("bob", "call:incoming").await;
    assert_eq!(ring["roomName"], "room_for_bob");
    // Bob's socket never rang for Alice's call, and neither `user:join` drew an error.
    let bob_events = p.unconsumed("bob");
    assert!(
        !bob_events.iter().any(|e| e == "call:incoming"),
        "{bob_events:?}"
    );
    for who in ["alice", "bob"] {
        let events = p.unconsumed(who);
        assert!(!events.iter().any(|e| e == "error"), "{who}: {events:?}");
    }
}

#[actix_web::test]
async fn rest_routes_answer_in_the_documented_shapes_on_the_apps_listener() {
    let srv = worldmates_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let admin = srv.create_user("Admin", "admin@example.com", None, &["admin"]);
    let token = srv.token_for(alice);

    // GET /api/health: no token, `{status, timestamp, uptime}`.
    let (status, health) = srv.get("/api/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    let timestamp = health["timestamp"].as_str().expect("timestamp is a string");
    assert!(timestamp.ends_with('Z'), "{timestamp}");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("an ISO 8601 time");
    assert!(health["uptime"].is_f64(), "{health}");
    assert!(health["uptime"].as_f64().unwrap() >= 0.0);

    // GET /api/ice-servers/:userId: `{success, iceServers}` for the caller's own id.
    let (status, ice) = srv
        .get(&format!("/api/ice-servers/{alice}"), Some(&token))
        .await;
    assert_eq!(status, 200, "{ice}");
    assert_eq!(ice["success"], json!(true));
    check_ice_servers(&ice["iceServers"], alice);
    // Another user's credentials: admins only; no token: 401.
    let (status, body) = srv
        .get(&format!("/api/ice-servers/{bob}"), Some(&token))
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let (status, ice) = srv
        .get(
            &format!("/api/ice-servers/{bob}"),
            Some(&srv.token_for(admin)),
        )
        .await;
    assert_eq!(status, 200, "{ice}");
    check_ice_servers(&ice["iceServers"], bob);
    let (status, body) = srv.get(&format!("/api/ice-servers/{alice}"), None).await;
    assert_eq!((status, code(&body)), (401, "missing_token"), "{body}");
    let (status, body) = srv.get("/api/ice-servers/not-an-id", Some(&token)).await;
    assert_eq!((status, code(&body)), (400, "invalid_parameter"), "{body}");

    // POST /api/turn-credentials with the document's body: `userId` a string, `ttl` a number.
    let (status, turn) = srv
        .post(
            "/api/turn-credentials",
            json!({"userId": alice.to_string(), "ttl": 86400}),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{turn}");
    assert_eq!(turn["success"], json!(true));
    let username = turn["username"].as_str().expect("username is a string");
    assert!(username.ends_with(&format!(":{alice}")), "{turn}");
    assert!(turn["credential"].is_string(), "{turn}");
    assert_eq!(turn["password"], turn["credential"]);
    assert!(turn["ttl"].is_u64(), "{turn}");
    assert_eq!(turn["ttl"], 86400);
    assert!(turn["expiresAt"].is_i64(), "{turn}");
    assert_eq!(username, format!("{}:{alice}", turn["expiresAt"]));
    assert_eq!(turn["uris"], json!(["turn:turn.example.com:3478"]));
    check_ice_servers(&turn["iceServers"], alice);
    // A numeric `userId` and no `userId` at all are the caller too; someone else's is refused.
    for body in [json!({"userId": alice, "ttl": 600}), json!({})] {
        let (status, turn) = srv.post("/api/turn-credentials", body, Some(&token)).await;
        assert_eq!(status, 200, "{turn}");
        assert!(turn["username"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{alice}")));
    }
    let (status, body) = srv
        .post(
            "/api/turn-credentials",
            json!({"userId": bob.to_string(), "ttl": 86400}),
            Some(&token),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = srv
        .post(
            "/api/turn-credentials",
            json!({"userId": alice.to_string()}),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (401, "missing_token"), "{body}");

    // GET /api/admin/calls/stats: admins only (the document's own advice), Switchboard's errors.
    let (status, body) = srv.get("/api/admin/calls/stats", None).await;
    assert_eq!((status, code(&body)), (401, "missing_token"), "{body}");
    let (status, body) = srv.get("/api/admin/calls/stats", Some(&token)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// `GET /api/admin/calls/stats` as an admin: its `stats`.
async fn stats(srv: &TestServer, admin_token: &str) -> Value {
    let (status, body) = srv.get("/api/admin/calls/stats", Some(admin_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], json!(true));
    let stats = body["stats"].clone();
    assert!(stats["totalCalls"].is_u64(), "{stats}");
    assert!(stats["calls"].is_array(), "{stats}");
    stats
}

#[actix_web::test]
async fn admin_call_stats_describe_the_calls_in_progress() {
    let srv = worldmates_server().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let admin = srv.create_user("Admin", "admin@example.com", None, &["admin"]);
    let admin_token = srv.token_for(admin);
    assert_eq!(stats(&srv, &admin_token).await["totalCalls"], 0);

    let mut p = Puppet::start(srv.addr_of("worldmates"));
    for (name, user, transport) in [
        ("alice", alice, WEBSOCKET),
        ("bob", bob, POLLING),
        ("carol", carol, WEBSOCKET),
    ] {
        connect(&mut p, name, with_query(transport, &srv.token_for(user))).await;
        join(&mut p, name, user).await;
    }
    // A call that is over does not count.
    p.emit(
        "carol",
        "call:initiate",
        json!([{"toId": bob, "callType": "audio", "roomName": "room_over"}]),
    );
    p.event("bob", "call:incoming").await;
    p.emit("carol", "call:end", json!([{"roomName": "room_over"}]));
    p.event("bob", "call:ended").await;

    p.emit(
        "alice",
        "call:initiate",
        json!([{"toId": bob, "callType": "video", "roomName": "room_live", "sdpOffer": "o"}]),
    );
    p.event("bob", "call:incoming").await;
    p.emit(
        "bob",
        "call:accept",
        json!([{"roomName": "room_live", "sdpAnswer": "a"}]),
    );
    p.event("alice", "call:answer").await;

    let now = stats(&srv, &admin_token).await;
    assert_eq!(now["totalCalls"], 1, "{now}");
    let calls = now["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(call["roomName"].is_string(), "{call}");
    assert_eq!(call["roomName"], "room_live");
    assert!(call["callType"].is_string(), "{call}");
    assert_eq!(call["callType"], "video");
    assert!(
        call["participants"]
            .as_array()
            .is_some_and(|p| p.iter().all(Value::is_i64)),
        "{call}"
    );
    assert_eq!(call["participants"], json!([alice, bob]));
    let first = call["duration"].as_i64().expect("duration is an integer");

    // The duration grows while the call lasts.
    srv.advance_clock(Duration::from_secs(2));
    let later = stats(&srv, &admin_token).await;
    let second = later["calls"][0]["duration"].as_i64().unwrap();
    assert!(second >= first + 2, "{first} then {second}");

    p.emit("bob", "call:end", json!([{"roomName": "room_live"}]));
    p.event("alice", "call:ended").await;
    let mut after = stats(&srv, &admin_token).await;
    // The call leaves the registry right after its end was announced.
    for _ in 0..50 {
        if after["totalCalls"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = stats(&srv, &admin_token).await;
    }
    assert_eq!(after["totalCalls"], 0, "{after}");
    assert_eq!(after["calls"], json!([]));
}

#[actix_web::test]
async fn ice_between_an_aist_browser_and_a_worldmates_app_arrives_in_each_apps_shape() {
    let srv = TestServer::start_apps(patient_db).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut aist = WsClient::try_connect(
        srv.addr_of("aist"),
        &format!("/ws?token={}", srv.token_for(alice)),
    )
    .await
    .unwrap();
    aist.request("ping", json!({})).await.unwrap();
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    connect(&mut p, "bob", with_query(POLLING, &srv.token_for(bob))).await;
    join(&mut p, "bob", bob).await;

    aist.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "browser-offer"}, "userId": bob}),
    )
    .await;
    let incoming = p.event("bob", "call:incoming").await;
    assert_eq!(incoming["fromId"], json!(alice));
    assert_eq!(incoming["sdpOffer"]["sdp"], "browser-offer");
    let room = incoming["roomName"].as_str().unwrap().to_owned();

    p.emit(
        "bob",
        "call:accept",
        json!([{"roomName": room, "fromId": alice, "sdpAnswer": {"type": "answer", "sdp": "android-answer"}}]),
    );
    let answer = aist.expect_event("call:answer").await;
    assert_eq!(answer["sdp"]["sdp"], "android-answer");

    // The browser sends an RTCIceCandidateInit; the Android app reads it flat.
    aist.emit(
        "call:ice",
        json!({"candidate": {"candidate": "candidate:7 1 udp 7 192.0.2.7 7 typ srflx", "sdpMid": "1", "sdpMLineIndex": 1}}),
    )
    .await;
    let ice = p.event("bob", "ice:candidate").await;
    check_candidate(
        &ice,
        "candidate:7 1 udp 7 192.0.2.7 7 typ srflx",
        (1, "1"),
        alice,
    );
    assert_eq!(ice["roomName"], json!(room));

    // The Android app sends it flat; the browser gets an RTCIceCandidateInit.
    p.emit(
        "bob",
        "ice:candidate",
        candidate(
            &room,
            "candidate:8 1 udp 8 198.51.100.8 8 typ host",
            (0, "0"),
        ),
    );
    let ice = aist.expect_event("call:ice").await;
    assert_eq!(
        ice["candidate"],
        json!({"candidate": "candidate:8 1 udp 8 198.51.100.8 8 typ host", "sdpMid": "0", "sdpMLineIndex": 0})
    );
    assert_eq!(ice["fromUserId"], json!(bob.to_string()));

    aist.emit("call:hangup", Value::Null).await;
    assert!(p.event("bob", "call:ended").await["reason"].is_string());
}
