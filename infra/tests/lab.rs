//! Lab tests: each checks the real thing on the real lab (1 manager + 2 workers, or as
//! many workers as the running lab has: `lab up` keeps the count).
//!
//! Gated: they run only with `PRESSDOCK_LAB_TESTS=1` (CI sets it) and need root. Each test
//! first runs `pressdock-infra lab up --no-platform`, which builds the lab the first time and
//! afterwards only converges — so a test that kills a Galera node or the Redis master is
//! healed by the next test's `lab up`. The tests share one machine-wide lab, so they take a
//! lock and run one at a time; `zz_lab_down_leaves_nothing` sorts last and tears the lab
//! down. CI: `PRESSDOCK_LAB_TESTS=1 cargo test -p infra --test lab -- --test-threads=1`.
use infra::lab::{self, HOST_IP, Lab, STATE, Secrets, data, down, ports, proc::Procs};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static LOCK: Mutex<()> = Mutex::new(());

fn enabled() -> bool {
    if std::env::var("PRESSDOCK_LAB_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set PRESSDOCK_LAB_TESTS=1 to run the lab tests (root, ~2 min)");
        return false;
    }
    true
}

fn infra() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pressdock-infra"))
}

/// The start of most tests here: `None` when the lab tests do not run; else the lock that
/// runs them one at a time (held) and the lab, brought up.
fn begin() -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    if !enabled() {
        return None;
    }
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Some((guard, lab_up()))
}

/// Brings the lab up (or converges it) and returns a handle on it.
fn lab_up() -> Lab {
    let t0 = Instant::now();
    let out = infra()
        .args(["lab", "up", "--no-platform"])
        .output()
        .expect("run pressdock-infra lab up");
    assert!(
        out.status.success(),
        "lab up failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("lab up: {:.1}s", t0.elapsed().as_secs_f64());
    Lab {
        topo: lab::saved_topology().expect("topology after lab up"),
        secrets: Secrets::load_or_create().expect("secrets"),
        procs: Procs {
            dir: Path::new(STATE).join("pids"),
        },
        repo: lab::repo_root(),
    }
}

/// The tests' wait loop: asks `check` every `every_ms` until it gives a value, for at most
/// `within_s` seconds (`lab::sh::wait_for`); the test fails naming what it waited for.
fn wait_until<T>(what: &str, within_s: u64, every_ms: u64, check: impl FnMut() -> Option<T>) -> T {
    lab::sh::wait_for(
        what,
        Duration::from_secs(within_s),
        Duration::from_millis(every_ms),
        check,
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn rand_suffix() -> String {
    lab::sh::random_hex(4).expect("random")
}

/// SQL over TCP as the lab admin; `Err` carries the client's stderr.
fn sql(lab: &Lab, port: u16, q: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--connect-timeout=3",
            "-h",
            HOST_IP,
            "-P",
            &port.to_string(),
            "-u",
            "pdadmin",
            &format!("-p{}", lab.secrets.galera_admin),
            "-N",
            "-B",
            "-e",
            q,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn galera_write_on_one_node_is_read_on_another() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let v = rand_suffix();
    let p1 = data::galera_port(1);
    let p3 = data::galera_port(lab.topo.galera_nodes);
    sql(
        &lab,
        p1,
        &format!(
            "CREATE DATABASE IF NOT EXISTS labtest; CREATE TABLE IF NOT EXISTS labtest.kv \
             (k VARCHAR(32) PRIMARY KEY, v VARCHAR(64)); INSERT INTO labtest.kv VALUES ('{v}', 'from-g1')"
        ),
    )
    .expect("write on g1");
    let read = sql(
        &lab,
        p3,
        // Galera applies a commit on the other nodes asynchronously after certifying
        // it: a causal read (wsrep_sync_wait) waits until g3 has applied it.
        &format!("SET SESSION wsrep_sync_wait = 1; SELECT v FROM labtest.kv WHERE k = '{v}'"),
    )
    .expect("read on g3");
    assert_eq!(read, "from-g1", "row written on g1 read back on g3");
    let port = sql(&lab, p3, "SELECT @@port").expect("port of g3");
    assert_eq!(port, p3.to_string(), "the read really went to another node");
}

#[test]
fn router_keeps_taking_writes_after_the_active_galera_node_is_killed() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let r = ports::ROUTER;
    let tbl = format!("labtest.w_{}", rand_suffix());
    sql(
        &lab,
        r,
        &format!("CREATE DATABASE IF NOT EXISTS labtest; CREATE TABLE {tbl} (i INT PRIMARY KEY)"),
    )
    .expect("create table through the router");
    let active: u16 = sql(&lab, r, "SELECT @@port")
        .expect("router answers")
        .parse()
        .expect("port");
    let node = (1..=lab.topo.galera_nodes)
        .find(|n| data::galera_port(*n) == active)
        .expect("active node is a lab node");
    let mut worst_gap = Duration::ZERO;
    for i in 0..40 {
        if i == 10 {
            let pid = lab
                .procs
                .kill9(&format!("galera-{node}"))
                .expect("kill active node");
            eprintln!("killed galera-{node} (pid {pid}), the router's active server");
        }
        let t0 = Instant::now();
        loop {
            match sql(&lab, r, &format!("INSERT INTO {tbl} VALUES ({i})")) {
                Ok(_) => break,
                // A write whose connection died may or may not have committed.
                Err(e) if e.contains("Duplicate entry") => break,
                Err(e) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "write {i} still failing after 20 s: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        worst_gap = worst_gap.max(t0.elapsed());
    }
    let count = sql(&lab, r, &format!("SELECT COUNT(*) FROM {tbl}")).expect("count");
    assert_eq!(count, "40", "every write landed");
    let now: u16 = sql(&lab, r, "SELECT @@port")
        .expect("router")
        .parse()
        .expect("port");
    assert_ne!(now, active, "the router moved to another node");
    eprintln!(
        "router failover: longest write wait {:.1}s",
        worst_gap.as_secs_f64()
    );
    assert!(
        worst_gap < Duration::from_secs(10),
        "failover took {worst_gap:?}"
    );
}

#[test]
fn sentinel_promotes_the_replica_when_the_master_is_killed() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let before = data::sentinel_master(&lab.secrets.redis_admin).expect("sentinels know a master");
    let port: u16 = before
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let n = (1..=2u8)
        .find(|n| data::redis_port(*n) == port)
        .expect("lab redis");
    let key = format!("labtest:{}", rand_suffix());
    data::redis_cli(&lab, port, &["SET", &key, "v1"]).expect("write to master");
    // Let the replica receive it before the master dies.
    data::redis_cli(&lab, port, &["WAIT", "1", "2000"]).expect("WAIT");
    let t0 = Instant::now();
    lab.procs.kill9(&format!("redis-{n}")).expect("kill master");
    let after = wait_until("Sentinel failover", 20, 200, || {
        data::sentinel_master(&lab.secrets.redis_admin).filter(|m| *m != before)
    });
    eprintln!(
        "sentinel failover in {:.1}s: {before} -> {after}",
        t0.elapsed().as_secs_f64()
    );
    let new_port: u16 = after
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let role = data::redis_cli(&lab, new_port, &["ROLE"]).expect("role");
    assert!(role.starts_with("master"), "promoted node says {role}");
    let v = data::redis_cli(&lab, new_port, &["GET", &key]).expect("get");
    assert_eq!(v.trim(), "v1", "data survived the failover");
    data::redis_cli(&lab, new_port, &["SET", &key, "v2"]).expect("new master takes writes");
}

#[test]
fn gluster_file_crosses_nodes_and_quota_refuses_writes() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let nodes = lab.topo.nodes();
    let (a, b) = (&nodes[1], &nodes[2]);
    let dir = format!("labtest-{}", rand_suffix());
    std::fs::create_dir_all(a.gluster_mount().join(&dir)).expect("mkdir via node a");
    std::fs::write(
        a.gluster_mount().join(&dir).join("hello.txt"),
        "written on a",
    )
    .expect("write via a");
    let read = std::fs::read_to_string(b.gluster_mount().join(&dir).join("hello.txt"))
        .expect("read via b");
    assert_eq!(read, "written on a");

    data::gluster(&[
        "volume",
        "quota",
        "sites",
        "limit-usage",
        &format!("/{dir}"),
        "5MB",
    ])
    .expect("set quota");
    let path = b.gluster_mount().join(&dir).join("big.bin");
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0usize;
    let mut refused = None;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).expect("create big.bin");
        for _ in 0..20 {
            match f.write_all(&chunk).and_then(|_| f.sync_all()) {
                Ok(()) => written += 1,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    }
    let err = refused.expect("quota of 5 MB refused a 20 MB write");
    eprintln!("quota refused after {written} MB: {err}");
    assert!(written <= 6, "wrote {written} MB into a 5 MB quota");
    assert_eq!(err.raw_os_error(), Some(122), "EDQUOT, got {err}");
    let _ = std::fs::remove_dir_all(a.gluster_mount().join(&dir));
}

#[test]
fn labelled_service_lands_on_the_right_worker() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let m1 = lab.topo.first_manager();
    let target = lab.topo.nodes().into_iter().last().expect("a worker");
    let name = format!("labtest-{}", rand_suffix());
    let out = m1
        .docker([
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            &name,
            "--constraint",
            &format!("node.labels.pressdock.node=={}", target.name),
            "--network",
            lab::SITES_NET,
            "--entrypoint",
            "/entrypoint.sh",
            "local/wordpress:dev",
        ])
        .output()
        .expect("docker service create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = lab::sh::wait_for(
        "the labelled task to run",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let o = m1
                .docker([
                    "service",
                    "ps",
                    &name,
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.Node}} {{.CurrentState}}",
                ])
                .output()
                .ok()?;
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            let l = s.lines().next()?.to_owned();
            l.contains("Running")
                .then(|| l.split_whitespace().next().unwrap_or("").to_owned())
        },
    );
    let _ = m1.docker(["service", "rm", &name]).output();
    assert_eq!(
        node.expect("task running"),
        target.host(),
        "placed on the labelled worker"
    );
}

#[test]
fn edge_request_goes_through_traefik_and_varnish_miss_then_hit() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let edge = format!("127.0.0.1:{}", ports::EDGE);
    let path = format!("/wp-includes/css/dashicons.min.css?lab={}", rand_suffix());
    let first = lab::http::get(&edge, &path, "hello.lab.test").expect("first request");
    assert_eq!(first.status, 200, "body: {}", first.body);
    assert!(
        first.body.contains("dashicons"),
        "the site's own file came back"
    );
    assert_eq!(first.header("X-Pressdock-Cache"), Some("MISS"));
    let second = lab::http::get(&edge, &path, "hello.lab.test").expect("second request");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("X-Pressdock-Cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    // wp-admin is never cached.
    let admin = lab::http::get(&edge, "/wp-admin/", "hello.lab.test").expect("wp-admin");
    assert_eq!(admin.header("X-Pressdock-Cache"), Some("PASS"));

    // Each Varnish admin port answers the CLI protocol with our secret (issue 4 hot-loads
    // the host table this way).
    for n in lab.topo.cache_nodes() {
        let addr = format!("{}:{}", n.ip, ports::VARNISH_ADMIN);
        let mut cli =
            lab::varnish_cli::Cli::connect(&addr, &Path::new(STATE).join("varnish/secret"))
                .expect("varnish admin port answers with our secret");
        let out = cli.ok("vcl.list").expect("vcl.list");
        assert!(out.contains("active"), "vcl.list on {addr}: {out}");
    }
}

/// The session id of a process (field 6 of /proc/<pid>/stat).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The lab outlives the shell that ran `lab up` (issue 10, item 10): servers that `lab up`
/// starts live in sessions of their own, so a hangup and a SIGKILL of the starting shell's
/// process group and session leave them running and answering.
#[test]
fn lab_servers_outlive_the_shell_that_started_them() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    // Two stateless servers for the next `lab up` to start: the DNS server and the route
    // writer (the other servers hold data other tests and helpers use).
    for name in ["dns", "routes"] {
        lab.procs
            .stop(name, Duration::from_secs(5))
            .expect("stopping a lab server");
    }
    let done = Path::new(STATE).join("test-shell-done");
    let _ = std::fs::remove_file(&done);
    // `setsid` makes the shell the leader of a new session and process group, like a
    // terminal's login shell; it runs `lab up`, then waits to be killed.
    let mut shell = Command::new("setsid")
        .args([
            "sh",
            "-c",
            r#""$0" lab up --no-platform >/dev/null 2>&1; touch "$1"; exec sleep 600"#,
            env!("CARGO_BIN_EXE_pressdock-infra"),
        ])
        .arg(&done)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("starting the shell");
    let shell_pid = shell.id() as i32;
    wait_until("`lab up` in the shell", 300, 250, || {
        done.exists().then_some(())
    });
    let started: Vec<(&str, i32)> = ["dns", "routes"]
        .into_iter()
        .map(|n| (n, lab.procs.alive(n).expect("started by lab up")))
        .collect();
    for (name, pid) in &started {
        assert_ne!(
            session_of(*pid),
            Some(shell_pid),
            "{name} runs in a session of its own"
        );
    }
    // The terminal goes away: SIGHUP to the shell's process group, then SIGKILL to it.
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(shell_pid), Signal::SIGHUP);
    killpg(Pid::from_raw(shell_pid), Signal::SIGKILL).expect("killing the shell's group");
    let _ = shell.wait();
    std::thread::sleep(Duration::from_secs(1));
    for (name, pid) in &started {
        assert_eq!(
            lab.procs.alive(name),
            Some(*pid),
            "{name} still runs after its shell ended"
        );
    }
    assert!(
        lab::dns::answers(&format!("{HOST_IP}:{}", lab::dns::PORT)),
        "the DNS server answers"
    );
    let _ = std::fs::remove_file(&done);
    // The route writer still follows the swarm: the lab's site answers through the edge.
    let r = lab::http::get(
        &format!("127.0.0.1:{}", ports::EDGE),
        "/pressdock-health?survive=1",
        "hello.lab.test",
    )
    .expect("edge answers");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("X-Pressdock-Cache").is_some(), "through Varnish");
}

