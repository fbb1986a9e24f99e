//! Seed 004 (AIST) on plain `/ws` of the app's own listener (naming no dialect), with the app's
//! own tokens (`{userId}` signed with the shared secret), checked against the seed document:
//!
//! - connecting: `/ws?token=JWT` on the port that also serves REST; no token, a bad one, one
//!   signed with another secret, an expired one, or one without a user closes with
//!   4001 `Unauthorized`;
//! - client → server: `call:offer{sdp, userId}` (or `targetUserId`; `userId` a number or a
//!   string), `call:answer{sdp}`, `call:ice{candidate}`, `call:hangup` (with or without a
//!   `payload`);
//! - server → client: `call:offer{sdp, fromUserId}` (also a renegotiation), `call:answer{sdp}`,
//!   `call:ice{candidate}` (the `RTCIceCandidateInit` object), `call:hangup` when the other party
//!   hangs up, declines, calls off a ringing call or closes its socket; `fromUserId` has the JSON
//!   type of the token's `userId` claim;
//! - where the document is silent (see README, "Seed 004"): an offer that cannot become a call
//!   (unknown user, callee busy, callee never answering) hangs up and leaves the call in progress
//!   alone; ICE with no call answers the canonical `error`; the connection that hangs up does
//!   not hear its own `call:hangup` back; after a hang-up both parties are free to call again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestServer, WsClient, SECRET};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::config::Config;

/// A token as the AIST backend minted it: `jwt.sign({ userId }, JWT_SECRET)` (with an expiry).
fn aist_token(user_id: Value) -> String {
    signed(
        &json!({"userId": user_id, "exp": chrono::Utc::now().timestamp() + 600}),
        SECRET,
    )
}

fn signed(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A server as the apps are served, after `tweak`. Database connections may take a while on a
/// loaded test machine: commands wait up to 10 s for one (2 s by default).
async fn aist_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_apps(|c| {
        c.db_acquire_timeout = Duration::from_secs(10);
        tweak(c);
    })
    .await
}

async fn aist(srv: &TestServer, token: &str) -> WsClient {
    let mut c = WsClient::try_connect(srv.addr_of("aist"), &format!("/ws?token={token}"))
        .await
        .unwrap();
    // Seed 004 frames carry no ids: a ping with one proves the session is up.
    c.request("ping", json!({})).await.unwrap();
    c
}

/// An `RTCIceCandidateInit` as a browser's `onicecandidate` hands it over.
fn ice_init(candidate: &str, mid: &str, line: i64) -> Value {
    json!({"candidate": candidate, "sdpMid": mid, "sdpMLineIndex": line})
}

/// A `call:ice` payload: the candidate object, its fields in their JSON types.
fn check_ice(got: &Value, want: &Value) {
    let c = &got["candidate"];
    assert!(c.is_object(), "{got}");
    assert!(c["candidate"].is_string(), "{got}");
    assert!(c["sdpMid"].is_string(), "{got}");
    assert!(c["sdpMLineIndex"].is_i64(), "{got}");
    assert_eq!(c, want, "{got}");
}

/// `fromUserId` is `want`, in its JSON type (a number or a string, as the token's claim).
fn check_from(got: &Value, want: &Value) {
    let from = &got["fromUserId"];
    assert!(from.is_i64() || from.is_string(), "{got}");
    assert_eq!(from.is_i64(), want.is_i64(), "{got}");
    assert_eq!(from, want, "{got}");
}

