//! The plan: the difference between what the spec wants and what the provider holds, as a
//! list of changes in the order they must run. Pure and deterministic (no I/O): the same
//! desired and observed state give the same plan, and an applied plan plans to nothing.
//!
//! What the plan does not change, it says (`notes`): a droplet of another size (resizing is
//! a replacement, done node by node), a smaller volume, a VPC with another range, volumes
//! left over (data is never deleted by `apply`).
use super::desired::{Desired, Droplet, Firewall, LoadBalancer, Volume, Vpc};
use super::provider::Observed;
use super::spec::Role;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    CreateTag(String),
    CreateVpc(Vpc),
    CreateVolume(Volume),
    CreateDroplet(Droplet),
    /// A droplet that exists but is still `new` (its creation's answer was lost, or another
    /// run made it): wait for its actions before anything uses it.
    AwaitDroplet {
        name: String,
        id: u64,
    },
    /// A droplet of the cluster lacks one of its tags (a role tag: its firewall).
    TagDroplet {
        tag: String,
        droplet: String,
        id: u64,
    },
    /// The volume exists but is not attached to its droplet.
    AttachVolume {
        volume: String,
        droplet: String,
    },
    CreateLoadBalancer(LoadBalancer),
    UpdateLoadBalancer {
        id: String,
        lb: LoadBalancer,
        /// What differs, one line each.
        diff: Vec<String>,
    },
    CreateFirewall(Firewall),
    UpdateFirewall {
        id: String,
        fw: Firewall,
        /// Rules and targets added (`+`) and removed (`-`), one line each.
        diff: Vec<String>,
    },
    DeleteFirewall {
        id: String,
        name: String,
    },
    /// A node named by the operator (`--replace`): its volume detached, the droplet destroyed,
    /// the same droplet created again with the volume (a failed node, a new image or size).
    ReplaceDroplet {
        id: u64,
        droplet: Droplet,
        /// Its volume's id, moved over to the new droplet.
        volume_id: Option<String>,
        /// The volume is attached to it now (not after an interrupted replacement).
        detach: bool,
    },
    /// A node that serves is taken out before its droplet is destroyed or replaced: drained
    /// (a worker's sites moved by the platform, `POST`-free: `PATCH /v1/nodes/{id}`
    /// `availability=drain`, then waited until it holds none; the swarm's tasks moved by
    /// `docker node update --availability drain`), then it leaves the swarm (a manager is
    /// demoted first) and is removed from the swarm's node list. `ready`: the swarm sees it
    /// up (a failed node only has its sites moved; its old entry goes once the new one joined).
    Evacuate {
        name: String,
        role: Role,
        ready: bool,
    },
    /// The platform still lists a node whose droplet is gone for good.
    ForgetNode {
        name: String,
        id: String,
    },
    /// A droplet with the cluster's tag that the spec no longer has.
    DestroyDroplet {
        id: u64,
        name: String,
        role: Option<Role>,
    },
}

impl Change {
    /// `+` create, `~` change, `-` destroy.
    pub fn sign(&self) -> char {
        match self {
            Change::CreateTag(_)
            | Change::CreateVpc(_)
            | Change::CreateVolume(_)
            | Change::CreateDroplet(_)
            | Change::CreateLoadBalancer(_)
            | Change::CreateFirewall(_) => '+',
            Change::TagDroplet { .. }
            | Change::AwaitDroplet { .. }
            | Change::AttachVolume { .. }
            | Change::UpdateLoadBalancer { .. }
            | Change::UpdateFirewall { .. }
            | Change::Evacuate { .. } => '~',
            Change::DeleteFirewall { .. }
            | Change::DestroyDroplet { .. }
            | Change::ForgetNode { .. } => '-',
            Change::ReplaceDroplet { .. } => '±',
        }
    }
    pub fn is_destructive(&self) -> bool {
        matches!(self, Change::DestroyDroplet { .. })
    }

