//! Billing metering: samples that disagree with the one stored for their key, and the
//! agents' access-log counts per site and hour.
//!
//! A usage sample is keyed by (site, hour, source) and the first one stored is billed. A
//! later sample for the same key with different values is a *conflict*: it is not applied
//! (re-sending never changes a bill) and not dropped either: it is kept here, reported in
//! the ingest's answer and listed for staff (`GET /v1/billing/conflicts`), who may accept
//! it, which replaces the stored sample (a closed period then gets adjustment lines).
//!
//! The agents report counters since they started; the platform adds the difference of
//! each report to the hour it arrives in (`agent_request_counts`), for comparison with the
//! edge's counts (which are billed).
//!
//! Expand only: new tables the previous release does not know.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    // One row per key and distinct offered value (`offered` spells the four values, so a
    // conflicting sample sent again is the same row): re-ingesting stays idempotent.
    r"CREATE TABLE IF NOT EXISTS usage_sample_conflicts (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        site_id CHAR(10) NOT NULL,
        hour DATETIME NOT NULL,
        source VARCHAR(8) NOT NULL,
        requests BIGINT NULL,
        bytes_out BIGINT NULL,
        wp_content_bytes BIGINT NULL,
        db_bytes BIGINT NULL,
        offered VARCHAR(100) NOT NULL,
        received_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        resolved_at DATETIME(6) NULL,
        resolved_by CHAR(10) NULL,
        resolution VARCHAR(8) NULL,
        UNIQUE KEY ux_usage_sample_conflicts (site_id, hour, source, offered),
        KEY ix_usage_sample_conflicts_hour (hour),
        CONSTRAINT ck_usage_sample_conflicts CHECK (source IN ('edge', 'agent')
            AND (resolution IS NULL OR resolution IN ('accepted', 'rejected')))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS agent_request_counts (
        site_id CHAR(10) NOT NULL,
        hour DATETIME NOT NULL,
        requests BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        reports INT NOT NULL,
        PRIMARY KEY (site_id, hour),
        KEY ix_agent_request_counts_hour (hour)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS agent_request_counts",
    "DROP TABLE IF EXISTS usage_sample_conflicts",
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
