//! Engine.IO v4 and Socket.IO v5 packet codecs.
//!
//! Engine.IO: a text packet is a type digit plus data (`0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop); a binary WebSocket frame is a binary message; HTTP
//! long-polling joins packets with the record separator `\x1e` and sends binary ones as `b` +
//! base64.
//!
//! Socket.IO: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]` with types 0 CONNECT,
//! 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR, 5 BINARY_EVENT, 6 BINARY_ACK; binary
//! attachments follow as separate binary messages and are referenced by
//! `{"_placeholder": true, "num": N}`.

use actix_web::web::Bytes;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;

/// Record separator between packets in a polling payload.
pub(crate) const SEPARATOR: char = '\u{1e}';

/// An Engine.IO packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EioPacket {
    /// Handshake data (JSON).
    Open(String),
    /// Close the session.
    Close,
    /// Ping (payload echoed in the pong, e.g. `probe`).
    Ping(String),
    /// Pong.
    Pong(String),
    /// A text message.
    Message(String),
    /// A binary message.
    Binary(Bytes),
    /// Upgrade to WebSocket done.
    Upgrade,
    /// No-op (answers a pending poll during upgrade).
    Noop,
}

/// A malformed packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet: {0}")]
pub struct PacketError(pub &'static str);

impl EioPacket {
    /// Bytes of the packet's payload on a WebSocket (its type character aside).
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Open(s) | Self::Ping(s) | Self::Pong(s) | Self::Message(s) => s.len(),
            Self::Binary(b) => b.len(),
            Self::Close | Self::Upgrade | Self::Noop => 0,
        }
    }

    /// Decodes a text packet (WebSocket text frame or one polling record).
    pub fn decode_text(text: &str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(PacketError("empty packet"))?;
        let data = chars.as_str();
        Ok(match kind {
            '0' => Self::Open(data.to_owned()),
            '1' => Self::Close,
            '2' => Self::Ping(data.to_owned()),
            '3' => Self::Pong(data.to_owned()),
            '4' => Self::Message(data.to_owned()),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            'b' => Self::Binary(Bytes::from(
                B64.decode(data).map_err(|_| PacketError("bad base64"))?,
            )),
            _ => return Err(PacketError("unknown packet type")),
        })
    }

    /// Encodes as text; binary messages become `b` + base64 (polling).
    pub fn encode_text(&self) -> String {
        match self {
            Self::Open(d) => format!("0{d}"),
            Self::Close => "1".into(),
            Self::Ping(d) => format!("2{d}"),
            Self::Pong(d) => format!("3{d}"),
            Self::Message(d) => format!("4{d}"),
            Self::Binary(b) => format!("b{}", B64.encode(b)),
            Self::Upgrade => "5".into(),
            Self::Noop => "6".into(),
        }
    }

    /// Decodes a polling payload (records separated by `\x1e`).
    pub fn decode_payload(payload: &str) -> Result<Vec<Self>, PacketError> {
        payload.split(SEPARATOR).map(Self::decode_text).collect()
    }

    /// Encodes packets as one polling payload.
    pub fn encode_payload(packets: &[Self]) -> String {
        let mut out = String::new();
        for (i, p) in packets.iter().enumerate() {
            if i > 0 {
                out.push(SEPARATOR);
            }
            out.push_str(&p.encode_text());
        }
        out
    }
}

/// Socket.IO packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SioKind {
    /// Connect to a namespace.
    Connect,
    /// Leave a namespace.
    Disconnect,
    /// An event.
    Event,
    /// An acknowledgement.
    Ack,
    /// Connection refused.
    ConnectError,
    /// An event with binary attachments.
    BinaryEvent,
    /// An ack with binary attachments.
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

    fn from_digit(c: char) -> Option<Self> {
        Some(match c {
            '0' => Self::Connect,
            '1' => Self::Disconnect,
            '2' => Self::Event,
            '3' => Self::Ack,
            '4' => Self::ConnectError,
            '5' => Self::BinaryEvent,
            '6' => Self::BinaryAck,
            _ => return None,
        })
    }
}

