//! The DB router in front of Galera, as far as a site is concerned: its user entry.
//!
//! Two implementations, chosen by `[backends.galera] router`:
//! - [`HaproxyRouter`] (the lab): HAProxy forwards TCP and has no users table, so every
//!   operation is a successful no-op.
//! - [`ProxySqlRouter`] (production): the site user in ProxySQL's `mysql_users` on every
//!   ProxySQL admin endpoint, loaded to runtime, saved to disk, verified in
//!   `runtime_mysql_users`.
//!
//! ProxySQL is not installable on these machines, so the ProxySQL statements are built
//! by pure functions ([`proxysql_upsert_statements`], [`proxysql_delete_statements`],
//! [`proxysql_verify_query`], [`proxysql_check_runtime_rows`]) whose exact output is
//! unit-tested against ProxySQL's documented admin syntax:
//! - <https://proxysql.com/documentation/users-management/mysql-users-management>:
//!   `mysql_users` columns `username, password, active, use_ssl, default_hostgroup,
//!   default_schema, schema_locked, transaction_persistent, fast_forward, backend,
//!   frontend, max_connections`; primary key `(username, backend)`, unique
//!   `(username, frontend)`; "password: clear-text or hashed".
//! - <https://proxysql.com/documentation/main-runtime/>: three layers (memory, `runtime_`
//!   tables, disk); `LOAD MYSQL USERS TO RUNTIME` and `SAVE MYSQL USERS TO DISK` move the
//!   `mysql_users` table between them.
//!
//! The connection options ([`proxysql_admin_opts`]) were found with a real ProxySQL 2.7.2
//! and ProxySQL's source; `tests/drivers.rs` runs the driver against a stand-in of the
//! admin interface (`tests/helpers/proxysql_admin.rs`) that accepts what ProxySQL's admin
//! accepts and refuses what it refuses.

use std::future::Future;

use mysql_async::prelude::*;
use mysql_async::{Opts, OptsBuilder, Pool};
use sha1::{Digest, Sha1};

use crate::config::{GaleraConfig, RouterKind};
use crate::error::{EndpointFailure, Error, Result};
use crate::ids::{Secret, SitePassword, SiteResourceId};

const BACKEND: &str = "proxysql";

/// The site's user as one router endpoint sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterUserState {
    /// Endpoint (host:port, no credentials); `"haproxy"` for the no-op router.
    pub endpoint: String,
    /// The user is in the runtime layer, active, with the expected password, hostgroup
    /// and schema (for HAProxy: always true, there is nothing to have).
    pub converged: bool,
    /// Runtime rows found for the user.
    pub runtime_rows: usize,
    /// The endpoint answered (an unreachable one is never converged).
    pub reachable: bool,
    /// Why an unreachable endpoint could not be read (the whole error chain).
    pub error: Option<String>,
}

