//! One error type for the whole server. Each variant has a stable snake_case `code` and an HTTP
//! status; what a client sees (`message`) is kept apart from what is logged (the cause).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::borrow::Cow;

/// Result alias used across the crate.
pub(crate) type AppResult<T> = Result<T, AppError>;

/// Declares [`ErrorCode`]: each variant with the string clients see, in one list.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// Every error code a client can see: in REST bodies (`{"error": {"code"}}`), in realtime
        /// error replies and events, and in Socket.IO connect errors. Serialized as its
        /// snake_case string; the strings are part of the wire contract and never change.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub(crate) const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The string clients match on.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body or frame is not JSON.
    InvalidJson => "invalid_json",
    /// The body is JSON of the wrong shape.
    InvalidBody => "invalid_body",
    /// A realtime frame is not `{event, payload[, id]}`.
    InvalidFrame => "invalid_frame",
    /// A realtime command's payload has the wrong shape.
    InvalidPayload => "invalid_payload",
    /// A path or query parameter is malformed.
    InvalidParameter => "invalid_parameter",
    /// A page cursor this server did not hand out.
    InvalidCursor => "invalid_cursor",
    /// A multipart upload that cannot be read.
    InvalidMultipart => "invalid_multipart",
    /// Text with a NUL character, which PostgreSQL does not store.
    InvalidText => "invalid_text",
    /// Not a phone number.
    InvalidPhone => "invalid_phone",
    /// Not an e-mail address.
    InvalidEmail => "invalid_email",
    /// A reply to a message that is not in the conversation.
    InvalidReply => "invalid_reply",
    /// The call is not in a state that allows this.
    InvalidCallState => "invalid_call_state",
    /// A request body of a content type the route does not take.
    UnsupportedContentType => "unsupported_content_type",
    /// A realtime event this server does not know.
    UnknownEvent => "unknown_event",
    /// A dialect name this server does not know.
    UnknownDialect => "unknown_dialect",
    /// A well-formed value that is not acceptable (too long, out of range, ...).
    ValidationFailed => "validation_failed",
    /// A password below the configured strength.
    WeakPassword => "weak_password",
    /// An upload without bytes.
    EmptyUpload => "empty_upload",
    /// A multipart upload without its file part.
    MissingFile => "missing_file",
    /// A byte range outside the stored file.
    RangeNotSatisfiable => "range_not_satisfiable",
    /// A message whose media does not match its kind.
    MediaTypeMismatch => "media_type_mismatch",
    /// A call of a media kind the callee's app cannot take.
    MediaUnsupported => "media_unsupported",
    /// A call provider this server is not configured for.
    ProviderNotAvailable => "provider_not_available",
    /// TURN credentials were asked for, but no TURN server is configured.
    TurnNotConfigured => "turn_not_configured",
    /// An Agora token was asked for, but Agora is not configured.
    AgoraNotConfigured => "agora_not_configured",
    /// A wrong one-time code.
    OtpInvalid => "otp_invalid",
    /// A one-time code past its lifetime, or none was sent.
    OtpExpired => "otp_expired",
    /// Too many wrong one-time codes: a new one must be sent.
    OtpAttemptsExceeded => "otp_attempts_exceeded",
    /// No access token.
    MissingToken => "missing_token",
    /// An access token that is malformed, badly signed or of the wrong kind.
    InvalidToken => "invalid_token",
    /// An access token past its expiry.
    TokenExpired => "token_expired",
    /// A realtime command before the connection authenticated, or an authentication refused
    /// (Socket.IO).
    Unauthorized => "unauthorized",
    /// A wrong login or password.
    InvalidCredentials => "invalid_credentials",
    /// A refresh token this server does not know.
    InvalidRefreshToken => "invalid_refresh_token",
    /// A refresh token used twice: the session is revoked.
    RefreshTokenReused => "refresh_token_reused",
    /// The token's session was revoked (logout, ban, reuse).
    SessionRevoked => "session_revoked",
    /// The account is banned.
    AccountBanned => "account_banned",
    /// Authenticated, but not allowed to do this.
    Forbidden => "forbidden",
    /// The contact policy refuses this conversation or call.
    NotAllowed => "not_allowed",
    /// The thing does not exist, or the caller may not see it.
    NotFound => "not_found",
    /// The thing exists already.
    Conflict => "conflict",
    /// Another account has this phone number.
    PhoneTaken => "phone_taken",
    /// Another account has this e-mail address.
    EmailTaken => "email_taken",
    /// The same client id was used for a different message.
    Duplicate => "duplicate",
    /// The message was deleted.
    MessageDeleted => "message_deleted",
    /// The two users are contacts already.
    AlreadyConnected => "already_connected",
    /// The chat request was answered already.
    RequestNotPending => "request_not_pending",
    /// A call id the caller chose is in use.
    CallIdTaken => "call_id_taken",
    /// The caller is in no call.
    NoCall => "no_call",
    /// The caller or callee is in a call already.
    Busy => "busy",
    /// The body or content is too large.
    TooLarge => "too_large",
    /// An upload whose bytes are not of an allowed type.
    UnsupportedMediaType => "unsupported_media_type",
    /// The caller's storage quota would be exceeded.
    QuotaExceeded => "quota_exceeded",
    /// A request body stalled for longer than its timeout.
    Timeout => "timeout",
    /// A signed link past its expiry.
    LinkExpired => "link_expired",
    /// Too many requests: retry after `retryAfter` seconds.
    RateLimited => "rate_limited",
    /// The server has too much of this work queued: retry after `retryAfter` seconds.
    Overloaded => "overloaded",
    /// A dependency (the database, an SMS gateway) is not available right now.
    Unavailable => "unavailable",
    /// The server holds as many connections as it may: try again later, or another node.
    OverCapacity => "over_capacity",
    /// A failure on the server's side; its cause is logged, not shown.
    Internal => "internal",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// In the OpenAPI document: a string, one of [`ErrorCode::ALL`].
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Everything that can go wrong while serving a request or a realtime command.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request body or a parameter is malformed (`code` names the problem).
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code, e.g. `invalid_json`.
        code: ErrorCode,
        /// Text for the client.
        message: Cow<'static, str>,
    },
    /// A semantically invalid value (`validation_failed` or a more specific code).
    #[error("{message}")]
    Validation {
        /// Stable code.
        code: ErrorCode,
        /// Text for the client.
        message: Cow<'static, str>,
    },
    /// Missing, malformed, expired or revoked credentials.
    #[error("{message}")]
    Unauthorized {
        /// Stable code.
        code: ErrorCode,
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
        code: ErrorCode,
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
    pub(crate) fn bad_request(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 422-style validation failure (reported as 400 for legacy clients).
    pub(crate) fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Validation {
            code: ErrorCode::ValidationFailed,
            message: message.into(),
        }
    }

    /// A 401 with a code.
    pub(crate) fn unauthorized(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }

    /// A 400 `invalid_text`: PostgreSQL stores no NUL character (in `text` or in `jsonb`).
    pub(crate) fn nul_text() -> Self {
        Self::bad_request(
            ErrorCode::InvalidText,
            "text must not contain NUL (\\u0000) characters",
        )
    }

    /// A 409 with a code.
    pub(crate) fn conflict(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// An internal failure with its cause (logged, not shown).
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal {
            cause: cause.to_string(),
        }
    }

    /// A dependency outage with its cause (logged, not shown).
    pub(crate) fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            cause: cause.to_string(),
        }
    }

    /// The stable snake_case code clients match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest { code, .. }
            | Self::Validation { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Conflict { code, .. } => *code,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotAllowed(_) => ErrorCode::NotAllowed,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Busy(_) => ErrorCode::Busy,
            Self::Overloaded { .. } => ErrorCode::Overloaded,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Self::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::LinkExpired(_) => ErrorCode::LinkExpired,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
            Self::Internal { .. } => ErrorCode::Internal,
        }
    }

    /// The HTTP status for REST answers.
    pub(crate) fn status(&self) -> StatusCode {
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
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } | Self::Overloaded { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            _ => None,
        }
    }

    /// The body `{"error": {"code", "message"[, "retryAfter"]}}`.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                retry_after: self.retry_after_secs(),
            },
        }
    }
}

