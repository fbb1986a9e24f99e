//! The media store on S3: the same uploads, downloads, ranges, refusals and clean-up against a
//! real S3-compatible server (moto's, from PyPI; scripts/test.sh installs it and names it in
//! MOTO_SERVER_BIN). Without one the tests say so and pass nothing off as tested.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use crate::common::media::*;
use crate::common::{code, TestServer, WsClient};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A moto S3 server on a free port with one bucket; stopped on drop.
struct S3 {
    child: Child,
    endpoint: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn s3() -> Option<S3> {
    let bin = std::env::var("MOTO_SERVER_BIN").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = match Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var("MOTO_SERVER_BIN").is_err(),
                "MOTO_SERVER_BIN={bin} does not start: {e}"
            );
            eprintln!(
                "NOT TESTED: no S3-compatible server ({bin}: {e}); scripts/test.sh installs one"
            );
            return None;
        }
    };
    let server = S3 {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let client = awc::Client::default();
    for _ in 0..200 {
        if let Ok(res) = client
            .put(format!("{}/switchboard-media", server.endpoint))
            .send()
            .await
        {
            assert!(
                res.status().is_success(),
                "bucket not created: {}",
                res.status()
            );
            return Some(server);
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not answer on {}", server.endpoint);
}

async fn s3_server(s3: &S3, tweak: impl FnOnce(&mut switchboard::config::Config)) -> TestServer {
    let endpoint = s3.endpoint.clone();
    TestServer::start_with(move |c| {
        c.media_store = switchboard::config::MediaStore::S3;
        c.media_s3_bucket = "switchboard-media".into();
        c.media_s3_endpoint = endpoint;
        c.media_s3_access_key_id = "test".into();
        c.media_s3_secret_access_key = switchboard::config::Secret::new("test");
        tweak(c);
    })
    .await
}

#[actix_rt::test]
async fn uploads_reads_and_clean_up_on_s3() {
    let Some(s3) = s3().await else { return };
    let srv = s3_server(&s3, |c| {
        c.media_gc_grace = Duration::ZERO;
        c.max_upload_bytes_document = 2 << 20;
    })
    .await;
    assert!(srv.running.state.media.local_dir.is_none());
    let alice = srv.create_user("Alice", "alice@example.com", None, &[]);
    let bob = srv.create_user("Bob", "bob@example.com", None, &[]);
    let ta = srv.token_for(alice);
    // An image: stripped, thumbnailed, stored in the bucket.
    let (status, photo) = post_form(
        &srv,
        &ta,
        "p.jpg",
        "image/jpeg",
        &with_gps_exif(&jpeg(300, 200)),
    )
    .await;
    assert_eq!(status, 201, "{photo}");
    let (status, _, bytes) = fetch(&srv, photo["url"].as_str().unwrap(), &[]).await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&bytes).contains("SECRET-PLACE"));
    assert_eq!(sha256_hex(&bytes), photo["sha256"]);
    assert_eq!(
        fetch(&srv, photo["thumbnailUrl"].as_str().unwrap(), &[])
            .await
            .0,
        200
    );
    // A voice note of 12 MB goes up as a multipart upload (several 5 MB parts).
    let note = wav(750);
    assert!(note.len() > 11 << 20);
    let (status, voice) = post_body(
        &srv,
        &ta,
        "audio/wav",
        &[("X-Filename", "long.wav")],
        note.clone(),
    )
    .await;
    assert_eq!(status, 201, "{voice}");
    assert_eq!(voice["durationMs"], 750_000);
    assert_eq!(voice["sha256"], sha256_hex(&note));
    let url = voice["url"].as_str().unwrap();
    let at = 7 << 20;
    let (status, h, part) =
        fetch(&srv, url, &[("Range", format!("bytes={at}-{}", at + 999))]).await;
    assert_eq!(status, 206);
    assert_eq!(
        header(&h, "content-range"),
        format!("bytes {at}-{}/{}", at + 999, note.len())
    );
    assert_eq!(part, note[at..at + 1000]);
    let (status, _, whole) = fetch(&srv, url, &[]).await;
    assert_eq!((status, whole.len()), (200, note.len()));
    // Too large: the multipart upload is aborted, nothing is left.
    let mut doc = b"%PDF-1.7\n".to_vec();
    doc.resize(3 << 20, b' ');
    let (status, e) = post_form(&srv, &ta, "big.pdf", "application/pdf", &doc).await;
    assert_eq!((status, code(&e)), (413, "too_large"), "{e}");
    // Clean-up: the photo goes into a message and stays; the voice note is removed.
    let conv = srv.direct(alice, bob);
    let mut wa = WsClient::connect(&srv, &ta).await;
    wa.request(
        "message:send",
        json!({"conversationId": conv.to_string(), "mediaId": photo["id"]}),
    )
    .await
    .unwrap();
    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(srv.running.state.media.collect().await.unwrap(), 1);
    let bearer = vec![("Authorization", format!("Bearer {ta}"))];
    let photo_path = format!("/api/media/{}", photo["id"].as_str().unwrap());
    assert_eq!(fetch(&srv, &photo_path, &bearer).await.0, 200);
    let voice_path = format!("/api/media/{}", voice["id"].as_str().unwrap());
    assert_eq!(fetch(&srv, &voice_path, &bearer).await.0, 404);
    // What the bucket holds: the photo and its thumbnail only.
    let listing = awc::Client::default()
        .get(format!("{}/switchboard-media?list-type=2", s3.endpoint))
        .send()
        .await
        .unwrap()
        .body()
        .limit(1 << 20)
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&listing);
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .collect();
    let id = photo["id"].as_str().unwrap();
    assert_eq!(
        keys,
        vec![format!("media/{id}"), format!("media/{id}.thumb")]
    );
}
