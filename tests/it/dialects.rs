//! Seed apps' flows, played with the real `socket.io-client` (seeds 001–003) or a plain
//! WebSocket (seed 004) in that app's own event and field names, plus calls and conversations
//! across dialects. Seed 000's own flows are in `seed_000.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{TestServer, WsClient};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::config::Secret;

fn s(id: i64) -> String {
    id.to_string()
}

fn call_row(server: &TestServer, id: &str) -> Option<(String, Option<String>)> {
    use diesel::prelude::*;
    use switchboard::db::schema::calls;
    calls::table
        .find(id)
        .select((calls::status, calls::end_reason))
        .first(&mut server.db.conn())
        .optional()
        .unwrap()
}

/// Waits (bounded) until the call row exists and reaches an ended state (the row is written
/// behind the ring, asynchronously).
async fn ended_call(server: &TestServer, id: &str) -> (String, Option<String>) {
    for _ in 0..100 {
        if let Some(row) = call_row(server, id).filter(|row| row.1.is_some()) {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} never ended in the database")
}

fn query(token: &str, dialect: &str) -> Value {
    json!({"query": {"token": token, "dialect": dialect}, "transports": ["websocket"]})
}

#[actix_web::test]
async fn seed001_worldmates_calls_by_room_name_with_ice_servers_and_group_calls() {
    let srv = TestServer::start_with(|c| {
        c.turn_urls = switchboard::config::List(vec!["turn:turn.example.com:3478".into()]);
        c.turn_secret = Secret::new("turn-shared-secret");
    })
    .await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr());
    for (name, user) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        p.connect(name, query(&srv.token_for(user), "worldmates"))
            .await;
        // `user:join` carries a user id; the room joined is the token's user, whatever it says.
        let ack = p.call(name, "user:join", json!([999_999])).await;
        assert!(ack[0].get("pong").is_some(), "{ack:?}");
    }

    let room = "room_1705488600_abc";
    p.emit(
        "alice",
        "call:initiate",
        json!([{"fromId": 999_999, "toId": bob, "callType": "video", "roomName": room, "sdpOffer": "offer-sdp"}]),
    );
    let incoming = p.event("bob", "call:incoming").await;
    assert_eq!(incoming["callId"], room);
    assert_eq!(incoming["roomName"], room);
    assert_eq!(incoming["fromId"], json!(alice), "forged fromId is ignored");
    assert_eq!(incoming["fromName"], "Alice");
    assert_eq!(incoming["callType"], "video");
    assert_eq!(incoming["sdpOffer"], "offer-sdp");
    let turn = incoming["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s.get("username").is_some())
        .expect("a TURN entry");
    assert!(
        turn["username"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{bob}")),
        "{turn}"
    );

    p.emit(
        "bob",
        "call:accept",
        json!([{"roomName": room, "fromId": alice, "sdpAnswer": "answer-sdp"}]),
    );
    let answer = p.event("alice", "call:answer").await;
    assert_eq!(answer["sdpAnswer"], "answer-sdp");
    assert!(
        answer["iceServers"].to_string().contains("credential"),
        "{answer}"
    );

    p.emit(
        "bob",
        "ice:candidate",
        json!([{"roomName": room, "candidate": "cand-b", "sdpMLineIndex": 0, "sdpMid": "0"}]),
    );
    let ice = p.event("alice", "ice:candidate").await;
    assert_eq!(
        (ice["candidate"].as_str(), ice["sdpMid"].as_str()),
        (Some("cand-b"), Some("0"))
    );

    p.emit(
        "alice",
        "call:end",
        json!([{"roomName": room, "reason": "hangup"}]),
    );
    let ended = p.event("bob", "call:ended").await;
    assert_eq!(ended["reason"], "hangup");
    assert_eq!(ended_call(&srv, room).await.0, "ended");

    // A room name is a call id: it cannot be reused.
    let reply = p
        .call(
            "alice",
            "call:initiate",
            json!([{"toId": bob, "callType": "audio", "roomName": room}]),
        )
        .await;
    assert_eq!(reply[0]["error"]["code"], "call_id_taken", "{reply:?}");

    // A declined call: the caller hears `call:rejected` with the reason.
    p.emit(
        "alice",
        "call:initiate",
        json!([{"toId": carol, "callType": "audio", "roomName": "room_2"}]),
    );
    p.event("carol", "call:incoming").await;
    p.emit("carol", "call:reject", json!([{"roomName": "room_2"}]));
    let rejected = p.event("alice", "call:rejected").await;
    assert!(rejected.get("reason").is_some(), "{rejected}");

    // Group call: every listed member rings with the same room.
    let group = switchboard::db::conversations::create_group(
        &mut srv.db.conn(),
        alice,
        "team",
        &[bob, carol],
        None,
    )
    .unwrap()
    .id;
    p.emit(
        "alice",
        "group_call:initiate",
        json!([{"groupId": group, "initiatedBy": 999_999, "callType": "audio", "roomName": "group_room_1", "memberIds": [bob, carol]}]),
    );
    for who in ["bob", "carol"] {
        let ring = p.event(who, "call:incoming").await;
        assert_eq!(ring["roomName"], "group_room_1");
        assert_eq!(ring["fromId"], json!(alice));
    }
}

#[actix_web::test]
async fn seed002_astrology_dm_flow_and_agora_calls() {
    let srv = TestServer::start_with(|c| {
        c.agora_app_id = "970CA35de60c44645bbae8a215061b33".into();
        c.agora_app_certificate = Secret::new("5CFd2fd1755d40ecb72977518be15d3b");
        c.ring_timeout = Duration::from_secs(2);
    })
    .await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let stranger = srv.create_user("Stan", "stan@example.com", None, &[]);
    let conv = srv.direct(user, astro);
    let other = srv.direct(astro, stranger);
    let mut p = Puppet::start(srv.addr());
    p.connect("user", query(&srv.token_for(user), "astrology"))
        .await;
    p.connect("astro", query(&srv.token_for(astro), "astrology"))
        .await;

    for (name, id) in [("user", user), ("astro", astro)] {
        p.emit(
            name,
            "dm:join_conversation",
            json!([{"conversationId": s(conv), "userId": s(id), "userType": "user"}]),
        );
        let joined = p.event(name, "dm:joined").await;
        assert_eq!(joined["conversationId"], s(conv));
    }

    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(astro), "recipientType": "astrologer", "content": "Namaste", "messageType": "text"}]),
    );
    // The room hears it, the sender included (seed 002 emits to the whole room).
    let mine = p.event("user", "dm:message_received").await;
    let theirs = p.event("astro", "dm:message_received").await;
    for m in [&mine, &theirs] {
        assert_eq!(m["content"], "Namaste");
        assert_eq!(m["conversationId"], s(conv));
        assert_eq!(m["senderId"], s(user));
        assert_eq!(m["messageType"], "text");
        assert!(m["_id"].is_string());
    }
    let message_id = theirs["_id"].as_str().unwrap().to_owned();

    p.emit(
        "astro",
        "dm:typing_start",
        json!([{"conversationId": s(conv), "userId": s(astro)}]),
    );
    let typing = p.event("user", "dm:typing_start").await;
    assert_eq!(typing["userId"], s(astro));
    p.emit(
        "astro",
        "dm:typing_stop",
        json!([{"conversationId": s(conv)}]),
    );
    assert_eq!(
        p.event("user", "dm:typing_stop").await["conversationId"],
        s(conv)
    );

    p.emit(
        "astro",
        "dm:mark_read",
        json!([{"conversationId": s(conv), "messageIds": [message_id]}]),
    );
    let read = p.event("user", "dm:messages_read").await;
    assert_eq!(read["readBy"], s(astro));
    assert_eq!(read["messageIds"], json!([message_id]));
    assert_eq!(read["conversationId"], s(conv));
    assert_eq!(
        p.event("astro", "dm:messages_read").await["readBy"],
        s(astro)
    );

    // Failures come back as `dm:error`: a conversation the user is not in.
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": s(other), "recipientId": s(stranger), "content": "psst"}]),
    );
    let err = p.event("user", "dm:error").await;
    assert_eq!(err["code"], "forbidden");
    assert!(err["message"].is_string());
    p.emit(
        "user",
        "dm:leave_conversation",
        json!([{"conversationId": s(conv)}]),
    );

    // Agora call: the caller gets channel and token, the callee rings with its own token.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "calleeType": "astrologer", "callType": "video"}]),
    );
    let initiated = p.event("user", "call:initiated").await;
    let call_id = initiated["callId"].as_str().unwrap().to_owned();
    let channel = initiated["channelName"].as_str().unwrap().to_owned();
    assert!(initiated["agoraToken"].as_str().unwrap().starts_with("007"));
    let incoming = p.event("astro", "call:incoming").await;
    assert_eq!(incoming["callId"], call_id.as_str());
    assert_eq!(incoming["callerId"], s(user));
    assert_eq!(incoming["callerName"], "Uma");
    assert_eq!(incoming["callType"], "video");
    assert_eq!(incoming["channelName"], channel.as_str());
    assert!(incoming["agoraToken"].as_str().unwrap().starts_with("007"));
    assert_ne!(incoming["agoraToken"], initiated["agoraToken"]);

    p.emit("astro", "call:accept", json!([{"callId": call_id}]));
    assert_eq!(
        p.event("user", "call:accepted").await["callId"],
        call_id.as_str()
    );
    p.emit("user", "call:end", json!([{"callId": call_id}]));
    let ended = p.event("astro", "call:ended").await;
    assert_eq!(ended["callId"], call_id.as_str());
    assert!(ended["duration"].is_number());

    // Unanswered: the callee hears `call:missed` after the ring timeout.
    p.emit(
        "user",
        "call:initiate",
        json!([{"calleeId": s(astro), "callType": "voice"}]),
    );
    let missed_id = p.event("user", "call:initiated").await["callId"].clone();
    p.event("astro", "call:incoming").await;
    let missed = p.event("astro", "call:missed").await;
    assert_eq!(missed["callId"], missed_id);
    assert_eq!(
        ended_call(&srv, missed_id.as_str().unwrap()).await,
        ("missed".into(), Some("no_answer".into()))
    );

    // Call failures come back as `call:error`.
    p.emit("astro", "call:accept", json!([{"callId": "no-such-call"}]));
    assert_eq!(p.event("astro", "call:error").await["code"], "not_found");
}