/// JSON error envelope (`Error` in the OpenAPI document).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    /// The error.
    #[schema(inline)]
    pub error: ErrorDetail,
}

/// Code and text of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable code.
    #[schema(inline)]
    pub code: ErrorCode,
    /// Client-facing text.
    pub message: String,
    /// Seconds to wait, for `rate_limited` and `busy` (503).
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = i64)]
    pub retry_after: Option<u64>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal { cause } => {
                tracing::error!(code = self.code().as_str(), %cause, "request failed")
            }
            Self::Unavailable { cause } => {
                tracing::warn!(code = self.code().as_str(), %cause, "dependency unavailable")
            }
            _ => tracing::debug!(code = self.code().as_str(), message = %self, "request refused"),
        }
        let mut builder = HttpResponse::build(self.status());
        if let Some(secs) = self.retry_after_secs() {
            builder.insert_header(("Retry-After", secs.to_string()));
        }
        builder.json(self.body())
    }
}

/// A driver error, classified once, here, where its kind is still known: what can pass
/// (a lost connection, a serialization failure or deadlock, a server shutting down) is
/// `unavailable`, so callers retry or tell the client to; text PostgreSQL cannot store is the
/// client's `invalid_text`; a duplicate is a `conflict`. Diesel gives a kind for the common
/// cases and only PostgreSQL's message for the rest (it does not expose the SQLSTATE), so
/// those few are recognised by their message, still only here.
impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match e {
            Error::NotFound => Self::NotFound("not found".into()),
            Error::DatabaseError(Kind::UniqueViolation, info) => Self::conflict(
                ErrorCode::Conflict,
                format!("already exists ({})", info.message()),
            ),
            Error::DatabaseError(
                Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::SerializationFailure,
                info,
            ) => Self::unavailable(info.message()),
            Error::DatabaseError(kind, info) => match UnknownDbError::of(info.message()) {
                Some(UnknownDbError::Unstorable) => Self::nul_text(),
                Some(UnknownDbError::Passing) => Self::unavailable(info.message()),
                None => Self::internal(Error::DatabaseError(kind, info)),
            },
            other => Self::internal(other),
        }
    }
}

