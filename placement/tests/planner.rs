//! Small hand-checked cases of the planner's public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use placement::{
    Availability, Cluster, Move, MoveError, MoveReason, Node, NodeId, PlanError, Policy, Site,
    SiteId, TenantId, UnplacedReason, apply_moves, apply_placement, check_moves, lower_bound,
    place, rebalance, utilisation,
};
use std::collections::{BTreeMap, BTreeSet};

fn site(id: &str, tenant: &str, slots: u32, node: Option<&str>) -> Site {
    Site {
        id: SiteId::new(id),
        tenant: TenantId::new(tenant),
        slots,
        node: node.map(NodeId::new),
        pinned: false,
        required_labels: BTreeMap::new(),
        balance_hold: false,
    }
}

fn loads_after(cluster: &Cluster, moves: &[Move]) -> BTreeMap<String, u64> {
    let mut c = cluster.clone();
    apply_moves(&mut c, moves);
    loads(&c)
}

fn loads(cluster: &Cluster) -> BTreeMap<String, u64> {
    utilisation(cluster)
        .nodes
        .into_iter()
        .map(|n| (n.node.0, n.used_slots))
        .collect()
}

/// 12 one-slot sites of 6 tenants on w1 and w2, as `place` puts them.
fn twelve_on_two() -> Cluster {
    let mut cluster = Cluster {
        nodes: vec![Node::worker("w1"), Node::worker("w2")],
        sites: (0..12)
            .map(|i| site(&format!("s{i:02}"), &format!("t{}", i / 2), 1, None))
            .collect(),
    };
    let placement = place(&cluster, &Policy::default()).unwrap();
    assert!(placement.unplaced.is_empty());
    apply_placement(&mut cluster, &placement);
    cluster
}

#[test]
fn places_evenly_and_spreads_each_tenant() {
    let cluster = twelve_on_two();
    assert_eq!(loads(&cluster), [("w1".into(), 6), ("w2".into(), 6)].into());
    // Each tenant has two sites: one per worker.
    for t in 0..6 {
        let nodes: BTreeSet<_> = cluster
            .sites
            .iter()
            .filter(|s| s.tenant.as_str() == format!("t{t}"))
            .map(|s| s.node.clone().unwrap())
            .collect();
        assert_eq!(nodes.len(), 2, "tenant t{t} on {nodes:?}");
    }
}

#[test]
fn worker_added_moves_exactly_its_share() {
    let mut cluster = twelve_on_two();
    cluster.nodes.push(Node::worker("w3"));
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    assert_eq!(plan.lower_bound, 4);
    assert_eq!(plan.moves.len(), 4);
    assert!(plan.moves.iter().all(|m| m.to.as_str() == "w3"));
    assert!(plan.moves.iter().all(|m| m.reason == MoveReason::Balance));
    check_moves(&cluster, &plan.moves).unwrap();
    apply_moves(&mut cluster, &plan.moves);
    assert_eq!(
        loads(&cluster),
        [("w1".into(), 4), ("w2".into(), 4), ("w3".into(), 4)].into()
    );
    assert_eq!(plan.after.max_over_mean, 1.0);
    // Two from each old worker, and each old worker keeps a spread of tenants.
    let from_w1 = plan
        .moves
        .iter()
        .filter(|m| m.from.as_str() == "w1")
        .count();
    assert_eq!(from_w1, 2);
    // Already balanced: nothing more to do.
    let again = rebalance(&cluster, &Policy::default()).unwrap();
    assert!(again.moves.is_empty());
    assert_eq!(again.lower_bound, 0);
}

#[test]
fn drain_moves_every_site_off_and_nothing_else() {
    let mut cluster = twelve_on_two();
    cluster.nodes.push(Node::worker("w3"));
    cluster.nodes[0].availability = Availability::Drain;
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    assert_eq!(plan.moves.len(), 6);
    assert_eq!(plan.lower_bound, 6);
    assert!(plan.moves.iter().all(|m| m.from.as_str() == "w1"
        && m.to.as_str() == "w3"
        && m.reason == MoveReason::Evacuate));
    check_moves(&cluster, &plan.moves).unwrap();
    apply_moves(&mut cluster, &plan.moves);
    assert_eq!(loads(&cluster)["w1"], 0);
}

