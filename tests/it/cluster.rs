//! Cluster mode: two or three nodes in one process on one database and one Redis (each test
//! in a keyspace of its own). Messages, presence, kicks and membership cross nodes; a node that
//! stops beating takes its devices offline; Redis going away and coming back loses nothing
//! acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{RedisSpace, TestServer, WsClient};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn group(s: &TestServer, creator: i64, members: &[i64]) -> i64 {
    let mut conn = s.db.conn();
    switchboard::db::conversations::create_group(&mut conn, creator, "team", members, None)
        .unwrap()
        .id
}

/// Starts `names.len()` nodes on one database in `space`; waits until each sees them all.
async fn nodes(space: &RedisSpace, names: &[&str]) -> Vec<TestServer> {
    let first = TestServer::start_with(|c| space.join(c, names[0])).await;
    let mut all = vec![first];
    for name in &names[1..] {
        let node = all[0].node(|c| space.join(c, name)).await;
        all.push(node);
    }
    for node in &all {
        node.wait_for_cluster(names.len()).await;
    }
    all
}

/// Nodes `a` and `b` in `space`, both with `tweak` applied, once each sees the other.
async fn two_nodes(
    space: &RedisSpace,
    tweak: impl Fn(&mut switchboard::config::Config),
) -> (TestServer, TestServer) {
    let a = TestServer::start_with(|c| {
        space.join(c, "a");
        tweak(c);
    })
    .await;
    let b = a
        .node(|c| {
            space.join(c, "b");
            tweak(c);
        })
        .await;
    a.wait_for_cluster(2).await;
    b.wait_for_cluster(2).await;
    (a, b)
}

/// Alice and Bob in a direct conversation, Alice connected to node `a` and Bob to node `b`.
async fn pair_across(a: &TestServer, b: &TestServer) -> (i64, i64, i64, WsClient, WsClient) {
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let conv = a.direct(alice, bob);
    let mut ca = WsClient::connect(a, &a.token_for(alice)).await;
    let mut cb = WsClient::connect(b, &b.token_for(bob)).await;
    ca.request("ping", json!({})).await.unwrap();
    cb.request("ping", json!({})).await.unwrap();
    (alice, bob, conv, ca, cb)
}

#[actix_web::test]
async fn group_messages_from_every_node_reach_every_member_in_one_gap_free_order() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b", "c"]).await;
    let s = &nodes[0];
    // Two senders and one reader on each node.
    let senders: Vec<i64> = (0..6)
        .map(|i| s.create_user(&format!("S{i}"), &format!("s{i}@example.com"), None, &[]))
        .collect();
    let readers: Vec<i64> = (0..3)
        .map(|i| s.create_user(&format!("R{i}"), &format!("r{i}@example.com"), None, &[]))
        .collect();
    let mut members = senders.clone();
    members.extend(&readers);
    let conv = group(s, senders[0], &members);
    let mut watchers = Vec::new();
    for (i, r) in readers.iter().enumerate() {
        let node = &nodes[i % 3];
        let mut w = WsClient::connect(node, &node.token_for(*r)).await;
        w.request("ping", json!({})).await.unwrap();
        watchers.push(w);
    }
    let per_sender = 20;
    let mut tasks = Vec::new();
    for (i, u) in senders.iter().enumerate() {
        let node = &nodes[i % 3];
        let token = node.token_for(*u);
        let addr = node.addr();
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
    let total = i64::from(per_sender) * 6;
    assert_eq!(
        all,
        (1..=total).collect::<Vec<i64>>(),
        "seqs are unique and gap-free"
    );
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < all.len() {
            let m = w.expect_event("message:new").await;
            seen.push(m["seq"].as_i64().unwrap());
        }
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<i64>>(),
            "reader on node {i} sees every message once, in seq order"
        );
        assert!(
            w.maybe_event("message:new", Duration::from_millis(300))
                .await
                .is_none(),
            "no duplicate after the last seq"
        );
    }
    // Every node published and received.
    for node in &nodes {
        let (_, text) = node.get("/metrics", None).await;
        let text = text["text"].as_str().unwrap_or_default().to_owned();
        let value = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing"))
                .parse()
                .unwrap()
        };
        assert!(value("switchboard_cluster_published_total") > 0);
        assert!(value("switchboard_cluster_received_total") > 0);
        assert_eq!(value("switchboard_cluster_nodes"), 3);
        assert_eq!(value("switchboard_cluster_redis_up"), 1);
    }
}

