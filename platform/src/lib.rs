//! Pressdock's control plane: the HTTP API, tenancy and auth, sites and their operations,
//! the durable job runner, and the `pressdock` CLI that talks to the API.

/// A query string built only from this crate's constant SQL fragments (never user input,
/// which is always bound), marked as audited for sqlx.
#[macro_export]
macro_rules! sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

pub mod actor;
pub mod api;
pub mod app;
pub mod audit;
pub mod audit_log;
pub mod auth;
pub mod background;
pub mod backup;
pub mod certs;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod edge_hosts;
pub mod error;
pub mod group;
pub mod metrics;
pub mod provision;
pub mod sagas;
pub mod server;
pub mod state;
pub mod states;
pub mod step_error;
