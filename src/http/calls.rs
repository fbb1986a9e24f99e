//! Calls over REST (seed 001 and 002 routes): ICE servers and TURN credentials, initiate and
//! end through the same engine as sockets, call history, and admin call stats.

use super::openapi::{string_enum, BodyErrors, Done, Errors, IdInput, IdPath, UserIdPath};
use crate::auth::Identity;
use crate::db::calls::{self, CallRow, ParticipantRow};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::call::ice;
use crate::realtime::protocol::{CallInitiate, CallRef};
use crate::state::AppState;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

/// Registers the routes (mounted at the root and under `/api`).
pub(crate) fn routes(cfg: &mut super::Routes) {
    cfg.service(my_ice_servers)
        .service(ice_servers_for)
        .service(turn_credentials)
        .service(initiate)
        .service(history)
        .service(end)
        .service(get_call)
        .service(admin_stats)
        .service(admin_agora_token);
}

/// The `urls` of an ICE server: one URL or several.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum IceUrls {
    /// One URL.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// An ICE server as [`ice::ice_servers`] lists them (a STUN server has only `urls`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IceServer {
    /// `stun:` or `turn:` URLs.
    pub urls: IceUrls,
    /// TURN username.
    #[schema(nullable = false)]
    pub username: Option<String>,
    /// TURN password.
    #[schema(nullable = false)]
    pub credential: Option<String>,
}

/// `{success, iceServers}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IceAnswer {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// STUN and TURN servers.
    #[schema(value_type = Vec<IceServer>)]
    pub ice_servers: Value,
}

/// STUN/TURN servers with fresh TURN credentials
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = IceAnswer), Errors),
)]
#[get("/ice-servers")]
async fn my_ice_servers(state: web::Data<AppState>, identity: Identity) -> HttpResponse {
    HttpResponse::Ok().json(IceAnswer {
        success: true,
        ice_servers: ice::ice_servers(&state.config, identity.user_id(), None),
    })
}

/// ICE servers for a user (self, or any for admins)
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    params(UserIdPath),
    responses((status = 200, description = "Success", body = IceAnswer), Errors),
)]
#[get("/ice-servers/{user_id}")]
async fn ice_servers_for(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let user: i64 = path
        .trim()
        .parse()
        .map_err(|_| AppError::bad_request(ErrorCode::InvalidParameter, "userId must be an id"))?;
    if user != identity.user_id() && !identity.is_admin() {
        return Err(AppError::Forbidden(
            "ICE credentials are issued for your own user only".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(IceAnswer {
        success: true,
        ice_servers: ice::ice_servers(&state.config, user, None),
    }))
}

/// `POST /api/turn-credentials` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TurnBody {
    #[serde(default, deserialize_with = "crate::realtime::protocol::opt_id_field")]
    #[schema(value_type = IdInput, required = false)]
    user_id: Option<i64>,
    #[schema(nullable = false)]
    ttl: Option<u64>,
}

/// TURN REST credentials.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TurnAnswer {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// `<expiry>:<user id>`.
    pub username: String,
    /// HMAC of the username with `TURN_SECRET`.
    pub credential: String,
    /// Same as `credential`.
    #[schema(required = false)]
    pub password: String,
    /// Seconds the credential lasts.
    #[schema(value_type = i64)]
    pub ttl: u64,
    /// When it expires (Unix seconds).
    #[schema(required = false)]
    pub expires_at: i64,
    /// `TURN_URLS`.
    #[schema(required = false)]
    pub uris: Vec<String>,
    /// The ICE servers with this credential.
    #[schema(value_type = Vec<IceServer>, required = false)]
    pub ice_servers: Value,
}

/// TURN REST credentials (coturn `use-auth-secret`)
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    request_body = Option<TurnBody>,
    responses((status = 200, description = "Success", body = TurnAnswer), BodyErrors),
)]
#[post("/turn-credentials")]
async fn turn_credentials(
    state: web::Data<AppState>,
    identity: Identity,
    body: Option<web::Json<TurnBody>>,
) -> AppResult<HttpResponse> {
    let body = body.map(web::Json::into_inner).unwrap_or(TurnBody {
        user_id: None,
        ttl: None,
    });
    let user = body.user_id.unwrap_or(identity.user_id());
    if user != identity.user_id() && !identity.is_admin() {
        return Err(AppError::Forbidden(
            "TURN credentials are issued for your own user only".into(),
        ));
    }
    let config = &state.config;
    if config.turn_secret.is_empty() || config.turn_urls.0.is_empty() {
        return Err(AppError::Validation {
            code: ErrorCode::TurnNotConfigured,
            message: "TURN is not configured on this server".into(),
        });
    }
    let max = config.turn_ttl.as_secs();
    let ttl = body.ttl.unwrap_or(max).clamp(60, max.max(60));
    let expires = chrono::Utc::now().timestamp() + i64::try_from(ttl).unwrap_or(86_400);
    let cred = ice::turn_credential(config.turn_secret.expose(), &user.to_string(), expires);
    Ok(HttpResponse::Ok().json(TurnAnswer {
        success: true,
        username: cred.username,
        credential: cred.password.clone(),
        password: cred.password,
        ttl,
        expires_at: expires,
        uris: config.turn_urls.0.clone(),
        ice_servers: ice::ice_servers(config, user, Some(ttl)),
    }))
}

