//! Wire formats the bench speaks: Switchboard's JSON frames on `/ws`, and a minimal Socket.IO v5
//! client (Engine.IO v4 over a WebSocket, text packets only).
//!
//! Both are reduced to one [`Inbound`] vocabulary so the client loop does not care which target
//! it drives.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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

/// An Engine.IO packet (text only).
#[derive(Debug, PartialEq, Eq)]
pub enum EioPacket<'a> {
    /// `0` + handshake JSON.
    Open(&'a str),
    /// `1`.
    Close,
    /// `2` (+ optional probe data).
    Ping(&'a str),
    /// `3` (+ optional probe data).
    Pong(&'a str),
    /// `4` + a Socket.IO packet.
    Message(&'a str),
    /// `5`.
    Upgrade,
    /// `6`.
    Noop,
}

/// Socket.IO packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SioKind {
    /// 0: connect to a namespace (client: with auth; server: with `{sid}`).
    Connect,
    /// 1: leave a namespace.
    Disconnect,
    /// 2: event `["name", ...args]`.
    Event,
    /// 3: acknowledgement `[...args]`.
    Ack,
    /// 4: namespace connection refused.
    ConnectError,
    /// 5: event with binary attachments.
    BinaryEvent,
    /// 6: acknowledgement with binary attachments.
    BinaryAck,
}

impl SioKind {
    fn digit(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }

    fn from_digit(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }
}

/// A Socket.IO packet: `<type>[<attachments>-][<nsp>,][<ack id>][<json data>]`.
#[derive(Debug, PartialEq, Eq)]
pub struct SioPacket<'a> {
    /// Packet type.
    pub kind: SioKind,
    /// Namespace (`/` when absent).
    pub nsp: &'a str,
    /// Acknowledgement id.
    pub id: Option<u64>,
    /// JSON data, possibly empty.
    pub data: &'a str,
}

/// Splits an Engine.IO text packet.
pub fn eio_decode(text: &str) -> Result<EioPacket<'_>, String> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or("empty engine.io packet")?;
    let rest = chars.as_str();
    Ok(match kind {
        '0' => EioPacket::Open(rest),
        '1' => EioPacket::Close,
        '2' => EioPacket::Ping(rest),
        '3' => EioPacket::Pong(rest),
        '4' => EioPacket::Message(rest),
        '5' => EioPacket::Upgrade,
        '6' => EioPacket::Noop,
        other => return Err(format!("unknown engine.io packet type `{other}`")),
    })
}

/// Splits a Socket.IO packet (the part after the Engine.IO `4`).
pub fn sio_decode(text: &str) -> Result<SioPacket<'_>, String> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or("empty socket.io packet")?;
    let kind = SioKind::from_digit(first)
        .ok_or_else(|| format!("unknown socket.io packet type `{}`", first as char))?;
    let mut pos = 1;
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        let dash = text
            .get(pos..)
            .and_then(|r| r.find('-'))
            .ok_or("binary packet without attachment count")?;
        pos += dash + 1;
    }
    let mut nsp = "/";
    if bytes.get(pos) == Some(&b'/') {
        let rest = text.get(pos..).unwrap_or_default();
        let end = rest.find(',').unwrap_or(rest.len());
        nsp = rest.get(..end).unwrap_or_default();
        pos += end + usize::from(end < rest.len());
    }
    let digits = bytes
        .get(pos..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let id = if digits > 0 {
        let s = text.get(pos..pos + digits).unwrap_or_default();
        Some(s.parse().map_err(|_| format!("bad ack id `{s}`"))?)
    } else {
        None
    };
    pos += digits;
    Ok(SioPacket {
        kind,
        nsp,
        id,
        data: text.get(pos..).unwrap_or_default(),
    })
}

/// A full Engine.IO message frame carrying a Socket.IO packet: `4<type>[<nsp>,][<id>]<data>`.
pub fn sio_encode(kind: SioKind, nsp: &str, id: Option<u64>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 24);
    out.push('4');
    out.push(kind.digit());
    if nsp != "/" && !nsp.is_empty() {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    out.push_str(data);
    out
}

#[derive(Serialize)]
struct SioAuth<'a> {
    token: &'a str,
}

/// The CONNECT packet for the default namespace with `{token}` as auth: `40{"token":"..."}`.
pub fn sio_connect(token: &str) -> Result<String, String> {
    let auth = serde_json::to_string(&SioAuth { token }).map_err(|e| e.to_string())?;
    Ok(sio_encode(SioKind::Connect, "/", None, &auth))
}

/// An event with an acknowledgement id: `42<id>["event",payload]`.
pub fn sio_emit<P: Serialize>(event: &str, id: u64, payload: &P) -> Result<String, String> {
    let data = serde_json::to_string(&(event, payload)).map_err(|e| e.to_string())?;
    Ok(sio_encode(SioKind::Event, "/", Some(id), &data))
}

