//! Drills as durable operations (`backup.verify`), and the schedule that starts them.
//!
//! - [`drill_backup`], the saga's step: the backup restored into its scratch, compared,
//!   the scratch dropped ([`super::drill`]). A backup that does not match its manifest is
//!   a permanent failure whose public message names the object (or table) at fault; a
//!   store or database that is down is retried.
//! - [`on_finish`]: the result on the backup's row (`verified_at`, `verify_result`,
//!   `verify_error`) and in the metrics (`pressdock_backup_drills_total{result}`).
//! - `app::backup_drills::enqueue`: one drill of one backup, unless one is already under
//!   way (the API's on-demand drill and the schedule both come through there).
//! - [`schedule_once`]: a pass of the schedule (its loop is `background::drills`). Every
//!   pass, one replica at a time (a named lock on a connection of its own, as the
//!   reconcilers do), the latest complete backup of each site none of whose backups was
//!   drilled within `every_days` gets a drill, a few per pass, the least recently drilled
//!   sites first.

use std::sync::LazyLock;

use anyhow::anyhow;
use prometheus::{IntCounterVec, Opts};
use sqlx::MySqlPool;

use super::{
    backup_prefix,
    drill::{self, Scratch},
    restore::RestoreError,
};
use crate::{
    app::backup_drills,
    config::DrillsConfig,
    domain::Id,
    provision::Backends,
    step_error::{StepError, StepResult},
};

/// Drills that ended, by result (`passed`, `failed`), in this process. Registered in
/// every [`crate::metrics::Metrics`]; a drill is counted by the replica that ran it.
pub static DRILLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "pressdock_backup_drills_total",
            "Backup drills (restore into a scratch database and folder, compared with the manifest) by result",
        ),
        &["result"],
    )
    .expect("a valid metric")
});

/// Where drills unpack wp-content: `$TMPDIR/pressdock-drills/drill_<backup>/`.
pub fn scratch_root() -> std::path::PathBuf {
    std::env::temp_dir().join("pressdock-drills")
}

/// The `drill_backup` step of `backup.verify`.
pub async fn drill_backup(db: &MySqlPool, provisioner: &Backends, backup: &str) -> StepResult {
    let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT tenant_id, site_id, state, manifest_sha256 FROM backups WHERE id = ?",
    )
    .bind(backup)
    .fetch_optional(db)
    .await?;
    let (tenant, site, state, manifest_sha256) =
        row.ok_or_else(|| StepError::internal(anyhow!("backup {backup} is not recorded")))?;
    if state != "complete" {
        return Err(StepError::permanent(
            format!("the backup is {state}; only a complete backup can be verified"),
            anyhow!("drill of a backup in state {state}"),
        ));
    }
    let parse = |v: &str| {
        Id::parse(v).ok_or_else(|| StepError::internal(anyhow!("malformed id {v:?} on a backup")))
    };
    let (tenant, site, backup_id) = (parse(&tenant)?, parse(&site)?, parse(backup)?);
    let store = super::job::store(provisioner)?;
    let galera = provisioner.config.galera.as_ref().ok_or_else(|| {
        StepError::internal(anyhow!(
            "drills need [backends.galera] in the configuration"
        ))
    })?;
    let admin = mysql_async::Opts::from_url(galera.admin_url.expose()).map_err(|_| {
        StepError::internal(anyhow!("backends.galera.admin_url is not a valid URL"))
    })?;
    let scratch = Scratch::for_backup(&backup_id, &scratch_root());
    let prefix = backup_prefix(&tenant, &site, &backup_id);
    match drill::run(&store, &prefix, manifest_sha256.as_deref(), admin, &scratch).await {
        Ok(report) => {
            tracing::info!(
                backup,
                site = %site,
                tables = report.tables,
                rows = report.rows,
                files = report.files,
                bytes = report.bytes,
                "drill passed"
            );
            Ok(())
        }
        Err(RestoreError::Refused(message)) => {
            tracing::warn!(backup, site = %site, error = %message, "drill failed");
            Err(StepError::permanent(message.clone(), anyhow!(message)))
        }
        Err(RestoreError::Failed(err)) => Err(StepError::retryable(
            "the drill could not run; it is tried again",
            err,
        )),
    }
}

