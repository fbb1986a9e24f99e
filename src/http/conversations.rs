//! Conversations and messages over REST. Sends, edits and deletes go through the realtime
//! engine, so they are committed, ordered and fanned out to live sockets exactly like socket
//! commands. Routes: `/api/conversations…`, seed 003's `/messages` and `/conversations`, and
//! seed 000's team-chat and DM deletes.

use super::openapi::{string_enum, BodyErrors, Done, Errors, IdInput, IdPath};
use crate::auth::Identity;
use crate::db::conversations::{self as convs, Conversation, ConversationView};
use crate::db::messages::{self, Message, MessageDoc, MessageView};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::events;
use crate::realtime::protocol::{id_field, opt_id_field, SendDraft};
use crate::state::AppState;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

/// Registers the routes (mounted at the root and under `/api`).
pub(crate) fn routes(cfg: &mut super::Routes) {
    cfg.service(list)
        .service(create)
        .service(get_one)
        .service(add_members)
        .service(remove_member)
        .service(conversation_messages)
        .service(post_conversation_message)
        .service(legacy_messages)
        .service(legacy_send)
        .service(edit_message)
        .service(delete_message)
        .service(team_chat)
        .service(team_messages)
        .service(team_send)
        .service(team_delete)
        .service(dm_delete);
}

/// `{id}` and `{user_id}` of a path.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IdUserIdPath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub id: String,
    /// An id (positive integer) or, for `role`, a team role name.
    pub user_id: String,
}

/// `{role}` of a path.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RolePath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub role: String,
}

/// `{role}` and `{message_id}` of a path.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RoleMessagePath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub role: String,
    /// An id (positive integer) or, for `role`, a team role name.
    pub message_id: String,
}

/// `{user_id}` and `{message_id}` of a path.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct UserMessagePath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub user_id: String,
    /// An id (positive integer) or, for `role`, a team role name.
    pub message_id: String,
}

/// `{conversation, success}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConversationAnswer {
    /// The conversation.
    pub conversation: ConversationView,
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
}

/// A page of the caller's conversations.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationPage {
    /// Most recent first.
    pub conversations: Vec<ConversationView>,
    /// `cursor` of the next page (null on the last).
    pub next_cursor: Option<String>,
}

/// `{message, success}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageAnswer {
    /// The message.
    pub message: MessageDoc,
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
}

/// `{success, message}` of the team and DM deletes (the message without seed 003's names).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedAnswer {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// The deleted message.
    #[schema(value_type = MessageDoc)]
    pub message: MessageView,
}

/// Seqs to page from.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cursors {
    /// `before` of the older page (null at the start).
    pub before: Option<i64>,
    /// `after` of the newer page.
    pub after: Option<i64>,
}

/// A page of messages, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessagePage {
    /// The messages.
    pub messages: Vec<MessageDoc>,
    /// The conversation.
    #[schema(required = false)]
    pub conversation_id: String,
    /// Where the neighbouring pages start.
    #[schema(required = false)]
    pub cursors: Cursors,
    /// Whether the page is full (more may follow).
    pub has_more: bool,
}

/// A new message as REST sends take it (read into a [`SendDraft`]); the conversation comes from
/// the route.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct MessageFields {
    /// Text.
    #[schema(nullable = false)]
    pub content: Option<String>,
    /// Kind.
    #[schema(rename = "type", nullable = false, schema_with = message_type_schema)]
    pub kind: Option<String>,
    /// Attachment URL.
    #[schema(nullable = false)]
    pub media_url: Option<String>,
    /// Replied-to message.
    #[schema(value_type = IdInput, required = false)]
    pub reply_to: Option<i64>,
    /// Metadata.
    #[schema(value_type = Object, required = false)]
    pub metadata: Option<Value>,
    /// Idempotency key.
    #[schema(nullable = false, min_length = 1, max_length = 128)]
    pub client_message_id: Option<String>,
}