#[test]
fn zz_lab_down_leaves_nothing() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    // PIDs the lab recorded, to check they are all gone afterwards.
    let pids: Vec<i32> = lab
        .procs
        .names()
        .iter()
        .filter_map(|n| lab.procs.alive(n))
        .collect();
    assert!(!pids.is_empty(), "the lab recorded its processes");
    let out = infra().args(["lab", "down"]).output().expect("lab down");
    assert!(
        out.status.success(),
        "lab down failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = down::leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    for p in pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists() || !lab::proc::pid_alive(p, ""),
            "pid {p} still runs"
        );
    }
    assert!(!Path::new(STATE).exists(), "{STATE} removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains("pressdock-lab") && !mounts.contains("/run/pdlab"),
        "no lab mounts"
    );
    let procs_with_state: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(STATE) || c.contains("/run/pdlab"))
        .collect();
    assert!(
        procs_with_state.is_empty(),
        "processes of the lab remain: {procs_with_state:?}"
    );
}

/// The VCL's rules, each tested by a `.vtc` file under configs/varnish/tests (not gated:
/// needs only `varnishtest`, no root and no lab).
#[test]
fn varnish_vcl_rules_pass_varnishtest() {
    if Command::new("varnishtest").arg("-h").output().is_err() {
        eprintln!("skipped: varnishtest not installed (apt-get install varnish)");
        return;
    }
    let dir = lab::repo_root().join("configs/varnish/tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("configs/varnish/tests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "vtc"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "vtc files found: {files:?}");
    let out = Command::new("varnishtest")
        .arg("-j2")
        .args(&files)
        .output()
        .expect("run varnishtest");
    assert!(
        out.status.success(),
        "varnishtest failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ------------------------------------------------------------ moves and worker failures

/// The nginx config of the test sites: each answer names the node the task runs on
/// (the service sets the container's host name to the node's).
const TASK_NGINX_CONF: &str = "daemon off; pid /tmp/nginx.pid; error_log stderr warn; \
worker_processes 1; events { worker_connections 256; } http { access_log off; server { \
listen 80; location / { default_type text/plain; return 200 \"lab-task on $hostname\\n\"; } } }";

/// What the site agent does on SIGTERM (issue 6): report not-ready at once, keep serving
/// for 5 s (so the routers drop the task first), then stop.
const TASK_SCRIPT: &str = "printf '%s' \"$NGINX_CONF\" > /tmp/nginx.conf; \
nginx -c /tmp/nginx.conf & pid=$!; \
trap 'rm -f /tmp/ready; sleep 5; kill -QUIT $pid' TERM; \
touch /tmp/ready; wait $pid; wait $pid";

/// A service shaped like a site's (backends::swarm): DNSRR on the sites network, route
/// labels (`pressdock.route.*`, read by the route writer), start-first updates, a health check, a stop grace
/// period; it runs nginx from the WordPress image. Its host `<name>.t.lab.test` is a
/// static host of the lab's Varnish. Returns the host.
fn create_site_like_service(lab: &Lab, name: &str, constraint: &str) -> String {
    let host = format!("{name}.t.lab.test");
    let m1 = lab.topo.first_manager();
    let out = m1
        .docker([
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            name,
            "--constraint",
            constraint,
            "--network",
            lab::SITES_NET,
            "--endpoint-mode",
            "dnsrr",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "1",
            "--stop-grace-period",
            "20s",
            "--health-cmd",
            "test -e /tmp/ready",
            "--health-interval",
            "1s",
            "--health-timeout",
            "1s",
            "--health-retries",
            "1",
            "--hostname",
            "{{.Node.Hostname}}",
            "--env",
            &format!("NGINX_CONF={TASK_NGINX_CONF}"),
            "--label",
            &format!("{}={host}", infra::routes::LABEL_HOSTS),
            "--label",
            &format!("{}={}", infra::routes::LABEL_NETWORK, lab::SITES_NET),
            "--entrypoint",
            "sh",
            "local/wordpress:dev",
            "-c",
            TASK_SCRIPT,
        ])
        .output()
        .expect("docker service create");
    assert!(
        out.status.success(),
        "service create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    host
}

/// Nodes running a task of `name` (desired state running, current state Running).
fn running_on(lab: &Lab, name: &str) -> Vec<String> {
    let o = lab
        .topo
        .first_manager()
        .docker([
            "service",
            "ps",
            name,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ])
        .output()
        .expect("docker service ps");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("Running"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// One request through the whole edge (Traefik web → Varnish → Traefik internal → task),
/// with a fresh query so that Varnish never answers from its cache.
fn edge_get(host: &str, n: u64) -> Result<lab::http::Response, String> {
    lab::http::get(
        &format!("127.0.0.1:{}", ports::EDGE),
        &format!("/?n={n}"),
        host,
    )
    .map_err(|e| format!("{e:#}"))
}

/// Waits until the edge serves `host` from a task on `node` (host name `pdlab-…`).
fn wait_served_from(host: &str, node: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    let want = format!("lab-task on {node}");
    wait_until(
        &format!("{host} served from {node}"),
        within.as_secs(),
        300,
        || {
            edge_get(host, t0.elapsed().as_micros() as u64)
                .ok()
                .filter(|r| r.status == 200 && r.body.trim() == want)
                .map(|_| ())
        },
    );
    t0.elapsed()
}

/// Removes the test service even when the test fails.
struct ServiceGuard<'a>(&'a Lab, String);
impl Drop for ServiceGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .topo
            .first_manager()
            .docker(["service", "rm", &self.1])
            .output();
    }
}

#[test]
fn task_moves_to_another_worker_without_a_failed_request() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let workers: Vec<lab::Node> = lab
        .topo
        .nodes()
        .into_iter()
        .filter(|n| n.role == lab::Role::Worker)
        .collect();
    assert!(workers.len() >= 2, "needs two workers");
    let (from, to) = (&workers[0], &workers[1]);
    let name = format!("mv-{}", rand_suffix());
    let host = create_site_like_service(
        &lab,
        &name,
        &format!("node.labels.pressdock.node=={}", from.name),
    );
    let _svc = ServiceGuard(&lab, name.clone());
    let routed = wait_served_from(&host, &from.host(), Duration::from_secs(90));
    eprintln!(
        "{host} routed through the edge {:.1}s after create",
        routed.as_secs_f64()
    );

    // About 20 requests a second, each a cache miss, until the move is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_host = host.clone();
    let loop_stop = stop.clone();
    let requests = std::thread::spawn(move || {
        let mut results = Vec::new();
        let mut n = 0u64;
        while !loop_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            n += 1;
            let r = edge_get(&loop_host, n);
            results.push((r, t.elapsed()));
            std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
        }
        results
    });
    std::thread::sleep(Duration::from_secs(3));
    let t_move = Instant::now();
    let out = lab
        .topo
        .first_manager()
        .docker([
            "service",
            "update",
            "--detach",
            "--force",
            "--constraint-rm",
            &format!("node.labels.pressdock.node=={}", from.name),
            "--constraint-add",
            &format!("node.labels.pressdock.node=={}", to.name),
            &name,
        ])
        .output()
        .expect("docker service update");
    assert!(
        out.status.success(),
        "service update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("one task, on the other worker", 90, 250, || {
        (running_on(&lab, &name) == vec![to.host()]).then_some(())
    });
    let converged = t_move.elapsed();
    // The old task serves 5 s after SIGTERM; keep asking past that and Traefik's refresh.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = requests.join().expect("request loop");

    let (want_from, want_to) = (
        format!("lab-task on {}", from.host()),
        format!("lab-task on {}", to.host()),
    );
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(r, _)| match r {
            Ok(r)
                if r.status == 200 && (r.body.trim() == want_from || r.body.trim() == want_to) =>
            {
                None
            }
            Ok(r) => Some(format!("HTTP {} {:?}", r.status, r.body.trim())),
            Err(e) => Some(e.clone()),
        })
        .collect();
    let from_old = results
        .iter()
        .filter(|(r, _)| r.as_ref().is_ok_and(|r| r.body.trim() == want_from))
        .count();
    let from_new = results.len() - from_old - failures.len();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!(
        "move {} -> {}: converged in {:.1}s; {} requests ({from_old} old task, {from_new} new \
         task), {} failed, slowest {} ms",
        from.host(),
        to.host(),
        converged.as_secs_f64(),
        results.len(),
        failures.len(),
        slowest.as_millis()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(from_old > 0 && from_new > 0, "requests reached both tasks");
    let last = results.last().and_then(|(r, _)| r.as_ref().ok());
    assert_eq!(
        last.map(|r| r.body.trim()),
        Some(want_to.as_str()),
        "last answer from the new task"
    );
    assert_eq!(
        running_on(&lab, &name),
        vec![to.host()],
        "task on the other worker"
    );
}

