//! The local lab: a real cluster on one Linux machine.
//!
//! Nodes are network namespaces on the bridge `pdlab0` (10.213.0.0/24), each with its own
//! dockerd (overlay2) and UTS namespace (so swarm sees distinct host names), joined into one
//! swarm and labelled by role. The data tier runs as real servers on the bridge address
//! 10.213.0.1, which tasks on every node reach through their node's default route:
//! a 3-node Galera cluster behind an HAProxy writer router, Redis master + replica under
//! three Sentinels, a GlusterFS volume mounted once per node (TLS), and s3s-fs as the S3
//! server (signed requests only).
//! The edge (Traefik + Varnish) is the stack in `stacks/edge.yml`; beside the host Redis,
//! the cache tier's Redis master, replica and Sentinel also run as the production stack
//! `stacks/cache.yml` on the managers (reachable at their addresses, not used by the platform yet), and the monitoring
//! placeholder as `stacks/monitoring.yml`.
//!
//! Every step is idempotent: `lab up` on a running lab converges (restarts what died,
//! creates what is missing) and never duplicates. `lab down` finds the lab's leftovers by
//! PID files, cgroups, names (`pdlab-*`), mount points under its folders and the iptables
//! comment `pressdock-lab`, so it also cleans up after a crash.
pub mod acme;
pub mod cluster_backup;
pub mod data;
pub mod dns;
pub mod down;
pub mod edge_routes;
pub mod gluster_tls;
pub mod guard;
pub mod http;
pub mod images;
pub mod machines;
pub mod net;
pub mod node_ops;
pub mod nodes;
pub mod platform;
pub mod proc;
pub mod sh;
pub mod sigv4;
pub mod status;
pub mod up;
pub mod varnish_cli;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Lab state (data, PID files, generated configs). Removed by `lab down` unless `--keep-data`.
pub const STATE: &str = "/var/lib/pressdock-lab";
/// Built image tarballs, kept across `lab down` (keyed by recipe hash).
pub const CACHE: &str = "/var/cache/pressdock-lab";
/// dockerd exec roots: short paths, because they hold unix sockets.
pub const RUN: &str = "/run/pdlab";
pub const BRIDGE: &str = "pdlab0";
pub const HOST_IP: &str = "10.213.0.1";
pub const PREFIX_LEN: u8 = 24;
/// Marks every iptables rule and /etc/hosts line the lab adds.
pub const TAG: &str = "pressdock-lab";
/// Resolves to [`HOST_IP`] (Gluster refuses bricks on `127.0.0.1`).
pub const GLUSTER_HOST: &str = "pdlab-gluster";
pub const EDGE_NET: &str = "pd-edge";
pub const EDGE_SUBNET: &str = "10.214.0.0/22";
/// How often each edge Traefik polls the platform's provider (`providers.http.pollInterval`
/// in stacks/traefik.yml); the platform is told the same (`certs.edge_poll_interval_secs`),
/// and publishes a domain's HTTPS redirect two of these after its first certificate.
pub const EDGE_POLL_SECS: u64 = 5;
pub const SITES_NET: &str = "pd-sites";
/// 4094 addresses: room for well over 1,000 site tasks.
pub const SITES_SUBNET: &str = "10.216.0.0/20";
pub const STACK: &str = "pd";
pub const DOCKER: &str = "/usr/bin/docker";

