//! Integration tests of the API against the real MariaDB: one database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod auth;
mod cli;
mod jobs;
mod nodes;
mod placement;
mod rbac;
mod sites;
mod support;
mod surface;
