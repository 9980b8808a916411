//! A copy of each site's aliases in its own row (issue 10, the site list's speed): the
//! list and `GET /v1/sites/{site}` read a site's aliases with the site, where they joined
//! `domains` (one row per alias, about 1.7× the bare page's database time).
//!
//! `domains` stays the source of truth and of uniqueness (its primary key decides which
//! of two sites gets a name). `sites.aliases` is the site's non-primary domains, sorted,
//! separated by one space (a domain name has no space), written in the same transaction
//! as the `domains` rows. `aliases_generation` is the site's `generation` the copy was
//! written at: a reader uses the copy only when the two are equal, and reads `domains`
//! otherwise.
//!
//! Expand only: the previous release does not know the columns. A site it creates has a
//! NULL `aliases_generation`, and its alias change bumps `generation` (every change of a
//! site does): either way the copy is not used, so a site changed by the previous
//! release during a rolling upgrade is listed with its real aliases, read from `domains`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS aliases TEXT NULL AFTER primary_domain, \
     ADD COLUMN IF NOT EXISTS aliases_generation BIGINT NULL AFTER aliases",
    // The sites that exist: their copy from `domains`. GROUP_CONCAT is cut at
    // `group_concat_max_len` (1,024 bytes by default; 20 aliases take up to 5,079), so the
    // statement raises it for itself.
    "SET STATEMENT group_concat_max_len = 1048576 FOR \
     UPDATE sites s SET s.aliases = COALESCE((SELECT GROUP_CONCAT(d.domain ORDER BY d.domain SEPARATOR ' ') \
     FROM domains d WHERE d.site_id = s.id AND d.is_primary = 0), ''), \
     s.aliases_generation = s.generation WHERE s.aliases_generation IS NULL",
];

const DOWN: &[&str] =
    &["ALTER TABLE sites DROP COLUMN IF EXISTS aliases_generation, DROP COLUMN IF EXISTS aliases"];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
