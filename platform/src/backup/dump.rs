//! The site's database as SQL, read inside one consistent snapshot.
//!
//! One connection runs `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` at
//! `REPEATABLE READ`: every table is read as of that instant (InnoDB), while the site keeps
//! writing. Rows stream from the server (text protocol, `SET NAMES binary`: the bytes as
//! stored, no conversion) into multi-row `INSERT`s that go straight into the zstd/S3
//! writer, so memory holds one statement, not the table.
//!
//! The dump names no schema (no `USE`, no `CREATE DATABASE`, no qualified names): it is
//! restored into whatever database its connection selects, which is the site's own.

use anyhow::Context;
use mysql_async::{Conn, Opts, Value, consts::ColumnType, prelude::Queryable};
use serde::{Deserialize, Serialize};

use super::store::CompressedWriter;

/// A table and the rows the dump wrote for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub name: String,
    pub rows: u64,
}

/// What the dump found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpSummary {
    /// `SELECT VERSION()` of the server the dump was read from.
    pub server_version: String,
    pub tables: Vec<TableRows>,
    /// Views, sequences and other non-table objects, not dumped (WordPress makes none).
    pub skipped: Vec<String>,
}

/// SQL text is handed to the compressor in chunks of about this size, and one `INSERT`
/// holds about this many bytes of values (well under `max_allowed_packet`).
const STATEMENT_BYTES: usize = 1024 * 1024;

/// `` `name` `` with backticks doubled.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal in the escapes MariaDB reads without `NO_BACKSLASH_ESCAPES` (the dump
/// sets its own `sql_mode`).
pub(crate) fn push_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'\'');
    for &b in bytes {
        match b {
            0 => out.extend_from_slice(b"\\0"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\'' => out.extend_from_slice(b"\\'"),
            0x1a => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
    out.push(b'\'');
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.extend_from_slice(b"''");
        return;
    }
    out.extend_from_slice(b"0x");
    out.extend_from_slice(hex::encode(bytes).as_bytes());
}

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    /// As the server printed it (numbers).
    Bare,
    /// Quoted and escaped (text, dates).
    Quoted,
    /// `0x…` (binary strings, blobs, bits): no charset can alter them.
    Hex,
}

fn literal_for(column: &mysql_async::Column) -> Literal {
    use ColumnType::*;
    match column.column_type() {
        MYSQL_TYPE_TINY
        | MYSQL_TYPE_SHORT
        | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG
        | MYSQL_TYPE_INT24
        | MYSQL_TYPE_FLOAT
        | MYSQL_TYPE_DOUBLE
        | MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_YEAR => Literal::Bare,
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2 => Literal::Quoted,
        MYSQL_TYPE_BIT | MYSQL_TYPE_GEOMETRY => Literal::Hex,
        // 63: the `binary` collation (BINARY, VARBINARY, BLOB).
        _ if column.character_set() == 63 => Literal::Hex,
        _ => Literal::Quoted,
    }
}

/// The statements before any table: what the dump's values assume.
const HEADER: &str = "-- Pressdock backup: one consistent snapshot of the site's database\n\
SET NAMES binary;\n\
SET time_zone = '+00:00';\n\
SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO';\n\
SET FOREIGN_KEY_CHECKS = 0;\n\
SET UNIQUE_CHECKS = 0;\n";

const FOOTER: &str = "SET FOREIGN_KEY_CHECKS = 1;\nSET UNIQUE_CHECKS = 1;\n-- end of dump\n";

/// Dumps every base table of `schema` through `opts` into `out`.
pub(crate) async fn dump_database(
    opts: Opts,
    schema: &str,
    out: &mut CompressedWriter,
) -> anyhow::Result<DumpSummary> {
    let mut conn = Conn::new(opts)
        .await
        .context("connecting to the site's database")?;
    let result = dump_with(&mut conn, schema, out).await;
    // A failed dump closes its connection too (the snapshot ends with it).
    let _ = conn.disconnect().await;
    result
}

