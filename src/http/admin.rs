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

use super::calls::CallView;
use super::conversations::{page_response, DeletedAnswer, MessagePage, PageQuery};
use super::openapi::{string_enum, BodyErrors, Errors, IdPath};
use crate::auth::Identity;
use crate::db::admin::{self as q, CallFilter, ConversationFilter, UserFilter};
use crate::db::audit::{self, AuditView, NewEntry};
use crate::db::conversations::ConversationView;
use crate::db::models::{User, UserView};
use crate::db::{conversations as convs, support};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::registry::{
    CallOfUser, ConnectionBreakdown, ConnectionInfo, GetStats, LiveCallDetails, LiveCalls,
    OnlineUsers, UserConnections,
};
use crate::realtime::session::CLOSE_UNAUTHORIZED;
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::{delete, get, patch, post, put, web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use utoipa::{IntoParams, ToSchema};

/// Registers the routes (mounted at the root and under `/api`).
pub(crate) fn routes(cfg: &mut super::Routes) {
    cfg.service(stats)
        .service(list_users)
        .service(get_user)
        .service(patch_roles)
        .service(put_roles)
        .service(ban)
        .service(unban)
        .service(force_logout)
        .service(list_conversations)
        .service(read_messages)
        .service(delete_message)
        .service(live_calls)
        .service(call_history)
        .service(end_call)
        .service(audit_log);
}

/// A user as the dashboard sees it (`AdminUser`): the user, ban details and live connections.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminUser)]
pub(crate) struct AdminUserView {
    /// The user.
    #[serde(flatten)]
    pub user: UserView,
    /// When the user was banned.
    #[schema(required = false)]
    pub banned_at: Option<DateTime<Utc>>,
    /// Why.
    #[schema(required = false)]
    pub ban_reason: Option<String>,
    /// Whether the user has a live connection.
    pub online: bool,
    /// Live connections.
    #[schema(value_type = i64)]
    pub connections: usize,
}

impl AdminUserView {
    fn new(u: &User, connections: usize) -> Self {
        Self {
            user: u.view(),
            banned_at: u.banned_at,
            ban_reason: u.ban_reason.clone(),
            online: connections > 0,
            connections,
        }
    }
}

/// A device session as the dashboard sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DeviceSession)]
pub(crate) struct DeviceView {
    /// Id.
    pub id: String,
    /// Label the client sent.
    pub device_name: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// Address.
    pub ip: Option<String>,
    /// Login.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// Live connections of this session.
    #[schema(value_type = i64)]
    pub live_connections: usize,
}

/// Connections of one transport and dialect.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConnectionPair {
    /// Transport.
    pub transport: &'static str,
    /// Dialect.
    pub dialect: &'static str,
    /// Connections.
    #[schema(value_type = i64)]
    pub count: usize,
}

/// Live connections.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionStats {
    /// All.
    #[schema(value_type = i64)]
    pub total: usize,
    /// By transport.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub by_transport: BTreeMap<&'static str, usize>,
    /// By dialect.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub by_dialect: BTreeMap<&'static str, usize>,
    /// By both.
    pub by_transport_and_dialect: Vec<ConnectionPair>,
}

/// Messages committed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageCounts {
    /// In the last 60 seconds.
    pub last_minute: i64,
    /// Since midnight UTC.
    pub today: i64,
}

/// Calls started.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallCounts {
    /// Since midnight UTC.
    pub today: i64,
    /// Since midnight UTC, by current status.
    pub today_by_outcome: BTreeMap<String, i64>,
}

/// Registered users.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserCounts {
    /// All.
    pub total: i64,
    /// Banned.
    pub banned: i64,
}

