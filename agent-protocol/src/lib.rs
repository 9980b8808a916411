//! The agent ↔ control-plane protocol: the JSON bodies of `POST /v1/agent/report` and
//! `POST /v1/agent/purge`.
//!
//! A crate of its own so that both sides depend on the contract and nothing else: the
//! control plane (`platform`) does not link the agent, and the agent (`site-agent`, which
//! re-exports this crate as `site_agent::protocol`) does not link the control plane.
//!
//! The agent of a site sends an [`AgentReport`] every few seconds (one request in flight
//! at a time, `Authorization: Bearer <agent token>`, the content of the site's
//! `agent_token` secret). The platform answers `200` with a [`ReportResponse`] carrying the
//! site's [`DesiredConfig`] and its generation. The agent persists the desired config,
//! refuses a generation older than the one it holds (a stale platform replica), applies it,
//! and says in its next report which generation it holds ([`AgentReport::desired_generation`])
//! and how applying it went ([`AgentReport::applied`]).
//!
//! Other answers: `401` (unknown or revoked token: the agent keeps reporting with backoff),
//! `404` (the site is being deleted), `429`/`5xx` (retried with backoff). Error bodies are
//! not read.
//!
//! Purges: when a post, a comment, a menu or the theme changes, the site's must-use plugin
//! tells the agent (locally, `POST /purge` on the agent's port, see `site_agent::purge`) and
//! the agent posts a [`PurgeRequest`] to [`PURGE_PATH`] (same bearer token, one request in
//! flight, queued purges merged into it). The platform bans the paths on the edge caches of
//! every host of the site and answers `202` with a [`PurgeResponse`]. Other answers: `401`
//! (unknown token), `404` (site gone), `422` (a path breaks the rules of [`PurgePath`]):
//! dropped and logged, never retried; `429`/`5xx`: retried with backoff.
//!
//! Compatibility: both sides ignore unknown fields and every field added later must have a
//! default (`#[serde(default)]`), so the agent and the platform can be upgraded separately.
//! Sizes are bytes, durations seconds, times Unix seconds (UTC).

use serde::{Deserialize, Serialize};

/// The path the agent posts to, relative to the control-plane URL.
pub const REPORT_PATH: &str = "/v1/agent/report";

/// Body of `POST /v1/agent/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The site's id (`PRESSDOCK_SITE_ID`, e.g. `k3v9q2m8xa`). The platform must check it
    /// against the site the bearer token belongs to.
    pub site_id: String,
    /// Counts the reports of this agent process from 1; with `started_at_unix` it tells a
    /// restart (the sequence starts again) from a lost report.
    pub seq: u64,
    /// When this agent process started.
    pub started_at_unix: u64,
    /// When this report was made.
    pub sent_at_unix: u64,
    pub health: Health,
    pub versions: Versions,
    pub sizes: Sizes,
    pub counters: Counters,
    /// Generation of the desired config the agent holds (persisted), `None` before the
    /// first one arrived.
    #[serde(default)]
    pub desired_generation: Option<u64>,
    /// The outcome of applying the held desired config, `None` before the first one.
    #[serde(default)]
    pub applied: Option<ApplyStatus>,
    /// The swarm node this task runs on (`PRESSDOCK_NODE_ID={{.Node.ID}}` in the service
    /// spec), `None` when not set or not an id. A moved site is ready on its new node when
    /// a ready report carries the new node's id.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The swarm task (`PRESSDOCK_TASK_ID={{.Task.ID}}`), `None` when not set.
    #[serde(default)]
    pub task_id: Option<String>,
}

/// Liveness and readiness as the agent sees them (the same as `/healthz` and `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    /// The supervised processes run (none is crash-looping).
    pub live: bool,
    /// Ready to serve: WordPress installed and answering on the local web server, the
    /// database and Redis reachable. The platform marks the site `active` on the first
    /// ready report.
    pub ready: bool,
    /// WordPress is installed (the installer ran, or found it installed).
    pub wordpress_installed: bool,
    /// Each readiness check; `detail` says why a failed one failed (never a secret).
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// One readiness check (`wordpress`, `database`, `redis`, `install`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Software versions in the task; `None` when not (yet) known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Versions {
    pub agent: String,
    #[serde(default)]
    pub wordpress: Option<String>,
    #[serde(default)]
    pub php: Option<String>,
    #[serde(default)]
    pub nginx: Option<String>,
}

