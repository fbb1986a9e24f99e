//! Conversations and members: direct (one per user pair), group and team conversations,
//! membership, receipt cursors, listings with last message and unread counts.

use super::messages::Message;
use super::schema::{conversation_members, conversations, messages, users};
use crate::error::{AppError, AppResult};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A conversation row.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = conversations, check_for_backend(diesel::pg::Pg))]
pub struct Conversation {
    /// Primary key.
    pub id: i64,
    /// `direct|group|team|support`.
    pub kind: String,
    /// Title (groups).
    pub title: Option<String>,
    /// Avatar.
    pub avatar_url: Option<String>,
    /// Direct: "<low>:<high>".
    pub participant_key: Option<String>,
    /// Team: the team role.
    pub team_role: Option<String>,
    /// Context type.
    pub context_type: Option<String>,
    /// Context id.
    pub context_id: Option<String>,
    /// Creator.
    pub created_by: Option<i64>,
    /// Highest seq.
    pub last_seq: i64,
    /// Highest change number.
    pub last_change: i64,
    /// Time of the last message.
    pub last_message_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
    /// Support conversations: the user the admins talk to.
    pub support_user_id: Option<i64>,
}

/// A member row.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = conversation_members, check_for_backend(diesel::pg::Pg))]
pub struct Member {
    /// Conversation.
    pub conversation_id: i64,
    /// User.
    pub user_id: i64,
    /// `owner|admin|member`.
    pub role: String,
    /// Join time.
    pub joined_at: DateTime<Utc>,
    /// Delivered cursor.
    pub delivered_up_to: i64,
    /// Read cursor.
    pub read_up_to: i64,
    /// When the delivered cursor last moved.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the read cursor last moved.
    pub read_at: Option<DateTime<Utc>>,
    /// Change number of the last cursor move.
    pub receipt_change: i64,
}

/// A member as clients see it: the member's user too, with the names seed 003's apps read on
/// users (`id`/`_id`, `avatar`/`avatarUrl`), as a populated Mongoose reference would give them.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Member)]
pub struct MemberView {
    /// User id.
    pub user_id: String,
    /// Same as `userId`.
    #[schema(required = false)]
    pub id: String,
    /// Same as `userId`.
    #[serde(rename = "_id")]
    #[schema(required = false)]
    pub doc_id: String,
    /// Role in the conversation.
    pub role: String,
    /// Display name.
    #[schema(required = false)]
    pub name: String,
    /// Avatar.
    pub avatar_url: Option<String>,
    /// Same as `avatarUrl`.
    pub avatar: Option<String>,
    /// Join time.
    #[schema(required = false)]
    pub joined_at: DateTime<Utc>,
    /// Delivered cursor.
    #[schema(required = false)]
    pub delivered_up_to: i64,
    /// Read cursor.
    #[schema(required = false)]
    pub read_up_to: i64,
}

/// A conversation as clients see it. Seed 003's two apps each find their names: `members`
/// (Backend) and `participants` (Backend1), the same member objects, `_id`, and the receipt
/// cursors `deliveredUpTo` / `readUpTo` as maps from user id to the time of the last message
/// each member received / read (Backend2's `Map<userId, Date>`; a member with no cursor yet is
/// absent). Each member's cursor is also in `members` as a seq.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Conversation)]
pub struct ConversationView {
    /// Id.
    pub id: String,
    /// Same as `id` (Mongoose lean documents).
    #[serde(rename = "_id")]
    #[schema(required = false)]
    pub doc_id: String,
    /// Kind (`direct|group|team|support`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Title.
    pub title: Option<String>,
    /// Avatar.
    pub avatar_url: Option<String>,
    /// Team role (team conversations).
    pub team_role: Option<String>,
    /// Support conversations: the user the admins talk to.
    pub support_user_id: Option<String>,
    /// Direct conversations' participant key.
    pub participant_key: Option<String>,
    /// Context type.
    pub context_type: Option<String>,
    /// Context id.
    pub context_id: Option<String>,
    /// Highest seq.
    #[schema(required = false)]
    pub last_seq: i64,
    /// Highest change number.
    #[schema(required = false)]
    pub last_change: i64,
    /// Members.
    pub members: Vec<MemberView>,
    /// Same list under the seed 003 name.
    #[schema(required = false)]
    pub participants: Vec<MemberView>,
    /// User id → time of the last message delivered to them.
    #[schema(required = false)]
    pub delivered_up_to: BTreeMap<String, DateTime<Utc>>,
    /// User id → time of the last message they read.
    #[schema(required = false)]
    pub read_up_to: BTreeMap<String, DateTime<Utc>>,
    /// Last message.
    pub last_message: Option<super::messages::MessageDoc>,
    /// Messages after the caller's read cursor not sent by the caller.
    #[schema(required = false)]
    pub unread_count: i64,
    /// Last message time.
    pub last_message_at: Option<DateTime<Utc>>,
    /// Creation time.
    #[schema(required = false)]
    pub created_at: DateTime<Utc>,
}

