//! Conversations and messages over REST, against a real PostgreSQL, with live sockets listening:
//! a REST send or delete reaches sockets exactly as a socket one does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use serde_json::json;
use std::time::Duration;

#[actix_web::test]
async fn direct_conversations_are_one_per_pair_and_groups_list_last_message_and_unread() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb, tc) = (s.token_for(alice), s.token_for(bob), s.token_for(carol));

    let (status, first) = s
        .post(
            "/api/conversations",
            json!({"userId": bob.to_string()}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["conversation"]["type"], "direct");
    // Seed 003 names both participants (self included); the pair already has its conversation.
    let (status, again) = s
        .post(
            "/conversations",
            json!({"participants": [alice, bob]}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["conversation"]["id"], first["conversation"]["id"]);
    let (status, again2) = s
        .post(
            "/api/conversations",
            json!({"participants": [alice.to_string()]}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again2["conversation"]["id"], first["conversation"]["id"]);

    let (status, g) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Trip", "members": [bob, carol]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let gid = g["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(g["conversation"]["members"].as_array().unwrap().len(), 3);

    for text in ["one", "two", "three"] {
        let (status, body) = s
            .post(
                &format!("/api/conversations/{gid}/messages"),
                json!({"content": text}),
                Some(&ta),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, list) = s.get("/api/conversations", Some(&tb)).await;
    assert_eq!(status, 200);
    let group = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == gid.as_str())
        .unwrap()
        .clone();
    assert_eq!(group["lastMessage"]["content"], "three");
    assert_eq!(group["unreadCount"], 3);
    assert_eq!(
        list["conversations"][0]["id"],
        gid.as_str(),
        "most recently active first"
    );

    let mut b = WsClient::connect(&s, &tb).await;
    b.request("receipt:read", json!({"conversationId": gid, "upTo": 2}))
        .await
        .unwrap();
    let (_, list) = s.get("/conversations?limit=1", Some(&tb)).await;
    assert_eq!(list["conversations"][0]["unreadCount"], 1);
    let next = list["nextCursor"].as_str().unwrap().to_owned();
    let (_, page2) = s
        .get(&format!("/conversations?limit=1&cursor={next}"), Some(&tb))
        .await;
    assert_eq!(page2["conversations"][0]["id"], first["conversation"]["id"]);

    let outsider = s.create_user("Out", "out@example.com", None, &[]);
    let (status, body) = s
        .get(
            &format!("/api/conversations/{gid}"),
            Some(&s.token_for(outsider)),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, _) = s.get(&format!("/api/conversations/{gid}"), Some(&tc)).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn rest_sends_reach_sockets_and_messages_page_by_seq() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let (ta, tb) = (s.token_for(alice), s.token_for(bob));
    let (_, g) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "members": [bob]}),
            Some(&ta),
        )
        .await;
    let gid = g["conversation"]["id"].as_str().unwrap().to_owned();
    let mut b = WsClient::connect(&s, &tb).await;
    b.request("ping", json!({})).await.unwrap();

    // A forged sender is ignored in favour of the token.
    let (status, sent) = s
        .post(
            &format!("/api/conversations/{gid}/messages"),
            json!({"text": "via rest", "from": bob, "senderId": bob}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["message"]["senderId"], alice.to_string());
    let ev = b.expect_event("message:new").await;
    assert_eq!(
        (ev["content"].as_str(), ev["seq"].as_i64()),
        (Some("via rest"), Some(1))
    );

    for i in 2..=10 {
        s.post(
            &format!("/api/conversations/{gid}/messages"),
            json!({"content": format!("m{i}")}),
            Some(&ta),
        )
        .await;
    }
    let (_, newest) = s
        .get(
            &format!("/api/conversations/{gid}/messages?limit=4"),
            Some(&tb),
        )
        .await;
    let seqs: Vec<i64> = newest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    let (_, older) = s
        .get(
            &format!("/api/conversations/{gid}/messages?limit=4&before=7"),
            Some(&tb),
        )
        .await;
    let seqs: Vec<i64> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    let (_, after) = s
        .get(
            &format!("/messages?conversationId={gid}&after=8"),
            Some(&tb),
        )
        .await;
    let seqs: Vec<i64> = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![9, 10]);

    let (status, body) = s
        .post(
            &format!("/api/conversations/{gid}/messages"),
            json!({"content": ""}),
            Some(&ta),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
}

