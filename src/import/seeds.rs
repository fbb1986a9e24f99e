//! What each legacy backend's collections hold, and how each document becomes Switchboard rows.
//! Field names follow the backends' Mongoose models; where a backend wrote two naming styles
//! (seed 003), both are read.

use super::ejson::{field, flag, id_field, id_ref, object_id_time, text, time};
use super::{Doc, Importer, Stage};
use crate::auth::{normalize_email, otp::normalize_phone};
use crate::db::schema::{
    call_participants, calls, chat_requests, contacts, conversations, device_sessions, users,
};
use crate::db::{conversations as convs, support};
use crate::error::{AppError, AppResult};
use crate::legacy::{Kind, Source};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The stages of a legacy backend's import, in order.
pub(crate) fn stages(source: Source) -> &'static [Stage] {
    match source {
        Source::Seed000 => &[
            Stage {
                collection: "users",
                run: plain_users,
            },
            Stage {
                collection: "messages",
                run: messages,
            },
        ],
        Source::Seed002 => &[
            Stage {
                collection: "users",
                run: plain_users,
            },
            Stage {
                collection: "astrologers",
                run: astrologers,
            },
            Stage {
                collection: "admins",
                run: admins,
            },
            Stage {
                collection: "directconversations",
                run: conversations_002,
            },
            Stage {
                collection: "directmessages",
                run: messages,
            },
            Stage {
                collection: "calls",
                run: calls_002,
            },
        ],
        Source::Seed003 => &[
            Stage {
                collection: "users",
                run: plain_users,
            },
            Stage {
                collection: "sessions",
                run: sessions,
            },
            Stage {
                collection: "conversations",
                run: conversations_003,
            },
            Stage {
                collection: "messages",
                run: messages,
            },
            Stage {
                collection: "chatrequests",
                run: chat_requests_003,
            },
            Stage {
                collection: "contacts",
                run: contacts_003,
            },
        ],
    }
}

/// The document's creation time: `createdAt`, else its ObjectId's time, else now.
fn created(doc: &Doc) -> DateTime<Utc> {
    time(&doc.fields, &["createdAt", "created_at", "timestamp"])
        .or_else(|| object_id_time(&doc.id))
        .unwrap_or_else(Utc::now)
}

fn updated(doc: &Doc) -> DateTime<Utc> {
    time(&doc.fields, &["updatedAt", "updated_at"]).unwrap_or_else(|| created(doc))
}

fn plain_users(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    user_collection(imp, conn, path, "users", None)
}

fn astrologers(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    user_collection(imp, conn, path, "astrologers", Some("astrologer"))
}

fn admins(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    user_collection(imp, conn, path, "admins", Some("admin"))
}

/// Strings of a field that is a list of strings or one string.
fn strings(doc: &Doc, keys: &[&str]) -> Vec<String> {
    match field(&doc.fields, keys) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_owned()],
        _ => Vec::new(),
    }
}

fn user_collection(
    imp: &mut Importer,
    conn: &mut PgConnection,
    path: &Path,
    collection: &str,
    role: Option<&'static str>,
) -> AppResult<()> {
    imp.each_doc(conn, path, collection, |imp, conn, doc| {
        if imp.users.contains_key(&doc.id) {
            imp.report.counts(collection).unchanged += 1;
            return Ok(());
        }
        let f = &doc.fields;
        let mut notes = Vec::new();
        let phone = text(f, &["phone", "phoneNumber", "mobile"]).and_then(|raw| {
            normalize_phone(&raw)
                .map_err(|_| notes.push(format!("phone {raw:?} is not a usable number: left out")))
                .ok()
        });
        let email = text(f, &["email"]).and_then(|raw| {
            normalize_email(&raw)
                .map_err(|_| notes.push(format!("e-mail {raw:?} is not valid: left out")))
                .ok()
        });
        // The same person exported twice (or already here): one account, both ids.
        let existing: Option<i64> = match (&phone, &email) {
            (Some(p), _) => users::table
                .filter(users::phone.eq(p))
                .select(users::id)
                .first(conn)
                .optional()?,
            _ => None,
        };
        let existing = match (existing, &email) {
            (None, Some(e)) => users::table
                .filter(users::email.eq(e))
                .select(users::id)
                .first(conn)
                .optional()?,
            (found, _) => found,
        };
        if let Some(id) = existing {
            imp.map(conn, Kind::User, &doc.id, id)?;
            imp.report.counts(collection).imported += 1;
            imp.report.repaired(
                collection,
                doc.line,
                Some(&doc.id),
                format!("same phone or e-mail as user {id}: imported as that user"),
            );
            return Ok(());
        }
        let name = text(f, &["name", "fullName", "username", "displayName"])
            .or_else(|| phone.clone())
            .or_else(|| email.clone())
            .unwrap_or_else(|| "User".to_owned());
        let name: String = name.trim().chars().take(200).collect();
        let avatar = text(f, &["avatar", "avatarUrl", "profilePicture", "photo"]);
        let password = text(f, &["password", "passwordHash", "hash"]);
        let password = match password {
            Some(p) if p.starts_with("$2") => Some(p),
            Some(_) => {
                notes.push("password is not a bcrypt hash: left out (OTP or reset)".into());
                None
            }
            None => None,
        };
        let mut roles = strings(&doc, &["roles", "role"]);
        if let Some(r) = role {
            roles.push(r.to_owned());
        }
        roles.sort();
        roles.dedup();
        let team_roles = strings(&doc, &["teamRoles", "teamRole", "team"]);
        let created_at = created(&doc);
        let updated_at = updated(&doc);
        let banned = flag(f, &["isBanned", "banned", "isBlocked"]).then_some(updated_at);
        let last_seen = time(f, &["lastSeen", "lastSeenAt", "lastActive", "lastActiveAt"]);
        let id: i64 = diesel::insert_into(users::table)
            .values((
                users::name.eq(&name),
                users::phone.eq(&phone),
                users::email.eq(&email),
                users::avatar_url.eq(&avatar),
                users::password_hash.eq(&password),
                users::roles.eq(&roles),
                users::team_roles.eq(&team_roles),
                users::banned_at.eq(banned),
                users::ban_reason.eq(banned.map(|_| "banned before import")),
                users::last_seen_at.eq(last_seen),
                users::created_at.eq(created_at),
                users::updated_at.eq(updated_at),
                users::legacy_source.eq(imp.source.as_str()),
            ))
            .returning(users::id)
            .get_result(conn)?;
        imp.map(conn, Kind::User, &doc.id, id)?;
        imp.report.counts(collection).imported += 1;
        for note in notes {
            imp.report
                .repaired(collection, doc.line, Some(&doc.id), note);
        }
        Ok(())
    })
}

