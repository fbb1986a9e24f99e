//! Authentication: password and OTP login, device sessions, access and refresh tokens, and the
//! check every REST route and socket runs on a bearer token. Passwords are checked on the
//! [`hasher::Hasher`], never inside a database slot; guesses and code sends are limited by
//! [`limits::AuthLimits`].

pub mod hasher;
pub mod limits;
pub mod otp;
pub mod password;
pub mod tokens;

use crate::config::Config;
use crate::db::accounts::{self, OtpCheck, Rotation};
use crate::db::audit;
use crate::db::models::{DeviceSession, NewDeviceSession, NewUser, User};
use crate::db::Db;
use crate::error::{AppError, AppResult, ErrorCode};
use chrono::Utc;
use hasher::Hasher;
use limits::{AuthLimits, Refusal};
use otp::{OtpDelivery, OtpSender, Purpose};
use ring::hmac;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use tokens::TokenKeys;

/// The authenticated caller of a request or socket. Identity always comes from here, never from
/// a user id in a payload.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The user, freshly read from the database.
    pub user: User,
    /// The device session the token is bound to, if any.
    pub session_id: Option<String>,
    /// The token carried the user id as a JSON number (legacy tokens such as `{"userId": 7}`):
    /// dialects that type ids like the app's token send them back as numbers.
    pub numeric_id: bool,
}

impl Identity {
    /// The user id.
    pub(crate) fn user_id(&self) -> i64 {
        self.user.id
    }

    /// Whether the user may moderate (`admin` or `master`).
    pub(crate) fn is_moderator(&self) -> bool {
        self.user.has_role("admin") || self.user.has_role("master")
    }

    /// Whether the user is an administrator.
    pub(crate) fn is_admin(&self) -> bool {
        self.user.has_role("admin")
    }
}

/// Device details recorded with a new session.
#[derive(Clone, Debug, Default)]
pub struct DeviceInfo {
    /// Label the client sent (`deviceName`).
    pub name: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// The client's address (behind a trusted proxy, the one it names).
    pub ip: Option<IpAddr>,
}

/// What every successful login or refresh returns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenPair {
    /// JWT access token.
    pub access_token: String,
    /// Same as `accessToken`, for legacy clients that read `token`.
    #[schema(required = false)]
    pub token: String,
    /// Opaque single-use refresh token.
    pub refresh_token: String,
    /// Access token lifetime in seconds.
    #[schema(value_type = i64)]
    pub expires_in: u64,
    /// The device session.
    #[schema(required = false)]
    pub session_id: String,
    /// The user.
    pub user: crate::db::models::UserView,
}

