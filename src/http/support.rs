//! Seed 002's support conversations between the admins and a staff member (an astrologer):
//!
//! - admin side: `GET /api/admin/conversations/:astrologerId` (get-or-create, with recent
//!   messages and the admin's unread count), `GET|POST /api/admin/conversations/:astrologerId/messages`,
//!   `POST /api/admin/calls/initiate`;
//! - staff side: `GET /api/conversations/admin`, `GET|POST /api/conversations/admin/messages`.
//!
//! "The admin" of such a conversation is every admin: the conversation's members are the staff
//! member and all current admins ([`crate::db::support`]), so a staff member writes to the
//! admins without knowing who will answer, every admin's devices receive the message, and any
//! admin may reply under their own name. The staff-side routes must be registered before
//! `/conversations/{id}`.

use super::admin::Admin;
use super::calls::{IceServer, Initiated};
use super::conversations::{draft_for, MessageAnswer, MessageFields, MessagePage, PageQuery};
use super::openapi::{string_enum, BodyErrors, Errors, IdInput, UserIdPath};
use crate::auth::Identity;
use crate::db::conversations::{Conversation, MemberView};
use crate::db::messages::MessageDoc;
use crate::db::support;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::protocol::CallInitiate;
use crate::state::AppState;
use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Messages returned with a support conversation.
pub(crate) const RECENT_MESSAGES: i64 = 50;

/// Registers the routes (mounted at the root and under `/api`).
pub(crate) fn routes(cfg: &mut super::Routes) {
    cfg.service(staff_conversation)
        .service(staff_messages)
        .service(staff_send)
        .service(admin_conversation)
        .service(admin_messages)
        .service(admin_send)
        .service(admin_call);
}

/// The kind of a party in seed 002 (`user`, `astrologer` or `admin`).
fn party_type_schema() -> utoipa::openapi::Object {
    string_enum(["user", "astrologer", "admin"])
}

/// A party kind that may be null.
fn nullable_party_type_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
        .enum_values(Some([
            Value::from("user"),
            Value::from("astrologer"),
            Value::from("admin"),
            Value::Null,
        ]))
        .build()
}

/// Seed 002's `DirectMessage`, as [`super::astrology`] writes it: a `Message` with its app's
/// fields added.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DirectMessage {
    /// The message.
    #[serde(flatten)]
    pub message: MessageDoc,
    /// Same as `id`.
    #[serde(rename = "_id")]
    pub doc_id: String,
    /// The seed's message type.
    pub message_type: String,
    /// The sender's kind.
    #[schema(schema_with = nullable_party_type_schema)]
    pub sender_type: Option<String>,
    /// The recipient.
    #[schema(required = false)]
    pub recipient_id: Option<String>,
    /// The recipient's kind.
    #[schema(schema_with = nullable_party_type_schema)]
    pub recipient_type: Option<String>,
    /// Delivery status.
    #[schema(schema_with = message_status_schema)]
    pub status: String,
    /// Read.
    #[schema(required = false)]
    pub read_at: Option<DateTime<Utc>>,
    /// Delivered.
    #[schema(required = false)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// Deleted.
    pub is_deleted: bool,
    /// Who deleted it.
    #[schema(required = false)]
    pub deleted_by: Vec<String>,
    /// Last change.
    #[schema(required = false)]
    pub updated_at: DateTime<Utc>,
}

/// `status` of a [`DirectMessage`].
fn message_status_schema() -> utoipa::openapi::Object {
    string_enum(["sent", "delivered", "read", "failed"])
}

/// A participant of a [`DirectConversation`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DirectParticipant {
    /// User id.
    pub id: String,
    /// Kind.
    #[serde(rename = "type")]
    #[schema(schema_with = party_type_schema)]
    pub kind: String,
    /// Name.
    pub name: String,
    /// Avatar.
    #[schema(required = false)]
    pub profile_picture: Option<String>,
    /// Joined.
    pub joined_at: DateTime<Utc>,
}

/// Seed 002's `DirectConversation`, as [`super::astrology`] writes it (its `unreadCount` is a
/// count per participant id).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DirectConversation {
    /// Same as `id`.
    #[serde(rename = "_id")]
    pub doc_id: String,
    /// Id.
    #[schema(required = false)]
    pub id: String,
    /// Canonical type.
    #[serde(rename = "type")]
    #[schema(required = false)]
    pub kind: String,
    /// Title.
    #[schema(required = false)]
    pub title: Option<String>,
    /// The parties.
    pub participants: Vec<DirectParticipant>,
    /// The canonical members.
    #[schema(required = false)]
    pub members: Vec<MemberView>,
    /// The seed's conversation type.
    #[schema(schema_with = conversation_type_schema)]
    pub conversation_type: String,
    /// Last message.
    #[schema(required = false)]
    pub last_message: Option<DirectMessage>,
    /// Open.
    pub is_active: bool,
    /// Unread messages per participant id.
    pub unread_count: BTreeMap<String, i64>,
    /// Context type.
    #[schema(schema_with = super::conversations::context_type_schema)]
    pub context_type: String,
    /// Context id.
    #[schema(required = false)]
    pub context_id: Option<String>,
    /// Created.
    #[schema(required = false)]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[schema(required = false)]
    pub updated_at: DateTime<Utc>,
}

