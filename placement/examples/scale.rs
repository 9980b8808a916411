//! Planner at scale against a least-loaded first-fit baseline (what Swarm's `spread`
//! strategy does), printed as markdown tables for `docs/benchmarks.md`.
//!
//! `cargo run --release -p placement --example scale`
//!
//! Scenario A (issue 6): 4,000 workers of 25 slots in 40 failure domains, 100,000
//! one-slot sites of 20,000 tenants (skewed: the largest has ~700 sites); then 400 workers
//! (10%) join; then 40 workers are drained. Scenario B: the same workers with 60,000
//! sites on mixed plans (1, 2 and 4 slots, 90% of capacity), then 400 workers join.
//! Times are the median of 5 runs of the planner call alone (building the input is not
//! timed), as CPU time of the thread (robust on a shared machine) and wall time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use placement::{
    Availability, Cluster, Node, NodeId, Policy, Site, SiteId, TenantId, apply_moves,
    apply_placement, lower_bound, place, rebalance, utilisation,
};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

const WORKERS: usize = 4_000;
const DOMAINS: usize = 40;
const TENANTS: f64 = 20_000.0;

/// splitmix64: a fixed, dependency-free source of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn worker(i: usize) -> Node {
    let mut node = Node::worker(format!("w{i:05}"));
    node.failure_domain = Some(format!("rack{:02}", i % DOMAINS));
    node
}

fn sites(count: usize, mixed: bool, seed: u64) -> Vec<Site> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let u = rng.unit();
            let slots = if !mixed {
                1
            } else {
                match rng.next() % 10 {
                    0..=6 => 1,
                    7 | 8 => 2,
                    _ => 4,
                }
            };
            Site {
                id: SiteId::new(format!("s{i:06}")),
                tenant: TenantId::new(format!("t{:05}", (u * u * TENANTS) as u64)),
                slots,
                node: None,
                pinned: false,
                required_labels: Default::default(),
                balance_hold: false,
            }
        })
        .collect()
}

/// Time this thread has spent on a CPU (ns), from `/proc/thread-self/schedstat`: unlike
/// wall time it does not grow while other processes hold the cores.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Median wall and CPU time of 5 runs.
fn median<T>(mut run: impl FnMut() -> T) -> (T, Timing) {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut out = None;
    for _ in 0..5 {
        let (start, start_cpu) = (Instant::now(), cpu_ns());
        out = Some(run());
        wall.push(start.elapsed());
        cpu.push(Duration::from_nanos(cpu_ns().saturating_sub(start_cpu)));
    }
    wall.sort();
    cpu.sort();
    (
        out.unwrap(),
        Timing {
            wall: wall[2],
            cpu: cpu[2],
        },
    )
}

#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

/// Swarm's spread: each task to the active node with the fewest tasks that has room
/// (ties: lowest id), in site order; it never moves running tasks.
fn spread_baseline(cluster: &Cluster) -> HashMap<SiteId, NodeId> {
    let mut nodes: Vec<&Node> = cluster
        .nodes
        .iter()
        .filter(|n| n.availability == Availability::Active)
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let index: HashMap<&NodeId, usize> =
        nodes.iter().enumerate().map(|(i, n)| (&n.id, i)).collect();
    let mut tasks = vec![0u32; nodes.len()];
    let mut used = vec![0u32; nodes.len()];
    let mut out = HashMap::new();
    for site in &cluster.sites {
        if let Some(&i) = site.node.as_ref().and_then(|n| index.get(n)) {
            tasks[i] += 1;
            used[i] += site.slots;
            out.insert(site.id.clone(), nodes[i].id.clone());
        }
    }
    let mut order: BTreeSet<(u32, usize)> = (0..nodes.len()).map(|i| (tasks[i], i)).collect();
    for site in cluster.sites.iter().filter(|s| s.node.is_none()) {
        let found = order
            .iter()
            .copied()
            .find(|&(_, i)| used[i] + site.slots <= nodes[i].capacity_slots);
        if let Some((count, i)) = found {
            order.remove(&(count, i));
            tasks[i] += 1;
            used[i] += site.slots;
            order.insert((tasks[i], i));
            out.insert(site.id.clone(), nodes[i].id.clone());
        }
    }
    out
}

