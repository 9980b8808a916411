//! Node records from the swarm (the `nodes` reconciler, also run by the placement loop
//! and by `app::nodes`), and the report every reconciler writes.

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use sqlx::MySqlPool;

use crate::provision::Backends;

/// One repair made by a pass.
#[derive(Debug, Serialize)]
pub struct Repair {
    pub site: String,
    pub backend: &'static str,
    pub drift: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checked: usize,
    pub repairs: Vec<Repair>,
    pub orphans: Vec<Value>,
    pub errors: Vec<String>,
}

/// The nodes table from the swarm: labels `pressdock.node`, `pressdock.role`, `pressdock.slots`.
/// Node records from the swarm: new workers join the map, availability follows the
/// swarm (down, drained), and `down_since` says since when a worker is down.
pub async fn sync_nodes(db: &MySqlPool, provisioner: &Backends) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let Some(config) = &provisioner.config.swarm else {
        return Ok(report);
    };
    let path = config
        .docker_host
        .strip_prefix("unix://")
        .unwrap_or(&config.docker_host);
    let docker = bollard::Docker::connect_with_socket(
        path,
        30,
        &bollard::ClientVersion {
            major_version: 1,
            minor_version: 41,
        },
    )
    .context("connecting to the swarm manager")?;
    let nodes = docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("listing swarm nodes")?;
    let mut seen: Vec<String> = Vec::new();
    for node in nodes {
        report.checked += 1;
        let Some(id) = node.id.clone() else { continue };
        seen.push(id.clone());
        let labels = node
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        let hostname = node
            .description
            .as_ref()
            .and_then(|d| d.hostname.clone())
            .unwrap_or_default();
        let name = if crate::domain::Slug::parse(&hostname).is_ok() {
            hostname
        } else {
            labels.get("pressdock.node").cloned().unwrap_or_default()
        };
        let role = labels
            .get("pressdock.role")
            .cloned()
            .unwrap_or_else(|| "worker".to_owned());
        if crate::domain::Slug::parse(&name).is_err()
            || !id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            report
                .errors
                .push(format!("swarm node {id:?} has an unusable name {name:?}"));
            continue;
        }
        let slots: i32 = labels
            .get("pressdock.slots")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if role == "worker" { 25 } else { 0 });
        let down = node
            .status
            .as_ref()
            .and_then(|s| s.state)
            .is_some_and(|s| s != bollard::models::NodeState::READY);
        let drained = node
            .spec
            .as_ref()
            .and_then(|s| s.availability)
            .is_some_and(|a| a != bollard::models::NodeSpecAvailabilityEnum::ACTIVE);
        let address = node
            .status
            .as_ref()
            .and_then(|s| s.addr.clone())
            .unwrap_or_default();
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT id, availability FROM nodes WHERE swarm_node_id = ? OR name = ? ORDER BY swarm_node_id = ? DESC LIMIT 1",
        )
        .bind(&id)
        .bind(&name)
        .bind(&id)
        .fetch_optional(db)
        .await?;
        // The swarm says when a node is down or drained; a drain ordered through the API
        // stays until the API lifts it.
        // A worker takes sites once its provisioning marked it `pressdock.pool` (images
        // loaded, storage mounted); before that it is `pending`.
        let pending = role == "worker" && !labels.contains_key("pressdock.pool");
        let availability = match (&existing, down, drained) {
            (_, true, _) => "down",
            (_, false, true) => "drain",
            (Some((_, current)), false, false) if current == "drain" => "drain",
            _ if pending => "pending",
            _ => "active",
        };
        match existing {
            Some((row, current)) => {
                sqlx::query(
                    "UPDATE nodes SET swarm_node_id = ?, role = ?, availability = ?, slots = ?, address = ?, \
                     labels = ?, updated_at = NOW(6), \
                     down_since = IF(? = 'down', COALESCE(down_since, NOW(6)), NULL) WHERE id = ?",
                )
                .bind(&id)
                .bind(&role)
                .bind(availability)
                .bind(slots)
                .bind(&address)
                .bind(sqlx::types::Json(&labels))
                .bind(availability)
                .bind(&row)
                .execute(db)
                .await?;
                if current != availability {
                    report.repairs.push(Repair {
                        site: String::new(),
                        backend: "nodes",
                        drift: format!("{name} is {availability} (was {current})"),
                    });
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO nodes (id, name, swarm_node_id, role, availability, slots, address, labels) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(crate::domain::Id::generate().as_str())
                .bind(&name)
                .bind(&id)
                .bind(&role)
                .bind(availability)
                .bind(slots)
                .bind(&address)
                .bind(sqlx::types::Json(&labels))
                .execute(db)
                .await?;
                report.repairs.push(Repair {
                    site: String::new(),
                    backend: "nodes",
                    drift: format!("registered {name} ({role}) from the swarm"),
                });
            }
        }
    }
    unlinked_nodes(db, &seen, &mut report).await?;
    Ok(report)
}

/// Nodes the swarm does not list are no placement targets: one registered by hand that no
/// swarm node has claimed is `pending` (an older release made such nodes `active`, and
/// sites were then placed on a worker with no swarm node behind it); one the swarm listed
/// before and no longer does has left it and is `down` (its sites are re-placed after
/// the grace period).
async fn unlinked_nodes(
    db: &MySqlPool,
    seen: &[String],
    report: &mut Report,
) -> anyhow::Result<()> {
    let rows: Vec<(String, String, Option<String>, String)> =
        sqlx::query_as("SELECT id, name, swarm_node_id, availability FROM nodes")
            .fetch_all(db)
            .await?;
    for (row, name, swarm_id, current) in rows {
        let wanted = match &swarm_id {
            None if current == "active" => "pending",
            Some(swarm_id) if !seen.contains(swarm_id) && current != "down" => "down",
            _ => continue,
        };
        sqlx::query(
            "UPDATE nodes SET availability = ?, updated_at = NOW(6), \
             down_since = IF(? = 'down', COALESCE(down_since, NOW(6)), NULL) \
             WHERE id = ? AND availability = ?",
        )
        .bind(wanted)
        .bind(wanted)
        .bind(&row)
        .bind(&current)
        .execute(db)
        .await?;
        report.repairs.push(Repair {
            site: String::new(),
            backend: "nodes",
            drift: match wanted {
                "pending" => {
                    format!("{name} is pending (was {current}): no swarm node of this name")
                }
                _ => format!("{name} is down (was {current}): it left the swarm"),
            },
        });
    }
    Ok(())
}
