//! Tenants: the agency's clients. Staff create and change them; members see their own.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlPool};
use utoipa::ToSchema;

use super::unique;
use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Fields, Slug, StaffRole, TenantId, TenantRole, parse_name},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub state: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Short URL-safe name, unique.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$")]
    pub slug: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantChange {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
}

const COLUMNS: &str = "id, slug, name, state, created_at";

pub async fn create(state: &AppState, actor: &Actor, input: NewTenant) -> ApiResult<Tenant> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut fields = Fields::default();
    let slug = fields.check("slug", Slug::parse(&input.slug));
    let name = fields.check("name", parse_name(&input.name));
    fields.finish()?;
    let (Some(slug), Some(name)) = (slug, name) else {
        return Err(ApiError::field("body", "invalid"));
    };
    let id = TenantId::generate();
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query("INSERT INTO tenants (id, slug, name) VALUES (?, ?, ?)")
        .bind(id.as_str())
        .bind(slug.as_str())
        .bind(&name)
        .execute(&mut *tx)
        .await;
    unique(inserted, "slug", "a tenant with this slug exists")?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "tenant.create",
            tenant_id: Some(id.as_str()),
            target_type: "tenant",
            target_id: id.as_str(),
            details: json!({ "slug": slug.as_str() }),
        },
    )
    .await?;
    tx.commit().await?;
    get_unchecked(&state.db, &id).await
}

pub async fn get_unchecked(db: &MySqlPool, id: &TenantId) -> ApiResult<Tenant> {
    sqlx::query_as::<_, Tenant>(sql!("SELECT {COLUMNS} FROM tenants WHERE id = ?"))
        .bind(id.as_str())
        .fetch_optional(db)
        .await?
        .ok_or(ApiError::NotFound("tenant"))
}

pub async fn get(state: &AppState, actor: &Actor, id: &TenantId) -> ApiResult<Tenant> {
    actor.require_tenant(state, id, TenantRole::Viewer).await?;
    get_unchecked(&state.db, id).await
}

/// Staff see every tenant; everyone else the tenants they belong to.
pub async fn list(state: &AppState, actor: &Actor) -> ApiResult<Vec<Tenant>> {
    let rows = if actor.is_staff() {
        sqlx::query_as::<_, Tenant>(sql!("SELECT {COLUMNS} FROM tenants ORDER BY slug"))
            .fetch_all(&state.db)
            .await?
    } else {
        sqlx::query_as::<_, Tenant>(
            "SELECT t.id, t.slug, t.name, t.state, t.created_at FROM tenants t \
             JOIN memberships m ON m.tenant_id = t.id WHERE m.user_id = ? ORDER BY t.slug",
        )
        .bind(&actor.user_id)
        .fetch_all(&state.db)
        .await?
    };
    Ok(rows)
}

pub async fn update(
    state: &AppState,
    actor: &Actor,
    id: &TenantId,
    change: TenantChange,
) -> ApiResult<Tenant> {
    actor.require_tenant(state, id, TenantRole::Viewer).await?;
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut fields = Fields::default();
    let name = change.name.as_deref().map(parse_name).transpose();
    let name = fields.check("name", name).flatten();
    fields.finish()?;
    let mut tx = state.db.begin().await?;
    if let Some(name) = &name {
        sqlx::query("UPDATE tenants SET name = ?, updated_at = NOW(6) WHERE id = ?")
            .bind(name)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "tenant.update",
            tenant_id: Some(id.as_str()),
            target_type: "tenant",
            target_id: id.as_str(),
            details: json!({ "name": name }),
        },
    )
    .await?;
    tx.commit().await?;
    get_unchecked(&state.db, id).await
}

/// Deletes a tenant that has no sites left.
pub async fn delete(state: &AppState, actor: &Actor, id: &TenantId) -> ApiResult<()> {
    actor.require_tenant(state, id, TenantRole::Viewer).await?;
    actor.require_staff(&[StaffRole::Admin])?;
    let mut tx = state.db.begin().await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sites WHERE tenant_id = ? AND state <> 'deleted' FOR UPDATE",
    )
    .bind(id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        return Err(ApiError::conflict(
            None,
            format!("the tenant still has {live} sites; delete them first"),
        ));
    }
    sqlx::query("DELETE FROM sites WHERE tenant_id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM tenants WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "tenant.delete",
            tenant_id: Some(id.as_str()),
            target_type: "tenant",
            target_id: id.as_str(),
            details: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
