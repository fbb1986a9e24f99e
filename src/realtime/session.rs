//! One session actor per connection, whatever the transport. It owns the connection's identity
//! (from the verified token only), turns canonical frames into engine calls, and writes events
//! and replies into the connection's **bounded** outbound queue. A client that stops reading
//! fills that queue and is disconnected instead of growing memory.

use super::dialect::Translator;
use super::directory::SessionHandle;
use super::protocol::{ClientFrame, Command, Outbound, Position, PresenceSubscribe, WireError};
use super::registry::{Announce, CloseSession, Connect, Disconnect, SessionLabels, WatchPresence};
use super::Engine;
use crate::auth::Identity;
use crate::db::conversations::{self as convs, ReceiptKind};
use crate::error::{AppError, AppResult};
use crate::metrics::{Limit, Queue};
use crate::realtime::events;
use actix::prelude::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Close code for a connection whose outbound queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
/// Close code for revoked or invalid credentials (seed 004).
pub const CLOSE_UNAUTHORIZED: u16 = 4001;

/// How the session asks its transport to close the connection.
#[derive(Clone, Debug)]
pub(crate) struct CloseRequest {
    /// WebSocket close code.
    pub code: u16,
    /// Reason text.
    pub reason: String,
}

/// A connection's close request: the first one wins, the transport waits for it.
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    request: std::sync::Mutex<Option<CloseRequest>>,
    made: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl CloseSignal {
    /// A new signal, shared by the session's parts.
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Asks the transport to close; answers false when a close was already requested.
    pub(crate) fn request(&self, req: CloseRequest) -> bool {
        if self.made.swap(true, Ordering::SeqCst) {
            return false;
        }
        *self
            .request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(req);
        self.notify.notify_one();
        true
    }

    /// Waits for the close request and takes it (one transport task waits; cancel-safe).
    pub(crate) async fn requested(&self) -> CloseRequest {
        loop {
            if let Some(req) = self
                .request
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                return req;
            }
            self.notify.notified().await;
        }
    }
}

/// Told of each message the session itself sent (its own fan-out skips it): a transport that
/// tracks its client's place (Socket.IO recovery) counts it as known to the client.
#[derive(Clone)]
pub(crate) struct OwnSends(pub Arc<dyn Fn(Position) + Send + Sync>);

impl std::fmt::Debug for OwnSends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnSends")
    }
}

/// The transport side of a session: a bounded queue of outbound items and a close signal.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// Outbound events and replies (bounded: `OUTBOUND_QUEUE`).
    pub out: mpsc::Sender<Outbound>,
    /// Close request (the first one wins).
    pub close: Arc<CloseSignal>,
    /// The connection's dialect: events are translated as they are queued.
    pub dialect: Arc<Translator>,
    /// Told of the session's own committed sends, when the transport wants to know.
    pub own_sends: Option<OwnSends>,
}

/// What became of an item offered to a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued for the transport.
    Queued,
    /// The queue was full: the connection is being closed as a slow consumer.
    Full,
    /// The transport is gone.
    Closed,
}

impl Link {
    /// A link for a connection speaking `dialect`.
    pub(crate) fn new(
        out: mpsc::Sender<Outbound>,
        close: Arc<CloseSignal>,
        dialect: Arc<Translator>,
    ) -> Self {
        Self {
            out,
            close,
            dialect,
            own_sends: None,
        }
    }

    /// The same link, telling `hook` of the session's own committed sends.
    #[must_use]
    pub(crate) fn with_own_sends(mut self, hook: OwnSends) -> Self {
        self.own_sends = Some(hook);
        self
    }

    /// Queues an item (events in the connection's dialect); a full queue means the client is
    /// not reading: close it.
    pub(crate) fn push(&self, item: Outbound, user: i64) -> bool {
        self.offer(item, user) == Offer::Queued
    }

    /// Like [`Link::push`], telling a full queue from a closed one. Events leave in the
    /// connection's dialect.
    pub(crate) fn offer(&self, item: Outbound, user: i64) -> Offer {
        match item {
            Outbound::Event(ev) if !self.dialect.is_canonical() => self.offer_all(
                self.dialect
                    .outbound(&ev)
                    .iter()
                    .map(|e| Outbound::Event(Arc::clone(e))),
                user,
            ),
            item => self.offer_raw(item, user),
        }
    }

