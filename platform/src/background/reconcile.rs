//! Reconcilers: compare what each backend has with what the control plane says, and repair
//! the difference. They run on a timer in every `pressdock serve` (one at a time across
//! replicas, under a MariaDB named lock) and on demand (`POST /v1/admin/reconcilers/run`);
//! each pass re-reads the whole world (STYLE.md, habit 5) and stores its result, shown at
//! `GET /v1/admin/reconcilers`.
//!
//! - `nodes`: the nodes table from the swarm (id, role label, slots label, availability).
//! - `sites`: every settled site (active or suspended, no operation under way) in every
//!   backend: database and grants, DB router user, Redis ACL on every node, storage
//!   directory and quota, swarm service and its spec, and the Varnish host table.
//! - `orphans`: resources with our prefix (databases, DB router users, Redis users)
//!   whose site is deleted or failed are reported,
//!   then removed once they have been orphans for longer than the grace period; ones this
//!   control plane never made are reported only.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context;
use backends::{
    DbRouter, EdgeCache, SiteCache, SiteDatabase, SitePassword, SiteResourceId, SiteRuntime,
    SiteStorage, swarm::SecretKind,
};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::{provision::Provisioner, sagas::StepError};

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

fn step_error(err: StepError) -> String {
    err.internal_message()
}

/// Runs every reconciler once, unless another replica is running them now.
pub async fn run_all(
    db: &MySqlPool,
    provisioner: &Provisioner,
    orphan_grace_secs: u64,
) -> anyhow::Result<Option<Value>> {
    // A named lock on a connection of our own: one pass at a time across replicas.
    let mut lock = db.acquire().await?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('pressdock_reconcile', 0)")
        .fetch_one(&mut *lock)
        .await?;
    if got != Some(1) {
        return Ok(None);
    }
    let mut results = serde_json::Map::new();
    for name in ["nodes", "sites", "orphans"] {
        let started = chrono::Utc::now();
        let report = match name {
            "nodes" => sync_nodes(db, provisioner).await,
            "sites" => reconcile_sites(db, provisioner).await,
            _ => reconcile_orphans(db, provisioner, orphan_grace_secs).await,
        };
        let report = report.unwrap_or_else(|err| Report {
            errors: vec![format!("{err:#}")],
            ..Report::default()
        });
        if !report.repairs.is_empty() || !report.errors.is_empty() {
            tracing::warn!(
                reconciler = name,
                repairs = report.repairs.len(),
                errors = report.errors.len(),
                "reconciler found drift"
            );
        }
        let value = serde_json::to_value(&report)?;
        sqlx::query(
            "INSERT INTO reconciler_runs (name, started_at, finished_at, result) VALUES (?, ?, NOW(6), ?) \
             ON DUPLICATE KEY UPDATE started_at = VALUES(started_at), finished_at = VALUES(finished_at), result = VALUES(result)",
        )
        .bind(name)
        .bind(started)
        .bind(sqlx::types::Json(&value))
        .execute(db)
        .await?;
        results.insert(name.to_owned(), value);
    }
    let _ = sqlx::query("SELECT RELEASE_LOCK('pressdock_reconcile')")
        .execute(&mut *lock)
        .await;
    lock.close_on_drop();
    Ok(Some(Value::Object(results)))
}

/// The timer loop inside `serve`.
pub async fn run_periodically(
    db: MySqlPool,
    provisioner: std::sync::Arc<Provisioner>,
    interval: Duration,
    orphan_grace_secs: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(err) = run_all(&db, &provisioner, orphan_grace_secs).await {
            tracing::warn!(error = format!("{err:#}"), "reconcile pass failed");
        }
    }
}

/// The nodes table from the swarm: labels `pressdock.node`, `pressdock.role`, `pressdock.slots`.
/// Node records from the swarm: new workers join the map, availability follows the
/// swarm (down, drained), and `down_since` says since when a worker is down.
pub async fn sync_nodes(db: &MySqlPool, provisioner: &Provisioner) -> anyhow::Result<Report> {
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

async fn settled_sites(db: &MySqlPool) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT s.id, s.state FROM sites s WHERE s.state IN ('provisioning', 'active', 'degraded', 'suspended') AND NOT EXISTS \
         (SELECT 1 FROM operations o WHERE o.target_type = 'site' AND o.target_id = s.id \
          AND o.state IN ('pending', 'running', 'unwinding')) ORDER BY s.seq",
    )
    .fetch_all(db)
    .await?)
}

