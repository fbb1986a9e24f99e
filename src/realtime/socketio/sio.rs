//! Socket.IO v5 on top of Engine.IO: namespaces, CONNECT/CONNECT_ERROR/DISCONNECT, events and
//! acks, binary attachments. In production the default namespace is the edge of a session actor
//! (canonical events in, canonical events out); in conformance mode it is the echo behaviour the
//! official protocol suite expects.

use super::engine::{EioData, EioHandler, EioSocket};
use super::packet::{fill_placeholders, SioKind, SioPacket};
use super::recovery::{self, Found, Keeper, Tracker};
use crate::auth::{Auth, Identity};
use crate::error::ErrorCode;
use crate::realtime::dialect::{Dialect, Translator};
use crate::realtime::events;
use crate::realtime::protocol::{ClientFrame, Outbound, ServerEvent};
use crate::realtime::registry::SessionLabels;
use crate::realtime::session::{CloseSignal, Link, OwnSends, SessionActor};
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
pub(crate) enum SioApp {
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
pub(crate) struct Production {
    /// Token checks.
    pub auth: Auth,
    /// The realtime engine.
    pub engine: Engine,
    /// Where dropped sessions are kept for connection state recovery.
    pub keeper: Arc<Keeper>,
}

/// Per-connection state.
#[derive(Default)]
struct Conn {
    /// `?token=` or `Authorization` of the handshake request.
    handshake_token: Option<String>,
    /// `?dialect=` of the handshake request.
    handshake_dialect: Option<String>,
    /// The dialect of the listener the handshake came through (`LISTEN`), when known.
    listener_dialect: Option<&'static Dialect>,
    /// Connected namespaces.
    namespaces: HashMap<String, Ns>,
    /// A binary packet waiting for its attachments.
    pending: Option<(SioPacket, Vec<Bytes>)>,
    /// The client reads offsets appended to events (connection state recovery is offered).
    offsets: bool,
}

enum Ns {
    /// Conformance echo.
    Echo,
    /// Waiting for the token check.
    Connecting,
    /// Connected without a token: waiting for `authenticate` (seed 000). Events that arrive
    /// meanwhile wait here, at most [`MAX_WAITING_FRAMES`].
    AwaitingAuth {
        dialect: &'static Dialect,
        waiting: Vec<ClientFrame>,
        opening: Opening,
    },
    /// `authenticate` succeeded and the session actor is being started: events that arrive
    /// meanwhile wait here (at most [`MAX_WAITING_FRAMES`]) and go to the session, in order,
    /// when it is bridged.
    Authenticating { waiting: Vec<ClientFrame> },
    /// Bridged to a session actor; frames go through a bounded, ordered queue (of boxes: a
    /// channel keeps a block of 32 slots per connection, 256 bytes boxed instead of ~3 KiB).
    Session {
        frames: mpsc::Sender<Box<ClientFrame>>,
        actor: Addr<SessionActor>,
        acks: Arc<Mutex<AckTable>>,
        /// Offsets and cursors, when the session offers recovery.
        tracker: Option<Arc<Mutex<Tracker>>>,
    },
}

/// A reconnecting client's kept session and the last offset it received.
struct Resume {
    found: Found,
    seen: u64,
}

/// Events a tokenless connection may send before its `authenticate` is checked.
const MAX_WAITING_FRAMES: usize = 32;
/// Server emits awaiting the client's acknowledgement, per connection; the oldest is forgotten
/// first (an unacknowledged event only means no delivered receipt).
const MAX_PENDING_ACKS: usize = 256;

/// Server→client emits that asked for an acknowledgement: ack id → (conversation, seq) of the
/// message, so the acknowledgement becomes a delivered receipt.
#[derive(Debug, Default)]
pub(crate) struct AckTable {
    next: u64,
    order: std::collections::VecDeque<u64>,
    waiting: HashMap<u64, (i64, i64)>,
}

impl AckTable {
    /// Registers an emit; returns its ack id.
    pub(crate) fn register(&mut self, delivery: (i64, i64)) -> u64 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        if self.order.len() >= MAX_PENDING_ACKS {
            if let Some(old) = self.order.pop_front() {
                self.waiting.remove(&old);
            }
        }
        self.order.push_back(id);
        self.waiting.insert(id, delivery);
        id
    }

