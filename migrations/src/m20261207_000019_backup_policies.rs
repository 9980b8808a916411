//! Backup policies per plan (issue 13, item 3): when the scheduler backs a site of the
//! plan up (every N hours, or daily at a UTC time) and how long its scheduled backups are
//! kept (by count and by age). A scheduled backup records the slot it was taken for, once
//! per site and slot (two schedulers never take the same slot twice).
//!
//! Expand only: a new table and two new nullable column/keys the previous release ignores.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS backup_policies (
        plan_id CHAR(10) NOT NULL PRIMARY KEY,
        enabled TINYINT(1) NOT NULL,
        every_hours INT NULL,
        daily_at_minute INT NULL,
        keep_count INT NULL,
        keep_days INT NULL,
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        CONSTRAINT fk_backup_policies_plan FOREIGN KEY (plan_id) REFERENCES plans (id) ON DELETE CASCADE,
        CONSTRAINT ck_backup_policies_schedule CHECK ((every_hours IS NULL) <> (daily_at_minute IS NULL)),
        CONSTRAINT ck_backup_policies_every CHECK (every_hours IS NULL OR every_hours BETWEEN 1 AND 168),
        CONSTRAINT ck_backup_policies_daily CHECK (daily_at_minute IS NULL OR daily_at_minute BETWEEN 0 AND 1439),
        CONSTRAINT ck_backup_policies_count CHECK (keep_count IS NULL OR keep_count BETWEEN 1 AND 1000),
        CONSTRAINT ck_backup_policies_days CHECK (keep_days IS NULL OR keep_days BETWEEN 1 AND 3650)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "ALTER TABLE backups ADD COLUMN IF NOT EXISTS scheduled_for DATETIME NULL",
    "ALTER TABLE backups ADD UNIQUE KEY IF NOT EXISTS uq_backups_slot (site_id, scheduled_for)",
    "ALTER TABLE backups ADD KEY IF NOT EXISTS ix_backups_kind_state (kind, state, completed_at)",
];

const DOWN: &[&str] = &[
    "ALTER TABLE backups DROP KEY IF EXISTS ix_backups_kind_state",
    "ALTER TABLE backups DROP KEY IF EXISTS uq_backups_slot",
    "ALTER TABLE backups DROP COLUMN IF EXISTS scheduled_for",
    "DROP TABLE IF EXISTS backup_policies",
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
