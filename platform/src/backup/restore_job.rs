//! Restores as durable operations: what the steps of `site.restore`
//! (`sagas/site_restore.rs`) and of `site.undelete` (`sagas/site_undelete.rs`, a deleted
//! site's resources made again and its backup restored into them) do over the `restores`
//! row of the site, and what the saga's end writes on it.
//!
//! The operation's target is the site (so no other change of the site runs meanwhile);
//! its restore is the site's one `pending` or `running` row. Every step is idempotent:
//! the automatic pre-restore backup is recorded once and its step converges like any
//! backup; the database and files steps replace what is there each time they run.

use anyhow::anyhow;
use backends::{SiteResourceId, swarm::SecretKind};
use mysql_async::OptsBuilder;
use sqlx::MySqlPool;

use super::{
    BackupStore, backup_prefix,
    restore::{self, RestoreError},
    serialized::Rewriter,
};
use crate::{
    domain::Id,
    provision::Backends,
    step_error::{StepError, StepResult},
};

const STORE_FAILED: &str = "the backup store could not be read";

/// A restore's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RestoreRow {
    pub id: String,
    pub tenant_id: String,
    pub site_id: String,
    pub backup_id: String,
    pub source_site_id: String,
    pub kind: String,
    pub state: String,
    pub pre_restore_backup_id: Option<String>,
    pub domain_from: Option<String>,
    pub domain_to: Option<String>,
    pub operation_id: Option<String>,
}

/// The restore under way on `site`.
pub async fn current(db: &MySqlPool, site: &str) -> Result<RestoreRow, StepError> {
    sqlx::query_as(
        "SELECT id, tenant_id, site_id, backup_id, source_site_id, kind, state, \
         pre_restore_backup_id, domain_from, domain_to, operation_id FROM restores \
         WHERE site_id = ? AND state IN ('pending', 'running') ORDER BY seq DESC LIMIT 1",
    )
    .bind(site)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| StepError::internal(anyhow!("site {site} has no restore under way")))
}

fn store(provisioner: &Backends) -> Result<BackupStore, StepError> {
    let config = provisioner.config.s3.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!("restores need [backends.s3] in the configuration"))
    })?;
    BackupStore::new(config).map_err(StepError::internal)
}

fn parse_id(value: &str) -> Result<Id, StepError> {
    Id::parse(value).ok_or_else(|| StepError::internal(anyhow!("malformed id {value:?}")))
}

/// A restore's error as a step's: a refusal unwinds with its own words, anything else is
/// tried again.
fn step_error(public: &'static str) -> impl FnOnce(RestoreError) -> StepError {
    move |err| match err {
        RestoreError::Refused(why) => StepError::permanent(
            format!("the backup cannot be restored: {why}"),
            anyhow!("refused"),
        ),
        RestoreError::Failed(cause) => StepError::retryable(public, cause),
    }
}

/// The manifest of backup `backup`, checked against the backup's record (it must be
/// `complete`).
async fn manifest_of(
    db: &MySqlPool,
    store: &BackupStore,
    backup: &str,
) -> Result<super::Manifest, StepError> {
    let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT tenant_id, site_id, state, manifest_sha256 FROM backups WHERE id = ?",
    )
    .bind(backup)
    .fetch_optional(db)
    .await?;
    let (tenant, site, state, sha) =
        row.ok_or_else(|| StepError::internal(anyhow!("backup {backup} is not recorded")))?;
    if state != "complete" {
        return Err(StepError::permanent(
            format!("the backup is {state}; only a complete backup can be restored"),
            anyhow!("backup {backup} is {state}"),
        ));
    }
    let prefix = backup_prefix(&parse_id(&tenant)?, &parse_id(&site)?, &parse_id(backup)?);
    let manifest = restore::read_manifest(store, &prefix, sha.as_deref())
        .await
        .map_err(step_error(STORE_FAILED))?;
    if manifest.backup_id.as_str() != backup || manifest.site_id.as_str() != site {
        return Err(StepError::permanent(
            "the backup cannot be restored: its manifest belongs to another backup",
            anyhow!(
                "manifest of {} / {} under {backup}",
                manifest.backup_id,
                manifest.site_id
            ),
        ));
    }
    Ok(manifest)
}

