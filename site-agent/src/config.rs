//! The agent's settings: the site's environment and secret files as the swarm service
//! spec gives them (`backends/src/swarm.rs`, `build_service_spec`), plus the agent's own
//! knobs (`PRESSDOCK_AGENT_*`, set by the image or by tests).
//!
//! Everything is read once at start through a lookup function, so parsing is testable
//! without touching the process environment. Secrets are [`Secret`]s: they never print.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// A secret value: `Debug` and `Display` print `[redacted]` (the workspace's one `Secret`).
pub use pressdock_types::Secret;

/// WordPress's eight keys and salts, in the order wp-config defines them (the list the
/// platform generates the `wp_salts` secret from).
pub use agent_protocol::WP_SALT_NAMES as SALT_NAMES;

/// Parses the `wp_salts` secret: `NAME=value` lines, all eight names, nothing else.
pub fn parse_salts(text: &str) -> Result<BTreeMap<String, Secret>> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("wp_salts: a line without '='"))?;
        if !SALT_NAMES.contains(&name) {
            bail!("wp_salts: unknown name {name:?}");
        }
        if value.len() < 32 {
            bail!("wp_salts: {name} is shorter than 32 characters");
        }
        out.insert(name.to_owned(), Secret::new(value));
    }
    for n in SALT_NAMES {
        if !out.contains_key(n) {
            bail!("wp_salts: {n} is missing");
        }
    }
    Ok(out)
}

/// The first-start install: WordPress's installer gets these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSettings {
    pub title: String,
    pub admin_user: String,
    pub admin_email: String,
    /// `None`: no password given; the agent does not install (a site nobody can log in to
    /// is worse than a site not yet ready) and reports why.
    pub admin_password: Option<Secret>,
}

/// Where files go and which processes run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// WordPress core (`ABSPATH`), `/usr/share/wordpress/` in the Debian image.
    pub wp_root: PathBuf,
    /// The rendered config; Debian's `wp-config.php` reads `config-default.php` when no
    /// `config-<host>.php` exists, so one file serves every domain of the site.
    pub wp_config: PathBuf,
    /// Runtime files: nginx and php-fpm configs, sockets, pid files, the install script.
    pub run_dir: PathBuf,
    /// The persisted desired config.
    pub state_dir: PathBuf,
}

/// Everything the agent knows at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub site_id: String,
    pub domains: Vec<String>,
    pub primary_domain: String,
    /// `HOST:PORT` of the DB router.
    pub db_host: String,
    pub db_name: String,
    pub db_user: String,
    pub db_password: Secret,
    /// `HOST:PORT` of each Sentinel.
    pub redis_sentinels: Vec<String>,
    pub redis_master_name: String,
    pub redis_user: String,
    pub redis_password: Secret,
    /// `wp_<id>:`
    pub redis_prefix: String,
    pub wp_content: PathBuf,
    pub salts: BTreeMap<String, Secret>,
    pub agent_token: Secret,
    /// Base URL of the control plane; `None`: no heartbeats (logged once).
    pub control_url: Option<String>,
    pub install: Option<InstallSettings>,
    pub paths: Paths,
    /// The agent's own HTTP server (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Port nginx listens on (the service's `site_port`).
    pub site_port: u16,
    pub php_fpm_cmd: Vec<String>,
    pub nginx_cmd: Vec<String>,
    pub php_cli: String,
    /// Total time from SIGTERM to exit (under swarm's 20 s grace period): the drain, then
    /// the children's graceful stop in what is left ([`Settings::children_stop_grace`]).
    pub stop_grace: Duration,
    /// After SIGTERM, how long the agent answers `/readyz` 503 (`draining`) while nginx and
    /// php-fpm keep serving, so the edge drops this task before it stops answering. Zero:
    /// no drain. At most half of `stop_grace`.
    pub drain: Duration,
    /// The swarm node and task of this task (`PRESSDOCK_NODE_ID`, `PRESSDOCK_TASK_ID`,
    /// swarm templates in the service spec); `None` when unset or not an id.
    pub node_id: Option<String>,
    pub task_id: Option<String>,
    pub report_interval: Duration,
    /// Interval of the readiness checks and php-fpm status reads.
    pub check_interval: Duration,
    /// Interval of the wp-content and database size measurements.
    pub size_interval: Duration,
    /// Render wp-config, nginx/php-fpm configs and the drop-in at start (off in tests of
    /// the supervisor alone).
    pub render: bool,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A swarm id (`{{.Node.ID}}`, `{{.Task.ID}}`): 1 to 64 ASCII letters and digits. Anything
