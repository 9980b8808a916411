//! The edge collector's bookkeeping (platform/src/app/edge_usage.rs): each Traefik replica
//! scraped (its row is the scrapers' lock), its counters at the last scrape by site, the
//! growth added up per site and hour, which hours each replica was scraped in, and which
//! hours were written as usage samples (once).
//!
//! Expand only: new tables the previous release does not know.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS edge_replicas (
        replica VARCHAR(255) NOT NULL PRIMARY KEY,
        last_scrape_at DATETIME(6) NULL,
        started BIGINT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS edge_counter_marks (
        replica VARCHAR(255) NOT NULL,
        site_id CHAR(10) NOT NULL,
        requests BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        PRIMARY KEY (replica, site_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS edge_hour_counts (
        site_id CHAR(10) NOT NULL,
        hour DATETIME NOT NULL,
        requests BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        PRIMARY KEY (site_id, hour),
        KEY ix_edge_hour_counts_hour (hour)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS edge_scrapes (
        replica VARCHAR(255) NOT NULL,
        hour DATETIME NOT NULL,
        scrapes INT NOT NULL,
        restarts INT NOT NULL,
        PRIMARY KEY (replica, hour),
        KEY ix_edge_scrapes_hour (hour)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS edge_hours (
        hour DATETIME NOT NULL PRIMARY KEY,
        complete TINYINT(1) NOT NULL,
        closed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS edge_hours",
    "DROP TABLE IF EXISTS edge_scrapes",
    "DROP TABLE IF EXISTS edge_hour_counts",
    "DROP TABLE IF EXISTS edge_counter_marks",
    "DROP TABLE IF EXISTS edge_replicas",
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
