//! Dialect translation: a client frame in any dialect translated to a canonical command and
//! parsed; the same payload as a canonical event translated back out, and as a command result
//! turned into the dialect's reply events. The first byte picks the dialect and the id type; the
//! rest is a frame `{"event","payload","id"}`. Every translated event must still encode as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard::realtime::dialect::{Translator, ALL};
use switchboard::realtime::protocol::{Command, ServerEvent};
use switchboard::realtime::ws::{CanonicalJson, WireFormat};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let dialect = ALL[usize::from(pick) % ALL.len()];
    let Ok(frame) = CanonicalJson.decode(text) else {
        return;
    };
    let t = Translator::new(dialect);
    // The high bit also picks the JSON type of the connection's user ids.
    t.set_numeric_ids(pick >= 128);
    // Outbound first, so seed 004's current-call state is exercised by the inbound side too.
    let event = ServerEvent::new(frame.event.clone(), frame.payload.clone());
    for out in t.outbound(&event).iter() {
        let encoded: Value = serde_json::from_str(&out.canonical_json()).expect("valid JSON");
        assert!(encoded.get("event").is_some());
    }
    let original = frame.event.clone();
    let reply_to = frame.reply_to.clone();
    let payload = frame.payload.clone();
    if let Ok(translated) = t.inbound(frame) {
        let _ = Command::parse(&translated.event, translated.payload);
    }
    for item in t.reply(&original, reply_to, Ok(payload)) {
        let _ = format!("{item:?}");
    }
});
