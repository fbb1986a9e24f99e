//! Plain WebSocket transport at `/ws` (seed 004): JSON text frames
//! `{"event": "...", "payload": {...}, "id": optional}`. Auth by `?token=` or
//! `Authorization: Bearer`; a missing or invalid token closes with 4001 `Unauthorized`.
//!
//! The transport is an edge around the session actor: a reader task decodes frames (size and
//! rate limits, heartbeat timeout) and hands them to the actor; a writer task drains the
//! session's bounded queue into the socket and sends heartbeat pings.

use super::conn::{self, Admission, SocketHandle};
use super::dialect::{Dialect, Translator};
use super::events;
use super::protocol::{frame_text, ClientFrame, Outbound, WireError};
use super::ratelimit::Bucket;
use super::registry::SessionLabels;
use super::session::{
    CloseRequest, CloseSignal, Link, SessionActor, TransportClosed, CLOSE_UNAUTHORIZED,
};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use actix::{Actor, Addr};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Encodes and decodes one wire format (canonical JSON here; dialects plug in the same way).
pub trait WireFormat: Send + Sync + 'static {
    /// Decodes a text frame.
    fn decode(&self, text: &str) -> Result<ClientFrame, (Option<Value>, AppError)>;
    /// Encodes an outbound item (a pushed event's text is shared, not copied).
    fn encode(&self, item: &Outbound) -> ByteString;
}

/// The canonical `{"event","payload","id"}` format.
#[derive(Clone, Copy, Debug, Default)]
pub struct CanonicalJson;

impl WireFormat for CanonicalJson {
    fn decode(&self, text: &str) -> Result<ClientFrame, (Option<Value>, AppError)> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            (
                None,
                AppError::bad_request(ErrorCode::InvalidJson, format!("malformed JSON frame: {e}")),
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err((
                None,
                AppError::bad_request(ErrorCode::InvalidFrame, "a frame must be a JSON object"),
            ));
        };
        let id = obj.remove("id").filter(|v| !v.is_null());
        if let Some(id) = &id {
            if !(id.is_string() || id.is_number()) {
                return Err((
                    None,
                    AppError::bad_request(
                        ErrorCode::InvalidFrame,
                        "`id` must be a string or a number",
                    ),
                ));
            }
        }
        let event = match obj.remove("event") {
            Some(Value::String(e)) if !e.is_empty() && e.len() <= 128 => e,
            _ => {
                return Err((
                    id,
                    AppError::bad_request(
                        ErrorCode::InvalidFrame,
                        "`event` must be a non-empty string",
                    ),
                ))
            }
        };
        let payload = obj
            .remove("payload")
            .or_else(|| obj.remove("data"))
            .unwrap_or(Value::Null);
        Ok(ClientFrame {
            event,
            payload,
            reply_to: id,
        })
    }

    fn encode(&self, item: &Outbound) -> ByteString {
        match item {
            Outbound::Event(ev) => ev.canonical_json(),
            Outbound::Ack(a) => frame_text("ack", Some(&a.id), &a.payload).into(),
            Outbound::Error(e) => frame_text(events::ERROR, e.id.as_ref(), &e.error).into(),
        }
    }
}

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get(name).filter(|t| !t.is_empty()).cloned())
}

/// `?token=` wins over the `Authorization` header (browsers cannot set headers on WebSockets).
fn token_of(req: &HttpRequest) -> Option<String> {
    query_param(req, "token").or_else(|| crate::http::bearer_token(req).map(str::to_owned))
}

/// The dialect a request names with `?dialect=`, or its listener's default.
pub(crate) fn dialect_of(
    req: &HttpRequest,
    state: &AppState,
) -> Result<&'static Dialect, AppError> {
    Dialect::for_connection(
        query_param(req, "dialect").as_deref(),
        state.default_dialect(req),
    )
}