    /// Offers items in order, stopping at the first that is not queued.
    fn offer_all(&self, items: impl IntoIterator<Item = Outbound>, user: i64) -> Offer {
        for item in items {
            let offer = self.offer_raw(item, user);
            if offer != Offer::Queued {
                return offer;
            }
        }
        Offer::Queued
    }

    fn offer_raw(&self, item: Outbound, user: i64) -> Offer {
        match self.out.try_send(item) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    user,
                    "slow consumer: outbound queue full; closing the connection"
                );
                self.close.request(CloseRequest {
                    code: CLOSE_SLOW_CONSUMER,
                    reason: "slow consumer: outbound queue full".into(),
                });
                Offer::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Sends the reply for a frame: an ack with its id, or an error (with its id, or referring
    /// to the event name when the frame had none).
    pub(crate) fn reply(
        &self,
        user: i64,
        reply_to: Option<Value>,
        event: &str,
        result: AppResult<Value>,
    ) -> Offer {
        if !self.dialect.is_canonical() {
            return self.offer_all(self.dialect.reply(event, reply_to, result), user);
        }
        match (result, reply_to) {
            (Ok(payload), Some(id)) => self.offer(Outbound::ack(id, payload), user),
            (Ok(_), None) => Offer::Queued,
            (Err(e), id) => {
                let reference = id.clone().or_else(|| Some(Value::String(event.to_owned())));
                self.offer(
                    Outbound::error(id, WireError::from_app(&e, reference)),
                    user,
                )
            }
        }
    }
}

/// The transport went away.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct TransportClosed;

/// The session actor.
pub(crate) struct SessionActor {
    key: u64,
    identity: Arc<Identity>,
    engine: Engine,
    link: Link,
    labels: SessionLabels,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Command queue of a serial session (started with its first command).
    serial: Option<mpsc::Sender<Job>>,
}

/// Commands one connection may have running at once; more are refused with `rate_limited`.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// Tries at loading a new session's presence audience (the users it shares a conversation
/// with) before its user is announced to nobody: a pool briefly out of connections under load
/// should not leave a user's peers without its presence.
const PEERS_ATTEMPTS: u32 = 3;

/// Pause before the second try at loading a session's presence audience (twice that before
/// the third).
const PEERS_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

impl std::fmt::Debug for SessionActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionActor")
            .field("key", &self.key)
            .field("user", &self.identity.user_id())
            .finish()
    }
}

impl SessionActor {
    /// A session for an authenticated identity.
    pub(crate) fn new(
        identity: Identity,
        engine: Engine,
        link: Link,
        labels: SessionLabels,
    ) -> Self {
        // Before any event reaches the link: ids leave in the type the app's token used.
        link.dialect.set_numeric_ids(identity.numeric_id);
        Self {
            key: engine.next_session_key(),
            identity: Arc::new(identity),
            engine,
            link,
            labels,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            serial: None,
        }
    }

    /// Answers a command that found the connection's command slots full: `rate_limited`.
    fn refuse_busy(&self, job: Job) {
        let err = AppError::RateLimited {
            retry_after_secs: 1,
        };
        self.engine.metrics.rate_limited(Limit::InFlight);
        if self
            .link
            .reply(self.user(), job.reply_to, &job.event, Err(err))
            == Offer::Full
        {
            self.engine.metrics.queue_drop(Queue::Outbound);
        }
    }

    fn runner(&self) -> Runner {
        Runner {
            engine: self.engine.clone(),
            identity: Arc::clone(&self.identity),
            link: self.link.clone(),
            key: self.key,
        }
    }

