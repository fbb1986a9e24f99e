//! Cluster mode (`REDIS_URL` set): several nodes share one PostgreSQL and reach each other's
//! users through Redis. Unset, none of this runs and the engine delivers through its
//! [`Directory`] alone.
//!
//! # What crosses nodes
//! - **Events.** [`ClusterDelivery`] delivers to this node's sessions, then publishes the event
//!   once on the service's bus channel with its recipients. Every node parses it once and offers
//!   the one decoded event to its own sessions of those recipients (encoded once per node, not
//!   per recipient).
//! - **Message order.** A `message:new` carries its conversation and seq. On the receiving node
//!   it goes through that conversation's actor, which fans out strictly in seq order: a seq that
//!   arrives ahead of the one before waits `CLUSTER_GAP_WAIT_MS`, then the missing rows are read
//!   from PostgreSQL (a committed seq means every lower seq is committed: seqs are reserved under
//!   the conversation's row lock).
//! - **Presence.** Each node keeps, per user, its device count in the user's presence hash and
//!   the user in its own user set; an atomic script answers the devices on every node, so
//!   online and offline are cluster-wide. A node's heartbeat key expires `NODE_TTL_MS` after
//!   its last refresh; a surviving node then removes the dead node's entries in one script (so
//!   only one node does it) and announces its users offline where no other node holds them.
//! - **Control.** Kicks (bans, forced logouts) and membership changes are published as well,
//!   and every node applies them to its own sessions and conversation actors.
//!
//! # Faults
//! Publishing goes through a bounded queue (`CLUSTER_QUEUE`) on a thread of its own; while
//! Redis is away it is drained and counted as dropped, so no session and no commit waits for
//! Redis. Clients on other nodes recover what they missed with `sync`, and a conversation
//! actor that later sees a seq past its mark fills the gap from PostgreSQL. The client
//! reconnects by itself; the subscription is renewed after every reconnect, and a node that
//! finds itself missing from the node set (Redis restarted empty) writes its presence again.

use super::conversation::RemoteMessage;
use super::dialect::Media;
use super::directory::{Delivery, Directory};
use super::protocol::ServerEvent;
use super::registry::{
    ClusterPresence, ConversationMembersChanged, GetConversation, KickUser, LocalPresence,
};
use super::Engine;
use crate::config::Config;
use chrono::{DateTime, Utc};
use fred::prelude::{
    Builder, ClientLike, Config as RedisConfig, EventInterface, KeysInterface, LuaInterface,
    PubsubInterface, ReconnectPolicy, SetsInterface,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Most queued publishes sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 256;

/// Messages a lagging subscriber may have waiting before the oldest are lost (and counted).
const RECEIVE_BUFFER: usize = 65_536;

/// Users whose presence one script call rewrites after Redis lost this node's entries.
const PRESENCE_CHUNK: usize = 500;

/// What one node tells the others.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending node.
    from: String,
    /// What it says.
    body: Body,
}

/// The things nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
enum Body {
    /// An event for every live device of `users`.
    Event {
        users: Vec<i64>,
        name: String,
        data: Value,
        /// A new message's conversation and seq (delivered in seq order).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<(i64, i64)>,
    },
    /// A user's presence changed (cluster-wide device count).
    Presence {
        user: i64,
        devices: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<DateTime<Utc>>,
    },
    /// Close a user's sockets (all, or one device session's).
    Kick {
        user: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_session: Option<String>,
        code: u16,
        reason: String,
    },
    /// A conversation's membership changed.
    Members {
        conversation: i64,
        members: Vec<i64>,
    },
}

/// Work for the cluster thread.
#[derive(Debug)]
enum Outgoing {
    /// An encoded [`Envelope`] for the bus.
    Publish(String),
    /// This node now holds `devices` sessions of `user` (0: none; `last_seen` set).
    Presence {
        user: i64,
        devices: usize,
        last_seen: Option<DateTime<Utc>>,
    },
    /// Leave the cluster (shutdown): publish what is queued, remove this node's entries,
    /// stop beating.
    Leave(oneshot::Sender<()>),
    /// Devices of each user on every node.
    Devices {
        users: Vec<i64>,
        reply: oneshot::Sender<HashMap<i64, u64>>,
    },
}

