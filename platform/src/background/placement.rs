//! The placement loop: a pass of the placement planner (`app::placement::pass`) on a timer.

use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::{app::placement, config::PlacementConfig, provision::Backends, state::RunnerWake};

/// Runs [`pass`](placement::pass) every `interval_secs` until `shutdown`, waking this
/// process's runner after a pass that started moves.
pub async fn run_periodically(
    db: MySqlPool,
    provisioner: std::sync::Arc<Backends>,
    config: PlacementConfig,
    runner: RunnerWake,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(config.interval_secs.max(1));
    let mut gate = placement::balance_gate(&config);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match placement::pass(&db, &provisioner, &config, &mut gate, Instant::now()).await {
            Ok(Some(report)) if report.moves_started > 0 => runner.wake(),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "placement pass failed"),
        }
    }
}
