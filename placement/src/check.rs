//! Applying and checking plans: what the executor and the tests use to see a plan's
//! effect without running it. [`check_moves`] is the safety definition the planner is
//! tested against.

use crate::model::{
    Availability, Cluster, Move, NodeId, NodeUtilisation, Placement, SiteId, Utilisation,
};
use crate::state::balance_of;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Why a list of moves is unsafe or does not apply to a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum MoveError {
    UnknownSite {
        index: usize,
        site: SiteId,
    },
    UnknownNode {
        index: usize,
        node: NodeId,
    },
    /// The site is not on `from` when its move starts.
    NotOnSource {
        index: usize,
        site: SiteId,
    },
    /// The site moves twice in one wave.
    TwiceInWave {
        index: usize,
        site: SiteId,
    },
    /// Waves must not decrease along the list.
    WaveOrder {
        index: usize,
    },
    /// The destination is not active.
    DestinationUnavailable {
        index: usize,
        node: NodeId,
    },
    /// The destination lacks one of the site's required labels.
    LabelMismatch {
        index: usize,
        node: NodeId,
    },
    /// With the wave's moves running start-first, the destination would exceed capacity.
    OverCapacity {
        index: usize,
        node: NodeId,
        slots: u64,
        capacity: u32,
    },
    /// The site is pinned.
    Pinned {
        index: usize,
        site: SiteId,
    },
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSite { index, site } => write!(f, "move {index}: unknown site {site}"),
            Self::UnknownNode { index, node } => write!(f, "move {index}: unknown node {node}"),
            Self::NotOnSource { index, site } => {
                write!(f, "move {index}: site {site} is not on the source node")
            }
            Self::TwiceInWave { index, site } => {
                write!(f, "move {index}: site {site} moves twice in one wave")
            }
            Self::WaveOrder { index } => write!(f, "move {index}: wave number decreases"),
            Self::DestinationUnavailable { index, node } => {
                write!(f, "move {index}: node {node} is not active")
            }
            Self::LabelMismatch { index, node } => {
                write!(f, "move {index}: node {node} lacks a required label")
            }
            Self::OverCapacity {
                index,
                node,
                slots,
                capacity,
            } => write!(
                f,
                "move {index}: node {node} would hold {slots} of {capacity} slots"
            ),
            Self::Pinned { index, site } => write!(f, "move {index}: site {site} is pinned"),
        }
    }
}

impl std::error::Error for MoveError {}