/// Redis key and channel names of one service.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn heartbeat(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn node_users(&self, node: &str) -> String {
        format!("{}:node:{node}:users", self.prefix)
    }
    fn presence_prefix(&self) -> String {
        format!("{}:presence:", self.prefix)
    }
    fn presence(&self, user: i64) -> String {
        format!("{}:presence:{user}", self.prefix)
    }
}

/// Sets this node's device count of a user and answers the user's devices on every node.
/// KEYS: presence hash, this node's user set. ARGV: node, devices, user.
const PRESENCE_SCRIPT: &str = r"
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[3])
end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
return total
";

/// Rewrites this node's device counts of many users (after Redis lost them).
/// KEYS: this node's user set. ARGV: node, presence key prefix, then user, devices pairs.
const RESTORE_SCRIPT: &str = r"
for i = 3, #ARGV, 2 do
  redis.call('HSET', ARGV[2] .. ARGV[i], ARGV[1], ARGV[i + 1])
  redis.call('SADD', KEYS[1], ARGV[i])
end
return 0
";

/// Devices of each user on every node. KEYS: presence hashes.
const DEVICES_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end
  out[i] = total
end
return out
";

/// Nodes in the node set whose heartbeat expired. KEYS: node set. ARGV: heartbeat key prefix.
const DEAD_SCRIPT: &str = r"
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. node) == 0 then table.insert(dead, node) end
end
return dead
";

/// Removes a dead node's presence entries (once: a second caller finds nothing) and answers
/// the users no node holds any more. KEYS: its user set, the node set, its heartbeat key.
/// ARGV: the node, presence key prefix.
const REAP_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return {} end
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. user
  redis.call('HDEL', key, ARGV[1])
  if redis.call('HLEN', key) == 0 then table.insert(gone, user) end
end
redis.call('DEL', KEYS[1])
return gone
";

/// A node's view of the cluster (for `/health`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// `redis` (this is a cluster node).
    pub mode: &'static str,
    /// This node's id.
    pub node: String,
    /// `up` or `down`.
    pub redis: &'static str,
    /// Live nodes seen at the last heartbeat (this one included).
    pub nodes: usize,
}

/// Counters of the cluster link (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterCounts {
    /// Live nodes seen at the last heartbeat.
    pub nodes: usize,
    /// Whether Redis answered last time.
    pub redis_up: bool,
    /// Envelopes published.
    pub published: u64,
    /// Envelopes received from other nodes.
    pub received: u64,
    /// Envelopes not published or not received (queue full, Redis away, subscriber lag).
    pub dropped: u64,
    /// Message seqs read from the database because another node's delivery did not arrive.
    pub gap_fills: u64,
    /// Dead nodes whose entries this node removed.
    pub nodes_reaped: u64,
}

/// This node's link to the others.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    keys: Keys,
    outgoing: mpsc::Sender<Outgoing>,
    /// How long a conversation waits for a missing seq before reading it.
    pub gap_wait: Duration,
    redis_up: AtomicBool,
    nodes: AtomicUsize,
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    gap_fills: AtomicU64,
    nodes_reaped: AtomicU64,
    /// Set once this node left (shutdown) or was halted: no heartbeat any more.
    stopped: AtomicBool,
    /// Set once the bus subscription first went through (renewed by the client after that).
    subscribed: AtomicBool,
}

/// The half of the cluster link that runs once the engine exists.
#[derive(Debug)]
pub struct Runner {
    cluster: Arc<Cluster>,
    incoming: mpsc::Receiver<Outgoing>,
    redis: RedisConfig,
    heartbeat: Duration,
    ttl: Duration,
}

/// The default node id: host name, process id and a random suffix.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace([':', ' '], "-"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let mut random = [0u8; 3];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!(
        "{host}-{}-{:02x}{:02x}{:02x}",
        std::process::id(),
        random[0],
        random[1],
        random[2]
    )
}

