//! Input and output types of the planner.
//!
//! These are the types the platform serialises as JSON (`GET /v1/placement`,
//! `POST /v1/placement/rebalance`), so every public type derives `Serialize` and
//! `Deserialize`, and identifiers are newtypes so a site id cannot be passed where a node
//! id is expected. Slots are whole units of worker capacity: a worker has
//! [`DEFAULT_WORKER_SLOTS`] and a site's plan uses one or more.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Slots on a standard worker: 25 one-slot sites.
pub const DEFAULT_WORKER_SLOTS: u32 = 25;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps an identifier that the caller has already parsed.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// A Swarm worker node (its Swarm node id or hostname, as the platform chooses).
    NodeId
);
id_type!(
    /// A WordPress site.
    SiteId
);
id_type!(
    /// The tenant (customer) that owns a site; used to spread a tenant's sites.
    TenantId
);

/// Whether a node may receive sites. Mirrors Swarm's node availability, plus `Down` for a
/// node the platform has declared failed (after its grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Receives new sites and moves.
    Active,
    /// Being emptied by an operator: receives nothing, its sites are moved away.
    Drain,
    /// Failed: receives nothing, its sites are re-placed elsewhere.
    Down,
}

/// A worker as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// Hard capacity in slots; never exceeded by a plan, not even during a move.
    pub capacity_slots: u32,
    /// Node labels (Swarm `node.labels`), matched against a site's required labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub availability: Availability,
    /// Rack, zone or host group. A tenant's sites are spread over domains, then nodes.
    /// A node without one counts as a domain of its own.
    #[serde(default)]
    pub failure_domain: Option<String>,
}

impl Node {
    /// An active standard worker with [`DEFAULT_WORKER_SLOTS`], no labels, no domain.
    pub fn worker(id: impl Into<NodeId>) -> Self {
        Self {
            id: id.into(),
            capacity_slots: DEFAULT_WORKER_SLOTS,
            labels: BTreeMap::new(),
            availability: Availability::Active,
            failure_domain: None,
        }
    }
}

/// A site as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub id: SiteId,
    pub tenant: TenantId,
    /// Slots used, from the site's plan (at least 1).
    pub slots: u32,
    /// Where the site runs now; `None` for a site not yet placed.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// A pinned site is never moved by the planner (not even off a drained node).
    #[serde(default)]
    pub pinned: bool,
    /// Every entry must be present with the same value in the node's labels.
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    /// Not moved for balance (it moved recently: every move restarts its task); still
    /// moved off a drained, down or unknown node, a node lacking its labels, or a node
    /// over capacity.
    #[serde(default)]
    pub balance_hold: bool,
}

/// The map the planner works on: all nodes and all sites.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub sites: Vec<Site>,
}

/// Knobs of the planner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Slots kept free on every node: placement and moves never fill a node past
    /// `capacity - headroom`, and the balance band is computed on that usable capacity.
    /// A node already above it is not evacuated for that alone; its excess over the band
    /// is moved like any other.
    pub headroom_slots: u32,
    /// Prefer nodes, then failure domains, holding fewer sites of the same tenant.
    pub spread_tenants: bool,
    /// Moves in one wave (run concurrently). 0 is treated as 1.
    pub max_concurrent_moves: u32,
    /// Moves in one wave touching the same node, as source or destination. 0 is treated as
    /// 1. A source no longer in the map is not counted: it has no running task to protect.
    pub max_concurrent_moves_per_node: u32,
    /// Cap on the moves of one plan; the rest is reported as `deferred_moves`.
    pub max_moves: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            headroom_slots: 0,
            spread_tenants: true,
            max_concurrent_moves: 10,
            max_concurrent_moves_per_node: 2,
            max_moves: None,
        }
    }
}

/// A new site and the node it goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub site: SiteId,
    pub node: NodeId,
}

