//! The contact policy end to end: `open`, `request` and `roles`, each with allowed and denied
//! attempts to start a conversation (messages) and a call, over REST and over WebSockets, with
//! the database checked so that a refusal creates nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use diesel::prelude::*;
use serde_json::{json, Value};
use switchboard::config::Config;
use switchboard::db::schema::{call_participants, calls, conversations};
use switchboard::policy::ContactPolicy;

async fn connect(s: &TestServer, user: i64) -> WsClient {
    let mut c = WsClient::connect(s, &s.token_for(user)).await;
    c.request("ping", json!({})).await.unwrap();
    c
}

fn user_with_phone(s: &TestServer, name: &str, phone: &str, roles: &[&str]) -> i64 {
    switchboard::auth::create_user(
        &mut s.db.conn(),
        name,
        Some(phone),
        None,
        None,
        roles.iter().map(|r| (*r).to_owned()).collect(),
    )
    .unwrap()
    .id
}

fn direct_exists(s: &TestServer, a: i64, b: i64) -> bool {
    let key = format!("{}:{}", a.min(b), a.max(b));
    conversations::table
        .filter(conversations::participant_key.eq(key))
        .count()
        .get_result::<i64>(&mut s.db.conn())
        .unwrap()
        > 0
}

fn call_count(s: &TestServer) -> i64 {
    calls::table
        .count()
        .get_result::<i64>(&mut s.db.conn())
        .unwrap()
}

fn not_allowed(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(body), "not_allowed", "{body}");
}

fn ws_not_allowed(result: Result<Value, Value>) {
    let err = result.expect_err("the attempt should be refused");
    assert_eq!(err["code"], "not_allowed", "{err}");
}

/// Starts a REST call and hangs it up again; returns its id.
async fn rest_call(s: &TestServer, token: &str, to: i64) -> String {
    let (st, body) = s
        .post(
            "/api/calls/initiate",
            json!({"to": to.to_string()}),
            Some(token),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let id = body["callId"].as_str().unwrap().to_owned();
    let (st, body) = s
        .post(&format!("/api/calls/{id}/end"), json!({}), Some(token))
        .await;
    assert_eq!(st, 200, "{body}");
    id
}

/// Starts a call from a socket and hangs it up again.
async fn socket_call(c: &mut WsClient, to: i64) {
    let ack = c
        .request("call:initiate", json!({"to": to, "callType": "audio"}))
        .await
        .unwrap();
    assert_eq!(ack["status"], "ringing", "{ack}");
    c.request("call:end", json!({"callId": ack["callId"]}))
        .await
        .unwrap();
    c.expect_event("call:ended").await;
}

async fn server(policy: ContactPolicy, tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.contact_policy = policy;
        tweak(c);
    })
    .await
}

