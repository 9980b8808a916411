//! From machines to a swarm (issue 15, item 4): the steps that turn the droplets `apply`
//! made into one labelled swarm with its overlay networks and stacks. A pure planner, like
//! [`super::plan`]: what each machine says about itself (`docker info`) and what the leader
//! says about the swarm (`docker node ls`, labels, networks) in, the missing steps out, in the
//! order they must run.
//!
//! - `swarm init` on the first manager, on its VPC address, if no machine is in a swarm;
//! - managers join one at a time, each through the first manager (raft keeps quorum only if
//!   one member changes at a time; the executor waits for a joined manager to be `Reachable`
//!   before the next);
//! - every other role joins as a worker (the data tier too: its stacks are placed by labels);
//! - labels: `pressdock.role=<role>`, `pressdock.node=<name>`, `pressdock.cache=true` on cache
//!   nodes, `pressdock.monitoring=true` on monitoring nodes, `pressdock.slots=<n>` on
//!   workers, and `pressdock.pool=<pool>` last, once the worker can run sites (the platform
//!   places sites only on workers with it, as in the lab);
//! - worker nodes that are down and no machine's (a replaced droplet's old node) removed;
//! - the overlay networks `pd-edge` and `pd-sites` (attachable, the lab's subnets);
//! - the stacks in `stacks/` ([`STACKS`]).
//!
//! Join tokens are not part of a step: the executor reads them from the first manager when it
//! runs a join, so a printed plan never holds one. Every value reaching a command is ours
//! (names derived from the spec, addresses from the provider, validated here).
//!
//! The executor is [`super::swarm_exec`] (docker over SSH in production; the lab's
//! namespace nodes through their sockets, `crate::lab::machines`, so these steps run on real
//! swarm nodes in every `lab up`). `cluster swarm --dry-run` prints the steps for machines
//! that are in no swarm yet.
use super::desired::Desired;
use super::provider::ObservedDroplet;
use super::spec::{Checked, Role};
use std::collections::BTreeMap;
use std::fmt;

/// Overlay networks (name, subnet): the lab's, so that stacks and the platform's config are
/// the same in both.
pub const NETWORKS: [(&str, &str); 2] = [
    (crate::lab::EDGE_NET, crate::lab::EDGE_SUBNET),
    (crate::lab::SITES_NET, crate::lab::SITES_SUBNET),
];

/// Stacks deployed on the swarm, in order: the edge, the cache tier's Redis and Sentinels,
/// the database tier's Galera and ProxySQL, the monitoring placeholder. The storage tier
/// (GlusterFS) has no stack (infra/README.md, "Stacks"); `stacks/lab-hello.yml` is the lab's
/// test site.
pub const STACKS: [(&str, &str); 4] = [
    ("pd", "stacks/edge.yml"),
    ("cache", "stacks/cache.yml"),
    ("database", "stacks/database.yml"),
    ("monitoring", "stacks/monitoring.yml"),
];

/// The number of a database node (`pd-prod-database-02` → 2): its Galera service is
/// `galera-<n>` of `stacks/database.yml`, placed by the label `pressdock.galera=<n>`.
pub fn galera_number(m: &Machine) -> Option<u32> {
    if m.role != Role::Database {
        return None;
    }
    let digits = m.name.rsplit('-').next()?;
    digits.parse().ok().filter(|n| *n > 0)
}

/// The stacks' variables that come from the machines, not the spec: `PD_DB_NODES`, the
/// database nodes' VPC addresses in node order (Galera's peers, ProxySQL's servers).
pub fn machine_vars(machines: &[Machine]) -> BTreeMap<String, String> {
    let mut db: Vec<(u32, std::net::Ipv4Addr)> = machines
        .iter()
        .filter_map(|m| Some((galera_number(m)?, m.private_ip)))
        .collect();
    db.sort_unstable();
    let addrs: Vec<String> = db.iter().map(|(_, ip)| ip.to_string()).collect();
    BTreeMap::from([("PD_DB_NODES".to_owned(), addrs.join(" "))])
}

/// The node label (on the managers) that records the hash of a stack as last deployed:
/// `pressdock.stack.<stack>=<sha256 of the compose file and its variables>`.
pub const STACK_LABEL: &str = "pressdock.stack.";

/// A stack to deploy and what it is made of now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackFile {
    pub stack: String,
    pub file: String,
    /// SHA-256 (hex) of the file and the `PD_*` variables it names; empty: unknown, deploy.
    pub hash: String,
}

