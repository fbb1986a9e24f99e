//! The listening socket and the accepted connections: every accepted connection (a `/ws` upgrade,
//! a Socket.IO WebSocket at `/socket.io/`, plain HTTP) gets `TCP_NODELAY`, the listen backlog is
//! `LISTEN_BACKLOG` — both seen in the system calls of the real binary under `strace` — and
//! `MAX_CONNECTIONS` really stops a worker from taking more connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestDb, TestServer, WsClient, SECRET};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard::auth::tokens::TokenKeys;

/// An unusual value, so the `listen` call is clearly the one this setting made.
const BACKLOG: u32 = 1234;

/// `switchboard serve` under `strace -f`, tracing `listen`, `accept4` and `setsockopt`.
struct Traced {
    strace: Child,
    addr: SocketAddr,
    trace: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Traced {
    fn server_pid(&self) -> Option<String> {
        let pid = self.strace.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next().map(str::to_owned)
    }

    /// The trace with each `<unfinished ...>` call joined to its `<... resumed>` rest.
    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut pending: std::collections::HashMap<String, String> = Default::default();
        let mut calls = Vec::new();
        for line in text.lines() {
            let Some((pid, rest)) = line.split_once(' ') else {
                continue;
            };
            let rest = rest.trim_start();
            if let Some(head) = rest.strip_suffix("<unfinished ...>") {
                pending.insert(pid.to_owned(), head.to_owned());
            } else if rest.starts_with("<... ") {
                let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
                let head = pending.remove(pid).unwrap_or_default();
                calls.push(format!("{head}{tail}"));
            } else {
                calls.push(rest.to_owned());
            }
        }
        calls
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // strace 6.1 has no --kill-on-exit: stop the server itself, then strace exits.
        if let Some(pid) = self.server_pid() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.strace.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
        let _ = std::fs::remove_file(&self.trace);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spawn_traced(db: &TestDb) -> Traced {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "strace must be installed (Debian package `strace`): scripts/test.sh installs it"
    );
    let addr = free_addr();
    let base = std::env::temp_dir().join(format!(
        "sb-listener-{}-{}",
        std::process::id(),
        addr.port()
    ));
    let trace = base.with_extension("strace");
    let log = base.with_extension("log");
    let strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "signal=none"])
        .args(["-e", "trace=listen,accept4,setsockopt", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", SECRET)
        .env("BIND", addr.to_string())
        .env("LISTEN_BACKLOG", BACKLOG.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start strace");
    let traced = Traced {
        strace,
        addr,
        trace,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(head) = exchange(
            addr,
            "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .map(|(_, head)| head)
        {
            if head.starts_with("HTTP/1.1 200") {
                return traced;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not come up under strace:\n{}",
            traced.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects, sends `request`, reads the response head; the connection stays open.
fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&head).into_owned()))
}

fn upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let (stream, head) = exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    .unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "{path} was not upgraded: {head}"
    );
    stream
}

#[test]
fn every_accepted_connection_gets_tcp_nodelay_and_the_backlog_is_configured() {
    let db = TestDb::migrated();
    let user = switchboard::auth::create_user(
        &mut db.conn(),
        "Nagle",
        None,
        Some("nagle@example.com"),
        None,
        vec![],
    )
    .unwrap()
    .id;
    let token = TokenKeys::new(SECRET.as_bytes())
        .sign(user, None, &[], 3600)
        .unwrap();
    let server = spawn_traced(&db);

    // All three stay open until the trace was read, so no descriptor number is reused.
    let ws = upgrade(server.addr, &format!("/ws?token={token}"));
    let sio = upgrade(server.addr, "/socket.io/?EIO=4&transport=websocket");
    let (http, head) = exchange(
        server.addr,
        "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    )
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let connections = [
        ("/ws", ws.local_addr().unwrap().port()),
        ("/socket.io/", sio.local_addr().unwrap().port()),
        ("HTTP", http.local_addr().unwrap().port()),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let calls = server.calls();
        let mut missing = Vec::new();
        for (what, port) in connections {
            // `accept4(L, {..., sin_port=htons(PORT), ...}, ...) = FD`, then on some worker
            // `setsockopt(FD, SOL_TCP, TCP_NODELAY, [1], 4) = 0`.
            let accepted = calls.iter().position(|c| {
                c.starts_with("accept4(") && c.contains(&format!("sin_port=htons({port})"))
            });
            let Some(at) = accepted else {
                missing.push(format!("{what}: no accept4 for client port {port}"));
                continue;
            };
            let fd = calls[at]
                .rsplit_once(" = ")
                .map(|(_, fd)| fd.trim().to_owned())
                .unwrap();
            let nodelay = format!("setsockopt({fd}, SOL_TCP, TCP_NODELAY, [1], 4) = 0");
            // Compared without spaces: a call another thread interrupted comes back from the
            // trace's `<unfinished ...>` / `<... resumed>` halves as `..., 4 )         = 0`.
            let squeezed = |c: &str| c.split_whitespace().collect::<String>();
            let wanted = squeezed(&nodelay);
            if !calls[at..].iter().any(|c| squeezed(c).starts_with(&wanted)) {
                missing.push(format!("{what}: accepted as fd {fd}, never `{nodelay}`"));
            }
        }
        if !calls
            .iter()
            .any(|c| c.starts_with("listen(") && c.contains(&format!(", {BACKLOG})")))
        {
            missing.push(format!("no listen(.., {BACKLOG}) for LISTEN_BACKLOG"));
        }
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, calls);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (missing, calls) = missing;
    assert!(
        missing.is_empty(),
        "{missing:#?}\ntraced calls:\n{}",
        calls.join("\n")
    );
    drop((ws, sio, http));
}

#[actix_web::test]
async fn a_worker_at_max_connections_leaves_new_connections_in_the_backlog() {
    let server = TestServer::start_with(|c| {
        c.http_workers = 1;
        c.max_connections = 2;
    })
    .await;
    let user = server.create_user("Full", "full@example.com", None, &[]);
    let token = server.token_for(user);
    let first = WsClient::connect(&server, &token).await;
    let _second = WsClient::connect(&server, &token).await;

    // The kernel completes the handshake (backlog), but the server does not take the connection.
    let addr = server.addr();
    let waiting = actix_web::rt::task::spawn_blocking(move || {
        let started = Instant::now();
        let (_stream, head) = exchange(
            addr,
            "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        (head, started.elapsed())
    });
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served past MAX_CONNECTIONS=2"
    );

    // One slot frees up: the waiting connection is served.
    drop(first);
    let (head, waited) = waiting.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}
