//! The ids of imported things as their legacy backends named them.
//!
//! `switchboard import` brings users, conversations and chat requests over from seed 000, 002 and
//! 003's backends and records each one's legacy id in `legacy_ids` (messages keep theirs in
//! `messages.legacy_id`). Those apps keep working with the ids they hold: what they send is
//! resolved to Switchboard's ids at the edge, and what they receive names imported things by
//! their legacy ids. [`LegacyIds`] is the in-memory copy of `legacy_ids` that both directions
//! read; it is loaded at start and reloaded when the table changes (an import running while the
//! server serves). A deployment without imports has an empty copy, and every rewrite stops at
//! [`LegacyIds::is_empty`].
//!
//! The rewrites are driven by field names: [`USER_FIELDS`], [`CONVERSATION_FIELDS`] and
//! [`CHAT_REQUEST_FIELDS`] say what kind of id a field holds (a bare id, an array of ids, or
//! objects whose `id`/`_id` is one), [`USER_KEYED_FIELDS`] are maps keyed by user id, and a
//! message object that carries `legacyId` is shown with it as its `id` and `_id`.

use crate::db::Db;
use crate::error::{AppError, AppResult};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// A legacy backend whose data was imported (also `switchboard import --from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Source {
    /// Seed 000 (lonestar): users, messages with `dm_<a>_<b>` and team chat ids.
    Seed000,
    /// Seed 002 (astrology app): users, astrologers, admins, DirectConversation, DirectMessage,
    /// Call.
    Seed002,
    /// Seed 003 (Backend2): users, sessions, conversations, messages, chat requests, contacts.
    Seed003,
}

impl Source {
    /// Every source.
    pub(crate) const ALL: [Self; 3] = [Self::Seed000, Self::Seed002, Self::Seed003];

    /// The name stored in `legacy_ids.source`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Seed000 => "seed000",
            Self::Seed002 => "seed002",
            Self::Seed003 => "seed003",
        }
    }

    /// A source by its stored name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The source whose app speaks a dialect (`lonestar`, `astrology`, `backend2`); other
    /// dialects have none.
    pub(crate) fn of_dialect(dialect: &str) -> Option<Self> {
        match dialect {
            "lonestar" => Some(Self::Seed000),
            "astrology" => Some(Self::Seed002),
            "backend2" => Some(Self::Seed003),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Seed000 => 0,
            Self::Seed002 => 1,
            Self::Seed003 => 2,
        }
    }
}

/// What a legacy id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A user.
    User,
    /// A conversation.
    Conversation,
    /// A chat request.
    ChatRequest,
}

impl Kind {
    /// The name stored in `legacy_ids.kind`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Conversation => "conversation",
            Self::ChatRequest => "chat_request",
        }
    }

    /// A kind by its stored name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        [Self::User, Self::Conversation, Self::ChatRequest]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

/// One row of `legacy_ids`.
#[derive(Clone, Debug, QueryableByName)]
pub(crate) struct Row {
    /// Source name.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub source: String,
    /// The legacy id.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub legacy_id: String,
    /// Kind name.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kind: String,
    /// Switchboard's id.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// When it was imported.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub imported_at: DateTime<Utc>,
}

/// What tells one state of `legacy_ids` from another: row count, newest import time and the sum
/// of the ids (an import adds rows; a re-import that maps an id elsewhere changes the sum).
#[derive(Clone, Debug, Default, PartialEq, Eq, QueryableByName)]
struct Stamp {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    latest: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    id_sum: String,
}

const STAMP_SQL: &str = "SELECT count(*)::bigint AS rows, max(imported_at) AS latest, \
     coalesce(sum(id), 0)::text AS id_sum FROM legacy_ids";

const LOAD_SQL: &str = "SELECT source, legacy_id, kind, id, imported_at FROM legacy_ids";

/// The table's write counters in PostgreSQL's statistics (-1 without them): what the periodic
/// check reads, instead of scanning the table.
const CHANGES_SQL: &str = "SELECT coalesce((SELECT n_tup_ins + n_tup_upd + n_tup_del \
     FROM pg_stat_user_tables WHERE relid = 'legacy_ids'::regclass), -1)::bigint AS changes";

#[derive(QueryableByName)]
struct Changes {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    changes: i64,
}

/// Periodic checks between two full comparisons of the table when its write counters do not
/// move (statistics reset, turned off, or not yet flushed).
pub(crate) const FULL_CHECK_EVERY: u32 = 30;