/// Why a site could not be placed (or moved off an unavailable node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum UnplacedReason {
    /// No node is active.
    NoActiveNodes,
    /// No active node carries the site's required labels.
    NoMatchingLabels,
    /// The site needs more slots than any matching node has (after headroom), even empty.
    LargerThanAnyNode {
        slots: u32,
        largest_usable_slots: u32,
    },
    /// Matching nodes exist but none has enough free slots left.
    InsufficientCapacity { slots: u32, largest_free_slots: u32 },
    /// The site is pinned to a node that is draining, down or unknown.
    PinnedToUnavailableNode { node: NodeId },
}

impl fmt::Display for UnplacedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoActiveNodes => f.write_str("no active node"),
            Self::NoMatchingLabels => f.write_str("no active node has the required labels"),
            Self::LargerThanAnyNode {
                slots,
                largest_usable_slots,
            } => write!(
                f,
                "needs {slots} slots, the largest matching node has {largest_usable_slots}"
            ),
            Self::InsufficientCapacity {
                slots,
                largest_free_slots,
            } => write!(
                f,
                "needs {slots} slots, the most free on a matching node is {largest_free_slots}"
            ),
            Self::PinnedToUnavailableNode { node } => {
                write!(f, "pinned to unavailable node {node}")
            }
        }
    }
}

/// A site the planner could not place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub site: SiteId,
    pub reason: UnplacedReason,
}

/// Result of [`crate::place`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// In planning order (largest sites first, then by id).
    pub assignments: Vec<Assignment>,
    /// Sorted by site id.
    pub unplaced: Vec<Unplaced>,
}

/// Why a site is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// Its node is draining, down or no longer known.
    Evacuate,
    /// Its node no longer carries the site's required labels.
    LabelMismatch,
    /// Its node is over capacity (a plan grew).
    OverCapacity,
    /// To bring utilisation within the balance band.
    Balance,
}

/// One reschedule of a site (a service update of its constraint, `start-first`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub site: SiteId,
    pub from: NodeId,
    pub to: NodeId,
    pub slots: u32,
    /// Moves of the same wave may run concurrently; wave `n + 1` starts when every move
    /// of wave `n` has finished (old task stopped).
    pub wave: u32,
    pub reason: MoveReason,
}

/// Utilisation summary over active nodes (load / capacity).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Balance {
    pub active_nodes: u32,
    pub used_slots: u64,
    pub capacity_slots: u64,
    /// used / capacity over active nodes.
    pub mean_utilisation: f64,
    pub max_utilisation: f64,
    pub min_utilisation: f64,
    /// max / mean; 1.0 is perfect balance.
    pub max_over_mean: f64,
}

/// Result of [`crate::rebalance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebalancePlan {
    /// In execution order; see the crate docs for why this order is safe.
    pub moves: Vec<Move>,
    /// Sites that must leave their node but have nowhere to go, sorted by site id.
    pub unplaced: Vec<Unplaced>,
    /// [`crate::lower_bound`] for the same input.
    pub lower_bound: u64,
    /// Moves planned but cut by `Policy::max_moves`; plan again after executing.
    pub deferred_moves: u32,
    pub before: Balance,
    /// Balance once `moves` have run.
    pub after: Balance,
}

/// Utilisation of one node, for `GET /v1/placement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeUtilisation {
    pub node: NodeId,
    pub availability: Availability,
    pub used_slots: u64,
    pub capacity_slots: u32,
    pub sites: u32,
    pub utilisation: f64,
}

/// Input the planner refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum PlanError {
    DuplicateNode { node: NodeId },
    DuplicateSite { site: SiteId },
    ZeroSlots { site: SiteId },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateNode { node } => write!(f, "node {node} appears twice"),
            Self::DuplicateSite { site } => write!(f, "site {site} appears twice"),
            Self::ZeroSlots { site } => write!(f, "site {site} has a plan of zero slots"),
        }
    }
}

impl std::error::Error for PlanError {}

/// The map's utilisation, for `GET /v1/placement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utilisation {
    /// Sorted by node id.
    pub nodes: Vec<NodeUtilisation>,
    /// Over active nodes.
    pub balance: Balance,
    /// Sites without a node, or on a node not in the map.
    pub unassigned_sites: u32,
}
