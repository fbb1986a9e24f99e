//! JWT parsing and verification. The first byte picks the shape: raw text handed to the
//! verifier (header, base64 and signature checks), or arbitrary claims signed with the right
//! key so that the claim extraction behind the signature check is reached too.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use switchboard::auth::tokens::TokenKeys;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret-0123";

fn keys() -> &'static TokenKeys {
    static KEYS: std::sync::OnceLock<TokenKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| TokenKeys::new(SECRET))
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        // Signed claims (any bytes), HS256 header.
        1 => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
        // Signed header and claims, split at the first 0xff.
        _ => {
            let mut parts = rest.splitn(2, |b| *b == 0xff);
            let header = parts.next().unwrap_or_default();
            let claims = parts.next().unwrap_or_default();
            signed(header, claims)
        }
    };
    if let Ok(verified) = keys().verify(&token) {
        assert!(
            verified.user_id.id().is_none_or(|id| id > 0),
            "a verified token names a positive user id or a legacy one"
        );
    }
});

fn signed(header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64URL.encode(tag.as_ref()))
}
