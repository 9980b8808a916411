//! The planner's working state: nodes and sites by index, loads, the balance band and
//! the ordered indexes that make each decision O(log n) instead of a scan of all nodes.
//!
//! Everything is keyed by position in id-sorted vectors, and every ordered index breaks
//! ties by that position, so the result never depends on input order or hash order.

use crate::model::{Availability, Balance, Cluster, Node, PlanError, Policy, Site, UnplacedReason};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How far a destination may be filled, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tier {
    /// Up to the node's band floor: fills a deficit, never creates excess.
    Floor,
    /// Up to the band ceiling: within the band, never creates excess.
    Ceil,
    /// Up to usable capacity (capacity minus headroom): last resort, may leave imbalance.
    Free,
}

type SlackKey = (Reverse<i64>, u32);
/// (over hard capacity, load above ceiling, load above floor, node), largest first.
type DonorKey = (Reverse<i64>, Reverse<i64>, Reverse<i64>, u32);

pub(crate) struct State<'a> {
    pub nodes: Vec<&'a Node>,
    pub sites: Vec<&'a Site>,
    pub cap: Vec<u64>,
    pub usable: Vec<u64>,
    pub active: Vec<bool>,
    pub load: Vec<u64>,
    pub lo: Vec<u64>,
    pub hi: Vec<u64>,
    /// Index of the node a site is on; `None` if unplaced or on a node not in the input.
    pub site_node: Vec<Option<u32>>,
    /// Sorted site indices per node (a few dozen each: a sorted `Vec` beats a tree).
    pub node_sites: Vec<Vec<u32>>,
    /// Σ max(0, lo - load) and Σ max(0, load - hi) over active nodes.
    pub deficit: u64,
    pub excess: u64,
    domain: Vec<Option<u32>>,
    active_domains: usize,
    domainless_active: bool,
    site_tenant: Vec<u32>,
    tenant_nodes: Vec<Counts>,
    tenant_domains: Vec<Counts>,
    by_slack: BTreeSet<SlackKey>,
    by_free: BTreeSet<SlackKey>,
    donors: BTreeSet<DonorKey>,
    stuck: Vec<bool>,
    indexed: bool,
    /// Only rebalancing needs the donor index.
    track_donors: bool,
    spread: bool,
}

fn labels_match(site: &Site, node: &Node) -> bool {
    site.required_labels
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
}

