//! The registry actor: knows every live session by user (several devices per user), spawns and
//! stops conversation actors on demand, fans events out to users' devices, tracks presence, and
//! cleans up when sessions go away.

use super::call::actor::{CallActor, CallInput, CallMeta};
use super::call::directory::{Admission, CallDirectory, LiveCall};
use super::call::machine::{Call, Event as CallEvent};
use super::conversation::{ConversationActor, MembersChanged};
use super::dialect::Dialect;
use super::directory::Delivery;
use super::last_seen::LastSeenBuffer;
use super::presence::Audiences;
use super::protocol::ServerEvent;
use super::Engine;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::events;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Asks a session to close (logout, ban, shutdown).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub(crate) struct CloseSession {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: String,
}

/// What the registry keeps per live session.
#[derive(Clone, Debug)]
struct Entry {
    close: Recipient<CloseSession>,
    device_session: Option<String>,
    labels: SessionLabels,
}

/// How a session is connected: its transport and the dialect it speaks. Both are static names,
/// used for stats and metrics labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionLabels {
    /// Transport name (`ws`, `socket.io`).
    pub transport: &'static str,
    /// Dialect name (`canonical` or a seed's).
    pub dialect: &'static str,
}

/// A session came up.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Connect {
    /// User.
    pub user_id: i64,
    /// Process-unique session key.
    pub key: u64,
    /// Device session id of the token, if session-bound.
    pub device_session: Option<String>,
    /// Transport and dialect.
    pub labels: SessionLabels,
    /// Close handle.
    pub close: Recipient<CloseSession>,
}

/// The presence audience of a session's user is known: remember it and, for the user's first
/// device, announce them online.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Announce {
    /// User.
    pub user_id: i64,
    /// Users sharing a conversation with this user.
    pub peers: Vec<i64>,
}

/// A session went away.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Disconnect {
    /// User.
    pub user_id: i64,
    /// Session key.
    pub key: u64,
}

/// Looks up (or starts) the actor of a conversation.
#[derive(Message, Debug)]
#[rtype(result = "AppResult<Addr<ConversationActor>>")]
pub(crate) struct GetConversation {
    /// The conversation.
    pub id: i64,
    /// Set when another node's message (this seq) starts the actor: the actor fans out from
    /// this seq on, whatever the database's last seq is by the time it loads.
    pub remote_seq: Option<i64>,
    /// The thread that asks (the actor starts on it if it is an HTTP worker's).
    pub near: Option<std::thread::ThreadId>,
}

/// Presence of a user across the cluster (from this node's update or another node's): tell
/// this node's audience of the user.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ClusterPresence {
    /// User.
    pub user_id: i64,
    /// The user's devices on every node (0: offline).
    pub devices: u64,
    /// When the user went offline.
    pub last_seen: Option<DateTime<Utc>>,
}

/// This node's users and their device counts (to write them to Redis again).
#[derive(Message, Debug)]
#[rtype(result = "Vec<(i64, usize)>")]
pub(crate) struct LocalPresence;

/// Membership of a conversation changed (REST): reload it and widen presence audiences.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ConversationMembersChanged {
    /// Conversation.
    pub id: i64,
    /// Current members.
    pub members: Vec<i64>,
    /// Whether the registry tells the conversation's actor to reload its members (a change
    /// heard from another node). A local change tells it directly, before anyone hears of
    /// the change (see [`crate::realtime::Engine::members_changed`]).
    pub reload: bool,
}

/// Presence of one user.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PresenceStatus {
    /// User id.
    pub user_id: String,
    /// Online on at least one device.
    pub online: bool,
    /// Live devices.
    pub devices: usize,
    /// When the last device left (this process's knowledge).
    pub last_seen: Option<DateTime<Utc>>,
}

/// Subscribes a session to presence changes of users; answers their current state.
#[derive(Message, Debug)]
#[rtype(result = "Vec<PresenceStatus>")]
pub(crate) struct WatchPresence {
    /// Watching user.
    pub user_id: i64,
    /// Watching session.
    pub key: u64,
    /// Watched users.
    pub targets: Vec<i64>,
}

/// Closes sessions of a user: all of them, or those of one device session.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub(crate) struct KickUser {
    /// User.
    pub user_id: i64,
    /// Only sessions authenticated with this device session.
    pub device_session: Option<String>,
    /// Close code.
    pub code: u16,
    /// Reason.
    pub reason: String,
}

