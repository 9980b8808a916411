//! Operations: every multi-step change, with its step log. The API answers `202` with an
//! operation, which the caller polls at `GET /v1/operations/{id}`.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, MySqlConnection, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use crate::{
    actor::Actor,
    app::{Page, encode_cursor, page_bounds},
    domain::{Fields, Id, OperationId, TenantId, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
    states::{OperationKind, OperationState, StepState},
};

/// What a tenant reads of a failure recorded without a public message (by an earlier
/// release, which kept only the internal one).
const UNEXPLAINED: &str = "the operation did not succeed; staff can see why";

impl Operation {
    /// The operation as `actor` may read it: the internal error chains for staff only.
    pub fn for_reader(mut self, actor: &Actor) -> Self {
        if !actor.is_staff() {
            if self.error.is_none() && self.internal_error.is_some() {
                self.error = Some(UNEXPLAINED.to_owned());
            }
            self.internal_error = None;
            for step in &mut self.steps {
                if step.error.is_none() && step.internal_error.is_some() {
                    step.error = Some(UNEXPLAINED.to_owned());
                }
                step.internal_error = None;
            }
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, FromRow, ToSchema)]
pub struct Operation {
    /// The list's cursor position.
    #[serde(skip)]
    #[sqlx(default)]
    pub seq: i64,
    pub id: String,
    pub kind: OperationKind,
    pub tenant_id: Option<String>,
    pub target_type: String,
    pub target_id: String,
    pub state: OperationState,
    /// Why it failed (or is unwinding), in words for anyone who may read the operation.
    #[sqlx(rename = "public_error")]
    pub error: Option<String>,
    /// Staff only: the cause with the backend's whole error chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[sqlx(rename = "error")]
    pub internal_error: Option<String>,
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
    pub state: StepState,
    pub attempts: i32,
    /// Why it failed, retries or waits, in words for anyone who may read the operation.
    #[sqlx(rename = "public_error")]
    pub error: Option<String>,
    /// Staff only: the cause with the backend's whole error chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[sqlx(rename = "error")]
    pub internal_error: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The steps a kind of operation runs in this configuration, in order: what [`enqueue`]
/// records. The sagas answer it (`sagas` implements it for the backends), so this layer
/// starts operations without importing the sagas that run them.
pub trait Plans {
    fn plan(&self, kind: OperationKind) -> Vec<&'static str>;
}

impl<T: Plans + ?Sized> Plans for std::sync::Arc<T> {
    fn plan(&self, kind: OperationKind) -> Vec<&'static str> {
        (**self).plan(kind)
    }
}

/// Writes an operation, its steps and its job; the job runner takes it from there.
pub async fn enqueue(
    conn: &mut MySqlConnection,
    plans: &(impl Plans + ?Sized),
    actor: Option<&Actor>,
    kind: OperationKind,
    tenant_id: Option<&str>,
    target_type: &str,
    target_id: &str,
) -> ApiResult<OperationId> {
    let steps = plans.plan(kind);
    let id = OperationId::generate();
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
        "SELECT id, kind, tenant_id, target_type, target_id, state, error, public_error, \
         created_at, updated_at, finished_at FROM operations WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound("operation"))?;
    op.steps = sqlx::query_as::<_, Step>(
        "SELECT position, name, state, attempts, error, public_error, started_at, finished_at \
         FROM operation_steps WHERE operation_id = ? ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(op)
}

pub async fn get(state: &AppState, actor: &Actor, id: &OperationId) -> ApiResult<Operation> {
    let mut conn = state.db.acquire().await?;
    let op = load(&mut conn, id.as_str()).await?;
    match op.tenant_id.as_deref().and_then(TenantId::parse) {
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
    Ok(op.for_reader(actor))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OperationFilter {
    /// Only this tenant's operations (staff see every tenant's without it; tenant users
    /// see those of the tenants they belong to).
    #[param(pattern = "^[a-z2-7]{10}$")]
    pub tenant: Option<String>,
    /// Only operations in this state: pending, running, unwinding, succeeded, failed.
    #[param(pattern = "^(pending|running|unwinding|succeeded|failed)$")]
    pub state: Option<String>,
    /// Only this kind, such as `site.create`.
    #[param(pattern = "^[a-z._]{1,32}$")]
    pub kind: Option<String>,
    /// Only operations on this target (a site id).
    #[param(pattern = "^[a-z2-7]{10}$")]
    pub target: Option<String>,
    /// Where the previous page ended (its `next_cursor`).
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// 1 to 500; 100 by default.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Newest first, without their steps (`GET /v1/operations/{id}` has them). Scoped like
/// `get`: staff see everything, a tenant user the operations of their tenants; another
/// tenant given as `tenant` is a 404.
pub async fn list(
    state: &AppState,
    actor: &Actor,
    filter: OperationFilter,
) -> ApiResult<Page<Operation>> {
    let mut fields = Fields::default();
    let (limit, before) = page_bounds(
        &mut fields,
        filter.limit,
        (100, 500),
        filter.cursor.as_deref(),
        i64::MAX,
    );
    if let Some(st) = &filter.state
        && OperationState::parse(st).is_none()
    {
        let names: Vec<_> = OperationState::ALL.iter().map(|s| s.as_str()).collect();
        fields.push("state", format!("must be one of {}", names.join(", ")));
    }
    if let Some(kind) = &filter.kind
        && (kind.is_empty()
            || kind.len() > 32
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'))
    {
        fields.push("kind", "must be an operation kind such as site.create");
    }
    let tenant = match &filter.tenant {
        Some(t) => fields.check(
            "tenant",
            TenantId::parse(t).ok_or_else(|| "must be a tenant id".to_owned()),
        ),
        None => None,
    };
    let target = match &filter.target {
        Some(t) => fields.check(
            "target",
            Id::parse(t).ok_or_else(|| "must be a site id".to_owned()),
        ),
        None => None,
    };
    fields.finish()?;
    if let Some(tenant) = &tenant {
        actor
            .require_tenant(state, tenant, TenantRole::Viewer)
            .await?;
    }
    let mut query = QueryBuilder::new(
        "SELECT o.seq, o.id, o.kind, o.tenant_id, o.target_type, o.target_id, o.state, o.error, \
         o.public_error, o.created_at, o.updated_at, o.finished_at FROM operations o WHERE o.seq < ",
    );
    query.push_bind(before.unwrap_or(i64::MAX));
    match &tenant {
        Some(tenant) => {
            query
                .push(" AND o.tenant_id = ")
                .push_bind(tenant.as_str().to_owned());
        }
        None if actor.is_staff() => {}
        None => {
            query
                .push(
                    " AND o.tenant_id IN (SELECT m.tenant_id FROM memberships m WHERE m.user_id = ",
                )
                .push_bind(actor.user_id.clone())
                .push(")");
        }
    }
    if let Some(st) = &filter.state {
        query.push(" AND o.state = ").push_bind(st.clone());
    }
    if let Some(kind) = &filter.kind {
        query.push(" AND o.kind = ").push_bind(kind.clone());
    }
    if let Some(target) = &target {
        query
            .push(" AND o.target_id = ")
            .push_bind(target.as_str().to_owned());
    }
    query
        .push(" ORDER BY o.seq DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let items: Vec<Operation> = query.build_query_as().fetch_all(&state.db).await?;
    let mut items: Vec<Operation> = items.into_iter().map(|o| o.for_reader(actor)).collect();
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|o| encode_cursor(o.seq))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
