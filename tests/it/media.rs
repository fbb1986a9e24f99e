//! Media uploads over real HTTP with real files: type sniffing, metadata stripping, thumbnails,
//! size and quota refusals, decompression bombs, signed URLs, range requests, who may read,
//! messages that carry media to the seed apps, the clean-up, and uploads under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::media::*;
use crate::common::puppet::Puppet;
use crate::common::{code, TestServer, WsClient};
use serde_json::{json, Value};
use std::io::Cursor;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pdf(len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n".to_vec();
    out.resize(len, b' ');
    out
}

async fn media_server(tweak: impl FnOnce(&mut switchboard::config::Config)) -> TestServer {
    TestServer::start_with(tweak).await
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("media"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[actix_rt::test]
async fn a_photo_loses_its_gps_position_and_gets_a_thumbnail() {
    let srv = media_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let ta = srv.token_for(alice);
    let original = with_gps_exif(&jpeg(400, 300));
    assert!(String::from_utf8_lossy(&original).contains("SECRET-PLACE"));
    // The client says PNG; the bytes say JPEG.
    let (status, m) = post_form(&srv, &ta, "holiday.png", "image/png", &original).await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["contentType"], "image/jpeg");
    assert_eq!(m["kind"], "image");
    assert_eq!(m["name"], "holiday.png");
    // Orientation 6: shown 300 wide and 400 high.
    assert_eq!(
        (m["width"].as_i64(), m["height"].as_i64()),
        (Some(300), Some(400)),
        "{m}"
    );
    assert!(m["id"].as_str().unwrap().len() == 32);
    // The signed URL works without any header.
    let (status, h, stored) = fetch(&srv, m["url"].as_str().unwrap(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "image/jpeg");
    assert_eq!(header(&h, "x-content-type-options"), "nosniff");
    assert!(header(&h, "content-disposition").starts_with("inline; filename=\"holiday.png\""));
    assert_eq!(
        header(&h, "etag"),
        format!("\"{}\"", m["sha256"].as_str().unwrap())
    );
    assert!(header(&h, "cache-control").contains("max-age="));
    assert_eq!(sha256_hex(&stored), m["sha256"]);
    assert_eq!(stored.len() as i64, m["size"].as_i64().unwrap());
    // No description, no GPS IFD, no coordinates; the orientation is kept.
    let text = String::from_utf8_lossy(&stored);
    assert!(!text.contains("SECRET-PLACE"));
    assert!(
        !stored.windows(2).any(|w| w == [0x25, 0x88]),
        "GPS IFD pointer left"
    );
    assert!(
        !stored.windows(8).any(|w| w == [48, 0, 0, 0, 1, 0, 0, 0]),
        "latitude left"
    );
    let decoded = image::load_from_memory(&stored).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (400, 300));
    let mut decoder = image::ImageReader::new(Cursor::new(&stored))
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    use image::ImageDecoder;
    assert_eq!(
        decoder.orientation().unwrap(),
        image::metadata::Orientation::Rotate90
    );
    let etag = header(&h, "etag").to_owned();
    // The thumbnail: a JPEG, upright, at most 320 on its long side.
    let (status, h, thumb) = fetch(&srv, m["thumbnailUrl"].as_str().unwrap(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "image/jpeg");
    let t = image::load_from_memory(&thumb).unwrap();
    assert_eq!((t.width(), t.height()), (240, 320));
    // With the Authorization header instead of a signature.
    let path = format!("/api/media/{}", m["id"].as_str().unwrap());
    let (status, _, again) = fetch(&srv, &path, &[("Authorization", format!("Bearer {ta}"))]).await;
    assert_eq!(status, 200);
    assert_eq!(again, stored);
    // Conditional GET.
    let (status, _, body) =
        fetch(&srv, m["url"].as_str().unwrap(), &[("If-None-Match", etag)]).await;
    assert_eq!((status, body.len()), (304, 0));
    // Also served at /media (seed 003's routes have no /api prefix).
    let mut res = srv
        .client
        .post(srv.url("/media"))
        .insert_header(("Authorization", format!("Bearer {ta}")))
        .send_body(png(20, 10))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let m2: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(m2["contentType"], "image/png");
    assert_eq!(srv.running.state.engine.metrics.media_uploads("stored"), 2);
}

#[actix_rt::test]
async fn types_come_from_the_bytes_not_from_names_or_headers() {
    let srv = media_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let ta = srv.token_for(alice);
    // A PNG renamed .jpg, sent raw with a lying Content-Type: stored as PNG.
    let (status, m) = post_body(
        &srv,
        &ta,
        "image/jpeg",
        &[("X-Filename", "photo.jpg")],
        png(64, 32),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["contentType"], "image/png");
    assert_eq!(m["name"], "photo.jpg");
    assert_eq!(
        (m["width"].as_i64(), m["height"].as_i64()),
        (Some(64), Some(32))
    );
    let (_, h, _) = fetch(&srv, m["url"].as_str().unwrap(), &[]).await;
    assert_eq!(header(&h, "content-type"), "image/png");
    // HTML posing as an image, in a form and raw.
    let html = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>".to_vec();
    let (status, e) = post_form(&srv, &ta, "cat.png", "image/png", &html).await;
    assert_eq!((status, code(&e)), (415, "unsupported_media_type"), "{e}");
    let (status, e) = post_body(&srv, &ta, "image/gif", &[], html).await;
    assert_eq!((status, code(&e)), (415, "unsupported_media_type"), "{e}");
    // Executables: a Windows PE and a Linux ELF.
    let mut exe = b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff\0\0".to_vec();
    exe.resize(4096, 0);
    let (status, e) = post_form(&srv, &ta, "invoice.pdf", "application/pdf", &exe).await;
    assert_eq!((status, code(&e)), (415, "unsupported_media_type"), "{e}");
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(4096, 0);
    let (status, e) = post_body(&srv, &ta, "audio/mpeg", &[], elf).await;
    assert_eq!((status, code(&e)), (415, "unsupported_media_type"), "{e}");
    // A JPEG header over garbage.
    let mut broken = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0".to_vec();
    broken.extend(std::iter::repeat_n(0x55u8, 3000));
    let (status, e) = post_body(&srv, &ta, "image/jpeg", &[], broken).await;
    assert_eq!((status, code(&e)), (415, "unsupported_media_type"), "{e}");
    // An empty body, a form without `file`, no token.
    let (status, e) = post_body(&srv, &ta, "application/octet-stream", &[], Vec::new()).await;
    assert_eq!((status, code(&e)), (400, "empty_upload"), "{e}");
    let only_caption = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhi\r\n--{BOUNDARY}--\r\n"
    );
    let (status, e) = post_body(
        &srv,
        &ta,
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        &[],
        only_caption.into_bytes(),
    )
    .await;
    assert_eq!((status, code(&e)), (400, "missing_file"), "{e}");
    let mut res = srv
        .client
        .post(srv.url("/api/media"))
        .send_body(png(4, 4))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let _ = res.body().await;
    let metrics = &srv.running.state.engine.metrics;
    assert_eq!(metrics.media_uploads("unsupported_media_type"), 5);
    assert_eq!(metrics.media_uploads("stored"), 1);
}

/// Sends a request head (and a body from `body`, written while the answer is awaited) over a
/// plain socket; returns the status line and how many body bytes were written by then.
async fn raw_upload(srv: &TestServer, head: String, body: Vec<Vec<u8>>) -> (String, usize) {
    let stream = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let sender = actix_rt::spawn(async move {
        for chunk in body {
            let framed = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            if writer.write_all(&framed).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
        // Keep the write half open until the answer was read.
        actix_rt::time::sleep(Duration::from_secs(20)).await;
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), reader.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let at = written.load(std::sync::atomic::Ordering::Relaxed);
    sender.abort();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (text.lines().next().unwrap_or_default().to_owned(), at)
}

#[actix_rt::test]
async fn oversize_uploads_are_refused_without_being_buffered() {
    let srv = media_server(|c| {
        c.max_upload_bytes_document = 1 << 20;
        c.max_upload_bytes_image = 256 << 10;
    })
    .await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let ta = srv.token_for(alice);
    // A declared length beyond every kind's limit (video's is 200 MiB): refused before a
    // byte of the body is sent.
    let head = format!(
        "POST /api/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n\
         Content-Type: application/pdf\r\nContent-Length: 314572800\r\n\r\n"
    );
    let (status, _) = raw_upload(&srv, head, Vec::new()).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    // A chunked body with no length: cut as soon as it passes the PDF limit. 64 MiB are
    // offered; the answer comes long before they could all be taken.
    let mut chunks = vec![pdf(64 << 10)];
    chunks.extend(std::iter::repeat_n(vec![b' '; 64 << 10], 1023));
    let head = format!(
        "POST /api/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (status, written) = raw_upload(&srv, head, chunks).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(
        written < 32 << 20,
        "{written} bytes were taken before the refusal"
    );
    // An image over its own (smaller) limit, with an honest length, in a form.
    let mut big = jpeg(64, 64);
    big.extend(std::iter::repeat_n(0u8, 300 << 10));
    let (status, e) = post_form(&srv, &ta, "big.jpg", "image/jpeg", &big).await;
    assert_eq!((status, code(&e)), (413, "too_large"), "{e}");
    // Nothing half-written is left in the store.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(files_under(&srv.db.media_dir()), Vec::<String>::new());
    assert_eq!(
        srv.running.state.engine.metrics.media_uploads("too_large"),
        3
    );
    // Under the limit it goes through.
    let (status, m) = post_form(&srv, &ta, "ok.pdf", "application/pdf", &pdf(900 << 10)).await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["kind"], "document");
    let (_, h, _) = fetch(&srv, m["url"].as_str().unwrap(), &[]).await;
    assert!(header(&h, "content-disposition").starts_with("attachment; filename=\"ok.pdf\""));
}

#[actix_rt::test]
async fn an_upload_cut_short_leaves_nothing_behind() {
    let srv = media_server(|c| c.media_upload_idle_timeout = Duration::from_secs(1)).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let ta = srv.token_for(alice);
    // A client that drops its connection halfway through a 4 MB voice note, and one that
    // stalls past MEDIA_UPLOAD_IDLE_TIMEOUT_SECS: neither leaves a file, a row or a slot.
    let note = wav(250);
    for (len, then_close) in [(note.len() / 2, true), (note.len() / 3, false)] {
        let mut stream = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        let head = format!(
            "POST /api/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n\
             Content-Type: audio/wav\r\nContent-Length: {}\r\n\r\n",
            note.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&note[..len]).await.unwrap();
        if then_close {
            drop(stream);
        } else {
            let mut buf = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("the stalled upload is answered")
                .unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        }
    }
    assert_eq!(srv.running.state.engine.metrics.media_uploads("timeout"), 1);
    // Staging files of the local store go when their upload is abandoned.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !files_under(&srv.db.media_dir()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            files_under(&srv.db.media_dir())
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: i64 = {
        use diesel::prelude::*;
        diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM media)",
        ))
        .get_result(&mut srv.db.conn())
        .unwrap()
    };
    assert_eq!(rows, 0);
    // The slots were given back: a whole upload still goes through.
    let (status, m) = post_body(&srv, &ta, "audio/wav", &[], note.clone()).await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["size"].as_u64(), Some(note.len() as u64));
}

