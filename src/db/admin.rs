//! Queries behind the admin dashboard: user search and moderation, conversation search, call
//! history with filters, and the counts shown on the stats page.

use super::calls::{CallRow, ParticipantRow};
use super::conversations::Conversation;
use super::models::{DeviceSession, User};
use super::schema::{call_participants, calls, conversation_members, conversations};
use super::schema::{device_sessions, messages, users};
use crate::error::{AppError, AppResult};
use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use std::collections::BTreeMap;

/// Filters of the user list.
#[derive(Clone, Debug, Default)]
pub(crate) struct UserFilter {
    /// Name, phone or e-mail contains this (case-insensitive).
    pub q: Option<String>,
    /// Holds this role.
    pub role: Option<String>,
    /// Holds this team role.
    pub team_role: Option<String>,
    /// Banned (true) or not (false).
    pub banned: Option<bool>,
    /// Only these ids (the online filter), or none of them.
    pub online: Option<(bool, Vec<i64>)>,
    /// Ids greater than this (cursor).
    pub after: Option<i64>,
}

/// Users matching the filter, by ascending id.
pub(crate) fn search_users(
    conn: &mut PgConnection,
    f: &UserFilter,
    limit: i64,
) -> AppResult<Vec<User>> {
    let mut q = users::table
        .select(User::as_select())
        .order(users::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(text) = f.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        let pattern = format!("%{}%", super::accounts::escape_like(text));
        q = q.filter(
            users::name
                .ilike(pattern.clone())
                .or(users::phone.ilike(pattern.clone()))
                .or(users::email.ilike(pattern)),
        );
    }
    if let Some(role) = &f.role {
        q = q.filter(
            sql::<Bool>("roles @> ARRAY[")
                .bind::<Text, _>(role.clone())
                .sql("]::text[]"),
        );
    }
    if let Some(role) = &f.team_role {
        q = q.filter(
            sql::<Bool>("team_roles @> ARRAY[")
                .bind::<Text, _>(role.clone())
                .sql("]::text[]"),
        );
    }
    match f.banned {
        Some(true) => q = q.filter(users::banned_at.is_not_null()),
        Some(false) => q = q.filter(users::banned_at.is_null()),
        None => {}
    }
    match &f.online {
        Some((true, ids)) => q = q.filter(users::id.eq_any(ids.clone())),
        Some((false, ids)) => q = q.filter(users::id.ne_all(ids.clone())),
        None => {}
    }
    if let Some(after) = f.after {
        q = q.filter(users::id.gt(after));
    }
    Ok(q.load(conn)?)
}

/// A user's device sessions, newest first.
pub(crate) fn device_sessions_of(
    conn: &mut PgConnection,
    user: i64,
) -> AppResult<Vec<DeviceSession>> {
    Ok(device_sessions::table
        .filter(device_sessions::user_id.eq(user))
        .order(device_sessions::created_at.desc())
        .limit(200)
        .select(DeviceSession::as_select())
        .load(conn)?)
}

/// Replaces roles and/or team roles; returns the user before and after.
pub(crate) fn set_roles(
    conn: &mut PgConnection,
    user: i64,
    roles: Option<&[String]>,
    team_roles: Option<&[String]>,
) -> AppResult<(User, User)> {
    conn.transaction(|conn| {
        let before: User = users::table
            .find(user)
            .select(User::as_select())
            .for_update()
            .first(conn)
            .optional()?
            .ok_or_else(|| AppError::NotFound("user not found".into()))?;
        let after = diesel::update(users::table.find(user))
            .set((
                users::roles.eq(roles
                    .map(|r| r.iter().cloned().map(Some).collect::<Vec<_>>())
                    .unwrap_or_else(|| before.roles.clone())),
                users::team_roles.eq(team_roles
                    .map(|r| r.iter().cloned().map(Some).collect::<Vec<_>>())
                    .unwrap_or_else(|| before.team_roles.clone())),
                users::updated_at.eq(Utc::now()),
            ))
            .returning(User::as_returning())
            .get_result(conn)?;
        Ok((before, after))
    })
}

/// Bans (with a reason) or unbans a user; returns the updated user.
pub(crate) fn set_banned(
    conn: &mut PgConnection,
    user: i64,
    banned: bool,
    reason: Option<&str>,
) -> AppResult<User> {
    let (at, why) = if banned {
        (Some(Utc::now()), reason)
    } else {
        (None, None)
    };
    diesel::update(users::table.find(user))
        .set((
            users::banned_at.eq(at),
            users::ban_reason.eq(why),
            users::updated_at.eq(Utc::now()),
        ))
        .returning(User::as_returning())
        .get_result(conn)
        .optional()?
        .ok_or_else(|| AppError::NotFound("user not found".into()))
}

/// Revokes every live device session of a user and refuses access tokens issued until now
/// (session-less tokens included). Returns how many sessions were revoked.
pub(crate) fn force_logout(conn: &mut PgConnection, user: i64, reason: &str) -> AppResult<usize> {
    conn.transaction(|conn| {
        let now = Utc::now();
        let found = diesel::update(users::table.find(user))
            .set(users::tokens_valid_after.eq(now))
            .execute(conn)?;
        if found == 0 {
            return Err(AppError::NotFound("user not found".into()));
        }
        Ok(diesel::update(
            device_sessions::table
                .filter(device_sessions::user_id.eq(user))
                .filter(device_sessions::revoked_at.is_null()),
        )
        .set((
            device_sessions::revoked_at.eq(now),
            device_sessions::revoked_reason.eq(reason),
        ))
        .execute(conn)?)
    })
}

