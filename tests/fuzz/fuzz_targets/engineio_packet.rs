//! Engine.IO: one text packet (WebSocket frame or polling record) and a whole polling payload.
//! Whatever decodes must encode back to something that decodes to the same packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::realtime::socketio::packet::EioPacket;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(packet) = EioPacket::decode_text(text) {
        let again = EioPacket::decode_text(&packet.encode_text());
        assert_eq!(again.as_ref(), Ok(&packet), "text packet round trip");
    }
    if let Ok(packets) = EioPacket::decode_payload(text) {
        let again = EioPacket::decode_payload(&EioPacket::encode_payload(&packets));
        assert_eq!(again.as_ref(), Ok(&packets), "payload round trip");
    }
});