/// Storage used by the site; `None` until first measured (measured every few minutes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sizes {
    /// Bytes of the files under wp-content (the site's Gluster directory).
    #[serde(default)]
    pub wp_content_bytes: Option<u64>,
    /// Data and index bytes of the site's schema (`information_schema.tables`).
    #[serde(default)]
    pub database_bytes: Option<u64>,
}

/// Counters since this agent process started (monotonic; they restart at 0 with the
/// agent, see [`AgentReport::started_at_unix`]); gauges where said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Counters {
    /// Requests the site's web server answered.
    pub requests_total: u64,
    /// Of which with a 5xx status.
    pub requests_5xx_total: u64,
    /// Bytes sent to clients.
    pub response_bytes_total: u64,
    /// Sum of the response times, seconds (with `requests_total`: the mean).
    pub response_seconds_total: f64,
    /// php-fpm: connections accepted by the pool (since php-fpm started).
    #[serde(default)]
    pub php_fpm_accepted_conn: Option<u64>,
    /// php-fpm: gauge, busy workers at the last status read.
    #[serde(default)]
    pub php_fpm_active_processes: Option<u64>,
    /// php-fpm: times the pool hit `pm.max_children` (the plan is too small).
    #[serde(default)]
    pub php_fpm_max_children_reached: Option<u64>,
    /// Restarts of supervised processes (php-fpm, nginx) after they died.
    pub child_restarts_total: u64,
}

/// How applying a desired config went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStatus {
    pub generation: u64,
    pub ok: bool,
    /// The highest [`Command::id`] done (persisted: a command runs once even when later
    /// generations still carry it).
    #[serde(default)]
    pub last_command_id: Option<u64>,
    /// Why it failed (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of the `200` answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReportResponse {
    /// The site's desired config. The platform always sends the current one; the agent
    /// ignores an equal generation and refuses an older one.
    #[serde(default)]
    pub desired: Option<DesiredConfig>,
    /// Seconds until the next report; `None`: the agent's own default (15 s).
    #[serde(default)]
    pub report_interval_secs: Option<u32>,
}

/// What the platform wants the site's runtime to be. Versioned by `generation`: the
/// platform bumps it on every change of anything in here, and never reuses a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredConfig {
    /// Monotonic per site.
    pub generation: u64,
    #[serde(default)]
    pub php: PhpSettings,
    /// `None`: no scheduled backups.
    #[serde(default)]
    pub backup: Option<BackupSchedule>,
    /// One-shot commands. Each has an id that increases per site; the agent runs each
    /// command with an id above [`ApplyStatus::last_command_id`] once, in id order. The
    /// platform may drop a command once a report shows it done.
    #[serde(default)]
    pub commands: Vec<Command>,
}

/// PHP settings of the site's pool (php-fpm is reloaded gracefully when they change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhpSettings {
    /// `memory_limit`, MiB.
    pub memory_limit_mb: u32,
    /// `upload_max_filesize` and `post_max_size`, MiB.
    pub upload_max_mb: u32,
    /// `max_execution_time`, seconds.
    pub max_execution_secs: u32,
    /// `pm.max_children` of the pool (from the plan's memory).
    pub max_children: u32,
}

impl Default for PhpSettings {
    fn default() -> Self {
        Self {
            memory_limit_mb: 128,
            upload_max_mb: 32,
            max_execution_secs: 60,
            max_children: 4,
        }
    }
}

/// When and where to back up the site (database dump and wp-content) to S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSchedule {
    /// Cron expression (5 fields, UTC).
    pub cron: String,
    /// Days a backup is kept.
    pub retention_days: u32,
}

