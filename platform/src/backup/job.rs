//! Backups as durable operations: the steps the job runner runs for `site.backup` and
//! `backup.delete`, and what their end writes on the backup's row.
//!
//! `run_backup` is idempotent the way every step must be: a backup already `complete` is
//! left alone; otherwise the previous attempt (a runner killed mid-stream, a retry) is
//! cleared first — its journaled multipart uploads aborted, its objects removed — and the
//! backup runs again from the start under the same id. The row turns `complete` in one
//! statement after [`super::run`] returned, which is after every object and the manifest
//! were read back; nothing else writes `complete`.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use sqlx::MySqlPool;

use super::{BackupSpec, BackupStore, Hooks, UploadJournal, backup_prefix};
use crate::{
    domain::Id,
    provision::Backends,
    step_error::{StepError, StepResult},
};

/// What a tenant reads when the backup store fails (the cause is for staff).
const STORE_FAILED: &str = "the backup store could not be written or read";

pub(super) fn store(provisioner: &Backends) -> Result<BackupStore, StepError> {
    let config = provisioner.config.s3.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!("backups need [backends.s3] in the configuration"))
    })?;
    BackupStore::new(config).map_err(StepError::internal)
}

struct Row {
    tenant: Id,
    site: Id,
    state: String,
    plan: String,
}

async fn load(db: &MySqlPool, backup: &str) -> Result<Row, StepError> {
    let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT b.tenant_id, b.site_id, b.state, p.slug FROM backups b \
         LEFT JOIN plans p ON p.id = b.plan_id WHERE b.id = ?",
    )
    .bind(backup)
    .fetch_optional(db)
    .await?;
    let (tenant, site, state, plan) =
        row.ok_or_else(|| StepError::internal(anyhow!("backup {backup} is not recorded")))?;
    let parse = |v: &str| {
        Id::parse(v).ok_or_else(|| StepError::internal(anyhow!("malformed id {v:?} on a backup")))
    };
    Ok(Row {
        tenant: parse(&tenant)?,
        site: parse(&site)?,
        state,
        plan: plan.unwrap_or_default(),
    })
}

/// Aborts the uploads the backup journaled and removes its objects; then forgets them.
async fn clear(db: &MySqlPool, store: &BackupStore, backup: &str, prefix: &str) -> StepResult {
    let uploads: Vec<(String, String)> =
        sqlx::query_as("SELECT object_key, upload_id FROM backup_uploads WHERE backup_id = ?")
            .bind(backup)
            .fetch_all(db)
            .await?;
    store
        .remove_prefix(prefix, &uploads)
        .await
        .map_err(|e| StepError::retryable(STORE_FAILED, e))?;
    sqlx::query("DELETE FROM backup_uploads WHERE backup_id = ?")
        .bind(backup)
        .execute(db)
        .await?;
    Ok(())
}

