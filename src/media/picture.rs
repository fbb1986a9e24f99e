//! Uploaded images: size checked from the header before anything is decoded (decompression
//! bombs), metadata removed without re-encoding (EXIF with its GPS position, XMP, IPTC,
//! comments, text chunks), and a thumbnail.
//!
//! The stored copy keeps the picture data byte for byte. A JPEG's EXIF orientation is the one
//! piece of metadata carried over, as a minimal EXIF block of its own: without it a phone photo
//! taken upright would show on its side.

use image::{ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Why an image was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Wider, taller or larger (pixels) than allowed.
    TooLarge(String),
    /// Not a well-formed file of its type.
    Malformed(String),
}

/// A processed image.
#[derive(Debug)]
pub(crate) struct Processed {
    /// The file to store: the upload without its metadata.
    pub stored: Vec<u8>,
    /// Width as shown (after the EXIF orientation).
    pub width: u32,
    /// Height as shown.
    pub height: u32,
    /// The thumbnail and its content type.
    pub thumbnail: Option<(Vec<u8>, &'static str)>,
}

/// Limits on what is decoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Most pixels (width × height).
    pub max_pixels: u64,
    /// Longest side of the thumbnail.
    pub thumbnail_px: u32,
}

fn format_of(mime: &str) -> Option<ImageFormat> {
    match mime {
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Checks, strips and thumbnails an image of type `mime` (CPU work: run it off the event loop).
pub(crate) fn process(bytes: &[u8], mime: &str, bounds: Bounds) -> Result<Processed, Refusal> {
    let format =
        format_of(mime).ok_or_else(|| Refusal::Malformed(format!("{mime} is not an image")))?;
    // Only the header is read here; the size is checked against MEDIA_MAX_IMAGE_PIXELS below.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let (width, height) = reader.into_dimensions().map_err(refusal)?;
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(Refusal::Malformed("the image has no pixels".into()));
    }
    if pixels > bounds.max_pixels {
        return Err(Refusal::TooLarge(format!(
            "the image is {width}×{height} pixels; at most {} pixels are accepted",
            bounds.max_pixels
        )));
    }
    let (stored, orientation) = match format {
        ImageFormat::Jpeg => strip_jpeg(bytes)?,
        ImageFormat::Png => (strip_png(bytes)?, 1),
        ImageFormat::WebP => (strip_webp(bytes)?, 1),
        _ => (strip_gif(bytes)?, 1),
    };
    let (width, height) = if orientation >= 5 {
        (height, width)
    } else {
        (width, height)
    };
    let thumbnail = thumbnail(&stored, format, orientation, bounds, pixels)?;
    Ok(Processed {
        stored,
        width,
        height,
        thumbnail,
    })
}

/// A JPEG thumbnail (PNG when the picture has transparency) no larger than the bounds.
fn thumbnail(
    bytes: &[u8],
    format: ImageFormat,
    orientation: u8,
    bounds: Bounds,
    pixels: u64,
) -> Result<Option<(Vec<u8>, &'static str)>, Refusal> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Room for the decoded frame (RGBA, 16 bits per channel at most) and nothing more.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(16 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(refusal)?;
    let color = decoder.color_type();
    let mut picture = image::DynamicImage::from_decoder(decoder).map_err(refusal)?;
    if let Some(o) = image::metadata::Orientation::from_exif(orientation) {
        picture.apply_orientation(o);
    }
    let side = bounds.thumbnail_px;
    let small = if picture.width() > side || picture.height() > side {
        picture.thumbnail(side, side)
    } else {
        picture
    };
    let mut out = Cursor::new(Vec::new());
    let (result, mime) = if color.has_alpha() {
        (
            small.to_rgba8().write_to(&mut out, ImageFormat::Png),
            "image/png",
        )
    } else {
        let rgb = small.to_rgb8();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        (rgb.write_with_encoder(encoder), "image/jpeg")
    };
    result.map_err(|e| Refusal::Malformed(format!("the thumbnail could not be written: {e}")))?;
    Ok(Some((out.into_inner(), mime)))
}

fn refusal(e: image::ImageError) -> Refusal {
    match e {
        image::ImageError::Limits(l) => {
            Refusal::TooLarge(format!("the image is too large to decode: {l}"))
        }
        other => Refusal::Malformed(format!("the image could not be read: {other}")),
    }
}

fn malformed(what: &str) -> Refusal {
    Refusal::Malformed(format!("the file is not a well-formed {what}"))
}

/// The JPEG without APP1 (EXIF, XMP), APP13 (IPTC), other application segments and comments;
/// JFIF, ICC profiles and Adobe colour markers stay. Returns the EXIF orientation (1 when none),
/// which is written back as a minimal EXIF block.
fn strip_jpeg(bytes: &[u8]) -> Result<(Vec<u8>, u8), Refusal> {
    if bytes.len() < 4 || bytes[0] != 0xff || bytes[1] != 0xd8 {
        return Err(malformed("JPEG"));
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut orientation = 1u8;
    let mut at = 2usize;
    let mut finished = false;
    while at < bytes.len() {
        if bytes[at] != 0xff {
            return Err(malformed("JPEG"));
        }
        // Fill bytes before a marker.
        while at + 1 < bytes.len() && bytes[at + 1] == 0xff {
            at += 1;
        }
        let marker = *bytes.get(at + 1).ok_or_else(|| malformed("JPEG"))?;
        match marker {
            0xd9 => {
                kept.push(&bytes[at..at + 2]);
                finished = true;
                break;
            }
            0x01 | 0xd0..=0xd7 => {
                kept.push(&bytes[at..at + 2]);
                at += 2;
                continue;
            }
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(at + 2).ok_or_else(|| malformed("JPEG"))?,
            *bytes.get(at + 3).ok_or_else(|| malformed("JPEG"))?,
        ]));
        let end = at + 2 + len;
        if len < 2 || end > bytes.len() {
            return Err(malformed("JPEG"));
        }
        let segment = &bytes[at..end];
        let body = &bytes[at + 4..end];
        let keep = match marker {
            0xe0 => body.starts_with(b"JFIF\0") || body.starts_with(b"JFXX\0"),
            0xe1 => {
                if body.starts_with(b"Exif\0\0") {
                    if let Some(o) = exif_orientation(&body[6..]) {
                        orientation = o;
                    }
                }
                false
            }
            0xe2 => body.starts_with(b"ICC_PROFILE\0"),
            0xee => body.starts_with(b"Adobe"),
            0xe3..=0xed | 0xef | 0xfe => false,
            _ => true,
        };
        if keep {
            kept.push(segment);
        }
        at = end;
        if marker == 0xda {
            // Entropy-coded data up to the next marker that is not a stuffed 0xFF00 or a restart.
            let start = at;
            while at + 1 < bytes.len() {
                if bytes[at] == 0xff
                    && bytes[at + 1] != 0
                    && !(0xd0..=0xd7).contains(&bytes[at + 1])
                {
                    break;
                }
                at += 1;
            }
            if at + 1 >= bytes.len() {
                at = bytes.len();
            }
            kept.push(&bytes[start..at]);
        }
    }
    if !finished {
        // A truncated file still shows (decoders pad it); nothing after its data is kept.
        kept.push(&[0xff, 0xd9]);
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&[0xff, 0xd8]);
    let mut rest = kept.into_iter().peekable();
    // JFIF must come first; the orientation block follows it.
    if let Some(first) = rest.peek() {
        if first.get(1) == Some(&0xe0) {
            out.extend_from_slice(first);
            rest.next();
        }
    }
    if (2..=8).contains(&orientation) {
        out.extend_from_slice(&orientation_block(orientation));
    }
    for part in rest {
        out.extend_from_slice(part);
    }
    Ok((out, orientation))
}

