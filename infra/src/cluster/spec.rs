//! The cluster spec (`configs/cluster.toml`): what the production cluster is made of, as the
//! operator writes it, parsed into typed values and checked before anything is built.
//!
//! Parsing names the field that is wrong (`roles.worker.size: …`), through
//! `serde_path_to_error`; the checks after parsing name it too. What the spec does not say
//! (resource names, tags, cloud-init) is derived from it by [`super::desired`], so that two
//! runs of the tool from the same spec want the same resources.
use super::images::{IMAGES, Images, Reference};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The six roles of the reference architecture (DESIGN.md). A node has exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Cache,
    Worker,
    Database,
    Storage,
    Monitoring,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Manager,
        Role::Cache,
        Role::Worker,
        Role::Database,
        Role::Storage,
        Role::Monitoring,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Cache => "cache",
            Role::Worker => "worker",
            Role::Database => "database",
            Role::Storage => "storage",
            Role::Monitoring => "monitoring",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
    /// The data tier: reachable only from the roles that use it, never from the internet.
    pub fn is_data_tier(self) -> bool {
        matches!(self, Role::Cache | Role::Database | Role::Storage)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ports of a role that only nodes of the same role may reach, whatever the spec's rules say
/// (issue 11): Galera's replication and MariaDB itself (sites and the platform go through the
/// DB router).
pub const PRIVATE_PORTS: &[(Role, u16, u16, &str)] = &[
    (
        Role::Database,
        3306,
        3306,
        "MariaDB (clients use the DB router)",
    ),
    (Role::Database, 4444, 4444, "Galera SST"),
    (Role::Database, 4567, 4568, "Galera replication and IST"),
];

/// (role, port range, source role) that must never be open: site tasks run on workers, and a
/// worker reaching ProxySQL's admin interface could rewrite the DB router's users, one
/// reaching Varnish's admin port could load VCL (issue 11). Sentinel is reachable from
/// workers: the object cache finds the master through it, as the site's own Sentinel user,
/// which may only ask where the master is (docs/security.md).
pub const FORBIDDEN_SOURCES: &[(Role, u16, u16, Role, &str)] = &[
    (Role::Database, 6032, 6032, Role::Worker, "ProxySQL admin"),
    (Role::Cache, 6082, 6082, Role::Worker, "Varnish admin"),
    // stacks/edge.yml publishes the admin port (6082 in the task) at 16082 on the node.
    (Role::Cache, 16082, 16082, Role::Worker, "Varnish admin"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Prefix of every resource name and the cluster's tag: `pd-prod`.
    pub name: String,
    pub provider: ProviderKind,
    pub region: String,
    /// Droplet image slug (`debian-12-x64`).
    pub image: String,
    /// SSH keys already in the account, by fingerprint or id.
    pub ssh_keys: Vec<String>,
    /// Operators' addresses (CIDR): the only source of SSH and of the dashboards.
    pub admin_addresses: Vec<String>,
    /// Extra tags on every droplet and volume.
    #[serde(default)]
    pub tags: Vec<String>,
    pub vpc: VpcSpec,
    pub edge: EdgeSpec,
    /// Rules on every node (target: the cluster's tag): swarm, SSH, metrics.
    pub common_inbound: Vec<RuleSpec>,
    /// As written (a struct, so that an error names `roles.worker.size`, not a map key).
    #[serde(rename = "roles")]
    roles_toml: RolesToml,
    /// The roles, filled from `roles_toml` by the checks.
    #[serde(skip)]
    pub roles: BTreeMap<Role, RoleSpec>,
    /// The network guard every worker runs (required: a worker without it serves no site).
    #[serde(default)]
    pub guard: Option<GuardSpec>,
    /// The registry reference of every image the stacks and the platform run (required:
    /// the nodes of a cloud have none of the lab's `local/*` builds). Checked into
    /// [`Checked::images`].
    #[serde(default)]
    pub images: Option<ImagesSpec>,
    /// Where the platform puts the sites' backups (its `[backends.s3]`, written by
    /// `cluster platform-config`); its key pair is never in the spec.
    #[serde(default)]
    pub backups: Option<BackupsSpec>,
}

/// `[backups]`: the S3 bucket of the sites' backups (DigitalOcean Spaces or any S3).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsSpec {
    /// `https://HOST[:PORT]` of the S3 API (`https://fra1.digitaloceanspaces.com`).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Path-style URLs (`endpoint/bucket/key`), which servers other than AWS and Spaces need.
    #[serde(default)]
    pub force_path_style: bool,
}

/// `[images]`: a reference per image of [`super::images::IMAGES`], as written. Each is
/// checked after parsing (well formed, pinned, not the lab's); a key the table should not
/// have is a parse error naming it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSpec {
    pub traefik: Option<String>,
    pub varnish: Option<String>,
    pub redis: Option<String>,
    pub wordpress: Option<String>,
    pub galera: Option<String>,
    pub proxysql: Option<String>,
}

