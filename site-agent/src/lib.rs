//! `pressdock-agent`: the per-site agent, the entrypoint of every site's container.
//!
//! It renders the site's files from the task's secrets and environment ([`config`],
//! [`render`]), installs WordPress on first start ([`install`]), supervises php-fpm and
//! nginx ([`supervise`]), serves `/healthz`, `/readyz` and `/metrics` ([`server`],
//! [`metrics`], [`checks`], [`accesslog`]) and reports to the control plane
//! ([`heartbeat`], [`state`]) in the JSON shapes of [`protocol`] (the `agent-protocol`
//! crate, which the platform depends on too). It installs a must-use plugin that tells it what
//! a change in WordPress made stale, and forwards those purges to the control plane
//! ([`purge`]). On SIGTERM it first drains (not ready, still serving), then stops the
//! children ([`agent`]).

pub mod accesslog;
pub mod agent;
pub mod backoff;
pub mod checks;
pub mod config;
pub mod heartbeat;
pub mod install;
pub mod metrics;
pub mod netguard;
pub use agent_protocol as protocol;
pub mod purge;
pub mod render;
pub mod server;
pub mod state;
pub mod supervise;
