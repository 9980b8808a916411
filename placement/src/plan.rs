//! The two planning entry points, [`place`] and [`rebalance`], and the [`lower_bound`]
//! on the number of moves a rebalance needs.

use crate::model::{
    Assignment, Cluster, Move, MoveReason, NodeId, Placement, PlanError, Policy, RebalancePlan,
    Unplaced, UnplacedReason,
};
use crate::state::{State, Tier, balance_of};
use std::cmp::Reverse;
use std::collections::HashMap;

/// Places every site that has no node (`Site::node == None`).
///
/// Sites already on a node are left alone, wherever they are (use [`rebalance`] for those).
/// Largest sites go first, then by id. Each goes to the best node by, in order: filling
/// only up to the node's share of the total (the band floor, then ceiling, then usable
/// capacity), fewest sites of the same tenant on the node, then in its failure domain,
/// most room below its share, node id. A site that fits nowhere is reported with the reason.
pub fn place(cluster: &Cluster, policy: &Policy) -> Result<Placement, PlanError> {
    let mut st = State::new(cluster, policy)?;
    let mut new: Vec<u32> = (0..st.sites.len() as u32)
        .filter(|&s| st.sites[s as usize].node.is_none())
        .collect();
    let new_slots: u64 = new
        .iter()
        .map(|&s| u64::from(st.sites[s as usize].slots))
        .sum();
    st.set_band(st.active_load() + new_slots, false);
    new.sort_by_key(|&s| (Reverse(st.sites[s as usize].slots), s));

    let mut placement = Placement::default();
    let mut unplaced = Vec::new();
    for s in new {
        match st.choose(s, Tier::Free) {
            Some(n) => {
                st.add(s, n);
                placement.assignments.push(Assignment {
                    site: st.sites[s as usize].id.clone(),
                    node: st.nodes[n as usize].id.clone(),
                });
            }
            None => unplaced.push((s, st.unplaced_reason(s))),
        }
    }
    unplaced.sort_by_key(|(s, _)| *s);
    placement.unplaced = unplaced
        .into_iter()
        .map(|(s, reason)| Unplaced {
            site: st.sites[s as usize].id.clone(),
            reason,
        })
        .collect();
    Ok(placement)
}

/// Sites a rebalance must move, and sites that should move but may not.
struct Classified {
    /// (site, reason) in the order they are moved: label mismatches (on active nodes)
    /// first, then evacuations; within each, largest first, then by id.
    forced: Vec<(u32, MoveReason)>,
    stuck: Vec<(u32, UnplacedReason)>,
}

fn classify(st: &State<'_>) -> Classified {
    let mut mismatch = Vec::new();
    let mut evacuate = Vec::new();
    let mut stuck = Vec::new();
    for s in 0..st.sites.len() as u32 {
        let site = st.sites[s as usize];
        let Some(node_id) = &site.node else {
            continue;
        };
        match st.site_node[s as usize] {
            Some(n) if st.active[n as usize] => {
                if !site.pinned && !st.labels_ok(s, n) {
                    mismatch.push(s);
                }
            }
            _ if site.pinned => stuck.push((
                s,
                UnplacedReason::PinnedToUnavailableNode {
                    node: node_id.clone(),
                },
            )),
            _ => evacuate.push(s),
        }
    }
    let key = |s: &u32| (Reverse(st.sites[*s as usize].slots), *s);
    mismatch.sort_by_key(key);
    evacuate.sort_by_key(key);
    let forced = mismatch
        .into_iter()
        .map(|s| (s, MoveReason::LabelMismatch))
        .chain(evacuate.into_iter().map(|s| (s, MoveReason::Evacuate)))
        .collect();
    Classified { forced, stuck }
}

/// Builds the state with the band every rebalance uses: all slots on active nodes plus
/// those that must come back from unavailable nodes, shared in proportion to capacity.
fn rebalance_state<'a>(
    cluster: &'a Cluster,
    policy: &Policy,
) -> Result<(State<'a>, Classified), PlanError> {
    let mut st = State::new(cluster, policy)?;
    let classified = classify(&st);
    let returning: u64 = classified
        .forced
        .iter()
        .filter(|(_, r)| *r == MoveReason::Evacuate)
        .map(|(s, _)| u64::from(st.sites[*s as usize].slots))
        .sum();
    st.set_band(st.active_load() + returning, true);
    Ok((st, classified))
}