/// The imported user a document names in one of `keys` (as its `role`), or `None` once the
/// document is reported as skipped.
fn named_user(
    imp: &mut Importer,
    collection: &str,
    doc: &Doc,
    keys: &[&str],
    role: &str,
) -> Option<i64> {
    let Some(legacy) = id_field(&doc.fields, keys) else {
        let why = format!("names no {role}");
        imp.report.skip(collection, doc.line, Some(&doc.id), why);
        return None;
    };
    let found = imp.users.get(&legacy).copied();
    if found.is_none() {
        let why = format!("{role} {legacy} was not imported");
        imp.report.skip(collection, doc.line, Some(&doc.id), why);
    }
    found
}

fn sessions(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    const C: &str = "sessions";
    imp.each_doc(conn, path, C, |imp, conn, doc| {
        let f = &doc.fields;
        let Some(user) = named_user(imp, C, &doc, &["userId", "user", "owner"], "user") else {
            return Ok(());
        };
        let sid = text(f, &["sessionId"]).unwrap_or_else(|| doc.id.clone());
        let created_at = created(&doc);
        let last_used = time(
            f,
            &["lastActiveAt", "lastUsedAt", "lastActive", "updatedAt"],
        )
        .unwrap_or(created_at);
        let active = match f.get("isActive") {
            Some(Value::Bool(b)) => *b,
            _ => !flag(f, &["revoked", "isRevoked"]),
        };
        let inserted = diesel::insert_into(device_sessions::table)
            .values((
                device_sessions::id.eq(&sid),
                device_sessions::user_id.eq(user),
                device_sessions::device_name.eq(text(f, &["deviceName", "device"])),
                device_sessions::user_agent.eq(text(f, &["userAgent"])),
                device_sessions::ip.eq(text(f, &["ip", "ipAddress"])),
                device_sessions::created_at.eq(created_at),
                device_sessions::last_used_at.eq(last_used),
                device_sessions::revoked_at.eq((!active).then_some(last_used)),
                device_sessions::revoked_reason.eq((!active).then_some("signed out before import")),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        if inserted == 1 {
            imp.report.counts(C).imported += 1;
        } else {
            imp.report.counts(C).unchanged += 1;
        }
        Ok(())
    })
}

/// Known users among legacy references; the unknown ones are returned apart.
fn known(imp: &Importer, refs: &[String]) -> (Vec<i64>, Vec<String>) {
    let mut ids = Vec::new();
    let mut missing = Vec::new();
    for r in refs {
        match imp.users.get(r) {
            Some(id) => ids.push(*id),
            None => missing.push(r.clone()),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, missing)
}

/// Receipt cursors of a seed 003 conversation: `deliveredUpTo`/`readUpTo` maps user → time.
fn cursor_maps(imp: &mut Importer, conv: i64, doc: &Doc) {
    let map_of = |key: &str| -> HashMap<String, DateTime<Utc>> {
        match doc.fields.get(key) {
            Some(Value::Object(m)) => m
                .iter()
                .filter_map(|(user, v)| {
                    let t = match v {
                        Value::String(s) => DateTime::parse_from_rfc3339(s)
                            .ok()
                            .map(|d| d.with_timezone(&Utc)),
                        Value::Number(n) => {
                            n.as_i64().and_then(DateTime::<Utc>::from_timestamp_millis)
                        }
                        _ => None,
                    }?;
                    Some((user.clone(), t))
                })
                .collect(),
            _ => HashMap::new(),
        }
    };
    let delivered = map_of("deliveredUpTo");
    let read = map_of("readUpTo");
    let mut people: Vec<&String> = delivered.keys().chain(read.keys()).collect();
    people.sort();
    people.dedup();
    for legacy in people {
        if let Some(&user) = imp.users.get(legacy) {
            imp.receipt(
                conv,
                user,
                delivered.get(legacy).copied(),
                read.get(legacy).copied(),
            );
        }
    }
}

fn conversations_003(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    const C: &str = "conversations";
    imp.each_doc(conn, path, C, |imp, conn, doc| {
        let f = &doc.fields;
        let refs: Vec<String> = ["participants", "members"]
            .iter()
            .filter_map(|k| f.get(*k).and_then(Value::as_array))
            .flatten()
            .filter_map(id_ref)
            .collect();
        let (members, missing) = known(imp, &refs);
        let kind = text(f, &["type", "kind"]).map(|t| t.to_ascii_lowercase());
        let group = match kind.as_deref() {
            Some("group") => true,
            Some("direct" | "dm" | "private") => false,
            _ => flag(f, &["isGroup"]) || members.len() + missing.len() > 2,
        };
        if let Some(&conv) = imp.conversations.get(&doc.id) {
            if group && !members.is_empty() {
                convs::add_members(conn, conv, &members)?;
            }
            cursor_maps(imp, conv, &doc);
            imp.report.counts(C).unchanged += 1;
            return Ok(());
        }
        let shape = if group {
            let creator = id_field(f, &["createdBy", "owner", "admin"])
                .and_then(|c| imp.users.get(&c).copied())
                .filter(|c| members.contains(c));
            let title = text(f, &["name", "title", "groupName"]);
            Shape::Group(creator, title)
        } else {
            Shape::Direct
        };
        let Some(conv) = open_conversation(imp, conn, C, &doc, shape, &members, &missing)? else {
            return Ok(());
        };
        imp.map(conn, Kind::Conversation, &doc.id, conv)?;
        imp.report.counts(C).imported += 1;
        if !missing.is_empty() {
            imp.report.repaired(
                C,
                doc.line,
                Some(&doc.id),
                format!("members not imported: {}", missing.join(", ")),
            );
        }
        cursor_maps(imp, conv, &doc);
        Ok(())
    })
}

/// The direct conversation of two imported users, created with both memberships in one
/// statement when the pair has none (the unique participant key decides), starting `at`.
fn direct(conn: &mut PgConnection, a: i64, b: i64, at: DateTime<Utc>) -> AppResult<i64> {
    use diesel::sql_types::{BigInt, Text, Timestamptz};
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let row: Id = diesel::sql_query(
        "WITH c AS (
           INSERT INTO conversations (kind, participant_key, created_by, created_at, updated_at)
           VALUES ('direct', $1, $2, $4, $4)
           ON CONFLICT (participant_key) DO UPDATE SET participant_key = EXCLUDED.participant_key
           RETURNING id),
         m AS (
           INSERT INTO conversation_members (conversation_id, user_id, joined_at)
           SELECT c.id, u, $4 FROM c, unnest(ARRAY[$2, $3]::bigint[]) AS u
           ON CONFLICT DO NOTHING)
         SELECT id FROM c",
    )
    .bind::<Text, _>(convs::participant_key(a, b))
    .bind::<BigInt, _>(a)
    .bind::<BigInt, _>(b)
    .bind::<Timestamptz, _>(at)
    .get_result(conn)?;
    Ok(row.id)
}

/// A group of imported users owned by `creator`, created with its memberships in one statement.
fn create_group(
    conn: &mut PgConnection,
    creator: i64,
    title: &str,
    members: &[i64],
    at: DateTime<Utc>,
) -> AppResult<i64> {
    use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let row: Id = diesel::sql_query(
        "WITH c AS (
           INSERT INTO conversations (kind, title, created_by, created_at, updated_at)
           VALUES ('group', $1, $2, $4, $4) RETURNING id),
         m AS (
           INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
           SELECT c.id, u, CASE WHEN u = $2 THEN 'owner' ELSE 'member' END, $4
           FROM c, unnest(array_append($3, $2)) AS u
           ON CONFLICT DO NOTHING)
         SELECT id FROM c",
    )
    .bind::<Text, _>(title)
    .bind::<BigInt, _>(creator)
    .bind::<Array<BigInt>, _>(members)
    .bind::<Timestamptz, _>(at)
    .get_result(conn)?;
    Ok(row.id)
}

/// What kind of conversation a legacy one becomes: direct, or a group with its creator (when
/// known and a member) and title.
enum Shape {
    Direct,
    Group(Option<i64>, Option<String>),
}

/// Creates the conversation of the imported `members` (`missing`: legacy members that were not
/// imported), or reports why it cannot and gives `None`.
fn open_conversation(
    imp: &mut Importer,
    conn: &mut PgConnection,
    collection: &str,
    doc: &Doc,
    shape: Shape,
    members: &[i64],
    missing: &[String],
) -> AppResult<Option<i64>> {
    let why = match (shape, members) {
        (Shape::Group(creator, title), [first, ..]) => {
            let title: String = title
                .as_deref()
                .unwrap_or("Group")
                .chars()
                .take(200)
                .collect();
            let creator = creator.unwrap_or(*first);
            return Ok(Some(create_group(
                conn,
                creator,
                &title,
                members,
                created(doc),
            )?));
        }
        (Shape::Group(..), []) => "no member of this group was imported".to_owned(),
        (Shape::Direct, [a, b]) => return Ok(Some(direct(conn, *a, *b, created(doc))?)),
        (Shape::Direct, _) => format!(
            "a direct conversation needs two imported users (found {}; missing {})",
            members.len(),
            missing.join(", ")
        ),
    };
    imp.report.skip(collection, doc.line, Some(&doc.id), why);
    Ok(None)
}

/// A conversation created by the import starts when its legacy one did.
fn backdate(conn: &mut PgConnection, conv: i64, at: DateTime<Utc>) -> AppResult<()> {
    diesel::update(
        conversations::table
            .find(conv)
            .filter(conversations::created_at.gt(at)),
    )
    .set(conversations::created_at.eq(at))
    .execute(conn)?;
    Ok(())
}

fn conversations_002(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    const C: &str = "directconversations";
    imp.each_doc(conn, path, C, |imp, conn, doc| {
        if imp.conversations.contains_key(&doc.id) {
            imp.report.counts(C).unchanged += 1;
            return Ok(());
        }
        let f = &doc.fields;
        let parties: Vec<(String, String)> = f
            .get("participants")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let id = id_ref(p)?;
                let kind = p
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("user")
                    .to_owned();
                Some((id, kind))
            })
            .collect();
        let refs: Vec<String> = parties.iter().map(|p| p.0.clone()).collect();
        let (members, missing) = known(imp, &refs);
        let kind = text(f, &["conversationType"]).unwrap_or_default();
        let conv = match kind.as_str() {
            "admin_astrologer" => {
                let staff = parties
                    .iter()
                    .find(|(_, k)| k != "admin")
                    .and_then(|(id, _)| imp.users.get(id).copied());
                let Some(staff) = staff else {
                    imp.report.skip(
                        C,
                        doc.line,
                        Some(&doc.id),
                        "the astrologer of this admin conversation was not imported",
                    );
                    return Ok(());
                };
                match support::sync_one(conn, staff) {
                    Ok((conv, _)) => conv.id,
                    Err(AppError::Validation { message, .. }) => {
                        imp.report.skip(C, doc.line, Some(&doc.id), message);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
            "group" => {
                let title = text(f, &["name", "title"]);
                let shape = Shape::Group(None, title);
                match open_conversation(imp, conn, C, &doc, shape, &members, &missing)? {
                    Some(conv) => conv,
                    None => return Ok(()),
                }
            }
            _ => match open_conversation(imp, conn, C, &doc, Shape::Direct, &members, &missing)? {
                Some(conv) => conv,
                None => return Ok(()),
            },
        };
        if let Some(context) = text(f, &["contextType"]).filter(|c| {
            ["consultation", "service_request", "support", "general"].contains(&c.as_str())
        }) {
            if kind != "admin_astrologer" {
                let id = text(f, &["contextId"]).unwrap_or_default();
                convs::set_context(conn, conv, &context, &id)?;
            }
        }
        backdate(conn, conv, created(&doc))?;
        imp.map(conn, Kind::Conversation, &doc.id, conv)?;
        imp.report.counts(C).imported += 1;
        if !missing.is_empty() {
            imp.report.repaired(
                C,
                doc.line,
                Some(&doc.id),
                format!("participants not imported: {}", missing.join(", ")),
            );
        }
        Ok(())
    })
}

diesel::table! {
    /// Messages staged by an import (a temporary table of the importing connection).
    import_messages (legacy_id) {
        legacy_id -> Text,
        conversation_id -> Int8,
        sender_id -> Int8,
        kind -> Text,
        content -> Text,
        media_url -> Nullable<Text>,
        metadata -> Nullable<Jsonb>,
        reply_legacy -> Nullable<Text>,
        client_message_id -> Nullable<Text>,
        created_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        deleted_by -> Nullable<Int8>,
        sender_type -> Nullable<Text>,
        recipient_id -> Nullable<Int8>,
        recipient_type -> Nullable<Text>,
    }
}

#[derive(Insertable)]
#[diesel(table_name = import_messages, treat_none_as_default_value = false)]
struct Staged {
    legacy_id: String,
    conversation_id: i64,
    sender_id: i64,
    kind: String,
    content: String,
    media_url: Option<String>,
    metadata: Option<Value>,
    reply_legacy: Option<String>,
    client_message_id: Option<String>,
    created_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    deleted_by: Option<i64>,
    sender_type: Option<String>,
    recipient_id: Option<i64>,
    recipient_type: Option<String>,
}

const STAGE_ROWS: usize = 10_000;

const STAGING_TABLE: &str = "CREATE TEMP TABLE import_messages (
    legacy_id TEXT NOT NULL, conversation_id BIGINT NOT NULL, sender_id BIGINT NOT NULL,
    kind TEXT NOT NULL, content TEXT NOT NULL, media_url TEXT, metadata JSONB, reply_legacy TEXT,
    client_message_id TEXT, created_at TIMESTAMPTZ NOT NULL, edited_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ, deleted_by BIGINT, sender_type TEXT, recipient_id BIGINT,
    recipient_type TEXT)";

/// A client's idempotency key stays only where it is unique for its sender.
const UNIQUE_CLIENT_KEYS: &str = "UPDATE import_messages s SET client_message_id = NULL
    WHERE s.client_message_id IS NOT NULL AND (
      EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = s.sender_id
              AND m.client_message_id = s.client_message_id
              AND m.legacy_id IS DISTINCT FROM s.legacy_id)
      OR EXISTS (SELECT 1 FROM import_messages o WHERE o.sender_id = s.sender_id
              AND o.client_message_id = s.client_message_id AND o.legacy_id < s.legacy_id))";

