//! Queries for users, device sessions, refresh tokens and one-time codes. Plain sync functions
//! over a connection; callers run them through [`crate::db::Db::run`] or from the CLI.

use super::models::{DeviceSession, NewDeviceSession, NewUser, OtpCode, RefreshToken, User};
use super::schema::{device_sessions, otp_codes, refresh_tokens, users};
use crate::error::{AppError, AppResult, ErrorCode};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Inserts a user; a taken phone or e-mail is a 409 with `phone_taken` / `email_taken`.
pub(crate) fn insert_user(conn: &mut PgConnection, new: &NewUser<'_>) -> AppResult<User> {
    diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(conn)
        .map_err(|e| match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                if info.constraint_name().is_some_and(|c| c.contains("email")) {
                    AppError::conflict(
                        ErrorCode::EmailTaken,
                        "an account with this e-mail already exists",
                    )
                } else {
                    AppError::conflict(
                        ErrorCode::PhoneTaken,
                        "an account with this phone already exists",
                    )
                }
            }
            other => other.into(),
        })
}

/// A user by id.
pub(crate) fn user_by_id(conn: &mut PgConnection, id: i64) -> AppResult<Option<User>> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

/// A user by normalised phone.
pub(crate) fn user_by_phone(conn: &mut PgConnection, phone: &str) -> AppResult<Option<User>> {
    Ok(users::table
        .filter(users::phone.eq(phone))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

/// A user by lower-cased e-mail.
pub(crate) fn user_by_email(conn: &mut PgConnection, email: &str) -> AppResult<Option<User>> {
    Ok(users::table
        .filter(users::email.eq(email))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

/// Whether any user holds the `admin` role.
pub(crate) fn admin_exists(conn: &mut PgConnection) -> AppResult<bool> {
    use diesel::dsl::{exists, sql};
    use diesel::sql_types::Bool;
    Ok(diesel::select(exists(
        users::table.filter(sql::<Bool>("roles @> ARRAY['admin']::text[]")),
    ))
    .get_result(conn)?)
}

/// Changes name and/or avatar. `avatar: Some(None)` clears it.
pub(crate) fn update_profile(
    conn: &mut PgConnection,
    id: i64,
    name: Option<&str>,
    avatar: Option<Option<&str>>,
) -> AppResult<User> {
    #[derive(AsChangeset)]
    #[diesel(table_name = users)]
    struct Changes<'a> {
        name: Option<&'a str>,
        avatar_url: Option<Option<&'a str>>,
        updated_at: DateTime<Utc>,
    }
    Ok(diesel::update(users::table.find(id))
        .set(&Changes {
            name,
            avatar_url: avatar,
            updated_at: Utc::now(),
        })
        .returning(User::as_returning())
        .get_result(conn)?)
}

/// Users whose name or phone contains `query` (case-insensitive), by ascending id after the
/// cursor `after`. Uses the trigram indexes on name and phone.
pub(crate) fn search_users(
    conn: &mut PgConnection,
    query: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> AppResult<Vec<User>> {
    let mut q = users::table
        .select(User::as_select())
        .order(users::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(text) = query.map(str::trim).filter(|t| !t.is_empty()) {
        let pattern = format!("%{}%", escape_like(text));
        q = q.filter(
            users::name
                .ilike(pattern.clone())
                .or(users::phone.ilike(pattern)),
        );
    }
    if let Some(after) = after {
        q = q.filter(users::id.gt(after));
    }
    Ok(q.load(conn)?)
}

/// Escapes `%`, `_` and `\` for a LIKE pattern.
pub(crate) fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Opens a device session.
pub(crate) fn create_session(
    conn: &mut PgConnection,
    new: &NewDeviceSession<'_>,
) -> AppResult<DeviceSession> {
    Ok(diesel::insert_into(device_sessions::table)
        .values(new)
        .returning(DeviceSession::as_returning())
        .get_result(conn)?)
}

/// A device session by id.
pub(crate) fn session_by_id(conn: &mut PgConnection, id: &str) -> AppResult<Option<DeviceSession>> {
    Ok(device_sessions::table
        .find(id)
        .select(DeviceSession::as_select())
        .first(conn)
        .optional()?)
}

/// Revokes a device session (idempotent); returns whether it was live.
pub(crate) fn revoke_session(conn: &mut PgConnection, id: &str, reason: &str) -> AppResult<bool> {
    let n = diesel::update(
        device_sessions::table.filter(
            device_sessions::id
                .eq(id)
                .and(device_sessions::revoked_at.is_null()),
        ),
    )
    .set((
        device_sessions::revoked_at.eq(Utc::now()),
        device_sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)?;
    Ok(n > 0)
}

/// The user and, for session-bound tokens, the device session: one round trip per check.
pub(crate) fn identity(
    conn: &mut PgConnection,
    user_id: i64,
    session_id: Option<&str>,
) -> AppResult<Option<(User, Option<DeviceSession>)>> {
    let Some(user) = user_by_id(conn, user_id)? else {
        return Ok(None);
    };
    let session = match session_id {
        Some(sid) => match session_by_id(conn, sid)? {
            Some(s) if s.user_id == user_id => Some(s),
            _ => return Ok(None),
        },
        None => None,
    };
    Ok(Some((user, session)))
}

/// Stores a refresh token digest for a session.
pub(crate) fn insert_refresh(
    conn: &mut PgConnection,
    digest: &[u8],
    session_id: &str,
    expires_at: DateTime<Utc>,
) -> AppResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(digest),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub(crate) enum Rotation {
    /// The token was live; a successor was stored.
    Rotated {
        /// The session's owner.
        user: Box<User>,
        /// The session.
        session: DeviceSession,
    },
    /// The token had already been rotated: the session has now been revoked.
    Reused {
        /// The revoked session.
        session_id: String,
    },
    /// Unknown, expired, or its session was revoked.
    Invalid,
}

/// Exchanges a refresh token for a successor in one transaction (row-locked, so two concurrent
/// refreshes with the same token cannot both succeed). Reuse of a rotated token revokes the
/// whole device session, cutting off whoever holds the current token too.
pub(crate) fn rotate_refresh(
    conn: &mut PgConnection,
    presented: &[u8],
    successor: &[u8],
    successor_expires: DateTime<Utc>,
) -> AppResult<Rotation> {
    conn.transaction(|conn| {
        let Some(token) = refresh_tokens::table
            .find(presented)
            .select(RefreshToken::as_select())
            .for_update()
            .first(conn)
            .optional()?
        else {
            return Ok(Rotation::Invalid);
        };
        let now = Utc::now();
        if token.rotated_at.is_some() {
            revoke_session(conn, &token.session_id, "refresh_token_reuse")?;
            return Ok(Rotation::Reused {
                session_id: token.session_id,
            });
        }
        if token.expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        let Some(session) = session_by_id(conn, &token.session_id)? else {
            return Ok(Rotation::Invalid);
        };
        if session.revoked_at.is_some() {
            return Ok(Rotation::Invalid);
        }
        let Some(user) = user_by_id(conn, session.user_id)? else {
            return Ok(Rotation::Invalid);
        };
        diesel::update(refresh_tokens::table.find(presented))
            .set(refresh_tokens::rotated_at.eq(now))
            .execute(conn)?;
        insert_refresh(conn, successor, &session.id, successor_expires)?;
        diesel::update(device_sessions::table.find(&session.id))
            .set(device_sessions::last_used_at.eq(now))
            .execute(conn)?;
        Ok(Rotation::Rotated {
            user: Box::new(user),
            session,
        })
    })
}

/// The newest code for a phone and purpose created after `since`.
pub(crate) fn latest_otp_since(
    conn: &mut PgConnection,
    phone: &str,
    purpose: &str,
    since: DateTime<Utc>,
) -> AppResult<Option<OtpCode>> {
    Ok(otp_codes::table
        .filter(otp_codes::phone.eq(phone))
        .filter(otp_codes::purpose.eq(purpose))
        .filter(otp_codes::created_at.gt(since))
        .order(otp_codes::created_at.desc())
        .select(OtpCode::as_select())
        .first(conn)
        .optional()?)
}

/// Stores a new code; earlier unused codes for the same phone and purpose stop counting.
pub(crate) fn insert_otp(
    conn: &mut PgConnection,
    phone: &str,
    purpose: &str,
    digest: &[u8],
    expires_at: DateTime<Utc>,
) -> AppResult<i64> {
    conn.transaction(|conn| {
        let now = Utc::now();
        diesel::update(
            otp_codes::table
                .filter(otp_codes::phone.eq(phone))
                .filter(otp_codes::purpose.eq(purpose))
                .filter(otp_codes::consumed_at.is_null()),
        )
        .set(otp_codes::consumed_at.eq(now))
        .execute(conn)?;
        Ok(diesel::insert_into(otp_codes::table)
            .values((
                otp_codes::phone.eq(phone),
                otp_codes::purpose.eq(purpose),
                otp_codes::code_hash.eq(digest),
                otp_codes::expires_at.eq(expires_at),
            ))
            .returning(otp_codes::id)
            .get_result(conn)?)
    })
}

/// Deletes a code whose delivery failed, so it does not block a retry through the cooldown.
pub(crate) fn delete_otp(conn: &mut PgConnection, id: i64) -> AppResult<()> {
    diesel::delete(otp_codes::table.find(id)).execute(conn)?;
    Ok(())
}

/// Outcome of checking a code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OtpCheck {
    /// Correct: the code is now consumed.
    Accepted,
    /// No live code exists for this phone and purpose.
    Missing,
    /// The code expired.
    Expired,
    /// Wrong code; `remaining` guesses are left (0: the code is burnt).
    Wrong {
        /// Guesses left.
        remaining: i32,
    },
    /// The attempt limit was already reached.
    Exhausted,
}

/// Checks a code under a row lock: at most `max_attempts` guesses per code, even concurrently.
pub(crate) fn check_otp(
    conn: &mut PgConnection,
    phone: &str,
    purpose: &str,
    max_attempts: i32,
    is_correct: &dyn Fn(&[u8]) -> bool,
) -> AppResult<OtpCheck> {
    conn.transaction(|conn| {
        let Some(code) = otp_codes::table
            .filter(otp_codes::phone.eq(phone))
            .filter(otp_codes::purpose.eq(purpose))
            .filter(otp_codes::consumed_at.is_null())
            .order(otp_codes::created_at.desc())
            .select(OtpCode::as_select())
            .for_update()
            .first(conn)
            .optional()?
        else {
            return Ok(OtpCheck::Missing);
        };
        let now = Utc::now();
        if code.attempts >= max_attempts {
            return Ok(OtpCheck::Exhausted);
        }
        if code.expires_at <= now {
            return Ok(OtpCheck::Expired);
        }
        if is_correct(&code.code_hash) {
            diesel::update(otp_codes::table.find(code.id))
                .set(otp_codes::consumed_at.eq(now))
                .execute(conn)?;
            return Ok(OtpCheck::Accepted);
        }
        let attempts: i32 = diesel::update(otp_codes::table.find(code.id))
            .set(otp_codes::attempts.eq(otp_codes::attempts + 1))
            .returning(otp_codes::attempts)
            .get_result(conn)?;
        Ok(OtpCheck::Wrong {
            remaining: (max_attempts - attempts).max(0),
        })
    })
}

/// Records when users were last seen: one UPDATE for the whole batch (`(user, time)` pairs,
/// one per user). A time never moves an existing `last_seen_at` back. Answers the rows updated
/// (users deleted meanwhile are skipped).
pub(crate) fn touch_last_seen_many(
    conn: &mut PgConnection,
    seen: &[(i64, DateTime<Utc>)],
) -> AppResult<usize> {
    use diesel::sql_types::{Array, BigInt, Timestamptz};
    if seen.is_empty() {
        return Ok(0);
    }
    let (ids, times): (Vec<i64>, Vec<DateTime<Utc>>) = seen.iter().copied().unzip();
    Ok(diesel::sql_query(
        "UPDATE users u SET last_seen_at = GREATEST(u.last_seen_at, k.at) \
         FROM unnest($1::bigint[], $2::timestamptz[]) AS k(id, at) WHERE u.id = k.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Timestamptz>, _>(times)
    .execute(conn)?)
}

/// Last-seen times of some users.
pub(crate) fn last_seen_of(
    conn: &mut PgConnection,
    ids: &[i64],
) -> AppResult<std::collections::HashMap<i64, DateTime<Utc>>> {
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .filter(users::last_seen_at.is_not_null())
        .select((users::id, users::last_seen_at))
        .load::<(i64, Option<DateTime<Utc>>)>(conn)?
        .into_iter()
        .filter_map(|(id, t)| Some((id, t?)))
        .collect())
}

/// The given ids that are existing, unbanned users.
pub(crate) fn unbanned_users(conn: &mut PgConnection, ids: &[i64]) -> AppResult<Vec<i64>> {
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .filter(users::banned_at.is_null())
        .select(users::id)
        .load(conn)?)
}
