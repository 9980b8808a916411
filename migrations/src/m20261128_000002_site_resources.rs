//! Site secrets (encrypted at rest) and the last result of each reconciler.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS site_secrets (
        site_id CHAR(10) NOT NULL,
        kind VARCHAR(32) NOT NULL,
        nonce BINARY(12) NOT NULL,
        ciphertext VARBINARY(2048) NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (site_id, kind)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS reconciler_runs (
        name VARCHAR(32) NOT NULL PRIMARY KEY,
        started_at DATETIME(6) NOT NULL,
        finished_at DATETIME(6) NULL,
        result JSON NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS orphans (
        backend VARCHAR(16) NOT NULL,
        resource VARCHAR(64) NOT NULL,
        first_seen_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (backend, resource)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS orphans",
    "DROP TABLE IF EXISTS reconciler_runs",
    "DROP TABLE IF EXISTS site_secrets",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