/// What an error without a Diesel kind of its own is, by PostgreSQL's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnknownDbError {
    /// A NUL character in `text` or `jsonb` (SQLSTATE 22021, 22P05).
    Unstorable,
    /// It passes: the connection went away or is going (57P01, 57P03, 08xxx), or a deadlock
    /// was broken (40P01).
    Passing,
}

impl UnknownDbError {
    fn of(message: &str) -> Option<Self> {
        const UNSTORABLE: [&str; 2] = [
            "invalid byte sequence for encoding",
            "unsupported Unicode escape sequence",
        ];
        const PASSING: [&str; 7] = [
            "server closed the connection",
            "connection to server",
            "no connection to the server",
            "terminating connection",
            "could not connect",
            "the database system is",
            "deadlock detected",
        ];
        if UNSTORABLE.iter().any(|m| message.contains(m)) {
            Some(Self::Unstorable)
        } else if PASSING.iter().any(|m| message.contains(m)) {
            Some(Self::Passing)
        } else {
            None
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
                AppError::bad_request(ErrorCode::InvalidJson, "x"),
                400,
                "invalid_json",
            ),
            (
                AppError::unauthorized(ErrorCode::InvalidToken, "x"),
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
            assert_eq!(body["error"]["code"], err.code().as_str());
        }
        let body = serde_json::to_value(AppError::unavailable("db").body()).unwrap();
        assert!(body["error"].get("retryAfter").is_none());
    }

    #[test]
    fn every_code_is_a_distinct_snake_case_string_and_serializes_as_it() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && !s.starts_with('_')
                    && !s.ends_with('_'),
                "{s} is not snake_case"
            );
            assert_eq!(serde_json::to_value(code).unwrap(), s);
            assert_eq!(code.to_string(), s);
        }
    }

    /// A database error of Diesel's `Unknown` kind with PostgreSQL's message.
    fn unknown(message: &str) -> diesel::result::Error {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            Box::new(message.to_owned()),
        )
    }

    #[test]
    fn driver_errors_are_classified_once_by_kind_then_by_message() {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        for kind in [
            Kind::ClosedConnection,
            Kind::UnableToSendCommand,
            Kind::SerializationFailure,
        ] {
            let err = AppError::from(Error::DatabaseError(kind, Box::new("x".to_owned())));
            assert_eq!(err.code(), ErrorCode::Unavailable, "{kind:?}");
        }
        for passing in [
            "server closed the connection unexpectedly",
            "no connection to the server",
            "could not connect to server: Connection refused",
            "terminating connection due to administrator command",
            "deadlock detected",
        ] {
            assert_eq!(
                AppError::from(unknown(passing)).code(),
                ErrorCode::Unavailable,
                "{passing}"
            );
        }
        assert_eq!(
            AppError::from(unknown("unsupported Unicode escape sequence")).code(),
            ErrorCode::InvalidText
        );
        assert_eq!(
            AppError::from(unknown("syntax error at or near")).code(),
            ErrorCode::Internal
        );
        assert_eq!(AppError::from(Error::NotFound).code(), ErrorCode::NotFound);
        let duplicate = Error::DatabaseError(Kind::UniqueViolation, Box::new("dup".to_owned()));
        assert_eq!(AppError::from(duplicate).code(), ErrorCode::Conflict);
    }

    #[test]
    fn internal_causes_are_not_shown_to_clients() {
        let body = serde_json::to_string(&AppError::internal("password=hunter2").body()).unwrap();
        assert!(!body.contains("hunter2"), "{body}");
    }
}