/// The DB router's per-site user entry.
pub trait DbRouter {
    /// Creates or converges the user on every router endpoint.
    fn ensure_router_user(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> impl Future<Output = Result<Vec<RouterUserState>>> + Send;

    /// Reads the user's runtime state on every endpoint.
    fn observe_router_user(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> impl Future<Output = Result<Vec<RouterUserState>>> + Send;

    /// Removes the user from every endpoint; absent is success.
    fn remove_router_user(&self, id: &SiteResourceId) -> impl Future<Output = Result<()>> + Send;
}

/// HAProxy forwards TCP to Galera: no per-user entry, every operation succeeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct HaproxyRouter;

impl DbRouter for HaproxyRouter {
    async fn ensure_router_user(
        &self,
        _id: &SiteResourceId,
        _password: &SitePassword,
    ) -> Result<Vec<RouterUserState>> {
        Ok(vec![Self::state()])
    }

    async fn observe_router_user(
        &self,
        _id: &SiteResourceId,
        _password: &SitePassword,
    ) -> Result<Vec<RouterUserState>> {
        Ok(vec![Self::state()])
    }

    async fn remove_router_user(&self, _id: &SiteResourceId) -> Result<()> {
        Ok(())
    }
}

impl HaproxyRouter {
    fn state() -> RouterUserState {
        RouterUserState {
            endpoint: "haproxy".into(),
            converged: true,
            runtime_rows: 0,
            reachable: true,
            error: None,
        }
    }
}

/// Per-user settings written to ProxySQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySqlUserSettings {
    /// The Galera writer hostgroup.
    pub default_hostgroup: u32,
    pub max_connections: u32,
}

/// The MySQL `mysql_native_password` hash, `*` + upper-case hex of SHA1(SHA1(password)):
/// what `PASSWORD()` returns and what ProxySQL accepts as a hashed password, so the
/// clear text never reaches ProxySQL's tables or its disk file.
pub fn mysql_native_hash(password: &SitePassword) -> String {
    let once = Sha1::digest(password.expose().as_bytes());
    let twice = Sha1::digest(once);
    format!("*{}", hex::encode_upper(twice))
}

/// The statements that create or converge the site user on one ProxySQL admin endpoint.
///
/// `REPLACE INTO` on the primary key `(username, backend)` makes this idempotent; one
/// row with `frontend=1, backend=1` serves both directions. ProxySQL's admin interface
/// has no bound parameters; the only values formatted in are the validated id
/// (`wp_[a-z2-7]{10}`), the password hash (`*[0-9A-F]{40}`) and integers.
pub fn proxysql_upsert_statements(
    id: &SiteResourceId,
    password: &SitePassword,
    settings: ProxySqlUserSettings,
) -> Vec<String> {
    let user = id.resource_name();
    vec![
        format!(
            "REPLACE INTO mysql_users (username, password, active, use_ssl, default_hostgroup, \
             default_schema, schema_locked, transaction_persistent, fast_forward, backend, \
             frontend, max_connections) VALUES ('{user}', '{hash}', 1, 0, {hg}, '{user}', 0, 1, \
             0, 1, 1, {maxc})",
            hash = mysql_native_hash(password),
            hg = settings.default_hostgroup,
            maxc = settings.max_connections,
        ),
        "LOAD MYSQL USERS TO RUNTIME".to_owned(),
        "SAVE MYSQL USERS TO DISK".to_owned(),
    ]
}

/// The statements that remove the site user from one endpoint (no row: no-op).
pub fn proxysql_delete_statements(id: &SiteResourceId) -> Vec<String> {
    vec![
        format!(
            "DELETE FROM mysql_users WHERE username = '{}'",
            id.resource_name()
        ),
        "LOAD MYSQL USERS TO RUNTIME".to_owned(),
        "SAVE MYSQL USERS TO DISK".to_owned(),
    ]
}

/// The read-back of the runtime layer for one user.
pub fn proxysql_verify_query(id: &SiteResourceId) -> String {
    format!(
        "SELECT username, password, active, default_hostgroup, default_schema, frontend, backend \
         FROM runtime_mysql_users WHERE username = '{}'",
        id.resource_name()
    )
}

/// One row of [`proxysql_verify_query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeUserRow {
    pub username: String,
    pub password: Option<String>,
    pub active: i64,
    pub default_hostgroup: i64,
    pub default_schema: Option<String>,
    pub frontend: i64,
    pub backend: i64,
}

/// Whether the runtime rows show the user as we wrote it. ProxySQL may split the row
/// into a frontend and a backend row at runtime and may hash a clear-text password
/// (`admin-hash_passwords`), so every row must be active, point at the hostgroup and
/// schema, carry the hash (or the clear text), and frontend and backend must both be
/// covered.
pub fn proxysql_check_runtime_rows(
    id: &SiteResourceId,
    password: &SitePassword,
    settings: ProxySqlUserSettings,
    rows: &[RuntimeUserRow],
) -> bool {
    let user = id.resource_name();
    let hash = mysql_native_hash(password);
    let row_ok = |r: &RuntimeUserRow| {
        r.username == user
            && r.active == 1
            && r.default_hostgroup == i64::from(settings.default_hostgroup)
            && r.default_schema.as_deref() == Some(user.as_str())
            && r.password
                .as_deref()
                .is_some_and(|p| p == hash || p == password.expose())
    };
    !rows.is_empty()
        && rows.iter().all(row_ok)
        && rows.iter().any(|r| r.frontend == 1)
        && rows.iter().any(|r| r.backend == 1)
}

