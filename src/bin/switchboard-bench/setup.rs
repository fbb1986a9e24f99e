//! Who connects: one [`ClientSpec`] per socket. For Switchboard the users, conversations and
//! memberships are written straight into PostgreSQL with one bulk statement per table; the
//! Socket.IO peer needs no rows, only tokens.

use diesel::pg::PgConnection;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// What one socket does.
#[derive(Clone, Debug)]
pub enum Role {
    /// Connects, joins nothing, sends nothing.
    Idle,
    /// Joins `conversation` and sends messages to it.
    Active {
        /// Conversation id as the target spells it.
        conversation: String,
        /// Members of that conversation (the sender included).
        members: u32,
    },
}

/// One socket of the run.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// 0-based client number (active clients first, then idle ones).
    pub index: usize,
    /// User id as the target spells it (the token's subject).
    pub user: String,
    /// Access token.
    pub token: String,
    /// Active or idle.
    pub role: Role,
}

/// The shape of a run, independent of the target.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Active senders.
    pub clients: usize,
    /// Extra idle sockets.
    pub idle: usize,
    /// Conversations the active clients are spread over (client i in conversation i % M).
    pub conversations: usize,
    /// Token lifetime in seconds.
    pub token_ttl_secs: u64,
}

impl Shape {
    /// Members of conversation `c` (0-based).
    pub fn members(&self, c: usize) -> u32 {
        let base = self.clients / self.conversations.max(1);
        let extra = usize::from(c < self.clients % self.conversations.max(1));
        u32::try_from(base + extra).unwrap_or(u32::MAX)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
}

/// Mints the HS256 tokens; `subjects[i]` becomes the `sub` of token i.
fn tokens(secret: &str, subjects: &[String], ttl_secs: u64) -> Result<Vec<String>, String> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    let header = Header::new(Algorithm::HS256);
    let iat = chrono::Utc::now().timestamp();
    let exp = iat.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    subjects
        .iter()
        .map(|sub| {
            jsonwebtoken::encode(&header, &Claims { sub, iat, exp }, &key)
                .map_err(|e| format!("cannot sign a token: {e}"))
        })
        .collect()
}

fn specs(
    shape: &Shape,
    tokens: Vec<String>,
    subjects: Vec<String>,
    conversation_ids: &[String],
) -> Vec<ClientSpec> {
    tokens
        .into_iter()
        .zip(subjects)
        .enumerate()
        .map(|(index, (token, user))| {
            let role = if index < shape.clients {
                let c = index % shape.conversations.max(1);
                Role::Active {
                    conversation: conversation_ids.get(c).cloned().unwrap_or_default(),
                    members: shape.members(c),
                }
            } else {
                Role::Idle
            };
            ClientSpec {
                index,
                user,
                token,
                role,
            }
        })
        .collect()
}

/// Socket.IO peer: users "1".."N+K", conversations "c0".."c{M-1}"; nothing is stored.
pub fn peer(shape: &Shape, secret: &str) -> Result<Vec<ClientSpec>, String> {
    let subjects: Vec<String> = (1..=shape.clients + shape.idle)
        .map(|i| i.to_string())
        .collect();
    let conversations: Vec<String> = (0..shape.conversations).map(|c| format!("c{c}")).collect();
    let tokens = tokens(secret, &subjects, shape.token_ttl_secs)?;
    Ok(specs(shape, tokens, subjects, &conversations))
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A name prefix no earlier run used (e-mail addresses are unique).
fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{}-{}", nanos / 1_000_000, std::process::id())
}

/// Rows created for one Switchboard run.
#[derive(Debug)]
pub struct Seeded {
    /// Name prefix of the run's users and conversations.
    pub prefix: String,
    /// User ids, active clients first.
    pub users: Vec<i64>,
    /// Conversation ids.
    pub conversations: Vec<i64>,
}