fn with_assignments(cluster: &Cluster, map: &HashMap<SiteId, NodeId>) -> Cluster {
    let mut c = cluster.clone();
    for s in &mut c.sites {
        s.node = map.get(&s.id).cloned();
    }
    c
}

fn balance(cluster: &Cluster) -> f64 {
    utilisation(cluster).balance.max_over_mean
}

/// Slots the `added` newest workers must reach: floor of their share of all slots.
fn floor_slots(cluster: &Cluster, added: usize) -> u64 {
    let total: u64 = cluster.sites.iter().map(|s| u64::from(s.slots)).sum();
    let capacity: u64 = cluster
        .nodes
        .iter()
        .map(|n| u64::from(n.capacity_slots))
        .sum();
    cluster.nodes[cluster.nodes.len() - added..]
        .iter()
        .map(|n| total * u64::from(n.capacity_slots) / capacity)
        .sum()
}

/// Sites sharing a node with an earlier site of the same tenant: Σ (count − 1) over
/// (tenant, node) pairs. 0 means every tenant's sites are on distinct workers.
fn colocated(cluster: &Cluster) -> usize {
    let mut pairs: HashMap<(&TenantId, &NodeId), usize> = HashMap::new();
    for s in &cluster.sites {
        if let Some(n) = &s.node {
            *pairs.entry((&s.tenant, n)).or_insert(0) += 1;
        }
    }
    pairs.values().map(|c| c - 1).sum()
}

fn ms(t: Timing) -> String {
    format!(
        "{:.0} ms CPU ({:.0} ms wall)",
        t.cpu.as_secs_f64() * 1e3,
        t.wall.as_secs_f64() * 1e3
    )
}

fn ratio(a: Timing, b: Timing) -> String {
    format!("{:.2}× CPU", a.cpu.as_secs_f64() / b.cpu.as_secs_f64())
}

fn row(metric: &str, planner: String, baseline: String, ratio: String) {
    println!("| {metric} | {planner} | {baseline} | {ratio} |");
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!("| Metric | Planner | Least-loaded first-fit (Swarm spread) | Planner / baseline |");
    println!("|---|---|---|---|");
}