/// Ports of the lab (all on [`HOST_IP`] unless noted). Chosen away from the services that
/// may already run on the machine (3306, 6379, 5432, 5672, 4222, 1883, 8080).
pub mod ports {
    pub const ROUTER: u16 = 23100;
    pub const GALERA_SQL: u16 = 23100; // + node number (1..3)
    pub const GALERA_GCOMM: u16 = 23110;
    pub const GALERA_IST: u16 = 23120;
    pub const GALERA_SST: u16 = 23130;
    /// HAProxy statistics page, on 127.0.0.1.
    pub const HAPROXY_STATS: u16 = 23190;
    pub const REDIS: u16 = 23200; // + 1 master, + 2 replica
    pub const SENTINEL: u16 = 23210; // + 1..3
    pub const GLUSTERD: u16 = 24007;
    /// The S3 server (s3s-fs). Earlier labs ran moto on 23400: a lab binary of before
    /// still starts it there, which must not clash with this one.
    pub const S3: u16 = 23401;
    /// The edge (Traefik `web`), on 127.0.0.1.
    pub const EDGE: u16 = 23080;
    /// Traefik `web` inside each manager node's namespace.
    pub const NODE_WEB: u16 = 80;
    /// Varnish admin (-T), published in host mode on each cache node's address.
    pub const VARNISH_ADMIN: u16 = 16082;
    /// Traefik's metrics (Prometheus, router labels), in host mode on each manager's
    /// address: the platform's edge collector scrapes it (stacks/edge.yml).
    pub const EDGE_METRICS: u16 = 8082;
    /// The second Traefik replica's metrics (`traefik-b`, stacks/edge.yml).
    pub const EDGE_METRICS_B: u16 = 8083;
    /// `pressdock serve`, on 127.0.0.1.
    pub const PLATFORM: u16 = 23500;
    /// The platform's edge listener (`/edge/traefik.json`, HTTP-01 answers) on the bridge
    /// address, for the Traefik tasks (`PLATFORM + 1` is the agents' listener).
    pub const PLATFORM_EDGE: u16 = 23502;
    /// The edge over HTTPS (Traefik `websecure`), on 127.0.0.1.
    pub const EDGE_TLS: u16 = 23443;
    /// Traefik `websecure` inside each manager node's namespace.
    pub const NODE_WEBSECURE: u16 = 443;
    /// The second Traefik replica of each manager node (`traefik-b` in stacks/edge.yml):
    /// `web` and `websecure`, published in the node's namespace.
    pub const NODE_WEB_B: u16 = 8080;
    pub const NODE_WEBSECURE_B: u16 = 8443;
    /// pebble's directory and management API, and challtestsrv's DNS and management API,
    /// on 127.0.0.1 (lab::acme).
    pub const PEBBLE: u16 = 23600;
    pub const PEBBLE_MANAGEMENT: u16 = 23601;
    pub const PEBBLE_TLS_ALPN: u16 = 23602;
    pub const CHALLTEST_DNS: u16 = 23653;
    pub const CHALLTEST_MANAGEMENT: u16 = 23655;
}

/// Which Redis the lab's platform (and so its sites) uses: the lab's host Redis and
/// Sentinels (`lab::data`, the default) or the cache stack (`stacks/cache.yml`, at the cache
/// nodes' published ports). Chosen by `lab up --platform-redis`, kept in
/// `<state>/platform-redis` so that later `lab up`s (the tests') keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformRedis {
    Host,
    Stack,
}

impl PlatformRedis {
    fn file() -> PathBuf {
        Path::new(STATE).join("platform-redis")
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "host" => Ok(Self::Host),
            "stack" => Ok(Self::Stack),
            x => anyhow::bail!("platform redis: {x:?} is not `host` or `stack`"),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Stack => "stack",
        }
    }
    /// The saved choice; `host` when none is saved (or the file is unreadable).
    pub fn saved() -> Self {
        std::fs::read_to_string(Self::file())
            .ok()
            .and_then(|s| Self::parse(&s).ok())
            .unwrap_or(Self::Host)
    }
    pub fn save(self) -> Result<()> {
        sh::write_file(&Self::file(), self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Manager,
    Worker,
}

/// One node: a namespace, a dockerd, a swarm member.
#[derive(Clone, Debug)]
pub struct Node {
    /// Short name: `m1`, `w2`.
    pub name: String,
    pub role: Role,
    pub ip: String,
}

impl Node {
    /// Host name, network namespace and cgroup name: `pdlab-m1`.
    pub fn host(&self) -> String {
        format!("pdlab-{}", self.name)
    }
    pub fn sock(&self) -> PathBuf {
        Path::new(STATE)
            .join("run")
            .join(format!("{}.sock", self.host()))
    }
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.sock().display())
    }
    /// A `docker` command against this node's daemon.
    pub fn docker<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = std::process::Command::new(DOCKER);
        c.arg("-H").arg(self.docker_host()).args(args);
        c
    }
    /// This node's Gluster mount of the `sites` volume.
    pub fn gluster_mount(&self) -> PathBuf {
        Path::new(STATE)
            .join("nodes")
            .join(self.host())
            .join("sites")
    }
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.host())
    }
}

/// The shape of the lab: how many nodes of each kind, how many Galera nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Topology {
    pub managers: u8,
    pub workers: u8,
    pub galera_nodes: u8,
}

impl Topology {
    pub fn nodes(&self) -> Vec<Node> {
        let mut v = Vec::new();
        for i in 1..=self.managers {
            v.push(Node {
                name: format!("m{i}"),
                role: Role::Manager,
                ip: format!("10.213.0.{}", 10 + u32::from(i)),
            });
        }
        for i in 1..=self.workers {
            v.push(Node {
                name: format!("w{i}"),
                role: Role::Worker,
                ip: format!("10.213.0.{}", 20 + u32::from(i)),
            });
        }
        v
    }
    /// In the lab the cache tier (Varnish) runs on the manager nodes.
    pub fn cache_nodes(&self) -> Vec<Node> {
        self.nodes()
            .into_iter()
            .filter(|n| n.role == Role::Manager)
            .collect()
    }
    pub fn first_manager(&self) -> Node {
        self.nodes().into_iter().next().unwrap_or_else(|| Node {
            name: "m1".into(),
            role: Role::Manager,
            ip: "10.213.0.11".into(),
        })
    }
}

