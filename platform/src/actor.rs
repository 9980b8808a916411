//! Who is calling: the authenticated user behind a request, and the checks of what they
//! may do (RBAC). Every tenant-scoped lookup goes through [`Actor::require_tenant`], which
//! answers 404 (not 403) for a tenant the caller has no part in, so that the existence of
//! other tenants' resources never leaks.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts, RawPathParams},
    http::{Method, request::Parts},
};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, mysql::MySqlRow};

use crate::{
    auth::{Scope, token_hash},
    domain::{Id, StaffRole, TenantId, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
};

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user_id: String,
    pub email: String,
    pub staff: Option<StaffRole>,
    /// `Some` when the request came with an API token.
    pub scope: Option<Scope>,
    pub source_ip: Option<String>,
    pub request_id: Option<String>,
    /// The caller's standing in the tenant named by the route's `{tenant}`, read in the
    /// same query as the user (see [`Actor::tenant_role`]).
    tenant_hint: Option<(String, TenantStanding)>,
}

/// What the actor's query found about the route's tenant.
#[derive(Debug, Clone, Copy)]
enum TenantStanding {
    /// No such tenant.
    Missing,
    /// The tenant exists; the caller's membership role, if any.
    Found(Option<TenantRole>),
}

/// The user, and the route's tenant and the user's membership in it, in one round trip
/// (`?` 1: the tenant id or NULL, `?` 2: the user id). A NULL tenant id matches no row.
/// Every column is named `a_…`, so that the statement can also be the head of a page
/// query ([`Credentials::push_actor`]) without clashing with its columns.
const USER_BY_ID: &str = "SELECT u.email AS a_email, u.staff_role AS a_staff_role, \
     u.disabled AS a_disabled, t.id AS a_tenant_id, m.role AS a_role \
     FROM users u LEFT JOIN tenants t ON t.id = ? \
     LEFT JOIN memberships m ON m.tenant_id = t.id AND m.user_id = u.id \
     WHERE u.id = ?";

/// The same for an API token (`?` 1: [`TOUCH_EVERY_SECS`], 2: the tenant id or NULL,
/// 3: the token's hash), with the token's own columns. `a_touch` says whether
/// `last_used_at` is due to be written. The user is
/// LEFT JOINed so that a token of a deleted account says so. Revocation and expiry are
/// read here on every request: nothing about a token is cached.
const USER_BY_TOKEN: &str = "SELECT k.id AS a_token_id, k.scopes AS a_scopes, k.user_id AS a_user_id, \
     (k.last_used_at IS NULL OR k.last_used_at < NOW(6) - INTERVAL ? SECOND) AS a_touch, \
     u.email AS a_email, u.staff_role AS a_staff_role, u.disabled AS a_disabled, \
     t.id AS a_tenant_id, m.role AS a_role \
     FROM api_tokens k LEFT JOIN users u ON u.id = k.user_id \
     LEFT JOIN tenants t ON t.id = ? \
     LEFT JOIN memberships m ON m.tenant_id = t.id AND m.user_id = k.user_id \
     WHERE k.token_hash = ? AND k.revoked_at IS NULL \
     AND (k.expires_at IS NULL OR k.expires_at > NOW(6))";

/// An API token's `last_used_at` is written at most once in this many seconds: a row
/// write on every request of a busy token was one statement in four of a list call. The
/// column is accurate to a minute; revocation and expiry are not affected (read always).
pub const TOUCH_EVERY_SECS: u32 = 60;

/// What the request presented, checked as far as it can be without the database: a
/// JWT's signature and expiry, an API token's form. [`Credentials::resolve`] reads the
/// rest (the user, the token's revocation and expiry, the route's tenant) and makes the
/// [`Actor`]; a handler may instead put that read at the head of its own query
/// ([`Credentials::push_actor`], then [`Credentials::actor_from_row`]): the same
/// statement text, the same checks, one round trip for both.
#[derive(Debug, Clone)]
pub struct Credentials {
    presented: Presented,
    /// The route's `{tenant}`, when it is a well-formed id.
    tenant: Option<Id>,
    method: Method,
    source_ip: Option<String>,
    request_id: Option<String>,
}

