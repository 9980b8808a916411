//! Gluster for the storage clients only: TLS on the management path (glusterd, port 24007,
//! where clients fetch the volume's layout) and on the I/O path (the bricks), with a lab CA;
//! the volume admits the certificate's name (`auth.ssl-allow`) from the storage clients'
//! addresses (`auth.allow`: the nodes and this host).
//!
//! A site's task reaches the storage address through its worker, masqueraded to the
//! worker's address, so `auth.allow` alone does not keep it out: the certificate does. The
//! key is on the host (root, 0600), never in a site's container (whose only mount is its
//! own wp-content folder).
//!
//! Gluster 10 reads its TLS identity from fixed paths (`/etc/ssl/glusterfs.{pem,key,ca}`),
//! and TLS on the management path is switched on for every Gluster process of the machine
//! by the file `/var/lib/glusterd/secure-access`: a process started before that file (or
//! before the certificates changed) speaks the old way and cannot talk to one started
//! after. So when they change, every Gluster process of the lab is stopped first (mounts,
//! glusterd, bricks, self-heal and quota daemons), then started again; the tasks whose
//! wp-content mount died with their node's mount are restarted ([`repair_task_mounts`]).
use super::data::{DATA_CG, gluster, mount_state};
use super::sh::{self, cmd, progress, run, try_out};
use super::{HOST_IP, Lab, Node, proc};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const CERT: &str = "/usr/lib/ssl/glusterfs.pem";
pub const KEY: &str = "/usr/lib/ssl/glusterfs.key";
pub const CA: &str = "/usr/lib/ssl/glusterfs.ca";
pub const SECURE_ACCESS: &str = "/var/lib/glusterd/secure-access";
/// Every file of Gluster's TLS set-up outside the lab's folder (`lab down` removes them).
pub const FILES: [&str; 4] = [CERT, KEY, CA, SECURE_ACCESS];
/// The common name of the storage certificate: the one identity the volume admits.
pub const CN: &str = "pressdock-lab-storage";

fn tls_dir(lab: &Lab) -> PathBuf {
    lab.path("gluster/tls")
}

fn openssl(args: &[&str]) -> Result<String> {
    run(&mut cmd("openssl", args))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The lab's CA and the storage certificate it signs, made once with openssl (RSA 2048, ten
/// years). Keys are 0600 in a 0700 folder.
fn ensure_certs(lab: &Lab) -> Result<()> {
    let d = tls_dir(lab);
    std::fs::create_dir_all(&d).context("creating the Gluster TLS folder")?;
    chmod(&d, 0o700)?;
    let (ca_key, ca_pem) = (d.join("ca.key"), d.join("ca.pem"));
    let (key, pem) = (d.join("storage.key"), d.join("storage.pem"));
    let s = |p: &Path| p.to_string_lossy().into_owned();
    if !(ca_key.exists() && ca_pem.exists()) {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca_pem),
            "-days",
            "3650",
            "-subj",
            "/CN=pressdock-lab-gluster-ca",
        ])
        .context("creating the lab's Gluster CA")?;
        let _ = std::fs::remove_file(&pem);
    }
    chmod(&ca_key, 0o600)?;
    let signed = pem.exists()
        && key.exists()
        && sh::ok(&mut cmd(
            "openssl",
            ["verify", "-CAfile", &s(&ca_pem), &s(&pem)],
        ));
    if !signed {
        let csr = d.join("storage.csr");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            &format!("/CN={CN}"),
        ])
        .context("creating the storage key")?;
        chmod(&key, 0o600)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca_pem),
            "-CAkey",
            &s(&ca_key),
            "-set_serial",
            &format!("0x{}", sh::random_hex(8)?),
            "-days",
            "3650",
            "-out",
            &s(&pem),
        ])
        .context("signing the storage certificate")?;
        let _ = std::fs::remove_file(&csr);
    }
    chmod(&key, 0o600)?;
    Ok(())
}

