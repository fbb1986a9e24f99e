//! End-to-end messaging over real WebSockets against a real PostgreSQL: durable acks, idempotent
//! retries, gap-free ordering under concurrent senders, permissions, receipts, typing, presence,
//! sync, limits, slow consumers, and a database outage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{TestServer, WsClient};
use serde_json::{json, Value};
use std::time::Duration;

fn group(s: &TestServer, creator: i64, members: &[i64]) -> i64 {
    let mut conn = s.db.conn();
    switchboard::db::conversations::create_group(&mut conn, creator, "team", members, None)
        .unwrap()
        .id
}

fn count_rows(s: &TestServer, sql: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(&mut s.db.conn())
        .unwrap()
        .n
}

#[actix_web::test]
async fn two_users_on_two_devices_exchange_messages_acked_after_commit() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]);
    let (ta, tb) = (s.token_for(alice), s.token_for(bob));
    let mut a1 = WsClient::connect(&s, &ta).await;
    let mut a2 = WsClient::connect(&s, &ta).await;
    let mut b1 = WsClient::connect(&s, &tb).await;
    let mut b2 = WsClient::connect(&s, &tb).await;
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        c.request(
            "conversation:join",
            json!({"conversationId": conv.to_string()}),
        )
        .await
        .unwrap();
    }

    let ack = a1
        .request("message:send", json!({"conversationId": conv.to_string(), "content": "hi bob", "clientMessageId": "m-1"}))
        .await
        .unwrap();
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["conversationId"], conv.to_string());
    assert!(ack["createdAt"].is_string());
    // Acknowledged means committed: the row is in the database now.
    let id: i64 = ack["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        count_rows(
            &s,
            &format!("SELECT count(*) AS n FROM messages WHERE id = {id} AND content = 'hi bob'")
        ),
        1
    );

    for c in [&mut a2, &mut b1, &mut b2] {
        let m = c.expect_event("message:new").await;
        assert_eq!(
            (m["id"].as_str(), m["content"].as_str()),
            (Some(id.to_string().as_str()), Some("hi bob"))
        );
        assert_eq!(m["senderId"], alice.to_string());
    }
    assert!(
        a1.maybe_event("message:new", Duration::from_millis(300))
            .await
            .is_none(),
        "sender's device gets the ack only"
    );

    let ack = b2
        .request(
            "message:send",
            json!({"conversation": conv, "text": "hi alice"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["seq"], 2);
    assert_eq!(a1.expect_event("message:new").await["content"], "hi alice");
    assert_eq!(b1.expect_event("message:new").await["content"], "hi alice");
}

#[actix_web::test]
async fn retry_with_the_same_client_message_id_returns_the_original_once() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let payload = json!({"conversationId": conv.to_string(), "content": "once", "clientMessageId": "retry-1"});
    let first = a.request("message:send", payload.clone()).await.unwrap();
    let second = a.request("message:send", payload.clone()).await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(b.expect_event("message:new").await["id"], first["id"]);
    assert!(
        b.maybe_event("message:new", Duration::from_millis(500))
            .await
            .is_none(),
        "no second fan-out"
    );
    assert_eq!(count_rows(&s, "SELECT count(*) AS n FROM messages"), 1);
}