#[derive(Debug, Clone)]
enum Presented {
    /// A valid access token (JWT) of this user id.
    Session(String),
    /// An API token, by its hash.
    ApiToken(String),
}

impl FromRequestParts<AppState> for Credentials {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        // A route with a `{tenant}` (every tenant-scoped list and change) checks the
        // caller's role there next: read it with the user. A malformed id is no hint (the
        // handler answers 404 for it).
        let tenant = RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(name, _)| *name == "tenant")
                    .and_then(|(_, value)| Id::parse(value))
            });
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized("send Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(ApiError::Unauthorized("send Authorization: Bearer <token>"))?
            .trim();
        let presented = if token.starts_with("pdt_") {
            Presented::ApiToken(token_hash(token))
        } else {
            Presented::Session(state.signer.verify(token).ok_or(ApiError::Unauthorized(
                "the access token is invalid or expired",
            ))?)
        };
        Ok(Self {
            presented,
            tenant,
            method: parts.method.clone(),
            source_ip: source_ip(parts),
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }
}

impl Credentials {
    /// The actor's statement ([`USER_BY_ID`] or [`USER_BY_TOKEN`]) with its binds; it
    /// returns one row for a caller that may be authenticated, none otherwise.
    pub fn push_actor(&self, query: &mut QueryBuilder<MySql>) {
        let tenant = self.tenant.as_ref().map(|t| t.as_str().to_owned());
        let (sql, key) = match &self.presented {
            Presented::Session(user_id) => (USER_BY_ID, user_id),
            Presented::ApiToken(hash) => (USER_BY_TOKEN, hash),
        };
        let mut parts = sql.split('?');
        query.push(parts.next().unwrap_or_default());
        if matches!(self.presented, Presented::ApiToken(_)) {
            query.push_bind(TOUCH_EVERY_SECS);
            query.push(parts.next().unwrap_or_default());
        }
        query.push_bind(tenant);
        query.push(parts.next().unwrap_or_default());
        query.push_bind(key.clone());
        for rest in parts {
            query.push(rest);
        }
    }

    /// Reads the caller from the database: one statement (and, once a minute per API
    /// token, the write of its `last_used_at`).
    pub async fn resolve(self, db: &MySqlPool) -> ApiResult<Actor> {
        let mut query = QueryBuilder::new("");
        self.push_actor(&mut query);
        let row = query.build().fetch_optional(db).await?;
        self.actor_from_row(row.as_ref(), db).await
    }

    /// The caller from the actor's columns of `row` (`None`: the statement found no
    /// row); the answers and checks of [`Credentials::resolve`].
    pub async fn actor_from_row(self, row: Option<&MySqlRow>, db: &MySqlPool) -> ApiResult<Actor> {
        let (user_id, scope) = match &self.presented {
            Presented::ApiToken(_) => {
                let row = row.ok_or(ApiError::Unauthorized(
                    "the API token is invalid, expired or revoked",
                ))?;
                if row.try_get::<i64, _>("a_touch")? != 0 {
                    let token_id: String = row.try_get("a_token_id")?;
                    // Guarded again: of concurrent requests that all saw it due, one writes.
                    sqlx::query(
                        "UPDATE api_tokens SET last_used_at = NOW(6) WHERE id = ? \
                         AND (last_used_at IS NULL OR last_used_at < NOW(6) - INTERVAL ? SECOND)",
                    )
                    .bind(&token_id)
                    .bind(TOUCH_EVERY_SECS)
                    .execute(db)
                    .await?;
                }
                let scopes: String = row.try_get("a_scopes")?;
                let scope = if scopes.split(',').any(|s| s == "write") {
                    Scope::Write
                } else {
                    Scope::Read
                };
                (row.try_get::<String, _>("a_user_id")?, Some(scope))
            }
            Presented::Session(user_id) => {
                if row.is_none() {
                    return Err(ApiError::Unauthorized("the account no longer exists"));
                }
                (user_id.clone(), None)
            }
        };
        let Some(row) = row else {
            return Err(ApiError::Unauthorized("the account no longer exists"));
        };
        let Some(email) = row.try_get::<Option<String>, _>("a_email")? else {
            return Err(ApiError::Unauthorized("the account no longer exists"));
        };
        if row.try_get::<Option<bool>, _>("a_disabled")? == Some(true) {
            return Err(ApiError::Unauthorized("the account is disabled"));
        }
        if scope == Some(Scope::Read) && self.method != Method::GET {
            return Err(ApiError::Forbidden(
                "this API token has the read scope only",
            ));
        }
        let staff: Option<String> = row.try_get("a_staff_role")?;
        let tenant_hint = match self.tenant {
            Some(tenant) => {
                let standing = if row.try_get::<Option<String>, _>("a_tenant_id")?.is_some() {
                    let role: Option<String> = row.try_get("a_role")?;
                    TenantStanding::Found(role.as_deref().and_then(TenantRole::parse))
                } else {
                    TenantStanding::Missing
                };
                Some((tenant.as_str().to_owned(), standing))
            }
            None => None,
        };
        Ok(Actor {
            user_id,
            email,
            staff: staff.as_deref().and_then(StaffRole::parse),
            scope,
            source_ip: self.source_ip,
            request_id: self.request_id,
            tenant_hint,
        })
    }
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        Credentials::from_request_parts(parts, state)
            .await?
            .resolve(&state.db)
            .await
    }
}