/// `GET /ws`: upgrade, authenticate, start the session.
pub(crate) async fn route(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    // An unknown dialect is refused before the upgrade, with a JSON error; so is an upgrade over
    // the connection ceiling (503, at once).
    let dialect = dialect_of(&req, &state)?;
    let admission = match state.engine.ceiling.admit() {
        Ok(a) => a,
        Err(refusal) => return Ok(refusal.response()),
    };
    let identity = match token_of(&req) {
        Some(t) => state.auth.authenticate(&t).await,
        None => Err(AppError::unauthorized(
            ErrorCode::MissingToken,
            "token required",
        )),
    };
    let socket = SocketHandle::of(&req);
    let body = conn::guarded_payload(&req, body, state.config.max_frame_bytes).await?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(code = e.code().as_str(), "websocket refused: unauthorized");
            let grace = state.config.socket_close_grace;
            let metrics = Arc::clone(&state.engine.metrics);
            actix_web::rt::spawn(async move {
                let _admission = admission;
                let reason = CloseReason {
                    code: CloseCode::Other(CLOSE_UNAUTHORIZED),
                    description: Some("Unauthorized".into()),
                };
                let since = tokio::time::Instant::now();
                conn::close_within(session, Some(reason), since, grace, socket, &metrics).await;
            });
            return Ok(response);
        }
    };
    start(
        identity,
        &state,
        Transport {
            session,
            stream,
            socket,
            admission,
        },
        Arc::new(CanonicalJson),
        "ws",
        Translator::with_legacy(dialect, &state.legacy),
    );
    Ok(response)
}

/// An upgraded socket and what keeps its place.
#[allow(missing_debug_implementations)]
pub(crate) struct Transport {
    /// Writes frames.
    pub session: actix_ws::Session,
    /// Reads frames (behind a frame guard).
    pub stream: actix_ws::MessageStream,
    /// The TCP connection underneath, to abort it when a close cannot complete.
    pub socket: SocketHandle,
    /// The connection's place under the ceiling.
    pub admission: Admission,
}

/// Starts a session actor and its reader and writer tasks on an upgraded socket.
pub(crate) fn start(
    identity: crate::auth::Identity,
    state: &AppState,
    transport_parts: Transport,
    format: Arc<dyn WireFormat>,
    transport: &'static str,
    dialect: Arc<Translator>,
) {
    let Transport {
        session,
        stream,
        socket,
        admission,
    } = transport_parts;
    let labels = SessionLabels {
        transport,
        dialect: dialect.name(),
    };
    let config = Arc::clone(&state.config);
    let (out_tx, out_rx) = mpsc::channel(config.outbound_queue);
    let close = CloseSignal::new();
    let link = Link::new(out_tx, Arc::clone(&close), dialect);
    let user = identity.user_id();
    let actor = SessionActor::new(identity, state.engine.clone(), link.clone(), labels).start();
    let last_seen = Arc::new(AtomicI64::new(now_millis()));
    actix_web::rt::spawn(write_loop(
        Writer {
            session: session.clone(),
            format: Arc::clone(&format),
            heartbeat: config.heartbeat_interval,
            grace: config.socket_close_grace,
            socket: socket.clone(),
            admission,
            metrics: Arc::clone(&state.engine.metrics),
        },
        out_rx,
        close,
    ));
    let reader = Reader {
        actor,
        link,
        format,
        session,
        last_seen,
        user,
        metrics: Arc::clone(&state.engine.metrics),
        frames: Bucket::new(config.frame_burst, f64::from(config.frame_rate_per_sec)),
        client_timeout: config.client_timeout,
        heartbeat: config.heartbeat_interval,
        socket,
    };
    // Fragmented messages are put back together up to the same limit as a single frame.
    actix_web::rt::spawn(
        reader.run(
            stream
                .max_frame_size(config.max_frame_bytes)
                .aggregate_continuations()
                .max_continuation_size(config.max_frame_bytes),
        ),
    );
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What the writer task owns besides its queue.
struct Writer {
    session: actix_ws::Session,
    format: Arc<dyn WireFormat>,
    heartbeat: Duration,
    grace: Duration,
    socket: SocketHandle,
    admission: Admission,
    metrics: Arc<crate::metrics::Metrics>,
}

async fn write_loop(mut w: Writer, mut out: mpsc::Receiver<Outbound>, close: Arc<CloseSignal>) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + w.heartbeat, w.heartbeat);
    let mut turns = conn::WriteTurns::default();
    let reason = loop {
        tokio::select! {
            biased;
            req = close.requested() => break Some(req),
            item = out.recv() => {
                let Some(item) = item else { break None };
                let text = w.format.encode(&item);
                let bytes = text.len();
                // A write that cannot complete (client not reading) still yields to a close.
                tokio::select! {
                    biased;
                    res = w.session.text(text) => if res.is_err() { break None },
                    req = close.requested() => break Some(req),
                }
                turns.wrote(bytes).await;
            }
            _ = ping.tick() => {
                tokio::select! {
                    biased;
                    res = w.session.ping(b"") => if res.is_err() { break None },
                    req = close.requested() => break Some(req),
                }
            }
        }
    };
    // Boxed: the close's timers and writes would otherwise sit in every idle connection's task.
    Box::pin(finish_writing(w, out, reason)).await;
}