impl ImagesSpec {
    /// The reference written for image `key`.
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traefik" => self.traefik.as_deref(),
            "varnish" => self.varnish.as_deref(),
            "redis" => self.redis.as_deref(),
            "wordpress" => self.wordpress.as_deref(),
            "galera" => self.galera.as_deref(),
            "proxysql" => self.proxysql.as_deref(),
            _ => None,
        }
    }
}

/// The network guard of every worker (`pressdock-infra guard`, docs/security.md "Network
/// confinement"): cloud-init fetches the binary, checks its digest and installs it as the
/// host unit `configs/systemd/pressdock-guard.service` with these endpoints. Node addresses
/// are not known before the droplets exist, so an endpoint is the VPC's range on a role's
/// port; the role's cloud firewall (which admits workers on that port, checked) keeps the
/// other roles' nodes out of it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// Where workers fetch `pressdock-infra` (https).
    pub binary_url: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The public internet for site tasks: `off`, `all` or TCP ports (`80,443,587`).
    #[serde(default = "default_guard_internet")]
    pub internet: String,
    /// What a site task may open connections to, besides loopback and docker's DNS.
    pub allow: Vec<GuardAllowSpec>,
}

fn default_guard_internet() -> String {
    "80,443".into()
}

/// A role's TCP port(s) a site task may reach.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardAllowSpec {
    pub role: String,
    /// `"6033"`, `"6379"`, `"23201-23202"`.
    pub ports: String,
    pub why: String,
}

impl GuardSpec {
    /// The guard's arguments (`PD_GUARD_ARGS` of the unit) for a cluster in `vpc`.
    pub fn args(&self, vpc: &str) -> String {
        let mut a: Vec<String> = self
            .allow
            .iter()
            .map(|e| format!("--allow {vpc}:{}", e.ports.trim()))
            .collect();
        a.push(format!("--internet {}", self.internet.trim()));
        a.join(" ")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesToml {
    manager: Option<RoleSpec>,
    cache: Option<RoleSpec>,
    worker: Option<RoleSpec>,
    database: Option<RoleSpec>,
    storage: Option<RoleSpec>,
    monitoring: Option<RoleSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Digitalocean,
}

impl ProviderKind {
    /// Its machines have only what they pull from a registry (not the lab's own builds).
    pub fn is_cloud(self) -> bool {
        match self {
            ProviderKind::Digitalocean => true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcSpec {
    pub ip_range: String,
}

/// How the internet reaches the edge role: a load balancer passing TCP through to the edge
/// role's Traefik (TLS stays with Traefik and Let's Encrypt).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    pub kind: EdgeKind,
    /// The role behind it (its Traefik publishes `web`/`websecure`).
    pub role: Role,
    /// Ports passed through (TCP, same port on the nodes).
    pub ports: Vec<u16>,
    /// TCP health check port on the nodes.
    pub health_check_port: u16,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `lb-small` etc. are gone; DigitalOcean sizes load balancers by node count.
    #[serde(default = "one")]
    pub size_unit: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    LoadBalancer,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub count: u32,
    /// Droplet size slug.
    pub size: String,
    /// Block volume per node (required for database and storage).
    pub volume: Option<VolumeSpec>,
    /// Swarm: managers join as managers, every other role as workers.
    #[serde(default)]
    pub pool: Option<String>,
    /// Site slots per node (`pressdock.slots`), workers only.
    #[serde(default)]
    pub slots: Option<u32>,
    #[serde(default)]
    pub inbound: Vec<RuleSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub size_gib: u32,
    pub filesystem: Filesystem,
    /// Where cloud-init mounts it.
    pub mount: String,
}

/// One inbound rule: `protocol`/`ports` from `from`, where each source is a role, `cluster`
/// (every node; only in `common_inbound`), `admin` (the admin addresses), `edge` (the load
/// balancer) or `internet`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// `"443"`, `"49152-49251"`; absent for icmp.
    #[serde(default)]
    pub ports: Option<String>,
    pub from: Vec<String>,
    /// What the rule is for (shown by `check`).
    pub why: String,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// Where traffic of a rule may come from, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Role(Role),
    Cluster,
    Admin,
    Edge,
    Internet,
}

impl Source {
    fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "cluster" => Source::Cluster,
            "admin" => Source::Admin,
            "edge" => Source::Edge,
            "internet" => Source::Internet,
            r => Source::Role(Role::parse(r)?),
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Role(r) => write!(f, "{r}"),
            Source::Cluster => f.write_str("cluster"),
            Source::Admin => f.write_str("admin"),
            Source::Edge => f.write_str("edge"),
            Source::Internet => f.write_str("internet"),
        }
    }
}

/// A port range, `lo..=hi`; all ports for icmp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Ports {
    pub fn all() -> Ports {
        Ports { lo: 1, hi: 65535 }
    }
    fn parse(s: &str) -> Option<Ports> {
        let num = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        match s.split_once('-') {
            Some((a, b)) => {
                let (lo, hi) = (num(a)?, num(b)?);
                (lo <= hi).then_some(Ports { lo, hi })
            }
            None => num(s).map(|p| Ports { lo: p, hi: p }),
        }
    }
    /// As DigitalOcean writes it: `"443"`, `"8000-9000"`, `"0"` for all.
    pub fn to_api(self) -> String {
        if self == Ports::all() {
            "0".into()
        } else if self.lo == self.hi {
            self.lo.to_string()
        } else {
            format!("{}-{}", self.lo, self.hi)
        }
    }
    fn overlaps(self, lo: u16, hi: u16) -> bool {
        self.lo <= hi && lo <= self.hi
    }
}

