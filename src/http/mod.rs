//! REST routes, grouped by resource. Handlers parse input, call the auth service, the engine or
//! the database, and map errors through [`AppError`]; nothing else.

// The code `#[utoipa::path]` generates names parameter types by their full paths.
#[allow(unused_qualifications)]
pub(crate) mod admin;
pub(crate) mod astrology;
#[allow(unused_qualifications)]
pub(crate) mod auth;
#[allow(unused_qualifications)]
pub(crate) mod calls;
pub(crate) mod client_ip;
#[allow(unused_qualifications)]
pub(crate) mod contacts;
#[allow(unused_qualifications)]
pub(crate) mod conversations;
#[allow(unused_qualifications)]
pub(crate) mod health;
pub(crate) mod legacy;
#[allow(unused_qualifications)]
pub mod media;
pub mod metrics;
#[allow(unused_qualifications)]
pub mod openapi;
#[allow(unused_qualifications)]
pub(crate) mod support;
#[allow(unused_qualifications)]
pub(crate) mod users;

use crate::auth::Identity;
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::{Deserialize, Deserializer};
use std::future::Future;
use std::pin::Pin;

/// Registers every route: the realtime transports, then [`routes`].
pub(crate) fn configure(cfg: &mut web::ServiceConfig, max_json: usize) {
    cfg.app_data(json_config(max_json))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .route("/ws", web::get().to(crate::realtime::ws::route))
        .route(
            "/socket.io/",
            web::route().to(crate::realtime::socketio::route),
        );
    routes(&mut utoipa_actix_web::service_config::ServiceConfig::new(
        cfg,
    ));
}

/// Where REST routes are registered: only handlers that carry their OpenAPI documentation
/// (`#[utoipa::path]`, or [`openapi::MetricsRoute`]) can be, so no route goes undocumented.
pub(crate) struct Routes<'a, 's>(&'a mut utoipa_actix_web::service_config::ServiceConfig<'s>);

impl std::fmt::Debug for Routes<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

/// A schema of the document, by name, as one handler brings it.
type NamedSchema = (
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
);