#[derive(Deserialize)]
struct SioAckBody<'a> {
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default, borrow)]
    error: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SioPush<'a> {
    #[serde(default, borrow)]
    client_message_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SioErrorBody<'a> {
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// Reads one Engine.IO text frame from a Socket.IO server.
pub fn sio_inbound(text: &str) -> Result<Inbound<'_>, String> {
    let packet = match eio_decode(text)? {
        EioPacket::Open(_) => return Ok(Inbound::Open),
        EioPacket::Ping(_) => return Ok(Inbound::Ping),
        EioPacket::Close => return Ok(Inbound::Disconnect),
        EioPacket::Pong(_) | EioPacket::Upgrade | EioPacket::Noop => return Ok(Inbound::Other),
        EioPacket::Message(m) => sio_decode(m)?,
    };
    if packet.nsp != "/" {
        return Ok(Inbound::Other);
    }
    Ok(match packet.kind {
        SioKind::Connect => Inbound::Connected,
        SioKind::Disconnect => Inbound::Disconnect,
        SioKind::ConnectError => {
            let body: Option<SioErrorBody<'_>> = serde_json::from_str(packet.data).ok();
            Inbound::ConnectError(
                body.and_then(|b| b.message)
                    .unwrap_or(Cow::Borrowed("refused")),
            )
        }
        SioKind::Ack => {
            let Some(id) = packet.id else {
                return Ok(Inbound::Other);
            };
            let args: Vec<SioAckBody<'_>> =
                serde_json::from_str(packet.data).map_err(|e| e.to_string())?;
            match args.into_iter().next() {
                Some(SioAckBody { ok: Some(true), .. }) => Inbound::Ack { id, durable: true },
                Some(SioAckBody { error: Some(e), .. }) => Inbound::Error {
                    id: Some(id),
                    code: e,
                },
                Some(SioAckBody {
                    ok: Some(false), ..
                }) => Inbound::Error {
                    id: Some(id),
                    code: Cow::Borrowed("nack"),
                },
                _ => Inbound::Ack { id, durable: false },
            }
        }
        SioKind::Event => {
            let (event, push): (Cow<'_, str>, SioPush<'_>) = match serde_json::from_str(packet.data)
            {
                Ok(v) => v,
                // Events with other argument shapes are not ours.
                Err(_) => return Ok(Inbound::Other),
            };
            if event == "message:new" {
                Inbound::MessageNew {
                    client_message_id: push.client_message_id,
                }
            } else {
                Inbound::Other
            }
        }
        SioKind::BinaryEvent | SioKind::BinaryAck => Inbound::Other,
    })
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
    fn engine_io_packets_split() {
        assert_eq!(
            eio_decode(r#"0{"sid":"x","pingInterval":25000}"#).unwrap(),
            EioPacket::Open(r#"{"sid":"x","pingInterval":25000}"#)
        );
        assert_eq!(eio_decode("2").unwrap(), EioPacket::Ping(""));
        assert_eq!(eio_decode("3probe").unwrap(), EioPacket::Pong("probe"));
        assert_eq!(eio_decode("1").unwrap(), EioPacket::Close);
        assert_eq!(eio_decode("6").unwrap(), EioPacket::Noop);
        assert_eq!(eio_decode("40").unwrap(), EioPacket::Message("0"));
        assert!(eio_decode("").is_err());
        assert!(eio_decode("9").is_err());
    }

    #[test]
    fn socket_io_packets_split() {
        let p = sio_decode(r#"0{"sid":"abc"}"#).unwrap();
        assert_eq!(
            p,
            SioPacket {
                kind: SioKind::Connect,
                nsp: "/",
                id: None,
                data: r#"{"sid":"abc"}"#
            }
        );
        let p = sio_decode(r#"312[{"ok":true}]"#).unwrap();
        assert_eq!(p.kind, SioKind::Ack);
        assert_eq!(p.id, Some(12));
        assert_eq!(p.data, r#"[{"ok":true}]"#);
        let p = sio_decode(r#"2["message:new",{"a":1}]"#).unwrap();
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.id, None);
        assert_eq!(p.data, r#"["message:new",{"a":1}]"#);
        let p = sio_decode(r#"2/admin,7["x"]"#).unwrap();
        assert_eq!((p.nsp, p.id, p.data), ("/admin", Some(7), r#"["x"]"#));
        let p = sio_decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.nsp, p.data), (SioKind::Disconnect, "/admin", ""));
        let p = sio_decode(r#"51-/nsp,3["up",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(
            (p.kind, p.nsp, p.id),
            (SioKind::BinaryEvent, "/nsp", Some(3))
        );
        let p = sio_decode(r#"4{"message":"Unauthorized"}"#).unwrap();
        assert_eq!(p.kind, SioKind::ConnectError);
        assert!(sio_decode("").is_err());
        assert!(sio_decode("9").is_err());
    }

    #[test]
    fn encode_round_trips() {
        let s = sio_encode(SioKind::Event, "/", Some(5), r#"["a",1]"#);
        assert_eq!(s, r#"425["a",1]"#);
        let s = sio_encode(SioKind::Ack, "/chat", Some(9), "[]");
        assert_eq!(s, "43/chat,9[]");
        let EioPacket::Message(m) = eio_decode(&s).unwrap() else {
            panic!("not a message")
        };
        let p = sio_decode(m).unwrap();
        assert_eq!(
            (p.kind, p.nsp, p.id, p.data),
            (SioKind::Ack, "/chat", Some(9), "[]")
        );
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
    fn client_message_ids_carry_the_send_time() {
        let id = client_message_id(123_456_789, 17, 3);
        assert_eq!(id, "b123456789-17-3");
        assert_eq!(sent_ns(&id), Some(123_456_789));
        assert_eq!(sent_ns("someone-else"), None);
        assert_eq!(sent_ns("b-1"), None);
    }
}
