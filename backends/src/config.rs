//! Settings of each driver: the `[backends.*]` sections of the platform configuration
//! (see `configs/pressdock.example.toml`, which documents the same fields, and the file
//! `pressdock-infra lab up` writes). Every credential is a [`Secret`]. Unknown keys are
//! ignored, so the lab can add keys for its own checks.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ids::Secret;

/// `[backends]`: every section is optional so the platform can start without backends
/// (drivers are built only from the sections present).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BackendsConfig {
    pub galera: Option<GaleraConfig>,
    pub redis: Option<RedisConfig>,
    pub gluster: Option<GlusterConfig>,
    pub varnish: Option<VarnishConfig>,
    pub swarm: Option<SwarmConfig>,
    /// The backups' object store (read by the backup code).
    pub s3: Option<S3Config>,
}

/// `[backends.s3]`: where backups go. The server must refuse unsigned requests (the lab's
/// does); the key pair is the platform's and never reaches a site's container.
#[derive(Debug, Clone, Deserialize)]
pub struct S3Config {
    /// `http(s)://HOST:PORT` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// The access key id (not a secret: it names the key, in every request's signature).
    pub access_key: String,
    pub secret_key: Secret,
    /// Path-style URLs (`endpoint/bucket/key`), which servers other than AWS need.
    #[serde(default)]
    pub force_path_style: bool,
}

fn default_s3_region() -> String {
    "us-east-1".to_owned()
}