/// `wait_for_site`: the target exists and no operation of it runs but the restore's own
/// (a clone's new site waits for its create); the restore is then `running`.
pub async fn wait_for_site(db: &MySqlPool, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM sites WHERE id = ?")
        .bind(site)
        .fetch_optional(db)
        .await?;
    match state.as_deref() {
        Some("provisioning" | "active" | "degraded" | "suspended") => {}
        Some(other) => {
            return Err(StepError::permanent(
                format!("the site is {other}; it cannot be restored into"),
                anyhow!("site {site} is {other}"),
            ));
        }
        None => return Err(StepError::internal(anyhow!("site {site} is not recorded"))),
    }
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
         AND id <> COALESCE(?, '') AND kind NOT IN ('site.restore', 'site.undelete') \
         AND state IN ('pending', 'running', 'unwinding')",
    )
    .bind(site)
    .bind(restore.operation_id.as_deref())
    .fetch_one(db)
    .await?;
    if others > 0 {
        return Err(StepError::Wait(
            std::time::Duration::from_secs(1),
            "another operation of the site (its create) is under way".to_owned(),
        ));
    }
    // A clone's new site whose create failed has nothing to restore into (a site deleted
    // and brought back may have a failed create long before: not this restore's).
    let failed_create: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
         AND kind = 'site.create' AND state = 'failed'",
    )
    .bind(site)
    .fetch_one(db)
    .await?;
    if restore.kind == "clone" && failed_create > 0 {
        return Err(StepError::permanent(
            "the new site could not be created; nothing was restored",
            anyhow!("site.create of {site} failed"),
        ));
    }
    sqlx::query("UPDATE restores SET state = 'running' WHERE id = ? AND state = 'pending'")
        .bind(&restore.id)
        .execute(db)
        .await?;
    Ok(())
}

/// `verify_backup`: every object read through and checked against the manifest, every
/// statement of the dump checked, before anything is overwritten.
pub async fn verify_backup(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    let store = store(provisioner)?;
    let manifest = manifest_of(db, &store, &restore.backup_id).await?;
    let verified = restore::verify(&store, &manifest)
        .await
        .map_err(step_error(STORE_FAILED))?;
    tracing::info!(
        restore = %restore.id,
        backup = %restore.backup_id,
        statements = verified.statements,
        archive_entries = verified.archive_entries,
        "backup verified for a restore"
    );
    Ok(())
}

/// `backup_current`: the site as it is, backed up before it is overwritten (a restore
/// into the same site; a clone's new site has nothing to keep). The backup is recorded on
/// the restore once; running the step again resumes or keeps it.
pub async fn backup_current(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    if restore.kind != "restore" {
        return Ok(());
    }
    let backup = match restore.pre_restore_backup_id {
        Some(id) => id,
        None => {
            let mut tx = db.begin().await?;
            let recorded: Option<Option<String>> = sqlx::query_scalar(
                "SELECT pre_restore_backup_id FROM restores WHERE id = ? FOR UPDATE",
            )
            .bind(&restore.id)
            .fetch_optional(&mut *tx)
            .await?;
            match recorded.flatten() {
                Some(id) => id,
                None => {
                    let id = Id::generate();
                    sqlx::query(
                        "INSERT INTO backups (id, tenant_id, site_id, kind, state, plan_id, operation_id) \
                         SELECT ?, s.tenant_id, s.id, 'pre_restore', 'pending', s.plan_id, \
                         (SELECT operation_id FROM restores WHERE id = ?) FROM sites s WHERE s.id = ?",
                    )
                    .bind(id.as_str())
                    .bind(&restore.id)
                    .bind(site)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE restores SET pre_restore_backup_id = ? WHERE id = ?")
                        .bind(id.as_str())
                        .bind(&restore.id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    id.as_str().to_owned()
                }
            }
        }
    };
    super::job::run_backup(db, provisioner, &backup).await
}

/// A connection of the site's own database user, its schema selected: what the dump runs
/// through. It reaches the server the platform's account reaches (`admin_url`'s host), so
/// the platform need not be on the sites' network; the account is the site's.
async fn site_connection(
    db: &MySqlPool,
    provisioner: &Backends,
    site: &SiteResourceId,
) -> Result<mysql_async::Opts, StepError> {
    let galera = provisioner.config.galera.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!(
            "restores need [backends.galera] in the configuration"
        ))
    })?;
    let admin = mysql_async::Opts::from_url(galera.admin_url.expose()).map_err(|_| {
        StepError::internal(anyhow!("backends.galera.admin_url is not a valid URL"))
    })?;
    let password = provisioner.secret(db, site, SecretKind::DbPassword).await?;
    Ok(OptsBuilder::from_opts(admin)
        .user(Some(site.resource_name()))
        .pass(Some(password.expose().to_owned()))
        .db_name(Some(site.resource_name()))
        .into())
}

fn files_root(
    provisioner: &Backends,
    site: &SiteResourceId,
) -> Result<std::path::PathBuf, StepError> {
    let gluster = provisioner.config.gluster.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!(
            "restores need [backends.gluster] in the configuration"
        ))
    })?;
    Ok(gluster.mount.join(site.as_str()))
}

/// `restore_database`: the site's database replaced by the backup's (a clone's domain
/// rewritten in it), through the site's own user.
pub async fn restore_database(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    let id = SiteResourceId::parse(site).map_err(StepError::internal)?;
    let store = store(provisioner)?;
    let manifest = manifest_of(db, &store, &restore.backup_id).await?;
    let rewriter = match (&restore.domain_from, &restore.domain_to) {
        (Some(from), Some(to)) if from != to => Rewriter::new(from, to),
        _ => None,
    };
    let opts = site_connection(db, provisioner, &id).await?;
    let done = restore::restore_database(&store, &manifest, opts, rewriter)
        .await
        .map_err(step_error(
            "the site's database could not be restored; it is tried again",
        ))?;
    sqlx::query("UPDATE restores SET statements = ?, strings_rewritten = ? WHERE id = ?")
        .bind(i64::try_from(done.statements).unwrap_or(i64::MAX))
        .bind(i64::try_from(done.strings_rewritten).unwrap_or(i64::MAX))
        .bind(&restore.id)
        .execute(db)
        .await?;
    tracing::info!(
        restore = %restore.id,
        statements = done.statements,
        strings_rewritten = done.strings_rewritten,
        dropped = done.dropped.len(),
        "database restored"
    );
    Ok(())
}

