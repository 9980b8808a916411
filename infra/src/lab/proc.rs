//! Long-running processes of the lab: started with a PID file, each placed in a cgroup of
//! the lab's own before it runs, and stopped by PID — never by name. The cgroup catches
//! what a process forks (containerd and its shims under dockerd, the brick and quota
//! daemons under glusterd), so `lab down` can end every descendant even after a crash.
use super::sh;
use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the PID files live: `<state>/pids/<name>.pid`, content `<pid> <marker>`.
pub struct Procs {
    pub dir: PathBuf,
}

/// The cgroup folder for `name` on this machine (cgroup v1 `pids` controller, or v2).
pub fn cgroup_dir(name: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    if v1.is_dir() {
        v1.join(name)
    } else {
        Path::new("/sys/fs/cgroup").join(name)
    }
}

/// Every lab cgroup (`pdlab-*`) in every controller hierarchy, deepest first.
pub fn lab_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                    out.push(p);
                }
            }
        }
    }
    let roots: Vec<PathBuf> = match fs::read_dir("/sys/fs/cgroup") {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            v.push(PathBuf::from("/sys/fs/cgroup"));
            v
        }
        Err(_) => vec![],
    };
    for root in roots {
        if let Ok(rd) = fs::read_dir(&root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("pdlab-") && e.path().is_dir() {
                    walk(&e.path(), &mut out);
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// PIDs in a cgroup and all its children.
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// SIGKILLs everything in a lab cgroup (by PID, repeatedly until empty) and removes it.
pub fn kill_cgroup(name: &str) -> Result<usize> {
    let dir = cgroup_dir(name);
    let mut killed = 0;
    let t0 = Instant::now();
    loop {
        let pids = cgroup_pids(&dir);
        if pids.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        for p in pids {
            if kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(killed)
}

/// Removes empty lab cgroups in every hierarchy (deepest first); returns those left.
pub fn remove_cgroups() -> Vec<PathBuf> {
    for d in lab_cgroups() {
        let _ = fs::remove_dir(&d);
    }
    lab_cgroups()
}

/// Whether `pid` runs (not a zombie) and its command line contains `marker`.
pub fn pid_alive(pid: i32, marker: &str) -> bool {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        return false;
    }
    // An empty command line is seen while a process execs or changes its user: that is
    // still our process, not a reused PID.
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.is_empty() || String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// Whether `pid` runs this very program (a rebuilt binary shows as `… (deleted)`).
pub fn runs_current_exe(pid: i32) -> bool {
    match (
        fs::read_link(format!("/proc/{pid}/exe")),
        std::env::current_exe(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

impl Procs {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }

    /// The PID recorded for `name` if that process still runs.
    pub fn alive(&self, name: &str) -> Option<i32> {
        let s = fs::read_to_string(self.file(name)).ok()?;
        let mut it = s.split_whitespace();
        let pid: i32 = it.next()?.parse().ok()?;
        let marker = it.next().unwrap_or("");
        pid_alive(pid, marker).then_some(pid)
    }

    /// Names of all recorded processes.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_suffix(".pid")
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Starts `program args` in the background, in cgroup `cgroup`, output to `log`; records
    /// its PID under `name`. `marker` must appear in its command line (guards against a
    /// reused PID when the lab later checks or stops it).
    pub fn spawn(
        &self,
        name: &str,
        cgroup: &str,
        marker: &str,
        log: &Path,
        program: &str,
        args: &[String],
    ) -> Result<i32> {
        let cg = cgroup_dir(cgroup);
        fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        if let Some(d) = log.parent() {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let logf2 = logf.try_clone().context("duplicating log handle")?;
        // The shell joins the cgroup, then becomes the program (same PID). `setsid` (which
        // does not fork: the child is no process-group leader) gives it a session and process
        // group of its own and no controlling terminal, and stdin is /dev/null: the lab
        // outlives the shell or terminal that ran `lab up` — a hangup, or a kill of that
        // shell's process group or session, does not reach the lab's servers.
        let child = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            // Descriptors 3-9 are closed: `flock /work/lab.lock pressdock-infra lab up`
            // hands its lock to us as fd 3, and a server that kept it would hold the lock
            // for as long as it runs.
            .arg(r#"exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; echo $$ > "$0" && exec "$@""#)
            .arg(cg.join("cgroup.procs"))
            .arg(program)
            .args(args)
            // Not the caller's directory: a server must not hold (or break with) a checkout
            // that is later removed (s3s-fs resolves every path against its cwd).
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .with_context(|| format!("starting {name} ({program})"))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        sh::write_file(&self.file(name), &format!("{pid} {marker}\n"))?;
        Ok(pid)
    }

    /// Stops `name`: SIGTERM, then SIGKILL after `grace`. Already gone is success.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<bool> {
        let Some(pid) = self.alive(name) else {
            let _ = fs::remove_file(self.file(name));
            return Ok(false);
        };
        stop_pid(pid, grace);
        let _ = fs::remove_file(self.file(name));
        Ok(true)
    }

    /// SIGKILL (for tests that simulate a crash): the PID file stays, the process does not.
    pub fn kill9(&self, name: &str) -> Result<i32> {
        let pid = self
            .alive(name)
            .with_context(|| format!("{name} is not running"))?;
        kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("killing {name}"))?;
        Ok(pid)
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop_pid(pid: i32, grace: Duration) {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if !pid_alive(pid, "") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(p, Signal::SIGKILL);
}
