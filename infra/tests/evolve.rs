//! Evolving a serving cluster (issue 15, item 5) through `apply`: the DigitalOcean provider
//! against the spec-checked test server (`do_fake`: every request and response checked
//! against DigitalOcean's OpenAPI spec), docker against a simulated swarm (the commands the
//! executor sends, answered as Docker 20.10's CLI does), and the platform's node API against
//! a test server that answers as `platform/src/app/nodes.rs` does (bearer token, ids of 10 of
//! a-z2-7, `deny_unknown_fields` bodies, a drained worker's sites moved away over a few looks).
//!
//! What is simulated and what is not: the swarm here is a model (the real swarm steps run on
//! the lab once it is a provider, issue 15 item 4); the DigitalOcean side is the spec-checked
//! server; the order of events (drain, evacuation, leave, destroy, forget) is recorded by the
//! simulated swarm and the platform server, each looking at the DigitalOcean server's state
//! when it is called.
#[allow(dead_code)] // the helpers the cluster tests use
mod do_fake;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use do_fake::{Fake, State_ as DoState};
use infra::cluster::{
    desired::Desired,
    digitalocean::{Client, Token},
    evolve::{Cluster, NoPlatform, Platform},
    provider::PlatformNode,
    spec::Checked,
    swarm::{Machine, StackFile},
    swarm_exec::Docker,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
const STAFF_TOKEN: &str = "pd_staff_token_for_the_infra_tests_0123456789";
const MANAGER_TOKEN: &str = "SWMTKN-1-manager-0123456789abcdef";
const WORKER_TOKEN: &str = "SWMTKN-1-worker-fedcba9876543210";

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, line: String) {
    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

fn droplet_exists(do_state: &Arc<Mutex<DoState>>, name: &str) -> bool {
    !do_state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .droplets_named(name)
        .is_empty()
}

// ---------------------------------------------------------------- the platform's node API

#[derive(Clone, Debug)]
struct PNode {
    id: String,
    name: String,
    availability: String,
    used_slots: i64,
    /// Looks left before a drained node's sites have all moved.
    moving: u32,
}

#[derive(Default)]
struct PlatformState {
    nodes: Vec<PNode>,
    calls: Vec<String>,
}

#[derive(Clone)]
struct PlatformShared {
    state: Arc<Mutex<PlatformState>>,
    log: Log,
    do_state: Arc<Mutex<DoState>>,
}

/// A generated id as the platform makes them: 10 of a-z and 2-7.
fn platform_id(n: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut s = String::from("nd");
    let mut x = n;
    for _ in 0..8 {
        s.push(char::from(A[x % 32]));
        x /= 32;
    }
    s
}

fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail}).to_string(),
    )
        .into_response()
}

fn node_json(n: &PNode) -> Value {
    json!({
        "id": n.id, "name": n.name, "swarm_node_id": null, "role": "worker",
        "availability": n.availability, "slots": 25, "used_slots": n.used_slots,
        "failure_domain": "", "address": "", "labels": {},
    })
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {STAFF_TOKEN}"))
}

async fn p_list(State(s): State<PlatformShared>, h: HeaderMap) -> Response {
    if !authorized(&h) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token>",
        );
    }
    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
    st.calls.push("GET /v1/nodes".into());
    for n in &mut st.nodes {
        if n.availability == "drain" && n.used_slots > 0 {
            if n.moving == 0 {
                n.used_slots = 0;
                push(&s.log, format!("platform: {} evacuated", n.name));
            } else {
                n.moving -= 1;
            }
        }
    }
    axum::Json(st.nodes.iter().map(node_json).collect::<Vec<_>>()).into_response()
}

async fn p_patch(
    State(s): State<PlatformShared>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: String,
) -> Response {
    if !authorized(&h) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token>",
        );
    }
    // The platform's NodeChange: `deny_unknown_fields`, availability one of three.
    let v: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => return problem(StatusCode::BAD_REQUEST, "the body is not JSON"),
    };
    let ok_shape = v
        .as_object()
        .is_some_and(|o| o.keys().all(|k| k == "availability"));
    let a = v["availability"].as_str().unwrap_or("");
    if !ok_shape || !["active", "drain", "down"].contains(&a) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "availability: must be active, drain or down",
        );
    }
    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
    st.calls.push(format!("PATCH /v1/nodes/{id} {a}"));
    let Some(n) = st.nodes.iter_mut().find(|n| n.id == id) else {
        return problem(StatusCode::NOT_FOUND, "no such node");
    };
    n.availability = a.to_owned();
    n.moving = 2;
    push(
        &s.log,
        format!(
            "platform: {} set to {a} ({} slots used)",
            n.name, n.used_slots
        ),
    );
    axum::Json(node_json(n)).into_response()
}

async fn p_delete(
    State(s): State<PlatformShared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    if !authorized(&h) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token>",
        );
    }
    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
    st.calls.push(format!("DELETE /v1/nodes/{id}"));
    let Some(i) = st.nodes.iter().position(|n| n.id == id) else {
        return problem(StatusCode::NOT_FOUND, "no such node");
    };
    if st.nodes[i].used_slots > 0 {
        return problem(StatusCode::CONFLICT, "the node still holds sites");
    }
    let n = st.nodes.remove(i);
    push(
        &s.log,
        format!(
            "platform: {} forgotten (droplet exists: {})",
            n.name,
            droplet_exists(&s.do_state, &n.name)
        ),
    );
    StatusCode::NO_CONTENT.into_response()
}