async fn reconcile_sites(db: &MySqlPool, p: &Provisioner) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if !p.any() {
        return Ok(report);
    }
    for (site, state) in settled_sites(db).await? {
        report.checked += 1;
        let Ok(id) = SiteResourceId::parse(&site) else {
            continue;
        };
        if let Err(err) = reconcile_site(db, p, &id, &state, &mut report).await {
            report.errors.push(format!("{site}: {err:#}"));
        }
    }
    // The host table as a whole: every live site's hosts, on every instance.
    if let Some(varnish) = &p.varnish {
        let _turn = p.varnish_turn().await;
        let table = crate::provision::host_table(db, None)
            .await
            .map_err(|e| anyhow::anyhow!(step_error(e)))?;
        let states = varnish.observe_host_table(&table).await?;
        if states.iter().any(|s| !s.converged) {
            varnish.apply_host_table(&table).await?;
            for s in states.iter().filter(|s| !s.converged) {
                report.repairs.push(Repair {
                    site: String::new(),
                    backend: "varnish",
                    drift: format!("{} had a stale host table", s.instance),
                });
            }
        }
    }
    Ok(report)
}

async fn password(
    p: &Provisioner,
    db: &MySqlPool,
    id: &SiteResourceId,
    kind: SecretKind,
) -> anyhow::Result<SitePassword> {
    let secret = p
        .secret(db, id, kind)
        .await
        .map_err(|e| anyhow::anyhow!(step_error(e)))?;
    Ok(SitePassword::parse(secret.expose())?)
}

async fn reconcile_site(
    db: &MySqlPool,
    p: &Provisioner,
    id: &SiteResourceId,
    state: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut repair = |backend: &'static str, drift: String| {
        report.repairs.push(Repair {
            site: id.as_str().to_owned(),
            backend,
            drift,
        });
    };
    if let Some(galera) = &p.galera {
        let pw = password(p, db, id, SecretKind::DbPassword).await?;
        let observed = galera.observe_site_database(id, Some(&pw)).await?;
        if !observed.is_converged() {
            galera.ensure_site_database(id, &pw).await?;
            repair("galera", format!("{observed:?}"));
        }
    }
    if let Some(router) = &p.router {
        // Every endpoint is observed (an unreachable one is not converged) and ensure
        // writes every endpoint again: a change that reached only some ProxySQL admins
        // is completed here once the others answer.
        let pw = password(p, db, id, SecretKind::DbPassword).await?;
        let observed = router.observe_router_user(id, &pw).await?;
        let drifted: Vec<String> = observed
            .iter()
            .filter(|s| !s.converged)
            .map(|s| match &s.error {
                Some(err) => format!("{} unreachable ({err})", s.endpoint),
                None => format!("{} ({} runtime rows)", s.endpoint, s.runtime_rows),
            })
            .collect();
        if !drifted.is_empty() {
            router.ensure_router_user(id, &pw).await?;
            repair(
                "router",
                format!("user not converged on {}", drifted.join(", ")),
            );
        }
    }
    if let Some(redis) = &p.redis {
        let pw = password(p, db, id, SecretKind::RedisPassword).await?;
        let observed = redis.observe_site_cache(id, Some(&pw)).await?;
        if !observed.is_converged() {
            redis.ensure_site_cache(id, &pw).await?;
            let nodes: Vec<String> = observed
                .nodes
                .iter()
                .filter(|n| !n.converged)
                .map(|n| format!("{n:?}"))
                .collect();
            repair(
                "redis",
                format!("ACL not converged on {}", nodes.join(", ")),
            );
        }
    }
    if let Some(gluster) = &p.gluster {
        let mb: i32 = sqlx::query_scalar(
            "SELECT p.storage_mb FROM sites s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?",
        )
        .bind(id.as_str())
        .fetch_one(db)
        .await?;
        let quota = u64::try_from(mb).unwrap_or(0) * 1024 * 1024;
        let observed = gluster.observe_site_storage(id).await?;
        if !observed.is_converged(quota) {
            gluster.ensure_site_storage(id, quota).await?;
            repair("gluster", format!("{observed:?}, want quota {quota}"));
        }
    }
    if let Some(swarm) = &p.swarm {
        let params = p
            .service_params(db, id)
            .await
            .map_err(|e| anyhow::anyhow!(step_error(e)))?;
        let spec = swarm.build_spec(&params)?;
        let observed = swarm.observe_service(id).await?;
        if !observed.exists || !observed.matches(&spec) {
            swarm.ensure_service(&params).await?;
            repair(
                "swarm",
                if observed.exists {
                    "service spec differed".into()
                } else {
                    "service was missing".into()
                },
            );
        }
        let _ = state;
    }
    Ok(())
}