#[actix_web::test]
async fn concurrent_senders_produce_one_gap_free_order_for_every_recipient() {
    let s = TestServer::start().await;
    let users: Vec<i64> = (0..4)
        .map(|i| s.create_user(&format!("U{i}"), &format!("u{i}@example.com"), None, &[]))
        .collect();
    let watcher = s.create_user("Watcher", "w@example.com", None, &[]);
    let mut members = users.clone();
    members.push(watcher);
    let conv = group(&s, users[0], &members);
    let mut w = WsClient::connect(&s, &s.token_for(watcher)).await;
    let mut w2 = WsClient::connect(&s, &s.token_for(watcher)).await;
    let per_sender = 25;
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let token = s.token_for(*u);
        let addr = s.addr();
        tasks.push(actix_web::rt::spawn(async move {
            let mut c = WsClient::try_connect(addr, &format!("/ws?token={token}"))
                .await
                .unwrap();
            let mut seqs = Vec::new();
            for n in 0..per_sender {
                let ack = c
                    .request(
                        "message:send",
                        json!({"conversationId": conv.to_string(), "content": format!("{i}-{n}")}),
                    )
                    .await
                    .unwrap();
                seqs.push(ack["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all: Vec<i64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<i64>>(),
        "seq is gap-free and unique"
    );
    for c in [&mut w, &mut w2] {
        let mut seen = Vec::new();
        while seen.len() < 100 {
            seen.push(c.expect_event("message:new").await["seq"].as_i64().unwrap());
        }
        assert_eq!(
            seen,
            (1..=100).collect::<Vec<i64>>(),
            "every recipient sees seq order"
        );
    }
}

#[actix_web::test]
async fn edit_and_delete_permissions_own_master_and_foreign() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let boss = s.create_user("Boss", "boss@example.com", None, &["MASTER"]);
    let conv = group(&s, alice, &[bob, boss]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let mut m = WsClient::connect(&s, &s.token_for(boss)).await;
    let sent = a
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "v1"}),
        )
        .await
        .unwrap();
    let id = sent["id"].clone();

    let err = b
        .request(
            "message:edit",
            json!({"messageId": id, "content": "hacked"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "forbidden");
    let err = b
        .request("message:delete", json!({"messageId": id}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "forbidden");

    let edited = a
        .request("message:edit", json!({"messageId": id, "content": "v2"}))
        .await
        .unwrap();
    assert_eq!(edited["content"], "v2");
    assert!(edited["editedAt"].is_string());
    assert_eq!(b.expect_event("message:edited").await["content"], "v2");

    let err = m
        .request(
            "message:edit",
            json!({"messageId": id, "content": "boss edit"}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err["code"], "forbidden",
        "moderators delete, they do not edit"
    );
    let deleted = m
        .request("message:delete", json!({"messageId": id}))
        .await
        .unwrap();
    assert_eq!(deleted["deleted"], true);
    let ev = b.expect_event("message:deleted").await;
    assert_eq!(
        (ev["id"].clone(), ev["content"].as_str()),
        (id.clone(), Some(""))
    );
    assert_eq!(a.expect_event("message:deleted").await["id"], id);
    assert_eq!(
        count_rows(
            &s,
            "SELECT count(*) AS n FROM messages WHERE deleted_at IS NOT NULL"
        ),
        1,
        "soft delete"
    );

    let own = b
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "mine"}),
        )
        .await
        .unwrap();
    b.request("message:delete", json!({"messageId": own["id"]}))
        .await
        .unwrap();
}

#[actix_web::test]
async fn non_members_cannot_read_send_or_join() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let eve = s.create_user("Eve", "eve@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]);
    let mut e = WsClient::connect(&s, &s.token_for(eve)).await;
    for (event, payload) in [
        (
            "conversation:join",
            json!({"conversationId": conv.to_string()}),
        ),
        (
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "x"}),
        ),
        ("typing:start", json!({"conversationId": conv.to_string()})),
        (
            "receipt:read",
            json!({"conversationId": conv.to_string(), "upTo": 1}),
        ),
        (
            "sync",
            json!({"conversations": [{"conversationId": conv.to_string(), "seq": 0}]}),
        ),
    ] {
        let err = e.request(event, payload).await.unwrap_err();
        assert_eq!(err["code"], "forbidden", "{event}");
    }
    let err = e
        .request(
            "message:send",
            json!({"conversationId": "999999", "content": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "not_found");
}

#[actix_web::test]
async fn receipts_and_typing_reach_the_other_member_only() {
    let s = TestServer::start_with(|c| c.typing_timeout = Duration::from_secs(1)).await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut a2 = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let c = conv.to_string();
    for i in 0..3 {
        a.request(
            "message:send",
            json!({"conversationId": c, "content": format!("m{i}")}),
        )
        .await
        .unwrap();
    }
    let ack = b
        .request("receipt:read", json!({"conversationId": c, "upTo": 2}))
        .await
        .unwrap();
    assert_eq!(ack["upTo"], 2);
    let r = a.expect_event("receipt:read").await;
    assert_eq!(
        (r["userId"].as_str(), r["upTo"].as_i64()),
        (Some(bob.to_string().as_str()), Some(2))
    );
    // Cursors only move forward.
    let ack = b
        .request("receipt:read", json!({"conversationId": c, "upTo": 1}))
        .await
        .unwrap();
    assert_eq!(ack["moved"], false);
    let ack = b
        .request(
            "receipt:delivered",
            json!({"conversationId": c, "upTo": 99}),
        )
        .await
        .unwrap();
    assert_eq!(ack["upTo"], 3, "clamped to the last seq");
    a.expect_event("receipt:delivered").await;
    assert!(
        b.maybe_event("receipt:read", Duration::from_millis(300))
            .await
            .is_none(),
        "not echoed to the reader"
    );

    b.request("typing:start", json!({"conversationId": c}))
        .await
        .unwrap();
    assert_eq!(
        a.expect_event("typing:start").await["userId"],
        bob.to_string()
    );
    assert_eq!(
        a2.expect_event("typing:start").await["userId"],
        bob.to_string()
    );
    // Expires by itself after the configured timeout.
    assert_eq!(
        a.expect_event("typing:stop").await["userId"],
        bob.to_string()
    );
    assert!(b
        .maybe_event("typing:start", Duration::from_millis(300))
        .await
        .is_none());

    let stored: i64 = count_rows(
        &s,
        &format!("SELECT read_up_to AS n FROM conversation_members WHERE user_id = {bob}"),
    );
    assert_eq!(stored, 2);
}

#[actix_web::test]
async fn presence_goes_offline_only_after_the_last_device_leaves() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    group(&s, alice, &[bob]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    a.request("ping", json!({})).await.unwrap();
    let b1 = WsClient::connect(&s, &s.token_for(bob)).await;
    let p = a.expect_event("presence").await;
    assert_eq!(
        (p["userId"].as_str(), p["online"].as_bool()),
        (Some(bob.to_string().as_str()), Some(true))
    );
    let mut b2 = WsClient::connect(&s, &s.token_for(bob)).await;
    b2.request("ping", json!({})).await.unwrap();
    drop(b1);
    let early = a.maybe_event("presence", Duration::from_millis(700)).await;
    assert!(early.is_none(), "one device still online: {early:?}");
    drop(b2);
    let p = a.expect_event("presence").await;
    assert_eq!(p["online"], false);
    assert!(p["lastSeen"].is_string());

    // Explicit subscriptions answer the current state.
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let mut c = WsClient::connect(&s, &s.token_for(carol)).await;
    c.request("ping", json!({})).await.unwrap();
    let ack = a
        .request(
            "presence:subscribe",
            json!({"userIds": [carol.to_string(), bob.to_string()]}),
        )
        .await
        .unwrap();
    assert_eq!(ack["presence"][0]["online"], true);
    assert_eq!(ack["presence"][1]["online"], false);
}

#[actix_web::test]
async fn an_offline_client_catches_up_exactly_with_sync() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]).to_string();
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let first = a
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "before"}),
        )
        .await
        .unwrap();
    // Bob saw message 1 (change 1), then went offline.
    let mut ids = Vec::new();
    for i in 0..50 {
        let ack = a
            .request(
                "message:send",
                json!({"conversationId": conv, "content": format!("missed {i}")}),
            )
            .await
            .unwrap();
        ids.push(ack["id"].clone());
    }
    a.request(
        "message:edit",
        json!({"messageId": first["id"], "content": "before (edited)"}),
    )
    .await
    .unwrap();
    a.request("message:delete", json!({"messageId": ids[0]}))
        .await
        .unwrap();
    a.request("receipt:read", json!({"conversationId": conv, "upTo": 51}))
        .await
        .unwrap();

    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let out = b
        .request(
            "sync",
            json!({"conversations": [{"conversationId": conv, "seq": 1, "change": 1}]}),
        )
        .await
        .unwrap();
    let c = &out["conversations"][0];
    let msgs = c["messages"].as_array().unwrap();
    let seqs: Vec<i64> = msgs.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    let mut expected: Vec<i64> = vec![1];
    expected.extend(2..=51);
    assert_eq!(
        seqs, expected,
        "the edit of seq 1 plus every missed message, in order"
    );
    assert_eq!(msgs[0]["content"], "before (edited)");
    assert_eq!(msgs[1]["deleted"], true);
    assert_eq!(c["lastSeq"], 51);
    let receipts: Vec<&Value> = c["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["userId"].as_str() == Some(alice.to_string().as_str()))
        .collect();
    assert_eq!(receipts[0]["readUpTo"], 51);
}

