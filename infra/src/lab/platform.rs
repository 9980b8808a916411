//! The platform on the lab: a `pressdock serve` config with every lab endpoint
//! (`<state>/pressdock.toml`), the server as a background process, and a staff admin plus a
//! demo tenant created through the HTTP API.
use super::sh::{self, progress};
use super::{EDGE_NET, HOST_IP, Lab, SITES_NET, STATE, http, ports};
use crate::platform_config::PlatformCluster;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Platform {
    pub url: String,
    pub demo_email: String,
    pub demo_tenant: String,
    /// `domain (state)` of the demo site, empty when it could not be created.
    pub demo_site: String,
}

pub const STAFF_EMAIL: &str = "admin@pressdock.test";
pub const DEMO_EMAIL: &str = "owner@demo.test";
pub const DEMO_DOMAIN: &str = "demo.lab.test";

pub fn config_path() -> PathBuf {
    Path::new(STATE).join("pressdock.toml")
}

/// The platform config: the lab described as a cluster, rendered by the renderer
/// production's uses ([`crate::platform_config`]; shape documented in
/// configs/pressdock.example.toml).
pub fn config(lab: &Lab) -> String {
    crate::platform_config::render(&description(lab, super::PlatformRedis::saved()))
}

/// The lab as the platform sees it: its host data tier (or, `redis`, the cache stack) on
/// the bridge, its nodes, its own builds, its S3 and ACME servers; credentials inline (the
/// file is root's, 0600).
pub fn description(lab: &Lab, redis: super::PlatformRedis) -> PlatformCluster {
    use crate::platform_config::{Cred, Galera, Gluster, Redis, S3, Swarm, Varnish, VclMode};
    let s = &lab.secrets;
    let m1 = lab.topo.first_manager();
    let inline = |v: &str| Cred::Inline(v.to_owned());
    let varnish = lab
        .topo
        .cache_nodes()
        .iter()
        .map(|n| {
            (
                format!("{}:{}", n.ip, ports::VARNISH_ADMIN),
                format!("{STATE}/varnish/secret"),
            )
        })
        .collect();
    // Every Traefik replica's metrics page (the managers': stacks/edge.yml): the billed
    // request counts (platform/src/app/edge_usage.rs).
    let edge_metrics = lab
        .topo
        .nodes()
        .iter()
        .filter(|n| n.role == super::Role::Manager)
        .flat_map(|n| {
            [ports::EDGE_METRICS, ports::EDGE_METRICS_B]
                .map(|port| format!("http://{}:{port}/metrics", n.ip))
        })
        .collect();
    let key = {
        // 32 random bytes, base64 (the platform's secret_key format).
        let bytes = hex::decode(&s.platform_key).unwrap_or_default();
        base64(&bytes)
    };
    let router = format!("{HOST_IP}:{}", ports::ROUTER);
    let pw = &s.redis_admin;
    let redis = match redis {
        super::PlatformRedis::Host => Redis {
            sentinels: (1..=3)
                .map(|i| format!("{HOST_IP}:{}", super::data::sentinel_port(i)))
                .collect(),
            master_name: "pressdock".into(),
            admin_user: Some("admin".into()),
            admin_password: inline(pw),
            sentinel_user: Some("admin".into()),
            sentinel_password: inline(pw),
            note: "The lab's host Redis and Sentinels (`lab up --platform-redis host`). The \
                   Sentinels' default\nuser is off: the platform is their admin, each site has \
                   its own discovery-only user there."
                .into(),
        },
        super::PlatformRedis::Stack => Redis {
            sentinels: lab
                .topo
                .cache_nodes()
                .iter()
                .map(|n| format!("{}:{}", n.ip, super::nodes::CACHE_SENTINEL_PORT))
                .collect(),
            master_name: super::nodes::CACHE_MASTER_NAME.into(),
            admin_user: None,
            admin_password: inline(pw),
            sentinel_user: None,
            sentinel_password: inline(pw),
            note: CACHE_STACK_REDIS_NOTE.into(),
        },
    };
    PlatformCluster {
        header: "Written by `pressdock-infra lab up`: the platform against the lab's real servers."
            .into(),
        listen: format!("127.0.0.1:{}", ports::PLATFORM),
        database_url: Cred::Inline(format!(
            "mysql://pressdock:{}@{router}/pressdock",
            s.platform_db
        )),
        secret_key: Cred::Inline(key),
        bootstrap: Some((STAFF_EMAIL.into(), inline(&s.staff_password))),
        agent_listen: format!("{HOST_IP}:{}", ports::PLATFORM + 1),
        agent_control_url: format!("http://{HOST_IP}:{}", ports::PLATFORM + 1),
        galera: Galera {
            admin_url: Cred::Inline(format!("mysql://pdadmin:{}@{router}", s.galera_admin)),
            router: "haproxy".into(),
            proxysql_admin_urls: Vec::new(),
            site_db_host: router.clone(),
            nodes: (1..=lab.topo.galera_nodes)
                .map(|n| format!("{HOST_IP}:{}", super::data::galera_port(n)))
                .collect(),
            note:
                "HAProxy, the lab's writer router, in front of the host Galera nodes (production: \
                   ProxySQL)."
                    .into(),
        },
        redis,
        gluster: Gluster {
            remote_host: String::new(),
            volume: "sites".into(),
            mount: m1.gluster_mount().display().to_string(),
            node_mount: format!("{STATE}/nodes/{{{{.Node.Hostname}}}}/sites"),
            spares: 8,
            note: format!(
                "Empty remote_host: this host's glusterd over its unix socket (the full CLI; over\n\
                 --remote-host glusterd refuses `volume get` and so `quota list`). Bricks are on {}.\n\
                 Directories with each plan's quota made ahead of time: a create takes one instead of a\n\
                 glusterd transaction (docs/benchmarks.md, provisioning, issue 10). 8 per plan quota in\n\
                 the lab, so that a fresh lab's refill (one quota call each) stays short beside the tests;\n\
                 the 20-at-once benchmark wants 24.",
                super::GLUSTER_HOST
            ),
        },
        varnish: Varnish {
            instances: varnish,
            mode: VclMode::Include {
                vcl_dir: format!("{STATE}/varnish/vcl"),
                hosts_file: format!("{STATE}/varnish/vcl/hosts.vcl"),
                vcl_dir_in_instance: "/etc/varnish/pressdock".into(),
            },
        },
        swarm: Swarm {
            docker_host: m1.docker_host(),
            // The lab's own build (production's is the spec's `images.wordpress`).
            runtime_image: crate::cluster::images::Images::lab()
                .runtime_image()
                .to_owned(),
            site_network: SITES_NET.into(),
            edge_network: EDGE_NET.into(),
            cert_resolver: String::new(),
            websecure_entrypoint: String::new(),
            net_guard_wait_secs: 30,
        },
        s3: Some(S3 {
            endpoint: format!("http://{HOST_IP}:{}", ports::S3),
            bucket: super::data::S3_BUCKET.into(),
            region: super::data::S3_REGION.into(),
            access_key: inline(&s.s3_access_key),
            secret_key: inline(&s.s3_secret_key),
            force_path_style: true,
            note: "s3s-fs: refuses requests not signed with this key pair.".into(),
        }),
        certs: Some(format!(
            r#"# pebble, the lab's ACME server (lab::acme): HTTP-01 is validated through the lab's edge.
enabled = true
directory = {directory}
contact_email = "ops@pressdock.test"
directory_ca_file = {ca}
interval_secs = 3
order_timeout_secs = 60
retry_base_secs = 10
retry_max_secs = 300
# Every Traefik replica polls /edge/traefik.json on the edge listener with this token.
edge_token = {token}
# Traefik's providers.http.pollInterval (stacks/traefik.yml): redirects wait two of these.
edge_poll_interval_secs = {poll}
edge_listen = "{HOST_IP}:{edge_port}"
challenge_upstream = "http://{HOST_IP}:{edge_port}"
web_entrypoint = "web"
websecure_entrypoint = "websecure"
https_service = "pd-cache@file"
"#,
            directory = toml::Value::String(super::acme::directory_url()),
            ca = toml::Value::String(super::acme::api_root(lab).display().to_string()),
            token = toml::Value::String(s.edge_token.clone()),
            poll = super::EDGE_POLL_SECS,
            edge_port = ports::PLATFORM_EDGE,
        )),
        edge_metrics,
        // Every delete backs the site up first, to the lab's S3, as in production
        // (tests/tests/lab_sites.rs, the undelete test).
        final_backup: true,
    }
}

