//! Support conversations (seed 002's admin ↔ astrologer chats).
//!
//! Each non-admin user has at most one, created on first use. Its members are that user and
//! **every admin** (unbanned holders of the `admin` role): a staff member writes to "the
//! admins" without knowing who will answer, any admin may reply, and each admin keeps their own
//! read cursor. Membership follows the admin set: it is brought up to date whenever the
//! conversation is opened and, for all support conversations at once, whenever an admin is
//! appointed, dismissed, banned or unbanned.

use super::conversations::Conversation;
use super::schema::{conversation_members, conversations, users};
use crate::error::{AppError, AppResult};
use diesel::prelude::*;

/// Returns the support conversation of `user` (created if needed) with its current members,
/// after bringing the admin membership up to date.
pub(crate) fn sync_one(conn: &mut PgConnection, user: i64) -> AppResult<(Conversation, Vec<i64>)> {
    conn.transaction(|conn| {
        let roles: Vec<Option<String>> = users::table
            .find(user)
            .select(users::roles)
            .first(conn)
            .optional()?
            .ok_or_else(|| AppError::NotFound("user not found".into()))?;
        if roles
            .iter()
            .flatten()
            .any(|r| r.eq_ignore_ascii_case("admin"))
        {
            return Err(AppError::validation(
                "support conversations are for users who are not admins",
            ));
        }
        diesel::insert_into(conversations::table)
            .values((
                conversations::kind.eq("support"),
                conversations::support_user_id.eq(user),
                conversations::title.eq("Support"),
                conversations::context_type.eq("support"),
                conversations::context_id.eq(user.to_string()),
                conversations::created_by.eq(user),
            ))
            .on_conflict(conversations::support_user_id)
            .do_nothing()
            .execute(conn)?;
        let conv: Conversation = conversations::table
            .filter(conversations::support_user_id.eq(user))
            .select(Conversation::as_select())
            .for_update()
            .first(conn)?;
        let admins = admin_ids(conn)?;
        diesel::delete(
            conversation_members::table
                .filter(conversation_members::conversation_id.eq(conv.id))
                .filter(conversation_members::user_id.ne(user))
                .filter(conversation_members::user_id.ne_all(&admins)),
        )
        .execute(conn)?;
        let mut rows = vec![(
            conversation_members::conversation_id.eq(conv.id),
            conversation_members::user_id.eq(user),
            conversation_members::role.eq("member"),
        )];
        rows.extend(admins.iter().filter(|a| **a != user).map(|a| {
            (
                conversation_members::conversation_id.eq(conv.id),
                conversation_members::user_id.eq(*a),
                conversation_members::role.eq("admin"),
            )
        }));
        diesel::insert_into(conversation_members::table)
            .values(rows)
            .on_conflict_do_nothing()
            .execute(conn)?;
        let mut members = admins;
        members.retain(|a| *a != user);
        members.push(user);
        members.sort_unstable();
        Ok((conv, members))
    })
}

/// Unbanned holders of the `admin` role.
pub(crate) fn admin_ids(conn: &mut PgConnection) -> AppResult<Vec<i64>> {
    use diesel::dsl::sql;
    use diesel::sql_types::Bool;
    Ok(users::table
        .filter(sql::<Bool>("roles @> ARRAY['admin']::text[]"))
        .filter(users::banned_at.is_null())
        .select(users::id)
        .order(users::id)
        .load(conn)?)
}

/// Brings every support conversation's admin membership in line with the current admins;
/// returns each conversation with its members (for the engine's member caches).
pub(crate) fn sync_all(conn: &mut PgConnection) -> AppResult<Vec<(i64, Vec<i64>)>> {
    conn.transaction(|conn| {
        diesel::sql_query(
            "DELETE FROM conversation_members m USING conversations c \
             WHERE m.conversation_id = c.id AND c.kind = 'support' \
             AND m.user_id <> c.support_user_id \
             AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id \
                 AND u.roles @> ARRAY['admin']::text[] AND u.banned_at IS NULL)",
        )
        .execute(conn)?;
        diesel::sql_query(
            "INSERT INTO conversation_members (conversation_id, user_id, role) \
             SELECT c.id, u.id, 'admin' FROM conversations c CROSS JOIN users u \
             WHERE c.kind = 'support' AND u.id <> c.support_user_id \
             AND u.roles @> ARRAY['admin']::text[] AND u.banned_at IS NULL \
             ON CONFLICT DO NOTHING",
        )
        .execute(conn)?;
        let rows: Vec<(i64, i64)> = conversation_members::table
            .inner_join(conversations::table)
            .filter(conversations::kind.eq("support"))
            .select((
                conversation_members::conversation_id,
                conversation_members::user_id,
            ))
            .order((
                conversation_members::conversation_id,
                conversation_members::user_id,
            ))
            .load(conn)?;
        let mut out: Vec<(i64, Vec<i64>)> = Vec::new();
        for (conv, user) in rows {
            match out.last_mut() {
                Some((c, members)) if *c == conv => members.push(user),
                _ => out.push((conv, vec![user])),
            }
        }
        Ok(out)
    })
}

/// A member of a conversation as seed 002's `participants` and `unreadCount` describe it.
#[derive(Clone, Debug)]
pub struct Party {
    /// Membership (cursors, join time).
    pub member: super::conversations::Member,
    /// Display name.
    pub name: String,
    /// Avatar.
    pub avatar_url: Option<String>,
    /// Kind of user (`user|astrologer|admin`).
    pub kind: &'static str,
    /// Messages after the member's read cursor not sent by the member.
    pub unread: i64,
}

/// A member row with the user's name, avatar and roles.
type MemberWithUser = (
    super::conversations::Member,
    String,
    Option<String>,
    Vec<Option<String>>,
);

/// The members of a conversation with their kind of user and unread count, by user id.
pub(crate) fn parties(conn: &mut PgConnection, conversation_id: i64) -> AppResult<Vec<Party>> {
    use super::conversations::Member;
    use super::schema::messages;
    let rows: Vec<MemberWithUser> = conversation_members::table
        .inner_join(users::table)
        .filter(conversation_members::conversation_id.eq(conversation_id))
        .order(conversation_members::user_id)
        .select((
            Member::as_select(),
            users::name,
            users::avatar_url,
            users::roles,
        ))
        .load(conn)?;
    let mut out = Vec::with_capacity(rows.len());
    for (member, name, avatar_url, roles) in rows {
        let unread: i64 = messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::seq.gt(member.read_up_to))
            .filter(messages::deleted_at.is_null())
            .filter(messages::sender_id.is_distinct_from(member.user_id))
            .count()
            .get_result(conn)?;
        out.push(Party {
            kind: super::messages::party_type(roles.iter().flatten()),
            member,
            name,
            avatar_url,
            unread,
        });
    }
    Ok(out)
}

/// The kind of user (`user|astrologer|admin`) of each of `ids` that exists.
pub(crate) fn party_types(
    conn: &mut PgConnection,
    ids: &[i64],
) -> AppResult<std::collections::HashMap<i64, &'static str>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(i64, Vec<Option<String>>)> = users::table
        .filter(users::id.eq_any(ids))
        .select((users::id, users::roles))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, roles)| (id, super::messages::party_type(roles.iter().flatten())))
        .collect())
}