fn bound(st: &State<'_>, classified: &Classified) -> u64 {
    // Slots that forced moves take off active nodes (label mismatches).
    let mut leaving: HashMap<u32, u64> = HashMap::new();
    let mut forced_slots = 0u64;
    for &(s, _) in &classified.forced {
        let slots = u64::from(st.sites[s as usize].slots);
        forced_slots += slots;
        if let Some(n) = st.site_node[s as usize]
            && st.active[n as usize]
        {
            *leaving.entry(n).or_insert(0) += slots;
        }
    }
    let largest = st
        .sites
        .iter()
        .filter(|s| !s.pinned)
        .map(|s| u64::from(s.slots))
        .max()
        .unwrap_or(1);
    let forced = classified.forced.len() as u64;
    let mut deficit = 0u64;
    // Σ ⌈d_i/m⌉ and Σ ⌈e_i/m⌉: each move fills one node and empties one node.
    let mut inflows = 0u64;
    let mut outflows = 0u64;
    for i in 0..st.nodes.len() {
        if !st.active[i] {
            continue;
        }
        let gone = leaving.get(&(i as u32)).copied().unwrap_or(0);
        let load = st.load[i] - gone;
        let d = st.lo[i].saturating_sub(load);
        deficit += d;
        inflows += d.div_ceil(largest);
        // Only excess that can move counts: pinned sites stay, and so (for balance) do
        // held ones. Counting less keeps this a lower bound.
        let movable: u64 = st.node_sites[i]
            .iter()
            .map(|&s| st.sites[s as usize])
            .filter(|site| !site.pinned && !site.balance_hold)
            .map(|site| u64::from(site.slots))
            .sum::<u64>()
            .saturating_sub(gone);
        outflows += load.saturating_sub(st.hi[i]).min(movable).div_ceil(largest);
    }
    let filled_by_forced = forced + deficit.saturating_sub(forced_slots).div_ceil(largest);
    (forced + outflows).max(filled_by_forced).max(inflows)
}

/// A lower bound on the moves any plan needs to reach [`rebalance`]'s objective.
///
/// The objective: every site off unavailable nodes and off nodes lacking its labels, and
/// every active node's load within its band `[floor(τ·c), ceil(τ·c)]`, where `c` is the
/// node's usable slots and `τ` the total load over total usable capacity of active nodes.
///
/// Each forced site (on a drained, down or unknown node, or on a node without its
/// labels) needs one move: `F` moves carrying `S_F` slots. After they leave, let `d_i`
/// be the slots active node `i` lacks to reach its floor (`D = Σ d_i`) and `e_i` its
/// movable slots above its ceiling. Every move has one destination and one source and
/// carries at most `m` slots (the largest movable site); forced moves fill at most `S_F`
/// of deficit and empty no active node's excess. So any plan needs at least
///
/// `bound = max(F + Σ⌈e_i/m⌉, F + ⌈(D − S_F)⁺/m⌉, Σ⌈d_i/m⌉)`
///
/// moves. With one-slot sites this is `F + max(E, D − F)`, `E = Σ e_i`.
///
/// With one-slot sites and no pins or labels the planner meets it exactly (see the crate
/// docs); otherwise the objective can be unreachable and the planner may stop short of
/// it with fewer moves.
pub fn lower_bound(cluster: &Cluster, policy: &Policy) -> Result<u64, PlanError> {
    let (st, classified) = rebalance_state(cluster, policy)?;
    Ok(bound(&st, &classified))
}

struct RawMove {
    site: u32,
    from: Option<u32>,
    from_id: NodeId,
    to: u32,
    reason: MoveReason,
}

