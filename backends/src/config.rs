//! Settings of each driver: the `[backends.*]` sections of the platform configuration
//! (see `configs/pressdock.example.toml`, which documents the same fields). Every
//! credential is a [`Secret`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::ids::Secret;

/// `[backends]`: every section is optional so the platform can start without backends
/// (drivers are built only from the sections present).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    pub galera: Option<GaleraConfig>,
    pub redis: Option<RedisConfig>,
    pub gluster: Option<GlusterConfig>,
    pub varnish: Option<VarnishConfig>,
    pub swarm: Option<SwarmConfig>,
    /// Read by the backup code, not by this crate; accepted here so one struct parses
    /// the whole `[backends]` table.
    pub s3: Option<toml_value::Table>,
}

/// Opaque pass-through of a section this crate does not read.
pub mod toml_value {
    /// Any TOML table, kept as loosely typed key/values.
    pub type Table = std::collections::BTreeMap<String, serde::de::IgnoredAny>;
}

/// `[backends.galera]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaleraConfig {
    /// `mysql://USER:PASSWORD@HOST:PORT` of an account that may create databases and
    /// users and grant (a Galera node or the router's writer endpoint).
    pub admin_url: Secret,
    /// Which DB router fronts the cluster for the sites.
    #[serde(default)]
    pub router: RouterKind,
    /// ProxySQL admin endpoints (`mysql://admin:PW@HOST:6032`), all of them: users are
    /// not shared between ProxySQL instances unless ProxySQL Cluster is configured.
    #[serde(default)]
    pub proxysql_admin_urls: Vec<Secret>,
    /// `default_hostgroup` of the site users in ProxySQL (the Galera writer hostgroup).
    #[serde(default = "default_hostgroup")]
    pub proxysql_default_hostgroup: u32,
    /// `max_connections` of each site user in ProxySQL.
    #[serde(default = "default_proxysql_max_connections")]
    pub proxysql_max_connections: u32,
    /// `HOST:PORT` of the database as the site's tasks reach it (the router).
    pub site_db_host: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    #[default]
    Haproxy,
    Proxysql,
}

fn default_hostgroup() -> u32 {
    10
}
fn default_proxysql_max_connections() -> u32 {
    200
}

/// `[backends.redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `HOST:PORT` of every Sentinel; asked in order until one answers.
    pub sentinels: Vec<String>,
    /// The monitored master's name in Sentinel.
    pub master_name: String,
    /// ACL user with `+acl`, `+scan`, `+unlink` on the data nodes; `None`: `default`.
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default)]
    pub admin_password: Option<Secret>,
    /// Password of the Sentinels themselves (`requirepass` in sentinel.conf), if any.
    #[serde(default)]
    pub sentinel_password: Option<Secret>,
    /// Keys per `UNLINK` when a site's keys are deleted.
    #[serde(default = "default_unlink_batch")]
    pub unlink_batch: usize,
}

fn default_unlink_batch() -> usize {
    500
}

/// `[backends.gluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlusterConfig {
    /// A glusterd the CLI talks to (`gluster --remote-host=…`); a resolvable name.
    pub remote_host: String,
    /// The volume holding one directory per site.
    #[serde(default = "default_volume")]
    pub volume: String,
    /// Where the platform's host has the volume mounted (directories are made here).
    pub mount: PathBuf,
    /// Where every worker node has the volume mounted (the bind-mount source of tasks).
    pub node_mount: PathBuf,
    /// The `gluster` binary.
    #[serde(default = "default_gluster_bin")]
    pub gluster_bin: PathBuf,
    /// Owner of the site's directory (www-data in the runtime image).
    #[serde(default = "default_www_id")]
    pub owner_uid: u32,
    #[serde(default = "default_www_id")]
    pub owner_gid: u32,
}

fn default_volume() -> String {
    "sites".to_owned()
}
fn default_gluster_bin() -> PathBuf {
    PathBuf::from("gluster")
}
fn default_www_id() -> u32 {
    33
}

/// `[backends.varnish]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarnishConfig {
    /// Every Varnish instance: its `-T` address and the file given to `-S`.
    pub instances: Vec<VarnishInstance>,
    /// Where Varnish sends misses: Traefik's `internal` entrypoint as Varnish sees it.
    pub backend_host: String,
    pub backend_port: u16,
    /// Prefix of the VCL names this driver loads (and may discard).
    #[serde(default = "default_vcl_prefix")]
    pub vcl_prefix: String,
}

fn default_vcl_prefix() -> String {
    "pd_".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarnishInstance {
    /// `HOST:PORT` of the management interface (`varnishd -T`).
    pub address: String,
    /// The secret file (`varnishd -S`); its bytes are used as they are.
    pub secret_file: PathBuf,
}

/// `[backends.swarm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    /// `unix:///path/to/manager.sock` (or a bare path) of a swarm manager's dockerd.
    pub docker_host: String,
    /// Image of the site tasks (WordPress with `pressdock-agent` as entrypoint).
    pub runtime_image: String,
    /// Overlay network the site tasks and Traefik share.
    pub site_network: String,
    /// Overlay network of the edge (Traefik, Varnish). Not attached to sites.
    #[serde(default)]
    pub edge_network: Option<String>,
    /// Traefik certificate resolver of the `websecure` routers; empty: none (lab).
    #[serde(default)]
    pub cert_resolver: String,
    /// Traefik service (defined by the Varnish stack's labels) that `web`/`websecure`
    /// routers send to.
    #[serde(default = "default_varnish_service")]
    pub varnish_service: String,
    #[serde(default = "default_internal_ep")]
    pub internal_entrypoint: String,
    #[serde(default = "default_web_ep")]
    pub web_entrypoint: String,
    #[serde(default = "default_websecure_ep")]
    pub websecure_entrypoint: String,
    /// Port the site's web server listens on inside the task.
    #[serde(default = "default_site_port")]
    pub site_port: u16,
    /// Where wp-content is inside the runtime image.
    #[serde(default = "default_wp_content")]
    pub wp_content_target: String,
    /// The task's health check (Docker `Test` form).
    #[serde(default = "default_healthcheck")]
    pub healthcheck: Vec<String>,
}

fn default_varnish_service() -> String {
    "varnish@swarm".to_owned()
}
fn default_internal_ep() -> String {
    "internal".to_owned()
}
fn default_web_ep() -> String {
    "web".to_owned()
}
fn default_websecure_ep() -> String {
    "websecure".to_owned()
}
fn default_site_port() -> u16 {
    80
}
fn default_wp_content() -> String {
    "/var/lib/wordpress/wp-content".to_owned()
}
fn default_healthcheck() -> Vec<String> {
    vec![
        "CMD".to_owned(),
        "pressdock-agent".to_owned(),
        "health".to_owned(),
    ]
}
