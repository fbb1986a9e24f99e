//! Access tokens (JWT HS256, algorithm pinned) and opaque refresh tokens.
//!
//! Tokens minted by the legacy backends with the same secret keep working: their subject may sit
//! in `sub`, `uid`, `id` or `userId`, and their device session in `sid` or `sessionId`. The
//! subject is a Switchboard user id, or the id a legacy backend knew the user by (a MongoDB
//! ObjectId), which the ids `switchboard import` kept map to a user.

use crate::error::{AppError, AppResult, ErrorCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Seconds of clock skew tolerated on `exp`.
pub(crate) const EXP_LEEWAY_SECS: u64 = 30;

/// Claims Switchboard writes into its own access tokens.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// User id.
    pub sub: String,
    /// Device session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Roles at issue time (informational: the server re-reads roles from the database).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
}

/// Who a token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A user id: a positive integer, as a JSON number or a string of digits.
    Id(i64),
    /// The id a legacy backend gave the user (e.g. a 24-hex-digit MongoDB ObjectId): 1 to 64
    /// characters of `A-Z`, `a-z`, `0-9`, `_` and `-`, looked up among the imported ids.
    Legacy(String),
}

impl Subject {
    /// The user id, when the token names one directly.
    pub fn id(&self) -> Option<i64> {
        match self {
            Self::Id(id) => Some(*id),
            Self::Legacy(_) => None,
        }
    }
}

impl PartialEq<i64> for Subject {
    fn eq(&self, other: &i64) -> bool {
        self.id() == Some(*other)
    }
}

/// What a verified token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The subject: a user id, or a legacy backend's id for the user.
    pub user_id: Subject,
    /// The device session, when the token is session-bound.
    pub session_id: Option<String>,
    /// `iat` (unix seconds), when the token carries one.
    pub issued_at: Option<i64>,
    /// The subject claim was a JSON number (`"userId": 7`), not a string: apps written against
    /// such tokens compare user ids as numbers. Never set for a legacy id.
    pub numeric_subject: bool,
    /// The session came from `sessionId`, the claim the legacy backends wrote (Switchboard
    /// writes `sid`): a session of an earlier backend, possibly unknown here.
    pub legacy_session: bool,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(HS256, ***)")
    }
}

impl TokenKeys {
    /// Keys for the shared HS256 secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs an access token.
    pub fn sign(
        &self,
        user_id: i64,
        session_id: Option<&str>,
        roles: &[String],
        ttl_secs: u64,
    ) -> AppResult<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.map(str::to_owned),
            roles: roles.to_vec(),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AppError::internal)
    }

    /// Verifies signature, algorithm and expiry, then finds the subject and session claims.
    pub fn verify(&self, token: &str) -> AppResult<VerifiedToken> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token.trim(),
            &self.decoding,
            &self.validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => {
                    AppError::unauthorized(ErrorCode::TokenExpired, "token expired")
                }
                _ => AppError::unauthorized(ErrorCode::InvalidToken, "invalid token"),
            }
        })?;
        let claims = data.claims;
        const SUBJECT_CLAIMS: [&str; 4] = ["sub", "uid", "id", "userId"];
        // A user id in any of the claims comes first; only a token without one is read for a
        // legacy id.
        let (user_id, numeric_subject) = SUBJECT_CLAIMS
            .iter()
            .find_map(|key| {
                let claim = claims.get(*key)?;
                id_value(claim).map(|id| (Subject::Id(id), claim.is_number()))
            })
            .or_else(|| {
                SUBJECT_CLAIMS.iter().find_map(|key| {
                    legacy_id_value(claims.get(*key)?).map(|id| (Subject::Legacy(id), false))
                })
            })
            .ok_or_else(|| {
                AppError::unauthorized(ErrorCode::InvalidToken, "token has no subject")
            })?;
        let (session_id, legacy_session) = match claims.get("sid").and_then(string_value) {
            Some(sid) => (Some(sid), false),
            None => match claims.get("sessionId").and_then(string_value) {
                Some(sid) => (Some(sid), true),
                None => (None, false),
            },
        };
        let issued_at = claims.get("iat").and_then(Value::as_i64);
        Ok(VerifiedToken {
            user_id,
            session_id,
            issued_at,
            numeric_subject,
            legacy_session,
        })
    }
}

/// A user id claim: a positive integer, as a JSON number or a string of digits.
fn id_value(v: &Value) -> Option<i64> {
    let id = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    id.filter(|id| *id > 0)
}

