//! ICE servers for clients: STUN URLs plus TURN with short-lived REST credentials in coturn's
//! `use-auth-secret` scheme — username `<expiry unix time>:<user id>`, password
//! `base64(HMAC-SHA1(secret, username))`.

use crate::config::Config;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

/// TURN REST credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredential {
    /// `<expiry>:<user>`.
    pub username: String,
    /// Base64 HMAC-SHA1 of the username.
    pub password: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

/// Credentials for `user` valid until `expires_at`.
pub fn turn_credential(secret: &str, user: &str, expires_at: i64) -> TurnCredential {
    let username = format!("{expires_at}:{user}");
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let password = B64.encode(hmac::sign(&key, username.as_bytes()).as_ref());
    TurnCredential {
        username,
        password,
        expires_at,
    }
}

/// The `iceServers` list for a user: every STUN URL, then the TURN URLs with fresh credentials
/// (when TURN is configured). `ttl` is capped by `TURN_TTL_SECS`.
pub(crate) fn ice_servers(config: &Config, user: i64, ttl: Option<u64>) -> Value {
    let mut servers: Vec<Value> = config
        .stun_urls
        .0
        .iter()
        .map(|u| json!({"urls": u}))
        .collect();
    if !config.turn_urls.0.is_empty() && !config.turn_secret.is_empty() {
        let max = config.turn_ttl.as_secs();
        let ttl = ttl.unwrap_or(max).clamp(60, max.max(60));
        let expires = chrono::Utc::now().timestamp() + i64::try_from(ttl).unwrap_or(86_400);
        let cred = turn_credential(config.turn_secret.expose(), &user.to_string(), expires);
        servers.push(json!({
            "urls": config.turn_urls.0,
            "username": cred.username,
            "credential": cred.password,
        }));
    }
    Value::Array(servers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn coturn_rest_credential_matches_the_reference_vector() {
        let c = turn_credential("s3cret", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
    }

    #[test]
    fn turn_entries_appear_only_when_configured_and_ttl_is_capped() {
        let mut config = Config::default();
        assert_eq!(ice_servers(&config, 7, None).as_array().unwrap().len(), 2);
        config.turn_urls = crate::config::List(vec!["turn:127.0.0.1:3478".into()]);
        config.turn_secret = crate::config::Secret::new("k");
        config.turn_ttl = std::time::Duration::from_secs(600);
        let servers = ice_servers(&config, 7, Some(999_999));
        let turn = &servers[2];
        let expiry: i64 = turn["username"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(expiry <= chrono::Utc::now().timestamp() + 600);
        assert!(turn["username"].as_str().unwrap().ends_with(":7"));
    }
}