struct PlatformServer {
    base: String,
    shared: PlatformShared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for PlatformServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl PlatformServer {
    async fn start(log: Log, do_state: Arc<Mutex<DoState>>) -> PlatformServer {
        let shared = PlatformShared {
            state: Arc::new(Mutex::new(PlatformState::default())),
            log,
            do_state,
        };
        let app = axum::Router::new()
            .route("/v1/nodes", axum::routing::get(p_list))
            .route(
                "/v1/nodes/{node}",
                axum::routing::patch(p_patch).delete(p_delete),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let base = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        PlatformServer {
            base,
            shared,
            server,
        }
    }
    fn with<R>(&self, f: impl FnOnce(&mut PlatformState) -> R) -> R {
        f(&mut self.shared.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

// ---------------------------------------------------------------- a simulated swarm

#[derive(Clone, Debug, Default)]
struct Entry {
    id: String,
    host: String,
    ready: bool,
    manager: bool,
    availability: String,
    labels: BTreeMap<String, String>,
    tasks: u32,
    reach_looks: u32,
    /// A manager that joined and was not seen `reachable` yet: no other may join meanwhile.
    pending: bool,
}

#[derive(Default)]
struct Swarm {
    /// Machine key (`name@public ip`) → node id, while it is in the swarm.
    local: BTreeMap<String, String>,
    /// Machines that do not answer (powered off, crashed).
    dead: Vec<String>,
    /// The leader's node list.
    entries: Vec<Entry>,
    networks: Vec<String>,
    /// Service → looks left while its update runs.
    services: BTreeMap<String, u32>,
    deploys: Vec<String>,
    /// Service → the image it was last deployed with (the compose file as the Engine API
    /// deployer reads it, with the variables the executor passed).
    images: BTreeMap<String, String>,
    /// Stack → the variables the executor passed at its last deploy.
    vars: BTreeMap<String, BTreeMap<String, String>>,
    next: u32,
    /// The managers lost quorum: manager commands fail until `swarm init --force-new-cluster`.
    no_leader: bool,
    /// Every command, `host: args` (tokens redacted).
    commands: Vec<String>,
}

struct SimDocker {
    s: Mutex<Swarm>,
    log: Log,
    do_state: Arc<Mutex<DoState>>,
    platform: Arc<Mutex<PlatformState>>,
}

fn key(m: &Machine) -> String {
    format!("{}@{}", m.name, m.public_ip)
}

impl SimDocker {
    fn new(log: Log, do_state: Arc<Mutex<DoState>>, platform: Arc<Mutex<PlatformState>>) -> Self {
        SimDocker {
            s: Mutex::new(Swarm::default()),
            log,
            do_state,
            platform,
        }
    }
    fn with<R>(&self, f: impl FnOnce(&mut Swarm) -> R) -> R {
        f(&mut self.s.lock().unwrap_or_else(|e| e.into_inner()))
    }
    /// A machine fails: it stops answering and the swarm marks its node down.
    fn kill(&self, name: &str) {
        self.with(|s| {
            let keys: Vec<String> = s
                .local
                .keys()
                .filter(|k| k.starts_with(&format!("{name}@")))
                .cloned()
                .collect();
            for k in keys {
                if let Some(id) = s.local.get(&k).cloned()
                    && let Some(e) = s.entries.iter_mut().find(|e| e.id == id)
                {
                    e.ready = false;
                }
                s.dead.push(k);
            }
        });
    }
    fn mutations(&self) -> Vec<String> {
        self.with(|s| {
            s.commands
                .iter()
                .filter(|c| {
                    !c.contains(" info --format")
                        && !c.contains("node ls")
                        && !c.contains("node inspect")
                        && !c.contains("network ls")
                })
                .cloned()
                .collect()
        })
    }
    fn entry_by_host<'a>(s: &'a Swarm, host: &str) -> Vec<&'a Entry> {
        s.entries.iter().filter(|e| e.host == host).collect()
    }
}

impl Docker for SimDocker {
    /// The real deployer's reading of the file (`stack::parse`: every `${…}` must be set)
    /// with the variables the executor passes, the environment's filled in with
    /// placeholders here but never an image: each service's image is recorded. Then the
    /// CLI's `stack deploy`, which the model answers.
    fn deploy_stack(
        &self,
        m: &Machine,
        stack: &str,
        repo: &std::path::Path,
        file: &str,
        vars: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        use infra::cluster::stack as st;
        let text = std::fs::read_to_string(repo.join(file))?;
        let mut all = vars.clone();
        for v in st::variables(&text) {
            if v.starts_with("PD_IMAGE_") {
                continue;
            }
            let placeholder = match v.as_str() {
                "PD_EDGE_NET" => "pd-edge".to_owned(),
                "PD_SITES_NET" => "pd-sites".to_owned(),
                x if x.ends_with("_REPLICAS") || x.ends_with("_QUORUM") => "2".to_owned(),
                x => format!("/srv/{}", x.to_lowercase()),
            };
            all.entry(v).or_insert(placeholder);
        }
        let parsed = st::parse(stack, &text, &all)?;
        self.with(|s| {
            s.vars.insert(stack.to_owned(), vars.clone());
            for (name, spec) in &parsed.services {
                let image = spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                s.images.insert(name.clone(), image);
            }
        });
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

    fn run(&self, m: &Machine, args: &[String]) -> anyhow::Result<String> {
        let mut s = self.s.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(m);
        s.commands.push(format!(
            "{}: {}",
            m.name,
            infra::cluster::swarm_exec::redacted(args)
        ));
        if s.dead.contains(&k) {
            anyhow::bail!(
                "ssh: connect to host {} port 22: Connection timed out",
                m.public_ip
            );
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let my_id = s.local.get(&k).cloned();
        let is_manager = my_id
            .as_ref()
            .is_some_and(|id| s.entries.iter().any(|e| &e.id == id && e.manager));
        let find = |s: &Swarm, x: &str| s.entries.iter().position(|e| e.id == x || e.host == x);
        let local_only = matches!(a.as_slice(), ["info", ..] | ["swarm", "init" | "leave", ..]);
        if s.no_leader && is_manager && !local_only {
            anyhow::bail!(
                "Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader."
            );
        }
        Ok(match a.as_slice() {
            ["info", "--format", "{{.ServerVersion}}"] => "20.10.24\n".into(),
            ["info", "--format", "{{.Swarm.NodeID}}"] => format!("{}\n", my_id.unwrap_or_default()),
            ["info", "--format", _] => match my_id {
                Some(id) => format!("active {id}\n"),
                None => "inactive \n".into(),
            },
            [
                "swarm",
                "init",
                "--force-new-cluster",
                "--advertise-addr",
                addr,
            ] => {
                // A one-manager raft on this node's state: the other managers' entries stay,
                // down, until they are demoted and removed.
                anyhow::ensure!(is_manager, "not a manager");
                anyhow::ensure!(
                    *addr == m.private_ip.to_string(),
                    "advertise address {addr}"
                );
                let me = my_id.clone().unwrap_or_default();
                for e in &mut s.entries {
                    if e.manager && e.id != me {
                        e.ready = false;
                    }
                }
                s.no_leader = false;
                push(&self.log, format!("swarm: {} force-new-cluster", m.name));
                String::new()
            }
            ["swarm", "init", "--advertise-addr", ..] => {
                anyhow::ensure!(s.entries.is_empty(), "a second swarm");
                s.next += 1;
                let id = format!("n{:04}", s.next);
                s.entries.push(Entry {
                    id: id.clone(),
                    host: m.name.clone(),
                    ready: true,
                    manager: true,
                    availability: "active".into(),
                    ..Entry::default()
                });
                s.local.insert(k, id);
                String::new()
            }
            ["swarm", "join-token", "-q", kind] if is_manager => format!(
                "{}\n",
                if *kind == "manager" {
                    MANAGER_TOKEN
                } else {
                    WORKER_TOKEN
                }
            ),
            ["swarm", "join", "--token", t, "--advertise-addr", _, _] => {
                let manager = match *t {
                    MANAGER_TOKEN => true,
                    WORKER_TOKEN => false,
                    _ => anyhow::bail!("invalid join token"),
                };
                anyhow::ensure!(my_id.is_none(), "This node is already part of a swarm.");
                if manager && let Some(p) = s.entries.iter().find(|e| e.pending) {
                    anyhow::bail!(
                        "{} joined as a manager while {} was not reachable yet: quorum at risk",
                        m.name,
                        p.host
                    );
                }
                s.next += 1;
                let id = format!("n{:04}", s.next);
                s.entries.push(Entry {
                    id: id.clone(),
                    host: m.name.clone(),
                    ready: true,
                    manager,
                    availability: "active".into(),
                    tasks: 2,
                    pending: manager,
                    ..Entry::default()
                });
                s.local.insert(k, id);
                // The platform's node sync records a worker that joined.
                if m.name.contains("-worker-") {
                    let mut p = self.platform.lock().unwrap_or_else(|e| e.into_inner());
                    if !p.nodes.iter().any(|n| n.name == m.name) {
                        let id =
                            platform_id(p.nodes.len() + 1000 * usize::from(p.nodes.len() > 30));
                        p.nodes.push(PNode {
                            id,
                            name: m.name.clone(),
                            availability: "active".into(),
                            used_slots: 3,
                            moving: 0,
                        });
                    }
                }
                push(&self.log, format!("swarm: {} joined", m.name));
                String::new()
            }
            ["swarm", "leave", "--force"] => {
                let id = my_id.ok_or_else(|| anyhow::anyhow!("not part of a swarm"))?;
                if let Some(e) = s.entries.iter_mut().find(|e| e.id == id) {
                    e.ready = false;
                }
                s.local.remove(&k);
                push(&self.log, format!("swarm: {} left (--force)", m.name));
                String::new()
            }
            ["swarm", "leave"] => {
                let id = my_id.ok_or_else(|| anyhow::anyhow!("not part of a swarm"))?;
                let e = s.entries.iter_mut().find(|e| e.id == id);
                let e = e.ok_or_else(|| anyhow::anyhow!("no entry"))?;
                anyhow::ensure!(
                    !e.manager,
                    "You are attempting to leave the swarm on a node that is participating as a manager"
                );
                anyhow::ensure!(e.tasks == 0, "leaving with tasks running");
                e.ready = false;
                s.local.remove(&k);
                let slots = self
                    .platform
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .nodes
                    .iter()
                    .find(|n| n.name == m.name)
                    .map(|n| n.used_slots);
                push(
                    &self.log,
                    format!(
                        "swarm: {} left (droplet exists: {}, platform slots used: {slots:?})",
                        m.name,
                        droplet_exists(&self.do_state, &m.name)
                    ),
                );
                String::new()
            }
            ["node", "ls", "--format", _] if is_manager => s
                .entries
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {}{}\n",
                        e.id,
                        e.host,
                        if e.ready { "Ready" } else { "Down" },
                        match (e.manager, e.ready) {
                            (false, _) => "",
                            (true, true) => " Reachable",
                            (true, false) => " Unreachable",
                        }
                    )
                })
                .collect(),
            ["node", "inspect", "--format", "{{json .Spec.Labels}}", id] if is_manager => {
                let i = find(&s, id).ok_or_else(|| anyhow::anyhow!("no such node"))?;
                serde_json::to_string(&s.entries[i].labels)?
            }
            [
                "node",
                "inspect",
                "--format",
                "{{.ManagerStatus.Reachability}}",
                host,
            ] if is_manager => {
                // By id, or by host name (ambiguous when an old entry has the same name: the
                // live one). A down manager is unreachable.
                let by_id = s.entries.iter().position(|e| e.id == *host);
                let live = s.entries.iter().position(|e| e.host == *host && e.ready);
                let i = by_id
                    .or(live)
                    .ok_or_else(|| anyhow::anyhow!("no such node"))?;
                anyhow::ensure!(s.entries[i].manager, "{host} is not a manager");
                if !s.entries[i].ready {
                    "unreachable".to_owned()
                } else {
                    s.entries[i].reach_looks += 1;
                    if s.entries[i].reach_looks > 1 {
                        s.entries[i].pending = false;
                        "reachable"
                    } else {
                        "unknown"
                    }
                    .to_owned()
                }
            }
            ["node", "update", "--availability", av, id] if is_manager => {
                let i = find(&s, id).ok_or_else(|| anyhow::anyhow!("no such node"))?;
                s.entries[i].availability = (*av).to_owned();
                let host = s.entries[i].host.clone();
                push(&self.log, format!("swarm: {host} availability {av}"));
                String::new()
            }
            ["node", "update", rest @ ..] if is_manager => {
                let (id, adds) = rest
                    .split_last()
                    .ok_or_else(|| anyhow::anyhow!("no node"))?;
                let i = find(&s, id).ok_or_else(|| anyhow::anyhow!("no such node {id}"))?;
                for pair in adds.chunks(2) {
                    anyhow::ensure!(pair[0] == "--label-add", "{pair:?}");
                    let (lk, lv) = pair[1]
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("label"))?;
                    s.entries[i].labels.insert(lk.into(), lv.into());
                }
                String::new()
            }
            ["node", "demote", id] if is_manager => {
                let i = find(&s, id).ok_or_else(|| anyhow::anyhow!("no such node"))?;
                anyhow::ensure!(my_id.as_deref() != Some(*id), "a manager demoting itself");
                let up = s.entries.iter().filter(|e| e.manager && e.ready).count();
                s.entries[i].manager = false;
                let host = s.entries[i].host.clone();
                push(
                    &self.log,
                    format!("swarm: {host} demoted ({up} managers up before)"),
                );
                String::new()
            }
            [
                "node",
                "ps",
                "--filter",
                "desired-state=running",
                "--format",
                _,
                id,
            ] if is_manager => {
                let i = find(&s, id).ok_or_else(|| anyhow::anyhow!("no such node"))?;
                let e = &mut s.entries[i];
                let out: String = (0..e.tasks).map(|t| format!("task{t}\n")).collect();
                if e.availability == "drain" {
                    e.tasks = 0;
                }
                out
            }
            ["node", "rm", "--force", id] if is_manager => {
                let i = find(&s, id).ok_or_else(|| anyhow::anyhow!("no such node"))?;
                anyhow::ensure!(!s.entries[i].manager, "a manager must be demoted first");
                let e = s.entries.remove(i);
                push(&self.log, format!("swarm: {} ({}) removed", e.host, e.id));
                String::new()
            }
            ["network", "ls", "--format", _] if is_manager => {
                s.networks.iter().map(|n| format!("{n}\n")).collect()
            }
            ["network", "create", .., name] if is_manager => {
                anyhow::ensure!(!s.networks.iter().any(|n| n == name), "exists");
                s.networks.push((*name).to_owned());
                String::new()
            }
            ["stack", "deploy", "--prune", "--compose-file", _, stack] if is_manager => {
                for svc in ["traefik", "varnish"] {
                    s.services.insert(format!("{stack}_{svc}"), 2);
                }
                s.deploys.push((*stack).to_owned());
                push(&self.log, format!("swarm: stack {stack} deployed"));
                String::new()
            }
            ["service", "ls", "--filter", f, "--format", _] if is_manager => {
                let stack = f.trim_start_matches("label=com.docker.stack.namespace=");
                s.services
                    .keys()
                    .filter(|n| n.starts_with(&format!("{stack}_")))
                    .map(|n| format!("{n}\n"))
                    .collect()
            }
            ["service", "inspect", "--format", _, svc] if is_manager => {
                let left = s
                    .services
                    .get_mut(*svc)
                    .ok_or_else(|| anyhow::anyhow!("no such service"))?;
                if *left > 0 {
                    *left -= 1;
                    "updating\n".into()
                } else {
                    "completed\n".into()
                }
            }
            _ => anyhow::bail!(
                "unexpected command on {}: {}",
                m.name,
                infra::cluster::swarm_exec::redacted(args)
            ),
        })
    }
}

// ---------------------------------------------------------------- the fixture

fn spec_text() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/cluster.toml");
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn parsed(text: &str) -> (Checked, Desired) {
    let c = Checked::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let d = Desired::from_spec(&c);
    (c, d)
}

/// The repository: the stacks' compose files are read from `stacks/`.
fn repo() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn stacks(hash: &str) -> Vec<StackFile> {
    vec![StackFile {
        stack: "pd".into(),
        file: "stacks/edge.yml".into(),
        hash: hash.into(),
    }]
}

struct World {
    fake: Fake,
    client: Client,
    sim: SimDocker,
    platform: PlatformServer,
    api: infra::cluster::evolve::PlatformClient,
    log: Log,
}

async fn world() -> World {
    let fake = Fake::start(TOKEN).await;
    let log: Log = Arc::default();
    let platform = PlatformServer::start(log.clone(), fake.state.clone()).await;
    let sim = SimDocker::new(
        log.clone(),
        fake.state.clone(),
        platform.shared.state.clone(),
    );
    let mut client =
        Client::new(&fake.base, Token::new(TOKEN.into())).unwrap_or_else(|e| panic!("{e:#}"));
    client.poll_interval = Duration::ZERO;
    client.backoff = Duration::from_millis(1);
    client.max_wait = Duration::from_millis(5);
    let api = infra::cluster::evolve::PlatformClient::new(
        &platform.base,
        infra::cluster::evolve::ApiToken::new(STAFF_TOKEN.into()),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    World {
        fake,
        client,
        sim,
        platform,
        api,
        log,
    }
}

fn cluster<'a, A: Platform>(
    w: &'a World,
    platform: &'a A,
    c: &'a Checked,
    d: &'a Desired,
    hash: &str,
) -> Cluster<'a, Client, SimDocker, A> {
    Cluster {
        provider: &w.client,
        docker: &w.sim,
        platform,
        checked: c,
        desired: d,
        repo: repo(),
        stacks: stacks(hash),
        poll: Duration::ZERO,
        evacuation_timeout: Duration::from_secs(30),
        drain_without_platform: false,
    }
}

