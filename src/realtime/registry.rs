//! The registry actor: knows every live session by user (several devices per user), spawns and
//! stops conversation actors on demand, fans events out to users' devices, tracks presence, and
//! cleans up when sessions go away.

use super::conversation::{ConversationActor, MembersChanged};
use super::protocol::ServerEvent;
use super::Engine;
use crate::error::{AppError, AppResult};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Delivers one event to a session.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<ServerEvent>);

/// Asks a session to close (logout, ban, shutdown).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct CloseSession {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: String,
}

/// What the registry keeps per live session.
#[derive(Clone, Debug)]
struct Entry {
    deliver: Recipient<Deliver>,
    close: Recipient<CloseSession>,
    device_session: Option<String>,
    transport: &'static str,
}

/// A session came up.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Connect {
    /// User.
    pub user_id: i64,
    /// Process-unique session key.
    pub key: u64,
    /// Device session id of the token, if session-bound.
    pub device_session: Option<String>,
    /// Transport name (`ws`, `socket.io`).
    pub transport: &'static str,
    /// Event sink.
    pub deliver: Recipient<Deliver>,
    /// Close handle.
    pub close: Recipient<CloseSession>,
}

/// The presence audience of a session's user is known: remember it and, for the user's first
/// device, announce them online.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Announce {
    /// User.
    pub user_id: i64,
    /// Users sharing a conversation with this user.
    pub peers: Vec<i64>,
}

/// A session went away.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// User.
    pub user_id: i64,
    /// Session key.
    pub key: u64,
}

/// Sends an event to every live device of the given users, optionally skipping one session
/// (the one that caused it and already got an ack).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FanOut {
    /// Recipients.
    pub users: Arc<[i64]>,
    /// The event.
    pub event: Arc<ServerEvent>,
    /// A session to skip.
    pub skip: Option<u64>,
}

/// Looks up (or starts) the actor of a conversation.
#[derive(Message, Debug)]
#[rtype(result = "AppResult<Addr<ConversationActor>>")]
pub struct GetConversation(pub i64);

/// A conversation actor stopped after being idle.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConversationStopped {
    /// Conversation.
    pub id: i64,
    /// The actor that stopped (a newer one may already have replaced it).
    pub addr: Addr<ConversationActor>,
}

/// Membership of a conversation changed (REST): reload it and widen presence audiences.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConversationMembersChanged {
    /// Conversation.
    pub id: i64,
    /// Current members.
    pub members: Vec<i64>,
}

/// Presence of one user.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceStatus {
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
pub struct WatchPresence {
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
pub struct KickUser {
    /// User.
    pub user_id: i64,
    /// Only sessions authenticated with this device session.
    pub device_session: Option<String>,
    /// Close code.
    pub code: u16,
    /// Reason.
    pub reason: String,
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
    /// Conversation actors alive.
    pub conversations: usize,
}

/// Asks for [`RegistryStats`].
#[derive(Message, Debug)]
#[rtype(result = "RegistryStats")]
pub struct GetStats;

/// Whether users are online.
#[derive(Message, Debug)]
#[rtype(result = "HashSet<i64>")]
pub struct OnlineAmong(pub Vec<i64>);

/// The registry actor.
pub struct Registry {
    engine: Option<Engine>,
    sessions: HashMap<i64, HashMap<u64, Entry>>,
    peers: HashMap<i64, HashSet<i64>>,
    watchers: HashMap<i64, HashSet<(i64, u64)>>,
    watching: HashMap<u64, Vec<i64>>,
    last_seen: HashMap<i64, DateTime<Utc>>,
    announced: HashSet<i64>,
    conversations: HashMap<i64, Addr<ConversationActor>>,
    next_arbiter: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("users", &self.sessions.len())
            .field("conversations", &self.conversations.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry; [`SetEngine`] completes it.
    pub fn new() -> Self {
        Self {
            engine: None,
            sessions: HashMap::new(),
            peers: HashMap::new(),
            watchers: HashMap::new(),
            watching: HashMap::new(),
            last_seen: HashMap::new(),
            announced: HashSet::new(),
            conversations: HashMap::new(),
            next_arbiter: 0,
        }
    }

    fn deliver_to(&self, users: &[i64], event: &Arc<ServerEvent>, skip: Option<u64>) {
        for user in users {
            if let Some(devices) = self.sessions.get(user) {
                for (key, entry) in devices {
                    if Some(*key) != skip {
                        entry.deliver.do_send(Deliver(Arc::clone(event)));
                    }
                }
            }
        }
    }

    fn presence_audience(&self, user_id: i64) -> Vec<i64> {
        let mut audience: HashSet<i64> = self.peers.get(&user_id).cloned().unwrap_or_default();
        if let Some(w) = self.watchers.get(&user_id) {
            audience.extend(w.iter().map(|(u, _)| *u));
        }
        audience.remove(&user_id);
        audience
            .into_iter()
            .filter(|u| self.sessions.contains_key(u))
            .collect()
    }

    fn broadcast_presence(
        &self,
        user_id: i64,
        online: bool,
        devices: usize,
        last_seen: Option<DateTime<Utc>>,
    ) {
        let audience = self.presence_audience(user_id);
        if audience.is_empty() {
            return;
        }
        let event = ServerEvent::new(
            "presence",
            json!({
                "userId": user_id.to_string(),
                "online": online,
                "status": if online { "online" } else { "offline" },
                "devices": devices,
                "lastSeen": last_seen,
            }),
        );
        self.deliver_to(&audience, &event, None);
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
pub struct SetEngine(pub Engine);

impl Handler<SetEngine> for Registry {
    type Result = ();
    fn handle(&mut self, msg: SetEngine, _: &mut Context<Self>) {
        self.engine = Some(msg.0);
    }
}

impl Handler<Connect> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        let devices = self.sessions.entry(msg.user_id).or_default();
        devices.insert(
            msg.key,
            Entry {
                deliver: msg.deliver,
                close: msg.close,
                device_session: msg.device_session,
                transport: msg.transport,
            },
        );
    }
}

impl Handler<Announce> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Announce, _: &mut Context<Self>) {
        // Presence audiences are symmetric: peers learn about this user and vice versa.
        for peer in &msg.peers {
            self.peers.entry(*peer).or_default().insert(msg.user_id);
        }
        self.peers.entry(msg.user_id).or_default().extend(msg.peers);
        let devices = self.sessions.get(&msg.user_id).map_or(0, HashMap::len);
        if devices > 0 && self.announced.insert(msg.user_id) {
            self.broadcast_presence(msg.user_id, true, devices, None);
        }
    }
}