/// A one-shot command for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    #[serde(flatten)]
    pub kind: CommandKind,
}

/// What a [`Command`] asks for. Serialized as `{"id": 7, "kind": "flush_object_cache"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandKind {
    /// Empty the site's object cache (its Redis keys, by bumping the key version).
    FlushObjectCache,
    /// Take a backup now.
    BackupNow,
}

/// WordPress's eight keys and salts, in the order wp-config defines them: the names of the
/// `NAME=value` lines of a site's `wp_salts` secret, which the platform generates (one
/// line each) and the agent reads into `wp-config.php` (all eight, nothing else).
pub const WP_SALT_NAMES: [&str; 8] = [
    "AUTH_KEY",
    "SECURE_AUTH_KEY",
    "LOGGED_IN_KEY",
    "NONCE_KEY",
    "AUTH_SALT",
    "SECURE_AUTH_SALT",
    "LOGGED_IN_SALT",
    "NONCE_SALT",
];

/// The path the agent posts purges to, relative to the control-plane URL.
pub const PURGE_PATH: &str = "/v1/agent/purge";

/// At most this many paths in one [`PurgeRequest`]; more are sent as `all: true`.
pub const MAX_PURGE_PATHS: usize = 100;

/// At most this many bytes in one purge path.
pub const MAX_PURGE_PATH_BYTES: usize = 2048;

/// Body of `POST /v1/agent/purge`: ban cached pages of the site on the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRequest {
    /// The site's id; the platform checks it against the site of the bearer token.
    pub site_id: String,
    /// URL paths with an optional query (`/hello-world/`, `/?p=5`, `/feed/`), each valid as
    /// a [`PurgePath`], at most [`MAX_PURGE_PATHS`]. The same path on every host of the site.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Ban every cached object of the site's hosts (`paths` is then ignored, and empty when
    /// the agent sends it).
    #[serde(default)]
    pub all: bool,
}

/// Body of the `202` answer to a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PurgeResponse {
    /// How many bans the platform issued (edge caches × paths, or hosts for `all`).
    pub banned: u32,
}

/// One valid purge path: starts with `/`, 1 to [`MAX_PURGE_PATH_BYTES`] bytes of printable
/// ASCII without spaces (`!` to `~`); a query is part of it, a fragment is not expected.
/// Both sides check paths with [`PurgePath::parse`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PurgePath(String);

/// Why a purge path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgePathError {
    NotAbsolute,
    TooLong,
    NotPrintableAscii,
}

impl std::fmt::Display for PurgePathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "a purge path starts with '/'",
            Self::TooLong => "a purge path has at most 2048 bytes",
            Self::NotPrintableAscii => {
                "a purge path is printable ASCII without spaces (percent-encode the rest)"
            }
        })
    }
}

impl std::error::Error for PurgePathError {}

