//! `/auth/*`: password login, OTP registration and login (seed 003 routes), refresh, logout.

use super::openapi::BodyErrors;
use super::{client_addr, device_info};
use crate::auth::otp::Purpose;
use crate::auth::{Identity, TokenPair};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoginBody {
    #[schema(nullable = false)]
    phone: Option<String>,
    #[schema(nullable = false)]
    email: Option<String>,
    password: String,
    #[schema(nullable = false)]
    device_name: Option<String>,
}

/// Password login by phone or e-mail
#[utoipa::path(
    tag = "auth",
    request_body = LoginBody,
    responses((status = 200, description = "Success", body = TokenPair), BodyErrors),
)]
#[post("/auth/login")]
pub(crate) async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let pair = state
        .auth
        .login_password(
            body.phone.as_deref(),
            body.email.as_deref(),
            &body.password,
            device_info(&req, body.device_name),
        )
        .await?;
    Ok(HttpResponse::Ok().json(pair))
}

/// `POST /auth/refresh` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RefreshBody {
    #[serde(alias = "refresh_token")]
    refresh_token: String,
}

/// Rotate a refresh token (single use)
#[utoipa::path(
    tag = "auth",
    request_body = RefreshBody,
    responses((status = 200, description = "Success", body = TokenPair), BodyErrors),
)]
#[post("/auth/refresh")]
pub(crate) async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<RefreshBody>,
) -> AppResult<HttpResponse> {
    let pair = state.auth.refresh(&body.refresh_token).await?;
    Ok(HttpResponse::Ok().json(pair))
}

/// `POST /auth/logout` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LoggedOut {
    /// Always true.
    pub success: bool,
    /// Whether a device session was revoked (a token without one has none).
    #[schema(required = false)]
    pub revoked: bool,
}

/// Revoke the caller's device session
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = LoggedOut), super::openapi::Errors),
)]
#[post("/auth/logout")]
pub(crate) async fn logout(
    state: web::Data<AppState>,
    identity: Identity,
) -> AppResult<HttpResponse> {
    let revoked = state.auth.logout(&identity).await?;
    // The device's live sockets go with its session.
    let closed = match &identity.session_id {
        Some(sid) => {
            state
                .engine
                .kick(
                    identity.user_id(),
                    Some(sid.clone()),
                    crate::realtime::session::CLOSE_UNAUTHORIZED,
                    "logged out",
                )
                .await
        }
        None => 0,
    };
    tracing::info!(user = identity.user_id(), revoked, closed, "logout");
    Ok(HttpResponse::Ok().json(LoggedOut {
        success: true,
        revoked,
    }))
}

/// Body of the two send-OTP routes.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct SendOtpBody {
    #[serde(alias = "phoneNumber", alias = "mobile")]
    phone: String,
}

async fn send_otp(
    state: &AppState,
    req: &HttpRequest,
    body: SendOtpBody,
    purpose: Purpose,
) -> AppResult<HttpResponse> {
    let expires_in = state
        .auth
        .send_otp(&body.phone, purpose, client_addr(req))
        .await?;
    Ok(HttpResponse::Ok().json(CodeSent {
        success: true,
        message: "code sent",
        expires_in,
    }))
}

/// Answer of the two send-OTP routes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CodeSent {
    /// Always true.
    pub success: bool,
    /// `code sent`.
    #[schema(required = false)]
    pub message: &'static str,
    /// Seconds the code stays valid.
    #[schema(required = false, value_type = i64)]
    pub expires_in: u64,
}

/// Send a registration code
#[utoipa::path(
    tag = "auth",
    request_body = SendOtpBody,
    responses((status = 200, description = "Success", body = CodeSent), BodyErrors),
)]
#[post("/auth/send-otp")]
pub(crate) async fn send_otp_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SendOtpBody>,
) -> AppResult<HttpResponse> {
    send_otp(&state, &req, body.into_inner(), Purpose::Register).await
}

/// Send a login code
#[utoipa::path(
    tag = "auth",
    request_body = SendOtpBody,
    responses((status = 200, description = "Success", body = CodeSent), BodyErrors),
)]
#[post("/auth/send-otp-login")]
pub(crate) async fn send_otp_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SendOtpBody>,
) -> AppResult<HttpResponse> {
    send_otp(&state, &req, body.into_inner(), Purpose::Login).await
}

/// `POST /auth/verify-otp-register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerifyOtpRegisterBody {
    #[serde(alias = "phoneNumber", alias = "mobile")]
    phone: String,
    #[serde(alias = "code")]
    otp: String,
    #[schema(nullable = false)]
    name: Option<String>,
    #[schema(nullable = false)]
    email: Option<String>,
    #[schema(nullable = false)]
    password: Option<String>,
    #[schema(nullable = false)]
    device_name: Option<String>,
}

/// `POST /auth/verify-otp-login` body (other fields are ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerifyOtpLoginBody {
    #[serde(alias = "phoneNumber", alias = "mobile")]
    phone: String,
    #[serde(alias = "code")]
    otp: String,
    #[schema(nullable = false)]
    device_name: Option<String>,
}

/// Verify a registration code: creates the account and logs in
#[utoipa::path(
    tag = "auth",
    request_body = VerifyOtpRegisterBody,
    responses((status = 201, description = "Success", body = TokenPair), BodyErrors),
)]
#[post("/auth/verify-otp-register")]
pub(crate) async fn verify_otp_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<VerifyOtpRegisterBody>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    if b.otp.trim().is_empty() {
        return Err(AppError::validation("otp is required"));
    }
    let pair = state
        .auth
        .register_with_otp(
            &b.phone,
            &b.otp,
            b.name.as_deref(),
            b.email.as_deref(),
            b.password.as_deref(),
            device_info(&req, b.device_name),
        )
        .await?;
    Ok(HttpResponse::Created().json(pair))
}

/// Log in with a code
#[utoipa::path(
    tag = "auth",
    request_body = VerifyOtpLoginBody,
    responses((status = 200, description = "Success", body = TokenPair), BodyErrors),
)]
#[post("/auth/verify-otp-login")]
pub(crate) async fn verify_otp_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<VerifyOtpLoginBody>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let pair = state
        .auth
        .login_with_otp(&b.phone, &b.otp, device_info(&req, b.device_name))
        .await?;
    Ok(HttpResponse::Ok().json(pair))
}