/// One call from `a` to `b` (ids as the app's tokens carry them), checking every field the app
/// reads and every `fromUserId`; then `b` calls `a` back (the hang-up freed both).
async fn call_checking_ids(a: &mut WsClient, b: &mut WsClient, a_id: &Value, b_id: &Value) {
    let offer = json!({"type": "offer", "sdp": "v=0 o"});
    a.emit("call:offer", json!({"sdp": offer, "userId": b_id}))
        .await;
    let got = b.expect_event("call:offer").await;
    check_from(&got, a_id);
    assert_eq!(got["sdp"], offer);

    let answer = json!({"type": "answer", "sdp": "v=0 a"});
    b.emit("call:answer", json!({"sdp": answer})).await;
    let got = a.expect_event("call:answer").await;
    check_from(&got, b_id);
    assert_eq!(got["sdp"], answer);

    let from_b = ice_init("candidate:1 1 udp 1 10.0.0.1 9 typ host", "0", 0);
    b.emit("call:ice", json!({"candidate": from_b})).await;
    let got = a.expect_event("call:ice").await;
    check_from(&got, b_id);
    check_ice(&got, &from_b);
    let from_a = ice_init("candidate:2 1 udp 2 203.0.113.9 9 typ srflx", "1", 1);
    a.emit("call:ice", json!({"candidate": from_a})).await;
    let got = b.expect_event("call:ice").await;
    check_from(&got, a_id);
    check_ice(&got, &from_a);

    // A renegotiation offer during the call, and its answer.
    a.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "o2"}, "userId": b_id}),
    )
    .await;
    let again = b.expect_event("call:offer").await;
    check_from(&again, a_id);
    assert_eq!(again["sdp"]["sdp"], "o2");
    b.emit(
        "call:answer",
        json!({"sdp": {"type": "answer", "sdp": "a2"}}),
    )
    .await;
    let again = a.expect_event("call:answer").await;
    check_from(&again, b_id);
    assert_eq!(again["sdp"]["sdp"], "a2");

    // A hang-up frame may also carry a (null) payload.
    a.emit("call:hangup", Value::Null).await;
    let got = b.expect_event("call:hangup").await;
    assert!(got["callId"].is_string(), "{got}");
    // Not echoed to the connection that hung up (frames are answered in order).
    a.request("ping", json!({})).await.unwrap();
    assert!(a.take_buffered("call:hangup").is_empty());

    // Both are free again: a new offer is a new call, the other way round.
    b.emit("call:offer", json!({"sdp": "v=0 back", "userId": a_id}))
        .await;
    let back = a.expect_event("call:offer").await;
    check_from(&back, b_id);
    assert_eq!(back["sdp"], "v=0 back");
    hang_up(b, a).await;
}

#[actix_web::test]
async fn from_user_id_is_a_number_when_the_apps_tokens_carry_a_numeric_user_id() {
    let srv = aist_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice))).await;
    let mut b = aist(&srv, &aist_token(json!(bob))).await;
    call_checking_ids(&mut a, &mut b, &json!(alice), &json!(bob)).await;
}

#[actix_web::test]
async fn from_user_id_is_a_string_when_the_apps_tokens_carry_a_string_user_id() {
    let srv = aist_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice.to_string()))).await;
    let mut b = aist(&srv, &aist_token(json!(bob.to_string()))).await;
    call_checking_ids(
        &mut a,
        &mut b,
        &json!(alice.to_string()),
        &json!(bob.to_string()),
    )
    .await;
    a.close().await;
    b.close().await;
    // Switchboard's own tokens carry the id as a string (`sub`): strings too.
    let mut a = aist(&srv, &srv.token_for(alice)).await;
    let mut b = aist(&srv, &srv.token_for(bob)).await;
    call_checking_ids(
        &mut a,
        &mut b,
        &json!(alice.to_string()),
        &json!(bob.to_string()),
    )
    .await;
}

#[actix_web::test]
async fn an_offer_may_name_its_callee_as_target_user_id() {
    let srv = aist_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice))).await;
    let mut b = aist(&srv, &aist_token(json!(bob))).await;
    a.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "o"}, "targetUserId": bob}),
    )
    .await;
    let offer = b.expect_event("call:offer").await;
    assert!(offer["fromUserId"].is_i64(), "{offer}");
    assert_eq!(offer["fromUserId"], json!(alice));
    assert_eq!(offer["sdp"]["sdp"], "o");
    b.emit(
        "call:answer",
        json!({"sdp": {"type": "answer", "sdp": "a"}}),
    )
    .await;
    assert_eq!(a.expect_event("call:answer").await["sdp"]["sdp"], "a");
}