/// Closes every live session (server shutdown); answers how many were asked to close.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub(crate) struct CloseAll {
    /// Close code.
    pub code: u16,
    /// Reason.
    pub reason: String,
}

impl Handler<CloseAll> for Registry {
    type Result = usize;
    fn handle(&mut self, msg: CloseAll, _: &mut Context<Self>) -> usize {
        let mut n = 0;
        for entry in self.sessions.values().flat_map(HashMap::values) {
            entry.close.do_send(CloseSession {
                code: msg.code,
                reason: msg.reason.clone(),
            });
            n += 1;
        }
        n
    }
}

/// Live counts for stats and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStats {
    /// Users online.
    pub online_users: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Sessions per transport.
    pub by_transport: HashMap<&'static str, usize>,
    /// Sessions per dialect.
    pub by_dialect: HashMap<&'static str, usize>,
    /// Conversation actors alive.
    pub conversations: usize,
    /// Users with a presence audience (online users and offline peers of online users).
    pub presence_audiences: usize,
    /// Last-seen times held in memory (waiting for or being written).
    pub last_seen_held: usize,
    /// Users watched with `presence:subscribe`.
    pub watched: usize,
    /// Pending timers of live calls (ring timeouts, reconnect graces).
    pub call_timers: usize,
}

/// Asks for [`RegistryStats`].
#[derive(Message, Debug)]
#[rtype(result = "RegistryStats")]
pub struct GetStats;

