//! The lab's Traefik routes: the folder every manager's Traefik watches (file provider),
//! holding `edge-routes.yml` (stacks/: `web` → Varnish) and `sites.yml`, which the route
//! writer (`pressdock-infra routes`, [`crate::routes`]) keeps in step with the swarm's tasks.
//! The writer is a lab process on the host (the managers' namespaces share its files),
//! following the first manager's docker socket.
use super::sh::{self, progress};
use super::{Lab, SITES_NET, proc};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The folder bind-mounted at `/etc/traefik/dynamic` in every Traefik task.
pub fn dir(lab: &Lab) -> PathBuf {
    lab.path("traefik/dynamic")
}

/// Copies the static routes, starts the writer unless it runs (from this very build).
pub fn ensure(lab: &Lab) -> Result<()> {
    let d = dir(lab);
    let src = lab.repo.join("stacks/edge-routes.yml");
    let text =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    crate::routes::write_if_changed(&d.join("edge-routes.yml"), &text)?;
    if let Some(pid) = lab.procs.alive("routes") {
        if proc::runs_current_exe(pid) {
            return Ok(());
        }
        progress(
            "edge",
            "restarting the route writer (pressdock-infra was rebuilt)",
        );
    }
    lab.procs.stop("routes", Duration::from_secs(2))?;
    let exe = std::env::current_exe().context("locating pressdock-infra")?;
    let m1 = lab.topo.first_manager();
    lab.procs.spawn(
        "routes",
        super::data::DATA_CG,
        "routes",
        &lab.path("logs/routes.log"),
        &exe.to_string_lossy(),
        &[
            "routes".into(),
            "--docker-host".into(),
            m1.docker_host(),
            "--out".into(),
            d.join("sites.yml").to_string_lossy().into_owned(),
            "--network".into(),
            SITES_NET.into(),
        ],
    )?;
    progress("edge", "route writer started (log: logs/routes.log)");
    sh::wait_for(
        "the route writer's first file",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || d.join("sites.yml").exists().then_some(()),
    )
}
