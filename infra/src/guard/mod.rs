//! `pressdock-infra guard`: the network confinement of site tasks, one process per worker.
//!
//! It follows its node's dockerd (the event stream, and a full pass every `--resync-ms`)
//! and, for every running container that carries the site label (`pressdock.site`), enters
//! the container's network namespace and replaces its filter table with the rules of
//! [`rules::task_restore`]: a site task may connect to the DB router, Redis, the
//! Sentinels, the platform's agent listener, docker's DNS (loopback) and, if configured,
//! the public internet; its site port answers the edge (Traefik's tasks, learned from the
//! node's view of the site network) and its agent port the configured sources only.
//!
//! Why here and not per-site overlay networks: see docs/security.md, "Network
//! confinement". Why tenants cannot undo it: site tasks have no `NET_ADMIN`.
//!
//! When a container is confined for the first time the guard writes the mark file
//! ([`MARK`]) into it; the site agent, told to (`PRESSDOCK_NET_GUARD_WAIT_SECS`), waits
//! for it before it runs any PHP, so tenant code never runs unconfined.
//!
//! Safe against a reused PID: the namespace is opened first (which pins it), then the
//! process is checked to be the container's (its cgroup names the container id) and not
//! in the guard's own namespace; only then are the rules applied through the opened handle.
//! Idempotent: the rules are a pure function of the policy and the edge's addresses, the
//! text's digest is remembered per container, and a restarted guard applies them again.
pub mod rules;

use crate::routes::docker_get;
use anyhow::{Context, Result, bail};
use rules::Policy;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The mark inside a confined container (written by the guard, read by the agent).
pub const MARK: &str = "/run/pressdock-net-guard";

pub struct Options {
    pub docker_sock: PathBuf,
    pub api_version: String,
    pub policy: Policy,
    /// Swarm services whose tasks are the edge (Traefik), e.g. `pd_traefik`.
    pub edge_services: Vec<String>,
    /// The overlay network on which the edge reaches the sites.
    pub network: String,
    /// The container label that marks a site task.
    pub label: String,
    pub resync: Duration,
    /// One pass over the running containers, then exit (benchmarks, checks).
    pub once: bool,
}

/// What was applied to one container.
struct Applied {
    pid: i64,
    digest: String,
}

