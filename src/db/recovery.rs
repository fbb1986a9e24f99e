//! Dropped Socket.IO sessions kept for connection state recovery, and the reads that rebuild
//! what such a session missed. A kept session holds cursors (where its client stood in each
//! conversation), never copies of events: the missed events are read back from the messages and
//! members tables.

use super::conversations::Member;
use super::messages::Message;
use super::schema::{
    call_participants, calls, conversation_members, conversations, messages, socketio_sessions,
};
use crate::error::AppResult;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;

/// One kept session.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = socketio_sessions)]
pub struct Kept {
    /// SHA-256 of the private session id.
    pub pid_hash: Vec<u8>,
    /// Its user.
    pub user_id: i64,
    /// The Socket.IO socket id it had (a recovered socket keeps it).
    pub sid: String,
    /// The dialect it spoke.
    pub dialect: String,
    /// When it connected.
    pub connected_at: DateTime<Utc>,
    /// When its transport dropped.
    pub disconnected_at: DateTime<Utc>,
    /// Past this it is not recovered.
    pub expires_at: DateTime<Utc>,
    /// Cursors, offsets and dialect state (see `realtime::socketio::recovery`).
    pub state: Value,
}

/// Keeps dropped sessions: expired ones are removed first; past `max_total` kept sessions the
/// rest of `rows` is not kept; each of their users keeps at most `per_user` (the newest).
/// Answers how many were kept.
pub fn keep(
    conn: &mut PgConnection,
    rows: &[Kept],
    per_user: usize,
    max_total: usize,
) -> AppResult<usize> {
    conn.transaction(|conn| {
        diesel::delete(
            socketio_sessions::table.filter(socketio_sessions::expires_at.le(Utc::now())),
        )
        .execute(conn)?;
        let held: i64 = socketio_sessions::table.count().get_result(conn)?;
        let room =
            usize::try_from(i64::try_from(max_total).unwrap_or(i64::MAX) - held).unwrap_or(0);
        let rows = &rows[..rows.len().min(room)];
        if rows.is_empty() {
            return Ok(0);
        }
        // One row per private id (the newest), in one statement.
        let mut newest: std::collections::HashMap<&[u8], &Kept> = std::collections::HashMap::new();
        for row in rows {
            newest.insert(row.pid_hash.as_slice(), row);
        }
        let batch: Vec<&Kept> = newest.into_values().collect();
        {
            use diesel::upsert::excluded;
            diesel::insert_into(socketio_sessions::table)
                .values(batch.iter().map(|k| (*k).clone()).collect::<Vec<Kept>>())
                .on_conflict(socketio_sessions::pid_hash)
                .do_update()
                .set((
                    socketio_sessions::user_id.eq(excluded(socketio_sessions::user_id)),
                    socketio_sessions::sid.eq(excluded(socketio_sessions::sid)),
                    socketio_sessions::dialect.eq(excluded(socketio_sessions::dialect)),
                    socketio_sessions::connected_at.eq(excluded(socketio_sessions::connected_at)),
                    socketio_sessions::disconnected_at
                        .eq(excluded(socketio_sessions::disconnected_at)),
                    socketio_sessions::expires_at.eq(excluded(socketio_sessions::expires_at)),
                    socketio_sessions::state.eq(excluded(socketio_sessions::state)),
                ))
                .execute(conn)?;
        }
        let mut users: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
        users.sort_unstable();
        users.dedup();
        diesel::sql_query(
            "DELETE FROM socketio_sessions s USING (
                 SELECT pid_hash FROM (
                     SELECT pid_hash, row_number() OVER (
                         PARTITION BY user_id ORDER BY disconnected_at DESC) AS n
                     FROM socketio_sessions WHERE user_id = ANY($1)) ranked
                 WHERE n > $2) old
             WHERE s.pid_hash = old.pid_hash",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(&users)
        .bind::<diesel::sql_types::BigInt, _>(i64::try_from(per_user).unwrap_or(i64::MAX))
        .execute(conn)?;
        Ok(rows.len())
    })
}

/// Takes (removes and answers) a kept session by its private id's hash, unless it expired;
/// with `user_id`, only that user's (another user's session is not found and stays).
pub fn take(
    conn: &mut PgConnection,
    pid_hash: &[u8],
    user_id: Option<i64>,
) -> AppResult<Option<Kept>> {
    let found = socketio_sessions::table
        .filter(socketio_sessions::pid_hash.eq(pid_hash))
        .filter(socketio_sessions::expires_at.gt(Utc::now()));
    Ok(match user_id {
        Some(user) => diesel::delete(found.filter(socketio_sessions::user_id.eq(user)))
            .returning(Kept::as_returning())
            .get_result(conn)
            .optional()?,
        None => diesel::delete(found)
            .returning(Kept::as_returning())
            .get_result(conn)
            .optional()?,
    })
}

/// Removes expired kept sessions; answers how many.
pub(crate) fn purge(conn: &mut PgConnection) -> AppResult<usize> {
    Ok(diesel::delete(
        socketio_sessions::table.filter(socketio_sessions::expires_at.le(Utc::now())),
    )
    .execute(conn)?)
}

/// Where a conversation of a user stands now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Standing {
    /// The conversation.
    pub conversation_id: i64,
    /// Its highest seq.
    pub last_seq: i64,
    /// Its highest change number.
    pub last_change: i64,
    /// When the user joined it.
    pub joined_at: DateTime<Utc>,
}