/// [`MessageFields`] with where it goes: a conversation, or (seed 003's `/messages`) the user
/// `to`.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct SendFields {
    /// The conversation (on `/messages`).
    #[schema(value_type = IdInput, required = false)]
    pub conversation_id: Option<i64>,
    /// A user, for the direct conversation with them (on `/messages`).
    #[schema(value_type = IdInput, required = false)]
    pub to: Option<i64>,
    /// Text.
    #[schema(nullable = false)]
    pub content: Option<String>,
    /// Kind.
    #[schema(rename = "type", nullable = false, schema_with = message_type_schema)]
    pub kind: Option<String>,
    /// Attachment URL.
    #[schema(nullable = false)]
    pub media_url: Option<String>,
    /// Replied-to message.
    #[schema(value_type = IdInput, required = false)]
    pub reply_to: Option<i64>,
    /// Metadata.
    #[schema(value_type = Object, required = false)]
    pub metadata: Option<Value>,
    /// Idempotency key.
    #[schema(nullable = false, min_length = 1, max_length = 128)]
    pub client_message_id: Option<String>,
}

/// `type` of a new message.
fn message_type_schema() -> utoipa::openapi::Object {
    string_enum(["text", "image", "audio", "file"])
}

async fn load_views(
    state: &AppState,
    convs_list: Vec<Conversation>,
    viewer: i64,
) -> AppResult<Vec<ConversationView>> {
    state
        .db
        .run(move |conn| convs::views(conn, convs_list, viewer))
        .await
}

/// A conversation the caller belongs to (admins may see any), or 403/404.
async fn visible(state: &AppState, identity: &Identity, id: i64) -> AppResult<Conversation> {
    let user = identity.user_id();
    let admin = identity.is_admin();
    state
        .db
        .run(move |conn| {
            let conv = convs::by_id(conn, id)?
                .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
            if !admin && convs::member(conn, id, user)?.is_none() {
                return Err(AppError::Forbidden(
                    "not a member of this conversation".into(),
                ));
            }
            Ok(conv)
        })
        .await
}

/// `GET /api/conversations?cursor&limit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// `nextCursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Page size (default 30).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// The caller's conversations, most recent first
#[utoipa::path(
    tag = "conversations",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, description = "Success", body = ConversationPage), Errors),
)]
#[get("/conversations")]
async fn list(
    state: web::Data<AppState>,
    identity: Identity,
    q: web::Query<ListQuery>,
) -> AppResult<HttpResponse> {
    let limit = q.limit.unwrap_or(30).clamp(1, 100);
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
                .ok_or_else(|| {
                    AppError::bad_request(ErrorCode::InvalidCursor, "cursor is not valid")
                })?,
        ),
        None => None,
    };
    let user = identity.user_id();
    let rows = state
        .db
        .run(move |conn| convs::list_for_user(conn, user, cursor, limit + 1))
        .await?;
    let has_more = rows.len() as i64 > limit;
    let page: Vec<Conversation> = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(30))
        .collect();
    let next = if has_more {
        page.last().map(convs::list_cursor)
    } else {
        None
    };
    let views = load_views(&state, page, user).await?;
    Ok(HttpResponse::Ok().json(ConversationPage {
        conversations: views,
        next_cursor: next,
    }))
}

fn ids_or_objects<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<i64>>, D::Error> {
    let Some(values) = Option::<Vec<Value>>::deserialize(de)? else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            // Seed 002 participants are objects `{id, type, name}`.
            Value::Object(mut o) => o
                .remove("id")
                .or_else(|| o.remove("userId"))
                .unwrap_or(Value::Null),
            other => other,
        })
        .map(|v| id_field(v).map_err(de::Error::custom))
        .collect::<Result<Vec<i64>, D::Error>>()
        .map(Some)
}

/// `POST /api/conversations`: direct (get-or-create by pair) or group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateBody {
    #[serde(default, rename = "type", alias = "kind")]
    #[schema(nullable = false, schema_with = conversation_type_schema)]
    kind: Option<String>,
    #[serde(default, alias = "name")]
    #[schema(nullable = false)]
    title: Option<String>,
    #[serde(
        default,
        deserialize_with = "ids_or_objects",
        alias = "members",
        alias = "memberIds",
        alias = "userIds"
    )]
    #[schema(value_type = Vec<IdInput>, required = false)]
    participants: Option<Vec<i64>>,
    #[serde(
        default,
        deserialize_with = "opt_id_field",
        alias = "participantId",
        alias = "to",
        alias = "recipientId"
    )]
    #[schema(value_type = IdInput, required = false)]
    user_id: Option<i64>,
    /// Seed 002 context: `consultation|service_request|support|general`.
    #[serde(default)]
    #[schema(nullable = false, schema_with = context_type_schema)]
    context_type: Option<String>,
    /// The context's id (e.g. the consultation): a string or a number; needs `contextType`.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    #[schema(nullable = false, schema_with = context_id_schema)]
    context_id: Option<String>,
}

