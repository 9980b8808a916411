//! Automatic placement at run time: the map of sites on workers from the database, the
//! planner's moves (`placement` crate), and the loop that reacts to workers joining,
//! draining and failing. Each move is a `site.move` operation (`crate::sagas::site_move`).
//!
//! A move is a reschedule: the site's files are on Gluster and its database is remote, so
//! the platform changes the service's constraint to the new worker and swarm starts the
//! new task first (`start-first`), waits for its health check (the agent's `/readyz`),
//! then stops the old one.
//!
//! Hysteresis: moves off drained, failed or over-full workers start at the first pass
//! that sees them. A balance move restarts a site's task for a better spread only, so it
//! waits for a lasting imbalance ([`placement::BalanceGate`]: the same workers over their
//! share in `balance_after_passes` consecutive passes spanning `balance_after_secs`), and
//! a site moved within `move_cooldown_secs` is not moved again for balance
//! ([`placement::Site::balance_hold`]). Without this, counts that move for a moment
//! (twenty sites being deleted) moved a site from one worker to the other and back
//! within ten seconds. The gate lives in the loop's memory: a restart or another
//! replica taking the loop over only delays balance moves.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use placement::{
    Availability, BalanceGate, BalanceVerdict, Cluster, MoveReason, Policy, RebalancePlan,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::MySqlPool;
use utoipa::ToSchema;

use crate::{
    actor::Actor,
    audit::{self, Event},
    config::PlacementConfig,
    provision::Backends,
    states::OperationKind,
};

/// One worker on the map.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MapNode {
    pub id: String,
    pub name: String,
    /// active, drain or down.
    pub availability: String,
    /// Since when the swarm reports it down.
    pub down_since: Option<chrono::DateTime<chrono::Utc>>,
    pub slots: u32,
    pub used_slots: u64,
    /// used / slots.
    pub utilisation: f64,
    pub sites: Vec<MapSite>,
}

/// A site on the map.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MapSite {
    pub id: String,
    pub domain: String,
    pub tenant_id: String,
    pub state: String,
    pub slots: u32,
    pub pinned: bool,
}

/// A move, planned or carried out, with names a person can read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MoveView {
    pub site: String,
    pub domain: String,
    pub from: String,
    pub to: String,
    pub slots: u32,
    /// evacuate, label_mismatch, over_capacity or balance.
    pub reason: String,
    /// Planned moves: moves of one wave may run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// Carried out: the operation, its state and its timings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// From the start of the reschedule to the site ready on its new worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_ready: Option<f64>,
    /// From the move's request to its end (old task gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_total: Option<f64>,
}

/// `GET /v1/placement`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlacementMap {
    pub nodes: Vec<MapNode>,
    /// Over active workers.
    #[schema(value_type = Object)]
    pub balance: placement::Balance,
    /// The moves a rebalance would make now (waiting for approval when
    /// `placement.rebalance = "approve"`).
    pub proposed: Vec<MoveView>,
    /// The latest moves, newest first.
    pub recent_moves: Vec<MoveView>,
}

/// `POST /v1/placement/rebalance`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRequest {
    /// Only show the moves (the default).
    #[serde(default = "yes")]
    pub dry_run: bool,
    /// At most this many moves (1 to 1000).
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_moves: Option<u32>,
}

fn yes() -> bool {
    true
}

/// The answer of a rebalance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RebalanceAnswer {
    pub dry_run: bool,
    pub moves: Vec<MoveView>,
    /// The fewest moves any plan needs for this change (the planner's bound).
    pub lower_bound: u64,
    /// Moves left for a later plan (`max_moves`).
    pub deferred_moves: u32,
    /// Sites that fit nowhere, with the reason.
    pub unplaced: Vec<String>,
    #[schema(value_type = Object)]
    pub before: placement::Balance,
    #[schema(value_type = Object)]
    pub after: placement::Balance,
    /// The `site.move` operations started (apply only).
    pub operations: Vec<String>,
}

/// The database's view, in the planner's types, with the names to show.
struct Loaded {
    cluster: Cluster,
    pending: std::collections::BTreeSet<String>,
    nodes: BTreeMap<String, (String, Option<chrono::DateTime<chrono::Utc>>)>,
    sites: BTreeMap<String, MapSite>,
}

pub fn policy(config: &PlacementConfig) -> Policy {
    Policy {
        headroom_slots: config.headroom_slots,
        spread_tenants: true,
        max_concurrent_moves: config.max_concurrent_moves,
        max_concurrent_moves_per_node: config.max_moves_per_node,
        max_moves: None,
    }
}

