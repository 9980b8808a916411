//! Typed configuration in layers: built-in defaults, then a TOML file (`--config` or
//! `PRESSDOCK_CONFIG`), then `PRESSDOCK_*` environment variables.
//!
//! The keys are listed once: the structs below are the file's keys (serde, unknown keys
//! refused), and `ENV_KEYS` says which of them the environment sets and under what
//! name. Kept rather than `figment`: the layering is the few lines of
//! [`Config::load_from`], and figment's environment provider derives a key from a
//! variable's name by splitting on `_` (ambiguous for `database_url`,
//! `report_timeout_secs`, …) or on `__` (which would rename every variable operators set
//! today), so it would still need this list.
//!
//! Secrets live in [`Secret`], whose `Debug`, `Display` and `Serialize` print a redaction,
//! so printing the whole configuration (`pressdock config`) is always safe.
//!
//! Any string value of the file may instead be a reference to a file holding it,
//! `{ file = "/run/secrets/pressdock_secret_key" }` ([`resolve_secret_files`]): a file the
//! operator wrote (mode 0600) or a swarm secret as a task sees it. So a configuration
//! written for production (`pressdock-infra cluster platform-config`) holds no credential.
//! The `[backends]` references are read when the drivers are built (so `pressdock config`
//! prints the reference, not the credential); the others when the file is loaded.

use std::{fmt, net::SocketAddr, path::Path};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize, Serializer};

/// A value that must never be printed: passwords, keys, tokens (the workspace's one
/// `Secret`, over the `secrecy` crate; the drivers take the same type).
pub use pressdock_types::Secret;

/// A database URL: the whole URL is kept as a [`Secret`] (it carries the password), and
/// printed (`Debug`, `Serialize`: logs, `pressdock config`) with the password replaced.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Secret::new(value))
    }

    /// The URL itself; only where the pool connects.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with any password replaced, for logs and `pressdock config`; a value that
    /// does not parse as a URL with a host is not shown at all.
    pub fn redacted(&self) -> String {
        use url::{Position, Url};
        match Url::parse(self.expose()) {
            Ok(url) if url.password().is_some() => format!(
                "{}:[redacted]@{}",
                &url[..Position::AfterUsername],
                &url[Position::BeforeHost..]
            ),
            // Without a host (`user:password` read as a scheme and a path) nothing says
            // where a password would be: not shown.
            Ok(url) if url.has_host() => url.to_string(),
            _ => "[redacted: not a URL]".to_owned(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// The platform's configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// MariaDB URL of the control-plane database (created if missing).
    #[serde(default = "default_database_url")]
    pub database_url: DatabaseUrl,
    /// Key that signs access tokens and encrypts site secrets; at least 32 bytes.
    #[serde(default)]
    pub secret_key: Secret,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// Backup drills (`crate::backup::drill_job`).
    #[serde(default)]
    pub drills: DrillsConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub placement: PlacementConfig,
    #[serde(default)]
    pub certs: CertsConfig,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Settings of the provisioning drivers, kept as data until they are used.
    #[serde(default)]
    pub backends: toml::Table,
    #[serde(default)]
    pub billing: BillingConfig,
    #[serde(default)]
    pub backups: BackupsConfig,
}

/// Scheduled backups, retention and the final backup of a deleted site
/// (`platform/src/backup/schedule.rs`). What is scheduled and kept per plan is the plan's
/// backup policy (`PUT /v1/plans/{plan}/backup-policy`); these are the platform's rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupsConfig {
    /// Run the scheduler and the pruner inside `serve` (one replica at a time acts, under
    /// a MariaDB named lock), when `[backends.s3]` is configured.
    pub scheduler: bool,
    /// Seconds between two passes of the scheduler and pruner.
    pub interval_secs: u64,
    /// Scheduled backups running at once, platform-wide (the rest start at a later pass).
    pub max_running: u32,
    /// Back a site up before it is deleted (the first step of `site.delete`).
    pub final_backup: bool,
    /// Days a deleted site's final backup is kept; then it is pruned.
    pub final_retention_days: u32,
    /// Days after a restore ended that its automatic pre-restore backup (the way to undo
    /// it) is kept.
    pub pre_restore_retention_days: u32,
    /// Days a failed backup's record is kept (it holds no object) before it is pruned.
    pub failed_retention_days: u32,
}

impl Default for BackupsConfig {
    fn default() -> Self {
        Self {
            scheduler: true,
            interval_secs: 60,
            max_running: 4,
            final_backup: true,
            final_retention_days: 30,
            pre_restore_retention_days: 7,
            failed_retention_days: 7,
        }
    }
}

/// Billing: what the cluster costs, for the staff margin report.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// What the cluster costs a month, in minor units of `currency` (`pressdock-infra
    /// cluster cost` estimates it from the provider's prices); allocated to sites by worker
    /// slots used in `GET /v1/billing/margins`. `None`: the report needs it as a parameter.
    pub cluster_monthly_cost_minor: Option<i64>,
    /// ISO 4217 code of that cost.
    pub currency: String,
    /// The metrics pages (`http://…/metrics`) of every edge (Traefik) replica, scraped for
    /// the billed request counts (platform/src/app/edge_usage.rs). Empty: no edge samples
    /// are collected (they can still be sent to `POST /v1/billing/samples`).
    pub edge_metrics: Vec<String>,
    /// Seconds between two scrapes of the edge (at most this much of a site's traffic
    /// lands in the next hour).
    pub edge_scrape_interval_secs: u64,
    /// The edge's entrypoint toward the sites' tasks (`backends.swarm.internal_entrypoint`):
    /// its routers see only cache misses and are not counted.
    pub edge_internal_entrypoint: String,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            cluster_monthly_cost_minor: None,
            currency: "USD".into(),
            edge_metrics: Vec::new(),
            edge_scrape_interval_secs: 60,
            edge_internal_entrypoint: "internal".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Failed logins allowed per account within the window before 429.
    pub max_failed_logins_per_account: u32,
    /// Failed logins allowed per source address within the window before 429.
    pub max_failed_logins_per_address: u32,
    pub failed_login_window_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            max_failed_logins_per_account: 5,
            max_failed_logins_per_address: 20,
            failed_login_window_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// Creates the first staff admin when no staff user exists.
    pub admin_email: Option<String>,
    pub admin_password: Secret,
}

