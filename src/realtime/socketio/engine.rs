//! Engine.IO v4 server: handshake, HTTP long-polling, WebSocket, the polling → WebSocket upgrade,
//! server-driven ping/pong, `maxPayload`. What travels inside (Socket.IO, or a bare echo in
//! conformance mode) is an [`EioHandler`].

use super::packet::EioPacket;
use crate::realtime::conn::{self, Admission, Ceiling, SocketHandle};
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Engine.IO settings.
#[derive(Clone, Debug)]
pub(crate) struct EioConfig {
    /// Server ping period.
    pub ping_interval: Duration,
    /// How long a pong may take.
    pub ping_timeout: Duration,
    /// Largest payload accepted (POST body, WebSocket frame) and sent in one poll.
    pub max_payload: usize,
    /// Packets queued for one client before it counts as a slow consumer.
    pub queue: usize,
    /// Cap on open sessions (new sessions over it get 503 with `Retry-After`).
    pub ceiling: Arc<Ceiling>,
    /// How long a closed WebSocket may take to finish its close before it is aborted.
    pub close_grace: Duration,
}

/// A message inside Engine.IO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EioData {
    /// Text.
    Text(String),
    /// Binary.
    Binary(Bytes),
}

/// What runs on top of Engine.IO.
pub(crate) trait EioHandler: Send + Sync + 'static {
    /// A session opened (the handshake request is available for auth headers and query).
    fn on_open(&self, socket: &Arc<EioSocket>, req: &HttpRequest);
    /// A message arrived.
    fn on_message(&self, socket: &Arc<EioSocket>, data: EioData);
    /// The session closed.
    fn on_close(&self, socket: &Arc<EioSocket>, reason: &str);
}

/// One Engine.IO session.
#[derive(Debug)]
pub(crate) struct EioSocket {
    /// Session id.
    pub sid: String,
    tx: mpsc::Sender<EioPacket>,
    rx: tokio::sync::Mutex<mpsc::Receiver<EioPacket>>,
    upgrading: AtomicBool,
    upgraded: AtomicBool,
    closed: AtomicBool,
    /// Closed by [`EioSocket::close_flushing`]: a last poll still collects what is queued.
    flush_on_close: AtomicBool,
    finished: AtomicBool,
    ping_deadline: AtomicI64,
    last_pong: AtomicI64,
    /// The last mark the layer above queued (Socket.IO recovery offsets).
    sent_mark: AtomicU64,
    /// `sent_mark` when the last ping was queued.
    ping_mark: AtomicU64,
    /// `ping_mark` of the last ping answered: the client processed everything up to it.
    confirmed_mark: AtomicU64,
    closing: Notify,
    close_reason: Mutex<Option<String>>,
    /// The session's place under the ceiling, held for its whole life.
    _admission: Admission,
}

/// Close reason of a frame or body over `maxPayload` (a WebSocket closes with 1009).
const PAYLOAD_TOO_LARGE: &str = "payload too large";

/// Close reason when the client sent a close packet.
const CLIENT_CLOSE: &str = "client close";

/// Close reason of a server shutdown: WebSocket transports close with 1001 (going away), so
/// clients reconnect.
pub(crate) const SERVER_SHUTDOWN: &str = "server shutdown";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl EioSocket {
    /// Queues a message for the client; false when the queue is full (the session is closed) or
    /// the session is gone.
    pub(crate) fn send(&self, data: EioData) -> bool {
        let packet = match data {
            EioData::Text(t) => EioPacket::Message(t),
            EioData::Binary(b) => EioPacket::Binary(b),
        };
        self.push(packet)
    }

    fn push(&self, packet: EioPacket) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        match self.tx.try_send(packet) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(sid = %self.sid, "slow consumer: engine.io queue full; closing");
                self.close("slow consumer");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Records that everything up to `mark` (an increasing number the layer above gives its
    /// messages) is queued: the next ping follows it, and its pong confirms it.
    pub(crate) fn mark_sent(&self, mark: u64) {
        self.sent_mark.store(mark, Ordering::SeqCst);
    }

    /// The highest mark the client is known to have processed (answered a ping queued after
    /// it); 0 when none.
    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed_mark.load(Ordering::SeqCst)
    }

    /// Closes the session (idempotent).
    pub(crate) fn close(&self, reason: &str) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            if let Ok(mut r) = self.close_reason.lock() {
                *r = Some(reason.to_owned());
            }
            self.closing.notify_waiters();
        }
    }

    /// Closes the session once what is queued has gone out (e.g. the packets saying why it
    /// closes): a WebSocket flushes its queue on any close; a polling client gets it, then the
    /// close packet, in its pending poll or in one more within `pingTimeout`.
    pub(crate) fn close_flushing(&self, reason: &str) {
        self.flush_on_close.store(true, Ordering::SeqCst);
        self.close(reason);
    }

    /// Whether the session is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn closed(&self) {
        loop {
            let notified = self.closing.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

/// The Engine.IO server: sessions by id and the handler on top.
pub struct EioServer {
    sockets: Mutex<HashMap<String, Arc<EioSocket>>>,
    config: EioConfig,
    handler: Arc<dyn EioHandler>,
}

impl std::fmt::Debug for EioServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EioServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn eio_error(code: u8, message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"code": code, "message": message}))
}