/// The stats page.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Stats)]
pub(crate) struct StatsView {
    /// Users with a live connection.
    #[schema(value_type = i64)]
    pub online_users: usize,
    /// Live connections.
    pub connections: ConnectionStats,
    /// Calls in progress.
    #[schema(value_type = i64)]
    pub active_calls: usize,
    /// Conversations with a live member.
    #[schema(value_type = i64)]
    pub active_conversations: usize,
    /// Messages.
    pub messages: MessageCounts,
    /// Calls.
    pub calls: CallCounts,
    /// Users.
    pub users: UserCounts,
    /// When.
    pub generated_at: DateTime<Utc>,
}

/// `{success, stats}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsAnswer {
    /// Always true.
    pub success: bool,
    /// The counts.
    pub stats: StatsView,
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdminUserPage {
    /// Always true.
    pub success: bool,
    /// By ascending id.
    pub users: Vec<AdminUserView>,
    /// `cursor` of the next page (null on the last).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One user in detail.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdminUserDetail {
    /// Always true.
    pub success: bool,
    /// The user.
    pub user: AdminUserView,
    /// Device sessions.
    pub devices: Vec<DeviceView>,
    /// Live connections.
    pub connections: Vec<ConnectionInfo>,
    /// The call the user is in.
    #[schema(required = true)]
    pub active_call_id: Option<String>,
}

/// A user after a role or ban change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdminUserChange {
    /// Always true.
    pub success: bool,
    /// The user.
    pub user: AdminUserView,
    /// Sockets closed.
    #[schema(value_type = i64)]
    pub closed_connections: usize,
}

/// A user after an unban.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdminUserAnswer {
    /// Always true.
    pub success: bool,
    /// The user.
    pub user: AdminUserView,
}

/// A forced logout.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoggedOutEverywhere {
    /// Always true.
    pub success: bool,
    /// Device sessions revoked.
    #[schema(value_type = i64)]
    pub revoked_sessions: usize,
    /// Sockets closed.
    #[schema(value_type = i64)]
    pub closed_connections: usize,
}

/// A page of conversations.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdminConversationPage {
    /// Always true.
    pub success: bool,
    /// Newest first.
    pub conversations: Vec<ConversationView>,
    /// `cursor` of the next page (null on the last).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A call in progress with its parties (`CallSummary`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CallSummary)]
pub(crate) struct LiveCallView {
    /// The call.
    pub call_id: String,
    /// Who called.
    pub caller_id: String,
    /// Who was called.
    pub callee_ids: Vec<String>,
    /// A group call.
    pub group: bool,
    /// Answered yet.
    pub answered: bool,
    /// The stored call.
    #[schema(required = false)]
    pub call: Option<CallView>,
}

/// Calls in progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LiveCallList {
    /// Always true.
    pub success: bool,
    /// The calls.
    pub calls: Vec<LiveCallView>,
}

/// A page of calls.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdminCallPage {
    /// Always true.
    pub success: bool,
    /// Newest first.
    pub calls: Vec<CallView>,
    /// `cursor` of the next page (null on the last).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A call an admin ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallEnded {
    /// Always true.
    pub success: bool,
    /// The call.
    pub call_id: String,
    /// `admin`.
    #[schema(schema_with = admin_reason_schema)]
    pub reason: &'static str,
}

/// `reason` of [`CallEnded`].
fn admin_reason_schema() -> utoipa::openapi::Object {
    string_enum(["admin"])
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditPage {
    /// Always true.
    pub success: bool,
    /// Newest first.
    pub entries: Vec<AuditView>,
    /// `cursor` of the next page (null on the last).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Role names.
fn role_list_schema() -> utoipa::openapi::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some("^[A-Za-z0-9_-]{1,64}$")),
        )
        .max_items(Some(32))
        .build()
}

/// `PATCH|PUT /admin/users/:id/roles` body in the document: either list, or both.
impl utoipa::PartialSchema for RolesBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, SchemaType};
        use utoipa::openapi::ObjectBuilder;
        let named = |field: &str| {
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .required(field)
        };
        AllOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .property("roles", role_list_schema())
                    .property("teamRoles", role_list_schema()),
            )
            .item(
                AnyOfBuilder::new()
                    .item(named("roles"))
                    .item(named("teamRoles")),
            )
            .into()
    }
}