/// Database connections kept for the API (and the loops beside the sagas), above
/// `jobs.concurrency`.
pub const API_CONNECTIONS: u32 = 12;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Run the job runner inside `serve`.
    pub enabled: bool,
    /// How long a claimed job is ours without renewal.
    pub lease_secs: u64,
    /// How often an idle runner looks for work.
    pub poll_millis: u64,
    /// Attempts of a step with retryable errors before the saga unwinds.
    pub max_attempts: u32,
    /// Sagas one process runs at once. The database pool has this many connections
    /// plus [`API_CONNECTIONS`], so the API keeps connections even when every saga runs
    /// a statement (or waits for a row lock) at the same moment.
    pub concurrency: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_secs: 15,
            poll_millis: 250,
            max_attempts: 5,
            concurrency: 24,
        }
    }
}

/// Backup drills: the latest complete backup of each site restored into a scratch
/// database and folder and compared with its manifest (`crate::backup::drill_job`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillsConfig {
    /// Run the schedule inside `serve` (when `[backends.s3]` and `[backends.galera]` are
    /// configured); on-demand drills work either way.
    pub enabled: bool,
    /// Seconds between two passes of the schedule (the first pass is one interval after
    /// start).
    pub interval_secs: u64,
    /// Each site's latest complete backup is drilled when none of the site's backups was
    /// drilled within this many days.
    pub every_days: u32,
    /// Drills enqueued per pass at most (each restores a whole site).
    pub max_per_pass: u32,
}

impl Default for DrillsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 3600,
            every_days: 7,
            max_per_pass: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run the reconcilers on a timer inside `serve` (when backends are configured).
    pub enabled: bool,
    pub interval_secs: u64,
    /// How long a resource with our prefix and no site is reported before it is removed.
    pub orphan_grace_secs: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 60,
            orphan_grace_secs: 3600,
        }
    }
}

