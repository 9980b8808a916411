//! The executor: carries out a complete plan, change by change, in the plan's order, and says
//! what it did for each resource. It makes no choices: ids it needs (the VPC's, a volume's,
//! a droplet's, the load balancer's) are the observed ones or those of what it just made.
//!
//! A failure stops the run with the change that failed; nothing is recorded locally, so the
//! next run observes again (by tags and names), plans what is still missing and converges.
use super::desired::{Desired, Droplet};
use super::plan::{Change, Plan, resolve_firewall};
use super::provider::{NoNodes, NodeOps, Observed, Provider};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

/// DigitalOcean creates at most 10 droplets per request.
pub const DROPLET_BATCH: usize = 10;

/// [`apply_with`] for a cluster that serves nothing yet (no swarm, no platform to drain).
pub async fn apply<P: Provider>(
    provider: &P,
    desired: &Desired,
    observed: &Observed,
    plan: &Plan,
    allow_destroy: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    apply_with(
        provider,
        &NoNodes,
        desired,
        observed,
        plan,
        allow_destroy,
        progress,
    )
    .await
}

/// Carries the plan out; `nodes` drains and removes the nodes that serve before their
/// droplets go ([`Change::Evacuate`]) and forgets them in the platform after.
pub async fn apply_with<P: Provider, N: NodeOps>(
    provider: &P,
    nodes: &N,
    desired: &Desired,
    observed: &Observed,
    plan: &Plan,
    allow_destroy: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    if let Some(why) = plan.refusal(allow_destroy) {
        bail!("refusing to apply: {why}");
    }
    let mut vpc_id = observed.vpc.as_ref().map(|v| v.id.clone());
    let mut volume_ids: BTreeMap<String, String> = observed
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.id.clone()))
        .collect();
    let mut droplet_ids: BTreeMap<String, u64> = observed
        .droplets
        .iter()
        .map(|x| (x.name.clone(), x.id))
        .collect();
    let mut lb_ids: BTreeMap<String, String> = observed
        .load_balancers
        .iter()
        .map(|l| (l.lb.name.clone(), l.id.clone()))
        .collect();
    let total = plan.changes.len();
    let mut done = 0usize;
    let mut i = 0;
    // Create actions of the droplets asked for so far: every batch is sent, then all are
    // waited for together (a droplet takes about a minute; ten batches one after the other
    // would take ten).
    let mut pending: Vec<u64> = Vec::new();
    let mut pending_names: Vec<String> = Vec::new();
    while i < plan.changes.len() {
        let change = &plan.changes[i];
        if !pending.is_empty() && !matches!(change, Change::CreateDroplet(_)) {
            wait_droplets(provider, &mut pending, &mut pending_names, progress).await?;
        }
        // Droplet creations: batches of one role without volume (same request but names).
        if let Change::CreateDroplet(first) = change {
            let mut batch: Vec<&Droplet> = vec![first];
            if first.volume.is_none() {
                while batch.len() < DROPLET_BATCH {
                    match plan.changes.get(i + batch.len()) {
                        Some(Change::CreateDroplet(d))
                            if d.volume.is_none()
                                && d.role == first.role
                                && d.user_data == first.user_data =>
                        {
                            batch.push(d)
                        }
                        _ => break,
                    }
                }
            }
            let vpc = vpc_id
                .as_deref()
                .context("no VPC id (the plan creates none)")?;
            let volume = match &first.volume {
                Some(v) => Some(
                    volume_ids
                        .get(v)
                        .with_context(|| format!("volume {v} of {} does not exist", first.name))?
                        .as_str(),
                ),
                None => None,
            };
            for d in &batch {
                progress(&format!("[{}/{total}] + droplet {} …", done + 1, d.name));
                done += 1;
            }
            let (ids, actions) = provider
                .create_droplets(&batch, vpc, volume)
                .await
                .with_context(|| {
                    let names: Vec<&str> = batch.iter().map(|d| d.name.as_str()).collect();
                    format!("creating droplet(s) {}", names.join(", "))
                })?;
            for (d, id) in batch.iter().zip(ids) {
                progress(&format!("  droplet {} created (id {id})", d.name));
                droplet_ids.insert(d.name.clone(), id);
                pending_names.push(d.name.clone());
            }
            pending.extend(actions);
            i += batch.len();
            continue;
        }
        done += 1;
        progress(&format!("[{done}/{total}] {change} …"));
        let what = change.to_string();
        let result: Result<String> = async {
            Ok(match change {
                Change::CreateDroplet(_) => unreachable!("handled above"),
                Change::CreateTag(t) => {
                    provider.create_tag(t).await?;
                    "created".into()
                }
                Change::CreateVpc(v) => {
                    let id = provider.create_vpc(v).await?;
                    vpc_id = Some(id.clone());
                    format!("created (id {id})")
                }
                Change::CreateVolume(v) => {
                    let id = provider.create_volume(v).await?;
                    volume_ids.insert(v.name.clone(), id.clone());
                    format!("created (id {id})")
                }
                Change::AwaitDroplet { id, .. } => {
                    provider.settle_droplet(*id).await?;
                    "active".into()
                }
                Change::TagDroplet { tag, id, .. } => {
                    provider.tag_droplet(tag, *id).await?;
                    "tagged".into()
                }
                Change::AttachVolume { volume, droplet } => {
                    let vid = volume_ids.get(volume).context("volume id unknown")?;
                    let did = *droplet_ids.get(droplet).context("droplet id unknown")?;
                    provider
                        .attach_volume(vid, did, &desired.vpc.region)
                        .await?;
                    "attached".into()
                }
                Change::CreateLoadBalancer(lb) => {
                    let vpc = vpc_id.as_deref().context("no VPC id")?;
                    let id = provider.create_load_balancer(lb, vpc).await?;
                    lb_ids.insert(lb.name.clone(), id.clone());
                    format!("active (id {id})")
                }
                Change::UpdateLoadBalancer { id, lb, .. } => {
                    let vpc = vpc_id.as_deref().context("no VPC id")?;
                    provider.update_load_balancer(id, lb, vpc).await?;
                    "updated".into()
                }
                Change::CreateFirewall(fw) => {
                    let fw = resolved(fw, &lb_ids)?;
                    let id = provider.create_firewall(&fw).await?;
                    format!("created (id {id})")
                }
                Change::UpdateFirewall { id, fw, .. } => {
                    let fw = resolved(fw, &lb_ids)?;
                    provider.update_firewall(id, &fw).await?;
                    "updated".into()
                }
                Change::DeleteFirewall { id, .. } => {
                    provider.delete_firewall(id).await?;
                    "deleted".into()
                }
                Change::ReplaceDroplet {
                    id,
                    droplet,
                    volume_id,
                    detach,
                } => {
                    let vpc = vpc_id.as_deref().context("no VPC id")?;
                    if let (Some(v), true) = (volume_id, detach) {
                        provider
                            .detach_volume(v, *id, &desired.vpc.region)
                            .await
                            .context("detaching its volume")?;
                    }
                    provider.destroy_droplet(*id).await?;
                    let (ids, actions) = provider
                        .create_droplets(&[droplet], vpc, volume_id.as_deref())
                        .await?;
                    provider.wait(&actions).await?;
                    let new = ids.first().copied().context("no droplet id")?;
                    droplet_ids.insert(droplet.name.clone(), new);
                    format!("replaced (id {id} → {new})")
                }
                Change::Evacuate { name, role, ready } => {
                    nodes
                        .evacuate(name, *role, *ready, progress)
                        .await
                        .with_context(|| format!("evacuating {name}"))?;
                    if *ready {
                        "drained, left the swarm".into()
                    } else {
                        "sites moved".into()
                    }
                }
                Change::ForgetNode { id, .. } => {
                    nodes.forget(id).await?;
                    "removed from the platform".into()
                }
                Change::DestroyDroplet { id, .. } => {
                    provider.destroy_droplet(*id).await?;
                    "destroyed".into()
                }
            })
        }
        .await;
        let outcome = result.with_context(|| format!("applying `{what}`"))?;
        progress(&format!("  {outcome}"));
        i += 1;
    }
    if !pending.is_empty() {
        wait_droplets(provider, &mut pending, &mut pending_names, progress).await?;
    }
    Ok(())
}

async fn wait_droplets<P: Provider>(
    provider: &P,
    pending: &mut Vec<u64>,
    names: &mut Vec<String>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    progress(&format!(
        "  waiting for {} droplet(s) to be created ({} actions)",
        names.len(),
        pending.len()
    ));
    provider
        .wait(pending)
        .await
        .with_context(|| format!("waiting for droplet(s) {}", names.join(", ")))?;
    progress(&format!("  droplet(s) active: {}", names.join(", ")));
    pending.clear();
    names.clear();
    Ok(())
}

fn resolved(
    fw: &super::desired::Firewall,
    lb_ids: &BTreeMap<String, String>,
) -> Result<super::desired::Firewall> {
    let r = resolve_firewall(fw, lb_ids);
    for rule in &r.inbound {
        for lb in &rule.sources.load_balancers {
            if !lb_ids.values().any(|id| id == lb) {
                bail!("load balancer {lb} of firewall {} does not exist", fw.name);
            }
        }
    }
    Ok(r)
}
