//! Calls and call participants: every state transition of a call is written here.

use super::prepared::{Prepared, Statement};
use super::schema::{call_participants, calls};
use crate::error::AppResult;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
use serde::Serialize;

/// A call row.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset, Serialize)]
#[diesel(table_name = calls, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
#[serde(rename_all = "camelCase")]
pub struct CallRow {
    /// Id.
    pub id: String,
    /// `direct|group`.
    pub kind: String,
    /// `audio|video`.
    pub call_type: String,
    /// `webrtc|agora`.
    pub provider: String,
    /// Agora channel.
    pub channel_name: Option<String>,
    /// Caller.
    pub caller_id: Option<i64>,
    /// Group conversation, if any.
    pub conversation_id: Option<i64>,
    /// Status.
    pub status: String,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Who ended it.
    pub ended_by: Option<i64>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// First callee device reached.
    pub ringing_at: Option<DateTime<Utc>>,
    /// Answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds from answer to end.
    pub duration_secs: Option<i32>,
}

/// A participant row.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = call_participants, check_for_backend(diesel::pg::Pg))]
#[serde(rename_all = "camelCase")]
pub struct ParticipantRow {
    /// Call.
    pub call_id: String,
    /// User.
    pub user_id: i64,
    /// `caller|callee`.
    pub role: String,
    /// Status.
    pub status: String,
    /// Bound device session.
    pub device_session_id: Option<String>,
    /// Invited.
    pub invited_at: DateTime<Utc>,
    /// Joined.
    pub joined_at: Option<DateTime<Utc>>,
    /// Left.
    pub left_at: Option<DateTime<Utc>>,
}

/// Calls and their participants as they are now, inserted or updated by one statement (one
/// round trip, a transaction of its own, whatever the number of calls): the calls' upsert runs
/// in a data-modifying `WITH` over the `unnest` of one array per column, the participants'
/// upsert joins the call ids it returns, so a participant row never stands without its call.
/// A participant's role, device and invitation time are kept as first written; its status, join
/// and leave times follow the call. A call appears at most once per statement (an upsert may
/// not touch one row twice).
struct SaveCalls;

impl Statement for SaveCalls {
    const SQL: &'static str = "WITH saved AS ( \
        INSERT INTO calls (id, kind, call_type, provider, channel_name, caller_id, \
            conversation_id, status, end_reason, ended_by, created_at, ringing_at, answered_at, \
            ended_at, duration_secs) \
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
            $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::bigint[], \
            $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], \
            $15::integer[]) \
        ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, call_type = EXCLUDED.call_type, \
            provider = EXCLUDED.provider, channel_name = EXCLUDED.channel_name, \
            caller_id = EXCLUDED.caller_id, conversation_id = EXCLUDED.conversation_id, \
            status = EXCLUDED.status, end_reason = EXCLUDED.end_reason, \
            ended_by = EXCLUDED.ended_by, created_at = EXCLUDED.created_at, \
            ringing_at = EXCLUDED.ringing_at, answered_at = EXCLUDED.answered_at, \
            ended_at = EXCLUDED.ended_at, duration_secs = EXCLUDED.duration_secs \
        RETURNING id) \
    INSERT INTO call_participants (call_id, user_id, role, status, device_session_id, \
        invited_at, joined_at, left_at) \
    SELECT saved.id, p.user_id, p.role, p.status, p.device_session_id, p.invited_at, \
        p.joined_at, p.left_at \
    FROM unnest($16::text[], $17::bigint[], $18::text[], $19::text[], $20::text[], \
        $21::timestamptz[], $22::timestamptz[], $23::timestamptz[]) \
        AS p(call_id, user_id, role, status, device_session_id, invited_at, joined_at, left_at) \
    JOIN saved ON saved.id = p.call_id \
    ON CONFLICT (call_id, user_id) DO UPDATE SET status = EXCLUDED.status, \
        joined_at = EXCLUDED.joined_at, left_at = EXCLUDED.left_at";
}

/// A call as it is now: its row and its participants' rows.
pub(crate) type CallState = (CallRow, Vec<ParticipantRow>);

