//! Socket.IO connection state recovery with the real `socket.io-client`: an app of each
//! Socket.IO dialect loses its transport, misses twenty messages and an edit, reconnects and is
//! `recovered` with the same socket id, receives exactly what it missed in order and in its own
//! words, then live events; over WebSocket and long-polling; across a server restart and on
//! another node; and the cases that must come back as a fresh session (a forged or expired
//! private id, more missed events than the cap) or not at all (a banned user).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{RedisSpace, TestServer, WsClient};
use serde_json::{json, Value};
use std::time::Duration;

fn s(id: i64) -> String {
    id.to_string()
}

/// How a dialect's app hears a new message and an edit.
struct App {
    dialect: &'static str,
    new_message: &'static str,
    edited: &'static str,
    /// The app signs in with an `authenticate` event instead of a token on CONNECT (seed 000).
    by_event: bool,
}

const APPS: [App; 5] = [
    App {
        dialect: "canonical",
        new_message: "message:new",
        edited: "message:edited",
        by_event: false,
    },
    App {
        dialect: "lonestar",
        new_message: "message:new",
        edited: "message:edited",
        by_event: true,
    },
    App {
        dialect: "worldmates",
        new_message: "message:new",
        edited: "message:edited",
        by_event: false,
    },
    App {
        dialect: "astrology",
        new_message: "dm:message_received",
        edited: "message:edited",
        by_event: false,
    },
    App {
        dialect: "backend2",
        new_message: "message",
        edited: "message_edited",
        by_event: false,
    },
];

/// Connects `name` as `app` does over one transport, at `addr`.
async fn sign_in(
    p: &mut Puppet,
    srv: &TestServer,
    addr: std::net::SocketAddr,
    app: &App,
    name: &str,
    user: i64,
    transport: &str,
) -> Value {
    let mut opts = json!({"transports": [transport]});
    if !app.by_event {
        opts["auth"] = json!({"token": srv.token_for(user)});
    }
    let connected = p.connect_at(name, addr, opts).await;
    if app.by_event {
        authenticate(p, srv, name, user).await;
    }
    connected
}

/// The seed 000 app's `authenticate` (it sends it on every `connect`).
async fn authenticate(p: &mut Puppet, srv: &TestServer, name: &str, user: i64) {
    let ack = p
        .call(name, "authenticate", json!([srv.token_for(user)]))
        .await;
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
}

/// Sends a message over `/ws` and answers its id.
async fn send(ws: &mut WsClient, conv: i64, text: &str) -> String {
    let ack = ws
        .request(
            "message:send",
            json!({"conversationId": conv, "content": text}),
        )
        .await
        .unwrap();
    ack["id"].as_str().unwrap().to_owned()
}

/// The next event line of `name` among message events.
async fn next_message_line(p: &mut Puppet, name: &str, app: &App) -> Value {
    let (new, edited) = (app.new_message, app.edited);
    p.wait(|v| {
        v["name"] == name && v["type"] == "event" && (v["event"] == new || v["event"] == edited)
    })
    .await
}

/// Waits for `name`'s disconnect.
async fn disconnected(p: &mut Puppet, name: &str) -> Value {
    p.wait(|v| v["name"] == name && v["type"] == "disconnect")
        .await
}

