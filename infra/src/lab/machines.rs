//! The lab as one more provider of machines for the production swarm code
//! (`crate::cluster`): each namespace node is a [`Machine`] whose dockerd is reached through
//! its socket instead of SSH, so `lab up` runs the same planner and executor as `cluster
//! swarm` (`swarm init`, joins, labels, overlay networks, removal of dead entries), the same
//! stack deployer (`cluster::stack`, bollard) and, when a worker is removed, the same
//! evacuation as `cluster apply --swarm` (`cluster::evolve::evacuate_node`: drained through
//! the platform, swarm drain, leave, `node rm`), on real swarm nodes.
//!
//! What differs from production is the lab's shape, not the code: its managers also carry
//! the cache tier (`pressdock.cache=true`); a node is named `pdlab-<m1|w1…>` (its host
//! name, which the platform's node sync records) and labelled `pressdock.node=<m1|w1…>`.
use super::{Lab, Node, Role as LabRole, Topology};
use crate::cluster::spec::Role;
use crate::cluster::swarm::{self, Machine};
use crate::cluster::swarm_exec::{self, Docker};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Slots of a lab worker (`pressdock.slots`).
pub const SLOTS: u32 = 25;
/// The pool the platform places sites in (`pressdock.pool`).
pub const POOL: &str = "wp";

/// `docker` against a lab node's daemon, through its socket.
pub struct LabDocker;

/// The lab node a machine is.
pub fn node_of(m: &Machine) -> Node {
    Node {
        name: m.name.strip_prefix("pdlab-").unwrap_or(&m.name).to_owned(),
        role: if m.role == Role::Manager {
            LabRole::Manager
        } else {
            LabRole::Worker
        },
        ip: m.private_ip.to_string(),
    }
}

impl Docker for LabDocker {
    fn run(&self, m: &Machine, args: &[String]) -> Result<String> {
        let out = node_of(m)
            .docker(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "`docker {}` on {}: {}",
                swarm_exec::redacted(args),
                m.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn deploy_stack(
        &self,
        m: &Machine,
        stack: &str,
        repo: &Path,
        file: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<()> {
        crate::cluster::stack::deploy_file(
            &node_of(m).sock(),
            stack,
            repo,
            file,
            vars,
            Duration::from_secs(300),
        )
        .map(|_| ())
    }
}

/// The machines of a lab topology.
pub fn machines(topo: &Topology) -> Vec<Machine> {
    topo.nodes()
        .into_iter()
        .map(|n| {
            let ip = n.ip.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            Machine {
                name: n.host(),
                role: match n.role {
                    LabRole::Manager => Role::Manager,
                    LabRole::Worker => Role::Worker,
                },
                private_ip: ip,
                public_ip: ip,
            }
        })
        .collect()
}

/// The labels of a lab node (`ready`: a worker that can run sites gets its pool).
pub fn labels(m: &Machine, ready: bool) -> Vec<(String, String)> {
    let n = node_of(m);
    let mut l = vec![
        ("pressdock.node".to_owned(), n.name),
        ("pressdock.role".to_owned(), m.role.as_str().to_owned()),
    ];
    match m.role {
        // In the lab the managers also carry the cache tier (Varnish).
        Role::Manager => l.push(("pressdock.cache".into(), "true".into())),
        _ => {
            l.push(("pressdock.slots".into(), SLOTS.to_string()));
            if ready {
                l.push(("pressdock.pool".into(), POOL.into()));
            }
        }
    }
    l
}

/// Observes the lab's machines and runs the swarm steps still missing (no stacks: `lab up`
/// deploys them itself once the images are loaded). `ready`: workers that can run sites.
pub fn converge(lab: &Lab, ready: bool) -> Result<usize> {
    let ms = machines(&lab.topo);
    let d = LabDocker;
    let o = swarm_exec::observe(&d, &ms)?;
    let steps = swarm::plan_swarm_labelled(&labels, &ms, &o, &|_| ready, &[]);
    if steps.is_empty() {
        return Ok(0);
    }
    let leader = swarm::leader(&ms, &o).context("the lab has no manager")?;
    swarm_exec::execute(
        &d,
        &ms,
        &leader.name,
        &steps,
        &lab.repo,
        Duration::from_millis(300),
        &mut |l| {
            if l.trim() != "done" {
                super::sh::progress("swarm", l.trim());
            }
        },
    )?;
    Ok(steps.len())
}

/// Takes a worker out of the serving lab as `cluster apply --swarm` takes a droplet out:
/// through the platform when it runs (its sites moved, waited for), then swarm drain, leave
/// and `node rm` ([`crate::cluster::evolve::evacuate_node`]). `all`: the topology the node
/// is part of. Returns the platform's id of the node, to forget once it is gone.
pub fn evacuate(lab: &Lab, all: &Topology, node: &Node) -> Result<Option<String>> {
    use crate::cluster::evolve::{self, AnyPlatform, Evacuation};
    let ms = machines(all);
    let d = LabDocker;
    let seen = swarm_exec::observe_with(&d, &ms, true)?;
    let ready = seen.local.get(&node.host()).is_some_and(|l| l.in_swarm);
    let platform = match super::platform::staff_client(lab) {
        Some(c) => AnyPlatform::Api(c),
        None => AnyPlatform::None,
    };
    let host = node.host();
    crate::cluster::stack::block_on(|| async {
        let e = Evacuation {
            docker: &d,
            platform: &platform,
            machines: &ms,
            swarm: &seen,
            poll: Duration::from_millis(500),
            timeout: Duration::from_secs(300),
            // A lab without its platform serves no sites.
            drain_without_platform: true,
        };
        use crate::cluster::evolve::Platform as _;
        evolve::evacuate_node(&e, &host, Role::Worker, ready, &mut |l| {
            super::sh::progress("node", l.trim());
        })
        .await?;
        Ok(if platform.is_none() {
            None
        } else {
            platform
                .nodes()
                .await?
                .into_iter()
                .find(|n| n.name == host)
                .map(|n| n.id)
        })
    })
}

/// Has the platform forget a node that is gone (`DELETE /v1/nodes/{id}`).
pub fn forget(lab: &Lab, id: &str) -> Result<()> {
    use crate::cluster::evolve::Platform as _;
    let Some(c) = super::platform::staff_client(lab) else {
        return Ok(());
    };
    crate::cluster::stack::block_on(move || async move { c.forget(id).await })
}
