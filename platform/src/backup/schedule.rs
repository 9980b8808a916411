//! Scheduled backups and pruning: one loop inside `serve`, acting in one platform replica
//! at a time (a MariaDB named lock, `pressdock_backups.<database>`, taken per pass on a connection of
//! its own, as the spares and placement loops do).
//!
//! **Scheduling.** A plan's backup policy (`backup_policies`, set by staff with
//! `PUT /v1/plans/{plan}/backup-policy`) says when its sites are backed up: every N hours
//! (slots aligned on multiples of N hours since 1970-01-01 00:00 UTC, so every 6 hours is
//! 00:00, 06:00, 12:00, 18:00 UTC) or daily at a UTC time. A pass looks at the **latest**
//! slot at or before now only: a site that has no scheduled backup for that slot gets one,
//! as a `site.backup` operation of the job runner (the same saga as an on-demand backup).
//! A platform down for three days therefore takes one backup per site when it is back,
//! not one per missed slot. The slot is recorded on the backup (`scheduled_for`, unique
//! per site), so a slot is taken once even if two replicas ever raced; a scheduled backup
//! that failed is not retried before the next slot (its operation already retried its
//! step). A site created after the latest slot waits for the next one. At most
//! `[backups] max_running` scheduled backups run at once platform-wide; the others start
//! at a later pass, the sites that waited longest first. A site being restored (or with a
//! backup already under way) is skipped until the restore ends.
//!
//! **Pruning.** A backup expires when:
//! - it is `scheduled` and `complete`, and either beyond the policy's `keep_count` newest
//!   scheduled backups of its site or completed more than `keep_days` ago (the site's
//!   current plan's policy; no policy: kept);
//! - its site was deleted more than `[backups] final_retention_days` ago (the final
//!   backup taken by the delete and every older backup of the site);
//! - it is `pre_restore` and its restore ended more than
//!   `[backups] pre_restore_retention_days` ago (until then the restore can be undone);
//! - it `failed` more than `[backups] failed_retention_days` ago (it holds no object; the
//!   delete clears any upload it journaled).
//!
//! Never pruned, whatever the rules say: the newest complete backup of a site that is not
//! deleted; a backup a restore or clone under way reads, or that is the pre-restore backup
//! of a restore under way; a backup not `complete` or `failed` (one running or already
//! being deleted). Manual backups are kept until their tenant deletes them (or their site
//! was deleted for longer than the final retention).
//!
//! An expired backup is deleted by the `backup.delete` operation (its S3 objects and any
//! unfinished upload), which ends it `deleted`; the rows of deleted backups are removed a
//! day later.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use serde_json::json;
use sqlx::{MySqlConnection, MySqlPool};
use tokio::sync::watch;

use crate::{
    app::{operations, plans::Schedule},
    audit::{self, Event},
    config::BackupsConfig,
    domain::Id,
    provision::Backends,
    state::RunnerWake,
    states::OperationKind,
};

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Scheduled backups started (their ids).
    pub started: Vec<String>,
    /// Sites due whose backup waits for a later pass (`max_running` reached).
    pub deferred: usize,
    /// Sites due that were skipped for now (a restore or a backup of theirs under way).
    pub busy: usize,
    /// Backups whose delete was started by the pruner (their ids).
    pub pruned: Vec<String>,
    /// Rows of deleted backups removed.
    pub rows_removed: u64,
}

/// The lock's name: one scheduler acts at a time across replicas.
const LOCK: &str = "pressdock_backups.";

/// Backups the pruner starts deleting per pass, at most (the rest: next pass).
const MAX_PRUNED_PER_PASS: usize = 200;

/// How long the row of a deleted backup stays (then it is removed).
const DELETED_ROWS_KEPT_HOURS: i64 = 24;

