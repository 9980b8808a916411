//! What the planner needs from a cloud: what it holds (found by the cluster's tag and the
//! names derived from the spec), and one call per change. DigitalOcean is the real
//! implementation ([`super::digitalocean`]); its tests run it against a server that checks
//! every call against DigitalOcean's published OpenAPI spec.
use super::desired::Droplet;
use super::desired::{Firewall, LoadBalancer, Volume, Vpc};
use anyhow::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVpc {
    pub id: String,
    pub name: String,
    pub region: String,
    pub ip_range: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDroplet {
    pub id: u64,
    pub name: String,
    pub size: String,
    pub region: String,
    pub tags: Vec<String>,
    /// `new`, `active`, `off`, `archive`.
    pub status: String,
    pub volume_ids: Vec<String>,
    pub vpc_id: Option<String>,
    /// Its VPC address (swarm traffic) and its public one (SSH), once it has them.
    pub private_ip: Option<std::net::Ipv4Addr>,
    pub public_ip: Option<std::net::Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVolume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub size_gib: u32,
    pub droplet_ids: Vec<u64>,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLoadBalancer {
    pub id: String,
    pub status: String,
    pub vpc_id: Option<String>,
    /// As the spec would say it (compared with [`Desired`](super::desired::Desired)'s).
    pub lb: LoadBalancer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedFirewall {
    pub id: String,
    /// Load balancers by id in its sources; rules and sources sorted.
    pub fw: Firewall,
}

/// What the provider holds that belongs to the cluster.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Every tag of the account.
    pub tags: Vec<String>,
    pub vpc: Option<ObservedVpc>,
    /// Droplets carrying the cluster's tag or named `<cluster>-…`.
    pub droplets: Vec<ObservedDroplet>,
    /// Volumes carrying the cluster's tag or named `<cluster>-…`, in the cluster's region.
    pub volumes: Vec<ObservedVolume>,
    /// Load balancers named like the spec's.
    pub load_balancers: Vec<ObservedLoadBalancer>,
    /// Firewalls named `<cluster>-…`.
    pub firewalls: Vec<ObservedFirewall>,
    /// SSH keys of the account: fingerprints and ids (as text).
    pub ssh_keys: Vec<String>,
    /// Droplet sizes on offer: slug → regions where it is available.
    pub sizes: std::collections::BTreeMap<String, Vec<String>>,
    /// What the swarm and the platform say about the nodes, when they were asked (a cluster
    /// that serves): the planner drains a node before its droplet goes, and keeps quorum.
    pub nodes: Option<NodeStates>,
}

/// The nodes as the swarm's leader and the platform see them.
#[derive(Clone, Debug, Default)]
pub struct NodeStates {
    /// Every node the swarm lists (a replaced machine may leave a second, down entry of the
    /// same host name).
    pub swarm: Vec<super::swarm::SwarmNode>,
    /// The platform's nodes (`GET /v1/nodes`); empty when the platform was not asked.
    pub platform: Vec<PlatformNode>,
}

/// A node in the platform's inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformNode {
    pub id: String,
    pub name: String,
    pub availability: String,
    /// Slots taken by the sites placed on it: 0 once it is evacuated.
    pub used_slots: i64,
}

impl NodeStates {
    /// The swarm's entry for a host name that is up, else any entry of that name.
    pub fn swarm_node(&self, hostname: &str) -> Option<&super::swarm::SwarmNode> {
        let mut of = self.swarm.iter().filter(|n| n.hostname == hostname);
        let all: Vec<_> = of.by_ref().collect();
        all.iter().find(|n| n.ready).or(all.first()).copied()
    }
    pub fn platform_node(&self, name: &str) -> Option<&PlatformNode> {
        self.platform.iter().find(|n| n.name == name)
    }
}

/// One cloud. Every method is one change (plus the waiting it needs: a created droplet is
/// returned once its create action completed). Called by [`super::apply`].
#[allow(async_fn_in_trait)] // used through generics only, never `dyn`, never across spawns
pub trait Provider {
    /// What exists for the cluster: droplets and volumes by the cluster's tag (or their
    /// derived names, so that one whose tag was removed by hand is not made twice), the VPC,
    /// load balancer and firewalls by their derived names; and what a creation needs to
    /// succeed (the account's SSH keys, the sizes on offer), so that a plan that would fail
    /// half-way is refused before it starts.
    async fn observe(
        &self,
        cluster_tag: &str,
        region: &str,
        vpc: &str,
        lb: &str,
    ) -> Result<Observed>;
    async fn create_tag(&self, name: &str) -> Result<()>;
    /// Returns the VPC's id.
    async fn create_vpc(&self, vpc: &Vpc) -> Result<String>;
    /// Returns the volume's id.
    async fn create_volume(&self, volume: &Volume) -> Result<String>;
    /// Creates droplets that share everything but their name (one request when the cloud
    /// allows it), with `volume` attached at creation when given (then `droplets` has one);
    /// returns their ids, in order, and the actions to wait for ([`Provider::wait`]).
    async fn create_droplets(
        &self,
        droplets: &[&Droplet],
        vpc_id: &str,
        volume: Option<&str>,
    ) -> Result<(Vec<u64>, Vec<u64>)>;
    /// Waits until every action completed (fails on one that errored).
    async fn wait(&self, actions: &[u64]) -> Result<()>;
    /// Waits for the actions of a droplet that are still in progress (its creation).
    async fn settle_droplet(&self, id: u64) -> Result<()>;
    async fn tag_droplet(&self, tag: &str, droplet_id: u64) -> Result<()>;
    /// Waits for the attach action.
    async fn attach_volume(&self, volume_id: &str, droplet_id: u64, region: &str) -> Result<()>;
    /// Waits for the detach action.
    async fn detach_volume(&self, volume_id: &str, droplet_id: u64, region: &str) -> Result<()>;
    /// Waits until it is active; returns its id.
    async fn create_load_balancer(&self, lb: &LoadBalancer, vpc_id: &str) -> Result<String>;
    async fn update_load_balancer(&self, id: &str, lb: &LoadBalancer, vpc_id: &str) -> Result<()>;
    /// `fw`'s load balancers are ids. Returns the firewall's id.
    async fn create_firewall(&self, fw: &Firewall) -> Result<String>;
    async fn update_firewall(&self, id: &str, fw: &Firewall) -> Result<()>;
    async fn delete_firewall(&self, id: &str) -> Result<()>;
    async fn destroy_droplet(&self, id: u64) -> Result<()>;
}

/// What happens to a node of a serving cluster before its droplet is destroyed (or
/// replaced), and to the platform's record after: the other side of a
/// [`super::plan::Change::Evacuate`] and [`super::plan::Change::ForgetNode`]
/// ([`super::evolve`] has the real one: the platform's API and docker on the swarm).
#[allow(async_fn_in_trait)]
pub trait NodeOps {
    /// Drain the node (its sites through the platform, the rest through the swarm), wait
    /// until nothing runs on it, make it leave the swarm (a manager is demoted first).
    /// `in_swarm_ready`: the swarm sees it up (a failed node cannot leave; its old entry is
    /// removed by the swarm steps once its replacement joined).
    async fn evacuate(
        &self,
        name: &str,
        role: super::spec::Role,
        in_swarm_ready: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<()>;
    /// Remove the node from the platform's inventory.
    async fn forget(&self, platform_id: &str) -> Result<()>;
}

/// No swarm and no platform to ask: a plan with an evacuation is refused.
pub struct NoNodes;

impl NodeOps for NoNodes {
    async fn evacuate(
        &self,
        name: &str,
        _: super::spec::Role,
        _: bool,
        _: &mut dyn FnMut(&str),
    ) -> Result<()> {
        anyhow::bail!("{name} serves in the swarm: draining it needs the swarm and the platform")
    }
    async fn forget(&self, id: &str) -> Result<()> {
        anyhow::bail!("forgetting platform node {id} needs the platform")
    }
}