/// The authentication service shared by handlers and sockets.
#[derive(Clone)]
pub struct Auth {
    db: Db,
    keys: TokenKeys,
    otp_key: Arc<hmac::Key>,
    sender: OtpSender,
    hasher: Hasher,
    limits: Arc<AuthLimits>,
    config: Arc<Config>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the service from the configuration.
    pub(crate) fn new(db: Db, config: Arc<Config>) -> Self {
        let secret = config.jwt_secret.expose().as_bytes();
        // OTP digests use a key derived from, not equal to, the JWT secret.
        let otp_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, secret),
                b"switchboard otp key",
            )
            .as_ref(),
        );
        Self {
            db,
            keys: TokenKeys::new(secret),
            otp_key: Arc::new(otp_key),
            sender: OtpSender::from_config(&config),
            hasher: Hasher::from_config(&config),
            limits: Arc::new(AuthLimits::new(&config)),
            config,
        }
    }

    /// The token keys (CLI `token`, tests).
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// The pool password checks run on (tests hold places in it).
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Checks again an identity a token proved earlier, without the token: a dropped Socket.IO
    /// session of a client that authenticates by event (seed 000) comes back on its private
    /// id. The same standing as [`Auth::authenticate`] is required: the user exists and is not
    /// banned, the device session (if any) is not signed out, and no forced logout came after
    /// `since` (when the session first authenticated).
    pub(crate) async fn revalidate(
        &self,
        user_id: i64,
        session_id: Option<String>,
        numeric_id: bool,
        since: chrono::DateTime<Utc>,
    ) -> AppResult<Identity> {
        let lookup = session_id.clone();
        let found = self
            .db
            .run(move |conn| accounts::identity(conn, user_id, lookup.as_deref()))
            .await?;
        let (user, _) = Self::standing(found, |cutoff| cutoff >= since)?;
        Ok(Identity {
            user,
            session_id,
            numeric_id,
        })
    }

    /// The standing every identity needs, whatever proved it: the user (and the device session a
    /// credential names) exist, the session is not signed out, the user is not banned, and a
    /// credential bound to no session does not predate a forced logout (`predates(cutoff)`: a
    /// forced logout revokes every device session; session-less credentials are cut off by time).
    fn standing(
        found: Option<(User, Option<DeviceSession>)>,
        predates: impl FnOnce(chrono::DateTime<Utc>) -> bool,
    ) -> AppResult<(User, Option<DeviceSession>)> {
        let Some((user, session)) = found else {
            return Err(AppError::unauthorized(
                ErrorCode::InvalidToken,
                "unknown user or session",
            ));
        };
        if session.as_ref().is_some_and(|s| s.revoked_at.is_some()) {
            return Err(AppError::unauthorized(
                ErrorCode::SessionRevoked,
                "this session was signed out",
            ));
        }
        if user.is_banned() {
            return Err(AppError::unauthorized(
                ErrorCode::AccountBanned,
                "this account is banned",
            ));
        }
        if let (None, Some(cutoff)) = (&session, user.tokens_valid_after) {
            if predates(cutoff) {
                return Err(AppError::unauthorized(
                    ErrorCode::SessionRevoked,
                    "this token was signed out by an administrator",
                ));
            }
        }
        Ok((user, session))
    }

    /// Verifies a bearer token and loads the caller: the signature and expiry, the user (must
    /// exist and not be banned) and, for session-bound tokens, the device session (must exist,
    /// belong to the user and not be revoked). A legacy backend's id for the user is first
    /// looked up among the imported ids; an unknown one is refused like an unknown user id.
    pub(crate) async fn authenticate(&self, token: &str) -> AppResult<Identity> {
        let verified = self.keys.verify(token)?;
        let issued_at = verified.issued_at;
        let numeric_id = verified.numeric_subject;
        // A session an earlier backend wrote into its tokens (`sessionId`) is unknown here; with
        // ACCEPT_LEGACY_SESSION_TOKENS such a token counts as session-less instead of refused.
        let legacy_fallback = verified.legacy_session && self.config.accept_legacy_session_tokens;
        // Taken before the lookup: a ban that races it is not overwritten by what it read.
        let ticket = self.db.contact_cache().ticket();
        let found = self
            .db
            .run(move |conn| {
                let user_id = match &verified.user_id {
                    tokens::Subject::Id(id) => *id,
                    tokens::Subject::Legacy(legacy_id) => match imported_user(conn, legacy_id)? {
                        Some(id) => id,
                        None => return Ok(None),
                    },
                };
                let found = accounts::identity(conn, user_id, verified.session_id.as_deref())?;
                match found {
                    Some((user, session)) => Ok(Some((user, session, verified.session_id))),
                    None if legacy_fallback => Ok(accounts::identity(conn, user_id, None)?
                        .map(|(user, _)| (user, None, None))),
                    None => Ok(None),
                }
            })
            .await?;
        let (found, sid) = match found {
            Some((user, session, sid)) => (Some((user, session)), sid),
            None => (None, None),
        };
        // Tokens without `iat` count as issued before a forced logout.
        let (user, _) = Self::standing(found, |cutoff| {
            issued_at.is_none_or(|iat| iat <= cutoff.timestamp())
        })?;
        // A user who just authenticated exists and is not banned: calls to them need not ask
        // the database again.
        self.db.contact_cache().note_users(ticket, &[user.id]);
        Ok(Identity {
            user,
            session_id: sid,
            numeric_id,
        })
    }

    /// Opens a device session for `user` and issues its first token pair.
    async fn open_session(&self, user: User, device: DeviceInfo) -> AppResult<TokenPair> {
        let sid = tokens::random_id()?;
        let (refresh, digest) = tokens::new_refresh_token()?;
        let expires = Utc::now() + self.config.refresh_token_ttl;
        let user_id = user.id;
        let sid_for_db = sid.clone();
        let ip = device.ip.map(|ip| ip.to_string());
        self.db
            .run(move |conn| {
                conn.build_transaction().run(|conn| {
                    accounts::create_session(
                        conn,
                        &NewDeviceSession {
                            id: &sid_for_db,
                            user_id,
                            device_name: device.name.as_deref(),
                            user_agent: device.user_agent.as_deref(),
                            ip: ip.as_deref(),
                        },
                    )?;
                    accounts::insert_refresh(conn, &digest, &sid_for_db, expires)
                })
            })
            .await?;
        self.pair(&user, &sid, refresh)
    }

    fn pair(&self, user: &User, sid: &str, refresh_token: String) -> AppResult<TokenPair> {
        let ttl = self.config.access_token_ttl.as_secs();
        let access = self.keys.sign(user.id, Some(sid), &user.role_list(), ttl)?;
        Ok(TokenPair {
            token: access.clone(),
            access_token: access,
            refresh_token,
            expires_in: ttl,
            session_id: sid.to_owned(),
            user: user.view(),
        })
    }

    /// Password login by phone or e-mail. The stored hash is read first and the connection
    /// given back; the password is then checked on the [`Hasher`], outside any database slot.
    pub(crate) async fn login_password(
        &self,
        phone: Option<&str>,
        email: Option<&str>,
        password: &str,
        device: DeviceInfo,
    ) -> AppResult<TokenPair> {
        let phone = phone.map(otp::normalize_phone).transpose()?;
        let email = email.map(normalize_email).transpose()?;
        let account = match (&phone, &email) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => return Err(AppError::validation("phone or email is required")),
        };
        let attempt = self
            .limits
            .begin(&account, device.ip)
            .map_err(|r| rate_limited(&r))?;
        // A place for the check is taken before the lookup, so a full queue costs no query.
        let check = self.hasher.reserve()?;
        let user = self
            .db
            .run(move |conn| match (&phone, &email) {
                (Some(p), _) => accounts::user_by_phone(conn, p),
                (None, Some(e)) => accounts::user_by_email(conn, e),
                (None, None) => Ok(None),
            })
            .await?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let checked = check.check(hash, password.to_owned()).await?;
        let user = match (checked.matched, user) {
            (true, Some(user)) => user,
            _ => {
                if let Some(refusal) = attempt.failed() {
                    return Err(self.refuse(refusal, "password", device.ip).await);
                }
                return Err(AppError::unauthorized(
                    ErrorCode::InvalidCredentials,
                    "wrong login or password",
                ));
            }
        };
        attempt.succeeded();
        if user.is_banned() {
            return Err(AppError::unauthorized(
                ErrorCode::AccountBanned,
                "this account is banned",
            ));
        }
        if let (Some(new_hash), Some(old_hash)) = (checked.rehashed, user.password_hash.clone()) {
            self.replace_legacy_hash(user.id, old_hash, new_hash).await;
        }
        self.open_session(user, device).await
    }

    /// Stores the current-scheme hash of a password that just matched a legacy (bcrypt) hash, if
    /// that hash is still the stored one: a password changed meanwhile is kept. A failure is
    /// logged and the login goes on; the next login tries again.
    async fn replace_legacy_hash(&self, user_id: i64, old_hash: String, new_hash: String) {
        use crate::db::schema::users;
        use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
        let replaced = self
            .db
            .run(move |conn| {
                Ok(diesel::update(
                    users::table
                        .filter(users::id.eq(user_id))
                        .filter(users::password_hash.eq(&old_hash)),
                )
                .set(users::password_hash.eq(&new_hash))
                .execute(conn)?)
            })
            .await;
        match replaced {
            Ok(0) => tracing::info!(
                user = user_id,
                "a legacy password hash changed before it could be replaced; left as it is"
            ),
            Ok(_) => tracing::info!(
                user = user_id,
                "a legacy password hash was replaced with the current scheme"
            ),
            Err(error) => tracing::warn!(
                user = user_id,
                %error,
                "could not replace a legacy password hash; it stays until the next login"
            ),
        }
    }

    /// The answer to an attempt that crossed a limit: its lockouts are logged and audited,
    /// the client gets 429 `rate_limited`.
    async fn refuse(
        &self,
        refusal: Refusal,
        via: &'static str,
        client: Option<IpAddr>,
    ) -> AppError {
        for lockout in &refusal.lockouts {
            let secs = lockout.duration.as_secs();
            tracing::warn!(
                scope = lockout.scope.as_str(),
                key = %lockout.key,
                client = ?client,
                via,
                failures = lockout.failures,
                lockout_secs = secs,
                level = lockout.level,
                "authentication locked out"
            );
            let lockout = lockout.clone();
            let ip = client.map(|ip| ip.to_string());
            let recorded = self
                .db
                .run(move |conn| {
                    audit::record_system(
                        conn,
                        &audit::SystemEntry {
                            action: "auth.lockout",
                            target_type: lockout.scope.as_str(),
                            target_id: Some(&lockout.key),
                            details: serde_json::json!({
                                "via": via,
                                "failures": lockout.failures,
                                "lockoutSecs": secs,
                                "level": lockout.level,
                            }),
                            ip: ip.as_deref(),
                        },
                    )
                })
                .await;
            if let Err(error) = recorded {
                tracing::warn!(%error, "could not audit an authentication lockout");
            }
        }
        rate_limited(&refusal)
    }

    /// Exchanges a refresh token for a new pair (rotation). Reusing a rotated token revokes the
    /// device session.
    pub(crate) async fn refresh(&self, refresh_token: &str) -> AppResult<TokenPair> {
        let presented = tokens::refresh_digest(refresh_token);
        let (successor, successor_digest) = tokens::new_refresh_token()?;
        let expires = Utc::now() + self.config.refresh_token_ttl;
        let outcome = self
            .db
            .run(move |conn| accounts::rotate_refresh(conn, &presented, &successor_digest, expires))
            .await?;
        match outcome {
            Rotation::Rotated { user, session } => {
                if user.is_banned() {
                    return Err(AppError::unauthorized(
                        ErrorCode::AccountBanned,
                        "this account is banned",
                    ));
                }
                self.pair(&user, &session.id, successor)
            }
            Rotation::Reused { session_id } => {
                tracing::warn!(session = %session_id, "refresh token reused; session revoked");
                Err(AppError::unauthorized(
                    ErrorCode::RefreshTokenReused,
                    "refresh token already used; the session has been signed out",
                ))
            }
            Rotation::Invalid => Err(AppError::unauthorized(
                ErrorCode::InvalidRefreshToken,
                "refresh token is invalid or expired",
            )),
        }
    }

    /// Revokes the caller's device session.
    pub(crate) async fn logout(&self, identity: &Identity) -> AppResult<bool> {
        let Some(sid) = identity.session_id.clone() else {
            return Ok(false);
        };
        self.db
            .run(move |conn| accounts::revoke_session(conn, &sid, "logout"))
            .await
    }

    /// Sends a one-time code. Registration needs an unused phone, login an existing account.
    /// A second code within the cooldown is refused with `rate_limited`, and so is a request
    /// past the limits per client address and for the whole server (counted whatever the
    /// answer, so they also bound probing which phones have accounts).
    pub(crate) async fn send_otp(
        &self,
        raw_phone: &str,
        purpose: Purpose,
        client: Option<IpAddr>,
    ) -> AppResult<u64> {
        let phone = otp::normalize_phone(raw_phone)?;
        self.limits.otp_send(client).map_err(|r| rate_limited(&r))?;
        let code = otp::generate_code(self.config.otp_length)?;
        let digest = otp::digest(&self.otp_key, &phone, purpose, &code);
        let ttl = self.config.otp_ttl;
        let cooldown = self.config.otp_resend_cooldown;
        let phone_db = phone.clone();
        let id = self
            .db
            .run(move |conn| {
                let existing = accounts::user_by_phone(conn, &phone_db)?;
                match (purpose, existing) {
                    (Purpose::Register, Some(_)) => {
                        return Err(AppError::conflict(
                            ErrorCode::PhoneTaken,
                            "an account with this phone already exists; log in instead",
                        ))
                    }
                    (Purpose::Login, None) => {
                        return Err(AppError::NotFound(
                            "no account with this phone; register first".into(),
                        ))
                    }
                    (Purpose::Login, Some(u)) if u.is_banned() => {
                        return Err(AppError::unauthorized(
                            ErrorCode::AccountBanned,
                            "this account is banned",
                        ))
                    }
                    _ => {}
                }
                let now = Utc::now();
                if let Some(last) =
                    accounts::latest_otp_since(conn, &phone_db, purpose.as_str(), now - cooldown)?
                {
                    let wait = (last.created_at + cooldown - now).num_seconds().max(1);
                    return Err(AppError::RateLimited {
                        retry_after_secs: u64::try_from(wait).unwrap_or(1),
                    });
                }
                accounts::insert_otp(conn, &phone_db, purpose.as_str(), &digest, now + ttl)
            })
            .await?;
        let delivery = OtpDelivery {
            phone: &phone,
            code: &code,
            purpose: purpose.as_str(),
            expires_in_secs: ttl.as_secs(),
        };
        if let Err(e) = self.sender.send(&delivery).await {
            // Retract the undelivered code so the user can ask again straight away.
            if let Err(retract) = self
                .db
                .run(move |conn| accounts::delete_otp(conn, id))
                .await
            {
                // The code stays until it expires; the resend cooldown applies meanwhile.
                tracing::warn!(error = %retract, "could not retract an undelivered code");
            }
            return Err(e);
        }
        Ok(ttl.as_secs())
    }

    /// Checks a code and maps every failure to a distinct error code. Wrong codes count
    /// against the phone's account and the client's address like wrong passwords.
    async fn consume_otp(
        &self,
        phone: &str,
        purpose: Purpose,
        code: &str,
        client: Option<IpAddr>,
    ) -> AppResult<()> {
        let attempt = self
            .limits
            .begin(phone, client)
            .map_err(|r| rate_limited(&r))?;
        let key = Arc::clone(&self.otp_key);
        let (phone_db, code) = (phone.to_owned(), code.trim().to_owned());
        let max = self.config.otp_max_attempts;
        let outcome = self
            .db
            .run(move |conn| {
                let check = |stored: &[u8]| otp::matches(&key, &phone_db, purpose, &code, stored);
                accounts::check_otp(conn, &phone_db, purpose.as_str(), max, &check)
            })
            .await?;
        if matches!(outcome, OtpCheck::Accepted) {
            attempt.succeeded();
            return Ok(());
        }
        if let Some(refusal) = attempt.failed() {
            let via = match purpose {
                Purpose::Register => "otp_register",
                Purpose::Login => "otp_login",
            };
            return Err(self.refuse(refusal, via, client).await);
        }
        match outcome {
            OtpCheck::Accepted => Ok(()),
            OtpCheck::Missing => Err(AppError::bad_request(
                ErrorCode::OtpInvalid,
                "no code was requested for this phone",
            )),
            OtpCheck::Expired => Err(AppError::bad_request(
                ErrorCode::OtpExpired,
                "the code has expired; request a new one",
            )),
            OtpCheck::Wrong { remaining } if remaining > 0 => Err(AppError::bad_request(
                ErrorCode::OtpInvalid,
                format!("wrong code; {remaining} attempt(s) left"),
            )),
            OtpCheck::Wrong { .. } | OtpCheck::Exhausted => Err(AppError::bad_request(
                ErrorCode::OtpAttemptsExceeded,
                "too many wrong codes; request a new one",
            )),
        }
    }

    /// Verifies a registration code, creates the account and logs it in.
    pub(crate) async fn register_with_otp(
        &self,
        raw_phone: &str,
        code: &str,
        name: Option<&str>,
        email: Option<&str>,
        password: Option<&str>,
        device: DeviceInfo,
    ) -> AppResult<TokenPair> {
        let phone = otp::normalize_phone(raw_phone)?;
        let email = email.map(normalize_email).transpose()?;
        if let Some(pw) = password {
            self.check_password_policy(pw)?;
        }
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&phone)
            .to_owned();
        validate_name(&name)?;
        // The hashing place is taken before the code is used up: a busy server must not cost
        // the user their code.
        let hashing = password
            .map(|pw| Ok::<_, AppError>((self.hasher.reserve()?, pw.to_owned())))
            .transpose()?;
        self.consume_otp(&phone, Purpose::Register, code, device.ip)
            .await?;
        let hash = match hashing {
            Some((place, pw)) => Some(place.hash(pw).await?),
            None => None,
        };
        let user = self
            .db
            .run(move |conn| {
                accounts::insert_user(
                    conn,
                    &NewUser {
                        name: &name,
                        phone: Some(&phone),
                        email: email.as_deref(),
                        password_hash: hash.as_deref(),
                        roles: Vec::new(),
                    },
                )
            })
            .await?;
        self.open_session(user, device).await
    }

    /// Verifies a login code and opens a session.
    pub(crate) async fn login_with_otp(
        &self,
        raw_phone: &str,
        code: &str,
        device: DeviceInfo,
    ) -> AppResult<TokenPair> {
        let phone = otp::normalize_phone(raw_phone)?;
        self.consume_otp(&phone, Purpose::Login, code, device.ip)
            .await?;
        let user = self
            .db
            .run(move |conn| accounts::user_by_phone(conn, &phone))
            .await?
            .ok_or_else(|| AppError::NotFound("no account with this phone".into()))?;
        if user.is_banned() {
            return Err(AppError::unauthorized(
                ErrorCode::AccountBanned,
                "this account is banned",
            ));
        }
        self.open_session(user, device).await
    }

    /// Rejects passwords shorter than `PASSWORD_MIN_LENGTH`.
    pub(crate) fn check_password_policy(&self, password: &str) -> AppResult<()> {
        if password.chars().count() < self.config.password_min_length {
            return Err(AppError::Validation {
                code: ErrorCode::WeakPassword,
                message: format!(
                    "password must be at least {} characters",
                    self.config.password_min_length
                )
                .into(),
            });
        }
        Ok(())
    }
}

