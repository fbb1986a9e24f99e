//! Liveness and readiness: `/ping`, `/health` (touches the database), `/api/health` (seed 001).

use crate::error::ErrorCode;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use diesel::RunQueryDsl;
use serde_json::json;

/// `GET /ping` → `pong`.
pub async fn ping() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("pong")
}

/// `GET /health`: runs `SELECT 1`; 503 with `db: "down"` when the database cannot answer.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let probe = state
        .db
        .run(|conn| Ok(diesel::sql_query("SELECT 1").execute(conn)?))
        .await;
    let (busy, idle) = state.db.usage();
    let uptime = state.started.elapsed().as_secs_f64();
    let cluster = state
        .engine
        .cluster
        .as_ref()
        .map_or_else(|| json!({"mode": "single"}), |c| json!(c.status()));
    match probe {
        Ok(_) => HttpResponse::Ok().json(json!({
            "status": "ok",
            "db": "ok",
            "uptime": uptime,
            "dbPool": {"inUse": busy, "idle": idle},
            "cluster": cluster,
        })),
        Err(e) => {
            tracing::warn!(error = ?e, "health check: database unavailable");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "degraded",
                "db": "down",
                "uptime": uptime,
                "cluster": cluster,
                "error": {"code": ErrorCode::Unavailable, "message": "database unavailable"},
            }))
        }
    }
}

/// `GET /api/health` exactly as seed 001 documents: `{status, timestamp, uptime}`.
pub async fn api_health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "uptime": state.started.elapsed().as_secs_f64(),
    }))
}
