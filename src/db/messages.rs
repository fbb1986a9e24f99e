//! Messages: the group-commit insert (gap-free per-conversation `seq` assigned inside the
//! committing transaction), idempotent retries by client message id, edits, soft deletes,
//! pagination and sync queries.

use super::prepared::{Prepared, Statement};
use super::schema::{conversations, messages};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::policy::ContactCache;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// A stored message (it crosses nodes as JSON, see `realtime::cluster`).
#[derive(Clone, Debug, Queryable, QueryableByName, Selectable, Serialize, Deserialize)]
#[diesel(table_name = messages, check_for_backend(diesel::pg::Pg))]
pub struct Message {
    /// Primary key.
    pub id: i64,
    /// Conversation.
    pub conversation_id: i64,
    /// Position in the conversation (1, 2, 3, ... without gaps).
    pub seq: i64,
    /// Change number of the latest insert/edit/delete of this message.
    pub change_seq: i64,
    /// Sender (NULL for system messages or deleted accounts).
    pub sender_id: Option<i64>,
    /// `text|image|audio|file|system|voice_call|video_call`.
    pub kind: String,
    /// Text.
    pub content: String,
    /// Attachment.
    pub media_url: Option<String>,
    /// Replied-to message.
    pub reply_to_id: Option<i64>,
    /// Metadata JSON.
    pub metadata: Option<Value>,
    /// Client idempotency key.
    pub client_message_id: Option<String>,
    /// Commit time.
    pub created_at: DateTime<Utc>,
    /// Last edit.
    pub edited_at: Option<DateTime<Utc>>,
    /// Soft deletion.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Who deleted it.
    pub deleted_by: Option<i64>,
    /// The sender's kind of user when it was written (`user|astrologer|admin`).
    pub sender_type: Option<String>,
    /// The one user it was written to (direct conversations; an admin's message in a support
    /// conversation goes to its staff member).
    pub recipient_id: Option<i64>,
    /// That recipient's kind of user (`admin` for a staff member's message to the admins).
    pub recipient_type: Option<String>,
    /// The upload attached (see [`crate::media`]).
    pub media_id: Option<String>,
    /// What clients are shown of it (`MediaRow::summary`), URLs added when shown.
    pub media: Option<Value>,
    /// The id of the legacy backend's document it was imported from.
    pub legacy_id: Option<String>,
}

/// A message as clients see it. Deleted messages keep their place (id, seq) but lose content.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// Id.
    pub id: String,
    /// Conversation id.
    pub conversation_id: String,
    /// Sequence number.
    pub seq: i64,
    /// Change number (sync cursor).
    #[schema(required = false)]
    pub change: i64,
    /// Sender id.
    pub sender_id: Option<String>,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Text.
    pub content: String,
    /// Attachment.
    pub media_url: Option<String>,
    /// Replied-to message id.
    pub reply_to: Option<String>,
    /// Metadata.
    #[schema(schema_with = crate::http::openapi::any_or_null)]
    pub metadata: Option<Value>,
    /// Client idempotency key.
    pub client_message_id: Option<String>,
    /// Commit time.
    pub created_at: DateTime<Utc>,
    /// Edit time.
    pub edited_at: Option<DateTime<Utc>>,
    /// Whether it was deleted.
    #[schema(required = false)]
    pub deleted: bool,
    /// Deletion time.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The sender's kind of user (`user|astrologer|admin`).
    pub sender_type: Option<String>,
    /// The user it was written to.
    pub recipient_id: Option<String>,
    /// The recipient's kind of user.
    pub recipient_type: Option<String>,
    /// The attachment uploaded to this server: `id`, `url` (signed, expiring; the same as
    /// `mediaUrl`), `contentType`, `kind`, `size`, and when known `name`, `width`, `height`,
    /// `durationMs`, `thumbnailUrl`. Absent for messages without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = crate::media::AttachmentDoc)]
    pub media: Option<Value>,
    /// The id its legacy backend gave it, for imported messages (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub legacy_id: Option<String>,
}

/// A message as REST returns it: the [`MessageView`] plus the names seed 003's two apps read.
/// Backend2 promised both styles: the Flutter app (Backend1) reads `from` and `text`, the
/// Electron app (Backend) `sender`, `conversation` and `content`; both were written against
/// Mongoose lean documents, whose id is `_id`. Ids stay strings, as in those apps. `to` is an
/// input only (the recipient of a send); a stored message names its conversation.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Message)]
pub struct MessageDoc {
    /// The canonical fields.
    #[serde(flatten)]
    pub view: MessageView,
    /// Same as `id`.
    #[serde(rename = "_id")]
    #[schema(required = false)]
    pub doc_id: String,
    /// Same as `senderId` (Backend1).
    pub from: Option<String>,
    /// Same as `senderId` (Backend).
    pub sender: Option<String>,
    /// Same as `conversationId`.
    #[schema(required = false)]
    pub conversation: String,
    /// Same as `content` (Backend1).
    #[schema(required = false)]
    pub text: String,
}

impl MessageView {
    /// This view with seed 003's names added (REST responses).
    pub(crate) fn doc(self) -> MessageDoc {
        MessageDoc {
            doc_id: self.id.clone(),
            from: self.sender_id.clone(),
            sender: self.sender_id.clone(),
            conversation: self.conversation_id.clone(),
            text: self.content.clone(),
            view: self,
        }
    }
}

impl Message {
    /// The REST shape: the client view with seed 003's names added.
    pub(crate) fn doc(&self) -> MessageDoc {
        self.view().doc()
    }

    /// The client view.
    pub(crate) fn view(&self) -> MessageView {
        let deleted = self.deleted_at.is_some();
        let (media_url, media) = match &self.media {
            _ if deleted => (None, None),
            Some(summary) => crate::media::present(summary),
            None => (self.media_url.clone(), None),
        };
        MessageView {
            id: self.id.to_string(),
            conversation_id: self.conversation_id.to_string(),
            seq: self.seq,
            change: self.change_seq,
            sender_id: self.sender_id.map(|s| s.to_string()),
            kind: self.kind.clone(),
            content: if deleted {
                String::new()
            } else {
                self.content.clone()
            },
            media_url,
            reply_to: self.reply_to_id.map(|r| r.to_string()),
            metadata: if deleted { None } else { self.metadata.clone() },
            client_message_id: self.client_message_id.clone(),
            created_at: self.created_at,
            edited_at: self.edited_at,
            deleted,
            deleted_at: self.deleted_at,
            sender_type: self.sender_type.clone(),
            recipient_id: self.recipient_id.map(|r| r.to_string()),
            recipient_type: self.recipient_type.clone(),
            media,
            legacy_id: self.legacy_id.clone(),
        }
    }
}

