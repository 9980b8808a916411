//! The agent's main loop: render the files, start and supervise php-fpm and nginx, serve
//! health and metrics, install WordPress, keep the checks and sizes current, report to
//! the control plane, forward cache purges, and stop everything gracefully on
//! SIGTERM/SIGINT.
//!
//! Stopping (swarm gives the task 20 s from SIGTERM to SIGKILL; the agent uses
//! `stop_grace`, 15 s):
//! 1. Drain, `drain` (7 s): `/readyz` answers 503 with the check `draining`, one report
//!    says so at once, nginx and php-fpm keep serving. The edge (Traefik polls swarm) drops
//!    the task meanwhile, so no visitor meets a closed port during a move or an update.
//!    A second signal ends the drain early.
//! 2. The children get SIGQUIT (finish the requests in flight) and what is left of
//!    `stop_grace` before SIGKILL.
//! 3. The HTTP server, the heartbeat and the purge forwarder stop; the forwarder sends
//!    what the last requests queued (at most 2 s).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::backoff::Backoff;
use crate::checks;
use crate::config::Settings;
use crate::heartbeat;
use crate::install;
use crate::install::WWW_DATA;
use crate::metrics::Metrics;
use crate::protocol::{ApplyStatus, Check, Health, PhpSettings, Versions};
use crate::purge::{self, PurgeQueue};
use crate::render::{self, write_atomic, write_atomic_owned, write_if_changed};
use crate::state::StateStore;
use crate::supervise::{ChildSpec, Children, Supervisor};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// State shared by the server, the background tasks and the heartbeat.
pub struct Shared {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub children: Children,
    pub started_at_unix: u64,
    pub checks: Mutex<Vec<Check>>,
    pub installed: Mutex<bool>,
    /// Why the last install attempt failed (shown as the `install` check).
    pub install_error: Mutex<Option<String>>,
    pub versions: Mutex<Versions>,
    pub store: Mutex<StateStore>,
    pub applied: Mutex<Option<ApplyStatus>>,
    /// Set on SIGTERM: not ready any more, still serving (see the module docs).
    pub draining: AtomicBool,
    /// Purges from the site's plugin, waiting for the forwarder.
    pub purges: Arc<PurgeQueue>,
    /// Wakes the heartbeat for a report now.
    pub report_now: tokio::sync::Notify,
}

impl Shared {
    /// Liveness and readiness now.
    pub fn health(&self) -> Health {
        let mut checks = self.checks.lock().map(|c| c.clone()).unwrap_or_default();
        let installed = self.installed.lock().map(|g| *g).unwrap_or(false);
        let live = self
            .children
            .down_longer_than(crate::server::CHILD_DOWN_LIMIT)
            .is_none();
        if self.draining.load(Ordering::Relaxed) {
            checks.push(Check {
                name: "draining".into(),
                ok: false,
                detail: Some("stopping: serving until the edge has dropped this task".into()),
            });
        }
        Health {
            live,
            ready: live && installed && !checks.is_empty() && checks.iter().all(|c| c.ok),
            wordpress_installed: installed,
            checks,
        }
    }
}

fn child_specs(s: &Settings) -> Vec<ChildSpec> {
    vec![
        ChildSpec {
            name: "php-fpm".into(),
            argv: s.php_fpm_cmd.clone(),
            stop_signal: Signal::SIGQUIT,
        },
        ChildSpec {
            name: "nginx".into(),
            argv: s.nginx_cmd.clone(),
            stop_signal: Signal::SIGQUIT,
        },
    ]
}