impl Handler<Disconnect> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        if let Some(targets) = self.watching.remove(&msg.key) {
            for t in targets {
                if let Some(w) = self.watchers.get_mut(&t) {
                    w.remove(&(msg.user_id, msg.key));
                    if w.is_empty() {
                        self.watchers.remove(&t);
                    }
                }
            }
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
            if self.announced.remove(&msg.user_id) {
                self.broadcast_presence(msg.user_id, false, 0, Some(now));
            }
            if let Some(engine) = &self.engine {
                let db = engine.db.clone();
                let user = msg.user_id;
                actix::spawn(async move {
                    let _ = db
                        .run(move |conn| crate::db::accounts::touch_last_seen(conn, user))
                        .await;
                });
            }
        }
    }
}

impl Handler<FanOut> for Registry {
    type Result = ();
    fn handle(&mut self, msg: FanOut, _: &mut Context<Self>) {
        self.deliver_to(&msg.users, &msg.event, msg.skip);
    }
}

impl Handler<GetConversation> for Registry {
    type Result = AppResult<Addr<ConversationActor>>;
    fn handle(&mut self, msg: GetConversation, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.conversations.get(&msg.0) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        let engine = self
            .engine
            .clone()
            .ok_or_else(|| AppError::unavailable("engine is starting"))?;
        let arbiter = engine.arbiters[self.next_arbiter % engine.arbiters.len()].clone();
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        let id = msg.0;
        let registry = ctx.address();
        let addr = ConversationActor::start_in_arbiter(&arbiter, move |_| {
            ConversationActor::new(id, engine, registry)
        });
        self.conversations.insert(id, addr.clone());
        Ok(addr)
    }
}

impl Handler<ConversationStopped> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ConversationStopped, _: &mut Context<Self>) {
        if self
            .conversations
            .get(&msg.id)
            .is_some_and(|a| *a == msg.addr)
        {
            self.conversations.remove(&msg.id);
        }
    }
}

impl Handler<ConversationMembersChanged> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ConversationMembersChanged, _: &mut Context<Self>) {
        for a in &msg.members {
            for b in &msg.members {
                if a != b {
                    self.peers.entry(*a).or_default().insert(*b);
                }
            }
        }
        if let Some(addr) = self.conversations.get(&msg.id) {
            addr.do_send(MembersChanged);
        }
    }
}

impl Handler<WatchPresence> for Registry {
    type Result = MessageResult<WatchPresence>;
    fn handle(&mut self, msg: WatchPresence, _: &mut Context<Self>) -> Self::Result {
        let mut statuses = Vec::with_capacity(msg.targets.len());
        let list = self.watching.entry(msg.key).or_default();
        for t in msg.targets.iter().take(1000) {
            if !list.contains(t) {
                list.push(*t);
            }
            self.watchers
                .entry(*t)
                .or_default()
                .insert((msg.user_id, msg.key));
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
        let mut sessions = 0;
        for devices in self.sessions.values() {
            for entry in devices.values() {
                *by_transport.entry(entry.transport).or_default() += 1;
                sessions += 1;
            }
        }
        MessageResult(RegistryStats {
            online_users: self.sessions.len(),
            sessions,
            by_transport,
            conversations: self.conversations.len(),
        })
    }
}

impl Handler<OnlineAmong> for Registry {
    type Result = MessageResult<OnlineAmong>;
    fn handle(&mut self, msg: OnlineAmong, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.0
                .into_iter()
                .filter(|u| self.sessions.contains_key(u))
                .collect(),
        )
    }
}
