//! Tenant isolation below the API (issue 11, item 4): what a tenant's own code reaches
//! from inside its site's container on the lab.
//!
//! The suite creates a tenant and two sites, A and B, through the lab's API and waits for
//! both to be active. It puts `isolation/probe.php` into A's wp-content, where a plugin
//! lives, and posts every probe of [`probes`] to it through A's own nginx on loopback:
//! php-fpm runs each one as www-data with A's wp-config, exactly like a malicious plugin
//! (same user, capabilities, `no_new_privs`, environment and network namespace). Two probes
//! run from the test itself: A's page through the edge, and a GlusterFS client in A's
//! network namespace (the client is not in the image; an attacker could bring one, and
//! the network position is what the probe tests).
//!
//! Each probe has an explicit expectation ([`Expect`]) and an observation ([`Observed`]);
//! the test prints the whole table and fails if any observation is not what the probe
//! expects, including a probe that could not run (`missing`, `error`): a missing tool
//! fails loudly. Network probes tell the real service from anything else by its answer
//! (a MySQL handshake, `+PONG`/`-NOAUTH`, an HTTP status and server header, a GlusterFS RPC
//! reply, Varnish's CLI banner): on this machine an address no route reaches is answered
//! by an egress proxy (`server: keryx`), which counts as unreachable.
//!
//! A new probe is one line of [`probes`].
//!
//! Gated by `PRESSDOCK_LAB_TESTS=1` and a lab that is up. It uses the lab's own platform
//! (127.0.0.1:23500, the staff admin of its config); when that is not running (the other
//! lab tests stop it) it starts `pressdock serve` on the lab's config for its own run.
//! `PRESSDOCK_ISOLATION_KEEP=1` keeps the tenant and the sites for a look afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use infra::lab::{HOST_IP, ports};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use e2e::{LAB_STATE as STATE, random};

const PROBE_PHP: &str = include_str!("isolation/probe.php");
const DRIVER_PHP: &str = include_str!("isolation/driver.php");
/// Every capability a site task's processes may hold (`backends::swarm` `site_capabilities`):
/// CHOWN, DAC_OVERRIDE, KILL, SETGID, SETUID, NET_BIND_SERVICE.
const SITE_CAPS: &str = "4e3";

/// What a probe must find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The site's own path: it must work.
    Open,
    /// Refused by the service or the kernel, or unreachable.
    Closed,
    /// Refused by the real service (which the probe reached): an ACL, a grant, a file mode.
    Denied,
}

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Observed {
    Open,
    Denied,
    Unreachable,
    /// A tool the probe needs is not there: the probe tested nothing.
    Missing,
    /// The probe itself failed.
    Error,
}

impl Expect {
    fn admits(self, o: Observed) -> bool {
        matches!(
            (self, o),
            (Expect::Open, Observed::Open)
                | (Expect::Closed, Observed::Denied | Observed::Unreachable)
                | (Expect::Denied, Observed::Denied)
        )
    }
    fn as_str(self) -> &'static str {
        match self {
            Expect::Open => "open",
            Expect::Closed => "closed",
            Expect::Denied => "denied",
        }
    }
}

impl Observed {
    fn parse(s: &str) -> Self {
        match s {
            "open" => Observed::Open,
            "denied" => Observed::Denied,
            "unreachable" => Observed::Unreachable,
            "missing" => Observed::Missing,
            _ => Observed::Error,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Observed::Open => "OPEN",
            Observed::Denied => "denied",
            Observed::Unreachable => "unreachable",
            Observed::Missing => "MISSING",
            Observed::Error => "ERROR",
        }
    }
}

/// Where a probe runs.
enum How {
    /// `probe.php` in A's php-fpm, with this request.
    Php(Value),
    /// From the test: A's home page through the edge, its title in the body.
    Edge,
    /// From the test: a GlusterFS client in A's network namespace mounts the volume.
    GlusterMount,
}

struct Probe {
    name: String,
    expect: Expect,
    how: How,
}

struct Outcome {
    name: String,
    expect: Expect,
    observed: Observed,
    detail: String,
}

/// One site as the probes see it.
struct Site {
    id: String,
    domain: String,
    title: String,
    node: LabNode,
    container: String,
}

#[derive(Clone, Debug)]
struct LabNode {
    name: String,
    ip: String,
    docker_host: String,
    manager: bool,
}

/// Everything a probe line may name.
struct Ctx {
    a: Site,
    b: Site,
    /// B's task on the sites' overlay network.
    b_ip: String,
    nodes: Vec<LabNode>,
    galera: Vec<(String, u16)>,
    redis_replicas: Vec<String>,
    varnish_admin: Vec<String>,
    s3: (String, u16, String),
    agent_listener: (String, u16),
    gluster_bricks: Vec<u16>,
    /// A's agent token and WordPress admin password: no readable place may hold them.
    needles: Value,
    /// A user name the grant probes would create if they could (dropped afterwards).
    probe_user: String,
}