/// `[backends.galera]`
#[derive(Debug, Clone, Deserialize)]
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
    /// Every Galera node directly (`HOST:PORT`), for health checks; not used to provision.
    #[serde(default)]
    pub nodes: Vec<String>,
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
    /// The platform's user on the Sentinels (`ACL SETUSER`, `SENTINEL FLUSHCONFIG`, and
    /// what it reads); `None`: `default`. Sites authenticate there with their own user.
    #[serde(default)]
    pub sentinel_user: Option<String>,
    /// Its password, if the Sentinels ask for one (they should: a site's code can reach
    /// them).
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
pub struct GlusterConfig {
    /// A glusterd the CLI talks to (`gluster --remote-host=…`); a resolvable name.
    /// Empty: the glusterd of this host.
    #[serde(default)]
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
    /// Spare directories kept ready for each plan's quota (issue 10): made ahead of time
    /// with the limit set, renamed into place when a site is created, so that creating a
    /// site needs no glusterd transaction (glusterd runs one at a time: 20 sites at once
    /// otherwise wait in one line). 0 (the default): none, every create sets its quota.
    #[serde(default)]
    pub spares: u32,
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

/// `[backends.varnish]`: include mode (`vcl_dir`, `hosts_file`, `vcl_dir_in_instance`)
/// or inline mode (`backend_host`, `backend_port`); see [`crate::varnish::VclMode`].
#[derive(Debug, Clone, Deserialize)]
pub struct VarnishConfig {
    /// Every Varnish instance: its `-T` address and the file given to `-S`.
    pub instances: Vec<VarnishInstance>,
    /// Include mode: the VCL folder as this host sees it (every instance mounts it).
    #[serde(default)]
    pub vcl_dir: Option<PathBuf>,
    /// Include mode: the host table include, inside `vcl_dir` (rewritten by the driver).
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// Include mode: the same folder as the instances see it.
    #[serde(default)]
    pub vcl_dir_in_instance: Option<String>,
    /// Include mode: the entry VCL in that folder.
    #[serde(default = "default_main_vcl")]
    pub main_vcl: String,
    /// Inline mode: where Varnish sends misses (Traefik's `internal` entrypoint).
    #[serde(default)]
    pub backend_host: Option<String>,
    #[serde(default)]
    pub backend_port: Option<u16>,
    /// Prefix of the VCL names this driver loads (and may discard).
    #[serde(default = "default_vcl_prefix")]
    pub vcl_prefix: String,
}

fn default_main_vcl() -> String {
    "main.vcl".to_owned()
}
fn default_vcl_prefix() -> String {
    "pd_".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
pub struct VarnishInstance {
    /// `HOST:PORT` of the management interface (`varnishd -T`).
    pub address: String,
    /// The secret file (`varnishd -S`); its bytes are used as they are.
    pub secret_file: PathBuf,
}

/// `[backends.swarm]`
#[derive(Debug, Clone, Deserialize)]
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
    /// Traefik service of the cache tier (stacks/edge-routes.yml, file provider) that the
    /// sites' `web`/`websecure` routers send to (label `pressdock.route.cache`).
    #[serde(default = "default_varnish_service")]
    pub varnish_service: String,
    #[serde(default = "default_internal_ep")]
    pub internal_entrypoint: String,
    #[serde(default = "default_web_ep")]
    pub web_entrypoint: String,
    /// Empty: no `websecure` router (the lab's Traefik has no TLS entrypoint).
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
    /// Docker Engine API version to speak (`MAJOR.MINOR`); Docker 20.10 has 1.41.
    #[serde(default = "default_api_version")]
    pub docker_api_version: String,
    /// When above 0, a site's agent waits up to this many seconds for the network guard
    /// (`pressdock-infra guard` on its worker) to confine its task before it runs any PHP,
    /// and fails (the task restarts) if it is not confined by then. 0: no wait (a cluster
    /// without guards). See docs/security.md, "Network confinement".
    #[serde(default)]
    pub net_guard_wait_secs: u32,
}

fn default_api_version() -> String {
    "1.41".to_owned()
}

fn default_varnish_service() -> String {
    "pd-cache@file".to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `pressdock-infra lab up` writes (infra/src/lab/platform.rs), extra keys
    /// included.
    const LAB: &str = r#"
[galera]
admin_url = "mysql://pdadmin:pw@10.213.0.1:23306"
router = "haproxy"
proxysql_admin_urls = []
site_db_host = "10.213.0.1:23306"
nodes = ["10.213.0.1:23301", "10.213.0.1:23302"]

[redis]
sentinels = ["10.213.0.1:23211", "10.213.0.1:23212"]
master_name = "pressdock"
admin_user = "admin"
admin_password = "redis-pw"

[gluster]
remote_host = "gluster.lab"
volume = "sites"
mount = "/var/lib/pressdock-lab/mnt/sites"
node_mount = "/var/lib/pressdock-lab/nodes/{{.Node.Hostname}}/sites"

[varnish]
instances = [{ address = "127.0.0.1:23082", secret_file = "/var/lib/pressdock-lab/varnish/secret" }]
vcl_dir = "/var/lib/pressdock-lab/varnish/vcl"
hosts_file = "/var/lib/pressdock-lab/varnish/vcl/hosts.vcl"
vcl_dir_in_instance = "/etc/varnish/pressdock"

[swarm]
docker_host = "unix:///var/lib/pressdock-lab/d1.sock"
runtime_image = "local/wordpress:dev"
site_network = "pd-sites"
edge_network = "pd-edge"
cert_resolver = ""
docker_api_version = "1.41"

[s3]
endpoint = "http://10.213.0.1:23401"
bucket = "backups"
access_key = "PDLABKEY"
secret_key = "s3-secret-key"
force_path_style = true
"#;

    #[test]
    fn parses_the_lab_config() {
        let c: BackendsConfig = toml::from_str(LAB).unwrap_or_else(|e| panic!("{e}"));
        let g = c.galera.unwrap_or_else(|| panic!("galera"));
        assert_eq!(g.router, RouterKind::Haproxy);
        assert_eq!(g.proxysql_default_hostgroup, 10);
        assert!(
            !format!("{g:?}").contains("pdadmin:pw"),
            "admin_url must not print"
        );
        let r = c.redis.unwrap_or_else(|| panic!("redis"));
        assert_eq!(r.unlink_batch, 500);
        assert!(!format!("{r:?}").contains("redis-pw"));
        let gl = c.gluster.unwrap_or_else(|| panic!("gluster"));
        assert_eq!((gl.owner_uid, gl.owner_gid), (33, 33));
        let v = c.varnish.unwrap_or_else(|| panic!("varnish"));
        assert_eq!(v.main_vcl, "main.vcl");
        let vd = crate::varnish::VarnishDriver::new(&v).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(vd.mode(), crate::varnish::VclMode::Include { main_vcl_in_instance, .. }
            if main_vcl_in_instance == "/etc/varnish/pressdock/main.vcl")
        );
        let s = c.swarm.unwrap_or_else(|| panic!("swarm"));
        assert_eq!(s.varnish_service, "pd-cache@file");
        assert_eq!(s.docker_api_version, "1.41");
        let s3 = c.s3.unwrap_or_else(|| panic!("s3"));
        assert_eq!(
            (s3.region.as_str(), s3.force_path_style),
            ("us-east-1", true)
        );
        assert_eq!(s3.secret_key.expose(), "s3-secret-key");
        assert!(
            !format!("{s3:?}").contains("s3-secret-key"),
            "secret_key must not print"
        );
    }
}
