//! Nodes come from the swarm: a node registered by hand is `pending` until a swarm node of
//! its name joins, so an insert that names no availability must not make a placement
//! target (the old default was `active`). Operations get a sequence number, the cursor of
//! `GET /v1/operations`.
//!
//! Expand only: the previous release writes `availability` explicitly or relies on the
//! default (its hand-registered nodes then start `pending` and its node sync, which already
//! knows `pending`, activates them when they join), and never reads `seq`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "ALTER TABLE nodes ALTER COLUMN availability SET DEFAULT 'pending'",
    // Every value the platform writes; anything else is a bug to stop at the database.
    "ALTER TABLE nodes ADD CONSTRAINT IF NOT EXISTS ck_nodes_availability \
     CHECK (availability IN ('pending', 'active', 'drain', 'down'))",
    // AUTO_INCREMENT numbers the existing rows too (in primary-key order, which is as good
    // an order as any for operations that predate it).
    "ALTER TABLE operations ADD COLUMN IF NOT EXISTS seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE",
];

const DOWN: &[&str] = &[
    "ALTER TABLE operations DROP COLUMN IF EXISTS seq",
    "ALTER TABLE nodes DROP CONSTRAINT IF EXISTS ck_nodes_availability",
    "ALTER TABLE nodes ALTER COLUMN availability SET DEFAULT 'active'",
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