/// The answer to a call started over REST: the engine's ack as `call`, and at the top level
/// what seed 002's app reads — `callId`, `channelName`, `agoraToken` valid for uid 0 (the app
/// joins with uid 0), `agoraUid: 0` and `callType` `voice|video`.
pub(crate) fn initiated(ack: Value) -> Initiated {
    let agora = ack.get("channelName").is_some_and(|c| !c.is_null());
    let call_type = match ack.get("callType").and_then(Value::as_str) {
        Some("audio") => Some("voice".to_owned()),
        other => other.map(str::to_owned),
    };
    Initiated {
        success: true,
        call_id: ack["callId"].clone(),
        status: ack["status"].clone(),
        call_type,
        channel_name: ack.get("channelName").cloned(),
        agora_token: ack.get("agoraAnyUidToken").cloned(),
        agora_uid: agora.then_some(crate::realtime::call::agora::ANY_UID),
        call: ack,
    }
}

/// See [`initiated`]. The document describes `call` as the engine's ack ([`CallAck`]).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Initiated {
    /// Always true.
    #[schema(required = false)]
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
    #[schema(value_type = CallAck)]
    pub call: Value,
}

/// The engine's acknowledgement of a started call, as far as the document describes it.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CallAck {
    /// The call.
    pub call_id: String,
    /// `ringing`, `busy` or `glare`.
    pub status: String,
    /// STUN and TURN servers.
    #[schema(required = false)]
    pub ice_servers: Vec<IceServer>,
}

/// `POST /calls/initiate` body, as far as the document describes it (read into a
/// [`CallInitiate`]).
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct InitiateFields {
    /// The callee (1:1).
    #[schema(value_type = IdInput, required = false)]
    pub to: Option<i64>,
    /// The conversation (group call).
    #[schema(value_type = IdInput, required = false)]
    pub conversation_id: Option<i64>,
    /// Who of the conversation to ring.
    #[schema(value_type = Vec<IdInput>, required = false)]
    pub member_ids: Option<Vec<i64>>,
    /// `audio` (also `voice`) or `video`.
    #[schema(nullable = false, schema_with = call_type_schema)]
    pub call_type: Option<String>,
    /// Same as `callType: video`.
    #[schema(nullable = false)]
    pub is_video: Option<bool>,
    /// The caller's SDP offer.
    #[schema(value_type = Object, required = false)]
    pub sdp_offer: Option<Value>,
    /// `webrtc` or `agora`.
    #[schema(nullable = false, schema_with = provider_schema)]
    pub provider: Option<String>,
}

/// `callType` of a new call.
pub(crate) fn call_type_schema() -> utoipa::openapi::Object {
    string_enum(["audio", "voice", "video"])
}

/// `provider` of a new call.
fn provider_schema() -> utoipa::openapi::Object {
    string_enum(["webrtc", "agora"])
}

/// Start a call (1:1 with `to`, group with `conversationId`)
// `POST /api/calls/initiate` is seed 002's route, whose app joins Agora channels: without a
// `provider` the call uses Agora when it is configured (WebRTC otherwise), as its socket
// `call:initiate` does.
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    request_body = InitiateFields,
    responses((status = 201, description = "Success", body = Initiated), BodyErrors),
)]
#[post("/calls/initiate")]
async fn initiate(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<serde_json::Map<String, Value>>,
) -> AppResult<HttpResponse> {
    let mut fields = body.into_inner();
    crate::realtime::dialect::for_any_app(crate::realtime::events::CALL_INITIATE, &mut fields);
    let mut req: CallInitiate =
        serde_json::from_value(Value::Object(fields)).map_err(|e| AppError::Validation {
            code: ErrorCode::ValidationFailed,
            message: e.to_string().into(),
        })?;
    req.provider.get_or_insert_with(|| "auto".to_owned());
    // Started over REST: no device is bound to the caller until a socket sends `call:rejoin`.
    let ack = state.engine.start_call(&identity, 0, req).await?;
    Ok(HttpResponse::Created().json(initiated(ack)))
}