/// The registry actor.
pub struct Registry {
    engine: Option<Engine>,
    sessions: HashMap<i64, HashMap<u64, Entry>>,
    /// Who hears whose presence.
    audiences: Audiences,
    last_seen: HashMap<i64, DateTime<Utc>>,
    /// Live calls and who is in which (busy, glare).
    calls: CallDirectory<Addr<CallActor>>,
    /// Pending timers of live calls (ring timeout, reconnect graces), by call: cancelled when
    /// the call ends, so the registry's context holds timers of live calls only (it polls
    /// every pending one whenever it wakes).
    call_timers: HashMap<String, Vec<(u64, SpawnHandle)>>,
    /// Numbers the call timers.
    next_timer: u64,
    /// Last-seen times waiting for their write (see [`super::last_seen`]).
    seen_writes: LastSeenBuffer,
    /// A last-seen write is running (at most one at a time, so one pool connection).
    seen_flushing: bool,
    /// Last-seen times dropped since the last warning.
    seen_dropped: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("users", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry; [`SetEngine`] completes it.
    pub(crate) fn new() -> Self {
        Self {
            engine: None,
            sessions: HashMap::new(),
            audiences: Audiences::default(),
            last_seen: HashMap::new(),
            calls: CallDirectory::default(),
            call_timers: HashMap::new(),
            next_timer: 0,
            seen_writes: LastSeenBuffer::new(crate::config::Config::default().last_seen_buffer),
            seen_flushing: false,
            seen_dropped: 0,
        }
    }

    fn deliver_to(&self, users: &[i64], event: &Arc<ServerEvent>, skip: Option<u64>) {
        if let Some(engine) = &self.engine {
            engine.delivery.deliver(users, event, skip);
        }
    }

    /// The cluster link, in cluster mode.
    fn cluster(&self) -> Option<&Arc<super::cluster::Cluster>> {
        self.engine.as_ref().and_then(|e| e.cluster.as_ref())
    }

    fn broadcast_presence(
        &self,
        user_id: i64,
        online: bool,
        devices: usize,
        last_seen: Option<DateTime<Utc>>,
    ) {
        let audience = self
            .audiences
            .audience(user_id, |u| self.sessions.contains_key(&u));
        if audience.is_empty() {
            return;
        }
        let event = ServerEvent::new(
            events::PRESENCE,
            json!({
                "userId": user_id.to_string(),
                "online": online,
                "status": if online { "online" } else { "offline" },
                "devices": devices,
                "lastSeen": last_seen,
            }),
        );
        // This node's audience only: in cluster mode every node tells its own.
        if let Some(engine) = &self.engine {
            engine.directory.deliver(&audience, &event, None);
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(65_536);
    }
}

/// Gives the registry the engine it spawns conversation actors with.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SetEngine(pub Engine);

impl Handler<SetEngine> for Registry {
    type Result = ();
    fn handle(&mut self, msg: SetEngine, ctx: &mut Context<Self>) {
        let config = Arc::clone(&msg.0.config);
        let mut buffer = LastSeenBuffer::new(config.last_seen_buffer);
        let dropped = buffer.restore(self.seen_writes.take(usize::MAX));
        msg.0.metrics.last_seen_dropped(dropped);
        self.seen_writes = buffer;
        self.engine = Some(msg.0);
        ctx.run_interval(config.last_seen_flush, |act, ctx| act.flush_last_seen(ctx));
    }
}

impl Registry {
    /// Queues a user's last-seen time; a full batch is written at once.
    fn record_last_seen(&mut self, user: i64, at: DateTime<Utc>, ctx: &mut Context<Self>) {
        if !self.seen_writes.record(user, at) {
            // Never written: presence falls back to what the database has.
            self.last_seen.remove(&user);
            if let Some(engine) = &self.engine {
                engine.metrics.last_seen_dropped(1);
            }
            // Logged once per flush interval, not once per user of a burst.
            self.seen_dropped += 1;
        }
        let batch = self
            .engine
            .as_ref()
            .map_or(usize::MAX, |e| e.config.last_seen_batch);
        if self.seen_writes.len() >= batch {
            self.flush_last_seen(ctx);
        }
    }

    /// Last-seen times are kept here only until they are written: presence answers read newer
    /// ones here and older ones from the database, so the map holds at most what is waiting
    /// or being written (and is pruned should a failed write leave more behind).
    fn forget_written(&mut self, written: &[(i64, DateTime<Utc>)]) {
        for (user, at) in written {
            if self.last_seen.get(user) == Some(at) {
                self.last_seen.remove(user);
            }
        }
        let bound = self.engine.as_ref().map_or(usize::MAX, |e| {
            e.config.last_seen_buffer + e.config.last_seen_batch
        });
        if self.last_seen.len() > bound {
            let waiting = &self.seen_writes;
            self.last_seen.retain(|user, _| waiting.contains(*user));
        }
    }

    /// Writes one batch of waiting last-seen times unless a write is running. A failed batch
    /// goes back into the buffer for the next flush; a full buffer left behind a successful
    /// write is written straight away.
    fn flush_last_seen(&mut self, ctx: &mut Context<Self>) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        if self.seen_dropped > 0 {
            tracing::warn!(
                dropped = self.seen_dropped,
                "last-seen buffer full (LAST_SEEN_BUFFER); times dropped"
            );
            self.seen_dropped = 0;
        }
        if self.seen_flushing || self.seen_writes.is_empty() {
            return;
        }
        let batch = self.seen_writes.take(engine.config.last_seen_batch);
        self.seen_flushing = true;
        let work = batch.clone();
        let db = engine.db.clone();
        ctx.spawn(
            async move {
                db.run(move |conn| crate::db::accounts::touch_last_seen_many(conn, &work))
                    .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.seen_flushing = false;
                match res {
                    Ok(_) => {
                        engine.metrics.last_seen_written(batch.len());
                        act.forget_written(&batch);
                        if act.seen_writes.len() >= engine.config.last_seen_batch {
                            act.flush_last_seen(ctx);
                        }
                    }
                    Err(e) => {
                        engine.metrics.last_seen_failed();
                        let users = batch.len();
                        let dropped = act.seen_writes.restore(batch);
                        engine.metrics.last_seen_dropped(dropped);
                        tracing::warn!(
                            users,
                            dropped,
                            error = %e,
                            "last-seen write failed; retrying at the next flush"
                        );
                    }
                }
            }),
        );
    }
}

/// Writes every waiting last-seen time now (shutdown); answers how many users could not be
/// written (they are back in the buffer).
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub(crate) struct FlushLastSeen;

impl Handler<FlushLastSeen> for Registry {
    type Result = ResponseActFuture<Self, usize>;
    fn handle(&mut self, _: FlushLastSeen, _: &mut Context<Self>) -> Self::Result {
        let Some(engine) = self.engine.clone() else {
            return Box::pin(fut::ready(self.seen_writes.len()));
        };
        let all = self.seen_writes.take(usize::MAX);
        let work = all.clone();
        let db = engine.db.clone();
        let batch = engine.config.last_seen_batch;
        Box::pin(
            async move {
                db.run(move |conn| {
                    for chunk in work.chunks(batch) {
                        crate::db::accounts::touch_last_seen_many(conn, chunk)?;
                    }
                    Ok(())
                })
                .await
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(()) => {
                    engine.metrics.last_seen_written(all.len());
                    act.forget_written(&all);
                    act.seen_writes.len()
                }
                Err(e) => {
                    engine.metrics.last_seen_failed();
                    let users = all.len();
                    let dropped = act.seen_writes.restore(all);
                    engine.metrics.last_seen_dropped(dropped);
                    tracing::warn!(users, dropped, error = %e, "last-seen write failed");
                    act.seen_writes.len()
                }
            }),
        )
    }
}

