//! Nodes: one dockerd per namespace, the swarm, role labels, overlay networks, the edge
//! stack and the lab's test site.
use super::sh::{self, progress, run, try_out, wait_for};
use super::{EDGE_NET, EDGE_SUBNET, Lab, Node, RUN, SITES_NET, SITES_SUBNET, STACK, STATE};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

/// The swarm's dispatcher heartbeat period in the lab (see [`ensure_swarm`]).
pub const HEARTBEAT: &str = "2s";
/// [`HEARTBEAT`] as `docker info` prints it (nanoseconds).
const HEARTBEAT_NS: &str = "2000000000";

fn dockerd_name(node: &Node) -> String {
    format!("dockerd-{}", node.host())
}

/// Starts the node's dockerd unless it already answers.
pub fn ensure_dockerd(lab: &Lab, node: &Node) -> Result<()> {
    let name = dockerd_name(node);
    if let Some(pid) = lab.procs.alive(&name)
        && sh::ok(&mut node.docker(["version"]))
    {
        // A daemon started before the lab had its DNS server is restarted once (its
        // containers with it) so that its tasks' outbound lookups are answered at once.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&format!("--dns\0{}", super::HOST_IP)) {
            return Ok(());
        }
        progress(
            "nodes",
            format!(
                "dockerd of {} runs without --dns {}: restarting it",
                node.host(),
                super::HOST_IP
            ),
        );
    }
    // Leftovers of a crashed run: the node's processes (containerd, shims, containers) and
    // its stale pid file and socket.
    lab.procs.stop(&name, Duration::from_secs(5))?;
    super::proc::kill_cgroup(&node.host())?;
    let exec_root = Path::new(RUN).join(node.host());
    let data_root = lab.path(&format!("nodes/{}/docker", node.host()));
    std::fs::create_dir_all(&exec_root).context("creating exec root")?;
    std::fs::create_dir_all(&data_root).context("creating data root")?;
    // Node images and containers live in memory: imports are faster, and `lab down` drops
    // them with one unmount instead of deleting ~100k files. (`--keep-data` keeps the data
    // tier; the swarm and its services are rebuilt by the next `lab up`.)
    if !super::data::mount_state(&data_root).0 {
        run(&mut sh::cmd(
            "mount",
            [
                "-t",
                "tmpfs",
                "-o",
                "size=6g,mode=0711",
                "tmpfs",
                &data_root.to_string_lossy(),
            ],
        ))
        .with_context(|| format!("mounting a tmpfs on {}", data_root.display()))?;
    }
    std::fs::create_dir_all(lab.path("run")).context("creating run dir")?;
    let pidfile = Path::new(RUN).join(format!("{}.pid", node.host()));
    // dockerd's own containerd leaves a pid file too, which dockerd trusts: with the PID
    // reused by another process (this machine's pid_max is 32768 and builds go through
    // PIDs fast), dockerd waits for a containerd that is not there and exits after 15 s
    // ("timeout waiting for containerd to start"; CI, `lab node start` after a kill).
    let containerd_pidfile = exec_root.join("containerd/containerd.pid");
    let clear_leftovers = || {
        let _ = std::fs::remove_file(&pidfile);
        let _ = std::fs::remove_file(&containerd_pidfile);
        let _ = std::fs::remove_file(node.sock());
    };
    clear_leftovers();
    let script = format!(
        "hostname {host} && exec nsenter --net={netns} dockerd --storage-driver=overlay2 \
         --data-root {data} --exec-root {exec} -H {sockh} --pidfile {pid} --bridge=none \
         --cgroup-parent=/{host} --log-level=warn --dns {dns}",
        host = node.host(),
        netns = node.netns_path(),
        data = data_root.display(),
        exec = exec_root.display(),
        sockh = node.docker_host(),
        pid = pidfile.display(),
        dns = super::HOST_IP,
    );
    // dockerd gives its containerd a fixed time to start and exits when it runs out; after
    // a kill, containerd first cleans up the dead tasks' shims, which on a loaded machine
    // took longer (CI: "failed to start containerd: timeout waiting for containerd to
    // start"). A daemon that exits while starting is started again.
    const STARTS: u32 = 3;
    for start in 1..=STARTS {
        lab.procs.spawn(
            &name,
            &node.host(),
            "dockerd",
            &lab.path(&format!("logs/{name}.log")),
            "unshare",
            &["--uts".into(), "sh".into(), "-c".into(), script.clone()],
        )?;
        let answered = wait_for(
            &format!("dockerd of {} (log: {STATE}/logs/{name}.log)", node.host()),
            Duration::from_secs(60),
            Duration::from_millis(300),
            || {
                if sh::ok(&mut node.docker(["version"])) {
                    Some(true)
                } else if lab.procs.alive(&name).is_none() {
                    Some(false)
                } else {
                    None
                }
            },
        )?;
        if answered {
            return Ok(());
        }
        if start == STARTS {
            bail!(
                "dockerd of {} exited while starting, {STARTS} times (log: {STATE}/logs/{name}.log)",
                node.host()
            );
        }
        progress(
            "nodes",
            format!(
                "dockerd of {} exited while starting (log: {STATE}/logs/{name}.log); starting it again",
                node.host()
            ),
        );
        super::proc::kill_cgroup(&node.host())?;
        clear_leftovers();
    }
    Ok(())
}