impl Cluster {
    /// The cluster link for `config`, or `None` when `REDIS_URL` is unset. Fails on a URL that
    /// is not a Redis URL.
    pub fn new(config: &Config) -> Result<Option<(Arc<Self>, Runner)>, String> {
        if config.redis_url.is_empty() {
            return Ok(None);
        }
        let redis = RedisConfig::from_url(config.redis_url.expose())
            .map_err(|e| format!("REDIS_URL: {e}"))?;
        let node = if config.node_id.is_empty() {
            default_node_id()
        } else {
            config.node_id.clone()
        };
        let (tx, rx) = mpsc::channel(config.cluster_queue);
        let cluster = Arc::new(Self {
            node,
            keys: Keys {
                prefix: config.redis_prefix.clone(),
            },
            outgoing: tx,
            gap_wait: config.cluster_gap_wait,
            redis_up: AtomicBool::new(false),
            nodes: AtomicUsize::new(1),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            gap_fills: AtomicU64::new(0),
            nodes_reaped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
        });
        let runner = Runner {
            cluster: Arc::clone(&cluster),
            incoming: rx,
            redis,
            heartbeat: config.node_heartbeat,
            ttl: config.node_ttl,
        };
        Ok(Some((cluster, runner)))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What `/health` shows.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            mode: "redis",
            node: self.node.clone(),
            redis: if self.redis_up.load(Ordering::Relaxed)
                && self.subscribed.load(Ordering::Relaxed)
            {
                "up"
            } else {
                "down"
            },
            nodes: self.nodes.load(Ordering::Relaxed),
        }
    }

    /// What `/metrics` shows.
    pub fn counts(&self) -> ClusterCounts {
        ClusterCounts {
            nodes: self.nodes.load(Ordering::Relaxed),
            redis_up: self.redis_up.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            gap_fills: self.gap_fills.load(Ordering::Relaxed),
            nodes_reaped: self.nodes_reaped.load(Ordering::Relaxed),
        }
    }

    /// Counts seqs a conversation read from the database in place of another node's delivery.
    pub fn gap_filled(&self, seqs: usize) {
        self.gap_fills.fetch_add(seqs as u64, Ordering::Relaxed);
    }

    fn publish(&self, body: Body) {
        let envelope = Envelope {
            from: self.node.clone(),
            body,
        };
        let Ok(text) = serde_json::to_string(&envelope) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.outgoing.try_send(Outgoing::Publish(text)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes an event for the other nodes' sessions of `users`.
    pub fn publish_event(&self, users: &[i64], event: &ServerEvent) {
        self.publish(Body::Event {
            users: users.to_vec(),
            name: event.name.to_string(),
            data: event.payload.clone(),
            message: event.delivery,
        });
    }

    /// Publishes a kick for the other nodes' sessions of `user`.
    pub fn publish_kick(&self, user: i64, device_session: Option<String>, code: u16, reason: &str) {
        self.publish(Body::Kick {
            user,
            device_session,
            code,
            reason: reason.to_owned(),
        });
    }

    /// Publishes a membership change for the other nodes.
    pub fn publish_members(&self, conversation: i64, members: Vec<i64>) {
        self.publish(Body::Members {
            conversation,
            members,
        });
    }

    /// Records that this node holds `devices` sessions of `user`; the cluster-wide presence
    /// comes back to the registry as [`ClusterPresence`] (this node's view alone while Redis
    /// is away). Answers false when the queue is full (the caller announces its local view).
    pub fn presence(&self, user: i64, devices: usize, last_seen: Option<DateTime<Utc>>) -> bool {
        self.outgoing
            .try_send(Outgoing::Presence {
                user,
                devices,
                last_seen,
            })
            .is_ok()
    }

    /// Each user's devices on every node (users Redis does not know are left out; empty while
    /// Redis is away).
    pub async fn devices_of(&self, users: Vec<i64>) -> HashMap<i64, u64> {
        let (reply, rx) = oneshot::channel();
        if self
            .outgoing
            .try_send(Outgoing::Devices { users, reply })
            .is_err()
        {
            return HashMap::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Leaves the cluster: what is queued is published, then this node's heartbeat and
    /// presence entries are removed (its users offline where no other node holds them).
    pub async fn leave(&self) {
        let (reply, rx) = oneshot::channel();
        if self.outgoing.send(Outgoing::Leave(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops beating at once and leaves every entry behind, as a crashed node would (tests
    /// of failover run several nodes in one process).
    pub fn halt(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn set_redis_up(&self, up: bool) {
        let was = self.redis_up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(node = %self.node, "cluster: Redis reachable; cross-node delivery on");
            } else {
                tracing::warn!(
                    node = %self.node,
                    "cluster: Redis unreachable; serving this node's clients only, cross-node \
                     events are dropped until it is back (clients catch up with sync)"
                );
            }
        }
    }
}

/// Delivery that reaches this node's sessions directly and every other node's through Redis.
#[derive(Debug)]
pub struct ClusterDelivery {
    directory: Arc<Directory>,
    cluster: Arc<Cluster>,
}

impl ClusterDelivery {
    /// Delivery through `directory` and `cluster`.
    pub fn new(directory: Arc<Directory>, cluster: Arc<Cluster>) -> Self {
        Self { directory, cluster }
    }
}

impl Delivery for ClusterDelivery {
    fn deliver(&self, users: &[i64], event: &Arc<ServerEvent>, skip: Option<u64>) -> usize {
        let delivered = self.directory.deliver(users, event, skip);
        if !users.is_empty() {
            self.cluster.publish_event(users, event);
        }
        delivered
    }

    fn deliver_to_session(&self, user: i64, key: u64, event: &Arc<ServerEvent>) -> bool {
        self.directory.deliver_to_session(user, key, event)
    }

    fn media_of(&self, user: i64, key: Option<u64>) -> Option<Media> {
        self.directory.media_of(user, key)
    }
}

impl Runner {
    /// Starts the cluster thread (its own Tokio runtime: Redis I/O never runs on a worker).
    pub fn start(self, engine: Engine) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster: could not start its runtime");
                        return;
                    }
                };
                runtime.block_on(self.run(engine));
            })
            .map(|_| ())
    }

    async fn run(self, engine: Engine) {
        let Self {
            cluster,
            mut incoming,
            redis,
            heartbeat,
            ttl,
        } = self;
        let build = |builder: &mut Builder| {
            builder
                .with_performance_config(|p| {
                    p.default_command_timeout = COMMAND_TIMEOUT;
                    p.broadcast_channel_capacity = RECEIVE_BUFFER;
                })
                .with_connection_config(|c| {
                    c.connection_timeout = COMMAND_TIMEOUT;
                    c.internal_command_timeout = COMMAND_TIMEOUT;
                    c.max_command_attempts = 1;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        };
        let mut builder = Builder::from_config(redis.clone());
        build(&mut builder);
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cluster: could not build the Redis client");
                return;
            }
        };
        let mut builder = Builder::from_config(redis);
        build(&mut builder);
        let subscriber = match builder.build_subscriber_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cluster: could not build the Redis subscriber");
                return;
            }
        };
        let _connection = client.connect();
        let _subscription = subscriber.connect();
        let _resubscribe = subscriber.manage_subscriptions();
        {
            let cluster = Arc::clone(&cluster);
            let _errors = client.on_error(move |(e, _)| {
                tracing::debug!(error = %e, "cluster: Redis connection error");
                cluster.set_redis_up(false);
                async { Ok(()) }
            });
        }
        let messages = subscriber.message_rx();
        tokio::spawn(receive(
            Arc::clone(&cluster),
            engine.clone(),
            messages,
            subscriber,
        ));
        let beat = Heartbeat {
            cluster: Arc::clone(&cluster),
            engine: engine.clone(),
            client: client.clone(),
            ttl,
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                beat.beat().await;
            }
        });
        send(cluster, engine, client, &mut incoming).await;
    }
}

