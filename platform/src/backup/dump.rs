//! The site's database as SQL, read inside one consistent snapshot.
//!
//! Several connections each run `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`
//! at `REPEATABLE READ`, opened while the schema's tables are briefly locked against
//! writes, so all of them read the same instant (InnoDB) while the site keeps writing
//! ([`dump_database`]). Rows stream from the server (text protocol, `SET NAMES binary`:
//! the bytes as stored, no conversion) into multi-row `INSERT`s that go into the zstd/S3
//! writer, so memory holds a few statements per reader, not a table. Text columns are
//! written as escaped string literals, binary ones as `0x…` (`literal_for`); the dump
//! is loaded under `SET NAMES binary` too, where both are the same bytes to the server.
//!
//! The dump names no schema (no `USE`, no `CREATE DATABASE`, no qualified names): it is
//! restored into whatever database its connection selects, which is the site's own.

use anyhow::Context;
use mysql_async::{
    Conn, Opts, Value,
    consts::{ColumnFlags, ColumnType},
    prelude::Queryable,
};
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
    /// Connections that read the tables, all in one snapshot (1: the write lock could not
    /// be had, see [`dump_database`]).
    pub readers: u32,
}

/// SQL text is handed to the compressor in chunks of about this size, and one `INSERT`
/// holds about this many bytes of values (well under `max_allowed_packet`).
const STATEMENT_BYTES: usize = 1024 * 1024;

/// `` `name` `` with backticks doubled.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal in the escapes MariaDB reads without `NO_BACKSLASH_ESCAPES` (the dump
/// sets its own `sql_mode`): NUL, newline, carriage return, backslash, the single quote
/// and Ctrl-Z, as `mysqldump` escapes them. `"` needs none inside `'…'` (in WordPress's
/// serialized values it is everywhere). Runs without any of these are copied whole.
pub(crate) fn push_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'\'');
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            0 => b"\\0",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\\' => b"\\\\",
            b'\'' => b"\\'",
            0x1a => b"\\Z",
            _ => continue,
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escaped);
        copied = i + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'\'');
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.extend_from_slice(b"''");
        return;
    }
    // Straight into the statement buffer from a table: `hex::encode` builds a `String`
    // char by char, which was half of a (debug) backup's time.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + 2 * bytes.len());
    out.extend_from_slice(b"0x");
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    /// As the server printed it (numbers).
    Bare,
    /// Quoted and escaped (text, dates).
    Quoted,
    /// `0x…` (binary strings, blobs, bits).
    Hex,
    /// Quoted and escaped, marked as text (`_utf8mb4'…'`): under `SET NAMES binary` a
    /// plain literal is bytes, and some types read bytes differently from text (MariaDB's
    /// INET6 takes 16 bytes as its binary form, and its text form only as text).
    Text,
}

/// How a column's values are written, from its type and flags.
///
/// Under `SET NAMES binary` every string column reports the `binary` character set, so
/// the charset cannot tell text from bytes; the column's `BINARY` flag still can: it is
/// set on `BINARY`, `VARBINARY` and the `BLOB`s (and on text with a binary collation
/// such as `utf8mb4_bin`, or MariaDB's `JSON`), not on text of any other collation.
/// Text goes out as an escaped string literal, half the size of its hex form through
/// zstd, SHA-256 and the upload; the bytes are the same either way, because the
/// restore also runs under `SET NAMES binary`, where a literal is its bytes, unconverted.
/// Backups taken before this wrote text as `0x…` too; a restore reads both forms.
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
        // MariaDB's INET4, INET6 and UUID columns are sent in their text form, flagged
        // BINARY and UNSIGNED (a BINARY(n) column never is UNSIGNED): as bytes, that text
        // would not load back (the value came back NULL), as text it does.
        MYSQL_TYPE_STRING
            if column
                .flags()
                .contains(ColumnFlags::BINARY_FLAG | ColumnFlags::UNSIGNED_FLAG) =>
        {
            Literal::Text
        }
        _ if column.flags().contains(ColumnFlags::BINARY_FLAG) => Literal::Hex,
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

/// Connections reading tables at once, all inside one snapshot.
const READERS: usize = 4;
/// A table is read in primary-key ranges of about this many bytes (by the server's
/// estimate of its size), so that one large table (`wp_posts`) is read by every reader.
const CHUNK_BYTES: u64 = 8 * 1024 * 1024;
/// Ranges per table at most.
const MAX_CHUNKS: u64 = 512;
/// How long the brief write lock waits for the site's open transactions (seconds); past
/// it, the dump falls back to one reader.
const LOCK_WAIT_SECS: u32 = 10;

