//! Operations: every multi-step change, with its step log. The API answers `202` with an
//! operation, which the caller polls at `GET /v1/operations/{id}`.

use serde::Serialize;
use sqlx::{FromRow, MySqlConnection};
use utoipa::ToSchema;

use crate::{
    actor::Actor,
    domain::{Id, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Clone, Serialize, serde::Deserialize, FromRow, ToSchema)]
pub struct Operation {
    pub id: String,
    /// site.create, site.delete, site.suspend, site.resume.
    pub kind: String,
    pub tenant_id: Option<String>,
    pub target_type: String,
    pub target_id: String,
    /// pending, running, unwinding, succeeded, failed.
    pub state: String,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    #[sqlx(skip)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, FromRow, ToSchema)]
pub struct Step {
    pub position: i32,
    pub name: String,
    /// pending, running, done, failed, undoing, undone.
    pub state: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Writes an operation, its steps and its job; the job runner takes it from there.
pub async fn enqueue(
    conn: &mut MySqlConnection,
    provisioner: &crate::provision::Provisioner,
    actor: Option<&Actor>,
    kind: &str,
    tenant_id: Option<&str>,
    target_type: &str,
    target_id: &str,
) -> ApiResult<Id> {
    let steps = provisioner
        .steps(kind)
        .ok_or_else(|| anyhow::anyhow!("unknown saga {kind}"))?;
    let id = Id::generate();
    sqlx::query(
        "INSERT INTO operations (id, kind, tenant_id, target_type, target_id, state, created_by) \
         VALUES (?, ?, ?, ?, ?, 'pending', ?)",
    )
    .bind(id.as_str())
    .bind(kind)
    .bind(tenant_id)
    .bind(target_type)
    .bind(target_id)
    .bind(actor.map(|a| a.user_id.as_str()))
    .execute(&mut *conn)
    .await?;
    for (position, name) in steps.iter().enumerate() {
        sqlx::query(
            "INSERT INTO operation_steps (operation_id, position, name, state) VALUES (?, ?, ?, 'pending')",
        )
        .bind(id.as_str())
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(name)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("INSERT INTO jobs (operation_id, state) VALUES (?, 'queued')")
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

pub async fn load(conn: &mut MySqlConnection, id: &str) -> ApiResult<Operation> {
    let mut op = sqlx::query_as::<_, Operation>(
        "SELECT id, kind, tenant_id, target_type, target_id, state, error, created_at, updated_at, \
         finished_at FROM operations WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound("operation"))?;
    op.steps = sqlx::query_as::<_, Step>(
        "SELECT position, name, state, attempts, error, started_at, finished_at \
         FROM operation_steps WHERE operation_id = ? ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(op)
}

pub async fn get(state: &AppState, actor: &Actor, id: &Id) -> ApiResult<Operation> {
    let mut conn = state.db.acquire().await?;
    let op = load(&mut conn, id.as_str()).await?;
    match op.tenant_id.as_deref().and_then(Id::parse) {
        Some(tenant) => {
            actor
                .require_tenant(state, &tenant, TenantRole::Viewer)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => ApiError::NotFound("operation"),
                    other => other,
                })?;
        }
        None if actor.is_staff() => {}
        None => return Err(ApiError::NotFound("operation")),
    }
    Ok(op)
}
