//! The durable job runner and the saga framework.
//!
//! Each operation has one job row. A runner claims a job with
//! `SELECT … FOR UPDATE SKIP LOCKED` and writes a lease (owner and expiry) that it renews
//! while it works; a job whose lease has run out (its runner was killed) is claimed again
//! by any runner. Steps run in order, each recorded in `operation_steps`: a step is marked
//! `running` before its effect and `done` after, so a runner that takes over re-runs the
//! step that was interrupted. That is safe because every step is idempotent (`ensure`
//! semantics) and every undo treats "already gone" as success. Before each step the runner
//! checks that its lease is still its own, so two runners never run steps of one job at once.
//!
//! A retryable error retries the step with exponential backoff (the job is released with a
//! later `run_after`); a permanent error, or too many attempts, unwinds: the undo of every
//! step that ran, in reverse order, then the operation is `failed`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::{MySqlPool, Row};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::{config::JobsConfig, provision::Provisioner};

/// An error of a step.
#[derive(Debug)]
pub enum StepError {
    /// Worth trying again later (a backend is unreachable, a lock is taken).
    Retryable(anyhow::Error),
    /// Trying again will not help; the saga unwinds.
    Permanent(anyhow::Error),
    /// Not yet (a move waits for its turn or for its new task): run the step again after
    /// this long, without counting an attempt.
    Wait(Duration, String),
}

impl From<sqlx::Error> for StepError {
    fn from(err: sqlx::Error) -> Self {
        // A deadlock (1213) or a lock wait timeout (1205) says only that another
        // transaction got there first (moves and the node sync lock the same rows): run the
        // step again soon, without using up one of its attempts.
        let conflict = err
            .as_database_error()
            .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|e| matches!(e.number(), 1205 | 1213));
        if conflict {
            return Self::Wait(
                Duration::from_millis(500),
                format!("database: {err}; trying again"),
            );
        }
        Self::Retryable(anyhow::Error::new(err).context("database"))
    }
}

type StepResult = Result<(), StepError>;

/// Test-only fault injection, from `PRESSDOCK_FAILPOINTS`: `step=pause:MS` sleeps after the
/// step's effect and before it is recorded done (a window to kill the process in);
/// `step=fail` fails the step permanently; `step=retry:N` fails it retryably N times;
/// `step=twice` (or `*=twice`) runs the step's effect twice; `step=refuse` fails it before
/// its effect (`fail` fails it after).
#[derive(Debug, Default, Clone)]
pub struct Failpoints(HashMap<String, String>);

