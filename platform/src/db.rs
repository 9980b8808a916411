//! The control-plane database: connecting (creating the database if missing) and migrating.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use migrations::{Migrator, MigratorTrait};
use sqlx::{
    ConnectOptions, Connection, Executor, MySqlPool,
    mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions},
};

use crate::config::DatabaseUrl;

/// Connects, creating the database named in the URL if it does not exist.
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
        let mut admin = MySqlConnection::connect_with(&options.clone().database(""))
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
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to {}", url.redacted()))
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
