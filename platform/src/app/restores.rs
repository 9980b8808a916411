//! Restores and clones: a complete backup written back into its site, or into a new site
//! of the same tenant with another domain. Each is a `site.restore` operation on the
//! site written (`sagas/site_restore.rs`); a clone's new site is created by the usual
//! create operation in the same transaction, and its restore waits for it.
//!
//! A restore asked of a `deleted` site brings it back (an undelete): the same id, its
//! primary domain (a 409 naming `domain` if another site took it meanwhile), the aliases
//! it had that are still free, its plan and settings, and the backup's database and
//! files. The request gives the domains back and makes the site `provisioning` in one
//! transaction; the `site.undelete` operation (`sagas/site_undelete.rs`) makes its
//! resources again and restores the backup into them. One route for both: to a tenant,
//! "put my site back as this backup has it" is one request whatever happened to the
//! site, and the CLI's `sites restore SITE --backup ID` serves both.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlConnection};
use utoipa::ToSchema;

use crate::{
    actor::Actor,
    app::{
        operations::{self, Operation},
        site_state::{self, SiteEvent},
        sites::{self, NewSite, Site},
    },
    audit::{self, Event},
    domain::{BackupId, DomainName, Id, SiteId, TenantId, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
    states::{OperationKind, SiteState},
};

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Restore {
    pub id: String,
    pub tenant_id: String,
    /// The site written.
    pub site_id: String,
    /// The backup read.
    pub backup_id: String,
    /// The site the backup was taken of (another site for a clone).
    pub source_site_id: String,
    /// restore (into the same site, a deleted one too: see the operation's kind,
    /// `site.undelete` then) or clone (into a new site).
    pub kind: String,
    /// pending, running, complete, failed.
    pub state: String,
    pub operation_id: Option<String>,
    /// The automatic backup of the site taken before it was overwritten: restore it to
    /// undo this restore (none for a clone or an undelete: nothing was there to keep).
    pub pre_restore_backup_id: Option<String>,
    /// A clone's domain rewrite in the database (serialized values included).
    pub domain_from: Option<String>,
    pub domain_to: Option<String>,
    /// SQL statements run.
    pub statements: Option<i64>,
    /// String values in which the domain was rewritten.
    pub strings_rewritten: Option<i64>,
    /// Files, folders and links written.
    pub files_restored: Option<i64>,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRestore {
    /// A complete backup of this site.
    #[schema(pattern = "^[a-z2-7]{10}$")]
    pub backup: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClone {
    /// The new site's primary domain; the source site's primary domain is rewritten into
    /// it in the database.
    #[schema(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z][A-Za-z0-9]{0,29}(-[A-Za-z0-9]{1,30})?$"
    )]
    pub domain: String,
    /// A complete backup of the source site; its latest complete one by default.
    #[schema(pattern = "^[a-z2-7]{10}$")]
    pub backup: Option<String>,
    /// The new site's name; the source's with " (clone)" by default.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
}

/// A restore accepted for the job runner.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestoreAccepted {
    pub restore: Restore,
    /// `site.restore`, or `site.undelete` for a deleted site.
    pub operation: Operation,
    /// An undelete only: the deleted site's aliases that another site uses now; the site
    /// comes back without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases_taken: Vec<String>,
}

/// A clone accepted: the new site (being created) and the restore that follows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CloneAccepted {
    pub site: Site,
    /// The new site's create operation.
    pub create_operation: Operation,
    pub restore: Restore,
    /// The restore into the new site; it starts when the create has finished.
    pub operation: Operation,
}

const COLUMNS: &str = "id, tenant_id, site_id, backup_id, source_site_id, kind, state, operation_id, \
     pre_restore_backup_id, domain_from, domain_to, statements, strings_rewritten, files_restored, \
     error, created_at, finished_at";