impl Failpoints {
    pub fn from_env() -> Self {
        let spec = std::env::var("PRESSDOCK_FAILPOINTS").unwrap_or_default();
        Self(
            spec.split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    fn get(&self, step: &str) -> Option<&str> {
        self.0.get(step).map(String::as_str)
    }
}

/// What a step runs against.
struct StepContext<'a> {
    db: &'a MySqlPool,
    provisioner: &'a Provisioner,
    kind: &'a str,
    target: &'a str,
}

async fn run_step(ctx: &StepContext<'_>, name: &str) -> StepResult {
    match name {
        "record_site" => ensure_site_recorded(ctx).await,
        "reserve_slot" => reserve_slot(ctx).await,
        "release_slot" => release_slot(ctx).await,
        "release_domains" => release_domains(ctx).await,
        // The site's state is set when the saga finishes (`on_finish`).
        "mark_suspended" | "mark_active" | "mark_updated" => Ok(()),
        "run_backup" => crate::backup::job::run_backup(ctx.db, ctx.provisioner, ctx.target).await,
        "remove_backup" => {
            crate::backup::job::remove_backup(ctx.db, ctx.provisioner, ctx.target).await
        }
        "await_turn" | "move_service" | "await_ready" | "finish_move" => {
            crate::moves::step(ctx.db, ctx.provisioner, name, ctx.target).await
        }
        other => match ctx
            .provisioner
            .run(ctx.db, ctx.kind, other, ctx.target)
            .await
        {
            Some(result) => result,
            None => Err(StepError::Permanent(anyhow::anyhow!(
                "unknown step {other}"
            ))),
        },
    }
}

async fn undo_step(ctx: &StepContext<'_>, name: &str) -> StepResult {
    // A create and a move unwind: delete, suspend, resume and update go forward only, and
    // their failure is left for an operator, with nothing taken back.
    if ctx.kind == "site.move" {
        return crate::moves::undo(ctx.db, ctx.provisioner, name, ctx.target).await;
    }
    if ctx.kind != "site.create" {
        return Ok(());
    }
    match name {
        "record_site" => release_domains(ctx).await,
        "reserve_slot" => release_slot(ctx).await,
        other => ctx
            .provisioner
            .undo(ctx.db, other, ctx.target)
            .await
            .unwrap_or(Ok(())),
    }
}

/// Called when a saga finished (`succeeded`) or unwound (`failed`).
///
/// With agents reporting, a created site is `active` only once its agent reported ready
/// (the report may come before or after this point; see `agent::report`).
async fn on_finish(
    db: &MySqlPool,
    kind: &str,
    target: &str,
    succeeded: bool,
    agents_report: bool,
) -> sqlx::Result<()> {
    if kind.starts_with("backup.") || kind == "site.backup" {
        return crate::backup::job::on_finish(db, kind, target, succeeded).await;
    }
    let state = match (kind, succeeded) {
        ("site.create", true) if agents_report => {
            let ready: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM agent_reports WHERE site_id = ? AND ready = 1")
                    .bind(target)
                    .fetch_optional(db)
                    .await?;
            if ready.is_some() {
                "active"
            } else {
                "provisioning"
            }
        }
        ("site.create", true) | ("site.resume", true) => "active",
        ("site.suspend", true) => "suspended",
        ("site.delete", true) => "deleted",
        // A site whose create or delete failed is not what it should be; a failed
        // suspend, resume or update leaves it as it was (the operation says why).
        ("site.create" | "site.delete", false) => "failed",
        _ => return Ok(()),
    };
    sqlx::query(
        "UPDATE sites SET state = ?, updated_at = NOW(6), \
         deleted_at = IF(? = 'deleted', NOW(6), deleted_at) WHERE id = ?",
    )
    .bind(state)
    .bind(state)
    .bind(target)
    .execute(db)
    .await?;
    crate::app::billing::record_site_state(&mut *db.acquire().await?, Some(target)).await?;
    Ok(())
}

async fn ensure_site_recorded(ctx: &StepContext<'_>) -> StepResult {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT s.state, (SELECT COUNT(*) FROM domains d WHERE d.site_id = s.id) FROM sites s WHERE s.id = ?",
    )
    .bind(ctx.target)
    .fetch_optional(ctx.db)
    .await?;
    match row {
        Some((state, domains)) if state == "provisioning" && domains > 0 => Ok(()),
        Some((state, _)) => Err(StepError::Permanent(anyhow::anyhow!(
            "site is {state}, not provisioning"
        ))),
        None => Err(StepError::Permanent(anyhow::anyhow!(
            "site {} is not recorded",
            ctx.target
        ))),
    }
}