/// Orphans: resources named `wp_<id>` in a backend whose site is deleted or failed here
/// are removed once they have been seen for `grace_secs`. Every resource this control
/// plane creates belongs to a site row committed before the resource exists, so an id this
/// database has never seen was not made by it (another deployment sharing the servers, or
/// a hand-made one): such resources are reported as `foreign` and never removed.
async fn reconcile_orphans(
    db: &MySqlPool,
    p: &Provisioner,
    grace_secs: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let sites: Vec<(String, String)> = sqlx::query_as("SELECT id, state FROM sites")
        .fetch_all(db)
        .await?;
    let live: BTreeSet<&str> = sites
        .iter()
        .filter(|(_, state)| state != "deleted" && state != "failed")
        .map(|(id, _)| id.as_str())
        .collect();
    let dead: BTreeSet<&str> = sites
        .iter()
        .filter(|(_, state)| state == "deleted" || state == "failed")
        .map(|(id, _)| id.as_str())
        .collect();
    // A failed or deleted site with an operation still under way is not an orphan yet.
    let busy: BTreeSet<String> = sqlx::query_scalar(
        "SELECT target_id FROM operations WHERE target_type = 'site' AND state IN ('pending', 'running', 'unwinding')",
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .collect();
    let mut found: Vec<(&'static str, SiteResourceId)> = Vec::new();
    if let Some(galera) = &p.galera {
        found.extend(
            galera
                .list_site_ids()
                .await?
                .into_iter()
                .map(|id| ("galera", id)),
        );
    }
    if let Some(router) = &p.router {
        found.extend(
            router
                .list_site_ids()
                .await?
                .into_iter()
                .map(|id| ("router", id)),
        );
    }
    if let Some(redis) = &p.redis {
        found.extend(
            redis
                .list_site_ids()
                .await?
                .into_iter()
                .map(|id| ("redis", id)),
        );
    }
    let mut current = BTreeSet::new();
    for (backend, id) in found {
        report.checked += 1;
        if live.contains(id.as_str()) || busy.contains(id.as_str()) {
            continue;
        }
        if !dead.contains(id.as_str()) {
            report.orphans.push(json!({ "backend": backend, "resource": id.resource_name(), "foreign": true, "removed": false }));
            continue;
        }
        current.insert((backend, id.as_str().to_owned()));
        sqlx::query("INSERT IGNORE INTO orphans (backend, resource) VALUES (?, ?)")
            .bind(backend)
            .bind(id.as_str())
            .execute(db)
            .await?;
        let age: i64 = sqlx::query_scalar(
            "SELECT TIMESTAMPDIFF(SECOND, first_seen_at, NOW(6)) FROM orphans WHERE backend = ? AND resource = ?",
        )
        .bind(backend)
        .bind(id.as_str())
        .fetch_one(db)
        .await?;
        let expired = u64::try_from(age).unwrap_or(0) >= grace_secs;
        let mut removed = false;
        if expired {
            let result = match backend {
                "galera" => match &p.galera {
                    Some(g) => g
                        .remove_site_database(&id)
                        .await
                        .map_err(anyhow::Error::from),
                    None => Ok(()),
                },
                "router" => match &p.router {
                    Some(r) => r.remove_router_user(&id).await.map_err(anyhow::Error::from),
                    None => Ok(()),
                },
                _ => match &p.redis {
                    Some(r) => r
                        .remove_site_cache(&id)
                        .await
                        .map(drop)
                        .map_err(anyhow::Error::from),
                    None => Ok(()),
                },
            };
            match result {
                Ok(()) => {
                    removed = true;
                    report.repairs.push(Repair {
                        site: id.as_str().to_owned(),
                        backend,
                        drift: "orphan removed".into(),
                    });
                }
                Err(err) => report
                    .errors
                    .push(format!("removing orphan {backend} {id}: {err:#}")),
            }
        }
        report.orphans.push(json!({ "backend": backend, "resource": id.resource_name(), "foreign": false, "age_secs": age, "removed": removed }));
    }
    // Forget orphans no longer found (removed now, by hand, or claimed by a live site).
    let listed: Vec<(String, String)> = sqlx::query_as("SELECT backend, resource FROM orphans")
        .fetch_all(db)
        .await?;
    for (backend, resource) in listed {
        let still = current.iter().any(|(b, r)| *b == backend && *r == resource)
            && !report
                .orphans
                .iter()
                .any(|o| o["resource"] == format!("wp_{resource}") && o["removed"] == true);
        if !still {
            sqlx::query("DELETE FROM orphans WHERE backend = ? AND resource = ?")
                .bind(&backend)
                .bind(&resource)
                .execute(db)
                .await?;
        }
    }
    Ok(report)
}

/// The last run of every reconciler.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReconcilerStatus {
    pub name: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    #[schema(value_type = Object)]
    pub result: sqlx::types::Json<Value>,
}

pub async fn status(db: &MySqlPool) -> anyhow::Result<Vec<ReconcilerStatus>> {
    Ok(sqlx::query_as::<_, ReconcilerStatus>(
        "SELECT name, started_at, finished_at, result FROM reconciler_runs ORDER BY name",
    )
    .fetch_all(db)
    .await?)
}
