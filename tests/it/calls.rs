//! End-to-end calls over real WebSockets against a real PostgreSQL: signaling relay, early ICE,
//! call log, reject, cancel, missed, busy, multi-device, reconnect grace, glare, group calls,
//! rate limits and permissions — with the database rows checked for each outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestServer, WsClient};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::db::schema::{call_participants, calls, messages};

fn call_row(s: &TestServer, id: &str) -> (String, Option<String>, Option<i32>, Option<i64>) {
    calls::table
        .find(id)
        .select((
            calls::status,
            calls::end_reason,
            calls::duration_secs,
            calls::ended_by,
        ))
        .first(&mut s.db.conn())
        .unwrap()
}

fn party_status(s: &TestServer, id: &str, user: i64) -> Option<String> {
    call_participants::table
        .find((id, user))
        .select(call_participants::status)
        .first(&mut s.db.conn())
        .optional()
        .unwrap()
}

/// Waits until a participant row shows `status` (persistence is asynchronous to events).
async fn party_reaches(s: &TestServer, id: &str, user: i64, status: &str) {
    for _ in 0..100 {
        if party_status(s, id, user).as_deref() == Some(status) {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "participant {user} of {id} never reached {status}: {:?}",
        party_status(s, id, user)
    );
}

/// Waits until the call row reaches a final status (persistence is asynchronous to events).
async fn settled(
    s: &TestServer,
    id: &str,
    status: &str,
) -> (String, Option<String>, Option<i32>, Option<i64>) {
    for _ in 0..100 {
        let row = calls::table
            .find(id)
            .select((
                calls::status,
                calls::end_reason,
                calls::duration_secs,
                calls::ended_by,
            ))
            .first::<(String, Option<String>, Option<i32>, Option<i64>)>(&mut s.db.conn())
            .optional()
            .unwrap();
        if let Some(row) = row {
            if row.0 == status {
                return row;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} never reached {status}: {:?}", call_row(s, id));
}

async fn call_log(s: &TestServer, call_id: &str) -> (String, String, Value) {
    for _ in 0..100 {
        let found = messages::table
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("metadata->>'callId' = ")
                    .bind::<diesel::sql_types::Text, _>(call_id),
            )
            .select((messages::kind, messages::content, messages::metadata))
            .first::<(String, String, Option<Value>)>(&mut s.db.conn())
            .optional()
            .unwrap();
        if let Some((k, c, m)) = found {
            return (k, c, m.unwrap());
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no call log for {call_id}");
}

struct Pair {
    s: TestServer,
    a: i64,
    b: i64,
}

async fn pair(tweak: impl FnOnce(&mut switchboard::config::Config)) -> Pair {
    let s = TestServer::start_with(tweak).await;
    let a = s.create_user("Alice", "alice@example.com", None, &[]);
    let b = s.create_user("Bob", "bob@example.com", None, &[]);
    Pair { s, a, b }
}

async fn connect(s: &TestServer, user: i64) -> WsClient {
    let mut c = WsClient::connect(s, &s.token_for(user)).await;
    c.request("ping", json!({})).await.unwrap();
    c
}

#[actix_web::test]
async fn full_call_relays_offer_answer_and_ice_and_posts_the_call_log() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    let ack = ca
        .request("call:initiate", json!({"to": b.to_string(), "callType": "video", "sdpOffer": {"type": "offer", "sdp": "v=0 A"}}))
        .await
        .unwrap();
    let id = ack["callId"].as_str().unwrap().to_owned();
    assert_eq!(ack["status"], "ringing");
    assert!(!ack["iceServers"].as_array().unwrap().is_empty());
    let incoming = cb.expect_event("call:incoming").await;
    assert_eq!(incoming["callId"], id.as_str());
    assert_eq!(incoming["from"], a.to_string());
    assert_eq!(incoming["fromName"], "Alice");
    assert_eq!(incoming["callType"], "video");
    assert_eq!(incoming["sdpOffer"]["sdp"], "v=0 A");
    assert!(incoming["iceServers"].is_array());
    ca.expect_event("call:ringing").await;

    // Candidates gathered before the answer are buffered for the accepting device.
    ca.request(
        "call:ice",
        json!({"callId": id, "candidate": "cand-1", "sdpMid": "0", "sdpMLineIndex": 0}),
    )
    .await
    .unwrap();
    cb.request(
        "call:accept",
        json!({"callId": id, "sdpAnswer": {"type": "answer", "sdp": "v=0 B"}}),
    )
    .await
    .unwrap();
    let accepted = ca.expect_event("call:accepted").await;
    assert_eq!(accepted["sdpAnswer"]["sdp"], "v=0 B");
    let early = cb.expect_event("call:ice").await;
    assert_eq!(
        (early["candidate"].as_str(), early["sdpMid"].as_str()),
        (Some("cand-1"), Some("0"))
    );

    cb.request(
        "call:ice",
        json!({"callId": id, "candidate": "cand-b", "sdpMid": "0", "sdpMLineIndex": 0}),
    )
    .await
    .unwrap();
    assert_eq!(ca.expect_event("call:ice").await["candidate"], "cand-b");
    // Renegotiation mid-call.
    ca.request("call:offer", json!({"callId": id, "sdp": "v=0 A2"}))
        .await
        .unwrap();
    assert_eq!(cb.expect_event("call:offer").await["sdp"], "v=0 A2");
    cb.request("call:answer", json!({"callId": id, "sdp": "v=0 B2"}))
        .await
        .unwrap();
    let ans = ca.expect_event("call:answer").await;
    assert_eq!(
        (ans["sdp"].as_str(), ans["from"].as_str()),
        (Some("v=0 B2"), Some(b.to_string().as_str()))
    );
    party_reaches(&s, &id, b, "joined").await;

    s.advance_clock(Duration::from_secs(1));
    ca.request("call:end", json!({"callId": id})).await.unwrap();
    let ended = cb.expect_event("call:ended").await;
    assert_eq!(ended["reason"], "hangup");
    assert!(ended["duration"].as_i64().unwrap() >= 1);
    ca.expect_event("call:ended").await;
    let (status, reason, duration, by) = settled(&s, &id, "ended").await;
    assert_eq!((reason.as_deref(), by), (Some("hangup"), Some(a)));
    assert!(duration.unwrap() >= 1);

    let (kind, content, meta) = call_log(&s, &id).await;
    assert_eq!(kind, "video_call");
    assert!(content.starts_with("📹 Call - 0:0"), "{content}");
    assert_eq!(meta["from"], a.to_string());
    assert_eq!(meta["to"], b.to_string());
    assert_eq!(meta["status"], "ended");
    assert!(meta["duration"].as_i64().unwrap() >= 1);
    assert!(meta["endTime"].is_string());
    // The call log is a normal message: it reaches both sides.
    assert_eq!(cb.expect_event("message:new").await["type"], "video_call");
    let _ = status;
}

#[actix_web::test]
async fn reject_cancel_and_missed_outcomes_are_recorded() {
    let Pair { s, a, b } = pair(|c| c.ring_timeout = Duration::from_secs(1)).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;

    let id = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    cb.request("call:reject", json!({"callId": id, "reason": "busy"}))
        .await
        .unwrap();
    assert_eq!(
        ca.expect_event("call:rejected").await["callId"],
        id.as_str()
    );
    settled(&s, &id, "rejected").await;
    party_reaches(&s, &id, b, "rejected").await;
    assert_eq!(call_log(&s, &id).await.1, "📞 Declined call");

    let id = ca
        .request("call:initiate", json!({"toId": b}))
        .await
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    ca.request("call:end", json!({"callId": id})).await.unwrap();
    assert_eq!(
        cb.expect_event("call:cancelled").await["callId"],
        id.as_str()
    );
    settled(&s, &id, "cancelled").await;
    assert_eq!(call_log(&s, &id).await.1, "📞 Cancelled call");

    let id = ca
        .request("call:initiate", json!({"calleeId": b.to_string()}))
        .await
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    assert_eq!(ca.expect_event("call:missed").await["callId"], id.as_str());
    assert_eq!(cb.expect_event("call:missed").await["callId"], id.as_str());
    let (_, reason, _, _) = settled(&s, &id, "missed").await;
    assert_eq!(reason.as_deref(), Some("no_answer"));
    party_reaches(&s, &id, b, "missed").await;
    let (kind, content, meta) = call_log(&s, &id).await;
    assert_eq!(
        (kind.as_str(), content.as_str(), meta["status"].as_str()),
        ("voice_call", "📞 Missed call", Some("missed"))
    );
}

#[actix_web::test]
async fn a_callee_in_another_call_is_busy_and_a_busy_caller_gets_an_error() {
    let s = TestServer::start().await;
    let a = s.create_user("A", "a@example.com", None, &[]);
    let b = s.create_user("B", "b@example.com", None, &[]);
    let c = s.create_user("C", "c@example.com", None, &[]);
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    let mut cc = connect(&s, c).await;
    let id = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();

    let ack = cc.request("call:initiate", json!({"to": b})).await.unwrap();
    assert_eq!(ack["status"], "busy");
    let busy_id = ack["callId"].as_str().unwrap().to_owned();
    assert_eq!(
        cc.expect_event("call:busy").await["callId"],
        busy_id.as_str()
    );
    settled(&s, &busy_id, "busy").await;
    party_reaches(&s, &busy_id, b, "busy").await;

    let err = ca
        .request("call:initiate", json!({"to": c}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "busy");
}

#[actix_web::test]
async fn the_first_callee_device_to_accept_wins_and_others_stop_ringing() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut ca = connect(&s, a).await;
    let mut phone = connect(&s, b).await;
    let mut laptop = connect(&s, b).await;
    let id = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    phone.expect_event("call:incoming").await;
    laptop.expect_event("call:incoming").await;
    laptop
        .request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(
        phone.expect_event("call:answered_elsewhere").await["callId"],
        id.as_str()
    );
    let err = phone
        .request("call:accept", json!({"callId": id}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "invalid_call_state");
    // Only the bound device takes part in signaling.
    ca.request("call:offer", json!({"callId": id, "sdp": "x"}))
        .await
        .unwrap();
    assert_eq!(laptop.expect_event("call:offer").await["sdp"], "x");
    assert!(phone
        .maybe_event("call:offer", Duration::from_millis(300))
        .await
        .is_none());
    let err = phone
        .request("call:ice", json!({"callId": id, "candidate": "c"}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "invalid_call_state");
}

#[actix_web::test]
async fn a_dropped_device_can_rejoin_within_the_grace_or_the_call_ends_with_network_error() {
    let Pair { s, a, b } = pair(|c| c.call_reconnect_grace = Duration::from_secs(2)).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    let id = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    drop(cb);
    assert_eq!(
        ca.expect_event("call:peer_reconnecting").await["userId"],
        b.to_string()
    );
    let mut cb2 = connect(&s, b).await;
    cb2.request("call:rejoin", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(
        ca.expect_event("call:peer_rejoined").await["userId"],
        b.to_string()
    );
    ca.request("call:ice", json!({"callId": id, "candidate": "restart"}))
        .await
        .unwrap();
    assert_eq!(cb2.expect_event("call:ice").await["candidate"], "restart");

    // This time nobody comes back.
    drop(cb2);
    ca.expect_event("call:peer_reconnecting").await;
    let ended = ca.expect_event("call:ended").await;
    assert_eq!(ended["reason"], "network_error");
    let (status, reason, _, _) = settled(&s, &id, "ended").await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("ended", Some("network_error"))
    );
}

#[actix_web::test]
async fn a_caller_dropping_while_ringing_cancels_the_call() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    let id = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    drop(ca);
    assert_eq!(
        cb.expect_event("call:cancelled").await["callId"],
        id.as_str()
    );
    settled(&s, &id, "cancelled").await;
}

#[actix_web::test]
async fn glare_resolves_into_one_call_both_sides_learn() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    // B (higher id) calls first, then A (lower id) calls B: A's call wins.
    let b_call = cb.request("call:initiate", json!({"to": a})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    ca.expect_event("call:incoming").await;
    let ack = ca.request("call:initiate", json!({"to": b})).await.unwrap();
    assert_eq!(ack["status"], "glare");
    let winner = ack["callId"].as_str().unwrap().to_owned();
    assert_ne!(winner, b_call);
    assert_eq!(
        ca.expect_event("call:glare").await["callId"],
        winner.as_str()
    );
    assert_eq!(
        cb.expect_event("call:glare").await["callId"],
        winner.as_str()
    );
    assert_eq!(
        cb.expect_event("call:incoming").await["callId"],
        winner.as_str()
    );
    cb.request("call:accept", json!({"callId": winner}))
        .await
        .unwrap();
    ca.expect_event("call:accepted").await;
    settled(&s, &b_call, "cancelled").await;

    // The other order: the lower id's existing call stands.
    ca.request("call:end", json!({"callId": winner}))
        .await
        .unwrap();
    settled(&s, &winner, "ended").await;
    let a_call = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    let ack = cb.request("call:initiate", json!({"to": a})).await.unwrap();
    assert_eq!(
        (ack["status"].as_str(), ack["callId"].as_str()),
        (Some("glare"), Some(a_call.as_str()))
    );
}

#[actix_web::test]
async fn a_three_member_group_call_with_join_and_leave() {
    let s = TestServer::start().await;
    let a = s.create_user("A", "a@example.com", None, &[]);
    let b = s.create_user("B", "b@example.com", None, &[]);
    let c = s.create_user("C", "c@example.com", None, &[]);
    let conv =
        switchboard::db::conversations::create_group(&mut s.db.conn(), a, "g", &[b, c], None)
            .unwrap()
            .id;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    let mut cc = connect(&s, c).await;
    let id = ca
        .request(
            "call:initiate",
            json!({"conversationId": conv.to_string(), "callType": "video"}),
        )
        .await
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cb.expect_event("call:incoming").await["group"], true);
    cc.expect_event("call:incoming").await;
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(
        ca.expect_event("call:participant_joined").await["userId"],
        b.to_string()
    );
    cc.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(
        cb.expect_event("call:participant_joined").await["userId"],
        c.to_string()
    );
    // Mesh signaling addressed with `to`.
    cb.request(
        "call:offer",
        json!({"callId": id, "to": c.to_string(), "sdp": "b->c"}),
    )
    .await
    .unwrap();
    let offer = cc.expect_event("call:offer").await;
    assert_eq!(
        (offer["sdp"].as_str(), offer["from"].as_str()),
        (Some("b->c"), Some(b.to_string().as_str()))
    );

    ca.request("call:end", json!({"callId": id})).await.unwrap();
    assert_eq!(
        cb.expect_event("call:participant_left").await["userId"],
        a.to_string()
    );
    party_reaches(&s, &id, a, "left").await;
    cb.request("call:end", json!({"callId": id})).await.unwrap();
    // Fewer than two remain: the call ends for the last one.
    cc.expect_event("call:ended").await;
    settled(&s, &id, "ended").await;
    for u in [a, b, c] {
        party_reaches(&s, &id, u, "left").await;
    }
    let joined: Vec<Option<chrono::DateTime<chrono::Utc>>> = call_participants::table
        .filter(call_participants::call_id.eq(&id))
        .select(call_participants::joined_at)
        .load(&mut s.db.conn())
        .unwrap();
    assert!(joined.iter().all(Option::is_some));
}

#[actix_web::test]
async fn strangers_cannot_touch_a_call_and_calls_are_rate_limited() {
    let s = TestServer::start_with(|c| {
        c.call_burst = 2;
        c.call_rate_per_hour = 2;
    })
    .await;
    let a = s.create_user("A", "a@example.com", None, &[]);
    let b = s.create_user("B", "b@example.com", None, &[]);
    let eve = s.create_user("Eve", "eve@example.com", None, &[]);
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    let mut ce = connect(&s, eve).await;
    let id = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    for (event, payload) in [
        ("call:accept", json!({"callId": id})),
        ("call:reject", json!({"callId": id})),
        ("call:end", json!({"callId": id})),
        ("call:ice", json!({"callId": id, "candidate": "x"})),
        ("call:rejoin", json!({"callId": id})),
    ] {
        let err = ce.request(event, payload).await.unwrap_err();
        assert_eq!(err["code"], "forbidden", "{event}");
    }
    // A forged sender field does not change who acts.
    cb.request(
        "call:accept",
        json!({"callId": id, "userId": eve, "from": eve}),
    )
    .await
    .unwrap();
    ca.expect_event("call:accepted").await;
    ca.request("call:end", json!({"callId": id})).await.unwrap();
    settled(&s, &id, "ended").await;

    let second = ca.request("call:initiate", json!({"to": b})).await.unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    ca.request("call:end", json!({"callId": second}))
        .await
        .unwrap();
    settled(&s, &second, "cancelled").await;
    let err = ca
        .request("call:initiate", json!({"to": b}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "rate_limited");
    let err = ce
        .request("call:accept", json!({"callId": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "not_found");
}

/// What a call left in the database, timestamps reduced to whether they are set and in order.
fn persisted(s: &TestServer, id: &str) -> Value {
    use chrono::{DateTime, Utc};
    type Times = (
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let mut conn = s.db.conn();
    let (status, reason, duration, by) = call_row(s, id);
    let (created, ringing, answered, ended): Times = calls::table
        .find(id)
        .select((
            calls::created_at,
            calls::ringing_at,
            calls::answered_at,
            calls::ended_at,
        ))
        .first(&mut conn)
        .unwrap();
    // `answered_at` and `ended_at` are stored as whole seconds after `created_at`;
    // `ringing_at` is the wall clock, so it is only compared with `created_at`.
    let mut order = vec![Some(created), answered, ended];
    order.retain(Option::is_some);
    let rang_after_creation = ringing.is_none_or(|r| r >= created);
    let parties: Vec<(i64, String, String, bool, bool)> = call_participants::table
        .filter(call_participants::call_id.eq(id))
        .order(call_participants::user_id)
        .select((
            call_participants::user_id,
            call_participants::role,
            call_participants::status,
            call_participants::joined_at.is_not_null(),
            call_participants::left_at.is_not_null(),
        ))
        .load(&mut conn)
        .unwrap();
    json!({
        "status": status,
        "reason": reason,
        "durationSet": duration.is_some(),
        "endedBy": by,
        "set": [ringing.is_some(), answered.is_some(), ended.is_some()],
        "inOrder": rang_after_creation && order.windows(2).all(|w| w[0] <= w[1]),
        "parties": parties
            .iter()
            .map(|(u, role, st, joined, left)| json!([u, role, st, joined, left]))
            .collect::<Vec<_>>(),
    })
}

/// initiate → incoming → accept → end, back to back; returns the call id.
async fn quick_call(ca: &mut WsClient, cb: &mut WsClient, to: i64) -> String {
    let ack = ca
        .request("call:initiate", json!({"to": to}))
        .await
        .unwrap();
    assert_eq!(ack["status"], "ringing", "{ack}");
    let id = ack["callId"].as_str().unwrap().to_owned();
    assert_eq!(
        cb.expect_event("call:incoming").await["callId"],
        id.as_str()
    );
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    ca.expect_event("call:accepted").await;
    ca.request("call:end", json!({"callId": id})).await.unwrap();
    cb.expect_event("call:ended").await;
    ca.expect_event("call:ended").await;
    id
}

#[actix_web::test]
async fn a_call_rings_before_anything_is_written_and_its_rows_land_complete_and_in_order() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    // The first call's log opens the pair's direct conversation (which invalidates what the
    // contact cache knew about them); the second, the reference, is decided by the database
    // and caches the decision. Both are settled, call logs included, so nothing is pending.
    let warm_up = quick_call(&mut ca, &mut cb, b).await;
    settled(&s, &warm_up, "ended").await;
    call_log(&s, &warm_up).await;
    cb.expect_event("message:new").await;
    ca.expect_event("message:new").await;
    let first = quick_call(&mut ca, &mut cb, b).await;
    settled(&s, &first, "ended").await;
    call_log(&s, &first).await;
    cb.expect_event("message:new").await;
    ca.expect_event("message:new").await;

    // Every table the call path could read or write is locked: the next call must ring, be
    // answered and end without waiting for the database.
    let mut lock = s.db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut lock,
        "BEGIN; LOCK TABLE users, conversations, conversation_members, contacts, calls, \
         call_participants IN ACCESS EXCLUSIVE MODE",
    )
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), quick_call(&mut ca, &mut cb, b))
        .await
        .expect("the call went through while the database was locked");
    let written: i64 = calls::table
        .find(&second)
        .count()
        .get_result(&mut lock)
        .unwrap();
    assert_eq!(written, 0, "nothing could be written yet");
    diesel::connection::SimpleConnection::batch_execute(&mut lock, "COMMIT").unwrap();

    // Once the database is back, the row and every state change land, in order: the same
    // history as the reference call's.
    settled(&s, &second, "ended").await;
    call_log(&s, &second).await;
    let (reference, delayed) = (persisted(&s, &first), persisted(&s, &second));
    assert_eq!(reference, delayed);
    assert_eq!(delayed["set"], json!([true, true, true]), "{delayed}");
    assert_eq!(delayed["inOrder"], true, "{delayed}");
    assert_eq!(delayed["endedBy"], json!(a), "{delayed}");
}

#[actix_web::test]
async fn a_call_read_over_rest_before_its_record_lands_is_answered_from_the_call_in_memory() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    // Reads go through, writes to the call tables wait: the call rings, its record cannot land.
    let mut lock = s.db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut lock,
        "BEGIN; LOCK TABLE calls, call_participants IN EXCLUSIVE MODE",
    )
    .unwrap();
    let ack = ca
        .request(
            "call:initiate",
            json!({"to": b.to_string(), "callType": "video"}),
        )
        .await
        .unwrap();
    let id = ack["callId"].as_str().unwrap().to_owned();
    cb.expect_event("call:incoming").await;
    let written: i64 = calls::table
        .find(&id)
        .count()
        .get_result(&mut lock)
        .unwrap();
    assert_eq!(written, 0, "the record cannot have landed yet");
    for (user, token) in [(a, s.token_for(a)), (b, s.token_for(b))] {
        let (status, body) = s.get(&format!("/api/calls/{id}"), Some(&token)).await;
        assert_eq!(status, 200, "user {user}: {body}");
        assert_eq!(body["call"]["callId"], id.as_str(), "{body}");
        assert_eq!(body["call"]["status"], "ringing", "{body}");
    }
    // A stranger is still refused.
    let c = s.create_user("Carol", "carol@example.com", None, &[]);
    let (status, _) = s
        .get(&format!("/api/calls/{id}"), Some(&s.token_for(c)))
        .await;
    assert_eq!(status, 403);
    // Called off while its writes still wait: the parties hear it ended, and REST answers the
    // final record (not 404, not "ringing") until the database has it.
    ca.emit("call:end", json!({ "callId": id })).await;
    assert_eq!(
        cb.expect_event("call:cancelled").await["callId"],
        id.as_str()
    );
    let (status, body) = s
        .get(&format!("/api/calls/{id}"), Some(&s.token_for(a)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call"]["status"], "cancelled", "{body}");
    diesel::connection::SimpleConnection::batch_execute(&mut lock, "COMMIT").unwrap();
    settled(&s, &id, "cancelled").await;
}

/// Frames that arrived just before the connection went away are still handled (the WebSocket
/// stream used to drop what it had buffered when its payload ended in a reset).
#[actix_web::test]
async fn a_hang_up_sent_just_before_the_socket_closes_still_ends_the_call() {
    let Pair { s, a, b } = pair(|_| {}).await;
    let mut cb = connect(&s, b).await;
    for round in 0..20 {
        let mut ca = connect(&s, a).await;
        let ack = ca
            .request(
                "call:initiate",
                json!({"to": b.to_string(), "callType": "audio"}),
            )
            .await
            .unwrap();
        let id = ack["callId"].as_str().unwrap().to_owned();
        cb.expect_event("call:incoming").await;
        cb.request("call:accept", json!({ "callId": id }))
            .await
            .unwrap();
        ca.expect_event("call:accepted").await;
        // The app hangs up and closes at once (no wait for the ack): with a close frame, or
        // by dropping the connection (a reset, as unread events are still queued for it).
        ca.emit("call:end", json!({ "callId": id })).await;
        if round % 2 == 0 {
            ca.close().await;
        } else {
            drop(ca);
        }
        let ended = cb.expect_event("call:ended").await;
        assert_eq!(ended["callId"], id.as_str(), "round {round}: {ended}");
        assert_eq!(ended["endedBy"], a.to_string(), "round {round}: {ended}");
        cb.buffered_clear();
    }
}

/// A caller may dial again the moment it hears its call was declined or missed: the registry
/// has let go of both parties by then.
#[actix_web::test]
async fn a_caller_can_redial_the_moment_its_call_ended() {
    let Pair { s, a, b } = pair(|c| c.ring_timeout = Duration::from_millis(300)).await;
    let mut ca = connect(&s, a).await;
    let mut cb = connect(&s, b).await;
    for round in 0..30 {
        let ack = ca
            .request(
                "call:initiate",
                json!({"to": b.to_string(), "callType": "audio"}),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(ack["status"], "ringing", "round {round}: {ack}");
        let id = ack["callId"].as_str().unwrap().to_owned();
        let ring = cb.expect_event("call:incoming").await;
        assert_eq!(ring["callId"], id.as_str());
        if round % 2 == 0 {
            // Declined at once, as the ring arrives.
            cb.emit("call:reject", json!({ "callId": id })).await;
            assert_eq!(
                ca.expect_event("call:rejected").await["callId"],
                id.as_str()
            );
        } else {
            // Not answered.
            assert_eq!(ca.expect_event("call:missed").await["callId"], id.as_str());
        }
        ca.buffered_clear();
        cb.buffered_clear();
    }
}

/// Calls ended while the call tables were locked wait in the call store and land together
/// once the lock goes (in shared statements): every call's rows are complete and show the same
/// history as a call written on its own. A call's ring timer is pending in the registry while
/// it rings and is cancelled when it ends, so ended calls leave no timer behind.
#[actix_web::test]
async fn calls_written_together_keep_each_calls_history_and_ended_calls_leave_no_timers() {
    const PAIRS: usize = 6;
    let s = TestServer::start_with(|c| c.call_save_batch = 4).await;
    let mut users = Vec::new();
    for i in 0..PAIRS * 2 {
        users.push(s.create_user(&format!("U{i}"), &format!("u{i}@example.com"), None, &[]));
    }
    let mut sockets = Vec::new();
    for u in &users {
        sockets.push(connect(&s, *u).await);
    }
    assert_eq!(s.metric("switchboard_call_timers").await, 0);

    // One call on its own, settled with its log: the reference history.
    let (first, rest) = sockets.split_at_mut(1);
    let reference = quick_call(&mut first[0], &mut rest[0], users[1]).await;
    settled(&s, &reference, "ended").await;
    call_log(&s, &reference).await;
    rest[0].expect_event("message:new").await;
    first[0].expect_event("message:new").await;
    assert_eq!(s.metric("switchboard_call_timers").await, 0);

    // A ringing call has its ring timer pending.
    let ack = sockets[2]
        .request("call:initiate", json!({"to": users[3]}))
        .await
        .unwrap();
    let ringing = ack["callId"].as_str().unwrap().to_owned();
    sockets[3].expect_event("call:incoming").await;
    let mut pending = 0;
    for _ in 0..100 {
        pending = s.metric("switchboard_call_timers").await;
        if pending == 1 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending, 1, "the ringing call's ring timer");
    sockets[2]
        .request("call:end", json!({"callId": ringing}))
        .await
        .unwrap();
    sockets[3].expect_event("call:cancelled").await;

    // Every pair calls at once while the call tables are locked: their writes queue up.
    let mut lock = s.db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut lock,
        "BEGIN; LOCK TABLE calls, call_participants IN ACCESS EXCLUSIVE MODE",
    )
    .unwrap();
    let mut calls = Vec::new();
    {
        let mut pending_calls = Vec::new();
        for (i, chunk) in sockets.chunks_mut(2).enumerate() {
            let (caller, callee) = chunk.split_at_mut(1);
            let to = users[i * 2 + 1];
            pending_calls.push(async move { quick_call(&mut caller[0], &mut callee[0], to).await });
        }
        for id in futures_util::future::join_all(pending_calls).await {
            calls.push(id);
        }
    }
    let written: i64 = calls::table
        .filter(calls::id.eq_any(&calls))
        .count()
        .get_result(&mut lock)
        .unwrap();
    assert_eq!(written, 0, "nothing could be written yet");
    diesel::connection::SimpleConnection::batch_execute(&mut lock, "COMMIT").unwrap();

    let want = persisted(&s, &reference);
    for id in &calls {
        settled(&s, id, "ended").await;
        let got = persisted(&s, id);
        // The same history; only the parties' ids differ.
        let strip = |v: &Value| {
            let mut v = v.clone();
            for p in v["parties"].as_array_mut().unwrap() {
                p[0] = json!(0);
            }
            v["endedBy"] = json!(0);
            v
        };
        assert_eq!(strip(&got), strip(&want), "{id}");
    }
    assert_eq!(settled(&s, &ringing, "cancelled").await.0, "cancelled");
    assert_eq!(s.metric("switchboard_call_timers").await, 0);
}
