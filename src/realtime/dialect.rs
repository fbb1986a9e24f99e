//! Dialects: the event and field names each existing app speaks, translated at the edge of a
//! session so the engine only ever sees canonical commands and emits canonical events.
//!
//! A dialect is data: a table of inbound rules (dialect event → canonical command, field renames,
//! constant fields, events to emit back on success, the event that carries failures), a table of
//! the app's field names for canonical fields ([`Fields`]: `text` for `content`, `roomName` for
//! `callId`, …, with the few value conversions an app needs, such as a boolean `isVideo` for
//! `callType`) and a table of outbound rules (canonical event → zero or more dialect events, each
//! with the extra fields that dialect reads). Canonical events and commands a dialect does not
//! mention pass through unchanged, and every canonical field stays in translated payloads, so a
//! dialect only adds.
//!
//! The engine's command structs ([`super::protocol`]) know the canonical names only: a frame's
//! field names are rewritten in its parsed JSON object once, when the frame comes in (keys moved
//! in the map, nothing re-encoded), for the canonical command the frame becomes. Every
//! connection, the canonical protocol's included, may use the few aliases the specification
//! accepts everywhere ([`SHARED_FIELDS`]); an app's other names are its dialect's alone. REST
//! routes serve every app at once and take every dialect's names ([`for_any_app`]).
//!
//! Seed 004's client never names a call: it offers to a user and then answers, trickles ICE and
//! hangs up "the current call". Its rules use [`Hook`]s that keep that one call id per
//! connection. Connections in a dialect run their commands one at a time, in arrival order (see
//! [`Translator::serial`]), so an ICE candidate sent right after an offer finds the call the
//! offer created.
//!
//! The apps of seeds 000, 002 and 003 may hold the ids their old backends gave imported users,
//! conversations, chat requests and messages: a translator made with
//! [`Translator::with_legacy`] resolves those in what its app sends and shows them in what it
//! receives (see [`crate::legacy`]), as part of the translation shared by the dialect's
//! connections. While nothing was imported that costs one atomic load per event.

use super::protocol::{ClientFrame, Outbound, ServerEvent, WireError};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::legacy::{Kind, LegacyIds, Source};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Where a translated field's value comes from.
#[derive(Clone, Copy, Debug)]
pub enum Src {
    /// A field of the canonical payload (absent → the field is not set).
    Field(&'static str),
    /// A field of the canonical payload as a JSON number: a string of digits becomes a number,
    /// and so does each such element of an array; other values are kept as they are. For apps
    /// whose ids are numbers (canonical ids are strings).
    Number(&'static str),
    /// A user id in the JSON type the connection's token carried its subject in: a number when
    /// the token said `"userId": 7`, a string when it said `"7"` (Switchboard's own tokens).
    /// Apps compare the ids they receive with the one they logged in with.
    UserId(&'static str),
    /// `.1` read inside the object `.0` when the payload carries an object there, else `.1` at
    /// the top level: a value some apps nest and others send flat (an ICE candidate as an
    /// `RTCIceCandidateInit` object under `candidate`, or `candidate`, `sdpMid` and
    /// `sdpMLineIndex` side by side).
    Flat(&'static str, &'static str),
    /// An object of the fields these sources give (absent ones left out; absent when all are).
    Object(&'static [(&'static str, Src)]),
    /// `true` when the canonical `callType` is `video`.
    IsVideo,
    /// `"online"` or `"offline"` from the canonical `online` flag.
    OnlineStatus,
    /// A constant string.
    Str(&'static str),
    /// The number zero.
    Zero,
    /// JSON `null`.
    Null,
    /// An empty JSON array.
    EmptyList,
    /// A canonical string field's value renamed through a table `(canonical, dialect)`; a value
    /// the table does not list becomes `other` when it is set, else stays as it is.
    Map {
        /// Canonical field read.
        field: &'static str,
        /// Value renames.
        table: &'static [(&'static str, &'static str)],
        /// What unlisted values become.
        other: Option<&'static str>,
    },
}

/// How a value changes when its field takes its canonical name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// Kept as it is.
    Same,
    /// A boolean video flag as a `callType`: `true` is `video`, `false` `audio` (other values
    /// are kept, for the command to refuse).
    VideoFlag,
    /// A string the app writes as the second of a pair `(canonical, app)` of the table its
    /// outbound rules use, read as the first (ignoring case); values the table does not list are
    /// kept.
    Map(&'static [(&'static str, &'static str)]),
}

impl Conv {
    fn apply(self, value: Value) -> Value {
        match (self, value) {
            (Self::VideoFlag, Value::Bool(video)) => json!(if video { "video" } else { "audio" }),
            (Self::Map(table), Value::String(s)) => {
                match table.iter().find(|(_, app)| s.eq_ignore_ascii_case(app)) {
                    Some((canonical, _)) => json!(canonical),
                    None => Value::String(s),
                }
            }
            (_, value) => value,
        }
    }
}

/// One of an app's field names and the canonical field it stands for.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The app's name (the canonical name itself when only the value changes).
    pub from: &'static str,
    /// The canonical name.
    pub to: &'static str,
    /// How the value changes.
    pub value: Conv,
}

/// An app's names for fields of some canonical commands: applied to every frame that becomes
/// one of `commands`, whichever event the app sent it as. A field the frame already has under its
/// canonical name keeps that value (the app's spelling is then ignored).
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    /// Canonical commands.
    pub commands: &'static [&'static str],
    /// Names.
    pub fields: &'static [Field],
}

/// `from` is the app's name for the canonical field `to`.
const fn name(from: &'static str, to: &'static str) -> Field {
    Field {
        from,
        to,
        value: Conv::Same,
    }
}

/// Renames an app's field names in a payload to the canonical names of `command`.
fn canonical_fields(tables: &[Fields], command: &str, obj: &mut Map<String, Value>) {
    for table in tables.iter().filter(|t| t.commands.contains(&command)) {
        for field in table.fields {
            if field.from == field.to {
                if let Some(v) = obj.get_mut(field.to) {
                    *v = field.value.apply(v.take());
                }
                continue;
            }
            if obj.get(field.to).is_some_and(|v| !v.is_null()) {
                continue;
            }
            if let Some(v) = obj.remove(field.from) {
                obj.insert(field.to.to_owned(), field.value.apply(v));
            }
        }
    }
}

/// A body of a REST route for the canonical `command` with every app's field names renamed to
/// the canonical ones: one route serves the apps of every dialect.
pub(crate) fn for_any_app(command: &str, obj: &mut Map<String, Value>) {
    canonical_fields(SHARED_FIELDS, command, obj);
    for dialect in ALL {
        canonical_fields(dialect.fields, command, obj);
    }
}

/// One event a dialect emits, built from a canonical payload: every canonical field plus `set`.
#[derive(Clone, Copy, Debug)]
pub struct Emit {
    /// Dialect event name.
    pub event: &'static str,
    /// Fields added (or overwritten) in the payload.
    pub set: &'static [(&'static str, Src)],
    /// Emitted only when this canonical field is present and not null.
    pub when: Option<&'static str>,
}

/// Stateful steps for clients that do not name their call (seed 004).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Nothing special.
    None,
    /// An offer starts a call with the named user, or renegotiates the current one.
    OfferOrStart,
    /// An answer accepts the call ringing here, or answers a renegotiation.
    AnswerOrAccept,
    /// The command is about the current call.
    CurrentCall,
    /// Hang up the current call (and forget it).
    HangUpCurrent,
    /// Outbound: a call rings here; it becomes the current call.
    TrackIncoming,
    /// Outbound: the call named by the event is over; forget it if it is the current one.
    TrackEnd,
    /// Inbound: once the command succeeds, events of the conversation it names (messages,
    /// typing, receipts; calls excepted) no longer reach this connection.
    LeaveRoom,
    /// Inbound: once the command succeeds, the conversation's events reach this connection
    /// again.
    JoinRoom,
}

/// How one dialect event enters the engine.
#[derive(Clone, Copy, Debug)]
pub struct In {
    /// Dialect event name.
    pub event: &'static str,
    /// Canonical command it becomes.
    pub command: &'static str,
    /// Field renames (dialect name, canonical name) applied before parsing.
    pub rename: &'static [(&'static str, &'static str)],
    /// String fields set when the client did not send them.
    pub defaults: &'static [(&'static str, &'static str)],
    /// Events sent back to this connection when the command succeeds, built from its result.
    pub reply: &'static [Emit],
    /// The event that carries a failure of this command (besides the ack, when one was asked).
    pub error_event: Option<&'static str>,
    /// Fields the error event adds to `{code, message, ref}`, built from them (an app that
    /// learns of a failed call from `call:rejected` reads its `reason`).
    pub error_set: &'static [(&'static str, Src)],
    /// Stateful step.
    pub hook: Hook,
}

/// How one canonical event leaves in a dialect.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    /// Canonical event name.
    pub event: &'static str,
    /// What the dialect emits instead (nothing: the event is not sent).
    pub emit: &'static [Emit],
    /// Stateful step.
    pub hook: Hook,
}

/// A dialect's tables.
#[derive(Debug)]
pub struct Dialect {
    /// Name used in `?dialect=`, stats and metrics.
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// Inbound rules.
    pub inbound: &'static [In],
    /// The app's names for canonical fields, applied to what it sends.
    pub fields: &'static [Fields],
    /// Outbound rules.
    pub outbound: &'static [Out],
    /// The media providers the app can join a call through.
    pub media: Media,
}

/// Media providers a call can go through, as a set: what an app can join, or what the live
/// sessions of a user can join together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Media {
    /// Peer-to-peer WebRTC with SDP and ICE relayed by the server.
    pub webrtc: bool,
    /// Agora channels with server-minted tokens.
    pub agora: bool,
}

impl Media {
    /// Both providers (the canonical protocol carries either).
    pub(crate) const ANY: Self = Self {
        webrtc: true,
        agora: true,
    };
    /// WebRTC only (the apps that exchange SDP and ICE).
    pub(crate) const WEBRTC: Self = Self {
        webrtc: true,
        agora: false,
    };
    /// Agora only (the app that joins Agora channels and sends no SDP).
    pub(crate) const AGORA: Self = Self {
        webrtc: false,
        agora: true,
    };

    /// Whether the set holds `provider` (`webrtc` or `agora`; other names are in no set).
    pub(crate) fn allows(self, provider: &str) -> bool {
        match provider {
            "webrtc" => self.webrtc,
            "agora" => self.agora,
            _ => false,
        }
    }

    /// Both sets together.
    #[must_use]
    pub(crate) fn union(self, other: Self) -> Self {
        Self {
            webrtc: self.webrtc || other.webrtc,
            agora: self.agora || other.agora,
        }
    }

    /// What both sets hold.
    #[must_use]
    pub(crate) fn intersect(self, other: Self) -> Self {
        Self {
            webrtc: self.webrtc && other.webrtc,
            agora: self.agora && other.agora,
        }
    }
}

const fn inbound(event: &'static str, command: &'static str) -> In {
    In {
        event,
        command,
        rename: &[],
        defaults: &[],
        reply: &[],
        error_event: None,
        error_set: &[],
        hook: Hook::None,
    }
}

const fn out(event: &'static str, emit: &'static [Emit]) -> Out {
    Out {
        event,
        emit,
        hook: Hook::None,
    }
}

const fn emit(event: &'static str, set: &'static [(&'static str, Src)]) -> Emit {
    Emit {
        event,
        set,
        when: None,
    }
}

/// An event emitted only when the canonical payload carries `field`.
const fn emit_if(
    field: &'static str,
    event: &'static str,
    set: &'static [(&'static str, Src)],
) -> Emit {
    Emit {
        event,
        set,
        when: Some(field),
    }
}

/// Aliases seed 003's apps read on messages (Backend1 and Backend field names, and the `_id` of
/// the Mongoose documents both were written against), as REST returns them.
const BACKEND2_MESSAGE: &[(&str, Src)] = &[
    ("_id", Src::Field("id")),
    ("from", Src::Field("senderId")),
    ("sender", Src::Field("senderId")),
    ("conversation", Src::Field("conversationId")),
    ("text", Src::Field("content")),
];