/// Inserts N+K users, M group conversations and the N memberships in one transaction.
pub fn seed(database_url: &str, shape: &Shape) -> Result<Seeded, String> {
    let mut conn = PgConnection::establish(database_url)
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let prefix = run_prefix();
    let total = i64::try_from(shape.clients + shape.idle).map_err(|e| e.to_string())?;
    let convs = i64::try_from(shape.conversations).map_err(|e| e.to_string())?;
    let clients = shape.clients;
    let seeded = conn
        .transaction::<_, diesel::result::Error, _>(|conn| {
            let mut users: Vec<i64> = diesel::sql_query(
                "INSERT INTO users (name, email) \
                 SELECT 'bench ' || $1 || ' ' || g, $1 || '-' || g || '@bench.invalid' \
                 FROM generate_series(0::bigint, $2 - 1) AS g \
                 RETURNING id",
            )
            .bind::<Text, _>(&prefix)
            .bind::<BigInt, _>(total)
            .load::<IdRow>(conn)?
            .into_iter()
            .map(|r| r.id)
            .collect();
            users.sort_unstable();
            let mut conversations: Vec<i64> = diesel::sql_query(
                "INSERT INTO conversations (kind, title, created_by) \
                 SELECT 'group', 'bench ' || $1 || ' #' || g, $3 \
                 FROM generate_series(0::bigint, $2 - 1) AS g \
                 RETURNING id",
            )
            .bind::<Text, _>(&prefix)
            .bind::<BigInt, _>(convs)
            .bind::<diesel::sql_types::Nullable<BigInt>, _>(users.first().copied())
            .load::<IdRow>(conn)?
            .into_iter()
            .map(|r| r.id)
            .collect();
            conversations.sort_unstable();
            let (member_convs, member_users): (Vec<i64>, Vec<i64>) = users
                .iter()
                .take(clients)
                .enumerate()
                .filter_map(|(i, user)| {
                    conversations
                        .get(i % conversations.len().max(1))
                        .map(|c| (*c, *user))
                })
                .unzip();
            diesel::sql_query(
                "INSERT INTO conversation_members (conversation_id, user_id) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            )
            .bind::<Array<BigInt>, _>(&member_convs)
            .bind::<Array<BigInt>, _>(&member_users)
            .execute(conn)?;
            Ok(Seeded {
                prefix: prefix.clone(),
                users,
                conversations,
            })
        })
        .map_err(|e| format!("cannot create the bench users and conversations: {e}"))?;
    if seeded.users.len() != shape.clients + shape.idle
        || seeded.conversations.len() != shape.conversations
    {
        return Err("the database returned fewer rows than were inserted".into());
    }
    Ok(seeded)
}

/// Inserts `total` messages into `seeded`'s conversations before the run (a database with
/// history, for soaks): spread evenly, each conversation's run of `seq` and `change_seq`
/// continuing from its `last_seq`/`last_change`, which move forward in the same transaction, so
/// `(conversation_id, seq)` stays unique and the server carries on from there. Sent by the
/// conversation's first member, an hour to a few days in the past. One statement per batch of
/// conversations (about 500 000 rows), each its own transaction; returns the rows inserted.
pub fn seed_messages(
    database_url: &str,
    seeded: &Seeded,
    shape: &Shape,
    total: u64,
) -> Result<u64, String> {
    if total == 0 || seeded.conversations.is_empty() {
        return Ok(0);
    }
    let mut conn = PgConnection::establish(database_url)
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let convs = seeded.conversations.len() as u64;
    let per_conv = total.div_ceil(convs);
    // The first member of conversation c is user c (client c is in conversation c % M).
    let senders: Vec<i64> = (0..seeded.conversations.len())
        .map(|c| {
            if c < shape.clients {
                seeded.users.get(c).copied().unwrap_or_default()
            } else {
                seeded.users.first().copied().unwrap_or_default()
            }
        })
        .collect();
    let batch = usize::try_from((500_000 / per_conv).max(1)).unwrap_or(1);
    let mut inserted = 0u64;
    let started = std::time::Instant::now();
    for (ids, senders) in seeded
        .conversations
        .chunks(batch)
        .zip(senders.chunks(batch))
    {
        let n = i64::try_from(per_conv).map_err(|e| e.to_string())?;
        let rows = conn
            .transaction::<_, diesel::result::Error, _>(|conn| {
                let rows = diesel::sql_query(
                    "INSERT INTO messages \
                       (conversation_id, seq, change_seq, sender_id, content, created_at) \
                     SELECT c.id, c.last_seq + g, c.last_change + g, s.sender, \
                            'seeded message ' || g, \
                            now() - interval '1 hour' - (($3 - g) * interval '1 second') \
                     FROM unnest($1::bigint[], $2::bigint[]) AS s(conv, sender) \
                     JOIN conversations c ON c.id = s.conv \
                     CROSS JOIN generate_series(1::bigint, $3) AS g",
                )
                .bind::<Array<BigInt>, _>(ids)
                .bind::<Array<BigInt>, _>(senders)
                .bind::<BigInt, _>(n)
                .execute(conn)?;
                diesel::sql_query(
                    "UPDATE conversations SET last_seq = last_seq + $2, \
                       last_change = last_change + $2, \
                       last_message_at = now() - interval '1 hour', updated_at = now() \
                     WHERE id = ANY($1::bigint[])",
                )
                .bind::<Array<BigInt>, _>(ids)
                .bind::<BigInt, _>(n)
                .execute(conn)?;
                Ok(rows)
            })
            .map_err(|e| format!("cannot seed messages: {e}"))?;
        inserted += rows as u64;
        tracing::info!(
            inserted,
            of = per_conv * convs,
            secs = started.elapsed().as_secs(),
            "seeding messages"
        );
    }
    diesel::sql_query("ANALYZE messages")
        .execute(&mut conn)
        .map_err(|e| format!("cannot analyze messages: {e}"))?;
    Ok(inserted)
}

/// Switchboard: seeds the database, then mints a token per user.
pub fn switchboard(
    shape: &Shape,
    database_url: &str,
    secret: &str,
) -> Result<(Seeded, Vec<ClientSpec>), String> {
    let seeded = seed(database_url, shape)?;
    let subjects: Vec<String> = seeded.users.iter().map(i64::to_string).collect();
    let conversations: Vec<String> = seeded.conversations.iter().map(i64::to_string).collect();
    let tokens = tokens(secret, &subjects, shape.token_ttl_secs)?;
    let specs = specs(shape, tokens, subjects, &conversations);
    Ok((seeded, specs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn members_spread_evenly() {
        let shape = Shape {
            clients: 10,
            idle: 2,
            conversations: 3,
            token_ttl_secs: 60,
        };
        assert_eq!(
            (shape.members(0), shape.members(1), shape.members(2)),
            (4, 3, 3)
        );
        let specs = peer(&shape, "0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(specs.len(), 12);
        let mut per_conv = std::collections::HashMap::new();
        for s in &specs {
            if let Role::Active { conversation, .. } = &s.role {
                *per_conv.entry(conversation.clone()).or_insert(0u32) += 1;
            }
        }
        assert_eq!(per_conv.get("c0"), Some(&4));
        assert_eq!(per_conv.get("c2"), Some(&3));
        assert!(matches!(specs[10].role, Role::Idle));
        assert!(matches!(specs[11].role, Role::Idle));
    }

    #[test]
    fn tokens_verify_with_the_secret() {
        let secret = "0123456789abcdef0123456789abcdef";
        let t = tokens(secret, &["42".to_owned()], 600).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t[0],
            &DecodingKey::from_secret(secret.as_bytes()),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "42");
        let keys = switchboard::auth::tokens::TokenKeys::new(secret.as_bytes());
        assert_eq!(keys.verify(&t[0]).unwrap().user_id, 42);
    }
}
