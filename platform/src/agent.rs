//! The site agents' side of the control plane (DESIGN.md, "Agent protocol").
//!
//! Every site's `pressdock-agent` posts a report every few seconds with the site's agent
//! token (`POST /v1/agent/report`); the answer carries the site's desired config and its
//! generation. The first ready report makes a new site `active`; a site whose agent has
//! not been ready for `[agent] report_timeout_secs` becomes `degraded` (the sweeper), and
//! `active` again with the next ready report. Content changes in WordPress reach every
//! Varnish through the agent (`POST /v1/agent/purge`) or a tenant
//! (`POST /v1/sites/{site}/cache/purge`).

use std::time::Duration;

use axum::http::HeaderMap;
use backends::{DomainName, SiteResourceId, swarm::SecretKind, varnish::EdgeCache};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use site_agent::protocol::{AgentReport, DesiredConfig, PhpSettings, PurgeRequest, ReportResponse};
use sqlx::{MySqlConnection, MySqlPool};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::{
    audit::{self, Event},
    domain::Id,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// At most this many paths per purge; more is a ban of the whole site.
pub const MAX_PURGE_PATHS: usize = site_agent::protocol::MAX_PURGE_PATHS;

/// What to drop from the edge cache.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePurge {
    /// URL paths (`/hello-world/`, `/?p=5`), each starting with `/`; a path without a
    /// query also drops its query variants. At most 100.
    #[serde(default)]
    #[schema(schema_with = purge_paths)]
    pub paths: Vec<String>,
    /// Everything cached for the site's domains (also when `paths` is empty).
    #[serde(default)]
    pub all: bool,
}

/// The schema of `paths`: what `backends::varnish::check_purge_path` accepts.
fn purge_paths() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some("^/[!-~]{0,2047}$")),
        )
        .build()
}

/// The answer to a purge.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurgeResult {
    /// Bans issued on each Varnish instance (one per domain and path).
    pub banned: u32,
    /// Varnish instances that received them.
    pub instances: u32,
}

/// The last report of a site's agent, as `GET /v1/sites/{site}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentStatus {
    pub ready: bool,
    pub live: bool,
    /// The worker the reporting task runs on (node name; the swarm id if unknown).
    pub node: Option<String>,
    pub task_id: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// When the agent last said it was ready.
    pub ready_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The report as the agent sent it (health checks, versions, sizes, counters).
    #[schema(value_type = Object)]
    pub report: Value,
}

struct ReportingSite {
    tenant_id: String,
    state: String,
    generation: i64,
    memory_mb: i32,
}

/// Checks the bearer token against the site's agent token. Every failure is the same
/// 401 (no hint whether the site exists); a site being deleted is 404.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    site_id: &str,
) -> ApiResult<(SiteResourceId, ReportingSite)> {
    const DENIED: ApiError = ApiError::Unauthorized("a valid agent token is required");
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(DENIED)?;
    let id = SiteResourceId::parse(site_id).map_err(|_| DENIED)?;
    let row: Option<(String, String, i64, i32)> = sqlx::query_as(
        "SELECT s.tenant_id, s.state, s.generation, p.memory_mb FROM sites s \
         JOIN plans p ON p.id = s.plan_id WHERE s.id = ?",
    )
    .bind(id.as_str())
    .fetch_optional(&state.db)
    .await?;
    let (tenant_id, site_state, generation, memory_mb) = row.ok_or(DENIED)?;
    let expected = state
        .provisioner
        .secret(&state.db, &id, SecretKind::AgentToken)
        .await
        .map_err(|_| DENIED)?;
    // Comparing digests: the time taken does not depend on how much of the token matched.
    if Sha256::digest(token.as_bytes()) != Sha256::digest(expected.expose().as_bytes()) {
        return Err(DENIED);
    }
    if matches!(site_state.as_str(), "deleting" | "deleted") {
        return Err(ApiError::NotFound("site"));
    }
    Ok((
        id,
        ReportingSite {
            tenant_id,
            state: site_state,
            generation,
            memory_mb,
        },
    ))
}

