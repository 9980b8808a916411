//! Who is calling: the authenticated user behind a request, and the checks of what they
//! may do (RBAC). Every tenant-scoped lookup goes through [`Actor::require_tenant`], which
//! answers 404 (not 403) for a tenant the caller has no part in, so that the existence of
//! other tenants' resources never leaks.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts},
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
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized("send Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(ApiError::Unauthorized("send Authorization: Bearer <token>"))?
            .trim();
        let (user_id, scope) = if token.starts_with("pdt_") {
            let row = sqlx::query(
                "SELECT id, user_id, scopes FROM api_tokens \
                 WHERE token_hash = ? AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > NOW(6))",
            )
            .bind(token_hash(token))
            .fetch_optional(&state.db)
            .await?
            .ok_or(ApiError::Unauthorized(
                "the API token is invalid, expired or revoked",
            ))?;
            let token_id: String = row.try_get("id")?;
            sqlx::query("UPDATE api_tokens SET last_used_at = NOW(6) WHERE id = ?")
                .bind(&token_id)
                .execute(&state.db)
                .await?;
            let scopes: String = row.try_get("scopes")?;
            let scope = if scopes.split(',').any(|s| s == "write") {
                Scope::Write
            } else {
                Scope::Read
            };
            (row.try_get::<String, _>("user_id")?, Some(scope))
        } else {
            let user_id = state.signer.verify(token).ok_or(ApiError::Unauthorized(
                "the access token is invalid or expired",
            ))?;
            (user_id, None)
        };
        let row = sqlx::query("SELECT email, staff_role, disabled FROM users WHERE id = ?")
            .bind(&user_id)
            .fetch_optional(&state.db)
            .await?
            .ok_or(ApiError::Unauthorized("the account no longer exists"))?;
        if row.try_get::<bool, _>("disabled")? {
            return Err(ApiError::Unauthorized("the account is disabled"));
        }
        if scope == Some(Scope::Read) && parts.method != Method::GET {
            return Err(ApiError::Forbidden(
                "this API token has the read scope only",
            ));
        }
        let staff: Option<String> = row.try_get("staff_role")?;
        Ok(Self {
            user_id,
            email: row.try_get("email")?,
            staff: staff.as_deref().and_then(StaffRole::parse),
            scope,
            source_ip: source_ip(parts),
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
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

    /// The caller's role in a tenant: staff act as owners everywhere.
    pub async fn tenant_role(
        &self,
        state: &AppState,
        tenant: &Id,
    ) -> ApiResult<Option<TenantRole>> {
        // One round trip: no row, no tenant; a row with a NULL role, not a member.
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT m.role FROM tenants t LEFT JOIN memberships m \
             ON m.tenant_id = t.id AND m.user_id = ? WHERE t.id = ?",
        )
        .bind(&self.user_id)
        .bind(tenant.as_str())
        .fetch_optional(&state.db)
        .await?;
        Ok(match row {
            None => None,
            Some(_) if self.is_staff() => Some(TenantRole::Owner),
            Some((role,)) => role.as_deref().and_then(TenantRole::parse),
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
