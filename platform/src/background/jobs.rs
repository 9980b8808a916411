//! The durable job runner: it runs the sagas of `crate::sagas`, and knows leases,
//! retries, failpoints and unwinding, nothing about what a saga changes.
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

use crate::{
    config::JobsConfig,
    provision::Backends,
    sagas::{self, Outcome, SagaSettings, StepContext, StepError, StepResult, Undo},
    state::RunnerWake,
    states::{OperationKind, OperationState, StepState},
};

/// A message for an operation's or a step's readers: the public text (tenants) and the
/// internal one with the whole chain (staff, logs).
struct Message {
    public: String,
    internal: String,
}

impl Message {
    fn of(err: &StepError) -> Self {
        // Our own wording, but a reason inside it may be long: the column holds 500.
        Self {
            public: err.public_message().chars().take(500).collect(),
            internal: err.internal_message(),
        }
    }
}

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

/// One runner process's identity and settings.
pub struct Runner {
    db: MySqlPool,
    backends: Arc<Backends>,
    /// What the sagas are configured with besides the drivers.
    settings: Arc<SagaSettings>,
    config: JobsConfig,
    /// Rung by this process's commits of jobs.
    wake: RunnerWake,
    owner: String,
    failpoints: Failpoints,
}

impl Runner {
    pub fn new(
        db: MySqlPool,
        backends: Arc<Backends>,
        settings: SagaSettings,
        config: JobsConfig,
        wake: RunnerWake,
    ) -> Arc<Self> {
        let owner = format!("{}-{}", std::process::id(), crate::domain::Id::generate());
        Arc::new(Self {
            db,
            backends,
            settings: Arc::new(settings),
            config,
            wake,
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
            // Every free slot, so that one claim takes a burst of jobs (one transaction
            // for all of them, where it was one each: 20 creates waited for 20 claims).
            let mut permits = vec![permit];
            while let Ok(more) = slots.clone().try_acquire_owned() {
                permits.push(more);
            }
            match self.claim(permits.len()).await {
                Ok(claimed) if !claimed.is_empty() => {
                    let full = claimed.len() == permits.len();
                    for ((job, operation), permit) in claimed.into_iter().zip(permits) {
                        let runner = self.clone();
                        running.spawn(async move {
                            if let Err(err) = runner.execute(job, &operation).await {
                                tracing::warn!(job, operation = %operation, error = format!("{err:#}"), "job interrupted");
                            }
                            drop(permit);
                        });
                    }
                    // Every slot was used: another job may be waiting; claim again
                    // without sleeping (unused permits went back with `zip`'s rest).
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "claiming a job failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_millis)) => {}
                // A job this process committed: claim it now, not at the next poll (the
                // poll's wait was most of a lone create's time in the queue).
                _ = self.wake.woken() => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        while running.join_next().await.is_some() {}
        tracing::info!(owner = %self.owner, "job runner stopped");
    }

    /// Takes up to `limit` runnable jobs (queued, or running with an expired lease), oldest
    /// first, in one transaction: the rows are locked (others' claims skip them), leased
    /// to this runner by one `UPDATE`, and committed together.
    async fn claim(&self, limit: usize) -> anyhow::Result<Vec<(i64, String)>> {
        let mut tx = self.db.begin().await?;
        let rows = sqlx::query(
            "SELECT id, operation_id FROM jobs WHERE state IN ('queued', 'running') \
             AND run_after <= NOW(6) AND (lease_expires_at IS NULL OR lease_expires_at < NOW(6)) \
             ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(u32::try_from(limit.max(1)).unwrap_or(u32::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((row.try_get::<i64, _>("id")?, row.try_get("operation_id")?));
        }
        let mut update = sqlx::QueryBuilder::new(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ",
        );
        update
            .push_bind(&self.owner)
            .push(", lease_expires_at = NOW(6) + INTERVAL ")
            .push_bind(self.config.lease_secs)
            .push(" SECOND, updated_at = NOW(6) WHERE id IN (");
        let mut ids = update.separated(", ");
        for (job, _) in &claimed {
            ids.push_bind(*job);
        }
        update.push(")");
        update.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(claimed)
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
             s.state = 'running', s.error = NULL, s.public_error = NULL, s.attempts = s.attempts + 1, \
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

    /// Marks the step at `done` done and the one at `next` running, and extends the
    /// lease, in one statement: both or neither (false, nothing written, once another
    /// runner has taken the job: it runs the step at `done` again, which is idempotent).
    /// What `set_step(done)` then [`Runner::start_step`] did in two commits.
    async fn advance_step(
        &self,
        job: i64,
        operation: &str,
        done: i32,
        next: i32,
    ) -> anyhow::Result<bool> {
        let advanced = sqlx::query(
            "UPDATE jobs j JOIN operation_steps s ON s.operation_id = ? AND s.position IN (?, ?) \
             SET j.lease_expires_at = NOW(6) + INTERVAL ? SECOND, \
             s.state = IF(s.position = ?, 'done', 'running'), s.error = NULL, s.public_error = NULL, \
             s.attempts = IF(s.position = ?, s.attempts + 1, s.attempts), \
             s.started_at = IF(s.position = ?, COALESCE(s.started_at, NOW(6)), s.started_at), \
             s.finished_at = IF(s.position = ?, NOW(6), s.finished_at) \
             WHERE j.id = ? AND j.lease_owner = ? AND j.lease_expires_at >= NOW(6)",
        )
        .bind(operation)
        .bind(done)
        .bind(next)
        .bind(self.config.lease_secs)
        .bind(done)
        .bind(next)
        .bind(next)
        .bind(done)
        .bind(job)
        .bind(&self.owner)
        .execute(&self.db)
        .await?;
        Ok(advanced.rows_affected() > 0)
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
        let (kind, target, mut op_state): (String, String, OperationState) =
            sqlx::query_as("SELECT kind, target_id, state FROM operations WHERE id = ?")
                .bind(operation)
                .fetch_one(&self.db)
                .await
                .context("loading the operation")?;
        let Some(kind) = OperationKind::parse(&kind) else {
            // Written by a newer release: leave it to a runner that knows it.
            anyhow::bail!("unknown operation kind {kind}");
        };
        let saga = sagas::saga(kind);
        let ctx = StepContext {
            db: self.db.clone(),
            backends: self.backends.clone(),
            settings: self.settings.clone(),
            target,
        };
        let steps: Vec<(i32, String, StepState, i32)> = sqlx::query_as(
            "SELECT position, name, state, attempts FROM operation_steps WHERE operation_id = ? ORDER BY position",
        )
        .bind(operation)
        .fetch_all(&self.db)
        .await?;
        if op_state == OperationState::Pending {
            self.set_operation(operation, OperationState::Running, None)
                .await?;
            op_state = OperationState::Running;
        }
        if op_state == OperationState::Running {
            let pending: Vec<_> = steps
                .iter()
                .filter(|(_, _, state, _)| *state != StepState::Done)
                .collect();
            // The step marked `running` by the previous step's `done` (one statement).
            let mut started = false;
            for (i, (position, name, _, attempts)) in pending.iter().enumerate() {
                if !std::mem::take(&mut started)
                    && !self.start_step(job, operation, *position).await?
                {
                    anyhow::bail!("lease lost before step {name}");
                }
                tracing::info!(operation, step = %name, attempt = attempts + 1, "running step");
                let step = saga.step(name);
                let run = || async {
                    match step {
                        Some(step) => (step.action)(&ctx).await,
                        None => Err(StepError::internal(anyhow::anyhow!(
                            "{kind} has no step {name}"
                        ))),
                    }
                };
                let refused = self.failpoints.get(name) == Some("refuse");
                let mut result = if refused {
                    Err(StepError::permanent(
                        format!("failpoint: {name} refused before its effect"),
                        anyhow::anyhow!("injected by PRESSDOCK_FAILPOINTS"),
                    ))
                } else {
                    run().await
                };
                if result.is_ok()
                    && self.failpoints.get(name).or(self.failpoints.get("*")) == Some("twice")
                {
                    // Idempotency check: the step's effect applied again changes nothing.
                    result = run().await;
                }
                if result.is_ok() {
                    result = self.failpoint(name, *attempts).await;
                }
                match result {
                    Ok(()) => match pending.get(i + 1) {
                        // This step's `done` and the next one's start in one commit.
                        Some((next, next_name, _, _)) => {
                            if !self.advance_step(job, operation, *position, *next).await? {
                                anyhow::bail!("lease lost before step {next_name}");
                            }
                            started = true;
                        }
                        None => {
                            self.set_step(operation, *position, StepState::Done, None)
                                .await?
                        }
                    },
                    Err(err @ StepError::Wait(after, _)) => {
                        let message = Message::of(&err);
                        sqlx::query(
                            "UPDATE operation_steps SET state = ?, error = ?, public_error = ?, \
                             attempts = GREATEST(attempts - 1, 0) WHERE operation_id = ? AND position = ?",
                        )
                        .bind(StepState::Waiting)
                        .bind(&message.internal)
                        .bind(&message.public)
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
                    Err(err @ StepError::Retryable(_))
                        if (*attempts as u32) + 1 < self.config.max_attempts =>
                    {
                        let message = Message::of(&err);
                        self.set_step(operation, *position, StepState::Retrying, Some(&message))
                            .await?;
                        let backoff = 1u64 << (*attempts).clamp(0, 6);
                        sqlx::query(
                            "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL, \
                             run_after = NOW(6) + INTERVAL ? SECOND, last_error = ? WHERE id = ? AND lease_owner = ?",
                        )
                        .bind(backoff)
                        .bind(&message.internal)
                        .bind(job)
                        .bind(&self.owner)
                        .execute(&self.db)
                        .await?;
                        tracing::warn!(operation, step = %name, backoff_secs = backoff, error = %message.internal, "step will retry");
                        return Ok(());
                    }
                    Err(err) => {
                        let message = Message::of(&err);
                        tracing::warn!(operation, step = %name, error = %message.internal, "step failed; unwinding");
                        self.set_step(operation, *position, StepState::Failed, Some(&message))
                            .await?;
                        self.set_operation(operation, OperationState::Unwinding, Some(&message))
                            .await?;
                        op_state = OperationState::Unwinding;
                        break;
                    }
                }
            }
        }
        if op_state == OperationState::Running {
            finished(saga, &ctx, Outcome::Succeeded).await?;
            self.set_operation(operation, OperationState::Succeeded, None)
                .await?;
            self.finish_job(job, "done").await?;
            tracing::info!(operation, kind = %kind, "operation succeeded");
            return Ok(());
        }
        if op_state == OperationState::Unwinding {
            let steps: Vec<(i32, String)> = sqlx::query_as(
                "SELECT position, name FROM operation_steps WHERE operation_id = ? \
                 AND state IN (?, ?, ?, ?, ?) ORDER BY position DESC",
            )
            .bind(operation)
            .bind(StepState::Done)
            .bind(StepState::Failed)
            .bind(StepState::Running)
            .bind(StepState::Retrying)
            .bind(StepState::Undoing)
            .fetch_all(&self.db)
            .await?;
            for (position, name) in &steps {
                if !self.renew(job).await? {
                    anyhow::bail!("lease lost before undoing {name}");
                }
                self.set_step(operation, *position, StepState::Undoing, None)
                    .await?;
                let undone = match saga.step(name).map(|s| &s.undo) {
                    Some(Undo::Reverse(undo)) => undo(&ctx).await,
                    // Nothing to take back (or a step this release does not know).
                    Some(Undo::Nothing(_)) | None => Ok(()),
                };
                if let Err(err @ (StepError::Retryable(_) | StepError::Permanent(_))) = undone {
                    // An undo must finish; release the job and try again later.
                    let message = Message::of(&err);
                    tracing::warn!(operation, step = %name, error = %message.internal, "undo failed; will try again");
                    sqlx::query(
                        "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL, \
                         run_after = NOW(6) + INTERVAL 5 SECOND, last_error = ? WHERE id = ? AND lease_owner = ?",
                    )
                    .bind(&message.internal)
                    .bind(job)
                    .bind(&self.owner)
                    .execute(&self.db)
                    .await?;
                    return Ok(());
                }
                self.set_step(operation, *position, StepState::Undone, None)
                    .await?;
            }
            finished(saga, &ctx, Outcome::Failed).await?;
            self.set_operation(operation, OperationState::Failed, None)
                .await?;
            self.finish_job(job, "failed").await?;
            tracing::info!(operation, kind = %kind, "operation failed and unwound");
        }
        Ok(())
    }

    async fn failpoint(&self, step: &str, attempts: i32) -> StepResult {
        let injected = || anyhow::anyhow!("injected by PRESSDOCK_FAILPOINTS");
        match self.failpoints.get(step) {
            Some(spec) if spec.starts_with("pause:") => {
                let millis = spec.trim_start_matches("pause:").parse().unwrap_or(1000);
                tracing::warn!(step, millis, "failpoint: pausing after the step's effect");
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(())
            }
            Some("fail") => Err(StepError::permanent(
                format!("failpoint: {step} fails"),
                injected(),
            )),
            Some(spec) if spec.starts_with("retry:") => {
                let times: i32 = spec.trim_start_matches("retry:").parse().unwrap_or(1);
                if attempts < times {
                    Err(StepError::retryable(
                        format!("failpoint: {step} fails retryably"),
                        injected(),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Sets the operation's state; `message` (a failure's) replaces none kept before.
    async fn set_operation(
        &self,
        operation: &str,
        state: OperationState,
        message: Option<&Message>,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE operations SET state = ?, error = COALESCE(?, error), \
             public_error = COALESCE(?, public_error), updated_at = NOW(6), \
             finished_at = IF(? IN ('succeeded', 'failed'), NOW(6), finished_at) WHERE id = ?",
        )
        .bind(state)
        .bind(message.map(|m| m.internal.as_str()))
        .bind(message.map(|m| m.public.as_str()))
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
        state: StepState,
        message: Option<&Message>,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE operation_steps SET state = ?, error = ?, public_error = ?, \
             finished_at = IF(? IN ('done', 'failed', 'undone'), NOW(6), finished_at) \
             WHERE operation_id = ? AND position = ?",
        )
        .bind(state)
        .bind(message.map(|m| m.internal.as_str()))
        .bind(message.map(|m| m.public.as_str()))
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

/// Runs a saga's end; its failure interrupts the job, which runs the end again later.
async fn finished(saga: &sagas::Saga, ctx: &StepContext, outcome: Outcome) -> anyhow::Result<()> {
    (saga.finish)(ctx, saga.kind, outcome)
        .await
        .map_err(|e| anyhow::anyhow!(e.internal_message()))
        .context("ending the saga")
}