/// ACME certificates of the sites' domains (`crate::certs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertsConfig {
    /// Run the issuer inside `serve`. Needs `secret_key` (certificates are sealed with it).
    pub enabled: bool,
    /// The ACME directory used until staff choose one: `letsencrypt`,
    /// `letsencrypt-staging` or an `https://` URL.
    pub directory: Option<String>,
    /// Contact e-mail of the ACME account, with `directory`.
    pub contact_email: String,
    /// PEM file of the root that the directory's own HTTPS chains to, when it is not a
    /// public one (pebble's); `None`: the system's roots.
    pub directory_ca_file: Option<std::path::PathBuf>,
    /// Seconds between passes of the issuer.
    pub interval_secs: u64,
    /// Orders started per pass (at most; the rest wait for the next pass).
    pub max_orders_per_pass: u32,
    /// New orders the ACME account may place within `order_window_secs`, a rolling window,
    /// all replicas together (counted in the database): Let's Encrypt allows 300 new orders
    /// per account per 3 hours. Over it, due domains wait, the renewals that expire
    /// soonest first.
    pub orders_per_window: u32,
    pub order_window_secs: u64,
    /// How long every new order waits after the ACME server answered `rateLimited`
    /// without a `Retry-After` (or with one that does not parse).
    pub rate_limited_default_secs: u64,
    /// The longest such wait a `Retry-After` can ask for.
    pub rate_limited_max_secs: u64,
    /// How long an order may take to become ready, and its certificate to be issued.
    pub order_timeout_secs: u64,
    /// Back-off after a failed order: doubling from this, up to `retry_max_secs`.
    pub retry_base_secs: u64,
    pub retry_max_secs: u64,
    /// How long a domain that no live site uses any more keeps its certificate row (its
    /// certificate, failures and back-off): taken again within it (moved to another
    /// site), it is served with the certificate it holds and not ordered again. Not served
    /// nor renewed meanwhile.
    pub unused_grace_secs: u64,
    /// Bearer token Traefik presents to `GET /edge/traefik.json`; empty: that route is off.
    pub edge_token: Secret,
    /// How often each edge replica polls `GET /edge/traefik.json` (Traefik's
    /// `providers.http.pollInterval`, seconds). A domain's HTTP→HTTPS redirect and HSTS are
    /// published only once its certificate has been in that document for longer than two
    /// of these ([`Self::redirect_after`]): by then every replica serves the certificate.
    pub edge_poll_interval_secs: u64,
    /// URL at which the edge reaches the platform for the HTTP-01 answers (a route to it
    /// is part of the edge's configuration); `None`: no such route.
    pub challenge_upstream: Option<String>,
    /// The edge's plain-HTTP entrypoint.
    pub web_entrypoint: String,
    /// The edge's HTTPS entrypoint (where the HSTS routers are).
    pub websecure_entrypoint: String,
    /// The Traefik service HTTPS requests go to (the cache, e.g. `pd-cache@file`): the
    /// routers that add HSTS for the sites that ask for it send there. `None`: HSTS is off
    /// whatever the sites ask.
    pub https_service: Option<String>,
    /// A listener that serves only what the edge asks (`/edge/traefik.json`, the HTTP-01
    /// answers, `/healthz`), on an address the edge's Traefik tasks reach; `None`: those
    /// routes are on `listen` only.
    pub edge_listen: Option<SocketAddr>,
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            directory: None,
            contact_email: String::new(),
            directory_ca_file: None,
            interval_secs: 60,
            max_orders_per_pass: 20,
            orders_per_window: 300,
            order_window_secs: 3 * 3600,
            rate_limited_default_secs: 3600,
            rate_limited_max_secs: 86_400,
            order_timeout_secs: 120,
            retry_base_secs: 300,
            retry_max_secs: 86_400,
            unused_grace_secs: 86_400,
            edge_token: Secret::default(),
            edge_poll_interval_secs: 5,
            challenge_upstream: None,
            web_entrypoint: "web".to_owned(),
            websecure_entrypoint: "websecure".to_owned(),
            https_service: None,
            edge_listen: None,
        }
    }
}