fn swarm_state(node: &Node) -> (String, String) {
    let s = try_out(&mut node.docker([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
    ]))
    .unwrap_or_default();
    let mut it = s.split_whitespace();
    (
        it.next().unwrap_or("").to_owned(),
        it.next().unwrap_or("").to_owned(),
    )
}

/// The node's swarm id, if it is in a swarm.
pub fn swarm_node_id(node: &Node) -> Option<String> {
    let id = swarm_state(node).1;
    (!id.is_empty()).then_some(id)
}

/// One swarm: the first manager initialises it, the others join; role labels on every node;
/// the overlay networks. The production steps (`cluster::swarm`, `cluster::swarm_exec`) run
/// on the lab's machines ([`super::machines`]).
pub fn ensure_swarm(lab: &Lab) -> Result<()> {
    let steps = super::machines::converge(lab, false)?;
    if steps > 0 {
        progress("swarm", format!("{steps} step(s) run"));
    }
    let m1 = lab.topo.first_manager();
    // A dead worker is noticed after about 3 heartbeat periods (swarmkit's grace
    // multiplier): 2 s instead of the default 5 s, so its tasks are rescheduled after
    // ~6 s instead of ~15 s. Unchanged spec: no update (an update bumps the cluster version).
    if try_out(&mut m1.docker([
        "info",
        "--format",
        "{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}",
    ]))
    .is_none_or(|s| s.trim() != HEARTBEAT_NS)
    {
        run(&mut m1.docker(["swarm", "update", "--dispatcher-heartbeat", HEARTBEAT]))
            .context("setting the dispatcher heartbeat")?;
    }
    for n in lab.topo.nodes() {
        if swarm_state(&n).1.is_empty() {
            bail!("{} has no swarm node id", n.host());
        }
    }
    Ok(())
}

/// Adds `pressdock.pool=wp` to every worker once it can run sites (the runtime image
/// loaded, the Gluster volume mounted): before that the platform keeps it `pending`.
pub fn mark_workers_ready(lab: &Lab) -> Result<()> {
    super::machines::converge(lab, true)
        .context("labelling the workers")
        .map(|_| ())
}

/// Attachable overlay networks for the edge and for sites.
pub fn ensure_networks(lab: &Lab) -> Result<()> {
    let m1 = lab.topo.first_manager();
    for (name, subnet) in [(EDGE_NET, EDGE_SUBNET), (SITES_NET, SITES_SUBNET)] {
        if sh::ok(&mut m1.docker(["network", "inspect", name])) {
            continue;
        }
        run(&mut m1.docker([
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            "--subnet",
            subnet,
            name,
        ]))
        .with_context(|| format!("creating overlay network {name}"))?;
    }
    Ok(())
}

/// The Varnish config folder bind-mounted into every Varnish task: the VCL from
/// `configs/varnish/`; `hosts.vcl` (the platform's host table) only when absent, since the
/// platform rewrites it; `static-hosts.vcl` with the lab's test site.
pub fn write_vcl(lab: &Lab) -> Result<(std::path::PathBuf, bool)> {
    let dir = lab.path("varnish/vcl");
    let before = vcl_digest(&dir);
    let src = lab.repo.join("configs/varnish");
    for f in [
        "main.vcl",
        "backend.vcl",
        "acl.vcl",
        "pressdock.vcl",
        "hosts.vcl",
    ] {
        if f == "hosts.vcl" && dir.join(f).exists() {
            continue;
        }
        let s = std::fs::read_to_string(src.join(f))
            .with_context(|| format!("reading configs/varnish/{f}"))?;
        sh::write_file(&dir.join(f), &s)?;
    }
    sh::write_file(
        &dir.join("static-hosts.vcl"),
        "# Written by pressdock-infra lab up: the lab's test sites (not platform sites).
# *.t.lab.test: hosts the lab tests create and remove (infra/tests/lab.rs).
sub pressdock_static_hosts {
    if (req.http.host == \"hello.lab.test\") {
        set req.http.X-Pressdock-Site = \"lab-hello\";
    } elsif (req.http.host ~ \"^[a-z0-9-]+\\.t\\.lab\\.test$\") {
        set req.http.X-Pressdock-Site = \"lab-test\";
    }
}
",
    )?;
    let secret = lab.path("varnish/secret");
    if !secret.exists() {
        sh::write_file(&secret, &format!("{}\n", lab.secrets.varnish))?;
    }
    let changed = before != vcl_digest(&dir);
    Ok((dir, changed))
}

