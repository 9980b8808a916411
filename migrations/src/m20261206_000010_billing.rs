//! Billing: plan prices with an effective date, every site's state history (what it held
//! and when), hourly usage samples, and closed periods with their frozen lines.
//!
//! Expand only: the previous release neither reads nor writes these tables (its state
//! writers do not append history; the billing rollup appends what it missed, stamped with
//! the site's `updated_at`). `plans.price_cents` stays: it is the first price of each plan.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    // One row per plan and date from which the price applies (00:00 UTC). Amounts are
    // integer minor units of `currency` (ISO 4217); rows are only ever added.
    r"CREATE TABLE IF NOT EXISTS plan_prices (
        plan_id CHAR(10) NOT NULL,
        effective_from DATE NOT NULL,
        currency CHAR(3) NOT NULL,
        monthly_minor BIGINT NOT NULL,
        included_storage_bytes BIGINT NOT NULL,
        included_requests BIGINT NOT NULL,
        storage_overage_minor_per_gib BIGINT NOT NULL,
        request_overage_minor_per_10k BIGINT NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (plan_id, effective_from),
        CONSTRAINT fk_plan_prices_plan FOREIGN KEY (plan_id) REFERENCES plans (id),
        CONSTRAINT ck_plan_prices CHECK (currency REGEXP '^[A-Z]{3}$' AND monthly_minor >= 0
            AND included_storage_bytes >= 0 AND included_requests >= 0
            AND storage_overage_minor_per_gib >= 0 AND request_overage_minor_per_10k >= 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // Existing plans: their current price from the start of 2026, storage included as
    // the plan's quota, 1,000,000 requests a month included.
    r"INSERT IGNORE INTO plan_prices (plan_id, effective_from, currency, monthly_minor,
        included_storage_bytes, included_requests, storage_overage_minor_per_gib,
        request_overage_minor_per_10k)
      SELECT id, '2026-01-01', 'USD', price_cents, CAST(storage_mb AS SIGNED) * 1048576, 1000000, 50, 10
      FROM plans",
    r"CREATE TABLE IF NOT EXISTS site_state_history (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        site_id CHAR(10) NOT NULL,
        tenant_id CHAR(10) NOT NULL,
        state VARCHAR(16) NOT NULL,
        plan_id CHAR(10) NOT NULL,
        at DATETIME(6) NOT NULL,
        KEY ix_site_state_history_site (site_id, id),
        KEY ix_site_state_history_at (at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // Sites that predate the history: one row, their current state since creation.
    r"INSERT INTO site_state_history (site_id, tenant_id, state, plan_id, at)
      SELECT s.id, s.tenant_id, s.state, s.plan_id, s.created_at FROM sites s
      WHERE NOT EXISTS (SELECT 1 FROM site_state_history h WHERE h.site_id = s.id)",
    // One sample per site, hour (UTC, on the hour) and source; the key makes ingestion
    // idempotent. NULL is "not measured by this source", not zero.
    r"CREATE TABLE IF NOT EXISTS usage_samples (
        site_id CHAR(10) NOT NULL,
        hour DATETIME NOT NULL,
        source VARCHAR(8) NOT NULL,
        requests BIGINT NULL,
        bytes_out BIGINT NULL,
        wp_content_bytes BIGINT NULL,
        db_bytes BIGINT NULL,
        received_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (site_id, hour, source),
        KEY ix_usage_samples_hour (hour),
        CONSTRAINT ck_usage_samples_source CHECK (source IN ('edge', 'agent'))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS billing_periods (
        period CHAR(7) NOT NULL PRIMARY KEY,
        closed_at DATETIME(6) NOT NULL,
        closed_by CHAR(10) NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // A closed period's lines, each as the exact JSON its export prints: never updated.
    r"CREATE TABLE IF NOT EXISTS billing_lines (
        period CHAR(7) NOT NULL,
        tenant_id CHAR(10) NOT NULL,
        line_no INT NOT NULL,
        for_period CHAR(7) NOT NULL,
        body MEDIUMTEXT NOT NULL,
        PRIMARY KEY (period, tenant_id, line_no),
        KEY ix_billing_lines_for (for_period),
        CONSTRAINT fk_billing_lines_period FOREIGN KEY (period) REFERENCES billing_periods (period)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS billing_lines",
    "DROP TABLE IF EXISTS billing_periods",
    "DROP TABLE IF EXISTS usage_samples",
    "DROP TABLE IF EXISTS site_state_history",
    "DROP TABLE IF EXISTS plan_prices",
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