/// A swarm id as the agent reports it, or nothing.
fn swarm_id(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The PHP settings a plan's memory allows.
pub fn php_settings(memory_mb: i32) -> PhpSettings {
    let memory = u32::try_from(memory_mb).unwrap_or(256).max(128);
    PhpSettings {
        memory_limit_mb: (memory / 2).clamp(64, 512),
        upload_max_mb: 64,
        max_execution_secs: 60,
        max_children: (memory / 64).clamp(2, 32),
    }
}

/// `POST /v1/agent/report`.
pub async fn report(
    state: &AppState,
    headers: &HeaderMap,
    report: AgentReport,
) -> ApiResult<ReportResponse> {
    let (id, site) = authenticate(state, headers, &report.site_id).await?;
    let ready = report.health.ready && report.health.live;
    let started_at =
        chrono::DateTime::from_timestamp(i64::try_from(report.started_at_unix).unwrap_or(0), 0)
            .unwrap_or_default();
    let body = serde_json::to_value(&report).map_err(anyhow::Error::from)?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO agent_reports (site_id, node_id, task_id, seq, started_at, live, ready, report, received_at, ready_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, NOW(6), IF(?, NOW(6), NULL)) \
         ON DUPLICATE KEY UPDATE node_id = VALUES(node_id), task_id = VALUES(task_id), seq = VALUES(seq), \
         started_at = VALUES(started_at), live = VALUES(live), ready = VALUES(ready), report = VALUES(report), \
         received_at = VALUES(received_at), ready_at = IF(VALUES(ready), NOW(6), ready_at)",
    )
    .bind(id.as_str())
    .bind(swarm_id(report.node_id.as_deref()))
    .bind(swarm_id(report.task_id.as_deref()))
    .bind(i64::try_from(report.seq).unwrap_or(i64::MAX))
    .bind(started_at)
    .bind(report.health.live)
    .bind(ready)
    .bind(&body)
    .bind(ready)
    .execute(&mut *tx)
    .await?;
    if ready && matches!(site.state.as_str(), "provisioning" | "degraded") {
        // A new site becomes active only after its create operation finished (the saga
        // may still be publishing the host table).
        let changed = sqlx::query(
            "UPDATE sites s SET s.state = 'active', s.updated_at = NOW(6) WHERE s.id = ? \
             AND s.state IN ('provisioning', 'degraded') AND NOT EXISTS (SELECT 1 FROM operations o \
             WHERE o.target_type = 'site' AND o.target_id = s.id AND o.state IN ('pending', 'running', 'unwinding'))",
        )
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            audit::record(
                &mut tx,
                None,
                Event {
                    action: "site.ready",
                    tenant_id: Some(&site.tenant_id),
                    target_type: "site",
                    target_id: id.as_str(),
                    details: json!({ "was": site.state, "node_id": swarm_id(report.node_id.as_deref()) }),
                },
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(ReportResponse {
        desired: Some(DesiredConfig {
            generation: u64::try_from(site.generation).unwrap_or(0),
            php: php_settings(site.memory_mb),
            backup: None,
            commands: Vec::new(),
        }),
        report_interval_secs: Some(state.config.agent.report_interval_secs),
    })
}

/// Marks `degraded` every active site whose agent has not been ready for `timeout`
/// (never reported, or last ready longer ago). Returns how many changed.
pub async fn sweep(db: &MySqlPool, timeout: Duration) -> sqlx::Result<u64> {
    let secs = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
    let stale: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.id, s.tenant_id FROM sites s LEFT JOIN agent_reports r ON r.site_id = s.id \
         WHERE s.state = 'active' AND COALESCE(r.ready_at, s.updated_at) < NOW(6) - INTERVAL ? SECOND \
         AND s.updated_at < NOW(6) - INTERVAL ? SECOND",
    )
    .bind(secs)
    .bind(secs)
    .fetch_all(db)
    .await?;
    let mut changed = 0;
    for (site, tenant) in stale {
        let mut tx = db.begin().await?;
        let n = sqlx::query(
            "UPDATE sites SET state = 'degraded', updated_at = NOW(6) WHERE id = ? AND state = 'active'",
        )
        .bind(&site)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            audit::record(
                &mut tx,
                None,
                Event {
                    action: "site.degraded",
                    tenant_id: Some(&tenant),
                    target_type: "site",
                    target_id: &site,
                    details: json!({ "reason": "no ready report from the site's agent", "timeout_secs": secs }),
                },
            )
            .await?;
        }
        tx.commit().await?;
        changed += n;
    }
    Ok(changed)
}

/// Runs [`sweep`] every few seconds until `shutdown`.
pub async fn run_sweeper(db: MySqlPool, timeout: Duration, mut shutdown: watch::Receiver<bool>) {
    let every = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match sweep(&db, timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                sites = n,
                "sites degraded: their agents stopped being ready"
            ),
            Err(err) => tracing::warn!(error = %err, "agent sweep failed"),
        }
    }
}

/// The last report of a site's agent, if any.
pub async fn status(conn: &mut MySqlConnection, site: &str) -> sqlx::Result<Option<AgentStatus>> {
    #[allow(clippy::type_complexity)]
    let row: Option<(
        bool,
        bool,
        Option<String>,
        Option<String>,
        Option<String>,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Value,
    )> = sqlx::query_as(
        "SELECT r.ready, r.live, n.name, r.node_id, r.task_id, r.received_at, r.ready_at, r.report \
         FROM agent_reports r LEFT JOIN nodes n ON n.swarm_node_id = r.node_id WHERE r.site_id = ?",
    )
    .bind(site)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(
        |(ready, live, node_name, node_id, task_id, received_at, ready_at, report)| AgentStatus {
            ready,
            live,
            node: node_name.or(node_id),
            task_id,
            received_at,
            ready_at,
            report,
        },
    ))
}