fn vcl_digest(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Has every running Varnish compile and use the current VCL files (the cache survives).
pub fn reload_vcl(lab: &Lab) -> Result<()> {
    let name = format!(
        "lab_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    for n in lab.topo.cache_nodes() {
        let addr = format!("{}:{}", n.ip, super::ports::VARNISH_ADMIN);
        let Ok(mut cli) = super::varnish_cli::Cli::connect(&addr, &lab.path("varnish/secret"))
        else {
            continue; // not started yet: it will read the new files when it starts
        };
        cli.ok(&format!("vcl.load {name} /etc/varnish/pressdock/main.vcl"))
            .with_context(|| format!("loading the new VCL on {addr}"))?;
        cli.ok(&format!("vcl.use {name}"))?;
        progress("edge", format!("VCL reloaded on {addr}"));
    }
    Ok(())
}

/// `stacks/edge.yml` (Traefik + Varnish) deployed as stack `pd` through the first manager,
/// by the production deployer ([`crate::cluster::stack`]).
pub fn deploy_edge(lab: &Lab) -> Result<()> {
    let (vcl, changed) = write_vcl(lab)?;
    if changed {
        reload_vcl(lab)?;
    }
    super::edge_routes::ensure(lab).context("Traefik's routes")?;
    let (static_dir, static_sha) = write_traefik_static(lab)?;
    let m1 = lab.topo.first_manager();
    let traefik = format!("{STACK}_traefik");
    let version = |m: &Node| {
        // The task template, not the version: a deploy that changes nothing still bumps it.
        try_out(&mut m.docker([
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate}}",
            &traefik,
        ]))
        .map(|v| v.trim().to_owned())
    };
    let before = version(&m1);
    // The production deployer (`cluster::stack`, bollard), as `cluster swarm` runs it.
    let vars = edge_vars(lab, &vcl, &static_dir, &static_sha);
    let done = deploy_stack(lab, STACK, "stacks/edge.yml", &vars)?;
    report("edge", &done);
    // A changed Traefik service (a new static configuration) replaces its tasks, at new
    // addresses: Varnish resolves `traefik` when its VCL compiles, so once the new tasks
    // run, reload the VCL. (Without this the edge check right after the deploy could still
    // reach the old task, and Varnish then kept sending to an address that was gone.)
    if before.is_some() && version(&m1) != before {
        progress(
            "edge",
            "Traefik updated: waiting for its new tasks, then reloading the VCL",
        );
        let _ = wait_for(
            "Traefik's new tasks",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let ps = try_out(&mut m1.docker([
                    "service",
                    "ps",
                    &traefik,
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.CurrentState}}",
                ]))?;
                let states: Vec<&str> = ps.lines().filter(|l| !l.trim().is_empty()).collect();
                (!states.is_empty() && states.iter().all(|l| l.starts_with("Running")))
                    .then_some(())
            },
        );
        reload_vcl(lab)?;
    }
    Ok(())
}

/// Traefik's static configuration (stacks/traefik.yml filled in) in `<state>/traefik/static`
/// (mode 0600: it holds the edge token); its folder and the digest of its content.
pub fn write_traefik_static(lab: &Lab) -> Result<(std::path::PathBuf, String)> {
    use sha2::Digest;
    let src = lab.repo.join("stacks/traefik.yml");
    let template =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let text = template
        .replace("${PD_EDGE_SUBNET}", super::EDGE_SUBNET)
        .replace(
            "${PD_EDGE_PROVIDER}",
            &format!(
                "http://{}:{}/edge/traefik.json",
                super::HOST_IP,
                super::ports::PLATFORM_EDGE
            ),
        )
        .replace("${PD_EDGE_TOKEN}", &lab.secrets.edge_token)
        .replace("${PD_EDGE_POLL_SECS}", &super::EDGE_POLL_SECS.to_string());
    if text.contains("${PD_") {
        anyhow::bail!(
            "{}: a ${{...}} value the deployer does not know",
            src.display()
        );
    }
    let dir = lab.path("traefik/static");
    let path = dir.join("traefik.yml");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        sh::write_private(&path, &text)?;
    }
    Ok((dir, hex::encode(sha2::Sha256::digest(text.as_bytes()))))
}

