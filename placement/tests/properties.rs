//! Property tests of the planner over random clusters.
//!
//! Safety (any input): never over capacity, even mid-move with start-first waves; never
//! onto a drained or down node; never against required labels; pinned sites never move.
//! Completeness: every site placed while capacity allows. Determinism: same input, in any
//! order, same output. Optimality: for a worker added or drained, moves = lower bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use placement::{
    Availability, Cluster, Node, NodeId, Placement, Policy, Site, SiteId, TenantId, UnplacedReason,
    apply_moves, apply_placement, check_moves, lower_bound, place, rebalance, utilisation,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const LABELS: [(&str, &str); 3] = [("disk", "ssd"), ("zone", "a"), ("php", "8.3")];

fn labels(mask: u8) -> BTreeMap<String, String> {
    LABELS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (k, v))| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    unit_only: bool,
    with_labels: bool,
    with_pins: bool,
    with_down: bool,
}

const GENERAL: Shape = Shape {
    unit_only: false,
    with_labels: true,
    with_pins: true,
    with_down: true,
};
const SIMPLE: Shape = Shape {
    unit_only: true,
    with_labels: false,
    with_pins: false,
    with_down: false,
};

fn node_strategy(shape: Shape) -> impl Strategy<Value = (u32, u8, u8, Option<u8>)> {
    (
        prop_oneof![3 => Just(25u32), 1 => 1u32..40],
        if shape.with_labels {
            (0u8..8).boxed()
        } else {
            Just(0u8).boxed()
        },
        if shape.with_down {
            prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)].boxed()
        } else {
            Just(0u8).boxed()
        },
        proptest::option::of(0u8..3),
    )
}

/// (slots, tenant, node: index or `None`, pinned, required label mask)
type SiteShape = (u32, u8, Option<u8>, bool, u8);

fn site_strategy(shape: Shape) -> impl Strategy<Value = SiteShape> {
    (
        if shape.unit_only {
            Just(1u32).boxed()
        } else {
            prop_oneof![4 => Just(1u32), 1 => 2u32..5, 1 => Just(26u32)].boxed()
        },
        0u8..6,
        proptest::option::of(0u8..16),
        if shape.with_pins {
            proptest::bool::weighted(0.1).boxed()
        } else {
            Just(false).boxed()
        },
        if shape.with_labels {
            prop_oneof![4 => Just(0u8), 1 => 0u8..4].boxed()
        } else {
            Just(0u8).boxed()
        },
    )
}

/// A random cluster. Sites may start on any node (even over capacity, on a drained node,
/// or on an unknown node `w13..w15`) or nowhere.
fn cluster_strategy(shape: Shape, max_sites: usize) -> impl Strategy<Value = Cluster> {
    (
        proptest::collection::vec(node_strategy(shape), 1..13),
        proptest::collection::vec(site_strategy(shape), 0..max_sites),
    )
        .prop_map(|(nodes, sites)| Cluster {
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, (cap, mask, avail, domain))| Node {
                    id: NodeId::new(format!("w{i:02}")),
                    capacity_slots: cap,
                    labels: labels(mask),
                    availability: match avail {
                        0 => Availability::Active,
                        1 => Availability::Drain,
                        _ => Availability::Down,
                    },
                    failure_domain: domain.map(|d| format!("rack{d}")),
                })
                .collect(),
            sites: sites
                .into_iter()
                .enumerate()
                .map(|(i, (slots, tenant, node, pinned, mask))| Site {
                    id: SiteId::new(format!("s{i:03}")),
                    tenant: TenantId::new(format!("t{tenant}")),
                    slots,
                    node: node.map(|n| NodeId::new(format!("w{n:02}"))),
                    pinned: pinned && node.is_some(),
                    required_labels: labels(mask),
                    balance_hold: false,
                })
                .collect(),
        })
}

/// Only new sites: for placement from an empty (or given) map.
fn unplaced_only(mut cluster: Cluster) -> Cluster {
    for s in &mut cluster.sites {
        s.node = None;
        s.pinned = false;
    }
    cluster
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (0u32..3, any::<bool>(), 1u32..5, 1u32..3).prop_map(|(headroom, spread, wave, per_node)| {
        Policy {
            headroom_slots: headroom,
            spread_tenants: spread,
            max_concurrent_moves: wave,
            max_concurrent_moves_per_node: per_node,
            max_moves: None,
        }
    })
}

