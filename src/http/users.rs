//! Accounts: `GET /users/profile`, `PATCH /users/me`, `GET /users` (search, cursor pagination).

use super::double_option;
use super::openapi::{BodyErrors, Errors};
use crate::auth::{validate_name, Identity};
use crate::db::accounts;
use crate::db::models::UserView;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::AppState;
use actix_web::{get, patch, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `{user, success}`: the caller's profile.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserAnswer {
    /// The user.
    pub user: UserView,
    /// Always true.
    #[schema(required = false)]
    pub success: bool,
}

impl UserAnswer {
    fn of(user: UserView) -> Self {
        Self {
            user,
            success: true,
        }
    }
}

/// The caller's profile
#[utoipa::path(
    tag = "users",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = UserAnswer), Errors),
)]
#[get("/users/profile")]
pub(crate) async fn profile(identity: Identity) -> HttpResponse {
    HttpResponse::Ok().json(UserAnswer::of(identity.user.view()))
}

/// The caller's profile
#[utoipa::path(
    tag = "users",
    security(("bearer" = [])),
    responses((status = 200, description = "Success", body = UserAnswer), Errors),
)]
#[get("/users/me")]
pub(crate) async fn me(identity: Identity) -> HttpResponse {
    HttpResponse::Ok().json(UserAnswer::of(identity.user.view()))
}

/// `PATCH /users/me` body: `avatar` and `avatarUrl` are the same field; `null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateMe {
    #[schema(nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    avatar: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    avatar_url: Option<Option<String>>,
}

/// Change name and/or avatar (`null` clears the avatar)
#[utoipa::path(
    tag = "users",
    security(("bearer" = [])),
    request_body = UpdateMe,
    responses((status = 200, description = "Success", body = UserAnswer), BodyErrors),
)]
#[patch("/users/me")]
pub(crate) async fn update_me(
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
    Ok(HttpResponse::Ok().json(UserAnswer::of(user.view())))
}

/// `GET /users` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// Text to search for.
    #[serde(alias = "search", alias = "query")]
    #[param(nullable = false)]
    q: Option<String>,
    /// `nextCursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Page size (default 20).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserPage {
    /// The users.
    pub users: Vec<UserView>,
    /// `cursor` of the next page (null on the last).
    #[schema(required = false)]
    pub next_cursor: Option<String>,
}

/// Search users by name or phone
// Other users' e-mail addresses are not shown.
#[utoipa::path(
    tag = "users",
    security(("bearer" = [])),
    params(SearchQuery),
    responses((status = 200, description = "Success", body = UserPage), Errors),
)]
#[get("/users")]
pub(crate) async fn search(
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
    Ok(HttpResponse::Ok().json(UserPage {
        users: page,
        next_cursor,
    }))
}
