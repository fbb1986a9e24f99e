//! The one-shot subcommands (`migrate`, `user add`, `user ensure-admin`, `token`). They print
//! their result as JSON on stdout and return a message for stderr on failure.

use crate::auth::{self, tokens::TokenKeys};
use crate::config::Config;
use crate::db::{self, accounts, Db};
use crate::error::AppError;
use serde_json::json;

fn describe(e: AppError) -> String {
    match e {
        AppError::Internal { cause } | AppError::Unavailable { cause } => cause,
        other => format!("{} ({})", other, other.code()),
    }
}

/// One connection for a one-shot command (no migrations).
fn open(config: &Config) -> Result<db::PooledConn, String> {
    config.validate_database().map_err(|e| e.to_string())?;
    let timeout = config
        .db_acquire_timeout
        .max(std::time::Duration::from_secs(5));
    Db::with_url(config.database_url.expose(), 1, timeout)
        .get()
        .map_err(|e| format!("cannot connect to the database: {}", describe(e)))
}

/// One migrated connection.
fn connect(config: &Config) -> Result<db::PooledConn, String> {
    let mut conn = open(config)?;
    db::run_migrations(&mut conn).map_err(describe)?;
    Ok(conn)
}

#[allow(clippy::print_stdout)]
fn print(value: &serde_json::Value) {
    println!("{value}");
}

/// `switchboard migrate`.
pub fn migrate(config: &Config) -> Result<(), String> {
    let mut conn = open(config)?;
    let applied = db::run_migrations(&mut conn).map_err(describe)?;
    print(&json!({ "applied": applied }));
    Ok(())
}

/// `switchboard user add`.
pub fn user_add(
    config: &Config,
    name: &str,
    phone: Option<&str>,
    email: Option<&str>,
    password: Option<&str>,
    roles: Vec<String>,
) -> Result<(), String> {
    let mut conn = connect(config)?;
    let roles: Vec<String> = roles
        .into_iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    let user =
        auth::create_user(&mut conn, name, phone, email, password, roles).map_err(describe)?;
    print(&serde_json::to_value(user.view()).map_err(|e| e.to_string())?);
    Ok(())
}

/// `switchboard user ensure-admin`: used by `scripts/dev.sh` on first start.
pub fn ensure_admin(config: &Config, name: &str, email: &str) -> Result<(), String> {
    let mut conn = connect(config)?;
    if accounts::admin_exists(&mut conn).map_err(describe)? {
        print(&json!({ "created": false }));
        return Ok(());
    }
    let mut raw = [0u8; 12];
    auth::tokens::random_bytes(&mut raw).map_err(describe)?;
    let password = auth::tokens::hex(&raw);
    let user = auth::create_user(
        &mut conn,
        name,
        None,
        Some(email),
        Some(&password),
        vec!["admin".into()],
    )
    .map_err(describe)?;
    print(
        &json!({ "created": true, "id": user.id.to_string(), "email": user.email, "password": password }),
    );
    Ok(())
}

/// `switchboard token --user ID [--ttl SECS]`.
pub fn token(config: &Config, user_id: i64, ttl: Option<u64>) -> Result<(), String> {
    config.validate().map_err(|e| e.to_string())?;
    let mut conn = connect(config)?;
    let user = accounts::user_by_id(&mut conn, user_id)
        .map_err(describe)?
        .ok_or_else(|| format!("no user with id {user_id}"))?;
    let keys = TokenKeys::new(config.jwt_secret.expose().as_bytes());
    let ttl = ttl.unwrap_or(config.access_token_ttl.as_secs());
    let token = keys
        .sign(user.id, None, &user.role_list(), ttl)
        .map_err(describe)?;
    print(&json!({ "token": token, "userId": user.id.to_string(), "expiresIn": ttl }));
    Ok(())
}

/// `switchboard import`.
pub fn import(
    config: &Config,
    source: crate::import::Source,
    dir: std::path::PathBuf,
    media_dir: Option<std::path::PathBuf>,
    dry_run: bool,
) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let mut conn = connect(config)?;
    let options = crate::import::Options {
        source,
        dir,
        dry_run,
        progress: true,
    };
    let mut report = crate::import::run(&mut conn, &options).map_err(describe)?;
    if let Some(media_dir) = media_dir.filter(|_| !dry_run) {
        crate::import::media::rehome(config, &mut conn, &media_dir, &mut report)
            .map_err(describe)?;
    }
    print_problems(&report.problems);
    let mut summary = serde_json::to_value(&report).map_err(|e| e.to_string())?;
    if let Some(map) = summary.as_object_mut() {
        map.remove("problems");
        map.insert(
            "skipped".into(),
            json!(report.problems.iter().filter(|p| p.skipped).count()),
        );
        map.insert(
            "repaired".into(),
            json!(report.problems.iter().filter(|p| !p.skipped).count()),
        );
    }
    print(&summary);
    Ok(())
}

#[allow(clippy::print_stderr)]
fn print_problems(problems: &[crate::import::Problem]) {
    for p in problems {
        eprintln!(
            "{} {}:{} {}: {}",
            if p.skipped { "skipped" } else { "repaired" },
            p.collection,
            p.line,
            p.id.as_deref().unwrap_or("-"),
            p.reason
        );
    }
}