/// `restore_files`: the site's wp-content replaced by the backup's.
pub async fn restore_files(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    let id = SiteResourceId::parse(site).map_err(StepError::internal)?;
    let store = store(provisioner)?;
    let manifest = manifest_of(db, &store, &restore.backup_id).await?;
    let entries = restore::restore_files(&store, &manifest, files_root(provisioner, &id)?)
        .await
        .map_err(step_error(
            "the site's files could not be restored; it is tried again",
        ))?;
    sqlx::query("UPDATE restores SET files_restored = ? WHERE id = ?")
        .bind(i64::try_from(entries).unwrap_or(i64::MAX))
        .bind(&restore.id)
        .execute(db)
        .await?;
    Ok(())
}

/// The pre-restore backup, if the restore has one that is complete.
async fn way_back(
    db: &MySqlPool,
    provisioner: &Backends,
    restore: &RestoreRow,
) -> Result<Option<(BackupStore, super::Manifest)>, StepError> {
    let Some(backup) = &restore.pre_restore_backup_id else {
        return Ok(None);
    };
    let complete: Option<String> =
        sqlx::query_scalar("SELECT state FROM backups WHERE id = ? AND state = 'complete'")
            .bind(backup)
            .fetch_optional(db)
            .await?;
    if complete.is_none() {
        return Ok(None);
    }
    let store = store(provisioner)?;
    let manifest = manifest_of(db, &store, backup).await?;
    Ok(Some((store, manifest)))
}

/// Undo of `restore_database`: the database as the pre-restore backup has it.
pub async fn put_back_database(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    let Some((store, manifest)) = way_back(db, provisioner, &restore).await? else {
        return Ok(());
    };
    let id = SiteResourceId::parse(site).map_err(StepError::internal)?;
    let opts = site_connection(db, provisioner, &id).await?;
    restore::restore_database(&store, &manifest, opts, None)
        .await
        .map_err(|e| {
            StepError::retryable("putting the site's database back failed", anyhow!("{e}"))
        })?;
    tracing::info!(restore = %restore.id, "database put back from the pre-restore backup");
    Ok(())
}

/// Undo of `restore_files`: wp-content as the pre-restore backup has it.
pub async fn put_back_files(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let restore = current(db, site).await?;
    let Some((store, manifest)) = way_back(db, provisioner, &restore).await? else {
        return Ok(());
    };
    let id = SiteResourceId::parse(site).map_err(StepError::internal)?;
    restore::restore_files(&store, &manifest, files_root(provisioner, &id)?)
        .await
        .map_err(|e| {
            StepError::retryable("putting the site's files back failed", anyhow!("{e}"))
        })?;
    tracing::info!(restore = %restore.id, "files put back from the pre-restore backup");
    Ok(())
}

/// The end of the restore: `complete` or `failed` (with the step's public message), and
/// a pre-restore backup that did not complete marked `failed`.
pub async fn on_finish(db: &MySqlPool, site: &str, succeeded: bool) -> sqlx::Result<()> {
    let Some(restore): Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, pre_restore_backup_id, operation_id FROM restores \
         WHERE site_id = ? AND state IN ('pending', 'running') ORDER BY seq DESC LIMIT 1",
    )
    .bind(site)
    .fetch_optional(db)
    .await?
    else {
        return Ok(());
    };
    let (id, pre, operation) = restore;
    if succeeded {
        sqlx::query("UPDATE restores SET state = 'complete', finished_at = NOW(6), error = NULL WHERE id = ?")
            .bind(&id)
            .execute(db)
            .await?;
        return Ok(());
    }
    // The operation's public message: the failed step's, kept while it unwinds.
    let error: Option<String> =
        sqlx::query_scalar("SELECT public_error FROM operations WHERE id = ?")
            .bind(operation.unwrap_or_default())
            .fetch_optional(db)
            .await?
            .flatten();
    sqlx::query(
        "UPDATE restores SET state = 'failed', finished_at = NOW(6), error = LEFT(?, 1000) WHERE id = ?",
    )
    .bind(error.unwrap_or_else(|| "the restore failed".to_owned()))
    .bind(&id)
    .execute(db)
    .await?;
    if let Some(pre) = pre {
        sqlx::query(
            "UPDATE backups SET state = 'failed', error = 'the restore it was taken for failed before it completed' \
             WHERE id = ? AND state IN ('pending', 'running')",
        )
        .bind(pre)
        .execute(db)
        .await?;
    }
    Ok(())
}
