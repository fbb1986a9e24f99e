//! Seed 003's chat requests and contacts: `POST|GET /chat-requests`,
//! `POST /chat-requests/:id/accept|decline|cancel`, `POST /contacts/sync` and
//! `POST /contacts/start-chat`.
//!
//! Realtime events (to every device of the users concerned): `chat_request:new` (recipient),
//! `chat_request:accepted` (both, with the conversation), `chat_request:declined` (sender),
//! `chat_request:cancelled` (recipient), and `conversation:new` when acceptance or start-chat
//! creates the direct conversation.

use super::openapi::{string_enum, BodyErrors, Errors, IdInput, IdPath};
use crate::auth::otp::normalize_phone;
use crate::auth::Identity;
use crate::db::chat_requests::{self as requests, Answer, ChatRequest, ChatRequestView};
use crate::db::contacts::{self, Entry};
use crate::db::conversations::{self as convs, Conversation, ConversationView};
use crate::db::models::UserView;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::events;
use crate::realtime::protocol::opt_id_field;
use crate::state::AppState;
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

/// Registers the routes (mounted at the root and under `/api`).
pub(crate) fn routes(cfg: &mut super::Routes) {
    cfg.service(send_request)
        .service(list_requests)
        .service(accept)
        .service(decline)
        .service(cancel)
        .service(sync)
        .service(start_chat);
}

/// Longest greeting in a chat request.
pub(crate) const MAX_REQUEST_MESSAGE_CHARS: usize = 1000;

/// `POST /chat-requests` body. The sender is the token's user; `from`, `fromUserId` or `userId`
/// in the body are ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestBody {
    #[serde(
        default,
        deserialize_with = "opt_id_field",
        alias = "toUserId",
        alias = "recipientId",
        alias = "receiverId"
    )]
    #[schema(value_type = IdInput, required = true)]
    to: Option<i64>,
    /// A greeting (also `text` or `content`).
    #[serde(default, alias = "text", alias = "content")]
    #[schema(max_length = 1000)]
    message: Option<String>,
}

/// A request, and whether this call created it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestSent {
    /// Always true.
    pub success: bool,
    /// False when the pending request already existed.
    pub created: bool,
    /// The request.
    pub request: ChatRequestView,
}

/// The caller's requests.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestLists {
    /// Always true.
    pub success: bool,
    /// Sent to the caller.
    pub incoming: Vec<ChatRequestView>,
    /// Sent by the caller.
    pub outgoing: Vec<ChatRequestView>,
}

/// A request after an answer, with the conversation acceptance opened.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestAnswered {
    /// Always true.
    pub success: bool,
    /// The request.
    pub request: ChatRequestView,
    /// The direct conversation (accepted requests).
    #[schema(required = true)]
    pub conversation: Option<ConversationView>,
}

/// The registered users among synced numbers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SyncAnswer {
    /// Always true.
    pub success: bool,
    /// Registered users with these numbers (without e-mail addresses).
    pub users: Vec<UserView>,
    /// How many users.
    #[schema(value_type = i64)]
    pub matched: usize,
    /// Entries stored.
    pub stored: i64,
    /// Numbers that could not be read.
    pub invalid: Vec<String>,
}

/// The direct conversation start-chat opened.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatOpened {
    /// Always true.
    pub success: bool,
    /// False when it existed.
    pub created: bool,
    /// The conversation.
    pub conversation: ConversationView,
}

async fn request_views(
    state: &AppState,
    rows: Vec<ChatRequest>,
) -> AppResult<Vec<ChatRequestView>> {
    state.db.run(move |conn| requests::views(conn, &rows)).await
}

async fn one_view(state: &AppState, row: ChatRequest) -> AppResult<ChatRequestView> {
    request_views(state, vec![row])
        .await?
        .pop()
        .ok_or_else(|| AppError::internal("chat request view missing"))
}