/// The Orientation tag (0x0112) of an EXIF TIFF structure's first IFD.
fn exif_orientation(tiff: &[u8]) -> Option<u8> {
    let little = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = tiff.get(at..at + 2)?;
        Some(if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = tiff.get(at..at + 4)?;
        Some(if little {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count.min(512)).find_map(|i| {
        let entry = ifd + 2 + i * 12;
        (u16_at(entry)? == 0x0112 && u16_at(entry + 2)? == 3)
            .then(|| u16_at(entry + 8))
            .flatten()
            .and_then(|v| u8::try_from(v).ok())
            .filter(|v| (1..=8).contains(v))
    })
}

/// An APP1 segment holding an EXIF block with the Orientation tag alone.
fn orientation_block(orientation: u8) -> Vec<u8> {
    let mut out = vec![0xff, 0xe1, 0, 34];
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(b"MM\0*\0\0\0\x08");
    out.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0]);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// The PNG without text (`tEXt`, `zTXt`, `iTXt`), EXIF (`eXIf`) and time (`tIME`) chunks.
fn strip_png(bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        return Err(malformed("PNG"));
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(SIGNATURE);
    let mut at = SIGNATURE.len();
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let end = at + 12 + usize::try_from(len).map_err(|_| malformed("PNG"))?;
        if end > bytes.len() {
            return Err(malformed("PNG"));
        }
        let kind = &bytes[at + 4..at + 8];
        if !matches!(kind, b"tEXt" | b"zTXt" | b"iTXt" | b"eXIf" | b"tIME") {
            out.extend_from_slice(&bytes[at..end]);
        }
        at = end;
        if kind == b"IEND" {
            return Ok(out);
        }
    }
    Err(malformed("PNG"))
}