#[actix_web::test]
async fn seed003_backend2_messages_time_cursors_presence_and_calls() {
    let srv = TestServer::start().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let conv = srv.direct(alice, bob);
    let mut p = Puppet::start(srv.addr());
    p.connect("alice", query(&srv.token_for(alice), "backend2"))
        .await;
    // Bob does not acknowledge events, so receipts come only from his explicit cursors.
    let mut opts = query(&srv.token_for(bob), "backend2");
    opts["ackEvents"] = json!(false);
    p.connect("bob", opts).await;

    let online = p.event("alice", "user-status-changed").await;
    assert_eq!(
        (online["userId"].clone(), online["status"].clone()),
        (json!(s(bob)), json!("online"))
    );
    assert_eq!(p.event("alice", "presence").await["online"], true);

    let ack = p
        .call(
            "alice",
            "message",
            json!([{"conversation": s(conv), "text": "hello bob", "clientMessageId": "m-1"}]),
        )
        .await;
    let sent = ack[0].clone();
    assert_eq!(sent["seq"], 1);
    let got = p.event_line("bob", "message").await;
    // socket.io-client gets connection state recovery: an offset instead of an ack request.
    assert_eq!(got["askedAck"], false);
    assert!(got["offset"].is_string(), "{got}");
    let m = &got["args"][0];
    assert_eq!(m["text"], "hello bob");
    assert_eq!(m["from"], s(alice));
    assert_eq!(m["conversation"], s(conv));
    let created_at = m["createdAt"].as_str().unwrap().to_owned();

    // Time cursors in, time cursors out.
    p.emit(
        "bob",
        "delivered",
        json!([{"conversationId": s(conv), "deliveredUpTo": created_at}]),
    );
    let delivered = p.event("alice", "delivered").await;
    assert_eq!(delivered["upTo"], 1);
    assert_eq!(delivered["userId"], s(bob));
    let at =
        |v: &Value, f: &str| chrono::DateTime::parse_from_rfc3339(v[f].as_str().unwrap()).unwrap();
    assert_eq!(
        at(&delivered, "deliveredUpTo"),
        chrono::DateTime::parse_from_rfc3339(&created_at).unwrap()
    );
    p.emit(
        "bob",
        "read_up_to",
        json!([{"conversationId": s(conv), "readUpTo": created_at}]),
    );
    let read = p.event("alice", "read_up_to").await;
    assert_eq!(read["upTo"], 1);
    assert_eq!(
        at(&read, "readUpTo"),
        chrono::DateTime::parse_from_rfc3339(&created_at).unwrap()
    );

    p.emit("bob", "typing", json!([{"conversationId": s(conv)}]));
    assert_eq!(p.event("alice", "typing").await["userId"], s(bob));
    p.emit(
        "bob",
        "typing-stopped",
        json!([{"conversationId": s(conv)}]),
    );
    assert_eq!(p.event("alice", "typing-stopped").await["userId"], s(bob));

    // Edits and deletes through REST reach the socket in this dialect.
    let id = sent["id"].as_str().unwrap();
    let token = srv.token_for(alice);
    let (status, _) = srv
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"text": "hello, Bob"})),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(p.event("bob", "message_edited").await["text"], "hello, Bob");
    let (status, _) = srv
        .call("DELETE", &format!("/messages/{id}"), None, Some(&token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(p.event("bob", "message_deleted").await["id"], id);

    // Calls: invite, answer (accept with SDP), candidates, hangup.
    let invite = p
        .call(
            "alice",
            "call:invite",
            json!([{"to": s(bob), "isVideo": false, "offer": {"type": "offer", "sdp": "o"}}]),
        )
        .await;
    let call_id = invite[0]["callId"].as_str().unwrap().to_owned();
    let ring = p.event("bob", "call:invite").await;
    assert_eq!(ring["callId"], call_id.as_str());
    assert_eq!(ring["from"], s(alice));
    assert_eq!(ring["isVideo"], false);
    assert_eq!(ring["offer"]["sdp"], "o");
    p.emit(
        "bob",
        "call:answer",
        json!([{"callId": call_id, "answer": {"type": "answer", "sdp": "a"}}]),
    );
    let answered = p.event("alice", "call:answer").await;
    assert_eq!(answered["answer"]["sdp"], "a");
    assert_eq!(answered["sdp"]["sdp"], "a");
    p.emit(
        "alice",
        "call:candidate",
        json!([{"callId": call_id, "candidate": {"candidate": "c-a"}}]),
    );
    assert_eq!(
        p.event("bob", "call:candidate").await["candidate"]["candidate"],
        "c-a"
    );
    p.emit(
        "bob",
        "call:candidate",
        json!([{"callId": call_id, "candidate": {"candidate": "c-b"}}]),
    );
    assert_eq!(
        p.event("alice", "call:candidate").await["candidate"]["candidate"],
        "c-b"
    );
    p.emit("bob", "call:hangup", json!([{"callId": call_id}]));
    assert_eq!(
        p.event("alice", "call:hangup").await["callId"],
        call_id.as_str()
    );
    assert_eq!(ended_call(&srv, &call_id).await.0, "ended");

    // Backend1-style: a message addressed to a user lands in the pair's direct conversation.
    let ack = p
        .call(
            "alice",
            "message",
            json!([{"to": s(bob), "text": "by user id"}]),
        )
        .await;
    assert_eq!(ack[0]["conversationId"], s(conv), "{ack:?}");
    // (The call log of the call above arrives as a message too.)
    let line = p
        .wait(|v| {
            v["name"] == "bob" && v["event"] == "message" && v["args"][0]["text"] == "by user id"
        })
        .await;
    assert_eq!(line["args"][0]["from"], s(alice));

    // Offline: the other side sees it.
    p.close("bob");
    let offline = p.event("alice", "user-status-changed").await;
    assert_eq!(offline["status"], "offline");
}

#[actix_web::test]
async fn socket_io_acknowledged_new_messages_become_delivered_receipts() {
    let srv = TestServer::start().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let conv = srv.direct(alice, bob);
    let mut a = WsClient::connect(&srv, &srv.token_for(alice)).await;
    let mut p = Puppet::start(srv.addr());
    // Without recovery offsets (`?recovery=0`, or a Dart or Python client), new messages ask
    // for an acknowledgement.
    p.connect(
        "bob",
        json!({"auth": {"token": srv.token_for(bob)}, "transports": ["websocket"], "query": {"recovery": "0"}}),
    )
    .await;
    let sent = a
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "ack me"}),
        )
        .await
        .unwrap();
    let line = p.event_line("bob", "message:new").await;
    assert_eq!(line["askedAck"], true);
    assert_eq!(line["args"][0]["id"], sent["id"]);
    // Bob's client acknowledged it: Alice sees it delivered.
    let receipt = a.expect_event("receipt:delivered").await;
    assert_eq!(receipt["upTo"], sent["seq"]);
    assert_eq!(receipt["userId"], s(bob));
}