/// `[backends.redis]` on the cache stack (`stacks/cache.yml`), the lab's with `lab up
/// --platform-redis stack` and production's.
pub const CACHE_STACK_REDIS_NOTE: &str = "The cache stack (stacks/cache.yml): its Sentinels at the cache nodes' published port;\n\
Redis nodes and Sentinels have one password-protected `default` user (the stack's secret),\n\
which the platform uses; each site gets its own ACL user on every node and its\n\
discovery-only user on every Sentinel, saved on the node's volume (`ACL SAVE`,\n\
`SENTINEL FLUSHCONFIG`), so that they outlive a task's restart.";

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `target/{release,debug}/pressdock` of this workspace, if built: the one built last. A
/// release build made once (for a benchmark) must not shadow every debug build after it:
/// the lab would run code older than the checkout.
fn binary(lab: &Lab) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| lab.repo.join("target"));
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("pressdock"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p)
}

/// Writes the config; starts the platform and creates the demo tenant when the binary
/// exists and serves. A missing or unready platform is reported, not fatal.
pub fn ensure(lab: &Lab) -> Result<Option<Platform>> {
    let cfg = config(lab);
    let changed = std::fs::read_to_string(config_path()).ok().as_deref() != Some(cfg.as_str());
    // Root only: it holds the platform's database, Redis, Galera admin and S3 credentials.
    sh::write_private(&config_path(), &cfg)?;
    if changed && lab.procs.stop("platform", Duration::from_secs(10))? {
        progress("platform", "config changed: restarting");
    }
    let Some(bin) = binary(lab) else {
        progress(
            "platform",
            "target/*/pressdock not built (`cargo build -p platform`); config written, \
             platform not started",
        );
        return Ok(None);
    };
    match start_and_seed(lab, &bin) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            progress(
                "platform",
                format!("not ready, skipped: {e:#} (log: {STATE}/logs/platform.log)"),
            );
            Ok(None)
        }
    }
}