/// `who` hangs up as the app does (`{event: "call:hangup"}`, no payload at all); `peer` gets
/// `call:hangup` for that call and `who` does not (as the seed's server, which told only the
/// other party).
async fn hang_up(who: &mut WsClient, peer: &mut WsClient) -> Value {
    who.send_text(json!({"event": "call:hangup"}).to_string())
        .await;
    let got = peer.expect_event("call:hangup").await;
    assert!(got["callId"].is_string(), "{got}");
    // Frames are answered in order: once a ping is answered, an echo would have arrived.
    who.request("ping", json!({})).await.unwrap();
    assert!(
        who.take_buffered("call:hangup").is_empty(),
        "echoed to the connection that hung up"
    );
    got
}

#[actix_web::test]
async fn either_party_hangs_up_declines_or_calls_off_with_call_hangup() {
    let srv = aist_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice))).await;
    let mut b = aist(&srv, &aist_token(json!(bob))).await;

    // The callee hangs up a call in progress.
    a.emit("call:offer", json!({"sdp": "o1", "userId": bob}))
        .await;
    b.expect_event("call:offer").await;
    b.emit("call:answer", json!({"sdp": "a1"})).await;
    a.expect_event("call:answer").await;
    let got = hang_up(&mut b, &mut a).await;
    assert_eq!(got["reason"], "hangup");

    // The callee declines a ringing call by hanging up.
    a.emit("call:offer", json!({"sdp": "o2", "userId": bob}))
        .await;
    b.expect_event("call:offer").await;
    let got = hang_up(&mut b, &mut a).await;
    assert!(got["reason"].is_string(), "{got}");

    // The caller calls off a ringing call.
    a.emit("call:offer", json!({"sdp": "o3", "userId": bob}))
        .await;
    b.expect_event("call:offer").await;
    let got = hang_up(&mut a, &mut b).await;
    assert_eq!(got["reason"], "cancelled");

    // A hang-up with nothing in progress (the peer hung up first) is no error.
    a.send_text(json!({"event": "call:hangup"}).to_string())
        .await;
    a.request("ping", json!({})).await.unwrap();
    assert!(a.take_buffered("error").is_empty());

    // Nothing is left over: the next offer rings as a new call.
    b.emit("call:offer", json!({"sdp": "o4", "userId": alice}))
        .await;
    assert_eq!(a.expect_event("call:offer").await["sdp"], "o4");
}

#[actix_web::test]
async fn a_socket_that_closes_hangs_its_call_up_at_once() {
    // However long the grace other apps get to come back to a call, an AIST socket cannot.
    let srv = aist_server(|c| c.call_reconnect_grace = Duration::from_secs(120)).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut b = aist(&srv, &aist_token(json!(bob))).await;
    for closing in ["caller", "callee"] {
        let mut a = aist(&srv, &aist_token(json!(alice))).await;
        a.emit("call:offer", json!({"sdp": "o", "userId": bob}))
            .await;
        b.expect_event("call:offer").await;
        b.emit("call:answer", json!({"sdp": "a"})).await;
        a.expect_event("call:answer").await;
        if closing == "caller" {
            a.close().await;
            let got = b.expect_event("call:hangup").await;
            assert_eq!(got["reason"], "network_error", "{got}");
            // No grace: nothing announced a peer coming back.
            assert!(b.take_buffered("call:peer_reconnecting").is_empty());
        } else {
            b.close().await;
            let got = a.expect_event("call:hangup").await;
            assert_eq!(got["reason"], "network_error", "{got}");
            assert!(a.take_buffered("call:peer_reconnecting").is_empty());
            b = aist(&srv, &aist_token(json!(bob))).await;
        }
        // The page reloads and calls again: a new call rings at once.
        let mut a = aist(&srv, &aist_token(json!(alice))).await;
        a.emit("call:offer", json!({"sdp": "again", "userId": bob}))
            .await;
        let again = b.expect_event("call:offer").await;
        assert_eq!(again["sdp"], "again");
        assert_eq!(again["fromUserId"], json!(alice));
        hang_up(&mut a, &mut b).await;
        a.close().await;
    }
}