/// else (unset, or a template swarm did not expand) is `None`, with a warning when set.
fn swarm_id(name: &str, value: Option<String>) -> Option<String> {
    let v = value?;
    if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Some(v)
    } else {
        tracing::warn!(
            variable = name,
            value = %v.escape_debug(),
            "not a swarm id ([A-Za-z0-9]{{1,64}}); not reported"
        );
        None
    }
}

fn split_cmd(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `get` (the environment in production, a map in tests).
    /// Secret files are read from the paths the `*_FILE` variables name.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let req = |k: &str| -> Result<String> {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow!("{k} is not set"))
        };
        let opt = |k: &str| get(k).filter(|v| !v.is_empty());
        let secret = |k: &str, default: &str| -> Result<Secret> {
            let path = opt(k).unwrap_or_else(|| default.to_owned());
            read_secret(Path::new(&path)).with_context(|| format!("reading the secret of {k}"))
        };
        let secs = |k: &str, default: u64| -> Result<Duration> {
            match opt(k) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => {
                    let f: f64 = v
                        .parse()
                        .with_context(|| format!("{k}: a number of seconds"))?;
                    if !(0.0..=86_400.0).contains(&f) {
                        bail!("{k}: 0..=86400 seconds");
                    }
                    Ok(Duration::from_secs_f64(f))
                }
            }
        };

        let site_id = req("PRESSDOCK_SITE_ID")?;
        if !site_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            || site_id.len() > 32
        {
            bail!("PRESSDOCK_SITE_ID: lower-case letters and digits");
        }
        let domains = split_list(&req("PRESSDOCK_DOMAINS")?);
        let primary_domain = opt("PRESSDOCK_PRIMARY_DOMAIN")
            .or_else(|| domains.first().cloned())
            .ok_or_else(|| anyhow!("PRESSDOCK_PRIMARY_DOMAIN is not set"))?;
        for d in domains.iter().chain([&primary_domain]) {
            if d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            {
                bail!("domain {d:?}: [a-z0-9.-]");
            }
        }
        let wp_content = PathBuf::from(
            opt("PRESSDOCK_WP_CONTENT").unwrap_or_else(|| "/var/lib/wordpress/wp-content".into()),
        );
        if wp_content.file_name().and_then(|n| n.to_str()) != Some("wp-content")
            || wp_content.parent().is_none()
        {
            bail!("PRESSDOCK_WP_CONTENT must be an absolute path ending in /wp-content");
        }
        let salts_text = secret("PRESSDOCK_WP_SALTS_FILE", "/run/secrets/wp_salts")?;
        let salts = parse_salts(salts_text.expose())?;

        let install = {
            let admin_password = match opt("PRESSDOCK_ADMIN_PASSWORD_FILE") {
                Some(p) => Some(
                    read_secret(Path::new(&p)).context("reading PRESSDOCK_ADMIN_PASSWORD_FILE")?,
                ),
                None => {
                    let default = Path::new("/run/secrets/admin_password");
                    if default.exists() {
                        Some(read_secret(default).context("reading /run/secrets/admin_password")?)
                    } else {
                        None
                    }
                }
            };
            Some(InstallSettings {
                title: opt("PRESSDOCK_SITE_TITLE").unwrap_or_else(|| primary_domain.clone()),
                admin_user: opt("PRESSDOCK_ADMIN_USER").unwrap_or_else(|| "admin".into()),
                admin_email: opt("PRESSDOCK_ADMIN_EMAIL")
                    .unwrap_or_else(|| format!("admin@{primary_domain}")),
                admin_password,
            })
            .filter(|_| opt("PRESSDOCK_AGENT_INSTALL").as_deref() != Some("0"))
        };

        let run_dir = PathBuf::from(
            opt("PRESSDOCK_AGENT_RUN_DIR").unwrap_or_else(|| "/run/pressdock".into()),
        );
        let site_port: u16 = opt("PRESSDOCK_SITE_PORT")
            .map(|p| p.parse().context("PRESSDOCK_SITE_PORT"))
            .transpose()?
            .unwrap_or(80);
        let fpm_conf = run_dir.join("php-fpm.conf");
        let nginx_conf = run_dir.join("nginx.conf");
        let stop_grace = secs("PRESSDOCK_AGENT_STOP_GRACE_SECS", 15)?;
        let mut drain = secs("PRESSDOCK_AGENT_DRAIN_SECS", 7)?;
        if drain > stop_grace / 2 {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                stop_grace_ms = stop_grace.as_millis() as u64,
                "PRESSDOCK_AGENT_DRAIN_SECS over half the stop grace; shortened to half"
            );
            drain = stop_grace / 2;
        }
        Ok(Self {
            db_host: req("PRESSDOCK_DB_HOST")?,
            db_name: req("PRESSDOCK_DB_NAME")?,
            db_user: req("PRESSDOCK_DB_USER")?,
            db_password: secret("PRESSDOCK_DB_PASSWORD_FILE", "/run/secrets/db_password")?,
            redis_sentinels: split_list(&req("PRESSDOCK_REDIS_SENTINELS")?),
            redis_master_name: req("PRESSDOCK_REDIS_MASTER_NAME")?,
            redis_user: opt("PRESSDOCK_REDIS_USER").unwrap_or_else(|| format!("wp_{site_id}")),
            redis_password: secret(
                "PRESSDOCK_REDIS_PASSWORD_FILE",
                "/run/secrets/redis_password",
            )?,
            redis_prefix: opt("PRESSDOCK_REDIS_PREFIX").unwrap_or_else(|| format!("wp_{site_id}:")),
            agent_token: secret("PRESSDOCK_AGENT_TOKEN_FILE", "/run/secrets/agent_token")?,
            control_url: opt("PRESSDOCK_CONTROL_URL")
                .or_else(|| opt("AGENT_API"))
                .map(|u| u.trim_end_matches('/').to_owned()),
            install,
            paths: Paths {
                wp_root: PathBuf::from(
                    opt("PRESSDOCK_AGENT_WP_ROOT").unwrap_or_else(|| "/usr/share/wordpress".into()),
                ),
                wp_config: PathBuf::from(
                    opt("PRESSDOCK_AGENT_WP_CONFIG")
                        .unwrap_or_else(|| "/etc/wordpress/config-default.php".into()),
                ),
                state_dir: PathBuf::from(
                    opt("PRESSDOCK_AGENT_STATE_DIR")
                        .unwrap_or_else(|| "/var/lib/pressdock-agent".into()),
                ),
                run_dir: run_dir.clone(),
            },
            listen: opt("PRESSDOCK_AGENT_LISTEN")
                .unwrap_or_else(|| "0.0.0.0:9180".into())
                .parse()
                .context("PRESSDOCK_AGENT_LISTEN: ADDRESS:PORT")?,
            site_port,
            php_fpm_cmd: split_cmd(&opt("PRESSDOCK_AGENT_PHP_FPM_CMD").unwrap_or_else(|| {
                format!(
                    "php-fpm8.2 --nodaemonize --fpm-config {}",
                    fpm_conf.display()
                )
            })),
            nginx_cmd: split_cmd(
                &opt("PRESSDOCK_AGENT_NGINX_CMD")
                    .unwrap_or_else(|| format!("nginx -c {}", nginx_conf.display())),
            ),
            php_cli: opt("PRESSDOCK_AGENT_PHP_CLI").unwrap_or_else(|| "php".into()),
            stop_grace,
            drain,
            node_id: swarm_id("PRESSDOCK_NODE_ID", opt("PRESSDOCK_NODE_ID")),
            task_id: swarm_id("PRESSDOCK_TASK_ID", opt("PRESSDOCK_TASK_ID")),
            report_interval: secs("PRESSDOCK_AGENT_REPORT_SECS", 15)?,
            check_interval: secs("PRESSDOCK_AGENT_CHECK_SECS", 10)?,
            size_interval: secs("PRESSDOCK_AGENT_SIZE_SECS", 300)?,
            render: opt("PRESSDOCK_AGENT_RENDER").as_deref() != Some("0"),
            site_id,
            domains,
            primary_domain,
            wp_content,
            salts,
        })
    }

    /// What the children get to stop gracefully after the drain.
    pub fn children_stop_grace(&self) -> Duration {
        self.stop_grace.saturating_sub(self.drain)
    }

    /// The must-use plugin that reports what changed for the edge caches to purge.
    pub fn purge_plugin_path(&self) -> PathBuf {
        self.wp_content.join("mu-plugins/pressdock-cache.php")
    }

    /// Where the plugin posts its purges: the agent's `/purge` on loopback.
    pub fn local_purge_url(&self) -> String {
        format!("http://127.0.0.1:{}/purge", self.listen.port())
    }

    pub fn nginx_conf_path(&self) -> PathBuf {
        self.paths.run_dir.join("nginx.conf")
    }
    pub fn fpm_conf_path(&self) -> PathBuf {
        self.paths.run_dir.join("php-fpm.conf")
    }
    pub fn fpm_socket(&self) -> PathBuf {
        self.paths.run_dir.join("php-fpm.sock")
    }
    /// nginx sends its access log here (syslog datagrams), see [`crate::accesslog`].
    pub fn access_log_socket(&self) -> PathBuf {
        self.paths.run_dir.join("access.sock")
    }
    pub fn object_cache_path(&self) -> PathBuf {
        self.wp_content.join("object-cache.php")
    }
    /// On wp-content (Gluster), so a task on another worker sees it too.
    pub fn install_marker(&self) -> PathBuf {
        self.wp_content.join(".pressdock-installed")
    }
}

