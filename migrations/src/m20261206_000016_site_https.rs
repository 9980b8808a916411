//! Per-site HTTPS options (issue 14, "Serving"): `keep_http` (plain HTTP keeps being served
//! beside HTTPS: no redirect once the domain has a certificate) and `hsts` (the edge sends
//! `Strict-Transport-Security` on the site's HTTPS answers).
//!
//! Expand only: two columns with defaults (redirect on, HSTS off) that the previous release
//! neither reads nor writes.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS keep_http BOOLEAN NOT NULL DEFAULT FALSE",
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS hsts BOOLEAN NOT NULL DEFAULT FALSE",
];

const DOWN: &[&str] = &[
    "ALTER TABLE sites DROP COLUMN IF EXISTS hsts",
    "ALTER TABLE sites DROP COLUMN IF EXISTS keep_http",
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
