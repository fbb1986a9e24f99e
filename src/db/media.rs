//! Media uploads: the rows that describe stored files, who may read them, quotas and the
//! clean-up of uploads no message uses.

use super::schema::media;
use crate::error::{AppError, AppResult};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::{json, Map, Value};

/// A stored upload.
#[derive(Clone, Debug, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = media, check_for_backend(diesel::pg::Pg))]
pub(crate) struct MediaRow {
    /// 128 random bits, base64url.
    pub id: String,
    /// The uploader.
    pub owner_id: i64,
    /// `image|audio|video|document`.
    pub kind: String,
    /// Sniffed content type.
    pub content_type: String,
    /// Bytes stored.
    pub size: i64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    /// The file name the client gave (cleaned), for `Content-Disposition`.
    pub filename: Option<String>,
    /// Image width as shown.
    pub width: Option<i32>,
    /// Image height as shown.
    pub height: Option<i32>,
    /// Playing time of audio and video.
    pub duration_ms: Option<i64>,
    /// Size of the thumbnail, when there is one.
    pub thumbnail_size: Option<i64>,
    /// Its content type.
    pub thumbnail_type: Option<String>,
    /// Upload time.
    pub created_at: DateTime<Utc>,
}

impl MediaRow {
    /// What a message carries of it (`messages.media`); URLs are added when it is shown.
    pub(crate) fn summary(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("contentType".into(), json!(self.content_type));
        out.insert("kind".into(), json!(self.kind));
        out.insert("size".into(), json!(self.size));
        if let Some(name) = &self.filename {
            out.insert("name".into(), json!(name));
        }
        if let (Some(w), Some(h)) = (self.width, self.height) {
            out.insert("width".into(), json!(w));
            out.insert("height".into(), json!(h));
        }
        if let Some(d) = self.duration_ms {
            out.insert("durationMs".into(), json!(d));
        }
        if self.thumbnail_size.is_some() {
            out.insert("thumbnail".into(), json!(true));
        }
        Value::Object(out)
    }
}

/// Inserts `row` if the owner's stored bytes stay within `quota` (checked under a per-user
/// advisory lock, so concurrent uploads cannot both slip under it).
pub(crate) fn insert_within_quota(
    conn: &mut PgConnection,
    row: &MediaRow,
    quota: u64,
) -> AppResult<()> {
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(7242, ($1 % 2147483647)::int)")
            .bind::<BigInt, _>(row.owner_id)
            .execute(conn)?;
        let used = used_bytes(conn, row.owner_id)?;
        let adding = row.size + row.thumbnail_size.unwrap_or(0);
        if u64::try_from(used + adding).unwrap_or(u64::MAX) > quota {
            return Err(AppError::QuotaExceeded(
                format!(
                    "this upload would take your stored media past {quota} bytes ({used} in use); \
                     media no message uses is removed after a while"
                )
                .into(),
            ));
        }
        diesel::insert_into(media::table)
            .values(row)
            .execute(conn)?;
        Ok(())
    })
}

/// Bytes a user's uploads (and their thumbnails) take.
pub(crate) fn used_bytes(conn: &mut PgConnection, owner: i64) -> AppResult<i64> {
    stored_bytes(conn, Some(owner))
}

/// Bytes every upload takes (the stored-bytes gauge).
pub(crate) fn total_bytes(conn: &mut PgConnection) -> AppResult<i64> {
    stored_bytes(conn, None)
}

/// Bytes the uploads (of `owner`, or of everyone) and their thumbnails take.
fn stored_bytes(conn: &mut PgConnection, owner: Option<i64>) -> AppResult<i64> {
    #[derive(QueryableByName)]
    struct Sum {
        #[diesel(sql_type = BigInt)]
        bytes: i64,
    }
    const SUM: &str = "SELECT COALESCE(SUM(size + COALESCE(thumbnail_size, 0)), 0)::bigint \
                       AS bytes FROM media";
    let sum: Sum = match owner {
        // The owner's rows through `media_owner`.
        Some(owner) => diesel::sql_query(format!("{SUM} WHERE owner_id = $1"))
            .bind::<BigInt, _>(owner)
            .get_result(conn)?,
        None => diesel::sql_query(SUM).get_result(conn)?,
    };
    Ok(sum.bytes)
}

/// The upload `id` when `user` may read it: its uploader, a member of a conversation in which a
/// live message references it, or (`admin`) anyone when a message references it.
pub(crate) fn readable(
    conn: &mut PgConnection,
    id: &str,
    user: i64,
    admin: bool,
) -> AppResult<Option<MediaRow>> {
    let row = diesel::sql_query(
        "SELECT md.* FROM media md WHERE md.id = $1 AND (md.owner_id = $2 OR EXISTS ( \
             SELECT 1 FROM messages m \
             WHERE m.media_id = md.id AND m.deleted_at IS NULL AND ($3 OR EXISTS ( \
                 SELECT 1 FROM conversation_members cm \
                 WHERE cm.conversation_id = m.conversation_id AND cm.user_id = $2))))",
    )
    .bind::<Text, _>(id)
    .bind::<BigInt, _>(user)
    .bind::<diesel::sql_types::Bool, _>(admin)
    .get_result::<MediaRow>(conn)
    .optional()?;
    Ok(row)
}

/// The upload `id`, whoever may read it (signed links were checked already).
pub(crate) fn by_id(conn: &mut PgConnection, id: &str) -> AppResult<Option<MediaRow>> {
    Ok(media::table
        .find(id)
        .select(MediaRow::as_select())
        .first(conn)
        .optional()?)
}

/// Removes up to `limit` uploads that no live message references, that are older than `grace`
/// seconds and whose last referencing message (if any) was deleted longer than `grace` ago.
/// Returns the removed rows (their objects are the caller's to delete).
pub(crate) fn collect_unreferenced(
    conn: &mut PgConnection,
    grace_secs: i64,
    limit: i64,
) -> AppResult<Vec<MediaRow>> {
    Ok(diesel::sql_query(
        "DELETE FROM media WHERE id IN ( \
             SELECT md.id FROM media md \
             WHERE md.created_at < now() - make_interval(secs => $1) \
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.media_id = md.id \
                   AND (m.deleted_at IS NULL \
                        OR m.deleted_at > now() - make_interval(secs => $1))) \
             ORDER BY md.created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING *",
    )
    .bind::<diesel::sql_types::Double, _>(grace_secs as f64)
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// Which of `ids` have a row.
pub(crate) fn existing(conn: &mut PgConnection, ids: &[String]) -> AppResult<Vec<String>> {
    Ok(media::table
        .filter(media::id.eq_any(ids))
        .select(media::id)
        .load(conn)?)
}
