//! Seed 001 (WorldMates) played with the real `socket.io-client` on the app's own listener
//! (naming no dialect), over websocket and over HTTP long-polling: numeric ids on every event, a group call whose members' answers reach the
//! initiator, flat ICE candidates (also from an AIST browser on plain `/ws`), failed commands as
//! the events the app reads, and the admin stats of the calls in progress.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::puppet::Puppet;
use common::{TestServer, WsClient};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::config::Secret;

fn websocket(token: &str) -> Value {
    json!({"query": {"token": token}, "transports": ["websocket"]})
}

fn polling(token: &str) -> Value {
    json!({"query": {"token": token}, "transports": ["polling"]})
}

async fn join(p: &mut Puppet, name: &str, user: i64) {
    // `user:join` carries the app's numeric user id.
    let ack = p.call(name, "user:join", json!([user])).await;
    assert!(ack[0].get("pong").is_some(), "{ack:?}");
}

fn turn_server() -> impl FnOnce(&mut switchboard::config::Config) {
    |c| {
        c.turn_urls = switchboard::config::List(vec!["turn:turn.example.com:3478".into()]);
        c.turn_secret = Secret::new("turn-shared-secret");
    }
}

#[actix_web::test]
async fn worldmates_ids_leave_as_numbers_over_websocket_and_polling() {
    let srv = TestServer::start_apps(turn_server()).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    p.connect("alice", websocket(&srv.token_for(alice))).await;
    let bob_conn = p.connect("bob", polling(&srv.token_for(bob))).await;
    assert_eq!(bob_conn["transport"], "polling");
    join(&mut p, "alice", alice).await;
    join(&mut p, "bob", bob).await;

    let room = "room_1705488600_num";
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": alice, "toId": bob, "callType": "video", "roomName": room, "sdpOffer": {"type": "offer", "sdp": "o"}}]),
    );
    let incoming = p.event("bob", "call:incoming").await;
    assert_eq!(incoming["fromId"], json!(alice), "{incoming}");
    assert!(incoming["fromId"].is_i64());
    assert_eq!(incoming["roomName"], json!(room));
    assert_eq!(incoming["callId"], json!(room));
    assert_eq!(incoming["fromName"], "Alice");
    assert_eq!(incoming["callType"], "video");
    assert_eq!(incoming["sdpOffer"]["sdp"], "o");
    assert_eq!(incoming["participants"], json!([alice, bob]));
    assert!(incoming["iceServers"].is_array());

    p.emit(
        "bob",
        "call:accept",
        json!([{"roomName": room, "fromId": alice, "sdpAnswer": {"type": "answer", "sdp": "a"}}]),
    );
    let answer = p.event("alice", "call:answer").await;
    assert_eq!(answer["sdpAnswer"]["sdp"], "a");
    assert_eq!(answer["roomName"], json!(room));
    assert_eq!(answer["fromId"], json!(bob));
    assert_eq!(answer["by"], json!(bob));
    let turn = answer["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s.get("credential").is_some())
        .expect("a TURN entry");
    assert!(turn["username"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{alice}")));

    p.emit(
        "bob",
        "ice:candidate",
        json!([{"roomName": room, "candidate": "candidate:1 1 udp 1 10.0.0.2 9 typ host", "sdpMLineIndex": 0, "sdpMid": "0"}]),
    );
    let ice = p.event("alice", "ice:candidate").await;
    assert_eq!(ice["candidate"], "candidate:1 1 udp 1 10.0.0.2 9 typ host");
    assert_eq!(ice["sdpMid"], json!("0"));
    assert_eq!(ice["sdpMLineIndex"], json!(0));
    assert_eq!(ice["fromId"], json!(bob));

    p.emit(
        "alice",
        "call:end",
        json!([{"roomName": room, "reason": "hangup"}]),
    );
    let ended = p.event("bob", "call:ended").await;
    assert_eq!(ended["reason"], "hangup");
    assert_eq!(ended["endedBy"], json!(alice));
    assert!(ended["duration"].is_i64());

    // A declined call: the rejecter's id is a number too.
    p.emit(
        "alice",
        "call:initiate",
        json!([{"toId": bob, "callType": "audio", "roomName": "room_declined"}]),
    );
    p.event("bob", "call:incoming").await;
    p.emit("bob", "call:reject", json!([{"roomName": "room_declined"}]));
    let rejected = p.event("alice", "call:rejected").await;
    assert_eq!(rejected["by"], json!(bob));
    assert!(rejected["reason"].is_string(), "{rejected}");
}

#[actix_web::test]
async fn every_group_member_who_accepts_answers_the_initiator_with_sdp_and_ice_servers() {
    let srv = TestServer::start_apps(turn_server()).await;
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
    p.connect("alice", polling(&srv.token_for(alice))).await;
    p.connect("bob", websocket(&srv.token_for(bob))).await;
    p.connect("carol", websocket(&srv.token_for(carol))).await;
    for (name, user) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        join(&mut p, name, user).await;
    }

    p.emit(
        "alice",
        "group_call:initiate",
        json!([{"groupId": group, "initiatedBy": alice, "callType": "video", "roomName": "group_room_7", "memberIds": [bob, carol]}]),
    );
    for who in ["bob", "carol"] {
        let ring = p.event(who, "call:incoming").await;
        assert_eq!(ring["roomName"], "group_room_7");
        assert_eq!(ring["fromId"], json!(alice));
        assert_eq!(ring["groupId"], json!(group));
        assert_eq!(ring["participants"], json!([alice, bob, carol]));
    }

    for (who, id, sdp) in [
        ("bob", bob, "answer-from-bob"),
        ("carol", carol, "answer-from-carol"),
    ] {
        p.emit(
            who,
            "call:accept",
            json!([{"roomName": "group_room_7", "fromId": alice, "sdpAnswer": {"type": "answer", "sdp": sdp}}]),
        );
        let answer = p.event("alice", "call:answer").await;
        assert_eq!(answer["sdpAnswer"]["sdp"], sdp);
        assert_eq!(answer["fromId"], json!(id));
        assert_eq!(answer["roomName"], "group_room_7");
        let servers = answer["iceServers"].as_array().expect("iceServers");
        assert!(
            servers.iter().any(|s| s.get("credential").is_some()),
            "{answer}"
        );
    }
    // Members already in the call hear who joined, by numeric id.
    let joined = p.event("bob", "call:participant_joined").await;
    assert_eq!(joined["userId"], json!(carol));

    // The app's candidates name no recipient: a member's reach the initiator, the initiator's
    // every member.
    p.emit(
        "carol",
        "ice:candidate",
        json!([{"roomName": "group_room_7", "candidate": "cand-carol", "sdpMLineIndex": 0, "sdpMid": "0"}]),
    );
    let ice = p.event("alice", "ice:candidate").await;
    assert_eq!(
        (ice["candidate"].clone(), ice["fromId"].clone()),
        (json!("cand-carol"), json!(carol))
    );
    p.emit(
        "alice",
        "ice:candidate",
        json!([{"roomName": "group_room_7", "candidate": "cand-alice", "sdpMLineIndex": 1, "sdpMid": "1"}]),
    );
    for who in ["bob", "carol"] {
        let ice = p.event(who, "ice:candidate").await;
        assert_eq!(ice["candidate"], "cand-alice");
        assert_eq!(ice["sdpMLineIndex"], json!(1));
        assert_eq!(ice["fromId"], json!(alice));
    }
}

/// `GET /api/admin/calls/stats` as an admin: its `stats`.
async fn stats(srv: &TestServer, admin_token: &str) -> Value {
    let (status, body) = srv.get("/api/admin/calls/stats", Some(admin_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    body["stats"].clone()
}

#[actix_web::test]
async fn admin_call_stats_describe_the_calls_in_progress() {
    let srv = TestServer::start_apps(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let admin = srv.create_user("Admin", "admin@example.com", None, &["admin"]);
    let admin_token = srv.token_for(admin);
    assert_eq!(stats(&srv, &admin_token).await["totalCalls"], 0);

    let mut p = Puppet::start(srv.addr_of("worldmates"));
    for (name, user) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        p.connect(name, websocket(&srv.token_for(user))).await;
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
    assert_eq!(call["roomName"], "room_live");
    assert_eq!(call["callType"], "video");
    assert_eq!(call["participants"], json!([alice, bob]));
    let first = call["duration"].as_i64().expect("duration is an integer");

    // The duration grows while the call lasts.
    tokio::time::sleep(Duration::from_millis(2100)).await;
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
    let srv = TestServer::start_apps(|_| {}).await;
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
    p.connect("bob", polling(&srv.token_for(bob))).await;
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
    assert_eq!(
        ice["candidate"],
        "candidate:7 1 udp 7 192.0.2.7 7 typ srflx"
    );
    assert_eq!(ice["sdpMid"], json!("1"));
    assert_eq!(ice["sdpMLineIndex"], json!(1));
    assert_eq!(ice["roomName"], json!(room));
    assert_eq!(ice["fromId"], json!(alice));

    // The Android app sends it flat; the browser gets an RTCIceCandidateInit.
    p.emit(
        "bob",
        "ice:candidate",
        json!([{"roomName": room, "candidate": "candidate:8 1 udp 8 198.51.100.8 8 typ host", "sdpMLineIndex": 0, "sdpMid": "0"}]),
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

#[actix_web::test]
async fn failed_call_commands_come_back_as_the_events_the_app_reads() {
    let srv = TestServer::start_apps(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr_of("worldmates"));
    p.connect("alice", websocket(&srv.token_for(alice))).await;
    join(&mut p, "alice", alice).await;

    // Calling someone who does not exist: a rejection with the reason.
    p.emit(
        "alice",
        "call:initiate",
        json!([{"toId": 987_654_321_i64, "callType": "audio", "roomName": "room_nobody"}]),
    );
    let rejected = p.event("alice", "call:rejected").await;
    assert_eq!(rejected["reason"], "not_found");
    assert!(rejected["message"].is_string());

    // Accepting a call that is not there: the call screen closes with the reason.
    p.emit(
        "alice",
        "call:accept",
        json!([{"roomName": "room_gone", "sdpAnswer": "a"}]),
    );
    let ended = p.event("alice", "call:ended").await;
    assert_eq!(ended["reason"], "not_found");
}
