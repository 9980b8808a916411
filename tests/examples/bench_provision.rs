//! Provisioning benchmark of issue 4, run by `scripts/bench-provision.sh` (not a test).
//!
//! Three ways of making the same sites on the lab's real servers, each timed per step:
//!
//! - `raw` (the floor): the backend operations done directly with the clients the drivers
//!   use (mysql_async, redis, the `gluster` CLI, bollard, the Varnish CLI), the fewest
//!   round trips that make the resource, no read-back: `CREATE DATABASE` + `CREATE USER` +
//!   `GRANT`; Sentinel lookup then `ACL SETUSER` (+ `ACL SAVE`) on every node and every
//!   Sentinel (+ `SENTINEL FLUSHCONFIG`); `mkdir`,
//!   `chown`, `chmod` + `gluster volume quota … limit-usage`; four `secret create` + one
//!   `service create` of the spec `backends::swarm::build_service_spec` builds;
//!   `hosts.vcl` written + `vcl.load`/`vcl.use`/`vcl.discard` on every Varnish.
//! - `rawspares`: the floor with the platform's spare directories (issue 10): its
//!   storage step is one `readdir` of the ready spares of the plan's limit and one
//!   `rename` of one to the site's directory (the limit goes with it), where `raw` makes
//!   the directory and calls `limit-usage`; the spares it takes are made before the mode
//!   runs (untimed, through the driver). The fair floor for a platform that has spares.
//! - `drivers`: the same steps through the `backends` drivers' `ensure_*` (which also
//!   read back and converge): what the platform's saga steps call, minus the saga.
//! - `platform`: a `pressdock serve` of our own on the lab's configuration; the API call
//!   `POST /v1/tenants/{t}/sites` until the operation is `succeeded`, and each step from
//!   the operation's `started_at`/`finished_at`.
//!
//! Each way runs `BENCH_SITES` sites one after the other, then `BENCH_PARALLEL` sites at
//! once, and removes everything it made. The Varnish step publishes the whole table, as
//! the platform's does: a site is in it from its start (the platform's `record_site`), and
//! a site whose hosts are already loaded (by another site's publish) loads nothing. The
//! Gluster step takes turns (glusterd runs one volume transaction at a time), as the
//! platform's does. Prints markdown tables on stdout, progress on
//! stderr. The caller stops the lab's own platform first (one control plane owns the
//! Varnish host table at a time) and starts it again afterwards.
//!
//! A fourth mode, `steps` (not in the default), times the two driver steps of issue 10
//! before and after their change on the lab's Gluster and swarm only; see [`steps`].
//!
//! Environment: `LAB_CONFIG` (default `/var/lib/pressdock-lab/pressdock.toml`),
//! `PRESSDOCK_BIN` (default `target/debug/pressdock`), `BENCH_SITES` (5),
//! `BENCH_PARALLEL` (20), `BENCH_MODES` (`raw,drivers,platform`, `rawspares`, or `steps`),
//! `BENCH_ROUNDS` (1: the modes run this many times in turn, with a summary of every
//! round's platform / floor ratio),
//! `BENCH_POLL` (`each`: the platform's operations polled one by one, as before
//! 2026-12-06; default one poller for all, see [`Platform`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use backends::{
    BackendsConfig, DomainName, EdgeCache, GaleraDriver, GlusterDriver, RedisSentinelDriver,
    Secret, SiteCache, SiteDatabase, SitePassword, SiteResourceId, SiteRuntime, SiteStorage,
    SwarmDriver, VarnishDriver,
    router::{DbRouter, Router},
    swarm::{LABEL_SECRET_KIND, LABEL_SITE, NodeId, PlanResources, SecretKind, SecretRef},
    varnish::{HostState, HostTable, VarnishCli, VclMode},
};
use e2e::CREATE_STEPS as STEPS;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The starter plan (platform/src/app/plans.rs): 1024 MB storage, 256 MB, 250 millicores.
const QUOTA_BYTES: u64 = 1024 * 1024 * 1024;
const MEMORY_BYTES: u64 = 256 * 1024 * 1024;
const CPU_MILLIS: u32 = 250;

const ADMIN: &str = "admin@pressdock.test";

/// One site's timings: per step, and from the first call to done.
#[derive(Debug, Clone, Default)]
struct SiteTiming {
    steps: BTreeMap<&'static str, Duration>,
    total: Duration,
    /// Platform only: `created_at` to `finished_at` of the operation (server clock).
    server_total: Option<Duration>,
    /// Platform only: `created_at` of the operation to its first step's start (the job's
    /// wait to be claimed, server clock).
    claim: Option<Duration>,
}