/// `max_allowed_packet` given to mysql_async instead of read from the server: ProxySQL's
/// default `mysql-max_allowed_packet`, what its admin answers to a lone
/// `SELECT @@max_allowed_packet`.
pub const PROXYSQL_ADMIN_MAX_ALLOWED_PACKET: usize = 64 * 1024 * 1024;

/// `wait_timeout` given to mysql_async instead of read from the server (the admin has no
/// such variable): a pooled admin session idle for longer is closed rather than reused.
pub const PROXYSQL_ADMIN_WAIT_TIMEOUT_SECS: usize = 8 * 3600;

/// Connection options that speak the dialect of ProxySQL's admin interface (checked
/// against ProxySQL 2.7.2 and its source, `lib/Admin_Handler.cpp`, `lib/MySQL_Session.cpp`):
///
/// - On connect mysql_async reads the session values it was not given with one
///   `SELECT @@max_allowed_packet,@@wait_timeout,@@socket`. The admin rewrites only a
///   query that starts with `SELECT @@max_allowed_packet` (into a `global_variables`
///   lookup) and hands the rest to SQLite: `near ",": syntax error`. Given all three
///   (`prefer_socket(false)`: no `@@socket`), nothing is read.
/// - Returning a pooled connection sends `COM_RESET_CONNECTION` (the admin says it is
///   8.0.11), which the admin refuses for its session type; older versions would get
///   `COM_CHANGE_USER`, which the admin does not answer at all. So no reset: our
///   statements leave no session state behind (no variables, no transactions).
/// - The admin refuses `COM_STMT_PREPARE` (`Command not supported`): every statement is
///   sent with `query`/`query_drop` (text protocol, `COM_QUERY`), never `exec`.
/// - It runs only the first statement of a multi-statement query (SQLite's
///   `prepare_v2`) and ignores the rest without an error: one statement per query.
///
/// Options given in the URL are kept, except these, which are overridden.
pub fn proxysql_admin_opts(url: &Secret) -> Result<(String, Opts)> {
    let parsed = Opts::from_url(url.expose()).map_err(|e| Error::Mysql {
        backend: BACKEND,
        context: "parse proxysql_admin_urls".into(),
        source: e.into(),
    })?;
    let label = format!("{}:{}", parsed.ip_or_hostname(), parsed.tcp_port());
    let pool_opts = parsed.pool_opts().clone().with_reset_connection(false);
    let opts = OptsBuilder::from_opts(parsed)
        .max_allowed_packet(Some(PROXYSQL_ADMIN_MAX_ALLOWED_PACKET))
        .wait_timeout(Some(PROXYSQL_ADMIN_WAIT_TIMEOUT_SECS))
        .prefer_socket(false)
        .pool_opts(pool_opts);
    Ok((label, opts.into()))
}

/// One ProxySQL admin endpoint.
#[derive(Clone)]
struct Endpoint {
    label: String,
    pool: Pool,
}

/// [`DbRouter`] on every ProxySQL admin endpoint (MySQL protocol, usually port 6032).
///
/// Every operation is tried on every endpoint, whatever the others answered: a change
/// that reached some endpoints and not others is an [`Error::Endpoints`] naming each
/// endpoint with its outcome and cause, and the next `ensure` (a retried step, the
/// `sites` reconciler) applies it where it is missing.
#[derive(Clone)]
pub struct ProxySqlRouter {
    endpoints: Vec<Endpoint>,
    settings: ProxySqlUserSettings,
}

impl std::fmt::Debug for ProxySqlRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.endpoints.iter().map(|e| e.label.as_str()).collect();
        f.debug_struct("ProxySqlRouter")
            .field("endpoints", &labels)
            .field("settings", &self.settings)
            .finish()
    }
}

fn mysql_err(endpoint: &str, context: &str) -> impl FnOnce(mysql_async::Error) -> Error {
    let context = format!("{endpoint}: {context}");
    move |source| Error::Mysql {
        backend: BACKEND,
        context,
        source,
    }
}