/// The writer's end: flushes what is already queued (an error explaining the close, say) for a
/// moment, unless the client is not reading at all, then closes the socket within the grace.
async fn finish_writing(
    w: Writer,
    mut out: mpsc::Receiver<Outbound>,
    reason: Option<CloseRequest>,
) {
    let Writer {
        mut session,
        format,
        grace,
        socket,
        admission,
        metrics,
        ..
    } = w;
    let closing = tokio::time::Instant::now();
    let flush = async {
        while let Ok(item) = out.try_recv() {
            if session.text(format.encode(&item)).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500).min(grace / 2), flush).await;
    let reason = reason.map(|r| CloseReason {
        code: close_code(r.code),
        description: Some(r.reason),
    });
    conn::close_within(session, reason, closing, grace, socket, &metrics).await;
    drop(admission);
}

fn close_code(code: u16) -> CloseCode {
    match code {
        1000 => CloseCode::Normal,
        1001 => CloseCode::Away,
        1008 => CloseCode::Policy,
        1009 => CloseCode::Size,
        1011 => CloseCode::Error,
        other => CloseCode::Other(other),
    }
}

struct Reader {
    actor: Addr<SessionActor>,
    link: Link,
    format: Arc<dyn WireFormat>,
    session: actix_ws::Session,
    last_seen: Arc<AtomicI64>,
    user: i64,
    metrics: Arc<crate::metrics::Metrics>,
    frames: Bucket,
    client_timeout: Duration,
    heartbeat: Duration,
    /// The TCP connection underneath (reset when closed once the peer stopped answering).
    socket: SocketHandle,
}

impl Reader {
    /// The peer stopped answering: its connection is reset when it closes (counted as aborted).
    fn reset_silent_peer(&self) {
        if self.socket.reset_on_close() {
            self.metrics.connection_aborted();
        }
    }

    fn close(&self, code: u16, reason: &str) {
        self.link.close.request(CloseRequest {
            code,
            reason: reason.into(),
        });
    }

    fn error(&self, id: Option<Value>, err: &AppError) {
        tracing::debug!(code = err.code().as_str(), "frame refused");
        self.link.push(
            Outbound::error(id.clone(), WireError::from_app(err, id)),
            self.user,
        );
    }

