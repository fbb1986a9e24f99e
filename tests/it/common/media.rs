//! Helpers of the media tests: multipart bodies as clients write them, uploads, downloads and
//! real files (JPEG with a phone's EXIF, PNG, WAV).

use super::TestServer;
use serde_json::{json, Value};
use std::io::Cursor;

pub const BOUNDARY: &str = "----switchboard-test-boundary-7MA4YWxkTrZu0gW";

/// A `multipart/form-data` body with a text field and the `file` part, as a browser's
/// `FormData` or Flutter's `http.MultipartRequest` writes it.
pub fn form(filename: &str, declared_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhello\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: {declared_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub async fn post_form(
    srv: &TestServer,
    token: &str,
    filename: &str,
    declared: &str,
    bytes: &[u8],
) -> (u16, Value) {
    post_body(
        srv,
        token,
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        &[],
        form(filename, declared, bytes),
    )
    .await
}

pub async fn post_body(
    srv: &TestServer,
    token: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = srv
        .client
        .post(srv.url("/api/media"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Content-Type", content_type.to_owned()));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = req.send_body(body).await.expect("upload sent");
    let status = res.status().as_u16();
    let bytes = res.body().limit(1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(json!({"text": String::from_utf8_lossy(&bytes)})),
    )
}

/// GET `url` (absolute, or a path on the server) with optional headers: status, headers, body.
pub async fn fetch(
    srv: &TestServer,
    url: &str,
    headers: &[(&str, String)],
) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
    let url = if url.starts_with('/') {
        srv.url(url)
    } else {
        url.to_owned()
    };
    let mut req = srv.client.get(url);
    for (k, v) in headers {
        req = req.insert_header((*k, v.clone()));
    }
    let mut res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let head = res.headers().clone();
    let body = res.body().limit(64 << 20).await.unwrap().to_vec();
    (status, head, body)
}

pub fn header<'a>(h: &'a awc::http::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A phone photo's EXIF: Orientation 6 (turned a quarter), an ImageDescription, and a GPS IFD
/// with the latitude and longitude of a place.
pub fn with_gps_exif(jpeg: &[u8]) -> Vec<u8> {
    // Little-endian TIFF. IFD0 at 8: 3 entries; GPS IFD after it.
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    let ifd0_len = 2 + 3 * 12 + 4;
    let description_at = 8 + ifd0_len;
    let description = b"SECRET-PLACE: 48.8584 N 2.2945 E\0";
    let gps_at = description_at + description.len();
    t.extend_from_slice(&3u16.to_le_bytes());
    t.extend_from_slice(&[0x0e, 0x01, 2, 0]);
    t.extend_from_slice(&(description.len() as u32).to_le_bytes());
    t.extend_from_slice(&(description_at as u32).to_le_bytes());
    t.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
    t.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0]);
    t.extend_from_slice(&(gps_at as u32).to_le_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(description);
    // GPS IFD: LatitudeRef 'N', Latitude (3 rationals), LongitudeRef 'E', Longitude.
    let gps_len = 2 + 4 * 12 + 4;
    let lat_at = gps_at + gps_len;
    let lon_at = lat_at + 24;
    t.extend_from_slice(&4u16.to_le_bytes());
    t.extend_from_slice(&[1, 0, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0]);
    t.extend_from_slice(&[2, 0, 5, 0, 3, 0, 0, 0]);
    t.extend_from_slice(&(lat_at as u32).to_le_bytes());
    t.extend_from_slice(&[3, 0, 2, 0, 2, 0, 0, 0, b'E', 0, 0, 0]);
    t.extend_from_slice(&[4, 0, 5, 0, 3, 0, 0, 0]);
    t.extend_from_slice(&(lon_at as u32).to_le_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    for (n, d) in [
        (48u32, 1u32),
        (51, 1),
        (3024, 100),
        (2, 1),
        (17, 1),
        (4020, 100),
    ] {
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&d.to_le_bytes());
    }
    let mut app1 = vec![0xff, 0xe1];
    app1.extend_from_slice(&((t.len() + 8) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&t);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(width, height, image::Rgba([10, 200, 30, 255]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `seconds` of 8 kHz 16-bit mono silence-ish as WAV.
pub fn wav(seconds: u32) -> Vec<u8> {
    let data_len = 16_000 * seconds;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&[1, 0, 1, 0]);
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&[2, 0, 16, 0]);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend((0..data_len).map(|i| (i % 251) as u8));
    out
}
