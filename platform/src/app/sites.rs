//! Sites: a WordPress site of a tenant, with its domains and plan.
//!
//! Creating, deleting, suspending and resuming a site are operations run by the job
//! runner (`202` with the operation). Domains are normalised (IDNA → punycode, lower-case)
//! and unique across all tenants: the `domains` table's primary key makes two concurrent
//! creates of one domain end with exactly one winner and a 409 for the other.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlConnection, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::{
    Page, encode_cursor,
    idempotency::{self, IdemKey, Replay},
    operations::{self, Operation},
    page_bounds,
    site_state::{self, SiteEvent},
    unique,
};
use crate::{
    actor::{Actor, Credentials},
    audit::{self, Event},
    domain::{DomainName, Email, Fields, Id, SiteId, TenantId, TenantRole, parse_name},
    error::{ApiError, ApiResult},
    state::AppState,
    states::{OperationKind, SiteState},
};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Site {
    #[schema(value_type = String)]
    pub id: SiteId,
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    pub name: String,
    /// The plan's slug.
    pub plan: String,
    pub state: SiteState,
    /// The primary domain.
    pub domain: String,
    pub aliases: Vec<String>,
    /// The worker node the site is placed on.
    pub node: Option<String>,
    /// Plain HTTP keeps being served for the site's domains once they have a certificate
    /// (by default the edge redirects HTTP to HTTPS; the ACME challenge path always stays
    /// on HTTP).
    pub keep_http: bool,
    /// The edge sends `Strict-Transport-Security: max-age=31536000` on the site's HTTPS
    /// answers (browsers then refuse plain HTTP for a year: turn it on once HTTPS works).
    pub hsts: bool,
    pub generation: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The last report of the site's agent (`GET /v1/sites/{site}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::app::agent::AgentStatus>,
    /// Each domain's certificate, primary first (`GET /v1/sites/{site}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Vec<crate::certs::DomainCertificate>>,
}

/// A change accepted for the job runner.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub site: Site,
    pub operation: Operation,
    /// On create only: the first WordPress administrator. The password is shown in
    /// this answer once (a replay of the request omits it); change it after logging in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminCredentials>,
}

/// The site's first WordPress administrator.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminCredentials {
    pub user: String,
    pub email: String,
    /// Only in the answer that created the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Where to log in.
    pub login_url: String,
}

/// A domain name as the OpenAPI document describes it: a subset of what
/// [`DomainName::parse`] accepts (ASCII labels with at most one hyphen, a last label that
/// starts with a letter, up to four labels), so that every name it allows is accepted.
const DOMAIN_PATTERN: &str = r"^([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z][A-Za-z0-9]{0,29}(-[A-Za-z0-9]{1,30})?$";

/// The schema of `aliases`: at most [`MAX_ALIASES`] distinct domain names.
fn alias_list() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .max_length(Some(253))
                .pattern(Some(DOMAIN_PATTERN)),
        )
        .max_items(Some(MAX_ALIASES))
        .unique_items(true)
        .build()
}

fn alias_list_or_null() -> utoipa::openapi::Array {
    let mut list = alias_list();
    list.schema_type = utoipa::openapi::schema::SchemaType::from_iter([
        utoipa::openapi::schema::Type::Array,
        utoipa::openapi::schema::Type::Null,
    ]);
    list
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// The primary domain; IDNA names are stored as punycode.
    #[schema(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z][A-Za-z0-9]{0,29}(-[A-Za-z0-9]{1,30})?$"
    )]
    pub domain: String,
    /// Other domains of the site, each different from the others and the primary.
    #[serde(default)]
    #[schema(schema_with = alias_list)]
    pub aliases: Vec<String>,
    /// The plan's slug (see `GET /v1/plans`).
    #[schema(pattern = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$")]
    pub plan: String,
    /// Login of the first WordPress administrator; `admin` by default.
    #[schema(pattern = "^[a-z0-9._-]{1,60}$")]
    pub admin_user: Option<String>,
    /// E-mail of the first WordPress administrator; the creating user's by default.
    #[schema(format = "email", max_length = 254)]
    pub admin_email: Option<String>,
    /// Keep serving plain HTTP once the domains have certificates (no redirect to HTTPS);
    /// `false` by default.
    pub keep_http: Option<bool>,
    /// Send HSTS on HTTPS answers; `false` by default.
    pub hsts: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteChange {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    #[schema(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z][A-Za-z0-9]{0,29}(-[A-Za-z0-9]{1,30})?$"
    )]
    pub domain: Option<String>,
    #[schema(schema_with = alias_list_or_null)]
    pub aliases: Option<Vec<String>>,
    #[schema(pattern = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$")]
    pub plan: Option<String>,
    /// Keep serving plain HTTP (no redirect to HTTPS).
    pub keep_http: Option<bool>,
    /// Send HSTS on HTTPS answers.
    pub hsts: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SiteFilter {
    /// Only sites in this state.
    #[param(pattern = "^(provisioning|active|degraded|suspended|deleting|deleted|failed)$")]
    pub state: Option<String>,
    /// Only the site with this domain (primary or alias).
    #[param(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z][A-Za-z0-9]{0,29}(-[A-Za-z0-9]{1,30})?$"
    )]
    pub domain: Option<String>,
    /// From `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

