//! Plans: what a site may use (slots on a worker, storage, memory, CPU) and its price.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlPool};
use utoipa::ToSchema;

use super::unique;
use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Fields, Id, Slug, StaffRole, parse_name},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Plan {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// Worker slots a site of this plan takes (a worker has 25).
    pub slots: i32,
    pub storage_mb: i32,
    pub memory_mb: i32,
    pub cpu_millis: i32,
    pub price_cents: i32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    #[schema(pattern = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$")]
    pub slug: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(minimum = 1, maximum = 25)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub slots: i32,
    #[schema(minimum = 64, maximum = 1_048_576)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub storage_mb: i32,
    #[schema(minimum = 64, maximum = 65_536)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub memory_mb: i32,
    #[schema(minimum = 50, maximum = 16_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub cpu_millis: i32,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub price_cents: i32,
}

const COLUMNS: &str = "id, slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents";

pub async fn list(state: &AppState) -> ApiResult<Vec<Plan>> {
    Ok(
        sqlx::query_as::<_, Plan>(sql!("SELECT {COLUMNS} FROM plans ORDER BY slots, slug"))
            .fetch_all(&state.db)
            .await?,
    )
}

pub async fn by_slug(db: &MySqlPool, slug: &str) -> ApiResult<Option<Plan>> {
    Ok(
        sqlx::query_as::<_, Plan>(sql!("SELECT {COLUMNS} FROM plans WHERE slug = ?"))
            .bind(slug)
            .fetch_optional(db)
            .await?,
    )
}

fn in_range(fields: &mut Fields, field: &str, value: i32, min: i32, max: i32) {
    if !(min..=max).contains(&value) {
        fields.push(field, format!("must be between {min} and {max}"));
    }
}

pub async fn create(state: &AppState, actor: &Actor, input: NewPlan) -> ApiResult<Plan> {
    actor.require_staff(&[StaffRole::Admin])?;
    let mut fields = Fields::default();
    let slug = fields.check("slug", Slug::parse(&input.slug));
    let name = fields.check("name", parse_name(&input.name));
    in_range(&mut fields, "slots", input.slots, 1, 25);
    in_range(&mut fields, "storage_mb", input.storage_mb, 64, 1_048_576);
    in_range(&mut fields, "memory_mb", input.memory_mb, 64, 65_536);
    in_range(&mut fields, "cpu_millis", input.cpu_millis, 50, 16_000);
    in_range(&mut fields, "price_cents", input.price_cents, 0, 10_000_000);
    fields.finish()?;
    let (Some(slug), Some(name)) = (slug, name) else {
        return Err(ApiError::field("body", "invalid"));
    };
    let id = Id::generate();
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO plans (id, slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(slug.as_str())
    .bind(&name)
    .bind(input.slots)
    .bind(input.storage_mb)
    .bind(input.memory_mb)
    .bind(input.cpu_millis)
    .bind(input.price_cents)
    .execute(&mut *tx)
    .await;
    unique(inserted, "slug", "a plan with this slug exists")?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "plan.create",
            tenant_id: None,
            target_type: "plan",
            target_id: id.as_str(),
            details: json!({ "slug": slug.as_str(), "slots": input.slots }),
        },
    )
    .await?;
    tx.commit().await?;
    // Its first price: `price_cents` from today (GET/POST /v1/plans/{plan}/prices).
    super::billing::ensure_base_prices(&state.db).await?;
    by_slug(&state.db, slug.as_str())
        .await?
        .ok_or(ApiError::NotFound("plan"))
}

/// The plans every fresh installation has, created once (idempotent).
pub async fn seed_defaults(db: &MySqlPool) -> anyhow::Result<()> {
    const DEFAULTS: &[(&str, &str, i32, i32, i32, i32, i32)] = &[
        ("starter", "Starter", 1, 1024, 256, 250, 900),
        ("business", "Business", 2, 5120, 512, 500, 2900),
        ("agency", "Agency", 4, 20480, 1024, 1000, 7900),
    ];
    for (slug, name, slots, storage, memory, cpu, price) in DEFAULTS {
        sqlx::query(
            "INSERT IGNORE INTO plans (id, slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(Id::generate().as_str())
        .bind(slug)
        .bind(name)
        .bind(slots)
        .bind(storage)
        .bind(memory)
        .bind(cpu)
        .bind(price)
        .execute(db)
        .await?;
    }
    super::billing::ensure_base_prices(db).await?;
    Ok(())
}