/// Imported messages edited or deleted since they were imported: brought up to date, each
/// taking the next change number of its conversation (so `sync` hands the change out).
const APPLY_CHANGES: &str = "WITH changed AS (
      SELECT m.id, m.conversation_id, s.content, s.edited_at, s.deleted_at, s.deleted_by,
             row_number() OVER (PARTITION BY m.conversation_id ORDER BY m.seq) AS rn
      FROM messages m JOIN import_messages s ON s.legacy_id = m.legacy_id
      WHERE (m.content, m.edited_at, m.deleted_at)
            IS DISTINCT FROM (s.content, s.edited_at, s.deleted_at)),
    counts AS (SELECT conversation_id, count(*) AS n FROM changed GROUP BY conversation_id),
    bump AS (
      UPDATE conversations c SET last_change = c.last_change + k.n, updated_at = now()
      FROM counts k WHERE c.id = k.conversation_id
      RETURNING c.id, c.last_change - k.n AS base)
    UPDATE messages m SET content = ch.content, edited_at = ch.edited_at,
        deleted_at = ch.deleted_at, deleted_by = ch.deleted_by, change_seq = b.base + ch.rn
    FROM changed ch JOIN bump b ON b.id = ch.conversation_id
    WHERE m.id = ch.id";

/// New messages: numbered per conversation by creation time (then legacy id) after what the
/// conversation holds; the conversation's counters move past them in the same statement.
const INSERT_NEW: &str = "WITH fresh AS (
      SELECT s.*, row_number() OVER (PARTITION BY s.conversation_id
                                     ORDER BY s.created_at, s.legacy_id) AS rn
      FROM import_messages s
      WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.legacy_id = s.legacy_id)),
    counts AS (SELECT conversation_id, count(*) AS n, max(created_at) AS last_at
               FROM fresh GROUP BY conversation_id),
    bump AS (
      UPDATE conversations c SET last_seq = c.last_seq + k.n, last_change = c.last_change + k.n,
          last_message_at = GREATEST(c.last_message_at, k.last_at), updated_at = now()
      FROM counts k WHERE c.id = k.conversation_id
      RETURNING c.id, c.last_seq - k.n AS seq_base, c.last_change - k.n AS change_base)
    INSERT INTO messages (conversation_id, seq, change_seq, sender_id, kind, content, media_url,
        metadata, client_message_id, created_at, edited_at, deleted_at, deleted_by, sender_type,
        recipient_id, recipient_type, legacy_id)
    SELECT f.conversation_id, b.seq_base + f.rn, b.change_base + f.rn, f.sender_id, f.kind,
        f.content, f.media_url, f.metadata, f.client_message_id, f.created_at, f.edited_at,
        f.deleted_at, f.deleted_by, f.sender_type, f.recipient_id, f.recipient_type, f.legacy_id
    FROM fresh f JOIN bump b ON b.id = f.conversation_id";

