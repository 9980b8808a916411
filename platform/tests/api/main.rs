//! Integration tests of the API against the real MariaDB: one database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod auth;
mod backup;
mod backup_faults;
mod billing;
mod certs;
mod cli;
mod edge_usage;
mod jobs;
mod nodes;
mod placement;
mod rbac;
mod reconcile;
mod restore;
mod sites;
mod support;
mod surface;

/// A stand-in of ProxySQL's admin interface, shared with the driver tests.
#[path = "../../../backends/tests/helpers/proxysql_admin.rs"]
mod proxysql_admin;
