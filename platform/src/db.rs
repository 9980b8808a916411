//! The control-plane database: connecting (creating the database if missing) and migrating.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use migrations::{Migrator, MigratorTrait};
use sqlx::{
    ConnectOptions, Connection, Executor, MySqlPool,
    mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions},
};

use crate::config::DatabaseUrl;

/// How many times a connection that the network cut before the server answered is tried.
const CONNECT_ATTEMPTS: u32 = 6;
/// The wait before the second try; doubled each time (0.2 + 0.4 + … + 3.2 s = 6.2 s).
const CONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Connects, creating the database named in the URL if it does not exist.
///
/// A connection closed or reset before the server answered (a router or proxy restarting,
/// a Galera node leaving) is tried again with backoff; an answer of the server's own (a
/// wrong password, an unknown host in a grant) fails at once.
pub async fn connect(url: &DatabaseUrl, max_connections: u32) -> anyhow::Result<MySqlPool> {
    let options = MySqlConnectOptions::from_str(url.expose())
        .with_context(|| format!("parsing database URL {}", url.redacted()))?
        .timezone(Some("+00:00".into()))
        .log_statements(tracing::log::LevelFilter::Trace);
    let name = options.get_database().map(str::to_owned);
    if let Some(name) = &name {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            anyhow::bail!("the database name must be letters, digits and '_'");
        }
        let admin_options = options.clone().database("");
        let mut admin = retry_cut(|| MySqlConnection::connect_with(&admin_options))
            .await
            .with_context(|| format!("connecting to {}", url.redacted()))?;
        admin
            .execute(crate::sql!(
                "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .await
            .context("creating the database")?;
        admin.close().await.ok();
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    // The first connection, so that a database that cannot be reached fails start-up.
    retry_cut(|| pool.acquire())
        .await
        .with_context(|| format!("connecting to {}", url.redacted()))?;
    Ok(pool)
}

/// Runs `attempt` until it succeeds, fails with an answer of the server's, or has been tried
/// [`CONNECT_ATTEMPTS`] times.
async fn retry_cut<T, F, Fut>(mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = CONNECT_FIRST_BACKOFF;
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(e) if tried < CONNECT_ATTEMPTS && cut_before_answer(&e) => {
                tracing::warn!(
                    attempt = tried,
                    error = %e,
                    "the database connection was cut before the server answered; trying again"
                );
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                tried += 1;
            }
            result => return result,
        }
    }
}

/// Whether the connection failed in the network (refused, reset, closed mid-handshake,
/// garbled by a proxy) rather than by the server's decision. (The pool itself retries a
/// refused connection until its acquire timeout and then answers `PoolTimedOut`, which is
/// not tried again: the database has been unreachable for that long.)
fn cut_before_answer(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
}

/// Applies every pending migration.
///
/// A database that a newer release already took further (a rolling upgrade with replicas of
/// both releases, a rollback, a branch's build tried on a shared database) is used as it is
/// when it holds every migration this release knows: migrations only expand
/// (migrations/src/lib.rs), so the older code runs on it. sea-orm's `up` alone refuses to
/// start on it ("this migration has been applied but its file is missing").
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    let connection =
        sea_orm_migration::sea_orm::SqlxMySqlConnector::from_sqlx_mysql_pool(pool.clone());
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let installed: bool = sqlx::query_scalar(
        "SELECT COUNT(*) > 0 FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'seaql_migrations'",
    )
    .fetch_one(pool)
    .await
    .context("looking for the migrations table")?;
    let applied: Vec<String> = if installed {
        sqlx::query_scalar("SELECT version FROM seaql_migrations")
            .fetch_all(pool)
            .await
            .context("reading the applied migrations")?
    } else {
        Vec::new()
    };
    let newer: Vec<&String> = applied.iter().filter(|v| !known.contains(v)).collect();
    if !newer.is_empty() {
        let missing: Vec<&String> = known.iter().filter(|k| !applied.contains(k)).collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "the database has migrations this release does not know ({newer:?}) and lacks some it needs ({missing:?})"
            );
        }
        tracing::warn!(
            newer = ?newer,
            "the database holds migrations of a newer release; running on it as it is"
        );
        return Ok(());
    }
    Migrator::up(&connection, None)
        .await
        .context("applying migrations")?;
    Ok(())
}
