//! The lab as one more provider of machines for the production swarm code
//! (`crate::cluster`): each namespace node is a [`Machine`] whose dockerd is reached through
//! its socket instead of SSH, so `lab up` runs the same planner and executor as `cluster
//! swarm` (`swarm init`, joins, labels, overlay networks, removal of dead entries), the same
//! stack deployer (`cluster::stack`, bollard) and, when a worker is removed, the same
//! evacuation as `cluster apply --swarm` (`cluster::evolve::evacuate_node`: drained through
//! the platform, swarm drain, leave, `node rm`), on real swarm nodes.
//!
//! What differs from production is the lab's shape, not the code: its managers also carry
//! the cache tier (`pressdock.cache=true`) and the monitoring placeholder
//! (`pressdock.monitoring=true`); a node is named `pdlab-<m1|w1…>` (its host
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
        // In the lab the managers also carry the cache tier (Varnish, Redis, Sentinel) and
        // the monitoring placeholder.
        Role::Manager => {
            l.push(("pressdock.cache".into(), "true".into()));
            l.push(("pressdock.monitoring".into(), "true".into()));
        }
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
    let steps = swarm_exec::converge(
        &LabDocker,
        &ms,
        false,
        |o| swarm::plan_swarm_labelled(&labels, &ms, o, &|_| ready, &[]),
        swarm_exec::StackSource {
            repo: &lab.repo,
            set: &crate::cluster::images::Images::lab().vars(),
        },
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

/// Makes a replaced worker a placement target again in the platform (`PATCH /v1/nodes/{id}`
/// `availability=active`), as `cluster apply --swarm` does after a replacement: only the
/// drain the replacement set. Retried while the platform refuses (its node sync links the
/// new machine within a few seconds).
pub fn activate(lab: &Lab, node: &Node, id: &str) -> Result<()> {
    use crate::cluster::evolve::Platform as _;
    let Some(c) = super::platform::staff_client(lab) else {
        return Ok(());
    };
    let mut last = String::new();
    super::sh::wait_for(
        &format!("the platform to take {} back", node.host()),
        Duration::from_secs(60),
        Duration::from_secs(1),
        || match crate::cluster::stack::block_on(|| async {
            c.set_availability(id, "active").await
        }) {
            Ok(()) => Some(()),
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        },
    )
    .with_context(|| format!("last answer: {last}"))?;
    super::sh::progress(
        "node",
        format!("{}: active again in the platform", node.host()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::swarm::{ObservedSwarm, Step, plan_swarm_labelled};

    #[test]
    fn a_fresh_lab_gets_the_production_steps_with_its_own_labels() {
        let topo = Topology {
            managers: 1,
            workers: 2,
            galera_nodes: 1,
        };
        let ms = machines(&topo);
        assert_eq!(
            ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["pdlab-m1", "pdlab-w1", "pdlab-w2"]
        );
        let steps = plan_swarm_labelled(&labels, &ms, &ObservedSwarm::default(), &|_| false, &[]);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "swarm init on pdlab-m1 (10.213.0.11)",
                "pdlab-w1 (10.213.0.21) joins as worker",
                "pdlab-w2 (10.213.0.22) joins as worker",
                "label pdlab-m1: pressdock.node=m1 pressdock.role=manager pressdock.cache=true pressdock.monitoring=true",
                "label pdlab-w1: pressdock.node=w1 pressdock.role=worker pressdock.slots=25",
                "label pdlab-w2: pressdock.node=w2 pressdock.role=worker pressdock.slots=25",
                "overlay network pd-edge 10.214.0.0/22",
                "overlay network pd-sites 10.216.0.0/20",
            ]
        );
        // The docker commands go to the lab node's socket.
        let (on, args) = steps[1].command("pdlab-m1");
        assert_eq!(on, "pdlab-w1");
        assert_eq!(
            args.join(" "),
            "swarm join --token {TOKEN} --advertise-addr 10.213.0.21 10.213.0.11:2377"
        );
        let m = ms.iter().find(|m| m.name == on).map(node_of);
        assert_eq!(
            m.map(|n| n.docker_host()),
            Some(format!("unix://{}/run/pdlab-w1.sock", super::super::STATE))
        );
        // Ready workers get their pool; nothing else changes.
        let ready = labels(&ms[1], true);
        assert_eq!(
            ready.last(),
            Some(&("pressdock.pool".to_owned(), "wp".to_owned()))
        );
        assert!(matches!(steps[0], Step::Init { .. }));
    }
}
