//! Accounts: `GET /users/profile`, `PATCH /users/me`, `GET /users` (search, cursor pagination).

use super::double_option;
use crate::auth::{validate_name, Identity};
use crate::db::accounts;
use crate::db::models::UserView;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

/// The caller's own profile.
pub async fn profile(identity: Identity) -> HttpResponse {
    let view = identity.user.view();
    HttpResponse::Ok().json(json!({ "user": view, "success": true }))
}

/// `PATCH /users/me` body: `avatar` and `avatarUrl` are the same field; `null` clears it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMe {
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    avatar: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    avatar_url: Option<Option<String>>,
}

/// Changes name and/or avatar.
pub async fn update_me(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<UpdateMe>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    if let Some(name) = &body.name {
        validate_name(name)?;
    }
    let avatar = body.avatar_url.or(body.avatar);
    if let Some(Some(url)) = &avatar {
        if url.len() > 2048 {
            return Err(AppError::validation(
                "avatar URL is longer than 2048 characters",
            ));
        }
    }
    let name = body.name.map(|n| n.trim().to_owned());
    let id = identity.user_id();
    let user = state
        .db
        .run(move |conn| {
            accounts::update_profile(
                conn,
                id,
                name.as_deref(),
                avatar.as_ref().map(|a| a.as_deref()),
            )
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "user": user.view(), "success": true })))
}

/// `GET /users` query.
#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    #[serde(alias = "search", alias = "query")]
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

/// Searches users by name or phone. Other users' e-mail addresses are not shown.
pub async fn search(
    state: web::Data<AppState>,
    identity: Identity,
    query: web::Query<SearchQuery>,
) -> AppResult<HttpResponse> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let after =
        match query.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(c.parse::<i64>().map_err(|_| {
                AppError::bad_request(ErrorCode::InvalidCursor, "cursor is not valid")
            })?),
            None => None,
        };
    let text = query.q;
    let found = state
        .db
        .run(move |conn| accounts::search_users(conn, text.as_deref(), after, limit + 1))
        .await?;
    let has_more = found.len() as i64 > limit;
    let page: Vec<UserView> = found
        .iter()
        .take(usize::try_from(limit).unwrap_or(20))
        .map(|u| {
            let mut v = u.view();
            if u.id != identity.user_id() && !identity.is_admin() {
                v.email = None;
            }
            v
        })
        .collect();
    let next_cursor = if has_more {
        page.last().map(|u| u.id.clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "users": page, "nextCursor": next_cursor })))
}
