//! Wire formats the bench speaks: Switchboard's JSON frames on `/ws`, and a minimal Socket.IO v5
//! client (Engine.IO v4 over a WebSocket, text packets only).
//!
//! Both are reduced to one [`Inbound`] vocabulary so the client loop does not care which target
//! it drives.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use switchboard::realtime::socketio::packet::{encode_raw, EioPacket, SioKind, SioPacket};

/// Which server the bench talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Switchboard's plain WebSocket endpoint (`/ws`).
    Ws,
    /// A Socket.IO v4 server (Engine.IO v4, websocket transport).
    Socketio,
}

impl Target {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Socketio => "socketio",
        }
    }
}

/// What a text frame from the server means to the bench.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Reply to request `id`; `durable` when it carries a committed message (Switchboard: a
    /// `seq`; Socket.IO peer: `ok: true`).
    Ack {
        /// The request id.
        id: u64,
        /// Whether the reply proves the message was stored.
        durable: bool,
    },
    /// A refusal, for request `id` when the server named one.
    Error {
        /// The request id, if any.
        id: Option<u64>,
        /// The error code.
        code: Cow<'a, str>,
    },
    /// A pushed `message:new`, with the `clientMessageId` it carries.
    MessageNew {
        /// The sender's `clientMessageId`.
        client_message_id: Option<Cow<'a, str>>,
    },
    /// Engine.IO handshake (`0{...}`).
    Open,
    /// Engine.IO ping (`2`); answer with [`EIO_PONG`].
    Ping,
    /// Socket.IO namespace connected (`40{...}`).
    Connected,
    /// Socket.IO namespace refused (`44{...}`), with the server's message.
    ConnectError(Cow<'a, str>),
    /// Engine.IO close or Socket.IO disconnect.
    Disconnect,
    /// Anything else (other events, noop, pong).
    Other,
}

/// Engine.IO pong packet, the answer to a ping.
pub const EIO_PONG: &str = "3";

// --- Switchboard /ws -------------------------------------------------------------------------

#[derive(Serialize)]
struct WsOut<'a, P> {
    event: &'a str,
    id: u64,
    payload: P,
}

#[derive(Deserialize)]
struct WsIn<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    payload: Option<WsPayload<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WsPayload<'a> {
    #[serde(default, borrow)]
    client_message_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<IgnoredAny>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

/// `{"event": E, "id": N, "payload": P}`.
pub fn ws_encode<P: Serialize>(event: &str, id: u64, payload: &P) -> Result<String, String> {
    serde_json::to_string(&WsOut { event, id, payload }).map_err(|e| e.to_string())
}

/// Reads one Switchboard frame.
pub fn ws_decode(text: &str) -> Result<Inbound<'_>, String> {
    let frame: WsIn<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let payload = frame.payload.unwrap_or_default();
    Ok(match frame.event.as_ref() {
        "ack" => match frame.id {
            Some(id) => Inbound::Ack {
                id,
                durable: payload.seq.is_some(),
            },
            None => Inbound::Other,
        },
        "error" => Inbound::Error {
            id: frame.id,
            code: payload.code.unwrap_or(Cow::Borrowed("unknown")),
        },
        "message:new" => Inbound::MessageNew {
            client_message_id: payload.client_message_id,
        },
        _ => Inbound::Other,
    })
}

// --- Engine.IO v4 / Socket.IO v5 -------------------------------------------------------------

// Packets are parsed and built by the server's own codec (`realtime::socketio::packet`).

/// A full Engine.IO message frame carrying a Socket.IO packet on the default namespace, with
/// data given as JSON text: `4<type>[<id>]<data>`.
fn sio_frame(kind: SioKind, id: Option<u64>, data: &str) -> String {
    format!(
        "{}{}",
        EioPacket::Message(String::new()).encode_text(),
        encode_raw(kind, "/", id, 0, data)
    )
}

