//! The migrations run up, down (every `down.sql` is real) and up again on a fresh database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use diesel::prelude::*;
use diesel::sql_types::Text;

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = Text)]
    table_name: String,
}

fn tables(conn: &mut PgConnection) -> Vec<String> {
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT table_name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' ORDER BY 1",
    )
    .load::<TableName>(conn)
    .unwrap()
    .into_iter()
    .map(|t| t.table_name)
    .collect();
    names.sort();
    names
}

#[test]
fn migrations_run_up_down_and_up_again() {
    let db = common::TestDb::empty();
    let mut conn = db.conn();
    let applied = switchboard::db::run_migrations(&mut conn).unwrap();
    assert!(applied.len() >= 3);
    let expected = [
        "audit_log",
        "call_participants",
        "calls",
        "chat_requests",
        "contacts",
        "conversation_members",
        "conversations",
        "device_sessions",
        "legacy_ids",
        "media",
        "messages",
        "otp_codes",
        "refresh_tokens",
        "socketio_sessions",
        "users",
    ];
    assert_eq!(tables(&mut conn), expected);

    let reverted = switchboard::db::revert_all_migrations(&mut conn).unwrap();
    assert_eq!(reverted, applied.len());
    assert!(
        tables(&mut conn).is_empty(),
        "down.sql leaves nothing behind"
    );

    let again = switchboard::db::run_migrations(&mut conn).unwrap();
    assert_eq!(again, applied);
    assert_eq!(tables(&mut conn), expected);

    // Nothing is pending after a full run.
    assert!(switchboard::db::run_migrations(&mut conn)
        .unwrap()
        .is_empty());
}