fn scenario(name: &str, site_count: usize, mixed: bool, drain: bool) {
    let policy = Policy::default();
    let mut cluster = Cluster {
        nodes: (0..WORKERS).map(worker).collect(),
        sites: sites(site_count, mixed, 42),
    };
    let slots: u64 = cluster.sites.iter().map(|s| u64::from(s.slots)).sum();
    header(&format!(
        "{name}: {WORKERS} workers × 25 slots, {site_count} sites ({slots} slots)"
    ));

    // Initial placement.
    let (placement, t_place) = median(|| place(&cluster, &policy).unwrap());
    let (base_map, t_base) = median(|| spread_baseline(&cluster));
    let base = with_assignments(&cluster, &base_map);
    apply_placement(&mut cluster, &placement);
    let (b_plan, b_base) = (balance(&cluster), balance(&base));
    row(
        "initial placement: time",
        ms(t_place),
        ms(t_base),
        ratio(t_place, t_base),
    );
    row(
        "initial placement: sites placed",
        placement.assignments.len().to_string(),
        base_map.len().to_string(),
        String::new(),
    );
    row(
        "initial placement: max/mean utilisation",
        format!("{b_plan:.3}"),
        format!("{b_base:.3}"),
        format!("{:.3}", b_plan / b_base),
    );

    let (c_plan, c_base) = (colocated(&cluster), colocated(&base));
    row(
        "initial placement: sites co-located with a same-tenant site",
        c_plan.to_string(),
        c_base.to_string(),
        format!("{:.3}", c_plan as f64 / c_base.max(1) as f64),
    );

    // +10% workers.
    let added = WORKERS / 10;
    let mut grown = cluster.clone();
    let mut base_grown = base.clone();
    for i in WORKERS..WORKERS + added {
        grown.nodes.push(worker(i));
        base_grown.nodes.push(worker(i));
    }
    let (plan, t_rebalance) = median(|| rebalance(&grown, &policy).unwrap());
    let bound = lower_bound(&grown, &policy).unwrap();
    let mut after = grown.clone();
    apply_moves(&mut after, &plan.moves);
    // Baseline, honestly both ways: Swarm leaves running tasks alone (0 moves), or a
    // from-scratch respread on the grown cluster, counting sites whose node changed.
    let mut fresh = base_grown.clone();
    for s in &mut fresh.sites {
        s.node = None;
    }
    let (respread, t_respread) = median(|| spread_baseline(&fresh));
    let changed = base_map
        .iter()
        .filter(|(site, node)| respread.get(*site) != Some(*node))
        .count();
    let respread_balance = balance(&with_assignments(&fresh, &respread));
    let waves = plan.moves.last().map_or(0, |m| m.wave + 1);
    println!("| **+{added} workers (10%)** | | | |");
    row(
        "rebalance: time",
        ms(t_rebalance),
        format!("0 (no moves); respread {}", ms(t_respread)),
        String::new(),
    );
    row(
        "rebalance: moves",
        format!("{} (lower bound {bound}, {waves} waves)", plan.moves.len()),
        format!("0 (no moves); respread {changed} changed"),
        format!(
            "— ; {:.3}× respread",
            plan.moves.len() as f64 / changed.max(1) as f64
        ),
    );
    let moved_slots: u64 = plan.moves.iter().map(|m| u64::from(m.slots)).sum();
    row(
        "rebalance: slots moved (new workers' floor)",
        format!("{moved_slots} ({})", floor_slots(&grown, added)),
        String::new(),
        String::new(),
    );
    row(
        "rebalance: moves / lower bound",
        format!("{:.3}", plan.moves.len() as f64 / bound.max(1) as f64),
        String::new(),
        String::new(),
    );
    let b_after = balance(&after);
    let b_none = balance(&base_grown);
    row(
        "after: max/mean utilisation",
        format!("{b_after:.3}"),
        format!("{b_none:.3} (no moves); {respread_balance:.3} (respread)"),
        format!(
            "{:.3} ; {:.3}",
            b_after / b_none,
            b_after / respread_balance
        ),
    );

    if drain {
        // Drain 40 workers (1%) of the rebalanced map.
        let mut drained = after.clone();
        let mut base_drained = base_grown.clone();
        let mut on_drained = 0;
        for i in 0..WORKERS / 100 {
            let id = NodeId::new(format!("w{:05}", i * 100 + 7));
            for c in [&mut drained, &mut base_drained] {
                for n in &mut c.nodes {
                    if n.id == id {
                        n.availability = Availability::Drain;
                    }
                }
            }
            on_drained += after
                .sites
                .iter()
                .filter(|s| s.node.as_ref() == Some(&id))
                .count();
        }
        let (plan, t_drain) = median(|| rebalance(&drained, &policy).unwrap());
        let bound = lower_bound(&drained, &policy).unwrap();
        let mut done = drained.clone();
        apply_moves(&mut done, &plan.moves);
        // Swarm reschedules the drained tasks with spread over the remaining nodes.
        let mut pending = base_drained.clone();
        let drained_ids: BTreeSet<NodeId> = pending
            .nodes
            .iter()
            .filter(|n| n.availability != Availability::Active)
            .map(|n| n.id.clone())
            .collect();
        let mut base_moves = 0;
        for s in &mut pending.sites {
            if s.node.as_ref().is_some_and(|n| drained_ids.contains(n)) {
                s.node = None;
                base_moves += 1;
            }
        }
        let base_done = with_assignments(&pending, &spread_baseline(&pending));
        println!("| **drain 40 workers (1%)** | | | |");
        row("drain: time", ms(t_drain), String::new(), String::new());
        row(
            "drain: moves",
            format!(
                "{} (lower bound {bound}; {on_drained} sites on drained)",
                plan.moves.len()
            ),
            base_moves.to_string(),
            format!("{:.3}", plan.moves.len() as f64 / base_moves.max(1) as f64),
        );
        let (b1, b2) = (balance(&done), balance(&base_done));
        row(
            "after drain: max/mean utilisation",
            format!("{b1:.3}"),
            format!("{b2:.3}"),
            format!("{:.3}", b1 / b2),
        );
    }
}

fn main() {
    scenario("A (issue 6)", 100_000, false, true);
    scenario("B (mixed plans)", 60_000, true, false);
}