/// A validated message waiting to be written (it crosses nodes as JSON when another node
/// writes its conversation, see `realtime::cluster`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Draft {
    /// Conversation.
    pub conversation_id: i64,
    /// Sender (None: system message).
    pub sender_id: Option<i64>,
    /// Kind.
    pub kind: String,
    /// Text.
    pub content: String,
    /// Attachment.
    pub media_url: Option<String>,
    /// Reply target.
    pub reply_to_id: Option<i64>,
    /// Metadata.
    pub metadata: Option<Value>,
    /// Idempotency key.
    pub client_message_id: Option<String>,
    /// The recipient the sender named (kept where the conversation allows a choice: a staff
    /// member writing to one of the admins of a support conversation).
    pub recipient_id: Option<i64>,
    /// The upload attached (checked readable by the sender).
    pub media_id: Option<String>,
    /// What clients are shown of it.
    pub media: Option<Value>,
}

impl Draft {
    /// `(sender_id, client_message_id)`, by which a retry of this draft finds the stored
    /// message; none when either is missing.
    pub(crate) fn idempotency_key(&self) -> Option<(i64, &str)> {
        Some((self.sender_id?, self.client_message_id.as_deref()?))
    }
}

/// The result of writing one draft.
#[derive(Clone, Debug)]
pub struct Written {
    /// The stored message.
    pub message: Message,
    /// False when the draft was a retry of an earlier message (no new row).
    pub fresh: bool,
}

/// The update both ways of writing a batch make to its conversations (`c`), by `k.n` new
/// messages each: `last_seq` and `last_change` move on; `last_message_at` moves at most once a
/// second. A macro so that it can be part of both statements' literals ([`BATCH_SQL`],
/// [`RESERVE_SEQ_SQL`]).
///
/// `last_message_at` is indexed (conversation lists are ordered by it), so an update that
/// changes it cannot be a HOT update: every batch would add an entry to each of the table's
/// indexes, and a busy conversation's row would leave thousands of dead versions a second for
/// every later lookup by id to step over. It therefore moves at most once a second (lists order
/// to the second); the other columns are not indexed and their updates stay HOT.
macro_rules! bump_conversations {
    () => {
        " UPDATE conversations c \
         SET last_seq = c.last_seq + k.n, last_change = c.last_change + k.n, \
             last_message_at = CASE \
                 WHEN c.last_message_at IS NULL OR c.last_message_at < now() - interval '1 second' \
                 THEN now() ELSE c.last_message_at END, \
             updated_at = now()"
    };
}

/// The column list both statements insert a message with ([`BATCH_SQL`], [`ONE_SQL`]), in the
/// order of their parameters.
macro_rules! insert_message {
    () => {
        " INSERT INTO messages (conversation_id, seq, change_seq, sender_id, kind, content, \
         media_url, reply_to_id, metadata, client_message_id, sender_type, recipient_id, \
         recipient_type, media_id, media) "
    };
}

/// A whole batch in one statement (one round trip between `BEGIN` and `COMMIT`). Its
/// parameters are one array per column of the batch's candidate drafts (`$1` conversation,
/// `$2` sender, … `$13` media; see [`write_batch`] for what is decided before), zipped row by
/// row by `unnest`, so the text does not depend on the batch's size and is prepared once per
/// connection. In order:
/// - `stored`: drafts whose `(sender_id, client_message_id)` is already stored (retries),
///   joined pair by pair as in [`RETRY_LOOKUP_SQL`] (which says why).
/// - `locked`: the conversations of the other drafts, row-locked in id order (two batches
///   never wait for each other in a cycle);
/// - `bumped`: each conversation's `last_seq` and `last_change` moved on by its number of new
///   drafts, so seqs stay gap-free with several writers and several nodes;
/// - `numbered`: the new drafts numbered in batch order within their conversation;
/// - `ins`: every new row inserted.
///
/// It answers one row per candidate: its position (`ord`, from 1), whether it is new, the
/// transaction's id (see [`BatchTrace`]) and the stored message. A candidate without a row
/// names a conversation that does not exist.
///
/// The writers run it on connections of their own ([`crate::realtime::writer::WRITER_SETUP`])
/// that plan it once, with sequential scans disabled, so every table is read through an index
/// however large it grows (a plan made while `messages` was small would otherwise join it by a
/// sequential scan and keep doing so as the table grows). It writes batches of up to
/// [`SINGLE_STATEMENT_MAX`] drafts (`run_batch`).
pub const BATCH_SQL: &str = concat!(
    "WITH d AS MATERIALIZED ( \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
             $6::bigint[], $7::jsonb[], $8::text[], $9::text[], $10::bigint[], $11::text[], \
             $12::text[], $13::jsonb[]) WITH ORDINALITY AS d(conversation_id, sender_id, kind, \
             content, media_url, reply_to_id, metadata, client_message_id, sender_type, \
             recipient_id, recipient_type, media_id, media, ord)), \
     stored AS MATERIALIZED ( \
         SELECT d.ord, m.id FROM d JOIN messages m \
         ON m.sender_id = d.sender_id AND m.client_message_id = d.client_message_id), \
     fresh AS MATERIALIZED ( \
         SELECT d.* FROM d WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.ord = d.ord)), \
     counts AS ( \
         SELECT conversation_id AS id, count(*) AS n FROM fresh GROUP BY conversation_id), \
     locked AS MATERIALIZED ( \
         SELECT c.id FROM conversations c WHERE c.id IN (SELECT id FROM counts) \
         ORDER BY c.id FOR UPDATE OF c), \
     bumped AS (",
    bump_conversations!(),
    " FROM locked l JOIN counts k ON k.id = l.id \
         WHERE c.id = l.id \
         RETURNING c.id, c.last_seq - k.n AS seq_base, c.last_change - k.n AS change_base), \
     numbered AS MATERIALIZED ( \
         SELECT f.*, b.seq_base + row_number() OVER w AS seq, \
             b.change_base + row_number() OVER w AS change_seq \
         FROM fresh f JOIN bumped b ON b.id = f.conversation_id \
         WINDOW w AS (PARTITION BY f.conversation_id ORDER BY f.ord)), \
     ins AS (",
    insert_message!(),
    "SELECT conversation_id, seq, change_seq, sender_id, kind, content, media_url, \
             reply_to_id, metadata, client_message_id, sender_type, recipient_id, \
             recipient_type, media_id, media FROM numbered \
         RETURNING *) \
     SELECT n.ord, true AS fresh, txid_current() AS txid, i.* \
     FROM ins i JOIN numbered n ON n.conversation_id = i.conversation_id AND n.seq = i.seq \
     UNION ALL \
     SELECT s.ord, false, txid_current(), m.* FROM stored s JOIN messages m ON m.id = s.id"
);