/// `POST /api/calls/:id/end` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct EndBody {
    #[schema(nullable = false)]
    reason: Option<String>,
}

/// End or cancel a call
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    params(IdPath),
    request_body = Option<EndBody>,
    responses((status = 200, description = "Success", body = Done), BodyErrors),
)]
#[post("/calls/{id}/end")]
async fn end(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    body: Option<web::Json<EndBody>>,
) -> AppResult<HttpResponse> {
    let reason = body.and_then(|b| b.into_inner().reason);
    state
        .engine
        .end_call(
            &identity,
            CallRef {
                call_id: path.into_inner(),
                sdp_answer: None,
                reason,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(Done::OK))
}

pub(crate) fn call_json(call: &CallRow, parties: &[ParticipantRow]) -> Value {
    json!(CallView::new(call, parties))
}

/// A call as clients see it (`Call` in the document).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Call)]
pub(crate) struct CallView {
    /// Id.
    pub id: String,
    /// Same as `id`.
    #[schema(required = false)]
    pub call_id: String,
    /// `direct` or `group`.
    #[serde(rename = "type")]
    #[schema(required = false)]
    pub kind: String,
    /// `audio` or `video`.
    #[schema(required = false)]
    pub call_type: String,
    /// `webrtc` or `agora`.
    #[schema(required = false)]
    pub provider: String,
    /// Agora channel.
    pub channel_name: Option<String>,
    /// Who called.
    pub caller_id: Option<String>,
    /// Group calls: the conversation.
    pub conversation_id: Option<String>,
    /// Status.
    pub status: String,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Who ended it.
    pub ended_by: Option<String>,
    /// Started.
    #[schema(required = false)]
    pub created_at: DateTime<Utc>,
    /// Answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds talked (0 before the end).
    #[schema(required = false, format = Int64)]
    pub duration: i32,
    /// The parties.
    pub participants: Vec<CallPartyView>,
}

/// A party of a call.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallPartyView {
    /// User id.
    pub user_id: String,
    /// `caller` or `callee`.
    pub role: String,
    /// The party's status.
    pub status: String,
    /// Joined.
    pub joined_at: Option<DateTime<Utc>>,
    /// Left.
    pub left_at: Option<DateTime<Utc>>,
}

impl CallView {
    /// The view of a call row and its parties.
    pub(crate) fn new(call: &CallRow, parties: &[ParticipantRow]) -> Self {
        Self {
            id: call.id.clone(),
            call_id: call.id.clone(),
            kind: call.kind.clone(),
            call_type: call.call_type.clone(),
            provider: call.provider.clone(),
            channel_name: call.channel_name.clone(),
            caller_id: call.caller_id.map(|c| c.to_string()),
            conversation_id: call.conversation_id.map(|c| c.to_string()),
            status: call.status.clone(),
            end_reason: call.end_reason.clone(),
            ended_by: call.ended_by.map(|c| c.to_string()),
            created_at: call.created_at,
            answered_at: call.answered_at,
            ended_at: call.ended_at,
            duration: call.duration_secs.unwrap_or(0),
            participants: parties
                .iter()
                .map(|p| CallPartyView {
                    user_id: p.user_id.to_string(),
                    role: p.role.clone(),
                    status: p.status.clone(),
                    joined_at: p.joined_at,
                    left_at: p.left_at,
                })
                .collect(),
        }
    }
}

/// `{success, call}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CallAnswer {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// The call.
    pub call: CallView,
}

/// One call with its participants
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, description = "Success", body = CallAnswer), Errors),
)]
#[get("/calls/{id}")]
async fn get_call(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<String>,
    req: HttpRequest,
) -> AppResult<HttpResponse> {
    let id = path.into_inner();
    let live = state.engine.calls.get(id.as_str());
    let stored = state.db.run(move |conn| calls::get(conn, &id)).await?;
    // A call rings before its record is written: a read right after `call:initiate` is
    // answered from the live call.
    let (call, parties) = match (stored, live) {
        (Some(found), _) => found,
        (None, Some(addr)) => addr
            .send(crate::realtime::call::actor::CurrentRecord)
            .await
            .map_err(|_| AppError::NotFound("call not found".into()))?,
        (None, None) => return Err(AppError::NotFound("call not found".into())),
    };
    if !identity.is_admin() && !parties.iter().any(|p| p.user_id == identity.user_id()) {
        return Err(AppError::Forbidden("not a party of this call".into()));
    }
    if super::astrology::wanted(&req, &state) {
        let mut shaped = super::astrology::calls_json(&state, vec![(call, parties)]).await?;
        return Ok(HttpResponse::Ok().json(json!({"success": true, "call": shaped.pop()})));
    }
    Ok(HttpResponse::Ok().json(CallAnswer {
        success: true,
        call: CallView::new(&call, &parties),
    }))
}