/// `contextType` of a conversation: one of [`CONTEXT_TYPES`].
pub(crate) fn context_type_schema() -> utoipa::openapi::Object {
    string_enum(CONTEXT_TYPES)
}

/// `contextId` of a new conversation: a string or an integer.
fn context_id_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Integer))
            .build(),
    )
}

/// `type` of a new conversation.
fn conversation_type_schema() -> utoipa::openapi::Object {
    string_enum(["direct", "group"])
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(de::Error::custom(format!(
            "contextId must be a string or a number, not {other}"
        ))),
    }
}

/// The context types a conversation may carry.
pub(crate) const CONTEXT_TYPES: [&str; 4] =
    ["consultation", "service_request", "support", "general"];

fn context_of(body: &CreateBody) -> AppResult<Option<(String, String)>> {
    match (&body.context_type, &body.context_id) {
        (None, None) => Ok(None),
        (Some(t), id) => {
            let t = t.trim().to_ascii_lowercase();
            if !CONTEXT_TYPES.contains(&t.as_str()) {
                return Err(AppError::validation(format!(
                    "contextType must be one of {}",
                    CONTEXT_TYPES.join(", ")
                )));
            }
            let id = id.as_deref().map(str::trim).unwrap_or_default().to_owned();
            if id.chars().count() > 128 {
                return Err(AppError::validation(
                    "contextId must be at most 128 characters",
                ));
            }
            Ok(Some((t, id)))
        }
        (None, Some(_)) => Err(AppError::validation("contextId needs a contextType")),
    }
}

/// Create a group, or get or create a direct conversation
#[utoipa::path(
    tag = "conversations",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 200, description = "Success", body = ConversationAnswer),
        (status = 201, description = "Success", body = ConversationAnswer),
        BodyErrors,
    ),
)]
#[post("/conversations")]
async fn create(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<CreateBody>,
) -> AppResult<HttpResponse> {
    let me = identity.user_id();
    let body = body.into_inner();
    let context = context_of(&body)?;
    let mut others: Vec<i64> = body.participants.unwrap_or_default();
    others.extend(body.user_id);
    others.retain(|u| *u != me);
    others.sort_unstable();
    others.dedup();
    let kind = body.kind.as_deref().map(str::to_ascii_lowercase);
    let direct = match kind.as_deref() {
        Some("direct" | "dm" | "private") => true,
        Some("group") => false,
        None => others.len() == 1 && body.title.is_none(),
        Some(other) => {
            return Err(AppError::validation(format!(
                "unknown conversation type `{other}`"
            )))
        }
    };
    if direct {
        let [other] = others[..] else {
            return Err(AppError::validation(
                "a direct conversation needs exactly one other participant",
            ));
        };
        let (mut conv, created) = state.engine.open_direct(&identity, other).await?;
        if let (true, Some((kind, id))) = (created, context) {
            let cid = conv.id;
            conv = state
                .db
                .run(move |conn| convs::set_context(conn, cid, &kind, &id))
                .await?;
            // The context can link the pair for the `roles` policy.
            state.db.contact_cache().direct_created(cid, me, other);
        }
        let view = load_views(&state, vec![conv], me).await?.pop();
        let status = if created {
            HttpResponse::Created()
        } else {
            HttpResponse::Ok()
        };
        return Ok(respond(status, view));
    }
    if others.is_empty() {
        return Err(AppError::validation(
            "a group needs at least one other member",
        ));
    }
    if others.len() > 1000 {
        return Err(AppError::validation("at most 1000 members"));
    }
    let title = body
        .title
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Group".into());
    if title.chars().count() > 200 {
        return Err(AppError::validation("title must be at most 200 characters"));
    }
    state.engine.check_contact(me, others.clone()).await?;
    let members = others.clone();
    let conv = state
        .db
        .run(move |conn| {
            let ctx = context.as_ref().map(|(t, i)| (t.as_str(), i.as_str()));
            convs::create_group(conn, me, &title, &members, ctx)
        })
        .await?;
    let mut all = others;
    all.push(me);
    state.db.contact_cache().membership_changed(conv.id, &all);
    state.engine.members_changed(conv.id, all.clone());
    let view = load_views(&state, vec![conv], me).await?.pop();
    if let Some(v) = &view {
        state
            .engine
            .notify_users(all, events::CONVERSATION_NEW, json!(v));
    }
    Ok(respond(HttpResponse::Created(), view))
}