#[actix_web::test]
async fn seed_003_message_routes_send_edit_and_delete_with_aliases() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let (ta, tb) = (s.token_for(alice), s.token_for(bob));
    let mut b = WsClient::connect(&s, &tb).await;
    b.request("ping", json!({})).await.unwrap();

    let (status, sent) = s
        .post(
            "/messages",
            json!({"to": bob.to_string(), "text": "hello"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let id = sent["message"]["id"].as_str().unwrap().to_owned();
    let conv = sent["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.expect_event("message:new").await["content"], "hello");

    let (status, sent2) = s
        .post(
            "/messages",
            json!({"conversation": conv, "content": "again"}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(sent2["message"]["seq"], 2);

    let (status, body) = s
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"text": "hello!"})),
            Some(&tb),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, body) = s
        .call(
            "PATCH",
            &format!("/messages/{id}"),
            Some(json!({"text": "hello!"})),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(b.expect_event("message:edited").await["content"], "hello!");

    let (status, _) = s
        .call("DELETE", &format!("/messages/{id}"), None, Some(&ta))
        .await;
    assert_eq!(status, 200);
    assert_eq!(b.expect_event("message:deleted").await["id"], id.as_str());

    let (_, page) = s
        .get(&format!("/messages?conversation={conv}"), Some(&tb))
        .await;
    assert_eq!(page["messages"][0]["deleted"], true);
    let (status, body) = s.get("/messages", Some(&tb)).await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
}

#[actix_web::test]
async fn seed_000_team_chat_and_dm_deletes_check_permissions_and_chat() {
    let s = TestServer::start().await;
    let seller = s.create_user("Seller", "seller@example.com", None, &[]);
    let seller2 = s.create_user("Seller2", "seller2@example.com", None, &[]);
    let master = s.create_user("Master", "master@example.com", None, &["MASTER"]);
    s.db.exec(&format!(
        "UPDATE users SET team_roles = ARRAY['sales'] WHERE id IN ({seller}, {seller2})"
    ));
    let (t1, t2, tm) = (
        s.token_for(seller),
        s.token_for(seller2),
        s.token_for(master),
    );

    let (status, team) = s.get("/api/team-chat/sales", Some(&t1)).await;
    assert_eq!(status, 200, "{team}");
    assert_eq!(team["conversation"]["members"].as_array().unwrap().len(), 2);
    let mut w2 = WsClient::connect(&s, &t2).await;
    w2.request("ping", json!({})).await.unwrap();
    let (_, m1) = s
        .post(
            "/api/team-chat/sales/messages",
            json!({"content": "deal closed"}),
            Some(&t1),
        )
        .await;
    let (_, m2) = s
        .post(
            "/api/team-chat/sales/messages",
            json!({"content": "nice"}),
            Some(&t1),
        )
        .await;
    assert_eq!(
        w2.expect_event("message:new").await["content"],
        "deal closed"
    );
    let (id1, id2) = (
        m1["message"]["id"].as_str().unwrap(),
        m2["message"]["id"].as_str().unwrap(),
    );

    let (status, body) = s
        .call(
            "DELETE",
            &format!("/api/team-chat/sales/messages/{id1}"),
            None,
            Some(&t2),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (403, "forbidden"),
        "another member's message"
    );
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/team-chat/sales/messages/{id1}"),
            None,
            Some(&t1),
        )
        .await;
    assert_eq!(status, 200, "own message");
    let deleted = w2.expect_event("message:deleted").await;
    assert_eq!(deleted["id"], id1);
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/team-chat/sales/messages/{id2}"),
            None,
            Some(&tm),
        )
        .await;
    assert_eq!(status, 200, "MASTER deletes any");
    assert_eq!(w2.expect_event("message:deleted").await["id"], id2);
    let (status, body) = s
        .call(
            "DELETE",
            &format!("/api/team-chat/support/messages/{id2}"),
            None,
            Some(&tm),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (404, "not_found"),
        "not in that chat"
    );

    // Outsiders cannot use a team chat.
    let (status, _) = s
        .get(
            "/api/team-chat/sales/messages",
            Some(&s.token_for(master + 1000)),
        )
        .await;
    assert_eq!(status, 401);

    // DM delete: the message must be in the DM with that user.
    let (_, dm) = s
        .post(
            "/messages",
            json!({"to": seller2, "text": "psst"}),
            Some(&t1),
        )
        .await;
    let dm_id = dm["message"]["id"].as_str().unwrap();
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/messages/dm/{master}/messages/{dm_id}"),
            None,
            Some(&t1),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/messages/dm/{seller}/messages/{dm_id}"),
            None,
            Some(&t2),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/messages/dm/{seller2}/messages/{dm_id}"),
            None,
            Some(&t1),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(w2.expect_event("message:deleted").await["id"], dm_id);
}