/// Checks that `moves`, run wave by wave with `start-first` (a moving site holds a slot
/// on both nodes until its wave ends), never puts a node over capacity, only targets
/// active nodes carrying the site's labels, and never moves a pinned site.
pub fn check_moves(cluster: &Cluster, moves: &[Move]) -> Result<(), MoveError> {
    let nodes: HashMap<&NodeId, usize> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (&n.id, i))
        .collect();
    let sites: HashMap<&SiteId, usize> = cluster
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.id, i))
        .collect();
    let mut location: Vec<Option<NodeId>> = cluster.sites.iter().map(|s| s.node.clone()).collect();
    let mut load = vec![0u64; cluster.nodes.len()];
    for site in &cluster.sites {
        if let Some(&n) = site.node.as_ref().and_then(|id| nodes.get(id)) {
            load[n] += u64::from(site.slots);
        }
    }
    let mut start = 0;
    while start < moves.len() {
        let wave = moves[start].wave;
        let end = moves[start..]
            .iter()
            .position(|m| m.wave != wave)
            .map_or(moves.len(), |p| start + p);
        if end < moves.len() && moves[end].wave < wave {
            return Err(MoveError::WaveOrder { index: end });
        }
        let mut incoming = vec![0u64; cluster.nodes.len()];
        let mut in_wave = std::collections::HashSet::new();
        for (index, m) in moves.iter().enumerate().take(end).skip(start) {
            let &s = sites.get(&m.site).ok_or_else(|| MoveError::UnknownSite {
                index,
                site: m.site.clone(),
            })?;
            let &to = nodes.get(&m.to).ok_or_else(|| MoveError::UnknownNode {
                index,
                node: m.to.clone(),
            })?;
            let site = &cluster.sites[s];
            if site.pinned {
                return Err(MoveError::Pinned {
                    index,
                    site: m.site.clone(),
                });
            }
            if location[s].as_ref() != Some(&m.from) {
                return Err(MoveError::NotOnSource {
                    index,
                    site: m.site.clone(),
                });
            }
            if !in_wave.insert(s) {
                return Err(MoveError::TwiceInWave {
                    index,
                    site: m.site.clone(),
                });
            }
            let node = &cluster.nodes[to];
            if node.availability != Availability::Active {
                return Err(MoveError::DestinationUnavailable {
                    index,
                    node: m.to.clone(),
                });
            }
            if !site
                .required_labels
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
            {
                return Err(MoveError::LabelMismatch {
                    index,
                    node: m.to.clone(),
                });
            }
            incoming[to] += u64::from(site.slots);
            if load[to] + incoming[to] > u64::from(node.capacity_slots) {
                return Err(MoveError::OverCapacity {
                    index,
                    node: m.to.clone(),
                    slots: load[to] + incoming[to],
                    capacity: node.capacity_slots,
                });
            }
        }
        // The wave has finished: old tasks are gone.
        for m in &moves[start..end] {
            if let (Some(&s), Some(&to)) = (sites.get(&m.site), nodes.get(&m.to)) {
                let slots = u64::from(cluster.sites[s].slots);
                if let Some(&from) = nodes.get(&m.from) {
                    load[from] -= slots;
                }
                load[to] += slots;
                location[s] = Some(m.to.clone());
            }
        }
        start = end;
    }
    Ok(())
}

/// Records a placement in the map (sites get their node).
pub fn apply_placement(cluster: &mut Cluster, placement: &Placement) {
    let to: HashMap<&SiteId, &NodeId> = placement
        .assignments
        .iter()
        .map(|a| (&a.site, &a.node))
        .collect();
    for site in &mut cluster.sites {
        if let Some(node) = to.get(&site.id) {
            site.node = Some((*node).clone());
        }
    }
}

/// Records executed moves in the map.
pub fn apply_moves(cluster: &mut Cluster, moves: &[Move]) {
    let to: HashMap<&SiteId, &NodeId> = moves.iter().map(|m| (&m.site, &m.to)).collect();
    for site in &mut cluster.sites {
        if let Some(node) = to.get(&site.id) {
            site.node = Some((*node).clone());
        }
    }
}

/// Per-node utilisation and the balance over active nodes.
pub fn utilisation(cluster: &Cluster) -> Utilisation {
    let mut per_node: BTreeMap<&NodeId, (u64, u32)> =
        cluster.nodes.iter().map(|n| (&n.id, (0, 0))).collect();
    let mut unassigned_sites = 0;
    for site in &cluster.sites {
        match site.node.as_ref().and_then(|id| per_node.get_mut(id)) {
            Some((slots, count)) => {
                *slots += u64::from(site.slots);
                *count += 1;
            }
            None => unassigned_sites += 1,
        }
    }
    let mut nodes: Vec<NodeUtilisation> = cluster
        .nodes
        .iter()
        .map(|n| {
            let (used, sites) = per_node.get(&n.id).copied().unwrap_or((0, 0));
            NodeUtilisation {
                node: n.id.clone(),
                availability: n.availability,
                used_slots: used,
                capacity_slots: n.capacity_slots,
                sites,
                utilisation: if n.capacity_slots == 0 {
                    0.0
                } else {
                    used as f64 / f64::from(n.capacity_slots)
                },
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let balance = balance_of(
        nodes
            .iter()
            .filter(|n| n.availability == Availability::Active)
            .map(|n| (n.used_slots, u64::from(n.capacity_slots))),
    );
    Utilisation {
        nodes,
        balance,
        unassigned_sites,
    }
}
