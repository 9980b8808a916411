//! The aliases a deleted site kept when an undelete of it was requested (issue 13):
//! `restores.kept_aliases`, `sites.aliases` as the delete left it (space-separated, sorted),
//! written with the undelete's `restores` row. The request gives the site back the kept
//! aliases no other site took meanwhile and rewrites `sites.aliases` to those; an undelete
//! that fails frees them again and puts this list back, so the site is `deleted` with the
//! same aliases kept as before, those another site took included (a later undelete gets
//! back the ones freed by then). Before this, the unwind kept only the aliases it had
//! reclaimed, and the others were forgotten.
//!
//! Expand only: a nullable column the previous release neither reads nor writes. A row
//! without it (an undelete requested by the previous release) unwinds as before.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] =
    &["ALTER TABLE restores ADD COLUMN IF NOT EXISTS kept_aliases TEXT NULL AFTER domain_to"];

const DOWN: &[&str] = &["ALTER TABLE restores DROP COLUMN IF EXISTS kept_aliases"];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, DOWN).await
    }
}
