//! Control-plane schema migrations (sea-orm-migration).
//!
//! Applied by `pressdock migrate` and at `pressdock serve` start. Migrations are written
//! expand-then-contract so that the previous release of the platform can run against a
//! schema one migration ahead (STYLE.md, habit 11): add columns and tables first, drop
//! them only in a later release. The platform's `db::migrate` starts on such a schema (one
//! holding every migration it knows, and more) without applying anything.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_initial;
mod m20261128_000002_site_resources;
mod m20261128_000003_agent;
mod m20261128_000004_moves;
mod m20261206_000001_pending_nodes;
mod m20261206_000010_billing;
mod m20261206_000011_public_errors;
mod m20261206_000012_backups;
mod m20261206_000013_certificates;
mod m20261206_000014_metering;
mod m20261206_000015_restores;
mod m20261206_000016_site_https;
mod m20261206_000017_site_aliases;
mod m20261206_000018_edge_usage;
mod m20261207_000019_backup_policies;
mod m20261207_000020_backup_drills;
mod m20261207_000021_certificate_served_since;
mod m20261207_000022_undelete_kept_aliases;

/// Every migration, in order.
pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_site_resources::Migration),
            Box::new(m20261128_000003_agent::Migration),
            Box::new(m20261128_000004_moves::Migration),
            Box::new(m20261206_000001_pending_nodes::Migration),
            Box::new(m20261206_000010_billing::Migration),
            Box::new(m20261206_000011_public_errors::Migration),
            Box::new(m20261206_000012_backups::Migration),
            Box::new(m20261206_000013_certificates::Migration),
            Box::new(m20261206_000014_metering::Migration),
            Box::new(m20261206_000015_restores::Migration),
            Box::new(m20261206_000016_site_https::Migration),
            Box::new(m20261206_000017_site_aliases::Migration),
            Box::new(m20261206_000018_edge_usage::Migration),
            Box::new(m20261207_000019_backup_policies::Migration),
            Box::new(m20261207_000020_backup_drills::Migration),
            Box::new(m20261207_000021_certificate_served_since::Migration),
            Box::new(m20261207_000022_undelete_kept_aliases::Migration),
        ]
    }
}

/// Runs raw statements in order (each migration is a list of MariaDB DDL statements).
pub(crate) async fn execute_all(
    manager: &SchemaManager<'_>,
    statements: &[&str],
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for statement in statements {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}