/// The end of `backup.verify`: the result on the backup and in the metrics.
pub async fn on_finish(db: &MySqlPool, backup: &str, succeeded: bool) -> sqlx::Result<()> {
    if succeeded {
        sqlx::query(
            "UPDATE backups SET verified_at = NOW(6), verify_result = 'passed', verify_error = NULL \
             WHERE id = ?",
        )
        .bind(backup)
        .execute(db)
        .await?;
        DRILLS.with_label_values(&["passed"]).inc();
        return Ok(());
    }
    // The operation's public message (its failed step's): it names the object or table
    // at fault.
    let error: Option<String> = sqlx::query_scalar(
        "SELECT public_error FROM operations WHERE kind = 'backup.verify' \
         AND target_type = 'backup' AND target_id = ? ORDER BY created_at DESC, seq DESC LIMIT 1",
    )
    .bind(backup)
    .fetch_optional(db)
    .await?
    .flatten();
    sqlx::query(
        "UPDATE backups SET verified_at = NOW(6), verify_result = 'failed', \
         verify_error = LEFT(?, 1000) WHERE id = ?",
    )
    .bind(error.unwrap_or_else(|| "the drill failed".to_owned()))
    .bind(backup)
    .execute(db)
    .await?;
    DRILLS.with_label_values(&["failed"]).inc();
    Ok(())
}

/// One pass of the schedule: drills enqueued (none when another replica holds the lock).
pub async fn schedule_once(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &DrillsConfig,
) -> anyhow::Result<Vec<String>> {
    // A named lock on a connection of our own: one scheduler at a time across replicas.
    let mut lock = db.acquire().await?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('pressdock_drills', 0)")
        .fetch_one(&mut *lock)
        .await?;
    if got != Some(1) {
        return Ok(Vec::new());
    }
    let result = schedule_locked(db, provisioner, config).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('pressdock_drills')")
        .execute(&mut *lock)
        .await;
    result
}

async fn schedule_locked(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &DrillsConfig,
) -> anyhow::Result<Vec<String>> {
    let period_secs = i64::from(config.every_days.max(1)) * 86_400;
    // Each site's latest complete backup, for the sites none of whose backups was drilled
    // within the period and that have no drill under way; least recently drilled first.
    let due: Vec<(String, String)> = sqlx::query_as(
        "SELECT b.id, b.tenant_id FROM backups b \
         JOIN (SELECT site_id, MAX(seq) AS seq FROM backups WHERE state = 'complete' GROUP BY site_id) l \
           ON l.seq = b.seq \
         JOIN sites s ON s.id = b.site_id AND s.state NOT IN ('deleting', 'deleted') \
         LEFT JOIN (SELECT site_id, MAX(verified_at) AS at FROM backups GROUP BY site_id) v \
           ON v.site_id = b.site_id \
         WHERE (v.at IS NULL OR v.at < NOW(6) - INTERVAL ? SECOND) \
           AND NOT EXISTS (SELECT 1 FROM operations o JOIN backups ob ON ob.id = o.target_id \
             WHERE o.kind = 'backup.verify' AND o.target_type = 'backup' AND ob.site_id = b.site_id \
             AND o.state IN ('pending', 'running', 'unwinding')) \
         ORDER BY v.at IS NOT NULL, v.at, b.seq LIMIT ?",
    )
    .bind(period_secs)
    .bind(i64::from(config.max_per_pass.max(1)))
    .fetch_all(db)
    .await?;
    let mut enqueued = Vec::new();
    for (backup, tenant) in due {
        let mut tx = db.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM backups WHERE id = ? FOR UPDATE")
                .bind(&backup)
                .fetch_optional(&mut *tx)
                .await?;
        if state.as_deref() != Some("complete") {
            continue;
        }
        let op = backup_drills::enqueue(&mut tx, provisioner, None, &tenant, &backup)
            .await
            .map_err(|e| anyhow!("enqueuing a drill of {backup}: {e:?}"))?;
        tx.commit().await?;
        if op.is_some() {
            enqueued.push(backup);
        }
    }
    if !enqueued.is_empty() {
        tracing::info!(drills = enqueued.len(), "drills enqueued");
    }
    Ok(enqueued)
}