impl PurgePath {
    pub fn parse(s: &str) -> Result<Self, PurgePathError> {
        if !s.starts_with('/') {
            return Err(PurgePathError::NotAbsolute);
        }
        if s.len() > MAX_PURGE_PATH_BYTES {
            return Err(PurgePathError::TooLong);
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PurgePathError::NotPrintableAscii);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_config_round_trips_and_tolerates_unknown_and_missing_fields() {
        let json = r#"{"desired":{"generation":7,"php":{"memory_limit_mb":256,"upload_max_mb":64,
            "max_execution_secs":30,"max_children":6},"commands":[{"id":3,"kind":"flush_object_cache"}],
            "future_field":1},"report_interval_secs":20,"another":true}"#;
        let r: ReportResponse = serde_json::from_str(json).expect("parses");
        let d = r.desired.expect("desired");
        assert_eq!(d.generation, 7);
        assert_eq!(d.php.max_children, 6);
        assert_eq!(d.backup, None);
        assert_eq!(
            d.commands,
            vec![Command {
                id: 3,
                kind: CommandKind::FlushObjectCache
            }]
        );
        let back: DesiredConfig =
            serde_json::from_str(&serde_json::to_string(&d).expect("ser")).expect("de");
        assert_eq!(back, d);
        let minimal: DesiredConfig = serde_json::from_str(r#"{"generation":1}"#).expect("min");
        assert_eq!(minimal.php, PhpSettings::default());
    }

    #[test]
    fn report_serializes_with_the_documented_names() {
        let r = AgentReport {
            site_id: "k3v9q2m8xa".into(),
            seq: 1,
            started_at_unix: 10,
            sent_at_unix: 11,
            health: Health {
                live: true,
                ready: false,
                wordpress_installed: false,
                checks: vec![Check {
                    name: "database".into(),
                    ok: false,
                    detail: Some("connection refused".into()),
                }],
            },
            versions: Versions {
                agent: "0.1.0".into(),
                ..Default::default()
            },
            sizes: Sizes::default(),
            counters: Counters::default(),
            desired_generation: None,
            applied: None,
            node_id: Some("x2ny5jrbcx0sd7xybq5sn9ahu".into()),
            task_id: None,
        };
        let v = serde_json::to_value(&r).expect("ser");
        assert_eq!(v["health"]["checks"][0]["name"], "database");
        assert_eq!(v["counters"]["requests_total"], 0);
        assert!(v["desired_generation"].is_null());
        assert_eq!(v["node_id"], "x2ny5jrbcx0sd7xybq5sn9ahu");
        assert!(v["task_id"].is_null());
        let back: AgentReport = serde_json::from_value(v.clone()).expect("de");
        assert_eq!(back, r);
        // A report of an older agent (no node or task id) still parses.
        let mut old = v;
        if let Some(o) = old.as_object_mut() {
            o.remove("node_id");
            o.remove("task_id");
        }
        let back: AgentReport = serde_json::from_value(old).expect("old report");
        assert_eq!(back.node_id, None);
    }

    #[test]
    fn purge_types_use_the_documented_names() {
        let r = PurgeRequest {
            site_id: "k3v9q2m8xa".into(),
            paths: vec!["/hello-world/".into(), "/?p=5".into()],
            all: false,
        };
        assert_eq!(
            serde_json::to_value(&r).expect("ser"),
            serde_json::json!({"site_id": "k3v9q2m8xa", "paths": ["/hello-world/", "/?p=5"], "all": false})
        );
        let all: PurgeRequest =
            serde_json::from_str(r#"{"site_id":"k3v9q2m8xa","all":true,"later":1}"#).expect("de");
        assert!(all.all && all.paths.is_empty());
        let resp: PurgeResponse = serde_json::from_str(r#"{"banned":6}"#).expect("de");
        assert_eq!(resp.banned, 6);
        assert_eq!(PURGE_PATH, "/v1/agent/purge");
    }

    #[test]
    fn purge_paths_are_absolute_printable_ascii_and_bounded() {
        for ok in [
            "/",
            "/hello-world/",
            "/?p=5",
            "/feed/",
            "/caf%C3%A9/?a=b&c=%20",
        ] {
            assert_eq!(
                PurgePath::parse(ok).map(PurgePath::into_string),
                Ok(ok.into())
            );
        }
        assert_eq!(PurgePath::parse(""), Err(PurgePathError::NotAbsolute));
        assert_eq!(PurgePath::parse("hello/"), Err(PurgePathError::NotAbsolute));
        assert_eq!(
            PurgePath::parse("https://a.test/x"),
            Err(PurgePathError::NotAbsolute)
        );
        for bad in ["/a b", "/caf\u{e9}", "/a\tb", "/a\nb", "/\u{7f}"] {
            assert_eq!(
                PurgePath::parse(bad),
                Err(PurgePathError::NotPrintableAscii),
                "{bad:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PURGE_PATH_BYTES - 1));
        assert!(PurgePath::parse(&long).is_ok());
        assert_eq!(
            PurgePath::parse(&format!("{long}a")),
            Err(PurgePathError::TooLong)
        );
    }
}