/// Reads a secret file; one trailing newline is dropped, an empty secret is an error.
pub fn read_secret(path: &Path) -> Result<Secret> {
    let mut s = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(Secret::new(s))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn salts_text() -> String {
        SALT_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}={}'\\{}\n", i, "x".repeat(40)))
            .collect()
    }

    /// A complete environment with secret files in `dir`.
    pub(crate) fn env(dir: &Path) -> HashMap<String, String> {
        let put = |name: &str, value: &str| {
            let p = dir.join(name);
            std::fs::write(&p, value).expect("write secret");
            p.display().to_string()
        };
        HashMap::from([
            ("PRESSDOCK_SITE_ID".into(), "k3v9q2m8xa".into()),
            ("PRESSDOCK_DOMAINS".into(), "a.test,www.a.test".into()),
            ("PRESSDOCK_PRIMARY_DOMAIN".into(), "a.test".into()),
            ("PRESSDOCK_DB_HOST".into(), "10.0.0.5:6033".into()),
            ("PRESSDOCK_DB_NAME".into(), "wp_k3v9q2m8xa".into()),
            ("PRESSDOCK_DB_USER".into(), "wp_k3v9q2m8xa".into()),
            (
                "PRESSDOCK_REDIS_SENTINELS".into(),
                "10.0.0.7:26379,10.0.0.8:26379".into(),
            ),
            ("PRESSDOCK_REDIS_MASTER_NAME".into(), "pressdock".into()),
            ("PRESSDOCK_REDIS_USER".into(), "wp_k3v9q2m8xa".into()),
            ("PRESSDOCK_REDIS_PREFIX".into(), "wp_k3v9q2m8xa:".into()),
            (
                "PRESSDOCK_WP_CONTENT".into(),
                dir.join("wp-content").display().to_string(),
            ),
            (
                "PRESSDOCK_DB_PASSWORD_FILE".into(),
                put("db_password", "db'pw\\\n"),
            ),
            (
                "PRESSDOCK_REDIS_PASSWORD_FILE".into(),
                put("redis_password", "redis-pw\n"),
            ),
            (
                "PRESSDOCK_AGENT_TOKEN_FILE".into(),
                put("agent_token", "tok\n"),
            ),
            (
                "PRESSDOCK_WP_SALTS_FILE".into(),
                put("wp_salts", &salts_text()),
            ),
            (
                "PRESSDOCK_ADMIN_PASSWORD_FILE".into(),
                put("admin_password", "one-time\n"),
            ),
            ("PRESSDOCK_SITE_TITLE".into(), "Ada's \"Blog\"".into()),
            (
                "PRESSDOCK_AGENT_RUN_DIR".into(),
                dir.join("run").display().to_string(),
            ),
        ])
    }

    pub(crate) fn settings(dir: &Path) -> Settings {
        let env = env(dir);
        Settings::from_lookup(|k| env.get(k).cloned()).expect("settings")
    }

    #[test]
    fn reads_the_swarm_spec_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        assert_eq!(s.db_password.expose(), "db'pw\\");
        assert_eq!(s.redis_sentinels.len(), 2);
        assert_eq!(s.salts.len(), 8);
        assert_eq!(s.control_url, None);
        let i = s.install.as_ref().expect("install");
        assert_eq!(i.admin_email, "admin@a.test");
        assert_eq!(
            i.admin_password.as_ref().map(Secret::expose),
            Some("one-time")
        );
        assert!(
            !format!("{s:?}").contains("redis-pw"),
            "secrets never print"
        );
        assert_eq!(s.nginx_cmd[0], "nginx");
        assert_eq!(s.node_id, None);
        assert_eq!(s.drain, Duration::from_secs(7));
        assert_eq!(s.children_stop_grace(), Duration::from_secs(8));
        assert_eq!(s.local_purge_url(), "http://127.0.0.1:9180/purge");
    }

    #[test]
    fn swarm_ids_are_alphanumeric_or_none_and_the_drain_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = env(dir.path());
        env.insert(
            "PRESSDOCK_NODE_ID".into(),
            "x2ny5jrbcx0sd7xybq5sn9ahu".into(),
        );
        env.insert("PRESSDOCK_TASK_ID".into(), "{{.Task.ID}}".into());
        env.insert("PRESSDOCK_AGENT_DRAIN_SECS".into(), "12".into());
        let s = Settings::from_lookup(|k| env.get(k).cloned()).expect("settings");
        assert_eq!(s.node_id.as_deref(), Some("x2ny5jrbcx0sd7xybq5sn9ahu"));
        assert_eq!(s.task_id, None, "an unexpanded template is not an id");
        assert_eq!(s.drain, Duration::from_millis(7500), "at most half of 15 s");
        assert_eq!(swarm_id("X", Some("a".repeat(65))), None);
        assert_eq!(swarm_id("X", Some("a-b".into())), None);
        assert_eq!(swarm_id("X", Some("aZ9".into())), Some("aZ9".into()));
        env.insert("PRESSDOCK_AGENT_DRAIN_SECS".into(), "0".into());
        let s = Settings::from_lookup(|k| env.get(k).cloned()).expect("settings");
        assert_eq!(s.drain, Duration::ZERO);
        assert_eq!(s.children_stop_grace(), s.stop_grace);
    }

    #[test]
    fn rejects_incomplete_salts_and_bad_ids() {
        assert!(parse_salts("AUTH_KEY=short").is_err());
        let mut t = salts_text();
        t.push_str("EVIL=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
        assert!(parse_salts(&t).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = env(dir.path());
        env.insert("PRESSDOCK_SITE_ID".into(), "../x".into());
        assert!(Settings::from_lookup(|k| env.get(k).cloned()).is_err());
    }
}