const MAX_ALIASES: usize = 20;

// STRAIGHT_JOIN: start from `sites` so a page walks `ix_sites_tenant(_state)` and stops
// after `limit + 1` rows; left to itself MariaDB may start from the 3-row `plans` table and
// read every site of a plan (measured in docs/benchmarks.md, API section).
//
// A site's aliases are read from its own row (`sites.aliases`, the copy written with the
// `domains` rows; migration m20261206_000017), used only when it was written at the site's
// current generation: NULL otherwise (a row the previous release wrote), and then
// [`fill_stale_aliases`] reads `domains`. Joining `domains` for every page (one row per
// alias) took about 1.7× the bare page's database time (docs/benchmarks.md).
const COLUMNS: &str = "s.id, s.seq, s.tenant_id, s.name, p.slug AS plan, s.state, s.primary_domain, \
     IF(s.aliases_generation = s.generation, s.aliases, NULL) AS aliases, \
     n.name AS node, s.keep_http, s.hsts, s.generation, s.created_at, s.updated_at";
const FROM: &str = "sites s JOIN plans p ON p.id = s.plan_id \
     LEFT JOIN placements pl ON pl.site_id = s.id LEFT JOIN nodes n ON n.id = pl.node_id";

/// A row of [`COLUMNS`]: `aliases` is the copy, `None` when it is stale.
#[derive(FromRow)]
struct SiteRow {
    id: SiteId,
    seq: i64,
    tenant_id: TenantId,
    name: String,
    plan: String,
    state: SiteState,
    primary_domain: String,
    aliases: Option<String>,
    node: Option<String>,
    keep_http: bool,
    hsts: bool,
    generation: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// The copy of a site's aliases as `sites.aliases` stores it: sorted, one space between.
fn alias_copy(domains: &[DomainName]) -> String {
    let mut aliases: Vec<&str> = domains.iter().skip(1).map(DomainName::as_str).collect();
    aliases.sort_unstable();
    aliases.join(" ")
}

/// The site of a row; `stale` collects the ids whose aliases are still to be read.
fn site_of(r: SiteRow, stale: &mut Vec<String>) -> (i64, Site) {
    let aliases = match r.aliases {
        Some(copy) => copy
            .split(' ')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        None => {
            stale.push(r.id.as_str().to_owned());
            Vec::new()
        }
    };
    (
        r.seq,
        Site {
            aliases,
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            plan: r.plan,
            state: r.state,
            domain: r.primary_domain,
            node: r.node,
            keep_http: r.keep_http,
            hsts: r.hsts,
            generation: r.generation,
            created_at: r.created_at,
            updated_at: r.updated_at,
            agent: None,
            certificates: None,
        },
    )
}

/// The aliases of sites whose copy is stale, read from `domains` (one query for all;
/// nothing when there are none, the usual case).
async fn fill_stale_aliases(
    conn: &mut MySqlConnection,
    sites: &mut [(i64, Site)],
    stale: &[String],
) -> ApiResult<()> {
    if stale.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new(
        "SELECT site_id, domain FROM domains WHERE is_primary = 0 AND site_id IN (",
    );
    let mut ids = query.separated(", ");
    for id in stale {
        ids.push_bind(id.clone());
    }
    query.push(") ORDER BY site_id, domain");
    let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&mut *conn).await?;
    for (_, site) in sites.iter_mut() {
        if stale.iter().any(|id| site.id == *id.as_str()) {
            site.aliases = rows
                .iter()
                .filter(|(id, _)| site.id == *id.as_str())
                .map(|(_, domain)| domain.clone())
                .collect();
        }
    }
    Ok(())
}