/// A conversation.
pub(crate) fn by_id(conn: &mut PgConnection, id: i64) -> AppResult<Option<Conversation>> {
    Ok(conversations::table
        .find(id)
        .select(Conversation::as_select())
        .first(conn)
        .optional()?)
}

/// Members of a conversation.
pub(crate) fn members(conn: &mut PgConnection, conversation_id: i64) -> AppResult<Vec<Member>> {
    Ok(conversation_members::table
        .filter(conversation_members::conversation_id.eq(conversation_id))
        .order(conversation_members::user_id)
        .select(Member::as_select())
        .load(conn)?)
}

/// One membership.
pub(crate) fn member(
    conn: &mut PgConnection,
    conversation_id: i64,
    user_id: i64,
) -> AppResult<Option<Member>> {
    Ok(conversation_members::table
        .find((conversation_id, user_id))
        .select(Member::as_select())
        .first(conn)
        .optional()?)
}

/// The key that makes a direct conversation unique per pair.
pub(crate) fn participant_key(a: i64, b: i64) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// Returns the direct conversation of two users, creating it (and both memberships) if needed.
/// Safe under concurrency: the unique participant key decides, the loser re-reads.
///
/// A pair that already has one, the common case (every call's log is posted there), is
/// answered by one statement, outside any transaction: the conversation by its key, provided
/// both users still exist. Only a pair without one takes the transaction that creates it.
pub fn get_or_create_direct(
    conn: &mut PgConnection,
    a: i64,
    b: i64,
) -> AppResult<(Conversation, bool)> {
    if a == b {
        return Err(AppError::validation(
            "a direct conversation needs two different users",
        ));
    }
    let key = participant_key(a, b);
    let exists = |user: i64| diesel::dsl::exists(users::table.filter(users::id.eq(user)));
    let found: Option<Conversation> = conversations::table
        .filter(conversations::participant_key.eq(&key))
        .filter(exists(a))
        .filter(exists(b))
        .select(Conversation::as_select())
        .first(conn)
        .optional()?;
    if let Some(conv) = found {
        return Ok((conv, false));
    }
    conn.transaction(|conn| {
        let existing_users: i64 = users::table
            .filter(users::id.eq_any([a, b]))
            .count()
            .get_result(conn)?;
        if existing_users != 2 {
            return Err(AppError::NotFound("user not found".into()));
        }
        let inserted: Option<Conversation> = diesel::insert_into(conversations::table)
            .values((
                conversations::kind.eq("direct"),
                conversations::participant_key.eq(&key),
                conversations::created_by.eq(a),
            ))
            .on_conflict(conversations::participant_key)
            .do_nothing()
            .returning(Conversation::as_returning())
            .get_result(conn)
            .optional()?;
        match inserted {
            Some(conv) => {
                diesel::insert_into(conversation_members::table)
                    .values(vec![
                        (
                            conversation_members::conversation_id.eq(conv.id),
                            conversation_members::user_id.eq(a),
                        ),
                        (
                            conversation_members::conversation_id.eq(conv.id),
                            conversation_members::user_id.eq(b),
                        ),
                    ])
                    .on_conflict_do_nothing()
                    .execute(conn)?;
                Ok((conv, true))
            }
            None => {
                let conv = conversations::table
                    .filter(conversations::participant_key.eq(&key))
                    .select(Conversation::as_select())
                    .first(conn)?;
                Ok((conv, false))
            }
        }
    })
}

