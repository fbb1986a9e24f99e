//! REST for the apps of legacy backends whose data was imported (seed 000, 002 and 003 on their
//! listeners, or a request naming their dialect with `?dialect=`): the legacy ids they send in
//! paths, query strings and JSON bodies are resolved to Switchboard's ids before routing, and
//! JSON answers name imported users, conversations, chat requests and messages by their legacy
//! ids (see [`crate::legacy`] for the field tables).
//!
//! One middleware does it for every route, with the same rules as the sockets of those apps, so
//! no handler needs to know. It stops at once (one atomic load) while nothing was imported, and
//! for other apps, sockets and non-JSON bodies; answers larger than
//! [`MAX_REWRITTEN_RESPONSE`] pass as they are.

use crate::error::AppError;
use crate::legacy::{self, Kind, Source};
use crate::realtime::dialect::Dialect;
use crate::state::AppState;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, Uri};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::Value;

/// Largest JSON answer shown with legacy ids (larger ones pass unchanged).
pub(crate) const MAX_REWRITTEN_RESPONSE: usize = 8 * 1024 * 1024;

/// Shortest path segment after `messages` taken for a legacy message id.
const MIN_MESSAGE_REF: usize = 12;

/// The source whose legacy ids a request's app uses, when something was imported.
fn source_of(req: &ServiceRequest, state: &AppState) -> Option<Source> {
    if state.legacy.is_empty() {
        return None;
    }
    let path = req.path();
    if path == "/ws" || path.starts_with("/socket.io") {
        return None;
    }
    let named = web::Query::<DialectQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().dialect);
    let dialect =
        Dialect::for_connection(named.as_deref(), state.default_dialect(req.request())).ok()?;
    Source::of_dialect(dialect.name)
}

#[derive(Debug, serde::Deserialize)]
struct DialectQuery {
    dialect: Option<String>,
}

