//! One error type for the whole server. Each variant has a stable snake_case `code` and an HTTP
//! status; what a client sees (`message`) is kept apart from what is logged (the cause).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::borrow::Cow;

/// Result alias used across the crate.
pub type AppResult<T> = Result<T, AppError>;

/// Everything that can go wrong while serving a request or a realtime command.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request body or a parameter is malformed (`code` names the problem).
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code, e.g. `invalid_json`.
        code: &'static str,
        /// Text for the client.
        message: Cow<'static, str>,
    },
    /// A semantically invalid value (`validation_failed` or a more specific code).
    #[error("{message}")]
    Validation {
        /// Stable code.
        code: &'static str,
        /// Text for the client.
        message: Cow<'static, str>,
    },
    /// Missing, malformed, expired or revoked credentials.
    #[error("{message}")]
    Unauthorized {
        /// Stable code.
        code: &'static str,
        /// Text for the client.
        message: Cow<'static, str>,
    },
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// The contact policy refuses this conversation or call.
    #[error("{0}")]
    NotAllowed(Cow<'static, str>),
    /// The thing does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// The request conflicts with existing state (duplicate phone, e-mail, ...).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Text for the client.
        message: Cow<'static, str>,
    },
    /// The caller is already in a call.
    #[error("{0}")]
    Busy(Cow<'static, str>),
    /// The body or content is too large.
    #[error("{0}")]
    TooLarge(Cow<'static, str>),
    /// An upload whose type is not on the allow-list (sniffed from its bytes).
    #[error("{0}")]
    UnsupportedMediaType(Cow<'static, str>),
    /// The caller's storage quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(Cow<'static, str>),
    /// A request body stalled for longer than its named timeout.
    #[error("{0}")]
    Timeout(Cow<'static, str>),
    /// A signed link past its expiry.
    #[error("{0}")]
    LinkExpired(Cow<'static, str>),
    /// Too many requests; retry after the given number of seconds.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next attempt may succeed.
        retry_after_secs: u64,
    },
    /// The server has too much of this work queued already (password hashing); retry after the
    /// given number of seconds.
    #[error("the server is busy; retry in {retry_after_secs} s")]
    Overloaded {
        /// Seconds to wait before trying again.
        retry_after_secs: u64,
    },
    /// A dependency (the database, a pool, an SMS gateway) is not available right now.
    #[error("service temporarily unavailable")]
    Unavailable {
        /// The logged cause.
        cause: String,
    },
    /// A bug or an unexpected failure; the cause is logged, the client sees a generic text.
    #[error("internal error")]
    Internal {
        /// The logged cause.
        cause: String,
    },
}

impl AppError {
    /// A 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 422-style validation failure (reported as 400 for legacy clients).
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Validation {
            code: "validation_failed",
            message: message.into(),
        }
    }

    /// A 401 with a code.
    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }

    /// A 400 `invalid_text`: PostgreSQL stores no NUL character (in `text` or in `jsonb`).
    pub fn nul_text() -> Self {
        Self::bad_request(
            "invalid_text",
            "text must not contain NUL (\\u0000) characters",
        )
    }

    /// A 409 with a code.
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// An internal failure with its cause (logged, not shown).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal {
            cause: cause.to_string(),
        }
    }

    /// A dependency outage with its cause (logged, not shown).
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            cause: cause.to_string(),
        }
    }

    /// The stable snake_case code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Validation { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Conflict { code, .. } => code,
            Self::Forbidden(_) => "forbidden",
            Self::NotAllowed(_) => "not_allowed",
            Self::NotFound(_) => "not_found",
            Self::Busy(_) => "busy",
            Self::Overloaded { .. } => "overloaded",
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::Timeout(_) => "timeout",
            Self::LinkExpired(_) => "link_expired",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal { .. } => "internal",
        }
    }

    /// The HTTP status for REST answers.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::NotAllowed(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } | Self::Busy(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::LinkExpired(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds the client should wait before trying again (`Retry-After`), when that is known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } | Self::Overloaded { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            _ => None,
        }
    }

    /// The body `{"error": {"code", "message"[, "retryAfter"]}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                retry_after: self.retry_after_secs(),
            },
        }
    }
}

/// JSON error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and text of an error.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: &'static str,
    /// Client-facing text.
    pub message: String,
    /// Seconds to wait, for `rate_limited` and `busy` (503).
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal { cause } => {
                tracing::error!(code = self.code(), %cause, "request failed")
            }
            Self::Unavailable { cause } => {
                tracing::warn!(code = self.code(), %cause, "dependency unavailable")
            }
            _ => tracing::debug!(code = self.code(), message = %self, "request refused"),
        }
        let mut builder = HttpResponse::build(self.status());
        if let Some(secs) = self.retry_after_secs() {
            builder.insert_header(("Retry-After", secs.to_string()));
        }
        builder.json(self.body())
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => Self::NotFound("not found".into()),
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                Self::conflict("conflict", format!("already exists ({})", info.message()))
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Self::unavailable(info.message())
            }
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                Self::unavailable(info.message())
            }
            other => Self::internal(other),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_a_code_and_status() {
        let cases = [
            (
                AppError::bad_request("invalid_json", "x"),
                400,
                "invalid_json",
            ),
            (
                AppError::unauthorized("invalid_token", "x"),
                401,
                "invalid_token",
            ),
            (AppError::Forbidden("x".into()), 403, "forbidden"),
            (AppError::NotAllowed("x".into()), 403, "not_allowed"),
            (AppError::NotFound("x".into()), 404, "not_found"),
            (AppError::TooLarge("x".into()), 413, "too_large"),
            (
                AppError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (AppError::QuotaExceeded("x".into()), 429, "quota_exceeded"),
            (AppError::Timeout("x".into()), 408, "timeout"),
            (AppError::LinkExpired("x".into()), 403, "link_expired"),
            (
                AppError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "rate_limited",
            ),
            (AppError::unavailable("db"), 503, "unavailable"),
            (
                AppError::Overloaded {
                    retry_after_secs: 1,
                },
                503,
                "overloaded",
            ),
            (AppError::internal("boom"), 500, "internal"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn waits_are_announced_in_the_header_and_the_body() {
        for err in [
            AppError::RateLimited {
                retry_after_secs: 7,
            },
            AppError::Overloaded {
                retry_after_secs: 7,
            },
        ] {
            let response = err.error_response();
            assert_eq!(
                response
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok()),
                Some("7")
            );
            let body = serde_json::to_value(err.body()).unwrap();
            assert_eq!(body["error"]["retryAfter"], 7);
            assert_eq!(body["error"]["code"], err.code());
        }
        let body = serde_json::to_value(AppError::unavailable("db").body()).unwrap();
        assert!(body["error"].get("retryAfter").is_none());
    }

    #[test]
    fn internal_causes_are_not_shown_to_clients() {
        let body = serde_json::to_string(&AppError::internal("password=hunter2").body()).unwrap();
        assert!(!body.contains("hunter2"), "{body}");
    }
}