#[actix_web::test]
async fn direct_messages_edits_receipts_and_typing_cross_nodes() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (_, bob, conv, mut ca, mut cb) = pair_across(a, b).await;

    cb.request("typing:start", json!({"conversationId": conv.to_string()}))
        .await
        .unwrap();
    let typing = ca.expect_event("typing:start").await;
    assert_eq!(typing["userId"], bob.to_string());

    let ack = ca
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "hello from a"}),
        )
        .await
        .unwrap();
    let got = cb.expect_event("message:new").await;
    assert_eq!(
        (got["content"].as_str(), &got["seq"]),
        (Some("hello from a"), &ack["seq"])
    );
    // Bob replies from node b; his send ends his typing indicator.
    let reply = cb
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "hi from b"}),
        )
        .await
        .unwrap();
    assert_eq!(reply["seq"], 2);
    assert_eq!(ca.expect_event("message:new").await["content"], "hi from b");
    assert_eq!(
        ca.expect_event("typing:stop").await["userId"],
        bob.to_string()
    );

    cb.request(
        "receipt:read",
        json!({"conversationId": conv.to_string(), "upTo": 1}),
    )
    .await
    .unwrap();
    let read = ca.expect_event("receipt:read").await;
    assert_eq!(
        (read["userId"].as_str(), &read["upTo"]),
        (Some(bob.to_string().as_str()), &json!(1))
    );

    ca.request(
        "message:edit",
        json!({"messageId": ack["id"], "content": "hello, edited"}),
    )
    .await
    .unwrap();
    assert_eq!(
        cb.expect_event("message:edited").await["content"],
        "hello, edited"
    );
    ca.request("message:delete", json!({"messageId": ack["id"]}))
        .await
        .unwrap();
    assert_eq!(cb.expect_event("message:deleted").await["id"], ack["id"]);
}

#[actix_web::test]
async fn presence_counts_devices_on_every_node() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let carol = a.create_user("Carol", "carol@example.com", None, &[]);
    group(a, alice, &[bob]);
    let mut ca = WsClient::connect(a, &a.token_for(alice)).await;
    ca.request("ping", json!({})).await.unwrap();

    // Bob comes online on node b: Alice on node a hears it.
    let mut b1 = WsClient::connect(b, &b.token_for(bob)).await;
    b1.request("ping", json!({})).await.unwrap();
    let p = ca.expect_event("presence").await;
    assert_eq!(
        (p["userId"].as_str(), p["online"].as_bool()),
        (Some(bob.to_string().as_str()), Some(true))
    );
    // A second device on node a; the first (on b) leaves: Bob is still online.
    let mut b2 = WsClient::connect(a, &a.token_for(bob)).await;
    b2.request("ping", json!({})).await.unwrap();
    while let Some(p) = ca.maybe_event("presence", Duration::from_millis(500)).await {
        assert_eq!(p["online"], true, "{p}");
    }
    b1.close().await;
    let mut early = Vec::new();
    while let Some(p) = ca.maybe_event("presence", Duration::from_millis(700)).await {
        early.push(p);
    }
    assert!(
        early.iter().all(|p| p["online"] == true),
        "one device still online on node a: {early:?}"
    );
    // A subscription on node b answers Bob online (device on node a) and Carol offline.
    let mut cc = WsClient::connect(b, &b.token_for(carol)).await;
    let ack = cc
        .request(
            "presence:subscribe",
            json!({"userIds": [bob.to_string(), alice.to_string()]}),
        )
        .await
        .unwrap();
    assert_eq!(ack["presence"][0]["online"], true, "{ack}");
    assert_eq!(ack["presence"][0]["devices"], 1, "{ack}");
    assert_eq!(ack["presence"][1]["online"], true, "{ack}");
    // The last device leaves: offline everywhere, with a last-seen time; Carol (node b, a
    // watcher) hears it too.
    b2.close().await;
    let p = ca.expect_event("presence").await;
    assert_eq!(
        (p["online"].as_bool(), p["devices"].as_u64()),
        (Some(false), Some(0))
    );
    assert!(p["lastSeen"].is_string());
    let p = cc.expect_event("presence").await;
    assert_eq!(
        (p["userId"].as_str(), p["online"].as_bool()),
        (Some(bob.to_string().as_str()), Some(false))
    );
}

