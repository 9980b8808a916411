//! The platform's configuration (`pressdock.toml`, read by `pressdock serve`) rendered from a
//! description of the cluster: where its database, router, Redis Sentinels, Gluster volume,
//! Varnish instances, swarm and S3 are. One renderer, [`render`], for the lab
//! (`lab::platform::config`, the lab's addresses and inline credentials) and for production
//! (`pressdock-infra cluster platform-config`, from `configs/cluster.toml` and the droplets'
//! addresses, every credential a file reference): so every `lab up` writes its platform's
//! configuration through the code that writes production's.
//!
//! A credential is a [`Cred`]: the value itself (the lab, whose file is root's, 0600) or
//! `{ file = "PATH" }`, which the platform reads at start (`platform::config`,
//! `resolve_secret_files`): a file on the manager or a swarm secret under `/run/secrets`.
//! The shape of every section is documented in `configs/pressdock.example.toml`.
use std::fmt::Write as _;

/// A credential: written as is, or as a reference to the file that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cred {
    Inline(String),
    File(String),
}

impl Cred {
    fn toml(&self) -> String {
        match self {
            Cred::Inline(v) => q(v),
            Cred::File(path) => format!("{{ file = {} }}", q(path)),
        }
    }
}

/// Everything the platform's configuration says about the cluster.
#[derive(Clone, Debug)]
pub struct PlatformCluster {
    /// The first comment line(s): who wrote the file.
    pub header: String,
    /// The HTTP API.
    pub listen: String,
    /// The control-plane database, through the router.
    pub database_url: Cred,
    pub secret_key: Cred,
    /// The first staff admin (email, password), if the file creates one.
    pub bootstrap: Option<(String, Cred)>,
    /// The agents' listener and the URL the sites' tasks reach it at.
    pub agent_listen: String,
    pub agent_control_url: String,
    pub galera: Galera,
    pub redis: Redis,
    pub gluster: Gluster,
    pub varnish: Varnish,
    pub swarm: Swarm,
    pub s3: Option<S3>,
    /// `[certs]` as written (the lab's ACME server); `None`: not written (off).
    pub certs: Option<String>,
    /// Every Traefik replica's metrics page (`[billing] edge_metrics`).
    pub edge_metrics: Vec<String>,
    /// A final backup before every delete (`[backups] final_backup`).
    pub final_backup: bool,
}