/// The canonical protocol: no translation.
pub static CANONICAL: Dialect = Dialect {
    name: "canonical",
    aliases: &[],
    inbound: &[],
    fields: &[],
    outbound: &[],
    media: Media::ANY,
};

/// Seed 000 (lonestar): snake_case call events; `authenticate` is handled by the Socket.IO edge.
pub(crate) static LONESTAR: Dialect = Dialect {
    name: "lonestar",
    aliases: &["seed000", "000"],
    inbound: &[
        inbound("start_call", "call:initiate"),
        inbound("accept_call", "call:accept"),
        inbound("reject_call", "call:reject"),
        inbound("end_call", "call:end"),
        inbound("ice_candidate", "call:ice"),
        inbound("sdp_offer", "call:offer"),
        inbound("sdp_answer", "call:answer"),
    ],
    // `start_call{to, isVideo, sdp}`; an accept may carry its answer as `sdp` too.
    fields: &[
        Fields {
            commands: &["call:initiate"],
            fields: &[
                Field {
                    from: "isVideo",
                    to: "callType",
                    value: Conv::VideoFlag,
                },
                name("sdp", "sdpOffer"),
            ],
        },
        Fields {
            commands: &["call:accept"],
            fields: &[name("sdp", "sdpAnswer")],
        },
    ],
    outbound: &[
        out(
            "call:incoming",
            &[emit(
                "incoming_call",
                &[("isVideo", Src::IsVideo), ("sdp", Src::Field("sdpOffer"))],
            )],
        ),
        // The answer's SDP, when the callee sent it with its accept, follows as `sdp_answer`.
        out(
            "call:accepted",
            &[
                emit("call_accepted", &[("userId", Src::Field("by"))]),
                emit_if(
                    "sdpAnswer",
                    "sdp_answer",
                    &[("sdp", Src::Field("sdpAnswer"))],
                ),
            ],
        ),
        out("call:rejected", &[emit("call_rejected", &[])]),
        out(
            "call:busy",
            &[emit("call_rejected", &[("reason", Src::Str("busy"))])],
        ),
        out("call:ended", &[emit("call_ended", &[])]),
        out(
            "call:missed",
            &[emit(
                "call_ended",
                &[("reason", Src::Str("missed")), ("duration", Src::Zero)],
            )],
        ),
        out(
            "call:cancelled",
            &[emit("call_ended", &[("duration", Src::Zero)])],
        ),
        out(
            "call:answered_elsewhere",
            &[emit(
                "call_ended",
                &[
                    ("reason", Src::Str("answered_elsewhere")),
                    ("duration", Src::Zero),
                ],
            )],
        ),
        // Seed 000 relays `{callId, candidate, sdpMid, sdpMLineIndex}` side by side, whatever
        // shape the other party's app sent.
        out(
            "call:ice",
            &[emit(
                "ice_candidate",
                &[FLAT_ICE[0], FLAT_ICE[1], FLAT_ICE[2], FLAT_ICE[3]],
            )],
        ),
        out("call:offer", &[emit("sdp_offer", &[])]),
        out("call:answer", &[emit("sdp_answer", &[])]),
    ],
    media: Media::WEBRTC,
};

/// An ICE candidate's fields read from either shape an app may send: an `RTCIceCandidateInit`
/// object under `candidate`, or `candidate` (a string), `sdpMid` and `sdpMLineIndex` side by
/// side. Seeds 000 and 001 read them flat; [`ICE_INIT`] nests them.
const FLAT_ICE: [(&str, Src); 4] = [
    ("candidate", Src::Flat("candidate", "candidate")),
    ("sdpMid", Src::Flat("candidate", "sdpMid")),
    ("sdpMLineIndex", Src::Flat("candidate", "sdpMLineIndex")),
    (
        "usernameFragment",
        Src::Flat("candidate", "usernameFragment"),
    ),
];

/// Seed 001 (WorldMates): the client names its calls (`roomName`). Its user and group ids are
/// numbers (`user:join` 123, `participants: [123, 456]`), so every id leaves as a JSON number;
/// `roomName`/`callId` stay strings.
pub(crate) static WORLDMATES: Dialect = Dialect {
    name: "worldmates",
    aliases: &["seed001", "001"],
    inbound: &[
        // Joins the caller's own room: the user is known from the token already.
        inbound("user:join", "ping"),
        // The app hears of a call that could not start as a rejection, with the reason.
        In {
            error_event: Some("call:rejected"),
            error_set: &[("reason", Src::Field("code"))],
            ..inbound("call:initiate", "call:initiate")
        },
        In {
            error_event: Some("call:rejected"),
            error_set: &[("reason", Src::Field("code"))],
            ..inbound("group_call:initiate", "call:initiate")
        },
        // An accept that fails (the call is gone, answered elsewhere) ends the call on screen.
        In {
            error_event: Some("call:ended"),
            error_set: &[("reason", Src::Field("code"))],
            ..inbound("call:accept", "call:accept")
        },
        inbound("call:reject", "call:reject"),
        inbound("call:end", "call:end"),
        inbound("ice:candidate", "call:ice"),
    ],
    // `group_call:initiate{groupId}` (its `toId` and `roomName` are in [`SHARED_FIELDS`]).
    fields: &[Fields {
        commands: &["call:initiate"],
        fields: &[name("groupId", "conversationId")],
    }],
    outbound: &[
        out(
            "call:incoming",
            &[emit(
                "call:incoming",
                &[
                    ("fromId", Src::Number("from")),
                    ("from", Src::Number("from")),
                    ("roomName", Src::Field("callId")),
                    ("participants", Src::Number("participants")),
                    ("conversationId", Src::Number("conversationId")),
                    ("groupId", Src::Number("conversationId")),
                ],
            )],
        ),
        // The answer to the caller's offer, 1:1 or from each member of a group call. Without
        // an SDP in the accept, the answer comes as a relayed `call:answer`.
        out(
            "call:accepted",
            &[emit_if(
                "sdpAnswer",
                "call:answer",
                &[
                    ("roomName", Src::Field("callId")),
                    ("by", Src::Number("by")),
                    ("fromId", Src::Number("by")),
                ],
            )],
        ),
        out(
            "call:answer",
            &[emit(
                "call:answer",
                &[
                    ("sdpAnswer", Src::Field("sdp")),
                    ("roomName", Src::Field("callId")),
                    ("from", Src::Number("from")),
                    ("fromId", Src::Number("from")),
                ],
            )],
        ),
        out(
            "call:offer",
            &[emit(
                "call:offer",
                &[
                    ("sdpOffer", Src::Field("sdp")),
                    ("roomName", Src::Field("callId")),
                    ("from", Src::Number("from")),
                    ("fromId", Src::Number("from")),
                ],
            )],
        ),
        out(
            "call:rejected",
            &[emit(
                "call:rejected",
                &[
                    ("roomName", Src::Field("callId")),
                    ("by", Src::Number("by")),
                ],
            )],
        ),
        out(
            "call:busy",
            &[emit(
                "call:rejected",
                &[
                    ("reason", Src::Str("busy")),
                    ("roomName", Src::Field("callId")),
                    ("to", Src::Number("to")),
                ],
            )],
        ),
        out(
            "call:ended",
            &[emit(
                "call:ended",
                &[
                    ("roomName", Src::Field("callId")),
                    ("endedBy", Src::Number("endedBy")),
                ],
            )],
        ),
        out(
            "call:missed",
            &[emit(
                "call:ended",
                &[
                    ("reason", Src::Str("missed")),
                    ("roomName", Src::Field("callId")),
                ],
            )],
        ),
        out(
            "call:cancelled",
            &[emit(
                "call:ended",
                &[
                    ("reason", Src::Str("cancelled")),
                    ("roomName", Src::Field("callId")),
                ],
            )],
        ),
        out(
            "call:answered_elsewhere",
            &[emit(
                "call:ended",
                &[
                    ("reason", Src::Str("answered_elsewhere")),
                    ("roomName", Src::Field("callId")),
                ],
            )],
        ),
        out(
            "call:ice",
            &[emit(
                "ice:candidate",
                &[
                    FLAT_ICE[0],
                    FLAT_ICE[1],
                    FLAT_ICE[2],
                    FLAT_ICE[3],
                    ("roomName", Src::Field("callId")),
                    ("from", Src::Number("from")),
                    ("fromId", Src::Number("from")),
                ],
            )],
        ),
        // Group call bookkeeping keeps its canonical names, with numeric ids.
        out(
            "call:participant_joined",
            &[emit("call:participant_joined", WORLDMATES_USER)],
        ),
        out(
            "call:participant_left",
            &[emit("call:participant_left", WORLDMATES_USER)],
        ),
        out(
            "call:peer_reconnecting",
            &[emit("call:peer_reconnecting", WORLDMATES_USER)],
        ),
        out(
            "call:peer_rejoined",
            &[emit("call:peer_rejoined", WORLDMATES_USER)],
        ),
        out(
            "call:participant_rejected",
            &[emit(
                "call:participant_rejected",
                &[
                    ("roomName", Src::Field("callId")),
                    ("by", Src::Number("by")),
                ],
            )],
        ),
        out(
            "call:participants",
            &[emit(
                "call:participants",
                &[
                    ("roomName", Src::Field("callId")),
                    ("participants", Src::Number("participants")),
                ],
            )],
        ),
        out(
            "call:rejoined",
            &[emit(
                "call:rejoined",
                &[
                    ("roomName", Src::Field("callId")),
                    ("participants", Src::Number("participants")),
                ],
            )],
        ),
        out(
            "presence",
            &[emit("presence", &[("userId", Src::Number("userId"))])],
        ),
    ],
    media: Media::WEBRTC,
};

/// A call event about one user, for seed 001 (numeric `userId`).
const WORLDMATES_USER: &[(&str, Src)] = &[
    ("roomName", Src::Field("callId")),
    ("userId", Src::Number("userId")),
];

const DM_ERROR: Option<&str> = Some("dm:error");
const CALL_ERROR: Option<&str> = Some("call:error");

/// Seed 002's call types: `voice|video` (canonical `audio|video`).
pub(crate) const ASTROLOGY_CALL_TYPES: &[(&str, &str)] = &[("audio", "voice")];

/// Seed 002's end reasons (`completed|rejected|no_answer|network_error|cancelled`) for canonical
/// ones. Its own backend writes `completed` for every hang-up, so reasons it does not list (a
/// client's own words, an admin's or the server's end) read as the nearest of its five: an
/// admin ending a call completes it, a server shutdown is a network error, a call answered on
/// another device is cancelled on this one.
pub(crate) const ASTROLOGY_END_REASONS: &[(&str, &str)] = &[
    ("hangup", "completed"),
    ("completed", "completed"),
    ("everyone_left", "completed"),
    ("admin", "completed"),
    ("rejected", "rejected"),
    ("declined", "rejected"),
    ("busy", "rejected"),
    ("no_answer", "no_answer"),
    ("missed", "no_answer"),
    ("timeout", "no_answer"),
    ("network_error", "network_error"),
    ("server_shutdown", "network_error"),
    ("failed", "network_error"),
    ("cancelled", "cancelled"),
    ("answered_elsewhere", "cancelled"),
];

/// What an end reason seed 002 does not list becomes.
pub(crate) const ASTROLOGY_OTHER_END_REASON: &str = "completed";

/// Seed 002's call statuses (`initiated|ringing|answered|ongoing|ended|rejected|missed|failed`)
/// for the canonical ones it lacks: a busy callee rejected the call; a call the caller gave up
/// on before an answer ended (with `endReason: cancelled`).
pub(crate) const ASTROLOGY_CALL_STATUSES: &[(&str, &str)] =
    &[("busy", "rejected"), ("cancelled", "ended")];

/// Seed 002's message types are `text|image|audio|file|system`: the call logs Switchboard posts
/// when a call ends are `system` messages to it.
pub(crate) const ASTROLOGY_MESSAGE_TYPES: &[(&str, &str)] =
    &[("voice_call", "system"), ("video_call", "system")];

