//! Socket.IO v5 on top of Engine.IO: namespaces, CONNECT/CONNECT_ERROR/DISCONNECT, events and
//! acks, binary attachments. In production the default namespace is the edge of a session actor
//! (canonical events in, canonical events out); in conformance mode it is the echo behaviour the
//! official protocol suite expects.

use super::engine::{EioData, EioHandler, EioSocket};
use super::packet::{fill_placeholders, SioKind, SioPacket};
use crate::auth::{Auth, Identity};
use crate::realtime::protocol::{ClientFrame, Outbound};
use crate::realtime::registry::SessionLabels;
use crate::realtime::session::{CloseRequest, Link, SessionActor};
use crate::realtime::Engine;
use actix::{Actor, Addr};
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the default namespace does.
#[derive(Clone)]
pub enum SioApp {
    /// The product: authenticate, then bridge to a session actor.
    Production(Box<Production>),
    /// The protocol suite's echo server (namespaces `/` and `/custom`).
    Conformance,
}

impl std::fmt::Debug for SioApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Production(_) => "SioApp::Production",
            Self::Conformance => "SioApp::Conformance",
        })
    }
}

/// What the production namespace needs.
#[derive(Clone, Debug)]
pub struct Production {
    /// Token checks.
    pub auth: Auth,
    /// The realtime engine.
    pub engine: Engine,
}

/// Per-connection state.
#[derive(Default)]
struct Conn {
    /// `?token=` or `Authorization` of the handshake request.
    handshake_token: Option<String>,
    /// Connected namespaces.
    namespaces: HashMap<String, Ns>,
    /// A binary packet waiting for its attachments.
    pending: Option<(SioPacket, Vec<Bytes>)>,
}

enum Ns {
    /// Conformance echo.
    Echo,
    /// Waiting for the token check.
    Connecting,
    /// Bridged to a session actor; frames go through a bounded, ordered queue.
    Session {
        frames: mpsc::Sender<ClientFrame>,
        actor: Addr<SessionActor>,
    },
}

/// The Socket.IO layer.
pub struct SioHandler {
    app: SioApp,
    conns: Mutex<HashMap<String, Conn>>,
    connect_timeout: Duration,
    me: std::sync::Weak<SioHandler>,
}

impl std::fmt::Debug for SioHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SioHandler")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

fn send_packet(socket: &EioSocket, packet: &SioPacket, attachments: &[Bytes]) -> bool {
    let mut ok = socket.send(EioData::Text(packet.encode()));
    for a in attachments {
        ok &= socket.send(EioData::Binary(a.clone()));
    }
    ok
}

fn packet(kind: SioKind, nsp: &str, id: Option<u64>, data: Option<Value>) -> SioPacket {
    SioPacket {
        kind,
        nsp: nsp.to_owned(),
        id,
        data,
        attachments: 0,
    }
}