#[derive(Clone, Debug)]
pub struct Galera {
    pub admin_url: Cred,
    /// `haproxy` (the lab's) or `proxysql`.
    pub router: String,
    pub proxysql_admin_urls: Vec<Cred>,
    pub site_db_host: String,
    pub nodes: Vec<String>,
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct Redis {
    pub sentinels: Vec<String>,
    pub master_name: String,
    /// `None`: the nodes' `default` user.
    pub admin_user: Option<String>,
    pub admin_password: Cred,
    pub sentinel_user: Option<String>,
    pub sentinel_password: Cred,
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct Gluster {
    /// Empty: this host's glusterd.
    pub remote_host: String,
    pub volume: String,
    /// The volume's mount on the platform's host, and where each node has it (tasks bind it).
    pub mount: String,
    pub node_mount: String,
    pub spares: u32,
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct Varnish {
    /// `(HOST:PORT of the -T CLI, the -S secret file)` of every instance.
    pub instances: Vec<(String, String)>,
    pub mode: VclMode,
}

/// How the host table reaches the instances (backends::config::VarnishConfig).
#[derive(Clone, Debug)]
pub enum VclMode {
    /// A folder the platform writes and every instance mounts (the lab: one machine).
    Include {
        vcl_dir: String,
        hosts_file: String,
        vcl_dir_in_instance: String,
    },
    /// A self-contained VCL loaded over the CLI (instances on other machines).
    Inline {
        backend_host: String,
        backend_port: u16,
    },
}

#[derive(Clone, Debug)]
pub struct Swarm {
    pub docker_host: String,
    pub runtime_image: String,
    pub site_network: String,
    pub edge_network: String,
    pub cert_resolver: String,
    /// `""`: no per-site TLS routers (`websecure` sends every request to Varnish).
    pub websecure_entrypoint: String,
    pub net_guard_wait_secs: u32,
}

#[derive(Clone, Debug)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: Cred,
    pub secret_key: Cred,
    pub force_path_style: bool,
    pub note: String,
}

/// A TOML string (quoted and escaped).
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
}

/// `# …` lines of a note (none when empty).
fn comment(out: &mut String, note: &str) {
    for line in note.lines() {
        let _ = writeln!(out, "# {line}");
    }
}

/// The platform's configuration file for `c`.
pub fn render(c: &PlatformCluster) -> String {
    let mut o = String::new();
    comment(&mut o, &c.header);
    let _ = writeln!(o, "listen = {}", q(&c.listen));
    let _ = writeln!(o, "database_url = {}", c.database_url.toml());
    let _ = writeln!(o, "secret_key = {}", c.secret_key.toml());
    if let Some((email, password)) = &c.bootstrap {
        let _ = writeln!(o, "\n[bootstrap]\nadmin_email = {}", q(email));
        let _ = writeln!(o, "admin_password = {}", password.toml());
    }
    let _ = writeln!(
        o,
        "\n[agent]\n# The sites' agents report here (as their tasks reach it).\nlisten = {}\ncontrol_url = {}",
        q(&c.agent_listen),
        q(&c.agent_control_url)
    );

    let g = &c.galera;
    o.push_str("\n[backends.galera]\n");
    comment(&mut o, &g.note);
    let _ = writeln!(o, "admin_url = {}", g.admin_url.toml());
    let _ = writeln!(o, "router = {}", q(&g.router));
    let urls: Vec<String> = g.proxysql_admin_urls.iter().map(Cred::toml).collect();
    let _ = writeln!(o, "proxysql_admin_urls = [{}]", urls.join(", "));
    let _ = writeln!(o, "site_db_host = {}", q(&g.site_db_host));
    let _ = writeln!(o, "nodes = [{}]", list(&g.nodes));

    let r = &c.redis;
    o.push_str("\n[backends.redis]\n");
    comment(&mut o, &r.note);
    let _ = writeln!(o, "sentinels = [{}]", list(&r.sentinels));
    let _ = writeln!(o, "master_name = {}", q(&r.master_name));
    if let Some(u) = &r.admin_user {
        let _ = writeln!(o, "admin_user = {}", q(u));
    }
    let _ = writeln!(o, "admin_password = {}", r.admin_password.toml());
    if let Some(u) = &r.sentinel_user {
        let _ = writeln!(o, "sentinel_user = {}", q(u));
    }
    let _ = writeln!(o, "sentinel_password = {}", r.sentinel_password.toml());

    let gl = &c.gluster;
    o.push_str("\n[backends.gluster]\n");
    comment(&mut o, &gl.note);
    let _ = writeln!(o, "remote_host = {}", q(&gl.remote_host));
    let _ = writeln!(o, "volume = {}", q(&gl.volume));
    let _ = writeln!(o, "mount = {}", q(&gl.mount));
    let _ = writeln!(o, "node_mount = {}", q(&gl.node_mount));
    let _ = writeln!(o, "spares = {}", gl.spares);

    let v = &c.varnish;
    let instances: Vec<String> = v
        .instances
        .iter()
        .map(|(a, s)| format!("{{ address = {}, secret_file = {} }}", q(a), q(s)))
        .collect();
    let _ = writeln!(
        o,
        "\n[backends.varnish]\ninstances = [{}]",
        instances.join(", ")
    );
    match &v.mode {
        VclMode::Include {
            vcl_dir,
            hosts_file,
            vcl_dir_in_instance,
        } => {
            let _ = writeln!(
                o,
                "vcl_dir = {}\nhosts_file = {}\nvcl_dir_in_instance = {}",
                q(vcl_dir),
                q(hosts_file),
                q(vcl_dir_in_instance)
            );
        }
        VclMode::Inline {
            backend_host,
            backend_port,
        } => {
            let _ = writeln!(
                o,
                "# Inline mode: the host table is sent over the CLI (the instances run on other\n\
                 # machines than the platform, so no folder is shared with them).\n\
                 backend_host = {}\nbackend_port = {backend_port}",
                q(backend_host)
            );
        }
    }

    let s = &c.swarm;
    let _ = writeln!(
        o,
        "\n[backends.swarm]\ndocker_host = {}\nruntime_image = {}\nsite_network = {}\n\
         edge_network = {}\ncert_resolver = {}",
        q(&s.docker_host),
        q(&s.runtime_image),
        q(&s.site_network),
        q(&s.edge_network),
        q(&s.cert_resolver)
    );
    if s.websecure_entrypoint.is_empty() {
        o.push_str(
            "# No per-site TLS routers: Traefik's `websecure` sends every HTTPS request to \
             Varnish\n# (stacks/edge-routes.yml) with the certificates of [certs].\n",
        );
    }
    let _ = writeln!(
        o,
        "websecure_entrypoint = {}\ndocker_api_version = \"1.41\"\n\
         # Every worker runs `pressdock-infra guard`: an agent runs no PHP until its task is\n\
         # confined (docs/security.md, \"Network confinement\").\nnet_guard_wait_secs = {}",
        q(&s.websecure_entrypoint),
        s.net_guard_wait_secs
    );

    if let Some(s3) = &c.s3 {
        o.push_str("\n[backends.s3]\n");
        comment(&mut o, &s3.note);
        let _ = writeln!(
            o,
            "endpoint = {}\nbucket = {}\nregion = {}\naccess_key = {}\nsecret_key = {}\n\
             force_path_style = {}",
            q(&s3.endpoint),
            q(&s3.bucket),
            q(&s3.region),
            s3.access_key.toml(),
            s3.secret_key.toml(),
            s3.force_path_style
        );
    }
    if let Some(certs) = &c.certs {
        o.push_str("\n[certs]\n");
        o.push_str(certs);
    }
    let _ = writeln!(
        o,
        "\n[billing]\n# The edge's per-site request counts, scraped every minute into hourly \
         usage samples.\nedge_metrics = [{}]",
        list(&c.edge_metrics)
    );
    let _ = writeln!(
        o,
        "\n[backups]\n# Every delete backs the site up first: a deleted site can be brought \
         back\n# (`pressdock sites restore SITE --backup FINAL`).\nfinal_backup = {}",
        c.final_backup
    );
    o
}