/// Replies point at the message they answer, once both are imported.
const LINK_REPLIES: &str = "UPDATE messages m SET reply_to_id = r.id
    FROM import_messages s JOIN messages r ON r.legacy_id = s.reply_legacy
    WHERE s.reply_legacy IS NOT NULL AND m.legacy_id = s.legacy_id
      AND m.reply_to_id IS DISTINCT FROM r.id";

/// Message kinds Switchboard stores; others are mapped or become `text`.
fn message_kind(raw: Option<&str>) -> (String, bool) {
    let raw = raw.unwrap_or("text").to_ascii_lowercase();
    let kind = match raw.as_str() {
        "text" | "image" | "audio" | "file" | "system" | "voice_call" | "video_call" => raw,
        "voice" | "voice_note" | "voicenote" => "audio".into(),
        "video" | "document" | "pdf" | "attachment" => "file".into(),
        "photo" | "picture" => "image".into(),
        _ => return ("text".into(), true),
    };
    (kind, false)
}

fn party_kind(raw: Option<String>) -> Option<String> {
    raw.filter(|k| ["user", "astrologer", "admin"].contains(&k.as_str()))
}

/// Where a message goes, or why it cannot be imported.
fn message_conversation(
    imp: &mut Importer,
    conn: &mut PgConnection,
    doc: &Doc,
    sender: i64,
    cache: &mut HashMap<String, Result<i64, String>>,
) -> AppResult<Result<i64, String>> {
    let f = &doc.fields;
    if imp.source == Source::Seed000 {
        let Some(chat) = text(f, &["chatId"]) else {
            return Ok(Err("message has no chatId".into()));
        };
        if let Some(&id) = imp.conversations.get(&chat) {
            return Ok(Ok(id));
        }
        if let Some(found) = cache.get(&chat) {
            return Ok(found.clone());
        }
        let found = seed000_chat(imp, conn, &chat)?;
        cache.insert(chat, found.clone());
        return Ok(found);
    }
    let conv = id_field(f, &["conversationId", "conversation", "chat", "chatId"]);
    if let Some(conv) = conv {
        return Ok(match imp.conversations.get(&conv) {
            Some(&id) => Ok(id),
            None => Err(format!("conversation {conv} was not imported")),
        });
    }
    // Seed 003's mobile style may name only the two parties.
    let Some(to) = id_field(f, &["to", "recipient", "recipientId"]) else {
        return Ok(Err("message names no conversation".into()));
    };
    let Some(&to_user) = imp.users.get(&to) else {
        return Ok(Err(format!("recipient {to} was not imported")));
    };
    let key = format!("pair:{}", convs::participant_key(sender, to_user));
    if let Some(found) = cache.get(&key) {
        return Ok(found.clone());
    }
    let found = if sender == to_user {
        Err("message to oneself with no conversation".into())
    } else {
        Ok(convs::get_or_create_direct(conn, sender, to_user)?.0.id)
    };
    cache.insert(key, found.clone());
    Ok(found)
}