/// Drains the outgoing queue: publishes in pipelines, runs presence scripts in order.
async fn send(
    cluster: Arc<Cluster>,
    engine: Engine,
    client: fred::clients::Client,
    incoming: &mut mpsc::Receiver<Outgoing>,
) {
    let bus = cluster.keys.bus();
    let mut batch: Vec<String> = Vec::with_capacity(PUBLISH_BATCH);
    while let Some(first) = incoming.recv().await {
        if cluster.stopped.load(Ordering::SeqCst) {
            if let Outgoing::Leave(reply) = first {
                let _ = reply.send(());
            }
            continue;
        }
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Publish(text) => {
                    batch.push(text);
                    if batch.len() < PUBLISH_BATCH {
                        next = incoming.try_recv().ok();
                    }
                }
                other => {
                    flush(&cluster, &client, &bus, &mut batch).await;
                    control(&cluster, &engine, &client, other).await;
                    next = incoming.try_recv().ok();
                }
            }
        }
        flush(&cluster, &client, &bus, &mut batch).await;
    }
}

/// Publishes what `batch` holds (dropped and counted while Redis is away).
async fn flush(
    cluster: &Cluster,
    client: &fred::clients::Client,
    bus: &str,
    batch: &mut Vec<String>,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    if !cluster.redis_up.load(Ordering::Relaxed) {
        batch.clear();
        cluster.dropped.fetch_add(n, Ordering::Relaxed);
        return;
    }
    let result = if batch.len() == 1 {
        let text = batch.pop().unwrap_or_default();
        client.publish::<i64, _, _>(bus, text).await.map(|_| ())
    } else {
        let pipeline = client.pipeline();
        let mut queued = Ok(());
        for text in batch.drain(..) {
            if let Err(e) = pipeline.publish::<(), _, _>(bus, text).await {
                queued = Err(e);
                break;
            }
        }
        match queued {
            Ok(()) => pipeline.all::<Vec<i64>>().await.map(|_| ()),
            Err(e) => Err(e),
        }
    };
    batch.clear();
    match result {
        Ok(()) => {
            cluster.published.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            cluster.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::debug!(error = %e, "cluster: publish failed");
            cluster.set_redis_up(false);
        }
    }
}

