//! Hand-written SQL that PostgreSQL parses and plans once per connection.
//!
//! `diesel::sql_query` and multi-row `insert_into(..).values(&vec)` are never kept as prepared
//! statements, so PostgreSQL parses, analyses and plans them on every call; on the commit path
//! that was about a third of the database's CPU. A [`Prepared`] statement names its SQL by a
//! type ([`Statement`]), which gives Diesel a static query id: Diesel prepares it on a
//! connection's first use and executes the prepared statement after that. Its parameters are
//! arrays where a batch varies in size (`unnest($1::bigint[], ..)`), so one statement serves
//! every batch.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

/// A fixed SQL text with `$1`, `$2`, … parameters (a parameter may appear more than once).
pub(crate) trait Statement: 'static {
    /// The statement's text.
    const SQL: &'static str;
}

/// One bound parameter.
struct Bind<ST, V> {
    value: V,
    sql_type: PhantomData<ST>,
}

impl<ST, V> QueryFragment<Pg> for Bind<ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.value)
    }
}

/// Statement `S` with its parameters bound; run it with Diesel's `load`, `execute`, … (rows
/// load into `QueryableByName` types, as with `sql_query`).
#[must_use = "a statement runs only when loaded or executed"]
pub(crate) struct Prepared<'f, S> {
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'f>>,
    statement: PhantomData<S>,
}

impl<'f, S: Statement> Prepared<'f, S> {
    /// The statement with no parameter bound yet.
    pub(crate) fn new() -> Self {
        Self {
            binds: Vec::new(),
            statement: PhantomData,
        }
    }

    /// Binds the next parameter (`$1` first) as SQL type `ST`.
    pub(crate) fn bind<ST, V>(mut self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'f,
        ST: Send + 'f,
    {
        self.binds.push(Box::new(Bind {
            value,
            sql_type: PhantomData,
        }));
        self
    }
}

impl<S: Statement> std::fmt::Debug for Prepared<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("sql", &S::SQL)
            .field("binds", &self.binds.len())
            .finish()
    }
}

impl<S: Statement> Default for Prepared<'_, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Statement> QueryFragment<Pg> for Prepared<'_, S> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Diesel numbers parameters itself, one per bind pushed: each `$n` of the text becomes
        // the n-th bound value, pushed where it stands.
        let sql = S::SQL;
        let bytes = sql.as_bytes();
        let mut written = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                i += 1;
                continue;
            }
            let n: usize = sql[i + 1..i + 1 + digits].parse().unwrap_or(0);
            let bind = n
                .checked_sub(1)
                .and_then(|k| self.binds.get(k))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("${n} of a prepared statement has no bound value").into(),
                    )
                })?;
            out.push_sql(&sql[written..i]);
            bind.walk_ast(out.reborrow())?;
            i += 1 + digits;
            written = i;
        }
        out.push_sql(&sql[written..]);
        Ok(())
    }
}

impl<S: Statement> QueryId for Prepared<'_, S> {
    type QueryId = S;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<S> Query for Prepared<'_, S> {
    type SqlType = Untyped;
}

impl<S, Conn> RunQueryDsl<Conn> for Prepared<'_, S> {}

#[cfg(test)]
mod tests {
    use super::{Prepared, Statement};
    use diesel::debug_query;
    use diesel::pg::Pg;
    use diesel::sql_types::{Array, BigInt, Text};

    struct Twice;
    impl Statement for Twice {
        const SQL: &'static str =
            "SELECT $1::bigint[] AS a, $2::text AS b, $1::bigint[] AS c, '$x' AS d, $10 AS e";
    }

    #[test]
    fn every_parameter_is_bound_where_it_stands() {
        let q = Prepared::<Twice>::new()
            .bind::<Array<BigInt>, _>(vec![1_i64, 2])
            .bind::<Text, _>("two")
            .bind::<Text, _>("3")
            .bind::<Text, _>("4")
            .bind::<Text, _>("5")
            .bind::<Text, _>("6")
            .bind::<Text, _>("7")
            .bind::<Text, _>("8")
            .bind::<Text, _>("9")
            .bind::<Text, _>("ten");
        let text = debug_query::<Pg, _>(&q).to_string();
        assert!(
            text.starts_with(
                "SELECT $1::bigint[] AS a, $2::text AS b, $3::bigint[] AS c, '$x' AS d, $4 AS e"
            ),
            "{text}"
        );
        assert!(text.contains(r#"[[1, 2], "two", [1, 2], "ten"]"#), "{text}");
    }

    struct Missing;
    impl Statement for Missing {
        const SQL: &'static str = "SELECT $1, $2";
    }

    #[test]
    fn a_parameter_without_a_value_is_an_error_not_a_panic() {
        let q = Prepared::<Missing>::new().bind::<Text, _>("one");
        let built = diesel::query_builder::QueryFragment::<Pg>::to_sql(
            &q,
            &mut <Pg as diesel::backend::Backend>::QueryBuilder::default(),
            &Pg,
        );
        assert!(built.is_err());
    }
}
