//! On-demand drills: `POST /v1/backups/{backup}/verify`, for staff. The drill itself is an
//! operation (`backup.verify`, see `backup/drill_job.rs`); its result lands on the backup
//! and shows in `GET /v1/sites/{site}/backups` and `GET /v1/backups/{backup}`.
//!
//! Staff only: a drill restores a whole site into scratch space, which is the platform's
//! cost to schedule, not a tenant's to trigger at will (the schedule drills every site).

use serde_json::json;
use sqlx::MySqlConnection;

use crate::{
    actor::Actor,
    app::{
        backups::{self, BackupAccepted},
        operations,
    },
    audit::{self, Event},
    domain::{BackupId, OperationId, StaffRole, TenantRole},
    error::{ApiError, ApiResult},
    provision::Backends,
    state::AppState,
    states::OperationKind,
};

/// `POST /v1/backups/{backup}/verify`: enqueues a drill of a complete backup.
pub async fn verify(state: &AppState, actor: &Actor, id: &BackupId) -> ApiResult<BackupAccepted> {
    let backup = backups::authorized(state, actor, id, TenantRole::Viewer).await?;
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    backups::configured(state)?;
    let mut tx = state.db.begin().await?;
    let current: String = sqlx::query_scalar("SELECT state FROM backups WHERE id = ? FOR UPDATE")
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if current != "complete" {
        return Err(ApiError::conflict(
            None,
            format!("the backup is {current}; only a complete backup can be verified"),
        ));
    }
    let Some(op) = enqueue(
        &mut tx,
        &state.backends,
        Some(actor),
        &backup.tenant_id,
        id.as_str(),
    )
    .await?
    else {
        return Err(ApiError::conflict(
            None,
            "a drill of this backup is already under way; wait for it to finish",
        ));
    };
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "backup.verify",
            tenant_id: Some(&backup.tenant_id),
            target_type: "backup",
            target_id: id.as_str(),
            details: json!({ "site": backup.site_id, "operation": op }),
        },
    )
    .await?;
    let accepted = BackupAccepted {
        backup: backups::load(&mut tx, id.as_str()).await?,
        operation: operations::load(&mut tx, op.as_str()).await?,
    };
    tx.commit().await?;
    state.wake_runner();
    Ok(accepted)
}

/// Enqueues a drill of `backup` (of `tenant`) in `conn`'s transaction, whose caller holds
/// the backup's row (`FOR UPDATE`); `None` when one is already under way.
pub async fn enqueue(
    conn: &mut MySqlConnection,
    backends: &Backends,
    actor: Option<&Actor>,
    tenant: &str,
    backup: &str,
) -> ApiResult<Option<OperationId>> {
    let under_way: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE kind = 'backup.verify' AND target_type = 'backup' \
         AND target_id = ? AND state IN ('pending', 'running', 'unwinding')",
    )
    .bind(backup)
    .fetch_one(&mut *conn)
    .await?;
    if under_way > 0 {
        return Ok(None);
    }
    let op = operations::enqueue(
        conn,
        backends,
        actor,
        OperationKind::BackupVerify,
        Some(tenant),
        "backup",
        backup,
    )
    .await?;
    sqlx::query("UPDATE backups SET verify_operation_id = ? WHERE id = ?")
        .bind(op.as_str())
        .bind(backup)
        .execute(&mut *conn)
        .await?;
    Ok(Some(op))
}