/// Credentials the lab generates once and keeps in `<state>/secrets.toml` (mode 0600).
/// Hex only, so they are safe inside the SQL and config files the lab writes. No `Debug`:
/// they must not end up in logs.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub galera_admin: String,
    pub galera_check: String,
    pub platform_db: String,
    pub redis_admin: String,
    pub varnish: String,
    pub platform_key: String,
    pub staff_password: String,
    pub demo_password: String,
    /// The platform's S3 key pair (`[backends.s3]`): the lab's S3 server accepts requests
    /// signed with it and nothing else. Added after the first labs, hence the defaults
    /// (filled in and saved by [`Secrets::load_or_create`]).
    #[serde(default)]
    pub s3_access_key: String,
    #[serde(default)]
    pub s3_secret_key: String,
    /// The bearer token Traefik presents to the platform's `/edge/traefik.json`
    /// (`certs.edge_token`); added with HTTPS (issue 14), filled in like the S3 keys.
    #[serde(default)]
    pub edge_token: String,
}

impl Secrets {
    pub fn load_or_create() -> Result<Self> {
        let path = Path::new(STATE).join("secrets.toml");
        if let Ok(s) = std::fs::read_to_string(&path) {
            let mut s: Secrets =
                toml::from_str(&s).with_context(|| format!("parsing {}", path.display()))?;
            let mut changed = false;
            if s.s3_access_key.is_empty() || s.s3_secret_key.is_empty() {
                (s.s3_access_key, s.s3_secret_key) = new_s3_keys()?;
                changed = true;
            }
            if s.edge_token.is_empty() {
                s.edge_token = sh::random_hex(24)?;
                changed = true;
            }
            if changed {
                s.save(&path)?;
            }
            return Ok(s);
        }
        let (s3_access_key, s3_secret_key) = new_s3_keys()?;
        let s = Secrets {
            galera_admin: sh::random_hex(12)?,
            galera_check: sh::random_hex(12)?,
            platform_db: sh::random_hex(12)?,
            redis_admin: sh::random_hex(12)?,
            varnish: sh::random_hex(16)?,
            platform_key: sh::random_hex(32)?,
            staff_password: sh::random_hex(8)?,
            demo_password: sh::random_hex(8)?,
            s3_access_key,
            s3_secret_key,
            edge_token: sh::random_hex(24)?,
        };
        s.save(&path)?;
        Ok(s)
    }

    fn save(&self, path: &Path) -> Result<()> {
        sh::write_private(path, &toml::to_string(self).context("serializing secrets")?)
    }
}

/// An access key id in AWS's shape (20 characters, upper case) and a 40-character secret.
fn new_s3_keys() -> Result<(String, String)> {
    let id = format!("PDLAB{}", &sh::random_hex(8)?[..15]).to_uppercase();
    Ok((id, sh::random_hex(20)?))
}

/// Everything a step needs: shape, paths, credentials, PID files.
pub struct Lab {
    pub topo: Topology,
    pub secrets: Secrets,
    pub procs: proc::Procs,
    /// The repository root (configs/, stacks/, images/, scripts/).
    pub repo: PathBuf,
}

impl Lab {
    pub fn state(&self) -> PathBuf {
        PathBuf::from(STATE)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        Path::new(STATE).join(rel)
    }
}

/// One `lab up`/`lab down` at a time on this machine. The lock file lives outside the
/// state folder (which `lab down` deletes). A second run waits (up to 15 minutes) instead
/// of failing, so tests and scripts that share the lab queue up.
pub fn acquire_lock() -> Result<std::fs::File> {
    let dir = Path::new("/run/lock");
    std::fs::create_dir_all(dir).context("creating /run/lock")?;
    let path = dir.join("pressdock-lab.lock");
    let f = std::fs::File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    let t0 = std::time::Instant::now();
    let mut told = false;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    sh::progress(
                        "lock",
                        format!(
                            "another `lab up`/`lab down` runs; waiting ({})",
                            path.display()
                        ),
                    );
                    told = true;
                }
                if t0.elapsed() > std::time::Duration::from_secs(900) {
                    anyhow::bail!(
                        "another `lab up` or `lab down` has held {} for 15 minutes",
                        path.display()
                    );
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// The repository root: `PRESSDOCK_REPO`, else the folder above this crate at build time,
/// else the current directory.
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("PRESSDOCK_REPO") {
        return PathBuf::from(p);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("stacks").is_dir() {
        return built.canonicalize().unwrap_or(built);
    }
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// The topology recorded by the last `lab up`, if any.
pub fn saved_topology() -> Option<Topology> {
    let s = std::fs::read_to_string(Path::new(STATE).join("topology.toml")).ok()?;
    toml::from_str(&s).ok()
}
