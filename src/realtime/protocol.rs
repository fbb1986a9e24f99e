//! The canonical realtime protocol: what the engine understands and emits, independent of any
//! wire format. Transports decode their frames into [`ClientFrame`]s, the session parses those
//! into [`Command`]s, and everything the engine sends out is a [`ServerEvent`] (or an ack/error
//! reply to a frame).
//!
//! The command structs take the canonical field names only (camelCase, as the README documents
//! them); a name they do not know is ignored, so a required field given under another name is
//! missing. Other names are renamed to these at the edge before a command is parsed: the few
//! aliases every connection may use ([`crate::realtime::dialect::SHARED_FIELDS`]) and each
//! app's own names, by its dialect's tables ([`crate::realtime::dialect`]).

use crate::error::{AppError, ErrorCode};
use crate::realtime::events;
use bytestring::ByteString;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// Whether a JSON value holds a NUL character in any string or key (PostgreSQL cannot store
/// one, in `text` or in `jsonb`).
pub(crate) fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// One decoded client frame: event name, payload, and the optional correlation id that the
/// reply (ack or error) must carry back.
#[derive(Clone, Debug)]
pub struct ClientFrame {
    /// Event name, e.g. `message:send`.
    pub event: String,
    /// Payload (`null` when absent).
    pub payload: Value,
    /// Correlation id chosen by the client.
    pub reply_to: Option<Value>,
}

/// An event pushed to clients. Shared by every recipient of a fan-out; the canonical JSON text
/// is produced once and reused.
#[derive(Debug)]
pub struct ServerEvent {
    /// Canonical event name.
    pub name: Cow<'static, str>,
    /// Canonical payload ([`ServerEvent::payload`]). A new message's event is made from its
    /// payload's JSON text instead (`encoded`, written once, here or by the node that
    /// committed it), and the value is parsed from that text only by a recipient that needs
    /// it (a dialect's): canonical frames, Socket.IO's arguments and the cluster bus take the
    /// text as it is.
    payload: OnceLock<Value>,
    /// The payload as JSON text, when the event was made from it.
    encoded: Option<Box<RawValue>>,
    /// For a new message: its conversation and seq, so transports whose clients acknowledge
    /// events (Socket.IO) can turn that acknowledgement into a delivered receipt.
    pub delivery: Option<(i64, i64)>,
    /// For an event that stands for something durable ([`ServerEvent::position`]).
    position: OnceLock<Option<Position>>,
    /// For the event that tells a call ended (`call:ended|missed|cancelled|rejected|busy`):
    /// the call, so a connection can tell which ends its client heard.
    pub call_end: Option<Arc<str>>,
    canonical: OnceLock<ByteString>,
    socketio: OnceLock<Arc<str>>,
    /// This event in each dialect (slot: [`crate::realtime::dialect::Dialect::index`]), built
    /// by the first recipient speaking it.
    translated: [OnceLock<Arc<[Arc<ServerEvent>]>>; DIALECT_SLOTS],
}

/// Slots of an event's translation cache: one per dialect and user-id type (a dialect may type
/// ids like each connection's token).
pub(crate) const DIALECT_SLOTS: usize = 2 * crate::realtime::dialect::DIALECT_COUNT;

/// Where a durable event stands in its conversation: every new message, edit, deletion and
/// receipt takes the conversation's next change number, and a new message its next seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The conversation.
    pub conversation: i64,
    /// A new message's seq; 0 for other events.
    pub seq: i64,
    /// The change number.
    pub change: i64,
}

impl Position {
    /// The position of a canonical event, when it stands for something durable.
    pub(crate) fn of(name: &str, payload: &Value) -> Option<Self> {
        let new = match name {
            events::MESSAGE_NEW => true,
            events::MESSAGE_EDITED
            | events::MESSAGE_DELETED
            | events::RECEIPT_DELIVERED
            | events::RECEIPT_READ => false,
            _ => return None,
        };
        let conversation = match payload.get("conversationId")? {
            Value::String(s) => s.parse().ok()?,
            Value::Number(n) => n.as_i64()?,
            _ => return None,
        };
        let change = payload.get("change").and_then(Value::as_i64)?;
        let seq = if new {
            payload.get("seq").and_then(Value::as_i64)?
        } else {
            0
        };
        Some(Self {
            conversation,
            seq,
            change,
        })
    }
}

