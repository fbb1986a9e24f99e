//! Hostile and unlucky clients at the transport level, with raw sockets and hand-made frames:
//! oversized and absurdly announced frames do not make the server buffer them (on `/ws`, on
//! Engine.IO's WebSocket and on long-polling bodies); fragmented messages are put back together;
//! a client that stops reading is cut off and its connection aborted within the close grace
//! (also when the heartbeat times out with writes stuck); upgrades over the connection ceiling
//! are refused at once while held sockets and health checks keep working.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use crate::common::{TestServer, WsClient};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client pieces

/// Opens a TCP connection (optionally with a small receive buffer) and sends an upgrade request;
/// returns the stream and the response's status line and headers.
async fn raw_upgrade(addr: SocketAddr, path: &str, rcvbuf: Option<u32>) -> (TcpStream, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        sock.set_recv_buffer_size(size).unwrap();
    }
    let mut stream = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("upgrade answered")
            .unwrap();
        assert!(n == 1, "connection closed during the upgrade: {head:?}");
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    header_len_into(&mut f, payload.len() as u64);
    let mask = [0x12, 0x34, 0x56, 0x78];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The length bytes of a masked frame announcing `len`.
fn header_len_into(f: &mut Vec<u8>, len: u64) {
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
}

/// What the server sent: text frames and the close code, if any.
#[derive(Debug, Default)]
struct Received {
    texts: Vec<String>,
    close: Option<u16>,
}