/// What an answer's top-level `id` names, by route.
fn own_kind(path: &str) -> Option<Kind> {
    let path = path.strip_prefix("/api").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["conversations", ..] if !segments.contains(&"messages") => Some(Kind::Conversation),
        ["contacts", "start-chat"] => Some(Kind::Conversation),
        ["chat-requests", ..] => Some(Kind::ChatRequest),
        ["users", "profile" | "me"] | ["admin", "users", _] => Some(Kind::User),
        _ => None,
    }
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// The middleware (wrapped around every route).
pub(crate) async fn rewrite(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Nothing imported (the common case): one atomic load, and on.
    let state = req
        .app_data::<web::Data<AppState>>()
        .filter(|state| !state.legacy.is_empty())
        .cloned();
    let Some((state, source)) =
        state.and_then(|state| source_of(&req, &state).map(|source| (state, source)))
    else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let snapshot = state.legacy.snapshot();
    let table = snapshot.table(source);
    let own = own_kind(req.path());

    // Path segments and query values.
    let mut segments: Vec<String> = req.path().split('/').map(str::to_owned).collect();
    let mut path_changed = false;
    let mut path_refs: Vec<usize> = Vec::new();
    for i in 0..segments.len() {
        let segment = &segments[i];
        if legacy::distinctive(segment) {
            if let Some((_, id)) = table.resolve(segment) {
                segments[i] = id.to_string();
                path_changed = true;
                continue;
            }
        }
        if i > 0
            && segments[i - 1] == "messages"
            && segment.len() >= MIN_MESSAGE_REF
            && segment.parse::<i64>().is_err()
        {
            path_refs.push(i);
        }
    }
    let mut query_changed = false;
    let query: Vec<String> = req
        .query_string()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let mut v = serde_json::json!({ key: value });
            if legacy::resolve_inbound(table, &mut v) {
                query_changed = true;
                format!("{key}={}", v[key].as_str().unwrap_or(value))
            } else {
                pair.to_owned()
            }
        })
        .collect();

    // The JSON body.
    let mut body: Option<(Value, Bytes)> = None;
    let mut body_changed = false;
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && is_json(req.headers().get(header::CONTENT_TYPE))
    {
        let limit = state.config.max_json_body_bytes;
        let mut payload = req.parts_mut().1.take();
        let mut buf = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk?;
            if buf.len() + chunk.len() > limit {
                return Err(AppError::TooLarge("request body is too large".into()).into());
            }
            buf.extend_from_slice(&chunk);
        }
        let bytes = buf.freeze();
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut v) => {
                body_changed = legacy::resolve_inbound(table, &mut v);
                body = Some((v, bytes));
            }
            // Malformed: the handler's extractor says so.
            Err(_) => req.set_payload(bytes.into()),
        }
    }

    // Legacy message ids, in one query.
    let mut refs: Vec<String> = path_refs.iter().map(|&i| segments[i].clone()).collect();
    if let Some((v, _)) = &body {
        refs.extend(legacy::message_refs(v, false));
    }
    if !refs.is_empty() {
        refs.sort();
        refs.dedup();
        let found = state.legacy.lookup_messages(&state.db, refs).await?;
        for &i in &path_refs {
            if let Some(id) = found.get(&segments[i]) {
                segments[i] = id.to_string();
                path_changed = true;
            }
        }
        if let Some((v, _)) = body.as_mut() {
            body_changed |= legacy::apply_message_refs(v, &found);
        }
    }

    match body {
        Some((v, _)) if body_changed => {
            let bytes = Bytes::from(serde_json::to_vec(&v).map_err(AppError::internal)?);
            req.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from(bytes.len()),
            );
            req.set_payload(bytes.into());
        }
        Some((_, original)) => req.set_payload(original.into()),
        None => {}
    }
    if path_changed || query_changed {
        let path = segments.join("/");
        let pq = if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let mut parts = req.head().uri.clone().into_parts();
        parts.path_and_query = Some(pq.parse().map_err(AppError::internal)?);
        let uri = Uri::from_parts(parts).map_err(AppError::internal)?;
        req.match_info_mut().get_mut().update(&uri);
        req.head_mut().uri = uri;
    }

    let res = next.call(req).await?;
    let fits = match res.response().body().size() {
        BodySize::Sized(n) => usize::try_from(n).is_ok_and(|n| n <= MAX_REWRITTEN_RESPONSE),
        _ => false,
    };
    if !fits || !is_json(res.headers().get(header::CONTENT_TYPE)) {
        return Ok(res.map_into_boxed_body());
    }
    let (request, response) = res.into_parts();
    let (head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|e| AppError::internal(format!("response body: {}", e.into())))?;
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            if legacy::show_outbound(table, &mut v, own) {
                serde_json::to_vec(&v).map_or(bytes, Bytes::from)
            } else {
                bytes
            }
        }
        Err(_) => bytes,
    };
    let mut response = head.set_body(BoxBody::new(bytes));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    Ok(ServiceResponse::new(request, response))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_own_kind_by_route() {
        assert_eq!(own_kind("/api/conversations/12"), Some(Kind::Conversation));
        assert_eq!(own_kind("/conversations"), Some(Kind::Conversation));
        assert_eq!(own_kind("/conversations/12/messages"), None);
        assert_eq!(own_kind("/chat-requests/3/accept"), Some(Kind::ChatRequest));
        assert_eq!(own_kind("/users/profile"), Some(Kind::User));
        assert_eq!(own_kind("/messages"), None);
    }

    #[test]
    fn json_content_types() {
        let v = header::HeaderValue::from_static("application/json; charset=utf-8");
        assert!(is_json(Some(&v)));
        let v = header::HeaderValue::from_static("application/problem+json");
        assert!(is_json(Some(&v)));
        let v = header::HeaderValue::from_static("multipart/form-data; boundary=x");
        assert!(!is_json(Some(&v)));
        assert!(!is_json(None));
    }
}
