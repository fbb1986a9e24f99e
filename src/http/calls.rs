//! Calls over REST (seed 001 and 002 routes): ICE servers and TURN credentials, initiate and
//! end through the same engine as sockets, call history, and admin call stats.

use crate::auth::Identity;
use crate::db::calls::{self, CallRow, ParticipantRow};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::call::ice;
use crate::realtime::protocol::{CallInitiate, CallRef};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

/// Registers the routes (mounted at the root and under `/api`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.route("/ice-servers", web::get().to(my_ice_servers))
        .route("/ice-servers/{user_id}", web::get().to(ice_servers_for))
        .route("/turn-credentials", web::post().to(turn_credentials))
        .route("/calls/initiate", web::post().to(initiate))
        .route("/calls/history", web::get().to(history))
        .route("/calls/{id}/end", web::post().to(end))
        .route("/calls/{id}", web::get().to(get_call))
        .route("/admin/calls/stats", web::get().to(admin_stats))
        .route("/calls/admin/token", web::post().to(admin_agora_token));
}

async fn my_ice_servers(state: web::Data<AppState>, identity: Identity) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "success": true,
        "iceServers": ice::ice_servers(&state.config, identity.user_id(), None),
    }))
}

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
    Ok(HttpResponse::Ok()
        .json(json!({"success": true, "iceServers": ice::ice_servers(&state.config, user, None)})))
}

/// `POST /api/turn-credentials` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnBody {
    #[serde(default, deserialize_with = "crate::realtime::protocol::opt_id_field")]
    user_id: Option<i64>,
    ttl: Option<u64>,
}

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
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "username": cred.username,
        "credential": cred.password,
        "password": cred.password,
        "ttl": ttl,
        "expiresAt": expires,
        "uris": config.turn_urls.0,
        "iceServers": ice::ice_servers(config, user, Some(ttl)),
    })))
}

/// The answer to a call started over REST: the engine's ack as `call`, and at the top level
/// what seed 002's app reads — `callId`, `channelName`, `agoraToken` valid for uid 0 (the app
/// joins with uid 0), `agoraUid: 0` and `callType` `voice|video`.
pub(crate) fn initiated_json(ack: Value) -> Value {
    let agora = ack.get("channelName").is_some_and(|c| !c.is_null());
    let call_type = match ack.get("callType").and_then(Value::as_str) {
        Some("audio") => Some("voice"),
        other => other,
    };
    json!({
        "success": true,
        "callId": ack["callId"],
        "status": ack["status"],
        "callType": call_type,
        "channelName": ack.get("channelName"),
        "agoraToken": ack.get("agoraAnyUidToken"),
        "agoraUid": agora.then_some(crate::realtime::call::agora::ANY_UID),
        "call": ack,
    })
}

/// `POST /api/calls/initiate` is seed 002's route, whose app joins Agora channels: without a
/// `provider` the call uses Agora when it is configured (WebRTC otherwise), as its socket
/// `call:initiate` does.
async fn initiate(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<CallInitiate>,
) -> AppResult<HttpResponse> {
    let mut req = body.into_inner();
    req.provider.get_or_insert_with(|| "auto".to_owned());
    // Started over REST: no device is bound to the caller until a socket sends `call:rejoin`.
    let ack = state.engine.start_call(&identity, 0, req).await?;
    Ok(HttpResponse::Created().json(initiated_json(ack)))
}

/// `POST /api/calls/:id/end` body.
#[derive(Debug, Default, Deserialize)]
pub struct EndBody {
    reason: Option<String>,
}

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
    Ok(HttpResponse::Ok().json(json!({"success": true})))
}

pub(crate) fn call_json(call: &CallRow, parties: &[ParticipantRow]) -> Value {
    json!({
        "id": call.id,
        "callId": call.id,
        "type": call.kind,
        "callType": call.call_type,
        "provider": call.provider,
        "channelName": call.channel_name,
        "callerId": call.caller_id.map(|c| c.to_string()),
        "conversationId": call.conversation_id.map(|c| c.to_string()),
        "status": call.status,
        "endReason": call.end_reason,
        "endedBy": call.ended_by.map(|c| c.to_string()),
        "createdAt": call.created_at,
        "answeredAt": call.answered_at,
        "endedAt": call.ended_at,
        "duration": call.duration_secs.unwrap_or(0),
        "participants": parties.iter().map(|p| json!({
            "userId": p.user_id.to_string(),
            "role": p.role,
            "status": p.status,
            "joinedAt": p.joined_at,
            "leftAt": p.left_at,
        })).collect::<Vec<_>>(),
    })
}

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
    Ok(HttpResponse::Ok().json(json!({"success": true, "call": call_json(&call, &parties)})))
}

/// `GET /api/calls/history?cursor&limit`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

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
fn page_of<T>(mut rows: Vec<(CallRow, T)>, limit: i64) -> (Vec<(CallRow, T)>, Option<String>) {
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
    HttpResponse::Ok().json(json!({
        "success": true,
        "calls": page.iter().map(|(c, p)| call_json(c, p)).collect::<Vec<_>>(),
        "nextCursor": next,
    }))
}

/// Seed 001's call statistics: the calls in progress now. `totalCalls` counts them (so does
/// `activeCalls`); each has its `roomName` (the call id), its `participants` as numeric user ids
/// (the caller and every callee not out of the call), `callType`, and `duration`, the seconds
/// since the call started (the legacy server counted from `call:initiate`), growing while it
/// lasts. Past calls are in `GET /admin/calls`.
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
        calls.push(json!({
            "roomName": row.id,
            "callId": row.id,
            "participants": participants,
            "callType": row.call_type,
            "duration": (now - row.created_at).num_seconds().max(0),
            "status": row.status,
            "startedAt": row.created_at,
        }));
    }
    calls.sort_by(|a, b| a["roomName"].as_str().cmp(&b["roomName"].as_str()));
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "stats": {
            "totalCalls": calls.len(),
            "activeCalls": calls.len(),
            "calls": calls,
        }
    })))
}

/// `POST /api/calls/admin/token` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgoraTokenBody {
    channel_name: Option<String>,
    uid: Option<u32>,
}

/// Admin: an Agora RTC token for a channel (a fresh channel when none is given), for `uid`
/// (by default the caller's own, or any uid for seed 002's app: see
/// [`super::astrology::default_agora_uid`]).
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
    Ok(HttpResponse::Ok().json(json!({"success": true, "channelName": channel, "token": token, "uid": uid, "appId": state.config.agora_app_id})))
}