/// Checks a purge request; too many paths become a ban of the whole site.
fn purge_scope(input: CachePurge) -> ApiResult<(Vec<String>, bool)> {
    let mut errors = Vec::new();
    for (i, path) in input.paths.iter().enumerate() {
        if let Err(err) = backends::varnish::check_purge_path(path) {
            errors.push(crate::error::FieldError::new(
                format!("paths[{i}]"),
                err.to_string(),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let mut paths = input.paths;
    paths.sort();
    paths.dedup();
    let all = input.all || paths.is_empty() || paths.len() > MAX_PURGE_PATHS;
    Ok((if all { Vec::new() } else { paths }, all))
}

/// Bans the site's paths (or everything of its domains) on every Varnish instance.
async fn purge_site(
    state: &AppState,
    site: &SiteResourceId,
    input: CachePurge,
) -> ApiResult<PurgeResult> {
    let (paths, all) = purge_scope(input)?;
    let Some(varnish) = &state.provisioner.varnish else {
        return Ok(PurgeResult {
            banned: 0,
            instances: 0,
        });
    };
    let domains: Vec<String> = sqlx::query_scalar("SELECT domain FROM domains WHERE site_id = ?")
        .bind(site.as_str())
        .fetch_all(&state.db)
        .await?;
    let mut banned = 0u32;
    for domain in &domains {
        let domain = DomainName::parse(domain).map_err(anyhow::Error::new)?;
        let result = if all {
            varnish.ban_host(&domain).await
        } else {
            varnish.ban_paths(&domain, &paths).await
        };
        result.map_err(|err| {
            ApiError::Unavailable(anyhow::Error::new(err).context("banning on Varnish"))
        })?;
        banned += if all {
            1
        } else {
            u32::try_from(paths.len()).unwrap_or(u32::MAX)
        };
    }
    Ok(PurgeResult {
        banned,
        instances: u32::try_from(
            state
                .provisioner
                .config
                .varnish
                .as_ref()
                .map_or(0, |v| v.instances.len()),
        )
        .unwrap_or(u32::MAX),
    })
}

/// `POST /v1/agent/purge`.
pub async fn agent_purge(
    state: &AppState,
    headers: &HeaderMap,
    input: PurgeRequest,
) -> ApiResult<PurgeResult> {
    let (id, _) = authenticate(state, headers, &input.site_id).await?;
    purge_site(
        state,
        &id,
        CachePurge {
            paths: input.paths,
            all: input.all,
        },
    )
    .await
}

/// `POST /v1/sites/{site}/cache/purge`: a member of the site's tenant (or staff).
pub async fn tenant_purge(
    state: &AppState,
    actor: &crate::actor::Actor,
    site: &Id,
    input: CachePurge,
) -> ApiResult<PurgeResult> {
    let found =
        crate::app::sites::get_for(state, actor, site, crate::domain::TenantRole::Member).await?;
    if found.state != "active" && found.state != "degraded" {
        return Err(ApiError::conflict(
            None,
            format!("the site is {}", found.state),
        ));
    }
    let id = SiteResourceId::parse(site.as_str()).map_err(anyhow::Error::new)?;
    let result = purge_site(state, &id, input).await?;
    let mut tx = state.db.begin().await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "site.cache.purge",
            tenant_id: Some(&found.tenant_id),
            target_type: "site",
            target_id: site.as_str(),
            details: json!({ "banned": result.banned }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(result)
}

/// Checks an agent's token against the site `site_id` names, without the rest of the
/// body: the API answers a body it cannot parse with 401 unless this passes.
pub async fn check_token(state: &AppState, headers: &HeaderMap, site_id: &str) -> ApiResult<()> {
    authenticate(state, headers, site_id).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_scope_checks_paths_and_widens_to_all() {
        let (paths, all) = purge_scope(CachePurge {
            paths: vec!["/b/".into(), "/a/".into(), "/b/".into()],
            all: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (paths, all),
            (vec!["/a/".to_owned(), "/b/".to_owned()], false)
        );
        let (paths, all) = purge_scope(CachePurge::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(paths.is_empty() && all, "nothing named: everything");
        let many = (0..=MAX_PURGE_PATHS).map(|i| format!("/p{i}/")).collect();
        let (_, all) = purge_scope(CachePurge {
            paths: many,
            all: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(all);
        match purge_scope(CachePurge {
            paths: vec!["/ok".into(), "no-slash".into()],
            all: false,
        }) {
            Err(ApiError::Invalid(errors)) => assert_eq!(errors[0].field, "paths[1]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn php_settings_follow_the_plan() {
        assert_eq!(php_settings(256).max_children, 4);
        assert_eq!(php_settings(1024).memory_limit_mb, 512);
        assert_eq!(php_settings(64).max_children, 2);
    }
}