#[actix_rt::test]
async fn one_user_cannot_take_every_upload_slot() {
    let srv = media_server(|c| {
        c.media_uploads_per_user = 2;
        c.media_uploads_in_flight = 3;
    })
    .await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));
    let note = wav(10);
    // Two uploads of Alice's that are still sending.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        let head = format!(
            "POST /api/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n\
             Content-Type: audio/wav\r\nContent-Length: {}\r\n\r\n",
            note.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&note[..10_000]).await.unwrap();
        open.push(stream);
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    // A third of hers waits its turn; Bob takes the last slot; then the process is full.
    let (status, e) = post_body(&srv, &ta, "audio/wav", &[], note.clone()).await;
    assert_eq!((status, code(&e)), (429, "rate_limited"), "{e}");
    let mut third = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let head = format!(
        "POST /api/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tb}\r\n\
         Content-Type: audio/wav\r\nContent-Length: {}\r\n\r\n",
        note.len()
    );
    third.write_all(head.as_bytes()).await.unwrap();
    third.write_all(&note[..10_000]).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let (status, e) = post_body(&srv, &srv.token_for(carol), "audio/wav", &[], note.clone()).await;
    assert_eq!((status, code(&e)), (503, "overloaded"), "{e}");
    // Finishing one of Alice's frees her slot.
    let mut first = open.remove(0);
    first.write_all(&note[10_000..]).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 201"));
    let (status, m) = post_body(&srv, &ta, "audio/wav", &[], note.clone()).await;
    assert_eq!(status, 201, "{m}");
}