impl SioHandler {
    /// A Socket.IO layer; a connection that sends no CONNECT within `connect_timeout` is closed.
    pub fn new(app: SioApp, connect_timeout: Duration) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            app,
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
            me: me.clone(),
        })
    }

    fn with_conn<R>(&self, sid: &str, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        self.conns
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(sid).map(f))
    }

    fn handle(self: &Arc<Self>, socket: &Arc<EioSocket>, p: SioPacket, attachments: Vec<Bytes>) {
        match p.kind {
            SioKind::Connect => self.connect(socket, p),
            SioKind::Disconnect => {
                let ns = self
                    .with_conn(&socket.sid, |c| c.namespaces.remove(&p.nsp))
                    .flatten();
                if let Some(Ns::Session { actor, .. }) = ns {
                    actor.do_send(crate::realtime::session::TransportClosed);
                }
            }
            SioKind::Event | SioKind::BinaryEvent => self.event(socket, p, attachments),
            // Acks from the client answer server emits with an ack id; the engine does not ask
            // for any, so there is nothing waiting for them.
            SioKind::Ack | SioKind::BinaryAck => {}
            SioKind::ConnectError => socket.close("protocol error"),
        }
    }

    fn connect(self: &Arc<Self>, socket: &Arc<EioSocket>, p: SioPacket) {
        let auth = p.data.clone().unwrap_or_else(|| json!({}));
        if !auth.is_object() {
            socket.close("invalid handshake");
            return;
        }
        let known = match &self.app {
            SioApp::Conformance => p.nsp == "/" || p.nsp == "/custom",
            SioApp::Production(_) => p.nsp == "/",
        };
        if !known {
            let refusal = packet(
                SioKind::ConnectError,
                &p.nsp,
                None,
                Some(json!({"message": "Invalid namespace"})),
            );
            send_packet(socket, &refusal, &[]);
            return;
        }
        match &self.app {
            SioApp::Conformance => {
                self.with_conn(&socket.sid, |c| {
                    c.namespaces.insert(p.nsp.clone(), Ns::Echo)
                });
                let sid = crate::auth::tokens::random_id().unwrap_or_default();
                send_packet(
                    socket,
                    &packet(SioKind::Connect, &p.nsp, None, Some(json!({"sid": sid}))),
                    &[],
                );
                send_packet(
                    socket,
                    &packet(SioKind::Event, &p.nsp, None, Some(json!(["auth", auth]))),
                    &[],
                );
            }
            SioApp::Production(prod) => {
                let (checker, engine) = (&prod.auth, &prod.engine);
                let token = auth
                    .get("token")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| {
                        self.with_conn(&socket.sid, |c| c.handshake_token.clone())
                            .flatten()
                    });
                self.with_conn(&socket.sid, |c| {
                    c.namespaces.insert("/".into(), Ns::Connecting)
                });
                let (checker, engine, socket, this) = (
                    checker.clone(),
                    engine.clone(),
                    Arc::clone(socket),
                    Arc::clone(self),
                );
                actix_web::rt::spawn(async move {
                    let identity = match token {
                        Some(t) => checker.authenticate(&t).await.ok(),
                        None => None,
                    };
                    match identity {
                        Some(identity) => this.bridge(&socket, identity, engine),
                        None => {
                            this.with_conn(&socket.sid, |c| c.namespaces.remove("/"));
                            send_packet(
                                &socket,
                                &packet(
                                    SioKind::ConnectError,
                                    "/",
                                    None,
                                    Some(json!({"message": "Unauthorized"})),
                                ),
                                &[],
                            );
                        }
                    }
                });
            }
        }
    }

    /// Starts the session actor for an authenticated connection and wires both directions.
    fn bridge(self: &Arc<Self>, socket: &Arc<EioSocket>, identity: Identity, engine: Engine) {
        let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(engine.config.outbound_queue);
        let (close_tx, mut close_rx) = mpsc::channel::<CloseRequest>(1);
        let link = Link {
            out: out_tx,
            close: close_tx,
        };
        let actor = SessionActor::new(
            identity,
            engine,
            link,
            SessionLabels {
                transport: "socket.io",
                dialect: "canonical",
            },
        )
        .start();
        let (frames_tx, mut frames_rx) = mpsc::channel::<ClientFrame>(256);
        let sid = crate::auth::tokens::random_id().unwrap_or_default();
        let registered = self
            .with_conn(&socket.sid, |c| {
                c.namespaces.insert(
                    "/".into(),
                    Ns::Session {
                        frames: frames_tx,
                        actor: actor.clone(),
                    },
                );
            })
            .is_some();
        if !registered {
            actor.do_send(crate::realtime::session::TransportClosed);
            return;
        }
        send_packet(
            socket,
            &packet(SioKind::Connect, "/", None, Some(json!({"sid": sid}))),
            &[],
        );
        // Inbound: one frame at a time, in order.
        let inbound_actor = actor.clone();
        actix_web::rt::spawn(async move {
            while let Some(frame) = frames_rx.recv().await {
                if inbound_actor.send(frame).await.is_err() {
                    break;
                }
            }
        });
        // Outbound: canonical items become Socket.IO packets.
        let out_socket = Arc::clone(socket);
        actix_web::rt::spawn(async move {
            loop {
                tokio::select! {
                    item = out_rx.recv() => {
                        let Some(item) = item else { break };
                        if !send_packet(&out_socket, &encode(&item), &[]) {
                            break;
                        }
                    }
                    req = close_rx.recv() => {
                        if req.as_ref().is_some_and(|r| r.code == 1001) {
                            // Shutdown: no DISCONNECT packet (the client would not reconnect);
                            // flush what is queued, then close the transport with 1001.
                            while let Ok(item) = out_rx.try_recv() {
                                send_packet(&out_socket, &encode(&item), &[]);
                            }
                            out_socket.close(super::engine::SERVER_SHUTDOWN);
                            break;
                        }
                        if req.is_some() {
                            send_packet(&out_socket, &packet(SioKind::Disconnect, "/", None, None), &[]);
                        }
                        out_socket.close("server disconnect");
                        break;
                    }
                }
            }
        });
    }

    fn event(self: &Arc<Self>, socket: &Arc<EioSocket>, p: SioPacket, attachments: Vec<Bytes>) {
        let Some(Value::Array(args)) = p.data.clone() else {
            socket.close("invalid payload");
            return;
        };
        let Some(name) = args.first().and_then(Value::as_str).map(str::to_owned) else {
            socket.close("invalid payload");
            return;
        };
        enum Route {
            Echo,
            Frames(mpsc::Sender<ClientFrame>),
            Missing,
        }
        let route = self
            .with_conn(&socket.sid, |c| match c.namespaces.get(&p.nsp) {
                Some(Ns::Echo) => Route::Echo,
                Some(Ns::Session { frames, .. }) => Route::Frames(frames.clone()),
                Some(Ns::Connecting) | None => Route::Missing,
            })
            .unwrap_or(Route::Missing);
        match route {
            Route::Missing => {}
            Route::Echo => {
                let binary = p.kind == SioKind::BinaryEvent;
                if name == "message-with-ack" {
                    let kind = if binary {
                        SioKind::BinaryAck
                    } else {
                        SioKind::Ack
                    };
                    let reply = SioPacket {
                        kind,
                        nsp: p.nsp.clone(),
                        id: p.id,
                        data: Some(Value::Array(args[1..].to_vec())),
                        attachments: attachments.len(),
                    };
                    send_packet(socket, &reply, &attachments);
                } else if name == "message" {
                    let mut back = args.clone();
                    back[0] = json!("message-back");
                    let kind = if binary {
                        SioKind::BinaryEvent
                    } else {
                        SioKind::Event
                    };
                    let reply = SioPacket {
                        kind,
                        nsp: p.nsp.clone(),
                        id: None,
                        data: Some(Value::Array(back)),
                        attachments: attachments.len(),
                    };
                    send_packet(socket, &reply, &attachments);
                }
            }
            Route::Frames(frames) => {
                let mut payload = args.get(1).cloned().unwrap_or(Value::Null);
                if fill_placeholders(&mut payload, &attachments).is_err() {
                    socket.close("invalid payload");
                    return;
                }
                let frame = ClientFrame {
                    event: name.clone(),
                    payload,
                    reply_to: p.id.map(Value::from),
                };
                if frames.try_send(frame).is_err() {
                    let err = json!({"code": "rate_limited", "message": "too many frames in flight", "ref": p.id.map_or(json!(name), Value::from)});
                    let reply = match p.id {
                        Some(id) => {
                            packet(SioKind::Ack, "/", Some(id), Some(json!([{"error": err}])))
                        }
                        None => packet(SioKind::Event, "/", None, Some(json!(["error", err]))),
                    };
                    send_packet(socket, &reply, &[]);
                }
            }
        }
    }
}

