//! The storage tier (issue 15, item 4): the GlusterFS volume [`VOLUME`] on the storage nodes
//! and its FUSE mount on every node that needs the sites' files (workers and managers). A
//! pure planner like [`super::swarm`]: what the storage nodes' glusterd says (`gluster volume
//! list`, `peer status`, `volume info`) and what each client says about its mount in, the
//! missing steps out, in the order they must run:
//!
//! - `peer probe` of every other storage node by its VPC address, from the first storage node
//!   (the executor waits until the peer is `Peer in Cluster (Connected)`);
//! - `volume create sites replica N <vpc ip>:<mount>/brick …` (one brick per storage node,
//!   on its block volume: `roles.storage.volume.mount`, `/data/gluster` in
//!   configs/cluster.toml). Never with `force`: glusterd then refuses a brick on the root
//!   file system, so a node whose block volume is not mounted stops the create;
//! - `volume start`, `volume quota sites enable`, then the options: `auth.allow` (only the
//!   workers', managers' and storage nodes' own VPC addresses: the storage nodes for
//!   glusterd's self-heal and quota daemons), and the lab's quota options (hard and soft
//!   timeouts 0, so a site's limit holds at once; `quota-deem-statfs`, so `df` in a site
//!   shows its quota);
//! - on every worker and manager: the fstab entry `<storage 1>:/sites <CLIENT_MOUNT>
//!   glusterfs defaults,_netdev,nofail,backup-volfile-servers=<storage 2>:…` and the mount.
//!
//! What it never does: remove a brick, stop or delete the volume. A spec with fewer storage
//! nodes than the volume has bricks is refused (naming `roles.storage.count`); more storage
//! nodes add a brick (`add-brick sites replica N+1`, the data copied to it by self-heal); a
//! brick on an address no storage node has (a replaced droplet) is refused with the
//! `replace-brick` command to run once the operator checked the surviving replica.
//!
//! Site tasks never reach the volume: the network guard on the workers admits only the
//! endpoints of `[guard]` (no Gluster port), so `auth.allow` with the worker's address lets in
//! the worker's own mount, not its tasks (masqueraded to that address).
//!
//! Executed by [`converge`] through [`Shell`]: [`SshShell`] in production (`ssh
//! root@<public ip> …`; every value in a command is ours: addresses, fixed paths, names).
use super::spec::{Checked, Role};
use super::swarm::Machine;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The volume (DESIGN.md; the platform's `[backends.gluster] volume` default).
pub const VOLUME: &str = "sites";
/// Where workers and managers mount it (`[backends.gluster] node_mount` and `mount`).
pub const CLIENT_MOUNT: &str = "/mnt/sites";
/// The brick's folder under the storage node's block volume (a brick must not be the mount
/// point itself: glusterd refuses it, and an unmounted volume would leave it on `/`).
pub const BRICK_DIR: &str = "brick";
/// Volume options as the lab sets them (`lab::data::ensure_volume`), besides `auth.allow`.
pub const OPTIONS: [(&str, &str); 3] = [
    ("features.hard-timeout", "0"),
    ("features.soft-timeout", "0"),
    ("features.quota-deem-statfs", "on"),
];

/// A peer as `gluster peer status` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// `Hostname:` and `Other names:` (addresses, as we probe by address).
    pub names: Vec<String>,
    pub connected: bool,
}

/// `gluster volume info sites`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    /// `host:/path`, in order.
    pub bricks: Vec<String>,
    pub started: bool,
    /// `Options Reconfigured:`.
    pub options: BTreeMap<String, String>,
}

/// What a worker or manager says about its mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Client {
    /// The fstab line for [`CLIENT_MOUNT`], if any.
    pub fstab: Option<String>,
    pub mounted: bool,
    /// It did not answer (down, booting): no step for it this time.
    pub unreachable: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ObservedStorage {
    /// The storage node that ran the looks (the one that knows the volume, else the first).
    pub anchor: String,
    /// Peers the anchor sees.
    pub peers: Vec<Peer>,
    pub volume: Option<Volume>,
    /// Worker or manager name → its mount.
    pub clients: BTreeMap<String, Client>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `gluster peer probe <addr>` on `on`; then waited for until connected.
    Probe {
        on: String,
        peer: String,
        addr: Ipv4Addr,
    },
    Create {
        on: String,
        replica: usize,
        bricks: Vec<String>,
    },
    /// `add-brick … replica <replica> <brick>`: a storage node added to the spec.
    AddBrick {
        on: String,
        replica: usize,
        brick: String,
    },
    Start {
        on: String,
    },
    QuotaEnable {
        on: String,
    },
    Set {
        on: String,
        key: String,
        value: String,
    },
    /// The fstab line (replacing another for the same mount point) and the mount.
    Mount {
        node: String,
        fstab: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Probe { on, peer, addr } => {
                write!(f, "gluster peer probe {peer} ({addr}) from {on}")
            }
            Step::Create {
                replica, bricks, ..
            } => write!(
                f,
                "gluster volume {VOLUME} replica {replica}: {}",
                bricks.join(" ")
            ),
            Step::AddBrick { replica, brick, .. } => {
                write!(f, "gluster add-brick {VOLUME} replica {replica} {brick}")
            }
            Step::Start { .. } => write!(f, "gluster volume start {VOLUME}"),
            Step::QuotaEnable { .. } => write!(f, "gluster quota on {VOLUME}"),
            Step::Set { key, value, .. } => write!(f, "gluster {VOLUME} {key}={value}"),
            Step::Mount { node, .. } => write!(f, "mount {VOLUME} at {CLIENT_MOUNT} on {node}"),
        }
    }
}