/// Writes the copy of the site's aliases (`sites.aliases`) at the site's current
/// generation: with the `domains` rows, in the same transaction.
async fn write_alias_copy(
    conn: &mut MySqlConnection,
    site: &str,
    domains: &[DomainName],
) -> ApiResult<()> {
    sqlx::query("UPDATE sites SET aliases = ?, aliases_generation = generation WHERE id = ?")
        .bind(alias_copy(domains))
        .bind(site)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn load(conn: &mut MySqlConnection, id: &str) -> ApiResult<Site> {
    load_in(conn, id, false).await
}

/// The site, `deleted` ones too when `deleted` says so.
async fn load_in(conn: &mut MySqlConnection, id: &str, deleted: bool) -> ApiResult<Site> {
    // Constants only in the text; the id is bound.
    let row: Option<SiteRow> = sqlx::query_as(crate::sql!(
        "SELECT STRAIGHT_JOIN {COLUMNS} FROM {FROM} WHERE s.id = ? AND (? OR s.state <> 'deleted')"
    ))
    .bind(id)
    .bind(deleted)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or(ApiError::NotFound("site"))?;
    let mut stale = Vec::new();
    let mut sites = [site_of(row, &mut stale)];
    fill_stale_aliases(conn, &mut sites, &stale).await?;
    let [(_, site)] = sites;
    Ok(site)
}

/// The site if the caller may see it with at least `min`; 404 otherwise.
async fn authorized(
    state: &AppState,
    actor: &Actor,
    id: &SiteId,
    min: TenantRole,
) -> ApiResult<Site> {
    authorized_in(state, actor, id, min, false).await
}

/// [`authorized`], `deleted` sites too when `deleted` says so.
async fn authorized_in(
    state: &AppState,
    actor: &Actor,
    id: &SiteId,
    min: TenantRole,
    deleted: bool,
) -> ApiResult<Site> {
    let mut conn = state.db.acquire().await?;
    let site = load_in(&mut conn, id.as_str(), deleted).await?;
    actor
        .require_tenant(state, &site.tenant_id, min)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::NotFound("site"),
            other => other,
        })?;
    Ok(site)
}

pub async fn get(state: &AppState, actor: &Actor, id: &SiteId) -> ApiResult<Site> {
    let mut site = authorized(state, actor, id, TenantRole::Viewer).await?;
    let mut conn = state.db.acquire().await?;
    site.agent = crate::app::agent::status(&mut conn, id.as_str()).await?;
    drop(conn);
    let domains: Vec<String> = std::iter::once(site.domain.clone())
        .chain(site.aliases.iter().cloned())
        .collect();
    site.certificates = Some(crate::certs::store::for_domains(&state.db, &domains).await?);
    Ok(site)
}

/// The site if the caller has at least `min` in its tenant; 404 otherwise.
pub async fn get_for(
    state: &AppState,
    actor: &Actor,
    id: &SiteId,
    min: TenantRole,
) -> ApiResult<Site> {
    authorized(state, actor, id, min).await
}

/// The site in any state, `deleted` included, if the caller has at least `min` in its
/// tenant; 404 otherwise. For what a tenant still does with a deleted site: list its
/// backups, restore one of them into it (an undelete), read that restore.
pub async fn get_any_state_for(
    state: &AppState,
    actor: &Actor,
    id: &SiteId,
    min: TenantRole,
) -> ApiResult<Site> {
    authorized_in(state, actor, id, min, true).await
}

