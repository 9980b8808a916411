//! The platform's configuration for production (`cluster platform-config`): the cluster of
//! the spec described for [`crate::platform_config::render`], the renderer the lab's
//! configuration goes through too, from the spec and the droplets' VPC addresses.
//!
//! Where each part is (all at VPC addresses, the ports each role's firewall admits from
//! managers, `configs/cluster.toml`):
//! - the control-plane database and the sites' database: ProxySQL on the first database
//!   node, `:6033`; every ProxySQL's admin interface `:6032` (assumed published in host mode
//!   on each database node by the database stack, as the cache stack publishes Redis);
//! - the cache stack's Sentinels (`stacks/cache.yml`): every cache node `:26379`, master
//!   `pd-cache`, the stack's `default` user and its password (the swarm secret
//!   `cache_redis_password`);
//! - the Gluster volume `sites` (`cluster::storage`), mounted at `/mnt/sites` on every
//!   manager and worker, its glusterd the first storage node's;
//! - Varnish (`stacks/edge.yml`): every cache node's admin CLI at `:16082`, its `-S` secret
//!   the swarm secret `pd_varnish_secret`; inline VCL mode (the instances run on the cache
//!   nodes: no folder is shared with the platform), misses to `traefik:8081` as
//!   `configs/varnish/backend.vcl` says;
//! - the swarm: the manager's own docker socket; the sites' runtime, `images.wordpress`;
//! - S3: the spec's `[backups]`.
//!
//! No credential is written: each is `{ file = "<secrets_dir>/<name>" }` ([`SECRET_FILES`]),
//! read by the platform at start; `/run/secrets` (the default) is where a swarm service sees
//! its secrets, and where the operator puts the files for a platform run as a host process.
use super::spec::{Checked, Role};
use super::swarm::Machine;
use crate::platform_config::{
    Cred, Galera, Gluster, PlatformCluster, Redis, S3, Swarm, Varnish, VclMode,
};
use anyhow::{Result, bail};

/// The files the production configuration refers to (name under the secrets folder, what
/// it holds). `<node>` is a database node's name.
pub const SECRET_FILES: &[(&str, &str)] = &[
    (
        "pressdock_database_url",
        "mysql://pressdock:PASSWORD@<database-01 VPC address>:6033/pressdock (the control plane's database, through ProxySQL)",
    ),
    (
        "pressdock_secret_key",
        "32+ random bytes, base64: signs access tokens, encrypts site secrets",
    ),
    (
        "pressdock_galera_admin_url",
        "mysql://USER:PASSWORD@<database-01 VPC address>:6033 (creates the sites' databases and users)",
    ),
    (
        "pressdock_proxysql_admin_url_<node>",
        "mysql://admin:PASSWORD@<node's VPC address>:6032 (one per database node)",
    ),
    (
        "cache_redis_password",
        "the cache stack's Redis and Sentinel password (the swarm secret `cache` made from PD_REDIS_PASSWORD_FILE)",
    ),
    (
        "pd_varnish_secret",
        "the Varnish -S secret (the swarm secret the edge stack made from PD_VARNISH_SECRET)",
    ),
    (
        "pressdock_s3_access_key",
        "the platform's S3 access key id (its own key pair, on the spec's [backups] bucket)",
    ),
    ("pressdock_s3_secret_key", "its secret key"),
];

/// The API on each manager's loopback (operators reach it over SSH, `ssh -L`), as the lab's.
pub const API_PORT: u16 = crate::lab::ports::PLATFORM;
/// The agents' listener on every manager (the spec admits workers there, and their guards
/// let site tasks reach it).
pub const AGENT_PORT: u16 = 8081;
/// ProxySQL's client and admin ports on the database nodes.
pub const PROXYSQL_PORT: u16 = 6033;
pub const PROXYSQL_ADMIN_PORT: u16 = 6032;
/// Where stacks/cache.yml publishes the Sentinels, and stacks/edge.yml Varnish's CLI.
pub const SENTINEL_PORT: u16 = crate::lab::nodes::CACHE_SENTINEL_PORT;
pub const VARNISH_ADMIN_PORT: u16 = crate::lab::ports::VARNISH_ADMIN;

