//! The playing time of audio and video uploads, read from their container headers without
//! decoding: ISO base media (MP4, M4A, QuickTime: `moov/mvhd`), WAV (`fmt ` and `data`) and Ogg
//! (Opus or Vorbis: the last page's granule position). Only the first and the last bytes of a
//! file are kept while it streams in ([`HEAD_BYTES`], [`TAIL_BYTES`]): an MP4 written by a phone
//! puts its `moov` box after the media data. Other containers (MP3, WebM, AMR...) get no duration.

/// Bytes kept from the start of a file.
pub(crate) const HEAD_BYTES: usize = 256 * 1024;
/// Bytes kept from the end of a file.
pub(crate) const TAIL_BYTES: usize = 256 * 1024;

/// The first and last bytes of a file, and its size.
#[derive(Debug)]
pub(crate) struct Ends<'a> {
    /// Bytes `0..head.len()`.
    pub head: &'a [u8],
    /// Bytes `size - tail.len()..size`.
    pub tail: &'a [u8],
    /// Size of the whole file.
    pub size: u64,
}

impl Ends<'_> {
    /// `len` bytes at `offset` of the file, when they were kept.
    fn at(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end <= self.head.len() as u64 {
            return self.head.get(offset as usize..end as usize);
        }
        let tail_start = self.size.checked_sub(self.tail.len() as u64)?;
        if offset >= tail_start && end <= self.size {
            let from = (offset - tail_start) as usize;
            return self.tail.get(from..from + len as usize);
        }
        None
    }
}

