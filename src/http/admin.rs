//! The admin dashboard's REST API under `/api/admin/…` (role `admin` only; everyone else gets
//! 403 `forbidden`). Every action that changes something, and every moderation read of a
//! conversation, is written to the audit log (`GET /api/admin/audit`).
//!
//! - `GET /admin/stats`: online users, live connections by transport and dialect, active calls,
//!   messages in the last minute and today, calls today by outcome ("today" is since midnight UTC).
//! - Users: `GET /admin/users` (search and filters), `GET /admin/users/:id` (devices and live
//!   connections), `PATCH /admin/users/:id/roles`, `POST /admin/users/:id/ban|unban|logout`.
//! - Conversations: `GET /admin/conversations` (search), `GET /admin/messages?conversationId=`
//!   (moderation read), `DELETE /admin/messages/:id` (fans out `message:deleted`).
//! - Calls: `GET /admin/calls/live`, `GET /admin/calls` (history with filters),
//!   `POST /admin/calls/:id/end` (both sides get `call:ended` with reason `admin`).

use super::calls::call_json;
use super::conversations::{page_response, PageQuery};
use crate::auth::Identity;
use crate::db::admin::{self as q, CallFilter, ConversationFilter, UserFilter};
use crate::db::audit::{self, NewEntry};
use crate::db::models::User;
use crate::db::{conversations as convs, support};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::registry::{
    CallOfUser, ConnectionBreakdown, GetStats, LiveCallDetails, LiveCalls, OnlineUsers,
    UserConnections,
};
use crate::realtime::session::CLOSE_UNAUTHORIZED;
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;

/// Registers the routes (mounted at the root and under `/api`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.route("/admin/stats", web::get().to(stats))
        .route("/admin/users", web::get().to(list_users))
        .route("/admin/users/{id}", web::get().to(get_user))
        .route("/admin/users/{id}/roles", web::patch().to(set_roles))
        .route("/admin/users/{id}/roles", web::put().to(set_roles))
        .route("/admin/users/{id}/ban", web::post().to(ban))
        .route("/admin/users/{id}/unban", web::post().to(unban))
        .route("/admin/users/{id}/logout", web::post().to(force_logout))
        .route("/admin/conversations", web::get().to(list_conversations))
        .route("/admin/messages", web::get().to(read_messages))
        .route("/admin/messages/{id}", web::delete().to(delete_message))
        .route("/admin/calls/live", web::get().to(live_calls))
        .route("/admin/calls", web::get().to(call_history))
        .route("/admin/calls/{id}/end", web::post().to(end_call))
        .route("/admin/audit", web::get().to(audit_log));
}

/// An authenticated admin (extractor): 401 without a valid token, 403 `forbidden` for anyone
/// who does not hold the `admin` role.
#[derive(Debug)]
pub struct Admin {
    /// The admin.
    pub identity: Identity,
    /// Their address, for the audit log.
    pub ip: Option<String>,
}

impl FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let identity = Identity::from_request(req, payload);
        let ip = req.peer_addr().map(|a| a.ip().to_string());
        Box::pin(async move {
            let identity = identity.await?;
            if !identity.is_admin() {
                return Err(AppError::Forbidden("admin only".into()).into());
            }
            Ok(Self { identity, ip })
        })
    }
}

impl Admin {
    fn id(&self) -> i64 {
        self.identity.user_id()
    }

    fn entry(
        &self,
        action: &'static str,
        target_type: &'static str,
        target_id: impl ToString,
        details: Value,
    ) -> NewEntry {
        NewEntry {
            actor_id: self.id(),
            action,
            target_type,
            target_id: Some(target_id.to_string()),
            details,
            ip: self.ip.clone(),
        }
    }
}

async fn record(state: &AppState, entry: NewEntry) -> AppResult<()> {
    state.db.run(move |conn| audit::record(conn, &entry)).await
}

fn cursor_id(raw: Option<&str>) -> AppResult<Option<i64>> {
    match raw.filter(|c| !c.is_empty()) {
        Some(c) => c
            .parse::<i64>()
            .map(Some)
            .map_err(|_| AppError::bad_request(ErrorCode::InvalidCursor, "cursor is not valid")),
        None => Ok(None),
    }
}

