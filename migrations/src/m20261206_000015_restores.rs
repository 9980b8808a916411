//! Restores and clones of sites (issue 13): one row per restore, with the backup it reads,
//! the site it writes, the automatic backup taken before anything was overwritten (the
//! way back), and for a clone the domain rewritten in the database.
//!
//! Expand only: a new table, which the previous release never reads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[r"CREATE TABLE IF NOT EXISTS restores (
        id CHAR(10) NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL AUTO_INCREMENT,
        tenant_id CHAR(10) NOT NULL,
        site_id CHAR(10) NOT NULL,
        backup_id CHAR(10) NOT NULL,
        source_site_id CHAR(10) NOT NULL,
        kind VARCHAR(16) NOT NULL,
        state VARCHAR(16) NOT NULL,
        operation_id CHAR(10) NULL,
        pre_restore_backup_id CHAR(10) NULL,
        domain_from VARCHAR(253) NULL,
        domain_to VARCHAR(253) NULL,
        statements BIGINT NULL,
        strings_rewritten BIGINT NULL,
        files_restored BIGINT NULL,
        error VARCHAR(1000) NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        finished_at DATETIME(6) NULL,
        UNIQUE KEY uq_restores_seq (seq),
        KEY ix_restores_site (site_id, seq),
        KEY ix_restores_operation (operation_id),
        CONSTRAINT ck_restores_state CHECK (state IN ('pending', 'running', 'complete', 'failed')),
        CONSTRAINT ck_restores_kind CHECK (kind IN ('restore', 'clone'))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"];

const DOWN: &[&str] = &["DROP TABLE IF EXISTS restores"];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
