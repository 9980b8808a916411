//! `docker stack deploy` through the Engine API (bollard): a compose file (`stacks/*.yml`)
//! becomes swarm services, created or updated in place, with the labels the CLI gives them
//! (`com.docker.stack.namespace`, `com.docker.stack.image`), its secrets and networks, and
//! services of the stack the file no longer has removed (`--prune`). One code path for the
//! lab (each node's dockerd socket) and production (a manager's socket, forwarded over SSH).
//!
//! - Variables: `${NAME}` is taken from the map the deployer passes (never the process
//!   environment implicitly); one the map lacks is an error naming it, not an empty string.
//! - The compose subset our stacks use, read strictly: an unknown key is an error naming
//!   its path (`services.varnish.deploy.placment: unknown field`), so a misspelt option is
//!   never dropped silently. `x-*` keys and YAML merge keys (`<<: *anchor`) work.
//! - No registry: images are used as named (the CLI's `--resolve-image never`).
//! - A service is updated only when its spec changed: the SHA-256 of the spec we build is a
//!   service label (`pressdock.stack.spec`); an update keeps the service's `ForceUpdate`
//!   counter, so only a real change replaces tasks, one at a time as `update_config` says.
//! - Secrets are named `<stack>_<name>` like the CLI's; swarm secrets cannot change, so an
//!   existing one is reused (rotate by removing it with its services).
//! - Volumes: bind mounts of absolute host paths, and named volumes the file declares
//!   (`volumes:` at the top), named `<stack>_<name>` like the CLI's: local to each node, made
//!   by the engine where a task first mounts one (and kept when the task or stack goes).
//!
//! [`wait_rollout`] then waits until every service of the stack finished its update; a paused
//! or rolled-back update is an error naming the service.
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum,
    Mount, MountTypeEnum, MountVolumeOptions, NetworkAttachmentConfig, NetworkCreateRequest,
    SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum,
    ServiceUpdateStatusStateEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{
    ListNetworksOptionsBuilder, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The CLI's label for a stack's objects.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// The CLI's label for the image a service was deployed with.
pub const IMAGE_LABEL: &str = "com.docker.stack.image";
/// Our label: SHA-256 of the spec we built, to update only what changed.
pub const SPEC_LABEL: &str = "pressdock.stack.spec";
/// A service label (`deploy.labels` in the file): services with the same value are updated
/// one after another, each waited for until its update completed before the next is touched
/// (the Galera nodes of `stacks/database.yml`, one service per node: a quorum survives only
/// one node changing at a time). Swarm's own `update_config.parallelism` orders the tasks of
/// one service, not the services of a stack.
pub const SERIAL_LABEL: &str = "pressdock.update.serial";
/// How long a serial update may take (a Galera joiner copies its whole datadir before it is
/// Synced and its healthcheck passes).
pub const SERIAL_WAIT: Duration = Duration::from_secs(3 * 3600);
/// Docker Engine API version spoken (Docker 20.10 answers 1.41; newer daemons accept it).
pub const API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// A connection to one dockerd's Engine API over its unix socket.
pub fn connect(socket: &Path) -> Result<Docker> {
    Docker::connect_with_socket(&socket.to_string_lossy(), 120, &API)
        .with_context(|| format!("connecting to {}", socket.display()))
}

/// Runs `fut` to completion on a runtime of its own, in a thread of its own: callable from
/// sync code and from inside another runtime (the swarm executor runs in both).
/// `make` builds the future in that thread (so it need not be `Send` itself).
pub fn block_on<T: Send, F: std::future::Future<Output = Result<T>>>(
    make: impl FnOnce() -> F + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime")?
                .block_on(make())
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the deploy thread panicked")))
    })
}

// ---------------------------------------------------------------------------------------
// The compose file (the subset our stacks use), read strictly.

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Compose {
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, Service>,
    #[serde(default)]
    networks: BTreeMap<String, NetworkDef>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretDef>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<NamedVolumeDef>>,
}

/// A named volume of the file (`volumes.<key>`): `{}` or empty, or another `name`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct NamedVolumeDef {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Service {
    image: String,
    #[serde(default)]
    command: Option<Words>,
    #[serde(default)]
    entrypoint: Option<Words>,
    #[serde(default)]
    environment: Option<KeyValues>,
    #[serde(default)]
    labels: Option<KeyValues>,
    #[serde(default)]
    volumes: Vec<VolumeDef>,
    #[serde(default)]
    networks: Option<ServiceNetworks>,
    #[serde(default)]
    ports: Vec<PortDef>,
    #[serde(default)]
    secrets: Vec<SecretUse>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    stop_grace_period: Option<String>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    deploy: Deploy,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    #[serde(default)]
    test: Option<Words>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

/// A command: a list, or a string split on white space.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Words {
    List(Vec<String>),
    Line(String),
}