/// One app: connect, receive one message, drop the transport, miss 20 messages and an edit of
/// the first, reconnect; recovered, same id, exactly the missed events in order, then live.
async fn drop_and_recover(srv: &TestServer, p: &mut Puppet, app: &App, transport: &str) {
    let tag = format!("{}-{transport}", app.dialect);
    let alice = srv.create_user("Alice", &format!("alice-{tag}@example.com"), None, &[]);
    let bob = srv.create_user("Bob", &format!("bob-{tag}@example.com"), None, &[]);
    let conv = srv.direct(alice, bob);
    let mut ws = WsClient::connect(srv, &srv.token_for(alice)).await;
    let name = format!("bob-{tag}");
    let first = sign_in(p, srv, srv.addr_of(app.dialect), app, &name, bob, transport).await;
    assert_eq!(first["recovered"], false, "{tag}: {first}");

    let before = send(&mut ws, conv, "before the drop").await;
    let line = next_message_line(p, &name, app).await;
    assert_eq!(line["event"], app.new_message, "{tag}: {line}");
    assert_eq!(line["args"][0]["content"], "before the drop", "{tag}");
    assert!(
        line["offset"].is_string(),
        "{tag}: an offset comes with every event: {line}"
    );
    assert_eq!(
        line["askedAck"], false,
        "{tag}: offsets replace ack requests"
    );

    p.drop_transport(&name);
    disconnected(p, &name).await;
    for i in 1..=20 {
        send(&mut ws, conv, &format!("missed {i}")).await;
    }
    ws.request(
        "message:edit",
        json!({"messageId": before, "content": "before the drop (edited)"}),
    )
    .await
    .unwrap();

    let back = p.reconnect(&name).await;
    assert_eq!(back["recovered"], true, "{tag}: {back}");
    assert_eq!(
        back["id"], first["id"],
        "{tag}: the same socket id comes back"
    );
    if app.by_event {
        authenticate(p, srv, &name, bob).await;
    }
    for i in 1..=20 {
        let line = next_message_line(p, &name, app).await;
        assert_eq!(line["event"], app.new_message, "{tag} #{i}: {line}");
        assert_eq!(line["args"][0]["content"], format!("missed {i}"), "{tag}");
        assert_eq!(line["args"][0]["seq"], i + 1, "{tag}");
    }
    let line = next_message_line(p, &name, app).await;
    assert_eq!(line["event"], app.edited, "{tag}: {line}");
    assert_eq!(
        line["args"][0]["content"], "before the drop (edited)",
        "{tag}"
    );
    assert_eq!(line["args"][0]["id"], before, "{tag}");

    // Then live events, and nothing twice.
    send(&mut ws, conv, "live again").await;
    let line = next_message_line(p, &name, app).await;
    assert_eq!(line["args"][0]["content"], "live again", "{tag}: {line}");
    let extra = p
        .try_wait(
            &|v: &Value| {
                v["name"] == name.as_str()
                    && v["type"] == "event"
                    && (v["event"] == app.new_message || v["event"] == app.edited)
            },
            Duration::from_millis(300),
        )
        .await;
    assert!(extra.is_none(), "{tag}: an event came twice: {extra:?}");
    p.close(&name);
}

#[actix_web::test]
async fn every_socketio_app_recovers_what_it_missed_over_websocket_and_polling() {
    let srv = TestServer::start_apps(|_| {}).await;
    let mut p = Puppet::start(srv.addr());
    for app in &APPS {
        for transport in ["websocket", "polling"] {
            drop_and_recover(&srv, &mut p, app, transport).await;
        }
    }
}

/// One app's client before a restart.
struct Waiting {
    app: &'static App,
    name: String,
    alice: i64,
    bob: i64,
    conv: i64,
    first: Value,
    before: String,
}

#[actix_web::test]
async fn every_socketio_app_recovers_across_a_server_restart() {
    let srv = TestServer::start_apps(|_| {}).await;
    let mut p = Puppet::start(srv.addr());
    let mut waiting = Vec::new();
    for app in &APPS {
        let tag = format!("{}-restart", app.dialect);
        let alice = srv.create_user("Alice", &format!("alice-{tag}@example.com"), None, &[]);
        let bob = srv.create_user("Bob", &format!("bob-{tag}@example.com"), None, &[]);
        let conv = srv.direct(alice, bob);
        let name = format!("bob-{tag}");
        let first = sign_in(
            &mut p,
            &srv,
            srv.addr_of(app.dialect),
            app,
            &name,
            bob,
            "websocket",
        )
        .await;
        let mut ws = WsClient::connect(&srv, &srv.token_for(alice)).await;
        let before = send(&mut ws, conv, "before the restart").await;
        let line = next_message_line(&mut p, &name, app).await;
        assert_eq!(line["args"][0]["content"], "before the restart", "{tag}");
        waiting.push(Waiting {
            app,
            name,
            alice,
            bob,
            conv,
            first,
            before,
        });
    }
    let srv = srv.restart(|_| {}).await;
    for w in &waiting {
        disconnected(&mut p, &w.name).await;
    }
    for w in &waiting {
        let mut ws = WsClient::connect(&srv, &srv.token_for(w.alice)).await;
        for i in 1..=20 {
            send(&mut ws, w.conv, &format!("missed {i}")).await;
        }
        ws.request(
            "message:edit",
            json!({"messageId": w.before, "content": "before the restart (edited)"}),
        )
        .await
        .unwrap();
    }
    for w in &waiting {
        let (app, name) = (w.app, w.name.as_str());
        let back = p.reconnect(name).await;
        assert_eq!(back["recovered"], true, "{}: {back}", app.dialect);
        assert_eq!(back["id"], w.first["id"], "{}", app.dialect);
        if app.by_event {
            authenticate(&mut p, &srv, name, w.bob).await;
        }
        for i in 1..=20 {
            let line = next_message_line(&mut p, name, app).await;
            assert_eq!(line["event"], app.new_message, "{}: {line}", app.dialect);
            assert_eq!(
                line["args"][0]["content"],
                format!("missed {i}"),
                "{}",
                app.dialect
            );
        }
        let line = next_message_line(&mut p, name, app).await;
        assert_eq!(line["event"], app.edited, "{}: {line}", app.dialect);
        assert_eq!(line["args"][0]["content"], "before the restart (edited)");
    }
}