/// Writes several calls and their participants as they are now (insert or update), in one
/// statement ([`SaveCalls`]); all are written or none. Each call id appears at most once.
pub(crate) fn save_all(conn: &mut PgConnection, states: &[CallState]) -> AppResult<()> {
    if states.is_empty() {
        return Ok(());
    }
    fn calls<T>(states: &[CallState], f: impl Fn(&CallRow) -> T) -> Vec<T> {
        states.iter().map(|(c, _)| f(c)).collect()
    }
    fn column<T>(parties: &[&ParticipantRow], f: impl Fn(&ParticipantRow) -> T) -> Vec<T> {
        parties.iter().map(|p| f(p)).collect()
    }
    let parties: Vec<&ParticipantRow> = states.iter().flat_map(|(_, p)| p).collect();
    Prepared::<SaveCalls>::new()
        .bind::<Array<Text>, _>(calls(states, |c| c.id.clone()))
        .bind::<Array<Text>, _>(calls(states, |c| c.kind.clone()))
        .bind::<Array<Text>, _>(calls(states, |c| c.call_type.clone()))
        .bind::<Array<Text>, _>(calls(states, |c| c.provider.clone()))
        .bind::<Array<Nullable<Text>>, _>(calls(states, |c| c.channel_name.clone()))
        .bind::<Array<Nullable<BigInt>>, _>(calls(states, |c| c.caller_id))
        .bind::<Array<Nullable<BigInt>>, _>(calls(states, |c| c.conversation_id))
        .bind::<Array<Text>, _>(calls(states, |c| c.status.clone()))
        .bind::<Array<Nullable<Text>>, _>(calls(states, |c| c.end_reason.clone()))
        .bind::<Array<Nullable<BigInt>>, _>(calls(states, |c| c.ended_by))
        .bind::<Array<Timestamptz>, _>(calls(states, |c| c.created_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(calls(states, |c| c.ringing_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(calls(states, |c| c.answered_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(calls(states, |c| c.ended_at))
        .bind::<Array<Nullable<Integer>>, _>(calls(states, |c| c.duration_secs))
        .bind::<Array<Text>, _>(column(&parties, |p| p.call_id.clone()))
        .bind::<Array<BigInt>, _>(column(&parties, |p| p.user_id))
        .bind::<Array<Text>, _>(column(&parties, |p| p.role.clone()))
        .bind::<Array<Text>, _>(column(&parties, |p| p.status.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(&parties, |p| p.device_session_id.clone()))
        .bind::<Array<Timestamptz>, _>(column(&parties, |p| p.invited_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(&parties, |p| p.joined_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(&parties, |p| p.left_at))
        .execute(conn)?;
    Ok(())
}

/// Whether a call id is taken (client-chosen room names).
pub(crate) fn exists(conn: &mut PgConnection, id: &str) -> AppResult<bool> {
    use diesel::dsl::exists;
    Ok(diesel::select(exists(calls::table.find(id))).get_result(conn)?)
}

/// Marks calls left open by a previous process as `failed` (start-up).
pub(crate) fn fail_open_calls(conn: &mut PgConnection) -> AppResult<usize> {
    let now = Utc::now();
    let n = diesel::update(calls::table.filter(calls::ended_at.is_null()))
        .set((
            calls::status.eq("failed"),
            calls::end_reason.eq("server_restart"),
            calls::ended_at.eq(now),
        ))
        .execute(conn)?;
    diesel::update(
        call_participants::table
            .filter(call_participants::status.eq_any(["invited", "ringing", "joined"])),
    )
    .set((
        call_participants::status.eq("left"),
        call_participants::left_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n)
}

/// Ends calls that were still open when the node running them died: answered ones `ended`,
/// the others `failed`, all with `reason`; their parties leave. Answers how many it closed.
pub(crate) fn fail_calls(
    conn: &mut PgConnection,
    ids: &[String],
    reason: &str,
) -> AppResult<usize> {
    let now = Utc::now();
    let open = calls::table
        .filter(calls::id.eq_any(ids))
        .filter(calls::ended_at.is_null());
    let answered = diesel::update(open.filter(calls::answered_at.is_not_null()))
        .set((
            calls::status.eq("ended"),
            calls::end_reason.eq(reason),
            calls::ended_at.eq(now),
        ))
        .execute(conn)?;
    let unanswered = diesel::update(
        calls::table
            .filter(calls::id.eq_any(ids))
            .filter(calls::ended_at.is_null()),
    )
    .set((
        calls::status.eq("failed"),
        calls::end_reason.eq(reason),
        calls::ended_at.eq(now),
    ))
    .execute(conn)?;
    diesel::update(
        call_participants::table
            .filter(call_participants::call_id.eq_any(ids))
            .filter(call_participants::status.eq_any(["invited", "ringing", "joined"])),
    )
    .set((
        call_participants::status.eq("left"),
        call_participants::left_at.eq(now),
    ))
    .execute(conn)?;
    Ok(answered + unanswered)
}

/// One call with its participants.
pub(crate) fn get(
    conn: &mut PgConnection,
    id: &str,
) -> AppResult<Option<(CallRow, Vec<ParticipantRow>)>> {
    let Some(call) = calls::table
        .find(id)
        .select(CallRow::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let parties = call_participants::table
        .filter(call_participants::call_id.eq(id))
        .select(ParticipantRow::as_select())
        .load(conn)?;
    Ok(Some((call, parties)))
}

/// A user's calls, newest first, before `before` (created_at, id) cursor.
pub(crate) fn history(
    conn: &mut PgConnection,
    user: i64,
    before: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> AppResult<Vec<(CallRow, Vec<ParticipantRow>)>> {
    let mine = call_participants::table
        .filter(call_participants::user_id.eq(user))
        .select(call_participants::call_id);
    let mut q = calls::table
        .filter(calls::id.eq_any(mine))
        .order((calls::created_at.desc(), calls::id.desc()))
        .limit(limit)
        .select(CallRow::as_select())
        .into_boxed();
    if let Some((ts, id)) = before {
        q = q.filter(
            calls::created_at
                .lt(ts)
                .or(calls::created_at.eq(ts).and(calls::id.lt(id))),
        );
    }
    let rows: Vec<CallRow> = q.load(conn)?;
    with_participants(conn, rows)
}

/// Attaches each call's participants (one query for all).
pub(crate) fn with_participants(
    conn: &mut PgConnection,
    rows: Vec<CallRow>,
) -> AppResult<Vec<(CallRow, Vec<ParticipantRow>)>> {
    let ids: Vec<String> = rows.iter().map(|c| c.id.clone()).collect();
    let parts: Vec<ParticipantRow> = call_participants::table
        .filter(call_participants::call_id.eq_any(&ids))
        .select(ParticipantRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|c| {
            let p = parts
                .iter()
                .filter(|p| p.call_id == c.id)
                .cloned()
                .collect();
            (c, p)
        })
        .collect())
}
