//! Socket.IO: the text part of a packet, then binary reassembly — the announced number of
//! attachments taken from the rest of the input and their placeholders filled in.
#![no_main]

use actix_web::web::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard::realtime::socketio::packet::{fill_placeholders, SioPacket};

fuzz_target!(|data: &[u8]| {
    // Layout: text packet, then attachments, separated by 0xff (never valid UTF-8).
    let mut parts = data.split(|b| *b == 0xff);
    let Some(head) = parts.next() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(head) else {
        return;
    };
    let Ok(packet) = SioPacket::decode(text) else {
        return;
    };
    // Whatever decodes re-encodes to something that decodes, with the same type, namespace
    // and attachment count.
    let again = SioPacket::decode(&packet.encode()).expect("re-encoded packet decodes");
    assert_eq!(
        (again.kind, &again.nsp, again.attachments),
        (packet.kind, &packet.nsp, packet.attachments)
    );
    let attachments: Vec<Bytes> = parts
        .take(packet.attachments)
        .map(Bytes::copy_from_slice)
        .collect();
    if let Some(mut value) = packet.data {
        let _ = fill_placeholders(&mut value, &attachments);
    }
});