/// The production cluster as the platform sees it: `machines` are the droplets with their
/// VPC addresses (`cluster::swarm::machines`), `secrets_dir` where the credential files are.
pub fn production(c: &Checked, machines: &[Machine], secrets_dir: &str) -> Result<PlatformCluster> {
    let of = |role: Role| -> Vec<&Machine> {
        let mut v: Vec<&Machine> = machines.iter().filter(|m| m.role == role).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    let (managers, cache, database, storage) = (
        of(Role::Manager),
        of(Role::Cache),
        of(Role::Database),
        of(Role::Storage),
    );
    for (role, v) in [
        (Role::Manager, &managers),
        (Role::Cache, &cache),
        (Role::Database, &database),
        (Role::Storage, &storage),
    ] {
        if v.is_empty() {
            bail!(
                "no {} node with an address: run `cluster apply` first",
                role.as_str()
            );
        }
    }
    let dir = secrets_dir.trim_end_matches('/');
    if !dir.starts_with('/') {
        bail!("--secrets-dir {secrets_dir:?}: an absolute path");
    }
    let file = |name: &str| Cred::File(format!("{dir}/{name}"));
    let router = format!("{}:{PROXYSQL_PORT}", database[0].private_ip);
    let spec = &c.spec;
    Ok(PlatformCluster {
        header: format!(
            "Written by `pressdock-infra cluster platform-config` from the spec {name} and its\n\
             droplets' VPC addresses: the platform on the managers. No credential is in this file:\n\
             each is read at start from a file under {dir} (a swarm secret, or a file the\n\
             operator wrote, 0600; infra/README.md, \"The platform's configuration\").",
            name = spec.name
        ),
        listen: format!("127.0.0.1:{API_PORT}"),
        database_url: file("pressdock_database_url"),
        secret_key: file("pressdock_secret_key"),
        // The first staff admin: PRESSDOCK_BOOTSTRAP_ADMIN_EMAIL/_PASSWORD on the first start.
        bootstrap: None,
        agent_listen: format!("0.0.0.0:{AGENT_PORT}"),
        agent_control_url: format!("http://{}:{AGENT_PORT}", managers[0].private_ip),
        galera: Galera {
            admin_url: file("pressdock_galera_admin_url"),
            router: "proxysql".into(),
            proxysql_admin_urls: database
                .iter()
                .map(|m| file(&format!("pressdock_proxysql_admin_url_{}", m.name)))
                .collect(),
            site_db_host: router,
            // MariaDB's 3306 admits database nodes only (the spec's firewall): not listed.
            nodes: Vec::new(),
            note: format!(
                "ProxySQL on every database node (the database stack, host-mode ports {PROXYSQL_PORT} and\n\
                 {PROXYSQL_ADMIN_PORT}): the platform and the sites through the first; each site's user written\n\
                 to every ProxySQL's admin interface. MariaDB itself (3306) admits database nodes only."
            ),
        },
        redis: Redis {
            sentinels: cache
                .iter()
                .map(|m| format!("{}:{SENTINEL_PORT}", m.private_ip))
                .collect(),
            master_name: crate::lab::nodes::CACHE_MASTER_NAME.into(),
            admin_user: None,
            admin_password: file("cache_redis_password"),
            sentinel_user: None,
            sentinel_password: file("cache_redis_password"),
            note: crate::lab::platform::CACHE_STACK_REDIS_NOTE.into(),
        },
        gluster: Gluster {
            remote_host: storage[0].private_ip.to_string(),
            volume: super::storage::VOLUME.into(),
            mount: super::storage::CLIENT_MOUNT.into(),
            node_mount: super::storage::CLIENT_MOUNT.into(),
            spares: 0,
            note: format!(
                "The volume of cluster::storage, mounted at {m} on every manager and worker\n\
                 (/etc/fstab); the gluster CLI on the manager asks {s}'s glusterd.",
                m = super::storage::CLIENT_MOUNT,
                s = storage[0].name
            ),
        },
        varnish: Varnish {
            instances: cache
                .iter()
                .map(|m| {
                    (
                        format!("{}:{VARNISH_ADMIN_PORT}", m.private_ip),
                        format!("{dir}/pd_varnish_secret"),
                    )
                })
                .collect(),
            mode: VclMode::Inline {
                backend_host: "traefik".into(),
                backend_port: 8081,
            },
        },
        swarm: Swarm {
            docker_host: "unix:///var/run/docker.sock".into(),
            runtime_image: c.images.runtime_image().to_owned(),
            site_network: crate::lab::SITES_NET.into(),
            edge_network: crate::lab::EDGE_NET.into(),
            cert_resolver: String::new(),
            websecure_entrypoint: String::new(),
            net_guard_wait_secs: 30,
        },
        s3: spec.backups.as_ref().map(|b| S3 {
            endpoint: b.endpoint.clone(),
            bucket: b.bucket.clone(),
            region: b.region.clone(),
            access_key: file("pressdock_s3_access_key"),
            secret_key: file("pressdock_s3_secret_key"),
            force_path_style: b.force_path_style,
            note: "The spec's [backups]; the platform's own key pair, never a site's.".into(),
        }),
        // HTTPS (Let's Encrypt through the edge's HTTP provider) is not written for
        // production yet: it needs the edge's token and the platform's edge listener.
        certs: None,
        edge_metrics: managers
            .iter()
            .flat_map(|m| {
                [
                    crate::lab::ports::EDGE_METRICS,
                    crate::lab::ports::EDGE_METRICS_B,
                ]
                .map(|p| format!("http://{}:{p}/metrics", m.private_ip))
            })
            .collect(),
        final_backup: true,
    })
}

/// Where `cluster swarm` and `cluster apply --swarm` put the configuration on every manager
/// (`pressdock serve --config /etc/pressdock/pressdock.toml`).
pub const MANAGER_PATH: &str = "/etc/pressdock/pressdock.toml";

/// Writes `text` to [`MANAGER_PATH`] on every manager whose copy differs (over `sh`, SSH in
/// production), by a rename so that a platform starting meanwhile reads the old or the new
/// file, never half of one. Returns the managers written; a second run writes none. The
/// text holds no credential ([`production`]), so it may travel on a command line.
pub fn install(
    sh: &impl super::storage::Shell,
    machines: &[Machine],
    text: &str,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for m in machines.iter().filter(|m| m.role == Role::Manager) {
        let argv = |script: &str, arg: Option<&str>| -> Vec<String> {
            let mut v = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
            if let Some(a) = arg {
                v.push("sh".into());
                v.push(a.to_owned());
            }
            v
        };
        let now = sh.run(
            m,
            &argv(&format!("cat {MANAGER_PATH} 2>/dev/null || true"), None),
        )?;
        if now == text {
            continue;
        }
        sh.run(
            m,
            &argv(
                &format!(
                    "mkdir -p /etc/pressdock && printf %s \"$1\" > {MANAGER_PATH}.tmp && \
                     mv {MANAGER_PATH}.tmp {MANAGER_PATH}"
                ),
                Some(text),
            ),
        )?;
        written.push(m.name.clone());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform_config::render;

    /// Every file of [`SECRET_FILES`] for the spec's machines, each holding a value of its
    /// own that the rendered configuration must not contain.
    fn secret_files(dir: &std::path::Path, machines: &[Machine]) -> Vec<String> {
        let mut values = Vec::new();
        for (name, _) in SECRET_FILES {
            let names: Vec<String> = if name.ends_with("<node>") {
                machines
                    .iter()
                    .filter(|m| m.role == Role::Database)
                    .map(|m| name.replace("<node>", &m.name))
                    .collect()
            } else {
                vec![(*name).to_owned()]
            };
            for n in names {
                let value = match n.as_str() {
                    "pressdock_database_url" => {
                        "mysql://pressdock:db-pw-7f3a@10.110.0.1:6033/pressdock".to_owned()
                    }
                    "pressdock_secret_key" => "k".repeat(43) + "=",
                    "pressdock_galera_admin_url" => {
                        "mysql://pdadmin:adm-pw-91c2@10.110.0.1:6033".into()
                    }
                    x if x.starts_with("pressdock_proxysql_admin_url_") => {
                        format!("mysql://admin:px-pw-{x}@10.110.0.1:6032")
                    }
                    x => format!("secret-of-{x}-5d1e"),
                };
                std::fs::write(dir.join(&n), format!("{value}\n"))
                    .unwrap_or_else(|e| panic!("{e}"));
                values.push(value);
            }
        }
        values
    }

    #[test]
    fn the_production_config_is_the_platforms_and_holds_no_credential() {
        let (c, ms) = crate::cluster::swarm::tests::setup();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap_or_else(|e| panic!("{e}"));
        let values = secret_files(&secrets, &ms);
        let text = render(
            &production(&c, &ms, &secrets.display().to_string()).unwrap_or_else(|e| panic!("{e}")),
        );
        for v in &values {
            assert!(!text.contains(v.as_str()), "{v} is in the file:\n{text}");
        }
        assert!(
            !text.contains("mysql://") && !text.contains("password = \""),
            "{text}"
        );

        // The platform's own loader reads it (the top-level credentials from their files)…
        let path = dir.path().join("pressdock.toml");
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let config = platform::config::Config::load_from(Some(&path), &[])
            .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert_eq!(
            config.database_url.expose(),
            "mysql://pressdock:db-pw-7f3a@10.110.0.1:6033/pressdock"
        );
        assert_eq!(config.secret_key.expose().len(), 44);
        assert_eq!(config.listen.to_string(), "127.0.0.1:23500");
        let ip = |name: &str| {
            ms.iter()
                .find(|m| m.name == name)
                .map(|m| m.private_ip.to_string())
                .unwrap_or_default()
        };
        let m1 = ip("pd-prod-manager-01");
        assert_eq!(
            config.agent.control_url.as_deref(),
            Some(format!("http://{m1}:8081").as_str())
        );
        assert_eq!(config.billing.edge_metrics.len(), 6);
        assert!(config.backups.final_backup);
        // …and `pressdock config` prints the backends' references, not what they hold.
        let printed = toml::to_string(&config).unwrap_or_else(|e| panic!("{e}"));
        for v in &values {
            assert!(!printed.contains(v.as_str()), "{v} printed:\n{printed}");
        }

        // …and the drivers' sections, their credentials read from the files.
        let mut table = toml::Value::Table(config.backends.clone());
        platform::config::resolve_secret_files(&mut table, "backends")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let b: backends::config::BackendsConfig =
            table.try_into().unwrap_or_else(|e| panic!("{e}"));
        let g = b.galera.unwrap_or_else(|| panic!("galera"));
        assert_eq!(g.router, backends::config::RouterKind::Proxysql);
        let db1 = ip("pd-prod-database-01");
        assert_eq!(g.site_db_host, format!("{db1}:6033"));
        assert_eq!(g.proxysql_admin_urls.len(), 3);
        assert_eq!(
            g.proxysql_admin_urls[2].expose(),
            "mysql://admin:px-pw-pressdock_proxysql_admin_url_pd-prod-database-03@10.110.0.1:6032"
        );
        let r = b.redis.unwrap_or_else(|| panic!("redis"));
        let sentinels: Vec<String> = ["01", "02", "03"]
            .iter()
            .map(|n| format!("{}:26379", ip(&format!("pd-prod-cache-{n}"))))
            .collect();
        assert_eq!(r.sentinels, sentinels);
        assert_eq!(r.master_name, "pd-cache");
        assert_eq!(r.admin_user, None);
        assert_eq!(
            r.admin_password.map(|p| p.expose().to_owned()).as_deref(),
            Some("secret-of-cache_redis_password-5d1e")
        );
        let gl = b.gluster.unwrap_or_else(|| panic!("gluster"));
        assert_eq!(gl.remote_host, ip("pd-prod-storage-01"));
        assert_eq!(gl.volume, "sites");
        assert_eq!(gl.mount, std::path::Path::new("/mnt/sites"));
        assert_eq!(gl.node_mount, std::path::Path::new("/mnt/sites"));
        let v = b.varnish.unwrap_or_else(|| panic!("varnish"));
        assert_eq!(v.instances.len(), 3);
        assert_eq!(
            v.instances[0].address,
            format!("{}:16082", ip("pd-prod-cache-01"))
        );
        assert_eq!(
            v.instances[0].secret_file,
            secrets.join("pd_varnish_secret")
        );
        let vd = backends::varnish::VarnishDriver::new(&v).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            vd.mode(),
            backends::varnish::VclMode::Inline { .. }
        ));
        let s = b.swarm.unwrap_or_else(|| panic!("swarm"));
        assert_eq!(
            s.runtime_image,
            "registry.example.com/pressdock/wordpress:0.1.0"
        );
        assert_eq!(s.runtime_image, c.images.runtime_image());
        assert_eq!(
            (s.site_network.as_str(), s.edge_network.as_deref()),
            ("pd-sites", Some("pd-edge"))
        );
        let s3 = b.s3.unwrap_or_else(|| panic!("s3"));
        assert_eq!(
            (s3.endpoint.as_str(), s3.bucket.as_str(), s3.region.as_str()),
            (
                "https://fra1.digitaloceanspaces.com",
                "pd-prod-backups",
                "fra1"
            )
        );
        assert_eq!(s3.access_key, "secret-of-pressdock_s3_access_key-5d1e");
        assert_eq!(
            s3.secret_key.expose(),
            "secret-of-pressdock_s3_secret_key-5d1e"
        );
    }

    /// Managers' files in memory, as `sh -c` on them would leave them.
    #[derive(Default)]
    struct Files(std::cell::RefCell<std::collections::BTreeMap<String, String>>);

    impl crate::cluster::storage::Shell for Files {
        fn run(&self, m: &Machine, argv: &[String]) -> Result<String> {
            assert_eq!(m.role, Role::Manager, "{argv:?} on {}", m.name);
            let mut files = self.0.borrow_mut();
            match argv {
                [sh, c, script] if sh == "sh" && c == "-c" && script.starts_with("cat ") => {
                    Ok(files.get(&m.name).cloned().unwrap_or_default())
                }
                [sh, c, script, _, text] if sh == "sh" && c == "-c" && script.contains("mv ") => {
                    assert!(script.contains(MANAGER_PATH), "{script}");
                    files.insert(m.name.clone(), text.clone());
                    Ok(String::new())
                }
                _ => panic!("unexpected {argv:?}"),
            }
        }
    }

    #[test]
    fn every_manager_gets_the_file_once() {
        let (c, ms) = crate::cluster::swarm::tests::setup();
        let text = render(&production(&c, &ms, "/run/secrets").unwrap_or_else(|e| panic!("{e}")));
        let files = Files::default();
        let written = install(&files, &ms, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            written,
            [
                "pd-prod-manager-01",
                "pd-prod-manager-02",
                "pd-prod-manager-03"
            ]
        );
        assert!(files.0.borrow().values().all(|t| *t == text));
        assert!(
            install(&files, &ms, &text)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty()
        );
        let changed = text.replace("spares = 0", "spares = 1");
        assert_eq!(
            install(&files, &ms, &changed)
                .unwrap_or_else(|e| panic!("{e}"))
                .len(),
            3
        );
    }

    #[test]
    fn a_missing_credential_file_stops_the_platform_naming_the_key() {
        let (c, ms) = crate::cluster::swarm::tests::setup();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let text = render(
            &production(&c, &ms, &dir.path().display().to_string())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let path = dir.path().join("pressdock.toml");
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let err = platform::config::Config::load_from(Some(&path), &[]).expect_err("no files");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("database_url") && msg.contains("pressdock_database_url"),
            "{msg}"
        );
    }

    #[test]
    fn without_addresses_or_backups_it_says_what_is_missing() {
        let (c, ms) = crate::cluster::swarm::tests::setup();
        let no_cache: Vec<Machine> = ms
            .iter()
            .filter(|m| m.role != Role::Cache)
            .cloned()
            .collect();
        let e = production(&c, &no_cache, "/run/secrets").expect_err("no cache node");
        assert!(format!("{e}").contains("no cache node"), "{e}");
        assert!(
            production(&c, &ms, "run/secrets").is_err(),
            "relative secrets dir"
        );
        let (c, ms) = crate::cluster::swarm::tests::setup_with(&|t| {
            t.replace(
                "[backups]\nendpoint = \"https://fra1.digitaloceanspaces.com\"\nbucket = \"pd-prod-backups\"\nregion = \"fra1\"\n",
                "",
            )
        });
        let p = production(&c, &ms, "/run/secrets").unwrap_or_else(|e| panic!("{e}"));
        assert!(p.s3.is_none());
        assert!(!render(&p).contains("[backends.s3]"));
    }
}