/// `GET /api/calls/history?cursor&limit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// `nextCursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Page size (default 20).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A page of calls, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallPage {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// The calls.
    pub calls: Vec<CallView>,
    /// `cursor` of the next page (null on the last).
    pub next_cursor: Option<String>,
}

/// The caller's calls, most recent first
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    params(HistoryQuery),
    responses((status = 200, description = "Success", body = CallPage), Errors),
)]
#[get("/calls/history")]
async fn history(
    state: web::Data<AppState>,
    identity: Identity,
    q: web::Query<HistoryQuery>,
    req: HttpRequest,
) -> AppResult<HttpResponse> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let before = call_cursor(q.cursor.as_deref())?;
    let user = identity.user_id();
    let rows = state
        .db
        .run(move |conn| calls::history(conn, user, before, limit + 1))
        .await?;
    if super::astrology::wanted(&req, &state) {
        let (shown, next) = page_of(rows, limit);
        let calls = super::astrology::calls_json(&state, shown).await?;
        return Ok(
            HttpResponse::Ok().json(json!({"success": true, "calls": calls, "nextCursor": next}))
        );
    }
    Ok(calls_page(rows, limit))
}

/// The first `limit` of `limit + 1` rows, newest first, and the cursor of the next page.
pub(crate) fn page_of<T>(
    mut rows: Vec<(CallRow, T)>,
    limit: i64,
) -> (Vec<(CallRow, T)>, Option<String>) {
    let take = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > take;
    rows.truncate(take);
    let next = more
        .then(|| rows.last())
        .flatten()
        .map(|(c, _)| format!("{}_{}", c.created_at.timestamp_micros(), c.id));
    (rows, next)
}

/// A call-list cursor (`<created_at µs>_<id>`, as `nextCursor` gives it); empty or absent: none.
pub(crate) fn call_cursor(
    cursor: Option<&str>,
) -> AppResult<Option<(chrono::DateTime<chrono::Utc>, String)>> {
    let Some(c) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let bad = || AppError::bad_request(ErrorCode::InvalidCursor, "cursor is not valid");
    let (ts, id) = c.split_once('_').ok_or_else(bad)?;
    let micros: i64 = ts.parse().map_err(|_| bad())?;
    let at = chrono::DateTime::from_timestamp_micros(micros)
        .filter(crate::db::storable_time)
        .ok_or_else(bad)?;
    Ok(Some((at, id.to_owned())))
}

/// One page of calls from `limit + 1` rows, newest first, with the cursor of the next page.
pub(crate) fn calls_page(rows: Vec<(CallRow, Vec<ParticipantRow>)>, limit: i64) -> HttpResponse {
    let (page, next) = page_of(rows, limit);
    HttpResponse::Ok().json(CallPage {
        success: true,
        calls: page.iter().map(|(c, p)| CallView::new(c, p)).collect(),
        next_cursor: next,
    })
}

/// A call in progress, in seed 001's call statistics.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LiveCall {
    /// The call id.
    pub room_name: String,
    /// Same as `roomName`.
    #[schema(required = false)]
    pub call_id: String,
    /// Numeric ids of the caller and every callee not out of the call.
    pub participants: Vec<i64>,
    /// `audio` or `video`.
    pub call_type: String,
    /// Seconds since the call started.
    pub duration: i64,
    /// Status.
    #[schema(required = false)]
    pub status: String,
    /// Started.
    #[schema(required = false)]
    pub started_at: DateTime<Utc>,
}

/// Seed 001's call statistics.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallStats {
    /// Calls in progress.
    #[schema(value_type = i64)]
    pub total_calls: usize,
    /// Same as `totalCalls`.
    #[schema(value_type = i64)]
    pub active_calls: usize,
    /// The calls, by `roomName`.
    #[schema(required = false)]
    pub calls: Vec<LiveCall>,
}

/// `{success, stats}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CallStatsAnswer {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// The statistics.
    pub stats: CallStats,
}