fn gluster(args: &[&str]) -> Vec<String> {
    let mut v = vec!["gluster".to_owned(), "--mode=script".to_owned()];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

impl Step {
    /// The machine that runs the step and its command (argv).
    pub fn command(&self) -> (String, Vec<String>) {
        match self {
            Step::Probe { on, addr, .. } => {
                (on.clone(), gluster(&["peer", "probe", &addr.to_string()]))
            }
            Step::Create {
                on,
                replica,
                bricks,
            } => {
                let mut a = vec!["volume", "create", VOLUME];
                let r = replica.to_string();
                if *replica > 1 {
                    a.extend(["replica", r.as_str()]);
                }
                a.extend(bricks.iter().map(String::as_str));
                (on.clone(), gluster(&a))
            }
            Step::AddBrick { on, replica, brick } => (
                on.clone(),
                gluster(&[
                    "volume",
                    "add-brick",
                    VOLUME,
                    "replica",
                    &replica.to_string(),
                    brick,
                ]),
            ),
            Step::Start { on } => (on.clone(), gluster(&["volume", "start", VOLUME])),
            Step::QuotaEnable { on } => {
                (on.clone(), gluster(&["volume", "quota", VOLUME, "enable"]))
            }
            Step::Set { on, key, value } => {
                (on.clone(), gluster(&["volume", "set", VOLUME, key, value]))
            }
            Step::Mount { node, fstab } => (
                node.clone(),
                vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    format!(
                        "mkdir -p {CLIENT_MOUNT} && {{ grep -vF ' {CLIENT_MOUNT} glusterfs ' /etc/fstab || true; echo '{fstab}'; }} > /etc/fstab.pd && mv /etc/fstab.pd /etc/fstab && {{ mountpoint -q {CLIENT_MOUNT} || mount {CLIENT_MOUNT}; }}"
                    ),
                ],
            ),
        }
    }
}

/// The brick of a storage node.
pub fn brick(c: &Checked, m: &Machine) -> String {
    let mount = c
        .spec
        .roles
        .get(&Role::Storage)
        .and_then(|r| r.volume.as_ref())
        .map_or("/data/gluster", |v| v.mount.as_str());
    format!(
        "{}:{}/{BRICK_DIR}",
        m.private_ip,
        mount.trim_end_matches('/')
    )
}