impl ProxySqlRouter {
    pub fn new(admin_urls: &[Secret], settings: ProxySqlUserSettings) -> Result<Self> {
        if admin_urls.is_empty() {
            return Err(Error::invalid(
                "proxysql_admin_urls",
                "at least one ProxySQL admin endpoint is needed",
            ));
        }
        let mut endpoints = Vec::new();
        for url in admin_urls {
            let (label, opts) = proxysql_admin_opts(url)?;
            endpoints.push(Endpoint {
                label,
                pool: Pool::new(opts),
            });
        }
        Ok(Self {
            endpoints,
            settings,
        })
    }

    /// Closes every pooled admin session (`COM_QUIT`).
    pub async fn disconnect(self) -> Result<()> {
        for endpoint in self.endpoints {
            endpoint
                .pool
                .disconnect()
                .await
                .map_err(mysql_err(&endpoint.label, "disconnect"))?;
        }
        Ok(())
    }

    /// Runs `op` on every endpoint at once (they are independent ProxySQL instances; one
    /// that is slow or down does not hold up the others) and returns every result in
    /// endpoint order, or an [`Error::Endpoints`] when any endpoint failed.
    async fn on_every_endpoint<'a, T, F, Fut>(&'a self, action: String, op: F) -> Result<Vec<T>>
    where
        F: Fn(&'a Endpoint) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let outcomes = futures::future::join_all(self.endpoints.iter().map(op)).await;
        let mut applied = Vec::new();
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for (endpoint, outcome) in self.endpoints.iter().zip(outcomes) {
            match outcome {
                Ok(value) => {
                    applied.push(endpoint.label.clone());
                    results.push(value);
                }
                Err(error) => failed.push(EndpointFailure {
                    endpoint: endpoint.label.clone(),
                    error,
                }),
            }
        }
        if failed.is_empty() {
            Ok(results)
        } else {
            Err(Error::Endpoints {
                backend: BACKEND,
                action,
                applied,
                failed,
            })
        }
    }

    async fn run(endpoint: &Endpoint, statements: &[String], what: &str) -> Result<()> {
        let mut conn = endpoint
            .pool
            .get_conn()
            .await
            .map_err(mysql_err(&endpoint.label, "connect"))?;
        for sql in statements {
            // Text protocol (COM_QUERY): the admin refuses COM_STMT_PREPARE.
            conn.query_drop(sql)
                .await
                .map_err(mysql_err(&endpoint.label, what))?;
        }
        Ok(())
    }

    async fn ensure_one(
        &self,
        endpoint: &Endpoint,
        id: &SiteResourceId,
        password: &SitePassword,
        statements: &[String],
    ) -> Result<RouterUserState> {
        Self::run(endpoint, statements, "upsert user").await?;
        let state = self.observe_one(endpoint, id, password).await?;
        if !state.converged {
            return Err(Error::unexpected(
                BACKEND,
                format!(
                    "{}: {} not in runtime_mysql_users as written",
                    endpoint.label,
                    id.resource_name()
                ),
            ));
        }
        Ok(state)
    }

    async fn observe_one(
        &self,
        endpoint: &Endpoint,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<RouterUserState> {
        let mut conn = endpoint
            .pool
            .get_conn()
            .await
            .map_err(mysql_err(&endpoint.label, "connect"))?;
        type Row = (String, Option<String>, i64, i64, Option<String>, i64, i64);
        let rows: Vec<Row> = conn
            .query(proxysql_verify_query(id))
            .await
            .map_err(mysql_err(&endpoint.label, "read runtime_mysql_users"))?;
        let rows: Vec<RuntimeUserRow> = rows
            .into_iter()
            .map(
                |(
                    username,
                    password,
                    active,
                    default_hostgroup,
                    default_schema,
                    frontend,
                    backend,
                )| {
                    RuntimeUserRow {
                        username,
                        password,
                        active,
                        default_hostgroup,
                        default_schema,
                        frontend,
                        backend,
                    }
                },
            )
            .collect();
        Ok(RouterUserState {
            endpoint: endpoint.label.clone(),
            reachable: true,
            converged: proxysql_check_runtime_rows(id, password, self.settings, &rows),
            runtime_rows: rows.len(),
            error: None,
        })
    }

    async fn list_one(endpoint: &Endpoint) -> Result<Vec<String>> {
        let mut conn = endpoint
            .pool
            .get_conn()
            .await
            .map_err(mysql_err(&endpoint.label, "connect"))?;
        conn.query(PROXYSQL_LIST_USERS)
            .await
            .map_err(mysql_err(&endpoint.label, "list users"))
    }
}

