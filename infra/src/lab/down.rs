//! `lab down`: removes everything the lab made, found from PID files, cgroups, names,
//! mount points and the iptables comment, so it also works after a crash.
use super::sh::{self, cmd, progress, run};
use super::{BRIDGE, CACHE, Lab, RUN, STATE, net, proc};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// Mount points under the lab's folders or namespaces, deepest first.
pub fn lab_mounts() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| {
            m.starts_with(STATE)
                || m.starts_with(RUN)
                || m.starts_with("/run/netns/pdlab-")
                || m.starts_with("/var/run/netns/pdlab-")
        })
        .map(str::to_owned)
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v.dedup();
    v
}

pub fn down(lab: &Lab, keep_data: bool) -> Result<()> {
    sh::start_clock();
    // Graceful first for what keeps data (so --keep-data leaves consistent files).
    let grace = if keep_data { 20 } else { 5 };
    for name in lab.procs.names() {
        if (name == "platform" || name.starts_with("dockerd-"))
            && lab.procs.stop(&name, Duration::from_secs(grace))?
        {
            progress("down", format!("stopped {name}"));
        }
    }
    for name in lab.procs.names() {
        if lab.procs.stop(&name, Duration::from_secs(grace))? {
            progress("down", format!("stopped {name}"));
        }
    }
    // Everything else in our cgroups: containerd, shims, containers, gluster daemons.
    for cg in proc::lab_cgroups() {
        if let Some(name) = cg.file_name().map(|n| n.to_string_lossy().into_owned())
            && name.starts_with("pdlab-")
        {
            let n = proc::kill_cgroup(&name)?;
            if n > 0 {
                progress("down", format!("ended {n} process(es) in cgroup {name}"));
            }
        }
    }
    let left = proc::remove_cgroups();
    if !left.is_empty() {
        progress("down", format!("cgroups still busy: {left:?}"));
    }
    for m in lab_mounts() {
        // Lazy unmount also clears dead FUSE mounts ("Transport endpoint is not connected").
        let _ = run(&mut cmd("umount", ["-l", &m]));
    }
    for ns in net::lab_namespaces() {
        run(&mut cmd("ip", ["netns", "del", &ns])).with_context(|| format!("deleting {ns}"))?;
        progress("down", format!("namespace {ns} removed"));
    }
    for l in net::lab_links() {
        let _ = run(&mut cmd("ip", ["link", "del", &l]));
    }
    let n = net::remove_rules()?;
    if n > 0 {
        progress("down", format!("{n} iptables rule(s) removed"));
    }
    net::remove_hosts_entry()?;
    // Gluster's TLS files live where Gluster reads them, outside the lab's folder.
    for f in super::gluster_tls::FILES {
        if std::fs::remove_file(f).is_ok() {
            progress("down", format!("removed {f}"));
        }
    }
    let _ = std::fs::remove_dir_all(RUN);
    if keep_data {
        progress("down", format!("data kept in {STATE}"));
    } else {
        for m in lab_mounts() {
            let _ = run(&mut cmd("umount", ["-l", &m]));
        }
        if Path::new(STATE).exists() {
            std::fs::remove_dir_all(STATE).with_context(|| format!("removing {STATE}"))?;
        }
        progress(
            "down",
            format!("removed {STATE} (image cache kept in {CACHE})"),
        );
    }
    let leftovers = leftovers();
    if leftovers.is_empty() {
        progress("down", "nothing of the lab is left");
        Ok(())
    } else {
        anyhow::bail!("lab down left: {}", leftovers.join("; "))
    }
}

/// What of the lab still exists (empty after a clean `lab down`).
pub fn leftovers() -> Vec<String> {
    let mut v = Vec::new();
    for ns in net::lab_namespaces() {
        v.push(format!("namespace {ns}"));
    }
    for l in net::lab_links() {
        v.push(format!("link {l}"));
    }
    if sh::ok(&mut cmd("ip", ["link", "show", BRIDGE])) {
        v.push(format!("bridge {BRIDGE}"));
    }
    for (t, r) in net::lab_rules() {
        v.push(format!("iptables -t {t} {r}"));
    }
    for m in lab_mounts() {
        v.push(format!("mount {m}"));
    }
    for cg in proc::lab_cgroups() {
        let pids = proc::cgroup_pids(&cg);
        if !pids.is_empty() {
            v.push(format!("processes {pids:?} in {}", cg.display()));
        }
    }
    for f in super::gluster_tls::FILES {
        if Path::new(f).exists() {
            v.push(f.to_owned());
        }
    }
    if std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .contains(&format!("# {}", super::TAG))
    {
        v.push("/etc/hosts entry".into());
    }
    v
}