/// `auth.allow`: the workers', managers' and storage nodes' VPC addresses, sorted.
pub fn auth_allow(machines: &[Machine]) -> String {
    let mut v: Vec<Ipv4Addr> = machines
        .iter()
        .filter(|m| matches!(m.role, Role::Worker | Role::Manager | Role::Storage))
        .map(|m| m.private_ip)
        .collect();
    v.sort_unstable();
    v.dedup();
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The fstab line of the clients: the first storage node serves the volume's layout, the
/// others are its backups (a client mounts while one of them answers).
pub fn fstab_line(storage: &[&Machine]) -> String {
    let first = storage
        .first()
        .map_or(Ipv4Addr::UNSPECIFIED, |m| m.private_ip);
    let mut opts = "defaults,_netdev,nofail".to_owned();
    let backups: Vec<String> = storage
        .iter()
        .skip(1)
        .map(|m| m.private_ip.to_string())
        .collect();
    if !backups.is_empty() {
        opts.push_str(&format!(",backup-volfile-servers={}", backups.join(":")));
    }
    format!("{first}:/{VOLUME} {CLIENT_MOUNT} glusterfs {opts} 0 0")
}

/// The steps, or a refusal that names the field (`roles.storage.count`) or the node.
pub fn plan_storage(
    c: &Checked,
    machines: &[Machine],
    o: &ObservedStorage,
) -> std::result::Result<Vec<Step>, String> {
    let storage: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == Role::Storage)
        .collect();
    let mut steps = Vec::new();
    let Some(&first) = storage.first() else {
        return Ok(steps);
    };
    let anchor = storage
        .iter()
        .find(|m| m.name == o.anchor)
        .copied()
        .unwrap_or(first);
    let on = anchor.name.clone();
    let bricks: Vec<String> = storage.iter().map(|m| brick(c, m)).collect();
    // Data first: what the volume holds decides whether anything may happen.
    let mut add = Vec::new();
    if let Some(v) = &o.volume {
        if storage.len() < v.bricks.len() {
            return Err(format!(
                "roles.storage.count: the spec has {} storage node(s), the volume {VOLUME} has {} bricks ({}): removing a brick would drop a replica of every site's files; Pressdock never removes one (raise roles.storage.count back to {})",
                storage.len(),
                v.bricks.len(),
                v.bricks.join(", "),
                v.bricks.len()
            ));
        }
        let lost: Vec<&String> = v.bricks.iter().filter(|b| !bricks.contains(b)).collect();
        if !lost.is_empty() {
            let fresh: Vec<&Machine> = storage
                .iter()
                .zip(&bricks)
                .filter(|(_, b)| !v.bricks.contains(b))
                .map(|(m, _)| *m)
                .collect();
            let hint = lost
                .iter()
                .zip(&fresh)
                .map(|(old, m)| {
                    format!(
                        "on {on}: gluster peer probe {ip}; gluster volume replace-brick {VOLUME} {old} {new} commit force",
                        ip = m.private_ip,
                        new = brick(c, m)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let names: Vec<String> = fresh
                .iter()
                .map(|m| format!("{} ({})", m.name, m.private_ip))
                .collect();
            return Err(format!(
                "storage node {} holds no brick of volume {VOLUME}, whose brick(s) {} are on no storage node: a replaced node. Replacing a brick is not automatic: check the surviving replica (`gluster volume heal {VOLUME} info`), then {hint}",
                names.join(", "),
                lost.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        add = bricks
            .iter()
            .filter(|b| !v.bricks.contains(b))
            .cloned()
            .collect();
    }
    // Peers: every storage node but the anchor, connected.
    for m in &storage {
        if m.name == anchor.name {
            continue;
        }
        let ip = m.private_ip.to_string();
        let ok = o.peers.iter().any(|p| p.connected && p.names.contains(&ip));
        if !ok {
            steps.push(Step::Probe {
                on: on.clone(),
                peer: m.name.clone(),
                addr: m.private_ip,
            });
        }
    }
    let (started, options) = match &o.volume {
        None => {
            steps.push(Step::Create {
                on: on.clone(),
                replica: storage.len(),
                bricks: bricks.clone(),
            });
            (false, BTreeMap::new())
        }
        Some(v) => {
            for (n, b) in (v.bricks.len() + 1..).zip(add) {
                steps.push(Step::AddBrick {
                    on: on.clone(),
                    replica: n,
                    brick: b,
                });
            }
            (v.started, v.options.clone())
        }
    };
    if !started {
        steps.push(Step::Start { on: on.clone() });
    }
    if options.get("features.quota").map(String::as_str) != Some("on") {
        steps.push(Step::QuotaEnable { on: on.clone() });
    }
    let allow = auth_allow(machines);
    let mut wanted = vec![("auth.allow".to_owned(), allow)];
    wanted.extend(
        OPTIONS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    for (key, value) in wanted {
        if options.get(&key) != Some(&value) {
            steps.push(Step::Set {
                on: on.clone(),
                key,
                value,
            });
        }
    }
    let line = fstab_line(&storage);
    for m in machines
        .iter()
        .filter(|m| matches!(m.role, Role::Worker | Role::Manager))
    {
        let cl = o.clients.get(&m.name).cloned().unwrap_or_default();
        if cl.unreachable {
            continue;
        }
        if cl.fstab.as_deref() != Some(line.as_str()) || !cl.mounted {
            steps.push(Step::Mount {
                node: m.name.clone(),
                fstab: line.clone(),
            });
        }
    }
    Ok(steps)
}

// ---------------------------------------------------------------- parsing

/// `gluster peer status`.
pub fn parse_peers(text: &str) -> Vec<Peer> {
    let mut out: Vec<Peer> = Vec::new();
    let mut other = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix("Hostname:") {
            out.push(Peer {
                names: vec![h.trim().to_owned()],
                connected: false,
            });
            other = false;
        } else if let Some(s) = l.strip_prefix("State:") {
            if let Some(p) = out.last_mut() {
                p.connected = s.trim() == "Peer in Cluster (Connected)";
            }
            other = false;
        } else if l.starts_with("Other names:") {
            other = true;
        } else if l.starts_with("Uuid:") || l.is_empty() {
            other = false;
        } else if other && let Some(p) = out.last_mut() {
            p.names.push(l.to_owned());
        }
    }
    out
}

/// `gluster volume info <VOLUME>`.
pub fn parse_volume(text: &str) -> Volume {
    let mut v = Volume::default();
    let mut in_options = false;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        if l == "Options Reconfigured:" {
            in_options = true;
            continue;
        }
        let Some((k, val)) = l.split_once(':') else {
            continue;
        };
        let (k, val) = (k.trim(), val.trim());
        if in_options {
            v.options.insert(k.to_owned(), val.to_owned());
        } else if k == "Status" {
            v.started = val == "Started";
        } else if k
            .strip_prefix("Brick")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|ch| ch.is_ascii_digit()))
        {
            v.bricks.push(val.to_owned());
        }
    }
    v
}

// ---------------------------------------------------------------- running

/// A command on one machine.
pub trait Shell {
    /// Its stdout, or an error naming the machine and the command.
    fn run(&self, m: &Machine, argv: &[String]) -> Result<String>;
}

/// One argument for a POSIX shell (ssh hands the remote shell one line).
fn quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// The real one: `ssh <user>@<public ip> <command>` (batch mode: no prompt).
pub struct SshShell {
    pub user: String,
}

impl Shell for SshShell {
    fn run(&self, m: &Machine, argv: &[String]) -> Result<String> {
        let line: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        let out = std::process::Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"])
            .arg(format!("{}@{}", self.user, m.public_ip))
            .arg("--")
            .arg(line.join(" "))
            .stdin(std::process::Stdio::null())
            .output()
            .context("running ssh")?;
        if !out.status.success() {
            bail!(
                "`{}` on {}: {}",
                argv.join(" "),
                m.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// glusterd runs one transaction at a time and refuses another meanwhile (the platform's
/// quota calls): such a refusal is tried again, up to 15 times a `poll` apart.
fn run_gluster(sh: &impl Shell, m: &Machine, argv: &[String], poll: Duration) -> Result<String> {
    let mut n = 0;
    loop {
        match sh.run(m, argv) {
            Err(e)
                if n < 15
                    && ["Another transaction", "Locking failed", "locked"]
                        .iter()
                        .any(|x| format!("{e:#}").contains(x)) =>
            {
                n += 1;
                std::thread::sleep(poll);
            }
            r => return r,
        }
    }
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// What the storage nodes and the clients say. Every storage node must answer (its glusterd
/// is what the volume is made of); a client that does not is marked unreachable.
pub fn observe(sh: &impl Shell, machines: &[Machine], poll: Duration) -> Result<ObservedStorage> {
    let storage: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == Role::Storage)
        .collect();
    let mut o = ObservedStorage::default();
    let mut anchor = None;
    for m in &storage {
        let list = run_gluster(sh, m, &gluster(&["volume", "list"]), poll).with_context(|| {
            format!(
                "{}: glusterd does not answer (cloud-init still running? run again)",
                m.name
            )
        })?;
        if anchor.is_none() && list.lines().any(|l| l.trim() == VOLUME) {
            anchor = Some(*m);
        }
    }
    let Some(anchor) = anchor.or(storage.first().copied()) else {
        return Ok(o);
    };
    o.anchor = anchor.name.clone();
    o.peers = parse_peers(&run_gluster(
        sh,
        anchor,
        &gluster(&["peer", "status"]),
        poll,
    )?);
    let list = run_gluster(sh, anchor, &gluster(&["volume", "list"]), poll)?;
    if list.lines().any(|l| l.trim() == VOLUME) {
        o.volume = Some(parse_volume(&run_gluster(
            sh,
            anchor,
            &gluster(&["volume", "info", VOLUME]),
            poll,
        )?));
    }
    for m in machines
        .iter()
        .filter(|m| matches!(m.role, Role::Worker | Role::Manager))
    {
        let script = format!(
            "grep -F ' {CLIENT_MOUNT} glusterfs ' /etc/fstab || true; if mountpoint -q {CLIENT_MOUNT}; then echo pd-mounted; fi"
        );
        let c = match sh.run(m, &argv(&["sh", "-c", &script])) {
            Ok(out) => Client {
                fstab: out
                    .lines()
                    .find(|l| l.contains(&format!(" {CLIENT_MOUNT} glusterfs ")))
                    .map(|l| l.trim().to_owned()),
                mounted: out.lines().any(|l| l.trim() == "pd-mounted"),
                unreachable: false,
            },
            Err(_) => Client {
                unreachable: true,
                ..Client::default()
            },
        };
        o.clients.insert(m.name.clone(), c);
    }
    Ok(o)
}

/// Runs the steps in order. A probe is waited for until the peer is connected.
pub fn execute(
    sh: &impl Shell,
    machines: &[Machine],
    steps: &[Step],
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let by_name: BTreeMap<&str, &Machine> = machines.iter().map(|m| (m.name.as_str(), m)).collect();
    for (i, step) in steps.iter().enumerate() {
        progress(&format!("[{}/{}] {step} …", i + 1, steps.len()));
        let (on, args) = step.command();
        let m = *by_name
            .get(on.as_str())
            .with_context(|| format!("{on} is not a machine of the cluster"))?;
        run_gluster(sh, m, &args, poll).with_context(|| step.to_string())?;
        if let Step::Probe { peer, addr, .. } = step {
            let ip = addr.to_string();
            let mut n = 0;
            loop {
                let peers = parse_peers(&run_gluster(sh, m, &gluster(&["peer", "status"]), poll)?);
                if peers.iter().any(|p| p.connected && p.names.contains(&ip)) {
                    break;
                }
                n += 1;
                if n > 120 {
                    bail!(
                        "{peer} ({ip}) is not `Peer in Cluster (Connected)` after the probe: is glusterd running there, ports 24007-24008 open between storage nodes?"
                    );
                }
                std::thread::sleep(poll);
            }
        }
        progress("  done");
    }
    Ok(())
}

/// Observe, plan, run: the storage part of `cluster swarm` and `cluster apply --swarm`.
/// Returns the steps run; a refusal is an error (nothing run).
pub fn converge(
    c: &Checked,
    sh: &impl Shell,
    machines: &[Machine],
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Step>> {
    let seen = observe(sh, machines, poll)?;
    for (name, cl) in &seen.clients {
        if cl.unreachable {
            progress(&format!(
                "  {name} does not answer over SSH: its mount is left for the next run"
            ));
        }
    }
    let steps = plan_storage(c, machines, &seen).map_err(|e| anyhow::anyhow!("refusing: {e}"))?;
    execute(sh, machines, &steps, poll, progress)?;
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// configs/cluster.toml with `edit` applied to its text, and a machine for each droplet
    /// (made-up addresses, as in `swarm::tests::setup`).
    fn setup_with(edit: &dyn Fn(String) -> String) -> (Checked, Vec<Machine>) {
        crate::cluster::swarm::tests::setup_with(edit)
    }

    fn setup() -> (Checked, Vec<Machine>) {
        setup_with(&|t| t)
    }

    fn ip(ms: &[Machine], name: &str) -> Ipv4Addr {
        ms.iter()
            .find(|m| m.name == name)
            .map_or(Ipv4Addr::UNSPECIFIED, |m| m.private_ip)
    }

    #[test]
    fn a_fresh_cluster_gets_every_step_in_order() {
        let (c, ms) = setup();
        let steps =
            plan_storage(&c, &ms, &ObservedStorage::default()).unwrap_or_else(|e| panic!("{e}"));
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        let s1 = ip(&ms, "pd-prod-storage-01");
        let s2 = ip(&ms, "pd-prod-storage-02");
        assert_eq!(
            text[..8],
            [
                format!("gluster peer probe pd-prod-storage-02 ({s2}) from pd-prod-storage-01"),
                format!(
                    "gluster volume sites replica 2: {s1}:/data/gluster/brick {s2}:/data/gluster/brick"
                ),
                "gluster volume start sites".to_owned(),
                "gluster quota on sites".to_owned(),
                format!("gluster sites auth.allow={}", auth_allow(&ms)),
                "gluster sites features.hard-timeout=0".to_owned(),
                "gluster sites features.soft-timeout=0".to_owned(),
                "gluster sites features.quota-deem-statfs=on".to_owned(),
            ]
        );
        // Then every manager and worker mounts it, and nothing else does.
        let mounts: Vec<&Step> = steps[8..].iter().collect();
        assert_eq!(mounts.len(), 23);
        assert!(mounts.iter().all(|s| matches!(s, Step::Mount { .. })));
        let (on, args) = steps[1].command();
        assert_eq!(on, "pd-prod-storage-01");
        assert_eq!(
            args.join(" "),
            format!(
                "gluster --mode=script volume create sites replica 2 {s1}:/data/gluster/brick {s2}:/data/gluster/brick"
            )
        );
        let Some(Step::Mount { fstab, .. }) = mounts.first() else {
            panic!("no mount");
        };
        assert_eq!(
            fstab,
            &format!(
                "{s1}:/sites /mnt/sites glusterfs defaults,_netdev,nofail,backup-volfile-servers={s2} 0 0"
            )
        );
    }

    #[test]
    fn auth_allow_lists_exactly_the_workers_managers_and_storage_nodes() {
        let (_, ms) = setup();
        let allow = auth_allow(&ms);
        let listed: Vec<&str> = allow.split(',').collect();
        assert_eq!(listed.len(), 3 + 20 + 2);
        for m in &ms {
            let ip = m.private_ip.to_string();
            let want = matches!(m.role, Role::Worker | Role::Manager | Role::Storage);
            assert_eq!(listed.contains(&ip.as_str()), want, "{} ({ip})", m.name);
        }
    }

    /// A trusted pool, a volume and the clients' mounts, as the commands see them.
    #[derive(Default)]
    struct Sim {
        /// Addresses in the pool (the first storage node once it probed).
        pool: Vec<String>,
        /// Looks at `peer status` after a probe: connected from the second on.
        looks: BTreeMap<String, u32>,
        volume: Option<Volume>,
        clients: BTreeMap<String, (String, bool)>,
        fail_at: Option<usize>,
        fail_after: bool,
        commands: Vec<String>,
    }

    struct SimShell(Mutex<Sim>);

    impl Shell for SimShell {
        fn run(&self, m: &Machine, argv: &[String]) -> Result<String> {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.commands.push(format!("{}: {}", m.name, argv.join(" ")));
            let fail = s.fail_at == Some(s.commands.len());
            if fail && !s.fail_after {
                bail!("ssh: connection reset");
            }
            let r = Self::answer(&mut s, m, argv)?;
            if fail {
                bail!("ssh: connection reset after the command ran");
            }
            Ok(r)
        }
    }

    impl SimShell {
        fn answer(s: &mut Sim, m: &Machine, argv: &[String]) -> Result<String> {
            let a: Vec<&str> = argv.iter().map(String::as_str).collect();
            let me = m.private_ip.to_string();
            Ok(match a.as_slice() {
                ["gluster", "--mode=script", rest @ ..] => match rest {
                    ["volume", "list"] => match &s.volume {
                        Some(_) => "sites\n".into(),
                        None => "No volumes present in cluster\n".into(),
                    },
                    ["peer", "status"] => {
                        let others: Vec<String> =
                            s.pool.iter().filter(|p| **p != me).cloned().collect();
                        let mut out = format!("Number of Peers: {}\n", others.len());
                        for p in others {
                            let n = s.looks.entry(p.clone()).or_default();
                            *n += 1;
                            let state = if *n > 1 {
                                "Peer in Cluster (Connected)"
                            } else {
                                "Probe Sent to Peer (Connected)"
                            };
                            out.push_str(&format!("\nHostname: {p}\nUuid: 0000\nState: {state}\n"));
                        }
                        out
                    }
                    ["peer", "probe", addr] => {
                        if !s.pool.contains(&me) {
                            s.pool.push(me.clone());
                        }
                        if !s.pool.iter().any(|p| p.as_str() == *addr) {
                            s.pool.push((*addr).to_owned());
                        }
                        "peer probe: success\n".into()
                    }
                    ["volume", "info", "sites"] => {
                        let v = s.volume.as_ref().context("Volume sites does not exist")?;
                        let mut out = format!(
                            "\nVolume Name: sites\nType: Replicate\nStatus: {}\nNumber of Bricks: 1 x {} = {}\nTransport-type: tcp\nBricks:\n",
                            if v.started { "Started" } else { "Created" },
                            v.bricks.len(),
                            v.bricks.len()
                        );
                        for (i, b) in v.bricks.iter().enumerate() {
                            out.push_str(&format!("Brick{}: {b}\n", i + 1));
                        }
                        out.push_str("Options Reconfigured:\n");
                        for (k, val) in &v.options {
                            out.push_str(&format!("{k}: {val}\n"));
                        }
                        out
                    }
                    ["volume", "create", "sites", "replica", n, bricks @ ..] => {
                        if s.volume.is_some() {
                            bail!("volume create: sites: failed: Volume sites already exists");
                        }
                        assert_eq!(n.parse::<usize>().ok(), Some(bricks.len()));
                        for b in bricks {
                            let host = b.split(':').next().unwrap_or("");
                            let connected = s.looks.get(host).is_some_and(|n| *n > 1);
                            if host != me && !connected {
                                bail!(
                                    "volume create: sites: failed: Host {host} is not in 'Peer in Cluster' state"
                                );
                            }
                        }
                        s.volume = Some(Volume {
                            bricks: bricks.iter().map(|b| (*b).to_owned()).collect(),
                            ..Volume::default()
                        });
                        "volume create: sites: success\n".into()
                    }
                    ["volume", "start", "sites"] => {
                        let v = s.volume.as_mut().context("Volume sites does not exist")?;
                        if v.started {
                            bail!("volume start: sites: failed: Volume sites already started");
                        }
                        v.started = true;
                        String::new()
                    }
                    ["volume", "quota", "sites", "enable"] => {
                        let v = s.volume.as_mut().context("Volume sites does not exist")?;
                        if v.options.get("features.quota").is_some_and(|x| x == "on") {
                            bail!("quota command failed : Quota is already enabled");
                        }
                        v.options.insert("features.quota".into(), "on".into());
                        v.options.insert("features.inode-quota".into(), "on".into());
                        String::new()
                    }
                    ["volume", "set", "sites", k, val] => {
                        let v = s.volume.as_mut().context("Volume sites does not exist")?;
                        v.options.insert((*k).into(), (*val).into());
                        String::new()
                    }
                    ["volume", "add-brick", "sites", "replica", n, b] => {
                        let v = s.volume.as_mut().context("Volume sites does not exist")?;
                        assert_eq!(n.parse::<usize>().ok(), Some(v.bricks.len() + 1));
                        v.bricks.push((*b).to_owned());
                        String::new()
                    }
                    _ => bail!(
                        "unexpected gluster command on {}: {}",
                        m.name,
                        argv.join(" ")
                    ),
                },
                ["sh", "-c", script] if script.starts_with("grep -F") => {
                    match s.clients.get(&m.name) {
                        Some((line, mounted)) => {
                            format!("{line}\n{}", if *mounted { "pd-mounted\n" } else { "" })
                        }
                        None => String::new(),
                    }
                }
                ["sh", "-c", script] if script.starts_with("mkdir -p /mnt/sites") => {
                    let line = script
                        .split("echo '")
                        .nth(1)
                        .and_then(|r| r.split('\'').next())
                        .context("no fstab line")?
                        .to_owned();
                    if !s.volume.as_ref().is_some_and(|v| v.started) {
                        bail!("Mount failed. Check the log file for more details.");
                    }
                    s.clients.insert(m.name.clone(), (line, true));
                    String::new()
                }
                _ => bail!("unexpected command on {}: {}", m.name, argv.join(" ")),
            })
        }
    }

    fn run(c: &Checked, ms: &[Machine], sim: &SimShell) -> Result<Vec<Step>> {
        converge(c, sim, ms, Duration::ZERO, &mut |_| {})
    }

    fn check_converged(c: &Checked, ms: &[Machine], sim: &SimShell, what: &str) {
        let o = observe(sim, ms, Duration::ZERO).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let steps = plan_storage(c, ms, &o).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(steps.is_empty(), "{what}: {steps:?}");
        let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = s.volume.clone().unwrap_or_default();
        assert!(v.started, "{what}");
        assert_eq!(v.bricks.len(), 2, "{what}");
        assert_eq!(v.options.get("auth.allow"), Some(&auth_allow(ms)), "{what}");
        assert_eq!(s.clients.len(), 23, "{what}");
        assert!(s.clients.values().all(|(_, mounted)| *mounted), "{what}");
        for cmd in &s.commands {
            for bad in ["force", "remove-brick", "delete", " stop"] {
                assert!(!cmd.contains(bad), "{what}: {cmd}");
            }
        }
    }

    #[test]
    fn storage_converges_and_a_second_run_plans_nothing() {
        let (c, ms) = setup();
        let sim = SimShell(Mutex::new(Sim::default()));
        let steps = run(&c, &ms, &sim).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(steps.len(), 8 + 23);
        check_converged(&c, &ms, &sim, "first run");
        // The probe was waited for: a look at the peers after it, before the create.
        {
            let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
            let probe = s.commands.iter().position(|c| c.contains("peer probe"));
            let create = s.commands.iter().position(|c| c.contains("volume create"));
            let looks = s.commands[probe.unwrap_or(0)..create.unwrap_or(0)]
                .iter()
                .filter(|c| c.ends_with("peer status"))
                .count();
            assert_eq!(looks, 2);
        }
        let n = sim.0.lock().map(|s| s.commands.len()).unwrap_or(0);
        let again = run(&c, &ms, &sim).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(again.is_empty(), "{again:?}");
        // Looks only: 2 volume lists, peer status, another list, volume info, 23 clients.
        let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(s.commands.len() - n, 2 + 1 + 1 + 1 + 23);
    }

    #[test]
    fn a_failure_at_any_command_converges_on_the_rerun() {
        let (c, ms) = setup();
        let total = {
            let sim = SimShell(Mutex::new(Sim::default()));
            run(&c, &ms, &sim).unwrap_or_else(|e| panic!("{e:#}"));
            sim.0.lock().map(|s| s.commands.len()).unwrap_or(0)
        };
        assert!(total > 30);
        for (fail_at, fail_after) in (1..=total).flat_map(|n| [(n, false), (n, true)]) {
            let sim = SimShell(Mutex::new(Sim {
                fail_at: Some(fail_at),
                fail_after,
                ..Sim::default()
            }));
            let what = format!("failing command {fail_at} (after: {fail_after})");
            // A client's look that fails only leaves its mount for the next run.
            let _ = run(&c, &ms, &sim);
            run(&c, &ms, &sim).unwrap_or_else(|e| panic!("{what}: re-run: {e:#}"));
            // A failed client look skipped a mount: one more run takes it.
            run(&c, &ms, &sim).unwrap_or_else(|e| panic!("{what}: third run: {e:#}"));
            check_converged(&c, &ms, &sim, &what);
        }
    }

    #[test]
    fn a_spec_that_shrinks_storage_is_refused_naming_the_field() {
        let (c, ms) = setup();
        let sim = SimShell(Mutex::new(Sim::default()));
        run(&c, &ms, &sim).unwrap_or_else(|e| panic!("{e:#}"));
        let (c1, ms1) = setup_with(&|t| t.replace("count = 2 # storage", "count = 1 # storage"));
        assert_eq!(ms1.iter().filter(|m| m.role == Role::Storage).count(), 1);
        let n = sim.0.lock().map(|s| s.commands.len()).unwrap_or(0);
        let e = run(&c1, &ms1, &sim).map_or_else(|e| format!("{e:#}"), |s| panic!("ran {s:?}"));
        assert!(e.contains("roles.storage.count"), "{e}");
        assert!(e.contains("never removes"), "{e}");
        // Nothing but looks ran.
        let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            s.commands[n..].iter().all(|c| c.contains(" list")
                || c.contains("status")
                || c.contains(" info ")
                || c.contains("grep -F")),
            "{:?}",
            &s.commands[n..]
        );
    }

    #[test]
    fn a_replaced_storage_node_is_refused_by_name_and_a_third_one_adds_a_brick() {
        let (c, ms) = setup();
        let mut o = ObservedStorage {
            anchor: "pd-prod-storage-01".into(),
            ..ObservedStorage::default()
        };
        let storage: Vec<&Machine> = ms.iter().filter(|m| m.role == Role::Storage).collect();
        o.volume = Some(Volume {
            bricks: vec![
                brick(&c, storage[0]),
                "10.110.0.99:/data/gluster/brick".into(),
            ],
            started: true,
            options: BTreeMap::new(),
        });
        let e = plan_storage(&c, &ms, &o).map_or_else(|e| e, |s| panic!("{s:?}"));
        let s2 = storage[1].private_ip;
        assert!(e.contains(&format!("pd-prod-storage-02 ({s2})")), "{e}");
        assert!(
            e.contains(&format!(
                "gluster volume replace-brick sites 10.110.0.99:/data/gluster/brick {s2}:/data/gluster/brick commit force"
            )),
            "{e}"
        );
        // A third storage node: probed, then its brick added (replica 3); nothing removed.
        let (c3, ms3) = setup_with(&|t| t.replace("count = 2 # storage", "count = 3 # storage"));
        let s3: Vec<&Machine> = ms3.iter().filter(|m| m.role == Role::Storage).collect();
        let mut o3 = ObservedStorage {
            anchor: s3[0].name.clone(),
            peers: vec![Peer {
                names: vec![s3[1].private_ip.to_string()],
                connected: true,
            }],
            ..ObservedStorage::default()
        };
        let mut options: BTreeMap<String, String> = OPTIONS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        options.insert("features.quota".into(), "on".into());
        options.insert("auth.allow".into(), auth_allow(&ms3));
        o3.volume = Some(Volume {
            bricks: vec![brick(&c3, s3[0]), brick(&c3, s3[1])],
            started: true,
            options,
        });
        let line = fstab_line(&s3);
        for m in ms3
            .iter()
            .filter(|m| matches!(m.role, Role::Worker | Role::Manager))
        {
            o3.clients.insert(
                m.name.clone(),
                Client {
                    fstab: Some(line.clone()),
                    mounted: true,
                    unreachable: false,
                },
            );
        }
        let steps = plan_storage(&c3, &ms3, &o3).unwrap_or_else(|e| panic!("{e}"));
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                format!(
                    "gluster peer probe {} ({}) from {}",
                    s3[2].name, s3[2].private_ip, s3[0].name
                ),
                format!("gluster add-brick sites replica 3 {}", brick(&c3, s3[2])),
            ]
        );
    }

    #[test]
    fn parses_what_gluster_prints() {
        let peers = parse_peers(
            "Number of Peers: 2\n\nHostname: 10.110.0.12\nUuid: 5e1a\nState: Peer in Cluster (Connected)\nOther names:\npd-prod-storage-02\n\nHostname: 10.110.0.13\nUuid: 77aa\nState: Peer in Cluster (Disconnected)\n",
        );
        assert_eq!(
            peers,
            [
                Peer {
                    names: vec!["10.110.0.12".into(), "pd-prod-storage-02".into()],
                    connected: true
                },
                Peer {
                    names: vec!["10.110.0.13".into()],
                    connected: false
                }
            ]
        );
        let v = parse_volume(
            "\nVolume Name: sites\nType: Replicate\nVolume ID: 1b2c\nStatus: Started\nSnapshot Count: 0\nNumber of Bricks: 1 x 2 = 2\nTransport-type: tcp\nBricks:\nBrick1: 10.110.0.11:/data/gluster/brick\nBrick2: 10.110.0.12:/data/gluster/brick\nOptions Reconfigured:\nauth.allow: 10.110.0.1,10.110.0.2\nfeatures.quota: on\ncluster.granular-entry-heal: on\n",
        );
        assert!(v.started);
        assert_eq!(
            v.bricks,
            [
                "10.110.0.11:/data/gluster/brick",
                "10.110.0.12:/data/gluster/brick"
            ]
        );
        assert_eq!(v.options["auth.allow"], "10.110.0.1,10.110.0.2");
        assert_eq!(quote("a b'c"), "'a b'\\''c'");
        assert_eq!(
            quote("10.0.0.1:/data/gluster/brick"),
            "10.0.0.1:/data/gluster/brick"
        );
    }
}