async fn load(conn: &mut MySqlConnection, id: &str) -> ApiResult<Restore> {
    sqlx::query_as::<_, Restore>(crate::sql!("SELECT {COLUMNS} FROM restores WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ApiError::NotFound("restore"))
}

fn configured(state: &AppState) -> ApiResult<()> {
    let b = &state.backends.config;
    if b.s3.is_none() || b.galera.is_none() || b.gluster.is_none() {
        return Err(ApiError::conflict(
            None,
            "restores are not configured on this platform ([backends.s3], galera and gluster)",
        ));
    }
    Ok(())
}

fn parse_backup(value: &str) -> ApiResult<Id> {
    Id::parse(value).ok_or_else(|| ApiError::field("backup", "is not a backup id"))
}

/// The backup, if it is complete and of `site`; a 422 naming `backup` otherwise. Its row
/// stays locked until the caller's transaction ends: the pruner, which checks under that
/// lock whether a restore reads a backup, cannot start deleting it meanwhile.
async fn complete_backup_of(conn: &mut MySqlConnection, backup: &Id, site: &str) -> ApiResult<()> {
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM backups WHERE id = ? AND site_id = ? AND state <> 'deleted' FOR UPDATE",
    )
    .bind(backup.as_str())
    .bind(site)
    .fetch_optional(&mut *conn)
    .await?;
    match state.as_deref() {
        Some("complete") => Ok(()),
        Some(other) => Err(ApiError::field(
            "backup",
            format!("is {other}; only a complete backup can be restored"),
        )),
        None => Err(ApiError::field("backup", "is not a backup of this site")),
    }
}

/// 409 while another operation of the site, or a backup of it, is under way.
async fn ensure_idle(conn: &mut MySqlConnection, site: &str) -> ApiResult<()> {
    let busy: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
           AND state IN ('pending', 'running', 'unwinding')) \
         + (SELECT COUNT(*) FROM backups WHERE site_id = ? AND state IN ('pending', 'running'))",
    )
    .bind(site)
    .bind(site)
    .fetch_one(&mut *conn)
    .await?;
    if busy > 0 {
        return Err(ApiError::conflict(
            None,
            "another operation or a backup of this site is under way; try again when it finishes",
        ));
    }
    Ok(())
}

/// What a `restores` row is recorded for.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// The backup's own site, live.
    SameSite,
    /// The backup's own site, deleted: brought back. `kept_aliases` is the list the
    /// delete kept (`sites.aliases` before the request reclaimed what was free), recorded
    /// with the restore for the undelete's unwind to put back
    /// (`sagas::site_steps::give_back_domains`).
    DeletedSite { kept_aliases: &'a str },
    /// A new site, the source's primary domain (`from`) rewritten into its own (`to`).
    Clone { from: &'a str, to: &'a str },
}

