//! Password hashing: PBKDF2-HMAC-SHA256 (ring) with a per-user random salt. The encoded form
//! carries its iteration count, so the count can be raised later without breaking old hashes.

use crate::error::{AppError, AppResult};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;

/// Iterations for new hashes (OWASP's 2023 floor for PBKDF2-HMAC-SHA256).
pub const ITERATIONS: u32 = 600_000;
// New hashes never drop below the 600 000-iteration floor.
const _: () = assert!(ITERATIONS >= 600_000);
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";

/// Hashes `password` with a fresh salt. CPU-heavy: call it off the event loop.
pub fn hash(password: &str) -> AppResult<String> {
    hash_with(password, ITERATIONS)
}

fn hash_with(password: &str, iterations: u32) -> AppResult<String> {
    let rounds =
        NonZeroU32::new(iterations).ok_or_else(|| AppError::internal("zero iterations"))?;
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AppError::internal("system random source failed"))?;
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "{SCHEME}${iterations}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Checks `password` against an encoded hash in constant time. A malformed hash never matches.
/// CPU-heavy: call it off the event loop.
pub fn verify(encoded: &str, password: &str) -> bool {
    let mut parts = encoded.split('$');
    let (Some(SCHEME), Some(iter), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Some(rounds) = iter.parse::<u32>().ok().and_then(NonZeroU32::new) else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(expected)) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &expected,
    )
    .is_ok()
}

/// Burns the same time as a real verification; used when the account does not exist so that
/// response times do not reveal which phones and e-mails are registered.
pub fn verify_dummy(password: &str) {
    const DUMMY: &str =
        "pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let _ = verify(DUMMY, password);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_own_password() {
        let encoded = hash_with("correct horse", 1000).unwrap();
        assert!(encoded.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify(&encoded, "correct horse"));
        assert!(!verify(&encoded, "correct horse "));
    }

    #[test]
    fn same_password_gets_different_salts() {
        assert_ne!(
            hash_with("pw", 1000).unwrap(),
            hash_with("pw", 1000).unwrap()
        );
    }

    #[test]
    fn malformed_hashes_never_match() {
        for bad in [
            "",
            "pbkdf2-sha256$0$AA$AA",
            "md5$1$a$b",
            "pbkdf2-sha256$10$!!$AA",
            "a$b$c$d$e",
        ] {
            assert!(!verify(bad, "pw"), "{bad}");
        }
    }
}