/// Sets a conversation's context (type and id).
pub(crate) fn set_context(
    conn: &mut PgConnection,
    id: i64,
    context_type: &str,
    context_id: &str,
) -> AppResult<Conversation> {
    Ok(diesel::update(conversations::table.find(id))
        .set((
            conversations::context_type.eq(context_type),
            conversations::context_id.eq(Some(context_id).filter(|c| !c.is_empty())),
            conversations::updated_at.eq(Utc::now()),
        ))
        .returning(Conversation::as_returning())
        .get_result(conn)?)
}

/// Creates a group conversation owned by `creator` with the given members.
pub fn create_group(
    conn: &mut PgConnection,
    creator: i64,
    title: &str,
    member_ids: &[i64],
    context: Option<(&str, &str)>,
) -> AppResult<Conversation> {
    conn.transaction(|conn| {
        let mut ids: Vec<i64> = member_ids
            .iter()
            .copied()
            .filter(|id| *id != creator)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let found: i64 = users::table
            .filter(users::id.eq_any(&ids))
            .count()
            .get_result(conn)?;
        if found != ids.len() as i64 {
            return Err(AppError::NotFound(
                "one or more members do not exist".into(),
            ));
        }
        let conv: Conversation = diesel::insert_into(conversations::table)
            .values((
                conversations::kind.eq("group"),
                conversations::title.eq(title),
                conversations::created_by.eq(creator),
                conversations::context_type.eq(context.map(|c| c.0)),
                conversations::context_id.eq(context.map(|c| c.1)),
            ))
            .returning(Conversation::as_returning())
            .get_result(conn)?;
        let mut rows = vec![(
            conversation_members::conversation_id.eq(conv.id),
            conversation_members::user_id.eq(creator),
            conversation_members::role.eq("owner"),
        )];
        rows.extend(ids.iter().map(|id| {
            (
                conversation_members::conversation_id.eq(conv.id),
                conversation_members::user_id.eq(*id),
                conversation_members::role.eq("member"),
            )
        }));
        diesel::insert_into(conversation_members::table)
            .values(rows)
            .execute(conn)?;
        Ok(conv)
    })
}

/// Returns the team conversation of a team role, creating it if needed, and brings its
/// membership in line with the users currently holding that team role; also returns the
/// members it removed and those it added.
pub(crate) fn sync_team(
    conn: &mut PgConnection,
    team_role: &str,
) -> AppResult<(Conversation, Vec<i64>, Vec<i64>)> {
    use diesel::dsl::sql;
    use diesel::sql_types::Bool;
    conn.transaction(|conn| {
        diesel::insert_into(conversations::table)
            .values((
                conversations::kind.eq("team"),
                conversations::team_role.eq(team_role),
                conversations::title.eq(team_role),
            ))
            .on_conflict(conversations::team_role)
            .do_nothing()
            .execute(conn)?;
        let conv: Conversation = conversations::table
            .filter(conversations::team_role.eq(team_role))
            .select(Conversation::as_select())
            .for_update()
            .first(conn)?;
        let holders: Vec<i64> = users::table
            .filter(
                sql::<Bool>("team_roles @> ARRAY[")
                    .bind::<diesel::sql_types::Text, _>(team_role)
                    .sql("]::text[]"),
            )
            .select(users::id)
            .load(conn)?;
        let removed: Vec<i64> = diesel::delete(
            conversation_members::table
                .filter(conversation_members::conversation_id.eq(conv.id))
                .filter(conversation_members::user_id.ne_all(&holders)),
        )
        .returning(conversation_members::user_id)
        .get_results(conn)?;
        let rows: Vec<_> = holders
            .iter()
            .map(|id| {
                (
                    conversation_members::conversation_id.eq(conv.id),
                    conversation_members::user_id.eq(*id),
                )
            })
            .collect();
        let added: Vec<i64> = if rows.is_empty() {
            Vec::new()
        } else {
            diesel::insert_into(conversation_members::table)
                .values(rows)
                .on_conflict_do_nothing()
                .returning(conversation_members::user_id)
                .get_results(conn)?
        };
        Ok((conv, removed, added))
    })
}

