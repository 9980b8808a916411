//! The site's database on MariaDB/Galera: schema `wp_<id>`, user `wp_<id>`@`%` with
//! `ALL PRIVILEGES` on that schema and nothing else.
//!
//! SQL safety: identifiers come only from a [`SiteResourceId`] (`wp_` + `[a-z2-7]{10}`),
//! and are backtick-quoted (schema) or single-quoted (account) after that validation;
//! in the database-level `GRANT` the `_` is escaped (`wp\_<id>`), since `_` is a
//! wildcard there.
//! Passwords never enter SQL text: MariaDB refuses bound parameters in `CREATE USER`
//! and `ALTER USER`, so the password (and user) are bound into session variables and
//! the server quotes them itself (`EXECUTE IMMEDIATE CONCAT(… QUOTE(@pd_pw))`); the
//! variables are cleared right after.
//!
//! Galera replicates DDL and account statements (TOI), so one node (or the router's
//! writer endpoint) is enough.

use std::collections::BTreeSet;
use std::future::Future;

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Pool};

use crate::config::GaleraConfig;
use crate::error::{Error, Result};
use crate::ids::{Secret, SitePassword, SiteResourceId};

const BACKEND: &str = "galera";

/// What a reconciler needs to know about one site's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    pub database_exists: bool,
    pub user_exists: bool,
    /// `Some(true)` when the expected password was given and matches the stored hash.
    pub password_matches: Option<bool>,
    /// `GRANT ALL PRIVILEGES ON `wp_<id>`.* TO `wp_<id>`@`%`` is present.
    pub schema_grant: bool,
    /// Grants beyond the expected two (`USAGE` and the schema grant): widened by hand.
    pub extra_grants: Vec<String>,
}

impl DatabaseState {
    /// Everything present and nothing more (password checked only if it was given).
    pub fn is_converged(&self) -> bool {
        self.database_exists
            && self.user_exists
            && self.password_matches != Some(false)
            && self.schema_grant
            && self.extra_grants.is_empty()
    }

    pub fn is_absent(&self) -> bool {
        !self.database_exists && !self.user_exists
    }
}

/// The site database resource, as the sagas and reconcilers use it.
pub trait SiteDatabase {
    /// Creates the schema and the user if missing; converges the password and the grants
    /// (revokes anything widened by hand). Returns the state observed afterwards.
    fn ensure_site_database(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> impl Future<Output = Result<DatabaseState>> + Send;

    /// Reads the state; checks the password too when one is given.
    fn observe_site_database(
        &self,
        id: &SiteResourceId,
        password: Option<&SitePassword>,
    ) -> impl Future<Output = Result<DatabaseState>> + Send;

    /// Ends the user's sessions, drops the user and the schema. Absent is success.
    fn remove_site_database(&self, id: &SiteResourceId) -> impl Future<Output = Result<()>> + Send;
}

/// [`SiteDatabase`] on a MariaDB/Galera server through `mysql_async`.
#[derive(Clone)]
pub struct GaleraDriver {
    pool: Pool,
}

impl std::fmt::Debug for GaleraDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GaleraDriver")
    }
}

