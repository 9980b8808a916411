//! Evolving a cluster that serves (issue 15, item 5): one `apply` that changes the machines
//! and the swarm together, in the order that keeps sites up and quorum kept.
//!
//! 1. Observe: the provider (droplets, by tags), the swarm (every machine's dockerd and the
//!    leader's node list; a machine that does not answer is marked unreachable, not fatal)
//!    and the platform (`GET /v1/nodes`).
//! 2. Plan ([`super::plan::plan_with`]): the provider's changes, with a node that serves
//!    evacuated before its droplet goes ([`Change::Evacuate`]), its platform record forgotten
//!    after ([`Change::ForgetNode`]), and quorum checked against what is down already; then
//!    the swarm steps ([`super::swarm::plan_swarm_with`]) as they will be once the droplets
//!    exist: new nodes join and are labelled, old entries removed, changed stacks rolled.
//! 3. Apply the provider's changes ([`super::apply::apply_with`]), evacuating through
//!    [`Evacuator`]: a worker drained through the platform (`PATCH /v1/nodes/{id}`
//!    `{"availability":"drain"}`, which moves its sites), waited until it holds none
//!    (`used_slots` 0), then drained in the swarm, demoted if a manager, `swarm leave`, `node
//!    rm`; only then the droplet is destroyed, and the platform's record removed
//!    (`DELETE /v1/nodes/{id}`).
//! 4. Observe again and run the swarm steps ([`super::swarm_exec::execute`]): joins (a
//!    booting droplet's dockerd is waited for; managers one at a time), labels, removal of
//!    the entries of failed or removed nodes (a manager demoted first), networks, and each
//!    changed stack deployed and waited for until every service's rolling update completed.
//!
//! A second apply plans nothing: no provider change, no swarm step (a stack is deployed
//! again only when its file or variables changed: its hash is a label on the managers).
use super::apply::apply_with;
use super::desired::Desired;
use super::plan::{Change, Plan, plan_with};
use super::provider::{NodeOps, NodeStates, Observed, PlatformNode, Provider};
use super::spec::{Checked, Role};
use super::swarm::{self, Machine, ObservedSwarm, StackFile, Step};
use super::swarm_exec::{self, Docker};
use anyhow::{Context, Result, bail};
use std::fmt;
use std::time::Duration;

/// The platform's API as the cluster tool needs it (staff token).
#[allow(async_fn_in_trait)]
pub trait Platform {
    async fn nodes(&self) -> Result<Vec<PlatformNode>>;
    /// `PATCH /v1/nodes/{id}` `{"availability": …}`.
    async fn set_availability(&self, id: &str, availability: &str) -> Result<()>;
    /// `DELETE /v1/nodes/{id}`.
    async fn forget(&self, id: &str) -> Result<()>;
    /// There is no platform to ask (its sites cannot be moved first).
    fn is_none(&self) -> bool {
        false
    }
}

/// A staff API token; never printed.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(s: String) -> ApiToken {
        ApiToken(s)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The platform's HTTP API (`PRESSDOCK_API`, `PRESSDOCK_API_TOKEN`).
#[derive(Debug)]
pub struct PlatformClient {
    http: reqwest::Client,
    base: String,
    token: ApiToken,
}

