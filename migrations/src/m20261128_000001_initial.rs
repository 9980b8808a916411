//! The first schema: tenancy, auth, plans, sites, nodes, operations, jobs and audit.
//!
//! Raw DDL rather than the schema builder: the statements are MariaDB-specific on purpose
//! (`FOR UPDATE SKIP LOCKED`, JSON columns, `ON DUPLICATE KEY`), and reading them as SQL is
//! what an operator debugging the database will do anyway. MariaDB DDL is not
//! transactional, so every statement is `IF NOT EXISTS`: a migration killed half-way
//! converges when it runs again.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    r"CREATE TABLE IF NOT EXISTS tenants (
        id CHAR(10) NOT NULL PRIMARY KEY,
        slug VARCHAR(63) NOT NULL,
        name VARCHAR(200) NOT NULL,
        state VARCHAR(16) NOT NULL DEFAULT 'active',
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_tenants_slug (slug)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS users (
        id CHAR(10) NOT NULL PRIMARY KEY,
        email VARCHAR(254) NOT NULL,
        name VARCHAR(200) NOT NULL DEFAULT '',
        password_hash VARCHAR(255) NOT NULL,
        staff_role VARCHAR(16) NULL,
        disabled TINYINT(1) NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_users_email (email)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS memberships (
        tenant_id CHAR(10) NOT NULL,
        user_id CHAR(10) NOT NULL,
        role VARCHAR(16) NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (tenant_id, user_id),
        KEY ix_memberships_user (user_id),
        CONSTRAINT fk_memberships_tenant FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
        CONSTRAINT fk_memberships_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS api_tokens (
        id CHAR(10) NOT NULL PRIMARY KEY,
        user_id CHAR(10) NOT NULL,
        name VARCHAR(100) NOT NULL,
        token_hash CHAR(64) NOT NULL,
        scopes VARCHAR(100) NOT NULL,
        expires_at DATETIME(6) NULL,
        revoked_at DATETIME(6) NULL,
        last_used_at DATETIME(6) NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_api_tokens_hash (token_hash),
        KEY ix_api_tokens_user (user_id),
        CONSTRAINT fk_api_tokens_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS refresh_tokens (
        id CHAR(10) NOT NULL PRIMARY KEY,
        user_id CHAR(10) NOT NULL,
        family_id CHAR(10) NOT NULL,
        token_hash CHAR(64) NOT NULL,
        expires_at DATETIME(6) NOT NULL,
        used_at DATETIME(6) NULL,
        revoked_at DATETIME(6) NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_refresh_tokens_hash (token_hash),
        KEY ix_refresh_tokens_family (family_id),
        CONSTRAINT fk_refresh_tokens_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS rate_limits (
        bucket VARCHAR(300) NOT NULL PRIMARY KEY,
        window_start DATETIME(6) NOT NULL,
        hits INT NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS plans (
        id CHAR(10) NOT NULL PRIMARY KEY,
        slug VARCHAR(63) NOT NULL,
        name VARCHAR(200) NOT NULL,
        slots INT NOT NULL,
        storage_mb INT NOT NULL,
        memory_mb INT NOT NULL,
        cpu_millis INT NOT NULL,
        price_cents INT NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_plans_slug (slug)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS nodes (
        id CHAR(10) NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        swarm_node_id VARCHAR(64) NULL,
        role VARCHAR(16) NOT NULL,
        availability VARCHAR(16) NOT NULL DEFAULT 'active',
        slots INT NOT NULL,
        failure_domain VARCHAR(63) NOT NULL DEFAULT '',
        address VARCHAR(100) NOT NULL DEFAULT '',
        labels JSON NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_nodes_name (name)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS sites (
        id CHAR(10) NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL AUTO_INCREMENT,
        tenant_id CHAR(10) NOT NULL,
        name VARCHAR(200) NOT NULL,
        plan_id CHAR(10) NOT NULL,
        state VARCHAR(16) NOT NULL,
        primary_domain VARCHAR(253) NOT NULL,
        generation BIGINT NOT NULL DEFAULT 1,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        deleted_at DATETIME(6) NULL,
        UNIQUE KEY uq_sites_seq (seq),
        KEY ix_sites_tenant (tenant_id, seq),
        KEY ix_sites_tenant_state (tenant_id, state, seq),
        CONSTRAINT fk_sites_tenant FOREIGN KEY (tenant_id) REFERENCES tenants (id),
        CONSTRAINT fk_sites_plan FOREIGN KEY (plan_id) REFERENCES plans (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS domains (
        domain VARCHAR(253) NOT NULL PRIMARY KEY,
        site_id CHAR(10) NOT NULL,
        is_primary TINYINT(1) NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        KEY ix_domains_site (site_id),
        CONSTRAINT fk_domains_site FOREIGN KEY (site_id) REFERENCES sites (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS placements (
        site_id CHAR(10) NOT NULL PRIMARY KEY,
        node_id CHAR(10) NOT NULL,
        slots INT NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        KEY ix_placements_node (node_id),
        CONSTRAINT fk_placements_site FOREIGN KEY (site_id) REFERENCES sites (id) ON DELETE CASCADE,
        CONSTRAINT fk_placements_node FOREIGN KEY (node_id) REFERENCES nodes (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS operations (
        id CHAR(10) NOT NULL PRIMARY KEY,
        kind VARCHAR(32) NOT NULL,
        tenant_id CHAR(10) NULL,
        target_type VARCHAR(16) NOT NULL,
        target_id CHAR(10) NOT NULL,
        state VARCHAR(16) NOT NULL,
        error TEXT NULL,
        created_by CHAR(10) NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        finished_at DATETIME(6) NULL,
        KEY ix_operations_target (target_type, target_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS operation_steps (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        operation_id CHAR(10) NOT NULL,
        position INT NOT NULL,
        name VARCHAR(64) NOT NULL,
        state VARCHAR(16) NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        error TEXT NULL,
        started_at DATETIME(6) NULL,
        finished_at DATETIME(6) NULL,
        UNIQUE KEY uq_operation_steps (operation_id, position),
        CONSTRAINT fk_operation_steps_op FOREIGN KEY (operation_id) REFERENCES operations (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS jobs (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        operation_id CHAR(10) NOT NULL,
        state VARCHAR(16) NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        run_after DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        lease_owner VARCHAR(64) NULL,
        lease_expires_at DATETIME(6) NULL,
        last_error TEXT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_jobs_operation (operation_id),
        KEY ix_jobs_claim (state, run_after),
        CONSTRAINT fk_jobs_op FOREIGN KEY (operation_id) REFERENCES operations (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS audit_events (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        actor_id CHAR(10) NULL,
        actor_email VARCHAR(254) NULL,
        tenant_id CHAR(10) NULL,
        action VARCHAR(64) NOT NULL,
        target_type VARCHAR(16) NOT NULL,
        target_id VARCHAR(64) NOT NULL,
        source_ip VARCHAR(45) NULL,
        request_id VARCHAR(64) NULL,
        details JSON NULL,
        KEY ix_audit_tenant (tenant_id, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    r"CREATE TABLE IF NOT EXISTS idempotency_keys (
        user_id CHAR(10) NOT NULL,
        idem_key VARCHAR(255) NOT NULL,
        request_hash CHAR(64) NOT NULL,
        status_code INT NULL,
        response_body MEDIUMTEXT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (user_id, idem_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS idempotency_keys",
    "DROP TABLE IF EXISTS audit_events",
    "DROP TABLE IF EXISTS jobs",
    "DROP TABLE IF EXISTS operation_steps",
    "DROP TABLE IF EXISTS operations",
    "DROP TABLE IF EXISTS placements",
    "DROP TABLE IF EXISTS domains",
    "DROP TABLE IF EXISTS sites",
    "DROP TABLE IF EXISTS nodes",
    "DROP TABLE IF EXISTS plans",
    "DROP TABLE IF EXISTS rate_limits",
    "DROP TABLE IF EXISTS refresh_tokens",
    "DROP TABLE IF EXISTS api_tokens",
    "DROP TABLE IF EXISTS memberships",
    "DROP TABLE IF EXISTS users",
    "DROP TABLE IF EXISTS tenants",
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