impl Handler<Connect> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        let devices = self.sessions.entry(msg.user_id).or_default();
        devices.insert(
            msg.key,
            Entry {
                close: msg.close,
                device_session: msg.device_session,
                labels: msg.labels,
            },
        );
    }
}

impl Handler<Announce> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Announce, _: &mut Context<Self>) {
        // Presence audiences are symmetric: peers learn about this user and vice versa. Only
        // online users are linked (an offline one links up when it announces itself), and an
        // announcement that arrives after its session left is ignored.
        let devices = self.sessions.get(&msg.user_id).map_or(0, HashMap::len);
        if devices == 0 {
            return;
        }
        if self.cluster().is_some() {
            // A peer may be online on another node: this node's user hears about every peer.
            self.audiences.listen(msg.user_id, msg.peers);
        } else {
            let sessions = &self.sessions;
            self.audiences.link(
                msg.user_id,
                msg.peers.into_iter().filter(|p| sessions.contains_key(p)),
            );
        }
        if self.audiences.announce(msg.user_id) {
            let shared = self
                .cluster()
                .is_some_and(|c| c.presence(msg.user_id, devices, None));
            if !shared {
                self.broadcast_presence(msg.user_id, true, devices, None);
            }
        }
    }
}

impl Handler<Disconnect> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        self.audiences.unwatch(msg.user_id, msg.key);
        let rejoins = self
            .sessions
            .get(&msg.user_id)
            .and_then(|d| d.get(&msg.key))
            .is_none_or(|e| Dialect::find(e.labels.dialect).is_none_or(Dialect::rejoins_calls));
        if let Some(call) = self.calls.live_call_of(msg.user_id) {
            call.addr.do_send(CallInput(CallEvent::DeviceGone {
                user: msg.user_id,
                device: msg.key,
                rejoins,
            }));
        } else if let Some(cluster) = self.cluster() {
            // The user's call may run on another node.
            cluster.device_gone(msg.user_id, msg.key, rejoins);
        }
        let Some(devices) = self.sessions.get_mut(&msg.user_id) else {
            return;
        };
        if devices.remove(&msg.key).is_none() {
            return;
        }
        if devices.is_empty() {
            self.sessions.remove(&msg.user_id);
            let now = Utc::now();
            self.last_seen.insert(msg.user_id, now);
            if self.audiences.retire(msg.user_id) {
                let shared = self
                    .cluster()
                    .is_some_and(|c| c.presence(msg.user_id, 0, Some(now)));
                if !shared {
                    self.broadcast_presence(msg.user_id, false, 0, Some(now));
                }
            }
            if self.cluster().is_some() {
                // Its audience here stays (it may be online elsewhere; the cluster-wide news
                // comes later); it no longer listens.
                self.audiences.stop_listening(msg.user_id);
            } else {
                // Told: an offline user needs no audience until it connects (and announces)
                // again.
                self.audiences.forget(msg.user_id);
            }
            self.record_last_seen(msg.user_id, now, ctx);
        }
    }
}

impl Handler<ClusterPresence> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ClusterPresence, _: &mut Context<Self>) {
        // The node the user left records its last-seen time; this one only tells.
        let online = msg.devices > 0;
        let devices = usize::try_from(msg.devices).unwrap_or(usize::MAX);
        self.broadcast_presence(
            msg.user_id,
            online,
            devices,
            msg.last_seen.filter(|_| !online),
        );
    }
}

impl Handler<LocalPresence> for Registry {
    type Result = MessageResult<LocalPresence>;
    fn handle(&mut self, _: LocalPresence, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.sessions
                .iter()
                .filter(|(user, _)| self.audiences.is_announced(**user))
                .map(|(user, devices)| (*user, devices.len()))
                .collect(),
        )
    }
}