/// [`STACKS`] with their hashes, from the files under `repo` and their variables: `set`'s
/// (the deployer's own: the spec's images, [`super::images::Images::vars`]), else the
/// environment's, as [`super::swarm_exec::stack_vars`] fills them in.
pub fn stack_files(
    repo: &std::path::Path,
    set: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<StackFile>> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    for (stack, file) in STACKS {
        let text =
            std::fs::read_to_string(repo.join(file)).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let mut h = Sha256::new();
        h.update(text.as_bytes());
        // `${PD_…}` values change what is deployed as much as the file does.
        for v in super::stack::variables(&text) {
            let value = match set.get(&v) {
                Some(x) => x.clone(),
                None => std::env::var(&v).unwrap_or_default(),
            };
            h.update(format!("\n{v}={value}").as_bytes());
        }
        out.push(StackFile {
            stack: stack.into(),
            file: file.into(),
            hash: hex::encode(h.finalize()),
        });
    }
    Ok(out)
}

/// One node of the cluster as the swarm steps need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub role: Role,
    /// VPC address: swarm traffic stays on the private network.
    pub private_ip: std::net::Ipv4Addr,
    /// Where SSH reaches it.
    pub public_ip: std::net::Ipv4Addr,
}

/// What a machine's dockerd says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    /// `docker info`'s `Swarm.LocalNodeState` is `active`.
    pub in_swarm: bool,
    pub node_id: String,
    /// Its dockerd did not answer (a failed machine, or one still booting): no step for it.
    pub unreachable: bool,
}

/// What the swarm's leader says.
#[derive(Clone, Debug, Default)]
pub struct Swarm {
    /// Node id → labels.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Every node the leader lists: id, host name, status (`Ready`, `Down`), manager.
    pub nodes: Vec<SwarmNode>,
    pub networks: Vec<String>,
    /// Stack → hash as last deployed (from the managers' [`STACK_LABEL`] labels).
    pub stacks: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    pub ready: bool,
    pub manager: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ObservedSwarm {
    /// Machine name → its own view.
    pub local: BTreeMap<String, Local>,
    pub swarm: Swarm,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Init {
        on: String,
        addr: std::net::Ipv4Addr,
    },
    Join {
        node: String,
        manager: bool,
        addr: std::net::Ipv4Addr,
        leader: std::net::Ipv4Addr,
    },
    /// Labels on a machine's node (the executor finds its node id: after a replacement two
    /// nodes share a host name).
    Label {
        node: String,
        add: Vec<(String, String)>,
    },
    /// A node that is down and no machine's (a replaced or removed droplet); a manager is
    /// demoted first (`docker node demote`), then removed.
    Remove {
        id: String,
        hostname: String,
        manager: bool,
    },
    Network {
        name: String,
        subnet: String,
    },
    /// `docker stack deploy`: creates the stack's services or updates them one task at a
    /// time (each service's `update_config`); the executor waits until every update
    /// completed, then records `hash` on the leader's [`STACK_LABEL`].
    Deploy {
        stack: String,
        file: String,
        hash: String,
        /// The hash deployed before (an update), if any.
        was: Option<String>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Init { on, addr } => write!(f, "swarm init on {on} ({addr})"),
            Step::Join {
                node,
                manager,
                addr,
                ..
            } => write!(
                f,
                "{node} ({}) joins as {}",
                if addr.is_unspecified() {
                    "new droplet".to_owned()
                } else {
                    addr.to_string()
                },
                if *manager { "manager" } else { "worker" }
            ),
            Step::Label { node, add } => {
                let l: Vec<String> = add.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "label {node}: {}", l.join(" "))
            }
            Step::Remove {
                id,
                hostname,
                manager,
            } => write!(
                f,
                "remove down node {hostname} ({id}){}",
                if *manager { ", demoted first" } else { "" }
            ),
            Step::Network { name, subnet } => write!(f, "overlay network {name} {subnet}"),
            Step::Deploy {
                stack,
                file,
                was,
                hash,
            } => match was {
                None => write!(f, "stack {stack} from {file}"),
                Some(w) => write!(
                    f,
                    "stack {stack} from {file}: rolling update ({} → {})",
                    w.get(..12).unwrap_or(w),
                    hash.get(..12).unwrap_or(hash)
                ),
            },
        }
    }
}

