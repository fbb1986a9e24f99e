//! One-time codes: generation, keyed digests for storage, phone normalisation, and the
//! pluggable senders (`log` for development, `webhook` for an SMS gateway).

use crate::config::{Config, OtpSenderKind};
use crate::error::{AppError, AppResult, ErrorCode};
use ring::hmac;
use serde::Serialize;
use std::time::Duration;

/// What a code is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Creating an account.
    Register,
    /// Logging in to an existing account.
    Login,
}

impl Purpose {
    /// The value stored in `otp_codes.purpose`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
        }
    }
}

/// A uniformly random numeric code of `len` digits.
pub(crate) fn generate_code(len: usize) -> AppResult<String> {
    let mut code = String::with_capacity(len);
    while code.len() < len {
        let mut byte = [0u8; 1];
        super::tokens::random_bytes(&mut byte)?;
        // Rejection sampling: 250 is the largest multiple of 10 below 256, so no digit is
        // favoured.
        if byte[0] < 250 {
            code.push(char::from(b'0' + byte[0] % 10));
        }
    }
    Ok(code)
}

/// Keyed digest of a code, bound to phone and purpose so a digest cannot be replayed elsewhere.
pub(crate) fn digest(key: &hmac::Key, phone: &str, purpose: Purpose, code: &str) -> Vec<u8> {
    hmac::sign(
        key,
        format!("otp\0{phone}\0{}\0{code}", purpose.as_str()).as_bytes(),
    )
    .as_ref()
    .to_vec()
}

/// Constant-time check of a code against its stored digest.
pub(crate) fn matches(
    key: &hmac::Key,
    phone: &str,
    purpose: Purpose,
    code: &str,
    stored: &[u8],
) -> bool {
    hmac::verify(
        key,
        format!("otp\0{phone}\0{}\0{}", purpose.as_str(), code.trim()).as_bytes(),
        stored,
    )
    .is_ok()
}

/// Normalises a phone number to E.164 (`+` and 8–15 digits). Spaces, dashes, dots and brackets
/// are dropped; a leading `00` becomes `+`. Numbers without a country code are refused rather
/// than guessed.
pub(crate) fn normalize_phone(raw: &str) -> AppResult<String> {
    let mut out = String::with_capacity(16);
    let trimmed = raw.trim();
    let rest = if let Some(r) = trimmed.strip_prefix('+') {
        r
    } else if let Some(r) = trimmed.strip_prefix("00") {
        r
    } else {
        trimmed
    };
    out.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => out.push(c),
            ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
            _ => {
                return Err(AppError::bad_request(
                    ErrorCode::InvalidPhone,
                    "phone number has invalid characters",
                ))
            }
        }
    }
    let digits = out.len() - 1;
    if !(8..=15).contains(&digits) || out.as_bytes().get(1) == Some(&b'0') {
        return Err(AppError::bad_request(
            ErrorCode::InvalidPhone,
            "phone number must be in international format, e.g. +14155550123",
        ));
    }
    if !trimmed.starts_with('+') && !trimmed.starts_with("00") && digits < 10 {
        return Err(AppError::bad_request(
            ErrorCode::InvalidPhone,
            "phone number must include its country code",
        ));
    }
    Ok(out)
}

/// The JSON body the webhook sender POSTs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OtpDelivery<'a> {
    /// E.164 destination.
    pub phone: &'a str,
    /// The code.
    pub code: &'a str,
    /// `register` or `login`.
    pub purpose: &'a str,
    /// Seconds the code stays valid.
    pub expires_in_secs: u64,
}

/// Delivers codes.
#[derive(Clone, Debug)]
pub(crate) struct OtpSender {
    kind: OtpSenderKind,
    url: String,
    timeout: Duration,
}

impl OtpSender {
    /// The sender configured by `OTP_SENDER`.
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            kind: config.otp_sender,
            url: config.otp_webhook_url.clone(),
            timeout: config.otp_webhook_timeout,
        }
    }

    /// Delivers one code. A gateway failure is `unavailable` so the caller can retract the code.
    pub(crate) async fn send(&self, delivery: &OtpDelivery<'_>) -> AppResult<()> {
        match self.kind {
            OtpSenderKind::Log => {
                tracing::info!(
                    phone = delivery.phone,
                    code = delivery.code,
                    purpose = delivery.purpose,
                    "one-time code (OTP_SENDER=log; development only)"
                );
                Ok(())
            }
            OtpSenderKind::Webhook => {
                let client = awc::Client::builder().timeout(self.timeout).finish();
                let response = client
                    .post(&self.url)
                    .send_json(delivery)
                    .await
                    .map_err(|e| AppError::unavailable(format!("OTP webhook: {e}")))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(AppError::unavailable(format!(
                        "OTP webhook answered {}",
                        response.status()
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_requested_number_of_digits() {
        for len in [4, 6, 10] {
            let code = generate_code(len).unwrap();
            assert_eq!(code.len(), len);
            assert!(code.chars().all(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn digests_bind_phone_purpose_and_code() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let d = digest(&key, "+15550001111", Purpose::Login, "123456");
        assert!(matches(&key, "+15550001111", Purpose::Login, "123456", &d));
        assert!(!matches(&key, "+15550001111", Purpose::Login, "123457", &d));
        assert!(!matches(
            &key,
            "+15550001111",
            Purpose::Register,
            "123456",
            &d
        ));
        assert!(!matches(&key, "+15550001112", Purpose::Login, "123456", &d));
    }

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(
            normalize_phone("+1 (415) 555-0123").unwrap(),
            "+14155550123"
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").unwrap(),
            "+442079460958"
        );
        assert_eq!(normalize_phone("79161234567").unwrap(), "+79161234567");
        for bad in [
            "",
            "+12",
            "abc",
            "+0123456789",
            "555-0123",
            "+1234567890123456",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
    }
}