/// [`BATCH_SQL`] for a batch of one draft, which is what most batches are under light load:
/// the same parameters (arrays of one element) and the same answer, in a plan of 13 nodes
/// instead of 39, which PostgreSQL sets up again on every run (at 1 000 messages/s to groups of
/// 10, PostgreSQL used 13 % less CPU with it, median of three runs each). In order:
/// - `stored`: the stored message with the draft's `(sender_id, client_message_id)`, probed in
///   the `UNIQUE` index (a retry);
/// - `bumped`: unless it is a retry, the conversation's `last_seq` and `last_change` moved on by
///   one; the update locks the row, so concurrent writers of one conversation take turns;
/// - `ins`: the new row, numbered with the moved-on values.
///
/// It answers one row (`ord` 1), or none when the conversation does not exist. Run like
/// [`BATCH_SQL`], on the writers' connections, planned once, through indexes only.
pub const ONE_SQL: &str = concat!(
    "WITH stored AS MATERIALIZED ( \
         SELECT m.id FROM messages m \
         WHERE m.sender_id = ($2::bigint[])[1] AND m.client_message_id = ($8::text[])[1]), \
     bumped AS (",
    bump_conversations!(),
    " FROM (SELECT 1::bigint AS n) k \
         WHERE c.id = ($1::bigint[])[1] AND NOT EXISTS (SELECT 1 FROM stored) \
         RETURNING c.last_seq AS seq, c.last_change AS change_seq), \
     ins AS (",
    insert_message!(),
    "SELECT ($1::bigint[])[1], b.seq, b.change_seq, ($2::bigint[])[1], ($3::text[])[1], \
             ($4::text[])[1], ($5::text[])[1], ($6::bigint[])[1], ($7::jsonb[])[1], \
             ($8::text[])[1], ($9::text[])[1], ($10::bigint[])[1], ($11::text[])[1], \
             ($12::text[])[1], ($13::jsonb[])[1] \
         FROM bumped b \
         RETURNING *) \
     SELECT 1::bigint AS ord, true AS fresh, txid_current() AS txid, i.* FROM ins i \
     UNION ALL \
     SELECT 1, false, txid_current(), m.* FROM stored s JOIN messages m ON m.id = s.id"
);

/// [`ONE_SQL`], prepared once per connection.
struct WriteOne;
impl Statement for WriteOne {
    const SQL: &'static str = ONE_SQL;
}

/// [`BATCH_SQL`], prepared once per connection.
struct WriteBatch;
impl Statement for WriteBatch {
    const SQL: &'static str = BATCH_SQL;
}

/// One candidate draft of a batch, with who writes to whom; [`BATCH_SQL`] takes them as
/// columns.
struct Candidate<'a> {
    draft: &'a Draft,
    sender_type: Option<&'static str>,
    recipient_id: Option<i64>,
    recipient_type: Option<&'static str>,
}

/// A row of [`BATCH_SQL`].
#[derive(QueryableByName)]
struct BatchRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ord: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    fresh: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    txid: i64,
    #[diesel(embed)]
    message: Message,
}

/// The idempotency lookup of a large batch (`run_batch`): the stored messages whose
/// `(sender_id, client_message_id)` equals one of the pairs `($1[i], $2[i])`.
///
/// The pairs are joined row by row (`unnest` of two arrays zips them), so each becomes one probe
/// of the `UNIQUE (sender_id, client_message_id)` index and the cost follows the batch, not the
/// table. Filtering with `sender_id = ANY($1) AND client_message_id = ANY($2)` instead would ask
/// for the cross product of senders and keys, which the planner answers with a sequential scan
/// of `messages` once the table is large (acks went from milliseconds to seconds).
///
/// A generic plan of it made while the table was small is a sequential scan with a hash join
/// (5 ms per batch at 60 000 rows, against 0.1 ms for the index probes); on the writers'
/// connections sequential scans are off, so whichever plan it gets probes the index.
pub(crate) const RETRY_LOOKUP_SQL: &str = "SELECT m.* FROM messages m \
     JOIN unnest($1::bigint[], $2::text[]) AS k(sender_id, client_message_id) \
     ON m.sender_id = k.sender_id AND m.client_message_id = k.client_message_id";

/// Reserves `n` seq and change numbers in each listed conversation in one statement:
/// `$1` conversation ids, `$2` counts; answers each conversation's new last numbers (the update
/// is `bump_conversations!`'s, as in [`BATCH_SQL`]).
pub(crate) const RESERVE_SEQ_SQL: &str = concat!(
    "WITH locked AS MATERIALIZED ( \
         SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE)",
    bump_conversations!(),
    " FROM locked l JOIN unnest($1::bigint[], $2::bigint[]) AS k(id, n) ON k.id = l.id \
     WHERE c.id = l.id \
     RETURNING c.id, c.last_seq, c.last_change, txid_current() AS txid"
);

/// [`RESERVE_SEQ_SQL`], prepared once per connection.
struct ReserveSeq;
impl Statement for ReserveSeq {
    const SQL: &'static str = RESERVE_SEQ_SQL;
}

/// Inserts a batch's rows in one statement whose text does not depend on the batch's size (so
/// it is prepared once per connection, not parsed and planned per batch): one array per column,
/// zipped row by row by `unnest`.
pub(crate) const INSERT_SQL: &str =
    "INSERT INTO messages (conversation_id, sender_id, kind, content, \
         media_url, reply_to_id, metadata, client_message_id, sender_type, recipient_id, \
         recipient_type, media_id, media, seq, change_seq) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::jsonb[], $8::text[], $9::text[], $10::bigint[], $11::text[], \
         $12::text[], $13::jsonb[], $14::bigint[], $15::bigint[]) \
     RETURNING *";