#[actix_web::test]
async fn group_members_are_managed_by_owners_and_rest_sends_are_rate_limited() {
    let s = TestServer::start_with(|c| {
        c.message_burst = 2;
        c.message_rate_per_min = 2;
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb, tc) = (s.token_for(alice), s.token_for(bob), s.token_for(carol));
    let (_, g) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "members": [bob]}),
            Some(&ta),
        )
        .await;
    let gid = g["conversation"]["id"].as_str().unwrap().to_owned();

    let (status, _) = s
        .post(
            &format!("/api/conversations/{gid}/members"),
            json!({"userIds": [carol]}),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = s
        .post(
            &format!("/api/conversations/{gid}/members"),
            json!({"userIds": [carol]}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut c = WsClient::connect(&s, &tc).await;
    c.request("ping", json!({})).await.unwrap();
    s.post(
        &format!("/api/conversations/{gid}/messages"),
        json!({"content": "welcome"}),
        Some(&ta),
    )
    .await;
    assert_eq!(c.expect_event("message:new").await["content"], "welcome");

    let (status, _) = s
        .post(
            &format!("/api/conversations/{gid}/messages"),
            json!({"content": "2"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = s
        .post(
            &format!("/api/conversations/{gid}/messages"),
            json!({"content": "3"}),
            Some(&ta),
        )
        .await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));

    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/conversations/{gid}/members/{carol}"),
            None,
            Some(&ta),
        )
        .await;
    assert_eq!(status, 200);
    assert!(c
        .maybe_event("conversation:member_removed", Duration::from_secs(5))
        .await
        .is_some());
    let (status, _) = s
        .post(
            &format!("/api/conversations/{gid}/messages"),
            json!({"content": "x"}),
            Some(&tc),
        )
        .await;
    assert_eq!(status, 403, "removed members can no longer send");
}

#[actix_web::test]
async fn an_existing_direct_conversation_is_found_again_without_writing() {
    use switchboard::db::conversations::get_or_create_direct;
    let s = TestServer::start().await;
    let a = s.create_user("Ann", "ann@example.com", None, &[]);
    let b = s.create_user("Ben", "ben@example.com", None, &[]);
    let c = s.create_user("Cid", "cid@example.com", None, &[]);
    let mut conn = s.db.conn();
    let (first, created) = get_or_create_direct(&mut conn, a, b).unwrap();
    assert!(created);
    for (x, y) in [(a, b), (b, a), (a, b)] {
        let (again, created) = get_or_create_direct(&mut conn, x, y).unwrap();
        assert_eq!((again.id, created), (first.id, false));
    }
    // Finding it again inserted nothing, not even an attempt that took a conversation id.
    let (next, created) = get_or_create_direct(&mut conn, a, c).unwrap();
    assert!(created);
    assert_eq!(
        next.id,
        first.id + 1,
        "no conversation id was used up meanwhile"
    );
    assert!(get_or_create_direct(&mut conn, a, a).is_err());
    assert!(
        get_or_create_direct(&mut conn, a, c + 1000).is_err(),
        "unknown user"
    );
}
