//! The admin dashboard end to end: stats, user search and moderation (roles, ban, forced
//! logout) with live sockets, conversation moderation, live calls and forced ends, the audit
//! log, seed 002's support conversations from both sides, and an authorization matrix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use switchboard::db::schema::{calls, contacts, conversation_members, messages};

async fn connect(s: &TestServer, user: i64) -> WsClient {
    let mut c = WsClient::connect(s, &s.token_for(user)).await;
    c.request("ping", json!({})).await.unwrap();
    c
}

/// Waits for the server to close the socket; returns the close code and how long it took.
async fn closed_within(c: &mut WsClient, limit: Duration) -> (u16, Duration) {
    let started = Instant::now();
    while c.next_frame(limit).await.is_some() {
        assert!(started.elapsed() < limit, "socket still open");
    }
    let code = c
        .closed
        .clone()
        .flatten()
        .map(|r| u16::from(r.code))
        .expect("close frame with a code");
    (code, started.elapsed())
}

async fn audit(s: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let (st, body) = s
        .get(&format!("/api/admin/audit?{query}"), Some(token))
        .await;
    assert_eq!(st, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

async fn login(s: &TestServer, email: &str) -> (String, String) {
    let (st, body) = s
        .post(
            "/auth/login",
            json!({"email": email, "password": "correct horse"}),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    (
        body["accessToken"].as_str().unwrap().to_owned(),
        body["refreshToken"].as_str().unwrap().to_owned(),
    )
}

#[actix_web::test]
async fn stats_count_connections_messages_and_calls() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let ta = s.token_for(admin);
    let mut ca = connect(&s, alice).await;
    let mut cb = connect(&s, bob).await;
    let _cb2 = connect(&s, bob).await;

    ca.request("message:send", json!({"to": bob, "content": "one"}))
        .await
        .unwrap();
    ca.request("message:send", json!({"to": bob, "content": "two"}))
        .await
        .unwrap();
    // One rejected call, and one still ringing.
    let id = ca
        .request("call:initiate", json!({"to": bob}))
        .await
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    cb.request("call:reject", json!({"callId": id}))
        .await
        .unwrap();
    ca.expect_event("call:rejected").await;
    ca.request("call:initiate", json!({"to": carol}))
        .await
        .unwrap();

    let mut stats = Value::Null;
    for _ in 0..50 {
        let (st, body) = s.get("/api/admin/stats", Some(&ta)).await;
        assert_eq!(st, 200, "{body}");
        stats = body["stats"].clone();
        if stats["calls"]["todayByOutcome"]["rejected"] == 1 && stats["calls"]["today"] == 2 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats["onlineUsers"], 2, "{stats}");
    assert_eq!(stats["connections"]["total"], 3);
    assert_eq!(stats["connections"]["byTransport"]["ws"], 3);
    assert_eq!(stats["connections"]["byDialect"]["canonical"], 3);
    assert_eq!(
        stats["connections"]["byTransportAndDialect"],
        json!([{"transport": "ws", "dialect": "canonical", "count": 3}])
    );
    assert_eq!(stats["activeCalls"], 1);
    assert!(
        stats["messages"]["lastMinute"].as_i64().unwrap() >= 2,
        "{stats}"
    );
    assert!(stats["messages"]["today"].as_i64().unwrap() >= 2);
    assert_eq!(stats["calls"]["todayByOutcome"]["rejected"], 1, "{stats}");
    assert_eq!(stats["calls"]["today"], 2, "{stats}");
    assert_eq!(stats["users"]["total"], 4);
}

#[actix_web::test]
async fn ban_closes_live_sockets_within_a_second_and_refuses_the_token() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let ta = s.token_for(admin);
    let t_alice = s.token_for(alice);
    let mut c1 = connect(&s, alice).await;
    let mut c2 = connect(&s, alice).await;
    // Alice is in a call: the ban ends it for the other side as well.
    let mut cb = connect(&s, bob).await;
    let call = c1
        .request("call:initiate", json!({"to": bob}))
        .await
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;

    let (st, body) = s
        .post(
            &format!("/api/admin/users/{alice}/ban"),
            json!({"reason": "spam"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["user"]["banned"], true);
    assert_eq!(body["user"]["banReason"], "spam");
    assert_eq!(body["closedConnections"], 2);
    for c in [&mut c1, &mut c2] {
        let (close, took) = closed_within(c, Duration::from_secs(1)).await;
        assert_eq!(close, 4001);
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let ended = cb.expect_event("call:ended").await;
    assert_eq!(
        (ended["callId"].as_str(), ended["reason"].as_str()),
        (Some(call.as_str()), Some("admin"))
    );

    // The token is refused on REST and on a new socket.
    let (st, body) = s.get("/api/users/profile", Some(&t_alice)).await;
    assert_eq!((st, code(&body)), (401, "account_banned"));
    let mut again = WsClient::connect(&s, &t_alice).await;
    let (close, _) = closed_within(&mut again, Duration::from_secs(5)).await;
    assert_eq!(close, 4001);

    // Filters find her; the audit log has the ban; unbanning restores access.
    let (_, list) = s.get("/api/admin/users?banned=true", Some(&ta)).await;
    let ids: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![alice.to_string()]);
    let entries = audit(&s, &ta, "action=user.ban").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["actorId"], admin.to_string());
    assert_eq!(entries[0]["targetId"], alice.to_string());
    assert_eq!(entries[0]["details"]["reason"], "spam");
    let (st, _) = s
        .post(
            &format!("/api/admin/users/{alice}/unban"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s.get("/api/users/profile", Some(&t_alice)).await;
    assert_eq!(st, 200);
    assert_eq!(audit(&s, &ta, &format!("targetId={alice}")).await.len(), 2);

    // An admin cannot ban themselves.
    let (st, body) = s
        .post(
            &format!("/api/admin/users/{admin}/ban"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&body)), (400, "validation_failed"));
}

#[actix_web::test]
async fn force_logout_revokes_every_session_and_closes_sockets() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user("Alice", "alice@example.com", Some("correct horse"), &[]);
    let ta = s.token_for(admin);
    let (phone_token, phone_refresh) = login(&s, "alice@example.com").await;
    let (desk_token, _) = login(&s, "alice@example.com").await;
    let legacy = s.token_for(alice);
    let mut c = WsClient::connect(&s, &desk_token).await;
    c.request("ping", json!({})).await.unwrap();

    let (st, body) = s
        .post(
            &format!("/api/admin/users/{alice}/logout"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["revokedSessions"], 2);
    assert_eq!(body["closedConnections"], 1);
    let (close, took) = closed_within(&mut c, Duration::from_secs(1)).await;
    assert_eq!(close, 4001);
    assert!(took < Duration::from_secs(1));

    for token in [&phone_token, &desk_token, &legacy] {
        let (st, body) = s.get("/api/users/profile", Some(token)).await;
        assert_eq!((st, code(&body)), (401, "session_revoked"), "{body}");
    }
    let (st, _) = s
        .post(
            "/auth/refresh",
            json!({"refreshToken": phone_refresh}),
            None,
        )
        .await;
    assert_eq!(st, 401);
    // Logging in again works.
    let (fresh, _) = login(&s, "alice@example.com").await;
    let (st, _) = s.get("/api/users/profile", Some(&fresh)).await;
    assert_eq!(st, 200);
    let entries = audit(&s, &ta, "action=user.logout").await;
    assert_eq!(entries[0]["details"]["revokedSessions"], 2);
    // An admin cannot lock themselves out through the dashboard.
    let (st, body) = s
        .post(
            &format!("/api/admin/users/{admin}/logout"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&body)), (400, "validation_failed"), "{body}");
    let (st, _) = s.get("/api/admin/stats", Some(&ta)).await;
    assert_eq!(st, 200);
}

#[actix_web::test]
async fn admin_force_ends_a_live_call_and_finds_it_in_the_history() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let ta = s.token_for(admin);
    let mut ca = connect(&s, alice).await;
    let mut cb = connect(&s, bob).await;
    let id = ca
        .request("call:initiate", json!({"to": bob, "callType": "video"}))
        .await
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    cb.request(
        "call:accept",
        json!({"callId": id, "sdpAnswer": {"type": "answer", "sdp": "x"}}),
    )
    .await
    .unwrap();
    ca.expect_event("call:accepted").await;

    let (st, live) = s.get("/api/admin/calls/live", Some(&ta)).await;
    assert_eq!(st, 200, "{live}");
    let found = live["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["callId"] == id.as_str())
        .cloned()
        .expect("the call is live");
    assert_eq!(found["callerId"], alice.to_string());
    assert_eq!(found["calleeIds"], json!([bob.to_string()]));
    assert_eq!(found["answered"], true);

    let (st, body) = s
        .post(
            &format!("/api/admin/calls/{id}/end"),
            json!({"reason": "abuse report"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    for c in [&mut ca, &mut cb] {
        let ended = c.expect_event("call:ended").await;
        assert_eq!(ended["callId"], id.as_str());
        assert_eq!(ended["reason"], "admin");
        assert_eq!(ended["endedBy"], admin.to_string());
    }
    let mut row = (String::new(), None, None);
    for _ in 0..100 {
        row = calls::table
            .find(&id)
            .select((calls::status, calls::end_reason, calls::ended_by))
            .first::<(String, Option<String>, Option<i64>)>(&mut s.db.conn())
            .unwrap();
        if row.0 == "ended" {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(row, ("ended".into(), Some("admin".into()), Some(admin)));
    // Ending it again: it is no longer live.
    let (st, body) = s
        .post(&format!("/api/admin/calls/{id}/end"), json!({}), Some(&ta))
        .await;
    assert_eq!((st, code(&body)), (404, "not_found"));

    // History with filters.
    let (st, hist) = s
        .get(
            &format!("/api/admin/calls?userId={bob}&status=ended&callType=video"),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{hist}");
    assert_eq!(hist["calls"].as_array().unwrap().len(), 1);
    assert_eq!(hist["calls"][0]["endReason"], "admin");
    let (_, none) = s
        .get(
            &format!("/api/admin/calls?userId={bob}&status=missed"),
            Some(&ta),
        )
        .await;
    assert!(none["calls"].as_array().unwrap().is_empty());
    let (_, later) = s
        .get("/api/admin/calls?since=2999-01-01T00:00:00Z", Some(&ta))
        .await;
    assert!(later["calls"].as_array().unwrap().is_empty());
    let entries = audit(&s, &ta, "targetType=call").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["action"], "call.end");
    assert_eq!(entries[0]["targetId"], id.as_str());
    assert_eq!(entries[0]["details"]["note"], "abuse report");
}

#[actix_web::test]
async fn user_search_detail_and_role_changes() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user(
        "Alice Smith",
        "alice@example.com",
        Some("correct horse"),
        &[],
    );
    let astro = s.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let ta = s.token_for(admin);
    let (alice_token, _) = login(&s, "alice@example.com").await;
    let mut c = WsClient::connect(&s, &alice_token).await;
    c.request("ping", json!({})).await.unwrap();

    let ids = |body: &Value| -> Vec<String> {
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, body) = s.get("/api/admin/users?role=astrologer", Some(&ta)).await;
    assert_eq!(ids(&body), vec![astro.to_string()]);
    let (_, body) = s.get("/api/admin/users?online=true", Some(&ta)).await;
    assert_eq!(ids(&body), vec![alice.to_string()]);
    assert_eq!(body["users"][0]["online"], true);
    assert_eq!(body["users"][0]["email"], "alice@example.com");
    let (_, body) = s.get("/api/admin/users?online=false&q=b", Some(&ta)).await;
    assert_eq!(ids(&body), vec![bob.to_string()]);
    let (_, body) = s.get("/api/admin/users?q=smith", Some(&ta)).await;
    assert_eq!(ids(&body), vec![alice.to_string()]);
    let (_, page1) = s.get("/api/admin/users?limit=2", Some(&ta)).await;
    assert_eq!(page1["users"].as_array().unwrap().len(), 2);
    let next = page1["nextCursor"].as_str().unwrap();
    let (_, page2) = s
        .get(
            &format!("/api/admin/users?limit=2&cursor={next}"),
            Some(&ta),
        )
        .await;
    assert_eq!(page2["users"].as_array().unwrap().len(), 2);
    assert!(page2["nextCursor"].is_null());

    // One user: devices (device sessions) and live connections.
    let (st, body) = s.get(&format!("/api/admin/users/{alice}"), Some(&ta)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["devices"].as_array().unwrap().len(), 1);
    assert_eq!(body["devices"][0]["liveConnections"], 1);
    assert_eq!(body["connections"][0]["transport"], "ws");
    assert_eq!(body["connections"][0]["dialect"], "canonical");
    let (st, _) = s.get("/api/admin/users/999999", Some(&ta)).await;
    assert_eq!(st, 404);

    // Roles: replaced, validated, audited; an admin keeps their own admin role.
    let (st, body) = s
        .call(
            "PATCH",
            &format!("/api/admin/users/{bob}/roles"),
            Some(json!({"roles": ["Astrologer"], "teamRoles": ["support"]})),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["user"]["roles"], json!(["astrologer"]));
    assert_eq!(body["user"]["teamRoles"], json!(["support"]));
    let entries = audit(&s, &ta, "action=user.roles").await;
    assert_eq!(entries[0]["details"]["before"]["roles"], json!([]));
    assert_eq!(
        entries[0]["details"]["after"]["roles"],
        json!(["astrologer"])
    );
    let (st, body) = s
        .call(
            "PATCH",
            &format!("/api/admin/users/{bob}/roles"),
            Some(json!({"roles": ["not a role!"]})),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&body)), (400, "validation_failed"));
    let (st, body) = s
        .call(
            "PATCH",
            &format!("/api/admin/users/{admin}/roles"),
            Some(json!({"roles": []})),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&body)), (400, "validation_failed"));

    // A new admin joins existing support conversations; a dismissed one leaves them.
    let (st, _) = s
        .get("/api/conversations/admin", Some(&s.token_for(astro)))
        .await;
    assert_eq!(st, 200);
    let support_members = |s: &TestServer| -> Vec<i64> {
        use switchboard::db::schema::conversations;
        conversation_members::table
            .inner_join(conversations::table)
            .filter(conversations::support_user_id.eq(astro))
            .select(conversation_members::user_id)
            .order(conversation_members::user_id)
            .load(&mut s.db.conn())
            .unwrap()
    };
    assert_eq!(support_members(&s), vec![admin, astro]);
    let (st, _) = s
        .call(
            "PUT",
            &format!("/api/admin/users/{alice}/roles"),
            Some(json!({"roles": ["admin"]})),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(support_members(&s), vec![admin, alice, astro]);
    // Losing a role closes live sockets, so they reconnect with the new roles.
    let (st, body) = s
        .call(
            "PATCH",
            &format!("/api/admin/users/{alice}/roles"),
            Some(json!({"roles": []})),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(body["closedConnections"], 1);
    assert_eq!(closed_within(&mut c, Duration::from_secs(1)).await.0, 4001);
    assert_eq!(support_members(&s), vec![admin, astro]);
}

#[actix_web::test]
async fn moderation_searches_reads_and_deletes_messages() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bobby Tables", "bob@example.com", None, &[]);
    let ta = s.token_for(admin);
    let mut ca = connect(&s, alice).await;
    let mut cb = connect(&s, bob).await;
    let sent = ca
        .request(
            "message:send",
            json!({"to": bob, "content": "something rude"}),
        )
        .await
        .unwrap();
    let conv = sent["conversationId"].as_str().unwrap().to_owned();
    let msg = sent["id"].as_str().unwrap().to_owned();
    cb.expect_event("message:new").await;
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Book club", "members": [bob]}),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!(st, 201, "{body}");

    let conv_ids = |body: &Value| -> Vec<String> {
        body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, body) = s
        .get("/api/admin/conversations?q=tables&type=direct", Some(&ta))
        .await;
    assert_eq!(conv_ids(&body), vec![conv.clone()]);
    let (_, body) = s
        .get(
            &format!("/api/admin/conversations?userId={alice}"),
            Some(&ta),
        )
        .await;
    assert_eq!(conv_ids(&body).len(), 2);
    let (_, body) = s.get("/api/admin/conversations?q=book", Some(&ta)).await;
    assert_eq!(body["conversations"][0]["title"], "Book club");

    // Reading for moderation (the admin is not a member) is allowed and audited.
    let (st, body) = s
        .get(
            &format!("/api/admin/messages?conversationId={conv}"),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"][0]["content"], "something rude");
    let (st, _) = s.get("/api/admin/messages", Some(&ta)).await;
    assert_eq!(st, 400);

    // Deleting fans out `message:deleted` to the members.
    let (st, body) = s
        .call(
            "DELETE",
            &format!("/api/admin/messages/{msg}"),
            None,
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["message"]["deleted"], true);
    for c in [&mut ca, &mut cb] {
        let ev = c.expect_event("message:deleted").await;
        assert_eq!(ev["id"], msg.as_str());
        assert_eq!(ev["content"], "");
    }
    let deleted_by: Option<i64> = messages::table
        .find(msg.parse::<i64>().unwrap())
        .select(messages::deleted_by)
        .first(&mut s.db.conn())
        .unwrap();
    assert_eq!(deleted_by, Some(admin));
    let (st, _) = s
        .call("DELETE", "/api/admin/messages/999999", None, Some(&ta))
        .await;
    assert_eq!(st, 404);

    let entries = audit(&s, &ta, "").await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["message.delete", "conversation.read"]);
    assert_eq!(entries[0]["details"]["senderId"], alice.to_string());
    assert_eq!(entries[1]["targetId"], conv.as_str());
    let (_, page) = s.get("/api/admin/audit?limit=1", Some(&ta)).await;
    let cursor = page["nextCursor"].as_str().unwrap();
    let (_, rest) = s
        .get(
            &format!("/api/admin/audit?limit=1&cursor={cursor}"),
            Some(&ta),
        )
        .await;
    assert_eq!(rest["entries"][0]["action"], "conversation.read");
}

#[actix_web::test]
async fn seed_002_support_conversations_work_from_both_sides() {
    let s = TestServer::start_with(|c| {
        c.agora_app_id = "970CA35de60c44645bbae8a215061b33".into();
        c.agora_app_certificate =
            switchboard::config::Secret::new("5CFd2fd1755d40ecb72977518be15d3b");
    })
    .await;
    let admin1 = s.create_user("Admin One", "a1@example.com", None, &["admin"]);
    let admin2 = s.create_user("Admin Two", "a2@example.com", None, &["admin"]);
    let astro = s.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let (t1, t2, tx) = (s.token_for(admin1), s.token_for(admin2), s.token_for(astro));
    let mut c1 = connect(&s, admin1).await;
    let mut c2 = connect(&s, admin2).await;
    let mut cx = connect(&s, astro).await;

    // Staff side: the conversation "with admin" — every admin is a member.
    let (st, body) = s.get("/api/conversations/admin", Some(&tx)).await;
    assert_eq!(st, 200, "{body}");
    let conv = body["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["conversation"]["type"], "support");
    assert_eq!(body["conversation"]["contextType"], "support");
    assert_eq!(body["conversation"]["supportUserId"], astro.to_string());
    let mut members: Vec<String> = body["conversation"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let mut expected = vec![admin1.to_string(), admin2.to_string(), astro.to_string()];
    expected.sort();
    assert_eq!(members, expected);
    assert_eq!(body["unreadCount"], 0);

    let (st, body) = s
        .post(
            "/api/conversations/admin/messages",
            json!({"content": "Need help with payouts", "messageType": "text", "senderId": admin1}),
            Some(&tx),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["message"]["senderId"], astro.to_string());
    for c in [&mut c1, &mut c2] {
        let got = c.expect_event("message:new").await;
        assert_eq!(got["conversationId"], conv.as_str());
        assert_eq!(got["content"], "Need help with payouts");
    }

    // Admin side: the same conversation, with recent messages and the admin's unread count.
    let (st, body) = s
        .get(&format!("/api/admin/conversations/{astro}"), Some(&t1))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["conversation"]["id"], conv.as_str());
    assert_eq!(body["unreadCount"], 1);
    assert_eq!(body["messages"][0]["content"], "Need help with payouts");

    // Any admin may answer; the staff member's socket gets it.
    let (st, body) = s
        .post(
            &format!("/api/admin/conversations/{astro}/messages"),
            json!({"text": "On it"}),
            Some(&t2),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    // (A REST send reaches every device of every member, the sender's own included.)
    assert_eq!(
        cx.expect_event("message:new").await["content"],
        "Need help with payouts"
    );
    let got = cx.expect_event("message:new").await;
    assert_eq!(
        (got["content"].as_str(), got["senderId"].as_str()),
        (Some("On it"), Some(admin2.to_string().as_str()))
    );
    assert_eq!(c1.expect_event("message:new").await["content"], "On it");

    let (_, page) = s.get("/api/conversations/admin/messages", Some(&tx)).await;
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["Need help with payouts", "On it"]);
    let (_, page) = s
        .get(
            &format!("/api/admin/conversations/{astro}/messages?limit=1"),
            Some(&t1),
        )
        .await;
    assert_eq!(page["messages"][0]["content"], "On it");

    // A socket send into the support conversation reaches both admins too.
    cx.request(
        "message:send",
        json!({"conversationId": conv, "content": "thanks"}),
    )
    .await
    .unwrap();
    assert_eq!(c2.expect_event("message:new").await["content"], "On it");
    assert_eq!(c2.expect_event("message:new").await["content"], "thanks");

    // Admin call to the astrologer: Agora channel and token, ringing on her socket.
    let (st, body) = s
        .post(
            "/api/admin/calls/initiate",
            json!({"astrologerId": astro.to_string(), "callType": "video", "userId": admin1}),
            Some(&t1),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let call = body["callId"].as_str().unwrap().to_owned();
    assert!(body["agoraToken"].as_str().unwrap().starts_with("007"));
    let incoming = cx.expect_event("call:incoming").await;
    assert_eq!(incoming["callId"], call.as_str());
    assert_eq!(incoming["from"], admin1.to_string());

    // Admins use the admin routes; a support conversation is not for admins themselves.
    let (st, _) = s.get("/api/conversations/admin", Some(&t1)).await;
    assert_eq!(st, 400);
    let (st, _) = s
        .get(&format!("/api/admin/conversations/{admin2}"), Some(&t1))
        .await;
    assert_eq!(st, 400);
    let (st, _) = s.get("/api/admin/conversations/999999", Some(&t1)).await;
    assert_eq!(st, 404);
}

#[actix_web::test]
async fn authorization_matrix_for_admin_routes_conversations_calls_and_forged_ids() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let mallory = s.create_user("Mallory", "mallory@example.com", None, &["master"]);
    let tm = s.token_for(mallory);

    // A non-admin (even a `master` moderator) on every admin route: 403; no token: 401.
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/api/admin/stats".into(), None),
        ("GET", "/api/admin/users".into(), None),
        ("GET", format!("/api/admin/users/{alice}"), None),
        (
            "PATCH",
            format!("/api/admin/users/{alice}/roles"),
            Some(json!({"roles": ["admin"]})),
        ),
        (
            "PUT",
            format!("/api/admin/users/{alice}/roles"),
            Some(json!({"roles": ["admin"]})),
        ),
        (
            "POST",
            format!("/api/admin/users/{alice}/ban"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/api/admin/users/{alice}/unban"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/api/admin/users/{alice}/logout"),
            Some(json!({})),
        ),
        ("GET", "/api/admin/conversations".into(), None),
        ("GET", "/api/admin/messages?conversationId=1".into(), None),
        ("DELETE", "/api/admin/messages/1".into(), None),
        ("GET", "/api/admin/calls/live".into(), None),
        ("GET", "/api/admin/calls".into(), None),
        ("POST", "/api/admin/calls/abc/end".into(), Some(json!({}))),
        ("GET", "/api/admin/audit".into(), None),
        ("GET", "/api/admin/calls/stats".into(), None),
        ("GET", format!("/api/admin/conversations/{alice}"), None),
        (
            "GET",
            format!("/api/admin/conversations/{alice}/messages"),
            None,
        ),
        (
            "POST",
            format!("/api/admin/conversations/{alice}/messages"),
            Some(json!({"content": "x"})),
        ),
        (
            "POST",
            "/api/admin/calls/initiate".into(),
            Some(json!({"astrologerId": alice})),
        ),
        ("POST", "/api/calls/admin/token".into(), Some(json!({}))),
        ("GET", "/admin/stats".into(), None),
        ("POST", format!("/admin/users/{alice}/ban"), Some(json!({}))),
    ];
    for (method, path, body) in &routes {
        let (st, res) = s.call(method, path, body.clone(), Some(&tm)).await;
        assert_eq!(
            (st, code(&res)),
            (403, "forbidden"),
            "{method} {path}: {res}"
        );
        let (st, res) = s.call(method, path, body.clone(), None).await;
        assert_eq!(st, 401, "{method} {path} without a token: {res}");
    }
    let banned: i64 = switchboard::db::schema::users::table
        .filter(switchboard::db::schema::users::banned_at.is_not_null())
        .count()
        .get_result(&mut s.db.conn())
        .unwrap();
    assert_eq!(banned, 0, "no refused admin action took effect");
    let (st, _) = s.get("/api/admin/stats", Some(&s.token_for(admin))).await;
    assert_eq!(st, 200);

    // A conversation Mallory is not in: reading, sending and joining are refused.
    let ta = s.token_for(alice);
    let (_, body) = s
        .post("/api/conversations", json!({"userId": bob}), Some(&ta))
        .await;
    let conv = body["conversation"]["id"].as_str().unwrap().to_owned();
    let (st, res) = s
        .get(&format!("/api/conversations/{conv}/messages"), Some(&tm))
        .await;
    assert_eq!((st, code(&res)), (403, "forbidden"));
    let (st, res) = s
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "let me in"}),
            Some(&tm),
        )
        .await;
    assert_eq!((st, code(&res)), (403, "forbidden"));
    let (st, _) = s
        .get(&format!("/messages?conversationId={conv}"), Some(&tm))
        .await;
    assert_eq!(st, 403);
    let mut cm = connect(&s, mallory).await;
    let err = cm
        .request("conversation:join", json!({"conversationId": conv}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "forbidden");
    let err = cm
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "hi"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err["code"], "forbidden");
    let count: i64 = messages::table
        .count()
        .get_result(&mut s.db.conn())
        .unwrap();
    assert_eq!(count, 0);

    // Someone else's call: every action is `forbidden`.
    let mut ca = connect(&s, alice).await;
    let mut cb = connect(&s, bob).await;
    let ack = ca
        .request(
            "call:initiate",
            json!({"to": bob, "fromId": mallory, "callerId": mallory, "initiatedBy": mallory}),
        )
        .await
        .unwrap();
    let call = ack["callId"].as_str().unwrap().to_owned();
    let incoming = cb.expect_event("call:incoming").await;
    assert_eq!(
        incoming["from"],
        alice.to_string(),
        "a forged caller is ignored"
    );
    for event in ["call:accept", "call:reject", "call:end", "call:ice"] {
        let err = cm
            .request(event, json!({"callId": call, "candidate": "c"}))
            .await
            .unwrap_err();
        assert_eq!(err["code"], "forbidden", "{event}: {err}");
    }
    let (st, res) = s
        .post(&format!("/api/calls/{call}/end"), json!({}), Some(&tm))
        .await;
    assert_eq!((st, code(&res)), (403, "forbidden"));
    let (st, _) = s.get(&format!("/api/calls/{call}"), Some(&tm)).await;
    assert_eq!(st, 403);
    // The call is untouched by all that.
    cb.request("call:accept", json!({"callId": call}))
        .await
        .unwrap();
    ca.expect_event("call:accepted").await;
    ca.request("call:end", json!({"callId": call}))
        .await
        .unwrap();

    // Forged user ids in payloads are ignored in favour of the token.
    let sent = ca
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "me", "senderId": bob, "from": bob, "userId": bob}),
        )
        .await
        .unwrap();
    assert_eq!(sent["senderId"], alice.to_string());
    let (_, res) = s
        .post(
            &format!("/api/conversations/{conv}/messages"),
            json!({"content": "rest", "senderId": bob, "sender": bob}),
            Some(&ta),
        )
        .await;
    assert_eq!(res["message"]["senderId"], alice.to_string());
    let (_, res) = s
        .post(
            "/chat-requests",
            json!({"to": mallory, "from": bob, "fromUserId": bob}),
            Some(&ta),
        )
        .await;
    assert_eq!(res["request"]["fromUserId"], alice.to_string());
    let (st, _) = s
        .post(
            "/contacts/sync",
            json!({"phones": ["+14155550777"], "userId": bob, "ownerId": bob}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200);
    let owners: Vec<i64> = contacts::table
        .select(contacts::owner_id)
        .load(&mut s.db.conn())
        .unwrap();
    assert_eq!(owners, vec![alice]);
}