/// The duration in milliseconds of a file of type `mime`, when its container states it.
pub(crate) fn duration_ms(mime: &str, ends: &Ends<'_>) -> Option<i64> {
    let ms = match mime {
        "audio/mp4" | "video/mp4" | "video/quicktime" => mp4(ends),
        "audio/wav" => wav(ends.head, ends.size),
        "audio/ogg" => ogg(ends.head, ends.tail),
        _ => None,
    }?;
    // A header that claims days of audio in a small file is not trusted either way.
    (0..=7 * 24 * 3600 * 1000).contains(&ms).then_some(ms)
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn le32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Walks the top-level boxes to `moov`, then reads `mvhd` (the first box inside it, by
/// convention; searched among the first few to be safe).
fn mp4(ends: &Ends<'_>) -> Option<i64> {
    let mut offset = 0u64;
    for _ in 0..64 {
        let header = ends.at(offset, 8)?;
        let mut size = be32(&header[..4]);
        let mut body = offset + 8;
        if size == 1 {
            size = be64(ends.at(offset + 8, 8)?);
            body = offset + 16;
        } else if size == 0 {
            size = ends.size.checked_sub(offset)?;
        }
        if size < body - offset {
            return None;
        }
        if &header[4..8] == b"moov" {
            return mvhd(ends, body, offset + size);
        }
        offset = offset.checked_add(size)?;
        if offset >= ends.size {
            return None;
        }
    }
    None
}

fn mvhd(ends: &Ends<'_>, mut offset: u64, end: u64) -> Option<i64> {
    for _ in 0..16 {
        if offset + 8 > end {
            return None;
        }
        let header = ends.at(offset, 8)?;
        let size = be32(&header[..4]);
        if &header[4..8] == b"mvhd" {
            let version = *ends.at(offset + 8, 1)?.first()?;
            let (timescale, duration) = if version == 1 {
                let b = ends.at(offset + 12, 28)?;
                (be32(&b[16..20]), be64(&b[20..28]))
            } else {
                let b = ends.at(offset + 12, 16)?;
                (be32(&b[8..12]), be32(&b[12..16]))
            };
            if timescale == 0 || duration == u64::MAX || duration == u64::from(u32::MAX) {
                return None;
            }
            return i64::try_from(u128::from(duration) * 1000 / u128::from(timescale)).ok();
        }
        if size < 8 {
            return None;
        }
        offset += size;
    }
    None
}

fn wav(head: &[u8], size: u64) -> Option<i64> {
    if head.len() < 12 || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    let mut byte_rate = None;
    while at + 8 <= head.len() {
        let id = &head[at..at + 4];
        let len = le32(&head[at + 4..at + 8]);
        if id == b"fmt " && at + 16 <= head.len() {
            byte_rate = Some(le32(head.get(at + 16..at + 20)?));
        }
        if id == b"data" {
            let rate = byte_rate.filter(|r| *r > 0)?;
            let data_start = (at + 8) as u64;
            // Streaming writers leave the size at 0 or 0xFFFFFFFF: the rest of the file.
            let len = if len == 0 || len == u64::from(u32::MAX) {
                size.saturating_sub(data_start)
            } else {
                len.min(size.saturating_sub(data_start))
            };
            return i64::try_from(u128::from(len) * 1000 / u128::from(rate)).ok();
        }
        at = at.checked_add(8 + usize::try_from(len).ok()? + (len as usize & 1))?;
    }
    None
}

fn ogg(head: &[u8], tail: &[u8]) -> Option<i64> {
    if head.len() < 28 || &head[..4] != b"OggS" {
        return None;
    }
    let segments = usize::from(head[26]);
    let packet = head.get(27 + segments..)?;
    let (rate, skip) = if packet.starts_with(b"OpusHead") {
        let skip = u64::from(u16::from_le_bytes([*packet.get(10)?, *packet.get(11)?]));
        (48_000u64, skip)
    } else if packet.starts_with(b"\x01vorbis") {
        (le32(packet.get(12..16)?), 0)
    } else {
        return None;
    };
    if rate == 0 {
        return None;
    }
    // The last page that starts in the tail carries the final granule position.
    let at = tail.windows(4).rposition(|w| w == b"OggS")?;
    let granule = tail.get(at + 6..at + 14)?;
    let granule = u64::from_le_bytes(granule.try_into().ok()?);
    if granule == u64::MAX {
        return None;
    }
    i64::try_from(u128::from(granule.saturating_sub(skip)) * 1000 / u128::from(rate)).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn mp4_with_moov_after_the_media_data() {
        let mut mvhd = vec![0u8; 4 + 8];
        mvhd.extend_from_slice(&1000u32.to_be_bytes());
        mvhd.extend_from_slice(&2500u32.to_be_bytes());
        mvhd.extend_from_slice(&[0u8; 80]);
        let mut file = boxed(b"ftyp", b"M4A \0\0\0\0M4A mp42");
        file.extend(boxed(b"mdat", &vec![7u8; 600 * 1024]));
        file.extend(boxed(b"moov", &boxed(b"mvhd", &mvhd)));
        let size = file.len() as u64;
        let ends = Ends {
            head: &file[..HEAD_BYTES],
            tail: &file[file.len() - TAIL_BYTES..],
            size,
        };
        assert_eq!(duration_ms("audio/mp4", &ends), Some(2500));
    }

    #[test]
    fn wav_from_its_byte_rate() {
        let mut file = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        file.extend_from_slice(&16u32.to_le_bytes());
        file.extend_from_slice(&[1, 0, 1, 0]);
        file.extend_from_slice(&8000u32.to_le_bytes());
        file.extend_from_slice(&16000u32.to_le_bytes());
        file.extend_from_slice(&[2, 0, 16, 0]);
        file.extend_from_slice(b"data");
        file.extend_from_slice(&24000u32.to_le_bytes());
        file.extend(vec![0u8; 24000]);
        let ends = Ends {
            head: &file,
            tail: &file,
            size: file.len() as u64,
        };
        assert_eq!(duration_ms("audio/wav", &ends), Some(1500));
    }

    #[test]
    fn garbage_has_no_duration() {
        let junk = vec![0xffu8; 100];
        let ends = Ends {
            head: &junk,
            tail: &junk,
            size: 100,
        };
        for mime in ["audio/mp4", "audio/wav", "audio/ogg", "audio/mpeg"] {
            assert_eq!(duration_ms(mime, &ends), None);
        }
    }
}
