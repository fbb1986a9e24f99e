//! Cluster mode (`REDIS_URL` set): several nodes share one PostgreSQL and reach each other's
//! users through Redis. Unset, none of this runs and the engine delivers through its
//! [`Directory`] alone.
//!
//! # What crosses nodes
//! - **Events.** [`ClusterDelivery`] delivers to this node's sessions, then publishes the event
//!   with its recipients. Every other node reads it once and offers the one event to its own
//!   sessions of those recipients (encoded once per node, not per recipient). A message's
//!   payload stays the JSON text the committing node wrote: a node whose recipients take
//!   canonical frames or Socket.IO's puts that text in their frames as it is, and only a
//!   dialect's recipient has it parsed.
//!   Everything queued when the cluster thread publishes goes out as one Redis message
//!   (`Frames`) to each other node's inbox channel, so no node receives its own. A node
//!   knows the others by their hellos (an empty frame on the shared bus, sent after each
//!   subscription and on every heartbeat) and by their frames; while it knows none (starting
//!   up, or alone) it publishes on the shared bus, which every node listens on.
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
//! - **Sends, with `CLUSTER_OWNED_WRITES`.** A keyed send for a conversation another node
//!   writes ([`Cluster::writer_of`]) is forwarded there (`Send`) and answered from its commit
//!   (`Sent`); without an answer in `CLUSTER_FORWARD_TIMEOUT_MS` it is written where it arrived.
//! - **Rate limits.** A user's send and call buckets are shared in Redis; send tokens are
//!   leased to a node in batches ([`super::ratelimit::Leases`]).
//!
//! # Faults
//! Publishing goes through a bounded queue (`CLUSTER_QUEUE`) on a thread of its own; while
//! Redis is away it is drained and counted as dropped, so no session and no commit waits for
//! Redis. Clients on other nodes recover what they missed with `sync`, and a conversation
//! actor that later sees a seq past its mark fills the gap from PostgreSQL. The client
//! reconnects by itself; the subscription is renewed after every reconnect, and a node that
//! finds itself missing from the node set (Redis restarted empty) writes its presence again.

use super::call::machine::Event as CallEvent;
use super::conversation::{still_to_wait, RemoteMessage};
use super::dialect::Media;
use super::directory::{Delivery, Directory};
use super::protocol::ServerEvent;
use super::registry::{
    ClusterPresence, ConversationMembersChanged, GetConversation, KickUser, LocalPresence,
};
use super::Engine;
use crate::config::Config;
use crate::db::messages::{Draft, Message};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::events;
use chrono::{DateTime, Utc};
use fred::prelude::{
    Builder, ClientLike, Config as RedisConfig, EventInterface, HashesInterface, KeysInterface,
    LuaInterface, PubsubInterface, ReconnectPolicy, SetsInterface,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a call input forwarded to the node running the call waits for its answer.
pub(crate) const CALL_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Most queued publishes sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 256;

/// Messages a lagging subscriber may have waiting before the oldest are lost (and counted).
const RECEIVE_BUFFER: usize = 65_536;

/// First word of a bus frame's header line (a frame of another format is ignored, and logged).
const FRAME_TAG: &str = "sb1";

/// Most bytes of bodies one bus frame carries (a flush with more publishes several frames).
const FRAME_BYTES: usize = 256 * 1024;

/// What one Redis message on the bus carries: the header line `sb1 <node>` naming the sending
/// node, then one JSON-encoded [`Body`] per line (compact JSON holds no raw newline). A node
/// publishes every body it had queued in as few frames as fit [`FRAME_BYTES`], so Redis and its
/// clients handle one message per flush rather than one per event, and a node skips its own
/// frames by their header without decoding them.
#[derive(Debug, Default)]
struct Frames {
    /// Frames filled so far (the last one still open).
    done: Vec<String>,
    /// Bodies in them.
    bodies: u64,
}

impl Frames {
    /// Appends one encoded body, opening a new frame when the open one is full.
    fn push(&mut self, node: &str, body: &str) {
        if !matches!(self.done.last(), Some(open) if open.len() + body.len() < FRAME_BYTES) {
            self.done.push(frame_header(node, body.len()));
        }
        if let Some(open) = self.done.last_mut() {
            open.push('\n');
            open.push_str(body);
            self.bodies += 1;
        }
    }
}

/// The header line of a frame of this node, with room for a first body of `first` bytes.
fn frame_header(node: &str, first: usize) -> String {
    let mut header = String::with_capacity(FRAME_TAG.len() + node.len() + first + 2);
    header.push_str(FRAME_TAG);
    header.push(' ');
    header.push_str(node);
    header
}

/// A frame of `node` carrying one body (published directly, not through the queue).
fn single_frame(node: &str, body: &Body<'_>) -> Option<String> {
    let text = serde_json::to_string(body).ok()?;
    let mut frames = Frames::default();
    frames.push(node, &text);
    frames.done.pop()
}

/// Splits a received frame into its sending node and its encoded bodies (`None`: not a frame).
fn split_frame(bytes: &[u8]) -> Option<(&str, impl Iterator<Item = &[u8]>)> {
    let mut lines = bytes.split(|b| *b == b'\n');
    let header = std::str::from_utf8(lines.next()?).ok()?;
    let node = header.strip_prefix(FRAME_TAG)?.strip_prefix(' ')?;
    Some((node, lines.filter(|line| !line.is_empty())))
}

/// The things nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
/// (An event borrows what the sending node has: it is encoded without copying the payload.)
enum Body<'a> {
    /// An event for every live device of `users` (but the session `skip`).
    Event {
        users: Cow<'a, [i64]>,
        name: Cow<'a, str>,
        #[serde(borrow)]
        data: Payload<'a>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<u64>,
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
    /// Cached contact verdicts another node made stale.
    Cache(crate::policy::Invalidation),
    /// An event for one session (session keys are unique across nodes).
    ToSession {
        user: i64,
        key: u64,
        name: Cow<'a, str>,
        data: Cow<'a, Value>,
    },
    /// Input for a call whose actor runs on node `to`; `request` set: answer with `CallReply`.
    CallInput {
        to: String,
        call_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<u64>,
        event: WireCallEvent,
    },
    /// The outcome of a forwarded call input, for node `to`.
    CallReply {
        to: String,
        request: u64,
        refusal: Option<WireRefusal>,
    },
    /// A send for a conversation node `to` writes: committed there, answered with `Sent`.
    /// `sender` is the user the sending node verified; `origin` the sending session, skipped
    /// in the fan-out (it gets the ack).
    Send {
        to: String,
        request: u64,
        sender: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<u64>,
        draft: Draft,
    },
    /// The outcome of a forwarded send, for node `to`.
    Sent {
        to: String,
        request: u64,
        outcome: Result<Message, WireError>,
    },
}

/// An event's payload on the bus: the sending node's value, encoded as it goes out; on the
/// receiving node, the JSON text as it came. A message's event keeps that text
/// ([`ServerEvent::message`]), so a node whose recipients all take canonical frames or
/// Socket.IO's never builds the value, nor encodes it again.
#[derive(Debug)]
enum Payload<'a> {
    Value(&'a Value),
    Encoded(&'a RawValue),
}

impl<'a> Payload<'a> {
    /// An event's payload: its text when it was made from one, else its value.
    fn of(event: &'a ServerEvent) -> Self {
        event
            .encoded()
            .map_or_else(|| Self::Value(event.payload()), Self::Encoded)
    }

    /// The payload as a value (parsed from the text on the receiving side).
    fn to_value(&self) -> Value {
        match self {
            Self::Value(v) => (*v).clone(),
            Self::Encoded(raw) => serde_json::from_str(raw.get()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cluster: unreadable event payload");
                Value::Null
            }),
        }
    }
}

impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(s),
            Self::Encoded(raw) => raw.serialize(s),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Payload<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(Payload::Encoded)
    }
}

/// Why a forwarded send was refused: the error's kind, its code and what the client is told.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireError {
    kind: WireErrorKind,
    code: String,
    message: String,
}

/// The kinds of [`AppError`] a send can end with (anything else crosses as `Unavailable`).
#[derive(Debug, Serialize, Deserialize)]
enum WireErrorKind {
    BadRequest,
    Validation,
    Forbidden,
    NotAllowed,
    NotFound,
    Conflict,
    TooLarge,
    Unavailable,
}