#[derive(Serialize)]
struct SioAuth<'a> {
    token: &'a str,
}

/// The CONNECT packet for the default namespace with `{token}` as auth: `40{"token":"..."}`.
pub fn sio_connect(token: &str) -> Result<String, String> {
    let auth = serde_json::to_string(&SioAuth { token }).map_err(|e| e.to_string())?;
    Ok(sio_frame(SioKind::Connect, None, &auth))
}

/// An event with an acknowledgement id: `42<id>["event",payload]`.
pub fn sio_emit<P: Serialize>(event: &str, id: u64, payload: &P) -> Result<String, String> {
    let data = serde_json::to_string(&(event, payload)).map_err(|e| e.to_string())?;
    Ok(sio_frame(SioKind::Event, Some(id), &data))
}

fn owned(v: Option<&Value>) -> Option<Cow<'static, str>> {
    v.and_then(Value::as_str).map(|s| Cow::Owned(s.to_owned()))
}

/// Reads one Engine.IO text frame from a Socket.IO server.
pub fn sio_inbound(text: &str) -> Result<Inbound<'static>, String> {
    let packet = match EioPacket::decode_text(text).map_err(|e| e.to_string())? {
        EioPacket::Open(_) => return Ok(Inbound::Open),
        EioPacket::Ping(_) => return Ok(Inbound::Ping),
        EioPacket::Close => return Ok(Inbound::Disconnect),
        EioPacket::Message(m) => SioPacket::decode(&m).map_err(|e| e.to_string())?,
        EioPacket::Pong(_) | EioPacket::Upgrade | EioPacket::Noop | EioPacket::Binary(_) => {
            return Ok(Inbound::Other)
        }
    };
    if packet.nsp != "/" {
        return Ok(Inbound::Other);
    }
    let data = packet.data.unwrap_or(Value::Null);
    Ok(match packet.kind {
        SioKind::Connect => Inbound::Connected,
        SioKind::Disconnect => Inbound::Disconnect,
        SioKind::ConnectError => {
            Inbound::ConnectError(owned(data.get("message")).unwrap_or(Cow::Borrowed("refused")))
        }
        SioKind::Ack => {
            let Some(id) = packet.id else {
                return Ok(Inbound::Other);
            };
            let first = data.get(0).cloned().unwrap_or(Value::Null);
            match (
                first.get("ok").and_then(Value::as_bool),
                owned(first.get("error")),
            ) {
                (Some(true), _) => Inbound::Ack { id, durable: true },
                (_, Some(code)) => Inbound::Error { id: Some(id), code },
                // Switchboard's own `/socket.io/`: the committed message, with its seq.
                (None, None) if first.get("seq").is_some_and(Value::is_i64) => {
                    Inbound::Ack { id, durable: true }
                }
                (Some(false), None) => Inbound::Error {
                    id: Some(id),
                    code: Cow::Borrowed("nack"),
                },
                (None, None) => Inbound::Ack { id, durable: false },
            }
        }
        SioKind::Event if data.get(0).and_then(Value::as_str) == Some("message:new") => {
            Inbound::MessageNew {
                client_message_id: owned(data.get(1).and_then(|p| p.get("clientMessageId"))),
            }
        }
        SioKind::Event | SioKind::BinaryEvent | SioKind::BinaryAck => Inbound::Other,
    })
}

// --- Calls scenario --------------------------------------------------------------------------

/// What a text frame means to the calls scenario (either target).
#[derive(Debug, PartialEq, Eq)]
pub enum CallInbound {
    /// Reply to request `id`: Switchboard's `ack` (`ok`) or `error`; a Socket.IO ack
    /// (`{ok, error?, callId?}`).
    Reply {
        /// The request id.
        id: u64,
        /// Accepted.
        ok: bool,
        /// Error code when refused.
        code: Option<String>,
        /// `callId` of a `call:initiate` reply.
        call_id: Option<String>,
        /// Switchboard's call status (`ringing`, `busy`, `glare`).
        status: Option<String>,
    },
    /// A pushed event and the `callId` it names.
    Event {
        /// Event name.
        name: String,
        /// Its `callId`.
        call_id: Option<String>,
    },
    /// Engine.IO ping; answer with [`EIO_PONG`].
    Ping,
    /// Engine.IO close or Socket.IO disconnect.
    Disconnect,
    /// Anything else.
    Other,
}