fn start_and_seed(lab: &Lab, bin: &Path) -> Result<Platform> {
    let addr = format!("127.0.0.1:{}", ports::PLATFORM);
    let cfg = config_path();
    // A rebuilt binary replaces the file the running server was started from: restart.
    if let Some(pid) = lab.procs.alive("platform") {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.to_string_lossy().ends_with(" (deleted)") {
            progress("platform", "binary rebuilt since start: restarting");
            lab.procs.stop("platform", Duration::from_secs(10))?;
        }
    }
    if lab.procs.alive("platform").is_none() {
        progress("platform", format!("starting {} serve", bin.display()));
        lab.procs.spawn(
            "platform",
            "pdlab-data",
            "pressdock",
            &lab.path("logs/platform.log"),
            "env",
            &[
                format!("PRESSDOCK_CONFIG={}", cfg.display()),
                bin.to_string_lossy().into_owned(),
                "serve".into(),
                "--config".into(),
                cfg.to_string_lossy().into_owned(),
            ],
        )?;
    }
    sh::wait_for(
        "the platform to listen",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            if lab.procs.alive("platform").is_none() {
                return Some(Err(anyhow::anyhow!("pressdock serve exited")));
            }
            std::net::TcpStream::connect(&addr).ok().map(|_| Ok(()))
        },
    )??;
    let login = http::request(
        &addr,
        "POST",
        "/v1/auth/login",
        "127.0.0.1",
        Some(&json!({"email": STAFF_EMAIL, "password": lab.secrets.staff_password})),
        &[],
    )?;
    let token = serde_json::from_str::<serde_json::Value>(&login.body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_owned))
        .with_context(|| format!("staff login: HTTP {} {}", login.status, login.body))?;
    let auth = format!("Bearer {token}");
    let h = [("Authorization", auth.as_str())];
    let t = http::request(
        &addr,
        "POST",
        "/v1/tenants",
        "127.0.0.1",
        Some(&json!({"name": "Demo Agency Client", "slug": "demo"})),
        &h,
    )?;
    let tenant = if t.status == 200 || t.status == 201 {
        serde_json::from_str::<serde_json::Value>(&t.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .context("tenant without id")?
    } else if t.status == 409 {
        // Second `lab up`: the tenant exists; find it by slug.
        let l = http::request(&addr, "GET", "/v1/tenants", "127.0.0.1", None, &h)?;
        list_items(&l.body)
            .iter()
            .find(|t| t["slug"] == "demo")
            .and_then(|t| t["id"].as_str().map(str::to_owned))
            .context("existing demo tenant not found in GET /v1/tenants")?
    } else {
        bail!("creating the demo tenant: HTTP {} {}", t.status, t.body);
    };
    let u = http::request(
        &addr,
        "POST",
        &format!("/v1/tenants/{tenant}/users"),
        "127.0.0.1",
        Some(&json!({"email": DEMO_EMAIL, "password": lab.secrets.demo_password, "role": "owner"})),
        &h,
    )?;
    if !(u.status == 200 || u.status == 201 || u.status == 409) {
        bail!("creating the demo owner: HTTP {} {}", u.status, u.body);
    }
    register_nodes(lab, &addr, &h)?;
    let demo_site = match demo_site(&addr, &h, &tenant) {
        Ok(s) => s,
        Err(e) => {
            progress("platform", format!("demo site not created: {e:#}"));
            String::new()
        }
    };
    Ok(Platform {
        url: format!("http://{addr}"),
        demo_email: DEMO_EMAIL.into(),
        demo_tenant: tenant,
        demo_site,
    })
}