/// A plain `/ws` client in a dialect.
async fn ws_in(srv: &TestServer, user: i64, dialect: &str) -> WsClient {
    WsClient::try_connect(
        srv.addr(),
        &format!("/ws?token={}&dialect={dialect}", srv.token_for(user)),
    )
    .await
    .unwrap()
}

#[actix_web::test]
async fn seed004_aist_calls_over_plain_ws_without_call_ids() {
    let srv = TestServer::start().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut a = ws_in(&srv, alice, "aist").await;
    let mut b = ws_in(&srv, bob, "aist").await;
    // Seed 004 frames carry no ids: a ping proves each session is up.
    a.request("ping", json!({})).await.unwrap();
    b.request("ping", json!({})).await.unwrap();

    a.emit("call:offer", json!({"sdp": "offer-1", "userId": bob}))
        .await;
    // ICE right behind the offer, before any answer: it reaches Bob once he answers.
    a.emit("call:ice", json!({"candidate": {"candidate": "early-a"}}))
        .await;
    let offer = b.expect_event("call:offer").await;
    assert_eq!(offer["sdp"], "offer-1");
    assert_eq!(offer["fromUserId"], s(alice));

    b.emit("call:answer", json!({"sdp": "answer-1"})).await;
    let answer = a.expect_event("call:answer").await;
    assert_eq!(answer["sdp"], "answer-1");
    assert_eq!(answer["fromUserId"], s(bob));
    let early = b.expect_event("call:ice").await;
    assert_eq!(early["candidate"]["candidate"], "early-a");

    b.emit("call:ice", json!({"candidate": {"candidate": "b-1"}}))
        .await;
    let ice = a.expect_event("call:ice").await;
    assert_eq!(ice["candidate"]["candidate"], "b-1");
    assert_eq!(ice["fromUserId"], s(bob));

    // An offer during the call renegotiates it instead of starting another.
    a.emit("call:offer", json!({"sdp": "offer-2", "userId": bob}))
        .await;
    let re = b.expect_event("call:offer").await;
    assert_eq!(re["sdp"], "offer-2");
    b.emit("call:answer", json!({"sdp": "answer-2"})).await;
    assert_eq!(a.expect_event("call:answer").await["sdp"], "answer-2");
    let call_id = re["callId"].as_str().unwrap().to_owned();

    a.emit("call:hangup", json!(null)).await;
    b.expect_event("call:hangup").await;
    assert_eq!(ended_call(&srv, &call_id).await.0, "ended");

    // The connection is free again: Bob calls back with `targetUserId`.
    b.emit(
        "call:offer",
        json!({"sdp": "offer-3", "targetUserId": alice}),
    )
    .await;
    let back = a.expect_event("call:offer").await;
    assert_eq!(back["fromUserId"], s(bob));
    a.emit("call:hangup", json!(null)).await;
    b.expect_event("call:hangup").await;

    // ICE with no call in progress is an error event, not a silent drop.
    a.emit("call:ice", json!({"candidate": {"candidate": "late"}}))
        .await;
    assert_eq!(a.expect_event("error").await["code"], "no_call");

    // An unknown dialect is refused before the upgrade.
    let refused = WsClient::try_connect(
        srv.addr(),
        &format!("/ws?token={}&dialect=klingon", srv.token_for(alice)),
    )
    .await;
    assert!(refused.is_err());
}