const ASTROLOGY_CALL_TYPE: Src = Src::Map {
    field: "callType",
    table: ASTROLOGY_CALL_TYPES,
    other: None,
};

const ASTROLOGY_END_REASON: Src = Src::Map {
    field: "reason",
    table: ASTROLOGY_END_REASONS,
    other: Some(ASTROLOGY_OTHER_END_REASON),
};

/// Seed 002's DirectMessage as its app parses it from a new message: `_id`, `messageType`,
/// `status` (`sent`: nobody has received it yet), `readAt`/`deliveredAt` (null), `isDeleted`,
/// `deletedBy` (users it is hidden from: none) and `updatedAt`. `senderType`, `recipientId` and
/// `recipientType` are canonical fields already.
const ASTROLOGY_MESSAGE: &[(&str, Src)] = &[
    ("_id", Src::Field("id")),
    (
        "messageType",
        Src::Map {
            field: "type",
            table: ASTROLOGY_MESSAGE_TYPES,
            other: None,
        },
    ),
    ("status", Src::Str("sent")),
    ("readAt", Src::Null),
    ("deliveredAt", Src::Null),
    ("isDeleted", Src::Field("deleted")),
    ("deletedBy", Src::EmptyList),
    ("updatedAt", Src::Field("createdAt")),
];

/// `call:initiated` / `call:incoming` carry an Agora token valid for uid 0: the app signs and
/// joins with uid 0 and is never told another uid.
const ASTROLOGY_AGORA: [(&str, Src); 2] = [
    ("agoraToken", Src::Field("agoraAnyUidToken")),
    ("agoraUid", Src::Zero),
];

/// Seed 002 (astrology app): `dm:*` conversations and Agora calls.
pub(crate) static ASTROLOGY: Dialect = Dialect {
    name: "astrology",
    aliases: &["seed002", "002"],
    inbound: &[
        In {
            reply: &[emit("dm:joined", &[])],
            error_event: DM_ERROR,
            hook: Hook::JoinRoom,
            ..inbound("dm:join_conversation", "conversation:join")
        },
        // Leaving a room stops its events on this socket, as `socket.leave` did.
        In {
            error_event: DM_ERROR,
            hook: Hook::LeaveRoom,
            ..inbound("dm:leave_conversation", "conversation:leave")
        },
        In {
            reply: &[emit("dm:message_received", ASTROLOGY_MESSAGE)],
            error_event: DM_ERROR,
            ..inbound("dm:send_message", "message:send")
        },
        In {
            error_event: DM_ERROR,
            ..inbound("dm:typing_start", "typing:start")
        },
        In {
            error_event: DM_ERROR,
            ..inbound("dm:typing_stop", "typing:stop")
        },
        // A mark that moves nothing (the messages were read already) announces nothing.
        In {
            reply: &[emit_if(
                "messageIds",
                "dm:messages_read",
                &[("readBy", Src::Field("userId"))],
            )],
            error_event: DM_ERROR,
            ..inbound("dm:mark_read", "receipt:read")
        },
        In {
            defaults: &[("provider", "auto")],
            reply: &[emit(
                "call:initiated",
                &[
                    ASTROLOGY_AGORA[0],
                    ASTROLOGY_AGORA[1],
                    ("callType", ASTROLOGY_CALL_TYPE),
                ],
            )],
            error_event: CALL_ERROR,
            ..inbound("call:initiate", "call:initiate")
        },
        In {
            error_event: CALL_ERROR,
            ..inbound("call:accept", "call:accept")
        },
        In {
            error_event: CALL_ERROR,
            ..inbound("call:reject", "call:reject")
        },
        In {
            error_event: CALL_ERROR,
            ..inbound("call:end", "call:end")
        },
    ],
    // `dm:send_message{messageType}`, `call:initiate{calleeId, callType: voice|video}` (its
    // `calleeId` is in [`SHARED_FIELDS`]); it names the other party `recipientId` too.
    fields: &[
        Fields {
            commands: &["message:send"],
            fields: &[name("messageType", "type")],
        },
        Fields {
            commands: &["call:initiate"],
            fields: &[
                name("recipientId", "to"),
                Field {
                    from: "callType",
                    to: "callType",
                    value: Conv::Map(ASTROLOGY_CALL_TYPES),
                },
            ],
        },
    ],
    outbound: &[
        out(
            "message:new",
            &[emit("dm:message_received", ASTROLOGY_MESSAGE)],
        ),
        out("typing:start", &[emit("dm:typing_start", &[])]),
        out("typing:stop", &[emit("dm:typing_stop", &[])]),
        // Read receipts always name the messages read (the engine resolves cursors to ids).
        out(
            "receipt:read",
            &[emit(
                "dm:messages_read",
                &[("readBy", Src::Field("userId"))],
            )],
        ),
        out(
            "call:incoming",
            &[emit(
                "call:incoming",
                &[
                    ("callerId", Src::Field("from")),
                    ("callerType", Src::Field("fromType")),
                    ("callerName", Src::Field("fromName")),
                    // Phone numbers are not handed to call peers.
                    ("callerPhone", Src::Null),
                    ("callerAvatar", Src::Field("fromAvatar")),
                    ("callType", ASTROLOGY_CALL_TYPE),
                    ASTROLOGY_AGORA[0],
                    ASTROLOGY_AGORA[1],
                ],
            )],
        ),
        out(
            "call:rejected",
            &[emit(
                "call:rejected",
                &[("endReason", Src::Str("rejected"))],
            )],
        ),
        out(
            "call:busy",
            &[emit(
                "call:rejected",
                &[
                    ("reason", Src::Str("busy")),
                    ("endReason", Src::Str("rejected")),
                ],
            )],
        ),
        out(
            "call:ended",
            &[emit(
                "call:ended",
                &[
                    ("reason", ASTROLOGY_END_REASON),
                    ("endReason", ASTROLOGY_END_REASON),
                ],
            )],
        ),
        out(
            "call:missed",
            &[emit(
                "call:missed",
                &[
                    ("reason", Src::Str("no_answer")),
                    ("endReason", Src::Str("no_answer")),
                ],
            )],
        ),
        out(
            "call:cancelled",
            &[emit(
                "call:ended",
                &[
                    ("duration", Src::Zero),
                    ("reason", Src::Str("cancelled")),
                    ("endReason", Src::Str("cancelled")),
                ],
            )],
        ),
        out(
            "call:answered_elsewhere",
            &[emit(
                "call:ended",
                &[
                    ("duration", Src::Zero),
                    ("reason", Src::Str("cancelled")),
                    ("endReason", Src::Str("cancelled")),
                ],
            )],
        ),
    ],
    media: Media::AGORA,
};

/// Every conversation-scoped command, for seed 003's `conversation`.
const CONVERSATION_COMMANDS: &[&str] = &[
    "conversation:join",
    "conversation:leave",
    "message:send",
    "typing:start",
    "typing:stop",
    "receipt:delivered",
    "receipt:read",
    "call:initiate",
];

/// Every command naming a call.
const CALL_COMMANDS: &[&str] = &[
    "call:accept",
    "call:reject",
    "call:end",
    "call:rejoin",
    "call:offer",
    "call:answer",
    "call:ice",
];

/// The field aliases every connection may use, the canonical protocol's included (the
/// specification's "accepted everywhere", which Backend2 (seed 003) brought for its two apps):
/// `conversation` for `conversationId`, `text` for `content`, `participants|members` for
/// `memberIds`, and for calls `toId|calleeId|userId|targetUserId` for `to` and `roomName` for
/// `callId`. (`from|sender` name the sender, which is the token's user: they are ignored.)
pub(crate) static SHARED_FIELDS: &[Fields] = &[
    Fields {
        commands: CONVERSATION_COMMANDS,
        fields: &[name("conversation", "conversationId")],
    },
    Fields {
        commands: &["message:send", "message:edit"],
        fields: &[name("text", "content")],
    },
    Fields {
        commands: &["call:initiate"],
        fields: &[
            name("toId", "to"),
            name("calleeId", "to"),
            name("userId", "to"),
            name("targetUserId", "to"),
            name("participants", "memberIds"),
            name("members", "memberIds"),
            name("roomName", "callId"),
        ],
    },
    Fields {
        commands: CALL_COMMANDS,
        fields: &[name("roomName", "callId")],
    },
    // A relay's `userId` is its sender (dropped), not its recipient.
    Fields {
        commands: &["call:offer", "call:answer", "call:ice"],
        fields: &[name("toId", "to"), name("targetUserId", "to")],
    },
];

/// Backend2's call fields: `call:invite{to, isVideo, offer}`, `call:answer{callId, answer}`.
const BACKEND2_FIELDS: &[Fields] = &[
    Fields {
        commands: &["call:initiate"],
        fields: &[
            Field {
                from: "isVideo",
                to: "callType",
                value: Conv::VideoFlag,
            },
            name("offer", "sdpOffer"),
        ],
    },
    Fields {
        commands: &["call:accept"],
        fields: &[name("answer", "sdpAnswer")],
    },
];

/// Seed 003 (Backend2): short message events, time cursors, `call:invite|answer|candidate|hangup`.
pub(crate) static BACKEND2: Dialect = Dialect {
    name: "backend2",
    aliases: &["seed003", "003"],
    inbound: &[
        inbound("message", "message:send"),
        inbound("typing", "typing:start"),
        inbound("typing-stopped", "typing:stop"),
        In {
            rename: &[("deliveredUpTo", "upToTime")],
            ..inbound("delivered", "receipt:delivered")
        },
        In {
            rename: &[("readUpTo", "upToTime")],
            ..inbound("read_up_to", "receipt:read")
        },
        // A call that cannot start hangs up with the reason, as a busy callee does.
        In {
            error_event: Some("call:hangup"),
            error_set: &[("reason", Src::Field("code"))],
            ..inbound("call:invite", "call:initiate")
        },
        inbound("call:answer", "call:accept"),
        inbound("call:candidate", "call:ice"),
        inbound("call:hangup", "call:end"),
    ],
    fields: BACKEND2_FIELDS,
    outbound: &[
        out("message:new", &[emit("message", BACKEND2_MESSAGE)]),
        out(
            "message:edited",
            &[emit("message_edited", BACKEND2_MESSAGE)],
        ),
        out(
            "message:deleted",
            &[emit("message_deleted", BACKEND2_MESSAGE)],
        ),
        out(
            "receipt:delivered",
            &[emit("delivered", &[("deliveredUpTo", Src::Field("at"))])],
        ),
        out(
            "receipt:read",
            &[emit("read_up_to", &[("readUpTo", Src::Field("at"))])],
        ),
        out("typing:start", &[emit("typing", &[])]),
        out("typing:stop", &[emit("typing-stopped", &[])]),
        out(
            "presence",
            &[
                emit("presence", &[]),
                emit("user-status-changed", &[("status", Src::OnlineStatus)]),
            ],
        ),
        out(
            "call:incoming",
            &[emit(
                "call:invite",
                &[
                    ("isVideo", Src::IsVideo),
                    ("sdp", Src::Field("sdpOffer")),
                    ("offer", Src::Field("sdpOffer")),
                ],
            )],
        ),
        out(
            "call:accepted",
            &[emit_if(
                "sdpAnswer",
                "call:answer",
                &[
                    ("sdp", Src::Field("sdpAnswer")),
                    ("answer", Src::Field("sdpAnswer")),
                ],
            )],
        ),
        out(
            "call:answer",
            &[emit("call:answer", &[("answer", Src::Field("sdp"))])],
        ),
        out(
            "call:offer",
            &[emit("call:offer", &[("offer", Src::Field("sdp"))])],
        ),
        // Backend1's app hands `candidate` to `RTCIceCandidate` as an object, whatever shape
        // the other party's app sent.
        out("call:ice", &[emit("call:candidate", ICE_INIT)]),
        out("call:ended", &[emit("call:hangup", &[])]),
        out(
            "call:rejected",
            &[emit("call:hangup", &[("reason", Src::Str("rejected"))])],
        ),
        out(
            "call:busy",
            &[emit("call:hangup", &[("reason", Src::Str("busy"))])],
        ),
        out(
            "call:missed",
            &[emit("call:hangup", &[("reason", Src::Str("missed"))])],
        ),
        out(
            "call:cancelled",
            &[emit("call:hangup", &[("reason", Src::Str("cancelled"))])],
        ),
        out(
            "call:answered_elsewhere",
            &[emit(
                "call:hangup",
                &[("reason", Src::Str("answered_elsewhere"))],
            )],
        ),
    ],
    media: Media::WEBRTC,
};