/// Seed 000's chat ids: `dm_<a>_<b>` (either order) or a team chat named by its team role.
fn seed000_chat(
    imp: &mut Importer,
    conn: &mut PgConnection,
    chat: &str,
) -> AppResult<Result<i64, String>> {
    if let Some(pair) = chat.strip_prefix("dm_") {
        let Some((a, b)) = pair.split_once('_') else {
            return Ok(Err(format!("chat id {chat:?} is not dm_<user>_<user>")));
        };
        let (Some(&ua), Some(&ub)) = (imp.users.get(a), imp.users.get(b)) else {
            return Ok(Err(format!(
                "direct chat {chat}: its users were not exported"
            )));
        };
        if ua == ub {
            return Ok(Err(format!("direct chat {chat} names one user twice")));
        }
        let conv = convs::get_or_create_direct(conn, ua, ub)?.0.id;
        imp.map(conn, Kind::Conversation, chat, conv)?;
        imp.map(conn, Kind::Conversation, &format!("dm_{b}_{a}"), conv)?;
        return Ok(Ok(conv));
    }
    let role = chat.strip_prefix("team_").unwrap_or(chat);
    let valid = !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Ok(Err(format!(
            "chat id {chat:?} is neither dm_<a>_<b> nor a team"
        )));
    }
    let (conv, _, _) = convs::sync_team(conn, role)?;
    imp.map(conn, Kind::Conversation, chat, conv.id)?;
    Ok(Ok(conv.id))
}

