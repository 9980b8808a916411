//! ACME certificates of the sites' domains (issue 14).
//!
//! - `acme_settings`: one row, the staff-chosen directory and contact, and the ACME account
//!   of that directory (its credentials, key included, sealed with the platform's
//!   `secret_key`; `account_directory` says which directory the account belongs to, so a
//!   changed directory makes a new account).
//! - `certificates`: one row per domain (a domain is one order, so a failing domain never
//!   holds back the site's others). The chain and private key are sealed together; the
//!   public facts (issuer, validity) are plain for the API and the renewal schedule.
//!   `lease_until` makes one order per domain at a time across platform replicas.
//! - `acme_challenges`: HTTP-01 answers waiting to be fetched, served by any replica.
//!
//! Expand only: new tables, nothing the previous release reads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS acme_settings (
        id TINYINT NOT NULL PRIMARY KEY,
        directory_url VARCHAR(500) NOT NULL,
        contact_email VARCHAR(254) NOT NULL,
        account_directory VARCHAR(500) NULL,
        account_nonce VARBINARY(12) NULL,
        account_sealed BLOB NULL,
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        CONSTRAINT ck_acme_settings_single CHECK (id = 1)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS certificates (
        domain VARCHAR(253) NOT NULL PRIMARY KEY,
        state VARCHAR(16) NOT NULL,
        issuer VARCHAR(500) NULL,
        not_before DATETIME(6) NULL,
        not_after DATETIME(6) NULL,
        renew_at DATETIME(6) NULL,
        pem_nonce VARBINARY(12) NULL,
        pem_sealed MEDIUMBLOB NULL,
        last_error TEXT NULL,
        failures INT NOT NULL DEFAULT 0,
        next_attempt_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        lease_until DATETIME(6) NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        KEY ix_certificates_due (next_attempt_at),
        CONSTRAINT ck_certificates_state CHECK (state IN ('pending', 'valid', 'failed'))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS acme_challenges (
        token VARCHAR(128) NOT NULL PRIMARY KEY,
        key_authorization VARCHAR(300) NOT NULL,
        domain VARCHAR(253) NOT NULL,
        expires_at DATETIME(6) NOT NULL,
        KEY ix_acme_challenges_expires (expires_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS acme_challenges",
    "DROP TABLE IF EXISTS certificates",
    "DROP TABLE IF EXISTS acme_settings",
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