/// The user a legacy backend knew by `legacy_id`, as `switchboard import` recorded it (the
/// oldest mapping when several sources used the same id).
fn imported_user(conn: &mut diesel::PgConnection, legacy_id: &str) -> AppResult<Option<i64>> {
    use crate::db::schema::legacy_ids;
    use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, RunQueryDsl};
    Ok(legacy_ids::table
        .filter(legacy_ids::kind.eq("user"))
        .filter(legacy_ids::legacy_id.eq(legacy_id))
        .order((legacy_ids::imported_at, legacy_ids::source))
        .select(legacy_ids::id)
        .first::<i64>(conn)
        .optional()?)
}

/// 429 `rate_limited` with the refusal's wait.
fn rate_limited(refusal: &Refusal) -> AppError {
    AppError::RateLimited {
        retry_after_secs: refusal.retry_after_secs(),
    }
}

/// Lower-cases and sanity-checks an e-mail address.
pub(crate) fn normalize_email(raw: &str) -> AppResult<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(AppError::bad_request(
            ErrorCode::InvalidEmail,
            "e-mail address is not valid",
        ))
    }
}

/// Display names: 1–200 characters after trimming.
pub(crate) fn validate_name(name: &str) -> AppResult<()> {
    let n = name.trim().chars().count();
    if (1..=200).contains(&n) {
        Ok(())
    } else {
        Err(AppError::validation("name must be 1 to 200 characters"))
    }
}

/// Creates a user with an optional password (CLI `user add`, the dev bootstrap admin).
pub fn create_user(
    conn: &mut diesel::PgConnection,
    name: &str,
    phone: Option<&str>,
    email: Option<&str>,
    password: Option<&str>,
    roles: Vec<String>,
) -> AppResult<User> {
    validate_name(name)?;
    let phone = phone.map(otp::normalize_phone).transpose()?;
    let email = email.map(normalize_email).transpose()?;
    if phone.is_none() && email.is_none() {
        return Err(AppError::validation("a phone or an e-mail is required"));
    }
    let hash = password.map(password::hash).transpose()?;
    accounts::insert_user(
        conn,
        &NewUser {
            name: name.trim(),
            phone: phone.as_deref(),
            email: email.as_deref(),
            password_hash: hash.as_deref(),
            roles,
        },
    )
}