/// [`INSERT_SQL`], prepared once per connection.
struct InsertRows;
impl Statement for InsertRows {
    const SQL: &'static str = INSERT_SQL;
}

/// Runs [`INSERT_SQL`] for `rows`, each a candidate with its seq and change number; answers the
/// stored rows (in no particular order).
fn insert_rows(
    conn: &mut PgConnection,
    rows: &[(&Candidate<'_>, i64, i64)],
) -> QueryResult<Vec<Message>> {
    use diesel::sql_types::{Array, BigInt};
    let candidates: Vec<&Candidate<'_>> = rows.iter().map(|(c, _, _)| *c).collect();
    bind_candidates(Prepared::<InsertRows>::new(), &candidates)
        .bind::<Array<BigInt>, _>(rows.iter().map(|(_, seq, _)| *seq).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(
            rows.iter()
                .map(|(_, _, change)| *change)
                .collect::<Vec<_>>(),
        )
        .load(conn)
}

/// Binds `$1`…`$13` of [`BATCH_SQL`] and [`INSERT_SQL`]: one array per column of the
/// candidates, in their order.
fn bind_candidates<'f, S: Statement>(
    statement: Prepared<'f, S>,
    candidates: &[&Candidate<'f>],
) -> Prepared<'f, S> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
    macro_rules! column {
        ($($get:tt)+) => {
            candidates.iter().map($($get)+).collect::<Vec<_>>()
        };
    }
    statement
        .bind::<Array<BigInt>, _>(column!(|c| c.draft.conversation_id))
        .bind::<Array<Nullable<BigInt>>, _>(column!(|c| c.draft.sender_id))
        .bind::<Array<Text>, _>(column!(|c| c.draft.kind.as_str()))
        .bind::<Array<Text>, _>(column!(|c| c.draft.content.as_str()))
        .bind::<Array<Nullable<Text>>, _>(column!(|c| c.draft.media_url.as_deref()))
        .bind::<Array<Nullable<BigInt>>, _>(column!(|c| c.draft.reply_to_id))
        .bind::<Array<Nullable<Jsonb>>, _>(column!(|c| c.draft.metadata.as_ref()))
        .bind::<Array<Nullable<Text>>, _>(column!(|c| c.draft.client_message_id.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column!(|c| c.sender_type))
        .bind::<Array<Nullable<BigInt>>, _>(column!(|c| c.recipient_id))
        .bind::<Array<Nullable<Text>>, _>(column!(|c| c.recipient_type))
        .bind::<Array<Nullable<Text>>, _>(column!(|c| c.draft.media_id.as_deref()))
        .bind::<Array<Nullable<Jsonb>>, _>(column!(|c| c.draft.media.as_ref()))
}

/// A row of [`RESERVE_SEQ_SQL`].
#[derive(QueryableByName)]
struct Reserved {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_change: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    txid: i64,
}

/// Runs [`RETRY_LOOKUP_SQL`] for `(sender, client message id)` pairs (duplicates are asked once).
fn stored_retries(conn: &mut PgConnection, keyed: &[(i64, &str)]) -> AppResult<Vec<Message>> {
    use diesel::sql_types::{Array, BigInt, Text};
    let mut pairs: Vec<(i64, &str)> = keyed.to_vec();
    pairs.sort_unstable();
    pairs.dedup();
    let (senders, keys): (Vec<i64>, Vec<&str>) = pairs.into_iter().unzip();
    Ok(diesel::sql_query(RETRY_LOOKUP_SQL)
        .bind::<Array<BigInt>, _>(senders)
        .bind::<Array<Text>, _>(keys)
        .load(conn)?)
}

/// Batches of at most this many drafts are written by [`BATCH_SQL`]; larger ones by
/// [`RETRY_LOOKUP_SQL`], [`RESERVE_SEQ_SQL`] and [`INSERT_SQL`] (see `run_batch`).
pub const SINGLE_STATEMENT_MAX: usize = 32;

/// What `run_batch` wrote: the transaction's id (when it reserved anything) and, per
/// candidate that has one, its position, whether it is new, and the stored message.
type BatchOutcome = (Option<i64>, Vec<(usize, bool, Message)>);

/// Writes `candidates` (in batch order). A small batch, the common case at light load where
/// every round trip shows in the latency, is one prepared statement ([`BATCH_SQL`]). A larger
/// one takes three (the idempotency lookup, the reservation, the insert): measured under a
/// sustained closed loop, the single statement with hundreds of drafts cost PostgreSQL about
/// twice the CPU per message of the three (its foreign-key checks alone took twice as long,
/// inside a statement that also updates the rows they check), and throughput fell run after
/// run (10 000, then 8 700 acks/s, against 10 700 and 10 900 with three statements); with
/// hundreds of drafts per batch the two extra round trips cost nothing that shows.
fn run_batch(conn: &mut PgConnection, candidates: &[Candidate<'_>]) -> AppResult<BatchOutcome> {
    if candidates.is_empty() {
        return Ok((None, Vec::new()));
    }
    if candidates.len() > SINGLE_STATEMENT_MAX {
        return run_large_batch(conn, candidates);
    }
    let rows = run_single_statement(conn, candidates)?;
    let txid = rows.first().map(|r| r.txid);
    let mut written = Vec::with_capacity(rows.len());
    for row in rows {
        let at = usize::try_from(row.ord - 1)
            .map_err(|_| AppError::internal("batch row of no draft"))?;
        written.push((at, row.fresh, row.message));
    }
    Ok((txid, written))
}

/// Runs [`BATCH_SQL`] for `candidates` ([`ONE_SQL`] for one), prepared (its plan made once per
/// connection).
fn run_single_statement(
    conn: &mut PgConnection,
    candidates: &[Candidate<'_>],
) -> QueryResult<Vec<BatchRow>> {
    let candidates: Vec<&Candidate<'_>> = candidates.iter().collect();
    if candidates.len() == 1 {
        return bind_candidates(Prepared::<WriteOne>::new(), &candidates).load(conn);
    }
    bind_candidates(Prepared::<WriteBatch>::new(), &candidates).load(conn)
}

/// Writes a large batch with three statements, to the same effect as [`BATCH_SQL`]: retries
/// found by their idempotency key, the other drafts' conversations locked in id order and their
/// numbers reserved, every new row inserted.
fn run_large_batch(
    conn: &mut PgConnection,
    candidates: &[Candidate<'_>],
) -> AppResult<BatchOutcome> {
    let keyed: Vec<(i64, &str)> = candidates
        .iter()
        .filter_map(|c| c.draft.idempotency_key())
        .collect();
    let mut stored: HashMap<(i64, String), Message> = HashMap::new();
    if !keyed.is_empty() {
        for m in stored_retries(conn, &keyed)? {
            if let (Some(s), Some(k)) = (m.sender_id, m.client_message_id.clone()) {
                stored.insert((s, k), m);
            }
        }
    }
    let mut written = Vec::with_capacity(candidates.len());
    let mut fresh: Vec<usize> = Vec::new();
    for (at, c) in candidates.iter().enumerate() {
        let key = c.draft.sender_id.zip(c.draft.client_message_id.clone());
        match key.and_then(|k| stored.get(&k)) {
            Some(m) => written.push((at, false, m.clone())),
            None => fresh.push(at),
        }
    }
    let mut per_conv: HashMap<i64, i64> = HashMap::new();
    for &at in &fresh {
        *per_conv
            .entry(candidates[at].draft.conversation_id)
            .or_insert(0) += 1;
    }
    if per_conv.is_empty() {
        return Ok((None, written));
    }
    let mut conv_ids: Vec<i64> = per_conv.keys().copied().collect();
    conv_ids.sort_unstable();
    let counts: Vec<i64> = conv_ids.iter().map(|c| per_conv[c]).collect();
    let reserved: Vec<Reserved> = Prepared::<ReserveSeq>::new()
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(&conv_ids)
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(&counts)
        .load(conn)?;
    let txid = reserved.first().map(|r| r.txid);
    let mut next: HashMap<i64, (i64, i64)> = reserved
        .iter()
        .map(|r| {
            let n = per_conv.get(&r.id).copied().unwrap_or(0);
            (r.id, (r.last_seq - n + 1, r.last_change - n + 1))
        })
        .collect();
    // (candidate, seq, change number) per new row, and the row's candidate position.
    let mut rows: Vec<(&Candidate<'_>, i64, i64)> = Vec::with_capacity(fresh.len());
    let mut owners: Vec<usize> = Vec::with_capacity(fresh.len());
    for &at in &fresh {
        let c = &candidates[at];
        // A conversation that is gone was not reserved: the draft gets no row.
        let Some(slot) = next.get_mut(&c.draft.conversation_id) else {
            continue;
        };
        let (seq, change) = *slot;
        *slot = (seq + 1, change + 1);
        rows.push((c, seq, change));
        owners.push(at);
    }
    if !rows.is_empty() {
        let mut by_pos: HashMap<(i64, i64), Message> = insert_rows(conn, &rows)?
            .into_iter()
            .map(|m| ((m.conversation_id, m.seq), m))
            .collect();
        for ((c, seq, _), &at) in rows.iter().zip(&owners) {
            let m = by_pos
                .remove(&(c.draft.conversation_id, *seq))
                .ok_or_else(|| AppError::internal("inserted row missing from RETURNING"))?;
            written.push((at, true, m));
        }
    }
    Ok((txid, written))
}

/// What a [`write_batch_traced`] transaction leaves for its caller, kept outside the
/// transaction so that it survives a COMMIT whose answer never arrives (the connection broke
/// after PostgreSQL committed): with the transaction id, [`transaction_status`] tells whether
/// the batch is in, and then these are its results.
#[derive(Debug, Default)]
pub(crate) struct BatchTrace {
    /// The transaction's id, taken when a batch written between `BEGIN` and `COMMIT` has rows
    /// to insert (a batch of retries only writes nothing, so its outcome needs no resolving; a
    /// batch that [stands alone](Plan::stands_alone) is settled by a retry instead).
    pub txid: Option<i64>,
    /// The results being committed, set just before COMMIT.
    pub results: Option<Vec<AppResult<Written>>>,
}

/// The batch's trace, also after a panic while it was held (it only records values).
pub(crate) fn trace_of(
    trace: &std::sync::Mutex<BatchTrace>,
) -> std::sync::MutexGuard<'_, BatchTrace> {
    trace
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes a batch of drafts atomically. Conversations are locked in id order, their
/// `last_seq` bumped by the number of new messages, and all rows inserted (`run_batch`), so
/// `seq` stays gap-free even with several processes writing. A draft whose
/// `(sender, clientMessageId)` already exists returns the stored message instead. Per-draft
/// problems (a reply target from another conversation) fail only that draft.
pub fn write_batch(
    conn: &mut PgConnection,
    drafts: &[Draft],
) -> AppResult<Vec<AppResult<Written>>> {
    write_batch_traced(conn, drafts, &std::sync::Mutex::default(), None)
}

/// [`write_batch`], recording its transaction id and results in `trace` as it goes; `caches`
/// (when given) remember who writes to whom between batches.
///
/// What needs no lock is read first ([`plan_rows`]), outside any transaction: under READ
/// COMMITTED every statement reads a snapshot of its own, in a transaction or not, so these
/// reads see what they would see inside one. Then:
/// - a batch that [stands alone](Plan::stands_alone) (small, every draft keyed) is written by
///   its one statement as a transaction of its own, without the round trips of `BEGIN` and
///   `COMMIT`, the latency of a send under light load. Should its answer be lost, nothing is
///   recorded in `trace`, so the writer retries the batch, and the retry finds by their keys
///   whatever rows the lost statement committed;
/// - any other batch is written between `BEGIN` and `COMMIT`, its transaction id and results
///   recorded in `trace` before COMMIT, so that a lost COMMIT answer can be settled by the
///   transaction's status (a draft without a key could not be found again by a retry).
pub(crate) fn write_batch_traced(
    conn: &mut PgConnection,
    drafts: &[Draft],
    trace: &std::sync::Mutex<BatchTrace>,
    caches: Option<&WriteCaches>,
) -> AppResult<Vec<AppResult<Written>>> {
    let plan = plan_rows(conn, drafts, caches)?;
    if plan.stands_alone() {
        let (_, written) = run_batch(conn, &plan.candidates)?;
        return plan.finish(written);
    }
    conn.transaction(|conn| {
        let (txid, written) = run_batch(conn, &plan.candidates)?;
        trace_of(trace).txid = txid;
        let results = plan.finish(written)?;
        trace_of(trace).results = Some(results);
        Ok::<(), AppError>(())
    })?;
    trace_of(trace)
        .results
        .take()
        .ok_or_else(|| AppError::internal("batch results missing after commit"))
}

/// What PostgreSQL knows about a transaction ([`transaction_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxStatus {
    /// Committed.
    Committed,
    /// Rolled back, or cut off before it committed.
    Aborted,
    /// Still running (its session has not noticed the broken connection yet).
    InProgress,
    /// Too old for the commit log to tell.
    Unknown,
}

/// A row of `txid_status`.
#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    status: Option<String>,
}

/// Whether the transaction with id `txid` (from `txid_current()`) committed.
pub(crate) fn transaction_status(conn: &mut PgConnection, txid: i64) -> AppResult<TxStatus> {
    let row: StatusRow = diesel::sql_query("SELECT txid_status($1) AS status")
        .bind::<diesel::sql_types::BigInt, _>(txid)
        .get_result(conn)?;
    Ok(match row.status.as_deref() {
        Some("committed") => TxStatus::Committed,
        Some("aborted") => TxStatus::Aborted,
        Some("in progress") => TxStatus::InProgress,
        _ => TxStatus::Unknown,
    })
}

/// A batch made ready for its statement by [`plan_rows`].
struct Plan<'a> {
    /// Per draft, its result where it is known before anything is written.
    results: Vec<Option<AppResult<Written>>>,
    /// The drafts that go to the statement, by their place in the batch.
    picked: Vec<usize>,
    /// Drafts that repeat an earlier draft's idempotency key in the batch, with that draft.
    dup_of: Vec<(usize, usize)>,
    /// The picked drafts, with who writes to whom.
    candidates: Vec<Candidate<'a>>,
}

impl Plan<'_> {
    /// Whether the batch can be written by one statement outside `BEGIN` and `COMMIT`: it has
    /// nothing to write, or it is written by [`BATCH_SQL`] (or [`ONE_SQL`]) alone and every
    /// draft carries an idempotency key, by which a retry finds what a lost statement wrote.
    fn stands_alone(&self) -> bool {
        self.candidates.len() <= SINGLE_STATEMENT_MAX
            && self
                .candidates
                .iter()
                .all(|c| c.draft.idempotency_key().is_some())
    }

    /// Every draft's result, from what the statement `written` (see [`BatchOutcome`]).
    fn finish(self, written: Vec<(usize, bool, Message)>) -> AppResult<Vec<AppResult<Written>>> {
        let Plan {
            mut results,
            picked,
            dup_of,
            ..
        } = self;
        for (at, fresh, message) in written {
            let owner = picked
                .get(at)
                .copied()
                .ok_or_else(|| AppError::internal("batch row of no draft"))?;
            results[owner] = Some(Ok(Written { message, fresh }));
        }
        // A candidate without a row: its conversation was not there to lock.
        for &i in &picked {
            results[i]
                .get_or_insert_with(|| Err(AppError::NotFound("conversation not found".into())));
        }
        for (dup, first) in dup_of {
            results[dup] = Some(match &results[first] {
                Some(Ok(w)) => Ok(Written {
                    message: w.message.clone(),
                    fresh: false,
                }),
                Some(Err(e)) => Err(AppError::bad_request(ErrorCode::Duplicate, e.to_string())),
                None => Err(AppError::internal("duplicate of an unwritten draft")),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(AppError::internal("draft left without a result"))))
            .collect())
    }
}

/// Settles what needs no lock, mostly without the database: a draft repeating an earlier
/// draft's idempotency key in the same batch gets that draft's result; a reply target must be a
/// message of the same conversation (one query, only when the batch holds replies); who writes
/// to whom ([`Parties`]) comes from `caches` where they know it. None of it changes once
/// written (a message's conversation, a conversation's kind), or is read as of now wherever it
/// is read (a user's roles).
fn plan_rows<'a>(
    conn: &mut PgConnection,
    drafts: &'a [Draft],
    caches: Option<&WriteCaches>,
) -> AppResult<Plan<'a>> {
    let mut results: Vec<Option<AppResult<Written>>> = (0..drafts.len()).map(|_| None).collect();

    // 1. Reply targets must live in the same conversation.
    let reply_ids: Vec<i64> = drafts.iter().filter_map(|d| d.reply_to_id).collect();
    let reply_conv: HashMap<i64, i64> = if reply_ids.is_empty() {
        HashMap::new()
    } else {
        messages::table
            .filter(messages::id.eq_any(&reply_ids))
            .select((messages::id, messages::conversation_id))
            .load::<(i64, i64)>(conn)?
            .into_iter()
            .collect()
    };

    // 2. Which drafts go to the statement (the first of a batch's duplicates stands for all).
    let mut picked: Vec<usize> = Vec::new();
    let mut first_in_batch: HashMap<(i64, &str), usize> = HashMap::new();
    let mut dup_of: Vec<(usize, usize)> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        if let Some(key) = d.idempotency_key() {
            if let Some(&first) = first_in_batch.get(&key) {
                dup_of.push((i, first));
                continue;
            }
            first_in_batch.insert(key, i);
        }
        if let Some(r) = d.reply_to_id {
            if reply_conv.get(&r) != Some(&d.conversation_id) {
                results[i] = Some(Err(AppError::Validation {
                    code: ErrorCode::InvalidReply,
                    message: "replyTo must be a message of the same conversation".into(),
                }));
                continue;
            }
        }
        picked.push(i);
    }

    // 3. Who writes to whom, then the statement.
    let parties = Parties::load(conn, &picked, drafts, caches)?;
    let candidates: Vec<Candidate<'_>> = picked
        .iter()
        .map(|&i| {
            let d = &drafts[i];
            let (sender_type, recipient_id, recipient_type) = parties.of(d);
            Candidate {
                draft: d,
                sender_type,
                recipient_id,
                recipient_type,
            }
        })
        .collect();
    Ok(Plan {
        results,
        picked,
        dup_of,
        candidates,
    })
}