fn mysql_err(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> Error {
    let context = context.into();
    move |source| Error::Mysql {
        backend: BACKEND,
        context,
        source,
    }
}

/// `` `wp_<id>` `` (schema identifier).
fn schema_ident(id: &SiteResourceId) -> String {
    format!("`{}`", id.resource_name())
}

/// `` `wp\_<id>` ``: the schema in a database-level `GRANT`, where `_` and `%` are
/// wildcards. Unescaped, `wp_<id>` would also match `wpX<id>`, and `ALL` includes
/// `CREATE`: the site could create further databases.
fn grant_schema_ident(id: &SiteResourceId) -> String {
    format!("`wp\\_{}`", id.as_str())
}

/// `'wp_<id>'@'%'` (account name as a statement accepts it).
fn account(id: &SiteResourceId) -> String {
    format!("'{}'@'%'", id.resource_name())
}

impl GaleraDriver {
    pub fn new(config: &GaleraConfig) -> Result<Self> {
        Self::from_url(&config.admin_url)
    }

    /// `mysql://USER:PASSWORD@HOST:PORT` of the admin account.
    pub fn from_url(url: &Secret) -> Result<Self> {
        let opts = Opts::from_url(url.expose()).map_err(|e| Error::Mysql {
            backend: BACKEND,
            context: "parse admin_url".into(),
            source: e.into(),
        })?;
        Ok(Self {
            pool: Pool::new(opts),
        })
    }

    /// Closes the pool's connections.
    pub async fn disconnect(self) -> Result<()> {
        self.pool
            .disconnect()
            .await
            .map_err(mysql_err("disconnect"))
    }

    async fn conn(&self) -> Result<Conn> {
        self.pool.get_conn().await.map_err(mysql_err("connect"))
    }

    /// Ids of every site that has a `wp_<id>` schema or user (orphan detection).
    pub async fn list_site_ids(&self) -> Result<BTreeSet<SiteResourceId>> {
        let mut conn = self.conn().await?;
        let schemas: Vec<String> = conn
            .query(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA \
                 WHERE SCHEMA_NAME LIKE 'wp\\_%'",
            )
            .await
            .map_err(mysql_err("list schemas"))?;
        let users: Vec<String> = conn
            .query("SELECT User FROM mysql.user WHERE User LIKE 'wp\\_%' AND Host = '%'")
            .await
            .map_err(mysql_err("list users"))?;
        Ok(schemas
            .iter()
            .chain(users.iter())
            .filter_map(|n| SiteResourceId::from_resource_name(n))
            .collect())
    }

    /// Runs `EXECUTE IMMEDIATE CONCAT(<prefix>, QUOTE(@pd_u), <mid>, QUOTE(@pd_pw))` with
    /// the user and password bound into session variables, then clears them (also on
    /// error). `prefix`/`mid` are constant SQL fragments.
    async fn exec_with_credentials(
        conn: &mut Conn,
        id: &SiteResourceId,
        password: &SitePassword,
        prefix: &'static str,
        what: &'static str,
    ) -> Result<()> {
        conn.exec_drop(
            "SET @pd_u = ?, @pd_pw = ?",
            (id.resource_name(), password.expose()),
        )
        .await
        .map_err(mysql_err("bind credentials"))?;
        let sql = format!(
            "EXECUTE IMMEDIATE CONCAT('{prefix} ', QUOTE(@pd_u), '@''%'' IDENTIFIED BY ', QUOTE(@pd_pw))"
        );
        let run = conn.query_drop(sql).await.map_err(mysql_err(what));
        let clear = conn
            .query_drop("SET @pd_u = NULL, @pd_pw = NULL")
            .await
            .map_err(mysql_err("clear credentials"));
        run.and(clear)
    }

    async fn observe_on(
        conn: &mut Conn,
        id: &SiteResourceId,
        password: Option<&SitePassword>,
    ) -> Result<DatabaseState> {
        let name = id.resource_name();
        let database_exists: Option<String> = conn
            .exec_first(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (&name,),
            )
            .await
            .map_err(mysql_err("read schema"))?;
        // The stored hash compared on the server with the hash of the expected password;
        // the password is a bound parameter.
        let user_row: Option<(String, Option<i64>)> = match password {
            Some(pw) => conn
                .exec_first(
                    "SELECT User, JSON_VALUE(Priv, '$.authentication_string') = PASSWORD(?) \
                     FROM mysql.global_priv WHERE User = ? AND Host = '%'",
                    (pw.expose(), &name),
                )
                .await
                .map_err(mysql_err("read user"))?,
            None => conn
                .exec_first(
                    "SELECT User, NULL FROM mysql.global_priv WHERE User = ? AND Host = '%'",
                    (&name,),
                )
                .await
                .map_err(mysql_err("read user"))?,
        };
        let user_exists = user_row.is_some();
        let password_matches = match (password, &user_row) {
            (Some(_), Some((_, m))) => Some(*m == Some(1)),
            _ => None,
        };
        let (schema_grant, extra_grants) = if user_exists {
            // Account names cannot be bound either; `account(id)` is built from the
            // validated id only.
            let grants: Vec<String> = conn
                .query(format!("SHOW GRANTS FOR {}", account(id)))
                .await
                .map_err(mysql_err("show grants"))?;
            classify_grants(id, &grants)
        } else {
            (false, Vec::new())
        };
        Ok(DatabaseState {
            database_exists: database_exists.is_some(),
            user_exists,
            password_matches,
            schema_grant,
            extra_grants,
        })
    }
}

/// Splits `SHOW GRANTS` output into "has the schema grant" and the lines that should
/// not be there. Pure; exposed for tests.
pub fn classify_grants(id: &SiteResourceId, grants: &[String]) -> (bool, Vec<String>) {
    let name = id.resource_name();
    let usage = format!("GRANT USAGE ON *.* TO `{name}`@`%`");
    let schema = format!(
        "GRANT ALL PRIVILEGES ON {}.* TO `{name}`@`%`",
        grant_schema_ident(id)
    );
    let mut has_schema = false;
    let mut extra = Vec::new();
    for g in grants {
        if g == &schema {
            has_schema = true;
        } else if g == &usage
            || g.strip_prefix(usage.as_str()).is_some_and(|rest| {
                rest.starts_with(" IDENTIFIED BY PASSWORD ") && !rest.contains(" WITH ")
            })
        {
            // The account line (password hash), no privileges.
        } else {
            extra.push(g.clone());
        }
    }
    (has_schema, extra)
}

impl SiteDatabase for GaleraDriver {
    async fn ensure_site_database(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<DatabaseState> {
        let mut conn = self.conn().await?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            schema_ident(id)
        ))
        .await
        .map_err(mysql_err("create database"))?;

        let before = Self::observe_on(&mut conn, id, Some(password)).await?;
        if !before.user_exists {
            Self::exec_with_credentials(
                &mut conn,
                id,
                password,
                "CREATE USER IF NOT EXISTS",
                "create user",
            )
            .await?;
            tracing::info!(site = %id, "database user created");
        }
        // A concurrent run may have created it with another password: converge.
        let mid = Self::observe_on(&mut conn, id, Some(password)).await?;
        if mid.password_matches != Some(true) {
            Self::exec_with_credentials(&mut conn, id, password, "ALTER USER", "set password")
                .await?;
            tracing::info!(site = %id, "database password converged");
        }
        if !mid.extra_grants.is_empty() {
            tracing::warn!(site = %id, extra = mid.extra_grants.len(), "revoking widened grants");
            conn.query_drop(format!(
                "REVOKE ALL PRIVILEGES, GRANT OPTION FROM {}",
                account(id)
            ))
            .await
            .map_err(mysql_err("revoke widened grants"))?;
        }
        if !mid.schema_grant || !mid.extra_grants.is_empty() {
            conn.query_drop(format!(
                "GRANT ALL PRIVILEGES ON {}.* TO {}",
                grant_schema_ident(id),
                account(id)
            ))
            .await
            .map_err(mysql_err("grant"))?;
        }
        let after = Self::observe_on(&mut conn, id, Some(password)).await?;
        if !after.is_converged() {
            // E.g. a role or a resource limit granted by hand: not ours to guess at.
            return Err(Error::unexpected(
                BACKEND,
                format!(
                    "{} did not converge: {} unexpected grant(s) remain",
                    id.resource_name(),
                    after.extra_grants.len()
                ),
            ));
        }
        Ok(after)
    }

    async fn observe_site_database(
        &self,
        id: &SiteResourceId,
        password: Option<&SitePassword>,
    ) -> Result<DatabaseState> {
        let mut conn = self.conn().await?;
        Self::observe_on(&mut conn, id, password).await
    }

    async fn remove_site_database(&self, id: &SiteResourceId) -> Result<()> {
        let mut conn = self.conn().await?;
        // DROP USER leaves open sessions running with the old privileges: end them.
        let sessions: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
                (id.resource_name(),),
            )
            .await
            .map_err(mysql_err("list sessions"))?;
        for session in sessions {
            // A session that ended meanwhile is fine (error 1094 unknown thread id).
            if let Err(e) = conn.query_drop(format!("KILL CONNECTION {session}")).await {
                tracing::debug!(site = %id, error = %e, "kill session");
            }
        }
        tracing::info!(site = %id, "removing database and user");
        conn.query_drop(format!("DROP USER IF EXISTS {}", account(id)))
            .await
            .map_err(mysql_err("drop user"))?;
        conn.query_drop(format!("DROP DATABASE IF EXISTS {}", schema_ident(id)))
            .await
            .map_err(mysql_err("drop database"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_classified() {
        let id = SiteResourceId::parse("abcdefgh23").unwrap_or_else(|e| panic!("{e}"));
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = lines(&[
            "GRANT USAGE ON *.* TO `wp_abcdefgh23`@`%` IDENTIFIED BY PASSWORD '*AB12'",
            "GRANT ALL PRIVILEGES ON `wp\\_abcdefgh23`.* TO `wp_abcdefgh23`@`%`",
        ]);
        assert_eq!(classify_grants(&id, &ok), (true, vec![]));
        let widened = lines(&[
            "GRANT ALL PRIVILEGES ON `wp_abcdefgh23`.* TO `wp_abcdefgh23`@`%`",
            "GRANT SELECT ON *.* TO `wp_abcdefgh23`@`%` IDENTIFIED BY PASSWORD '*AB12'",
            "GRANT ALL PRIVILEGES ON `wp_abcdefgh23`.* TO `wp_abcdefgh23`@`%` WITH GRANT OPTION",
            "GRANT SELECT ON `wp_other00002`.* TO `wp_abcdefgh23`@`%`",
        ]);
        let (schema, extra) = classify_grants(&id, &widened);
        assert!(!schema);
        assert_eq!(extra, widened);
    }

    #[test]
    fn identifiers_are_quoted() {
        let id = SiteResourceId::parse("abcdefgh23").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(schema_ident(&id), "`wp_abcdefgh23`");
        assert_eq!(account(&id), "'wp_abcdefgh23'@'%'");
        assert_eq!(grant_schema_ident(&id), "`wp\\_abcdefgh23`");
    }
}