/// The peer address of the connection.
pub fn source_ip(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
}

impl Actor {
    pub fn is_staff(&self) -> bool {
        self.staff.is_some()
    }

    /// Staff with one of the given roles, else 403.
    pub fn require_staff(&self, roles: &[StaffRole]) -> ApiResult<()> {
        match self.staff {
            Some(role) if roles.contains(&role) => Ok(()),
            _ => Err(ApiError::Forbidden("this needs a staff role")),
        }
    }

    /// The caller's role in a tenant: staff act as owners everywhere. For the route's own
    /// `{tenant}` the answer was read with the user, in the same request (no second query).
    pub async fn tenant_role(
        &self,
        state: &AppState,
        tenant: &TenantId,
    ) -> ApiResult<Option<TenantRole>> {
        let standing = match &self.tenant_hint {
            Some((id, standing)) if id == tenant.as_str() => *standing,
            _ => {
                // One round trip: no row, no tenant; a row with a NULL role, not a member.
                let row: Option<(Option<String>,)> = sqlx::query_as(
                    "SELECT m.role FROM tenants t LEFT JOIN memberships m \
                     ON m.tenant_id = t.id AND m.user_id = ? WHERE t.id = ?",
                )
                .bind(&self.user_id)
                .bind(tenant.as_str())
                .fetch_optional(&state.db)
                .await?;
                match row {
                    None => TenantStanding::Missing,
                    Some((role,)) => {
                        TenantStanding::Found(role.as_deref().and_then(TenantRole::parse))
                    }
                }
            }
        };
        Ok(match standing {
            TenantStanding::Missing => None,
            TenantStanding::Found(_) if self.is_staff() => Some(TenantRole::Owner),
            TenantStanding::Found(role) => role,
        })
    }

    /// At least `min` in the tenant; 404 when the caller has no part in it, 403 when the
    /// role is too small.
    pub async fn require_tenant(
        &self,
        state: &AppState,
        tenant: &TenantId,
        min: TenantRole,
    ) -> ApiResult<TenantRole> {
        match self.tenant_role(state, tenant).await? {
            None => Err(ApiError::NotFound("tenant")),
            Some(role) if role >= min => Ok(role),
            Some(_) => Err(ApiError::Forbidden(
                "your role in this tenant does not allow this",
            )),
        }
    }
}

/// Parses an id from a URL; a malformed one is simply not found.
pub fn parse_id(value: &str, what: &'static str) -> ApiResult<Id> {
    Id::parse(value).ok_or(ApiError::NotFound(what))
}