/// A tenant's sites, a page at a time, as the caller presented themselves.
///
/// The caller is read in the same statement as the page: the actor's query
/// ([`Credentials::push_actor`]) is a one-row table joined to each of the page's sites
/// (an empty page reads the caller alone, in a second statement); the page's rows are used only once the caller is found allowed, with the same
/// checks in the same order as every other route (401, then 404/403 for the tenant,
/// then 422 for the parameters). One round trip and one pooled connection where it was
/// two of each. Parameters that make no page are answered after the caller's own
/// statement, as before.
pub async fn list(
    state: &AppState,
    credentials: Credentials,
    tenant: &str,
    filter: Result<SiteFilter, ApiError>,
) -> ApiResult<Page<Site>> {
    let tenant = TenantId::parse(tenant);
    let (tenant, filter) = match (tenant, filter.and_then(check_filter)) {
        (Some(tenant), Ok(filter)) => (tenant, filter),
        (tenant, filter) => {
            // No page to ask for: who is asking first, then why not.
            let actor = credentials.resolve(&state.db).await?;
            let tenant = tenant.ok_or(ApiError::NotFound("tenant"))?;
            actor
                .require_tenant(state, &tenant, TenantRole::Viewer)
                .await?;
            return Err(filter.err().unwrap_or(ApiError::NotFound("tenant")));
        }
    };
    // STRAIGHT_JOIN: the page's walk of `ix_sites_tenant(_state)` in `seq` order, stopping
    // after `limit + 1` sites, exactly as the page alone; the actor's statement is a one-row
    // table joined to each site (MariaDB reads it first, as a constant). No derived table
    // and no sort: measured with `Handler_read%`, the statement reads what the page alone
    // reads plus the actor's key reads (docs/benchmarks.md, API, issue 10 third pass).
    let mut query = QueryBuilder::new("SELECT STRAIGHT_JOIN a.*, ");
    query
        .push(COLUMNS)
        .push(" FROM ")
        .push(FROM)
        .push(" JOIN (");
    credentials.push_actor(&mut query);
    query.push(") a WHERE TRUE");
    push_page(&mut query, &tenant, &filter);
    let rows = query.build().fetch_all(&state.db).await?;
    // No row: an empty page, or a caller the actor's statement does not find (then no
    // site was read). Who is asking is then read alone, with the same checks.
    let actor = match rows.first() {
        Some(row) => credentials.actor_from_row(Some(row), &state.db).await?,
        None => credentials.resolve(&state.db).await?,
    };
    actor
        .require_tenant(state, &tenant, TenantRole::Viewer)
        .await?;
    let mut sites: Vec<(i64, Site)> = Vec::with_capacity(rows.len());
    let mut stale = Vec::new();
    for row in &rows {
        sites.push(site_of(SiteRow::from_row(row)?, &mut stale));
    }
    if !stale.is_empty() {
        let mut conn = state.db.acquire().await?;
        fill_stale_aliases(&mut conn, &mut sites, &stale).await?;
    }
    let next_cursor = if sites.len() > filter.limit as usize {
        sites.truncate(filter.limit as usize);
        sites.last().map(|(seq, _)| encode_cursor(*seq))
    } else {
        None
    };
    Ok(Page {
        items: sites.into_iter().map(|(_, site)| site).collect(),
        next_cursor,
    })
}

/// A list's parameters, checked.
struct PageFilter {
    limit: u32,
    after: i64,
    state: Option<String>,
    domain: Option<DomainName>,
}

/// 422 naming every bad parameter, or the page they ask for.
fn check_filter(filter: SiteFilter) -> ApiResult<PageFilter> {
    let mut fields = Fields::default();
    let (limit, after) = page_bounds(
        &mut fields,
        filter.limit,
        (50, 200),
        filter.cursor.as_deref(),
        0,
    );
    if let Some(s) = &filter.state
        && SiteState::parse(s).is_none()
    {
        let names: Vec<_> = SiteState::ALL.iter().map(|s| s.as_str()).collect();
        fields.push("state", format!("must be one of {}", names.join(", ")));
    }
    let domain = filter.domain.as_deref().map(DomainName::parse).transpose();
    let domain = fields.check("domain", domain).flatten();
    fields.finish()?;
    Ok(PageFilter {
        limit,
        after: after.unwrap_or(0),
        state: filter.state,
        domain,
    })
}

/// The page's conditions on `sites s` (after a `WHERE`), its order
/// and its `LIMIT`: `limit + 1` sites, to know whether there is a next page.
fn push_page(query: &mut QueryBuilder<sqlx::MySql>, tenant: &TenantId, filter: &PageFilter) {
    query
        .push(" AND s.tenant_id = ")
        .push_bind(tenant.as_str().to_owned());
    query.push(" AND s.seq > ").push_bind(filter.after);
    match &filter.state {
        Some(state) => query.push(" AND s.state = ").push_bind(state.clone()),
        None => query.push(" AND s.state <> 'deleted'"),
    };
    if let Some(domain) = &filter.domain {
        query
            .push(" AND s.id IN (SELECT site_id FROM domains WHERE domain = ")
            .push_bind(domain.as_str().to_owned())
            .push(")");
    }
    query
        .push(" ORDER BY s.seq LIMIT ")
        .push_bind(i64::from(filter.limit) + 1);
}

/// Parses the primary domain and aliases into one de-duplicated list, primary first.
/// A WordPress login we create: what `sanitize_user` keeps in strict mode, lower case.
fn parse_admin_user(input: &str) -> Result<String, String> {
    let ok = !input.is_empty()
        && input.len() <= 60
        && input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(input.to_owned())
    } else {
        Err("1 to 60 characters of a-z, 0-9, '.', '_' and '-'".into())
    }
}

