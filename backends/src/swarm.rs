//! The site's runtime on Docker Swarm: its secrets and the service `wp_<id>`.
//!
//! - Secrets are immutable in swarm, so their names carry a version derived from the
//!   content (`wp_<id>_<kind>_<sha256[..12]>`): `ensure_secret` with the same data is a
//!   no-op, new data makes a new secret, and [`SwarmDriver::prune_site_secrets`] removes
//!   the versions the service no longer uses.
//! - The service spec is built by a pure function ([`build_service_spec`]) and carries
//!   a hash of itself in a label; `ensure_service` creates the service, updates it (with
//!   its current version) only when the hash differs, or does nothing.
//! - Routing is in the site service's own labels (`pressdock.route.*`, [`route_labels`]):
//!   the route writer beside every Traefik (`pressdock-infra routes`) turns them into routers
//!   on `internal` → the site's tasks and on `web`/`websecure` → the cache tier, and lists a
//!   new task before it drops the old one (Traefik's swarm provider dropped the route for a
//!   moment while a task was replaced). Adding or removing a site therefore never touches
//!   the shared Traefik or Varnish services (which would restart them).
//! - Docker 20.10 speaks API 1.41 at most; bollard is pinned to the configured version
//!   (`docker_api_version`, default 1.41) instead of its default 1.53.
//!
//! The spec builder is unit-tested; the driver ran against the lab's swarm (dockerd
//! 20.10) in `lab_swarm_secrets_and_service` (an opt-in test).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, HealthConfig, Limit, Mount, MountTypeEnum,
    NetworkAttachmentConfig, ResourceObject, SecretSpec, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecPrivileges, TaskSpecContainerSpecSecrets, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListSecretsOptionsBuilder, UpdateServiceOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use sha2::{Digest, Sha256};

use crate::config::SwarmConfig;
use crate::error::{Error, Result};
use crate::ids::{DomainName, Secret, SiteResourceId};

/// Label on every object of a site: its id.
pub const LABEL_SITE: &str = "pressdock.site";
/// Label on secrets: which [`SecretKind`].
pub const LABEL_SECRET_KIND: &str = "pressdock.secret";
/// Label on services: hash of the spec as built (see module docs).
pub const LABEL_SPEC_HASH: &str = "pressdock.spec-hash";

/// How long a site's task gets to stop (SIGTERM, then SIGKILL).
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long [`SiteRuntime::remove_service`] waits for the removed service's tasks to stop:
/// the grace period and time for the node to report it.
const REMOVE_WAIT: Duration = Duration::from_secs(STOP_GRACE.as_secs() + 15);

/// Whether a task in this state may have a container running (or about to).
fn task_may_run(state: bollard::models::TaskState) -> bool {
    use bollard::models::TaskState as S;
    !matches!(
        state,
        S::COMPLETE | S::SHUTDOWN | S::FAILED | S::REJECTED | S::REMOVE | S::ORPHANED
    )
}

fn parse_api_version(v: &str) -> Result<ClientVersion> {
    let bad = || Error::invalid("swarm.docker_api_version", "MAJOR.MINOR, e.g. 1.41");
    let (major, minor) = v.split_once('.').ok_or_else(bad)?;
    Ok(ClientVersion {
        major_version: major.parse().map_err(|_| bad())?,
        minor_version: minor.parse().map_err(|_| bad())?,
    })
}

const fn secs(s: i64) -> i64 {
    s * 1_000_000_000
}

/// The per-site secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretKind {
    DbPassword,
    RedisPassword,
    AgentToken,
    WpSalts,
    /// The one-time password of the site's first WordPress administrator (the agent's
    /// installer uses it once; a restart does not reinstall).
    AdminPassword,
}

impl SecretKind {
    pub const ALL: [SecretKind; 5] = [
        SecretKind::DbPassword,
        SecretKind::RedisPassword,
        SecretKind::AgentToken,
        SecretKind::WpSalts,
        SecretKind::AdminPassword,
    ];

    /// Also the file name under `/run/secrets/` in the task.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::DbPassword => "db_password",
            SecretKind::RedisPassword => "redis_password",
            SecretKind::AgentToken => "agent_token",
            SecretKind::WpSalts => "wp_salts",
            SecretKind::AdminPassword => "admin_password",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            SecretKind::DbPassword => "PRESSDOCK_DB_PASSWORD_FILE",
            SecretKind::RedisPassword => "PRESSDOCK_REDIS_PASSWORD_FILE",
            SecretKind::AgentToken => "PRESSDOCK_AGENT_TOKEN_FILE",
            SecretKind::WpSalts => "PRESSDOCK_WP_SALTS_FILE",
            SecretKind::AdminPassword => "PRESSDOCK_ADMIN_PASSWORD_FILE",
        }
    }
}

/// The versioned name of a secret. Pure.
pub fn secret_name(id: &SiteResourceId, kind: SecretKind, data: &Secret) -> String {
    let digest = hex::encode(Sha256::digest(data.expose().as_bytes()));
    format!("{}_{}_{}", id.resource_name(), kind.as_str(), &digest[..12])
}

/// A swarm secret as a service references it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretRef {
    pub id: String,
    pub name: String,
}

/// A swarm node id (`docker node ls`): the pin of the site's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

