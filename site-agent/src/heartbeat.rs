//! The heartbeat: a report to the control plane every interval, one request in flight
//! (the loop awaits each answer, with a timeout, before it sleeps), the desired config
//! of the answer persisted and applied (older generations refused). Failures back off
//! up to a minute; the site keeps serving whatever the control plane does. The drain at
//! stop wakes it for one report more ([`crate::agent::Shared::report_now`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use crate::agent::{Shared, apply, now_unix};
use crate::backoff::Backoff;
use crate::protocol::{AgentReport, Counters, REPORT_PATH, ReportResponse, Sizes};
use crate::state::Decision;

/// Builds the report from the shared state.
pub fn build_report(shared: &Shared, seq: u64) -> AgentReport {
    let m = shared.metrics.snapshot();
    let r = &m.requests;
    let children = shared.children.snapshot();
    AgentReport {
        site_id: shared.settings.site_id.clone(),
        seq,
        started_at_unix: shared.started_at_unix,
        sent_at_unix: now_unix(),
        health: shared.health(),
        versions: shared
            .versions
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
        sizes: Sizes {
            wp_content_bytes: m.wp_content_bytes,
            database_bytes: m.database_bytes,
        },
        counters: Counters {
            requests_total: r.total(),
            requests_5xx_total: r.by_class[4],
            response_bytes_total: r.bytes_sent,
            response_seconds_total: r.seconds_sum,
            php_fpm_accepted_conn: m.fpm.as_ref().map(|f| f.accepted_conn),
            php_fpm_active_processes: m.fpm.as_ref().map(|f| f.active_processes),
            php_fpm_max_children_reached: m.fpm.as_ref().map(|f| f.max_children_reached),
            child_restarts_total: children.iter().map(|c| c.restarts).sum(),
        },
        desired_generation: shared.store.lock().ok().and_then(|s| s.generation()),
        applied: shared.applied.lock().ok().and_then(|a| a.clone()),
        node_id: shared.settings.node_id.clone(),
        task_id: shared.settings.task_id.clone(),
    }
}

/// Reports until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let s = &shared.settings;
    let Some(base) = s.control_url.clone() else {
        tracing::warn!("no control-plane URL (PRESSDOCK_CONTROL_URL): not reporting");
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("pressdock-agent/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; not reporting");
            return;
        }
    };
    let url = format!("{base}{REPORT_PATH}");
    // Apply what was persisted before the first answer (a restart keeps the config).
    if shared
        .store
        .lock()
        .ok()
        .and_then(|g| g.generation())
        .is_some()
    {
        let st = apply(&shared).await;
        if let Ok(mut a) = shared.applied.lock() {
            *a = Some(st);
        }
    }
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        Duration::MAX,
    );
    let mut interval = s.report_interval;
    let mut seq = 0u64;
    loop {
        seq += 1;
        let report = build_report(&shared, seq);
        let delay = match send(&client, &url, shared.settings.agent_token.expose(), &report).await {
            Ok(resp) => {
                backoff.reset();
                shared
                    .metrics
                    .with(|m| m.last_report_ok_unix = Some(now_unix()));
                if let Some(secs) = resp.report_interval_secs {
                    interval = Duration::from_secs(u64::from(secs.clamp(1, 3600)));
                }
                if let Some(desired) = resp.desired {
                    take_desired(&shared, desired).await;
                }
                interval
            }
            Err(e) => {
                shared.metrics.with(|m| m.reports_failed += 1);
                let d = backoff
                    .next_delay(Duration::ZERO)
                    .max(Duration::from_secs(1));
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_ms = d.as_millis() as u64,
                    "report failed"
                );
                d.min(interval.max(Duration::from_secs(1)) * 4)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // Draining: the platform hears at once that this task is no longer ready.
            _ = shared.report_now.notified() => {}
            _ = crate::supervise::stopped(&mut stop) => return,
        }
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    report: &AgentReport,
) -> Result<ReportResponse> {
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(report)
        .send()
        .await
        .context("sending the report")?;
    let status = resp.status();
    if !status.is_success() {
        bail!("control plane answered {status}");
    }
    resp.json().await.context("reading the answer")
}

async fn take_desired(shared: &Shared, desired: crate::protocol::DesiredConfig) {
    let generation = desired.generation;
    let decision = match shared.store.lock() {
        Ok(mut st) => st.offer(desired),
        Err(_) => return,
    };
    match decision {
        Ok(Decision::Accept) => {
            tracing::info!(generation, "new desired config");
            let st = apply(shared).await;
            if !st.ok {
                tracing::warn!(
                    generation,
                    error = st.error.as_deref().unwrap_or(""),
                    "applying the desired config failed"
                );
            }
            shared
                .metrics
                .with(|m| m.desired_generation = Some(generation));
            if let Ok(mut a) = shared.applied.lock() {
                *a = Some(st);
            }
        }
        Ok(Decision::Same) => {}
        Ok(Decision::Stale { held }) => {
            tracing::warn!(
                offered = generation,
                held,
                "refused an older desired config"
            );
        }
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "cannot persist the desired config"
        ),
    }
}
