//! A site's backups: on-demand creation (an operation run by the job runner, see
//! `backup/job.rs`), list, get and delete. Scoped like the site: another tenant's site or
//! backup is a 404.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlConnection};
use utoipa::{IntoParams, ToSchema};

use crate::{
    actor::Actor,
    app::{Page, encode_cursor, operations, operations::Operation, page_bounds, sites},
    audit::{self, Event},
    domain::{BackupId, Fields, SiteId, TenantId, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
    states::OperationKind,
};

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Backup {
    #[serde(skip)]
    #[sqlx(default)]
    pub seq: i64,
    pub id: String,
    pub site_id: String,
    pub tenant_id: String,
    /// manual (on demand), scheduled (by the plan's backup policy), final (taken when the
    /// site was deleted; kept `[backups] final_retention_days`), pre_restore (taken
    /// before a restore overwrote the site: restoring it undoes the restore).
    pub kind: String,
    /// pending, running, complete (every object written and read back), failed,
    /// deleting, deleted.
    pub state: String,
    /// The operation that ran it.
    pub operation_id: Option<String>,
    /// Bytes stored for the database dump (zstd).
    pub database_bytes: Option<i64>,
    /// Bytes stored for wp-content (tar, zstd).
    pub files_bytes: Option<i64>,
    /// SHA-256 of the backup's `manifest.json`.
    pub manifest_sha256: Option<String>,
    /// Tables in the dump.
    pub tables_count: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When a drill last restored this backup into a scratch database and folder and
    /// compared it with its manifest (`null`: never).
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// That drill's result: passed or failed.
    pub verify_result: Option<String>,
    /// Why that drill failed (names the object or table at fault).
    pub verify_error: Option<String>,
    /// The schedule's slot a scheduled backup was taken for (UTC).
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
}

/// A backup change accepted for the job runner.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackupAccepted {
    pub backup: Backup,
    pub operation: Operation,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BackupFilter {
    /// Where the previous page ended (its `next_cursor`).
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

const COLUMNS: &str = "b.seq, b.id, b.site_id, b.tenant_id, b.kind, b.state, b.operation_id, \
     b.database_bytes, b.files_bytes, b.manifest_sha256, b.tables_count, b.error, b.created_at, \
     b.started_at, b.completed_at, b.verified_at, b.verify_result, b.verify_error, \
     b.scheduled_for";

pub(crate) async fn load(conn: &mut MySqlConnection, id: &str) -> ApiResult<Backup> {
    sqlx::query_as::<_, Backup>(crate::sql!(
        "SELECT {COLUMNS} FROM backups b WHERE b.id = ? AND b.state <> 'deleted'"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound("backup"))
}

/// The backup if the caller has at least `min` in its tenant; 404 otherwise. By tenant,
/// not by site: a deleted site's backups (its final one) stay reachable to its tenant
/// until they are pruned.
pub(crate) async fn authorized(
    state: &AppState,
    actor: &Actor,
    id: &BackupId,
    min: TenantRole,
) -> ApiResult<Backup> {
    let mut conn = state.db.acquire().await?;
    let backup = load(&mut conn, id.as_str()).await?;
    drop(conn);
    let tenant = TenantId::parse(&backup.tenant_id).ok_or(ApiError::NotFound("backup"))?;
    actor
        .require_tenant(state, &tenant, min)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::NotFound("backup"),
            other => other,
        })?;
    Ok(backup)
}

pub(crate) fn configured(state: &AppState) -> ApiResult<()> {
    if state.backends.config.s3.is_none() {
        return Err(ApiError::conflict(
            None,
            "backups are not configured on this platform ([backends.s3])",
        ));
    }
    Ok(())
}

/// Whether a restore (or a clone into it, or an undelete) of `site` is under way: its
/// `site.restore` or `site.undelete` operation not yet ended. A backup then would read a
/// site being overwritten.
pub(crate) async fn restore_under_way(conn: &mut MySqlConnection, site: &str) -> ApiResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
         AND kind IN ('site.restore', 'site.undelete') AND state IN ('pending', 'running', 'unwinding')",
    )
    .bind(site)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// `POST /v1/sites/{site}/backups`: records a `pending` backup and enqueues its operation.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    site_id: &SiteId,
) -> ApiResult<BackupAccepted> {
    let site = sites::get_for(state, actor, site_id, TenantRole::Member).await?;
    configured(state)?;
    let mut tx = state.db.begin().await?;
    // The site's row, locked: two requests at once make one backup, then a 409.
    let (site_state, plan_id): (String, String) =
        sqlx::query_as("SELECT state, plan_id FROM sites WHERE id = ? FOR UPDATE")
            .bind(site_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
    if !matches!(site_state.as_str(), "active" | "degraded" | "suspended") {
        return Err(ApiError::conflict(
            None,
            format!("the site is {site_state}; only an active or suspended site can be backed up"),
        ));
    }
    let running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE site_id = ? AND state IN ('pending', 'running')",
    )
    .bind(site_id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if running > 0 {
        return Err(ApiError::conflict(
            None,
            "a backup of this site is already under way; wait for it to finish",
        ));
    }
    if restore_under_way(&mut tx, site_id.as_str()).await? {
        return Err(ApiError::conflict(
            None,
            "a restore of this site is under way (it takes its own backup first); \
             back it up when the restore has finished",
        ));
    }
    let id = BackupId::generate();
    sqlx::query(
        "INSERT INTO backups (id, tenant_id, site_id, kind, state, plan_id) \
         VALUES (?, ?, ?, 'manual', 'pending', ?)",
    )
    .bind(id.as_str())
    .bind(&site.tenant_id)
    .bind(site_id.as_str())
    .bind(&plan_id)
    .execute(&mut *tx)
    .await?;
    let op = operations::enqueue(
        &mut tx,
        &state.backends,
        Some(actor),
        OperationKind::SiteBackup,
        Some(site.tenant_id.as_str()),
        "backup",
        id.as_str(),
    )
    .await?;
    sqlx::query("UPDATE backups SET operation_id = ? WHERE id = ?")
        .bind(op.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "backup.create",
            tenant_id: Some(site.tenant_id.as_str()),
            target_type: "backup",
            target_id: id.as_str(),
            details: json!({ "site": site_id.as_str(), "operation": op }),
        },
    )
    .await?;
    let accepted = BackupAccepted {
        backup: load(&mut tx, id.as_str()).await?,
        operation: operations::load(&mut tx, op.as_str()).await?,
    };
    tx.commit().await?;
    state.wake_runner();
    Ok(accepted)
}