impl WireError {
    fn of(e: &AppError) -> Self {
        let kind = match e {
            AppError::BadRequest { .. } => WireErrorKind::BadRequest,
            AppError::Validation { .. } => WireErrorKind::Validation,
            AppError::Forbidden(_) => WireErrorKind::Forbidden,
            AppError::NotAllowed(_) => WireErrorKind::NotAllowed,
            AppError::NotFound(_) => WireErrorKind::NotFound,
            AppError::Conflict { .. } => WireErrorKind::Conflict,
            AppError::TooLarge(_) => WireErrorKind::TooLarge,
            _ => WireErrorKind::Unavailable,
        };
        Self {
            kind,
            code: e.code().as_str().to_owned(),
            message: e.to_string(),
        }
    }

    fn into_error(self) -> AppError {
        let code = ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == self.code);
        let message = self.message;
        match (self.kind, code) {
            (WireErrorKind::BadRequest, Some(code)) => AppError::bad_request(code, message),
            (WireErrorKind::Validation, Some(code)) => AppError::Validation {
                code,
                message: message.into(),
            },
            (WireErrorKind::Validation, None) => AppError::validation(message),
            (WireErrorKind::Forbidden, _) => AppError::Forbidden(message.into()),
            (WireErrorKind::NotAllowed, _) => AppError::NotAllowed(message.into()),
            (WireErrorKind::NotFound, _) => AppError::NotFound(message.into()),
            (WireErrorKind::Conflict, Some(code)) => AppError::conflict(code, message),
            (WireErrorKind::TooLarge, _) => AppError::TooLarge(message.into()),
            _ => AppError::unavailable(format!("the writing node refused the send: {message}")),
        }
    }
}