async fn registry<M>(state: &AppState, msg: M) -> AppResult<M::Result>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    crate::realtime::registry::Registry: actix::Handler<M>,
{
    state
        .engine
        .registry
        .send(msg)
        .await
        .map_err(|e| AppError::unavailable(format!("registry: {e}")))
}

async fn stats(state: web::Data<AppState>, _admin: Admin) -> AppResult<HttpResponse> {
    let live = registry(&state, GetStats).await?;
    let pairs = registry(&state, ConnectionBreakdown).await?;
    let calls = registry(&state, LiveCalls).await?;
    let counts = state.db.run(|conn| q::counts(conn, Utc::now())).await?;
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "stats": {
            "onlineUsers": live.online_users,
            "connections": {
                "total": live.sessions,
                "byTransport": live.by_transport,
                "byDialect": live.by_dialect,
                "byTransportAndDialect": pairs.iter().map(|(t, d, n)| json!({
                    "transport": t, "dialect": d, "count": n,
                })).collect::<Vec<_>>(),
            },
            "activeCalls": calls.len(),
            "activeConversations": live.conversations,
            "messages": {
                "lastMinute": counts.messages_last_minute,
                "today": counts.messages_today,
            },
            "calls": {
                "today": counts.calls_today,
                "todayByOutcome": counts.calls_today_by_outcome,
            },
            "users": {"total": counts.users, "banned": counts.banned_users},
            "generatedAt": Utc::now(),
        }
    })))
}

fn admin_user_json(u: &User, connections: usize) -> Value {
    let mut v = json!(u.view());
    if let Some(obj) = v.as_object_mut() {
        obj.insert("bannedAt".into(), json!(u.banned_at));
        obj.insert("banReason".into(), json!(u.ban_reason));
        obj.insert("online".into(), json!(connections > 0));
        obj.insert("connections".into(), json!(connections));
    }
    v
}

/// `GET /admin/users` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsersQuery {
    #[serde(default, alias = "search", alias = "query")]
    q: Option<String>,
    role: Option<String>,
    team_role: Option<String>,
    banned: Option<bool>,
    online: Option<bool>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list_users(
    state: web::Data<AppState>,
    _admin: Admin,
    query: web::Query<UsersQuery>,
) -> AppResult<HttpResponse> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let online_ids = registry(&state, OnlineUsers).await?;
    let filter = UserFilter {
        q: query.q,
        role: query.role.map(|r| r.trim().to_ascii_lowercase()),
        team_role: query.team_role.map(|r| r.trim().to_ascii_lowercase()),
        banned: query.banned,
        online: query.online.map(|o| (o, online_ids.clone())),
        after: cursor_id(query.cursor.as_deref())?,
    };
    let rows = state
        .db
        .run(move |conn| q::search_users(conn, &filter, limit + 1))
        .await?;
    let has_more = rows.len() as i64 > limit;
    let page: Vec<&User> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(50))
        .collect();
    let next = if has_more {
        page.last().map(|u| u.id.to_string())
    } else {
        None
    };
    let users: Vec<Value> = page
        .iter()
        .map(|u| admin_user_json(u, usize::from(online_ids.binary_search(&u.id).is_ok())))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"success": true, "users": users, "nextCursor": next})))
}

async fn get_user(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "user id")?;
    let (user, devices) = state
        .db
        .run(move |conn| {
            let user = crate::db::accounts::user_by_id(conn, id)?
                .ok_or_else(|| AppError::NotFound("user not found".into()))?;
            Ok((user, q::device_sessions_of(conn, id)?))
        })
        .await?;
    let live = registry(&state, UserConnections(id)).await?;
    let call = registry(&state, CallOfUser(id)).await?;
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "deviceName": d.device_name,
                "userAgent": d.user_agent,
                "ip": d.ip,
                "createdAt": d.created_at,
                "lastUsedAt": d.last_used_at,
                "revokedAt": d.revoked_at,
                "revokedReason": d.revoked_reason,
                "liveConnections": live.iter().filter(|c| c.device_session.as_deref() == Some(d.id.as_str())).count(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "user": admin_user_json(&user, live.len()),
        "devices": devices,
        "connections": live,
        "activeCallId": call,
    })))
}

