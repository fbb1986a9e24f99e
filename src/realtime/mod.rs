//! The realtime engine: a registry actor, one session actor per connection, one conversation
//! actor per active conversation, one call actor per live call, and a group-commit writer. The
//! engine speaks only canonical commands and events ([`protocol`]): its command structs take
//! the canonical field names only, and its events carry canonical fields only. Transports
//! ([`ws`], [`socketio`]) and dialects ([`dialect`]) translate at the edge: a dialect's tables
//! rename an app's fields (and convert the few values it writes differently) before a command is
//! parsed, and add the fields the app reads to the events it is sent.
//!
//! # Life of a message
//!
//! One `message:send` on `/ws`, from frame to ack and to every recipient (bound → when full):
//! 1. The connection's reader task decodes the frame (`MAX_FRAME_BYTES`, `FRAME_RATE_PER_SEC`)
//!    and awaits room in its [`session::SessionActor`]'s mailbox (256 → the reader waits, so the
//!    socket is back-pressured).
//! 2. The session parses it and runs it as a task (64 per connection → `rate_limited`).
//! 3. [`Engine::send_message`] validates, applies `MESSAGE_RATE_PER_MIN`, finds the
//!    [`conversation::ConversationActor`] in a sharded map (the registry is asked only to start
//!    one, on the thread of the HTTP worker that asked: [`actors::Placement`]) and `try_send`s
//!    to it (4096 → `unavailable`).
//! 4. The conversation checks membership in memory and queues the draft for its writer shard
//!    (`WRITE_QUEUE` / `WRITE_SHARDS` → `unavailable`).
//! 5. The shard commits up to `WRITE_BATCH_MAX` drafts in one transaction: one prepared
//!    statement (pairwise idempotency lookup, conversations locked and seqs reserved, every row
//!    inserted; a batch of one draft has a statement of its own with a smaller plan), alone
//!    when every draft has a client message id, else between `BEGIN` and `COMMIT`, on a
//!    connection of its own (outside `DB_POOL_SIZE`; its plans read tables only
//!    through indexes; with one batch in flight, on the writer's own thread), up to
//!    `WRITE_IN_FLIGHT` batches at once but never two holding one
//!    conversation (a COMMIT whose answer is lost is settled by the transaction's status, then
//!    by one retry; a lone statement's by the retry, which finds its rows by their keys), then
//!    hands each conversation its rows in seq order (bounded by what the shard admitted).
//! 6. The conversation pushes `message:new` for every row above the highest seq it has fanned
//!    out (so a batch re-read after a lost COMMIT answer still goes out once), its payload
//!    written as JSON text once (straight from the row's view; the canonical frame, Socket.IO's
//!    arguments and the cluster bus take that text, and only a dialect's recipient has it
//!    parsed into a value), straight into each recipient session's outbound queue through the [`directory::Directory`] (`OUTBOUND_QUEUE` → that
//!    connection alone is cut off as a slow consumer), and answers the sender's task, which
//!    queues the ack the same way; each connection's writer task writes (TCP_NODELAY), letting
//!    the HTTP/1 dispatcher take what it handed over every `WRITE_TURN_BYTES` so that a burst
//!    does not grow the connection's write buffer for good.

pub mod actors;
pub mod call;
pub(crate) mod cluster;
pub(crate) mod conn;
pub(crate) mod contact;
pub(crate) mod conversation;
pub mod dialect;
pub(crate) mod directory;
pub(crate) mod events;
pub mod last_seen;
pub mod presence;
pub mod protocol;
pub(crate) mod ratelimit;
pub mod registry;
pub(crate) mod runtime;
pub mod session;
pub mod socketio;
pub mod writer;
pub mod ws;

use crate::auth::Identity;
use crate::config::Config;
use crate::db::conversations as convs;
use crate::db::messages::{self, Actor as MessageActor, Draft, Message, MessageView};
use crate::db::Db;
use crate::error::{AppError, AppResult, ErrorCode};
use actix::prelude::*;
use conversation::{
    Change, ChangeMessage, ConversationActor, ConversationMap, Join, Receipt, SendMessage, Typing,
};
use directory::{Delivery, Directory};
use protocol::{SendDraft, ServerEvent};
use ratelimit::UserLimiter;
use registry::{GetConversation, Registry, SetEngine};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Message kinds a client may send; `system`, `voice_call` and `video_call` are server-only.
pub(crate) const CLIENT_KINDS: [&str; 4] = ["text", "image", "audio", "file"];

