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
use super::conversations::{draft_for, PageQuery};
use crate::auth::Identity;
use crate::db::conversations::Conversation;
use crate::db::support;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::protocol::CallInitiate;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

/// Messages returned with a support conversation.
pub const RECENT_MESSAGES: i64 = 50;

/// Registers the routes (mounted at the root and under `/api`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.route("/conversations/admin", web::get().to(staff_conversation))
        .route(
            "/conversations/admin/messages",
            web::get().to(staff_messages),
        )
        .route("/conversations/admin/messages", web::post().to(staff_send))
        .route(
            "/admin/conversations/{user_id}",
            web::get().to(admin_conversation),
        )
        .route(
            "/admin/conversations/{user_id}/messages",
            web::get().to(admin_messages),
        )
        .route(
            "/admin/conversations/{user_id}/messages",
            web::post().to(admin_send),
        )
        .route("/admin/calls/initiate", web::post().to(admin_call));
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

async fn staff_conversation(
    state: web::Data<AppState>,
    identity: Identity,
) -> AppResult<HttpResponse> {
    let me = staff_side(&identity)?;
    let conv = support_conversation(&state, me).await?;
    with_recent(&state, conv, me).await
}

async fn staff_messages(
    state: web::Data<AppState>,
    identity: Identity,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let me = staff_side(&identity)?;
    let conv = support_conversation(&state, me).await?;
    super::astrology::page_response(&state, conv.id, &q).await
}

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

async fn admin_conversation(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let identity = admin.identity;
    let conv = support_conversation(&state, super::parse_id(&path, "user id")?).await?;
    with_recent(&state, conv, identity.user_id()).await
}

async fn admin_messages(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let conv = support_conversation(&state, super::parse_id(&path, "user id")?).await?;
    super::astrology::page_response(&state, conv.id, &q).await
}

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

/// `POST /api/admin/calls/initiate`: `{astrologerId | calleeId | to, callType}`. Uses Agora
/// when it is configured and no provider is named (seed 002's apps join Agora channels).
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
    Ok(HttpResponse::Created().json(super::calls::initiated(ack)))
}