/// A piece of work for a reader: a table, whole or one range of its integer primary key.
#[derive(Debug, Clone)]
struct Chunk {
    table: String,
    range: Option<(String, i128, i128)>,
}

/// Dumps every base table of `schema` through `opts` into `out`.
///
/// Several connections read at once inside one snapshot, the way parallel dump tools
/// do: the schema's tables are locked against writes (`LOCK TABLES … READ`, which waits
/// for the transactions already writing them to commit), each reader starts its
/// `START TRANSACTION WITH CONSISTENT SNAPSHOT`, and the lock is released — writes are
/// held for as long as it takes to open the snapshots, and every reader sees the same
/// committed state. Tables are cut into primary-key ranges that the readers take in
/// turn; their statements (at most [`STATEMENT_BYTES`] each) go into the one SQL stream
/// in the order they are finished, each table's `CREATE TABLE` before all of them. Where
/// the lock cannot be had (no `LOCK TABLES` privilege, a transaction holding it longer
/// than [`LOCK_WAIT_SECS`]), or the connections reached different servers (a router
/// spreading them over a cluster's nodes), one reader reads everything in its own
/// snapshot.
pub(crate) async fn dump_database(
    opts: Opts,
    schema: &str,
    out: &mut CompressedWriter,
) -> anyhow::Result<DumpSummary> {
    let mut conn = Conn::new(opts.clone())
        .await
        .context("connecting to the site's database")?;
    let result = dump_with(&mut conn, &opts, schema, out).await;
    // A failed dump closes its connections too (the snapshots end with them).
    let _ = conn.disconnect().await;
    result
}

/// A connection prepared to read `schema` as stored, in one snapshot once started.
async fn reader(opts: &Opts, schema: &str) -> anyhow::Result<Conn> {
    let mut conn = Conn::new(opts.clone())
        .await
        .context("connecting to the site's database")?;
    conn.query_drop(format!("USE {}", quote_ident(schema)))
        .await
        .context("selecting the site's database")?;
    conn.query_drop("SET NAMES binary, time_zone = '+00:00'")
        .await
        .context("preparing the session")?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .context("preparing the session")?;
    Ok(conn)
}

/// Which server a connection reached: host name, port, server id and, on Galera, the
/// node's name and address (cluster nodes often share the rest). `None` when the server
/// does not say (then nothing proves two connections share it).
async fn server_identity(conn: &mut Conn) -> Option<String> {
    let galera: Option<(String, String)> = conn
        .query_first("SELECT @@wsrep_node_name, @@wsrep_node_address")
        .await
        .unwrap_or_default();
    let common: Option<(String, u32, u32)> = conn
        .query_first("SELECT @@hostname, @@port, @@server_id")
        .await
        .ok()
        .flatten();
    common.map(|(host, port, id)| {
        let (name, address) = galera.unwrap_or_default();
        format!("{host}:{port} id {id} node {name} {address}")
    })
}

/// Whether every connection is known to have reached the same server.
fn same_server(servers: &[Option<String>]) -> bool {
    match servers.first() {
        Some(Some(first)) => servers.iter().all(|s| s.as_ref() == Some(first)),
        _ => false,
    }
}

async fn start_snapshot(conn: &mut Conn) -> anyhow::Result<()> {
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .context("starting the snapshot")
}

/// Opens the readers, all in one snapshot (see [`dump_database`]): `READERS` of them
/// under the schema's write lock, or one when the lock cannot be had.
async fn open_readers(
    coordinator: &mut Conn,
    opts: &Opts,
    schema: &str,
    tables: &[String],
) -> anyhow::Result<Vec<Conn>> {
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(reader(opts, schema).await?);
    }
    // The lock and the snapshots are one server's: behind a router that spreads
    // connections over a cluster's nodes, readers on other nodes than the lock's would
    // open their snapshots at other points of the replication stream.
    let mut servers = vec![server_identity(coordinator).await];
    for conn in &mut readers {
        servers.push(server_identity(conn).await);
    }
    let one_server = same_server(&servers);
    if !one_server {
        tracing::warn!(
            servers = ?servers,
            "the dump's connections reached different servers; reading with one connection"
        );
    }
    let locked = if one_server && !tables.is_empty() {
        let list = tables
            .iter()
            .map(|t| format!("{} READ", quote_ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let lock = async {
            coordinator
                .query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}"))
                .await?;
            coordinator.query_drop(format!("LOCK TABLES {list}")).await
        };
        match lock.await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "no write lock for a parallel dump; reading with one connection");
                false
            }
        }
    } else {
        false
    };
    if !locked {
        let extra = readers.split_off(1);
        for conn in extra {
            let _ = conn.disconnect().await;
        }
    }
    let mut started = Ok(());
    for conn in &mut readers {
        started = start_snapshot(conn).await;
        if started.is_err() {
            break;
        }
    }
    // Released whatever happened: the site must not stay blocked. An error here means the
    // lock did not hold while the snapshots opened (on Galera, a replicated write aborts a
    // local lock that conflicts with it): the snapshots may differ, so they are not used.
    let held = !locked || coordinator.query_drop("UNLOCK TABLES").await.is_ok();
    match started {
        Ok(()) if held => Ok(readers),
        Ok(()) => {
            tracing::warn!(
                "the write lock was broken while the snapshots opened; reading with one connection"
            );
            for conn in readers {
                let _ = conn.disconnect().await;
            }
            let mut one = reader(opts, schema).await?;
            start_snapshot(&mut one).await?;
            Ok(vec![one])
        }
        Err(err) => {
            for conn in readers {
                let _ = conn.disconnect().await;
            }
            Err(err)
        }
    }
}