#[test]
fn task_of_a_killed_worker_is_rescheduled_and_serves_again() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let name = format!("kl-{}", rand_suffix());
    let host = create_site_like_service(&lab, &name, "node.labels.pressdock.pool==wp");
    let _svc = ServiceGuard(&lab, name.clone());
    let victim_host = wait_until("the task to run", 60, 300, || {
        running_on(&lab, &name).into_iter().next()
    });
    let victim = lab
        .topo
        .nodes()
        .into_iter()
        .find(|n| n.host() == victim_host)
        .expect("a lab node");
    wait_served_from(&host, &victim.host(), Duration::from_secs(90));

    let t0 = Instant::now();
    let out = infra()
        .args(["lab", "node", "kill", &victim.name])
        .output()
        .expect("lab node kill");
    assert!(
        out.status.success(),
        "lab node kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Probes every 250 ms, each on its own thread (a request to the dead task can hang
    // until Traefik's dial timeout): the time is that of the first probe that is answered
    // by a task on another node.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut marked_down = None;
    let mut served_again = None;
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(120) && served_again.is_none() {
        n += 1;
        let (tx, host, sent) = (tx.clone(), host.clone(), t0.elapsed());
        std::thread::spawn(move || {
            let _ = tx.send((sent, edge_get(&host, 1_000_000 + n)));
        });
        if marked_down.is_none() {
            let st = lab
                .topo
                .first_manager()
                .docker([
                    "node",
                    "inspect",
                    "--format",
                    "{{.Status.State}}",
                    &victim_host,
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            if st == "down" {
                marked_down = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        while let Ok((sent, r)) = rx.try_recv() {
            if let Ok(r) = r
                && r.status == 200
                && r.body.starts_with("lab-task on ")
                && !r.body.contains(&victim_host)
            {
                served_again = Some(served_again.map_or(sent, |s: Duration| s.min(sent)));
            }
        }
    }
    let rescheduled_on = running_on(&lab, &name);
    // Bring the node back before asserting, so that a failure leaves the lab whole.
    let back = infra()
        .args(["lab", "node", "start", &victim.name])
        .output()
        .expect("lab node start");
    let t_back = t0.elapsed();
    eprintln!(
        "killed {victim_host}: marked down after {:?}, served from {rescheduled_on:?} after \
         {:?}; node started again at {:.1}s",
        marked_down.map(|d| d.as_secs_f64()),
        served_again.map(|d| d.as_secs_f64()),
        t_back.as_secs_f64()
    );
    assert!(
        back.status.success(),
        "lab node start: {}{}",
        String::from_utf8_lossy(&back.stdout),
        String::from_utf8_lossy(&back.stderr)
    );
    let served_again = served_again.expect("served again from another worker within 120 s");
    assert!(
        rescheduled_on.iter().all(|h| *h != victim_host) && !rescheduled_on.is_empty(),
        "rescheduled on {rescheduled_on:?}"
    );
    assert!(
        served_again < Duration::from_secs(60),
        "took {served_again:?}"
    );
}

// ------------------------------------------------- cluster code on the lab's real nodes

/// `docker node inspect`'s labels and status of the node with host name `host`.
fn node_labels(lab: &Lab, host: &str) -> Option<(String, serde_json::Value)> {
    let o = lab
        .topo
        .first_manager()
        .docker([
            "node",
            "inspect",
            "--format",
            "{{.Status.State}} {{json .Spec.Labels}}",
            host,
        ])
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let (state, json) = s.split_once(' ')?;
    Some((state.to_owned(), serde_json::from_str(json).ok()?))
}

/// Item 5 of issue 15 on real nodes: a worker added (namespace machine, join, labels by the
/// production planner and executor; the platform's node sync records it) and removed again
/// through `cluster::evolve::evacuate_node` (drained in the platform when it runs, swarm
/// drain, leave, `node rm`, the machine destroyed, the platform forgets it).
#[test]
fn a_worker_joins_with_its_labels_and_leaves_through_the_cluster_code() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let n = lab.topo.workers;
    let new = format!("pdlab-w{}", n + 1);
    let platform = lab::platform::staff_client(&lab);
    let t0 = Instant::now();
    let out = infra()
        .args([
            "lab",
            "up",
            "--no-platform",
            "--workers",
            &(n + 1).to_string(),
        ])
        .output()
        .expect("lab up --workers n+1");
    let grow = t0.elapsed();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab up --workers {}: {text}", n + 1);
    // The production steps ran (their progress lines), not a lab-only path.
    assert!(
        text.contains(&format!("{new} (10.213.0.{}) joins as worker", 21 + n)),
        "{text}"
    );
    assert!(
        text.contains(&format!("label {new}: pressdock.node=w{}", n + 1)),
        "{text}"
    );
    let (state, labels) = node_labels(&lab, &new).expect("the new node in the swarm");
    assert_eq!(state, "ready");
    assert_eq!(labels["pressdock.role"], "worker");
    assert_eq!(labels["pressdock.slots"], "25");
    assert_eq!(labels["pressdock.pool"], "wp");
    assert_eq!(labels["pressdock.node"], format!("w{}", n + 1));
    let seen_by_platform = platform.as_ref().map(|p| {
        use infra::cluster::evolve::Platform as _;
        let t = Instant::now();
        wait_until(
            "the platform's node sync to record the new worker",
            60,
            500,
            || {
                infra::cluster::stack::block_on(|| async { p.nodes().await })
                    .ok()?
                    .into_iter()
                    .find(|x| x.name == new)
                    .map(|_| ())
            },
        );
        t.elapsed()
    });

    let t1 = Instant::now();
    let out = infra()
        .args(["lab", "up", "--no-platform", "--workers", &n.to_string()])
        .output()
        .expect("lab up --workers n");
    let shrink = t1.elapsed();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab up --workers {n}: {text}");
    assert!(text.contains(&format!("{new} left the swarm")), "{text}");
    if platform.is_some() {
        assert!(
            text.contains(&format!("{new}: drained in the platform")),
            "{text}"
        );
        assert!(text.contains(&format!("{new}: its sites moved")), "{text}");
    }
    assert!(
        node_labels(&lab, &new).is_none(),
        "{new} still in the swarm"
    );
    assert!(!Path::new(&format!("/run/netns/{new}")).exists());
    if let Some(p) = &platform {
        use infra::cluster::evolve::Platform as _;
        let nodes = infra::cluster::stack::block_on(|| async { p.nodes().await }).expect("nodes");
        assert!(
            !nodes.iter().any(|x| x.name == new),
            "the platform still lists {new}"
        );
    }
    eprintln!(
        "worker {new}: joined and labelled by lab up in {:.1}s, seen by the platform after {}, \
         evacuated and removed in {:.1}s (platform: {})",
        grow.as_secs_f64(),
        seen_by_platform.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        shrink.as_secs_f64(),
        platform.is_some()
    );
}

/// A stack rolled through the Engine API deployer (`cluster::stack`) on the lab's swarm:
/// created, served through the edge, a changed variable updates its two tasks one at a
/// time (start-first, health-checked) with every request meanwhile answered, a second
/// deploy of the same file changes nothing, a service gone from the file is removed.
#[test]
fn a_stack_rolls_through_the_engine_api_without_a_failed_request() {
    if !enabled() {
        return;
    }
    use infra::cluster::stack::{self, Outcome};
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_up();
    let name = format!("troll{}", rand_suffix());
    let host = format!("{name}.t.lab.test");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = TASK_NGINX_CONF
        .replace("lab-task on", "v${VER} on")
        .replace("$hostname", "$$hostname");
    let script = TASK_SCRIPT.replace('$', "$$");
    let json = |s: &str| serde_json::to_string(s).expect("json");
    let compose = |with_extra: bool| {
        format!(
            "version: \"3.8\"
services:
  web:
    image: local/wordpress:dev
    entrypoint: [\"sh\", \"-c\", {script}]
    hostname: \"{{{{.Node.Hostname}}}}\"
    environment:
      NGINX_CONF: {conf}
    networks: [sites]
    stop_grace_period: 20s
    healthcheck:
      test: test -e /tmp/ready
      interval: 1s
      timeout: 1s
      retries: 1
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement:
        constraints: [node.labels.pressdock.pool == wp]
      update_config: {{ parallelism: 1, order: start-first }}
      labels:
        pressdock.route.hosts: {host}
        pressdock.route.network: ${{PD_SITES_NET}}
{extra}networks:
  sites:
    external: true
    name: ${{PD_SITES_NET}}
",
            script = json(&script),
            conf = json(&conf),
            extra = if with_extra {
                "  idle:\n    image: local/wordpress:dev\n    entrypoint: [\"sleep\", \"infinity\"]\n    deploy: { replicas: 0 }\n"
            } else {
                ""
            },
        )
    };
    let m1 = lab.topo.first_manager();
    let cleanup = || {
        for s in ["web", "idle"] {
            let _ = m1
                .docker(["service", "rm", &format!("{name}_{s}")])
                .output();
        }
    };
    struct Cleanup<F: Fn()>(F);
    impl<F: Fn()> Drop for Cleanup<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _c = Cleanup(cleanup);
    let deploy = |ver: &str, extra: bool| {
        std::fs::write(dir.path().join("roll.yml"), compose(extra)).expect("write");
        let vars = [("VER", ver), ("PD_SITES_NET", lab::SITES_NET)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        stack::deploy_file(
            &m1.sock(),
            &name,
            dir.path(),
            "roll.yml",
            &vars,
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("deploy v{ver}: {e:#}"))
    };
    let out = deploy("1", true);
    assert_eq!(out[&format!("{name}_web")], Outcome::Created);
    assert_eq!(out[&format!("{name}_idle")], Outcome::Created);
    let served = |want: &str| {
        wait_until(&format!("{host} answering {want}"), 60, 300, || {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            edge_get(&host, n)
                .ok()
                .filter(|r| r.status == 200 && r.body.starts_with(want))
                .map(|_| ())
        })
    };
    served("v1 on ");
    // Requests through the whole edge while the stack rolls to v2.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed, v2_seen, t_roll) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let (mut ok, mut failed, mut n, mut v2) = (0u32, Vec::new(), 0u64, false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                match edge_get(&host, 1_000_000 + n) {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        v2 |= r.body.starts_with("v2 on ");
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed, v2)
        });
        let t = Instant::now();
        let out = deploy("2", false);
        let t_roll = t.elapsed();
        assert_eq!(out[&format!("{name}_web")], Outcome::Updated);
        assert_eq!(out[&format!("{name}_idle")], Outcome::Removed);
        served("v2 on ");
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed, v2) = h.join().expect("requester");
        (ok, failed, v2, t_roll)
    });
    assert!(
        failed.is_empty(),
        "failed requests during the roll: {failed:?}"
    );
    assert!(v2_seen && ok > 10, "{ok} answers, v2 seen: {v2_seen}");
    // Two tasks were replaced one at a time: the service's update completed.
    let again = deploy("2", false);
    assert_eq!(again[&format!("{name}_web")], Outcome::Unchanged);
    eprintln!(
        "rolling update of 2 start-first tasks through the Engine API: {:.1}s until completed; \
         {ok} requests through the edge meanwhile, 0 failed",
        t_roll.as_secs_f64()
    );
}

