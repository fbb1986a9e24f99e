//! `/auth/*`: password login, OTP registration and login (seed 003 routes), refresh, logout.

use super::{client_addr, device_info};
use crate::auth::otp::Purpose;
use crate::auth::Identity;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

/// `POST /auth/login` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginBody {
    phone: Option<String>,
    email: Option<String>,
    password: String,
    device_name: Option<String>,
}

/// Password login by phone or e-mail → `{accessToken, token, refreshToken, user, ...}`.
pub async fn login(
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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshBody {
    #[serde(alias = "refresh_token")]
    refresh_token: String,
}

/// Rotates a refresh token.
pub async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<RefreshBody>,
) -> AppResult<HttpResponse> {
    let pair = state.auth.refresh(&body.refresh_token).await?;
    Ok(HttpResponse::Ok().json(pair))
}

/// Revokes the caller's device session.
pub async fn logout(state: web::Data<AppState>, identity: Identity) -> AppResult<HttpResponse> {
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
    Ok(HttpResponse::Ok().json(json!({ "success": true, "revoked": revoked })))
}

/// Body of the two send-OTP routes.
#[derive(Debug, Deserialize)]
pub struct SendOtpBody {
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
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "message": "code sent",
        "expiresIn": expires_in,
    })))
}

/// `POST /auth/send-otp`: a registration code.
pub async fn send_otp_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SendOtpBody>,
) -> AppResult<HttpResponse> {
    send_otp(&state, &req, body.into_inner(), Purpose::Register).await
}

/// `POST /auth/send-otp-login`: a login code.
pub async fn send_otp_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SendOtpBody>,
) -> AppResult<HttpResponse> {
    send_otp(&state, &req, body.into_inner(), Purpose::Login).await
}

/// Body of the two verify-OTP routes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOtpBody {
    #[serde(alias = "phoneNumber", alias = "mobile")]
    phone: String,
    #[serde(alias = "code")]
    otp: String,
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
    device_name: Option<String>,
}

/// `POST /auth/verify-otp-register`: creates the account and logs it in.
pub async fn verify_otp_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<VerifyOtpBody>,
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

/// `POST /auth/verify-otp-login`.
pub async fn verify_otp_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<VerifyOtpBody>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let pair = state
        .auth
        .login_with_otp(&b.phone, &b.otp, device_info(&req, b.device_name))
        .await?;
    Ok(HttpResponse::Ok().json(pair))
}
