//! Backups of sites (issue 13): one row per backup, with its state and sizes, and the
//! journal of its multipart uploads, written before each upload's first part so that a
//! platform killed mid-backup can abort them by id (not every S3 server can list them).
//!
//! Expand only: new tables, which the previous release never reads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS backups (
        id CHAR(10) NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL AUTO_INCREMENT,
        tenant_id CHAR(10) NOT NULL,
        site_id CHAR(10) NOT NULL,
        operation_id CHAR(10) NULL,
        kind VARCHAR(16) NOT NULL,
        state VARCHAR(16) NOT NULL,
        plan_id CHAR(10) NULL,
        database_bytes BIGINT NULL,
        files_bytes BIGINT NULL,
        manifest_sha256 CHAR(64) NULL,
        tables_count INT NULL,
        error VARCHAR(1000) NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        started_at DATETIME(6) NULL,
        completed_at DATETIME(6) NULL,
        deleted_at DATETIME(6) NULL,
        UNIQUE KEY uq_backups_seq (seq),
        KEY ix_backups_site (site_id, seq),
        KEY ix_backups_tenant (tenant_id, seq),
        CONSTRAINT ck_backups_state CHECK (state IN ('pending', 'running', 'complete', 'failed', 'deleting', 'deleted')),
        CONSTRAINT ck_backups_kind CHECK (kind IN ('manual', 'scheduled', 'final', 'pre_restore'))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS backup_uploads (
        backup_id CHAR(10) NOT NULL,
        object_key VARCHAR(255) NOT NULL,
        upload_id VARCHAR(255) NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (backup_id, upload_id),
        CONSTRAINT fk_backup_uploads_backup FOREIGN KEY (backup_id) REFERENCES backups (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS backup_uploads",
    "DROP TABLE IF EXISTS backups",
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