/// Runs one presence update or query.
async fn control(
    cluster: &Cluster,
    engine: &Engine,
    client: &fred::clients::Client,
    item: Outgoing,
) {
    match item {
        Outgoing::Publish(_) => {}
        Outgoing::Leave(reply) => {
            cluster.stopped.store(true, Ordering::SeqCst);
            let keys = &cluster.keys;
            let left = async {
                client.del::<i64, _>(keys.heartbeat(&cluster.node)).await?;
                reap(cluster, engine, client, &cluster.node).await
            }
            .await;
            match left {
                Ok(()) => tracing::info!(node = %cluster.node, "cluster: left"),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: could not leave cleanly; the others reap this node when its heartbeat expires")
                }
            }
            let _ = reply.send(());
        }
        Outgoing::Presence {
            user,
            devices,
            last_seen,
        } => {
            let result: Result<u64, _> = if cluster.redis_up.load(Ordering::Relaxed) {
                client
                    .eval(
                        PRESENCE_SCRIPT,
                        vec![
                            cluster.keys.presence(user),
                            cluster.keys.node_users(&cluster.node),
                        ],
                        vec![cluster.node.clone(), devices.to_string(), user.to_string()],
                    )
                    .await
            } else {
                Err(fred::error::Error::new(
                    fred::error::ErrorKind::IO,
                    "Redis unreachable",
                ))
            };
            let total = match result {
                Ok(total) => {
                    cluster.publish(Body::Presence {
                        user,
                        devices: total,
                        last_seen,
                    });
                    total
                }
                Err(e) => {
                    tracing::debug!(error = %e, user, "cluster: presence not shared");
                    if cluster.redis_up.load(Ordering::Relaxed) {
                        cluster.set_redis_up(false);
                    }
                    devices as u64
                }
            };
            engine.registry.do_send(ClusterPresence {
                user_id: user,
                devices: total,
                last_seen,
            });
        }
        Outgoing::Devices { users, reply } => {
            let mut out = HashMap::new();
            if cluster.redis_up.load(Ordering::Relaxed) && !users.is_empty() {
                let keys: Vec<String> = users.iter().map(|u| cluster.keys.presence(*u)).collect();
                match client
                    .eval::<Vec<u64>, _, _, _>(DEVICES_SCRIPT, keys, Vec::<String>::new())
                    .await
                {
                    Ok(totals) => {
                        out.extend(users.iter().copied().zip(totals).filter(|(_, n)| *n > 0));
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: presence query failed"),
                }
            }
            let _ = reply.send(out);
        }
    }
}