/// Writes every file the site's processes read. wp-config and the drop-in hold secrets
/// or run as PHP: owned by root, readable by www-data's group only where needed.
pub fn render_all(s: &Settings, php: &PhpSettings) -> Result<()> {
    for d in [
        "nginx-tmp/body",
        "nginx-tmp/fastcgi",
        "nginx-tmp/proxy",
        "nginx-tmp/uwsgi",
        "nginx-tmp/scgi",
    ] {
        std::fs::create_dir_all(s.paths.run_dir.join(d))
            .with_context(|| format!("creating {}", s.paths.run_dir.display()))?;
    }
    // The database and Redis passwords and the salts: readable by php-fpm's workers
    // (www-data's group), nobody else.
    write_atomic_owned(
        &s.paths.wp_config,
        render::render_wp_config(s).as_bytes(),
        0o640,
        Some((0, WWW_DATA)),
    )?;
    write_atomic(
        &s.fpm_conf_path(),
        render::render_fpm_conf(s, php).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &s.nginx_conf_path(),
        render::render_nginx_conf(s).as_bytes(),
        0o644,
    )?;
    install::prepare_wp_content(s)?;
    // No secret in either: the drop-in reads its settings from wp-config's constants.
    // The drop-in is root's (the tenant's code cannot change what connects to Redis);
    // the plugin is www-data's, like the directory it is in.
    write_if_changed(
        &s.object_cache_path(),
        render::OBJECT_CACHE_PHP.as_bytes(),
        0o644,
        Some((0, 0)),
    )?;
    write_if_changed(
        &s.purge_plugin_path(),
        render::PURGE_PLUGIN_PHP.as_bytes(),
        0o644,
        Some((WWW_DATA, WWW_DATA)),
    )?;
    Ok(())
}