/// The integer primary key column of each table that has one (one column, an integer).
async fn integer_keys(
    conn: &mut Conn,
    schema: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let rows: Vec<(String, String, String)> = conn
        .exec(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND COLUMN_KEY = 'PRI'",
            (schema,),
        )
        .await
        .context("reading the primary keys")?;
    let mut keys: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
    for (table, column, kind) in rows {
        keys.entry(table).or_default().push((column, kind));
    }
    Ok(keys
        .into_iter()
        .filter_map(|(table, columns)| match columns.as_slice() {
            [(column, kind)]
                if matches!(
                    kind.as_str(),
                    "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
                ) =>
            {
                Some((table, column.clone()))
            }
            _ => None,
        })
        .collect())
}

/// The work: each table whole, or in key ranges when it has an integer key and is large.
/// `conn` is a reader inside the snapshot (the ranges cover the keys it sees).
async fn plan_chunks(
    conn: &mut Conn,
    schema: &str,
    tables: &[String],
    split: bool,
) -> anyhow::Result<Vec<Chunk>> {
    let whole = |t: &String| Chunk {
        table: t.clone(),
        range: None,
    };
    if !split {
        return Ok(tables.iter().map(whole).collect());
    }
    let keys = integer_keys(conn, schema).await?;
    let sizes: Vec<(String, u64)> = conn
        .exec(
            "SELECT TABLE_NAME, COALESCE(DATA_LENGTH, 0) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ?",
            (schema,),
        )
        .await
        .context("reading the table sizes")?;
    let mut chunks = Vec::new();
    for table in tables {
        let size = sizes.iter().find(|(t, _)| t == table).map_or(0, |s| s.1);
        let pieces = (size / CHUNK_BYTES).clamp(1, MAX_CHUNKS);
        let Some(column) = keys.get(table).filter(|_| pieces > 1) else {
            chunks.push(whole(table));
            continue;
        };
        let bounds: Option<(Option<String>, Option<String>)> = conn
            .query_first(format!(
                "SELECT CAST(MIN({c}) AS CHAR), CAST(MAX({c}) AS CHAR) FROM {t}",
                c = quote_ident(column),
                t = quote_ident(table)
            ))
            .await
            .with_context(|| format!("reading the key range of {table}"))?;
        let parse = |v: Option<String>| v.and_then(|v| v.parse::<i128>().ok());
        let (Some(lo), Some(hi)) = bounds.map_or((None, None), |(a, b)| (parse(a), parse(b)))
        else {
            chunks.push(whole(table));
            continue;
        };
        let step = ((hi - lo) / i128::from(pieces) + 1).max(1);
        let mut start = lo;
        while start <= hi {
            let end = (start + step - 1).min(hi);
            chunks.push(Chunk {
                table: table.clone(),
                range: Some((column.clone(), start, end)),
            });
            start = end + 1;
        }
    }
    Ok(chunks)
}