impl Step {
    /// The `docker` arguments of the step and the machine that runs them (`{TOKEN}` stands
    /// for the join token, filled in by the executor, never printed).
    pub fn command(&self, first_manager: &str) -> (String, Vec<String>) {
        let s = |x: &str| x.to_owned();
        match self {
            Step::Init { on, addr } => (
                on.clone(),
                vec![
                    s("swarm"),
                    s("init"),
                    s("--advertise-addr"),
                    addr.to_string(),
                    s("--listen-addr"),
                    format!("{addr}:2377"),
                ],
            ),
            Step::Join {
                node, addr, leader, ..
            } => (
                node.clone(),
                vec![
                    s("swarm"),
                    s("join"),
                    s("--token"),
                    s("{TOKEN}"),
                    s("--advertise-addr"),
                    addr.to_string(),
                    format!("{leader}:2377"),
                ],
            ),
            Step::Label { node, add } => {
                let mut v = vec![s("node"), s("update")];
                for (k, val) in add {
                    v.push(s("--label-add"));
                    v.push(format!("{k}={val}"));
                }
                v.push(node.clone());
                (first_manager.to_owned(), v)
            }
            Step::Remove { id, .. } => (
                first_manager.to_owned(),
                vec![s("node"), s("rm"), s("--force"), id.clone()],
            ),
            Step::Network { name, subnet } => (
                first_manager.to_owned(),
                vec![
                    s("network"),
                    s("create"),
                    s("--driver"),
                    s("overlay"),
                    s("--attachable"),
                    s("--subnet"),
                    subnet.clone(),
                    name.clone(),
                ],
            ),
            Step::Deploy { stack, file, .. } => (
                first_manager.to_owned(),
                vec![
                    s("stack"),
                    s("deploy"),
                    s("--prune"),
                    s("--compose-file"),
                    file.clone(),
                    stack.clone(),
                ],
            ),
        }
    }
}

/// The machines of the cluster, from what the provider holds (droplets without both
/// addresses are left out and named in the error list).
pub fn machines(d: &Desired, droplets: &[ObservedDroplet]) -> (Vec<Machine>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for want in &d.droplets {
        let have = droplets.iter().find(|x| x.name == want.name);
        match have.and_then(|h| Some((h.private_ip?, h.public_ip?))) {
            Some((private_ip, public_ip)) => out.push(Machine {
                name: want.name.clone(),
                role: want.role,
                private_ip,
                public_ip,
            }),
            None => missing.push(want.name.clone()),
        }
    }
    (out, missing)
}

/// Labels a node of `role` carries (`ready`: it can run sites, so workers get their pool).
pub fn labels(c: &Checked, m: &Machine, ready: bool) -> Vec<(String, String)> {
    let mut l = vec![
        ("pressdock.node".to_owned(), m.name.clone()),
        ("pressdock.role".to_owned(), m.role.as_str().to_owned()),
    ];
    let r = &c.spec.roles[&m.role];
    // The tiers' stacks are placed by these (the lab puts both on its managers).
    if m.role == Role::Cache {
        l.push(("pressdock.cache".into(), "true".into()));
    }
    if m.role == Role::Monitoring {
        l.push(("pressdock.monitoring".into(), "true".into()));
    }
    // ProxySQL runs on every database node, Galera node n on the one numbered n.
    if m.role == Role::Database {
        l.push(("pressdock.database".into(), "true".into()));
        if let Some(n) = galera_number(m) {
            l.push(("pressdock.galera".into(), n.to_string()));
        }
    }
    if let Some(slots) = r.slots {
        l.push(("pressdock.slots".into(), slots.to_string()));
    }
    if ready && let Some(pool) = &r.pool {
        l.push(("pressdock.pool".into(), pool.clone()));
    }
    l
}

/// The manager that runs the swarm-wide commands (tokens, labels, networks, stacks): the
/// first manager machine in the swarm (the first manager of the spec may be a replacement
/// that has not joined yet), else the first of the spec (it inits the swarm).
pub fn leader<'a>(machines: &'a [Machine], o: &ObservedSwarm) -> Option<&'a Machine> {
    let managers = || machines.iter().filter(|m| m.role == Role::Manager);
    managers()
        .find(|m| o.local.get(&m.name).is_some_and(|l| l.in_swarm))
        .or_else(|| managers().next())
}

/// The steps still to run, in order. `ready` says which workers can run sites. Every stack
/// is deployed (its hash unknown).
pub fn plan_swarm(
    c: &Checked,
    machines: &[Machine],
    o: &ObservedSwarm,
    ready: &dyn Fn(&Machine) -> bool,
) -> Vec<Step> {
    let stacks: Vec<StackFile> = STACKS
        .iter()
        .map(|(stack, file)| StackFile {
            stack: (*stack).into(),
            file: (*file).into(),
            hash: String::new(),
        })
        .collect();
    plan_swarm_with(c, machines, o, ready, &stacks)
}

/// The steps still to run; a stack is deployed when its hash differs from the deployed one.
pub fn plan_swarm_with(
    c: &Checked,
    machines: &[Machine],
    o: &ObservedSwarm,
    ready: &dyn Fn(&Machine) -> bool,
    stacks: &[StackFile],
) -> Vec<Step> {
    plan_swarm_labelled(&|m, r| labels(c, m, r), machines, o, ready, stacks)
}