/// The call a canonical event tells the end of, if it does.
fn call_end_of(name: &str, payload: &Value) -> Option<Arc<str>> {
    matches!(
        name,
        events::CALL_ENDED
            | events::CALL_MISSED
            | events::CALL_CANCELLED
            | events::CALL_REJECTED
            | events::CALL_BUSY
    )
    .then(|| payload.get("callId").and_then(Value::as_str).map(Arc::from))
    .flatten()
}

impl ServerEvent {
    /// A new shared event.
    pub fn new(name: impl Into<Cow<'static, str>>, payload: Value) -> Arc<Self> {
        let name = name.into();
        Arc::new(Self {
            position: OnceLock::from(Position::of(&name, &payload)),
            call_end: call_end_of(&name, &payload),
            name,
            payload: OnceLock::from(payload),
            encoded: None,
            delivery: None,
            canonical: OnceLock::new(),
            socketio: OnceLock::new(),
            translated: Default::default(),
        })
    }

    /// A new message's event (see [`ServerEvent::delivery`]). Its payload is written as JSON
    /// text once, here (a [`RawValue`] is copied as it is: the text another node wrote);
    /// `position`, when known, saves reading it from the payload.
    pub(crate) fn message(
        name: impl Into<Cow<'static, str>>,
        payload: &(impl Serialize + ?Sized),
        conversation_id: i64,
        seq: i64,
        position: Option<Position>,
    ) -> Arc<Self> {
        let name = name.into();
        let (encoded, value) = match serde_json::value::to_raw_value(payload) {
            Ok(raw) => (Some(raw), OnceLock::new()),
            Err(e) => {
                tracing::error!(error = %e, event = %name, "could not encode a message's payload");
                (None, OnceLock::from(Value::Null))
            }
        };
        Arc::new(Self {
            name,
            payload: value,
            encoded,
            delivery: Some((conversation_id, seq)),
            position: position.map_or_else(OnceLock::new, |p| OnceLock::from(Some(p))),
            call_end: None,
            canonical: OnceLock::new(),
            socketio: OnceLock::new(),
            translated: Default::default(),
        })
    }

    /// Another event standing for this one (a dialect's translation): same delivery.
    pub(crate) fn derive(&self, name: impl Into<Cow<'static, str>>, payload: Value) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            payload: OnceLock::from(payload),
            encoded: None,
            delivery: self.delivery,
            position: OnceLock::from(self.position()),
            call_end: self.call_end.clone(),
            canonical: OnceLock::new(),
            socketio: OnceLock::new(),
            translated: Default::default(),
        })
    }

    /// The canonical payload (for an event made from its JSON text, parsed on first use).
    pub fn payload(&self) -> &Value {
        self.payload.get_or_init(|| {
            let text = self.encoded.as_deref().map_or("null", RawValue::get);
            serde_json::from_str(text).unwrap_or_else(|e| {
                tracing::error!(error = %e, event = %self.name, "could not read an event's payload");
                Value::Null
            })
        })
    }

    /// The payload's JSON text, when the event was made from it (see [`ServerEvent::message`]).
    pub(crate) fn encoded(&self) -> Option<&RawValue> {
        self.encoded.as_deref()
    }

    /// Where an event that stands for something durable (a new, edited or deleted message, a
    /// receipt) stands in its conversation, so a connection can tell its client's place
    /// (Socket.IO connection state recovery).
    pub fn position(&self) -> Option<Position> {
        *self
            .position
            .get_or_init(|| Position::of(&self.name, self.payload()))
    }

    /// The Socket.IO arguments `["name", payload]` as JSON text, encoded once and shared.
    pub(crate) fn socketio_args(&self) -> Arc<str> {
        Arc::clone(self.socketio.get_or_init(|| {
            match self.encoded() {
                Some(raw) => serde_json::to_string(&(&*self.name, raw)),
                None => serde_json::to_string(&(&*self.name, self.payload())),
            }
            .map_or_else(|_| Arc::from("[]"), Arc::from)
        }))
    }

    /// This event as a dialect speaks it, built once by `build` and shared by every recipient
    /// of that dialect.
    pub(crate) fn translated(
        &self,
        slot: usize,
        build: impl FnOnce() -> Vec<Arc<ServerEvent>>,
    ) -> Arc<[Arc<ServerEvent>]> {
        match self.translated.get(slot) {
            Some(cell) => Arc::clone(cell.get_or_init(|| build().into())),
            None => build().into(),
        }
    }

    /// `{"event": name, "payload": payload}`, encoded once and shared by every recipient (a
    /// clone is a reference count, not a copy).
    pub fn canonical_json(&self) -> ByteString {
        self.canonical
            .get_or_init(|| {
                ByteString::from(match self.encoded() {
                    Some(raw) => frame_text(&self.name, None, raw),
                    None => frame_text(&self.name, None, self.payload()),
                })
            })
            .clone()
    }
}

