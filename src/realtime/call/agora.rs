//! Agora RTC tokens (AccessToken2, version `007`) for calls whose media runs through Agora.
//!
//! Layout (all integers little-endian): the signing key is
//! `HMAC-SHA256(key = salt, HMAC-SHA256(key = issue_ts, app_certificate))`; the signed content is
//! `app_id | issue_ts | expire | salt | service count | services`, where the RTC service is
//! `type (1) | privileges map | channel | uid string`; the token is
//! `"007" + base64(zlib(signature | content))`. Strings are length-prefixed (u16).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use ring::hmac;
use std::collections::BTreeMap;
use std::io::Write;

/// RTC service type.
const SERVICE_RTC: u16 = 1;
/// Join-channel privilege.
pub(crate) const PRIVILEGE_JOIN_CHANNEL: u16 = 1;
/// Publish-audio privilege.
pub(crate) const PRIVILEGE_PUBLISH_AUDIO: u16 = 2;
/// Publish-video privilege.
pub(crate) const PRIVILEGE_PUBLISH_VIDEO: u16 = 3;
/// Publish-data privilege.
pub(crate) const PRIVILEGE_PUBLISH_DATA: u16 = 4;

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u16(out, u16::try_from(b.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))]);
}

/// Everything one RTC token encodes.
#[derive(Clone, Debug)]
pub struct RtcToken<'a> {
    /// Agora app id.
    pub app_id: &'a str,
    /// App certificate (the signing secret).
    pub app_certificate: &'a str,
    /// Channel name.
    pub channel: &'a str,
    /// Numeric uid (0 = any; encoded as an empty string).
    pub uid: u32,
    /// Issue time (unix seconds).
    pub issue_ts: u32,
    /// Token lifetime in seconds from `issue_ts`.
    pub expire: u32,
    /// Random salt.
    pub salt: u32,
    /// Privilege → lifetime in seconds.
    pub privileges: BTreeMap<u16, u32>,
}

impl RtcToken<'_> {
    /// Publisher privileges (join + publish audio, video, data), each valid for `secs`.
    pub fn publisher(secs: u32) -> BTreeMap<u16, u32> {
        [
            PRIVILEGE_JOIN_CHANNEL,
            PRIVILEGE_PUBLISH_AUDIO,
            PRIVILEGE_PUBLISH_VIDEO,
            PRIVILEGE_PUBLISH_DATA,
        ]
        .into_iter()
        .map(|p| (p, secs))
        .collect()
    }

    /// The signed content (also what `decode` recovers, for cross-checks).
    pub(crate) fn content(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(128);
        put_bytes(&mut c, self.app_id.as_bytes());
        put_u32(&mut c, self.issue_ts);
        put_u32(&mut c, self.expire);
        put_u32(&mut c, self.salt);
        put_u16(&mut c, 1);
        put_u16(&mut c, SERVICE_RTC);
        put_u16(
            &mut c,
            u16::try_from(self.privileges.len()).unwrap_or(u16::MAX),
        );
        for (k, v) in &self.privileges {
            put_u16(&mut c, *k);
            put_u32(&mut c, *v);
        }
        put_bytes(&mut c, self.channel.as_bytes());
        let uid = if self.uid == 0 {
            String::new()
        } else {
            self.uid.to_string()
        };
        put_bytes(&mut c, uid.as_bytes());
        c
    }

    /// The HMAC-SHA256 signature of [`RtcToken::content`].
    pub(crate) fn signature(&self, content: &[u8]) -> Vec<u8> {
        let k1 = hmac::Key::new(hmac::HMAC_SHA256, &self.issue_ts.to_le_bytes());
        let signing = hmac::sign(&k1, self.app_certificate.as_bytes());
        let k2 = hmac::Key::new(hmac::HMAC_SHA256, &self.salt.to_le_bytes());
        let signing = hmac::sign(&k2, signing.as_ref());
        let key = hmac::Key::new(hmac::HMAC_SHA256, signing.as_ref());
        hmac::sign(&key, content).as_ref().to_vec()
    }

    /// The `007…` token.
    pub fn build(&self) -> std::io::Result<String> {
        let content = self.content();
        let mut packed = Vec::with_capacity(content.len() + 40);
        put_bytes(&mut packed, &self.signature(&content));
        packed.extend_from_slice(&content);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&packed)?;
        Ok(format!("007{}", B64.encode(z.finish()?)))
    }
}

/// An RTC token for `user` in `channel` with publisher privileges, from the configured app id
/// and certificate, valid for `AGORA_TOKEN_TTL_SECS`. `None` when Agora is not configured.
pub(crate) fn rtc_token_for(
    config: &crate::config::Config,
    channel: &str,
    uid: u32,
) -> Option<std::io::Result<String>> {
    if !config.agora_enabled() {
        return None;
    }
    let ttl = u32::try_from(config.agora_token_ttl.as_secs()).unwrap_or(u32::MAX);
    let mut salt = [0u8; 4];
    if crate::auth::tokens::random_bytes(&mut salt).is_err() {
        return Some(Err(std::io::Error::other("random source failed")));
    }
    let token = RtcToken {
        app_id: &config.agora_app_id,
        app_certificate: config.agora_app_certificate.expose(),
        channel,
        uid,
        issue_ts: u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0),
        expire: ttl,
        salt: u32::from_le_bytes(salt).max(1),
        privileges: RtcToken::publisher(ttl),
    };
    Some(token.build())
}

/// The uid of a token valid for any uid: such a token is what an app that joins with uid 0
/// (Agora then picks the uid) needs, since a token bound to another uid is refused for uid 0.
/// Calls hand one out besides the uid-bound token (seed 002's app signs and joins with uid 0).
pub(crate) const ANY_UID: u32 = 0;

/// The Agora uid of a user: the user id when it fits in 32 bits, else 0 (any uid).
pub(crate) fn uid_of(user: i64) -> u32 {
    u32::try_from(user).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_official_access_token2_vector() {
        let token = RtcToken {
            app_id: "970CA35de60c44645bbae8a215061b33",
            app_certificate: "5CFd2fd1755d40ecb72977518be15d3b",
            channel: "7d72365eb983485397e3e3f9d460bdda",
            uid: 2_882_341_273,
            issue_ts: 1_111_111,
            expire: 600,
            salt: 1,
            privileges: [(PRIVILEGE_JOIN_CHANNEL, 600)].into_iter().collect(),
        };
        assert_eq!(
            token.build().unwrap(),
            "007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj"
        );
    }
}