/// Adds members (idempotent); returns the ids that were new.
pub(crate) fn add_members(
    conn: &mut PgConnection,
    conversation_id: i64,
    user_ids: &[i64],
) -> AppResult<Vec<i64>> {
    conn.transaction(|conn| {
        let found: i64 = users::table
            .filter(users::id.eq_any(user_ids))
            .count()
            .get_result(conn)?;
        let mut unique = user_ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if found != unique.len() as i64 {
            return Err(AppError::NotFound("one or more users do not exist".into()));
        }
        let rows: Vec<_> = unique
            .iter()
            .map(|id| {
                (
                    conversation_members::conversation_id.eq(conversation_id),
                    conversation_members::user_id.eq(*id),
                )
            })
            .collect();
        Ok(diesel::insert_into(conversation_members::table)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(conversation_members::user_id)
            .get_results(conn)?)
    })
}

/// Removes a member; returns whether they were one.
pub(crate) fn remove_member(
    conn: &mut PgConnection,
    conversation_id: i64,
    user_id: i64,
) -> AppResult<bool> {
    Ok(
        diesel::delete(conversation_members::table.find((conversation_id, user_id)))
            .execute(conn)?
            > 0,
    )
}

/// Which receipt cursor moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptKind {
    /// Delivered.
    Delivered,
    /// Read (also moves delivered).
    Read,
}

/// A cursor that moved.
#[derive(Clone, Debug, PartialEq)]
pub struct CursorMove {
    /// The new cursor (a seq).
    pub up_to: i64,
    /// The change number of the move.
    pub change: i64,
    /// When the message at the cursor was created (for clients that keep time cursors).
    pub at: Option<DateTime<Utc>>,
    /// For a cursor given as message ids: those of them in this conversation.
    pub message_ids: Option<Vec<i64>>,
}

/// Resolves a cursor given as message ids or a time to a seq (0 when nothing matches).
fn resolve_cursor(
    conn: &mut PgConnection,
    conversation_id: i64,
    cursor: &crate::realtime::protocol::ReceiptCursor,
) -> AppResult<(i64, Option<Vec<i64>>)> {
    use crate::realtime::protocol::ReceiptCursor;
    Ok(match cursor {
        ReceiptCursor::Seq(seq) => (*seq, None),
        ReceiptCursor::Messages(ids) => {
            let found: Vec<(i64, i64)> = messages::table
                .filter(messages::conversation_id.eq(conversation_id))
                .filter(messages::id.eq_any(ids))
                .select((messages::id, messages::seq))
                .load(conn)?;
            let seq = found.iter().map(|(_, s)| *s).max().unwrap_or(0);
            (seq, Some(found.into_iter().map(|(id, _)| id).collect()))
        }
        ReceiptCursor::Time(t) => {
            let seq: Option<i64> = messages::table
                .filter(messages::conversation_id.eq(conversation_id))
                .filter(messages::created_at.le(t))
                .select(diesel::dsl::max(messages::seq))
                .first(conn)?;
            (seq.unwrap_or(0), None)
        }
    })
}

/// Most message ids a read receipt given as a seq or time cursor names: the newest ones read.
pub(crate) const MAX_READ_IDS: i64 = crate::realtime::protocol::MAX_RECEIPT_MESSAGES as i64;

