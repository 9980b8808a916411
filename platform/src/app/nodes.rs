//! Nodes of the cluster as the platform sees them. Workers carry sites (25 slots each).
//!
//! Nodes come from the swarm: the node sync (`reconcile::sync_nodes`, run by the placement
//! loop and the reconcilers) records every swarm node and follows its availability. Staff
//! may register a node ahead of its joining; it is `pending`, never a placement target,
//! until a swarm node of that name (or swarm id) joins and the sync links it. Without a
//! swarm backend (a control plane only) there is nothing to sync from, so staff activate a
//! registered node themselves (`PATCH … {"availability": "active"}`).

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::FromRow;
use utoipa::ToSchema;

use super::unique;
use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Fields, NodeId, Slug, StaffRole},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub swarm_node_id: Option<String>,
    pub role: String,
    pub availability: String,
    pub slots: i32,
    /// Slots taken by the sites placed here.
    pub used_slots: i64,
    pub failure_domain: String,
    pub address: String,
    #[schema(value_type = Object)]
    pub labels: sqlx::types::Json<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    #[schema(pattern = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$")]
    pub name: String,
    /// One of manager, cache, worker, database, storage, monitoring.
    #[schema(pattern = "^(manager|cache|worker|database|storage|monitoring)$")]
    pub role: String,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9]{1,64}$")]
    pub swarm_node_id: Option<String>,
    /// Defaults to 25 for workers, 0 otherwise.
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 0, maximum = 1000)]
    pub slots: Option<i32>,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9-]{0,63}$")]
    pub failure_domain: Option<String>,
    /// An IP address (the document describes IPv4 in its canonical form), or empty.
    #[serde(default)]
    #[schema(
        pattern = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})?$"
    )]
    pub address: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeChange {
    /// active, drain or down. `active` on a node the swarm has not linked is refused
    /// (409) when the platform has a swarm backend.
    #[schema(pattern = "^(active|drain|down)$")]
    pub availability: Option<String>,
}

const ROLES: &[&str] = &[
    "manager",
    "cache",
    "worker",
    "database",
    "storage",
    "monitoring",
];
const AVAILABILITY: &[&str] = &["active", "drain", "down"];

const SELECT: &str = "SELECT n.id, n.name, n.swarm_node_id, n.role, n.availability, n.slots, \
     CAST(COALESCE((SELECT SUM(p.slots) FROM placements p WHERE p.node_id = n.id), 0) AS SIGNED) AS used_slots, \
     n.failure_domain, n.address, n.labels FROM nodes n";

pub async fn list(state: &AppState, actor: &Actor) -> ApiResult<Vec<Node>> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    Ok(sqlx::query_as::<_, Node>(sql!("{SELECT} ORDER BY n.name"))
        .fetch_all(&state.db)
        .await?)
}

async fn get(state: &AppState, id: &NodeId) -> ApiResult<Node> {
    sqlx::query_as::<_, Node>(sql!("{SELECT} WHERE n.id = ?"))
        .bind(id.as_str())
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound("node"))
}

pub async fn register(state: &AppState, actor: &Actor, input: NewNode) -> ApiResult<Node> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut fields = Fields::default();
    let name = fields.check("name", Slug::parse(&input.name));
    if !ROLES.contains(&input.role.as_str()) {
        fields.push("role", format!("must be one of {}", ROLES.join(", ")));
    }
    let slots = input
        .slots
        .unwrap_or(if input.role == "worker" { 25 } else { 0 });
    if !(0..=1000).contains(&slots) {
        fields.push("slots", "must be between 0 and 1000");
    }
    let failure_domain = input.failure_domain.unwrap_or_default();
    if failure_domain.len() > 63
        || !failure_domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        fields.push("failure_domain", "must be up to 63 of a-z, 0-9 and '-'");
    }
    let address = input.address.unwrap_or_default();
    if !address.is_empty() && address.parse::<std::net::IpAddr>().is_err() {
        fields.push("address", "must be an IP address");
    }
    if let Some(swarm) = &input.swarm_node_id
        && (swarm.is_empty()
            || swarm.len() > 64
            || !swarm.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        fields.push("swarm_node_id", "must be a swarm node id");
    }
    fields.finish()?;
    let Some(name) = name else {
        return Err(ApiError::field("name", "invalid"));
    };
    let id = NodeId::generate();
    let labels = serde_json::Value::Object(input.labels.unwrap_or_default());
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO nodes (id, name, swarm_node_id, role, availability, slots, failure_domain, address, labels) \
         VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(name.as_str())
    .bind(&input.swarm_node_id)
    .bind(&input.role)
    .bind(slots)
    .bind(&failure_domain)
    .bind(&address)
    .bind(sqlx::types::Json(&labels))
    .execute(&mut *tx)
    .await;
    unique(inserted, "name", "a node with this name exists")?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "node.register",
            tenant_id: None,
            target_type: "node",
            target_id: id.as_str(),
            details: json!({ "name": name.as_str(), "role": input.role, "slots": slots }),
        },
    )
    .await?;
    tx.commit().await?;
    link_from_swarm(state).await;
    get(state, &id).await
}