/// The lab's test site (stack `lab`): the WordPress runtime image serving its static files,
/// deployed like the edge.
pub fn deploy_hello(lab: &Lab) -> Result<()> {
    let vars =
        std::collections::BTreeMap::from([("PD_SITES_NET".to_owned(), SITES_NET.to_owned())]);
    deploy_stack(lab, "lab", "stacks/lab-hello.yml", &vars)?;
    Ok(())
}

/// The cache tier's Redis master, replica and Sentinel (`stacks/cache.yml`, stack `cache`) on
/// the lab's cache nodes (its managers), deployed like the edge. They stand beside the lab's
/// host Redis and Sentinels (`lab::data`), which the platform keeps using: the stack is the
/// production tier on real swarm nodes. Its password is the lab's Redis admin password.
pub fn deploy_cache(lab: &Lab) -> Result<()> {
    let vars = cache_vars(lab)?;
    let done = deploy_stack(lab, CACHE_STACK, "stacks/cache.yml", &vars)?;
    report("cache", &done);
    Ok(())
}

/// `redis-cli` from the host against the cache stack at `ip:port` (its `default` user, the
/// password through `REDISCLI_AUTH`); its output, or `None` if it failed.
fn cache_cli(lab: &Lab, ip: &str, port: &str, args: &[&str]) -> Option<String> {
    let mut c = std::process::Command::new("timeout");
    c.args(["5", "redis-cli", "--no-auth-warning", "-h", ip, "-p", port])
        .args(args)
        .env("REDISCLI_AUTH", &lab.secrets.redis_admin);
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).replace('\r', ""))
}

/// Waits until the cache stack serves clients outside its overlay: every cache node's
/// Sentinel (at its published port) names a master that answers as one and knows a replica
/// (flags `slave`) whose link to it is up. `lab up --platform-redis stack` waits for this
/// before it starts the platform: a site created while a freshly deployed stack's Sentinel
/// does not know its replica yet would get its ACL user on the master only.
pub fn wait_cache_ready(lab: &Lab) -> Result<()> {
    let sp = CACHE_SENTINEL_PORT.to_string();
    wait_for(
        "the cache stack's Sentinels to name a master and a replica that answer",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || {
            for n in lab.topo.cache_nodes() {
                let m = cache_cli(
                    lab,
                    &n.ip,
                    &sp,
                    &["sentinel", "get-master-addr-by-name", CACHE_MASTER_NAME],
                )?;
                let mut it = m.split_whitespace();
                let (mi, mp) = (it.next()?.to_owned(), it.next()?.to_owned());
                if cache_cli(lab, &mi, &mp, &["role"])?.lines().next() != Some("master") {
                    return None;
                }
                let reps = cache_cli(
                    lab,
                    &n.ip,
                    &sp,
                    &["sentinel", "replicas", CACHE_MASTER_NAME],
                )?;
                let lines: Vec<&str> = reps.lines().collect();
                let mut replicas: Vec<std::collections::HashMap<&str, &str>> = Vec::new();
                for kv in lines.chunks(2) {
                    if let [k, v] = kv {
                        if *k == "name" {
                            replicas.push(Default::default());
                        }
                        if let Some(r) = replicas.last_mut() {
                            r.insert(k, v);
                        }
                    }
                }
                let up = replicas.iter().any(|r| {
                    r.get("flags") == Some(&"slave")
                        && r.get("master-link-status") == Some(&"ok")
                        && r.get("master-host") == Some(&mi.as_str())
                });
                if !up {
                    return None;
                }
            }
            Some(())
        },
    )
}

/// The stack name of `stacks/cache.yml`.
pub const CACHE_STACK: &str = "cache";
/// The stack's Sentinels watch the master under this name (`PD_REDIS_NAME` in the stack).
pub const CACHE_MASTER_NAME: &str = "pd-cache";
/// The stack's own overlay network.
pub const CACHE_NET: &str = "pd-cache";

/// Host ports the cache stack publishes in host mode on each cache node (`stacks/cache.yml`):
/// the master's, the replicas' and the Sentinel's. Clients outside the overlay (the host, a
/// task on another node) reach the tier at `<cache node address>:<port>`.
pub const CACHE_MASTER_PORT: u16 = 6379;
pub const CACHE_REPLICA_PORT: u16 = 6380;
pub const CACHE_SENTINEL_PORT: u16 = 26379;