impl Handler<GetConversation> for Registry {
    type Result = AppResult<Addr<ConversationActor>>;
    fn handle(&mut self, msg: GetConversation, _: &mut Context<Self>) -> Self::Result {
        let engine = self
            .engine
            .clone()
            .ok_or_else(|| AppError::unavailable("engine is starting"))?;
        // Only this actor starts conversation actors, so a lookup that raced another one finds
        // the actor the first started.
        if let Some(addr) = engine.conversations.get(&msg.id) {
            return Ok(addr);
        }
        let arbiter = engine.placement.pick(msg.near);
        let (id, remote_seq) = (msg.id, msg.remote_seq);
        let map = Arc::clone(&engine.conversations);
        let addr = ConversationActor::start_in_arbiter(&arbiter, move |_| {
            ConversationActor::new(id, engine).starting_at(remote_seq)
        });
        map.insert(id, addr.clone());
        Ok(addr)
    }
}

impl Handler<ConversationMembersChanged> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ConversationMembersChanged, _: &mut Context<Self>) {
        let local: Vec<i64> = msg
            .members
            .iter()
            .copied()
            .filter(|m| self.sessions.contains_key(m))
            .collect();
        if self.cluster().is_some() {
            // This node's users hear about every member (they may be online elsewhere).
            for a in &local {
                self.audiences.listen(*a, msg.members.iter().copied());
            }
        } else {
            self.audiences.link_all(&local);
        }
        if !msg.reload {
            return;
        }
        if let Some(addr) = self
            .engine
            .as_ref()
            .and_then(|e| e.conversations.get(&msg.id))
        {
            addr.do_send(MembersChanged);
        }
    }
}

impl Handler<WatchPresence> for Registry {
    type Result = MessageResult<WatchPresence>;
    fn handle(&mut self, msg: WatchPresence, _: &mut Context<Self>) -> Self::Result {
        let targets = self.audiences.watch(msg.user_id, msg.key, &msg.targets);
        let mut statuses = Vec::with_capacity(targets.len());
        for t in targets {
            let devices = self.sessions.get(t).map_or(0, HashMap::len);
            statuses.push(PresenceStatus {
                user_id: t.to_string(),
                online: devices > 0,
                devices,
                last_seen: self.last_seen.get(t).copied(),
            });
        }
        MessageResult(statuses)
    }
}

impl Handler<KickUser> for Registry {
    type Result = usize;
    fn handle(&mut self, msg: KickUser, _: &mut Context<Self>) -> usize {
        let Some(devices) = self.sessions.get(&msg.user_id) else {
            return 0;
        };
        let mut n = 0;
        for entry in devices.values() {
            if msg.device_session.is_none() || entry.device_session == msg.device_session {
                entry.close.do_send(CloseSession {
                    code: msg.code,
                    reason: msg.reason.clone(),
                });
                n += 1;
            }
        }
        n
    }
}

impl Handler<GetStats> for Registry {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let mut by_transport: HashMap<&'static str, usize> = HashMap::new();
        let mut by_dialect: HashMap<&'static str, usize> = HashMap::new();
        let mut sessions = 0;
        for devices in self.sessions.values() {
            for entry in devices.values() {
                *by_transport.entry(entry.labels.transport).or_default() += 1;
                *by_dialect.entry(entry.labels.dialect).or_default() += 1;
                sessions += 1;
            }
        }
        MessageResult(RegistryStats {
            online_users: self.sessions.len(),
            sessions,
            by_transport,
            by_dialect,
            conversations: self
                .engine
                .as_ref()
                .map_or(0, |e| e.conversations.running()),
            presence_audiences: self.audiences.audiences(),
            last_seen_held: self.last_seen.len(),
            watched: self.audiences.watched(),
            call_timers: self.call_timers.values().map(Vec::len).sum(),
        })
    }
}

/// Starts a call (busy detection and glare resolution happen here, serialised).
#[derive(Message, Debug)]
#[rtype(result = "AppResult<StartedCall>")]
pub(crate) struct StartCall {
    /// Call id to use.
    pub call_id: String,
    /// Caller.
    pub caller: i64,
    /// Caller's device (session key; 0 for REST).
    pub device: u64,
    /// Callees.
    pub callees: Vec<i64>,
    /// Group call.
    pub group: bool,
    /// Metadata.
    pub meta: CallMeta,
    /// Cluster mode: what the cluster-wide call directory decided.
    pub verdict: Verdict,
    /// Cluster mode: callees with live devices on other nodes (they ring there).
    pub online_elsewhere: Vec<i64>,
    /// The thread that asks (the call's actor starts on it if it is an HTTP worker's).
    pub near: Option<std::thread::ThreadId>,
}