/// Workers and placed sites. A site with an operation under way, not yet serving
/// (`provisioning`) or pinned by staff stays where it is; so do the sites of a worker down
/// for less than the grace period (it may come back). A site moved within
/// `move_cooldown_secs` is held: not moved for balance.
async fn load(db: &mut sqlx::MySqlConnection, config: &PlacementConfig) -> anyhow::Result<Loaded> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        String,
        String,
        String,
        i32,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        bool,
    )> = sqlx::query_as(
        "SELECT id, name, availability, slots, failure_domain, down_since, \
             (down_since IS NOT NULL AND down_since > NOW(6) - INTERVAL ? SECOND) AS in_grace \
             FROM nodes WHERE role = 'worker' ORDER BY name",
    )
    .bind(i64::try_from(config.down_grace_secs).unwrap_or(i64::MAX))
    .fetch_all(&mut *db)
    .await?;
    let mut cluster = Cluster::default();
    let mut nodes = BTreeMap::new();
    let mut in_grace = std::collections::BTreeSet::new();
    let mut pending = std::collections::BTreeSet::new();
    for (id, name, availability, slots, domain, down_since, grace) in rows {
        if availability == "pending" {
            pending.insert(id.clone());
        }
        let availability = match availability.as_str() {
            "active" => Availability::Active,
            // Not ready for sites yet: receives none (and has none to move).
            "drain" | "pending" => Availability::Drain,
            _ => Availability::Down,
        };
        if availability == Availability::Down && grace {
            in_grace.insert(id.clone());
        }
        cluster.nodes.push(placement::Node {
            id: id.clone().into(),
            capacity_slots: u32::try_from(slots).unwrap_or(0),
            labels: BTreeMap::new(),
            availability,
            failure_domain: (!domain.is_empty()).then_some(domain),
        });
        nodes.insert(id, (name, down_since));
    }
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, String, String, String, i32, String, bool, bool)> = sqlx::query_as(
        "SELECT s.id, s.primary_domain, s.tenant_id, s.state, pl.slots, pl.node_id, s.pinned, \
         EXISTS (SELECT 1 FROM operations o WHERE o.target_type = 'site' AND o.target_id = s.id \
                 AND o.state IN ('pending', 'running', 'unwinding')) AS busy \
         FROM sites s JOIN placements pl ON pl.site_id = s.id \
         WHERE s.state NOT IN ('deleted', 'failed') ORDER BY s.seq",
    )
    .fetch_all(&mut *db)
    .await?;
    // Failed moves count too: the site's task was restarted there and back.
    let held: std::collections::BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT site_id FROM site_moves \
         WHERE COALESCE(finished_at, created_at) > NOW(6) - INTERVAL ? SECOND",
    )
    .bind(i64::try_from(config.move_cooldown_secs).unwrap_or(i64::MAX))
    .fetch_all(&mut *db)
    .await?
    .into_iter()
    .collect();
    let mut sites = BTreeMap::new();
    for (id, domain, tenant, state, slots, node, pinned, busy) in rows {
        let movable = !busy && matches!(state.as_str(), "active" | "degraded" | "suspended");
        cluster.sites.push(placement::Site {
            id: id.clone().into(),
            tenant: tenant.clone().into(),
            slots: u32::try_from(slots).unwrap_or(1).max(1),
            node: Some(node.clone().into()),
            pinned: pinned || !movable || in_grace.contains(&node),
            required_labels: BTreeMap::new(),
            balance_hold: held.contains(&id),
        });
        sites.insert(
            id.clone(),
            MapSite {
                id,
                domain,
                tenant_id: tenant,
                state,
                slots: u32::try_from(slots).unwrap_or(1),
                pinned,
            },
        );
    }
    Ok(Loaded {
        cluster,
        pending,
        nodes,
        sites,
    })
}

/// A new site to place (keyed by its id): its tenant and the slots its plan takes.
#[derive(Debug, Clone)]
pub struct NewSite {
    pub tenant: String,
    pub slots: u32,
}

/// Each site of a group: placed, or why no worker can take it.
pub type Placed = BTreeMap<String, Result<(), String>>;

/// New sites waiting to be placed together: one per process, shared by its sagas.
pub type Placing = crate::group::Group<String, NewSite, Placed>;

/// An empty group.
pub fn placing() -> Placing {
    crate::group::Group::new("placing the site failed")
}