/// Ask a user to chat (201 new; 200 the pending request that already exists)
#[utoipa::path(
    tag = "chat requests",
    security(("bearer" = [])),
    request_body = RequestBody,
    responses(
        (status = 200, description = "Success", body = RequestSent),
        (status = 201, description = "Success", body = RequestSent),
        BodyErrors,
    ),
)]
#[post("/chat-requests")]
async fn send_request(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<RequestBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let me = identity.user_id();
    let to = body
        .to
        .ok_or_else(|| AppError::validation("`to` (the recipient's user id) is required"))?;
    let message = body
        .message
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty());
    if message
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_REQUEST_MESSAGE_CHARS)
    {
        return Err(AppError::TooLarge(
            format!("message is longer than {MAX_REQUEST_MESSAGE_CHARS} characters").into(),
        ));
    }
    state.engine.take_send(me).await?;
    let (row, created) = state
        .db
        .run(move |conn| requests::create(conn, me, to, message.as_deref()))
        .await?;
    let view = one_view(&state, row).await?;
    if created {
        state
            .engine
            .notify_users(vec![to], events::CHAT_REQUEST_NEW, json!(view));
    }
    let mut builder = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(builder.json(RequestSent {
        success: true,
        created,
        request: view,
    }))
}

/// `GET /chat-requests?status=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only requests in this status (default all).
    #[param(nullable = false, schema_with = list_status_schema)]
    status: Option<String>,
    /// Most requests per list (default 100).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `status` of [`ListQuery`]: `all` or a request status.
fn list_status_schema() -> utoipa::openapi::Object {
    string_enum(std::iter::once("all").chain(requests::STATUSES))
}

/// The caller's incoming and outgoing requests, newest first
#[utoipa::path(
    tag = "chat requests",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, description = "Success", body = RequestLists), Errors),
)]
#[get("/chat-requests")]
async fn list_requests(
    state: web::Data<AppState>,
    identity: Identity,
    q: web::Query<ListQuery>,
) -> AppResult<HttpResponse> {
    let status = match q.status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "all") => None,
        Some(s @ ("pending" | "accepted" | "declined" | "cancelled")) => Some(s.to_owned()),
        Some(other) => {
            return Err(AppError::bad_request(
                ErrorCode::InvalidParameter,
                format!("unknown status `{other}`"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 200);
    let me = identity.user_id();
    let (incoming, outgoing) = state
        .db
        .run(move |conn| {
            let (inc, out) = requests::list(conn, me, status.as_deref(), limit)?;
            Ok((requests::views(conn, &inc)?, requests::views(conn, &out)?))
        })
        .await?;
    Ok(HttpResponse::Ok().json(RequestLists {
        success: true,
        incoming,
        outgoing,
    }))
}

async fn conversation_view(
    state: &AppState,
    conv: Conversation,
    viewer: i64,
) -> AppResult<ConversationView> {
    state
        .db
        .run(move |conn| convs::views(conn, vec![conv], viewer))
        .await?
        .pop()
        .ok_or_else(|| AppError::NotFound("conversation not found".into()))
}

async fn answer(
    state: &AppState,
    identity: &Identity,
    raw_id: &str,
    answer: Answer,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(raw_id, "request id")?;
    let me = identity.user_id();
    let done = state
        .db
        .run(move |conn| requests::respond(conn, id, me, answer))
        .await?;
    let (from, to) = (done.request.from_user_id, done.request.to_user_id);
    if done.changed && matches!(answer, Answer::Accept) {
        // Accepting opens the pair's direct conversation: they may contact each other now.
        state.db.contact_cache().invalidate_users(&[from, to]);
    }
    let view = one_view(state, done.request).await?;
    let conversation = match done.conversation {
        Some(conv) => {
            if done.created {
                state.engine.direct_created(&conv, from, to).await;
            }
            Some(conversation_view(state, conv, me).await?)
        }
        None => None,
    };
    if done.changed {
        let (audience, event) = match answer {
            Answer::Accept => (vec![from, to], events::CHAT_REQUEST_ACCEPTED),
            Answer::Decline => (vec![from], events::CHAT_REQUEST_DECLINED),
            Answer::Cancel => (vec![to], events::CHAT_REQUEST_CANCELLED),
        };
        state.engine.notify_users(
            audience,
            event,
            json!({"request": view, "conversation": conversation}),
        );
    }
    Ok(HttpResponse::Ok().json(RequestAnswered {
        success: true,
        request: view,
        conversation,
    }))
}

/// Accept (recipient): opens the direct conversation; repeating it returns it again
#[utoipa::path(
    tag = "chat requests",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = RequestAnswered), Errors),
)]
#[post("/chat-requests/{id}/accept")]
async fn accept(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    answer(&state, &identity, &path, Answer::Accept).await
}