/// Call statistics (admin)
// Seed 001's call statistics: the calls in progress now. `totalCalls` counts them (so does
// `activeCalls`); each has its `roomName` (the call id), its `participants` as numeric user ids
// (the caller and every callee not out of the call), `callType`, and `duration`, the seconds
// since the call started (the legacy server counted from `call:initiate`), growing while it
// lasts. Past calls are in `GET /admin/calls`.
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = CallStatsAnswer), Errors),
)]
#[get("/admin/calls/stats")]
async fn admin_stats(state: web::Data<AppState>, identity: Identity) -> AppResult<HttpResponse> {
    if !identity.is_admin() {
        return Err(AppError::Forbidden("admin only".into()));
    }
    let live = state
        .engine
        .registry
        .send(crate::realtime::registry::LiveCalls)
        .await
        .map_err(|e| AppError::unavailable(format!("registry: {e}")))?;
    // Every call answers from memory, all at once.
    let records = futures_util::future::join_all(
        live.iter()
            .map(|(_, addr)| addr.send(crate::realtime::call::actor::CurrentRecord)),
    )
    .await;
    let now = state.engine.clock.now();
    let mut calls = Vec::with_capacity(records.len());
    // A call that ended while this was being collected is left out.
    for (row, parties) in records.into_iter().flatten() {
        if row.ended_at.is_some() {
            continue;
        }
        let participants: Vec<i64> = parties
            .iter()
            .filter(|p| matches!(p.status.as_str(), "joined" | "ringing" | "invited"))
            .map(|p| p.user_id)
            .collect();
        calls.push(LiveCall {
            room_name: row.id.clone(),
            call_id: row.id,
            participants,
            call_type: row.call_type,
            duration: (now - row.created_at).num_seconds().max(0),
            status: row.status,
            started_at: row.created_at,
        });
    }
    calls.sort_by(|a, b| a.room_name.cmp(&b.room_name));
    Ok(HttpResponse::Ok().json(CallStatsAnswer {
        success: true,
        stats: CallStats {
            total_calls: calls.len(),
            active_calls: calls.len(),
            calls,
        },
    }))
}

/// `POST /api/calls/admin/token` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgoraTokenBody {
    #[schema(nullable = false, max_length = 64)]
    channel_name: Option<String>,
    #[schema(required = false, value_type = i64, minimum = 0, maximum = 4_294_967_295_i64)]
    uid: Option<u32>,
}

/// An Agora RTC token.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgoraTokenAnswer {
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
    /// The channel.
    pub channel_name: String,
    /// The token.
    pub token: String,
    /// The uid it is for.
    #[schema(required = false, value_type = i64)]
    pub uid: u32,
    /// `AGORA_APP_ID`.
    #[schema(required = false)]
    pub app_id: String,
}

/// An Agora RTC token for a channel (admin)
// A fresh channel when none is given, for `uid` (by default the caller's own, or any uid for
// seed 002's app: see [`super::astrology::default_agora_uid`]).
#[utoipa::path(
    tag = "calls",
    security(("bearer" = [])),
    request_body = Option<AgoraTokenBody>,
    responses((status = 200, description = "Success", body = AgoraTokenAnswer), BodyErrors),
)]
#[post("/calls/admin/token")]
async fn admin_agora_token(
    state: web::Data<AppState>,
    identity: Identity,
    body: Option<web::Json<AgoraTokenBody>>,
    req: HttpRequest,
) -> AppResult<HttpResponse> {
    if !identity.is_admin() {
        return Err(AppError::Forbidden("admin only".into()));
    }
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    let channel = match body.channel_name.filter(|c| !c.trim().is_empty()) {
        Some(c) if c.len() <= 64 => c,
        Some(_) => {
            return Err(AppError::validation(
                "channelName must be at most 64 characters",
            ))
        }
        None => crate::auth::tokens::random_id()?,
    };
    let uid = body
        .uid
        .unwrap_or_else(|| super::astrology::default_agora_uid(&req, &state, identity.user_id()));
    let token = crate::realtime::call::agora::rtc_token_for(&state.config, &channel, uid)
        .ok_or_else(|| AppError::Validation {
            code: ErrorCode::AgoraNotConfigured,
            message: "Agora is not configured on this server".into(),
        })?
        .map_err(AppError::internal)?;
    Ok(HttpResponse::Ok().json(AgoraTokenAnswer {
        success: true,
        channel_name: channel,
        token,
        uid,
        app_id: state.config.agora_app_id.clone(),
    }))
}