impl NodeId {
    pub fn parse(s: &str) -> Result<Self> {
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::invalid(
                "swarm node id",
                "1..=64 characters of [A-Za-z0-9]",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The plan's resources for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanResources {
    pub cpu_limit_millis: u32,
    pub memory_limit_bytes: u64,
    pub cpu_reservation_millis: u32,
    pub memory_reservation_bytes: u64,
}

/// Everything the site's service depends on; the saga assembles it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteServiceParams {
    pub id: SiteResourceId,
    /// Every domain of the site (routers on `internal`, `web`, `websecure`).
    pub domains: BTreeSet<DomainName>,
    /// The domain WordPress's URLs use (one of `domains`).
    pub primary_domain: DomainName,
    /// What the agent needs besides the backends: the control plane and the installer.
    pub agent: AgentParams,
    pub node: NodeId,
    pub resources: PlanResources,
    /// The secrets, one per kind, as returned by [`SwarmDriver::ensure_secret`].
    pub secrets: BTreeMap<SecretKind, SecretRef>,
    /// The site's directory as every worker sees it ([`crate::GlusterDriver::node_dir`]).
    pub wp_content_source: PathBuf,
    /// `HOST:PORT` of the DB router as tasks reach it.
    pub db_host: String,
    /// `HOST:PORT` of the Sentinels and the master name, for the object cache.
    pub redis_sentinels: Vec<String>,
    pub redis_master_name: String,
    /// Further variables for the agent (e.g. the control plane's URL). Keys
    /// `[A-Z0-9_]+`, not starting with `PRESSDOCK_` (reserved for the ones set here).
    pub extra_env: BTreeMap<String, String>,
    /// `None`: the configured runtime image.
    pub image: Option<String>,
    /// Suspended: scaled to zero (the edge answers the maintenance page).
    pub suspended: bool,
    /// Bumped to replace the task even when nothing else changed (e.g. after a move
    /// whose new pin the old task still satisfies).
    pub force_update: u64,
}

/// The agent's settings that come from the control plane rather than a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentParams {
    /// Base URL the agent reports to (`None`: the agent does not report).
    pub control_url: Option<String>,
    /// The site's title for WordPress's installer (user text: passed verbatim, escaped
    /// for swarm's templating).
    pub title: String,
    /// The first administrator's login and e-mail address.
    pub admin_user: String,
    pub admin_email: String,
}

impl Default for AgentParams {
    fn default() -> Self {
        Self {
            control_url: None,
            title: String::new(),
            admin_user: "admin".into(),
            admin_email: String::new(),
        }
    }
}

/// Swarm expands Go templates in a service's environment (`{{.Node.ID}}`): user text is
/// made literal by turning every `{{` into an action that prints `{{`. Pure.
pub fn template_literal(text: &str) -> String {
    text.replace("{{", "{{\"{{\"}}")
}

/// Labels of the route writer (`pressdock-infra routes`, infra/src/routes.rs, which reads
/// these exact names): the site's hosts, the port and network on which Traefik reaches its
/// tasks, and the entrypoints. The writer turns them into Traefik routers on `internal`
/// (→ the tasks) and on `web`/`websecure` (→ the cache tier), and orders a task's hand-over.
pub mod route_label {
    pub const HOSTS: &str = "pressdock.route.hosts";
    pub const PORT: &str = "pressdock.route.port";
    pub const NETWORK: &str = "pressdock.route.network";
    pub const INTERNAL: &str = "pressdock.route.internal";
    pub const EDGE: &str = "pressdock.route.edge";
    pub const TLS: &str = "pressdock.route.tls";
    pub const CERT_RESOLVER: &str = "pressdock.route.certresolver";
    pub const CACHE: &str = "pressdock.route.cache";
}

/// The route labels of a site's service (see [`route_label`]). Pure.
pub fn route_labels(params: &SiteServiceParams, config: &SwarmConfig) -> BTreeMap<String, String> {
    use route_label as L;
    // DomainName is [a-z0-9.-]: a comma-separated list is unambiguous.
    let hosts = params
        .domains
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut edge = vec![config.web_entrypoint.clone()];
    if !config.websecure_entrypoint.is_empty() {
        edge.push(config.websecure_entrypoint.clone());
    }
    let mut l = BTreeMap::from([
        (L::HOSTS.to_owned(), hosts),
        (L::PORT.to_owned(), config.site_port.to_string()),
        (L::NETWORK.to_owned(), config.site_network.clone()),
        (L::INTERNAL.to_owned(), config.internal_entrypoint.clone()),
        (L::EDGE.to_owned(), edge.join(",")),
        (L::CACHE.to_owned(), config.varnish_service.clone()),
    ]);
    if !config.websecure_entrypoint.is_empty() {
        l.insert(L::TLS.to_owned(), config.websecure_entrypoint.clone());
        if !config.cert_resolver.is_empty() {
            l.insert(L::CERT_RESOLVER.to_owned(), config.cert_resolver.clone());
        }
    }
    l
}

fn validate_params(params: &SiteServiceParams) -> Result<()> {
    if params.domains.is_empty() {
        return Err(Error::invalid("site service", "at least one domain"));
    }
    if !params.domains.contains(&params.primary_domain) {
        return Err(Error::invalid(
            "site service",
            "the primary domain must be one of the domains",
        ));
    }
    let agent = &params.agent;
    let text_ok = |t: &str| !t.contains('\0') && !t.contains('\n');
    if !text_ok(&agent.title)
        || !text_ok(&agent.admin_email)
        || agent.admin_user.is_empty()
        || !agent
            .admin_user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        || agent.control_url.as_deref().is_some_and(|u| {
            !(u.starts_with("http://") || u.starts_with("https://")) || !text_ok(u)
        })
    {
        return Err(Error::invalid(
            "site service agent settings",
            "title and e-mail without NUL or newline, admin user [A-Za-z0-9._-@], control URL http(s)",
        ));
    }
    for kind in SecretKind::ALL {
        if !params.secrets.contains_key(&kind) {
            return Err(Error::invalid("site service", "a secret of every kind"));
        }
    }
    for (k, v) in &params.extra_env {
        let key_ok = !k.is_empty()
            && !k.starts_with("PRESSDOCK_")
            && k.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok || v.contains('\0') {
            return Err(Error::invalid(
                "site service env",
                "keys [A-Z0-9_]+ not starting with PRESSDOCK_, values without NUL",
            ));
        }
    }
    if params.resources.memory_reservation_bytes > params.resources.memory_limit_bytes
        || params.resources.cpu_reservation_millis > params.resources.cpu_limit_millis
    {
        return Err(Error::invalid("plan resources", "reservation above limit"));
    }
    Ok(())
}