#[test]
fn down_node_with_pinned_site_reports_it_and_moves_the_rest() {
    let mut cluster = twelve_on_two();
    cluster.nodes[1].availability = Availability::Down;
    let pinned = cluster
        .sites
        .iter_mut()
        .find(|s| s.node.as_ref().unwrap().as_str() == "w2")
        .unwrap();
    pinned.pinned = true;
    let pinned_id = pinned.id.clone();
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    assert_eq!(plan.moves.len(), 5);
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].site, pinned_id);
    assert_eq!(
        plan.unplaced[0].reason,
        UnplacedReason::PinnedToUnavailableNode {
            node: NodeId::new("w2")
        }
    );
    check_moves(&cluster, &plan.moves).unwrap();
}

#[test]
fn site_on_unknown_node_is_replaced() {
    let mut cluster = Cluster {
        nodes: vec![Node::worker("w1")],
        sites: vec![site("a", "t", 1, Some("gone"))],
    };
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(plan.moves[0].from.as_str(), "gone");
    assert_eq!(plan.moves[0].reason, MoveReason::Evacuate);
    check_moves(&cluster, &plan.moves).unwrap();
    apply_moves(&mut cluster, &plan.moves);
    assert_eq!(cluster.sites[0].node, Some(NodeId::new("w1")));
}

#[test]
fn plan_upgrade_over_capacity_is_shed() {
    // w1 holds 25 one-slot sites; one of them is upgraded to 4 slots: 28 > 25.
    let mut cluster = Cluster {
        nodes: vec![Node::worker("w1"), Node::worker("w2")],
        sites: (0..25)
            .map(|i| site(&format!("s{i:02}"), "t", 1, Some("w1")))
            .collect(),
    };
    cluster.sites[0].slots = 4;
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    check_moves(&cluster, &plan.moves).unwrap();
    assert!(
        plan.moves
            .iter()
            .any(|m| m.reason == MoveReason::OverCapacity)
    );
    apply_moves(&mut cluster, &plan.moves);
    let after = loads(&cluster);
    // 28 slots over 50: band [14, 14].
    assert_eq!(after, [("w1".into(), 14), ("w2".into(), 14)].into());
}

#[test]
fn required_labels_are_honoured() {
    let mut ssd = Node::worker("w2");
    ssd.labels.insert("disk".into(), "ssd".into());
    let mut needs_ssd = site("a", "t", 1, None);
    needs_ssd
        .required_labels
        .insert("disk".into(), "ssd".into());
    let mut needs_gpu = site("b", "t", 1, None);
    needs_gpu.required_labels.insert("gpu".into(), "yes".into());
    let mut cluster = Cluster {
        nodes: vec![Node::worker("w1"), ssd],
        sites: vec![needs_ssd, needs_gpu],
    };
    let placement = place(&cluster, &Policy::default()).unwrap();
    assert_eq!(placement.assignments.len(), 1);
    assert_eq!(placement.assignments[0].node.as_str(), "w2");
    assert_eq!(
        placement.unplaced[0].reason,
        UnplacedReason::NoMatchingLabels
    );
    apply_placement(&mut cluster, &placement);

    // The label moves to w1: the site follows it.
    cluster.nodes[1].labels.clear();
    cluster.nodes[0].labels.insert("disk".into(), "ssd".into());
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(plan.moves[0].reason, MoveReason::LabelMismatch);
    assert_eq!(plan.moves[0].to.as_str(), "w1");
}