/// Reads server frames until a close frame, the end of the stream, or `wait`.
async fn read_until_close(stream: &mut TcpStream, wait: Duration) -> Received {
    let mut out = Received::default();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while let Some((opcode, payload, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            match opcode {
                0x1 => out
                    .texts
                    .push(String::from_utf8_lossy(&payload).into_owned()),
                0x8 => {
                    out.close = payload
                        .get(..2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]))
                        .or(Some(1005));
                    return out;
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads text frames until one satisfies `pred`.
async fn read_text_until(stream: &mut TcpStream, pred: impl Fn(&str) -> bool) -> String {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some((opcode, payload, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            let text = String::from_utf8_lossy(&payload).into_owned();
            if opcode == 0x1 && pred(&text) {
                return text;
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the expected frame arrives")
            .unwrap();
        assert!(n > 0, "connection closed before the expected frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One unmasked server frame from the front of `buf`: (opcode, payload, bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let (len, at) = match buf[1] & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let end = at + usize::try_from(len).ok()?;
    (buf.len() >= end).then(|| (opcode, buf[at..end].to_vec(), end))
}

/// The process's resident set (the server runs in this process).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether the kernel still has the server's end of the connection from `client`'s local port.
fn server_side_open(server: SocketAddr, client: &TcpStream) -> bool {
    let client_port = client.local_addr().unwrap().port();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
        port(cols[1]) == server.port() && port(cols[2]) == client_port
    })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

async fn metrics_text(s: &TestServer) -> String {
    let (status, body) = s.get("/metrics", None).await;
    assert_eq!(status, 200);
    body["text"].as_str().unwrap().to_owned()
}

fn group(s: &TestServer, creator: i64, members: &[i64]) -> i64 {
    let mut conn = s.db.conn();
    switchboard::db::conversations::create_group(&mut conn, creator, "team", members, None)
        .unwrap()
        .id
}

/// Opens an Engine.IO WebSocket session and reads its open packet.
async fn eio_websocket(addr: SocketAddr) -> TcpStream {
    let (mut stream, head) = raw_upgrade(addr, "/socket.io/?EIO=4&transport=websocket", None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    read_text_until(&mut stream, |t| t.starts_with("0{")).await;
    stream
}

// ---------------------------------------------------------------------------------------------
// Frame size

/// Opens `n` Engine.IO WebSockets that each send one frame announcing `announced` bytes,
/// followed by `sent` bytes of it; returns the RSS before, its highest value while they ran, and
/// the close codes.
async fn eio_flood(
    addr: SocketAddr,
    n: usize,
    announced: u64,
    sent: usize,
) -> (u64, u64, Vec<Option<u16>>) {
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(eio_websocket(addr).await);
    }
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for mut stream in streams {
        tasks.push(tokio::spawn(async move {
            let mut head = vec![0x81];
            header_len_into(&mut head, announced);
            head.extend_from_slice(&[1, 2, 3, 4]);
            let _ = stream.write_all(&head).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = sent;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
            read_until_close(&mut stream, Duration::from_secs(10))
                .await
                .close
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
    sampler.abort();
    (
        before,
        peak.load(std::sync::atomic::Ordering::Relaxed),
        codes,
    )
}

#[actix_web::test]
async fn oversized_frames_are_refused_at_the_header_without_buffering_on_both_transports() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let token = s.token_for(alice);
    let addr = s.addr();

    // A frame announcing 2^62 bytes, with none of them sent: closed with 1009 at once.
    for eio in [false, true] {
        let mut stream = if eio {
            eio_websocket(addr).await
        } else {
            let (stream, head) = raw_upgrade(addr, &format!("/ws?token={token}"), None).await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            stream
        };
        let mut head = vec![0x81];
        header_len_into(&mut head, 1 << 62);
        head.extend_from_slice(&[1, 2, 3, 4]);
        stream.write_all(&head).await.unwrap();
        let started = Instant::now();
        let got = read_until_close(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(got.close, Some(1009), "eio {eio}: {got:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        if !eio {
            assert!(got.texts.iter().any(|t| t.contains("too_large")), "{got:?}");
        }
    }

    // Twenty connections each sending a 10 MB frame at once, on each transport: memory stays
    // flat (without the guard each frame would be buffered whole before being refused).
    let limit_kib = 40 * 1024;
    let mut ws_codes = Vec::new();
    {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let path = format!("/ws?token={token}");
            tasks.push(tokio::spawn(async move {
                let (stream, head) = raw_upgrade(addr, &path, None).await;
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                stream
            }));
        }
        let mut streams = Vec::new();
        for t in tasks {
            streams.push(t.await.unwrap());
        }
        let before = rss_kib();
        let mut sends = Vec::new();
        for mut stream in streams {
            sends.push(tokio::spawn(async move {
                let mut head = vec![0x81];
                header_len_into(&mut head, 10 << 20);
                head.extend_from_slice(&[1, 2, 3, 4]);
                let _ = stream.write_all(&head).await;
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..160 {
                    if stream.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                (
                    read_until_close(&mut stream, Duration::from_secs(10))
                        .await
                        .close,
                    rss_kib(),
                )
            }));
        }
        let mut peak = before;
        for t in sends {
            let (code, rss) = t.await.unwrap();
            ws_codes.push(code);
            peak = peak.max(rss);
        }
        let grown = peak.saturating_sub(before);
        eprintln!(
            "/ws: RSS before {before} KiB, peak {peak} KiB, after {} KiB",
            rss_kib()
        );
        assert!(grown < limit_kib, "/ws RSS grew by {grown} KiB");
    }
    assert!(
        ws_codes.iter().all(|c| *c == Some(1009) || c.is_none()),
        "{ws_codes:?}"
    );
    assert!(ws_codes.contains(&Some(1009)), "{ws_codes:?}");

    let (before, peak, codes) = eio_flood(addr, 20, 10 << 20, 10 << 20).await;
    eprintln!(
        "engine.io: RSS before {before} KiB, peak {peak} KiB, after {} KiB",
        rss_kib()
    );
    let grown = peak.saturating_sub(before);
    assert!(grown < limit_kib, "engine.io RSS grew by {grown} KiB");
    assert!(codes.contains(&Some(1009)), "{codes:?}");

    // A long-polling body announced over maxPayload is refused before it is read.
    let (status, body) = s
        .call("GET", "/socket.io/?EIO=4&transport=polling", None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let open = body["text"].as_str().unwrap();
    let sid: Value = serde_json::from_str(open.trim_start_matches('0')).unwrap();
    let sid = sid["sid"].as_str().unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: text/plain\r\nContent-Length: 1099511627776\r\n\r\n4x"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Fragmentation

#[actix_web::test]
async fn fragmented_messages_are_reassembled_on_both_transports() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let token = s.token_for(alice);

    // `/ws`: a ping request split over a text frame and two continuations.
    let (mut ws, head) = raw_upgrade(s.addr(), &format!("/ws?token={token}"), None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = br#"{"event":"ping","id":"frag-7"}"#;
    let mut bytes = client_frame(0x1, false, &frame[..5]);
    bytes.extend(client_frame(0x0, false, &frame[5..12]));
    // A control frame may arrive between fragments.
    bytes.extend(client_frame(0x9, true, b"hi"));
    bytes.extend(client_frame(0x0, true, &frame[12..]));
    ws.write_all(&bytes).await.unwrap();
    let ack = read_text_until(&mut ws, |t| t.contains("frag-7")).await;
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(
        (ack["event"].as_str(), &ack["id"]),
        (Some("ack"), &json!("frag-7"))
    );

    // Fragments adding up to more than the frame limit are refused with 1009.
    let part = vec![b'a'; 40 * 1024];
    let mut bytes = client_frame(0x1, false, &part);
    bytes.extend(client_frame(0x0, true, &part));
    ws.write_all(&bytes).await.unwrap();
    let got = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(got.close, Some(1009), "{got:?}");

    // Engine.IO: the Socket.IO CONNECT (with its token) split in two frames gets its answer.
    let mut eio = eio_websocket(s.addr()).await;
    let connect = format!(r#"40{{"token":"{token}"}}"#);
    let (a, b) = connect.as_bytes().split_at(7);
    let mut bytes = client_frame(0x1, false, a);
    bytes.extend(client_frame(0x0, true, b));
    eio.write_all(&bytes).await.unwrap();
    let reply = read_text_until(&mut eio, |t| t.starts_with("40") || t.starts_with("44")).await;
    assert!(
        reply.starts_with("40{") && reply.contains("\"sid\""),
        "{reply}"
    );
}

// ---------------------------------------------------------------------------------------------
// Clients that stop reading

/// A group where `alice` sends large messages and `slow` (a raw socket with a small receive
/// buffer that never reads) is a member; returns once the server's end of the slow connection
/// is gone, with how long that took after the server cut it off.
async fn stop_reading_scenario(s: &TestServer) -> Duration {
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let slow = s.create_user("Slow", "slow@example.com", None, &[]);
    let conv = group(s, alice, &[slow]).to_string();
    let mut a = WsClient::connect(s, &s.token_for(alice)).await;
    let (slow_stream, head) = raw_upgrade(
        s.addr(),
        &format!("/ws?token={}", s.token_for(slow)),
        Some(4096),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(server_side_open(s.addr(), &slow_stream));

    let pad = "z".repeat(32_000);
    let mut cut_at = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the slow connection was never released"
        );
        if cut_at.is_none() {
            a.request(
                "message:send",
                json!({"conversationId": conv, "content": format!("{i} {pad}")}),
            )
            .await
            .unwrap();
            i += 1;
            let sessions = s
                .running
                .state
                .engine
                .registry
                .send(switchboard::realtime::registry::GetStats)
                .await
                .unwrap()
                .sessions;
            if sessions == 1 {
                cut_at = Some(Instant::now());
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(at) = cut_at {
            if !server_side_open(s.addr(), &slow_stream) {
                return at.elapsed();
            }
        }
    }
}

#[actix_web::test]
async fn a_cut_off_slow_consumer_has_its_connection_aborted_within_the_grace() {
    let s = TestServer::start_with(|c| {
        c.outbound_queue = 8;
        c.max_content_chars = 40_000;
        c.socket_close_grace = Duration::from_millis(1000);
    })
    .await;
    let released = stop_reading_scenario(&s).await;
    eprintln!("slow consumer released {released:?} after the cut");
    assert!(released < Duration::from_secs(5), "{released:?}");
    let text = metrics_text(&s).await;
    assert!(metric(&text, "switchboard_connections_aborted_total") >= 1.0);
}

#[actix_web::test]
async fn a_heartbeat_timeout_with_writes_stuck_aborts_the_connection() {
    // The queue is large enough never to fill: only the heartbeat timeout ends the session.
    let s = TestServer::start_with(|c| {
        c.outbound_queue = 100_000;
        c.max_content_chars = 40_000;
        c.heartbeat_interval = Duration::from_secs(1);
        c.client_timeout = Duration::from_secs(2);
        c.socket_close_grace = Duration::from_millis(1000);
    })
    .await;
    let released = stop_reading_scenario(&s).await;
    eprintln!("stuck connection released {released:?} after its session ended");
    assert!(released < Duration::from_secs(6), "{released:?}");
    let text = metrics_text(&s).await;
    assert!(metric(&text, "switchboard_connections_aborted_total") >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// Connection ceiling

#[actix_web::test]
async fn upgrades_over_the_ceiling_get_503_at_once_while_held_sockets_keep_working() {
    let s = TestServer::start_with(|c| c.max_realtime_connections = 2).await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let token = s.token_for(alice);
    let mut one = WsClient::connect(&s, &token).await;
    let mut two = WsClient::connect(&s, &token).await;

    let started = Instant::now();
    let (_, head) = raw_upgrade(s.addr(), &format!("/ws?token={token}"), None).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    let (status, body) = s
        .call("GET", "/socket.io/?EIO=4&transport=polling", None, None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "over_capacity");
    let (_, head) = raw_upgrade(s.addr(), "/socket.io/?EIO=4&transport=websocket", None).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Health checks and the held sockets still work.
    let (status, _) = s.get("/health", None).await;
    assert_eq!(status, 200);
    one.request("ping", json!({})).await.unwrap();
    two.request("ping", json!({})).await.unwrap();
    let text = metrics_text(&s).await;
    assert_eq!(metric(&text, "switchboard_connections_refused_total"), 3.0);

    // A place freed by a closing socket is taken again.
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, head) = raw_upgrade(s.addr(), &format!("/ws?token={token}"), None).await;
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused: {head}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
