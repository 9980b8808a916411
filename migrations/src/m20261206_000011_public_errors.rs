//! An operation's and a step's failure get a public message beside the internal one
//! (issue 12, "errors for people"): `public_error` is what a tenant reads; `error` keeps
//! the backend's whole error chain, for staff and logs.
//!
//! Expand only: the previous release writes `error` alone and never reads `public_error`;
//! a row it wrote shows tenants a generic message (its `public_error` is NULL).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "ALTER TABLE operations ADD COLUMN IF NOT EXISTS public_error VARCHAR(500) NULL AFTER error",
    "ALTER TABLE operation_steps ADD COLUMN IF NOT EXISTS public_error VARCHAR(500) NULL AFTER error",
];

const DOWN: &[&str] = &[
    "ALTER TABLE operation_steps DROP COLUMN IF EXISTS public_error",
    "ALTER TABLE operations DROP COLUMN IF EXISTS public_error",
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