fn respond(
    mut builder: actix_web::HttpResponseBuilder,
    view: Option<ConversationView>,
) -> HttpResponse {
    match view {
        Some(conversation) => builder.json(ConversationAnswer {
            conversation,
            success: true,
        }),
        None => HttpResponse::NotFound()
            .json(AppError::NotFound("conversation not found".into()).body()),
    }
}

/// One conversation
#[utoipa::path(
    tag = "conversations",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = ConversationAnswer), Errors),
)]
#[get("/conversations/{id}")]
async fn get_one(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    req: HttpRequest,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "conversation id")?;
    let conv = visible(&state, &identity, id).await?;
    if super::astrology::wanted(&req, &state) {
        return super::astrology::conversation_response(&state, conv, identity.user_id(), None)
            .await;
    }
    let view = load_views(&state, vec![conv], identity.user_id())
        .await?
        .pop();
    Ok(respond(HttpResponse::Ok(), view))
}

/// `POST /api/conversations/:id/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MembersBody {
    #[serde(
        deserialize_with = "ids_or_objects",
        alias = "members",
        alias = "participants",
        alias = "userIds"
    )]
    #[schema(value_type = Vec<IdInput>, required = true)]
    user_ids: Option<Vec<i64>>,
}

/// The users a member change added.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MembersAdded {
    /// Always true.
    pub success: bool,
    /// Their ids.
    pub added: Vec<String>,
}

/// Owner/admin of the group, or a platform admin.
async fn manage_check(state: &AppState, identity: &Identity, id: i64) -> AppResult<Conversation> {
    let user = identity.user_id();
    let platform_admin = identity.is_admin();
    state
        .db
        .run(move |conn| {
            let conv = convs::by_id(conn, id)?
                .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
            if conv.kind != "group" {
                return Err(AppError::validation(
                    "members can only be changed in group conversations",
                ));
            }
            let role = convs::member(conn, id, user)?.map(|m| m.role);
            if !platform_admin && !matches!(role.as_deref(), Some("owner" | "admin")) {
                return Err(AppError::Forbidden(
                    "only the group's owner or admins may change members".into(),
                ));
            }
            Ok(conv)
        })
        .await
}

/// Add members to a group (owner, group admin or platform admin)
#[utoipa::path(
    tag = "conversations",
    security(("bearer" = [])),
    params(IdPath),
    request_body = MembersBody,
    responses((status = 200, description = "Success", body = MembersAdded), BodyErrors),
)]
#[post("/conversations/{id}/members")]
async fn add_members(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    body: web::Json<MembersBody>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "conversation id")?;
    let ids = body.into_inner().user_ids.unwrap_or_default();
    if ids.is_empty() || ids.len() > 1000 {
        return Err(AppError::validation("userIds must list 1 to 1000 users"));
    }
    manage_check(&state, &identity, id).await?;
    state
        .engine
        .check_contact(identity.user_id(), ids.clone())
        .await?;
    let (added, members) = state
        .db
        .run(move |conn| {
            let added = convs::add_members(conn, id, &ids)?;
            let members: Vec<i64> = convs::members(conn, id)?
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            Ok((added, members))
        })
        .await?;
    state.db.contact_cache().membership_changed(id, &members);
    state.engine.members_changed(id, members.clone());
    state.engine.notify_users(
        members,
        events::CONVERSATION_MEMBERS_ADDED,
        json!({"conversationId": id.to_string(), "userIds": added.iter().map(ToString::to_string).collect::<Vec<_>>()}),
    );
    Ok(HttpResponse::Ok().json(MembersAdded {
        success: true,
        added: added.iter().map(ToString::to_string).collect(),
    }))
}