#[actix_web::test]
async fn open_policy_lets_strangers_message_and_call_over_rest_and_sockets() {
    let s = server(ContactPolicy::Open, |_| {}).await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let dave = s.create_user("Dave", "dave@example.com", None, &[]);
    let ta = s.token_for(alice);

    // REST: a direct conversation and a message to a stranger, and a call.
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"userId": bob.to_string()}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = s
        .post(
            "/messages",
            json!({"to": carol.to_string(), "text": "hello"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    rest_call(&s, &ta, bob).await;

    // Sockets: a send addressed to a user opens the conversation and reaches them.
    let mut ca = connect(&s, alice).await;
    let mut cd = connect(&s, dave).await;
    assert!(!direct_exists(&s, alice, dave));
    let ack = ca
        .request(
            "message:send",
            json!({"to": dave.to_string(), "content": "hi dave"}),
        )
        .await
        .unwrap();
    assert!(direct_exists(&s, alice, dave));
    let got = cd.expect_event("message:new").await;
    assert_eq!(got["content"], "hi dave");
    assert_eq!(got["conversationId"], ack["conversationId"]);
    socket_call(&mut ca, carol).await;
}

#[actix_web::test]
async fn request_policy_refuses_strangers_until_a_request_is_accepted() {
    let s = server(ContactPolicy::Request, |_| {}).await;
    let alice = user_with_phone(&s, "Alice", "+14155550101", &[]);
    let bob = user_with_phone(&s, "Bob", "+14155550102", &[]);
    let ta = s.token_for(alice);
    let tb = s.token_for(bob);
    let mut ca = connect(&s, alice).await;

    // Denied on REST: conversation, message to `to`, group with a stranger, call.
    let (st, body) = s
        .post("/api/conversations", json!({"userId": bob}), Some(&ta))
        .await;
    not_allowed(st, &body);
    let (st, body) = s
        .post("/messages", json!({"to": bob, "text": "hi"}), Some(&ta))
        .await;
    not_allowed(st, &body);
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "G", "members": [bob]}),
            Some(&ta),
        )
        .await;
    not_allowed(st, &body);
    let (st, body) = s
        .post("/api/calls/initiate", json!({"to": bob}), Some(&ta))
        .await;
    not_allowed(st, &body);

    // Denied on sockets: message to a user, conversation:open, call.
    ws_not_allowed(
        ca.request("message:send", json!({"to": bob, "content": "hi"}))
            .await,
    );
    ws_not_allowed(
        ca.request("conversation:open", json!({"userId": bob}))
            .await,
    );
    ws_not_allowed(ca.request("call:initiate", json!({"to": bob})).await);

    // Nothing was created by any refusal.
    assert!(!direct_exists(&s, alice, bob));
    assert_eq!(call_count(&s), 0);
    let groups: i64 = conversations::table
        .filter(conversations::kind.eq("group"))
        .count()
        .get_result(&mut s.db.conn())
        .unwrap();
    assert_eq!(groups, 0);

    // An accepted chat request opens the conversation; then messages and calls are allowed.
    let (st, req) = s
        .post(
            "/chat-requests",
            json!({"to": bob, "message": "hi"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{req}");
    let id = req["request"]["id"].as_str().unwrap();
    let (st, body) = s
        .post(&format!("/chat-requests/{id}/accept"), json!({}), Some(&tb))
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(direct_exists(&s, alice, bob));
    let ack = ca
        .request("message:send", json!({"to": bob, "content": "thanks"}))
        .await
        .unwrap();
    assert_eq!(ack["content"], "thanks");
    socket_call(&mut ca, bob).await;
    let (st, body) = s
        .post(
            "/messages",
            json!({"to": bob, "text": "over REST"}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 201, "{body}");
}

#[actix_web::test]
async fn request_policy_lets_contacts_group_members_and_admins_through() {
    let s = server(ContactPolicy::Request, |_| {}).await;
    let alice = user_with_phone(&s, "Alice", "+14155550201", &[]);
    let carol = user_with_phone(&s, "Carol", "+14155550202", &[]);
    let dave = user_with_phone(&s, "Dave", "+14155550203", &[]);
    let erin = user_with_phone(&s, "Erin", "+14155550204", &[]);
    let admin = user_with_phone(&s, "Admin", "+14155550205", &["admin"]);
    let ta = s.token_for(alice);
    let t_admin = s.token_for(admin);
    let mut ca = connect(&s, alice).await;

    // Contacts: Alice has Carol's, Frank's and Gina's numbers. A call to a contact is allowed
    // (before any conversation exists), and so is a conversation, in either direction.
    let frank = user_with_phone(&s, "Frank", "+14155550206", &[]);
    let gina = user_with_phone(&s, "Gina", "+14155550207", &[]);
    let (st, body) = s
        .post(
            "/contacts/sync",
            json!({"phones": ["+1 415 555 0202", "+1 (415) 555-0206", "001 415 555 0207"]}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(!direct_exists(&s, alice, carol));
    rest_call(&s, &ta, carol).await;
    let (st, body) = s
        .post("/api/conversations", json!({"userId": gina}), Some(&ta))
        .await;
    assert_eq!(st, 201, "{body}");
    let mut cf = connect(&s, frank).await;
    let opened = cf
        .request("conversation:open", json!({"userId": alice}))
        .await
        .unwrap();
    assert_eq!(opened["created"], true, "{opened}");

    // A shared group (made by an admin, who may contact anyone) links Alice and Dave.
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Club", "members": [alice, dave]}),
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let ack = ca
        .request(
            "message:send",
            json!({"to": dave, "content": "hi from the club"}),
        )
        .await
        .unwrap();
    assert!(ack["id"].is_string());
    socket_call(&mut ca, dave).await;

    // Admins: either side being an admin is enough.
    ca.request("conversation:open", json!({"userId": admin}))
        .await
        .unwrap();
    let (st, body) = s
        .post(
            "/messages",
            json!({"to": erin, "text": "from the admin"}),
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    // Erin is still a stranger to Alice.
    ws_not_allowed(ca.request("call:initiate", json!({"to": erin})).await);
    assert!(!direct_exists(&s, alice, erin));
}

/// Seed 002's people: an admin, an astrologer, a user who consulted her (linked by a
/// consultation conversation the admin set up), and users who did not.
struct Astro {
    s: TestServer,
    admin: i64,
    astro: i64,
    client: i64,
    stranger: i64,
    other: i64,
}

async fn astro_world(tweak: impl FnOnce(&mut Config)) -> Astro {
    let s = server(ContactPolicy::Roles, tweak).await;
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let astro = s.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let client = s.create_user("Client", "client@example.com", None, &[]);
    let stranger = s.create_user("Stranger", "stranger@example.com", None, &[]);
    let other = s.create_user("Other", "other@example.com", None, &[]);
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Consultation", "members": [astro, client],
                   "contextType": "consultation", "contextId": "c-42"}),
            Some(&s.token_for(admin)),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["conversation"]["contextType"], "consultation");
    Astro {
        s,
        admin,
        astro,
        client,
        stranger,
        other,
    }
}

#[actix_web::test]
async fn roles_policy_follows_the_configured_rules_for_messages_and_calls() {
    let Astro {
        s,
        admin,
        astro,
        client,
        stranger,
        other,
    } = astro_world(|_| {}).await;
    let t_client = s.token_for(client);
    let t_stranger = s.token_for(stranger);
    let t_astro = s.token_for(astro);

    // A user who never consulted the astrologer: refused on REST and sockets.
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"userId": astro}),
            Some(&t_stranger),
        )
        .await;
    not_allowed(st, &body);
    let (st, body) = s
        .post(
            "/api/calls/initiate",
            json!({"calleeId": astro}),
            Some(&t_stranger),
        )
        .await;
    not_allowed(st, &body);
    let mut cs = connect(&s, stranger).await;
    ws_not_allowed(
        cs.request(
            "message:send",
            json!({"recipientId": astro, "content": "hello?"}),
        )
        .await,
    );
    ws_not_allowed(
        cs.request("call:initiate", json!({"calleeId": astro}))
            .await,
    );
    // Users never reach other users.
    ws_not_allowed(
        cs.request("message:send", json!({"to": other, "content": "hey"}))
            .await,
    );
    assert!(!direct_exists(&s, stranger, astro));
    assert!(!direct_exists(&s, stranger, other));
    assert_eq!(call_count(&s), 0);

    // The consulted astrologer is reachable by her client, on REST and sockets.
    let (st, body) = s
        .post(
            "/messages",
            json!({"to": astro, "text": "about my chart"}),
            Some(&t_client),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let mut cc = connect(&s, client).await;
    socket_call(&mut cc, astro).await;

    // The astrologer reaches her own client but not a user she has no link with.
    let mut ca = connect(&s, astro).await;
    ca.request(
        "message:send",
        json!({"to": client, "content": "your reading"}),
    )
    .await
    .unwrap();
    let (st, body) = s
        .post(
            "/api/calls/initiate",
            json!({"to": stranger}),
            Some(&t_astro),
        )
        .await;
    not_allowed(st, &body);
    // Staff and users alike reach admins; admins reach anyone.
    ca.request("conversation:open", json!({"userId": admin}))
        .await
        .unwrap();
    cs.request("conversation:open", json!({"userId": admin}))
        .await
        .unwrap();
    rest_call(&s, &s.token_for(admin), stranger).await;
    let mut cadm = connect(&s, admin).await;
    cadm.request("message:send", json!({"to": other, "content": "welcome"}))
        .await
        .unwrap();
    assert!(!direct_exists(&s, astro, stranger));
}

#[actix_web::test]
async fn roles_policy_links_only_through_the_configured_context_types() {
    let Astro {
        s,
        admin,
        astro,
        client,
        stranger,
        ..
    } = astro_world(|c| {
        c.contact_rules = "admin>*,*>astrologer:linked".parse().unwrap();
        c.contact_link_contexts = switchboard::config::List(vec!["consultation".into()]);
    })
    .await;
    // The stranger shares only a general-purpose group with the astrologer: not a link.
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Chit-chat", "members": [astro, stranger],
                   "contextType": "general"}),
            Some(&s.token_for(admin)),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"userId": astro}),
            Some(&s.token_for(stranger)),
        )
        .await;
    not_allowed(st, &body);
    // The consultation links the client.
    let (st, body) = s
        .post(
            "/api/conversations",
            json!({"userId": astro}),
            Some(&s.token_for(client)),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    // Without an `astrologer>…` rule the astrologer may not start contact herself.
    let (st, body) = s
        .post(
            "/api/calls/initiate",
            json!({"to": stranger}),
            Some(&s.token_for(astro)),
        )
        .await;
    not_allowed(st, &body);
}

