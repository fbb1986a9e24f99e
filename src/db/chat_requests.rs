//! Chat requests (seed 003): a user asks a stranger to talk; the recipient accepts (which opens
//! their direct conversation) or declines; the sender may cancel while it is pending. At most
//! one pending request per ordered pair (a partial unique index).

use super::conversations::{self as convs, Conversation};
use super::schema::{chat_requests, users};
use crate::error::{AppError, AppResult, ErrorCode};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;

/// A chat request row.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = chat_requests, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ChatRequest {
    /// Primary key.
    pub id: i64,
    /// Who asks.
    pub from_user_id: i64,
    /// Who is asked.
    pub to_user_id: i64,
    /// Optional greeting.
    pub message: Option<String>,
    /// `pending|accepted|declined|cancelled`.
    pub status: String,
    /// The direct conversation opened by acceptance.
    pub conversation_id: Option<i64>,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Accepted, declined or cancelled.
    pub responded_at: Option<DateTime<Utc>>,
}

/// A party of a request as clients see it: a user, with the names seed 003's two apps read
/// (`_id` of the Mongoose documents both were written against, `avatar` and `avatarUrl`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ChatRequestParty)]
pub(crate) struct PartyView {
    /// User id.
    pub id: String,
    /// Same as `id`.
    #[serde(rename = "_id")]
    #[schema(required = false)]
    pub doc_id: String,
    /// Display name.
    pub name: String,
    /// Avatar.
    pub avatar_url: Option<String>,
    /// Same as `avatarUrl`.
    pub avatar: Option<String>,
}

/// A request as clients see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ChatRequest)]
pub(crate) struct ChatRequestView {
    /// Id.
    pub id: String,
    /// Same as `id` (Mongoose lean documents).
    #[serde(rename = "_id")]
    #[schema(required = false)]
    pub doc_id: String,
    /// Sender id.
    pub from_user_id: String,
    /// Recipient id.
    pub to_user_id: String,
    /// Sender.
    pub from: Option<PartyView>,
    /// Recipient.
    pub to: Option<PartyView>,
    /// Greeting.
    pub message: Option<String>,
    /// Status.
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// Conversation opened by acceptance.
    pub conversation_id: Option<String>,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Answered.
    pub responded_at: Option<DateTime<Utc>>,
}

/// The statuses of a request, in order of life.
pub const STATUSES: [&str; 4] = ["pending", "accepted", "declined", "cancelled"];

/// `status` in the OpenAPI document: one of [`STATUSES`].
fn status_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(STATUSES))
        .build()
}

/// Views of requests with both parties' names.
pub(crate) fn views(
    conn: &mut PgConnection,
    rows: &[ChatRequest],
) -> AppResult<Vec<ChatRequestView>> {
    let mut ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| [r.from_user_id, r.to_user_id])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let people: Vec<(i64, String, Option<String>)> = users::table
        .filter(users::id.eq_any(&ids))
        .select((users::id, users::name, users::avatar_url))
        .load(conn)?;
    let party = |id: i64| {
        people
            .iter()
            .find(|p| p.0 == id)
            .map(|(id, name, avatar)| PartyView {
                id: id.to_string(),
                doc_id: id.to_string(),
                name: name.clone(),
                avatar_url: avatar.clone(),
                avatar: avatar.clone(),
            })
    };
    Ok(rows
        .iter()
        .map(|r| ChatRequestView {
            id: r.id.to_string(),
            doc_id: r.id.to_string(),
            from_user_id: r.from_user_id.to_string(),
            to_user_id: r.to_user_id.to_string(),
            from: party(r.from_user_id),
            to: party(r.to_user_id),
            message: r.message.clone(),
            status: r.status.clone(),
            conversation_id: r.conversation_id.map(|c| c.to_string()),
            created_at: r.created_at,
            responded_at: r.responded_at,
        })
        .collect())
}

fn pending(conn: &mut PgConnection, from: i64, to: i64) -> AppResult<Option<ChatRequest>> {
    Ok(chat_requests::table
        .filter(chat_requests::from_user_id.eq(from))
        .filter(chat_requests::to_user_id.eq(to))
        .filter(chat_requests::status.eq("pending"))
        .select(ChatRequest::as_select())
        .first(conn)
        .optional()?)
}