    /// The node this change takes away (for a while, or for good), and its role.
    fn removes(&self) -> Option<(&str, Option<Role>)> {
        match self {
            Change::DestroyDroplet { name, role, .. } => Some((name, *role)),
            Change::ReplaceDroplet { droplet, .. } => Some((&droplet.name, Some(droplet.role))),
            Change::Evacuate { name, role, .. } => Some((name, Some(*role))),
            _ => None,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sign();
        match self {
            Change::CreateTag(t) => write!(f, "{s} tag {t}"),
            Change::CreateVpc(v) => write!(f, "{s} vpc {} {} in {}", v.name, v.ip_range, v.region),
            Change::CreateVolume(v) => write!(
                f,
                "{s} volume {} {} GiB {} (for {})",
                v.name, v.size_gib, v.filesystem, v.droplet
            ),
            Change::CreateDroplet(d) => write!(
                f,
                "{s} droplet {} {} {}{}",
                d.name,
                d.size,
                d.image,
                d.volume
                    .as_ref()
                    .map(|v| format!(" with volume {v}"))
                    .unwrap_or_default()
            ),
            Change::AwaitDroplet { name, .. } => {
                write!(f, "{s} droplet {name}: wait until its creation completed")
            }
            Change::TagDroplet { tag, droplet, .. } => {
                write!(f, "{s} droplet {droplet}: tag {tag}")
            }
            Change::AttachVolume { volume, droplet } => {
                write!(f, "{s} volume {volume}: attach to {droplet}")
            }
            Change::CreateLoadBalancer(lb) => write!(
                f,
                "{s} load balancer {} → tag {} ports {:?}",
                lb.name, lb.tag, lb.ports
            ),
            Change::UpdateLoadBalancer { lb, diff, .. } => {
                write!(f, "{s} load balancer {}", lb.name)?;
                for d in diff {
                    write!(f, "\n    {d}")?;
                }
                Ok(())
            }
            Change::CreateFirewall(fw) => write!(
                f,
                "{s} firewall {} → tag {} ({} inbound rules)",
                fw.name,
                fw.tags.join(","),
                fw.inbound.len()
            ),
            Change::UpdateFirewall { fw, diff, .. } => {
                write!(f, "{s} firewall {}", fw.name)?;
                for d in diff {
                    write!(f, "\n    {d}")?;
                }
                Ok(())
            }
            Change::DeleteFirewall { name, .. } => {
                write!(f, "{s} firewall {name} (not in the spec)")
            }
            Change::DestroyDroplet { name, .. } => {
                write!(f, "{s} droplet {name} (not in the spec)")
            }
            Change::Evacuate { name, role, ready } => {
                let sites = if *role == Role::Worker {
                    "its sites moved by the platform, "
                } else {
                    ""
                };
                if *ready {
                    write!(
                        f,
                        "{s} node {name}: drained ({sites}its tasks by the swarm){}, leaves the swarm",
                        if *role == Role::Manager {
                            ", demoted"
                        } else {
                            ""
                        }
                    )
                } else {
                    write!(
                        f,
                        "{s} node {name} (down): {sites}its old swarm entry removed once replaced"
                    )
                }
            }
            Change::ForgetNode { name, .. } => {
                write!(f, "{s} platform node {name} (its droplet is gone)")
            }
            Change::ReplaceDroplet {
                droplet, volume_id, ..
            } => write!(
                f,
                "{s} droplet {}: destroyed and created again{}",
                droplet.name,
                if volume_id.is_some() {
                    ", its volume moved over"
                } else {
                    ""
                }
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Differences `apply` leaves alone, said plainly.
    pub notes: Vec<String>,
    /// What the tool cannot sort out by itself, so `apply` refuses to run: two droplets or
    /// volumes of one name (two runs at once, or a hand-made twin) make "found by name"
    /// ambiguous.
    pub blockers: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Why `apply` must not run this plan as it is, if it must not: destroying without
    /// `allow_destroy`, or more than one manager or database node at once (swarm's raft and
    /// Galera keep quorum only if at most one member changes at a time).
    pub fn refusal(&self, allow_destroy: bool) -> Option<String> {
        if !self.blockers.is_empty() {
            return Some(self.blockers.join("; "));
        }
        let destroys = self.changes.iter().filter(|c| c.is_destructive()).count();
        if destroys > 0 && !allow_destroy {
            return Some(format!(
                "the plan destroys {destroys} droplet(s); drain them through the platform first, then run apply with --allow-destroy"
            ));
        }
        for role in [Role::Manager, Role::Database] {
            let mut names: Vec<&str> = Vec::new();
            let mut by_count = false;
            for c in &self.changes {
                if let Some((name, Some(r))) = c.removes()
                    && r == role
                {
                    by_count |= matches!(c, Change::DestroyDroplet { .. });
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            if names.len() > 1 {
                let (field, fix) = if by_count {
                    (
                        format!("roles.{role}.count"),
                        format!("lower roles.{role}.count by one node per apply"),
                    )
                } else {
                    ("--replace".to_owned(), format!("one {role} per apply"))
                };
                return Some(format!(
                    "{field}: the plan takes away {} {role} nodes at once ({}); {} keeps quorum only if one member changes at a time: {fix}",
                    names.len(),
                    names.join(", "),
                    if role == Role::Manager {
                        "the swarm's raft"
                    } else {
                        "Galera"
                    }
                ));
            }
        }
        None
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        for n in &self.notes {
            writeln!(f, "! {n}")?;
        }
        for n in &self.blockers {
            writeln!(f, "!! {n}")?;
        }
        let count = |s: char| self.changes.iter().filter(|c| c.sign() == s).count();
        write!(
            f,
            "plan: {} to create, {} to change, {} to destroy",
            count('+'),
            count('~'),
            count('-')
        )?;
        match count('±') {
            0 => Ok(()),
            n => write!(f, ", {n} to replace"),
        }
    }
}

/// Desired firewall with the load balancers' names replaced by ids (a name without an id
/// stays a name: the balancer does not exist yet, and the comparison then differs).
pub fn resolve_firewall(fw: &Firewall, lb_ids: &BTreeMap<String, String>) -> Firewall {
    let mut fw = fw.clone();
    for r in &mut fw.inbound {
        for lb in &mut r.sources.load_balancers {
            if let Some(id) = lb_ids.get(lb) {
                *lb = id.clone();
            }
        }
        r.sources.load_balancers.sort();
    }
    fw.inbound.sort();
    fw.outbound.sort();
    fw
}

fn rule_text(dir: &str, r: &super::desired::FwRule) -> String {
    let s = &r.sources;
    let mut from: Vec<String> = s.addresses.clone();
    from.extend(s.tags.iter().map(|t| format!("tag:{t}")));
    from.extend(s.load_balancers.iter().map(|l| format!("lb:{l}")));
    format!(
        "{dir} {} {} {}",
        r.protocol.as_str(),
        if r.ports == "0" { "all" } else { &r.ports },
        from.join(",")
    )
}

/// Lines for the rules and targets of `want` that `have` lacks (`+`) and the reverse (`-`).
fn firewall_diff(have: &Firewall, want: &Firewall) -> Vec<String> {
    let mut out = Vec::new();
    for (dir, h, w) in [
        ("in", &have.inbound, &want.inbound),
        ("out", &have.outbound, &want.outbound),
    ] {
        for r in w.iter().filter(|r| !h.contains(r)) {
            out.push(format!("+ {}", rule_text(dir, r)));
        }
        for r in h.iter().filter(|r| !w.contains(r)) {
            out.push(format!("- {}", rule_text(dir, r)));
        }
    }
    let (mut ht, mut wt) = (have.tags.clone(), want.tags.clone());
    ht.sort();
    wt.sort();
    if ht != wt {
        out.push(format!("targets: tags {} → {}", ht.join(","), wt.join(",")));
    }
    out
}

/// The evacuation a node needs before its droplet goes, if it serves: in the swarm and up,
/// or down but a worker (the platform still moves its sites).
fn evacuation(o: &Observed, name: &str, role: Role) -> Option<Change> {
    let n = o.nodes.as_ref()?.swarm_node(name)?;
    (n.ready || role == Role::Worker).then(|| Change::Evacuate {
        name: name.to_owned(),
        role,
        ready: n.ready,
    })
}

/// Quorum as it is now: a manager or database node already down (or its droplet gone) counts
/// against the one member that may change, so a plan that takes away another is refused.
fn quorum_now(d: &Desired, o: &Observed, n: &super::provider::NodeStates, p: &mut Plan) {
    for role in [Role::Manager, Role::Database] {
        let down: Vec<&str> = o
            .droplets
            .iter()
            .filter(|x| role_of(d, &x.name) == Some(role))
            .map(|x| x.name.as_str())
            .chain(
                d.droplets
                    .iter()
                    .filter(|x| x.role == role && !o.droplets.iter().any(|h| h.name == x.name))
                    .map(|x| x.name.as_str()),
            )
            .filter(|name| n.swarm_node(name).is_none_or(|s| !s.ready))
            .filter(|name| {
                // A droplet that exists and no swarm entry: not joined yet (a new node).
                n.swarm_node(name).is_some() || !o.droplets.iter().any(|x| x.name == *name)
            })
            .collect();
        let taken: Vec<&str> = p
            .changes
            .iter()
            .filter_map(|c| c.removes())
            .filter(|(name, r)| *r == Some(role) && !down.contains(name))
            .map(|(name, _)| name)
            .collect();
        if let (Some(first_down), Some(other)) = (down.first(), taken.first()) {
            p.blockers.push(format!(
                "quorum: {role} node {first_down} is down; the plan also takes away {other}, which would leave the {} without quorum: replace {first_down} first (apply --replace {first_down})",
                if role == Role::Manager { "swarm" } else { "Galera cluster" }
            ));
        }
    }
}

fn role_of(d: &Desired, name: &str) -> Option<Role> {
    let rest = name.strip_prefix(&format!("{}-", d.cluster_tag))?;
    Role::parse(rest.rsplit_once('-')?.0)
}

pub fn plan(d: &Desired, o: &Observed) -> Plan {
    plan_replacing(d, o, &[])
}

/// The plan, with the droplets named in `replace` destroyed and created again (their volumes
/// moved over) instead of converged.
pub fn plan_replacing(d: &Desired, o: &Observed, replace: &[String]) -> Plan {
    plan_with(d, o, replace, false)
}

/// Nodes of the spec that the swarm sees down (no entry of their host name is up), or whose
/// droplet is gone while the swarm still lists them.
pub fn failed_nodes(d: &Desired, o: &Observed) -> Vec<String> {
    let Some(n) = &o.nodes else {
        return Vec::new();
    };
    d.droplets
        .iter()
        .filter(|x| n.swarm_node(&x.name).is_some_and(|s| !s.ready))
        .map(|x| x.name.clone())
        .collect()
}

/// [`plan_replacing`], and with `replace_failed` every node the swarm sees down whose droplet
/// still exists is replaced too (a droplet that is gone is simply created again).
pub fn plan_with(d: &Desired, o: &Observed, replace: &[String], replace_failed: bool) -> Plan {
    let mut replace = replace.to_vec();
    let mut p = Plan::default();
    for f in failed_nodes(d, o) {
        let exists = o.droplets.iter().any(|x| x.name == f);
        if !exists {
            p.notes.push(format!(
                "node {f} is down in the swarm and its droplet is gone: it is created again, joins, and its old entry is removed"
            ));
        } else if replace_failed {
            if !replace.contains(&f) {
                replace.push(f);
            }
        } else if !replace.contains(&f) {
            p.notes.push(format!(
                "node {f} is down in the swarm: `apply --replace {f}` (or --replace-failed) replaces it"
            ));
        }
    }
    let replace = &replace[..];
    for r in replace {
        if !d.droplets.iter().any(|x| &x.name == r) {
            p.blockers
                .push(format!("--replace {r}: the spec has no such node"));
        } else if !o.droplets.iter().any(|x| &x.name == r) {
            // Not there (yet, or any more: an interrupted replacement): plainly created.
            p.notes
                .push(format!("--replace {r}: no such droplet, it is created"));
        }
    }
    for t in &d.tags {
        if !o.tags.contains(t) {
            p.changes.push(Change::CreateTag(t.clone()));
        }
    }
    match &o.vpc {
        None => p.changes.push(Change::CreateVpc(d.vpc.clone())),
        // Droplets and the load balancer must be in the VPC's region: nothing can be built.
        Some(v) if v.region != d.vpc.region => p.blockers.push(format!(
            "vpc {} is in {}, the spec's region is {}: rename the cluster or move the spec",
            v.name, v.region, d.vpc.region
        )),
        Some(v) if v.ip_range != d.vpc.ip_range => p.notes.push(format!(
            "vpc {} is {}, the spec says {}: a VPC's range cannot change (not touched)",
            v.name, v.ip_range, d.vpc.ip_range
        )),
        Some(_) => {}
    }
    let droplets: BTreeMap<&str, _> = o.droplets.iter().map(|x| (x.name.as_str(), x)).collect();
    let volumes: BTreeMap<&str, _> = o.volumes.iter().map(|x| (x.name.as_str(), x)).collect();
    for name in droplets.keys() {
        let ids: Vec<u64> = o
            .droplets
            .iter()
            .filter(|x| x.name == *name)
            .map(|x| x.id)
            .collect();
        if ids.len() > 1 {
            p.blockers.push(format!(
                "{} droplets are named {name} (ids {ids:?}): destroy the extra one by hand (was apply run twice at once?)",
                ids.len()
            ));
        }
    }
    for name in volumes.keys() {
        let n = o.volumes.iter().filter(|x| x.name == *name).count();
        if n > 1 {
            p.blockers.push(format!(
                "{n} volumes are named {name}: keep the one with the data"
            ));
        }
    }
    for x in &o.droplets {
        if !matches!(x.status.as_str(), "active" | "off" | "new") {
            p.notes.push(format!("droplet {} is {}", x.name, x.status));
        }
    }
    for v in &d.volumes {
        match volumes.get(v.name.as_str()) {
            None => p.changes.push(Change::CreateVolume(v.clone())),
            Some(ov) if ov.size_gib < v.size_gib => p.notes.push(format!(
                "volume {} is {} GiB, the spec says {}: resize it by hand (`apply` does not grow filesystems)",
                v.name, ov.size_gib, v.size_gib
            )),
            Some(_) => {}
        }
    }
    for want in &d.droplets {
        match droplets.get(want.name.as_str()) {
            None => p.changes.push(Change::CreateDroplet(want.clone())),
            Some(have) if replace.contains(&want.name) => {
                if let Some(e) = evacuation(o, &want.name, want.role) {
                    p.changes.push(e);
                }
                let vol = want.volume.as_ref().and_then(|v| volumes.get(v.as_str()));
                p.changes.push(Change::ReplaceDroplet {
                    id: have.id,
                    droplet: want.clone(),
                    volume_id: vol.map(|v| v.id.clone()),
                    detach: vol.is_some_and(|v| v.droplet_ids.contains(&have.id)),
                })
            }
            Some(have) => {
                if have.status == "new" {
                    p.changes.push(Change::AwaitDroplet {
                        name: want.name.clone(),
                        id: have.id,
                    });
                }
                for t in &want.tags {
                    if !have.tags.contains(t) {
                        p.changes.push(Change::TagDroplet {
                            tag: t.clone(),
                            droplet: want.name.clone(),
                            id: have.id,
                        });
                    }
                }
                if have.region != want.region {
                    p.notes.push(format!(
                        "droplet {} is in {}, the spec says {}: replace it (one node at a time)",
                        want.name, have.region, want.region
                    ));
                }
                if have.size != want.size {
                    p.notes.push(format!(
                        "droplet {} is {}, the spec says {}: replace it (one node at a time)",
                        want.name, have.size, want.size
                    ));
                }
                // Its volume exists but is attached elsewhere or nowhere.
                if let Some(vname) = &want.volume
                    && let Some(ov) = volumes.get(vname.as_str())
                    && !ov.droplet_ids.contains(&have.id)
                {
                    if ov.droplet_ids.is_empty() {
                        p.changes.push(Change::AttachVolume {
                            volume: vname.clone(),
                            droplet: want.name.clone(),
                        });
                    } else {
                        p.notes.push(format!(
                            "volume {vname} is attached to droplet(s) {:?}, not to {}: detach it by hand",
                            ov.droplet_ids, want.name
                        ));
                    }
                }
            }
        }
    }
    let wanted: std::collections::BTreeSet<&str> =
        d.droplets.iter().map(|x| x.name.as_str()).collect();
    for have in &o.droplets {
        if !wanted.contains(have.name.as_str()) {
            let role = role_of(d, &have.name);
            if let Some(e) = role.and_then(|r| evacuation(o, &have.name, r)) {
                p.changes.push(e);
            }
            p.changes.push(Change::DestroyDroplet {
                id: have.id,
                name: have.name.clone(),
                role,
            });
        }
    }
    // The platform's record of a node gone for good (after its droplet, or left by a run
    // interrupted between the two).
    if let Some(n) = &o.nodes {
        let prefix = format!("{}-", d.cluster_tag);
        for pn in &n.platform {
            let evacuated = p
                .changes
                .iter()
                .any(|c| matches!(c, Change::Evacuate { name, .. } if *name == pn.name));
            if pn.name.starts_with(&prefix)
                && !wanted.contains(pn.name.as_str())
                && (evacuated || !n.swarm.iter().any(|s| s.hostname == pn.name && s.ready))
            {
                p.changes.push(Change::ForgetNode {
                    name: pn.name.clone(),
                    id: pn.id.clone(),
                });
            }
        }
        quorum_now(d, o, n, &mut p);
    }
    let wanted_volumes: std::collections::BTreeSet<&str> =
        d.volumes.iter().map(|x| x.name.as_str()).collect();
    for have in &o.volumes {
        if !wanted_volumes.contains(have.name.as_str()) {
            p.notes.push(format!(
                "volume {} ({} GiB) is not in the spec: kept (apply never deletes data)",
                have.name, have.size_gib
            ));
        }
    }
    // What creating droplets needs, checked before anything is made: a half-built cluster
    // (volumes and some roles' droplets, then a refused size) helps no one.
    let creates: Vec<&Droplet> = p
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::CreateDroplet(x) | Change::ReplaceDroplet { droplet: x, .. } => Some(x),
            _ => None,
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for x in creates {
        for k in &x.ssh_keys {
            if !o.ssh_keys.contains(k) && seen.insert(format!("key {k}")) {
                p.blockers.push(format!(
                    "ssh_keys: {k} is not a key of the account (doctl compute ssh-key list)"
                ));
            }
        }
        let offered = o.sizes.get(&x.size).is_some_and(|r| r.contains(&x.region));
        if !offered && seen.insert(format!("size {}", x.size)) {
            p.blockers.push(format!(
                "roles.{}.size: {} is not offered in {}",
                x.role, x.size, x.region
            ));
        }
    }
    let mut lb_ids = BTreeMap::new();
    match o
        .load_balancers
        .iter()
        .find(|l| l.lb.name == d.load_balancer.name)
    {
        None => p
            .changes
            .push(Change::CreateLoadBalancer(d.load_balancer.clone())),
        Some(have) => {
            lb_ids.insert(have.lb.name.clone(), have.id.clone());
            let vpc_differs = match (&have.vpc_id, &o.vpc) {
                (Some(a), Some(v)) => *a != v.id,
                _ => false,
            };
            if have.lb != d.load_balancer || vpc_differs {
                let (a, b) = (&have.lb, &d.load_balancer);
                let mut diff = Vec::new();
                let mut field = |name: &str, have: String, want: String| {
                    if have != want {
                        diff.push(format!("{name}: {have} → {want}"));
                    }
                };
                field("region", a.region.clone(), b.region.clone());
                field("target tag", a.tag.clone(), b.tag.clone());
                field(
                    "tcp ports",
                    format!("{:?}", a.ports),
                    format!("{:?}", b.ports),
                );
                field(
                    "health check",
                    format!("tcp:{}", a.health_check_port),
                    format!("tcp:{}", b.health_check_port),
                );
                field(
                    "proxy protocol",
                    a.proxy_protocol.to_string(),
                    b.proxy_protocol.to_string(),
                );
                field(
                    "size unit",
                    a.size_unit.to_string(),
                    b.size_unit.to_string(),
                );
                if vpc_differs {
                    diff.push("vpc: another VPC → the cluster's".into());
                }
                p.changes.push(Change::UpdateLoadBalancer {
                    id: have.id.clone(),
                    lb: d.load_balancer.clone(),
                    diff,
                });
            }
        }
    }
    let firewalls: BTreeMap<&str, _> = o
        .firewalls
        .iter()
        .map(|x| (x.fw.name.as_str(), x))
        .collect();
    for want in &d.firewalls {
        match firewalls.get(want.name.as_str()) {
            None => p.changes.push(Change::CreateFirewall(want.clone())),
            Some(have) => {
                let (w, h) = (
                    resolve_firewall(want, &lb_ids),
                    resolve_firewall(&have.fw, &BTreeMap::new()),
                );
                if w != h {
                    p.changes.push(Change::UpdateFirewall {
                        id: have.id.clone(),
                        fw: want.clone(),
                        diff: firewall_diff(&h, &w),
                    });
                }
            }
        }
    }
    for have in &o.firewalls {
        if !d.firewalls.iter().any(|f| f.name == have.fw.name) {
            p.changes.push(Change::DeleteFirewall {
                id: have.id.clone(),
                name: have.fw.name.clone(),
            });
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::provider::{ObservedDroplet, ObservedVpc};
    use crate::cluster::spec::Checked;

    fn desired() -> Desired {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/cluster.toml"
        ))
        .unwrap_or_default();
        Desired::from_spec(&Checked::parse(&text).unwrap_or_else(|e| panic!("{e}")))
    }

    fn droplet(d: &Desired, name: &str, id: u64) -> ObservedDroplet {
        let want = d.droplets.iter().find(|x| x.name == name);
        ObservedDroplet {
            id,
            name: name.into(),
            size: want.map(|w| w.size.clone()).unwrap_or_default(),
            region: "fra1".into(),
            tags: want.map(|w| w.tags.clone()).unwrap_or_default(),
            status: "active".into(),
            volume_ids: vec![],
            vpc_id: None,
            private_ip: None,
            public_ip: None,
        }
    }

    /// An account with the spec's key and sizes.
    fn catalog(d: &Desired) -> Observed {
        Observed {
            ssh_keys: d.droplets[0].ssh_keys.clone(),
            sizes: d
                .droplets
                .iter()
                .map(|x| (x.size.clone(), vec![x.region.clone()]))
                .collect(),
            ..Observed::default()
        }
    }

    #[test]
    fn a_plan_that_would_fail_half_way_is_refused() {
        let d = desired();
        let mut o = catalog(&d);
        assert_eq!(plan(&d, &o).refusal(false), None);
        o.sizes.remove("m-4vcpu-32gb");
        o.ssh_keys.clear();
        let r = plan(&d, &o).refusal(false).unwrap_or_default();
        assert!(
            r.contains("roles.database.size: m-4vcpu-32gb is not offered in fra1"),
            "{r}"
        );
        assert!(
            r.contains("ssh_keys: 3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa is not a key"),
            "{r}"
        );
    }

    #[test]
    fn what_apply_cannot_fix_is_said_and_what_it_must_not_guess_blocks() {
        let d = desired();
        let mut o = Observed {
            vpc: Some(ObservedVpc {
                id: "v".into(),
                name: "pd-prod".into(),
                region: "fra1".into(),
                ip_range: "10.9.0.0/20".into(),
            }),
            ..catalog(&d)
        };
        let mut small = droplet(&d, "pd-prod-worker-03", 3);
        small.size = "s-1vcpu-1gb".into();
        o.droplets = vec![
            small,
            droplet(&d, "pd-prod-worker-04", 4),
            droplet(&d, "pd-prod-worker-04", 5),
        ];
        let p = plan(&d, &o);
        let text = p.to_string();
        assert!(
            text.contains("! vpc pd-prod is 10.9.0.0/20, the spec says 10.110.0.0/20"),
            "{text}"
        );
        assert!(
            text.contains("! droplet pd-prod-worker-03 is s-1vcpu-1gb, the spec says s-8vcpu-16gb"),
            "{text}"
        );
        assert!(
            p.refusal(true)
                .is_some_and(|r| r.contains("2 droplets are named pd-prod-worker-04"))
        );
        // Another region's VPC of the same name: nothing can be built in it.
        o.droplets.clear();
        if let Some(v) = o.vpc.as_mut() {
            v.region = "ams3".into();
        }
        assert!(
            plan(&d, &o)
                .refusal(false)
                .is_some_and(|r| r.contains("is in ams3"))
        );
    }

    #[test]
    fn quorum_allows_one_manager_or_database_node_at_a_time() {
        let d = desired();
        let extra = |names: &[&str]| Observed {
            droplets: names
                .iter()
                .zip(100..)
                .map(|(n, id)| droplet(&d, n, id))
                .collect(),
            ..catalog(&d)
        };
        let p = plan(&d, &extra(&["pd-prod-manager-04"]));
        assert!(
            p.refusal(false)
                .is_some_and(|r| r.contains("--allow-destroy"))
        );
        assert_eq!(p.refusal(true), None);
        let p = plan(&d, &extra(&["pd-prod-database-04", "pd-prod-database-05"]));
        assert!(
            p.refusal(true)
                .is_some_and(|r| r.contains("2 database nodes at once"))
        );
        let p = plan(
            &d,
            &extra(&[
                "pd-prod-worker-21",
                "pd-prod-worker-22",
                "pd-prod-manager-04",
            ]),
        );
        assert_eq!(p.refusal(true), None);
    }
}