/// A checked rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub protocol: Protocol,
    pub ports: Ports,
    pub from: Vec<Source>,
    pub why: String,
}

/// An error in the spec: the field, then what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// Regions where DigitalOcean offers droplets, volumes and load balancers (the published
/// spec's region enum for volumes and load balancers).
pub const REGIONS: &[&str] = &[
    "ams1", "ams2", "ams3", "blr1", "fra1", "lon1", "nyc1", "nyc2", "nyc3", "sfo1", "sfo2", "sfo3",
    "sgp1", "tor1", "syd1",
];

/// A spec that parsed and passed every check. Only [`Checked::parse`] makes one.
#[derive(Clone, Debug)]
pub struct Checked {
    pub spec: ClusterSpec,
    /// Rules of each role, checked, in the spec's order.
    pub rules: BTreeMap<Role, Vec<Rule>>,
    pub common_rules: Vec<Rule>,
    /// `[images]`, checked: what the stacks' `${PD_IMAGE_…}` are filled in with.
    pub images: Images,
}

impl Checked {
    pub fn load(path: &Path) -> anyhow::Result<Checked> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Checked::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Checked, SpecError> {
        let de = toml::Deserializer::parse(text).map_err(|e| err("(file)", e.to_string()))?;
        let spec: ClusterSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            // toml's message carries a span of the whole document; its first line is enough.
            let msg = e.inner().message().lines().next().unwrap_or("").to_owned();
            err(if field == "." { "(file)".into() } else { field }, msg)
        })?;
        check(spec)
    }

    pub fn node_count(&self) -> u32 {
        self.spec.roles.values().map(|r| r.count).sum()
    }
}

fn valid_slug(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_lowercase()
        && !s.ends_with('-')
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len.parse::<u8>().is_ok_and(|l| l <= 32),
        Ok(std::net::IpAddr::V6(_)) => len.parse::<u8>().is_ok_and(|l| l <= 128),
        Err(_) => false,
    }
}

fn check_rule(
    field: &str,
    r: &RuleSpec,
    spec: &ClusterSpec,
    common: bool,
) -> Result<Rule, SpecError> {
    let ports = match (r.protocol, &r.ports) {
        (Protocol::Icmp, None) => Ports::all(),
        (Protocol::Icmp, Some(_)) => {
            return Err(err(format!("{field}.ports"), "icmp has no ports"));
        }
        (_, None) => {
            return Err(err(
                format!("{field}.ports"),
                "missing (tcp and udp need ports)",
            ));
        }
        (_, Some(p)) => Ports::parse(p).ok_or_else(|| {
            err(
                format!("{field}.ports"),
                format!("{p:?} is not a port (1-65535) nor a range \"lo-hi\""),
            )
        })?,
    };
    if r.from.is_empty() {
        return Err(err(format!("{field}.from"), "empty: a rule needs a source"));
    }
    let mut from = Vec::new();
    for (i, s) in r.from.iter().enumerate() {
        let f = format!("{field}.from[{i}]");
        let src = Source::parse(s).ok_or_else(|| {
            err(
                &f,
                format!("{s:?}: expected a role, \"cluster\", \"admin\", \"edge\" or \"internet\""),
            )
        })?;
        match src {
            Source::Role(role) if !spec.roles.contains_key(&role) => {
                return Err(err(&f, format!("role {role} has no nodes in `roles`")));
            }
            Source::Cluster if !common => {
                return Err(err(
                    &f,
                    "\"cluster\" only in common_inbound (a role's rule names the roles it admits)",
                ));
            }
            Source::Admin if spec.admin_addresses.is_empty() => {
                return Err(err(&f, "\"admin\" but admin_addresses is empty"));
            }
            _ => {}
        }
        if from.contains(&src) {
            return Err(err(&f, format!("{s:?} twice")));
        }
        from.push(src);
    }
    if r.why.trim().is_empty() {
        return Err(err(format!("{field}.why"), "say what the rule is for"));
    }
    Ok(Rule {
        protocol: r.protocol,
        ports,
        from,
        why: r.why.clone(),
    })
}

