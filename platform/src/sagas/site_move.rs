//! `site.move`: carries out one move of the placement planner (`crate::app::placement`): the
//! site's service is pinned to its new worker and swarm starts the new task first
//! (`start-first`), so the site keeps serving. The steps:
//! - `await_turn`: at most `max_moves_per_node` moves touch a worker (as source or
//!   destination) and `max_concurrent_moves` run in all; a move waits for its turn
//!   without using up its attempts;
//! - `move_service`: the placement row moves (the new worker's capacity checked under a
//!   row lock) and the service is updated;
//! - `await_ready`: swarm runs exactly one task, on the new worker, and (with agents
//!   reporting) the agent there reported ready after the move started; past
//!   `move_timeout_secs` the move fails and is taken back (placement and service);
//! - `finish_move`: the timings are recorded.

use std::time::Duration;

use anyhow::anyhow;
use backends::SiteResourceId;
use futures::future::BoxFuture;
use sqlx::MySqlPool;

use super::{
    Saga, SagaSettings, Step, StepContext, StepError, StepResult, Undo, always, nothing_to_finish,
};
use crate::{config::PlacementConfig, provision::Backends, states::OperationKind};

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteMove,
    steps: &[
        Step {
            name: "await_turn",
            action: await_turn_step,
            undo: Undo::Reverse(give_up_turn),
            when: always,
        },
        Step {
            name: "move_service",
            action: move_service,
            undo: Undo::Reverse(move_service_back),
            when: always,
        },
        Step {
            name: "await_ready",
            action: await_ready_step,
            undo: Undo::Nothing("it only waits"),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "finish_move",
            action: finish_move,
            undo: Undo::Nothing("it is the last step: nothing fails after it"),
            when: always,
        },
    ],
    finish: nothing_to_finish,
};

/// The public message of a move that cannot go on.
const CANNOT_MOVE: &str = "the site could not be moved to its new worker";

fn await_turn_step(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let config = &c.settings.placement;
        let m = in_flight(&c.db, &c.target, config.move_timeout_secs).await?;
        await_turn(&c.db, config, &m).await
    })
}

fn move_service(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let m = in_flight(&c.db, &c.target, c.settings.placement.move_timeout_secs).await?;
        move_placement(&c.db, &c.target, &m.from, &m.to).await?;
        c.backends
            .ensure_site_service(&c.db, &c.target, c.settings.control_url.as_deref())
            .await
    })
}

fn await_ready_step(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let m = in_flight(&c.db, &c.target, c.settings.placement.move_timeout_secs).await?;
        await_ready(&c.db, &c.backends, &c.settings, &c.target, &m).await
    })
}

fn finish_move(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let m = match in_flight(&c.db, &c.target, c.settings.placement.move_timeout_secs).await {
            Ok(m) => m,
            // Run again after a crash between recording the end and the step's `done`.
            Err(_) => return Ok(()),
        };
        sqlx::query(
            "UPDATE site_moves SET state = 'done', ready_at = COALESCE(ready_at, NOW(6)), \
             finished_at = NOW(6) WHERE operation_id = ?",
        )
        .bind(&m.operation)
        .execute(&c.db)
        .await?;
        Ok(())
    })
}

/// The undo of `move_service`: the site returns to its worker.
fn move_service_back(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let Ok(m) = in_flight(&c.db, &c.target, TEN_YEARS_SECS).await else {
            return Ok(());
        };
        // An evacuation's old worker is drained or down: the site cannot go back there, and
        // trying would fail this undo forever. It stays on its new worker (its service
        // already points there), the move is recorded failed, and the planner sees the
        // site where it is.
        let origin: Option<String> =
            sqlx::query_scalar("SELECT availability FROM nodes WHERE id = ?")
                .bind(&m.from)
                .fetch_optional(&c.db)
                .await?;
        if origin.as_deref() != Some("active") {
            tracing::warn!(
                site = %c.target,
                from = %m.from,
                to = %m.to,
                availability = origin.as_deref().unwrap_or("unknown"),
                "a failed move leaves the site on its new worker: its old worker takes no sites"
            );
        } else {
            move_placement(&c.db, &c.target, &m.to, &m.from).await?;
        }
        c.backends
            .ensure_site_service(&c.db, &c.target, c.settings.control_url.as_deref())
            .await
    })
}

