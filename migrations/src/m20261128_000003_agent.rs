//! The site agent's last report, the site's installer settings, and what placement needs
//! to know about nodes (swarm status, since when down) and sites (pinned by staff).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS agent_reports (
        site_id CHAR(10) NOT NULL PRIMARY KEY,
        node_id VARCHAR(64) NULL,
        task_id VARCHAR(64) NULL,
        seq BIGINT NOT NULL,
        started_at DATETIME(6) NOT NULL,
        live TINYINT(1) NOT NULL,
        ready TINYINT(1) NOT NULL,
        report JSON NOT NULL,
        received_at DATETIME(6) NOT NULL,
        ready_at DATETIME(6) NULL,
        KEY ix_agent_reports_received (received_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS admin_user VARCHAR(60) NOT NULL DEFAULT 'admin'",
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS admin_email VARCHAR(254) NOT NULL DEFAULT ''",
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS pinned TINYINT(1) NOT NULL DEFAULT 0",
    "ALTER TABLE nodes ADD COLUMN IF NOT EXISTS status VARCHAR(16) NOT NULL DEFAULT 'ready'",
    "ALTER TABLE nodes ADD COLUMN IF NOT EXISTS down_since DATETIME(6) NULL",
];

const DOWN: &[&str] = &[
    "ALTER TABLE nodes DROP COLUMN IF EXISTS down_since",
    "ALTER TABLE nodes DROP COLUMN IF EXISTS status",
    "ALTER TABLE sites DROP COLUMN IF EXISTS pinned",
    "ALTER TABLE sites DROP COLUMN IF EXISTS admin_email",
    "ALTER TABLE sites DROP COLUMN IF EXISTS admin_user",
    "DROP TABLE IF EXISTS agent_reports",
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