/// What the cluster-wide call directory decided about a call start (single node: `Start`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) enum Verdict {
    /// Start it (local checks still apply).
    #[default]
    Start,
    /// The callee is in another call: record a busy call.
    Busy,
    /// The callee is calling the caller and that call (this id) wins.
    GlareLost(String),
    /// This call wins over the callee's call to the caller (this id, on another node, which
    /// ends with `glare`).
    GlareWon(String),
}

/// The outcome of [`StartCall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StartedCall {
    /// Ringing (or waiting for a device) under this id.
    Ringing(String),
    /// The callee is in another call; a `busy` record was written under this id.
    Busy(String),
    /// The two users called each other at once; this call won and carries on.
    Glare(String),
}

impl Handler<StartCall> for Registry {
    type Result = AppResult<StartedCall>;
    fn handle(&mut self, msg: StartCall, ctx: &mut Context<Self>) -> Self::Result {
        let engine = self
            .engine
            .clone()
            .ok_or_else(|| AppError::unavailable("engine is starting"))?;
        match &msg.verdict {
            Verdict::Busy => return Ok(self.busy_call(&engine, msg)),
            Verdict::GlareLost(existing) => {
                let event = glare_event(existing, &msg.call_id);
                self.deliver_to(&[msg.caller], &event, None);
                return Ok(StartedCall::Glare(existing.clone()));
            }
            Verdict::Start | Verdict::GlareWon(_) => {}
        }
        let mut glare_winner: Option<String> = None;
        let callees = match self
            .calls
            .admit(msg.caller, &msg.call_id, &msg.callees, msg.group)
        {
            Admission::CallerBusy => {
                return Err(AppError::Busy("you are already in a call".into()))
            }
            Admission::IdTaken => {
                return Err(AppError::conflict(
                    ErrorCode::CallIdTaken,
                    "a call with this id is live; choose another room name",
                ))
            }
            Admission::CalleesBusy => return Ok(self.busy_call(&engine, msg)),
            Admission::GlareLost { existing } => {
                let event = glare_event(&existing, &msg.call_id);
                let mut both = vec![msg.caller];
                both.extend(&msg.callees);
                self.deliver_to(&both, &event, None);
                return Ok(StartedCall::Glare(existing));
            }
            Admission::GlareWon { replaced, callees } => {
                if let Some(old) = self.calls.remove(&replaced) {
                    self.cancel_call_timers(&replaced, ctx);
                    engine.calls.remove(&replaced, &old.addr);
                    old.addr.do_send(CallInput(CallEvent::Terminate {
                        reason: "glare".into(),
                        by: None,
                    }));
                }
                glare_winner = Some(replaced);
                callees
            }
            Admission::Ring { callees } => callees,
        };
        let id = msg.call_id.clone();
        let call = Call::new(id.clone(), msg.caller, msg.device, &callees, msg.group);
        let reachable: Vec<i64> = callees
            .iter()
            .copied()
            .filter(|u| self.sessions.contains_key(u) || msg.online_elsewhere.contains(u))
            .collect();
        let registry = ctx.address();
        let arbiter = engine.placement.pick(msg.near);
        let meta = msg.meta;
        let call_map = Arc::clone(&engine.calls);
        let addr = CallActor::start_in_arbiter(&arbiter, move |_| {
            CallActor::new(call, meta, engine, registry)
        });
        // Findable before anyone is rung: a callee answering the ring at once must find it.
        call_map.insert(id.clone(), addr.clone());
        addr.do_send(CallInput(CallEvent::Start {
            incoming: Value::Null,
            reachable,
        }));
        self.calls.insert(
            id.clone(),
            LiveCall {
                addr,
                caller: msg.caller,
                callees: callees.clone(),
                group: msg.group,
                answered: false,
            },
        );
        if let Verdict::GlareWon(dropped) = msg.verdict {
            glare_winner.get_or_insert(dropped);
        }
        if let Some(dropped) = glare_winner {
            let event = glare_event(&id, &dropped);
            let mut both = vec![msg.caller];
            both.extend(&callees);
            self.deliver_to(&both, &event, None);
            return Ok(StartedCall::Glare(id));
        }
        Ok(StartedCall::Ringing(id))
    }
}

/// `call:glare`: `call` stands and `dropped` gave way to it.
fn glare_event(call: &str, dropped: &str) -> Arc<ServerEvent> {
    ServerEvent::new(
        events::CALL_GLARE,
        json!({"callId": call, "droppedCallId": dropped}),
    )
}