/// A batch run at once: wall time until every site is done.
#[derive(Debug, Clone, Default)]
struct Batch {
    sites: Vec<SiteTiming>,
    wall: Duration,
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// Labels of the resources this program makes, to find them again on cleanup.
fn domain_of(prefix: &str, id: &SiteResourceId) -> Result<BTreeSet<DomainName>> {
    let d = format!("{prefix}-{}.bench.test", id.as_str());
    Ok(BTreeSet::from([
        DomainName::parse(&d)?,
        DomainName::parse(&format!("www.{d}"))?,
    ]))
}

/// Standard base64 (the Docker API takes secret data so); no extra dependency for it.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The four secrets of a site, generated like the platform does (32 of `[A-Za-z0-9]`;
/// the salts eight lines of 64).
fn site_secrets() -> BTreeMap<SecretKind, Secret> {
    SecretKind::ALL
        .into_iter()
        .map(|kind| {
            let value = match kind {
                SecretKind::WpSalts => (0..8)
                    .map(|i| {
                        format!(
                            "KEY{i}={}{}\n",
                            SitePassword::generate().expose(),
                            SitePassword::generate().expose()
                        )
                    })
                    .collect(),
                _ => SitePassword::generate().expose().to_owned(),
            };
            (kind, Secret::new(value))
        })
        .collect()
}

fn password(secrets: &BTreeMap<SecretKind, Secret>, kind: SecretKind) -> Result<SitePassword> {
    let s = secrets.get(&kind).context("secret missing")?;
    Ok(SitePassword::parse(s.expose())?)
}

/// The lab's backends, reached both ways: directly and through the drivers.
struct Lab {
    table: toml::Table,
    config: BackendsConfig,
    mysql: mysql_async::Pool,
    docker: bollard::Docker,
    workers: Vec<NodeId>,
    /// Per Varnish instance: address and secret.
    varnish_instances: Vec<(String, Vec<u8>)>,
    main_vcl_in_instance: String,
    /// Redis data nodes that have an aclfile (checked once; `ACL SAVE` only there).
    aclfile_nodes: BTreeSet<String>,
    galera: GaleraDriver,
    router: Router,
    redis: RedisSentinelDriver,
    gluster: GlusterDriver,
    varnish: VarnishDriver,
    swarm: SwarmDriver,
    /// glusterd runs one volume transaction at a time: storage steps take turns (the
    /// platform does the same).
    gluster_turn: Mutex<()>,
    /// The host table and the VCL this program last activated (one table, one writer).
    edge: Mutex<(HostTable, Option<String>)>,
    /// Every host of the sites started so far: what the platform's `host_table` reads
    /// from its database (a site is in it from `record_site` on, still provisioning).
    registered: std::sync::Mutex<HostTable>,
    /// `rawspares`: the floor takes a spare directory (a rename) as the platform does.
    floor_spares: std::sync::atomic::AtomicBool,
}

impl Lab {
    async fn load(path: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        let table: toml::Table = text.parse().context("parse the lab config")?;
        let config: BackendsConfig = table
            .get("backends")
            .context("no [backends]")?
            .clone()
            .try_into()
            .context("[backends]")?;
        let galera_cfg = config.galera.clone().context("no [backends.galera]")?;
        let redis_cfg = config.redis.clone().context("no [backends.redis]")?;
        let gluster_cfg = config.gluster.clone().context("no [backends.gluster]")?;
        let varnish_cfg = config.varnish.clone().context("no [backends.varnish]")?;
        let swarm_cfg = config.swarm.clone().context("no [backends.swarm]")?;
        let mysql = mysql_async::Pool::new(
            mysql_async::Opts::from_url(galera_cfg.admin_url.expose()).context("admin_url")?,
        );
        let socket = swarm_cfg
            .docker_host
            .strip_prefix("unix://")
            .unwrap_or(&swarm_cfg.docker_host)
            .to_owned();
        let docker = bollard::Docker::connect_with_socket(
            &socket,
            120,
            &bollard::ClientVersion {
                major_version: 1,
                minor_version: 41,
            },
        )
        .context("docker socket")?;
        let swarm = SwarmDriver::new(&swarm_cfg)?;
        let workers: Vec<NodeId> = swarm
            .list_nodes()
            .await?
            .into_iter()
            .filter(|(_, _, role)| role == "worker")
            .map(|(id, _, _)| id)
            .collect();
        if workers.is_empty() {
            bail!("the swarm has no worker node");
        }
        let mut varnish_instances = Vec::new();
        for i in &varnish_cfg.instances {
            let secret = std::fs::read(&i.secret_file)
                .with_context(|| format!("read {}", i.secret_file.display()))?;
            varnish_instances.push((i.address.clone(), secret));
        }
        let varnish = VarnishDriver::new(&varnish_cfg)?;
        let VclMode::Include {
            main_vcl_in_instance,
            ..
        } = varnish.mode().clone()
        else {
            bail!("the floor expects the lab's include mode for Varnish");
        };
        let redis = RedisSentinelDriver::new(&redis_cfg)?;
        let mut aclfile_nodes = BTreeSet::new();
        let topology = redis.topology().await?;
        for node in std::iter::once(&topology.master).chain(&topology.replicas) {
            let mut c = redis_conn(&redis_cfg, node).await?;
            let f: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("aclfile")
                .query_async(&mut c)
                .await?;
            if f.get(1).is_some_and(|f| !f.is_empty()) {
                aclfile_nodes.insert(node.clone());
            }
        }
        eprintln!(
            "==> redis: master {}, replicas up {:?}, down {:?}; workers {}",
            topology.master,
            topology.replicas,
            topology.down_replicas,
            workers.len()
        );
        Ok(Self {
            table,
            galera: GaleraDriver::new(&galera_cfg)?,
            router: Router::from_config(&galera_cfg)?,
            redis,
            gluster: GlusterDriver::new(&gluster_cfg)?,
            varnish,
            swarm,
            config,
            mysql,
            docker,
            workers,
            varnish_instances,
            main_vcl_in_instance,
            aclfile_nodes,
            gluster_turn: Mutex::new(()),
            edge: Mutex::new((HostTable::default(), None)),
            registered: std::sync::Mutex::new(HostTable::default()),
            floor_spares: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn redis_cfg(&self) -> Result<&backends::config::RedisConfig> {
        self.config.redis.as_ref().context("no redis")
    }

    fn service_params(
        &self,
        id: &SiteResourceId,
        n: usize,
        domains: BTreeSet<DomainName>,
        secrets: BTreeMap<SecretKind, SecretRef>,
    ) -> Result<backends::swarm::SiteServiceParams> {
        let galera = self.config.galera.as_ref().context("no galera")?;
        let redis = self.redis_cfg()?;
        let gluster = self.config.gluster.as_ref().context("no gluster")?;
        let primary_domain = domains.first().cloned().context("no domain")?;
        Ok(backends::swarm::SiteServiceParams {
            id: id.clone(),
            domains,
            primary_domain,
            agent: Default::default(),
            node: self.workers[n % self.workers.len()].clone(),
            resources: PlanResources {
                cpu_limit_millis: CPU_MILLIS,
                memory_limit_bytes: MEMORY_BYTES,
                cpu_reservation_millis: CPU_MILLIS / 4,
                memory_reservation_bytes: MEMORY_BYTES / 4,
            },
            secrets,
            wp_content_source: gluster.node_mount.join(id.as_str()),
            db_host: galera.site_db_host.clone(),
            redis_sentinels: redis.sentinels.clone(),
            redis_master_name: redis.master_name.clone(),
            extra_env: BTreeMap::new(),
            image: None,
            suspended: false,
            force_update: 0,
        })
    }

    /// The floor's storage without spares: `mkdir`, `chown`, `chmod` through the mount,
    /// then one `limit-usage` in the Gluster turn.
    async fn raw_storage(&self, id: &SiteResourceId, dir: PathBuf) -> Result<()> {
        let gluster = self.config.gluster.as_ref().context("no gluster")?;
        let (uid, gid) = (gluster.owner_uid, gluster.owner_gid);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir(&dir)?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))
        })
        .await??;
        let _turn = self.gluster_turn.lock().await;
        let out = tokio::process::Command::new(&gluster.gluster_bin)
            .args(backends::gluster::quota_limit_args(
                gluster,
                id,
                QUOTA_BYTES,
            ))
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "gluster quota: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(())
    }