/// A user in a group and a direct conversation, with a peer sending over `/ws`.
struct Scene {
    alice: i64,
    bob: i64,
    conv: i64,
    ws: WsClient,
}

async fn scene(srv: &TestServer, tag: &str) -> Scene {
    let alice = srv.create_user("Alice", &format!("alice-{tag}@example.com"), None, &[]);
    let bob = srv.create_user("Bob", &format!("bob-{tag}@example.com"), None, &[]);
    let conv = srv.direct(alice, bob);
    let ws = WsClient::connect(srv, &srv.token_for(alice)).await;
    Scene {
        alice,
        bob,
        conv,
        ws,
    }
}

/// Drops `name`'s transport and waits until its client noticed.
async fn dropped(p: &mut Puppet, name: &str) {
    p.drop_transport(name);
    disconnected(p, name).await;
}

/// Reconnects bob and checks he came back as a fresh session (`outcome` counted): a new id,
/// nothing replayed, live events flowing.
async fn comes_back_fresh(
    p: &mut Puppet,
    srv: &TestServer,
    sc: &mut Scene,
    first: &Value,
    outcome: &str,
) {
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], false, "{back}");
    assert_ne!(back["id"], first["id"]);
    assert!(
        p.gets("bob", "message:new", Duration::from_millis(500))
            .await
            .is_none(),
        "a fresh session replays nothing"
    );
    send(&mut sc.ws, sc.conv, "live").await;
    assert_eq!(p.event("bob", "message:new").await["content"], "live");
    assert_eq!(
        srv.running
            .state
            .engine
            .metrics
            .socketio_recoveries(outcome),
        1
    );
}

/// Alice calls Bob over `/ws`; answers the call id.
async fn alice_calls_bob(sc: &mut Scene, call_type: &str) -> String {
    let ack = sc
        .ws
        .request(
            "call:initiate",
            json!({"to": s(sc.bob), "callType": call_type}),
        )
        .await
        .unwrap();
    ack["callId"].as_str().unwrap().to_owned()
}

fn canonical(srv: &TestServer, user: i64) -> Value {
    json!({"auth": {"token": srv.token_for(user)}, "transports": ["websocket"]})
}

#[actix_web::test]
async fn a_session_is_recovered_after_a_server_restart() {
    let srv = TestServer::start_with(|_| {}).await;
    let mut sc = scene(&srv, "restart").await;
    let mut p = Puppet::start(srv.addr());
    let first = p.connect("bob", canonical(&srv, sc.bob)).await;
    send(&mut sc.ws, sc.conv, "one").await;
    assert_eq!(p.event("bob", "message:new").await["content"], "one");
    let mine = p
        .call(
            "bob",
            "message:send",
            json!([{"conversationId": s(sc.conv), "content": "from bob"}]),
        )
        .await;
    let mine_seq = mine[0]["seq"].clone();
    assert_eq!(mine_seq, 2, "{mine:?}");
    drop(sc.ws);
    let srv = srv.restart(|_| {}).await;
    let gone = disconnected(&mut p, "bob").await;
    assert_eq!(gone["reason"], "transport close", "{gone}");
    // While Bob is away: two messages, and Alice reads his.
    let mut ws = WsClient::connect(&srv, &srv.token_for(sc.alice)).await;
    ws.request(
        "receipt:read",
        json!({"conversationId": sc.conv, "upTo": 2}),
    )
    .await
    .unwrap();
    for text in ["two", "three"] {
        send(&mut ws, sc.conv, text).await;
    }
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], true, "{back}");
    assert_eq!(back["id"], first["id"]);
    assert_eq!(p.event("bob", "message:new").await["content"], "two");
    assert_eq!(p.event("bob", "message:new").await["content"], "three");
    let read = p.event("bob", "receipt:read").await;
    assert_eq!(read["userId"], s(sc.alice));
    assert_eq!(read["upTo"], 2);
    let left = p.unconsumed("bob");
    assert!(
        left.iter().all(|e| e.starts_with("presence")),
        "nothing but presence news is left: {left:?}"
    );
}