fn string_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// Reads one frame for the calls scenario.
pub fn call_inbound(target: Target, text: &str) -> Result<CallInbound, String> {
    match target {
        Target::Ws => {
            let frame: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let payload = frame.get("payload").unwrap_or(&Value::Null);
            let id = frame.get("id").and_then(Value::as_u64);
            Ok(match (frame.get("event").and_then(Value::as_str), id) {
                (Some("ack"), Some(id)) => CallInbound::Reply {
                    id,
                    ok: true,
                    code: None,
                    call_id: string_of(payload.get("callId")),
                    status: string_of(payload.get("status")),
                },
                (Some("error"), Some(id)) => CallInbound::Reply {
                    id,
                    ok: false,
                    code: Some(string_of(payload.get("code")).unwrap_or_else(|| "unknown".into())),
                    call_id: None,
                    status: None,
                },
                (Some(name), _) => CallInbound::Event {
                    name: name.to_owned(),
                    call_id: string_of(payload.get("callId")),
                },
                (None, _) => CallInbound::Other,
            })
        }
        Target::Socketio => {
            let packet = match EioPacket::decode_text(text).map_err(|e| e.to_string())? {
                EioPacket::Ping(_) => return Ok(CallInbound::Ping),
                EioPacket::Close => return Ok(CallInbound::Disconnect),
                EioPacket::Message(m) => SioPacket::decode(&m).map_err(|e| e.to_string())?,
                _ => return Ok(CallInbound::Other),
            };
            if packet.nsp != "/" {
                return Ok(CallInbound::Other);
            }
            let data = packet.data.unwrap_or(Value::Null);
            Ok(match (packet.kind, packet.id) {
                (SioKind::Disconnect, _) => CallInbound::Disconnect,
                (SioKind::Ack, Some(id)) => {
                    let first = data.get(0).unwrap_or(&Value::Null);
                    let ok = first.get("ok").and_then(Value::as_bool) == Some(true);
                    CallInbound::Reply {
                        id,
                        ok,
                        code: (!ok).then(|| {
                            string_of(first.get("error")).unwrap_or_else(|| "nack".into())
                        }),
                        call_id: string_of(first.get("callId")),
                        status: string_of(first.get("status")),
                    }
                }
                (SioKind::Event, _) => match data.get(0).and_then(Value::as_str) {
                    Some(name) => CallInbound::Event {
                        name: name.to_owned(),
                        call_id: string_of(data.get(1).and_then(|p| p.get("callId"))),
                    },
                    None => CallInbound::Other,
                },
                _ => CallInbound::Other,
            })
        }
    }
}

/// An event with a request id, in the target's framing.
pub fn encode_request<P: Serialize>(
    target: Target,
    event: &str,
    id: u64,
    payload: &P,
) -> Result<String, String> {
    match target {
        Target::Ws => ws_encode(event, id, payload),
        Target::Socketio => sio_emit(event, id, payload),
    }
}

/// `call:initiate` payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInitiate<'a> {
    /// The callee's user id.
    pub to: &'a str,
    /// `audio` or `video`.
    pub call_type: &'a str,
}

/// `call:end` payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallEnd<'a> {
    /// The call.
    pub call_id: &'a str,
}

// --- Payloads --------------------------------------------------------------------------------

/// `conversation:join` payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Join<'a> {
    /// The conversation id, as a string.
    pub conversation_id: &'a str,
}

