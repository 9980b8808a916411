//! Per-site resource drivers (issue 4).
//!
//! One module per backend a site lives in. Each exposes a small async trait (what the
//! provisioning sagas and reconcilers in `platform` call) and one real implementation
//! that talks to the server with its own client:
//!
//! | module      | trait            | implementation(s)                     | server            |
//! |-------------|------------------|---------------------------------------|-------------------|
//! | [`galera`]  | [`SiteDatabase`] | [`GaleraDriver`]                      | MariaDB / Galera  |
//! | [`router`]  | [`DbRouter`]     | [`HaproxyRouter`], [`ProxySqlRouter`] | HAProxy, ProxySQL |
//! | [`redis`]   | [`SiteCache`]    | [`RedisSentinelDriver`]               | Redis + Sentinel  |
//! | [`gluster`] | [`SiteStorage`]  | [`GlusterDriver`]                     | GlusterFS         |
//! | [`varnish`] | [`EdgeCache`]    | [`VarnishDriver`]                     | Varnish CLI       |
//! | [`swarm`]   | [`SiteRuntime`]  | [`SwarmDriver`]                       | Docker Swarm      |
//!
//! Every resource is named from a [`SiteResourceId`] (the site's server-generated id),
//! never from user input. Every `ensure_*` creates what is missing and converges what
//! differs, so a saga step can run twice; every `remove_*` treats "already gone" as
//! success, so an undo can run twice; every `observe_*` only reads, for reconcilers.
//! Passwords travel as [`Secret`]s, whose `Debug`/`Display` are redacted.

pub mod config;
pub mod error;
pub mod galera;
pub mod gluster;
pub mod ids;
pub mod redis;
pub mod router;
pub mod swarm;
pub mod varnish;

pub use config::BackendsConfig;
pub use error::{Error, Result};
pub use galera::{GaleraDriver, SiteDatabase};
pub use gluster::{GlusterDriver, SiteStorage};
pub use ids::{DomainName, Secret, SitePassword, SiteResourceId};
pub use redis::{RedisSentinelDriver, SiteCache};
pub use router::{DbRouter, HaproxyRouter, ProxySqlRouter, Router};
pub use swarm::{SiteRuntime, SwarmDriver};
pub use varnish::{EdgeCache, VarnishDriver};