/// Ids of the messages in `(after, up_to]` not sent by `reader`, oldest first; at most
/// [`MAX_READ_IDS`], the newest of them.
fn read_between(
    conn: &mut PgConnection,
    conversation_id: i64,
    reader: i64,
    after: i64,
    up_to: i64,
) -> AppResult<Vec<i64>> {
    let mut ids: Vec<i64> = messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .filter(messages::seq.gt(after))
        .filter(messages::seq.le(up_to))
        .filter(messages::sender_id.is_distinct_from(reader))
        .order(messages::seq.desc())
        .limit(MAX_READ_IDS)
        .select(messages::id)
        .load(conn)?;
    ids.reverse();
    Ok(ids)
}

/// Moves a cursor forward (never back, never past the last seq). Returns the move when the
/// cursor moved, `None` when it did not.
pub fn move_cursor(
    conn: &mut PgConnection,
    conversation_id: i64,
    user_id: i64,
    kind: ReceiptKind,
    cursor: &crate::realtime::protocol::ReceiptCursor,
) -> AppResult<Option<CursorMove>> {
    conn.transaction(|conn| move_cursor_in(conn, conversation_id, user_id, kind, cursor))
}

/// Moves several cursors of one conversation in one transaction: `(user, kind, cursor)` each,
/// answered in order. A refused move (not a member, a bad cursor) fails alone; a database error
/// fails the batch.
pub(crate) fn move_cursors(
    conn: &mut PgConnection,
    conversation_id: i64,
    moves: &[(i64, ReceiptKind, crate::realtime::protocol::ReceiptCursor)],
) -> AppResult<Vec<AppResult<Option<CursorMove>>>> {
    conn.transaction(|conn| {
        let mut out = Vec::with_capacity(moves.len());
        for (user, kind, cursor) in moves {
            match move_cursor_in(conn, conversation_id, *user, *kind, cursor) {
                Err(AppError::Internal { cause }) => return Err(AppError::Internal { cause }),
                Err(AppError::Unavailable { cause }) => {
                    return Err(AppError::Unavailable { cause })
                }
                other => out.push(other),
            }
        }
        Ok(out)
    })
}

fn move_cursor_in(
    conn: &mut PgConnection,
    conversation_id: i64,
    user_id: i64,
    kind: ReceiptKind,
    cursor: &crate::realtime::protocol::ReceiptCursor,
) -> AppResult<Option<CursorMove>> {
    {
        let last_seq: i64 = conversations::table
            .find(conversation_id)
            .select(conversations::last_seq)
            .first(conn)
            .optional()?
            .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
        let m = member(conn, conversation_id, user_id)?
            .ok_or_else(|| AppError::Forbidden("not a member of this conversation".into()))?;
        let (up_to, message_ids) = resolve_cursor(conn, conversation_id, cursor)?;
        let target = up_to.min(last_seq);
        let current = match kind {
            ReceiptKind::Delivered => m.delivered_up_to,
            ReceiptKind::Read => m.read_up_to,
        };
        if target <= current {
            return Ok(None);
        }
        // Apps that mark messages read one by one (seed 002) learn which of theirs were read
        // from the ids, also when the reader moved a seq or time cursor.
        let message_ids = match (kind, message_ids) {
            (ReceiptKind::Read, None) => Some(read_between(
                conn,
                conversation_id,
                user_id,
                current,
                target,
            )?),
            (_, ids) => ids,
        };
        let at: Option<DateTime<Utc>> = messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::seq.eq(target))
            .select(messages::created_at)
            .first(conn)
            .optional()?;
        let change = super::messages::next_change(conn, conversation_id)?;
        let now = Utc::now();
        let row = conversation_members::table.find((conversation_id, user_id));
        match kind {
            ReceiptKind::Delivered => diesel::update(row)
                .set((
                    conversation_members::delivered_up_to.eq(target),
                    conversation_members::delivered_at.eq(now),
                    conversation_members::receipt_change.eq(change),
                ))
                .execute(conn)?,
            ReceiptKind::Read => diesel::update(row)
                .set((
                    conversation_members::read_up_to.eq(target),
                    conversation_members::read_at.eq(now),
                    conversation_members::delivered_up_to.eq(target.max(m.delivered_up_to)),
                    conversation_members::receipt_change.eq(change),
                ))
                .execute(conn)?,
        };
        Ok(Some(CursorMove {
            up_to: target,
            change,
            at,
            message_ids,
        }))
    }
}

