//! `lab node kill|start|drain|activate`, and removing workers when `lab up` shrinks the
//! lab: failures and maintenance of one node while the rest of the lab keeps running.
//!
//! `kill` is a machine failure, not a daemon restart: every process of the node (dockerd,
//! containerd, shims and the containers of its tasks, all in the node's cgroup) gets
//! SIGKILL, so its tasks stop answering at once. Killing dockerd alone would leave the
//! containers running and reachable on the overlay, which is not what a dead worker does.
//! The node's docker data (a tmpfs) stays: `start` brings the same swarm node back, and it
//! rejoins with its labels and images.
use super::sh::{self, cmd, progress, run, try_out, wait_for};
use super::{Lab, Node, data, net, nodes, proc};
use anyhow::{Context, Result, bail};
use std::time::Duration;

/// The lab node called `name` (`w2` or `pdlab-w2`).
pub fn find(lab: &Lab, name: &str) -> Result<Node> {
    let short = name.strip_prefix("pdlab-").unwrap_or(name);
    lab.topo
        .nodes()
        .into_iter()
        .find(|n| n.name == short)
        .with_context(|| {
            format!(
                "no node {name} in this lab (nodes: {})",
                lab.topo
                    .nodes()
                    .iter()
                    .map(|n| n.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// SIGKILLs every process of the node (a worker failure).
pub fn kill(_lab: &Lab, node: &Node) -> Result<usize> {
    if node.name == "m1" {
        bail!("m1 runs the swarm's only manager and the edge; kill a worker instead");
    }
    let n = proc::kill_cgroup(&node.host())?;
    progress(
        "node",
        format!(
            "{}: {n} process(es) killed (dockerd, containerd, tasks)",
            node.host()
        ),
    );
    Ok(n)
}

/// Brings a killed or stopped node back: namespace, dockerd (same data: same swarm node,
/// labels, images), Gluster mount. Waits until the swarm sees it `Ready`.
pub fn start(lab: &Lab, node: &Node) -> Result<()> {
    net::ensure_node(node)?;
    nodes::ensure_dockerd(lab, node)?;
    data::ensure_mount(lab, node)?;
    let m1 = lab.topo.first_manager();
    let id = nodes::swarm_node_id(node)
        .with_context(|| format!("{} has no swarm state; run `lab up`", node.host()))?;
    wait_for(
        &format!("{} to be Ready in the swarm", node.host()),
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            try_out(&mut m1.docker(["node", "inspect", "--format", "{{.Status.State}}", &id]))
                .filter(|s| s.trim() == "ready")
                .map(|_| ())
        },
    )?;
    progress("node", format!("{} is back and Ready", node.host()));
    Ok(())
}

/// `docker node update --availability <drain|active>` on the first manager.
pub fn set_availability(lab: &Lab, node: &Node, availability: &str) -> Result<()> {
    let m1 = lab.topo.first_manager();
    let id = node_id_by_label(lab, node)?;
    run(&mut m1.docker(["node", "update", "--availability", availability, &id]))
        .with_context(|| format!("setting {} to {availability}", node.host()))?;
    progress(
        "node",
        format!("{}: availability {availability}", node.host()),
    );
    Ok(())
}

/// The swarm id of a node, found on the manager by its `pressdock.node` label (works while
/// the node itself is dead).
fn node_id_by_label(lab: &Lab, node: &Node) -> Result<String> {
    let m1 = lab.topo.first_manager();
    let out = run(&mut m1.docker([
        "node",
        "ls",
        "--filter",
        &format!("node.label=pressdock.node={}", node.name),
        "--format",
        "{{.ID}}",
    ]))?;
    out.lines()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("no swarm node labelled pressdock.node={}", node.name))
}

/// Removes a worker from the lab for good (when `lab up` is asked for fewer workers):
/// drain, leave the swarm, end its processes, unmount, delete its namespace and link.
/// Already gone is success.
pub fn remove_worker(lab: &Lab, all: &super::Topology, node: &Node) -> Result<()> {
    let m1 = lab.topo.first_manager();
    // As `cluster apply --swarm` takes a worker out: its sites moved by the platform, then
    // swarm drain, leave, `node rm` (the production code, on this namespace machine).
    // `lab up` itself never fails on it (the lab test checks that this path ran): a failed
    // evacuation is reported and the node removed by force, as before.
    let platform_id = match super::machines::evacuate(lab, all, node) {
        Ok(id) => id,
        Err(e) => {
            progress(
                "node",
                format!(
                    "{}: evacuation through the cluster code failed ({e:#}); removing it anyway",
                    node.host()
                ),
            );
            None
        }
    };
    // Leftovers (a node whose dockerd is dead): its entry by label.
    let id = node_id_by_label(lab, node).ok();
    if sh::ok(&mut node.docker(["version"])) {
        let _ = run(&mut node.docker(["swarm", "leave", "--force"]));
    }
    destroy_machine(lab, node)?;
    if let Some(id) = id {
        let _ = run(&mut m1.docker(["node", "rm", "--force", &id]));
    }
    // The machine is gone ("droplet destroyed"): the platform forgets it.
    if let Some(pid) = platform_id
        && let Err(e) = super::machines::forget(lab, &pid)
    {
        progress(
            "node",
            format!("{}: the platform did not forget it: {e:#}", node.host()),
        );
    }
    progress("node", format!("{} removed from the lab", node.host()));
    Ok(())
}

/// The machine itself destroyed ("droplet destroyed"): its processes (dockerd, containerd,
/// tasks), mounts, docker data, namespace and link. Its swarm entry and platform record stay.
fn destroy_machine(lab: &Lab, node: &Node) -> Result<()> {
    lab.procs
        .stop(&format!("dockerd-{}", node.host()), Duration::from_secs(10))?;
    proc::kill_cgroup(&node.host())?;
    let mount = format!("gluster-mount-{}", node.host());
    lab.procs.stop(&mount, Duration::from_secs(2))?;
    let dir = lab.path(&format!("nodes/{}", node.host()));
    for m in super::down::lab_mounts() {
        if m.starts_with(&*dir.to_string_lossy())
            || m.starts_with(&format!("{}/{}", super::RUN, node.host()))
        {
            let _ = run(&mut cmd("umount", ["-l", &m]));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(std::path::Path::new(super::RUN).join(node.host()));
    let _ = std::fs::remove_dir(proc::cgroup_dir(&node.host()));
    if std::path::Path::new(&node.netns_path()).exists() {
        run(&mut cmd("ip", ["netns", "del", &node.host()]))?;
    }
    let veth = format!("pdv-{}", node.name);
    if sh::ok(&mut cmd("ip", ["link", "show", &veth])) {
        let _ = run(&mut cmd("ip", ["link", "del", &veth]));
    }
    Ok(())
}

/// Replaces a worker's machine as `cluster apply --swarm --replace <name>` replaces a droplet
/// (a failed worker, or one to renew): its sites moved off it through the platform when it
/// runs (production's `evacuate_node`: drained there, waited until it holds none; a dead
/// node is not asked to leave the swarm), then the machine destroyed. The caller then makes
/// a new machine under the same name (`lab up`: namespace, dockerd on empty data, joined
/// and labelled by the production planner, which also removes the old entry, down under the
/// same host name) and makes the worker active again in the platform. Returns the
/// platform's id of the node (none without the platform).
///
/// Managers are refused: the swarm's raft keeps quorum only while a majority of managers
/// is up, and one changes at a time; with one manager (the lab's usual shape) replacing it
/// would leave no quorum at all.
pub fn replace_machine(lab: &Lab, node: &Node) -> Result<Option<String>> {
    if node.role == super::Role::Manager {
        let managers = u32::from(lab.topo.managers);
        let quorum = managers / 2 + 1;
        bail!(
            "{} is a manager: taking it away leaves {} of {managers} manager(s), and the swarm's \
             raft needs {quorum} for quorum; replace a manager only while the others keep \
             quorum, one at a time (the lab replaces workers only)",
            node.host(),
            managers - 1
        );
    }
    let platform_id = super::machines::evacuate(lab, &lab.topo, node)
        .with_context(|| format!("moving {}'s sites off it", node.host()))?;
    destroy_machine(lab, node)?;
    progress(
        "node",
        format!(
            "{}: machine destroyed; a new one is made under its name",
            node.host()
        ),
    );
    Ok(platform_id)
}
