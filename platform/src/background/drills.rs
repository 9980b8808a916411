//! The drill schedule's loop: a pass of `backup::drill_job::schedule_once` on a timer.

use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::{backup::drill_job, config::DrillsConfig, provision::Backends, state::RunnerWake};

/// Runs [`drill_job::schedule_once`] every `interval_secs` (the first one interval after
/// start) until `shutdown`, waking this process's runner after a pass that enqueued drills.
pub async fn run_periodically(
    db: MySqlPool,
    provisioner: std::sync::Arc<Backends>,
    config: DrillsConfig,
    runner: RunnerWake,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(config.interval_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match drill_job::schedule_once(&db, &provisioner, &config).await {
            Ok(enqueued) if !enqueued.is_empty() => runner.wake(),
            Ok(_) => {}
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                "the drill schedule's pass failed"
            ),
        }
    }
}
