//! Plain `/ws`: a text frame decoded as the canonical `{"event","payload","id"}` envelope, then
//! parsed into a command — the whole path from socket bytes to what the engine runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::error::ErrorCode;
use switchboard::realtime::protocol::Command;
use switchboard::realtime::ws::{CanonicalJson, WireFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match CanonicalJson.decode(text) {
        Ok(frame) => {
            assert!(!frame.event.is_empty() && frame.event.len() <= 128);
            let _ = Command::parse(&frame.event, frame.payload);
        }
        // A refused frame is malformed JSON or not an envelope; nothing else.
        Err((_, error)) => assert!(matches!(
            error.code(),
            ErrorCode::InvalidJson | ErrorCode::InvalidFrame
        )),
    }
});