fn messages(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    let collection: &'static str = match imp.source {
        Source::Seed002 => "directmessages",
        _ => "messages",
    };
    diesel::sql_query("DROP TABLE IF EXISTS pg_temp.import_messages").execute(conn)?;
    diesel::sql_query(STAGING_TABLE).execute(conn)?;
    let mut batch: Vec<Staged> = Vec::with_capacity(STAGE_ROWS);
    let mut cache: HashMap<String, Result<i64, String>> = HashMap::new();
    let mut staged: u64 = 0;
    imp.each_doc(conn, path, collection, |imp, conn, doc| {
        let f = &doc.fields;
        let senders = ["userId", "senderId", "sender", "from", "author"];
        let Some(sender) = named_user(imp, collection, &doc, &senders, "sender") else {
            return Ok(());
        };
        let conv = match message_conversation(imp, conn, &doc, sender, &mut cache)? {
            Ok(c) => c,
            Err(why) => {
                imp.report.skip(collection, doc.line, Some(&doc.id), why);
                return Ok(());
            }
        };
        let (kind, odd_kind) = message_kind(text(f, &["type", "messageType", "kind"]).as_deref());
        if odd_kind {
            imp.report.repaired(
                collection,
                doc.line,
                Some(&doc.id),
                "unknown message type: imported as text",
            );
        }
        let created_at = created(&doc);
        let updated_at = updated(&doc);
        let edited_at = time(f, &["editedAt"])
            .or_else(|| flag(f, &["edited", "isEdited"]).then_some(updated_at));
        let deleted = flag(f, &["deleted", "isDeleted"]) || f.contains_key("deletedAt");
        let deleted_at = time(f, &["deletedAt"]).or_else(|| deleted.then_some(updated_at));
        let content = text(f, &["content", "text", "body", "message"]).unwrap_or_default();
        let media_url = text(f, &["mediaUrl", "fileUrl", "url", "imageUrl"]);
        let metadata = match f.get("metadata") {
            Some(Value::Object(m)) if !m.is_empty() => Some(Value::Object(m.clone())),
            _ => None,
        };
        let recipient_id = id_field(f, &["recipientId"]).and_then(|r| imp.users.get(&r).copied());
        if imp.source == Source::Seed002 {
            if let Some(r) = recipient_id {
                let status = text(f, &["status"]).unwrap_or_default();
                if status == "delivered" || status == "read" {
                    let read = (status == "read")
                        .then(|| time(f, &["readAt"]).unwrap_or(created_at).max(created_at));
                    imp.receipt(conv, r, Some(created_at), read.map(|_| created_at));
                }
            }
        }
        batch.push(Staged {
            legacy_id: doc.id.clone(),
            conversation_id: conv,
            sender_id: sender,
            kind,
            content,
            media_url,
            metadata,
            reply_legacy: id_field(f, &["replyTo", "replyToId"]),
            client_message_id: text(f, &["clientMessageId", "clientId", "tempId"])
                .filter(|k| k.len() <= 200),
            created_at,
            edited_at,
            deleted_at,
            deleted_by: deleted_at.map(|_| sender),
            sender_type: party_kind(text(f, &["senderType"])),
            recipient_id,
            recipient_type: party_kind(text(f, &["recipientType"])),
        });
        staged += 1;
        if batch.len() >= STAGE_ROWS {
            diesel::copy_from(import_messages::table)
                .from_insertable(std::mem::take(&mut batch))
                .execute(conn)?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        diesel::copy_from(import_messages::table)
            .from_insertable(batch)
            .execute(conn)?;
    }
    diesel::sql_query("CREATE INDEX ON import_messages (legacy_id)").execute(conn)?;
    diesel::sql_query("CREATE INDEX ON import_messages (sender_id, client_message_id)")
        .execute(conn)?;
    diesel::sql_query("ANALYZE import_messages").execute(conn)?;
    diesel::sql_query(UNIQUE_CLIENT_KEYS).execute(conn)?;
    let updated = diesel::sql_query(APPLY_CHANGES).execute(conn)? as u64;
    let inserted = diesel::sql_query(INSERT_NEW).execute(conn)? as u64;
    diesel::sql_query(LINK_REPLIES).execute(conn)?;
    diesel::sql_query("DROP TABLE import_messages").execute(conn)?;
    let counts = imp.report.counts(collection);
    counts.imported += inserted;
    counts.updated += updated;
    counts.unchanged += staged.saturating_sub(inserted + updated);
    Ok(())
}

fn calls_002(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    const C: &str = "calls";
    imp.each_doc(conn, path, C, |imp, conn, doc| {
        let exists: bool =
            diesel::select(diesel::dsl::exists(calls::table.find(&doc.id))).get_result(conn)?;
        if exists {
            imp.report.counts(C).unchanged += 1;
            return Ok(());
        }
        let f = &doc.fields;
        let caller = id_field(f, &["callerId", "caller"]);
        let callee = id_field(f, &["calleeId", "callee"]);
        let (Some(caller), Some(callee)) = (caller, callee) else {
            imp.report
                .skip(C, doc.line, Some(&doc.id), "call names no caller or callee");
            return Ok(());
        };
        let (Some(&caller_id), Some(&callee_id)) = (imp.users.get(&caller), imp.users.get(&callee))
        else {
            imp.report.skip(
                C,
                doc.line,
                Some(&doc.id),
                format!("caller {caller} or callee {callee} was not imported"),
            );
            return Ok(());
        };
        let call_type = match text(f, &["callType", "type"]).as_deref() {
            Some("video") => "video",
            _ => "audio",
        };
        let started = time(f, &["initiatedAt", "createdAt"]).unwrap_or_else(|| created(&doc));
        let answered = time(f, &["answeredAt"]);
        let mut ended = time(f, &["endedAt"]);
        let mut status = text(f, &["status"]).unwrap_or_else(|| "ended".into());
        let mut reason = text(f, &["endReason"]);
        let terminal = ["ended", "rejected", "missed", "failed", "busy", "cancelled"];
        if !terminal.contains(&status.as_str()) {
            // The old backend is frozen: a call still open in its export is over.
            imp.report.repaired(
                C,
                doc.line,
                Some(&doc.id),
                "call still open in the export: closed",
            );
            status = "failed".into();
            reason = Some("network_error".into());
            ended = Some(ended.unwrap_or_else(|| updated(&doc)));
        }
        let duration = field(f, &["duration"])
            .and_then(Value::as_i64)
            .and_then(|d| i32::try_from(d).ok());
        let conversation =
            id_field(f, &["conversationId"]).and_then(|c| imp.conversations.get(&c).copied());
        let ended_by = id_field(f, &["endedBy"]).and_then(|u| imp.users.get(&u).copied());
        diesel::insert_into(calls::table)
            .values((
                calls::id.eq(&doc.id),
                calls::kind.eq("direct"),
                calls::call_type.eq(call_type),
                calls::provider.eq("agora"),
                calls::channel_name.eq(text(f, &["agoraChannelName", "channelName"])),
                calls::caller_id.eq(caller_id),
                calls::conversation_id.eq(conversation),
                calls::status.eq(&status),
                calls::end_reason.eq(&reason),
                calls::ended_by.eq(ended_by),
                calls::created_at.eq(started),
                calls::ringing_at.eq(Some(started)),
                calls::answered_at.eq(answered),
                calls::ended_at.eq(ended),
                calls::duration_secs.eq(duration),
            ))
            .execute(conn)?;
        let callee_status = match status.as_str() {
            "rejected" => "rejected",
            "missed" => "missed",
            "busy" => "busy",
            "cancelled" => "cancelled",
            _ if answered.is_some() => "left",
            _ => "missed",
        };
        diesel::insert_into(call_participants::table)
            .values(vec![
                (
                    call_participants::call_id.eq(&doc.id),
                    call_participants::user_id.eq(caller_id),
                    call_participants::role.eq("caller"),
                    call_participants::status.eq("left"),
                    call_participants::invited_at.eq(started),
                    call_participants::joined_at.eq(Some(started)),
                    call_participants::left_at.eq(ended),
                ),
                (
                    call_participants::call_id.eq(&doc.id),
                    call_participants::user_id.eq(callee_id),
                    call_participants::role.eq("callee"),
                    call_participants::status.eq(callee_status),
                    call_participants::invited_at.eq(started),
                    call_participants::joined_at.eq(answered),
                    call_participants::left_at.eq(ended),
                ),
            ])
            .on_conflict_do_nothing()
            .execute(conn)?;
        imp.report.counts(C).imported += 1;
        Ok(())
    })
}

fn chat_requests_003(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    const C: &str = "chatrequests";
    imp.each_doc(conn, path, C, |imp, conn, doc| {
        if imp.requests.contains_key(&doc.id) {
            imp.report.counts(C).unchanged += 1;
            return Ok(());
        }
        let f = &doc.fields;
        let from = id_field(f, &["from", "sender", "fromUser", "requester"]);
        let to = id_field(f, &["to", "recipient", "toUser", "receiver"]);
        let (Some(from), Some(to)) = (from, to) else {
            imp.report.skip(
                C,
                doc.line,
                Some(&doc.id),
                "request names no sender or recipient",
            );
            return Ok(());
        };
        let (Some(&from_id), Some(&to_id)) = (imp.users.get(&from), imp.users.get(&to)) else {
            imp.report.skip(
                C,
                doc.line,
                Some(&doc.id),
                format!("{from} or {to} was not imported"),
            );
            return Ok(());
        };
        if from_id == to_id {
            imp.report
                .skip(C, doc.line, Some(&doc.id), "a request to oneself");
            return Ok(());
        }
        let status = match text(f, &["status"]).as_deref() {
            None | Some("pending") => "pending",
            Some("accepted") => "accepted",
            Some("rejected" | "declined") => "declined",
            Some("cancelled" | "canceled") => "cancelled",
            Some(other) => {
                imp.report.skip(
                    C,
                    doc.line,
                    Some(&doc.id),
                    format!("unknown status {other:?}"),
                );
                return Ok(());
            }
        };
        let created_at = created(&doc);
        let responded = (status != "pending")
            .then(|| time(f, &["respondedAt", "updatedAt"]).unwrap_or(created_at));
        let conversation = id_field(f, &["conversation", "conversationId"])
            .and_then(|c| imp.conversations.get(&c).copied());
        let id: Option<i64> = diesel::insert_into(chat_requests::table)
            .values((
                chat_requests::from_user_id.eq(from_id),
                chat_requests::to_user_id.eq(to_id),
                chat_requests::message.eq(text(f, &["message", "text", "note"])),
                chat_requests::status.eq(status),
                chat_requests::conversation_id.eq(conversation),
                chat_requests::created_at.eq(created_at),
                chat_requests::responded_at.eq(responded),
            ))
            .on_conflict_do_nothing()
            .returning(chat_requests::id)
            .get_result(conn)
            .optional()?;
        match id {
            Some(id) => {
                imp.map(conn, Kind::ChatRequest, &doc.id, id)?;
                imp.report.counts(C).imported += 1;
            }
            None => imp.report.skip(
                C,
                doc.line,
                Some(&doc.id),
                "another pending request between the same users",
            ),
        }
        Ok(())
    })
}

fn contacts_003(imp: &mut Importer, conn: &mut PgConnection, path: &Path) -> AppResult<()> {
    const C: &str = "contacts";
    imp.each_doc(conn, path, C, |imp, conn, doc| {
        let f = &doc.fields;
        let Some(owner_id) = named_user(imp, C, &doc, &["owner", "userId", "user"], "owner") else {
            return Ok(());
        };
        let Some(raw) = text(f, &["phone", "phoneNumber", "number"]) else {
            imp.report
                .skip(C, doc.line, Some(&doc.id), "contact has no phone number");
            return Ok(());
        };
        let Ok(phone) = normalize_phone(&raw) else {
            imp.report.skip(
                C,
                doc.line,
                Some(&doc.id),
                format!("{raw:?} is not a phone number"),
            );
            return Ok(());
        };
        let created_at = created(&doc);
        let inserted = diesel::insert_into(contacts::table)
            .values((
                contacts::owner_id.eq(owner_id),
                contacts::phone.eq(&phone),
                contacts::name.eq(text(f, &["name", "displayName"])),
                contacts::created_at.eq(created_at),
                contacts::updated_at.eq(updated(&doc)),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        if inserted == 1 {
            imp.report.counts(C).imported += 1;
        } else {
            imp.report.counts(C).unchanged += 1;
        }
        Ok(())
    })
}

diesel::table! {
    /// Receipt cursors staged by an import, as times.
    import_receipts (conversation_id, user_id) {
        conversation_id -> Int8,
        user_id -> Int8,
        delivered_at -> Nullable<Timestamptz>,
        read_at -> Nullable<Timestamptz>,
    }
}

/// Cursor times become seqs: the last message created at or before them. Cursors only move
/// forward; each conversation whose cursors moved takes one change number for them.
const APPLY_RECEIPTS: &str = "WITH c AS (
      SELECT r.conversation_id, r.user_id, r.delivered_at, r.read_at,
        COALESCE((SELECT max(m.seq) FROM messages m WHERE m.conversation_id = r.conversation_id
                  AND m.created_at <= r.delivered_at), 0) AS d,
        COALESCE((SELECT max(m.seq) FROM messages m WHERE m.conversation_id = r.conversation_id
                  AND m.created_at <= r.read_at), 0) AS rd
      FROM import_receipts r),
    moved AS (
      SELECT c.* FROM c JOIN conversation_members cm
        ON cm.conversation_id = c.conversation_id AND cm.user_id = c.user_id
      WHERE GREATEST(c.d, c.rd) > cm.delivered_up_to OR c.rd > cm.read_up_to),
    bump AS (
      UPDATE conversations v SET last_change = v.last_change + 1
      FROM (SELECT DISTINCT conversation_id FROM moved) x WHERE v.id = x.conversation_id
      RETURNING v.id, v.last_change)
    UPDATE conversation_members cm SET
        delivered_up_to = GREATEST(cm.delivered_up_to, mv.d, mv.rd),
        read_up_to = GREATEST(cm.read_up_to, mv.rd),
        delivered_at = CASE WHEN GREATEST(mv.d, mv.rd) > cm.delivered_up_to
                            THEN COALESCE(mv.delivered_at, mv.read_at) ELSE cm.delivered_at END,
        read_at = CASE WHEN mv.rd > cm.read_up_to THEN mv.read_at ELSE cm.read_at END,
        receipt_change = b.last_change
    FROM moved mv JOIN bump b ON b.id = mv.conversation_id
    WHERE cm.conversation_id = mv.conversation_id AND cm.user_id = mv.user_id";

#[derive(Insertable)]
#[diesel(table_name = import_receipts, treat_none_as_default_value = false)]
struct StagedReceipt {
    conversation_id: i64,
    user_id: i64,
    delivered_at: Option<DateTime<Utc>>,
    read_at: Option<DateTime<Utc>>,
}

impl Importer {
    /// Notes a member's receipt cursor times (the furthest of each kept).
    pub(crate) fn receipt(
        &mut self,
        conv: i64,
        user: i64,
        delivered: Option<DateTime<Utc>>,
        read: Option<DateTime<Utc>>,
    ) {
        let entry = self.receipts.entry((conv, user)).or_insert((None, None));
        entry.0 = entry.0.max(delivered);
        entry.1 = entry.1.max(read);
    }

    /// Moves the receipt cursors noted during the import.
    pub(crate) fn apply_receipts(&mut self, conn: &mut PgConnection) -> AppResult<()> {
        diesel::sql_query("DROP TABLE IF EXISTS pg_temp.import_receipts").execute(conn)?;
        diesel::sql_query(
            "CREATE TEMP TABLE import_receipts (conversation_id BIGINT NOT NULL, \
             user_id BIGINT NOT NULL, delivered_at TIMESTAMPTZ, read_at TIMESTAMPTZ)",
        )
        .execute(conn)?;
        let rows: Vec<StagedReceipt> = self
            .receipts
            .iter()
            .map(
                |(&(conversation_id, user_id), &(delivered_at, read_at))| StagedReceipt {
                    conversation_id,
                    user_id,
                    delivered_at,
                    read_at,
                },
            )
            .collect();
        for chunk in rows.chunks(STAGE_ROWS) {
            diesel::copy_from(import_receipts::table)
                .from_insertable(chunk)
                .execute(conn)?;
        }
        let moved = diesel::sql_query(APPLY_RECEIPTS).execute(conn)? as u64;
        diesel::sql_query("DROP TABLE import_receipts").execute(conn)?;
        let counts = self.report.counts("receipts");
        counts.read += rows.len() as u64;
        counts.imported += moved;
        counts.unchanged += (rows.len() as u64).saturating_sub(moved);
        Ok(())
    }
}