impl ToSchema for RolesBody {}

/// An authenticated admin (extractor): 401 without a valid token, 403 `forbidden` for anyone
/// who does not hold the `admin` role.
#[derive(Debug)]
pub(crate) struct Admin {
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

/// Live and daily counts: users online, connections by transport and dialect, calls, messages
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = StatsAnswer), Errors),
)]
#[get("/admin/stats")]
async fn stats(state: web::Data<AppState>, _admin: Admin) -> AppResult<HttpResponse> {
    let live = registry(&state, GetStats).await?;
    let pairs = registry(&state, ConnectionBreakdown).await?;
    let calls = registry(&state, LiveCalls).await?;
    let counts = state.db.run(|conn| q::counts(conn, Utc::now())).await?;
    Ok(HttpResponse::Ok().json(StatsAnswer {
        success: true,
        stats: StatsView {
            online_users: live.online_users,
            connections: ConnectionStats {
                total: live.sessions,
                by_transport: live.by_transport.into_iter().collect(),
                by_dialect: live.by_dialect.into_iter().collect(),
                by_transport_and_dialect: pairs
                    .iter()
                    .map(|(transport, dialect, count)| ConnectionPair {
                        transport,
                        dialect,
                        count: *count,
                    })
                    .collect(),
            },
            active_calls: calls.len(),
            active_conversations: live.conversations,
            messages: MessageCounts {
                last_minute: counts.messages_last_minute,
                today: counts.messages_today,
            },
            calls: CallCounts {
                today: counts.calls_today,
                today_by_outcome: counts.calls_today_by_outcome,
            },
            users: UserCounts {
                total: counts.users,
                banned: counts.banned_users,
            },
            generated_at: Utc::now(),
        },
    }))
}

/// `GET /admin/users` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct UsersQuery {
    /// Name, phone or e-mail contains this (also `search` or `query`).
    #[serde(default, alias = "search", alias = "query")]
    #[param(nullable = false)]
    q: Option<String>,
    /// Holds this role.
    #[param(nullable = false)]
    role: Option<String>,
    /// Holds this team role.
    #[param(nullable = false)]
    team_role: Option<String>,
    /// Banned (true) or not (false).
    #[param(nullable = false)]
    banned: Option<bool>,
    /// With (true) or without (false) a live connection.
    #[param(nullable = false)]
    online: Option<bool>,
    /// `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// Search users by ascending id, with filters
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(UsersQuery),
    responses((status = 200, description = "Success", body = AdminUserPage), Errors),
)]
#[get("/admin/users")]
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
    let users: Vec<AdminUserView> = page
        .iter()
        .map(|u| AdminUserView::new(u, usize::from(online_ids.binary_search(&u.id).is_ok())))
        .collect();
    Ok(HttpResponse::Ok().json(AdminUserPage {
        success: true,
        users,
        next_cursor: next,
    }))
}

/// One user with device sessions, live connections and current call
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = AdminUserDetail), Errors),
)]
#[get("/admin/users/{id}")]
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
    let devices: Vec<DeviceView> = devices
        .iter()
        .map(|d| DeviceView {
            id: d.id.clone(),
            device_name: d.device_name.clone(),
            user_agent: d.user_agent.clone(),
            ip: d.ip.clone(),
            created_at: d.created_at,
            last_used_at: d.last_used_at,
            revoked_at: d.revoked_at,
            revoked_reason: d.revoked_reason.clone(),
            live_connections: live
                .iter()
                .filter(|c| c.device_session.as_deref() == Some(d.id.as_str()))
                .count(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(AdminUserDetail {
        success: true,
        user: AdminUserView::new(&user, live.len()),
        devices,
        connections: live,
        active_call_id: call,
    }))
}

/// `PATCH /admin/users/:id/roles` body: either list replaces the stored one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolesBody {
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

/// Replace roles and/or team roles (users who lose a role are disconnected)
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    request_body = RolesBody,
    responses((status = 200, description = "Success", body = AdminUserChange), BodyErrors),
)]
#[patch("/admin/users/{id}/roles")]
async fn patch_roles(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<RolesBody>,
) -> AppResult<HttpResponse> {
    set_roles(state, admin, path, body).await
}