#[actix_web::test]
async fn a_node_that_stops_beating_takes_its_devices_offline_on_the_others() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    group(a, alice, &[bob]);
    let mut ca = WsClient::connect(a, &a.token_for(alice)).await;
    ca.request("ping", json!({})).await.unwrap();
    let mut cb = WsClient::connect(b, &b.token_for(bob)).await;
    cb.request("ping", json!({})).await.unwrap();
    assert_eq!(ca.expect_event("presence").await["online"], true);

    // Node b goes silent (as if it crashed): its heartbeat expires after NODE_TTL_MS (1.5 s)
    // and node a, beating every 200 ms, takes Bob offline.
    let halted = Instant::now();
    b.running.state.engine.cluster.as_ref().unwrap().halt();
    let p = ca
        .maybe_event("presence", Duration::from_secs(5))
        .await
        .expect("Bob offline after node b died");
    assert_eq!(
        (p["userId"].as_str(), p["online"].as_bool()),
        (Some(bob.to_string().as_str()), Some(false))
    );
    let took = halted.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(3500),
        "offline after the heartbeat expired, within TTL + a heartbeat or two: {took:?}"
    );
    let health = a.wait_for_cluster(1).await;
    assert_eq!(health["cluster"]["node"], "a");
    let (_, metrics) = a.get("/metrics", None).await;
    assert!(
        metrics["text"]
            .as_str()
            .unwrap()
            .contains("switchboard_cluster_nodes_reaped_total 1"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_ban_on_one_node_closes_the_users_sockets_on_the_other() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let admin = a.create_user("Admin", "admin@example.com", None, &["admin"]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let mut on_b = WsClient::connect(b, &b.token_for(alice)).await;
    on_b.request("ping", json!({})).await.unwrap();
    let (status, body) = a
        .post(
            &format!("/api/admin/users/{alice}/ban"),
            json!({"reason": "spam"}),
            Some(&a.token_for(admin)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    while on_b.next_frame(Duration::from_secs(2)).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "socket on node b still open"
        );
    }
    let code = on_b
        .closed
        .clone()
        .flatten()
        .map(|r| u16::from(r.code))
        .expect("close frame with a code");
    assert_eq!(code, 4001);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn a_member_added_through_one_node_is_a_member_on_the_other() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let carol = a.create_user("Carol", "carol@example.com", None, &[]);
    let conv = group(a, alice, &[bob]);
    // Node b's conversation actor is running (Bob sent through it).
    let mut cb = WsClient::connect(b, &b.token_for(bob)).await;
    cb.request(
        "message:send",
        json!({"conversationId": conv.to_string(), "content": "before"}),
    )
    .await
    .unwrap();
    let mut cc = WsClient::connect(b, &b.token_for(carol)).await;
    let refused = cc
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "not yet"}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // Alice adds Carol through node a.
    let (status, body) = a
        .post(
            &format!("/api/conversations/{conv}/members"),
            json!({"userIds": [carol.to_string()]}),
            Some(&a.token_for(alice)),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let started = Instant::now();
    loop {
        match cc
            .request(
                "message:send",
                json!({"conversationId": conv.to_string(), "content": "now a member"}),
            )
            .await
        {
            Ok(ack) => {
                assert!(ack["seq"].as_i64().unwrap() >= 2);
                break;
            }
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "node b did not learn the new member: {e}"
                );
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[actix_web::test]
async fn single_node_health_says_so() {
    let s = TestServer::start().await;
    let (_, body) = s.get("/health", None).await;
    assert_eq!(body["cluster"], json!({"mode": "single"}));
    let (_, metrics) = s.get("/metrics", None).await;
    assert!(!metrics["text"]
        .as_str()
        .unwrap()
        .contains("switchboard_cluster_"));
}

async fn connect(node: &TestServer, user: i64) -> WsClient {
    let mut c = WsClient::connect(node, &node.token_for(user)).await;
    c.request("ping", json!({})).await.unwrap();
    c
}

async fn initiate(c: &mut WsClient, to: i64) -> Value {
    c.request("call:initiate", json!({"to": to.to_string()}))
        .await
        .unwrap()
}

/// Waits until the call's row has `status` (written after the events).
async fn call_settles(s: &TestServer, id: &str, status: &str) -> (String, Option<String>) {
    use diesel::prelude::*;
    use switchboard::db::schema::calls;
    for _ in 0..100 {
        let row = calls::table
            .find(id)
            .select((calls::status, calls::end_reason))
            .first::<(String, Option<String>)>(&mut s.db.conn())
            .optional()
            .unwrap();
        if let Some(row) = row.filter(|r| r.0 == status) {
            return row;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} never reached {status}");
}

#[actix_web::test]
async fn a_call_rings_devices_on_every_node_and_the_first_accept_wins() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let mut ca = connect(a, alice).await;
    let mut phone = connect(a, bob).await;
    let mut laptop = connect(b, bob).await;
    let ack = initiate(&mut ca, bob).await;
    assert_eq!(ack["status"], "ringing", "{ack}");
    let id = ack["callId"].as_str().unwrap().to_owned();
    assert_eq!(
        phone.expect_event("call:incoming").await["callId"],
        id.as_str()
    );
    assert_eq!(
        laptop.expect_event("call:incoming").await["callId"],
        id.as_str()
    );
    ca.expect_event("call:ringing").await;

    // The laptop, on the node that does not run the call, answers first.
    laptop
        .request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(
        phone.expect_event("call:answered_elsewhere").await["callId"],
        id.as_str()
    );
    ca.expect_event("call:accepted").await;
    let err = phone
        .request("call:accept", json!({"callId": id}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "invalid_call_state");

    // Signaling reaches the bound device across nodes, and only it.
    ca.request("call:offer", json!({"callId": id, "sdp": "v=0 A"}))
        .await
        .unwrap();
    assert_eq!(laptop.expect_event("call:offer").await["sdp"], "v=0 A");
    laptop
        .request("call:ice", json!({"callId": id, "candidate": "cand-b"}))
        .await
        .unwrap();
    assert_eq!(ca.expect_event("call:ice").await["candidate"], "cand-b");
    assert!(phone
        .maybe_event("call:offer", Duration::from_millis(300))
        .await
        .is_none());
    let err = phone
        .request("call:ice", json!({"callId": id, "candidate": "c"}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "invalid_call_state");

    laptop
        .request("call:end", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(ca.expect_event("call:ended").await["callId"], id.as_str());
    let (status, _) = call_settles(a, &id, "ended").await;
    assert_eq!(status, "ended");
    // Both are free again, on either node.
    let again = initiate(&mut laptop, alice).await;
    assert_eq!(again["status"], "ringing", "{again}");
}

#[actix_web::test]
async fn busy_and_glare_are_decided_across_nodes() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let carol = a.create_user("Carol", "carol@example.com", None, &[]);
    let mut ca = connect(a, alice).await;
    let mut cb = connect(b, bob).await;
    let mut cc = connect(b, carol).await;

    // Alice (node a) and Bob (node b) are in a call; Carol, on Bob's node, finds him busy.
    let id = initiate(&mut ca, bob).await["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    let ack = initiate(&mut cc, bob).await;
    assert_eq!(ack["status"], "busy", "{ack}");
    assert_eq!(cc.expect_event("call:busy").await["callId"], ack["callId"]);
    // Bob, in a call run by node a, cannot start another on node b.
    let err = cb
        .request("call:initiate", json!({"to": carol.to_string()}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "busy", "{err}");
    ca.request("call:end", json!({"callId": id})).await.unwrap();
    cb.expect_event("call:ended").await;
    call_settles(a, &id, "ended").await;

    // Glare across nodes: Carol (node b, higher id) calls Alice (node a), then Alice calls
    // Carol: Alice's call wins, both learn it, Carol's call ends.
    let carol_call = initiate(&mut cc, alice).await["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    ca.expect_event("call:incoming").await;
    let ack = initiate(&mut ca, carol).await;
    assert_eq!(ack["status"], "glare", "{ack}");
    let winner = ack["callId"].as_str().unwrap().to_owned();
    assert_ne!(winner, carol_call);
    assert_eq!(
        ca.expect_event("call:glare").await["callId"],
        winner.as_str()
    );
    assert_eq!(
        cc.expect_event("call:glare").await["callId"],
        winner.as_str()
    );
    assert_eq!(
        cc.expect_event("call:incoming").await["callId"],
        winner.as_str()
    );
    cc.request("call:accept", json!({"callId": winner}))
        .await
        .unwrap();
    ca.expect_event("call:accepted").await;
    let (_, reason) = call_settles(b, &carol_call, "cancelled").await;
    assert_eq!(reason.as_deref(), Some("glare"));
    ca.request("call:end", json!({"callId": winner}))
        .await
        .unwrap();
    call_settles(a, &winner, "ended").await;

    // The other order: the lower id's existing call stands.
    let alice_call = initiate(&mut ca, carol).await["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cc.expect_event("call:incoming").await;
    let ack = initiate(&mut cc, alice).await;
    assert_eq!(
        (ack["status"].as_str(), ack["callId"].as_str()),
        (Some("glare"), Some(alice_call.as_str())),
        "{ack}"
    );
}

#[actix_web::test]
async fn a_party_that_drops_can_rejoin_through_the_other_node_within_the_grace() {
    let space = RedisSpace::new();
    let a = TestServer::start_with(|c| {
        space.join(c, "a");
        c.call_reconnect_grace = Duration::from_secs(3);
    })
    .await;
    let b = a
        .node(|c| {
            space.join(c, "b");
            c.call_reconnect_grace = Duration::from_secs(3);
        })
        .await;
    a.wait_for_cluster(2).await;
    b.wait_for_cluster(2).await;
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let mut ca = connect(&a, alice).await;
    // Bob answers on node b; the call runs on node a.
    let mut cb = connect(&b, bob).await;
    let id = initiate(&mut ca, bob).await["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    ca.expect_event("call:accepted").await;
    // His device on node b drops: node a's call hears of it.
    cb.close().await;
    assert_eq!(
        ca.expect_event("call:peer_reconnecting").await["userId"],
        bob.to_string()
    );
    // He comes back through node a this time.
    let mut cb2 = connect(&a, bob).await;
    cb2.request("call:rejoin", json!({"callId": id}))
        .await
        .unwrap();
    assert_eq!(
        ca.expect_event("call:peer_rejoined").await["userId"],
        bob.to_string()
    );
    ca.request("call:ice", json!({"callId": id, "candidate": "restart"}))
        .await
        .unwrap();
    assert_eq!(cb2.expect_event("call:ice").await["candidate"], "restart");
    // And once more through node b, then nobody comes back: network_error.
    cb2.close().await;
    ca.expect_event("call:peer_reconnecting").await;
    let mut cb3 = connect(&b, bob).await;
    cb3.request("call:rejoin", json!({"callId": id}))
        .await
        .unwrap();
    ca.expect_event("call:peer_rejoined").await;
    ca.request("call:offer", json!({"callId": id, "sdp": "again"}))
        .await
        .unwrap();
    assert_eq!(cb3.expect_event("call:offer").await["sdp"], "again");
    cb3.close().await;
    ca.expect_event("call:peer_reconnecting").await;
    let ended = ca.expect_event("call:ended").await;
    assert_eq!(ended["reason"], "network_error");
    let (_, reason) = call_settles(&a, &id, "ended").await;
    assert_eq!(reason.as_deref(), Some("network_error"));
}

#[actix_web::test]
async fn the_calls_of_a_dead_node_end_for_the_survivors_and_their_records_close() {
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let mut ca = connect(a, alice).await;
    let mut cb = connect(b, bob).await;
    let id = initiate(&mut ca, bob).await["callId"]
        .as_str()
        .unwrap()
        .to_owned();
    cb.expect_event("call:incoming").await;
    cb.request("call:accept", json!({"callId": id}))
        .await
        .unwrap();
    ca.expect_event("call:accepted").await;
    // Node a, which runs the call, dies.
    let died = Instant::now();
    a.running.state.engine.cluster.as_ref().unwrap().halt();
    let ended = cb
        .maybe_event("call:ended", Duration::from_secs(6))
        .await
        .expect("the survivor hears the call ended");
    assert_eq!(
        (ended["callId"].as_str(), ended["reason"].as_str()),
        (Some(id.as_str()), Some("network_error"))
    );
    assert!(
        died.elapsed() < Duration::from_millis(3500),
        "{:?}",
        died.elapsed()
    );
    let (_, reason) = call_settles(b, &id, "ended").await;
    assert_eq!(reason.as_deref(), Some("network_error"));
    // Bob is free: he can call someone else through node b.
    let carol = b.create_user("Carol", "carol@example.com", None, &[]);
    let mut cc = connect(b, carol).await;
    let ack = initiate(&mut cb, carol).await;
    assert_eq!(ack["status"], "ringing", "{ack}");
    cc.expect_event("call:incoming").await;
}

/// Alice and Bob in a direct conversation, Alice connected to both nodes (`a` first).
async fn alice_on_both(a: &TestServer, b: &TestServer) -> (i64, i64, i64, WsClient, WsClient) {
    let alice = a.create_user("Alice", "alice@example.com", None, &[]);
    let bob = a.create_user("Bob", "bob@example.com", None, &[]);
    let conv = a.direct(alice, bob);
    let on_a = connect(a, alice).await;
    let on_b = connect(b, alice).await;
    (alice, bob, conv, on_a, on_b)
}

#[actix_web::test]
async fn message_and_call_rate_limits_hold_across_nodes() {
    let space = RedisSpace::new();
    let (a, b) = two_nodes(&space, |c| {
        c.message_rate_per_min = 60;
        c.message_burst = 5;
        c.call_rate_per_hour = 60;
        c.call_burst = 2;
    })
    .await;
    let (_, bob, conv, mut on_a, mut on_b) = alice_on_both(&a, &b).await;
    // A burst of 5 in all, whichever node the sends come through.
    let send = |n: usize| json!({"conversationId": conv.to_string(), "content": format!("m{n}")});
    for n in 0..3 {
        on_a.request("message:send", send(n)).await.unwrap();
    }
    for n in 3..5 {
        on_b.request("message:send", send(n)).await.unwrap();
    }
    let err = on_b.request("message:send", send(5)).await.unwrap_err();
    assert_eq!(err["code"], "rate_limited", "{err}");
    let err = on_a.request("message:send", send(6)).await.unwrap_err();
    assert_eq!(err["code"], "rate_limited", "{err}");

    // Calls: a burst of 2 across both nodes.
    let mut cb = connect(&a, bob).await;
    for c in [&mut on_a, &mut on_b] {
        let id = initiate(c, bob).await["callId"]
            .as_str()
            .unwrap()
            .to_owned();
        cb.expect_event("call:incoming").await;
        c.request("call:end", json!({"callId": id})).await.unwrap();
        cb.expect_event("call:cancelled").await;
    }
    let err = on_a
        .request("call:initiate", json!({"to": bob.to_string()}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "rate_limited", "{err}");
}

#[test]
fn nodes_starting_at_once_on_a_new_database_take_turns_at_the_migrations() {
    use diesel::Connection;
    let db = common::TestDb::empty();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let mut conn = diesel::PgConnection::establish(&url).unwrap();
                switchboard::db::run_migrations(&mut conn)
            })
        })
        .collect();
    let applied: Vec<Vec<String>> = runs
        .into_iter()
        .map(|r| r.join().unwrap().expect("migrations run"))
        .collect();
    // One node applied them all; the others found nothing left to do.
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "{applied:?}"
    );
}

/// Once the nodes know each other, each node's frames go to the other's inbox only: no node
/// receives its own, and the shared bus carries nothing but hellos (frames without a body).
#[actix_web::test]
async fn frames_go_to_the_other_nodes_inbox_and_the_shared_bus_carries_only_hellos() {
    use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
    let space = RedisSpace::new();
    let nodes = nodes(&space, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let listener =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&space.url).unwrap())
            .build_subscriber_client()
            .unwrap();
    listener.init().await.unwrap();
    let mut frames = listener.message_rx();
    listener
        .psubscribe(format!("{}:bus*", space.prefix))
        .await
        .unwrap();
    // Both nodes have said hello by now (at subscription and on every 200 ms heartbeat).
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;

    let (_, _, conv, mut ca, mut cb) = pair_across(a, b).await;
    for n in 0..5 {
        for tag in ["a", "b"] {
            let (from, to) = if tag == "a" {
                (&mut ca, &mut cb)
            } else {
                (&mut cb, &mut ca)
            };
            let content = format!("{tag}{n}");
            from.request(
                "message:send",
                json!({"conversationId": conv.to_string(), "content": content}),
            )
            .await
            .unwrap();
            assert_eq!(to.expect_event("message:new").await["content"], content);
        }
    }
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;

    let bus = format!("{}:bus", space.prefix);
    let mut hellos = 0;
    let mut bodies_to: std::collections::HashMap<String, usize> = Default::default();
    while let Ok(message) = frames.try_recv() {
        let channel = message.channel.to_string();
        let bytes = message.value.as_bytes().unwrap().to_vec();
        let text = String::from_utf8(bytes).unwrap();
        let mut lines = text.split('\n');
        let from = lines
            .next()
            .unwrap()
            .strip_prefix("sb1 ")
            .unwrap()
            .to_owned();
        let bodies = lines.filter(|l| !l.is_empty()).count();
        if channel == bus {
            assert_eq!(
                bodies, 0,
                "only hellos on the shared bus once peers are known: {text}"
            );
            hellos += 1;
        } else {
            let to = channel.strip_prefix(&format!("{bus}:")).unwrap().to_owned();
            assert_ne!(from, to, "a node never publishes to its own inbox");
            *bodies_to.entry(to).or_default() += bodies;
        }
    }
    assert!(hellos >= 2, "both nodes keep saying hello ({hellos} seen)");
    // Alice's five messages went to b's inbox, Bob's five to a's (with the rest: typing stops,
    // presence).
    assert!(
        bodies_to.get("b").copied().unwrap_or(0) >= 5,
        "{bodies_to:?}"
    );
    assert!(
        bodies_to.get("a").copied().unwrap_or(0) >= 5,
        "{bodies_to:?}"
    );
    listener.quit().await.unwrap();
}

/// Under load a node publishes at most once per `CLUSTER_PUBLISH_INTERVAL_MS`: what is queued
/// meanwhile goes out in the next Redis message, and the other node still delivers every
/// message once, in order.
#[actix_web::test]
async fn events_queued_within_the_publish_interval_go_out_together() {
    let space = RedisSpace::new();
    let (a, b) = two_nodes(&space, |c| {
        c.cluster_publish_interval = Duration::from_millis(400);
    })
    .await;
    let (_, _, conv, mut ca, mut cb) = pair_across(&a, &b).await;
    let frames = metric(&a, "switchboard_cluster_frames_published_total").await;
    let published = metric(&a, "switchboard_cluster_published_total").await;
    let sends = 12;
    let started = Instant::now();
    for n in 0..sends {
        ca.request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": format!("m{n}")}),
        )
        .await
        .unwrap();
    }
    let sending = started.elapsed();
    let mut seqs = Vec::new();
    for _ in 0..sends {
        seqs.push(
            cb.expect_event("message:new").await["seq"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(seqs, (1..=sends).collect::<Vec<i64>>());
    let frames = metric(&a, "switchboard_cluster_frames_published_total").await - frames;
    let published = metric(&a, "switchboard_cluster_published_total").await - published;
    assert!(published >= 12, "{published} events published");
    // One publish per 400 ms at most (the first may go at once), however the sends were spread.
    let most = 2 + sending.as_millis() / 400;
    assert!(
        u128::from(frames) <= most,
        "{published} events in {frames} Redis messages over {sending:?} (at most {most})"
    );
}

/// A counter or gauge of a node's `/metrics` (0 when absent).
async fn metric(s: &TestServer, name: &str) -> u64 {
    let (_, text) = s.get("/metrics", None).await;
    let text = text["text"].as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

/// Each conversation's messages are written by one node: a keyed send that reaches the other
/// node is forwarded there and acknowledged from that node's commit, and every device but the
/// sending one gets it once, in seq order. When the writing node stops answering, the
/// forwarding node writes the send itself after `CLUSTER_FORWARD_TIMEOUT_MS`, without storing
/// a second copy of what the writing node had stored under the same key, and writes the next
/// ones at once.
#[actix_web::test]
async fn a_conversation_is_written_by_one_node_and_sends_fall_back_when_it_stops_answering() {
    let space = RedisSpace::new();
    let (first, second) = two_nodes(&space, |c| {
        c.cluster_owned_writes = true;
        c.cluster_forward_timeout = Duration::from_millis(400);
    })
    .await;
    let alice = first.create_user("Alice", "alice@example.com", None, &[]);
    let bob = first.create_user("Bob", "bob@example.com", None, &[]);
    let conv = first.direct(alice, bob);
    let cluster = |s: &TestServer| Arc::clone(s.running.state.engine.cluster.as_ref().unwrap());
    let (ca, cb) = (cluster(&first), cluster(&second));
    // Each node ranks only the nodes it has heard from: wait until both have heard the other.
    let mut views = (ca.writer_of(conv), cb.writer_of(conv));
    for _ in 0..100 {
        if views.0.is_some() || views.1.is_some() {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        views = (ca.writer_of(conv), cb.writer_of(conv));
    }
    let (writer, forwarder) = match views {
        (Some(w), None) if w == cb.node() => (&second, &first),
        (None, Some(w)) if w == ca.node() => (&first, &second),
        other => panic!("the nodes disagree on who writes conversation {conv}: {other:?}"),
    };
    let mut sending = WsClient::connect(forwarder, &forwarder.token_for(alice)).await;
    let mut other_device = WsClient::connect(forwarder, &forwarder.token_for(alice)).await;
    let mut alice_on_writer = WsClient::connect(writer, &writer.token_for(alice)).await;
    let mut bob_on_writer = WsClient::connect(writer, &writer.token_for(bob)).await;
    for c in [
        &mut sending,
        &mut other_device,
        &mut alice_on_writer,
        &mut bob_on_writer,
    ] {
        c.request("ping", json!({})).await.unwrap();
    }
    let send = |n: u32| {
        json!({"conversationId": conv.to_string(), "content": format!("m{n}"),
               "clientMessageId": format!("key-{n}")})
    };
    for n in 1..=5 {
        let ack = sending.request("message:send", send(n)).await.unwrap();
        assert_eq!(ack["seq"], json!(i64::from(n)), "{ack}");
        assert_eq!(ack["clientMessageId"], json!(format!("key-{n}")), "{ack}");
    }
    assert_eq!(
        metric(forwarder, "switchboard_cluster_sends_forwarded_total").await,
        5
    );
    assert_eq!(
        metric(writer, "switchboard_cluster_sends_forwarded_total").await,
        0
    );
    for (who, c) in [
        ("the sender's other device", &mut other_device),
        ("the sender on the writing node", &mut alice_on_writer),
        ("the recipient", &mut bob_on_writer),
    ] {
        let mut seqs = Vec::new();
        while seqs.len() < 5 {
            seqs.push(c.expect_event("message:new").await["seq"].as_i64().unwrap());
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{who}");
    }
    assert!(
        sending
            .maybe_event("message:new", Duration::from_millis(300))
            .await
            .is_none(),
        "the sending device gets acks, not its own messages"
    );

    // The writing node stores key-6 from Alice's device there, then stops answering.
    let stored = alice_on_writer
        .request("message:send", send(6))
        .await
        .unwrap();
    assert_eq!(stored["seq"], json!(6), "{stored}");
    cluster(writer).halt();
    let again = sending.request("message:send", send(6)).await.unwrap();
    assert_eq!(
        (&again["id"], &again["seq"]),
        (&stored["id"], &stored["seq"]),
        "the fallback found the writing node's copy: {again}"
    );
    let next = sending.request("message:send", send(7)).await.unwrap();
    assert_eq!(next["seq"], json!(7), "{next}");
    assert_eq!(
        metric(forwarder, "switchboard_cluster_forward_fallbacks_total").await,
        1,
        "after one send without an answer the node writes its sends itself"
    );
    let mut conn = first.db.conn();
    let rows: Vec<Option<String>> = {
        use diesel::prelude::*;
        use switchboard::db::schema::messages;
        messages::table
            .filter(messages::conversation_id.eq(conv))
            .order(messages::seq.asc())
            .select(messages::client_message_id)
            .load(&mut conn)
            .unwrap()
    };
    assert_eq!(
        rows,
        (1..=7)
            .map(|n| Some(format!("key-{n}")))
            .collect::<Vec<_>>(),
        "every key stored once, in order"
    );
}

/// A user sending fast through two nodes: each node leases tokens of the user's shared bucket
/// in batches (growing while they are spent), and the two together still let through no more
/// than the burst plus what refilled meanwhile; tokens one node holds when the bucket runs dry
/// are lost to the other for at most a lease (a lease and a quarter while it renews a lease
/// ahead of need).
#[actix_web::test]
async fn leased_send_tokens_never_let_a_user_past_the_cluster_wide_limit() {
    let space = RedisSpace::new();
    let (a, b) = two_nodes(&space, |c| {
        c.message_rate_per_min = 60;
        c.message_burst = 40;
    })
    .await;
    let (_, _, conv, mut on_a, mut on_b) = alice_on_both(&a, &b).await;
    let started = Instant::now();
    let mut accepted = 0_u64;
    for n in 0..80 {
        let c = if (n / 3) % 2 == 0 {
            &mut on_a
        } else {
            &mut on_b
        };
        match c
            .request(
                "message:send",
                json!({"conversationId": conv.to_string(), "content": format!("m{n}")}),
            )
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => assert_eq!(e["code"], "rate_limited", "{e}"),
        }
    }
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        accepted <= 40 + refilled,
        "{accepted} sends let through, burst 40, {refilled} refilled"
    );
    // A lease is at most a quarter of the burst (10), and a node renewing one ahead of need
    // holds at most a quarter of it besides (2): at most 12 stranded on each node.
    assert!(accepted >= 40 - 24, "{accepted} sends let through");
}
