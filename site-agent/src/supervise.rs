//! Supervision of the site's processes (php-fpm and nginx): start them, restart one that
//! died with exponential backoff, send them signals (reload), and stop them gracefully
//! on shutdown within a grace period, then kill what is left.
//!
//! The container runs with `init: true` (docker-init is PID 1 and reaps orphans); the
//! agent is its child and the parent of the supervised processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;

/// One supervised process.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// `php-fpm`, `nginx`: names in logs, metrics and `/healthz`.
    pub name: String,
    pub argv: Vec<String>,
    /// Sent first on shutdown: SIGQUIT is the graceful stop of both nginx and php-fpm
    /// (finish the requests in flight); SIGKILL follows after the grace period.
    pub stop_signal: Signal,
}

/// What `/healthz`, `/metrics` and the reports show of a child.
#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    /// Restarts after the child died (not counting the first start).
    pub restarts: u64,
    /// How the last run ended, e.g. `exit status: 1` or `signal: 9 (SIGKILL)`.
    pub last_exit: Option<String>,
    #[serde(skip)]
    pub down_since: Option<Instant>,
}

/// A cheap handle to the children's state.
#[derive(Clone, Debug, Default)]
pub struct Children(Arc<Mutex<Vec<ChildStatus>>>);

impl Children {
    pub fn snapshot(&self) -> Vec<ChildStatus> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut ChildStatus)) {
        if let Ok(mut g) = self.0.lock()
            && let Some(c) = g.get_mut(i)
        {
            f(c);
        }
    }

    /// Sends `sig` to the running child `name` (e.g. SIGUSR2: php-fpm reloads its config).
    pub fn signal(&self, name: &str, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .snapshot()
            .into_iter()
            .find(|c| c.name == name)
            .and_then(|c| c.pid)
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        let pid = i32::try_from(pid)?;
        kill(Pid::from_raw(pid), sig)?;
        Ok(())
    }

    /// A child down for longer than `limit` (crash-looping or failing to start).
    pub fn down_longer_than(&self, limit: Duration) -> Option<String> {
        self.snapshot()
            .into_iter()
            .find(|c| c.down_since.is_some_and(|t| t.elapsed() > limit))
            .map(|c| c.name)
    }
}

/// Runs the children until [`Supervisor::shutdown`].
pub struct Supervisor {
    children: Children,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts every child now (in order; each restarts on its own).
    pub fn start(specs: Vec<ChildSpec>, grace: Duration) -> Self {
        let children = Children(Arc::new(Mutex::new(
            specs
                .iter()
                .map(|s| ChildStatus {
                    name: s.name.clone(),
                    pid: None,
                    running: false,
                    restarts: 0,
                    last_exit: None,
                    down_since: Some(Instant::now()),
                })
                .collect(),
        )));
        let (stop, rx) = watch::channel(false);
        let tasks = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| tokio::spawn(run_child(spec, i, children.clone(), rx.clone(), grace)))
            .collect();
        Self {
            children,
            stop,
            tasks,
        }
    }

    pub fn children(&self) -> Children {
        self.children.clone()
    }

    /// Stops every child (stop signal, then SIGKILL after the grace period) and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn run_child(
    spec: ChildSpec,
    i: usize,
    children: Children,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if !first {
            children.update(i, |c| c.restarts += 1);
        }
        first = false;
        let started = Instant::now();
        let spawned = spec
            .argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))
            .and_then(|(prog, args)| {
                Command::new(prog)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .spawn()
            });
        match spawned {
            Err(e) => {
                tracing::error!(child = %spec.name, error = %e, "cannot start child");
                children.update(i, |c| c.last_exit = Some(format!("spawn failed: {e}")));
            }
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(child = %spec.name, pid, "child started");
                children.update(i, |c| {
                    c.pid = pid;
                    c.running = true;
                    c.down_since = None;
                });
                tokio::select! {
                    status = child.wait() => {
                        let how = match status {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("wait failed: {e}"),
                        };
                        tracing::warn!(child = %spec.name, pid, exit = %how,
                            ran_ms = started.elapsed().as_millis() as u64, "child exited");
                        children.update(i, |c| {
                            c.pid = None;
                            c.running = false;
                            c.last_exit = Some(how);
                            c.down_since = Some(Instant::now());
                        });
                    }
                    _ = stopped(&mut stop) => {
                        let how = stop_child(&spec, &mut child, grace).await;
                        children.update(i, |c| {
                            c.pid = None;
                            c.running = false;
                            c.last_exit = Some(how);
                        });
                        return;
                    }
                }
            }
        }
        let delay = backoff.next_delay(started.elapsed());
        tracing::info!(child = %spec.name, delay_ms = delay.as_millis() as u64, "restarting child");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once a stop was asked for (or the supervisor is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn stop_child(spec: &ChildSpec, child: &mut Child, grace: Duration) -> String {
    let t0 = Instant::now();
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), spec.stop_signal);
    }
    let how = match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(s)) => s.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            tracing::warn!(child = %spec.name, grace_ms = grace.as_millis() as u64,
                "child did not stop within the grace period; killing it");
            let _ = child.kill().await;
            "killed after the grace period".to_owned()
        }
    };
    tracing::info!(child = %spec.name, exit = %how, stop_ms = t0.elapsed().as_millis() as u64, "child stopped");
    how
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, cmd: &str) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            argv: cmd.split_whitespace().map(str::to_owned).collect(),
            stop_signal: Signal::SIGTERM,
        }
    }

    async fn wait_until(mut f: impl FnMut() -> bool) {
        for _ in 0..100 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached in 5 s");
    }

    #[tokio::test]
    async fn restarts_a_dying_child_and_kills_one_ignoring_the_stop_signal() {
        // `true` exits at once: restarted with backoff (0.5 s, 1 s, ...).
        // The shell ignores SIGTERM: killed after the grace period.
        let sup = Supervisor::start(
            vec![
                spec("quick", "true"),
                ChildSpec {
                    argv: vec!["sh".into(), "-c".into(), "trap '' TERM; sleep 5".into()],
                    ..spec("stubborn", "unused")
                },
            ],
            Duration::from_millis(300),
        );
        let ch = sup.children();
        wait_until(|| ch.snapshot()[0].restarts >= 1).await;
        wait_until(|| ch.snapshot()[1].running).await;
        assert!(ch.snapshot()[0].last_exit.as_deref() == Some("exit status: 0"));
        let t0 = Instant::now();
        sup.shutdown().await;
        assert!(t0.elapsed() < Duration::from_secs(3));
        let s = ch.snapshot();
        assert!(!s[1].running);
    }
}