impl<'a> State<'a> {
    pub fn new(cluster: &'a Cluster, policy: &Policy) -> Result<Self, PlanError> {
        let mut nodes: Vec<&Node> = cluster.nodes.iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in nodes.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(PlanError::DuplicateNode {
                    node: pair[0].id.clone(),
                });
            }
        }
        let mut sites: Vec<&Site> = cluster.sites.iter().collect();
        sites.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in sites.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(PlanError::DuplicateSite {
                    site: pair[0].id.clone(),
                });
            }
        }
        if let Some(site) = sites.iter().find(|s| s.slots == 0) {
            return Err(PlanError::ZeroSlots {
                site: site.id.clone(),
            });
        }

        let n = nodes.len();
        let index: HashMap<&str, u32> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.id.as_str(), i as u32))
            .collect();
        let cap: Vec<u64> = nodes.iter().map(|x| u64::from(x.capacity_slots)).collect();
        let usable: Vec<u64> = nodes
            .iter()
            .map(|x| u64::from(x.capacity_slots.saturating_sub(policy.headroom_slots)))
            .collect();
        let active: Vec<bool> = nodes
            .iter()
            .map(|x| x.availability == Availability::Active)
            .collect();

        let mut domain_ids: BTreeMap<&str, u32> = BTreeMap::new();
        let mut domain = Vec::with_capacity(n);
        let mut active_domain_set = BTreeSet::new();
        let mut domainless_active = false;
        for (i, node) in nodes.iter().enumerate() {
            let d = node.failure_domain.as_deref().map(|name| {
                let next = domain_ids.len() as u32;
                *domain_ids.entry(name).or_insert(next)
            });
            if active[i] {
                match d {
                    Some(d) => {
                        active_domain_set.insert(d);
                    }
                    None => domainless_active = true,
                }
            }
            domain.push(d);
        }

        // Numbered by first appearance in id order; the numbers are never compared.
        let mut tenant_ids: HashMap<&str, u32> = HashMap::new();
        let site_tenant: Vec<u32> = sites
            .iter()
            .map(|s| {
                let next = tenant_ids.len() as u32;
                *tenant_ids.entry(s.tenant.as_str()).or_insert(next)
            })
            .collect();

        let mut state = State {
            cap,
            usable,
            active,
            load: vec![0; n],
            lo: vec![0; n],
            hi: vec![0; n],
            site_node: vec![None; sites.len()],
            node_sites: vec![Vec::new(); n],
            deficit: 0,
            excess: 0,
            domain,
            active_domains: active_domain_set.len(),
            domainless_active,
            site_tenant,
            tenant_nodes: vec![Counts::default(); tenant_ids.len()],
            tenant_domains: vec![Counts::default(); tenant_ids.len()],
            by_slack: BTreeSet::new(),
            by_free: BTreeSet::new(),
            donors: BTreeSet::new(),
            stuck: vec![false; n],
            indexed: false,
            track_donors: false,
            spread: policy.spread_tenants,
            nodes,
            sites,
        };
        for s in 0..state.sites.len() {
            let site = state.sites[s];
            if let Some(&node) = site.node.as_ref().and_then(|id| index.get(id.as_str())) {
                state.add(s as u32, node);
            }
        }
        Ok(state)
    }

    /// Slots used on active nodes.
    pub fn active_load(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|&i| self.active[i])
            .map(|i| self.load[i])
            .sum()
    }

    /// Fixes the balance band for `total` slots spread over active nodes in proportion to
    /// usable capacity, then builds the indexes. Called once per plan.
    pub fn set_band(&mut self, total: u64, track_donors: bool) {
        self.track_donors = track_donors;
        let capacity: u64 = (0..self.nodes.len())
            .filter(|&i| self.active[i])
            .map(|i| self.usable[i])
            .sum();
        for i in 0..self.nodes.len() {
            if !self.active[i] || capacity == 0 {
                continue;
            }
            let share = u128::from(total) * u128::from(self.usable[i]);
            let floor = (share / u128::from(capacity)) as u64;
            let ceil = share.div_ceil(u128::from(capacity)) as u64;
            self.lo[i] = floor.min(self.usable[i]);
            self.hi[i] = ceil.min(self.usable[i]);
        }
        self.indexed = true;
        for i in 0..self.nodes.len() as u32 {
            if self.active[i as usize] {
                self.insert_keys(i);
            }
        }
    }

    fn insert_keys(&mut self, n: u32) {
        let i = n as usize;
        let load = self.load[i] as i64;
        self.by_slack.insert((Reverse(self.lo[i] as i64 - load), n));
        self.by_free
            .insert((Reverse(self.usable[i] as i64 - load), n));
        if self.track_donors && !self.stuck[i] {
            self.donors.insert(self.donor_key(n));
        }
        self.deficit += self.lo[i].saturating_sub(self.load[i]);
        self.excess += self.load[i].saturating_sub(self.hi[i]);
    }

    fn remove_keys(&mut self, n: u32) {
        let i = n as usize;
        let load = self.load[i] as i64;
        self.by_slack
            .remove(&(Reverse(self.lo[i] as i64 - load), n));
        self.by_free
            .remove(&(Reverse(self.usable[i] as i64 - load), n));
        if self.track_donors {
            let key = self.donor_key(n);
            self.donors.remove(&key);
        }
        self.deficit -= self.lo[i].saturating_sub(self.load[i]);
        self.excess -= self.load[i].saturating_sub(self.hi[i]);
    }

    fn donor_key(&self, n: u32) -> DonorKey {
        let i = n as usize;
        let load = self.load[i] as i64;
        (
            Reverse((load - self.cap[i] as i64).max(0)),
            Reverse(load - self.hi[i] as i64),
            Reverse(load - self.lo[i] as i64),
            n,
        )
    }

    fn change_load(&mut self, n: u32, add: bool, slots: u64) {
        let indexed = self.indexed && self.active[n as usize];
        if indexed {
            self.remove_keys(n);
        }
        let load = &mut self.load[n as usize];
        if add {
            *load += slots;
        } else {
            *load -= slots;
        }
        if indexed {
            self.insert_keys(n);
        }
    }

    /// Puts site `s` (currently nowhere) on node `n`.
    pub fn add(&mut self, s: u32, n: u32) {
        let slots = u64::from(self.sites[s as usize].slots);
        self.change_load(n, true, slots);
        let list = &mut self.node_sites[n as usize];
        if let Err(pos) = list.binary_search(&s) {
            list.insert(pos, s);
        }
        self.site_node[s as usize] = Some(n);
        if self.active[n as usize] {
            let t = self.site_tenant[s as usize] as usize;
            self.tenant_nodes[t].increment(n);
            if let Some(d) = self.domain[n as usize] {
                self.tenant_domains[t].increment(d);
            }
        }
    }

    /// Takes site `s` off its node, if any.
    pub fn remove(&mut self, s: u32) {
        let Some(n) = self.site_node[s as usize] else {
            return;
        };
        let slots = u64::from(self.sites[s as usize].slots);
        self.change_load(n, false, slots);
        let list = &mut self.node_sites[n as usize];
        if let Ok(pos) = list.binary_search(&s) {
            list.remove(pos);
        }
        self.site_node[s as usize] = None;
        if self.active[n as usize] {
            let t = self.site_tenant[s as usize] as usize;
            self.tenant_nodes[t].decrement(n);
            if let Some(d) = self.domain[n as usize] {
                self.tenant_domains[t].decrement(d);
            }
        }
    }

    pub fn labels_ok(&self, s: u32, n: u32) -> bool {
        labels_match(self.sites[s as usize], self.nodes[n as usize])
    }

    /// Sites of `s`'s tenant on node `n`.
    pub fn tenant_on_node(&self, s: u32, n: u32) -> u32 {
        let t = self.site_tenant[s as usize] as usize;
        self.tenant_nodes[t].get(n)
    }

    /// (sites of the tenant on the node, in the node's domain): smaller is better spread.
    fn spread_key(&self, s: u32, n: u32) -> (u32, u32) {
        if !self.spread {
            return (0, 0);
        }
        let t = self.site_tenant[s as usize] as usize;
        let on_node = self.tenant_nodes[t].get(n);
        let in_domain = match self.domain[n as usize] {
            Some(d) => self.tenant_domains[t].get(d),
            None => on_node,
        };
        (on_node, in_domain)
    }

    /// A key no node can beat; finding it ends the search early.
    fn best_possible_spread(&self, s: u32) -> (u32, u32) {
        if !self.spread {
            return (0, 0);
        }
        let t = self.site_tenant[s as usize] as usize;
        let domains = &self.tenant_domains[t];
        if self.domainless_active || domains.len() < self.active_domains {
            (0, 0)
        } else {
            (0, domains.min_count())
        }
    }

    /// The best destination for site `s` filling at most to `max_tier`: the lowest tier,
    /// then the best tenant spread, then the most room below the band floor (or, in the
    /// `Free` tier, the most free slots), then node id. Never the site's own node.
    pub fn choose(&self, s: u32, max_tier: Tier) -> Option<u32> {
        let slots = u64::from(self.sites[s as usize].slots);
        let need = slots as i64;
        let target = self.best_possible_spread(s);
        let own = self.site_node[s as usize];
        for tier in [Tier::Floor, Tier::Ceil, Tier::Free] {
            if tier > max_tier {
                break;
            }
            let (index, min_key) = match tier {
                Tier::Floor => (&self.by_slack, need),
                // hi - lo is at most 1, so every node with room below hi has slack >= need - 1.
                Tier::Ceil => (&self.by_slack, need - 1),
                Tier::Free => (&self.by_free, need),
            };
            let mut best: Option<((u32, u32), u32)> = None;
            for &(Reverse(key), n) in index {
                if key < min_key {
                    break;
                }
                let i = n as usize;
                let limit = match tier {
                    Tier::Floor => self.lo[i],
                    Tier::Ceil => self.hi[i],
                    Tier::Free => self.usable[i],
                };
                if self.load[i] + slots > limit || own == Some(n) || !self.labels_ok(s, n) {
                    continue;
                }
                let spread = self.spread_key(s, n);
                if spread == target {
                    return Some(n);
                }
                if best.is_none_or(|(b, _)| spread < b) {
                    best = Some((spread, n));
                }
            }
            if let Some((_, n)) = best {
                return Some(n);
            }
        }
        None
    }

    /// Why site `s` has no destination now.
    pub fn unplaced_reason(&self, s: u32) -> UnplacedReason {
        let slots = self.sites[s as usize].slots;
        if !self.active.iter().any(|&a| a) {
            return UnplacedReason::NoActiveNodes;
        }
        let mut matching = false;
        let mut largest_usable = 0;
        let mut largest_free = 0;
        for n in 0..self.nodes.len() as u32 {
            let i = n as usize;
            if !self.active[i] || !self.labels_ok(s, n) {
                continue;
            }
            matching = true;
            largest_usable = largest_usable.max(self.usable[i]);
            largest_free = largest_free.max(self.usable[i].saturating_sub(self.load[i]));
        }
        if !matching {
            UnplacedReason::NoMatchingLabels
        } else if largest_usable < u64::from(slots) {
            UnplacedReason::LargerThanAnyNode {
                slots,
                largest_usable_slots: largest_usable as u32,
            }
        } else {
            UnplacedReason::InsufficientCapacity {
                slots,
                largest_free_slots: largest_free as u32,
            }
        }
    }

    /// The donor to consider next: over capacity first, then furthest above its ceiling,
    /// then furthest above its floor.
    pub fn top_donor(&self) -> Option<u32> {
        self.donors.first().map(|k| k.3)
    }

    /// Takes a node out of the donor index for the rest of the plan: none of its sites can
    /// move anywhere useful, and destinations only fill up, so that stays true.
    pub fn mark_stuck(&mut self, n: u32) {
        let key = self.donor_key(n);
        self.donors.remove(&key);
        self.stuck[n as usize] = true;
    }

    pub fn balance(&self) -> Balance {
        balance_of(
            (0..self.nodes.len())
                .filter(|&i| self.active[i])
                .map(|i| (self.load[i], self.cap[i])),
        )
    }
}