impl CertsConfig {
    /// How long a domain's certificate must have been given to the edge before its redirect
    /// to HTTPS (and HSTS) is: two polls of the edge. A replica fetches the document at
    /// least once within any poll interval, so after two every replica has fetched (and
    /// applied) the certificate, whatever the phase of its polls and however long a fetch
    /// takes within one interval.
    pub fn redirect_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.edge_poll_interval_secs.saturating_mul(2))
    }
}

/// The site agents' side of the control plane.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// A second listener that serves only the agents' endpoints (`/v1/agent/…`), on an
    /// address the sites' tasks can reach; `None`: agents use `listen`.
    pub listen: Option<SocketAddr>,
    /// Base URL the agents report to, as the tasks reach it (`None`: agents do not
    /// report and sites become `active` when their create operation finishes).
    pub control_url: Option<String>,
    /// A site whose agent has not reported for this long is `degraded`.
    pub report_timeout_secs: u64,
    /// Seconds between reports that the platform asks of agents.
    pub report_interval_secs: u32,
}

impl AgentConfig {
    /// [`control_url`](Self::control_url) without a trailing `/`, as the sites' services
    /// are given it.
    pub fn report_url(&self) -> Option<&str> {
        self.control_url.as_deref().map(|u| u.trim_end_matches('/'))
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: None,
            control_url: None,
            report_timeout_secs: 60,
            report_interval_secs: 10,
        }
    }
}

/// Automatic placement: when the map is re-planned and how moves run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// Run the placement loop inside `serve` (one replica at a time acts).
    pub enabled: bool,
    /// Seconds between passes (node states from the swarm, then the triggers).
    pub interval_secs: u64,
    /// A worker the swarm reports down for this long has its sites re-placed.
    pub down_grace_secs: u64,
    /// Moves that only improve the balance (a worker joined, plans changed): `auto`
    /// applies them, `approve` waits for staff (`POST /v1/placement/rebalance`). Moves off
    /// drained and failed workers are always applied.
    pub rebalance: String,
    /// Moves running at once, in all and per worker (from or to).
    pub max_concurrent_moves: u32,
    pub max_moves_per_node: u32,
    /// Slots kept free on every worker.
    pub headroom_slots: u32,
    /// A move whose site is not ready on its new worker by then is taken back.
    pub move_timeout_secs: u64,
    /// Balance moves wait for a lasting imbalance: the same workers over their share in
    /// this many consecutive passes of the loop…
    pub balance_after_passes: u32,
    /// …spanning at least this long (sites being created or deleted move the counts for
    /// a moment; every move restarts a site's task). Moves off drained or failed workers
    /// never wait.
    pub balance_after_secs: u64,
    /// A site moved within this time is not moved again for balance (only off a drained,
    /// failed or over-full worker).
    pub move_cooldown_secs: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 5,
            down_grace_secs: 60,
            rebalance: "auto".into(),
            max_concurrent_moves: 10,
            max_moves_per_node: 2,
            headroom_slots: 0,
            move_timeout_secs: 300,
            balance_after_passes: 3,
            balance_after_secs: 60,
            move_cooldown_secs: 900,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_database_url() -> DatabaseUrl {
    DatabaseUrl::new("mysql://root@127.0.0.1:3306/pressdock")
}