#[test]
fn reasons_for_sites_that_do_not_fit() {
    let cluster = Cluster {
        nodes: vec![Node::worker("w1")],
        sites: vec![
            site("big", "t", 30, None),
            site("a", "t", 20, None),
            site("b", "t", 10, None),
        ],
    };
    let placement = place(&cluster, &Policy::default()).unwrap();
    assert_eq!(placement.assignments.len(), 1);
    assert_eq!(placement.assignments[0].site.as_str(), "a");
    let reasons: BTreeMap<_, _> = placement
        .unplaced
        .iter()
        .map(|u| (u.site.as_str(), u.reason.clone()))
        .collect();
    assert_eq!(
        reasons["big"],
        UnplacedReason::LargerThanAnyNode {
            slots: 30,
            largest_usable_slots: 25
        }
    );
    assert_eq!(
        reasons["b"],
        UnplacedReason::InsufficientCapacity {
            slots: 10,
            largest_free_slots: 5
        }
    );
    let none = place(
        &Cluster {
            nodes: vec![],
            sites: vec![site("a", "t", 1, None)],
        },
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(none.unplaced[0].reason, UnplacedReason::NoActiveNodes);
}

#[test]
fn headroom_is_kept_free() {
    let cluster = Cluster {
        nodes: vec![Node::worker("w1")],
        sites: (0..25)
            .map(|i| site(&format!("s{i:02}"), "t", 1, None))
            .collect(),
    };
    let policy = Policy {
        headroom_slots: 2,
        ..Policy::default()
    };
    let placement = place(&cluster, &policy).unwrap();
    assert_eq!(placement.assignments.len(), 23);
    assert_eq!(placement.unplaced.len(), 2);
}

#[test]
fn invalid_input_is_refused() {
    let dup_node = Cluster {
        nodes: vec![Node::worker("w1"), Node::worker("w1")],
        sites: vec![],
    };
    assert_eq!(
        place(&dup_node, &Policy::default()),
        Err(PlanError::DuplicateNode {
            node: NodeId::new("w1")
        })
    );
    let dup_site = Cluster {
        nodes: vec![],
        sites: vec![site("a", "t", 1, None), site("a", "t", 1, None)],
    };
    assert!(matches!(
        rebalance(&dup_site, &Policy::default()),
        Err(PlanError::DuplicateSite { .. })
    ));
    let zero = Cluster {
        nodes: vec![],
        sites: vec![site("a", "t", 0, None)],
    };
    assert!(matches!(
        lower_bound(&zero, &Policy::default()),
        Err(PlanError::ZeroSlots { .. })
    ));
}

#[test]
fn waves_respect_concurrency_and_max_moves_defers() {
    let mut cluster = Cluster {
        nodes: (1..=4).map(|i| Node::worker(format!("w{i}"))).collect(),
        sites: (0..40)
            .map(|i| site(&format!("s{i:02}"), &format!("t{i}"), 1, None))
            .collect(),
    };
    cluster.nodes[0].availability = Availability::Drain;
    let placement = place(&cluster, &Policy::default()).unwrap();
    apply_placement(&mut cluster, &placement);
    cluster.nodes[0].availability = Availability::Active;
    cluster.nodes[3].availability = Availability::Drain;
    let policy = Policy {
        max_concurrent_moves: 3,
        max_concurrent_moves_per_node: 2,
        ..Policy::default()
    };
    let plan = rebalance(&cluster, &policy).unwrap();
    let on_w4 = loads(&cluster)["w4"] as usize;
    assert_eq!(on_w4, 13); // 40 over w2..w4: 14, 13, 13
    assert_eq!(plan.moves.len(), on_w4);
    check_moves(&cluster, &plan.moves).unwrap();
    let mut per_wave: BTreeMap<u32, Vec<&Move>> = BTreeMap::new();
    for m in &plan.moves {
        per_wave.entry(m.wave).or_default().push(m);
    }
    for moves in per_wave.values() {
        // All leave w4, so the per-node limit of 2 bounds every wave.
        assert!(moves.len() <= 2);
    }
    let capped = rebalance(
        &cluster,
        &Policy {
            max_moves: Some(5),
            ..policy
        },
    )
    .unwrap();
    assert_eq!(capped.moves.len(), 5);
    assert_eq!(capped.deferred_moves, 8);
    assert_eq!(capped.moves, plan.moves[..5]);
}

#[test]
fn check_moves_rejects_start_first_overflow_in_one_wave() {
    // w2 has one free slot; two sites arriving in the same wave would need two.
    let mut w2 = Node::worker("w2");
    w2.capacity_slots = 2;
    let cluster = Cluster {
        nodes: vec![Node::worker("w1"), w2],
        sites: vec![
            site("a", "t", 1, Some("w1")),
            site("b", "t", 1, Some("w1")),
            site("c", "t", 1, Some("w2")),
        ],
    };
    let mv = |s: &str, wave| Move {
        site: SiteId::new(s),
        from: NodeId::new("w1"),
        to: NodeId::new("w2"),
        slots: 1,
        wave,
        reason: MoveReason::Balance,
    };
    assert!(matches!(
        check_moves(&cluster, &[mv("a", 0), mv("b", 0)]),
        Err(MoveError::OverCapacity { index: 1, .. })
    ));
    // And it is still too many once the first has finished: w2 is full.
    assert!(check_moves(&cluster, &[mv("a", 0), mv("b", 1)]).is_err());
    check_moves(&cluster, &[mv("a", 0)]).unwrap();
}

#[test]
fn json_shape() {
    let mut cluster = twelve_on_two();
    cluster.nodes[0].availability = Availability::Drain;
    let json = serde_json::to_value(&cluster.nodes[0]).unwrap();
    assert_eq!(json["id"], "w1");
    assert_eq!(json["availability"], "drain");
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["moves"][0]["from"], "w1");
    assert_eq!(json["moves"][0]["reason"], "evacuate");
    let reason = serde_json::to_value(UnplacedReason::InsufficientCapacity {
        slots: 2,
        largest_free_slots: 1,
    })
    .unwrap();
    assert_eq!(reason["reason"], "insufficient_capacity");
    let back: Cluster = serde_json::from_str(&serde_json::to_string(&cluster).unwrap()).unwrap();
    assert_eq!(back, cluster);
    // Optional fields may be left out.
    let minimal: Cluster = serde_json::from_str(
        r#"{"nodes":[{"id":"w1","capacity_slots":25,"availability":"active"}],
            "sites":[{"id":"a","tenant":"t","slots":1}]}"#,
    )
    .unwrap();
    assert_eq!(
        place(&minimal, &Policy::default())
            .unwrap()
            .assignments
            .len(),
        1
    );
    let policy: Policy = serde_json::from_str(r#"{"headroom_slots":1}"#).unwrap();
    assert_eq!(
        policy.max_concurrent_moves,
        Policy::default().max_concurrent_moves
    );
}