async fn dump_with(
    conn: &mut Conn,
    schema: &str,
    out: &mut CompressedWriter,
) -> anyhow::Result<DumpSummary> {
    conn.query_drop(format!("USE {}", quote_ident(schema)))
        .await
        .context("selecting the site's database")?;
    conn.query_drop("SET NAMES binary, time_zone = '+00:00'")
        .await
        .context("preparing the session")?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .context("preparing the session")?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .context("starting the snapshot")?;
    let server_version: String = conn
        .query_first("SELECT VERSION()")
        .await?
        .unwrap_or_default();
    let objects: Vec<(String, String)> = conn
        .exec(
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
            (schema,),
        )
        .await
        .context("listing tables")?;

    out.write(HEADER.as_bytes()).await?;
    let mut summary = DumpSummary {
        server_version,
        tables: Vec::new(),
        skipped: Vec::new(),
    };
    for (name, kind) in objects {
        if kind != "BASE TABLE" {
            summary.skipped.push(name);
            continue;
        }
        let rows = dump_table(conn, &name, out)
            .await
            .with_context(|| format!("dumping table {name}"))?;
        summary.tables.push(TableRows { name, rows });
    }
    out.write(FOOTER.as_bytes()).await?;
    conn.query_drop("COMMIT")
        .await
        .context("ending the snapshot")?;
    Ok(summary)
}

async fn dump_table(
    conn: &mut Conn,
    name: &str,
    out: &mut CompressedWriter,
) -> anyhow::Result<u64> {
    let table = quote_ident(name);
    let create: Option<(Vec<u8>, Vec<u8>)> = conn
        .query_first(format!("SHOW CREATE TABLE {table}"))
        .await?;
    let (_, create) = create.context("SHOW CREATE TABLE returned nothing")?;
    let mut sql = Vec::with_capacity(STATEMENT_BYTES + 64 * 1024);
    sql.extend_from_slice(
        format!("\n-- table {table}\nDROP TABLE IF EXISTS {table};\n").as_bytes(),
    );
    sql.extend_from_slice(&create);
    sql.extend_from_slice(b";\n");

    let mut result = conn
        .query_iter(format!("SELECT * FROM {table}"))
        .await
        .context("reading rows")?;
    let literals: Vec<Literal> = result.columns_ref().iter().map(literal_for).collect();
    let mut rows = 0u64;
    // Bytes of the current INSERT; 0: none open.
    let mut open = 0usize;
    while let Some(row) = result.next().await.context("reading rows")? {
        let start = sql.len();
        if open == 0 {
            sql.extend_from_slice(format!("INSERT INTO {table} VALUES\n(").as_bytes());
        } else {
            sql.extend_from_slice(b",\n(");
        }
        for (i, value) in row.unwrap_raw().into_iter().enumerate() {
            if i > 0 {
                sql.push(b',');
            }
            match value {
                None | Some(Value::NULL) => sql.extend_from_slice(b"NULL"),
                Some(Value::Bytes(bytes)) => {
                    match literals.get(i).copied().unwrap_or(Literal::Hex) {
                        Literal::Bare => sql.extend_from_slice(&bytes),
                        Literal::Quoted => push_string(&mut sql, &bytes),
                        Literal::Hex => push_hex(&mut sql, &bytes),
                    }
                }
                // The text protocol sends bytes; anything else is printed as a string.
                Some(other) => sql.extend_from_slice(other.as_sql(false).as_bytes()),
            }
        }
        sql.push(b')');
        open += sql.len() - start;
        rows += 1;
        if open >= STATEMENT_BYTES {
            sql.extend_from_slice(b";\n");
            open = 0;
            out.write(&sql).await?;
            sql.clear();
        }
    }
    if open > 0 {
        sql.extend_from_slice(b";\n");
    }
    out.write(&sql).await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_every_byte_the_parser_treats_specially() {
        let mut out = Vec::new();
        push_string(&mut out, b"a'b\\c\0d\ne\rf\x1ag\"h");
        assert_eq!(out, b"'a\\'b\\\\c\\0d\\ne\\rf\\Zg\"h'".to_vec());
    }

    #[test]
    fn binary_values_are_hex_and_empty_ones_an_empty_string() {
        let mut out = Vec::new();
        push_hex(&mut out, &[0, 0xff, b'\'']);
        out.push(b' ');
        push_hex(&mut out, &[]);
        assert_eq!(out, b"0x00ff27 ''".to_vec());
    }

    #[test]
    fn identifiers_double_their_backticks() {
        assert_eq!(quote_ident("wp_posts"), "`wp_posts`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }
}