/// Legacy ids of imported messages seen lately (resolved from what an app sent, or shown to an
/// app as a message's `legacyId`), so that references to them (`replyTo`, the `messageIds` of a
/// read receipt) are shown by their legacy ids too without a query per event. Bounded: each of
/// [`MEMO_SHARDS`] shards keeps two generations of at most [`MEMO_PER_SHARD`] entries; when the
/// current one is full it becomes the previous one (the oldest generation is dropped).
#[derive(Debug)]
pub(crate) struct MessageMemo {
    shards: Vec<Mutex<MemoShard>>,
}

#[derive(Debug, Default)]
struct MemoShard {
    current: HashMap<i64, Arc<str>>,
    previous: HashMap<i64, Arc<str>>,
}

/// Shards of the [`MessageMemo`].
pub(crate) const MEMO_SHARDS: usize = 16;
/// Entries per shard and generation: at most 2 × 16 × 8 192 = 262 144 messages remembered.
pub(crate) const MEMO_PER_SHARD: usize = 8192;

impl Default for MessageMemo {
    fn default() -> Self {
        Self {
            shards: (0..MEMO_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl MessageMemo {
    fn shard(&self, id: i64) -> std::sync::MutexGuard<'_, MemoShard> {
        let i = (id.unsigned_abs() % MEMO_SHARDS as u64) as usize;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a message's legacy id.
    pub(crate) fn remember(&self, id: i64, legacy: &str) {
        let mut shard = self.shard(id);
        if shard.current.get(&id).is_some_and(|l| &**l == legacy) {
            return;
        }
        if shard.current.len() >= MEMO_PER_SHARD {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(id, Arc::from(legacy));
    }

    /// A remembered message's legacy id.
    pub(crate) fn legacy_of(&self, id: i64) -> Option<Arc<str>> {
        let shard = self.shard(id);
        shard
            .current
            .get(&id)
            .or_else(|| shard.previous.get(&id))
            .cloned()
    }
}

/// One source's ids both ways.
#[derive(Debug, Default)]
pub(crate) struct Table {
    by_legacy: HashMap<Box<str>, (Kind, i64)>,
    by_id: HashMap<(Kind, i64), Arc<str>>,
    /// The messages remembered by the process (shared by every table and snapshot).
    messages: Arc<MessageMemo>,
}

impl Table {
    /// Switchboard's id (and its kind) for a legacy id.
    pub(crate) fn resolve(&self, legacy: &str) -> Option<(Kind, i64)> {
        self.by_legacy.get(legacy).copied()
    }

    /// The legacy id shown for a user, conversation or chat request.
    pub(crate) fn legacy_of(&self, kind: Kind, id: i64) -> Option<&Arc<str>> {
        self.by_id.get(&(kind, id))
    }

    /// Whether this source has no ids.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_legacy.is_empty()
    }
}

/// One loaded state of `legacy_ids`.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    tables: [Table; 3],
    stamp: Option<Stamp>,
}

impl Snapshot {
    /// One source's ids.
    pub(crate) fn table(&self, source: Source) -> &Table {
        &self.tables[source.index()]
    }

    /// Number of legacy ids held.
    pub(crate) fn len(&self) -> usize {
        self.tables.iter().map(|t| t.by_legacy.len()).sum()
    }

    /// Whether no legacy id is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.tables.iter().all(Table::is_empty)
    }

    /// A snapshot of rows (unknown sources and kinds are skipped). Of several legacy ids of one
    /// thing, the oldest import is shown back (then the smallest legacy id).
    pub(crate) fn from_rows(mut rows: Vec<Row>) -> Self {
        rows.sort_by(|a, b| (a.imported_at, &a.legacy_id).cmp(&(b.imported_at, &b.legacy_id)));
        let mut snap = Self::default();
        for row in rows {
            let (Some(source), Some(kind)) = (Source::parse(&row.source), Kind::parse(&row.kind))
            else {
                continue;
            };
            let table = &mut snap.tables[source.index()];
            let legacy: Arc<str> = Arc::from(row.legacy_id.as_str());
            table.by_id.entry((kind, row.id)).or_insert(legacy);
            table
                .by_legacy
                .insert(row.legacy_id.into_boxed_str(), (kind, row.id));
        }
        snap
    }
}

/// The shared in-memory copy of `legacy_ids` (cheap to clone).
#[derive(Clone, Debug)]
pub struct LegacyIds {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// No legacy id is held (checked first by every rewrite).
    empty: AtomicBool,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The write counters last read ([`CHANGES_SQL`]).
    changes: AtomicI64,
    /// Legacy ids of messages seen lately, given to every snapshot's tables.
    messages: Arc<MessageMemo>,
    /// Periodic checks since the last full comparison.
    quiet: AtomicU32,
}

impl Default for LegacyIds {
    fn default() -> Self {
        Self::new()
    }
}

impl LegacyIds {
    /// An empty copy.
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                empty: AtomicBool::new(true),
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                changes: AtomicI64::new(i64::MIN),
                messages: Arc::default(),
                quiet: AtomicU32::new(0),
            }),
        }
    }

    /// Whether no legacy id is held: then there is nothing to translate.
    pub fn is_empty(&self) -> bool {
        self.inner.empty.load(Ordering::Acquire)
    }

    /// The current state (rewrites of one payload read one state).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .inner
                .snapshot
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Switchboard's id (and its kind) for a legacy id of `source`.
    pub fn resolve(&self, source: Source, legacy: &str) -> Option<(Kind, i64)> {
        if self.is_empty() {
            return None;
        }
        self.snapshot().table(source).resolve(legacy)
    }

    /// The legacy id `source`'s app knows a user, conversation or chat request by.
    pub fn legacy_of(&self, source: Source, kind: Kind, id: i64) -> Option<Arc<str>> {
        if self.is_empty() {
            return None;
        }
        self.snapshot().table(source).legacy_of(kind, id).cloned()
    }

    /// Remembers the legacy ids of messages just looked up (`legacy id → id`).
    pub(crate) fn remember_messages(&self, found: &HashMap<String, i64>) {
        for (legacy, id) in found {
            self.inner.messages.remember(*id, legacy);
        }
    }

    /// The messages whose legacy ids are listed, as `legacy id → id` (one indexed query), and
    /// remembered (see [`MessageMemo`]).
    pub(crate) async fn lookup_messages(
        &self,
        db: &Db,
        legacy: Vec<String>,
    ) -> AppResult<HashMap<String, i64>> {
        let found = db.run(move |conn| message_ids(conn, &legacy)).await?;
        self.remember_messages(&found);
        Ok(found)
    }

    /// Replaces the held state.
    pub(crate) fn replace(&self, mut snapshot: Snapshot) {
        for table in &mut snapshot.tables {
            table.messages = Arc::clone(&self.inner.messages);
        }
        let empty = snapshot.is_empty();
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snapshot);
        self.inner.empty.store(empty, Ordering::Release);
    }

    /// Checks whether `legacy_ids` changed since it was loaded (one aggregate query) and loads it
    /// again when it did (one query). Answers whether it loaded.
    pub(crate) fn refresh_with(&self, conn: &mut PgConnection) -> AppResult<bool> {
        let held = self.snapshot().stamp.clone();
        let now: Stamp = diesel::sql_query(STAMP_SQL).get_result(conn)?;
        if held.as_ref() == Some(&now) {
            return Ok(false);
        }
        let mut snapshot = if now.rows == 0 {
            Snapshot::default()
        } else {
            let rows: Vec<Row> = diesel::sql_query(LOAD_SQL).load(conn)?;
            Snapshot::from_rows(rows)
        };
        // Rows written between the check and the load are loaded now and make the next check
        // load once more.
        snapshot.stamp = Some(now);
        let count = snapshot.len();
        self.replace(snapshot);
        if count > 0 || held.is_some_and(|h| h.rows > 0) {
            tracing::info!(count, "legacy ids loaded");
        }
        Ok(true)
    }

    /// [`LegacyIds::refresh_with`] on a pooled connection.
    pub async fn refresh(&self, db: &Db) -> AppResult<bool> {
        let ids = self.clone();
        db.run(move |conn| ids.refresh_with(conn)).await
    }

    /// The periodic check: reads the table's write counters (one row of the statistics views)
    /// and compares the table itself ([`LegacyIds::refresh_with`]) only when they moved, or after
    /// [`FULL_CHECK_EVERY`] quiet checks. Answers whether it loaded.
    pub(crate) fn poll_with(&self, conn: &mut PgConnection) -> AppResult<bool> {
        let Changes { changes } = diesel::sql_query(CHANGES_SQL).get_result(conn)?;
        let before = self.inner.changes.swap(changes, Ordering::Relaxed);
        let quiet = self.inner.quiet.fetch_add(1, Ordering::Relaxed) + 1;
        if before == changes && quiet < FULL_CHECK_EVERY {
            return Ok(false);
        }
        self.inner.quiet.store(0, Ordering::Relaxed);
        self.refresh_with(conn)
    }

    /// Loads the table now and then checks it every `every` in the background
    /// ([`LegacyIds::poll_with`]), until `stop` is set (shutdown) or no clone of this copy lives.
    /// Must run inside an actix system.
    pub(crate) fn start(&self, db: Db, every: Duration, stop: Arc<AtomicBool>) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = every.max(Duration::from_secs(1));
        actix_web::rt::spawn(async move {
            let mut failing = false;
            while let Some(inner) = weak.upgrade() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ids = LegacyIds { inner };
                let polled = ids.clone();
                match db.run(move |conn| polled.poll_with(conn)).await {
                    Ok(_) => failing = false,
                    // Told once per outage: the copy held is kept meanwhile.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "legacy ids: check failed; keeping the copy held");
                    }
                    Err(_) => {}
                }
                drop(ids);
                actix_web::rt::time::sleep(every).await;
            }
        });
    }
}