/// A canonical outbound item as a Socket.IO packet on the default namespace: events are EVENTs,
/// replies to frames with an id are ACKs (`[payload]`, or `[{"error": {...}}]`), other errors
/// are `error` events.
pub fn encode(item: &Outbound) -> SioPacket {
    match item {
        Outbound::Event(ev) => packet(
            SioKind::Event,
            "/",
            None,
            Some(json!([ev.name, ev.payload])),
        ),
        Outbound::Ack { id, payload } => {
            packet(SioKind::Ack, "/", id.as_u64(), Some(json!([payload])))
        }
        Outbound::Error {
            id: Some(id),
            error,
        } if id.as_u64().is_some() => packet(
            SioKind::Ack,
            "/",
            id.as_u64(),
            Some(json!([{"error": error}])),
        ),
        Outbound::Error { error, .. } => {
            packet(SioKind::Event, "/", None, Some(json!(["error", error])))
        }
    }
}

impl EioHandler for SioHandler {
    fn on_open(&self, socket: &Arc<EioSocket>, req: &HttpRequest) {
        let token =
            actix_web::web::Query::<HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.get("token").filter(|t| !t.is_empty()).cloned())
                .or_else(|| crate::http::bearer_token(req).map(str::to_owned));
        if let Ok(mut m) = self.conns.lock() {
            m.insert(
                socket.sid.clone(),
                Conn {
                    handshake_token: token,
                    ..Conn::default()
                },
            );
        }
        // A connection that never connects to a namespace is closed.
        let (socket, timeout, me) = (Arc::clone(socket), self.connect_timeout, self.me.clone());
        actix_web::rt::spawn(async move {
            tokio::time::sleep(timeout).await;
            let idle = me
                .upgrade()
                .and_then(|this| this.with_conn(&socket.sid, |c| c.namespaces.is_empty()))
                .unwrap_or(false);
            if idle {
                socket.close("connect timeout");
            }
        });
    }

    fn on_message(&self, socket: &Arc<EioSocket>, data: EioData) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        match data {
            EioData::Text(text) => match SioPacket::decode(&text) {
                Ok(p) if p.attachments > 0 => {
                    self.with_conn(&socket.sid, |c| c.pending = Some((p, Vec::new())));
                }
                Ok(p) => this.handle(socket, p, Vec::new()),
                Err(_) => socket.close("parse error"),
            },
            EioData::Binary(bytes) => {
                let complete = self
                    .with_conn(&socket.sid, |c| {
                        let (p, parts) = c.pending.as_mut()?;
                        parts.push(bytes);
                        if parts.len() == p.attachments {
                            c.pending.take()
                        } else {
                            None
                        }
                    })
                    .flatten();
                if let Some((p, parts)) = complete {
                    this.handle(socket, p, parts);
                }
            }
        }
    }

    fn on_close(&self, socket: &Arc<EioSocket>, _reason: &str) {
        let conn = self
            .conns
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&socket.sid));
        if let Some(conn) = conn {
            for ns in conn.namespaces.into_values() {
                if let Ns::Session { actor, .. } = ns {
                    actor.do_send(crate::realtime::session::TransportClosed);
                }
            }
        }
    }
}
