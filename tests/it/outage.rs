//! PostgreSQL going away under a running server: every connection to it is cut and new ones are
//! refused (a TCP relay in front of the real server stops relaying). Sends fail with
//! `unavailable` — never a false ack — the engine and the sockets stay up, and once the
//! database is reachable again sends work with nothing acknowledged lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestDb, TestServer, WsClient};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A relay to PostgreSQL that can drop every connection and refuse new ones.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let pipes: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (d, p) = (Arc::clone(&down), Arc::clone(&pipes));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                p.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, down, pipes }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn upstream_of(url: &str) -> (SocketAddr, String) {
    // postgres://user@host:port/db
    let rest = url.split_once("://").unwrap().1;
    let (auth_host, db) = rest.split_once('/').unwrap();
    let db = db.split_once('?').map_or(db, |(d, _)| d);
    let host_port = auth_host.rsplit_once('@').map_or(auth_host, |(_, h)| h);
    let addr: SocketAddr = host_port.replace("localhost", "127.0.0.1").parse().unwrap();
    let user = auth_host.rsplit_once('@').map_or("postgres", |(u, _)| u);
    (addr, format!("{user}|{db}"))
}

#[actix_web::test]
async fn sends_fail_with_unavailable_during_an_outage_and_recover_without_losing_acks() {
    let db = TestDb::migrated();
    let (upstream, user_db) = upstream_of(&db.url);
    let (user, dbname) = user_db.split_once('|').unwrap();
    let relay = Relay::start(upstream).await;
    let relayed = format!("postgres://{user}@{}/{dbname}?sslmode=disable", relay.addr);
    let s = TestServer::start_on(db, |c| {
        c.database_url = switchboard::config::Secret::new(relayed);
        c.db_acquire_timeout = Duration::from_millis(800);
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = {
        let mut conn = s.db.conn();
        switchboard::db::conversations::create_group(&mut conn, alice, "g", &[bob], None)
            .unwrap()
            .id
            .to_string()
    };
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let mut acked: Vec<String> = Vec::new();
    for i in 0..5 {
        let ack = a.request("message:send", json!({"conversationId": conv, "content": format!("before {i}"), "clientMessageId": format!("b{i}")})).await.unwrap();
        acked.push(ack["id"].as_str().unwrap().to_owned());
    }

    relay.cut();
    let mut refused = 0;
    for i in 0..5 {
        match a.request("message:send", json!({"conversationId": conv, "content": format!("during {i}"), "clientMessageId": format!("d{i}")})).await {
            Ok(ack) => acked.push(ack["id"].as_str().unwrap().to_owned()),
            Err(e) => {
                assert_eq!(e["code"], "unavailable", "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 5, "no acks while the database is unreachable");
    let (status, _) = s.get("/health", None).await;
    assert_eq!(status, 503);
    // The engine keeps running: signaling that needs no database still works.
    a.request("ping", json!({})).await.unwrap();
    b.request("typing:start", json!({"conversationId": conv}))
        .await
        .unwrap();
    assert_eq!(
        a.expect_event("typing:start").await["userId"],
        bob.to_string()
    );

    relay.restore();
    let started = Instant::now();
    let recovered = loop {
        match a
            .request(
                "message:send",
                json!({"conversationId": conv, "content": "after", "clientMessageId": "after-1"}),
            )
            .await
        {
            Ok(ack) => break ack,
            Err(e) => {
                assert_eq!(e["code"], "unavailable");
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "did not recover: {e}"
                );
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    acked.push(recovered["id"].as_str().unwrap().to_owned());
    // Retries of sends refused during the outage now succeed exactly once.
    for i in 0..5 {
        let ack = a.request("message:send", json!({"conversationId": conv, "content": format!("during {i}"), "clientMessageId": format!("d{i}")})).await.unwrap();
        acked.push(ack["id"].as_str().unwrap().to_owned());
    }

    use diesel::prelude::*;
    use switchboard::db::schema::messages;
    let mut conn = s.db.conn();
    let stored: Vec<i64> = messages::table
        .select(messages::id)
        .order(messages::seq)
        .load(&mut conn)
        .unwrap();
    for id in &acked {
        assert!(
            stored.contains(&id.parse::<i64>().unwrap()),
            "acked message {id} is in the database"
        );
    }
    let seqs: Vec<i64> = messages::table
        .select(messages::seq)
        .order(messages::seq)
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "seq stays gap-free across the outage"
    );
    assert_eq!(stored.len(), 11);
}
