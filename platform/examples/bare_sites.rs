//! The baseline of `scripts/bench-api.sh`: the least an axum + sqlx server can do for the
//! two benchmarked requests, to compare `pressdock serve` against on the same machine.
//!
//! - `GET /v1/tenants/{tenant}/sites`: the one SQL query of the platform's list endpoint
//!   (`platform/src/app/sites.rs`, default page: 50 rows + 1 to know if there is a next
//!   page), rows serialised as JSON. No authentication, no RBAC, no alias query, no
//!   middleware.
//! - `POST /v1/tenants/{tenant}/sites`: one `INSERT INTO sites` of the JSON body's name and
//!   domain. No transaction, no domain rows, no operation, job or audit rows.
//!
//! Same pool size as the platform (20). Configured by `DATABASE_URL` (a database that
//! `pressdock migrate` has prepared, with a `starter` plan) and `LISTEN`.
//!
//! ```text
//! DATABASE_URL=mysql://root@127.0.0.1:3306/pdbench LISTEN=127.0.0.1:8091 \
//!     cargo run --release -p platform --example bare_sites
//! ```

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlPool, mysql::MySqlPoolOptions};

/// The platform's list query (`SELECT` in `app/sites.rs`) with the default filter.
const LIST: &str = "SELECT s.id, s.seq, s.tenant_id, s.name, p.slug AS plan, s.state, s.primary_domain, \
     n.name AS node, s.generation, s.created_at, s.updated_at \
     FROM sites s JOIN plans p ON p.id = s.plan_id \
     LEFT JOIN placements pl ON pl.site_id = s.id LEFT JOIN nodes n ON n.id = pl.node_id \
     WHERE s.tenant_id = ? AND s.seq > ? AND s.state <> 'deleted' ORDER BY s.seq LIMIT ?";

const PAGE: i64 = 50;

#[derive(Serialize, FromRow)]
struct SiteRow {
    id: String,
    seq: i64,
    tenant_id: String,
    name: String,
    plan: String,
    state: String,
    primary_domain: String,
    node: Option<String>,
    generation: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone)]
struct Bare {
    db: MySqlPool,
    plan_id: String,
}

#[derive(Deserialize)]
struct NewSite {
    name: String,
    domain: String,
}

fn internal(err: sqlx::Error) -> Response {
    eprintln!("bare_sites: {err}");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

async fn list(State(bare): State<Bare>, Path(tenant): Path<String>) -> Response {
    let mut rows: Vec<SiteRow> = match sqlx::query_as(LIST)
        .bind(&tenant)
        .bind(0_i64)
        .bind(PAGE + 1)
        .fetch_all(&bare.db)
        .await
    {
        Ok(rows) => rows,
        Err(err) => return internal(err),
    };
    let next = (rows.len() as i64 > PAGE).then(|| {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.seq)
    });
    Json(json!({ "items": rows, "next_cursor": next.flatten() })).into_response()
}

async fn create(
    State(bare): State<Bare>,
    Path(tenant): Path<String>,
    Json(site): Json<NewSite>,
) -> Response {
    let id = platform::domain::Id::generate();
    let inserted = sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain) \
         VALUES (?, ?, ?, ?, 'provisioning', ?)",
    )
    .bind(id.as_str())
    .bind(&tenant)
    .bind(&site.name)
    .bind(&bare.plan_id)
    .bind(&site.domain)
    .execute(&bare.db)
    .await;
    match inserted {
        Ok(_) => (StatusCode::ACCEPTED, Json(json!({ "id": id }))).into_response(),
        Err(err) => internal(err),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("set DATABASE_URL")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8091".to_owned());
    let db = MySqlPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .context("connecting to DATABASE_URL")?;
    let plan_id: String = sqlx::query_scalar("SELECT id FROM plans WHERE slug = 'starter'")
        .fetch_one(&db)
        .await
        .context("reading the starter plan (run `pressdock migrate` first)")?;
    let app = Router::new()
        .route("/v1/tenants/{tenant}/sites", get(list).post(create))
        .with_state(Bare { db, plan_id });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!("bare_sites listening on {listen}");
    axum::serve(listener, app).await.context("serving")
}