// Probe constructors: each returns the request `probe.php` runs.

fn mysql(sql: &str, open_if: &str) -> How {
    How::Php(json!({ "kind": "mysql", "host": "@db", "sql": sql, "open_if": open_if }))
}
fn mysql_login(host: &str, port: u16, db: Option<&str>) -> How {
    How::Php(json!({ "kind": "mysql", "host": host, "port": port, "db": db }))
}
/// Commands on the Redis master the site's Sentinels name, as the site's user.
fn redis(cmds: &[&[&str]]) -> How {
    redis_at("@master", 0, "site", false, cmds)
}
fn redis_at(host: &str, port: u16, auth: &str, resp3: bool, cmds: &[&[&str]]) -> How {
    How::Php(
        json!({ "kind": "redis", "host": host, "port": port, "auth": auth,
                     "resp3": resp3, "cmds": cmds }),
    )
}
fn tcp(host: &str, port: u16, proto: &str) -> How {
    How::Php(json!({ "kind": "tcp", "host": host, "port": port, "proto": proto }))
}
fn http(host: &str, port: u16, vhost: &str, path: &str, open_status: Value) -> How {
    How::Php(
        json!({ "kind": "tcp", "proto": "http", "host": host, "port": port,
                     "vhost": vhost, "path": path, "open_status": open_status }),
    )
}
fn file(path: &str, op: &str) -> How {
    How::Php(json!({ "kind": "file", "path": path, "op": op }))
}
fn procs(check: &str, extra: Value) -> How {
    let mut v = json!({ "kind": "procs", "check": check, "allowed_caps": SITE_CAPS });
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    How::Php(v)
}