/// Decline (recipient)
#[utoipa::path(
    tag = "chat requests",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = RequestAnswered), Errors),
)]
#[post("/chat-requests/{id}/decline")]
async fn decline(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    answer(&state, &identity, &path, Answer::Decline).await
}

/// Withdraw (sender)
#[utoipa::path(
    tag = "chat requests",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = RequestAnswered), Errors),
)]
#[post("/chat-requests/{id}/cancel")]
async fn cancel(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    answer(&state, &identity, &path, Answer::Cancel).await
}

/// A synced number: a string, or `{phone, name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PhoneItem {
    /// Just the number.
    Plain(String),
    /// Number and address-book name.
    Named {
        /// The number.
        #[serde(alias = "number", alias = "phoneNumber")]
        phone: String,
        /// The name in the address book.
        #[serde(default, alias = "displayName")]
        name: Option<String>,
    },
}

/// `POST /contacts/sync` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SyncBody {
    /// Numbers (also `contacts`, `phoneNumbers` or `numbers`); at most CONTACTS_SYNC_MAX.
    #[serde(default, alias = "contacts", alias = "phoneNumbers", alias = "numbers")]
    phones: Vec<PhoneItem>,
    /// Calling code for numbers written without one (e.g. `"44"` or `"+44"`).
    #[serde(default, alias = "defaultCountryCode")]
    #[schema(pattern = r"^\s*(\+?[1-9][0-9]{0,2})?\s*$")]
    country_code: Option<String>,
    /// Drop stored entries that are not in this list.
    #[serde(default)]
    replace: bool,
}

/// Normalises a number to E.164; a number without `+`/`00` gets `country_code` (its one
/// leading trunk `0` dropped) when one is given.
pub(crate) fn normalize_contact(raw: &str, country_code: Option<&str>) -> AppResult<String> {
    let trimmed = raw.trim();
    let international = trimmed.starts_with('+') || trimmed.starts_with("00");
    match country_code {
        Some(cc) if !international => {
            let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
            if trimmed.chars().any(|c| {
                !c.is_ascii_digit() && !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}')
            }) {
                return Err(AppError::bad_request(
                    ErrorCode::InvalidPhone,
                    "phone number has invalid characters",
                ));
            }
            let national = digits.strip_prefix('0').unwrap_or(&digits);
            normalize_phone(&format!("+{cc}{national}"))
        }
        _ => normalize_phone(trimmed),
    }
}

fn country_code(raw: Option<&str>) -> AppResult<Option<String>> {
    let Some(raw) = raw.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if (1..=3).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
    {
        Ok(Some(digits.to_owned()))
    } else {
        Err(AppError::validation(
            "countryCode must be a calling code such as \"44\" or \"+1\"",
        ))
    }
}