/// Remove a member (or leave)
#[utoipa::path(
    tag = "conversations",
    security(("bearer" = [])),
    params(IdUserIdPath),
    responses((status = 200, description = "Success", body = Done), Errors),
)]
#[delete("/conversations/{id}/members/{user_id}")]
async fn remove_member(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, target) = path.into_inner();
    let id = super::parse_id(&id, "conversation id")?;
    let target = super::parse_id(&target, "user id")?;
    if target != identity.user_id() {
        manage_check(&state, &identity, id).await?;
    }
    let (removed, members) = state
        .db
        .run(move |conn| {
            let removed = convs::remove_member(conn, id, target)?;
            let members: Vec<i64> = convs::members(conn, id)?
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            Ok((removed, members))
        })
        .await?;
    if !removed {
        return Err(AppError::NotFound("not a member".into()));
    }
    let mut audience = members.clone();
    audience.push(target);
    state.db.contact_cache().membership_changed(id, &audience);
    state.engine.members_changed(id, members);
    state.engine.notify_users(
        audience,
        events::CONVERSATION_MEMBER_REMOVED,
        json!({"conversationId": id.to_string(), "userId": target.to_string()}),
    );
    Ok(HttpResponse::Ok().json(Done::OK))
}

/// Pagination by seq.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    #[serde(
        default,
        deserialize_with = "opt_id_field",
        alias = "conversation",
        alias = "conversation_id"
    )]
    #[param(ignore)]
    conversation_id: Option<i64>,
    /// Messages with a seq below this.
    #[param(nullable = false, minimum = 0)]
    before: Option<i64>,
    /// Messages with a seq above this.
    #[param(nullable = false, minimum = 0)]
    after: Option<i64>,
    /// Page size (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `conversationId` of `GET /messages` (read into [`PageQuery`]).
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConversationQuery {
    /// The conversation.
    #[param(rename = "conversationId", nullable = false, minimum = 1)]
    pub conversation_id: Option<i64>,
}

impl PageQuery {
    /// The conversation named in the query (seed 003 `GET /messages`).
    pub(crate) fn conversation_id(&self) -> Option<i64> {
        self.conversation_id
    }
}

impl PageQuery {
    /// `(before, after, limit)`: the limit clamped to 1..=200 (50 by default); negative seq
    /// bounds are refused.
    pub(crate) fn bounds(&self) -> AppResult<(Option<i64>, Option<i64>, i64)> {
        let limit = self.limit.unwrap_or(50).clamp(1, 200);
        let (before, after) = (self.before, self.after);
        if before.is_some_and(|b| b < 0) || after.is_some_and(|a| a < 0) {
            return Err(AppError::bad_request(
                ErrorCode::InvalidParameter,
                "before/after must be non-negative seq numbers",
            ));
        }
        Ok((before, after, limit))
    }
}

pub(crate) async fn page_response(
    state: &AppState,
    conversation_id: i64,
    q: &PageQuery,
) -> AppResult<HttpResponse> {
    let (before, after, limit) = q.bounds()?;
    let rows = state
        .db
        .run(move |conn| messages::page(conn, conversation_id, before, after, limit))
        .await?;
    let views: Vec<_> = rows.iter().map(Message::doc).collect();
    let older = views.first().map(|m| m.view.seq).filter(|s| *s > 1);
    let newer = views.last().map(|m| m.view.seq);
    Ok(HttpResponse::Ok().json(MessagePage {
        messages: views,
        conversation_id: conversation_id.to_string(),
        cursors: Cursors {
            before: older,
            after: newer,
        },
        has_more: rows.len() as i64 == limit,
    }))
}

/// A page of a conversation's messages
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    params(IdPath, PageQuery),
    responses((status = 200, description = "Success", body = MessagePage), Errors),
)]
#[get("/conversations/{id}/messages")]
async fn conversation_messages(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
    req: HttpRequest,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "conversation id")?;
    visible(&state, &identity, id).await?;
    if super::astrology::wanted(&req, &state) {
        return super::astrology::page_response(&state, id, &q).await;
    }
    page_response(&state, id, &q).await
}

/// The body of REST sends: a [`SendDraft`] without the conversation (it comes from the path) or
/// with one (seed 003 `/messages`), plus seed 003's `to` for direct messages.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendBody {
    #[serde(
        default,
        deserialize_with = "opt_id_field",
        alias = "conversation",
        alias = "conversation_id"
    )]
    conversation_id: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_id_field",
        alias = "recipientId",
        alias = "receiverId"
    )]
    to: Option<i64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// A draft for `conversation_id` from a REST body, in any app's field names. Identity comes
/// from the token: any sender field in the payload is ignored.
pub(crate) fn draft_for(
    conversation_id: i64,
    mut rest: serde_json::Map<String, Value>,
) -> AppResult<SendDraft> {
    crate::realtime::dialect::for_any_app(events::MESSAGE_SEND, &mut rest);
    SendDraft::in_conversation(conversation_id, rest)
}

