//! The lab's network confinement (issue 11, items 1 and 3): one `pressdock-infra guard` per
//! worker node (a lab process on the host, following that node's dockerd), and the root
//! namespace's rules that keep Galera's replication ports to the database nodes.
//!
//! Both are additive: a lab brought up by a build without them keeps working beside them,
//! and `lab down` removes them (PID files, the `pdlab-guard` cgroup, the iptables comment).
use super::sh::progress;
use super::{HOST_IP, Lab, Node, Role, SITES_NET, STACK, TAG, data, ports, proc};
use crate::guard::rules::{self, Ports};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The cgroup of the guards (a `pdlab-` name: `lab down` ends what is left in it).
pub const GUARD_CG: &str = "pdlab-guard";

fn name(node: &Node) -> String {
    format!("guard-{}", node.host())
}

/// What a site task may connect to in the lab: the DB router, Redis master and replica,
/// the three Sentinels, the platform's agent listener. All on the bridge address.
pub fn allow_list() -> Vec<String> {
    vec![
        format!("{HOST_IP}:{}", ports::ROUTER),
        format!("{HOST_IP}:{}-{}", data::redis_port(1), data::redis_port(2)),
        format!(
            "{HOST_IP}:{}-{}",
            data::sentinel_port(1),
            data::sentinel_port(3)
        ),
        format!("{HOST_IP}:{}", ports::PLATFORM + 1),
    ]
}

/// The guard's arguments for one node. The lab's nodes have no route to the internet:
/// `--internet off` says so (production's default is `80,443`).
/// [`allow_list`], plus the cache stack's Redis (master and replica ports) and Sentinel on
/// every cache node when the platform uses the stack (`lab up --platform-redis stack`): the
/// sites' object cache is there then, as each site's own ACL user.
pub fn allow_list_for(cache_nodes: &[Node], redis: super::PlatformRedis) -> Vec<String> {
    let mut v = allow_list();
    if redis == super::PlatformRedis::Stack {
        for n in cache_nodes {
            v.push(format!(
                "{}:{}-{}",
                n.ip,
                super::nodes::CACHE_MASTER_PORT,
                super::nodes::CACHE_REPLICA_PORT
            ));
            v.push(format!("{}:{}", n.ip, super::nodes::CACHE_SENTINEL_PORT));
        }
    }
    v
}

pub fn args(node: &Node) -> Vec<String> {
    args_for(node, &[], super::PlatformRedis::Host)
}

/// [`args`] with the allow list of [`allow_list_for`].
pub fn args_for(node: &Node, cache_nodes: &[Node], redis: super::PlatformRedis) -> Vec<String> {
    let mut a = vec![
        "guard".to_owned(),
        "--docker-host".into(),
        node.docker_host(),
        "--network".into(),
        SITES_NET.into(),
        "--edge-service".into(),
        format!("{STACK}_traefik"),
        "--internet".into(),
        "off".into(),
    ];
    for e in allow_list_for(cache_nodes, redis) {
        a.push("--allow".into());
        a.push(e);
    }
    a
}

/// Starts a guard for every worker unless one runs (from this very build, with these
/// arguments); stops the guards of workers the lab no longer has.
pub fn ensure_guards(lab: &Lab) -> Result<()> {
    let exe = std::env::current_exe().context("locating pressdock-infra")?;
    let workers: Vec<Node> = lab
        .topo
        .nodes()
        .into_iter()
        .filter(|n| n.role == Role::Worker)
        .collect();
    for stale in lab
        .procs
        .names()
        .iter()
        .filter(|p| p.starts_with("guard-pdlab-") && !workers.iter().any(|w| name(w) == **p))
    {
        lab.procs.stop(stale, Duration::from_secs(2))?;
        progress("guard", format!("stopped {stale} (no such worker)"));
    }
    for n in &workers {
        let args = args_for(n, &lab.topo.cache_nodes(), super::PlatformRedis::saved());
        if let Some(pid) = lab.procs.alive(&name(n)) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let want: Vec<u8> = args
                .iter()
                .flat_map(|a| [a.as_bytes(), b"\0"].concat())
                .collect();
            if proc::runs_current_exe(pid) && cmdline.ends_with(&want) {
                continue;
            }
            lab.procs.stop(&name(n), Duration::from_secs(2))?;
        }
        lab.procs.spawn(
            &name(n),
            GUARD_CG,
            "guard",
            &lab.path(&format!("logs/{}.log", name(n))),
            &exe.to_string_lossy(),
            &args,
        )?;
        progress(
            "guard",
            format!(
                "confining site tasks on {} (log: logs/{}.log)",
                n.host(),
                name(n)
            ),
        );
    }
    Ok(())
}