/// Store address-book numbers and find the registered users among them
#[utoipa::path(
    tag = "contacts",
    security(("bearer" = [])),
    request_body = SyncBody,
    responses((status = 200, description = "Success", body = SyncAnswer), BodyErrors),
)]
#[post("/contacts/sync")]
async fn sync(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<SyncBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let max = state.config.contacts_sync_max;
    if body.phones.len() > max {
        return Err(AppError::TooLarge(
            format!("at most {max} numbers per sync").into(),
        ));
    }
    let cc = country_code(body.country_code.as_deref())?;
    let mut entries: Vec<Entry> = Vec::with_capacity(body.phones.len());
    let mut invalid: Vec<String> = Vec::new();
    for item in body.phones {
        let (raw, name) = match item {
            PhoneItem::Plain(p) => (p, None),
            PhoneItem::Named { phone, name } => (phone, name),
        };
        match normalize_contact(&raw, cc.as_deref()) {
            Ok(phone) => {
                let name = name
                    .map(|n| n.trim().chars().take(200).collect::<String>())
                    .filter(|n| !n.is_empty());
                match entries.iter_mut().find(|e| e.phone == phone) {
                    Some(e) => e.name = e.name.take().or(name),
                    None => entries.push(Entry { phone, name }),
                }
            }
            Err(_) => invalid.push(raw.chars().take(64).collect()),
        }
    }
    let me = identity.user_id();
    let phones: Vec<String> = entries.iter().map(|e| e.phone.clone()).collect();
    let replace = body.replace;
    let (stored, found) = state
        .db
        .run(move |conn| {
            let stored = contacts::sync(conn, me, &entries, replace)?;
            let found = contacts::registered(conn, me, &phones)?;
            Ok((stored, found))
        })
        .await?;
    // Contacts are not strangers under the `request` policy, in both directions.
    state.db.contact_cache().invalidate_users(&[me]);
    let users: Vec<UserView> = found
        .iter()
        .map(|u| {
            let mut v = u.view();
            v.email = None;
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(SyncAnswer {
        success: true,
        matched: users.len(),
        users,
        stored,
        invalid,
    }))
}

/// `POST /contacts/start-chat` body: a user id or a phone number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StartChatBody {
    #[serde(
        default,
        deserialize_with = "opt_id_field",
        alias = "to",
        alias = "participantId",
        alias = "recipientId"
    )]
    #[schema(value_type = IdInput)]
    user_id: Option<i64>,
    #[serde(default, alias = "phoneNumber")]
    #[schema(nullable = false)]
    phone: Option<String>,
    #[serde(default, alias = "defaultCountryCode")]
    #[schema(pattern = r"^\s*(\+?[1-9][0-9]{0,2})?\s*$")]
    country_code: Option<String>,
}

/// Open the direct conversation with a user, by id or phone (contact policy applies)
#[utoipa::path(
    tag = "contacts",
    security(("bearer" = [])),
    request_body = StartChatBody,
    responses(
        (status = 200, description = "Success", body = ChatOpened),
        (status = 201, description = "Success", body = ChatOpened),
        BodyErrors,
    ),
)]
#[post("/contacts/start-chat")]
async fn start_chat(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<StartChatBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let me = identity.user_id();
    let other = match (body.user_id, body.phone) {
        (Some(id), _) => id,
        (None, Some(phone)) => {
            let cc = country_code(body.country_code.as_deref())?;
            let phone = normalize_contact(&phone, cc.as_deref())?;
            state
                .db
                .run(move |conn| crate::db::accounts::user_by_phone(conn, &phone))
                .await?
                .filter(|u| !u.is_banned())
                .ok_or_else(|| AppError::NotFound("no user with this phone number".into()))?
                .id
        }
        (None, None) => return Err(AppError::validation("userId or phone is required")),
    };
    let (conv, created) = state.engine.open_direct(&identity, other).await?;
    let view = conversation_view(&state, conv, me).await?;
    let mut builder = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(builder.json(ChatOpened {
        success: true,
        created,
        conversation: view,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn contact_numbers_normalise_with_and_without_a_country_code() {
        assert_eq!(
            normalize_contact("+1 (415) 555-0123", None).unwrap(),
            "+14155550123"
        );
        assert_eq!(
            normalize_contact("0044 20 7946 0958", None).unwrap(),
            "+442079460958"
        );
        assert_eq!(
            normalize_contact("020 7946 0958", Some("44")).unwrap(),
            "+442079460958"
        );
        assert_eq!(
            normalize_contact("+33 6 12 34 56 78", Some("44")).unwrap(),
            "+33612345678"
        );
        assert!(normalize_contact("020 7946 0958", None).is_err());
        assert!(normalize_contact("call me", Some("44")).is_err());
        assert!(country_code(Some("+0")).is_err());
        assert_eq!(country_code(Some("+44")).unwrap().as_deref(), Some("44"));
    }
}
