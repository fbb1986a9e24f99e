//! What an upload is, read from its first bytes: the declared `Content-Type` and the file name
//! are never trusted. Only the types on the allow-list below are accepted.

/// The families of accepted media, each with its own size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// JPEG, PNG, GIF, WebP.
    Image,
    /// AAC/M4A, Ogg (Opus, Vorbis), MP3, WAV, FLAC, AMR.
    Audio,
    /// MP4, WebM, QuickTime.
    Video,
    /// PDF, Word/Excel/PowerPoint, ZIP.
    Document,
}

impl Kind {
    /// The stored name (`media.kind`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Document => "document",
        }
    }

    /// The stored name read back.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Self::Image),
            "audio" => Some(Self::Audio),
            "video" => Some(Self::Video),
            "document" => Some(Self::Document),
            _ => None,
        }
    }
}

/// An accepted type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sniffed {
    /// The content type it is stored and served with.
    pub mime: &'static str,
    /// Its family.
    pub kind: Kind,
}

/// Bytes read before deciding (ZIP-based Office files name their parts a little way in).
pub(crate) const SNIFF_BYTES: usize = 8192;

/// The allow-list: what `infer` recognises → what is stored.
const ALLOWED: &[(&str, &str, Kind)] = &[
    ("image/jpeg", "image/jpeg", Kind::Image),
    ("image/png", "image/png", Kind::Image),
    ("image/gif", "image/gif", Kind::Image),
    ("image/webp", "image/webp", Kind::Image),
    ("audio/mpeg", "audio/mpeg", Kind::Audio),
    ("audio/m4a", "audio/mp4", Kind::Audio),
    ("audio/aac", "audio/aac", Kind::Audio),
    ("audio/ogg", "audio/ogg", Kind::Audio),
    ("audio/opus", "audio/ogg", Kind::Audio),
    ("audio/x-wav", "audio/wav", Kind::Audio),
    ("audio/x-flac", "audio/flac", Kind::Audio),
    ("audio/amr", "audio/amr", Kind::Audio),
    ("video/mp4", "video/mp4", Kind::Video),
    ("video/x-m4v", "video/mp4", Kind::Video),
    ("video/webm", "video/webm", Kind::Video),
    ("video/quicktime", "video/quicktime", Kind::Video),
    ("application/pdf", "application/pdf", Kind::Document),
    ("application/msword", "application/msword", Kind::Document),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Kind::Document,
    ),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Kind::Document,
    ),
    (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        Kind::Document,
    ),
    ("application/zip", "application/zip", Kind::Document),
];

/// The accepted type of a file that starts with `head`, or `None` (refused).
pub(crate) fn sniff(head: &[u8]) -> Option<Sniffed> {
    let found = infer::get(head)?;
    let (_, mime, kind) = ALLOWED
        .iter()
        .find(|(recognised, _, _)| *recognised == found.mime_type())?;
    // An ISO base media file whose brand says audio only (voice notes recorded as M4A).
    if *kind == Kind::Video
        && head.len() >= 12
        && &head[4..8] == b"ftyp"
        && matches!(&head[8..12], b"M4A " | b"M4B " | b"F4A ")
    {
        return Some(Sniffed {
            mime: "audio/mp4",
            kind: Kind::Audio,
        });
    }
    Some(Sniffed { mime, kind: *kind })
}

/// The MIME types [`sniff`] accepts, for error messages and the API description.
pub(crate) fn accepted() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = ALLOWED.iter().map(|(_, mime, _)| *mime).collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        let png = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        assert_eq!(sniff(&png).map(|s| s.mime), Some("image/png"));
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0];
        assert_eq!(sniff(&jpeg).map(|s| s.kind), Some(Kind::Image));
        assert_eq!(sniff(b"<!DOCTYPE html><html><body>hi</body></html>"), None);
        assert_eq!(
            sniff(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff"),
            None
        );
        assert_eq!(sniff(b"plain words"), None);
        let m4a = b"\0\0\0\x20ftypM4A \0\0\0\0M4A mp42isom\0\0";
        assert_eq!(
            sniff(m4a),
            Some(Sniffed {
                mime: "audio/mp4",
                kind: Kind::Audio
            })
        );
        assert_eq!(
            sniff(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n").map(|s| s.kind),
            Some(Kind::Document)
        );
    }
}