/// Fields whose value names a user: an id, an array of ids, or user objects (whose `id`, `_id`
/// and `userId` are the user's).
pub(crate) const USER_FIELDS: &[&str] = &[
    "userId",
    "user_id",
    "senderId",
    "recipientId",
    "from",
    "to",
    "fromId",
    "toId",
    "fromUserId",
    "toUserId",
    "by",
    "callerId",
    "calleeId",
    "endedBy",
    "createdBy",
    "readBy",
    "deliveredTo",
    "uid",
    "sender",
    "recipient",
    "caller",
    "callee",
    "user",
    "users",
    "userIds",
    "members",
    "memberIds",
    "participants",
    "participantIds",
    "deletedBy",
    "adminId",
    "staffId",
    "astrologerId",
    "supportUserId",
    "targetUserId",
    "otherUser",
    "peer",
    "typing",
];

/// Fields whose value names a conversation: an id, an array of ids, or conversation objects.
pub(crate) const CONVERSATION_FIELDS: &[&str] = &[
    "conversationId",
    "conversation_id",
    "conversation",
    "conversations",
    "conversationIds",
    "chatId",
    "groupId",
    "roomId",
];

/// Fields whose value names a chat request: an id, or chat request objects (`incoming` and
/// `outgoing`: the lists of `GET /chat-requests`).
pub(crate) const CHAT_REQUEST_FIELDS: &[&str] = &[
    "requestId",
    "chatRequestId",
    "request",
    "requests",
    "chatRequest",
    "chatRequests",
    "incoming",
    "outgoing",
];

