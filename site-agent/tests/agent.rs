//! Integration tests of the real `pressdock-agent` binary.
//!
//! - `supervises_restarts_reports_and_stops`: the agent supervises two `sleep`s standing
//!   in for php-fpm and nginx; a killed child comes back, `/healthz` and `/metrics`
//!   answer over HTTP, access-log datagrams become request metrics, the reports reach a
//!   control plane (a small axum server in the test, standing in for the platform's
//!   endpoint, which is not written yet) whose desired configs are persisted with older
//!   generations refused, and SIGTERM stops the children and the agent gracefully.
//! - `purges_are_forwarded_and_sigterm_drains`: the plugin's `POST /purge` on the agent
//!   reaches the control plane (a small axum server in the test: the agent's own protocol
//!   peer) as a `PurgeRequest` with the bearer token, merged while a request is retried
//!   after a 503, dropped after a 422; reports carry the swarm node and task ids; SIGTERM
//!   first drains (`/readyz` 503 `draining`, children still up), then stops.
//! - `mu_plugin_is_valid_php_and_collects_what_changed`: `php -l` on the plugin, and the
//!   plugin under stubbed WordPress functions (`tests/php/purge-harness.php`) for post
//!   saves, trashes, comments, options, menus.
//! - `database_size_on_local_mariadb`: the DB-size query against the local MariaDB.
//! - `wordpress_installs_and_serves_on_the_real_stack`: real php-fpm, nginx, php-cli and
//!   Debian's WordPress (when installed on this machine) with the local MariaDB: the
//!   installer runs once, the site answers with its title through the agent's nginx; a
//!   post published through WordPress reaches the control plane as a purge of its pages.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use site_agent::protocol::{
    AgentReport, DesiredConfig, PURGE_PATH, PurgeRequest, PurgeResponse, ReportResponse,
};

/// Swarm's stop grace for a site's task (`stop_grace_period` of the service spec in
/// backends' swarm driver): SIGKILL follows, so an agent must have exited by then. The
/// only deadline a stop is held to here; how long a stop takes is measured by
/// `scripts/bench-agent.sh`, never asserted (a loaded machine makes anything slower).
const SWARM_STOP_GRACE: Duration = Duration::from_secs(20);

/// Waits for the agent to exit after a signal; panics (and kills it) past `SWARM_STOP_GRACE`.
async fn exit_within_stop_grace(agent: &mut Agent, t0: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(s) = agent.child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            t0.elapsed() < SWARM_STOP_GRACE,
            "the agent was still running when swarm would have killed it; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn salts() -> String {
    site_agent::config::SALT_NAMES
        .iter()
        .map(|n| format!("{n}={}\n", "s".repeat(64)))
        .collect()
}

/// A temp dir readable by www-data (php-fpm's workers), with the secrets and the env.
struct TestSite {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    listen_port: u16,
}