/// Every conversation of a user with where it stands.
pub(crate) fn standings(conn: &mut PgConnection, user_id: i64) -> AppResult<Vec<Standing>> {
    let rows: Vec<(i64, i64, i64, DateTime<Utc>)> = conversation_members::table
        .inner_join(conversations::table)
        .filter(conversation_members::user_id.eq(user_id))
        .select((
            conversations::id,
            conversations::last_seq,
            conversations::last_change,
            conversation_members::joined_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(conversation_id, last_seq, last_change, joined_at)| Standing {
                conversation_id,
                last_seq,
                last_change,
                joined_at,
            },
        )
        .collect())
}

/// Where each of a user's conversations stands (conversation, last seq, last change): a
/// connection's starting point.
pub(crate) fn positions(conn: &mut PgConnection, user_id: i64) -> AppResult<Vec<(i64, i64, i64)>> {
    Ok(standings(conn, user_id)?
        .into_iter()
        .map(|s| (s.conversation_id, s.last_seq, s.last_change))
        .collect())
}

/// Messages of a conversation above a seq, in seq order, at most `limit`.
pub(crate) fn messages_after(
    conn: &mut PgConnection,
    conversation_id: i64,
    after_seq: i64,
    limit: i64,
) -> AppResult<Vec<Message>> {
    Ok(messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .filter(messages::seq.gt(after_seq))
        .order(messages::seq.asc())
        .limit(limit)
        .select(Message::as_select())
        .load(conn)?)
}

/// Messages of a conversation created after a time, in seq order, at most `limit`.
pub(crate) fn messages_since(
    conn: &mut PgConnection,
    conversation_id: i64,
    after: DateTime<Utc>,
    limit: i64,
) -> AppResult<Vec<Message>> {
    Ok(messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .filter(messages::created_at.gt(after))
        .order(messages::seq.asc())
        .limit(limit)
        .select(Message::as_select())
        .load(conn)?)
}

/// Messages at or below a seq edited or deleted after a change number, in change order, at
/// most `limit`.
pub(crate) fn changed_messages(
    conn: &mut PgConnection,
    conversation_id: i64,
    up_to_seq: i64,
    after_change: i64,
    limit: i64,
) -> AppResult<Vec<Message>> {
    Ok(messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .filter(messages::change_seq.gt(after_change))
        .filter(messages::seq.le(up_to_seq))
        .order(messages::change_seq.asc())
        .limit(limit)
        .select(Message::as_select())
        .load(conn)?)
}

/// A member's receipt cursors that moved, with the times of the messages they stand on.
#[derive(Clone, Debug)]
pub(crate) struct MovedReceipt {
    /// The member row.
    pub member: Member,
    /// Creation time of the message at `delivered_up_to`.
    pub delivered_message_at: Option<DateTime<Utc>>,
    /// Creation time of the message at `read_up_to`.
    pub read_message_at: Option<DateTime<Utc>>,
}

/// Receipt cursors of a conversation's members other than `except` that moved after a change
/// number, in change order.
pub(crate) fn moved_receipts(
    conn: &mut PgConnection,
    conversation_id: i64,
    after_change: i64,
    except: i64,
) -> AppResult<Vec<MovedReceipt>> {
    let members: Vec<Member> = conversation_members::table
        .filter(conversation_members::conversation_id.eq(conversation_id))
        .filter(conversation_members::receipt_change.gt(after_change))
        .filter(conversation_members::user_id.ne(except))
        .order(conversation_members::receipt_change.asc())
        .select(Member::as_select())
        .load(conn)?;
    let mut seqs: Vec<i64> = members
        .iter()
        .flat_map(|m| [m.delivered_up_to, m.read_up_to])
        .filter(|s| *s > 0)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let times: std::collections::HashMap<i64, DateTime<Utc>> = if seqs.is_empty() {
        std::collections::HashMap::new()
    } else {
        messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::seq.eq_any(&seqs))
            .select((messages::seq, messages::created_at))
            .load::<(i64, DateTime<Utc>)>(conn)?
            .into_iter()
            .collect()
    };
    Ok(members
        .into_iter()
        .map(|member| MovedReceipt {
            delivered_message_at: times.get(&member.delivered_up_to).copied(),
            read_message_at: times.get(&member.read_up_to).copied(),
            member,
        })
        .collect())
}

/// A call that ended, as its end is told to a party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndedCall {
    /// The call.
    pub id: String,
    /// Who called.
    pub caller_id: Option<i64>,
    /// `ended|rejected|missed|busy|cancelled|failed`.
    pub status: String,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Who ended it.
    pub ended_by: Option<i64>,
    /// Seconds between answer and end.
    pub duration_secs: Option<i32>,
}

/// Calls a user took part in (or was rung for) that ended after `since`, in end order.
pub(crate) fn calls_ended_since(
    conn: &mut PgConnection,
    user_id: i64,
    since: DateTime<Utc>,
) -> AppResult<Vec<EndedCall>> {
    type Row = (
        String,
        Option<i64>,
        String,
        Option<String>,
        Option<i64>,
        Option<i32>,
    );
    let rows: Vec<Row> = calls::table
        .inner_join(call_participants::table)
        .filter(call_participants::user_id.eq(user_id))
        .filter(calls::ended_at.gt(since))
        .order(calls::ended_at.asc())
        .select((
            calls::id,
            calls::caller_id,
            calls::status,
            calls::end_reason,
            calls::ended_by,
            calls::duration_secs,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(id, caller_id, status, end_reason, ended_by, duration_secs)| EndedCall {
                id,
                caller_id,
                status,
                end_reason,
                ended_by,
                duration_secs,
            },
        )
        .collect())
}