/// Objects keyed by user id (receipt cursors, unread counts per participant).
pub(crate) const USER_KEYED_FIELDS: &[&str] = &["deliveredUpTo", "readUpTo", "unreadCount"];

/// Fields a client names messages in (a message's legacy id is resolved through
/// `messages.legacy_id`): also `id` and `_id` at the top level of a payload.
pub(crate) const MESSAGE_FIELDS: &[&str] = &[
    "messageId",
    "message_id",
    "messageIds",
    "message_ids",
    "messages",
    "replyTo",
    "replyToId",
    "reply_to",
];

/// Text the apps write: never read for ids when it is a string.
const TEXT_FIELDS: &[&str] = &[
    "content",
    "text",
    "message",
    "body",
    "caption",
    "title",
    "description",
    "bio",
    "name",
    "fromName",
    "callerName",
    "password",
    "code",
    "otp",
    "phone",
    "email",
    "token",
    "sdp",
    "offer",
    "answer",
    "candidate",
    "metadata",
    "reason",
];

/// The kind of id a field holds.
fn field_kind(field: &str) -> Option<Kind> {
    if USER_FIELDS.contains(&field) {
        Some(Kind::User)
    } else if CONVERSATION_FIELDS.contains(&field) {
        Some(Kind::Conversation)
    } else if CHAT_REQUEST_FIELDS.contains(&field) {
        Some(Kind::ChatRequest)
    } else {
        None
    }
}

/// Whether a value has the shape of an id no text is mistaken for: a 24-digit hex ObjectId, or
/// seed 000's `dm_<user>_<user>`. Other legacy ids (seed 000's team chat names) are resolved
/// only in fields that hold ids.
pub(crate) fn distinctive(value: &str) -> bool {
    (value.len() == 24 && value.bytes().all(|b| b.is_ascii_hexdigit()))
        || (value.starts_with("dm_") && value.len() > 4 && value.len() <= 200)
}

/// Whether a value is not one of Switchboard's numeric ids (a message id to look up).
fn non_numeric(value: &str) -> bool {
    !value.is_empty() && value.len() <= 200 && value.parse::<i64>().is_err()
}

/// Replaces the legacy ids in a payload an app sent by Switchboard's ids (as strings): values
/// of distinctive shape anywhere except text fields, others only in fields that hold ids of
/// their kind (or in `id`/`_id`). Answers whether something changed.
pub(crate) fn resolve_inbound(table: &Table, value: &mut Value) -> bool {
    if table.is_empty() {
        return false;
    }
    inbound_value(table, value, None)
}

