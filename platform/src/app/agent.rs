//! The site agents' side of the control plane (DESIGN.md, "Agent protocol").
//!
//! Every site's `pressdock-agent` posts a report every few seconds with the site's agent
//! token (`POST /v1/agent/report`); the answer carries the site's desired config and its
//! generation. The first ready report makes a new site `active`; a site whose agent has
//! not been ready for `[agent] report_timeout_secs` becomes `degraded` (the sweeper), and
//! `active` again with the next ready report. Content changes in WordPress reach every
//! Varnish through the agent (`POST /v1/agent/purge`) or a tenant
//! (`POST /v1/sites/{site}/cache/purge`).
//!
//! One report is kept per site, and reports arrive out of order: during a move or an
//! update swarm runs the new task and the old one side by side (start-first), and the old
//! one keeps reporting while it drains. [`supersedes`] decides whether a report replaces
//! the stored one, so `GET /v1/sites/{site}` and the move saga's readiness check never go
//! back to a task the site left.

use std::time::Duration;

use agent_protocol::{AgentReport, DesiredConfig, PhpSettings, PurgeRequest, ReportResponse};
use axum::http::HeaderMap;
use backends::{DomainName, SiteResourceId, swarm::SecretKind, varnish::EdgeCache};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, MySqlPool};
use utoipa::ToSchema;

use crate::{
    app::site_state::{self, SiteEvent},
    audit::{self, Event},
    error::{ApiError, ApiResult},
    state::AppState,
    states::SiteState,
};

/// At most this many paths per purge; more is a ban of the whole site.
pub const MAX_PURGE_PATHS: usize = agent_protocol::MAX_PURGE_PATHS;

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
    let expected =
        crate::provision::open_secret(&state.db, &state.secrets, &id, SecretKind::AgentToken)
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

/// The identity and age of an agent report: which task sent it, from which worker, and
/// where it stands in that agent's own sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOrigin {
    pub task_id: Option<String>,
    /// The swarm node id the agent reported.
    pub node_id: Option<String>,
    /// When the agent process started (its clock), then its report counter.
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seq: i64,
}

/// Whether `incoming` replaces `stored`, the site's current report. `current_node` is the
/// swarm id of the worker the site is placed on (`None` if unknown); `stored_is_fresh`
/// says the stored report arrived within `agent.report_timeout_secs`.
///
/// - A stale stored report gives way to anything: a misjudged order can never freeze the
///   status for longer than the timeout.
/// - The same task (same task id, or neither has one and the node is the same): only a
///   later report of that agent (a later start, else a higher sequence number).
/// - Another task: one on the site's worker beats one elsewhere (the old task of a move
///   drains on the worker the site left); between two on the same side, the one that
///   started later (the old task of an update on the same worker started earlier).
pub fn supersedes(
    stored: &ReportOrigin,
    stored_is_fresh: bool,
    incoming: &ReportOrigin,
    current_node: Option<&str>,
) -> bool {
    if !stored_is_fresh {
        return true;
    }
    let same_task = match (&stored.task_id, &incoming.task_id) {
        (Some(a), Some(b)) => a == b,
        (None, None) => stored.node_id == incoming.node_id,
        _ => false,
    };
    if same_task {
        return (incoming.started_at, incoming.seq) > (stored.started_at, stored.seq);
    }
    let on_current =
        |o: &ReportOrigin| current_node.is_some() && o.node_id.as_deref() == current_node;
    match (on_current(stored), on_current(incoming)) {
        (false, true) => true,
        (true, false) => false,
        _ => incoming.started_at >= stored.started_at,
    }
}