/// Chooses the workers for new sites with the planner (capacity, headroom, tenant spread,
/// failure domains), all in one plan so that each counts the others' slots, in the
/// caller's transaction: the caller holds the active workers' rows, so no other
/// reservation changes the picture meanwhile. Each site gets its worker's id or the
/// reason no worker can take it.
pub async fn place_new_sites(
    tx: &mut sqlx::MySqlConnection,
    config: &PlacementConfig,
    new: &[(String, NewSite)],
) -> anyhow::Result<BTreeMap<String, Result<String, placement::UnplacedReason>>> {
    let mut cluster = load(tx, config).await?.cluster;
    cluster
        .sites
        .retain(|s| !new.iter().any(|(id, _)| id == s.id.as_str()));
    for (id, site) in new {
        cluster.sites.push(placement::Site {
            id: id.as_str().into(),
            tenant: site.tenant.as_str().into(),
            slots: site.slots,
            node: None,
            pinned: false,
            required_labels: BTreeMap::new(),
            balance_hold: false,
        });
    }
    let plan = placement::place(&cluster, &policy(config))?;
    let mut chosen: BTreeMap<String, Result<String, placement::UnplacedReason>> = plan
        .assignments
        .into_iter()
        .map(|a| (a.site.as_str().to_owned(), Ok(a.node.as_str().to_owned())))
        .collect();
    for u in plan.unplaced {
        chosen
            .entry(u.site.as_str().to_owned())
            .or_insert(Err(u.reason));
    }
    Ok(new
        .iter()
        .map(|(id, _)| {
            let result = chosen
                .remove(id)
                .unwrap_or(Err(placement::UnplacedReason::NoActiveNodes));
            (id.clone(), result)
        })
        .collect())
}

fn reason_name(reason: MoveReason) -> &'static str {
    match reason {
        MoveReason::Evacuate => "evacuate",
        MoveReason::LabelMismatch => "label_mismatch",
        MoveReason::OverCapacity => "over_capacity",
        MoveReason::Balance => "balance",
    }
}

fn views(loaded: &Loaded, plan: &RebalancePlan) -> Vec<MoveView> {
    let name = |id: &str| {
        loaded
            .nodes
            .get(id)
            .map_or_else(|| id.to_owned(), |n| n.0.clone())
    };
    plan.moves
        .iter()
        .map(|m| MoveView {
            site: m.site.to_string(),
            domain: loaded
                .sites
                .get(m.site.as_str())
                .map(|s| s.domain.clone())
                .unwrap_or_default(),
            from: name(m.from.as_str()),
            to: name(m.to.as_str()),
            slots: m.slots,
            reason: reason_name(m.reason).into(),
            wave: Some(m.wave),
            operation: None,
            state: None,
            created_at: None,
            seconds_to_ready: None,
            seconds_total: None,
        })
        .collect()
}

/// The latest moves with their timings.
async fn recent_moves(db: &MySqlPool, limit: u32) -> anyhow::Result<Vec<MoveView>> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, String, String, String, String, String, String, chrono::DateTime<chrono::Utc>, Option<f64>, Option<f64>, i32)> =
        sqlx::query_as(
            "SELECT m.operation_id, m.site_id, COALESCE(s.primary_domain, ''), COALESCE(f.name, m.from_node), \
             COALESCE(t.name, m.to_node), m.reason, m.state, m.created_at, \
             TIMESTAMPDIFF(MICROSECOND, m.started_at, m.ready_at) / 1e6, \
             TIMESTAMPDIFF(MICROSECOND, m.created_at, m.finished_at) / 1e6, COALESCE(pl.slots, 1) \
             FROM site_moves m LEFT JOIN sites s ON s.id = m.site_id LEFT JOIN nodes f ON f.id = m.from_node \
             LEFT JOIN nodes t ON t.id = m.to_node LEFT JOIN placements pl ON pl.site_id = m.site_id \
             ORDER BY m.created_at DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(op, site, domain, from, to, reason, state, created_at, ready, total, slots)| {
                MoveView {
                    site,
                    domain,
                    from,
                    to,
                    slots: u32::try_from(slots).unwrap_or(1),
                    reason,
                    wave: None,
                    operation: Some(op),
                    state: Some(state),
                    created_at: Some(created_at),
                    seconds_to_ready: ready,
                    seconds_total: total,
                }
            },
        )
        .collect())
}

/// The stored availability (`pending` shows as such, not as the planner's drain).
fn availability_of(loaded: &Loaded, node: &str, planned: Availability) -> String {
    if loaded.pending.contains(node) {
        return "pending".into();
    }
    match planned {
        Availability::Active => "active",
        Availability::Drain => "drain",
        Availability::Down => "down",
    }
    .into()
}