#[derive(Debug, Default, serde::Deserialize)]
struct EioQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl EioServer {
    /// A server with a handler.
    pub(crate) fn new(config: EioConfig, handler: Arc<dyn EioHandler>) -> Arc<Self> {
        Arc::new(Self {
            sockets: Mutex::new(HashMap::new()),
            config,
            handler,
        })
    }

    /// Closes every session (server shutdown): WebSocket transports close with 1001 after
    /// flushing what is queued, a waiting poll ends with a close packet. Answers how many.
    pub(crate) fn close_all(self: &Arc<Self>) -> usize {
        let sockets: Vec<Arc<EioSocket>> = self
            .sockets
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for socket in &sockets {
            self.remove(socket, SERVER_SHUTDOWN);
        }
        sockets.len()
    }

    fn get(&self, sid: &str) -> Option<Arc<EioSocket>> {
        self.sockets.lock().ok().and_then(|m| m.get(sid).cloned())
    }

    /// Closes a session. When the client asked for it, the entry stays for `pingTimeout` so that
    /// a poll racing with the close still gets its final noop, and after
    /// [`EioSocket::close_flushing`] so that a poll collects what is queued; otherwise later
    /// requests with that sid get 400 at once.
    fn remove(self: &Arc<Self>, socket: &Arc<EioSocket>, reason: &str) {
        if socket.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        socket.close(reason);
        self.handler.on_close(socket, reason);
        if reason != CLIENT_CLOSE && !socket.flush_on_close.load(Ordering::SeqCst) {
            self.forget(&socket.sid);
            return;
        }
        let server = Arc::clone(self);
        let sid = socket.sid.clone();
        actix_web::rt::spawn(async move {
            tokio::time::sleep(server.config.ping_timeout).await;
            server.forget(&sid);
        });
    }

    fn forget(&self, sid: &str) -> bool {
        self.sockets
            .lock()
            .ok()
            .and_then(|mut m| m.remove(sid))
            .is_some()
    }

    fn handshake_json(&self, sid: &str, upgrades: bool) -> String {
        json!({
            "sid": sid,
            "upgrades": if upgrades { vec!["websocket"] } else { Vec::<&str>::new() },
            "pingInterval": self.config.ping_interval.as_millis() as u64,
            "pingTimeout": self.config.ping_timeout.as_millis() as u64,
            "maxPayload": self.config.max_payload,
        })
        .to_string()
    }