/// The running lab platform's API as staff (a fresh login), for the cluster code's
/// [`crate::cluster::evolve::PlatformClient`]; `None` when the platform does not answer.
pub fn staff_client(lab: &Lab) -> Option<crate::cluster::evolve::PlatformClient> {
    let addr = format!("127.0.0.1:{}", super::ports::PLATFORM);
    let login = http::request(
        &addr,
        "POST",
        "/v1/auth/login",
        "127.0.0.1",
        Some(&json!({"email": STAFF_EMAIL, "password": lab.secrets.staff_password})),
        &[],
    )
    .ok()?;
    let token = serde_json::from_str::<serde_json::Value>(&login.body)
        .ok()?
        .get("access_token")?
        .as_str()?
        .to_owned();
    crate::cluster::evolve::PlatformClient::new(
        &format!("http://{addr}"),
        crate::cluster::evolve::ApiToken::new(token),
    )
    .ok()
}

/// The array of a list answer: a bare array or `{"items": [...]}`.
fn list_items(body: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v.get("items")
        .and_then(|x| x.as_array())
        .cloned()
        .or_else(|| v.as_array().cloned())
        .unwrap_or_default()
}

/// The lab's nodes in the platform's inventory (placement needs its workers).
fn register_nodes(lab: &Lab, addr: &str, h: &[(&str, &str)]) -> Result<()> {
    let l = http::request(addr, "GET", "/v1/nodes", "127.0.0.1", None, h)?;
    if l.status != 200 {
        bail!("GET /v1/nodes: HTTP {} {}", l.status, l.body);
    }
    let known: Vec<String> = list_items(&l.body)
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    for n in lab.topo.nodes() {
        if known.contains(&n.host()) {
            continue;
        }
        let worker = n.role == super::Role::Worker;
        let swarm_id = super::nodes::swarm_node_id(&n);
        let r = http::request(
            addr,
            "POST",
            "/v1/nodes",
            "127.0.0.1",
            Some(&json!({
                "name": n.host(),
                "role": if worker { "worker" } else { "manager" },
                "address": n.ip,
                "failure_domain": n.host(),
                "swarm_node_id": swarm_id,
                "labels": { "pressdock.node": n.name },
            })),
            h,
        )?;
        if !(r.status == 200 || r.status == 201 || r.status == 409) {
            bail!(
                "registering node {}: HTTP {} {}",
                n.host(),
                r.status,
                r.body
            );
        }
    }
    Ok(())
}