/// Filters of the conversation search.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConversationFilter {
    /// Title, or a member's name or phone, contains this.
    pub q: Option<String>,
    /// `direct|group|team|support`.
    pub kind: Option<String>,
    /// Has this member.
    pub member: Option<i64>,
    /// Carries this context type.
    pub context_type: Option<String>,
    /// Ids smaller than this (cursor).
    pub before_id: Option<i64>,
}

/// Conversations matching the filter, newest first.
pub(crate) fn search_conversations(
    conn: &mut PgConnection,
    f: &ConversationFilter,
    limit: i64,
) -> AppResult<Vec<Conversation>> {
    let mut q = conversations::table
        .select(Conversation::as_select())
        .order(conversations::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(text) = f.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        let pattern = format!("%{}%", super::accounts::escape_like(text));
        let by_member = conversation_members::table
            .inner_join(users::table)
            .filter(
                users::name
                    .ilike(pattern.clone())
                    .or(users::phone.ilike(pattern.clone())),
            )
            .select(conversation_members::conversation_id);
        q = q.filter(
            conversations::title
                .ilike(pattern)
                .or(conversations::id.eq_any(by_member)),
        );
    }
    if let Some(kind) = &f.kind {
        q = q.filter(conversations::kind.eq(kind.clone()));
    }
    if let Some(member) = f.member {
        let of_member = conversation_members::table
            .filter(conversation_members::user_id.eq(member))
            .select(conversation_members::conversation_id);
        q = q.filter(conversations::id.eq_any(of_member));
    }
    if let Some(ctx) = &f.context_type {
        q = q.filter(conversations::context_type.eq(ctx.clone()));
    }
    if let Some(b) = f.before_id {
        q = q.filter(conversations::id.lt(b));
    }
    Ok(q.load(conn)?)
}

/// Filters of the call history.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallFilter {
    /// Final or current status.
    pub status: Option<String>,
    /// A party of the call.
    pub user: Option<i64>,
    /// `audio|video`.
    pub call_type: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Cursor: (created_at, id) of the last call of the previous page.
    pub before: Option<(DateTime<Utc>, String)>,
}

/// Calls matching the filter, newest first, with their participants.
pub(crate) fn search_calls(
    conn: &mut PgConnection,
    f: &CallFilter,
    limit: i64,
) -> AppResult<Vec<(CallRow, Vec<ParticipantRow>)>> {
    let mut q = calls::table
        .order((calls::created_at.desc(), calls::id.desc()))
        .limit(limit)
        .select(CallRow::as_select())
        .into_boxed();
    if let Some(s) = &f.status {
        q = q.filter(calls::status.eq(s.clone()));
    }
    if let Some(user) = f.user {
        let of_user = call_participants::table
            .filter(call_participants::user_id.eq(user))
            .select(call_participants::call_id);
        q = q.filter(calls::id.eq_any(of_user));
    }
    if let Some(t) = &f.call_type {
        q = q.filter(calls::call_type.eq(t.clone()));
    }
    if let Some(since) = f.since {
        q = q.filter(calls::created_at.ge(since));
    }
    if let Some(until) = f.until {
        q = q.filter(calls::created_at.lt(until));
    }
    if let Some((ts, id)) = &f.before {
        q = q.filter(
            calls::created_at
                .lt(*ts)
                .or(calls::created_at.eq(*ts).and(calls::id.lt(id.clone()))),
        );
    }
    let rows: Vec<CallRow> = q.load(conn)?;
    super::calls::with_participants(conn, rows)
}

/// Calls by id with their participants (live calls).
pub(crate) fn calls_by_ids(
    conn: &mut PgConnection,
    ids: &[String],
) -> AppResult<Vec<(CallRow, Vec<ParticipantRow>)>> {
    let rows: Vec<CallRow> = calls::table
        .filter(calls::id.eq_any(ids))
        .select(CallRow::as_select())
        .load(conn)?;
    super::calls::with_participants(conn, rows)
}

/// Counts for the stats page.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Counts {
    /// Messages committed in the last 60 seconds.
    pub messages_last_minute: i64,
    /// Messages committed since midnight UTC.
    pub messages_today: i64,
    /// Calls started since midnight UTC.
    pub calls_today: i64,
    /// Calls started since midnight UTC, by current status.
    pub calls_today_by_outcome: BTreeMap<String, i64>,
    /// Registered users.
    pub users: i64,
    /// Banned users.
    pub banned_users: i64,
}

/// The stats page's database counts, relative to `now`.
pub(crate) fn counts(conn: &mut PgConnection, now: DateTime<Utc>) -> AppResult<Counts> {
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |t| t.and_utc());
    let minute_ago = now - chrono::Duration::seconds(60);
    let messages_last_minute = messages::table
        .filter(messages::created_at.gt(minute_ago))
        .count()
        .get_result(conn)?;
    let messages_today = messages::table
        .filter(messages::created_at.ge(midnight))
        .count()
        .get_result(conn)?;
    let by_status: Vec<(String, i64)> = calls::table
        .filter(calls::created_at.ge(midnight))
        .group_by(calls::status)
        .select((calls::status, diesel::dsl::count_star()))
        .load(conn)?;
    let users_total = users::table.count().get_result(conn)?;
    let banned_users = users::table
        .filter(users::banned_at.is_not_null())
        .count()
        .get_result(conn)?;
    Ok(Counts {
        messages_last_minute,
        messages_today,
        calls_today: by_status.iter().map(|(_, n)| n).sum(),
        calls_today_by_outcome: by_status.into_iter().collect(),
        users: users_total,
        banned_users,
    })
}