fn parse_domains(fields: &mut Fields, domain: &str, aliases: &[String]) -> Vec<DomainName> {
    let mut all = Vec::new();
    if let Some(primary) = fields.check("domain", DomainName::parse(domain)) {
        all.push(primary);
    }
    if aliases.len() > MAX_ALIASES {
        fields.push("aliases", format!("at most {MAX_ALIASES} aliases"));
    }
    for (i, alias) in aliases.iter().enumerate() {
        if let Some(alias) = fields.check(&format!("aliases[{i}]"), DomainName::parse(alias)) {
            if all.contains(&alias) {
                fields.push(
                    format!("aliases[{i}]"),
                    "repeats another domain of the site",
                );
            } else {
                all.push(alias);
            }
        }
    }
    all
}

/// Inserts domain rows; a taken one is a 409 naming the field.
async fn insert_domains(
    conn: &mut MySqlConnection,
    site: &str,
    domains: &[DomainName],
) -> ApiResult<()> {
    for (i, domain) in domains.iter().enumerate() {
        let inserted =
            sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, ?)")
                .bind(domain.as_str())
                .bind(site)
                .bind(i == 0)
                .execute(&mut *conn)
                .await;
        let field = if i == 0 { "domain" } else { "aliases" };
        unique(
            inserted,
            field,
            format!("{domain} is already used by a site"),
        )?;
    }
    Ok(())
}

/// Gives a deleted site its domains back (an undelete), in the caller's transaction, the
/// site's row locked by the caller: its primary domain, a 409 naming `domain` if another
/// site uses it now; then each alias it had when it was deleted (kept in `sites.aliases`
/// by the delete, see `sagas::site_steps::release_domains`) that no site uses now.
/// Returns the aliases another site took meanwhile, which the site does not get back, and
/// the list it kept before (which a failed undelete puts back).
pub(crate) async fn reclaim_domains(
    conn: &mut MySqlConnection,
    site: &str,
) -> ApiResult<Reclaimed> {
    let (primary, kept): (String, Option<String>) =
        sqlx::query_as("SELECT primary_domain, aliases FROM sites WHERE id = ?")
            .bind(site)
            .fetch_one(&mut *conn)
            .await?;
    let primary = DomainName::parse(&primary).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "site {site}'s stored primary domain does not parse: {e}"
        ))
    })?;
    let inserted =
        sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, 1)")
            .bind(primary.as_str())
            .bind(site)
            .execute(&mut *conn)
            .await;
    unique(
        inserted,
        "domain",
        format!(
            "{primary} is now used by another site; make a new site from the backup under \
             another domain instead (POST /v1/backups/{{backup}}/clones)"
        ),
    )?;
    let mut domains = vec![primary];
    let mut taken = Vec::new();
    for alias in kept.as_deref().unwrap_or("").split(' ') {
        // Written by us from `domains`: a name that no longer parses is dropped.
        let Ok(alias) = DomainName::parse(alias) else {
            continue;
        };
        if domains.contains(&alias) {
            continue;
        }
        // A taken alias is skipped, not an error: the site comes back without it.
        let added = sqlx::query(
            "INSERT IGNORE INTO domains (domain, site_id, is_primary) VALUES (?, ?, 0)",
        )
        .bind(alias.as_str())
        .bind(site)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if added == 1 {
            domains.push(alias);
        } else {
            taken.push(alias.as_str().to_owned());
        }
    }
    write_alias_copy(&mut *conn, site, &domains).await?;
    Ok(Reclaimed {
        taken,
        kept_before: kept.unwrap_or_default(),
    })
}

/// What [`reclaim_domains`] did.
#[derive(Debug)]
pub(crate) struct Reclaimed {
    /// The kept aliases another site uses now: not given back.
    pub taken: Vec<String>,
    /// `sites.aliases` as the delete left it, before it was rewritten to the aliases given
    /// back.
    pub kept_before: String,
}

/// The outcome of a create: a new site, or the stored response of an earlier identical request.
pub enum Created {
    New(Box<Accepted>),
    Replayed(Replay),
}

pub async fn create(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    input: NewSite,
    idem: Option<IdemKey>,
) -> ApiResult<Created> {
    actor
        .require_tenant(state, tenant, TenantRole::Member)
        .await?;
    let valid = validate_new(state, actor, input).await?;
    let mut tx = state.db.begin().await?;
    if let Some(key) = &idem
        && let Some(replay) = idempotency::claim(&mut tx, &actor.user_id, key).await?
    {
        return Ok(Created::Replayed(replay));
    }
    let (mut accepted, password) = insert_new(&mut tx, state, actor, tenant, valid).await?;
    if let Some(key) = &idem {
        // Stored without the password: a replay must not hand it out again.
        let body = serde_json::to_value(&accepted).map_err(anyhow::Error::from)?;
        idempotency::store(&mut tx, &actor.user_id, key, StatusCode::ACCEPTED, &body).await?;
    }
    if let Some(admin) = accepted.admin.as_mut() {
        admin.password = Some(password.expose().to_owned());
    }
    tx.commit().await?;
    state.wake_runner();
    Ok(Created::New(Box::new(accepted)))
}