#[test]
fn tenant_spreads_over_failure_domains_first() {
    // Four workers in two racks; a tenant's two sites land in different racks, and its
    // four sites on four workers.
    let mut nodes: Vec<Node> = (1..=4).map(|i| Node::worker(format!("w{i}"))).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.failure_domain = Some(if i < 2 { "rack-a" } else { "rack-b" }.into());
    }
    let two = Cluster {
        nodes: nodes.clone(),
        sites: vec![site("a", "t", 1, None), site("b", "t", 1, None)],
    };
    let placement = place(&two, &Policy::default()).unwrap();
    let racks: BTreeSet<_> = placement
        .assignments
        .iter()
        .map(|a| ["w1", "w2"].contains(&a.node.as_str()))
        .collect();
    assert_eq!(racks.len(), 2, "{placement:?}");

    let four = Cluster {
        nodes,
        sites: (0..4)
            .map(|i| site(&format!("s{i}"), "t", 1, None))
            .collect(),
    };
    let placement = place(&four, &Policy::default()).unwrap();
    let workers: BTreeSet<_> = placement
        .assignments
        .iter()
        .map(|a| a.node.clone())
        .collect();
    assert_eq!(workers.len(), 4);
}

#[test]
fn held_sites_are_not_moved_for_balance_but_are_when_forced() {
    // After w3 joined and got its share, w4 joins. w3's four sites moved a moment ago.
    let mut cluster = twelve_on_two();
    cluster.nodes.push(Node::worker("w3"));
    let first = rebalance(&cluster, &Policy::default()).unwrap();
    apply_moves(&mut cluster, &first.moves);
    for s in &mut cluster.sites {
        s.balance_hold = s.node.as_ref().is_some_and(|n| n.as_str() == "w3");
    }
    cluster.nodes.push(Node::worker("w4"));
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    check_moves(&cluster, &plan.moves).unwrap();
    assert!(!plan.moves.is_empty());
    assert!(
        plan.moves
            .iter()
            .all(|m| m.from.as_str() != "w3" && m.to.as_str() == "w4"),
        "a site that just moved is not moved again for balance: {:?}",
        plan.moves
    );
    let held: BTreeSet<&str> = cluster
        .sites
        .iter()
        .filter(|s| s.balance_hold)
        .map(|s| s.id.as_str())
        .collect();
    assert!(plan.moves.iter().all(|m| !held.contains(m.site.as_str())));
    // w4 gets what w1 and w2 can give without going below their share; w3's excess
    // stays (like a pin, a hold can leave the band out of reach).
    assert_eq!(loads_after(&cluster, &plan.moves)["w4"], 2);
    // Without the holds, w3 gives a site too.
    let mut free = cluster.clone();
    for s in &mut free.sites {
        s.balance_hold = false;
    }
    let unheld = rebalance(&free, &Policy::default()).unwrap();
    assert!(unheld.moves.iter().any(|m| m.from.as_str() == "w3"));

    // Drained: held or not, every site of w3 leaves.
    cluster.nodes[2].availability = Availability::Drain;
    let drain = rebalance(&cluster, &Policy::default()).unwrap();
    check_moves(&cluster, &drain.moves).unwrap();
    let evacuated: BTreeSet<&str> = drain
        .moves
        .iter()
        .filter(|m| m.reason == MoveReason::Evacuate)
        .map(|m| m.site.as_str())
        .collect();
    assert_eq!(evacuated, held);
}