/// Runs `script` (bash) in a throw-away container of the lab's Redis image attached to the
/// overlay network `net` on the first manager: what a task on that network reaches. With
/// `auth`, redis-cli gets the password through `REDISCLI_AUTH`, passed from this process's
/// environment (never on a command line). Its output, or the failure with its stderr.
fn in_overlay(lab: &Lab, net: &str, auth: Option<&str>, script: &str) -> Result<String, String> {
    let mut cmd =
        lab.topo
            .first_manager()
            .docker(["run", "--rm", "--network", net, "--entrypoint", "bash"]);
    if let Some(pw) = auth {
        cmd.args(["-e", "REDISCLI_AUTH"]).env("REDISCLI_AUTH", pw);
    }
    let out = cmd
        .args(["local/redis:dev", "-c", script])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `key=value` lines as a map.
fn fields(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The nodes the running tasks of a swarm service are on.
fn task_nodes(lab: &Lab, service: &str) -> Vec<String> {
    let out = lab
        .topo
        .first_manager()
        .docker([
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ])
        .output()
        .expect("docker service ps");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" Running"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// What a client on the cache stack's network sees, as `key=value` lines: the master the
/// Sentinel names and the other Redis task, their roles, a write on the master (`KEY`, after
/// reading it there) and the other's copy of it, and the answers to clients without the
/// password or with a wrong one. Every node is named by the address it announces (its
/// cache node's address and the port its service publishes there, `ip:port`: what Sentinel
/// hands clients) and reached there; by address, not by service: after a failover the
/// `redis-replica` service's task is the master. `*_run` is each Redis process's run id.
const CACHE_LOOK: &str = r#"r() { timeout 5 redis-cli --no-auth-warning "$@" 2>&1 | tr -d '\r'; }
ann() { echo "$(r -h "$1" config get replica-announce-ip | sed -n 2p):$(r -h "$1" config get replica-announce-port | sed -n 2p)"; }
at() { h=$1; shift; r -h "${h%:*}" -p "${h##*:}" "$@"; }
a=$(ann "$(getent hosts redis-master | cut -d' ' -f1)")
b=$(ann "$(getent hosts redis-replica | cut -d' ' -f1)")
set -- $(r -h sentinel -p 26379 sentinel get-master-addr-by-name NAME)
m=${1:-none}:${2:-}
if [ "$m" = "$a" ]; then o=$b; else o=$a; fi
echo "tasks=$a $b"
echo "sentinel_master=$m"
echo "other=$o"
echo "master_role=$(at "$m" role | head -n 1)"
echo "other_role=$(at "$o" role | head -n 1)"
echo "other_follows=$(at "$o" info replication | grep -E '^master_(host|port):' | cut -d: -f2 | paste -sd:)"
echo "master_run=$(at "$m" info server | grep '^run_id:' | cut -d: -f2)"
echo "other_run=$(at "$o" info server | grep '^run_id:' | cut -d: -f2)"
echo "$(at "$m" info replication | grep '^connected_slaves:' | tr ':' '=')"
# Replicas the Sentinel sees up (it keeps a killed task's address, flagged s_down).
echo "sentinel_replicas=$(r -h sentinel -p 26379 sentinel replicas NAME | grep -A 1 '^flags$' | grep -c '^slave$')"
echo "master_get=$(at "$m" get KEY)"
echo "set=$(at "$m" set KEY v1 ex 600)"
echo "synced=$(at "$m" wait 1 2000)"
echo "other_get=$(at "$o" get KEY)"
echo "noauth_sentinel=$(env -u REDISCLI_AUTH timeout 5 redis-cli -h sentinel -p 26379 sentinel get-master-addr-by-name NAME 2>&1)"
echo "noauth_master=$(env -u REDISCLI_AUTH timeout 5 redis-cli -h "${m%:*}" -p "${m##*:}" get KEY 2>&1)"
echo "noauth_other=$(env -u REDISCLI_AUTH timeout 5 redis-cli -h "${o%:*}" -p "${o##*:}" get KEY 2>&1)"
echo "wrongpass_sentinel=$(REDISCLI_AUTH=not-the-password timeout 5 redis-cli --no-auth-warning -h sentinel -p 26379 sentinel masters 2>&1 | tr '\n' ' ')"
"#;

/// Looks at the cache stack (as [`CACHE_LOOK`]) until `ready` accepts what it sees; the
/// fields then, and every look's text for a failure message.
fn cache_look_until(
    lab: &Lab,
    key: &str,
    within_s: u64,
    ready: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> std::collections::BTreeMap<String, String> {
    let script = CACHE_LOOK
        .replace("NAME", lab::nodes::CACHE_MASTER_NAME)
        .replace("KEY", key);
    let mut last = String::new();
    let f = lab::sh::wait_for(
        "the cache stack's master, replica and Sentinel (stack `cache`)",
        Duration::from_secs(within_s),
        Duration::from_secs(2),
        || {
            let out = in_overlay(
                lab,
                lab::nodes::CACHE_NET,
                Some(&lab.secrets.redis_admin),
                &script,
            );
            last = out.clone().unwrap_or_else(|e| e);
            let f = fields(&out.ok()?);
            ready(&f).then_some(f)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; last look:\n{last}"));
    assert!(
        !last.contains(&lab.secrets.redis_admin),
        "password in output"
    );
    f
}

/// A master the Sentinel names (at the address one of the two tasks announces), replicated
/// by the other task, which holds the write.
fn cache_healthy(f: &std::collections::BTreeMap<String, String>) -> bool {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let m = get("sentinel_master");
    let tasks: Vec<&str> = get("tasks").split_whitespace().collect();
    tasks.len() == 2
        && tasks[0] != tasks[1]
        && tasks.contains(&m)
        && get("master_role") == "master"
        && get("master_run").len() == 40
        && get("other_run").len() == 40
        && get("other_role") == "slave"
        && get("other_follows") == m
        && get("connected_slaves") == "1"
        && get("sentinel_replicas") == "1"
        && get("set") == "OK"
        && get("synced") == "1"
        && get("other_get") == "v1"
}

/// The cache tier as a stack (`stacks/cache.yml`, deployed by `lab up` through the production
/// deployer): from inside its overlay network, the master takes a write that the replica
/// serves, Sentinel names the master's task and knows the replica, and neither Redis nor
/// Sentinel answers a client without the password (a site's task runs tenant code). Then
/// the master's container is killed: Sentinel promotes the replica, which kept the write,
/// and swarm's new task for the killed one comes back as its replica.
#[test]
fn cache_stack_replicates_fails_over_and_refuses_strangers() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let t0 = Instant::now();
    let key = format!("pdtest:{}", rand_suffix());
    let f = cache_look_until(&lab, &key, 180, cache_healthy);
    let ready_s = t0.elapsed().as_secs_f64();
    for k in ["noauth_sentinel", "noauth_master", "noauth_other"] {
        assert!(
            f[k].starts_with("NOAUTH Authentication required"),
            "{k}: {f:?}"
        );
    }
    assert!(
        f["wrongpass_sentinel"].contains("WRONGPASS") && f["wrongpass_sentinel"].contains("NOAUTH"),
        "{f:?}"
    );
    // Placed by label on the cache nodes (the lab's managers), one Sentinel on each.
    let cache_nodes = lab.topo.cache_nodes();
    let cache_hosts: Vec<String> = cache_nodes.iter().map(|n| n.host()).collect();
    // Each Redis task announces its cache node's address and its service's published port.
    let announced: Vec<&str> = f["tasks"].split_whitespace().collect();
    assert_eq!(
        announced
            .iter()
            .map(|a| a.rsplit_once(':').map(|(_, p)| p).unwrap_or(""))
            .collect::<Vec<_>>(),
        [
            lab::nodes::CACHE_MASTER_PORT.to_string(),
            lab::nodes::CACHE_REPLICA_PORT.to_string()
        ],
        "{f:?}"
    );
    for a in &announced {
        let ip = a.rsplit_once(':').map(|(ip, _)| ip).unwrap_or("");
        assert!(
            cache_nodes.iter().any(|n| n.ip == ip),
            "{a}: not a cache node's address"
        );
    }
    for svc in ["redis-master", "redis-replica", "sentinel"] {
        let on = task_nodes(&lab, &format!("{}_{svc}", lab::nodes::CACHE_STACK));
        assert!(!on.is_empty(), "{svc}: no running task");
        assert!(
            on.iter().all(|n| cache_hosts.contains(n)),
            "{svc} on {on:?}"
        );
    }
    assert_eq!(
        task_nodes(&lab, &format!("{}_sentinel", lab::nodes::CACHE_STACK)),
        cache_hosts
    );

    // Failover: kill the master's container (whichever service's task it is).
    let master = f["sentinel_master"].clone();
    let survivor = f["other"].clone();
    let svc = if f["tasks"].split_whitespace().next() == Some(master.as_str()) {
        "redis-master"
    } else {
        "redis-replica"
    };
    let svc = format!("{}_{svc}", lab::nodes::CACHE_STACK);
    let t1 = Instant::now();
    let killed = cache_nodes.iter().any(|n| {
        let ids = n
            .docker([
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={svc}"),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        !ids.is_empty()
            && n.docker(["kill", &ids])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    assert!(killed, "no container of {svc} to kill");
    let after = cache_look_until(&lab, &key, 180, |f| {
        cache_healthy(f) && f.get("sentinel_master") == Some(&survivor)
    });
    // The promoted replica had the write from before the kill.
    assert_eq!(after["master_get"], "v1", "{after:?}");
    // The promoted one is the survivor's process, and the replica a new process: swarm's
    // new task for the killed one (on the lab's one cache node it announces the killed
    // one's address again, so the run ids tell them apart).
    assert_eq!(after["master_run"], f["other_run"], "{after:?}");
    assert_ne!(after["other_run"], f["master_run"], "{after:?}");
    // It announces its service's port (on the lab's one cache node, the very address).
    assert_eq!(
        after["other"].rsplit_once(':').map(|(_, p)| p),
        master.rsplit_once(':').map(|(_, p)| p),
        "{after:?}"
    );
    eprintln!(
        "cache stack: healthy {ready_s:.1}s after lab up returned (master {master}); \
         {svc}'s container killed: Sentinel promoted {survivor} and the restarted task \
         replicates it {:.1}s later",
        t1.elapsed().as_secs_f64()
    );
}

/// The cache stack's master and a replica of it (`ip`, `port` each), as the host reaches them:
/// what the Sentinel at the first cache node names, once the master answers as one and the
/// replica follows it with the link up; `None` until then.
fn cache_master_and_replica(lab: &Lab) -> Option<((String, String), (String, String))> {
    let pw = &lab.secrets.redis_admin;
    let name = lab::nodes::CACHE_MASTER_NAME;
    let sentinel = lab.topo.cache_nodes().first()?.ip.clone();
    let sp = lab::nodes::CACHE_SENTINEL_PORT.to_string();
    let m = host_redis(
        &sentinel,
        &sp,
        Some(pw),
        &["sentinel", "get-master-addr-by-name", name],
    );
    let mut it = m.split_whitespace();
    let (mi, mp) = (it.next()?.to_owned(), it.next()?.to_owned());
    if host_redis(&mi, &mp, Some(pw), &["role"]).lines().next() != Some("master") {
        return None;
    }
    let reps = host_redis(&sentinel, &sp, Some(pw), &["sentinel", "replicas", name]);
    sentinel_replicas(&reps).into_iter().find_map(|r| {
        if r.get("flags").map(String::as_str) != Some("slave") {
            return None;
        }
        let (ri, rp) = (r.get("ip")?.clone(), r.get("port")?.clone());
        let info =
            fields(&host_redis(&ri, &rp, Some(pw), &["info", "replication"]).replace(':', "="));
        (info.get("master_host") == Some(&mi)
            && info.get("master_port") == Some(&mp)
            && info.get("master_link_status").map(String::as_str) == Some("up"))
        .then(|| ((mi.clone(), mp.clone()), (ri, rp)))
    })
}

/// The run id of the Redis process at `ip:port` (tells a restarted task from the old one).
fn run_id(lab: &Lab, (ip, port): &(String, String)) -> String {
    fields(
        &host_redis(
            ip,
            port,
            Some(&lab.secrets.redis_admin),
            &["info", "server"],
        )
        .replace(':', "="),
    )
    .get("run_id")
    .cloned()
    .unwrap_or_default()
}

/// The cache stack's service whose tasks publish `port` (the master's 6379 or the
/// replicas' 6380), as its full swarm name.
fn cache_service_of_port(port: &str) -> String {
    let svc = match port.parse::<u16>() {
        Ok(lab::nodes::CACHE_MASTER_PORT) => "redis-master",
        Ok(lab::nodes::CACHE_REPLICA_PORT) => "redis-replica",
        _ => "sentinel",
    };
    format!("{}_{svc}", lab::nodes::CACHE_STACK)
}

/// The running container of a swarm service on one of the cache nodes: its node's host
/// name and its id.
fn cache_container(lab: &Lab, service: &str) -> Option<(String, String)> {
    lab.topo.cache_nodes().iter().find_map(|n| {
        let out = n
            .docker([
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
            ])
            .output()
            .ok()?;
        let id = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .to_owned();
        (!id.is_empty()).then(|| (n.host(), id))
    })
}

/// Kills the running container of a cache stack service (swarm starts a new task for it).
fn kill_cache_container(lab: &Lab, service: &str) {
    let (host, id) = cache_container(lab, service)
        .unwrap_or_else(|| panic!("no running container of {service}"));
    let node = lab
        .topo
        .nodes()
        .into_iter()
        .find(|n| n.host() == host)
        .expect("node");
    let out = node.docker(["kill", &id]).output().expect("docker kill");
    assert!(out.status.success(), "docker kill {service}: {out:?}");
}

/// A site's user on one Redis node, as the site would use it: it logs in with its password
/// (not with a wrong one, not without), reads and (on the master) writes its own keys, and
/// is refused other keys and server-wide commands. `Err` says what differed.
fn site_user_limited(
    (ip, port): &(String, String),
    user: &str,
    pw: &str,
    prefix: &str,
    master: bool,
) -> Result<(), String> {
    let own = format!("{prefix}probe");
    let as_site = |args: &[&str]| {
        let mut a = vec!["--user", user];
        a.extend_from_slice(args);
        host_redis(ip, port, Some(pw), &a)
    };
    let mut wrong = Vec::new();
    let mut check = |what: &str, got: String, ok: bool| {
        if !ok {
            wrong.push(format!("{what}: {got}"));
        }
    };
    let who = as_site(&["acl", "whoami"]);
    check("whoami", who.clone(), who == user);
    if master {
        let set = as_site(&["set", &own, "kept", "ex", "600"]);
        check("set own key", set.clone(), set == "OK");
        // The replica has it before it is read there.
        let _ = as_site(&["wait", "1", "2000"]);
    }
    let get = as_site(&["get", &own]);
    check("get own key", get.clone(), get == "kept");
    for args in [
        &["get", "pdtest:not-the-site"][..],
        &["set", "pdtest:not-the-site", "x"],
        &["acl", "list"],
        &["config", "get", "aclfile"],
        &["keys", "*"],
        &["flushall"],
    ] {
        let got = as_site(args);
        check(&args.join(" "), got.clone(), got.contains("NOPERM"));
    }
    let got = host_redis(
        ip,
        port,
        Some("not-the-password"),
        &["--user", user, "ping"],
    );
    check("wrong password", got.clone(), got.contains("WRONGPASS"));
    let got = host_redis(ip, port, None, &["get", &own]);
    check("no password", got.clone(), got.starts_with("NOAUTH"));
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{ip}:{port}: {}", wrong.join("; ")))
    }
}

/// The node's users (`ACL LIST` as its admin): `default` on, with a password hash and every
/// key, the one such user; every other user has a password hash, is not `nopass` and has
/// no key pattern beyond its own prefix. `Err` names what differed.
fn only_default_is_admin(lab: &Lab, (ip, port): &(String, String)) -> Result<(), String> {
    let list = host_redis(ip, port, Some(&lab.secrets.redis_admin), &["acl", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let hashed = |w: &[String]| {
        w.iter().any(|x| {
            x.len() == 65
                && x.strip_prefix('#')
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
    };
    let mut wrong = Vec::new();
    let default: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("user default "))
        .collect();
    match default[..] {
        [d] => {
            let w = words(d);
            if !(w.contains(&"on".to_owned()) && hashed(&w) && w.contains(&"~*".to_owned()))
                || w.contains(&"nopass".to_owned())
            {
                wrong.push(format!("default is not the password-holding admin: {d}"));
            }
        }
        _ => wrong.push("no one default user".to_owned()),
    }
    for l in lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("user default "))
    {
        let w = words(l);
        let wide = w.iter().any(|x| {
            matches!(
                x.as_str(),
                "~*" | "allkeys" | "nopass" | "%R~*" | "%W~*" | "%RW~*"
            )
        });
        if !l.starts_with("user ") || wide || !hashed(&w) {
            wrong.push(format!("a user besides default: {l}"));
        }
    }
    if lines.is_empty() {
        wrong.push(format!("no ACL LIST: {list}"));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{ip}:{port}: {}", wrong.join("; ")))
    }
}

/// A site's ACL users on the cache stack outlive its tasks: a user the platform's driver
/// (`RedisSentinelDriver`, pointed at the stack's Sentinels as `lab up --platform-redis
/// stack` does) creates is on the master, the replica (each `ACL SAVE`d to its node's
/// volume) and the Sentinel; the master's container is killed (Sentinel promotes the
/// replica, the new task replicates it), then the new replica's, then the Sentinel's: after
/// each, the site still logs in everywhere with its password and reaches only its own keys,
/// and the `default` user (the stack's password) stays the one admin, with nothing that logs
/// in without a password. The driver then removes the user and it is gone from the nodes and
/// their files.
#[test]
fn cache_stack_keeps_site_acl_users_across_task_restarts() {
    use backends::{RedisSentinelDriver, Secret, SiteCache, SitePassword, SiteResourceId};
    let Some((_g, lab)) = begin() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let admin = lab.secrets.redis_admin.clone();
    let name = lab::nodes::CACHE_MASTER_NAME;
    let sentinel_port = lab::nodes::CACHE_SENTINEL_PORT.to_string();
    let sentinel = (lab.topo.cache_nodes()[0].ip.clone(), sentinel_port.clone());
    let driver = RedisSentinelDriver::new(&backends::config::RedisConfig {
        sentinels: lab
            .topo
            .cache_nodes()
            .iter()
            .map(|n| format!("{}:{sentinel_port}", n.ip))
            .collect(),
        master_name: name.to_owned(),
        admin_user: None,
        admin_password: Some(Secret::new(admin.clone())),
        sentinel_user: None,
        sentinel_password: Some(Secret::new(admin.clone())),
        unlink_batch: 100,
    })
    .expect("driver");
    let (master, replica) = wait_until(
        "the cache stack's Sentinel to name a master and a replica that follows it",
        180,
        1000,
        || cache_master_and_replica(&lab),
    );
    let t0 = Instant::now();
    let id = SiteResourceId::generate();
    let site_pw = SitePassword::generate();
    let user = id.resource_name();
    let prefix = id.redis_prefix();
    let made = rt
        .block_on(driver.ensure_site_cache(&id, &site_pw))
        .expect("ensure_site_cache");
    // Every data node took the user and saved it to its aclfile; the Sentinel took its
    // discovery-only user.
    let data: Vec<_> = made
        .nodes
        .iter()
        .filter(|n| n.role != backends::redis::NodeRole::Sentinel)
        .collect();
    assert_eq!(data.len(), 2, "{made:?}");
    assert!(
        data.iter().all(|n| n.reachable && n.saved == Some(true)),
        "{made:?}"
    );
    assert!(made.nodes.iter().all(|n| n.reachable), "{made:?}");
    let check_all = |master: &(String, String), replica: &(String, String), when: &str| {
        for (node, is_master) in [(master, true), (replica, false)] {
            if let Err(e) = site_user_limited(node, &user, site_pw.expose(), &prefix, is_master) {
                panic!(
                    "{when}: the site user on the {}: {e}",
                    if is_master { "master" } else { "replica" }
                );
            }
            if let Err(e) = only_default_is_admin(&lab, node) {
                panic!("{when}: {e}");
            }
        }
        // The Sentinel tells the site (as its own user) where the master is, and no more.
        let found = host_redis(
            &sentinel.0,
            &sentinel.1,
            Some(site_pw.expose()),
            &["--user", &user, "sentinel", "get-master-addr-by-name", name],
        );
        assert_eq!(
            found.split_whitespace().collect::<Vec<_>>(),
            [master.0.as_str(), master.1.as_str()],
            "{when}: the site's user on the Sentinel"
        );
        let masters = host_redis(
            &sentinel.0,
            &sentinel.1,
            Some(site_pw.expose()),
            &["--user", &user, "sentinel", "masters"],
        );
        assert!(masters.contains("NOPERM"), "{when}: {masters}");
        let observed = rt
            .block_on(driver.observe_site_cache(&id, Some(&site_pw)))
            .expect("observe_site_cache");
        assert!(observed.is_converged(), "{when}: {observed:?}");
    };
    check_all(&master, &replica, "created");
    // The user is in each node's aclfile on its volume (`ACL SAVE`).
    for (_, port) in [&master, &replica] {
        let svc = cache_service_of_port(port);
        let (host, c) = cache_container(&lab, &svc).expect("container");
        let (ok, out) = exec_in(
            &lab,
            &host,
            &c,
            &format!("grep -c '^user {user} ' /data/redis-{port}.acl"),
        );
        assert!(
            ok && out == "1",
            "{svc}: {user} in /data/redis-{port}.acl: {out}"
        );
    }

    // The master's task restarts: Sentinel promotes the replica, the new task follows it.
    let (master_run, replica_run) = (run_id(&lab, &master), run_id(&lab, &replica));
    let t1 = Instant::now();
    kill_cache_container(&lab, &cache_service_of_port(&master.1));
    let (m2, r2) = wait_until(
        "the replica promoted and the killed master's new task replicating it",
        180,
        1000,
        || {
            let (m, r) = cache_master_and_replica(&lab)?;
            (m == replica && r == master && run_id(&lab, &r) != master_run).then_some((m, r))
        },
    );
    assert_eq!(run_id(&lab, &m2), replica_run);
    let failover_s = t1.elapsed().as_secs_f64();
    check_all(&m2, &r2, "after the master's task restarted");

    // The replica's task restarts (the one that was the master's).
    let r2_run = run_id(&lab, &r2);
    let t2 = Instant::now();
    kill_cache_container(&lab, &cache_service_of_port(&r2.1));
    let (m3, r3) = wait_until(
        "the replica's new task replicating the master",
        180,
        1000,
        || {
            let (m, r) = cache_master_and_replica(&lab)?;
            (m == m2 && r == r2 && run_id(&lab, &r) != r2_run).then_some((m, r))
        },
    );
    let replica_s = t2.elapsed().as_secs_f64();
    check_all(&m3, &r3, "after the replica's task restarted");

    // The Sentinel's task restarts (its users come from its config on the volume).
    let t3 = Instant::now();
    kill_cache_container(&lab, &format!("{}_sentinel", lab::nodes::CACHE_STACK));
    let (m4, r4) = wait_until(
        "the restarted Sentinel to name the master and its replica",
        180,
        1000,
        || {
            let (m, r) = cache_master_and_replica(&lab)?;
            (m == m3 && r == r3).then_some((m, r))
        },
    );
    let sentinel_s = t3.elapsed().as_secs_f64();
    check_all(&m4, &r4, "after the Sentinel's task restarted");

    // Removed through the driver: gone from every node and its file.
    rt.block_on(driver.remove_site_cache(&id))
        .expect("remove_site_cache");
    let gone = rt
        .block_on(driver.observe_site_cache(&id, None))
        .expect("observe_site_cache");
    assert!(gone.is_absent(), "{gone:?}");
    for (_, port) in [&m4, &r4] {
        let svc = cache_service_of_port(port);
        let (host, c) = cache_container(&lab, &svc).expect("container");
        let (_, out) = exec_in(
            &lab,
            &host,
            &c,
            &format!(
                "grep -c '^user {user} ' /data/redis-{port}.acl; grep -c '^user default ' /data/redis-{port}.acl"
            ),
        );
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["0", "1"],
            "{svc}"
        );
    }
    eprintln!(
        "cache stack: site user {user} made on master {}:{}, replica {}:{} and the Sentinel; \
         master's task killed: failover and its new task following with the user {failover_s:.1}s; \
         replica's task killed: back with the user {replica_s:.1}s; Sentinel's task killed: \
         back with the user {sentinel_s:.1}s; {:.1}s in all",
        master.0,
        master.1,
        replica.0,
        replica.1,
        t0.elapsed().as_secs_f64()
    );
}

/// `redis-cli` from the host (where the platform runs) against `ip:port`, with the password
/// through `REDISCLI_AUTH` (never on a command line) or with none; its output (stdout and
/// stderr), `\r` removed.
fn host_redis(ip: &str, port: &str, auth: Option<&str>, args: &[&str]) -> String {
    host_redis_in(None, ip, port, auth, args)
}

/// [`host_redis`] from a node's network namespace (`nsenter --net`, a worker's own process:
/// no task, no guard) when `netns` is given.
fn host_redis_in(
    netns: Option<&str>,
    ip: &str,
    port: &str,
    auth: Option<&str>,
    args: &[&str],
) -> String {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg("timeout");
            c
        }
        None => Command::new("timeout"),
    };
    cmd.args(["5", "redis-cli", "--no-auth-warning", "-h", ip, "-p", port])
        .args(args)
        .env_remove("REDISCLI_AUTH");
    if let Some(pw) = auth {
        cmd.env("REDISCLI_AUTH", pw);
    }
    let out = cmd.output().expect("run redis-cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace('\r', "");
    text.trim().to_owned()
}

/// `redis-cli`'s flat listing of `SENTINEL REPLICAS` (name, value, … per replica) as one map
/// per replica.
fn sentinel_replicas(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<std::collections::BTreeMap<String, String>> = Vec::new();
    for kv in lines.chunks(2) {
        let [k, v] = kv else { break };
        if *k == "name" {
            out.push(Default::default());
        }
        if let Some(m) = out.last_mut() {
            m.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    out
}

/// The cache stack from outside its overlay network, as the platform (a host process) would
/// use it: the Sentinel's published port on a cache node names the master at an address the
/// host reaches (the cache node's, the master's published port) and lists a replica there
/// too; the host writes through the master with the password and reads the write from the
/// replica; without the password (or with a wrong one) the Sentinel, the master and the
/// replica refuse it.
#[test]
fn cache_stack_serves_the_host_at_its_node_addresses_only_with_the_password() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let pw = lab.secrets.redis_admin.clone();
    let name = lab::nodes::CACHE_MASTER_NAME;
    let cache_ips: Vec<String> = lab
        .topo
        .cache_nodes()
        .iter()
        .map(|n| n.ip.clone())
        .collect();
    let sentinel_port = lab::nodes::CACHE_SENTINEL_PORT.to_string();
    let sentinel = cache_ips[0].clone();
    let mut last = String::new();
    // Until the Sentinel names a master that answers as one and lists a replica (flags just
    // `slave`) that answers as its replica with the link up: the stack may still be
    // converging after the previous test's failover.
    let (master, replica) = wait_until(
        "the cache stack's Sentinel, at a cache node's address, to name a master and a replica the host reaches",
        180,
        1000,
        || {
            let m = host_redis(
                &sentinel,
                &sentinel_port,
                Some(&pw),
                &["sentinel", "get-master-addr-by-name", name],
            );
            last = m.clone();
            let mut it = m.split_whitespace();
            let (mi, mp) = (it.next()?.to_owned(), it.next()?.to_owned());
            if host_redis(&mi, &mp, Some(&pw), &["role"]).lines().next() != Some("master") {
                return None;
            }
            let reps = host_redis(
                &sentinel,
                &sentinel_port,
                Some(&pw),
                &["sentinel", "replicas", name],
            );
            last = format!("master {mi}:{mp}; replicas:\n{reps}");
            sentinel_replicas(&reps).into_iter().find_map(|r| {
                if r.get("flags").map(String::as_str) != Some("slave") {
                    return None;
                }
                let (ri, rp) = (r.get("ip")?.clone(), r.get("port")?.clone());
                let info = fields(
                    &host_redis(&ri, &rp, Some(&pw), &["info", "replication"]).replace(':', "="),
                );
                (info.get("role").map(String::as_str) == Some("slave")
                    && info.get("master_host") == Some(&mi)
                    && info.get("master_port") == Some(&mp)
                    && info.get("master_link_status").map(String::as_str) == Some("up"))
                .then(|| ((mi.clone(), mp.clone()), (ri, rp)))
            })
        },
    );
    assert!(!last.contains(&pw), "password in output");
    // What Sentinel hands out: cache nodes' addresses and the services' published ports.
    let ports = [
        lab::nodes::CACHE_MASTER_PORT.to_string(),
        lab::nodes::CACHE_REPLICA_PORT.to_string(),
    ];
    for (ip, port) in [&master, &replica] {
        assert!(cache_ips.contains(ip), "{ip}: not a cache node's address");
        assert!(
            ports.contains(port),
            "{ip}:{port}: not a published Redis port"
        );
    }
    assert_ne!(master, replica);

    // A write through the master, acknowledged by the replica, read from the replica.
    let key = format!("pdtest:host:{}", rand_suffix());
    let (mi, mp) = (&master.0, &master.1);
    let (ri, rp) = (&replica.0, &replica.1);
    assert_eq!(
        host_redis(mi, mp, Some(&pw), &["set", &key, "from-host", "ex", "600"]),
        "OK"
    );
    assert_eq!(host_redis(mi, mp, Some(&pw), &["wait", "1", "5000"]), "1");
    assert_eq!(host_redis(ri, rp, Some(&pw), &["get", &key]), "from-host");
    // The replica refuses writes (it is one, and reached as one).
    assert!(
        host_redis(ri, rp, Some(&pw), &["set", &key, "x"]).starts_with("READONLY"),
        "the replica took a write"
    );

    // Every published port demands the password.
    let refused = [
        (
            "sentinel",
            host_redis(
                &sentinel,
                &sentinel_port,
                None,
                &["sentinel", "get-master-addr-by-name", name],
            ),
        ),
        ("master", host_redis(mi, mp, None, &["get", &key])),
        ("replica", host_redis(ri, rp, None, &["get", &key])),
        ("master ping", host_redis(mi, mp, None, &["ping"])),
    ];
    for (what, answer) in &refused {
        assert!(
            answer.starts_with("NOAUTH Authentication required"),
            "{what} without the password: {answer}"
        );
    }
    for (what, ip, port) in [
        ("sentinel", &sentinel, &sentinel_port),
        ("master", mi, mp),
        ("replica", ri, rp),
    ] {
        let answer = host_redis(ip, port, Some("not-the-password"), &["ping"]);
        assert!(
            answer.contains("WRONGPASS") || answer.contains("NOAUTH"),
            "{what} with a wrong password: {answer}"
        );
        assert!(!answer.contains("PONG"), "{what} answered a wrong password");
    }
    eprintln!(
        "cache stack from the host: Sentinel {sentinel}:{sentinel_port} names master {mi}:{mp}, \
         replica {ri}:{rp}; write on the master read on the replica; NOAUTH/WRONGPASS \
         without the password on all three ports"
    );
}

/// `bash` in a container, as `docker exec` on the node `host`; its output and whether it
/// succeeded.
fn exec_in(lab: &Lab, host: &str, container: &str, script: &str) -> (bool, String) {
    let node = lab
        .topo
        .nodes()
        .into_iter()
        .find(|n| n.host() == host)
        .expect("node");
    let out = node
        .docker(["exec", container, "bash", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_owned(),
    )
}

/// The cache stack seen from a worker: the worker's own network reaches the stack's
/// published ports, which answer only with the password (NOAUTH without it); a site-like task
/// on that worker (a container labelled `pressdock.site`, on the sites network: what the
/// worker's network guard confines) cannot connect to them at all, while it reaches the lab's
/// host Redis that sites use (so the probe works). That is the design: the guard lets a
/// site's code reach only the data services sites use, and the stack is not the sites' Redis
/// (its one user is the tier's admin password; no site has an ACL user there). If the
/// platform moves to the stack, the guard's allow list gets the cache nodes' Redis and
/// Sentinel ports, and a site then reaches them only as its own ACL user.
#[test]
fn cache_stack_answers_a_worker_only_with_the_password_and_a_site_task_not_at_all() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let pw = lab.secrets.redis_admin.clone();
    let name = lab::nodes::CACHE_MASTER_NAME;
    let worker = lab
        .topo
        .nodes()
        .into_iter()
        .find(|n| n.role == lab::Role::Worker)
        .expect("a worker");
    let w = worker.host();
    let cache_ip = lab.topo.cache_nodes()[0].ip.clone();
    let sentinel_port = lab::nodes::CACHE_SENTINEL_PORT.to_string();

    // From the worker's namespace (no task: the guard confines site tasks only): the
    // Sentinel, the master and the replicas it names answer PONG with the password.
    let targets: Vec<(String, String)> = wait_until(
        "the stack's Sentinel to name its master and a replica, from a worker",
        180,
        1000,
        || {
            let cli = |ip: &str, port: &str, args: &[&str]| {
                host_redis_in(Some(&w), ip, port, Some(&pw), args)
            };
            let m = cli(
                &cache_ip,
                &sentinel_port,
                &["sentinel", "get-master-addr-by-name", name],
            );
            let mut it = m.split_whitespace();
            let mut all = vec![(cache_ip.clone(), sentinel_port.clone())];
            all.push((it.next()?.to_owned(), it.next()?.to_owned()));
            let reps = cli(&cache_ip, &sentinel_port, &["sentinel", "replicas", name]);
            for r in sentinel_replicas(&reps) {
                if r.get("flags").map(String::as_str) == Some("slave") {
                    all.push((r.get("ip")?.clone(), r.get("port")?.clone()));
                }
            }
            (all.len() >= 3
                && all
                    .iter()
                    .all(|(ip, port)| cli(ip, port, &["ping"]) == "PONG"))
            .then_some(all)
        },
    );
    // ... and refuse a client without it.
    for (ip, port) in &targets {
        let answer = host_redis_in(Some(&w), ip, port, None, &["ping"]);
        assert!(
            answer.starts_with("NOAUTH Authentication required"),
            "{ip}:{port} from {w} without the password: {answer}"
        );
    }

    // A site-like task on that worker, confined by the worker's guard.
    let svc = format!("pdtest-cacheprobe-{}", rand_suffix());
    let _cleanup = ServiceGuard(&lab, svc.clone());
    let m1 = lab.topo.first_manager();
    let out = m1
        .docker([
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            &svc,
            "--constraint",
            &format!("node.hostname=={w}"),
            "--network",
            lab::SITES_NET,
            "--endpoint-mode",
            "dnsrr",
            "--container-label",
            &format!("pressdock.site={svc}"),
            "--entrypoint",
            "sleep",
            "local/wordpress:dev",
            "infinity",
        ])
        .output()
        .expect("docker service create");
    assert!(
        out.status.success(),
        "service create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = wait_until(&format!("{svc}'s container on {w}"), 120, 500, || {
        let o = worker
            .docker([
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={svc}"),
            ])
            .output()
            .ok()?;
        let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        (!id.is_empty() && !id.contains('\n')).then_some(id)
    });
    // Confined: the guard's mark (what a site's agent waits for before it runs PHP).
    wait_until(&format!("the guard's mark in {svc}"), 60, 500, || {
        exec_in(
            &lab,
            &w,
            &container,
            &format!("test -f {}", infra::guard::MARK),
        )
        .0
        .then_some(())
    });
    let probe = |ip: &str, port: &str| {
        exec_in(
            &lab,
            &w,
            &container,
            &format!(
                "if timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; then echo open; else echo closed; fi"
            ),
        )
        .1
    };
    // The probe works from this task: the host Redis the sites use answers its connect.
    let host_redis_port = data::redis_port(1).to_string();
    assert_eq!(
        probe(HOST_IP, &host_redis_port),
        "open",
        "control: {HOST_IP}:{host_redis_port}"
    );
    for (ip, port) in &targets {
        assert_eq!(
            probe(ip, port),
            "closed",
            "a site task on {w} connected to the cache stack at {ip}:{port}"
        );
    }
    let shown: Vec<String> = targets.iter().map(|(i, p)| format!("{i}:{p}")).collect();
    eprintln!(
        "cache stack from {w}: Sentinel, master, replica ({}) NOAUTH without the password, \
         PONG with it; a site-like task there: closed on all of them, open on the host Redis \
         {HOST_IP}:{host_redis_port}",
        shown.join(", ")
    );
}

/// The monitoring placeholder (`stacks/monitoring.yml`, deployed by `lab up` through the
/// production deployer) runs on every monitoring node (the lab's managers) and answers on its
/// overlay network.
#[test]
fn monitoring_placeholder_answers_on_the_monitoring_nodes() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let script = r#"exec 3<>/dev/tcp/placeholder/9090 || exit 1
printf 'GET /ping HTTP/1.0\r\nHost: placeholder\r\n\r\n' >&3
timeout 5 cat <&3 | tr -d '\r'"#;
    let mut last = String::new();
    let answer = lab::sh::wait_for(
        "the monitoring placeholder on pd-monitoring",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let out = in_overlay(&lab, "pd-monitoring", None, script);
            last = out.clone().unwrap_or_else(|e| e);
            out.ok().filter(|o| o.starts_with("HTTP/1.0 200"))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; last answer:\n{last}"));
    assert!(answer.ends_with("\n\nOK"), "{answer}");
    let managers: Vec<String> = lab
        .topo
        .nodes()
        .into_iter()
        .filter(|n| n.role == lab::Role::Manager)
        .map(|n| n.host())
        .collect();
    assert_eq!(task_nodes(&lab, "monitoring_placeholder"), managers);
}

/// Puts a lost Galera data directory back if the test ends before the restore succeeded, so
/// a failed run leaves the lab with its data (the next `lab up` starts the nodes on it).
struct LostGalera<'a> {
    lab: &'a Lab,
    restored: bool,
}

impl LostGalera<'_> {
    fn lost(&self, n: u8) -> std::path::PathBuf {
        data::galera_dir(self.lab, n).join("data.test-lost")
    }
}

impl Drop for LostGalera<'_> {
    fn drop(&mut self) {
        for n in 1..=self.lab.topo.galera_nodes {
            let lost = self.lost(n);
            if !lost.exists() {
                continue;
            }
            if self.restored {
                let _ = std::fs::remove_dir_all(&lost);
                continue;
            }
            let _ = self
                .lab
                .procs
                .stop(&format!("galera-{n}"), Duration::from_secs(30));
            let d = data::galera_dir(self.lab, n).join("data");
            let _ = std::fs::remove_dir_all(&d);
            let _ = std::fs::rename(&lost, &d);
        }
        if !self.restored {
            eprintln!("restore failed: the lost data directories are back; running lab up");
            let _ = infra().args(["lab", "up", "--no-platform"]).output();
        }
    }
}

/// The platform's `/readyz` body once it says the database answers (`None` while not).
fn platform_ready() -> Option<String> {
    lab::http::get(
        &format!("127.0.0.1:{}", ports::PLATFORM),
        "/readyz",
        "localhost",
    )
    .ok()
    .filter(|r| r.status == 200 && r.body.contains(r#""database":"ok""#))
    .map(|r| r.body)
}

/// Issue 15, item 7: a lost Galera cluster rebuilt from its backup, on the lab's real nodes.
/// A marker row is written, `lab backup galera` streams a hot mariabackup of a Synced node to
/// S3 (manifest: size, SHA-256, the cluster position), a later row is written, then every node
/// is killed and its data directory taken away. `lab restore galera` (the README's runbook)
/// brings the cluster back from the backup: every node has the marker and not the later row,
/// the cluster carries on at the backup's position (same state UUID), the router takes
/// writes, and the platform (when the lab runs it) is ready again.
#[test]
fn a_lost_galera_cluster_is_rebuilt_from_its_backup() {
    if !enabled() {
        return;
    }
    use infra::cluster::backup;
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_up();
    let nodes = lab.topo.galera_nodes;
    let router = ports::ROUTER;
    let v = rand_suffix();
    sql(
        &lab,
        router,
        &format!(
            "CREATE DATABASE IF NOT EXISTS labtest; CREATE TABLE IF NOT EXISTS labtest.kv \
             (k VARCHAR(32) PRIMARY KEY, v VARCHAR(64)); \
             INSERT INTO labtest.kv VALUES ('restore-{v}', 'before-backup')"
        ),
    )
    .expect("marker row");
    let status = |port: u16, name: &str| {
        sql(&lab, port, &format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .expect("status")
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let cluster_uuid = status(data::galera_port(1), "wsrep_local_state_uuid");
    let committed_before: i64 = status(data::galera_port(1), "wsrep_last_committed")
        .parse()
        .expect("seqno");

    let t0 = Instant::now();
    let out = infra()
        .args(["lab", "backup", "galera"])
        .output()
        .expect("lab backup galera");
    let backup_s = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab backup galera: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    let s3 = lab::cluster_backup::s3(&lab).expect("s3");
    let stamp = infra::cluster::stack::block_on(|| async {
        backup::list_backups(&s3, lab::cluster_backup::PREFIX, "galera").await
    })
    .expect("list")
    .pop()
    .expect("a backup listed");
    assert!(text.contains(&stamp), "{text}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &infra::cluster::stack::block_on(|| async {
            s3.get(&format!(
                "{}/galera/{stamp}/manifest.json",
                lab::cluster_backup::PREFIX
            ))
            .await
        })
        .expect("manifest"),
    )
    .expect("manifest json");
    let sha = manifest["sha256"].as_str().unwrap_or_default();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{manifest}"
    );
    assert!(manifest["bytes"].as_u64().unwrap_or(0) > 0, "{manifest}");
    let pos = &manifest["wsrep_position"];
    assert_eq!(pos["uuid"], cluster_uuid.as_str(), "{manifest}");
    let seqno = pos["seqno"].as_i64().unwrap_or(-1);
    assert!(
        seqno >= committed_before,
        "the backup's position {seqno} is before the marker's commit {committed_before}"
    );

    // Written after the backup: the restore must not have it.
    sql(
        &lab,
        router,
        &format!("INSERT INTO labtest.kv VALUES ('after-{v}', 'after-backup')"),
    )
    .expect("row after the backup");

    // The cluster is lost: every node killed, every data directory gone from where it runs.
    let mut lost = LostGalera {
        lab: &lab,
        restored: false,
    };
    for n in 1..=nodes {
        lab.procs
            .kill9(&format!("galera-{n}"))
            .expect("kill galera node");
    }
    for n in 1..=nodes {
        wait_until("the killed Galera node to be gone", 30, 100, || {
            lab.procs
                .alive(&format!("galera-{n}"))
                .is_none()
                .then_some(())
        });
        let _ = std::fs::remove_dir_all(lost.lost(n));
        std::fs::rename(data::galera_dir(&lab, n).join("data"), lost.lost(n))
            .expect("take the data away");
    }
    let refused = sql(&lab, router, "SELECT 1").expect_err("the router has no database");
    eprintln!("cluster lost; the router answers: {refused}");

    let t1 = Instant::now();
    let out = infra()
        .args(["lab", "restore", "galera", "--from", &stamp])
        .output()
        .expect("lab restore galera");
    let restore_s = t1.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab restore galera: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    lost.restored = true;

    for n in 1..=nodes {
        let p = data::galera_port(n);
        let rows = sql(
            &lab,
            p,
            &format!(
                "SET SESSION wsrep_sync_wait = 1; SELECT v FROM labtest.kv \
                 WHERE k IN ('restore-{v}', 'after-{v}') ORDER BY k"
            ),
        )
        .expect("read on the restored node");
        assert_eq!(rows, "before-backup", "node g{n}: the backup's rows only");
        assert_eq!(status(p, "wsrep_cluster_size"), nodes.to_string());
        assert_eq!(
            status(p, "wsrep_local_state_uuid"),
            cluster_uuid,
            "node g{n} carries on the backed-up cluster's history"
        );
    }
    let via_router = wait_until("the router to take writes again", 60, 250, || {
        sql(
            &lab,
            router,
            &format!(
                "INSERT INTO labtest.kv VALUES ('again-{v}', 'after-restore'); \
                     SELECT COUNT(*) FROM labtest.kv WHERE k LIKE '%-{v}'"
            ),
        )
        .ok()
    });
    assert_eq!(via_router, "2", "marker and the new row");
    let platform = lab
        .procs
        .alive("platform")
        .map(|_| wait_until("the platform to be ready again", 90, 500, platform_ready));
    eprintln!(
        "galera restore: backup {backup_s:.1}s ({} bytes at seqno {seqno}), restore {restore_s:.1}s, \
         platform: {}",
        manifest["bytes"],
        platform.unwrap_or_else(|| "not running (lab up --no-platform)".into())
    );
}

/// Puts the manager's own swarm state back if the test ends before the recovery succeeded.
struct LostSwarm<'a> {
    lab: &'a Lab,
    recovered: bool,
}

impl LostSwarm<'_> {
    fn root(&self) -> std::path::PathBuf {
        self.lab.path(&format!(
            "nodes/{}/docker",
            self.lab.topo.first_manager().host()
        ))
    }
}

impl Drop for LostSwarm<'_> {
    fn drop(&mut self) {
        let lost = self.root().join("swarm.test-lost");
        if !lost.exists() {
            return;
        }
        if self.recovered {
            let _ = std::fs::remove_dir_all(&lost);
            return;
        }
        let m1 = self.lab.topo.first_manager();
        let _ = self
            .lab
            .procs
            .stop(&format!("dockerd-{}", m1.host()), Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(self.root().join("swarm"));
        let _ = std::fs::rename(&lost, self.root().join("swarm"));
        eprintln!("recovery failed: the manager's own swarm state is back; running lab up");
        let _ = infra().args(["lab", "up", "--no-platform"]).output();
    }
}

/// The swarm's view from the manager: services, and nodes as `hostname id state`.
fn swarm_view(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let m1 = lab.topo.first_manager();
    let lines = |args: &[&str]| -> Vec<String> {
        let out = m1.docker(args).output().expect("docker");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    (
        lines(&["service", "ls", "--format", "{{.Name}}"]),
        lines(&[
            "node",
            "ls",
            "--format",
            "{{.Hostname}} {{.ID}} {{.Status}} {{.ManagerStatus}}",
        ]),
    )
}

/// Issue 15, item 7: a lost manager state recovered on the lab's real swarm. `lab backup
/// swarm` copies the manager's `/var/lib/docker/swarm` with its dockerd stopped (Docker's
/// way) to S3; then the manager's dockerd is stopped and its swarm state taken away (the
/// lab's only manager: the whole raft is lost); `lab restore swarm` unpacks the backup and
/// runs `swarm init --force-new-cluster`: the same services and nodes (same ids), every
/// worker Ready again with its tasks, and the edge serves again.
///
/// Not in CI yet: it failed once in its first 5 runs (`lab restore swarm` stopped after
/// `swarm init --force-new-cluster`, the daemon's answer not kept), and a wait and retries
/// were added after; 2 runs since, both passed. The restore now prints the init's answer
/// and its errors carry the swarm state and dockerd's log tail. 2026-12-07, two more runs
/// on the shared lab: run 1 passed (254.7 s: lab up 137.4 s, backup 38.3 s, leader again
/// 14.3 s after dockerd stopped, every node Ready and the edge serving 75.3 s after the
/// restore began); run 2 failed in `lab restore swarm` after the init had succeeded in 6.3 s
/// ("Swarm initialized: current node … is now a manager"): the edge (Traefik → Varnish) did
/// not answer within `wait_edge`'s 240 s, VCL reloaded every 12 s. So the flaky part is the
/// edge coming back after the manager's dockerd restart, not the init; cause not found yet.
/// Run by hand until it has a record:
/// `PRESSDOCK_LAB_TESTS=1 cargo test -p infra --test lab -- --ignored a_lost_manager`.
#[test]
#[ignore = "failed once in 5 lab runs; run by hand until it has a record (see its comment)"]
fn a_lost_manager_state_is_recovered_from_its_backup() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let m1 = lab.topo.first_manager();
    let (services, nodes) = swarm_view(&lab);
    assert!(services.iter().any(|s| s == "pd_traefik"), "{services:?}");
    let t0 = Instant::now();
    let out = infra()
        .args(["lab", "backup", "swarm"])
        .output()
        .expect("lab backup swarm");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab backup swarm: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup_s = t0.elapsed().as_secs_f64();
    eprint!("{text}");
    // The copy took the manager down for a moment: it leads again with the same swarm.
    wait_until("every node Ready again after the backup", 90, 500, || {
        (swarm_view(&lab) == (services.clone(), nodes.clone())).then_some(())
    });

    // The manager's state is lost: dockerd stopped, /var/lib/docker/swarm gone.
    let mut lost = LostSwarm {
        lab: &lab,
        recovered: false,
    };
    lab.procs
        .stop(&format!("dockerd-{}", m1.host()), Duration::from_secs(30))
        .expect("stop the manager's dockerd");
    std::fs::rename(
        lost.root().join("swarm"),
        lost.root().join("swarm.test-lost"),
    )
    .expect("take the swarm state away");

    let t1 = Instant::now();
    let out = infra()
        .args(["lab", "restore", "swarm"])
        .output()
        .expect("lab restore swarm");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab restore swarm: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    let (services_after, _) = swarm_view(&lab);
    assert_eq!(services_after, services, "the backup's services");
    lab::sh::wait_for(
        "every node Ready under the recovered manager",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || (swarm_view(&lab).1 == nodes).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e:#}: now {:?}, before {nodes:?}", swarm_view(&lab).1));
    let recovered_s = t1.elapsed().as_secs_f64();
    lost.recovered = true;
    // The edge (Traefik and Varnish on the manager, restarted by the recovered swarm) serves
    // the lab's test site again: with our VCL's header, not a bare 404 of some proxy.
    wait_until("hello.lab.test through the edge", 120, 500, || {
        lab::http::get(
            &format!("127.0.0.1:{}", ports::EDGE),
            &format!("/pressdock-health?probe={}", t1.elapsed().as_micros()),
            "hello.lab.test",
        )
        .ok()
        .filter(|r| r.status == 200 && r.header("X-Pressdock-Cache").is_some())
    });
    eprintln!(
        "swarm: backup {backup_s:.1}s (the edge waited for meanwhile); recovered, every node \
         Ready, in {recovered_s:.1}s ({} services, {} nodes as before); edge serving after {:.1}s",
        services.len(),
        nodes.len(),
        t1.elapsed().as_secs_f64()
    );
}

/// Issue 15, item 5 on real nodes: a failed worker replaced as `cluster apply --swarm
/// --replace` replaces a droplet. A task pinned to the worker by its `pressdock.node` label
/// serves from it; the worker is killed (every process SIGKILLed); a manager's replacement is
/// refused for quorum (the lab's only manager); `lab node replace` moves the worker's sites
/// off it through the platform (when it runs), destroys the machine, makes a new one under
/// its name that joins and is labelled by the production steps (the old entry, down under
/// the same host name, removed), and the platform takes it back: one swarm node of that
/// name, a new id, its labels, the pinned task serving from it again.
#[test]
fn a_killed_worker_is_replaced_by_a_new_machine_under_its_name() {
    let Some((_g, lab)) = begin() else {
        return;
    };
    let platform = lab::platform::staff_client(&lab);
    let platform_nodes = || {
        platform.as_ref().and_then(|p| {
            use infra::cluster::evolve::Platform as _;
            infra::cluster::stack::block_on(|| async { p.nodes().await }).ok()
        })
    };
    // The worker holding the most of the platform's sites (the last one without a platform).
    let workers: Vec<lab::Node> = lab
        .topo
        .nodes()
        .into_iter()
        .filter(|n| n.role == lab::Role::Worker)
        .collect();
    let used = |host: &str| {
        platform_nodes()
            .and_then(|ns| ns.into_iter().find(|n| n.name == host))
            .map_or(0, |n| n.used_slots)
    };
    let victim = workers
        .iter()
        .rev()
        .max_by_key(|n| used(&n.host()))
        .cloned()
        .expect("a worker");
    // The platform's sites running there: each must run elsewhere after the replacement.
    let sites_there: Vec<String> = {
        let o = lab
            .topo
            .first_manager()
            .docker(["service", "ls", "--format", "{{.Name}}"])
            .output()
            .expect("service ls");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|s| s.starts_with("wp_"))
            .filter(|s| running_on(&lab, s).contains(&victim.host()))
            .map(str::to_owned)
            .collect()
    };
    let name = format!("rp-{}", rand_suffix());
    let host = create_site_like_service(
        &lab,
        &name,
        &format!("node.labels.pressdock.node=={}", victim.name),
    );
    let _svc = ServiceGuard(&lab, name.clone());
    wait_served_from(&host, &victim.host(), Duration::from_secs(90));
    let id_of = |h: &str| -> Vec<String> {
        let o = lab
            .topo
            .first_manager()
            .docker([
                "node",
                "ls",
                "--filter",
                &format!("name={h}"),
                "--format",
                "{{.Hostname}} {{.ID}}",
            ])
            .output()
            .expect("node ls");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(h))
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect()
    };
    let old_id = id_of(&victim.host());
    assert_eq!(old_id.len(), 1, "{old_id:?}");
    let used_before = platform.as_ref().map(|_| used(&victim.host()));

    let out = infra()
        .args(["lab", "node", "kill", &victim.name])
        .output()
        .expect("lab node kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the killed worker to be down in the swarm", 60, 300, || {
        node_labels(&lab, &old_id[0]).filter(|(s, _)| s == "down")
    });

    // Quorum: the lab's only manager is never replaced (nor killed).
    let out = infra()
        .args(["lab", "node", "replace", "m1"])
        .output()
        .expect("lab node replace m1");
    let refusal = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "replacing the only manager was accepted"
    );
    assert!(
        refusal.contains("leaves 0 of 1 manager(s)") && refusal.contains("needs 1 for quorum"),
        "{refusal}"
    );

    let t0 = Instant::now();
    let out = infra()
        .args(["lab", "node", "replace", &victim.name])
        .output()
        .expect("lab node replace");
    let replace_s = t0.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab node replace: {text}");
    // The production steps ran: the join, the labels, the old entry's removal.
    for want in [
        format!("{} ({}) joins as worker", victim.host(), victim.ip),
        format!("label {}: pressdock.node={}", victim.host(), victim.name),
        format!("remove down node {} ({})", victim.host(), old_id[0]),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let new_id = id_of(&victim.host());
    assert_eq!(
        new_id.len(),
        1,
        "one swarm node named {}: {new_id:?}",
        victim.host()
    );
    assert_ne!(new_id, old_id, "a new machine, not the old one back");
    let (state, labels) = node_labels(&lab, &new_id[0]).expect("the new node");
    assert_eq!(state, "ready");
    assert_eq!(labels["pressdock.node"], victim.name.as_str());
    assert_eq!(labels["pressdock.role"], "worker");
    assert_eq!(labels["pressdock.slots"], "25");
    assert_eq!(labels["pressdock.pool"], "wp");
    // The task pinned by the label runs on the new machine and serves through the edge.
    let served = wait_served_from(&host, &victim.host(), Duration::from_secs(120));
    if let Some(p) = &platform {
        use infra::cluster::evolve::Platform as _;
        assert!(
            text.contains(&format!("{}: its sites moved", victim.host())),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}: active again in the platform", victim.host())),
            "{text}"
        );
        let node = infra::cluster::stack::block_on(|| async { p.nodes().await })
            .expect("nodes")
            .into_iter()
            .find(|n| n.name == victim.host())
            .expect("the platform knows the node");
        assert_eq!(node.availability, "active", "{node:?}");
        // Its sites were moved by the platform's placement (the output above says so,
        // before the old machine was destroyed) and each runs once. Where is not asserted:
        // once the new machine is active, the balance loop may move a site onto it (it has
        // the old one's name), and a task being handed over is not `Running` for a moment
        // (CI ci-2: "runs on []" right after the replacement).
        for s in &sites_there {
            wait_until(
                &format!("site service {s} running on one node"),
                120,
                500,
                || (running_on(&lab, s).len() == 1).then_some(()),
            );
        }
    }
    eprintln!(
        "replace {}: {replace_s:.1}s (platform slots used on it before: {}; site services \
         moved off it: {sites_there:?}); pinned task served from the new machine {:.1}s later",
        victim.host(),
        used_before.map_or("- (no platform)".into(), |u| u.to_string()),
        served.as_secs_f64()
    );
}

// ------------------------------------------------------------------ the database stack

/// SQL as root over TCP to a Galera node of a database stack at its node's address (the
/// host reaches the lab's nodes' published ports); the password through the environment.
fn stack_sql(ip: &str, pw: &str, q: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--connect-timeout=3",
            "-h",
            ip,
            "-P",
            "3306",
            "-u",
            "root",
            "-N",
            "-B",
            "-e",
            q,
        ])
        .env("MYSQL_PWD", pw)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `(cluster size, state, cluster status)` of a Galera node, if it answers.
fn stack_galera_state(ip: &str, pw: &str) -> Option<(u32, String, String)> {
    let out = stack_sql(
        ip,
        pw,
        "SHOW GLOBAL STATUS WHERE Variable_name IN \
         ('wsrep_cluster_size','wsrep_local_state_comment','wsrep_cluster_status')",
    )
    .ok()?;
    let f: std::collections::BTreeMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('\t')).collect();
    Some((
        f.get("wsrep_cluster_size")?.parse().ok()?,
        (*f.get("wsrep_local_state_comment")?).to_owned(),
        (*f.get("wsrep_cluster_status")?).to_owned(),
    ))
}

/// What the database stack test changed on the shared lab, undone however the test ends: its
/// services, secrets and network, the nodes' `pressdock.galera` labels, the image tag, the
/// data folders. The lab's own host Galera is not touched.
struct DbStack<'a> {
    lab: &'a Lab,
    stack: String,
    nodes: Vec<lab::Node>,
    dir: std::path::PathBuf,
    tag: String,
}

impl Drop for DbStack<'_> {
    fn drop(&mut self) {
        let m = self.lab.topo.first_manager();
        let ls = m
            .docker([
                "service",
                "ls",
                "--filter",
                &format!("label=com.docker.stack.namespace={}", self.stack),
                "-q",
            ])
            .output();
        if let Ok(out) = ls {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = m.docker(["service", "rm", id]).output();
            }
        }
        // Secrets and the network go once no task uses them.
        for _ in 0..60 {
            let left = m
                .docker([
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.stack.namespace={}", self.stack),
                ])
                .output()
                .map(|o| o.stdout.is_empty())
                .unwrap_or(true);
            let mut all_gone = left;
            for n in &self.nodes {
                let none = n
                    .docker([
                        "ps",
                        "-aq",
                        "--filter",
                        &format!("label=com.docker.stack.namespace={}", self.stack),
                    ])
                    .output()
                    .map(|o| o.stdout.is_empty())
                    .unwrap_or(true);
                all_gone &= none;
            }
            if all_gone {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        for s in [
            "galera_root_password",
            "galera_monitor_password",
            "proxysql_admin_password",
        ] {
            let _ = m
                .docker(["secret", "rm", &format!("{}_{s}", self.stack)])
                .output();
        }
        let _ = m.docker(["network", "rm", "pd-db"]).output();
        for n in &self.nodes {
            let _ = m
                .docker([
                    "node",
                    "update",
                    "--label-rm",
                    "pressdock.galera",
                    &n.host(),
                ])
                .output();
            let _ = n.docker(["image", "rm", &self.tag]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 15, item 4: `stacks/database.yml` on the lab's swarm, under a stack name of its own
/// (the lab's database tier stays its host Galera behind HAProxy, untouched). Three lab nodes
/// (all of them, when the lab has three) are labelled `pressdock.galera=1..3` for the test;
/// no node is labelled `pressdock.database`, so ProxySQL (no image here) runs nowhere. With
/// the lab's own build of images/galera (`local/galera:dev`, imported on every node by `lab
/// up`): the three services form one cluster, each node `Synced` in a Primary component of
/// size 3, and a write on node 1 is read on the last; a deploy with the same variables
/// changes nothing; a new image (a second tag of the same build) rolls the Galera services
/// one after another (each update started after the previous one completed), with a Primary
/// component of at least 2 nodes seen throughout, and the data is still there after.
#[test]
fn database_stack_forms_a_synced_galera_cluster_and_rolls_one_node_at_a_time() {
    use infra::cluster::stack;
    let Some((_g, lab)) = begin() else {
        return;
    };
    let nodes: Vec<lab::Node> = lab.topo.nodes().into_iter().take(3).collect();
    assert!(nodes.len() >= 2, "the lab has {} nodes", nodes.len());
    let n_nodes = u32::try_from(nodes.len()).unwrap_or(0);
    let suffix = rand_suffix();
    let stack_name = format!("dbt{suffix}");
    let dir = Path::new(STATE).join(format!("dbstack-{suffix}"));
    let guard = DbStack {
        lab: &lab,
        stack: stack_name.clone(),
        nodes: nodes.clone(),
        dir: dir.clone(),
        tag: format!("local/galera:rolled-{suffix}"),
    };
    // The nodes' data folders (the stack binds `<dir>/data/{{.Node.Hostname}}`), passwords.
    for n in &nodes {
        std::fs::create_dir_all(dir.join("data").join(n.host())).expect("data folder");
    }
    let pw = |name: &str| {
        let p = dir.join(name);
        lab::sh::write_private(&p, &format!("pw{}", lab::sh::random_hex(12).expect("hex")))
            .expect("password file");
        p.to_string_lossy().into_owned()
    };
    let root_file = pw("root");
    let root_pw = std::fs::read_to_string(&root_file).expect("root password");
    let m = lab.topo.first_manager();
    for (i, n) in nodes.iter().enumerate() {
        let out = m
            .docker([
                "node",
                "update",
                "--label-add",
                &format!("pressdock.galera={}", i + 1),
                &n.host(),
            ])
            .output()
            .expect("docker node update");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ips: Vec<String> = nodes.iter().map(|n| n.ip.clone()).collect();
    let mut vars: std::collections::BTreeMap<String, String> = [
        ("PD_GALERA_ROOT_PASSWORD_FILE", root_file.clone()),
        ("PD_GALERA_MONITOR_PASSWORD_FILE", pw("monitor")),
        ("PD_PROXYSQL_ADMIN_PASSWORD_FILE", pw("admin")),
        ("PD_DB_NODES", ips.join(" ")),
        (
            "PD_GALERA_DATA",
            format!("{}/data/{{{{.Node.Hostname}}}}", dir.display()),
        ),
        (
            "PD_NODE_DIR",
            format!("{STATE}/nodes/{{{{.Node.Hostname}}}}/node"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(infra::cluster::images::Images::lab().vars())
    .collect();
    // With fewer than three nodes the services of the missing ones stay pending.
    let deploy = |vars: &std::collections::BTreeMap<String, String>| {
        stack::deploy_file(
            &m.sock(),
            &stack_name,
            &lab.repo,
            "stacks/database.yml",
            vars,
            Duration::from_secs(900),
        )
        .unwrap_or_else(|e| panic!("deploy: {e:#}"))
    };
    let t0 = Instant::now();
    let out = deploy(&vars);
    assert!(
        out.values().all(|o| *o == stack::Outcome::Created),
        "{out:?}"
    );
    let synced = |within: u64| {
        wait_until(
            "every Galera node Synced in one Primary component",
            within,
            2000,
            || {
                let states: Vec<_> = ips
                    .iter()
                    .map(|ip| stack_galera_state(ip, &root_pw))
                    .collect();
                states
                    .iter()
                    .all(|s| {
                        s.as_ref().is_some_and(|(size, state, status)| {
                            *size == n_nodes && state == "Synced" && status == "Primary"
                        })
                    })
                    .then_some(states)
            },
        )
    };
    synced(420);
    let formed = t0.elapsed();
    // Each task on its node, running: swarm says `Running` once its healthcheck passed (every
    // 5 s), which may come a moment after the node says Synced.
    for n in 1..=nodes.len() {
        let want = vec![nodes[n - 1].host()];
        wait_until(
            &format!("galera-{n} running on {}", want[0]),
            60,
            1000,
            || (task_nodes(&lab, &format!("{stack_name}_galera-{n}")) == want).then_some(()),
        );
    }
    assert!(task_nodes(&lab, &format!("{stack_name}_proxysql")).is_empty());
    let v = rand_suffix();
    stack_sql(
        &ips[0],
        &root_pw,
        &format!(
            "CREATE DATABASE IF NOT EXISTS dbstack; CREATE TABLE IF NOT EXISTS dbstack.kv \
             (k VARCHAR(32) PRIMARY KEY, v VARCHAR(64)); INSERT INTO dbstack.kv VALUES ('{v}', 'one')"
        ),
    )
    .unwrap_or_else(|e| panic!("write on node 1: {e}"));
    let last = ips.last().cloned().unwrap_or_default();
    let read = |ip: &str| {
        stack_sql(
            ip,
            &root_pw,
            &format!("SELECT v FROM dbstack.kv WHERE k='{v}'"),
        )
        .ok()
    };
    assert_eq!(read(&last).as_deref(), Some("one"));
    // The same variables: nothing changes.
    let again = deploy(&vars);
    assert!(
        again.values().all(|o| *o == stack::Outcome::Unchanged),
        "{again:?}"
    );
    // A new image: the same build under another tag on every node.
    for n in &nodes {
        let out = n
            .docker(["tag", "local/galera:dev", &guard.tag])
            .output()
            .expect("docker tag");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    vars.insert("PD_IMAGE_GALERA".into(), guard.tag.clone());
    // Quorum watched while the stack rolls: the largest Primary component any node reports.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        let ips = ips.clone();
        let pw = root_pw.clone();
        std::thread::spawn(move || {
            let mut worst = u32::MAX;
            let mut looks = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let best = ips
                    .iter()
                    .filter_map(|ip| stack_galera_state(ip, &pw))
                    .filter(|(_, _, status)| status == "Primary")
                    .map(|(size, _, _)| size)
                    .max()
                    .unwrap_or(0);
                worst = worst.min(best);
                looks += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            (worst, looks)
        })
    };
    let t1 = Instant::now();
    let rolled = deploy(&vars);
    let roll = t1.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, looks) = watch.join().expect("watcher");
    for n in 1..=nodes.len() {
        assert_eq!(
            rolled[&format!("{stack_name}_galera-{n}")],
            stack::Outcome::Updated
        );
    }
    assert_eq!(
        rolled[&format!("{stack_name}_proxysql")],
        stack::Outcome::Unchanged
    );
    // Serial: each Galera service's update started after the previous one's completed.
    let mut windows = Vec::new();
    for n in 1..=nodes.len() {
        let out = m
            .docker([
                "service",
                "inspect",
                "--format",
                "{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt.Format \"2006-01-02T15:04:05.000Z07:00\"}} {{.UpdateStatus.CompletedAt.Format \"2006-01-02T15:04:05.000Z07:00\"}}",
                &format!("{stack_name}_galera-{n}"),
            ])
            .output()
            .expect("service inspect");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let f: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        assert_eq!(f.first().map(String::as_str), Some("completed"), "{text}");
        windows.push((f[1].clone(), f[2].clone()));
    }
    for w in windows.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlapping updates: {windows:?}");
    }
    assert!(
        worst >= n_nodes.saturating_sub(1) && worst >= 1,
        "a Primary component of {worst} node(s) at worst during the roll ({looks} looks)"
    );
    synced(180);
    assert_eq!(read(&ips[0]).as_deref(), Some("one"));
    assert_eq!(read(&last).as_deref(), Some("one"));
    eprintln!(
        "database stack: {} nodes Synced {:.1} s after the deploy; rolled one node at a time in \
         {:.1} s ({windows:?}); smallest Primary component seen {worst} ({looks} looks)",
        nodes.len(),
        formed.as_secs_f64(),
        roll.as_secs_f64()
    );
    drop(guard);
}