impl ProxySqlRouter {
    /// Ids of every `wp_<id>` user on any endpoint (orphan detection); an error when any
    /// endpoint cannot be read (a partial list would hide orphans there).
    pub async fn list_site_ids(&self) -> Result<std::collections::BTreeSet<SiteResourceId>> {
        let lists = self
            .on_every_endpoint("list users".to_owned(), Self::list_one)
            .await?;
        Ok(lists
            .iter()
            .flatten()
            .filter_map(|u| SiteResourceId::from_resource_name(u))
            .collect())
    }
}

/// Lists candidate users in the memory layer; the exact `wp_<id>` match is done on our
/// side (no backslash escapes to pass through two SQL dialects).
pub const PROXYSQL_LIST_USERS: &str =
    "SELECT DISTINCT username FROM mysql_users WHERE username LIKE 'wp%'";

impl DbRouter for ProxySqlRouter {
    async fn ensure_router_user(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<Vec<RouterUserState>> {
        let statements = proxysql_upsert_statements(id, password, self.settings);
        self.on_every_endpoint(format!("ensure user {}", id.resource_name()), |endpoint| {
            self.ensure_one(endpoint, id, password, &statements)
        })
        .await
    }

    /// Every endpoint's state; one that cannot be read is `reachable: false` (not
    /// converged) with its error, so a reconciler re-ensures rather than stops.
    async fn observe_router_user(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<Vec<RouterUserState>> {
        let outcomes = futures::future::join_all(
            self.endpoints
                .iter()
                .map(|endpoint| self.observe_one(endpoint, id, password)),
        )
        .await;
        Ok(self
            .endpoints
            .iter()
            .zip(outcomes)
            .map(|(endpoint, outcome)| {
                outcome.unwrap_or_else(|err| RouterUserState {
                    endpoint: endpoint.label.clone(),
                    reachable: false,
                    converged: false,
                    runtime_rows: 0,
                    error: Some(crate::error::chain(&err)),
                })
            })
            .collect())
    }

    async fn remove_router_user(&self, id: &SiteResourceId) -> Result<()> {
        let statements = proxysql_delete_statements(id);
        self.on_every_endpoint(format!("remove user {}", id.resource_name()), |endpoint| {
            Self::run(endpoint, &statements, "delete user")
        })
        .await
        .map(drop)
    }
}

/// The router selected by configuration.
#[derive(Debug, Clone)]
pub enum Router {
    Haproxy(HaproxyRouter),
    ProxySql(ProxySqlRouter),
}

impl Router {
    /// Ids of every site user the router holds (HAProxy: none).
    pub async fn list_site_ids(&self) -> Result<std::collections::BTreeSet<SiteResourceId>> {
        match self {
            Router::Haproxy(_) => Ok(Default::default()),
            Router::ProxySql(r) => r.list_site_ids().await,
        }
    }

    pub fn from_config(config: &GaleraConfig) -> Result<Self> {
        Ok(match config.router {
            RouterKind::Haproxy => Router::Haproxy(HaproxyRouter),
            RouterKind::Proxysql => Router::ProxySql(ProxySqlRouter::new(
                &config.proxysql_admin_urls,
                ProxySqlUserSettings {
                    default_hostgroup: config.proxysql_default_hostgroup,
                    max_connections: config.proxysql_max_connections,
                },
            )?),
        })
    }
}

impl DbRouter for Router {
    async fn ensure_router_user(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<Vec<RouterUserState>> {
        match self {
            Router::Haproxy(r) => r.ensure_router_user(id, password).await,
            Router::ProxySql(r) => r.ensure_router_user(id, password).await,
        }
    }

    async fn observe_router_user(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<Vec<RouterUserState>> {
        match self {
            Router::Haproxy(r) => r.observe_router_user(id, password).await,
            Router::ProxySql(r) => r.observe_router_user(id, password).await,
        }
    }

    async fn remove_router_user(&self, id: &SiteResourceId) -> Result<()> {
        match self {
            Router::Haproxy(r) => r.remove_router_user(id).await,
            Router::ProxySql(r) => r.remove_router_user(id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (SiteResourceId, SitePassword, ProxySqlUserSettings) {
        let id = SiteResourceId::parse("k3v7q2m6xa").unwrap_or_else(|e| panic!("{e}"));
        let pw = SitePassword::parse("abcdefghijklmnopqrstuvwxyz012345")
            .unwrap_or_else(|e| panic!("{e}"));
        let settings = ProxySqlUserSettings {
            default_hostgroup: 10,
            max_connections: 200,
        };
        (id, pw, settings)
    }

    #[test]
    fn native_hash_matches_mysql_password_function() {
        // SELECT PASSWORD('abcdefghijklmnopqrstuvwxyz012345') on MariaDB 10.11; the
        // integration test `proxysql_hash_equals_server_password_hash` checks it live.
        let (_, pw, _) = fixture();
        let h = mysql_native_hash(&pw);
        assert_eq!(h.len(), 41);
        assert!(h.starts_with('*'));
        assert!(
            h[1..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        );
    }

    #[test]
    fn upsert_statements_exact() {
        let (id, pw, settings) = fixture();
        let hash = mysql_native_hash(&pw);
        let got = proxysql_upsert_statements(&id, &pw, settings);
        assert_eq!(
            got,
            vec![
                format!(
                    "REPLACE INTO mysql_users (username, password, active, use_ssl, \
                     default_hostgroup, default_schema, schema_locked, transaction_persistent, \
                     fast_forward, backend, frontend, max_connections) VALUES ('wp_k3v7q2m6xa', \
                     '{hash}', 1, 0, 10, 'wp_k3v7q2m6xa', 0, 1, 0, 1, 1, 200)"
                ),
                "LOAD MYSQL USERS TO RUNTIME".to_owned(),
                "SAVE MYSQL USERS TO DISK".to_owned(),
            ]
        );
        assert!(
            !got.iter().any(|s| s.contains(pw.expose())),
            "no clear text"
        );
    }

    #[test]
    fn delete_and_verify_statements_exact() {
        let (id, _, _) = fixture();
        assert_eq!(
            proxysql_delete_statements(&id),
            vec![
                "DELETE FROM mysql_users WHERE username = 'wp_k3v7q2m6xa'".to_owned(),
                "LOAD MYSQL USERS TO RUNTIME".to_owned(),
                "SAVE MYSQL USERS TO DISK".to_owned(),
            ]
        );
        assert_eq!(
            proxysql_verify_query(&id),
            "SELECT username, password, active, default_hostgroup, default_schema, frontend, \
             backend FROM runtime_mysql_users WHERE username = 'wp_k3v7q2m6xa'"
        );
    }

    #[test]
    fn runtime_rows_checked() {
        let (id, pw, settings) = fixture();
        let row = |frontend, backend, password: &str, hg| RuntimeUserRow {
            username: "wp_k3v7q2m6xa".into(),
            password: Some(password.into()),
            active: 1,
            default_hostgroup: hg,
            default_schema: Some("wp_k3v7q2m6xa".into()),
            frontend,
            backend,
        };
        let hash = mysql_native_hash(&pw);
        // Runtime splits the row in two.
        assert!(proxysql_check_runtime_rows(
            &id,
            &pw,
            settings,
            &[row(1, 0, &hash, 10), row(0, 1, &hash, 10)]
        ));
        assert!(proxysql_check_runtime_rows(
            &id,
            &pw,
            settings,
            &[row(1, 1, pw.expose(), 10)]
        ));
        assert!(!proxysql_check_runtime_rows(&id, &pw, settings, &[]));
        assert!(!proxysql_check_runtime_rows(
            &id,
            &pw,
            settings,
            &[row(1, 0, &hash, 10)]
        ));
        assert!(!proxysql_check_runtime_rows(
            &id,
            &pw,
            settings,
            &[row(1, 1, "*0000", 10)]
        ));
        assert!(!proxysql_check_runtime_rows(
            &id,
            &pw,
            settings,
            &[row(1, 1, &hash, 20)]
        ));
    }
}