#[actix_web::test]
async fn bad_tokens_close_with_4001() {
    let s = TestServer::start().await;
    for path in ["/ws", "/ws?token=not-a-jwt"] {
        let mut c = WsClient::try_connect(s.addr(), path).await.unwrap();
        assert!(c.next_frame(Duration::from_secs(5)).await.is_none());
        let reason = c
            .closed
            .clone()
            .flatten()
            .expect("close frame with a reason");
        assert_eq!(u16::from(reason.code), 4001);
        assert_eq!(reason.description.as_deref(), Some("Unauthorized"));
    }
}

#[actix_web::test]
async fn malformed_frames_get_error_events_and_the_socket_stays_usable() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    a.send_text("{not json".into()).await;
    assert_eq!(a.expect_event("error").await["code"], "invalid_json");
    a.send_text(r#"{"event":"no:such","id":"x1"}"#.into()).await;
    let f = a.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (
            f["event"].as_str(),
            f["id"].as_str(),
            f["payload"]["code"].as_str()
        ),
        (Some("error"), Some("x1"), Some("unknown_event"))
    );
    assert_eq!(f["payload"]["ref"], "x1");
    let err = a
        .request("message:send", json!({"conversationId": {"a": 1}}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "invalid_payload");
    assert!(a.request("ping", json!({})).await.is_ok());
}