impl Registry {
    /// Records a `busy` call and tells the caller.
    fn busy_call(&mut self, engine: &Engine, msg: StartCall) -> StartedCall {
        let id = msg.call_id.clone();
        let now = Utc::now();
        let row = crate::db::calls::CallRow {
            id: id.clone(),
            kind: if msg.group { "group" } else { "direct" }.into(),
            call_type: msg.meta.call_type.clone(),
            provider: msg.meta.provider.clone(),
            channel_name: msg.meta.channel_name.clone(),
            caller_id: Some(msg.caller),
            conversation_id: msg.meta.conversation_id,
            status: "busy".into(),
            end_reason: Some("busy".into()),
            ended_by: None,
            created_at: now,
            ringing_at: None,
            answered_at: None,
            ended_at: Some(now),
            duration_secs: Some(0),
        };
        let mut parties = vec![crate::db::calls::ParticipantRow {
            call_id: id.clone(),
            user_id: msg.caller,
            role: "caller".into(),
            status: "left".into(),
            device_session_id: None,
            invited_at: now,
            joined_at: Some(now),
            left_at: Some(now),
        }];
        parties.extend(
            msg.callees
                .iter()
                .map(|u| crate::db::calls::ParticipantRow {
                    call_id: id.clone(),
                    user_id: *u,
                    role: "callee".into(),
                    status: "busy".into(),
                    device_session_id: None,
                    invited_at: now,
                    joined_at: None,
                    left_at: None,
                }),
        );
        let store = engine.call_store.clone();
        actix::spawn(async move {
            if let Err(e) = store.save(row, parties).await {
                tracing::warn!(error = %e, "could not record a busy call");
            }
        });
        engine.metrics.call_ended("busy", Some("busy"));
        let event = ServerEvent::new(
            events::CALL_BUSY,
            json!({"callId": id, "to": msg.callees.iter().map(ToString::to_string).collect::<Vec<_>>()}),
        );
        self.deliver_to(&[msg.caller], &event, None);
        StartedCall::Busy(id)
    }
}

#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ScheduleCallTimer {
    /// Call.
    pub call_id: String,
    /// Delay.
    pub after: std::time::Duration,
    /// What to feed the call when it fires.
    pub event: CallEvent,
}

impl Handler<ScheduleCallTimer> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ScheduleCallTimer, ctx: &mut Context<Self>) {
        let ScheduleCallTimer {
            call_id,
            after,
            event,
        } = msg;
        if self.calls.get(&call_id).is_none() {
            // The call is over (or lives on another node): nothing to time.
            return;
        }
        self.next_timer += 1;
        let token = self.next_timer;
        let id = call_id.clone();
        let handle = ctx.run_later(after, move |reg, _| {
            if let Some(timers) = reg.call_timers.get_mut(&id) {
                timers.retain(|(t, _)| *t != token);
            }
            if let Some(live) = reg.calls.get(&id) {
                live.addr.do_send(CallInput(event));
            }
        });
        self.call_timers
            .entry(call_id)
            .or_default()
            .push((token, handle));
    }
}

impl Registry {
    /// Cancels the pending timers of a call that is over.
    fn cancel_call_timers(&mut self, call_id: &str, ctx: &mut Context<Self>) {
        for (_, handle) in self.call_timers.remove(call_id).into_iter().flatten() {
            ctx.cancel_future(handle);
        }
    }
}

/// A call ended: release everyone's busy state. (The call stays in the engine's map of call
/// actors until its actor stops, after its last write: REST reads of it find the final record
/// in memory until the database has it.)
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct CallFinished {
    /// Call.
    pub call_id: String,
}

impl Handler<CallFinished> for Registry {
    type Result = ();
    fn handle(&mut self, msg: CallFinished, ctx: &mut Context<Self>) {
        self.calls.remove(&msg.call_id);
        self.cancel_call_timers(&msg.call_id, ctx);
    }
}

/// A group-call member joined (busy) or left (free).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct CallMembership {
    /// Call.
    pub call_id: String,
    /// User.
    pub user_id: i64,
    /// Joined (true) or left.
    pub active: bool,
}

impl Handler<CallMembership> for Registry {
    type Result = ();
    fn handle(&mut self, msg: CallMembership, _: &mut Context<Self>) {
        if let Some(cluster) = self.cluster() {
            cluster.call_member(&msg.call_id, msg.user_id, msg.active);
        }
        self.calls.membership(&msg.call_id, msg.user_id, msg.active);
    }
}