/// The per-node folder holding `addr` (the node's address on the lab bridge), bind-mounted
/// into the cache stack's tasks: swarm fills in `{{.Node.Hostname}}` for the task's node.
fn node_info_dir(host: &str) -> String {
    format!("{STATE}/nodes/{host}/node")
}

/// The variables of `stacks/cache.yml` in the lab: one Sentinel per cache node (the managers),
/// a replica on one of them. The password file is written (mode 0600) if it differs, and
/// every node's address file (`<state>/nodes/<host>/node/addr`) if it differs.
pub fn cache_vars(lab: &Lab) -> Result<std::collections::BTreeMap<String, String>> {
    let pw = lab.path("cache/redis-password");
    if std::fs::read_to_string(&pw).ok().as_deref() != Some(lab.secrets.redis_admin.as_str()) {
        sh::write_private(&pw, &lab.secrets.redis_admin)?;
    }
    for n in lab.topo.nodes() {
        let addr = Path::new(&node_info_dir(&n.host())).join("addr");
        if std::fs::read_to_string(&addr).ok().as_deref() != Some(n.ip.as_str()) {
            sh::write_file(&addr, &n.ip)?;
        }
    }
    let sentinels = lab.topo.cache_nodes().len();
    Ok([
        ("PD_REDIS_PASSWORD_FILE", pw.to_string_lossy().into_owned()),
        ("PD_NODE_DIR", node_info_dir("{{.Node.Hostname}}")),
        ("PD_REDIS_REPLICAS", "1".to_owned()),
        // A majority of the Sentinels: 1 of 1, 2 of 2 or 3.
        ("PD_SENTINEL_QUORUM", (sentinels / 2 + 1).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect())
}

/// The monitoring placeholder (`stacks/monitoring.yml`, stack `monitoring`) on the lab's
/// monitoring nodes (its managers), deployed like the edge.
pub fn deploy_monitoring(lab: &Lab) -> Result<()> {
    let done = deploy_stack(
        lab,
        "monitoring",
        "stacks/monitoring.yml",
        &std::collections::BTreeMap::new(),
    )?;
    report("monitoring", &done);
    Ok(())
}

/// Deploys one compose file of `stacks/` as the stack `name` on the first manager, through
/// the production deployer, with `vars` and the lab's own images (`${PD_IMAGE_…}`: the
/// `local/*:dev` builds `lab up` imported on every node, where production has the spec's).
fn deploy_stack(
    lab: &Lab,
    name: &str,
    file: &str,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, crate::cluster::stack::Outcome>> {
    let mut vars = vars.clone();
    vars.extend(crate::cluster::images::Images::lab().vars());
    crate::cluster::stack::deploy_file(
        &lab.topo.first_manager().sock(),
        name,
        &lab.repo,
        file,
        &vars,
        Duration::from_secs(180),
    )
    .with_context(|| format!("deploying {file}"))
}

/// One progress line per service a deploy created, updated or removed.
fn report(what: &str, done: &std::collections::BTreeMap<String, crate::cluster::stack::Outcome>) {
    for (svc, outcome) in done {
        if *outcome != crate::cluster::stack::Outcome::Unchanged {
            progress(what, format!("{svc}: {outcome:?}"));
        }
    }
}

/// The variables of `stacks/edge.yml` in the lab.
pub fn edge_vars(
    lab: &Lab,
    vcl: &Path,
    static_dir: &Path,
    static_sha: &str,
) -> std::collections::BTreeMap<String, String> {
    let p = |x: &Path| x.to_string_lossy().into_owned();
    [
        ("PD_VCL_DIR", p(vcl)),
        ("PD_TRAEFIK_DYNAMIC", p(&super::edge_routes::dir(lab))),
        ("PD_TRAEFIK_STATIC", p(static_dir)),
        ("PD_TRAEFIK_STATIC_SHA", static_sha.to_owned()),
        ("PD_VARNISH_SECRET", p(&lab.path("varnish/secret"))),
        ("PD_EDGE_NET", EDGE_NET.to_owned()),
        ("PD_SITES_NET", SITES_NET.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Services of the swarm as `name replicas` lines.
pub fn services(lab: &Lab) -> String {
    try_out(&mut lab.topo.first_manager().docker([
        "service",
        "ls",
        "--format",
        "{{.Name}} {{.Mode}} {{.Replicas}} {{.Image}}",
    ]))
    .unwrap_or_default()
}
