//! Synced address books, and the facts the contact policy asks about a pair of users.

use super::models::User;
use super::schema::{contacts, conversations, users};
use crate::error::AppResult;
use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Text};

/// Users by id (any order; missing ids are simply absent).
pub(crate) fn users_by_ids(conn: &mut PgConnection, ids: &[i64]) -> AppResult<Vec<User>> {
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .select(User::as_select())
        .load(conn)?)
}

/// The direct conversation of a pair, if it exists.
pub(crate) fn direct_between(conn: &mut PgConnection, a: i64, b: i64) -> AppResult<Option<i64>> {
    let key = super::conversations::participant_key(a, b);
    Ok(conversations::table
        .filter(conversations::participant_key.eq(key))
        .select(conversations::id)
        .first(conn)
        .optional()?)
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

/// Whether either user has the other's phone number in their synced contacts.
pub(crate) fn are_contacts(conn: &mut PgConnection, a: i64, b: i64) -> AppResult<bool> {
    let row: Found = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM contacts c JOIN users u ON u.phone = c.phone \
         WHERE (c.owner_id = $1 AND u.id = $2) OR (c.owner_id = $2 AND u.id = $1)) AS found",
    )
    .bind::<BigInt, _>(a)
    .bind::<BigInt, _>(b)
    .get_result(conn)?;
    Ok(row.found)
}

/// Whether both users belong to a conversation of one of `kinds`; when `contexts` is not
/// empty, only conversations carrying one of those context types count.
pub(crate) fn share_conversation(
    conn: &mut PgConnection,
    a: i64,
    b: i64,
    kinds: &[&str],
    contexts: &[String],
) -> AppResult<bool> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    let row: Found = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM conversation_members m1 \
         JOIN conversation_members m2 ON m2.conversation_id = m1.conversation_id \
         JOIN conversations c ON c.id = m1.conversation_id \
         WHERE m1.user_id = $1 AND m2.user_id = $2 AND c.kind = ANY($3) \
         AND (cardinality($4::text[]) = 0 OR c.context_type = ANY($4))) AS found",
    )
    .bind::<BigInt, _>(a)
    .bind::<BigInt, _>(b)
    .bind::<Array<Text>, _>(kinds)
    .bind::<Array<Text>, _>(contexts)
    .get_result(conn)?;
    Ok(row.found)
}

/// One address-book entry: an E.164 number and an optional display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// E.164 phone.
    pub phone: String,
    /// Name in the owner's address book.
    pub name: Option<String>,
}

/// Stores entries of `owner`'s address book (upsert); with `replace`, entries not in the list
/// are removed. Returns how many entries the book now holds.
pub(crate) fn sync(
    conn: &mut PgConnection,
    owner: i64,
    entries: &[Entry],
    replace: bool,
) -> AppResult<i64> {
    conn.transaction(|conn| {
        let now = Utc::now();
        if replace {
            let keep: Vec<&str> = entries.iter().map(|e| e.phone.as_str()).collect();
            diesel::delete(
                contacts::table
                    .filter(contacts::owner_id.eq(owner))
                    .filter(contacts::phone.ne_all(keep)),
            )
            .execute(conn)?;
        }
        for chunk in entries.chunks(1000) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|e| {
                    (
                        contacts::owner_id.eq(owner),
                        contacts::phone.eq(&e.phone),
                        contacts::name.eq(e.name.as_deref()),
                        contacts::updated_at.eq(now),
                    )
                })
                .collect();
            diesel::insert_into(contacts::table)
                .values(rows)
                .on_conflict((contacts::owner_id, contacts::phone))
                .do_update()
                .set((
                    contacts::name.eq(diesel::upsert::excluded(contacts::name)),
                    contacts::updated_at.eq(now),
                ))
                .execute(conn)?;
        }
        Ok(contacts::table
            .filter(contacts::owner_id.eq(owner))
            .count()
            .get_result(conn)?)
    })
}

/// Registered, unbanned users (other than `viewer`) whose phone is one of `phones`.
pub(crate) fn registered(
    conn: &mut PgConnection,
    viewer: i64,
    phones: &[String],
) -> AppResult<Vec<User>> {
    Ok(users::table
        .filter(users::phone.eq_any(phones))
        .filter(users::id.ne(viewer))
        .filter(users::banned_at.is_null())
        .order(users::id)
        .select(User::as_select())
        .load(conn)?)
}