/// Every check after parsing. Errors name the field.
fn check(mut spec: ClusterSpec) -> Result<Checked, SpecError> {
    let t = spec.roles_toml.clone();
    for (role, r) in [
        (Role::Manager, t.manager),
        (Role::Cache, t.cache),
        (Role::Worker, t.worker),
        (Role::Database, t.database),
        (Role::Storage, t.storage),
        (Role::Monitoring, t.monitoring),
    ] {
        if let Some(r) = r {
            spec.roles.insert(role, r);
        }
    }
    if !valid_slug(&spec.name, 20) {
        return Err(err(
            "name",
            format!(
                "{:?}: lower-case letters, digits and '-', starting with a letter, at most 20",
                spec.name
            ),
        ));
    }
    if !REGIONS.contains(&spec.region.as_str()) {
        return Err(err(
            "region",
            format!("{:?} is not one of {}", spec.region, REGIONS.join(", ")),
        ));
    }
    if !valid_slug(&spec.image, 64) {
        return Err(err(
            "image",
            format!("{:?} is not an image slug", spec.image),
        ));
    }
    if spec.ssh_keys.is_empty() {
        return Err(err(
            "ssh_keys",
            "empty: nodes would have no way in but the console",
        ));
    }
    for (i, k) in spec.ssh_keys.iter().enumerate() {
        let fingerprint = k.len() == 47
            && k.split(':').count() == 16
            && k.split(':')
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !fingerprint && k.parse::<u64>().is_err() {
            return Err(err(
                format!("ssh_keys[{i}]"),
                format!("{k:?}: an MD5 fingerprint (aa:bb:…, 16 bytes) or a numeric key id"),
            ));
        }
    }
    for (i, a) in spec.admin_addresses.iter().enumerate() {
        if !valid_cidr(a) {
            return Err(err(
                format!("admin_addresses[{i}]"),
                format!("{a:?} is not a CIDR (203.0.113.0/24)"),
            ));
        }
        if a.ends_with("/0") {
            return Err(err(
                format!("admin_addresses[{i}]"),
                format!("{a:?} is the whole internet; list the operators' networks"),
            ));
        }
    }
    for (i, t) in spec.tags.iter().enumerate() {
        let ok = !t.is_empty()
            && t.len() <= 255
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':');
        if !ok {
            return Err(err(
                format!("tags[{i}]"),
                format!("{t:?}: letters, digits, '_', '-', ':' (DigitalOcean's tag names)"),
            ));
        }
        if t == &spec.name || t.starts_with(&format!("{}-", spec.name)) {
            return Err(err(
                format!("tags[{i}]"),
                format!("{t:?} is in the tool's own namespace ({}-…)", spec.name),
            ));
        }
    }
    match spec.vpc.ip_range.split_once('/') {
        Some((ip, len))
            if ip
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_private())
                && len.parse::<u8>().is_ok_and(|l| (16..=28).contains(&l)) => {}
        _ => {
            return Err(err(
                "vpc.ip_range",
                format!(
                    "{:?}: a private IPv4 range (RFC 1918), /16 to /28",
                    spec.vpc.ip_range
                ),
            ));
        }
    }
    for role in Role::ALL {
        if !spec.roles.contains_key(&role) {
            return Err(err(
                format!("roles.{role}"),
                "missing: the cluster has all six roles (count = 0 is not allowed either)",
            ));
        }
    }
    for (role, r) in &spec.roles {
        let f = format!("roles.{role}");
        if r.count == 0 || r.count > 99 {
            return Err(err(format!("{f}.count"), format!("{}: 1 to 99", r.count)));
        }
        if matches!(role, Role::Manager | Role::Database) && r.count % 2 == 0 {
            return Err(err(
                format!("{f}.count"),
                format!(
                    "{}: an odd number, so that a majority survives a partition ({})",
                    r.count,
                    if *role == Role::Manager {
                        "raft"
                    } else {
                        "Galera"
                    }
                ),
            ));
        }
        if !valid_slug(&r.size, 64) {
            return Err(err(
                format!("{f}.size"),
                format!("{:?} is not a size slug", r.size),
            ));
        }
        match (&r.volume, role) {
            (None, Role::Database | Role::Storage) => {
                return Err(err(
                    format!("{f}.volume"),
                    "missing: data lives on a block volume, not on the droplet's disk",
                ));
            }
            (Some(v), _) => {
                if v.size_gib == 0 || v.size_gib > 16384 {
                    return Err(err(
                        format!("{f}.volume.size_gib"),
                        format!("{}: 1 to 16384", v.size_gib),
                    ));
                }
                if !v.mount.starts_with('/')
                    || v.mount == "/"
                    || !v
                        .mount
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
                    || v.mount.contains("..")
                {
                    return Err(err(
                        format!("{f}.volume.mount"),
                        format!("{:?} is not an absolute path below /", v.mount),
                    ));
                }
            }
            (None, _) => {}
        }
        if let Some(p) = &r.pool
            && !valid_slug(p, 32)
        {
            return Err(err(
                format!("{f}.pool"),
                format!("{p:?} is not a pool name"),
            ));
        }
        match (role, r.slots) {
            (Role::Worker, None) => {
                return Err(err(format!("{f}.slots"), "missing: site slots per worker"));
            }
            (Role::Worker, Some(0)) => {
                return Err(err(
                    format!("{f}.slots"),
                    "0: a worker needs at least one slot",
                ));
            }
            (Role::Worker, _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(err(format!("{f}.slots"), "only workers carry sites"));
            }
        }
    }
    if spec.edge.ports.is_empty() {
        return Err(err("edge.ports", "empty"));
    }
    if let Some(p) = spec.edge.ports.iter().find(|p| **p == 0) {
        return Err(err("edge.ports", format!("{p} is not a port")));
    }
    if spec.edge.health_check_port == 0 {
        return Err(err("edge.health_check_port", "0 is not a port"));
    }
    if spec.edge.role.is_data_tier() {
        return Err(err(
            "edge.role",
            format!("{}: the data tier is never behind the edge", spec.edge.role),
        ));
    }
    if spec.edge.size_unit == 0 || spec.edge.size_unit > 100 {
        return Err(err("edge.size_unit", "1 to 100"));
    }

    let mut common_rules = Vec::new();
    for (i, r) in spec.common_inbound.iter().enumerate() {
        let f = format!("common_inbound[{i}]");
        let rule = check_rule(&f, r, &spec, true)?;
        if rule
            .from
            .iter()
            .any(|s| matches!(s, Source::Internet | Source::Edge))
        {
            return Err(err(
                format!("{f}.from"),
                "common rules reach every node, the data tier included: not from the internet or the edge",
            ));
        }
        for &(role, lo, hi, what) in PRIVATE_PORTS {
            if rule.protocol != Protocol::Icmp && rule.ports.overlaps(lo, hi) {
                return Err(err(
                    format!("{f}.ports"),
                    format!("opens {what} ({role}) to every node"),
                ));
            }
        }
        common_rules.push(rule);
    }
    let mut rules = BTreeMap::new();
    for (role, r) in &spec.roles {
        let mut v = Vec::new();
        for (i, rs) in r.inbound.iter().enumerate() {
            let f = format!("roles.{role}.inbound[{i}]");
            let rule = check_rule(&f, rs, &spec, false)?;
            for s in &rule.from {
                let bad = match s {
                    Source::Internet => *role != spec.edge.role,
                    // With a load balancer nothing is open to the internet itself.
                    Source::Edge => *role != spec.edge.role,
                    _ => false,
                };
                if bad || (role.is_data_tier() && matches!(s, Source::Internet | Source::Edge)) {
                    return Err(err(
                        format!("{f}.from"),
                        format!(
                            "{s}: only the edge role ({}) is reachable from outside",
                            spec.edge.role
                        ),
                    ));
                }
            }
            if rule.protocol != Protocol::Icmp {
                for &(prole, lo, hi, what) in PRIVATE_PORTS {
                    if prole == *role
                        && rule.ports.overlaps(lo, hi)
                        && rule.from.iter().any(|s| *s != Source::Role(*role))
                    {
                        return Err(err(
                            format!("{f}.from"),
                            format!("{what} ({lo}-{hi}) is for {role} nodes only"),
                        ));
                    }
                }
                for &(frole, lo, hi, src, what) in FORBIDDEN_SOURCES {
                    if frole == *role
                        && rule.ports.overlaps(lo, hi)
                        && rule.from.contains(&Source::Role(src))
                    {
                        return Err(err(
                            format!("{f}.from"),
                            format!("{src} nodes (site tasks) must not reach {what}"),
                        ));
                    }
                }
            }
            v.push(rule);
        }
        rules.insert(*role, v);
    }
    let edge_rules = &rules[&spec.edge.role];
    for p in &spec.edge.ports {
        let admitted = edge_rules.iter().any(|r| {
            r.protocol == Protocol::Tcp
                && r.ports.overlaps(*p, *p)
                && r.from.iter().any(|s| matches!(s, Source::Edge))
        });
        if !admitted {
            return Err(err(
                format!("roles.{}.inbound", spec.edge.role),
                format!("no rule admits the edge on port {p} (from = [\"edge\"])"),
            ));
        }
    }
    check_guard(&spec, &rules)?;
    let images = check_images(&spec)?;
    if let Some(b) = &spec.backups {
        check_backups(b)?;
    }
    Ok(Checked {
        spec,
        rules,
        common_rules,
        images,
    })
}

