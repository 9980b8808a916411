//! Running the swarm steps ([`super::swarm`]) on the machines: the `docker` CLI of the
//! operator's machine against each node's daemon over SSH (`docker -H ssh://root@<ip>`), so
//! nothing is installed on the nodes beyond Docker, and a compose file is read where the
//! operator runs the tool.
//!
//! - observe: each machine's `docker info` (in a swarm? its node id), then, from a manager in
//!   the swarm, every node's labels and the networks;
//! - execute: the steps in order; a join reads the join token from the first manager at that
//!   moment and puts it in the command only (never in a step, a progress line or an error);
//!   after a manager joins, waits until the first manager sees it `reachable` before the next;
//! - recover a lost manager quorum ([`recover_managers`]): `--force-new-cluster` on the
//!   restored manager, the other managers re-added one at a time (tested against the
//!   simulated swarm of `infra/tests/evolve.rs`).
//!
//! Tested with a simulated swarm (unit tests below): the order, the tokens, the waiting and a
//! re-run after a failure. The SSH path itself has not run against machines.
use super::spec::Role;
use super::swarm::{Local, Machine, ObservedSwarm, Step, Swarm};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::time::Duration;

/// `docker <args>` against one machine's daemon.
pub trait Docker {
    /// Its stdout, or an error that names the machine and the command (tokens redacted).
    fn run(&self, m: &Machine, args: &[String]) -> Result<String>;