/// An empty payload, `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// `message:send` payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Send<'a> {
    /// The conversation id, as a string.
    pub conversation_id: &'a str,
    /// Message text.
    pub content: &'a str,
    /// Idempotency key; the bench puts its send time in it (see [`client_message_id`]).
    pub client_message_id: &'a str,
}

/// `b<send time ns>-<client>-<n>`: unique per sender and carrying the send time, so whoever
/// receives the message can compute its delivery latency.
pub fn client_message_id(sent_ns: u64, client: usize, n: u64) -> String {
    format!("b{sent_ns}-{client}-{n}")
}

/// The send time in a [`client_message_id`], if `id` is one.
pub fn sent_ns(id: &str) -> Option<u64> {
    id.strip_prefix('b')?.split('-').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips() {
        assert_eq!(sio_connect("t.o.k").unwrap(), r#"40{"token":"t.o.k"}"#);
        let emit = sio_emit(
            "message:send",
            3,
            &Send {
                conversation_id: "c1",
                content: "hi \"there\"",
                client_message_id: "b1-2-3",
            },
        )
        .unwrap();
        assert_eq!(
            emit,
            r#"423["message:send",{"conversationId":"c1","content":"hi \"there\"","clientMessageId":"b1-2-3"}]"#
        );
    }

    #[test]
    fn socket_io_frames_map_to_inbound() {
        assert_eq!(sio_inbound(r#"0{"sid":"s"}"#).unwrap(), Inbound::Open);
        assert_eq!(sio_inbound("2").unwrap(), Inbound::Ping);
        assert_eq!(sio_inbound(r#"40{"sid":"x"}"#).unwrap(), Inbound::Connected);
        // Switchboard's own /socket.io/ acknowledges a send with the committed message.
        assert_eq!(
            sio_inbound(r#"437[{"id":"9","seq":3,"content":"hi"}]"#).unwrap(),
            Inbound::Ack {
                id: 7,
                durable: true
            }
        );
        assert_eq!(
            sio_inbound(r#"44{"message":"Unauthorized"}"#).unwrap(),
            Inbound::ConnectError(Cow::Borrowed("Unauthorized"))
        );
        assert_eq!(
            sio_inbound(r#"437[{"ok":true,"message":{"seq":4}}]"#).unwrap(),
            Inbound::Ack {
                id: 7,
                durable: true
            }
        );
        assert_eq!(
            sio_inbound(r#"438[{"ok":false,"error":"internal"}]"#).unwrap(),
            Inbound::Error {
                id: Some(8),
                code: Cow::Borrowed("internal")
            }
        );
        assert_eq!(
            sio_inbound(r#"42["message:new",{"id":"1","clientMessageId":"b99-1-2","seq":3}]"#)
                .unwrap(),
            Inbound::MessageNew {
                client_message_id: Some(Cow::Borrowed("b99-1-2"))
            }
        );
        assert_eq!(
            sio_inbound(r#"42["call:incoming",{"callId":"c"}]"#).unwrap(),
            Inbound::Other
        );
        assert_eq!(sio_inbound("41").unwrap(), Inbound::Disconnect);
        assert_eq!(sio_inbound("1").unwrap(), Inbound::Disconnect);
    }

    #[test]
    fn switchboard_frames_map_to_inbound() {
        let ack = r#"{"event":"ack","id":4,"payload":{"id":"10","conversationId":"3","seq":7,"createdAt":"2026-01-01T00:00:00Z"}}"#;
        assert_eq!(
            ws_decode(ack).unwrap(),
            Inbound::Ack {
                id: 4,
                durable: true
            }
        );
        assert_eq!(
            ws_decode(r#"{"event":"ack","id":1,"payload":{}}"#).unwrap(),
            Inbound::Ack {
                id: 1,
                durable: false
            }
        );
        assert_eq!(
            ws_decode(r#"{"event":"ack","id":2}"#).unwrap(),
            Inbound::Ack {
                id: 2,
                durable: false
            }
        );
        assert_eq!(
            ws_decode(r#"{"event":"error","id":5,"payload":{"code":"rate_limited","message":"slow down","ref":5}}"#)
                .unwrap(),
            Inbound::Error {
                id: Some(5),
                code: Cow::Borrowed("rate_limited")
            }
        );
        assert_eq!(
            ws_decode(r#"{"event":"message:new","payload":{"seq":1,"clientMessageId":"b5-0-1","content":"x"}}"#)
                .unwrap(),
            Inbound::MessageNew {
                client_message_id: Some(Cow::Borrowed("b5-0-1"))
            }
        );
        assert_eq!(
            ws_decode(r#"{"event":"presence","payload":{"userId":"1"}}"#).unwrap(),
            Inbound::Other
        );
        assert!(ws_decode("not json").is_err());
        let out = ws_encode(
            "conversation:join",
            1,
            &Join {
                conversation_id: "42",
            },
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"event":"conversation:join","id":1,"payload":{"conversationId":"42"}}"#
        );
    }

    #[test]
    fn call_frames_map_to_call_inbound() {
        let ws = |t: &str| call_inbound(Target::Ws, t).unwrap();
        assert_eq!(
            ws(
                r#"{"event":"ack","id":3,"payload":{"callId":"k1","status":"ringing","iceServers":[]}}"#
            ),
            CallInbound::Reply {
                id: 3,
                ok: true,
                code: None,
                call_id: Some("k1".into()),
                status: Some("ringing".into())
            }
        );
        assert_eq!(
            ws(r#"{"event":"error","id":4,"payload":{"code":"rate_limited"}}"#),
            CallInbound::Reply {
                id: 4,
                ok: false,
                code: Some("rate_limited".into()),
                call_id: None,
                status: None
            }
        );
        assert_eq!(
            ws(r#"{"event":"call:incoming","payload":{"callId":"k1","from":"2"}}"#),
            CallInbound::Event {
                name: "call:incoming".into(),
                call_id: Some("k1".into())
            }
        );
        let sio = |t: &str| call_inbound(Target::Socketio, t).unwrap();
        assert_eq!(sio("2"), CallInbound::Ping);
        assert_eq!(
            sio(r#"435[{"ok":true,"callId":"call_7"}]"#),
            CallInbound::Reply {
                id: 5,
                ok: true,
                code: None,
                call_id: Some("call_7".into()),
                status: None
            }
        );
        assert_eq!(
            sio(r#"436[{"ok":false,"error":"not_found"}]"#),
            CallInbound::Reply {
                id: 6,
                ok: false,
                code: Some("not_found".into()),
                call_id: None,
                status: None
            }
        );
        assert_eq!(
            sio(r#"42["call:ended",{"callId":"call_7","duration":0}]"#),
            CallInbound::Event {
                name: "call:ended".into(),
                call_id: Some("call_7".into())
            }
        );
        assert_eq!(sio("41"), CallInbound::Disconnect);
        assert_eq!(
            encode_request(
                Target::Socketio,
                "call:initiate",
                9,
                &CallInitiate {
                    to: "12",
                    call_type: "audio"
                }
            )
            .unwrap(),
            r#"429["call:initiate",{"to":"12","callType":"audio"}]"#
        );
        assert_eq!(
            encode_request(Target::Ws, "call:end", 2, &CallEnd { call_id: "k1" }).unwrap(),
            r#"{"event":"call:end","id":2,"payload":{"callId":"k1"}}"#
        );
    }

    #[test]
    fn client_message_ids_carry_the_send_time() {
        let id = client_message_id(123_456_789, 17, 3);
        assert_eq!(id, "b123456789-17-3");
        assert_eq!(sent_ns(&id), Some(123_456_789));
        assert_eq!(sent_ns("someone-else"), None);
        assert_eq!(sent_ns("b-1"), None);
    }
}