/// The capabilities a site's task keeps (everything else is dropped), and why:
/// - `CHOWN`: the agent hands wp-content's directories and the must-use plugin to www-data
///   and wp-config to root:www-data;
/// - `DAC_OVERRIDE`: the agent (root) writes into wp-content's directories, owned by
///   www-data (the drop-in, the plugin, the install marker, theme links);
/// - `SETUID`, `SETGID`: php-fpm's and nginx's masters drop their workers to www-data;
/// - `KILL`: those masters (root) signal their workers (www-data) to stop and reload;
/// - `NET_BIND_SERVICE`: nginx's master binds the site port, when it is below 1024.
///
/// Gone with the rest: `FOWNER`, `FSETID`, `MKNOD`, `NET_RAW` (no raw sockets: no ARP or
/// ICMP spoofing on the overlay), `SETFCAP`, `SETPCAP`, `SYS_CHROOT`, `AUDIT_WRITE`.
pub fn site_capabilities(site_port: u16) -> Vec<String> {
    let mut caps = vec!["CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"];
    if site_port < 1024 {
        caps.push("NET_BIND_SERVICE");
    }
    caps.into_iter().map(|c| format!("CAP_{c}")).collect()
}

/// The complete service spec of a site. Pure and deterministic; the returned spec
/// includes the [`LABEL_SPEC_HASH`] label computed over everything else.
pub fn build_service_spec(params: &SiteServiceParams, config: &SwarmConfig) -> Result<ServiceSpec> {
    validate_params(params)?;
    let id = &params.id;
    let name = id.resource_name();
    // The primary domain first: the agent takes WordPress's URLs from it.
    let domains = std::iter::once(&params.primary_domain)
        .chain(
            params
                .domains
                .iter()
                .filter(|d| **d != params.primary_domain),
        )
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let agent = &params.agent;
    let mut env: Vec<String> = vec![
        format!("PRESSDOCK_SITE_ID={id}"),
        format!("PRESSDOCK_DOMAINS={domains}"),
        format!("PRESSDOCK_PRIMARY_DOMAIN={}", params.primary_domain),
        format!("PRESSDOCK_DB_HOST={}", params.db_host),
        format!("PRESSDOCK_DB_NAME={name}"),
        format!("PRESSDOCK_DB_USER={name}"),
        format!(
            "PRESSDOCK_REDIS_SENTINELS={}",
            params.redis_sentinels.join(",")
        ),
        format!("PRESSDOCK_REDIS_MASTER_NAME={}", params.redis_master_name),
        format!("PRESSDOCK_REDIS_USER={name}"),
        format!("PRESSDOCK_REDIS_PREFIX={}", id.redis_prefix()),
        format!("PRESSDOCK_WP_CONTENT={}", config.wp_content_target),
        // Expanded by swarm per task: the agent reports where it runs.
        "PRESSDOCK_NODE_ID={{.Node.ID}}".to_owned(),
        "PRESSDOCK_TASK_ID={{.Task.ID}}".to_owned(),
        format!("PRESSDOCK_SITE_TITLE={}", template_literal(&agent.title)),
        format!("PRESSDOCK_ADMIN_USER={}", agent.admin_user),
        format!(
            "PRESSDOCK_ADMIN_EMAIL={}",
            template_literal(&agent.admin_email)
        ),
    ];
    if let Some(url) = &agent.control_url {
        env.push(format!("PRESSDOCK_CONTROL_URL={}", template_literal(url)));
    }
    // Only when set: specs (and their hashes) of clusters without guards do not change.
    if config.net_guard_wait_secs > 0 {
        env.push(format!(
            "PRESSDOCK_NET_GUARD_WAIT_SECS={}",
            config.net_guard_wait_secs
        ));
    }
    for kind in SecretKind::ALL {
        env.push(format!("{}=/run/secrets/{}", kind.env_var(), kind.as_str()));
    }
    env.extend(params.extra_env.iter().map(|(k, v)| format!("{k}={v}")));

    let secrets = SecretKind::ALL
        .iter()
        .filter_map(|kind| params.secrets.get(kind).map(|r| (kind, r)))
        // Only the agent (root, the entrypoint) reads the secret files: it writes what
        // WordPress needs into wp-config (0640 root:www-data). PHP runs as www-data and must
        // not read the agent token or the admin password, so no file is group-readable.
        .map(|(kind, r)| TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(kind.as_str().to_owned()),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(0o400),
            }),
            secret_id: Some(r.id.clone()),
            secret_name: Some(r.name.clone()),
        })
        .collect();

    let nano = |millis: u32| i64::from(millis) * 1_000_000;
    let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);

    let mut labels: HashMap<String, String> = route_labels(params, config).into_iter().collect();
    labels.insert(LABEL_SITE.into(), id.to_string());

    let mut spec = ServiceSpec {
        name: Some(name.clone()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(
                    params
                        .image
                        .clone()
                        .unwrap_or_else(|| config.runtime_image.clone()),
                ),
                labels: Some(HashMap::from([(LABEL_SITE.to_owned(), id.to_string())])),
                hostname: Some(name.clone()),
                // WordPress calls itself (WP-Cron's spawn on a page view, Site Health's
                // loopback test) by its own domain: answered by the task's own nginx. Through
                // DNS the name does not resolve inside the task, and the lookup held the
                // visitor's request about 10 s once a minute per site.
                hosts: Some(vec![format!("127.0.0.1 {}", domains.replace(',', " "))]),
                env: Some(env),
                mounts: Some(vec![Mount {
                    target: Some(config.wp_content_target.clone()),
                    source: Some(params.wp_content_source.display().to_string()),
                    typ: Some(MountTypeEnum::BIND),
                    read_only: Some(false),
                    ..Default::default()
                }]),
                secrets: Some(secrets),
                health_check: Some(HealthConfig {
                    test: Some(config.healthcheck.clone()),
                    // Swarm counts a task as running once healthy: a short interval makes a
                    // move (start-first) hand over sooner.
                    interval: Some(secs(5)),
                    timeout: Some(secs(5)),
                    retries: Some(3),
                    start_period: Some(secs(60)),
                    ..Default::default()
                }),
                stop_grace_period: Some(secs(STOP_GRACE.as_secs() as i64)),
                init: Some(true),
                // Docker API 1.41 (engine 20.10): every capability dropped but those the
                // root processes of the task use; tenant code (PHP as www-data) has none.
                capability_drop: Some(vec!["ALL".to_owned()]),
                capability_add: Some(site_capabilities(config.site_port)),
                // Swarm's Privileges carry NoNewPrivileges only after API 1.41 (20.10's
                // swarm has no such field and drops it). The agent sets no_new_privs on
                // itself at start, so its children (php-fpm, nginx, PHP's shell commands)
                // never gain privileges through exec on any engine.
                privileges: Some(TaskSpecContainerSpecPrivileges {
                    no_new_privileges: Some(true),
                    ..Default::default()
                }),
                // The agent's access log arrives as unix datagrams: a new network
                // namespace queues only 10 of them.
                sysctls: Some(HashMap::from([(
                    "net.unix.max_dgram_qlen".to_owned(),
                    "512".to_owned(),
                )])),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: Some(nano(params.resources.cpu_limit_millis)),
                    memory_bytes: Some(bytes(params.resources.memory_limit_bytes)),
                    ..Default::default()
                }),
                reservations: Some(ResourceObject {
                    nano_cpus: Some(nano(params.resources.cpu_reservation_millis)),
                    memory_bytes: Some(bytes(params.resources.memory_reservation_bytes)),
                    ..Default::default()
                }),
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(secs(5)),
                max_attempts: Some(0),
                window: Some(0),
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec![format!("node.id=={}", params.node.as_str())]),
                ..Default::default()
            }),
            force_update: Some(params.force_update),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(config.site_network.clone()),
                aliases: Some(vec![name.clone()]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(if params.suspended { 0 } else { 1 }),
            }),
            ..Default::default()
        }),
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(secs(15)),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            ..Default::default()
        }),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(1),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
            ..Default::default()
        }),
        // No VIP: IPVS is missing on some kernels; Traefik routes to task addresses.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hash = spec_hash(&spec)?;
    if let Some(labels) = spec.labels.as_mut() {
        labels.insert(LABEL_SPEC_HASH.into(), hash);
    }
    Ok(spec)
}