    /// The message an acknowledgement refers to (once).
    pub(crate) fn take(&mut self, id: u64) -> Option<(i64, i64)> {
        let found = self.waiting.remove(&id)?;
        self.order.retain(|x| *x != id);
        Some(found)
    }
}

/// The Socket.IO layer.
pub(crate) struct SioHandler {
    app: SioApp,
    conns: Mutex<HashMap<String, Conn>>,
    connect_timeout: Duration,
    me: std::sync::Weak<SioHandler>,
    /// Live sessions offering recovery: private id → their Engine.IO socket (a client that
    /// comes back while its old transport is not torn down yet closes it first).
    live: Mutex<HashMap<String, std::sync::Weak<EioSocket>>>,
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
    pub(crate) fn new(app: SioApp, connect_timeout: Duration) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            app,
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
            me: me.clone(),
            live: Mutex::new(HashMap::new()),
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
                if let Some(Ns::Session { actor, tracker, .. }) = ns {
                    // A client that leaves on purpose does not come back recovered.
                    if let Some(t) = tracker {
                        lock(&t).recoverable = false;
                    }
                    actor.do_send(crate::realtime::session::TransportClosed);
                }
            }
            SioKind::Event | SioKind::BinaryEvent => self.event(socket, p, attachments),
            // Acks from the client answer server emits with an ack id: a new message the client
            // acknowledges is delivered to it.
            SioKind::Ack | SioKind::BinaryAck => {
                let Some(id) = p.id else { return };
                let found = self
                    .with_conn(&socket.sid, |c| match c.namespaces.get(&p.nsp) {
                        Some(Ns::Session { frames, acks, .. }) => acks
                            .lock()
                            .ok()
                            .and_then(|mut t| t.take(id))
                            .map(|d| (frames.clone(), d)),
                        _ => None,
                    })
                    .flatten();
                if let Some((frames, (conversation, seq))) = found {
                    let _ = frames.try_send(Box::new(ClientFrame {
                        event: events::RECEIPT_DELIVERED.into(),
                        payload: json!({"conversationId": conversation, "upTo": seq}),
                        reply_to: None,
                    }));
                }
            }
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
                let (handshake_token, handshake_dialect, listener_dialect) = self
                    .with_conn(&socket.sid, |c| {
                        (
                            c.handshake_token.clone(),
                            c.handshake_dialect.clone(),
                            c.listener_dialect,
                        )
                    })
                    .unwrap_or_default();
                let listener_dialect = listener_dialect.unwrap_or(engine.config.default_dialect.0);
                let requested = auth
                    .get("dialect")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or(handshake_dialect);
                let dialect = match Dialect::for_connection(requested.as_deref(), listener_dialect)
                {
                    Ok(d) => d,
                    Err(e) => {
                        let refusal = packet(
                            SioKind::ConnectError,
                            "/",
                            None,
                            Some(json!({"message": e.to_string(), "data": {"code": e.code()}})),
                        );
                        send_packet(socket, &refusal, &[]);
                        return;
                    }
                };
                let token = auth
                    .get("token")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or(handshake_token);
                let offsets = !engine.config.socketio_recovery.is_zero()
                    && self.with_conn(&socket.sid, |c| c.offsets).unwrap_or(false);
                // A reconnecting socket.io-client names its kept session and last offset.
                let pid = auth
                    .get("pid")
                    .and_then(Value::as_str)
                    .filter(|_| offsets)
                    .map(str::to_owned);
                let seen = recovery::parse_offset(auth.get("offset"));
                self.with_conn(&socket.sid, |c| {
                    c.namespaces.insert("/".into(), Ns::Connecting)
                });
                let (checker, engine, socket, this, prod) = (
                    checker.clone(),
                    engine.clone(),
                    Arc::clone(socket),
                    Arc::clone(self),
                    prod.clone(),
                );
                let Some(token) = token else {
                    // No token at all: the client may still `authenticate` (seed 000), or come
                    // back on its kept session (checked again without the token).
                    actix_web::rt::spawn(async move {
                        if let Some(pid) = pid {
                            if let Some(resume) =
                                this.resume(&prod, &pid, seen, None, dialect).await
                            {
                                match resume.found.identity(&checker).await {
                                    Ok(identity) => {
                                        let opening = this.opening(offsets);
                                        this.bridge(
                                            &socket,
                                            identity,
                                            engine,
                                            dialect,
                                            opening,
                                            Some(resume),
                                        );
                                        return;
                                    }
                                    Err(e) => {
                                        engine.metrics.socketio_recovery(e.code().as_str());
                                        tracing::info!(
                                            code = e.code().as_str(),
                                            "socket.io session not recovered"
                                        );
                                    }
                                }
                            }
                        }
                        this.with_conn(&socket.sid, |c| c.namespaces.remove("/"));
                        this.await_authenticate(
                            &socket,
                            dialect,
                            engine.config.socketio_auth_timeout,
                            offsets,
                        );
                    });
                    return;
                };
                actix_web::rt::spawn(async move {
                    match checker.authenticate(&token).await {
                        Ok(identity) => {
                            let resume = match pid {
                                Some(pid) => {
                                    this.resume(
                                        &prod,
                                        &pid,
                                        seen,
                                        Some(identity.user_id()),
                                        dialect,
                                    )
                                    .await
                                }
                                None => None,
                            };
                            let opening = this.opening(offsets);
                            this.bridge(&socket, identity, engine, dialect, opening, resume);
                        }
                        Err(_) => {
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

    /// A fresh session's socket id, and a private id when recovery is offered.
    fn opening(&self, offsets: bool) -> Opening {
        Opening {
            sid: crate::auth::tokens::random_id().unwrap_or_default(),
            pid: offsets.then(|| recovery::new_pid().ok()).flatten(),
            announce: true,
            waiting: Vec::new(),
        }
    }

    /// Accepts a tokenless connection on the default namespace and gives it `timeout` to send
    /// `authenticate`.
    fn await_authenticate(
        self: &Arc<Self>,
        socket: &Arc<EioSocket>,
        dialect: &'static Dialect,
        timeout: Duration,
        offsets: bool,
    ) {
        // The CONNECT reply goes out now: it carries the private id the session will have.
        let opening = Opening {
            announce: false,
            ..self.opening(offsets)
        };
        send_packet(
            socket,
            &connect_packet(&opening.sid, opening.pid.as_deref()),
            &[],
        );
        self.with_conn(&socket.sid, |c| {
            c.namespaces.insert(
                "/".into(),
                Ns::AwaitingAuth {
                    dialect,
                    waiting: Vec::new(),
                    opening,
                },
            )
        });
        let (socket, this) = (Arc::clone(socket), Arc::clone(self));
        actix_web::rt::spawn(async move {
            tokio::time::sleep(timeout).await;
            let waiting = this
                .with_conn(&socket.sid, |c| {
                    matches!(c.namespaces.get("/"), Some(Ns::AwaitingAuth { .. }))
                })
                .unwrap_or(false);
            if waiting {
                tracing::info!("socket.io client sent no token and no `authenticate`; closing");
                this.refuse_authentication(&socket, "authentication timeout");
            }
        });
    }

    /// Tells a tokenless client its `authenticate` failed or never came, and disconnects it.
    fn refuse_authentication(&self, socket: &Arc<EioSocket>, why: &str) {
        self.with_conn(&socket.sid, |c| c.namespaces.remove("/"));
        let error = json!({"code": ErrorCode::Unauthorized, "message": why});
        send_packet(
            socket,
            &packet(
                SioKind::Event,
                "/",
                None,
                Some(json!([events::ERROR, error])),
            ),
            &[],
        );
        send_packet(socket, &packet(SioKind::Disconnect, "/", None, None), &[]);
        // A polling client still gets both packets (and so `io server disconnect`).
        socket.close_flushing("unauthorized");
    }

    /// Handles `authenticate` (seed 000) on a connection that came without a token.
    fn authenticate_event(
        self: &Arc<Self>,
        socket: &Arc<EioSocket>,
        args: &[Value],
        ack: Option<u64>,
    ) {
        let SioApp::Production(prod) = &self.app else {
            return;
        };
        let token = match args.get(1) {
            Some(Value::String(t)) => Some(t.clone()),
            Some(Value::Object(o)) => o.get("token").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            self.refuse_authentication(socket, "authenticate needs a token");
            return;
        };
        let (checker, engine, socket, this) = (
            prod.auth.clone(),
            prod.engine.clone(),
            Arc::clone(socket),
            Arc::clone(self),
        );
        actix_web::rt::spawn(async move {
            match checker.authenticate(&token).await {
                Ok(identity) => {
                    let user = identity.user_id();
                    // Events keep queuing (now as `Authenticating`) until the session takes
                    // over the namespace in `bridge`.
                    let waiting = this
                        .with_conn(&socket.sid, |c| match c.namespaces.remove("/") {
                            Some(Ns::AwaitingAuth {
                                dialect,
                                waiting,
                                opening,
                            }) => {
                                c.namespaces.insert(
                                    "/".into(),
                                    Ns::Authenticating {
                                        waiting: Vec::new(),
                                    },
                                );
                                Some((dialect, waiting, opening))
                            }
                            other => {
                                if let Some(ns) = other {
                                    c.namespaces.insert("/".into(), ns);
                                }
                                None
                            }
                        })
                        .flatten();
                    let Some((dialect, waiting, opening)) = waiting else {
                        return;
                    };
                    if let Some(id) = ack {
                        let reply = packet(
                            SioKind::Ack,
                            "/",
                            Some(id),
                            Some(json!([{"ok": true, "userId": user.to_string()}])),
                        );
                        send_packet(&socket, &reply, &[]);
                    }
                    let opening = Opening { waiting, ..opening };
                    this.bridge(&socket, identity, engine, dialect, opening, None);
                }
                Err(e) => {
                    tracing::info!(code = e.code().as_str(), "socket.io authenticate refused");
                    this.refuse_authentication(&socket, "invalid or expired token");
                }
            }
        });
    }

    /// Starts the session actor for an authenticated connection and wires both directions.
    /// `opening`: the socket id and private id, whether the CONNECT reply is still to be
    /// sent, and frames that arrived before the session existed; `resume`: a kept session to recover (the CONNECT reply then waits for its replay).
    fn bridge(
        self: &Arc<Self>,
        socket: &Arc<EioSocket>,
        identity: Identity,
        engine: Engine,
        dialect: &'static Dialect,
        mut opening: Opening,
        resume: Option<Resume>,
    ) {
        let waiting = std::mem::take(&mut opening.waiting);
        let user = identity.user_id();
        let cap = engine.config.socketio_recovery_max_events;
        let tracker = opening.pid.clone().map(|pid| {
            Arc::new(Mutex::new(Tracker::new(
                pid,
                opening.sid.clone(),
                &identity,
                cap,
            )))
        });
        let replay_identity = resume.as_ref().map(|_| identity.clone());
        let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(engine.config.outbound_queue);
        let close = CloseSignal::new();
        let translator = Translator::with_legacy(dialect, &engine.legacy);
        let mut link = Link::new(out_tx, Arc::clone(&close), Arc::clone(&translator));
        if let Some(t) = &tracker {
            let t = Arc::clone(t);
            link = link.with_own_sends(OwnSends(Arc::new(move |p| lock(&t).own(p))));
        }
        let session = SessionActor::new(
            identity,
            engine.clone(),
            link,
            SessionLabels {
                transport: "socket.io",
                dialect: dialect.name,
            },
        );
        let key = session.key();
        if let Some(t) = &tracker {
            lock(t).key = key;
        }
        let actor = session.start();
        let (frames_tx, mut frames_rx) = mpsc::channel::<Box<ClientFrame>>(256);
        for frame in waiting {
            let _ = frames_tx.try_send(Box::new(frame));
        }
        let acks = Arc::new(Mutex::new(AckTable::default()));
        let registered = self
            .with_conn(&socket.sid, |c| {
                // Events that came while the session was being started follow the earlier
                // ones, ahead of any that finds the session (queued under the same lock).
                if let Some(Ns::Authenticating { waiting }) = c.namespaces.remove("/") {
                    for frame in waiting {
                        let _ = frames_tx.try_send(Box::new(frame));
                    }
                }
                c.namespaces.insert(
                    "/".into(),
                    Ns::Session {
                        frames: frames_tx,
                        actor: actor.clone(),
                        acks: Arc::clone(&acks),
                        tracker: tracker.clone(),
                    },
                );
            })
            .is_some();
        if !registered {
            actor.do_send(crate::realtime::session::TransportClosed);
            return;
        }
        if let Some(pid) = &opening.pid {
            if let Ok(mut live) = self.live.lock() {
                live.insert(pid.clone(), Arc::downgrade(socket));
            }
        }
        if let (Some(t), None) = (&tracker, &resume) {
            start_tracking(&engine, user, t);
        }
        if opening.announce && resume.is_none() {
            send_packet(
                socket,
                &connect_packet(&opening.sid, opening.pid.as_deref()),
                &[],
            );
        }
        // Inbound: one frame at a time, in order.
        let inbound_actor = actor.clone();
        actix_web::rt::spawn(async move {
            while let Some(frame) = frames_rx.recv().await {
                if inbound_actor.send(*frame).await.is_err() {
                    break;
                }
            }
        });
        // Outbound: canonical items become Socket.IO packets.
        let out_socket = Arc::clone(socket);
        let this = Arc::clone(self);
        actix_web::rt::spawn(async move {
            if let (Some(resume), Some(t), Some(identity)) = (resume, &tracker, replay_identity) {
                // Boxed: the replay's state (database reads included) is large, and held
                // inline it would size this task for the connection's whole life.
                Box::pin(this.recover(
                    &out_socket,
                    &engine,
                    &identity,
                    &translator,
                    t,
                    resume,
                    &opening,
                ))
                .await;
            }
            loop {
                tokio::select! {
                    // A close request wins over what is queued (the session stops right after
                    // it, and its queue closes with it).
                    biased;
                    req = close.requested() => {
                        if !matches!(req.code, 1000 | 1001 | crate::realtime::session::CLOSE_SLOW_CONSUMER) {
                            // Kicked (signed out, banned, roles changed): not recoverable.
                            if let Some(t) = &tracker {
                                lock(t).recoverable = false;
                            }
                        }
                        if req.code == 1001 {
                            // Shutdown: no DISCONNECT packet (the client would not reconnect);
                            // flush what is queued, then close the transport with 1001.
                            while let Ok(item) = out_rx.try_recv() {
                                match (&item, &tracker) {
                                    (Outbound::Event(ev), Some(t)) => {
                                        emit_tracked(&out_socket, t, ev);
                                    }
                                    _ => {
                                        send_packet(&out_socket, &encode(&item), &[]);
                                    }
                                }
                            }
                            out_socket.close(super::engine::SERVER_SHUTDOWN);
                            break;
                        }
                        send_packet(&out_socket, &packet(SioKind::Disconnect, "/", None, None), &[]);
                        out_socket.close("server disconnect");
                        break;
                    }
                    item = out_rx.recv() => {
                        let Some(item) = item else {
                            // Every sender is gone without a close request: close anyway.
                            out_socket.close("session ended");
                            break;
                        };
                        let sent = match &item {
                            Outbound::Event(ev) => match &tracker {
                                // Recovery offered: every event carries its offset (and asks
                                // for no acknowledgement: socket.io-client records the offset
                                // only of events without one).
                                Some(t) => {
                                    if lock(t).replayed(ev.position()) {
                                        continue;
                                    }
                                    emit_tracked(&out_socket, t, ev)
                                }
                                // Pushed events: the arguments' JSON is encoded once per event
                                // and shared; only the packet prefix (and an ack id) is per
                                // connection. New messages ask for an acknowledgement: it marks
                                // them delivered.
                                None => {
                                    let id = match (ev.delivery, acks.lock()) {
                                        (Some(delivery), Ok(mut table)) => Some(table.register(delivery)),
                                        _ => None,
                                    };
                                    let text = super::packet::encode_raw(
                                        SioKind::Event,
                                        "/",
                                        id,
                                        0,
                                        &ev.socketio_args(),
                                    );
                                    out_socket.send(EioData::Text(text))
                                }
                            },
                            other => send_packet(&out_socket, &encode(other), &[]),
                        };
                        if !sent {
                            break;
                        }
                    }
                }
            }
            // The transport is gone: keep what a recovery needs. Events still queued were never
            // sent: they take offsets no client holds, so their places are replayed.
            if let Some(t) = &tracker {
                while let Ok(item) = out_rx.try_recv() {
                    if let Outbound::Event(ev) = item {
                        lock(t).stamp_event(&ev);
                    }
                }
                if let SioApp::Production(prod) = &this.app {
                    let kept = lock(t).kept(
                        user,
                        dialect.name,
                        translator.left_rooms(),
                        engine.config.socketio_recovery,
                    );
                    if let Some(row) = kept {
                        prod.keeper.keep(row);
                    }
                }
                let pid = lock(t).pid.clone();
                if let Ok(mut live) = this.live.lock() {
                    live.remove(&pid);
                }
            }
        });
    }

    /// Replays what a recovering session missed, then answers its CONNECT: with its old socket
    /// id and private id when the replay could be read, else as a fresh session.
    #[allow(clippy::too_many_arguments)]
    async fn recover(
        &self,
        socket: &Arc<EioSocket>,
        engine: &Engine,
        identity: &Identity,
        translator: &Arc<Translator>,
        tracker: &Arc<Mutex<Tracker>>,
        resume: Resume,
        opening: &Opening,
    ) {
        let max = engine.config.socketio_recovery_max_events;
        match recovery::replay(&engine.db, resume.found, resume.seen, identity, max).await {
            Ok(replay) => {
                let pid = replay.tracker.pid.clone();
                let sid = replay.tracker.sid.clone();
                translator.restore_left(replay.left);
                let key = lock(tracker).key;
                *lock(tracker) = replay.tracker;
                lock(tracker).key = key;
                if let (Some(fresh), Ok(mut live)) = (&opening.pid, self.live.lock()) {
                    live.remove(fresh);
                    live.insert(pid.clone(), Arc::downgrade(socket));
                }
                engine.metrics.socketio_recovery("recovered");
                tracing::info!(
                    user = identity.user_id(),
                    events = replay.events.len(),
                    "socket.io session recovered"
                );
                send_packet(socket, &connect_packet(&sid, Some(&pid)), &[]);
                for ev in &replay.events {
                    for out in translator.outbound(ev).iter() {
                        emit_tracked(socket, tracker, out);
                    }
                }
                // A call waiting for the dropped device takes this one; a call still ringing
                // rings it again.
                engine
                    .resume_calls(identity.user_id(), replay.previous_key, key)
                    .await;
            }
            Err(refusal) => {
                engine.metrics.socketio_recovery(refusal.code());
                tracing::info!(
                    user = identity.user_id(),
                    reason = refusal.code(),
                    "socket.io session not recovered; starting a fresh one"
                );
                start_tracking(engine, identity.user_id(), tracker);
                send_packet(
                    socket,
                    &connect_packet(&opening.sid, opening.pid.as_deref()),
                    &[],
                );
            }
        }
    }

    /// Finds the kept session a reconnecting client names: its old transport here is torn
    /// down and kept first. `None` when it cannot be recovered (the client gets a fresh one).
    async fn resume(
        &self,
        prod: &Production,
        pid: &str,
        seen: Result<u64, recovery::Refusal>,
        user: Option<i64>,
        dialect: &'static Dialect,
    ) -> Option<Resume> {
        let refused = |r: recovery::Refusal| {
            prod.engine.metrics.socketio_recovery(r.code());
            tracing::info!(reason = r.code(), "socket.io session not recovered");
        };
        let seen = match seen {
            Ok(seen) => seen,
            Err(r) => {
                refused(r);
                return None;
            }
        };
        let old = self
            .live
            .lock()
            .ok()
            .and_then(|m| m.get(pid).and_then(std::sync::Weak::upgrade));
        if let Some(old) = old {
            old.close("replaced by a recovering connection");
        }
        let hash = recovery::pid_hash(pid);
        let deadline = tokio::time::Instant::now() + prod.engine.config.socketio_recovery_wait;
        while tokio::time::Instant::now() < deadline {
            let live = self.live.lock().is_ok_and(|m| m.contains_key(pid));
            if !live && !prod.keeper.is_pending(&hash) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match recovery::find(&prod.engine.db, pid, user).await {
            Ok(found) if found.dialect() == dialect.name => Some(Resume { found, seen }),
            Ok(_) => {
                refused(recovery::Refusal::Unknown);
                None
            }
            Err(r) => {
                refused(r);
                None
            }
        }
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
            Frames(mpsc::Sender<Box<ClientFrame>>),
            Authenticate,
            /// `authenticate` again while the first one's session is being started.
            Authenticating,
            Waiting,
            Missing,
        }
        let route = self
            .with_conn(&socket.sid, |c| match c.namespaces.get(&p.nsp) {
                Some(Ns::Echo) => Route::Echo,
                Some(Ns::Session { frames, .. }) => Route::Frames(frames.clone()),
                Some(Ns::AwaitingAuth { .. }) if name == "authenticate" => Route::Authenticate,
                Some(Ns::Authenticating { .. }) if name == "authenticate" => Route::Authenticating,
                Some(Ns::AwaitingAuth { .. } | Ns::Authenticating { .. }) => Route::Waiting,
                Some(Ns::Connecting) | None => Route::Missing,
            })
            .unwrap_or(Route::Missing);
        match route {
            Route::Missing => {}
            Route::Authenticate => self.authenticate_event(socket, &args, p.id),
            Route::Waiting => {
                let Some(frame) = client_frame(&name, &args, &attachments, p.id) else {
                    socket.close("invalid payload");
                    return;
                };
                let kept = self
                    .with_conn(&socket.sid, |c| match c.namespaces.get_mut("/") {
                        Some(Ns::AwaitingAuth { waiting, .. } | Ns::Authenticating { waiting })
                            if waiting.len() < MAX_WAITING_FRAMES =>
                        {
                            waiting.push(frame);
                            true
                        }
                        _ => false,
                    })
                    .unwrap_or(false);
                if !kept {
                    let err = json!({"code": ErrorCode::Unauthorized, "message": "send `authenticate` with a token first", "ref": p.id.map_or(json!(name), Value::from)});
                    send_packet(
                        socket,
                        &packet(SioKind::Event, "/", None, Some(json!([events::ERROR, err]))),
                        &[],
                    );
                }
            }
            // Already authenticated (token in the handshake, or an earlier `authenticate`):
            // `authenticate` is acknowledged.
            Route::Authenticating => send_authenticated_ack(socket, p.id),
            Route::Frames(_) if name == "authenticate" => send_authenticated_ack(socket, p.id),
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
                let Some(frame) = client_frame(&name, &args, &attachments, p.id) else {
                    socket.close("invalid payload");
                    return;
                };
                if frames.try_send(Box::new(frame)).is_err() {
                    if let SioApp::Production(prod) = &self.app {
                        prod.engine
                            .metrics
                            .rate_limited(crate::metrics::Limit::InFlight);
                    }
                    let err = json!({"code": ErrorCode::RateLimited, "message": "too many frames in flight", "ref": p.id.map_or(json!(name), Value::from)});
                    let reply = match p.id {
                        Some(id) => {
                            packet(SioKind::Ack, "/", Some(id), Some(json!([{"error": err}])))
                        }
                        None => {
                            packet(SioKind::Event, "/", None, Some(json!([events::ERROR, err])))
                        }
                    };
                    send_packet(socket, &reply, &[]);
                }
            }
        }
    }
}

/// How a bridged session opens.
#[derive(Clone, Debug)]
struct Opening {
    /// The Socket.IO socket id.
    sid: String,
    /// The private id (recovery offered).
    pid: Option<String>,
    /// The CONNECT reply is still to be sent.
    announce: bool,
    /// Frames that arrived before the session existed, handled first.
    waiting: Vec<ClientFrame>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Acknowledges an `authenticate` on a connection that is authenticated already (or being).
fn send_authenticated_ack(socket: &Arc<EioSocket>, id: Option<u64>) {
    if let Some(id) = id {
        send_packet(
            socket,
            &packet(SioKind::Ack, "/", Some(id), Some(json!([{"ok": true}]))),
            &[],
        );
    }
}

/// The CONNECT reply: the socket id, and the private id when recovery is offered.
fn connect_packet(sid: &str, pid: Option<&str>) -> SioPacket {
    let data = match pid {
        Some(pid) => json!({"sid": sid, "pid": pid}),
        None => json!({"sid": sid}),
    };
    packet(SioKind::Connect, "/", None, Some(data))
}

/// Sends an event with the session's next offset appended.
fn emit_tracked(socket: &EioSocket, tracker: &Mutex<Tracker>, ev: &ServerEvent) -> bool {
    let mut t = lock(tracker);
    t.confirm(socket.confirmed());
    let offset = t.stamp_event(ev);
    let args = recovery::with_offset(&ev.socketio_args(), offset);
    let sent = socket.send(EioData::Text(super::packet::encode_raw(
        SioKind::Event,
        "/",
        None,
        0,
        &args,
    )));
    socket.mark_sent(offset);
    sent
}

/// Reads where a new session's conversations stand (its starting point).
fn start_tracking(engine: &Engine, user: i64, tracker: &Arc<Mutex<Tracker>>) {
    let (db, tracker) = (engine.db.clone(), Arc::clone(tracker));
    actix_web::rt::spawn(async move {
        match db
            .run(move |conn| crate::db::recovery::positions(conn, user))
            .await
        {
            Ok(rows) => lock(&tracker).start_from(rows),
            Err(e) => tracing::warn!(user, error = %e, "socket.io recovery: starting point unread"),
        }
    });
}

/// An EVENT's name, first argument (binary placeholders filled in) and ack id as a frame;
/// `None` when a placeholder does not match the attachments.
fn client_frame(
    name: &str,
    args: &[Value],
    attachments: &[Bytes],
    ack: Option<u64>,
) -> Option<ClientFrame> {
    let mut payload = args.get(1).cloned().unwrap_or(Value::Null);
    fill_placeholders(&mut payload, attachments).ok()?;
    Some(ClientFrame {
        event: name.to_owned(),
        payload,
        reply_to: ack.map(Value::from),
    })
}

/// A canonical outbound item as a Socket.IO packet on the default namespace: events are EVENTs,
/// replies to frames with an id are ACKs (`[payload]`, or `[{"error": {...}}]`), other errors
/// are `error` events.
pub(crate) fn encode(item: &Outbound) -> SioPacket {
    match item {
        Outbound::Event(ev) => packet(
            SioKind::Event,
            "/",
            None,
            Some(json!([ev.name, ev.payload()])),
        ),
        Outbound::Ack(a) => packet(SioKind::Ack, "/", a.id.as_u64(), Some(json!([a.payload]))),
        Outbound::Error(e) if e.id.as_ref().and_then(Value::as_u64).is_some() => packet(
            SioKind::Ack,
            "/",
            e.id.as_ref().and_then(Value::as_u64),
            Some(json!([{"error": e.error}])),
        ),
        Outbound::Error(e) => packet(
            SioKind::Event,
            "/",
            None,
            Some(json!([events::ERROR, e.error])),
        ),
    }
}

impl EioHandler for SioHandler {
    fn on_open(&self, socket: &Arc<EioSocket>, req: &HttpRequest) {
        let query =
            actix_web::web::Query::<HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .map(actix_web::web::Query::into_inner);
        let token = query
            .as_ref()
            .and_then(|q| q.get("token").filter(|t| !t.is_empty()).cloned())
            .or_else(|| crate::http::bearer_token(req).map(str::to_owned));
        if let Ok(mut m) = self.conns.lock() {
            m.insert(
                socket.sid.clone(),
                Conn {
                    handshake_token: token,
                    handshake_dialect: query.and_then(|q| q.get("dialect").cloned()),
                    listener_dialect: req
                        .app_data::<actix_web::web::Data<crate::state::AppState>>()
                        .map(|state| state.default_dialect(req)),
                    offsets: recovery::offsets_welcome(req),
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