const HANGUP: &[Emit] = &[emit("call:hangup", &[])];

/// An ICE candidate as an `RTCIceCandidateInit` object under `candidate` (what a browser's
/// `onicecandidate` hands over and `addIceCandidate` takes, and what seeds 003 and 004 send),
/// whatever shape the other party's app sent it in.
const ICE_INIT: &[(&str, Src)] = &[("candidate", Src::Object(&FLAT_ICE))];

/// Seed 004 (AIST, plain `/ws`): one unnamed call at a time per connection. `fromUserId` has the
/// JSON type of the `userId` claim of the app's tokens (the legacy server echoed that claim).
pub(crate) static AIST: Dialect = Dialect {
    name: "aist",
    aliases: &["seed004", "004"],
    inbound: &[
        // An offer that cannot start a call (unknown user, not allowed) hangs it up: the app
        // has no other event for a call that is over.
        In {
            hook: Hook::OfferOrStart,
            error_event: Some("call:hangup"),
            error_set: &[("reason", Src::Field("code"))],
            ..inbound("call:offer", "call:initiate")
        },
        In {
            hook: Hook::AnswerOrAccept,
            ..inbound("call:answer", "call:accept")
        },
        In {
            hook: Hook::CurrentCall,
            ..inbound("call:ice", "call:ice")
        },
        In {
            hook: Hook::HangUpCurrent,
            ..inbound("call:hangup", "call:end")
        },
    ],
    // `call:offer{sdp, userId|targetUserId}` starts a call, `call:answer{sdp}` accepts one
    // (`userId|targetUserId` are in [`SHARED_FIELDS`]); as relays within a call, `sdp` stays as
    // it is.
    fields: &[
        Fields {
            commands: &["call:initiate"],
            fields: &[name("sdp", "sdpOffer")],
        },
        Fields {
            commands: &["call:accept"],
            fields: &[name("sdp", "sdpAnswer")],
        },
    ],
    outbound: &[
        Out {
            hook: Hook::TrackIncoming,
            ..out(
                "call:incoming",
                &[emit(
                    "call:offer",
                    &[
                        ("sdp", Src::Field("sdpOffer")),
                        ("fromUserId", Src::UserId("from")),
                    ],
                )],
            )
        },
        out(
            "call:accepted",
            &[emit_if(
                "sdpAnswer",
                "call:answer",
                &[
                    ("sdp", Src::Field("sdpAnswer")),
                    ("fromUserId", Src::UserId("by")),
                ],
            )],
        ),
        out(
            "call:offer",
            &[emit("call:offer", &[("fromUserId", Src::UserId("from"))])],
        ),
        out(
            "call:answer",
            &[emit("call:answer", &[("fromUserId", Src::UserId("from"))])],
        ),
        out(
            "call:ice",
            &[emit(
                "call:ice",
                &[
                    ("candidate", Src::Object(&FLAT_ICE)),
                    ("fromUserId", Src::UserId("from")),
                ],
            )],
        ),
        Out {
            hook: Hook::TrackEnd,
            ..out("call:ended", HANGUP)
        },
        Out {
            hook: Hook::TrackEnd,
            ..out("call:rejected", HANGUP)
        },
        Out {
            hook: Hook::TrackEnd,
            ..out("call:busy", HANGUP)
        },
        Out {
            hook: Hook::TrackEnd,
            ..out("call:missed", HANGUP)
        },
        Out {
            hook: Hook::TrackEnd,
            ..out("call:cancelled", HANGUP)
        },
        Out {
            hook: Hook::TrackEnd,
            ..out("call:answered_elsewhere", HANGUP)
        },
    ],
    media: Media::WEBRTC,
};

/// Number of dialects, the canonical one included.
pub(crate) const DIALECT_COUNT: usize = 6;

/// Every dialect, the canonical one first.
pub static ALL: [&Dialect; DIALECT_COUNT] = [
    &CANONICAL,
    &LONESTAR,
    &WORLDMATES,
    &ASTROLOGY,
    &BACKEND2,
    &AIST,
];

impl Dialect {
    /// Looks a dialect up by name or alias (case-insensitive).
    pub fn find(name: &str) -> Option<&'static Dialect> {
        let name = name.trim();
        ALL.iter().copied().find(|d| {
            d.name.eq_ignore_ascii_case(name)
                || d.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// Whether a client of this dialect can come back to a call from a new connection. One
    /// whose client never names its call (seed 004 hangs up "the current call") keeps that call
    /// per connection: a new connection starts with none, so a dropped one left it for good.
    pub(crate) fn rejoins_calls(&self) -> bool {
        !self.inbound.iter().any(|r| r.hook == Hook::HangUpCurrent)
    }

    /// The dialect named by a client (`?dialect=` or the auth payload); an unknown name is an
    /// error rather than a silent fallback, so a misconfigured app fails loudly.
    pub(crate) fn choose(
        requested: Option<&str>,
        default: &'static Dialect,
    ) -> AppResult<&'static Dialect> {
        match requested.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(name) => Self::find(name).ok_or_else(|| AppError::BadRequest {
                code: ErrorCode::UnknownDialect,
                message: format!(
                    "unknown dialect `{}`; known: {}",
                    name.chars().take(32).collect::<String>(),
                    ALL.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
                )
                .into(),
            }),
        }
    }

    /// The dialect a connection asked for, or its listener's (see `LISTEN`) when it named none.
    pub(crate) fn for_connection(
        requested: Option<&str>,
        listener_default: &'static Dialect,
    ) -> AppResult<&'static Dialect> {
        Self::choose(requested, listener_default)
    }

    /// The dialect's position in [`ALL`] (its slot in an event's translation cache).
    pub(crate) fn index(&'static self) -> usize {
        ALL.iter().position(|d| std::ptr::eq(*d, self)).unwrap_or(0)
    }

    /// Renames the field names this dialect's app uses in a payload of `command`, and the
    /// names every connection may use ([`SHARED_FIELDS`]), to the canonical ones.
    pub(crate) fn canonical_fields(&self, command: &str, obj: &mut Map<String, Value>) {
        canonical_fields(SHARED_FIELDS, command, obj);
        canonical_fields(self.fields, command, obj);
    }

    fn rule_in(&'static self, event: &str) -> Option<&'static In> {
        self.inbound.iter().find(|r| r.event == event)
    }

    fn rule_out(&'static self, event: &str) -> Option<&'static Out> {
        self.outbound.iter().find(|r| r.event == event)
    }

    /// Whether some rule emits a [`Src::UserId`] (the translation then depends on the
    /// connection's token).
    fn types_ids_like_token(&self) -> bool {
        let in_set = |set: &[(&str, Src)]| set.iter().any(|(_, src)| uses_token_ids(src));
        self.outbound
            .iter()
            .flat_map(|r| r.emit.iter())
            .any(|e| in_set(e.set))
            || self
                .inbound
                .iter()
                .any(|r| r.reply.iter().any(|e| in_set(e.set)) || in_set(r.error_set))
    }
}

/// The call a connection of a call-id-less dialect is in.
#[derive(Debug, Default)]
struct CurrentCall {
    id: Option<String>,
    /// It rings on this connection and was not accepted here yet.
    ringing_here: bool,
    /// A call this connection hung up: its end is not announced back to it (the seed told
    /// only the other party, and an app that dialled again at once would take the late echo
    /// for the end of its new call).
    ended_here: Option<String>,
    /// The last call seen ending on this connection: a call whose start is acknowledged after
    /// it already ended (declined at once) does not become the current call.
    last_ended: Option<String>,
}

/// Most conversations one connection may have left (beyond it the oldest is forgotten, so its
/// events reach the connection again).
pub(crate) const MAX_LEFT_ROOMS: usize = 256;

/// One connection's translator: its dialect, the JSON type its token gave the user id (for
/// [`Src::UserId`]), for seed 004 its current call, and the conversations it left.
#[derive(Debug)]
pub struct Translator {
    dialect: &'static Dialect,
    current: Mutex<CurrentCall>,
    /// The dialect's tables type ids like the connection's token ([`Src::UserId`]).
    token_typed: bool,
    /// The connection's token carried its subject as a number.
    numeric_ids: AtomicBool,
    /// Conversation ids (as in event payloads) whose events this connection no longer wants.
    left: Mutex<std::collections::VecDeque<String>>,
    /// Whether the dialect can leave conversations at all (else `left` is never looked at).
    rooms: bool,
    /// For the apps of a legacy backend whose data may have been imported: the legacy ids they
    /// send and are shown.
    legacy: Option<(LegacyIds, Source)>,
}

fn conversation_of(payload: &Value) -> Option<String> {
    match payload.get("conversationId")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn no_call() -> AppError {
    AppError::bad_request(
        ErrorCode::NoCall,
        "there is no call in progress on this connection",
    )
}

fn call_id_of(payload: &Value) -> Option<&str> {
    payload.get("callId").and_then(Value::as_str)
}

/// `v` as a JSON number when it is a string of digits (arrays element by element).
fn to_number(v: &Value) -> Value {
    match v {
        Value::String(s) => s
            .parse::<i64>()
            .map_or_else(|_| v.clone(), |n| Value::Number(n.into())),
        Value::Array(items) => Value::Array(items.iter().map(to_number).collect()),
        other => other.clone(),
    }
}

/// `v` as a string when it is a number (arrays element by element).
fn to_string_id(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(to_string_id).collect()),
        other => other.clone(),
    }
}

/// The value one source gives for a canonical payload (`None`: the field is not set).
/// `numeric_ids` says how [`Src::UserId`] types ids for this connection.
fn value_of(base: &Value, src: &Src, numeric_ids: bool) -> Option<Value> {
    let present = |f: &str| base.get(f).filter(|v| !v.is_null());
    match src {
        Src::Field(f) => present(f).cloned(),
        Src::Number(f) => present(f).map(to_number),
        Src::UserId(f) if numeric_ids => present(f).map(to_number),
        Src::UserId(f) => present(f).map(to_string_id),
        Src::Flat(container, f) => base
            .get(*container)
            .filter(|c| c.is_object())
            .and_then(|c| c.get(*f))
            .filter(|v| !v.is_null())
            .or_else(|| present(f))
            .cloned(),
        Src::Object(fields) => {
            let obj: Map<String, Value> = fields
                .iter()
                .filter_map(|(name, src)| {
                    value_of(base, src, numeric_ids).map(|v| ((*name).to_owned(), v))
                })
                .collect();
            (!obj.is_empty()).then_some(Value::Object(obj))
        }
        Src::IsVideo => Some(json!(
            base.get("callType").and_then(Value::as_str) == Some("video")
        )),
        Src::OnlineStatus => Some(json!(
            if base.get("online").and_then(Value::as_bool) == Some(true) {
                "online"
            } else {
                "offline"
            }
        )),
        Src::Str(s) => Some(json!(s)),
        Src::Zero => Some(json!(0)),
        Src::Null => Some(Value::Null),
        Src::EmptyList => Some(json!([])),
        Src::Map {
            field,
            table,
            other,
        } => base.get(field).and_then(Value::as_str).map(|v| {
            let mapped = table
                .iter()
                .find(|(from, _)| v.eq_ignore_ascii_case(from))
                .map(|(_, to)| *to)
                .or(*other)
                .unwrap_or(v);
            json!(mapped)
        }),
    }
}

/// Whether a source depends on the connection's id type.
fn uses_token_ids(src: &Src) -> bool {
    match src {
        Src::UserId(_) => true,
        Src::Object(fields) => fields.iter().any(|(_, src)| uses_token_ids(src)),
        _ => false,
    }
}