/// A new site's fields, checked.
pub(crate) struct ValidNewSite {
    name: String,
    domains: Vec<DomainName>,
    plan: super::plans::Plan,
    admin_user: String,
    admin_email: String,
    keep_http: bool,
    hsts: bool,
}

/// Checks a new site's fields: every invalid one is named in one 422.
pub(crate) async fn validate_new(
    state: &AppState,
    actor: &Actor,
    input: NewSite,
) -> ApiResult<ValidNewSite> {
    let mut fields = Fields::default();
    let name = fields.check("name", parse_name(&input.name));
    let domains = parse_domains(&mut fields, &input.domain, &input.aliases);
    let plan = super::plans::by_slug(&state.db, &input.plan).await?;
    if plan.is_none() {
        fields.push("plan", "is not a plan; see GET /v1/plans");
    }
    let admin_user = fields.check(
        "admin_user",
        parse_admin_user(input.admin_user.as_deref().unwrap_or("admin")),
    );
    let admin_email = fields.check(
        "admin_email",
        Email::parse(input.admin_email.as_deref().unwrap_or(&actor.email))
            .map(|e| e.as_str().to_owned()),
    );
    fields.finish()?;
    let (Some(admin_user), Some(admin_email)) = (admin_user, admin_email) else {
        return Err(ApiError::field("body", "invalid"));
    };
    let (Some(name), Some(plan)) = (name, plan) else {
        return Err(ApiError::field("body", "invalid"));
    };
    Ok(ValidNewSite {
        name,
        domains,
        plan,
        admin_user,
        admin_email,
        keep_http: input.keep_http.unwrap_or(false),
        hsts: input.hsts.unwrap_or(false),
    })
}

/// Records a new site (`provisioning`), its domains and sealed administrator password,
/// and enqueues its create operation, in the caller's transaction. Returns the answer
/// (without the password) and the password.
pub(crate) async fn insert_new(
    tx: &mut MySqlConnection,
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    valid: ValidNewSite,
) -> ApiResult<(Accepted, backends::Secret)> {
    let ValidNewSite {
        name,
        domains,
        plan,
        admin_user,
        admin_email,
        keep_http,
        hsts,
    } = valid;
    let tenant_state: Option<String> = sqlx::query_scalar("SELECT state FROM tenants WHERE id = ?")
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if tenant_state.as_deref() != Some("active") {
        return Err(ApiError::conflict(None, "the tenant is not active"));
    }
    let id = Id::generate();
    // Every site starts `provisioning`; from here on only `site_state::change` writes it.
    sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain, admin_user, admin_email, \
         keep_http, hsts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(tenant.as_str())
    .bind(&name)
    .bind(&plan.id)
    .bind(SiteState::Provisioning)
    .bind(domains[0].as_str())
    .bind(&admin_user)
    .bind(&admin_email)
    .bind(keep_http)
    .bind(hsts)
    .execute(&mut *tx)
    .await?;
    super::billing::record_site_state(&mut *tx, Some(id.as_str())).await?;
    insert_domains(&mut *tx, id.as_str(), &domains).await?;
    write_alias_copy(&mut *tx, id.as_str(), &domains).await?;
    // The administrator's one-time password: sealed with the site's other secrets (the
    // saga hands it to the installer) and shown once, in this answer.
    let password = state
        .backends
        .store_admin_password(&mut *tx, id.as_str())
        .await?;
    let op = operations::enqueue(
        &mut *tx,
        &state.backends,
        Some(actor),
        OperationKind::SiteCreate,
        Some(tenant.as_str()),
        "site",
        id.as_str(),
    )
    .await?;
    audit::record(
        &mut *tx,
        Some(actor),
        Event {
            action: "site.create",
            tenant_id: Some(tenant.as_str()),
            target_type: "site",
            target_id: id.as_str(),
            details: json!({ "domains": domains, "plan": plan.slug, "operation": op }),
        },
    )
    .await?;
    let accepted = Accepted {
        site: load(&mut *tx, id.as_str()).await?,
        operation: operations::load(&mut *tx, op.as_str())
            .await?
            .for_reader(actor),
        admin: Some(AdminCredentials {
            user: admin_user,
            email: admin_email,
            password: None,
            login_url: format!("http://{}/wp-login.php", domains[0]),
        }),
    };
    Ok((accepted, password))
}