/// A canonical frame `{"event", "id"?, "payload"}` as text, serialised from borrowed parts (no
/// copy of the payload tree).
pub(crate) fn frame_text<T: Serialize + ?Sized>(
    event: &str,
    id: Option<&Value>,
    payload: &T,
) -> String {
    #[derive(Serialize)]
    struct Frame<'a, T: Serialize + ?Sized> {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        payload: &'a T,
    }
    serde_json::to_string(&Frame { event, id, payload }).unwrap_or_else(|e| {
        tracing::error!(error = %e, event, "could not encode a frame");
        String::from("{\"event\":\"error\",\"payload\":{\"code\":\"internal\",\"message\":\"could not encode\"}}")
    })
}

/// An error reply or error event: `{code, message, ref}` plus `retryAfter` for rate limits.
#[derive(Clone, Debug, Serialize)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Client-facing text.
    pub message: String,
    /// The frame this answers: its id, or its event name when it had none.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Value>,
    /// Seconds to wait (`rate_limited`).
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl WireError {
    /// From an application error, referring to a frame.
    pub(crate) fn from_app(err: &AppError, reference: Option<Value>) -> Self {
        match err {
            AppError::Internal { cause } => tracing::error!(%cause, "command failed"),
            AppError::Unavailable { cause } => {
                tracing::warn!(%cause, "command failed: dependency unavailable")
            }
            _ => {}
        }
        Self {
            code: err.code(),
            message: err.to_string(),
            reference,
            retry_after: match err {
                AppError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
                _ => None,
            },
        }
    }
}

/// What a session hands to its transport for writing. One pointer wide, so a connection's
/// outbound queue costs little while it is empty.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A pushed event.
    Event(Arc<ServerEvent>),
    /// A successful reply to a frame that carried an id.
    Ack(Box<AckReply>),
    /// A failed command.
    Error(Box<ErrorReply>),
}

/// A successful reply.
#[derive(Clone, Debug)]
pub struct AckReply {
    /// The frame's id.
    pub id: Value,
    /// The result.
    pub payload: Value,
}

/// A failed command; `id` is the frame's id when it had one.
#[derive(Clone, Debug)]
pub struct ErrorReply {
    /// The frame's id.
    pub id: Option<Value>,
    /// The error.
    pub error: WireError,
}

impl Outbound {
    /// A successful reply to the frame `id`.
    pub(crate) fn ack(id: Value, payload: Value) -> Self {
        Self::Ack(Box::new(AckReply { id, payload }))
    }

    /// An error reply (to the frame `id`, or an error event without one).
    pub(crate) fn error(id: Option<Value>, error: WireError) -> Self {
        Self::Error(Box::new(ErrorReply { id, error }))
    }
}

/// Deserializes an id given as a JSON string or number into `i64`.
pub(crate) fn id_field<'de, D: Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    match Value::deserialize(de)? {
        Value::Number(n) => n
            .as_i64()
            .filter(|v| *v > 0)
            .ok_or_else(|| de::Error::custom("id must be a positive integer")),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| de::Error::custom(format!("`{s}` is not a valid id"))),
        other => Err(de::Error::custom(format!(
            "expected an id string, got {other}"
        ))),
    }
}