fn take_log(w: &World) -> Vec<String> {
    std::mem::take(&mut *w.log.lock().unwrap_or_else(|e| e.into_inner()))
}

fn assert_clean(fake: &Fake) {
    let v = fake.violations();
    assert!(
        v.is_empty(),
        "{} spec violations:\n{}",
        v.len(),
        v.join("\n")
    );
}

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Builds the 33 nodes and their swarm; returns nothing but checks it converged.
async fn build(w: &World, c: &Checked, d: &Desired) {
    let cl = cluster(w, &w.api, c, d, H1);
    let mut lines = Vec::new();
    cl.apply(false, &[], false, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("build: {e:#}\n{}", w.fake.violations().join("\n")));
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "after the build:\n{p}");
    take_log(w);
}

/// Workers 20 → 24: four droplets in one request (with cloud-init), joined and labelled
/// (their pool too); the plan shows all of it first; a second apply changes nothing.
#[tokio::test]
async fn workers_20_to_24_are_created_joined_labelled_and_a_second_apply_changes_nothing() {
    let w = world().await;
    let (c, d) = parsed(&spec_text());
    build(&w, &c, &d).await;
    let (c24, d24) = parsed(&spec_text().replacen("count = 20", "count = 24", 1));
    let cl = cluster(&w, &w.api, &c24, &d24, H1);
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    let text = p.to_string();
    for want in [
        "+ droplet pd-prod-worker-21 s-8vcpu-16gb debian-12-x64",
        "+ droplet pd-prod-worker-24 s-8vcpu-16gb debian-12-x64",
        "plan: 4 to create, 0 to change, 0 to destroy",
        "> pd-prod-worker-21 (new droplet) joins as worker",
        "> label pd-prod-worker-24: pressdock.node=pd-prod-worker-24 pressdock.role=worker pressdock.slots=25 pressdock.pool=wp",
        "swarm: 8 steps",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    w.fake.take_calls();
    let raw_before = w.fake.with(|s| s.raw.len());
    cl.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let posts: Vec<String> = w
        .fake
        .take_calls()
        .into_iter()
        .filter(|c| !c.starts_with("GET"))
        .collect();
    assert_eq!(posts, ["POST /v2/droplets"], "one request for the four");
    // Its body carries the cloud-init that installs Docker.
    let body = w.fake.with(|s| s.raw[raw_before..].join("\n"));
    assert!(
        body.contains("pd-prod-worker-24") && body.contains("user_data") && body.contains("docker"),
        "{body}"
    );
    w.sim.with(|s| {
        for n in 21..=24 {
            let host = format!("pd-prod-worker-{n}");
            let e = SimDocker::entry_by_host(s, &host);
            assert_eq!(e.len(), 1, "{host}");
            assert!(e[0].ready && !e[0].manager);
            assert_eq!(
                e[0].labels.get("pressdock.pool").map(String::as_str),
                Some("wp")
            );
            assert_eq!(
                e[0].labels.get("pressdock.slots").map(String::as_str),
                Some("25")
            );
        }
        assert_eq!(s.entries.len(), 37);
    });
    let log = take_log(&w);
    assert_eq!(
        log.iter().filter(|l| l.ends_with("joined")).count(),
        4,
        "{log:?}"
    );
    // A second apply: only looks.
    let before = w.sim.mutations().len();
    let p = cl
        .apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(p.is_empty(), "{p}");
    assert!(w.fake.take_calls().iter().all(|c| c.starts_with("GET ")));
    assert_eq!(
        w.sim.mutations().len(),
        before,
        "{:?}",
        &w.sim.mutations()[before..]
    );
    assert!(
        w.platform
            .with(|p| p.calls.iter().all(|c| c.starts_with("GET")))
    );
    assert_clean(&w.fake);
}

/// Workers 24 → 20: each removed worker is drained through the platform, waited for until its
/// sites moved, drained in the swarm, leaves it, is removed from it; only then is its droplet
/// destroyed, and the platform forgets it. Not without --allow-destroy, not without the
/// platform.
#[tokio::test]
async fn a_removed_worker_is_drained_through_the_platform_before_its_droplet_goes() {
    let w = world().await;
    let (c24, d24) = parsed(&spec_text().replacen("count = 20", "count = 22", 1));
    build(&w, &c24, &d24).await;
    let (c, d) = parsed(&spec_text().replacen("count = 20", "count = 21", 1));
    let cl = cluster(&w, &w.api, &c, &d, H1);
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert_eq!(
        p.infra.to_string(),
        "~ node pd-prod-worker-22: drained (its sites moved by the platform, its tasks by the swarm), leaves the swarm\n\
         - droplet pd-prod-worker-22 (not in the spec)\n\
         - platform node pd-prod-worker-22 (its droplet is gone)\n\
         plan: 0 to create, 1 to change, 2 to destroy"
    );
    assert!(p.swarm.is_empty(), "{p}");
    // Not without --allow-destroy: nothing touched.
    let e = cl.apply(false, &[], false, &mut |_| {}).await.err();
    assert!(e.is_some_and(|e| format!("{e:#}").contains("--allow-destroy")));
    assert!(take_log(&w).is_empty());
    // Not without the platform: its sites would be left to the swarm.
    let none = NoPlatform;
    let e = cluster(&w, &none, &c, &d, H1)
        .apply(true, &[], false, &mut |_| {})
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("moves its sites through the platform"), "{e}");
    assert!(take_log(&w).is_empty());
    assert!(
        w.fake
            .with(|s| !s.droplets_named("pd-prod-worker-22").is_empty())
    );
    let mut lines = Vec::new();
    cl.apply(true, &[], false, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = take_log(&w);
    assert_eq!(
        log,
        [
            "platform: pd-prod-worker-22 set to drain (3 slots used)",
            "platform: pd-prod-worker-22 evacuated",
            "swarm: pd-prod-worker-22 availability drain",
            "swarm: pd-prod-worker-22 left (droplet exists: true, platform slots used: Some(0))",
            "swarm: pd-prod-worker-22 (n0035) removed",
            "platform: pd-prod-worker-22 forgotten (droplet exists: false)",
        ],
        "{lines:#?}"
    );
    assert!(
        w.fake
            .with(|s| s.droplets_named("pd-prod-worker-22").is_empty())
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pd-prod-worker-22: its sites moved")),
        "{lines:?}"
    );
    // Its tasks were waited for before it left (the drain, then a look that found them).
    let cmds = w.sim.with(|s| s.commands.clone());
    let ps = cmds.iter().position(|c| c.contains("node ps"));
    let leave = cmds.iter().position(|c| c.ends_with("swarm leave"));
    assert!(ps.is_some() && ps < leave, "{cmds:?}");
    let cl2 = cluster(&w, &w.api, &c, &d, H1);
    let p = cl2.plan(
        &cl2.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    assert_clean(&w.fake);
}

/// A failed node: its droplet gone (created again, joined, labelled, its old entry removed),
/// or the swarm marks it down (replaced with --replace-failed; a manager's old entry demoted
/// before removal). While a manager is down, taking away another is refused.
#[tokio::test]
async fn a_failed_node_is_replaced_joined_labelled_and_its_old_entry_removed() {
    let w = world().await;
    let (c, d) = parsed(&spec_text());
    build(&w, &c, &d).await;
    let cl = cluster(&w, &w.api, &c, &d, H1);
    // A worker's droplet destroyed by someone (or by DigitalOcean): the node is down.
    let gone = w.fake.with(|s| s.droplets_named("pd-prod-worker-07"));
    w.sim.kill("pd-prod-worker-07");
    w.fake.with(|s| s.remove_droplet(gone[0]));
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    let text = p.to_string();
    // (The platform moves a dead worker's sites by itself; nothing to drain.)
    for want in [
        "+ droplet pd-prod-worker-07 s-8vcpu-16gb",
        "! node pd-prod-worker-07 is down in the swarm and its droplet is gone",
        "> pd-prod-worker-07 (new droplet) joins as worker",
        "> remove down node pd-prod-worker-07 (n0",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    cl.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    w.sim.with(|s| {
        let e = SimDocker::entry_by_host(s, "pd-prod-worker-07");
        assert_eq!(e.len(), 1);
        assert!(e[0].ready);
        assert_eq!(
            e[0].labels.get("pressdock.role").map(String::as_str),
            Some("worker")
        );
    });
    let log = take_log(&w);
    assert!(
        log.iter()
            .any(|l| l.starts_with("swarm: pd-prod-worker-07 (") && l.ends_with("removed")),
        "{log:?}"
    );
    // A worker fails but its droplet is still there: reported; --replace-failed moves its
    // sites through the platform, recreates it, and it joins again.
    w.sim.kill("pd-prod-worker-11");
    let seen = cl.observe().await.unwrap_or_else(|e| panic!("{e:#}"));
    let text = cl.plan(&seen, &[], false).to_string();
    assert!(
        text.contains("! node pd-prod-worker-11 is down in the swarm: `apply --replace pd-prod-worker-11` (or --replace-failed) replaces it")
            && text.contains("plan: 0 to create, 0 to change, 0 to destroy"),
        "{text}"
    );
    let text = cl.plan(&seen, &[], true).to_string();
    for want in [
        "~ node pd-prod-worker-11 (down): its sites moved by the platform, its old swarm entry removed once replaced",
        "± droplet pd-prod-worker-11: destroyed and created again",
        "> pd-prod-worker-11 (new droplet) joins as worker",
        "> remove down node pd-prod-worker-11 (n0",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let mut lines = Vec::new();
    cl.apply(false, &[], true, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = take_log(&w);
    let at = |p: &str| log.iter().position(|l| l.starts_with(p));
    let (drained, moved, joined, removed) = (
        at("platform: pd-prod-worker-11 set to drain (3 slots used)"),
        at("platform: pd-prod-worker-11 evacuated"),
        at("swarm: pd-prod-worker-11 joined"),
        log.iter()
            .position(|l| l.starts_with("swarm: pd-prod-worker-11 (") && l.ends_with("removed")),
    );
    assert!(
        drained.is_some() && drained < moved && moved < joined && joined < removed,
        "{log:#?}"
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("platform: pd-prod-worker-11 set to active (0 slots used)"),
        "{log:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pd-prod-worker-11: active again")),
        "{lines:?}"
    );
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    // A manager fails: the plan says so, and does not replace it unasked.
    w.sim.kill("pd-prod-manager-02");
    let seen = cl.observe().await.unwrap_or_else(|e| panic!("{e:#}"));
    let p = cl.plan(&seen, &[], false);
    assert!(
        p.to_string().contains("! node pd-prod-manager-02 is down in the swarm: `apply --replace pd-prod-manager-02` (or --replace-failed) replaces it"),
        "{p}"
    );
    // Quorum: with manager-02 down, replacing manager-03 is refused.
    let p = cl.plan(&seen, &["pd-prod-manager-03".into()], false);
    let r = p.infra.refusal(true).unwrap_or_default();
    assert!(r.contains("quorum: manager node pd-prod-manager-02 is down; the plan also takes away pd-prod-manager-03"), "{r}");
    let e = cl
        .apply(true, &["pd-prod-manager-03".into()], false, &mut |_| {})
        .await
        .err();
    assert!(e.is_some_and(|e| format!("{e:#}").contains("quorum")));
    // --replace-failed: manager-02 replaced, joins as manager, the old entry demoted, removed.
    let old = w.fake.with(|s| s.droplets_named("pd-prod-manager-02"));
    cl.apply(false, &[], true, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let new = w.fake.with(|s| s.droplets_named("pd-prod-manager-02"));
    assert!(new.len() == 1 && new != old);
    w.sim.with(|s| {
        let e = SimDocker::entry_by_host(s, "pd-prod-manager-02");
        assert_eq!(e.len(), 1);
        assert!(e[0].ready && e[0].manager);
        assert_eq!(s.entries.iter().filter(|e| e.manager && e.ready).count(), 3);
    });
    let log = take_log(&w);
    let joined = log
        .iter()
        .position(|l| l == "swarm: pd-prod-manager-02 joined");
    let demoted = log
        .iter()
        .position(|l| l.starts_with("swarm: pd-prod-manager-02 demoted"));
    assert!(
        joined.is_some() && joined < demoted,
        "the new manager joins before the old entry is demoted: {log:?}"
    );
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    // A database node down, and another one asked for: refused (Galera).
    w.sim.kill("pd-prod-database-02");
    let seen = cl.observe().await.unwrap_or_else(|e| panic!("{e:#}"));
    let r = cl
        .plan(&seen, &["pd-prod-database-03".into()], false)
        .infra
        .refusal(true)
        .unwrap_or_default();
    assert!(
        r.contains("quorum: database node pd-prod-database-02 is down") && r.contains("Galera"),
        "{r}"
    );
    assert_clean(&w.fake);
}

/// Issue 15, item 7: a lost manager quorum recovered. The swarm has no leader; manager-03's
/// backed-up state is restored on it (dockerd started on it: not simulated here) and
/// `cluster recover-managers --restored pd-prod-manager-03 --force-new-cluster` runs
/// `swarm init --force-new-cluster` there, then brings the other managers back one at a
/// time: manager-01 (still holding the old raft) leaves with --force, manager-02 (its
/// state gone) does not need to; each one's old entry demoted and removed, the join with the
/// manager token, and the next only once the restored manager sees it reachable (the
/// simulated swarm refuses a manager join while another is not reachable yet). A re-run
/// changes nothing and never forces a new cluster again; `cluster apply --swarm` then labels
/// the new nodes.
#[tokio::test]
async fn a_lost_manager_quorum_is_recovered_and_the_managers_rejoin_one_at_a_time() {
    use infra::cluster::swarm_exec::{Recovered, recover_managers};
    let w = world().await;
    let (c, d) = parsed(&spec_text());
    build(&w, &c, &d).await;
    let observed = infra::cluster::observe(&w.client, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (machines, missing) = infra::cluster::swarm::machines(&d, &observed.droplets);
    assert!(missing.is_empty(), "{missing:?}");
    let ip = |name: &str| {
        machines
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.private_ip.to_string())
            .unwrap_or_default()
    };
    let old_ids: BTreeMap<String, String> = w.sim.with(|s| {
        s.entries
            .iter()
            .filter(|e| e.manager)
            .map(|e| (e.host.clone(), e.id.clone()))
            .collect()
    });
    assert_eq!(old_ids.len(), 3);
    // Quorum lost; manager-02's swarm state is gone (inactive), manager-01 still has the old.
    w.sim.with(|s| {
        s.no_leader = true;
        s.local.retain(|k, _| !k.starts_with("pd-prod-manager-02@"));
    });
    let before = w.sim.with(|s| s.commands.len());
    let mut lines = Vec::new();
    let r = recover_managers(
        &w.sim,
        &machines,
        "pd-prod-manager-03",
        true,
        Duration::ZERO,
        &mut |l| lines.push(l.to_owned()),
    );
    let r = r.unwrap_or_else(|e| panic!("{e:#}\n{lines:#?}"));
    assert_eq!(
        r,
        Recovered {
            forced: true,
            rejoined: vec!["pd-prod-manager-01".into(), "pd-prod-manager-02".into()],
            already: vec![],
            unreachable: vec![],
        }
    );
    let new_ids: BTreeMap<String, String> = w.sim.with(|s| {
        s.entries
            .iter()
            .filter(|e| e.manager)
            .map(|e| (e.host.clone(), e.id.clone()))
            .collect()
    });
    // Every mutation and every look at a manager's reachability, in order.
    let cmds: Vec<String> = w.sim.with(|s| {
        s.commands[before..]
            .iter()
            .filter(|c| !c.contains(" info --format") && !c.contains("node ls"))
            .cloned()
            .collect()
    });
    let m3 = "pd-prod-manager-03";
    let reach = "node inspect --format {{.ManagerStatus.Reachability}}";
    let want = vec![
        format!("{m3}: swarm join-token -q manager"),
        format!(
            "{m3}: swarm init --force-new-cluster --advertise-addr {}",
            ip(m3)
        ),
        format!("{m3}: swarm join-token -q manager"),
        format!("{m3}: {reach} {}", old_ids["pd-prod-manager-01"]),
        "pd-prod-manager-01: swarm leave --force".to_owned(),
        format!("{m3}: node demote {}", old_ids["pd-prod-manager-01"]),
        format!("{m3}: node rm --force {}", old_ids["pd-prod-manager-01"]),
        format!(
            "pd-prod-manager-01: swarm join --token <token> --advertise-addr {} {}:2377",
            ip("pd-prod-manager-01"),
            ip(m3)
        ),
        format!("{m3}: {reach} {}", new_ids["pd-prod-manager-01"]),
        format!("{m3}: {reach} {}", new_ids["pd-prod-manager-01"]),
        format!("{m3}: node demote {}", old_ids["pd-prod-manager-02"]),
        format!("{m3}: node rm --force {}", old_ids["pd-prod-manager-02"]),
        format!(
            "pd-prod-manager-02: swarm join --token <token> --advertise-addr {} {}:2377",
            ip("pd-prod-manager-02"),
            ip(m3)
        ),
        format!("{m3}: {reach} {}", new_ids["pd-prod-manager-02"]),
        format!("{m3}: {reach} {}", new_ids["pd-prod-manager-02"]),
    ];
    assert_eq!(cmds, want);
    assert_eq!(
        new_ids[m3], old_ids[m3],
        "the restored manager keeps its node"
    );
    w.sim.with(|s| {
        // Three managers, all Ready; one entry per host name; no worker touched.
        assert_eq!(s.entries.iter().filter(|e| e.manager && e.ready).count(), 3);
        assert_eq!(s.entries.iter().filter(|e| e.manager).count(), 3);
        assert_eq!(s.entries.len(), 33);
        assert!(s.entries.iter().all(|e| e.ready));
    });
    for l in &lines {
        assert!(!l.contains("SWMTKN"), "{l}");
    }
    let log = take_log(&w);
    assert_eq!(
        log.iter()
            .filter(|l| !l.contains(" demoted") && !l.contains(") removed"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "swarm: pd-prod-manager-03 force-new-cluster",
            "swarm: pd-prod-manager-01 left (--force)",
            "swarm: pd-prod-manager-01 joined",
            "swarm: pd-prod-manager-02 joined",
        ]
    );
    // A re-run: both are reachable managers; no new cluster is forced.
    let before = w.sim.with(|s| s.commands.len());
    let r = recover_managers(&w.sim, &machines, m3, true, Duration::ZERO, &mut |_| {})
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        r,
        Recovered {
            forced: false,
            rejoined: vec![],
            already: vec!["pd-prod-manager-01".into(), "pd-prod-manager-02".into()],
            unreachable: vec![],
        }
    );
    let again: Vec<String> = w.sim.with(|s| s.commands[before..].to_vec());
    assert!(
        again
            .iter()
            .all(|c| c.contains(" info --format") || c.contains("join-token") || c.contains(reach)),
        "{again:#?}"
    );
    // `cluster apply --swarm` labels the rejoined managers' new nodes; nothing joins or goes.
    let cl = cluster(&w, &w.api, &c, &d, H1);
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    let text = p.to_string();
    assert!(
        text.contains("label pd-prod-manager-01: pressdock.node=pd-prod-manager-01")
            && text.contains("label pd-prod-manager-02: pressdock.node=pd-prod-manager-02")
            && !text.contains("joins")
            && !text.contains("remove"),
        "{text}"
    );
    cl.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    // A manager whose machine does not answer is left for --replace-failed.
    w.sim.with(|s| s.no_leader = true);
    w.sim.kill("pd-prod-manager-02");
    let r = recover_managers(&w.sim, &machines, m3, true, Duration::ZERO, &mut |_| {})
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        r,
        Recovered {
            forced: true,
            rejoined: vec!["pd-prod-manager-01".into()],
            already: vec![],
            unreachable: vec!["pd-prod-manager-02".into()],
        }
    );
    assert_clean(&w.fake);
}

/// A stack's file changed: the plan shows a rolling update, apply deploys it and waits until
/// every service's update completed, and records it so the next apply does nothing. Quorum:
/// managers 3 → 1 or database nodes 3 → 1 in one apply are refused naming the field.
#[tokio::test]
async fn a_stack_is_rolled_and_quorum_breaking_specs_are_refused() {
    let w = world().await;
    let (c, d) = parsed(&spec_text());
    build(&w, &c, &d).await;
    let cl = cluster(&w, &w.api, &c, &d, H2);
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert_eq!(
        p.to_string(),
        "plan: 0 to create, 0 to change, 0 to destroy\n> stack pd from stacks/edge.yml: rolling update (111111111111 → 222222222222)\nswarm: 1 steps"
    );
    let mut lines = Vec::new();
    cl.apply(false, &[], false, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pd_traefik: updating, one task at a time")),
        "{lines:?}"
    );
    w.sim.with(|s| {
        assert_eq!(s.deploys, ["pd", "pd"]);
        // Deployed with the spec's images, not the lab's.
        assert_eq!(s.images["pd_traefik"], c.images.get("traefik"));
        assert_eq!(s.images["pd_traefik-b"], c.images.get("traefik"));
        assert_eq!(s.images["pd_varnish"], c.images.get("varnish"));
        assert!(
            s.services.values().all(|left| *left == 0),
            "every update waited for"
        );
    });
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    // Quorum: the field is named, nothing is touched.
    let before = w.fake.counts();
    let mutations = w.sim.mutations().len();
    for (from, to, field) in [
        (
            "count = 3 # managers",
            "count = 1 # managers",
            "roles.manager.count: the plan takes away 2 manager nodes at once",
        ),
        (
            "count = 3 # database",
            "count = 1 # database",
            "roles.database.count: the plan takes away 2 database nodes at once",
        ),
    ] {
        let text = spec_text();
        assert!(text.contains(from), "{from}");
        let (c1, d1) = parsed(&text.replacen(from, to, 1));
        let e = cluster(&w, &w.api, &c1, &d1, H2)
            .apply(true, &[], false, &mut |_| {})
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains(field), "{e}");
        assert_eq!(w.fake.counts(), before);
        assert_eq!(w.sim.mutations().len(), mutations);
    }
    assert_clean(&w.fake);
}

/// Issue 15, item 4: production runs the spec's images. The stacks' hashes as `cluster
/// apply --swarm` computes them (the compose files and their variables, the spec's images
/// among them): every stack is deployed with `[images]`' references (none of the lab's
/// `local/…`); a new `images.traefik` rolls the two stacks that run Traefik (the edge and
/// the monitoring placeholder) with it, not the cache, and the next plan is empty.
#[tokio::test]
async fn the_stacks_run_the_specs_images_and_a_new_image_rolls_the_stacks_that_use_it() {
    use infra::cluster::swarm::stack_files;
    let w = world().await;
    let (c, d) = parsed(&spec_text());
    build(&w, &c, &d).await;
    let real =
        |c: &Checked| stack_files(repo(), &c.images.vars()).unwrap_or_else(|e| panic!("{e:#}"));
    let cl = Cluster {
        stacks: real(&c),
        ..cluster(&w, &w.api, &c, &d, H1)
    };
    cl.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p = cl.plan(
        &cl.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    let deployed = w.sim.with(|s| s.images.clone());
    for (service, key) in [
        ("pd_traefik", "traefik"),
        ("pd_traefik-b", "traefik"),
        ("pd_varnish", "varnish"),
        ("cache_redis-master", "redis"),
        ("cache_redis-replica", "redis"),
        ("cache_sentinel", "redis"),
        ("monitoring_placeholder", "traefik"),
        ("database_galera-1", "galera"),
        ("database_galera-2", "galera"),
        ("database_galera-3", "galera"),
        ("database_proxysql", "proxysql"),
    ] {
        assert_eq!(
            deployed.get(service).map(String::as_str),
            Some(c.images.get(key)),
            "{service}"
        );
    }
    assert_eq!(deployed.len(), 11, "{deployed:?}");
    assert!(
        deployed.values().all(|i| !i.starts_with("local/")),
        "{deployed:?}"
    );
    // A new Traefik in the spec.
    let new = "registry.example.com/pressdock/traefik:0.1.1";
    let (c2, d2) =
        parsed(&spec_text().replacen("registry.example.com/pressdock/traefik:0.1.0", new, 1));
    let cl2 = Cluster {
        stacks: real(&c2),
        ..cluster(&w, &w.api, &c2, &d2, H1)
    };
    let p = cl2.plan(
        &cl2.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    let text = p.to_string();
    assert!(
        text.contains("> stack pd from stacks/edge.yml: rolling update"),
        "{text}"
    );
    assert!(
        text.contains("> stack monitoring from stacks/monitoring.yml: rolling update"),
        "{text}"
    );
    assert!(!text.contains("stack cache"), "{text}");
    assert!(!text.contains("stack database"), "{text}");
    assert!(text.ends_with("swarm: 2 steps"), "{text}");
    cl2.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let deployed = w.sim.with(|s| s.images.clone());
    for service in ["pd_traefik", "pd_traefik-b", "monitoring_placeholder"] {
        assert_eq!(deployed[service], new, "{service}");
    }
    assert_eq!(deployed["pd_varnish"], c.images.get("varnish"));
    assert_eq!(deployed["cache_sentinel"], c.images.get("redis"));
    let p = cl2.plan(
        &cl2.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    assert_clean(&w.fake);
}

/// Issue 15, item 4: the database tier. `apply --swarm` deploys stacks/database.yml with the
/// spec's Galera and ProxySQL images and the database nodes' addresses (`PD_DB_NODES`, from
/// the droplets, in node order); the database nodes carry `pressdock.database=true` and their
/// Galera number, which pins each `galera-N` service; a second apply changes nothing; a new
/// `images.galera` rolls the database stack alone (the Galera services, not ProxySQL's). That
/// the Engine API deployer then updates the Galera services one after another (the stack's
/// `pressdock.update.serial` group) is not modelled by this simulated CLI: it is tested on a
/// real swarm (infra/tests/stack.rs, infra/tests/lab.rs).
#[tokio::test]
async fn the_database_stack_is_deployed_on_the_database_nodes_and_a_new_galera_rolls_it_alone() {
    use infra::cluster::swarm::stack_files;
    let w = world().await;
    let (c, d) = parsed(&spec_text());
    build(&w, &c, &d).await;
    let real =
        |c: &Checked| stack_files(repo(), &c.images.vars()).unwrap_or_else(|e| panic!("{e:#}"));
    let cl = Cluster {
        stacks: real(&c),
        ..cluster(&w, &w.api, &c, &d, H1)
    };
    cl.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let seen = cl.observe().await.unwrap_or_else(|e| panic!("{e:#}"));
    let (images, vars, labels) = w.sim.with(|s| {
        (
            s.images.clone(),
            s.vars.get("database").cloned().unwrap_or_default(),
            s.entries
                .iter()
                .map(|e| (e.host.clone(), e.labels.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    });
    for n in 1..=3 {
        assert_eq!(
            images[&format!("database_galera-{n}")],
            "registry.example.com/pressdock/galera:0.1.0"
        );
        let host = format!("pd-prod-database-0{n}");
        assert_eq!(
            labels[&host].get("pressdock.galera").map(String::as_str),
            Some(n.to_string().as_str()),
            "{host}"
        );
        assert_eq!(
            labels[&host].get("pressdock.database").map(String::as_str),
            Some("true")
        );
    }
    assert_eq!(images["database_proxysql"], "proxysql/proxysql:2.7.2");
    // The database nodes' addresses, as the provider gave them, in node order.
    let want: Vec<String> = (1..=3)
        .map(|n| {
            seen.all_machines
                .iter()
                .find(|m| m.name == format!("pd-prod-database-0{n}"))
                .map(|m| m.private_ip.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(want.iter().all(|a| !a.is_empty()), "{want:?}");
    assert_eq!(vars.get("PD_DB_NODES"), Some(&want.join(" ")));
    // Nothing else carries a Galera number.
    assert_eq!(
        labels
            .values()
            .filter(|l| l.contains_key("pressdock.galera"))
            .count(),
        3
    );
    let p = cl.plan(&seen, &[], false);
    assert!(p.is_empty(), "{p}");
    // A new Galera image.
    let new = "registry.example.com/pressdock/galera:0.1.1";
    let (c2, d2) =
        parsed(&spec_text().replacen("registry.example.com/pressdock/galera:0.1.0", new, 1));
    let cl2 = Cluster {
        stacks: real(&c2),
        ..cluster(&w, &w.api, &c2, &d2, H1)
    };
    let p = cl2.plan(
        &cl2.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    let text = p.to_string();
    assert!(
        text.contains("> stack database from stacks/database.yml: rolling update"),
        "{text}"
    );
    assert!(text.ends_with("swarm: 1 steps"), "{text}");
    let deploys = w.sim.with(|s| s.deploys.len());
    cl2.apply(false, &[], false, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (images, deploys_after) = w.sim.with(|s| (s.images.clone(), s.deploys.clone()));
    assert_eq!(deploys_after[deploys..], ["database"]);
    for n in 1..=3 {
        assert_eq!(images[&format!("database_galera-{n}")], new);
    }
    assert_eq!(images["database_proxysql"], "proxysql/proxysql:2.7.2");
    let p = cl2.plan(
        &cl2.observe().await.unwrap_or_else(|e| panic!("{e:#}")),
        &[],
        false,
    );
    assert!(p.is_empty(), "{p}");
    assert_clean(&w.fake);
}

#[allow(dead_code)]
fn _unused(_: PlatformNode) {}