/// What every Gluster process of this machine reads: `(path, content, private)`.
fn wanted_files(lab: &Lab) -> Result<Vec<(&'static str, String, bool)>> {
    let d = tls_dir(lab);
    let read = |f: &str| {
        std::fs::read_to_string(d.join(f)).with_context(|| format!("reading {f} of the lab CA"))
    };
    Ok(vec![
        (CERT, read("storage.pem")?, false),
        (KEY, read("storage.key")?, true),
        // The CA alone: a peer must present a certificate the lab's CA signed.
        (CA, read("ca.pem")?, false),
        // Depth 1: the peer's certificate and the CA that signed it.
        (
            SECURE_ACCESS,
            "option transport.socket.ssl-cert-depth 1\n".to_owned(),
            false,
        ),
    ])
}

/// When the TLS files last changed, if they are all in place.
fn files_changed_at() -> Option<SystemTime> {
    FILES
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// The lab's Gluster processes: those of the data tier's cgroup that run the Gluster binary
/// (glusterd, bricks, self-heal and quota daemons, the nodes' mounts).
fn gluster_pids() -> Vec<i32> {
    proc::cgroup_pids(&proc::cgroup_dir(DATA_CG))
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e.to_string_lossy().ends_with("/glusterfsd"))
        })
        .collect()
}

/// When a process started (wall clock), from its start in clock ticks after boot.
fn started_at(pid: i32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: state is the 3rd field, starttime
    // the 22nd.
    let ticks: u64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let boot = SystemTime::now().checked_sub(Duration::from_secs_f64(uptime))?;
    // USER_HZ is 100 on Linux.
    boot.checked_add(Duration::from_millis(ticks * 10))
}

/// Gluster processes started before the TLS files were last written: they speak the
/// management protocol without TLS (or with an old certificate).
fn stale_processes(since: SystemTime) -> Vec<i32> {
    gluster_pids()
        .into_iter()
        .filter(|p| started_at(*p).is_some_and(|t| t + Duration::from_secs(1) < since))
        .collect()
}

/// Stops every Gluster process of the lab: the nodes' mounts (unmounted), glusterd, then
/// what it started (bricks, self-heal and quota daemons and their auxiliary mounts).
fn stop_all(lab: &Lab) -> Result<()> {
    for n in lab.topo.nodes() {
        lab.procs.stop(
            &format!("gluster-mount-{}", n.host()),
            Duration::from_secs(5),
        )?;
        let mnt = n.gluster_mount();
        if mount_state(&mnt).0 {
            let _ = run(&mut cmd("umount", ["-l", &*mnt.to_string_lossy()]));
        }
    }
    lab.procs.stop("glusterd", Duration::from_secs(10))?;
    for pid in gluster_pids() {
        proc::stop_pid(pid, Duration::from_secs(5));
    }
    // glusterd's own clients (the quota auxiliary mount) leave dead FUSE mounts behind.
    let aux: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - fuse.glusterfs "))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with("/run/gluster/") || m.starts_with("/var/run/gluster/"))
        .collect();
    for m in aux {
        let _ = run(&mut cmd("umount", ["-l", &m]));
    }
    Ok(())
}