/// `[backups]`: an https endpoint with a host and nothing else, a bucket name S3 accepts
/// (3-63 of lower-case letters, digits, `-`, `.`), a region.
fn check_backups(b: &BackupsSpec) -> Result<(), SpecError> {
    let host = b.endpoint.strip_prefix("https://").unwrap_or("");
    if host.is_empty()
        || !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
    {
        return Err(err(
            "backups.endpoint",
            format!(
                "{:?} is not https://HOST[:PORT] (the platform signs every request: never plain http in production)",
                b.endpoint
            ),
        ));
    }
    let bucket_ok = (3..=63).contains(&b.bucket.len())
        && b.bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
        && b.bucket.as_bytes()[0].is_ascii_alphanumeric();
    if !bucket_ok {
        return Err(err(
            "backups.bucket",
            format!(
                "{:?}: 3 to 63 lower-case letters, digits, - and ., starting with a letter or digit",
                b.bucket
            ),
        ));
    }
    if b.region.is_empty()
        || !b
            .region
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(err(
            "backups.region",
            format!("{:?} is not a region name", b.region),
        ));
    }
    Ok(())
}

/// `[images]`: present, and for every image a reference that is well formed, pinned (a tag
/// other than `latest`, or a digest: a re-run deploys the same image) and, for a cloud,
/// pullable by its nodes (not the lab's `local/…` builds nor a `localhost` registry).
fn check_images(spec: &ClusterSpec) -> Result<Images, SpecError> {
    let Some(table) = &spec.images else {
        return Err(err(
            "images",
            format!(
                "missing: the registry reference of every image ({}; infra/README.md, \"Images\")",
                IMAGES.map(|i| i.key).join(", ")
            ),
        ));
    };
    let mut refs = BTreeMap::new();
    for i in IMAGES {
        let f = format!("images.{}", i.key);
        let Some(text) = table.get(i.key) else {
            return Err(err(
                f,
                format!("missing: the registry reference of {}", i.used_by),
            ));
        };
        let r = Reference::parse(text).map_err(|m| err(&f, m))?;
        if spec.provider.is_cloud() && r.is_local() {
            return Err(err(
                f,
                format!(
                    "{text:?}: only the lab has its own builds (local/…) and no cloud node has a \
                     localhost registry; push the image to a registry the nodes pull from"
                ),
            ));
        }
        if !r.is_pinned() {
            return Err(err(
                f,
                format!(
                    "{text:?}: not pinned; give a tag other than latest or a @sha256: digest, \
                     so that every deploy runs the same image"
                ),
            ));
        }
        refs.insert(i.key, text.to_owned());
    }
    Ok(Images::from_checked(refs))
}