/// Attaches a readable upload to a draft: the message's `type` follows the upload when the
/// client sent none (or `text`): `image`, `audio`, else `file`; a type the client chose must fit
/// it (`image` an image, `audio` sound or a video container, `file` anything).
fn attach(draft: &mut Draft, row: &crate::db::media::MediaRow) -> AppResult<()> {
    use crate::media::sniff::Kind;
    let kind = Kind::parse(&row.kind).unwrap_or(Kind::Document);
    let fits = match draft.kind.as_str() {
        "text" => {
            draft.kind = match kind {
                Kind::Image => "image",
                Kind::Audio => "audio",
                Kind::Video | Kind::Document => "file",
            }
            .to_owned();
            true
        }
        "image" => kind == Kind::Image,
        "audio" => matches!(kind, Kind::Audio | Kind::Video),
        _ => true,
    };
    if !fits {
        return Err(AppError::Validation {
            code: ErrorCode::MediaTypeMismatch,
            message: format!(
                "a message of type {} cannot carry a {} upload ({})",
                draft.kind, row.kind, row.content_type
            )
            .into(),
        });
    }
    draft.media_url = Some(crate::media::media_path(&row.id, false));
    draft.media = Some(row.summary());
    Ok(())
}

/// `Retry-After` of an upgrade refused at the connection ceiling: long enough that a crowd of
/// clients does not come straight back, short enough for a reconnecting app to feel prompt.
pub const OVER_CAPACITY_RETRY_AFTER_SECS: u64 = 5;

/// Handle to the engine: one shared pointer, so a clone (every session, actor and command
/// task holds one) is a reference count rather than a copy of every part.
#[derive(Clone)]
pub struct Engine(Arc<EngineParts>);

impl std::ops::Deref for Engine {
    type Target = EngineParts;
    fn deref(&self) -> &EngineParts {
        &self.0
    }
}

