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

use backends::{
    DbRouter, EdgeCache, SiteCache, SiteDatabase, SitePassword, SiteResourceId, SiteRuntime,
    SiteStorage, swarm::SecretKind,
};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::{
    app::node_sync::{Repair, Report, sync_nodes},
    provision::Backends,
    sagas::StepError,
};

fn step_error(err: StepError) -> String {
    err.internal_message()
}

/// Runs every reconciler once, unless another replica is running them now.
pub async fn run_all(
    db: &MySqlPool,
    provisioner: &Backends,
    control_url: Option<&str>,
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
            "sites" => reconcile_sites(db, provisioner, control_url).await,
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
    provisioner: std::sync::Arc<Backends>,
    control_url: Option<String>,
    interval: Duration,
    orphan_grace_secs: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(err) =
            run_all(&db, &provisioner, control_url.as_deref(), orphan_grace_secs).await
        {
            tracing::warn!(error = format!("{err:#}"), "reconcile pass failed");
        }
    }
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

async fn reconcile_sites(
    db: &MySqlPool,
    p: &Backends,
    control_url: Option<&str>,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if !p.any() {
        return Ok(report);
    }
    for (site, state) in settled_sites(db).await? {
        report.checked += 1;
        let Ok(id) = SiteResourceId::parse(&site) else {
            continue;
        };
        if let Err(err) = reconcile_site(db, p, control_url, &id, &state, &mut report).await {
            report.errors.push(format!("{site}: {err:#}"));
        }
    }
    // The host table as a whole: every live site's hosts, on every instance.
    if let Some(varnish) = &p.varnish {
        let _turn = p.varnish_turn().await;
        let table = crate::provision::host_table(db, &[])
            .await
            .map_err(|e| anyhow::anyhow!(step_error(e)))?;
        let states = varnish.observe_host_table(&table).await?;
        if states.iter().any(|s| !s.converged) {
            p.remember_hosts(None);
            let applied = varnish.apply_host_table(&table).await?;
            if applied.iter().any(|s| !s.converged) {
                anyhow::bail!("a Varnish instance did not activate the host table");
            }
            for s in states.iter().filter(|s| !s.converged) {
                report.repairs.push(Repair {
                    site: String::new(),
                    backend: "varnish",
                    drift: format!("{} had a stale host table", s.instance),
                });
            }
        }
        p.remember_hosts(Some(table));
    }
    Ok(report)
}

async fn password(
    p: &Backends,
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
    p: &Backends,
    control_url: Option<&str>,
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
            .service_params(db, id, control_url)
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
    p: &Backends,
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
