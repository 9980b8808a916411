//! The application layer: every rule of the platform, over the database. Handlers call
//! these functions and convert their results; nothing here knows about HTTP beyond the
//! [`ApiError`](crate::error::ApiError) it returns.

pub mod agent;
pub mod backups;
pub mod billing;
pub mod edge_usage;
pub mod idempotency;
pub mod node_sync;
pub mod nodes;
pub mod operations;
pub mod placement;
pub mod plans;
pub mod restores;
pub mod sessions;
pub mod site_state;
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

/// Encodes a position in a list (a row's sequence number) as a cursor.
///
/// A cursor is the decimal position, 1 to 18 digits (pattern `^[0-9]{1,18}$` in the
/// OpenAPI document): every such value is a position a list can continue from, so the
/// document can say exactly which cursors are valid.
pub fn encode_cursor(seq: i64) -> String {
    seq.to_string()
}

/// A list's page size and cursor, checked where every list checks them: `limit` (default
/// `default`, 1 to `max`) and the cursor's position (`start` without one). Each fault is
/// recorded in `fields` under its parameter's name.
pub fn page_bounds(
    fields: &mut crate::domain::Fields,
    limit: Option<u32>,
    (default, max): (u32, u32),
    cursor: Option<&str>,
    start: i64,
) -> (u32, Option<i64>) {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        fields.push("limit", format!("must be between 1 and {max}"));
    }
    let position = match cursor {
        Some(c) => fields.check(
            "cursor",
            decode_cursor(c).ok_or_else(|| "is not a cursor of this list".to_owned()),
        ),
        None => Some(start),
    };
    (limit, position)
}

/// Reads a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<i64> {
    if cursor.is_empty() || cursor.len() > 18 || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cursor.parse().ok()
}