    /// The floor's storage with spares (`rawspares`): one `readdir` of the ready spares of
    /// the plan's limit and one `rename` of one of them to the site's directory (starting
    /// at the `n`th, so that concurrent sites rarely race for the same name); false when
    /// none is left (the caller then makes the directory and its limit itself).
    async fn take_spare_raw(&self, dir: &std::path::Path, n: usize) -> Result<bool> {
        let root = self.spare_root(QUOTA_BYTES)?;
        let dir = dir.to_owned();
        Ok(
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                let mut names: Vec<String> = match std::fs::read_dir(&root) {
                    Ok(entries) => entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|name| !name.starts_with('.'))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                };
                if names.is_empty() {
                    return Ok(false);
                }
                names.sort();
                let len = names.len();
                names.rotate_left(n % len);
                for name in names {
                    match std::fs::rename(root.join(&name), &dir) {
                        Ok(()) => return Ok(true),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(false)
            })
            .await??,
        )
    }

    /// Where the spares of a limit are (`GlusterDriver`'s layout).
    fn spare_root(&self, bytes: u64) -> Result<PathBuf> {
        let gluster = self.config.gluster.as_ref().context("no gluster")?;
        Ok(gluster
            .mount
            .join(backends::gluster::SPARES_DIR)
            .join(bytes.to_string()))
    }

    /// Makes ready spares (through the driver, one `limit-usage` each in the Gluster
    /// turn) until every limit in `sizes` has `wanted`: before a mode's timed part, never
    /// inside it. Returns how many were made.
    async fn top_up_spares(&self, sizes: &[u64], wanted: usize) -> Result<usize> {
        let mut made = 0;
        for &bytes in sizes {
            let spares = self.gluster.list_spares(bytes).await?;
            for name in &spares.unfinished {
                let _turn = self.gluster_turn.lock().await;
                self.gluster.remove_spare(bytes, name).await?;
            }
            for _ in spares.ready.len()..wanted {
                let _turn = self.gluster_turn.lock().await;
                self.gluster.make_spare(bytes).await?;
                made += 1;
            }
        }
        Ok(made)
    }

    /// Every limit that has a spares folder on the volume (the plans' quotas, as the
    /// lab's platform made them), and the starter plan's.
    fn spare_sizes(&self) -> Result<Vec<u64>> {
        let gluster = self.config.gluster.as_ref().context("no gluster")?;
        let mut sizes = BTreeSet::from([QUOTA_BYTES]);
        if let Ok(entries) = std::fs::read_dir(gluster.mount.join(backends::gluster::SPARES_DIR)) {
            for e in entries.flatten() {
                if let Some(bytes) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                    sizes.insert(bytes);
                }
            }
        }
        Ok(sizes.into_iter().collect())
    }

    /// The floor: one site made with direct client calls.
    async fn raw_site(&self, n: usize) -> Result<(SiteResourceId, SiteTiming)> {
        let id = SiteResourceId::generate();
        let name = id.resource_name();
        let domains = domain_of("raw", &id)?;
        self.register(&id, &domains)?;
        let mut t = SiteTiming::default();
        let start = Instant::now();

        let s = Instant::now();
        let secrets = site_secrets();
        t.steps.insert("generate_secrets", s.elapsed());

        let s = Instant::now();
        let db_pw = password(&secrets, SecretKind::DbPassword)?;
        let mut c = self.mysql.get_conn().await?;
        c.query_drop(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .await?;
        // The password is bound, then quoted by the server (no placeholders in CREATE USER).
        c.exec_drop("SET @pd_pw = ?", (db_pw.expose(),)).await?;
        c.query_drop(format!(
            "EXECUTE IMMEDIATE CONCAT('CREATE USER `{name}`@''%'' IDENTIFIED BY ', QUOTE(@pd_pw))"
        ))
        .await?;
        c.query_drop("SET @pd_pw = NULL").await?;
        c.query_drop(format!(
            "GRANT ALL PRIVILEGES ON `wp\\_{}`.* TO `{name}`@'%'",
            id.as_str()
        ))
        .await?;
        drop(c);
        t.steps.insert("ensure_database", s.elapsed());

        // HAProxy router: no per-user entry, nothing to do.
        t.steps.insert("ensure_router_user", Duration::ZERO);

        let s = Instant::now();
        let redis_pw = password(&secrets, SecretKind::RedisPassword)?;
        let cfg = self.redis_cfg()?;
        let sentinel = cfg.sentinels.first().context("no sentinel")?;
        let mut sc = sentinel_conn(cfg, sentinel).await?;
        let master: (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&cfg.master_name)
            .query_async(&mut sc)
            .await?;
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(&cfg.master_name)
            .query_async(&mut sc)
            .await?;
        let mut nodes = vec![format!("{}:{}", master.0, master.1)];
        for r in replicas {
            let flags = r.get("flags").map(String::as_str).unwrap_or("");
            let down = flags
                .split(',')
                .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
            if let (false, Some(ip), Some(port)) = (down, r.get("ip"), r.get("port")) {
                nodes.push(format!("{ip}:{port}"));
            }
        }
        let rules = backends::redis::site_acl_rules(&id, &redis_pw);
        for node in &nodes {
            let mut c = redis_conn(cfg, node).await?;
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&name)
                .arg(&rules)
                .query_async(&mut c)
                .await?;
            if self.aclfile_nodes.contains(node) {
                let _: () = redis::cmd("ACL").arg("SAVE").query_async(&mut c).await?;
            }
        }
        // The site's discovery-only user on every Sentinel, saved.
        let sentinel_rules = backends::redis::sentinel_acl_rules(&redis_pw);
        for sentinel in &cfg.sentinels {
            let mut c = sentinel_conn(cfg, sentinel).await?;
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&name)
                .arg(&sentinel_rules)
                .query_async(&mut c)
                .await?;
            let _: () = redis::cmd("SENTINEL")
                .arg("FLUSHCONFIG")
                .query_async(&mut c)
                .await?;
        }
        t.steps.insert("ensure_cache_user", s.elapsed());

        let s = Instant::now();
        let gluster = self.config.gluster.as_ref().context("no gluster")?;
        let dir = gluster.mount.join(id.as_str());
        if self.floor_spares.load(std::sync::atomic::Ordering::Relaxed)
            && self.take_spare_raw(&dir, n).await?
        {
            t.steps.insert("ensure_storage", s.elapsed());
        } else {
            self.raw_storage(&id, dir).await?;
            t.steps.insert("ensure_storage", s.elapsed());
        }

        let s = Instant::now();
        // The secrets side by side, as the platform's driver makes them.
        let refs: BTreeMap<SecretKind, SecretRef> =
            futures::future::try_join_all(secrets.iter().map(|(kind, data)| {
                let secret_name = backends::swarm::secret_name(&id, *kind, data);
                let spec = bollard::models::SecretSpec {
                    name: Some(secret_name.clone()),
                    labels: Some(std::collections::HashMap::from([
                        (LABEL_SITE.to_owned(), id.to_string()),
                        (LABEL_SECRET_KIND.to_owned(), kind.as_str().to_owned()),
                    ])),
                    data: Some(base64(data.expose().as_bytes())),
                    ..Default::default()
                };
                async move {
                    let r = self.docker.create_secret(spec).await?;
                    Ok::<_, anyhow::Error>((
                        *kind,
                        SecretRef {
                            id: r.id,
                            name: secret_name,
                        },
                    ))
                }
            }))
            .await?
            .into_iter()
            .collect();
        t.steps.insert("ensure_swarm_secrets", s.elapsed());

        let s = Instant::now();
        let params = self.service_params(&id, n, domains.clone(), refs)?;
        let spec = self.swarm.build_spec(&params)?;
        self.docker.create_service(spec, None).await?;
        t.steps.insert("ensure_service", s.elapsed());

        let s = Instant::now();
        self.raw_publish(&id, &domains).await?;
        t.steps.insert("publish_hosts", s.elapsed());

        t.total = start.elapsed();
        Ok((id, t))
    }

    /// Puts the site's hosts in the table (as `record_site` puts the site in the database).
    fn register(&self, id: &SiteResourceId, domains: &BTreeSet<DomainName>) -> Result<()> {
        let mut table = self
            .registered
            .lock()
            .map_err(|_| anyhow!("registered hosts lock poisoned"))?;
        for d in domains {
            table.insert(d.clone(), id.clone(), HostState::Active);
        }
        Ok(())
    }

    /// The table to publish: every registered host. Like the platform, a site whose
    /// hosts another site's publish already loaded loads nothing.
    fn wanted(&self) -> Result<HostTable> {
        Ok(self
            .registered
            .lock()
            .map_err(|_| anyhow!("registered hosts lock poisoned"))?
            .clone())
    }

    /// `hosts.vcl` with every registered site, then load/use/discard on every Varnish;
    /// nothing when the loaded table already has this site's hosts.
    async fn raw_publish(&self, id: &SiteResourceId, domains: &BTreeSet<DomainName>) -> Result<()> {
        let hosts_file = self
            .config
            .varnish
            .as_ref()
            .and_then(|v| v.hosts_file.clone())
            .context("no hosts_file")?;
        let mut edge = self.edge.lock().await;
        if domains
            .iter()
            .all(|d| edge.0.hosts.get(d).is_some_and(|e| &e.site == id))
        {
            return Ok(());
        }
        edge.0 = self.wanted()?;
        let content = backends::varnish::render_hosts_include(&edge.0);
        let tmp = hosts_file.with_extension("vcl.benchtmp");
        tokio::fs::write(&tmp, &content).await?;
        tokio::fs::rename(&tmp, &hosts_file).await?;
        let vcl = format!(
            "pd_floor{}",
            SiteResourceId::generate().as_str() // unique per load
        );
        for (address, secret) in &self.varnish_instances {
            let mut cli = VarnishCli::connect(address, secret).await?;
            cli.command_ok("vcl.load", &[&vcl, &self.main_vcl_in_instance])
                .await?;
            cli.command_ok("vcl.use", &[&vcl]).await?;
            if let Some(old) = &edge.1 {
                cli.command_ok("vcl.discard", &[old]).await?;
            }
        }
        edge.1 = Some(vcl);
        Ok(())
    }

    /// The same steps through the drivers' `ensure_*`.
    async fn driver_site(&self, n: usize) -> Result<(SiteResourceId, SiteTiming)> {
        let id = SiteResourceId::generate();
        let domains = domain_of("drv", &id)?;
        self.register(&id, &domains)?;
        let mut t = SiteTiming::default();
        let start = Instant::now();

        let s = Instant::now();
        let secrets = site_secrets();
        t.steps.insert("generate_secrets", s.elapsed());

        let s = Instant::now();
        let db_pw = password(&secrets, SecretKind::DbPassword)?;
        self.galera.ensure_site_database(&id, &db_pw).await?;
        t.steps.insert("ensure_database", s.elapsed());

        let s = Instant::now();
        self.router.ensure_router_user(&id, &db_pw).await?;
        t.steps.insert("ensure_router_user", s.elapsed());

        let s = Instant::now();
        let redis_pw = password(&secrets, SecretKind::RedisPassword)?;
        self.redis.ensure_site_cache(&id, &redis_pw).await?;
        t.steps.insert("ensure_cache_user", s.elapsed());

        let s = Instant::now();
        {
            let _turn = self.gluster_turn.lock().await;
            self.gluster.ensure_site_storage(&id, QUOTA_BYTES).await?;
        }
        t.steps.insert("ensure_storage", s.elapsed());

        let s = Instant::now();
        let wanted: Vec<(SecretKind, Secret)> =
            secrets.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.swarm.ensure_site_secrets(&id, &wanted).await?;
        t.steps.insert("ensure_swarm_secrets", s.elapsed());

        // As the platform's step: the secrets' ids from the swarm again (one listing).
        let s = Instant::now();
        let refs = self.swarm.ensure_site_secrets(&id, &wanted).await?;
        let params = self.service_params(&id, n, domains.clone(), refs)?;
        self.swarm.ensure_service(&params).await?;
        t.steps.insert("ensure_service", s.elapsed());

        let s = Instant::now();
        {
            let mut edge = self.edge.lock().await;
            edge.0 = self.wanted()?;
            let states = self.varnish.apply_host_table(&edge.0).await?;
            if states.iter().any(|s| !s.converged) {
                bail!("varnish did not activate the host table");
            }
        }
        t.steps.insert("publish_hosts", s.elapsed());

        t.total = start.elapsed();
        Ok((id, t))
    }

    /// Removes a floor site everywhere (through the drivers; not timed).
    async fn remove(&self, id: &SiteResourceId) -> Result<()> {
        self.swarm.remove_service(id).await?;
        self.swarm.prune_site_secrets(id, &[]).await?;
        {
            let _turn = self.gluster_turn.lock().await;
            self.gluster.remove_site_storage(id).await?;
        }
        self.redis.remove_site_cache(id).await?;
        self.router.remove_router_user(id).await?;
        self.galera.remove_site_database(id).await?;
        Ok(())
    }

    /// Empties our host table on every Varnish (through the driver, which also discards
    /// the VCLs loaded here).
    async fn clear_edge(&self) -> Result<()> {
        let mut edge = self.edge.lock().await;
        edge.0 = HostTable::default();
        *self
            .registered
            .lock()
            .map_err(|_| anyhow!("registered hosts lock poisoned"))? = HostTable::default();
        self.varnish.apply_host_table(&edge.0).await?;
        edge.1 = None;
        Ok(())
    }
}