/// Moves that bring the cluster to the balance objective of [`lower_bound`], in a safe
/// execution order, grouped into waves.
///
/// Sites without a node are ignored (use [`place`]). First the forced moves: sites on
/// nodes lacking their labels, then sites on drained, down or unknown nodes. Then balance
/// moves, each from the node furthest above its band (over capacity first) to the best
/// destination below its band, until no move improves the band without breaking it.
/// Pinned sites never move; held sites ([`crate::Site::balance_hold`]) move only when
/// forced or off a node over capacity; a site moves at most once per plan.
pub fn rebalance(cluster: &Cluster, policy: &Policy) -> Result<RebalancePlan, PlanError> {
    let (mut st, classified) = rebalance_state(cluster, policy)?;
    let lower_bound = bound(&st, &classified);
    let before = st.balance();
    let initial_load = st.load.clone();
    let mut moved = vec![false; st.sites.len()];
    let mut moves: Vec<RawMove> = Vec::new();
    let mut unplaced = classified.stuck;

    let mut relocate = |st: &mut State<'_>, s: u32, to: u32, reason: MoveReason| {
        let from = st.site_node[s as usize];
        let from_id = st.sites[s as usize]
            .node
            .clone()
            .unwrap_or_else(|| NodeId::new(""));
        st.remove(s);
        st.add(s, to);
        moves.push(RawMove {
            site: s,
            from,
            from_id,
            to,
            reason,
        });
    };

    for &(s, reason) in &classified.forced {
        moved[s as usize] = true;
        match st.choose(s, Tier::Free) {
            Some(n) => relocate(&mut st, s, n, reason),
            None => unplaced.push((s, st.unplaced_reason(s))),
        }
    }

    while st.excess > 0 || st.deficit > 0 {
        let Some(d) = st.top_donor() else { break };
        let i = d as usize;
        let load = st.load[i];
        let over_capacity = load > st.cap[i];
        let (max_tier, room) = if load > st.hi[i] {
            // Shed excess without dropping below the floor, unless over hard capacity.
            let room = if over_capacity { load } else { load - st.lo[i] };
            let tier = if over_capacity {
                Tier::Free
            } else {
                Tier::Ceil
            };
            (tier, room)
        } else if st.deficit > 0 && load > st.lo[i] {
            (Tier::Floor, load - st.lo[i])
        } else {
            break;
        };
        let excess = load.saturating_sub(st.hi[i]);
        let mut candidates: Vec<(u64, u64, u32, u32)> = st.node_sites[i]
            .iter()
            .copied()
            .filter(|&s| {
                let site = st.sites[s as usize];
                !site.pinned
                    && (!site.balance_hold || over_capacity)
                    && !moved[s as usize]
                    && u64::from(site.slots) <= room
            })
            .map(|s| {
                let slots = u64::from(st.sites[s as usize].slots);
                let gain = if excess > 0 { slots.min(excess) } else { slots };
                (gain, slots, st.tenant_on_node(s, d), s)
            })
            .collect();
        // Most excess removed per move, then the largest site (it fills more of a
        // deficit in one move), then the tenant most concentrated here, then id.
        candidates.sort_by_key(|&(gain, slots, tenant, s)| {
            (Reverse(gain), Reverse(slots), Reverse(tenant), s)
        });
        let mut done = false;
        for (_, _, _, s) in candidates {
            if let Some(to) = st.choose(s, max_tier) {
                moved[s as usize] = true;
                let reason = if over_capacity {
                    MoveReason::OverCapacity
                } else {
                    MoveReason::Balance
                };
                relocate(&mut st, s, to, reason);
                done = true;
                break;
            }
        }
        if !done {
            st.mark_stuck(d);
        }
    }

    let deferred_moves = match policy.max_moves {
        Some(max) if moves.len() > max as usize => {
            let deferred = moves.len() - max as usize;
            moves.truncate(max as usize);
            deferred as u32
        }
        _ => 0,
    };
    let after = if deferred_moves == 0 {
        st.balance()
    } else {
        let mut load = initial_load.clone();
        for m in &moves {
            let slots = u64::from(st.sites[m.site as usize].slots);
            if let Some(f) = m.from {
                load[f as usize] -= slots;
            }
            load[m.to as usize] += slots;
        }
        balance_of(
            (0..st.nodes.len())
                .filter(|&i| st.active[i])
                .map(|i| (load[i], st.cap[i])),
        )
    };
    let waves = assign_waves(&st, &moves, initial_load, policy);

    unplaced.sort_by_key(|(s, _)| *s);
    Ok(RebalancePlan {
        moves: moves
            .into_iter()
            .zip(waves)
            .map(|(m, wave)| Move {
                site: st.sites[m.site as usize].id.clone(),
                from: m.from_id,
                to: st.nodes[m.to as usize].id.clone(),
                slots: st.sites[m.site as usize].slots,
                wave,
                reason: m.reason,
            })
            .collect(),
        unplaced: unplaced
            .into_iter()
            .map(|(s, reason)| Unplaced {
                site: st.sites[s as usize].id.clone(),
                reason,
            })
            .collect(),
        lower_bound,
        deferred_moves,
        before,
        after,
    })
}

/// Cuts the move list into consecutive waves. A wave is closed when the next move would,
/// with every move of the wave still holding its old slot (start-first), push its
/// destination over hard capacity, or exceed the concurrency limits. Because the list is
/// safe sequentially, a move always fits in a fresh wave.
fn assign_waves(
    st: &State<'_>,
    moves: &[RawMove],
    mut load: Vec<u64>,
    policy: &Policy,
) -> Vec<u32> {
    let max_wave = policy.max_concurrent_moves.max(1) as usize;
    let max_per_node = policy.max_concurrent_moves_per_node.max(1);
    let mut waves = Vec::with_capacity(moves.len());
    let mut wave = 0u32;
    let mut current: Vec<usize> = Vec::new();
    let mut incoming: HashMap<u32, u64> = HashMap::new();
    let mut touches: HashMap<u32, u32> = HashMap::new();
    for (k, m) in moves.iter().enumerate() {
        let slots = u64::from(st.sites[m.site as usize].slots);
        let touch = |n: Option<u32>| n.map_or(0, |n| touches.get(&n).copied().unwrap_or(0));
        let fits = current.len() < max_wave
            && load[m.to as usize] + incoming.get(&m.to).copied().unwrap_or(0) + slots
                <= st.cap[m.to as usize]
            && touch(Some(m.to)) < max_per_node
            && touch(m.from) < max_per_node;
        if !fits && !current.is_empty() {
            for &j in &current {
                let done = &moves[j];
                let slots = u64::from(st.sites[done.site as usize].slots);
                if let Some(f) = done.from {
                    load[f as usize] -= slots;
                }
                load[done.to as usize] += slots;
            }
            current.clear();
            incoming.clear();
            touches.clear();
            wave += 1;
        }
        current.push(k);
        *incoming.entry(m.to).or_insert(0) += slots;
        *touches.entry(m.to).or_insert(0) += 1;
        if let Some(f) = m.from {
            *touches.entry(f).or_insert(0) += 1;
        }
        waves.push(wave);
    }
    waves
}