/// Live calls (admin stats, shutdown).
#[derive(Message, Debug)]
#[rtype(result = "Vec<(String, Addr<CallActor>)>")]
pub(crate) struct LiveCalls;

impl Handler<LiveCalls> for Registry {
    type Result = MessageResult<LiveCalls>;
    fn handle(&mut self, _: LiveCalls, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.calls
                .iter()
                .map(|(id, c)| (id.clone(), c.addr.clone()))
                .collect(),
        )
    }
}

/// Live connections per (transport, dialect) pair (admin stats).
#[derive(Message, Debug)]
#[rtype(result = "Vec<(&'static str, &'static str, usize)>")]
pub(crate) struct ConnectionBreakdown;

impl Handler<ConnectionBreakdown> for Registry {
    type Result = MessageResult<ConnectionBreakdown>;
    fn handle(&mut self, _: ConnectionBreakdown, _: &mut Context<Self>) -> Self::Result {
        let mut pairs: HashMap<SessionLabels, usize> = HashMap::new();
        for entry in self.sessions.values().flat_map(HashMap::values) {
            *pairs.entry(entry.labels).or_default() += 1;
        }
        let mut out: Vec<_> = pairs
            .into_iter()
            .map(|(l, n)| (l.transport, l.dialect, n))
            .collect();
        out.sort_unstable();
        MessageResult(out)
    }
}

/// Ids of the users with at least one live connection.
#[derive(Message, Debug)]
#[rtype(result = "Vec<i64>")]
pub(crate) struct OnlineUsers;

impl Handler<OnlineUsers> for Registry {
    type Result = MessageResult<OnlineUsers>;
    fn handle(&mut self, _: OnlineUsers, _: &mut Context<Self>) -> Self::Result {
        let mut ids: Vec<i64> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        MessageResult(ids)
    }
}

/// One live connection of a user, as the admin dashboard shows it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Connection)]
pub(crate) struct ConnectionInfo {
    /// Process-unique session key.
    #[schema(value_type = i64)]
    pub key: u64,
    /// Device session of the token, if session-bound.
    pub device_session: Option<String>,
    /// Transport.
    pub transport: &'static str,
    /// Dialect.
    pub dialect: &'static str,
}

/// The live connections of one user.
#[derive(Message, Debug)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub(crate) struct UserConnections(pub i64);

impl Handler<UserConnections> for Registry {
    type Result = MessageResult<UserConnections>;
    fn handle(&mut self, msg: UserConnections, _: &mut Context<Self>) -> Self::Result {
        let mut out: Vec<ConnectionInfo> = self
            .sessions
            .get(&msg.0)
            .map(|devices| {
                devices
                    .iter()
                    .map(|(key, e)| ConnectionInfo {
                        key: *key,
                        device_session: e.device_session.clone(),
                        transport: e.labels.transport,
                        dialect: e.labels.dialect,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|c| c.key);
        MessageResult(out)
    }
}

/// What the registry knows about one live call (admin dashboard).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LiveCallInfo {
    /// Call id.
    pub call_id: String,
    /// Caller.
    pub caller_id: String,
    /// Callees.
    pub callee_ids: Vec<String>,
    /// Group call.
    pub group: bool,
    /// Someone answered.
    pub answered: bool,
}

/// Every live call with its parties.
#[derive(Message, Debug)]
#[rtype(result = "Vec<LiveCallInfo>")]
pub(crate) struct LiveCallDetails;

impl Handler<LiveCallDetails> for Registry {
    type Result = MessageResult<LiveCallDetails>;
    fn handle(&mut self, _: LiveCallDetails, _: &mut Context<Self>) -> Self::Result {
        let mut out: Vec<LiveCallInfo> = self
            .calls
            .iter()
            .map(|(id, c)| LiveCallInfo {
                call_id: id.clone(),
                caller_id: c.caller.to_string(),
                callee_ids: c.callees.iter().map(ToString::to_string).collect(),
                group: c.group,
                answered: c.answered,
            })
            .collect();
        out.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        MessageResult(out)
    }
}

/// The live call a user takes part in, if any.
#[derive(Message, Debug)]
#[rtype(result = "Option<String>")]
pub(crate) struct CallOfUser(pub i64);

impl Handler<CallOfUser> for Registry {
    type Result = Option<String>;
    fn handle(&mut self, msg: CallOfUser, _: &mut Context<Self>) -> Self::Result {
        self.calls.call_of(msg.0).cloned()
    }
}