pub(crate) async fn send_and_respond(
    state: &AppState,
    identity: &Identity,
    draft: SendDraft,
) -> AppResult<HttpResponse> {
    let view = state.engine.send_message(identity, draft, None).await?;
    Ok(HttpResponse::Created().json(MessageAnswer {
        message: view.doc(),
        success: true,
    }))
}

/// Send a message (acknowledged after its commit)
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    params(IdPath),
    request_body = SendFields,
    responses((status = 201, description = "Success", body = MessageAnswer), BodyErrors),
)]
#[post("/conversations/{id}/messages")]
async fn post_conversation_message(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    body: web::Json<SendBody>,
    req: HttpRequest,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "conversation id")?;
    let draft = draft_for(id, body.into_inner().rest)?;
    if super::astrology::wanted(&req, &state) {
        return super::astrology::send_response(&state, &identity, draft).await;
    }
    send_and_respond(&state, &identity, draft).await
}

/// A page of messages (seed 003)
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    params(PageQuery, ConversationQuery),
    responses((status = 200, description = "Success", body = MessagePage), Errors),
)]
#[get("/messages")]
async fn legacy_messages(
    state: web::Data<AppState>,
    identity: Identity,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let id = q
        .conversation_id
        .ok_or_else(|| AppError::validation("conversationId is required"))?;
    visible(&state, &identity, id).await?;
    page_response(&state, id, &q).await
}

/// Send a message to a conversation or, with `to`, to a user (seed 003)
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    request_body = SendFields,
    responses((status = 201, description = "Success", body = MessageAnswer), BodyErrors),
)]
#[post("/messages")]
async fn legacy_send(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<SendBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let me = identity.user_id();
    let conversation_id = match (body.conversation_id, body.to) {
        (Some(c), _) => c,
        (None, Some(to)) if to != me => state.engine.open_direct(&identity, to).await?.0.id,
        (None, Some(_)) => {
            return Err(AppError::validation("you cannot message yourself"));
        }
        (None, None) => return Err(AppError::validation("conversationId or to is required")),
    };
    let draft = draft_for(conversation_id, body.rest)?;
    send_and_respond(&state, &identity, draft).await
}

/// `PATCH /messages/:id`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct EditBody {
    #[serde(alias = "text")]
    content: String,
}

/// Edit an own message
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    params(IdPath),
    request_body = EditBody,
    responses((status = 200, description = "Success", body = MessageAnswer), BodyErrors),
)]
#[patch("/messages/{id}")]
async fn edit_message(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    body: web::Json<EditBody>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "message id")?;
    let m = state
        .engine
        .edit_message(&identity, id, body.into_inner().content, None)
        .await?;
    Ok(HttpResponse::Ok().json(MessageAnswer {
        message: m.doc(),
        success: true,
    }))
}

/// Delete a message (own, or any for moderators)
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = MessageAnswer), Errors),
)]
#[delete("/messages/{id}")]
async fn delete_message(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "message id")?;
    let m = state.engine.delete_message(&identity, id, None).await?;
    Ok(HttpResponse::Ok().json(MessageAnswer {
        message: m.doc(),
        success: true,
    }))
}

/// The team conversation of a team role, with its membership brought up to date. Only holders
/// of the team role and moderators may use it.
async fn team_conversation(
    state: &AppState,
    identity: &Identity,
    role: &str,
) -> AppResult<Conversation> {
    let role = role.trim().to_ascii_lowercase();
    if role.is_empty() || role.len() > 64 {
        return Err(AppError::bad_request(
            ErrorCode::InvalidParameter,
            "team role must be 1 to 64 characters",
        ));
    }
    let holds = identity
        .user
        .team_role_list()
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&role));
    if !holds && !identity.is_moderator() {
        return Err(AppError::Forbidden("not a member of this team".into()));
    }
    let (conv, members, removed) = state
        .db
        .run(move |conn| {
            let (conv, removed, added) = convs::sync_team(conn, &role)?;
            let members: Vec<i64> = convs::members(conn, conv.id)?
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            Ok((
                conv,
                members,
                (!removed.is_empty() || !added.is_empty()).then_some(removed),
            ))
        })
        .await?;
    // Sharing a team conversation counts for the contact policy.
    if let Some(removed) = removed {
        let mut touched = members.clone();
        touched.extend(removed);
        state
            .db
            .contact_cache()
            .membership_changed(conv.id, &touched);
    }
    state.engine.members_changed(conv.id, members);
    Ok(conv)
}