/// Creates a pending request, or returns the one already pending for this pair (`false`).
/// Refused when the recipient does not exist or is banned (`not_found`) and when the two
/// already have a direct conversation (`already_connected`).
pub(crate) fn create(
    conn: &mut PgConnection,
    from: i64,
    to: i64,
    message: Option<&str>,
) -> AppResult<(ChatRequest, bool)> {
    if from == to {
        return Err(AppError::validation(
            "a chat request needs another user as recipient",
        ));
    }
    let recipient_ok: i64 = users::table
        .filter(users::id.eq(to))
        .filter(users::banned_at.is_null())
        .count()
        .get_result(conn)?;
    if recipient_ok == 0 {
        return Err(AppError::NotFound("user not found".into()));
    }
    if super::contacts::direct_between(conn, from, to)?.is_some() {
        return Err(AppError::conflict(
            ErrorCode::AlreadyConnected,
            "you already have a conversation with this user",
        ));
    }
    if let Some(existing) = pending(conn, from, to)? {
        return Ok((existing, false));
    }
    let inserted = diesel::insert_into(chat_requests::table)
        .values((
            chat_requests::from_user_id.eq(from),
            chat_requests::to_user_id.eq(to),
            chat_requests::message.eq(message),
        ))
        .returning(ChatRequest::as_returning())
        .get_result(conn);
    match inserted {
        Ok(row) => Ok((row, true)),
        // A concurrent duplicate won the partial unique index: return that one.
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
            let existing = pending(conn, from, to)?
                .ok_or_else(|| AppError::internal("pending chat request vanished"))?;
            Ok((existing, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// A user's requests: incoming and outgoing, newest first, optionally of one status.
pub(crate) fn list(
    conn: &mut PgConnection,
    user: i64,
    status: Option<&str>,
    limit: i64,
) -> AppResult<(Vec<ChatRequest>, Vec<ChatRequest>)> {
    let mut incoming = chat_requests::table
        .filter(chat_requests::to_user_id.eq(user))
        .order((chat_requests::created_at.desc(), chat_requests::id.desc()))
        .limit(limit)
        .select(ChatRequest::as_select())
        .into_boxed();
    let mut outgoing = chat_requests::table
        .filter(chat_requests::from_user_id.eq(user))
        .order((chat_requests::created_at.desc(), chat_requests::id.desc()))
        .limit(limit)
        .select(ChatRequest::as_select())
        .into_boxed();
    if let Some(s) = status {
        incoming = incoming.filter(chat_requests::status.eq(s.to_owned()));
        outgoing = outgoing.filter(chat_requests::status.eq(s.to_owned()));
    }
    Ok((incoming.load(conn)?, outgoing.load(conn)?))
}

/// What a response did.
#[derive(Debug)]
pub(crate) struct Responded {
    /// The request after the response.
    pub request: ChatRequest,
    /// The conversation (acceptance).
    pub conversation: Option<Conversation>,
    /// Whether this call changed anything (false: a repeated accept).
    pub changed: bool,
    /// Whether the direct conversation was created by this acceptance.
    pub created: bool,
}

/// How the recipient (or, for `Cancel`, the sender) answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Recipient accepts: the direct conversation is created or returned.
    Accept,
    /// Recipient declines.
    Decline,
    /// Sender withdraws.
    Cancel,
}

/// Answers a request under a row lock. Only the recipient may accept or decline, only the
/// sender may cancel (403 `forbidden` otherwise). Accepting twice returns the conversation
/// again; any other answer to a request that is no longer pending is 409 `request_not_pending`.
pub(crate) fn respond(
    conn: &mut PgConnection,
    id: i64,
    user: i64,
    answer: Answer,
) -> AppResult<Responded> {
    conn.transaction(|conn| {
        let req: ChatRequest = chat_requests::table
            .find(id)
            .select(ChatRequest::as_select())
            .for_update()
            .first(conn)
            .optional()?
            .ok_or_else(|| AppError::NotFound("chat request not found".into()))?;
        let allowed = match answer {
            Answer::Accept | Answer::Decline => req.to_user_id == user,
            Answer::Cancel => req.from_user_id == user,
        };
        if !allowed {
            return Err(AppError::Forbidden(
                match answer {
                    Answer::Cancel => "only the sender may cancel this request",
                    _ => "only the recipient may answer this request",
                }
                .into(),
            ));
        }
        if req.status != "pending" {
            if answer == Answer::Accept && req.status == "accepted" {
                let conversation = match req.conversation_id {
                    Some(c) => convs::by_id(conn, c)?,
                    None => None,
                };
                return Ok(Responded {
                    request: req,
                    conversation,
                    changed: false,
                    created: false,
                });
            }
            return Err(AppError::conflict(
                ErrorCode::RequestNotPending,
                format!("this request is already {}", req.status),
            ));
        }
        let now = Utc::now();
        let (status, conversation, created) = match answer {
            Answer::Accept => {
                let (conv, created) =
                    convs::get_or_create_direct(conn, req.from_user_id, req.to_user_id)?;
                ("accepted", Some(conv), created)
            }
            Answer::Decline => ("declined", None, false),
            Answer::Cancel => ("cancelled", None, false),
        };
        let request = diesel::update(chat_requests::table.find(id))
            .set((
                chat_requests::status.eq(status),
                chat_requests::responded_at.eq(now),
                chat_requests::conversation_id.eq(conversation.as_ref().map(|c| c.id)),
            ))
            .returning(ChatRequest::as_returning())
            .get_result(conn)?;
        Ok(Responded {
            request,
            conversation,
            changed: true,
            created,
        })
    })
}