/// `GET /v1/sites/{site}/backups`: newest first, without deleted ones. A deleted site's
/// too (its final backup is the one to bring it back with) until they are pruned.
pub async fn list(
    state: &AppState,
    actor: &Actor,
    site_id: &SiteId,
    filter: BackupFilter,
) -> ApiResult<Page<Backup>> {
    sites::get_any_state_for(state, actor, site_id, TenantRole::Viewer).await?;
    let mut fields = Fields::default();
    let (limit, before) = page_bounds(
        &mut fields,
        filter.limit,
        (50, 200),
        filter.cursor.as_deref(),
        i64::MAX,
    );
    fields.finish()?;
    let mut items: Vec<Backup> = sqlx::query_as(crate::sql!(
        "SELECT {COLUMNS} FROM backups b WHERE b.site_id = ? AND b.state <> 'deleted' \
         AND b.seq < ? ORDER BY b.seq DESC LIMIT ?"
    ))
    .bind(site_id.as_str())
    .bind(before.unwrap_or(i64::MAX))
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.db)
    .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|b| encode_cursor(b.seq))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantBackupFilter {
    /// Only backups of this kind: manual, scheduled, final, pre_restore.
    #[param(pattern = "^(manual|scheduled|final|pre_restore)$")]
    pub kind: Option<String>,
    /// Where the previous page ended (its `next_cursor`).
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// `GET /v1/tenants/{tenant}/backups`: the tenant's backups of every site, deleted sites
/// included (a deleted site's final backup is found here), newest first.
pub async fn list_for_tenant(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    filter: TenantBackupFilter,
) -> ApiResult<Page<Backup>> {
    actor
        .require_tenant(state, tenant, TenantRole::Viewer)
        .await?;
    let mut fields = Fields::default();
    let (limit, before) = page_bounds(
        &mut fields,
        filter.limit,
        (50, 200),
        filter.cursor.as_deref(),
        i64::MAX,
    );
    if let Some(kind) = &filter.kind
        && !matches!(
            kind.as_str(),
            "manual" | "scheduled" | "final" | "pre_restore"
        )
    {
        fields.push("kind", "must be manual, scheduled, final or pre_restore");
    }
    fields.finish()?;
    let mut items: Vec<Backup> = sqlx::query_as(crate::sql!(
        "SELECT {COLUMNS} FROM backups b WHERE b.tenant_id = ? AND b.state <> 'deleted' \
         AND (? IS NULL OR b.kind = ?) AND b.seq < ? ORDER BY b.seq DESC LIMIT ?"
    ))
    .bind(tenant.as_str())
    .bind(filter.kind.as_deref())
    .bind(filter.kind.as_deref())
    .bind(before.unwrap_or(i64::MAX))
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.db)
    .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|b| encode_cursor(b.seq))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// `GET /v1/backups/{backup}`.
pub async fn get(state: &AppState, actor: &Actor, id: &BackupId) -> ApiResult<Backup> {
    authorized(state, actor, id, TenantRole::Viewer).await
}

/// `DELETE /v1/backups/{backup}`: removes its objects (an operation), then `deleted`.
pub async fn delete(state: &AppState, actor: &Actor, id: &BackupId) -> ApiResult<BackupAccepted> {
    let backup = authorized(state, actor, id, TenantRole::Member).await?;
    configured(state)?;
    let mut tx = state.db.begin().await?;
    let current: String = sqlx::query_scalar("SELECT state FROM backups WHERE id = ? FOR UPDATE")
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if !matches!(current.as_str(), "complete" | "failed") {
        return Err(ApiError::conflict(
            None,
            format!("the backup is {current}; only a complete or failed backup can be deleted"),
        ));
    }
    sqlx::query("UPDATE backups SET state = 'deleting' WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    let op = operations::enqueue(
        &mut tx,
        &state.backends,
        Some(actor),
        OperationKind::BackupDelete,
        Some(&backup.tenant_id),
        "backup",
        id.as_str(),
    )
    .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "backup.delete",
            tenant_id: Some(&backup.tenant_id),
            target_type: "backup",
            target_id: id.as_str(),
            details: json!({ "site": backup.site_id, "operation": op }),
        },
    )
    .await?;
    let accepted = BackupAccepted {
        backup: load(&mut tx, id.as_str()).await?,
        operation: operations::load(&mut tx, op.as_str()).await?,
    };
    tx.commit().await?;
    state.wake_runner();
    Ok(accepted)
}