/// The labels of a machine (`bool`: it can run sites).
pub type Labeller<'a> = &'a dyn Fn(&Machine, bool) -> Vec<(String, String)>;

/// [`plan_swarm_with`] with the labels of a machine (`ready`: it can run sites) given by
/// the caller: the spec's ([`labels`]) in production, the lab's shape in the lab (its
/// managers also carry the cache tier).
pub fn plan_swarm_labelled(
    labels: Labeller<'_>,
    machines: &[Machine],
    o: &ObservedSwarm,
    ready: &dyn Fn(&Machine) -> bool,
    stacks: &[StackFile],
) -> Vec<Step> {
    let mut steps = Vec::new();
    let Some(first) = leader(machines, o) else {
        return steps;
    };
    let local = |m: &Machine| o.local.get(&m.name).cloned().unwrap_or_default();
    if !machines.iter().any(|m| local(m).in_swarm) {
        steps.push(Step::Init {
            on: first.name.clone(),
            addr: first.private_ip,
        });
    }
    // Managers first, one at a time, then everyone else.
    let mut order: Vec<&Machine> = machines.iter().filter(|m| m.name != first.name).collect();
    order.sort_by_key(|m| (m.role != Role::Manager, m.name.clone()));
    for m in order {
        if !local(m).in_swarm && !local(m).unreachable {
            steps.push(Step::Join {
                node: m.name.clone(),
                manager: m.role == Role::Manager,
                addr: m.private_ip,
                leader: first.private_ip,
            });
        }
    }
    for m in machines.iter().filter(|m| !local(m).unreachable) {
        let want = labels(m, ready(m));
        let have = o.swarm.labels.get(&local(m).node_id);
        let add: Vec<(String, String)> = want
            .into_iter()
            .filter(|(k, v)| have.and_then(|h| h.get(k)) != Some(v))
            .collect();
        if !add.is_empty() {
            steps.push(Step::Label {
                node: m.name.clone(),
                add,
            });
        }
    }
    // Nodes no machine is (any more): a replaced droplet left its old node behind, down,
    // under the same host name; a removed one that left. A down manager is demoted first
    // (after its replacement joined, above: raft counts it until then).
    let current: Vec<String> = machines.iter().map(|m| local(m).node_id).collect();
    for n in &o.swarm.nodes {
        if !n.ready && !current.contains(&n.id) {
            steps.push(Step::Remove {
                id: n.id.clone(),
                hostname: n.hostname.clone(),
                manager: n.manager,
            });
        }
    }
    for (name, subnet) in NETWORKS {
        if !o.swarm.networks.iter().any(|n| n == name) {
            steps.push(Step::Network {
                name: name.into(),
                subnet: subnet.into(),
            });
        }
    }
    // `stack deploy` converges a stack (creates or updates its services): run when the
    // stack changed since its last deploy, or when that is unknown.
    for sf in stacks {
        let was = o.swarm.stacks.get(&sf.stack);
        if sf.hash.is_empty() || was != Some(&sf.hash) {
            steps.push(Step::Deploy {
                stack: sf.stack.clone(),
                file: sf.file.clone(),
                hash: sf.hash.clone(),
                was: was.cloned(),
            });
        }
    }
    steps
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The checked-in cluster spec (configs/cluster.toml) and a machine for each droplet it
    /// wants, with made-up addresses, after `edit` on the spec's text: the fixture of this
    /// module's, `swarm_exec`'s and `storage`'s tests.
    pub(in crate::cluster) fn setup_with(
        edit: &dyn Fn(String) -> String,
    ) -> (Checked, Vec<Machine>) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/cluster.toml"
        ))
        .unwrap_or_default();
        let c = Checked::parse(&edit(text)).unwrap_or_else(|e| panic!("{e}"));
        let d = Desired::from_spec(&c);
        let ms = d
            .droplets
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let i = u8::try_from(i).unwrap_or(0);
                Machine {
                    name: x.name.clone(),
                    role: x.role,
                    private_ip: std::net::Ipv4Addr::new(10, 110, 0, 10 + i),
                    public_ip: std::net::Ipv4Addr::new(203, 0, 113, 10 + i),
                }
            })
            .collect();
        (c, ms)
    }

    pub(in crate::cluster) fn setup() -> (Checked, Vec<Machine>) {
        setup_with(&|text| text)
    }

    #[test]
    fn fresh_machines_get_the_whole_swarm_in_order() {
        let (c, ms) = setup();
        let steps = plan_swarm(&c, &ms, &ObservedSwarm::default(), &|_| false);
        assert_eq!(
            steps[0],
            Step::Init {
                on: "pd-prod-manager-01".into(),
                addr: ms
                    .iter()
                    .find(|m| m.name == "pd-prod-manager-01")
                    .map_or(std::net::Ipv4Addr::UNSPECIFIED, |m| m.private_ip)
            }
        );
        let joins: Vec<(&str, bool)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Join { node, manager, .. } => Some((node.as_str(), *manager)),
                _ => None,
            })
            .collect();
        assert_eq!(joins.len(), 32);
        // The two other managers first, then the rest as workers.
        assert_eq!(
            joins[..3],
            [
                ("pd-prod-manager-02", true),
                ("pd-prod-manager-03", true),
                ("pd-prod-cache-01", false)
            ]
        );
        assert!(joins[2..].iter().all(|(_, m)| !m));
        let labels = steps
            .iter()
            .filter(|s| matches!(s, Step::Label { .. }))
            .count();
        assert_eq!(labels, 33);
        // Not ready: no pool yet (the platform would place sites on them).
        assert!(
            !steps
                .iter()
                .any(|s| s.to_string().contains("pressdock.pool"))
        );
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"label pd-prod-worker-07: pressdock.node=pd-prod-worker-07 pressdock.role=worker pressdock.slots=25".to_owned()));
        assert!(text.contains(&"label pd-prod-cache-02: pressdock.node=pd-prod-cache-02 pressdock.role=cache pressdock.cache=true".to_owned()));
        assert!(text.contains(&"label pd-prod-monitoring-01: pressdock.node=pd-prod-monitoring-01 pressdock.role=monitoring pressdock.monitoring=true".to_owned()));
        // Each database node carries its Galera number (stacks/database.yml's galera-N).
        assert!(text.contains(&"label pd-prod-database-02: pressdock.node=pd-prod-database-02 pressdock.role=database pressdock.database=true pressdock.galera=2".to_owned()));
        let db: Vec<&Machine> = ms.iter().filter(|m| m.role == Role::Database).collect();
        assert_eq!(
            machine_vars(&ms)["PD_DB_NODES"],
            db.iter()
                .map(|m| m.private_ip.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert_eq!(
            db.iter().map(|m| galera_number(m)).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
        assert_eq!(
            text[text.len() - 6..],
            [
                "overlay network pd-edge 10.214.0.0/22",
                "overlay network pd-sites 10.216.0.0/20",
                "stack pd from stacks/edge.yml",
                "stack cache from stacks/cache.yml",
                "stack database from stacks/database.yml",
                "stack monitoring from stacks/monitoring.yml"
            ]
        );
    }

    #[test]
    fn a_converged_swarm_only_redeploys_and_ready_workers_get_their_pool() {
        let (c, ms) = setup();
        let mut o = ObservedSwarm::default();
        for (i, m) in ms.iter().enumerate() {
            let id = format!("node{i}");
            o.local.insert(
                m.name.clone(),
                Local {
                    in_swarm: true,
                    node_id: id.clone(),
                    unreachable: false,
                },
            );
            o.swarm
                .labels
                .insert(id, labels(&c, m, true).into_iter().collect());
        }
        o.swarm.networks = vec!["pd-edge".into(), "pd-sites".into(), "ingress".into()];
        let steps = plan_swarm(&c, &ms, &o, &|_| true);
        assert_eq!(
            steps,
            STACKS.map(|(stack, file)| Step::Deploy {
                stack: stack.into(),
                file: file.into(),
                hash: String::new(),
                was: None,
            })
        );
        // Worker 21 is new: it joins, is labelled, and gets its pool once ready.
        let mut ms2 = ms.clone();
        ms2.push(Machine {
            name: "pd-prod-worker-21".into(),
            role: Role::Worker,
            private_ip: std::net::Ipv4Addr::new(10, 110, 1, 21),
            public_ip: std::net::Ipv4Addr::new(203, 0, 113, 221),
        });
        let steps = plan_swarm(&c, &ms2, &o, &|m| m.name != "pd-prod-worker-21");
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], "pd-prod-worker-21 (10.110.1.21) joins as worker");
        assert_eq!(
            text[1],
            "label pd-prod-worker-21: pressdock.node=pd-prod-worker-21 pressdock.role=worker pressdock.slots=25"
        );
        let steps = plan_swarm(&c, &ms2, &o, &|_| true);
        assert!(
            steps
                .iter()
                .any(|s| s.to_string().ends_with("pressdock.pool=wp"))
        );
    }

    #[test]
    fn a_replaced_nodes_old_entry_is_removed_if_it_was_a_worker() {
        let (c, ms) = setup();
        let mut o = ObservedSwarm::default();
        for m in &ms {
            o.local.insert(
                m.name.clone(),
                Local {
                    in_swarm: true,
                    node_id: format!("id-{}", m.name),
                    unreachable: false,
                },
            );
            o.swarm.labels.insert(
                format!("id-{}", m.name),
                labels(&c, m, true).into_iter().collect(),
            );
        }
        o.swarm.networks = vec!["pd-edge".into(), "pd-sites".into()];
        let node = |id: &str, host: &str, ready: bool, manager: bool| SwarmNode {
            id: id.into(),
            hostname: host.into(),
            ready,
            manager,
        };
        o.swarm.nodes = vec![
            node("id-pd-prod-worker-03", "pd-prod-worker-03", true, false),
            node("old-w3", "pd-prod-worker-03", false, false),
            node("old-m2", "pd-prod-manager-02", false, true),
            node("gone-w9", "pd-prod-worker-99", true, false),
        ];
        let steps = plan_swarm(&c, &ms, &o, &|_| true);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "remove down node pd-prod-worker-03 (old-w3)",
                "remove down node pd-prod-manager-02 (old-m2), demoted first",
                "stack pd from stacks/edge.yml",
                "stack cache from stacks/cache.yml",
                "stack database from stacks/database.yml",
                "stack monitoring from stacks/monitoring.yml"
            ]
        );
        // A stack deployed as it is now is left alone; a changed one is a rolling update.
        let sf = |hash: &str| StackFile {
            stack: "pd".into(),
            file: "stacks/edge.yml".into(),
            hash: hash.into(),
        };
        o.swarm.nodes.truncate(1);
        o.swarm.stacks.insert("pd".into(), "a".repeat(64));
        assert!(plan_swarm_with(&c, &ms, &o, &|_| true, &[sf(&"a".repeat(64))]).is_empty());
        let steps = plan_swarm_with(&c, &ms, &o, &|_| true, &[sf(&"b".repeat(64))]);
        assert_eq!(
            steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["stack pd from stacks/edge.yml: rolling update (aaaaaaaaaaaa → bbbbbbbbbbbb)"]
        );
    }

    #[test]
    fn commands_carry_no_token_and_run_on_the_right_machine() {
        let (c, ms) = setup();
        let steps = plan_swarm(&c, &ms, &ObservedSwarm::default(), &|_| true);
        let (host, args) = steps[1].command("pd-prod-manager-01");
        assert_eq!(host, "pd-prod-manager-02");
        assert_eq!(
            args.join(" "),
            format!(
                "swarm join --token {{TOKEN}} --advertise-addr {} {}:2377",
                ms[1].private_ip, ms[0].private_ip
            )
        );
        let label = steps.iter().find(|s| matches!(s, Step::Label { .. }));
        let (host, _) = label
            .map(|s| s.command("pd-prod-manager-01"))
            .unwrap_or_default();
        assert_eq!(host, "pd-prod-manager-01");
    }

    /// A node as a placement constraint sees it: `node.role == …` and `node.labels.… == …`.
    fn atoms(role: Role, labels: Vec<(String, String)>) -> Vec<String> {
        let swarm_role = if role == Role::Manager {
            "manager"
        } else {
            "worker"
        };
        let mut a = vec![format!("node.role=={swarm_role}")];
        a.extend(
            labels
                .into_iter()
                .map(|(k, v)| format!("node.labels.{k}=={v}")),
        );
        a
    }

    /// Does a node (its [`atoms`]) satisfy a constraint (`==` or `!=`)?
    fn satisfies(node: &[String], constraint: &str) -> bool {
        let c: String = constraint.split_whitespace().collect();
        match c.split_once("!=") {
            Some((k, v)) => !node.contains(&format!("{k}=={v}")),
            None => node.contains(&c),
        }
    }

    /// Issue 15, item 4: every compose file in `stacks/` is deployed by someone ([`STACKS`],
    /// or the lab's test site), parses as the deployer reads it, places each service only by
    /// labels that the spec's nodes carry (configs/cluster.toml through [`labels`]) and that
    /// the lab's nodes carry (`lab::machines::labels`: the same stacks run there), with room
    /// for its replicas in production, and uses only the overlay networks the swarm steps
    /// create ([`NETWORKS`]) or networks of its own.
    #[test]
    fn every_stack_file_parses_and_places_by_labels_the_nodes_carry() {
        use crate::cluster::stack;
        let (c, ms) = setup();
        let prod: Vec<Vec<String>> = ms
            .iter()
            .map(|m| atoms(m.role, labels(&c, m, true)))
            .collect();
        let lab_topo = crate::lab::Topology {
            managers: 1,
            workers: 2,
            galera_nodes: 1,
        };
        let lab: Vec<Vec<String>> = crate::lab::machines::machines(&lab_topo)
            .iter()
            .map(|m| atoms(m.role, crate::lab::machines::labels(m, true)))
            .collect();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<String> = std::fs::read_dir(repo.join("stacks"))
            .map(|d| {
                d.flatten()
                    .map(|e| format!("stacks/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut seen = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(repo.join(&file)).unwrap_or_default();
            // Traefik's own files (traefik.yml, edge-routes.yml) are not compose files.
            if !text.lines().any(|l| l == "services:") {
                continue;
            }
            let stack_name = STACKS
                .iter()
                .find(|(_, f)| *f == file)
                .map(|(s, _)| *s)
                .or((file == "stacks/lab-hello.yml").then_some("lab"));
            let Some(stack_name) = stack_name else {
                panic!("{file}: a compose file no deployer deploys (add it to STACKS)");
            };
            // Values like production's: the spec's images, the swarm's networks, counts,
            // absolute paths.
            let images = c.images.vars();
            let vars = stack::variables(&text)
                .into_iter()
                .map(|v| {
                    let value = match v.as_str() {
                        x if images.contains_key(x) => images[x].clone(),
                        "PD_EDGE_NET" => crate::lab::EDGE_NET.to_owned(),
                        "PD_SITES_NET" => crate::lab::SITES_NET.to_owned(),
                        x if x.ends_with("_REPLICAS") || x.ends_with("_QUORUM") => "2".to_owned(),
                        x => format!("/srv/{}", x.to_lowercase()),
                    };
                    (v, value)
                })
                .collect();
            let parsed =
                stack::parse(stack_name, &text, &vars).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert!(!parsed.services.is_empty(), "{file}");
            for n in &parsed.networks {
                let ours = NETWORKS.iter().any(|(name, _)| *name == n.name);
                if n.external {
                    assert!(ours, "{file}: network {} is not one of NETWORKS", n.name);
                } else {
                    assert!(
                        !ours && n.name.starts_with("pd-") && n.driver == "overlay",
                        "{file}: its own network {} (an overlay named pd-*, not one of NETWORKS)",
                        n.name
                    );
                }
            }
            for (name, spec) in &parsed.services {
                let t = spec.task_template.clone().unwrap_or_default();
                let constraints = t
                    .placement
                    .as_ref()
                    .and_then(|p| p.constraints.clone())
                    .unwrap_or_default();
                let fits = |nodes: &[Vec<String>]| {
                    nodes
                        .iter()
                        .filter(|n| constraints.iter().all(|c| satisfies(n, c)))
                        .count()
                };
                let in_prod = fits(&prod);
                assert!(
                    in_prod > 0,
                    "{file}: {name}: no node of configs/cluster.toml carries {constraints:?}"
                );
                // `lab up` does not deploy the database stack (the lab's database tier is
                // its host Galera behind HAProxy); the lab test that does labels three
                // nodes `pressdock.galera=N` itself, and no lab node runs ProxySQL.
                if stack_name != "database" {
                    assert!(
                        fits(&lab) > 0,
                        "{file}: {name}: no lab node carries {constraints:?}"
                    );
                }
                let replicas = spec
                    .mode
                    .as_ref()
                    .and_then(|m| m.replicated.as_ref())
                    .and_then(|r| r.replicas)
                    .unwrap_or(0);
                if let Some(per_node) = t.placement.as_ref().and_then(|p| p.max_replicas) {
                    let room = i64::try_from(in_prod).unwrap_or(0) * per_node;
                    assert!(
                        replicas <= room,
                        "{file}: {name}: {replicas} replicas, room for {room}"
                    );
                }
            }
            seen.push(stack_name);
        }
        // Every stack of the swarm steps has its file.
        for (stack_name, file) in STACKS {
            assert!(seen.contains(&stack_name), "{file} is missing");
        }
        assert!(seen.contains(&"cache") && seen.contains(&"monitoring"));
        // The checks bite: a constraint on a label no node has fits nowhere.
        assert_eq!(
            prod.iter()
                .filter(|n| satisfies(n, "node.labels.pressdock.role == monitoring"))
                .count(),
            2
        );
        assert!(
            !prod
                .iter()
                .any(|n| satisfies(n, "node.labels.pressdock.role == proxysql"))
        );
        assert!(
            lab.iter()
                .all(|n| satisfies(n, "node.labels.pressdock.role != proxysql"))
        );
    }

    /// The stack files' images (issue 15, item 4): every service of every compose file in
    /// `stacks/` names its image by a `${PD_IMAGE_…}` variable, and the deployer resolves
    /// each one, in production to the spec's `[images]` (no `local/…` left, nothing
    /// unresolved), in the lab to its own builds; the production deploy's variables
    /// ([`super::super::swarm_exec::stack_vars`]) carry the spec's images, and a changed
    /// image changes the stack's hash (a rolling update).
    #[test]
    fn every_stack_image_resolves_to_the_specs_in_production_and_the_labs_in_the_lab() {
        use crate::cluster::images::{IMAGES, Images};
        use crate::cluster::stack;
        let (c, _) = setup();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<String> = std::fs::read_dir(repo.join("stacks"))
            .map(|d| {
                d.flatten()
                    .map(|e| format!("stacks/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let prod = c.images.vars();
        let lab = Images::lab().vars();
        let mut used = std::collections::BTreeSet::new();
        let mut services = 0;
        for file in &files {
            let text = std::fs::read_to_string(repo.join(file)).unwrap_or_default();
            if !text.lines().any(|l| l == "services:") {
                continue;
            }
            // No image written into a stack file: each is a variable the deployer sets.
            for l in text
                .lines()
                .filter(|l| l.trim_start().starts_with("image:"))
            {
                let v = l.trim_start().trim_start_matches("image:").trim();
                assert!(
                    v.starts_with("${PD_IMAGE_") && v.ends_with('}'),
                    "{file}: {l:?} is not image: ${{PD_IMAGE_…}}"
                );
            }
            for (set, production) in [(&prod, true), (&lab, false)] {
                // The images from `set`; every other variable a placeholder.
                let vars = stack::variables(&text)
                    .into_iter()
                    .map(|v| {
                        let value = match v.as_str() {
                            x if set.contains_key(x) => set[x].clone(),
                            "PD_EDGE_NET" => crate::lab::EDGE_NET.to_owned(),
                            "PD_SITES_NET" => crate::lab::SITES_NET.to_owned(),
                            x if x.ends_with("_REPLICAS") || x.ends_with("_QUORUM") => {
                                "2".to_owned()
                            }
                            x => format!("/srv/{}", x.to_lowercase()),
                        };
                        (v, value)
                    })
                    .collect();
                let parsed =
                    stack::parse("s", &text, &vars).unwrap_or_else(|e| panic!("{file}: {e:#}"));
                for (name, spec) in &parsed.services {
                    let image = spec
                        .task_template
                        .as_ref()
                        .and_then(|t| t.container_spec.as_ref())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default();
                    assert!(
                        set.values().any(|r| *r == image),
                        "{file}: {name}: {image:?} is none of {set:?}"
                    );
                    assert!(!image.contains('$'), "{file}: {name}: {image}");
                    if production {
                        assert!(!image.starts_with("local/"), "{file}: {name}: {image}");
                        services += 1;
                        used.insert(image);
                    } else {
                        assert!(image.starts_with("local/"), "{file}: {name}: {image}");
                    }
                }
            }
            // What the production deployer passes for this file: the spec's images.
            let vars = super::super::swarm_exec::stack_vars(&repo, file, &prod)
                .unwrap_or_else(|e| panic!("{e:#}"));
            for v in stack::variables(&text)
                .iter()
                .filter(|v| v.starts_with("PD_IMAGE_"))
            {
                assert_eq!(vars.get(v), prod.get(v), "{file}: {v}");
            }
        }
        // Production's stacks run traefik, varnish and redis from the spec (the runtime
        // image is the platform's: sites are not a stack in production).
        // pd: traefik, traefik-b, varnish; cache: master, replica, sentinel; database:
        // galera-1, -2, -3, proxysql; monitoring: placeholder; the lab's test site: hello.
        assert_eq!(services, 12);
        for key in ["traefik", "varnish", "redis", "galera", "proxysql"] {
            assert!(used.contains(c.images.get(key)), "{key} unused");
        }
        assert_eq!(IMAGES.len(), prod.len());
        // A changed image rolls its stacks.
        let before = stack_files(&repo, &prod).unwrap_or_else(|e| panic!("{e:#}"));
        let mut other = prod.clone();
        other.insert(
            "PD_IMAGE_REDIS".into(),
            "registry.example.com/pressdock/redis:0.1.1".into(),
        );
        let after = stack_files(&repo, &other).unwrap_or_else(|e| panic!("{e:#}"));
        let changed: Vec<&str> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b.hash != a.hash)
            .map(|(b, _)| b.stack.as_str())
            .collect();
        assert_eq!(changed, ["cache"]);
    }
}