fn inbound_value(table: &Table, value: &mut Value, field: Option<&str>) -> bool {
    match value {
        Value::String(s) => {
            let Some((kind, id)) = table.resolve(s) else {
                return false;
            };
            let fits = distinctive(s)
                || field.is_some_and(|f| {
                    field_kind(f) == Some(kind) || matches!(f, "id" | "_id" | "target")
                });
            if fits {
                *s = id.to_string();
            }
            fits
        }
        Value::Array(items) => {
            let mut changed = false;
            for item in items {
                changed |= inbound_value(table, item, field);
            }
            changed
        }
        Value::Object(obj) => {
            let mut changed = false;
            for (key, v) in obj.iter_mut() {
                if v.is_string() && TEXT_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                changed |= inbound_value(table, v, Some(key));
            }
            changed
        }
        _ => false,
    }
}

/// The values of message fields in a payload that are not Switchboard ids (legacy message ids
/// to look up), at most 1000. `own`: the payload's own `id` and `_id` name a message too (an
/// edit or a delete).
pub(crate) fn message_refs(value: &Value, own: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Object(obj) = value {
        for (key, v) in obj {
            let top = own && matches!(key.as_str(), "id" | "_id");
            if top || MESSAGE_FIELDS.contains(&key.as_str()) {
                collect_refs(v, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    out.truncate(1000);
    out
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if non_numeric(s) => out.push(s.clone()),
        Value::Array(items) => {
            for item in items.iter().take(1000) {
                if let Value::String(s) = item {
                    if non_numeric(s) {
                        out.push(s.clone());
                    }
                }
            }
        }
        _ => {}
    }
}

/// Replaces the message references [`message_refs`] found by the ids `found` maps them to;
/// answers whether it replaced any.
pub(crate) fn apply_message_refs(value: &mut Value, found: &HashMap<String, i64>) -> bool {
    if found.is_empty() {
        return false;
    }
    let swap = |v: &mut Value| match v {
        Value::String(s) => match found.get(s.as_str()) {
            Some(id) => {
                *s = id.to_string();
                true
            }
            None => false,
        },
        _ => false,
    };
    let mut changed = false;
    if let Value::Object(obj) = value {
        for (key, v) in obj.iter_mut() {
            if matches!(key.as_str(), "id" | "_id") || MESSAGE_FIELDS.contains(&key.as_str()) {
                match v {
                    Value::Array(items) => {
                        for item in items {
                            changed |= swap(item);
                        }
                    }
                    other => changed |= swap(other),
                }
            }
        }
    }
    changed
}

/// The messages whose legacy ids are listed, as `legacy id → id` (one indexed query).
pub(crate) fn message_ids(
    conn: &mut PgConnection,
    legacy: &[String],
) -> AppResult<HashMap<String, i64>> {
    use crate::db::schema::messages;
    if legacy.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Option<String>, i64)> = messages::table
        .filter(messages::legacy_id.eq_any(legacy))
        .select((messages::legacy_id, messages::id))
        .load(conn)
        .map_err(AppError::from)?;
    Ok(rows
        .into_iter()
        .filter_map(|(l, id)| l.map(|l| (l, id)))
        .collect())
}

/// Resolves the legacy message ids in a payload through the database, when it names any (and
/// remembers them, see [`MessageMemo`]).
pub(crate) async fn resolve_message_refs(
    db: &Db,
    legacy: &LegacyIds,
    value: &mut Value,
    own: bool,
) -> AppResult<()> {
    let refs = message_refs(value, own);
    if refs.is_empty() {
        return Ok(());
    }
    let found = legacy.lookup_messages(db, refs).await?;
    apply_message_refs(value, &found);
    Ok(())
}

/// Shows imported things by their legacy ids in a payload going to an app: the values of the
/// fields of [`USER_FIELDS`], [`CONVERSATION_FIELDS`] and [`CHAT_REQUEST_FIELDS`] (and the keys
/// of [`USER_KEYED_FIELDS`]) that have one, and `legacyId` as a message's `id` and `_id`.
/// `own` is the kind of the payload itself when it is a user, conversation or chat request (its
/// `id` and `_id`). Ids without a legacy id are left as they are. Answers whether something
/// changed.
pub(crate) fn show_outbound(table: &Table, value: &mut Value, own: Option<Kind>) -> bool {
    outbound_value(table, value, own)
}

fn outbound_value(table: &Table, value: &mut Value, kind: Option<Kind>) -> bool {
    match value {
        Value::Object(obj) => outbound_object(table, obj, kind),
        Value::Array(items) => {
            let mut changed = false;
            for item in items {
                changed |= outbound_value(table, item, kind);
            }
            changed
        }
        other => match kind {
            Some(kind) => swap_id(table, other, kind),
            None => false,
        },
    }
}

/// Replaces an id (string or number) by its legacy id when it has one.
fn swap_id(table: &Table, value: &mut Value, kind: Kind) -> bool {
    let id = match value {
        Value::String(s) => s.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    match id.and_then(|id| table.legacy_of(kind, id)) {
        Some(legacy) => {
            *value = Value::String(legacy.to_string());
            true
        }
        None => false,
    }
}

fn outbound_object(table: &Table, obj: &mut Map<String, Value>, own: Option<Kind>) -> bool {
    let mut changed = false;
    if let Some(Value::String(legacy)) = obj.get("legacyId") {
        // A message: its legacy id is its id, and names it where the payload does.
        if let Some(id) = obj.get("id").and_then(numeric_id) {
            table.messages.remember(id, legacy);
        }
        let legacy = Value::String(legacy.clone());
        let old = obj.get("id").cloned();
        obj.insert("id".into(), legacy.clone());
        if obj.contains_key("_id") {
            obj.insert("_id".into(), legacy.clone());
        }
        if old.is_some() && obj.get("messageId") == old.as_ref() {
            obj.insert("messageId".into(), legacy);
        }
        changed = true;
    } else if let Some(kind) = own {
        for key in ["id", "_id"] {
            if let Some(v) = obj.get_mut(key) {
                changed |= swap_id(table, v, kind);
            }
        }
    }
    for (key, v) in obj.iter_mut() {
        let key = key.as_str();
        if matches!(key, "id" | "_id" | "legacyId") {
            continue;
        }
        if let Some(kind) = field_kind(key) {
            changed |= outbound_value(table, v, Some(kind));
        } else if MESSAGE_FIELDS.contains(&key) && is_reference(v) {
            changed |= show_message_refs(&table.messages, v);
        } else if USER_KEYED_FIELDS.contains(&key) {
            if let Value::Object(map) = v {
                changed |= rekey_users(table, map);
            }
        } else if v.is_object() || v.is_array() {
            changed |= outbound_value(table, v, None);
        }
    }
    changed
}

/// An id as a string of digits or a number.
fn numeric_id(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Whether a value is an id or a list of ids (not objects, such as a page of messages).
fn is_reference(v: &Value) -> bool {
    match v {
        Value::String(_) | Value::Number(_) => true,
        Value::Array(items) => items.iter().all(|i| i.is_string() || i.is_number()),
        _ => false,
    }
}

/// Message references (an id or a list of ids) shown by the legacy ids remembered for them.
fn show_message_refs(memo: &MessageMemo, value: &mut Value) -> bool {
    let swap = |v: &mut Value| match numeric_id(v).and_then(|id| memo.legacy_of(id)) {
        Some(legacy) => {
            *v = Value::String(legacy.to_string());
            true
        }
        None => false,
    };
    match value {
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| swap(v) | changed),
        other => swap(other),
    }
}

/// Renames the user-id keys of a map to their legacy ids.
fn rekey_users(table: &Table, map: &mut Map<String, Value>) -> bool {
    let renames: Vec<(String, Arc<str>)> = map
        .keys()
        .filter_map(|k| {
            let id = k.parse::<i64>().ok()?;
            table
                .legacy_of(Kind::User, id)
                .map(|l| (k.clone(), Arc::clone(l)))
        })
        .collect();
    if renames.is_empty() {
        return false;
    }
    for (from, to) in renames {
        if let Some(v) = map.remove(&from) {
            map.insert(to.to_string(), v);
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALICE: &str = "64b000000000000000000001";
    const BOB: &str = "64b000000000000000000002";
    const CHAT: &str = "64b0000000000000000000c1";

    fn row(source: &str, legacy: &str, kind: &str, id: i64, secs: i64) -> Row {
        Row {
            source: source.into(),
            legacy_id: legacy.into(),
            kind: kind.into(),
            id,
            imported_at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
        }
    }

    fn ids() -> LegacyIds {
        let ids = LegacyIds::new();
        ids.replace(Snapshot::from_rows(vec![
            row("seed003", ALICE, "user", 7, 0),
            row("seed003", BOB, "user", 8, 0),
            row("seed003", CHAT, "conversation", 40, 0),
            row("seed000", "dm_b_a", "conversation", 41, 5),
            row("seed000", "dm_a_b", "conversation", 41, 5),
            row("seed000", "dm_z_z", "conversation", 41, 1),
            row("seed000", "sales", "conversation", 42, 0),
            row("seed002", "x", "unknown-kind", 1, 0),
        ]));
        ids
    }

    #[test]
    fn resolves_per_source_and_shows_the_oldest_mapping() {
        let ids = ids();
        assert!(!ids.is_empty());
        assert_eq!(ids.resolve(Source::Seed003, ALICE), Some((Kind::User, 7)));
        assert_eq!(ids.resolve(Source::Seed000, ALICE), None);
        assert_eq!(
            ids.resolve(Source::Seed000, "dm_a_b"),
            Some((Kind::Conversation, 41))
        );
        assert_eq!(
            ids.resolve(Source::Seed000, "dm_b_a"),
            Some((Kind::Conversation, 41))
        );
        // Oldest import first, then the smallest legacy id.
        assert_eq!(
            ids.legacy_of(Source::Seed000, Kind::Conversation, 41)
                .as_deref(),
            Some("dm_z_z")
        );
        assert_eq!(ids.legacy_of(Source::Seed003, Kind::Conversation, 7), None);
        assert_eq!(ids.legacy_of(Source::Seed002, Kind::User, 1), None);
        let tie = LegacyIds::new();
        tie.replace(Snapshot::from_rows(vec![
            row("seed000", "dm_b_a", "conversation", 41, 5),
            row("seed000", "dm_a_b", "conversation", 41, 5),
        ]));
        assert_eq!(
            tie.legacy_of(Source::Seed000, Kind::Conversation, 41)
                .as_deref(),
            Some("dm_a_b")
        );
    }

    #[test]
    fn an_empty_copy_answers_nothing_and_a_replacement_empties_it() {
        let ids = LegacyIds::new();
        assert!(ids.is_empty());
        assert_eq!(ids.resolve(Source::Seed003, ALICE), None);
        let full = self::ids();
        assert!(!full.is_empty());
        full.replace(Snapshot::default());
        assert!(full.is_empty());
        assert_eq!(full.resolve(Source::Seed003, ALICE), None);
        assert_eq!(Source::of_dialect("backend2"), Some(Source::Seed003));
        assert_eq!(Source::of_dialect("aist"), None);
    }

    #[test]
    fn inbound_values_resolve_by_shape_or_field() {
        let ids = ids();
        let snap = ids.snapshot();
        let mut p = json!({
            "conversation": CHAT,
            "to": BOB,
            "text": ALICE,
            "participants": [ALICE, "9"],
            "nested": {"deep": [BOB]},
            "other": "sales",
        });
        assert!(resolve_inbound(snap.table(Source::Seed003), &mut p));
        assert_eq!(
            p,
            json!({
                "conversation": "40",
                "to": "8",
                "text": ALICE,
                "participants": ["7", "9"],
                "nested": {"deep": ["8"]},
                "other": "sales",
            })
        );
        // Team chat names resolve only where an id is expected.
        let mut p = json!({"chatId": "sales", "note": "sales", "conversationId": "dm_a_b"});
        assert!(resolve_inbound(snap.table(Source::Seed000), &mut p));
        assert_eq!(
            p,
            json!({"chatId": "42", "note": "sales", "conversationId": "41"})
        );
        // A name of one kind in a field of another stays as it is.
        let mut p = json!({"to": "sales", "message": "dm_a_b"});
        assert!(!resolve_inbound(snap.table(Source::Seed000), &mut p));
        let mut untouched = json!({"conversationId": "12", "content": "hi"});
        assert!(!resolve_inbound(
            snap.table(Source::Seed003),
            &mut untouched
        ));
    }

    #[test]
    fn message_references_are_collected_and_applied() {
        let mut p = json!({"id": "64b0000000000000000000f1", "replyTo": "12",
                           "messageIds": ["64b0000000000000000000f2", "13"], "content": "x"});
        let refs = message_refs(&p, true);
        assert_eq!(
            refs,
            vec![
                "64b0000000000000000000f1".to_owned(),
                "64b0000000000000000000f2".to_owned()
            ]
        );
        let found = HashMap::from([("64b0000000000000000000f1".to_owned(), 100_i64)]);
        apply_message_refs(&mut p, &found);
        assert_eq!(p["id"], "100");
        assert_eq!(p["messageIds"], json!(["64b0000000000000000000f2", "13"]));
        assert!(message_refs(&json!({"id": "5", "text": "abc"}), true).is_empty());
        assert!(message_refs(&json!({"id": "tmp-1234"}), false).is_empty());
    }

    #[test]
    fn message_references_show_the_legacy_ids_remembered_for_them() {
        let ids = ids();
        let snap = ids.snapshot();
        let table = snap.table(Source::Seed002);
        // Unknown yet: left as it is.
        let mut read = json!({"conversationId": "40", "messageIds": ["500", "501"], "readBy": "7"});
        assert!(!show_outbound(table, &mut read, None));
        // Seen as a message shown to an app, or resolved from what an app sent.
        let mut shown = json!({"id": "500", "legacyId": "64b0000000000000000000f1"});
        assert!(show_outbound(table, &mut shown, None));
        ids.remember_messages(&HashMap::from([(
            "64b0000000000000000000f2".to_owned(),
            501,
        )]));
        assert!(show_outbound(table, &mut read, None));
        assert_eq!(
            read["messageIds"],
            json!(["64b0000000000000000000f1", "64b0000000000000000000f2"])
        );
        let mut page = json!({"messages": [{"id": "500", "legacyId": "64b0000000000000000000f1"}]});
        assert!(show_outbound(table, &mut page, None));
        assert_eq!(page["messages"][0]["id"], "64b0000000000000000000f1");
        let mut reply = json!({"id": "502", "replyTo": "500", "replyToId": 501});
        assert!(show_outbound(table, &mut reply, None));
        assert_eq!(reply["replyTo"], "64b0000000000000000000f1");
        assert_eq!(reply["replyToId"], "64b0000000000000000000f2");
        assert_eq!(reply["id"], "502", "a message of its own is not renamed");
        // A reloaded snapshot keeps what was remembered.
        ids.replace(Snapshot::from_rows(vec![row(
            "seed002", ALICE, "user", 7, 0,
        )]));
        let mut again = json!({"replyTo": "500"});
        assert!(show_outbound(
            ids.snapshot().table(Source::Seed002),
            &mut again,
            None
        ));
    }

    #[test]
    fn the_message_memo_is_bounded_and_keeps_the_newest() {
        let memo = MessageMemo::default();
        let per_shard = MEMO_PER_SHARD as i64;
        let shards = MEMO_SHARDS as i64;
        // Three generations' worth into one shard: the oldest is gone, the newest two stay.
        for n in 0..3 * per_shard {
            memo.remember(n * shards, "x");
        }
        assert!(
            memo.legacy_of(0).is_none(),
            "the oldest generation was dropped"
        );
        assert!(memo.legacy_of((3 * per_shard - 1) * shards).is_some());
        assert!(memo.legacy_of((per_shard + 1) * shards).is_some());
        let held: usize = memo
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum();
        assert!(held <= 2 * MEMO_PER_SHARD * MEMO_SHARDS);
    }

    #[test]
    fn outbound_fields_show_legacy_ids_by_table() {
        let ids = ids();
        let snap = ids.snapshot();
        let table = snap.table(Source::Seed003);
        let mut message = json!({
            "id": "500", "_id": "500", "legacyId": "64b0000000000000000000f1",
            "messageId": "500",
            "conversationId": "40", "conversation": "40",
            "senderId": "7", "from": "7", "sender": "7", "recipientId": 9,
            "content": "7", "seq": 3,
        });
        assert!(show_outbound(table, &mut message, None));
        assert_eq!(
            message,
            json!({
                "id": "64b0000000000000000000f1", "_id": "64b0000000000000000000f1",
                "legacyId": "64b0000000000000000000f1",
                "messageId": "64b0000000000000000000f1",
                "conversationId": CHAT, "conversation": CHAT,
                "senderId": ALICE, "from": ALICE, "sender": ALICE, "recipientId": 9,
                "content": "7", "seq": 3,
            })
        );
        let mut conv = json!({
            "id": "40", "_id": "40",
            "members": [{"id": "7", "_id": "7", "userId": "7", "name": "A"}, {"id": "9"}],
            "participants": ["8", "9"],
            "readUpTo": {"7": "t1", "9": "t2"},
            "lastMessage": {"id": "501", "senderId": "8", "conversationId": "40"},
            "unreadCount": 3,
        });
        assert!(show_outbound(table, &mut conv, Some(Kind::Conversation)));
        assert_eq!(
            conv,
            json!({
                "id": CHAT, "_id": CHAT,
                "members": [{"id": ALICE, "_id": ALICE, "userId": ALICE, "name": "A"}, {"id": "9"}],
                "participants": [BOB, "9"],
                "readUpTo": {ALICE: "t1", "9": "t2"},
                "lastMessage": {"id": "501", "senderId": BOB, "conversationId": CHAT},
                "unreadCount": 3,
            })
        );
        let mut wrapped = json!({"message": {"id": "500", "legacyId": "64b0000000000000000000f1",
                                              "senderId": "7"}, "success": true});
        assert!(show_outbound(table, &mut wrapped, None));
        assert_eq!(wrapped["message"]["id"], "64b0000000000000000000f1");
        assert_eq!(wrapped["message"]["senderId"], ALICE);
        let mut plain = json!({"conversationId": "12", "userId": "13", "callId": "7"});
        assert!(!show_outbound(table, &mut plain, None));
        assert_eq!(
            plain,
            json!({"conversationId": "12", "userId": "13", "callId": "7"})
        );
    }
}