/// The `run_backup` step of `site.backup`.
pub async fn run_backup(db: &MySqlPool, provisioner: &Backends, backup: &str) -> StepResult {
    let row = load(db, backup).await?;
    match row.state.as_str() {
        "complete" => return Ok(()),
        "pending" | "running" => {}
        other => {
            return Err(StepError::permanent(
                "the backup cannot run in its current state",
                anyhow!("the backup is {other}; it cannot run"),
            ));
        }
    }
    let store = store(provisioner)?;
    let backup_id = Id::parse(backup)
        .ok_or_else(|| StepError::internal(anyhow!("malformed backup id {backup:?}")))?;
    let prefix = backup_prefix(&row.tenant, &row.site, &backup_id);
    clear(db, &store, backup, &prefix).await?;

    let galera = provisioner.config.galera.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!(
            "backups need [backends.galera] in the configuration"
        ))
    })?;
    let gluster = provisioner.config.gluster.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!(
            "backups need [backends.gluster] in the configuration"
        ))
    })?;
    // The platform's database account; the dump reads the site's schema only.
    let opts = mysql_async::Opts::from_url(galera.admin_url.expose()).map_err(|_| {
        StepError::internal(anyhow!("backends.galera.admin_url is not a valid URL"))
    })?;
    let versions: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT JSON_VALUE(report, '$.versions.wordpress'), JSON_VALUE(report, '$.versions.php') \
         FROM agent_reports WHERE site_id = ?",
    )
    .bind(row.site.as_str())
    .fetch_optional(db)
    .await?;
    let (wordpress_version, php_version) = versions.unwrap_or((None, None));
    let spec = BackupSpec {
        backup_id,
        tenant_id: row.tenant.clone(),
        site_id: row.site.clone(),
        plan: row.plan,
        db: opts,
        schema: format!("wp_{}", row.site),
        files_root: gluster.mount.join(row.site.as_str()),
        wordpress_version,
        php_version,
    };

    sqlx::query(
        "UPDATE backups SET state = 'running', error = NULL, \
         started_at = COALESCE(started_at, NOW(6)) WHERE id = ? AND state IN ('pending', 'running')",
    )
    .bind(backup)
    .execute(db)
    .await?;

    let journal: UploadJournal = {
        let db = db.clone();
        let backup = backup.to_owned();
        Arc::new(move |key, upload| {
            let (db, backup) = (db.clone(), backup.clone());
            Box::pin(async move {
                sqlx::query(
                    "INSERT IGNORE INTO backup_uploads (backup_id, object_key, upload_id) \
                     VALUES (?, ?, ?)",
                )
                .bind(&backup)
                .bind(&key)
                .bind(&upload)
                .execute(&db)
                .await
                .context("recording the upload")?;
                Ok(())
            })
        })
    };
    let hooks = Hooks {
        progress: None,
        journal: Some(journal),
    };
    let done = match super::run(&store, &spec, hooks).await {
        Ok(done) => done,
        Err(err) => {
            // `run` aborted and removed what it wrote; the journal goes with it.
            sqlx::query("DELETE FROM backup_uploads WHERE backup_id = ?")
                .bind(backup)
                .execute(db)
                .await?;
            return Err(StepError::retryable(
                "the backup could not be taken; it is tried again",
                err,
            ));
        }
    };
    let size = |name: &str| {
        done.manifest
            .object(name)
            .map(|o| i64::try_from(o.size).unwrap_or(i64::MAX))
    };
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE backups SET state = 'complete', completed_at = NOW(6), error = NULL, \
         database_bytes = ?, files_bytes = ?, manifest_sha256 = ?, tables_count = ? \
         WHERE id = ? AND state = 'running'",
    )
    .bind(size(super::DATABASE_OBJECT))
    .bind(size(super::FILES_OBJECT))
    .bind(&done.manifest_sha256)
    .bind(i32::try_from(done.manifest.database.tables.len()).unwrap_or(i32::MAX))
    .bind(backup)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM backup_uploads WHERE backup_id = ?")
        .bind(backup)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        backup,
        site = %spec.site_id,
        stored_bytes = done.manifest.stored_bytes(),
        "backup complete"
    );
    Ok(())
}

/// The `remove_backup` step of `backup.delete`: the objects and any unfinished upload.
pub async fn remove_backup(db: &MySqlPool, provisioner: &Backends, backup: &str) -> StepResult {
    let row = load(db, backup).await?;
    if row.state == "deleted" {
        return Ok(());
    }
    let store = store(provisioner)?;
    let backup_id = Id::parse(backup)
        .ok_or_else(|| StepError::internal(anyhow!("malformed backup id {backup:?}")))?;
    let prefix = backup_prefix(&row.tenant, &row.site, &backup_id);
    clear(db, &store, backup, &prefix).await
}