#[actix_web::test]
async fn oversized_frames_floods_and_long_content_are_limited() {
    let s = TestServer::start_with(|c| {
        c.max_frame_bytes = 4096;
        c.frame_burst = 10;
        c.frame_rate_per_sec = 5;
        c.max_content_chars = 100;
        c.message_burst = 3;
        c.message_rate_per_min = 6;
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]).to_string();
    let token = s.token_for(alice);

    let mut a = WsClient::connect(&s, &token).await;
    let err = a
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "x".repeat(101)}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "too_large");
    for _ in 0..3 {
        a.request(
            "message:send",
            json!({"conversationId": conv, "content": "ok"}),
        )
        .await
        .unwrap();
    }
    let err = a
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "one too many"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "rate_limited");
    assert!(err["retryAfter"].as_u64().unwrap() >= 1);

    // Frame flood: beyond the burst, frames are refused with rate_limited (and answered).
    let mut f = WsClient::connect(&s, &token).await;
    for i in 0..30 {
        f.send_text(json!({"event": "ping", "id": i}).to_string())
            .await;
    }
    let mut limited = 0;
    let mut acked = 0;
    while limited + acked < 30 {
        let frame = f
            .next_frame(Duration::from_secs(5))
            .await
            .expect("every frame is answered");
        match frame["event"].as_str() {
            Some("ack") => acked += 1,
            Some("error") if frame["payload"]["code"] == "rate_limited" => limited += 1,
            _ => {}
        }
    }
    assert!(
        limited >= 15 && acked >= 10,
        "acked {acked}, limited {limited}"
    );

    // Oversized frame: an error, then the connection closes with 1009.
    let mut big = WsClient::connect(&s, &token).await;
    big.send_text(json!({"event": "ping", "payload": {"pad": "y".repeat(8000)}}).to_string())
        .await;
    let mut frames = Vec::new();
    while let Some(frame) = big.next_frame(Duration::from_secs(5)).await {
        frames.push(frame);
    }
    assert!(
        frames.iter().any(|f| f["payload"]["code"] == "too_large"),
        "{frames:?} {:?}",
        big.closed
    );
    assert_eq!(
        big.closed.clone().flatten().map(|r| u16::from(r.code)),
        Some(1009)
    );
}