/// A Socket.IO packet (attachments are carried separately).
#[derive(Clone, Debug, PartialEq)]
pub struct SioPacket {
    /// Type.
    pub kind: SioKind,
    /// Namespace (`/` by default).
    pub nsp: String,
    /// Ack id.
    pub id: Option<u64>,
    /// JSON data (arguments array for events and acks).
    pub data: Option<Value>,
    /// Number of binary attachments that follow.
    pub attachments: usize,
}

impl SioPacket {
    /// Decodes the text part of a Socket.IO packet.
    pub fn decode(text: &str) -> Result<Self, PacketError> {
        let mut rest = text;
        let first = rest
            .chars()
            .next()
            .ok_or(PacketError("empty socket.io packet"))?;
        let kind =
            SioKind::from_digit(first).ok_or(PacketError("unknown socket.io packet type"))?;
        rest = &rest[1..];
        let mut attachments = 0;
        if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
            let dash = rest
                .find('-')
                .ok_or(PacketError("binary packet without attachment count"))?;
            attachments = rest[..dash]
                .parse()
                .map_err(|_| PacketError("bad attachment count"))?;
            if attachments > 64 {
                return Err(PacketError("too many attachments"));
            }
            rest = &rest[dash + 1..];
        }
        let mut nsp = "/".to_owned();
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            nsp = rest[..end].to_owned();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            Some(
                rest[..digits]
                    .parse()
                    .map_err(|_| PacketError("bad ack id"))?,
            )
        } else {
            None
        };
        rest = &rest[digits..];
        let data = if rest.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(rest)
                    .map_err(|_| PacketError("bad JSON in socket.io packet"))?,
            )
        };
        if matches!(
            kind,
            SioKind::Event | SioKind::BinaryEvent | SioKind::Ack | SioKind::BinaryAck
        ) && !data.as_ref().is_some_and(Value::is_array)
        {
            return Err(PacketError("events and acks carry an array"));
        }
        // As the reference parser: CONNECT carries an object or nothing, DISCONNECT nothing,
        // CONNECT_ERROR an object or a string. (A number would also be ambiguous on the wire:
        // `0` + `37700.0` reads back as ack id 37700.)
        let payload_ok = match (kind, &data) {
            (SioKind::Connect, None | Some(Value::Object(_))) | (SioKind::Disconnect, None) => true,
            (SioKind::ConnectError, Some(Value::Object(_) | Value::String(_))) => true,
            (SioKind::Connect | SioKind::Disconnect | SioKind::ConnectError, _) => false,
            _ => true,
        };
        if !payload_ok {
            return Err(PacketError("invalid payload for the packet type"));
        }
        Ok(Self {
            kind,
            nsp,
            id,
            data,
            attachments,
        })
    }

    /// Encodes the text part.
    pub fn encode(&self) -> String {
        let data = self.data.as_ref().map(Value::to_string).unwrap_or_default();
        encode_raw(self.kind, &self.nsp, self.id, self.attachments, &data)
    }
}

/// Encodes a Socket.IO packet whose data is already JSON text (kept byte for byte).
pub fn encode_raw(
    kind: SioKind,
    nsp: &str,
    id: Option<u64>,
    attachments: usize,
    data: &str,
) -> String {
    let mut out = String::with_capacity(data.len() + 16);
    out.push(kind.digit());
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        out.push_str(&format!("{attachments}-"));
    }
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

