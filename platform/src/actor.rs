//! Who is calling: the authenticated user behind a request, and the checks of what they
//! may do (RBAC). Every tenant-scoped lookup goes through [`Actor::require_tenant`], which
//! answers 404 (not 403) for a tenant the caller has no part in, so that the existence of
//! other tenants' resources never leaks.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts, RawPathParams},
    http::{Method, request::Parts},
};
use sqlx::Row;

use crate::{
    auth::{Scope, token_hash},
    domain::{Id, StaffRole, TenantRole},
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
const USER_BY_ID: &str = "SELECT u.email, u.staff_role, u.disabled, t.id AS tenant_id, m.role \
     FROM users u LEFT JOIN tenants t ON t.id = ? \
     LEFT JOIN memberships m ON m.tenant_id = t.id AND m.user_id = u.id \
     WHERE u.id = ?";

/// The same for an API token (`?` 1: [`TOUCH_EVERY_SECS`], 2: the tenant id or NULL,
/// 3: the token's hash), with the token's own columns. `touch` says whether
/// `last_used_at` is due to be written. The user is
/// LEFT JOINed so that a token of a deleted account says so. Revocation and expiry are
/// read here on every request: nothing about a token is cached.
const USER_BY_TOKEN: &str = "SELECT k.id AS token_id, k.scopes, k.user_id, \
     (k.last_used_at IS NULL OR k.last_used_at < NOW(6) - INTERVAL ? SECOND) AS touch, \
     u.email, u.staff_role, u.disabled, t.id AS tenant_id, m.role \
     FROM api_tokens k LEFT JOIN users u ON u.id = k.user_id \
     LEFT JOIN tenants t ON t.id = ? \
     LEFT JOIN memberships m ON m.tenant_id = t.id AND m.user_id = k.user_id \
     WHERE k.token_hash = ? AND k.revoked_at IS NULL \
     AND (k.expires_at IS NULL OR k.expires_at > NOW(6))";

/// An API token's `last_used_at` is written at most once in this many seconds: a row
/// write on every request of a busy token was one statement in four of a list call. The
/// column is accurate to a minute; revocation and expiry are not affected (read always).
pub const TOUCH_EVERY_SECS: u32 = 60;

impl FromRequestParts<AppState> for Actor {
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
        let tenant_bind = tenant.as_ref().map(|t| t.as_str().to_owned());
        let (user_id, scope, row) = if token.starts_with("pdt_") {
            let row = sqlx::query(USER_BY_TOKEN)
                .bind(TOUCH_EVERY_SECS)
                .bind(&tenant_bind)
                .bind(token_hash(token))
                .fetch_optional(&state.db)
                .await?
                .ok_or(ApiError::Unauthorized(
                    "the API token is invalid, expired or revoked",
                ))?;
            if row.try_get::<i64, _>("touch")? != 0 {
                let token_id: String = row.try_get("token_id")?;
                // Guarded again: of concurrent requests that all saw it due, one writes.
                sqlx::query(
                    "UPDATE api_tokens SET last_used_at = NOW(6) WHERE id = ? \
                     AND (last_used_at IS NULL OR last_used_at < NOW(6) - INTERVAL ? SECOND)",
                )
                .bind(&token_id)
                .bind(TOUCH_EVERY_SECS)
                .execute(&state.db)
                .await?;
            }
            let scopes: String = row.try_get("scopes")?;
            let scope = if scopes.split(',').any(|s| s == "write") {
                Scope::Write
            } else {
                Scope::Read
            };
            (row.try_get::<String, _>("user_id")?, Some(scope), row)
        } else {
            let user_id = state.signer.verify(token).ok_or(ApiError::Unauthorized(
                "the access token is invalid or expired",
            ))?;
            let row = sqlx::query(USER_BY_ID)
                .bind(&tenant_bind)
                .bind(&user_id)
                .fetch_optional(&state.db)
                .await?
                .ok_or(ApiError::Unauthorized("the account no longer exists"))?;
            (user_id, None, row)
        };
        let Some(email) = row.try_get::<Option<String>, _>("email")? else {
            return Err(ApiError::Unauthorized("the account no longer exists"));
        };
        if row.try_get::<Option<bool>, _>("disabled")? == Some(true) {
            return Err(ApiError::Unauthorized("the account is disabled"));
        }
        if scope == Some(Scope::Read) && parts.method != Method::GET {
            return Err(ApiError::Forbidden(
                "this API token has the read scope only",
            ));
        }
        let staff: Option<String> = row.try_get("staff_role")?;
        let tenant_hint = match tenant {
            Some(tenant) => {
                let standing = if row.try_get::<Option<String>, _>("tenant_id")?.is_some() {
                    let role: Option<String> = row.try_get("role")?;
                    TenantStanding::Found(role.as_deref().and_then(TenantRole::parse))
                } else {
                    TenantStanding::Missing
                };
                Some((tenant.as_str().to_owned(), standing))
            }
            None => None,
        };
        Ok(Self {
            user_id,
            email,
            staff: staff.as_deref().and_then(StaffRole::parse),
            scope,
            source_ip: source_ip(parts),
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            tenant_hint,
        })
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
        tenant: &Id,
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
        tenant: &Id,
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