/// Replace roles and/or team roles (same as PATCH)
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    request_body = RolesBody,
    responses((status = 200, description = "Success", body = AdminUserChange), BodyErrors),
)]
#[put("/admin/users/{id}/roles")]
async fn put_roles(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<RolesBody>,
) -> AppResult<HttpResponse> {
    set_roles(state, admin, path, body).await
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
    Ok(HttpResponse::Ok().json(AdminUserChange {
        success: true,
        user: AdminUserView::new(&after, 0),
        closed_connections: closed,
    }))
}

/// `POST /admin/users/:id/ban` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct BanBody {
    reason: Option<String>,
}

/// Ban a user: ends their call, refuses their tokens, closes their sockets
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    request_body = Option<BanBody>,
    responses((status = 200, description = "Success", body = AdminUserChange), BodyErrors),
)]
#[post("/admin/users/{id}/ban")]
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
    Ok(HttpResponse::Ok().json(AdminUserChange {
        success: true,
        user: AdminUserView::new(&user, 0),
        closed_connections: closed,
    }))
}

/// Lift a ban
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = AdminUserAnswer), Errors),
)]
#[post("/admin/users/{id}/unban")]
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
    Ok(HttpResponse::Ok().json(AdminUserAnswer {
        success: true,
        user: AdminUserView::new(&user, 0),
    }))
}

/// Sign a user out everywhere: revoke device sessions and earlier tokens, close sockets
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = LoggedOutEverywhere), Errors),
)]
#[post("/admin/users/{id}/logout")]
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
    Ok(HttpResponse::Ok().json(LoggedOutEverywhere {
        success: true,
        revoked_sessions: revoked,
        closed_connections: closed,
    }))
}

/// `GET /admin/conversations` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct ConversationsQuery {
    /// Title, or a member's name or phone, contains this (also `search` or `query`).
    #[serde(default, alias = "search", alias = "query")]
    #[param(nullable = false)]
    q: Option<String>,
    /// Conversation type (also `kind`).
    #[serde(default, alias = "type")]
    #[param(rename = "type", nullable = false, schema_with = conversation_kind_schema)]
    kind: Option<String>,
    /// Has this member.
    #[param(nullable = false, pattern = "^[0-9]{1,18}$")]
    user_id: Option<String>,
    /// Carries this context type.
    #[param(nullable = false)]
    context_type: Option<String>,
    /// `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 30, at most 100).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `type` of [`ConversationsQuery`].
fn conversation_kind_schema() -> utoipa::openapi::Object {
    string_enum(["direct", "group", "team", "support"])
}

/// Search conversations, newest first
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(ConversationsQuery),
    responses((status = 200, description = "Success", body = AdminConversationPage), Errors),
)]
#[get("/admin/conversations")]
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
    Ok(HttpResponse::Ok().json(AdminConversationPage {
        success: true,
        conversations: views,
        next_cursor: next,
    }))
}

/// `conversationId` of `GET /admin/messages` (read into [`PageQuery`]).
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// The conversation (required).
    #[param(rename = "conversationId", nullable = false, minimum = 1)]
    pub conversation_id: Option<i64>,
}

/// Read any conversation's messages (recorded in the audit log)
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(PageQuery, ReadQuery),
    responses((status = 200, description = "Success", body = MessagePage), Errors),
)]
#[get("/admin/messages")]
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

