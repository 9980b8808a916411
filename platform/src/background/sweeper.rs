//! The agents' sweeper: `app::agent::sweep` (an active site whose agent stopped being
//! ready becomes `degraded`) on a timer.

use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::app::agent;

/// Runs [`sweep`](agent::sweep) every few seconds until `shutdown`.
pub async fn run_sweeper(db: MySqlPool, timeout: Duration, mut shutdown: watch::Receiver<bool>) {
    let every = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match agent::sweep(&db, timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                sites = n,
                "sites degraded: their agents stopped being ready"
            ),
            Err(err) => tracing::warn!(error = %err, "agent sweep failed"),
        }
    }
}