/// What the engine is made of (reached through an [`Engine`]).
pub struct EngineParts {
    /// Settings.
    pub config: Arc<Config>,
    /// Database.
    pub db: Db,
    /// The registry actor.
    pub registry: Addr<Registry>,
    /// Live sessions of this process by user.
    pub directory: Arc<Directory>,
    /// How events reach users' sessions (this process's directory; in cluster mode, every
    /// node's).
    pub delivery: Arc<dyn Delivery>,
    /// The link to the other nodes (cluster mode: `REDIS_URL` set).
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Live conversation actors by id.
    pub conversations: Arc<ConversationMap>,
    /// Live call actors by call id.
    pub calls: Arc<actors::ActorMap<String, call::actor::CallActor>>,
    /// Group-commit writer.
    pub writer: writer::Writer,
    /// Writes calls' states in batches.
    pub(crate) call_store: call::store::CallStore,
    /// Per-user send limiter.
    pub send_limiter: Arc<UserLimiter>,
    /// Cluster mode: tokens of users' shared send buckets leased to this node.
    pub(crate) send_leases: Arc<ratelimit::Leases>,
    /// Per-user call limiter.
    pub call_limiter: Arc<UserLimiter>,
    /// Where conversation and call actors start (the HTTP workers' threads once they run).
    pub(crate) placement: Arc<actors::Placement>,
    /// The registry's own arbiter.
    registry_arbiter: ArbiterHandle,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Cap on open realtime connections (`MAX_REALTIME_CONNECTIONS`).
    pub ceiling: Arc<conn::Ceiling>,
    /// Set when shutdown begins: sessions refuse new commands.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Socket commands running right now (shutdown waits for them).
    pub commands: Arc<std::sync::atomic::AtomicUsize>,
    /// The legacy ids of imported users, conversations and chat requests, which the dialects of
    /// their apps translate.
    pub legacy: crate::legacy::LegacyIds,
    /// The time calls are measured and stamped by (tests move it forward).
    pub clock: crate::clock::Clock,
    next_session: Arc<AtomicU64>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EngineParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineParts").finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the registry, the writer shards and an arbiter for the conversation and call
    /// actors started before the HTTP workers run (or without them). Must run inside an actix
    /// system. Fails when a writer's thread cannot be started.
    pub(crate) fn start(config: Arc<Config>, db: Db) -> AppResult<Self> {
        let placement = Arc::new(actors::Placement::new(Arbiter::new().handle()));
        let registry_arbiter = Arbiter::new().handle();
        let registry = Registry::start_in_arbiter(&registry_arbiter, |_| Registry::new());
        let writer = writer::Writer::start(
            db.clone(),
            config.write_shards,
            config.write_queue,
            config.write_batch_max,
            config.write_in_flight,
        )?;
        let call_store = call::store::CallStore::start(
            db.clone(),
            config.call_save_queue,
            config.call_save_batch,
            &registry_arbiter,
        );
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let directory = Arc::new(Directory::new(Arc::clone(&metrics)));
        // The URL was checked with the rest of the settings.
        let (cluster, runner) = match cluster::Cluster::new(&config) {
            Ok(Some((cluster, runner))) => (Some(cluster), Some(runner)),
            Ok(None) => (None, None),
            Err(e) => {
                tracing::error!(error = %e, "cluster mode off");
                (None, None)
            }
        };
        // Session keys name devices across nodes in cluster mode (calls reach a device on any
        // node): each node numbers from its own random tag in bits 40..52 (below 2^53, so a key
        // stays exact as a JSON number).
        let first_session_key = match &cluster {
            Some(c) => (c.session_tag() << 40) | 1,
            None => 1,
        };
        let delivery: Arc<dyn Delivery> = match &cluster {
            Some(c) => Arc::new(cluster::ClusterDelivery::new(
                Arc::clone(&directory),
                Arc::clone(c),
            )),
            None => Arc::clone(&directory) as Arc<dyn Delivery>,
        };
        let ceiling = conn::Ceiling::new(
            config.realtime_connection_ceiling(),
            OVER_CAPACITY_RETRY_AFTER_SECS,
            Arc::clone(&metrics),
        );
        let engine = Self(Arc::new(EngineParts {
            ceiling,
            delivery,
            cluster,
            directory,
            conversations: Arc::default(),
            calls: Arc::default(),
            call_limiter: Arc::new(UserLimiter::per_hour(
                config.call_rate_per_hour,
                config.call_burst,
            )),
            send_limiter: Arc::new(UserLimiter::per_minute(
                config.message_rate_per_min,
                config.message_burst,
            )),
            send_leases: Arc::new(ratelimit::Leases::new(
                config.message_burst,
                f64::from(config.message_rate_per_min) / 60.0,
            )),
            config,
            db,
            registry,
            writer,
            call_store,
            placement,
            registry_arbiter,
            metrics,
            draining: Arc::default(),
            commands: Arc::default(),
            legacy: crate::legacy::LegacyIds::new(),
            clock: crate::clock::Clock::default(),
            next_session: Arc::new(AtomicU64::new(first_session_key)),
        }));
        engine.registry.do_send(SetEngine(engine.clone()));
        if let Some(runner) = runner {
            if let Err(e) = runner.start(engine.clone()) {
                tracing::error!(error = %e, "cluster: could not start its thread");
            }
        }
        Ok(engine)
    }

    /// Stops the engine's threads: its own arbiter and the registry's, dropping the actors
    /// they host (and with them their database handles). A server process ends
    /// them by exiting; a process that runs servers one after another (the integration tests)
    /// calls this when it is done with one, after its listeners stopped.
    pub fn stop(&self) {
        self.placement.stop_own();
        self.registry_arbiter.stop();
    }

    /// One message send of `user` against `MESSAGE_RATE_PER_MIN` / `MESSAGE_BURST`: this
    /// node's bucket first, then (cluster mode) the user's bucket shared by every node.
    /// In cluster mode the shared bucket's tokens are leased ([`ratelimit::Leases`]), so a
    /// user sending fast does not ask Redis on every send.
    pub(crate) async fn take_send(&self, user: i64) -> AppResult<()> {
        let config = &self.config;
        self.take_limit(
            &self.send_limiter,
            Some(&self.send_leases),
            "send",
            user,
            f64::from(config.message_rate_per_min.max(1)) / 60.0,
            config.message_burst,
        )
        .await
    }

