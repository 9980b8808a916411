//! Users: staff accounts of the agency and the members of each tenant.
//!
//! Owners manage their tenant's users (invite, change role, remove); staff admins manage
//! staff. Inviting an address with no account creates the account with a generated
//! password, returned once in the response.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlConnection};
use utoipa::ToSchema;

use super::unique;
use crate::{
    actor::Actor,
    audit::{self, Event},
    auth,
    domain::{Email, Fields, Id, StaffRole, TenantId, TenantRole, check_password, parse_name},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    #[schema(value_type = Option<StaffRole>)]
    pub staff_role: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    #[schema(value_type = TenantRole)]
    pub role: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A member, with the generated password when the invitation created the account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invited {
    #[serde(flatten)]
    pub member: Member,
    /// Shown once, only when the account was created by this invitation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStaffUser {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    #[schema(min_length = 12, max_length = 256)]
    pub password: String,
    pub staff_role: StaffRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    pub role: TenantRole,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    /// Initial password for a new account; generated when absent.
    #[serde(default)]
    #[schema(min_length = 12, max_length = 256)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: TenantRole,
}

const USER_COLUMNS: &str = "id, email, name, staff_role, created_at";

/// Inserts a user row; 409 on a taken address.
pub async fn insert_user(
    conn: &mut MySqlConnection,
    email: &Email,
    name: &str,
    password_hash: &str,
    staff_role: Option<StaffRole>,
) -> ApiResult<Id> {
    let id = Id::generate();
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, staff_role) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(email.as_str())
    .bind(name)
    .bind(password_hash)
    .bind(staff_role.map(StaffRole::as_str))
    .execute(conn)
    .await;
    unique(
        inserted,
        "email",
        "an account with this e-mail address exists",
    )?;
    Ok(id)
}

pub async fn me(state: &AppState, actor: &Actor) -> ApiResult<User> {
    sqlx::query_as::<_, User>(sql!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
        .bind(&actor.user_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound("user"))
}

pub async fn create_staff(state: &AppState, actor: &Actor, input: NewStaffUser) -> ApiResult<User> {
    actor.require_staff(&[StaffRole::Admin])?;
    let mut fields = Fields::default();
    let email = fields.check("email", Email::parse(&input.email));
    let name = fields
        .check("name", input.name.as_deref().map(parse_name).transpose())
        .flatten();
    fields.check("password", check_password(&input.password));
    fields.finish()?;
    let Some(email) = email else {
        return Err(ApiError::field("email", "invalid"));
    };
    let hash = auth::hash_password(input.password).await?;
    let mut tx = state.db.begin().await?;
    let id = insert_user(
        &mut tx,
        &email,
        name.as_deref().unwrap_or(""),
        &hash,
        Some(input.staff_role),
    )
    .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "user.create",
            tenant_id: None,
            target_type: "user",
            target_id: id.as_str(),
            details: json!({ "email": email.as_str(), "staff_role": input.staff_role }),
        },
    )
    .await?;
    tx.commit().await?;
    sqlx::query_as::<_, User>(sql!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
        .bind(id.as_str())
        .fetch_one(&state.db)
        .await
        .map_err(Into::into)
}

pub async fn list_staff(state: &AppState, actor: &Actor) -> ApiResult<Vec<User>> {
    actor.require_staff(&[StaffRole::Admin])?;
    Ok(sqlx::query_as::<_, User>(sql!(
        "SELECT {USER_COLUMNS} FROM users WHERE staff_role IS NOT NULL ORDER BY email"
    ))
    .fetch_all(&state.db)
    .await?)
}

const MEMBER_SELECT: &str = "SELECT m.user_id, u.email, u.name, m.role, m.created_at \
     FROM memberships m JOIN users u ON u.id = m.user_id";

pub async fn list_members(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
) -> ApiResult<Vec<Member>> {
    actor
        .require_tenant(state, tenant, TenantRole::Viewer)
        .await?;
    Ok(sqlx::query_as::<_, Member>(sql!(
        "{MEMBER_SELECT} WHERE m.tenant_id = ? ORDER BY u.email"
    ))
    .bind(tenant.as_str())
    .fetch_all(&state.db)
    .await?)
}

async fn member(conn: &mut MySqlConnection, tenant: &TenantId, user: &str) -> ApiResult<Member> {
    sqlx::query_as::<_, Member>(sql!(
        "{MEMBER_SELECT} WHERE m.tenant_id = ? AND m.user_id = ?"
    ))
    .bind(tenant.as_str())
    .bind(user)
    .fetch_optional(conn)
    .await?
    .ok_or(ApiError::NotFound("member"))
}