    fn open(self: &Arc<Self>, req: &HttpRequest, admission: Admission) -> Option<Arc<EioSocket>> {
        let sid = crate::auth::tokens::random_id().ok()?;
        let (tx, rx) = mpsc::channel(self.config.queue.max(8));
        let socket = Arc::new(EioSocket {
            sid: sid.clone(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            upgrading: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            flush_on_close: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            ping_deadline: AtomicI64::new(0),
            last_pong: AtomicI64::new(now_ms()),
            sent_mark: AtomicU64::new(0),
            ping_mark: AtomicU64::new(0),
            confirmed_mark: AtomicU64::new(0),
            closing: Notify::new(),
            close_reason: Mutex::new(None),
            _admission: admission,
        });
        if let Ok(mut m) = self.sockets.lock() {
            m.insert(sid, Arc::clone(&socket));
        }
        self.spawn_heartbeat(Arc::clone(&socket));
        self.handler.on_open(&socket, req);
        Some(socket)
    }

    /// Server-driven heartbeat: a ping every `pingInterval`; no pong within `pingTimeout` closes.
    fn spawn_heartbeat(self: &Arc<Self>, socket: Arc<EioSocket>) {
        let server = Arc::clone(self);
        actix_web::rt::spawn(async move {
            // Scheduled on absolute instants so the session is gone by pingInterval +
            // pingTimeout after the last pong (or the handshake), whatever the timer jitter.
            let mut ping_at = tokio::time::Instant::now() + server.config.ping_interval;
            loop {
                tokio::select! {
                    () = socket.closed() => break,
                    () = tokio::time::sleep_until(ping_at) => {}
                }
                let sent = now_ms();
                let deadline = ping_at + server.config.ping_timeout;
                let deadline_ms = sent
                    + i64::try_from(
                        deadline
                            .saturating_duration_since(tokio::time::Instant::now())
                            .as_millis(),
                    )
                    .unwrap_or(0);
                socket.ping_deadline.store(deadline_ms, Ordering::SeqCst);
                socket
                    .ping_mark
                    .store(socket.sent_mark.load(Ordering::SeqCst), Ordering::SeqCst);
                if !socket.push(EioPacket::Ping(String::new())) {
                    break;
                }
                tokio::select! {
                    () = socket.closed() => break,
                    () = tokio::time::sleep_until(deadline) => {}
                }
                if socket.last_pong.load(Ordering::SeqCst) < sent {
                    tracing::debug!(sid = %socket.sid, "ping timeout");
                    server.remove(&socket, "ping timeout");
                    break;
                }
                ping_at = tokio::time::Instant::now() + server.config.ping_interval;
            }
            server.remove(&socket, "transport close");
        });
    }

    /// Whether a ping went unanswered past its deadline (checked on every request, so a late
    /// timer never keeps a dead session alive).
    fn timed_out(&self, socket: &EioSocket) -> bool {
        let deadline = socket.ping_deadline.load(Ordering::SeqCst);
        deadline != 0 && now_ms() >= deadline
    }

    fn dispatch(self: &Arc<Self>, socket: &Arc<EioSocket>, packet: EioPacket) {
        match packet {
            EioPacket::Pong(_) => {
                socket
                    .confirmed_mark
                    .store(socket.ping_mark.load(Ordering::SeqCst), Ordering::SeqCst);
                socket.last_pong.store(now_ms(), Ordering::SeqCst);
                socket.ping_deadline.store(0, Ordering::SeqCst);
            }
            EioPacket::Ping(data) => {
                socket.push(EioPacket::Pong(data));
            }
            EioPacket::Message(text) => self.handler.on_message(socket, EioData::Text(text)),
            EioPacket::Binary(bytes) => self.handler.on_message(socket, EioData::Binary(bytes)),
            EioPacket::Close => self.remove(socket, CLIENT_CLOSE),
            EioPacket::Open(_) | EioPacket::Upgrade | EioPacket::Noop => {}
        }
    }

    /// Serves one Engine.IO HTTP request (handshake, poll, post, or WebSocket).
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: HttpRequest,
        body: web::Payload,
    ) -> HttpResponse {
        let q = web::Query::<EioQuery>::from_query(req.query_string())
            .map(web::Query::into_inner)
            .unwrap_or_default();
        if q.eio.as_deref() != Some("4") {
            return eio_error(5, "Unsupported protocol version");
        }
        let transport = q.transport.as_deref().unwrap_or("");
        if transport != "polling" && transport != "websocket" {
            return eio_error(0, "Transport unknown");
        }
        let websocket = transport == "websocket";
        match (q.sid, websocket) {
            (None, true) => self.websocket(req, body, None).await,
            (None, false) => {
                if req.method() != actix_web::http::Method::GET {
                    return eio_error(2, "Bad handshake method");
                }
                let admission = match self.config.ceiling.admit() {
                    Ok(a) => a,
                    Err(refusal) => return refusal.response(),
                };
                match self.open(&req, admission) {
                    Some(socket) => text_response(
                        EioPacket::Open(self.handshake_json(&socket.sid, true)).encode_text(),
                    ),
                    None => HttpResponse::InternalServerError().finish(),
                }
            }
            (Some(sid), ws) => {
                let Some(socket) = self.get(&sid) else {
                    return eio_error(1, "Session ID unknown");
                };
                if self.timed_out(&socket) {
                    self.remove(&socket, "ping timeout");
                    return eio_error(1, "Session ID unknown");
                }
                let poll = !ws && req.method() == actix_web::http::Method::GET;
                if socket.is_closed() && poll && socket.flush_on_close.load(Ordering::SeqCst) {
                    return self.last_polls(&socket);
                }
                if socket.is_closed() {
                    // The last request of a closed session: a poll gets its final noop.
                    self.forget(&sid);
                    if poll {
                        return text_response(EioPacket::Noop.encode_text());
                    }
                    return eio_error(1, "Session ID unknown");
                }
                if ws {
                    if socket.upgraded.load(Ordering::SeqCst)
                        || socket.upgrading.swap(true, Ordering::SeqCst)
                    {
                        return reject_websocket(req, body);
                    }
                    return self.websocket(req, body, Some(socket)).await;
                }
                if socket.upgraded.load(Ordering::SeqCst) {
                    return eio_error(3, "Bad request");
                }
                if req.method() == actix_web::http::Method::POST {
                    self.post(&socket, &req, body).await
                } else {
                    self.poll(&socket).await
                }
            }
        }
    }

