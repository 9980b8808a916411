//! Cluster as code (issue 15): the production cluster declared in `configs/cluster.toml`,
//! planned against what the provider holds and applied.
//!
//! - [`spec`]: the file, parsed and checked (errors name the field).
//! - [`images`]: the images the stacks and the platform run: the spec's `[images]` in
//!   production, the lab's own `local/*:dev` builds in the lab.
//! - [`desired`]: every resource the spec wants, named and tagged from the spec's `name`.
//! - [`provider`]: what a cloud must answer and do; [`digitalocean`] is the real one.
//! - [`plan`]: the difference, found by tags and names (no state file), pure.
//! - [`apply`]: carries a plan out, resource by resource; a failed run is re-run.
//! - [`evolve`]: one `apply` for a cluster that serves: nodes drained through the platform
//!   before their droplets go, quorum kept, new nodes joined and labelled, stacks rolled.
//! - [`cloud_init`]: what a node runs at first boot (Docker; GlusterFS on storage nodes).
//! - [`backup`]: Galera (mariabackup) and the swarm's state to S3, and their restore.
//! - [`cost`]: the spec's monthly cost from the provider's prices, per site.
//! - [`stack`]: `docker stack deploy` through the Engine API (bollard), for the lab and production.
//! - [`platform_config`]: the platform's `pressdock.toml` for this cluster (the renderer the
//!   lab's goes through, [`crate::platform_config`]), every credential a file reference.
//! - [`storage`]: the Gluster volume `sites` on the storage nodes and its mounts on workers and
//!   managers (over SSH), planned like the swarm steps.
//! - [`swarm`]: the steps from machines to a labelled swarm with its networks and stacks;
//!   [`swarm_exec`] observes the machines and runs the steps (docker over SSH).
pub mod apply;
pub mod backup;
pub mod cloud_init;
pub mod cost;
pub mod desired;
pub mod digitalocean;
pub mod evolve;
pub mod images;
pub mod plan;
pub mod platform_config;
pub mod provider;
pub mod spec;
pub mod stack;
pub mod storage;
pub mod swarm;
pub mod swarm_exec;

use anyhow::Result;
use desired::Desired;
use provider::{Observed, Provider};

/// Observes what the provider holds for the cluster of `d`.
pub async fn observe<P: Provider>(p: &P, d: &Desired) -> Result<Observed> {
    p.observe(
        &d.cluster_tag,
        &d.vpc.region,
        &d.vpc.name,
        &d.load_balancer.name,
    )
    .await
}