/// The probes: name, expectation, how. Names say the layer first. One probe, one line
/// (hence no rustfmt here).
#[rustfmt::skip]
fn probes(c: &Ctx) -> Vec<Probe> {
    use Expect::{Closed, Denied, Open};
    let a = &c.a.id;
    let b = &c.b.id;
    let (s3_host, s3_port, bucket) = &c.s3;
    let (agent_host, agent_port) = &c.agent_listener;
    let mut v: Vec<(String, Expect, How)> = vec![
        // A's own path: what WordPress needs must work.
        ("own.db.through_router".into(), Open, mysql("SELECT COUNT(*) FROM wp_options", "ok")),
        ("own.redis.prefix".into(), Open, redis(&[&["SET", &format!("wp_{a}:isolation"), "1", "EX", "60"], &["GET", &format!("wp_{a}:isolation")]])),
        ("own.redis.php_redis".into(), Open, How::Php(json!({ "kind": "phpredis" }))),
        ("own.sentinel.get_master".into(), Open, redis_at("@sentinel0", 0, "site", false, &[&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "pressdock"]])),
        ("own.files.wp_config".into(), Open, file("/etc/wordpress/config-default.php", "read")),
        ("own.files.wp_content_write".into(), Open, file("@wp_content", "write")),
        ("own.agent_listener.healthz".into(), Open, http(agent_host, *agent_port, agent_host, "/healthz", json!([200]))),
        ("own.edge.page".into(), Open, How::Edge),
        // The database: B's schema, other schemas, grants, with A's credentials.
        ("db.b.show_tables".into(), Denied, mysql(&format!("SHOW TABLES FROM wp_{b}"), "ok")),
        ("db.b.select".into(), Denied, mysql(&format!("SELECT option_value FROM wp_{b}.wp_options LIMIT 1"), "ok")),
        ("db.b.login_to_schema".into(), Denied, mysql_login("@db", 0, Some(&format!("wp_{b}")))),
        ("db.schemas.listed".into(), Denied, mysql("SHOW DATABASES", &format!("contains:wp_{b}"))),
        ("db.schemas.control_plane".into(), Denied, mysql("SELECT COUNT(*) FROM pressdock.sites", "ok")),
        ("db.mysql.users".into(), Denied, mysql("SELECT User FROM mysql.user", "ok")),
        ("db.mysql.global_priv".into(), Denied, mysql("SELECT User FROM mysql.global_priv", "ok")),
        ("db.grant.to_self_on_b".into(), Denied, mysql(&format!("GRANT SELECT ON wp_{b}.* TO CURRENT_USER"), "ok")),
        ("db.grant.own_to_new_user".into(), Denied, mysql(&format!("GRANT SELECT ON wp_{a}.* TO '{}'@'%' IDENTIFIED BY 'x'", c.probe_user), "ok")),
        ("db.create_user".into(), Denied, mysql(&format!("CREATE USER '{}'@'%' IDENTIFIED BY 'x'", c.probe_user), "ok")),
        ("db.file.load_file".into(), Denied, mysql("SELECT LOAD_FILE('/etc/hostname')", "non_null")),
        ("db.file.into_outfile".into(), Denied, mysql(&format!("SELECT 1 INTO OUTFILE '/tmp/pd-isolation-{a}'"), "ok")),
        ("db.set_global".into(), Denied, mysql("SET GLOBAL max_connections = @@max_connections", "ok")),
        ("db.processlist.others".into(), Denied, mysql(&format!("SELECT DISTINCT USER FROM information_schema.PROCESSLIST WHERE USER <> 'wp_{a}'"), "rows")),
        // Redis as A: nothing outside A's prefix, nothing server-wide.
        ("redis.b.get".into(), Denied, redis(&[&["GET", &format!("wp_{b}:isolation")]])),
        ("redis.b.set".into(), Denied, redis(&[&["SET", &format!("wp_{b}:isolation"), "x"]])),
        ("redis.unprefixed.set".into(), Denied, redis(&[&["SET", "isolation", "x"]])),
        ("redis.keys".into(), Denied, redis(&[&["KEYS", "*"]])),
        ("redis.scan".into(), Denied, redis(&[&["SCAN", "0"]])),
        ("redis.randomkey".into(), Denied, redis(&[&["RANDOMKEY"]])),
        ("redis.dbsize".into(), Denied, redis(&[&["DBSIZE"]])),
        ("redis.select".into(), Denied, redis(&[&["SELECT", "1"]])),
        ("redis.tracking_bcast".into(), Denied, redis_at("@master", 0, "site", true, &[&["CLIENT", "TRACKING", "ON", "BCAST"]])),
        ("redis.client_list".into(), Denied, redis(&[&["CLIENT", "LIST"]])),
        ("redis.eval".into(), Denied, redis(&[&["EVAL", "return 1", "0"]])),
        ("redis.script_flush".into(), Denied, redis(&[&["SCRIPT", "FLUSH"]])),
        ("redis.function_list".into(), Denied, redis(&[&["FUNCTION", "LIST"]])),
        ("redis.function_delete".into(), Denied, redis(&[&["FUNCTION", "DELETE", "pd_isolation"]])),
        ("redis.memory_purge".into(), Denied, redis(&[&["MEMORY", "PURGE"]])),
        ("redis.memory_stats".into(), Denied, redis(&[&["MEMORY", "STATS"]])),
        ("redis.pubsub_channels".into(), Denied, redis(&[&["PUBSUB", "CHANNELS"]])),
        ("redis.psubscribe_all".into(), Denied, redis(&[&["PSUBSCRIBE", "*"]])),
        ("redis.publish_b".into(), Denied, redis(&[&["PUBLISH", &format!("wp_{b}:x"), "x"]])),
        ("redis.config_get".into(), Denied, redis(&[&["CONFIG", "GET", "*"]])),
        ("redis.info".into(), Denied, redis(&[&["INFO"]])),
        ("redis.acl_list".into(), Denied, redis(&[&["ACL", "LIST"]])),
        ("redis.flushall".into(), Denied, redis(&[&["FLUSHALL"]])),
        ("redis.sync".into(), Denied, redis(&[&["SYNC"]])),
        ("redis.replconf".into(), Denied, redis(&[&["REPLCONF", "listening-port", "1"]])),
        ("redis.anonymous.master".into(), Denied, redis_at("@master", 0, "none", false, &[&["PING"]])),
        // Sentinel: no anonymous access; A's user finds the master and does nothing else.
        ("sentinel.site.set".into(), Denied, redis_at("@sentinel0", 0, "site", false, &[&["SENTINEL", "SET", "pressdock", "down-after-milliseconds", "1000"]])),
        ("sentinel.site.masters".into(), Denied, redis_at("@sentinel0", 0, "site", false, &[&["SENTINEL", "MASTERS"]])),
        ("sentinel.site.replicas".into(), Denied, redis_at("@sentinel0", 0, "site", false, &[&["SENTINEL", "REPLICAS", "pressdock"]])),
        ("sentinel.site.acl_list".into(), Denied, redis_at("@sentinel0", 0, "site", false, &[&["ACL", "LIST"]])),
        ("sentinel.anonymous.set".into(), Denied, redis_at("@sentinel0", 0, "none", false, &[&["SENTINEL", "SET", "pressdock", "down-after-milliseconds", "1000"]])),
        // Files: B's directory, the volume root, secrets, the docker socket, root's /proc.
        ("files.gluster.mounts".into(), Closed, How::Php(json!({ "kind": "mounts", "own_root": format!("/{a}") }))),
        ("files.b.wp_content".into(), Closed, file(&format!("@wp_content/../{b}"), "exists")),
        ("files.b.node_mount".into(), Closed, file(&format!("{STATE}/nodes/pdlab-{}/sites/{b}", c.a.node.name), "exists")),
        ("files.secret.agent_token".into(), Denied, file("/run/secrets/agent_token", "read")),
        ("files.secret.admin_password".into(), Denied, file("/run/secrets/admin_password", "read")),
        ("files.secret.db_password_file".into(), Denied, file("/run/secrets/db_password", "read")),
        ("files.secret.scan".into(), Closed, procs("secret_scan", json!({ "needles": c.needles }))),
        ("files.docker_socket".into(), Closed, file("/var/run/docker.sock", "exists")),
        ("files.docker_socket.run".into(), Closed, file("/run/docker.sock", "exists")),
        ("files.containerd_socket".into(), Closed, file("/run/containerd/containerd.sock", "exists")),
        ("files.proc.root_processes".into(), Closed, procs("root_environ", json!({}))),
        // Privileges of what PHP runs and can start.
        ("priv.www_data.capabilities".into(), Closed, procs("www_caps", json!({}))),
        ("priv.www_data.no_new_privs".into(), Closed, procs("www_nnp", json!({}))),
        ("priv.task.capabilities".into(), Closed, procs("caps_within", json!({}))),
        ("priv.setuid_binaries".into(), Closed, procs("setuid", json!({}))),
        ("priv.task.seccomp".into(), Closed, procs("seccomp", json!({}))),
        // The network: other tasks, the data tier's back doors, the cluster's ports.
        ("net.b.http".into(), Closed, http(&c.b_ip, 80, &c.b.domain, "/", json!("any"))),
        ("net.b.agent_readyz".into(), Closed, http(&c.b_ip, 9180, &c.b_ip, "/readyz", json!("any"))),
        ("net.b.agent_metrics".into(), Closed, http(&c.b_ip, 9180, &c.b_ip, "/metrics", json!("any"))),
        ("net.s3.unsigned_list_buckets".into(), Closed, http(s3_host, *s3_port, s3_host, "/", json!([200]))),
        ("net.s3.unsigned_list_backups".into(), Closed, http(s3_host, *s3_port, s3_host, &format!("/{bucket}"), json!([200]))),
        ("net.glusterd".into(), Closed, tcp(HOST_IP, ports::GLUSTERD, "gluster")),
        ("net.gluster.mount_volume".into(), Closed, How::GlusterMount),
        ("net.router.stats".into(), Closed, http(HOST_IP, ports::HAPROXY_STATS, HOST_IP, "/", json!("any"))),
        ("net.platform.api".into(), Closed, http(HOST_IP, ports::PLATFORM, HOST_IP, "/readyz", json!("any"))),
        ("net.platform.edge_config".into(), Closed, http(HOST_IP, ports::PLATFORM_EDGE, HOST_IP, "/edge/traefik.json", json!("any"))),
        ("net.acme.directory".into(), Closed, http(HOST_IP, ports::PEBBLE, HOST_IP, "/dir", json!("any"))),
        ("net.acme.management".into(), Closed, http(HOST_IP, ports::PEBBLE_MANAGEMENT, HOST_IP, "/", json!("any"))),
        ("net.acme.dns_management".into(), Closed, http(HOST_IP, ports::CHALLTEST_MANAGEMENT, HOST_IP, "/", json!("any"))),
        ("net.platform.api_on_agent_listener".into(), Closed, http(agent_host, *agent_port, agent_host, "/v1/tenants", json!([200, 401]))),
        ("net.cloud_metadata".into(), Closed, http("169.254.169.254", 80, "169.254.169.254", "/metadata/v1/", json!("any"))),
        ("net.gateway.swarm_gossip".into(), Closed, tcp("@gateway", 7946, "raw")),
        ("net.gateway.docker_tcp".into(), Closed, tcp("@gateway", 2375, "raw")),
    ];
    for (i, (host, port)) in c.galera.iter().enumerate() {
        let n = i + 1;
        let gcomm = port + (ports::GALERA_GCOMM - ports::GALERA_SQL);
        let ist = port + (ports::GALERA_IST - ports::GALERA_SQL);
        let sst = port + (ports::GALERA_SST - ports::GALERA_SQL);
        v.push((format!("net.galera{n}.sql_login"), Closed, mysql_login(host, *port, None)));
        v.push((format!("net.galera{n}.gcomm"), Closed, tcp(host, gcomm, "raw")));
        v.push((format!("net.galera{n}.ist"), Closed, tcp(host, ist, "raw")));
        v.push((format!("net.galera{n}.sst"), Closed, tcp(host, sst, "raw")));
    }
    for (i, addr) in c.redis_replicas.iter().enumerate() {
        let (host, port) = split_addr(addr);
        v.push((format!("redis.replica{i}.anonymous"), Denied, redis_at(&host, port, "none", false, &[&["PING"]])));
        v.push((format!("redis.replica{i}.sync"), Denied, redis_at(&host, port, "site", false, &[&["SYNC"]])));
    }
    for i in 0..3 {
        v.push((format!("sentinel{i}.anonymous"), Denied, tcp(&format!("@sentinel{i}"), 0, "redis")));
    }
    for addr in &c.varnish_admin {
        let (host, port) = split_addr(addr);
        v.push((format!("net.varnish_admin.{host}"), Closed, tcp(&host, port, "varnish")));
    }
    for port in &c.gluster_bricks {
        v.push((format!("net.gluster.brick.{port}"), Closed, tcp(HOST_IP, *port, "gluster")));
    }
    for n in &c.nodes {
        if n.manager {
            v.push((format!("net.{}.swarm_manager_2377", n.name), Closed, tcp(&n.ip, 2377, "raw")));
            // Traefik's metrics: every site's request counts (the edge collector's input).
            for port in [ports::EDGE_METRICS, ports::EDGE_METRICS_B] {
                v.push((format!("net.{}.edge_metrics_{port}", n.name), Closed, http(&n.ip, port, &n.ip, "/metrics", json!("any"))));
            }
        }
        v.push((format!("net.{}.swarm_gossip_7946", n.name), Closed, tcp(&n.ip, 7946, "raw")));
        v.push((format!("net.{}.docker_2375", n.name), Closed, tcp(&n.ip, 2375, "raw")));
        v.push((format!("net.{}.docker_tls_2376", n.name), Closed, tcp(&n.ip, 2376, "raw")));
    }
    v.into_iter()
        .map(|(name, expect, how)| Probe { name, expect, how })
        .collect()
}