pub async fn invite(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    input: Invitation,
) -> ApiResult<Invited> {
    actor
        .require_tenant(state, tenant, TenantRole::Owner)
        .await?;
    let mut fields = Fields::default();
    let email = fields.check("email", Email::parse(&input.email));
    let name = fields
        .check("name", input.name.as_deref().map(parse_name).transpose())
        .flatten();
    if let Some(password) = &input.password {
        fields.check("password", check_password(password));
    }
    fields.finish()?;
    let Some(email) = email else {
        return Err(ApiError::field("email", "invalid"));
    };

    let existing: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE email = ?")
        .bind(email.as_str())
        .fetch_optional(&state.db)
        .await?;
    // Hash before the transaction: hashing takes tens of milliseconds.
    let (new_password, hash) = match (&existing, input.password) {
        (Some(_), _) => (None, None),
        (None, Some(given)) => (None, Some(auth::hash_password(given).await?)),
        (None, None) => {
            let generated = auth::new_password();
            let hash = auth::hash_password(generated.clone()).await?;
            (Some(generated), Some(hash))
        }
    };
    let mut tx = state.db.begin().await?;
    let user_id = match (existing, hash) {
        (Some(id), _) => id,
        (None, Some(hash)) => {
            insert_user(&mut tx, &email, name.as_deref().unwrap_or(""), &hash, None)
                .await?
                .to_string()
        }
        (None, None) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "no password for a new account"
            )));
        }
    };
    let inserted =
        sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) VALUES (?, ?, ?)")
            .bind(tenant.as_str())
            .bind(&user_id)
            .bind(input.role.as_str())
            .execute(&mut *tx)
            .await;
    unique(inserted, "email", "this user is already a member")?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "member.invite",
            tenant_id: Some(tenant.as_str()),
            target_type: "user",
            target_id: &user_id,
            details: json!({ "email": email.as_str(), "role": input.role }),
        },
    )
    .await?;
    let member = member(&mut tx, tenant, &user_id).await?;
    tx.commit().await?;
    Ok(Invited {
        member,
        initial_password: new_password,
    })
}

/// Refuses a change that would leave a tenant with no owner.
async fn ensure_other_owner(
    conn: &mut MySqlConnection,
    tenant: &TenantId,
    user: &str,
) -> ApiResult<()> {
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE tenant_id = ? AND role = 'owner' AND user_id <> ? FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(user)
    .fetch_one(conn)
    .await?;
    if others == 0 {
        return Err(ApiError::conflict(
            Some("role"),
            "a tenant must keep at least one owner",
        ));
    }
    Ok(())
}

pub async fn change_role(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    user: &Id,
    change: RoleChange,
) -> ApiResult<Member> {
    actor
        .require_tenant(state, tenant, TenantRole::Owner)
        .await?;
    let mut tx = state.db.begin().await?;
    let current = member(&mut tx, tenant, user.as_str()).await?;
    if current.role == "owner" && change.role != TenantRole::Owner {
        ensure_other_owner(&mut tx, tenant, user.as_str()).await?;
    }
    sqlx::query("UPDATE memberships SET role = ? WHERE tenant_id = ? AND user_id = ?")
        .bind(change.role.as_str())
        .bind(tenant.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "member.role",
            tenant_id: Some(tenant.as_str()),
            target_type: "user",
            target_id: user.as_str(),
            details: json!({ "from": current.role, "to": change.role }),
        },
    )
    .await?;
    let updated = member(&mut tx, tenant, user.as_str()).await?;
    tx.commit().await?;
    Ok(updated)
}

pub async fn remove(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    user: &Id,
) -> ApiResult<()> {
    actor
        .require_tenant(state, tenant, TenantRole::Owner)
        .await?;
    let mut tx = state.db.begin().await?;
    let current = member(&mut tx, tenant, user.as_str()).await?;
    if current.role == "owner" {
        ensure_other_owner(&mut tx, tenant, user.as_str()).await?;
    }
    sqlx::query("DELETE FROM memberships WHERE tenant_id = ? AND user_id = ?")
        .bind(tenant.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "member.remove",
            tenant_id: Some(tenant.as_str()),
            target_type: "user",
            target_id: user.as_str(),
            details: json!({ "email": current.email }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Creates the first staff admin when no staff user exists (idempotent at every start).
pub async fn bootstrap_admin(
    db: &sqlx::MySqlPool,
    email: &str,
    password: &str,
) -> anyhow::Result<bool> {
    let staff: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE staff_role IS NOT NULL")
        .fetch_one(db)
        .await?;
    if staff > 0 {
        return Ok(false);
    }
    let email = Email::parse(email).map_err(|m| anyhow::anyhow!("bootstrap admin e-mail {m}"))?;
    check_password(password).map_err(|m| anyhow::anyhow!("bootstrap admin password {m}"))?;
    let hash = auth::hash_password(password.to_owned()).await?;
    let mut tx = db.begin().await?;
    insert_user(
        &mut tx,
        &email,
        "Administrator",
        &hash,
        Some(StaffRole::Admin),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the bootstrap admin: {e}"))?;
    tx.commit().await?;
    Ok(true)
}