    async fn post(
        self: &Arc<Self>,
        socket: &Arc<EioSocket>,
        req: &HttpRequest,
        mut body: web::Payload,
    ) -> HttpResponse {
        use futures_util::StreamExt;
        // A body announced over the limit is refused before any of it is read.
        let announced = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.config.max_payload as u64) {
            self.remove(socket, PAYLOAD_TOO_LARGE);
            return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE).finish();
        }
        let mut buf = web::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return eio_error(3, "Bad request");
            };
            if buf.len() + chunk.len() > self.config.max_payload {
                self.remove(socket, PAYLOAD_TOO_LARGE);
                return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE).finish();
            }
            buf.extend_from_slice(&chunk);
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            self.remove(socket, "parse error");
            return eio_error(3, "Bad request");
        };
        match EioPacket::decode_payload(text) {
            Ok(packets) => {
                for p in packets {
                    self.dispatch(socket, p);
                }
                text_response("ok".into())
            }
            Err(_) => {
                self.remove(socket, "parse error");
                eio_error(3, "Bad request")
            }
        }
    }

    async fn poll(self: &Arc<Self>, socket: &Arc<EioSocket>) -> HttpResponse {
        // A poll that overtakes the `5` of a WebSocket upgrade already under way waits a moment
        // for it: once upgraded, polling requests are refused.
        if socket.upgrading.load(Ordering::SeqCst) {
            for _ in 0..20 {
                if socket.upgraded.load(Ordering::SeqCst) {
                    return eio_error(3, "Bad request");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Only one GET at a time: a second concurrent poll closes the session (protocol rule).
        let Ok(mut rx) = socket.rx.try_lock() else {
            self.remove(socket, "overlapping poll");
            return eio_error(3, "Bad request");
        };
        let first = tokio::select! {
            // What is queued goes out before a close is noticed.
            biased;
            p = rx.recv() => p,
            () = socket.closed() => None,
        };
        let Some(first) = first else {
            // Closed while waiting: a client-requested close ends the poll with a noop, a
            // server-side close (timeout, bad packet, duplicate poll) with a close packet.
            self.forget(&socket.sid);
            let client = socket
                .close_reason
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .as_deref()
                == Some(CLIENT_CLOSE);
            let last = if client {
                EioPacket::Noop
            } else {
                EioPacket::Close
            };
            return text_response(last.encode_text());
        };
        let size = first.encode_text().len();
        let mut packets = vec![first];
        self.take_queued(&mut rx, &mut packets, size);
        text_response(EioPacket::encode_payload(&packets))
    }

    /// Adds what is queued to a poll's `packets` (whose encoding already takes `size` bytes)
    /// until the payload reaches `maxPayload`.
    fn take_queued(
        &self,
        rx: &mut mpsc::Receiver<EioPacket>,
        packets: &mut Vec<EioPacket>,
        mut size: usize,
    ) {
        while let Ok(p) = rx.try_recv() {
            size += p.encode_text().len() + 1;
            packets.push(p);
            if size >= self.config.max_payload {
                break;
            }
        }
    }

    /// Polls of a session closed by [`EioSocket::close_flushing`]: what is still queued, then
    /// (in a poll of its own: a client handles a close packet before the messages of the same
    /// payload) the close packet.
    fn last_polls(&self, socket: &Arc<EioSocket>) -> HttpResponse {
        let mut packets = Vec::new();
        if let Ok(mut rx) = socket.rx.try_lock() {
            self.take_queued(&mut rx, &mut packets, 0);
        }
        if packets.is_empty() {
            self.forget(&socket.sid);
            return text_response(EioPacket::Close.encode_text());
        }
        text_response(EioPacket::encode_payload(&packets))
    }

    async fn websocket(
        self: &Arc<Self>,
        req: HttpRequest,
        body: web::Payload,
        existing: Option<Arc<EioSocket>>,
    ) -> HttpResponse {
        let admission = match existing {
            Some(_) => None,
            None => match self.config.ceiling.admit() {
                Ok(a) => Some(a),
                Err(refusal) => return refusal.response(),
            },
        };
        let tcp = SocketHandle::of(&req);
        let body = match conn::guarded_payload(&req, body, self.config.max_payload).await {
            Ok(b) => b,
            Err(e) => return HttpResponse::from_error(e),
        };
        let (response, mut session, stream) = match actix_ws::handle(&req, body) {
            Ok(parts) => parts,
            Err(e) => return HttpResponse::from_error(e),
        };
        // Fragmented messages are put back together up to the same limit as a single frame.
        let mut stream = stream
            .max_frame_size(self.config.max_payload)
            .aggregate_continuations()
            .max_continuation_size(self.config.max_payload);
        let server = Arc::clone(self);
        let fresh = existing.is_none();
        let socket = match (existing, admission) {
            (Some(s), _) => s,
            (None, Some(admission)) => match self.open(&req, admission) {
                Some(s) => s,
                None => return HttpResponse::InternalServerError().finish(),
            },
            (None, None) => return HttpResponse::InternalServerError().finish(),
        };
        actix_web::rt::spawn(async move {
            if fresh {
                let open = EioPacket::Open(server.handshake_json(&socket.sid, false)).encode_text();
                if session.text(open).await.is_err() {
                    server.remove(&socket, "transport error");
                    return;
                }
            } else if !server.probe(&socket, &mut session, &mut stream).await {
                socket.upgrading.store(false, Ordering::SeqCst);
                let metrics = server.config.ceiling.metrics();
                let since = tokio::time::Instant::now();
                conn::close_within(
                    session,
                    None,
                    since,
                    server.config.close_grace,
                    tcp,
                    metrics,
                )
                .await;
                return;
            }
            let writer = actix_web::rt::spawn(write_ws(
                Arc::clone(&socket),
                session.clone(),
                tcp,
                Arc::clone(&server.config.ceiling),
                server.config.close_grace,
            ));
            loop {
                let msg = tokio::select! {
                    m = stream.recv() => m,
                    () = socket.closed() => None,
                };
                match msg {
                    Some(Ok(AggregatedMessage::Text(t))) => match EioPacket::decode_text(&t) {
                        Ok(p) => server.dispatch(&socket, p),
                        Err(_) => {
                            server.remove(&socket, "parse error");
                            break;
                        }
                    },
                    Some(Ok(AggregatedMessage::Binary(b))) => {
                        server.dispatch(&socket, EioPacket::Binary(b));
                    }
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        // A peer that does not read cannot block the reader on its pong.
                        let pong = tokio::select! {
                            r = session.pong(&p) => r.is_ok(),
                            () = socket.closed() => false,
                        };
                        if !pong {
                            server.remove(&socket, "transport error");
                            break;
                        }
                    }
                    Some(Ok(AggregatedMessage::Close(_))) | None => {
                        server.remove(&socket, "transport close");
                        break;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Err(e)) if conn::is_overflow(&e) => {
                        server.remove(&socket, PAYLOAD_TOO_LARGE);
                        break;
                    }
                    Some(Err(_)) => {
                        server.remove(&socket, "transport error");
                        break;
                    }
                }
            }
            let _ = writer.await;
        });
        response
    }

    /// The upgrade handshake on a new WebSocket for a polling session: `2probe` → `3probe`,
    /// a noop releases the pending poll, then `5` switches the transport.
    async fn probe(
        &self,
        socket: &Arc<EioSocket>,
        session: &mut actix_ws::Session,
        stream: &mut actix_ws::AggregatedMessageStream,
    ) -> bool {
        let deadline =
            tokio::time::Instant::now() + self.config.ping_interval + self.config.ping_timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, stream.recv()).await;
            let Ok(Some(Ok(AggregatedMessage::Text(t)))) = msg else {
                return false;
            };
            match EioPacket::decode_text(&t) {
                Ok(EioPacket::Ping(d)) if d == "probe" => {
                    if session
                        .text(EioPacket::Pong("probe".into()).encode_text())
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    // End the pending (or next) poll so the client can finish the upgrade.
                    socket.push(EioPacket::Noop);
                }
                Ok(EioPacket::Upgrade) => {
                    socket.upgraded.store(true, Ordering::SeqCst);
                    return true;
                }
                _ => return false,
            }
        }
    }
}