fn split_addr(addr: &str) -> (String, u16) {
    let (h, p) = addr.rsplit_once(':').unwrap();
    (h.to_owned(), p.parse().unwrap())
}

fn enabled() -> bool {
    e2e::lab_tests_enabled(&Path::new(STATE).join("lab.toml"))
}

fn read_toml(path: &str) -> toml::Table {
    e2e::read_toml(Path::new(path))
}

/// `docker -H <host> <args>`, which must succeed: its stdout, trimmed.
fn docker(host: &str, args: &[&str]) -> String {
    e2e::docker_stdout(&e2e::sock_of(host), args)
}

/// The lab's platform API, as its staff admin, and a `pressdock serve` of ours when the
/// lab's own was not running (kept until dropped).
async fn connect(
    lab: &toml::Table,
    config: &toml::Table,
) -> (e2e::Api, Option<tokio::process::Child>) {
    let base = lab["platform_url"].as_str().unwrap().to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let ready = |http: reqwest::Client, base: String| async move {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    let mut own = None;
    if !ready(http.clone(), base.clone()).await {
        // Stopped by another lab test: run one on the lab's config for this test.
        let bin = e2e::pressdock_binary();
        eprintln!(
            "the lab's platform is not running: starting {}",
            bin.display()
        );
        let child = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--config",
                lab["platform_config"].as_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        own = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(http.clone(), base.clone()).await {
            assert!(
                Instant::now() < deadline,
                "pressdock serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let boot = config["bootstrap"].as_table().unwrap();
    let api = e2e::Api::login(
        http,
        &base,
        boot["admin_email"].as_str().unwrap(),
        boot["admin_password"].as_str().unwrap(),
    )
    .await;
    (api, own)
}

/// Waits until the site is active: created, and its agent reported WordPress ready.
async fn wait_active(api: &e2e::Api, site: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, body) = api
            .call(reqwest::Method::GET, &format!("/v1/sites/{site}"), None)
            .await;
        if body["state"] == "active" {
            return;
        }
        assert!(
            body["state"] != "failed" && Instant::now() < deadline,
            "site {site} did not become active: {body}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The running container of a site's service and the node it runs on.
fn locate(manager: &str, nodes: &[LabNode], site: &str) -> (LabNode, String) {
    let service = format!("wp_{site}");
    let host = docker(
        manager,
        &[
            "service",
            "ps",
            &service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}",
        ],
    );
    let host = host.lines().next().unwrap_or_default().to_owned();
    let node = nodes
        .iter()
        .find(|n| format!("pdlab-{}", n.name) == host)
        .unwrap_or_else(|| panic!("{service} runs on {host:?}, not a lab node"))
        .clone();
    let container = e2e::find_container(
        &[e2e::sock_of(&node.docker_host)],
        &format!("label=com.docker.swarm.service.name={service}"),
    )
    .unwrap_or_else(|| panic!("no running container of {service} on {host}"));
    (node, container.id)
}

/// Replicas of the Redis master, as the lab's Sentinels (admin user) list them.
async fn redis_replicas(config: &toml::Table) -> Vec<String> {
    let r = config["backends"]["redis"].as_table().unwrap();
    let sentinel = r["sentinels"][0].as_str().unwrap();
    let user = r["sentinel_user"].as_str().unwrap();
    let password = r["sentinel_password"].as_str().unwrap();
    let client = redis::Client::open(format!("redis://{user}:{password}@{sentinel}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(r["master_name"].as_str().unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    replicas
        .into_iter()
        .filter_map(|kv| {
            let get = |k: &str| kv.iter().position(|x| x == k).and_then(|i| kv.get(i + 1));
            Some(format!("{}:{}", get("ip")?, get("port")?))
        })
        .collect()
}

/// The edge answers A's home page with A's title.
async fn probe_edge(edge: &str, site: &Site) -> (Observed, String) {
    // Over HTTPS once the domain has its certificate (the edge redirects).
    match e2e::edge_get(&site.domain, "/").await {
        Ok((status, body)) => {
            let detail = format!("{edge}/ Host {}: {status}", site.domain);
            if status == 200 && body.contains(&site.title) {
                (
                    Observed::Open,
                    format!("{detail}, the body has the site's title"),
                )
            } else {
                (
                    Observed::Denied,
                    format!("{detail}, the body lacks the title ({} bytes)", body.len()),
                )
            }
        }
        Err(e) => (Observed::Unreachable, format!("{edge}: {e}")),
    }
}

/// A GlusterFS client in A's network namespace tries to mount the whole volume, as a
/// tenant that brought one would: from A's address, without the storage clients' TLS
/// identity (the host's `/etc/ssl`, `/usr/lib/ssl` and `/var/lib/glusterd` are hidden by
/// tmpfs in a mount namespace of the probe's own, where the mount, if any, lives and dies).
fn probe_gluster_mount(pid: &str, b: &str) -> (Observed, String) {
    for tool in ["nsenter", "unshare", "glusterfs"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return (
                Observed::Missing,
                format!("{tool} is not installed on the host"),
            );
        }
    }
    // The client either mounts or gives up; 30 s bound one that keeps retrying.
    let script = format!(
        r#"mnt=$(mktemp -d); log="$mnt.log"
for d in /etc/ssl /usr/lib/ssl /var/lib/glusterd; do [ -d "$d" ] && mount -t tmpfs pd-isolation "$d"; done
glusterfs -N --volfile-server={HOST_IP} --volfile-id=sites --log-file="$log" "$mnt" &
client=$!
i=0
while [ $i -lt 150 ]; do
  if grep " $mnt " /proc/self/mountinfo | grep -q glusterfs; then
    echo MOUNTED; timeout 10 ls "$mnt"; break
  fi
  kill -0 $client 2>/dev/null || break
  sleep 0.2; i=$((i+1))
done
kill -9 $client 2>/dev/null; wait $client 2>/dev/null
umount -l "$mnt" 2>/dev/null
echo LOG; grep -E '\] E \[|mgmt_rpc_notify|failed|refused|SSL' "$log" | tail -n 3
rm -rf "$mnt" "$log""#
    );
    let out = Command::new("timeout")
        .args(["60", "nsenter"])
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (listing, log) = text.split_once("LOG\n").unwrap_or((&text, ""));
    // FUSE shows the mount before the client has reached a server: only a listing (the
    // volume's root holds every site's directory, A's at least) means it got in.
    if let Some(names) = listing
        .strip_prefix("MOUNTED\n")
        .filter(|names| !names.trim().is_empty())
    {
        let dirs = names.lines().count();
        let b_there = if names.lines().any(|l| l == b) {
            ", B's among them"
        } else {
            ""
        };
        return (
            Observed::Open,
            format!(
                "mounted the volume from A's network namespace without TLS identity: {dirs} entries{b_there}"
            ),
        );
    }
    // What the client said last, without its timestamps and source locations.
    let said: Vec<&str> = log
        .lines()
        .map(|l| l.rfind("] ").map_or(l, |i| &l[i + 2..]))
        .collect();
    let last = if said.is_empty() {
        "no reason logged".to_owned()
    } else {
        said.join("; ").chars().take(200).collect()
    };
    let refused = [
        "AUTH_FAILED",
        "uthentication failed",
        "not allowed",
        "SSL",
        "ssl",
    ];
    if refused.iter().any(|r| log.contains(r)) {
        (Observed::Denied, format!("mount refused: {last}"))
    } else {
        (Observed::Unreachable, format!("not mounted: {last}"))
    }
}

/// Runs the php-fpm probes through a driver in A's container; one line per probe.
async fn run_php(site: &Site, file: &str, probes: &[(&str, &Value)]) -> Vec<Value> {
    let input = json!({
        "url": format!("http://127.0.0.1/wp-content/{file}"),
        "probes": probes.iter().map(|(name, req)| json!({ "name": name, "request": req })).collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new(infra::lab::DOCKER)
        .args([
            "-H",
            &site.node.docker_host,
            "exec",
            "-i",
            "-u",
            "www-data",
            &site.container,
        ])
        .args(["php", "-r", DRIVER_PHP])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "the probe driver failed in A's container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|_| json!({ "observed": "error", "detail": l }))
        })
        .collect()
}

fn table(outcomes: &[&Outcome]) -> String {
    let w = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = format!(
        "{:w$}  {:8}  {:11}  detail\n",
        "probe", "expected", "observed"
    );
    for o in outcomes {
        let mark = if o.expect.admits(o.observed) {
            ' '
        } else {
            '!'
        };
        let _ = writeln!(
            s,
            "{:w$}  {:8}  {:11}{mark} {}",
            o.name,
            o.expect.as_str(),
            o.observed.as_str(),
            o.detail
        );
    }
    s
}

#[tokio::test]
async fn a_sites_code_reaches_only_its_own_database_cache_and_files() {
    if !enabled() {
        return;
    }
    let started = Instant::now();
    let lab = read_toml(&format!("{STATE}/lab.toml"));
    let config = read_toml(lab["platform_config"].as_str().unwrap());
    let manager = lab["manager_docker_host"].as_str().unwrap().to_owned();
    let nodes: Vec<LabNode> = lab["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| LabNode {
            name: n["name"].as_str().unwrap().to_owned(),
            ip: n["ip"].as_str().unwrap().to_owned(),
            docker_host: n["docker_host"].as_str().unwrap().to_owned(),
            manager: n["name"].as_str().unwrap().starts_with('m'),
        })
        .collect();
    let (api, _own) = connect(&lab, &config).await;

    // A fresh tenant with two sites.
    let suffix = random();
    let tenant = api
        .create_tenant(&format!("iso-{suffix}"), "Isolation suite")
        .await;
    let mut created = Vec::new();
    for which in ["a", "b"] {
        let domain = format!("iso-{which}-{suffix}.lab.test");
        let title = format!("Isolation {which} {suffix}");
        let body = api.create_site(&tenant, &title, &domain).await;
        created.push((body, domain, title));
    }
    for (body, _, _) in &created {
        api.succeeds(body).await;
        wait_active(&api, body["site"]["id"].as_str().unwrap()).await;
    }
    let provisioned = started.elapsed();
    let admin_password = created[0].0["admin"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sites = created.into_iter().map(|(body, domain, title)| {
        let id = body["site"]["id"].as_str().unwrap().to_owned();
        let (node, container) = locate(&manager, &nodes, &id);
        Site {
            id,
            domain,
            title,
            node,
            container,
        }
    });
    let (a, b) = (sites.next().unwrap(), sites.next().unwrap());
    eprintln!(
        "site A {} on {} ({}), site B {} on {} ({}), active after {provisioned:.1?}",
        a.id, a.node.name, a.domain, b.id, b.node.name, b.domain
    );

    let b_ip = docker(
        &b.node.docker_host,
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"pd-sites\").IPAddress}}",
            &b.container,
        ],
    );
    let a_pid = docker(
        &a.node.docker_host,
        &["inspect", "-f", "{{.State.Pid}}", &a.container],
    );
    // Read as root by the test: the values no place readable by www-data may hold.
    let agent_token = docker(
        &a.node.docker_host,
        &["exec", &a.container, "cat", "/run/secrets/agent_token"],
    );
    assert!(agent_token.len() >= 16, "A's agent token");
    let galera: Vec<(String, u16)> = config["backends"]["galera"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| split_addr(n.as_str().unwrap()))
        .collect();
    let s3_endpoint = config["backends"]["s3"]["endpoint"].as_str().unwrap();
    let (s3_host, s3_port) = split_addr(s3_endpoint.trim_start_matches("http://"));
    let agent_url = config["agent"]["control_url"].as_str().unwrap();
    let ctx = Ctx {
        b_ip,
        nodes: nodes.clone(),
        galera,
        redis_replicas: redis_replicas(&config).await,
        varnish_admin: config["backends"]["varnish"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_owned())
            .collect(),
        s3: (
            s3_host,
            s3_port,
            config["backends"]["s3"]["bucket"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        agent_listener: split_addr(agent_url.trim_start_matches("http://")),
        gluster_bricks: e2e::gluster_bricks(),
        needles: json!({ "A's agent token": agent_token, "A's admin password": admin_password }),
        probe_user: format!("pdiso_{suffix}"),
        a,
        b,
    };

    // The probe, where a plugin would be.
    let probe_file = format!("pd-isolation-{suffix}.php");
    let mut put = Command::new(infra::lab::DOCKER)
        .args([
            "-H",
            &ctx.a.node.docker_host,
            "exec",
            "-i",
            "-u",
            "www-data",
            &ctx.a.container,
        ])
        .args([
            "sh",
            "-c",
            &format!("cat > \"$PRESSDOCK_WP_CONTENT/{probe_file}\""),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        put.stdin
            .take()
            .unwrap()
            .write_all(PROBE_PHP.as_bytes())
            .unwrap();
    }
    assert!(
        put.wait().unwrap().success(),
        "writing the probe into A's wp-content"
    );

    let list = probes(&ctx);
    let php: Vec<(&str, &Value)> = list
        .iter()
        .filter_map(|p| match &p.how {
            How::Php(req) => Some((p.name.as_str(), req)),
            _ => None,
        })
        .collect();
    let probing = Instant::now();
    let answers = run_php(&ctx.a, &probe_file, &php).await;
    let mut outcomes = Vec::new();
    for p in &list {
        let (observed, detail) = match &p.how {
            How::Php(_) => match answers.iter().find(|a| a["name"] == p.name.as_str()) {
                Some(a) => (
                    Observed::parse(a["observed"].as_str().unwrap_or("")),
                    a["detail"].as_str().unwrap_or("").to_owned(),
                ),
                None => (Observed::Error, "no answer from the driver".to_owned()),
            },
            How::Edge => probe_edge(lab["edge_url"].as_str().unwrap(), &ctx.a).await,
            How::GlusterMount => {
                let (pid, b) = (a_pid.clone(), ctx.b.id.clone());
                tokio::task::spawn_blocking(move || probe_gluster_mount(&pid, &b))
                    .await
                    .unwrap()
            }
        };
        outcomes.push(Outcome {
            name: p.name.clone(),
            expect: p.expect,
            observed,
            detail,
        });
    }
    let probed = probing.elapsed();

    // Clean up: the probe, a user a grant probe may have made, the sites, the tenant.
    let _ = Command::new(infra::lab::DOCKER)
        .args([
            "-H",
            &ctx.a.node.docker_host,
            "exec",
            "-u",
            "www-data",
            &ctx.a.container,
        ])
        .args([
            "sh",
            "-c",
            &format!("rm -f \"$PRESSDOCK_WP_CONTENT/{probe_file}\""),
        ])
        .status();
    if let Some(admin) = config["backends"]["galera"]["admin_url"].as_str()
        && let Ok(pool) = mysql_async::Opts::from_url(admin).map(mysql_async::Pool::new)
    {
        use mysql_async::prelude::Queryable;
        if let Ok(mut conn) = pool.get_conn().await {
            let _ = conn
                .query_drop(format!("DROP USER IF EXISTS '{}'@'%'", ctx.probe_user))
                .await;
        }
        let _ = pool.disconnect().await;
    }
    if std::env::var("PRESSDOCK_ISOLATION_KEEP").as_deref() != Ok("1") {
        for site in [&ctx.a.id, &ctx.b.id] {
            let (status, body) = api
                .call(reqwest::Method::DELETE, &format!("/v1/sites/{site}"), None)
                .await;
            assert_eq!(status, 202, "{body}");
            api.succeeds(&body).await;
        }
        let (status, body) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/tenants/{tenant}"),
                None,
            )
            .await;
        assert!(status < 300, "deleting the tenant: {status} {body}");
    }

    let shown = table(&outcomes.iter().collect::<Vec<_>>());
    println!("{shown}");
    let open: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.observed == Observed::Open && o.expect != Expect::Open)
        .map(|o| o.name.as_str())
        .collect();
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.expect.admits(o.observed))
        .collect();
    eprintln!(
        "{} probes in {probed:.1?} ({} open that must be closed); whole suite {:.1?}",
        outcomes.len(),
        open.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {} probes are not as expected (open that must be closed: {open:?}):\n{}",
        failed.len(),
        outcomes.len(),
        table(&failed)
    );
}