#[actix_web::test]
async fn a_session_is_recovered_on_another_node() {
    let redis = RedisSpace::new();
    let a = TestServer::start_with(|c| redis.join(c, "node-a")).await;
    let b = a.node(|c| redis.join(c, "node-b")).await;
    a.wait_for_cluster(2).await;
    b.wait_for_cluster(2).await;
    let mut sc = scene(&a, "nodes").await;
    let mut p = Puppet::start(a.addr());
    let first = p.connect("bob", canonical(&a, sc.bob)).await;
    send(&mut sc.ws, sc.conv, "on a").await;
    assert_eq!(p.event("bob", "message:new").await["content"], "on a");
    dropped(&mut p, "bob").await;
    // Node a keeps the session as soon as the transport is gone.
    let kept = wait_kept(&a).await;
    assert_eq!(kept, 1);
    send(&mut sc.ws, sc.conv, "while away").await;
    let back = p.reconnect_to("bob", b.addr()).await;
    assert_eq!(back["recovered"], true, "{back}");
    assert_eq!(back["id"], first["id"]);
    assert_eq!(p.event("bob", "message:new").await["content"], "while away");
    // Live through node b now.
    send(&mut sc.ws, sc.conv, "live on b").await;
    assert_eq!(p.event("bob", "message:new").await["content"], "live on b");
}

/// Waits until `srv`'s database keeps a dropped session; answers how many it keeps.
async fn wait_kept(srv: &TestServer) -> i64 {
    use diesel::prelude::*;
    for _ in 0..200 {
        let n: i64 = diesel::sql_query("SELECT count(*) AS n FROM socketio_sessions")
            .get_result::<Count>(&mut srv.db.conn())
            .unwrap()
            .n;
        if n > 0 {
            return n;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no dropped session was kept");
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[actix_web::test]
async fn a_forged_private_id_comes_back_as_a_fresh_session_with_nothing_replayed() {
    let srv = TestServer::start_with(|_| {}).await;
    let mut sc = scene(&srv, "forged").await;
    let mut p = Puppet::start(srv.addr());
    let first = p.connect("bob", canonical(&srv, sc.bob)).await;
    send(&mut sc.ws, sc.conv, "one").await;
    p.event("bob", "message:new").await;
    dropped(&mut p, "bob").await;
    send(&mut sc.ws, sc.conv, "missed").await;
    p.forge_pid("bob", "0123456789abcdef0123456789abcdef");
    comes_back_fresh(&mut p, &srv, &mut sc, &first, "unknown_session").await;
}

#[actix_web::test]
async fn an_expired_session_comes_back_fresh() {
    let srv = TestServer::start_with(|c| c.socketio_recovery = Duration::from_secs(1)).await;
    let mut sc = scene(&srv, "expired").await;
    let mut p = Puppet::start(srv.addr());
    let first = p.connect("bob", canonical(&srv, sc.bob)).await;
    dropped(&mut p, "bob").await;
    send(&mut sc.ws, sc.conv, "missed").await;
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    comes_back_fresh(&mut p, &srv, &mut sc, &first, "unknown_session").await;
}

#[actix_web::test]
async fn a_user_banned_while_away_is_not_recovered() {
    let srv = TestServer::start_with(|_| {}).await;
    let mut sc = scene(&srv, "banned").await;
    let mut p = Puppet::start(srv.addr());
    p.connect("bob", canonical(&srv, sc.bob)).await;
    dropped(&mut p, "bob").await;
    send(&mut sc.ws, sc.conv, "missed").await;
    srv.db.exec(&format!(
        "UPDATE users SET banned_at = now() WHERE id = {}",
        sc.bob
    ));
    p.start_reconnect("bob");
    let got = p
        .wait(|v| v["name"] == "bob" && (v["type"] == "connect" || v["type"] == "connect_error"))
        .await;
    assert_eq!(got["type"], "connect_error", "{got}");
    assert!(p
        .gets("bob", "message:new", Duration::from_millis(300))
        .await
        .is_none());
}

#[actix_web::test]
async fn a_tokenless_app_banned_while_away_is_not_recovered() {
    let srv = TestServer::start_apps(|_| {}).await;
    let mut sc = scene(&srv, "banned-lonestar").await;
    let mut p = Puppet::start(srv.addr());
    let app = &APPS[1];
    sign_in(
        &mut p,
        &srv,
        srv.addr_of("lonestar"),
        app,
        "bob",
        sc.bob,
        "websocket",
    )
    .await;
    dropped(&mut p, "bob").await;
    send(&mut sc.ws, sc.conv, "missed").await;
    srv.db.exec(&format!(
        "UPDATE users SET banned_at = now() WHERE id = {}",
        sc.bob
    ));
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], false, "{back}");
    // The app authenticates as it always does, and is refused.
    p.emit("bob", "authenticate", json!([srv.token_for(sc.bob)]));
    let err = p.event("bob", "error").await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    assert!(p.unconsumed("bob").iter().all(|e| e != "message:new"));
}

#[actix_web::test]
async fn a_recovery_past_the_cap_falls_back_to_a_fresh_session() {
    let srv = TestServer::start_with(|c| c.socketio_recovery_max_events = 5).await;
    let mut sc = scene(&srv, "cap").await;
    let mut p = Puppet::start(srv.addr());
    let first = p.connect("bob", canonical(&srv, sc.bob)).await;
    dropped(&mut p, "bob").await;
    for i in 0..6 {
        send(&mut sc.ws, sc.conv, &format!("missed {i}")).await;
    }
    // Never a partial replay.
    comes_back_fresh(&mut p, &srv, &mut sc, &first, "too_many_events").await;
    // Five missed events are within the cap.
    dropped(&mut p, "bob").await;
    for i in 0..5 {
        send(&mut sc.ws, sc.conv, &format!("again {i}")).await;
    }
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], true, "{back}");
    for i in 0..5 {
        assert_eq!(
            p.event("bob", "message:new").await["content"],
            format!("again {i}")
        );
    }
}

