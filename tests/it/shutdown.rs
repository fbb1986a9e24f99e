//! Graceful shutdown of the real binary: under message load over `/ws` and with a call in
//! progress, SIGTERM must leave every acknowledged message in the database, end the call as
//! `server_shutdown` (the parties are told), close every socket with 1001, write the closed
//! sessions' last-seen times and exit 0 within `SHUTDOWN_TIMEOUT_SECS`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestDb, WsClient, SECRET};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard::auth::tokens::TokenKeys;

const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// The server binary running as a child process; killed if the test fails early.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn spawn_server(db: &TestDb) -> Server {
    let addr = free_addr();
    let log = std::env::temp_dir().join(format!(
        "sb-shutdown-{}-{}.log",
        std::process::id(),
        addr.port()
    ));
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", SECRET)
        .env("BIND", addr.to_string())
        .env("SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_TIMEOUT_SECS.to_string())
        .env("MESSAGE_RATE_PER_MIN", "1000000")
        .env("MESSAGE_BURST", "100000")
        .env("FRAME_RATE_PER_SEC", "100000")
        .env("FRAME_BURST", "100000")
        .env("LOG_FORMAT", "json")
        // Last-seen times wait for the shutdown's own write rather than the periodic one.
        .env("LAST_SEEN_FLUSH_MS", "600000")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the switchboard binary");
    let server = Server { child, addr, log };
    let client = awc::Client::default();
    for _ in 0..200 {
        if let Ok(res) = client.get(format!("http://{addr}/ping")).send().await {
            if res.status().is_success() {
                return server;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the server did not come up:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
}

/// Sends messages with a window of `window` unanswered frames until the socket closes; returns
/// the ids of acknowledged messages, how many sends were refused, and the close code.
async fn pump(
    mut c: WsClient,
    conv: i64,
    tag: usize,
    window: u64,
) -> (Vec<i64>, usize, Option<u16>) {
    let mut next = 0u64;
    let mut outstanding = 0u64;
    let mut sending = true;
    let mut acked = Vec::new();
    let mut refused = 0;
    loop {
        while sending && outstanding < window {
            let frame = json!({
                "event": "message:send",
                "id": next,
                "payload": {"conversationId": conv.to_string(), "content": format!("c{tag}-{next}"), "clientMessageId": format!("c{tag}-{next}")},
            });
            if !c.try_send_text(frame.to_string()).await {
                sending = false;
                break;
            }
            next += 1;
            outstanding += 1;
        }
        let Some(frame) = c.next_frame(Duration::from_secs(20)).await else {
            break;
        };
        match frame["event"].as_str() {
            Some("ack") => {
                outstanding -= 1;
                acked.push(frame["payload"]["id"].as_str().unwrap().parse().unwrap());
            }
            Some("error") if frame["id"].is_number() => {
                outstanding -= 1;
                refused += 1;
                // The server is draining: stop sending, keep reading until it closes.
                sending = false;
            }
            _ => {}
        }
    }
    (acked, refused, c.close_code())
}

/// Reads until the socket closes; returns every event and the close code.
async fn listen(mut c: WsClient) -> (Vec<Value>, Option<u16>) {
    let mut events = Vec::new();
    while let Some(frame) = c.next_frame(Duration::from_secs(20)).await {
        events.push(frame);
    }
    (events, c.close_code())
}

/// A Socket.IO client over a raw Engine.IO WebSocket: handshake, CONNECT with the token, then
/// read until the socket closes; returns the close code.
async fn socketio_ws(
    addr: SocketAddr,
    token: String,
) -> impl std::future::Future<Output = Option<u16>> {
    use futures_util::{SinkExt, StreamExt};
    let (_, mut framed) = awc::Client::builder()
        .max_http_version(awc::http::Version::HTTP_11)
        .finish()
        .ws(format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"))
        .connect()
        .await
        .unwrap();
    let text = |f: Option<Result<awc::ws::Frame, _>>| match f {
        Some(Ok(awc::ws::Frame::Text(t))) => String::from_utf8(t.to_vec()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    };
    assert!(text(framed.next().await).starts_with('0'), "Engine.IO open");
    framed
        .send(awc::ws::Message::Text(
            format!("40{}", json!({"token": token})).into(),
        ))
        .await
        .unwrap();
    assert!(
        text(framed.next().await).starts_with("40"),
        "Socket.IO connect"
    );
    async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), framed.next()).await {
                Ok(Some(Ok(awc::ws::Frame::Close(reason)))) => {
                    return reason.map(|r| u16::from(r.code));
                }
                Ok(Some(Ok(awc::ws::Frame::Text(t)))) if t.as_ref() == b"2" => {
                    let _ = framed.send(awc::ws::Message::Text("3".into())).await;
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }
}

/// An Engine.IO polling session with a long poll waiting; returns what the poll got.
async fn polling_session(addr: SocketAddr) -> impl std::future::Future<Output = String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let url = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let open = client.get(&url).send().await.unwrap().body().await.unwrap();
    let open = String::from_utf8(open.to_vec()).unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = handshake["sid"].as_str().unwrap().to_owned();
    async move {
        let body = client
            .get(format!("{url}&sid={sid}"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

#[derive(QueryableByName)]
struct CallEnd {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    end_reason: Option<String>,
}

#[actix_web::test]
async fn sigterm_under_load_keeps_every_acked_message_ends_calls_and_closes_with_1001() {
    let db = TestDb::migrated();
    let (alice, bob, carol, conv) = {
        let mut conn = db.conn();
        let mk = |conn: &mut PgConnection, name: &str| {
            switchboard::auth::create_user(
                conn,
                name,
                None,
                Some(&format!("{}@example.com", name.to_lowercase())),
                None,
                vec![],
            )
            .unwrap()
            .id
        };
        let (a, b, c) = (
            mk(&mut conn, "Alice"),
            mk(&mut conn, "Bob"),
            mk(&mut conn, "Carol"),
        );
        let conv =
            switchboard::db::conversations::create_group(&mut conn, a, "load", &[b, c], None)
                .unwrap()
                .id;
        (a, b, c, conv)
    };
    let server = spawn_server(&db).await;
    let keys = TokenKeys::new(SECRET.as_bytes());
    let connect = |user: i64| {
        let token = keys.sign(user, None, &[], 3600).unwrap();
        let addr = server.addr;
        async move {
            WsClient::try_connect(addr, &format!("/ws?token={token}"))
                .await
                .unwrap()
        }
    };

    // A call in progress: Bob calls Carol, Carol answers.
    let mut cb = connect(bob).await;
    let mut cc = connect(carol).await;
    let ack = cb
        .request("call:initiate", json!({"to": carol.to_string()}))
        .await
        .unwrap();
    let call_id = ack["callId"].as_str().unwrap().to_owned();
    cc.expect_event("call:incoming").await;
    cc.request("call:accept", json!({"callId": call_id}))
        .await
        .unwrap();
    cb.expect_event("call:accepted").await;

    // Load: four of Alice's devices send as fast as acks come back.
    let mut senders = Vec::new();
    for tag in 0..4 {
        senders.push(pump(connect(alice).await, conv, tag, 16));
    }
    let load = futures_util::future::join_all(senders);
    let watchers = futures_util::future::join(listen(cb), listen(cc));
    // Socket.IO: one client over WebSocket, one polling session with a poll waiting.
    let sio = socketio_ws(server.addr, keys.sign(alice, None, &[], 3600).unwrap()).await;
    let poll = polling_session(server.addr).await;
    let others = futures_util::future::join(sio, poll);
    let pid = server.child.id();
    let signal = async move {
        actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        Instant::now()
    };
    let (results, (bob_side, carol_side), (sent_at, (sio_code, poll))) =
        futures_util::future::join3(load, watchers, futures_util::future::join(signal, others))
            .await;

    // The process exits 0 within the deadline.
    let mut server = server;
    let exit = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 1),
            "still running {} s after SIGTERM",
            sent_at.elapsed().as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent_at.elapsed();
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(exit.success(), "exit status {exit:?}\n{log}");
    assert!(
        took <= Duration::from_secs(SHUTDOWN_TIMEOUT_SECS),
        "took {took:?}"
    );
    assert!(log.contains("shutdown complete"), "{log}");

    // Every acknowledged message is in the database; every client saw 1001.
    let mut acked: Vec<i64> = Vec::new();
    for (ids, _refused, code) in &results {
        assert_eq!(*code, Some(1001), "sender close code");
        acked.extend(ids);
    }
    assert!(
        acked.len() >= 20,
        "only {} messages acked under load",
        acked.len()
    );
    let mut conn = db.conn();
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let stored: std::collections::HashSet<i64> = diesel::sql_query(format!(
        "SELECT id FROM messages WHERE conversation_id = {conv}"
    ))
    .load::<Id>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|r| r.id)
    .collect();
    let missing: Vec<&i64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(missing.is_empty(), "acked but not stored: {missing:?}");

    // The sockets closed by the shutdown left every user's last-seen time behind.
    #[derive(QueryableByName)]
    struct Seen {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let seen: Seen = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM users WHERE id IN ({alice}, {bob}, {carol}) \
         AND last_seen_at IS NOT NULL"
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(seen.n, 3, "last_seen_at written at shutdown\n{log}");

    // Socket.IO: the WebSocket closed with 1001, the waiting poll got a close packet.
    assert_eq!(sio_code, Some(1001), "socket.io websocket close code");
    assert!(
        poll.split('\u{1e}').any(|p| p == "1"),
        "poll answer: {poll:?}"
    );

    // The call ended as server_shutdown; both parties were told, then closed with 1001.
    let row: CallEnd = diesel::sql_query("SELECT status, end_reason FROM calls WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(&call_id)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        (row.status.as_str(), row.end_reason.as_deref()),
        ("ended", Some("server_shutdown"))
    );
    for (events, code) in [&bob_side, &carol_side] {
        let ended = events
            .iter()
            .find(|e| e["event"] == "call:ended")
            .unwrap_or_else(|| panic!("no call:ended in {events:?}"));
        assert_eq!(ended["payload"]["reason"], "server_shutdown");
        assert_eq!(*code, Some(1001));
    }
}