async fn dump_with(
    conn: &mut Conn,
    opts: &Opts,
    schema: &str,
    out: &mut CompressedWriter,
) -> anyhow::Result<DumpSummary> {
    conn.query_drop(format!("USE {}", quote_ident(schema)))
        .await
        .context("selecting the site's database")?;
    conn.query_drop("SET NAMES binary, time_zone = '+00:00'")
        .await
        .context("preparing the session")?;
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
    let mut summary = DumpSummary {
        server_version,
        tables: Vec::new(),
        skipped: Vec::new(),
        readers: 0,
    };
    let mut tables = Vec::new();
    for (name, kind) in objects {
        if kind == "BASE TABLE" {
            tables.push(name);
        } else {
            summary.skipped.push(name);
        }
    }

    let mut readers = open_readers(conn, opts, schema, &tables).await?;
    summary.readers = u32::try_from(readers.len()).unwrap_or(u32::MAX);
    let result = dump_tables(conn, &mut readers, schema, &tables, out).await;
    for reader in readers {
        let _ = reader.disconnect().await;
    }
    summary.tables = result?;
    Ok(summary)
}

/// Writes the header, every table's definition, the readers' rows and the footer.
async fn dump_tables(
    conn: &mut Conn,
    readers: &mut Vec<Conn>,
    schema: &str,
    tables: &[String],
    out: &mut CompressedWriter,
) -> anyhow::Result<Vec<TableRows>> {
    out.write(HEADER.as_bytes()).await?;
    for name in tables {
        let table = quote_ident(name);
        let create: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_first(format!("SHOW CREATE TABLE {table}"))
            .await
            .with_context(|| format!("dumping table {name}"))?;
        let (_, create) =
            create.with_context(|| format!("SHOW CREATE TABLE {name} returned nothing"))?;
        let mut sql = format!("\n-- table {table}\nDROP TABLE IF EXISTS {table};\n").into_bytes();
        sql.extend_from_slice(&create);
        sql.extend_from_slice(b";\n");
        out.write(&sql).await?;
    }

    let split = readers.len() > 1;
    let Some(first) = readers.first_mut() else {
        anyhow::bail!("no reader");
    };
    let chunks = plan_chunks(first, schema, tables, split).await?;
    let queue = std::sync::Arc::new(std::sync::Mutex::new(
        chunks
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2 * readers.len());
    let mut tasks = tokio::task::JoinSet::new();
    for mut reader in std::mem::take(readers) {
        let (queue, failed, tx) = (queue.clone(), failed.clone(), tx.clone());
        tasks.spawn(async move {
            let mut counted: Vec<(String, u64)> = Vec::new();
            let result = async {
                loop {
                    if failed.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(());
                    }
                    let next = queue
                        .lock()
                        .map_err(|_| anyhow::anyhow!("a reader panicked"))?
                        .pop_front();
                    let Some(chunk) = next else { break };
                    let rows = dump_chunk(&mut reader, &chunk, &tx, &failed)
                        .await
                        .with_context(|| format!("dumping table {}", chunk.table))?;
                    counted.push((chunk.table, rows));
                }
                reader
                    .query_drop("COMMIT")
                    .await
                    .context("ending the snapshot")?;
                anyhow::Ok(())
            }
            .await;
            if result.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (reader, result.map(|()| counted))
        });
    }
    drop(tx);
    let mut written = Ok(());
    while let Some(statement) = rx.recv().await {
        if let Err(err) = out.write(&statement).await {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            written = Err(err);
            break;
        }
    }
    drop(rx);
    let mut rows: std::collections::HashMap<String, u64> = Default::default();
    let mut read = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let (reader, result) = joined.context("a reader panicked")?;
        readers.push(reader);
        match result {
            Ok(counted) => {
                for (table, n) in counted {
                    *rows.entry(table).or_default() += n;
                }
            }
            Err(err) if read.is_ok() => read = Err(err),
            Err(_) => {}
        }
    }
    written?;
    read?;
    out.write(FOOTER.as_bytes()).await?;
    Ok(tables
        .iter()
        .map(|name| TableRows {
            name: name.clone(),
            rows: rows.get(name).copied().unwrap_or(0),
        })
        .collect())
}