/// One pass at `now`: schedule, then prune. `None` when another replica holds the lock.
pub async fn pass(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &BackupsConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<PassReport>> {
    let mut lock = db.acquire().await?;
    // Named locks are server-wide: the control-plane database's name is part of it, so
    // two platforms (or tests) on one server do not take turns with each other.
    let got: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(LEFT(CONCAT(?, DATABASE()), 64), 0)")
            .bind(LOCK)
            .fetch_one(&mut *lock)
            .await?;
    if got != Some(1) {
        return Ok(None);
    }
    let mut report = PassReport::default();
    let result = async {
        schedule(db, provisioner, config, now, &mut report).await?;
        prune(db, provisioner, config, now, &mut report).await
    }
    .await;
    let _ = sqlx::query("DO RELEASE_LOCK(LEFT(CONCAT(?, DATABASE()), 64))")
        .bind(LOCK)
        .execute(&mut *lock)
        .await;
    result?;
    Ok(Some(report))
}

/// Runs [`pass`] every `[backups] interval_secs` until `shutdown`, waking this process's
/// runner after a pass that enqueued operations.
pub async fn run_periodically(
    db: MySqlPool,
    provisioner: std::sync::Arc<Backends>,
    config: BackupsConfig,
    runner: RunnerWake,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_secs(config.interval_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let report = pass(&db, &provisioner, &config, Utc::now()).await;
        if let Ok(Some(r)) = &report
            && (!r.started.is_empty() || !r.pruned.is_empty())
        {
            runner.wake();
        }
        match report {
            Ok(Some(r)) if !r.started.is_empty() || !r.pruned.is_empty() || r.deferred > 0 => {
                tracing::info!(
                    started = r.started.len(),
                    deferred = r.deferred,
                    busy = r.busy,
                    pruned = r.pruned.len(),
                    rows_removed = r.rows_removed,
                    "backup scheduler pass"
                );
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "backup scheduler pass failed");
            }
        }
    }
}

/// A site whose plan has a schedule.
#[derive(sqlx::FromRow)]
struct Candidate {
    id: String,
    created_at: DateTime<Utc>,
    every_hours: Option<i32>,
    daily_at_minute: Option<i32>,
    last_scheduled: Option<DateTime<Utc>>,
}

async fn schedule(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &BackupsConfig,
    now: DateTime<Utc>,
    report: &mut PassReport,
) -> anyhow::Result<()> {
    let candidates: Vec<Candidate> = sqlx::query_as(
        "SELECT s.id, s.created_at, p.every_hours, p.daily_at_minute, \
         (SELECT MAX(b.scheduled_for) FROM backups b WHERE b.site_id = s.id) AS last_scheduled \
         FROM sites s JOIN backup_policies p ON p.plan_id = s.plan_id \
         WHERE p.enabled = 1 AND s.state IN ('active', 'degraded', 'suspended')",
    )
    .fetch_all(db)
    .await?;
    let mut due: Vec<(Candidate, DateTime<Utc>)> = candidates
        .into_iter()
        .filter_map(|c| {
            let slot = Schedule::from_columns(c.every_hours, c.daily_at_minute)?.last_slot(now);
            let taken = c.last_scheduled.is_some_and(|last| last >= slot);
            (!taken && c.created_at <= slot).then_some((c, slot))
        })
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    // The sites that waited longest first (never backed up by the scheduler: first of all).
    due.sort_by(|a, b| {
        a.0.last_scheduled
            .cmp(&b.0.last_scheduled)
            .then(a.0.id.cmp(&b.0.id))
    });
    let running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE kind = 'scheduled' AND state IN ('pending', 'running')",
    )
    .fetch_one(db)
    .await?;
    let mut room = i64::from(config.max_running) - running;
    for (site, slot) in due {
        if room <= 0 {
            report.deferred += 1;
            continue;
        }
        match start_scheduled(db, provisioner, &site.id, slot).await? {
            Some(id) => {
                report.started.push(id);
                room -= 1;
            }
            None => report.busy += 1,
        }
    }
    Ok(())
}

