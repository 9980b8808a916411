//! The cluster backup on the lab (issue 15, item 7): production's code
//! ([`crate::cluster::backup`]: mariabackup | zstd → S3 with a manifest, restore with the
//! SHA-256 check, prepare and `grastate.dat`) against the lab's Galera nodes and its S3 server
//! (s3s-fs, signed with the platform's keys), and the restore runbook of infra/README.md
//! ("Restore") carried out on the lab's nodes: the backup prepared beside the cluster, every
//! node stopped, the data directories moved aside, node 1 bootstrapped on the backup at its
//! position, the others joined by state transfer (SST).
//!
//! The swarm's state the same way: the manager's `/var/lib/docker/swarm` copied with its
//! dockerd stopped (as Docker's documentation asks; the lab's only manager, so the swarm has
//! no manager and the edge no Traefik for those seconds), and a lost manager state recovered:
//! the copy unpacked into the manager's docker root, dockerd started,
//! `docker swarm init --force-new-cluster`.
//!
//! Backups go to their own bucket (`pdlab-cluster`, prefix `pd-lab`), apart from the
//! platform's site backups in `backups`.
use super::data::{self, galera_dir, galera_sock, galera_state};
use super::sh::progress;
use super::{HOST_IP, Lab, Node, nodes, ports};
use crate::cluster::backup::{self, Galera, GaleraBackup, RestoredGalera, S3, Secret};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "pdlab-cluster";
pub const PREFIX: &str = "pd-lab";