/// Members whose cursors moved after change `after` (sync).
pub(crate) fn receipts_since(
    conn: &mut PgConnection,
    conversation_id: i64,
    after: i64,
) -> AppResult<Vec<Member>> {
    Ok(conversation_members::table
        .filter(conversation_members::conversation_id.eq(conversation_id))
        .filter(conversation_members::receipt_change.gt(after))
        .select(Member::as_select())
        .load(conn)?)
}

/// Ids of the conversations a user belongs to.
pub(crate) fn ids_of_user(conn: &mut PgConnection, user_id: i64) -> AppResult<Vec<i64>> {
    Ok(conversation_members::table
        .filter(conversation_members::user_id.eq(user_id))
        .select(conversation_members::conversation_id)
        .load(conn)?)
}

/// Users who share at least one conversation with `user_id` (presence audience).
pub(crate) fn peers_of(conn: &mut PgConnection, user_id: i64) -> AppResult<Vec<i64>> {
    let mine = ids_of_user(conn, user_id)?;
    Ok(conversation_members::table
        .filter(conversation_members::conversation_id.eq_any(&mine))
        .filter(conversation_members::user_id.ne(user_id))
        .select(conversation_members::user_id)
        .distinct()
        .load(conn)?)
}

/// The time of the message at each member's delivered and read cursor.
#[derive(Debug, QueryableByName)]
struct CursorTimes {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    conversation_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    user_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    delivered_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    read_at: Option<DateTime<Utc>>,
}