/// Galera's replication ports in the lab: group communication, IST and SST of every node.
pub fn galera_ports(lab: &Lab) -> Vec<Ports> {
    let n = u16::from(lab.topo.galera_nodes.max(1));
    [ports::GALERA_GCOMM, ports::GALERA_IST, ports::GALERA_SST]
        .iter()
        .map(|base| Ports {
            first: base + 1,
            last: base + n,
        })
        .collect()
}

/// The root namespace's rules for Galera's replication ports: the database nodes (all on
/// [`HOST_IP`] in the lab) only. Inserted at the top of `INPUT`, accepts before the reject;
/// rewritten when one is missing.
pub fn galera_firewall_rules(lab: &Lab) -> Vec<Vec<String>> {
    let db: Ipv4Addr = HOST_IP.parse().unwrap_or(Ipv4Addr::new(10, 213, 0, 1));
    rules::galera_rules(&[db], &galera_ports(lab), TAG)
}

pub fn galera_firewall_present(lab: &Lab) -> bool {
    crate::guard::input_rules_present(&galera_firewall_rules(lab))
}

pub fn ensure_galera_firewall(lab: &Lab) -> Result<()> {
    if crate::guard::ensure_input_rules(&galera_firewall_rules(lab))
        .context("adding Galera's replication rules")?
    {
        progress(
            "galera",
            "replication ports (gcomm, IST, SST) accept the database nodes only",
        );
    }
    Ok(())
}

/// `lab status` lines: each worker's guard and the Galera rules.
pub fn status_lines(lab: &Lab) -> Vec<(String, bool, String)> {
    let mut v = Vec::new();
    for n in lab.topo.nodes().iter().filter(|n| n.role == Role::Worker) {
        let alive = lab.procs.alive(&name(n));
        let last = std::fs::read_to_string(lab.path(&format!("logs/{}.log", name(n))))
            .ok()
            .and_then(|l| {
                l.lines()
                    .rev()
                    .find(|l| l.contains("confined"))
                    .map(str::to_owned)
            });
        v.push((
            format!("guard {}", n.host()),
            alive.is_some(),
            match (alive, last) {
                (None, _) => "not running".to_owned(),
                (Some(_), Some(l)) => format!("last: {}", l.split("guard: ").nth(1).unwrap_or("")),
                (Some(_), None) => "running, no site task confined yet".to_owned(),
            },
        ));
    }
    let present = galera_firewall_present(lab);
    v.push((
        "galera replication firewall".to_owned(),
        present,
        if present {
            "gcomm/IST/SST from the database nodes only".to_owned()
        } else {
            "rules missing (lab up adds them)".to_owned()
        },
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::rules::Endpoint;

    #[test]
    fn the_lab_allows_the_router_redis_sentinels_and_the_agent_listener_only() {
        let allowed: Vec<Endpoint> = allow_list()
            .iter()
            .map(|e| Endpoint::parse(e).expect("valid"))
            .collect();
        let ports: Vec<(u16, u16)> = allowed
            .iter()
            .map(|e| (e.ports.first, e.ports.last))
            .collect();
        assert_eq!(
            ports,
            [
                (23100, 23100),
                (23201, 23202),
                (23211, 23213),
                (23501, 23501)
            ]
        );
        assert!(allowed.iter().all(|e| e.net.to_string() == "10.213.0.1/32"));
        let node = Node {
            name: "w1".into(),
            role: Role::Worker,
            ip: "10.213.0.21".into(),
        };
        let a = args(&node);
        assert_eq!(a[0], "guard");
        assert!(a.windows(2).any(|w| w == ["--internet", "off"]));
        assert!(a.windows(2).any(|w| w == ["--edge-service", "pd_traefik"]));
    }

    #[test]
    fn with_the_platform_on_the_cache_stack_sites_may_also_reach_its_ports_and_no_more() {
        let m1 = Node {
            name: "m1".into(),
            role: Role::Manager,
            ip: "10.213.0.11".into(),
        };
        let host = allow_list_for(std::slice::from_ref(&m1), super::super::PlatformRedis::Host);
        assert_eq!(host, allow_list());
        let stack = allow_list_for(&[m1], super::super::PlatformRedis::Stack);
        assert_eq!(stack[..host.len()], host[..]);
        assert_eq!(
            stack[host.len()..],
            [
                "10.213.0.11:6379-6380".to_owned(),
                "10.213.0.11:26379".to_owned()
            ]
        );
        for e in &stack {
            Endpoint::parse(e).expect("valid");
        }
    }
}