#[test]
fn a_held_site_still_leaves_a_node_over_capacity() {
    let mut cluster = Cluster {
        nodes: vec![Node::worker("w1"), Node::worker("w2")],
        sites: (0..25)
            .map(|i| site(&format!("s{i:02}"), "t", 1, Some("w1")))
            .collect(),
    };
    cluster.sites[0].slots = 4;
    for s in &mut cluster.sites {
        s.balance_hold = true;
    }
    let plan = rebalance(&cluster, &Policy::default()).unwrap();
    check_moves(&cluster, &plan.moves).unwrap();
    assert!(!plan.moves.is_empty());
    assert!(
        plan.moves
            .iter()
            .all(|m| m.reason == MoveReason::OverCapacity)
    );
    apply_moves(&mut cluster, &plan.moves);
    assert!(loads(&cluster)["w1"] <= 25, "back within capacity");
    // Within capacity again, a held map has nothing to move for balance.
    let again = rebalance(&cluster, &Policy::default()).unwrap();
    assert!(again.moves.is_empty(), "{:?}", again.moves);
}

mod gate {
    use super::*;
    use placement::{BalanceGate, BalanceVerdict};
    use std::time::{Duration, Instant};

    fn plan_with(cluster: &Cluster) -> placement::RebalancePlan {
        rebalance(cluster, &Policy::default()).unwrap()
    }

    #[test]
    fn balance_moves_wait_for_a_lasting_imbalance() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let balanced = twelve_on_two();
        let mut joined = twelve_on_two();
        joined.nodes.push(Node::worker("w3"));
        let (calm, uneven) = (plan_with(&balanced), plan_with(&joined));
        assert!(calm.moves.is_empty() && !uneven.moves.is_empty());

        // Three passes and 30 s: the third pass at 10 s is not enough, the fourth at 30 s is.
        let mut gate = BalanceGate::new(3, Duration::from_secs(30));
        assert_eq!(gate.observe(&calm, at(0)), BalanceVerdict::Balanced);
        assert!(matches!(
            gate.observe(&uneven, at(5)),
            BalanceVerdict::Waiting { passes: 1, .. }
        ));
        assert!(matches!(
            gate.observe(&uneven, at(10)),
            BalanceVerdict::Waiting { passes: 2, .. }
        ));
        assert_eq!(
            gate.observe(&uneven, at(15)),
            BalanceVerdict::Waiting {
                passes: 3,
                for_duration: Duration::from_secs(10)
            }
        );
        assert_eq!(gate.observe(&uneven, at(35)), BalanceVerdict::Move);

        // A transient imbalance (one pass balanced in between) starts the count again.
        let mut gate = BalanceGate::new(3, Duration::ZERO);
        gate.observe(&uneven, at(0));
        gate.observe(&uneven, at(5));
        gate.observe(&calm, at(10));
        assert!(matches!(
            gate.observe(&uneven, at(15)),
            BalanceVerdict::Waiting { passes: 1, .. }
        ));
        gate.observe(&uneven, at(20));
        assert_eq!(gate.observe(&uneven, at(25)), BalanceVerdict::Move);
        // After moves started (reset), the next imbalance must last again.
        gate.reset();
        assert!(matches!(
            gate.observe(&uneven, at(30)),
            BalanceVerdict::Waiting { passes: 1, .. }
        ));

        // Another worker giving sites is another imbalance: counted from scratch.
        let mut other = twelve_on_two();
        other.nodes.push(Node::worker("w0"));
        for s in &mut other.sites {
            if s.node.as_ref().is_some_and(|n| n.as_str() == "w2") {
                s.node = Some(NodeId::new("w1"));
            }
        }
        let w1_only = plan_with(&other);
        assert!(w1_only.moves.iter().all(|m| m.from.as_str() == "w1"));
        let mut gate = BalanceGate::new(2, Duration::ZERO);
        gate.observe(&uneven, at(0));
        assert!(matches!(
            gate.observe(&w1_only, at(5)),
            BalanceVerdict::Waiting { passes: 1, .. }
        ));
        assert_eq!(gate.observe(&w1_only, at(10)), BalanceVerdict::Move);
    }

    #[test]
    fn forced_moves_are_not_balance() {
        // A drain's plan has evacuations only: nothing for the gate to wait on.
        let mut cluster = twelve_on_two();
        cluster.nodes.push(Node::worker("w3"));
        cluster.nodes[0].availability = Availability::Drain;
        let plan = plan_with(&cluster);
        assert!(plan.moves.iter().all(|m| m.reason == MoveReason::Evacuate));
        let mut gate = BalanceGate::new(5, Duration::from_secs(600));
        assert_eq!(
            gate.observe(&plan, Instant::now()),
            BalanceVerdict::Balanced
        );
    }
}