fn cursor_times(conn: &mut PgConnection, conversation_ids: &[i64]) -> AppResult<Vec<CursorTimes>> {
    Ok(diesel::sql_query(
        "SELECT cm.conversation_id, cm.user_id, d.created_at AS delivered_at, \
                r.created_at AS read_at \
         FROM conversation_members cm \
         LEFT JOIN messages d ON d.conversation_id = cm.conversation_id \
              AND d.seq = cm.delivered_up_to \
         LEFT JOIN messages r ON r.conversation_id = cm.conversation_id \
              AND r.seq = cm.read_up_to \
         WHERE cm.conversation_id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(conversation_ids)
    .load(conn)?)
}

/// Full views of conversations for `viewer`: members with names, last message, unread count.
pub(crate) fn views(
    conn: &mut PgConnection,
    convs: Vec<Conversation>,
    viewer: i64,
) -> AppResult<Vec<ConversationView>> {
    if convs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = convs.iter().map(|c| c.id).collect();
    let member_rows: Vec<(Member, String, Option<String>)> = conversation_members::table
        .inner_join(users::table)
        .filter(conversation_members::conversation_id.eq_any(&ids))
        .order((
            conversation_members::conversation_id,
            conversation_members::user_id,
        ))
        .select((Member::as_select(), users::name, users::avatar_url))
        .load(conn)?;
    let mut by_conv: HashMap<i64, Vec<MemberView>> = HashMap::new();
    let mut read_cursor: HashMap<i64, i64> = HashMap::new();
    for (m, name, avatar) in member_rows {
        if m.user_id == viewer {
            read_cursor.insert(m.conversation_id, m.read_up_to);
        }
        by_conv
            .entry(m.conversation_id)
            .or_default()
            .push(MemberView {
                user_id: m.user_id.to_string(),
                id: m.user_id.to_string(),
                doc_id: m.user_id.to_string(),
                role: m.role,
                name,
                avatar: avatar.clone(),
                avatar_url: avatar,
                joined_at: m.joined_at,
                delivered_up_to: m.delivered_up_to,
                read_up_to: m.read_up_to,
            });
    }
    let pairs: Vec<(i64, i64)> = convs
        .iter()
        .filter(|c| c.last_seq > 0)
        .map(|c| (c.id, c.last_seq))
        .collect();
    let mut last: HashMap<i64, Message> = HashMap::new();
    for (cid, seq) in pairs {
        if let Some(m) = messages::table
            .filter(messages::conversation_id.eq(cid))
            .filter(messages::seq.eq(seq))
            .select(Message::as_select())
            .first(conn)
            .optional()?
        {
            last.insert(cid, m);
        }
    }
    // Per conversation: user id → time at the delivered cursor, and at the read cursor.
    type TimeMaps = (
        BTreeMap<String, DateTime<Utc>>,
        BTreeMap<String, DateTime<Utc>>,
    );
    let mut cursor_maps: HashMap<i64, TimeMaps> = HashMap::new();
    for t in cursor_times(conn, &ids)? {
        let (delivered, read) = cursor_maps.entry(t.conversation_id).or_default();
        if let Some(at) = t.delivered_at {
            delivered.insert(t.user_id.to_string(), at);
        }
        if let Some(at) = t.read_at {
            read.insert(t.user_id.to_string(), at);
        }
    }
    let mut out = Vec::with_capacity(convs.len());
    for c in convs {
        let read = read_cursor.get(&c.id).copied().unwrap_or(0);
        let unread: i64 = if c.last_seq > read {
            messages::table
                .filter(messages::conversation_id.eq(c.id))
                .filter(messages::seq.gt(read))
                .filter(messages::deleted_at.is_null())
                .filter(messages::sender_id.is_distinct_from(viewer))
                .count()
                .get_result(conn)?
        } else {
            0
        };
        let members = by_conv.remove(&c.id).unwrap_or_default();
        let (delivered_up_to, read_up_to) = cursor_maps.remove(&c.id).unwrap_or_default();
        out.push(ConversationView {
            id: c.id.to_string(),
            doc_id: c.id.to_string(),
            kind: c.kind,
            title: c.title,
            avatar_url: c.avatar_url,
            team_role: c.team_role,
            support_user_id: c.support_user_id.map(|u| u.to_string()),
            participant_key: c.participant_key,
            context_type: c.context_type,
            context_id: c.context_id,
            last_seq: c.last_seq,
            last_change: c.last_change,
            participants: members.clone(),
            members,
            delivered_up_to,
            read_up_to,
            last_message: last.get(&c.id).map(Message::doc),
            unread_count: unread,
            last_message_at: c.last_message_at,
            created_at: c.created_at,
        });
    }
    Ok(out)
}

/// A user's conversations, most recently active first, paged by an opaque cursor
/// `"<last_message_at micros or 0>:<id>"`.
pub(crate) fn list_for_user(
    conn: &mut PgConnection,
    user_id: i64,
    cursor: Option<(i64, i64)>,
    limit: i64,
) -> AppResult<Vec<Conversation>> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Bool};
    let mine = conversation_members::table
        .filter(conversation_members::user_id.eq(user_id))
        .select(conversation_members::conversation_id);
    let mut q = conversations::table
        .filter(conversations::id.eq_any(mine))
        .select(Conversation::as_select())
        .order((
            sql::<BigInt>("COALESCE((extract(epoch from last_message_at) * 1000000)::bigint, 0)")
                .desc(),
            conversations::id.desc(),
        ))
        .limit(limit)
        .into_boxed();
    if let Some((ts, id)) = cursor {
        q = q.filter(
            sql::<Bool>(
                "(COALESCE((extract(epoch from last_message_at) * 1000000)::bigint, 0), id) < (",
            )
            .bind::<BigInt, _>(ts)
            .sql(", ")
            .bind::<BigInt, _>(id)
            .sql(")"),
        );
    }
    Ok(q.load(conn)?)
}

/// The paging cursor of a conversation in [`list_for_user`] order.
pub(crate) fn list_cursor(c: &Conversation) -> String {
    format!(
        "{}:{}",
        c.last_message_at.map(|t| t.timestamp_micros()).unwrap_or(0),
        c.id
    )
}