/// A canonical payload plus a dialect's extra fields.
fn build(base: &Value, set: &[(&'static str, Src)], numeric_ids: bool) -> Value {
    let mut obj = match base {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other.clone());
            m
        }
    };
    for (name, src) in set {
        if let Some(v) = value_of(base, src, numeric_ids) {
            obj.insert((*name).to_owned(), v);
        }
    }
    Value::Object(obj)
}

impl Translator {
    /// A translator for one connection.
    pub fn new(dialect: &'static Dialect) -> Arc<Self> {
        Self::build(dialect, None)
    }

    /// A translator for one connection whose app, if its dialect is one of a legacy backend's,
    /// sends and is shown the legacy ids of imported things (see [`crate::legacy`]).
    pub(crate) fn with_legacy(dialect: &'static Dialect, legacy: &LegacyIds) -> Arc<Self> {
        let legacy = Source::of_dialect(dialect.name).map(|source| (legacy.clone(), source));
        Self::build(dialect, legacy)
    }

    fn build(dialect: &'static Dialect, legacy: Option<(LegacyIds, Source)>) -> Arc<Self> {
        Arc::new(Self {
            dialect,
            current: Mutex::new(CurrentCall::default()),
            token_typed: dialect.types_ids_like_token(),
            numeric_ids: AtomicBool::new(false),
            left: Mutex::new(std::collections::VecDeque::new()),
            rooms: dialect.inbound.iter().any(|r| r.hook == Hook::LeaveRoom),
            legacy,
        })
    }

    /// The legacy ids this connection's app uses, when there are any (`None` right away for
    /// other dialects and while nothing was imported).
    fn legacy_ids(&self) -> Option<(Arc<crate::legacy::Snapshot>, Source)> {
        match &self.legacy {
            Some((ids, source)) if !ids.is_empty() => Some((ids.snapshot(), *source)),
            _ => None,
        }
    }

    /// Whether payloads of this connection may name legacy message ids, to be looked up with
    /// [`crate::legacy::resolve_message_refs`] before the command runs.
    pub(crate) fn takes_legacy_messages(&self) -> bool {
        self.legacy.as_ref().is_some_and(|(ids, _)| !ids.is_empty())
    }

    /// A payload going to this connection's app, with imported things named by their legacy
    /// ids (`None`: nothing to change).
    fn shown(&self, payload: &Value, own: Option<Kind>) -> Option<Value> {
        let (snapshot, source) = self.legacy_ids()?;
        let mut shown = payload.clone();
        crate::legacy::show_outbound(snapshot.table(source), &mut shown, own).then_some(shown)
    }

    /// An event as this connection's app is shown it (the same event when nothing changes).
    fn shown_event(&self, event: Arc<ServerEvent>) -> Arc<ServerEvent> {
        let own = if event.name == "conversation:new" {
            Some(Kind::Conversation)
        } else if event.name.starts_with("chat_request:") {
            Some(Kind::ChatRequest)
        } else {
            None
        };
        match self.shown(event.payload(), own) {
            Some(payload) => event.derive(event.name.clone(), payload),
            None => event,
        }
    }

    /// Tells the translator the connection's token carried its user id as a JSON number, so
    /// [`Src::UserId`] fields leave as numbers. Set before the connection receives events.
    pub fn set_numeric_ids(&self, numeric: bool) {
        self.numeric_ids.store(numeric, Ordering::Relaxed);
    }

    /// Whether [`Src::UserId`] fields leave as numbers on this connection (only dialects whose
    /// tables use it tell the two apart).
    fn numeric_ids(&self) -> bool {
        self.token_typed && self.numeric_ids.load(Ordering::Relaxed)
    }

    /// This connection's slot in an event's translation cache: one per dialect and id type.
    fn slot(&self) -> usize {
        self.dialect.index() + if self.numeric_ids() { DIALECT_COUNT } else { 0 }
    }

    /// The media providers this connection's app can join.
    pub(crate) fn media(&self) -> Media {
        self.dialect.media
    }