#[actix_web::test]
async fn a_client_that_leaves_on_purpose_or_is_signed_out_is_not_kept() {
    let srv = TestServer::start_with(|_| {}).await;
    let sc = scene(&srv, "leaves").await;
    let mut p = Puppet::start(srv.addr());
    p.connect("bob", canonical(&srv, sc.bob)).await;
    p.close("bob");
    disconnected(&mut p, "bob").await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kept_now(&srv), 0, "a socket.disconnect() is not kept");
    // A kicked session is not kept either.
    p.connect("bob-again", canonical(&srv, sc.bob)).await;
    let kicked = srv
        .running
        .state
        .engine
        .kick(
            sc.bob,
            None,
            switchboard::realtime::session::CLOSE_UNAUTHORIZED,
            "signed out",
        )
        .await;
    assert_eq!(kicked, 1);
    disconnected(&mut p, "bob-again").await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kept_now(&srv), 0, "a kicked session is not kept");
    let _ = sc.alice;
}

fn kept_now(srv: &TestServer) -> i64 {
    use diesel::prelude::*;
    diesel::sql_query("SELECT count(*) AS n FROM socketio_sessions")
        .get_result::<Count>(&mut srv.db.conn())
        .unwrap()
        .n
}

#[actix_web::test]
async fn flutter_and_python_clients_get_no_offsets_and_keep_delivery_acks() {
    // The Dart and Python clients hand an appended offset to the app's handler, so they are
    // offered no recovery: their events stay as they were (with delivery ack requests).
    let srv = TestServer::start_with(|_| {}).await;
    let mut sc = scene(&srv, "dart").await;
    let mut p = Puppet::start(srv.addr());
    let mut opts = canonical(&srv, sc.bob);
    opts["extraHeaders"] = json!({"User-Agent": "Dart/3.5 (dart:io)"});
    let first = p.connect("bob", opts).await;
    assert_eq!(first["recovered"], false);
    send(&mut sc.ws, sc.conv, "hello").await;
    let line = p.event_line("bob", "message:new").await;
    assert_eq!(line["offset"], Value::Null, "{line}");
    assert_eq!(line["askedAck"], true, "{line}");
    assert_eq!(line["argc"], 2, "payload and ack callback only: {line}");
    // socket.io-client's own view: one argument plus the offset.
    let mut q = Puppet::start(srv.addr());
    q.connect("bob2", canonical(&srv, sc.bob)).await;
    send(&mut sc.ws, sc.conv, "hello again").await;
    let line = q.event_line("bob2", "message:new").await;
    assert_eq!(line["argc"], 2, "payload and offset: {line}");
    assert!(line["offset"].is_string());
}