/// Places the site on the active worker with the fewest of its tenant's sites, then the
/// most free slots. Worker rows are locked while choosing, so concurrent placements never
/// overfill a worker; the placement's primary key makes the step idempotent.
async fn reserve_slot(ctx: &StepContext<'_>) -> StepResult {
    let mut tx = ctx.db.begin().await?;
    // The active workers' rows first, before any plain read: they serialise reservations
    // (and moves onto them), and the reads below then see what the last holder committed.
    sqlx::query(
        "SELECT id FROM nodes WHERE role = 'worker' AND availability = 'active' FOR UPDATE",
    )
    .execute(&mut *tx)
    .await?;
    let placed: Option<String> =
        sqlx::query_scalar("SELECT node_id FROM placements WHERE site_id = ?")
            .bind(ctx.target)
            .fetch_optional(&mut *tx)
            .await?;
    if placed.is_some() {
        return Ok(());
    }
    let (tenant, slots): (String, i32) = sqlx::query_as(
        "SELECT s.tenant_id, p.slots FROM sites s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?",
    )
    .bind(ctx.target)
    .fetch_one(&mut *tx)
    .await?;
    let slots = u32::try_from(slots).unwrap_or(1).max(1);
    let chosen = crate::moves::place_new_site(
        &mut tx,
        &ctx.provisioner.placement,
        ctx.target,
        &tenant,
        slots,
    )
    .await
    .map_err(StepError::Retryable)?;
    let node = chosen.map_err(|reason| {
        StepError::Permanent(anyhow::anyhow!(
            "no worker can take the site ({reason}); add or activate a worker"
        ))
    })?;
    sqlx::query("INSERT INTO placements (site_id, node_id, slots) VALUES (?, ?, ?)")
        .bind(ctx.target)
        .bind(&node)
        .bind(slots)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn release_slot(ctx: &StepContext<'_>) -> StepResult {
    sqlx::query("DELETE FROM placements WHERE site_id = ?")
        .bind(ctx.target)
        .execute(ctx.db)
        .await?;
    Ok(())
}

async fn release_domains(ctx: &StepContext<'_>) -> StepResult {
    sqlx::query("DELETE FROM domains WHERE site_id = ?")
        .bind(ctx.target)
        .execute(ctx.db)
        .await?;
    Ok(())
}

/// One runner process's identity and settings.
pub struct Runner {
    db: MySqlPool,
    provisioner: Arc<Provisioner>,
    config: JobsConfig,
    owner: String,
    failpoints: Failpoints,
}

impl Runner {
    pub fn new(db: MySqlPool, provisioner: Arc<Provisioner>, config: JobsConfig) -> Arc<Self> {
        let owner = format!("{}-{}", std::process::id(), crate::domain::Id::generate());
        Arc::new(Self {
            db,
            provisioner,
            config,
            owner,
            failpoints: Failpoints::from_env(),
        })
    }

    /// Claims and runs jobs until `shutdown` turns true, up to `jobs.concurrency` sagas
    /// at once, each in its own task; then waits for the running ones to finish.
    ///
    /// One loop claims for the whole process: while a slot is free it claims again at
    /// once, so a burst of creates starts together instead of queueing behind a fixed
    /// number of loops (four loops made 20 concurrent creates wait ~28 s to be claimed,
    /// docs/benchmarks.md). Sagas share the backends' own turns (Gluster, Varnish); the
    /// limit keeps the sagas' statements within the database pool beside the API's. Each
    /// job is still held by its lease, so several processes may run this loop.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut running = JoinSet::new();
        tracing::info!(owner = %self.owner, concurrency = self.config.concurrency.max(1), "job runner started");
        loop {
            while running.try_join_next().is_some() {}
            if *shutdown.borrow() {
                break;
            }
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                // An error: the sender is gone, as good as a shutdown.
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
            };
            match self.claim().await {
                Ok(Some((job, operation))) => {
                    let runner = self.clone();
                    running.spawn(async move {
                        if let Err(err) = runner.execute(job, &operation).await {
                            tracing::warn!(job, operation = %operation, error = format!("{err:#}"), "job interrupted");
                        }
                        drop(permit);
                    });
                    // Another job may be waiting: claim again without sleeping.
                    continue;
                }
                Ok(None) => drop(permit),
                Err(err) => {
                    drop(permit);
                    tracing::warn!(error = format!("{err:#}"), "claiming a job failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_millis)) => {}
                // A job this process committed: claim it now, not at the next poll (the
                // poll's wait was most of a lone create's time in the queue).
                _ = self.provisioner.job_queued() => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        while running.join_next().await.is_some() {}
        tracing::info!(owner = %self.owner, "job runner stopped");
    }

    /// Takes one runnable job: queued, or running with an expired lease.
    async fn claim(&self) -> anyhow::Result<Option<(i64, String)>> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "SELECT id, operation_id FROM jobs WHERE state IN ('queued', 'running') \
             AND run_after <= NOW(6) AND (lease_expires_at IS NULL OR lease_expires_at < NOW(6)) \
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let job: i64 = row.try_get("id")?;
        sqlx::query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, \
             lease_expires_at = NOW(6) + INTERVAL ? SECOND, updated_at = NOW(6) WHERE id = ?",
        )
        .bind(&self.owner)
        .bind(self.config.lease_secs)
        .bind(job)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((job, row.try_get("operation_id")?)))
    }

    /// Extends the lease if it is still ours; false once another runner has taken the job.
    async fn renew(&self, job: i64) -> anyhow::Result<bool> {
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_expires_at = NOW(6) + INTERVAL ? SECOND \
             WHERE id = ? AND lease_owner = ? AND lease_expires_at >= NOW(6)",
        )
        .bind(self.config.lease_secs)
        .bind(job)
        .bind(&self.owner)
        .execute(&self.db)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Marks a step `running` and extends the lease, in one statement that does both or
    /// neither: false (nothing written) once another runner has taken the job. What
    /// [`Runner::renew`] then `set_step(…, "running", …)` did in two commits.
    async fn start_step(&self, job: i64, operation: &str, position: i32) -> anyhow::Result<bool> {
        let started = sqlx::query(
            "UPDATE jobs j JOIN operation_steps s ON s.operation_id = ? AND s.position = ? \
             SET j.lease_expires_at = NOW(6) + INTERVAL ? SECOND, \
             s.state = 'running', s.error = NULL, s.attempts = s.attempts + 1, \
             s.started_at = COALESCE(s.started_at, NOW(6)) \
             WHERE j.id = ? AND j.lease_owner = ? AND j.lease_expires_at >= NOW(6)",
        )
        .bind(operation)
        .bind(position)
        .bind(self.config.lease_secs)
        .bind(job)
        .bind(&self.owner)
        .execute(&self.db)
        .await?;
        Ok(started.rows_affected() > 0)
    }

    async fn execute(&self, job: i64, operation: &str) -> anyhow::Result<()> {
        // Renew the lease in the background while the saga runs.
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let renew_every = Duration::from_millis(self.config.lease_secs * 1000 / 3);
        let renewer = {
            let db = self.db.clone();
            let owner = self.owner.clone();
            let lease = self.config.lease_secs;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(renew_every) => {}
                        _ = stop_rx.changed() => break,
                    }
                    let _ = sqlx::query(
                        "UPDATE jobs SET lease_expires_at = NOW(6) + INTERVAL ? SECOND \
                         WHERE id = ? AND lease_owner = ? AND lease_expires_at >= NOW(6)",
                    )
                    .bind(lease)
                    .bind(job)
                    .bind(&owner)
                    .execute(&db)
                    .await;
                }
            })
        };
        let result = self.drive(job, operation).await;
        let _ = stop_tx.send(true);
        let _ = renewer.await;
        result
    }

    async fn drive(&self, job: i64, operation: &str) -> anyhow::Result<()> {
        let (kind, target, mut op_state): (String, String, String) =
            sqlx::query_as("SELECT kind, target_id, state FROM operations WHERE id = ?")
                .bind(operation)
                .fetch_one(&self.db)
                .await
                .context("loading the operation")?;
        let ctx = StepContext {
            db: &self.db,
            provisioner: &self.provisioner,
            kind: &kind,
            target: &target,
        };
        let steps: Vec<(i32, String, String, i32)> = sqlx::query_as(
            "SELECT position, name, state, attempts FROM operation_steps WHERE operation_id = ? ORDER BY position",
        )
        .bind(operation)
        .fetch_all(&self.db)
        .await?;
        if op_state == "pending" {
            self.set_operation(operation, "running", None).await?;
            op_state = "running".into();
        }
        if op_state == "running" {
            for (position, name, state, attempts) in &steps {
                if state == "done" {
                    continue;
                }
                if !self.start_step(job, operation, *position).await? {
                    anyhow::bail!("lease lost before step {name}");
                }
                tracing::info!(operation, step = %name, attempt = attempts + 1, "running step");
                let refused = self.failpoints.get(name) == Some("refuse");
                let mut result = if refused {
                    Err(StepError::Permanent(anyhow::anyhow!(
                        "failpoint: {name} refused before its effect"
                    )))
                } else {
                    run_step(&ctx, name).await
                };
                if result.is_ok()
                    && self.failpoints.get(name).or(self.failpoints.get("*")) == Some("twice")
                {
                    // Idempotency check: the step's effect applied again changes nothing.
                    result = run_step(&ctx, name).await;
                }
                if result.is_ok() {
                    result = self.failpoint(name, *attempts).await;
                }
                match result {
                    Ok(()) => {
                        self.set_step(operation, *position, "done", None, false)
                            .await?
                    }
                    Err(StepError::Wait(after, why)) => {
                        sqlx::query(
                            "UPDATE operation_steps SET state = 'waiting', error = ?, \
                             attempts = GREATEST(attempts - 1, 0) WHERE operation_id = ? AND position = ?",
                        )
                        .bind(&why)
                        .bind(operation)
                        .bind(position)
                        .execute(&self.db)
                        .await?;
                        sqlx::query(
                            "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL, \
                             run_after = NOW(6) + INTERVAL ? MICROSECOND WHERE id = ? AND lease_owner = ?",
                        )
                        .bind(i64::try_from(after.as_micros()).unwrap_or(i64::MAX))
                        .bind(job)
                        .bind(&self.owner)
                        .execute(&self.db)
                        .await?;
                        return Ok(());
                    }
                    Err(StepError::Retryable(err))
                        if (*attempts as u32) + 1 < self.config.max_attempts =>
                    {
                        let message = format!("{err:#}");
                        self.set_step(operation, *position, "retrying", Some(&message), false)
                            .await?;
                        let backoff = 1u64 << (*attempts).clamp(0, 6);
                        sqlx::query(
                            "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL, \
                             run_after = NOW(6) + INTERVAL ? SECOND, last_error = ? WHERE id = ? AND lease_owner = ?",
                        )
                        .bind(backoff)
                        .bind(&message)
                        .bind(job)
                        .bind(&self.owner)
                        .execute(&self.db)
                        .await?;
                        tracing::warn!(operation, step = %name, backoff_secs = backoff, error = %message, "step will retry");
                        return Ok(());
                    }
                    Err(StepError::Retryable(err) | StepError::Permanent(err)) => {
                        let message = format!("{err:#}");
                        tracing::warn!(operation, step = %name, error = %message, "step failed; unwinding");
                        self.set_step(operation, *position, "failed", Some(&message), false)
                            .await?;
                        self.set_operation(operation, "unwinding", Some(&message))
                            .await?;
                        op_state = "unwinding".into();
                        break;
                    }
                }
            }
        }
        if op_state == "running" {
            on_finish(
                &self.db,
                &kind,
                &target,
                true,
                self.provisioner.agents_report(),
            )
            .await?;
            self.set_operation(operation, "succeeded", None).await?;
            self.finish_job(job, "done").await?;
            tracing::info!(operation, kind = %kind, "operation succeeded");
            return Ok(());
        }
        if op_state == "unwinding" {
            let steps: Vec<(i32, String, String)> = sqlx::query_as(
                "SELECT position, name, state FROM operation_steps WHERE operation_id = ? \
                 AND state IN ('done', 'failed', 'running', 'retrying', 'undoing') ORDER BY position DESC",
            )
            .bind(operation)
            .fetch_all(&self.db)
            .await?;
            for (position, name, _) in &steps {
                if !self.renew(job).await? {
                    anyhow::bail!("lease lost before undoing {name}");
                }
                self.set_step(operation, *position, "undoing", None, false)
                    .await?;
                if let Err(StepError::Retryable(err) | StepError::Permanent(err)) =
                    undo_step(&ctx, name).await
                {
                    // An undo must finish; release the job and try again later.
                    let message = format!("{err:#}");
                    sqlx::query(
                        "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL, \
                         run_after = NOW(6) + INTERVAL 5 SECOND, last_error = ? WHERE id = ? AND lease_owner = ?",
                    )
                    .bind(&message)
                    .bind(job)
                    .bind(&self.owner)
                    .execute(&self.db)
                    .await?;
                    return Ok(());
                }
                self.set_step(operation, *position, "undone", None, false)
                    .await?;
            }
            on_finish(
                &self.db,
                &kind,
                &target,
                false,
                self.provisioner.agents_report(),
            )
            .await?;
            sqlx::query("UPDATE operations SET state = 'failed', finished_at = NOW(6), updated_at = NOW(6) WHERE id = ?")
                .bind(operation)
                .execute(&self.db)
                .await?;
            self.finish_job(job, "failed").await?;
            tracing::info!(operation, kind = %kind, "operation failed and unwound");
        }
        Ok(())
    }

    async fn failpoint(&self, step: &str, attempts: i32) -> StepResult {
        match self.failpoints.get(step) {
            Some(spec) if spec.starts_with("pause:") => {
                let millis = spec.trim_start_matches("pause:").parse().unwrap_or(1000);
                tracing::warn!(step, millis, "failpoint: pausing after the step's effect");
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(())
            }
            Some("fail") => Err(StepError::Permanent(anyhow::anyhow!(
                "failpoint: {step} fails"
            ))),
            Some(spec) if spec.starts_with("retry:") => {
                let times: i32 = spec.trim_start_matches("retry:").parse().unwrap_or(1);
                if attempts < times {
                    Err(StepError::Retryable(anyhow::anyhow!(
                        "failpoint: {step} fails retryably"
                    )))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    async fn set_operation(
        &self,
        operation: &str,
        state: &str,
        error: Option<&str>,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE operations SET state = ?, error = COALESCE(?, error), updated_at = NOW(6), \
             finished_at = IF(? IN ('succeeded', 'failed'), NOW(6), finished_at) WHERE id = ?",
        )
        .bind(state)
        .bind(error)
        .bind(state)
        .bind(operation)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    async fn set_step(
        &self,
        operation: &str,
        position: i32,
        state: &str,
        error: Option<&str>,
        starting: bool,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE operation_steps SET state = ?, error = ?, \
             attempts = attempts + IF(?, 1, 0), \
             started_at = IF(?, COALESCE(started_at, NOW(6)), started_at), \
             finished_at = IF(? IN ('done', 'failed', 'undone'), NOW(6), finished_at) \
             WHERE operation_id = ? AND position = ?",
        )
        .bind(state)
        .bind(error)
        .bind(starting)
        .bind(starting)
        .bind(state)
        .bind(operation)
        .bind(position)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    async fn finish_job(&self, job: i64, state: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(6) \
             WHERE id = ? AND lease_owner = ?",
        )
        .bind(state)
        .bind(job)
        .bind(&self.owner)
        .execute(&self.db)
        .await?;
        Ok(())
    }
}
