//! Backup drills (issue 13, item 5): when each backup was last restored into a scratch
//! database and folder and compared with its manifest, and what came of it.
//!
//! Expand only: nullable columns the previous release never reads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[r"ALTER TABLE backups
        ADD COLUMN IF NOT EXISTS verified_at DATETIME(6) NULL,
        ADD COLUMN IF NOT EXISTS verify_result VARCHAR(8) NULL,
        ADD COLUMN IF NOT EXISTS verify_error VARCHAR(1000) NULL,
        ADD COLUMN IF NOT EXISTS verify_operation_id CHAR(10) NULL,
        ADD CONSTRAINT ck_backups_verify_result CHECK (verify_result IN ('passed', 'failed'))"];

const DOWN: &[&str] = &[r"ALTER TABLE backups
        DROP CONSTRAINT IF EXISTS ck_backups_verify_result,
        DROP COLUMN IF EXISTS verify_operation_id,
        DROP COLUMN IF EXISTS verify_error,
        DROP COLUMN IF EXISTS verify_result,
        DROP COLUMN IF EXISTS verified_at"];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
