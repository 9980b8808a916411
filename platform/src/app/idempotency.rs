//! `Idempotency-Key` for create endpoints.
//!
//! The first request with a key claims it by inserting a row; the row and the resource are
//! written in the same transaction where the endpoint allows it (sites), so a crash leaves
//! either both or neither. A repeat of the same request gets the stored response again
//! (with `Idempotent-Replayed: true`); the same key with a different body is refused (422);
//! a repeat while the first is still running waits on the row lock and then replays.

use axum::http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, Row};

use crate::error::{ApiError, ApiResult};

/// A key sent by a client, with the fingerprint of its request.
#[derive(Debug, Clone)]
pub struct IdemKey {
    pub key: String,
    pub request_hash: String,
}

impl IdemKey {
    /// From the header value and the request it came with; 422 for an unusable key.
    pub fn parse(header: &str, method: &str, path: &str, body: &Value) -> ApiResult<Self> {
        if header.is_empty() || header.len() > 255 || !header.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiError::field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update(b"\n");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(body.to_string().as_bytes());
        Ok(Self {
            key: header.to_owned(),
            request_hash: hex::encode(hasher.finalize()),
        })
    }
}

/// A response stored for a key.
#[derive(Debug)]
pub struct Replay {
    pub status: StatusCode,
    pub body: Value,
}

/// Claims the key inside the caller's transaction, or returns the stored response.
pub async fn claim(
    conn: &mut MySqlConnection,
    user_id: &str,
    key: &IdemKey,
) -> ApiResult<Option<Replay>> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_hash) VALUES (?, ?, ?)",
    )
    .bind(user_id)
    .bind(&key.key)
    .bind(&key.request_hash)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => return Ok(None),
        Err(err) if super::is_duplicate(&err) => {}
        Err(err) => return Err(err.into()),
    }
    let row = sqlx::query(
        "SELECT request_hash, status_code, response_body FROM idempotency_keys \
         WHERE user_id = ? AND idem_key = ?",
    )
    .bind(user_id)
    .bind(&key.key)
    .fetch_one(&mut *conn)
    .await?;
    let hash: String = row.try_get("request_hash")?;
    if hash != key.request_hash {
        return Err(ApiError::field(
            "Idempotency-Key",
            "was already used with a different request",
        ));
    }
    let status: Option<i32> = row.try_get("status_code")?;
    let body: Option<String> = row.try_get("response_body")?;
    match (status, body) {
        (Some(status), Some(body)) => Ok(Some(Replay {
            status: StatusCode::from_u16(u16::try_from(status).unwrap_or(200))
                .unwrap_or(StatusCode::OK),
            body: serde_json::from_str(&body).unwrap_or(Value::Null),
        })),
        _ => Err(ApiError::conflict(
            None,
            "a request with this Idempotency-Key is still in progress",
        )),
    }
}

/// Stores the response for the key, in the same transaction as the change.
pub async fn store(
    conn: &mut MySqlConnection,
    user_id: &str,
    key: &IdemKey,
    status: StatusCode,
    body: &Value,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET status_code = ?, response_body = ? WHERE user_id = ? AND idem_key = ?",
    )
    .bind(i32::from(status.as_u16()))
    .bind(body.to_string())
    .bind(user_id)
    .bind(&key.key)
    .execute(conn)
    .await?;
    Ok(())
}