    /// The session's process-unique key.
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    fn user(&self) -> i64 {
        self.identity.user_id()
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        let user = self.user();
        let engine = self.engine.clone();
        tracing::info!(
            user,
            session = self.key,
            transport = self.labels.transport,
            dialect = self.labels.dialect,
            "session started"
        );
        engine
            .metrics
            .session_opened(self.labels.transport, self.labels.dialect);
        // Enter the directory at once, so events reach the session from its first frame on;
        // the registry supervises it from here, and the presence audience follows when the
        // database answers.
        engine.directory.insert(SessionHandle::new(
            self.key,
            user,
            self.link.clone(),
            ctx.address().recipient(),
        ));
        engine.registry.do_send(Connect {
            user_id: user,
            key: self.key,
            device_session: self.identity.session_id.clone(),
            labels: self.labels,
            close: ctx.address().recipient(),
        });
        actix::spawn(async move {
            let mut attempt = 1;
            let peers = loop {
                match engine.db.run(move |conn| convs::peers_of(conn, user)).await {
                    Ok(peers) => break peers,
                    Err(e) if attempt < PEERS_ATTEMPTS => {
                        tracing::debug!(user, attempt, error = %e, "could not load presence peers; trying again");
                        tokio::time::sleep(PEERS_RETRY_PAUSE * attempt).await;
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::warn!(user, error = %e, "could not load presence peers; the user is announced online to nobody");
                        break Vec::new();
                    }
                }
            };
            engine.registry.do_send(Announce {
                user_id: user,
                peers,
            });
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::info!(user = self.user(), session = self.key, "session ended");
        self.engine
            .metrics
            .session_closed(self.labels.transport, self.labels.dialect);
        self.engine.directory.remove(self.user(), self.key);
        self.engine.registry.do_send(Disconnect {
            user_id: self.user(),
            key: self.key,
        });
        self.link.close.request(CloseRequest {
            code: 1000,
            reason: "session ended".into(),
        });
    }
}

impl Handler<CloseSession> for SessionActor {
    type Result = ();
    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        self.link.close.request(CloseRequest {
            code: msg.code,
            reason: msg.reason,
        });
        ctx.stop();
    }
}

impl Handler<TransportClosed> for SessionActor {
    type Result = ();
    fn handle(&mut self, _: TransportClosed, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ClientFrame> for SessionActor {
    type Result = ();

    fn handle(&mut self, frame: ClientFrame, _: &mut Context<Self>) {
        let received = std::time::Instant::now();
        let user = self.user();
        // The reply is addressed in the client's terms: its own event name.
        let event = frame.event.clone();
        let reply_to = frame.reply_to.clone();
        if self.engine.draining.load(Ordering::SeqCst) {
            let err = AppError::unavailable("the server is shutting down; reconnect shortly");
            self.link.reply(user, reply_to, &event, Err(err));
            return;
        }
        if self.link.dialect.serial() {
            // A dialect frame is translated when its turn comes: its translation may depend on
            // what the commands before it did (seed 004's current call).
            let job = Job {
                work: Work::Frame(frame),
                event,
                reply_to,
                received,
            };
            // One at a time, in arrival order, through a bounded queue.
            let runner = self.runner();
            let queue = self.serial.get_or_insert_with(|| serial_runner(runner));
            self.engine.commands.fetch_add(1, Ordering::SeqCst);
            if let Err(mpsc::error::TrySendError::Full(job)) = queue.try_send(job) {
                self.engine.commands.fetch_sub(1, Ordering::SeqCst);
                self.refuse_busy(job);
            }
            return;
        }
        let command = match parse(&self.link, frame) {
            Ok(c) => c,
            Err(e) => {
                self.link.reply(user, reply_to, &event, Err(e));
                return;
            }
        };
        let job = Job {
            work: Work::Parsed(command),
            event,
            reply_to,
            received,
        };
        // Commands run concurrently, at most MAX_IN_FLIGHT per connection; each replies when
        // done (sends only after their commit).
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.refuse_busy(job);
            return;
        };
        self.engine.commands.fetch_add(1, Ordering::SeqCst);
        let runner = self.runner();
        actix::spawn(async move {
            runner.run(job).await;
            drop(permit);
        });
    }
}

impl Message for ClientFrame {
    type Result = ();
}

/// A parsed command waiting to run, with what its reply needs.
struct Job {
    work: Work,
    event: String,
    reply_to: Option<Value>,
    received: std::time::Instant,
}

/// A command, or a frame still to be translated and parsed.
enum Work {
    Parsed(Command),
    Frame(ClientFrame),
}

/// A frame in the connection's dialect as a canonical command.
fn parse(link: &Link, frame: ClientFrame) -> AppResult<Command> {
    link.dialect
        .inbound(frame)
        .and_then(|f| Command::parse(&f.event, f.payload))
}

/// What running a command needs, detached from the actor.
#[derive(Clone)]
struct Runner {
    engine: Engine,
    identity: Arc<Identity>,
    link: Link,
    key: u64,
}

impl Runner {
    /// A dialect frame as a canonical command. An app of a legacy backend may name imported
    /// messages by their legacy ids: those are looked up (one query) before the command parses.
    async fn translate(&self, frame: ClientFrame) -> AppResult<Command> {
        let dialect = &self.link.dialect;
        if !dialect.takes_legacy_messages() {
            return parse(&self.link, frame);
        }
        let mut frame = dialect.inbound(frame)?;
        let own = matches!(
            frame.event.as_str(),
            events::MESSAGE_EDIT | events::MESSAGE_DELETE
        );
        let (db, legacy) = (&self.engine.db, &self.engine.legacy);
        crate::legacy::resolve_message_refs(db, legacy, &mut frame.payload, own).await?;
        Command::parse(&frame.event, frame.payload)
    }