/// The undo of `await_turn`: the move is recorded failed.
fn give_up_turn(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let Ok(m) = in_flight(&c.db, &c.target, TEN_YEARS_SECS).await else {
            return Ok(());
        };
        sqlx::query(
            "UPDATE site_moves SET state = 'failed', finished_at = NOW(6) WHERE operation_id = ?",
        )
        .bind(&m.operation)
        .execute(&c.db)
        .await?;
        Ok(())
    })
}

/// The move of a site in flight.
struct InFlight {
    operation: String,
    from: String,
    to: String,
    state: String,
    started: bool,
    expired: bool,
}

async fn in_flight(db: &MySqlPool, site: &str, timeout: u64) -> Result<InFlight, StepError> {
    let row: Option<(String, String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT operation_id, from_node, to_node, state, started_at IS NOT NULL, \
         COALESCE(started_at < NOW(6) - INTERVAL ? SECOND, 0) FROM site_moves \
         WHERE site_id = ? AND state IN ('queued', 'moving') ORDER BY created_at DESC LIMIT 1",
    )
    .bind(i64::try_from(timeout).unwrap_or(i64::MAX))
    .bind(site)
    .fetch_optional(db)
    .await?;
    let (operation, from, to, state, started, expired) = row.ok_or_else(|| {
        StepError::permanent(CANNOT_MOVE, anyhow!("site {site} has no move under way"))
    })?;
    Ok(InFlight {
        operation,
        from,
        to,
        state,
        started,
        expired,
    })
}

/// A timeout that never runs out (undo looks at the move whatever its age).
const TEN_YEARS_SECS: u64 = 10 * 365 * 24 * 3600;

async fn await_turn(
    db: &MySqlPool,
    config: &PlacementConfig,
    m: &InFlight,
) -> Result<(), StepError> {
    if m.state == "moving" {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    // The two workers' rows serialise the turn-taking of moves that touch them. A worker
    // that is down has no running task to protect: moves off it do not count against it.
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM nodes WHERE id IN (?, ?) AND availability <> 'down' FOR UPDATE",
    )
    .bind(&m.from)
    .bind(&m.to)
    .fetch_all(&mut *tx)
    .await?;
    let (a, b) = match live.as_slice() {
        [] => ("", ""),
        [one] => (one.as_str(), one.as_str()),
        [one, two, ..] => (one.as_str(), two.as_str()),
    };
    let (on_nodes, total): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(from_node IN (?, ?) OR to_node IN (?, ?)), 0) AS SIGNED), COUNT(*) FROM site_moves \
         WHERE state = 'moving' AND operation_id <> ?",
    )
    .bind(a)
    .bind(b)
    .bind(a)
    .bind(b)
    .bind(&m.operation)
    .fetch_one(&mut *tx)
    .await?;
    if on_nodes >= i64::from(config.max_moves_per_node)
        || total >= i64::from(config.max_concurrent_moves)
    {
        return Err(StepError::Wait(
            Duration::from_secs(2),
            format!("{on_nodes} moves on these workers, {total} in all: waiting for a turn"),
        ));
    }
    sqlx::query(
        "UPDATE site_moves SET state = 'moving', started_at = NOW(6) WHERE operation_id = ?",
    )
    .bind(&m.operation)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Moves the placement row from one worker to another, checking the destination's room.