thread_local! {
    /// Every schema each registered handler brings, while a test collects them: the document
    /// keeps one schema per name, so two different Rust types of the same name would otherwise
    /// describe each other's routes without a word.
    static SCHEMAS_SEEN: std::cell::RefCell<Option<Vec<NamedSchema>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` and answers every schema the handlers registered during it brought, duplicates
/// included.
#[cfg(test)]
fn schemas_registered_by(f: impl FnOnce()) -> Vec<NamedSchema> {
    SCHEMAS_SEEN.with_borrow_mut(|seen| *seen = Some(Vec::new()));
    f();
    SCHEMAS_SEEN
        .with_borrow_mut(Option::take)
        .unwrap_or_default()
}

impl Routes<'_, '_> {
    /// Registers a documented handler.
    pub(crate) fn service<F>(&mut self, factory: F) -> &mut Self
    where
        F: actix_web::dev::HttpServiceFactory + utoipa_actix_web::OpenApiFactory + 'static,
    {
        SCHEMAS_SEEN.with_borrow_mut(|seen| {
            if let Some(seen) = seen {
                factory.schemas(seen);
            }
        });
        self.0.service(factory);
        self
    }

    /// Registers the routes of `f` here.
    pub(crate) fn configure(&mut self, f: impl FnOnce(&mut Routes)) -> &mut Self {
        f(self);
        self
    }

    /// Registers the routes of `f` under `prefix`.
    pub(crate) fn scope(&mut self, prefix: &str, f: impl FnOnce(&mut Routes)) -> &mut Self {
        self.0
            .service(utoipa_actix_web::scope(prefix).configure(|cfg| f(&mut Routes(cfg))));
        self
    }
}

/// Every REST route, each with its OpenAPI documentation ([`openapi::generated`] collects the
/// document from this same registration). Account, conversation and call routes are served both
/// at the root (seed 003) and under `/api`.
pub(crate) fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    Routes(cfg)
        .service(health::ping)
        .service(health::health)
        .service(health::api_health)
        .service(openapi::MetricsRoute)
        .service(openapi::openapi_json)
        .service(openapi::docs)
        .configure(app_routes)
        .scope("/api", app_routes);
}

fn app_routes(cfg: &mut Routes) {
    cfg.service(auth::login)
        .service(auth::refresh)
        .service(auth::logout)
        .service(auth::send_otp_register)
        .service(auth::verify_otp_register)
        .service(auth::send_otp_login)
        .service(auth::verify_otp_login)
        .service(users::profile)
        .service(users::me)
        .service(users::update_me)
        .service(users::search)
        // Before `conversations::routes`: `/conversations/admin` is not `/conversations/{id}`.
        .configure(support::routes)
        .configure(contacts::routes)
        .configure(admin::routes)
        .configure(conversations::routes)
        .configure(calls::routes)
        .configure(media::routes);
}

/// JSON bodies: size limit and errors as `{error:{code,message}}` (400 / 413 / 415).
pub(crate) fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req| {
            let app = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    AppError::TooLarge("request body is too large".into())
                }
                JsonPayloadError::ContentType => AppError::bad_request(
                    ErrorCode::UnsupportedContentType,
                    "expected Content-Type: application/json",
                ),
                JsonPayloadError::Deserialize(e) if e.is_data() => AppError::Validation {
                    code: ErrorCode::ValidationFailed,
                    message: e.to_string().into(),
                },
                JsonPayloadError::Deserialize(e) => {
                    AppError::bad_request(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
                }
                other => AppError::bad_request(ErrorCode::InvalidBody, other.to_string()),
            };
            app.into()
        })
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    AppError::bad_request(
        ErrorCode::InvalidParameter,
        format!("invalid path parameter: {err}"),
    )
    .into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    AppError::bad_request(
        ErrorCode::InvalidParameter,
        format!("invalid query parameter: {err}"),
    )
    .into()
}

/// A positive integer id from a path segment; `what` names it in the 400 error.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<i64, AppError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            AppError::bad_request(
                ErrorCode::InvalidParameter,
                format!("{what} must be a positive integer id"),
            )
        })
}

/// JSON 404 for unknown routes.
pub(crate) async fn not_found() -> HttpResponse {
    let err = AppError::NotFound("no such route".into());
    HttpResponse::NotFound().json(err.body())
}

/// The bearer token of a request: `Authorization: Bearer <t>` (or the bare token).
pub(crate) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    (!token.is_empty()).then_some(token)
}

impl FromRequest for Identity {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let token = bearer_token(req).map(str::to_owned);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state = state.ok_or_else(|| AppError::internal("application state missing"))?;
            let token = token.ok_or_else(|| {
                AppError::unauthorized(
                    ErrorCode::MissingToken,
                    "an Authorization: Bearer token is required",
                )
            })?;
            Ok(state.auth.authenticate(&token).await?)
        })
    }
}

/// Deserializes a field that may be absent (`None`), null (`Some(None)`) or set.
pub(crate) fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// The peer address and user agent of a request, recorded with new device sessions.
pub(crate) fn device_info(req: &HttpRequest, name: Option<String>) -> crate::auth::DeviceInfo {
    crate::auth::DeviceInfo {
        name: name.map(|n| n.chars().take(100).collect()),
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(300).collect()),
        ip: client_addr(req),
    }
}

/// The client's address: the peer, or what a trusted proxy (`TRUSTED_PROXIES`) put in
/// `X-Forwarded-For`.
pub(crate) fn client_addr(req: &HttpRequest) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    let trusted = req
        .app_data::<web::Data<AppState>>()
        .map(|s| client_ip::parse_list(&s.config.trusted_proxies.0).unwrap_or_default())
        .unwrap_or_default();
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(client_ip::client_ip(peer, &forwarded, &trusted))
}