/// Replaces every `{"_placeholder":true,"num":N}` with attachment N as a base64 string: the
/// canonical (JSON) protocol carries binary data as base64.
pub fn fill_placeholders(value: &mut Value, attachments: &[Bytes]) -> Result<(), PacketError> {
    match value {
        Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
            let n = map
                .get("num")
                .and_then(Value::as_u64)
                .ok_or(PacketError("bad placeholder"))?;
            let bytes = attachments
                .get(usize::try_from(n).map_err(|_| PacketError("bad placeholder"))?)
                .ok_or(PacketError("placeholder without attachment"))?;
            *value = Value::String(B64.encode(bytes));
            Ok(())
        }
        Value::Object(map) => map
            .values_mut()
            .try_for_each(|v| fill_placeholders(v, attachments)),
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| fill_placeholders(v, attachments)),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_io_text_packets_round_trip() {
        for p in [
            EioPacket::Open("{\"sid\":\"x\"}".into()),
            EioPacket::Close,
            EioPacket::Ping("probe".into()),
            EioPacket::Pong(String::new()),
            EioPacket::Message("hello".into()),
            EioPacket::Binary(Bytes::from_static(&[1, 2, 3])),
            EioPacket::Upgrade,
            EioPacket::Noop,
        ] {
            assert_eq!(EioPacket::decode_text(&p.encode_text()).unwrap(), p);
        }
        assert_eq!(
            EioPacket::Binary(Bytes::from_static(&[1, 2, 3])).encode_text(),
            "bAQID"
        );
        assert!(EioPacket::decode_text("").is_err());
        assert!(EioPacket::decode_text("9").is_err());
        assert!(EioPacket::decode_text("b!!").is_err());
    }

    #[test]
    fn polling_payloads_use_the_record_separator() {
        let packets = vec![
            EioPacket::Message("a".into()),
            EioPacket::Ping(String::new()),
            EioPacket::Binary(Bytes::from_static(b"\x01")),
        ];
        let text = EioPacket::encode_payload(&packets);
        assert_eq!(text, "4a\u{1e}2\u{1e}bAQ==");
        assert_eq!(EioPacket::decode_payload(&text).unwrap(), packets);
    }

    #[test]
    fn socket_io_packets_decode_and_encode() {
        let p = SioPacket::decode("2[\"hello\",1]").unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id, p.data.clone()),
            (SioKind::Event, "/", None, Some(json!(["hello", 1])))
        );
        let p = SioPacket::decode("2/admin,456[\"project:delete\",123]").unwrap();
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(456)));
        assert_eq!(p.encode(), "2/admin,456[\"project:delete\",123]");
        let p = SioPacket::decode("51-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (SioKind::BinaryEvent, 1));
        assert_eq!(
            p.encode(),
            "51-[\"hello\",{\"_placeholder\":true,\"num\":0}]"
        );
        let p = SioPacket::decode("0{\"token\":\"123\"}").unwrap();
        assert_eq!(
            (p.kind, p.data),
            (SioKind::Connect, Some(json!({"token": "123"})))
        );
        assert_eq!(SioPacket::decode("0/custom,").unwrap().nsp, "/custom");
        assert_eq!(SioPacket::decode("3/admin,13[]").unwrap().id, Some(13));
        for bad in ["", "9", "2{\"a\":1}", "5[\"x\"]", "2[", "5999-[]"] {
            assert!(SioPacket::decode(bad).is_err(), "{bad}");
        }
    }

    /// Found by the `socketio_packet` fuzz target: `0 377E02` decoded as a CONNECT carrying the
    /// number 37700.0, which re-encoded as `037700.0` — ack id 37700 and bad JSON.
    #[test]
    fn connect_and_disconnect_payloads_follow_the_reference_parser() {
        for bad in [
            "0 377E02",
            "0[1]",
            "0\"x\"",
            "1{}",
            "1/admin,{}",
            "4[]",
            "43",
        ] {
            assert!(SioPacket::decode(bad).is_err(), "{bad}");
        }
        for good in [
            "0",
            "0{}",
            "0/admin,{\"token\":\"t\"}",
            "1",
            "1/admin,",
            "4{\"message\":\"no\"}",
            "4\"no\"",
        ] {
            let p = SioPacket::decode(good).unwrap();
            assert_eq!(SioPacket::decode(&p.encode()).unwrap(), p, "{good}");
        }
    }

    #[test]
    fn placeholders_are_replaced_by_attachments() {
        let mut v = json!(["file", {"data": {"_placeholder": true, "num": 0}}]);
        fill_placeholders(&mut v, &[Bytes::from_static(b"hi")]).unwrap();
        assert_eq!(v, json!(["file", {"data": "aGk="}]));
        let mut v = json!([{"_placeholder": true, "num": 3}]);
        assert!(fill_placeholders(&mut v, &[]).is_err());
    }
}