/// Where `node` ranks for writing `conversation` (the highest-ranked live node writes it): a
/// hash of both that every node computes alike (FNV-1a, then a 64-bit finaliser).
fn write_rank(node: &str, conversation: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(conversation.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A call input as it crosses nodes (see [`CallEvent`]).
#[derive(Debug, Serialize, Deserialize)]
enum WireCallEvent {
    Accept {
        user: i64,
        device: u64,
        answer: Option<Value>,
    },
    Reject {
        user: i64,
        reason: Option<String>,
    },
    Hangup {
        user: i64,
        reason: Option<String>,
    },
    Signal {
        user: i64,
        device: u64,
        kind: String,
        to: Option<i64>,
        payload: Value,
    },
    DeviceGone {
        user: i64,
        device: u64,
        rejoins: bool,
    },
    Rejoin {
        user: i64,
        device: u64,
    },
    Resume {
        user: i64,
        from: u64,
        device: u64,
    },
    Ring {
        user: i64,
        device: u64,
    },
    Terminate {
        reason: String,
        by: Option<i64>,
    },
}

/// Signal kinds a call relays (the wire carries the name).
const SIGNAL_KINDS: [&str; 3] = [events::CALL_OFFER, events::CALL_ANSWER, events::CALL_ICE];

impl WireCallEvent {
    fn from_event(event: CallEvent) -> Option<Self> {
        Some(match event {
            CallEvent::Accept {
                user,
                device,
                answer,
            } => Self::Accept {
                user,
                device,
                answer,
            },
            CallEvent::Reject { user, reason } => Self::Reject { user, reason },
            CallEvent::Hangup { user, reason } => Self::Hangup { user, reason },
            CallEvent::Signal {
                user,
                device,
                kind,
                to,
                payload,
            } => Self::Signal {
                user,
                device,
                kind: kind.to_owned(),
                to,
                payload,
            },
            CallEvent::DeviceGone {
                user,
                device,
                rejoins,
            } => Self::DeviceGone {
                user,
                device,
                rejoins,
            },
            CallEvent::Rejoin { user, device } => Self::Rejoin { user, device },
            CallEvent::Resume { user, from, device } => Self::Resume { user, from, device },
            CallEvent::Ring { user, device } => Self::Ring { user, device },
            CallEvent::Terminate { reason, by } => Self::Terminate { reason, by },
            // Timers and the start run where the call's actor runs.
            _ => return None,
        })
    }

    fn into_event(self) -> Option<CallEvent> {
        Some(match self {
            Self::Accept {
                user,
                device,
                answer,
            } => CallEvent::Accept {
                user,
                device,
                answer,
            },
            Self::Reject { user, reason } => CallEvent::Reject { user, reason },
            Self::Hangup { user, reason } => CallEvent::Hangup { user, reason },
            Self::Signal {
                user,
                device,
                kind,
                to,
                payload,
            } => CallEvent::Signal {
                user,
                device,
                kind: SIGNAL_KINDS.into_iter().find(|k| *k == kind)?,
                to,
                payload,
            },
            Self::DeviceGone {
                user,
                device,
                rejoins,
            } => CallEvent::DeviceGone {
                user,
                device,
                rejoins,
            },
            Self::Rejoin { user, device } => CallEvent::Rejoin { user, device },
            Self::Resume { user, from, device } => CallEvent::Resume { user, from, device },
            Self::Ring { user, device } => CallEvent::Ring { user, device },
            Self::Terminate { reason, by } => CallEvent::Terminate { reason, by },
        })
    }
}

/// Why a forwarded call input was refused (the refusals a call actor gives).
#[derive(Debug, Serialize, Deserialize)]
enum WireRefusal {
    NotFound(String),
    Forbidden(String),
    InvalidState(String),
    Unavailable(String),
}

impl WireRefusal {
    fn of(e: &AppError) -> Self {
        match e {
            AppError::NotFound(m) => Self::NotFound(m.to_string()),
            AppError::Forbidden(m) => Self::Forbidden(m.to_string()),
            AppError::Conflict { message, .. } => Self::InvalidState(message.to_string()),
            other => Self::Unavailable(other.to_string()),
        }
    }

    fn into_error(self) -> AppError {
        match self {
            Self::NotFound(m) => AppError::NotFound(m.into()),
            Self::Forbidden(m) => AppError::Forbidden(m.into()),
            Self::InvalidState(m) => AppError::conflict(ErrorCode::InvalidCallState, m),
            Self::Unavailable(m) => AppError::unavailable(m),
        }
    }
}

/// How a call start went in the cluster-wide call directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Claimed; the callees to ring (for a group call, those not in another call).
    Claimed(Vec<i64>),
    /// The caller is in a call already.
    CallerBusy,
    /// The callee (1:1), or every member (group), is in another call.
    CalleeBusy,
    /// The callee is calling the caller right now and that call wins (lower user id): its id.
    GlareLost(String),
    /// The callee was calling the caller and this call wins: that call (on `node`) must end
    /// with `glare`; this one is claimed.
    GlareWon { dropped: String, node: String },
    /// A call with this id exists.
    Taken,
}

/// Work for the cluster thread.
#[derive(Debug)]
enum Outgoing {
    /// An encoded [`Body`] for the bus.
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
    /// A party joined (busy) or left (free) a call of this node.
    CallMember {
        call_id: String,
        user: i64,
        active: bool,
    },
    /// A call of this node ended: free its parties.
    Release { call_id: String },
    /// A device of a user left this node: tell the node running the user's call.
    DeviceGone {
        user: i64,
        device: u64,
        rejoins: bool,
    },
    /// A send lease running low: ask its bucket for more (with the other renewals queued).
    Renew(Renewal),
}

/// Redis key and channel names of one service.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    /// The channel every node listens on: hellos, and events while no other node is known.
    fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }
    /// The channel one node listens on for what the others send it.
    fn inbox(&self, node: &str) -> String {
        format!("{}:bus:{node}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn heartbeat_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
    fn heartbeat(&self, node: &str) -> String {
        format!("{}{node}", self.heartbeat_prefix())
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
    fn call(&self, id: &str) -> String {
        format!("{}:call:{id}", self.prefix)
    }
    fn user_call(&self, user: i64) -> String {
        format!("{}:callof:{user}", self.prefix)
    }
    fn node_calls(&self, node: &str) -> String {
        format!("{}:node:{node}:calls", self.prefix)
    }
    fn limit(&self, bucket: &str, user: i64) -> String {
        format!("{}:limit:{bucket}:{user}", self.prefix)
    }
}

/// A renewal of a user's send lease asked for ahead of need ([`super::ratelimit::Leases`]):
/// `want` more tokens of the cluster-wide `bucket` (`per_sec` sustained, `burst` at once),
/// whatever it grants added to the lease in `leases`.
#[derive(Debug)]
pub(crate) struct Renewal {
    /// The leases of this node the answer goes to.
    pub leases: Arc<super::ratelimit::Leases>,
    /// The bucket's name.
    pub bucket: &'static str,
    /// Whose bucket.
    pub user: i64,
    /// Its sustained rate.
    pub per_sec: f64,
    /// Its burst.
    pub burst: u32,
    /// Tokens asked for.
    pub want: u32,
}

impl Renewal {
    /// The bucket granted `granted` tokens (none: refused, or not asked).
    fn answer(&self, granted: u32) {
        self.leases.renewed(self.user, granted, Instant::now());
    }

    /// The bucket's name and shape: renewals of one shape are asked for in one script run.
    fn shape(&self) -> (&'static str, u64, u32) {
        (self.bucket, self.per_sec.to_bits(), self.burst)
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

/// Makes this node's presence entries what it holds now (after Redis lost them, or after
/// this node could not reach Redis while its users came and went): every user it holds gets
/// its device count, every other user of its set is removed. KEYS: this node's user set.
/// ARGV: node, presence key prefix, then user, devices pairs. Answers the users whose entry
/// changed, each followed by its devices on every node.
const RESYNC_SCRIPT: &str = r"
local node, prefix = ARGV[1], ARGV[2]
local held = {}
local changed = {}
local function total(key)
  local n = 0
  for _, v in ipairs(redis.call('HVALS', key)) do n = n + tonumber(v) end
  return n
end
for i = 3, #ARGV, 2 do
  local user, devices = ARGV[i], ARGV[i + 1]
  held[user] = true
  local key = prefix .. user
  local old = redis.call('HGET', key, node)
  redis.call('HSET', key, node, devices)
  redis.call('SADD', KEYS[1], user)
  if old ~= devices then
    table.insert(changed, user)
    table.insert(changed, tostring(total(key)))
  end
end
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not held[user] then
    local key = prefix .. user
    redis.call('HDEL', key, node)
    redis.call('SREM', KEYS[1], user)
    table.insert(changed, user)
    table.insert(changed, tostring(total(key)))
  end
end
return changed
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

/// Claims a call's parties. ARGV: key prefix, call id, node, caller, group (0/1), callees...
/// Answers `{outcome, ...}` (see [`Claim`]).
const CLAIM_SCRIPT: &str = r"
local p, id, node, caller, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local callees = {}
for i = 6, #ARGV do table.insert(callees, ARGV[i]) end
if redis.call('EXISTS', p .. ':call:' .. id) == 1 then return {'taken'} end
local mine = redis.call('GET', p .. ':callof:' .. caller)
local won = nil
if group == '0' and #callees == 1 then
  local theirs = redis.call('GET', p .. ':callof:' .. callees[1])
  if theirs and theirs == mine then
    local c = redis.call('HMGET', p .. ':call:' .. theirs, 'caller', 'callees', 'answered', 'node', 'group')
    if c[1] == callees[1] and c[2] == caller and c[3] == '0' and c[5] == '0' then
      if tonumber(callees[1]) < tonumber(caller) then return {'glare_lost', theirs} end
      redis.call('DEL', p .. ':callof:' .. caller, p .. ':callof:' .. callees[1])
      redis.call('HSET', p .. ':call:' .. theirs, 'answered', 'dropped')
      won = {theirs, c[4]}
      mine = false
    end
  end
end
if mine then return {'caller_busy'} end
if group == '0' and redis.call('EXISTS', p .. ':callof:' .. callees[1]) == 1 then return {'busy'} end
local rung = {}
for _, u in ipairs(callees) do
  if redis.call('EXISTS', p .. ':callof:' .. u) == 0 then table.insert(rung, u) end
end
if #rung == 0 then return {'busy'} end
redis.call('HSET', p .. ':call:' .. id, 'node', node, 'caller', caller, 'callees', table.concat(callees, ','), 'answered', '0', 'group', group)
redis.call('SET', p .. ':callof:' .. caller, id)
if group == '0' then redis.call('SET', p .. ':callof:' .. callees[1], id) end
redis.call('SADD', p .. ':node:' .. node .. ':calls', id)
if won then return {'glare_won', won[1], won[2], unpack(rung)} end
return {'ok', unpack(rung)}
";

/// A party joined (ARGV[4] = 1) or left a call. ARGV: key prefix, call id, user, active.
const MEMBER_SCRIPT: &str = r"
local p, id, user = ARGV[1], ARGV[2], ARGV[3]
local key = p .. ':callof:' .. user
if ARGV[4] == '1' then
  if redis.call('EXISTS', p .. ':call:' .. id) == 1 then
    redis.call('SET', key, id, 'NX')
    if redis.call('HGET', p .. ':call:' .. id, 'answered') == '0' then
      redis.call('HSET', p .. ':call:' .. id, 'answered', '1')
    end
  end
elseif redis.call('GET', key) == id then
  redis.call('DEL', key)
end
return 0
";

/// Frees a call's parties (those still marked in it) and forgets it. ARGV: key prefix, call
/// id. Answers its caller and callees.
const RELEASE_SCRIPT: &str = r"
local p, id = ARGV[1], ARGV[2]
local c = redis.call('HMGET', p .. ':call:' .. id, 'caller', 'callees', 'node')
local users = {}
if c[1] then table.insert(users, c[1]) end
if c[2] then for u in string.gmatch(c[2], '[^,]+') do table.insert(users, u) end end
for _, u in ipairs(users) do
  if redis.call('GET', p .. ':callof:' .. u) == id then redis.call('DEL', p .. ':callof:' .. u) end
end
redis.call('DEL', p .. ':call:' .. id)
if c[3] then redis.call('SREM', p .. ':node:' .. c[3] .. ':calls', id) end
return users
";

/// Tokens from cluster-wide buckets of one shape (GCRA: a burst of ARGV[2] at once, then one
/// per ARGV[1] ms). KEYS: the buckets; ARGV[2 + i]: how many KEYS[i] is asked for (at least
/// one). Answers, per bucket in order, the tokens taken (up to what was asked) or, when none
/// is free, minus the milliseconds until one is.
const TAKE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[i + 2] or '1')
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local free = math.floor((now + burst * interval - tat) / interval)
  if free < 1 then
    out[i] = -math.max(1, math.ceil(tat + interval - now - burst * interval))
  else
    local granted = math.min(want, free)
    local next_tat = tat + granted * interval
    redis.call('SET', key, tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1)
    out[i] = granted
  end
end
return out
";

/// A node's view of the cluster (for `/health`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterStatus {
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
    /// Redis messages (frames) the envelopes were published in.
    pub frames: u64,
    /// Envelopes not published or not received (queue full, Redis away, subscriber lag).
    pub dropped: u64,
    /// Message seqs read from the database because another node's delivery did not arrive.
    pub gap_fills: u64,
    /// Dead nodes whose entries this node removed.
    pub nodes_reaped: u64,
    /// Sends forwarded to the node that writes their conversation.
    pub forwarded: u64,
    /// Forwarded sends that got no answer in time and were written here.
    pub forward_fallbacks: u64,
}

/// Requests forwarded to another node that wait for its answer, by request id.
#[derive(Debug)]
struct Awaiting<T>(std::sync::Mutex<HashMap<u64, oneshot::Sender<T>>>);

impl<T> Default for Awaiting<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::default())
    }
}

impl<T> Awaiting<T> {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for the answer to `request` (call [`Awaiting::forget`] once done waiting).
    fn expect(&self, request: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.entries().insert(request, tx);
        rx
    }

    /// Stops waiting for `request` (answered, or given up on).
    fn forget(&self, request: u64) {
        self.entries().remove(&request);
    }

    /// Hands the answer to `request` to whoever waits for it (if anyone still does).
    fn answer(&self, request: u64, value: T) {
        if let Some(tx) = self.entries().remove(&request) {
            let _ = tx.send(value);
        }
    }
}