impl TestSite {
    fn new(id: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let sec = dir.path().join("secrets");
        std::fs::create_dir(&sec).expect("mkdir");
        let put = |name: &str, value: &str| {
            std::fs::write(sec.join(name), value).expect("write");
            sec.join(name).display().to_string()
        };
        let listen_port = free_port();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let env = HashMap::from([
            ("PRESSDOCK_SITE_ID".into(), id.into()),
            ("PRESSDOCK_DOMAINS".into(), format!("{id}.test")),
            ("PRESSDOCK_PRIMARY_DOMAIN".into(), format!("{id}.test")),
            ("PRESSDOCK_DB_HOST".into(), "127.0.0.1:1".into()),
            ("PRESSDOCK_DB_NAME".into(), format!("wp_{id}")),
            ("PRESSDOCK_DB_USER".into(), format!("wp_{id}")),
            ("PRESSDOCK_REDIS_SENTINELS".into(), "127.0.0.1:1".into()),
            ("PRESSDOCK_REDIS_MASTER_NAME".into(), "pressdock".into()),
            ("PRESSDOCK_REDIS_USER".into(), format!("wp_{id}")),
            ("PRESSDOCK_REDIS_PREFIX".into(), format!("wp_{id}:")),
            ("PRESSDOCK_WP_CONTENT".into(), p("wp-content")),
            (
                "PRESSDOCK_DB_PASSWORD_FILE".into(),
                put("db_password", "pw\n"),
            ),
            (
                "PRESSDOCK_REDIS_PASSWORD_FILE".into(),
                put("redis_password", "rpw\n"),
            ),
            (
                "PRESSDOCK_AGENT_TOKEN_FILE".into(),
                put("agent_token", "the-token\n"),
            ),
            ("PRESSDOCK_WP_SALTS_FILE".into(), put("wp_salts", &salts())),
            (
                "PRESSDOCK_AGENT_LISTEN".into(),
                format!("127.0.0.1:{listen_port}"),
            ),
            ("PRESSDOCK_AGENT_RUN_DIR".into(), p("run")),
            ("PRESSDOCK_AGENT_STATE_DIR".into(), p("state")),
            (
                "PRESSDOCK_AGENT_WP_CONFIG".into(),
                p("etc/config-default.php"),
            ),
            ("PRESSDOCK_AGENT_WP_ROOT".into(), p("wordpress")),
            ("PRESSDOCK_AGENT_CHECK_SECS".into(), "0.3".into()),
            ("PRESSDOCK_AGENT_REPORT_SECS".into(), "0.3".into()),
            ("PRESSDOCK_AGENT_SIZE_SECS".into(), "1".into()),
            ("PRESSDOCK_AGENT_STOP_GRACE_SECS".into(), "3".into()),
            ("PRESSDOCK_AGENT_DRAIN_SECS".into(), "0".into()),
            ("PRESSDOCK_AGENT_LOG".into(), "info".into()),
        ]);
        Self {
            dir,
            env,
            listen_port,
        }
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn spawn(&self) -> Agent {
        let log = self.path("agent.log");
        // Its own process group: on drop the group goes, so a test that fails (or an
        // agent killed by a test) leaves no php-fpm, nginx or stand-in behind.
        let child = Command::new(env!("CARGO_BIN_EXE_pressdock-agent"))
            .process_group(0)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the agent");
        Agent {
            child,
            base: format!("http://127.0.0.1:{}", self.listen_port),
            log,
        }
    }
}

struct Agent {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("{}{path}", self.base)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    async fn wait_for<T>(
        &self,
        what: &str,
        secs: u64,
        mut f: impl AsyncFnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self).await {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; agent log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn healthz(&self) -> serde_json::Value {
        let (status, body) = self.get("/healthz").await.expect("healthz");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("healthz json")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let group = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // php-fpm's and nginx's masters lead groups of their own: find them by this
        // site's directory in their command line (`-c <dir>/run/nginx.conf`).
        if let Some(dir) = self.log.parent().map(|d| d.display().to_string()) {
            kill_processes_mentioning(&dir);
        }
    }
}

/// SIGKILLs every process whose command line contains `needle`, and their descendants
/// (php-fpm's and nginx's workers do not name the directory, and outlive a killed master).
fn kill_processes_mentioning(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    // (pid, parent, matches) of every process, read once.
    let procs: Vec<(i32, i32, bool)> = entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((
                pid,
                ppid,
                String::from_utf8_lossy(&cmdline).contains(needle),
            ))
        })
        .collect();
    let mut doomed: Vec<i32> = procs.iter().filter(|p| p.2).map(|p| p.0).collect();
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        for (pid, ppid, _) in &procs {
            if *ppid == parent && !doomed.contains(pid) {
                doomed.push(*pid);
            }
        }
        i += 1;
    }
    for pid in doomed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn child_pid(h: &serde_json::Value, name: &str) -> Option<i32> {
    h["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?["pid"]
        .as_i64()
        .map(|p| p as i32)
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry: look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A report and its `Authorization` header.
type Received = (Option<String>, AgentReport);

/// A purge and its `Authorization` header.
type ReceivedPurge = (Option<String>, PurgeRequest);

/// The control plane: records reports, answers with the queued desired configs; records
/// purges, answers with the queued statuses (then 202).
#[derive(Clone, Default)]
struct FakePlatform {
    reports: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<Vec<DesiredConfig>>>,
    purges: Arc<Mutex<Vec<ReceivedPurge>>>,
    purge_statuses: Arc<Mutex<Vec<u16>>>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn purge(
    State(p): State<FakePlatform>,
    headers: HeaderMap,
    Json(r): Json<PurgeRequest>,
) -> (StatusCode, Json<PurgeResponse>) {
    let banned = if r.all { 2 } else { 2 * r.paths.len() as u32 };
    p.purges.lock().expect("lock").push((bearer(&headers), r));
    let status = {
        let mut s = p.purge_statuses.lock().expect("lock");
        if s.is_empty() { 202 } else { s.remove(0) }
    };
    (
        StatusCode::from_u16(status).expect("status"),
        Json(PurgeResponse { banned }),
    )
}

async fn report(
    State(p): State<FakePlatform>,
    headers: HeaderMap,
    Json(r): Json<AgentReport>,
) -> Json<ReportResponse> {
    p.reports.lock().expect("lock").push((bearer(&headers), r));
    let desired = {
        let mut a = p.answers.lock().expect("lock");
        if a.len() > 1 {
            Some(a.remove(0))
        } else {
            a.first().cloned()
        }
    };
    Json(ReportResponse {
        desired,
        report_interval_secs: None,
    })
}

async fn start_platform(p: FakePlatform) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let app = axum::Router::new()
        .route(site_agent::protocol::REPORT_PATH, post(report))
        .route(PURGE_PATH, post(purge))
        .with_state(p);
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}")
}

fn desired(generation: u64, max_children: u32) -> DesiredConfig {
    let mut d: DesiredConfig =
        serde_json::from_value(serde_json::json!({ "generation": generation })).expect("desired");
    d.php.max_children = max_children;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervises_restarts_reports_and_stops() {
    let mut site = TestSite::new("sup1test");
    // Stands in for php-fpm: ignores SIGUSR2 (php-fpm's reload, sent when the desired
    // PHP settings change), stops on SIGQUIT like php-fpm.
    let fake_fpm = site.path("fake-php-fpm");
    std::fs::write(&fake_fpm, "#!/bin/sh\ntrap '' USR2\nexec sleep 1000\n").expect("script");
    std::fs::set_permissions(&fake_fpm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    site.env.insert(
        "PRESSDOCK_AGENT_PHP_FPM_CMD".into(),
        fake_fpm.display().to_string(),
    );
    site.env
        .insert("PRESSDOCK_AGENT_NGINX_CMD".into(), "sleep 1001".into());
    site.env
        .insert("PRESSDOCK_AGENT_INSTALL".into(), "0".into());
    let platform = FakePlatform::default();
    // Generation 5, then a stale replica's 3, then 5 again.
    *platform.answers.lock().expect("lock") = vec![desired(5, 3), desired(3, 9), desired(5, 3)];
    site.env.insert(
        "PRESSDOCK_CONTROL_URL".into(),
        start_platform(platform.clone()).await,
    );
    let agent = site.spawn();

    // Up: both children run.
    let h = agent
        .wait_for("both children", 10, async |a| {
            let (s, b) = a.get("/healthz").await?;
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            (s == 200 && child_pid(&v, "php-fpm").is_some() && child_pid(&v, "nginx").is_some())
                .then_some(v)
        })
        .await;
    assert_eq!(h["live"], true);
    let fpm = child_pid(&h, "php-fpm").expect("pid");
    let nginx = child_pid(&h, "nginx").expect("pid");

    // The files were rendered atomically into place.
    let cfg = std::fs::read_to_string(site.path("etc/config-default.php")).expect("wp-config");
    assert!(cfg.contains("define('DB_HOST', '127.0.0.1:1');"));
    assert!(site.path("run/nginx.conf").exists());
    assert!(site.path("wp-content/object-cache.php").exists());
    assert!(site.path("wp-content/uploads").is_dir());
    // wp-config holds the database and Redis passwords: group (www-data) only, never
    // world-readable; the drop-in and the plugin hold no secret.
    let mode = |p: &str| {
        std::fs::metadata(site.path(p))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("etc/config-default.php"), 0o640);
    assert_eq!(mode("wp-content/object-cache.php"), 0o644);
    assert_eq!(mode("wp-content/mu-plugins/pressdock-cache.php"), 0o644);
    assert!(
        !cfg.contains("the-token"),
        "the agent token is not in wp-config"
    );
    // no_new_privs on the agent and so on what it starts (php-fpm's stand-in here).
    let nnp = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("NoNewPrivs:").map(|v| v.trim().to_owned()))
    };
    assert_eq!(nnp(agent.child.id() as i32).as_deref(), Some("1"));
    assert_eq!(nnp(fpm).as_deref(), Some("1"));

    // Kill php-fpm's stand-in: restarted (new pid), counted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fpm),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let h = agent
        .wait_for("php-fpm restarted", 10, async |a| {
            let v = a.healthz().await;
            child_pid(&v, "php-fpm").filter(|p| *p != fpm).map(|_| v)
        })
        .await;
    let fpm2 = child_pid(&h, "php-fpm").expect("pid");
    assert!(!alive(fpm));
    assert_eq!(child_pid(&h, "nginx"), Some(nginx), "nginx untouched");
    let php_status = h["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "php-fpm"))
        .cloned()
        .expect("status");
    assert_eq!(php_status["restarts"], 1);
    assert_eq!(php_status["last_exit"], "signal: 9 (SIGKILL)");

    // Access-log datagrams (as nginx sends them) become request metrics.
    let sock = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    for line in [
        "<190>Nov 28 19:20:00 nginx: 200 0.004 512",
        "<190>Nov 28 19:20:00 nginx: 502 0.700 100",
    ] {
        sock.send_to(line.as_bytes(), site.path("run/access.sock"))
            .expect("send");
    }
    let m = agent
        .wait_for("request metrics", 5, async |a| {
            let (_, text) = a.get("/metrics").await?;
            (metric(&text, "pressdock_http_request_duration_seconds_count") == Some(2.0))
                .then_some(text)
        })
        .await;
    assert_eq!(
        metric(&m, "pressdock_http_requests_total{code=\"5xx\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "pressdock_http_request_duration_seconds_bucket{le=\"0.005\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "pressdock_child_restarts_total{child=\"php-fpm\"}"),
        Some(1.0)
    );
    let rss = metric(&m, "pressdock_agent_resident_memory_bytes").expect("rss");
    assert!(rss > 1e6 && rss < 200e6, "rss {rss}");
    assert_eq!(metric(&m, "pressdock_ready"), Some(0.0), "no DB, no Redis");
    // wp-content: object-cache.php plus the empty dirs.
    let wp_bytes = agent
        .wait_for("wp-content size", 5, async |a| {
            let (_, text) = a.get("/metrics").await?;
            metric(&text, "pressdock_wp_content_bytes")
        })
        .await;
    assert_eq!(
        wp_bytes as usize,
        site_agent::render::OBJECT_CACHE_PHP.len() + site_agent::render::PURGE_PLUGIN_PHP.len()
    );

    // /readyz: 503 with the failing checks named, and only named: each check is exactly
    // `{"name", "ok"}`, no reason (the database at 127.0.0.1:1 refused the connection).
    let (status, body) = agent.get("/readyz").await.expect("readyz");
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let checks = v["checks"].as_array().expect("checks");
    let failing: Vec<&str> = checks
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        failing.contains(&"database") && failing.contains(&"redis"),
        "{body}"
    );
    for c in checks {
        let keys: Vec<&String> = c.as_object().expect("check").keys().collect();
        assert_eq!(keys, ["name", "ok"], "{body}");
    }
    for leak in ["127.0.0.1", "refused", "error", "sentinel"] {
        assert!(!body.to_lowercase().contains(leak), "{leak} in {body}");
    }
    // The authenticated report to the platform keeps the reasons.
    let db = agent
        .wait_for("a report with the database check", 10, async |_| {
            let r = platform.reports.lock().expect("lock");
            r.iter()
                .rev()
                .flat_map(|(_, x)| x.health.checks.iter())
                .find(|c| c.name == "database")
                .cloned()
        })
        .await;
    assert!(!db.ok);
    assert!(
        db.detail.as_deref().is_some_and(|d| !d.is_empty()),
        "{db:?}"
    );

    // The container's health check (`pressdock-agent health` in the swarm spec).
    let health = |ready: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pressdock-agent"));
        c.arg("health")
            .env(
                "PRESSDOCK_AGENT_LISTEN",
                format!("0.0.0.0:{}", site.listen_port),
            )
            .stderr(Stdio::null());
        if ready {
            c.arg("--ready");
        }
        c.status().expect("health").success()
    };
    assert!(health(false), "alive");
    assert!(!health(true), "not ready");

    // Reports: bearer token; generation 5 held, the stale 3 refused and never persisted.
    agent
        .wait_for(
            "a report holding generation 5 after the stale one",
            10,
            async |_| {
                let r = platform.reports.lock().expect("lock");
                (r.len() >= 4 && r.last()?.1.desired_generation == Some(5)).then_some(())
            },
        )
        .await;
    {
        let r = platform.reports.lock().expect("lock");
        assert_eq!(r[0].0.as_deref(), Some("Bearer the-token"));
        assert_eq!(r[0].1.site_id, "sup1test");
        assert_eq!(r[0].1.seq, 1);
        assert!(r.iter().all(|(_, x)| x.desired_generation != Some(3)));
        let last = &r.last().expect("report").1;
        assert_eq!(last.counters.child_restarts_total, 1);
        assert_eq!(last.counters.requests_total, 2);
        assert!(!last.health.ready);
        assert_eq!(last.applied.as_ref().map(|a| a.generation), Some(5));
    }
    let state: DesiredConfig = serde_json::from_slice(
        &std::fs::read(site.path("state/desired.json")).expect("state file"),
    )
    .expect("state json");
    assert_eq!(state.generation, 5);
    let fpm_conf = std::fs::read_to_string(site.path("run/php-fpm.conf")).expect("fpm conf");
    assert!(
        fpm_conf.contains("pm.max_children = 3"),
        "desired PHP settings applied"
    );
    assert!(agent.log().contains("refused an older desired config"));

    // SIGTERM: children stopped, agent exits 0 before swarm's stop grace runs out.
    let mut agent = agent;
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let status = exit_within_stop_grace(&mut agent, t0).await;
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(
        !alive(fpm2) && !alive(nginx),
        "children stopped with the agent"
    );
    assert!(agent.log().contains("stopped"));

    // Restarted agent: the persisted generation survives; the platform's 5 is "same".
    let agent = site.spawn();
    agent
        .wait_for("restarted agent reports generation 5", 10, async |_| {
            let r = platform.reports.lock().expect("lock");
            let last = &r.last()?.1;
            (last.seq == 1 && last.desired_generation == Some(5)).then_some(())
        })
        .await;
}

async fn post_purge(agent: &Agent, body: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/purge", agent.base))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /purge");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_are_forwarded_and_sigterm_drains() {
    let mut site = TestSite::new("purge1test");
    for (k, v) in [
        ("PRESSDOCK_AGENT_PHP_FPM_CMD", "sleep 1000"),
        ("PRESSDOCK_AGENT_NGINX_CMD", "sleep 1001"),
        ("PRESSDOCK_AGENT_INSTALL", "0"),
        ("PRESSDOCK_AGENT_DRAIN_SECS", "1.5"),
        ("PRESSDOCK_AGENT_STOP_GRACE_SECS", "4"),
        ("PRESSDOCK_AGENT_REPORT_SECS", "30"),
        ("PRESSDOCK_NODE_ID", "x2ny5jrbcx0sd7xybq5sn9ahu"),
        ("PRESSDOCK_TASK_ID", "{{.Task.ID}}"),
    ] {
        site.env.insert(k.into(), v.into());
    }
    let platform = FakePlatform::default();
    // The first purge meets a 503 (retried), the second goes through, the third is refused.
    *platform.purge_statuses.lock().expect("lock") = vec![503, 202, 422];
    site.env.insert(
        "PRESSDOCK_CONTROL_URL".into(),
        start_platform(platform.clone()).await,
    );
    let agent = site.spawn();
    let h = agent
        .wait_for("both children", 10, async |a| {
            let (s, b) = a.get("/healthz").await?;
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            (s == 200 && child_pid(&v, "php-fpm").is_some() && child_pid(&v, "nginx").is_some())
                .then_some(v)
        })
        .await;
    let fpm = child_pid(&h, "php-fpm").expect("pid");

    // The plugin is installed as compiled in, and wp-config tells it the agent's port.
    let plugin = site.path("wp-content/mu-plugins/pressdock-cache.php");
    assert_eq!(
        std::fs::read_to_string(&plugin).expect("mu-plugin"),
        site_agent::render::PURGE_PLUGIN_PHP
    );
    let cfg = std::fs::read_to_string(site.path("etc/config-default.php")).expect("wp-config");
    assert!(cfg.contains(&format!(
        "define('PRESSDOCK_AGENT_PURGE_URL', 'http://127.0.0.1:{}/purge');",
        site.listen_port
    )));

    // Reports carry the node id; the unexpanded task template is left out.
    let first = agent
        .wait_for("a report", 10, async |_| {
            platform.reports.lock().expect("lock").first().cloned()
        })
        .await;
    assert_eq!(
        first.1.node_id.as_deref(),
        Some("x2ny5jrbcx0sd7xybq5sn9ahu")
    );
    assert_eq!(first.1.task_id, None);

    // A purge from the plugin: 202 at once, forwarded; the control plane says 503.
    let (s, b) = post_purge(&agent, r#"{"paths":["/hello-world/","/"],"all":false}"#).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b, serde_json::json!({"queued_paths": 2, "all": false}));
    agent
        .wait_for("the first purge", 10, async |_| {
            (platform.purges.lock().expect("lock").len() == 1).then_some(())
        })
        .await;
    // Queued while the retry waits (1 s backoff): merged into it.
    let (s, _) = post_purge(&agent, r#"{"paths":["/feed/","/hello-world/"]}"#).await;
    assert_eq!(s, 202);
    agent
        .wait_for("the retried purge", 10, async |_| {
            (platform.purges.lock().expect("lock").len() == 2).then_some(())
        })
        .await;
    {
        let p = platform.purges.lock().expect("lock");
        let want_first = PurgeRequest {
            site_id: "purge1test".into(),
            paths: vec!["/".into(), "/hello-world/".into()],
            all: false,
        };
        assert_eq!(p[0], (Some("Bearer the-token".into()), want_first));
        assert_eq!(p[1].0.as_deref(), Some("Bearer the-token"));
        assert_eq!(
            p[1].1,
            PurgeRequest {
                site_id: "purge1test".into(),
                paths: vec!["/".into(), "/feed/".into(), "/hello-world/".into()],
                all: false,
            }
        );
    }

    // Invalid paths are refused here, before anything is queued.
    let (s, b) = post_purge(&agent, r#"{"paths":["/ok/","/with space"]}"#).await;
    assert_eq!(s, 422);
    assert_eq!(b["status"], 422);
    // Everything: the control plane refuses it with 422; dropped, not retried.
    let (s, b) = post_purge(&agent, r#"{"all":true}"#).await;
    assert_eq!((s, &b["all"]), (202, &serde_json::json!(true)));
    let m = agent
        .wait_for("the dropped purge counted", 10, async |a| {
            let (_, t) = a.get("/metrics").await?;
            (metric(&t, "pressdock_agent_purges_total{result=\"dropped\"}") == Some(1.0))
                .then_some(t)
        })
        .await;
    assert_eq!(
        metric(&m, "pressdock_agent_purges_total{result=\"sent\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "pressdock_agent_purges_total{result=\"failed\"}"),
        Some(1.0)
    );
    {
        let p = platform.purges.lock().expect("lock");
        assert_eq!(p.len(), 3);
        assert!(p[2].1.all && p[2].1.paths.is_empty());
    }

    // SIGTERM: not ready at once (check `draining`), still serving, a report says so.
    let mut agent = agent;
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let body = agent
        .wait_for("draining", 5, async |a| {
            let (s, b) = a.get("/readyz").await?;
            (s == 503 && b.contains("\"draining\"")).then_some(b)
        })
        .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["ready"], false);
    // Still up: `draining` was answered during the drain, not after it.
    assert!(alive(fpm), "php-fpm serves during the drain");
    assert_eq!(agent.healthz().await["live"], true);
    agent
        .wait_for("a draining report", 5, async |_| {
            let r = platform.reports.lock().expect("lock");
            r.iter()
                .any(|(_, x)| x.health.checks.iter().any(|c| c.name == "draining"))
                .then_some(())
        })
        .await;
    // A purge during the drain still goes out.
    let (s, _) = post_purge(&agent, r#"{"paths":["/last/"]}"#).await;
    assert_eq!(s, 202);
    let status = exit_within_stop_grace(&mut agent, t0).await;
    let took = t0.elapsed();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    // The drain setting is a promise to the edge: never cut short without a second signal
    // (a lower bound: a slow machine only makes it longer).
    assert!(
        took >= Duration::from_millis(1500),
        "stopped before the 1.5 s drain ended: {took:?}"
    );
    assert!(!alive(fpm));
    // The refused purge (422) was never sent again, in all the agent's life: the fourth
    // and last request is the one made during the drain.
    let p = platform.purges.lock().expect("lock");
    assert_eq!(p.len(), 4, "a 422 is not retried: {p:?}");
    assert_eq!(
        p.last().map(|x| x.1.paths.clone()),
        Some(vec!["/last/".to_owned()])
    );
    let log = agent.log();
    assert!(log.contains("purge refused; dropped"), "{log}");
    assert!(log.contains("drained; stopping the children"), "{log}");
    assert!(
        !log.contains("the-token"),
        "the token never reaches the log"
    );
}

/// `php -l` on the plugin and the plugin under stubbed WordPress. Skipped (with a
/// message) without php-cli.
#[test]
fn mu_plugin_is_valid_php_and_collects_what_changed() {
    if !have("php") {
        eprintln!("SKIPPED: needs php-cli (apt install php-cli; scripts/install-deps.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = dir.path().join("pressdock-cache.php");
    std::fs::write(&plugin, site_agent::render::PURGE_PLUGIN_PHP).expect("write");
    let lint = Command::new("php")
        .arg("-l")
        .arg(&plugin)
        .output()
        .expect("php -l");
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    // Outside WordPress it does nothing (and says nothing).
    let bare = Command::new("php").arg(&plugin).output().expect("php");
    assert!(bare.status.success() && bare.stdout.is_empty());

    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php/purge-harness.php");
    let out = Command::new("php")
        .arg(harness)
        .arg(&plugin)
        .output()
        .expect("php harness");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("harness json");
    let paths = |name: &str| -> Vec<String> {
        serde_json::from_value(v[name]["body"]["paths"].clone()).expect("paths")
    };
    let all = |name: &str| v[name]["body"]["all"] == true && paths(name).is_empty();
    // A draft published: its permalink, home, feed, public term archives (non-ASCII
    // slugs percent-encoded, the private taxonomy left out), the author archive.
    let publish = &v["publish"];
    assert_eq!(publish["requests"], 1, "one request per request");
    assert_eq!(publish["url"], "http://127.0.0.1:9999/purge");
    assert_eq!(publish["timeout"], 2);
    assert_eq!(publish["blocking"], true);
    assert_eq!(publish["content_type"], "application/json");
    assert_eq!(publish["body"]["all"], false);
    assert_eq!(
        paths("publish")[..6],
        [
            "/hello-world/",
            "/",
            "/feed/",
            "/category/caf%C3%A9/",
            "/tag/news/",
            "/author/ada/"
        ]
    );
    for p in paths("publish") {
        site_agent::protocol::PurgePath::parse(&p).expect("valid for the agent");
    }
    // A slug change purges the old and the new permalink.
    let slug = paths("slug_change");
    assert!(slug.contains(&"/hello-world/".into()) && slug.contains(&"/hello-again/".into()));
    // Trashed: the permalink it had, never the "__trashed" one.
    let trash = paths("trash");
    assert!(trash.contains(&"/hello-world/".into()), "{trash:?}");
    assert!(trash.iter().all(|p| !p.contains("__trashed")), "{trash:?}");
    assert!(paths("delete_published").contains(&"/gone/".into()));
    // The REST API is cached too: the routes that list or show the post, its terms
    // (counts change), its author, search and oEmbed; "/" and "/index.php" cover the
    // `?rest_route=` forms. Private taxonomies and types outside the REST API give none.
    let rest = [
        "/wp-json/wp/v2/posts/5",
        "/index.php",
        "/wp-json/wp/v2/posts",
        "/wp-json/wp/v2/categories",
        "/wp-json/wp/v2/categories/3",
        "/wp-json/wp/v2/tags",
        "/wp-json/wp/v2/tags/4",
        "/wp-json/wp/v2/users",
        "/wp-json/wp/v2/users/1",
        "/wp-json/wp/v2/search",
        "/wp-json/oembed/1.0/embed",
    ];
    assert_eq!(paths("publish")[6..], rest, "{:?}", paths("publish"));
    // Trashed or deleted: the post's own route too (it now answers 401/404).
    assert!(
        trash.contains(&"/wp-json/wp/v2/posts/5".into()),
        "{trash:?}"
    );
    assert!(paths("delete_published").contains(&"/wp-json/wp/v2/posts/8".into()));
    // An approved comment: its post, the comments, and the post's routes (replies are
    // embedded with `?_embed`).
    assert_eq!(
        paths("comment"),
        [
            "/hello-world/",
            "/wp-json/wp/v2/comments",
            "/",
            "/index.php",
            "/wp-json/wp/v2/comments/9",
            "/wp-json/wp/v2/posts/5",
            "/wp-json/wp/v2/posts"
        ]
    );
    assert_eq!(paths("product"), ["/a-shirt/", "/", "/feed/", "/products/"]);
    // Nothing public changed: no request at all.
    for quiet in ["draft_edit", "comment_pending", "unrelated_options"] {
        assert!(v[quiet].is_null(), "{quiet}: {}", v[quiet]);
    }
    // Site-wide changes, and over 100 paths: everything.
    for everything in ["option", "widgets", "menu", "theme", "many"] {
        assert!(all(everything), "{everything}: {}", v[everything]);
    }
}

fn mysql_url() -> String {
    std::env::var("PRESSDOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A database of our own on the local MariaDB; dropped by the caller.
async fn scratch_db(prefix: &str) -> (mysql_async::Conn, String, url_parts::Parts) {
    use mysql_async::prelude::*;
    let url = mysql_url();
    let parts = url_parts::parse(&url);
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).expect("url"))
        .await
        .expect("the local MariaDB (scripts/test.sh starts one)");
    let name = format!(
        "{prefix}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or(0)
    );
    c.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .expect("create db");
    (c, name, parts)
}

mod url_parts {
    /// `mysql://user[:pw]@host:port`.
    pub struct Parts {
        pub user: String,
        pub password: String,
        pub host: String,
    }
    pub fn parse(url: &str) -> Parts {
        let rest = url.trim_start_matches("mysql://");
        let (cred, host) = rest.rsplit_once('@').unwrap_or(("root", rest));
        let (user, password) = cred.split_once(':').unwrap_or((cred, ""));
        Parts {
            user: user.into(),
            password: password.into(),
            host: host.trim_end_matches('/').into(),
        }
    }
}

#[tokio::test]
async fn database_size_on_local_mariadb() {
    use mysql_async::prelude::*;
    let (mut c, name, p) = scratch_db("pdagent_size").await;
    c.query_drop(format!(
        "CREATE TABLE `{name}`.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(200)) ENGINE=InnoDB"
    ))
    .await
    .expect("table");
    let mut db =
        site_agent::checks::Database::with(&p.host, &p.user, &p.password, &name).expect("db");
    db.ping().await.expect("ping");
    let empty = db.size_bytes().await.expect("size");
    assert!(
        empty >= 16 * 1024,
        "an InnoDB table has at least one page: {empty}"
    );
    let other = db.size_bytes().await.expect("size again");
    assert_eq!(empty, other);
    let r = c.query_drop(format!("DROP DATABASE `{name}`")).await;
    r.expect("drop");
    assert_eq!(db.size_bytes().await.expect("size of dropped"), 0);
}

/// The fixture Sentinel's admin (its `default` user is off, as in the lab).
const SENTINEL_ADMIN: &str = "pdadmin";

/// A Redis server and a Sentinel watching it, on free ports, killed on drop.
struct RedisFixture {
    procs: Vec<Child>,
    redis_port: u16,
    sentinel_port: u16,
}

impl RedisFixture {
    fn cli(port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `PING` as `user` (whose password is its name) until it answers.
    fn wait_ping_as(port: u16, user: &str) {
        for _ in 0..100 {
            if Self::cli(
                port,
                &["--user", user, "--pass", user, "--no-auth-warning", "PING"],
            )
            .is_some_and(|o| o.contains("PONG"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sentinel on {port} did not start");
    }

    fn wait_ping(port: u16) {
        for _ in 0..100 {
            if Self::cli(port, &["PING"]).is_some_and(|o| o.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis on {port} did not start");
    }

    fn start(dir: &Path, user: &str, password: &str) -> Self {
        let redis_port = free_port();
        let sentinel_port = free_port();
        let mut procs = vec![
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server"),
        ];
        Self::wait_ping(redis_port);
        // The site's ACL exactly as provisioning sets it: the driver's own command rules,
        // so the drop-in is tested against what a site really gets.
        let (keys, channels) = (format!("~{user}:*"), format!("&{user}:*"));
        let pass = format!(">{password}");
        let mut args = vec!["ACL", "SETUSER", user, "on", &pass, &keys, &channels];
        args.extend(backends::redis::SITE_COMMAND_RULES.split(' '));
        let acl = Self::cli(redis_port, &args);
        assert!(acl.is_some_and(|o| o.contains("OK")), "ACL SETUSER");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor pressdock 127.0.0.1 {redis_port} 1\n\
                 user default off\nuser {SENTINEL_ADMIN} on >{SENTINEL_ADMIN} +@all\n\
                 user {user} on >{password} {}\n",
                backends::redis::SENTINEL_SITE_RULES
            ),
        )
        .expect("sentinel conf");
        procs.push(
            Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-sentinel"),
        );
        Self::wait_ping_as(sentinel_port, SENTINEL_ADMIN);
        // The Sentinel answers nobody without a password.
        assert!(
            Self::cli(sentinel_port, &["SENTINEL", "masters"])
                .is_some_and(|o| o.contains("NOAUTH")),
            "an anonymous Sentinel client was answered"
        );
        Self {
            procs,
            redis_port,
            sentinel_port,
        }
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The real stack: Debian's WordPress, php-fpm 8.2, nginx, php-cli, the local MariaDB.
/// Skipped (with a message) where those packages are not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordpress_installs_and_serves_on_the_real_stack() {
    use mysql_async::prelude::*;
    let stack = have("php")
        && have("php-fpm8.2")
        && have("nginx")
        && Path::new("/usr/share/wordpress/wp-includes/version.php").exists()
        && Path::new("/etc/wordpress").is_dir()
        && have("redis-server")
        && have("redis-sentinel");
    if !stack {
        eprintln!(
            "SKIPPED: needs php-cli, php-fpm, php-mysql, php-redis, nginx-light, wordpress, \
             redis-server, redis-sentinel (apt)"
        );
        return;
    }
    let (mut c, name, p) = scratch_db("pdagent_wp").await;
    let id = format!("wp{}", &name[name.len() - 6..]);
    let mut site = TestSite::new(&id);
    let host = format!("{id}.test");
    // Debian's wp-config reads config-<host>.php first: a file of this test only.
    let wp_config = PathBuf::from(format!("/etc/wordpress/config-{host}.php"));
    let site_port = free_port();
    let (h, port) = p.host.rsplit_once(':').unwrap_or((&p.host, "3306"));
    // The site's own account, as provisioning makes it (ALL on its schema only).
    let user = format!("wp_{id}");
    c.query_drop(format!(
        "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'Site-pw_1'; \
         GRANT ALL ON `{name}`.* TO '{user}'@'127.0.0.1'"
    ))
    .await
    .expect("site user");
    std::fs::write(site.path("secrets/db_password"), "Site-pw_1\n").expect("pw");
    std::fs::write(site.path("secrets/admin_password"), "one-time-Pw_1\n").expect("pw");
    std::fs::write(site.path("secrets/redis_password"), "Redis-pw_1\n").expect("pw");
    let redis = RedisFixture::start(site.dir.path(), &user, "Redis-pw_1");
    for (k, v) in [
        ("PRESSDOCK_DB_HOST", format!("{h}:{port}")),
        ("PRESSDOCK_DB_NAME", name.clone()),
        ("PRESSDOCK_DB_USER", user.clone()),
        (
            "PRESSDOCK_REDIS_SENTINELS",
            format!("127.0.0.1:{}", redis.sentinel_port),
        ),
        ("PRESSDOCK_AGENT_WP_CONFIG", wp_config.display().to_string()),
        ("PRESSDOCK_AGENT_WP_ROOT", "/usr/share/wordpress".into()),
        ("PRESSDOCK_SITE_PORT", site_port.to_string()),
        ("PRESSDOCK_SITE_TITLE", "Agent Test Blog".into()),
        ("PRESSDOCK_ADMIN_USER", "tenant".into()),
        (
            "PRESSDOCK_ADMIN_PASSWORD_FILE",
            site.path("secrets/admin_password").display().to_string(),
        ),
    ] {
        site.env.insert(k.into(), v);
    }
    let platform = FakePlatform::default();
    site.env.insert(
        "PRESSDOCK_CONTROL_URL".into(),
        start_platform(platform.clone()).await,
    );
    let agent = site.spawn();
    let result = async {
        agent
            .wait_for("WordPress installed", 60, async |a| {
                let (_, b) = a.get("/readyz").await?;
                let v: serde_json::Value = serde_json::from_str(&b).ok()?;
                (v["wordpress_installed"] == true).then_some(())
            })
            .await;
        // The home page through the agent's nginx and php-fpm, with the site's title.
        let page = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{site_port}/"))
            .header("Host", &host)
            .send()
            .await
            .expect("GET /");
        assert_eq!(page.status(), 200);
        let body = page.text().await.expect("body");
        assert!(
            body.contains("Agent Test Blog"),
            "an empty page: no theme? (Debian's wordpress-theme-twentytwentythree, which \
             the image has)\n{}\nagent log:\n{}",
            &body[..body.len().min(2000)],
            agent.log()
        );
        // The installer ran WordPress's wp_install: the tenant's admin exists.
        let users: Vec<String> = c
            .query(format!("SELECT user_login FROM `{name}`.wp_users"))
            .await
            .expect("users");
        assert_eq!(users, vec!["tenant".to_owned()]);
        // The web installer is closed.
        let inst = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{site_port}/wp-admin/install.php"))
            .header("Host", &host)
            .send()
            .await
            .expect("install.php");
        assert_eq!(inst.status(), 403);
        // Metrics: requests from the access log, php-fpm status, database size.
        let m = agent
            .wait_for("fpm and db metrics", 10, async |a| {
                let (_, t) = a.get("/metrics").await?;
                (metric(&t, "pressdock_php_fpm_up") == Some(1.0)
                    && metric(&t, "pressdock_database_bytes").is_some_and(|b| b > 0.0))
                .then_some(t)
            })
            .await;
        assert!(
            metric(&m, "pressdock_http_request_duration_seconds_count").is_some_and(|n| n >= 2.0),
            "{m}"
        );
        // The object cache: keys only under the site's prefix, through the ACL user,
        // the master found through Sentinel.
        let keys =
            RedisFixture::cli(redis.redis_port, &["--scan", "--pattern", "*"]).expect("scan");
        let keys: Vec<&str> = keys.lines().collect();
        assert!(keys.len() > 10, "{keys:?}");
        assert!(
            keys.iter().all(|k| k.starts_with(&format!("{user}:"))),
            "{keys:?}"
        );
        assert!(keys.contains(&format!("{user}:__version").as_str()));
        // Ready: installed, WordPress answers, database and Redis reachable.
        agent
            .wait_for("ready", 10, async |a| {
                let (s, _) = a.get("/readyz").await?;
                (s == 200).then_some(())
            })
            .await;
        assert!(
            std::fs::read_to_string(site.path("wp-content/.pressdock-installed"))
                .expect("marker")
                .contains("installed")
        );

        // A post published through WordPress: the mu-plugin sends its pages to the agent
        // at shutdown, the agent forwards them to the control plane.
        let script = site.path("publish.php");
        std::fs::write(
            &script,
            format!(
                r#"<?php
$_SERVER['HTTP_HOST'] = '{host}';
$_SERVER['REQUEST_URI'] = '/';
require '/usr/share/wordpress/wp-load.php';
$cat = wp_insert_term('Purge News', 'category');
$id = wp_insert_post(array('post_title' => 'Purge Me', 'post_name' => 'purge-me',
    'post_status' => 'publish', 'post_author' => 1, 'post_content' => 'x',
    'post_category' => array($cat['term_id'])), true);
echo json_encode(array(get_permalink($id), home_url('/'), get_feed_link(),
    get_category_link($cat['term_id']), get_author_posts_url(1),
    rest_url('wp/v2/posts/' . $id), rest_url('wp/v2/posts'), home_url('/index.php'))), "\n";
"#
            ),
        )
        .expect("script");
        let before = platform.purges.lock().expect("lock").len();
        let out = Command::new("php").arg(&script).output().expect("php");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let urls: Vec<String> = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("urls in {stdout}"));
        let prefix = format!("http://{host}");
        let want: Vec<String> = urls
            .iter()
            .map(|u| u.strip_prefix(&prefix).unwrap_or(u).to_owned())
            .collect();
        // Plain permalinks (no rewrite in php-cli's install): the query is the page, and
        // rest_url() gives `/index.php?rest_route=…` (covered by the ban of `/index.php`,
        // also sent; visitors' `/?rest_route=…` by the ban of `/`).
        assert!(want[0].starts_with("/?p="), "{want:?}");
        assert!(
            want[5].starts_with("/index.php?rest_route=/wp/v2/posts/"),
            "{want:?}"
        );
        let got = agent
            .wait_for("the post's purge at the control plane", 10, async |_| {
                let p = platform.purges.lock().expect("lock");
                p[before..]
                    .iter()
                    .find(|(_, r)| r.paths.contains(&want[0]))
                    .cloned()
            })
            .await;
        eprintln!("purge of the published post: {:?}", got.1);
        assert_eq!(got.0.as_deref(), Some("Bearer the-token"));
        assert_eq!(got.1.site_id, id);
        assert!(!got.1.all);
        for w in &want {
            assert!(got.1.paths.contains(w), "{w} not in {:?}", got.1.paths);
        }
    }
    .await;
    drop(agent);
    let _ = std::fs::remove_file(&wp_config);
    let _ = c.query_drop(format!("DROP DATABASE `{name}`")).await;
    let _ = c
        .query_drop(format!("DROP USER '{user}'@'127.0.0.1'"))
        .await;
    result
}