/// Subscribes to the bus (again until it succeeds) and hands every envelope from another node
/// to this node's engine.
async fn receive(
    cluster: Arc<Cluster>,
    engine: Engine,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    subscriber: fred::clients::SubscriberClient,
) {
    let bus = cluster.keys.bus();
    {
        let bus = bus.clone();
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            loop {
                match subscriber.subscribe(bus.clone()).await {
                    Ok(()) => {
                        cluster.subscribed.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: subscribe failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            // Keep the subscriber alive for as long as this thread runs.
            std::future::pending::<()>().await;
            drop(subscriber);
        });
    }
    loop {
        match messages.recv().await {
            Ok(message) => {
                let Some(bytes) = message.value.as_bytes() else {
                    continue;
                };
                match serde_json::from_slice::<Envelope>(bytes) {
                    Ok(envelope) if envelope.from == cluster.node => {}
                    Ok(envelope) => {
                        cluster.received.fetch_add(1, Ordering::Relaxed);
                        dispatch(&engine, envelope.body).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster: unreadable envelope ignored"),
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                cluster.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    lost = n,
                    "cluster: fell behind the bus; clients catch up with sync"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Applies what another node said to this node's sessions and actors.
async fn dispatch(engine: &Engine, body: Body) {
    match body {
        Body::Event {
            users,
            name,
            data,
            message: None,
        } => {
            engine
                .directory
                .deliver(&users, &ServerEvent::new(name, data), None);
        }
        Body::Event {
            users,
            name,
            data,
            message: Some((conversation, seq)),
        } => {
            let event = ServerEvent::message(name, data, conversation, seq);
            let remote = RemoteMessage {
                seq,
                event,
                users: users.into(),
            };
            if let Some(addr) = engine.conversations.get(&conversation) {
                let _ = addr.try_send(remote);
                return;
            }
            // No actor here: start one only for recipients on this node. Awaited here, so the
            // next seq of this conversation finds the actor this one started.
            if !remote.users.iter().any(|u| engine.directory.holds(*u)) {
                return;
            }
            match engine
                .registry
                .send(GetConversation {
                    id: conversation,
                    remote_seq: Some(seq),
                })
                .await
            {
                Ok(Ok(addr)) => {
                    let _ = addr.try_send(remote);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, conversation, "cluster: no conversation actor")
                }
                Err(e) => {
                    tracing::debug!(error = %e, conversation, "cluster: registry unavailable")
                }
            }
        }
        Body::Presence {
            user,
            devices,
            last_seen,
        } => engine.registry.do_send(ClusterPresence {
            user_id: user,
            devices,
            last_seen,
        }),
        Body::Kick {
            user,
            device_session,
            code,
            reason,
        } => engine.registry.do_send(KickUser {
            user_id: user,
            device_session,
            code,
            reason,
        }),
        Body::Members {
            conversation,
            members,
        } => engine.registry.do_send(ConversationMembersChanged {
            id: conversation,
            members,
        }),
    }
}

/// Removes a node's presence entries (a dead node's, or this one's as it leaves) and takes its
/// users offline where no other node holds them. The script runs once per node: a second
/// caller finds nothing.
async fn reap(
    cluster: &Cluster,
    engine: &Engine,
    client: &fred::clients::Client,
    node: &str,
) -> Result<(), fred::error::Error> {
    let keys = &cluster.keys;
    let gone: Vec<i64> = client
        .eval(
            REAP_SCRIPT,
            vec![keys.node_users(node), keys.nodes(), keys.heartbeat(node)],
            vec![node.to_owned(), keys.presence_prefix()],
        )
        .await?;
    if node != cluster.node {
        tracing::warn!(
            dead = %node,
            users_offline = gone.len(),
            "cluster: a node stopped beating; its devices are offline"
        );
    }
    let now = Utc::now();
    for user in gone {
        let body = Body::Presence {
            user,
            devices: 0,
            last_seen: Some(now),
        };
        if node == cluster.node {
            // Leaving: the queue is no longer drained, publish directly.
            if let Ok(text) = serde_json::to_string(&Envelope {
                from: cluster.node.clone(),
                body,
            }) {
                let _ = client.publish::<i64, _, _>(keys.bus(), text).await;
            }
        } else {
            cluster.publish(body);
            engine.registry.do_send(ClusterPresence {
                user_id: user,
                devices: 0,
                last_seen: Some(now),
            });
        }
    }
    Ok(())
}

/// The periodic part: heartbeat, dead nodes, presence restore.
struct Heartbeat {
    cluster: Arc<Cluster>,
    engine: Engine,
    client: fred::clients::Client,
    ttl: Duration,
}

impl Heartbeat {
    async fn beat(&self) {
        if self.cluster.stopped.load(Ordering::SeqCst) {
            return;
        }
        match self.try_beat().await {
            Ok(()) => self.cluster.set_redis_up(true),
            Err(e) => {
                tracing::debug!(error = %e, "cluster: heartbeat failed");
                self.cluster.set_redis_up(false);
            }
        }
    }

    async fn try_beat(&self) -> Result<(), fred::error::Error> {
        let cluster = &self.cluster;
        let keys = &cluster.keys;
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        self.client
            .set::<(), _, _>(
                keys.heartbeat(&cluster.node),
                Utc::now().timestamp_millis(),
                Some(fred::types::Expiration::PX(ttl_ms)),
                None,
                false,
            )
            .await?;
        let added: i64 = self.client.sadd(keys.nodes(), cluster.node.clone()).await?;
        if added == 1 {
            // New here, or Redis lost this node's entries: write its presence (again).
            self.restore_presence().await?;
        }
        let dead: Vec<String> = self
            .client
            .eval(
                DEAD_SCRIPT,
                vec![keys.nodes()],
                vec![format!("{}:node:", keys.prefix)],
            )
            .await?;
        for node in dead.iter().filter(|n| **n != cluster.node) {
            reap(cluster, &self.engine, &self.client, node).await?;
            cluster.nodes_reaped.fetch_add(1, Ordering::Relaxed);
        }
        let alive: u64 = self.client.scard(keys.nodes()).await?;
        cluster.nodes.store(
            usize::try_from(alive).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Writes this node's device count of every user it holds.
    async fn restore_presence(&self) -> Result<(), fred::error::Error> {
        let Ok(held) = self.engine.registry.send(LocalPresence).await else {
            return Ok(());
        };
        let keys = &self.cluster.keys;
        for chunk in held.chunks(PRESENCE_CHUNK) {
            let mut args = vec![self.cluster.node.clone(), keys.presence_prefix()];
            for (user, devices) in chunk {
                args.push(user.to_string());
                args.push(devices.to_string());
            }
            self.client
                .eval::<i64, _, _, _>(
                    RESTORE_SCRIPT,
                    vec![keys.node_users(&self.cluster.node)],
                    args,
                )
                .await?;
            // Other nodes may have reaped this one (its heartbeat lapsed): online again.
            for (user, devices) in chunk {
                self.cluster.publish(Body::Presence {
                    user: *user,
                    devices: *devices as u64,
                    last_seen: None,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Body, Envelope};
    use serde_json::json;

    #[test]
    fn envelopes_round_trip_with_and_without_a_message_seq() {
        let with = Envelope {
            from: "a".into(),
            body: Body::Event {
                users: vec![1, 2],
                name: "message:new".into(),
                data: json!({"text": "hi"}),
                message: Some((7, 42)),
            },
        };
        let text = serde_json::to_string(&with).unwrap_or_default();
        let back: Envelope = serde_json::from_str(&text).unwrap_or_else(|e| {
            unreachable!("{e}: {text}");
        });
        assert!(matches!(
            back.body,
            Body::Event { message: Some((7, 42)), ref users, .. } if users == &[1, 2]
        ));
        let without =
            r#"{"from":"b","body":{"Event":{"users":[3],"name":"typing:start","data":{}}}}"#;
        let back: Envelope = serde_json::from_str(without).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(back.body, Body::Event { message: None, .. }));
    }
}