/// Longest legacy id accepted as a token subject.
const LEGACY_ID_MAX_LEN: usize = 64;

/// A legacy id claim: a string of 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_` and `-`.
fn legacy_id_value(v: &Value) -> Option<String> {
    let Value::String(s) = v else {
        return None;
    };
    let valid = (1..=LEGACY_ID_MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then(|| s.clone())
}

fn string_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Fills `buf` from the system's secure random source.
pub fn random_bytes(buf: &mut [u8]) -> AppResult<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| AppError::internal("system random source failed"))
}

/// A new opaque refresh token (256 random bits, URL-safe base64) and its storage digest.
pub(crate) fn new_refresh_token() -> AppResult<(String, Vec<u8>)> {
    let mut raw = [0u8; 32];
    random_bytes(&mut raw)?;
    let token = B64URL.encode(raw);
    let digest = refresh_digest(&token);
    Ok((token, digest))
}

/// The digest under which a refresh token is stored.
pub(crate) fn refresh_digest(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.trim().as_bytes())
        .as_ref()
        .to_vec()
}

/// `bytes` as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random identifier: 128 bits, lower-case hex (device sessions, calls, media).
pub fn random_id() -> AppResult<String> {
    let mut raw = [0u8; 16];
    random_bytes(&mut raw)?;
    Ok(hex(&raw))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn legacy(claims: Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn exp() -> i64 {
        chrono::Utc::now().timestamp() + 600
    }

    #[test]
    fn own_tokens_round_trip() {
        let keys = TokenKeys::new(SECRET);
        let t = keys.sign(42, Some("abc"), &["admin".into()], 60).unwrap();
        let verified = keys.verify(&t).unwrap();
        assert_eq!(
            (verified.user_id, verified.session_id.as_deref()),
            (Subject::Id(42), Some("abc"))
        );
        let iat = verified.issued_at.unwrap();
        assert!((iat - chrono::Utc::now().timestamp()).abs() <= 5);
    }

    #[test]
    fn legacy_subject_claims_are_accepted() {
        let keys = TokenKeys::new(SECRET);
        let cases = [
            (json!({"uid": "7", "exp": exp()}), 7, None),
            (
                json!({"id": 8, "sessionId": "s1", "exp": exp()}),
                8,
                Some("s1"),
            ),
            (json!({"userId": "9", "exp": exp()}), 9, None),
        ];
        for (claims, id, sid) in cases {
            let v = keys.verify(&legacy(claims, Algorithm::HS256)).unwrap();
            assert_eq!(v.user_id, Subject::Id(id));
            assert_eq!(v.session_id.as_deref(), sid);
            assert_eq!(
                v.legacy_session,
                sid.is_some(),
                "`sessionId` is the legacy claim"
            );
        }
    }

    #[test]
    fn the_json_type_of_the_subject_claim_is_reported() {
        let keys = TokenKeys::new(SECRET);
        let number = legacy(json!({"userId": 9, "exp": exp()}), Algorithm::HS256);
        assert!(keys.verify(&number).unwrap().numeric_subject);
        let string = legacy(json!({"userId": "9", "exp": exp()}), Algorithm::HS256);
        assert!(!keys.verify(&string).unwrap().numeric_subject);
        let own = keys.sign(9, Some("s"), &[], 60).unwrap();
        let own = keys.verify(&own).unwrap();
        assert!(!own.numeric_subject);
        assert!(
            !own.legacy_session,
            "Switchboard's `sid` is not a legacy session"
        );
    }

    #[test]
    fn other_algorithms_and_unsigned_tokens_are_rejected() {
        let keys = TokenKeys::new(SECRET);
        let hs512 = legacy(json!({"sub": "1", "exp": exp()}), Algorithm::HS512);
        assert_eq!(keys.verify(&hs512).unwrap_err().code(), "invalid_token");

        let header = B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = B64URL.encode(format!(r#"{{"sub":"1","exp":{}}}"#, exp()));
        for unsigned in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert_eq!(keys.verify(&unsigned).unwrap_err().code(), "invalid_token");
        }
    }

    #[test]
    fn wrong_secret_expired_and_subjectless_tokens_are_rejected() {
        let keys = TokenKeys::new(SECRET);
        let other = TokenKeys::new(b"another-secret-another-secret-123");
        let t = other.sign(1, None, &[], 60).unwrap();
        assert_eq!(keys.verify(&t).unwrap_err().code(), "invalid_token");

        let old = chrono::Utc::now().timestamp() - 3600;
        let expired = legacy(json!({"sub": "1", "exp": old}), Algorithm::HS256);
        assert_eq!(keys.verify(&expired).unwrap_err().code(), "token_expired");

        let no_exp = legacy(json!({"sub": "1"}), Algorithm::HS256);
        assert!(keys.verify(&no_exp).is_err());

        let no_sub = legacy(json!({"name": "x", "exp": exp()}), Algorithm::HS256);
        assert!(keys.verify(&no_sub).is_err());
        for bad in [
            json!(""),
            json!("a b"),
            json!("65a1b2c3d4e5f6a7b8c9d0e1 "),
            json!("65a1.b2c3"),
            json!("ünïcode"),
            json!("x".repeat(65)),
            json!(0),
            json!(-3),
            json!(1.5),
            json!(true),
            json!(null),
            json!(["65a1b2c3d4e5f6a7b8c9d0e1"]),
            json!({"$oid": "65a1b2c3d4e5f6a7b8c9d0e1"}),
        ] {
            for key in ["sub", "uid", "id", "userId"] {
                let t = legacy(json!({key: bad.clone(), "exp": exp()}), Algorithm::HS256);
                let refused = keys.verify(&t).unwrap_err();
                assert_eq!(refused.code(), "invalid_token", "{key}: {bad}");
            }
        }
    }

    #[test]
    fn a_legacy_id_subject_is_read_from_any_subject_claim() {
        let keys = TokenKeys::new(SECRET);
        let oid = "65a1b2c3d4e5f6a7b8c9d0e1";
        let cases = [
            (json!({"uid": oid, "exp": exp()}), None),
            (
                json!({"id": oid, "sessionId": "s1", "exp": exp()}),
                Some("s1"),
            ),
            (json!({"userId": oid, "exp": exp()}), None),
            (json!({"sub": oid, "sid": "s2", "exp": exp()}), Some("s2")),
        ];
        for (claims, sid) in cases {
            let v = keys
                .verify(&legacy(claims.clone(), Algorithm::HS256))
                .unwrap();
            assert_eq!(v.user_id, Subject::Legacy(oid.into()), "{claims}");
            assert_eq!(v.user_id.id(), None);
            assert_eq!(v.session_id.as_deref(), sid);
            assert!(!v.numeric_subject, "a legacy id is a string subject");
        }
        // Other legacy id shapes within the limits.
        let long = "a".repeat(64);
        for id in [
            "u_1-x",
            "0",
            "-1",
            long.as_str(),
            "650123456789012345678901",
        ] {
            let t = legacy(json!({"uid": id, "exp": exp()}), Algorithm::HS256);
            let v = keys.verify(&t).unwrap();
            assert_eq!(v.user_id, Subject::Legacy(id.into()), "{id}");
            assert!(!v.numeric_subject);
        }
    }

    #[test]
    fn a_user_id_in_any_claim_wins_over_a_legacy_id() {
        let keys = TokenKeys::new(SECRET);
        let oid = "65a1b2c3d4e5f6a7b8c9d0e1";
        let cases = [
            (json!({"sub": oid, "uid": "7", "exp": exp()}), 7, false),
            (json!({"uid": oid, "userId": 8, "exp": exp()}), 8, true),
            (json!({"id": " 9 ", "userId": oid, "exp": exp()}), 9, false),
            // Digits parse as they always did, leading zeros too.
            (json!({"uid": "007", "exp": exp()}), 7, false),
        ];
        for (claims, id, numeric) in cases {
            let v = keys
                .verify(&legacy(claims.clone(), Algorithm::HS256))
                .unwrap();
            assert_eq!(v.user_id, Subject::Id(id), "{claims}");
            assert_eq!(v.user_id, id);
            assert_eq!(v.numeric_subject, numeric, "{claims}");
        }
        // The first legacy id in claim order is the subject.
        let t = legacy(
            json!({"userId": "second", "uid": "first", "exp": exp()}),
            Algorithm::HS256,
        );
        assert_eq!(
            keys.verify(&t).unwrap().user_id,
            Subject::Legacy("first".into())
        );
    }

    #[test]
    fn refresh_tokens_are_random_and_digested() {
        let (a, da) = new_refresh_token().unwrap();
        let (b, _) = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(refresh_digest(&a), da);
        assert_eq!(da.len(), 32);
    }
}
