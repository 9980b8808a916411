//! Integration tests of the API against the real MariaDB: one database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod auth;
mod backup;
mod backup_faults;
mod backup_fixture;
mod backup_schedule;
mod billing;
mod certs;
mod cli;
mod drills;
mod edge;
mod edge_usage;
mod jobs;
mod nodes;
mod placement;
mod rbac;
mod reconcile;
mod request_id;
mod restore;
mod schema;
mod sites;
mod support;
mod surface;
mod undelete;

/// The driver tests' helpers: real servers (Redis, varnishd) started on free ports, and a
/// stand-in of ProxySQL's admin interface.
#[path = "../../../backends/tests/helpers/mod.rs"]
mod helpers;
use helpers::proxysql_admin;