/// Delete any message (fans out `message:deleted`)
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = DeletedAnswer), Errors),
)]
#[delete("/admin/messages/{id}")]
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
    Ok(HttpResponse::Ok().json(DeletedAnswer {
        success: true,
        message: m.view(),
    }))
}

/// Calls in progress with their parties
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = LiveCallList), Errors),
)]
#[get("/admin/calls/live")]
async fn live_calls(state: web::Data<AppState>, _admin: Admin) -> AppResult<HttpResponse> {
    let live = registry(&state, LiveCallDetails).await?;
    let ids: Vec<String> = live.iter().map(|c| c.call_id.clone()).collect();
    let rows = state
        .db
        .run(move |conn| q::calls_by_ids(conn, &ids))
        .await?;
    let calls: Vec<LiveCallView> = live
        .iter()
        .map(|info| LiveCallView {
            call_id: info.call_id.clone(),
            caller_id: info.caller_id.clone(),
            callee_ids: info.callee_ids.clone(),
            group: info.group,
            answered: info.answered,
            call: rows
                .iter()
                .find(|(c, _)| c.id == info.call_id)
                .map(|(c, p)| CallView::new(c, p)),
        })
        .collect();
    Ok(HttpResponse::Ok().json(LiveCallList {
        success: true,
        calls,
    }))
}

/// `GET /admin/calls` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct CallsQuery {
    /// Final or current status.
    #[param(nullable = false)]
    status: Option<String>,
    /// A party of the call.
    #[param(nullable = false, pattern = "^[0-9]{1,18}$")]
    user_id: Option<String>,
    /// Audio or video.
    #[param(nullable = false, schema_with = media_kind_schema)]
    call_type: Option<String>,
    /// Started at or after.
    #[param(nullable = false)]
    since: Option<DateTime<Utc>>,
    /// Started before.
    #[param(nullable = false)]
    until: Option<DateTime<Utc>>,
    /// `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[0-9]{1,18}_.+$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `callType` of [`CallsQuery`].
fn media_kind_schema() -> utoipa::openapi::Object {
    string_enum(["audio", "video"])
}

/// Call history, newest first, with filters
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(CallsQuery),
    responses((status = 200, description = "Success", body = AdminCallPage), Errors),
)]
#[get("/admin/calls")]
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
    let (page, next) = super::calls::page_of(rows, limit);
    Ok(HttpResponse::Ok().json(AdminCallPage {
        success: true,
        calls: page.iter().map(|(c, p)| CallView::new(c, p)).collect(),
        next_cursor: next,
    }))
}

/// `POST /admin/calls/:id/end` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(as = AdminEndBody)]
pub(crate) struct EndBody {
    /// A note for the audit log.
    reason: Option<String>,
}

/// End a live call for every party (reason `admin`)
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(IdPath),
    request_body = Option<EndBody>,
    responses((status = 200, description = "Success", body = CallEnded), BodyErrors),
)]
#[post("/admin/calls/{id}/end")]
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
    Ok(HttpResponse::Ok().json(CallEnded {
        success: true,
        call_id: id,
        reason: "admin",
    }))
}

/// `GET /admin/audit` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// The admin who acted.
    #[param(nullable = false, pattern = "^[0-9]{1,18}$")]
    actor_id: Option<String>,
    /// Action, e.g. `user.ban`.
    #[param(nullable = false)]
    action: Option<String>,
    /// `user`, `conversation`, `message` or `call`.
    #[param(nullable = false)]
    target_type: Option<String>,
    /// Id of the target.
    #[param(nullable = false)]
    target_id: Option<String>,
    /// `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// The audit log of admin actions, newest first
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, description = "Success", body = AuditPage), Errors),
)]
#[get("/admin/audit")]
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
    Ok(HttpResponse::Ok().json(AuditPage {
        success: true,
        entries: page,
        next_cursor: next,
    }))
}