fn node_loads(cluster: &Cluster) -> HashMap<NodeId, u64> {
    utilisation(cluster)
        .nodes
        .into_iter()
        .map(|n| (n.node, n.used_slots))
        .collect()
}

fn labels_ok(site: &Site, node: &Node) -> bool {
    site.required_labels
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Placement-specific invariants: targets active and matching; a node that received a
/// site stays within capacity minus headroom.
fn check_placement(cluster: &Cluster, policy: &Policy, placement: &Placement) {
    let nodes: HashMap<&NodeId, &Node> = cluster.nodes.iter().map(|n| (&n.id, n)).collect();
    let sites: HashMap<&SiteId, &Site> = cluster.sites.iter().map(|s| (&s.id, s)).collect();
    let mut placed = cluster.clone();
    apply_placement(&mut placed, placement);
    let loads = node_loads(&placed);
    let mut seen = BTreeSet::new();
    for a in &placement.assignments {
        assert!(seen.insert(a.site.clone()), "{} placed twice", a.site);
        let node = nodes[&a.node];
        let site = sites[&a.site];
        assert!(site.node.is_none(), "{} was already placed", a.site);
        assert_eq!(node.availability, Availability::Active, "onto {}", a.node);
        assert!(
            labels_ok(site, node),
            "{} onto {} without labels",
            a.site,
            a.node
        );
        assert!(
            loads[&a.node] <= u64::from(node.capacity_slots.saturating_sub(policy.headroom_slots)),
            "{} over usable capacity",
            a.node
        );
    }
    for u in &placement.unplaced {
        assert!(
            seen.insert(u.site.clone()),
            "{} both placed and unplaced",
            u.site
        );
    }
    let new = cluster.sites.iter().filter(|s| s.node.is_none()).count();
    assert_eq!(seen.len(), new, "every new site is placed or reported");
}

fn shuffled(cluster: &Cluster, seed: u64) -> Cluster {
    // A deterministic permutation: rotate and reverse by the seed.
    let mut c = cluster.clone();
    if !c.nodes.is_empty() {
        let k = (seed as usize) % c.nodes.len();
        c.nodes.rotate_left(k);
    }
    if !c.sites.is_empty() {
        let k = (seed as usize / 7) % c.sites.len();
        c.sites.rotate_left(k);
    }
    if seed.is_multiple_of(2) {
        c.nodes.reverse();
        c.sites.reverse();
    }
    c
}

/// The band of the lower bound's objective, computed independently of the crate.
fn in_band(cluster: &Cluster, policy: &Policy) -> bool {
    let loads = node_loads(cluster);
    let active: Vec<&Node> = cluster
        .nodes
        .iter()
        .filter(|n| n.availability == Availability::Active)
        .collect();
    let capacity: u64 = active
        .iter()
        .map(|n| u64::from(n.capacity_slots.saturating_sub(policy.headroom_slots)))
        .sum();
    let total: u64 = active.iter().map(|n| loads[&n.id]).sum();
    if capacity == 0 {
        return true;
    }
    active.iter().all(|n| {
        let usable = u64::from(n.capacity_slots.saturating_sub(policy.headroom_slots));
        let lo = (total * usable / capacity).min(usable);
        let hi = (total * usable).div_ceil(capacity).min(usable);
        (lo..=hi).contains(&loads[&n.id])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn placement_is_safe_and_deterministic(
        cluster in cluster_strategy(GENERAL, 120),
        policy in policy_strategy(),
        seed in any::<u64>(),
    ) {
        let placement = place(&cluster, &policy).unwrap();
        check_placement(&cluster, &policy, &placement);
        prop_assert_eq!(&place(&cluster, &policy).unwrap(), &placement);
        prop_assert_eq!(&place(&shuffled(&cluster, seed), &policy).unwrap(), &placement);
    }

    /// A site is only refused when, at the end, no matching active node could take it.
    #[test]
    fn placement_refuses_only_what_cannot_fit(
        cluster in cluster_strategy(GENERAL, 120),
        policy in policy_strategy(),
    ) {
        let placement = place(&cluster, &policy).unwrap();
        let mut placed = cluster.clone();
        apply_placement(&mut placed, &placement);
        let loads = node_loads(&placed);
        let sites: HashMap<&SiteId, &Site> = cluster.sites.iter().map(|s| (&s.id, s)).collect();
        for u in &placement.unplaced {
            let site = sites[&u.site];
            let fits_somewhere = cluster.nodes.iter().any(|n| {
                n.availability == Availability::Active
                    && labels_ok(site, n)
                    && loads[&n.id] + u64::from(site.slots)
                        <= u64::from(n.capacity_slots.saturating_sub(policy.headroom_slots))
            });
            prop_assert!(!fits_somewhere, "{} refused ({}) but fits", u.site, u.reason);
        }
    }

    /// With one-slot sites and no labels, every site is placed while free slots remain,
    /// and the result is within the balance band.
    #[test]
    fn placement_is_complete_while_capacity_allows(
        cluster in cluster_strategy(SIMPLE, 400).prop_map(unplaced_only),
        policy in policy_strategy(),
    ) {
        let placement = place(&cluster, &policy).unwrap();
        let free: u64 = cluster
            .nodes
            .iter()
            .filter(|n| n.availability == Availability::Active)
            .map(|n| u64::from(n.capacity_slots.saturating_sub(policy.headroom_slots)))
            .sum();
        let expected = (cluster.sites.len() as u64).min(free);
        prop_assert_eq!(placement.assignments.len() as u64, expected);
        for u in &placement.unplaced {
            let is_capacity = matches!(
                u.reason,
                UnplacedReason::InsufficientCapacity { .. }
                    | UnplacedReason::LargerThanAnyNode { .. }
                    | UnplacedReason::NoActiveNodes
            );
            prop_assert!(is_capacity);
        }
        let mut placed = cluster.clone();
        apply_placement(&mut placed, &placement);
        if expected > 0 {
            prop_assert!(in_band(&placed, &policy));
        }
    }

    #[test]
    fn rebalance_is_safe_and_deterministic(
        cluster in cluster_strategy(GENERAL, 120),
        policy in policy_strategy(),
        seed in any::<u64>(),
    ) {
        let plan = rebalance(&cluster, &policy).unwrap();
        // Never over capacity (start-first, waves), never onto drained/down, labels, pins.
        if let Err(e) = check_moves(&cluster, &plan.moves) {
            return Err(TestCaseError::fail(format!("unsafe plan: {e}")));
        }
        let nodes: HashMap<&NodeId, &Node> = cluster.nodes.iter().map(|n| (&n.id, n)).collect();
        // One at a time, in list order, is safe too.
        let mut sequential = plan.moves.clone();
        for (i, m) in sequential.iter_mut().enumerate() {
            m.wave = i as u32;
        }
        prop_assert!(check_moves(&cluster, &sequential).is_ok());
        // The policy's concurrency limits hold in every wave.
        let mut per_wave: BTreeMap<u32, (u32, HashMap<&NodeId, u32>)> = BTreeMap::new();
        for m in &plan.moves {
            let (count, touches) = per_wave.entry(m.wave).or_default();
            *count += 1;
            // A node not in the map (gone) has no tasks to protect.
            if nodes.contains_key(&m.from) {
                *touches.entry(&m.from).or_default() += 1;
            }
            *touches.entry(&m.to).or_default() += 1;
        }
        for (count, touches) in per_wave.values() {
            prop_assert!(*count <= policy.max_concurrent_moves.max(1));
            prop_assert!(touches.values().all(|&t| t <= policy.max_concurrent_moves_per_node.max(1)));
        }
        let moved: BTreeSet<&SiteId> = plan.moves.iter().map(|m| &m.site).collect();
        prop_assert_eq!(moved.len(), plan.moves.len(), "a site moves at most once");
        // Every site that had to leave an unavailable node left it or is reported.
        let reported: BTreeSet<&SiteId> = plan.unplaced.iter().map(|u| &u.site).collect();
        for site in &cluster.sites {
            let Some(node) = &site.node else { continue };
            let available = nodes
                .get(node)
                .is_some_and(|n| n.availability == Availability::Active);
            if !available {
                prop_assert!(
                    moved.contains(&site.id) || reported.contains(&site.id),
                    "{} left on {}", site.id, node
                );
            }
        }
        prop_assert_eq!(&rebalance(&cluster, &policy).unwrap(), &plan);
        prop_assert_eq!(&rebalance(&shuffled(&cluster, seed), &policy).unwrap(), &plan);
        prop_assert_eq!(lower_bound(&cluster, &policy).unwrap(), plan.lower_bound);
        // The bound never overestimates: a plan that reaches the objective needs it all.
        let mut after = cluster.clone();
        apply_moves(&mut after, &plan.moves);
        let mismatched = after.sites.iter().any(|s| {
            !s.pinned
                && s.node.as_ref().is_some_and(|n| nodes.get(n).is_some_and(|n| !labels_ok(s, n)))
        });
        if plan.unplaced.is_empty() && !mismatched && in_band(&after, &policy) {
            prop_assert!(plan.moves.len() as u64 >= plan.lower_bound);
        }
    }

    /// Cutting a plan at `max_moves` keeps a safe prefix.
    #[test]
    fn capped_plan_is_a_prefix(
        cluster in cluster_strategy(GENERAL, 120),
        policy in policy_strategy(),
        cap in 0u32..10,
    ) {
        let full = rebalance(&cluster, &policy).unwrap();
        let capped = rebalance(&cluster, &Policy { max_moves: Some(cap), ..policy }).unwrap();
        let n = capped.moves.len();
        prop_assert_eq!(n, full.moves.len().min(cap as usize));
        prop_assert_eq!(capped.deferred_moves as usize, full.moves.len() - n);
        for (a, b) in capped.moves.iter().zip(&full.moves) {
            prop_assert_eq!((&a.site, &a.from, &a.to), (&b.site, &b.from, &b.to));
        }
        prop_assert!(check_moves(&cluster, &capped.moves).is_ok());
    }

    /// Placed map + new empty workers: moves = lower bound, and the map ends in the band.
    #[test]
    fn worker_added_meets_the_lower_bound(
        cluster in cluster_strategy(SIMPLE, 300).prop_map(unplaced_only),
        policy in policy_strategy(),
        added in 1usize..4,
        added_capacity in prop_oneof![3 => Just(25u32), 1 => 1u32..40],
    ) {
        let mut cluster = cluster;
        let placement = place(&cluster, &policy).unwrap();
        apply_placement(&mut cluster, &placement);
        cluster.sites.retain(|s| s.node.is_some());
        for k in 0..added {
            let mut node = Node::worker(format!("new{k}"));
            node.capacity_slots = added_capacity;
            cluster.nodes.push(node);
        }
        let bound = lower_bound(&cluster, &policy).unwrap();
        let plan = rebalance(&cluster, &policy).unwrap();
        prop_assert_eq!(plan.moves.len() as u64, bound);
        prop_assert!(check_moves(&cluster, &plan.moves).is_ok());
        apply_moves(&mut cluster, &plan.moves);
        prop_assert!(in_band(&cluster, &policy));
        // From a balanced map, the new workers only receive.
        let new: BTreeSet<NodeId> = (0..added).map(|k| NodeId::new(format!("new{k}"))).collect();
        for m in &plan.moves {
            prop_assert!(!new.contains(&m.from));
        }
    }

    /// Placed map, then one worker drained or down: moves = lower bound ≥ its sites, and
    /// the map ends in the band with the node empty.
    #[test]
    fn worker_drained_meets_the_lower_bound(
        cluster in cluster_strategy(SIMPLE, 300).prop_map(unplaced_only),
        policy in policy_strategy(),
        which in any::<prop::sample::Index>(),
        down in any::<bool>(),
    ) {
        let mut cluster = cluster;
        let placement = place(&cluster, &policy).unwrap();
        apply_placement(&mut cluster, &placement);
        cluster.sites.retain(|s| s.node.is_some());
        let i = which.index(cluster.nodes.len());
        let drained = cluster.nodes[i].id.clone();
        cluster.nodes[i].availability = if down { Availability::Down } else { Availability::Drain };
        let on_drained = cluster.sites.iter().filter(|s| s.node.as_ref() == Some(&drained)).count();
        let bound = lower_bound(&cluster, &policy).unwrap();
        let plan = rebalance(&cluster, &policy).unwrap();
        prop_assert!(check_moves(&cluster, &plan.moves).is_ok());
        prop_assert!(bound >= on_drained as u64);
        let active_usable: u64 = cluster
            .nodes
            .iter()
            .filter(|n| n.availability == Availability::Active)
            .map(|n| u64::from(n.capacity_slots.saturating_sub(policy.headroom_slots)))
            .sum();
        if cluster.sites.len() as u64 <= active_usable {
            prop_assert!(plan.unplaced.is_empty());
            prop_assert_eq!(plan.moves.len() as u64, bound);
            apply_moves(&mut cluster, &plan.moves);
            prop_assert_eq!(node_loads(&cluster)[&drained], 0);
            prop_assert!(in_band(&cluster, &policy));
        }
    }
}