/// Like [`id_field`] for optional fields.
pub(crate) fn opt_id_field<'de, D: Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => id_field(v).map(Some).map_err(de::Error::custom),
    }
}

/// Like [`id_field`] for lists of ids.
pub(crate) fn id_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<i64>, D::Error> {
    let values = Vec::<Value>::deserialize(de)?;
    values
        .into_iter()
        .map(|v| id_field(v).map_err(de::Error::custom))
        .collect()
}

/// A non-negative sequence number given as a number or a string of digits.
pub(crate) fn seq_field<'de, D: Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    match Value::deserialize(de)? {
        Value::Number(n) => n
            .as_i64()
            .filter(|v| *v >= 0)
            .ok_or_else(|| de::Error::custom("expected a non-negative integer")),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| de::Error::custom(format!("`{s}` is not a valid sequence number"))),
        other => Err(de::Error::custom(format!(
            "expected a sequence number, got {other}"
        ))),
    }
}

fn opt_seq_field<'de, D: Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => seq_field(v).map(Some).map_err(de::Error::custom),
    }
}

/// A message a client wants to send (`message:send`, REST `POST .../messages`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendDraft {
    /// Target conversation.
    #[serde(deserialize_with = "id_field")]
    pub conversation_id: i64,
    /// Text (may be empty for media messages).
    #[serde(default)]
    pub content: String,
    /// `text|image|audio|file` (`system`, `voice_call`, `video_call` are server-only).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Attachment URL: one of this server's media URLs (see `mediaId`) or, when
    /// `MEDIA_FOREIGN_URLS` allows, another host's.
    #[serde(default)]
    pub media_url: Option<String>,
    /// An upload of this server (`POST /api/media`) to attach; the sender must be able to read
    /// it.
    #[serde(default)]
    pub media_id: Option<String>,
    /// Message being replied to.
    #[serde(default, deserialize_with = "opt_id_field")]
    pub reply_to: Option<i64>,
    /// Free-form JSON metadata.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Idempotency key, unique per sender.
    #[serde(default)]
    pub client_message_id: Option<String>,
    /// The admin a staff member writes to in a support conversation (seed 002 names its
    /// recipient); elsewhere the recipient follows from the conversation.
    #[serde(default, deserialize_with = "opt_id_field")]
    pub recipient_id: Option<i64>,
}

/// `message:edit`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditCommand {
    /// The message.
    #[serde(deserialize_with = "id_field")]
    pub message_id: i64,
    /// New text.
    pub content: String,
}

/// `message:delete`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteCommand {
    /// The message.
    #[serde(deserialize_with = "id_field")]
    pub message_id: i64,
}

/// Commands naming only a conversation (join, leave, typing).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    /// The conversation.
    #[serde(deserialize_with = "id_field")]
    pub conversation_id: i64,
}

/// `receipt:delivered|read`: move the caller's cursor forward. The cursor is given as a seq
/// (`upTo`), as message ids (`messageIds`: up to the newest of them) or as a time (`upToTime`:
/// up to the newest message created at or before it; ISO 8601 or epoch milliseconds).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawReceipt")]
pub struct ReceiptCommand {
    /// The conversation.
    pub conversation_id: i64,
    /// Where the cursor moves to.
    pub cursor: ReceiptCursor,
}

