//! When the edge was first given a domain's certificate (issue 14, "Serving"):
//! `certificates.served_since`, set by the first answer of `/edge/traefik.json` that carries
//! the certificate and cleared by the first that does not; a renewal replaces the chain and
//! keeps it. The domain's HTTP→HTTPS redirect (and HSTS) is published only once it is older
//! than two polls of the edge, so that every Traefik replica serves the certificate before
//! any of them sends a visitor to HTTPS (platform/src/certs/store.rs, `for_edge`).
//!
//! Expand only: a nullable column the previous release neither reads nor writes. Rows that
//! hold a certificate that has not expired were served by the previous release since they
//! were last written: they start from `updated_at`, so their redirects stay on through the
//! upgrade (a domain no live site uses is cleared at the first poll).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "ALTER TABLE certificates ADD COLUMN IF NOT EXISTS served_since DATETIME(6) NULL",
    "UPDATE certificates SET served_since = updated_at \
     WHERE served_since IS NULL AND pem_sealed IS NOT NULL AND not_after > NOW(6)",
];

const DOWN: &[&str] = &["ALTER TABLE certificates DROP COLUMN IF EXISTS served_since"];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