    /// The dialect's name.
    pub(crate) fn name(&self) -> &'static str {
        self.dialect.name
    }

    /// Whether this is the canonical protocol (nothing to translate).
    pub(crate) fn is_canonical(&self) -> bool {
        std::ptr::eq(self.dialect, &CANONICAL)
    }

    /// Whether commands run one at a time in arrival order. Dialect clients were written against
    /// servers that handled each event before the next; canonical clients correlate replies by
    /// id and get concurrency.
    pub(crate) fn serial(&self) -> bool {
        !self.is_canonical()
    }

    fn current(&self) -> std::sync::MutexGuard<'_, CurrentCall> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn left(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<String>> {
        self.left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Conversations (as in event payloads) this connection left: dialect state a recovered
    /// Socket.IO session keeps.
    pub(crate) fn left_rooms(&self) -> Vec<String> {
        self.left().iter().cloned().collect()
    }

    /// Restores the conversations a recovered session had left.
    pub(crate) fn restore_left(&self, rooms: Vec<String>) {
        if self.rooms {
            self.left().extend(rooms.into_iter().take(MAX_LEFT_ROOMS));
        }
    }

    /// Whether this connection left the conversation an event belongs to.
    fn muted(&self, event: &ServerEvent) -> bool {
        if !self.rooms || event.name.starts_with("call:") {
            return false;
        }
        let left = self.left();
        !left.is_empty()
            && conversation_of(event.payload()).is_some_and(|c| left.iter().any(|l| *l == c))
    }

    /// Translates an inbound frame into a canonical one. Events the dialect does not define
    /// pass through as canonical events.
    pub fn inbound(&self, mut frame: ClientFrame) -> Result<ClientFrame, AppError> {
        if let Some((snapshot, source)) = self.legacy_ids() {
            crate::legacy::resolve_inbound(snapshot.table(source), &mut frame.payload);
        }
        let Some(rule) = self.dialect.rule_in(&frame.event) else {
            if let Some(obj) = frame.payload.as_object_mut() {
                self.dialect.canonical_fields(&frame.event, obj);
            }
            return Ok(frame);
        };
        let mut payload = match frame.payload {
            Value::Null => Value::Object(Map::new()),
            other => other,
        };
        if let Some(obj) = payload.as_object_mut() {
            for (from, to) in rule.rename {
                if !obj.contains_key(*to) {
                    if let Some(v) = obj.remove(*from) {
                        obj.insert((*to).to_owned(), v);
                    }
                }
            }
            for (field, value) in rule.defaults {
                obj.entry(*field).or_insert_with(|| json!(value));
            }
        }
        let mut command = rule.command;
        if matches!(
            rule.hook,
            Hook::OfferOrStart | Hook::AnswerOrAccept | Hook::CurrentCall | Hook::HangUpCurrent
        ) {
            let mut current = self.current();
            let id = current.id.clone();
            if rule.hook == Hook::HangUpCurrent && id.is_some() {
                current.ended_here.clone_from(&id);
            }
            command = match (rule.hook, id) {
                (Hook::OfferOrStart, None) => "call:initiate",
                (Hook::OfferOrStart, Some(_)) => "call:offer",
                (Hook::AnswerOrAccept, Some(_)) if current.ringing_here => "call:accept",
                (Hook::AnswerOrAccept, Some(_)) => "call:answer",
                (Hook::HangUpCurrent, Some(_)) => "call:end",
                // Hanging up when nothing is in progress (the peer hung up first) is a no-op.
                (Hook::HangUpCurrent, None) => "ping",
                (_, None) => return Err(no_call()),
                (_, Some(_)) => rule.command,
            };
            if command != "call:initiate" {
                if let (Some(obj), Some(id)) = (payload.as_object_mut(), &current.id) {
                    obj.insert("callId".into(), json!(id));
                }
            }
        }
        if let Some(obj) = payload.as_object_mut() {
            self.dialect.canonical_fields(command, obj);
        }
        Ok(ClientFrame {
            event: command.to_owned(),
            payload,
            reply_to: frame.reply_to,
        })
    }

    /// Translates a canonical event into what this dialect emits (possibly several events, or
    /// none).
    pub fn outbound(&self, event: &Arc<ServerEvent>) -> Arc<[Arc<ServerEvent>]> {
        if self.muted(event) {
            return Arc::from([]);
        }
        let Some(rule) = self.dialect.rule_out(&event.name) else {
            return event.translated(self.slot(), || vec![self.shown_event(Arc::clone(event))]);
        };
        // Per-connection state moves here; the translation itself is the same for every
        // connection of the dialect, so it is built once per event and shared.
        match rule.hook {
            Hook::TrackIncoming => {
                let mut current = self.current();
                if current.id.is_none() {
                    current.id = call_id_of(event.payload()).map(str::to_owned);
                    current.ringing_here = true;
                }
            }
            Hook::TrackEnd => {
                let mut current = self.current();
                let ended = call_id_of(event.payload());
                if current.id.as_deref() == ended {
                    current.id = None;
                    current.ringing_here = false;
                }
                if let Some(id) = ended {
                    current.last_ended = Some(id.to_owned());
                }
                if ended.is_some() && current.ended_here.as_deref() == ended {
                    current.ended_here = None;
                    return Arc::from([]);
                }
            }
            _ => {}
        }
        let numeric = self.numeric_ids();
        event.translated(self.slot(), || {
            rule.emit
                .iter()
                .filter(|e| {
                    e.when
                        .is_none_or(|f| event.payload().get(f).is_some_and(|v| !v.is_null()))
                })
                .map(|e| {
                    self.shown_event(event.derive(e.event, build(event.payload(), e.set, numeric)))
                })
                .collect()
        })
    }

    /// The outbound items answering a frame whose (dialect) event was `event`: the ack or error
    /// reply when the frame asked for one, the dialect's reply events on success, its error event
    /// on failure.
    pub fn reply(
        &self,
        event: &str,
        reply_to: Option<Value>,
        result: AppResult<Value>,
    ) -> Vec<Outbound> {
        let rule = self.dialect.rule_in(event);
        let mut items = Vec::new();
        match result {
            Ok(payload) => {
                if let Some(rule) = rule {
                    self.after_success(rule, &payload);
                    for e in rule.reply {
                        let built = build(&payload, e.set, self.numeric_ids());
                        let built = self.shown(&built, None).unwrap_or(built);
                        items.push(Outbound::Event(ServerEvent::new(e.event, built)));
                    }
                }
                if let Some(id) = reply_to {
                    let payload = self.shown(&payload, None).unwrap_or(payload);
                    items.insert(0, Outbound::ack(id, payload));
                }
            }
            Err(e) => {
                let reference = reply_to
                    .clone()
                    .or_else(|| Some(Value::String(event.to_owned())));
                let error = WireError::from_app(&e, reference);
                match rule.and_then(|r| r.error_event.map(|name| (name, r.error_set))) {
                    Some((name, set)) => {
                        let body = serde_json::to_value(&error).unwrap_or(Value::Null);
                        let body = if set.is_empty() {
                            body
                        } else {
                            build(&body, set, self.numeric_ids())
                        };
                        if reply_to.is_some() {
                            items.push(Outbound::error(reply_to, error));
                        }
                        items.push(Outbound::Event(ServerEvent::new(name, body)));
                    }
                    None => items.push(Outbound::error(reply_to, error)),
                }
            }
        }
        items
    }

    fn after_success(&self, rule: &In, payload: &Value) {
        match rule.hook {
            Hook::LeaveRoom => {
                if let Some(c) = conversation_of(payload) {
                    let mut left = self.left();
                    if !left.contains(&c) {
                        if left.len() >= MAX_LEFT_ROOMS {
                            left.pop_front();
                        }
                        left.push_back(c);
                    }
                }
                return;
            }
            Hook::JoinRoom => {
                if let Some(c) = conversation_of(payload) {
                    self.left().retain(|l| *l != c);
                }
                return;
            }
            _ => {}
        }
        let mut current = self.current();
        match rule.hook {
            // A new call that rings is this connection's call from now on. A busy or glare
            // outcome is announced by events of its own.
            Hook::OfferOrStart
                if current.id.is_none()
                    && payload.get("status").and_then(Value::as_str) == Some("ringing")
                    && call_id_of(payload) != current.last_ended.as_deref() =>
            {
                current.id = call_id_of(payload).map(str::to_owned);
                current.ringing_here = false;
            }
            Hook::AnswerOrAccept => current.ringing_here = false,
            Hook::HangUpCurrent => {
                current.id = None;
                current.ringing_here = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::realtime::protocol::{Command, ReceiptCursor};

    fn frame(event: &str, payload: Value) -> ClientFrame {
        ClientFrame {
            event: event.into(),
            payload,
            reply_to: None,
        }
    }

    #[test]
    fn every_rule_targets_a_real_command_or_event_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for d in ALL {
            assert!(names.insert(d.name), "duplicate dialect {}", d.name);
            for a in d.aliases {
                assert!(names.insert(a), "duplicate alias {a}");
            }
            for rule in d.inbound {
                // Parsing an empty payload may fail on missing fields, never on the name.
                if let Err(e) = Command::parse(rule.command, json!({})) {
                    assert_ne!(e.code(), "unknown_event", "{}: {}", d.name, rule.event);
                }
                assert_eq!(
                    d.inbound.iter().filter(|r| r.event == rule.event).count(),
                    1,
                    "{}: {} twice",
                    d.name,
                    rule.event
                );
            }
            for rule in d.outbound {
                assert!(
                    crate::realtime::events::SENT.contains(&rule.event),
                    "{}: {} is not emitted by the engine",
                    d.name,
                    rule.event
                );
            }
        }
        assert_eq!(Dialect::find("SEED003").unwrap().name, "backend2");
        assert!(Dialect::choose(Some("nope"), &CANONICAL).is_err());
        assert_eq!(Dialect::choose(None, &AIST).unwrap().name, "aist");
    }

    #[test]
    fn sources_convert_ids_to_numbers_flatten_nested_values_and_follow_the_token_id_type() {
        let base = json!({
            "from": "7",
            "participants": ["1", "22", "x"],
            "callId": "room_1",
            "candidate": {"candidate": "cand", "sdpMid": "0", "sdpMLineIndex": 0},
        });
        let set: &[(&str, Src)] = &[
            ("fromId", Src::Number("from")),
            ("participants", Src::Number("participants")),
            ("roomName", Src::Number("callId")),
            ("candidate", Src::Flat("candidate", "candidate")),
            ("sdpMid", Src::Flat("candidate", "sdpMid")),
            ("sdpMLineIndex", Src::Flat("candidate", "sdpMLineIndex")),
            ("fromUserId", Src::UserId("from")),
            ("missing", Src::Number("nothing")),
        ];
        let out = build(&base, set, false);
        assert_eq!(out["fromId"], json!(7));
        assert_eq!(out["from"], json!("7"), "canonical fields stay");
        assert_eq!(out["participants"], json!([1, 22, "x"]));
        assert_eq!(out["roomName"], json!("room_1"));
        assert_eq!(out["candidate"], json!("cand"));
        assert_eq!(out["sdpMid"], json!("0"));
        assert_eq!(out["sdpMLineIndex"], json!(0));
        assert_eq!(out["fromUserId"], json!("7"));
        assert!(out.get("missing").is_none());
        assert_eq!(build(&base, set, true)["fromUserId"], json!(7));

        // A flat candidate stays flat; an object is built from either shape.
        let flat = json!({"candidate": "c2", "sdpMid": "1", "sdpMLineIndex": 1, "from": 9});
        const INIT: &[(&str, Src)] = &[
            ("candidate", Src::Flat("candidate", "candidate")),
            ("sdpMid", Src::Flat("candidate", "sdpMid")),
        ];
        let out = build(
            &flat,
            &[
                ("candidate", Src::Flat("candidate", "candidate")),
                ("init", Src::Object(INIT)),
                ("fromUserId", Src::UserId("from")),
                ("none", Src::Object(&[("x", Src::Field("absent"))])),
            ],
            false,
        );
        assert_eq!(out["candidate"], json!("c2"));
        assert_eq!(out["init"], json!({"candidate": "c2", "sdpMid": "1"}));
        assert_eq!(out["fromUserId"], json!("9"));
        assert!(out.get("none").is_none());
    }

    #[test]
    fn worldmates_gets_numeric_ids_on_call_events_it_does_not_rename() {
        let t = Translator::new(&WORLDMATES);
        for (event, field, value) in [
            ("call:participant_joined", "userId", json!("5")),
            ("call:participants", "participants", json!(["1", "5"])),
            ("call:rejoined", "participants", json!(["1", "5"])),
            ("presence", "userId", json!("5")),
        ] {
            let ev = ServerEvent::new(event, json!({"callId": "room_9", field: value}));
            let out = t.outbound(&ev);
            assert_eq!(out[0].name, event);
            assert_eq!(out[0].payload()[field], to_number(&value), "{event}");
        }
    }

    #[test]
    fn one_event_is_translated_once_per_id_type_for_connections_typing_ids_like_their_token() {
        let numeric = Translator::new(&AIST);
        numeric.set_numeric_ids(true);
        let string = Translator::new(&AIST);
        let ev = ServerEvent::new(
            "call:offer",
            json!({"callId": "k", "from": "7", "sdp": "o"}),
        );
        // Either order: the shared cache keeps one translation per id type.
        assert_eq!(string.outbound(&ev)[0].payload()["fromUserId"], json!("7"));
        assert_eq!(numeric.outbound(&ev)[0].payload()["fromUserId"], json!(7));
        assert_eq!(string.outbound(&ev)[0].payload()["fromUserId"], json!("7"));
        // Dialects that never type ids like the token ignore the flag.
        let wm = Translator::new(&WORLDMATES);
        wm.set_numeric_ids(true);
        let ice = ServerEvent::new(
            "call:ice",
            json!({"callId": "k", "from": "7", "candidate": "c"}),
        );
        assert_eq!(wm.slot(), WORLDMATES.index());
        assert_eq!(wm.outbound(&ice)[0].payload()["fromId"], json!(7));
    }

    #[test]
    fn time_cursors_are_renamed_before_parsing() {
        let t = Translator::new(&BACKEND2);
        let f = t
            .inbound(frame(
                "read_up_to",
                json!({"conversationId": "7", "readUpTo": "2026-01-02T03:04:05.678Z"}),
            ))
            .unwrap();
        assert_eq!(f.event, "receipt:read");
        let Command::Read(r) = Command::parse(&f.event, f.payload).unwrap() else {
            panic!("not a read receipt")
        };
        assert_eq!(r.conversation_id, 7);
        assert!(matches!(r.cursor, ReceiptCursor::Time(_)));
    }

    /// A frame of `dialect` as the canonical command it becomes.
    fn parsed(dialect: &'static Dialect, event: &str, payload: Value) -> Command {
        let f = Translator::new(dialect)
            .inbound(frame(event, payload))
            .unwrap();
        Command::parse(&f.event, f.payload).unwrap()
    }

    #[test]
    fn each_apps_field_names_become_canonical_fields() {
        // Seed 000: `start_call{to, isVideo, sdp}`.
        let Command::CallInitiate(c) = parsed(
            &LONESTAR,
            "start_call",
            json!({"to": "2", "isVideo": true, "sdp": "o"}),
        ) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.to, c.call_type.as_deref(), c.sdp_offer),
            (Some(2), Some("video"), Some(json!("o")))
        );
        let Command::CallInitiate(c) =
            parsed(&LONESTAR, "start_call", json!({"to": 2, "isVideo": false}))
        else {
            panic!("not a call")
        };
        assert_eq!(c.call_type.as_deref(), Some("audio"));
        let Command::CallAccept(r) =
            parsed(&LONESTAR, "accept_call", json!({"callId": "c", "sdp": "a"}))
        else {
            panic!("not an accept")
        };
        assert_eq!((r.call_id.as_str(), r.sdp_answer), ("c", Some(json!("a"))));
        // As a relay, seed 000's `sdp` is relayed as it is.
        let Command::CallSignal(_, s) =
            parsed(&LONESTAR, "sdp_offer", json!({"callId": "c", "sdp": "o2"}))
        else {
            panic!("not a relay")
        };
        assert_eq!(s.rest["sdp"], "o2");

        // Seed 001: `toId`, `roomName`, `groupId`.
        let Command::CallInitiate(c) = parsed(
            &WORLDMATES,
            "call:initiate",
            json!({"fromId": 1, "toId": 2, "callType": "video", "roomName": "room_1", "sdpOffer": "o"}),
        ) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.to, c.call_id.as_deref(), c.call_type.as_deref()),
            (Some(2), Some("room_1"), Some("video"))
        );
        let Command::CallInitiate(c) = parsed(
            &WORLDMATES,
            "group_call:initiate",
            json!({"groupId": 9, "roomName": "room_2", "memberIds": [2, 3]}),
        ) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.conversation_id, c.member_ids, c.call_id.as_deref()),
            (Some(9), Some(vec![2, 3]), Some("room_2"))
        );
        for (event, command) in [
            ("call:accept", "call:accept"),
            ("call:reject", "call:reject"),
            ("call:end", "call:end"),
            ("call:rejoin", "call:rejoin"),
        ] {
            let f = Translator::new(&WORLDMATES)
                .inbound(frame(
                    event,
                    json!({"roomName": "room_1", "sdpAnswer": "a"}),
                ))
                .unwrap();
            assert_eq!(
                (f.event.as_str(), &f.payload["callId"]),
                (command, &json!("room_1"))
            );
            assert!(Command::parse(&f.event, f.payload).is_ok(), "{event}");
        }
        let Command::CallSignal(_, s) = parsed(
            &WORLDMATES,
            "ice:candidate",
            json!({"roomName": "room_1", "toId": 3, "candidate": "c"}),
        ) else {
            panic!("not a relay")
        };
        assert_eq!((s.call_id.as_str(), s.to), ("room_1", Some(3)));
        assert!(!s.rest.contains_key("roomName") && s.rest["candidate"] == "c");

        // Seed 002: `messageType`, `calleeId`, `voice`.
        let Command::Send(d) = parsed(
            &ASTROLOGY,
            "dm:send_message",
            json!({"conversationId": "5", "recipientId": "7", "content": "hi", "messageType": "image"}),
        ) else {
            panic!("not a send")
        };
        assert_eq!(
            (d.kind.as_deref(), d.recipient_id, d.content.as_str()),
            (Some("image"), Some(7), "hi")
        );
        let Command::CallInitiate(c) = parsed(
            &ASTROLOGY,
            "call:initiate",
            json!({"calleeId": "4", "callType": "Voice"}),
        ) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.to, c.call_type.as_deref(), c.provider.as_deref()),
            (Some(4), Some("audio"), Some("auto"))
        );

        // Seed 003: `conversation`, `text`, `isVideo`, `offer`, `answer`.
        let Command::Send(d) = parsed(
            &BACKEND2,
            "message",
            json!({"conversation": "5", "text": "hi", "from": "9", "sender": "9"}),
        ) else {
            panic!("not a send")
        };
        assert_eq!((d.conversation_id, d.content.as_str()), (5, "hi"));
        let Command::SendDirect(d) = parsed(&BACKEND2, "message", json!({"to": "7", "text": "hi"}))
        else {
            panic!("not a direct send")
        };
        assert_eq!((d.to, &d.rest["content"]), (7, &json!("hi")));
        for event in ["typing", "typing-stopped"] {
            assert!(matches!(
                parsed(&BACKEND2, event, json!({"conversation": 5})),
                Command::TypingStart(r) | Command::TypingStop(r) if r.conversation_id == 5
            ));
        }
        let Command::Delivered(r) = parsed(
            &BACKEND2,
            "delivered",
            json!({"conversation": "5", "deliveredUpTo": "2026-01-02T03:04:05Z"}),
        ) else {
            panic!("not a receipt")
        };
        assert_eq!(r.conversation_id, 5);
        let Command::CallInitiate(c) = parsed(
            &BACKEND2,
            "call:invite",
            json!({"to": "2", "isVideo": true, "offer": "o"}),
        ) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.to, c.call_type.as_deref(), c.sdp_offer),
            (Some(2), Some("video"), Some(json!("o")))
        );
        let Command::CallInitiate(c) = parsed(
            &BACKEND2,
            "call:invite",
            json!({"conversation": "8", "participants": ["2", "3"]}),
        ) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.conversation_id, c.member_ids),
            (Some(8), Some(vec![2, 3]))
        );
        let Command::CallAccept(r) = parsed(
            &BACKEND2,
            "call:answer",
            json!({"callId": "c", "answer": "a"}),
        ) else {
            panic!("not an accept")
        };
        assert_eq!(r.sdp_answer, Some(json!("a")));
        let Command::Edit(e) = parsed(
            &BACKEND2,
            "message:edit",
            json!({"messageId": "3", "text": "new"}),
        ) else {
            panic!("not an edit")
        };
        assert_eq!(e.content, "new");

        // Seed 004: `call:offer{sdp, userId|targetUserId}` starts a call, `call:answer{sdp}`
        // accepts it.
        for target in ["userId", "targetUserId"] {
            let Command::CallInitiate(c) =
                parsed(&AIST, "call:offer", json!({"sdp": "o", target: 2}))
            else {
                panic!("not a call")
            };
            assert_eq!((c.to, c.sdp_offer), (Some(2), Some(json!("o"))));
        }
        let t = Translator::new(&AIST);
        t.outbound(&ServerEvent::new(
            "call:incoming",
            json!({"callId": "k", "from": "2", "sdpOffer": "o"}),
        ));
        let f = t
            .inbound(frame("call:answer", json!({"sdp": "a"})))
            .unwrap();
        let Command::CallAccept(r) = Command::parse(&f.event, f.payload).unwrap() else {
            panic!("not an accept")
        };
        assert_eq!((r.call_id.as_str(), r.sdp_answer), ("k", Some(json!("a"))));
        // Once accepted, an answer is a relay and keeps its `sdp`.
        t.reply("call:answer", None, Ok(json!({"callId": "k"})));
        let f = t
            .inbound(frame(
                "call:answer",
                json!({"sdp": "a2", "targetUserId": 2}),
            ))
            .unwrap();
        let Command::CallSignal(kind, s) = Command::parse(&f.event, f.payload).unwrap() else {
            panic!("not a relay")
        };
        assert_eq!(
            (kind, s.to, &s.rest["sdp"]),
            ("call:answer", Some(2), &json!("a2"))
        );
    }

    #[test]
    fn every_app_field_name_lands_on_a_canonical_name_and_the_canonical_one_wins() {
        let shared = Dialect {
            name: "shared",
            fields: SHARED_FIELDS,
            ..CANONICAL
        };
        for d in ALL.into_iter().chain([&shared]) {
            for table in d.fields {
                for command in table.commands {
                    assert!(
                        crate::realtime::events::RECEIVED.contains(command),
                        "{}: {command} is not a command",
                        d.name
                    );
                    for field in table.fields {
                        let mut obj = Map::new();
                        obj.insert(field.from.into(), json!("x"));
                        canonical_fields(d.fields, command, &mut obj);
                        assert!(obj.contains_key(field.to), "{}: {}", d.name, field.from);
                        if field.from != field.to {
                            assert!(!obj.contains_key(field.from), "{}: {}", d.name, field.from);
                        }
                    }
                }
            }
        }
        // The canonical name wins over an app's; a null canonical value does not count.
        let mut obj =
            json!({"conversationId": "1", "conversation": "2", "text": "t", "content": null});
        let map = obj.as_object_mut().unwrap();
        BACKEND2.canonical_fields("message:send", map);
        assert_eq!(
            obj,
            json!({"conversationId": "1", "conversation": "2", "content": "t"})
        );
        // Names are per command: `sdp` is an offer in a start and stays itself in a relay.
        let mut obj = json!({"sdp": "o"});
        AIST.canonical_fields("call:ice", obj.as_object_mut().unwrap());
        assert_eq!(obj, json!({"sdp": "o"}));
    }

    #[test]
    fn the_canonical_protocol_takes_the_shared_aliases_and_no_apps_own_names() {
        // The aliases accepted everywhere.
        assert!(matches!(
            parsed(&CANONICAL, "message:send", json!({"conversation": 5, "text": "hi"})),
            Command::Send(d) if d.conversation_id == 5 && d.content == "hi"
        ));
        assert!(matches!(
            parsed(&CANONICAL, "receipt:read", json!({"conversation": "5", "upTo": 3})),
            Command::Read(r) if r.conversation_id == 5
        ));
        assert!(matches!(
            parsed(&CANONICAL, "call:end", json!({"roomName": "r"})),
            Command::CallEnd(r) if r.call_id == "r"
        ));
        for callee in ["toId", "calleeId", "userId", "targetUserId"] {
            assert!(matches!(
                parsed(&CANONICAL, "call:initiate", json!({callee: "2"})),
                Command::CallInitiate(c) if c.to == Some(2)
            ));
        }
        // An app's own names are not canonical: optional ones are ignored, required ones
        // missing.
        let Command::CallInitiate(c) = parsed(
            &CANONICAL,
            "call:initiate",
            json!({"to": 2, "isVideo": true, "offer": "o", "sdp": "s", "groupId": 4, "callType": "voice"}),
        ) else {
            panic!("not a call")
        };
        assert_eq!((c.sdp_offer, c.conversation_id), (None, None));
        assert_eq!(
            c.call_type.as_deref(),
            Some("voice"),
            "left for the engine to refuse"
        );
        let Command::CallAccept(r) = parsed(
            &CANONICAL,
            "call:accept",
            json!({"callId": "c", "answer": "a", "sdp": "s"}),
        ) else {
            panic!("not an accept")
        };
        assert_eq!(r.sdp_answer, None);
        let Command::Send(d) = parsed(
            &CANONICAL,
            "message:send",
            json!({"conversationId": 5, "messageType": "image", "tempId": "t", "replyToId": 3}),
        ) else {
            panic!("not a send")
        };
        assert_eq!(
            (d.kind, d.client_message_id, d.reply_to),
            (None, None, None)
        );
        let f = Translator::new(&CANONICAL)
            .inbound(frame("message:edit", json!({"id": "3", "content": "x"})))
            .unwrap();
        assert_eq!(
            Command::parse(&f.event, f.payload).unwrap_err().code(),
            "invalid_payload"
        );
    }

    #[test]
    fn rest_bodies_take_every_apps_names() {
        let mut body = Map::new();
        body.insert("calleeId".into(), json!("4"));
        body.insert("callType".into(), json!("voice"));
        body.insert("roomName".into(), json!("r"));
        for_any_app("call:initiate", &mut body);
        assert_eq!(
            Value::Object(body),
            json!({"to": "4", "callType": "audio", "callId": "r"})
        );
        let mut body = Map::new();
        body.insert("text".into(), json!("hi"));
        body.insert("messageType".into(), json!("image"));
        for_any_app("message:send", &mut body);
        assert_eq!(
            Value::Object(body),
            json!({"content": "hi", "type": "image"})
        );
    }

    #[test]
    fn outbound_adds_fields_keeps_canonical_ones_and_may_fan_out_or_skip() {
        let t = Translator::new(&BACKEND2);
        let ev = ServerEvent::new("presence", json!({"userId": "3", "online": false}));
        let out = t.outbound(&ev);
        let names: Vec<&str> = out.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["presence", "user-status-changed"]);
        assert_eq!(out[1].payload()["status"], "offline");
        assert_eq!(out[1].payload()["userId"], "3");

        let t = Translator::new(&LONESTAR);
        let bare = ServerEvent::new("call:accepted", json!({"callId": "c", "by": "2"}));
        let names: Vec<String> = t
            .outbound(&bare)
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(names, ["call_accepted"]);
        let with_sdp = ServerEvent::new(
            "call:accepted",
            json!({"callId": "c", "by": "2", "sdpAnswer": {"sdp": "x"}}),
        );
        let out = t.outbound(&with_sdp);
        assert_eq!(out[0].payload()["userId"], "2");
        assert_eq!(out[1].name, "sdp_answer");
        assert_eq!(out[1].payload()["sdp"]["sdp"], "x");
        // Seed 000 reads candidates flat, whatever shape the sending app used.
        let nested = ServerEvent::new(
            "call:ice",
            json!({"callId": "c", "from": "2", "candidate": {"candidate": "c1", "sdpMid": "0", "sdpMLineIndex": 0}}),
        );
        let out = t.outbound(&nested);
        assert_eq!(out[0].name, "ice_candidate");
        assert_eq!(out[0].payload()["candidate"], "c1");
        assert_eq!(out[0].payload()["sdpMid"], "0");
        assert_eq!(out[0].payload()["sdpMLineIndex"], 0);

        // Unmapped events pass through untouched (the same shared event).
        let typing = ServerEvent::new("typing:start", json!({}));
        assert!(Arc::ptr_eq(&t.outbound(&typing)[0], &typing));
        // A message keeps its delivery mark through translation.
        let t = Translator::new(&ASTROLOGY);
        let m = ServerEvent::message(
            "message:new",
            &json!({"id": "9", "type": "text"}),
            4,
            2,
            None,
        );
        let out = t.outbound(&m);
        assert_eq!(out[0].name, "dm:message_received");
        assert_eq!(out[0].payload()["_id"], "9");
        assert_eq!(out[0].delivery, Some((4, 2)));
    }

    #[test]
    fn replies_become_dialect_events_and_errors_use_the_error_event() {
        let t = Translator::new(&ASTROLOGY);
        let items = t.reply(
            "dm:join_conversation",
            None,
            Ok(json!({"conversationId": "5"})),
        );
        assert!(matches!(&items[..], [Outbound::Event(e)] if e.name == "dm:joined"));
        let items = t.reply(
            "call:accept",
            Some(json!(3)),
            Err(AppError::NotFound("call not found".into())),
        );
        match &items[..] {
            [Outbound::Error(err), Outbound::Event(e)] => {
                assert_eq!(err.id, Some(json!(3)));
                assert_eq!(e.name, "call:error");
                assert_eq!(e.payload()["code"], "not_found");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without an error event and without an id: the canonical `error` event.
        let items = t.reply("ping", None, Err(AppError::validation("x")));
        assert!(matches!(&items[..], [Outbound::Error(e)] if e.id.is_none()));
    }

    #[test]
    fn mapped_values_nulls_and_lists_are_built() {
        let set = [
            (
                "kind",
                Src::Map {
                    field: "callType",
                    table: &[("audio", "voice")],
                    other: None,
                },
            ),
            (
                "why",
                Src::Map {
                    field: "reason",
                    table: &[("hangup", "completed")],
                    other: Some("completed"),
                },
            ),
            ("gone", Src::Null),
            ("by", Src::EmptyList),
        ];
        let v = build(
            &json!({"callType": "audio", "reason": "whatever"}),
            &set,
            false,
        );
        assert_eq!(v["kind"], "voice");
        assert_eq!(v["why"], "completed");
        assert!(v["gone"].is_null() && v.as_object().unwrap().contains_key("gone"));
        assert_eq!(v["by"], json!([]));
        // Unlisted values without `other` stay; an absent field sets nothing.
        let v = build(&json!({"callType": "video"}), &set, false);
        assert_eq!(v["kind"], "video");
        assert!(v.get("why").is_none());
    }

    #[test]
    fn astrology_speaks_only_its_own_call_vocabulary() {
        let seed = [
            "completed",
            "rejected",
            "no_answer",
            "network_error",
            "cancelled",
        ];
        assert!(seed.contains(&ASTROLOGY_OTHER_END_REASON));
        for (_, to) in ASTROLOGY_END_REASONS {
            assert!(seed.contains(to), "{to}");
        }
        // Every reason the engine gives a call names one of them explicitly.
        for reason in [
            "hangup",
            "cancelled",
            "no_answer",
            "network_error",
            "everyone_left",
            "admin",
            "server_shutdown",
            "rejected",
            "busy",
            "answered_elsewhere",
        ] {
            assert!(
                ASTROLOGY_END_REASONS
                    .iter()
                    .any(|(from, _)| *from == reason),
                "{reason}"
            );
        }
        let t = Translator::new(&ASTROLOGY);
        let ended = ServerEvent::new(
            "call:ended",
            json!({"callId": "c", "reason": "my own words", "duration": 5}),
        );
        let out = t.outbound(&ended);
        assert_eq!(out[0].payload()["endReason"], "completed");
        let ring = ServerEvent::new(
            "call:incoming",
            json!({"callId": "c", "from": "1", "callType": "audio", "agoraToken": "007bound", "agoraAnyUidToken": "007any"}),
        );
        let out = t.outbound(&ring);
        assert_eq!(out[0].payload()["callType"], "voice");
        assert_eq!(out[0].payload()["agoraToken"], "007any");
        assert_eq!(out[0].payload()["agoraUid"], 0);
        let log = ServerEvent::new("message:new", json!({"id": "1", "type": "video_call"}));
        assert_eq!(t.outbound(&log)[0].payload()["messageType"], "system");
    }

    #[test]
    fn each_app_joins_calls_through_the_providers_its_seed_uses() {
        assert_eq!(ASTROLOGY.media, Media::AGORA);
        for d in [&LONESTAR, &WORLDMATES, &BACKEND2, &AIST] {
            assert_eq!(d.media, Media::WEBRTC, "{}", d.name);
        }
        assert!(CANONICAL.media.allows("webrtc") && CANONICAL.media.allows("agora"));
        assert!(!Media::ANY.allows("sip"));
        assert_eq!(Media::AGORA.union(Media::WEBRTC), Media::ANY);
        assert_eq!(Media::AGORA.intersect(Media::WEBRTC), Media::default());
        assert_eq!(Media::ANY.intersect(Media::WEBRTC), Media::WEBRTC);
    }

    static ROOMS: Dialect = Dialect {
        name: "rooms",
        aliases: &[],
        fields: &[],
        inbound: &[
            In {
                hook: Hook::LeaveRoom,
                ..inbound("leave", "conversation:leave")
            },
            In {
                hook: Hook::JoinRoom,
                ..inbound("join", "conversation:join")
            },
        ],
        outbound: &[],
        media: Media::ANY,
    };

    #[test]
    fn a_left_conversation_is_muted_until_joined_again() {
        let t = Translator::new(&ROOMS);
        let msg = ServerEvent::new("message:new", json!({"conversationId": "5", "id": "1"}));
        let other = ServerEvent::new("message:new", json!({"conversationId": "6", "id": "2"}));
        let call = ServerEvent::new("call:incoming", json!({"conversationId": "5"}));
        assert_eq!(t.outbound(&msg).len(), 1);
        // A failed leave changes nothing.
        t.reply("leave", None, Err(AppError::NotFound("x".into())));
        assert_eq!(t.outbound(&msg).len(), 1);
        t.reply(
            "leave",
            None,
            Ok(json!({"conversationId": "5", "left": true})),
        );
        assert!(t.outbound(&msg).is_empty());
        assert_eq!(t.outbound(&other).len(), 1);
        assert_eq!(t.outbound(&call).len(), 1);
        t.reply("join", None, Ok(json!({"conversationId": "5"})));
        assert_eq!(t.outbound(&msg).len(), 1);
        // The list is bounded: the oldest left conversation is forgotten first.
        for c in 0..=MAX_LEFT_ROOMS {
            t.reply("leave", None, Ok(json!({"conversationId": c.to_string()})));
        }
        let first = ServerEvent::new("typing:start", json!({"conversationId": "0"}));
        let last = ServerEvent::new(
            "typing:start",
            json!({"conversationId": MAX_LEFT_ROOMS.to_string()}),
        );
        assert_eq!(t.outbound(&first).len(), 1);
        assert!(t.outbound(&last).is_empty());
    }

    #[test]
    fn seed004_follows_its_single_unnamed_call() {
        let t = Translator::new(&AIST);
        // Nothing in progress: an offer starts a call, ICE is refused, hangup is a no-op.
        let f = t
            .inbound(frame("call:offer", json!({"sdp": "o", "userId": 2})))
            .unwrap();
        assert_eq!(f.event, "call:initiate");
        assert_eq!(
            t.inbound(frame("call:ice", json!({"candidate": "c"})))
                .unwrap_err()
                .code(),
            "no_call"
        );
        assert_eq!(
            t.inbound(frame("call:hangup", Value::Null)).unwrap().event,
            "ping"
        );

        // A call rings here: the answer accepts it, with its id.
        let ring = ServerEvent::new(
            "call:incoming",
            json!({"callId": "k1", "from": "2", "sdpOffer": "o"}),
        );
        let out = t.outbound(&ring);
        assert_eq!(out[0].name, "call:offer");
        assert_eq!(out[0].payload()["fromUserId"], "2");
        assert_eq!(out[0].payload()["sdp"], "o");
        let f = t
            .inbound(frame("call:answer", json!({"sdp": "a"})))
            .unwrap();
        assert_eq!(
            (f.event.as_str(), f.payload["callId"].as_str()),
            ("call:accept", Some("k1"))
        );
        t.reply("call:answer", None, Ok(json!({"callId": "k1"})));
        // Once accepted, answers and offers are renegotiation relays of the same call.
        let f = t
            .inbound(frame("call:answer", json!({"sdp": "a2"})))
            .unwrap();
        assert_eq!(f.event, "call:answer");
        let f = t
            .inbound(frame("call:offer", json!({"sdp": "o2", "userId": 2})))
            .unwrap();
        assert_eq!(
            (f.event.as_str(), f.payload["callId"].as_str()),
            ("call:offer", Some("k1"))
        );
        // Another call's end does not touch it; its own end clears it.
        t.outbound(&ServerEvent::new("call:ended", json!({"callId": "other"})));
        assert_eq!(
            t.inbound(frame("call:ice", json!({}))).unwrap().payload["callId"],
            "k1"
        );
        let out = t.outbound(&ServerEvent::new("call:ended", json!({"callId": "k1"})));
        assert_eq!(out[0].name, "call:hangup");
        assert_eq!(
            t.inbound(frame("call:offer", json!({"sdp": "o", "userId": 2})))
                .unwrap()
                .event,
            "call:initiate"
        );

        // A call this connection started is current once it rings, not when it was busy.
        t.reply(
            "call:offer",
            None,
            Ok(json!({"callId": "b1", "status": "busy"})),
        );
        assert_eq!(
            t.inbound(frame("call:hangup", Value::Null)).unwrap().event,
            "ping"
        );
        t.reply(
            "call:offer",
            None,
            Ok(json!({"callId": "r1", "status": "ringing"})),
        );
        let f = t.inbound(frame("call:hangup", Value::Null)).unwrap();
        assert_eq!(
            (f.event.as_str(), f.payload["callId"].as_str()),
            ("call:end", Some("r1"))
        );
        // The hang-up's own end is not echoed back; the next end is.
        assert!(t
            .outbound(&ServerEvent::new("call:ended", json!({"callId": "r1"})))
            .is_empty());
        t.reply("call:hangup", None, Ok(json!({"callId": "r1"})));

        // A call declined before its start was acknowledged here does not become current:
        // the next offer starts a new call instead of renegotiating the ended one.
        let out = t.outbound(&ServerEvent::new("call:rejected", json!({"callId": "d1"})));
        assert_eq!(out[0].name, "call:hangup");
        t.reply(
            "call:offer",
            None,
            Ok(json!({"callId": "d1", "status": "ringing"})),
        );
        assert_eq!(
            t.inbound(frame("call:offer", json!({"sdp": "o", "userId": 2})))
                .unwrap()
                .event,
            "call:initiate"
        );
    }

    fn imported() -> LegacyIds {
        let row = |source: &str, legacy: &str, kind: &str, id: i64| crate::legacy::Row {
            source: source.into(),
            legacy_id: legacy.into(),
            kind: kind.into(),
            id,
            imported_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let ids = LegacyIds::new();
        ids.replace(crate::legacy::Snapshot::from_rows(vec![
            row("seed003", "64b000000000000000000001", "user", 3),
            row("seed003", "64b0000000000000000000c1", "conversation", 7),
            row("seed000", "64b000000000000000000001", "user", 3),
            row(
                "seed000",
                "dm_64b000000000000000000001_64b000000000000000000002",
                "conversation",
                8,
            ),
        ]));
        ids
    }

    #[test]
    fn legacy_ids_are_resolved_inbound_and_shown_outbound_per_source() {
        let ids = imported();
        let t = Translator::with_legacy(&BACKEND2, &ids);
        let f = t
            .inbound(frame(
                "message",
                json!({"conversation": "64b0000000000000000000c1", "text": "64b0000000000000000000c1"}),
            ))
            .unwrap();
        assert_eq!(f.payload["conversationId"], "7");
        assert_eq!(f.payload["content"], "64b0000000000000000000c1");
        // Canonical events passing through are resolved too.
        let f = t
            .inbound(frame(
                "typing:start",
                json!({"conversationId": "64b0000000000000000000c1"}),
            ))
            .unwrap();
        assert_eq!(f.payload["conversationId"], "7");

        let message = json!({"id": "90", "conversationId": "7", "senderId": "3", "seq": 1,
                             "content": "hi", "legacyId": "64b0000000000000000000f1"});
        let ev = ServerEvent::new("message:new", message.clone());
        let out = t.outbound(&ev);
        assert_eq!(out[0].name, "message");
        let p = &out[0].payload();
        assert_eq!(p["conversationId"], "64b0000000000000000000c1");
        assert_eq!(p["conversation"], "64b0000000000000000000c1");
        assert_eq!(p["senderId"], "64b000000000000000000001");
        assert_eq!(p["from"], "64b000000000000000000001");
        assert_eq!(p["sender"], "64b000000000000000000001");
        assert_eq!(p["id"], "64b0000000000000000000f1");
        assert_eq!(p["_id"], "64b0000000000000000000f1");
        // The canonical event is untouched, and an event without imported ids leaves as before.
        assert_eq!(ev.payload(), &message);
        let plain = ServerEvent::new("presence", json!({"userId": "4", "online": true}));
        let out = t.outbound(&plain);
        assert_eq!(out[0].payload(), &json!({"userId": "4", "online": true}));
        let passthrough = ServerEvent::new("conversation:member_removed", json!({"userId": "4"}));
        assert!(Arc::ptr_eq(&t.outbound(&passthrough)[0], &passthrough));
        // Acks carry legacy ids too.
        let items = t.reply("message", Some(json!(1)), Ok(message));
        let Outbound::Ack(ack) = &items[0] else {
            panic!("no ack")
        };
        assert_eq!(ack.payload["conversationId"], "64b0000000000000000000c1");

        // Seed 000: its own source, `dm_` chat ids and call events.
        let t = Translator::with_legacy(&LONESTAR, &ids);
        let f = t
            .inbound(frame(
                "message:send",
                json!({"conversationId": "dm_64b000000000000000000001_64b000000000000000000002"}),
            ))
            .unwrap();
        assert_eq!(f.payload["conversationId"], "8");
        let f = t
            .inbound(frame(
                "start_call",
                json!({"to": "64b000000000000000000001"}),
            ))
            .unwrap();
        assert_eq!(f.payload["to"], "3");
        let ev = ServerEvent::new("call:accepted", json!({"callId": "c", "by": "3"}));
        let out = t.outbound(&ev);
        assert_eq!(out[0].payload()["userId"], "64b000000000000000000001");
        assert_eq!(out[0].payload()["by"], "64b000000000000000000001");

        // Dialects without a source, and translators of an empty copy, change nothing.
        let t = Translator::with_legacy(&AIST, &ids);
        let f = t
            .inbound(frame(
                "call:offer",
                json!({"userId": "64b000000000000000000001"}),
            ))
            .unwrap();
        assert_eq!(f.payload["to"], "64b000000000000000000001");
        let t = Translator::with_legacy(&BACKEND2, &LegacyIds::new());
        assert!(!t.takes_legacy_messages());
        let ev = ServerEvent::new("message:new", json!({"id": "90", "conversationId": "7"}));
        assert_eq!(t.outbound(&ev)[0].payload()["conversationId"], "7");
    }
}