/// `conversationType` of a [`DirectConversation`].
fn conversation_type_schema() -> utoipa::openapi::Object {
    string_enum(["admin_astrologer", "user_astrologer", "group"])
}

/// A support conversation with its newest messages and the caller's unread count.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SupportAnswer {
    /// Always true.
    pub success: bool,
    /// The conversation.
    pub conversation: DirectConversation,
    /// Its newest messages.
    pub messages: Vec<DirectMessage>,
    /// The caller's unread messages.
    pub unread_count: i64,
}

/// `POST /admin/calls/initiate` body, as far as the document describes it (read into a
/// [`CallInitiate`]).
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AdminCallFields {
    /// The callee (also `calleeId` or `to`).
    #[schema(value_type = IdInput, required = false)]
    pub astrologer_id: Option<i64>,
    /// The callee.
    #[schema(value_type = IdInput, required = false)]
    pub callee_id: Option<i64>,
    /// The callee.
    #[schema(value_type = IdInput, required = false)]
    pub to: Option<i64>,
    /// `audio` (also `voice`) or `video`.
    #[schema(nullable = false, schema_with = super::calls::call_type_schema)]
    pub call_type: Option<String>,
    /// Same as `callType: video`.
    #[schema(nullable = false)]
    pub is_video: Option<bool>,
    /// `webrtc`, `agora` or `auto` (the default: Agora when configured).
    #[schema(nullable = false, schema_with = admin_provider_schema)]
    pub provider: Option<String>,
    /// Agora channel name to use.
    #[schema(nullable = false, pattern = "^[A-Za-z0-9_.:@-]{1,128}$")]
    pub room_name: Option<String>,
    /// The caller's SDP offer.
    #[schema(value_type = Object, required = false)]
    pub sdp_offer: Option<Value>,
}

/// `provider` of an admin call.
fn admin_provider_schema() -> utoipa::openapi::Object {
    string_enum(["webrtc", "agora", "auto"])
}

/// The engine's acknowledgement of a call an admin started, as far as the document describes it.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AdminCallAck {
    /// The call.
    pub call_id: String,
    /// `ringing`, `busy` or `glare`.
    #[schema(schema_with = call_status_schema)]
    pub status: String,
    /// `audio` or `video`.
    pub call_type: String,
    /// STUN and TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Agora calls: the channel.
    #[schema(nullable = false)]
    pub channel_name: Option<String>,
    /// Agora calls: a token for uid 0.
    #[schema(required = false)]
    pub agora_token: Option<String>,
    /// Agora calls: app id, channel and tokens.
    #[schema(value_type = Object, required = false)]
    pub agora: Option<Value>,
}

/// `status` of a started call.
fn call_status_schema() -> utoipa::openapi::Object {
    string_enum(["ringing", "busy", "glare"])
}

/// What starting a call answers, described for seed 002's admin app (the same JSON as
/// [`Initiated`]).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdminInitiated {
    /// Always true.
    pub success: bool,
    /// The call.
    #[schema(value_type = String)]
    pub call_id: Value,
    /// `ringing`, `busy` or `glare`.
    #[schema(value_type = String)]
    pub status: Value,
    /// `voice` or `video`.
    pub call_type: Option<String>,
    /// Agora calls: the channel.
    #[schema(value_type = Option<String>)]
    pub channel_name: Option<Value>,
    /// Agora calls: a token for uid 0.
    #[schema(value_type = Option<String>)]
    pub agora_token: Option<Value>,
    /// 0 on Agora calls.
    pub agora_uid: Option<u32>,
    /// The engine's acknowledgement.
    #[schema(value_type = AdminCallAck)]
    pub call: Value,
}

impl From<Initiated> for AdminInitiated {
    fn from(i: Initiated) -> Self {
        Self {
            success: i.success,
            call_id: i.call_id,
            status: i.status,
            call_type: i.call_type,
            channel_name: i.channel_name,
            agora_token: i.agora_token,
            agora_uid: i.agora_uid,
            call: i.call,
        }
    }
}

/// The support conversation of `user`, membership brought up to date and the engine told.
async fn support_conversation(state: &AppState, user: i64) -> AppResult<Conversation> {
    let (conv, members) = state
        .db
        .run(move |conn| support::sync_one(conn, user))
        .await?;
    state
        .db
        .contact_cache()
        .membership_changed(conv.id, &members);
    state.engine.members_changed(conv.id, members);
    Ok(conv)
}