/// The team conversation of a role
#[utoipa::path(
    tag = "team chat",
    security(("bearer" = [])),
    params(RolePath),
    responses((status = 200, description = "Success", body = ConversationAnswer), Errors),
)]
#[get("/team-chat/{role}")]
async fn team_chat(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let conv = team_conversation(&state, &identity, &path).await?;
    let view = load_views(&state, vec![conv], identity.user_id())
        .await?
        .pop();
    Ok(respond(HttpResponse::Ok(), view))
}

/// A page of a team conversation
#[utoipa::path(
    tag = "team chat",
    security(("bearer" = [])),
    params(RolePath, PageQuery),
    responses((status = 200, description = "Success", body = MessagePage), Errors),
)]
#[get("/team-chat/{role}/messages")]
async fn team_messages(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let conv = team_conversation(&state, &identity, &path).await?;
    page_response(&state, conv.id, &q).await
}

/// Send to a team conversation
#[utoipa::path(
    tag = "team chat",
    security(("bearer" = [])),
    params(RolePath),
    request_body = SendFields,
    responses((status = 201, description = "Success", body = MessageAnswer), BodyErrors),
)]
#[post("/team-chat/{role}/messages")]
async fn team_send(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    body: web::Json<SendBody>,
) -> AppResult<HttpResponse> {
    let conv = team_conversation(&state, &identity, &path).await?;
    let draft = draft_for(conv.id, body.into_inner().rest)?;
    send_and_respond(&state, &identity, draft).await
}

/// Seed 000 delete: the message must belong to the named chat (404 otherwise); own messages, or
/// any for `admin`/`master` (403 otherwise).
async fn delete_in(
    state: &AppState,
    identity: &Identity,
    conversation_id: Option<i64>,
    message_id: i64,
) -> AppResult<HttpResponse> {
    let found = state
        .db
        .run(move |conn| messages::by_id(conn, message_id))
        .await?;
    match (found, conversation_id) {
        (Some(m), Some(c)) if m.conversation_id == c => {}
        _ => return Err(AppError::NotFound("message not found in this chat".into())),
    }
    let m = state
        .engine
        .delete_message(identity, message_id, None)
        .await?;
    Ok(HttpResponse::Ok().json(DeletedAnswer {
        success: true,
        message: m.view(),
    }))
}

/// Delete a team message
#[utoipa::path(
    tag = "team chat",
    security(("bearer" = [])),
    params(RoleMessagePath),
    responses((status = 200, description = "Success", body = DeletedAnswer), Errors),
)]
#[delete("/team-chat/{role}/messages/{message_id}")]
async fn team_delete(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (role, message_id) = path.into_inner();
    let message_id = super::parse_id(&message_id, "message id")?;
    let role = role.trim().to_ascii_lowercase();
    let conv = state
        .db
        .run(move |conn| {
            use crate::db::schema::conversations;
            use diesel::prelude::*;
            Ok(conversations::table
                .filter(conversations::team_role.eq(&role))
                .select(conversations::id)
                .first::<i64>(conn)
                .optional()?)
        })
        .await?;
    delete_in(&state, &identity, conv, message_id).await
}

/// Delete a message of the direct conversation with a user
#[utoipa::path(
    tag = "messages",
    security(("bearer" = [])),
    params(UserMessagePath),
    responses((status = 200, description = "Success", body = DeletedAnswer), Errors),
)]
#[delete("/messages/dm/{user_id}/messages/{message_id}")]
async fn dm_delete(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (other, message_id) = path.into_inner();
    let other = super::parse_id(&other, "user id")?;
    let message_id = super::parse_id(&message_id, "message id")?;
    let key = convs::participant_key(identity.user_id(), other);
    let conv = state
        .db
        .run(move |conn| {
            use crate::db::schema::conversations;
            use diesel::prelude::*;
            Ok(conversations::table
                .filter(conversations::participant_key.eq(&key))
                .select(conversations::id)
                .first::<i64>(conn)
                .optional()?)
        })
        .await?;
    delete_in(&state, &identity, conv, message_id).await
}