/// The CA and certificate exist, the files every Gluster process reads hold them, and no
/// Gluster process of the lab predates them (else all are stopped, to be started again by
/// the next steps: glusterd, the volume, the mounts).
pub fn ensure(lab: &Lab) -> Result<()> {
    ensure_certs(lab)?;
    let wanted = wanted_files(lab)?;
    let current = wanted
        .iter()
        .all(|(p, c, _)| std::fs::read_to_string(p).ok().as_deref() == Some(c.as_str()));
    let stale = match (current, files_changed_at()) {
        (true, Some(t)) => !stale_processes(t).is_empty(),
        _ => true,
    };
    if !stale {
        return Ok(());
    }
    if !gluster_pids().is_empty() {
        progress(
            "gluster",
            "switching every Gluster process to TLS: stopping mounts, glusterd and bricks",
        );
        stop_all(lab)?;
    }
    for (path, content, private) in &wanted {
        if std::fs::read_to_string(path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        if *private {
            sh::write_private(Path::new(path), content)?;
        } else {
            sh::write_file(Path::new(path), content)?;
        }
    }
    Ok(())
}

/// Who may connect to the bricks: this host (glusterd's own daemons, quota) and the nodes.
pub fn storage_clients(lab: &Lab) -> String {
    let mut v = vec![HOST_IP.to_owned()];
    v.extend(lab.topo.nodes().into_iter().map(|n| n.ip));
    v.join(",")
}

/// The volume's access options: TLS on both sides of the I/O path, the certificate's name,
/// the clients' addresses. A change of the TLS options restarts the bricks (their listener
/// takes them at start).
pub fn ensure_volume_options(lab: &Lab) -> Result<()> {
    let info = gluster(&["volume", "info", "sites"])?;
    let has = |k: &str, v: &str| info.lines().any(|l| l.trim() == format!("{k}: {v}"));
    let clients = storage_clients(lab);
    let mut restart = false;
    for (k, v) in [
        ("client.ssl", "on"),
        ("server.ssl", "on"),
        ("auth.ssl-allow", CN),
        ("auth.allow", clients.as_str()),
    ] {
        if !has(k, v) {
            gluster(&["volume", "set", "sites", k, v]).with_context(|| format!("setting {k}"))?;
            restart |= k != "auth.allow";
        }
    }
    if restart && info.contains("Status: Started") {
        progress("gluster", "TLS options changed: restarting the bricks");
        gluster(&["volume", "stop", "sites"]).context("stopping volume sites")?;
        gluster(&["volume", "start", "sites"]).context("starting volume sites")?;
    }
    Ok(())
}

/// Restarts the tasks on `node` whose wp-content mount is dead (the node's Gluster mount
/// was re-established under them: they keep the old, disconnected one until they restart).
/// Swarm tasks restart through their service (`--force`, not waited for). Returns how many.
pub fn repair_task_mounts(lab: &Lab, node: &Node) -> Result<usize> {
    let root = node.gluster_mount();
    let ids: Vec<String> = try_out(&mut node.docker(["ps", "-q"]))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let mut args = vec![
        "inspect".to_owned(),
        "--format".to_owned(),
        "{{.ID}}|{{.State.Pid}}|{{index .Config.Labels \"com.docker.swarm.service.name\"}}|\
         {{range .Mounts}}{{.Source}}>{{.Destination}};{{end}}"
            .to_owned(),
    ];
    args.extend(ids);
    let out = try_out(&mut node.docker(&args)).unwrap_or_default();
    let mut services = Vec::new();
    let mut containers = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.splitn(4, '|').collect();
        let [id, pid, service, mounts] = f[..] else {
            continue;
        };
        let dead = mounts
            .split(';')
            .filter_map(|m| m.split_once('>'))
            .filter(|(src, _)| Path::new(src).starts_with(&root))
            .any(|(_, dst)| {
                std::fs::metadata(format!("/proc/{pid}/root{dst}"))
                    .is_err_and(|e| e.raw_os_error() == Some(nix::libc::ENOTCONN))
            });
        if !dead {
            continue;
        }
        if service.is_empty() || service == "<no value>" {
            containers.push(id.to_owned());
        } else {
            services.push(service.to_owned());
        }
    }
    let m1 = lab.topo.first_manager();
    for s in &services {
        run(&mut m1.docker(["service", "update", "--force", "--detach", s]))
            .with_context(|| format!("restarting service {s}"))?;
    }
    for c in &containers {
        run(&mut node.docker(["restart", c])).with_context(|| format!("restarting {c}"))?;
    }
    let n = services.len() + containers.len();
    if n > 0 {
        progress(
            "gluster",
            format!(
                "{}: restarted {n} task(s) whose wp-content mount had died",
                node.host()
            ),
        );
    }
    Ok(n)
}
