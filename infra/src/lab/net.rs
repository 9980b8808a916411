//! The lab's network: the bridge, one namespace + veth per node, the iptables rule that
//! lets bridged traffic through, and the /etc/hosts name Gluster needs.
use super::sh::{cmd, ok, run, try_out};
use super::{BRIDGE, GLUSTER_HOST, HOST_IP, Node, PREFIX_LEN, TAG};
use anyhow::{Context, Result};

fn forward_rule() -> Vec<String> {
    [
        "FORWARD",
        "-i",
        BRIDGE,
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        TAG,
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn ensure_bridge() -> Result<()> {
    if !ok(&mut cmd("ip", ["link", "show", BRIDGE])) {
        run(&mut cmd("ip", ["link", "add", BRIDGE, "type", "bridge"]))
            .context("creating the lab bridge")?;
    }
    run(&mut cmd(
        "ip",
        [
            "addr",
            "replace",
            &format!("{HOST_IP}/{PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ],
    ))
    .context("addressing the lab bridge")?;
    run(&mut cmd("ip", ["link", "set", BRIDGE, "up"]))?;
    // Bridged traffic between namespaces is filtered when br_netfilter is loaded.
    let rule = forward_rule();
    let mut check = vec!["-C".to_string()];
    check.extend(rule.iter().cloned());
    if !ok(&mut cmd("iptables", &check)) {
        let mut ins = vec!["-I".to_string()];
        ins.extend(rule);
        run(&mut cmd("iptables", &ins)).context("adding the lab's FORWARD rule")?;
    }
    ensure_hosts_entry()
}

/// `10.213.0.1 pdlab-gluster # pressdock-lab` in /etc/hosts.
fn ensure_hosts_entry() -> Result<()> {
    let hosts = std::fs::read_to_string("/etc/hosts").context("reading /etc/hosts")?;
    let line = format!("{HOST_IP} {GLUSTER_HOST} # {TAG}");
    if hosts.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let mut s: String = hosts
        .lines()
        .filter(|l| !l.contains(&format!("# {TAG}")))
        .map(|l| format!("{l}\n"))
        .collect();
    s.push_str(&line);
    s.push('\n');
    // /etc/hosts may be a bind mount: write in place rather than rename over it.
    std::fs::write("/etc/hosts", s).context("writing /etc/hosts")
}

pub fn remove_hosts_entry() -> Result<bool> {
    let hosts = std::fs::read_to_string("/etc/hosts").context("reading /etc/hosts")?;
    if !hosts.contains(&format!("# {TAG}")) {
        return Ok(false);
    }
    let s: String = hosts
        .lines()
        .filter(|l| !l.contains(&format!("# {TAG}")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write("/etc/hosts", s).context("writing /etc/hosts")?;
    Ok(true)
}

/// The node's namespace, veth pair (`pdv-<name>` on the bridge, `lab0` inside), address
/// (no default route: see below).
pub fn ensure_node(node: &Node) -> Result<()> {
    let ns = node.host();
    let veth = format!("pdv-{}", node.name);
    if !std::path::Path::new(&node.netns_path()).exists() {
        run(&mut cmd("ip", ["netns", "add", &ns]))
            .with_context(|| format!("creating netns {ns}"))?;
    }
    let inside = ok(&mut cmd("ip", ["-n", &ns, "link", "show", "lab0"]));
    let outside = ok(&mut cmd("ip", ["link", "show", &veth]));
    if !(inside && outside) {
        if outside {
            run(&mut cmd("ip", ["link", "del", &veth]))?;
        }
        if inside {
            run(&mut cmd("ip", ["-n", &ns, "link", "del", "lab0"]))?;
        }
        run(&mut cmd(
            "ip",
            [
                "link", "add", &veth, "type", "veth", "peer", "name", "lab0", "netns", &ns,
            ],
        ))
        .with_context(|| format!("creating veth for {ns}"))?;
    }
    run(&mut cmd("ip", ["link", "set", &veth, "master", BRIDGE]))?;
    run(&mut cmd("ip", ["link", "set", &veth, "up"]))?;
    let addr = format!("{}/{PREFIX_LEN}", node.ip);
    run(&mut cmd(
        "ip",
        ["-n", &ns, "addr", "replace", &addr, "dev", "lab0"],
    ))?;
    run(&mut cmd("ip", ["-n", &ns, "link", "set", "lab0", "up"]))?;
    run(&mut cmd("ip", ["-n", &ns, "link", "set", "lo", "up"]))?;
    // No default route: the bridge subnet (and so the data tier on HOST_IP) is on-link,
    // and anything else fails at once with "network unreachable" instead of timing out.
    // That matters: swarm tries to pull every task's image from Docker Hub first, and a
    // DNS lookup into a black hole costs ~20 s per task start.
    if try_out(&mut cmd("ip", ["-n", &ns, "route", "show", "default"]))
        .is_some_and(|r| !r.trim().is_empty())
    {
        run(&mut cmd("ip", ["-n", &ns, "route", "del", "default"]))
            .with_context(|| format!("removing the default route in {ns}"))?;
    }
    Ok(())
}

/// Namespaces of ours that exist (`pdlab-*`).
pub fn lab_namespaces() -> Vec<String> {
    try_out(&mut cmd("ip", ["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("pdlab-"))
        .map(str::to_owned)
        .collect()
}

/// Lab links left on the host (`pdlab0`, `pdv-*`).
pub fn lab_links() -> Vec<String> {
    try_out(&mut cmd("ip", ["-o", "link", "show"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n == BRIDGE || n.starts_with("pdv-"))
        .collect()
}

/// iptables rules carrying our comment, as `-A …` lines, per table.
pub fn lab_rules() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for table in ["filter", "nat"] {
        for l in try_out(&mut cmd("iptables", ["-t", table, "-S"]))
            .unwrap_or_default()
            .lines()
        {
            if l.starts_with("-A ") && l.contains(TAG) {
                v.push((table.to_owned(), l.to_owned()));
            }
        }
    }
    v
}

pub fn remove_rules() -> Result<usize> {
    let rules = lab_rules();
    for (table, rule) in &rules {
        let mut args: Vec<String> = vec!["-t".into(), table.clone()];
        let mut parts = rule
            .split_whitespace()
            .map(|s| s.trim_matches('"').to_owned());
        parts.next(); // -A
        args.push("-D".into());
        args.extend(parts);
        run(&mut cmd("iptables", &args)).with_context(|| format!("removing rule {rule}"))?;
    }
    Ok(rules.len())
}