/// A demo site for the demo tenant (once), provisioned by the platform on the lab.
fn demo_site(addr: &str, h: &[(&str, &str)], tenant: &str) -> Result<String> {
    let path = format!("/v1/tenants/{tenant}/sites");
    let l = http::request(addr, "GET", &path, "127.0.0.1", None, h)?;
    let admin_file = demo_admin_file();
    let admin = || {
        std::fs::read_to_string(&admin_file)
            .ok()
            .and_then(|a| a.split(" / ").next().map(|u| u.trim().to_owned()))
            .map(|user| {
                format!(
                    "; WordPress login {user} (password: pressdock-infra lab password demo-site)"
                )
            })
            .unwrap_or_default()
    };
    if let Some(site) = list_items(&l.body).into_iter().next() {
        return Ok(format!(
            "{} ({}){}",
            site["domain"].as_str().unwrap_or("?"),
            site["state"].as_str().unwrap_or("?"),
            admin()
        ));
    }
    let r = http::request(
        addr,
        "POST",
        &path,
        "127.0.0.1",
        Some(&json!({"name": "Demo", "domain": DEMO_DOMAIN, "aliases": [], "plan": "starter"})),
        &[h, &[("Idempotency-Key", "pressdock-lab-demo-site")]].concat(),
    )?;
    if !(r.status == 200 || r.status == 201 || r.status == 202) {
        bail!("POST {path}: HTTP {} {}", r.status, r.body);
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    // The administrator's password is in this answer only: keep it for `lab status`.
    if let (Some(user), Some(password)) =
        (v["admin"]["user"].as_str(), v["admin"]["password"].as_str())
    {
        sh::write_file(&admin_file, &format!("{user} / {password}\n"))?;
        std::fs::set_permissions(
            &admin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
    }
    let Some(op) = v["id"].as_str().or(v["operation"]["id"].as_str()) else {
        return Ok(format!("{DEMO_DOMAIN} (requested)"));
    };
    progress(
        "platform",
        format!("demo site {DEMO_DOMAIN}: operation {op}…"),
    );
    let state = sh::wait_for(
        "the demo site's operation",
        Duration::from_secs(90),
        Duration::from_secs(2),
        || {
            let o = http::request(
                addr,
                "GET",
                &format!("/v1/operations/{op}"),
                "127.0.0.1",
                None,
                h,
            )
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&o.body).ok()?;
            let st = v["state"].as_str()?.to_owned();
            (st == "succeeded" || st == "failed").then(|| {
                format!(
                    "{st}{}",
                    v["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            })
        },
    )
    .unwrap_or_else(|_| format!("operation {op} still running after 90 s"));
    Ok(format!("{DEMO_DOMAIN} ({state}){}", admin()))
}

/// The demo site's WordPress login, written when the site is created (mode 0600).
pub fn demo_admin_file() -> std::path::PathBuf {
    Path::new(STATE).join("demo-site-admin")
}

/// `<state>/lab.toml`: the endpoints, for tests and other tools.
pub fn write_summary(lab: &Lab, plat: Option<&Platform>) -> Result<()> {
    let m1 = lab.topo.first_manager();
    let nodes: Vec<String> = lab
        .topo
        .nodes()
        .iter()
        .map(|n| {
            format!(
                "{{ name = \"{}\", host = \"{}\", ip = \"{}\", docker_host = \"{}\", gluster_mount = \"{}\" }}",
                n.name,
                n.host(),
                n.ip,
                n.docker_host(),
                n.gluster_mount().display()
            )
        })
        .collect();
    let s = format!(
        "edge_url = \"http://127.0.0.1:{edge}\"\nedge_https_url = \"https://127.0.0.1:{edge_tls}\"\n\
         edge_https_replicas = [{replicas}]\nacme_roots = \"{acme_roots}\"\n\
         acme_directory = \"{acme_directory}\"\nacme_dns_management = \"{acme_dns}\"\n\
         router = \"{HOST_IP}:{router}\"\n\
         platform_url = \"{purl}\"\nplatform_config = \"{cfg}\"\nmanager_docker_host = \"{dh}\"\n\
         nodes = [\n  {nodes}\n]\n",
        edge = ports::EDGE,
        edge_tls = ports::EDGE_TLS,
        replicas = super::status::https_replicas(lab)
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", "),
        acme_roots = super::acme::roots(lab).display(),
        acme_directory = super::acme::directory_url(),
        acme_dns = super::acme::dns_management_url(),
        router = ports::ROUTER,
        purl = plat.map(|p| p.url.as_str()).unwrap_or(""),
        cfg = config_path().display(),
        dh = m1.docker_host(),
        nodes = nodes.join(",\n  "),
    );
    sh::write_file(&Path::new(STATE).join("lab.toml"), &s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{PlatformRedis, Secrets, Topology, proc::Procs};

    /// A lab of 2 managers, 3 workers and 3 Galera nodes with made-up credentials.
    fn fixture() -> Lab {
        let secret = |name: &str| format!("pw-{name}-0123abcd");
        Lab {
            topo: Topology {
                managers: 2,
                workers: 3,
                galera_nodes: 3,
            },
            secrets: Secrets {
                galera_admin: secret("galera-admin"),
                galera_check: secret("galera-check"),
                platform_db: secret("platform-db"),
                redis_admin: secret("redis-admin"),
                varnish: secret("varnish"),
                platform_key: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
                    .into(),
                staff_password: secret("staff"),
                demo_password: secret("demo"),
                s3_access_key: "PDLABKEYFIXTURE".into(),
                s3_secret_key: secret("s3-secret"),
                edge_token: secret("edge-token"),
            },
            procs: Procs { dir: STATE.into() },
            repo: ".".into(),
        }
    }

    /// What the lab wrote before its configuration went through the production renderer
    /// (the old `format!`, for [`fixture`]), key for key, in both Redis modes; and the
    /// platform's own loader reads it.
    #[test]
    fn the_labs_config_means_what_it_meant_before_the_shared_renderer() {
        for (r, before) in [
            (
                PlatformRedis::Host,
                include_str!("../testdata/lab-pressdock-host.toml"),
            ),
            (
                PlatformRedis::Stack,
                include_str!("../testdata/lab-pressdock-stack.toml"),
            ),
        ] {
            let now = crate::platform_config::render(&description(&fixture(), r));
            let parse = |t: &str| {
                t.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{e}\n{t}"))
            };
            assert_eq!(parse(&now), parse(before), "{r:?}:\n{now}");
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let path = dir.path().join("pressdock.toml");
            std::fs::write(&path, &now).unwrap_or_else(|e| panic!("{e}"));
            let config = platform::config::Config::load_from(Some(&path), &[])
                .unwrap_or_else(|e| panic!("{e:#}"));
            let b: backends::config::BackendsConfig = toml::Value::Table(config.backends)
                .try_into()
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(b.galera.is_some() && b.redis.is_some() && b.s3.is_some());
        }
    }
}