/// PostgreSQL hands jsonb numbers back written out in full (1.7976931348623157e308 as a
/// 309-digit integer); reading that back must give the stored number, not fail the commit of
/// the message (a 500, and every other message of the same batch with it).
#[actix_web::test]
async fn support_messages_keep_extreme_numbers_in_their_metadata() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let astro = s.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let (ta, tx) = (s.token_for(admin), s.token_for(astro));
    let metadata = json!({
        "max": f64::MAX,
        "nearMin": -1.7e308,
        "tiny": 8.707752230008142e-108,
        "nested": [{"big": 1.280_512_014_326_851e71}],
    });
    let (st, body) = s
        .post(
            "/api/conversations/admin/messages",
            json!({"content": "numbers", "metadata": metadata}),
            Some(&tx),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["message"]["metadata"], metadata);

    let (st, body) = s
        .post(
            &format!("/api/admin/conversations/{astro}/messages"),
            json!({"content": "numbers back", "metadata": {"max": f64::MAX}}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["message"]["metadata"]["max"].as_f64(), Some(f64::MAX));

    // Read back from the database by both sides.
    let (st, body) = s.get("/api/conversations/admin/messages", Some(&tx)).await;
    assert_eq!(st, 200, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{body}");
    assert_eq!(messages[0]["metadata"], metadata);
    let (st, body) = s
        .get(&format!("/api/admin/conversations/{astro}"), Some(&ta))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"][0]["metadata"], metadata);
    assert_eq!(
        body["messages"][1]["metadata"]["max"].as_f64(),
        Some(f64::MAX)
    );
}

/// A time before 4714 BC parses (chrono reaches further back) but PostgreSQL cannot take it as
/// a parameter: the call history refuses it with a 400 instead of failing inside the query.
#[actix_web::test]
async fn call_history_refuses_times_before_what_postgres_stores() {
    let s = TestServer::start().await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let user = s.create_user("User", "user@example.com", None, &[]);
    let (ta, tu) = (s.token_for(admin), s.token_for(user));
    for query in ["since=-5000-01-01T00:00:00Z", "until=-5000-01-01T00:00:00Z"] {
        let (st, body) = s.get(&format!("/api/admin/calls?{query}"), Some(&ta)).await;
        assert_eq!(
            (st, code(&body)),
            (400, "invalid_parameter"),
            "{query}: {body}"
        );
    }
    // Times PostgreSQL does hold still filter.
    for query in [
        "since=0001-01-01T00:00:00Z",
        "until=%2B200000-01-01T00:00:00Z",
        "since=-4000-01-01T00:00:00Z",
    ] {
        let (st, body) = s.get(&format!("/api/admin/calls?{query}"), Some(&ta)).await;
        assert_eq!(st, 200, "{query}: {body}");
        assert_eq!(body["calls"], json!([]), "{query}");
    }
    // A cursor whose time is out of that range (the same parser serves the user's history).
    let cursor = "cursor=-6000000000000000000_x";
    let (st, body) = s
        .get(&format!("/api/admin/calls?{cursor}"), Some(&ta))
        .await;
    assert_eq!((st, code(&body)), (400, "invalid_cursor"), "{body}");
    let (st, body) = s
        .get(&format!("/api/calls/history?{cursor}"), Some(&tu))
        .await;
    assert_eq!((st, code(&body)), (400, "invalid_cursor"), "{body}");
}