fn default_body_limit() -> usize {
    64 * 1024
}

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// [`Config::load`] with the environment given, for tests.
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| lookup("PRESSDOCK_CONFIG").map(Into::into));
        let mut table: toml::Table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing configuration file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in table.iter_mut() {
            if key != "backends" {
                resolve_secret_files(value, key)?;
            }
        }
        for &(name, key, kind) in ENV_KEYS {
            if let Some(value) = lookup(name) {
                set_path(&mut table, key, kind, value)?;
            }
        }
        let config: Config = table.try_into().context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.secret_key.is_empty() && self.secret_key.expose().len() < 32 {
            bail!("secret_key must be at least 32 characters");
        }
        if self.auth.access_token_ttl_secs == 0 || self.jobs.lease_secs < 2 {
            bail!("auth.access_token_ttl_secs must be > 0 and jobs.lease_secs >= 2");
        }
        if let Some(url) = &self.agent.control_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("agent.control_url must be an http:// or https:// URL");
        }
        if !matches!(self.placement.rebalance.as_str(), "auto" | "approve") {
            bail!("placement.rebalance must be auto or approve");
        }
        if self.placement.max_moves_per_node == 0 || self.placement.max_concurrent_moves == 0 {
            bail!("placement.max_moves_per_node and max_concurrent_moves must be > 0");
        }
        if self.agent.report_interval_secs == 0
            || self.agent.report_timeout_secs < 3 * u64::from(self.agent.report_interval_secs)
        {
            bail!(
                "agent.report_timeout_secs must be at least 3 × agent.report_interval_secs (> 0)"
            );
        }
        if self
            .billing
            .cluster_monthly_cost_minor
            .is_some_and(|c| !(0..=1_000_000_000_000).contains(&c))
        {
            bail!("billing.cluster_monthly_cost_minor must be between 0 and 10^12");
        }
        let currency = &self.billing.currency;
        if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
            bail!("billing.currency must be an ISO 4217 code such as USD");
        }
        for (i, url) in self.billing.edge_metrics.iter().enumerate() {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= 255
                && reqwest::Url::parse(url).is_ok();
            if !ok {
                bail!("billing.edge_metrics[{i}] must be an http(s) URL of at most 255 characters");
            }
        }
        if self.billing.edge_scrape_interval_secs == 0
            || self.billing.edge_scrape_interval_secs > 900
        {
            bail!("billing.edge_scrape_interval_secs must be between 1 and 900");
        }
        if !(1..=3600).contains(&self.certs.edge_poll_interval_secs) {
            bail!("certs.edge_poll_interval_secs must be between 1 and 3600");
        }
        let b = &self.backups;
        if !(5..=3600).contains(&b.interval_secs) || !(1..=100).contains(&b.max_running) {
            bail!(
                "backups.interval_secs must be between 5 and 3600 and backups.max_running between 1 and 100"
            );
        }
        for (name, days) in [
            ("final_retention_days", b.final_retention_days),
            ("pre_restore_retention_days", b.pre_restore_retention_days),
            ("failed_retention_days", b.failed_retention_days),
        ] {
            if !(1..=3650).contains(&days) {
                bail!("backups.{name} must be between 1 and 3650");
            }
        }
        let internal = &self.billing.edge_internal_entrypoint;
        if internal.is_empty()
            || internal.len() > 64
            || !internal
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "billing.edge_internal_entrypoint must be a Traefik entrypoint name ([A-Za-z0-9_-], 1 to 64)"
            );
        }
        Ok(())
    }
}