    /// Deploys `file` (under `repo`) as `stack` through machine `m` (a manager), with the
    /// compose file's `${…}` variables from `vars`. The real machines override this with
    /// the Engine API deployer ([`super::stack`]); this default is the CLI's `docker stack
    /// deploy`, which the simulated swarm of the tests models.
    fn deploy_stack(
        &self,
        m: &Machine,
        stack: &str,
        repo: &std::path::Path,
        file: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<()> {
        let _ = vars;
        self.run(
            m,
            &[
                "stack".into(),
                "deploy".into(),
                "--prune".into(),
                "--compose-file".into(),
                repo.join(file).display().to_string(),
                stack.into(),
            ],
        )
        .map(|_| ())
    }
}

/// The `${…}` variables a stack file names: those the deployer sets itself (`set`: the
/// spec's images, [`super::images::Images::vars`]; the environment cannot change them), the
/// others from this process's environment (the operator's `PD_*` settings). A file that
/// cannot be read names none (the deployer that reads it reports that).
pub fn stack_vars(
    repo: &std::path::Path,
    file: &str,
    set: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(repo.join(file)).unwrap_or_default();
    Ok(super::stack::variables(&text)
        .into_iter()
        .filter_map(|v| {
            let x = set.get(&v).cloned().or_else(|| std::env::var(&v).ok())?;
            Some((v, x))
        })
        .collect())
}

/// The arguments as they may be shown: the value after `--token` replaced.
pub fn redacted(args: &[String]) -> String {
    let mut out = Vec::new();
    let mut hide = false;
    for a in args {
        out.push(if hide { "<token>" } else { a.as_str() });
        hide = a == "--token";
    }
    out.join(" ")
}

/// The real one: the local `docker` CLI with `-H ssh://<user>@<public ip>`.
pub struct SshDocker {
    pub user: String,
}

impl Docker for SshDocker {
    fn run(&self, m: &Machine, args: &[String]) -> Result<String> {
        let out = std::process::Command::new("docker")
            .arg("-H")
            .arg(format!("ssh://{}@{}", self.user, m.public_ip))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "`docker {}` on {}: {}",
                redacted(args),
                m.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The manager's Engine API through an SSH forward of its docker socket
    /// (`ssh -L <tmp>/docker.sock:/var/run/docker.sock`), then [`super::stack::deploy_file`].
    fn deploy_stack(
        &self,
        m: &Machine,
        stack: &str,
        repo: &std::path::Path,
        file: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<()> {
        let dir = tempfile::tempdir().context("a folder for the forwarded socket")?;
        let sock = dir.path().join("docker.sock");
        let mut child = std::process::Command::new("ssh")
            .args([
                "-nNT",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "BatchMode=yes",
                "-L",
            ])
            .arg(format!("{}:/var/run/docker.sock", sock.display()))
            .arg(format!("{}@{}", self.user, m.public_ip))
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting ssh")?;
        let r = (|| {
            let mut n = 0;
            while !sock.exists() {
                if let Some(st) = child.try_wait()? {
                    bail!(
                        "ssh to {} exited ({st}) before forwarding its docker socket",
                        m.name
                    );
                }
                n += 1;
                if n > 300 {
                    bail!("ssh to {}: no forwarded socket after 30 s", m.name);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            super::stack::deploy_file(&sock, stack, repo, file, vars, Duration::from_secs(1800))
                .map(|_| ())
        })();
        let _ = child.kill();
        let _ = child.wait();
        r
    }
}

fn strs(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// What the machines and the swarm's leader say; fails if a machine does not answer.
pub fn observe(d: &impl Docker, machines: &[Machine]) -> Result<ObservedSwarm> {
    observe_with(d, machines, false)
}

/// What the machines and the swarm's leader say. `tolerate_down`: a machine whose dockerd
/// does not answer (a failed node) is marked `unreachable` instead of failing the look.
pub fn observe_with(
    d: &impl Docker,
    machines: &[Machine],
    tolerate_down: bool,
) -> Result<ObservedSwarm> {
    let mut o = ObservedSwarm::default();
    for m in machines {
        let info = d.run(
            m,
            &strs(&[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
            ]),
        );
        let info = match info {
            Ok(i) => i,
            Err(_) if tolerate_down => {
                o.local.insert(
                    m.name.clone(),
                    Local {
                        unreachable: true,
                        ..Local::default()
                    },
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut it = info.split_whitespace();
        let state = it.next().unwrap_or("");
        o.local.insert(
            m.name.clone(),
            Local {
                in_swarm: state == "active",
                node_id: it.next().unwrap_or("").to_owned(),
                unreachable: false,
            },
        );
    }
    let Some(leader) = machines
        .iter()
        .find(|m| m.role == Role::Manager && o.local.get(&m.name).is_some_and(|l| l.in_swarm))
    else {
        return Ok(o);
    };
    let mut labels = BTreeMap::new();
    let mut nodes = Vec::new();
    let mut stacks = BTreeMap::new();
    for line in d
        .run(
            leader,
            &strs(&[
                "node",
                "ls",
                "--format",
                "{{.ID}} {{.Hostname}} {{.Status}} {{.ManagerStatus}}",
            ]),
        )?
        .lines()
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(id), Some(host), Some(status)) = (f.first(), f.get(1), f.get(2)) else {
            continue;
        };
        nodes.push(super::swarm::SwarmNode {
            id: (*id).to_owned(),
            hostname: (*host).to_owned(),
            ready: *status == "Ready",
            manager: f.len() > 3,
        });
        let id = *id;
        let json = d.run(
            leader,
            &strs(&["node", "inspect", "--format", "{{json .Spec.Labels}}", id]),
        )?;
        let l: BTreeMap<String, String> = serde_json::from_str(json.trim()).unwrap_or_default();
        if f.len() > 3 {
            for (k, v) in &l {
                if let Some(stack) = k.strip_prefix(super::swarm::STACK_LABEL) {
                    stacks.insert(stack.to_owned(), v.clone());
                }
            }
        }
        labels.insert(id.to_owned(), l);
    }
    o.swarm = Swarm {
        labels,
        nodes,
        networks: d
            .run(leader, &strs(&["network", "ls", "--format", "{{.Name}}"]))?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        stacks,
    };
    Ok(o)
}

/// How many looks a wait makes before it gives up (a joining manager, a machine's dockerd, a
/// stack's rollout, a drained node's tasks), `poll` apart.
pub const MAX_LOOKS: u32 = 600;

/// Where the stacks are and the variables the deployer sets itself, for [`execute`].
#[derive(Clone, Copy, Debug)]
pub struct StackSource<'a> {
    /// Where `stacks/` is.
    pub repo: &'a std::path::Path,
    /// Variables every stack gets whatever the environment says: the images
    /// ([`super::images::Images::vars`]: the spec's in production, the lab's own builds in
    /// the lab).
    pub set: &'a BTreeMap<String, String>,
}

/// Looks at the machines (`tolerate_down` as in [`observe_with`]), plans with `plan` and runs
/// the steps on the swarm's leader: the sequence `cluster apply --swarm`, `lab up` and the
/// tests share (`cluster swarm` runs its parts itself: it prints the plan first, and has a
/// dry run). Returns the steps run.
pub fn converge(
    d: &impl Docker,
    machines: &[Machine],
    tolerate_down: bool,
    plan: impl FnOnce(&ObservedSwarm) -> Vec<Step>,
    stacks: StackSource<'_>,
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Step>> {
    let seen = observe_with(d, machines, tolerate_down)?;
    let steps = plan(&seen);
    if steps.is_empty() {
        return Ok(steps);
    }
    let leader = super::swarm::leader(machines, &seen).context("no manager")?;
    execute(d, machines, &leader.name, &steps, stacks, poll, progress)?;
    Ok(steps)
}

/// Runs the steps, in order. `leader`: the manager that runs the swarm-wide commands
/// ([`super::swarm::leader`]). `stacks`: where `stacks/` is, and the variables set for
/// them. `poll`: between two looks at a joining manager, a booting machine, a rollout.
pub fn execute(
    d: &impl Docker,
    machines: &[Machine],
    leader: &str,
    steps: &[Step],
    stacks: StackSource<'_>,
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let repo = stacks.repo;
    let first = machines
        .iter()
        .find(|m| m.name == leader)
        .context("the leader is not a machine of the cluster")?;
    let by_name: BTreeMap<&str, &Machine> = machines.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut tokens: BTreeMap<bool, String> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        progress(&format!("[{}/{}] {step} …", i + 1, steps.len()));
        let (on, mut args) = step.command(&first.name);
        let target = *by_name
            .get(on.as_str())
            .with_context(|| format!("{on} is not a machine of the cluster"))?;
        if let Step::Remove {
            id, manager: true, ..
        } = step
        {
            // Raft: a down manager stays a voting member until demoted.
            d.run(first, &strs(&["node", "demote", id]))
                .with_context(|| format!("demoting {id}"))?;
        }
        if let Step::Join { manager, .. } = step {
            // A new droplet's dockerd answers once cloud-init installed it.
            let mut n = 0;
            while d
                .run(target, &strs(&["info", "--format", "{{.ServerVersion}}"]))
                .is_err()
            {
                n += 1;
                if n > MAX_LOOKS {
                    bail!("{}: dockerd does not answer", target.name);
                }
                std::thread::sleep(poll);
            }
            if !tokens.contains_key(manager) {
                let kind = if *manager { "manager" } else { "worker" };
                let t = d
                    .run(first, &strs(&["swarm", "join-token", "-q", kind]))
                    .with_context(|| format!("reading the {kind} join token"))?;
                tokens.insert(*manager, t.trim().to_owned());
            }
            let token = tokens.get(manager).cloned().unwrap_or_default();
            for a in &mut args {
                if a == "{TOKEN}" {
                    a.clone_from(&token);
                }
            }
        }
        if let Step::Label { node, .. } = step {
            // By id: a replaced machine's old node, down, has the same host name.
            let m = by_name
                .get(node.as_str())
                .context("label of an unknown machine")?;
            let id = d.run(m, &strs(&["info", "--format", "{{.Swarm.NodeID}}"]))?;
            if let Some(last) = args.last_mut() {
                *last = id.trim().to_owned();
            }
        }
        if let Step::Deploy { stack, file, .. } = step {
            // The compose file is read here, on the operator's machine; its images from the
            // spec, its other variables from the operator's environment.
            // The machines' own values (the database nodes' addresses) beside the spec's.
            let mut set = super::swarm::machine_vars(machines);
            set.extend(stacks.set.iter().map(|(k, v)| (k.clone(), v.clone())));
            d.deploy_stack(target, stack, repo, file, &stack_vars(repo, file, &set)?)
                .with_context(|| step.to_string())?;
        } else {
            d.run(target, &args)
                .with_context(|| format!("{step} (`docker {}`)", redacted(&args)))?;
        }
        if let Step::Deploy { stack, hash, .. } = step {
            wait_rollout(d, first, stack, poll, progress)?;
            if !hash.is_empty() {
                let id = d.run(first, &strs(&["info", "--format", "{{.Swarm.NodeID}}"]))?;
                d.run(
                    first,
                    &[
                        "node".into(),
                        "update".into(),
                        "--label-add".into(),
                        format!("{}{stack}={hash}", super::swarm::STACK_LABEL),
                        id.trim().to_owned(),
                    ],
                )
                .context("recording the stack's hash")?;
            }
        }
        if let Step::Join {
            node,
            manager: true,
            ..
        } = step
        {
            // Raft: the next manager joins only once this one is a voting member.
            let mut n = 0;
            loop {
                let r = d.run(
                    first,
                    &strs(&[
                        "node",
                        "inspect",
                        "--format",
                        "{{.ManagerStatus.Reachability}}",
                        node,
                    ]),
                )?;
                if r.trim() == "reachable" {
                    break;
                }
                n += 1;
                if n > 120 {
                    bail!("manager {node} not reachable after joining");
                }
                std::thread::sleep(poll);
            }
        }
        progress("  done");
    }
    Ok(())
}

/// Waits until every service of `stack` finished its update (`UpdateStatus.State` empty for a
/// service never updated, or `completed`); an update that paused or rolled back fails.
pub fn wait_rollout(
    d: &impl Docker,
    leader: &Machine,
    stack: &str,
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let services = d.run(
        leader,
        &[
            "service".into(),
            "ls".into(),
            "--filter".into(),
            format!("label=com.docker.stack.namespace={stack}"),
            "--format".into(),
            "{{.Name}}".into(),
        ],
    )?;
    for svc in services.split_whitespace() {
        let mut n = 0;
        loop {
            let state = d.run(
                leader,
                &strs(&[
                    "service",
                    "inspect",
                    "--format",
                    "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                    svc,
                ]),
            )?;
            match state.trim() {
                "" | "completed" => break,
                s @ ("paused" | "rollback_started" | "rollback_paused" | "rollback_completed") => {
                    bail!("the update of service {svc} stopped: {s} (docker service ps {svc})")
                }
                s => {
                    n += 1;
                    if n > MAX_LOOKS {
                        bail!("service {svc}: update still {s}");
                    }
                    if n == 1 {
                        progress(&format!("  {svc}: {s}, one task at a time"));
                    }
                    std::thread::sleep(poll);
                }
            }
        }
    }
    Ok(())
}

/// Takes a node that serves out of the swarm: drained (its tasks rescheduled elsewhere),
/// waited until none runs there, a manager demoted (by `leader`, never itself), then it
/// leaves (`docker swarm leave` on the machine) and its entry is removed.
pub fn drain_and_leave(
    d: &impl Docker,
    leader: &Machine,
    m: &Machine,
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let id = d.run(m, &strs(&["info", "--format", "{{.Swarm.NodeID}}"]))?;
    let id = id.trim().to_owned();
    if id.is_empty() {
        return Ok(()); // Not in a swarm (any more).
    }
    d.run(
        leader,
        &strs(&["node", "update", "--availability", "drain", &id]),
    )?;
    if m.role == Role::Manager {
        d.run(leader, &strs(&["node", "demote", &id]))?;
    }
    let mut n = 0;
    loop {
        let running = d.run(
            leader,
            &strs(&[
                "node",
                "ps",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.ID}}",
                &id,
            ]),
        )?;
        let left = running.split_whitespace().count();
        if left == 0 {
            break;
        }
        n += 1;
        if n > MAX_LOOKS {
            bail!("{}: {left} task(s) still running after the drain", m.name);
        }
        if n == 1 {
            progress(&format!("  {}: {left} task(s) moving off", m.name));
        }
        std::thread::sleep(poll);
    }
    d.run(m, &strs(&["swarm", "leave"]))?;
    d.run(leader, &strs(&["node", "rm", "--force", &id]))?;
    progress(&format!("  {} left the swarm", m.name));
    Ok(())
}

/// What [`recover_managers`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// `swarm init --force-new-cluster` ran on the restored manager (it had no leader).
    pub forced: bool,
    /// Managers that left and joined the recovered swarm again, in order.
    pub rejoined: Vec<String>,
    /// Managers already reachable managers of the recovered swarm (a re-run).
    pub already: Vec<String>,
    /// Managers whose dockerd did not answer: for `cluster apply --swarm --replace-failed`.
    pub unreachable: Vec<String>,
}

/// A lost manager quorum, recovered from the manager whose swarm state was restored
/// (`restore swarm`, then dockerd started on it; infra/README.md, "Restore"):
///
/// 1. if `restored` has no leader (it cannot read the manager join token) and
///    `force_new_cluster`: `docker swarm init --force-new-cluster --advertise-addr <its VPC
///    address>` on it, a one-manager swarm with the backup's services, networks and nodes.
///    A swarm that has a leader is never forced (a re-run leaves the rejoined managers be);
/// 2. every other manager machine, by name, one at a time: skipped if the restored manager
///    sees it `reachable` already; else `docker swarm leave --force` on it (it still holds
///    the old raft, or none), its old entries demoted and removed on the restored manager
///    (the host name names one node again), `swarm join` with the manager token to the
///    restored manager's VPC address, and the next only once the restored manager sees the
///    new node `reachable` (raft: one member changes at a time, so 1 → 2 → 3 managers and
///    quorum never breaks).
///
/// A manager whose dockerd does not answer is left for `cluster apply --swarm
/// --replace-failed` (a new droplet under its name, joined as a manager). Workers are not
/// touched: they keep their certificates from the same CA and reconnect by themselves.
pub fn recover_managers(
    d: &impl Docker,
    machines: &[Machine],
    restored: &str,
    force_new_cluster: bool,
    poll: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Recovered> {
    let r = machines
        .iter()
        .find(|m| m.name == restored)
        .with_context(|| format!("{restored} is not a machine of the cluster"))?;
    if r.role != Role::Manager {
        bail!("{restored} is not a manager");
    }
    let mut out = Recovered::default();
    let token = match d.run(r, &strs(&["swarm", "join-token", "-q", "manager"])) {
        Ok(t) => t,
        Err(e) if force_new_cluster => {
            progress(&format!(
                "{restored} has no leader ({e:#}): swarm init --force-new-cluster"
            ));
            d.run(
                r,
                &[
                    "swarm".into(),
                    "init".into(),
                    "--force-new-cluster".into(),
                    "--advertise-addr".into(),
                    r.private_ip.to_string(),
                ],
            )
            .with_context(|| format!("swarm init --force-new-cluster on {restored}"))?;
            out.forced = true;
            d.run(r, &strs(&["swarm", "join-token", "-q", "manager"]))
                .with_context(|| format!("reading the manager join token from {restored}"))?
        }
        Err(e) => {
            return Err(e.context(format!(
                "reading the manager join token from {restored}: not a manager with a leader \
                 (run with --force-new-cluster after `restore swarm`)"
            )));
        }
    };
    let token = token.trim().to_owned();
    let reachability = |id: &str| -> Result<String> {
        Ok(d.run(
            r,
            &strs(&[
                "node",
                "inspect",
                "--format",
                "{{.ManagerStatus.Reachability}}",
                id,
            ]),
        )?
        .trim()
        .to_owned())
    };
    let mut others: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == Role::Manager && m.name != restored)
        .collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    for m in others {
        let info = d.run(
            m,
            &strs(&[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
            ]),
        );
        let Ok(info) = info else {
            progress(&format!(
                "{}: dockerd does not answer; left for `cluster apply --swarm --replace-failed`",
                m.name
            ));
            out.unreachable.push(m.name.clone());
            continue;
        };
        let mut it = info.split_whitespace();
        let state = it.next().unwrap_or("").to_owned();
        let id = it.next().unwrap_or("").to_owned();
        if state == "active" && !id.is_empty() && reachability(&id).is_ok_and(|x| x == "reachable")
        {
            progress(&format!("{}: a reachable manager already", m.name));
            out.already.push(m.name.clone());
            continue;
        }
        progress(&format!(
            "{}: leaves its old swarm, joins as manager",
            m.name
        ));
        if state != "inactive" {
            d.run(m, &strs(&["swarm", "leave", "--force"]))
                .with_context(|| format!("swarm leave --force on {}", m.name))?;
        }
        // Its old entries (the backup's, down now): the host name names one node again.
        for line in d
            .run(
                r,
                &strs(&[
                    "node",
                    "ls",
                    "--format",
                    "{{.ID}} {{.Hostname}} {{.Status}} {{.ManagerStatus}}",
                ]),
            )?
            .lines()
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(old), Some(host)) = (f.first(), f.get(1)) else {
                continue;
            };
            if *host != m.name {
                continue;
            }
            if f.len() > 3 {
                d.run(r, &strs(&["node", "demote", old]))
                    .with_context(|| format!("demoting {}'s old entry {old}", m.name))?;
            }
            d.run(r, &strs(&["node", "rm", "--force", old]))
                .with_context(|| format!("removing {}'s old entry {old}", m.name))?;
        }
        let join = Step::Join {
            node: m.name.clone(),
            manager: true,
            addr: m.private_ip,
            leader: r.private_ip,
        };
        let (_, mut args) = join.command(restored);
        for a in &mut args {
            if a == "{TOKEN}" {
                a.clone_from(&token);
            }
        }
        d.run(m, &args)
            .with_context(|| format!("{join} (`docker {}`)", redacted(&args)))?;
        let new_id = d.run(m, &strs(&["info", "--format", "{{.Swarm.NodeID}}"]))?;
        let new_id = new_id.trim().to_owned();
        // Raft: the next manager only once this one is a voting member.
        let mut n = 0;
        while reachability(&new_id)? != "reachable" {
            n += 1;
            if n > 120 {
                bail!("manager {} ({new_id}) not reachable after joining", m.name);
            }
            std::thread::sleep(poll);
        }
        progress(&format!("  {} is a reachable manager ({new_id})", m.name));
        out.rejoined.push(m.name.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::spec::Checked;
    use super::super::swarm::plan_swarm;
    use super::super::swarm::tests::setup;
    use super::*;
    use std::sync::Mutex;

    const MANAGER_TOKEN: &str = "SWMTKN-1-manager-0123456789abcdef";
    const WORKER_TOKEN: &str = "SWMTKN-1-worker-fedcba9876543210";

    #[derive(Default)]
    struct Node {
        in_swarm: bool,
        manager: bool,
        id: String,
        labels: BTreeMap<String, String>,
        looks: u32,
    }

    /// A swarm as the docker CLI shows it, enough for the commands the executor sends.
    #[derive(Default)]
    struct Sim {
        nodes: BTreeMap<String, Node>,
        networks: Vec<String>,
        stacks: Vec<String>,
        /// Fail the nth command (1-based); `fail_after`: carry it out first (answer lost).
        fail_at: Option<usize>,
        fail_after: bool,
        commands: Vec<String>,
    }

    struct SimDocker(Mutex<Sim>);

    impl Docker for SimDocker {
        fn run(&self, m: &Machine, args: &[String]) -> Result<String> {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.commands.push(format!("{}: {}", m.name, redacted(args)));
            let fail = s.fail_at == Some(s.commands.len());
            if fail && !s.fail_after {
                bail!("connection reset");
            }
            let r = Self::answer(&mut s, m, args)?;
            if fail {
                bail!("connection reset after the command ran");
            }
            Ok(r)
        }
    }

    impl SimDocker {
        fn answer(s: &mut Sim, m: &Machine, args: &[String]) -> Result<String> {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let is_manager = s
                .nodes
                .get(&m.name)
                .is_some_and(|n| n.in_swarm && n.manager);
            let host_id = |s: &Sim, h: &str| {
                s.nodes
                    .iter()
                    .find(|(name, n)| name.as_str() == h || n.id == h)
                    .map(|(name, _)| name.clone())
            };
            Ok(match a.as_slice() {
                ["info", "--format", "{{.Swarm.NodeID}}"] => {
                    let n = s.nodes.entry(m.name.clone()).or_default();
                    format!("{}\n", n.id)
                }
                ["info", "--format", _] => {
                    let n = s.nodes.entry(m.name.clone()).or_default();
                    if n.in_swarm {
                        format!("active {}\n", n.id)
                    } else {
                        "inactive \n".into()
                    }
                }
                ["swarm", "init", "--advertise-addr", addr, ..] => {
                    if s.nodes.values().any(|n| n.in_swarm) {
                        bail!("a second swarm");
                    }
                    assert_eq!(*addr, m.private_ip.to_string());
                    let n = s.nodes.entry(m.name.clone()).or_default();
                    *n = Node {
                        in_swarm: true,
                        manager: true,
                        id: format!("id-{}", m.name),
                        ..Node::default()
                    };
                    String::new()
                }
                ["swarm", "join-token", "-q", kind] if is_manager => {
                    format!(
                        "{}\n",
                        if *kind == "manager" {
                            MANAGER_TOKEN
                        } else {
                            WORKER_TOKEN
                        }
                    )
                }
                [
                    "swarm",
                    "join",
                    "--token",
                    t,
                    "--advertise-addr",
                    _,
                    _leader,
                ] => {
                    let manager = match *t {
                        MANAGER_TOKEN => true,
                        WORKER_TOKEN => false,
                        _ => bail!("invalid join token"),
                    };
                    let n = s.nodes.entry(m.name.clone()).or_default();
                    if n.in_swarm {
                        bail!("This node is already part of a swarm.");
                    }
                    *n = Node {
                        in_swarm: true,
                        manager,
                        id: format!("id-{}", m.name),
                        ..Node::default()
                    };
                    String::new()
                }
                ["node", "ls", "--format", _] if is_manager => s
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.in_swarm)
                    .map(|(h, n)| {
                        format!(
                            "{} {h} Ready{}\n",
                            n.id,
                            if n.manager { " Reachable" } else { "" }
                        )
                    })
                    .collect(),
                ["node", "inspect", "--format", "{{json .Spec.Labels}}", id] if is_manager => {
                    let h = host_id(s, id).context("no such node")?;
                    serde_json::to_string(&s.nodes[&h].labels)?
                }
                [
                    "node",
                    "inspect",
                    "--format",
                    "{{.ManagerStatus.Reachability}}",
                    host,
                ] if is_manager => {
                    let h = host_id(s, host).context("no such node")?;
                    let n = s.nodes.get_mut(&h).context("no such node")?;
                    // Reachable on the second look: the executor must wait.
                    n.looks += 1;
                    if n.looks > 1 { "reachable" } else { "unknown" }.to_owned()
                }
                ["node", "update", rest @ ..] if is_manager => {
                    let (host, adds) = rest.split_last().context("no node")?;
                    let h = host_id(s, host).context("no such node")?;
                    for pair in adds.chunks(2) {
                        let (k, v) = pair[1].split_once('=').context("label")?;
                        s.nodes
                            .get_mut(&h)
                            .context("node")?
                            .labels
                            .insert(k.into(), v.into());
                    }
                    String::new()
                }
                ["network", "ls", "--format", _] if is_manager => {
                    s.networks.iter().map(|n| format!("{n}\n")).collect()
                }
                ["network", "create", .., name] if is_manager => {
                    if s.networks.iter().any(|n| n == name) {
                        bail!("network with name {name} already exists");
                    }
                    s.networks.push((*name).to_owned());
                    String::new()
                }
                ["service", "ls", ..] if is_manager => String::new(),
                ["stack", "deploy", .., stack] if is_manager => {
                    s.stacks.push((*stack).to_owned());
                    String::new()
                }
                _ => bail!("unexpected command on {}: {}", m.name, redacted(args)),
            })
        }
    }

    fn converge(
        c: &Checked,
        ms: &[Machine],
        sim: &SimDocker,
        lines: &mut Vec<String>,
    ) -> Result<()> {
        super::converge(
            sim,
            ms,
            false,
            |o| plan_swarm(c, ms, o, &|_| true),
            StackSource {
                repo: std::path::Path::new("/repo"),
                set: &c.images.vars(),
            },
            Duration::ZERO,
            &mut |l| lines.push(l.to_owned()),
        )
        .map(|_| ())
    }

    #[test]
    fn machines_become_one_labelled_swarm_and_a_rerun_only_redeploys() {
        let (c, ms) = setup();
        let sim = SimDocker(Mutex::new(Sim::default()));
        let mut lines = Vec::new();
        converge(&c, &ms, &sim, &mut lines).unwrap_or_else(|e| panic!("{e:#}"));
        let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(s.commands.len(), 180);
        assert_eq!(s.nodes.values().filter(|n| n.in_swarm).count(), 33);
        assert_eq!(s.nodes.values().filter(|n| n.manager).count(), 3);
        assert_eq!(
            s.nodes["pd-prod-worker-12"]
                .labels
                .get("pressdock.pool")
                .map(String::as_str),
            Some("wp")
        );
        assert_eq!(
            s.nodes["pd-prod-cache-01"]
                .labels
                .get("pressdock.cache")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(s.networks, ["pd-edge", "pd-sites"]);
        assert_eq!(s.stacks, ["pd", "cache", "database", "monitoring"]);
        // The second manager joined only after the first manager saw it reachable, twice
        // asked; the third after that.
        let order: Vec<&String> = s
            .commands
            .iter()
            .filter(|c| c.contains("swarm join ") || c.contains("Reachability"))
            .take(6)
            .collect();
        assert!(
            order[0].starts_with("pd-prod-manager-02: swarm join --token <token>"),
            "{order:?}"
        );
        assert!(order[1].contains("Reachability}} pd-prod-manager-02"));
        assert!(order[2].contains("Reachability}} pd-prod-manager-02"));
        assert!(order[3].starts_with("pd-prod-manager-03: swarm join"));
        // The stack's compose file is read from the repository.
        assert!(
            s.commands.iter().any(
                |c| c.ends_with("stack deploy --prune --compose-file /repo/stacks/edge.yml pd")
            )
        );
        // Tokens: in no progress line (and the commands the simulator logged are redacted).
        for l in &lines {
            assert!(!l.contains("SWMTKN"), "{l}");
        }
        drop(s);
        // Converged: a re-run only redeploys the stacks (their hashes are not known here).
        let o = observe(&sim, &ms).unwrap_or_else(|e| panic!("{e:#}"));
        let steps = plan_swarm(&c, &ms, &o, &|_| true);
        assert_eq!(steps.len(), 4, "{steps:?}");
    }

    #[test]
    fn a_failure_at_any_command_converges_on_the_rerun() {
        let (c, ms) = setup();
        // A fresh run sends 180 commands (33 looks, init, 2 token reads, 32 looks at a joining
        // machine's dockerd and 32 joins, 4 looks at joining managers, 33 node ids and 33
        // labels, 2 networks, 4 stacks and a look at the services of each); fail each in turn.
        for (fail_at, fail_after) in (1..=180).flat_map(|n| [(n, false), (n, true)]) {
            let sim = SimDocker(Mutex::new(Sim {
                fail_at: Some(fail_at),
                fail_after,
                ..Sim::default()
            }));
            let mut lines = Vec::new();
            let first = converge(&c, &ms, &sim, &mut lines);
            match first {
                Err(e) => assert!(!format!("{e:#}").contains("SWMTKN"), "{e:#}"),
                // A failed look at a booting machine's dockerd is looked at again.
                Ok(()) => {
                    let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
                    assert!(
                        s.commands[fail_at - 1].ends_with("info --format {{.ServerVersion}}"),
                        "fail at {fail_at}: no failure"
                    );
                }
            }
            converge(&c, &ms, &sim, &mut lines)
                .unwrap_or_else(|e| panic!("fail at {fail_at}: re-run: {e:#}"));
            let s = sim.0.lock().unwrap_or_else(|e| e.into_inner());
            assert_eq!(
                s.nodes.values().filter(|n| n.in_swarm).count(),
                33,
                "{fail_at}"
            );
            assert_eq!(
                s.nodes.values().filter(|n| n.manager).count(),
                3,
                "{fail_at}"
            );
            assert!(
                s.nodes
                    .values()
                    .all(|n| n.labels.contains_key("pressdock.role")),
                "{fail_at}"
            );
            assert_eq!(s.networks, ["pd-edge", "pd-sites"], "{fail_at}");
        }
    }
}
