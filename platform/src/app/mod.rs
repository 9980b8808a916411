//! The application layer: every rule of the platform, over the database. Handlers call
//! these functions and convert their results; nothing here knows about HTTP beyond the
//! [`ApiError`](crate::error::ApiError) it returns.

pub mod idempotency;
pub mod nodes;
pub mod operations;
pub mod plans;
pub mod sessions;
pub mod sites;
pub mod tenants;
pub mod tokens;
pub mod users;

use chrono::{DateTime, Utc};

/// MariaDB's error number for a duplicate key.
pub const ER_DUP_ENTRY: &str = "23000";

/// True when the error is a duplicate key (unique constraint) violation.
pub fn is_duplicate(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some(ER_DUP_ENTRY) && db.message().contains("Duplicate entry")
        }
        _ => false,
    }
}

/// An insert's result with a unique-key violation turned into 409 naming `field`.
pub fn unique<T>(
    inserted: Result<T, sqlx::Error>,
    field: &'static str,
    detail: impl Into<String>,
) -> Result<T, crate::error::ApiError> {
    match inserted {
        Err(err) if is_duplicate(&err) => {
            Err(crate::error::ApiError::conflict(Some(field), detail))
        }
        other => Ok(other?),
    }
}

pub type Timestamp = DateTime<Utc>;

/// A page of a cursor-paginated list.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Encodes a position in a list as an opaque cursor.
pub fn encode_cursor(seq: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

/// Reads a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<i64> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("seq:")?
        .parse()
        .ok()
}
