//! Row types: one `Queryable` struct per table read, separate `Insertable` structs for writes.

use super::schema::{device_sessions, otp_codes, refresh_tokens, users};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

/// A user account.
#[derive(Clone, Debug, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Lower-cased e-mail.
    pub email: Option<String>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// Encoded password hash.
    pub password_hash: Option<String>,
    /// Roles (`admin`, `master`, ...); PostgreSQL arrays may hold NULLs, hence `Option`.
    pub roles: Vec<Option<String>>,
    /// Team roles.
    pub team_roles: Vec<Option<String>>,
    /// When the account was banned.
    pub banned_at: Option<DateTime<Utc>>,
    /// Why.
    pub ban_reason: Option<String>,
    /// Last time a device of the user was seen.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last profile change.
    pub updated_at: DateTime<Utc>,
    /// Access tokens issued before this are refused (forced logout).
    pub tokens_valid_after: Option<DateTime<Utc>>,
}

impl User {
    /// Roles without NULL entries.
    pub(crate) fn role_list(&self) -> Vec<String> {
        self.roles.iter().flatten().cloned().collect()
    }

    /// Team roles without NULL entries.
    pub(crate) fn team_role_list(&self) -> Vec<String> {
        self.team_roles.iter().flatten().cloned().collect()
    }

    /// Whether the user holds `role` (case-insensitive: seed 000 writes `MASTER`).
    pub(crate) fn has_role(&self, role: &str) -> bool {
        self.roles
            .iter()
            .flatten()
            .any(|r| r.eq_ignore_ascii_case(role))
    }

    /// Whether the account is banned.
    pub(crate) fn is_banned(&self) -> bool {
        self.banned_at.is_some()
    }

    /// The public JSON shape of a user.
    pub(crate) fn view(&self) -> UserView {
        UserView {
            id: self.id.to_string(),
            uid: self.id.to_string(),
            doc_id: self.id.to_string(),
            name: self.name.clone(),
            phone: self.phone.clone(),
            email: self.email.clone(),
            avatar: self.avatar_url.clone(),
            avatar_url: self.avatar_url.clone(),
            roles: self.role_list(),
            team_roles: self.team_role_list(),
            banned: self.is_banned(),
            last_seen: self.last_seen_at,
            created_at: self.created_at,
        }
    }
}

/// A user as clients see it. `uid` and `avatar` duplicate `id` and `avatarUrl` for the legacy
/// apps that read those names.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = User)]
pub(crate) struct UserView {
    /// Id as a string.
    pub id: String,
    /// Same as `id` (seed 003 mobile clients).
    #[schema(required = false)]
    pub uid: String,
    /// Same as `id`: seed 003's apps read Mongoose lean documents, whose id is `_id`.
    #[serde(rename = "_id")]
    #[schema(required = false)]
    pub doc_id: String,
    /// Display name.
    pub name: String,
    /// Phone.
    pub phone: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Avatar URL (seed 003 mobile name).
    pub avatar: Option<String>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Team roles.
    #[schema(required = false)]
    pub team_roles: Vec<String>,
    /// Banned flag.
    #[schema(required = false)]
    pub banned: bool,
    /// Last seen.
    pub last_seen: Option<DateTime<Utc>>,
    /// Created.
    #[schema(required = false)]
    pub created_at: DateTime<Utc>,
}

/// A user to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub(crate) struct NewUser<'a> {
    /// Display name.
    pub name: &'a str,
    /// E.164 phone.
    pub phone: Option<&'a str>,
    /// Lower-cased e-mail.
    pub email: Option<&'a str>,
    /// Encoded password hash.
    pub password_hash: Option<&'a str>,
    /// Roles.
    pub roles: Vec<String>,
}

/// A device session: one login on one device.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = device_sessions, check_for_backend(diesel::pg::Pg))]
pub(crate) struct DeviceSession {
    /// Random id, carried as `sid` in access tokens.
    pub id: String,
    /// Owner.
    pub user_id: i64,
    /// Device label supplied at login.
    pub device_name: Option<String>,
    /// User agent at login.
    pub user_agent: Option<String>,
    /// Peer address at login.
    pub ip: Option<String>,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
}

/// A device session to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = device_sessions)]
pub(crate) struct NewDeviceSession<'a> {
    /// Random id.
    pub id: &'a str,
    /// Owner.
    pub user_id: i64,
    /// Device label.
    pub device_name: Option<&'a str>,
    /// User agent.
    pub user_agent: Option<&'a str>,
    /// Peer address.
    pub ip: Option<&'a str>,
}

/// A stored refresh token digest.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = refresh_tokens, check_for_backend(diesel::pg::Pg))]
pub(crate) struct RefreshToken {
    /// Device session it belongs to.
    pub session_id: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was exchanged for a successor.
    pub rotated_at: Option<DateTime<Utc>>,
}

/// A one-time code.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = otp_codes, check_for_backend(diesel::pg::Pg))]
pub(crate) struct OtpCode {
    /// Primary key.
    pub id: i64,
    /// HMAC digest of the code.
    pub code_hash: Vec<u8>,
    /// Wrong guesses so far.
    pub attempts: i32,
    /// Issue time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}