async fn move_placement(db: &MySqlPool, site: &str, from: &str, to: &str) -> Result<(), StepError> {
    let mut tx = db.begin().await?;
    let current: Option<(String, i32)> =
        sqlx::query_as("SELECT node_id, slots FROM placements WHERE site_id = ? FOR UPDATE")
            .bind(site)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((node, slots)) = current else {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!("site {site} is not placed"),
        ));
    };
    if node == to {
        return Ok(());
    }
    if node != from {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!("site {site} is on {node}, not on {from}"),
        ));
    }
    let room: Option<(i32, i64, String)> = sqlx::query_as(
        "SELECT n.slots, CAST(COALESCE((SELECT SUM(slots) FROM placements WHERE node_id = n.id), 0) AS SIGNED), n.availability \
         FROM nodes n WHERE n.id = ? FOR UPDATE",
    )
    .bind(to)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((capacity, used, availability)) = room else {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!("worker {to} is unknown"),
        ));
    };
    if used + i64::from(slots) > i64::from(capacity) {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!(
                "worker {to} has {} free slots, the site needs {slots}",
                i64::from(capacity) - used
            ),
        ));
    }
    // The planner chose an active worker; one that has since gone pending, drained or
    // down is no target (a pending one has no swarm node to run the task).
    if availability != "active" {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!("worker {to} is {availability}"),
        ));
    }
    sqlx::query("UPDATE placements SET node_id = ? WHERE site_id = ?")
        .bind(to)
        .bind(site)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn await_ready(
    db: &MySqlPool,
    p: &Backends,
    settings: &SagaSettings,
    site: &str,
    m: &InFlight,
) -> Result<(), StepError> {
    let Some(swarm) = &p.swarm else {
        return Ok(());
    };
    let (state, swarm_to): (String, Option<String>) = sqlx::query_as(
        "SELECT s.state, n.swarm_node_id FROM sites s JOIN nodes n ON n.id = ? WHERE s.id = ?",
    )
    .bind(&m.to)
    .bind(site)
    .fetch_one(db)
    .await?;
    if state == "suspended" {
        return Ok(());
    }
    let swarm_to = swarm_to.ok_or_else(|| {
        StepError::permanent(CANNOT_MOVE, anyhow!("worker {} has no swarm id", m.to))
    })?;
    let id = SiteResourceId::parse(site).map_err(StepError::internal)?;
    let tasks = swarm.site_tasks(&id).await.map_err(|e| {
        StepError::retryable(
            "the container platform did not list the site's tasks",
            anyhow::Error::new(e).context("listing the site's tasks"),
        )
    })?;
    let moved = tasks.len() == 1 && tasks[0].0 == swarm_to && tasks[0].1 == "running";
    // Swarm gave up on the new task (it rolled the service back): no use waiting.
    if let Some(update) = swarm.update_state(&id).await.map_err(|e| {
        StepError::retryable(
            "the container platform did not show the site's service",
            anyhow::Error::new(e).context("inspecting the service"),
        )
    })? && (update.0.starts_with("rollback") || update.0 == "paused")
    {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!("swarm rolled the service back: {} ({})", update.0, update.1),
        ));
    }
    let agent_ready = if p.agents_report(settings.control_url.as_deref()) {
        let ready: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM agent_reports r JOIN site_moves m ON m.operation_id = ? \
             WHERE r.site_id = ? AND r.ready = 1 AND r.node_id = ? AND r.received_at > m.started_at",
        )
        .bind(&m.operation)
        .bind(site)
        .bind(&swarm_to)
        .fetch_optional(db)
        .await?;
        ready.is_some()
    } else {
        true
    };
    if moved && agent_ready {
        sqlx::query(
            "UPDATE site_moves SET ready_at = COALESCE(ready_at, NOW(6)) WHERE operation_id = ?",
        )
        .bind(&m.operation)
        .execute(db)
        .await?;
        return Ok(());
    }
    if m.expired || !m.started {
        return Err(StepError::permanent(
            CANNOT_MOVE,
            anyhow!(
                "the site is not ready on its new worker after {} s (tasks: {tasks:?}, agent ready there: {agent_ready})",
                settings.placement.move_timeout_secs
            ),
        ));
    }
    Err(StepError::Wait(
        Duration::from_millis(500),
        format!(
            "waiting for the task on the new worker (tasks: {tasks:?}, agent ready: {agent_ready})"
        ),
    ))
}
