//! API tokens for automation: shown once at creation, stored as a SHA-256 hash, scoped
//! (`read` or `write`), optionally expiring, revocable. A token acts as its user and never
//! does more than the user may.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::FromRow;
use utoipa::ToSchema;

use crate::{
    actor::Actor,
    audit::{self, Event},
    auth::{self, Scope},
    domain::{Fields, TokenId, parse_name_up_to},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// Comma-separated scopes.
    pub scopes: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the token was last used, to the minute: it is written at most once a minute
    /// (not on every request). Revocation and expiry take effect at the next request.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: ApiToken,
    /// The secret; shown only in this response.
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Lifetime in days (1 to 365); no expiry when absent.
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 1, maximum = 365)]
    pub expires_in_days: Option<u32>,
}

const COLUMNS: &str = "id, name, scopes, expires_at, revoked_at, last_used_at, created_at";

pub async fn list(state: &AppState, actor: &Actor) -> ApiResult<Vec<ApiToken>> {
    Ok(sqlx::query_as::<_, ApiToken>(sql!(
        "SELECT {COLUMNS} FROM api_tokens WHERE user_id = ? ORDER BY created_at"
    ))
    .bind(&actor.user_id)
    .fetch_all(&state.db)
    .await?)
}

pub async fn create(state: &AppState, actor: &Actor, input: NewToken) -> ApiResult<CreatedToken> {
    let mut fields = Fields::default();
    // The column holds 100 characters.
    let name = fields.check("name", parse_name_up_to(&input.name, 100));
    if input.scopes.is_empty() {
        fields.push("scopes", "name at least one scope: read or write");
    }
    if let Some(days) = input.expires_in_days
        && !(1..=365).contains(&days)
    {
        fields.push("expires_in_days", "must be between 1 and 365");
    }
    // A token made with an API token cannot have more scope than that token.
    if actor.scope == Some(Scope::Read) && input.scopes.contains(&Scope::Write) {
        fields.push("scopes", "a read-only token cannot create a write token");
    }
    fields.finish()?;
    let Some(name) = name else {
        return Err(ApiError::field("name", "invalid"));
    };
    let mut scopes: Vec<&str> = input
        .scopes
        .iter()
        .map(|s| match s {
            Scope::Read => "read",
            Scope::Write => "write",
        })
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let secret = auth::new_token("pdt_");
    let id = TokenId::generate();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO api_tokens (id, user_id, name, token_hash, scopes, expires_at) \
         VALUES (?, ?, ?, ?, ?, IF(? IS NULL, NULL, NOW(6) + INTERVAL ? DAY))",
    )
    .bind(id.as_str())
    .bind(&actor.user_id)
    .bind(&name)
    .bind(auth::token_hash(&secret))
    .bind(scopes.join(","))
    .bind(input.expires_in_days)
    .bind(input.expires_in_days)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "token.create",
            tenant_id: None,
            target_type: "token",
            target_id: id.as_str(),
            details: json!({ "name": name, "scopes": scopes }),
        },
    )
    .await?;
    let token =
        sqlx::query_as::<_, ApiToken>(sql!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?"))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(CreatedToken { token, secret })
}

pub async fn revoke(state: &AppState, actor: &Actor, id: &TokenId) -> ApiResult<()> {
    let mut tx = state.db.begin().await?;
    let found = sqlx::query(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, NOW(6)) WHERE id = ? AND user_id = ?",
    )
    .bind(id.as_str())
    .bind(&actor.user_id)
    .execute(&mut *tx)
    .await?;
    if found.rows_affected() == 0 {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM api_tokens WHERE id = ? AND user_id = ?")
                .bind(id.as_str())
                .bind(&actor.user_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(ApiError::NotFound("token"));
        }
    }
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "token.revoke",
            tenant_id: None,
            target_type: "token",
            target_id: id.as_str(),
            details: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