#[actix_web::test]
async fn a_recovered_callee_is_rung_for_a_call_that_started_while_it_was_away() {
    let srv = TestServer::start_with(|_| {}).await;
    let mut sc = scene(&srv, "ring").await;
    let mut p = Puppet::start(srv.addr());
    p.connect("bob", canonical(&srv, sc.bob)).await;
    dropped(&mut p, "bob").await;
    wait_kept(&srv).await;
    let id = alice_calls_bob(&mut sc, "audio").await;
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], true, "{back}");
    let incoming = p.event("bob", "call:incoming").await;
    assert_eq!(incoming["callId"], id.as_str());
    assert_eq!(incoming["fromName"], "Alice");
    p.call("bob", "call:accept", json!([{"callId": id}])).await;
    let accepted = sc.ws.expect_event("call:accepted").await;
    assert_eq!(accepted["callId"], id.as_str());
    assert!(
        p.gets("bob", "call:incoming", Duration::from_millis(300))
            .await
            .is_none(),
        "rung once"
    );
}

#[actix_web::test]
async fn a_recovered_device_takes_back_its_place_in_a_call() {
    let srv = TestServer::start_with(|c| c.call_reconnect_grace = Duration::from_secs(10)).await;
    let mut sc = scene(&srv, "rejoin").await;
    let mut p = Puppet::start(srv.addr());
    p.connect("bob", canonical(&srv, sc.bob)).await;
    let id = alice_calls_bob(&mut sc, "video").await;
    p.event("bob", "call:incoming").await;
    p.call("bob", "call:accept", json!([{"callId": id}])).await;
    sc.ws.expect_event("call:accepted").await;

    dropped(&mut p, "bob").await;
    let away = sc.ws.expect_event("call:peer_reconnecting").await;
    assert_eq!(away["userId"], s(sc.bob));
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], true, "{back}");
    let rejoined = sc.ws.expect_event("call:peer_rejoined").await;
    assert_eq!(rejoined["userId"], s(sc.bob));
    assert_eq!(p.event("bob", "call:rejoined").await["callId"], id.as_str());
    // Signalling reaches the device that came back.
    sc.ws
        .request(
            "call:ice",
            json!({"callId": id, "candidate": "after", "sdpMid": "0", "sdpMLineIndex": 0}),
        )
        .await
        .unwrap();
    assert_eq!(p.event("bob", "call:ice").await["candidate"], "after");
}

#[actix_web::test]
async fn a_call_called_off_while_the_callee_was_away_is_told_on_recovery() {
    let srv = TestServer::start_with(|_| {}).await;
    let mut sc = scene(&srv, "cancelled").await;
    let mut p = Puppet::start(srv.addr());
    p.connect("bob", canonical(&srv, sc.bob)).await;
    let id = alice_calls_bob(&mut sc, "audio").await;
    p.event("bob", "call:incoming").await;
    dropped(&mut p, "bob").await;
    wait_kept(&srv).await;
    sc.ws
        .request("call:end", json!({"callId": id}))
        .await
        .unwrap();
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], true, "{back}");
    let cancelled = p.event("bob", "call:cancelled").await;
    assert_eq!(cancelled["callId"], id.as_str());
    assert!(p
        .gets("bob", "call:incoming", Duration::from_millis(300))
        .await
        .is_none());
}

#[actix_web::test]
async fn a_kicked_socket_io_session_is_always_told_and_closed() {
    // The session's queue closes together with its close request; the request must win, or
    // the client would stay connected to nothing.
    let srv = TestServer::start_with(|_| {}).await;
    let sc = scene(&srv, "kicks").await;
    let mut p = Puppet::start(srv.addr());
    for round in 0..10 {
        let name = format!("bob-{round}");
        p.connect(&name, canonical(&srv, sc.bob)).await;
        let kicked = srv
            .running
            .state
            .engine
            .kick(
                sc.bob,
                None,
                switchboard::realtime::session::CLOSE_UNAUTHORIZED,
                "out",
            )
            .await;
        assert_eq!(kicked, 1);
        let gone = disconnected(&mut p, &name).await;
        assert_eq!(gone["reason"], "io server disconnect", "{gone}");
    }
}