#[actix_rt::test]
async fn a_decompression_bomb_is_refused_from_its_header() {
    let srv = media_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let ta = srv.token_for(alice);
    // 40 000 × 40 000 grey pixels compress to about a megabyte and a half; decoded they would
    // take 1.6 GB (6.4 GB as RGBA). Built row by row straight into zlib, never as pixels.
    let side = 40_000u32;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let row = vec![0u8; 1 + side as usize];
    for _ in 0..side {
        std::io::Write::write_all(&mut z, &row).unwrap();
    }
    let idat = z.finish().unwrap();
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut bomb, b"IHDR", &ihdr);
    chunk(&mut bomb, b"IDAT", &idat);
    chunk(&mut bomb, b"IEND", &[]);
    assert!(bomb.len() < 20 << 20, "{} bytes", bomb.len());
    let started = std::time::Instant::now();
    let (status, e) = post_form(&srv, &ta, "bomb.png", "image/png", &bomb).await;
    assert_eq!((status, code(&e)), (413, "too_large"), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("40000×40000"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(files_under(&srv.db.media_dir()), Vec::<String>::new());
}

#[actix_rt::test]
async fn voice_notes_answer_range_requests() {
    let srv = media_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let ta = srv.token_for(alice);
    let note = wav(3);
    let (status, m) = post_form(&srv, &ta, "note.wav", "application/octet-stream", &note).await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["contentType"], "audio/wav");
    assert_eq!(m["kind"], "audio");
    assert_eq!(m["durationMs"], 3000);
    assert!(
        m.get("thumbnailUrl").is_none() && m.get("width").is_none(),
        "{m}"
    );
    let url = m["url"].as_str().unwrap();
    let size = note.len();
    let (status, h, whole) = fetch(&srv, url, &[]).await;
    assert_eq!((status, whole.len()), (200, size));
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    let etag = header(&h, "etag").to_owned();
    // HEAD: the same headers, the GET's length, no body.
    let mut res = srv.client.head(url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(header(res.headers(), "content-length"), size.to_string());
    assert_eq!(header(res.headers(), "content-type"), "audio/wav");
    assert!(res.body().await.unwrap().is_empty());
    let (status, h, part) = fetch(&srv, url, &[("Range", "bytes=100-199".into())]).await;
    assert_eq!(status, 206);
    assert_eq!(header(&h, "content-range"), format!("bytes 100-199/{size}"));
    assert_eq!(header(&h, "content-length"), "100");
    assert_eq!(part, note[100..200]);
    let (status, h, end) = fetch(&srv, url, &[("Range", "bytes=-44".into())]).await;
    assert_eq!(status, 206);
    assert_eq!(
        header(&h, "content-range"),
        format!("bytes {}-{}/{size}", size - 44, size - 1)
    );
    assert_eq!(end, note[size - 44..]);
    let (status, _, rest) = fetch(&srv, url, &[("Range", format!("bytes={}-", size - 10))]).await;
    assert_eq!((status, rest.as_slice()), (206, &note[size - 10..]));
    let (status, h, _) = fetch(&srv, url, &[("Range", format!("bytes={size}-"))]).await;
    assert_eq!(status, 416);
    assert_eq!(header(&h, "content-range"), format!("bytes */{size}"));
    // If-Range with another validator: the whole file.
    let (status, _, all) = fetch(
        &srv,
        url,
        &[
            ("Range", "bytes=0-9".into()),
            ("If-Range", "\"other\"".into()),
        ],
    )
    .await;
    assert_eq!((status, all.len()), (200, size));
    let (status, _, ten) = fetch(
        &srv,
        url,
        &[("Range", "bytes=0-9".into()), ("If-Range", etag)],
    )
    .await;
    assert_eq!((status, ten.len()), (206, 10));
}

#[actix_rt::test]
async fn only_the_uploader_and_the_conversation_may_read() {
    let srv = media_server(|_| {}).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let mallory = srv.create_user("Mallory", "mallory@example.com", None, &[]);
    let admin = srv.create_user("Ada", "ada@example.com", None, &["admin"]);
    let (ta, tb, tm) = (
        srv.token_for(alice),
        srv.token_for(bob),
        srv.token_for(mallory),
    );
    let (status, m) = post_form(&srv, &ta, "me.jpg", "image/jpeg", &jpeg(50, 50)).await;
    assert_eq!(status, 201, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let path = format!("/api/media/{id}");
    let bearer = |t: &str| vec![("Authorization", format!("Bearer {t}"))];
    // Before any message: the uploader only.
    assert_eq!(fetch(&srv, &path, &bearer(&ta)).await.0, 200);
    for t in [&tb, &tm] {
        let (status, _, body) = fetch(&srv, &path, &bearer(t)).await;
        assert_eq!(status, 404);
        assert_eq!(code(&serde_json::from_slice(&body).unwrap()), "not_found");
    }
    // Admins see what messages carry, not private uploads.
    assert_eq!(
        fetch(&srv, &path, &bearer(&srv.token_for(admin))).await.0,
        404
    );
    // A guessed id, a malformed one, no credentials at all.
    let guessed = format!("/api/media/{}", "0123456789abcdef0123456789abcdef");
    assert_eq!(fetch(&srv, &guessed, &bearer(&ta)).await.0, 404);
    assert_eq!(
        fetch(&srv, "/api/media/..%2F..%2Fetc%2Fpasswd", &bearer(&ta))
            .await
            .0,
        404
    );
    assert_eq!(fetch(&srv, &path, &[]).await.0, 401);
    // A signed URL with its expiry moved, with another id's signature, and an expired one.
    let url = m["url"].as_str().unwrap();
    let (base, query) = url.split_once('?').unwrap();
    let exp: u64 = query.split('&').next().unwrap()[4..].parse().unwrap();
    let sig = query.split("&sig=").nth(1).unwrap();
    let moved = format!("{base}?exp={}&sig={sig}", exp + 3600);
    let (status, _, body) = fetch(&srv, &moved, &[]).await;
    assert_eq!(
        (status, code(&serde_json::from_slice(&body).unwrap())),
        (403, "forbidden")
    );
    let other = format!("{}?exp={exp}&sig={sig}", guessed);
    assert_eq!(fetch(&srv, &other, &[]).await.0, 403);
    let thumb_with_file_sig = format!("{base}/thumbnail?exp={exp}&sig={sig}");
    assert_eq!(fetch(&srv, &thumb_with_file_sig, &[]).await.0, 403);
    let urls = &srv.running.state.media.urls;
    let now = chrono::Utc::now().timestamp() as u64;
    let expired = urls.signed_until(&id, false, now - 5, Some(&srv.url("")));
    let (status, _, body) = fetch(&srv, &expired, &[]).await;
    assert_eq!(
        (status, code(&serde_json::from_slice(&body).unwrap())),
        (403, "link_expired")
    );

    // Mallory cannot attach it anywhere, not even in her own conversation.
    let mallory_bob = srv.direct(mallory, bob);
    let mut wm = WsClient::connect(&srv, &tm).await;
    let refused = wm
        .request(
            "message:send",
            json!({"conversationId": mallory_bob.to_string(), "type": "image", "mediaId": id}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["code"], "not_found", "{refused}");
    let refused = wm
        .request(
            "message:send",
            json!({"conversationId": mallory_bob.to_string(), "mediaUrl": url}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["code"], "not_found", "{refused}");

    // Alice sends it to Bob: now Bob (and admins) may read it; Mallory still not.
    let alice_bob = srv.direct(alice, bob);
    let mut wa = WsClient::connect(&srv, &ta).await;
    let mut wb = WsClient::connect(&srv, &tb).await;
    wb.request(
        "conversation:join",
        json!({"conversationId": alice_bob.to_string()}),
    )
    .await
    .unwrap();
    let sent = wa
        .request(
            "message:send",
            json!({"conversationId": alice_bob.to_string(), "mediaId": id, "clientMessageId": "p1"}),
        )
        .await
        .unwrap();
    assert_eq!(sent["type"], "image", "{sent}");
    let got = wb.expect_event("message:new").await;
    assert_eq!(got["media"]["id"], id.as_str(), "{got}");
    assert_eq!(got["media"]["width"], 50);
    assert_eq!(got["media"]["contentType"], "image/jpeg");
    let media_url = got["mediaUrl"].as_str().unwrap();
    assert_eq!(got["media"]["url"], media_url);
    assert!(
        media_url.starts_with(&format!("/api/media/{id}?exp=")),
        "{media_url}"
    );
    let (status, _, bytes) = fetch(&srv, media_url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&bytes), m["sha256"]);
    assert_eq!(
        fetch(&srv, got["media"]["thumbnailUrl"].as_str().unwrap(), &[])
            .await
            .0,
        200
    );
    assert_eq!(fetch(&srv, &path, &bearer(&tb)).await.0, 200);
    assert_eq!(
        fetch(&srv, &path, &bearer(&srv.token_for(admin))).await.0,
        200
    );
    assert_eq!(fetch(&srv, &path, &bearer(&tm)).await.0, 404);
    // Bob may forward it (he can read it); Mallory, to whom it is forwarded, then can too.
    let fwd = wb
        .request(
            "message:send",
            json!({"conversationId": srv.direct(bob, mallory).to_string(), "type": "file", "mediaUrl": media_url}),
        )
        .await
        .unwrap();
    assert_eq!(fwd["media"]["id"], id.as_str());
    assert_eq!(fetch(&srv, &path, &bearer(&tm)).await.0, 200);
    // History carries fresh signed URLs.
    let (status, page) = srv
        .get(
            &format!("/api/conversations/{alice_bob}/messages"),
            Some(&tb),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let listed = page["messages"]
        .as_array()
        .or_else(|| page["items"].as_array())
        .or_else(|| page.as_array())
        .unwrap_or_else(|| panic!("{page}"));
    let first = listed
        .iter()
        .find(|x| x["media"]["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        fetch(&srv, first["mediaUrl"].as_str().unwrap(), &[])
            .await
            .0,
        200
    );
    // A type that does not fit the upload.
    let (status, note) = post_form(&srv, &ta, "n.wav", "audio/wav", &wav(1)).await;
    assert_eq!(status, 201);
    let mismatch = wa
        .request(
            "message:send",
            json!({"conversationId": alice_bob.to_string(), "type": "image", "mediaId": note["id"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(mismatch["code"], "media_type_mismatch", "{mismatch}");
    let voice = wa
        .request(
            "message:send",
            json!({"conversationId": alice_bob.to_string(), "mediaId": note["id"]}),
        )
        .await
        .unwrap();
    assert_eq!(voice["type"], "audio");
    assert_eq!(voice["media"]["durationMs"], 1000);
}

#[actix_rt::test]
async fn foreign_media_urls_can_be_refused() {
    let srv = media_server(|c| c.media_foreign_urls = false).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let conv = srv.direct(alice, bob);
    let mut wa = WsClient::connect(&srv, &srv.token_for(alice)).await;
    let refused = wa
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "type": "image", "mediaUrl": "https://example.com/x.png"}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["code"], "validation_failed", "{refused}");
    // A path that looks like ours on another host is not ours either.
    let refused = wa
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "mediaUrl": "https://evil.example/api/media/0123456789abcdef0123456789abcdef?exp=1&sig=AAAA"}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["code"], "validation_failed", "{refused}");
}

#[actix_rt::test]
async fn the_quota_counts_what_a_user_keeps() {
    let srv = media_server(|c| c.media_quota_bytes = 100_000).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let ta = srv.token_for(alice);
    let (status, _) = post_form(&srv, &ta, "a.pdf", "application/pdf", &pdf(60_000)).await;
    assert_eq!(status, 201);
    let (status, e) = post_form(&srv, &ta, "b.pdf", "application/pdf", &pdf(60_000)).await;
    assert_eq!((status, code(&e)), (429, "quota_exceeded"), "{e}");
    // Another user has a quota of their own.
    let (status, _) = post_form(
        &srv,
        &srv.token_for(bob),
        "c.pdf",
        "application/pdf",
        &pdf(60_000),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(files_under(&srv.db.media_dir()).len(), 2);
}

#[actix_rt::test]
async fn seed_apps_receive_media_in_their_shapes() {
    let srv = TestServer::start_apps(|_| {}).await;
    let user = srv.create_user("Uma", "uma@example.com", None, &[]);
    let astro = srv.create_user("Astro", "astro@example.com", None, &["astrologer"]);
    let conv = srv.direct(user, astro);
    let (tu, tastro) = (srv.token_for(user), srv.token_for(astro));
    let (status, up) = post_form(&srv, &tu, "chart.jpg", "image/jpeg", &jpeg(80, 60)).await;
    assert_eq!(status, 201, "{up}");

    // Seed 002: the astrology app sends the upload's URL as `mediaUrl`.
    let mut p = Puppet::start(srv.addr_of("astrology"));
    for (name, token) in [("user", &tu), ("astro", &tastro)] {
        p.connect(
            name,
            json!({"auth": {"token": token}, "transports": ["websocket"]}),
        )
        .await;
    }
    for (name, id, kind) in [("user", user, "user"), ("astro", astro, "astrologer")] {
        p.emit(
            name,
            "dm:join_conversation",
            json!([{"conversationId": conv.to_string(), "userId": id.to_string(), "userType": kind}]),
        );
        p.event(name, "dm:joined").await;
    }
    p.emit(
        "user",
        "dm:send_message",
        json!([{"conversationId": conv.to_string(), "recipientId": astro.to_string(), "recipientType": "astrologer",
                "content": "My chart", "messageType": "image", "mediaUrl": up["url"]}]),
    );
    let got = p
        .wait(|v| v["name"] == "astro" && v["event"] == "dm:message_received")
        .await["args"][0]
        .clone();
    assert_eq!(got["messageType"], "image", "{got}");
    assert_eq!(got["content"], "My chart");
    let media_url = got["mediaUrl"].as_str().unwrap();
    assert!(media_url.contains(up["id"].as_str().unwrap()), "{got}");
    assert_eq!(got["media"]["width"], 80);
    let (status, _, bytes) = fetch(&srv, media_url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&bytes), up["sha256"]);

    // Seed 003: Backend1 style (`to`, `text`) with `mediaUrl`; the other app reads it.
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let (ta, tb) = (srv.token_for(alice), srv.token_for(bob));
    let (status, voice) = post_form(&srv, &ta, "hello.wav", "audio/wav", &wav(2)).await;
    assert_eq!(status, 201, "{voice}");
    let mut q = Puppet::start(srv.addr_of("backend2"));
    for (name, token) in [("alice", &ta), ("bob", &tb)] {
        q.connect(
            name,
            json!({"auth": {"token": token}, "transports": ["websocket"], "ackEvents": false}),
        )
        .await;
    }
    srv.direct(alice, bob);
    q.emit(
        "alice",
        "message",
        json!([{"to": bob.to_string(), "text": "", "type": "audio", "mediaUrl": voice["url"]}]),
    );
    let m = q.event("bob", "message").await;
    assert_eq!(m["type"], "audio", "{m}");
    assert!(m["mediaUrl"].is_string(), "{m}");
    assert_eq!(m["media"]["durationMs"], 2000);
    assert_eq!(m["media"]["contentType"], "audio/wav");
    assert_eq!(m["from"], alice.to_string());
    let (status, _, bytes) = fetch(
        &srv,
        m["mediaUrl"].as_str().unwrap(),
        &[("Range", "bytes=0-3".into())],
    )
    .await;
    assert_eq!((status, bytes.as_slice()), (206, &b"RIFF"[..]));
    // REST history in seed 003's shape carries it too.
    let (status, page) = srv
        .call(
            "GET",
            &format!(
                "/messages?conversationId={}",
                m["conversationId"].as_str().unwrap()
            ),
            None,
            Some(&tb),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.to_string().contains(voice["id"].as_str().unwrap()),
        "{page}"
    );
}

#[actix_rt::test]
async fn the_clean_up_removes_what_no_message_uses() {
    let srv = media_server(|c| c.media_gc_grace = Duration::ZERO).await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let ta = srv.token_for(alice);
    let conv = srv.direct(alice, bob);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, m) =
            post_form(&srv, &ta, &format!("{i}.jpg"), "image/jpeg", &jpeg(30, 30)).await;
        assert_eq!(status, 201);
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    let (unused, kept, dropped) = (&ids[0], &ids[1], &ids[2]);
    let mut wa = WsClient::connect(&srv, &ta).await;
    wa.request(
        "message:send",
        json!({"conversationId": conv.to_string(), "mediaId": kept}),
    )
    .await
    .unwrap();
    let gone = wa
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "mediaId": dropped}),
        )
        .await
        .unwrap();
    wa.request("message:delete", json!({"messageId": gone["id"]}))
        .await
        .unwrap();
    // An object a crash left without its row, and a local store's unfinished staging file.
    let dir = srv.db.media_dir().join("media");
    std::fs::write(dir.join("fedcba9876543210fedcba9876543210"), b"orphan").unwrap();
    std::fs::write(dir.join(format!("{unused}#7")), b"partial").unwrap();
    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    let removed = srv.running.state.media.collect().await.unwrap();
    assert_eq!(removed, 2);
    let mut left = files_under(&srv.db.media_dir());
    left.sort();
    assert_eq!(left, vec![kept.clone(), format!("{kept}.thumb")]);
    let bearer = vec![("Authorization", format!("Bearer {ta}"))];
    assert_eq!(
        fetch(&srv, &format!("/api/media/{kept}"), &bearer).await.0,
        200
    );
    for id in [unused, dropped] {
        assert_eq!(
            fetch(&srv, &format!("/api/media/{id}"), &bearer).await.0,
            404
        );
    }
    let body = srv
        .client
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("switchboard_media_removed_total 4"), "{text}");
    let stored_line = text
        .lines()
        .find(|l| l.starts_with("switchboard_media_stored_bytes "))
        .unwrap();
    let stored: u64 = stored_line.split(' ').nth(1).unwrap().parse().unwrap();
    let on_disk: u64 = [kept.clone(), format!("{kept}.thumb")]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
        .sum();
    assert_eq!(stored, on_disk);
}