/// Links registered nodes to the swarm nodes of their names at once, so a node that has
/// already joined does not wait for the next pass of the placement loop. A swarm that does
/// not answer leaves the node `pending`: the loop tries again.
async fn link_from_swarm(state: &AppState) {
    if state.backends.swarm.is_none() {
        return;
    }
    if let Err(err) = crate::app::node_sync::sync_nodes(&state.db, &state.backends).await {
        tracing::warn!(error = format!("{err:#}"), "syncing nodes from the swarm");
    }
}

pub async fn update(
    state: &AppState,
    actor: &Actor,
    id: &NodeId,
    change: NodeChange,
) -> ApiResult<Node> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let node = get(state, id).await?;
    if let Some(availability) = &change.availability {
        if !AVAILABILITY.contains(&availability.as_str()) {
            return Err(ApiError::field(
                "availability",
                "must be active, drain or down",
            ));
        }
        // With a swarm, only the swarm makes a node a placement target: staff lift their
        // own drain, nothing else.
        if availability == "active" && state.backends.swarm.is_some() {
            let name = &node.name;
            let refusal = match (node.swarm_node_id.is_some(), node.availability.as_str()) {
                (false, _) => Some(format!(
                    "{name} has not joined the swarm: it becomes active when a swarm node named {name} joins"
                )),
                (true, "pending") => Some(format!(
                    "{name} is not ready for sites yet: it becomes active once its provisioning labels it pressdock.pool"
                )),
                (true, "down") => Some(format!(
                    "the swarm reports {name} down: it becomes active when the swarm sees it again"
                )),
                _ => None,
            };
            if let Some(detail) = refusal {
                return Err(ApiError::conflict(Some("availability"), detail));
            }
        }
        let mut tx = state.db.begin().await?;
        sqlx::query("UPDATE nodes SET availability = ?, updated_at = NOW(6) WHERE id = ?")
            .bind(availability)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            Some(actor),
            Event {
                action: "node.update",
                tenant_id: None,
                target_type: "node",
                target_id: id.as_str(),
                details: json!({ "availability": availability }),
            },
        )
        .await?;
        tx.commit().await?;
    }
    get(state, id).await
}

/// Removes a node from the platform's inventory: only an empty one (no sites, no move to or
/// from it under way) that is not a live swarm node (the next sync would only record it
/// again). 409 says which.
pub async fn remove(state: &AppState, actor: &Actor, id: &NodeId) -> ApiResult<()> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut tx = state.db.begin().await?;
    // The node's row first: a reservation or move onto it waits for (or sees) the removal.
    let row: Option<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT name, swarm_node_id, availability FROM nodes WHERE id = ? FOR UPDATE",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((name, swarm_node_id, availability)) = row else {
        return Err(ApiError::NotFound("node"));
    };
    let (sites, moving): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM placements WHERE node_id = ?), \
         (SELECT COUNT(*) FROM site_moves WHERE (from_node = ? OR to_node = ?) \
          AND state IN ('queued', 'moving'))",
    )
    .bind(id.as_str())
    .bind(id.as_str())
    .bind(id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if sites > 0 {
        return Err(ApiError::conflict(
            None,
            format!("{name} holds {sites} site(s): drain it and wait until they have moved away"),
        ));
    }
    if moving > 0 {
        return Err(ApiError::conflict(
            None,
            format!("{moving} move(s) to or from {name} are under way: wait until they finish"),
        ));
    }
    if swarm_node_id.is_some() && availability != "down" {
        return Err(ApiError::conflict(
            None,
            format!(
                "{name} is a live swarm node ({availability}): remove it from the swarm first \
                 (docker node rm), then it shows as down and can be removed"
            ),
        ));
    }
    sqlx::query("DELETE FROM nodes WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "node.remove",
            tenant_id: None,
            target_type: "node",
            target_id: id.as_str(),
            details: json!({ "name": name, "availability": availability }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