#[actix_web::test]
async fn what_a_pong_confirmed_is_not_replayed_and_what_followed_is() {
    // Pings every 200 ms: each pong folds the events sent before its ping into the session's
    // starting point; the recovery still replays exactly what followed the client's offset.
    let srv = TestServer::start_with(|c| {
        c.socketio_ping_interval = Duration::from_millis(200);
        c.socketio_ping_timeout = Duration::from_millis(2000);
    })
    .await;
    let mut sc = scene(&srv, "pongs").await;
    let mut p = Puppet::start(srv.addr());
    let first = p.connect("bob", canonical(&srv, sc.bob)).await;
    for i in 0..5 {
        send(&mut sc.ws, sc.conv, &format!("seen {i}")).await;
        assert_eq!(
            p.event("bob", "message:new").await["content"],
            format!("seen {i}")
        );
    }
    // A few pings go by.
    actix_web::rt::time::sleep(Duration::from_millis(700)).await;
    send(&mut sc.ws, sc.conv, "seen last").await;
    p.event("bob", "message:new").await;
    dropped(&mut p, "bob").await;
    for i in 0..3 {
        send(&mut sc.ws, sc.conv, &format!("missed {i}")).await;
    }
    let back = p.reconnect("bob").await;
    assert_eq!(back["recovered"], true, "{back}");
    assert_eq!(back["id"], first["id"]);
    for i in 0..3 {
        assert_eq!(
            p.event("bob", "message:new").await["content"],
            format!("missed {i}")
        );
    }
    assert!(p
        .gets("bob", "message:new", Duration::from_millis(300))
        .await
        .is_none());
}

/// A kept session of `user`, dropped `ago` seconds ago.
fn kept_row(user: i64, n: u8, ago: i64) -> switchboard::db::recovery::Kept {
    let at = chrono::Utc::now() - chrono::Duration::seconds(ago);
    switchboard::db::recovery::Kept {
        pid_hash: vec![n; 32],
        user_id: user,
        sid: format!("sid-{n}"),
        dialect: "canonical".into(),
        connected_at: at,
        disconnected_at: at,
        expires_at: at + chrono::Duration::seconds(120),
        state: json!({}),
    }
}

#[actix_web::test]
async fn kept_sessions_are_capped_per_user_and_in_all_and_bound_to_their_user() {
    use switchboard::db::recovery::{keep, take};
    let srv = TestServer::start_with(|_| {}).await;
    let alice = srv.create_user("Alice", "alice-caps@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob-caps@example.com", None, &[]);
    let mut conn = srv.db.conn();
    // Per user: the newest `per_user` stay.
    let rows: Vec<_> = (0..25u8)
        .map(|n| kept_row(alice, n, i64::from(n)))
        .collect();
    assert_eq!(keep(&mut conn, &rows, 20, 1000).unwrap(), 25);
    assert_eq!(kept_now(&srv), 20);
    assert!(
        take(&mut conn, &[24; 32], Some(alice)).unwrap().is_none(),
        "the oldest went"
    );
    // Another user's private id finds nothing and leaves the session alone.
    assert!(take(&mut conn, &[0; 32], Some(bob)).unwrap().is_none());
    let mine = take(&mut conn, &[0; 32], Some(alice)).unwrap().unwrap();
    assert_eq!(mine.sid, "sid-0");
    assert!(
        take(&mut conn, &[0; 32], Some(alice)).unwrap().is_none(),
        "used up"
    );
    // In all: past `max_total`, the rest of a batch is not kept; expired ones make room.
    let more: Vec<_> = (100..110u8).map(|n| kept_row(bob, n, 0)).collect();
    assert_eq!(keep(&mut conn, &more, 20, 25).unwrap(), 6);
    assert_eq!(kept_now(&srv), 25);
    let expired: Vec<_> = (1..20u8).map(|n| kept_row(alice, n, 0)).collect();
    diesel::RunQueryDsl::execute(
        diesel::sql_query("UPDATE socketio_sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1")
            .bind::<diesel::sql_types::BigInt, _>(alice),
        &mut conn,
    )
    .unwrap();
    assert_eq!(keep(&mut conn, &expired[..4], 20, 25).unwrap(), 4);
    assert_eq!(kept_now(&srv), 10);
}