async fn redis_conn(
    cfg: &backends::config::RedisConfig,
    addr: &str,
) -> Result<redis::aio::MultiplexedConnection> {
    connect_redis(
        addr,
        cfg.admin_user.clone(),
        cfg.admin_password.as_ref().map(|p| p.expose().to_owned()),
    )
    .await
}

async fn sentinel_conn(
    cfg: &backends::config::RedisConfig,
    addr: &str,
) -> Result<redis::aio::MultiplexedConnection> {
    connect_redis(
        addr,
        cfg.sentinel_user.clone(),
        cfg.sentinel_password
            .as_ref()
            .map(|p| p.expose().to_owned()),
    )
    .await
}

async fn connect_redis(
    addr: &str,
    username: Option<String>,
    password: Option<String>,
) -> Result<redis::aio::MultiplexedConnection> {
    let (host, port) = addr.rsplit_once(':').context("HOST:PORT")?;
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(host.to_owned(), port.parse()?),
        redis: redis::RedisConnectionInfo {
            db: 0,
            username,
            password,
            protocol: redis::ProtocolVersion::RESP2,
        },
    };
    Ok(redis::Client::open(info)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Other people's compilers stopped (SIGSTOP, by pid) while a batch of sites is timed,
/// with `BENCH_PAUSE_BUILDS=1`: the machine's 2 cores are shared, and a build beside one
/// mode's batch and not the other's moves the ratio more than anything measured. Only
/// the batches (tens of seconds each) are paused; dropping the value continues the same
/// pids (the script's exit trap continues them again in case this program dies).
struct Paused(Vec<nix::unistd::Pid>);

impl Paused {
    fn builds() -> Self {
        if std::env::var("BENCH_PAUSE_BUILDS").as_deref() != Ok("1") {
            return Self(Vec::new());
        }
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "rustc") {
                let pid = nix::unistd::Pid::from_raw(pid);
                if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).is_ok() {
                    pids.push(pid);
                }
            }
        }
        eprintln!("==> paused {} rustc processes for the batch", pids.len());
        Self(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// Runs the floor (`raw` or `drivers`): `sites` one after the other, then `parallel` at
/// once; removes everything.
async fn floor(lab: &Arc<Lab>, mode: &str, sites: usize, parallel: usize) -> Result<Run> {
    let mut made = Vec::new();
    let mut serial = Vec::new();
    let result = async {
        for n in 0..sites {
            let (id, t) = match mode {
                "raw" | "rawspares" => lab.raw_site(n).await?,
                _ => lab.driver_site(n).await?,
            };
            eprintln!("==> {mode} site {n}: {} ms", ms(t.total));
            made.push(id);
            serial.push(t);
        }
        let paused = Paused::builds();
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for n in 0..parallel {
            let lab = lab.clone();
            let mode = mode.to_owned();
            set.spawn(async move {
                let r = match mode.as_str() {
                    "raw" | "rawspares" => lab.raw_site(n).await,
                    _ => lab.driver_site(n).await,
                };
                r.map(|(id, t)| (id, t, start.elapsed()))
            });
        }
        let mut batch = Batch::default();
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            match r? {
                Ok((id, t, done)) => {
                    made.push(id);
                    batch.sites.push(t);
                    batch.wall = batch.wall.max(done);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        drop(paused);
        if let Some(e) = first_err {
            return Err(e.context("a site of the parallel batch"));
        }
        eprintln!("==> {mode} {parallel} at once: {} ms", ms(batch.wall));
        Ok(batch)
    }
    .await;
    // The ids of a failed step are not in `made`: those resources are left; say so.
    eprintln!("==> {mode}: removing {} sites", made.len());
    for id in &made {
        if let Err(e) = lab.remove(id).await {
            eprintln!("==> {mode}: removing {id}: {e:#}");
        }
    }
    lab.clear_edge().await?;
    Ok(Run {
        serial,
        batch: result?,
    })
}

struct Run {
    serial: Vec<SiteTiming>,
    batch: Batch,
}

/// A `pressdock serve` of ours on the lab's configuration, with its own database.
struct Platform {
    child: tokio::process::Child,
    base: String,
    token: String,
    http: reqwest::Client,
    config_path: PathBuf,
    /// Finished operations (id → `succeeded`/`failed`) as one poller sees them: one
    /// `GET /v1/operations` every 50 ms for every site at once. Polling each operation
    /// every 50 ms (`BENCH_POLL=each`, the way of the earlier runs) is 400 requests a
    /// second at 20 sites, all of them on the same 2 cores as the platform, glusterd and
    /// the other servers: load of the client's making that the floor never has.
    finished: Option<tokio::sync::watch::Receiver<BTreeMap<String, String>>>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl Platform {
    async fn start(lab: &Lab, database_url: &str, spares: usize, bin: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let admin_password = SitePassword::generate().expose().to_owned();
        let mut table = lab.table.clone();
        table.insert("database_url".into(), database_url.into());
        table.insert("listen".into(), format!("127.0.0.1:{port}").into());
        let mut bootstrap = toml::Table::new();
        bootstrap.insert("admin_email".into(), ADMIN.into());
        bootstrap.insert("admin_password".into(), admin_password.clone().into());
        table.insert("bootstrap".into(), bootstrap.into());
        let mut reconcile = toml::Table::new();
        reconcile.insert("interval_secs".into(), 3600.into());
        table.insert("reconcile".into(), reconcile.into());
        if spares > 0
            && let Some(g) = table
                .get_mut("backends")
                .and_then(|b| b.get_mut("gluster"))
                .and_then(|g| g.as_table_mut())
        {
            g.insert("spares".into(), i64::try_from(spares)?.into());
        }
        let config_path = std::env::temp_dir().join(format!("pd-bench-provision-{port}.toml"));
        std::fs::write(&config_path, toml::to_string(&table)?)?;
        let bin = bin.to_owned();
        // BENCH_PLATFORM_LOG=file: the platform's log at info there (the host-table
        // loads' times, for one), appended; otherwise warnings only, to our stderr.
        let (level, out) = match std::env::var_os("BENCH_PLATFORM_LOG") {
            Some(path) => (
                "info",
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?,
                ),
            ),
            None => ("warn", Stdio::null()),
        };
        let mut child = tokio::process::Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", level)
            .stdout(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        if let Some(pid) = child.id() {
            eprintln!("==> platform pid {pid} on 127.0.0.1:{port}");
        }
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("pressdock serve exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("pressdock serve did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let login: Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({ "email": ADMIN, "password": admin_password }))
            .send()
            .await?
            .json()
            .await?;
        let token = login["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned();
        let (finished, poller) = if std::env::var("BENCH_POLL").as_deref() == Ok("each") {
            eprintln!("==> polling each operation every 50 ms (BENCH_POLL=each)");
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::watch::channel(BTreeMap::new());
            let (http, url, token) = (
                http.clone(),
                format!("{base}/v1/operations?limit=100"),
                token.clone(),
            );
            let poller = tokio::spawn(async move {
                loop {
                    if let Ok(r) = http.get(&url).bearer_auth(&token).send().await
                        && let Ok(page) = r.json::<Value>().await
                    {
                        let done: BTreeMap<String, String> = page["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|op| {
                                let state = op["state"].as_str()?;
                                let id = op["id"].as_str()?;
                                matches!(state, "succeeded" | "failed")
                                    .then(|| (id.to_owned(), state.to_owned()))
                            })
                            .collect();
                        tx.send_if_modified(|known| {
                            let grew = done.keys().any(|id| !known.contains_key(id));
                            known.extend(done);
                            grew
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            (Some(rx), Some(poller))
        };
        Ok(Self {
            child,
            base,
            token,
            http,
            config_path,
            finished,
            poller,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Waits until the operation is finished (seen by the poller, or polled itself every
    /// 50 ms with `BENCH_POLL=each`), then reads it once.
    async fn wait(&self, op: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        if let Some(finished) = &self.finished {
            let mut finished = finished.clone();
            // `wait_for`'s answer borrows the poller's map: let go of it at once (held
            // across the call below, it blocked the poller's next write for good).
            let seen = tokio::time::timeout_at(
                deadline.into(),
                finished.wait_for(|done| done.contains_key(op)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if !seen {
                bail!("operation {op} did not finish");
            }
            let (_, body) = self
                .call(reqwest::Method::GET, &format!("/v1/operations/{op}"), None)
                .await?;
            return match body["state"].as_str() {
                Some("succeeded") => Ok(body),
                _ => bail!("operation {op} failed: {body}"),
            };
        }
        loop {
            let (_, body) = self
                .call(reqwest::Method::GET, &format!("/v1/operations/{op}"), None)
                .await?;
            match body["state"].as_str() {
                Some("succeeded") => return Ok(body),
                Some("failed") => bail!("operation {op} failed: {body}"),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("operation {op} did not finish: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST a site, wait for its operation; the client-side time and the step times.
    async fn create(&self, tenant: &str) -> Result<(String, SiteTiming)> {
        let domain = format!("plt-{}.bench.test", SiteResourceId::generate().as_str());
        let start = Instant::now();
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/sites"),
                Some(json!({ "name": "Bench site", "domain": domain,
                             "aliases": [format!("www.{domain}")], "plan": "starter" })),
            )
            .await?;
        if status != 202 {
            bail!("create site: {status} {body}");
        }
        let site = body["site"]["id"]
            .as_str()
            .context("no site id")?
            .to_owned();
        let op = body["operation"]["id"]
            .as_str()
            .context("no operation id")?;
        let done = self.wait(op).await?;
        let mut t = SiteTiming {
            total: start.elapsed(),
            ..Default::default()
        };
        for step in done["steps"].as_array().context("no steps")? {
            let name = step["name"].as_str().unwrap_or_default();
            let Some(known) = STEPS.iter().find(|s| **s == name) else {
                continue;
            };
            let (Some(a), Some(b)) = (
                step["started_at"].as_str().and_then(parse_rfc3339),
                step["finished_at"].as_str().and_then(parse_rfc3339),
            ) else {
                continue;
            };
            t.steps
                .insert(known, Duration::from_secs_f64((b - a).max(0.0)));
        }
        let created = done["created_at"].as_str().and_then(parse_rfc3339);
        if let (Some(a), Some(b)) = (
            created,
            done["finished_at"].as_str().and_then(parse_rfc3339),
        ) {
            t.server_total = Some(Duration::from_secs_f64((b - a).max(0.0)));
        }
        let first_start = done["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["started_at"].as_str().and_then(parse_rfc3339))
            .reduce(f64::min);
        if let (Some(a), Some(b)) = (created, first_start) {
            t.claim = Some(Duration::from_secs_f64((b - a).max(0.0)));
        }
        Ok((site, t))
    }

    async fn delete(&self, site: &str) -> Result<()> {
        let (status, body) = self
            .call(reqwest::Method::DELETE, &format!("/v1/sites/{site}"), None)
            .await?;
        if status != 202 {
            bail!("delete site {site}: {status} {body}");
        }
        let op = body["operation"]["id"]
            .as_str()
            .context("no operation id")?;
        self.wait(op).await.map(drop)
    }

    async fn stop(mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        if let Some(pid) = self.child.id() {
            // SIGTERM by our own child's pid: the graceful shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Seconds since the epoch of `2026-11-28T19:39:25.336835Z` (UTC, `Z` or `+00:00`).
fn parse_rfc3339(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z').trim_end_matches("+00:00");
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

async fn platform(lab: &Arc<Lab>, sites: usize, parallel: usize, bin: &str) -> Result<Run> {
    let galera = lab.config.galera.as_ref().context("no galera")?;
    let admin = galera.admin_url.expose().trim_end_matches('/').to_owned();
    let database = format!("pdbench_{}", SiteResourceId::generate().as_str());
    let database_url = format!("{admin}/{database}");
    eprintln!("==> platform database {database}");
    // Spares (`[backends.gluster] spares`, issue 10): as many per plan quota as this run
    // creates, made here before the platform starts (untimed), so that its first refill
    // finds nothing to do and every create of the run can take one. The refill that
    // follows the creates (every 10 s) is the platform's and runs inside the timed part.
    let configured = lab.config.gluster.as_ref().map_or(0, |g| g.spares as usize);
    let spares = if configured > 0 {
        let wanted = configured.max(sites + parallel + 1);
        let made = lab.top_up_spares(&lab.spare_sizes()?, wanted).await?;
        eprintln!("==> platform: spares = {wanted} per plan quota ({made} made before the run)");
        wanted
    } else {
        0
    };
    let p = Platform::start(lab, &database_url, spares, bin).await?;
    let mut made = Vec::new();
    let result = async {
        let (status, ran) = p
            .call(reqwest::Method::POST, "/v1/admin/reconcilers/run", None)
            .await?;
        if status != 200 {
            bail!("reconcilers/run: {status} {ran}");
        }
        let (status, tenant) = p
            .call(
                reqwest::Method::POST,
                "/v1/tenants",
                Some(
                    json!({ "slug": format!("bench-{}", SiteResourceId::generate().as_str()),
                             "name": "Provisioning benchmark" }),
                ),
            )
            .await?;
        if status != 201 {
            bail!("create tenant: {status} {tenant}");
        }
        let tenant = tenant["id"].as_str().context("no tenant id")?.to_owned();
        let mut serial = Vec::new();
        for n in 0..sites {
            let (site, t) = p.create(&tenant).await?;
            eprintln!("==> platform site {n}: {} ms", ms(t.total));
            made.push(site);
            serial.push(t);
        }
        let paused = Paused::builds();
        let start = Instant::now();
        let p = &p;
        let tenant = &tenant;
        let results = futures_join(
            (0..parallel)
                .map(|_| async move { p.create(tenant).await.map(|r| (r, start.elapsed())) })
                .collect(),
        )
        .await;
        drop(paused);
        let mut batch = Batch::default();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(((site, t), done)) => {
                    made.push(site);
                    batch.sites.push(t);
                    batch.wall = batch.wall.max(done);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e.context("a site of the parallel batch"));
        }
        eprintln!("==> platform {parallel} at once: {} ms", ms(batch.wall));
        Ok(Run { serial, batch })
    }
    .await;
    eprintln!(
        "==> platform: deleting {} sites through the API",
        made.len()
    );
    for site in &made {
        if let Err(e) = p.delete(site).await {
            eprintln!("==> platform: {e:#}");
        }
    }
    p.stop().await;
    let mut c = lab.mysql.get_conn().await?;
    c.query_drop(format!("DROP DATABASE IF EXISTS `{database}`"))
        .await?;
    eprintln!("==> platform stopped, {database} dropped");
    result
}

/// Awaits every future concurrently (on this task), in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn step_median(run: &Run, step: &str) -> Option<Duration> {
    median(
        run.serial
            .iter()
            .filter_map(|t| t.steps.get(step).copied())
            .collect(),
    )
}

fn cell(d: Option<Duration>) -> String {
    d.map(ms).unwrap_or_else(|| "—".into())
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.as_secs_f64() >= 0.0005 => {
            format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
        }
        _ => "—".into(),
    }
}

/// The columns of the tables: the modes that ran, in this order.
const COLUMNS: [(&str, &str); 5] = [
    ("platform", "Platform"),
    ("baseline", "Platform, baseline"),
    ("drivers", "Drivers direct"),
    ("raw", "Floor (raw clients)"),
    ("rawspares", "Floor, spares"),
];

/// The ratios shown: (numerator, denominator) of the modes that ran.
const RATIOS: [(&str, &str); 5] = [
    ("platform", "raw"),
    ("platform", "rawspares"),
    ("baseline", "raw"),
    ("baseline", "rawspares"),
    ("drivers", "raw"),
];

fn report(runs: &BTreeMap<String, Run>, sites: usize, parallel: usize) {
    let get = |m: &str| runs.get(m);
    let cols: Vec<(&str, &str)> = COLUMNS
        .into_iter()
        .filter(|(m, _)| runs.contains_key(*m))
        .collect();
    let ratios: Vec<(&str, &str)> = RATIOS
        .into_iter()
        .filter(|(a, b)| runs.contains_key(*a) && runs.contains_key(*b))
        .collect();
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut rule = "|---|".to_owned();
        for (_, title) in &cols {
            h.push_str(&format!(" {title} |"));
            rule.push_str("---:|");
        }
        for (a, b) in &ratios {
            h.push_str(&format!(" {a} / {b} |"));
            rule.push_str("---:|");
        }
        format!("{h}\n{rule}")
    };
    // One row: a value per mode, then the ratios.
    let row = |label: &str, value: &dyn Fn(&Run) -> Option<Duration>, bold: bool| {
        let v = |m: &str| get(m).and_then(value);
        let b = |x: String| if bold { format!("**{x}**") } else { x };
        let mut line = format!("| {label} |");
        for (m, _) in &cols {
            line.push_str(&format!(" {} |", b(cell(v(m)))));
        }
        for (a, d) in &ratios {
            line.push_str(&format!(" {} |", b(ratio(v(a), v(d)))));
        }
        println!("{line}");
    };
    println!(
        "### One site at a time: median of {sites}, ms\n\n{}",
        header("Step")
    );
    for s in STEPS {
        row(&format!("`{s}`"), &|r| step_median(r, s), false);
    }
    row(
        "sum of the steps",
        &|r| {
            median(
                r.serial
                    .iter()
                    .map(|t| t.steps.values().sum::<Duration>())
                    .collect(),
            )
        },
        false,
    );
    row(
        "API call → saga done (platform) / first call → last (floors)",
        &|r| median(r.serial.iter().map(|t| t.total).collect()),
        true,
    );
    row(
        "operation `created_at` → `finished_at` (server clock)",
        &|r| median(r.serial.iter().filter_map(|t| t.server_total).collect()),
        false,
    );
    println!("\n### {parallel} sites at once, ms\n\n{}", header(""));
    row(
        &format!("until all {parallel} are done"),
        &|r| Some(r.batch.wall),
        true,
    );
    row(
        "median site, its own call → done",
        &|r| median(r.batch.sites.iter().map(|t| t.total).collect()),
        false,
    );
    row(
        "median wait to be claimed (operation created → first step)",
        &|r| median(r.batch.sites.iter().filter_map(|t| t.claim).collect()),
        false,
    );
    row(
        "median saga bookkeeping (claimed → finished, minus the steps)",
        &|r| {
            median(
                r.batch
                    .sites
                    .iter()
                    .filter_map(|t| {
                        Some(
                            t.server_total?
                                .saturating_sub(t.claim?)
                                .saturating_sub(t.steps.values().sum()),
                        )
                    })
                    .collect(),
            )
        },
        false,
    );
    for s in STEPS {
        row(
            &format!("median `{s}`"),
            &|r| {
                median(
                    r.batch
                        .sites
                        .iter()
                        .filter_map(|t| t.steps.get(s).copied())
                        .collect(),
                )
            },
            false,
        );
    }
    for (mode, run) in runs {
        let all: Vec<String> = run.serial.iter().map(|t| ms(t.total)).collect();
        eprintln!("==> {mode}: one at a time, each (ms): {}", all.join(", "));
    }
}

/// `steps` mode: the two driver steps issue 10 changed, each way on fresh ids, one site at
/// a time, alternating the ways (so drift on a loaded machine hits both): the storage step
/// as it was (directory, `quota list`, `limit-usage`, `quota list` + the directory's
/// stat) and as it is (directory, `limit-usage`); the swarm secrets that exist ensured
/// again, as `ensure_service` did (per kind a refused `secret create` and an inspect) and
/// as it does now (one `secret ls`). Touches only Gluster and the swarm's secrets (no
/// Varnish, no service, no platform): safe beside the lab's own platform.
async fn steps(lab: &Arc<Lab>, sites: usize) -> Result<()> {
    let mut storage_before = Vec::new();
    let mut storage_after = Vec::new();
    let mut secrets_before = Vec::new();
    let mut secrets_after = Vec::new();
    let mut made = Vec::new();
    let result = async {
        for n in 0..sites {
            for way in [n % 2, 1 - n % 2] {
                let id = SiteResourceId::generate();
                made.push(id.clone());
                let s = Instant::now();
                if way == 0 {
                    let g = &lab.gluster;
                    g.ensure_directory(&id).await?;
                    let current = g.read_quota(&id).await.unwrap_or(None);
                    if current != Some(QUOTA_BYTES) {
                        g.set_quota(&id, QUOTA_BYTES).await?;
                    }
                    g.observe_site_storage(&id).await?;
                    storage_before.push(s.elapsed());
                } else {
                    lab.gluster.ensure_site_storage(&id, QUOTA_BYTES).await?;
                    storage_after.push(s.elapsed());
                }
                let observed = lab.gluster.observe_site_storage(&id).await?;
                if !observed.is_converged(QUOTA_BYTES) {
                    bail!("{id}: storage not converged: {observed:?}");
                }
            }
            let id = SiteResourceId::generate();
            made.push(id.clone());
            let wanted: Vec<(SecretKind, Secret)> = site_secrets().into_iter().collect();
            let created = lab.swarm.ensure_site_secrets(&id, &wanted).await?;
            for way in [n % 2, 1 - n % 2] {
                let s = Instant::now();
                let refs = if way == 0 {
                    let mut refs = BTreeMap::new();
                    for (kind, data) in &wanted {
                        refs.insert(*kind, lab.swarm.ensure_secret(&id, *kind, data).await?);
                    }
                    secrets_before.push(s.elapsed());
                    refs
                } else {
                    let refs = lab.swarm.ensure_site_secrets(&id, &wanted).await?;
                    secrets_after.push(s.elapsed());
                    refs
                };
                if refs != created {
                    bail!("{id}: the secrets ensured again differ from the ones made");
                }
            }
            eprintln!("==> steps site {n} done");
        }
        Ok(())
    }
    .await;
    for id in &made {
        let _turn = lab.gluster_turn.lock().await;
        if let Err(e) = lab.gluster.remove_site_storage(id).await {
            eprintln!("==> cleanup {id}: {e:#}");
        }
        if let Err(e) = lab.swarm.prune_site_secrets(id, &[]).await {
            eprintln!("==> cleanup {id}: {e:#}");
        }
    }
    result?;
    let row = |name: &str, before: &[Duration], after: &[Duration]| {
        let b = median(before.to_vec()).unwrap_or_default();
        let a = median(after.to_vec()).unwrap_or_default();
        println!(
            "| {name} | {} | {} | {:.2}× |",
            ms(b),
            ms(a),
            a.as_secs_f64() / b.as_secs_f64().max(1e-9)
        );
    };
    println!("\n### Changed steps, median of {sites}, ms\n");
    println!("| Step | Before | After | After / before |");
    println!("|---|---:|---:|---:|");
    row("`ensure_storage` (driver)", &storage_before, &storage_after);
    row(
        "swarm secrets that exist, ensured again (in `ensure_service`)",
        &secrets_before,
        &secrets_after,
    );
    let each = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    eprintln!("==> storage before: {}", each(&storage_before));
    eprintln!("==> storage after: {}", each(&storage_after));
    eprintln!("==> secrets before: {}", each(&secrets_before));
    eprintln!("==> secrets after: {}", each(&secrets_after));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let config = std::env::var("LAB_CONFIG")
        .unwrap_or_else(|_| "/var/lib/pressdock-lab/pressdock.toml".into());
    let sites: usize = std::env::var("BENCH_SITES")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let parallel: usize = std::env::var("BENCH_PARALLEL")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "raw,drivers,platform".into());
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let lab = Arc::new(Lab::load(&config).await?);
    // Each round runs every mode once, in order (raw, platform, raw, platform, …: the two
    // sides alternate, so drift on a shared machine hits both); the tables are the last
    // round's, the summary after them every round's ratio.
    let mut walls: Vec<BTreeMap<String, Duration>> = Vec::new();
    let mut runs = BTreeMap::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("==> round {round} of {rounds}");
        }
        runs = run_modes(&lab, &modes, sites, parallel).await;
        walls.push(
            runs.iter()
                .map(|(mode, run)| (mode.clone(), run.batch.wall))
                .collect(),
        );
    }
    if !runs.is_empty() {
        report(&runs, sites, parallel);
    }
    if rounds > 1 {
        rounds_summary(&walls, parallel);
    }
    Ok(())
}

/// Every round's time for the whole batch and the platform / floor ratios (against the
/// floor without spares, `raw`, and with them, `rawspares`; for `platform` and the
/// `baseline` build, where they ran), then each ratio's min, median and max.
fn rounds_summary(walls: &[BTreeMap<String, Duration>], parallel: usize) {
    let present = |modes: [&'static str; 2]| -> Vec<&'static str> {
        modes
            .into_iter()
            .filter(|m| walls.iter().any(|w| w.contains_key(*m)))
            .collect()
    };
    let floors = present(["raw", "rawspares"]);
    let platforms = present(["platform", "baseline"]);
    let mut head = "| Round |".to_owned();
    let mut rule = "|---:|".to_owned();
    for m in floors.iter().chain(&platforms) {
        head.push_str(&format!(" {m} |"));
        rule.push_str("---:|");
    }
    for p in &platforms {
        for f in &floors {
            head.push_str(&format!(" {p} / {f} |"));
            rule.push_str("---:|");
        }
    }
    println!("\n### {parallel} at once, every round, ms\n\n{head}\n{rule}");
    let mut ratios: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for (i, w) in walls.iter().enumerate() {
        let mut line = format!("| {} |", i + 1);
        for m in floors.iter().chain(&platforms) {
            line.push_str(&format!(" {} |", cell(w.get(*m).copied())));
        }
        for p in &platforms {
            for f in &floors {
                let (a, b) = (w.get(*p).copied(), w.get(*f).copied());
                if let (Some(a), Some(b)) = (a, b) {
                    ratios
                        .entry((p, f))
                        .or_default()
                        .push(a.as_secs_f64() / b.as_secs_f64());
                }
                line.push_str(&format!(" {} |", ratio(a, b)));
            }
        }
        println!("{line}");
    }
    println!();
    for ((p, f), mut ratios) in ratios {
        ratios.sort_by(f64::total_cmp);
        if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
            let n = ratios.len();
            let med = if n % 2 == 1 {
                ratios[n / 2]
            } else {
                (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
            };
            println!("- {p} / {f} over {n} rounds: min {min:.2}×, median {med:.2}×, max {max:.2}×");
        }
    }
}

async fn run_modes(
    lab: &Arc<Lab>,
    modes: &str,
    sites: usize,
    parallel: usize,
) -> BTreeMap<String, Run> {
    let mut runs = BTreeMap::new();
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        eprintln!("==> {mode}: {sites} one at a time, then {parallel} at once");
        let run = match mode {
            "steps" => {
                if let Err(e) = steps(lab, sites).await {
                    eprintln!("==> steps FAILED: {e:#}");
                }
                continue;
            }
            "raw" | "drivers" => {
                lab.floor_spares
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                floor(lab, mode, sites, parallel).await
            }
            "rawspares" => {
                // Untimed: as many ready spares as this run takes, made beforehand.
                lab.floor_spares
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                match lab.top_up_spares(&[QUOTA_BYTES], sites + parallel).await {
                    Ok(made) => {
                        eprintln!("==> rawspares: made {made} spares before the run");
                        floor(lab, mode, sites, parallel).await
                    }
                    Err(e) => Err(e.context("making spares")),
                }
            }
            "platform" => {
                let bin = std::env::var("PRESSDOCK_BIN")
                    .unwrap_or_else(|_| "target/debug/pressdock".into());
                platform(lab, sites, parallel, &bin).await
            }
            // Another build of the platform side by side (an earlier commit's binary).
            "baseline" => match std::env::var("BENCH_BASELINE_BIN") {
                Ok(bin) => platform(lab, sites, parallel, &bin).await,
                Err(_) => Err(anyhow!("the baseline mode needs BENCH_BASELINE_BIN")),
            },
            other => Err(anyhow!("unknown mode {other}")),
        };
        match run {
            Ok(run) => {
                eprintln!(
                    "==> {mode}: {parallel} at once in {} ms",
                    ms(run.batch.wall)
                );
                runs.insert(mode.to_owned(), run);
            }
            Err(e) => eprintln!("==> {mode} FAILED: {e:#}"),
        }
    }
    runs
}