/// SHA-256 (first 16 hex digits) of the spec's JSON with object keys sorted, the
/// hash label itself left out.
pub fn spec_hash(spec: &ServiceSpec) -> Result<String> {
    let mut v = serde_json::to_value(spec)
        .map_err(|e| Error::unexpected("swarm", format!("serialize spec: {e}")))?;
    if let Some(labels) = v.get_mut("Labels").and_then(|l| l.as_object_mut()) {
        labels.remove(LABEL_SPEC_HASH);
    }
    let mut out = String::new();
    canonical_json(&v, &mut out);
    Ok(hex::encode(Sha256::digest(out.as_bytes()))[..16].to_owned())
}

fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(*k) {
                    canonical_json(x, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// What a reconciler needs to know about the site's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub exists: bool,
    /// Desired replicas in the spec (0 when suspended).
    pub replicas: Option<u64>,
    /// The spec-hash label of the running spec.
    pub spec_hash: Option<String>,
    /// Swarm's object version (needed for updates).
    pub version: Option<u64>,
}

impl ServiceState {
    pub fn matches(&self, spec: &ServiceSpec) -> bool {
        let want = spec.labels.as_ref().and_then(|l| l.get(LABEL_SPEC_HASH));
        self.exists && want.is_some() && self.spec_hash.as_ref() == want
    }
}

/// The site's runtime: secrets and the service.
pub trait SiteRuntime {
    /// Creates the secret of this content if it does not exist; returns its reference.
    fn ensure_secret(
        &self,
        id: &SiteResourceId,
        kind: SecretKind,
        data: &Secret,
    ) -> impl Future<Output = Result<SecretRef>> + Send;

    /// Removes the site's secrets except `keep` (all of them with an empty `keep`).
    /// Absent is success; a secret still used by a service is an error.
    fn prune_site_secrets(
        &self,
        id: &SiteResourceId,
        keep: &[SecretRef],
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Creates the service or updates it to the spec of `params` (no-op when current).
    fn ensure_service(
        &self,
        params: &SiteServiceParams,
    ) -> impl Future<Output = Result<ServiceState>> + Send;

    fn observe_service(
        &self,
        id: &SiteResourceId,
    ) -> impl Future<Output = Result<ServiceState>> + Send;

    /// Scales the existing service (0: suspended) without rebuilding the spec.
    fn scale_service(
        &self,
        id: &SiteResourceId,
        replicas: u64,
    ) -> impl Future<Output = Result<ServiceState>> + Send;

    /// Removes the service; absent is success.
    fn remove_service(&self, id: &SiteResourceId) -> impl Future<Output = Result<()>> + Send;
}

/// [`SiteRuntime`] through a swarm manager's Docker API (bollard, API 1.41).
#[derive(Debug, Clone)]
pub struct SwarmDriver {
    docker: Docker,
    config: SwarmConfig,
}

fn docker_err(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
    let context = context.into();
    move |source| Error::Docker { context, source }
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl SwarmDriver {
    pub fn new(config: &SwarmConfig) -> Result<Self> {
        let path = config
            .docker_host
            .strip_prefix("unix://")
            .unwrap_or(&config.docker_host);
        if !path.starts_with('/') {
            return Err(Error::invalid(
                "swarm.docker_host",
                "unix:///absolute/path/of/the/socket",
            ));
        }
        let docker =
            Docker::connect_with_socket(path, 120, &parse_api_version(&config.docker_api_version)?)
                .map_err(docker_err("connect"))?;
        Ok(Self {
            docker,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    /// Ids of every site with a service or a secret carrying our label (orphan detection).
    pub async fn list_site_ids(&self) -> Result<BTreeSet<SiteResourceId>> {
        let filters = HashMap::from([("label", vec![LABEL_SITE.to_owned()])]);
        let services = self
            .docker
            .list_services(Some(
                bollard::query_parameters::ListServicesOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err("list services"))?;
        let secrets = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(docker_err("list secrets"))?;
        let from_services = services
            .iter()
            .filter_map(|s| s.spec.as_ref()?.labels.as_ref()?.get(LABEL_SITE).cloned());
        let from_secrets = secrets
            .iter()
            .filter_map(|s| s.spec.as_ref()?.labels.as_ref()?.get(LABEL_SITE).cloned());
        Ok(from_services
            .chain(from_secrets)
            .filter_map(|id| SiteResourceId::parse(&id).ok())
            .collect())
    }

    /// Every swarm node: `(id, hostname, role)`, sorted by hostname (for placement).
    pub async fn list_nodes(&self) -> Result<Vec<(NodeId, String, String)>> {
        let nodes = self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(docker_err("list nodes"))?;
        let mut out = Vec::new();
        for n in nodes {
            let Some(id) = n.id.as_deref().and_then(|i| NodeId::parse(i).ok()) else {
                continue;
            };
            let host = n
                .description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .unwrap_or_default();
            let role = n
                .spec
                .as_ref()
                .and_then(|s| s.role)
                .map(|r| r.to_string())
                .unwrap_or_default();
            out.push((id, host, role));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// The site's tasks that swarm wants running: `(node id, task state)` each, such as
    /// `("n0de1d", "running")` (a move waits for the one on the new node).
    pub async fn site_tasks(&self, id: &SiteResourceId) -> Result<Vec<(String, String)>> {
        let filters = HashMap::from([
            ("service", vec![id.resource_name()]),
            ("desired-state", vec!["running".to_owned()]),
        ]);
        let tasks = self
            .docker
            .list_tasks(Some(
                bollard::query_parameters::ListTasksOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err("list tasks"))?;
        Ok(tasks
            .into_iter()
            .map(|t| {
                let state = t
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                (t.node_id.unwrap_or_default(), state)
            })
            .collect())
    }

    /// Waits, up to [`REMOVE_WAIT`], until no task of a removed service is running or
    /// starting on a node that is up. A removed service's tasks can no longer be found by the service's name
    /// (the daemon resolves it to an id first), so every task is listed and matched by
    /// service id, or by task name (`<service>.<slot>…`) when the id is not known.
    async fn wait_tasks_stopped(&self, name: &str, service_id: Option<&str>) -> Result<()> {
        let start = std::time::Instant::now();
        let prefix = format!("{name}.");
        loop {
            let tasks = self
                .docker
                .list_tasks(None::<bollard::query_parameters::ListTasksOptions>)
                .await
                .map_err(docker_err("list tasks"))?;
            // A task on a node that is down cannot be waited for (its container, if the
            // node still runs, is stopped when it comes back).
            let ready: std::collections::HashSet<String> = self
                .docker
                .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
                .await
                .map_err(docker_err("list nodes"))?
                .into_iter()
                .filter(|n| {
                    n.status.as_ref().and_then(|s| s.state)
                        == Some(bollard::models::NodeState::READY)
                })
                .filter_map(|n| n.id)
                .collect();
            let live = tasks
                .iter()
                .filter(|t| t.node_id.as_ref().is_some_and(|n| ready.contains(n)))
                .filter(|t| match service_id {
                    Some(sid) => t.service_id.as_deref() == Some(sid),
                    None => t.name.as_deref().is_some_and(|n| n.starts_with(&prefix)),
                })
                .filter(|t| {
                    t.status
                        .as_ref()
                        .and_then(|s| s.state)
                        .is_some_and(task_may_run)
                })
                .count();
            if live == 0 {
                return Ok(());
            }
            if start.elapsed() >= REMOVE_WAIT {
                return Err(Error::unexpected(
                    "swarm",
                    format!(
                        "service {name} removed, but {live} of its tasks still ran after {} s",
                        REMOVE_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The state and message of the service's last update (`updating`, `completed`,
    /// `rollback_started`, `rollback_completed`, `paused`…), if it was ever updated.
    pub async fn update_state(&self, id: &SiteResourceId) -> Result<Option<(String, String)>> {
        Ok(self
            .inspect(id)
            .await?
            .and_then(|s| s.update_status)
            .map(|u| {
                (
                    u.state.map(|s| s.to_string()).unwrap_or_default(),
                    u.message.unwrap_or_default(),
                )
            }))
    }

    pub fn build_spec(&self, params: &SiteServiceParams) -> Result<ServiceSpec> {
        build_service_spec(params, &self.config)
    }

    async fn inspect(&self, id: &SiteResourceId) -> Result<Option<bollard::models::Service>> {
        match self
            .docker
            .inspect_service(&id.resource_name(), None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(docker_err("inspect service")(e)),
        }
    }

    fn state_of(service: Option<&bollard::models::Service>) -> ServiceState {
        let Some(s) = service else {
            return ServiceState {
                exists: false,
                replicas: None,
                spec_hash: None,
                version: None,
            };
        };
        let spec = s.spec.as_ref();
        ServiceState {
            exists: true,
            replicas: spec
                .and_then(|sp| sp.mode.as_ref())
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .and_then(|r| u64::try_from(r).ok()),
            spec_hash: spec
                .and_then(|sp| sp.labels.as_ref())
                .and_then(|l| l.get(LABEL_SPEC_HASH).cloned()),
            version: s.version.as_ref().and_then(|v| v.index),
        }
    }

    async fn update(
        &self,
        id: &SiteResourceId,
        spec: ServiceSpec,
        version: Option<u64>,
    ) -> Result<()> {
        let version = version
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| Error::unexpected("swarm", "service without a usable version"))?;
        self.docker
            .update_service(
                &id.resource_name(),
                spec,
                UpdateServiceOptionsBuilder::new().version(version).build(),
                None,
            )
            .await
            .map_err(docker_err("update service"))?;
        Ok(())
    }
}

impl SwarmDriver {
    /// For a site's first service: `service create` alone, with no inspect before or
    /// after it (a new site has no service, and swarm's answer to the create is its
    /// commit of the spec); when one exists (a run interrupted after the create, or a
    /// name taken), [`SiteRuntime::ensure_service`] converges it. Returns the state it
    /// made; `version` is unknown after a create (`observe_service` reads it).
    pub async fn create_or_ensure_service(
        &self,
        params: &SiteServiceParams,
    ) -> Result<ServiceState> {
        let spec = self.build_spec(params)?;
        let made = ServiceState {
            exists: true,
            replicas: spec
                .mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .and_then(|r| u64::try_from(r).ok()),
            spec_hash: spec
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SPEC_HASH).cloned()),
            version: None,
        };
        match self.docker.create_service(spec, None).await {
            Ok(_) => {
                tracing::info!(site = %params.id, node = %params.node.as_str(), "service created");
                Ok(made)
            }
            Err(e) if status_of(&e) == Some(409) => self.ensure_service(params).await,
            Err(e) => Err(docker_err("create service")(e)),
        }
    }

    /// The site's secrets of these contents, one per kind: one `secret ls` of the site's
    /// label, and a `secret create` ([`SiteRuntime::ensure_secret`]) only for a version
    /// that is not there. Ensuring secrets that exist (the service step does, to learn
    /// their ids) is one call instead of a refused create and an inspect each.
    ///
    /// Idempotent and safe to repeat after a crash: a name carries its content's hash, so
    /// a secret listed under the name has that content; one removed after the listing
    /// makes the service create or update fail, and the step runs again from the listing.
    pub async fn ensure_site_secrets(
        &self,
        id: &SiteResourceId,
        wanted: &[(SecretKind, Secret)],
    ) -> Result<BTreeMap<SecretKind, SecretRef>> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_SITE}={id}")])]);
        let listed = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(docker_err("list secrets"))?;
        let existing: HashMap<String, String> = listed
            .into_iter()
            .filter_map(|s| Some((s.spec?.name?, s.id?)))
            .collect();
        // The missing ones created side by side (each is a write of the swarm's store:
        // five one after another were five round trips in a row).
        let made = futures::future::try_join_all(wanted.iter().map(|(kind, data)| {
            let name = secret_name(id, *kind, data);
            let listed = existing.get(&name).cloned();
            async move {
                let r = match listed {
                    Some(sid) => SecretRef { id: sid, name },
                    None => self.ensure_secret(id, *kind, data).await?,
                };
                Ok::<_, Error>((*kind, r))
            }
        }))
        .await?;
        Ok(made.into_iter().collect())
    }
}

impl SiteRuntime for SwarmDriver {
    async fn ensure_secret(
        &self,
        id: &SiteResourceId,
        kind: SecretKind,
        data: &Secret,
    ) -> Result<SecretRef> {
        let name = secret_name(id, kind, data);
        let spec = SecretSpec {
            name: Some(name.clone()),
            labels: Some(HashMap::from([
                (LABEL_SITE.to_owned(), id.to_string()),
                (LABEL_SECRET_KIND.to_owned(), kind.as_str().to_owned()),
            ])),
            data: Some(base64::engine::general_purpose::STANDARD.encode(data.expose())),
            ..Default::default()
        };
        match self.docker.create_secret(spec).await {
            Ok(r) => {
                tracing::info!(site = %id, secret = %name, "swarm secret created");
                Ok(SecretRef { id: r.id, name })
            }
            // Same name, same content (the name is derived from it): already there.
            Err(e) if status_of(&e) == Some(409) => {
                let s = self
                    .docker
                    .inspect_secret(&name)
                    .await
                    .map_err(docker_err(format!("inspect secret {name}")))?;
                let sid = s.id.ok_or_else(|| {
                    Error::unexpected("swarm", format!("secret {name} has no id"))
                })?;
                Ok(SecretRef { id: sid, name })
            }
            Err(e) => Err(docker_err(format!("create secret {name}"))(e)),
        }
    }

    async fn prune_site_secrets(&self, id: &SiteResourceId, keep: &[SecretRef]) -> Result<usize> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_SITE}={id}")])]);
        let secrets = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(docker_err("list secrets"))?;
        let mut removed = 0;
        for s in secrets {
            let Some(sid) = s.id else { continue };
            if keep.iter().any(|k| k.id == sid) {
                continue;
            }
            match self.docker.delete_secret(&sid).await {
                Ok(()) => removed += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(docker_err("delete secret")(e)),
            }
        }
        Ok(removed)
    }

    async fn ensure_service(&self, params: &SiteServiceParams) -> Result<ServiceState> {
        let spec = self.build_spec(params)?;
        let current = self.inspect(&params.id).await?;
        let state = Self::state_of(current.as_ref());
        if !state.exists {
            tracing::info!(site = %params.id, node = %params.node.as_str(), "creating service");
            match self.docker.create_service(spec.clone(), None).await {
                Ok(_) => {}
                // A concurrent run created it: converge it below.
                Err(e) if status_of(&e) == Some(409) => {}
                Err(e) => return Err(docker_err("create service")(e)),
            }
        } else if !state.matches(&spec) {
            tracing::info!(site = %params.id, "updating service");
            self.update(&params.id, spec.clone(), state.version).await?;
        } else {
            return Ok(state);
        }
        let after = Self::state_of(self.inspect(&params.id).await?.as_ref());
        if !after.matches(&spec) {
            // Lost a race with another writer between create/update and now.
            self.update(&params.id, spec, after.version).await?;
            return Ok(Self::state_of(self.inspect(&params.id).await?.as_ref()));
        }
        Ok(after)
    }

    async fn observe_service(&self, id: &SiteResourceId) -> Result<ServiceState> {
        Ok(Self::state_of(self.inspect(id).await?.as_ref()))
    }

    async fn scale_service(&self, id: &SiteResourceId, replicas: u64) -> Result<ServiceState> {
        let service = self.inspect(id).await?.ok_or_else(|| {
            Error::unexpected("swarm", format!("no service {}", id.resource_name()))
        })?;
        let version = service.version.as_ref().and_then(|v| v.index);
        let mut spec = service
            .spec
            .ok_or_else(|| Error::unexpected("swarm", "service without spec"))?;
        let current = spec
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas);
        let want = i64::try_from(replicas).map_err(|_| Error::invalid("replicas", "too large"))?;
        if current == Some(want) {
            return Ok(Self::state_of(self.inspect(id).await?.as_ref()));
        }
        spec.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(want),
            }),
            ..Default::default()
        });
        // The spec no longer is what build_service_spec made: the next ensure_service
        // must rewrite it, so the hash label is cleared.
        if let Some(labels) = spec.labels.as_mut() {
            labels.insert(LABEL_SPEC_HASH.into(), "scaled".into());
        }
        self.update(id, spec, version).await?;
        // Give swarm a moment to record the new version before reading it back.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Self::state_of(self.inspect(id).await?.as_ref()))
    }

    /// Removes the service and returns once none of its tasks runs any more: swarm answers
    /// the delete at once and stops the containers afterwards (up to the stop grace
    /// period), and a container still running would keep writing to the site's storage
    /// and holding its secrets while the next steps remove them.
    async fn remove_service(&self, id: &SiteResourceId) -> Result<()> {
        let name = id.resource_name();
        let Some(service_id) = self.inspect(id).await?.and_then(|s| s.id) else {
            // Gone already; a task left by an earlier try is matched by its name below.
            return self.wait_tasks_stopped(&name, None).await;
        };
        match self.docker.delete_service(&name).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(docker_err("remove service")(e)),
        }
        self.wait_tasks_stopped(&name, Some(&service_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SwarmConfig {
        SwarmConfig {
            docker_host: "unix:///run/lab/d1.sock".into(),
            runtime_image: "local/wordpress:dev".into(),
            site_network: "pd-sites".into(),
            edge_network: Some("pd-edge".into()),
            cert_resolver: "le".into(),
            varnish_service: "varnish@swarm".into(),
            internal_entrypoint: "internal".into(),
            web_entrypoint: "web".into(),
            websecure_entrypoint: "websecure".into(),
            site_port: 80,
            wp_content_target: "/var/lib/wordpress/wp-content".into(),
            healthcheck: vec!["CMD".into(), "pressdock-agent".into(), "health".into()],
            docker_api_version: "1.41".into(),
            net_guard_wait_secs: 0,
        }
    }

    fn params() -> SiteServiceParams {
        let id = SiteResourceId::parse("k3v7q2m6xa").unwrap_or_else(|e| panic!("{e}"));
        let d = |s: &str| DomainName::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let secrets = SecretKind::ALL
            .iter()
            .map(|k| {
                (
                    *k,
                    SecretRef {
                        id: format!("id-{}", k.as_str()),
                        name: format!("wp_k3v7q2m6xa_{}_0123456789ab", k.as_str()),
                    },
                )
            })
            .collect();
        SiteServiceParams {
            id,
            domains: BTreeSet::from([d("www.example.com"), d("example.com")]),
            primary_domain: d("www.example.com"),
            agent: AgentParams {
                control_url: Some("http://10.77.0.1:8081".into()),
                title: "Café {{.Node.ID}}".into(),
                admin_user: "admin".into(),
                admin_email: "owner@example.com".into(),
            },
            node: NodeId::parse("n0de1d").unwrap_or_else(|e| panic!("{e}")),
            resources: PlanResources {
                cpu_limit_millis: 1000,
                memory_limit_bytes: 512 << 20,
                cpu_reservation_millis: 250,
                memory_reservation_bytes: 256 << 20,
            },
            secrets,
            wp_content_source: "/mnt/sites/k3v7q2m6xa".into(),
            db_host: "10.77.0.1:3306".into(),
            redis_sentinels: vec!["10.77.0.1:26379".into()],
            redis_master_name: "pressdock".into(),
            extra_env: BTreeMap::from([("AGENT_API".into(), "http://platform:8080".into())]),
            image: None,
            suspended: false,
            force_update: 0,
        }
    }

    fn spec() -> ServiceSpec {
        build_service_spec(&params(), &config()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn net_bind_service_only_below_1024() {
        assert!(site_capabilities(80).contains(&"CAP_NET_BIND_SERVICE".to_owned()));
        assert_eq!(
            site_capabilities(8080),
            [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_SETUID",
                "CAP_SETGID",
                "CAP_KILL"
            ]
            .map(String::from)
            .to_vec()
        );
    }

    #[test]
    fn spec_core_fields() {
        let s = spec();
        assert_eq!(s.name.as_deref(), Some("wp_k3v7q2m6xa"));
        let t = s.task_template.as_ref().unwrap_or_else(|| panic!("task"));
        let c = t
            .container_spec
            .as_ref()
            .unwrap_or_else(|| panic!("container"));
        assert_eq!(c.image.as_deref(), Some("local/wordpress:dev"));
        // The site's own names resolve to the task itself (WP-Cron, loopback checks).
        assert_eq!(
            c.hosts.as_deref(),
            Some(&["127.0.0.1 www.example.com example.com".to_owned()][..])
        );
        let env = c.env.clone().unwrap_or_default();
        for want in [
            "PRESSDOCK_SITE_ID=k3v7q2m6xa",
            "PRESSDOCK_DOMAINS=www.example.com,example.com",
            "PRESSDOCK_PRIMARY_DOMAIN=www.example.com",
            "PRESSDOCK_NODE_ID={{.Node.ID}}",
            "PRESSDOCK_TASK_ID={{.Task.ID}}",
            "PRESSDOCK_SITE_TITLE=Café {{\"{{\"}}.Node.ID}}",
            "PRESSDOCK_ADMIN_USER=admin",
            "PRESSDOCK_ADMIN_EMAIL=owner@example.com",
            "PRESSDOCK_CONTROL_URL=http://10.77.0.1:8081",
            "PRESSDOCK_ADMIN_PASSWORD_FILE=/run/secrets/admin_password",
            "PRESSDOCK_DB_HOST=10.77.0.1:3306",
            "PRESSDOCK_DB_NAME=wp_k3v7q2m6xa",
            "PRESSDOCK_DB_USER=wp_k3v7q2m6xa",
            "PRESSDOCK_DB_PASSWORD_FILE=/run/secrets/db_password",
            "PRESSDOCK_REDIS_PREFIX=wp_k3v7q2m6xa:",
            "AGENT_API=http://platform:8080",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} missing in {env:?}");
        }
        let m = &c.mounts.clone().unwrap_or_default()[0];
        assert_eq!(m.typ, Some(MountTypeEnum::BIND));
        assert_eq!(m.source.as_deref(), Some("/mnt/sites/k3v7q2m6xa"));
        assert_eq!(m.target.as_deref(), Some("/var/lib/wordpress/wp-content"));
        let secrets = c.secrets.clone().unwrap_or_default();
        assert_eq!(secrets.len(), SecretKind::ALL.len());
        let db = secrets
            .iter()
            .find(|s| s.secret_id.as_deref() == Some("id-db_password"))
            .unwrap_or_else(|| panic!("db secret"));
        let f = db.file.as_ref().unwrap_or_else(|| panic!("file"));
        assert_eq!(
            (f.name.as_deref(), f.gid.as_deref(), f.mode),
            (Some("db_password"), Some("0"), Some(0o400))
        );
        // Every secret file: the agent's (root) only, none readable by PHP (www-data).
        for sec in &secrets {
            let f = sec.file.as_ref().unwrap_or_else(|| panic!("file"));
            assert_eq!(
                (f.uid.as_deref(), f.gid.as_deref(), f.mode),
                (Some("0"), Some("0"), Some(0o400)),
                "{:?}",
                f.name
            );
        }
        assert_eq!(c.capability_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            c.capability_add,
            Some(
                [
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_SETUID",
                    "CAP_SETGID",
                    "CAP_KILL",
                    "CAP_NET_BIND_SERVICE"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(
            c.privileges.as_ref().and_then(|p| p.no_new_privileges),
            Some(true)
        );
        let hc = c.health_check.as_ref().unwrap_or_else(|| panic!("health"));
        assert_eq!(hc.test.clone().unwrap_or_default()[0], "CMD");

        let p = t
            .placement
            .as_ref()
            .and_then(|p| p.constraints.clone())
            .unwrap_or_default();
        assert_eq!(p, vec!["node.id==n0de1d".to_owned()]);
        let r = t.resources.as_ref().unwrap_or_else(|| panic!("resources"));
        let lim = r.limits.as_ref().unwrap_or_else(|| panic!("limits"));
        assert_eq!(
            (lim.nano_cpus, lim.memory_bytes),
            (Some(1_000_000_000), Some(512 << 20))
        );
        let res = r
            .reservations
            .as_ref()
            .unwrap_or_else(|| panic!("reservations"));
        assert_eq!(
            (res.nano_cpus, res.memory_bytes),
            (Some(250_000_000), Some(256 << 20))
        );
        assert_eq!(
            t.restart_policy.as_ref().and_then(|r| r.condition),
            Some(TaskSpecRestartPolicyConditionEnum::ANY)
        );
        let net = &t.networks.clone().unwrap_or_default()[0];
        assert_eq!(net.target.as_deref(), Some("pd-sites"));

        assert_eq!(
            s.update_config.as_ref().and_then(|u| u.order),
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(
            s.endpoint_spec.as_ref().and_then(|e| e.mode),
            Some(EndpointSpecModeEnum::DNSRR)
        );
        assert_eq!(
            s.mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas),
            Some(1)
        );
    }

    #[test]
    fn route_labels_exact() {
        let labels = route_labels(&params(), &config());
        let want: BTreeMap<String, String> = [
            ("pressdock.route.hosts", "example.com,www.example.com"),
            ("pressdock.route.port", "80"),
            ("pressdock.route.network", "pd-sites"),
            ("pressdock.route.internal", "internal"),
            ("pressdock.route.edge", "web,websecure"),
            ("pressdock.route.tls", "websecure"),
            ("pressdock.route.certresolver", "le"),
            ("pressdock.route.cache", "varnish@swarm"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(labels, want);
        let lab = SwarmConfig {
            cert_resolver: String::new(),
            websecure_entrypoint: String::new(),
            ..config()
        };
        let l = route_labels(&params(), &lab);
        assert_eq!(l["pressdock.route.edge"], "web");
        assert!(
            !l.contains_key("pressdock.route.tls")
                && !l.contains_key("pressdock.route.certresolver")
        );
    }

    #[test]
    fn spec_hash_is_stable_and_sensitive() {
        let a = spec();
        let b = spec();
        let h = |s: &ServiceSpec| {
            s.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SPEC_HASH).cloned())
        };
        assert_eq!(h(&a), h(&b));
        assert_eq!(h(&a), Some(spec_hash(&a).unwrap_or_default()));
        let mut p = params();
        p.suspended = true;
        let s = build_service_spec(&p, &config()).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(h(&a), h(&s));
        assert_eq!(
            s.mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas),
            Some(0)
        );
        let mut p = params();
        p.force_update = 1;
        assert_ne!(
            h(&a),
            h(&build_service_spec(&p, &config()).unwrap_or_else(|e| panic!("{e}")))
        );
    }

    #[test]
    fn invalid_params_are_refused() {
        let mut p = params();
        p.secrets.remove(&SecretKind::WpSalts);
        assert!(build_service_spec(&p, &config()).is_err());
        let mut p = params();
        p.domains.clear();
        assert!(build_service_spec(&p, &config()).is_err());
        let mut p = params();
        p.extra_env
            .insert("PRESSDOCK_DB_HOST".into(), "evil".into());
        assert!(build_service_spec(&p, &config()).is_err());
        let mut p = params();
        p.resources.memory_reservation_bytes = p.resources.memory_limit_bytes + 1;
        assert!(build_service_spec(&p, &config()).is_err());
        assert!(NodeId::parse("node id").is_err());
    }

    #[test]
    fn secret_names_are_versioned_by_content() {
        let id = SiteResourceId::parse("k3v7q2m6xa").unwrap_or_else(|e| panic!("{e}"));
        let a = secret_name(&id, SecretKind::DbPassword, &Secret::new("one"));
        let b = secret_name(&id, SecretKind::DbPassword, &Secret::new("two"));
        assert!(
            a.starts_with("wp_k3v7q2m6xa_db_password_")
                && a.len() == "wp_k3v7q2m6xa_db_password_".len() + 12
        );
        assert_ne!(a, b);
        assert_eq!(
            a,
            secret_name(&id, SecretKind::DbPassword, &Secret::new("one"))
        );
    }

    #[test]
    fn net_guard_wait_only_when_configured() {
        let env = |c: &SwarmConfig| {
            let spec = build_service_spec(&params(), c).unwrap_or_else(|e| panic!("{e}"));
            spec.task_template
                .and_then(|t| t.container_spec)
                .and_then(|c| c.env)
                .unwrap_or_default()
        };
        assert!(
            !env(&config())
                .iter()
                .any(|e| e.starts_with("PRESSDOCK_NET_GUARD"))
        );
        let guarded = SwarmConfig {
            net_guard_wait_secs: 30,
            ..config()
        };
        assert!(
            env(&guarded)
                .iter()
                .any(|e| e == "PRESSDOCK_NET_GUARD_WAIT_SECS=30")
        );
    }

    #[test]
    fn docker_host_must_be_a_unix_socket() {
        let c = SwarmConfig {
            docker_host: "tcp://10.0.0.1:2375".into(),
            ..config()
        };
        assert!(SwarmDriver::new(&c).is_err());
    }
}