#[actix_web::test]
async fn an_offer_that_cannot_become_a_call_hangs_up_with_the_reason() {
    let srv = aist_server(|c| c.ring_timeout = Duration::from_secs(1)).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let dave = srv.create_user("Dave", "dave@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice))).await;
    a.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "o"}, "userId": 987_654_321_i64}),
    )
    .await;
    let hangup = a.expect_event("call:hangup").await;
    assert_eq!(hangup["reason"], "not_found");
    assert_eq!(hangup["code"], "not_found");
    assert!(hangup["message"].is_string(), "{hangup}");
    // ICE with no call in progress is refused in the canonical error event.
    a.emit("call:ice", json!({"candidate": {"candidate": "late"}}))
        .await;
    assert_eq!(a.expect_event("error").await["code"], "no_call");

    // A callee who is not connected is rung until the ring times out, then the offer hangs up.
    a.emit("call:offer", json!({"sdp": "o", "userId": dave}))
        .await;
    let unanswered = a.expect_event("call:hangup").await;
    assert!(unanswered["callId"].is_string(), "{unanswered}");

    // A callee already in a call: the offer hangs up, the call in progress goes on.
    let mut b = aist(&srv, &aist_token(json!(bob))).await;
    let mut c = aist(&srv, &aist_token(json!(carol))).await;
    a.emit("call:offer", json!({"sdp": "o", "userId": bob}))
        .await;
    b.expect_event("call:offer").await;
    b.emit("call:answer", json!({"sdp": "a"})).await;
    a.expect_event("call:answer").await;
    c.emit("call:offer", json!({"sdp": "o", "userId": bob}))
        .await;
    c.expect_event("call:hangup").await;
    let still = ice_init("candidate:3 1 udp 3 10.0.0.3 9 typ host", "0", 0);
    b.emit("call:ice", json!({"candidate": still})).await;
    check_ice(&a.expect_event("call:ice").await, &still);
    assert!(b.take_buffered("call:offer").is_empty());
}

#[actix_web::test]
async fn one_port_serves_rest_and_ws_and_a_socket_without_a_valid_token_closes_4001() {
    let srv = aist_server(|_| {}).await.rest_on("aist");
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let (status, health) = srv.get("/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");

    let now = chrono::Utc::now().timestamp();
    let refused = [
        ("no token", "/ws".to_owned()),
        ("not a JWT", "/ws?token=not-a-jwt".to_owned()),
        (
            "another secret",
            format!(
                "/ws?token={}",
                signed(
                    &json!({"userId": alice, "exp": now + 600}),
                    "another-secret-another-secret-another-se"
                )
            ),
        ),
        (
            "expired",
            format!(
                "/ws?token={}",
                signed(&json!({"userId": alice, "exp": now - 3600}), SECRET)
            ),
        ),
        (
            "no user",
            format!("/ws?token={}", signed(&json!({"exp": now + 600}), SECRET)),
        ),
    ];
    for (what, path) in refused {
        let mut c = WsClient::try_connect(srv.addr_of("aist"), &path)
            .await
            .unwrap();
        assert!(
            c.next_frame(Duration::from_secs(10)).await.is_none(),
            "{what}"
        );
        assert_eq!(c.close_code(), Some(4001), "{what}");
        let reason = c.closed.clone().flatten().and_then(|r| r.description);
        assert_eq!(reason.as_deref(), Some("Unauthorized"), "{what}");
    }
    // The app's own token connects and stays open.
    let mut ok = aist(&srv, &aist_token(json!(alice))).await;
    ok.request("ping", json!({})).await.unwrap();
    assert_eq!(ok.close_code(), None);
}