/// Replaces every `{ file = "PATH" }` in `value` (a table whose only key is `file`, a
/// string) with the content of that file, its final line break removed: a credential by
/// reference, so that the configuration file holds none. `at` is the key's path, for errors
/// (which name the key and the file, never the content).
pub fn resolve_secret_files(value: &mut toml::Value, at: &str) -> anyhow::Result<()> {
    match value {
        toml::Value::Table(t) => {
            if t.len() == 1
                && let Some(toml::Value::String(path)) = t.get("file")
            {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{at}: reading the file {path}"))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.is_empty() {
                    bail!("{at}: the file {path} is empty");
                }
                *value = toml::Value::String(text.to_owned());
                return Ok(());
            }
            for (k, v) in t.iter_mut() {
                resolve_secret_files(v, &format!("{at}.{k}"))?;
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                resolve_secret_files(v, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// How an environment variable's text becomes the key's TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Boolean,
}

/// Environment variables, the configuration key each one sets, and its kind: the one
/// list of what the environment can set.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("PRESSDOCK_LISTEN", "listen", Kind::Text),
    ("PRESSDOCK_DATABASE_URL", "database_url", Kind::Text),
    ("PRESSDOCK_SECRET_KEY", "secret_key", Kind::Text),
    (
        "PRESSDOCK_BODY_LIMIT_BYTES",
        "body_limit_bytes",
        Kind::Integer,
    ),
    (
        "PRESSDOCK_BOOTSTRAP_ADMIN_EMAIL",
        "bootstrap.admin_email",
        Kind::Text,
    ),
    (
        "PRESSDOCK_BOOTSTRAP_ADMIN_PASSWORD",
        "bootstrap.admin_password",
        Kind::Text,
    ),
    (
        "PRESSDOCK_ACCESS_TOKEN_TTL_SECS",
        "auth.access_token_ttl_secs",
        Kind::Integer,
    ),
    ("PRESSDOCK_JOBS_ENABLED", "jobs.enabled", Kind::Boolean),
    (
        "PRESSDOCK_JOBS_LEASE_SECS",
        "jobs.lease_secs",
        Kind::Integer,
    ),
    (
        "PRESSDOCK_JOBS_POLL_MILLIS",
        "jobs.poll_millis",
        Kind::Integer,
    ),
    (
        "PRESSDOCK_RECONCILE_INTERVAL_SECS",
        "reconcile.interval_secs",
        Kind::Integer,
    ),
    (
        "PRESSDOCK_ORPHAN_GRACE_SECS",
        "reconcile.orphan_grace_secs",
        Kind::Integer,
    ),
    ("PRESSDOCK_AGENT_LISTEN", "agent.listen", Kind::Text),
    (
        "PRESSDOCK_AGENT_CONTROL_URL",
        "agent.control_url",
        Kind::Text,
    ),
    (
        "PRESSDOCK_AGENT_REPORT_TIMEOUT_SECS",
        "agent.report_timeout_secs",
        Kind::Integer,
    ),
    (
        "PRESSDOCK_BILLING_CLUSTER_MONTHLY_COST_MINOR",
        "billing.cluster_monthly_cost_minor",
        Kind::Integer,
    ),
    ("PRESSDOCK_BILLING_CURRENCY", "billing.currency", Kind::Text),
    (
        "PRESSDOCK_BACKUPS_SCHEDULER",
        "backups.scheduler",
        Kind::Boolean,
    ),
    (
        "PRESSDOCK_BACKUPS_FINAL_RETENTION_DAYS",
        "backups.final_retention_days",
        Kind::Integer,
    ),
];

/// Sets `a.b` in the table from an environment string, typed by its kind.
fn set_path(table: &mut toml::Table, key: &str, kind: Kind, raw: String) -> anyhow::Result<()> {
    let value = match kind {
        Kind::Integer => toml::Value::Integer(
            raw.parse()
                .with_context(|| format!("{key} must be a whole number"))?,
        ),
        Kind::Boolean => toml::Value::Boolean(
            raw.parse()
                .with_context(|| format!("{key} must be true or false"))?,
        ),
        Kind::Text => toml::Value::String(raw),
    };
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            break;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("configuration key {part} is not a table"),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_secrets_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ndatabase_url = \"mysql://u:hunter2@db:3306/p\"\n[bootstrap]\nadmin_email = \"a@x.test\"\n",
        )
        .expect("write");
        let env = vec![
            ("PRESSDOCK_LISTEN".to_owned(), "127.0.0.1:9100".to_owned()),
            (
                "PRESSDOCK_BOOTSTRAP_ADMIN_PASSWORD".to_owned(),
                "s3cret-pass".to_owned(),
            ),
        ];
        let config = Config::load_from(Some(&path), &env).expect("config");
        assert_eq!(config.listen.port(), 9100, "env beats file");
        assert_eq!(config.bootstrap.admin_email.as_deref(), Some("a@x.test"));
        let printed = format!("{config:?} {}", toml::to_string(&config).expect("toml"));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret-pass"), "{printed}");
        assert!(printed.contains("mysql://u:[redacted]@db:3306/p"));
    }

    #[test]
    fn a_database_url_prints_without_its_password() {
        let url =
            DatabaseUrl::new("mysql://pd:p%40ss:w@rd@db.internal:3306/pressdock?ssl-mode=required");
        assert_eq!(
            url.redacted(),
            "mysql://pd:[redacted]@db.internal:3306/pressdock?ssl-mode=required"
        );
        assert!(!format!("{url:?}").contains("rd@"), "{url:?}");
        assert_eq!(
            DatabaseUrl::new("mysql://root@127.0.0.1:3306/pressdock").redacted(),
            "mysql://root@127.0.0.1:3306/pressdock"
        );
        assert_eq!(
            DatabaseUrl::new("pd:hunter2 not a url").redacted(),
            "[redacted: not a URL]"
        );
    }

    #[test]
    fn the_cluster_cost_comes_from_file_or_environment_and_is_checked() {
        let config = Config::load_from(None, &[]).expect("defaults");
        assert_eq!(config.billing.cluster_monthly_cost_minor, None);
        assert_eq!(config.billing.currency, "USD");
        let env = vec![(
            "PRESSDOCK_BILLING_CLUSTER_MONTHLY_COST_MINOR".to_owned(),
            "361300".to_owned(),
        )];
        let config = Config::load_from(None, &env).expect("config");
        assert_eq!(config.billing.cluster_monthly_cost_minor, Some(361_300));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[billing]\ncluster_monthly_cost_minor = 5\ncurrency = \"usd\"\n",
        )
        .expect("write");
        let err = Config::load_from(Some(&path), &[]).expect_err("lower-case currency");
        assert!(format!("{err:#}").contains("billing.currency"), "{err:#}");
        std::fs::write(&path, "[billing]\ncluster_monthly_cost_minor = -1\n").expect("write");
        let err = Config::load_from(Some(&path), &[]).expect_err("negative cost");
        assert!(
            format!("{err:#}").contains("billing.cluster_monthly_cost_minor"),
            "{err:#}"
        );
    }

    #[test]
    fn credentials_may_be_files_and_the_backends_keep_the_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        let url = dir.path().join("url");
        std::fs::write(&key, "k".repeat(40) + "\n").expect("write");
        std::fs::write(&url, "mysql://pd:hunter2@db:6033/pressdock\n").expect("write");
        let path = dir.path().join("p.toml");
        let text = format!(
            "database_url = {{ file = {url:?} }}\nsecret_key = {{ file = {key:?} }}\n\
             [backends.s3]\nendpoint = \"https://s3.test\"\nbucket = \"b\"\n\
             access_key = {{ file = {key:?} }}\nsecret_key = {{ file = {url:?} }}\n",
            url = url.display().to_string(),
            key = key.display().to_string(),
        );
        std::fs::write(&path, text).expect("write");
        let config = Config::load_from(Some(&path), &[]).expect("config");
        assert_eq!(config.secret_key.expose(), "k".repeat(40));
        assert_eq!(
            config.database_url.expose(),
            "mysql://pd:hunter2@db:6033/pressdock"
        );
        // `[backends]` keeps the reference (printed as such) until the drivers read it.
        let printed = toml::to_string(&config).expect("toml");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains(&url.display().to_string()), "{printed}");
        let mut backends = toml::Value::Table(config.backends.clone());
        resolve_secret_files(&mut backends, "backends").expect("resolve");
        assert_eq!(
            backends["s3"]["secret_key"].as_str(),
            Some("mysql://pd:hunter2@db:6033/pressdock")
        );
        // A missing file names the key and the file.
        std::fs::remove_file(&key).expect("rm");
        let err = Config::load_from(Some(&path), &[]).expect_err("missing file");
        let msg = format!("{err:#}");
        assert!(msg.contains("secret_key") && msg.contains("key"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        let err = Config::load_from(Some(&path), &[]).expect_err("typo refused");
        assert!(format!("{err:#}").contains("lisen"));
    }
}
