//! Agora AccessToken2 cross-check: Switchboard's builder against the official `agora-token` npm
//! package (2.0.6, installed in tests/clients by scripts/test.sh) on random inputs — the
//! decompressed payloads, signatures included, must be byte-for-byte equal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use switchboard::realtime::call::agora::RtcToken;

fn inflate(token: &str) -> Vec<u8> {
    assert!(token.starts_with("007"), "{token}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&token[3..])
        .unwrap();
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    switchboard::auth::tokens::random_bytes(&mut b).unwrap();
    u32::from_le_bytes(b)
}

fn hex32() -> String {
    let mut b = [0u8; 16];
    switchboard::auth::tokens::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn tokens_match_the_official_agora_token_package_on_random_inputs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    assert!(
        dir.join("node_modules/agora-token").exists(),
        "agora-token is not installed: run `npm ci` in tests/clients (scripts/test.sh does)"
    );
    let cases: Vec<Value> = (0..50)
        .map(|i| {
            let privileges: Vec<(u16, u32)> = match i % 3 {
                0 => vec![(1, random_u32() % 100_000)],
                1 => RtcToken::publisher(random_u32() % 86_400)
                    .into_iter()
                    .collect(),
                _ => vec![(1, 3600), (3, 60)],
            };
            json!({
                "appId": hex32(),
                "appCertificate": hex32(),
                "issueTs": random_u32() % 2_000_000_000,
                "expire": random_u32() % 1_000_000,
                "salt": random_u32() % 99_999_999 + 1,
                "channel": format!("channel-{}-{}", i, hex32()),
                "uid": if i % 7 == 0 { 0 } else { random_u32() },
                "privileges": privileges,
            })
        })
        .collect();
    let mut child = Command::new("node")
        .arg("agora-tokens.js")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(cases.clone()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), cases.len());
    for (case, their) in cases.iter().zip(&theirs) {
        let ours = RtcToken {
            app_id: case["appId"].as_str().unwrap(),
            app_certificate: case["appCertificate"].as_str().unwrap(),
            channel: case["channel"].as_str().unwrap(),
            uid: u32::try_from(case["uid"].as_u64().unwrap()).unwrap(),
            issue_ts: u32::try_from(case["issueTs"].as_u64().unwrap()).unwrap(),
            expire: u32::try_from(case["expire"].as_u64().unwrap()).unwrap(),
            salt: u32::try_from(case["salt"].as_u64().unwrap()).unwrap(),
            privileges: case["privileges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        u16::try_from(p[0].as_u64().unwrap()).unwrap(),
                        u32::try_from(p[1].as_u64().unwrap()).unwrap(),
                    )
                })
                .collect(),
        }
        .build()
        .unwrap();
        assert_eq!(
            inflate(&ours),
            inflate(their),
            "payload and signature differ for {case}"
        );
    }
}