/// The WebP without its `EXIF` and `XMP ` chunks (and their flags in `VP8X`).
fn strip_webp(bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err(malformed("WebP"));
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let len = usize::try_from(len).map_err(|_| malformed("WebP"))?;
        let end = at + 8 + len + (len & 1);
        if at + 8 + len > bytes.len() {
            return Err(malformed("WebP"));
        }
        let end = end.min(bytes.len());
        let kind = &bytes[at..at + 4];
        match kind {
            b"EXIF" | b"XMP " => {}
            b"VP8X" if len >= 1 => {
                let start = out.len();
                out.extend_from_slice(&bytes[at..end]);
                // Flags: bit 3 EXIF, bit 2 XMP.
                out[start + 8] &= !0b0000_1100;
            }
            _ => out.extend_from_slice(&bytes[at..end]),
        }
        at = end;
    }
    let riff = u32::try_from(out.len() - 8).map_err(|_| malformed("WebP"))?;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    Ok(out)
}

/// The GIF without comment extensions and application extensions other than the loop count.
fn strip_gif(bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
    if bytes.len() < 13 || !(bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) {
        return Err(malformed("GIF"));
    }
    let flags = bytes[10];
    let mut at = 13usize;
    if flags & 0x80 != 0 {
        at += 3 << ((flags & 0x07) + 1);
    }
    let mut out = bytes.get(..at).ok_or_else(|| malformed("GIF"))?.to_vec();
    // Sub-blocks from `from` up to and including the zero terminator: the end offset.
    let sub_blocks = |mut from: usize| -> Result<usize, Refusal> {
        loop {
            let n = usize::from(*bytes.get(from).ok_or_else(|| malformed("GIF"))?);
            from += 1 + n;
            if n == 0 {
                return Ok(from);
            }
        }
    };
    loop {
        match bytes.get(at).copied() {
            Some(0x3b) | None => {
                out.push(0x3b);
                return Ok(out);
            }
            Some(0x21) => {
                let label = *bytes.get(at + 1).ok_or_else(|| malformed("GIF"))?;
                let end = sub_blocks(at + 2)?;
                let drop = match label {
                    0xfe => true,
                    0xff => bytes.get(at + 3..at + 14) != Some(b"NETSCAPE2.0"),
                    _ => false,
                };
                if !drop {
                    out.extend_from_slice(bytes.get(at..end).ok_or_else(|| malformed("GIF"))?);
                }
                at = end;
            }
            Some(0x2c) => {
                let descriptor = bytes.get(at..at + 10).ok_or_else(|| malformed("GIF"))?;
                let mut end = at + 10;
                if descriptor[9] & 0x80 != 0 {
                    end += 3 << ((descriptor[9] & 0x07) + 1);
                }
                // LZW minimum code size, then the data sub-blocks.
                let end = sub_blocks(end + 1)?;
                out.extend_from_slice(bytes.get(at..end).ok_or_else(|| malformed("GIF"))?);
                at = end;
            }
            Some(_) => return Err(malformed("GIF")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 30]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// An EXIF APP1 with Orientation 6 and a GPS IFD pointer plus a description.
    fn with_exif(jpeg: &[u8]) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
        tiff.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0, 38, 0, 0, 0]);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&[1, 0, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0]);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        tiff.extend_from_slice(b"SECRET-PLACE");
        let mut app1 = vec![0xff, 0xe1];
        app1.extend_from_slice(&((tiff.len() + 8) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    const BOUNDS: Bounds = Bounds {
        max_pixels: 40_000_000,
        thumbnail_px: 64,
    };

    #[test]
    fn jpeg_loses_exif_but_keeps_its_orientation() {
        let original = with_exif(&jpeg(100, 40));
        assert_eq!(exif_orientation(&original[12..]), Some(6));
        let done = process(&original, "image/jpeg", BOUNDS).unwrap();
        let text = String::from_utf8_lossy(&done.stored);
        assert!(!text.contains("SECRET-PLACE"));
        assert!(!done
            .stored
            .windows(2)
            .any(|w| w == [0x25, 0x88] || w == [0x88, 0x25]));
        assert!(done.stored.windows(6).any(|w| w == b"Exif\0\0"));
        // Orientation 6 turns it a quarter: 40 wide, 100 high.
        assert_eq!((done.width, done.height), (40, 100));
        let (thumb, mime) = done.thumbnail.unwrap();
        assert_eq!(mime, "image/jpeg");
        let t = image::load_from_memory(&thumb).unwrap();
        assert_eq!((t.width(), t.height()), (26, 64));
        // What is stored still decodes to the same picture.
        let back = image::load_from_memory(&done.stored).unwrap();
        assert_eq!((back.width(), back.height()), (100, 40));
    }

    #[test]
    fn png_loses_its_text_chunks() {
        let img = image::RgbaImage::from_pixel(8, 8, image::Rgba([1, 2, 3, 128]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        let png = out.into_inner();
        // A tEXt chunk before IEND (CRC left as zeros: decoders here do not need it).
        let mut with_text = png[..png.len() - 12].to_vec();
        with_text.extend_from_slice(&13u32.to_be_bytes());
        with_text.extend_from_slice(b"tEXtComment\0hello");
        with_text.extend_from_slice(&[0, 0, 0, 0]);
        with_text.extend_from_slice(&png[png.len() - 12..]);
        let stripped = strip_png(&with_text).unwrap();
        assert_eq!(stripped, png);
    }

    #[test]
    fn a_bomb_is_refused_from_its_header() {
        // A PNG header claiming 100 000 × 100 000 pixels.
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut ihdr = 100_000u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]);
        chunk(&mut png, b"IEND", &[]);
        let result = process(&png, "image/png", BOUNDS);
        assert!(matches!(result, Err(Refusal::TooLarge(_))), "{result:?}");
    }

    #[test]
    fn broken_files_are_refused() {
        assert!(matches!(
            process(b"\xff\xd8\xff\xe1\xff\xff", "image/jpeg", BOUNDS),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            strip_gif(b"GIF89a\x01\0\x01\0\0\0\0\x21\xfe\x05ab"),
            Err(Refusal::Malformed(_))
        ));
    }
}