/// The lab's S3 server as the cluster backup's bucket.
pub fn s3(lab: &Lab) -> Result<S3> {
    S3::new(
        &format!("http://{HOST_IP}:{}", ports::S3),
        BUCKET,
        data::S3_REGION,
        &lab.secrets.s3_access_key,
        Secret::new(lab.secrets.s3_secret_key.clone()),
    )
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn synced(lab: &Lab, n: u8) -> bool {
    galera_state(lab, n).is_some_and(|(l, c)| l == "Synced" && c == "Primary")
}

/// Hot backup of one Synced node: the highest-numbered one, since the router sends writes to
/// node 1. Returns the node and the backup.
pub fn backup_galera(lab: &Lab) -> Result<(u8, GaleraBackup)> {
    let node = (1..=lab.topo.galera_nodes)
        .rev()
        .find(|n| synced(lab, *n))
        .context("no Synced Galera node to back up")?;
    // Root over the node's socket: the lab's root has no password and is local only.
    let g = Galera {
        user: "root".into(),
        password: Secret::new(String::new()),
        socket: Some(galera_sock(lab, node)),
        host: HOST_IP.into(),
        port: data::galera_port(node),
        datadir: galera_dir(lab, node).join("data"),
        galera_info: true,
    };
    let s3 = s3(lab)?;
    let b = runtime()?.block_on(async {
        s3.ensure_bucket().await?;
        backup::backup_galera(&s3, &g, PREFIX).await
    })?;
    Ok((node, b))
}

/// What a restore did, for the operator and the tests.
#[derive(Debug)]
pub struct Restored {
    pub restored: RestoredGalera,
    /// Fetch, check, unpack, prepare (the cluster still running meanwhile, if it was).
    pub prepare: Duration,
    /// From the first node stopped until every node is Synced again.
    pub outage: Duration,
}

/// Rebuilds the lab's Galera cluster from a backup (`latest` or a stamp), whatever state it is
/// in (running, some nodes dead, every data directory gone). The old data directories are
/// kept as `data.before-restore` (one generation) until the next restore or `lab down`.
pub fn restore_galera(lab: &Lab, which: &str) -> Result<Restored> {
    let s3 = s3(lab)?;
    let t0 = Instant::now();
    // 1. The backup prepared beside the nodes: a bad or altered copy stops the restore here,
    //    with nothing stopped or moved.
    let staging = lab.path("galera/restore");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    progress("galera", format!("fetching and preparing backup {which}"));
    let restored = runtime()?.block_on(backup::restore_galera(
        &s3,
        PREFIX,
        which,
        &staging,
        Some("mysql"),
    ))?;
    let Some(position) = restored.position.clone() else {
        bail!(
            "backup {} has no Galera position: it cannot start a cluster",
            restored.stamp
        );
    };
    let prepare = t0.elapsed();
    // 2. Every node stopped (a node left running would keep the old cluster alive).
    let t1 = Instant::now();
    let total = lab.topo.galera_nodes;
    for n in 1..=total {
        if lab
            .procs
            .stop(&format!("galera-{n}"), Duration::from_secs(60))?
        {
            progress("galera", format!("node {n} stopped"));
        }
    }
    // 3. Their data moved aside; node 1 gets the backup, the others start empty.
    for n in 1..=total {
        let d = galera_dir(lab, n).join("data");
        let aside: PathBuf = galera_dir(lab, n).join("data.before-restore");
        if aside.exists() {
            std::fs::remove_dir_all(&aside)
                .with_context(|| format!("removing {}", aside.display()))?;
        }
        if d.exists() {
            std::fs::rename(&d, &aside).with_context(|| format!("moving {} aside", d.display()))?;
        }
    }
    std::fs::rename(&staging, galera_dir(lab, 1).join("data"))
        .context("moving the prepared backup into node 1's data directory")?;
    // 4. Node 1 bootstraps at the backup's position; the others join by SST, one at a time.
    progress(
        "galera",
        format!(
            "bootstrapping node 1 from backup {} at {position}",
            restored.stamp
        ),
    );
    data::ensure_galera(lab)?;
    for n in 1..=total {
        if !synced(lab, n) {
            bail!("Galera node {n} is not Synced after the restore");
        }
    }
    Ok(Restored {
        restored,
        prepare,
        outage: t1.elapsed(),
    })
}

/// The manager whose swarm state the lab backs up (its first).
fn manager(lab: &Lab) -> Node {
    lab.topo.first_manager()
}

fn docker_root(lab: &Lab, m: &Node) -> PathBuf {
    lab.path(&format!("nodes/{}/docker", m.host()))
}

fn stop_dockerd(lab: &Lab, m: &Node) -> Result<()> {
    lab.procs
        .stop(&format!("dockerd-{}", m.host()), Duration::from_secs(30))?;
    Ok(())
}

/// `LocalNodeState` and `ControlAvailable` of a node's dockerd.
fn swarm_local(m: &Node) -> String {
    super::sh::try_out(&mut m.docker([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]))
    .unwrap_or_default()
    .trim()
    .to_owned()
}

/// The manager's dockerd log, its last lines: for an error that must say why without a shell.
fn dockerd_log(lab: &Lab, m: &Node) -> String {
    let path = lab.path(&format!("logs/dockerd-{}.log", m.host()));
    format!(
        "dockerd log {}, last 30 lines:\n{}",
        path.display(),
        data::log_tail(&path, 30)
    )
}

/// Waits until the manager leads its swarm (`active true`); the error holds its last state
/// and its dockerd's log.
fn wait_managing(lab: &Lab, m: &Node) -> Result<()> {
    super::sh::wait_for(
        &format!("{} to manage the swarm again", m.host()),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || (swarm_local(m) == "active true").then_some(()),
    )
    .with_context(|| {
        format!(
            "{}: swarm state now {:?}; {}",
            m.host(),
            swarm_local(m),
            dockerd_log(lab, m)
        )
    })
}

/// Backs up the first manager's swarm state, its dockerd stopped for the copy and started
/// again whatever happened. Returns what was stored and how long dockerd was down.
pub fn backup_swarm(lab: &Lab) -> Result<(backup::Stored, Duration)> {
    let m = manager(lab);
    let s3 = s3(lab)?;
    let rt = runtime()?;
    rt.block_on(s3.ensure_bucket())?;
    let t0 = Instant::now();
    stop_dockerd(lab, &m)?;
    let r = rt.block_on(backup::backup_swarm(
        &s3,
        &docker_root(lab, &m).join("swarm"),
        &m.host(),
        PREFIX,
        false,
    ));
    nodes::ensure_dockerd(lab, &m)?;
    wait_managing(lab, &m)?;
    let down = t0.elapsed();
    // Traefik and Varnish restarted with the manager's dockerd (new task addresses).
    super::up::wait_edge(lab)?;
    Ok((r?, down))
}

/// Recovers the swarm's manager state from a backup (`latest` or a stamp): the manager's
/// dockerd stopped, its `swarm` folder (if any) kept aside as `swarm.before-restore`, the
/// backup unpacked in its place, dockerd started, `swarm init --force-new-cluster` (a
/// one-manager raft holding the backup's services, networks, secrets and nodes; the workers
/// reconnect to the same address with their certificates from the same CA). Returns the
/// stamp and the time from dockerd stopped to the manager being leader again.
pub fn restore_swarm(lab: &Lab, which: &str) -> Result<(String, Duration)> {
    let m = manager(lab);
    let s3 = s3(lab)?;
    let rt = runtime()?;
    // The copy exists and is named before anything is stopped.
    let stamp = rt.block_on(backup::pick(
        &s3,
        PREFIX,
        &format!("swarm/{}", m.host()),
        which,
    ))?;
    let t0 = Instant::now();
    stop_dockerd(lab, &m)?;
    let root = docker_root(lab, &m);
    let aside = root.join("swarm.before-restore");
    if aside.exists() {
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
    }
    if root.join("swarm").exists() {
        std::fs::rename(root.join("swarm"), &aside).context("moving the swarm state aside")?;
    }
    rt.block_on(backup::restore_swarm(&s3, PREFIX, &m.host(), &stamp, &root))?;
    nodes::ensure_dockerd(lab, &m)?;
    // dockerd starts its swarm component from the restored state in the background: wait
    // until it settled (not `pending`) before re-initialising the raft, and retry the init a
    // few times (it is idempotent on a lone manager), keeping the daemon's last answer.
    super::sh::wait_for(
        &format!("{}'s swarm state to settle", m.host()),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let s = swarm_local(&m);
            let state = s.split_whitespace().next().unwrap_or("");
            ["active", "inactive", "error", "locked"]
                .contains(&state)
                .then_some(())
        },
    )
    .with_context(|| {
        format!(
            "{}: swarm state now {:?}; {}",
            m.host(),
            swarm_local(&m),
            dockerd_log(lab, &m)
        )
    })?;
    progress(
        "swarm",
        format!("{}: swarm init --force-new-cluster", m.host()),
    );
    let mut last = String::new();
    let mut done = false;
    for _ in 0..5 {
        match super::sh::run(&mut m.docker([
            "swarm",
            "init",
            "--force-new-cluster",
            "--advertise-addr",
            &m.ip,
        ])) {
            Ok(answer) => {
                // The daemon's answer kept, for the record.
                progress(
                    "swarm",
                    format!(
                        "swarm init --force-new-cluster: {}",
                        answer.lines().next().unwrap_or("").trim()
                    ),
                );
                done = true;
                break;
            }
            Err(e) => {
                last = format!("{e:#}");
                progress(
                    "swarm",
                    format!(
                        "swarm init --force-new-cluster: {last}; swarm state {:?}; again",
                        swarm_local(&m)
                    ),
                );
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    if !done {
        bail!(
            "docker swarm init --force-new-cluster on {}, 5 tries: {last}; swarm state now {:?}; {}",
            m.host(),
            swarm_local(&m),
            dockerd_log(lab, &m)
        );
    }
    wait_managing(lab, &m)?;
    let took = t0.elapsed();
    super::up::wait_edge(lab)?;
    Ok((stamp, took))
}
