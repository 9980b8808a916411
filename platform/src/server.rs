//! `pressdock serve`: migrate, bootstrap, then serve the API and run jobs until a signal.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    api, app,
    auth::TokenSigner,
    background::jobs::Runner,
    config::Config,
    db,
    metrics::Metrics,
    provision::Backends,
    sagas::SagaSettings,
    state::{AppState, RunnerWake},
};

/// Connects, migrates and builds the state shared by the API and the runner.
pub async fn prepare(config: Config) -> anyhow::Result<AppState> {
    let secret = if config.secret_key.is_empty() {
        if !config.backends.is_empty() {
            anyhow::bail!(
                "secret_key is required when backends are configured: it encrypts the sites' secrets"
            );
        }
        tracing::warn!(
            "no secret_key configured: using a random one; tokens will not survive a restart"
        );
        crate::auth::new_token("")
    } else {
        config.secret_key.expose().to_owned()
    };
    // A connection for every saga the runner may run at once (24 by default: a burst
    // of 20 creates runs together, where 16 made 4 of them wait for a slot), and the
    // API's beside them.
    let sagas = if config.jobs.enabled {
        u32::try_from(config.jobs.concurrency.max(1)).unwrap_or(u32::MAX)
    } else {
        0
    };
    let pool = db::connect(
        &config.database_url,
        sagas.saturating_add(crate::config::API_CONNECTIONS).max(20),
    )
    .await?;
    db::migrate(&pool).await?;
    app::plans::seed_defaults(&pool)
        .await
        .context("seeding the default plans")?;
    if let Some(email) = &config.bootstrap.admin_email
        && !config.bootstrap.admin_password.is_empty()
        && app::users::bootstrap_admin(&pool, email, config.bootstrap.admin_password.expose())
            .await?
    {
        tracing::info!(email = %email, "created the first staff admin");
    }
    let backends = Arc::new(
        Backends::from_config(&config.backends, secret.as_bytes())?
            .with_backups(config.backups.clone()),
    );
    Ok(AppState {
        secrets: backends.secrets.clone(),
        backends,
        db: pool,
        signer: TokenSigner::new(secret.as_bytes(), config.auth.access_token_ttl_secs),
        config: Arc::new(config),
        metrics: Metrics::new()?,
        runner: RunnerWake::default(),
    })
}

/// Serves on an already bound listener until `shutdown` turns true.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut runners = Vec::new();
    if state.config.jobs.enabled {
        let runner = Runner::new(
            state.db.clone(),
            state.backends.clone(),
            SagaSettings::from_config(&state.config),
            state.config.jobs.clone(),
            state.runner.clone(),
        );
        // One claiming loop; it runs up to `jobs.concurrency` sagas at once.
        runners.push(tokio::spawn(runner.run(shutdown.clone())));
    }
    if state.config.reconcile.enabled && state.backends.any() {
        runners.push(tokio::spawn(
            crate::background::reconcile::run_periodically(
                state.db.clone(),
                state.backends.clone(),
                state.config.agent.report_url().map(str::to_owned),
                std::time::Duration::from_secs(state.config.reconcile.interval_secs.max(1)),
                state.config.reconcile.orphan_grace_secs,
                shutdown.clone(),
            ),
        ));
    }
    if state.config.drills.enabled
        && state.backends.config.s3.is_some()
        && state.backends.config.galera.is_some()
    {
        runners.push(tokio::spawn(crate::background::drills::run_periodically(
            state.db.clone(),
            state.backends.clone(),
            state.config.drills.clone(),
            state.runner.clone(),
            shutdown.clone(),
        )));
    }
    if state
        .backends
        .gluster
        .as_ref()
        .is_some_and(|g| g.config().spares > 0)
    {
        // Spare site directories with their quota (`[backends.gluster] spares`): refilled
        // every 10 s, off the create path.
        runners.push(tokio::spawn(state.backends.clone().run_spares(
            state.db.clone(),
            std::time::Duration::from_secs(10),
            shutdown.clone(),
        )));
    }
    if state.config.placement.enabled && state.backends.swarm.is_some() {
        runners.push(tokio::spawn(
            crate::background::placement::run_periodically(
                state.db.clone(),
                state.backends.clone(),
                state.config.placement.clone(),
                state.runner.clone(),
                shutdown.clone(),
            ),
        ));
    }
    if state.config.certs.enabled {
        if state.config.secret_key.is_empty() {
            anyhow::bail!("certs.enabled needs secret_key: certificates are sealed with it");
        }
        let issuer = crate::certs::issuer::Issuer::new(
            state.db.clone(),
            state.secrets.clone(),
            state.config.certs.clone(),
        );
        runners.push(tokio::spawn(crate::certs::issuer::run_periodically(
            issuer,
            state.metrics.clone(),
            shutdown.clone(),
        )));
    }
    if !state.config.billing.edge_metrics.is_empty() {
        runners.push(tokio::spawn(crate::app::edge_usage::run_periodically(
            state.db.clone(),
            state.config.billing.edge_metrics.clone(),
            state.config.billing.edge_internal_entrypoint.clone(),
            std::time::Duration::from_secs(state.config.billing.edge_scrape_interval_secs.max(5)),
            shutdown.clone(),
        )));
    }
    if state.config.backups.scheduler && state.backends.backups_configured() {
        // Scheduled backups and pruning: one replica at a time (a MariaDB named lock).
        runners.push(tokio::spawn(crate::backup::schedule::run_periodically(
            state.db.clone(),
            state.backends.clone(),
            state.config.backups.clone(),
            state.runner.clone(),
            shutdown.clone(),
        )));
    }
    if state
        .backends
        .agents_report(state.config.agent.report_url())
    {
        runners.push(tokio::spawn(crate::background::sweeper::run_sweeper(
            state.db.clone(),
            std::time::Duration::from_secs(state.config.agent.report_timeout_secs),
            shutdown.clone(),
        )));
    }
    if let Some(address) = state.config.certs.edge_listen {
        let edge = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the edge's listener on {address}"))?;
        tracing::info!(%address, "serving the edge (certificates, ACME challenges)");
        let app =
            api::edge_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut stop = shutdown.clone();
        runners.push(tokio::spawn(async move {
            let served = axum::serve(edge, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the edge's listener failed");
            }
        }));
    }
    if let Some(address) = state.config.agent.listen {
        let agents = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the agents' listener on {address}"))?;
        tracing::info!(%address, "serving the site agents");
        let app =
            api::agent_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut stop = shutdown.clone();
        runners.push(tokio::spawn(async move {
            let served = axum::serve(agents, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the agents' listener failed");
            }
        }));
    }
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let mut stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("serving HTTP")?;
    for runner in runners {
        let _ = runner.await;
    }
    Ok(())
}

/// Turns SIGINT or SIGTERM into the shutdown signal.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down gracefully");
        let _ = tx.send(true);
    });
    rx
}