/// Runs the agent until SIGTERM or SIGINT; returns after the children stopped.
pub async fn run(settings: Settings) -> Result<()> {
    // Nothing that runs tenant code before the node's guard confined this task.
    if let Some(within) = crate::netguard::wait_from(
        std::env::var("PRESSDOCK_NET_GUARD_WAIT_SECS")
            .ok()
            .as_deref(),
    )? {
        let took =
            crate::netguard::wait_for_mark(std::path::Path::new(crate::netguard::MARK), within)
                .await?;
        tracing::info!(
            waited_ms = took.as_millis() as u64,
            "network confinement in place"
        );
    }
    let store = match StateStore::open(&settings.paths.state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "desired config unreadable; starting without it"
            );
            let _ = std::fs::remove_file(settings.paths.state_dir.join("desired.json"));
            StateStore::open(&settings.paths.state_dir)?
        }
    };
    let php = store.held().map(|d| d.php.clone()).unwrap_or_default();
    if settings.render {
        render_all(&settings, &php).context("rendering the site's files")?;
        tracing::info!(site = %settings.site_id, "files rendered");
    }
    let metrics = Arc::new(Metrics::default());
    metrics.with(|m| m.desired_generation = store.generation());
    let _access = crate::accesslog::spawn(&settings.access_log_socket(), metrics.clone())?;

    let supervisor = Supervisor::start(child_specs(&settings), settings.children_stop_grace());
    let installed_already = settings.install_marker().exists();
    let shared = Arc::new(Shared {
        children: supervisor.children(),
        metrics,
        started_at_unix: now_unix(),
        checks: Mutex::new(Vec::new()),
        installed: Mutex::new(installed_already),
        install_error: Mutex::new(None),
        versions: Mutex::new(Versions {
            agent: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        applied: Mutex::new(None),
        store: Mutex::new(store),
        draining: AtomicBool::new(false),
        purges: Arc::new(PurgeQueue::default()),
        report_now: tokio::sync::Notify::new(),
        settings,
    });

    let listener = tokio::net::TcpListener::bind(shared.settings.listen)
        .await
        .with_context(|| format!("binding {}", shared.settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "agent listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        // The peer address: `/purge` takes requests from loopback only.
        let app = crate::server::router(shared.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        })
    };

    let background = vec![
        tokio::spawn(install_loop(shared.clone())),
        tokio::spawn(check_loop(shared.clone())),
        tokio::spawn(size_loop(shared.clone())),
        tokio::spawn(versions(shared.clone())),
        tokio::spawn(heartbeat::run(shared.clone(), stop_rx.clone())),
    ];
    let forwarder = tokio::spawn(purge::run(shared.clone(), stop_rx.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let drain = shared.settings.drain;
    tracing::info!(
        signal = which,
        drain_ms = drain.as_millis() as u64,
        grace_ms = shared.settings.stop_grace.as_millis() as u64,
        "stopping"
    );
    if !drain.is_zero() {
        shared.draining.store(true, Ordering::Relaxed);
        shared.metrics.with(|m| m.ready = false);
        shared.report_now.notify_one();
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = term.recv() => tracing::info!("second signal: drain cut short"),
            _ = int.recv() => tracing::info!("second signal: drain cut short"),
        }
        tracing::info!("drained; stopping the children");
    }
    for t in &background {
        t.abort();
    }
    supervisor.shutdown().await;
    let _ = stop_tx.send(true);
    // Together, not one after the other: drain + children + this stays under swarm's 20 s.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let _ = tokio::join!(forwarder, server);
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

async fn install_loop(shared: Arc<Shared>) {
    let s = &shared.settings;
    let Some(i) = s.install.clone() else {
        return;
    };
    let mut backoff = Backoff::new(
        Duration::from_secs(2),
        Duration::from_secs(60),
        Duration::MAX,
    );
    loop {
        match install::ensure_installed(s, &i).await {
            Ok(o) => {
                tracing::info!(result = %o.result, user_id = o.user_id, "WordPress installed");
                if let Ok(mut g) = shared.installed.lock() {
                    *g = true;
                }
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay(Duration::ZERO);
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_ms = delay.as_millis() as u64,
                    "install failed"
                );
                if let Ok(mut g) = shared.install_error.lock() {
                    *g = Some(format!("{e:#}"));
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn check(name: &str, r: Result<()>) -> Check {
    Check {
        name: name.into(),
        ok: r.is_ok(),
        detail: r.err().map(|e| format!("{e:#}")),
    }
}

/// Logs a check that starts failing, fails differently, or recovers: `/readyz` shows only
/// names and outcomes, so the log (and the report) is where the reason is read.
fn log_changes(before: &[Check], after: &[Check]) {
    for c in after {
        let prev = before.iter().find(|p| p.name == c.name);
        match (prev, c.ok) {
            (Some(p), true) if !p.ok => tracing::info!(check = %c.name, "check passes again"),
            (Some(p), false) if !p.ok && p.detail == c.detail => {}
            (_, false) => tracing::warn!(
                check = %c.name,
                detail = c.detail.as_deref().unwrap_or(""),
                "check failing"
            ),
            _ => {}
        }
    }
}

async fn check_loop(shared: Arc<Shared>) {
    let s = &shared.settings;
    let mut db = checks::Database::new(s).ok();
    loop {
        let db_r = match db.as_mut() {
            Some(d) => d.ping().await,
            None => Err(anyhow::anyhow!("bad database settings")),
        };
        let redis_r = async {
            let master = checks::redis_master(
                &s.redis_sentinels,
                &s.redis_master_name,
                &s.redis_user,
                s.redis_password.expose(),
            )
            .await?;
            checks::redis_ping(&master, &s.redis_user, s.redis_password.expose()).await
        }
        .await;
        let wp_r = checks::wordpress_answers(s.site_port, &s.primary_domain).await;
        let fpm = checks::fpm_status(s.site_port).await.ok();
        shared.metrics.with(|m| m.fpm = fpm);
        let mut list = vec![
            check("database", db_r),
            check("redis", redis_r),
            check("wordpress", wp_r),
        ];
        if !shared.installed.lock().map(|g| *g).unwrap_or(false) {
            let why = shared.install_error.lock().ok().and_then(|g| g.clone());
            let disabled = s
                .install
                .is_none()
                .then(|| "install disabled and no marker".to_owned());
            list.push(Check {
                name: "install".into(),
                ok: false,
                detail: why.or(disabled).or_else(|| Some("installing".into())),
            });
        }
        if let Ok(mut c) = shared.checks.lock() {
            log_changes(&c, &list);
            *c = list;
        }
        let h = shared.health();
        let mut became_ready = false;
        shared.metrics.with(|m| {
            became_ready = h.ready && !m.ready;
            m.ready = h.ready;
            m.wordpress_installed = h.wordpress_installed;
        });
        if became_ready {
            // A new or moved site: the platform hears at once, not at the next interval.
            shared.report_now.notify_one();
        }
        // Not ready yet (starting, or a move waiting for this task): look again soon.
        let next = if h.ready {
            s.check_interval
        } else {
            s.check_interval.min(std::time::Duration::from_secs(2))
        };
        tokio::time::sleep(next).await;
    }
}

async fn size_loop(shared: Arc<Shared>) {
    let s = &shared.settings;
    let mut db = checks::Database::new(s).ok();
    loop {
        let wp = checks::dir_bytes(&s.wp_content).await.ok();
        let dbb = match db.as_mut() {
            Some(d) => d.size_bytes().await.ok(),
            None => None,
        };
        shared.metrics.with(|m| {
            m.wp_content_bytes = wp.or(m.wp_content_bytes);
            m.database_bytes = dbb.or(m.database_bytes);
        });
        tokio::time::sleep(s.size_interval).await;
    }
}

async fn versions(shared: Arc<Shared>) {
    let s = &shared.settings;
    let wp = checks::wordpress_version(&s.paths.wp_root);
    let php = checks::command_version(&s.php_cli, &["-r", "echo PHP_VERSION;"]).await;
    let nginx = match s.nginx_cmd.first() {
        Some(n) => checks::command_version(n, &["-v"])
            .await
            .map(|v| v.rsplit('/').next().unwrap_or(&v).to_owned()),
        None => None,
    };
    if let Ok(mut v) = shared.versions.lock() {
        v.wordpress = wp;
        v.php = php;
        v.nginx = nginx;
    }
}

/// Applies the held desired config: re-renders php-fpm's config and reloads it
/// gracefully (SIGUSR2), runs new commands.
pub async fn apply(shared: &Shared) -> ApplyStatus {
    let s = &shared.settings;
    let Some(desired) = shared.store.lock().ok().and_then(|g| g.held().cloned()) else {
        return ApplyStatus {
            generation: 0,
            ok: true,
            last_command_id: None,
            error: None,
        };
    };
    let last_file = s.paths.state_dir.join("last_command_id");
    let mut last: Option<u64> = std::fs::read_to_string(&last_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let mut errors = Vec::new();
    if s.render {
        let conf = render::render_fpm_conf(s, &desired.php);
        match write_if_changed(&s.fpm_conf_path(), conf.as_bytes(), 0o644, None) {
            Ok(true) => {
                if let Err(e) = shared.children.signal("php-fpm", Signal::SIGUSR2) {
                    errors.push(format!("reloading php-fpm: {e:#}"));
                }
            }
            Ok(false) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let mut cmds = desired.commands.clone();
    cmds.sort_by_key(|c| c.id);
    let done = last;
    for c in cmds.into_iter().filter(|c| done.is_none_or(|l| c.id > l)) {
        let r = match c.kind {
            crate::protocol::CommandKind::FlushObjectCache => flush_object_cache(s).await,
            crate::protocol::CommandKind::BackupNow => {
                Err(anyhow::anyhow!("backups are not implemented in this agent"))
            }
        };
        if let Err(e) = r {
            errors.push(format!("command {}: {e:#}", c.id));
        }
        // Done or failed, it is not retried: the error is reported once.
        last = Some(c.id);
        let _ = write_atomic(&last_file, c.id.to_string().as_bytes(), 0o600);
    }
    ApplyStatus {
        generation: desired.generation,
        ok: errors.is_empty(),
        last_command_id: last,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// Bumps the object cache's key version (see the drop-in): every cached key is gone for
/// WordPress at once, without SCAN or FLUSHDB, which the site's ACL denies.
async fn flush_object_cache(s: &Settings) -> Result<()> {
    let master = checks::redis_master(
        &s.redis_sentinels,
        &s.redis_master_name,
        &s.redis_user,
        s.redis_password.expose(),
    )
    .await?;
    checks::redis_incr(
        &master,
        &s.redis_user,
        s.redis_password.expose(),
        &format!("{}__version", s.redis_prefix),
    )
    .await?;
    Ok(())
}