/// The kind of user seed 002 names (`user|astrologer|admin`), from a user's roles.
pub(crate) fn party_type<S: AsRef<str>>(roles: impl IntoIterator<Item = S>) -> &'static str {
    let mut kind = "user";
    for r in roles {
        let r = r.as_ref();
        if r.eq_ignore_ascii_case("admin") {
            return "admin";
        }
        if r.eq_ignore_ascii_case("astrologer") {
            kind = "astrologer";
        }
    }
    kind
}

/// A conversation's kind, support user and participant key. None of them changes once the
/// conversation exists.
type ConversationKind = (String, Option<i64>, Option<String>);

/// Most conversations whose [`ConversationKind`] a [`WriteCaches`] keeps.
const SHAPES_KEPT: usize = 65_536;

/// What the message writers remember between batches about who writes to whom: users' kinds
/// (in the contact cache, which role changes invalidate) and conversations' kinds (which never
/// change, so they are kept until `SHAPES_KEPT` are known, then forgotten all at once).
#[derive(Debug)]
pub(crate) struct WriteCaches {
    contacts: std::sync::Arc<ContactCache>,
    shapes: std::sync::Mutex<HashMap<i64, ConversationKind>>,
}

impl WriteCaches {
    /// Caches that keep users' kinds in `contacts`.
    pub(crate) fn new(contacts: std::sync::Arc<ContactCache>) -> Self {
        Self {
            contacts,
            shapes: std::sync::Mutex::default(),
        }
    }