#[actix_web::test]
async fn a_lonestar_app_calls_a_backend2_app() {
    let srv = TestServer::start().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr());
    p.connect("alice", query(&srv.token_for(alice), "lonestar"))
        .await;
    p.connect("bob", query(&srv.token_for(bob), "backend2"))
        .await;
    p.emit(
        "alice",
        "start_call",
        json!([{"to": bob, "isVideo": true, "sdp": {"type": "offer", "sdp": "from-000"}}]),
    );
    let invite = p.event("bob", "call:invite").await;
    assert_eq!(invite["offer"]["sdp"], "from-000");
    assert_eq!(invite["isVideo"], true);
    let call_id = invite["callId"].as_str().unwrap().to_owned();
    p.emit(
        "bob",
        "call:answer",
        json!([{"callId": call_id, "answer": {"type": "answer", "sdp": "from-003"}}]),
    );
    // Seed 000 hears the accept and then the SDP as its own `sdp_answer`.
    assert_eq!(p.event("alice", "call_accepted").await["userId"], s(bob));
    assert_eq!(
        p.event("alice", "sdp_answer").await["sdp"]["sdp"],
        "from-003"
    );
    p.emit(
        "alice",
        "ice_candidate",
        json!([{"callId": call_id, "candidate": "c0", "sdpMid": "0", "sdpMLineIndex": 0}]),
    );
    // Seed 003's app hands `candidate` to RTCIceCandidate: an object, whatever seed 000 sent.
    assert_eq!(
        p.event("bob", "call:candidate").await["candidate"],
        json!({"candidate": "c0", "sdpMid": "0", "sdpMLineIndex": 0})
    );
    p.emit("bob", "call:hangup", json!([{"callId": call_id}]));
    assert_eq!(
        p.event("alice", "call_ended").await["callId"],
        call_id.as_str()
    );
}

