//! Seed 004 (AIST) on plain `/ws` of the app's own listener (naming no dialect), with the app's
//! own tokens (`{userId}` signed with the shared
//! secret): `fromUserId` has the JSON type of that claim, ICE candidates stay
//! `RTCIceCandidateInit` objects, and an offer that cannot become a call hangs up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestServer, WsClient, SECRET};
use serde_json::{json, Value};

/// A token as the AIST backend minted it: `jwt.sign({ userId }, JWT_SECRET)` (with an expiry).
fn aist_token(user_id: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"userId": user_id, "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn aist(srv: &TestServer, token: &str) -> WsClient {
    let mut c = WsClient::try_connect(srv.addr_of("aist"), &format!("/ws?token={token}"))
        .await
        .unwrap();
    // Seed 004 frames carry no ids: a ping with one proves the session is up.
    c.request("ping", json!({})).await.unwrap();
    c
}

/// One call from `a` to `b` (ids as the app's tokens carry them); checks every `fromUserId`.
async fn call_checking_ids(a: &mut WsClient, b: &mut WsClient, a_id: &Value, b_id: &Value) {
    a.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "o"}, "userId": b_id}),
    )
    .await;
    let offer = b.expect_event("call:offer").await;
    assert_eq!(&offer["fromUserId"], a_id, "{offer}");
    assert_eq!(offer["sdp"]["sdp"], "o");

    b.emit(
        "call:answer",
        json!({"sdp": {"type": "answer", "sdp": "a"}}),
    )
    .await;
    let answer = a.expect_event("call:answer").await;
    assert_eq!(&answer["fromUserId"], b_id, "{answer}");
    assert_eq!(answer["sdp"]["sdp"], "a");

    let candidate = json!({"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    b.emit("call:ice", json!({"candidate": candidate})).await;
    let ice = a.expect_event("call:ice").await;
    assert_eq!(&ice["fromUserId"], b_id, "{ice}");
    assert_eq!(ice["candidate"], candidate);

    // A renegotiation offer during the call.
    a.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "o2"}, "userId": b_id}),
    )
    .await;
    let again = b.expect_event("call:offer").await;
    assert_eq!(&again["fromUserId"], a_id, "{again}");

    a.emit("call:hangup", Value::Null).await;
    b.expect_event("call:hangup").await;
}

#[actix_web::test]
async fn from_user_id_is_a_number_when_the_apps_tokens_carry_a_numeric_user_id() {
    let srv = TestServer::start_apps(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice))).await;
    let mut b = aist(&srv, &aist_token(json!(bob))).await;
    call_checking_ids(&mut a, &mut b, &json!(alice), &json!(bob)).await;
}

#[actix_web::test]
async fn from_user_id_is_a_string_when_the_apps_tokens_carry_a_string_user_id() {
    let srv = TestServer::start_apps(|_| {}).await;
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
async fn an_offer_that_cannot_become_a_call_hangs_up_with_the_reason() {
    let srv = TestServer::start_apps(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let mut a = aist(&srv, &aist_token(json!(alice))).await;
    a.emit(
        "call:offer",
        json!({"sdp": {"type": "offer", "sdp": "o"}, "userId": 987_654_321_i64}),
    )
    .await;
    let hangup = a.expect_event("call:hangup").await;
    assert_eq!(hangup["reason"], "not_found");
    assert_eq!(hangup["code"], "not_found");
    // ICE with no call in progress is refused in the canonical error event.
    a.emit("call:ice", json!({"candidate": {"candidate": "late"}}))
        .await;
    assert_eq!(a.expect_event("error").await["code"], "no_call");
}
