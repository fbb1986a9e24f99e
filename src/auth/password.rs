//! Password hashing: PBKDF2-HMAC-SHA256 (ring) with a per-user random salt. The encoded form
//! carries its iteration count, so the count can be raised later without breaking old hashes.
//!
//! Accounts imported from the legacy backends keep their bcrypt hashes (`$2a$`, `$2b$`, `$2y$`)
//! until their first login, which replaces them with the current scheme.

use crate::error::{AppError, AppResult};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;

/// Iterations for new hashes (OWASP's 2023 floor for PBKDF2-HMAC-SHA256).
pub(crate) const ITERATIONS: u32 = 600_000;
// New hashes never drop below the 600 000-iteration floor.
const _: () = assert!(ITERATIONS >= 600_000);
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";
/// The highest bcrypt cost checked. Each step doubles the work; a stored hash above it fails the
/// check instead of holding a hashing thread for seconds.
pub(crate) const BCRYPT_MAX_COST: u32 = 14;

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
    if is_bcrypt(encoded) {
        return verify_bcrypt(encoded, password);
    }
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

/// Whether `encoded` is a bcrypt hash (`$2a$`, `$2b$` or `$2y$`), as the legacy backends wrote
/// them: such a hash is replaced with the current scheme once its password is known.
pub(crate) fn is_bcrypt(encoded: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| encoded.starts_with(prefix))
}

/// Checks a bcrypt hash. Its cost must be two digits no higher than [`BCRYPT_MAX_COST`]; the
/// crate refuses the rest of a malformed hash.
fn verify_bcrypt(encoded: &str, password: &str) -> bool {
    let cost = encoded
        .get(4..6)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok());
    let Some(cost) = cost else {
        return false;
    };
    if cost > BCRYPT_MAX_COST {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                cost,
                max_cost = BCRYPT_MAX_COST,
                "a stored bcrypt hash is too costly to check; its logins fail"
            );
        });
        return false;
    }
    bcrypt::verify(password, encoded).unwrap_or(false)
}

/// Burns the same time as a real verification; used when the account does not exist so that
/// response times do not reveal which phones and e-mails are registered.
pub(crate) fn verify_dummy(password: &str) {
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

    /// `$2a$` hashes written by bcryptjs (Node), `$2b$` by the Python `bcrypt` package.
    const BCRYPTJS_2A: &str = "$2a$04$BHC4tRj8EJAqjnPjQRIgZ.zjkhz3jB7zGFs2HRhuhGacn1cMxLhgS";
    const BCRYPTJS_2A_PASSWORD: &str = "legacy-pass-1";
    const BCRYPTJS_2A_UNICODE: &str =
        "$2a$05$wHwzHecrgFqgwfOWb9/ATen8gTyTY6NjhAIqnjTFURFA.TJaDnjVy";
    const PYTHON_2B: &str = "$2b$04$Zes7UlliqjYns9sQ2Ujx1e/Q.vywBb3.6Fy0F65mswABMP6HCsgpe";
    const PYTHON_2B_PASSWORD: &str = "correct horse battery";

    #[test]
    fn bcrypt_hashes_of_the_legacy_backends_verify() {
        assert!(is_bcrypt(BCRYPTJS_2A) && is_bcrypt(PYTHON_2B));
        assert!(verify(BCRYPTJS_2A, BCRYPTJS_2A_PASSWORD));
        assert!(verify(BCRYPTJS_2A_UNICODE, "hunter2 ünïcode"));
        assert!(verify(PYTHON_2B, PYTHON_2B_PASSWORD));
        // `$2y$` (PHP's name for the same algorithm as `$2b$`).
        let two_y = PYTHON_2B.replacen("$2b$", "$2y$", 1);
        assert!(is_bcrypt(&two_y));
        assert!(verify(&two_y, PYTHON_2B_PASSWORD));
    }

    #[test]
    fn bcrypt_hashes_refuse_wrong_passwords() {
        for wrong in ["", "legacy-pass-2", "legacy-pass-1 ", "LEGACY-PASS-1"] {
            assert!(!verify(BCRYPTJS_2A, wrong), "{wrong:?}");
        }
        assert!(!verify(BCRYPTJS_2A_UNICODE, "hunter2 unicode"));
        assert!(!verify(PYTHON_2B, "correct horse"));
        assert!(!verify(PYTHON_2B, BCRYPTJS_2A_PASSWORD));
    }

    #[test]
    fn bcrypt_hashes_above_the_cost_ceiling_fail_at_once() {
        let started = std::time::Instant::now();
        for cost in ["15", "20", "31", "99"] {
            let costly = format!("$2b${cost}{}", &PYTHON_2B[6..]);
            assert!(!verify(&costly, PYTHON_2B_PASSWORD), "{costly}");
        }
        // None of them was computed (cost 15 alone takes seconds).
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn malformed_bcrypt_hashes_never_match() {
        let body = &PYTHON_2B[7..];
        let cases = [
            "$2a$".to_owned(),
            "$2b$04$".to_owned(),
            "$2y$04$short".to_owned(),
            // Cost not two digits, below the minimum, or signed.
            format!("$2b$x4${body}"),
            format!("$2b$03${body}"),
            format!("$2b$00${body}"),
            format!("$2b$+4${body}"),
            format!("$2b$4${body}"),
            // A missing separator, a character outside bcrypt's base64, one too many or few.
            format!("$2b$04{body}"),
            format!("$2b$04$!{}", &body[1..]),
            format!("$2b$04${body}A"),
            format!("$2b$04${}", &body[1..]),
            // Non-ASCII where the salt should be (the slicing must not panic).
            format!("$2b$04$é{}", &body[2..]),
            format!("$2b$04${}é", &body[..body.len() - 2]),
            // Versions the legacy backends never wrote.
            format!("$2x$04${body}"),
            format!("$2$04${body}"),
        ];
        for bad in &cases {
            assert!(!verify(bad, PYTHON_2B_PASSWORD), "{bad}");
            assert!(!verify(bad, ""), "{bad}");
        }
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
