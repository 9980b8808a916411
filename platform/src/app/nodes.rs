//! Nodes of the cluster as the platform sees them. Workers carry sites (25 slots each).
//! Staff register them through the API for now; the lab fills the table from the swarm.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::FromRow;
use utoipa::ToSchema;

use super::unique;
use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Fields, Id, Slug, StaffRole},
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
    /// active, drain or down.
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

async fn get(state: &AppState, id: &Id) -> ApiResult<Node> {
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
    let id = Id::generate();
    let labels = serde_json::Value::Object(input.labels.unwrap_or_default());
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO nodes (id, name, swarm_node_id, role, slots, failure_domain, address, labels) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
    get(state, &id).await
}

pub async fn update(
    state: &AppState,
    actor: &Actor,
    id: &Id,
    change: NodeChange,
) -> ApiResult<Node> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    get(state, id).await?;
    if let Some(availability) = &change.availability {
        if !AVAILABILITY.contains(&availability.as_str()) {
            return Err(ApiError::field(
                "availability",
                "must be active, drain or down",
            ));
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