/// The guard's section: present (every worker needs it), a digest-pinned https binary, and
/// endpoints that the cloud firewall admits from workers (a port the firewall closes would
/// be an allowlist entry that never works; one the guard leaves out stays closed to tasks
/// even where the firewall admits the worker).
fn check_guard(spec: &ClusterSpec, rules: &BTreeMap<Role, Vec<Rule>>) -> Result<(), SpecError> {
    let Some(g) = &spec.guard else {
        return Err(err(
            "guard",
            "missing: every worker runs the network guard (binary_url, sha256, allow)",
        ));
    };
    let url_ok = g.binary_url.starts_with("https://")
        && g.binary_url.len() > "https://".len()
        && g.binary_url.len() <= 2048
        && g.binary_url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/._~%+-".contains(&b));
    if !url_ok {
        return Err(err(
            "guard.binary_url",
            format!(
                "{:?}: an https URL (letters, digits and :/._~%+- only)",
                g.binary_url
            ),
        ));
    }
    if g.sha256.len() != 64 || !g.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err("guard.sha256", "64 hex digits: the binary's SHA-256"));
    }
    crate::guard::rules::Internet::parse(g.internet.trim())
        .map_err(|e| err("guard.internet", format!("{e:#}")))?;
    if g.allow.is_empty() {
        return Err(err(
            "guard.allow",
            "empty: sites need at least the DB router and Redis",
        ));
    }
    for (i, a) in g.allow.iter().enumerate() {
        let f = format!("guard.allow[{i}]");
        let role = Role::parse(&a.role).ok_or_else(|| {
            err(
                format!("{f}.role"),
                format!(
                    "{:?} is not a role ({})",
                    a.role,
                    Role::ALL.map(Role::as_str).join(", ")
                ),
            )
        })?;
        let ports = Ports::parse(&a.ports).ok_or_else(|| {
            err(
                format!("{f}.ports"),
                format!("{:?}: a port or a range (6379, 23201-23202)", a.ports),
            )
        })?;
        if a.why.trim().is_empty() {
            return Err(err(format!("{f}.why"), "say what site tasks reach there"));
        }
        let admitted = rules.get(&role).is_some_and(|rs| {
            rs.iter().any(|r| {
                r.protocol == Protocol::Tcp
                    && r.ports.lo <= ports.lo
                    && ports.hi <= r.ports.hi
                    && r.from.contains(&Source::Role(Role::Worker))
            })
        });
        if !admitted {
            return Err(err(
                format!("{f}.ports"),
                format!(
                    "{}: no rule of roles.{role}.inbound admits workers on it, so site tasks could not reach it",
                    a.ports
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/cluster.toml"
        ))
        .unwrap_or_default()
    }

    #[test]
    fn the_production_spec_is_valid_and_has_33_nodes() {
        let c = Checked::parse(&production()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node_count(), 33);
        let n = |r: Role| c.spec.roles[&r].count;
        assert_eq!(
            [
                Role::Manager,
                Role::Cache,
                Role::Worker,
                Role::Database,
                Role::Storage,
                Role::Monitoring
            ]
            .map(n),
            [3, 3, 20, 3, 2, 2]
        );
    }

    /// The error of the production spec with `from` replaced by `to`.
    fn bad(from: &str, to: &str) -> SpecError {
        let text = production();
        assert!(text.contains(from), "the production spec has {from:?}");
        match Checked::parse(&text.replacen(from, to, 1)) {
            Ok(_) => panic!("accepted with {to:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_guard_is_required_pinned_and_agrees_with_the_firewalls() {
        let c = Checked::parse(&production()).unwrap_or_else(|e| panic!("{e}"));
        let Some(g) = c.spec.guard.as_ref() else {
            panic!("the production spec has [guard]")
        };
        assert_eq!(
            g.args(&c.spec.vpc.ip_range),
            "--allow 10.110.0.0/20:6033 --allow 10.110.0.0/20:6379-6380 --allow 10.110.0.0/20:26379 \
             --allow 10.110.0.0/20:8081 --internet 80,443,587"
        );
        let text = production();
        let cut = text.find("\n# The network guard on every worker");
        let without = &text[..cut.unwrap_or(text.len())];
        let Err(e) = Checked::parse(without) else {
            panic!("accepted without [guard]")
        };
        assert_eq!(e.field, "guard", "{e}");
        let e = bad(
            "binary_url = \"https://releases",
            "binary_url = \"http://releases",
        );
        assert_eq!(e.field, "guard.binary_url", "{e}");
        let e = bad("pressdock-infra-x86_64", "pressdock-infra'$(reboot)'");
        assert_eq!(e.field, "guard.binary_url", "{e}");
        let e = bad("sha256 = \"0000", "sha256 = \"zz00");
        assert_eq!(e.field, "guard.sha256", "{e}");
        let e = bad("internet = \"80,443,587\"", "internet = \"80,http\"");
        assert_eq!(e.field, "guard.internet", "{e}");
        // Galera's SQL port: the database firewall admits no worker there.
        let e = bad(
            "ports = \"6033\"\nwhy = \"ProxySQL, the DB router: WordPress",
            "ports = \"3306\"\nwhy = \"ProxySQL, the DB router: WordPress",
        );
        assert_eq!(e.field, "guard.allow[0].ports", "{e}");
        assert!(e.message.contains("roles.database.inbound"), "{e}");
        let e = bad("role = \"cache\"", "role = \"cachee\"");
        assert_eq!(e.field, "guard.allow[1].role", "{e}");
    }

    #[test]
    fn images_come_from_a_registry_pinned_and_each_error_names_its_field() {
        let c = Checked::parse(&production()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.images.get("redis"),
            "registry.example.com/pressdock/redis:0.1.0"
        );
        assert_eq!(
            c.images.runtime_image(),
            "registry.example.com/pressdock/wordpress:0.1.0"
        );
        assert!(c.images.vars().values().all(|r| !r.starts_with("local/")));
        let cases = [
            // The lab's own build, or a registry on the node itself.
            (
                "redis = \"registry",
                "redis = \"local/redis:dev\" # ",
                "images.redis",
                "only the lab",
            ),
            (
                "varnish = \"registry.example.com",
                "varnish = \"localhost:5000",
                "images.varnish",
                "only the lab",
            ),
            // Not pinned: `latest`, or no tag at all.
            (
                "traefik:0.1.0",
                "traefik:latest",
                "images.traefik",
                "not pinned",
            ),
            ("varnish:0.1.0", "varnish", "images.varnish", "not pinned"),
            // Not a reference.
            (
                "pressdock/wordpress:0.1.0",
                "pressdock/WordPress:0.1.0",
                "images.wordpress",
                "path component",
            ),
            (
                "redis:0.1.0",
                "redis:0.1.0@sha256:beef",
                "images.redis",
                "digest",
            ),
            (
                "traefik = \"registry.example.com/",
                "traefik = \"registry.example.com:http/",
                "images.traefik",
                "is not a registry",
            ),
            ("traefik:0.1.0", "traefik:", "images.traefik", "tag"),
        ];
        for (from, to, field, says) in cases {
            let e = bad(from, to);
            assert_eq!(e.field, field, "{from} → {to}: {e}");
            assert!(e.message.contains(says), "{from} → {to}: {e}");
        }
        // Missing: one image, or the table.
        let text = production();
        let line = "wordpress = \"registry.example.com/pressdock/wordpress:0.1.0\"\n";
        assert!(text.contains(line));
        let e = Checked::parse(&text.replacen(line, "", 1)).err();
        assert_eq!(
            e.as_ref().map(|e| e.field.as_str()),
            Some("images.wordpress"),
            "{e:?}"
        );
        let start = text.find("[images]\n").unwrap_or(0);
        let end = text[start..].find("\n\n").map_or(start, |n| start + n);
        let e = Checked::parse(&format!("{}{}", &text[..start], &text[end..])).err();
        assert_eq!(
            e.as_ref().map(|e| e.field.as_str()),
            Some("images"),
            "{e:?}"
        );
        // A key no image has.
        let e = bad("[images]\n", "[images]\nmemcached = \"a/b:1\"\n");
        assert_eq!(e.field, "images.memcached", "{e}");
        // A digest pins (a tag beside it too, even `latest`).
        let digest = format!(
            "registry.example.com/pressdock/redis@sha256:{}",
            "0f".repeat(32)
        );
        let text = production().replacen("registry.example.com/pressdock/redis:0.1.0", &digest, 1);
        let c = Checked::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.images.vars()["PD_IMAGE_REDIS"], digest);
    }

    #[test]
    fn errors_name_the_field() {
        let e = bad("size = \"s-8vcpu-16gb\"", "sise = \"s-8vcpu-16gb\"");
        assert_eq!(e.field, "roles.worker.sise");
        assert!(e.message.contains("unknown field `sise`"), "{e}");
        let e = bad("count = 20", "count = \"20\"");
        assert_eq!(e.field, "roles.worker.count", "{e}");
        let e = bad("region = \"fra1\"", "region = \"mars1\"");
        assert_eq!(e.field, "region");
        let e = bad("count = 3 # managers", "count = 2 # managers");
        assert_eq!(e.field, "roles.manager.count");
        assert!(e.message.contains("odd"), "{e}");
        let e = bad("size_gib = 500", "size_gib = 0");
        assert_eq!(e.field, "roles.database.volume.size_gib");
        let e = bad("ip_range = \"10.110.0.0/20\"", "ip_range = \"8.8.0.0/20\"");
        assert_eq!(e.field, "vpc.ip_range");
        let e = bad("[roles.monitoring]", "[roles.monitorin]");
        assert_eq!(e.field, "roles.monitorin", "{e}");
    }

    #[test]
    fn the_data_tier_is_closed_to_the_internet_and_to_workers() {
        // Galera's replication ports from the workers.
        let e = bad(
            "ports = \"4567-4568\"\nfrom = [\"database\"]",
            "ports = \"4567-4568\"\nfrom = [\"database\", \"worker\"]",
        );
        assert!(e.field.starts_with("roles.database.inbound["), "{e}");
        assert!(e.message.contains("Galera"), "{e}");
        // ProxySQL from the internet.
        let e = bad(
            "ports = \"6033\"\nfrom = [\"worker\", \"manager\"]",
            "ports = \"6033\"\nfrom = [\"worker\", \"internet\"]",
        );
        assert!(e.message.contains("only the edge role"), "{e}");
        // Varnish admin from the workers.
        let e = bad(
            "ports = \"16082\"\nfrom = [\"manager\"]",
            "ports = \"16082\"\nfrom = [\"manager\", \"worker\"]",
        );
        assert!(e.message.contains("Varnish admin"), "{e}");
        // A common rule cannot open MariaDB to every node.
        let e = bad(
            "ports = \"7946\"\nfrom = [\"cluster\"]",
            "ports = \"3306\"\nfrom = [\"cluster\"]",
        );
        assert!(e.field.starts_with("common_inbound["), "{e}");
    }

    #[test]
    fn the_production_rules_say_who_reaches_what() {
        let c = Checked::parse(&production()).unwrap_or_else(|e| panic!("{e}"));
        let reaches = |from: Role, to: Role, port: u16| {
            c.rules[&to].iter().chain(&c.common_rules).any(|r| {
                r.protocol == Protocol::Tcp
                    && r.ports.overlaps(port, port)
                    && r.from
                        .iter()
                        .any(|s| *s == Source::Role(from) || *s == Source::Cluster)
            })
        };
        // Site tasks (workers) reach the DB router and Redis, not Galera.
        assert!(reaches(Role::Worker, Role::Database, 6033));
        assert!(reaches(Role::Worker, Role::Cache, 6379));
        // The cache stack's replicas publish 6380 (stacks/cache.yml).
        assert!(reaches(Role::Worker, Role::Cache, 6380));
        assert!(reaches(Role::Manager, Role::Cache, 6380));
        assert!(reaches(Role::Cache, Role::Cache, 6380));
        for p in [3306, 4444, 4567, 4568, 6032] {
            assert!(
                !reaches(Role::Worker, Role::Database, p),
                "worker → database:{p}"
            );
        }
        // Sentinel, as the site's own user (GET-MASTER-ADDR-BY-NAME only); not Varnish admin.
        assert!(reaches(Role::Worker, Role::Cache, 26379));
        assert!(!reaches(Role::Worker, Role::Cache, 6082));
        assert!(!reaches(Role::Worker, Role::Cache, 16082));
        // The platform (managers) reaches Varnish admin where stacks/edge.yml publishes it.
        assert!(reaches(Role::Manager, Role::Cache, 16082));
        // Nothing but the edge role is reachable from outside.
        for (role, rules) in &c.rules {
            let outside = rules.iter().any(|r| {
                r.from
                    .iter()
                    .any(|s| matches!(s, Source::Internet | Source::Edge))
            });
            assert_eq!(outside, *role == Role::Manager, "{role}");
        }
    }
}
