//! Seed 003's chat requests and contacts end to end: the request lifecycle with realtime
//! events (duplicates, a foreign accept, decline, cancel), contact sync with numbers in mixed
//! formats, and start-chat by user id or phone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use diesel::prelude::*;
use serde_json::json;
use std::time::Duration;
use switchboard::db::schema::{chat_requests, contacts};
use switchboard::policy::ContactPolicy;

async fn connect(s: &TestServer, user: i64) -> WsClient {
    let mut c = WsClient::connect(s, &s.token_for(user)).await;
    c.request("ping", json!({})).await.unwrap();
    c
}

fn user_with_phone(s: &TestServer, name: &str, phone: &str) -> i64 {
    switchboard::auth::create_user(&mut s.db.conn(), name, Some(phone), None, None, vec![])
        .unwrap()
        .id
}

fn pending_between(s: &TestServer, from: i64, to: i64) -> i64 {
    chat_requests::table
        .filter(chat_requests::from_user_id.eq(from))
        .filter(chat_requests::to_user_id.eq(to))
        .filter(chat_requests::status.eq("pending"))
        .count()
        .get_result(&mut s.db.conn())
        .unwrap()
}

#[actix_web::test]
async fn chat_request_lifecycle_with_duplicates_foreign_accept_decline_and_cancel() {
    let s = TestServer::start_with(|c| c.contact_policy = ContactPolicy::Request).await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb, tc) = (s.token_for(alice), s.token_for(bob), s.token_for(carol));
    let mut ca = connect(&s, alice).await;
    let mut cb = connect(&s, bob).await;
    let mut cc = connect(&s, carol).await;

    // Alice asks Bob; a forged `from` is ignored. Bob's devices hear about it.
    let (st, body) = s
        .post(
            "/chat-requests",
            json!({"to": bob.to_string(), "message": "Hi Bob!", "from": carol, "fromUserId": carol, "userId": carol}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let req = &body["request"];
    let id = req["id"].as_str().unwrap().to_owned();
    assert_eq!(req["fromUserId"], alice.to_string());
    assert_eq!(req["toUserId"], bob.to_string());
    assert_eq!(req["status"], "pending");
    assert_eq!(req["from"]["name"], "Alice");
    let event = cb.expect_event("chat_request:new").await;
    assert_eq!(
        (event["id"].as_str(), event["message"].as_str()),
        (Some(id.as_str()), Some("Hi Bob!"))
    );

    // A duplicate is not created: the pending one comes back.
    let (st, again) = s
        .post(
            "/chat-requests",
            json!({"to": bob, "message": "Hi again"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(again["request"]["id"], id.as_str());
    assert_eq!(pending_between(&s, alice, bob), 1);
    assert!(cb
        .maybe_event("chat_request:new", Duration::from_millis(300))
        .await
        .is_none());

    // Listings: incoming for Bob, outgoing for Alice.
    let (_, list) = s.get("/chat-requests", Some(&tb)).await;
    assert_eq!(list["incoming"].as_array().unwrap().len(), 1);
    assert_eq!(list["incoming"][0]["id"], id.as_str());
    assert!(list["outgoing"].as_array().unwrap().is_empty());
    let (_, list) = s.get("/api/chat-requests?status=pending", Some(&ta)).await;
    assert_eq!(list["outgoing"][0]["id"], id.as_str());

    // Only the recipient may accept: the sender and a third user get 403.
    for token in [&ta, &tc] {
        let (st, body) = s
            .post(
                &format!("/chat-requests/{id}/accept"),
                json!({}),
                Some(token),
            )
            .await;
        assert_eq!((st, code(&body)), (403, "forbidden"), "{body}");
    }
    let (st, _) = s
        .post(
            &format!("/chat-requests/{id}/decline"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(pending_between(&s, alice, bob), 1);

    // Bob accepts: the direct conversation exists and both sides are told.
    let (st, body) = s
        .post(&format!("/chat-requests/{id}/accept"), json!({}), Some(&tb))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["request"]["status"], "accepted");
    let conv = body["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["conversation"]["type"], "direct");
    for c in [&mut ca, &mut cb] {
        let ev = c.expect_event("chat_request:accepted").await;
        assert_eq!(ev["conversation"]["id"], conv.as_str());
        assert_eq!(
            c.expect_event("conversation:new").await["id"],
            conv.as_str()
        );
    }
    // Accepting again returns the same conversation; messages now flow.
    let (st, body) = s
        .post(
            &format!("/api/chat-requests/{id}/accept"),
            json!({}),
            Some(&tb),
        )
        .await;
    assert_eq!(
        (st, body["conversation"]["id"].as_str()),
        (200, Some(conv.as_str()))
    );
    let (st, body) = s
        .post(
            "/messages",
            json!({"to": bob, "text": "thanks!"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["message"]["conversationId"], conv.as_str());
    assert_eq!(cb.expect_event("message:new").await["content"], "thanks!");
    // A new request to someone already connected is refused.
    let (st, body) = s
        .post("/chat-requests", json!({"to": alice}), Some(&tb))
        .await;
    assert_eq!((st, code(&body)), (409, "already_connected"), "{body}");

    // Carol asks Bob, Bob declines: Carol is told and still may not write to Bob.
    let (_, body) = s
        .post("/chat-requests", json!({"to": bob}), Some(&tc))
        .await;
    let declined = body["request"]["id"].as_str().unwrap().to_owned();
    cb.expect_event("chat_request:new").await;
    let (st, body) = s
        .post(
            &format!("/chat-requests/{declined}/decline"),
            json!({}),
            Some(&tb),
        )
        .await;
    assert_eq!(
        (st, body["request"]["status"].as_str()),
        (200, Some("declined"))
    );
    assert_eq!(
        cc.expect_event("chat_request:declined").await["request"]["id"],
        declined.as_str()
    );
    let (st, body) = s
        .post(
            "/messages",
            json!({"to": bob, "text": "please?"}),
            Some(&tc),
        )
        .await;
    assert_eq!((st, code(&body)), (403, "not_allowed"));
    let (st, body) = s
        .post(
            &format!("/chat-requests/{declined}/accept"),
            json!({}),
            Some(&tb),
        )
        .await;
    assert_eq!((st, code(&body)), (409, "request_not_pending"));

    // A sender may withdraw a pending request; the recipient is told.
    let (_, body) = s
        .post("/chat-requests", json!({"to": alice}), Some(&tc))
        .await;
    let withdrawn = body["request"]["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(
            &format!("/chat-requests/{withdrawn}/cancel"),
            json!({}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 403, "only the sender cancels");
    let (st, body) = s
        .post(
            &format!("/chat-requests/{withdrawn}/cancel"),
            json!({}),
            Some(&tc),
        )
        .await;
    assert_eq!(
        (st, body["request"]["status"].as_str()),
        (200, Some("cancelled"))
    );
    ca.expect_event("chat_request:cancelled").await;

    // Bad input.
    let (st, body) = s
        .post("/chat-requests", json!({"to": carol}), Some(&tc))
        .await;
    assert_eq!((st, code(&body)), (400, "validation_failed"), "{body}");
    let (st, body) = s
        .post("/chat-requests", json!({"to": 999_999}), Some(&tc))
        .await;
    assert_eq!((st, code(&body)), (404, "not_found"), "{body}");
    let (st, _) = s
        .post("/chat-requests/999999/accept", json!({}), Some(&tb))
        .await;
    assert_eq!(st, 404);
}

#[actix_web::test]
async fn contact_sync_normalises_mixed_formats_and_start_chat_opens_conversations() {
    let s = TestServer::start_with(|c| c.contact_policy = ContactPolicy::Request).await;
    let alice = user_with_phone(&s, "Alice", "+14155550100");
    let bob = user_with_phone(&s, "Bob", "+14155550123");
    let carol = user_with_phone(&s, "Carol", "+442079460958");
    let dave = user_with_phone(&s, "Dave", "+33612345678");
    let ta = s.token_for(alice);

    let (st, body) = s
        .post(
            "/contacts/sync",
            json!({
                "countryCode": "+33",
                "phones": [
                    "+1 (415) 555-0123",
                    {"phone": "0044 20 7946 0958", "name": "Carol from work"},
                    "06 12 34 56 78",
                    "+1-415-555-0999",
                    "not a number",
                    "+14155550100",
                    "+1 415 555 0123"
                ]
            }),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let mut found: Vec<String> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    let mut expected = vec![bob.to_string(), carol.to_string(), dave.to_string()];
    expected.sort();
    assert_eq!(found, expected, "{body}");
    assert_eq!(body["matched"], 3);
    assert_eq!(body["invalid"], json!(["not a number"]));
    // Duplicates collapse; the caller's own number is stored but not returned as a match.
    assert_eq!(body["stored"], 5);
    assert!(body["users"][0]["email"].is_null());
    let mut stored: Vec<(String, Option<String>)> = contacts::table
        .filter(contacts::owner_id.eq(alice))
        .select((contacts::phone, contacts::name))
        .order(contacts::phone)
        .load(&mut s.db.conn())
        .unwrap();
    stored.sort();
    assert_eq!(
        stored,
        vec![
            ("+14155550100".into(), None),
            ("+14155550123".into(), None),
            ("+14155550999".into(), None),
            ("+33612345678".into(), None),
            ("+442079460958".into(), Some("Carol from work".into())),
        ]
    );

    // start-chat by phone (another format) and by user id; the second time returns it.
    let (st, body) = s
        .post(
            "/contacts/start-chat",
            json!({"phone": "+1 415-555-0123"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let with_bob = body["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["conversation"]["type"], "direct");
    let (st, body) = s
        .post(
            "/api/contacts/start-chat",
            json!({"userId": bob.to_string()}),
            Some(&ta),
        )
        .await;
    assert_eq!(
        (st, body["conversation"]["id"].as_str()),
        (200, Some(with_bob.as_str()))
    );
    let (st, body) = s
        .post("/contacts/start-chat", json!({"userId": carol}), Some(&ta))
        .await;
    assert_eq!(st, 201, "{body}");

    // Replacing the list drops Dave: under the request policy he is a stranger again.
    let (st, body) = s
        .post(
            "/contacts/sync",
            json!({"phones": ["+14155550123"], "replace": true}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, body["stored"].as_i64()), (200, Some(1)), "{body}");
    let (st, body) = s
        .post("/contacts/start-chat", json!({"userId": dave}), Some(&ta))
        .await;
    assert_eq!((st, code(&body)), (403, "not_allowed"), "{body}");
    // Unregistered numbers and missing input.
    let (st, body) = s
        .post(
            "/contacts/start-chat",
            json!({"phone": "+14155550999"}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&body)), (404, "not_found"), "{body}");
    let (st, body) = s.post("/contacts/start-chat", json!({}), Some(&ta)).await;
    assert_eq!((st, code(&body)), (400, "validation_failed"), "{body}");
    let (st, body) = s
        .post(
            "/contacts/sync",
            json!({"phones": ["1"], "countryCode": "abc"}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&body)), (400, "validation_failed"), "{body}");
}

#[actix_web::test]
async fn contact_sync_refuses_oversized_lists() {
    let s = TestServer::start_with(|c| c.contacts_sync_max = 3).await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let (st, body) = s
        .post(
            "/contacts/sync",
            json!({"phones": ["+14155550001", "+14155550002", "+14155550003", "+14155550004"]}),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!((st, code(&body)), (413, "too_large"), "{body}");
    let stored: i64 = contacts::table
        .count()
        .get_result(&mut s.db.conn())
        .unwrap();
    assert_eq!(stored, 0);
}