/// Counts of one tenant's sites per node (or per domain), sorted by key. Most tenants
/// have a handful of sites, so a sorted `Vec` is smaller and faster than a map.
#[derive(Debug, Clone, Default)]
struct Counts(Vec<(u32, u32)>);

impl Counts {
    fn get(&self, key: u32) -> u32 {
        match self.0.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    fn increment(&mut self, key: u32) {
        match self.0.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => self.0[i].1 += 1,
            Err(i) => self.0.insert(i, (key, 1)),
        }
    }

    fn decrement(&mut self, key: u32) {
        if let Ok(i) = self.0.binary_search_by_key(&key, |e| e.0) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.remove(i);
            }
        }
    }

    /// Keys with a non-zero count.
    fn len(&self) -> usize {
        self.0.len()
    }

    fn min_count(&self) -> u32 {
        self.0.iter().map(|e| e.1).min().unwrap_or(0)
    }
}

/// Balance of (used, capacity) pairs of active nodes.
pub(crate) fn balance_of(nodes: impl Iterator<Item = (u64, u64)>) -> Balance {
    let mut b = Balance {
        min_utilisation: f64::INFINITY,
        ..Balance::default()
    };
    for (used, cap) in nodes {
        b.active_nodes += 1;
        b.used_slots += used;
        b.capacity_slots += cap;
        let u = if cap == 0 {
            0.0
        } else {
            used as f64 / cap as f64
        };
        b.max_utilisation = b.max_utilisation.max(u);
        b.min_utilisation = b.min_utilisation.min(u);
    }
    if b.active_nodes == 0 {
        b.min_utilisation = 0.0;
    }
    if b.capacity_slots > 0 {
        b.mean_utilisation = b.used_slots as f64 / b.capacity_slots as f64;
    }
    b.max_over_mean = if b.mean_utilisation > 0.0 {
        b.max_utilisation / b.mean_utilisation
    } else {
        1.0
    };
    b
}