/// This node's link to the others.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    keys: Keys,
    outgoing: mpsc::Sender<Outgoing>,
    /// How long a conversation waits for a missing seq before reading it.
    pub gap_wait: Duration,
    /// Least time between the starts of two publishes (`CLUSTER_PUBLISH_INTERVAL_MS`).
    publish_interval: Duration,
    /// How rate-limit takes ask Redis: failing at once while the connection is down, and
    /// giving up after `CLUSTER_LIMIT_TIMEOUT_MS` (a send never waits on Redis longer).
    limit_options: fred::types::config::Options,
    redis_up: AtomicBool,
    nodes: AtomicUsize,
    published: AtomicU64,
    received: AtomicU64,
    /// Redis messages published by `flush` (one per frame and destination).
    frames: AtomicU64,
    dropped: AtomicU64,
    gap_fills: AtomicU64,
    nodes_reaped: AtomicU64,
    /// Set once this node left (shutdown) or was halted: no heartbeat any more.
    stopped: AtomicBool,
    /// Woken by [`Cluster::halt`]: the cluster thread ends.
    halted: tokio::sync::Notify,
    /// Set once the bus subscription first went through (renewed by the client after that).
    subscribed: AtomicBool,
    /// The other nodes heard from (a hello or any frame), with their inbox channel and when
    /// they were last heard: a flush goes to those inboxes ([`Cluster::destinations`]).
    peers: std::sync::Mutex<HashMap<String, (String, Instant)>>,
    /// How long a node not heard from stays among [`Cluster::destinations`] (twice
    /// `NODE_TTL_MS`: a node says hello on every heartbeat).
    peer_ttl: Duration,
    /// Redis was unreachable since this node last wrote its presence: write it again.
    resync: AtomicBool,
    /// The Redis client (once the cluster thread made it): rate-limit takes use it directly,
    /// pipelined with everything else, without waiting in the outgoing queue.
    client: std::sync::OnceLock<fred::clients::Client>,
    /// Forwarded call inputs waiting for their owner node's answer.
    pending: Awaiting<Option<WireRefusal>>,
    /// Forwarded sends waiting for the writing node's answer.
    pending_sends: Awaiting<Result<Message, WireError>>,
    next_request: AtomicU64,
    /// `CLUSTER_OWNED_WRITES`.
    owned_writes: bool,
    /// `CLUSTER_FORWARD_TIMEOUT_MS`.
    forward_timeout: Duration,
    /// Sends forwarded to the node that writes their conversation.
    forwarded: AtomicU64,
    /// Forwarded sends that got no answer in time and were written here.
    forward_fallbacks: AtomicU64,
}

