//! The audit log: one row per admin action, written by the handler that performed it, and one
//! per security decision the server takes on its own (e.g. an authentication lockout), with no
//! actor.

use super::schema::audit_log;
use crate::error::AppResult;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;

/// An audit entry.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = audit_log, check_for_backend(diesel::pg::Pg))]
pub(crate) struct AuditEntry {
    /// Primary key.
    pub id: i64,
    /// The admin who acted.
    pub actor_id: Option<i64>,
    /// Dotted action name (`user.ban`, `message.delete`, ...).
    pub action: String,
    /// What it was applied to.
    pub target_type: String,
    /// Which one.
    pub target_id: Option<String>,
    /// Action-specific details.
    pub details: Value,
    /// The admin's address.
    pub ip: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// An entry as the dashboard sees it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AuditEntry)]
pub(crate) struct AuditView {
    /// Id.
    pub id: String,
    /// Actor id.
    pub actor_id: Option<String>,
    /// Action.
    pub action: String,
    /// Target type.
    pub target_type: String,
    /// Target id.
    pub target_id: Option<String>,
    /// Details.
    #[schema(required = false, schema_with = crate::http::openapi::any_or_null)]
    pub details: Value,
    /// Address.
    pub ip: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl AuditEntry {
    /// The dashboard view.
    pub(crate) fn view(&self) -> AuditView {
        AuditView {
            id: self.id.to_string(),
            actor_id: self.actor_id.map(|a| a.to_string()),
            action: self.action.clone(),
            target_type: self.target_type.clone(),
            target_id: self.target_id.clone(),
            details: self.details.clone(),
            ip: self.ip.clone(),
            created_at: self.created_at,
        }
    }
}

/// What to record.
#[derive(Clone, Debug)]
pub(crate) struct NewEntry {
    /// The admin.
    pub actor_id: i64,
    /// Action name.
    pub action: &'static str,
    /// Target type.
    pub target_type: &'static str,
    /// Target id.
    pub target_id: Option<String>,
    /// Details.
    pub details: Value,
    /// The admin's address.
    pub ip: Option<String>,
}

/// Appends an entry.
pub(crate) fn record(conn: &mut PgConnection, e: &NewEntry) -> AppResult<()> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor_id.eq(e.actor_id),
            audit_log::action.eq(e.action),
            audit_log::target_type.eq(e.target_type),
            audit_log::target_id.eq(e.target_id.as_deref()),
            audit_log::details.eq(&e.details),
            audit_log::ip.eq(e.ip.as_deref()),
        ))
        .execute(conn)?;
    Ok(())
}

/// What the server records about a decision of its own (no actor).
#[derive(Clone, Debug)]
pub(crate) struct SystemEntry<'a> {
    /// Action name.
    pub action: &'static str,
    /// Target type.
    pub target_type: &'static str,
    /// Target id.
    pub target_id: Option<&'a str>,
    /// Details.
    pub details: Value,
    /// The client address the decision concerns.
    pub ip: Option<&'a str>,
}

/// Appends an entry without an actor.
pub(crate) fn record_system(conn: &mut PgConnection, e: &SystemEntry<'_>) -> AppResult<()> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor_id.eq(None::<i64>),
            audit_log::action.eq(e.action),
            audit_log::target_type.eq(e.target_type),
            audit_log::target_id.eq(e.target_id),
            audit_log::details.eq(&e.details),
            audit_log::ip.eq(e.ip),
        ))
        .execute(conn)?;
    Ok(())
}

/// Filters for [`list`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    /// Only this admin's actions.
    pub actor_id: Option<i64>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target type.
    pub target_type: Option<String>,
    /// Only this target.
    pub target_id: Option<String>,
    /// Entries with a smaller id (cursor).
    pub before_id: Option<i64>,
}

/// Entries newest first.
pub(crate) fn list(conn: &mut PgConnection, f: &Filter, limit: i64) -> AppResult<Vec<AuditEntry>> {
    let mut q = audit_log::table
        .select(AuditEntry::as_select())
        .order(audit_log::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(a) = f.actor_id {
        q = q.filter(audit_log::actor_id.eq(a));
    }
    if let Some(a) = &f.action {
        q = q.filter(audit_log::action.eq(a.clone()));
    }
    if let Some(t) = &f.target_type {
        q = q.filter(audit_log::target_type.eq(t.clone()));
    }
    if let Some(t) = &f.target_id {
        q = q.filter(audit_log::target_id.eq(t.clone()));
    }
    if let Some(b) = f.before_id {
        q = q.filter(audit_log::id.lt(b));
    }
    Ok(q.load(conn)?)
}