#[actix_rt::test]
async fn fifty_uploads_at_once_while_messages_keep_flowing() {
    let srv = media_server(|c| {
        c.media_uploads_in_flight = 64;
        c.media_uploads_per_user = 64;
    })
    .await;
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let carol = srv.create_user("Carol", "carol@example.com", None, &[]);
    let conv = srv.direct(alice, bob);
    let (ta, tb, tc) = (
        srv.token_for(alice),
        srv.token_for(bob),
        srv.token_for(carol),
    );
    let photo = with_gps_exif(&jpeg(1200, 900));
    let note = wav(5);
    let uploads = (0..50).map(|i| {
        let (srv, tc, photo, note) = (&srv, &tc, &photo, &note);
        async move {
            if i % 2 == 0 {
                post_form(srv, tc, &format!("p{i}.jpg"), "image/jpeg", photo).await
            } else {
                post_form(srv, tc, &format!("n{i}.wav"), "audio/wav", note).await
            }
        }
    });
    let chat = async {
        let mut wa = WsClient::connect(&srv, &ta).await;
        let mut wb = WsClient::connect(&srv, &tb).await;
        wb.request(
            "conversation:join",
            json!({"conversationId": conv.to_string()}),
        )
        .await
        .unwrap();
        for i in 0..100 {
            wa.request(
                "message:send",
                json!({"conversationId": conv.to_string(), "content": format!("m{i}"), "clientMessageId": format!("c{i}")}),
            )
            .await
            .unwrap();
        }
        let mut seen = 0;
        while seen < 100 {
            let m = wb.expect_event("message:new").await;
            assert_eq!(m["content"], format!("m{seen}"));
            seen += 1;
        }
    };
    let (results, ()) =
        futures_util::future::join(futures_util::future::join_all(uploads), chat).await;
    for (status, body) in &results {
        assert_eq!(*status, 201, "{body}");
    }
    let ids: std::collections::HashSet<_> = results.iter().map(|(_, b)| b["id"].clone()).collect();
    assert_eq!(ids.len(), 50);
    assert_eq!(srv.running.state.engine.metrics.media_uploads("stored"), 50);
}