/// Stores the report if it [`supersedes`] the site's current one; says whether it did.
/// Runs in `tx` (READ COMMITTED: the row lock of the stored report orders concurrent
/// reports of a site, and no gap lock ties the first reports of two sites together).
async fn store_report(
    tx: &mut MySqlConnection,
    site: &str,
    origin: &ReportOrigin,
    ready: bool,
    live: bool,
    body: &Value,
    fresh_secs: u64,
) -> sqlx::Result<bool> {
    let current: Option<Option<String>> = sqlx::query_scalar(
        "SELECT n.swarm_node_id FROM placements pl JOIN nodes n ON n.id = pl.node_id WHERE pl.site_id = ?",
    )
    .bind(site)
    .fetch_optional(&mut *tx)
    .await?;
    let current = current.flatten();
    // Twice at most: the first report of a site may race another task's first one.
    for _ in 0..2 {
        #[allow(clippy::type_complexity)]
        let stored: Option<(
            Option<String>,
            Option<String>,
            chrono::DateTime<chrono::Utc>,
            i64,
            bool,
        )> = sqlx::query_as(
            "SELECT task_id, node_id, started_at, seq, received_at > NOW(6) - INTERVAL ? SECOND \
             FROM agent_reports WHERE site_id = ? FOR UPDATE",
        )
        .bind(i64::try_from(fresh_secs).unwrap_or(i64::MAX))
        .bind(site)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((task_id, node_id, started_at, seq, fresh)) = stored else {
            let inserted = sqlx::query(
                "INSERT IGNORE INTO agent_reports (site_id, node_id, task_id, seq, started_at, live, ready, \
                 report, received_at, ready_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NOW(6), IF(?, NOW(6), NULL))",
            )
            .bind(site)
            .bind(&origin.node_id)
            .bind(&origin.task_id)
            .bind(origin.seq)
            .bind(origin.started_at)
            .bind(live)
            .bind(ready)
            .bind(body)
            .bind(ready)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted > 0 {
                return Ok(true);
            }
            // Another task's first report got there first: compare with it.
            continue;
        };
        let stored = ReportOrigin {
            task_id,
            node_id,
            started_at,
            seq,
        };
        if !supersedes(&stored, fresh, origin, current.as_deref()) {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE agent_reports SET node_id = ?, task_id = ?, seq = ?, started_at = ?, live = ?, ready = ?, \
             report = ?, received_at = NOW(6), ready_at = IF(?, NOW(6), ready_at) WHERE site_id = ?",
        )
        .bind(&origin.node_id)
        .bind(&origin.task_id)
        .bind(origin.seq)
        .bind(origin.started_at)
        .bind(live)
        .bind(ready)
        .bind(body)
        .bind(ready)
        .bind(site)
        .execute(&mut *tx)
        .await?;
        return Ok(true);
    }
    Ok(false)
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
    let origin = ReportOrigin {
        task_id: swarm_id(report.task_id.as_deref()).map(str::to_owned),
        node_id: swarm_id(report.node_id.as_deref()).map(str::to_owned),
        started_at,
        seq: i64::try_from(report.seq).unwrap_or(i64::MAX),
    };
    let mut conn = state.db.acquire().await?;
    // Applies to the next transaction on this connection only.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // The counters of the report this one replaces, for the access-log counts (billing).
    #[allow(clippy::type_complexity)]
    let previous: Option<(
        Option<String>,
        chrono::DateTime<chrono::Utc>,
        i64,
        Option<i64>,
        Option<i64>,
    )> = sqlx::query_as(
        "SELECT task_id, started_at, seq, \
             CAST(JSON_VALUE(report, '$.counters.requests_total') AS SIGNED), \
             CAST(JSON_VALUE(report, '$.counters.response_bytes_total') AS SIGNED) \
             FROM agent_reports WHERE site_id = ? FOR UPDATE",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let stored = store_report(
        &mut tx,
        id.as_str(),
        &origin,
        ready,
        report.health.live,
        &body,
        state.config.agent.report_timeout_secs,
    )
    .await?;
    if !stored {
        // The old task of a move or an update, still draining: answered as usual (it
        // still applies the desired config), but the site's status stays with the task
        // that replaced it.
        tracing::debug!(
            site = %id,
            task_id = origin.task_id.as_deref().unwrap_or(""),
            seq = origin.seq,
            "agent report older than the site's current one: not stored"
        );
    }
    if stored && (report.sizes.wp_content_bytes.is_some() || report.sizes.database_bytes.is_some())
    {
        // Storage for billing: the first measured report of each hour is its sample.
        crate::app::billing::record_agent_storage(
            &mut tx,
            id.as_str(),
            chrono::Utc::now(),
            report.sizes.wp_content_bytes,
            report.sizes.database_bytes,
        )
        .await?;
    }
    if stored {
        let previous = previous.map(|(task_id, started_at, seq, requests, bytes)| {
            (
                task_id,
                started_at,
                seq,
                u64::try_from(requests.unwrap_or(0)).unwrap_or(0),
                u64::try_from(bytes.unwrap_or(0)).unwrap_or(0),
            )
        });
        let (requests, bytes) = crate::app::billing::counted_since(
            previous
                .as_ref()
                .map(|(task, started, seq, r, b)| (task.as_deref(), *started, *seq, *r, *b)),
            (origin.task_id.as_deref(), origin.started_at, origin.seq),
            report.counters.requests_total,
            report.counters.response_bytes_total,
        );
        crate::app::billing::record_agent_requests(
            &mut tx,
            id.as_str(),
            chrono::Utc::now(),
            requests,
            bytes,
        )
        .await?;
    }
    if stored && ready && matches!(site.state.as_str(), "provisioning" | "degraded") {
        // A new site becomes active only after its create operation finished (the saga
        // may still be publishing the host table): `change` leaves a busy site alone.
        if let Some(Ok(changed)) =
            site_state::change(&mut tx, id.as_str(), SiteEvent::AgentReady).await?
            && changed.from != changed.to
        {
            audit::record(
                &mut tx,
                None,
                Event {
                    action: "site.ready",
                    tenant_id: Some(&site.tenant_id),
                    target_type: "site",
                    target_id: id.as_str(),
                    details: json!({ "was": changed.from, "node_id": swarm_id(report.node_id.as_deref()) }),
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
        let n = match site_state::change(&mut tx, &site, SiteEvent::AgentSilent).await? {
            Some(Ok(c)) if c.from != c.to => 1,
            _ => 0,
        };
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
    let Some(varnish) = &state.backends.varnish else {
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
                .backends
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
    site: &crate::domain::SiteId,
    input: CachePurge,
) -> ApiResult<PurgeResult> {
    let found =
        crate::app::sites::get_for(state, actor, site, crate::domain::TenantRole::Member).await?;
    if !matches!(found.state, SiteState::Active | SiteState::Degraded) {
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
            tenant_id: Some(found.tenant_id.as_str()),
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

    fn origin(task: Option<&str>, node: &str, started: i64, seq: i64) -> ReportOrigin {
        ReportOrigin {
            task_id: task.map(str::to_owned),
            node_id: Some(node.to_owned()),
            started_at: chrono::DateTime::from_timestamp(1_700_000_000 + started, 0)
                .unwrap_or_default(),
            seq,
        }
    }

    #[test]
    fn a_report_never_replaces_a_newer_one() {
        let b = origin(Some("taskb"), "nodeb", 60, 5);
        // A move from node a to node b: the old task, draining on a, reports after the new
        // one (it started earlier, its sequence is further on).
        let old = origin(Some("taska"), "nodea", 0, 90);
        let anon = origin(None, "nodeb", 60, 7);
        let on_b = |task, started, seq| origin(Some(task), "nodeb", started, seq);
        // A fresh stored report, node b the site's worker: (why, stored, incoming, stored
        // again).
        let cases = [
            // The same task: only later in its own sequence (or after a restart).
            ("same task, next seq", &b, on_b("taskb", 60, 6), true),
            ("same task, same seq", &b, on_b("taskb", 60, 5), false),
            ("same task, older seq", &b, on_b("taskb", 60, 4), false),
            ("same task, restarted", &b, on_b("taskb", 61, 1), true),
            // The old task of a move is never stored again.
            ("old task after the new", &b, old.clone(), false),
            // Before the new task reported, the old one's reports are the only news.
            (
                "old task, next seq",
                &old,
                origin(Some("taska"), "nodea", 0, 91),
                true,
            ),
            ("new task after the old", &old, b.clone(), true),
            // Even a new task started earlier by its clock wins from the site's worker.
            ("new task, earlier clock", &old, on_b("taskb", -5, 1), true),
            // Two tasks on the site's worker (an update): the later start wins.
            ("update, earlier start", &b, on_b("taskc", 30, 9), false),
            ("update, later start", &b, on_b("taskd", 90, 1), true),
            // Agents without task ids on one node are one agent restarting.
            (
                "no task ids, older seq",
                &anon,
                origin(None, "nodeb", 60, 3),
                false,
            ),
            (
                "no task ids, restarted",
                &anon,
                origin(None, "nodeb", 62, 1),
                true,
            ),
        ];
        for (why, stored, incoming, want) in cases {
            assert_eq!(
                supersedes(stored, true, &incoming, Some("nodeb")),
                want,
                "{why}"
            );
        }
        // Worker unknown (no swarm id): the later start, whatever the node.
        assert!(!supersedes(&b, true, &old, None));
        assert!(supersedes(&old, true, &b, None));
        // A stored report older than the timeout gives way to anything.
        assert!(supersedes(&b, false, &old, Some("nodeb")));
    }

    #[test]
    fn php_settings_follow_the_plan() {
        assert_eq!(php_settings(256).max_children, 4);
        assert_eq!(php_settings(1024).memory_limit_mb, 512);
        assert_eq!(php_settings(64).max_children, 2);
    }
}
