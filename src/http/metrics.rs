//! `GET /metrics`: Prometheus text exposition of [`crate::metrics::Metrics`], optionally behind
//! a bearer token (`METRICS_TOKEN`).

use crate::error::{AppError, ErrorCode};
use crate::metrics::Snapshot;
use crate::realtime::registry::GetStats;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};

/// How long a scrape waits for the registry's counts (a wedged registry must not wedge the
/// scrape; the counts are then reported as zero).
pub(crate) const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The exposition format's content type (the Prometheus text format, version 0.0.4).
pub(crate) const CONTENT_TYPE: &str = crate::metrics::CONTENT_TYPE;

/// `GET /metrics`. With `METRICS_TOKEN` set, answers 401 unless `Authorization: Bearer` carries
/// it.
pub(crate) async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let expected = state.config.metrics_token.expose();
    if !expected.is_empty() {
        let given = super::bearer_token(&req).unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(AppError::unauthorized(
                ErrorCode::InvalidToken,
                "a valid metrics bearer token is required",
            ));
        }
    }
    let stats = tokio::time::timeout(REGISTRY_TIMEOUT, state.engine.registry.send(GetStats))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let pool = state.db.pool_usage();
    let snapshot = Snapshot {
        online_users: stats.online_users,
        conversation_actors: stats.conversations,
        call_timers: stats.call_timers,
        db_in_use: pool.in_use,
        db_idle: pool.idle,
        db_max: pool.max,
        db_waiting: pool.waiting,
        db_errors: pool.errors,
        uptime_secs: state.started.elapsed().as_secs_f64(),
        cluster: state.engine.cluster.as_ref().map(|c| c.counts()),
        allocator: crate::metrics::allocator_stats(),
    };
    let text = state
        .engine
        .metrics
        .render(&snapshot)
        .map_err(|e| AppError::internal(format!("metrics exposition: {e}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::{constant_time_eq, CONTENT_TYPE};

    #[test]
    fn the_content_type_is_the_text_format_0_0_4() {
        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