/// Written when a backup's operation ends: `failed` (never `complete`: only
/// [`run_backup`] writes that) or, for a delete, `deleted`.
pub async fn on_finish(
    db: &MySqlPool,
    kind: &str,
    backup: &str,
    succeeded: bool,
) -> sqlx::Result<()> {
    match (kind, succeeded) {
        ("site.backup", false) => {
            // The step's public message: the backup is shown to the site's tenant.
            let error: Option<String> = sqlx::query_scalar(
                "SELECT s.public_error FROM operation_steps s JOIN operations o ON o.id = s.operation_id \
                 WHERE o.target_type = 'backup' AND o.target_id = ? AND s.error IS NOT NULL \
                 ORDER BY o.created_at DESC, s.position DESC LIMIT 1",
            )
            .bind(backup)
            .fetch_optional(db)
            .await?
            .flatten();
            sqlx::query(
                "UPDATE backups SET state = 'failed', error = LEFT(?, 1000) \
                 WHERE id = ? AND state IN ('pending', 'running')",
            )
            .bind(error.unwrap_or_else(|| "the backup failed".to_owned()))
            .bind(backup)
            .execute(db)
            .await?;
        }
        ("backup.delete", true) => {
            sqlx::query("UPDATE backups SET state = 'deleted', deleted_at = NOW(6) WHERE id = ?")
                .bind(backup)
                .execute(db)
                .await?;
        }
        ("backup.delete", false) => {
            // The objects may be partly gone: not restorable, and deleting again is safe.
            sqlx::query("UPDATE backups SET state = 'failed', error = 'deleting failed; delete it again' WHERE id = ?")
                .bind(backup)
                .execute(db)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Whether the site's database (on the database server, through the platform's account)
/// and its directory on the storage mount exist: a site whose create failed early has
/// nothing to keep.
async fn has_data(provisioner: &Backends, site: &str) -> Result<bool, StepError> {
    let (Some(galera), Some(gluster)) = (
        provisioner.config.galera.as_ref(),
        provisioner.config.gluster.as_ref(),
    ) else {
        return Ok(false);
    };
    if !gluster.mount.join(site).is_dir() {
        return Ok(false);
    }
    let opts = mysql_async::Opts::from_url(galera.admin_url.expose()).map_err(|_| {
        StepError::internal(anyhow!("backends.galera.admin_url is not a valid URL"))
    })?;
    let schema = format!("wp_{site}");
    let found = async {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::new(opts).await?;
        let n: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (schema.as_str(),),
            )
            .await?;
        let _ = conn.disconnect().await;
        anyhow::Ok(n.unwrap_or(0) > 0)
    }
    .await
    .map_err(|e| StepError::retryable("the site's database could not be read", e))?;
    Ok(found)
}

/// The `final_backup` step of `site.delete`: the site backed up (kind `final`) before
/// anything of it is removed, and kept `[backups] final_retention_days` after the delete
/// (`backup/schedule.rs` prunes it then). Recorded once per delete operation; running the
/// step again resumes or keeps it. A backup of the site already under way is waited for
/// (the delete would remove what it reads). A site with no database or no directory (its
/// create failed early) has nothing to keep and gets none. If the backup cannot be taken,
/// the step fails like any backup (retried, then the delete fails and the site is
/// `failed` with everything still there): a delete never goes on without it.
pub async fn final_backup(db: &MySqlPool, provisioner: &Backends, site: &str) -> StepResult {
    let operation: Option<String> = sqlx::query_scalar(
        "SELECT id FROM operations WHERE target_type = 'site' AND target_id = ? \
         AND kind = 'site.delete' AND state IN ('pending', 'running', 'unwinding') \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(site)
    .fetch_optional(db)
    .await?;
    let operation = operation
        .ok_or_else(|| StepError::internal(anyhow!("site {site} has no delete under way")))?;
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT id FROM backups WHERE site_id = ? AND kind = 'final' AND operation_id = ?",
    )
    .bind(site)
    .bind(&operation)
    .fetch_optional(db)
    .await?;
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE site_id = ? AND state IN ('pending', 'running') \
         AND id <> COALESCE(?, '')",
    )
    .bind(site)
    .bind(recorded.as_deref())
    .fetch_one(db)
    .await?;
    if others > 0 {
        return Err(StepError::Wait(
            std::time::Duration::from_secs(2),
            "a backup of the site is under way; the delete waits for it".to_owned(),
        ));
    }
    let backup = match recorded {
        Some(id) => id,
        None => {
            if !has_data(provisioner, site).await? {
                tracing::info!(
                    site,
                    "the site has no database or directory: no final backup"
                );
                return Ok(());
            }
            let id = Id::generate();
            sqlx::query(
                "INSERT INTO backups (id, tenant_id, site_id, kind, state, plan_id, operation_id) \
                 SELECT ?, tenant_id, id, 'final', 'pending', plan_id, ? FROM sites WHERE id = ?",
            )
            .bind(id.as_str())
            .bind(&operation)
            .bind(site)
            .execute(db)
            .await?;
            id.as_str().to_owned()
        }
    };
    run_backup(db, provisioner, &backup).await
}

/// The end of a `site.delete`: a final backup it did not complete is marked `failed`.
pub async fn final_backup_finished(
    db: &MySqlPool,
    site: &str,
    succeeded: bool,
) -> sqlx::Result<()> {
    if !succeeded {
        sqlx::query(
            "UPDATE backups SET state = 'failed', \
             error = 'the delete it was taken for failed before it completed' \
             WHERE site_id = ? AND kind = 'final' AND state IN ('pending', 'running')",
        )
        .bind(site)
        .execute(db)
        .await?;
    }
    Ok(())
}
