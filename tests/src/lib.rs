//! End-to-end tests that cross crates live in tests/tests/; what several of them need on
//! the lab lives here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the lab keeps the nodes' docker sockets (`<host>.sock`).
pub const LAB_RUN: &str = "/var/lib/pressdock-lab/run";

/// `docker -H unix://<sock> <args>`: (exit ok, stdout then stderr).
pub fn docker(sock: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/docker")
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running docker: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The running container of the lab's demo site (`lab up` makes `demo.lab.test`).
pub struct DemoTask {
    /// The node's docker socket.
    pub sock: PathBuf,
    /// The node's host name (`pdlab-w1`, …).
    pub host: String,
    /// The container's id.
    pub id: String,
    /// The container's name (`wp_<site>.<slot>.<task id>`).
    pub name: String,
    /// The site's id.
    pub site: String,
}

/// The demo site's running task. Other tests' sites may be mid-delete, and the demo's own
/// task may be between two (earlier lab tests kill nodes and move sites): this waits for
/// the swarm to run it again, bounded by what a task start takes at most (300 s).
pub fn demo_site_task() -> DemoTask {
    let run = Path::new(LAB_RUN);
    let (ok, out) = docker(
        &run.join("pdlab-m1.sock"),
        &[
            "service",
            "ls",
            "--filter",
            "label=pressdock.route.hosts=demo.lab.test",
            "--format",
            "{{.Name}}",
        ],
    );
    assert!(ok, "listing the demo site's service: {out}");
    let service = out
        .lines()
        .next()
        .expect("the demo site's service (lab up makes demo.lab.test)")
        .to_owned();
    let find = || {
        std::fs::read_dir(run)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .find_map(|sock| {
                let (ok, out) = docker(
                    &sock,
                    &[
                        "ps",
                        "--filter",
                        &format!("label=com.docker.swarm.service.name={service}"),
                        "--format",
                        "{{.ID}} {{.Names}}",
                    ],
                );
                let line = out.lines().next().filter(|_| ok)?.to_owned();
                let (id, name) = line.split_once(' ')?;
                let host = sock.file_stem()?.to_string_lossy().into_owned();
                Some((sock.clone(), host, id.to_owned(), name.to_owned()))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (sock, host, id, name) = loop {
        match find() {
            Some(t) => break t,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(2)),
            None => panic!("the demo site's task ({service}) did not run within 300 s"),
        }
    };
    let site = name
        .trim_start_matches("wp_")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    DemoTask {
        sock,
        host,
        id,
        name,
        site,
    }
}