#[actix_web::test]
async fn a_client_that_never_reads_is_cut_off_while_others_keep_receiving() {
    let s = TestServer::start_with(|c| {
        c.outbound_queue = 8;
        c.max_content_chars = 40_000;
        c.message_burst = 10_000;
        c.message_rate_per_min = 1_000_000;
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let slow = s.create_user("Slow", "slow@example.com", None, &[]);
    let conv = group(&s, alice, &[bob, slow]).to_string();
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    // The slow client connects and never reads a frame.
    let _slow = WsClient::connect(&s, &s.token_for(slow)).await;
    // Enough data to overflow the kernel's socket buffers as well as the queue.
    let pad = "z".repeat(32_000);
    let total = 500;
    for i in 0..total {
        a.request(
            "message:send",
            json!({"conversationId": conv, "content": format!("{i} {pad}")}),
        )
        .await
        .unwrap();
        if i % 50 == 0 {
            // Bob keeps reading.
            while b
                .maybe_event("message:new", Duration::from_millis(1))
                .await
                .is_some()
            {}
        }
    }
    let mut received = 0;
    while b
        .maybe_event("message:new", Duration::from_secs(2))
        .await
        .is_some()
    {
        received += 1;
    }
    assert!(received > 0);
    // The registry no longer lists the slow session.
    let stats = s
        .running
        .state
        .engine
        .registry
        .send(switchboard::realtime::registry::GetStats)
        .await
        .unwrap();
    assert_eq!(
        stats.sessions, 2,
        "the slow consumer was disconnected: {stats:?}"
    );
    // ... and /metrics counted the outbound queue drop.
    let (status, body) = s.get("/metrics", None).await;
    assert_eq!(status, 200);
    let drops: f64 = body["text"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_queue_drops_total{queue=\"outbound\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(drops >= 1.0, "outbound drops: {drops}");
}

#[actix_web::test]
async fn two_processes_sharing_one_database_keep_seq_gap_free() {
    let s1 = TestServer::start().await;
    let config = common::test_config(&s1.db);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s2 = switchboard::server::start(config, listener).unwrap();
    let users: Vec<i64> = (0..4)
        .map(|i| s1.create_user(&format!("P{i}"), &format!("p{i}@example.com"), None, &[]))
        .collect();
    let conv = group(&s1, users[0], &users[1..]);
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let token = s1.token_for(*u);
        // Half the senders talk to each process.
        let addr = if i % 2 == 0 { s1.addr() } else { s2.addr };
        tasks.push(actix_web::rt::spawn(async move {
            let mut c = WsClient::try_connect(addr, &format!("/ws?token={token}"))
                .await
                .unwrap();
            let mut seqs = Vec::new();
            for n in 0..20 {
                let ack = c
                    .request(
                        "message:send",
                        json!({"conversationId": conv.to_string(), "content": format!("{i}/{n}")}),
                    )
                    .await
                    .unwrap();
                seqs.push(ack["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=80).collect::<Vec<i64>>());
    s2.handle.stop(false).await;
}

/// A receipt time before 4714 BC (epoch milliseconds chrono accepts but PostgreSQL cannot take
/// as a parameter) is refused as invalid input, not failed inside the query as `internal`.
#[actix_web::test]
async fn receipt_times_before_what_postgres_stores_are_refused() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let c = conv.to_string();
    a.request(
        "message:send",
        json!({"conversationId": c, "content": "hi"}),
    )
    .await
    .unwrap();
    let err = b
        .request(
            "receipt:read",
            json!({"conversationId": c, "upToTime": -250_000_000_000_000_i64}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "invalid_payload", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("not a time"),
        "{err}"
    );
    // A time in range still moves the cursor.
    let ack = b
        .request(
            "receipt:read",
            json!({"conversationId": c, "upToTime": "2999-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["upTo"], 1, "{ack}");
}

/// Receipts that arrive together in one conversation are written together: one transaction
/// on one pooled connection for the batch, not one per receipt.
#[actix_rt::test]
async fn concurrent_receipts_in_one_conversation_share_a_transaction() {
    let s = TestServer::start().await;
    let owner = s.create_user("Owner", "owner@example.com", None, &[]);
    let members: Vec<i64> = (0..40)
        .map(|i| s.create_user(&format!("M{i}"), &format!("m{i}@example.com"), None, &[]))
        .collect();
    let conv = group(&s, owner, &members);
    let c = conv.to_string();
    let mut o = WsClient::connect(&s, &s.token_for(owner)).await;
    for i in 0..3 {
        o.request(
            "message:send",
            json!({"conversationId": c, "content": format!("m{i}")}),
        )
        .await
        .unwrap();
    }
    let mut clients = Vec::new();
    for m in &members {
        clients.push(WsClient::connect(&s, &s.token_for(*m)).await);
    }
    for cl in &mut clients {
        cl.send_text(
            json!({"event": "receipt:delivered", "id": 1,
                   "payload": {"conversationId": c, "upTo": 3}})
            .to_string(),
        )
        .await;
    }
    for cl in &mut clients {
        loop {
            let f = cl
                .next_frame(Duration::from_secs(10))
                .await
                .expect("an ack for the receipt");
            if f["event"] == "ack" && f["id"] == 1 {
                assert_eq!(f["payload"]["upTo"], 3, "{f}");
                break;
            }
            assert_ne!(f["event"], "error", "{f}");
        }
    }
    let moved = count_rows(
        &s,
        &format!(
            "SELECT count(*) AS n FROM conversation_members \
             WHERE conversation_id = {conv} AND user_id <> {owner} AND delivered_up_to = 3"
        ),
    );
    assert_eq!(moved, 40);
    // Rows written by one transaction share its xmin.
    let transactions = count_rows(
        &s,
        &format!(
            "SELECT count(DISTINCT xmin::text) AS n FROM conversation_members \
             WHERE conversation_id = {conv} AND user_id <> {owner}"
        ),
    );
    assert!(
        transactions <= 20,
        "40 receipts took {transactions} transactions"
    );
    // The sender heard of every one.
    let mut heard = 0;
    while o
        .maybe_event("receipt:delivered", Duration::from_millis(500))
        .await
        .is_some()
    {
        heard += 1;
    }
    assert_eq!(heard + o.take_buffered("receipt:delivered").len(), 40);
}

#[actix_web::test]
async fn the_registry_forgets_users_who_left_and_presence_still_works_when_they_return() {
    let s = TestServer::start_with(|c| c.last_seen_flush = Duration::from_millis(100)).await;
    let ids: Vec<i64> = (0..20)
        .map(|i| s.create_user(&format!("U{i}"), &format!("u{i}@example.com"), None, &[]))
        .collect();
    group(&s, ids[0], &ids[1..]);
    let stats = || async {
        s.running
            .state
            .engine
            .registry
            .send(switchboard::realtime::registry::GetStats)
            .await
            .unwrap()
    };
    for round in 0..3 {
        let mut clients = Vec::new();
        for id in &ids {
            let mut c = WsClient::connect(&s, &s.token_for(*id)).await;
            c.request("ping", json!({})).await.unwrap();
            clients.push(c);
        }
        let mut watcher = clients.remove(0);
        watcher
            .request(
                "presence:subscribe",
                json!({"userIds": [ids[1].to_string()]}),
            )
            .await
            .unwrap();
        watcher.buffered_clear();
        // One member leaves: the others are told, with a last-seen time.
        drop(clients.remove(0));
        let p = loop {
            let p = watcher.expect_event("presence").await;
            if p["userId"].as_str() == Some(ids[1].to_string().as_str()) {
                break p;
            }
        };
        assert_eq!(p["online"], false, "round {round}: {p}");
        assert!(p["lastSeen"].is_string(), "round {round}: {p}");
        // Asked again, the answer carries the same time (from memory or, once written, from
        // the database).
        let ack = watcher
            .request(
                "presence:subscribe",
                json!({"userIds": [ids[1].to_string()]}),
            )
            .await
            .unwrap();
        assert_eq!(ack["presence"][0]["online"], false);
        assert!(ack["presence"][0]["lastSeen"].is_string(), "{ack}");
        drop(clients);
        drop(watcher);
        // Everyone left: nothing about them stays in the registry once their times are written.
        let mut last = None;
        for _ in 0..100 {
            let st = stats().await;
            if st.online_users == 0
                && st.presence_audiences == 0
                && st.last_seen_held == 0
                && st.watched == 0
            {
                last = None;
                break;
            }
            last = Some(st);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(last.is_none(), "round {round}: {last:?}");
    }
}

/// Waits (bounded) for the reply to the frame with id `id`, skipping other frames.
async fn reply_to(c: &mut WsClient, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = c
            .next_frame(left)
            .await
            .unwrap_or_else(|| panic!("no reply to {id}"));
        if frame["id"] == id {
            return frame;
        }
    }
}

/// With `WRITE_IN_FLIGHT` above 1, one writer commits batches of different conversations side
/// by side: a send whose commit is held up (its conversation's row is locked) does not hold up
/// a send to another conversation of the same writer, and later sends to the held conversation
/// wait and keep their order. (With 1 the second send would wait for the first.)
#[actix_web::test]
async fn a_slow_commit_holds_up_only_its_own_conversation() {
    let s = TestServer::start_with(|c| {
        c.write_shards = 1;
        c.write_in_flight = 4;
    })
    .await;
    let a = s.create_user("Alice", "alice@example.com", None, &[]);
    let b = s.create_user("Bob", "bob@example.com", None, &[]);
    let slow = group(&s, a, &[b]);
    let fast = group(&s, a, &[b]);
    let mut ca = WsClient::connect(&s, &s.token_for(a)).await;
    ca.request("ping", json!({})).await.unwrap();
    let send = |id: &str, conv: i64, text: &str| {
        json!({"event": "message:send", "id": id, "payload": {"conversationId": conv.to_string(), "content": text}})
            .to_string()
    };

    let mut lock = s.db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut lock,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = {slow} FOR UPDATE"),
    )
    .unwrap();
    ca.send_text(send("s1", slow, "first")).await;
    // Bounded wait until that commit is stuck on the lock.
    let mut stuck = false;
    for _ in 0..200 {
        if count_rows(
            &s,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        ) > 0
        {
            stuck = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stuck, "the first send never reached the lock");

    ca.send_text(send("f1", fast, "other conversation")).await;
    let other = reply_to(&mut ca, "f1").await;
    assert_eq!(other["event"], "ack", "{other}");
    assert_eq!(other["payload"]["seq"], 1, "{other}");

    ca.send_text(send("s2", slow, "second")).await;
    assert_eq!(
        count_rows(
            &s,
            &format!("SELECT count(*) AS n FROM messages WHERE conversation_id = {slow}")
        ),
        0
    );
    diesel::connection::SimpleConnection::batch_execute(&mut lock, "COMMIT").unwrap();
    let first = reply_to(&mut ca, "s1").await;
    let second = reply_to(&mut ca, "s2").await;
    assert_eq!(
        (
            first["payload"]["seq"].clone(),
            second["payload"]["seq"].clone()
        ),
        (json!(1), json!(2)),
        "{first} {second}"
    );
}