    /// Runs a job counted in `engine.commands` (shutdown waits for them) and replies.
    async fn run(&self, job: Job) {
        let span = tracing::info_span!(
            "command",
            session = self.key,
            user = self.identity.user_id(),
            event = %job.event
        );
        tracing::Instrument::instrument(self.answer(job), span).await;
        self.engine.commands.fetch_sub(1, Ordering::SeqCst);
    }

    /// Runs a job's command and replies to it.
    async fn answer(&self, job: Job) {
        let (engine, user) = (&self.engine, self.identity.user_id());
        let received = job.received;
        let command = match job.work {
            Work::Parsed(c) => Ok(c),
            // Boxed: a legacy-id lookup's state would otherwise be part of every command's task.
            Work::Frame(f) => Box::pin(self.translate(f)).await,
        };
        let result = match command {
            Ok(c) => {
                let sends = matches!(c, Command::Send(_) | Command::SendDirect(_));
                let result = execute(engine, &self.identity, self.key, c, received).await;
                if let (true, Some(hook), Ok(payload)) = (sends, &self.link.own_sends, &result) {
                    if let Some(p) = Position::of(events::MESSAGE_NEW, payload) {
                        (hook.0)(p);
                    }
                }
                result
            }
            Err(e) => Err(e),
        };
        tracing::debug!(
            error = result.as_ref().err().map(|e| e.code().as_str()),
            ms = received.elapsed().as_secs_f64() * 1000.0,
            "command done"
        );
        if self.link.reply(user, job.reply_to, &job.event, result) == Offer::Full {
            engine.metrics.queue_drop(Queue::Outbound);
        }
    }
}

/// Starts the task that runs a serial session's commands one by one; it ends with the actor
/// (the sender is dropped) or when the queue is closed.
fn serial_runner(runner: Runner) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(MAX_IN_FLIGHT);
    actix::spawn(async move {
        while let Some(job) = rx.recv().await {
            runner.run(job).await;
        }
    });
    tx
}

/// Runs one canonical command for a session and produces its ack payload.
///
/// The state of an awaited future is stored inline in the future that awaits it, so every
/// command's task is as large as the largest arm here. The frequent commands (sends, receipts,
/// typing, joins) run inline; the others, whose state is larger (Redis and database round trips,
/// call set-up), are boxed: a command's task in flight measured 4.5 KiB in a release build, 16 KiB
/// before.
async fn execute(
    engine: &Engine,
    identity: &Identity,
    key: u64,
    command: Command,
    received: std::time::Instant,
) -> AppResult<Value> {
    let user = identity.user_id();
    match command {
        Command::Ping => Ok(json!({"pong": chrono::Utc::now()})),
        Command::Join(c) => engine.join(user, c.conversation_id).await,
        Command::Leave(c) => {
            engine.typing(user, c.conversation_id, false).await?;
            Ok(json!({"conversationId": c.conversation_id.to_string(), "left": true}))
        }
        Command::Send(draft) => Ok(json!(
            engine
                .send_message_at(identity, draft, Some(key), received)
                .await?
        )),
        Command::Edit(e) => Ok(json!(Box::pin(engine.edit_message(
            identity,
            e.message_id,
            e.content,
            Some(key)
        ))
        .await?
        .view())),
        Command::Delete(d) => Ok(json!(Box::pin(engine.delete_message(
            identity,
            d.message_id,
            Some(key)
        ))
        .await?
        .view())),
        Command::TypingStart(c) => {
            engine.typing(user, c.conversation_id, true).await?;
            Ok(json!({"ok": true}))
        }
        Command::TypingStop(c) => {
            engine.typing(user, c.conversation_id, false).await?;
            Ok(json!({"ok": true}))
        }
        Command::Delivered(r) => {
            engine
                .receipt(user, r.conversation_id, ReceiptKind::Delivered, r.cursor)
                .await
        }
        Command::Read(r) => {
            engine
                .receipt(user, r.conversation_id, ReceiptKind::Read, r.cursor)
                .await
        }
        Command::PresenceSubscribe(p) => Box::pin(subscribe_presence(engine, user, key, p)).await,
        Command::Sync(s) => Box::pin(engine.sync(user, s.conversations)).await,
        Command::CallInitiate(c) => Box::pin(engine.start_call(identity, key, c)).await,
        Command::CallAccept(c) => Box::pin(engine.accept_call(identity, key, c)).await,
        Command::CallReject(c) => Box::pin(engine.reject_call(identity, c)).await,
        Command::CallEnd(c) => Box::pin(engine.end_call(identity, c)).await,
        Command::CallRejoin(c) => Box::pin(engine.rejoin_call(identity, key, c)).await,
        Command::CallSignal(kind, s) => Box::pin(engine.signal_call(identity, key, kind, s)).await,
        Command::OpenDirect(d) => Box::pin(engine.open_direct_view(identity, d.user_id)).await,
        Command::SendDirect(d) => Ok(json!(
            Box::pin(engine.send_direct(identity, d, Some(key))).await?
        )),
    }
}

/// `presence:subscribe`: the statuses of up to 1 000 users, and this session watches them.
async fn subscribe_presence(
    engine: &Engine,
    user: i64,
    key: u64,
    p: PresenceSubscribe,
) -> AppResult<Value> {
    if p.user_ids.len() > 1000 {
        return Err(AppError::validation("at most 1000 users per subscription"));
    }
    let mut statuses = engine
        .registry
        .send(WatchPresence {
            user_id: user,
            key,
            targets: p.user_ids,
        })
        .await
        .map_err(|e| AppError::unavailable(format!("registry: {e}")))?;
    // In cluster mode a user may be online on other nodes: Redis has every node's count.
    if let Some(cluster) = &engine.cluster {
        let targets = statuses
            .iter()
            .filter_map(|s| s.user_id.parse().ok())
            .collect();
        let devices = cluster.devices_of(targets).await;
        for s in &mut statuses {
            let all = s
                .user_id
                .parse::<i64>()
                .ok()
                .and_then(|id| devices.get(&id))
                .map_or(0, |n| usize::try_from(*n).unwrap_or(usize::MAX));
            if all > s.devices {
                s.devices = all;
                s.online = true;
                s.last_seen = None;
            }
        }
    }
    // Fill in last-seen times for offline users from the database.
    let offline: Vec<i64> = statuses
        .iter()
        .filter(|s| !s.online && s.last_seen.is_none())
        .filter_map(|s| s.user_id.parse().ok())
        .collect();
    if !offline.is_empty() {
        let seen = engine
            .db
            .run(move |conn| crate::db::accounts::last_seen_of(conn, &offline))
            .await?;
        for s in &mut statuses {
            if let Some(t) = s.user_id.parse::<i64>().ok().and_then(|id| seen.get(&id)) {
                s.last_seen = Some(*t);
            }
        }
    }
    Ok(json!({ "presence": statuses }))
}