/// `GET /v1/placement`: workers, their sites and utilisation, the moves a rebalance would
/// make, and the latest moves.
pub async fn map(db: &MySqlPool, config: &PlacementConfig) -> anyhow::Result<PlacementMap> {
    let loaded = load(&mut *db.acquire().await?, config).await?;
    let utilisation = placement::utilisation(&loaded.cluster);
    let plan = placement::rebalance(&loaded.cluster, &policy(config))
        .map_err(|e| anyhow!("planning: {e}"))?;
    let mut by_node: BTreeMap<&str, Vec<MapSite>> = BTreeMap::new();
    for site in &loaded.cluster.sites {
        if let (Some(node), Some(shown)) = (&site.node, loaded.sites.get(site.id.as_str())) {
            by_node
                .entry(node.as_str())
                .or_default()
                .push(shown.clone());
        }
    }
    let mut nodes: Vec<MapNode> = utilisation
        .nodes
        .iter()
        .map(|n| {
            let (name, down_since) = loaded
                .nodes
                .get(n.node.as_str())
                .cloned()
                .unwrap_or_default();
            MapNode {
                id: n.node.to_string(),
                name,
                availability: availability_of(&loaded, n.node.as_str(), n.availability),
                down_since,
                slots: n.capacity_slots,
                used_slots: n.used_slots,
                utilisation: n.utilisation,
                sites: by_node.remove(n.node.as_str()).unwrap_or_default(),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PlacementMap {
        nodes,
        balance: utilisation.balance,
        proposed: views(&loaded, &plan),
        recent_moves: recent_moves(db, 50).await?,
    })
}

/// Moves under way (queued or moving).
pub async fn moves_in_flight(db: &MySqlPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM site_moves WHERE state IN ('queued', 'moving')")
        .fetch_one(db)
        .await
}

/// Plans a rebalance and, unless `dry_run`, starts a `site.move` operation per move
/// (only the forced ones when `forced_only`). Staff asking for it act at once: the
/// hysteresis is the loop's (only the cool-down of recently moved sites applies).
pub async fn rebalance(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &PlacementConfig,
    actor: Option<&Actor>,
    request: &RebalanceRequest,
    forced_only: bool,
) -> anyhow::Result<RebalanceAnswer> {
    rebalance_gated(db, provisioner, config, actor, request, forced_only, None)
        .await
        .map(|(answer, _)| answer)
}

/// [`rebalance`], with balance moves also held back while `gate`, given the time of this
/// pass, says the imbalance has not lasted yet.
async fn rebalance_gated(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &PlacementConfig,
    actor: Option<&Actor>,
    request: &RebalanceRequest,
    forced_only: bool,
    gate: Option<(&mut BalanceGate, Instant)>,
) -> anyhow::Result<(RebalanceAnswer, BalanceVerdict)> {
    let loaded = load(&mut *db.acquire().await?, config).await?;
    let mut policy = policy(config);
    policy.max_moves = request.max_moves;
    let plan =
        placement::rebalance(&loaded.cluster, &policy).map_err(|e| anyhow!("planning: {e}"))?;
    let mut answer = RebalanceAnswer {
        dry_run: request.dry_run,
        moves: views(&loaded, &plan),
        lower_bound: plan.lower_bound,
        deferred_moves: plan.deferred_moves,
        unplaced: plan
            .unplaced
            .iter()
            .map(|u| format!("{}: {}", u.site, u.reason))
            .collect(),
        before: plan.before,
        after: plan.after,
        operations: Vec::new(),
    };
    let verdict = match gate {
        Some((gate, now)) => gate.observe(&plan, now),
        None => BalanceVerdict::Move,
    };
    let forced_only = forced_only || verdict != BalanceVerdict::Move;
    if request.dry_run {
        return Ok((answer, verdict));
    }
    let chosen: Vec<_> = plan
        .moves
        .iter()
        .filter(|m| !forced_only || m.reason != MoveReason::Balance)
        .collect();
    if chosen.is_empty() {
        return Ok((answer, verdict));
    }
    for m in chosen {
        let mut tx = db.begin().await?;
        // The site as the plan saw it: still on `from`, nothing else under way.
        let current: Option<(String, String)> = sqlx::query_as(
            "SELECT pl.node_id, s.tenant_id FROM sites s JOIN placements pl ON pl.site_id = s.id \
             WHERE s.id = ? FOR UPDATE",
        )
        .bind(m.site.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let busy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
             AND state IN ('pending', 'running', 'unwinding')",
        )
        .bind(m.site.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let Some((node, tenant)) = current else {
            continue;
        };
        if busy > 0 || node != m.from.as_str() {
            continue;
        }
        let op = crate::app::operations::enqueue(
            &mut tx,
            provisioner,
            actor,
            OperationKind::SiteMove,
            Some(&tenant),
            "site",
            m.site.as_str(),
        )
        .await
        .map_err(|e| anyhow!("enqueueing a move: {e}"))?;
        sqlx::query(
            "INSERT INTO site_moves (operation_id, site_id, from_node, to_node, reason, state) \
             VALUES (?, ?, ?, ?, ?, 'queued')",
        )
        .bind(op.as_str())
        .bind(m.site.as_str())
        .bind(m.from.as_str())
        .bind(m.to.as_str())
        .bind(reason_name(m.reason))
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            Event {
                action: "site.move",
                tenant_id: Some(&tenant),
                target_type: "site",
                target_id: m.site.as_str(),
                details: json!({ "from": m.from, "to": m.to, "reason": reason_name(m.reason), "operation": op }),
            },
        )
        .await?;
        tx.commit().await?;
        answer.operations.push(op.to_string());
    }
    Ok((answer, verdict))
}

/// What one pass of the placement loop did.
#[derive(Debug, Default, Serialize)]
pub struct PassReport {
    pub moves_started: usize,
    pub proposed: usize,
    /// Balance moves planned but not started: the imbalance has not lasted yet (seen in
    /// `passes` passes in a row for `seconds`).
    pub balance_waiting: Option<(u32, f64)>,
}

/// One pass at `now`: node states from the swarm, then the moves the map needs: forced
/// ones (drained or failed workers, over capacity) always, balance moves when
/// `placement.rebalance = "auto"`, no other move is under way and `gate` says the
/// imbalance lasted. One replica at a time (a named lock).
pub async fn pass(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &PlacementConfig,
    gate: &mut BalanceGate,
    now: Instant,
) -> anyhow::Result<Option<PassReport>> {
    let mut lock = db.acquire().await?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('pressdock_placement', 0)")
        .fetch_one(&mut *lock)
        .await?;
    if got != Some(1) {
        return Ok(None);
    }
    let result = pass_locked(db, provisioner, config, gate, now).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('pressdock_placement')")
        .execute(&mut *lock)
        .await;
    result.map(Some)
}

async fn pass_locked(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &PlacementConfig,
    gate: &mut BalanceGate,
    now: Instant,
) -> anyhow::Result<PassReport> {
    if provisioner.swarm.is_some() {
        crate::app::node_sync::sync_nodes(db, provisioner)
            .await
            .context("syncing nodes from the swarm")?;
    }
    let mut report = PassReport::default();
    // Balance moves one plan at a time; moves off drained and failed workers at once
    // (sites already moving are left out of the plan).
    let forced_only = config.rebalance != "auto" || moves_in_flight(db).await? > 0;
    if forced_only {
        // Moves under way change the map: an imbalance seen meanwhile does not count.
        gate.reset();
    }
    let (answer, verdict) = rebalance_gated(
        db,
        provisioner,
        config,
        None,
        &RebalanceRequest {
            dry_run: false,
            max_moves: None,
        },
        forced_only,
        (!forced_only).then_some((&mut *gate, now)),
    )
    .await?;
    report.moves_started = answer.operations.len();
    report.proposed = answer.moves.len();
    match verdict {
        BalanceVerdict::Waiting {
            passes,
            for_duration,
        } if !forced_only => {
            report.balance_waiting = Some((passes, for_duration.as_secs_f64()));
            tracing::debug!(
                passes,
                seconds = for_duration.as_secs_f64(),
                "placement: imbalance seen; balance moves wait for it to last"
            );
        }
        BalanceVerdict::Move if !forced_only && report.moves_started > 0 => gate.reset(),
        _ => {}
    }
    if report.moves_started > 0 {
        tracing::info!(
            moves = report.moves_started,
            lower_bound = answer.lower_bound,
            "placement: moving sites"
        );
    }
    Ok(report)
}

/// The loop's hysteresis for balance moves, from the configuration.
pub fn balance_gate(config: &PlacementConfig) -> BalanceGate {
    BalanceGate::new(
        config.balance_after_passes,
        Duration::from_secs(config.balance_after_secs),
    )
}