/// The conversation for `viewer` with its newest messages, in seed 002's shapes.
async fn with_recent(state: &AppState, conv: Conversation, viewer: i64) -> AppResult<HttpResponse> {
    super::astrology::conversation_response(state, conv, viewer, Some(RECENT_MESSAGES)).await
}

fn staff_side(identity: &Identity) -> AppResult<i64> {
    if identity.is_admin() {
        return Err(AppError::validation(
            "admins open support conversations at /api/admin/conversations/:userId",
        ));
    }
    Ok(identity.user_id())
}

/// The caller's support conversation with the admins, with recent messages (not for admins)
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = SupportAnswer), Errors),
)]
#[get("/conversations/admin")]
async fn staff_conversation(
    state: web::Data<AppState>,
    identity: Identity,
) -> AppResult<HttpResponse> {
    let me = staff_side(&identity)?;
    let conv = support_conversation(&state, me).await?;
    with_recent(&state, conv, me).await
}

/// A page of the caller's support conversation
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, description = "Success", body = MessagePage), Errors),
)]
#[get("/conversations/admin/messages")]
async fn staff_messages(
    state: web::Data<AppState>,
    identity: Identity,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let me = staff_side(&identity)?;
    let conv = support_conversation(&state, me).await?;
    super::astrology::page_response(&state, conv.id, &q).await
}

/// Write to the admins
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    request_body = MessageFields,
    responses((status = 201, description = "Success", body = MessageAnswer), BodyErrors),
)]
#[post("/conversations/admin/messages")]
async fn staff_send(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<Map<String, Value>>,
) -> AppResult<HttpResponse> {
    let me = staff_side(&identity)?;
    let conv = support_conversation(&state, me).await?;
    let draft = draft_for(conv.id, body.into_inner())?;
    super::astrology::send_response(&state, &identity, draft).await
}

/// The support conversation of a user (created on first use), with recent messages
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    params(UserIdPath),
    responses((status = 200, description = "Success", body = SupportAnswer), Errors),
)]
#[get("/admin/conversations/{user_id}")]
async fn admin_conversation(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let identity = admin.identity;
    let conv = support_conversation(&state, super::parse_id(&path, "user id")?).await?;
    with_recent(&state, conv, identity.user_id()).await
}

/// A page of a user's support conversation
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    params(UserIdPath, PageQuery),
    responses((status = 200, description = "Success", body = MessagePage), Errors),
)]
#[get("/admin/conversations/{user_id}/messages")]
async fn admin_messages(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let conv = support_conversation(&state, super::parse_id(&path, "user id")?).await?;
    super::astrology::page_response(&state, conv.id, &q).await
}

/// Reply in a user's support conversation
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    params(UserIdPath),
    request_body = MessageFields,
    responses((status = 201, description = "Success", body = MessageAnswer), BodyErrors),
)]
#[post("/admin/conversations/{user_id}/messages")]
async fn admin_send(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<Map<String, Value>>,
) -> AppResult<HttpResponse> {
    let identity = admin.identity;
    let conv = support_conversation(&state, super::parse_id(&path, "user id")?).await?;
    let draft = draft_for(conv.id, body.into_inner())?;
    super::astrology::send_response(&state, &identity, draft).await
}

/// Call a user (Agora when configured and no provider is named)
// `{astrologerId | calleeId | to, callType}`; seed 002's apps join Agora channels.
#[utoipa::path(
    tag = "support",
    security(("bearer" = [])),
    request_body = AdminCallFields,
    responses((status = 201, description = "Success", body = AdminInitiated), BodyErrors),
)]
#[post("/admin/calls/initiate")]
async fn admin_call(
    state: web::Data<AppState>,
    admin: Admin,
    body: web::Json<Map<String, Value>>,
) -> AppResult<HttpResponse> {
    let identity = admin.identity;
    let mut fields = body.into_inner();
    for key in ["callerId", "fromId", "from", "initiatedBy"] {
        fields.remove(key);
    }
    if let Some(target) = fields.remove("astrologerId") {
        fields.entry("to").or_insert(target);
    }
    // With an explicit callee, a `userId` can only be the caller's own id: identity comes
    // from the token.
    if ["to", "toId", "calleeId", "targetUserId", "recipientId"]
        .iter()
        .any(|k| fields.contains_key(*k))
    {
        fields.remove("userId");
    }
    fields.entry("provider").or_insert_with(|| json!("auto"));
    crate::realtime::dialect::for_any_app(crate::realtime::events::CALL_INITIATE, &mut fields);
    let req: CallInitiate =
        serde_json::from_value(Value::Object(fields)).map_err(|e| AppError::Validation {
            code: ErrorCode::ValidationFailed,
            message: e.to_string().into(),
        })?;
    if req.to.is_none() {
        return Err(AppError::validation(
            "astrologerId (or calleeId/to) is required",
        ));
    }
    let ack = state.engine.start_call(&identity, 0, req).await?;
    Ok(HttpResponse::Created().json(AdminInitiated::from(super::calls::initiated(ack))))
}