/// `PATCH /admin/users/:id/roles` body: either list replaces the stored one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolesBody {
    roles: Option<Vec<String>>,
    #[serde(alias = "team_roles")]
    team_roles: Option<Vec<String>>,
}

fn clean_roles(list: Option<Vec<String>>, what: &str) -> AppResult<Option<Vec<String>>> {
    let Some(list) = list else { return Ok(None) };
    if list.len() > 32 {
        return Err(AppError::validation(format!("at most 32 {what}")));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for r in list {
        let r = r.trim().to_ascii_lowercase();
        let ok = (1..=64).contains(&r.len())
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(AppError::validation(format!(
                "`{r}` is not a valid name for {what} (letters, digits, `_`, `-`)"
            )));
        }
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(Some(out))
}

/// Brings every support conversation's admin members up to date (after the admin set changed).
async fn resync_support(state: &AppState) -> AppResult<()> {
    let all = state.db.run(support::sync_all).await?;
    for (conv, members) in all {
        state.db.contact_cache().membership_changed(conv, &members);
        state.engine.members_changed(conv, members);
    }
    Ok(())
}

async fn set_roles(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<RolesBody>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "user id")?;
    let body = body.into_inner();
    let roles = clean_roles(body.roles, "roles")?;
    let team_roles = clean_roles(body.team_roles, "team roles")?;
    if roles.is_none() && team_roles.is_none() {
        return Err(AppError::validation("roles or teamRoles is required"));
    }
    if id == admin.id()
        && roles
            .as_ref()
            .is_some_and(|r| !r.iter().any(|x| x == "admin"))
    {
        return Err(AppError::validation(
            "you cannot remove your own admin role",
        ));
    }
    let entry = admin.entry("user.roles", "user", id, Value::Null);
    let (before, after) = state
        .db
        .run(move |conn| {
            conn.build_transaction().run(|conn| {
                let (before, after) =
                    q::set_roles(conn, id, roles.as_deref(), team_roles.as_deref())?;
                let details = json!({
                    "before": {"roles": before.role_list(), "teamRoles": before.team_role_list()},
                    "after": {"roles": after.role_list(), "teamRoles": after.team_role_list()},
                });
                audit::record(conn, &NewEntry { details, ..entry })?;
                Ok((before, after))
            })
        })
        .await?;
    // Roles decide contact under the `request` and `roles` policies.
    state.db.contact_cache().invalidate_users(&[id]);
    if before.has_role("admin") != after.has_role("admin") {
        resync_support(&state).await?;
    }
    // Live sockets carry the roles they connected with: a user who lost a role reconnects.
    let lost = before.role_list().iter().any(|r| !after.has_role(r));
    let closed = if lost {
        state
            .engine
            .kick(id, None, CLOSE_UNAUTHORIZED, "roles changed; reconnect")
            .await
    } else {
        0
    };
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "user": admin_user_json(&after, 0),
        "closedConnections": closed,
    })))
}

/// `POST /admin/users/:id/ban` body.
#[derive(Debug, Default, Deserialize)]
pub struct BanBody {
    reason: Option<String>,
}

async fn ban(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: Option<web::Json<BanBody>>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "user id")?;
    if id == admin.id() {
        return Err(AppError::validation("you cannot ban yourself"));
    }
    let reason = body
        .and_then(|b| b.into_inner().reason)
        .map(|r| r.trim().chars().take(500).collect::<String>())
        .filter(|r| !r.is_empty());
    let entry = admin.entry("user.ban", "user", id, json!({"reason": reason}));
    let user = state
        .db
        .run(move |conn| {
            conn.build_transaction().run(|conn| {
                let user = q::set_banned(conn, id, true, reason.as_deref())?;
                audit::record(conn, &entry)?;
                Ok(user)
            })
        })
        .await?;
    // A banned user cannot be called from now on.
    state.db.contact_cache().invalidate_users(&[id]);
    // A live call ends first (reason `admin` for every party), before the sockets drop.
    let mut call = registry(&state, CallOfUser(id)).await?;
    if let (None, Some(cluster)) = (&call, &state.engine.cluster) {
        // In cluster mode the call may run on another node.
        call = cluster.call_of(id).await;
    }
    if let Some(call) = call {
        if let Err(e) = state
            .engine
            .terminate_call(&call, "admin", Some(admin.id()))
            .await
        {
            tracing::debug!(call = %call, error = %e, "call of a banned user already over");
        }
    }
    // Tokens are refused from now on (authentication reads the ban); live sockets close now.
    let closed = state
        .engine
        .kick(id, None, CLOSE_UNAUTHORIZED, "account banned")
        .await;
    if user.has_role("admin") {
        resync_support(&state).await?;
    }
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "user": admin_user_json(&user, 0),
        "closedConnections": closed,
    })))
}

