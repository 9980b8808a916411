//! The audit log: one row per mutation, written in the same transaction as the change so
//! that a change without its record (or a record without its change) cannot exist.

use serde_json::Value;
use sqlx::MySqlConnection;

use crate::actor::Actor;

/// One audit record.
pub struct Event<'a> {
    pub action: &'a str,
    pub tenant_id: Option<&'a str>,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub details: Value,
}

pub async fn record(
    conn: &mut MySqlConnection,
    actor: Option<&Actor>,
    event: Event<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (actor_id, actor_email, tenant_id, action, target_type, \
         target_id, source_ip, request_id, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(actor.map(|a| a.user_id.as_str()))
    .bind(actor.map(|a| a.email.as_str()))
    .bind(event.tenant_id)
    .bind(event.action)
    .bind(event.target_type)
    .bind(event.target_id)
    .bind(actor.and_then(|a| a.source_ip.as_deref()))
    .bind(actor.and_then(|a| a.request_id.as_deref()))
    .bind(sqlx::types::Json(event.details))
    .execute(conn)
    .await?;
    Ok(())
}
