//! Liveness and readiness: `/ping`, `/health` (touches the database), `/api/health` (seed 001).

use crate::error::{ErrorCode, ErrorDetail};
use crate::state::AppState;
use actix_web::{get, web, HttpResponse};
use diesel::RunQueryDsl;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

/// Liveness: `pong`
#[utoipa::path(
    tag = "health",
    responses((status = 200, description = "Success", body = String, content_type = "text/plain")),
)]
#[get("/ping")]
pub(crate) async fn ping() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("pong")
}

/// Connections of the database pool, in `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PoolUsage {
    /// Connections lent out.
    pub in_use: u32,
    /// Connections waiting in the pool.
    pub idle: u32,
}

/// `GET /health` while the database answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Healthy {
    /// `ok`.
    pub status: &'static str,
    /// `ok`.
    pub db: &'static str,
    /// Seconds since the server started.
    #[schema(required = false)]
    pub uptime: f64,
    /// The database pool.
    pub db_pool: PoolUsage,
    /// Cluster mode (`single`, or `cluster` with this node, the nodes seen and Redis's state).
    #[schema(value_type = Object)]
    pub cluster: Value,
}

/// `GET /health` when the database cannot answer (503).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Degraded {
    /// `degraded`.
    pub status: &'static str,
    /// `down`.
    pub db: &'static str,
    /// Seconds since the server started.
    pub uptime: f64,
    /// Cluster mode, as in [`Healthy`].
    #[schema(value_type = Object)]
    pub cluster: Value,
    /// Why.
    #[schema(value_type = Object, required = false)]
    pub error: ErrorDetail,
}

/// Readiness: touches the database
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "Success", body = Healthy),
        (status = 503, description = "The database does not answer", body = Degraded),
    ),
)]
#[get("/health")]
pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
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
        Ok(_) => HttpResponse::Ok().json(Healthy {
            status: "ok",
            db: "ok",
            uptime,
            db_pool: PoolUsage { in_use: busy, idle },
            cluster,
        }),
        Err(e) => {
            tracing::warn!(error = ?e, "health check: database unavailable");
            HttpResponse::ServiceUnavailable().json(Degraded {
                status: "degraded",
                db: "down",
                uptime,
                cluster,
                error: ErrorDetail {
                    code: ErrorCode::Unavailable,
                    message: "database unavailable".to_owned(),
                    retry_after: None,
                },
            })
        }
    }
}

/// `GET /api/health` exactly as seed 001 documents it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SeedHealth {
    /// `ok`.
    pub status: &'static str,
    /// Now (RFC 3339, milliseconds).
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Seconds since the server started.
    pub uptime: f64,
}

/// Seed 001 health: status, timestamp, uptime
#[utoipa::path(
    tag = "health",
    responses((status = 200, description = "Success", body = SeedHealth)),
)]
#[get("/api/health")]
pub(crate) async fn api_health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(SeedHealth {
        status: "ok",
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        uptime: state.started.elapsed().as_secs_f64(),
    })
}