pub async fn update(
    state: &AppState,
    actor: &Actor,
    id: &SiteId,
    change: SiteChange,
) -> ApiResult<Accepted> {
    let site = authorized(state, actor, id, TenantRole::Member).await?;
    if site_state::decide(site.state, SiteEvent::Requested(OperationKind::SiteUpdate)).is_err() {
        return Err(ApiError::conflict(
            None,
            format!("the site is {}; try again when it is active", site.state),
        ));
    }
    let mut fields = Fields::default();
    let name = fields
        .check("name", change.name.as_deref().map(parse_name).transpose())
        .flatten();
    let domains = (change.domain.is_some() || change.aliases.is_some()).then(|| {
        parse_domains(
            &mut fields,
            change.domain.as_deref().unwrap_or(&site.domain),
            change.aliases.as_deref().unwrap_or(&site.aliases),
        )
    });
    let plan = match &change.plan {
        Some(slug) => {
            let plan = super::plans::by_slug(&state.db, slug).await?;
            if plan.is_none() {
                fields.push("plan", "is not a plan; see GET /v1/plans");
            }
            plan
        }
        None => None,
    };
    fields.finish()?;

    let mut tx = state.db.begin().await?;
    // Lock the site row: concurrent changes of one site apply one after the other.
    sqlx::query("SELECT id FROM sites WHERE id = ? FOR UPDATE")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if let Some(name) = &name {
        sqlx::query("UPDATE sites SET name = ? WHERE id = ?")
            .bind(name)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(domains) = &domains {
        sqlx::query("DELETE FROM domains WHERE site_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        insert_domains(&mut tx, id.as_str(), domains).await?;
        // The copy of the aliases is marked current by the generation's bump below.
        sqlx::query("UPDATE sites SET primary_domain = ?, aliases = ? WHERE id = ?")
            .bind(domains[0].as_str())
            .bind(alias_copy(domains))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(plan) = &plan {
        refit_plan(&mut tx, id.as_str(), plan).await?;
    }
    // The edge reads these from the database (`GET /edge/traefik.json`): no backend step.
    if let Some(keep_http) = change.keep_http {
        sqlx::query("UPDATE sites SET keep_http = ? WHERE id = ?")
            .bind(keep_http)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(hsts) = change.hsts {
        sqlx::query("UPDATE sites SET hsts = ? WHERE id = ?")
            .bind(hsts)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    // The alias copy moves to the new generation when it was just written, or was current
    // and the domains did not change; a stale copy stays stale. (`aliases_generation` is
    // assigned first: it reads the old `generation` whatever the server's assignment mode.)
    sqlx::query(
        "UPDATE sites SET aliases_generation = IF(? OR aliases_generation = generation, \
         generation + 1, aliases_generation), generation = generation + 1, updated_at = NOW(6) \
         WHERE id = ?",
    )
    .bind(domains.is_some())
    .bind(id.as_str())
    .execute(&mut *tx)
    .await?;
    super::billing::record_site_state(&mut tx, Some(id.as_str())).await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "site.update",
            tenant_id: Some(site.tenant_id.as_str()),
            target_type: "site",
            target_id: id.as_str(),
            details: json!({ "name": name, "domains": domains, "plan": plan.as_ref().map(|p| &p.slug), "keep_http": change.keep_http, "hsts": change.hsts }),
        },
    )
    .await?;
    ensure_idle(&mut tx, id).await?;
    // The database holds the new desired state; the operation applies it to the backends.
    let op = operations::enqueue(
        &mut tx,
        &state.backends,
        Some(actor),
        OperationKind::SiteUpdate,
        Some(site.tenant_id.as_str()),
        "site",
        id.as_str(),
    )
    .await?;
    let accepted = Accepted {
        site: load(&mut tx, id.as_str()).await?,
        operation: operations::load(&mut tx, op.as_str())
            .await?
            .for_reader(actor),
        admin: None,
    };
    tx.commit().await?;
    state.wake_runner();
    Ok(accepted)
}

/// 409 while another operation of the site is under way: one change at a time.
async fn ensure_idle(conn: &mut MySqlConnection, id: &SiteId) -> ApiResult<()> {
    let busy: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
         AND state IN ('pending', 'running', 'unwinding')",
    )
    .bind(id.as_str())
    .fetch_one(conn)
    .await?;
    if busy > 0 {
        return Err(ApiError::conflict(
            None,
            "another operation of this site is under way; try again when it finishes",
        ));
    }
    Ok(())
}

/// Moves a placed site to a new plan if its worker has room for the new slot count.
async fn refit_plan(
    conn: &mut MySqlConnection,
    site: &str,
    plan: &super::plans::Plan,
) -> ApiResult<()> {
    let placed: Option<(String, i32)> =
        sqlx::query_as("SELECT node_id, slots FROM placements WHERE site_id = ? FOR UPDATE")
            .bind(site)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((node, slots)) = placed
        && plan.slots > slots
    {
        let (capacity, used): (i32, i64) = sqlx::query_as(
            "SELECT n.slots, CAST(COALESCE((SELECT SUM(p.slots) FROM placements p WHERE p.node_id = n.id), 0) AS SIGNED) \
             FROM nodes n WHERE n.id = ? FOR UPDATE",
        )
        .bind(&node)
        .fetch_one(&mut *conn)
        .await?;
        if used - i64::from(slots) + i64::from(plan.slots) > i64::from(capacity) {
            // Re-fit: the active worker with the most room takes the site; the update
            // operation's service step then moves its task there (start-first).
            let roomier: Option<String> = sqlx::query_scalar(
                "SELECT n.id FROM nodes n LEFT JOIN (SELECT node_id, SUM(slots) AS used FROM placements \
                 GROUP BY node_id) u ON u.node_id = n.id WHERE n.role = 'worker' AND n.availability = 'active' \
                 AND n.id <> ? AND n.slots - COALESCE(u.used, 0) >= ? \
                 ORDER BY n.slots - COALESCE(u.used, 0) DESC, n.id LIMIT 1 FOR UPDATE",
            )
            .bind(&node)
            .bind(plan.slots)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(roomier) = roomier else {
                return Err(ApiError::conflict(
                    Some("plan"),
                    "no active worker has room for this plan; add a worker",
                ));
            };
            sqlx::query("UPDATE placements SET node_id = ? WHERE site_id = ?")
                .bind(&roomier)
                .bind(site)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query("UPDATE placements SET slots = ? WHERE site_id = ?")
        .bind(plan.slots)
        .bind(site)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE sites SET plan_id = ? WHERE id = ?")
        .bind(&plan.id)
        .bind(site)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Starts delete, suspend or resume: `site_state` decides whether the site may, then the
/// saga is enqueued.
pub async fn transition(
    state: &AppState,
    actor: &Actor,
    id: &SiteId,
    kind: OperationKind,
) -> ApiResult<Accepted> {
    let site = authorized(state, actor, id, TenantRole::Member).await?;
    let mut tx = state.db.begin().await?;
    // Locks the site's row first: concurrent requests for one site take turns.
    sqlx::query("SELECT id FROM sites WHERE id = ? FOR UPDATE")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    let busy: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
         AND state IN ('pending', 'running', 'unwinding')",
    )
    .bind(id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if busy > 0 {
        return Err(ApiError::conflict(
            None,
            "another operation of this site (a change or a move between workers) is under way; \
             try again when it finishes",
        ));
    }
    match site_state::change(&mut tx, id.as_str(), SiteEvent::Requested(kind)).await? {
        None => return Err(ApiError::NotFound("site")),
        Some(Err(refused)) => {
            return Err(ApiError::conflict(
                None,
                format!(
                    "the site is {}; it cannot {} now",
                    refused.current,
                    verb(kind)
                ),
            ));
        }
        Some(Ok(_)) => {}
    }
    let op = operations::enqueue(
        &mut tx,
        &state.backends,
        Some(actor),
        kind,
        Some(site.tenant_id.as_str()),
        "site",
        id.as_str(),
    )
    .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: kind.as_str(),
            tenant_id: Some(site.tenant_id.as_str()),
            target_type: "site",
            target_id: id.as_str(),
            details: json!({ "operation": op }),
        },
    )
    .await?;
    let accepted = Accepted {
        site: load(&mut tx, id.as_str()).await?,
        operation: operations::load(&mut tx, op.as_str())
            .await?
            .for_reader(actor),
        admin: None,
    };
    tx.commit().await?;
    state.wake_runner();
    Ok(accepted)
}

/// What a request of `kind` asks, for a refusal's message.
fn verb(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::SiteDelete => "be deleted",
        OperationKind::SiteSuspend => "be suspended",
        OperationKind::SiteResume => "be resumed",
        OperationKind::SiteUpdate => "be changed",
        OperationKind::SiteCreate => "be created",
        OperationKind::SiteMove => "be moved",
        OperationKind::SiteBackup => "be backed up",
        OperationKind::BackupDelete => "have a backup deleted",
        OperationKind::SiteRestore => "be restored",
        OperationKind::BackupVerify => "have a backup verified",
        OperationKind::SiteUndelete => "be brought back",
    }
}
