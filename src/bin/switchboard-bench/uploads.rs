//! Uploads during a messages run (`--uploaders K`): K threads each post the same file to
//! `POST /api/media` back to back over a kept-alive HTTP/1.1 connection for the send window, so
//! a run shows upload throughput and what concurrent uploads do to message delivery.

use super::report::Latency;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What is uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadKind {
    /// A WAV file: streamed through to the store.
    Audio,
    /// A JPEG photo with EXIF: held, stripped and thumbnailed.
    Image,
}

/// What the uploads measured.
#[derive(Debug, Default, Serialize)]
pub struct Uploads {
    /// Uploading threads.
    pub uploaders: usize,
    /// `audio` or `image`.
    pub kind: String,
    /// Bytes of each upload.
    pub bytes_each: usize,
    /// Uploads answered 201.
    pub completed: u64,
    /// Uploads refused or failed.
    pub failed: u64,
    /// Seconds the uploads ran.
    pub secs: f64,
    /// Stored bytes per second, MB (10^6).
    pub mb_per_sec: f64,
    /// Request written → 201 read.
    pub latency_ms: Latency,
}

/// The file of `kind`, about `bytes` long.
pub fn file(kind: UploadKind, bytes: usize) -> Result<Vec<u8>, String> {
    match kind {
        UploadKind::Audio => {
            let data = bytes.saturating_sub(44).max(1) as u32;
            let mut out = b"RIFF".to_vec();
            out.extend_from_slice(&(36 + data).to_le_bytes());
            out.extend_from_slice(b"WAVEfmt ");
            out.extend_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&[1, 0, 1, 0]);
            out.extend_from_slice(&16_000u32.to_le_bytes());
            out.extend_from_slice(&32_000u32.to_le_bytes());
            out.extend_from_slice(&[2, 0, 16, 0]);
            out.extend_from_slice(b"data");
            out.extend_from_slice(&data.to_le_bytes());
            out.extend((0..data).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
            Ok(out)
        }
        UploadKind::Image => {
            // Noise compresses badly: about 3 bytes per pixel at quality 90.
            let side = ((bytes as f64 / 1.5).sqrt() as u32).max(16);
            let img = image::RgbImage::from_fn(side, side, |x, y| {
                let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7;
                image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            });
            let mut out = std::io::Cursor::new(Vec::new());
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            img.write_with_encoder(encoder)
                .map_err(|e| format!("cannot make the bench photo: {e}"))?;
            Ok(out.into_inner())
        }
    }
}

/// One uploader's figures.
#[derive(Debug)]
pub struct Part {
    completed: u64,
    failed: u64,
    bytes: u64,
    latency: Histogram<u64>,
}

/// Uploads `body` to `addr` (HOST:PORT) with `token` until `end`.
pub fn run(
    addr: &str,
    token: &str,
    body: &[u8],
    start: Instant,
    end: Instant,
) -> Result<Part, String> {
    let mut part = Part {
        completed: 0,
        failed: 0,
        bytes: 0,
        latency: Histogram::new(3).map_err(|e| format!("cannot make a histogram: {e}"))?,
    };
    if let Some(wait) = start.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let head = format!(
        "POST /api/media HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nX-Filename: bench.bin\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn: Option<BufReader<TcpStream>> = None;
    while Instant::now() < end {
        let stream = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    BufReader::new(s)
                }
                Err(_) => {
                    part.failed += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match exchange(stream, head.as_bytes(), body) {
            Ok((status, stream)) => {
                if status == 201 {
                    part.completed += 1;
                    part.bytes += body.len() as u64;
                    let _ = part.latency.record(sent.elapsed().as_micros() as u64);
                } else {
                    part.failed += 1;
                }
                conn = stream;
            }
            Err(_) => part.failed += 1,
        }
    }
    Ok(part)
}

/// Writes one request and reads its answer; gives the status and the connection when it can
/// be used again.
fn exchange(
    mut stream: BufReader<TcpStream>,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<(u16, Option<BufReader<TcpStream>>)> {
    stream.get_mut().write_all(head)?;
    stream.get_mut().write_all(body)?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    let mut close = false;
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest)?;
    Ok((status, (!close).then_some(stream)))
}

/// Adds the parts up.
pub fn summarize(
    parts: Vec<Part>,
    kind: UploadKind,
    bytes_each: usize,
    secs: f64,
) -> Result<Uploads, String> {
    let mut latency =
        Histogram::<u64>::new(3).map_err(|e| format!("cannot make a histogram: {e}"))?;
    let (mut completed, mut failed, mut bytes) = (0, 0, 0);
    let uploaders = parts.len();
    for p in parts {
        completed += p.completed;
        failed += p.failed;
        bytes += p.bytes;
        latency
            .add(&p.latency)
            .map_err(|e| format!("cannot merge histograms: {e}"))?;
    }
    Ok(Uploads {
        uploaders,
        kind: match kind {
            UploadKind::Audio => "audio",
            UploadKind::Image => "image",
        }
        .into(),
        bytes_each,
        completed,
        failed,
        secs,
        mb_per_sec: bytes as f64 / 1e6 / secs.max(1e-9),
        latency_ms: Latency::from_micros(&latency),
    })
}