/// The half of the cluster link that runs once the engine exists.
#[derive(Debug)]
pub(crate) struct Runner {
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
    pub(crate) fn new(config: &Config) -> Result<Option<(Arc<Self>, Runner)>, String> {
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
            publish_interval: config.cluster_publish_interval,
            limit_options: fred::types::config::Options {
                fail_fast: true,
                timeout: Some(config.cluster_limit_timeout),
                ..Default::default()
            },
            redis_up: AtomicBool::new(false),
            nodes: AtomicUsize::new(1),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            gap_fills: AtomicU64::new(0),
            nodes_reaped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            halted: tokio::sync::Notify::new(),
            subscribed: AtomicBool::new(false),
            peers: std::sync::Mutex::default(),
            peer_ttl: config.node_ttl.saturating_mul(2),
            resync: AtomicBool::new(false),
            client: std::sync::OnceLock::new(),
            pending: Awaiting::default(),
            pending_sends: Awaiting::default(),
            next_request: AtomicU64::new(1),
            owned_writes: config.cluster_owned_writes,
            forward_timeout: config.cluster_forward_timeout,
            forwarded: AtomicU64::new(0),
            forward_fallbacks: AtomicU64::new(0),
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

    /// A random tag (1..4095) for this node's session keys.
    pub(crate) fn session_tag(&self) -> u64 {
        let mut random = [0u8; 2];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
        u64::from(u16::from_le_bytes(random) % 4095) + 1
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What `/health` shows.
    pub(crate) fn status(&self) -> ClusterStatus {
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
    pub(crate) fn counts(&self) -> ClusterCounts {
        ClusterCounts {
            nodes: self.nodes.load(Ordering::Relaxed),
            redis_up: self.redis_up.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            gap_fills: self.gap_fills.load(Ordering::Relaxed),
            nodes_reaped: self.nodes_reaped.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forward_fallbacks: self.forward_fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Notes that `node` is alive: it said hello or sent a frame.
    fn heard(&self, node: &str) {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match peers.get_mut(node) {
            Some((_, at)) => *at = Instant::now(),
            None => {
                tracing::info!(peer = %node, "cluster: a node joined");
                peers.insert(node.to_owned(), (self.keys.inbox(node), Instant::now()));
            }
        }
    }

    /// The channels a flush is published on: the inbox of every other node heard from lately,
    /// so no node receives (and skips) its own frames; the shared bus, which every node
    /// listens on, while no other node was heard from (starting up, or alone).
    fn destinations(&self) -> Vec<String> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ttl = self.peer_ttl;
        peers.retain(|node, (_, at)| {
            let alive = at.elapsed() < ttl;
            if !alive {
                tracing::info!(peer = %node, "cluster: a node went quiet");
            }
            alive
        });
        if peers.is_empty() {
            vec![self.keys.bus()]
        } else {
            peers.values().map(|(inbox, _)| inbox.clone()).collect()
        }
    }

    /// Tells every node that this one listens on its inbox (after every subscription and on
    /// every heartbeat): an empty frame on the shared bus.
    async fn hello(&self, client: &fred::clients::Client) -> Result<(), fred::error::Error> {
        client
            .publish::<i64, _, _>(self.keys.bus(), frame_header(&self.node, 0))
            .await
            .map(|_| ())
    }

    /// [`Cluster::hello`] once a subscription went through (a failure is made good by the
    /// next heartbeat's).
    async fn say_hello(&self) {
        if let Some(client) = self.client.get() {
            if let Err(e) = self.hello(client).await {
                tracing::debug!(error = %e, "cluster: hello not published");
            }
        }
    }

    /// The channels this node listens on: the shared bus and its own inbox.
    fn channels(&self) -> Vec<String> {
        vec![self.keys.bus(), self.keys.inbox(&self.node)]
    }

    /// Counts seqs a conversation read from the database in place of another node's delivery.
    pub(crate) fn gap_filled(&self, seqs: usize) {
        self.gap_fills.fetch_add(seqs as u64, Ordering::Relaxed);
    }

    fn publish(&self, body: Body<'_>) {
        let Ok(text) = serde_json::to_string(&body) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.outgoing.try_send(Outgoing::Publish(text)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes an event for the other nodes' sessions of `users`.
    pub(crate) fn publish_event(&self, users: &[i64], event: &ServerEvent, skip: Option<u64>) {
        self.publish(Body::Event {
            users: Cow::Borrowed(users),
            name: Cow::Borrowed(&event.name),
            data: Payload::of(event),
            skip,
            message: event.delivery,
        });
    }

    /// Publishes an event for one session of another node.
    pub(crate) fn publish_to_session(&self, user: i64, key: u64, event: &ServerEvent) {
        self.publish(Body::ToSession {
            user,
            key,
            name: Cow::Borrowed(&event.name),
            data: Cow::Borrowed(event.payload()),
        });
    }

    fn enqueue(&self, item: Outgoing) -> bool {
        let sent = self.outgoing.try_send(item).is_ok();
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Claims a new call's parties cluster-wide (busy and glare are decided here, atomically).
    pub(crate) async fn claim_call(
        &self,
        call_id: &str,
        caller: i64,
        callees: &[i64],
        group: bool,
    ) -> AppResult<Claim> {
        let client = self
            .redis()
            .ok_or_else(|| AppError::unavailable("call directory unavailable: Redis is away"))?;
        let mut args = vec![
            self.keys.prefix.clone(),
            call_id.to_owned(),
            self.node.clone(),
            caller.to_string(),
            if group { "1" } else { "0" }.to_owned(),
        ];
        args.extend(callees.iter().map(ToString::to_string));
        client
            .eval::<Vec<String>, _, _, _>(CLAIM_SCRIPT, Vec::<String>::new(), args)
            .await
            .map(|answer| claim_of(&answer))
            .map_err(|e| AppError::unavailable(format!("call directory unavailable: {e}")))
    }

    /// Takes up to `want` tokens (at least one) of `user`'s cluster-wide `bucket` (`per_sec`
    /// sustained, `burst` at once): `Ok(tokens taken)`, or `Err(secs)` until one is free;
    /// `None` while Redis cannot answer within `CLUSTER_LIMIT_TIMEOUT_MS` (the node's own
    /// limiter then decides alone). While Redis is known to be down it is not asked; in the
    /// moments before this node notices, the command fails at once on a broken connection
    /// instead of waiting for the reconnection.
    pub(crate) async fn take(
        &self,
        bucket: &str,
        user: i64,
        per_sec: f64,
        burst: u32,
        want: u32,
    ) -> Option<Result<u32, u64>> {
        let client = self.redis()?;
        let answer = self
            .take_many(client, bucket, per_sec, burst, &[(user, want)])
            .await;
        match answer.map(|a| a.first().copied()) {
            Ok(Some(granted)) if granted > 0 => Some(Ok(u32::try_from(granted).unwrap_or(1))),
            Ok(Some(wait_ms)) => Some(Err(u64::try_from(wait_ms.saturating_neg())
                .unwrap_or(1000)
                .div_ceil(1000)
                .max(1))),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: rate limit not shared");
                None
            }
        }
    }

    /// Runs [`TAKE_SCRIPT`] for `asks` (user, tokens wanted) of one bucket shape: one answer
    /// per ask, in order (see the script).
    async fn take_many(
        &self,
        client: &fred::clients::Client,
        bucket: &str,
        per_sec: f64,
        burst: u32,
        asks: &[(i64, u32)],
    ) -> Result<Vec<i64>, fred::error::Error> {
        let interval_ms = 1000.0 / per_sec.max(f64::MIN_POSITIVE);
        let keys: Vec<String> = asks
            .iter()
            .map(|(user, _)| self.keys.limit(bucket, *user))
            .collect();
        let mut args = Vec::with_capacity(asks.len() + 2);
        args.push(interval_ms.to_string());
        args.push(burst.max(1).to_string());
        args.extend(asks.iter().map(|(_, want)| want.max(&1).to_string()));
        client
            .with_options(&self.limit_options)
            .eval::<Vec<i64>, _, _, _>(TAKE_SCRIPT, keys, args)
            .await
    }

    /// Asks for a send lease's renewal in the background: the cluster thread asks Redis for
    /// every renewal queued meanwhile in one script run and hands each answer to its leases.
    /// With the queue full the renewal is answered with nothing at once (the next send that
    /// finds the lease spent asks Redis itself).
    pub(crate) fn renew(&self, renewal: Renewal) {
        if let Err(e) = self.outgoing.try_send(Outgoing::Renew(renewal)) {
            if let Outgoing::Renew(renewal) = e.into_inner() {
                renewal.answer(0);
            }
        }
    }

    /// A party joined or left a call of this node.
    pub(crate) fn call_member(&self, call_id: &str, user: i64, active: bool) {
        self.enqueue(Outgoing::CallMember {
            call_id: call_id.to_owned(),
            user,
            active,
        });
    }

    /// A call of this node ended: frees its parties cluster-wide before answering (through
    /// the outgoing queue while Redis cannot answer at once).
    pub(crate) async fn release_call_now(&self, call_id: &str) {
        if let Some(client) = self.redis() {
            let freed = client
                .eval::<Vec<String>, _, _, _>(
                    RELEASE_SCRIPT,
                    Vec::<String>::new(),
                    vec![self.keys.prefix.clone(), call_id.to_owned()],
                )
                .await;
            if freed.is_ok() {
                return;
            }
        }
        self.release_call(call_id);
    }

    /// A call of this node ended.
    pub(crate) fn release_call(&self, call_id: &str) {
        self.enqueue(Outgoing::Release {
            call_id: call_id.to_owned(),
        });
    }

    /// The call `user` is in on any node (`None` also while Redis cannot answer).
    pub(crate) async fn call_of(&self, user: i64) -> Option<String> {
        call_of(self.redis()?, &self.keys, user).await
    }

    /// A device left this node: the call of its user (on another node) hears of it.
    pub(crate) fn device_gone(&self, user: i64, device: u64, rejoins: bool) {
        self.enqueue(Outgoing::DeviceGone {
            user,
            device,
            rejoins,
        });
    }

    /// Feeds a call that runs on another node: finds the node, forwards the input and waits
    /// for its answer (at most [`CALL_FORWARD_TIMEOUT`]).
    pub(crate) async fn forward_call_input(
        &self,
        call_id: &str,
        event: CallEvent,
    ) -> AppResult<()> {
        let gone = || AppError::NotFound("call not found or already ended".into());
        let client = self
            .redis()
            .ok_or_else(|| AppError::unavailable("Redis is away; retry shortly"))?;
        let owner = owner_of(client, &self.keys, call_id)
            .await
            .ok_or_else(gone)?;
        if owner == self.node {
            return Err(gone());
        }
        let wire = WireCallEvent::from_event(event).ok_or_else(gone)?;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let answer = self.pending.expect(request);
        self.publish(Body::CallInput {
            to: owner,
            call_id: call_id.to_owned(),
            request: Some(request),
            event: wire,
        });
        let outcome = tokio::time::timeout(CALL_FORWARD_TIMEOUT, answer).await;
        self.pending.forget(request);
        match outcome {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(refusal))) => Err(refusal.into_error()),
            _ => Err(AppError::unavailable(
                "the node running this call did not answer; retry shortly",
            )),
        }
    }

    /// The node that writes `conversation`'s messages, when that is another node: the live
    /// node (this one and those heard from lately) that ranks highest for it. `None`: this
    /// node writes it (also while Redis is away, or with `CLUSTER_OWNED_WRITES` off).
    pub fn writer_of(&self, conversation: i64) -> Option<String> {
        if !self.owned_writes
            || !self.redis_up.load(Ordering::Relaxed)
            || !self.subscribed.load(Ordering::Relaxed)
        {
            return None;
        }
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut best = write_rank(&self.node, conversation);
        let mut writer = None;
        for (node, (_, heard)) in peers.iter() {
            if heard.elapsed() >= self.peer_ttl {
                continue;
            }
            let rank = write_rank(node, conversation);
            if rank > best {
                best = rank;
                writer = Some(node);
            }
        }
        writer.cloned()
    }

    /// Forwards a send to `writer` (see [`Cluster::writer_of`]) and waits for its outcome.
    /// `None`: no answer within `CLUSTER_FORWARD_TIMEOUT_MS` (or it could not be published);
    /// the caller writes the send itself, and sends go to `writer` again once it is heard from.
    pub(crate) async fn forward_send(
        &self,
        writer: String,
        sender: i64,
        origin: Option<u64>,
        draft: &Draft,
    ) -> Option<AppResult<Message>> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let answer = self.pending_sends.expect(request);
        let published = serde_json::to_string(&Body::Send {
            to: writer.clone(),
            request,
            sender,
            origin,
            draft: draft.clone(),
        })
        .ok()
        .is_some_and(|text| self.outgoing.try_send(Outgoing::Publish(text)).is_ok());
        let outcome = if published {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
            tokio::time::timeout(self.forward_timeout, answer)
                .await
                .ok()
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        };
        self.pending_sends.forget(request);
        match outcome {
            Some(Ok(outcome)) => Some(outcome.map_err(WireError::into_error)),
            _ => {
                self.forward_fallbacks.fetch_add(1, Ordering::Relaxed);
                let forgotten = self
                    .peers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&writer)
                    .is_some();
                if forgotten {
                    tracing::warn!(peer = %writer, conversation = draft.conversation_id, "cluster: a forwarded send got no answer; this node writes it, and writes what it would forward to that node until it hears from it again");
                }
                None
            }
        }
    }

    /// Publishes a kick for the other nodes' sessions of `user`.
    pub(crate) fn publish_kick(
        &self,
        user: i64,
        device_session: Option<String>,
        code: u16,
        reason: &str,
    ) {
        self.publish(Body::Kick {
            user,
            device_session,
            code,
            reason: reason.to_owned(),
        });
    }

    /// Publishes a membership change for the other nodes.
    pub(crate) fn publish_members(&self, conversation: i64, members: Vec<i64>) {
        self.publish(Body::Members {
            conversation,
            members,
        });
    }

    /// Records that this node holds `devices` sessions of `user`; the cluster-wide presence
    /// comes back to the registry as [`ClusterPresence`] (this node's view alone while Redis
    /// is away). Answers false when the queue is full (the caller announces its local view).
    pub(crate) fn presence(
        &self,
        user: i64,
        devices: usize,
        last_seen: Option<DateTime<Utc>>,
    ) -> bool {
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
    pub(crate) async fn devices_of(&self, users: Vec<i64>) -> HashMap<i64, u64> {
        let mut out = HashMap::new();
        let Some(client) = self.redis().filter(|_| !users.is_empty()) else {
            return out;
        };
        let keys: Vec<String> = users.iter().map(|u| self.keys.presence(*u)).collect();
        match client
            .eval::<Vec<u64>, _, _, _>(DEVICES_SCRIPT, keys, Vec::<String>::new())
            .await
        {
            Ok(totals) => out.extend(users.iter().copied().zip(totals).filter(|(_, n)| *n > 0)),
            Err(e) => tracing::debug!(error = %e, "cluster: presence query failed"),
        }
        out
    }

    /// Leaves the cluster: what is queued is published, then this node's heartbeat and
    /// presence entries are removed (its users offline where no other node holds them).
    pub(crate) async fn leave(&self) {
        let (reply, rx) = oneshot::channel();
        if self.outgoing.send(Outgoing::Leave(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops beating at once and leaves every entry behind, as a crashed node would (tests
    /// of failover run several nodes in one process): the cluster thread ends, so the node
    /// neither publishes nor hears the bus any more.
    pub fn halt(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.halted.notify_one();
    }

    /// Tells every node (this one included) a user's presence: `devices` on every node.
    fn announce_presence(
        &self,
        engine: &Engine,
        user: i64,
        devices: u64,
        last_seen: Option<DateTime<Utc>>,
    ) {
        self.publish(Body::Presence {
            user,
            devices,
            last_seen,
        });
        engine.registry.do_send(ClusterPresence {
            user_id: user,
            devices,
            last_seen,
        });
    }

    /// The Redis client while Redis answers (`None`: the caller decides without Redis rather
    /// than wait for a command to time out).
    fn redis(&self) -> Option<&fred::clients::Client> {
        self.client
            .get()
            .filter(|_| self.redis_up.load(Ordering::Relaxed))
    }

    fn set_redis_up(&self, up: bool) {
        if !up {
            // Presence changes made meanwhile reach Redis only through a resync.
            self.resync.store(true, Ordering::SeqCst);
        }
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
pub(crate) struct ClusterDelivery {
    directory: Arc<Directory>,
    cluster: Arc<Cluster>,
}

impl ClusterDelivery {
    /// Delivery through `directory` and `cluster`.
    pub(crate) fn new(directory: Arc<Directory>, cluster: Arc<Cluster>) -> Self {
        Self { directory, cluster }
    }
}

impl Delivery for ClusterDelivery {
    fn deliver(&self, users: &[i64], event: &Arc<ServerEvent>, skip: Option<u64>) -> usize {
        let delivered = self.directory.deliver(users, event, skip);
        if !users.is_empty() {
            self.cluster.publish_event(users, event, skip);
        }
        delivered
    }

    fn deliver_to_session(&self, user: i64, key: u64, event: &Arc<ServerEvent>) -> bool {
        if self.directory.deliver_to_session(user, key, event) {
            return true;
        }
        // Session keys are unique across nodes: another node may hold it.
        self.cluster.publish_to_session(user, key, event);
        true
    }

    fn media_of(&self, user: i64, key: Option<u64>) -> Option<Media> {
        self.directory.media_of(user, key)
    }
}

impl Runner {
    /// Starts the cluster thread (its own Tokio runtime: Redis I/O never runs on a worker).
    pub(crate) fn start(self, engine: Engine) -> std::io::Result<()> {
        super::runtime::spawn("cluster", move || self.run(engine))
    }

    async fn run(self, engine: Engine) {
        // Contact verdicts this node makes stale are stale everywhere.
        {
            let cluster = Arc::clone(&self.cluster);
            engine
                .db
                .contact_cache()
                .relay_to(Box::new(move |change| cluster.publish(Body::Cache(change))));
        }
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
        let _ = cluster.client.set(client.clone());
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
        {
            // The bus counts as subscribed again only once a subscription went through after
            // the subscriber's connection came back (subscribing twice to a channel is harmless).
            let lost = Arc::clone(&cluster);
            let _errors = subscriber.on_error(move |_| {
                lost.subscribed.store(false, Ordering::Relaxed);
                async { Ok(()) }
            });
            let back = Arc::clone(&cluster);
            let again = subscriber.clone();
            let _reconnects = subscriber.on_reconnect(move |_| {
                let (cluster, subscriber) = (Arc::clone(&back), again.clone());
                tokio::spawn(async move {
                    while subscriber.subscribe(cluster.channels()).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    cluster.subscribed.store(true, Ordering::Relaxed);
                    cluster.say_hello().await;
                });
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
    let mut batch: Vec<String> = Vec::with_capacity(PUBLISH_BATCH);
    let mut last_publish: Option<Instant> = None;
    let mut renewals: Vec<Renewal> = Vec::new();
    loop {
        let first = tokio::select! {
            item = incoming.recv() => match item {
                Some(item) => item,
                None => return,
            },
            () = cluster.halted.notified() => return,
        };
        if cluster.stopped.load(Ordering::SeqCst) {
            match first {
                Outgoing::Leave(reply) => {
                    let _ = reply.send(());
                }
                Outgoing::Renew(renewal) => renewal.answer(0),
                _ => {}
            }
            continue;
        }
        let mut next = Some(first);
        let mut held = false;
        loop {
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Publish(text) => {
                        batch.push(text);
                        if batch.len() < PUBLISH_BATCH {
                            next = incoming.try_recv().ok();
                        }
                    }
                    Outgoing::Renew(renewal) => {
                        renewals.push(renewal);
                        if renewals.len() < PUBLISH_BATCH {
                            next = incoming.try_recv().ok();
                        }
                    }
                    other => {
                        flush(&cluster, &client, &mut batch).await;
                        control(&cluster, &engine, &client, other).await;
                        next = incoming.try_recv().ok();
                    }
                }
            }
            // Publishes (and lease renewals) start at least CLUSTER_PUBLISH_INTERVAL_MS apart:
            // what is queued meanwhile joins this one (fewer, larger frames for Redis and the
            // other nodes); the first after a quiet spell goes at once.
            if held
                || (batch.is_empty() && renewals.is_empty())
                || batch.len() >= PUBLISH_BATCH
                || renewals.len() >= PUBLISH_BATCH
            {
                break;
            }
            let Some(rest) = still_to_wait(last_publish, Instant::now(), cluster.publish_interval)
            else {
                break;
            };
            held = true;
            tokio::select! {
                () = tokio::time::sleep(rest) => {}
                () = cluster.halted.notified() => return,
            }
            next = incoming.try_recv().ok();
        }
        if !batch.is_empty() || !renewals.is_empty() {
            last_publish = Some(Instant::now());
        }
        tokio::join!(
            flush(&cluster, &client, &mut batch),
            renew(&cluster, &client, &mut renewals)
        );
    }
}

/// Asks Redis for the lease renewals in `renewals`, one script run per bucket shape, and
/// hands each its answer (nothing while Redis is away or does not answer).
async fn renew(cluster: &Cluster, client: &fred::clients::Client, renewals: &mut Vec<Renewal>) {
    while let Some(first) = renewals.first() {
        let (shape, bucket, per_sec, burst) =
            (first.shape(), first.bucket, first.per_sec, first.burst);
        let (same, rest): (Vec<Renewal>, Vec<Renewal>) = std::mem::take(renewals)
            .into_iter()
            .partition(|r| r.shape() == shape);
        *renewals = rest;
        let answers = if cluster.redis_up.load(Ordering::Relaxed) {
            let asks: Vec<(i64, u32)> = same.iter().map(|r| (r.user, r.want)).collect();
            match cluster
                .take_many(client, bucket, per_sec, burst, &asks)
                .await
            {
                Ok(answers) => answers,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: send leases not renewed");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for (i, renewal) in same.iter().enumerate() {
            // A refusal (minus a wait) or no answer adds nothing.
            let granted = answers.get(i).and_then(|g| u32::try_from(*g).ok());
            renewal.answer(granted.unwrap_or(0));
        }
    }
}

/// Publishes what `batch` holds, in as few frames as fit, to every other node (dropped and
/// counted while Redis is away).
async fn flush(cluster: &Cluster, client: &fred::clients::Client, batch: &mut Vec<String>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    if !cluster.redis_up.load(Ordering::Relaxed) {
        batch.clear();
        cluster.dropped.fetch_add(n, Ordering::Relaxed);
        return;
    }
    let mut frames = Frames::default();
    for body in batch.drain(..) {
        frames.push(&cluster.node, &body);
    }
    let destinations = cluster.destinations();
    let sent = (frames.done.len() * destinations.len()) as u64;
    let result = if let ([frame], [to]) = (frames.done.as_mut_slice(), destinations.as_slice()) {
        client
            .publish::<i64, _, _>(to.as_str(), std::mem::take(frame))
            .await
            .map(|_| ())
    } else {
        let pipeline = client.pipeline();
        let mut queued = Ok(());
        'frames: for frame in frames.done.drain(..).map(bytes::Bytes::from) {
            for to in &destinations {
                if let Err(e) = pipeline
                    .publish::<(), _, _>(to.as_str(), frame.clone())
                    .await
                {
                    queued = Err(e);
                    break 'frames;
                }
            }
        }
        match queued {
            Ok(()) => pipeline.all::<Vec<i64>>().await.map(|_| ()),
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => {
            cluster
                .published
                .fetch_add(frames.bodies, Ordering::Relaxed);
            cluster.frames.fetch_add(sent, Ordering::Relaxed);
        }
        Err(e) => {
            cluster.dropped.fetch_add(frames.bodies, Ordering::Relaxed);
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
        // Batched by `send`; one that got here is answered with nothing.
        Outgoing::Renew(renewal) => renewal.answer(0),
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
            match result {
                Ok(total) => cluster.announce_presence(engine, user, total, last_seen),
                Err(e) => {
                    tracing::debug!(error = %e, user, "cluster: presence not shared");
                    if cluster.redis_up.load(Ordering::Relaxed) {
                        cluster.set_redis_up(false);
                    }
                    // This node's audience hears this node's view.
                    engine.registry.do_send(ClusterPresence {
                        user_id: user,
                        devices: devices as u64,
                        last_seen,
                    });
                }
            }
        }
        Outgoing::CallMember {
            call_id,
            user,
            active,
        } => {
            let args = vec![
                cluster.keys.prefix.clone(),
                call_id,
                user.to_string(),
                if active { "1" } else { "0" }.to_owned(),
            ];
            if let Err(e) = client
                .eval::<i64, _, _, _>(MEMBER_SCRIPT, Vec::<String>::new(), args)
                .await
            {
                tracing::warn!(error = %e, user, "cluster: call membership not recorded");
            }
        }
        Outgoing::Release { call_id } => {
            if let Err(e) = client
                .eval::<Vec<String>, _, _, _>(
                    RELEASE_SCRIPT,
                    Vec::<String>::new(),
                    vec![cluster.keys.prefix.clone(), call_id.clone()],
                )
                .await
            {
                tracing::warn!(error = %e, call = %call_id, "cluster: call parties not freed");
            }
        }
        Outgoing::DeviceGone {
            user,
            device,
            rejoins,
        } => {
            let Some(call_id) = call_of(client, &cluster.keys, user).await else {
                return;
            };
            let owner = owner_of(client, &cluster.keys, &call_id).await;
            if let Some(owner) = owner.filter(|o| *o != cluster.node) {
                cluster.publish(Body::CallInput {
                    to: owner,
                    call_id,
                    request: None,
                    event: WireCallEvent::DeviceGone {
                        user,
                        device,
                        rejoins,
                    },
                });
            }
        }
    }
}

/// The call `user` is in, on any node (`None` also when Redis cannot answer).
async fn call_of(client: &fred::clients::Client, keys: &Keys, user: i64) -> Option<String> {
    client.get(keys.user_call(user)).await.ok().flatten()
}

/// The node running a call (`None` also when Redis cannot answer).
async fn owner_of(client: &fred::clients::Client, keys: &Keys, call_id: &str) -> Option<String> {
    client.hget(keys.call(call_id), "node").await.ok().flatten()
}

/// Reads the claim script's answer.
fn claim_of(answer: &[String]) -> Claim {
    let users = |from: usize| {
        answer
            .iter()
            .skip(from)
            .filter_map(|u| u.parse().ok())
            .collect()
    };
    match answer.first().map(String::as_str) {
        Some("ok") => Claim::Claimed(users(1)),
        Some("glare_won") => Claim::GlareWon {
            dropped: answer.get(1).cloned().unwrap_or_default(),
            node: answer.get(2).cloned().unwrap_or_default(),
        },
        Some("glare_lost") => Claim::GlareLost(answer.get(1).cloned().unwrap_or_default()),
        Some("caller_busy") => Claim::CallerBusy,
        Some("taken") => Claim::Taken,
        _ => Claim::CalleeBusy,
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
    {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            loop {
                match subscriber.subscribe(cluster.channels()).await {
                    Ok(()) => {
                        cluster.subscribed.store(true, Ordering::Relaxed);
                        cluster.say_hello().await;
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
                let Some((from, bodies)) = split_frame(bytes) else {
                    tracing::warn!("cluster: unreadable frame on the bus ignored");
                    continue;
                };
                if from == cluster.node {
                    continue;
                }
                cluster.heard(from);
                for body in bodies {
                    match serde_json::from_slice::<Body>(body) {
                        Ok(body) => {
                            cluster.received.fetch_add(1, Ordering::Relaxed);
                            dispatch(&cluster, &engine, from, body).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: unreadable envelope ignored");
                        }
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                cluster.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    lost_bus_messages = n,
                    "cluster: fell behind the bus; clients catch up with sync"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Applies what another node said to this node's sessions and actors.
async fn dispatch(cluster: &Arc<Cluster>, engine: &Engine, from: &str, body: Body<'_>) {
    match body {
        Body::Event {
            users,
            name,
            data,
            skip,
            message: None,
        } => {
            engine.directory.deliver(
                &users,
                &ServerEvent::new(name.into_owned(), data.to_value()),
                skip,
            );
        }
        Body::Cache(change) => engine.db.contact_cache().apply(change),
        Body::ToSession {
            user,
            key,
            name,
            data,
        } => {
            engine.directory.deliver_to_session(
                user,
                key,
                &ServerEvent::new(name.into_owned(), data.into_owned()),
            );
        }
        Body::CallInput {
            to,
            call_id,
            request,
            event,
        } => {
            if to != cluster.node {
                return;
            }
            let Some(event) = event.into_event() else {
                return;
            };
            let from_node = from.to_owned();
            let engine = engine.clone();
            let cluster = Arc::clone(cluster);
            tokio::spawn(async move {
                let outcome = engine.call_input_here(&call_id, event).await;
                if let Some(request) = request {
                    cluster.publish(Body::CallReply {
                        to: from_node,
                        request,
                        refusal: outcome.as_ref().err().map(WireRefusal::of),
                    });
                }
            });
        }
        Body::CallReply {
            to,
            request,
            refusal,
        } => {
            if to == cluster.node {
                cluster.pending.answer(request, refusal);
            }
        }
        Body::Send {
            to,
            request,
            sender,
            origin,
            draft,
        } => {
            if to != cluster.node {
                return;
            }
            let from_node = from.to_owned();
            let engine = engine.clone();
            let cluster = Arc::clone(cluster);
            tokio::spawn(async move {
                let outcome = engine.commit_send(sender, origin, draft).await;
                cluster.publish(Body::Sent {
                    to: from_node,
                    request,
                    outcome: outcome.map(|w| w.message).map_err(|e| WireError::of(&e)),
                });
            });
        }
        Body::Sent {
            to,
            request,
            outcome,
        } => {
            if to == cluster.node {
                cluster.pending_sends.answer(request, outcome);
            }
        }
        Body::Event {
            users,
            name,
            data,
            skip,
            message: Some((conversation, seq)),
        } => {
            let event = ServerEvent::message(name.into_owned(), &data, conversation, seq, None);
            let remote = RemoteMessage {
                seq,
                event,
                users: users.into_owned().into(),
                skip,
            };
            if let Some(addr) = engine.conversations.get(&conversation) {
                offer_remote(cluster, &addr, conversation, remote);
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
                    near: None,
                })
                .await
            {
                Ok(Ok(addr)) => offer_remote(cluster, &addr, conversation, remote),
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
            reload: true,
        }),
    }
}

/// Hands another node's message to this node's actor of its conversation. A full mailbox (or a
/// stopped actor) loses it here, counted as dropped: the conversation's next message shows the
/// gap, which is then read from PostgreSQL, and clients can always `sync`.
fn offer_remote(
    cluster: &Cluster,
    addr: &actix::Addr<super::conversation::ConversationActor>,
    conversation: i64,
    remote: RemoteMessage,
) {
    if let Err(e) = addr.try_send(remote) {
        cluster.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, conversation, "cluster: a message from another node found its conversation's mailbox full; the next one fills the gap");
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
        end_calls_of(cluster, engine, client, node).await?;
    }
    let now = Utc::now();
    for user in gone {
        if node == cluster.node {
            // Leaving: the queue is no longer drained, publish directly.
            if let Some(text) = single_frame(
                &cluster.node,
                &Body::Presence {
                    user,
                    devices: 0,
                    last_seen: Some(now),
                },
            ) {
                let _ = client.publish::<i64, _, _>(keys.bus(), text).await;
            }
        } else {
            cluster.announce_presence(engine, user, 0, Some(now));
        }
    }
    Ok(())
}

/// Ends the calls a dead node ran: their parties are freed and told (`network_error`), their
/// records closed.
async fn end_calls_of(
    cluster: &Cluster,
    engine: &Engine,
    client: &fred::clients::Client,
    node: &str,
) -> Result<(), fred::error::Error> {
    let keys = &cluster.keys;
    let calls: Vec<String> = client.smembers(keys.node_calls(node)).await?;
    if calls.is_empty() {
        return Ok(());
    }
    for call_id in &calls {
        let users: Vec<String> = client
            .eval(
                RELEASE_SCRIPT,
                Vec::<String>::new(),
                vec![keys.prefix.clone(), call_id.clone()],
            )
            .await?;
        let users: Vec<i64> = users.iter().filter_map(|u| u.parse().ok()).collect();
        let event = ServerEvent::new(
            events::CALL_ENDED,
            serde_json::json!({
                "callId": call_id,
                "reason": "network_error",
                "status": "ended",
                "duration": 0,
            }),
        );
        engine.directory.deliver(&users, &event, None);
        cluster.publish_event(&users, &event, None);
    }
    client.del::<i64, _>(keys.node_calls(node)).await?;
    let ids = calls.clone();
    match engine
        .db
        .run(move |conn| crate::db::calls::fail_calls(conn, &ids, "network_error"))
        .await
    {
        Ok(n) => tracing::warn!(dead = %node, calls = n, "cluster: calls of a dead node ended"),
        Err(e) => {
            tracing::warn!(dead = %node, error = %e, "cluster: could not close the calls of a dead node")
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
        // Redis answers: what follows (the presence announcements) may publish.
        cluster.set_redis_up(true);
        cluster.hello(&self.client).await?;
        let added: i64 = self.client.sadd(keys.nodes(), cluster.node.clone()).await?;
        // New here, Redis lost this node's entries, another node reaped it, or its users came
        // and went while Redis was unreachable: write its presence again and tell what changed.
        // After an outage (a failed publish or an unreachable Redis) announcements made
        // meanwhile, those of an earlier resync included, may have been dropped: every user held
        // here is announced again, not only the entries the resync changes.
        let outage = cluster.resync.swap(false, Ordering::SeqCst);
        if added == 1 || outage {
            if let Err(e) = self.resync_presence(outage).await {
                cluster.resync.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        let dead: Vec<String> = self
            .client
            .eval(
                DEAD_SCRIPT,
                vec![keys.nodes()],
                vec![keys.heartbeat_prefix()],
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

    /// Makes this node's presence entries in Redis what it holds, and tells every node (this
    /// one included) the presence of each user whose entry changed (`all`: of every user it
    /// holds as well).
    async fn resync_presence(&self, all: bool) -> Result<(), fred::error::Error> {
        let Ok(held) = self.engine.registry.send(LocalPresence).await else {
            self.cluster.resync.store(true, Ordering::SeqCst);
            return Ok(());
        };
        let cluster = &self.cluster;
        let keys = &cluster.keys;
        let mut args = Vec::with_capacity(2 + 2 * held.len());
        args.push(cluster.node.clone());
        args.push(keys.presence_prefix());
        for (user, devices) in &held {
            args.push(user.to_string());
            args.push(devices.to_string());
        }
        let changed: Vec<String> = self
            .client
            .eval(RESYNC_SCRIPT, vec![keys.node_users(&cluster.node)], args)
            .await?;
        let now = Utc::now();
        let mut told = std::collections::HashSet::new();
        for pair in changed.chunks(2) {
            let (Some(user), Some(devices)) = (
                pair.first().and_then(|u| u.parse::<i64>().ok()),
                pair.get(1).and_then(|d| d.parse::<u64>().ok()),
            ) else {
                continue;
            };
            told.insert(user);
            cluster.announce_presence(&self.engine, user, devices, (devices == 0).then_some(now));
        }
        if all {
            let rest: Vec<i64> = held
                .iter()
                .map(|(user, _)| *user)
                .filter(|u| !told.contains(u))
                .collect();
            let totals = cluster.devices_of(rest.clone()).await;
            for user in rest {
                if let Some(devices) = totals.get(&user) {
                    cluster.announce_presence(&self.engine, user, *devices, None);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        single_frame, split_frame, Body, Cluster, Frames, Payload, ServerEvent, FRAME_BYTES,
    };
    use crate::config::{Config, Secret};

    #[test]
    fn a_flush_goes_to_the_inboxes_of_the_nodes_heard_lately_else_to_the_shared_bus() {
        let config = Config {
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            redis_prefix: "p".into(),
            node_id: "a".into(),
            node_ttl: std::time::Duration::from_millis(100),
            ..Config::default()
        };
        let Ok(Some((cluster, _runner))) = Cluster::new(&config) else {
            unreachable!("a cluster link for a Redis URL");
        };
        assert_eq!(cluster.destinations(), ["p:bus"], "no other node known yet");
        assert_eq!(cluster.channels(), ["p:bus", "p:bus:a"]);
        cluster.heard("b");
        cluster.heard("c");
        let mut to = cluster.destinations();
        to.sort();
        assert_eq!(to, ["p:bus:b", "p:bus:c"]);
        // Twice NODE_TTL_MS without a word from b: it is no longer published to.
        std::thread::sleep(std::time::Duration::from_millis(120));
        cluster.heard("c");
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert_eq!(cluster.destinations(), ["p:bus:c"]);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(
            cluster.destinations(),
            ["p:bus"],
            "nobody heard: the shared bus again"
        );
    }
    use serde_json::json;

    #[test]
    fn bodies_round_trip_with_and_without_a_message_seq() {
        let data = json!({"text": "hi\nthere"});
        let with = Body::Event {
            users: vec![1, 2].into(),
            name: "message:new".into(),
            data: Payload::Value(&data),
            skip: None,
            message: Some((7, 42)),
        };
        let frame = single_frame("a", &with).unwrap_or_default();
        let Some((from, bodies)) = split_frame(frame.as_bytes()) else {
            unreachable!("not a frame: {frame}");
        };
        assert_eq!(from, "a");
        let bodies: Vec<Body> = bodies
            .map(|b| serde_json::from_slice(b).unwrap_or_else(|e| unreachable!("{e}: {frame}")))
            .collect();
        assert_eq!(bodies.len(), 1);
        assert!(matches!(
            &bodies[0],
            Body::Event { message: Some((7, 42)), users, data, .. }
                if users[..] == [1, 2] && data.to_value() == json!({"text": "hi\nthere"})
        ));
        // A message's event takes the text as it came for its canonical frame, and reads the
        // value from it only when asked.
        let Body::Event {
            name,
            data: Payload::Encoded(raw),
            ..
        } = &bodies[0]
        else {
            unreachable!("not an encoded event: {:?}", bodies[0]);
        };
        let event = ServerEvent::message(name.to_string(), raw, 7, 42, None);
        assert_eq!(
            &*event.canonical_json(),
            r#"{"event":"message:new","payload":{"text":"hi\nthere"}}"#
        );
        assert_eq!(event.payload(), &data);
        assert_eq!(event.delivery, Some((7, 42)));
        assert_eq!(
            event.socketio_args().as_ref(),
            r#"["message:new",{"text":"hi\nthere"}]"#
        );
        let without = r#"{"Event":{"users":[3],"name":"typing:start","data":{}}}"#;
        let back: Body = serde_json::from_str(without).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(back, Body::Event { message: None, .. }));
    }

    #[test]
    fn a_flush_fills_frames_in_order_up_to_their_size() {
        let body = format!(r#"{{"Cache":{}}}"#, "1".repeat(1000));
        let mut frames = Frames::default();
        for _ in 0..600 {
            frames.push("node-1", &body);
        }
        assert_eq!(frames.bodies, 600);
        assert!(frames.done.len() >= 3, "{} frames", frames.done.len());
        let mut total = 0;
        for frame in &frames.done {
            assert!(frame.len() <= FRAME_BYTES + body.len());
            let Some((from, bodies)) = split_frame(frame.as_bytes()) else {
                unreachable!("not a frame");
            };
            assert_eq!(from, "node-1");
            total += bodies.inspect(|b| assert_eq!(*b, body.as_bytes())).count();
        }
        assert_eq!(total, 600);
        assert!(split_frame(b"{\"from\":\"a\"}").is_none());
        assert!(split_frame(b"sb2 a\n{}").is_none());
    }
}
