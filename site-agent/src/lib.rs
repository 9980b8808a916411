//! `pressdock-agent`: the per-site agent, the entrypoint of every site's container.
//!
//! It renders the site's files from the task's secrets and environment ([`config`],
//! [`render`]), installs WordPress on first start ([`install`]), supervises php-fpm and
//! nginx ([`supervise`]), serves `/healthz`, `/readyz` and `/metrics` ([`server`],
//! [`metrics`], [`checks`], [`accesslog`]) and reports to the control plane
//! ([`heartbeat`], [`state`]) in the JSON shapes of [`protocol`], which the platform uses
//! as a library (`site_agent::protocol`).

pub mod accesslog;
pub mod agent;
pub mod backoff;
pub mod checks;
pub mod config;
pub mod heartbeat;
pub mod install;
pub mod metrics;
pub mod protocol;
pub mod render;
pub mod server;
pub mod state;
pub mod supervise;
