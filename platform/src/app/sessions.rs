//! Login, refresh and logout.
//!
//! Refresh tokens rotate: each use returns a new one and marks the old one used. Using a
//! token twice means it leaked (or a client raced itself), so the whole family (every
//! token descended from that login) is revoked and the caller must log in again.
//! Failed logins are counted per account and per source address in the database, so the
//! limit holds across every platform replica.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{MySqlPool, Row};
use utoipa::ToSchema;

use crate::{
    audit::{self, Event},
    auth,
    domain::Id,
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// Counts one failure in a fixed window; returns the count in the current window.
async fn hit(db: &MySqlPool, bucket: &str, window_secs: u64) -> sqlx::Result<i64> {
    sqlx::query(
        "INSERT INTO rate_limits (bucket, window_start, hits) VALUES (?, NOW(6), 1) \
         ON DUPLICATE KEY UPDATE \
           hits = IF(window_start < NOW(6) - INTERVAL ? SECOND, 1, hits + 1), \
           window_start = IF(window_start < NOW(6) - INTERVAL ? SECOND, NOW(6), window_start)",
    )
    .bind(bucket)
    .bind(window_secs)
    .bind(window_secs)
    .execute(db)
    .await?;
    current(db, bucket, window_secs).await
}

async fn current(db: &MySqlPool, bucket: &str, window_secs: u64) -> sqlx::Result<i64> {
    let hits: Option<i32> = sqlx::query_scalar(
        "SELECT hits FROM rate_limits WHERE bucket = ? AND window_start >= NOW(6) - INTERVAL ? SECOND",
    )
    .bind(bucket)
    .bind(window_secs)
    .fetch_optional(db)
    .await?;
    Ok(hits.map(i64::from).unwrap_or(0))
}

pub async fn login(
    state: &AppState,
    input: Login,
    source_ip: Option<String>,
) -> ApiResult<TokenPair> {
    let config = &state.config.auth;
    let email = input.email.trim().to_lowercase();
    let account_bucket = format!("login:account:{email}");
    let address_bucket = format!(
        "login:address:{}",
        source_ip.as_deref().unwrap_or("unknown")
    );
    let window = config.failed_login_window_secs;
    if current(&state.db, &account_bucket, window).await?
        >= i64::from(config.max_failed_logins_per_account)
        || current(&state.db, &address_bucket, window).await?
            >= i64::from(config.max_failed_logins_per_address)
    {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: window,
        });
    }
    let row = sqlx::query("SELECT id, password_hash, disabled FROM users WHERE email = ?")
        .bind(&email)
        .fetch_optional(&state.db)
        .await?;
    let (user_id, hash, disabled) = match &row {
        Some(row) => (
            Some(row.try_get::<String, _>("id")?),
            row.try_get::<String, _>("password_hash")?,
            row.try_get::<bool, _>("disabled")?,
        ),
        None => (None, auth::DUMMY_HASH.to_owned(), false),
    };
    let valid = auth::verify_password(input.password, hash).await?;
    let Some(user_id) = user_id.filter(|_| valid && !disabled) else {
        hit(&state.db, &account_bucket, window).await?;
        hit(&state.db, &address_bucket, window).await?;
        let mut conn = state.db.acquire().await?;
        audit::record(
            &mut conn,
            None,
            Event {
                action: "auth.login_failed",
                tenant_id: None,
                target_type: "user",
                target_id: "",
                details: json!({ "email": email, "source_ip": source_ip }),
            },
        )
        .await?;
        return Err(ApiError::Unauthorized("wrong e-mail address or password"));
    };
    sqlx::query("DELETE FROM rate_limits WHERE bucket = ?")
        .bind(&account_bucket)
        .execute(&state.db)
        .await?;
    issue(state, &user_id, &Id::generate()).await
}

/// A new access token and a refresh token in the given family.
async fn issue(state: &AppState, user_id: &str, family: &Id) -> ApiResult<TokenPair> {
    let refresh = auth::new_token("pdr_");
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at) \
         VALUES (?, ?, ?, ?, NOW(6) + INTERVAL ? SECOND)",
    )
    .bind(Id::generate().as_str())
    .bind(user_id)
    .bind(family.as_str())
    .bind(auth::token_hash(&refresh))
    .bind(state.config.auth.refresh_token_ttl_secs)
    .execute(&state.db)
    .await?;
    Ok(TokenPair {
        access_token: state.signer.issue(user_id)?,
        refresh_token: refresh,
        token_type: "Bearer".to_owned(),
        expires_in: state.signer.ttl_secs(),
    })
}

pub async fn refresh(state: &AppState, input: RefreshRequest) -> ApiResult<TokenPair> {
    let mut tx = state.db.begin().await?;
    let row = sqlx::query(
        "SELECT r.id, r.user_id, r.family_id, r.used_at IS NOT NULL AS used, \
         r.revoked_at IS NOT NULL AS revoked, r.expires_at < NOW(6) AS expired, u.disabled \
         FROM refresh_tokens r JOIN users u ON u.id = r.user_id WHERE r.token_hash = ? FOR UPDATE",
    )
    .bind(auth::token_hash(&input.refresh_token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::Unauthorized("the refresh token is invalid"))?;
    let family: String = row.try_get("family_id")?;
    let user_id: String = row.try_get("user_id")?;
    let used: bool = row.try_get::<i64, _>("used")? != 0;
    let revoked: bool = row.try_get::<i64, _>("revoked")? != 0;
    let expired: bool = row.try_get::<i64, _>("expired")? != 0;
    if used && !revoked {
        // Reuse of a rotated token: revoke the whole family.
        sqlx::query("UPDATE refresh_tokens SET revoked_at = NOW(6) WHERE family_id = ? AND revoked_at IS NULL")
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            None,
            Event {
                action: "auth.refresh_reuse",
                tenant_id: None,
                target_type: "user",
                target_id: &user_id,
                details: json!({ "family": family }),
            },
        )
        .await?;
        tx.commit().await?;
        return Err(ApiError::Unauthorized(
            "the refresh token was already used; log in again",
        ));
    }
    if revoked || expired || row.try_get::<bool, _>("disabled")? {
        return Err(ApiError::Unauthorized("the refresh token is invalid"));
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = NOW(6) WHERE id = ?")
        .bind(row.try_get::<String, _>("id")?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let family =
        Id::parse(&family).ok_or_else(|| anyhow::anyhow!("stored family id is malformed"))?;
    issue(state, &user_id, &family).await
}

/// Revokes the refresh token's family; idempotent.
pub async fn logout(state: &AppState, input: RefreshRequest) -> ApiResult<()> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = NOW(6) WHERE revoked_at IS NULL AND family_id = \
         (SELECT family_id FROM (SELECT family_id FROM refresh_tokens WHERE token_hash = ?) AS f)",
    )
    .bind(auth::token_hash(&input.refresh_token))
    .execute(&state.db)
    .await?;
    Ok(())
}