impl Words {
    fn list(&self) -> Vec<String> {
        match self {
            Words::List(v) => v.clone(),
            Words::Line(s) => s.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// `environment`/`labels`: a map (values may be numbers or booleans) or `KEY=VALUE` lines.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum KeyValues {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl KeyValues {
    fn pairs(&self) -> Vec<(String, String)> {
        match self {
            KeyValues::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        None => String::new(),
                        Some(Scalar::S(s)) => s.clone(),
                        Some(Scalar::I(i)) => i.to_string(),
                        Some(Scalar::F(f)) => f.to_string(),
                        Some(Scalar::B(b)) => b.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            KeyValues::List(l) => l
                .iter()
                .map(|s| match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (s.clone(), String::new()),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum VolumeDef {
    Short(String),
    Long(VolumeLong),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct VolumeLong {
    #[serde(rename = "type")]
    kind: String,
    source: String,
    target: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum ServiceNetworks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ServiceNetwork {
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum PortDef {
    Short(String),
    Long(PortLong),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PortLong {
    target: u16,
    #[serde(default)]
    published: Option<u16>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum SecretUse {
    Short(String),
    Long(SecretLong),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SecretLong {
    source: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    mode: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Deploy {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    endpoint_mode: Option<String>,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    update_config: Option<UpdateConfig>,
    #[serde(default)]
    restart_policy: Option<RestartPolicy>,
    #[serde(default)]
    labels: Option<KeyValues>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Placement {
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(default)]
    max_replicas_per_node: Option<i64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct UpdateConfig {
    #[serde(default)]
    parallelism: Option<i64>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    failure_action: Option<String>,
    #[serde(default)]
    monitor: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RestartPolicy {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    max_attempts: Option<i64>,
    #[serde(default)]
    window: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct NetworkDef {
    #[serde(default)]
    external: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    attachable: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct SecretDef {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    external: bool,
    #[serde(default)]
    name: Option<String>,
}

/// `${NAME}` (and `$NAME`) replaced from `vars`; `$$` is a `$`. A name `vars` lacks is an
/// error naming it.
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, next) = if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
            continue;
        } else if let Some(a) = after.strip_prefix('{') {
            let end = a.find('}').context("an unclosed ${ in the compose file")?;
            (&a[..end], &a[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("compose file: `${{{name}}}` is not a variable name");
        }
        let v = vars
            .get(name)
            .with_context(|| format!("compose file: variable {name} is not set"))?;
        out.push_str(v);
        rest = next;
    }
    out.push_str(rest);
    Ok(out)
}

/// The `${NAME}` variables a compose text names, sorted (`$${…}` is a dollar sign and text,
/// e.g. a shell's parameter expansion in an entrypoint script).
pub fn variables(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            rest = a;
            continue;
        }
        if let Some(a) = after.strip_prefix('{')
            && let Some((name, next)) = a.split_once('}')
        {
            v.push(name.to_owned());
            rest = next;
            continue;
        }
        rest = after;
    }
    v.sort();
    v.dedup();
    v
}

/// A duration as compose writes it (`2s`, `500ms`, `1m30s`, `1h`) in nanoseconds.
pub fn duration_ns(s: &str) -> Result<i64> {
    let mut total: f64 = 0.0;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    if s.trim().is_empty() {
        bail!("an empty duration");
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = num
            .parse()
            .with_context(|| format!("duration {s:?}: a number before {unit}"))?;
        let scale = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => bail!("duration {s:?}: unknown unit {unit:?}"),
        };
        total += n * scale;
        num.clear();
    }
    if !num.is_empty() {
        bail!("duration {s:?}: a number without a unit");
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok(total.round() as i64)
}

/// What the stack needs besides its services: secrets (by their name in the file: the
/// swarm name and the local file) and networks the stack makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSecret {
    pub key: String,
    pub name: String,
    /// The file to read it from; `None`: external, must exist.
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackNetwork {
    pub key: String,
    pub name: String,
    pub external: bool,
    pub driver: String,
    pub attachable: bool,
}

/// A compose file turned into what the swarm is asked for.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    /// Full service name (`<stack>_<service>`) → spec (secret ids left empty: filled in at
    /// deploy time) with its [`SPEC_LABEL`].
    pub services: BTreeMap<String, ServiceSpec>,
    pub secrets: Vec<StackSecret>,
    pub networks: Vec<StackNetwork>,
}

fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Reads a compose file: variables filled in, YAML merge keys applied, read strictly.
pub fn parse(stack: &str, text: &str, vars: &BTreeMap<String, String>) -> Result<Stack> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 40
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    if !name_ok(stack) {
        bail!("stack name {stack:?}: lower-case letters, digits, - and _ only");
    }
    let text = interpolate(text, vars)?;
    let mut value: serde_norway::Value =
        serde_norway::from_str(&text).context("the compose file is not YAML")?;
    value.apply_merge().context("YAML merge keys")?;
    if let serde_norway::Value::Mapping(m) = &mut value {
        m.retain(|k, _| !k.as_str().is_some_and(|s| s.starts_with("x-")));
    }
    let compose: Compose = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("compose file: {e}"))?;
    let networks: Vec<StackNetwork> = compose
        .networks
        .iter()
        .map(|(k, n)| StackNetwork {
            key: k.clone(),
            name: match (&n.name, n.external) {
                (Some(x), _) => x.clone(),
                (None, true) => k.clone(),
                (None, false) => format!("{stack}_{k}"),
            },
            external: n.external,
            driver: n.driver.clone().unwrap_or_else(|| "overlay".into()),
            attachable: n.attachable,
        })
        .collect();
    let secrets: Vec<StackSecret> = compose
        .secrets
        .iter()
        .map(|(k, s)| {
            if !s.external && s.file.is_none() {
                bail!("secrets.{k}: needs `file` (or `external: true`)");
            }
            Ok(StackSecret {
                key: k.clone(),
                name: match (&s.name, s.external) {
                    (Some(x), _) => x.clone(),
                    (None, true) => k.clone(),
                    (None, false) => format!("{stack}_{k}"),
                },
                file: if s.external { None } else { s.file.clone() },
            })
        })
        .collect::<Result<_>>()?;
    let volumes: BTreeMap<String, String> = compose
        .volumes
        .iter()
        .map(|(k, v)| {
            let name = match v.as_ref().and_then(|v| v.name.clone()) {
                Some(n) => n,
                None => format!("{stack}_{k}"),
            };
            (k.clone(), name)
        })
        .collect();
    let mut services = BTreeMap::new();
    for (key, svc) in &compose.services {
        let spec = service_spec(stack, key, svc, &networks, &secrets, &volumes)
            .with_context(|| format!("services.{key}"))?;
        services.insert(format!("{stack}_{key}"), spec);
    }
    Ok(Stack {
        name: stack.to_owned(),
        services,
        secrets,
        networks,
    })
}

fn service_spec(
    stack: &str,
    key: &str,
    svc: &Service,
    networks: &[StackNetwork],
    secrets: &[StackSecret],
    volumes: &BTreeMap<String, String>,
) -> Result<ServiceSpec> {
    let ns = || (NAMESPACE_LABEL.to_owned(), stack.to_owned());
    let mut container_labels: HashMap<String, String> =
        svc.labels.iter().flat_map(KeyValues::pairs).collect();
    container_labels.insert(ns().0, ns().1);
    let mut service_labels: HashMap<String, String> = svc
        .deploy
        .labels
        .iter()
        .flat_map(KeyValues::pairs)
        .collect();
    service_labels.insert(ns().0, ns().1);
    service_labels.insert(IMAGE_LABEL.into(), svc.image.clone());

    let mut mounts = Vec::new();
    for (i, v) in svc.volumes.iter().enumerate() {
        let (source, target, ro) = match v {
            VolumeDef::Long(l) => {
                if l.kind != "bind" && l.kind != "volume" {
                    bail!("volumes[{i}].type: `bind` or `volume`");
                }
                if (l.kind == "volume") == l.source.starts_with('/') {
                    bail!(
                        "volumes[{i}].source: a named volume for `volume`, an absolute host \
                         path for `bind`"
                    );
                }
                (l.source.clone(), l.target.clone(), l.read_only)
            }
            VolumeDef::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                match parts[..] {
                    [src, dst] => (src.to_owned(), dst.to_owned(), false),
                    [src, dst, "ro"] => (src.to_owned(), dst.to_owned(), true),
                    [src, dst, "rw"] => (src.to_owned(), dst.to_owned(), false),
                    _ => bail!("volumes[{i}]: `source:target[:ro]`"),
                }
            }
        };
        if source.starts_with('/') {
            mounts.push(Mount {
                target: Some(target),
                source: Some(source),
                typ: Some(MountTypeEnum::BIND),
                read_only: ro.then_some(true),
                ..Default::default()
            });
            continue;
        }
        let name = volumes.get(&source).with_context(|| {
            format!("volumes[{i}].source: {source} is not in the file's volumes")
        })?;
        mounts.push(Mount {
            target: Some(target),
            source: Some(name.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: ro.then_some(true),
            // What the CLI labels a stack's volume with (the engine makes it so).
            volume_options: Some(MountVolumeOptions {
                labels: Some(HashMap::from([ns()])),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let mut nets = Vec::new();
    let wanted: Vec<(String, Vec<String>)> = match &svc.networks {
        None => Vec::new(),
        Some(ServiceNetworks::List(l)) => l.iter().map(|n| (n.clone(), Vec::new())).collect(),
        Some(ServiceNetworks::Map(m)) => m
            .iter()
            .map(|(n, o)| {
                (
                    n.clone(),
                    o.as_ref().map(|o| o.aliases.clone()).unwrap_or_default(),
                )
            })
            .collect(),
    };
    for (n, extra) in wanted {
        let net = networks
            .iter()
            .find(|x| x.key == n)
            .with_context(|| format!("networks: {n} is not in the file's networks"))?;
        let mut aliases = vec![key.to_owned()];
        aliases.extend(extra);
        nets.push(NetworkAttachmentConfig {
            target: Some(net.name.clone()),
            aliases: Some(aliases),
            ..Default::default()
        });
    }

    let mut ports = Vec::new();
    for (i, p) in svc.ports.iter().enumerate() {
        let (target, published, protocol, mode) = match p {
            PortDef::Long(l) => (
                l.target,
                l.published,
                l.protocol.clone().unwrap_or_else(|| "tcp".into()),
                l.mode.clone().unwrap_or_else(|| "ingress".into()),
            ),
            PortDef::Short(s) => {
                let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
                let (publ, tgt) = ports
                    .split_once(':')
                    .with_context(|| format!("ports[{i}]: `published:target`"))?;
                (
                    tgt.parse().with_context(|| format!("ports[{i}]: target"))?,
                    Some(
                        publ.parse()
                            .with_context(|| format!("ports[{i}]: published"))?,
                    ),
                    proto.to_owned(),
                    "ingress".to_owned(),
                )
            }
        };
        let protocol = match protocol.as_str() {
            "tcp" => bollard::models::EndpointPortConfigProtocolEnum::TCP,
            "udp" => bollard::models::EndpointPortConfigProtocolEnum::UDP,
            "sctp" => bollard::models::EndpointPortConfigProtocolEnum::SCTP,
            x => bail!("ports[{i}].protocol: {x:?} is not tcp, udp or sctp"),
        };
        let mode = match mode.as_str() {
            "host" => EndpointPortConfigPublishModeEnum::HOST,
            "ingress" => EndpointPortConfigPublishModeEnum::INGRESS,
            x => bail!("ports[{i}].mode: {x:?} is not host or ingress"),
        };
        ports.push(EndpointPortConfig {
            protocol: Some(protocol),
            target_port: Some(i64::from(target)),
            published_port: published.map(i64::from),
            publish_mode: Some(mode),
            ..Default::default()
        });
    }

    let mut secret_refs = Vec::new();
    for (i, s) in svc.secrets.iter().enumerate() {
        let (source, target, mode) = match s {
            SecretUse::Short(x) => (x.clone(), x.clone(), 0o444),
            SecretUse::Long(l) => (
                l.source.clone(),
                l.target.clone().unwrap_or_else(|| l.source.clone()),
                l.mode.unwrap_or(0o444),
            ),
        };
        let def = secrets
            .iter()
            .find(|x| x.key == source)
            .with_context(|| format!("secrets[{i}]: {source} is not in the file's secrets"))?;
        secret_refs.push(TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(target),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(mode),
            }),
            secret_id: None,
            secret_name: Some(def.name.clone()),
        });
    }

    let mode = match svc.deploy.mode.as_deref().unwrap_or("replicated") {
        "global" => {
            if svc.deploy.replicas.is_some() {
                bail!("deploy.replicas: not with mode global");
            }
            ServiceSpecMode {
                global: Some(HashMap::new()),
                ..Default::default()
            }
        }
        "replicated" => ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(svc.deploy.replicas.unwrap_or(1)),
            }),
            ..Default::default()
        },
        x => bail!("deploy.mode: {x:?} is not global or replicated"),
    };
    let endpoint_mode = match svc.deploy.endpoint_mode.as_deref().unwrap_or("vip") {
        "vip" => EndpointSpecModeEnum::VIP,
        "dnsrr" => EndpointSpecModeEnum::DNSRR,
        x => bail!("deploy.endpoint_mode: {x:?} is not vip or dnsrr"),
    };
    let update_config = match &svc.deploy.update_config {
        None => None,
        Some(u) => Some(ServiceSpecUpdateConfig {
            parallelism: Some(u.parallelism.unwrap_or(1)),
            delay: u
                .delay
                .as_deref()
                .map(duration_ns)
                .transpose()
                .context("deploy.update_config.delay")?,
            monitor: u
                .monitor
                .as_deref()
                .map(duration_ns)
                .transpose()
                .context("deploy.update_config.monitor")?,
            failure_action: match u.failure_action.as_deref() {
                None => None,
                Some("pause") => Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE),
                Some("continue") => Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
                Some("rollback") => Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
                Some(x) => bail!("deploy.update_config.failure_action: {x:?}"),
            },
            order: match u.order.as_deref() {
                None => None,
                Some("stop-first") => Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
                Some("start-first") => Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
                Some(x) => bail!("deploy.update_config.order: {x:?}"),
            },
            ..Default::default()
        }),
    };
    let restart_policy = match &svc.deploy.restart_policy {
        None => None,
        Some(r) => Some(TaskSpecRestartPolicy {
            condition: match r.condition.as_deref() {
                None => None,
                Some("any") => Some(TaskSpecRestartPolicyConditionEnum::ANY),
                Some("on-failure") => Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                Some("none") => Some(TaskSpecRestartPolicyConditionEnum::NONE),
                Some(x) => bail!("deploy.restart_policy.condition: {x:?}"),
            },
            delay: r
                .delay
                .as_deref()
                .map(duration_ns)
                .transpose()
                .context("deploy.restart_policy.delay")?,
            max_attempts: r.max_attempts,
            window: r
                .window
                .as_deref()
                .map(duration_ns)
                .transpose()
                .context("deploy.restart_policy.window")?,
        }),
    };
    let mut env: Vec<String> = svc
        .environment
        .iter()
        .flat_map(KeyValues::pairs)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    let placement = TaskSpecPlacement {
        constraints: nonempty(svc.deploy.placement.constraints.clone()),
        max_replicas: svc.deploy.placement.max_replicas_per_node,
        ..Default::default()
    };
    let mut spec = ServiceSpec {
        name: Some(format!("{stack}_{key}")),
        labels: Some(service_labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(svc.image.clone()),
                labels: Some(container_labels),
                command: svc.entrypoint.as_ref().map(Words::list),
                args: svc.command.as_ref().map(Words::list),
                hostname: svc.hostname.clone(),
                env: nonempty(env),
                dir: svc.working_dir.clone(),
                user: svc.user.clone(),
                mounts: nonempty(mounts),
                secrets: nonempty(secret_refs),
                health_check: health(svc.healthcheck.as_ref()).context("healthcheck")?,
                stop_grace_period: svc
                    .stop_grace_period
                    .as_deref()
                    .map(duration_ns)
                    .transpose()
                    .context("stop_grace_period")?,
                ..Default::default()
            }),
            placement: Some(placement),
            restart_policy,
            networks: nonempty(nets),
            ..Default::default()
        }),
        mode: Some(mode),
        update_config,
        endpoint_spec: Some(EndpointSpec {
            mode: Some(endpoint_mode),
            ports: nonempty(ports),
        }),
        ..Default::default()
    };
    let hash = spec_hash(&spec)?;
    if let Some(l) = spec.labels.as_mut() {
        l.insert(SPEC_LABEL.into(), hash);
    }
    Ok(spec)
}

/// compose `healthcheck` as swarm's: a string test is `CMD-SHELL`; `disable` is `NONE`.
fn health(h: Option<&Healthcheck>) -> Result<Option<bollard::models::HealthConfig>> {
    let Some(h) = h else { return Ok(None) };
    let d = |x: &Option<String>, f: &str| {
        x.as_deref()
            .map(duration_ns)
            .transpose()
            .with_context(|| f.to_owned())
    };
    let test = if h.disable {
        Some(vec!["NONE".to_owned()])
    } else {
        match &h.test {
            None => None,
            Some(Words::Line(s)) => Some(vec!["CMD-SHELL".to_owned(), s.clone()]),
            Some(Words::List(l)) => {
                if !matches!(
                    l.first().map(String::as_str),
                    Some("CMD" | "CMD-SHELL" | "NONE")
                ) {
                    bail!("test: a list starts with CMD, CMD-SHELL or NONE");
                }
                Some(l.clone())
            }
        }
    };
    Ok(Some(bollard::models::HealthConfig {
        test,
        interval: d(&h.interval, "interval")?,
        timeout: d(&h.timeout, "timeout")?,
        retries: h.retries,
        start_period: d(&h.start_period, "start_period")?,
        ..Default::default()
    }))
}

/// SHA-256 of a spec (its JSON with sorted keys, without [`SPEC_LABEL`]).
pub fn spec_hash(spec: &ServiceSpec) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut s = spec.clone();
    if let Some(l) = s.labels.as_mut() {
        l.remove(SPEC_LABEL);
    }
    // serde_json's Value keeps maps sorted: the same spec always gives the same text.
    let v = serde_json::to_value(&s).context("serializing a service spec")?;
    Ok(hex::encode(Sha256::digest(v.to_string().as_bytes())))
}

/// What a deploy did to each service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Removed,
}

/// `docker stack deploy --prune --resolve-image never`: networks and secrets the stack makes
/// itself created when missing, every service created or updated (only when its spec
/// changed), services of the stack the file no longer has removed. `base`: where a secret's
/// relative `file` is read from. Returns each service's outcome.
pub async fn deploy(
    docker: &Docker,
    stack: &Stack,
    base: &Path,
) -> Result<BTreeMap<String, Outcome>> {
    let filter = |label: String| HashMap::from([("label".to_owned(), vec![label])]);
    let ns_filter = filter(format!("{NAMESPACE_LABEL}={}", stack.name));
    // Networks.
    let existing: Vec<String> = docker
        .list_networks(Some(ListNetworksOptionsBuilder::new().build()))
        .await
        .context("listing networks")?
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    for n in &stack.networks {
        if existing.contains(&n.name) {
            continue;
        }
        if n.external {
            bail!(
                "network {} is external and does not exist (create it first)",
                n.name
            );
        }
        docker
            .create_network(NetworkCreateRequest {
                name: n.name.clone(),
                driver: Some(n.driver.clone()),
                attachable: Some(n.attachable),
                labels: Some(HashMap::from([(
                    NAMESPACE_LABEL.to_owned(),
                    stack.name.clone(),
                )])),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating network {}", n.name))?;
    }
    // Secrets: name → id.
    let listed = docker
        .list_secrets(Some(ListSecretsOptionsBuilder::new().build()))
        .await
        .context("listing secrets")?;
    let mut secret_ids: HashMap<String, String> = listed
        .into_iter()
        .filter_map(|s| Some((s.spec?.name?, s.id?)))
        .collect();
    for s in &stack.secrets {
        if secret_ids.contains_key(&s.name) {
            continue;
        }
        let Some(file) = &s.file else {
            bail!("secret {} is external and does not exist", s.name);
        };
        let path = base.join(file);
        let data = std::fs::read(&path)
            .with_context(|| format!("secrets.{}: reading {}", s.key, path.display()))?;
        let r = docker
            .create_secret(SecretSpec {
                name: Some(s.name.clone()),
                labels: Some(HashMap::from([(
                    NAMESPACE_LABEL.to_owned(),
                    stack.name.clone(),
                )])),
                data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating secret {}", s.name))?;
        secret_ids.insert(s.name.clone(), r.id);
    }
    // Services.
    let current: HashMap<String, bollard::models::Service> = docker
        .list_services(Some(
            ListServicesOptionsBuilder::new()
                .filters(&ns_filter)
                .build(),
        ))
        .await
        .context("listing the stack's services")?
        .into_iter()
        .filter_map(|s| Some((s.spec.as_ref()?.name.clone()?, s)))
        .collect();
    let mut out = BTreeMap::new();
    for (name, spec) in &stack.services {
        let mut spec = spec.clone();
        if let Some(refs) = spec
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
            .and_then(|c| c.secrets.as_mut())
        {
            for r in refs {
                let n = r.secret_name.clone().unwrap_or_default();
                r.secret_id = Some(
                    secret_ids
                        .get(&n)
                        .with_context(|| format!("secret {n} has no id"))?
                        .clone(),
                );
            }
        }
        let want = spec
            .labels
            .as_ref()
            .and_then(|l| l.get(SPEC_LABEL))
            .cloned();
        match current.get(name) {
            None => {
                docker
                    .create_service(spec, None)
                    .await
                    .with_context(|| format!("creating service {name}"))?;
                out.insert(name.clone(), Outcome::Created);
            }
            Some(have) => {
                let have_spec = have.spec.clone().unwrap_or_default();
                if have_spec.labels.as_ref().and_then(|l| l.get(SPEC_LABEL)) == want.as_ref() {
                    out.insert(name.clone(), Outcome::Unchanged);
                    continue;
                }
                // Keep the counter `service update --force` bumps: only a change of ours
                // replaces tasks.
                let force = have_spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.force_update);
                if let Some(t) = spec.task_template.as_mut() {
                    t.force_update = force;
                }
                let version = have
                    .version
                    .as_ref()
                    .and_then(|v| v.index)
                    .and_then(|v| i32::try_from(v).ok())
                    .with_context(|| format!("service {name} has no version"))?;
                let serial = serial_group(&spec).is_some();
                let before = have
                    .update_status
                    .as_ref()
                    .and_then(|u| u.started_at.clone());
                docker
                    .update_service(
                        name,
                        spec,
                        UpdateServiceOptionsBuilder::new().version(version).build(),
                        None,
                    )
                    .await
                    .with_context(|| format!("updating service {name}"))?;
                if serial {
                    // The next service of its group is touched only once this one's tasks
                    // run the new spec (and pass their healthcheck).
                    wait_service_update(
                        docker,
                        name,
                        before.as_deref(),
                        Duration::from_millis(500),
                        SERIAL_WAIT,
                    )
                    .await?;
                }
                out.insert(name.clone(), Outcome::Updated);
            }
        }
    }
    for name in current.keys() {
        if !stack.services.contains_key(name) {
            docker
                .delete_service(name)
                .await
                .with_context(|| format!("removing service {name} (no longer in the file)"))?;
            out.insert(name.clone(), Outcome::Removed);
        }
    }
    Ok(out)
}

/// The serial group of a service ([`SERIAL_LABEL`]), if any.
pub fn serial_group(spec: &ServiceSpec) -> Option<&str> {
    spec.labels
        .as_ref()
        .and_then(|l| l.get(SERIAL_LABEL))
        .map(String::as_str)
}

/// How long an update of a service may take to start before there is taken to be nothing to
/// roll (a change swarm applies without replacing tasks).
const UPDATE_START: Duration = Duration::from_secs(15);

/// Waits until the update of service `name` that was just asked for completed: swarm clears
/// the update status when the spec changes and sets `updating`, then `completed` (with a new
/// start time: `before` is the previous one) once every task was replaced and is running (with
/// a healthcheck: healthy). A paused or rolled-back update fails with swarm's message.
async fn wait_service_update(
    docker: &Docker,
    name: &str,
    before: Option<&str>,
    poll: Duration,
    limit: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let s = docker
            .inspect_service(
                name,
                None::<bollard::query_parameters::InspectServiceOptions>,
            )
            .await
            .with_context(|| format!("inspecting service {name}"))?;
        let u = s.update_status.unwrap_or_default();
        let fresh = u.started_at.is_some() && u.started_at.as_deref() != before;
        match u.state {
            Some(ServiceUpdateStatusStateEnum::UPDATING) => {}
            Some(ServiceUpdateStatusStateEnum::COMPLETED) if fresh => return Ok(()),
            Some(
                ServiceUpdateStatusStateEnum::PAUSED
                | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED
                | ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED,
            ) if fresh => bail!(
                "the update of service {name} stopped: {}: {} (docker service ps {name})",
                u.state.map(|s| s.to_string()).unwrap_or_default(),
                u.message.unwrap_or_default()
            ),
            _ if started.elapsed() > UPDATE_START => return Ok(()),
            _ => {}
        }
        if started.elapsed() > limit {
            bail!("service {name}: still updating after {} s", limit.as_secs());
        }
        tokio::time::sleep(poll).await;
    }
}

/// Waits until every service of the stack finished its update (`UpdateStatus` absent or
/// `completed`), `poll` apart, for at most `limit`. A paused or rolled-back update fails
/// with the service's name and swarm's message.
pub async fn wait_rollout(
    docker: &Docker,
    stack: &str,
    poll: Duration,
    limit: Duration,
) -> Result<()> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{NAMESPACE_LABEL}={stack}")],
    )]);
    let started = std::time::Instant::now();
    loop {
        let services = docker
            .list_services(Some(
                ListServicesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .context("listing the stack's services")?;
        let mut busy = Vec::new();
        for s in services {
            let name = s.spec.and_then(|x| x.name).unwrap_or_default();
            let Some(u) = s.update_status else { continue };
            match u.state {
                None
                | Some(
                    ServiceUpdateStatusStateEnum::EMPTY | ServiceUpdateStatusStateEnum::COMPLETED,
                ) => {}
                Some(ServiceUpdateStatusStateEnum::UPDATING) => busy.push(name),
                Some(other) => bail!(
                    "the update of service {name} stopped: {other}: {} (docker service ps {name})",
                    u.message.unwrap_or_default()
                ),
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "stack {stack}: still updating after {} s: {}",
                limit.as_secs(),
                busy.join(", ")
            );
        }
        tokio::time::sleep(poll).await;
    }
}

/// Reads `file` (relative to `repo`), fills in `vars`, deploys it as `stack` through the
/// dockerd at `socket` and waits for the rollout. Sync: for the lab and the executor.
pub fn deploy_file(
    socket: &Path,
    stack: &str,
    repo: &Path,
    file: &str,
    vars: &BTreeMap<String, String>,
    limit: Duration,
) -> Result<BTreeMap<String, Outcome>> {
    let path = repo.join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = parse(stack, &text, vars).with_context(|| file.to_owned())?;
    let docker = connect(socket)?;
    block_on(move || async move {
        let out = deploy(&docker, &parsed, repo).await?;
        wait_rollout(&docker, stack, Duration::from_millis(500), limit).await?;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The edge's variables, with the lab's images.
    fn edge_vars() -> BTreeMap<String, String> {
        [
            ("PD_VCL_DIR", "/srv/vcl"),
            ("PD_TRAEFIK_DYNAMIC", "/srv/dyn"),
            ("PD_TRAEFIK_STATIC", "/srv/static"),
            ("PD_TRAEFIK_STATIC_SHA", "abc"),
            ("PD_VARNISH_SECRET", "/srv/secret"),
            ("PD_EDGE_NET", "pd-edge"),
            ("PD_SITES_NET", "pd-sites"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(crate::cluster::images::Images::lab().vars())
        .collect()
    }

    #[test]
    fn the_edge_stack_becomes_the_services_the_cli_would_make() {
        let text = std::fs::read_to_string(repo().join("stacks/edge.yml")).unwrap_or_default();
        let s = parse("pd", &text, &edge_vars()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            s.services.keys().collect::<Vec<_>>(),
            ["pd_traefik", "pd_traefik-b", "pd_varnish"]
        );
        let t = &s.services["pd_traefik"];
        let c = t
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .cloned()
            .unwrap_or_default();
        assert_eq!(c.image.as_deref(), Some("local/traefik:dev"));
        // compose `command` is the container's args (the image's entrypoint stays).
        assert_eq!(
            c.args,
            Some(vec![
                "--configfile=/etc/traefik/static/traefik.yml".to_owned()
            ])
        );
        assert_eq!(c.command, None);
        assert_eq!(c.env, Some(vec!["PD_TRAEFIK_STATIC_SHA=abc".to_owned()]));
        let m = c.mounts.unwrap_or_default();
        assert_eq!(m[0].source.as_deref(), Some("/srv/dyn"));
        assert_eq!(m[0].read_only, Some(true));
        let labels = t.labels.clone().unwrap_or_default();
        assert_eq!(labels[NAMESPACE_LABEL], "pd");
        assert_eq!(labels[IMAGE_LABEL], "local/traefik:dev");
        assert_eq!(labels[SPEC_LABEL].len(), 64);
        let tt = t.task_template.clone().unwrap_or_default();
        let nets = tt.networks.unwrap_or_default();
        assert_eq!(nets[0].target.as_deref(), Some("pd-edge"));
        // Varnish finds Traefik by its short name on the network, as with the CLI.
        assert_eq!(nets[0].aliases, Some(vec!["traefik".to_owned()]));
        assert_eq!(
            tt.placement.and_then(|p| p.constraints),
            Some(vec!["node.role == manager".to_owned()])
        );
        assert!(t.mode.as_ref().is_some_and(|m| m.global.is_some()));
        let ep = t.endpoint_spec.clone().unwrap_or_default();
        assert_eq!(ep.mode, Some(EndpointSpecModeEnum::DNSRR));
        let ports = ep.ports.unwrap_or_default();
        assert_eq!(ports.len(), 3);
        assert_eq!(
            ports[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        assert_eq!(
            t.update_config.as_ref().and_then(|u| u.order),
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
        // The merge key (`<<: *traefik`) gave traefik-b the same image and mounts.
        let b = &s.services["pd_traefik-b"];
        assert_eq!(
            b.task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.mounts.as_ref())
                .map(Vec::len),
            Some(2)
        );
        let v = &s.services["pd_varnish"];
        let vt = v.task_template.clone().unwrap_or_default();
        assert_eq!(vt.restart_policy.and_then(|r| r.delay), Some(2_000_000_000));
        let sec = vt
            .container_spec
            .and_then(|c| c.secrets)
            .unwrap_or_default();
        assert_eq!(sec[0].secret_name.as_deref(), Some("pd_varnish_secret"));
        assert_eq!(
            s.secrets,
            [StackSecret {
                key: "varnish_secret".into(),
                name: "pd_varnish_secret".into(),
                file: Some("/srv/secret".into())
            }]
        );
        assert!(s.networks.iter().all(|n| n.external));
        // The same input gives the same hash; a changed variable another.
        let again = parse("pd", &text, &edge_vars()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            again.services["pd_traefik"]
                .labels
                .as_ref()
                .map(|l| &l[SPEC_LABEL]),
            Some(&labels[SPEC_LABEL])
        );
        let mut vars = edge_vars();
        vars.insert("PD_TRAEFIK_STATIC_SHA".into(), "def".into());
        let changed = parse("pd", &text, &vars).unwrap_or_else(|e| panic!("{e:#}"));
        assert_ne!(
            changed.services["pd_traefik"]
                .labels
                .as_ref()
                .map(|l| &l[SPEC_LABEL]),
            Some(&labels[SPEC_LABEL])
        );
        assert_eq!(
            changed.services["pd_varnish"]
                .labels
                .as_ref()
                .map(|l| &l[SPEC_LABEL]),
            s.services["pd_varnish"]
                .labels
                .as_ref()
                .map(|l| &l[SPEC_LABEL])
        );
    }

    #[test]
    fn the_hello_stack_has_its_entrypoint_and_route_labels() {
        let text = std::fs::read_to_string(repo().join("stacks/lab-hello.yml")).unwrap_or_default();
        let s = parse("lab", &text, &edge_vars()).unwrap_or_else(|e| panic!("{e:#}"));
        let h = &s.services["lab_hello"];
        let c = h
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.clone())
            .unwrap_or_default();
        assert_eq!(c.command, Some(vec!["/entrypoint.sh".to_owned()]));
        let l = h.labels.clone().unwrap_or_default();
        assert_eq!(l["pressdock.route.hosts"], "hello.lab.test");
        assert_eq!(l["pressdock.route.network"], "pd-sites");
        assert_eq!(
            h.mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas),
            Some(1)
        );
    }

    #[test]
    fn errors_name_the_field_or_the_variable() {
        let vars = edge_vars();
        let e = |t: &str| {
            parse("pd", t, &vars)
                .err()
                .map_or_else(String::new, |e| format!("{e:#}"))
        };
        let typo = e("services:\n  a:\n    image: x\n    deploy:\n      placment: {}\n");
        assert!(
            typo.contains("services.a.deploy") && typo.contains("placment"),
            "{typo}"
        );
        assert!(e("services:\n  a:\n    image: ${NOPE}\n").contains("variable NOPE is not set"));
        assert!(
            e("services:\n  a:\n    image: x\n    networks: [b]\n")
                .contains("b is not in the file's networks")
        );
        assert!(
            e("services:\n  a:\n    image: x\n    deploy: {mode: everywhere}\n")
                .contains("deploy.mode")
        );
        assert!(parse("Bad Name", "services: {}", &vars).is_err());
        assert!(
            e("services:\n  a:\n    image: x\n    volumes: [\"data:/data\"]\n")
                .contains("data is not in the file's volumes")
        );
        assert!(
            e("services:\n  a:\n    image: x\n    volumes: [{type: volume, source: /srv, target: /d}]\n")
                .contains("volumes[0].source")
        );
        // `$$` is a dollar sign.
        assert_eq!(
            interpolate("a$$b ${PD_EDGE_NET}", &vars).ok().as_deref(),
            Some("a$b pd-edge")
        );
    }

    /// Every task of the cache stack keeps its node's ACL users on the node's named volume
    /// `cache_redis` (the CLI's name and label), besides the node's address folder.
    #[test]
    fn the_cache_stack_keeps_its_users_on_a_named_volume_of_each_node() {
        let text = std::fs::read_to_string(repo().join("stacks/cache.yml")).unwrap_or_default();
        let vars: BTreeMap<String, String> = [
            ("PD_REDIS_PASSWORD_FILE", "/srv/pw"),
            ("PD_NODE_DIR", "/srv/node"),
            ("PD_REDIS_REPLICAS", "2"),
            ("PD_SENTINEL_QUORUM", "2"),
            (
                "PD_IMAGE_REDIS",
                "registry.example.com/pressdock/redis:0.1.0",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = parse("cache", &text, &vars).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            s.services.keys().collect::<Vec<_>>(),
            [
                "cache_redis-master",
                "cache_redis-replica",
                "cache_sentinel"
            ]
        );
        for (name, spec) in &s.services {
            let m = spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.mounts.clone())
                .unwrap_or_default();
            let data = m
                .iter()
                .find(|m| m.target.as_deref() == Some("/data"))
                .unwrap_or_else(|| panic!("{name}: no /data mount in {m:?}"));
            assert_eq!(data.typ, Some(MountTypeEnum::VOLUME), "{name}");
            assert_eq!(data.source.as_deref(), Some("cache_redis"), "{name}");
            assert_eq!(data.read_only, None, "{name}");
            assert_eq!(
                data.volume_options
                    .as_ref()
                    .and_then(|o| o.labels.as_ref())
                    .and_then(|l| l.get(NAMESPACE_LABEL))
                    .map(String::as_str),
                Some("cache"),
                "{name}"
            );
            assert!(
                m.iter().any(|m| m.source.as_deref() == Some("/srv/node")
                    && m.typ == Some(MountTypeEnum::BIND)
                    && m.read_only == Some(true)),
                "{name}: {m:?}"
            );
        }
    }

    /// The database stack's variables, with production's images from the spec.
    fn database_vars() -> BTreeMap<String, String> {
        [
            ("PD_GALERA_ROOT_PASSWORD_FILE", "/srv/root-pw"),
            ("PD_GALERA_MONITOR_PASSWORD_FILE", "/srv/monitor-pw"),
            ("PD_PROXYSQL_ADMIN_PASSWORD_FILE", "/srv/admin-pw"),
            ("PD_NODE_DIR", "/etc/pressdock/node"),
            ("PD_GALERA_DATA", "/var/lib/mysql"),
            ("PD_DB_NODES", "10.110.0.20 10.110.0.21 10.110.0.22"),
            (
                "PD_IMAGE_GALERA",
                "registry.example.com/pressdock/galera:0.1.0",
            ),
            ("PD_IMAGE_PROXYSQL", "proxysql/proxysql:2.7.2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn container(spec: &ServiceSpec) -> TaskSpecContainerSpec {
        spec.task_template
            .as_ref()
            .and_then(|t| t.container_spec.clone())
            .unwrap_or_default()
    }

    /// Issue 15, item 4: the database tier. One Galera service per database node, pinned by
    /// its label, with the node's named volume as its datadir, host-mode ports, the Synced
    /// healthcheck and the quorum rule (one task, stop-first, and the serial group that makes
    /// the deployer update one node at a time); ProxySQL on every database node. Passwords are
    /// swarm secrets by reference: in no environment, argument or label.
    #[test]
    fn the_database_stack_pins_one_galera_node_per_database_node_and_keeps_passwords_secret() {
        let text = std::fs::read_to_string(repo().join("stacks/database.yml")).unwrap_or_default();
        let vars = database_vars();
        let s = parse("database", &text, &vars).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            s.services.keys().collect::<Vec<_>>(),
            [
                "database_galera-1",
                "database_galera-2",
                "database_galera-3",
                "database_proxysql"
            ]
        );
        for n in 1..=3 {
            let name = format!("database_galera-{n}");
            let g = &s.services[&name];
            let t = g.task_template.clone().unwrap_or_default();
            assert_eq!(
                t.placement.and_then(|p| p.constraints),
                Some(vec![format!("node.labels.pressdock.galera == {n}")]),
                "{name}"
            );
            assert_eq!(
                g.mode
                    .as_ref()
                    .and_then(|m| m.replicated.as_ref())
                    .and_then(|r| r.replicas),
                Some(1),
                "{name}"
            );
            let u = g.update_config.clone().unwrap_or_default();
            assert_eq!(u.parallelism, Some(1), "{name}");
            assert_eq!(
                u.order,
                Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
                "{name}"
            );
            assert_eq!(serial_group(g), Some("galera"), "{name}");
            let c = container(g);
            assert_eq!(
                c.image.as_deref(),
                Some("registry.example.com/pressdock/galera:0.1.0")
            );
            assert_eq!(
                c.env,
                Some(vec![
                    "PD_DB_NODES=10.110.0.20 10.110.0.21 10.110.0.22".to_owned(),
                    "PD_GALERA_CLUSTER=pressdock".to_owned(),
                    format!("PD_GALERA_NODE={n}"),
                ])
            );
            // Healthy only when Synced: swarm counts the task as running only then.
            let h = c.health_check.clone().unwrap_or_default();
            assert_eq!(
                h.test,
                Some(vec![
                    "CMD".to_owned(),
                    "/usr/local/bin/pd-galera".to_owned(),
                    "health".to_owned()
                ])
            );
            assert!(h.start_period.unwrap_or(0) >= 3_600_000_000_000);
            let m = c.mounts.clone().unwrap_or_default();
            // The datadir on the node's block volume (roles.database.volume's mount).
            let data = m
                .iter()
                .find(|m| m.target.as_deref() == Some("/var/lib/pd-galera"))
                .unwrap_or_else(|| panic!("{name}: no datadir in {m:?}"));
            assert_eq!(data.typ, Some(MountTypeEnum::BIND));
            assert_eq!(data.source.as_deref(), Some("/var/lib/mysql"));
            assert_eq!(data.read_only, None);
            assert!(
                m.iter()
                    .any(|m| m.source.as_deref() == Some("/etc/pressdock/node")
                        && m.read_only == Some(true))
            );
            let refs: Vec<Option<String>> = c
                .secrets
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.secret_name)
                .collect();
            assert_eq!(
                refs,
                [
                    Some("database_galera_root_password".to_owned()),
                    Some("database_galera_monitor_password".to_owned())
                ]
            );
            // Galera's ports on the node's address (the database role's firewall).
            let ports: Vec<(i64, EndpointPortConfigPublishModeEnum)> = g
                .endpoint_spec
                .as_ref()
                .and_then(|e| e.ports.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| Some((p.published_port?, p.publish_mode?)))
                .collect();
            assert_eq!(
                ports.iter().map(|p| p.0).collect::<Vec<_>>(),
                [3306, 4567, 4567, 4568, 4444]
            );
            assert!(
                ports
                    .iter()
                    .all(|p| p.1 == EndpointPortConfigPublishModeEnum::HOST)
            );
        }
        let p = &s.services["database_proxysql"];
        assert!(p.mode.as_ref().is_some_and(|m| m.global.is_some()));
        assert_eq!(
            p.task_template
                .as_ref()
                .and_then(|t| t.placement.as_ref())
                .and_then(|p| p.constraints.clone()),
            Some(vec!["node.labels.pressdock.database == true".to_owned()])
        );
        let c = container(p);
        assert_eq!(c.image.as_deref(), Some("proxysql/proxysql:2.7.2"));
        // ProxySQL's runtime tables (the platform's mysql_users) on the node's named volume.
        assert_eq!(
            c.mounts
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|m| (m.source.clone(), m.typ))
                .collect::<Vec<_>>(),
            [(
                Some("database_proxysql".to_owned()),
                Some(MountTypeEnum::VOLUME)
            )]
        );
        // `$$` in the file is the script's own `$`.
        let script = c.command.clone().unwrap_or_default().join(" ");
        assert!(
            script.contains("admin=$(cat /run/secrets/proxysql_admin_password)"),
            "{script}"
        );
        assert!(script.contains("${servers%,}"), "{script}");
        assert_eq!(serial_group(p), None);
        // Secrets by reference only: each from its file, never a value in the services.
        assert_eq!(
            s.secrets
                .iter()
                .map(|x| (x.name.as_str(), x.file.as_deref()))
                .collect::<Vec<_>>(),
            [
                ("database_galera_monitor_password", Some("/srv/monitor-pw")),
                ("database_galera_root_password", Some("/srv/root-pw")),
                ("database_proxysql_admin_password", Some("/srv/admin-pw")),
            ]
        );
        let all = serde_json::to_string(&s.services).unwrap_or_default();
        assert!(
            !all.contains("/srv/root-pw") && !all.contains("PASSWORD="),
            "{all}"
        );
        // Only what the deployer fills in is a variable (the script's `$${…}` is not).
        assert_eq!(
            variables(&text),
            [
                "PD_DB_NODES",
                "PD_GALERA_DATA",
                "PD_GALERA_MONITOR_PASSWORD_FILE",
                "PD_GALERA_ROOT_PASSWORD_FILE",
                "PD_IMAGE_GALERA",
                "PD_IMAGE_PROXYSQL",
                "PD_NODE_DIR",
                "PD_PROXYSQL_ADMIN_PASSWORD_FILE"
            ]
        );
        // A new Galera image changes the Galera services' specs (one rolling update each,
        // serial), not ProxySQL's.
        let mut v2 = database_vars();
        v2.insert(
            "PD_IMAGE_GALERA".into(),
            "registry.example.com/pressdock/galera:0.1.1".into(),
        );
        let s2 = parse("database", &text, &v2).unwrap_or_else(|e| panic!("{e:#}"));
        let hash = |s: &Stack, n: &str| {
            s.services[n]
                .labels
                .as_ref()
                .and_then(|l| l.get(SPEC_LABEL).cloned())
        };
        for n in 1..=3 {
            let name = format!("database_galera-{n}");
            assert_ne!(hash(&s, &name), hash(&s2, &name), "{name}");
        }
        assert_eq!(
            hash(&s, "database_proxysql"),
            hash(&s2, "database_proxysql")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("2s").ok(), Some(2_000_000_000));
        assert_eq!(duration_ns("500ms").ok(), Some(500_000_000));
        assert_eq!(duration_ns("1m30s").ok(), Some(90_000_000_000));
        assert!(duration_ns("10").is_err());
        assert!(duration_ns("3d").is_err());
    }
}