#[allow(clippy::too_many_arguments)]
async fn record(
    tx: &mut MySqlConnection,
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    site: &str,
    backup: &Id,
    source: &str,
    target: Target<'_>,
) -> ApiResult<(Restore, Operation)> {
    let id = Id::generate();
    let (kind, operation, action, domains, kept_aliases) = match target {
        Target::SameSite => (
            "restore",
            OperationKind::SiteRestore,
            "site.restore",
            None,
            None,
        ),
        Target::DeletedSite { kept_aliases } => (
            "restore",
            OperationKind::SiteUndelete,
            "site.undelete",
            None,
            Some(kept_aliases),
        ),
        Target::Clone { from, to } => (
            "clone",
            OperationKind::SiteRestore,
            "site.clone",
            Some((from, to)),
            None,
        ),
    };
    sqlx::query(
        "INSERT INTO restores (id, tenant_id, site_id, backup_id, source_site_id, kind, state, \
         domain_from, domain_to, kept_aliases) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(tenant)
    .bind(site)
    .bind(backup.as_str())
    .bind(source)
    .bind(kind)
    .bind(domains.map(|d| d.0))
    .bind(domains.map(|d| d.1))
    .bind(kept_aliases)
    .execute(&mut *tx)
    .await?;
    let op = operations::enqueue(
        &mut *tx,
        &state.backends,
        Some(actor),
        operation,
        Some(tenant),
        "site",
        site,
    )
    .await?;
    sqlx::query("UPDATE restores SET operation_id = ? WHERE id = ?")
        .bind(op.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        Some(actor),
        Event {
            action,
            tenant_id: Some(tenant),
            target_type: "site",
            target_id: site,
            details: json!({ "backup": backup.as_str(), "source": source, "restore": id.as_str(), "operation": op }),
        },
    )
    .await?;
    Ok((
        load(&mut *tx, id.as_str()).await?,
        operations::load(&mut *tx, op.as_str())
            .await?
            .for_reader(actor),
    ))
}

/// `POST /v1/sites/{site}/restores`: the site's database and files replaced by those of
/// one of its complete backups, after an automatic backup of the site as it is; or, for a
/// `deleted` site, the site brought back from the backup (see the module's documentation).
pub async fn restore(
    state: &AppState,
    actor: &Actor,
    site_id: &SiteId,
    input: NewRestore,
) -> ApiResult<RestoreAccepted> {
    let backup = parse_backup(&input.backup)?;
    let site = sites::get_any_state_for(state, actor, site_id, TenantRole::Member).await?;
    configured(state)?;
    let mut tx = state.db.begin().await?;
    let current: SiteState = sqlx::query_scalar("SELECT state FROM sites WHERE id = ? FOR UPDATE")
        .bind(site_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let deleted = match current {
        SiteState::Active | SiteState::Degraded | SiteState::Suspended => false,
        SiteState::Deleted => true,
        other => {
            return Err(ApiError::conflict(
                None,
                format!(
                    "the site is {other}; only an active, suspended or deleted site can be restored"
                ),
            ));
        }
    };
    complete_backup_of(&mut tx, &backup, site_id.as_str()).await?;
    ensure_idle(&mut tx, site_id.as_str()).await?;
    let mut reclaimed = None;
    if deleted {
        let tenant_state: Option<String> =
            sqlx::query_scalar("SELECT state FROM tenants WHERE id = ?")
                .bind(site.tenant_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if tenant_state.as_deref() != Some("active") {
            return Err(ApiError::conflict(None, "the tenant is not active"));
        }
        reclaimed = Some(sites::reclaim_domains(&mut tx, site_id.as_str()).await?);
        let event = SiteEvent::Requested(OperationKind::SiteUndelete);
        if let Some(Err(refused)) = site_state::change(&mut tx, site_id.as_str(), event).await? {
            return Err(ApiError::conflict(None, refused.to_string()));
        }
    }
    let target = match &reclaimed {
        Some(r) => Target::DeletedSite {
            kept_aliases: &r.kept_before,
        },
        None => Target::SameSite,
    };
    let (restore, operation) = record(
        &mut tx,
        state,
        actor,
        site.tenant_id.as_str(),
        site_id.as_str(),
        &backup,
        site_id.as_str(),
        target,
    )
    .await?;
    tx.commit().await?;
    state.wake_runner();
    let aliases_taken = reclaimed.map(|r| r.taken).unwrap_or_default();
    if !aliases_taken.is_empty() {
        tracing::info!(site = %site_id, aliases = ?aliases_taken, "undelete: aliases used by another site are not given back");
    }
    Ok(RestoreAccepted {
        restore,
        operation,
        aliases_taken,
    })
}

/// What a clone copies from its source site (a live one, or a deleted one whose backup
/// is cloned): its row as stored, whatever its state.
#[derive(Debug, FromRow)]
struct Source {
    name: String,
    plan: String,
    domain: String,
    admin_user: String,
    admin_email: String,
    keep_http: bool,
    hsts: bool,
}

async fn source_row(state: &AppState, site: &str) -> ApiResult<Source> {
    sqlx::query_as(
        "SELECT s.name, p.slug AS plan, s.primary_domain AS domain, s.admin_user, s.admin_email, \
         s.keep_http, s.hsts FROM sites s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?",
    )
    .bind(site)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("site"))
}

/// `POST /v1/sites/{site}/clones`: a new site of the same tenant and plan, with `domain`,
/// created as any site is, then the backup restored into it with the source's primary
/// domain rewritten into the new one.
pub async fn clone(
    state: &AppState,
    actor: &Actor,
    source_id: &SiteId,
    input: NewClone,
) -> ApiResult<CloneAccepted> {
    let given = input.backup.as_deref().map(parse_backup).transpose()?;
    let source = sites::get_for(state, actor, source_id, TenantRole::Member).await?;
    let tenant = source.tenant_id.clone();
    configured(state)?;
    let row = source_row(state, source_id.as_str()).await?;
    clone_into(
        state,
        actor,
        &tenant,
        source_id.as_str(),
        row,
        given,
        input.domain,
        input.name,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackupClone {
    /// The new site's primary domain (a deleted site's own domain is free again); the
    /// backed-up site's primary domain is rewritten into it in the database.
    #[schema(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z][A-Za-z0-9]{0,29}(-[A-Za-z0-9]{1,30})?$"
    )]
    pub domain: String,
    /// The new site's name; the backed-up site's with " (clone)" by default.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
}

/// `POST /v1/backups/{backup}/clones`: a new site made from any complete backup of the
/// caller's tenant, the backup of a deleted site included (its final backup: how a
/// deleted site is brought back), with the plan and settings the backed-up site had.
pub async fn clone_backup(
    state: &AppState,
    actor: &Actor,
    backup_id: &BackupId,
    input: NewBackupClone,
) -> ApiResult<CloneAccepted> {
    let backup = super::backups::authorized(state, actor, backup_id, TenantRole::Member).await?;
    configured(state)?;
    if backup.state != "complete" {
        return Err(ApiError::conflict(
            None,
            format!(
                "the backup is {}; only a complete backup can be cloned",
                backup.state
            ),
        ));
    }
    let tenant = TenantId::parse(&backup.tenant_id).ok_or(ApiError::NotFound("backup"))?;
    let row = source_row(state, &backup.site_id).await?;
    clone_into(
        state,
        actor,
        &tenant,
        &backup.site_id,
        row,
        Some(backup_id.as_id().clone()),
        input.domain,
        input.name,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn clone_into(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    source_id: &str,
    source: Source,
    given: Option<Id>,
    domain: String,
    name: Option<String>,
) -> ApiResult<CloneAccepted> {
    let name = name.unwrap_or_else(|| {
        format!("{} (clone)", source.name)
            .chars()
            .take(200)
            .collect()
    });
    let valid = sites::validate_new(
        state,
        actor,
        NewSite {
            name,
            domain,
            aliases: Vec::new(),
            plan: source.plan.clone(),
            // The source's, when it has them (the clone's database has its users anyway).
            admin_user: Some(source.admin_user).filter(|u| !u.is_empty()),
            admin_email: Some(source.admin_email).filter(|e| !e.is_empty()),
            // The source's HTTPS options.
            keep_http: Some(source.keep_http),
            hsts: Some(source.hsts),
        },
    )
    .await?;
    let mut tx = state.db.begin().await?;
    let backup = match given {
        Some(b) => {
            complete_backup_of(&mut tx, &b, source_id).await?;
            b
        }
        None => {
            let latest: Option<String> = sqlx::query_scalar(
                "SELECT id FROM backups WHERE site_id = ? AND state = 'complete' ORDER BY seq DESC LIMIT 1",
            )
            .bind(source_id)
            .fetch_optional(&mut *tx)
            .await?;
            latest.and_then(|b| Id::parse(&b)).ok_or_else(|| {
                ApiError::field("backup", "the site has no complete backup; take one first")
            })?
        }
    };
    let (created, _password) = sites::insert_new(&mut tx, state, actor, tenant, valid).await?;
    let new_domain = DomainName::parse(&created.site.domain)
        .map(|d| d.as_str().to_owned())
        .unwrap_or_else(|_| created.site.domain.clone());
    let (restore, operation) = record(
        &mut tx,
        state,
        actor,
        tenant.as_str(),
        created.site.id.as_str(),
        &backup,
        source_id,
        Target::Clone {
            from: &source.domain,
            to: &new_domain,
        },
    )
    .await?;
    tx.commit().await?;
    state.wake_runner();
    Ok(CloneAccepted {
        site: created.site,
        create_operation: created.operation,
        restore,
        operation,
    })
}

/// `GET /v1/restores/{restore}`: also of a site deleted since (or again: an undelete
/// that failed).
pub async fn get(state: &AppState, actor: &Actor, id: &Id) -> ApiResult<Restore> {
    let mut conn = state.db.acquire().await?;
    let restore = load(&mut conn, id.as_str()).await?;
    drop(conn);
    let site = SiteId::parse(&restore.site_id).ok_or(ApiError::NotFound("restore"))?;
    sites::get_any_state_for(state, actor, &site, TenantRole::Viewer)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::NotFound("restore"),
            other => other,
        })?;
    Ok(restore)
}