/// Reads one chunk's rows into multi-row `INSERT`s of about [`STATEMENT_BYTES`], each
/// sent whole into `tx`; returns the rows read.
async fn dump_chunk(
    conn: &mut Conn,
    chunk: &Chunk,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
    failed: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<u64> {
    let table = quote_ident(&chunk.table);
    let query = match &chunk.range {
        None => format!("SELECT * FROM {table}"),
        Some((column, lo, hi)) => {
            let c = quote_ident(column);
            format!("SELECT * FROM {table} WHERE {c} >= {lo} AND {c} <= {hi}")
        }
    };
    let mut result = conn.query_iter(query).await.context("reading rows")?;
    let literals: Vec<Literal> = result.columns_ref().iter().map(literal_for).collect();
    let mut sql = Vec::with_capacity(STATEMENT_BYTES + 64 * 1024);
    let mut rows = 0u64;
    let send = |sql: Vec<u8>| async move {
        tx.send(sql)
            .await
            .map_err(|_| anyhow::anyhow!("the dump's writer stopped"))
    };
    while let Some(row) = result.next().await.context("reading rows")? {
        if sql.is_empty() {
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
                        Literal::Text => {
                            sql.extend_from_slice(b"_utf8mb4");
                            push_string(&mut sql, &bytes);
                        }
                        Literal::Hex => push_hex(&mut sql, &bytes),
                    }
                }
                // The text protocol sends bytes; anything else is printed as a string.
                Some(other) => sql.extend_from_slice(other.as_sql(false).as_bytes()),
            }
        }
        sql.push(b')');
        rows += 1;
        if sql.len() >= STATEMENT_BYTES {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                anyhow::bail!("another reader failed");
            }
            sql.extend_from_slice(b";\n");
            let full = std::mem::replace(&mut sql, Vec::with_capacity(STATEMENT_BYTES + 64 * 1024));
            send(full).await?;
        }
    }
    if !sql.is_empty() {
        sql.extend_from_slice(b";\n");
        send(sql).await?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_share_a_snapshot_only_when_every_one_is_known_on_the_same_server() {
        let on = |s: &str| Some(s.to_owned());
        let g1 = "g1:3306 id 1 node g1 10.0.0.1";
        assert!(same_server(&[on(g1), on(g1), on(g1)]));
        // Galera nodes with the same host name, port and id, told apart by their node.
        assert!(!same_server(&[
            on(g1),
            on(g1),
            on("g1:3306 id 1 node g2 10.0.0.2")
        ]));
        assert!(!same_server(&[on(g1), None]));
        assert!(!same_server(&[None, None]));
        assert!(!same_server(&[]));
    }

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
    fn text_is_quoted_and_only_columns_flagged_binary_are_hex() {
        // What MariaDB sends under `SET NAMES binary`: charset 63 for every string column.
        let column = |kind, flags| {
            mysql_async::Column::new(kind)
                .with_character_set(63)
                .with_flags(flags)
        };
        let text = ColumnFlags::BLOB_FLAG;
        let blob = ColumnFlags::BLOB_FLAG | ColumnFlags::BINARY_FLAG;
        use ColumnType::*;
        for (c, want) in [
            (column(MYSQL_TYPE_BLOB, text), Literal::Quoted),
            (
                column(MYSQL_TYPE_VAR_STRING, ColumnFlags::empty()),
                Literal::Quoted,
            ),
            (
                column(MYSQL_TYPE_STRING, ColumnFlags::ENUM_FLAG),
                Literal::Quoted,
            ),
            (column(MYSQL_TYPE_BLOB, blob), Literal::Hex),
            (
                column(MYSQL_TYPE_VAR_STRING, ColumnFlags::BINARY_FLAG),
                Literal::Hex,
            ),
            (
                column(MYSQL_TYPE_STRING, ColumnFlags::BINARY_FLAG),
                Literal::Hex,
            ),
            // INET4, INET6, UUID (checked with `mariadb --column-type-info`).
            (
                column(
                    MYSQL_TYPE_STRING,
                    ColumnFlags::BINARY_FLAG | ColumnFlags::UNSIGNED_FLAG,
                ),
                Literal::Text,
            ),
            (
                column(MYSQL_TYPE_BIT, ColumnFlags::UNSIGNED_FLAG),
                Literal::Hex,
            ),
            (
                column(MYSQL_TYPE_LONGLONG, ColumnFlags::BINARY_FLAG),
                Literal::Bare,
            ),
            (
                column(MYSQL_TYPE_DATETIME, ColumnFlags::BINARY_FLAG),
                Literal::Quoted,
            ),
        ] {
            assert_eq!(literal_for(&c), want, "{c:?}");
        }
    }

    #[test]
    fn escaped_runs_keep_every_other_byte_as_it_is() {
        let mut out = Vec::new();
        let value = [
            &b"Caf\xc3\xa9 "[..],
            "\u{1f680}".as_bytes(),
            b" \"q\" \xff\x7f",
        ]
        .concat();
        push_string(&mut out, &value);
        push_string(&mut out, b"");
        push_string(&mut out, b"\\\\");
        let mut want = b"'".to_vec();
        want.extend_from_slice(&value);
        want.extend_from_slice(b"''''\\\\\\\\'");
        assert_eq!(out, want);
    }

    #[test]
    fn identifiers_double_their_backticks() {
        assert_eq!(quote_ident("wp_posts"), "`wp_posts`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }
}
