//! Reading the audit log: staff read everything, tenant owners their tenant's events.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use crate::{
    actor::Actor,
    app::{Page, encode_cursor, page_bounds},
    domain::{Fields, TenantId, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct AuditEvent {
    #[serde(skip)]
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub tenant_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub source_ip: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Option<sqlx::types::Json<serde_json::Value>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Only this action, such as `site.create`.
    pub action: Option<String>,
    /// From `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// 1 to 500; 100 by default.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Newest first.
pub async fn list(
    state: &AppState,
    actor: &Actor,
    tenant: Option<&TenantId>,
    filter: AuditFilter,
) -> ApiResult<Page<AuditEvent>> {
    match tenant {
        Some(tenant) => {
            actor
                .require_tenant(state, tenant, TenantRole::Owner)
                .await?;
        }
        None if actor.is_staff() => {}
        None => return Err(ApiError::Forbidden("the whole audit log is for staff")),
    }
    let mut fields = Fields::default();
    let (limit, before) = page_bounds(
        &mut fields,
        filter.limit,
        (100, 500),
        filter.cursor.as_deref(),
        i64::MAX,
    );
    fields.finish()?;
    let mut query = QueryBuilder::new(
        "SELECT id, at, actor_id, actor_email, tenant_id, action, target_type, target_id, source_ip, \
         request_id, details FROM audit_events WHERE id < ",
    );
    query.push_bind(before.unwrap_or(i64::MAX));
    if let Some(tenant) = tenant {
        query.push(" AND tenant_id = ").push_bind(tenant.as_str());
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.clone());
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let mut items: Vec<AuditEvent> = query.build_query_as().fetch_all(&state.db).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| encode_cursor(e.id))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