/// Starts a call to `to` as a one-callee group call (no call log, so no direct conversation is
/// opened that would allow the pair from then on) and hangs it up again.
async fn group_call(c: &mut WsClient, to: i64) {
    let ack = c
        .request(
            "call:initiate",
            json!({"memberIds": [to], "callType": "audio"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["status"], "ringing", "{ack}");
    c.request("call:end", json!({"callId": ack["callId"]}))
        .await
        .unwrap();
    c.expect_event("call:ended").await;
}

#[actix_web::test]
async fn cached_call_decisions_follow_every_change_at_once() {
    // A long TTL: every change below must be seen through invalidation, not expiry.
    let s = server(ContactPolicy::Request, |c| {
        c.contact_cache_ttl = std::time::Duration::from_secs(3600);
    })
    .await;
    let alice = user_with_phone(&s, "Alice", "+14155550301", &[]);
    let bob = user_with_phone(&s, "Bob", "+14155550302", &[]);
    let carol = user_with_phone(&s, "Carol", "+14155550303", &[]);
    let dave = user_with_phone(&s, "Dave", "+14155550304", &[]);
    let erin = user_with_phone(&s, "Erin", "+14155550305", &[]);
    let admin = user_with_phone(&s, "Admin", "+14155550306", &["admin"]);
    let (ta, tb, t_admin) = (s.token_for(alice), s.token_for(bob), s.token_for(admin));
    let mut ca = connect(&s, alice).await;

    // A refusal (asked twice, so the second comes from the cache), then an accepted chat
    // request: the same call is allowed at once.
    ws_not_allowed(ca.request("call:initiate", json!({"to": bob})).await);
    ws_not_allowed(ca.request("call:initiate", json!({"to": bob})).await);
    let (st, req) = s
        .post("/chat-requests", json!({"to": bob}), Some(&ta))
        .await;
    assert_eq!(st, 201, "{req}");
    let id = req["request"]["id"].as_str().unwrap();
    let (st, body) = s
        .post(&format!("/chat-requests/{id}/accept"), json!({}), Some(&tb))
        .await;
    assert_eq!(st, 200, "{body}");
    socket_call(&mut ca, bob).await;

    // Contacts sync.
    ws_not_allowed(ca.request("call:initiate", json!({"to": carol})).await);
    let (st, body) = s
        .post(
            "/contacts/sync",
            json!({"phones": ["+14155550303"]}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    group_call(&mut ca, carol).await;

    // Roles: Dave made an admin may be called; no longer an admin, he may not.
    ws_not_allowed(ca.request("call:initiate", json!({"to": dave})).await);
    let roles = |r: Value| {
        let s = &s;
        let t = t_admin.clone();
        async move {
            let (st, body) = s
                .call(
                    "PUT",
                    &format!("/api/admin/users/{dave}/roles"),
                    Some(json!({ "roles": r })),
                    Some(&t),
                )
                .await;
            assert_eq!(st, 200, "{body}");
        }
    };
    roles(json!(["admin"])).await;
    group_call(&mut ca, dave).await;
    roles(json!([])).await;
    ws_not_allowed(ca.request("call:initiate", json!({"to": dave})).await);

    // Conversation membership: a group shared with Erin allows her; removed from it, she is a
    // stranger again.
    ws_not_allowed(ca.request("call:initiate", json!({"to": erin})).await);
    let (st, group) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Club", "members": [alice, erin]}),
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 201, "{group}");
    let group = group["conversation"]["id"]
        .as_str()
        .or(group["id"].as_str())
        .unwrap()
        .to_owned();
    group_call(&mut ca, erin).await;
    let (st, body) = s
        .call(
            "DELETE",
            &format!("/api/conversations/{group}/members/{erin}"),
            None,
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    ws_not_allowed(ca.request("call:initiate", json!({"to": erin})).await);

    // A ban: Bob, allowed and cached, is not callable from the moment the ban returns; unbanned,
    // he is again.
    group_call(&mut ca, bob).await;
    let (st, body) = s
        .post(
            &format!("/api/admin/users/{bob}/ban"),
            json!({}),
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let err = ca
        .request("call:initiate", json!({"to": bob}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "not_found", "{err}");
    let err = ca
        .request("call:initiate", json!({"memberIds": [bob]}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "not_found", "{err}");
    let (st, body) = s
        .post(
            &format!("/api/admin/users/{bob}/unban"),
            json!({}),
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    group_call(&mut ca, bob).await;
}

async fn conv_call(c: &mut WsClient, group: &str) -> Result<Value, Value> {
    c.request(
        "call:initiate",
        json!({"conversationId": group, "callType": "audio"}),
    )
    .await
}

#[actix_web::test]
async fn a_banned_member_of_a_group_conversation_is_not_rung_through_the_cache() {
    let s = server(ContactPolicy::Open, |c| {
        c.contact_cache_ttl = std::time::Duration::from_secs(3600);
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let t_admin = s.token_for(admin);
    let (st, group) = s
        .post(
            "/api/conversations",
            json!({"type": "group", "title": "Trio", "members": [bob, carol]}),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!(st, 201, "{group}");
    let group = group["conversation"]["id"]
        .as_str()
        .or(group["id"].as_str())
        .unwrap()
        .to_owned();
    let mut ca = connect(&s, alice).await;
    // Members and their standing are cached by the first call.
    let ack = conv_call(&mut ca, &group).await.unwrap();
    ca.request("call:end", json!({"callId": ack["callId"]}))
        .await
        .unwrap();
    ca.expect_event("call:ended").await;
    // Removing Carol changes who is rung; banning Bob makes the call `not_found` at once.
    let (st, body) = s
        .call(
            "DELETE",
            &format!("/api/conversations/{group}/members/{carol}"),
            None,
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let ack = conv_call(&mut ca, &group).await.unwrap();
    let id = ack["callId"].as_str().unwrap().to_owned();
    ca.request("call:end", json!({"callId": id})).await.unwrap();
    ca.expect_event("call:ended").await;
    let mut parties: Vec<i64> = Vec::new();
    for _ in 0..100 {
        parties = call_participants::table
            .filter(call_participants::call_id.eq(&id))
            .select(call_participants::user_id)
            .order(call_participants::user_id)
            .load(&mut s.db.conn())
            .unwrap();
        if !parties.is_empty() {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        parties,
        vec![alice, bob],
        "Carol was removed and is not rung"
    );
    let (st, body) = s
        .post(
            &format!("/api/admin/users/{bob}/ban"),
            json!({}),
            Some(&t_admin),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let err = conv_call(&mut ca, &group).await.unwrap_err();
    assert_eq!(err["code"], "not_found", "{err}");
}