    fn shapes(&self) -> std::sync::MutexGuard<'_, HashMap<i64, ConversationKind>> {
        self.shapes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Who writes to whom in a batch's conversations: the senders' and recipients' kinds of user,
/// and each conversation's kind, staff member (support) and pair (direct).
struct Parties {
    conversations: HashMap<i64, ConversationKind>,
    types: HashMap<i64, &'static str>,
}

impl Parties {
    /// The conversations and users of `picked` drafts: from `caches` where they know them, the
    /// others with one query each for the whole batch (and remembered).
    fn load(
        conn: &mut PgConnection,
        picked: &[usize],
        drafts: &[Draft],
        caches: Option<&WriteCaches>,
    ) -> AppResult<Self> {
        use super::schema::users;
        let mut conversation_ids: Vec<i64> =
            picked.iter().map(|&i| drafts[i].conversation_id).collect();
        conversation_ids.sort_unstable();
        conversation_ids.dedup();
        let mut conversations: HashMap<i64, ConversationKind> = HashMap::new();
        if let Some(caches) = caches {
            let shapes = caches.shapes();
            conversations.extend(
                conversation_ids
                    .iter()
                    .filter_map(|c| Some((*c, shapes.get(c)?.clone()))),
            );
        }
        conversation_ids.retain(|c| !conversations.contains_key(c));
        if !conversation_ids.is_empty() {
            let rows: Vec<(i64, String, Option<i64>, Option<String>)> = conversations::table
                .filter(conversations::id.eq_any(&conversation_ids))
                .select((
                    conversations::id,
                    conversations::kind,
                    conversations::support_user_id,
                    conversations::participant_key,
                ))
                .load(conn)?;
            let found = rows
                .into_iter()
                .map(|(id, kind, support, key)| (id, (kind, support, key)));
            match caches {
                Some(caches) => {
                    let mut shapes = caches.shapes();
                    for (id, shape) in found {
                        if shapes.len() >= SHAPES_KEPT {
                            shapes.clear();
                        }
                        shapes.insert(id, shape.clone());
                        conversations.insert(id, shape);
                    }
                }
                None => conversations.extend(found),
            }
        }
        let mut parties = Self {
            conversations,
            types: HashMap::new(),
        };
        let mut users_ids: Vec<i64> = Vec::new();
        for &i in picked {
            let d = &drafts[i];
            users_ids.extend(d.sender_id);
            users_ids.extend(parties.recipient(d));
            users_ids.extend(d.recipient_id);
        }
        users_ids.sort_unstable();
        users_ids.dedup();
        let cache = caches.map(|c| c.contacts.as_ref());
        if let Some(cache) = cache {
            parties.types = cache.party_types(&users_ids);
            users_ids.retain(|u| !parties.types.contains_key(u));
        }
        if !users_ids.is_empty() {
            let ticket = cache.map(ContactCache::ticket);
            let rows: Vec<(i64, Vec<Option<String>>)> = users::table
                .filter(users::id.eq_any(&users_ids))
                .select((users::id, users::roles))
                .load(conn)?;
            let found: Vec<(i64, &'static str)> = rows
                .into_iter()
                .map(|(id, roles)| (id, party_type(roles.iter().flatten())))
                .collect();
            if let (Some(cache), Some(ticket)) = (cache, ticket) {
                cache.note_party_types(ticket, &found);
            }
            parties.types.extend(found);
        }
        Ok(parties)
    }

    /// The one user a draft is written to: the other member of a direct conversation; in a
    /// support conversation, the staff member when an admin writes (a staff member writes to
    /// every admin: no single recipient unless the sender named an admin).
    fn recipient(&self, d: &Draft) -> Option<i64> {
        let sender = d.sender_id?;
        let (kind, support, key) = self.conversations.get(&d.conversation_id)?;
        match kind.as_str() {
            "direct" => {
                let (a, b) = key.as_deref()?.split_once(':')?;
                let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
                Some(if a == sender { b } else { a })
            }
            "support" => support.filter(|s| *s != sender),
            _ => None,
        }
    }

    /// An admin the staff member of a support conversation named as recipient.
    fn named_admin(&self, d: &Draft) -> Option<i64> {
        let named = d.recipient_id?;
        match self.conversations.get(&d.conversation_id)? {
            (kind, Some(support), _)
                if kind == "support"
                    && d.sender_id == Some(*support)
                    && self.types.get(&named) == Some(&"admin") =>
            {
                Some(named)
            }
            _ => None,
        }
    }

    /// `(senderType, recipientId, recipientType)` of a draft.
    fn of(&self, d: &Draft) -> (Option<&'static str>, Option<i64>, Option<&'static str>) {
        let sender_type = d.sender_id.and_then(|s| self.types.get(&s).copied());
        let recipient = self.recipient(d).or_else(|| self.named_admin(d));
        let recipient_type = match recipient {
            Some(r) => self.types.get(&r).copied(),
            None => match self.conversations.get(&d.conversation_id) {
                Some((kind, Some(support), _))
                    if kind == "support" && d.sender_id == Some(*support) =>
                {
                    Some("admin")
                }
                _ => None,
            },
        };
        (sender_type, recipient, recipient_type)
    }
}

/// One message.
pub(crate) fn by_id(conn: &mut PgConnection, id: i64) -> AppResult<Option<Message>> {
    Ok(messages::table
        .find(id)
        .select(Message::as_select())
        .first(conn)
        .optional()?)
}

/// Takes the next change number of a conversation (row-locked until commit).
pub(crate) fn next_change(conn: &mut PgConnection, conversation_id: i64) -> AppResult<i64> {
    Ok(diesel::update(conversations::table.find(conversation_id))
        .set(conversations::last_change.eq(conversations::last_change + 1))
        .returning(conversations::last_change)
        .get_result(conn)?)
}

/// Who did what to a message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Actor {
    /// The acting user.
    pub user_id: i64,
    /// Whether they hold `admin` or `master`.
    pub moderator: bool,
}

/// Reads and row-locks a message of a conversation (404 when it is elsewhere or missing).
fn lock_in(conn: &mut PgConnection, id: i64, conversation_id: i64) -> AppResult<Message> {
    messages::table
        .find(id)
        .filter(messages::conversation_id.eq(conversation_id))
        .select(Message::as_select())
        .for_update()
        .first(conn)
        .optional()?
        .ok_or_else(|| AppError::NotFound("message not found".into()))
}

/// Edits the text of an own, undeleted message of a conversation.
pub(crate) fn edit(
    conn: &mut PgConnection,
    id: i64,
    conversation_id: i64,
    actor: Actor,
    content: &str,
) -> AppResult<Message> {
    conn.transaction(|conn| {
        let m = lock_in(conn, id, conversation_id)?;
        if m.sender_id != Some(actor.user_id) {
            return Err(AppError::Forbidden(
                "only the sender may edit a message".into(),
            ));
        }
        if m.deleted_at.is_some() {
            return Err(AppError::conflict(
                ErrorCode::MessageDeleted,
                "the message was deleted",
            ));
        }
        let change = next_change(conn, m.conversation_id)?;
        Ok(diesel::update(messages::table.find(id))
            .set((
                messages::content.eq(content),
                messages::edited_at.eq(Utc::now()),
                messages::change_seq.eq(change),
            ))
            .returning(Message::as_returning())
            .get_result(conn)?)
    })
}

/// Soft-deletes a message: the sender, or any message for moderators. Deleting twice is a no-op
/// that returns the deleted message.
pub(crate) fn delete(
    conn: &mut PgConnection,
    id: i64,
    conversation_id: i64,
    actor: Actor,
) -> AppResult<(Message, bool)> {
    conn.transaction(|conn| {
        let m = lock_in(conn, id, conversation_id)?;
        if m.sender_id != Some(actor.user_id) && !actor.moderator {
            return Err(AppError::Forbidden(
                "No permission to delete this message".into(),
            ));
        }
        if m.deleted_at.is_some() {
            return Ok((m, false));
        }
        let change = next_change(conn, m.conversation_id)?;
        let updated = diesel::update(messages::table.find(id))
            .set((
                messages::deleted_at.eq(Utc::now()),
                messages::deleted_by.eq(actor.user_id),
                messages::change_seq.eq(change),
            ))
            .returning(Message::as_returning())
            .get_result(conn)?;
        Ok((updated, true))
    })
}

/// A page of messages by seq: `before` (exclusive, newest first then returned ascending) or
/// `after` (exclusive, ascending); without either, the newest page.
pub(crate) fn page(
    conn: &mut PgConnection,
    conversation_id: i64,
    before: Option<i64>,
    after: Option<i64>,
    limit: i64,
) -> AppResult<Vec<Message>> {
    let base = messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .select(Message::as_select())
        .limit(limit);
    let mut rows: Vec<Message> = if let Some(after) = after {
        base.filter(messages::seq.gt(after))
            .order(messages::seq.asc())
            .load(conn)?
    } else if let Some(before) = before {
        base.filter(messages::seq.lt(before))
            .order(messages::seq.desc())
            .load(conn)?
    } else {
        base.order(messages::seq.desc()).load(conn)?
    };
    rows.sort_by_key(|m| m.seq);
    Ok(rows)
}

/// Messages a client is missing: everything after `after_seq`, plus older messages edited or
/// deleted after change `after_change` — in seq order, without a cap (read in pages of 1000).
pub(crate) fn since(
    conn: &mut PgConnection,
    conversation_id: i64,
    after_seq: i64,
    after_change: Option<i64>,
) -> AppResult<Vec<Message>> {
    let mut out: Vec<Message> = Vec::new();
    if let Some(change) = after_change {
        out = messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::seq.le(after_seq))
            .filter(messages::change_seq.gt(change))
            .order(messages::seq.asc())
            .select(Message::as_select())
            .load(conn)?;
    }
    let mut cursor = after_seq;
    loop {
        let page: Vec<Message> = messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::seq.gt(cursor))
            .order(messages::seq.asc())
            .limit(1000)
            .select(Message::as_select())
            .load(conn)?;
        let done = page.len() < 1000;
        if let Some(last) = page.last() {
            cursor = last.seq;
        }
        out.extend(page);
        if done {
            break;
        }
    }
    Ok(out)
}

/// The highest seq of a conversation among messages created more than `age` ago (0: none).
/// A node that starts fanning out a conversation in cluster mode starts above it: what was
/// committed since may still be on its way from another node.
pub(crate) fn settled_seq(
    conn: &mut PgConnection,
    conversation_id: i64,
    age: std::time::Duration,
) -> AppResult<i64> {
    #[derive(QueryableByName)]
    struct Settled {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
    }
    let row: Settled = diesel::sql_query(
        "SELECT COALESCE(MAX(seq), 0) AS seq FROM messages \
         WHERE conversation_id = $1 AND created_at < now() - make_interval(secs => $2)",
    )
    .bind::<diesel::sql_types::BigInt, _>(conversation_id)
    .bind::<diesel::sql_types::Double, _>(age.as_secs_f64())
    .get_result(conn)?;
    Ok(row.seq)
}