    async fn run(mut self, mut stream: actix_ws::AggregatedMessageStream) {
        let check_every = (self.heartbeat / 2).max(Duration::from_millis(100));
        let mut check = tokio::time::interval(check_every);
        loop {
            tokio::select! {
                msg = stream.recv() => {
                    let Some(msg) = msg else { break };
                    self.last_seen.store(now_millis(), Ordering::Relaxed);
                    // Boxed: the handling's state would otherwise stay in every idle
                    // connection's task (this loop's futures are not laid over it).
                    if !Box::pin(self.on_message(msg)).await {
                        break;
                    }
                }
                _ = check.tick() => {
                    let silent = now_millis() - self.last_seen.load(Ordering::Relaxed);
                    if silent > i64::try_from(self.client_timeout.as_millis()).unwrap_or(i64::MAX) {
                        tracing::info!(user = self.user, "heartbeat timeout; closing");
                        self.reset_silent_peer();
                        self.close(1000, "heartbeat timeout");
                        break;
                    }
                }
            }
        }
        self.actor.do_send(TransportClosed);
    }

    /// Handles one inbound message; false ends the connection.
    async fn on_message(&mut self, msg: Result<AggregatedMessage, ProtocolError>) -> bool {
        match msg {
            Ok(AggregatedMessage::Text(text)) => {
                if let Err(wait) = self.frames.take(Instant::now()) {
                    self.metrics.rate_limited(crate::metrics::Limit::Frames);
                    let err = AppError::RateLimited {
                        retry_after_secs: wait.as_secs().max(1),
                    };
                    let id = self.format.decode(&text).ok().and_then(|f| f.reply_to);
                    self.error(id, &err);
                    return true;
                }
                match self.format.decode(&text) {
                    Ok(frame) => self.actor.send(frame).await.is_ok(),
                    Err((id, err)) => {
                        self.error(id, &err);
                        true
                    }
                }
            }
            Ok(AggregatedMessage::Binary(_)) => {
                self.error(
                    None,
                    &AppError::bad_request(
                        ErrorCode::InvalidFrame,
                        "binary frames are not supported on /ws",
                    ),
                );
                true
            }
            Ok(AggregatedMessage::Ping(bytes)) => {
                // A peer that pings but does not read would block the reader on its pong (and
                // with it the heartbeat check): past the client timeout it is closed.
                match tokio::time::timeout(self.client_timeout, self.session.pong(&bytes)).await {
                    Ok(res) => res.is_ok(),
                    Err(_) => {
                        tracing::info!(user = self.user, "pong not taken; closing");
                        self.reset_silent_peer();
                        self.close(1008, "not reading");
                        false
                    }
                }
            }
            Ok(AggregatedMessage::Pong(_)) => true,
            Ok(AggregatedMessage::Close(reason)) => {
                tracing::debug!(user = self.user, ?reason, "client closed");
                self.close(1000, "bye");
                false
            }
            Err(e) if conn::is_overflow(&e) => {
                self.error(
                    None,
                    &AppError::TooLarge("frame exceeds MAX_FRAME_BYTES".into()),
                );
                self.close(1009, "frame too large");
                false
            }
            Err(e) => {
                tracing::info!(user = self.user, error = %e, "websocket protocol error; closing");
                self.close(1002, "protocol error");
                false
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_frames_and_reports_bad_ones_with_codes() {
        let f = CanonicalJson.decode(r#"{"event":"ping","id":7}"#).unwrap();
        assert_eq!((f.event.as_str(), f.reply_to), ("ping", Some(json!(7))));
        let (id, e) = CanonicalJson.decode("{nope").unwrap_err();
        assert_eq!((id, e.code()), (None, ErrorCode::InvalidJson));
        let (id, e) = CanonicalJson.decode(r#"{"id":"a","event":5}"#).unwrap_err();
        assert_eq!((id, e.code()), (Some(json!("a")), ErrorCode::InvalidFrame));
        let (_, e) = CanonicalJson.decode("[1,2]").unwrap_err();
        assert_eq!(e.code(), "invalid_frame");
    }

    #[test]
    fn replies_carry_the_frame_id() {
        let ack = CanonicalJson.encode(&Outbound::ack(json!(3), json!({"ok": true})));
        assert_eq!(
            serde_json::from_str::<Value>(&ack).unwrap(),
            json!({"event":"ack","id":3,"payload":{"ok":true}})
        );
    }
}