impl PlatformClient {
    pub fn new(base: &str, token: ApiToken) -> Result<PlatformClient> {
        Ok(PlatformClient {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        match self.send_status(method.clone(), path, body).await? {
            Ok(v) => Ok(v),
            Err((status, detail)) => {
                bail!("the platform answered {method} {path} with {status}: {detail}")
            }
        }
    }

    /// The answer's JSON, or its error status and problem `detail`.
    async fn send_status(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<std::result::Result<serde_json::Value, (reqwest::StatusCode, String)>> {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token.0);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            // problem+json: its `detail` (never the request, which holds nothing secret
            // anyway but the header).
            let detail = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Ok(Err((status, detail)));
        }
        Ok(Ok(
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
        ))
    }
}

impl Platform for PlatformClient {
    async fn nodes(&self) -> Result<Vec<PlatformNode>> {
        let v = self.send(reqwest::Method::GET, "/v1/nodes", None).await?;
        let list = v.as_array().context("GET /v1/nodes: not a list")?;
        Ok(list
            .iter()
            .map(|n| PlatformNode {
                id: n["id"].as_str().unwrap_or_default().to_owned(),
                name: n["name"].as_str().unwrap_or_default().to_owned(),
                availability: n["availability"].as_str().unwrap_or_default().to_owned(),
                used_slots: n["used_slots"].as_i64().unwrap_or(0),
            })
            .collect())
    }
    async fn set_availability(&self, id: &str, availability: &str) -> Result<()> {
        self.send(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(serde_json::json!({ "availability": availability })),
        )
        .await
        .map(|_| ())
    }
    /// `DELETE /v1/nodes/{id}`. The platform refuses (409) a node that is still a live
    /// swarm node in its records, and its node sync (every placement pass, 5 s by default)
    /// marks a node that left the swarm `down` only at its next pass: right after `node rm`
    /// the delete is retried until that pass ran (at most [`FORGET_WAIT`]). Already gone
    /// (404) is success, so a re-run after a crash converges.
    async fn forget(&self, id: &str) -> Result<()> {
        let path = format!("/v1/nodes/{id}");
        let started = std::time::Instant::now();
        loop {
            match self
                .send_status(reqwest::Method::DELETE, &path, None)
                .await?
            {
                Ok(_) => return Ok(()),
                Err((reqwest::StatusCode::NOT_FOUND, _)) => return Ok(()),
                Err((reqwest::StatusCode::CONFLICT, detail))
                    if detail.contains("live swarm node") && started.elapsed() < FORGET_WAIT =>
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((status, detail)) => {
                    bail!("the platform answered DELETE {path} with {status}: {detail}")
                }
            }
        }
    }
}

/// How long [`PlatformClient`]'s `forget` waits for the platform's node sync to see that a
/// node left the swarm.
pub const FORGET_WAIT: Duration = Duration::from_secs(60);

/// No platform (a cluster that serves no sites yet): nodes are drained in the swarm only.
pub struct NoPlatform;

impl Platform for NoPlatform {
    async fn nodes(&self) -> Result<Vec<PlatformNode>> {
        Ok(Vec::new())
    }
    async fn set_availability(&self, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn forget(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn is_none(&self) -> bool {
        true
    }
}

/// The platform when `PRESSDOCK_API` is set, else none.
pub enum AnyPlatform {
    Api(PlatformClient),
    None,
}

impl Platform for AnyPlatform {
    async fn nodes(&self) -> Result<Vec<PlatformNode>> {
        match self {
            AnyPlatform::Api(c) => c.nodes().await,
            AnyPlatform::None => NoPlatform.nodes().await,
        }
    }
    async fn set_availability(&self, id: &str, a: &str) -> Result<()> {
        match self {
            AnyPlatform::Api(c) => c.set_availability(id, a).await,
            AnyPlatform::None => bail!(
                "draining a worker moves its sites through the platform: set PRESSDOCK_API and PRESSDOCK_API_TOKEN"
            ),
        }
    }
    async fn forget(&self, id: &str) -> Result<()> {
        match self {
            AnyPlatform::Api(c) => c.forget(id).await,
            AnyPlatform::None => NoPlatform.forget(id).await,
        }
    }
    fn is_none(&self) -> bool {
        matches!(self, AnyPlatform::None)
    }
}

/// The cluster as one `apply` sees it: the provider, docker on the machines, the platform.
pub struct Cluster<'a, P, D, A> {
    pub provider: &'a P,
    pub docker: &'a D,
    pub platform: &'a A,
    pub checked: &'a Checked,
    pub desired: &'a Desired,
    pub repo: &'a std::path::Path,
    pub stacks: Vec<StackFile>,
    /// Between two looks at something that takes time (an evacuation, a rollout).
    pub poll: Duration,
    /// How long a worker's evacuation may take before the apply stops.
    pub evacuation_timeout: Duration,
    /// Drain a worker in the swarm without the platform (a cluster that serves no sites).
    pub drain_without_platform: bool,
}

/// Everything observed at once.
pub struct Seen {
    pub observed: Observed,
    pub swarm: ObservedSwarm,
    /// Every droplet of the cluster with its addresses (those the spec no longer has too:
    /// they must be drained and leave).
    pub all_machines: Vec<Machine>,
}

/// The plan of an `apply`: the provider's changes, then the swarm's steps.
pub struct FullPlan {
    pub infra: Plan,
    pub swarm: Vec<Step>,
}

impl FullPlan {
    pub fn is_empty(&self) -> bool {
        self.infra.is_empty() && self.swarm.is_empty()
    }
}

impl fmt::Display for FullPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.infra)?;
        for s in &self.swarm {
            writeln!(f, "> {s}")?;
        }
        write!(f, "swarm: {} steps", self.swarm.len())
    }
}

fn role_of(d: &Desired, name: &str) -> Option<Role> {
    let rest = name.strip_prefix(&format!("{}-", d.cluster_tag))?;
    Role::parse(rest.rsplit_once('-')?.0)
}