async fn unban(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "user id")?;
    let entry = admin.entry("user.unban", "user", id, json!({}));
    let user = state
        .db
        .run(move |conn| {
            conn.build_transaction().run(|conn| {
                let user = q::set_banned(conn, id, false, None)?;
                audit::record(conn, &entry)?;
                Ok(user)
            })
        })
        .await?;
    state.db.contact_cache().invalidate_users(&[id]);
    if user.has_role("admin") {
        resync_support(&state).await?;
    }
    Ok(HttpResponse::Ok().json(json!({"success": true, "user": admin_user_json(&user, 0)})))
}

async fn force_logout(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "user id")?;
    if id == admin.id() {
        // Like banning yourself: it would lock the dashboard out mid-action. `POST /auth/logout`
        // signs out one's own device.
        return Err(AppError::validation(
            "you cannot force-logout yourself; use /auth/logout",
        ));
    }
    let entry = admin.entry("user.logout", "user", id, Value::Null);
    let revoked = state
        .db
        .run(move |conn| {
            conn.build_transaction().run(|conn| {
                let revoked = q::force_logout(conn, id, "admin_logout")?;
                audit::record(
                    conn,
                    &NewEntry {
                        details: json!({"revokedSessions": revoked}),
                        ..entry
                    },
                )?;
                Ok(revoked)
            })
        })
        .await?;
    let closed = state
        .engine
        .kick(
            id,
            None,
            CLOSE_UNAUTHORIZED,
            "signed out by an administrator",
        )
        .await;
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "revokedSessions": revoked,
        "closedConnections": closed,
    })))
}

/// `GET /admin/conversations` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationsQuery {
    #[serde(default, alias = "search", alias = "query")]
    q: Option<String>,
    #[serde(default, alias = "type")]
    kind: Option<String>,
    user_id: Option<String>,
    context_type: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list_conversations(
    state: web::Data<AppState>,
    admin: Admin,
    query: web::Query<ConversationsQuery>,
) -> AppResult<HttpResponse> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(30).clamp(1, 100);
    let member = match query.user_id.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => Some(super::parse_id(u, "userId")?),
        None => None,
    };
    let filter = ConversationFilter {
        q: query.q,
        kind: query.kind.map(|k| k.trim().to_ascii_lowercase()),
        member,
        context_type: query.context_type,
        before_id: cursor_id(query.cursor.as_deref())?,
    };
    let viewer = admin.id();
    let (views, next) = state
        .db
        .run(move |conn| {
            let rows = q::search_conversations(conn, &filter, limit + 1)?;
            let has_more = rows.len() as i64 > limit;
            let page: Vec<_> = rows
                .into_iter()
                .take(usize::try_from(limit).unwrap_or(30))
                .collect();
            let next = if has_more {
                page.last().map(|c| c.id.to_string())
            } else {
                None
            };
            Ok((convs::views(conn, page, viewer)?, next))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "conversations": views,
        "nextCursor": next,
    })))
}

async fn read_messages(
    state: web::Data<AppState>,
    admin: Admin,
    query: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let id = query
        .conversation_id()
        .ok_or_else(|| AppError::validation("conversationId is required"))?;
    state
        .db
        .run(move |conn| convs::by_id(conn, id))
        .await?
        .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
    let response = page_response(&state, id, &query).await?;
    record(
        &state,
        admin.entry("conversation.read", "conversation", id, json!({})),
    )
    .await?;
    Ok(response)
}