/// A receipt cursor before it is resolved to a seq.
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiptCursor {
    /// Highest seq covered.
    Seq(i64),
    /// Messages read or delivered (the newest of them counts).
    Messages(Vec<i64>),
    /// Everything created at or before this instant.
    Time(chrono::DateTime<chrono::Utc>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReceipt {
    #[serde(deserialize_with = "id_field")]
    conversation_id: i64,
    #[serde(default, deserialize_with = "opt_seq_field")]
    up_to: Option<i64>,
    #[serde(default, deserialize_with = "opt_id_list")]
    message_ids: Option<Vec<i64>>,
    #[serde(default)]
    up_to_time: Option<Value>,
}

/// Messages one receipt may name.
pub(crate) const MAX_RECEIPT_MESSAGES: usize = 1000;

impl TryFrom<RawReceipt> for ReceiptCommand {
    type Error = String;
    fn try_from(raw: RawReceipt) -> Result<Self, String> {
        let cursor = match (raw.up_to, raw.message_ids, raw.up_to_time) {
            (Some(seq), None, None) => ReceiptCursor::Seq(seq),
            (None, Some(ids), None) => {
                if ids.is_empty() || ids.len() > MAX_RECEIPT_MESSAGES {
                    return Err(format!(
                        "messageIds must name 1 to {MAX_RECEIPT_MESSAGES} messages"
                    ));
                }
                ReceiptCursor::Messages(ids)
            }
            (None, None, Some(t)) => ReceiptCursor::Time(time_value(&t)?),
            (None, None, None) => {
                return Err("one of `upTo`, `messageIds` or `upToTime` is required".into())
            }
            _ => return Err("give only one of `upTo`, `messageIds` or `upToTime`".into()),
        };
        Ok(Self {
            conversation_id: raw.conversation_id,
            cursor,
        })
    }
}

/// A time given as an RFC 3339 string or as epoch milliseconds, within the range PostgreSQL
/// stores.
pub(crate) fn time_value(v: &Value) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let parsed = match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        Value::Number(n) => n
            .as_i64()
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis),
        _ => None,
    }
    .filter(crate::db::storable_time);
    parsed.ok_or_else(|| format!("`{v}` is not a time (RFC 3339 or epoch milliseconds)"))
}

/// `presence:subscribe`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceSubscribe {
    /// Users to watch.
    #[serde(deserialize_with = "id_list")]
    pub user_ids: Vec<i64>,
}

/// One conversation's cursors in a `sync` request.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncCursor {
    /// The conversation.
    #[serde(deserialize_with = "id_field")]
    pub conversation_id: i64,
    /// Highest message seq the client has.
    #[serde(default, deserialize_with = "opt_seq_field")]
    pub seq: Option<i64>,
    /// Highest change number the client has seen (edits, deletes, receipts).
    #[serde(default, deserialize_with = "opt_seq_field")]
    pub change: Option<i64>,
}

/// `sync`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncCommand {
    /// Cursors per conversation.
    #[serde(default)]
    pub conversations: Vec<SyncCursor>,
}

/// `call:initiate`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInitiate {
    /// Callee (1:1).
    #[serde(default, deserialize_with = "opt_id_field")]
    pub to: Option<i64>,
    /// Group conversation to ring.
    #[serde(default, deserialize_with = "opt_id_field")]
    pub conversation_id: Option<i64>,
    /// Explicit member list (group call).
    #[serde(default, deserialize_with = "opt_id_list")]
    pub member_ids: Option<Vec<i64>>,
    /// `audio` (the default) or `video`.
    #[serde(default)]
    pub call_type: Option<String>,
    /// SDP offer.
    #[serde(default)]
    pub sdp_offer: Option<Value>,
    /// `webrtc`, `agora`, or `auto` (Agora when it is configured, else WebRTC).
    #[serde(default)]
    pub provider: Option<String>,
    /// A call id chosen by the client; the server picks one otherwise.
    #[serde(default)]
    pub call_id: Option<String>,
}

/// Commands naming a call, with optional extras.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRef {
    /// The call.
    pub call_id: String,
    /// SDP answer (`call:accept`).
    #[serde(default)]
    pub sdp_answer: Option<Value>,
    /// Reason (`call:reject`, `call:end`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `call:offer|answer|ice`: relayed between bound devices.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallSignal {
    /// The call.
    pub call_id: String,
    /// Recipient in group calls.
    #[serde(default, deserialize_with = "opt_id_field")]
    pub to: Option<i64>,
    /// Everything else is relayed as-is.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// `conversation:open`: the direct conversation with a user (created when the contact policy