fn stamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn url_filters(f: &Value) -> String {
    let mut out = String::from("filters=");
    for b in f.to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The edge's addresses on `network`, as this node sees them (the network's service
/// records, which every node attached to the network holds). Empty when the node has no
/// task on the network yet (then there is nothing to confine either).
pub fn edge_addresses(
    sock: &Path,
    api: &str,
    network: &str,
    services: &[String],
) -> Result<Vec<Ipv4Addr>> {
    let v = match docker_get(sock, &format!("/{api}/networks/{network}?verbose=true")) {
        Ok(v) => v,
        Err(e) if format!("{e:#}").contains("HTTP 404") => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(parse_edge(&v, services))
}

/// The task addresses of `services` in a verbose network inspect.
pub fn parse_edge(network: &Value, services: &[String]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = services
        .iter()
        .flat_map(|s| {
            network["Services"][s.as_str()]["Tasks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t["EndpointIP"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Runs `program` inside the network namespace `ns` (an open handle), input on stdin.
fn run_in_netns(ns: &std::fs::File, program: &str, input: &str) -> Result<()> {
    let path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
    let mut child = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .arg(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting nsenter {program}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("feeding {program}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Applies `rules` (and the IPv6 rules) to the network namespace of `pid`, which must be
/// a process of container `id`. Writes the mark into the container when it lacks it.
fn apply(id: &str, pid: i64, v4: &str, v6: &str) -> Result<()> {
    if pid <= 0 {
        bail!("container {id} has no process");
    }
    // Open first: the handle pins the namespace even if the PID is reused afterwards.
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("opening the network namespace of PID {pid}"))?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if !cgroup.contains(id) {
        bail!("PID {pid} is no longer container {id}'s (reused)");
    }
    let ours = std::fs::metadata("/proc/self/ns/net")?.ino();
    let init = std::fs::metadata("/proc/1/ns/net").map(|m| m.ino()).ok();
    let theirs = ns.metadata()?.ino();
    if theirs == ours || Some(theirs) == init {
        bail!("container {id} shares the host's network namespace: not a site task");
    }
    run_in_netns(&ns, "iptables-restore", v4)?;
    if let Err(e) = run_in_netns(&ns, "ip6tables-restore", v6) {
        // No IPv6 in the kernel or the namespace: nothing to filter there.
        eprintln!("{} guard: {id:.12}: IPv6 rules not applied: {e:#}", stamp());
    }
    write_mark(pid, id)
}

/// Creates the mark file in the container (root's `/run`, which the tenant cannot write),
/// without following a symlink at its name.
fn write_mark(pid: i64, id: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("/proc/{pid}/root{MARK}");
    if Path::new(&path).exists() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .with_context(|| format!("writing the mark {MARK} into {id:.12}"))?;
    f.write_all(b"confined\n")?;
    Ok(())
}

fn digest(v4: &str) -> String {
    hex::encode(Sha256::digest(v4.as_bytes()))
}

/// The guard's state and one-container step.
struct Guard<'a> {
    o: &'a Options,
    api: String,
    edge: Vec<Ipv4Addr>,
    applied: HashMap<String, Applied>,
    passes: u64,
    /// Apply even unchanged rules (a full pass).
    force: bool,
}

impl Guard<'_> {
    /// Confines container `id` (inspecting it) unless it already has these rules.
    /// `started_ns`: when docker says it started (for the log's latency), if known.
    fn confine(&mut self, id: &str, started_ns: Option<i128>) -> Result<()> {
        let c = docker_get(
            &self.o.docker_sock,
            &format!("/{}/containers/{id}/json", self.api),
        )?;
        let id = c["Id"].as_str().unwrap_or(id).to_owned();
        let site = c["Config"]["Labels"][self.o.label.as_str()]
            .as_str()
            .map(str::to_owned);
        let Some(site) = site else { return Ok(()) };
        if c["State"]["Running"] != true {
            return Ok(());
        }
        let pid = c["State"]["Pid"].as_i64().unwrap_or(0);
        self.confine_pid(&id, &site, pid, started_ns)
    }

    fn confine_pid(
        &mut self,
        id: &str,
        site: &str,
        pid: i64,
        started_ns: Option<i128>,
    ) -> Result<()> {
        let v4 = rules::task_restore(&self.o.policy, &self.edge);
        let d = digest(&v4);
        let same = self
            .applied
            .get(id)
            .is_some_and(|a| a.pid == pid && a.digest == d);
        if same && !self.force {
            return Ok(());
        }
        let t0 = Instant::now();
        let first = !self.applied.contains_key(id);
        apply(id, pid, &v4, &rules::task_restore6())?;
        if same {
            // A full pass's re-application (rules wiped by root on the node come back).
            return Ok(());
        }
        let took = t0.elapsed();
        let n = rules::task_rules(&self.o.policy, &self.edge).len();
        let since_start = started_ns
            .map(|s| format!(" since_start_ms={:.1}", (now_nanos() - s) as f64 / 1e6))
            .unwrap_or_default();
        eprintln!(
            "{} guard: {} {id:.12} site={site} rules={n} edge={} apply_ms={:.1}{since_start}",
            stamp(),
            if first { "confined" } else { "updated" },
            self.edge.len(),
            took.as_secs_f64() * 1e3,
        );
        self.applied
            .insert(id.to_owned(), Applied { pid, digest: d });
        Ok(())
    }

    /// Reads the edge's addresses again (the first task on a worker brings the network
    /// to it, so a task's start is when they may first be known).
    fn refresh_edge(&mut self) -> Result<()> {
        let edge = edge_addresses(
            &self.o.docker_sock,
            &self.api,
            &self.o.network,
            &self.o.edge_services,
        )?;
        if edge != self.edge {
            eprintln!(
                "{} guard: edge on {} is now {edge:?}",
                stamp(),
                self.o.network
            );
            self.edge = edge;
        }
        Ok(())
    }

    /// A full pass: the edge's addresses, then every running site container.
    fn resync(&mut self) -> Result<()> {
        self.refresh_edge()?;
        let list = docker_get(
            &self.o.docker_sock,
            &format!(
                "/{}/containers/json?{}",
                self.api,
                url_filters(&json!({ "label": [self.o.label], "status": ["running"] }))
            ),
        )?;
        let want = digest(&rules::task_restore(&self.o.policy, &self.edge));
        // Every 30th pass applies the rules to every container again (a PID that changed
        // without a start event, rules wiped by root on the node: tenants cannot); the
        // others skip containers that have these very rules.
        self.passes += 1;
        let full = self.passes % 30 == 1;
        self.force = full;
        let mut seen = Vec::new();
        for c in list.as_array().into_iter().flatten() {
            let Some(id) = c["Id"].as_str() else { continue };
            seen.push(id.to_owned());
            if !full && self.applied.get(id).is_some_and(|a| a.digest == want) {
                continue;
            }
            if let Err(e) = self.confine(id, None) {
                eprintln!("{} guard: {id:.12}: {e:#}", stamp());
            }
        }
        self.applied.retain(|id, _| seen.contains(id));
        self.force = false;
        Ok(())
    }
}

/// Follows the container start events of site tasks, sending (id, time in ns).
fn follow_events(
    sock: &Path,
    api: &str,
    label: &str,
    tx: &mpsc::Sender<(String, Option<i128>)>,
) -> Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting to {}", sock.display()))?;
    let f = url_filters(&json!({ "type": ["container"], "event": ["start"], "label": [label] }));
    // HTTP/1.0: the answer streams unchunked until the connection closes.
    s.write_all(format!("GET /{api}/events?{f} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.contains(" 200") {
        bail!("events: {}", line.trim());
    }
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the event stream ended");
        }
        let t = line.trim();
        if t.is_empty() || !t.starts_with('{') {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(t) else {
            continue;
        };
        if let Some(id) = v["id"].as_str().or(v["Actor"]["ID"].as_str()) {
            let when = v["timeNano"].as_i64().map(i128::from);
            if tx.send((id.to_owned(), when)).is_err() {
                return Ok(());
            }
        }
    }
}

fn ipt(op: &str, rule: &[String]) -> Vec<String> {
    let mut v = vec![op.to_owned(), "INPUT".to_owned()];
    if op == "-I" {
        v.push("1".into());
    }
    v.extend(rule.iter().cloned());
    v
}

fn iptables_ok(args: &[String]) -> bool {
    Command::new("iptables")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn iptables(args: &[String]) -> Result<()> {
    let out = Command::new("iptables")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether every rule (arguments after `-A INPUT`) is in this namespace's `INPUT`.
pub fn input_rules_present(rules: &[Vec<String>]) -> bool {
    rules.iter().all(|r| iptables_ok(&ipt("-C", r)))
}

/// Puts `rules` at the top of `INPUT`, in order, unless all are there already (then
/// `Ok(false)`). A partial set is removed and inserted again, so the order holds.
pub fn ensure_input_rules(rules: &[Vec<String>]) -> Result<bool> {
    if input_rules_present(rules) {
        return Ok(false);
    }
    for r in rules {
        while iptables_ok(&ipt("-C", r)) {
            iptables(&ipt("-D", r))?;
        }
    }
    // Inserted at the top in reverse: the accepts end up before the reject.
    for r in rules.iter().rev() {
        iptables(&ipt("-I", r))?;
    }
    Ok(true)
}

/// Runs until killed (or once, with `--once`).
pub fn run(o: &Options) -> Result<()> {
    let api = format!("v{}", o.api_version.trim_start_matches('v'));
    let mut g = Guard {
        o,
        api: api.clone(),
        edge: Vec::new(),
        applied: HashMap::new(),
        passes: 0,
        force: false,
    };
    if o.once {
        return g.resync();
    }
    let (tx, rx) = mpsc::channel();
    {
        let sock = o.docker_sock.clone();
        let (api, label) = (api.clone(), o.label.clone());
        std::thread::spawn(move || {
            let mut last = String::new();
            loop {
                if let Err(e) = follow_events(&sock, &api, &label, &tx) {
                    let msg = format!("{e:#}");
                    if msg != last {
                        eprintln!("{} guard: events: {msg} (reconnecting)", stamp());
                        last = msg;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    }
    eprintln!(
        "{} guard: following {} ({} rules per task)",
        stamp(),
        o.docker_sock.display(),
        rules::task_rules(&o.policy, &[]).len()
    );
    let mut last_err = String::new();
    loop {
        match g.resync() {
            Ok(()) => last_err.clear(),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_err {
                    eprintln!("{} guard: {msg}", stamp());
                    last_err = msg;
                }
            }
        }
        let until = Instant::now() + o.resync;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((id, when)) => {
                    // Confined even when the edge cannot be read (then with the last).
                    if let Err(e) = g.refresh_edge() {
                        eprintln!("{} guard: the edge's addresses: {e:#}", stamp());
                    }
                    if let Err(e) = g.confine(&id, when) {
                        eprintln!("{} guard: {id:.12}: {e:#}", stamp());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the event thread ended"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_addresses_come_from_the_named_services_tasks() {
        let v = json!({"Services": {
            "pd_traefik": {"VIP": "<nil>", "Tasks": [
                {"Name": "pd_traefik.x", "EndpointIP": "10.216.0.2", "Info": {"Host IP": "10.213.0.11"}},
                {"Name": "pd_traefik.y", "EndpointIP": "10.216.0.12"}
            ]},
            "wp_abc": {"Tasks": [{"EndpointIP": "10.216.0.6"}]},
            "lab_hello": {"Tasks": [{"EndpointIP": "10.216.0.4"}]}
        }});
        let e = parse_edge(&v, &["pd_traefik".into()]);
        assert_eq!(
            e,
            [Ipv4Addr::new(10, 216, 0, 2), Ipv4Addr::new(10, 216, 0, 12)]
        );
        assert!(parse_edge(&json!({}), &["pd_traefik".into()]).is_empty());
    }
}