/// Records a scheduled backup of `site` for `slot` and enqueues its operation; `None`
/// when the site cannot be backed up now (a restore or a backup under way, its state).
async fn start_scheduled(
    db: &MySqlPool,
    provisioner: &Backends,
    site: &str,
    slot: DateTime<Utc>,
) -> anyhow::Result<Option<String>> {
    let mut tx = db.begin().await?;
    // The site's row, locked as the API's create locks it: one backup at a time.
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT tenant_id, state, plan_id FROM sites WHERE id = ? FOR UPDATE")
            .bind(site)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((tenant, state, plan)) = row else {
        return Ok(None);
    };
    if !matches!(state.as_str(), "active" | "degraded" | "suspended") || busy(&mut tx, site).await?
    {
        return Ok(None);
    }
    let id = Id::generate();
    let inserted = sqlx::query(
        "INSERT INTO backups (id, tenant_id, site_id, kind, state, plan_id, scheduled_for) \
         VALUES (?, ?, ?, 'scheduled', 'pending', ?, ?)",
    )
    .bind(id.as_str())
    .bind(&tenant)
    .bind(site)
    .bind(&plan)
    .bind(slot.naive_utc())
    .execute(&mut *tx)
    .await;
    match inserted {
        // The slot was taken meanwhile (another scheduler): nothing to do.
        Err(err) if crate::app::is_duplicate(&err) => return Ok(None),
        other => {
            other?;
        }
    }
    let op = operations::enqueue(
        &mut tx,
        provisioner,
        None,
        OperationKind::SiteBackup,
        Some(&tenant),
        "backup",
        id.as_str(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("enqueueing a scheduled backup: {e:?}"))?;
    sqlx::query("UPDATE backups SET operation_id = ? WHERE id = ?")
        .bind(op.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        None,
        Event {
            action: "backup.schedule",
            tenant_id: Some(&tenant),
            target_type: "backup",
            target_id: id.as_str(),
            details: json!({ "site": site, "operation": op, "slot": slot }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(id.as_str().to_owned()))
}

/// A backup of the site, or a restore of it, under way.
async fn busy(conn: &mut MySqlConnection, site: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM backups WHERE site_id = ? AND state IN ('pending', 'running')) \
         + (SELECT COUNT(*) FROM operations WHERE target_type = 'site' AND target_id = ? \
            AND kind IN ('site.restore', 'site.undelete') AND state IN ('pending', 'running', 'unwinding'))",
    )
    .bind(site)
    .bind(site)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// A complete scheduled backup: id, site, completion, the policy's `keep_count` and
/// `keep_days`.
type ScheduledRow = (String, String, DateTime<Utc>, Option<i32>, Option<i32>);

/// The backups that expire at `now` by the rules of the module's documentation, before
/// the protections (newest complete, in use) are applied.
async fn expired(
    db: &MySqlPool,
    config: &BackupsConfig,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<String>> {
    let now = now.naive_utc();
    let mut ids: Vec<String> = Vec::new();
    // Scheduled backups beyond the policy's count or age.
    let scheduled: Vec<ScheduledRow> = sqlx::query_as(
        "SELECT b.id, b.site_id, b.completed_at, p.keep_count, p.keep_days FROM backups b \
         JOIN sites s ON s.id = b.site_id JOIN backup_policies p ON p.plan_id = s.plan_id \
         WHERE b.kind = 'scheduled' AND b.state = 'complete' AND s.state <> 'deleted' \
         ORDER BY b.site_id, b.completed_at DESC, b.seq DESC",
    )
    .fetch_all(db)
    .await?;
    let mut rank = 0i64;
    let mut current_site = String::new();
    for (id, site, completed, keep_count, keep_days) in scheduled {
        if site != current_site {
            current_site = site;
            rank = 0;
        }
        rank += 1;
        let over_count = keep_count.is_some_and(|k| rank > i64::from(k));
        let too_old =
            keep_days.is_some_and(|d| completed.naive_utc() < now - TimeDelta::days(i64::from(d)));
        if over_count || too_old {
            ids.push(id);
        }
    }
    // Every backup of a site deleted longer ago than the final retention.
    let gone: Vec<String> = sqlx::query_scalar(
        "SELECT b.id FROM backups b JOIN sites s ON s.id = b.site_id \
         WHERE s.state = 'deleted' AND COALESCE(s.deleted_at, s.updated_at) < ? \
         AND b.state IN ('complete', 'failed')",
    )
    .bind(now - TimeDelta::days(i64::from(config.final_retention_days)))
    .fetch_all(db)
    .await?;
    ids.extend(gone);
    // Pre-restore backups of restores that ended long enough ago.
    let pre: Vec<String> = sqlx::query_scalar(
        "SELECT b.id FROM backups b JOIN restores r ON r.pre_restore_backup_id = b.id \
         WHERE b.kind = 'pre_restore' AND b.state = 'complete' \
         AND r.state IN ('complete', 'failed') AND r.finished_at < ?",
    )
    .bind(now - TimeDelta::days(i64::from(config.pre_restore_retention_days)))
    .fetch_all(db)
    .await?;
    ids.extend(pre);
    // Failed backups (no object; a journaled upload is aborted by the delete).
    let failed: Vec<String> =
        sqlx::query_scalar("SELECT id FROM backups WHERE state = 'failed' AND created_at < ?")
            .bind(now - TimeDelta::days(i64::from(config.failed_retention_days)))
            .fetch_all(db)
            .await?;
    ids.extend(failed);
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Why `backup` must be kept whatever the rules say, if it must (read under the backup's
/// row lock, in the transaction that would start its delete).
async fn protected(conn: &mut MySqlConnection, backup: &str) -> sqlx::Result<Option<&'static str>> {
    let in_use: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM restores WHERE state IN ('pending', 'running') \
         AND (backup_id = ? OR pre_restore_backup_id = ?)",
    )
    .bind(backup)
    .bind(backup)
    .fetch_one(&mut *conn)
    .await?;
    if in_use > 0 {
        return Ok(Some("a restore under way reads it"));
    }
    let newest: Option<String> = sqlx::query_scalar(
        "SELECT n.id FROM backups b JOIN sites s ON s.id = b.site_id \
         JOIN backups n ON n.site_id = b.site_id AND n.state = 'complete' \
         WHERE b.id = ? AND s.state <> 'deleted' \
         ORDER BY n.completed_at DESC, n.seq DESC LIMIT 1",
    )
    .bind(backup)
    .fetch_optional(&mut *conn)
    .await?;
    if newest.as_deref() == Some(backup) {
        return Ok(Some("the newest complete backup of its site"));
    }
    Ok(None)
}

async fn prune(
    db: &MySqlPool,
    provisioner: &Backends,
    config: &BackupsConfig,
    now: DateTime<Utc>,
    report: &mut PassReport,
) -> anyhow::Result<()> {
    if provisioner.config.s3.is_some() {
        for backup in expired(db, config, now).await? {
            if report.pruned.len() >= MAX_PRUNED_PER_PASS {
                break;
            }
            if start_delete(db, provisioner, &backup).await? {
                report.pruned.push(backup);
            }
        }
    }
    let removed = sqlx::query("DELETE FROM backups WHERE state = 'deleted' AND deleted_at < ?")
        .bind(now.naive_utc() - TimeDelta::hours(DELETED_ROWS_KEPT_HOURS))
        .execute(db)
        .await?;
    report.rows_removed = removed.rows_affected();
    Ok(())
}

/// Starts the delete of an expired backup (`backup.delete`, as `DELETE /v1/backups/{id}`
/// does); `false` when it is protected or no longer complete or failed.
async fn start_delete(
    db: &MySqlPool,
    provisioner: &Backends,
    backup: &str,
) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT state, tenant_id, site_id, kind FROM backups WHERE id = ? FOR UPDATE",
    )
    .bind(backup)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, tenant, site, kind)) = row else {
        return Ok(false);
    };
    if !matches!(state.as_str(), "complete" | "failed") {
        return Ok(false);
    }
    if let Some(why) = protected(&mut tx, backup).await? {
        tracing::debug!(backup, why, "expired backup kept");
        return Ok(false);
    }
    sqlx::query("UPDATE backups SET state = 'deleting' WHERE id = ?")
        .bind(backup)
        .execute(&mut *tx)
        .await?;
    let op = operations::enqueue(
        &mut tx,
        provisioner,
        None,
        OperationKind::BackupDelete,
        Some(&tenant),
        "backup",
        backup,
    )
    .await
    .map_err(|e| anyhow::anyhow!("enqueueing a backup's delete: {e:?}"))?;
    audit::record(
        &mut tx,
        None,
        Event {
            action: "backup.prune",
            tenant_id: Some(&tenant),
            target_type: "backup",
            target_id: backup,
            details: json!({ "site": site, "kind": kind, "was": state, "operation": op }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