/// allows).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectRef {
    /// The other user.
    #[serde(deserialize_with = "id_field")]
    pub user_id: i64,
}

/// `message:send` addressed to a user (`to`, or `recipientId`) instead of a conversation: the
/// direct conversation is opened under the contact policy first.
#[derive(Clone, Debug, Deserialize)]
pub struct DirectSend {
    /// Recipient.
    #[serde(deserialize_with = "id_field", alias = "recipientId")]
    pub to: i64,
    /// The rest of the message (a [`SendDraft`] without its conversation).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Sender and conversation fields a client may put in a send; identity comes from the token and
/// the conversation from the route or the resolved recipient, so these are dropped.
pub(crate) const SEND_IGNORED_FIELDS: [&str; 3] = ["senderId", "userId", "conversationId"];

impl SendDraft {
    /// A draft for `conversation_id` from the other fields of a send payload (sender and
    /// conversation fields in it are ignored).
    pub(crate) fn in_conversation(
        conversation_id: i64,
        mut fields: serde_json::Map<String, Value>,
    ) -> Result<Self, AppError> {
        for key in SEND_IGNORED_FIELDS {
            fields.remove(key);
        }
        for key in ["to", "recipientId"] {
            fields.remove(key);
        }
        fields.insert(
            "conversationId".into(),
            Value::String(conversation_id.to_string()),
        );
        serde_json::from_value(Value::Object(fields)).map_err(|e| AppError::Validation {
            code: ErrorCode::ValidationFailed,
            message: e.to_string().into(),
        })
    }
}

/// Whether a send payload names its conversation (otherwise it may name a recipient).
fn names_conversation(value: &Value) -> bool {
    value.get("conversationId").is_some_and(|v| !v.is_null())
}

fn names_recipient(value: &Value) -> bool {
    ["to", "recipientId"]
        .iter()
        .any(|k| value.get(*k).is_some_and(|v| !v.is_null()))
}

fn opt_id_list<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<i64>>, D::Error> {
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => id_list(v).map(Some).map_err(de::Error::custom),
    }
}

/// A parsed canonical command.
#[derive(Clone, Debug)]
pub enum Command {
    /// Open a conversation (membership check; returns its state).
    Join(ConversationRef),
    /// Close it (stops typing).
    Leave(ConversationRef),
    /// Send a message.
    Send(SendDraft),
    /// Edit an own message.
    Edit(EditCommand),
    /// Delete a message.
    Delete(DeleteCommand),
    /// Typing started.
    TypingStart(ConversationRef),
    /// Typing stopped.
    TypingStop(ConversationRef),
    /// Delivered cursor.
    Delivered(ReceiptCommand),
    /// Read cursor.
    Read(ReceiptCommand),
    /// Watch users' presence.
    PresenceSubscribe(PresenceSubscribe),
    /// Catch up.
    Sync(SyncCommand),
    /// Application-level ping (answered with an ack).
    Ping,
    /// Start a call.
    CallInitiate(CallInitiate),
    /// Accept a ringing call on this device.
    CallAccept(CallRef),
    /// Decline a ringing call.
    CallReject(CallRef),
    /// Hang up (or cancel before an answer).
    CallEnd(CallRef),
    /// Resume a call on this device after a reconnect.
    CallRejoin(CallRef),
    /// Relay signaling (`call:offer`, `call:answer`, `call:ice`).
    CallSignal(&'static str, CallSignal),
    /// Open (get-or-create) the direct conversation with a user.
    OpenDirect(DirectRef),
    /// Send to a user's direct conversation, opening it if needed.
    SendDirect(DirectSend),
}

fn payload<T: de::DeserializeOwned>(event: &str, value: Value) -> Result<T, AppError> {
    let value = if value.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        value
    };
    serde_json::from_value(value).map_err(|e| AppError::BadRequest {
        code: ErrorCode::InvalidPayload,
        message: format!("{event}: {e}").into(),
    })
}

