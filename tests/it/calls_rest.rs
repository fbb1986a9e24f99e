//! Calls over REST and the TURN credentials they hand out: ICE servers, TURN REST credentials
//! accepted by a real coturn (`turnserver` from Debian's `coturn`), REST initiate/end ringing real
//! sockets, history and admin stats.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchboard::config::{List, Secret};

const TURN_SECRET: &str = "turn-test-secret-0123456789";

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    // The TCP side must be free as well.
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(|_| port)
        .unwrap_or_else(|_| free_port())
}

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_coturn(port: u16) -> Coturn {
    let dir = std::env::temp_dir().join(format!("sb-coturn-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
        ])
        .arg(format!("--listening-port={port}"))
        .args([
            "--use-auth-secret",
            &format!("--static-auth-secret={TURN_SECRET}"),
            "--realm=switchboard.test",
        ])
        .args([
            "--min-port=51000",
            "--max-port=51999",
            "--allow-loopback-peers",
            "--log-file=stdout",
        ])
        .arg(format!("--pidfile={}", dir.join("pid").display()))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "turnserver (Debian package `coturn`) must be installed: scripts/test.sh installs it",
        );
    std::thread::sleep(Duration::from_millis(800));
    Coturn(child)
}

/// Allocates a relay and exchanges a few packets through it; true when coturn accepted the
/// credentials.
fn turn_allocation_works(port: u16, user: &str, password: &str) -> bool {
    Command::new("turnutils_uclient")
        .args([
            "-u",
            user,
            "-w",
            password,
            "-p",
            &port.to_string(),
            "-n",
            "2",
            "-m",
            "1",
            "-y",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("turnutils_uclient (Debian package `coturn`)")
        .success()
}

#[actix_web::test]
async fn coturn_accepts_our_credentials_and_refuses_wrong_or_expired_ones() {
    let port = free_port();
    let _turn = start_coturn(port);
    let s = TestServer::start_with(|c| {
        c.turn_urls = List(vec![format!("turn:127.0.0.1:{port}?transport=udp")]);
        c.turn_secret = Secret::new(TURN_SECRET);
        c.turn_ttl = Duration::from_secs(3600);
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let token = s.token_for(alice);
    let (status, cred) = s
        .post(
            "/api/turn-credentials",
            json!({"ttl": 999_999}),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{cred}");
    assert!(
        cred["ttl"].as_u64().unwrap() <= 3600,
        "ttl capped by TURN_TTL_SECS"
    );
    let user = cred["username"].as_str().unwrap().to_owned();
    assert!(user.ends_with(&format!(":{alice}")));
    let password = cred["credential"].as_str().unwrap().to_owned();

    let ok = actix_web::rt::task::spawn_blocking({
        let (u, p) = (user.clone(), password.clone());
        move || turn_allocation_works(port, &u, &p)
    });
    assert!(ok.await.unwrap(), "coturn accepts API credentials");
    let wrong = actix_web::rt::task::spawn_blocking({
        let u = user.clone();
        move || turn_allocation_works(port, &u, "d3JvbmcgcGFzc3dvcmQ=")
    });
    assert!(!wrong.await.unwrap(), "coturn refuses a wrong password");
    let expired = switchboard::realtime::call::ice::turn_credential(
        TURN_SECRET,
        &alice.to_string(),
        chrono::Utc::now().timestamp() - 60,
    );
    let stale = actix_web::rt::task::spawn_blocking(move || {
        turn_allocation_works(port, &expired.username, &expired.password)
    });
    assert!(
        !stale.await.unwrap(),
        "coturn refuses an expired credential"
    );

    // The ICE server list carries the same kind of credential.
    let (_, ice) = s.get("/api/ice-servers", Some(&token)).await;
    let turn = ice["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["username"].is_string())
        .unwrap()
        .clone();
    let (u, p) = (
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    );
    assert!(
        actix_web::rt::task::spawn_blocking(move || turn_allocation_works(port, &u, &p))
            .await
            .unwrap()
    );
}

#[actix_web::test]
async fn ice_servers_are_issued_for_the_callers_own_user_unless_admin() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let (status, body) = s
        .get(
            &format!("/api/ice-servers/{alice}"),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert_eq!(
        body["iceServers"][0]["urls"],
        "stun:stun.l.google.com:19302"
    );
    let (status, body) = s
        .get(
            &format!("/api/ice-servers/{admin}"),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, _) = s
        .get(
            &format!("/api/ice-servers/{alice}"),
            Some(&s.token_for(admin)),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post(
            "/api/turn-credentials",
            json!({}),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "turn_not_configured"));
}

#[actix_web::test]
async fn rest_initiate_rings_sockets_and_history_and_stats_report_it() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let (ta, tb) = (s.token_for(alice), s.token_for(bob));
    let mut b = WsClient::connect(&s, &tb).await;
    b.request("ping", json!({})).await.unwrap();

    let (status, body) = s
        .post(
            "/api/calls/initiate",
            json!({"calleeId": bob.to_string(), "callType": "video"}),
            Some(&ta),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["callId"].as_str().unwrap().to_owned();
    let incoming = b.expect_event("call:incoming").await;
    assert_eq!(
        (incoming["callId"].as_str(), incoming["callType"].as_str()),
        (Some(id.as_str()), Some("video"))
    );

    let (status, _) = s
        .post(&format!("/api/calls/{id}/end"), json!({}), Some(&ta))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        b.expect_event("call:cancelled").await["callId"],
        id.as_str()
    );

    let mut found = false;
    for _ in 0..50 {
        let (_, hist) = s.get("/api/calls/history?limit=5", Some(&tb)).await;
        if hist["calls"][0]["status"] == "cancelled" {
            assert_eq!(hist["calls"][0]["callId"], id.as_str());
            found = true;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "history shows the cancelled call");

    let (status, _) = s.get("/api/admin/calls/stats", Some(&ta)).await;
    assert_eq!(status, 403);
    let (status, stats) = s
        .get("/api/admin/calls/stats", Some(&s.token_for(admin)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(stats["success"], true);
    // The stats describe calls in progress (seed_001.rs); this one is over.
    assert_eq!(stats["stats"]["totalCalls"], 0);
    assert_eq!(stats["stats"]["calls"], json!([]));

    let (status, body) = s.post("/api/calls/nope/end", json!({}), Some(&ta)).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[actix_web::test]
async fn agora_calls_carry_channel_and_per_participant_tokens() {
    let s = TestServer::start_with(|c| {
        c.agora_app_id = "970CA35de60c44645bbae8a215061b33".into();
        c.agora_app_certificate = Secret::new("5CFd2fd1755d40ecb72977518be15d3b");
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let admin = s.create_user("Admin", "admin@example.com", None, &["admin"]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    b.request("ping", json!({})).await.unwrap();
    let ack = a
        .request(
            "call:initiate",
            json!({"to": bob, "provider": "agora", "callType": "video"}),
        )
        .await
        .unwrap();
    let channel = ack["channelName"].as_str().unwrap().to_owned();
    assert_eq!(channel, ack["callId"].as_str().unwrap());
    assert!(ack["agoraToken"].as_str().unwrap().starts_with("007"));
    assert_eq!(ack["agora"]["uid"], alice);
    let incoming = b.expect_event("call:incoming").await;
    assert_eq!(incoming["channelName"], channel.as_str());
    let callee_token = incoming["agoraToken"].as_str().unwrap();
    assert!(callee_token.starts_with("007"));
    assert_ne!(
        callee_token,
        ack["agoraToken"].as_str().unwrap(),
        "tokens are per participant"
    );

    let (status, _) = s
        .post(
            "/api/calls/admin/token",
            json!({"channelName": "support-1"}),
            Some(&s.token_for(alice)),
        )
        .await;
    assert_eq!(status, 403);
    let (status, tok) = s
        .post(
            "/api/calls/admin/token",
            json!({"channelName": "support-1", "uid": 42}),
            Some(&s.token_for(admin)),
        )
        .await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(
        (tok["channelName"].as_str(), tok["uid"].as_u64()),
        (Some("support-1"), Some(42))
    );
    assert!(tok["token"].as_str().unwrap().starts_with("007"));

    let plain = TestServer::start().await;
    let u = plain.create_user("U", "u@example.com", None, &[]);
    let v = plain.create_user("V", "v@example.com", None, &[]);
    let mut c = WsClient::connect(&plain, &plain.token_for(u)).await;
    let err = c
        .request("call:initiate", json!({"to": v, "provider": "agora"}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "provider_not_available");
}