impl<P: Provider, D: Docker, A: Platform> Cluster<'_, P, D, A> {
    pub async fn observe(&self) -> Result<Seen> {
        let mut observed = super::observe(self.provider, self.desired).await?;
        let all_machines: Vec<Machine> = observed
            .droplets
            .iter()
            .filter_map(|x| {
                Some(Machine {
                    name: x.name.clone(),
                    role: role_of(self.desired, &x.name)?,
                    private_ip: x.private_ip?,
                    public_ip: x.public_ip?,
                })
            })
            .collect();
        let swarm = swarm_exec::observe_with(self.docker, &all_machines, true)?;
        observed.nodes = Some(NodeStates {
            swarm: swarm.swarm.nodes.clone(),
            platform: self
                .platform
                .nodes()
                .await
                .context("the platform's nodes")?,
        });
        Ok(Seen {
            observed,
            swarm,
            all_machines,
        })
    }

    /// The plan: provider changes, then the swarm steps as they will be once the droplets
    /// exist (new ones shown joining from "new droplet").
    pub fn plan(&self, seen: &Seen, replace: &[String], replace_failed: bool) -> FullPlan {
        let infra = plan_with(self.desired, &seen.observed, replace, replace_failed);
        let mut sw = seen.swarm.clone();
        let mut machines = Vec::new();
        for want in &self.desired.droplets {
            let replaced = infra.changes.iter().any(
                |c| matches!(c, Change::ReplaceDroplet { droplet, .. } if droplet.name == want.name),
            );
            let have = seen.all_machines.iter().find(|m| m.name == want.name);
            if replaced || have.is_none() {
                sw.local.remove(&want.name);
            }
            machines.push(Machine {
                name: want.name.clone(),
                role: want.role,
                private_ip: match have {
                    Some(m) if !replaced => m.private_ip,
                    _ => std::net::Ipv4Addr::UNSPECIFIED,
                },
                public_ip: have.map_or(std::net::Ipv4Addr::UNSPECIFIED, |m| m.public_ip),
            });
        }
        // Nodes that will have left by then.
        for c in &infra.changes {
            if let Change::Evacuate {
                name, ready: true, ..
            } = c
            {
                sw.swarm.nodes.retain(|n| &n.hostname != name || !n.ready);
            }
        }
        let swarm = swarm::plan_swarm_with(self.checked, &machines, &sw, &|_| true, &self.stacks);
        FullPlan { infra, swarm }
    }

    /// Observe, plan, apply the provider's changes (evacuating first), observe again and run
    /// the swarm steps. Returns the plan that was carried out.
    pub async fn apply(
        &self,
        allow_destroy: bool,
        replace: &[String],
        replace_failed: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<FullPlan> {
        let seen = self.observe().await?;
        let plan = self.plan(&seen, replace, replace_failed);
        if let Some(why) = plan.infra.refusal(allow_destroy) {
            bail!("refusing to apply: {why}");
        }
        let evacuator = Evacuator {
            cluster: self,
            machines: &seen.all_machines,
            swarm: &seen.swarm,
        };
        apply_with(
            self.provider,
            &evacuator,
            self.desired,
            &seen.observed,
            &plan.infra,
            allow_destroy,
            progress,
        )
        .await?;
        let fresh: Vec<String> = plan
            .infra
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateDroplet(x) | Change::ReplaceDroplet { droplet: x, .. } => {
                    Some(x.name.clone())
                }
                _ => None,
            })
            .collect();
        self.converge_swarm(&fresh, progress).await?;
        // Workers this apply drained to replace them: placement targets again, now that the
        // new machine joined with its labels. (A drain set by staff is never lifted: only the
        // nodes drained here.)
        for c in &plan.infra.changes {
            if let Change::Evacuate {
                name,
                role: Role::Worker,
                ..
            } = c
                && self.desired.droplets.iter().any(|x| &x.name == name)
                && !self.platform.is_none()
            {
                let node = self
                    .platform
                    .nodes()
                    .await?
                    .into_iter()
                    .find(|n| &n.name == name);
                if let Some(n) = node {
                    match self.platform.set_availability(&n.id, "active").await {
                        Ok(()) => progress(&format!("  {name}: active again in the platform")),
                        Err(e) => progress(&format!(
                            "  {name}: still drained in the platform ({e:#}); PATCH /v1/nodes/{} availability=active once it is linked",
                            n.id
                        )),
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Observe the machines and run the swarm steps still missing. `fresh`: droplets just
    /// made, whose dockerd is waited for (cloud-init installs it) before the look.
    pub async fn converge_swarm(
        &self,
        fresh: &[String],
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let observed = super::observe(self.provider, self.desired).await?;
        let (machines, missing) = swarm::machines(self.desired, &observed.droplets);
        if !missing.is_empty() {
            bail!(
                "droplet(s) without addresses: {} (run apply again)",
                missing.join(", ")
            );
        }
        for m in machines.iter().filter(|m| fresh.contains(&m.name)) {
            let mut n = 0;
            while self
                .docker
                .run(
                    m,
                    &[
                        "info".into(),
                        "--format".into(),
                        "{{.ServerVersion}}".into(),
                    ],
                )
                .is_err()
            {
                n += 1;
                if n > swarm_exec::MAX_LOOKS {
                    bail!("{}: dockerd does not answer (cloud-init?)", m.name);
                }
                if n == 1 {
                    progress(&format!("  waiting for {}'s dockerd", m.name));
                }
                tokio::time::sleep(self.poll).await;
            }
        }
        swarm_exec::converge(
            self.docker,
            &machines,
            true,
            |seen| swarm::plan_swarm_with(self.checked, &machines, seen, &|_| true, &self.stacks),
            swarm_exec::StackSource {
                repo: self.repo,
                // The spec's images, whatever the environment says.
                set: &self.checked.images.vars(),
            },
            self.poll,
            progress,
        )
        .map(|_| ())
    }
}

/// The real [`NodeOps`]: the platform moves a worker's sites, docker takes the node out.
pub struct Evacuator<'a, 'c, P, D, A> {
    cluster: &'a Cluster<'c, P, D, A>,
    machines: &'a [Machine],
    swarm: &'a ObservedSwarm,
}

impl<P: Provider, D: Docker, A: Platform> NodeOps for Evacuator<'_, '_, P, D, A> {
    async fn evacuate(
        &self,
        name: &str,
        role: Role,
        ready: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let c = self.cluster;
        evacuate_node(
            &Evacuation {
                docker: c.docker,
                platform: c.platform,
                machines: self.machines,
                swarm: self.swarm,
                poll: c.poll,
                timeout: c.evacuation_timeout,
                drain_without_platform: c.drain_without_platform,
            },
            name,
            role,
            ready,
            progress,
        )
        .await
    }

    async fn forget(&self, platform_id: &str) -> Result<()> {
        self.cluster.platform.forget(platform_id).await
    }
}

/// What taking a node out of a serving cluster needs: docker on the machines, the platform,
/// the machines and the swarm as observed.
pub struct Evacuation<'a, D, A> {
    pub docker: &'a D,
    pub platform: &'a A,
    pub machines: &'a [Machine],
    pub swarm: &'a ObservedSwarm,
    pub poll: Duration,
    pub timeout: Duration,
    pub drain_without_platform: bool,
}

/// Takes node `name` out, in the order that keeps its sites up: a worker is drained through
/// the platform (`PATCH /v1/nodes/{id}` `{"availability":"drain"}`: the platform's placement
/// moves its sites, start-first) and waited for until it holds none (`used_slots` 0); then
/// (`ready`: it is in the swarm) drained in the swarm, demoted if a manager, it leaves and its
/// entry is removed ([`swarm_exec::drain_and_leave`], run by another manager). The caller
/// then destroys the machine and has the platform forget it. Used by `cluster apply --swarm`
/// and by the lab when it removes a worker.
pub async fn evacuate_node<D: Docker, A: Platform>(
    e: &Evacuation<'_, D, A>,
    name: &str,
    role: Role,
    ready: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    if role == Role::Worker && e.platform.is_none() && !e.drain_without_platform {
        bail!(
            "draining worker {name} moves its sites through the platform: set PRESSDOCK_API and PRESSDOCK_API_TOKEN (or --no-platform for a cluster that serves no sites)"
        );
    }
    if role == Role::Worker {
        let node = e
            .platform
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.name == name);
        if let Some(node) = node {
            if node.availability != "drain" {
                e.platform.set_availability(&node.id, "drain").await?;
                progress(&format!(
                    "  {name}: drained in the platform ({} slot(s) used)",
                    node.used_slots
                ));
            }
            let started = std::time::Instant::now();
            loop {
                let used = e
                    .platform
                    .nodes()
                    .await?
                    .into_iter()
                    .find(|n| n.name == name)
                    .map_or(0, |n| n.used_slots);
                if used == 0 {
                    progress(&format!("  {name}: its sites moved"));
                    break;
                }
                if started.elapsed() > e.timeout {
                    bail!(
                        "{name} still holds {used} slot(s) after {} s: see the platform's moves (GET /v1/operations), then run apply again",
                        e.timeout.as_secs()
                    );
                }
                tokio::time::sleep(e.poll).await;
            }
        }
    }
    if !ready {
        return Ok(());
    }
    let m = e
        .machines
        .iter()
        .find(|m| m.name == name)
        .with_context(|| format!("{name} has no addresses"))?;
    // Another manager runs the swarm-wide commands (never the node that leaves).
    let leader = e
        .machines
        .iter()
        .find(|x| {
            x.role == Role::Manager
                && x.name != name
                && e.swarm
                    .local
                    .get(&x.name)
                    .is_some_and(|l| l.in_swarm && !l.unreachable)
        })
        .context("no other manager in the swarm to take the node out")?;
    swarm_exec::drain_and_leave(e.docker, leader, m, e.poll, progress)
}