impl Command {
    /// Parses a canonical event and payload.
    pub fn parse(event: &str, value: Value) -> Result<Self, AppError> {
        Ok(match event {
            events::CONVERSATION_JOIN => Self::Join(payload(event, value)?),
            events::CONVERSATION_LEAVE => Self::Leave(payload(event, value)?),
            events::MESSAGE_SEND if !names_conversation(&value) && names_recipient(&value) => {
                Self::SendDirect(payload(event, value)?)
            }
            events::MESSAGE_SEND => Self::Send(payload(event, value)?),
            events::CONVERSATION_OPEN => Self::OpenDirect(payload(event, value)?),
            events::MESSAGE_EDIT => Self::Edit(payload(event, value)?),
            events::MESSAGE_DELETE => Self::Delete(payload(event, value)?),
            events::TYPING_START => Self::TypingStart(payload(event, value)?),
            events::TYPING_STOP => Self::TypingStop(payload(event, value)?),
            events::RECEIPT_DELIVERED => Self::Delivered(payload(event, value)?),
            events::RECEIPT_READ => Self::Read(payload(event, value)?),
            events::PRESENCE_SUBSCRIBE => Self::PresenceSubscribe(payload(event, value)?),
            "sync" => Self::Sync(payload(event, value)?),
            "ping" => Self::Ping,
            events::CALL_INITIATE => Self::CallInitiate(payload(event, value)?),
            events::CALL_ACCEPT => Self::CallAccept(payload(event, value)?),
            events::CALL_REJECT => Self::CallReject(payload(event, value)?),
            events::CALL_END => Self::CallEnd(payload(event, value)?),
            events::CALL_REJOIN => Self::CallRejoin(payload(event, value)?),
            events::CALL_OFFER => Self::CallSignal(events::CALL_OFFER, payload(event, value)?),
            events::CALL_ANSWER => Self::CallSignal(events::CALL_ANSWER, payload(event, value)?),
            events::CALL_ICE => Self::CallSignal(events::CALL_ICE, payload(event, value)?),
            other => {
                return Err(AppError::BadRequest {
                    code: ErrorCode::UnknownEvent,
                    message: format!(
                        "unknown event `{}`",
                        other.chars().take(64).collect::<String>()
                    )
                    .into(),
                })
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_encoded_once_and_shared() {
        let ev = ServerEvent::new("message:new", json!({"id": "1", "content": "hé \"x\""}));
        let ws = ev.canonical_json();
        assert_eq!(
            serde_json::from_str::<Value>(&ws).unwrap(),
            json!({"event": "message:new", "payload": ev.payload()})
        );
        // The same bytes, not a copy.
        assert_eq!(ev.canonical_json().as_ptr(), ws.as_ptr());
        let sio = ev.socketio_args();
        assert_eq!(&*sio, json!(["message:new", ev.payload()]).to_string());
        assert!(Arc::ptr_eq(&sio, &ev.socketio_args()));
        // A message's event is made from its payload's text, and parses it only when asked.
        #[derive(Serialize)]
        struct View {
            id: &'static str,
            content: &'static str,
        }
        let position = Position {
            conversation: 4,
            seq: 2,
            change: 3,
        };
        let m = ServerEvent::message(
            "message:new",
            &View {
                id: "9",
                content: "hé \"x\"",
            },
            4,
            2,
            Some(position),
        );
        assert_eq!(
            &*m.canonical_json(),
            r#"{"event":"message:new","payload":{"id":"9","content":"hé \"x\""}}"#
        );
        assert_eq!(
            &*m.socketio_args(),
            r#"["message:new",{"id":"9","content":"hé \"x\""}]"#
        );
        assert!(m.payload.get().is_none(), "not parsed for frames");
        assert_eq!(m.position(), Some(position));
        assert_eq!(m.payload(), &json!({"id": "9", "content": "hé \"x\""}));
        assert_eq!(m.delivery, Some((4, 2)));
        let frame = frame_text("ack", Some(&json!(7)), &json!({"ok": true}));
        assert_eq!(frame, r#"{"event":"ack","id":7,"payload":{"ok":true}}"#);
    }

    #[test]
    fn send_accepts_aliases_at_the_edge_and_string_or_number_ids() {
        use crate::realtime::dialect::{Translator, CANONICAL};
        let frame = Translator::new(&CANONICAL)
            .inbound(ClientFrame {
                event: "message:send".into(),
                payload: json!({"conversation": 5, "text": "hi", "clientMessageId": "c1", "replyTo": "9"}),
                reply_to: None,
            })
            .unwrap();
        let Command::Send(d) = Command::parse(&frame.event, frame.payload).unwrap() else {
            panic!("not a send")
        };
        assert_eq!(
            (d.conversation_id, d.content.as_str(), d.reply_to),
            (5, "hi", Some(9))
        );
        assert_eq!(d.client_message_id.as_deref(), Some("c1"));
    }

    #[test]
    fn canonical_commands_know_only_canonical_names() {
        // An app's name for a required field leaves it missing.
        let err =
            Command::parse("message:send", json!({"conversation": 5, "text": "hi"})).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        let err = Command::parse("call:accept", json!({"roomName": "r1"})).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        let err =
            Command::parse("receipt:read", json!({"conversation": 5, "upTo": 1})).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        // Optional ones are ignored.
        let Command::Send(d) = Command::parse(
            "message:send",
            json!({"conversationId": 5, "text": "hi", "messageType": "image", "tempId": "t"}),
        )
        .unwrap() else {
            panic!("not a send")
        };
        assert_eq!(
            (d.content.as_str(), d.kind, d.client_message_id),
            ("", None, None)
        );
        let Command::CallInitiate(c) = Command::parse(
            "call:initiate",
            json!({"toId": 2, "isVideo": true, "sdp": "o", "roomName": "r1"}),
        )
        .unwrap() else {
            panic!("not a call")
        };
        assert_eq!(
            (c.to, c.call_type, c.sdp_offer, c.call_id),
            (None, None, None, None)
        );
        // The canonical names.
        let Command::CallInitiate(c) = Command::parse(
            "call:initiate",
            json!({"to": "2", "callType": "video", "sdpOffer": "o", "callId": "r1"}),
        )
        .unwrap() else {
            panic!("not a call")
        };
        assert_eq!(
            (c.to, c.call_type.as_deref(), c.call_id.as_deref()),
            (Some(2), Some("video"), Some("r1"))
        );
    }

    #[test]
    fn wrong_types_and_unknown_events_have_codes() {
        let err = Command::parse("message:send", json!({"conversationId": true})).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        let err = Command::parse("message:send", json!({"conversationId": "abc"})).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        let err =
            Command::parse("receipt:read", json!({"conversationId": "1", "upTo": -1})).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        assert_eq!(
            Command::parse("nope", Value::Null).unwrap_err().code(),
            "unknown_event"
        );
    }

    #[test]
    fn sends_to_a_user_and_direct_opens_parse() {
        let Command::SendDirect(d) = Command::parse(
            "message:send",
            json!({"recipientId": "7", "content": "hi", "senderId": "99"}),
        )
        .unwrap() else {
            panic!("not a direct send")
        };
        assert_eq!(d.to, 7);
        let draft = SendDraft::in_conversation(3, d.rest).unwrap();
        assert_eq!((draft.conversation_id, draft.content.as_str()), (3, "hi"));
        // A conversation id wins over a recipient.
        assert!(matches!(
            Command::parse(
                "message:send",
                json!({"conversationId": 5, "to": 7, "text": "x"})
            )
            .unwrap(),
            Command::Send(_)
        ));
        let Command::OpenDirect(o) =
            Command::parse("conversation:open", json!({"userId": 12})).unwrap()
        else {
            panic!("not an open")
        };
        assert_eq!(o.user_id, 12);
    }

    #[test]
    fn canonical_json_is_encoded_once_and_reused() {
        let ev = ServerEvent::new("message:new", json!({"id": "1"}));
        let a = ev.canonical_json();
        let b = ev.canonical_json();
        assert_eq!(a.as_ptr(), b.as_ptr());
        let parsed: Value = serde_json::from_str(&a).unwrap();
        assert_eq!(
            parsed,
            json!({"event": "message:new", "payload": {"id": "1"}})
        );
    }
}