async fn write_ws(
    socket: Arc<EioSocket>,
    mut session: actix_ws::Session,
    tcp: SocketHandle,
    ceiling: Arc<Ceiling>,
    grace: Duration,
) {
    // Waits for a pending poll to finish before taking over the queue.
    let mut rx = socket.rx.lock().await;
    let mut turns = conn::WriteTurns::default();
    loop {
        let packet = tokio::select! {
            biased;
            p = rx.recv() => p,
            () = socket.closed() => None,
        };
        let Some(packet) = packet else { break };
        if matches!(packet, EioPacket::Close) {
            break;
        }
        let bytes = packet.encoded_len();
        // A write that cannot complete (the client stopped reading) yields to a close.
        let sent = tokio::select! {
            biased;
            sent = send_packet(&mut session, packet) => sent,
            () = socket.closed() => break,
        };
        turns.wrote(bytes).await;
        match sent {
            Some(Ok(())) | None => {}
            Some(Err(_)) => {
                socket.close("transport error");
                break;
            }
        }
    }
    // Flush what is queued (e.g. the answer explaining a close) and close, within the grace;
    // a connection still open after it is aborted, whatever the peer does.
    let closing = tokio::time::Instant::now();
    let flush = async {
        while let Ok(p) = rx.try_recv() {
            if matches!(send_packet(&mut session, p).await, Some(Err(_))) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout((grace / 2).min(Duration::from_millis(500)), flush).await;
    let reason = socket.close_reason.lock().ok().and_then(|r| r.clone());
    let code = match reason.as_deref() {
        Some(SERVER_SHUTDOWN) => CloseCode::Away,
        Some(PAYLOAD_TOO_LARGE) => CloseCode::Size,
        _ => CloseCode::Normal,
    };
    let reason = Some(CloseReason {
        code,
        description: None,
    });
    conn::close_within(session, reason, closing, grace, tcp, ceiling.metrics()).await;
}

/// Writes one packet on a WebSocket (`None` for packets with no meaning there).
async fn send_packet(
    session: &mut actix_ws::Session,
    packet: EioPacket,
) -> Option<Result<(), actix_ws::Closed>> {
    match packet {
        // A noop only ends a poll; a close is sent as the WebSocket close.
        EioPacket::Noop | EioPacket::Close => None,
        EioPacket::Binary(b) => Some(session.binary(b).await),
        other => Some(session.text(other.encode_text()).await),
    }
}

/// A second WebSocket for an already upgraded session: accepted, then closed at once.
fn reject_websocket(req: HttpRequest, body: web::Payload) -> HttpResponse {
    match actix_ws::handle(&req, body) {
        Ok((response, session, _stream)) => {
            actix_web::rt::spawn(async move {
                let _ = session
                    .close(Some(CloseReason {
                        code: CloseCode::Policy,
                        description: None,
                    }))
                    .await;
            });
            response
        }
        Err(e) => HttpResponse::from_error(e),
    }
}

fn text_response(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}
