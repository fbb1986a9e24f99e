//! Socket.IO at `/socket.io/` driven by the official `socket.io-client` (npm, installed in
//! tests/clients by scripts/test.sh): WebSocket-only, polling-only and polling→WebSocket
//! upgrade; acks; a binary payload; a bad token → connect_error; and a conversation between a
//! Socket.IO client and a plain `/ws` client through the same engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestServer, WsClient};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("node output")
        .expect("node output")
}

#[actix_web::test]
async fn socket_io_client_talks_to_the_engine_over_every_transport() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/clients (scripts/test.sh does)"
    );
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv =
        switchboard::db::conversations::create_group(&mut s.db.conn(), alice, "g", &[bob], None)
            .unwrap()
            .id;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    b.request("ping", json!({})).await.unwrap();

    let scenario = json!({
        "url": format!("http://{}", s.addr()),
        "token": s.token_for(alice),
        "badToken": "not-a-token",
        "conversationId": conv.to_string(),
    });
    let mut child = Command::new("node")
        .arg("sio-flow.js")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scenario.to_string().as_bytes())
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let first = next(&mut rx).await;
    assert_eq!(first["stage"], "sent", "{first}");
    // Alice's Socket.IO send reached Bob's plain WebSocket.
    let got = b.expect_event("message:new").await;
    assert_eq!(
        (got["content"].as_str(), got["senderId"].as_str()),
        (Some("from socket.io"), Some(alice.to_string().as_str()))
    );
    // Bob answers over /ws; Alice's Socket.IO client receives it.
    b.request(
        "message:send",
        json!({"conversationId": conv.to_string(), "content": "from ws"}),
    )
    .await
    .unwrap();

    let out = next(&mut rx).await;
    assert!(out.get("error").is_none(), "{out}");
    assert_eq!(out["websocketTransport"], "websocket");
    assert_eq!(out["sendAck"]["seq"], 1);
    assert_eq!(out["sendAck"]["clientMessageId"], "sio-1");
    assert_eq!(out["badPayloadAck"]["error"]["code"], "invalid_payload");
    assert!(
        out["binaryAck"]["pong"].is_string(),
        "binary attachment accepted: {out}"
    );
    assert_eq!(out["incoming"]["content"], "from ws");
    assert_eq!(out["pollingTransport"], "polling");
    assert!(out["pollingAck"]["pong"].is_string());
    assert_eq!(out["upgradedTransport"], "websocket");
    assert!(out["upgradedAck"]["pong"].is_string());
    assert_eq!(out["badToken"], "Unauthorized");
    assert!(child.wait().unwrap().success());
}