#[actix_web::test]
async fn an_astrology_app_and_a_canonical_client_share_a_conversation() {
    let srv = TestServer::start().await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let agent = srv.create_user("Ann", "ann@example.com", None, &[]);
    let conv = srv.direct(user, agent);
    let mut ann = WsClient::connect(&srv, &srv.token_for(agent)).await;
    let mut p = Puppet::start(srv.addr());
    p.connect("uma", query(&srv.token_for(user), "astrology"))
        .await;
    p.emit(
        "uma",
        "dm:join_conversation",
        json!([{"conversationId": s(conv)}]),
    );
    p.event("uma", "dm:joined").await;

    p.emit(
        "uma",
        "dm:send_message",
        json!([{"conversationId": s(conv), "recipientId": s(agent), "content": "hi from 002"}]),
    );
    // The sender's own copy (seed 002 emits to the whole room).
    assert_eq!(
        p.event("uma", "dm:message_received").await["content"],
        "hi from 002"
    );
    let got = ann.expect_event("message:new").await;
    assert_eq!(got["content"], "hi from 002");
    assert_eq!(got["senderId"], s(user));

    let reply = ann
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "hi from canonical"}),
        )
        .await
        .unwrap();
    let m = p.event("uma", "dm:message_received").await;
    assert_eq!(m["content"], "hi from canonical");
    assert_eq!(m["_id"], reply["id"]);

    ann.request(
        "receipt:read",
        json!({"conversationId": conv, "upTo": reply["seq"]}),
    )
    .await
    .unwrap();
    let read = p.event("uma", "dm:messages_read").await;
    assert_eq!(read["readBy"], s(agent));
}

