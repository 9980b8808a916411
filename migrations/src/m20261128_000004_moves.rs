//! Moves of sites between workers: one row per `site.move` operation, with its timings.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[r"CREATE TABLE IF NOT EXISTS site_moves (
        operation_id CHAR(10) NOT NULL PRIMARY KEY,
        site_id CHAR(10) NOT NULL,
        from_node CHAR(10) NOT NULL,
        to_node CHAR(10) NOT NULL,
        reason VARCHAR(16) NOT NULL,
        state VARCHAR(16) NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        started_at DATETIME(6) NULL,
        ready_at DATETIME(6) NULL,
        finished_at DATETIME(6) NULL,
        KEY ix_site_moves_state (state),
        KEY ix_site_moves_site (site_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"];

const DOWN: &[&str] = &["DROP TABLE IF EXISTS site_moves"];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