async fn delete_message(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = super::parse_id(&path, "message id")?;
    let m = state
        .engine
        .delete_message(&admin.identity, id, None)
        .await?;
    record(
        &state,
        admin.entry(
            "message.delete",
            "message",
            id,
            json!({
                "conversationId": m.conversation_id.to_string(),
                "senderId": m.sender_id.map(|s| s.to_string()),
            }),
        ),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "message": m.view()})))
}

async fn live_calls(state: web::Data<AppState>, _admin: Admin) -> AppResult<HttpResponse> {
    let live = registry(&state, LiveCallDetails).await?;
    let ids: Vec<String> = live.iter().map(|c| c.call_id.clone()).collect();
    let rows = state
        .db
        .run(move |conn| q::calls_by_ids(conn, &ids))
        .await?;
    let calls: Vec<Value> = live
        .iter()
        .map(|info| {
            let stored = rows
                .iter()
                .find(|(c, _)| c.id == info.call_id)
                .map(|(c, p)| call_json(c, p));
            json!({
                "callId": info.call_id,
                "callerId": info.caller_id,
                "calleeIds": info.callee_ids,
                "group": info.group,
                "answered": info.answered,
                "call": stored,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"success": true, "calls": calls})))
}

/// `GET /admin/calls` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallsQuery {
    status: Option<String>,
    user_id: Option<String>,
    call_type: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn call_history(
    state: web::Data<AppState>,
    _admin: Admin,
    query: web::Query<CallsQuery>,
) -> AppResult<HttpResponse> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let before = super::calls::call_cursor(query.cursor.as_deref())?;
    let user = match query.user_id.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => Some(super::parse_id(u, "userId")?),
        None => None,
    };
    for (name, at) in [("since", &query.since), ("until", &query.until)] {
        if at.as_ref().is_some_and(|t| !crate::db::storable_time(t)) {
            return Err(AppError::bad_request(
                ErrorCode::InvalidParameter,
                format!("{name} is before the earliest time the server can store"),
            ));
        }
    }
    let filter = CallFilter {
        status: query.status.map(|s| s.trim().to_ascii_lowercase()),
        user,
        call_type: query.call_type.map(|t| t.trim().to_ascii_lowercase()),
        since: query.since,
        until: query.until,
        before,
    };
    let rows = state
        .db
        .run(move |conn| q::search_calls(conn, &filter, limit + 1))
        .await?;
    Ok(super::calls::calls_page(rows, limit))
}

/// `POST /admin/calls/:id/end` body.
#[derive(Debug, Default, Deserialize)]
pub struct EndBody {
    reason: Option<String>,
}

async fn end_call(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: Option<web::Json<EndBody>>,
) -> AppResult<HttpResponse> {
    let id = path.into_inner();
    let note = body
        .and_then(|b| b.into_inner().reason)
        .map(|r| r.chars().take(500).collect::<String>());
    state
        .engine
        .terminate_call(&id, "admin", Some(admin.id()))
        .await?;
    record(
        &state,
        admin.entry("call.end", "call", &id, json!({"note": note})),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "callId": id, "reason": "admin"})))
}

/// `GET /admin/audit` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    actor_id: Option<String>,
    action: Option<String>,
    target_type: Option<String>,
    target_id: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn audit_log(
    state: web::Data<AppState>,
    _admin: Admin,
    query: web::Query<AuditQuery>,
) -> AppResult<HttpResponse> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let actor_id = match query.actor_id.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(super::parse_id(a, "actorId")?),
        None => None,
    };
    let filter = audit::Filter {
        actor_id,
        action: query.action,
        target_type: query.target_type,
        target_id: query.target_id,
        before_id: cursor_id(query.cursor.as_deref())?,
    };
    let rows = state
        .db
        .run(move |conn| audit::list(conn, &filter, limit + 1))
        .await?;
    let has_more = rows.len() as i64 > limit;
    let page: Vec<_> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(50))
        .map(audit::AuditEntry::view)
        .collect();
    let next = if has_more {
        page.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"success": true, "entries": page, "nextCursor": next})))
}