    /// One call start of `user` against `CALL_RATE_PER_HOUR` / `CALL_BURST` (as
    /// [`Engine::take_send`]).
    pub(crate) async fn take_call(&self, user: i64) -> AppResult<()> {
        let config = &self.config;
        self.take_limit(
            &self.call_limiter,
            None,
            "call",
            user,
            f64::from(config.call_rate_per_hour.max(1)) / 3600.0,
            config.call_burst,
        )
        .await
    }

    async fn take_limit(
        &self,
        local: &UserLimiter,
        leases: Option<&Arc<ratelimit::Leases>>,
        bucket: &'static str,
        user: i64,
        per_sec: f64,
        burst: u32,
    ) -> AppResult<()> {
        local
            .check(user)
            .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
        if let Some(cluster) = &self.cluster {
            let now = std::time::Instant::now();
            let want = match leases {
                Some(leases) => match leases.spend(user, now) {
                    Ok(None) => return Ok(()),
                    Ok(Some(more)) => {
                        // Renewed in the background: this send goes on with the token spent.
                        cluster.renew(cluster::Renewal {
                            leases: Arc::clone(leases),
                            bucket,
                            user,
                            per_sec,
                            burst,
                            want: more,
                        });
                        return Ok(());
                    }
                    Err(want) => want,
                },
                None => 1,
            };
            // Boxed: the Redis call's state is large, and every send's task would carry it.
            let take = Box::pin(cluster.take(bucket, user, per_sec, burst, want));
            match take.await {
                Some(Err(retry_after_secs)) => {
                    return Err(AppError::RateLimited { retry_after_secs })
                }
                Some(Ok(granted)) => {
                    if let Some(leases) = leases {
                        leases.granted(user, granted, now);
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A process-unique session key.
    pub(crate) fn next_session_key(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The actor of a conversation: found in the shared map, or started by the registry.
    pub(crate) async fn conversation(&self, id: i64) -> AppResult<Addr<ConversationActor>> {
        if let Some(addr) = self.conversations.get(&id) {
            return Ok(addr);
        }
        // Boxed, as the send path's other rare waits (see `send_message_inner`).
        Box::pin(self.registry.send(GetConversation {
            id,
            remote_seq: None,
            near: Some(std::thread::current().id()),
        }))
        .await
        .map_err(|e| AppError::unavailable(format!("registry: {e}")))?
    }

    /// Sends a message on behalf of `identity`: rate limit, validation, membership check, group
    /// commit; returns only after the row is committed. `origin` (a session key) is skipped in
    /// the fan-out because it receives the ack instead.
    pub(crate) async fn send_message(
        &self,
        identity: &Identity,
        draft: SendDraft,
        origin: Option<u64>,
    ) -> AppResult<MessageView> {
        self.send_message_at(identity, draft, origin, std::time::Instant::now())
            .await
    }

    /// [`Engine::send_message`] for a command received at `received`: the ack latency metric
    /// counts from then.
    pub(crate) async fn send_message_at(
        &self,
        identity: &Identity,
        draft: SendDraft,
        origin: Option<u64>,
        received: std::time::Instant,
    ) -> AppResult<MessageView> {
        let result = self.send_message_inner(identity, draft, origin).await;
        if result.is_ok() {
            self.metrics.message_acked(received.elapsed());
        }
        result
    }

    async fn send_message_inner(
        &self,
        identity: &Identity,
        draft: SendDraft,
        origin: Option<u64>,
    ) -> AppResult<MessageView> {
        let user = identity.user_id();
        let mut draft = self.validate(user, draft)?;
        if let Some(id) = draft.media_id.clone() {
            let admin = identity.is_admin();
            // Boxed, like every wait off the common path: an awaited future is stored inline
            // in every send's task, whichever branch the send takes.
            let row = Box::pin(
                self.db
                    .run(move |conn| crate::db::media::readable(conn, &id, user, admin)),
            )
            .await?
            .ok_or_else(|| AppError::NotFound("media not found".into()))?;
            attach(&mut draft, &row)?;
        }
        self.take_send(user).await.inspect_err(|_| {
            self.metrics.rate_limited(crate::metrics::Limit::Messages);
        })?;
        // Cluster mode with `CLUSTER_OWNED_WRITES`: a keyed send goes to the node that writes
        // its conversation. Without an answer in time it is written here; its key finds that
        // node's copy, if any.
        let writer = self
            .cluster
            .as_ref()
            .filter(|_| draft.client_message_id.is_some())
            .and_then(|c| Some((c, c.writer_of(draft.conversation_id)?)));
        if let Some((cluster, writer)) = writer {
            if let Some(addr) = self.conversations.get(&draft.conversation_id) {
                // Sending ends the sender's typing indicator, which this node's actor holds.
                let _ = addr.try_send(Typing {
                    user,
                    active: false,
                });
            }
            let forwarded = Box::pin(cluster.forward_send(writer, user, origin, &draft)).await;
            if let Some(outcome) = forwarded {
                return outcome.map(|m| m.view());
            }
        }
        self.commit_send(user, origin, draft)
            .await
            .map(|w| w.message.view())
    }

    /// Commits a validated send through its conversation's actor (membership check, group
    /// commit, fan-out in seq order); returns once the row is committed.
    pub(crate) async fn commit_send(
        &self,
        user: i64,
        origin: Option<u64>,
        draft: Draft,
    ) -> AppResult<messages::Written> {
        let conversation_id = draft.conversation_id;
        let mut attempt = 0;
        loop {
            let addr = self.conversation(conversation_id).await?;
            let (tx, rx) = oneshot::channel();
            match addr.try_send(SendMessage {
                sender: user,
                origin,
                draft: draft.clone(),
                reply: tx,
            }) {
                Ok(()) => {}
                Err(SendError::Full(_)) => {
                    return Err(AppError::unavailable(
                        "conversation is overloaded; retry shortly",
                    ))
                }
                Err(SendError::Closed(_)) if attempt == 0 => {
                    attempt += 1;
                    continue;
                }
                Err(SendError::Closed(_)) => {
                    return Err(AppError::unavailable("conversation unavailable"))
                }
            }
            return match rx.await {
                Ok(result) => result,
                Err(_) if attempt == 0 => {
                    attempt += 1;
                    continue;
                }
                Err(_) => Err(AppError::unavailable(
                    "conversation stopped before the commit",
                )),
            };
        }
    }

    /// Posts a server-authored message (e.g. a call log) through the same commit and fan-out.
    pub(crate) async fn post_system_message(&self, draft: Draft) -> AppResult<Message> {
        let addr = self.conversation(draft.conversation_id).await?;
        let (tx, rx) = oneshot::channel();
        addr.send(conversation::SystemMessage { draft, reply: tx })
            .await
            .map_err(|e| AppError::unavailable(format!("conversation: {e}")))?;
        rx.await
            .map_err(|_| AppError::unavailable("conversation stopped"))?
            .map(|w| w.message)
    }

    fn validate(&self, sender: i64, d: SendDraft) -> AppResult<Draft> {
        let kind = d
            .kind
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .unwrap_or("text")
            .to_ascii_lowercase();
        if !CLIENT_KINDS.contains(&kind.as_str()) {
            return Err(AppError::validation(format!(
                "type must be one of {}",
                CLIENT_KINDS.join(", ")
            )));
        }
        // PostgreSQL stores no NUL character; one bad row would fail its whole commit batch.
        let nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
        if d.content.contains('\0')
            || nul(&d.media_url)
            || nul(&d.client_message_id)
            || d.metadata.as_ref().is_some_and(protocol::has_nul)
        {
            return Err(AppError::nul_text());
        }
        if d.content.chars().count() > self.config.max_content_chars {
            return Err(AppError::TooLarge(
                format!(
                    "content is longer than {} characters",
                    self.config.max_content_chars
                )
                .into(),
            ));
        }
        let media_url = d.media_url.filter(|u| !u.trim().is_empty());
        if media_url.as_ref().is_some_and(|u| u.len() > 2048) {
            return Err(AppError::validation(
                "mediaUrl is longer than 2048 characters",
            ));
        }
        // An upload of this server: named, or one of its URLs.
        let media_id = match d
            .media_id
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            Some(id) if crate::media::valid_id(id) => Some(id.to_owned()),
            Some(_) => return Err(AppError::NotFound("media not found".into())),
            None => media_url
                .as_deref()
                .and_then(|u| crate::media::id_in_url(u, &self.config.public_url)),
        };
        if media_id.is_none() && media_url.is_some() && !self.config.media_foreign_urls {
            return Err(AppError::validation(
                "mediaUrl must be a media URL of this server: upload the file with \
                 POST /api/media and send its id as mediaId",
            ));
        }
        if d.content.trim().is_empty() && media_url.is_none() && media_id.is_none() {
            return Err(AppError::validation(
                "a message needs content or a mediaUrl",
            ));
        }
        if let Some(cmid) = &d.client_message_id {
            if cmid.is_empty() || cmid.len() > 128 {
                return Err(AppError::validation(
                    "clientMessageId must be 1 to 128 characters",
                ));
            }
        }
        if let Some(meta) = &d.metadata {
            if !meta.is_object() {
                return Err(AppError::validation("metadata must be a JSON object"));
            }
            if meta.to_string().len() > 16 * 1024 {
                return Err(AppError::TooLarge("metadata is larger than 16 KiB".into()));
            }
        }
        Ok(Draft {
            conversation_id: d.conversation_id,
            sender_id: Some(sender),
            kind,
            content: d.content,
            media_url,
            media_id,
            media: None,
            reply_to_id: d.reply_to,
            metadata: d.metadata,
            client_message_id: d.client_message_id,
            recipient_id: d.recipient_id,
        })
    }

    async fn change(
        &self,
        identity: &Identity,
        message_id: i64,
        change: Change,
        origin: Option<u64>,
    ) -> AppResult<Message> {
        let conversation_id = self
            .db
            .run(move |conn| messages::by_id(conn, message_id))
            .await?
            .ok_or_else(|| AppError::NotFound("message not found".into()))?
            .conversation_id;
        let actor = MessageActor {
            user_id: identity.user_id(),
            moderator: identity.is_moderator(),
        };
        let addr = self.conversation(conversation_id).await?;
        let (tx, rx) = oneshot::channel();
        addr.send(ChangeMessage {
            actor,
            message_id,
            change,
            origin,
            reply: tx,
        })
        .await
        .map_err(|e| AppError::unavailable(format!("conversation: {e}")))?;
        rx.await
            .map_err(|_| AppError::unavailable("conversation stopped"))?
    }

    /// Edits an own message and fans out `message:edited`.
    pub(crate) async fn edit_message(
        &self,
        identity: &Identity,
        message_id: i64,
        content: String,
        origin: Option<u64>,
    ) -> AppResult<Message> {
        if content.chars().count() > self.config.max_content_chars {
            return Err(AppError::TooLarge("content is too long".into()));
        }
        if content.contains('\0') {
            return Err(AppError::nul_text());
        }
        if content.trim().is_empty() {
            return Err(AppError::validation("content must not be empty"));
        }
        self.change(identity, message_id, Change::Edit(content), origin)
            .await
    }

    /// Soft-deletes a message (own, or any for `admin`/`master`) and fans out `message:deleted`.
    pub(crate) async fn delete_message(
        &self,
        identity: &Identity,
        message_id: i64,
        origin: Option<u64>,
    ) -> AppResult<Message> {
        self.change(identity, message_id, Change::Delete, origin)
            .await
    }

    /// Opens a conversation for a user (membership check) and returns its state.
    pub(crate) async fn join(&self, user: i64, conversation_id: i64) -> AppResult<Value> {
        let addr = self.conversation(conversation_id).await?;
        addr.send(Join { user })
            .await
            .map_err(|e| AppError::unavailable(format!("conversation: {e}")))?
    }

    /// Typing on/off.
    pub(crate) async fn typing(
        &self,
        user: i64,
        conversation_id: i64,
        active: bool,
    ) -> AppResult<()> {
        let addr = self.conversation(conversation_id).await?;
        addr.send(Typing { user, active })
            .await
            .map_err(|e| AppError::unavailable(format!("conversation: {e}")))?
    }

    /// Moves a receipt cursor and relays it to the other members.
    pub(crate) async fn receipt(
        &self,
        user: i64,
        conversation_id: i64,
        kind: convs::ReceiptKind,
        cursor: protocol::ReceiptCursor,
    ) -> AppResult<Value> {
        let addr = self.conversation(conversation_id).await?;
        let (tx, rx) = oneshot::channel();
        addr.send(Receipt {
            user,
            kind,
            cursor,
            reply: tx,
        })
        .await
        .map_err(|e| AppError::unavailable(format!("conversation: {e}")))?;
        rx.await
            .map_err(|_| AppError::unavailable("conversation stopped"))?
    }

    /// Sends an event to every device of some users.
    pub(crate) fn notify_users(&self, users: Vec<i64>, name: &'static str, payload: Value) {
        self.delivery
            .deliver(&users, &ServerEvent::new(name, payload), None);
    }

    /// Tells the engine a conversation's membership changed (REST add/remove/create).
    ///
    /// The conversation's actor is told here, before the caller answers or tells anyone: events
    /// go out on the delivery path, not through the registry, so a removed member who hears of
    /// the removal and sends at once must find the actor's mailbox already holding the reload
    /// (which holds later commands until the members are read).
    pub(crate) fn members_changed(&self, conversation_id: i64, members: Vec<i64>) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_members(conversation_id, members.clone());
        }
        if let Some(addr) = self.conversations.get(&conversation_id) {
            addr.do_send(conversation::MembersChanged);
        }
        self.registry.do_send(registry::ConversationMembersChanged {
            id: conversation_id,
            members,
            reload: false,
        });
    }

    /// Closes a user's sockets (all, or one device session's) on every node; answers how many
    /// this node closed.
    pub async fn kick(
        &self,
        user_id: i64,
        device_session: Option<String>,
        code: u16,
        reason: &str,
    ) -> usize {
        if let Some(cluster) = &self.cluster {
            cluster.publish_kick(user_id, device_session.clone(), code, reason);
        }
        self.registry
            .send(registry::KickUser {
                user_id,
                device_session,
                code,
                reason: reason.to_owned(),
            })
            .await
            .unwrap_or(0)
    }

    /// Everything a client missed in the listed conversations since its cursors.
    ///
    /// The whole answer is read in one REPEATABLE READ, read-only transaction: every statement
    /// sees the same snapshot, so each conversation's messages run without a gap from the
    /// cursor up to exactly the `lastSeq` (and `lastChange`) reported beside them, however many
    /// batches commit meanwhile. Statement by statement under READ COMMITTED, `lastSeq` would
    /// be read before the rows and could lag them, and each page of a long answer would see a
    /// later snapshot than the page before.
    pub async fn sync(&self, user: i64, cursors: Vec<protocol::SyncCursor>) -> AppResult<Value> {
        if cursors.len() > 1000 {
            return Err(AppError::validation("at most 1000 conversations per sync"));
        }
        self.db
            .run(move |conn| {
                conn.build_transaction()
                    .repeatable_read()
                    .read_only()
                    .run(|conn| sync_snapshot(conn, user, &cursors))
            })
            .await
    }
}

/// The body of [`Engine::sync`], inside its snapshot.
fn sync_snapshot(
    conn: &mut diesel::PgConnection,
    user: i64,
    cursors: &[protocol::SyncCursor],
) -> AppResult<Value> {
    let mine: std::collections::HashSet<i64> =
        convs::ids_of_user(conn, user)?.into_iter().collect();
    let mut out = Vec::with_capacity(cursors.len());
    for c in cursors {
        if !mine.contains(&c.conversation_id) {
            return Err(AppError::Forbidden(
                format!("not a member of conversation {}", c.conversation_id).into(),
            ));
        }
        let conv = convs::by_id(conn, c.conversation_id)?
            .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
        let after_seq = c.seq.unwrap_or(0);
        let msgs = messages::since(conn, c.conversation_id, after_seq, c.change)?;
        let receipts = convs::receipts_since(conn, c.conversation_id, c.change.unwrap_or(0))?;
        out.push(json!({
            "conversationId": c.conversation_id.to_string(),
            "lastSeq": conv.last_seq,
            "lastChange": conv.last_change,
            "messages": msgs.iter().map(Message::view).collect::<Vec<_>>(),
            "receipts": receipts.iter().map(|m| json!({
                "userId": m.user_id.to_string(),
                "deliveredUpTo": m.delivered_up_to,
                "readUpTo": m.read_up_to,
                "change": m.receipt_change,
            })).collect::<Vec<_>>(),
        }));
    }
    let all: Vec<String> = mine.iter().map(ToString::to_string).collect();
    Ok(json!({ "conversations": out, "memberOf": all }))
}