#[actix_web::test]
async fn unknown_dialects_and_bad_tokens_are_refused_at_connect() {
    let srv = TestServer::start().await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut p = Puppet::start(srv.addr());
    p.open("x", query(&srv.token_for(alice), "klingon"));
    let err = p
        .wait(|v| v["name"] == "x" && v["type"] == "connect_error")
        .await;
    assert!(
        err["message"].as_str().unwrap().contains("unknown dialect"),
        "{err}"
    );
    assert_eq!(err["data"]["code"], "unknown_dialect");

    p.open("y", query("not-a-token", "backend2"));
    let err = p
        .wait(|v| v["name"] == "y" && v["type"] == "connect_error")
        .await;
    assert_eq!(err["message"], "Unauthorized");

    // The dialect may also come in the auth payload.
    p.connect(
        "z",
        json!({"auth": {"token": srv.token_for(alice), "dialect": "seed003"}, "transports": ["websocket"]}),
    )
    .await;
    let stats = srv
        .running
        .state
        .engine
        .registry
        .send(switchboard::realtime::registry::GetStats)
        .await
        .unwrap();
    assert_eq!(stats.by_dialect.get("backend2"), Some(&1), "{stats:?}");
    assert_eq!(stats.by_transport.get("socket.io"), Some(&1), "{stats:?}");
}
